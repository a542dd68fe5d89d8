//! A user's privacy settings (section 11): invisible ("appear offline") and who sees their
//! last seen, and how another viewer sees a presence under them.
//!
//! The settings travel with the presence ([`super::Presence::privacy`], never serialised to
//! clients): every change an engine commits carries them, so a replica decides what each
//! viewer gets from the change itself, with no read per delivery. An invisible user's
//! offline face ([`Hidden`]) is fixed when they turn invisible: the version, `lastSeen` and
//! `updatedAt` of that moment, so nothing a viewer can read steps while they stay invisible.

use super::{Presence, Status, Timestamp, UserId};
use serde::{Deserialize, Serialize};

/// Who sees a user's `lastSeen`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LastSeen {
    #[default]
    Everyone,
    Nobody,
}

impl LastSeen {
    pub fn as_str(self) -> &'static str {
        match self {
            LastSeen::Everyone => "everyone",
            LastSeen::Nobody => "nobody",
        }
    }
}

/// What others see of an invisible user: offline as of the moment they turned invisible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hidden {
    pub version: i64,
    pub last_seen: Option<Timestamp>,
    pub updated_at: Option<Timestamp>,
}

/// A user's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Privacy {
    pub invisible: bool,
    pub last_seen: LastSeen,
    /// Set exactly while `invisible`.
    pub hidden: Option<Hidden>,
}

/// `presence:set-privacy` / `PUT …/privacy`: either field may be left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrivacyChange {
    pub invisible: Option<bool>,
    pub last_seen: Option<LastSeen>,
}

/// The settings as a client reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrivacySettings {
    pub invisible: bool,
    pub last_seen: LastSeen,
}

impl Privacy {
    pub fn is_default(&self) -> bool {
        *self == Privacy::default()
    }

    pub fn settings(&self) -> PrivacySettings {
        PrivacySettings {
            invisible: self.invisible,
            last_seen: self.last_seen,
        }
    }

    /// Whether this user, as a viewer, gets no one's `lastSeen` (`LAST_SEEN_RECIPROCAL`).
    pub fn hides_others_last_seen(&self, reciprocal: bool) -> bool {
        reciprocal && self.last_seen == LastSeen::Nobody
    }
}

/// What a viewer who is not `p`'s user gets of `p`; `hides_last_seen`: the viewer's own
/// reciprocal rule. An invisible user is offline as of the moment they turned invisible.
pub fn seen_by_others(p: &Presence, hides_last_seen: bool) -> Presence {
    let mut out = match p.privacy.hidden {
        Some(h) if p.privacy.invisible => Presence {
            status: Status::Offline,
            online: false,
            details: None,
            last_seen: h.last_seen,
            updated_at: h.updated_at,
            version: h.version,
            ..p.clone()
        },
        _ => p.clone(),
    };
    if hides_last_seen || p.privacy.last_seen == LastSeen::Nobody {
        out.last_seen = None;
    }
    out
}

/// What `viewer` gets of `p` on a read (`presence:get`, listings, HTTP, search, snapshots).
pub fn seen_by(p: &Presence, viewer: &UserId, hides_last_seen: bool) -> Presence {
    if *viewer == p.user_id {
        return p.clone();
    }
    seen_by_others(p, hides_last_seen)
}

/// What the fan-out sends other viewers of a committed change: `None` while the user is
/// invisible (their changes tell others nothing), except for the change that made them
/// invisible, which others see as going offline.
pub fn pushed_to_others(p: &Presence) -> Option<()> {
    match p.privacy.hidden {
        Some(h) if p.privacy.invisible && h.version != p.version => None,
        _ => Some(()),
    }
}

