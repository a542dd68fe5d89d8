//! Reading a WebSocket connection's two byte streams at their frame boundaries (RFC 6455
//! §5.2), to learn the one thing the direct path must know: whether namespace `/` is
//! connected on the connection, and for which socket.
//!
//! No I/O here: a [`Stream`] is fed the bytes as they pass, in whatever pieces they pass in,
//! and answers with [`Seen`] events. Each stream starts with its HTTP head (the client's
//! upgrade request, the server's `101`), then frames. Nothing is scanned for: a payload is
//! looked at only from its first byte, so bytes that merely contain `40{"sid"` (an echoed
//! namespace, a user's status details) are never taken for a CONNECT.
//!
//! What is read of a payload is Socket.IO protocol 5 inside Engine.IO 4 messages: `4` (an
//! Engine.IO message) then the Socket.IO packet type, then `/name,` for any namespace but
//! `/`. So `40{"sid":"…"}` is the CONNECT of `/`, `41` its DISCONNECT and `44…` its
//! CONNECT_ERROR; a client's `40…` asks to connect `/`; `1` closes the Engine.IO session.

/// Who writes the stream: the server's frames are not masked, the client's always are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Server,
    Client,
}

/// What a stream showed about namespace `/` and the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// The server told the client that `/` is connected as this socket.
    Connected(Box<str>),
    /// `/` is not connected, or may not be, from here on: the server's DISCONNECT or
    /// CONNECT_ERROR, the client's DISCONNECT or new CONNECT request, or a message this
    /// reader cannot judge (fragmented, or a CONNECT it could not parse).
    NotConnected,
    /// The connection is closing: a Close frame or the Engine.IO close packet.
    Closed,
    /// The bytes are not what this reader understands (not a `101`, a protocol error): it
    /// can prove nothing about this connection again.
    Lost,
}

/// Payload bytes kept for judging a frame: a CONNECT of `/` is `40{"sid":"<20 chars>"}`, and
/// with connection-state recovery `,"pid":"…"` as well.
const KEEP: usize = 128;

#[derive(Debug)]
enum Phase {
    /// The HTTP head: how many bytes of its end (`\r\n\r\n`) were just seen, and of its
    /// required start.
    Head { start: usize, end: usize },
    /// A frame header, gathered until it is whole.
    Header { got: Vec<u8> },
    /// A frame's payload: what remains of it, and how it is judged.
    Payload { left: u64, judge: Judge },
    /// Nothing more is read.
    Done,
}

#[derive(Debug)]
struct Judge {
    /// The first bytes of a data message's payload, kept to judge it when it ends.
    kept: Option<Vec<u8>>,
    mask: Option<[u8; 4]>,
    /// Payload bytes seen so far (the mask's place).
    at: u64,
    fin: bool,
    close: bool,
}

/// One direction of one connection.
#[derive(Debug)]
pub struct Stream {
    side: Side,
    phase: Phase,
    /// Inside a message of several frames: no other data frame may be put between them.
    fragmented: bool,
}

impl Stream {
    pub fn new(side: Side) -> Self {
        Stream {
            side,
            phase: Phase::Head { start: 0, end: 0 },
            fragmented: false,
        }
    }

    /// Whether the stream stands between two messages: a frame of ours may go here.
    pub fn at_boundary(&self) -> bool {
        matches!(&self.phase, Phase::Header { got } if got.is_empty()) && !self.fragmented
    }

    /// Whether the stream still reads frames (not lost, not closed).
    pub fn reading(&self) -> bool {
        !matches!(self.phase, Phase::Done)
    }

    /// Read `bytes`, the next piece of the stream; `out` receives what they showed.
    pub fn feed(&mut self, mut bytes: &[u8], out: &mut Vec<Seen>) {
        while !bytes.is_empty() {
            match &mut self.phase {
                Phase::Done => return,
                Phase::Head { .. } => {
                    let b = bytes[0];
                    bytes = &bytes[1..];
                    if let Some(seen) = self.head_byte(b) {
                        out.push(seen);
                    }
                }
                Phase::Header { got } => {
                    let take = (header_len(got) - got.len()).min(bytes.len());
                    got.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if got.len() == header_len(got) {
                        let header = std::mem::take(got);
                        if let Some(seen) = self.begin_frame(&header) {
                            out.push(seen);
                        }
                    }
                }
                Phase::Payload { left, judge } => {
                    let take = (*left).min(bytes.len() as u64) as usize;
                    judge.keep(&bytes[..take]);
                    *left -= take as u64;
                    bytes = &bytes[take..];
                    if *left == 0 {
                        self.end_frame(out);
                    }
                }
            }
        }
    }

