//! The scenarios, and the worker protocol that splits clients over processes.
//!
//! A worker (`--worker I`) connects its share of the clients, prints one JSON line
//! `{"ready":…}`, holds the connections until it reads `stop` on stdin, then prints its
//! final JSON. The parent samples the server around those points.

use crate::measure::{self, Latencies};
use crate::sio::{Client, Incoming};
use crate::token;
use crate::{Cli, Common, Scenario};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{Semaphore, mpsc, watch};

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
        } => fanout(c, viewers, changers, rate, duration_s, &viewer_gender).await,
        Scenario::Churn {
            clients,
            viewers,
            duration_s,
        } => churn(c, clients, viewers, duration_s).await,
        Scenario::Search { rounds } => search(c, rounds).await,
        Scenario::Report { rounds, windows } => report(c, rounds, &windows).await,
    }
}

fn heartbeat_ms_of(s: &Scenario) -> u64 {
    match s {
        Scenario::Idle { heartbeat_ms, .. } => *heartbeat_ms,
        _ => 5000,
    }
}

/// Connected clients, held by tasks until `stop`.
struct Held {
    connected: usize,
    failed: usize,
    latencies: Latencies,
    errors: Vec<String>,
    tasks: Vec<tokio::task::JoinHandle<u64>>,
    stop: watch::Sender<bool>,
}

async fn hold_clients(c: &Common, ids: Range<usize>, heartbeat_ms: u64) -> Held {
    let (stop, stop_rx) = watch::channel(false);
    let sem = Arc::new(Semaphore::new(c.concurrency.max(1)));
    let (tx, mut rx) = mpsc::unbounded_channel::<Result<Duration, String>>();
    let n = ids.len();
    let mut tasks = Vec::with_capacity(n);
    for i in ids {
        let (sem, tx, mut stop_rx) = (sem.clone(), tx.clone(), stop_rx.clone());
        let target = c.target_for(i);
        let source = c.source(i);
        let auth =
            json!({"token": token::mint(&c.secret, &format!("{}-{i}", c.prefix), &c.gender)});
        tasks.push(tokio::spawn(async move {
            let permit = sem.acquire_owned().await.expect("open semaphore");
            let r = Client::connect(target, source, &auth).await;
            drop(permit);
            let mut client = match r {
                Ok((client, latency)) => {
                    let _ = tx.send(Ok(latency));
                    client
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return 0;
                }
            };
            drop(tx);
            // Spread heartbeats over the period, as real clients would be.
            let offset = Duration::from_millis(Rng::new(i as u64).below(heartbeat_ms));
            let mut tick = tokio::time::interval_at(
                tokio::time::Instant::now() + offset,
                Duration::from_millis(heartbeat_ms),
            );
            let mut beats = 0u64;
            loop {
                tokio::select! {
                    _ = stop_rx.changed() => break,
                    _ = tick.tick() => {
                        if client.emit("user:heartbeat", None, None).await.is_err() { break; }
                        beats += 1;
                    }
                    m = client.recv() => if m.is_none() { break },
                }
            }
            client.close().await;
            beats
        }));
    }
    drop(tx);
    let mut held = Held {
        connected: 0,
        failed: 0,
        latencies: Latencies::default(),
        errors: vec![],
        tasks,
        stop,
    };
    for _ in 0..n {
        match rx.recv().await {
            Some(Ok(l)) => {
                held.connected += 1;
                held.latencies.push(l.as_micros() as u64);
            }
            Some(Err(e)) => {
                held.failed += 1;
                if held.errors.len() < 5 {
                    held.errors.push(e);
                }
            }
            None => break,
        }
    }
    held
}

impl Held {
    async fn finish(self) -> u64 {
        let _ = self.stop.send(true);
        let mut beats = 0;
        for t in self.tasks {
            beats += t.await.unwrap_or(0);
        }
        beats
    }
}

