//! Background work, supervised as one thing: one stop token, one task tracker, one timer.
//!
//! Each part of the gateway spawns its own loops here (`gateway::spawn`, `figures::spawn`,
//! the database and statistics loops in `server`); shutdown cancels the token once and waits
//! for the tracker, so no loop, grace timer or revival outlives the process's last flush.

use std::time::Duration;
use tokio::time::Interval;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Default)]
pub struct Background {
    /// Cancelled when the background work must stop.
    pub stop: CancellationToken,
    /// Every task that must end before the process exits.
    pub tasks: TaskTracker,
}

/// The timer of a background loop: a tick missed while the loop was busy is delayed, not
/// fired in a burst.
pub fn ticker(period: Duration) -> Interval {
    let mut t = tokio::time::interval(period);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

impl Background {
    /// Track `work` until shutdown.
    pub fn spawn<F>(&self, work: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(work);
    }

    /// The next tick of a loop's timer; false once stopping.
    pub async fn tick(&self, timer: &mut Interval) -> bool {
        tokio::select! {
            _ = self.stop.cancelled() => false,
            _ = timer.tick() => true,
        }
    }

    /// Stop every loop, and wait (at most `deadline`) for all tracked work to end. Returns
    /// whether it did.
    pub async fn shut_down(&self, deadline: Duration) -> bool {
        self.stop.cancel();
        self.tasks.close();
        tokio::time::timeout(deadline, self.tasks.wait())
            .await
            .is_ok()
    }
}