    /// One byte of the HTTP head: `Some(Lost)` if the head is not what this side expects;
    /// frames follow its end.
    fn head_byte(&mut self, b: u8) -> Option<Seen> {
        let Phase::Head { start, end } = &mut self.phase else {
            return None;
        };
        // The server's head must be a 101; a client may send empty lines before its request
        // line (RFC 9112 §2.2), which hyper skips too.
        let required: &[u8] = match self.side {
            Side::Server => b"HTTP/1.1 101 ",
            Side::Client => b"GET ",
        };
        if *start < required.len() {
            if self.side == Side::Client && *start == 0 && (b == b'\r' || b == b'\n') {
                return None;
            }
            if b != required[*start] {
                return self.lose();
            }
            *start += 1;
            return None;
        }
        const END: &[u8] = b"\r\n\r\n";
        *end = if b == END[*end] {
            *end + 1
        } else if b == b'\r' {
            1
        } else {
            0
        };
        if *end == END.len() {
            self.phase = Phase::Header { got: Vec::new() };
        }
        None
    }

    fn begin_frame(&mut self, h: &[u8]) -> Option<Seen> {
        let (fin, rsv, opcode) = (h[0] & 0x80 != 0, h[0] & 0x70, h[0] & 0x0F);
        let masked = h[1] & 0x80 != 0;
        let len = match h[1] & 0x7F {
            126 => u16::from_be_bytes([h[2], h[3]]) as u64,
            127 => u64::from_be_bytes(h[2..10].try_into().expect("8 bytes")),
            n => n as u64,
        };
        let mask = masked.then(|| h[h.len() - 4..].try_into().expect("4 bytes"));
        // No extension is negotiated (the library offers none), so no RSV bit may be set;
        // each side masks exactly as RFC 6455 §5.1 says.
        if rsv != 0 || masked != (self.side == Side::Client) {
            return self.lose();
        }
        let kept = match opcode {
            // A data message's first frame: judged by its payload.
            0x1 | 0x2 if self.fragmented => return self.lose(),
            0x1 => Some(Vec::new()),
            0x2 => None,
            0x0 if !self.fragmented => return self.lose(),
            0x0 => None,
            0x8..=0xA if !fin || len > 125 => return self.lose(),
            0x8..=0xA => None,
            _ => return self.lose(),
        };
        let mut seen = None;
        if (0x1..=0x2).contains(&opcode) && !fin {
            // A message in pieces: its first piece cannot be judged whole, so `/` may have
            // changed; and until its last piece nothing else may be sent.
            self.fragmented = true;
            seen = Some(Seen::NotConnected);
        }
        if opcode == 0x0 && fin {
            self.fragmented = false;
        }
        let judge = Judge {
            kept: kept.filter(|_| fin),
            mask,
            at: 0,
            fin,
            close: opcode == 0x8,
        };
        self.phase = Phase::Payload { left: len, judge };
        if len == 0 {
            let mut out = Vec::new();
            self.end_frame(&mut out);
            return seen.or(out.pop());
        }
        seen
    }

    fn end_frame(&mut self, out: &mut Vec<Seen>) {
        let phase = std::mem::replace(&mut self.phase, Phase::Header { got: Vec::new() });
        let Phase::Payload { judge, .. } = phase else {
            return;
        };
        if judge.close {
            self.phase = Phase::Done;
            out.push(Seen::Closed);
            return;
        }
        if let (Some(kept), true) = (judge.kept, judge.fin) {
            let truncated = judge.at > KEEP as u64;
            if let Some(seen) = judge_text(self.side, &kept, truncated) {
                if seen == Seen::Closed {
                    self.phase = Phase::Done;
                }
                out.push(seen);
            }
        }
    }

    fn lose(&mut self) -> Option<Seen> {
        self.phase = Phase::Done;
        Some(Seen::Lost)
    }
}

impl Judge {
    fn keep(&mut self, bytes: &[u8]) {
        if let Some(kept) = &mut self.kept {
            let room = KEEP.saturating_sub(kept.len()).min(bytes.len());
            let at = self.at as usize;
            kept.extend(
                bytes[..room]
                    .iter()
                    .enumerate()
                    .map(|(i, b)| match self.mask {
                        Some(m) => b ^ m[(at + i) % 4],
                        None => *b,
                    }),
            );
        }
        self.at += bytes.len() as u64;
    }
}

