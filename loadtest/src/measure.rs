//! Measurements: latency percentiles, and a server process's memory and CPU from /proc.

use serde_json::{Value, json};

/// Latencies in microseconds; percentiles by sorting (exact, and cheap at these sizes).
#[derive(Default, Clone)]
pub struct Latencies(pub Vec<u64>);

impl Latencies {
    pub fn push(&mut self, us: u64) {
        self.0.push(us);
    }

    pub fn merge(&mut self, other: Latencies) {
        self.0.extend(other.0);
    }

    pub fn summary(&self) -> Value {
        let mut v = self.0.clone();
        v.sort_unstable();
        let pick = |q: f64| -> f64 {
            if v.is_empty() {
                return 0.0;
            }
            let i = ((v.len() as f64 - 1.0) * q).round() as usize;
            v[i] as f64 / 1000.0
        };
        json!({"count": v.len(), "p50_ms": pick(0.5), "p99_ms": pick(0.99), "p999_ms": pick(0.999), "max_ms": pick(1.0)})
    }
}

/// Resident memory (KiB) and CPU time (seconds) of a process.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    pub rss_kib: u64,
    pub cpu_s: f64,
}

pub fn sample(pid: u32) -> Option<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may contain spaces, closed by ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ProcSample {
        rss_kib,
        cpu_s: ticks as f64 / 100.0,
    })
}

pub fn sum(pids: &[u32]) -> ProcSample {
    pids.iter()
        .filter_map(|p| sample(*p))
        .fold(ProcSample::default(), |a, s| ProcSample {
            rss_kib: a.rss_kib + s.rss_kib,
            cpu_s: a.cpu_s + s.cpu_s,
        })
}

/// Total commands Redis has executed (`INFO commandstats`, scripts' inner calls included).
pub async fn redis_calls(addr: std::net::SocketAddr) -> Option<u64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(b"INFO commandstats\r\nQUIT\r\n").await.ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf);
    Some(
        text.lines()
            .filter(|l| l.starts_with("cmdstat_"))
            .filter_map(|l| {
                l.split("calls=")
                    .nth(1)?
                    .split(',')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum(),
    )
}
