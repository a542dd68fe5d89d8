//! Per-socket state, and this replica's registry of sockets.

use super::ratelimit::TokenBucket;
use crate::auth::Identity;
use crate::domain::{Audience, Timestamp, UserId};
use crate::engine::Connection;
use crate::wire::Route;
use socketioxide::socket::Sid;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

pub use super::outbox::{BACKLOG_MAX, BATCH_MAX, Encoded, Mailbox, Outbox, Pending};
pub use super::turns::Turns;

/// How a `/` socket receives changes (section 9): of everyone it may see (broadcast) or only
/// of the users it subscribed to and its own; one `presence-update` each, or gathered into
/// `presence-batch`es.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mode {
    pub subscriptions: bool,
    pub batch: bool,
}

/// A socket's id as shown outside the process (admin API, debug views, logs, the connection
/// ids kept in the engine). The Socket.IO socket id is its Engine.IO session id, a credential:
/// whoever holds it can poll, post to or close that session. So it never leaves the process;
/// this keyed hash of it (a key drawn at start-up) names the socket instead, stable for its
/// life and meaningless to anyone else.
///
/// Unique per socket, not per session id: a session that leaves `/` and joins again gets a new
/// one, so the old socket's close, recorded in the background, can never remove the new
/// socket's connection from the engine.
pub fn public_id(sid: Sid) -> String {
    static KEY: OnceLock<std::hash::RandomState> = OnceLock::new();
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let h = std::hash::BuildHasher::hash_one(
        KEY.get_or_init(std::hash::RandomState::new),
        (sid.as_str(), n),
    );
    format!("{h:016x}")
}

/// What this replica knows about one `/` socket. Stored in the socket's extensions and in
/// the [`SocketRegistry`]; it holds no reference back to the socket, so nothing cycles.
pub struct ConnHandle {
    pub conn: Connection,
    /// Its user's key for the fan-out's block check ([`super::hidden::key_of`]).
    pub user_key: u64,
    pub sid: Sid,
    pub identity: Identity,
    pub audience: Audience,
    pub mode: Mode,
    pub connected_at: Timestamp,
    /// When the client last sent anything (µs since the epoch).
    last_heard: AtomicI64,
    /// Whether the handle waits in the heartbeat batch already.
    queued: AtomicBool,
    /// Set by our connect handler, which the library runs only after it sent CONNECT and
    /// marked the socket connected. Until then an emit refused as "closed" means "not
    /// connected yet"; afterwards it means closed. Our own flag, not the library's
    /// `connected()`: reading that a second time after the refusal races with the library
    /// setting it (see `fanout::refused_as_closed`).
    opened: AtomicBool,
    /// Told once `opened` is set (for the one waiting on it: `handshake::watch_connect`).
    opened_signal: tokio::sync::Notify,
    /// Serialises this socket's engine writes with its close. Holds "closed": once the
    /// disconnect has gone through, no late handler (they run as separate tasks, in any
    /// order) may register the connection again. This is the stale-socket bug of the old
    /// service, closed by construction.
    gate: tokio::sync::Mutex<bool>,
    /// The request budget; parked when the socket closes (see `AppState::session_budgets`).
    bucket: Mutex<TokenBucket>,
    /// The socket's outbox: presence updates not sent yet, the newest per user (presence is
    /// state, not a log, so only each user's latest change matters). One outbox, two
    /// policies: a socket that gets one `presence-update` per change keeps here only what its
    /// queue had no room for, and sends it as room comes; a batching socket keeps every change
    /// here and sends them together, in one `presence-batch`, when the batch is due.
    backlog: Mutex<Outbox>,
    /// Cut off for falling too far behind: its outbox takes nothing more. Set and read under
    /// the outbox's lock, so a fan-out that read this socket's viewer before it left adds
    /// nothing after the cut emptied it.
    cut: AtomicBool,
    /// The ids a subscription socket subscribed to (its own user is delivered regardless).
    subscribed: Mutex<HashSet<UserId>>,
    /// The order of this socket's state-changing requests (see [`Turns`]).
    pub turns: Turns,
    /// The latest presence of this socket's own user that this replica saw: what to restore
    /// if the shared store comes back without it.
    last_known: Mutex<Option<crate::domain::Presence>>,
    /// The status this connection set (section 11): restored with it when it speaks again
    /// after the store lost it (swept while silent, or Redis came back empty).
    own_status: Mutex<crate::domain::DeviceStatus>,
    /// Whether this connection's user hides their last seen (section 11): with
    /// `LAST_SEEN_RECIPROCAL` they get no one's. Kept current by their own changes.
    hides_last_seen: AtomicBool,
    /// How the socket's presence frames reach its client ([`crate::wire`]); unset, the
    /// library sends them. Shared with the handles that replace this one.
    route: OnceLock<Arc<Route>>,
}

