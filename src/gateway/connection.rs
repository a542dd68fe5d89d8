//! Per-socket state, and this replica's registry of sockets.

use super::ratelimit::TokenBucket;
use crate::auth::Identity;
use crate::domain::{Audience, Timestamp, UserId};
use crate::engine::Connection;
use socketioxide::socket::Sid;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// How a `/` socket receives changes (section 9): of everyone it may see (broadcast) or only
/// of the users it subscribed to and its own; one `presence-update` each, or gathered into
/// `presence-batch`es.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mode {
    pub subscriptions: bool,
    pub batch: bool,
}

/// Users one `presence-batch` holds at most.
pub const BATCH_MAX: usize = 500;

/// What this replica knows about one `/` socket. Stored in the socket's extensions and in
/// the [`SocketRegistry`]; it holds no reference back to the socket, so nothing cycles.
pub struct ConnHandle {
    pub conn: Connection,
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
    /// The ids a subscription socket subscribed to (its own user is delivered regardless).
    subscribed: Mutex<HashSet<UserId>>,
    /// The order of this socket's state-changing requests (see [`Turns`]).
    pub turns: Turns,
    /// The latest presence of this socket's own user that this replica saw: what to restore
    /// if the shared store comes back without it.
    last_known: Mutex<Option<crate::domain::Presence>>,
}

/// An encoded `presence-update`, shared by every socket it is sent to.
pub type Encoded = Arc<serde_json::value::RawValue>;

#[derive(Clone)]
pub struct Pending {
    pub version: i64,
    /// The change's place in this replica's fan-out order: an outbox sends in this order.
    pub seq: u64,
    pub payload: Encoded,
}

#[derive(Default)]
struct Outbox {
    pending: HashMap<UserId, Pending>,
    /// When the oldest change waiting joined (a batch is due `PRESENCE_BATCH_MS` after).
    since: Option<Instant>,
}

