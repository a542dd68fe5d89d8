//! This replica's view of blocks (section 11), for the users connected here: whom each is
//! hidden from both ways, and, for the fan-out, which local users a user's changes must skip.
//!
//! Loaded at a user's first handshake here, kept current by the blocks every replica hears of
//! (`crate::blocks`), dropped with their last connection here. The fan-out reads one entry per
//! change (shared, never copied) and checks a viewer against it only when the changed user
//! has blocks with someone connected here: no store is read per delivery.

use super::hidden::HiddenSet;
use crate::domain::UserId;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

/// A set shared with readers; copied on write only while a reader holds it.
pub type Hidden = Arc<HiddenSet>;

#[derive(Default)]
pub struct BlockIndex(RwLock<Inner>);

#[derive(Default)]
struct Inner {
    /// Local users: whom they are hidden from (both ways), and their connections here.
    users: HashMap<UserId, (Hidden, HashSet<Arc<str>>)>,
    /// For a user anywhere: the local users hidden from them.
    from: HashMap<UserId, Hidden>,
}

fn add(map: &mut HashMap<UserId, Hidden>, key: &UserId, v: &UserId) {
    Arc::make_mut(map.entry(key.clone()).or_default()).insert(v.clone());
}

fn remove(map: &mut HashMap<UserId, Hidden>, key: &UserId, v: &UserId) {
    if let Some(set) = map.get_mut(key) {
        Arc::make_mut(set).remove(v);
        if set.is_empty() {
            map.remove(key);
        }
    }
}

impl BlockIndex {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `user` has a connection here (their blocks are loaded).
    pub fn holds(&self, user: &UserId) -> bool {
        self.read().users.contains_key(user)
    }

    /// Connection `conn` of `user` is here. Returns whether they had none here yet: then
    /// their blocks are to be read from the store and [merged](Self::merge) in (blocks
    /// announced meanwhile already apply).
    pub fn hold(&self, user: &UserId, conn: &Arc<str>) -> bool {
        let mut w = self.write();
        if let Some((_, conns)) = w.users.get_mut(user) {
            conns.insert(conn.clone());
            return false;
        }
        w.users.insert(
            user.clone(),
            (Arc::default(), HashSet::from([conn.clone()])),
        );
        true
    }

    /// Add `read` (the user's blocks both ways, from the store) to what `user` is hidden from.
    pub fn merge(&self, user: &UserId, read: HashSet<UserId>) {
        let mut guard = self.write();
        let w = &mut *guard;
        let Some((hidden, _)) = w.users.get_mut(user) else {
            return;
        };
        let set = Arc::make_mut(hidden);
        for other in read {
            add(&mut w.from, &other, user);
            set.insert(other);
        }
    }

    /// Connection `conn` of `user` is gone; with their last one, their blocks go. Idempotent.
    pub fn release(&self, user: &UserId, conn: &Arc<str>) {
        let mut guard = self.write();
        let w = &mut *guard;
        let Some((hidden, conns)) = w.users.get_mut(user) else {
            return;
        };
        conns.remove(conn);
        if !conns.is_empty() {
            return;
        }
        let hidden = hidden.clone();
        w.users.remove(user);
        for other in hidden.users() {
            remove(&mut w.from, other, user);
        }
    }

    /// A block between `a` and `b` was made (`on`) or lifted, on any replica. Returns which of
    /// the two are connected here.
    pub fn apply(&self, a: &UserId, b: &UserId, on: bool) -> (bool, bool) {
        let mut guard = self.write();
        let w = &mut *guard;
        let mut here = (false, false);
        for (me, them, flag) in [(a, b, &mut here.0), (b, a, &mut here.1)] {
            let Some((hidden, _)) = w.users.get_mut(me) else {
                continue;
            };
            *flag = true;
            if on {
                Arc::make_mut(hidden).insert(them.clone());
                add(&mut w.from, them, me);
            } else {
                Arc::make_mut(hidden).remove(them);
                remove(&mut w.from, them, me);
            }
        }
        here
    }

    /// Replace local user `user`'s blocks (reloaded after announcements were missed).
    /// Returns whom they are hidden from now and were not (blocks made meanwhile), and the
    /// reverse (lifted): what their sockets were never told.
    pub fn replace(&self, user: &UserId, hidden: HashSet<UserId>) -> (Vec<UserId>, Vec<UserId>) {
        let mut guard = self.write();
        let w = &mut *guard;
        let Some((old, _)) = w.users.get_mut(user) else {
            return Default::default();
        };
        let old = std::mem::replace(old, Arc::new(HiddenSet::from(hidden.clone())));
        let made = hidden.difference(old.users()).cloned().collect();
        let lifted = old.users().difference(&hidden).cloned().collect();
        for other in old.users() {
            remove(&mut w.from, other, user);
        }
        for other in &hidden {
            add(&mut w.from, other, user);
        }
        (made, lifted)
    }

    /// The local users `user`'s changes must not reach.
    pub fn hidden_from(&self, user: &UserId) -> Option<Hidden> {
        self.read().from.get(user).cloned()
    }

    /// Whom local user `user` is hidden from (`None` if they have no connection here).
    pub fn of(&self, user: &UserId) -> Option<Hidden> {
        self.read().users.get(user).map(|(h, _)| h.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }

    #[test]
    fn held_while_a_connection_stays_both_ways_and_kept_current() {
        let ix = BlockIndex::default();
        let (c1, c2): (Arc<str>, Arc<str>) = ("c1".into(), "c2".into());
        assert!(ix.hold(&u("a"), &c1));
        ix.merge(&u("a"), HashSet::from([u("x")]));
        assert!(!ix.hold(&u("a"), &c2), "read once");
        assert!(ix.hidden_from(&u("x")).unwrap().contains(&u("a")));
        // A block made elsewhere between a (here) and y (not here).
        assert_eq!(ix.apply(&u("y"), &u("a"), true), (false, true));
        assert!(ix.hidden_from(&u("y")).unwrap().contains(&u("a")));
        assert!(ix.of(&u("a")).unwrap().contains(&u("y")));
        assert_eq!(ix.apply(&u("a"), &u("y"), false), (true, false));
        assert!(ix.hidden_from(&u("y")).is_none());
        ix.release(&u("a"), &c1);
        assert!(ix.holds(&u("a")), "one connection left");
        ix.release(&u("a"), &c2);
        ix.release(&u("a"), &c2);
        assert!(!ix.holds(&u("a")));
        assert!(
            ix.hidden_from(&u("x")).is_none(),
            "gone with the last connection"
        );
    }

    #[test]
    fn a_reload_says_what_changed_meanwhile() {
        let ix = BlockIndex::default();
        let c: Arc<str> = "c".into();
        ix.hold(&u("a"), &c);
        ix.merge(&u("a"), HashSet::from([u("x"), u("y")]));
        let (made, lifted) = ix.replace(&u("a"), HashSet::from([u("y"), u("z")]));
        assert_eq!((made, lifted), (vec![u("z")], vec![u("x")]));
        assert!(ix.hidden_from(&u("x")).is_none());
        assert!(ix.hidden_from(&u("z")).unwrap().contains(&u("a")));
        assert_eq!(
            ix.replace(&u("b"), HashSet::from([u("x")])),
            (vec![], vec![]),
            "not here"
        );
    }
}
