//! A minimal Socket.IO v4 client over WebSocket: just the Engine.IO framing a load test needs
//! (open, `40{auth}`, ping `2` / pong `3`, `42[event,…]`, acks `43id[…]`), with small buffers
//! so that tens of thousands of connections fit in one process.
//!
//! The WebSocket side is written here, not taken from a library: the load generator shares the
//! machine with the servers it measures, and every µs it spends reading a delivery is a µs the
//! server under test does not get (with tokio-tungstenite it spent ~20 µs per update, more than
//! half of what the gateway spends sending it). A client reads unmasked frames from the server
//! into one buffer and writes masked frames; nothing else of RFC 6455 is needed against a
//! Socket.IO server (no extensions; fragmented messages are reassembled all the same).

use serde_json::Value;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// What arrives on a connection, decoded as far as a scenario needs.
pub enum Incoming {
    /// A `presence-update` or `presence-batch` frame, left undecoded: these are nearly all a
    /// load test reads, and the scenarios read the few fields they need with a typed parse
    /// (`changes_in`) rather than a `Value` tree (measured: within noise of the tree, the
    /// kernel's receive path is most of this process's CPU per delivery).
    Presence(String),
    /// An ack: its id and the first argument.
    Ack(u64, Value),
    /// Any other Socket.IO packet (another event such as `presence:resync`, or `41`, the
    /// server's namespace disconnect), as received: only the auditor reads these.
    Event(String),
    Other,
}

pub struct Client {
    stream: TcpStream,
    /// Bytes received and not consumed yet, from `start`.
    buf: Vec<u8>,
    start: usize,
    /// A fragmented message being reassembled.
    partial: Vec<u8>,
    /// Mask keys (xorshift): a client's frames must be masked; any key does.
    mask: u32,
}

/// Room kept for one read: a delivery is a few hundred bytes.
const READ_CHUNK: usize = 512;

impl Client {
    /// Connect from `source` (a loopback address, to spread ephemeral ports) to `target`,
    /// and join namespace `/` with `auth`. Returns the client and the connect latency.
    pub async fn connect(
        target: SocketAddr,
        source: IpAddr,
        auth: &Value,
    ) -> Result<(Client, Duration), String> {
        let started = Instant::now();
        let sock = TcpSocket::new_v4().map_err(|e| e.to_string())?;
        sock.bind(SocketAddr::new(source, 0))
            .map_err(|e| format!("bind {source}: {e}"))?;
        let stream = sock
            .connect(target)
            .await
            .map_err(|e| format!("tcp: {e}"))?;
        stream.set_nodelay(true).ok();
        let mut c = Client {
            stream,
            buf: Vec::with_capacity(READ_CHUNK),
            start: 0,
            partial: Vec::new(),
            mask: 0x9E37_79B9 ^ (started.elapsed().subsec_nanos() | 1),
        };
        c.upgrade(target).await?;
        // Engine.IO open packet, then the namespace connect.
        let open = c.next_text().await.ok_or("closed before open")?;
        if !open.starts_with('0') {
            return Err(format!("unexpected open packet {open:.40}"));
        }
        c.send(format!("40{auth}")).await?;
        loop {
            let t = c.next_text().await.ok_or("closed before connect")?;
            if t.starts_with("40") {
                break;
            }
            if let Some(err) = t.strip_prefix("44") {
                return Err(format!("connect_error {err:.120}"));
            }
        }
        Ok((c, started.elapsed()))
    }

