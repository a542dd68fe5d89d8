//! A socket's outbox of presence updates, and its two policies (one update per change as room
//! comes; gathered into batches). Every update waiting shares its encoding with the other
//! sockets it is for; the outbox holds references, newest per user, in change order.

use crate::domain::UserId;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// Users one `presence-batch` holds at most.
pub const BATCH_MAX: usize = 500;

/// An encoded `presence-update`, shared by every socket it is sent to.
pub type Encoded = Arc<serde_json::value::RawValue>;

#[derive(Clone)]
pub struct Pending {
    pub version: i64,
    /// The change's place in this replica's fan-out order: an outbox sends in this order.
    pub seq: u64,
    pub payload: Encoded,
}

/// A socket's outbox: presence updates not sent yet, the newest per user (presence is state,
/// not a log, so only each user's latest change matters). Two policies use it: a socket that
/// gets one `presence-update` per change keeps here what its queue had no room for and sends
/// it as room comes ([`drain`](Outbox::drain)); a batching socket keeps every change here and
/// sends them together when the batch is due ([`drain_batch`](Outbox::drain_batch)).
#[derive(Default)]
pub struct Outbox {
    pending: HashMap<UserId, Pending>,
    /// When the oldest change waiting joined (a batch is due `PRESENCE_BATCH_MS` after).
    since: Option<Instant>,
}

/// Users a socket's backlog may hold. Each entry shares its payload with every other
/// socket, so an entry costs a map slot (~100 bytes): ~6 MiB at the bound. A socket this far
/// behind is also one socketioxide closes at its next ping (its queue stays full), after which
/// the client reconnects and refreshes.
pub const BACKLOG_MAX: usize = 65_536;

impl Outbox {
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn clear(&mut self) {
        self.pending.clear();
        self.since = None;
    }

    /// Keep `p` for later, in place of an older change of that user (at the new change's
    /// place). Returns false when the outbox is full (the update is dropped).
    pub fn defer(&mut self, user: &UserId, p: Pending) -> bool {
        let b = self;
        let full = b.pending.len() >= BACKLOG_MAX;
        if b.since.is_none() {
            b.since = Some(Instant::now());
        }
        match b.pending.get_mut(user) {
            Some(old) => {
                if p.version > old.version {
                    *old = p;
                }
                true
            }
            None if full => false,
            None => {
                b.pending.insert(user.clone(), p);
                true
            }
        }
    }

    /// When the oldest change in the outbox joined it.
    pub fn waiting_since(&self) -> Option<Instant> {
        self.since
    }

    /// Offer what waits, in change order, to `send` until it has taken `max` or refuses one;
    /// returns how many it took. Runs under the socket's lock of its outbox, so a change deferred
    /// meanwhile waits behind these (and a direct emit, which only happens while the outbox is empty,
    /// can never overtake an older change of the same user).
    pub fn drain(&mut self, max: usize, mut send: impl FnMut(&Pending) -> bool) -> u64 {
        let b = self;
        let order = in_change_order(&b.pending, max);
        let mut sent = 0;
        for user in order {
            if !send(&b.pending[&user]) {
                break;
            }
            b.pending.remove(&user);
            sent += 1;
        }
        if b.pending.is_empty() {
            b.since = None;
        }
        sent
    }

    /// Offer the oldest [`BATCH_MAX`] waiting, in change order, to `send` as one batch; they
    /// leave the outbox only if it takes them. Returns how many it took.
    pub fn drain_batch(&mut self, send: impl FnOnce(&[&Pending]) -> bool) -> u64 {
        let b = self;
        let order = in_change_order(&b.pending, BATCH_MAX);
        let batch: Vec<&Pending> = order.iter().map(|u| &b.pending[u]).collect();
        if batch.is_empty() || !send(&batch) {
            return 0;
        }
        for u in &order {
            b.pending.remove(u);
        }
        // What is left (a batch was full) is due at once.
        if b.pending.is_empty() {
            b.since = None;
        }
        order.len() as u64
    }
}