/// Users a socket's backlog may hold. Each entry shares its payload with every other
/// socket, so an entry costs a map slot (~100 bytes): ~6 MiB at the bound. A socket this far
/// behind is also one socketioxide closes at its next ping (its queue stays full), after which
/// the client reconnects and refreshes.
pub const BACKLOG_MAX: usize = 65_536;

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
            conn,
            sid,
            identity,
            audience,
            mode,
            connected_at: now,
            last_heard: AtomicI64::new(now.as_micros()),
            queued: AtomicBool::new(false),
            opened: AtomicBool::new(false),
            gate: tokio::sync::Mutex::new(false),
            bucket: Mutex::new(bucket),
            backlog: Mutex::new(Outbox::default()),
            subscribed: Mutex::new(HashSet::new()),
            turns: Turns::default(),
            last_known: Mutex::new(None),
        }
    }

    /// Remember `p` if it is this socket's user and newer than what is remembered.
    pub fn remember(&self, p: &crate::domain::Presence) {
        if p.user_id != self.conn.user {
            return;
        }
        let mut k = self.last_known.lock().unwrap_or_else(|e| e.into_inner());
        if k.as_ref().is_none_or(|old| p.version > old.version) {
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
        !self.backlog().pending.is_empty()
    }

    pub fn backlog_len(&self) -> usize {
        self.backlog().pending.len()
    }

    pub fn clear_backlog(&self) {
        let mut b = self.backlog();
        b.pending.clear();
        b.since = None;
    }

    /// Keep `p` for later, in place of an older change of that user (at the new change's
    /// place). Returns false when the outbox is full (the update is dropped).
    pub fn defer(&self, user: &UserId, p: Pending) -> bool {
        let mut b = self.backlog();
        let full = b.pending.len() >= BACKLOG_MAX;
        if b.since.is_none() {
            b.since = Some(Instant::now());
        }
        match b.pending.get_mut(user) {
            Some(old) => {
                if p.version > old.version {
                    *old = p;
                }
                true
            }
            None if full => false,
            None => {
                b.pending.insert(user.clone(), p);
                true
            }
        }
    }

    /// When the oldest change in the outbox joined it.
    pub fn waiting_since(&self) -> Option<Instant> {
        self.backlog().since
    }

    /// Offer what waits, in change order, to `send` until it has taken `max` or refuses one;
    /// returns how many it took. Runs under the outbox's lock, so a change deferred meanwhile
    /// waits behind these (and a direct emit, which only happens while the outbox is empty,
    /// can never overtake an older change of the same user).
    pub fn drain(&self, max: usize, mut send: impl FnMut(&Pending) -> bool) -> u64 {
        let mut b = self.backlog();
        let order = in_change_order(&b.pending, max);
        let mut sent = 0;
        for user in order {
            if !send(&b.pending[&user]) {
                break;
            }
            b.pending.remove(&user);
            sent += 1;
        }
        if b.pending.is_empty() {
            b.since = None;
        }
        sent
    }

    /// Offer the oldest [`BATCH_MAX`] waiting, in change order, to `send` as one batch; they
    /// leave the outbox only if it takes them. Returns how many it took.
    pub fn drain_batch(&self, send: impl FnOnce(&[&Pending]) -> bool) -> u64 {
        let mut b = self.backlog();
        let order = in_change_order(&b.pending, BATCH_MAX);
        let batch: Vec<&Pending> = order.iter().map(|u| &b.pending[u]).collect();
        if batch.is_empty() || !send(&batch) {
            return 0;
        }
        for u in &order {
            b.pending.remove(u);
        }
        // What is left (a batch was full) is due at once.
        if b.pending.is_empty() {
            b.since = None;
        }
        order.len() as u64
    }

    /// The ids subscribed to (not counting the socket's own user).
    pub fn subscriptions(&self) -> std::sync::MutexGuard<'_, HashSet<UserId>> {
        self.subscribed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The library completed this socket's connect (see `opened`).
    pub fn open(&self) {
        self.opened.store(true, Ordering::Release);
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
        self.bucket
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .try_take()
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

/// A socket's state-changing requests (`presence:set-status`, `presence:subscribe`,
/// `presence:unsubscribe`) take effect in the order the client sent them. socketioxide runs
/// each event's handler as a task of its own, so two requests sent back to back may start in
/// either order: "live" then "online" could leave the user live. A ticket is taken while the
/// packet is read (in order: `gateway::events::Turn`, an extractor), and the handler waits for
/// its ticket's turn before it acts.
#[derive(Default)]
pub struct Turns {
    next: std::sync::atomic::AtomicU64,
    serving: std::sync::atomic::AtomicU64,
    changed: tokio::sync::Notify,
}

impl Turns {
    /// The next place in line (call in packet order).
    pub fn take(&self) -> u64 {
        self.next.fetch_add(1, Ordering::AcqRel)
    }

    /// Wait for `ticket`'s turn; the turn passes to the next ticket when the guard drops
    /// (also if the handler panics or is dropped).
    pub async fn wait(&self, ticket: u64) -> TurnGuard<'_> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.serving.load(Ordering::Acquire) == ticket {
                return TurnGuard(self);
            }
            changed.await;
        }
    }
}

pub struct TurnGuard<'a>(&'a Turns);

impl Drop for TurnGuard<'_> {
    fn drop(&mut self) {
        self.0.serving.fetch_add(1, Ordering::AcqRel);
        self.0.changed.notify_waiters();
    }
}

