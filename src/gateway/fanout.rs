//! Fan-out: every committed change, from whichever replica, to this replica's viewers.
//!
//! One task per replica reads the engine's change stream and emits each change once per
//! room set (the audiences allowed to see the user, plus the user's own room when needed);
//! socketioxide encodes it once and queues it on each socket. Emitting only locally is what
//! keeps a cluster from delivering twice: every replica receives every change exactly once.

use super::rooms;
use crate::domain::Timestamp;
use crate::engine::PresenceEvent;
use crate::state::AppState;
use tokio::sync::broadcast::{Receiver, error::RecvError};

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
    let Some(io) = state.io.get() else { return };
    let policy = state.config.visibility_policy;
    let p = &ev.presence;
    if ev.origin == state.metrics.node {
        state.metrics.published.increment(1);
    }
    let to = rooms::for_change(policy, &p.user_id, p.gender);
    // A full socket buffer drops the packet for that socket only (see the README on slow
    // readers); nothing here can block on a slow client.
    if let Err(e) = io.to(to).emit("presence-update", p).await {
        tracing::debug!(error = %e, "presence-update not queued on some sockets");
    }
    let own = policy.self_delivery_needed(p.gender).then_some(&p.user_id);
    state
        .metrics
        .delivered
        .increment(state.sockets.reach(policy.audiences_for(p.gender), own));
    let latency = Timestamp::now().micros_since(ev.committed_at) as f64 / 1e6;
    state.metrics.fanout_latency.record(latency);
}
