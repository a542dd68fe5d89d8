//! Ids the database does not know, remembered for a minute. `presence:get` and
//! `presence:subscribe` ask the database about users the presence engine has never seen (or
//! forgot); without this, a client naming hundreds of made-up ids, again and again, made a
//! database query of each request. A remembered id is answered "never seen" without asking.
//! A user who then signs up is found by the engine as soon as they connect, and the database
//! is asked again about them a minute later at most.

use crate::domain::UserId;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long an unknown id is remembered.
const TTL: Duration = Duration::from_secs(60);
/// Ids kept at most; past it the expired go, and if that freed less than a tenth, all of them
/// (a few freed would leave the next insert to scan the table again).
const CAP: usize = 100_000;

#[derive(Default)]
pub struct UnknownIds {
    until: Mutex<HashMap<UserId, Instant>>,
}

impl UnknownIds {
    /// Of `ids`, those not remembered as unknown.
    pub fn worth_asking(&self, ids: &[UserId]) -> Vec<UserId> {
        let now = Instant::now();
        let map = self.until.lock().unwrap_or_else(|e| e.into_inner());
        ids.iter()
            .filter(|id| map.get(*id).is_none_or(|until| *until <= now))
            .cloned()
            .collect()
    }

    /// The database was asked about these and knows none of them.
    pub fn remember(&self, ids: impl IntoIterator<Item = UserId>) {
        let now = Instant::now();
        let mut map = self.until.lock().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            if map.len() >= CAP {
                map.retain(|_, until| *until > now);
                if map.len() >= CAP * 9 / 10 {
                    map.clear();
                }
            }
            map.insert(id, now + TTL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_ids_are_not_asked_about_again() {
        let u = UnknownIds::default();
        let ids: Vec<UserId> = ["a", "b", "c"]
            .iter()
            .map(|s| UserId::parse(s).unwrap())
            .collect();
        assert_eq!(u.worth_asking(&ids), ids);
        u.remember(ids[..2].iter().cloned());
        assert_eq!(u.worth_asking(&ids), vec![ids[2].clone()]);
    }
}