/// The users of `pending` with the `max` earliest changes, earliest first.
fn in_change_order(pending: &HashMap<UserId, Pending>, max: usize) -> Vec<UserId> {
    let mut order: Vec<(u64, &UserId)> = pending.iter().map(|(u, p)| (p.seq, u)).collect();
    if order.len() > max {
        order.select_nth_unstable_by_key(max, |(seq, _)| *seq);
        order.truncate(max);
    }
    order.sort_unstable_by_key(|(seq, _)| *seq);
    order.into_iter().map(|(_, u)| u.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A change whose place in the fan-out order is its version (as for one replica's clock).
    fn pending(version: i64) -> Pending {
        Pending {
            version,
            seq: version as u64,
            payload: Arc::from(serde_json::value::to_raw_value(&version).unwrap()),
        }
    }

    fn uid(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }

    #[test]
    fn a_batch_holds_each_user_once_newest_at_the_place_of_the_latest_change() {
        let mut h = Outbox::default();
        h.defer(&uid("a"), pending(1));
        h.defer(&uid("b"), pending(2));
        h.defer(&uid("a"), pending(3));
        h.defer(&uid("c"), pending(4));
        let mut frame = Vec::new();
        assert_eq!(
            h.drain_batch(|b| {
                frame = b.iter().map(|p| p.version).collect();
                true
            }),
            3
        );
        assert_eq!(frame, [2, 3, 4], "b, then a (its latest change), then c");
        assert!(h.is_empty() && h.waiting_since().is_none());
    }

    #[test]
    fn a_batch_refused_for_want_of_room_stays_whole_and_merges_newer_changes() {
        let mut h = Outbox::default();
        h.defer(&uid("a"), pending(1));
        h.defer(&uid("b"), pending(2));
        let since = h.waiting_since();
        assert_eq!(h.drain_batch(|_| false), 0);
        h.defer(&uid("a"), pending(3));
        assert_eq!(
            h.waiting_since(),
            since,
            "due when the oldest change joined"
        );
        let mut frame = Vec::new();
        h.drain_batch(|b| {
            frame = b.iter().map(|p| p.version).collect();
            true
        });
        assert_eq!(frame, [2, 3]);
    }

    #[test]
    fn a_batch_carries_at_most_500_users_the_oldest_first_and_the_rest_is_due_at_once() {
        let mut h = Outbox::default();
        for i in 0..1200 {
            h.defer(&uid(&format!("u{i}")), pending(1200 - i));
        }
        let mut first = Vec::new();
        assert_eq!(
            h.drain_batch(|b| {
                first = b.iter().map(|p| p.version).collect();
                true
            }),
            BATCH_MAX as u64
        );
        assert_eq!(first, (1..=500).collect::<Vec<i64>>());
        assert!(h.waiting_since().is_some(), "700 left, still due");
        assert_eq!(h.drain_batch(|_| true), 500);
        assert_eq!(h.drain_batch(|_| true), 200);
        assert!(h.waiting_since().is_none());
    }

    #[test]
    fn the_backlog_keeps_the_newest_change_per_user_oldest_first() {
        let mut h = Outbox::default();
        let (a, b) = (UserId::parse("a").unwrap(), UserId::parse("b").unwrap());
        assert!(h.defer(&a, pending(5)));
        assert!(h.defer(&b, pending(3)));
        assert!(
            h.defer(&a, pending(4)),
            "an older change never replaces a newer one"
        );
        assert!(h.defer(&a, pending(7)));
        let mut got = Vec::new();
        let mut take = |p: &Pending| {
            got.push(p.version);
            true
        };
        assert_eq!(h.drain(10, &mut take), 2);
        assert_eq!(got, [3, 7]);
        assert!(h.is_empty());
    }

    #[test]
    fn a_refused_drain_keeps_the_rest_in_order() {
        let mut h = Outbox::default();
        for (u, v) in [("a", 1), ("b", 2), ("c", 3)] {
            h.defer(&UserId::parse(u).unwrap(), pending(v));
        }
        let mut room = 1;
        let sent = h.drain(10, |_| {
            room -= 1;
            room >= 0
        });
        assert_eq!(sent, 1);
        let mut rest = Vec::new();
        h.drain(10, |p| {
            rest.push(p.version);
            true
        });
        assert_eq!(rest, [2, 3]);
    }
}
