//! A socket's outbox: what it has not been sent yet, with one of two policies, and the
//! retry loop's set of sockets whose outbox waits ([`Waiting`]).
//!
//! - **Every change, then newest per user** (`/` sockets sent one `presence-update` per
//!   change): what the socket's queue or connection had no room for, or what waits for its
//!   CONNECT to be written, is kept here *change by change*, in order, and sent as room comes
//!   ([`drain`](Outbox::drain)): a short wait loses nothing (section 3: broadcast sends every
//!   change). Only a socket that falls [`EVERY_MAX`] changes behind has them folded into its
//!   users' newest (presence is state, not a log, so it still converges on the truth with
//!   memory bounded); it keeps every change again once it has caught up.
//! - **Newest per user** (batching `/` sockets): a change replaces an older one of that user at
//!   the new change's place, and the batch leaves when due ([`drain_batch`](Outbox::drain_batch));
//!   section 9 lets a batch skip a user's intermediate versions.
//! - **In order** (`/dashboard` sockets): statistics events are a log the page folds, so each
//!   is kept, in order, up to a bound; past it the socket is too slow to follow, what it held
//!   is dropped and a resync is owed before anything else ([`take_resync`](Outbox::take_resync)).
//!
//! Every entry shares its encoding with the other sockets it is for: the outbox holds
//! references, sent in the order the changes were made (`seq`).

use crate::domain::UserId;
use socketioxide::socket::Sid;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Users one `presence-batch` holds at most.
pub const BATCH_MAX: usize = 500;

/// An encoded update, shared by every socket it is sent to.
pub type Encoded = Arc<serde_json::value::RawValue>;

#[derive(Clone)]
pub struct Pending {
    pub version: i64,
    /// The change's place in this replica's fan-out order: an outbox sends in this order.
    pub seq: u64,
    pub payload: Encoded,
}

/// Users a socket's newest-per-user outbox may hold. Each entry shares its payload with every
/// other socket, so an entry costs a map slot (~100 bytes): ~6 MiB at the bound. A socket this
/// far behind is also one socketioxide closes at its next ping (its queue stays full), after
/// which the client reconnects and refreshes.
pub const BACKLOG_MAX: usize = 65_536;

/// Changes a per-change socket's outbox keeps one by one before it folds them into each
/// user's newest. A socket waits here for milliseconds (its CONNECT not yet written, a frame
/// of the library's half written) far more often than it falls behind for good: this many
/// covers such a wait in any burst a test or a storm makes, at ~100 bytes an entry.
pub const EVERY_MAX: usize = 1024;

enum Held {
    /// Every change in order, while at most [`EVERY_MAX`] wait.
    Every(VecDeque<(UserId, Pending)>),
    Newest(HashMap<UserId, Pending>),
    InOrder {
        queue: VecDeque<Pending>,
        max: usize,
    },
}

/// A socket's outbox; see the module's documentation for its two policies.
pub struct Outbox {
    held: Held,
    /// When the oldest entry waiting joined (a batch is due `PRESENCE_BATCH_MS` after).
    since: Option<Instant>,
    /// In order: the outbox overflowed, and a resync is owed before anything else.
    resync: bool,
    /// Every change while few wait (a per-change socket); newest per user otherwise.
    per_change: bool,
}

impl Outbox {
    /// Every change, folded into each user's newest only past [`EVERY_MAX`].
    pub fn every_change() -> Self {
        Outbox {
            held: Held::Every(VecDeque::new()),
            since: None,
            resync: false,
            per_change: true,
        }
    }

    pub fn newest_per_user() -> Self {
        Outbox {
            held: Held::Newest(HashMap::new()),
            since: None,
            resync: false,
            per_change: false,
        }
    }

    /// Keeps up to `max` entries in order; one more drops them all and owes a resync.
    pub fn in_order(max: usize) -> Self {
        Outbox {
            held: Held::InOrder {
                queue: VecDeque::new(),
                max,
            },
            since: None,
            resync: false,
            per_change: false,
        }
    }

