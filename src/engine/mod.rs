//! Engines: where presence state lives and how its changes reach every replica.
//!
//! [`PresenceEngine`] is the one interface the gateway uses. [`memory::MemoryEngine`] serves a
//! single replica with nothing else installed; the Redis engine serves a cluster. Both must
//! pass the same behavioural suite (`tests/it/engine.rs`).
//!
//! The trait is shaped by what a shared store needs:
//! - every method is one atomic transition (one Lua script in Redis), so two replicas racing
//!   on one user cannot both announce it;
//! - `now` is an argument: the caller's clock drives versions, sweeps and graces, which keeps
//!   tests deterministic and lets a script be handed the time;
//! - heartbeats arrive as batches ([`Touch`]), one write per replica per interval;
//! - a sweep may run on every replica at once: it removes what is stale and announces each
//!   resulting change once;
//! - a change is published by the engine itself, in the same step that commits it, and every
//!   replica's gateway (this one included) learns of it only through [`PresenceEngine::subscribe`].
//!   Nothing is announced that was not stored, and nothing is delivered twice.

pub mod memory;
pub mod redis;

use crate::domain::{
    Details, DeviceStatus, Gender, GenderSet, Presence, PrivacyChange, Status, StatusError,
    Timestamp, UserId,
};
use async_trait::async_trait;
use std::sync::Arc;
use tokio::sync::broadcast;

/// A connection's id, unique cluster-wide (the replica's id and the socket id).
pub type ConnId = Arc<str>;

/// One live connection of a user, as the engine knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    pub id: ConnId,
    pub user: UserId,
    pub gender: Gender,
}

/// "This connection was heard from at `heard_at`", batched per replica.
#[derive(Debug, Clone)]
pub struct Touch {
    pub conn: ConnId,
    pub user: UserId,
    pub heard_at: Timestamp,
}

/// A committed change, as every replica receives it.
#[derive(Debug, Clone)]
pub struct PresenceEvent {
    pub presence: Presence,
    /// When the change was committed, by the committing replica's clock (for the fan-out
    /// latency histogram).
    pub committed_at: Timestamp,
    /// The replica that committed it (`NODE_ID`).
    pub origin: Arc<str>,
    /// The gender the user was online with until this change, when the change gave them
    /// another: viewers who could see that one and may not see the new one must be told the
    /// user is gone.
    pub was_online_as: Option<Gender>,
    /// Whether the user was online until this change (a webhook tells online, offline and
    /// status changes apart by it).
    pub was_online: bool,
}

/// What happened to the user when one of their connections closed.
#[derive(Debug, Clone, PartialEq)]
pub enum DisconnectOutcome {
    /// The engine did not know this connection (already swept, or closed twice).
    Unknown,
    /// The user still has other live connections.
    StillOnline,
    /// This was the last connection; the user goes offline at `deadline` unless a connection
    /// returns first. Call [`PresenceEngine::settle`] then; the sweep is the backstop.
    Pending { deadline: Timestamp },
    /// This was the last connection and the user is now offline (announced).
    Offline(Presence),
}

/// The answer to `presence:set-status`.
#[derive(Debug, Clone)]
pub struct StatusChange {
    pub presence: Presence,
    /// False when the status and details were already those (acked, not announced).
    pub changed: bool,
}

/// Which online users a listing may show: those of `genders`, and `include` whatever its
/// gender (a viewer always sees themselves).
#[derive(Debug, Clone)]
pub struct ListFilter {
    pub genders: GenderSet,
    pub include: Option<UserId>,
}

impl ListFilter {
    pub fn admits(&self, user: &UserId, gender: Gender) -> bool {
        self.genders.contains(gender) || self.include.as_ref() == Some(user)
    }
}

#[derive(Debug, Clone)]
pub struct OnlinePage {
    pub users: Vec<Presence>,
    /// Opaque; `None` on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SweepReport {
    /// Connections removed because they went silent.
    pub swept: u64,
    /// Users announced offline by this sweep (silent connections and expired graces).
    pub went_offline: u64,
}

/// Why a replica may have missed changes: its sockets are told to refetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resync {
    /// The subscription to the change bus was re-established (after a reconnect): what was
    /// published meanwhile never arrived.
    Resubscribed,
    /// Messages arrived faster than they were read, and some were dropped.
    BusLagged,
}

impl Resync {
    pub fn reason(self) -> &'static str {
        match self {
            Resync::Resubscribed => "resubscribed",
            Resync::BusLagged => "lagged",
        }
    }
}

/// The opaque buses beside the change stream, each from every replica to every replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    /// Stored statistics batches (`crate::stats`).
    Stats,
    /// The admin API's questions to every replica and their answers (`gateway::cluster`).
    Admin,
    /// Blocks made and lifted (`crate::blocks`).
    Rules,
}