/// The users of `pending` with the `max` earliest changes, earliest first.
fn in_change_order(pending: &HashMap<UserId, Pending>, max: usize) -> Vec<UserId> {
    let mut order: Vec<(u64, &UserId)> = pending.iter().map(|(u, p)| (p.seq, u)).collect();
    if order.len() > max {
        order.select_nth_unstable_by_key(max, |(seq, _)| *seq);
        order.truncate(max);
    }
    order.sort_unstable_by_key(|(seq, _)| *seq);
    order.into_iter().map(|(_, u)| u.clone()).collect()
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

    /// A change whose place in the fan-out order is its version (as for one replica's clock).
    fn pending(version: i64) -> Pending {
        Pending {
            version,
            seq: version as u64,
            payload: Arc::from(serde_json::value::to_raw_value(&version).unwrap()),
        }
    }

    fn uid(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_act_in_the_order_their_tickets_were_taken_whatever_order_they_start_in() {
        let h = Arc::new(handle());
        let tickets: Vec<u64> = (0..50).map(|_| h.turns.take()).collect();
        let order = Arc::new(Mutex::new(Vec::new()));
        // Started in reverse: each must still act in ticket order.
        let tasks: Vec<_> = tickets
            .into_iter()
            .rev()
            .map(|t| {
                let (h, order) = (h.clone(), order.clone());
                tokio::spawn(async move {
                    let _turn = h.turns.wait(t).await;
                    tokio::task::yield_now().await;
                    order.lock().unwrap().push(t);
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), (0..50).collect::<Vec<u64>>());
    }

    #[tokio::test]
    async fn a_turn_whose_handler_panics_still_passes_on() {
        let h = Arc::new(handle());
        let (a, b) = (h.turns.take(), h.turns.take());
        let h2 = h.clone();
        let r = tokio::spawn(async move {
            let _turn = h2.turns.wait(a).await;
            panic!("a handler fails");
        })
        .await;
        assert!(r.is_err());
        tokio::time::timeout(std::time::Duration::from_secs(1), h.turns.wait(b))
            .await
            .expect("the next request is not stuck behind the failed one");
    }

    #[test]
    fn a_batch_holds_each_user_once_newest_at_the_place_of_the_latest_change() {
        let h = handle();
        h.defer(&uid("a"), pending(1));
        h.defer(&uid("b"), pending(2));
        h.defer(&uid("a"), pending(3));
        h.defer(&uid("c"), pending(4));
        let mut frame = Vec::new();
        assert_eq!(
            h.drain_batch(|b| {
                frame = b.iter().map(|p| p.version).collect();
                true
            }),
            3
        );
        assert_eq!(frame, [2, 3, 4], "b, then a (its latest change), then c");
        assert!(!h.has_backlog() && h.waiting_since().is_none());
    }

    #[test]
    fn a_batch_refused_for_want_of_room_stays_whole_and_merges_newer_changes() {
        let h = handle();
        h.defer(&uid("a"), pending(1));
        h.defer(&uid("b"), pending(2));
        let since = h.waiting_since();
        assert_eq!(h.drain_batch(|_| false), 0);
        h.defer(&uid("a"), pending(3));
        assert_eq!(
            h.waiting_since(),
            since,
            "due when the oldest change joined"
        );
        let mut frame = Vec::new();
        h.drain_batch(|b| {
            frame = b.iter().map(|p| p.version).collect();
            true
        });
        assert_eq!(frame, [2, 3]);
    }

    #[test]
    fn a_batch_carries_at_most_500_users_the_oldest_first_and_the_rest_is_due_at_once() {
        let h = handle();
        for i in 0..1200 {
            h.defer(&uid(&format!("u{i}")), pending(1200 - i));
        }
        let mut first = Vec::new();
        assert_eq!(
            h.drain_batch(|b| {
                first = b.iter().map(|p| p.version).collect();
                true
            }),
            BATCH_MAX as u64
        );
        assert_eq!(first, (1..=500).collect::<Vec<i64>>());
        assert!(h.waiting_since().is_some(), "700 left, still due");
        assert_eq!(h.drain_batch(|_| true), 500);
        assert_eq!(h.drain_batch(|_| true), 200);
        assert!(h.waiting_since().is_none());
    }

    #[test]
    fn the_backlog_keeps_the_newest_change_per_user_oldest_first() {
        let h = handle();
        let (a, b) = (UserId::parse("a").unwrap(), UserId::parse("b").unwrap());
        assert!(h.defer(&a, pending(5)));
        assert!(h.defer(&b, pending(3)));
        assert!(
            h.defer(&a, pending(4)),
            "an older change never replaces a newer one"
        );
        assert!(h.defer(&a, pending(7)));
        let mut got = Vec::new();
        let mut take = |p: &Pending| {
            got.push(p.version);
            true
        };
        assert_eq!(h.drain(10, &mut take), 2);
        assert_eq!(got, [3, 7]);
        assert!(!h.has_backlog());
    }

    #[test]
    fn a_refused_drain_keeps_the_rest_in_order() {
        let h = handle();
        for (u, v) in [("a", 1), ("b", 2), ("c", 3)] {
            h.defer(&UserId::parse(u).unwrap(), pending(v));
        }
        let mut room = 1;
        let sent = h.drain(10, |_| {
            room -= 1;
            room >= 0
        });
        assert_eq!(sent, 1);
        let mut rest = Vec::new();
        h.drain(10, |p| {
            rest.push(p.version);
            true
        });
        assert_eq!(rest, [2, 3]);
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
}