/// Worker process: hold a share of the clients, report when ready, stop on "stop".
async fn worker(c: &Common, clients: usize, heartbeat_ms: u64) -> Result<Value, String> {
    let i = c.worker.unwrap_or(0);
    let k = c.procs.max(1);
    let range = (i * clients / k)..((i + 1) * clients / k);
    let held = hold_clients(c, range, heartbeat_ms).await;
    let ready = json!({"ready": true, "connected": held.connected, "failed": held.failed,
                       "errors": held.errors, "latencies_us": held.latencies.0});
    println!("{ready}");
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(l)) = lines.next_line().await {
        if l.trim() == "stop" {
            break;
        }
    }
    let beats = held.finish().await;
    Ok(json!({"done": true, "heartbeats": beats}))
}

/// The clients of idle and storm: in this process, or split over worker processes.
enum Fleet {
    Local(Held),
    Workers(
        Vec<(
            tokio::process::Child,
            tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
        )>,
    ),
}

struct FleetReady {
    connected: usize,
    failed: usize,
    latencies: Latencies,
    errors: Vec<String>,
}

async fn launch(
    cli: &Cli,
    clients: usize,
    heartbeat_ms: u64,
) -> Result<(Fleet, FleetReady), String> {
    let c = &cli.common;
    if c.procs <= 1 {
        let held = hold_clients(c, 0..clients, heartbeat_ms).await;
        let ready = FleetReady {
            connected: held.connected,
            failed: held.failed,
            latencies: held.latencies.clone(),
            errors: held.errors.clone(),
        };
        return Ok((Fleet::Local(held), ready));
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut workers = Vec::new();
    for i in 0..c.procs {
        let mut args: Vec<String> = std::env::args().skip(1).collect();
        args.push("--worker".into());
        args.push(i.to_string());
        let mut child = tokio::process::Command::new(&exe)
            .args(&args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| e.to_string())?;
        let out = BufReader::new(child.stdout.take().expect("piped")).lines();
        workers.push((child, out));
    }
    let mut ready = FleetReady {
        connected: 0,
        failed: 0,
        latencies: Latencies::default(),
        errors: vec![],
    };
    for (_, out) in workers.iter_mut() {
        let line = out
            .next_line()
            .await
            .map_err(|e| e.to_string())?
            .ok_or("worker died")?;
        let v: Value =
            serde_json::from_str(&line).map_err(|e| format!("worker said {line:.80}: {e}"))?;
        ready.connected += v["connected"].as_u64().unwrap_or(0) as usize;
        ready.failed += v["failed"].as_u64().unwrap_or(0) as usize;
        for l in v["latencies_us"].as_array().into_iter().flatten() {
            ready.latencies.push(l.as_u64().unwrap_or(0));
        }
        for e in v["errors"].as_array().into_iter().flatten() {
            ready.errors.push(e.as_str().unwrap_or("").to_string());
        }
    }
    Ok((Fleet::Workers(workers), ready))
}

impl Fleet {
    async fn stop(self) -> u64 {
        match self {
            Fleet::Local(h) => h.finish().await,
            Fleet::Workers(ws) => {
                let mut beats = 0;
                for (mut child, mut out) in ws {
                    if let Some(mut stdin) = child.stdin.take() {
                        let _ = stdin.write_all(b"stop\n").await;
                    }
                    if let Ok(Some(l)) = out.next_line().await {
                        beats += serde_json::from_str::<Value>(&l)
                            .ok()
                            .and_then(|v| v["heartbeats"].as_u64())
                            .unwrap_or(0);
                    }
                    let _ = child.wait().await;
                }
                beats
            }
        }
    }
}

fn kib(v: u64) -> Value {
    json!(v)
}

async fn idle(cli: &Cli, clients: usize, heartbeat_ms: u64, hold_s: u64) -> Result<Value, String> {
    let c = &cli.common;
    let base = measure::sum(&c.pids);
    let started = Instant::now();
    let (fleet, ready) = launch(cli, clients, heartbeat_ms).await?;
    let connect_s = started.elapsed().as_secs_f64();
    // Let one heartbeat period pass so every client has spoken and the server's buffers
    // settle, then measure over the hold.
    tokio::time::sleep(Duration::from_millis(heartbeat_ms)).await;
    let before = measure::sum(&c.pids);
    let redis_before = match c.redis {
        Some(r) => measure::redis_calls(r).await,
        None => None,
    };
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(hold_s)).await;
    let end = measure::sum(&c.pids);
    let redis_after = match c.redis {
        Some(r) => measure::redis_calls(r).await,
        None => None,
    };
    let held_s = t0.elapsed().as_secs_f64();
    let beats = fleet.stop().await;
    let conns = ready.connected.max(1) as f64;
    let hb_rate = ready.connected as f64 * 1000.0 / heartbeat_ms as f64;
    let cpu = end.cpu_s - before.cpu_s;
    Ok(json!({
        "scenario": "idle",
        "clients": clients, "connected": ready.connected, "failed": ready.failed, "errors": ready.errors,
        "connect_all_s": connect_s, "connect_latency": ready.latencies.summary(),
        "heartbeats_sent": beats, "heartbeats_per_s": hb_rate,
        "redis": match (redis_before, redis_after) {
            (Some(a), Some(b)) => json!({"commands_during_hold": b - a, "heartbeats_during_hold": hb_rate * held_s,
                                          "commands_per_heartbeat": (b - a) as f64 / (hb_rate * held_s).max(1.0)}),
            _ => Value::Null,
        },
        "server": if c.pids.is_empty() { Value::Null } else { json!({
            "rss_before_kib": kib(base.rss_kib), "rss_connected_kib": kib(before.rss_kib), "rss_end_kib": kib(end.rss_kib),
            "kib_per_connection": (end.rss_kib as f64 - base.rss_kib as f64) / conns,
            "cpu_s_during_hold": cpu, "hold_s": held_s,
            "cpu_cores": cpu / held_s,
            "cpu_cores_per_1000_heartbeats_per_s": if hb_rate > 0.0 { cpu / held_s / (hb_rate / 1000.0) } else { 0.0 },
        })},
    }))
}

