//! The single-replica engine: all presence state in this process's memory. (Every method of
//! the engine trait, each short; split it and the one lock's invariants would be in several
//! files.)
//!
//! Used when `REDIS_URL` is unset, so one replica runs with nothing else installed. One
//! `std::sync::Mutex` guards the whole state: every operation is a short, non-blocking update
//! with no `.await` inside, so a std mutex is cheaper than an async one and cannot be held
//! across a suspension point. Holding the lock while publishing keeps announcements in commit
//! order.

use super::*;
use crate::domain::{
    DeviceStatus, FlapRule, FlapWindow, PresenceRecord, devices, presence::Presence,
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::ops::Bound;
use std::sync::Mutex;

/// Offline users are remembered this long (for `lastSeen`), then forgotten, so the map does
/// not grow with every user ever seen. PostgreSQL keeps `lastSeen` for longer.
const OFFLINE_RETENTION_MS: u64 = 24 * 3600 * 1000;

pub struct MemoryEngine {
    node: Arc<str>,
    inner: Mutex<Inner>,
    events: broadcast::Sender<PresenceEvent>,
    /// The [`Topic`] buses, indexed by [`Topic::index`].
    topics: [broadcast::Sender<Arc<str>>; Topic::COUNT],
    /// This replica's report: it is the whole cluster.
    report: Mutex<Option<(Timestamp, String)>>,
    /// Nothing is ever lost between this engine and its only replica: never sent.
    resyncs: broadcast::Sender<super::Resync>,
    /// `MAX_CONNECTIONS_PER_USER` (0: no limit).
    max_conns: u32,
    /// `PRESENCE_FLAP_LIMIT` / `PRESENCE_FLAP_HOLD_MS`.
    flap: FlapRule,
    /// Blocks (section 11) when no database keeps them.
    blocks: MemoryBlocks,
}

/// Users to a set of users.
type Sets = HashMap<UserId, HashSet<UserId>>;

/// Blocks both ways: whom each user blocked, and who blocked them.
#[derive(Default)]
struct MemoryBlocks(Mutex<(Sets, Sets)>);

#[async_trait]
impl BlockStore for MemoryBlocks {
    async fn block(
        &self,
        user: &UserId,
        other: &UserId,
        max: usize,
    ) -> Result<Blocked, EngineError> {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mine = g.0.entry(user.clone()).or_default();
        if mine.contains(other) {
            return Ok(Blocked::Already);
        }
        if mine.len() >= max {
            return Ok(Blocked::TooMany);
        }
        mine.insert(other.clone());
        g.1.entry(other.clone()).or_default().insert(user.clone());
        Ok(Blocked::Added)
    }

    async fn unblock(&self, user: &UserId, other: &UserId) -> Result<bool, EngineError> {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let had = g.0.get_mut(user).is_some_and(|s| s.remove(other));
        if let Some(s) = g.1.get_mut(other) {
            s.remove(user);
        }
        Ok(had)
    }

    async fn blocks(&self, user: &UserId, other: &UserId) -> Result<bool, EngineError> {
        let g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        Ok(g.0.get(user).is_some_and(|s| s.contains(other)))
    }

    async fn blocks_of(&self, user: &UserId) -> Result<(Vec<UserId>, Vec<UserId>), EngineError> {
        let g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let list = |m: &Sets| {
            let mut v: Vec<UserId> = m
                .get(user)
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default();
            v.sort();
            v
        };
        Ok((list(&g.0), list(&g.1)))
    }
}

/// Where committed changes go, and whose they are.
struct Publisher<'a> {
    events: &'a broadcast::Sender<PresenceEvent>,
    node: &'a Arc<str>,
}

struct UserState {
    record: PresenceRecord,
    conns: Vec<ConnId>,
    /// The user's counter for [`DeviceStatus::seq`].
    seq: u64,
    pending_offline: Option<Timestamp>,
    /// Offlines in the current flap window ([`FlapRule`]).
    flap: FlapWindow,
}

struct ConnState {
    user: UserId,
    last_heard: Timestamp,
    /// What this connection set (section 11).
    device: DeviceStatus,
}

