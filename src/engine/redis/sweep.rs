//! The sweep: how a replica killed without warning loses its users. Any replica's sweep
//! expires the stale connections of every replica's index, in two steps that each run in one
//! slot (`claim.lua` on the replica's, `expire.lua` on the user's), and applies due pending
//! offlines.

use super::codec::int_at;
use super::*;

/// Stale connections expired per replica index per sweep, at most.
const SWEEP_BATCH: u32 = 2000;

impl RedisEngine {
    /// Expire the stale connections of every replica's index (claims a dead sweeper left
    /// first), then apply the pending offlines that are due.
    pub(super) async fn sweep_all(
        &self,
        timeout_ms: u64,
        now: Timestamp,
    ) -> Result<SweepReport, EngineError> {
        self.sadd_node().await?;
        let mut report = SweepReport::default();
        let cutoff = (now.as_micros() - (timeout_ms as i64) * 1000).to_string();
        let nodes: Vec<String> = self
            .client
            .custom(cmd("SMEMBERS"), vec![self.keys.nodes()])
            .await
            .map_err(unavailable)?;
        for node in nodes {
            // Claims a sweeper left unfinished (usually none: one command).
            let leftover: Vec<String> = self
                .client
                .custom(
                    cmd("ZRANGE"),
                    vec![
                        self.keys.claimed_set(&node),
                        "0".into(),
                        (SWEEP_BATCH - 1).to_string(),
                        "WITHSCORES".into(),
                    ],
                )
                .await
                .map_err(unavailable)?;
            for pair in leftover.chunks_exact(2) {
                let (removed, offline) =
                    self.expire_claimed(&node, &pair[0], &pair[1], now).await?;
                report.swept += removed as u64;
                report.went_offline += offline as u64;
            }
            let set = self.keys.node_set(&node);
            let stale: Vec<String> = self
                .client
                .custom(
                    cmd("ZRANGEBYSCORE"),
                    vec![
                        set.clone(),
                        "-inf".into(),
                        format!("({cutoff}"),
                        "LIMIT".into(),
                        "0".into(),
                        SWEEP_BATCH.to_string(),
                    ],
                )
                .await
                .map_err(unavailable)?;
            let had_stale = !stale.is_empty();
            for m in stale {
                let (removed, offline) = self.expire_member(&node, &m, &cutoff, now).await?;
                report.swept += removed as u64;
                report.went_offline += offline as u64;
            }
            // A replica whose every connection went stale is gone: forget it once its set is
            // empty (Redis deletes the empty set itself). A live replica re-adds itself.
            if had_stale && node != *self.node {
                let left: u64 = self
                    .client
                    .custom(cmd("ZCARD"), vec![set.clone()])
                    .await
                    .map_err(unavailable)?;
                if left == 0 {
                    let _: i64 = self
                        .client
                        .custom(cmd("SREM"), vec![self.keys.nodes(), node.clone()])
                        .await
                        .map_err(unavailable)?;
                }
            }
        }
        let due_buckets: Vec<String> = self
            .client
            .custom(
                cmd("ZRANGEBYSCORE"),
                vec![
                    self.keys.pending_buckets(),
                    "-inf".into(),
                    now.as_micros().to_string(),
                ],
            )
            .await
            .map_err(unavailable)?;
        for b in due_buckets
            .iter()
            .filter_map(|b| b.parse::<u32>().ok())
            .filter(|b| *b < BUCKETS)
        {
            let pend = self.keys.pending(b);
            let due: Vec<String> = self
                .client
                .custom(
                    cmd("ZRANGEBYSCORE"),
                    vec![
                        pend.clone(),
                        "-inf".into(),
                        now.as_micros().to_string(),
                        "LIMIT".into(),
                        "0".into(),
                        "500".into(),
                    ],
                )
                .await
                .map_err(unavailable)?;
            for uid in due {
                if let Ok(u) = UserId::parse(&uid)
                    && self.settle(&u, now).await?.is_some()
                {
                    report.went_offline += 1;
                }
            }
            // Re-index the bucket by its next deadline, or drop it when none is left.
            let next: Vec<String> = self
                .client
                .custom(
                    cmd("ZRANGE"),
                    vec![pend, "0".into(), "0".into(), "WITHSCORES".into()],
                )
                .await
                .map_err(unavailable)?;
            let _: i64 = match next.get(1) {
                Some(score) => {
                    self.client
                        .custom(
                            cmd("ZADD"),
                            vec![self.keys.pending_buckets(), score.clone(), b.to_string()],
                        )
                        .await
                }
                None => {
                    self.client
                        .custom(
                            cmd("ZREM"),
                            vec![self.keys.pending_buckets(), b.to_string()],
                        )
                        .await
                }
            }
            .map_err(unavailable)?;
        }
        let _: i64 = self
            .client
            .custom(
                cmd("HSET"),
                vec![
                    self.keys.stats(),
                    "lastSweep".into(),
                    now.as_micros().to_string(),
                ],
            )
            .await
            .map_err(unavailable)?;
        Ok(report)
    }

    /// Expire member `m` of `node`'s index if it is still stale at `cutoff`: claimed (the
    /// score re-checked and the member moved in one step, `claim.lua`), expired unless it was
    /// indexed again since (`expire.lua`), then released. Returns (removed, went offline).
    async fn expire_member(
        &self,
        node: &str,
        m: &str,
        cutoff: &str,
        now: Timestamp,
    ) -> Result<(bool, bool), EngineError> {
        match self.claim(node, m, cutoff).await? {
            Some(score) => self.expire_claimed(node, m, &score, now).await,
            None => Ok((false, false)),
        }
    }

    /// The first half of an expiry (`claim.lua`): the claimed score, or none.
    pub(super) async fn claim(
        &self,
        node: &str,
        m: &str,
        cutoff: &str,
    ) -> Result<Option<String>, EngineError> {
        self.scripts
            .claim
            .evalsha_with_reload(
                &self.client,
                vec![self.keys.node_set(node), self.keys.claimed_set(node)],
                vec![m.to_string(), cutoff.to_string()],
            )
            .await
            .map_err(unavailable)
    }

    /// The second half of an expiry: also what the next sweep does with a member a sweeper
    /// claimed and did not get to (it died between the two steps). Idempotent.
    pub(super) async fn expire_claimed(
        &self,
        node: &str,
        m: &str,
        score: &str,
        now: Timestamp,
    ) -> Result<(bool, bool), EngineError> {
        let mut out = (false, false);
        if let Some((uid, conn)) = m.split_once('\u{1f}') {
            let r = self
                .run(
                    &self.scripts.expire,
                    uid,
                    now,
                    &[conn.to_string(), score.to_string()],
                )
                .await?;
            out = (int_at(&r, 0) == 1, int_at(&r, 1) == 1);
        }
        let _: i64 = self
            .client
            .custom(
                cmd("ZREM"),
                vec![self.keys.claimed_set(node), m.to_string()],
            )
            .await
            .map_err(unavailable)?;
        Ok(out)
    }
}