/// GET a JSON document over plain HTTP/1.1.
/// A gateway's Prometheus text, summed per metric name over every series (None when absent).
async fn metric_sum(addr: std::net::SocketAddr, name: &str) -> Result<Option<f64>, String> {
    let text = http_text(addr, "/metrics").await?;
    let mut sum = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        if let Some(v) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *sum.get_or_insert(0.0) += v;
        }
    }
    Ok(sum)
}

/// A Prometheus histogram summed over every series and every target: (upper bound, cumulative
/// count) per bucket, in bound order.
async fn histogram(
    targets: &[std::net::SocketAddr],
    name: &str,
) -> Result<Vec<(f64, f64)>, String> {
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    let prefix = format!("{name}_bucket{{");
    for t in targets {
        for line in http_text(*t, "/metrics").await?.lines() {
            let Some(rest) = line.strip_prefix(&prefix) else {
                continue;
            };
            let le = rest.split("le=\"").nth(1).and_then(|v| v.split('"').next());
            let le = match le {
                Some("+Inf") => f64::INFINITY,
                Some(v) => v.parse().map_err(|_| format!("bucket bound {v}"))?,
                None => continue,
            };
            let n: f64 = rest
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            match buckets.iter_mut().find(|(b, _)| *b == le) {
                Some((_, c)) => *c += n,
                None => buckets.push((le, n)),
            }
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(buckets)
}

/// Quantiles (milliseconds, interpolated within buckets) of what a histogram gained between
/// two snapshots.
fn histogram_summary(before: &[(f64, f64)], after: &[(f64, f64)]) -> Value {
    let diff: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, n)| {
            let was = before
                .iter()
                .find(|(b, _)| b == le)
                .map_or(0.0, |(_, c)| *c);
            (*le, n - was)
        })
        .collect();
    let total = diff.last().map_or(0.0, |(_, c)| *c);
    let q = |q: f64| -> Value {
        if total <= 0.0 {
            return Value::Null;
        }
        let want = q * total;
        let mut lower = (0.0, 0.0);
        for &(le, c) in &diff {
            if c >= want {
                if le.is_infinite() {
                    return json!(format!("> {} ms", lower.0 * 1000.0));
                }
                let share = if c > lower.1 {
                    (want - lower.1) / (c - lower.1)
                } else {
                    1.0
                };
                return json!(((lower.0 + (le - lower.0) * share) * 1e6).round() / 1000.0);
            }
            lower = (le, c);
        }
        Value::Null
    };
    let within = |bound: f64| {
        diff.iter()
            .find(|(le, _)| *le == bound)
            .map(|(_, c)| c / total)
    };
    json!({"count": total, "p50_ms": q(0.5), "p99_ms": q(0.99), "share_within_50ms": within(0.05)})
}

