//! Batched "heard from" writes: one engine call per replica per short interval, however many
//! clients spoke, instead of a round trip per heartbeat.
//!
//! A handle enters the batch on the first event after the previous flush and leaves it at
//! the flush, which writes its latest `last_heard`. Connections the engine no longer knows
//! (swept while silent, now speaking again) are revived, which brings their user back online.

use super::connection::ConnHandle;
use crate::domain::Timestamp;
use crate::engine::Touch;
use crate::state::AppState;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Flush often enough that a sweep never mistakes a batched heartbeat for silence: well
/// under the heartbeat timeout, and at most every half second.
pub fn flush_interval(heartbeat_timeout_ms: u64) -> Duration {
    Duration::from_millis((heartbeat_timeout_ms / 8).clamp(10, 500))
}

pub async fn flush(state: &AppState) {
    let handles = state.gateway.heartbeats.take();
    if handles.is_empty() {
        return;
    }
    let touches: Vec<Touch> = handles
        .iter()
        .map(|h| {
            // Leave the batch before reading the time: an event after this re-queues.
            h.dequeue();
            Touch {
                conn: h.conn.id.clone(),
                user: h.conn.user.clone(),
                heard_at: h.last_heard(),
            }
        })
        .collect();
    match state.engine.touch(&touches, Timestamp::now()).await {
        Ok(missing) if missing.is_empty() => {}
        Ok(missing) => {
            let by_id: HashMap<&str, &Arc<ConnHandle>> =
                handles.iter().map(|h| (&*h.conn.id, h)).collect();
            for id in missing {
                if let Some(h) = by_id.get(&*id) {
                    revive(state, (*h).clone());
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, n = handles.len(), "heartbeats not written; retrying next flush");
            for h in handles {
                if h.heard(h.last_heard()) {
                    state.gateway.heartbeats.push(h);
                }
            }
        }
    }
}

fn revive(state: &AppState, h: Arc<ConnHandle>) {
    let state2 = state.clone();
    state.background.tasks.spawn(async move {
        // Restore rather than revive: if the store lost the user's record (it came back
        // empty), it is re-created as this replica last saw it, unannounced; and the
        // connection takes back the status it set (it is the same connection, and its client
        // still shows that status).
        let last = h.last_known();
        let mine = h.own_status();
        let r = h
            .while_open(
                state2
                    .engine
                    .restore(&h.conn, last.as_ref(), &mine, h.last_heard()),
            )
            .await;
        if let Some(Ok(p)) = &r {
            h.remember(p);
        }
        if let Some(Err(e)) = r {
            tracing::warn!(error = %e, conn = %h.conn.id, "could not revive a connection");
        }
    });
}

/// Queue every local connection for the next flush: after the store was unreachable, the
/// flush finds the connections it lost and restores them.
pub fn requeue_all(state: &AppState) {
    for h in state.gateway.sockets.snapshot() {
        if h.heard(h.last_heard()) {
            state.gateway.heartbeats.push(h);
        }
    }
}

pub async fn run(state: AppState) {
    let mut tick = crate::background::ticker(flush_interval(state.config.heartbeat_timeout_ms));
    while state.background.tick(&mut tick).await {
        flush(&state).await;
    }
    // What was heard before the stop still counts.
    flush(&state).await;
}
