//! `stats.event`: the statistics events, sent from PostgreSQL, where they are already stored
//! in seq order. A cursor (`webhook_cursors`) says how far they were sent; the replica that
//! sends them (with Redis, the holder of bucket 0's lease) reads on from it, and moves it
//! once the receiver took them, so a replica killed meanwhile loses none.

use super::queue::Queue;
use super::{Event, STATS_BUCKET};
use crate::db::Database;
use crate::domain::stats::StatsUpdate;
use crate::domain::webhook::{Change, Kind};
use crate::state::AppState;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const EVERY: Duration = Duration::from_millis(250);
const READ_MAX: i64 = 1_000;

/// A statistics event as the receiver gets it: the section 5 `stats_update`.
pub fn event_of(u: &StatsUpdate) -> Change<Event> {
    Change {
        kind: Kind::Stats,
        user: None,
        at: u.at,
        item: Event {
            json: serde_json::to_string(&serde_json::json!({
                "id": format!("stats-{}", u.seq),
                "type": Kind::Stats.as_str(),
                "at": u.at,
                "event": u,
            }))
            .expect("JSON values serialise"),
            committed_at: u.at,
            ack: Some((STATS_BUCKET, u.seq.to_string())),
        },
    }
}

pub async fn run(st: AppState, db: Arc<Database>, queue: Arc<Queue>, lead: Arc<AtomicBool>) {
    // The last seq queued here; `None` while another replica sends them.
    let mut next: Option<i64> = None;
    let mut tick = tokio::time::interval(EVERY);
    while st.background.tick(&mut tick).await {
        if !lead.load(Ordering::Acquire) {
            next = None;
            continue;
        }
        if next.is_none() {
            match db.webhook_stats_cursor().await {
                Ok(c) => next = Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "webhook statistics cursor not read");
                    continue;
                }
            }
        }
        while queue.room() {
            let after = next.expect("set above");
            match db.events_between(after, i64::MAX, READ_MAX).await {
                Ok(events) => {
                    for u in &events {
                        queue.push(event_of(u));
                        next = Some(u.seq);
                    }
                    if (events.len() as i64) < READ_MAX {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "statistics events for the webhook not read");
                    break;
                }
            }
        }
    }
}
