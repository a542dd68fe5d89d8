//! Webhooks to the app's backend (CONTRACT §12): each committed presence change this replica
//! made becomes a `user.online`, `user.offline` or `user.status` event, held back by the
//! offline delay ([`crate::domain::webhook::Delay`]), then POSTed in signed batches, retried
//! with growing delays while the receiver fails, in order.
//!
//! The queue is this process's ([`queue::Queue`], bounded by `WEBHOOK_QUEUE_MAX`): it lives
//! as long as the replica does. One sender per replica sends its batches one at a time, so a
//! user's events reach the receiver in version order.

pub mod queue;
pub mod sender;
pub mod stats;
pub mod stream;

use crate::domain::webhook::{Change, Kind, WebhookSettings};
use crate::domain::{Presence, Timestamp};
use crate::state::AppState;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use tokio::sync::mpsc::UnboundedReceiver;

/// One event as the receiver gets it, with what the sender needs to know about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// `{"id","type","at","presence"}`, serialised once: a resend is the same bytes, and a
    /// request's body is these joined.
    pub json: String,
    /// When the change was committed (the latency histogram's start; the max age's).
    pub committed_at: Timestamp,
    /// Its entry in the store's queue (bucket, id), to take off once done with.
    pub ack: Option<(u32, String)>,
}

/// The event a committed change makes, if the deployment sends that type: its `id` is the
/// user and the change's version, unique and the same on every resend.
pub fn event_of(
    settings: &WebhookSettings,
    was_online: bool,
    p: &Presence,
    committed_at: Timestamp,
    ack: Option<(u32, String)>,
) -> Option<Change<Event>> {
    let Some(kind) = Kind::of_change(was_online, p) else {
        crate::metrics::webhook_unsent("no_event", 1);
        return None;
    };
    // The delay needs offlines and onlines even when only one of them is sent: a flap
    // cancels both. Which types go out is decided when sending.
    if !settings.kinds.contains(kind) && kind == Kind::Status {
        crate::metrics::webhook_unsent("type", 1);
        return None;
    }
    /// The event as the receiver reads it, serialised without a JSON tree in between.
    #[derive(serde::Serialize)]
    struct Wire<'a> {
        id: String,
        #[serde(rename = "type")]
        kind: &'static str,
        at: Timestamp,
        presence: &'a Presence,
    }
    let json = serde_json::to_string(&Wire {
        id: format!("{}@{}", p.user_id, p.version),
        kind: kind.as_str(),
        at: committed_at,
        presence: p,
    })
    .expect("a presence serialises");
    Some(Change {
        kind,
        user: Some(p.user_id.clone()),
        at: committed_at,
        item: Event {
            json,
            committed_at,
            ack,
        },
    })
}

/// The pseudo-bucket of statistics events' acknowledgements (their seq moves the cursor).
pub const STATS_BUCKET: u32 = u32::MAX;
/// Events read ahead into this replica's queue at most, from the store's streams or from
/// PostgreSQL: while the receiver is down they wait there, not in the replica's memory.
pub const BUFFER: usize = 10_000;