#[derive(Default)]
struct Inner {
    users: HashMap<UserId, UserState>,
    conns: HashMap<ConnId, ConnState>,
    /// Online users by gender, ordered by id for cursor pagination.
    online: [BTreeSet<UserId>; 3],
    pending: HashSet<UserId>,
    peak_online: u64,
    total_connections: u64,
    total_disconnections: u64,
    total_swept: u64,
    last_sweep_at: Option<Timestamp>,
}

impl MemoryEngine {
    /// `node` is this replica's id, stamped on the changes it commits.
    pub fn new(node: &str) -> Self {
        Self::with_buffer(node, super::EVENT_BUFFER)
    }

    /// With a change stream of `buffer` events (a reader further behind lags).
    pub fn with_buffer(node: &str, buffer: usize) -> Self {
        MemoryEngine {
            node: Arc::from(node),
            inner: Mutex::new(Inner::default()),
            events: broadcast::channel(buffer.max(1)).0,
            topics: Topic::ALL.map(|_| broadcast::channel(super::EVENT_BUFFER).0),
            report: Mutex::new(None),
            resyncs: broadcast::channel(1).0,
            max_conns: 0,
            flap: FlapRule::default(),
            blocks: MemoryBlocks::default(),
        }
    }

    /// Damp a user's flapping as `rule` says ([`FlapRule`]; the default: not at all).
    pub fn with_flap_rule(mut self, rule: FlapRule) -> Self {
        self.flap = rule;
        self
    }

    /// At most `n` connections per user (0: no limit).
    pub fn with_max_connections_per_user(mut self, n: u32) -> Self {
        self.max_conns = n;
        self
    }

    fn tx(&self) -> Publisher<'_> {
        Publisher {
            events: &self.events,
            node: &self.node,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied transition that later
        // operations would misread more than a lost replica would, so recover the guard.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn register(
        &self,
        conn: &Connection,
        now: Timestamp,
        fresh: bool,
        mine: Option<&DeviceStatus>,
    ) -> Presence {
        let mut inner = self.lock();
        let inner = &mut *inner;
        if fresh {
            inner.total_connections += 1;
        }
        let state = inner
            .users
            .entry(conn.user.clone())
            .or_insert_with(|| UserState {
                record: PresenceRecord::new(conn.gender),
                conns: Vec::new(),
                seq: 0,
                pending_offline: None,
                flap: FlapWindow::default(),
            });
        match inner.conns.get_mut(&conn.id) {
            Some(c) => {
                c.last_heard = c.last_heard.max(now);
                if let Some(m) = mine {
                    state.seq += 1;
                    c.device = DeviceStatus {
                        seq: state.seq,
                        ..m.clone()
                    };
                }
            }
            None => {
                inner.conns.insert(
                    conn.id.clone(),
                    ConnState {
                        user: conn.user.clone(),
                        last_heard: now,
                        device: match mine {
                            Some(m) => {
                                state.seq += 1;
                                DeviceStatus {
                                    seq: state.seq,
                                    ..m.clone()
                                }
                            }
                            None => DeviceStatus::default(),
                        },
                    },
                );
                state.conns.push(conn.id.clone());
            }
        }
        // A connection coming back inside the grace cancels the pending offline silently.
        if state.pending_offline.take().is_some() {
            inner.pending.remove(&conn.user);
        }
        let before = state.record.clone();
        let shown = devices::best(state.conns.iter().map(|c| &inner.conns[c].device));
        if state
            .record
            .connect(fresh.then_some(conn.gender), shown, now)
        {
            inner.committed(&self.tx(), &conn.user, &before, now);
        }
        inner.users[&conn.user]
            .record
            .to_presence(conn.user.clone())
    }
}

impl Inner {
    /// Bring the indexes in line with a user's changed record and announce it.
    fn committed(
        &mut self,
        events: &Publisher<'_>,
        user: &UserId,
        before: &PresenceRecord,
        now: Timestamp,
    ) {
        let record = &self.users[user].record;
        if before.is_online() {
            self.online[before.gender.index()].remove(user);
        }
        if record.is_online() {
            self.online[record.gender.index()].insert(user.clone());
        }
        let presence = record.to_presence(user.clone());
        self.peak_online = self.peak_online.max(self.online_users());
        // No receiver is not an error: nobody is listening yet.
        let was_online_as =
            (before.is_online() && before.gender != record.gender).then_some(before.gender);
        let _ = events.events.send(PresenceEvent {
            presence,
            committed_at: now,
            origin: events.node.clone(),
            was_online_as,
            was_online: before.is_online(),
        });
    }