async fn http_text(addr: std::net::SocketAddr, path: &str) -> Result<String, String> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf);
    Ok(text.split("\r\n\r\n").nth(1).ok_or("no body")?.to_string())
}

async fn http_json(addr: std::net::SocketAddr, path: &str) -> Result<Value, String> {
    let body = http_text(addr, path).await?;
    serde_json::from_str(&body).map_err(|e| format!("{e}: {body:.80}"))
}

async fn online_users(c: &Common) -> Result<u64, String> {
    Ok(
        http_json(c.target[0], "/api/health").await?["presence"]["onlineUsers"]
            .as_u64()
            .unwrap_or(0),
    )
}

async fn storm(cli: &Cli, clients: usize) -> Result<Value, String> {
    let c = &cli.common;
    let base_online = online_users(c).await?;
    let base = measure::sum(&c.pids);
    let started = Instant::now();
    let watcher = {
        let c = c.clone();
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(300);
            loop {
                if let Ok(n) = online_users(&c).await
                    && n >= base_online + clients as u64
                {
                    return Some(started.elapsed().as_secs_f64());
                }
                if Instant::now() > deadline {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let (fleet, ready) = launch(cli, clients, 5000).await?;
    let connected_s = started.elapsed().as_secs_f64();
    let all_online_s = watcher.await.map_err(|e| e.to_string())?;
    // With a database: until the presence writer of a freshly started gateway has stored
    // every connect and has nothing pending (the write-behind catching up with the storm).
    let mut database_written_s = None;
    if metric_sum(c.target[0], "db_presence_writes_total")
        .await?
        .is_some()
    {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            let written = metric_sum(c.target[0], "db_presence_writes_total")
                .await?
                .unwrap_or(0.0);
            let pending = metric_sum(c.target[0], "db_pending_writes")
                .await?
                .unwrap_or(0.0);
            if written >= clients as f64 && pending == 0.0 {
                database_written_s = Some(started.elapsed().as_secs_f64());
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let end = measure::sum(&c.pids);
    fleet.stop().await;
    Ok(json!({
        "scenario": "storm", "clients": clients, "connected": ready.connected, "failed": ready.failed,
        "errors": ready.errors, "all_connected_s": connected_s,
        "all_online_in_health_s": all_online_s,
        "all_in_database_s": database_written_s,
        "connect_latency": ready.latencies.summary(),
        "server_cpu_s": end.cpu_s - base.cpu_s,
    }))
}

async fn fanout(
    c: &Common,
    viewers: usize,
    changers: usize,
    rate: f64,
    duration_s: u64,
    viewer_gender: &str,
) -> Result<Value, String> {
    let final_seq: Arc<Vec<AtomicU32>> =
        Arc::new((0..changers).map(|_| AtomicU32::new(0)).collect());
    let received = Arc::new(AtomicU64::new(0));
    let (stop, stop_rx) = watch::channel(false);
    let sem = Arc::new(Semaphore::new(c.concurrency.max(1)));
    let prefix = format!("{}-ch-", c.prefix);

    // Viewers first, so they see every change.
    let mut vtasks = Vec::new();
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<bool>();
    for i in 0..viewers {
        let auth =
            json!({"token": token::mint(&c.secret, &format!("{}-v-{i}", c.prefix), viewer_gender)});
        let (target, source) = (c.target_for(i), c.source(i));
        let (sem, ready_tx, mut stop_rx, received, prefix) = (
            sem.clone(),
            ready_tx.clone(),
            stop_rx.clone(),
            received.clone(),
            prefix.clone(),
        );
        vtasks.push(tokio::spawn(async move {
            let permit = sem.acquire_owned().await.ok();
            let r = Client::connect(target, source, &auth).await;
            drop(permit);
            let _ = ready_tx.send(r.is_ok());
            let Ok((mut client, _)) = r else { return None };
            let mut last: HashMap<u64, u32> = HashMap::new();
            let (mut lat, mut doubled, mut gaps) = (Latencies::default(), 0u64, 0u64);
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            // Closed by the server before the run ended (a viewer that hears nothing because it
            // was disconnected is told apart from one that is connected and deaf).
            let mut closed_early = false;
            loop {
                tokio::select! {
                    _ = stop_rx.changed() => break,
                    _ = tick.tick() => { let _ = client.emit("user:heartbeat", None, None).await; }
                    m = client.recv() => match m {
                        None => { closed_early = true; break }
                        Some(Incoming::Event(ev, p)) if ev == "presence-update" => {
                            let from_changer = p["userId"].as_str().is_some_and(|u| u.starts_with(&prefix));
                            let d = &p["details"];
                            if let (true, Some(ch), Some(seq), Some(t)) = (from_changer, d["c"].as_u64(), d["s"].as_u64(), d["t"].as_u64()) {
                                lat.push(now_us().saturating_sub(t));
                                received.fetch_add(1, Ordering::Relaxed);
                                let l = last.entry(ch).or_insert(0);
                                let seq = seq as u32;
                                if seq <= *l { doubled += 1 } else { gaps += (seq - *l - 1) as u64; *l = seq; }
                            }
                        }
                        Some(_) => {}
                    },
                }
            }
            client.close().await;
            Some((lat, doubled, gaps, last, closed_early))
        }));
    }
    drop(ready_tx);
    let mut viewers_up = 0;
    for _ in 0..viewers {
        viewers_up += ready_rx.recv().await.unwrap_or(false) as usize;
    }

    // The replicas' own fan-out histogram (commit → emitted on every local socket), from here
    // on: the viewers' connects are not part of it.
    const FANOUT: &str = "presence_fanout_latency_seconds";
    let server_before = histogram(&c.target, FANOUT).await?;
    let cpu_before = measure::sum(&c.pids);

    // Changers: each sets `live` with new details (a change every time) at its share of the rate.
    let period = Duration::from_secs_f64(changers as f64 / rate.max(0.001));
    let accepted = Arc::new(AtomicU64::new(0));
    let mut ctasks = Vec::new();
    let t_start = Instant::now();
    for ch in 0..changers {
        let auth = json!({"token": token::mint(&c.secret, &format!("{prefix}{ch}"), "female")});
        let (target, source) = (c.target_for(ch + viewers), c.source(ch + viewers));
        let (final_seq, accepted) = (final_seq.clone(), accepted.clone());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(duration_s);
        ctasks.push(tokio::spawn(async move {
            let (mut client, _) = Client::connect(target, source, &auth).await?;
            let offset = period.mul_f64(ch as f64 / changers as f64);
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
            let mut seq = 0u32;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => break,
                    _ = tick.tick() => {
                        seq += 1;
                        let d = json!({"status": "live", "details": {"c": ch, "s": seq, "t": now_us()}});
                        client.emit("presence:set-status", Some(&d), Some(seq as u64)).await?;
                        final_seq[ch].store(seq, Ordering::Relaxed);
                    }
                    m = client.recv() => match m {
                        Some(Incoming::Ack(v)) if v["ok"] == true => { accepted.fetch_add(1, Ordering::Relaxed); }
                        None => break,
                        _ => {}
                    },
                }
            }
            // Wait for the last acks, briefly.
            let _ = tokio::time::timeout(Duration::from_millis(500), async { while client.recv().await.is_some() {} }).await;
            client.close().await;
            Ok::<u32, String>(seq)
        }));
    }
    let mut changes = 0u64;
    for t in ctasks {
        changes += t.await.map_err(|e| e.to_string())?? as u64;
    }
    let send_s = t_start.elapsed().as_secs_f64();
    let expected = changes * viewers_up as u64;
    // Drain: until everything expected arrived, or nothing more arrives for a second.
    let mut last_seen = (received.load(Ordering::Relaxed), Instant::now());
    while received.load(Ordering::Relaxed) < expected
        && last_seen.1.elapsed() < Duration::from_secs(1)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let r = received.load(Ordering::Relaxed);
        if r != last_seen.0 {
            last_seen = (r, Instant::now());
        }
    }
    let server = histogram_summary(&server_before, &histogram(&c.target, FANOUT).await?);
    let server_cpu_s = measure::sum(&c.pids).cpu_s - cpu_before.cpu_s;
    let _ = stop.send(true);
    let (mut lat, mut doubled, mut missing) = (Latencies::default(), 0u64, 0u64);
    // Viewers closed by the server, and viewers connected throughout that received nothing.
    let (mut closed_early, mut deaf) = (0u64, 0u64);
    for t in vtasks {
        if let Ok(Some((l, d, g, last, closed))) = t.await {
            closed_early += closed as u64;
            deaf += (!closed && changes > 0 && last.is_empty()) as u64;
            lat.merge(l);
            doubled += d;
            missing += g;
            for (ch, fs) in final_seq.iter().enumerate() {
                let got = last.get(&(ch as u64)).copied().unwrap_or(0);
                missing += fs.load(Ordering::Relaxed).saturating_sub(got) as u64;
            }
        }
    }
    let got = received.load(Ordering::Relaxed);
    Ok(json!({
        "scenario": "fanout", "viewers": viewers, "viewers_connected": viewers_up, "changers": changers,
        "changes": changes, "changes_accepted": accepted.load(Ordering::Relaxed), "changes_per_s": changes as f64 / send_s,
        "deliveries": {"expected": expected, "received": got, "missing": missing, "doubled": doubled},
        "viewers_closed_early": closed_early, "viewers_connected_but_deaf": deaf,
        "deliveries_per_s": got as f64 / send_s,
        "latency": lat.summary(),
        "server_fanout_latency": server,
        // The replicas' CPU while changes flowed, per 1,000 deliveries.
        "server_cpu_s": server_cpu_s,
        "server_cpu_ms_per_1000_deliveries": if got > 0 { server_cpu_s * 1e6 / got as f64 } else { 0.0 },
    }))
}

async fn churn(
    c: &Common,
    clients: usize,
    viewers: usize,
    duration_s: u64,
) -> Result<Value, String> {
    let (stop, stop_rx) = watch::channel(false);
    let prefix = format!("{}-churn-", c.prefix);
    let mut vtasks = Vec::new();
    for i in 0..viewers {
        let auth =
            json!({"token": token::mint(&c.secret, &format!("{}-cv-{i}", c.prefix), "female")});
        let (mut client, _) = Client::connect(c.target_for(i), c.source(i), &auth).await?;
        let (mut stop_rx, prefix) = (stop_rx.clone(), prefix.clone());
        vtasks.push(tokio::spawn(async move {
            // Per user: the announcements seen, as (online, version).
            let mut seen: HashMap<String, Vec<(bool, i64)>> = HashMap::new();
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = stop_rx.changed() => break,
                    _ = tick.tick() => { let _ = client.emit("user:heartbeat", None, None).await; }
                    m = client.recv() => match m {
                        None => break,
                        Some(Incoming::Event(ev, p)) if ev == "presence-update" => {
                            if let Some(u) = p["userId"].as_str().filter(|u| u.starts_with(&prefix)) {
                                seen.entry(u.to_string()).or_default().push((p["online"] == true, p["version"].as_i64().unwrap_or(0)));
                            }
                        }
                        Some(_) => {}
                    },
                }
            }
            client.close().await;
            seen
        }));
    }
    let sessions = Arc::new(AtomicU64::new(0));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(duration_s);
    let mut ctasks = Vec::new();
    for i in 0..clients {
        let auth = json!({"token": token::mint(&c.secret, &format!("{prefix}{i}"), "female")});
        let (target, source, sessions) = (
            c.target_for(viewers + i),
            c.source(viewers + i),
            sessions.clone(),
        );
        ctasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(i as u64 + 7);
            while tokio::time::Instant::now() < deadline {
                if let Ok((client, _)) = Client::connect(target, source, &auth).await {
                    sessions.fetch_add(1, Ordering::Relaxed);
                    let hold = Duration::from_millis(200 + rng.below(1300));
                    let mut client = client;
                    let _ = tokio::time::timeout(hold, async {
                        while client.recv().await.is_some() {}
                    })
                    .await;
                    client.close().await;
                }
                tokio::time::sleep(Duration::from_millis(50 + rng.below(450))).await;
            }
        }));
    }
    for t in ctasks {
        let _ = t.await;
    }
    // Every churner is gone: wait for the final offline announcements to arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = stop.send(true);
    let (mut announcements, mut doubled, mut out_of_order, mut not_offline_at_end) =
        (0u64, 0u64, 0u64, 0u64);
    for t in vtasks {
        let seen = t.await.map_err(|e| e.to_string())?;
        for (_, list) in seen {
            announcements += list.len() as u64;
            for w in list.windows(2) {
                if w[0].0 == w[1].0 {
                    doubled += 1;
                }
                if w[1].1 <= w[0].1 {
                    out_of_order += 1;
                }
            }
            if list.last().is_some_and(|l| l.0) {
                not_offline_at_end += 1;
            }
        }
    }
    Ok(json!({
        "scenario": "churn", "clients": clients, "viewers": viewers, "sessions": sessions.load(Ordering::Relaxed),
        "announcements_seen": announcements, "doubled_or_flapping": doubled, "versions_out_of_order": out_of_order,
        "users_not_offline_at_end": not_offline_at_end,
    }))
}

