//! Sockets whose tokens expire, soonest first, for [`super::expiry`] to close. One heap for
//! the replica, not a timer per socket. Entries of sockets that closed stay until their time
//! comes, so when the heap holds more than twice the sockets watched it is rebuilt from the
//! ones still connected: memory follows live sockets, not connects.

use socketioxide::socket::Sid;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Mutex;

/// Rebuilding is not worth it below this many entries.
const REBUILD_MIN: usize = 1024;

/// A watched socket: when its token stops being accepted (seconds since the epoch), its id,
/// its namespace.
pub type Entry = (i64, Sid, &'static str);

/// Sockets whose tokens expire, soonest first.
#[derive(Default)]
pub struct Expiries {
    due: Mutex<BinaryHeap<Reverse<Entry>>>,
}

impl Expiries {
    /// Watch socket `sid` of `namespace`, opened with a token expiring at `exp`.
    pub fn watch(&self, exp: i64, sid: Sid, namespace: &'static str) {
        self.lock().push(Reverse((exp, sid, namespace)));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BinaryHeap<Reverse<Entry>>> {
        self.due.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Entries due at `now` (seconds since the epoch), taken out.
    pub fn take_due(&self, now: i64) -> Vec<Entry> {
        let mut heap = self.lock();
        let mut out = Vec::new();
        while heap.peek().is_some_and(|Reverse((exp, _, _))| *exp <= now) {
            if let Some(Reverse(e)) = heap.pop() {
                out.push(e);
            }
        }
        out
    }

    /// Keep only the entries of sockets still connected with that very expiry (`current` says
    /// a socket's, `None` when it is gone), one per socket, if others have piled up: closed
    /// sockets, and rejoins of one session (each join is watched).
    pub fn compact(&self, live: usize, current: impl Fn(Sid, &'static str) -> Option<i64>) {
        let mut heap = self.lock();
        if heap.len() < REBUILD_MIN || heap.len() <= 2 * live {
            return;
        }
        let mut seen = std::collections::HashSet::new();
        let kept: Vec<_> = std::mem::take(&mut *heap)
            .into_vec()
            .into_iter()
            .filter(|Reverse((exp, sid, ns))| {
                current(*sid, ns) == Some(*exp) && seen.insert((*sid, *ns))
            })
            .collect();
        *heap = BinaryHeap::from(kept);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_entries_come_out_in_order_and_closed_ones_are_compacted_away() {
        let e = Expiries::default();
        let (a, b, c) = (Sid::new(), Sid::new(), Sid::new());
        e.watch(30, a, "/");
        e.watch(10, b, "/dashboard");
        e.watch(20, c, "/");
        assert_eq!(e.take_due(20), vec![(10, b, "/dashboard"), (20, c, "/")]);
        assert_eq!(e.len(), 1);
        for _ in 0..REBUILD_MIN * 2 {
            e.watch(99, Sid::new(), "/");
        }
        e.watch(30, a, "/");
        e.compact(10, |sid, _| (sid == a).then_some(30));
        assert_eq!(e.len(), 1, "only the live socket's entry is left, once");
    }
}
