//! A client connection's byte stream, shared between hyper (and, after a WebSocket upgrade,
//! the Socket.IO library, which reads and writes through it) and the fan-out, which writes
//! presence frames straight onto it.
//!
//! Frames never interleave: every write, the library's and ours, takes the line's lock, and a
//! write is all or nothing towards its writer. What the kernel did not take is kept and sent
//! before anything else, so the library sees its writes accepted whole and never hands over
//! half a frame.
//!
//! What the line may write is decided from both byte streams, read at their frame boundaries
//! ([`super::frames`]): only on a connection whose first request asked for a WebSocket (so
//! every byte after the `101` is the library's framing of that one session); only between two
//! of the library's messages; only while `/` is connected as the socket a frame is for, by
//! the very CONNECT that socket was bound to; never after either side's Close, the client's
//! leave of `/` or its new CONNECT request, or the library's DISCONNECT of `/`.

use super::frames::{Seen, Side, Stream};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// `pending` grown past this (one large frame to a slow reader) is given back once empty.
const PENDING_KEEP: usize = 16 * 1024;

pub struct Line {
    stream: TcpStream,
    state: Mutex<State>,
    /// Cancelled when hyper or the library let go of the connection.
    gone: CancellationToken,
    /// The same, read by every write: a token's own check takes a lock.
    let_go: AtomicBool,
    /// Requests hyper read on this connection.
    requests: AtomicU32,
}

struct State {
    /// Accepted bytes the kernel has not taken yet; they leave before anything else.
    pending: Vec<u8>,
    /// A task waits for room to send `pending` (only when the library is not writing).
    flushing: bool,
    /// The connection's first request asked for a WebSocket (see [`LineRef::request`]).
    candidate: bool,
    /// What the server writes, read while it can still prove something.
    outbound: Option<Stream>,
    /// `/` on this connection.
    root: Root,
    /// CONNECTs of `/` the library wrote on this connection so far.
    connects: u64,
    /// The client's requests about `/` read so far: CONNECTs and DISCONNECTs (and anything
    /// that might be one). A socket may be written to only while no new one came after its
    /// own CONNECT request: a CONNECT the library writes late, after the client already left
    /// again, must not carry the old socket's frames into the client's next socket.
    asks: u64,
}

/// Where a socket stands on its connection, taken in its middleware (see [`LineRef::bind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding {
    /// The socket is connected by the `nth` CONNECT of `/` on the connection.
    nth: u64,
    /// The client's requests about `/` by then, its own CONNECT request the last.
    asks: u64,
}

#[derive(Debug, PartialEq, Eq)]
enum Root {
    NotConnected,
    /// Connected as `sid` by the `nth` CONNECT of `/` on this connection.
    Connected {
        sid: Box<str>,
        nth: u64,
    },
    /// Closing or closed: nothing direct, ever again.
    Closed,
    /// Not a connection this line can read (not a WebSocket's, or bytes it does not
    /// understand): nothing direct, ever again.
    Unreadable,
}

/// What [`LineRef::write`] did with a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Wrote {
    /// Accepted whole: the client will receive it after everything written before it.
    Sent,
    /// Not written now: the line is full (a slow reader) or inside one of the library's
    /// messages.
    Full,
    /// Not written: the socket's CONNECT is not written yet.
    NotYet,
    /// Not written: `/` was left on this connection after the socket's CONNECT (the socket
    /// is closing, or its client is connecting `/` anew).
    Left,
    /// Not written, and nothing will be: the connection is closing or closed.
    Closed,
    /// Not written, and nothing will be: a later CONNECT of `/` superseded the socket's.
    Superseded,
    /// Not written, and nothing will be: the line cannot read the connection.
    Unreadable,
}

/// The connection as hyper and the library use it; it reads what the client sends.
pub struct LineIo {
    line: Arc<Line>,
    inbound: Stream,
    seen: Vec<Seen>,
}

/// The connection as a request extension and a socket's route hold it: it does not keep the
/// connection open.
#[derive(Clone)]
pub struct LineRef(Weak<Line>);

impl LineIo {
    pub fn new(stream: TcpStream) -> (LineIo, LineRef) {
        let line = Arc::new(Line {
            stream,
            state: Mutex::new(State {
                pending: Vec::new(),
                flushing: false,
                candidate: false,
                outbound: Some(Stream::new(Side::Server)),
                root: Root::NotConnected,
                connects: 0,
                asks: 0,
            }),
            gone: CancellationToken::new(),
            let_go: AtomicBool::new(false),
            requests: AtomicU32::new(0),
        });
        let weak = LineRef(Arc::downgrade(&line));
        let io = LineIo {
            line,
            inbound: Stream::new(Side::Client),
            seen: Vec::new(),
        };
        (io, weak)
    }
}

