//! The floor under a broadcast's latency on this machine: the least a server can do to deliver
//! one change to 10,000 WebSocket sockets. One process, no Redis, no authentication check, no
//! visibility rule, no outbox: each `presence:set-status` is acked and its update framed once,
//! then written to every connected socket with one non-blocking `write` each, the sockets split
//! over two tasks so that both cores write. It speaks just enough Engine.IO / Socket.IO for
//! `loadgen fanout` (open packet, namespace connect, events, acks; pings are not sent) and
//! answers any other HTTP request (`/metrics`, `/readyz`) with an empty 200.
//!
//! `loadtest/bench.sh floor-fanout2` runs it beside the Node peer: whatever no server can do
//! faster than this is the machine's (the kernel's loopback TCP and the load generator on the
//! same two cores), not the gateway's. Not a server to deploy: it trusts every client.
//! Run alone: `cargo run --release --example write_floor` (`PORT`, default 3300).

use base64::Engine as _;
use presence_gateway::wire::event_frame;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};

/// Every socket that completed its namespace connect.
type Sockets = Arc<Mutex<Vec<Arc<TcpStream>>>>;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3300);
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let sockets: Sockets = Arc::default();
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true).ok();
        tokio::spawn(serve(Arc::new(stream), sockets.clone()));
    }
}

async fn serve(stream: Arc<TcpStream>, sockets: Sockets) {
    let mut buf = Vec::with_capacity(1024);
    let Some(head_end) = read_head(&stream, &mut buf).await else {
        return;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    if !head.contains("upgrade: websocket") {
        let _ = write_all(
            &stream,
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        )
        .await;
        return;
    }
    buf.drain(..head_end + 4);
    // The load generator checks the status line only.
    let switching = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: floor\r\n\r\n";
    let open = r#"0{"sid":"floor","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#;
    if write_all(&stream, switching).await.is_err()
        || write_all(&stream, &frame(open)).await.is_err()
    {
        return;
    }
    let mut user = String::new();
    loop {
        while let Some((op, text, used)) = parse(&buf) {
            buf.drain(..used);
            if op == 0x8 {
                return;
            }
            if let Some(auth) = text.strip_prefix("40") {
                user = subject(auth).unwrap_or_default();
                if write_all(&stream, &frame(r#"40{"sid":"floor"}"#))
                    .await
                    .is_err()
                {
                    return;
                }
                sockets.lock().unwrap().push(stream.clone());
            } else if let Some(rest) = text.strip_prefix("42") {
                let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
                let (ack, event) = rest.split_at(digits);
                if let Ok(Value::Array(a)) = serde_json::from_str::<Value>(event)
                    && a.first().and_then(Value::as_str) == Some("presence:set-status")
                {
                    let _ = write_all(&stream, &frame(&format!(r#"43{ack}[{{"ok":true}}]"#))).await;
                    let details = a.get(1).map(|d| d["details"].clone()).unwrap_or_default();
                    let update =
                        serde_json::json!({"userId": user, "status": "live", "details": details});
                    // Framed as the gateway frames it, once for every socket.
                    broadcast(
                        &sockets,
                        event_frame("presence-update", &update.to_string()),
                    )
                    .await;
                }
            }
        }
        match stream.readable().await {
            Ok(()) => {}
            Err(_) => return,
        }
        let mut chunk = [0u8; 2048];
        match stream.try_read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

/// One write per socket, half the sockets from another task (both cores write).
async fn broadcast(sockets: &Sockets, frame: Arc<[u8]>) {
    let mut first = sockets.lock().unwrap().clone();
    let second = first.split_off(first.len() / 2);
    let f = frame.clone();
    let other = tokio::spawn(async move { write_each(&second, &f) });
    write_each(&first, &frame);
    let _ = other.await;
}

fn write_each(sockets: &[Arc<TcpStream>], frame: &[u8]) {
    for s in sockets {
        // A socket with no room misses the change: at 2 changes/s none has been seen full.
        let _ = s.try_write(frame);
    }
}

/// The JWT's `sub`, unverified: the floor trusts its load generator.
fn subject(auth: &str) -> Option<String> {
    let token: Value = serde_json::from_str(auth).ok()?;
    let claims = token["token"].as_str()?.split('.').nth(1)?;
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims)
        .ok()?;
    let claims: Value = serde_json::from_slice(&claims).ok()?;
    Some(claims["sub"].as_str()?.to_owned())
}

async fn read_head(stream: &TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(end);
        }
        stream.readable().await.ok()?;
        let mut chunk = [0u8; 2048];
        match stream.try_read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return None,
        }
    }
}

async fn write_all(stream: &TcpStream, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// An unmasked text frame (server to client) for the few packets that are not events.
fn frame(text: &str) -> Vec<u8> {
    let n = text.len();
    let mut f = Vec::with_capacity(n + 4);
    f.push(0x81);
    if n < 126 {
        f.push(n as u8);
    } else {
        f.push(126);
        f.extend_from_slice(&(n as u16).to_be_bytes());
    }
    f.extend_from_slice(text.as_bytes());
    f
}

/// One whole client frame from `b`: (opcode, text, bytes used). Client frames are masked;
/// messages here are small and never fragmented.
fn parse(b: &[u8]) -> Option<(u8, String, usize)> {
    if b.len() < 2 {
        return None;
    }
    let op = b[0] & 0x0f;
    let (len, mut at) = match b[1] & 0x7f {
        126 => (u16::from_be_bytes([*b.get(2)?, *b.get(3)?]) as usize, 4),
        127 => return None,
        n => (n as usize, 2),
    };
    let key: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    at += 4;
    let payload = b.get(at..at + len)?;
    let text: Vec<u8> = payload
        .iter()
        .enumerate()
        .map(|(i, x)| x ^ key[i % 4])
        .collect();
    Some((op, String::from_utf8_lossy(&text).into_owned(), at + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_masked_frame_and_the_tokens_subject() {
        let key = [1u8, 2, 3, 4];
        let text = b"40{}";
        let mut f = vec![0x81, 0x80 | text.len() as u8];
        f.extend_from_slice(&key);
        f.extend(text.iter().enumerate().map(|(i, x)| x ^ key[i % 4]));
        assert_eq!(parse(&f), Some((1, "40{}".to_owned(), f.len())));
        assert_eq!(parse(&f[..f.len() - 1]), None);
        let claims =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"sub":"lg-ch-1"}"#);
        assert_eq!(
            subject(&format!(r#"{{"token":"h.{claims}.s"}}"#)).as_deref(),
            Some("lg-ch-1")
        );
    }
}
