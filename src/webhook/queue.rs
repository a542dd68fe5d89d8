//! The webhook queue of one process: changes in commit order through the offline delay,
//! bounded by `WEBHOOK_QUEUE_MAX` (the oldest dropped and counted past it, never the
//! replica's memory).

use super::Event;
use crate::domain::Timestamp;
use crate::domain::webhook::{Change, Delay, Kinds};
use std::sync::Mutex;
use tokio::sync::Notify;

pub struct Queue {
    inner: Mutex<Delay<Event>>,
    kinds: Kinds,
    max: usize,
    /// Wakes the sender when something is ready.
    pub ready: Notify,
}

impl Queue {
    pub fn new(delay_ms: u64, kinds: Kinds, max: usize) -> Self {
        Queue {
            inner: Mutex::new(Delay::new(delay_ms)),
            kinds,
            max,
            ready: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Delay<Event>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Take a change in (in commit order). Returns how many events were dropped to make room.
    pub fn push(&self, c: Change<Event>) -> usize {
        let dropped = {
            let mut d = self.lock();
            d.push(c);
            let _ = d.cancelled();
            let mut dropped = 0;
            while d.ready_len() + d.held() > self.max && d.ready_len() > 0 {
                d.ready(1);
                dropped += 1;
            }
            dropped
        };
        crate::metrics::webhook_depth(self.depth() as f64);
        self.ready.notify_one();
        dropped
    }

    /// Up to `n` events that may be sent at `now`, in order (types the deployment does not
    /// send are taken and skipped), and when the next held offline is due.
    pub fn take(&self, now: Timestamp, n: usize) -> (Vec<Event>, Option<Timestamp>) {
        let mut d = self.lock();
        d.tick(now);
        let mut out = Vec::new();
        while out.len() < n && d.ready_len() > 0 {
            for c in d.ready(n - out.len()) {
                if self.kinds.contains(c.kind) {
                    out.push(c.item);
                }
            }
        }
        (out, d.next_due())
    }

    /// Events waiting (held offlines included).
    pub fn depth(&self) -> usize {
        let d = self.lock();
        d.ready_len() + d.held()
    }
}