    /// The WebSocket handshake; bytes after the response's headers are the first frames.
    async fn upgrade(&mut self, target: SocketAddr) -> Result<(), String> {
        let req = format!(
            "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {target}\r\n\
             Upgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: bG9hZGdlbi1sb2FkZ2VuLQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        self.stream
            .write_all(req.as_bytes())
            .await
            .map_err(|e| format!("ws: {e}"))?;
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                if !head.starts_with("HTTP/1.1 101") {
                    return Err(format!("ws: {:.80}", head.lines().next().unwrap_or("")));
                }
                self.start = end + 4;
                return Ok(());
            }
            if !self.fill().await {
                return Err("ws: closed during the handshake".into());
            }
        }
    }

    /// Read more bytes into the buffer. False when the connection closed.
    async fn fill(&mut self) -> bool {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > self.buf.capacity() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 2 {
            self.buf.reserve(READ_CHUNK);
        }
        matches!(self.stream.read_buf(&mut self.buf).await, Ok(n) if n > 0)
    }

    /// One frame from the buffer if it holds a whole one: (FIN, opcode, payload).
    fn frame(&mut self) -> Option<(bool, u8, Vec<u8>)> {
        let b = &self.buf[self.start..];
        if b.len() < 2 {
            return None;
        }
        let (fin, op, masked) = (b[0] & 0x80 != 0, b[0] & 0x0f, b[1] & 0x80 != 0);
        let (len, mut head) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into().ok()?) as usize, 10),
            126 | 127 => return None,
            n => (n as usize, 2),
        };
        let key = if masked {
            head += 4;
            b.get(head - 4..head).map(|k| [k[0], k[1], k[2], k[3]])
        } else {
            None
        };
        if b.len() < head + len {
            return None;
        }
        let mut payload = b[head..head + len].to_vec();
        if let Some(k) = key {
            payload
                .iter_mut()
                .enumerate()
                .for_each(|(i, x)| *x ^= k[i % 4]);
        }
        self.start += head + len;
        Some((fin, op, payload))
    }

    /// The next text message, answering WebSocket pings. `None` when closed.
    async fn next_message(&mut self) -> Option<String> {
        loop {
            while let Some((fin, op, payload)) = self.frame() {
                match op {
                    0x1 | 0x0 if fin && self.partial.is_empty() => {
                        return String::from_utf8(payload).ok();
                    }
                    0x0 | 0x1 => {
                        self.partial.extend_from_slice(&payload);
                        if fin {
                            return String::from_utf8(std::mem::take(&mut self.partial)).ok();
                        }
                    }
                    0x8 => return None,
                    0x9 => self.write_frame(0xA, &payload).await.ok()?,
                    _ => {}
                }
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    async fn write_frame(&mut self, op: u8, payload: &[u8]) -> Result<(), String> {
        self.mask ^= self.mask << 13;
        self.mask ^= self.mask >> 17;
        self.mask ^= self.mask << 5;
        let key = self.mask.to_be_bytes();
        let mut f = Vec::with_capacity(payload.len() + 14);
        f.push(0x80 | op);
        match payload.len() {
            n @ 0..=125 => f.push(0x80 | n as u8),
            n @ 126..=0xFFFF => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        self.stream.write_all(&f).await.map_err(|e| e.to_string())
    }

    pub async fn send(&mut self, text: String) -> Result<(), String> {
        self.write_frame(0x1, text.as_bytes()).await
    }

    /// Emit an event; with `ack` an ack id is attached.
    pub async fn emit(
        &mut self,
        event: &str,
        data: Option<&Value>,
        ack: Option<u64>,
    ) -> Result<(), String> {
        let ack = ack.map(|a| a.to_string()).unwrap_or_default();
        let body = match data {
            Some(d) => format!("42{ack}[\"{event}\",{d}]"),
            None => format!("42{ack}[\"{event}\"]"),
        };
        self.send(body).await
    }

    /// The next text frame, answering Engine.IO pings on the way. `None` when closed.
    async fn next_text(&mut self) -> Option<String> {
        loop {
            let t = self.next_message().await?;
            if t == "2" {
                self.send("3".into()).await.ok()?;
                continue;
            }
            return Some(t);
        }
    }

    /// The next decoded message. `None` when closed.
    pub async fn recv(&mut self) -> Option<Incoming> {
        let t = self.next_text().await?;
        Some(decode(t))
    }

    /// The connection as a plain socket (non-blocking, off tokio's reactor) and the bytes
    /// received and not consumed yet: for a reader that polls many sockets itself.
    pub fn into_parts(self) -> Result<(std::net::TcpStream, Vec<u8>), String> {
        let rest = self.buf[self.start..].to_vec();
        let stream = self.stream.into_std().map_err(|e| e.to_string())?;
        Ok((stream, rest))
    }

    pub async fn close(mut self) {
        let _ = self.write_frame(0x8, &[]).await;
        let _ = self.stream.shutdown().await;
    }
}

/// The payload (first argument) of a `42[event, payload]` frame, decoded.
pub fn payload(t: &str) -> Value {
    match t.strip_prefix("42").map(serde_json::from_str::<Value>) {
        Some(Ok(Value::Array(mut a))) if a.len() > 1 => a.swap_remove(1),
        _ => Value::Null,
    }
}

/// How a `presence-update` frame starts (`presence-batch`: [`PRESENCE_BATCH`]).
pub const PRESENCE_UPDATE: &str = "42[\"presence-update\",";
pub const PRESENCE_BATCH: &str = "42[\"presence-batch\",";

fn decode(t: String) -> Incoming {
    if t.starts_with(PRESENCE_UPDATE) || t.starts_with(PRESENCE_BATCH) {
        return Incoming::Presence(t);
    }
    if let Some(rest) = t.strip_prefix("43") {
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if let Ok(id) = digits.parse() {
            let v = serde_json::from_str::<Value>(&rest[digits.len()..]).unwrap_or(Value::Null);
            let v = match v {
                Value::Array(mut a) if !a.is_empty() => a.swap_remove(0),
                other => other,
            };
            return Incoming::Ack(id, v);
        }
    }
    if t.starts_with('4') {
        return Incoming::Event(t);
    }
    Incoming::Other
}
