//! The cluster engine: presence in Redis, shared by every replica (`REDIS_URL`). (This file:
//! connecting, and the trait's transitions, each a script call; the other jobs are in the
//! files named below.)
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
//!
//! By job: `keys` builds every key and channel, `codec` reads and writes presence as
//! Redis holds it, `bus` is the pub/sub subscription (owned by the engine, stopped with
//! it), `sweep` expires stale connections, `reads` answers queries, `webhook` reads and
//! takes the webhook streams; this file connects and runs the transitions.

mod blocks;
mod bus;
mod codec;
mod keys;
mod reads;
mod sweep;
mod webhook;

pub use keys::{BUCKETS, bucket};

use super::*;
use crate::domain::Presence;
use bus::Bus;
use codec::{encode_presence, int_at, presence_at, str_at, ts};
use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::{ClusterHash, CustomCommand};
use keys::{Keys, member};

/// Offline records are kept this long (for `lastSeen`), then expire.
const RETENTION_MS: u64 = 24 * 3600 * 1000;

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
    privacy: Script,
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
    keys: Keys,
    /// The bus this engine reads (and stops with it).
    bus: Bus,
    node: Arc<str>,
    /// How the scripts publish committed changes: `SPUBLISH` (sharded pub/sub) on Redis
    /// Cluster, `PUBLISH` elsewhere.
    publish: &'static str,
    scripts: Scripts,
    /// `MAX_CONNECTIONS_PER_USER` (0: no limit).
    max_conns: u32,
    /// `PRESENCE_FLAP_LIMIT` / `PRESENCE_FLAP_HOLD_MS` (`disconnect.lua` applies it).
    flap: crate::domain::FlapRule,
    /// Pipelines of reads in flight at once (see [`READS_IN_FLIGHT`]).
    reads: tokio::sync::Semaphore,
    /// Whether transitions append to the webhook streams (`WEBHOOK_URL` is set).
    webhooks: bool,
    lease: Script,
}

/// Pipelines of reads (`presence:get`, subscription snapshots, refetches) one replica has in
/// flight at once; a read that finds no room within [`READ_ADMISSION`] is refused
/// `unavailable` before it costs Redis anything. After a failover every viewer refetches at
/// once: unbounded, those reads queued in the client past its command timeout, every one timed
/// out while Redis still did its work, clients asked again, and two replicas stayed in that
/// state for the rest of a 600 s audit (RELIABILITY.md, session 11). Bounded, the reads let in
/// finish in time and the others are turned away cheaply and come back later.
const READS_IN_FLIGHT: usize = 32;
const READ_ADMISSION: std::time::Duration = std::time::Duration::from_millis(1000);

fn unavailable(e: impl std::fmt::Display) -> EngineError {
    EngineError::Unavailable(e.to_string())
}

fn cmd(name: &'static str) -> CustomCommand {
    CustomCommand::new_static(name, ClusterHash::FirstKey, false)
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
        let clustered = config.server.is_clustered();
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
        client.init().await.map_err(unavailable)?;
        let keys = Keys::new(prefix);
        let bus = Bus::start(&builder, &keys, buffer, clustered).await?;
        let engine = RedisEngine {
            client,
            publish: if clustered { "SPUBLISH" } else { "PUBLISH" },
            keys,
            bus,
            node: Arc::from(node),
            scripts: Scripts {
                peak: Script::from_lua(PEAK),
                restore: script(include_str!("restore.lua")),
                connect: script(include_str!("connect.lua")),
                set_status: script(include_str!("set_status.lua")),
                privacy: script(include_str!("privacy.lua")),
                disconnect: script(include_str!("disconnect.lua")),
                settle: script(include_str!("settle.lua")),
                expire: script(include_str!("expire.lua")),
                claim: Script::from_lua(include_str!("claim.lua")),
            },
            max_conns: 0,
            flap: crate::domain::FlapRule::default(),
            reads: tokio::sync::Semaphore::new(READS_IN_FLIGHT),
            webhooks: false,
            lease: Script::from_lua(webhook::LEASE),
        };
        engine.sadd_node().await?;
        Ok(engine)
    }

    /// At most `n` connections per user, cluster-wide (0: no limit).
    pub fn with_max_connections_per_user(mut self, n: u32) -> Self {
        self.max_conns = n;
        self
    }

    /// Append every committed change to its bucket's webhook stream.
    pub fn with_webhooks(mut self, on: bool) -> Self {
        self.webhooks = on;
        self
    }

    /// Damp a user's flapping, cluster-wide, as `rule` says (the default: not at all).
    pub fn with_flap_rule(mut self, rule: crate::domain::FlapRule) -> Self {
        self.flap = rule;
        self
    }

    fn args(&self, uid: &str, now: Timestamp, extra: &[String]) -> Vec<String> {
        let mut a = vec![
            uid.to_string(),
            now.as_micros().to_string(),
            // The script's publish command and channel: the user's bucket's.
            format!(
                "{} {}",
                self.publish,
                self.keys.event_channel(keys::bucket(uid))
            ),
            self.node.to_string(),
            RETENTION_MS.to_string(),
        ];
        a.extend_from_slice(extra);
        a
    }

    async fn sadd_node(&self) -> Result<(), EngineError> {
        let _: i64 = self
            .client
            .custom(cmd("SADD"), vec![self.keys.nodes(), self.node.to_string()])
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
        let mut keys = self.keys.user(uid);
        if self.webhooks {
            keys.push(self.keys.webhook_stream(keys::bucket(uid)));
        }
        let r: Vec<fred::types::Value> = s
            .evalsha_with_reload(&self.client, keys, self.args(uid, now, extra))
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
                    vec![self.keys.stats()],
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
        let _admitted = tokio::time::timeout(READ_ADMISSION, self.reads.acquire())
            .await
            .map_err(|_| unavailable("too many reads in flight on this replica"))?
            .map_err(unavailable)?;
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
            self.keys.node_set(&self.node),
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
                    vec![self.keys.node_set(&self.node), member(&conn.user, &conn.id)],
                )
                .await
                .map_err(unavailable)?;
            return Err(EngineError::TooManyConnections(self.max_conns));
        }
        presence_at(&r, 1)
    }
}

