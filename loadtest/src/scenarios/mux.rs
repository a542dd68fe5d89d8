//! Many viewers read by a few threads: the load generator's side of a broadcast, made as
//! cheap as a reader can be, so that what it measures is the servers and not itself.
//!
//! One tokio task per viewer costs a wake-up, a task switch and a `read` per delivery, and on
//! two cores shared with the servers those add up to more than the servers' own work: with a
//! task per socket the load generator put the Node peer's broadcast median at 70 ms where an
//! independent one measured 13 ms. Here each thread owns an epoll set of thousands of sockets
//! (mio): one `epoll_wait` hands it every socket that has bytes, it reads each once (a short
//! read emptied it), takes the time right after each read (the latency is that instant minus
//! the change's send time, carried in its `details`), and reads the frames in place, without a
//! task, a channel or an allocation per delivery. After a poll that found bytes it naps (see
//! `loadgen fanout --nap-us`): a server writing to a reader asleep in `epoll_wait` on loopback
//! pays for waking it, which a client on another machine never costs it. It answers Engine.IO
//! pings and sends each viewer's heartbeat itself. For the `subs` scenario ([`Plan`],
//! [`Changes`]) it also sends each client's changes on their schedule, records their acks, and
//! counts only updates of the users a client watches (any other of the run's is unexpected).

use super::{Accepted, Seen, changes_in, now_us};
use crate::Stamp;
use crate::sio::Client;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const WAKE: Token = Token(usize::MAX);
/// How often each viewer says `user:heartbeat`, as the task-per-viewer reader did.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// The heartbeat period is cut into this many slices, each with its share of the viewers.
const SLICES: usize = 50;

/// What one viewer saw, by its index; `closed` if the server closed it before the end.
pub struct Outcome {
    pub id: usize,
    pub seen: Seen,
    pub closed: bool,
}

/// A viewer handed to a reader: its index, its socket, the bytes already read from it, and
/// what else it does (`subs`).
type Handover = (usize, std::net::TcpStream, Vec<u8>, Option<Plan>);

/// How the readers read, and what they count.
pub struct Setup {
    /// Reader threads.
    pub threads: usize,
    /// See `loadgen fanout --nap-us`.
    pub nap: Duration,
    /// See `loadgen fanout --stamp`.
    pub stamp: Stamp,
    /// Each viewer's heartbeat period.
    pub heartbeat: Duration,
    /// The changes of users whose id starts with this are counted in their viewer's [`Seen`].
    pub prefix: String,
    /// Viewers may skip superseded versions.
    pub batch: bool,
    /// Changes and presence frames, counted as they come.
    pub received: Arc<AtomicU64>,
    pub frames: Arc<AtomicU64>,
    /// The `subs` scenario's changes, made by the readers.
    pub changes: Option<Arc<Changes>>,
}

/// What a subscription client does besides reading (the `subs` scenario): the users it watches
/// (an update of any other user of the run is unexpected) and, if it changes too, when its
/// first change is due after the start.
pub struct Plan {
    pub watched: Vec<u64>,
    pub changes_at: Option<Duration>,
}

/// The changes of the `subs` scenario, made by the readers: each changing client sets `live`
/// every `period` from the start (wall-clock µs, 0 until everyone subscribed) for `run_for`,
/// with its seq as the ack id; an `ok` ack is recorded in `accepted`.
pub struct Changes {
    pub accepted: Arc<Accepted>,
    pub sent: Arc<AtomicU64>,
    pub unexpected: Arc<AtomicU64>,
    pub start_us: Arc<AtomicU64>,
    pub period: Duration,
    pub run_for: Duration,
}

pub struct Mux {
    threads: Vec<std::thread::JoinHandle<Vec<Outcome>>>,
    to: Vec<(mpsc::Sender<Handover>, Arc<Waker>)>,
    stop: Arc<AtomicBool>,
    next: usize,
}