    pub fn len(&self) -> usize {
        match &self.held {
            Held::Every(q) => q.len(),
            Held::Newest(m) => m.len(),
            Held::InOrder { queue, .. } => queue.len(),
        }
    }

    fn holds_nothing(&self) -> bool {
        match &self.held {
            Held::Every(q) => q.is_empty(),
            Held::Newest(m) => m.is_empty(),
            Held::InOrder { queue, .. } => queue.is_empty(),
        }
    }

    /// Nothing waits: no entry and no resync owed.
    pub fn is_empty(&self) -> bool {
        self.holds_nothing() && !self.resync
    }

    pub fn clear(&mut self) {
        match &mut self.held {
            Held::Every(q) => q.clear(),
            Held::Newest(_) if self.per_change => self.held = Held::Every(VecDeque::new()),
            Held::Newest(m) => m.clear(),
            Held::InOrder { queue, .. } => queue.clear(),
        }
        self.since = None;
    }

    fn joined(&mut self) {
        if self.since.is_none() {
            self.since = Some(Instant::now());
        }
    }

    /// Keep `p` for later: after what waits (every change), or in place of an older change of
    /// that user, at the new change's place (newest per user). Returns false when the outbox
    /// is full (the update is dropped).
    pub fn defer(&mut self, user: &UserId, p: Pending) -> bool {
        if let Held::Every(queue) = &mut self.held {
            if queue.len() < EVERY_MAX {
                queue.push_back((user.clone(), p));
                self.joined();
                return true;
            }
            // Too far behind to be sent every change: from here on, each user's newest.
            let mut newest: HashMap<UserId, Pending> = HashMap::with_capacity(queue.len());
            for (u, q) in queue.drain(..) {
                newest.insert(u, q);
            }
            self.held = Held::Newest(newest);
        }
        let Held::Newest(pending) = &mut self.held else {
            debug_assert!(false, "defer on an in-order outbox");
            return self.push(p);
        };
        let full = pending.len() >= BACKLOG_MAX;
        let kept = match pending.get_mut(user) {
            Some(old) => {
                if p.version > old.version {
                    *old = p;
                }
                true
            }
            None if full => false,
            None => {
                pending.insert(user.clone(), p);
                true
            }
        };
        self.joined();
        kept
    }

    /// In order: keep `p` after what waits. Returns false when that overflowed the bound:
    /// everything held is dropped and a resync is owed (also while one is owed already).
    pub fn push(&mut self, p: Pending) -> bool {
        let Held::InOrder { queue, max } = &mut self.held else {
            debug_assert!(false, "push on a newest-per-user outbox");
            return false;
        };
        if self.resync {
            return false;
        }
        if queue.len() >= *max {
            queue.clear();
            self.since = None;
            self.resync = true;
            return false;
        }
        queue.push_back(p);
        self.joined();
        true
    }

    pub fn owes_resync(&self) -> bool {
        self.resync
    }

    /// A resync owed: offered to `send` first; owed still if it refuses. Returns whether the
    /// outbox may go on with its entries (nothing is owed any more).
    pub fn take_resync(&mut self, send: impl FnOnce() -> bool) -> bool {
        if self.resync && send() {
            self.resync = false;
        }
        !self.resync
    }

    /// When the oldest entry in the outbox joined it.
    pub fn waiting_since(&self) -> Option<Instant> {
        self.since
    }