impl ConnHandle {
    pub fn new(
        conn: Connection,
        sid: Sid,
        identity: Identity,
        audience: Audience,
        mode: Mode,
        now: Timestamp,
        bucket: TokenBucket,
    ) -> Self {
        ConnHandle {
            user_key: super::hidden::key_of(&conn.user),
            conn,
            sid,
            identity,
            audience,
            mode,
            connected_at: now,
            last_heard: AtomicI64::new(now.as_micros()),
            queued: AtomicBool::new(false),
            opened: AtomicBool::new(false),
            opened_signal: tokio::sync::Notify::new(),
            gate: tokio::sync::Mutex::new(false),
            bucket: Mutex::new(bucket),
            backlog: Mutex::new(if mode.batch {
                Outbox::newest_per_user()
            } else {
                Outbox::every_change()
            }),
            cut: AtomicBool::new(false),
            subscribed: Mutex::new(HashSet::new()),
            turns: Turns::default(),
            last_known: Mutex::new(None),
            own_status: Mutex::new(Default::default()),
            hides_last_seen: AtomicBool::new(false),
            route: OnceLock::new(),
        }
    }

    /// Whether this connection's user hides their own last seen.
    pub fn hides_last_seen(&self) -> bool {
        self.hides_last_seen.load(Ordering::Relaxed)
    }

    /// This connection set `status` (acked).
    pub fn set_own_status(&self, status: crate::domain::DeviceStatus) {
        *self.own_status.lock().unwrap_or_else(|e| e.into_inner()) = status;
    }

