//! `fanout`: changers set statuses at a rate, viewers measure delivery latency, and every
//! viewer must receive every change once, in order. With `batch`, viewers ask for
//! `presence-batch` frames (section 9): a viewer may then skip a changer's superseded
//! versions, never its latest; frames are counted as well as updates. The viewers are read by
//! `readers` threads polling thousands of sockets each ([`super::mux`]), or with `readers` 0 by
//! one task each (the instrument before session 10, kept to compare the two).
use super::mux::{HEARTBEAT, Mux, Setup};
use super::*;

#[allow(clippy::too_many_arguments)] // the scenario's flags, passed as they are parsed
pub(super) async fn fanout(
    c: &Common,
    viewers: usize,
    changers: usize,
    rate: f64,
    duration_s: u64,
    viewer_gender: &str,
    batch: bool,
    reading: &crate::Reading,
) -> Result<Value, String> {
    // The changes the server accepted (a refused one reaches nobody).
    let accepted = Arc::new(Accepted::new(changers));
    let received = Arc::new(AtomicU64::new(0));
    let frames = Arc::new(AtomicU64::new(0));
    let (stop, stop_rx) = watch::channel(false);
    let sem = Arc::new(Semaphore::new(c.concurrency.max(1)));
    let prefix = format!("{}-ch-", c.prefix);

    // Viewers first, so they see every change.
    let readers = reading.readers;
    let mux = if readers > 0 {
        let m = Mux::start(Setup {
            threads: readers,
            nap: Duration::from_micros(reading.nap_us),
            stamp: reading.stamp,
            heartbeat: HEARTBEAT,
            prefix: prefix.clone(),
            batch,
            received: received.clone(),
            frames: frames.clone(),
            changes: None,
        })
        .map_err(|e| e.to_string())?;
        Some(m)
    } else {
        None
    };
    let mux = Arc::new(std::sync::Mutex::new(mux));
    let mut vtasks = Vec::new();
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<bool>();
    for i in 0..viewers {
        let mut auth =
            json!({"token": token::mint(&c.secret, &format!("{}-v-{i}", c.prefix), viewer_gender)});
        if batch {
            auth["batch"] = json!(true);
        }
        let (target, source) = (c.target_for(i), c.source(i));
        let (sem, ready_tx, mut stop_rx, received, frames, prefix) = (
            sem.clone(),
            ready_tx.clone(),
            stop_rx.clone(),
            received.clone(),
            frames.clone(),
            prefix.clone(),
        );
        let (mux, polled) = (mux.clone(), readers > 0);
        vtasks.push(tokio::spawn(async move {
            let permit = sem.acquire_owned().await.ok();
            let r = Client::connect(target, source, &auth).await;
            drop(permit);
            let r = match r {
                Ok((client, _)) if polled => {
                    let added = mux.lock().unwrap().as_mut().map(|m| m.add(i, client));
                    let _ = ready_tx.send(matches!(added, Some(Ok(()))));
                    return None;
                }
                r => r,
            };
            let _ = ready_tx.send(r.is_ok());
            let Ok((mut client, _)) = r else { return None };
            let mut seen = Seen::default();
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            // Closed by the server before the run ended (a viewer that hears nothing because it
            // was disconnected is told apart from one that is connected and deaf).
            let mut closed_early = false;
            // Made once, not per message: re-arming them for every delivery was a good part
            // of this process's CPU, which the servers under test share.
            let stop = stop_rx.changed();
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    biased;
                    m = client.recv() => match m {
                        None => { closed_early = true; break }
                        Some(Incoming::Presence(p)) => {
                            frames.fetch_add(1, Ordering::Relaxed);
                            for (ch, seq, t) in changes_in(&p, &prefix) {
                                received.fetch_add(1, Ordering::Relaxed);
                                seen.count(ch, seq, t, batch);
                            }
                        }
                        Some(_) => {}
                    },
                    _ = &mut stop => break,
                    _ = tick.tick() => { let _ = client.emit("user:heartbeat", None, None).await; }
                }
            }
            client.close().await;
            Some((seen, closed_early))
        }));
    }
    drop(ready_tx);
    let mut viewers_up = 0;
    for _ in 0..viewers {
        viewers_up += ready_rx.recv().await.unwrap_or(false) as usize;
    }
    // Section 11's load, when asked for: the viewers' blocks and invisible share, the blockers.
    let viewer_ids: Vec<String> = (0..viewers)
        .map(|i| format!("{}-v-{i}", c.prefix))
        .collect();
    super::rules::viewers(c, &viewer_ids, viewer_gender).await?;
    let blockers = super::rules::blockers(c, &c.prefix).await?;
    // The changers' rules before they connect: their sockets are not read until the changes
    // start, and one left unread through the rules' settling was swept as silent (its first
    // change then revived it, one more update to every viewer inside the measured window).
    let changer_ids: Vec<String> = (0..changers).map(|ch| format!("{prefix}{ch}")).collect();
    super::rules::changers(c, &changer_ids, &blockers.ids).await?;
    let rules_settle_s = super::rules::quiet(c).await;

    // The changers connect first, and their "online" reaches every viewer (changers × viewers
    // announcements) before any change is timed: a change sent behind that backlog measured
    // the backlog, and set the p99 of every server.
    let mut connected = Vec::new();
    for ch in 0..changers {
        let auth = json!({"token": token::mint(&c.secret, &format!("{prefix}{ch}"), "female")});
        let (target, source) = (c.target_for(ch + viewers), c.source(ch + viewers));
        connected.push(Client::connect(target, source, &auth).await?.0);
    }
    let settle_until = Instant::now() + Duration::from_secs(60);
    loop {
        let before = frames.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(500)).await;
        if frames.load(Ordering::Relaxed) == before || Instant::now() > settle_until {
            break;
        }
    }

    // The replicas' own fan-out histogram (commit → emitted on every local socket), from here
    // on: the viewers' connects are not part of it.
    const FANOUT: &str = "presence_fanout_latency_seconds";
    let server_before = histogram(&c.target, FANOUT).await?;
    let cpu_before = measure::sum(&c.pids);
    // This process's own CPU too: the load generator shares the machine's cores.
    let own_before = measure::sum(&[std::process::id()]);
    mark("window");
    let frames_before = frames.load(Ordering::Relaxed);

    // Changers: each sets `live` with new details (a change every time) at its share of the rate.
    let period = Duration::from_secs_f64(changers as f64 / rate.max(0.001));
    let mut ctasks = Vec::new();
    let t_start = Instant::now();
    for (ch, mut client) in connected.into_iter().enumerate() {
        let accepted = accepted.clone();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(duration_s);
        ctasks.push(tokio::spawn(async move {
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
                    }
                    m = client.recv() => match m {
                        Some(Incoming::Ack(a, v)) if v["ok"] == true => accepted.record(ch, a as u32),
                        None => break,
                        _ => {}
                    },
                }
            }
            // Wait for the last acks, briefly.
            let _ = tokio::time::timeout(Duration::from_millis(500), async {
                while let Some(m) = client.recv().await {
                    if let Incoming::Ack(a, v) = m && v["ok"] == true {
                        accepted.record(ch, a as u32);
                    }
                }
            })
            .await;
            // Still connected until the viewers are done: a changer leaving would be an
            // offline update, which in a batch supersedes its last change.
            Ok::<_, String>((seq, client))
        }));
    }
    let mut changes = 0u64;
    let mut changer_clients = Vec::new();
    for t in ctasks {
        let (seq, client) = t.await.map_err(|e| e.to_string())??;
        changes += seq as u64;
        changer_clients.push(client);
    }
    let send_s = t_start.elapsed().as_secs_f64();
    mark("end");
    let expected = accepted.count() * viewers_up as u64;
    // Drain: until everything expected arrived, or nothing more arrives for a while: a second,
    // or with batches three (a batch may be a second late, and on a saturated machine later;
    // batching viewers skip superseded versions, so the count is rarely reached).
    let quiet = Duration::from_secs(if batch { 3 } else { 1 });
    // The CPU figures are taken when the last update arrived, not after the quiet wait: an
    // idle second (heartbeats only) is not the cost of delivering.
    let cpu_now = || {
        (
            measure::sum(&c.pids).cpu_s,
            measure::sum(&[std::process::id()]).cpu_s,
        )
    };
    let mut cpu_at_last = cpu_now();
    let mut last_seen = (received.load(Ordering::Relaxed), Instant::now());
    while received.load(Ordering::Relaxed) < expected && last_seen.1.elapsed() < quiet {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let r = received.load(Ordering::Relaxed);
        if r != last_seen.0 {
            last_seen = (r, Instant::now());
            cpu_at_last = cpu_now();
        }
    }
    let server = histogram_summary(&server_before, &histogram(&c.target, FANOUT).await?);
    let server_cpu_s = cpu_at_last.0 - cpu_before.cpu_s;
    let loadgen_cpu_s = cpu_at_last.1 - own_before.cpu_s;
    let _ = stop.send(true);
    for c in changer_clients {
        c.close().await;
    }
    blockers.close().await;
    let (mut lat, mut doubled, mut missing) = (Latencies::default(), 0u64, 0u64);
    // (send time, latency) of every delivery, for the latency through the run.
    let mut through: Vec<(u64, u64)> = Vec::new();
    // Viewers closed by the server, and viewers connected throughout that received nothing.
    let (mut closed_early, mut deaf) = (0u64, 0u64);
    let mut examples = Vec::new();
    let mut outcomes: Vec<(usize, Seen, bool)> = Vec::new();
    for (i, t) in vtasks.into_iter().enumerate() {
        if let Ok(Some((seen, closed))) = t.await {
            outcomes.push((i, seen, closed));
        }
    }
    if let Some(m) = mux.lock().unwrap().take() {
        outcomes.extend(m.finish().into_iter().map(|o| (o.id, o.seen, o.closed)));
    }
    for (i, seen, closed) in outcomes {
        {
            closed_early += closed as u64;
            deaf += (!closed && changes > 0 && seen.last.is_empty()) as u64;
            missing += missed(
                &seen,
                i as u64,
                0..changers as u64,
                &accepted,
                &mut examples,
            );
            doubled += seen.doubled;
            through.extend(seen.sent.iter().copied().zip(seen.lat.0.iter().copied()));
            lat.merge(seen.lat);
        }
    }
    let got = received.load(Ordering::Relaxed);
    Ok(json!({
        "latency_by_5s": by_window(&through, Duration::from_secs(5)),
        "scenario": "fanout", "batch": batch, "rules_blocks": c.rules_blocks, "rules_invisible_pct": c.rules_invisible_pct, "rules_settle_s": rules_settle_s, "readers": readers, "reader_nap_us": reading.nap_us, "stamp": format!("{:?}", reading.stamp).to_lowercase(), "unstamped_reads": super::mux::UNSTAMPED.load(Ordering::Relaxed), "viewers": viewers, "viewers_connected": viewers_up, "changers": changers,
        "changes": changes, "changes_accepted": accepted.count(), "changes_per_s": changes as f64 / send_s,
        "deliveries": {"expected": expected, "received": got, "missing": missing, "doubled": doubled},
        "missing_examples": examples,
        "viewers_closed_early": closed_early, "viewers_connected_but_deaf": deaf,
        "deliveries_per_s": got as f64 / send_s,
        // Messages the viewers received (a batch is one; without batching, one per update).
        "frames": frames.load(Ordering::Relaxed),
        // From the first change on: what the replicas wrote while measured.
        "frames_in_window": frames.load(Ordering::Relaxed) - frames_before,
        // The replicas' CPU while changes flowed, per delivered update.
        "server_cpu_us_per_update": if got > 0 { server_cpu_s * 1e6 / got as f64 } else { 0.0 },
        "loadgen_cpu_us_per_update": if got > 0 { loadgen_cpu_s * 1e6 / got as f64 } else { 0.0 },
        "latency": lat.summary(),
        "server_fanout_latency": server,
        // The replicas' CPU while changes flowed, per 1,000 deliveries.
        "server_cpu_s": server_cpu_s,
        "loadgen_cpu_s": loadgen_cpu_s,
        "server_cpu_ms_per_1000_deliveries": if got > 0 { server_cpu_s * 1e6 / got as f64 } else { 0.0 },
    }))
}