struct Viewer {
    id: usize,
    stream: TcpStream,
    /// Bytes of a frame not whole yet.
    partial: Vec<u8>,
    seen: Seen,
    closed: bool,
    plan: Option<Plan>,
    /// The seq of its last change.
    seq: u32,
}

impl Mux {
    /// Start the readers ([`Setup`]); viewers are handed to them with [`add`](Self::add).
    pub fn start(setup: Setup) -> std::io::Result<Mux> {
        let Setup {
            threads,
            nap,
            stamp,
            heartbeat,
            prefix,
            batch,
            received,
            frames,
            changes,
        } = setup;
        let stop = Arc::new(AtomicBool::new(false));
        let mut mux = Mux {
            threads: Vec::new(),
            to: Vec::new(),
            stop: stop.clone(),
            next: 0,
        };
        for _ in 0..threads.max(1) {
            let poll = Poll::new()?;
            let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
            let (tx, rx) = mpsc::channel();
            let r = Reader {
                poll,
                rx,
                viewers: Vec::new(),
                prefix: prefix.clone(),
                batch,
                received: received.clone(),
                frames: frames.clone(),
                stop: stop.clone(),
                mask: 0x2545_F491,
                nap,
                stamp,
                heartbeat,
                changes: changes.clone(),
                due: BinaryHeap::new(),
                scheduled: false,
            };
            mux.threads.push(std::thread::spawn(move || r.run()));
            mux.to.push((tx, waker));
        }
        Ok(mux)
    }

    /// Viewer `id`, connected and joined: its socket is read by one of the threads from now on.
    pub fn add(&mut self, id: usize, client: Client) -> Result<(), String> {
        self.add_planned(id, client, None)
    }

    /// [`add`](Self::add), for a client that watches `plan.watched` and may change too.
    pub fn add_planned(
        &mut self,
        id: usize,
        client: Client,
        plan: Option<Plan>,
    ) -> Result<(), String> {
        let (stream, rest) = client.into_parts()?;
        let (tx, waker) = &self.to[self.next % self.to.len()];
        self.next += 1;
        tx.send((id, stream, rest, plan))
            .map_err(|e| e.to_string())?;
        waker.wake().map_err(|e| e.to_string())
    }

    /// Stop reading; every viewer's outcome.
    pub fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        for (_, w) in &self.to {
            let _ = w.wake();
        }
        self.threads
            .into_iter()
            .flat_map(|t| t.join().unwrap_or_default())
            .collect()
    }
}

struct Reader {
    poll: Poll,
    rx: mpsc::Receiver<Handover>,
    viewers: Vec<Viewer>,
    prefix: String,
    batch: bool,
    received: Arc<AtomicU64>,
    frames: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    mask: u32,
    /// See `loadgen fanout --nap-us`.
    nap: Duration,
    stamp: Stamp,
    heartbeat: Duration,
    changes: Option<Arc<Changes>>,
    /// When each changing viewer's next change is due (wall-clock µs), by slot.
    due: BinaryHeap<Reverse<(u64, usize)>>,
    /// The first changes are in `due` (the start is known).
    scheduled: bool,
}

