//! Fan-out: every committed change, from whichever replica, to this replica's viewers.
//!
//! One task per replica reads the engine's change stream, encodes each change once, and
//! queues it on every local socket allowed to see the user ([`Viewers`](super::viewers):
//! its audiences, plus the user's own sockets when needed). Emitting only locally is what
//! keeps a cluster from delivering twice: every replica receives every change exactly once.
//!
//! A socket whose queue is full (a slow reader, or a burst such as N viewers connecting at
//! once and each receiving N announcements) does not lose the change: it is *conflated* into
//! the socket's backlog, newest per user, and delivered as soon as the queue has room. A
//! socket with a backlog gets new changes through the backlog too, so it converges on the
//! latest state of every user it may see, with memory bounded per socket.

use super::connection::{BACKLOG_MAX, Pending};
use super::viewers::Viewer;
use crate::domain::Timestamp;
use crate::engine::PresenceEvent;
use crate::state::AppState;
use socketioxide::socket::Sid;
use socketioxide::{SendError, SocketError};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast::{Receiver, error::RecvError};

/// How often backlogs are retried.
const BACKLOG_RETRY: Duration = Duration::from_millis(25);

/// The sockets that have a backlog.
#[derive(Default)]
pub struct Backlogged(Mutex<HashSet<Sid>>);

impl Backlogged {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<Sid>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

enum Sent {
    Now,
    Deferred,
    Gone,
}

/// How long after our handshake middleware a socket may still be waiting for the library to
/// complete its namespace connect (it is joined to [`Viewers`](super::viewers) by the
/// middleware, and the library marks it connected only afterwards). Past this, a socket that
/// refuses updates as closed never completed its connect, and no disconnect will be reported.
const HANDSHAKE_LIMIT_US: u64 = 30_000_000;

/// Whether an update the socket refused as closed should wait for it: yes while its
/// handshake may still complete (what a client is sent right after connecting must not be
/// lost), no once it has ended.
fn waits_for_connect(v: &Viewer) -> bool {
    !v.socket.connected()
        && Timestamp::now().micros_since(v.handle.connected_at) < HANDSHAKE_LIMIT_US
}

/// Queue one update on one socket, or defer it.
fn offer(state: &AppState, v: &Viewer, user: &crate::domain::UserId, p: &Pending) -> Sent {
    let h = &v.handle;
    if !h.has_backlog() {
        match v.socket.emit("presence-update", &*p.payload) {
            Ok(()) => return Sent::Now,
            Err(SendError::Socket(SocketError::InternalChannelFull)) => {}
            Err(SendError::Socket(SocketError::Closed)) if waits_for_connect(v) => {}
            Err(_) => return Sent::Gone,
        }
    }
    if h.defer(user, p.clone()) {
        state.backlogged.lock().insert(h.sid);
        state.metrics.deferred.increment(1);
    } else {
        state.metrics.dropped.increment(1);
        tracing::warn!(sid = %h.sid, max = BACKLOG_MAX, "socket backlog full; update dropped");
    }
    Sent::Deferred
}

pub async fn run(state: AppState, mut rx: Receiver<PresenceEvent>) {
    loop {
        let event = tokio::select! {
            _ = state.stop.cancelled() => break,
            r = rx.recv() => r,
        };
        match event {
            Ok(ev) => deliver(&state, ev).await,
            Err(RecvError::Lagged(n)) => {
                state.metrics.lagged.increment(n);
                tracing::warn!(
                    missed = n,
                    "fan-out fell behind; some viewers missed presence updates"
                );
            }
            Err(RecvError::Closed) => break,
        }
    }
}

async fn deliver(state: &AppState, ev: PresenceEvent) {
    let policy = state.config.visibility_policy;
    let p = &ev.presence;
    if ev.origin == state.metrics.node {
        state.metrics.published.increment(1);
    }
    let payload = match serde_json::value::to_raw_value(p) {
        Ok(raw) => Arc::from(raw),
        Err(e) => {
            tracing::error!(error = %e, "presence not encodable");
            return;
        }
    };
    let pending = Pending {
        version: p.version,
        payload,
    };
    let mut sent = 0u64;
    for v in state.viewers.for_change(policy, &p.user_id, p.gender) {
        v.handle.remember(p);
        match offer(state, &v, &p.user_id, &pending) {
            Sent::Now => sent += 1,
            Sent::Deferred => {}
            // Closed for good: its disconnect takes it out too, if the library reports one
            // (it does not for a connect that never completed).
            Sent::Gone => state.viewers.leave(&v.handle),
        }
    }
    state.metrics.delivered.increment(sent);
    let latency = Timestamp::now().micros_since(ev.committed_at) as f64 / 1e6;
    state.metrics.fanout_latency.record(latency);
}

/// Deliver backlogs as their sockets' queues drain.
pub async fn run_backlogs(state: AppState) {
    let mut tick = crate::state::ticker(BACKLOG_RETRY);
    while state.tick(&mut tick).await {
        let sids: Vec<Sid> = state.backlogged.lock().iter().copied().collect();
        let per_tick = (state.config.socket_queue_packets / 2).max(1);
        for sid in sids {
            let Some(v) = state.viewers.get(sid) else {
                state.backlogged.lock().remove(&sid);
                continue;
            };
            let h = &v.handle;
            let mut sent = 0u64;
            let mut waiting = h.take_backlog().into_iter();
            // At most half a queue per tick: a client that keeps up at all then finds room for
            // the acks of its own requests, which share the queue.
            for (user, p) in waiting.by_ref().take(per_tick) {
                match v.socket.emit("presence-update", &*p.payload) {
                    Ok(()) => sent += 1,
                    Err(SendError::Socket(SocketError::InternalChannelFull)) => {
                        h.defer(&user, p);
                        break;
                    }
                    Err(SendError::Socket(SocketError::Closed)) if waits_for_connect(&v) => {
                        h.defer(&user, p);
                        break;
                    }
                    Err(_) => {
                        state.viewers.leave(h);
                        break;
                    }
                }
            }
            // Still no room: keep the rest (a newer change deferred meanwhile wins).
            for (user, p) in waiting {
                h.defer(&user, p);
            }
            state.metrics.delivered.increment(sent);
            let mut set = state.backlogged.lock();
            if !h.has_backlog() {
                set.remove(&sid);
            }
        }
    }
}