/// The search mix: what people type (one or two letters, a first name, a surname, a full
/// name), what matches one user (a number), and what matches nobody.
async fn search(c: &Common, rounds: usize) -> Result<Value, String> {
    let q = |class: &str, q: &str, limit: usize| {
        (
            class.to_string(),
            format!("/api/users/search?q={q}&limit={limit}"),
        )
    };
    let queries = vec![
        q("1 char", "a", 20),
        q("2 chars", "an", 20),
        // Inside names only (no first name starts with them): the substring index for one
        // or two characters, the trigram index for three.
        q("1 char inside", "y", 20),
        q("2 chars inside", "lm", 20),
        q("3 chars inside", "ilm", 20),
        q("1 char, no match", "%25", 20),
        q("2 chars, digits", "57", 20),
        q("first name", "anna", 20),
        q("surname", "kowalski", 20),
        q("full name", "maria%20garcia", 20),
        q("one user", "123457", 20),
        q("no match", "zzqxv", 20),
        q("2 chars, no match", "zq", 20),
        q("limit 100", "el", 100),
    ];
    let mut out = serde_json::Map::new();
    for (viewer, gender) in [("as_woman", "female"), ("as_man", "male")] {
        let token = crate::token::mint(&c.secret, &format!("{}-search-{viewer}", c.prefix), gender);
        let r = crate::http::query_mix(
            c.target[0],
            token,
            queries.clone(),
            rounds,
            c.concurrency.min(8),
        )
        .await?;
        out.insert(viewer.into(), r);
    }
    Ok(Value::Object(out))
}

