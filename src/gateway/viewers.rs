//! The fan-out's routing table: this replica's `/` sockets by visibility audience, the
//! sockets of users who must also receive their own changes, and subscription sockets
//! (section 9) by the users they subscribed to — so a change costs work for the sockets that
//! receive it, not for every socket connected.
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
use std::sync::{Arc, OnceLock, RwLock};

/// A socket that receives presence changes, with its handle.
#[derive(Clone)]
pub struct Viewer {
    pub socket: SocketRef,
    pub handle: Arc<ConnHandle>,
}

#[derive(Default)]
pub struct Viewers {
    inner: RwLock<Inner>,
    /// `presence_subscriptions`: subscribed ids over all sockets here (set once at start).
    gauge: OnceLock<metrics::Gauge>,
}

#[derive(Default)]
struct Inner {
    /// Broadcast sockets, indexed by audience ([`audience_index`](super::connection::audience_index)).
    audiences: [HashMap<Sid, Viewer>; 2],
    /// Broadcast sockets whose own user is in no audience that sees them (a man, under `gender`).
    own: HashMap<UserId, Vec<Viewer>>,
    /// Subscription sockets.
    subscribing: HashMap<Sid, Viewer>,
    /// Subscription sockets by their own user (who always receives their own changes).
    selves: HashMap<UserId, Vec<Viewer>>,
    /// Subscription sockets by the users they subscribed to.
    subscribers: HashMap<UserId, Vec<Viewer>>,
}

/// Why a subscription was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum SubscribeError {
    /// Past `PRESENCE_MAX_SUBSCRIPTIONS`: nothing was added.
    TooMany(usize),
    /// The socket no longer receives changes (it closed).
    Closed,
}

fn remove_from(map: &mut HashMap<UserId, Vec<Viewer>>, user: &UserId, h: &Arc<ConnHandle>) {
    if let Some(list) = map.get_mut(user) {
        list.retain(|v| !Arc::ptr_eq(&v.handle, h));
        if list.is_empty() {
            map.remove(user);
        }
    }
}

impl Viewers {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Report the subscription count to this gauge from now on.
    pub fn count_subscriptions_in(&self, g: metrics::Gauge) {
        let _ = self.gauge.set(g);
    }

    fn subscriptions_changed(&self, delta: f64) {
        if let Some(g) = self.gauge.get() {
            g.increment(delta);
        }
    }

    /// From now on `socket` receives what its handle's mode asks for: a broadcast socket the
    /// changes its audience may see (and, when `policy` puts its user in no audience that
    /// sees them, the user's own); a subscription socket its own user's, and its
    /// subscriptions' once it has some.
    pub fn join(&self, policy: VisibilityPolicy, socket: SocketRef, handle: Arc<ConnHandle>) {
        let v = Viewer { socket, handle };
        let user = v.handle.conn.user.clone();
        let sid = v.handle.sid;
        let mut w = self.write();
        if v.handle.mode.subscriptions {
            w.selves.entry(user).or_default().push(v.clone());
            w.subscribing.insert(sid, v);
            return;
        }
        if policy.self_delivery_needed(v.handle.conn.gender) {
            w.own.entry(user).or_default().push(v.clone());
        }
        w.audiences[index(v.handle.audience)].insert(sid, v);
    }

    /// The socket receives nothing more, and its subscriptions end. Idempotent. Only `h`
    /// itself leaves: a namespace reconnect inside one Engine.IO session reuses the session's
    /// socket id, and a late leave of the old socket (its close, or the fan-out finding it
    /// closed) must not take the new socket's place with it — that viewer would stay
    /// connected and hear nothing.
    pub fn leave(&self, h: &Arc<ConnHandle>) {
        let mut w = self.write();
        let user = &h.conn.user;
        if h.mode.subscriptions {
            if !w
                .subscribing
                .get(&h.sid)
                .is_some_and(|v| Arc::ptr_eq(&v.handle, h))
            {
                return;
            }
            w.subscribing.remove(&h.sid);
            remove_from(&mut w.selves, user, h);
            let mut subs = h.subscriptions();
            for id in subs.iter() {
                remove_from(&mut w.subscribers, id, h);
            }
            self.subscriptions_changed(-(subs.len() as f64));
            subs.clear();
            return;
        }
        let audience = &mut w.audiences[index(h.audience)];
        if audience
            .get(&h.sid)
            .is_some_and(|v| Arc::ptr_eq(&v.handle, h))
        {
            audience.remove(&h.sid);
        }
        remove_from(&mut w.own, user, h);
    }

    /// Subscribe `h` to `ids` as well; returns the ids that were new and how many it holds now.
    /// Past `max` nothing is added.
    pub fn subscribe(
        &self,
        h: &Arc<ConnHandle>,
        ids: &[UserId],
        max: usize,
    ) -> Result<(Vec<UserId>, usize), SubscribeError> {
        let mut w = self.write();
        let Some(v) = w
            .subscribing
            .get(&h.sid)
            .filter(|v| Arc::ptr_eq(&v.handle, h))
            .cloned()
        else {
            return Err(SubscribeError::Closed);
        };
        let mut subs = h.subscriptions();
        let new: Vec<UserId> = ids.iter().filter(|u| !subs.contains(*u)).cloned().collect();
        if subs.len() + new.len() > max {
            return Err(SubscribeError::TooMany(max));
        }
        for id in &new {
            subs.insert(id.clone());
            w.subscribers.entry(id.clone()).or_default().push(v.clone());
        }
        self.subscriptions_changed(new.len() as f64);
        Ok((new, subs.len()))
    }

    /// End `h`'s subscriptions to `ids` (all of them with `None`); returns how many remain.
    pub fn unsubscribe(&self, h: &Arc<ConnHandle>, ids: Option<&[UserId]>) -> usize {
        let mut w = self.write();
        let mut subs = h.subscriptions();
        let gone: Vec<UserId> = match ids {
            None => subs.drain().collect(),
            Some(ids) => ids.iter().filter(|u| subs.remove(*u)).cloned().collect(),
        };
        for id in &gone {
            remove_from(&mut w.subscribers, id, h);
        }
        self.subscriptions_changed(-(gone.len() as f64));
        subs.len()
    }

    /// The subscription sockets subscribed to `user`.
    pub fn subscribers_of(&self, user: &UserId) -> Vec<Viewer> {
        self.read()
            .subscribers
            .get(user)
            .cloned()
            .unwrap_or_default()
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
        // Subscription sockets are in no audience: their own user's, then those subscribed
        // to the user who may see them (a socket subscribed to itself is listed once).
        if let Some(selves) = r.selves.get(user) {
            out.extend(selves.iter().cloned());
        }
        if let Some(subs) = r.subscribers.get(user) {
            out.extend(
                subs.iter()
                    .filter(|v| {
                        let c = &v.handle.conn;
                        c.user != *user
                            && policy.can_see((c.user.as_str(), c.gender), (user.as_str(), gender))
                    })
                    .cloned(),
            );
        }
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
            .chain(std::iter::once(&r.subscribing))
            .flat_map(|m| m.values().cloned())
            .collect()
    }

    /// The socket with this id, while it receives changes.
    pub fn get(&self, sid: Sid) -> Option<Viewer> {
        let r = self.read();
        r.audiences
            .iter()
            .chain(std::iter::once(&r.subscribing))
            .find_map(|m| m.get(&sid))
            .cloned()
    }

    pub fn len(&self) -> usize {
        let r = self.read();
        r.audiences.iter().map(HashMap::len).sum::<usize>() + r.subscribing.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
