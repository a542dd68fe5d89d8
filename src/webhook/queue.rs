//! The events on their way out of this replica: changes in commit order through the offline
//! delay. Bounded by `WEBHOOK_QUEUE_MAX` when it is the whole queue (memory engine; the
//! oldest dropped and counted past it, never the replica's memory); with the Redis engine it
//! holds what was read from the streams, which are bounded themselves.
//!
//! Every event that leaves it (sent, refused, too old, cancelled by the delay, dropped, or of
//! a type the deployment does not send) with an entry in a store is handed to `acks`, to be
//! taken off there.

use super::Event;
use crate::domain::Timestamp;
use crate::domain::webhook::{Change, Delay, Kinds};
use std::sync::Mutex;
use tokio::sync::Notify;
use tokio::sync::mpsc::UnboundedSender;

pub type Ack = (u32, String);

pub struct Queue {
    inner: Mutex<Delay<Event>>,
    /// The store's entries in this queue or being sent: one read twice (a lease taken back
    /// after it lapsed claims what this replica still holds) is not queued twice.
    entries: Mutex<std::collections::HashSet<Ack>>,
    kinds: Kinds,
    read_ahead: usize,
    /// The bound of the events held here (the whole queue's without a store).
    max: usize,
    acks: UnboundedSender<Ack>,
    /// Whether a store holds the events too (then the store's length is the depth reported).
    pub stored: bool,
    /// Wakes the sender when something is ready.
    pub ready: Notify,
}

impl Queue {
    /// `max`: `WEBHOOK_QUEUE_MAX`; `stored`: whether a store holds the events (and bounds
    /// them: then `max` only caps what is read ahead, see [`Queue::room`]).
    pub fn new(
        delay_ms: u64,
        kinds: Kinds,
        max: usize,
        stored: bool,
        acks: UnboundedSender<Ack>,
    ) -> Self {
        Queue {
            inner: Mutex::new(Delay::new(delay_ms)),
            entries: Mutex::new(std::collections::HashSet::new()),
            kinds,
            max: if stored { usize::MAX } else { max },
            read_ahead: max.min(super::BUFFER),
            acks,
            stored,
            ready: Notify::new(),
        }
    }

    /// Whether more may be read from a store: at most `WEBHOOK_QUEUE_MAX` (and never more
    /// than [`super::BUFFER`]) wait here; while the receiver is down the rest wait there.
    pub fn room(&self) -> bool {
        self.depth() < self.read_ahead
    }

    /// The store trimmed bucket `b` up to `first` (its oldest entry left): what was read
    /// from it before that is gone, so it is not sent. Returns how many of the trimmed
    /// entries are being sent right now (they still arrive, so they are not dropped). Stream
    /// ids (`<ms>-<seq>`) order as number pairs.
    pub fn forget(&self, b: u32, first: &str) -> u64 {
        let Some(first) = stream_id(first) else {
            return 0;
        };
        let before = |(eb, id): &Ack| *eb == b && stream_id(id).is_some_and(|i| i < first);
        let gone = self
            .lock()
            .remove_if(|e| e.ack.as_ref().is_some_and(before));
        self.done(&gone);
        // What is left of them in `entries` is in the sender's hands.
        self.held_entries().iter().filter(|a| before(a)).count() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Delay<Event>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn held_entries(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<Ack>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// These events are done with.
    pub fn done<'a>(&self, events: impl IntoIterator<Item = &'a Event>) {
        for e in events {
            if let Some(a) = &e.ack {
                self.held_entries().remove(a);
                let _ = self.acks.send(a.clone());
            }
        }
    }

    /// An entry of the store that makes no event: take it off at once.
    pub fn skip(&self, ack: Ack) {
        if !self.held_entries().contains(&ack) {
            let _ = self.acks.send(ack);
        }
    }

    /// Take a change in (in commit order).
    pub fn push(&self, c: Change<Event>) {
        if let Some(a) = &c.item.ack
            && !self.held_entries().insert(a.clone())
        {
            return;
        }
        let (cancelled, dropped) = {
            let mut d = self.lock();
            d.push(c);
            let cancelled = d.cancelled();
            if !cancelled.is_empty() {
                crate::metrics::webhook_unsent("flap", cancelled.len() as u64);
            }
            let mut dropped = vec![];
            while d.ready_len() + d.held() > self.max && d.ready_len() > 0 {
                dropped.extend(d.ready(1).into_iter().map(|c| c.item));
            }
            (cancelled, dropped)
        };
        if !dropped.is_empty() {
            crate::metrics::webhook_result("dropped", dropped.len() as u64);
        }
        self.done(cancelled.iter().chain(&dropped));
        self.ready.notify_one();
    }

    /// Up to `n` events that may be sent at `now`, in order (types the deployment does not
    /// send are taken and skipped), and when the next held offline is due.
    pub fn take(&self, now: Timestamp, n: usize) -> (Vec<Event>, Option<Timestamp>) {
        let (out, skipped, due) = {
            let mut d = self.lock();
            d.tick(now);
            let (mut out, mut skipped) = (Vec::new(), Vec::new());
            while out.len() < n && d.ready_len() > 0 {
                for c in d.ready(n - out.len()) {
                    if self.kinds.contains(c.kind) {
                        out.push(c.item);
                    } else {
                        skipped.push(c.item);
                    }
                }
            }
            (out, skipped, d.next_due())
        };
        if !skipped.is_empty() {
            crate::metrics::webhook_unsent("type", skipped.len() as u64);
        }
        self.done(&skipped);
        (out, due)
    }

    /// Events waiting here (held offlines included).
    pub fn depth(&self) -> usize {
        let d = self.lock();
        d.ready_len() + d.held()
    }
}

fn stream_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}