    fn online_users(&self) -> u64 {
        self.online.iter().map(|s| s.len() as u64).sum()
    }

    /// Take a user offline now (their last connection is gone). Returns the new presence.
    fn go_offline(
        &mut self,
        events: &Publisher<'_>,
        user: &UserId,
        now: Timestamp,
    ) -> Option<Presence> {
        let state = self.users.get_mut(user)?;
        if state.pending_offline.take().is_some() {
            self.pending.remove(user);
        }
        let before = state.record.clone();
        if !state.record.disconnect(now) {
            return None;
        }
        self.committed(events, user, &before, now);
        Some(self.users[user].record.to_presence(user.clone()))
    }

    /// Show the best of the user's live connections' statuses (one of them closed or set
    /// one), announced if that is a change.
    fn reshow(&mut self, events: &Publisher<'_>, user: &UserId, now: Timestamp) -> bool {
        let Some(state) = self.users.get_mut(user) else {
            return false;
        };
        let shown = devices::best(state.conns.iter().map(|c| &self.conns[c].device));
        let before = state.record.clone();
        if !state.record.show(shown, now) {
            return false;
        }
        self.committed(events, user, &before, now);
        true
    }

    /// Remove a connection from the indexes. Returns whether the engine knew it.
    fn remove_conn(&mut self, id: &ConnId) -> Option<UserId> {
        let c = self.conns.remove(id)?;
        if let Some(state) = self.users.get_mut(&c.user) {
            state.conns.retain(|x| x != id);
        }
        Some(c.user)
    }
}

#[async_trait]
impl PresenceEngine for MemoryEngine {
    async fn connect(&self, conn: &Connection, now: Timestamp) -> Result<Presence, EngineError> {
        let max = self.max_conns;
        if max > 0 {
            let inner = self.lock();
            let held = inner.users.get(&conn.user).map_or(0, |u| u.conns.len());
            if held >= max as usize && !inner.conns.contains_key(&conn.id) {
                return Err(EngineError::TooManyConnections(max));
            }
        }
        Ok(self.register(conn, now, true, None))
    }

    async fn revive(&self, conn: &Connection, now: Timestamp) -> Result<Presence, EngineError> {
        Ok(self.register(conn, now, false, None))
    }

    async fn restore(
        &self,
        conn: &Connection,
        _last: Option<&Presence>,
        mine: &DeviceStatus,
        now: Timestamp,
    ) -> Result<Presence, EngineError> {
        // Nothing is ever lost here but connections swept while silent: such a one takes
        // back what it had set.
        Ok(self.register(conn, now, false, Some(mine)))
    }

