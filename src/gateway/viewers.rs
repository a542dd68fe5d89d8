//! The fan-out's routing table: this replica's `/` sockets by visibility audience, and the
//! sockets of users who must also receive their own changes.
//!
//! Socket.IO rooms could hold the same thing, but reaching a socket through them costs a
//! lookup of each sid in the namespace and of our handle in the socket's extensions, each
//! behind a lock: about a tenth of a replica's CPU under fan-out load (`perf`, 100,000
//! deliveries/s). Here one read lock hands the fan-out every socket with its handle.

use super::connection::{ConnHandle, audience_index as index};
use crate::domain::{Gender, UserId, VisibilityPolicy};
use socketioxide::extract::SocketRef;
use socketioxide::socket::Sid;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// A socket that receives presence changes, with its handle.
#[derive(Clone)]
pub struct Viewer {
    pub socket: SocketRef,
    pub handle: Arc<ConnHandle>,
}

#[derive(Default)]
pub struct Viewers(RwLock<Inner>);

#[derive(Default)]
struct Inner {
    /// Indexed by audience ([`audience_index`](super::connection::audience_index)).
    audiences: [HashMap<Sid, Viewer>; 2],
    /// Sockets whose own user is in no audience that sees them (a man, under `gender`).
    own: HashMap<UserId, Vec<Viewer>>,
}

impl Viewers {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }

    /// From now on `socket` receives the changes its handle's audience may see, and, when
    /// `policy` puts its user in no audience that sees them, the user's own changes.
    pub fn join(&self, policy: VisibilityPolicy, socket: SocketRef, handle: Arc<ConnHandle>) {
        let own = policy.self_delivery_needed(handle.conn.gender);
        let v = Viewer { socket, handle };
        let mut w = self.write();
        if own {
            w.own
                .entry(v.handle.conn.user.clone())
                .or_default()
                .push(v.clone());
        }
        let sid = v.handle.sid;
        w.audiences[index(v.handle.audience)].insert(sid, v);
    }

    /// The socket receives nothing more. Idempotent. Only `h` itself leaves: a namespace
    /// reconnect inside one Engine.IO session reuses the session's socket id, and a late
    /// leave of the old socket (its close, or the fan-out finding it closed) must not take
    /// the new socket's place with it — that viewer would stay connected and hear nothing.
    pub fn leave(&self, h: &Arc<ConnHandle>) {
        let mut w = self.write();
        let audience = &mut w.audiences[index(h.audience)];
        if audience
            .get(&h.sid)
            .is_some_and(|v| Arc::ptr_eq(&v.handle, h))
        {
            audience.remove(&h.sid);
        }
        if let Some(list) = w.own.get_mut(&h.conn.user) {
            list.retain(|v| !Arc::ptr_eq(&v.handle, h));
            if list.is_empty() {
                w.own.remove(&h.conn.user);
            }
        }
    }

    /// Every local socket allowed to see a change of `user` (of `gender`), each once.
    pub fn for_change(
        &self,
        policy: VisibilityPolicy,
        user: &UserId,
        gender: Gender,
    ) -> Vec<Viewer> {
        let r = self.read();
        let audiences = policy.audiences_for(gender);
        let own = if policy.self_delivery_needed(gender) {
            r.own.get(user).map(Vec::as_slice).unwrap_or_default()
        } else {
            &[]
        };
        let mut out = Vec::with_capacity(
            audiences
                .iter()
                .map(|a| r.audiences[index(*a)].len())
                .sum::<usize>()
                + own.len(),
        );
        for a in audiences {
            out.extend(r.audiences[index(*a)].values().cloned());
        }
        // A user's own sockets are in no audience of `audiences` (that is when they are
        // listed here), so nobody is listed twice.
        out.extend(own.iter().cloned());
        out
    }

    /// The sockets of these audiences (a user's own sockets are in theirs).
    pub fn in_audiences(&self, audiences: &[crate::domain::Audience]) -> Vec<Viewer> {
        let r = self.read();
        audiences
            .iter()
            .flat_map(|a| r.audiences[index(*a)].values().cloned())
            .collect()
    }

    /// Every socket here that receives changes, each once.
    pub fn all(&self) -> Vec<Viewer> {
        let r = self.read();
        r.audiences
            .iter()
            .flat_map(|m| m.values().cloned())
            .collect()
    }

    /// The socket with this id, while it receives changes.
    pub fn get(&self, sid: Sid) -> Option<Viewer> {
        let r = self.read();
        r.audiences.iter().find_map(|m| m.get(&sid)).cloned()
    }

    pub fn len(&self) -> usize {
        let r = self.read();
        r.audiences.iter().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
