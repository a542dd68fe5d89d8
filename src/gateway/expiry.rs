//! Tokens expire on live sockets too. A token is checked once, at the handshake; without
//! this, a `/` or `/dashboard` socket opened a minute before its token expired would go on
//! seeing presence (or the whole cluster's figures) for as long as it stayed connected. Each
//! socket opened with an expiring token is watched; when its token expires it is told why
//! (`auth:expired`) and disconnected by the server, so socket.io-client does not reconnect on
//! its own: the app reconnects with a new token.
//!
//! One heap for the replica, not a timer per socket. Entries of sockets that closed stay until
//! their time comes, so when the heap holds more than twice the sockets watched it is rebuilt
//! from the ones still connected: memory follows live sockets, not connects.

use crate::state::AppState;
use socketioxide::socket::Sid;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Mutex;
use std::time::Duration;

/// The event a socket gets just before the server disconnects it for an expired token.
pub const EXPIRED_EVENT: &str = "auth:expired";

/// Rebuilding is not worth it below this many entries.
const REBUILD_MIN: usize = 1024;

/// A watched socket: when its token stops being accepted (seconds since the epoch), its id,
/// its namespace.
type Entry = (i64, Sid, &'static str);

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
    fn take_due(&self, now: i64) -> Vec<Entry> {
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
    fn compact(&self, live: usize, current: impl Fn(Sid, &'static str) -> Option<i64>) {
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

/// Every second: disconnect the sockets whose tokens expired.
pub async fn run(state: AppState) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while state.background.tick(&mut tick).await {
        let Some(io) = state.gateway.io.get() else {
            continue;
        };
        let now = crate::domain::Timestamp::now().as_micros() / 1_000_000;
        for (exp, sid, ns) in state.gateway.expiries.take_due(now) {
            let Some(s) = io.of(ns).and_then(|n| n.get_socket(sid)) else {
                continue;
            };
            // The socket under this id may have re-joined with another token since.
            if super::token_expiry(&s) != Some(exp) {
                continue;
            }
            let _ = s.emit(
                EXPIRED_EVENT,
                &serde_json::json!({"code": "unauthorized", "message": "token expired; connect again with a new token"}),
            );
            let _ = s.disconnect();
        }
        let live =
            state.gateway.sockets.len() + io.of("/dashboard").map_or(0, |n| n.sockets().len());
        state.gateway.expiries.compact(live, |sid, ns| {
            io.of(ns)
                .and_then(|n| n.get_socket(sid))
                .and_then(|s| super::token_expiry(&s))
        });
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