    /// Offer what waits, in change order, to `send` until it has taken `max` or refuses one;
    /// returns how many it took. Runs under the socket's lock of its outbox, so an entry
    /// deferred meanwhile waits behind these (and a direct emit, which only happens while the
    /// outbox is empty, can never overtake an older one).
    pub fn drain(&mut self, max: usize, mut send: impl FnMut(&Pending) -> bool) -> u64 {
        let mut sent = 0;
        match &mut self.held {
            Held::Every(queue) => {
                while let Some((_, p)) = queue.front() {
                    if sent as usize >= max || !send(p) {
                        break;
                    }
                    queue.pop_front();
                    sent += 1;
                }
            }
            Held::Newest(pending) => {
                for user in in_change_order(pending, max) {
                    if !send(&pending[&user]) {
                        break;
                    }
                    pending.remove(&user);
                    sent += 1;
                }
            }
            Held::InOrder { queue, .. } => {
                while let Some(p) = queue.front() {
                    if sent as usize >= max || !send(p) {
                        break;
                    }
                    queue.pop_front();
                    sent += 1;
                }
            }
        }
        if self.holds_nothing() {
            self.since = None;
            if self.per_change && matches!(self.held, Held::Newest(_)) {
                // Caught up: every change again.
                self.held = Held::Every(VecDeque::new());
            }
        }
        sent
    }

    /// Newest per user: offer the oldest [`BATCH_MAX`] waiting, in change order, to `send` as
    /// one batch; they leave the outbox only if it takes them. Returns how many it took.
    pub fn drain_batch(&mut self, send: impl FnOnce(&[&Pending]) -> bool) -> u64 {
        let Held::Newest(pending) = &mut self.held else {
            debug_assert!(false, "batches are of newest-per-user outboxes");
            return 0;
        };
        if pending.is_empty() {
            return 0;
        }
        let taken = if pending.len() <= BATCH_MAX {
            // The usual case, all of it: moved out whole, no lookups and no key copies.
            let mut all: Vec<(UserId, Pending)> = pending.drain().collect();
            all.sort_unstable_by_key(|(_, p)| p.seq);
            let batch: Vec<&Pending> = all.iter().map(|(_, p)| p).collect();
            if !send(&batch) {
                pending.extend(all);
                return 0;
            }
            all.len()
        } else {
            let order = in_change_order(pending, BATCH_MAX);
            let batch: Vec<&Pending> = order.iter().map(|u| &pending[u]).collect();
            if !send(&batch) {
                return 0;
            }
            for u in &order {
                pending.remove(u);
            }
            order.len()
        };
        // What is left (a batch was full) is due at once.
        if pending.is_empty() {
            self.since = None;
        }
        taken as u64
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

/// Where a waiting outbox is: the namespace of its socket decides what its entries are sent as.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Mailbox {
    /// A `/` socket: `presence-update`s.
    Presence(Sid),
    /// A `/dashboard` socket: `stats_update`s, after a `stats_resync` if one is owed.
    Dashboard(Sid),
}

/// The sockets whose outbox waits for room in their queue: the one retry loop
/// (`fanout::run_backlogs`) looks at these and nothing else.
#[derive(Default)]
pub struct Waiting(Mutex<HashSet<Mailbox>>);

impl Waiting {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<Mailbox>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn insert(&self, m: Mailbox) {
        self.lock().insert(m);
    }

    pub fn remove(&self, m: Mailbox) {
        self.lock().remove(&m);
    }

    /// Take `m` out if `empty` says nothing waits, asked under the set's lock: an entry
    /// deferred meanwhile (which puts the socket in the set, under this lock) is not lost.
    pub fn leave_if(&self, m: Mailbox, empty: impl FnOnce() -> bool) {
        let mut set = self.lock();
        if empty() {
            set.remove(&m);
        }
    }
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
        let mut h = Outbox::newest_per_user();
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
        let mut h = Outbox::newest_per_user();
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
        let mut h = Outbox::newest_per_user();
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

    fn drained(h: &mut Outbox) -> Vec<i64> {
        let mut got = Vec::new();
        h.drain(usize::MAX, |p| {
            got.push(p.version);
            true
        });
        got
    }

    #[test]
    fn a_per_change_backlog_keeps_every_change_in_order() {
        let mut h = Outbox::every_change();
        let (a, b) = (uid("a"), uid("b"));
        for (u, v) in [(&a, 1), (&b, 2), (&a, 3), (&a, 4)] {
            assert!(h.defer(u, pending(v)));
        }
        assert_eq!(
            drained(&mut h),
            [1, 2, 3, 4],
            "a short wait loses no change"
        );
        assert!(h.is_empty() && h.waiting_since().is_none());
    }