impl Topic {
    pub const COUNT: usize = 3;
    pub const ALL: [Topic; Topic::COUNT] = [Topic::Stats, Topic::Admin, Topic::Rules];

    pub fn index(self) -> usize {
        self as usize
    }
}

/// The default capacity of an engine's change stream (`PRESENCE_EVENT_BUFFER`).
pub const EVENT_BUFFER: usize = 8192;

/// Cluster-wide figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterStats {
    pub online_users: u64,
    pub peak_online: u64,
    /// Online users by gender, indexed by [`Gender::index`].
    pub online_by_gender: [u64; 3],
    pub total_connections: u64,
    pub total_disconnections: u64,
    pub total_swept: u64,
    pub last_sweep_at: Option<Timestamp>,
    /// Replicas in the cluster.
    pub nodes: u64,
    /// Users who set `invisible` (section 11), cluster-wide.
    pub invisible_users: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The shared store cannot be reached; the request may be retried later.
    #[error("presence store unavailable: {0}")]
    Unavailable(String),
    #[error("malformed cursor")]
    BadCursor,
    /// A new connection of a user who holds the most connections allowed, cluster-wide.
    #[error("at most {0} connections per user")]
    TooManyConnections(u32),
    #[error(transparent)]
    Status(#[from] StatusError),
}

#[async_trait]
pub trait PresenceEngine: Send + Sync + 'static {
    /// A new connection. Returns the user's presence after it (announced if it changed).
    async fn connect(&self, conn: &Connection, now: Timestamp) -> Result<Presence, EngineError>;

    /// A connection the engine had swept spoke again: register it anew without counting a
    /// new connection. Returns the presence after it (announced if it changed).
    async fn revive(&self, conn: &Connection, now: Timestamp) -> Result<Presence, EngineError>;

    /// Like [`revive`](Self::revive), for a store that may have lost its data: if the user's
    /// record is gone, re-create it as `last` (the presence this replica last saw for the
    /// user) without announcing anything, since nothing changed for anyone. The connection
    /// takes back `mine`, the status it had set (section 11).
    async fn restore(
        &self,
        conn: &Connection,
        last: Option<&Presence>,
        mine: &DeviceStatus,
        now: Timestamp,
    ) -> Result<Presence, EngineError>;

    /// Record when connections were last heard from. Returns the ids the engine does not
    /// know (swept meanwhile), for the caller to [`revive`](Self::revive) if still open.
    async fn touch(&self, batch: &[Touch], now: Timestamp) -> Result<Vec<ConnId>, EngineError>;

    /// Set the user's status from one of their connections (which counts as hearing from it,
    /// and re-registers it if it had been swept).
    async fn set_status(
        &self,
        conn: &Connection,
        status: Status,
        details: Option<Details>,
        now: Timestamp,
    ) -> Result<StatusChange, EngineError>;

    /// Change the user's privacy settings (section 11; `PresenceRecord::set_privacy`).
    /// Returns the presence after it (announced if it changed), settings included.
    async fn set_privacy(
        &self,
        user: &UserId,
        change: PrivacyChange,
        now: Timestamp,
    ) -> Result<Presence, EngineError>;

    /// A connection closed. With `grace_ms` > 0 the user's going offline waits that long.
    async fn disconnect(
        &self,
        conn: &Connection,
        grace_ms: u64,
        now: Timestamp,
    ) -> Result<DisconnectOutcome, EngineError>;

    /// Apply a pending offline of this user if its deadline has passed and no connection
    /// came back. Idempotent; any replica may call it.
    async fn settle(&self, user: &UserId, now: Timestamp) -> Result<Option<Presence>, EngineError>;

    /// Remove connections not heard from within `timeout_ms`, apply due graces.
    async fn sweep(&self, timeout_ms: u64, now: Timestamp) -> Result<SweepReport, EngineError>;

    /// Presences of these users, `None` for a user never seen (or long forgotten).
    async fn get(&self, users: &[UserId]) -> Result<Vec<Option<Presence>>, EngineError>;

    /// Online users admitted by `filter`, ordered by id, from an opaque cursor.
    async fn list_online(
        &self,
        filter: &ListFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<OnlinePage, EngineError>;

    async fn stats(&self) -> Result<ClusterStats, EngineError>;

    /// Every committed change, from every replica, in commit order per user.
    fn subscribe(&self) -> broadcast::Receiver<PresenceEvent>;

    /// When [`subscribe`](Self::subscribe)'s stream may have lost changes before they reached
    /// this replica (announced after the stream is whole again).
    fn subscribe_resyncs(&self) -> broadcast::Receiver<Resync>;

    /// Send `payload` to every replica's [`subscribe_topic`](Self::subscribe_topic) of
    /// `topic`, this one included, in the order of the calls (the payload is opaque here).
    async fn publish(&self, topic: Topic, payload: String) -> Result<(), EngineError>;

    fn subscribe_topic(&self, topic: Topic) -> broadcast::Receiver<Arc<str>>;

    /// Record this replica's report (opaque here) as of `now`, or withdraw it (`None`: the
    /// replica is leaving).
    async fn report_replica(
        &self,
        report: Option<String>,
        now: Timestamp,
    ) -> Result<(), EngineError>;

    /// Every replica's last report made within `max_age_ms` of `now`, as (node, report), by
    /// node; older ones belong to replicas that are gone and are forgotten.
    async fn replicas(
        &self,
        max_age_ms: u64,
        now: Timestamp,
    ) -> Result<Vec<(String, String)>, EngineError>;

    /// Whether the engine can serve right now (readiness), from what it knows without asking
    /// its store.
    async fn ready(&self) -> bool;

    /// One round trip to the store, to learn whether it answers.
    async fn ping(&self) -> Result<(), EngineError>;

    /// Short name for logs and health (`memory`, `redis`).
    fn kind(&self) -> &'static str;

    /// Whether other replicas share this engine's state (Redis): then there is a store to be
    /// up or down, and a replica is not the whole cluster.
    fn is_shared(&self) -> bool;

    /// The store's webhook queue, when the engine keeps one (Redis, with webhooks on): then
    /// the transitions append to it themselves. Without one, the webhook module queues this
    /// replica's changes in memory.
    fn webhook_log(&self) -> Option<&dyn WebhookLog> {
        None
    }

    /// Where blocks are kept when no database is configured (section 11).
    fn block_store(&self) -> &dyn BlockStore;
}