#[cfg(test)]
mod expiry_tests;

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
        mine: &DeviceStatus,
        now: Timestamp,
    ) -> Result<Presence, EngineError> {
        self.index_conn(conn, now).await?;
        let last = last.map(encode_presence).unwrap_or_default();
        let extra = [
            conn.id.to_string(),
            conn.gender.as_str().to_string(),
            last,
            mine.status.as_str().to_string(),
            mine.details
                .as_ref()
                .map(|d| d.value().to_string())
                .unwrap_or_default(),
        ];
        let r = self
            .run(&self.scripts.restore, conn.user.as_str(), now, &extra)
            .await?;
        presence_at(&r, 1)
    }

    async fn touch(&self, batch: &[Touch], _now: Timestamp) -> Result<Vec<ConnId>, EngineError> {
        if batch.is_empty() {
            return Ok(vec![]);
        }
        let set = self.keys.node_set(&self.node);
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
        status.settable()?;
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

    async fn set_privacy(
        &self,
        user: &UserId,
        change: PrivacyChange,
        now: Timestamp,
    ) -> Result<Presence, EngineError> {
        let extra = [
            match change.invisible {
                Some(true) => "1",
                Some(false) => "0",
                None => "",
            }
            .to_string(),
            change
                .last_seen
                .map(|l| l.as_str().to_string())
                .unwrap_or_default(),
        ];
        let r = self
            .run(&self.scripts.privacy, user.as_str(), now, &extra)
            .await?;
        presence_at(&r, 1)
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
                &[
                    conn.id.to_string(),
                    grace_ms.to_string(),
                    self.flap.limit.to_string(),
                    self.flap.hold_ms.to_string(),
                ],
            )
            .await?;
        let _: i64 = self
            .client
            .custom(
                cmd("ZREM"),
                vec![self.keys.node_set(&self.node), member(&conn.user, &conn.id)],
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
                    self.keys.pending_buckets(),
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
        self.sweep_all(timeout_ms, now).await
    }

    async fn get(&self, users: &[UserId]) -> Result<Vec<Option<Presence>>, EngineError> {
        self.read_presences(users).await
    }

    async fn list_online(
        &self,
        filter: &ListFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<OnlinePage, EngineError> {
        self.read_online(filter, cursor, limit).await
    }

    async fn stats(&self) -> Result<ClusterStats, EngineError> {
        self.read_stats().await
    }

    fn subscribe_resyncs(&self) -> broadcast::Receiver<super::Resync> {
        self.bus.resyncs.subscribe()
    }

    fn subscribe(&self) -> broadcast::Receiver<PresenceEvent> {
        self.bus.events.subscribe()
    }

    async fn publish(&self, topic: Topic, payload: String) -> Result<(), EngineError> {
        let _: i64 = self
            .client
            .custom(
                cmd("PUBLISH"),
                vec![self.keys.topic_channel(topic), payload],
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    fn subscribe_topic(&self, topic: Topic) -> broadcast::Receiver<Arc<str>> {
        self.bus.topics[topic.index()].subscribe()
    }

    async fn report_replica(
        &self,
        report: Option<String>,
        now: Timestamp,
    ) -> Result<(), EngineError> {
        let key = self.keys.replicas();
        let node = self.node.to_string();
        let _: i64 = match report {
            Some(r) => {
                self.client
                    .custom(
                        cmd("HSET"),
                        vec![key, node, format!("{} {r}", now.as_micros())],
                    )
                    .await
            }
            None => self.client.custom(cmd("HDEL"), vec![key, node]).await,
        }
        .map_err(unavailable)?;
        Ok(())
    }

    async fn replicas(
        &self,
        max_age_ms: u64,
        now: Timestamp,
    ) -> Result<Vec<(String, String)>, EngineError> {
        let key = self.keys.replicas();
        let all: std::collections::HashMap<String, String> = self
            .client
            .custom(cmd("HGETALL"), vec![key.clone()])
            .await
            .map_err(unavailable)?;
        let (mut live, mut gone) = (Vec::new(), Vec::new());
        for (node, v) in all {
            let (at, report) = v.split_once(' ').unwrap_or(("0", ""));
            let at = Timestamp(at.parse().unwrap_or(0));
            if now.micros_since(at) > max_age_ms * 1000 {
                gone.push(node);
            } else {
                live.push((node, report.to_string()));
            }
        }
        if !gone.is_empty() {
            let _: i64 = self
                .client
                .custom(
                    cmd("HDEL"),
                    std::iter::once(key).chain(gone).collect::<Vec<_>>(),
                )
                .await
                .map_err(unavailable)?;
        }
        live.sort();
        Ok(live)
    }

    async fn ready(&self) -> bool {
        self.client.is_connected() && self.bus.is_connected()
    }

    fn kind(&self) -> &'static str {
        "redis"
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn block_store(&self) -> &dyn BlockStore {
        self
    }

    fn webhook_log(&self) -> Option<&dyn WebhookLog> {
        self.webhooks.then_some(self as &dyn WebhookLog)
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
