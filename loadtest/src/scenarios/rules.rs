//! Section 11's load beside a scenario (`--rules-blocks`, `--rules-invisible-pct`): every
//! viewer holds that many blocks (of users who never connect) and that share of them turns
//! invisible, each through a short-lived connection of its own user; every changer holds as
//! many blocks, one of them of a connected user on each replica who is not a viewer, so each
//! replica's fan-out checks every delivery of every change against a block list. What the
//! viewers must receive does not change: the figures compare with the same run without rules.

use super::*;

/// One user's rules through a connection of their own: `blocks` ids blocked, then invisible.
async fn apply(
    c: &Common,
    i: usize,
    (user, gender): (&str, &str),
    blocked: &[String],
    invisible: bool,
) -> Result<(), String> {
    // The user's own gender: the newest handshake decides it.
    let auth = json!({"token": token::mint(&c.secret, user, gender)});
    let (mut client, _) = Client::connect(c.target_for(i), c.source(i), &auth).await?;
    let mut asked = 0u64;
    for b in blocked {
        asked += 1;
        client
            .emit("presence:block", Some(&json!({"userId": b})), Some(asked))
            .await?;
    }
    if invisible {
        asked += 1;
        client
            .emit(
                "presence:set-privacy",
                Some(&json!({"invisible": true})),
                Some(asked),
            )
            .await?;
    }
    let mut acked = 0u64;
    while acked < asked {
        match tokio::time::timeout(Duration::from_secs(30), client.recv()).await {
            Ok(Some(Incoming::Ack(_, v))) if v["ok"] == true => acked += 1,
            Ok(Some(Incoming::Ack(_, v))) => return Err(format!("{user}: refused: {v}")),
            Ok(Some(_)) => {}
            _ => return Err(format!("{user}: {acked} of {asked} acked")),
        }
    }
    client.close().await;
    Ok(())
}

/// The viewers' rules: `blocks` ghosts each, the first `invisible_pct` % invisible.
pub(super) async fn viewers(c: &Common, ids: &[String], gender: &str) -> Result<(), String> {
    if c.rules_blocks == 0 && c.rules_invisible_pct <= 0.0 {
        return Ok(());
    }
    let invisible = (ids.len() as f64 * c.rules_invisible_pct / 100.0).round() as usize;
    let sem = Arc::new(Semaphore::new(c.concurrency.max(1)));
    let mut tasks = Vec::new();
    for (i, user) in ids.iter().enumerate() {
        let ghosts: Vec<String> = (0..c.rules_blocks)
            .map(|k| format!("{user}-ghost-{k}"))
            .collect();
        let (c, user, sem, gender) = (c.clone(), user.clone(), sem.clone(), gender.to_string());
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire_owned().await;
            apply(&c, i, (&user, &gender), &ghosts, i < invisible).await
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

/// Connected users, one per target, whom every changer blocks: they are no viewers, and
/// with them each replica's fan-out has a block list to check every delivery against.
pub(super) async fn blockers(c: &Common, prefix: &str) -> Result<Vec<(String, Client)>, String> {
    if c.rules_blocks == 0 {
        return Ok(vec![]);
    }
    let mut out = Vec::new();
    for r in 0..c.target.len() {
        let user = format!("{prefix}-blocker-{r}");
        let auth = json!({"token": token::mint(&c.secret, &user, "male")});
        out.push((
            user,
            Client::connect(c.target[r], c.source(r), &auth).await?.0,
        ));
    }
    Ok(out)
}

/// The changers' rules: the blockers, then ghosts up to `blocks`.
pub(super) async fn changers(
    c: &Common,
    ids: &[String],
    blockers: &[String],
) -> Result<(), String> {
    if c.rules_blocks == 0 {
        return Ok(());
    }
    for (i, user) in ids.iter().enumerate() {
        let mut blocked: Vec<String> = blockers.to_vec();
        blocked.extend((blocked.len()..c.rules_blocks).map(|k| format!("{user}-ghost-{k}")));
        apply(c, i, (user, "female"), &blocked, false).await?;
    }
    Ok(())
}

/// Until the replicas are quiet again after the rules (every block is announced to every
/// replica, which reads the two users' presences when one of them is connected there): the
/// measured window must hold the changes' fan-out, not the tail of the rules. At most 120 s;
/// returns how long it waited.
pub(super) async fn quiet(c: &Common) -> f64 {
    if c.rules_blocks == 0 && c.rules_invisible_pct <= 0.0 {
        return 0.0;
    }
    let started = Instant::now();
    let mut quiet_windows = 0;
    while quiet_windows < 2 && started.elapsed() < Duration::from_secs(120) {
        let before = measure::sum(&c.pids).cpu_s;
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Three replicas holding 10,000 idle sockets use a few hundredths of a second a second.
        if measure::sum(&c.pids).cpu_s - before < 0.15 {
            quiet_windows += 1;
        } else {
            quiet_windows = 0;
        }
    }
    started.elapsed().as_secs_f64()
}