impl Reader {
    fn run(mut self) -> Vec<Outcome> {
        let mut events = Events::with_capacity(4096);
        let mut scratch = vec![0u8; 64 * 1024];
        let mut beat = Instant::now() + self.heartbeat / SLICES as u32;
        let mut slice = 0;
        let mut busy = false;
        while !self.stop.load(Ordering::Relaxed) {
            // In a burst, a nap and then a look; between bursts, a wait the first bytes end.
            let napping = busy && !self.nap.is_zero();
            if napping {
                std::thread::sleep(self.nap);
            }
            let wait = if napping {
                Duration::ZERO
            } else {
                self.until_next_change().min(Duration::from_millis(100))
            };
            if self.poll.poll(&mut events, Some(wait)).is_err() {
                continue;
            }
            busy = !events.is_empty();
            for (id, std, rest, plan) in self.rx.try_iter().collect::<Vec<_>>() {
                if self.stamp == Stamp::Kernel && stamp_arrivals(&std).is_err() {
                    continue;
                }
                let mut stream = TcpStream::from_std(std);
                let slot = self.viewers.len();
                if self
                    .poll
                    .registry()
                    .register(&mut stream, Token(slot), Interest::READABLE)
                    .is_err()
                {
                    continue;
                }
                self.viewers.push(Viewer {
                    id,
                    stream,
                    partial: Vec::new(),
                    seen: Seen::default(),
                    closed: false,
                    plan,
                    seq: 0,
                });
                // What arrived with the join, and whatever came since.
                let at = now_us();
                self.take(slot, &rest, at);
                self.read(slot, &mut scratch);
            }
            for ev in events.iter() {
                if ev.token() != WAKE {
                    self.read(ev.token().0, &mut scratch);
                }
            }
            // Each viewer's heartbeat in its own slice of the period, as viewers that connected
            // at different times send theirs: all at once, they were a burst of thousands of
            // writes from here and of requests at the servers, every period, that the
            // deliveries behind it waited for.
            let now = Instant::now();
            if now >= beat {
                let n = self.viewers.len();
                let due = (n * (slice + 1)).div_ceil(SLICES);
                for slot in (n * slice).div_ceil(SLICES)..due.min(n) {
                    self.send(slot, b"42[\"user:heartbeat\"]");
                }
                slice = (slice + 1) % SLICES;
                beat = now + self.heartbeat / SLICES as u32;
            }
            self.change();
        }
        self.viewers
            .into_iter()
            .map(|v| Outcome {
                id: v.id,
                seen: v.seen,
                closed: v.closed,
            })
            .collect()
    }

