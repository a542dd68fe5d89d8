//! The cluster engine: presence in Redis, shared by every replica (`REDIS_URL`).
//!
//! Keys, scripts and channels are described in `docs/redis.md`. In short:
//! - every transition of a user is one Lua script (`*.lua` beside this file, each prefixed by
//!   `common.lua`) over keys that share the user's *bucket* hash tag: the user's record and
//!   connections, and the bucket's online index, counters and pending offlines. One slot per
//!   script on Redis Cluster, while 64 buckets spread presence over the cluster;
//! - a script that commits a change also publishes it, so nothing is announced unstored, and
//!   every replica (the committing one too) learns of it only from the channel;
//! - each replica keeps a sorted set of its own connections by last-heard time, written once
//!   per heartbeat flush (`touch`), and any replica's sweep expires stale entries of every
//!   replica's set, which is how a replica killed without warning loses its users.

use super::*;
use crate::domain::Presence;
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::{ClusterHash, CustomCommand};
use serde_json::Value as Json;

/// Buckets of the cluster-wide indexes.
pub const BUCKETS: u32 = 64;
/// Offline records are kept this long (for `lastSeen`), then expire.
const RETENTION_MS: u64 = 24 * 3600 * 1000;
/// Stale connections expired per replica set per sweep, at most.
const SWEEP_BATCH: u32 = 2000;

const COMMON: &str = include_str!("common.lua");

/// Apply an online delta to the cluster-wide counter and keep its maximum: `peakOnline`.
/// A separate step from the transition (another slot on Redis Cluster); `stats` also raises
/// the peak to the indexes' true count, which heals a delta lost with a crashed replica.
const PEAK: &str = "local n = redis.call('HINCRBY', KEYS[1], 'online', ARGV[1]) \
    local p = tonumber(redis.call('HGET', KEYS[1], 'peak') or '0') \
    if n > p then redis.call('HSET', KEYS[1], 'peak', n) end return n";

struct Scripts {
    peak: Script,
    restore: Script,
    connect: Script,
    set_status: Script,
    disconnect: Script,
    settle: Script,
    expire: Script,
    claim: Script,
}

fn script(body: &str) -> Script {
    Script::from_lua(format!("{COMMON}\n{body}"))
}

pub struct RedisEngine {
    client: Client,
    _subscriber: fred::clients::SubscriberClient,
    prefix: String,
    node: Arc<str>,
    channel: String,
    events: broadcast::Sender<PresenceEvent>,
    /// See [`PresenceEngine::subscribe_resyncs`].
    resyncs: broadcast::Sender<super::Resync>,
    /// The statistics bus: its channel, and what arrives on it.
    stats_channel: String,
    stats_bus: broadcast::Sender<Arc<str>>,
    scripts: Scripts,
    /// `MAX_CONNECTIONS_PER_USER` (0: no limit).
    max_conns: u32,
}

fn unavailable(e: impl std::fmt::Display) -> EngineError {
    EngineError::Unavailable(e.to_string())
}

/// FNV-1a: a stable bucket for a user id, the same on every replica and version.
pub fn bucket(uid: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in uid.as_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % BUCKETS
}

fn cmd(name: &'static str) -> CustomCommand {
    CustomCommand::new_static(name, ClusterHash::FirstKey, false)
}

/// A connection's member in its replica's sorted set: user id and connection id, split by a
/// control character, which neither may contain.
fn member(user: &UserId, conn: &str) -> String {
    format!("{user}\u{1f}{conn}")
}

impl RedisEngine {
    pub async fn connect(url: &str, prefix: &str, node: &str) -> Result<Self, EngineError> {
        Self::connect_with_buffer(url, prefix, node, super::EVENT_BUFFER).await
    }

