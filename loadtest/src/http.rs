//! HTTP scenarios: many GETs over keep-alive connections, latency per query class.
//!
//! A minimal HTTP/1.1 client (request line, headers, `Content-Length` body) is enough for
//! the gateway's JSON answers and keeps loadgen free of an HTTP client dependency.

use crate::measure::Latencies;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Instant;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

pub struct Conn {
    host: SocketAddr,
    stream: BufReader<TcpStream>,
}

impl Conn {
    pub async fn open(host: SocketAddr) -> Result<Self, String> {
        let s = TcpStream::connect(host).await.map_err(|e| e.to_string())?;
        s.set_nodelay(true).ok();
        Ok(Conn {
            host,
            stream: BufReader::new(s),
        })
    }

    /// GET `path`; returns the status and body.
    pub async fn get(&mut self, path: &str, token: &str) -> Result<(u16, Vec<u8>), String> {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\r\n",
            self.host
        );
        self.stream
            .get_mut()
            .write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        self.stream
            .read_line(&mut line)
            .await
            .map_err(|e| e.to_string())?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {line:?}"))?;
        let mut len = 0usize;
        loop {
            line.clear();
            self.stream
                .read_line(&mut line)
                .await
                .map_err(|e| e.to_string())?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v
                    .trim()
                    .parse()
                    .map_err(|_| "bad content-length".to_string())?;
            }
        }
        let mut body = vec![0; len];
        self.stream
            .read_exact(&mut body)
            .await
            .map_err(|e| e.to_string())?;
        Ok((status, body))
    }
}

/// `rounds` passes over `queries` (class, path) on `concurrency` connections; latency per
/// class and overall. Every answer must be 200.
pub async fn query_mix(
    target: SocketAddr,
    token: String,
    queries: Vec<(String, String)>,
    rounds: usize,
    concurrency: usize,
) -> Result<Value, String> {
    let work: Vec<(String, String)> = (0..rounds).flat_map(|_| queries.clone()).collect();
    let work = std::sync::Arc::new(tokio::sync::Mutex::new(work.into_iter()));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (work, token) = (work.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(target).await?;
            let mut out: Vec<(String, u64, usize)> = Vec::new();
            loop {
                let Some((class, path)) = work.lock().await.next() else {
                    break;
                };
                let t = Instant::now();
                let (status, body) = conn.get(&path, &token).await?;
                let us = t.elapsed().as_micros() as u64;
                if status != 200 {
                    return Err(format!(
                        "{path}: HTTP {status}: {}",
                        String::from_utf8_lossy(&body)
                    ));
                }
                let hits = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|v| v["users"].as_array().map(Vec::len))
                    .unwrap_or(0);
                out.push((class, us, hits));
            }
            Ok::<_, String>(out)
        }));
    }
    let mut all = Latencies::default();
    let mut by: BTreeMap<String, (Latencies, usize)> = BTreeMap::new();
    for t in tasks {
        for (class, us, hits) in t.await.map_err(|e| e.to_string())?? {
            all.push(us);
            let e = by.entry(class).or_default();
            e.0.push(us);
            e.1 = hits;
        }
    }
    let classes: serde_json::Map<String, Value> = by
        .into_iter()
        .map(|(k, (l, hits))| {
            let mut s = l.summary();
            s["hits"] = json!(hits);
            (k, s)
        })
        .collect();
    Ok(json!({"requests": all.summary(), "by_query": classes}))
}
