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
pub mod stream;

use crate::domain::webhook::{Change, Kind, WebhookSettings};
use crate::domain::{Presence, Timestamp};
use serde_json::{Value, json};

/// One event as the receiver gets it, with what the sender needs to know about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// `{"id","type","at","presence"}`: built once, so a resend is the same bytes.
    pub json: Value,
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
    let kind = Kind::of_change(was_online, p)?;
    // The delay needs offlines and onlines even when only one of them is sent: a flap
    // cancels both. Which types go out is decided when sending.
    if !settings.kinds.contains(kind) && kind == Kind::Status {
        return None;
    }
    let json = json!({
        "id": format!("{}@{}", p.user_id, p.version),
        "type": kind.as_str(),
        "at": committed_at,
        "presence": p,
    });
    Some(Change {
        kind,
        user: p.user_id.clone(),
        at: committed_at,
        item: Event {
            json,
            committed_at,
            ack,
        },
    })
}

/// Start the webhooks when `WEBHOOK_URL` is set: the sender, and what fills its queue (the
/// store's streams when the engine keeps them, else this replica's committed changes).
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
    let (acks, acks_rx) = tokio::sync::mpsc::unbounded_channel();
    let shared = state.engine.webhook_log().is_some();
    let queue = std::sync::Arc::new(queue::Queue::new(
        settings.offline_delay_ms,
        settings.kinds,
        // In the store, the streams are bounded (`stream::run`); here, the queue is.
        if shared {
            usize::MAX
        } else {
            settings.queue_max
        },
        shared.then_some(acks),
    ));
    let bg = &state.background;
    let (q, stop) = (queue.clone(), bg.stop.clone());
    bg.spawn(async move { sender.run(&q, stop).await });
    if shared {
        let (st, q) = (state.clone(), queue.clone());
        bg.spawn(async move { stream::run(st, settings, q, acks_rx).await });
    } else {
        bg.spawn(local(state.clone(), settings, queue));
    }
}

/// The memory engine's queue: each change this replica committed, as it commits it.
async fn local(
    st: crate::state::AppState,
    settings: WebhookSettings,
    queue: std::sync::Arc<queue::Queue>,
) {
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