    /// Read viewer `slot` until it would block; each piece is timed as it is read.
    fn read(&mut self, slot: usize, scratch: &mut [u8]) {
        loop {
            let Some(v) = self.viewers.get_mut(slot).filter(|v| !v.closed) else {
                return;
            };
            let got = match self.stamp {
                Stamp::Kernel => recv_stamped(&v.stream, scratch),
                Stamp::Read => v.stream.read(scratch).map(|n| (n, None)),
            };
            match got {
                Ok((0, _)) => {
                    v.closed = true;
                    return;
                }
                Ok((n, arrived)) => {
                    if arrived.is_none() && self.stamp == Stamp::Kernel {
                        UNSTAMPED.fetch_add(1, Ordering::Relaxed);
                    }
                    let at = arrived.unwrap_or_else(now_us);
                    self.take(slot, &scratch[..n], at);
                    // A short read emptied the socket: bytes that come later raise a new edge
                    // (mio's epoll is edge-triggered), so the read that would only say
                    // "would block" — a system call per delivery — is not made.
                    if n < scratch.len() {
                        return;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    v.closed = true;
                    return;
                }
            }
        }
    }

    /// Bytes read from viewer `slot` at `at`: every whole frame in them (after what was kept
    /// of the previous read), the rest kept.
    fn take(&mut self, slot: usize, bytes: &[u8], at: u64) {
        let mut partial = std::mem::take(&mut self.viewers[slot].partial);
        let data: &[u8] = if partial.is_empty() {
            bytes
        } else {
            partial.extend_from_slice(bytes);
            &partial
        };
        let mut at_byte = 0;
        let mut pong = false;
        while let Some((op, payload, len)) = frame(&data[at_byte..]) {
            at_byte += len;
            match op {
                0x1 if payload == b"2" => pong = true,
                0x1 if payload.starts_with(b"43") => self.ack(slot, &payload[2..]),
                0x1 => self.count(slot, payload, at),
                0x8 => self.viewers[slot].closed = true,
                _ => {}
            }
        }
        let rest = data[at_byte..].to_vec();
        self.viewers[slot].partial = rest;
        if pong {
            self.send(slot, b"3");
        }
    }

    fn count(&mut self, slot: usize, payload: &[u8], at: u64) {
        let Ok(text) = std::str::from_utf8(payload) else {
            return;
        };
        if !(text.starts_with(crate::sio::PRESENCE_UPDATE)
            || text.starts_with(crate::sio::PRESENCE_BATCH))
        {
            return;
        }
        // `subs` counts the frames from the first change on, as its task per client did.
        if self
            .changes
            .as_ref()
            .is_none_or(|c| c.start_us.load(Ordering::Relaxed) != 0)
        {
            self.frames.fetch_add(1, Ordering::Relaxed);
        }
        let v = &mut self.viewers[slot];
        if let (Some(plan), Some(c)) = (&v.plan, &self.changes) {
            for (ch, seq, sent) in changes_in(text, &self.prefix) {
                if ch == v.id as u64 {
                    continue; // its own change, delivered to itself
                }
                if !plan.watched.contains(&ch) {
                    c.unexpected.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                self.received.fetch_add(1, Ordering::Relaxed);
                v.seen.count_at(ch, seq, sent, at, self.batch);
            }
            return;
        }
        match one_change(text, &self.prefix) {
            Some(None) => {}
            Some(Some((ch, seq, sent))) => {
                self.received.fetch_add(1, Ordering::Relaxed);
                v.seen.count_at(ch, seq, sent, at, self.batch);
            }
            None => {
                for (ch, seq, sent) in changes_in(text, &self.prefix) {
                    self.received.fetch_add(1, Ordering::Relaxed);
                    v.seen.count_at(ch, seq, sent, at, self.batch);
                }
            }
        }
    }

    /// An ack (`43<id>[…]`) to viewer `slot`: a change of its accepted if it says `ok`.
    fn ack(&mut self, slot: usize, rest: &[u8]) {
        let (Some(c), Ok(text)) = (&self.changes, std::str::from_utf8(rest)) else {
            return;
        };
        let digits = text.len()
            - text
                .trim_start_matches(|ch: char| ch.is_ascii_digit())
                .len();
        let Ok(seq) = text[..digits].parse::<u32>() else {
            return;
        };
        let ok = serde_json::from_str::<serde_json::Value>(&text[digits..])
            .is_ok_and(|v| v[0]["ok"] == true);
        if ok {
            c.accepted.record(self.viewers[slot].id, seq);
        }
    }

    /// How long until the next change is due (long if none is). Before the start is known,
    /// a look every 100 ms: the start is set at least 200 ms ahead, so the first changes are
    /// still scheduled in time, without a wake-up per millisecond meanwhile.
    fn until_next_change(&self) -> Duration {
        match self.due.peek() {
            Some(Reverse((at, _))) => Duration::from_micros(at.saturating_sub(now_us())),
            None if self.changes.is_some() && !self.scheduled => Duration::from_millis(100),
            None => Duration::from_secs(1),
        }
    }

    /// Send every change that is due; schedule the first ones once the start is known.
    fn change(&mut self) {
        let Some(c) = self.changes.clone() else {
            return;
        };
        let start = c.start_us.load(Ordering::Relaxed);
        if start == 0 {
            return;
        }
        if !self.scheduled {
            self.scheduled = true;
            for (slot, v) in self.viewers.iter().enumerate() {
                if let Some(offset) = v.plan.as_ref().and_then(|p| p.changes_at) {
                    self.due
                        .push(Reverse((start + offset.as_micros() as u64, slot)));
                }
            }
        }
        let end = start + c.run_for.as_micros() as u64;
        let now = now_us();
        while let Some(&Reverse((at, slot))) = self.due.peek() {
            if at > now {
                break;
            }
            self.due.pop();
            if at >= end {
                continue;
            }
            let v = &mut self.viewers[slot];
            v.seq += 1;
            let (id, seq) = (v.id, v.seq);
            let event = format!(
                "42{seq}[\"presence:set-status\",{{\"status\":\"live\",\"details\":{{\"c\":{id},\"s\":{seq},\"t\":{}}}}}]",
                now_us()
            );
            self.send(slot, event.as_bytes());
            c.sent.fetch_add(1, Ordering::Relaxed);
            self.due
                .push(Reverse((at + c.period.as_micros() as u64, slot)));
        }
    }

    /// A masked text frame to viewer `slot`; a viewer whose socket is full skips it (pongs and
    /// heartbeats are tiny and a socket that is full is one the server has stopped reading).
    fn send(&mut self, slot: usize, payload: &[u8]) {
        self.mask ^= self.mask << 13;
        self.mask ^= self.mask >> 17;
        self.mask ^= self.mask << 5;
        let key = self.mask.to_be_bytes();
        let mut f = Vec::with_capacity(payload.len() + 8);
        if payload.len() < 126 {
            f.extend_from_slice(&[0x81, 0x80 | payload.len() as u8]);
        } else {
            f.extend_from_slice(&[0x81, 0x80 | 126]);
            f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        let v = &mut self.viewers[slot];
        if !v.closed {
            let _ = v.stream.write(&f);
        }
    }
}

/// The change a `presence-update` frame carries, read by looking for its three fields rather
/// than by a JSON parser (the parse was a good part of a delivery's cost here): `Some(None)` if
/// it is another user's, `None` when the frame is not one this reads surely (a batch, an escape
/// in the user id, `details` not as a changer writes them), for the full parse to decide.
fn one_change(text: &str, prefix: &str) -> Option<Option<(u64, u32, u64)>> {
    let body = text.strip_prefix(crate::sio::PRESENCE_UPDATE)?;
    let id_at = body.find("\"userId\":\"")? + 10;
    let id = &body[id_at..id_at + body[id_at..].find('"')?];
    if id.contains('\\') {
        return None;
    }
    if !id.starts_with(prefix) {
        return Some(None);
    }
    let d_at = body.find("\"details\":{")? + 11;
    let details = &body[d_at..d_at + body[d_at..].find('}')?];
    let field = |k: &str| -> Option<u64> {
        let at = details.find(k)? + k.len();
        let digits = details[at..].split(|c: char| !c.is_ascii_digit()).next()?;
        digits.parse().ok()
    };
    let (c, s, t) = (field("\"c\":")?, field("\"s\":")?, field("\"t\":")?);
    Some(Some((c, u32::try_from(s).ok()?, t)))
}

/// The first whole server frame of `b`: (opcode, payload, frame length). Server frames are
/// not masked; a fragmented message is not sent by the servers measured here (its pieces
/// would be read as separate frames and not counted).
fn frame(b: &[u8]) -> Option<(u8, &[u8], usize)> {
    if b.len() < 2 {
        return None;
    }
    let op = b[0] & 0x0F;
    let (len, head): (usize, usize) = match b[1] & 0x7F {
        126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
        127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into().ok()?) as usize, 10),
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    let end = head.checked_add(len)?;
    (b.len() >= end).then(|| (op, &b[head..end], end))
}

/// Reads the kernel did not stamp (`--stamp kernel`), timed when read instead: reported as
/// `unstamped_reads`, so that a fallback is never silent. The kernel turns stamping on a moment
/// after the first socket asks, so the first viewers' first reads may be among them.
pub static UNSTAMPED: AtomicU64 = AtomicU64::new(0);

/// Ask the kernel to stamp each arrival on `socket` with the time its bytes reached it
/// (SO_TIMESTAMPNS, the wall clock, as the changes' send times are).
fn stamp_arrivals(socket: &impl AsRawFd) -> std::io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a valid descriptor, and an option value of the size given.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// One `recvmsg`: the bytes, and when (wall-clock µs) the last of them reached the socket,
/// if the kernel said. TCP stamps a read with its last segment's arrival, so a read of
/// several frames times the earlier ones late, never early.
fn recv_stamped(socket: &impl AsRawFd, buf: &mut [u8]) -> std::io::Result<(usize, Option<u64>)> {
    // Room for one control message holding a timespec (8-byte aligned).
    let mut control = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; every pointer in it points into live buffers above, with
    // their lengths, for the duration of the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut at = None;
    // SAFETY: the CMSG macros walk the control buffer the kernel filled, within msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::timespec>());
                at = Some(ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000);
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n as usize, at))
}

