//! The scenarios, one file each (`hold`: idle and storm; `fanout`; `subs`; `churn`; `queries`:
//! search and report; `audit`: delivery checked under faults), over the pieces they share: `fleet` (clients held in this process or
//! in workers), `prom` (reading the gateway's metrics), and the HTTP client in `crate::http`.

mod audit;
mod churn;
mod fanout;
mod fleet;
mod hold;
mod mux;
mod prom;
mod queries;
mod subs;

use audit::audit;
use churn::churn;
use fanout::fanout;
use fleet::*;
use hold::{idle, storm};
use prom::*;
use queries::{report, search};
mod rules;
use subs::subs;

use crate::measure::{self, Latencies};
use crate::sio::{Client, Incoming};
use crate::token;
use crate::{Cli, Common, Scenario};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{Semaphore, mpsc, watch};

/// Writes `what` to the file `LOADGEN_MARK` names, if set: a profiler outside waits on it to
/// record the replicas over the measured window only ("window", then "end").
fn mark(what: &str) {
    if let Ok(path) = std::env::var("LOADGEN_MARK") {
        let _ = std::fs::write(path, what);
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// A small deterministic PRNG (xorshift): jitter only, no crate needed.
struct Rng(u64);
impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

pub async fn run(cli: Cli) -> Result<Value, String> {
    let c = &cli.common;
    match cli.scenario.clone() {
        Scenario::Idle { clients, .. } | Scenario::Storm { clients } if c.worker.is_some() => {
            worker(c, clients, heartbeat_ms_of(&cli.scenario)).await
        }
        Scenario::Idle {
            clients,
            heartbeat_ms,
            hold_s,
        } => idle(&cli, clients, heartbeat_ms, hold_s).await,
        Scenario::Storm { clients } => storm(&cli, clients).await,
        Scenario::Fanout {
            viewers,
            changers,
            rate,
            duration_s,
            viewer_gender,
            batch,
            reading,
        } => {
            fanout(
                c,
                viewers,
                changers,
                rate,
                duration_s,
                &viewer_gender,
                batch,
                &reading,
            )
            .await
        }
        Scenario::Subs {
            subscribers,
            watching,
            per,
            rate,
            duration_s,
            batch,
            heartbeat_ms,
            start_at_ms,
            reading,
        } => {
            let watching = watching.unwrap_or(subscribers).min(subscribers);
            subs(
                c,
                subscribers,
                watching,
                per,
                rate,
                duration_s,
                batch,
                heartbeat_ms,
                start_at_ms,
                &reading,
            )
            .await
        }
        Scenario::Churn {
            clients,
            viewers,
            duration_s,
        } => churn(c, clients, viewers, duration_s).await,
        Scenario::Audit(args) => audit(c, args).await,
        Scenario::Search { rounds } => search(c, rounds).await,
        Scenario::Report { rounds, windows } => report(c, rounds, &windows).await,
    }
}

/// The load generator's changes carried by a `presence-update` or a `presence-batch` payload,
/// as (changer, seq, sent at µs): what `fanout` and `subs` count. Other users' are left out.
fn changes_in(frame: &str, prefix: &str) -> Vec<(u64, u32, u64)> {
    let Some(Frame(_, p)) = frame
        .strip_prefix("42")
        .and_then(|t| serde_json::from_str::<Frame>(t).ok())
    else {
        return Vec::new();
    };
    let one = std::slice::from_ref(&p);
    let updates = p.updates.as_deref().unwrap_or(one);
    updates
        .iter()
        .filter(|u| {
            u.user_id
                .as_deref()
                .is_some_and(|id| id.starts_with(prefix))
        })
        .filter_map(|u| {
            let d = u.details.as_ref()?;
            Some((d.c?, d.s? as u32, d.t?))
        })
        .collect()
}

/// `[event, payload]` of a presence frame, read without building a `Value` tree: only the
/// fields a scenario checks, the rest skipped (a load generator's CPU is the servers' loss).
#[derive(serde::Deserialize)]
struct Frame<'a>(serde::de::IgnoredAny, #[serde(borrow)] Update<'a>);

/// A `presence-update` payload, or a `presence-batch` one (`updates`).
#[derive(serde::Deserialize)]
struct Update<'a> {
    #[serde(rename = "userId", borrow, default)]
    user_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    details: Option<Mark>,
    #[serde(borrow, default)]
    updates: Option<Vec<Update<'a>>>,
}

/// What a load generator's change carries in `details`: changer, seq, sent at (µs).
#[derive(serde::Deserialize)]
struct Mark {
    c: Option<u64>,
    s: Option<u64>,
    t: Option<u64>,
}

/// What one client saw of the load generator's changes: the latest seq per changer, latencies,
/// changes seen twice, and the seqs it skipped (a batching client may skip superseded
/// versions), kept as ranges so that changes the server refused can be told apart afterwards.
#[derive(Default)]
struct Seen {
    last: HashMap<u64, u32>,
    lat: Latencies,
    /// The send time (µs) of each latency in `lat`, in the same order: latency through the run.
    sent: Vec<u64>,
    doubled: u64,
    /// (changer, first skipped seq, last skipped seq).
    skipped: Vec<(u64, u32, u32)>,
}

impl Seen {
    fn count(&mut self, ch: u64, seq: u32, sent_us: u64, batch: bool) {
        self.count_at(ch, seq, sent_us, now_us(), batch);
    }

