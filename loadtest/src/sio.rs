//! A minimal Socket.IO v4 client over WebSocket: just the Engine.IO framing a load test needs
//! (open, `40{auth}`, ping `2` / pong `3`, `42[event,…]`, acks `43id[…]`), with small buffers
//! so that tens of thousands of connections fit in one process.

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// What arrives on a connection, decoded as far as a scenario needs.
pub enum Incoming {
    Event(String, Value),
    /// An ack: its id and the first argument.
    Ack(u64, Value),
    Other,
}

pub struct Client {
    ws: Ws,
}

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
        let url = format!("ws://{target}/socket.io/?EIO=4&transport=websocket");
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let (ws, _) = tokio_tungstenite::client_async_with_config(
            url,
            MaybeTlsStream::Plain(stream),
            Some(config),
        )
        .await
        .map_err(|e| format!("ws: {e}"))?;
        let mut c = Client { ws };
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

    pub async fn send(&mut self, text: String) -> Result<(), String> {
        self.ws
            .send(Message::text(text))
            .await
            .map_err(|e| e.to_string())
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

    /// The next text frame, answering pings on the way. `None` when closed.
    async fn next_text(&mut self) -> Option<String> {
        loop {
            match self.ws.next().await? {
                Ok(Message::Text(t)) => {
                    if t.as_str() == "2" {
                        self.ws.send(Message::text("3")).await.ok()?;
                        continue;
                    }
                    return Some(t.to_string());
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    /// The next decoded message. `None` when closed.
    pub async fn recv(&mut self) -> Option<Incoming> {
        let t = self.next_text().await?;
        Some(decode(&t))
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

fn decode(t: &str) -> Incoming {
    if let Some(rest) = t.strip_prefix("42") {
        if let Ok(Value::Array(mut a)) = serde_json::from_str::<Value>(rest)
            && let Some(Value::String(ev)) = a.first().cloned()
        {
            let data = if a.len() > 1 {
                a.swap_remove(1)
            } else {
                Value::Null
            };
            return Incoming::Event(ev, data);
        }
    } else if let Some(rest) = t.strip_prefix("43") {
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
    Incoming::Other
}