/// Start the webhooks when `WEBHOOK_URL` is set: the sender, what fills its queue (the
/// store's streams when the engine keeps them, else this replica's committed changes; the
/// statistics events from PostgreSQL when asked for), and what takes sent events off.
pub fn spawn(state: &crate::state::AppState) {
    let Some(settings) = state.config.webhook.clone() else {
        return;
    };
    let sender = match sender::Sender::new(settings.clone()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "webhooks not started");
            return;
        }
    };
    crate::metrics::webhook_started();
    let (acks, acks_rx) = tokio::sync::mpsc::unbounded_channel();
    let shared = state.engine.webhook_log().is_some();
    let queue = Arc::new(queue::Queue::new(
        settings.offline_delay_ms,
        settings.kinds,
        // With a store, the streams are bounded (`stream::run`); here, the queue is.
        settings.queue_max,
        shared,
        acks,
    ));
    // Whether this replica sends the statistics events (with Redis, bucket 0's holder).
    let lead_stats = Arc::new(AtomicBool::new(!shared));
    let bg = &state.background;
    let (q, stop) = (queue.clone(), bg.stop.clone());
    bg.spawn(async move { sender.run(&q, stop).await });
    bg.spawn(take_off(state.clone(), acks_rx));
    if settings.kinds.contains(Kind::Stats)
        && let Some(db) = &state.db
    {
        bg.spawn(stats::run(
            state.clone(),
            db.clone(),
            queue.clone(),
            lead_stats.clone(),
        ));
    }
    if shared {
        let (st, q) = (state.clone(), queue.clone());
        bg.spawn(async move { stream::run(st, settings, q, lead_stats).await });
    } else {
        bg.spawn(local(state.clone(), settings, queue));
    }
}

/// The memory engine's queue: each change this replica committed, as it commits it.
async fn local(st: AppState, settings: WebhookSettings, queue: Arc<queue::Queue>) {
    use tokio::sync::broadcast::error::RecvError;
    let mut rx = st.engine.subscribe();
    let node = st.config.node_id.clone();
    loop {
        let ev = tokio::select! {
            _ = st.background.stop.cancelled() => return,
            r = rx.recv() => r,
        };
        match ev {
            Ok(ev) if *ev.origin == *node => {
                if let Some(c) = event_of(
                    &settings,
                    ev.was_online,
                    &ev.presence,
                    ev.committed_at,
                    None,
                ) {
                    queue.push(c);
                    crate::metrics::webhook_depth(queue.depth() as f64);
                }
            }
            Ok(_) => {}
            Err(RecvError::Lagged(n)) => {
                tracing::error!(missed = n, "webhook queue fell behind the change stream");
                crate::metrics::webhook_result("dropped", n);
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// Take done events off: stream entries off their streams, a bucket's at a time; statistics
/// events by moving the cursor. What the store refuses is tried again a moment later (until
/// the replica stops: then the next sender resends it, at least once).
async fn take_off(st: AppState, mut acks: UnboundedReceiver<queue::Ack>) {
    let mut waiting: HashMap<u32, Vec<String>> = HashMap::new();
    let stop = st.background.stop.clone();
    loop {
        let first = tokio::select! {
            _ = stop.cancelled() => None,
            a = acks.recv() => a,
        };
        let stopping = first.is_none();
        if !stopping {
            // A moment for more: one round trip takes them all.
            tokio::time::sleep(stream::LINGER).await;
        }
        for (b, id) in first
            .into_iter()
            .chain(std::iter::from_fn(|| acks.try_recv().ok()))
        {
            waiting.entry(b).or_default().push(id);
        }
        let mut failed = false;
        if let Some(ids) = waiting.get_mut(&STATS_BUCKET) {
            let top = ids.iter().filter_map(|i| i.parse::<i64>().ok()).max();
            let moved = match (&st.db, top) {
                (Some(db), Some(seq)) => db.advance_webhook_stats_cursor(seq).await.is_ok(),
                _ => true,
            };
            if moved {
                ids.clear();
            } else {
                failed = true;
            }
        }
        waiting.retain(|_, ids| !ids.is_empty());
        if let Some(log) = st.engine.webhook_log()
            && !waiting.is_empty()
        {
            let done: Vec<(u32, Vec<String>)> = waiting
                .iter()
                .filter(|(b, _)| **b != STATS_BUCKET)
                .map(|(b, ids)| (*b, ids.clone()))
                .collect();
            if log.take(&done).await.is_ok() {
                waiting.retain(|b, _| *b == STATS_BUCKET);
            } else {
                failed = true;
            }
        }
        waiting.retain(|_, ids| !ids.is_empty());
        if stopping {
            return;
        }
        if failed {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }
}