/// Whether others see `p` online (listings leave out who is not).
pub fn online_to_others(p: &Presence) -> bool {
    p.online && !p.privacy.invisible
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Gender, PresenceRecord};

    fn t(ms: i64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    fn online_at(ms: i64) -> PresenceRecord {
        let mut r = PresenceRecord::new(Gender::Female);
        r.connect(Some(Gender::Female), (Status::Online, None), t(ms));
        r
    }

    fn u(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }

    #[test]
    fn invisible_is_offline_as_of_turning_invisible_and_steps_no_more() {
        let mut r = online_at(1);
        let change = PrivacyChange {
            invisible: Some(true),
            last_seen: None,
        };
        assert!(r.set_privacy(change, t(5)));
        let went = r.to_presence(u("a"));
        let seen = seen_by(&went, &u("b"), false);
        assert_eq!(
            (seen.status, seen.online, seen.last_seen, seen.version),
            (Status::Offline, false, Some(t(5)), went.version)
        );
        assert_eq!(pushed_to_others(&went), Some(()), "going invisible is told");
        assert_eq!(
            seen_by(&went, &u("a"), false),
            went,
            "they see their real self"
        );
        // Changes while invisible: the real presence moves, what others see does not.
        assert!(r.show((Status::Live, None), t(9)));
        let live = r.to_presence(u("a"));
        assert_eq!(pushed_to_others(&live), None);
        assert_eq!(seen_by(&live, &u("b"), false), seen);
        assert!(!online_to_others(&live));
        assert!(!r.set_privacy(change, t(10)), "the same setting again");
        // The last seen rule changed while invisible: the offline face is told again.
        assert!(r.set_privacy(
            PrivacyChange {
                invisible: None,
                last_seen: Some(LastSeen::Nobody)
            },
            t(10)
        ));
        let nobody = r.to_presence(u("a"));
        assert_eq!(pushed_to_others(&nobody), Some(()));
        let again = seen_by(&nobody, &u("b"), false);
        assert_eq!(
            (again.online, again.last_seen, again.version),
            (false, None, nobody.version)
        );
        // Visible again: the real presence, with a greater version.
        assert!(r.set_privacy(
            PrivacyChange {
                invisible: Some(false),
                last_seen: None
            },
            t(11)
        ));
        let back = r.to_presence(u("a"));
        assert_eq!(pushed_to_others(&back), Some(()));
        let seen = seen_by(&back, &u("b"), false);
        assert_eq!((seen.status, seen.online), (Status::Live, true));
        assert!(seen.version > nobody.version);
    }

    #[test]
    fn an_offline_user_turning_invisible_keeps_their_real_last_seen_and_version() {
        let mut r = online_at(1);
        r.disconnect(t(2));
        let before = r.to_presence(u("a"));
        r.set_privacy(
            PrivacyChange {
                invisible: Some(true),
                last_seen: None,
            },
            t(3),
        );
        let p = r.to_presence(u("a"));
        let seen = seen_by(&p, &u("b"), false);
        assert_eq!(
            (seen.last_seen, seen.updated_at, seen.version),
            (before.last_seen, before.updated_at, before.version),
            "nothing a viewer had changes"
        );
        assert_eq!(pushed_to_others(&p), None, "so nothing is told");
        // Coming online while invisible tells nobody either.
        r.connect(None, (Status::Online, None), t(4));
        let p = r.to_presence(u("a"));
        assert_eq!(pushed_to_others(&p), None);
        assert_eq!(seen_by(&p, &u("b"), false), seen);
    }

    #[test]
    fn last_seen_nobody_and_the_reciprocal_rule() {
        let mut r = online_at(1);
        r.disconnect(t(2));
        assert!(r.set_privacy(
            PrivacyChange {
                invisible: None,
                last_seen: Some(LastSeen::Nobody)
            },
            t(3)
        ));
        let p = r.to_presence(u("a"));
        assert_eq!(seen_by(&p, &u("b"), false).last_seen, None);
        assert_eq!(seen_by(&p, &u("a"), false).last_seen, Some(t(2)));
        assert_eq!(
            pushed_to_others(&p),
            Some(()),
            "viewers drop the lastSeen they had"
        );
        // A viewer who hides theirs, with the reciprocal rule, sees no one's.
        let mut other = online_at(1);
        other.disconnect(t(2));
        let q = other.to_presence(u("c"));
        assert_eq!(seen_by(&q, &u("a"), true).last_seen, None);
        assert!(p.privacy.hides_others_last_seen(true));
        assert!(!p.privacy.hides_others_last_seen(false));
    }
}