/// Cold: each window asked once with a distinct `limit` (a new cache key, so the replica
/// queries PostgreSQL); cached: the same window asked again.
async fn report(c: &Common, rounds: usize, windows: &str) -> Result<Value, String> {
    let mut token_claims =
        crate::token::mint_roles(&c.secret, &format!("{}-dash", c.prefix), &["dashboard"]);
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for (i, w) in windows.split(';').filter(|w| !w.is_empty()).enumerate() {
        let (from, to) = w.split_once(',').ok_or("windows: from,to;from,to")?;
        for r in 0..rounds {
            // limit 100+r..: a key never asked before.
            cold.push((
                format!("window {i}"),
                format!("/api/stats?from={from}&to={to}&limit={}", 100 + r + 1),
            ));
        }
        warm.push((
            format!("window {i}"),
            format!("/api/stats?from={from}&to={to}&limit=100"),
        ));
    }
    let cold_r = crate::http::query_mix(c.target[0], token_claims.clone(), cold, 1, 1).await?;
    // Each cached window asked once first, unmeasured: that request is a cold one.
    crate::http::query_mix(c.target[0], token_claims.clone(), warm.clone(), 1, 1).await?;
    let warm_r = crate::http::query_mix(
        c.target[0],
        std::mem::take(&mut token_claims),
        warm,
        rounds,
        1,
    )
    .await?;
    Ok(serde_json::json!({"cold": cold_r, "cached": warm_r}))
}
