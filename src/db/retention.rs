//! Statistics retention (`STATS_RETENTION_DAYS`): events older than the horizon are deleted
//! in the background, in bounded batches, while the rollups keep counting them (migration
//! 0007), so reports over older periods keep their figures.
//!
//! Every replica runs the job; the batches serialise on the rollups' lock, so two replicas
//! share the work rather than repeat it, and an insert waits for one batch at most.

use super::Database;
use crate::domain::Timestamp;
use crate::domain::stats::retention_horizon as horizon;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Events deleted per transaction: a few milliseconds under the lock that inserts take.
pub const BATCH: i32 = 5_000;
/// A pause between batches, so that inserts and reports get the database between them.
const PAUSE: Duration = Duration::from_millis(20);
/// How often the horizon moves on (it moves by whole quarter hours).
const EVERY: Duration = Duration::from_secs(15 * 60);
impl Database {
    /// Delete everything older than the horizon, batch by batch; returns how many events.
    pub async fn retain_all(&self, before: Timestamp, stop: &CancellationToken) -> u64 {
        let mut total = 0u64;
        while !stop.is_cancelled() {
            match self.retain_events(before, BATCH).await {
                Ok(n) => {
                    total += n as u64;
                    crate::metrics::stats_events_retired(n as u64);
                    if n < BATCH {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "statistics retention stopped; retried later");
                    break;
                }
            }
            tokio::time::sleep(PAUSE).await;
        }
        total
    }

    /// The retention job: at start, then every quarter hour, until `stop`.
    pub async fn run_retention(&self, days: u64, stop: CancellationToken) {
        loop {
            let n = self
                .retain_all(horizon(Timestamp::now(), days), &stop)
                .await;
            if n > 0 {
                tracing::info!(events = n, days, "statistics events past retention deleted");
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(EVERY) => {}
            }
        }
    }
}
