//! `subs`: subscription sockets (section 9). Each subscriber subscribes to `per` users: the
//! first `watching` subscribers to changers (drawn at random), the others to users who never
//! change, so the sockets connected and the sockets a change reaches can be varied apart.
//! Changers (subscription sockets themselves, so they hear only their own changes) set
//! statuses at `rate`; every subscriber must reach each watched changer's last change (without
//! batching: every change, in order).
use super::*;

#[allow(clippy::too_many_arguments)]
pub(super) async fn subs(
    c: &Common,
    subscribers: usize,
    watching: usize,
    per: usize,
    changers: usize,
    rate: f64,
    duration_s: u64,
    batch: bool,
) -> Result<Value, String> {
    let final_seq: Arc<Vec<AtomicU32>> =
        Arc::new((0..changers).map(|_| AtomicU32::new(0)).collect());
    let received = Arc::new(AtomicU64::new(0));
    let frames = Arc::new(AtomicU64::new(0));
    let (stop, stop_rx) = watch::channel(false);
    let sem = Arc::new(Semaphore::new(c.concurrency.max(1)));
    let prefix = format!("{}-sc-", c.prefix);
    // How many subscribers watch each changer: the deliveries one change makes.
    let mut audience = vec![0u64; changers];
    let mut plans = Vec::with_capacity(subscribers);
    let mut rng = Rng::new(7);
    for i in 0..subscribers {
        let mut ids: Vec<u64> = Vec::with_capacity(per);
        if i < watching {
            while ids.len() < per.min(changers) {
                let ch = rng.below(changers as u64);
                if !ids.contains(&ch) {
                    ids.push(ch);
                    audience[ch as usize] += 1;
                }
            }
        }
        plans.push(ids);
    }

    let mut tasks = Vec::new();
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<bool>();
    for (i, watched) in plans.into_iter().enumerate() {
        let mut auth = json!({
            "token": token::mint(&c.secret, &format!("{}-s-{i}", c.prefix), "female"),
            "presence": "subscriptions",
        });
        if batch {
            auth["batch"] = json!(true);
        }
        let ids: Vec<String> = if watched.is_empty() {
            (0..per).map(|k| format!("{}-idle-{i}-{k}", c.prefix)).collect()
        } else {
            watched.iter().map(|ch| format!("{prefix}{ch}")).collect()
        };
        let (target, source) = (c.target_for(i), c.source(i));
        let (sem, ready_tx, mut stop_rx, received, frames, prefix) = (
            sem.clone(),
            ready_tx.clone(),
            stop_rx.clone(),
            received.clone(),
            frames.clone(),
            prefix.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let permit = sem.acquire_owned().await.ok();
            let r = Client::connect(target, source, &auth).await;
            let Ok((mut client, _)) = r else {
                let _ = ready_tx.send(false);
                return None;
            };
            let body = json!({ "userIds": ids });
            let subscribed = client.emit("presence:subscribe", Some(&body), Some(1)).await.is_ok()
                && loop {
                    match client.recv().await {
                        Some(Incoming::Ack(v)) => break v["ok"] == true,
                        Some(_) => {}
                        None => break false,
                    }
                };
            drop(permit);
            let _ = ready_tx.send(subscribed);
            let mut last: HashMap<u64, u32> = HashMap::new();
            let (mut lat, mut doubled, mut gaps) = (Latencies::default(), 0u64, 0u64);
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = stop_rx.changed() => break,
                    _ = tick.tick() => { let _ = client.emit("user:heartbeat", None, None).await; }
                    m = client.recv() => match m {
                        None => break,
                        Some(Incoming::Event(ev, p)) if ev == "presence-update" || ev == "presence-batch" => {
                            frames.fetch_add(1, Ordering::Relaxed);
                            let one = [p.clone()];
                            let updates = match p["updates"].as_array() { Some(u) => u.as_slice(), None => &one[..] };
                            for p in updates {
                                let from_changer = p["userId"].as_str().is_some_and(|u| u.starts_with(&prefix));
                                let d = &p["details"];
                                if let (true, Some(ch), Some(seq), Some(t)) = (from_changer, d["c"].as_u64(), d["s"].as_u64(), d["t"].as_u64()) {
                                    lat.push(now_us().saturating_sub(t));
                                    received.fetch_add(1, Ordering::Relaxed);
                                    let l = last.entry(ch).or_insert(0);
                                    let seq = seq as u32;
                                    if seq <= *l { doubled += 1 } else { if !batch { gaps += (seq - *l - 1) as u64; } *l = seq; }
                                }
                            }
                        }
                        Some(_) => {}
                    },
                }
            }
            client.close().await;
            Some((lat, doubled, gaps, last, watched))
        }));
    }
    drop(ready_tx);
    let mut ready = 0;
    for _ in 0..subscribers {
        ready += ready_rx.recv().await.unwrap_or(false) as usize;
    }

    const FANOUT: &str = "presence_fanout_latency_seconds";
    let server_before = histogram(&c.target, FANOUT).await?;
    let cpu_before = measure::sum(&c.pids);
    let period = Duration::from_secs_f64(changers as f64 / rate.max(0.001));
    let mut ctasks = Vec::new();
    let t_start = Instant::now();
    for ch in 0..changers {
        let auth = json!({
            "token": token::mint(&c.secret, &format!("{prefix}{ch}"), "female"),
            "presence": "subscriptions",
        });
        let (target, source) = (c.target_for(ch + subscribers), c.source(ch + subscribers));
        let final_seq = final_seq.clone();
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
                    m = client.recv() => if m.is_none() { break },
                }
            }
            let _ = tokio::time::timeout(Duration::from_millis(500), async { while client.recv().await.is_some() {} }).await;
            client.close().await;
            Ok::<u32, String>(seq)
        }));
    }
    let mut changes = 0u64;
    let mut expected = 0u64;
    for (ch, t) in ctasks.into_iter().enumerate() {
        let n = t.await.map_err(|e| e.to_string())?? as u64;
        changes += n;
        expected += n * audience[ch];
    }
    let send_s = t_start.elapsed().as_secs_f64();
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
    for t in tasks {
        if let Ok(Some((l, d, g, last, watched))) = t.await {
            lat.merge(l);
            doubled += d;
            missing += g;
            for ch in watched {
                let fs = final_seq[ch as usize].load(Ordering::Relaxed);
                missing += fs.saturating_sub(last.get(&ch).copied().unwrap_or(0)) as u64;
            }
        }
    }
    let got = received.load(Ordering::Relaxed);
    Ok(json!({
        "scenario": "subs", "batch": batch, "subscribers": subscribers, "subscribed_ok": ready,
        "watching": watching, "per": per, "changers": changers,
        "changes": changes, "changes_per_s": changes as f64 / send_s,
        "deliveries": {"expected": expected, "received": got, "missing": missing, "doubled": doubled},
        "frames": frames.load(Ordering::Relaxed),
        "latency": lat.summary(),
        "server_fanout_latency": server,
        "server_cpu_s": server_cpu_s,
        "server_cpu_ms_per_change": if changes > 0 { server_cpu_s * 1e3 / changes as f64 } else { 0.0 },
        "server_cpu_us_per_update": if got > 0 { server_cpu_s * 1e6 / got as f64 } else { 0.0 },
    }))
}