    #[test]
    fn a_per_change_backlog_far_behind_folds_into_each_users_newest_then_keeps_every_change_again()
    {
        let mut h = Outbox::every_change();
        let (a, b) = (uid("a"), uid("b"));
        for v in 1..=EVERY_MAX as i64 {
            assert!(h.defer(if v % 2 == 0 { &a } else { &b }, pending(v)));
        }
        assert_eq!(h.len(), EVERY_MAX);
        assert!(h.defer(&a, pending(EVERY_MAX as i64 + 1)));
        assert_eq!(h.len(), 2, "folded: a and b, each its newest");
        assert!(h.defer(&a, pending(EVERY_MAX as i64 + 2)));
        assert_eq!(
            drained(&mut h),
            [EVERY_MAX as i64 - 1, EVERY_MAX as i64 + 2]
        );
        assert!(h.defer(&a, pending(2000)) && h.defer(&a, pending(2001)));
        assert_eq!(
            drained(&mut h),
            [2000, 2001],
            "caught up: every change again"
        );
        assert!(h.defer(&a, pending(3000)));
        for _ in 0..EVERY_MAX {
            h.defer(&b, pending(3001));
        }
        h.clear();
        assert!(h.defer(&a, pending(4000)) && h.defer(&a, pending(4001)));
        assert_eq!(drained(&mut h), [4000, 4001], "cleared: every change again");
    }

    #[test]
    fn a_batching_backlog_keeps_the_newest_change_per_user_oldest_first() {
        let mut h = Outbox::newest_per_user();
        let (a, b) = (uid("a"), uid("b"));
        assert!(h.defer(&a, pending(5)));
        assert!(h.defer(&b, pending(3)));
        assert!(
            h.defer(&a, pending(4)),
            "an older change never replaces a newer one"
        );
        assert!(h.defer(&a, pending(7)));
        assert_eq!(drained(&mut h), [3, 7]);
        assert!(h.is_empty());
    }

    #[test]
    fn a_refused_drain_keeps_the_rest_in_order() {
        let mut h = Outbox::newest_per_user();
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

    fn entry(seq: u64) -> Pending {
        Pending {
            version: seq as i64,
            seq,
            payload: Arc::from(serde_json::value::to_raw_value(&seq).unwrap()),
        }
    }

    #[test]
    fn in_order_keeps_every_entry_in_order_and_drains_at_most_max() {
        let mut o = Outbox::in_order(10);
        for i in 1..=5 {
            assert!(o.push(entry(i)));
        }
        let mut got = Vec::new();
        assert_eq!(
            o.drain(3, |p| {
                got.push(p.seq);
                true
            }),
            3
        );
        assert_eq!(got, [1, 2, 3]);
        assert!(o.push(entry(6)));
        let mut rest = Vec::new();
        o.drain(10, |p| {
            rest.push(p.seq);
            p.seq != 5
        });
        assert_eq!(rest, [4, 5], "refused at 5: 5 stays first");
        assert_eq!(o.len(), 2);
    }

    #[test]
    fn in_order_overflow_drops_everything_and_owes_a_resync_first() {
        let mut o = Outbox::in_order(2);
        assert!(o.push(entry(1)) && o.push(entry(2)));
        assert!(!o.push(entry(3)), "past the bound");
        assert!(o.holds_nothing());
        assert!(!o.is_empty(), "a resync waits");
        assert!(!o.push(entry(4)), "nothing is kept while a resync is owed");
        assert!(!o.take_resync(|| false), "refused: still owed");
        assert!(o.take_resync(|| true));
        assert!(o.is_empty());
        assert!(o.push(entry(5)));
        assert!(o.take_resync(|| panic!("nothing owed")));
    }
}
