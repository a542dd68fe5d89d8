//! A client connection's byte stream, shared between hyper (and, after a WebSocket upgrade,
//! the Socket.IO library, which reads and writes through it) and the fan-out, which writes
//! presence frames straight onto it.
//!
//! Why: socketioxide sends every event through a per-socket channel to a per-socket writer
//! task, which frames it and makes one `write`. Reaching 10,000 sockets with one change then
//! costs 10,000 encodes, channel sends and task wake-ups before the first byte of most of them
//! leaves (the broadcast median of issue 15). A frame written here is encoded once for every
//! socket and costs each socket one non-blocking `write`, made by the fan-out itself, as
//! Node's `socket.write` does.
//!
//! Frames never interleave: every write, the library's and ours, takes the line's lock, and a
//! write is all or nothing towards its writer. What the kernel did not take is kept and sent
//! before anything else, so the library sees its writes accepted whole and never hands over
//! half a frame. The library's writes are read only for one thing: the Socket.IO CONNECT of
//! `/` (`40{"sid":"…"}`), before which nothing of ours may reach the client.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

pub struct Line {
    stream: TcpStream,
    state: Mutex<State>,
    /// Cancelled when hyper or the library let go of the connection.
    gone: CancellationToken,
}

#[derive(Default)]
struct State {
    /// Accepted bytes the kernel has not taken yet; they leave before anything else.
    pending: Vec<u8>,
    /// The sid of the last Socket.IO CONNECT of `/` the library wrote on this connection.
    connected: Option<Box<str>>,
    /// A task waits for room to send `pending` (only when the library is not writing).
    flushing: bool,
}

/// What [`LineRef::write`] did with a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Wrote {
    /// Accepted whole: the client will receive it after everything written before it.
    Sent,
    /// Not written: the line is full (a slow reader).
    Full,
    /// Not written: the library has not written the socket's CONNECT yet.
    NotConnected,
    /// The connection is closed.
    Closed,
}

/// The connection as hyper and the library use it.
pub struct LineIo(Arc<Line>);

/// The connection as a request extension and a socket's handle hold it: it does not keep the
/// connection open.
#[derive(Clone)]
pub struct LineRef(Weak<Line>);

impl LineIo {
    pub fn new(stream: TcpStream) -> (LineIo, LineRef) {
        let line = Arc::new(Line {
            stream,
            state: Mutex::new(State::default()),
            gone: CancellationToken::new(),
        });
        let weak = LineRef(Arc::downgrade(&line));
        (LineIo(line), weak)
    }
}

impl Drop for LineIo {
    fn drop(&mut self) {
        self.0.gone.cancel();
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

    /// Write `buf` whole: what the kernel does not take now is kept in `pending`. `NotNow`
    /// if it took nothing.
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

impl LineRef {
    /// Write one WebSocket frame for the `/` socket `sid`, if the library has written that
    /// socket's CONNECT and the line has room. Never blocks.
    pub fn write(&self, sid: &str, frame: &[u8]) -> Wrote {
        let Some(line) = self.0.upgrade() else {
            return Wrote::Closed;
        };
        if line.gone.is_cancelled() {
            return Wrote::Closed;
        }
        let mut st = line.lock();
        if st.connected.as_deref() != Some(sid) {
            return Wrote::NotConnected;
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

/// The sid of a Socket.IO CONNECT of `/` in `buf`, if it holds one: the payload
/// `40{"sid":"…"}` of the text frame the library writes for it (Socket.IO protocol 5; other
/// namespaces' read `40/name,…`). Only the library writes here before that frame, and no
/// client can make it write those bytes before it: it learns its sid from that frame.
fn connect_sid(buf: &[u8]) -> Option<&str> {
    const MARK: &[u8] = b"40{\"sid\":\"";
    let at = buf.windows(MARK.len()).rposition(|w| w == MARK)? + MARK.len();
    let len = buf[at..].iter().position(|b| *b == b'"')?;
    std::str::from_utf8(&buf[at..at + len]).ok()
}

impl AsyncRead for LineIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.stream.poll_read_ready(cx))?;
            match self.0.stream.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
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
        let line = &self.0;
        let mut st = line.lock();
        ready!(line.poll_flush_pending(&mut st, cx))?;
        loop {
            if line.write_whole(&mut st, buf)? {
                break;
            }
            ready!(line.stream.poll_write_ready(cx))?;
        }
        // Only the library's WebSocket frames are looked at (a response to a plain request
        // starts with `HTTP/`), and only small writes: a CONNECT is a short frame.
        if buf.first() == Some(&0x81)
            && buf.len() <= 4096
            && let Some(sid) = connect_sid(buf)
        {
            st.connected = Some(sid.into());
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let line = &self.0;
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

    /// A line on the server side of a real loopback connection, and the client's end, whose
    /// receive buffer is small so that the line fills quickly when the client does not read.
    async fn pair() -> (LineIo, LineRef, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpSocket::new_v4().unwrap();
        client.set_recv_buffer_size(4096).unwrap();
        let client = client.connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let (io, line) = LineIo::new(accepted.unwrap().0);
        (io, line, client.unwrap())
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

    #[tokio::test]
    async fn nothing_is_written_directly_before_the_library_wrote_the_sockets_connect() {
        let (mut io, line, mut client) = pair().await;
        let update = event_frame("presence-update", "1");
        assert_eq!(line.write("abc", &update), Wrote::NotConnected);
        io.write_all(&text("0{\"sid\":\"engine\"}")).await.unwrap();
        io.write_all(&text("40/dashboard,{\"sid\":\"abc\"}"))
            .await
            .unwrap();
        assert_eq!(
            line.write("abc", &update),
            Wrote::NotConnected,
            "another namespace's"
        );
        io.write_all(&text("40{\"sid\":\"other\"}")).await.unwrap();
        assert_eq!(
            line.write("abc", &update),
            Wrote::NotConnected,
            "another socket's"
        );
        io.write_all(&text("40{\"sid\":\"abc\"}")).await.unwrap();
        assert_eq!(line.write("abc", &update), Wrote::Sent);
        drop(io);
        assert_eq!(line.write("abc", &update), Wrote::Closed);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(
            frames(&got),
            [
                "0{\"sid\":\"engine\"}",
                "40/dashboard,{\"sid\":\"abc\"}",
                "40{\"sid\":\"other\"}",
                "40{\"sid\":\"abc\"}",
                "42[\"presence-update\",1]",
            ]
        );
    }

    /// A reader that stops reading fills the line: direct writes are refused (`Full`) rather
    /// than queued, the library's writes wait, and once the client reads again it receives
    /// every accepted frame whole and in order, including the one the kernel took only part of.
    #[tokio::test]
    async fn a_full_line_refuses_frames_and_never_splits_one() {
        let (mut io, line, mut client) = pair().await;
        io.write_all(&text("40{\"sid\":\"s\"}")).await.unwrap();
        let big = "x".repeat(3000);
        let mut sent = vec!["40{\"sid\":\"s\"}".to_string()];
        let mut n = 0;
        loop {
            let payload = format!("{{\"n\":{n},\"pad\":\"{big}\"}}");
            match line.write("s", &event_frame("presence-update", &payload)) {
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
            line.write("s", &event_frame("e", "1")),
            Wrote::Sent,
            "room again"
        );
        drop(io);
    }

    fn event_len(payload: &str) -> usize {
        payload.len()
            + match payload.len() {
                0..=125 => 2,
                126..=0xFFFF => 4,
                _ => 10,
            }
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