#[cfg(test)]
mod tests {
    use super::{
        Duration, Instant, Write, changes_in, frame, now_us, one_change, recv_stamped,
        stamp_arrivals,
    };

    #[test]
    fn a_change_is_read_without_a_parser_as_the_parser_reads_it() {
        let gw = r#"42["presence-update",{"userId":"fx-3","status":"live","details":{"c":3,"s":17,"t":123456789},"version":9,"lastSeen":null}]"#;
        let node = r#"42["presence-update",{"version":9,"details":{"t":123456789,"s":17,"c":3},"status":"live","userId":"fx-3"}]"#;
        for f in [gw, node] {
            assert_eq!(one_change(f, "fx-"), Some(Some((3, 17, 123456789))));
            assert_eq!(changes_in(f, "fx-"), [(3, 17, 123456789)]);
            assert_eq!(one_change(f, "other-"), Some(None));
        }
        let batch = r#"42["presence-batch",{"updates":[]}]"#;
        assert_eq!(
            one_change(batch, "fx-"),
            None,
            "a batch: the parser reads it"
        );
        let escaped = r#"42["presence-update",{"userId":"fx-\"3","details":{"c":1,"s":1,"t":1}}]"#;
        assert_eq!(one_change(escaped, "fx-"), None);
        let no_mark = r#"42["presence-update",{"userId":"fx-3","status":"online","details":{}}]"#;
        assert_eq!(one_change(no_mark, "fx-"), None);
        assert!(changes_in(no_mark, "fx-").is_empty());
    }

