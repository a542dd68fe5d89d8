//! The webhook queue in Redis: one stream per bucket (`Keys::webhook_stream`), appended by
//! the transition scripts in the same atomic step as the change, read through the consumer
//! group `wh` by the one replica that holds the bucket's lease. An entry is acknowledged and
//! deleted once sent, so a stream's length is what waits; an entry read but not taken when its
//! replica died is claimed and resent by the next lease holder (at least once, in order).

use super::*;
use fred::types::Value;

/// `KEYS[1]` a lease; `ARGV` 1 this replica, 2 TTL (ms), 3 `release` to give it up. Returns
/// 0 (another replica holds it), 1 (renewed) or 2 (taken now).
pub(super) const LEASE: &str = "local v = redis.call('GET', KEYS[1]) \
    if ARGV[3] == 'release' then if v == ARGV[1] then redis.call('DEL', KEYS[1]) end return 0 end \
    if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end \
    if not v then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 2 end \
    return 0";

/// `KEYS[1]` a stream; `ARGV[1]` its bound. Trims the oldest entries past it and returns
/// {left, trimmed, the oldest id left or ''}: atomic, so the id says exactly what went.
pub(super) const TRIM: &str = "local n = redis.call('XLEN', KEYS[1]) \
    local max = tonumber(ARGV[1]) \
    if n <= max then return {n, 0, ''} end \
    local d = redis.call('XTRIM', KEYS[1], 'MAXLEN', '=', max) \
    local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1] \
    return {n - d, d, first and first[1] or ''}";

const GROUP: &str = "wh";

/// A command whose key is its `i`-th argument (for Redis Cluster's routing).
fn keyed(name: &'static str, i: u16) -> CustomCommand {
    CustomCommand::new_static(name, ClusterHash::Offset(i as usize), false)
}

/// `[[id, [field, value, …]], …]` as entries of bucket `b`.
fn entries(b: u32, v: Value) -> Vec<LogEntry> {
    let Value::Array(items) = v else {
        return vec![];
    };
    items
        .into_iter()
        .filter_map(|item| {
            let Value::Array(mut pair) = item else {
                return None;
            };
            if pair.len() < 2 {
                return None;
            }
            let fields = pair.pop()?;
            let id = pair.pop()?.as_string()?;
            let event = match fields {
                Value::Array(f) => f
                    .chunks(2)
                    .find(|kv| kv[0].as_string().as_deref() == Some("e"))
                    .and_then(|kv| kv.get(1)?.as_string())
                    .and_then(|e| codec::decode_event(&e)),
                _ => None,
            };
            Some(LogEntry {
                bucket: b,
                id,
                event,
            })
        })
        .collect()
}

impl RedisEngine {
    /// The consumer group, made once per stream (`MKSTREAM`: before the first change).
    async fn ensure_group(&self, b: u32) -> Result<(), EngineError> {
        let r: Result<Value, _> = self
            .client
            .custom(
                keyed("XGROUP", 1),
                vec![
                    "CREATE".into(),
                    self.keys.webhook_stream(b),
                    GROUP.into(),
                    "0".into(),
                    "MKSTREAM".into(),
                ],
            )
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("BUSYGROUP") => Ok(()),
            Err(e) => Err(unavailable(e)),
        }
    }
}

#[async_trait]
impl WebhookLog for RedisEngine {
    async fn lease(&self, ttl_ms: u64) -> Result<(Vec<u32>, Vec<u32>), EngineError> {
        // Every bucket in one round trip: one at a time, 64 calls queued behind a connection
        // storm's commands took long enough for leases to lapse (and their entries to be
        // claimed and sent twice). EVAL, not EVALSHA: no script cache to miss in a pipeline.
        let pipeline = self.client.pipeline();
        for b in 0..BUCKETS {
            let _: () = pipeline
                .custom(
                    keyed("EVAL", 2),
                    vec![
                        LEASE.to_string(),
                        "1".into(),
                        self.keys.webhook_lease(b),
                        self.node.to_string(),
                        ttl_ms.to_string(),
                        String::new(),
                    ],
                )
                .await
                .map_err(unavailable)?;
        }
        let (mut held, mut new) = (vec![], vec![]);
        let mut failed = None;
        for (b, r) in (0..BUCKETS).zip(pipeline.try_all::<i64>().await) {
            // One bucket's failure must not hide the others' answers: a lease taken here and
            // not reported would never have its unsent entries claimed.
            match r {
                Ok(2) => match self.ensure_group(b).await {
                    Ok(()) => {
                        new.push(b);
                        held.push(b);
                    }
                    Err(e) => {
                        // Given back, so that it is taken (and claimed) afresh next time.
                        let _ = self.release(&[b]).await;
                        failed = Some(e);
                    }
                },
                Ok(1) => held.push(b),
                Ok(_) => {}
                Err(e) => failed = Some(unavailable(e)),
            }
        }
        match failed {
            Some(e) if held.is_empty() => Err(e),
            _ => Ok((held, new)),
        }
    }

