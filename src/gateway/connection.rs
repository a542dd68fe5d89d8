//! Per-socket state, and this replica's registry of sockets.

use super::ratelimit::TokenBucket;
use crate::auth::Identity;
use crate::domain::{Audience, Timestamp, UserId};
use crate::engine::Connection;
use socketioxide::socket::Sid;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

/// What this replica knows about one `/` socket. Stored in the socket's extensions and in
/// the [`SocketRegistry`]; it holds no reference back to the socket, so nothing cycles.
pub struct ConnHandle {
    pub conn: Connection,
    pub sid: Sid,
    pub identity: Identity,
    pub audience: Audience,
    pub connected_at: Timestamp,
    /// When the client last sent anything (µs since the epoch).
    last_heard: AtomicI64,
    /// Whether the handle waits in the heartbeat batch already.
    queued: AtomicBool,
    /// Serialises this socket's engine writes with its close. Holds "closed": once the
    /// disconnect has gone through, no late handler (they run as separate tasks, in any
    /// order) may register the connection again. This is the stale-socket bug of the old
    /// service, closed by construction.
    gate: tokio::sync::Mutex<bool>,
    bucket: Mutex<TokenBucket>,
    /// Presence updates this socket's queue had no room for: the newest per user, waiting
    /// for room. Presence is state, not a log, so only each user's latest change matters.
    backlog: Mutex<HashMap<UserId, Pending>>,
    /// The latest presence of this socket's own user that this replica saw: what to restore
    /// if the shared store comes back without it.
    last_known: Mutex<Option<crate::domain::Presence>>,
}

/// An encoded `presence-update`, shared by every socket it is sent to.
pub type Encoded = Arc<serde_json::value::RawValue>;

#[derive(Clone)]
pub struct Pending {
    pub version: i64,
    pub payload: Encoded,
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
        now: Timestamp,
        rate: (u32, u32),
    ) -> Self {
        ConnHandle {
            conn,
            sid,
            identity,
            audience,
            connected_at: now,
            last_heard: AtomicI64::new(now.as_micros()),
            queued: AtomicBool::new(false),
            gate: tokio::sync::Mutex::new(false),
            bucket: Mutex::new(TokenBucket::new(rate.0, rate.1)),
            backlog: Mutex::new(HashMap::new()),
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

    fn backlog(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, Pending>> {
        self.backlog.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn has_backlog(&self) -> bool {
        !self.backlog().is_empty()
    }

    /// Keep `p` for later, unless a newer change of that user waits already. Returns false
    /// when the backlog is full (the update is dropped).
    pub fn defer(&self, user: &UserId, p: Pending) -> bool {
        let mut b = self.backlog();
        let full = b.len() >= BACKLOG_MAX;
        match b.get_mut(user) {
            Some(old) => {
                if p.version > old.version {
                    *old = p;
                }
                true
            }
            None if full => false,
            None => {
                b.insert(user.clone(), p);
                true
            }
        }
    }

    /// Everything waiting, oldest change first.
    pub fn take_backlog(&self) -> Vec<(UserId, Pending)> {
        let mut v: Vec<_> = self.backlog().drain().collect();
        v.sort_by_key(|(_, p)| p.version);
        v
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
        r.sockets.insert(h.sid, h);
    }

    pub fn remove(&self, sid: Sid) -> Option<Arc<ConnHandle>> {
        let mut r = self.lock();
        let h = r.sockets.remove(&sid)?;
        if let Some(n) = r.per_user.get_mut(&h.conn.user) {
            *n -= 1;
            if *n == 0 {
                r.per_user.remove(&h.conn.user);
            }
        }
        r.per_audience[audience_index(h.audience)] -= 1;
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
            Timestamp(0),
            (0, 0),
        )
    }

    fn pending(version: i64) -> Pending {
        Pending {
            version,
            payload: Arc::from(serde_json::value::to_raw_value(&version).unwrap()),
        }
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
        let got: Vec<(String, i64)> = h
            .take_backlog()
            .into_iter()
            .map(|(u, p)| (u.to_string(), p.version))
            .collect();
        assert_eq!(got, [("b".to_string(), 3), ("a".to_string(), 7)]);
        assert!(!h.has_backlog());
    }
}
