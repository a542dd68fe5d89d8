//! Who may see whom.
//!
//! Under the `gender` policy a male viewer sees only female users, while female and other
//! viewers see everyone; under `all` everyone sees everyone; a user always sees themselves.
//! Pushing updates must not cost a visibility check per viewer per change, so the rule is
//! also expressed as *audiences*: every viewer belongs to exactly one
//! audience, and a change is sent to the few audiences allowed to see its user, which a
//! transport maps to rooms.

use super::Gender;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum VisibilityPolicy {
    #[default]
    Gender,
    All,
}

/// A group of viewers who see the same set of users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Audience {
    /// Viewers who see everyone (female and other viewers, or everybody under `all`).
    Everyone,
    /// Viewers who see only female users (male viewers under `gender`).
    FemaleOnly,
}

impl Audience {
    pub fn as_str(self) -> &'static str {
        match self {
            Audience::Everyone => "everyone",
            Audience::FemaleOnly => "female-only",
        }
    }
}

/// A small set of genders, as a bit mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenderSet(u8);

impl GenderSet {
    pub const ALL: GenderSet = GenderSet(0b111);
    pub const NONE: GenderSet = GenderSet(0);

    pub fn only(g: Gender) -> Self {
        GenderSet(1 << g.index())
    }

    pub fn contains(self, g: Gender) -> bool {
        self.0 & (1 << g.index()) != 0
    }

    pub fn iter(self) -> impl Iterator<Item = Gender> {
        Gender::ALL.into_iter().filter(move |g| self.contains(*g))
    }
}

impl VisibilityPolicy {
    /// The audience a viewer of this gender belongs to.
    pub fn audience_of(self, viewer: Gender) -> Audience {
        match (self, viewer) {
            (VisibilityPolicy::Gender, Gender::Male) => Audience::FemaleOnly,
            _ => Audience::Everyone,
        }
    }

    /// The genders a viewer of this gender sees (themselves aside).
    pub fn visible_genders(self, viewer: Gender) -> GenderSet {
        match self.audience_of(viewer) {
            Audience::Everyone => GenderSet::ALL,
            Audience::FemaleOnly => GenderSet::only(Gender::Female),
        }
    }

    /// Whether `viewer` may see `target`. Identity wins over gender.
    pub fn can_see(self, viewer: (&str, Gender), target: (&str, Gender)) -> bool {
        viewer.0 == target.0 || self.visible_genders(viewer.1).contains(target.1)
    }

    /// The audiences that must receive a change of a user of this gender.
    pub fn audiences_for(self, target: Gender) -> &'static [Audience] {
        match (self, target) {
            (VisibilityPolicy::Gender, Gender::Female) => {
                &[Audience::Everyone, Audience::FemaleOnly]
            }
            _ => &[Audience::Everyone],
        }
    }

    /// The audiences that could see a user of gender `from` and may not see them as `to`:
    /// they must be told the user is gone, and then hear nothing more of them.
    pub fn audiences_lost(self, from: Gender, to: Gender) -> Vec<Audience> {
        let now = self.audiences_for(to);
        self.audiences_for(from)
            .iter()
            .copied()
            .filter(|a| !now.contains(a))
            .collect()
    }

    /// Whether the user's own connections miss a change of theirs when only
    /// [`audiences_for`](Self::audiences_for) receive it, so it must also be sent to them
    /// directly (a male user, under `gender`, is in no audience that sees males).
    pub fn self_delivery_needed(self, target: Gender) -> bool {
        !self
            .audiences_for(target)
            .contains(&self.audience_of(target))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Gender::*;

    /// The audience routing must give exactly the same answer as `can_see`, for every pair,
    /// and deliver to nobody twice.
    #[test]
    fn audiences_match_can_see() {
        for policy in [VisibilityPolicy::Gender, VisibilityPolicy::All] {
            for viewer in Gender::ALL {
                for target in Gender::ALL {
                    let routed = policy
                        .audiences_for(target)
                        .contains(&policy.audience_of(viewer));
                    assert_eq!(
                        routed,
                        policy.can_see(("v", viewer), ("t", target)),
                        "{policy:?} {viewer} sees {target}"
                    );
                }
                // Themselves: through an audience or directly, exactly once.
                let via_audience = policy
                    .audiences_for(viewer)
                    .contains(&policy.audience_of(viewer));
                assert!(via_audience ^ policy.self_delivery_needed(viewer));
            }
        }
    }

    #[test]
    fn the_gender_rule() {
        let p = VisibilityPolicy::Gender;
        assert!(p.can_see(("m", Male), ("f", Female)));
        assert!(!p.can_see(("m", Male), ("m2", Male)));
        assert!(!p.can_see(("m", Male), ("o", Other)));
        assert!(
            p.can_see(("m", Male), ("m", Male)),
            "a user always sees themselves"
        );
        for v in [Female, Other] {
            for t in Gender::ALL {
                assert!(p.can_see(("v", v), ("t", t)));
            }
        }
        assert!(VisibilityPolicy::All.can_see(("m", Male), ("m2", Male)));
    }
}
