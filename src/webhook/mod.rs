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
}

/// The event a committed change makes, if the deployment sends that type: its `id` is the
/// user and the change's version, unique and the same on every resend.
pub fn event_of(
    settings: &WebhookSettings,
    was_online: bool,
    p: &Presence,
    committed_at: Timestamp,
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
        item: Event { json, committed_at },
    })
}

/// Start the webhook producer (this replica's committed changes into the queue) and the
/// sender, when `WEBHOOK_URL` is set.
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
    let queue = std::sync::Arc::new(queue::Queue::new(
        settings.offline_delay_ms,
        settings.kinds,
        settings.queue_max,
    ));
    let bg = &state.background;
    let (q, stop) = (queue.clone(), bg.stop.clone());
    bg.spawn(async move { sender.run(&q, stop).await });
    let (st, mut rx) = (state.clone(), state.engine.subscribe());
    bg.spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        let node = st.config.node_id.clone();
        loop {
            let ev = tokio::select! {
                _ = st.background.stop.cancelled() => return,
                r = rx.recv() => r,
            };
            match ev {
                // Each change once, from the replica that committed it.
                Ok(ev) if *ev.origin == *node => {
                    if let Some(c) =
                        event_of(&settings, ev.was_online, &ev.presence, ev.committed_at)
                    {
                        let dropped = queue.push(c);
                        if dropped > 0 {
                            crate::metrics::webhook_result("dropped", dropped as u64);
                        }
                    }
                }
                Ok(_) => {}
                Err(RecvError::Lagged(n)) => {
                    tracing::error!(missed = n, "webhook producer fell behind the change stream");
                    crate::metrics::webhook_result("dropped", n);
                }
                Err(RecvError::Closed) => return,
            }
        }
    });
}