    /// A change read at `at_us` (the mux times each read, not each count).
    fn count_at(&mut self, ch: u64, seq: u32, sent_us: u64, at_us: u64, batch: bool) {
        self.lat.push(at_us.saturating_sub(sent_us));
        self.sent.push(sent_us);
        let l = self.last.entry(ch).or_insert(0);
        if seq <= *l {
            self.doubled += 1;
        } else {
            if !batch && seq > *l + 1 {
                self.skipped.push((ch, *l + 1, seq - 1));
            }
            *l = seq;
        }
    }
}

/// Which changes the server accepted (acked `ok`), per changer: a change it refused (say
/// `unavailable` while the store is slow) reaches nobody, and is not missing.
struct Accepted(Vec<std::sync::Mutex<Vec<u32>>>);

impl Accepted {
    fn new(changers: usize) -> Self {
        Accepted((0..changers).map(|_| Default::default()).collect())
    }

    fn record(&self, ch: usize, seq: u32) {
        self.0[ch].lock().unwrap().push(seq);
    }

    /// The latest accepted seq of `ch` (0 if none).
    fn last(&self, ch: usize) -> u32 {
        self.0[ch]
            .lock()
            .unwrap()
            .iter()
            .copied()
            .max()
            .unwrap_or(0)
    }

    fn count(&self) -> u64 {
        self.0.iter().map(|v| v.lock().unwrap().len() as u64).sum()
    }

    fn holds(&self, ch: usize, seq: u32) -> bool {
        self.0[ch].lock().unwrap().contains(&seq)
    }
}

/// What a client missed of accepted changes, with up to `keep` examples pushed to `examples`:
/// every accepted change it skipped (not in batch mode, where superseded versions may be) and
/// each watched changer's last accepted change if it did not get that far.
fn missed(
    seen: &Seen,
    client: u64,
    watched: impl IntoIterator<Item = u64>,
    accepted: &Accepted,
    examples: &mut Vec<Value>,
) -> u64 {
    let mut n = 0u64;
    let mut note = |user: u64, seq: u32, why: &str| {
        n += 1;
        if examples.len() < 20 {
            examples.push(json!({"client": client, "changer": user, "seq": seq, "why": why}));
        }
    };
    for &(ch, from, to) in &seen.skipped {
        for s in from..=to {
            if accepted.holds(ch as usize, s) {
                note(ch, s, "skipped");
            }
        }
    }
    for j in watched {
        let last = accepted.last(j as usize);
        let got = seen.last.get(&j).copied().unwrap_or(0);
        if last > got {
            // Every accepted change after the last one seen was missed.
            for s in got + 1..=last {
                if accepted.holds(j as usize, s) {
                    note(j, s, "never arrived");
                }
            }
        }
    }
    n
}

/// GET `path` and return the body (anonymous: health, metrics).
async fn http_text(addr: std::net::SocketAddr, path: &str) -> Result<String, String> {
    let (_, body) = crate::http::Conn::open(addr).await?.get(path, "").await?;
    String::from_utf8(body).map_err(|e| e.to_string())
}

async fn http_json(addr: std::net::SocketAddr, path: &str) -> Result<Value, String> {
    let body = http_text(addr, path).await?;
    serde_json::from_str(&body).map_err(|e| format!("{e}: {body:.80}"))
}

/// Latency through the run: p50 and p99 of the changes sent in each `window` since the first,
/// so that a server falling behind (its latency growing while the changes keep coming) shows.
pub(super) fn by_window(samples: &[(u64, u64)], window: Duration) -> Value {
    let Some(first) = samples.iter().map(|(sent, _)| *sent).min() else {
        return json!([]);
    };
    let w = window.as_micros().max(1) as u64;
    let mut windows: std::collections::BTreeMap<u64, Latencies> = Default::default();
    for (sent, lat) in samples {
        windows.entry((sent - first) / w).or_default().push(*lat);
    }
    let out: Vec<Value> = windows
        .into_iter()
        .map(|(k, l)| {
            let mut v = l.summary();
            v["from_s"] = json!(k * w / 1_000_000);
            v
        })
        .collect();
    json!(out)
}

#[cfg(test)]
mod tests {
    use super::{by_window, changes_in};
    use std::time::Duration;

    #[test]
    fn reads_the_load_generators_changes_from_updates_and_batches() {
        let update = r#"42["presence-update",{"userId":"r1-ch-3","status":"live","details":{"c":3,"s":7,"t":1234},"version":9}]"#;
        assert_eq!(changes_in(update, "r1-ch-"), vec![(3, 7, 1234)]);
        // Another run's users, and users that carry other details (or none), are not ours.
        assert!(changes_in(update, "r2-ch-").is_empty());
        let others =
            r#"42["presence-update",{"userId":"r1-ch-1","status":"online","details":null}]"#;
        assert!(changes_in(others, "r1-ch-").is_empty());
        let batch = r#"42["presence-batch",{"updates":[{"userId":"r1-ch-1","details":{"c":1,"s":2,"t":5}},{"userId":"r1-v-0","details":{"x":"y"}},{"userId":"r1-ch-2","details":{"t":6,"s":1,"c":2}}]}]"#;
        assert_eq!(changes_in(batch, "r1-ch-"), vec![(1, 2, 5), (2, 1, 6)]);
        // Not a frame at all: nothing, and no panic.
        assert!(changes_in("42[", "r1-ch-").is_empty());
    }

    #[test]
    fn latency_through_the_run_is_grouped_by_when_the_change_was_sent() {
        let s = 1_000_000;
        let w = by_window(
            &[(10 * s, 1_000), (11 * s, 3_000), (16 * s, 50_000)],
            Duration::from_secs(5),
        );
        assert_eq!(w[0]["from_s"], 0);
        assert_eq!(w[0]["count"], 2);
        assert_eq!(w[1]["from_s"], 5);
        assert_eq!(w[1]["p50_ms"], 50.0);
    }
}
