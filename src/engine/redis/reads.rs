//! Reads: presences by id, online users page by page (cursor over buckets and ids), and the
//! cluster-wide figures. None of them changes anything but the peak.

use super::*;
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD as B64};

impl RedisEngine {
    pub(super) async fn read_presences(
        &self,
        users: &[UserId],
    ) -> Result<Vec<Option<Presence>>, EngineError> {
        let fields = [
            "st", "det", "g", "ls", "ua", "v", "inv", "lsn", "hv", "hls", "hua",
        ];
        let cmds = users
            .iter()
            .map(|u| {
                let mut args = vec![self.keys.record(u.as_str())];
                args.extend(fields.iter().map(|f| f.to_string()));
                ("HMGET", args)
            })
            .collect();
        let replies = self.batch(cmds).await?;
        Ok(users
            .iter()
            .zip(replies)
            .map(|(u, reply)| {
                let f: Vec<Option<String>> = reply.convert().ok()?;
                codec::presence(u.clone(), |k| {
                    let i = fields.iter().position(|x| *x == k)?;
                    f.get(i).cloned().flatten()
                })
            })
            .collect())
    }

    pub(super) async fn read_online(
        &self,
        filter: &ListFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<OnlinePage, EngineError> {
        // Cursor: "bucket\x1flast user id", base64url. Buckets in order, users by id within.
        let (mut b, mut after) = match cursor {
            None => (0u32, String::new()),
            Some(c) => {
                let raw = String::from_utf8(B64.decode(c).map_err(|_| EngineError::BadCursor)?)
                    .map_err(|_| EngineError::BadCursor)?;
                let (b, u) = raw.split_once('\u{1f}').ok_or(EngineError::BadCursor)?;
                let b: u32 = b.parse().map_err(|_| EngineError::BadCursor)?;
                if b >= BUCKETS {
                    return Err(EngineError::BadCursor);
                }
                (b, u.to_string())
            }
        };
        // The buckets from the cursor's on, read in rounds of growing size (4, 8, 16, then the
        // rest), each round one pipeline of every gender's index in its buckets: a page found
        // in the first buckets reads no more of them, and a sparse one takes four round trips,
        // not one per bucket and gender (up to 192). Each read asks for what the page still
        // lacks, and one more; the first bucket resumes after the cursor.
        let genders: Vec<_> = filter.genders.iter().collect();
        // The viewer is always in their own list: online, they are added to their bucket.
        let me_online = match &filter.include {
            Some(me) if bucket(me.as_str()) >= b => self
                .get(std::slice::from_ref(me))
                .await?
                .first()
                .cloned()
                .flatten()
                .is_some_and(|p| p.online),
            _ => false,
        };
        let mut ids: Vec<(u32, String)> = Vec::new();
        let mut round = 4u32;
        while b < BUCKETS && ids.len() <= limit {
            let end = if round >= 32 {
                BUCKETS
            } else {
                (b + round).min(BUCKETS)
            };
            round *= 2;
            let want = limit + 1 - ids.len();
            let mut cmds = Vec::with_capacity((end - b) as usize * genders.len());
            for bk in b..end {
                let min = if bk == b && !after.is_empty() {
                    format!("({after}")
                } else {
                    "-".to_string()
                };
                for g in &genders {
                    cmds.push((
                        "ZRANGEBYLEX",
                        vec![
                            self.keys.online(bk, *g),
                            min.clone(),
                            "+".into(),
                            "LIMIT".into(),
                            "0".into(),
                            want.to_string(),
                        ],
                    ));
                }
            }
            let mut replies = self.batch(cmds).await?.into_iter();
            while b < end && ids.len() <= limit {
                let want = limit + 1 - ids.len();
                let mut in_bucket: Vec<String> = Vec::new();
                for _ in &genders {
                    let got: Vec<String> = replies
                        .next()
                        .and_then(|v| v.convert().ok())
                        .unwrap_or_default();
                    in_bucket.extend(got);
                }
                if let Some(me) = &filter.include
                    && me_online
                    && bucket(me.as_str()) == b
                    && (after.is_empty() || me.as_str() > after.as_str())
                    && !in_bucket.iter().any(|u| u == me.as_str())
                {
                    in_bucket.push(me.to_string());
                }
                in_bucket.sort();
                in_bucket.dedup();
                in_bucket.truncate(want);
                ids.extend(in_bucket.into_iter().map(|u| (b, u)));
                if ids.len() <= limit {
                    b += 1;
                    after.clear();
                }
            }
        }
        let more = ids.len() > limit;
        ids.truncate(limit);
        let next_cursor = if more {
            ids.last().map(|(b, u)| B64.encode(format!("{b}\u{1f}{u}")))
        } else {
            None
        };
        let users: Vec<UserId> = ids
            .iter()
            .filter_map(|(_, u)| UserId::parse(u).ok())
            .collect();
        let users = self.get(&users).await?.into_iter().flatten().collect();
        Ok(OnlinePage { users, next_cursor })
    }

    /// The cluster-wide figures, in one round trip: per bucket the online counts and the
    /// counters, then the globals.
    pub(super) async fn read_stats(&self) -> Result<ClusterStats, EngineError> {
        // One round trip: per bucket three online counts and the counters, then the globals.
        let mut cmds = Vec::with_capacity(BUCKETS as usize * 4 + 1);
        for b in 0..BUCKETS {
            for g in crate::domain::Gender::ALL {
                cmds.push(("ZCARD", vec![self.keys.online(b, g)]));
            }
            let counters = ["conns", "disconns", "swept", "inv"].map(String::from);
            let mut args = vec![self.keys.counters(b)];
            args.extend(counters);
            cmds.push(("HMGET", args));
        }
        cmds.push((
            "HMGET",
            vec![self.keys.stats(), "peak".into(), "lastSweep".into()],
        ));
        cmds.push(("SCARD", vec![self.keys.nodes()]));
        let replies = self.batch(cmds).await?;
        let mut s = ClusterStats::default();
        let mut it = replies.into_iter();
        for _ in 0..BUCKETS {
            for g in crate::domain::Gender::ALL {
                s.online_by_gender[g.index()] +=
                    it.next().and_then(|v| v.convert::<u64>().ok()).unwrap_or(0);
            }
            let c: Vec<Option<u64>> = it.next().and_then(|v| v.convert().ok()).unwrap_or_default();
            let at = |i: usize| c.get(i).copied().flatten().unwrap_or(0);
            s.total_connections += at(0);
            s.total_disconnections += at(1);
            s.total_swept += at(2);
            s.invisible_users += at(3);
        }
        s.online_users = s.online_by_gender.iter().sum();
        let g: Vec<Option<i64>> = it.next().and_then(|v| v.convert().ok()).unwrap_or_default();
        let peak = g.first().copied().flatten().unwrap_or(0).max(0) as u64;
        s.peak_online = peak.max(s.online_users);
        if s.online_users > peak {
            let args = vec![self.keys.stats(), "peak".into(), s.online_users.to_string()];
            let _: i64 = self
                .client
                .custom(cmd("HSET"), args)
                .await
                .map_err(unavailable)?;
        }
        s.last_sweep_at = g.get(1).copied().flatten().map(Timestamp);
        s.nodes = it.next().and_then(|v| v.convert::<u64>().ok()).unwrap_or(1);
        Ok(s)
    }
}