    async fn touch(&self, batch: &[Touch], _now: Timestamp) -> Result<Vec<ConnId>, EngineError> {
        let mut inner = self.lock();
        let mut missing = Vec::new();
        for t in batch {
            match inner.conns.get_mut(&t.conn) {
                Some(c) => c.last_heard = c.last_heard.max(t.heard_at),
                None => missing.push(t.conn.clone()),
            }
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
        // Speaking counts as being heard from, and brings a swept connection back.
        self.register(conn, now, false, None);
        let mut inner = self.lock();
        let inner = &mut *inner;
        let state = inner.users.get_mut(&conn.user).expect("registered above");
        let c = inner.conns.get_mut(&conn.id).expect("registered above");
        if let Some(set) = c.device.set(status, details, state.seq + 1)? {
            state.seq += 1;
            c.device = set;
        }
        let changed = inner.reshow(&self.tx(), &conn.user, now);
        let presence = inner.users[&conn.user]
            .record
            .to_presence(conn.user.clone());
        Ok(StatusChange { presence, changed })
    }

    async fn set_privacy(
        &self,
        user: &UserId,
        change: PrivacyChange,
        now: Timestamp,
    ) -> Result<Presence, EngineError> {
        let mut inner = self.lock();
        let state = inner
            .users
            .entry(user.clone())
            .or_insert_with(|| UserState {
                record: PresenceRecord::new(Gender::Other),
                conns: Vec::new(),
                seq: 0,
                pending_offline: None,
                flap: FlapWindow::default(),
            });
        let before = state.record.clone();
        if state.record.set_privacy(change, now) {
            inner.committed(&self.tx(), user, &before, now);
        }
        Ok(inner.users[user].record.to_presence(user.clone()))
    }

    async fn disconnect(
        &self,
        conn: &Connection,
        grace_ms: u64,
        now: Timestamp,
    ) -> Result<DisconnectOutcome, EngineError> {
        let mut inner = self.lock();
        inner.total_disconnections += 1;
        if inner.remove_conn(&conn.id).is_none() {
            return Ok(DisconnectOutcome::Unknown);
        }
        let state = inner
            .users
            .get_mut(&conn.user)
            .expect("a known connection has a user");
        if !state.conns.is_empty() {
            // Its status leaves with it: the user shows the best of the others'.
            inner.reshow(&self.tx(), &conn.user, now);
            return Ok(DisconnectOutcome::StillOnline);
        }
        let mut grace_ms = grace_ms;
        if state.record.is_online() {
            (state.flap, grace_ms) = self.flap.offline(state.flap, now.as_micros(), grace_ms);
        }
        if grace_ms > 0 && state.record.is_online() {
            let deadline = now.plus_millis(grace_ms);
            state.pending_offline = Some(deadline);
            inner.pending.insert(conn.user.clone());
            return Ok(DisconnectOutcome::Pending { deadline });
        }
        Ok(match inner.go_offline(&self.tx(), &conn.user, now) {
            Some(p) => DisconnectOutcome::Offline(p),
            None => DisconnectOutcome::StillOnline,
        })
    }

    async fn settle(&self, user: &UserId, now: Timestamp) -> Result<Option<Presence>, EngineError> {
        let mut inner = self.lock();
        let due = inner
            .users
            .get(user)
            .and_then(|s| s.pending_offline)
            .is_some_and(|deadline| deadline <= now);
        Ok(if due {
            inner.go_offline(&self.tx(), user, now)
        } else {
            None
        })
    }

    async fn sweep(&self, timeout_ms: u64, now: Timestamp) -> Result<SweepReport, EngineError> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let cutoff = Timestamp(now.as_micros() - (timeout_ms as i64) * 1000);
        let stale: Vec<ConnId> = inner
            .conns
            .iter()
            .filter(|(_, c)| c.last_heard < cutoff)
            .map(|(id, _)| id.clone())
            .collect();
        let mut report = SweepReport::default();
        let mut orphaned = Vec::new();
        let mut left = HashSet::new();
        for id in &stale {
            if let Some(user) = inner.remove_conn(id) {
                report.swept += 1;
                left.insert(user);
            }
        }
        for user in left {
            if inner.users[&user].conns.is_empty() {
                orphaned.push(user);
            } else {
                // What the silent ones set went with them.
                inner.reshow(&self.tx(), &user, now);
            }
        }
        // Silence is its own grace: the user goes offline at once.
        for user in orphaned {
            if inner.go_offline(&self.tx(), &user, now).is_some() {
                report.went_offline += 1;
            }
        }
        let due: Vec<UserId> = inner
            .pending
            .iter()
            .filter(|u| {
                inner
                    .users
                    .get(*u)
                    .and_then(|s| s.pending_offline)
                    .is_some_and(|d| d <= now)
            })
            .cloned()
            .collect();
        for user in due {
            if inner.go_offline(&self.tx(), &user, now).is_some() {
                report.went_offline += 1;
            }
        }
        let forget_before = Timestamp(now.as_micros() - (OFFLINE_RETENTION_MS as i64) * 1000);
        inner.users.retain(|_, s| {
            s.record.is_online()
                || !s.conns.is_empty()
                || !s.record.privacy.is_default()
                || s.record.last_seen.is_none_or(|t| t >= forget_before)
        });
        inner.total_swept += report.swept;
        inner.last_sweep_at = Some(now);
        Ok(report)
    }