    /// With a change stream of `buffer` events (a reader further behind lags).
    pub async fn connect_with_buffer(
        url: &str,
        prefix: &str,
        node: &str,
        buffer: usize,
    ) -> Result<Self, EngineError> {
        let config = Config::from_url(url).map_err(unavailable)?;
        let mut builder = Builder::from_config(config);
        // No reconnect policy is fred's default: then a Redis restart would be fatal.
        builder.set_policy(ReconnectPolicy::new_exponential(0, 100, 2000, 2));
        builder.with_connection_config(|c| {
            c.connection_timeout = std::time::Duration::from_secs(2);
            c.internal_command_timeout = std::time::Duration::from_secs(2);
        });
        builder.with_performance_config(|p| {
            p.default_command_timeout = std::time::Duration::from_secs(2);
            // Bursts of changes must not be dropped by a lagging broadcast (fred's default is 32).
            p.broadcast_channel_capacity = 65_536;
        });
        let client = builder.build().map_err(unavailable)?;
        let subscriber = builder.build_subscriber_client().map_err(unavailable)?;
        client.init().await.map_err(unavailable)?;
        subscriber.init().await.map_err(unavailable)?;
        let channel = format!("{prefix}:events");
        let stats_channel = format!("{prefix}:stats");
        let (events, _) = broadcast::channel(buffer.max(1));
        let (stats_bus, _) = broadcast::channel(super::EVENT_BUFFER);
        let (resyncs, _) = broadcast::channel(16);
        // Resubscribe after every reconnect (without it subscriptions vanish with a restart),
        // then say that what was published meanwhile was missed.
        {
            let (subscriber, resyncs) = (subscriber.clone(), resyncs.clone());
            let mut reconnects = subscriber.reconnect_rx();
            tokio::spawn(async move {
                while reconnects.recv().await.is_ok() {
                    match subscriber.resubscribe_all().await {
                        Ok(()) => {
                            let _ = resyncs.send(super::Resync::Resubscribed);
                        }
                        Err(e) => tracing::warn!(error = %e, "could not resubscribe to Redis"),
                    }
                }
            });
        }
        {
            let resyncs = resyncs.clone();
            let mut rx = subscriber.message_rx();
            let events = events.clone();
            let stats_bus = stats_bus.clone();
            let stats_channel = stats_channel.clone();
            tokio::spawn(async move {
                loop {
                    match rx.recv().await {
                        Ok(msg) if &*msg.channel == stats_channel.as_str() => {
                            if let Some(text) = msg.value.as_str() {
                                let _ = stats_bus.send(Arc::from(&*text));
                            }
                        }
                        Ok(msg) => {
                            if let Some(text) = msg.value.as_str()
                                && let Some(ev) = decode_event(&text)
                            {
                                let _ = events.send(ev);
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            tracing::warn!(
                                missed = n,
                                "Redis subscriber lagged; presence updates lost"
                            );
                            let _ = resyncs.send(super::Resync::BusLagged);
                        }
                        Err(_) => break,
                    }
                }
            });
        }
        subscriber
            .subscribe(vec![channel.clone(), stats_channel.clone()])
            .await
            .map_err(unavailable)?;
        let engine = RedisEngine {
            client,
            _subscriber: subscriber,
            prefix: prefix.to_string(),
            node: Arc::from(node),
            channel,
            events,
            resyncs,
            stats_channel,
            stats_bus,
            scripts: Scripts {
                peak: Script::from_lua(PEAK),
                restore: script(include_str!("restore.lua")),
                connect: script(include_str!("connect.lua")),
                set_status: script(include_str!("set_status.lua")),
                disconnect: script(include_str!("disconnect.lua")),
                settle: script(include_str!("settle.lua")),
                expire: script(include_str!("expire.lua")),
                claim: Script::from_lua(include_str!("claim.lua")),
            },
            max_conns: 0,
        };
        engine.sadd_node().await?;
        Ok(engine)
    }

    /// At most `n` connections per user, cluster-wide (0: no limit).
    pub fn with_max_connections_per_user(mut self, n: u32) -> Self {
        self.max_conns = n;
        self
    }

    fn tag(&self, b: u32) -> String {
        format!("{{{}:b{b}}}", self.prefix)
    }

    /// The seven keys of the common script prelude for this user.
    fn keys(&self, uid: &str) -> Vec<String> {
        let t = self.tag(bucket(uid));
        let p = &self.prefix;
        vec![
            format!("{p}:u:{t}:{uid}"),
            format!("{p}:c:{t}:{uid}"),
            format!("{p}:on:{t}:male"),
            format!("{p}:on:{t}:female"),
            format!("{p}:on:{t}:other"),
            format!("{p}:cnt:{t}"),
            format!("{p}:pend:{t}"),
        ]
    }

    fn args(&self, uid: &str, now: Timestamp, extra: &[String]) -> Vec<String> {
        let mut a = vec![
            uid.to_string(),
            now.as_micros().to_string(),
            self.channel.clone(),
            self.node.to_string(),
            RETENTION_MS.to_string(),
        ];
        a.extend_from_slice(extra);
        a
    }

    fn node_set(&self, node: &str) -> String {
        format!("{}:nc:{{{node}}}", self.prefix)
    }

    /// A replica's claimed members: taken from its index for expiry, not yet expired (see
    /// `claim.lua`). Same hash tag as the index.
    fn claimed_set(&self, node: &str) -> String {
        format!("{}:ncx:{{{node}}}", self.prefix)
    }

    fn nodes_key(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    /// Buckets that hold pending offlines, scored by their earliest deadline: an idle sweep
    /// reads this one key instead of every bucket.
    fn pending_buckets_key(&self) -> String {
        format!("{}:pendb", self.prefix)
    }

    fn stats_key(&self) -> String {
        format!("{}:stats", self.prefix)
    }

    async fn sadd_node(&self) -> Result<(), EngineError> {
        let _: i64 = self
            .client
            .custom(cmd("SADD"), vec![self.nodes_key(), self.node.to_string()])
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Run a transition script; apply the online delta it reports (its last element).
    async fn run(
        &self,
        s: &Script,
        uid: &str,
        now: Timestamp,
        extra: &[String],
    ) -> Result<Vec<fred::types::Value>, EngineError> {
        let r: Vec<fred::types::Value> = s
            .evalsha_with_reload(&self.client, self.keys(uid), self.args(uid, now, extra))
            .await
            .map_err(unavailable)?;
        let delta = if r.len() >= 3 {
            r.last().and_then(|v| v.as_i64()).unwrap_or(0)
        } else {
            0
        };
        if delta != 0 {
            let _: i64 = self
                .scripts
                .peak
                .evalsha_with_reload(
                    &self.client,
                    vec![self.stats_key()],
                    vec![delta.to_string()],
                )
                .await
                .map_err(unavailable)?;
        }
        Ok(r)
    }

    /// Several independent commands in one round trip; replies in order.
    async fn batch(
        &self,
        cmds: Vec<(&'static str, Vec<String>)>,
    ) -> Result<Vec<fred::types::Value>, EngineError> {
        if cmds.is_empty() {
            return Ok(vec![]);
        }
        let pipeline = self.client.pipeline();
        for (name, args) in cmds {
            let _: () = pipeline
                .custom(cmd(name), args)
                .await
                .map_err(unavailable)?;
        }
        pipeline.all().await.map_err(unavailable)
    }

    /// Put a connection in this replica's set, before the script that registers it: if this
    /// replica dies in between, the sweep still finds (and removes) the connection.
    async fn index_conn(&self, conn: &Connection, now: Timestamp) -> Result<(), EngineError> {
        let args = vec![
            self.node_set(&self.node),
            now.as_micros().to_string(),
            member(&conn.user, &conn.id),
        ];
        let _: i64 = self
            .client
            .custom(cmd("ZADD"), args)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn attach(
        &self,
        conn: &Connection,
        now: Timestamp,
        fresh: bool,
    ) -> Result<Presence, EngineError> {
        self.index_conn(conn, now).await?;
        let extra = [
            conn.id.to_string(),
            conn.gender.as_str().to_string(),
            if fresh { "1" } else { "0" }.to_string(),
            self.max_conns.to_string(),
        ];
        let r = self
            .run(&self.scripts.connect, conn.user.as_str(), now, &extra)
            .await?;
        if int_at(&r, 0) == -1 {
            // Refused: take back the index entry made for it.
            let _: i64 = self
                .client
                .custom(
                    cmd("ZREM"),
                    vec![self.node_set(&self.node), member(&conn.user, &conn.id)],
                )
                .await
                .map_err(unavailable)?;
            return Err(EngineError::TooManyConnections(self.max_conns));
        }
        presence_at(&r, 1)
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
    async fn claim(
        &self,
        node: &str,
        m: &str,
        cutoff: &str,
    ) -> Result<Option<String>, EngineError> {
        self.scripts
            .claim
            .evalsha_with_reload(
                &self.client,
                vec![self.node_set(node), self.claimed_set(node)],
                vec![m.to_string(), cutoff.to_string()],
            )
            .await
            .map_err(unavailable)
    }

    /// The second half of an expiry: also what the next sweep does with a member a sweeper
    /// claimed and did not get to (it died between the two steps). Idempotent.
    async fn expire_claimed(
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
            .custom(cmd("ZREM"), vec![self.claimed_set(node), m.to_string()])
            .await
            .map_err(unavailable)?;
        Ok(out)
    }
}

#[cfg(test)]
mod expiry_tests;

fn int_at(r: &[fred::types::Value], i: usize) -> i64 {
    r.get(i).and_then(|v| v.as_i64()).unwrap_or(0)
}

fn str_at(r: &[fred::types::Value], i: usize) -> Option<String> {
    r.get(i).and_then(|v| v.as_string())
}

fn presence_at(r: &[fred::types::Value], i: usize) -> Result<Presence, EngineError> {
    str_at(r, i)
        .and_then(|s| decode_event(&s))
        .map(|e| e.presence)
        .ok_or_else(|| unavailable("malformed script answer"))
}

fn ts(s: &str) -> Option<Timestamp> {
    s.parse::<i64>().ok().map(Timestamp)
}

/// A presence in the scripts' encoding (the inverse of [`decode_event`]'s presence part).
fn encode_presence(p: &Presence) -> String {
    let t = |t: Option<Timestamp>| t.map(|t| t.as_micros().to_string()).unwrap_or_default();
    serde_json::json!({
        "u": p.user_id, "st": p.status.as_str(), "g": p.gender.as_str(), "ls": t(p.last_seen), "ua": t(p.updated_at),
        "v": p.version.to_string(), "d": p.details.as_ref().map(|d| d.value().to_string()).unwrap_or_default(),
    })
    .to_string()
}

/// A presence as the scripts encode it: `{u, st, g, ls, ua, v, d, at, o}`, numbers as strings.
fn decode_event(text: &str) -> Option<PresenceEvent> {
    let j: Json = serde_json::from_str(text).ok()?;
    let s = |k: &str| j.get(k).and_then(Json::as_str).unwrap_or("");
    let status: Status = s("st").parse().ok()?;
    let details = match s("d") {
        "" => None,
        d => Some(Details::parse(serde_json::from_str(d).ok()?).ok()?),
    };
    let presence = Presence {
        user_id: UserId::parse(s("u")).ok()?,
        status,
        online: status != Status::Offline,
        gender: s("g").parse().unwrap_or_default(),
        last_seen: ts(s("ls")),
        updated_at: ts(s("ua")),
        version: s("v").parse().ok()?,
        details,
    };
    Some(PresenceEvent {
        presence,
        committed_at: ts(s("at")).unwrap_or_default(),
        origin: Arc::from(s("o")),
        was_online_as: s("pg").parse().ok(),
    })
}

#[async_trait]
impl PresenceEngine for RedisEngine {
    async fn connect(&self, conn: &Connection, now: Timestamp) -> Result<Presence, EngineError> {
        self.attach(conn, now, true).await
    }

    async fn revive(&self, conn: &Connection, now: Timestamp) -> Result<Presence, EngineError> {
        self.attach(conn, now, false).await
    }

    async fn restore(
        &self,
        conn: &Connection,
        last: Option<&Presence>,
        now: Timestamp,
    ) -> Result<Presence, EngineError> {
        self.index_conn(conn, now).await?;
        let last = last.map(encode_presence).unwrap_or_default();
        let extra = [conn.id.to_string(), conn.gender.as_str().to_string(), last];
        let r = self
            .run(&self.scripts.restore, conn.user.as_str(), now, &extra)
            .await?;
        presence_at(&r, 1)
    }

    async fn touch(&self, batch: &[Touch], _now: Timestamp) -> Result<Vec<ConnId>, EngineError> {
        if batch.is_empty() {
            return Ok(vec![]);
        }
        let set = self.node_set(&self.node);
        let members: Vec<String> = batch.iter().map(|t| member(&t.user, &t.conn)).collect();
        let mut args = vec![set.clone()];
        args.extend(members.iter().cloned());
        let scores: Vec<Option<f64>> = self
            .client
            .custom(cmd("ZMSCORE"), args)
            .await
            .map_err(unavailable)?;
        let mut missing = Vec::new();
        let mut zadd = vec![set, "XX".to_string(), "GT".to_string()];
        for ((t, m), score) in batch.iter().zip(members).zip(scores) {
            match score {
                None => missing.push(t.conn.clone()),
                Some(_) => {
                    zadd.push(t.heard_at.as_micros().to_string());
                    zadd.push(m);
                }
            }
        }
        if zadd.len() > 3 {
            let _: i64 = self
                .client
                .custom(cmd("ZADD"), zadd)
                .await
                .map_err(unavailable)?;
        }
        Ok(missing)
    }

    async fn set_status(
        &self,
        conn: &Connection,
        status: Status,
        details: Option<Details>,
        now: Timestamp,
    ) -> Result<StatusChange, EngineError> {
        if status == Status::Offline {
            return Err(StatusError::OfflineNotSettable.into());
        }
        self.index_conn(conn, now).await?;
        let det = details.map(|d| d.value().to_string()).unwrap_or_default();
        let extra = [
            conn.id.to_string(),
            conn.gender.as_str().to_string(),
            status.as_str().to_string(),
            det,
        ];
        let r = self
            .run(&self.scripts.set_status, conn.user.as_str(), now, &extra)
            .await?;
        Ok(StatusChange {
            changed: int_at(&r, 0) == 1,
            presence: presence_at(&r, 1)?,
        })
    }

    async fn disconnect(
        &self,
        conn: &Connection,
        grace_ms: u64,
        now: Timestamp,
    ) -> Result<DisconnectOutcome, EngineError> {
        let r = self
            .run(
                &self.scripts.disconnect,
                conn.user.as_str(),
                now,
                &[conn.id.to_string(), grace_ms.to_string()],
            )
            .await?;
        let _: i64 = self
            .client
            .custom(
                cmd("ZREM"),
                vec![self.node_set(&self.node), member(&conn.user, &conn.id)],
            )
            .await
            .map_err(unavailable)?;
        Ok(match int_at(&r, 0) {
            0 => DisconnectOutcome::Unknown,
            1 => DisconnectOutcome::StillOnline,
            2 => {
                let deadline = str_at(&r, 1).and_then(|s| ts(&s)).unwrap_or(now);
                // Index the bucket for the sweeps (LT keeps its earliest deadline).
                let bucket_id = bucket(conn.user.as_str()).to_string();
                let args = vec![
                    self.pending_buckets_key(),
                    "LT".into(),
                    deadline.as_micros().to_string(),
                    bucket_id,
                ];
                let _: i64 = self
                    .client
                    .custom(cmd("ZADD"), args)
                    .await
                    .map_err(unavailable)?;
                DisconnectOutcome::Pending { deadline }
            }
            _ => DisconnectOutcome::Offline(presence_at(&r, 1)?),
        })
    }

    async fn settle(&self, user: &UserId, now: Timestamp) -> Result<Option<Presence>, EngineError> {
        let r = self
            .run(&self.scripts.settle, user.as_str(), now, &[])
            .await?;
        Ok(if int_at(&r, 0) == 1 {
            Some(presence_at(&r, 1)?)
        } else {
            None
        })
    }

    async fn sweep(&self, timeout_ms: u64, now: Timestamp) -> Result<SweepReport, EngineError> {
        self.sadd_node().await?;
        let mut report = SweepReport::default();
        let cutoff = (now.as_micros() - (timeout_ms as i64) * 1000).to_string();
        let nodes: Vec<String> = self
            .client
            .custom(cmd("SMEMBERS"), vec![self.nodes_key()])
            .await
            .map_err(unavailable)?;
        for node in nodes {
            // Claims a sweeper left unfinished (usually none: one command).
            let leftover: Vec<String> = self
                .client
                .custom(
                    cmd("ZRANGE"),
                    vec![
                        self.claimed_set(&node),
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
            let set = self.node_set(&node);
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
                        .custom(cmd("SREM"), vec![self.nodes_key(), node.clone()])
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
                    self.pending_buckets_key(),
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
            let pend = format!("{}:pend:{}", self.prefix, self.tag(b));
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
                            vec![self.pending_buckets_key(), score.clone(), b.to_string()],
                        )
                        .await
                }
                None => {
                    self.client
                        .custom(cmd("ZREM"), vec![self.pending_buckets_key(), b.to_string()])
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
                    self.stats_key(),
                    "lastSweep".into(),
                    now.as_micros().to_string(),
                ],
            )
            .await
            .map_err(unavailable)?;
        Ok(report)
    }

    async fn get(&self, users: &[UserId]) -> Result<Vec<Option<Presence>>, EngineError> {
        let fields = ["st", "det", "g", "ls", "ua", "v"];
        let cmds = users
            .iter()
            .map(|u| {
                let mut args = vec![self.keys(u.as_str()).swap_remove(0)];
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
                let st = f.first()?.as_deref()?.parse::<Status>().ok()?;
                let field = |i: usize| f.get(i).cloned().flatten().filter(|v| !v.is_empty());
                let details = field(1)
                    .and_then(|d| serde_json::from_str(&d).ok())
                    .and_then(|v| Details::parse(v).ok());
                Some(Presence {
                    user_id: u.clone(),
                    status: st,
                    online: st != Status::Offline,
                    gender: field(2).and_then(|g| g.parse().ok()).unwrap_or_default(),
                    last_seen: field(3).as_deref().and_then(ts),
                    updated_at: field(4).as_deref().and_then(ts),
                    version: field(5).and_then(|v| v.parse().ok()).unwrap_or(0),
                    details,
                })
            })
            .collect())
    }

    async fn list_online(
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
        let mut ids: Vec<(u32, String)> = Vec::new();
        while b < BUCKETS && ids.len() <= limit {
            let want = limit + 1 - ids.len();
            let min = if after.is_empty() {
                "-".to_string()
            } else {
                format!("({after}")
            };
            let mut in_bucket: Vec<String> = Vec::new();
            for g in filter.genders.iter() {
                let key = format!("{}:on:{}:{}", self.prefix, self.tag(b), g.as_str());
                let got: Vec<String> = self
                    .client
                    .custom(
                        cmd("ZRANGEBYLEX"),
                        vec![
                            key,
                            min.clone(),
                            "+".into(),
                            "LIMIT".into(),
                            "0".into(),
                            want.to_string(),
                        ],
                    )
                    .await
                    .map_err(unavailable)?;
                in_bucket.extend(got);
            }
            if let Some(me) = &filter.include
                && bucket(me.as_str()) == b
                && (after.is_empty() || me.as_str() > after.as_str())
                && !in_bucket.iter().any(|u| u == me.as_str())
                && self
                    .get(std::slice::from_ref(me))
                    .await?
                    .first()
                    .cloned()
                    .flatten()
                    .is_some_and(|p| p.online)
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

    async fn stats(&self) -> Result<ClusterStats, EngineError> {
        // One round trip: per bucket three online counts and the counters, then the globals.
        let mut cmds = Vec::with_capacity(BUCKETS as usize * 4 + 1);
        for b in 0..BUCKETS {
            let t = self.tag(b);
            for g in crate::domain::Gender::ALL {
                cmds.push((
                    "ZCARD",
                    vec![format!("{}:on:{t}:{}", self.prefix, g.as_str())],
                ));
            }
            let counters = ["conns", "disconns", "swept"].map(String::from);
            let mut args = vec![format!("{}:cnt:{t}", self.prefix)];
            args.extend(counters);
            cmds.push(("HMGET", args));
        }
        cmds.push((
            "HMGET",
            vec![self.stats_key(), "peak".into(), "lastSweep".into()],
        ));
        cmds.push(("SCARD", vec![self.nodes_key()]));
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
        }
        s.online_users = s.online_by_gender.iter().sum();
        let g: Vec<Option<i64>> = it.next().and_then(|v| v.convert().ok()).unwrap_or_default();
        let peak = g.first().copied().flatten().unwrap_or(0).max(0) as u64;
        s.peak_online = peak.max(s.online_users);
        if s.online_users > peak {
            let args = vec![self.stats_key(), "peak".into(), s.online_users.to_string()];
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

    fn subscribe_resyncs(&self) -> broadcast::Receiver<super::Resync> {
        self.resyncs.subscribe()
    }

    fn subscribe(&self) -> broadcast::Receiver<PresenceEvent> {
        self.events.subscribe()
    }

    async fn publish_stats(&self, payload: String) -> Result<(), EngineError> {
        let _: i64 = self
            .client
            .custom(cmd("PUBLISH"), vec![self.stats_channel.clone(), payload])
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    fn subscribe_stats(&self) -> broadcast::Receiver<Arc<str>> {
        self.stats_bus.subscribe()
    }

    async fn ready(&self) -> bool {
        self.client.is_connected() && self._subscriber.is_connected()
    }

    fn kind(&self) -> &'static str {
        "redis"
    }

    fn is_shared(&self) -> bool {
        true
    }

    async fn ping(&self) -> Result<(), EngineError> {
        let _: String = self
            .client
            .custom(
                CustomCommand::new_static("PING", ClusterHash::Random, false),
                Vec::<String>::new(),
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