impl Drop for LineIo {
    fn drop(&mut self) {
        self.line.let_go.store(true, Ordering::Release);
        self.line.gone.cancel();
    }
}

impl State {
    fn apply(&mut self, seen: Seen, side: Side) {
        if matches!(self.root, Root::Closed | Root::Unreadable) {
            return;
        }
        self.root = match seen {
            Seen::Connected(sid) if side == Side::Server => {
                self.connects += 1;
                Root::Connected {
                    sid,
                    nth: self.connects,
                }
            }
            Seen::Connected(_) | Seen::NotConnected => {
                if side == Side::Client {
                    self.asks += 1;
                }
                Root::NotConnected
            }
            Seen::Closed => Root::Closed,
            Seen::Lost => Root::Unreadable,
        };
    }

    fn give_back(&mut self) {
        if self.pending.is_empty() && self.pending.capacity() > PENDING_KEEP {
            self.pending = Vec::new();
        }
    }
}

impl Line {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Send what is pending, as far as the kernel takes it now. True once nothing is.
    fn try_flush(&self, st: &mut State) -> io::Result<bool> {
        while !st.pending.is_empty() {
            match self.stream.try_write(&st.pending) {
                Ok(n) => drop(st.pending.drain(..n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        st.give_back();
        Ok(true)
    }

    fn poll_flush_pending(&self, st: &mut State, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.try_flush(st)? {
                return Poll::Ready(Ok(()));
            }
            ready!(self.stream.poll_write_ready(cx))?;
        }
    }

    /// Write `buf` whole: what the kernel does not take now is kept in `pending`. False if
    /// it took nothing.
    fn write_whole(&self, st: &mut State, buf: &[u8]) -> io::Result<bool> {
        match self.stream.try_write(buf) {
            Ok(n) => {
                st.pending.extend_from_slice(&buf[n..]);
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// A request of the connection whose first request asked for a WebSocket: the request
/// extension by which a session created over that WebSocket finds its connection.
#[derive(Clone)]
pub struct WebSocketLine(pub LineRef);

/// The connections that asked to carry an existing Engine.IO session (a long-polling session
/// upgrading to WebSocket), by session id: where a `/` socket joined after its session
/// upgraded looks for its connection. Only a candidate; a socket is written to on it only
/// once the line has itself carried that socket's CONNECT.
#[derive(Clone, Default)]
pub struct Upgrades(Arc<Mutex<UpgradeLines>>);

#[derive(Default)]
struct UpgradeLines {
    lines: std::collections::HashMap<Box<str>, LineRef>,
    /// Closed connections are dropped from `lines` when it reaches this size.
    prune_at: usize,
}

impl Upgrades {
    fn lock(&self) -> MutexGuard<'_, UpgradeLines> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `ws`, the first request of its connection, asks to upgrade the session in its query.
    pub fn note(&self, uri: &http::Uri, ws: &WebSocketLine) {
        let Some(sid) = uri
            .query()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("sid=")))
        else {
            return;
        };
        let mut u = self.lock();
        if u.lines.len() >= u.prune_at {
            u.lines.retain(|_, l| l.0.strong_count() > 0);
            u.prune_at = (u.lines.len() * 2).max(1024);
        }
        u.lines.insert(sid.into(), ws.0.clone());
    }

    /// The open connection that last asked to carry session `sid`.
    pub fn line_of(&self, sid: &str) -> Option<LineRef> {
        let u = self.lock();
        u.lines.get(sid).filter(|l| l.0.strong_count() > 0).cloned()
    }
}

impl LineRef {
    /// Called by the accept loop with each request before it is served. The connection's
    /// first request, if it asks for a WebSocket and carries no body, makes the line a
    /// candidate for direct writes: everything the server then writes is that request's
    /// `101` and the library's frames. Returns the extension for such a request.
    pub fn request(
        &self,
        method: &http::Method,
        headers: &http::HeaderMap,
    ) -> Option<WebSocketLine> {
        let line = self.0.upgrade()?;
        let first = line.requests.fetch_add(1, Ordering::Relaxed) == 0;
        let upgrade = headers
            .get(http::header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
        let bodiless = [
            http::header::CONTENT_LENGTH,
            http::header::TRANSFER_ENCODING,
            http::header::EXPECT,
        ]
        .iter()
        .all(|h| !headers.contains_key(h));
        if !(first && upgrade && bodiless && method == http::Method::GET) {
            return None;
        }
        line.lock().candidate = true;
        Some(WebSocketLine(self.clone()))
    }

    /// Bind a `/` socket whose middleware runs now: it is connected by the next CONNECT of
    /// `/` the library writes (it writes it only after the middleware), and the client's
    /// CONNECT request that made it was read before the middleware ran.
    pub fn bind(&self) -> Binding {
        self.0.upgrade().map_or(Binding { nth: 1, asks: 0 }, |l| {
            let st = l.lock();
            Binding {
                nth: st.connects + 1,
                asks: st.asks,
            }
        })
    }

    /// Write one WebSocket frame for the `/` socket `sid` bound by `at`, if that socket is
    /// connected on this connection now and the line has room. Never blocks.
    pub fn write(&self, sid: &str, at: Binding, frame: &[u8]) -> Wrote {
        self.write_as(Some(sid), at, frame)
    }

    /// [`write`](Self::write), with `sid` left out (`None`) once a write for `at` was sent:
    /// a binding names one CONNECT of the connection, so the socket it connected cannot
    /// change, and comparing it again on every write was a cache miss per delivery.
    pub fn write_as(&self, sid: Option<&str>, at: Binding, frame: &[u8]) -> Wrote {
        let nth = at.nth;
        let Some(line) = self.0.upgrade() else {
            return Wrote::Closed;
        };
        if line.let_go.load(Ordering::Acquire) {
            return Wrote::Closed;
        }
        let mut st = line.lock();
        match &st.root {
            Root::Closed => return Wrote::Closed,
            Root::Unreadable => return Wrote::Unreadable,
            Root::Connected { sid: s, nth: n }
                if *n == nth && sid.is_none_or(|sid| **s == *sid) => {}
            Root::Connected { nth: n, .. } if *n < nth => return Wrote::NotYet,
            // The socket's own CONNECT, for another sid, cannot be: the line misread.
            Root::Connected { nth: n, .. } if *n == nth => return Wrote::Unreadable,
            Root::Connected { .. } => return Wrote::Superseded,
            Root::NotConnected if st.connects < nth && st.asks == at.asks => {
                return Wrote::NotYet;
            }
            Root::NotConnected => return Wrote::Left,
        }
        if st.asks != at.asks {
            return Wrote::Left;
        }
        if !st.outbound.as_ref().is_some_and(Stream::at_boundary) {
            return Wrote::Full;
        }
        match line.try_flush(&mut st) {
            Ok(true) => {}
            Ok(false) => return Wrote::Full,
            Err(_) => return Wrote::Closed,
        }
        match line.write_whole(&mut st, frame) {
            Ok(true) => {}
            Ok(false) => return Wrote::Full,
            Err(_) => return Wrote::Closed,
        }
        if !st.pending.is_empty() && !st.flushing {
            st.flushing = true;
            tokio::spawn(flush_when_writable(line.clone()));
        }
        Wrote::Sent
    }
}

/// The rest of a frame the kernel took only part of, sent as room comes, when the library has
/// nothing to write (its next write sends it first otherwise).
async fn flush_when_writable(line: Arc<Line>) {
    loop {
        tokio::select! {
            _ = line.gone.cancelled() => return,
            r = line.stream.writable() => if r.is_err() { return },
        }
        let mut st = line.lock();
        match line.try_flush(&mut st) {
            Ok(false) => continue,
            Ok(true) | Err(_) => {
                st.flushing = false;
                return;
            }
        }
    }
}

impl AsyncRead for LineIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            ready!(this.line.stream.poll_read_ready(cx))?;
            match this.line.stream.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    let read = &buf.initialize_unfilled()[..n];
                    // Read before the library sees it: a leave of `/` stops our frames before
                    // the library has even begun closing the socket.
                    if this.inbound.reading() {
                        this.inbound.feed(read, &mut this.seen);
                    }
                    if !this.seen.is_empty() {
                        let mut st = this.line.lock();
                        for seen in this.seen.drain(..) {
                            st.apply(seen, Side::Client);
                        }
                    }
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for LineIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let line = &this.line;
        let mut st = line.lock();
        ready!(line.poll_flush_pending(&mut st, cx))?;
        loop {
            if line.write_whole(&mut st, buf)? {
                break;
            }
            ready!(line.stream.poll_write_ready(cx))?;
        }
        // Only a candidate's bytes are read (see `LineRef::request`), and only while they can
        // still prove something.
        if !st.candidate {
            st.outbound = None;
            st.root = Root::Unreadable;
        }
        if let Some(mut out) = st.outbound.take() {
            out.feed(buf, &mut this.seen);
            if out.reading() {
                st.outbound = Some(out);
            }
            for seen in this.seen.drain(..) {
                st.apply(seen, Side::Server);
            }
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let line = &self.line;
        let mut st = line.lock();
        line.poll_flush_pending(&mut st, cx)
    }

    /// Flushes; the connection closes when the last holder lets go of it.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush(cx)
    }
}

/// A WebSocket text frame carrying the Socket.IO event `42["event",payload]` for `/`
/// (server frames are not masked).
pub fn event_frame(event: &str, payload: &str) -> Arc<[u8]> {
    let len = 2 + 2 + event.len() + 2 + payload.len() + 1;
    let mut f = Vec::with_capacity(len + 10);
    f.push(0x81);
    match len {
        0..=125 => f.push(len as u8),
        126..=0xFFFF => {
            f.push(126);
            f.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            f.push(127);
            f.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(b"42[\"");
    f.extend_from_slice(event.as_bytes());
    f.extend_from_slice(b"\",");
    f.extend_from_slice(payload.as_bytes());
    f.push(b']');
    f.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpSocket};

    /// The first socket of a connection on which the client's request was not read.
    const FIRST: Binding = Binding { nth: 1, asks: 0 };

    const HEAD_101: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n";

    fn upgrade_request() -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::UPGRADE, "websocket".parse().unwrap());
        h
    }

    /// A line on the server side of a real loopback connection, and the client's end, whose
    /// receive buffer is small so that the line fills quickly when the client does not read.
    async fn connection() -> (LineIo, LineRef, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpSocket::new_v4().unwrap();
        client.set_recv_buffer_size(4096).unwrap();
        let client = client.connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let (io, line) = LineIo::new(accepted.unwrap().0);
        (io, line, client.unwrap())
    }

    /// A connection whose first request asked for a WebSocket and was answered `101`.
    async fn websocket() -> (LineIo, LineRef, TcpStream) {
        let (mut io, line, mut client) = connection().await;
        const GET: &[u8] = b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n\r\n";
        client.write_all(GET).await.unwrap();
        let mut request = vec![0; GET.len()];
        io.read_exact(&mut request).await.unwrap();
        assert!(
            line.request(&http::Method::GET, &upgrade_request())
                .is_some()
        );
        io.write_all(HEAD_101).await.unwrap();
        let mut head = vec![0; HEAD_101.len()];
        client.read_exact(&mut head).await.unwrap();
        (io, line, client)
    }

    /// The payloads of the WebSocket frames in `bytes`, which must be whole frames.
    fn frames(mut bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            assert_eq!(bytes[0], 0x81, "a text frame starts here");
            let (len, head) = match bytes[1] {
                126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
                127 => (
                    u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                n => (n as usize, 2),
            };
            out.push(String::from_utf8(bytes[head..head + len].to_vec()).unwrap());
            bytes = &bytes[head + len..];
        }
        out
    }

    fn text(payload: &str) -> Vec<u8> {
        let mut f = vec![0x81, payload.len() as u8];
        f.extend_from_slice(payload.as_bytes());
        f
    }

    /// A client's (masked) text frame.
    fn masked(payload: &str) -> Vec<u8> {
        let mut f = vec![0x81, 0x80 | payload.len() as u8, 1, 2, 3, 4];
        f.extend(
            payload
                .bytes()
                .enumerate()
                .map(|(i, b)| b ^ [1, 2, 3, 4][i % 4]),
        );
        f
    }

    #[tokio::test]
    async fn nothing_is_written_directly_before_the_sockets_own_connect() {
        let (mut io, line, mut client) = websocket().await;
        let update = event_frame("presence-update", "1");
        let at = line.bind();
        assert_eq!(line.write("abc", at, &update), Wrote::NotYet);
        io.write_all(&text("0{\"sid\":\"abc\"}")).await.unwrap();
        io.write_all(&text("40/dashboard,{\"sid\":\"abc\"}"))
            .await
            .unwrap();
        assert_eq!(
            line.write("abc", at, &update),
            Wrote::NotYet,
            "another namespace's"
        );
        io.write_all(&text("40{\"sid\":\"abc\"}")).await.unwrap();
        assert_eq!(line.write("abc", at, &update), Wrote::Sent);
        assert_eq!(
            line.write(
                "abc",
                Binding {
                    nth: at.nth + 1,
                    ..at
                },
                &update
            ),
            Wrote::NotYet,
            "a later socket's"
        );
        drop(io);
        assert_eq!(line.write("abc", at, &update), Wrote::Closed);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(
            frames(&got),
            [
                "0{\"sid\":\"abc\"}",
                "40/dashboard,{\"sid\":\"abc\"}",
                "40{\"sid\":\"abc\"}",
                "42[\"presence-update\",1]",
            ]
        );
    }

    /// What the library reads: `bytes` the client sent, through the line.
    async fn library_reads(io: &mut LineIo, client: &mut TcpStream, bytes: &[u8]) {
        client.write_all(bytes).await.unwrap();
        let (mut read, mut n) = (vec![0; bytes.len()], 0);
        while n < bytes.len() {
            n += io.read(&mut read[n..]).await.unwrap();
        }
    }

    /// The client leaves `/` and connects it again on the same session (a token refresh):
    /// the socket id is the session's, so only the CONNECT's place tells the two apart. The
    /// old socket's frames stop when the client's leave is read; the new one's wait for the
    /// new CONNECT; the old one's never resume.
    #[tokio::test]
    async fn a_rejoin_of_the_root_namespace_stops_the_old_socket_and_waits_for_the_new_connect() {
        let (mut io, line, mut client) = websocket().await;
        let update = event_frame("presence-update", "1");
        library_reads(&mut io, &mut client, &masked("40{\"token\":\"a\"}")).await;
        let old = line.bind();
        io.write_all(&text("40{\"sid\":\"s\"}")).await.unwrap();
        assert_eq!(line.write("s", old, &update), Wrote::Sent);
        assert_eq!(
            line.write_as(None, old, &update),
            Wrote::Sent,
            "once sent, the route leaves the sid out"
        );
        let rejoin = [masked("41"), masked("40{\"token\":\"b\"}")].concat();
        library_reads(&mut io, &mut client, &rejoin).await;
        assert_eq!(
            line.write("s", old, &update),
            Wrote::Left,
            "the client left"
        );
        let new = line.bind();
        assert_eq!(line.write("s", new, &update), Wrote::NotYet);
        io.write_all(&text("40{\"sid\":\"s\"}")).await.unwrap();
        assert_eq!(line.write("s", old, &update), Wrote::Superseded);
        assert_eq!(
            line.write_as(None, old, &update),
            Wrote::Superseded,
            "a binding without its sid is still its own CONNECT's"
        );
        assert_eq!(line.write("s", new, &update), Wrote::Sent);
        io.write_all(&text("41")).await.unwrap();
        assert_eq!(
            line.write("s", new, &update),
            Wrote::Left,
            "the server disconnected it"
        );
        io.write_all(&[0x88, 0x02, 0x03, 0xE8]).await.unwrap();
        assert_eq!(
            line.write("s", new, &update),
            Wrote::Closed,
            "after the library's Close"
        );
    }

    /// The client leaves and rejoins before the library wrote the old socket's CONNECT: that
    /// CONNECT, written late, does not let the old socket write (its frames would land in the
    /// client's new socket, which may see less).
    #[tokio::test]
    async fn a_connect_written_after_the_client_left_again_carries_nothing_of_the_old_socket() {
        let (mut io, line, mut client) = websocket().await;
        let update = event_frame("presence-update", "1");
        library_reads(&mut io, &mut client, &masked("40{\"token\":\"a\"}")).await;
        let old = line.bind();
        let rejoin = [masked("41"), masked("40{\"token\":\"b\"}")].concat();
        library_reads(&mut io, &mut client, &rejoin).await;
        let new = line.bind();
        io.write_all(&text("40{\"sid\":\"s\"}")).await.unwrap();
        assert_eq!(line.write("s", old, &update), Wrote::Left);
        io.write_all(&text("40{\"sid\":\"s\"}")).await.unwrap();
        assert_eq!(line.write("s", old, &update), Wrote::Superseded);
        assert_eq!(
            line.write("s", new, &update),
            Wrote::Superseded,
            "it took the late one"
        );
    }

    #[tokio::test]
    async fn only_a_connection_whose_first_request_asked_for_a_websocket_is_written_to() {
        let (mut io, line, _client) = connection().await;
        assert!(
            line.request(&http::Method::GET, &http::HeaderMap::new())
                .is_none()
        );
        assert!(
            line.request(&http::Method::GET, &upgrade_request())
                .is_none(),
            "a second request"
        );
        io.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        io.write_all(&text("40{\"sid\":\"s\"}")).await.unwrap();
        assert_eq!(
            line.write("s", FIRST, &event_frame("e", "1")),
            Wrote::Unreadable
        );
        let (_io, line, _client) = connection().await;
        let mut with_body = upgrade_request();
        with_body.insert(http::header::CONTENT_LENGTH, "5".parse().unwrap());
        assert!(line.request(&http::Method::GET, &with_body).is_none());
    }

    /// A reader that stops reading fills the line: direct writes are refused (`Full`) rather
    /// than queued, the library's writes wait, and once the client reads again it receives
    /// every accepted frame whole and in order, including the one the kernel took only part of.
    #[tokio::test]
    async fn a_full_line_refuses_frames_and_never_splits_one() {
        let (mut io, line, mut client) = websocket().await;
        io.write_all(&text("40{\"sid\":\"s\"}")).await.unwrap();
        let big = "x".repeat(3000);
        let mut sent = vec!["40{\"sid\":\"s\"}".to_string()];
        let mut n = 0;
        loop {
            let payload = format!("{{\"n\":{n},\"pad\":\"{big}\"}}");
            match line.write("s", FIRST, &event_frame("presence-update", &payload)) {
                Wrote::Sent => sent.push(format!("42[\"presence-update\",{payload}]")),
                Wrote::Full => break,
                other => panic!("{other:?}"),
            }
            n += 1;
            assert!(n < 10_000, "the line never filled");
        }
        // The library's next write waits for room; it is sent after everything before it.
        let library = tokio::spawn(async move {
            io.write_all(&text("2")).await.unwrap();
            io.flush().await.unwrap();
            io
        });
        sent.push("2".into());
        let expected: usize = sent.iter().map(|p| event_len(p)).sum();
        let mut got = vec![0u8; expected];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(frames(&got), sent);
        let io = library.await.unwrap();
        assert_eq!(
            line.write("s", FIRST, &event_frame("e", "1")),
            Wrote::Sent,
            "room again"
        );
        assert!(
            line.0.upgrade().unwrap().lock().pending.capacity() <= PENDING_KEEP,
            "the room a large frame took is given back"
        );
        drop(io);
    }

    /// Half of one of the library's frames was written: ours waits for its other half.
    #[tokio::test]
    async fn nothing_goes_between_the_halves_of_the_librarys_frame() {
        let (mut io, line, _client) = websocket().await;
        io.write_all(&text("40{\"sid\":\"s\"}")).await.unwrap();
        let ack = text("43[\"ok\"]");
        io.write_all(&ack[..3]).await.unwrap();
        assert_eq!(line.write("s", FIRST, &event_frame("e", "1")), Wrote::Full);
        io.write_all(&ack[3..]).await.unwrap();
        assert_eq!(line.write("s", FIRST, &event_frame("e", "1")), Wrote::Sent);
    }

    fn event_len(payload: &str) -> usize {
        payload.len()
            + match payload.len() {
                0..=125 => 2,
                126..=0xFFFF => 4,
                _ => 10,
            }
    }

    #[tokio::test]
    async fn a_session_upgrading_onto_a_connection_finds_it_while_it_is_open() {
        let upgrades = Upgrades::default();
        let (io, line, _client) = connection().await;
        let ws = line
            .request(&http::Method::GET, &upgrade_request())
            .unwrap();
        let uri: http::Uri = "/socket.io/?EIO=4&transport=websocket&sid=abc"
            .parse()
            .unwrap();
        upgrades.note(&uri, &ws);
        upgrades.note(
            &"/socket.io/?EIO=4&transport=websocket".parse().unwrap(),
            &ws,
        );
        assert!(upgrades.line_of("abc").is_some());
        assert!(upgrades.line_of("other").is_none());
        drop(io);
        assert!(upgrades.line_of("abc").is_none(), "closed");
    }

    #[test]
    fn frames_carry_the_event_for_the_default_namespace() {
        let short = event_frame("presence-update", "{}");
        assert_eq!(&short[..], b"\x81\x18\x34\x32[\"presence-update\",{}]");
        let long = event_frame("e", &"1".repeat(200));
        assert_eq!(&long[..4], &[0x81, 126, 0, 208]);
        assert_eq!(long.len(), 4 + 208);
    }
}