/// The length of the frame header that begins with `got` (2 to 14 bytes), as far as known.
fn header_len(got: &[u8]) -> usize {
    let Some(&b1) = got.get(1) else {
        return 2;
    };
    let len = match b1 & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + len + if b1 & 0x80 != 0 { 4 } else { 0 }
}

/// What a whole text message says about `/`; `truncated` if only its first [`KEEP`] bytes
/// were kept.
fn judge_text(side: Side, payload: &[u8], truncated: bool) -> Option<Seen> {
    // Engine.IO: `1` closes the session; `4` carries a Socket.IO packet; the rest (pings,
    // pongs, the open packet, upgrades) say nothing about `/`.
    match payload {
        [b'1'] => return Some(Seen::Closed),
        [b'4', ..] => {}
        _ => return None,
    }
    let packet = &payload[1..];
    let root = packet.get(1) != Some(&b'/');
    if !root {
        return None;
    }
    match (side, packet.first()) {
        (Side::Server, Some(b'0')) => Some(
            if truncated {
                None
            } else {
                connect_sid(&packet[1..])
            }
            .map_or(Seen::NotConnected, Seen::Connected),
        ),
        (Side::Server, Some(b'1' | b'4')) => Some(Seen::NotConnected),
        (Side::Client, Some(b'0' | b'1')) => Some(Seen::NotConnected),
        _ => None,
    }
}

