//! `subs`: subscription sockets (section 9), in the shape of the million-user model: a client
//! is a user who subscribes to `per` others and changes status now and then, so each change is
//! watched by about `per` sockets. The first `watching` clients subscribe to each other and
//! change, at `rate` per second together; the rest are connected sockets subscribed to users
//! who never change (what is online but watches nothing that moves), which a change must not
//! cost anything. Every watcher must reach each watched user's last change (without batching:
//! every change, in order).
//!
//! Once subscribed, a client's socket is handed to the readers of [`super::mux`], which read
//! it, send its heartbeats and changes, and time each read (`--readers`, default 1); with
//! `--readers 0` each client stays a tokio task, the instrument before session 12, which cost
//! about as much per delivery as the servers.
use super::mux::{Changes, Mux, Plan, Setup};
use super::*;

/// Ack ids of subscribe attempts, above any change's seq.
const SUBSCRIBE_ACK: u64 = 1 << 32;

#[allow(clippy::too_many_arguments)]
pub(super) async fn subs(
    c: &Common,
    subscribers: usize,
    watching: usize,
    per: usize,
    rate: f64,
    duration_s: u64,
    batch: bool,
    heartbeat_ms: u64,
    start_at_ms: Option<u64>,
    reading: &crate::Reading,
) -> Result<Value, String> {
    let n = subscribers;
    let watching = watching.min(n);
    // The changes each client's server accepted (a refused one reaches nobody).
    let accepted = Arc::new(Accepted::new(n));
    let sent = Arc::new(AtomicU64::new(0));
    let received = Arc::new(AtomicU64::new(0));
    let frames = Arc::new(AtomicU64::new(0));
    // Updates of users a client never subscribed to (there must be none).
    let unexpected = Arc::new(AtomicU64::new(0));
    let (stop, stop_rx) = watch::channel(false);
    let (start, start_rx) = watch::channel(None::<tokio::time::Instant>);
    let sem = Arc::new(Semaphore::new(c.concurrency.max(1)));
    let prefix = format!("{}-su-", c.prefix);
    // Section 11's load, when asked for (`--rules-*`): some users turn invisible once everyone
    // subscribed, and from then on none of their changes reaches a watcher.
    let hidden = super::rules::Invisible::of(c, n);
    // Who watches whom: the deliveries one change of user j makes are audience[j].
    let mut audience = vec![0u64; n];
    let mut plans = Vec::with_capacity(n);
    let mut rng = Rng::new(7);
    for i in 0..n {
        let mut ids: Vec<u64> = Vec::with_capacity(per);
        if i < watching && watching > 1 {
            while ids.len() < per.min(watching - 1) {
                let j = rng.below(watching as u64);
                if j != i as u64 && !ids.contains(&j) {
                    ids.push(j);
                    if !hidden.holds(j as usize) {
                        audience[j as usize] += 1;
                    }
                }
            }
        }
        plans.push(ids);
    }
    // Each watching client changes once per `watching / rate` seconds, evenly spread.
    let period = Duration::from_secs_f64(watching.max(1) as f64 / rate.max(0.001));
    let step = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let run_for = Duration::from_secs(duration_s);
    let heartbeat = Duration::from_millis(heartbeat_ms.max(100));
    // With readers (the default), the clients' sockets leave tokio once subscribed: the readers
    // of [`super::mux`] read them, answer pings, send their heartbeats and their changes.
    let start_us = Arc::new(AtomicU64::new(0));
    let readers = reading.readers;
    let mux = if readers > 0 {
        let changes = Arc::new(Changes {
            accepted: accepted.clone(),
            sent: sent.clone(),
            unexpected: unexpected.clone(),
            start_us: start_us.clone(),
            period,
            run_for,
        });
        let m = Mux::start(Setup {
            threads: readers,
            nap: Duration::from_micros(reading.nap_us),
            stamp: reading.stamp,
            heartbeat,
            prefix: prefix.clone(),
            batch,
            received: received.clone(),
            frames: frames.clone(),
            changes: Some(changes),
        })
        .map_err(|e| e.to_string())?;
        Some(m)
    } else {
        None
    };
    let mux = Arc::new(std::sync::Mutex::new(mux));
    // What each client must receive: the users it subscribed to who stay visible.
    let watched_of: Vec<Vec<u64>> = plans
        .iter()
        .map(|ids| {
            ids.iter()
                .copied()
                .filter(|&j| !hidden.holds(j as usize))
                .collect()
        })
        .collect();

    let mut tasks = Vec::new();
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<bool>();
    for (i, subscribed_to) in plans.into_iter().enumerate() {
        let watched = watched_of[i].clone();
        let mut auth = json!({
            "token": token::mint(&c.secret, &format!("{prefix}{i}"), "female"),
            "presence": "subscriptions",
        });
        if batch {
            auth["batch"] = json!(true);
        }
        let ids: Vec<String> = if subscribed_to.is_empty() {
            (0..per)
                .map(|k| format!("{}-idle-{i}-{k}", c.prefix))
                .collect()
        } else {
            subscribed_to
                .iter()
                .map(|j| format!("{prefix}{j}"))
                .collect()
        };
        let (target, source) = (c.target_for(i), c.source(i));
        let unexpected = unexpected.clone();
        let (mux, polled) = (mux.clone(), readers > 0);
        let offset =
            Duration::from_secs_f64((i as f64 * step.as_secs_f64()) % period.as_secs_f64());
        let (sem, ready_tx, mut stop_rx, mut start_rx, received, frames, prefix, accepted, sent) = (
            sem.clone(),
            ready_tx.clone(),
            stop_rx.clone(),
            start_rx.clone(),
            received.clone(),
            frames.clone(),
            prefix.clone(),
            accepted.clone(),
            sent.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let permit = sem.acquire_owned().await.ok();
            let Ok((mut client, _)) = Client::connect(target, source, &auth).await else {
                let _ = ready_tx.send(false);
                return None;
            };
            let body = json!({ "userIds": ids });
            // As a client would: an `unavailable` answer (the store slow in a connect storm)
            // is tried again, a few times.
            let mut subscribed = false;
            for attempt in 0..5u64 {
                // Ack ids apart from the changes' (which are their seqs).
                let id = SUBSCRIBE_ACK + attempt;
                subscribed = client.emit("presence:subscribe", Some(&body), Some(id)).await.is_ok()
                    && loop {
                        match client.recv().await {
                            Some(Incoming::Ack(a, v)) if a == id => break v["ok"] == true,
                            Some(_) => {}
                            None => break false,
                        }
                    };
                if subscribed {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
            }
            drop(permit);
            if polled {
                let plan = Plan {
                    watched: watched.clone(),
                    changes_at: (i < watching).then_some(offset),
                };
                let added = mux.lock().unwrap().as_mut().map(|m| m.add_planned(i, client, Some(plan)));
                let _ = ready_tx.send(subscribed && matches!(added, Some(Ok(()))));
                return None;
            }
            let _ = ready_tx.send(subscribed);
            // Everyone subscribed before the first change. Reading meanwhile: a client that
            // waits without answering Engine.IO pings is closed by the server after 45 s, and
            // two load generators of 10,000 wait about that long for each other.
            let t0 = loop {
                if let Some(t) = *start_rx.borrow_and_update() {
                    break t;
                }
                tokio::select! {
                    r = start_rx.changed() => if r.is_err() { return None },
                    m = client.recv() => { m?; }
                }
            };
            let mut change = tokio::time::interval_at(t0 + offset, period);
            // Only the watching clients change.
            let end = if i < watching { t0 + run_for } else { t0 };
            let mut beat = tokio::time::interval(Duration::from_millis(heartbeat_ms.max(100)));
            let (mut seen, mut seq) = (Seen::default(), 0u32);
            loop {
                tokio::select! {
                    _ = stop_rx.changed() => break,
                    _ = beat.tick() => { let _ = client.emit("user:heartbeat", None, None).await; }
                    // (A guard is read when the select starts, which may be long before the
                    // tick; the time is checked again when it fires.)
                    _ = change.tick(), if tokio::time::Instant::now() < end => {
                        if tokio::time::Instant::now() >= end {
                            continue;
                        }
                        seq += 1;
                        let d = json!({"status": "live", "details": {"c": i, "s": seq, "t": now_us()}});
                        // With an ack id (its seq): only a change acked `ok` is expected.
                        if client.emit("presence:set-status", Some(&d), Some(seq as u64)).await.is_ok() {
                            sent.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    m = client.recv() => match m {
                        None => break,
                        Some(Incoming::Ack(a, v)) => {
                            if v["ok"] == true && a < SUBSCRIBE_ACK {
                                accepted.record(i, a as u32);
                            }
                        }
                        Some(Incoming::Presence(p)) => {
                            frames.fetch_add(1, Ordering::Relaxed);
                            for (ch, s, t) in changes_in(&p, &prefix) {
                                if ch == i as u64 {
                                    continue; // its own change, delivered to itself
                                }
                                if !watched.contains(&ch) {
                                    unexpected.fetch_add(1, Ordering::Relaxed);
                                    continue;
                                }
                                received.fetch_add(1, Ordering::Relaxed);
                                seen.count(ch, s, t, batch);
                            }
                        }
                        Some(_) => {}
                    },
                }
            }
            client.close().await;
            Some((seen, watched))
        }));
    }
    drop(ready_tx);
    let mut ready = 0;
    for _ in 0..n {
        ready += ready_rx.recv().await.unwrap_or(false) as usize;
    }
    // The rules, once everyone subscribed: every user blocks the blockers (one connected user
    // per replica, so each change's fan-out checks its deliveries against a block list), then
    // ghosts up to `--rules-blocks`; the `hidden` ones turn invisible.
    let blockers = super::rules::blockers(c, &prefix).await?;
    let user_ids: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    let rules_began = Instant::now();
    super::rules::users(c, &user_ids, "female", &blockers.ids).await?;
    let rules_s = rules_began.elapsed().as_secs_f64();
    let rules_settle_s = super::rules::quiet(c).await;

    const FANOUT: &str = "presence_fanout_latency_seconds";
    // Several load generators agree on a wall-clock start, so that none changes while another
    // still connects its clients.
    let wait = start_at_ms
        .map(|at| Duration::from_millis(at.saturating_sub(now_us() / 1000)))
        .unwrap_or_default();
    let lead = wait.max(Duration::from_millis(200));
    let t0 = tokio::time::Instant::now() + lead;
    start_us.store(now_us() + lead.as_micros() as u64, Ordering::Relaxed);
    let _ = start.send(Some(t0));
    // What the replicas spend from the first change on (not while anyone still connects).
    tokio::time::sleep_until(t0).await;
    let server_before = histogram(&c.target, FANOUT).await?;
    let cpu_before = measure::sum(&c.pids);
    let own_before = measure::sum(&[std::process::id()]);
    let window = Instant::now();
    // No change starts after the run; the last ones are sent within this.
    tokio::time::sleep_until(t0 + run_for + Duration::from_millis(500)).await;
    let changes = accepted.count();
    let expected: u64 = (0..n)
        .map(|j| accepted.0[j].lock().unwrap().len() as u64 * audience[j])
        .sum();
    // Drain: until everything expected arrived and then nothing more for half a second, or
    // nothing at all for two seconds (a count reached is not every watcher's last version).
    let mut last_seen = (received.load(Ordering::Relaxed), Instant::now());
    while (received.load(Ordering::Relaxed) < expected
        || last_seen.1.elapsed() < Duration::from_millis(500))
        && last_seen.1.elapsed() < Duration::from_secs(2)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let r = received.load(Ordering::Relaxed);
        if r != last_seen.0 {
            last_seen = (r, Instant::now());
        }
    }
    let server = histogram_summary(&server_before, &histogram(&c.target, FANOUT).await?);
    let server_cpu_s = measure::sum(&c.pids).cpu_s - cpu_before.cpu_s;
    let loadgen_cpu_s = measure::sum(&[std::process::id()]).cpu_s - own_before.cpu_s;
    let window_s = window.elapsed().as_secs_f64();
    let rss_kib = measure::sum(&c.pids).rss_kib;
    let _ = stop.send(true);
    blockers.close().await;
    let (mut lat, mut doubled, mut missing) = (Latencies::default(), 0u64, 0u64);
    let mut examples = Vec::new();
    let mut outcomes = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        if let Ok(Some((seen, _))) = t.await {
            outcomes.push((i, seen));
        }
    }
    if let Some(m) = mux.lock().unwrap().take() {
        outcomes.extend(m.finish().into_iter().map(|o| (o.id, o.seen)));
    }
    for (i, seen) in outcomes {
        missing += missed(
            &seen,
            i as u64,
            watched_of[i].clone(),
            &accepted,
            &mut examples,
        );
        doubled += seen.doubled;
        lat.merge(seen.lat);
    }
    let got = received.load(Ordering::Relaxed);
    Ok(json!({
        "scenario": "subs", "rules_blocks": c.rules_blocks, "rules_invisible_pct": c.rules_invisible_pct, "invisible_users": hidden.count, "rules_s": rules_s, "rules_settle_s": rules_settle_s, "readers": readers, "reader_nap_us": reading.nap_us, "stamp": format!("{:?}", reading.stamp).to_lowercase(), "unstamped_reads": super::mux::UNSTAMPED.load(Ordering::Relaxed), "batch": batch, "subscribers": n, "subscribed_ok": ready,
        "watching": watching, "per": per,
        "changes": changes, "changes_per_s": changes as f64 / duration_s.max(1) as f64,
        "changes_refused": sent.load(Ordering::Relaxed).saturating_sub(changes),
        "started_late": start_at_ms.is_some() && wait.is_zero(),
        "deliveries": {"expected": expected, "received": got, "missing": missing, "doubled": doubled},
        "missing_examples": examples,
        "frames": frames.load(Ordering::Relaxed),
        "unexpected_updates": unexpected.load(Ordering::Relaxed),
        "latency": lat.summary(),
        "server_fanout_latency": server,
        "server_cpu_s": server_cpu_s,
        // How long the CPU figures were counted (from the first change to the end of the drain).
        "window_s": window_s,
        "loadgen_cpu_s": loadgen_cpu_s,
        "server_rss_kib": rss_kib,
        "server_cpu_ms_per_change": if changes > 0 { server_cpu_s * 1e3 / changes as f64 } else { 0.0 },
        "server_cpu_us_per_update": if got > 0 { server_cpu_s * 1e6 / got as f64 } else { 0.0 },
    }))
}
