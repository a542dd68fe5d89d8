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
}

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
        }
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

fn audience_index(a: Audience) -> usize {
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

    /// How many sockets a change reaches: its audiences, plus the user's own sockets when
    /// they get it directly.
    pub fn reach(&self, audiences: &[Audience], user: Option<&UserId>) -> u64 {
        let r = self.lock();
        let own = user.and_then(|u| r.per_user.get(u)).copied().unwrap_or(0) as u64;
        audiences
            .iter()
            .map(|a| r.per_audience[audience_index(*a)])
            .sum::<u64>()
            + own
    }

    pub fn snapshot(&self) -> Vec<Arc<ConnHandle>> {
        self.lock().sockets.values().cloned().collect()
    }
}
