//! Scenarios that hold connections: `idle` (memory and CPU per idle connection, Redis
//! commands per heartbeat) and `storm` (connect as fast as possible, until health shows them).
use super::*;

fn kib(v: u64) -> Value {
    json!(v)
}

pub(super) async fn idle(
    cli: &Cli,
    clients: usize,
    heartbeat_ms: u64,
    hold_s: u64,
) -> Result<Value, String> {
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

async fn online_users(c: &Common) -> Result<u64, String> {
    Ok(
        http_json(c.target[0], "/api/health").await?["presence"]["onlineUsers"]
            .as_u64()
            .unwrap_or(0),
    )
}

pub(super) async fn storm(cli: &Cli, clients: usize) -> Result<Value, String> {
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