    async fn release(&self, buckets: &[u32]) -> Result<(), EngineError> {
        for &b in buckets {
            let _: i64 = self
                .lease
                .evalsha_with_reload(
                    &self.client,
                    vec![self.keys.webhook_lease(b)],
                    vec![self.node.to_string(), "0".into(), "release".into()],
                )
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    async fn read(&self, buckets: &[u32], n: usize) -> Result<Vec<LogEntry>, EngineError> {
        if buckets.is_empty() {
            return Ok(vec![]);
        }
        let pipeline = self.client.pipeline();
        for &b in buckets {
            let _: () = pipeline
                .custom(
                    keyed("XREADGROUP", 6),
                    vec![
                        "GROUP".into(),
                        GROUP.into(),
                        self.node.to_string(),
                        "COUNT".into(),
                        n.to_string(),
                        "STREAMS".into(),
                        self.keys.webhook_stream(b),
                        ">".into(),
                    ],
                )
                .await
                .map_err(unavailable)?;
        }
        // One result per command (a bucket whose group is gone fails alone).
        let replies = pipeline.try_all::<Value>().await;
        let mut out = vec![];
        let mut failed = None;
        for (&b, r) in buckets.iter().zip(replies) {
            // [[key, entries]] or nil.
            let r = match r {
                Ok(r) => r,
                Err(e) => {
                    failed = Some(e);
                    continue;
                }
            };
            let Value::Array(mut streams) = r else {
                continue;
            };
            let Some(Value::Array(mut s)) = streams.pop() else {
                continue;
            };
            out.extend(s.pop().map(|e| entries(b, e)).unwrap_or_default());
        }
        match failed {
            Some(e) if out.is_empty() => Err(unavailable(e)),
            _ => Ok(out),
        }
    }

    async fn claim(&self, b: u32) -> Result<Vec<LogEntry>, EngineError> {
        let key = self.keys.webhook_stream(b);
        // Every pending entry, whoever read it, in id order (XAUTOCLAIM pages through the
        // pending list in order; entries trimmed meanwhile come back as deleted ids).
        let mut out = vec![];
        let mut cursor = "0-0".to_string();
        loop {
            let r: Value = self
                .client
                .custom(
                    cmd("XAUTOCLAIM"),
                    vec![
                        key.clone(),
                        GROUP.into(),
                        self.node.to_string(),
                        "0".into(),
                        cursor.clone(),
                        "COUNT".into(),
                        "1000".into(),
                    ],
                )
                .await
                .map_err(unavailable)?;
            let Value::Array(mut parts) = r else { break };
            let deleted = if parts.len() >= 3 { parts.pop() } else { None };
            let claimed = parts.pop();
            let next = parts.pop().and_then(|v| v.as_string()).unwrap_or_default();
            out.extend(claimed.map(|c| entries(b, c)).unwrap_or_default());
            if let Some(Value::Array(ids)) = deleted {
                out.extend(ids.into_iter().filter_map(|id| {
                    Some(LogEntry {
                        bucket: b,
                        id: id.as_string()?,
                        event: None,
                    })
                }));
            }
            if next == "0-0" || next.is_empty() {
                break;
            }
            cursor = next;
        }
        Ok(out)
    }

    async fn take(&self, done: &[(u32, Vec<String>)]) -> Result<(), EngineError> {
        let pipeline = self.client.pipeline();
        let mut any = false;
        for (b, ids) in done.iter().filter(|(_, ids)| !ids.is_empty()) {
            any = true;
            let key = self.keys.webhook_stream(*b);
            let mut ack = vec![key.clone(), GROUP.to_string()];
            ack.extend(ids.iter().cloned());
            let mut del = vec![key];
            del.extend(ids.iter().cloned());
            let _: () = pipeline
                .custom(cmd("XACK"), ack)
                .await
                .map_err(unavailable)?;
            let _: () = pipeline
                .custom(cmd("XDEL"), del)
                .await
                .map_err(unavailable)?;
        }
        if any {
            for r in pipeline.try_all::<Value>().await {
                r.map_err(unavailable)?;
            }
        }
        Ok(())
    }

    fn bucket_of(&self, user: &UserId) -> u32 {
        bucket(user.as_str())
    }

    async fn bound(&self, b: u32, max: usize) -> Result<Bounded, EngineError> {
        let key = self.keys.webhook_stream(b);
        // Seldom (every 10 s per held bucket): EVAL, no script cache to keep.
        let r: Vec<Value> = self
            .client
            .custom(
                keyed("EVAL", 2),
                vec![TRIM.to_string(), "1".into(), key, max.to_string()],
            )
            .await
            .map_err(unavailable)?;
        let int = |i: usize| r.get(i).and_then(|v| v.as_u64()).unwrap_or(0);
        Ok(Bounded {
            left: int(0),
            dropped: int(1),
            first: r
                .get(2)
                .and_then(|v| v.as_string())
                .filter(|s| !s.is_empty()),
        })
    }
}
