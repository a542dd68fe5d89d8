//! Holding many clients: in this process, or split over worker processes (`--procs`), each
//! printing `{"ready":…}` once connected and its final JSON after `stop` on stdin.
use super::*;

pub(super) fn heartbeat_ms_of(s: &Scenario) -> u64 {
    match s {
        Scenario::Idle { heartbeat_ms, .. } => *heartbeat_ms,
        _ => 5000,
    }
}

/// Connected clients, held by tasks until `stop`.
pub(super) struct Held {
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
pub(super) async fn worker(c: &Common, clients: usize, heartbeat_ms: u64) -> Result<Value, String> {
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
pub(super) enum Fleet {
    Local(Held),
    Workers(
        Vec<(
            tokio::process::Child,
            tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
        )>,
    ),
}

pub(super) struct FleetReady {
    pub connected: usize,
    pub failed: usize,
    pub latencies: Latencies,
    pub errors: Vec<String>,
}

pub(super) async fn launch(
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
    pub(super) async fn stop(self) -> u64 {
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
