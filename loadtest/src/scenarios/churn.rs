//! `churn`: clients connect and leave repeatedly while viewers count announcements per user
//! (none doubled or flapping, versions in order, everyone offline at the end).
use super::*;

pub(super) async fn churn(
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
                        Some(Incoming::Presence(t)) if t.starts_with(crate::sio::PRESENCE_UPDATE) => {
                            let p = crate::sio::payload(&t);
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
