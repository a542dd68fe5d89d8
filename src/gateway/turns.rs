//! The order of a socket's state-changing requests.

use std::sync::atomic::{AtomicU64, Ordering};

/// A socket's state-changing requests (`presence:set-status`, `presence:subscribe`,
/// `presence:unsubscribe`) take effect in the order the client sent them. socketioxide runs
/// each event's handler as a task of its own, so two requests sent back to back may start in
/// either order: "live" then "online" could leave the user live. A ticket is taken while the
/// packet is read (in order: `gateway::events::Turn`, an extractor), and the handler waits for
/// its ticket's turn before it acts.
#[derive(Default)]
pub struct Turns {
    next: AtomicU64,
    serving: AtomicU64,
    changed: tokio::sync::Notify,
}

impl Turns {
    /// The next place in line (call in packet order).
    pub fn take(&self) -> u64 {
        self.next.fetch_add(1, Ordering::AcqRel)
    }

    /// Wait for `ticket`'s turn; the turn passes to the next ticket when the guard drops
    /// (also if the handler panics or is dropped).
    pub async fn wait(&self, ticket: u64) -> TurnGuard<'_> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.serving.load(Ordering::Acquire) == ticket {
                return TurnGuard(self);
            }
            changed.await;
        }
    }
}

pub struct TurnGuard<'a>(&'a Turns);

impl Drop for TurnGuard<'_> {
    fn drop(&mut self) {
        self.0.serving.fetch_add(1, Ordering::AcqRel);
        self.0.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_act_in_the_order_their_tickets_were_taken_whatever_order_they_start_in() {
        let h = Arc::new(Holder::default());
        let tickets: Vec<u64> = (0..50).map(|_| h.turns.take()).collect();
        let order = Arc::new(Mutex::new(Vec::new()));
        // Started in reverse: each must still act in ticket order.
        let tasks: Vec<_> = tickets
            .into_iter()
            .rev()
            .map(|t| {
                let (h, order) = (h.clone(), order.clone());
                tokio::spawn(async move {
                    let _turn = h.turns.wait(t).await;
                    tokio::task::yield_now().await;
                    order.lock().unwrap().push(t);
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), (0..50).collect::<Vec<u64>>());
    }

    #[tokio::test]
    async fn a_turn_whose_handler_panics_still_passes_on() {
        let h = Arc::new(Holder::default());
        let (a, b) = (h.turns.take(), h.turns.take());
        let h2 = h.clone();
        let r = tokio::spawn(async move {
            let _turn = h2.turns.wait(a).await;
            panic!("a handler fails");
        })
        .await;
        assert!(r.is_err());
        tokio::time::timeout(std::time::Duration::from_secs(1), h.turns.wait(b))
            .await
            .expect("the next request is not stuck behind the failed one");
    }

    /// What a socket's handle is to its turns.
    #[derive(Default)]
    struct Holder {
        turns: Turns,
    }
}