/// The sid of a CONNECT's data, `{"sid":"…"}` (other fields allowed).
fn connect_sid(data: &[u8]) -> Option<Box<str>> {
    #[derive(serde::Deserialize)]
    struct Connect {
        sid: Box<str>,
    }
    serde_json::from_slice::<Connect>(data).ok().map(|c| c.sid)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD_101: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-accept: x\r\n\r\n";
    const HEAD_GET: &[u8] =
        b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nhost: a\r\n\r\n";

    /// A frame as a server (no mask) or a client (masked with a fixed key) writes it.
    fn frame(side: Side, opcode_fin: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![opcode_fin];
        let m = if side == Side::Client { 0x80 } else { 0 };
        match payload.len() {
            n @ 0..=125 => f.push(m | n as u8),
            n @ 126..=0xFFFF => {
                f.push(m | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(m | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if side == Side::Client {
            let key = [0x12, 0x34, 0x56, 0x78];
            f.extend_from_slice(&key);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            f.extend_from_slice(payload);
        }
        f
    }

    fn text(side: Side, payload: &str) -> Vec<u8> {
        frame(side, 0x81, payload.as_bytes())
    }

    /// Everything seen when `bytes` are fed whole, then when fed one byte at a time: the two
    /// must agree (the kernel and the library split writes and reads anywhere).
    fn seen(side: Side, bytes: &[u8]) -> Vec<Seen> {
        let (mut whole, mut a) = (Stream::new(side), Vec::new());
        whole.feed(bytes, &mut a);
        let (mut bytewise, mut b) = (Stream::new(side), Vec::new());
        for byte in bytes {
            bytewise.feed(std::slice::from_ref(byte), &mut b);
        }
        assert_eq!(a, b, "the same bytes in other pieces");
        a
    }

    fn server(frames: &[Vec<u8>]) -> Vec<Seen> {
        seen(Side::Server, &[HEAD_101.to_vec(), frames.concat()].concat())
    }

    fn client(frames: &[Vec<u8>]) -> Vec<Seen> {
        seen(Side::Client, &[HEAD_GET.to_vec(), frames.concat()].concat())
    }

    fn connected(sid: &str) -> Seen {
        Seen::Connected(sid.into())
    }

    #[test]
    fn the_connect_of_the_root_namespace_is_read_at_the_frame_boundary() {
        let s = Side::Server;
        assert_eq!(
            server(&[
                text(s, r#"0{"sid":"eng","upgrades":[],"pingInterval":25000}"#),
                text(s, r#"40/dashboard,{"sid":"abc"}"#),
                text(s, r#"40{"sid":"abc"}"#),
                text(
                    s,
                    r#"42["presence-update",{"details":"40{\"sid\":\"x\"}"}]"#
                ),
                text(s, "41"),
                text(s, r#"40{"sid":"abc","pid":"p"}"#),
                text(s, r#"44{"message":"no"}"#),
            ]),
            [
                connected("abc"),
                Seen::NotConnected,
                connected("abc"),
                Seen::NotConnected
            ]
        );
    }

    /// The library echoes an invalid namespace unescaped: `44/x40{"sid":"abc",…` must not
    /// pass for a CONNECT of `/` (a byte scan found one in it).
    #[test]
    fn an_echoed_namespace_is_not_a_connect() {
        let s = Side::Server;
        assert_eq!(
            server(&[text(
                s,
                r#"44/x40{"sid":"abc","message":"Invalid namespace"}"#
            )]),
            []
        );
        assert_eq!(server(&[text(s, r#"40/x40{"sid":"abc"}"#)]), []);
    }

    #[test]
    fn a_connect_after_other_frames_in_one_write_or_in_a_large_write_is_seen() {
        let s = Side::Server;
        let big = format!(r#"42["list",{{"pad":"{}"}}]"#, "x".repeat(70_000));
        assert_eq!(
            server(&[text(s, &big), text(s, "2"), text(s, r#"40{"sid":"abc"}"#)]),
            [connected("abc")]
        );
    }

    #[test]
    fn a_close_frame_or_an_engine_close_ends_the_stream() {
        let s = Side::Server;
        assert_eq!(
            server(&[
                text(s, r#"40{"sid":"abc"}"#),
                frame(s, 0x88, &[0x03, 0xE8]),
                text(s, r#"40{"sid":"late"}"#)
            ]),
            [connected("abc"), Seen::Closed]
        );
        assert_eq!(
            client(&[text(Side::Client, "1"), text(Side::Client, "41")]),
            [Seen::Closed]
        );
    }

    #[test]
    fn the_clients_leave_and_new_connect_of_the_root_namespace_are_read_unmasked() {
        let c = Side::Client;
        assert_eq!(
            client(&[
                text(c, "2"),
                text(c, r#"40{"token":"t"}"#),
                text(c, "41/dashboard,"),
                text(c, r#"42["presence:get",{"userIds":["41"]}]"#),
                text(c, "41"),
                frame(c, 0x89, b"ping"),
            ]),
            [Seen::NotConnected, Seen::NotConnected]
        );
    }

    #[test]
    fn a_message_in_pieces_holds_the_boundary_until_its_last_piece() {
        let s = Side::Server;
        let mut st = Stream::new(s);
        let mut out = Vec::new();
        st.feed(HEAD_101, &mut out);
        assert!(st.at_boundary());
        st.feed(&frame(s, 0x01, b"42[\"a\","), &mut out);
        assert_eq!(out, [Seen::NotConnected], "a piece cannot be judged");
        assert!(!st.at_boundary(), "nothing may go between the pieces");
        st.feed(&frame(s, 0x89, b""), &mut out);
        assert!(
            !st.at_boundary(),
            "a ping between pieces is allowed, ours is not"
        );
        st.feed(&frame(s, 0x80, b"1]"), &mut out);
        assert!(st.at_boundary());
        let half = text(s, r#"40{"sid":"abc"}"#);
        st.feed(&half[..5], &mut out);
        assert!(!st.at_boundary(), "inside a frame");
        st.feed(&half[5..], &mut out);
        assert!(st.at_boundary());
        assert_eq!(out.last(), Some(&connected("abc")));
    }

    #[test]
    fn anything_but_a_101_or_a_protocol_error_loses_the_stream_for_good() {
        assert_eq!(
            seen(Side::Server, b"HTTP/1.1 400 Bad Request\r\n\r\n"),
            [Seen::Lost]
        );
        let unmasked = text(Side::Server, "41");
        assert_eq!(client(&[unmasked]), [Seen::Lost]);
        let masked = text(Side::Client, r#"40{"sid":"abc"}"#);
        assert_eq!(server(&[masked]), [Seen::Lost]);
        let rsv = frame(Side::Server, 0xC1, b"40{\"sid\":\"abc\"}");
        assert_eq!(server(&[rsv]), [Seen::Lost]);
    }

    #[test]
    fn a_client_may_send_empty_lines_before_its_request() {
        let bytes = [b"\r\n".as_slice(), HEAD_GET, &text(Side::Client, "41")].concat();
        assert_eq!(seen(Side::Client, &bytes), [Seen::NotConnected]);
    }

    #[test]
    fn a_connect_too_long_to_keep_is_not_taken_on_trust() {
        let s = Side::Server;
        let long = format!(r#"40{{"sid":"abc","pad":"{}"}}"#, "x".repeat(KEEP));
        assert_eq!(server(&[text(s, &long)]), [Seen::NotConnected]);
    }
}