    pub fn own_status(&self) -> crate::domain::DeviceStatus {
        self.own_status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Send this socket's presence frames along `route` from now on.
    pub fn set_route(&self, route: Arc<Route>) {
        let _ = self.route.set(route);
    }

    /// The route of this socket's presence frames; `None`: the library sends them.
    pub fn route(&self) -> Option<&Arc<Route>> {
        self.route.get()
    }

    /// Remember `p` if it is this socket's user and newer than what is remembered.
    pub fn remember(&self, p: &crate::domain::Presence) {
        if p.user_id != self.conn.user {
            return;
        }
        let mut k = self.last_known.lock().unwrap_or_else(|e| e.into_inner());
        if k.as_ref().is_none_or(|old| p.version > old.version) {
            self.hides_last_seen.store(
                p.privacy.last_seen == crate::domain::LastSeen::Nobody,
                Ordering::Relaxed,
            );
            *k = Some(p.clone());
        }
    }

    pub fn last_known(&self) -> Option<crate::domain::Presence> {
        self.last_known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn backlog(&self) -> std::sync::MutexGuard<'_, Outbox> {
        self.backlog.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn has_backlog(&self) -> bool {
        !self.backlog().is_empty()
    }

    pub fn backlog_len(&self) -> usize {
        self.backlog().len()
    }

    /// Stop updates to this socket for good: its outbox emptied and closed under one lock.
    pub fn cut_off(&self) {
        let mut o = self.backlog();
        o.clear();
        self.cut.store(true, Ordering::Relaxed);
    }

    /// See [`Outbox::defer`]; `None`: the socket is cut off, and nothing is kept.
    pub fn defer(&self, user: &UserId, p: Pending) -> Option<bool> {
        let mut o = self.backlog();
        if self.cut.load(Ordering::Relaxed) {
            return None;
        }
        Some(o.defer(user, p))
    }

    /// A batching socket's change, into its outbox under one lock: whether it was kept (not
    /// dropped for a full outbox), whether it began a batch, and how many wait now; `None`:
    /// the socket is cut off.
    pub fn gather(&self, user: &UserId, p: Pending) -> Option<(bool, bool, usize)> {
        let mut o = self.backlog();
        if self.cut.load(Ordering::Relaxed) {
            return None;
        }
        let first = o.is_empty();
        let kept = o.defer(user, p);
        Some((kept, first, o.len()))
    }

    /// See [`Outbox::waiting_since`].
    pub fn waiting_since(&self) -> Option<Instant> {
        self.backlog().waiting_since()
    }

    /// See [`Outbox::drain`]: under this socket's lock of its outbox.
    pub fn drain(&self, max: usize, send: impl FnMut(&Pending) -> bool) -> u64 {
        self.backlog().drain(max, send)
    }

    /// See [`Outbox::drain_batch`]: under this socket's lock of its outbox.
    pub fn drain_batch(&self, send: impl FnOnce(&[&Pending]) -> bool) -> u64 {
        self.backlog().drain_batch(send)
    }

    /// The ids subscribed to (not counting the socket's own user).
    pub fn subscriptions(&self) -> std::sync::MutexGuard<'_, HashSet<UserId>> {
        self.subscribed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The library completed this socket's connect (see `opened`).
    pub fn open(&self) {
        self.opened.store(true, Ordering::Release);
        // A permit kept if nobody waits yet: the wait then ends at once.
        self.opened_signal.notify_one();
    }

    /// Until the library completed this socket's connect.
    pub async fn opened(&self) {
        if !self.is_open() {
            self.opened_signal.notified().await;
        }
    }

    pub fn is_open(&self) -> bool {
        self.opened.load(Ordering::Acquire)
    }

    pub fn last_heard(&self) -> Timestamp {
        Timestamp(self.last_heard.load(Ordering::Relaxed))
    }

    /// Record that the client spoke. Returns true when the handle must join the heartbeat
    /// batch (it was not queued yet).
    pub fn heard(&self, now: Timestamp) -> bool {
        self.last_heard
            .fetch_max(now.as_micros(), Ordering::Relaxed);
        !self.queued.swap(true, Ordering::AcqRel)
    }

    /// Leave the batch; later events queue the handle again.
    pub fn dequeue(&self) {
        self.queued.store(false, Ordering::Release);
    }

    /// The request budget as it stands (for a handle that replaces this one, or to park).
    pub fn budget(&self) -> TokenBucket {
        self.bucket
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn allow_request(&self) -> bool {
        self.charge(1)
    }

    /// Take `cost` requests from the budget (a request's price beyond the one it paid to be
    /// heard, for the ids it names); `false`, and nothing taken, if the budget is short.
    pub fn charge(&self, cost: u32) -> bool {
        self.bucket
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .try_take_n(cost)
    }

    /// Run `f` unless the socket has closed, with its close held off meanwhile.
    pub async fn while_open<F: Future>(&self, f: F) -> Option<F::Output> {
        let closed = self.gate.lock().await;
        if *closed { None } else { Some(f.await) }
    }

    /// Mark the socket closed and run `f` (the engine's disconnect) under the same gate.
    pub async fn close<F: Future>(&self, f: F) -> Option<F::Output> {
        let mut closed = self.gate.lock().await;
        if *closed {
            return None;
        }
        *closed = true;
        Some(f.await)
    }
}

/// This replica's `/` sockets, and the counts the fan-out and health need.
#[derive(Default)]
pub struct SocketRegistry {
    inner: Mutex<RegistryInner>,
}

#[derive(Default)]
struct RegistryInner {
    sockets: HashMap<Sid, Arc<ConnHandle>>,
    per_user: HashMap<UserId, u32>,
    /// Sockets per audience, indexed like [`audience_index`].
    per_audience: [u64; 2],
}

impl RegistryInner {
    fn uncount(&mut self, h: &ConnHandle) {
        if let Some(n) = self.per_user.get_mut(&h.conn.user) {
            *n -= 1;
            if *n == 0 {
                self.per_user.remove(&h.conn.user);
            }
        }
        self.per_audience[audience_index(h.audience)] -= 1;
    }
}

/// An audience as an array index (per-audience tables here and in the viewers).
pub(crate) fn audience_index(a: Audience) -> usize {
    match a {
        Audience::Everyone => 0,
        Audience::FemaleOnly => 1,
    }
}

impl SocketRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, RegistryInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn add(&self, h: Arc<ConnHandle>) {
        let mut r = self.lock();
        *r.per_user.entry(h.conn.user.clone()).or_default() += 1;
        r.per_audience[audience_index(h.audience)] += 1;
        // A namespace reconnect whose new socket registers before the old one's close ran.
        if let Some(prev) = r.sockets.insert(h.sid, h) {
            r.uncount(&prev);
        }
    }

    /// Remove `h`, if it is still the socket registered under its id. A namespace reconnect
    /// inside one Engine.IO session reuses the session's id, so a late close of the old
    /// socket must not remove the new one.
    pub fn remove(&self, h: &Arc<ConnHandle>) -> Option<Arc<ConnHandle>> {
        let mut r = self.lock();
        if !r.sockets.get(&h.sid).is_some_and(|x| Arc::ptr_eq(x, h)) {
            return None;
        }
        let h = r.sockets.remove(&h.sid)?;
        r.uncount(&h);
        Some(h)
    }

    pub fn get(&self, sid: Sid) -> Option<Arc<ConnHandle>> {
        self.lock().sockets.get(&sid).cloned()
    }

    pub fn len(&self) -> usize {
        self.lock().sockets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn users(&self) -> usize {
        self.lock().per_user.len()
    }

    pub fn snapshot(&self) -> Vec<Arc<ConnHandle>> {
        self.lock().sockets.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Role, Roles};
    use crate::domain::Gender;

    fn handle() -> ConnHandle {
        let user = UserId::parse("u").unwrap();
        let conn = Connection {
            id: "n:1".into(),
            user: user.clone(),
            gender: Gender::Other,
        };
        let identity = Identity {
            user_id: user,
            gender: None,
            name: None,
            roles: Roles::from(Role::User),
            expires_at: None,
            static_admin: false,
        };
        ConnHandle::new(
            conn,
            Sid::new(),
            identity,
            Audience::Everyone,
            Mode::default(),
            Timestamp(0),
            TokenBucket::new(0, 0),
        )
    }

    #[test]
    fn a_late_close_of_a_reused_socket_id_leaves_the_new_socket_registered() {
        let reg = SocketRegistry::default();
        let old = Arc::new(handle());
        let mut new = handle();
        new.sid = old.sid;
        let new = Arc::new(new);
        // Either order of the old socket's close and the new socket's registration.
        for close_first in [true, false] {
            reg.add(old.clone());
            if close_first {
                assert!(reg.remove(&old).is_some());
            }
            reg.add(new.clone());
            // A (late) close of the old socket must not take the new one out.
            assert!(reg.remove(&old).is_none());
            assert!(reg.get(new.sid).is_some_and(|h| Arc::ptr_eq(&h, &new)));
            assert_eq!((reg.len(), reg.users()), (1, 1));
            assert!(reg.remove(&new).is_some());
            assert_eq!((reg.len(), reg.users()), (0, 0));
        }
    }

    /// The race CI caught: a fan-out that read the viewer before the cut must not leave an
    /// update in the outbox after the cut emptied it.
    #[test]
    fn a_socket_cut_off_keeps_nothing_offered_after_the_cut() {
        use crate::gateway::outbox::Pending;
        let h = handle();
        let p = Pending {
            version: 1,
            seq: 1,
            payload: Arc::from(serde_json::value::to_raw_value(&1).unwrap()),
        };
        let u = UserId::parse("a").unwrap();
        assert_eq!(h.defer(&u, p.clone()), Some(true));
        h.cut_off();
        assert_eq!(h.backlog_len(), 0);
        assert_eq!(h.defer(&u, p.clone()), None);
        assert!(h.gather(&u, p).is_none());
        assert_eq!(h.backlog_len(), 0);
    }
}