/// What became of a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocked {
    /// Made now.
    Added,
    /// It was there already.
    Already,
    /// The user holds the most blocks allowed; nothing was added.
    TooMany,
}

/// Blocks (section 11): who blocked whom. Kept by the database when one is configured, else
/// by the engine ([`PresenceEngine::block_store`]).
#[async_trait]
pub trait BlockStore: Send + Sync {
    /// `user` blocks `other`, unless they hold `max` blocks already.
    async fn block(
        &self,
        user: &UserId,
        other: &UserId,
        max: usize,
    ) -> Result<Blocked, EngineError>;

    /// Returns whether there was such a block.
    async fn unblock(&self, user: &UserId, other: &UserId) -> Result<bool, EngineError>;

    /// Whether `user` blocks `other` (one pair: an unblock asks this of the other side, whose
    /// lists may be long).
    async fn blocks(&self, user: &UserId, other: &UserId) -> Result<bool, EngineError>;

    /// Whom `user` blocked, and who blocked `user`.
    async fn blocks_of(&self, user: &UserId) -> Result<(Vec<UserId>, Vec<UserId>), EngineError>;
}

/// A stream measured and trimmed ([`WebhookLog::bound`]).
#[derive(Debug, Default)]
pub struct Bounded {
    /// Entries left (read or not).
    pub left: u64,
    /// Entries trimmed, oldest first.
    pub dropped: u64,
    /// The oldest entry left, when some were trimmed: anything older that a replica read
    /// ahead is gone from the stream and must not be sent.
    pub first: Option<String>,
}

/// One entry of a webhook queue: its id in the store, and the change.
#[derive(Debug, Clone)]
pub struct LogEntry {
    pub bucket: u32,
    pub id: String,
    /// `None` when the entry is gone (trimmed past `WEBHOOK_QUEUE_MAX`) or unreadable.
    pub event: Option<PresenceEvent>,
}

/// A store's webhook queue: per bucket, the changes in commit order, each bucket sent by one
/// replica at a time (a lease), entries taken off once sent.
#[async_trait]
pub trait WebhookLog: Send + Sync {
    /// Take or renew this replica's leases (`ttl_ms`); returns the buckets it holds and, of
    /// those, the ones it did not hold before (whose unacknowledged entries it must resend).
    async fn lease(&self, ttl_ms: u64) -> Result<(Vec<u32>, Vec<u32>), EngineError>;

    /// Give the leases up (the replica is stopping).
    async fn release(&self, buckets: &[u32]) -> Result<(), EngineError>;

    /// Bucket `b`'s entries read but not taken yet (by any replica), in order.
    async fn claim(&self, b: u32) -> Result<Vec<LogEntry>, EngineError>;

    /// The next unread entries of these buckets, at most `n` of each, in order per bucket, in
    /// one round trip.
    async fn read(&self, buckets: &[u32], n: usize) -> Result<Vec<LogEntry>, EngineError>;

    /// These entries (bucket, ids) are done with (sent, refused, or cancelled by the offline
    /// delay), in one round trip.
    async fn take(&self, done: &[(u32, Vec<String>)]) -> Result<(), EngineError>;

    /// Entries waiting in bucket `b`; trims the oldest past `max` in one atomic step.
    async fn bound(&self, b: u32, max: usize) -> Result<Bounded, EngineError>;

    /// The bucket of a user's changes.
    fn bucket_of(&self, user: &UserId) -> u32;
}