    #[test]
    fn frames_are_read_whole_or_not_at_all() {
        let mut b = vec![0x81, 3];
        b.extend_from_slice(b"abc");
        b.extend_from_slice(&[0x81, 126, 0, 200]);
        b.extend(std::iter::repeat_n(b'x', 199));
        let (op, payload, len) = frame(&b).unwrap();
        assert_eq!((op, payload, len), (1, &b"abc"[..], 5));
        assert!(frame(&b[5..]).is_none(), "one byte short");
        b.push(b'x');
        assert_eq!(frame(&b[5..]).unwrap().1.len(), 200);
    }

    #[test]
    fn a_delivery_is_stamped_when_it_reached_the_socket_not_when_it_was_read() {
        use std::net::{TcpListener, TcpStream};
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let reader = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut writer, _) = l.accept().unwrap();
        stamp_arrivals(&reader).unwrap();
        // The kernel switches stamping on a moment after the first socket asks (a deferred
        // static key): until then reads come unstamped, and are counted so.
        let deadline = Instant::now() + Duration::from_secs(5);
        let (before, after, at) = loop {
            let before = now_us();
            writer.write_all(b"frame").unwrap();
            let after = now_us();
            std::thread::sleep(Duration::from_millis(50));
            let mut buf = [0u8; 64];
            let (n, at) = recv_stamped(&reader, &mut buf).unwrap();
            assert_eq!(&buf[..n], b"frame");
            match at {
                Some(at) => break (before, after, at),
                None => assert!(Instant::now() < deadline, "never stamped"),
            }
        };
        assert!(
            at >= before && at <= after + 1,
            "stamped at {at}, written between {before} and {after}, read 50 ms later"
        );
    }
}