    async fn get(&self, users: &[UserId]) -> Result<Vec<Option<Presence>>, EngineError> {
        let inner = self.lock();
        Ok(users
            .iter()
            .map(|u| inner.users.get(u).map(|s| s.record.to_presence(u.clone())))
            .collect())
    }

    async fn list_online(
        &self,
        filter: &ListFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<OnlinePage, EngineError> {
        let after = match cursor {
            None => None,
            Some(c) => {
                let raw = B64.decode(c).map_err(|_| EngineError::BadCursor)?;
                let s = String::from_utf8(raw).map_err(|_| EngineError::BadCursor)?;
                Some(UserId::parse(&s).map_err(|_| EngineError::BadCursor)?)
            }
        };
        let lower = match &after {
            Some(u) => Bound::Excluded(u),
            None => Bound::Unbounded,
        };
        let inner = self.lock();
        // Take up to limit+1 from each admitted gender's ordered set, then merge: O(limit)
        // per page whatever the mix of genders, where filtering one big set would not be.
        let mut ids: Vec<&UserId> = Vec::new();
        for g in filter.genders.iter() {
            ids.extend(
                inner.online[g.index()]
                    .range::<UserId, _>((lower, Bound::Unbounded))
                    .take(limit + 1),
            );
        }
        if let Some(me) = &filter.include {
            let online = inner.users.get(me).is_some_and(|s| s.record.is_online());
            if online && after.as_ref().is_none_or(|a| me > a) {
                ids.push(me);
            }
        }
        ids.sort();
        ids.dedup();
        let more = ids.len() > limit;
        ids.truncate(limit);
        let next_cursor = if more {
            ids.last().map(|u| B64.encode(u.as_str()))
        } else {
            None
        };
        let users = ids
            .into_iter()
            .map(|u| inner.users[u].record.to_presence(u.clone()))
            .collect();
        Ok(OnlinePage { users, next_cursor })
    }

    async fn stats(&self) -> Result<ClusterStats, EngineError> {
        let inner = self.lock();
        Ok(ClusterStats {
            online_users: inner.online_users(),
            peak_online: inner.peak_online,
            online_by_gender: [0, 1, 2].map(|i| inner.online[i].len() as u64),
            total_connections: inner.total_connections,
            total_disconnections: inner.total_disconnections,
            total_swept: inner.total_swept,
            last_sweep_at: inner.last_sweep_at,
            nodes: 1,
            // A full count: invisible users are few, and stats are read about once a second.
            invisible_users: inner
                .users
                .values()
                .filter(|s| s.record.privacy.invisible)
                .count() as u64,
        })
    }

    fn subscribe_resyncs(&self) -> broadcast::Receiver<super::Resync> {
        self.resyncs.subscribe()
    }

    fn subscribe(&self) -> broadcast::Receiver<PresenceEvent> {
        self.events.subscribe()
    }

    async fn publish(&self, topic: Topic, payload: String) -> Result<(), EngineError> {
        let _ = self.topics[topic.index()].send(Arc::from(payload));
        Ok(())
    }

    fn subscribe_topic(&self, topic: Topic) -> broadcast::Receiver<Arc<str>> {
        self.topics[topic.index()].subscribe()
    }

    async fn report_replica(
        &self,
        report: Option<String>,
        now: Timestamp,
    ) -> Result<(), EngineError> {
        *self.report.lock().unwrap_or_else(|e| e.into_inner()) = report.map(|r| (now, r));
        Ok(())
    }

    async fn replicas(
        &self,
        max_age_ms: u64,
        now: Timestamp,
    ) -> Result<Vec<(String, String)>, EngineError> {
        let mut report = self.report.lock().unwrap_or_else(|e| e.into_inner());
        if report
            .as_ref()
            .is_some_and(|(at, _)| now.micros_since(*at) > max_age_ms * 1000)
        {
            *report = None;
        }
        Ok(report
            .iter()
            .map(|(_, r)| (self.node.to_string(), r.clone()))
            .collect())
    }

    async fn ready(&self) -> bool {
        true
    }

    async fn ping(&self) -> Result<(), EngineError> {
        Ok(())
    }

    fn is_shared(&self) -> bool {
        false
    }

    fn block_store(&self) -> &dyn BlockStore {
        &self.blocks
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}
