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

/// Which of `n` users turn invisible: `--rules-invisible-pct` of them, spread evenly (user
/// `i` is when `i` is a multiple of the step), so that in `subs`, where only some users
/// change within the run, they make their share of the changes and no more.
#[derive(Clone, Copy)]
pub(super) struct Invisible {
    pub count: usize,
    step: usize,
}

impl Invisible {
    pub fn of(c: &Common, n: usize) -> Self {
        let count = (n as f64 * c.rules_invisible_pct / 100.0).round() as usize;
        Invisible {
            count,
            step: n.checked_div(count).map_or(usize::MAX, |s| s.max(1)),
        }
    }

    pub fn holds(&self, i: usize) -> bool {
        i.is_multiple_of(self.step) && i / self.step < self.count
    }
}

/// The viewers' rules: `blocks` ghosts each, the first `invisible_pct` % invisible.
pub(super) async fn viewers(c: &Common, ids: &[String], gender: &str) -> Result<(), String> {
    users(c, ids, gender, &[]).await
}

/// Each user's rules: `also` blocked, then ghosts up to `blocks`; the first
/// [`Invisible`] ones invisible. `c.concurrency` users at a time.
pub(super) async fn users(
    c: &Common,
    ids: &[String],
    gender: &str,
    also: &[String],
) -> Result<(), String> {
    if c.rules_blocks == 0 && c.rules_invisible_pct <= 0.0 {
        return Ok(());
    }
    let invisible = Invisible::of(c, ids.len());
    let sem = Arc::new(Semaphore::new(c.concurrency.max(1)));
    let mut tasks = Vec::new();
    for (i, user) in ids.iter().enumerate() {
        let mut blocked: Vec<String> = also.iter().take(c.rules_blocks).cloned().collect();
        blocked.extend((blocked.len()..c.rules_blocks).map(|k| format!("{user}-ghost-{k}")));
        let (c, user, sem, gender) = (c.clone(), user.clone(), sem.clone(), gender.to_string());
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire_owned().await;
            apply(&c, i, (&user, &gender), &blocked, invisible.holds(i)).await
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

/// Connected users, one per target, whom every changer blocks: they are no viewers, and
/// with them each replica's fan-out has a block list to check every delivery against. Each is
/// read by a task of its own (answering pings: one left unread is closed by its server after
/// 45 s, and with it the block list each delivery is checked against) until [`Blockers::close`].
pub(super) struct Blockers {
    pub ids: Vec<String>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Blockers {
    pub async fn close(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

pub(super) async fn blockers(c: &Common, prefix: &str) -> Result<Blockers, String> {
    let (stop, stop_rx) = watch::channel(false);
    let mut out = Blockers {
        ids: Vec::new(),
        stop,
        tasks: Vec::new(),
    };
    if c.rules_blocks == 0 {
        return Ok(out);
    }
    for r in 0..c.target.len() {
        let user = format!("{prefix}-blocker-{r}");
        let auth = json!({"token": token::mint(&c.secret, &user, "male")});
        let mut client = Client::connect(c.target[r], c.source(r), &auth).await?.0;
        let mut stop_rx = stop_rx.clone();
        out.ids.push(user);
        out.tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop_rx.changed() => break,
                    m = client.recv() => if m.is_none() { return },
                }
            }
            client.close().await;
        }));
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
