//! A user's presence and the rules for changing it.
//!
//! [`PresenceRecord`] is what an engine stores per user; its methods are the only way a
//! presence changes, and each says whether the change is real (and so must be announced).
//! The version rule `max(previous + 1, now in µs)` keeps versions growing cluster-wide
//! without coordination, even across a Redis that lost its data, and stays below 2^53.

use super::{Gender, Timestamp, UserId};
use serde::Serialize;
use std::{fmt, str::FromStr, sync::Arc};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Online,
    Offline,
    Live,
    InCall,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Online => "online",
            Status::Offline => "offline",
            Status::Live => "live",
            Status::InCall => "in_call",
        }
    }

    /// A status a client may set: any but `offline`, which follows from closing every
    /// connection. The one place this rule is written; every path that sets a status asks it.
    pub fn settable(self) -> Result<Status, StatusError> {
        match self {
            Status::Offline => Err(StatusError::OfflineNotSettable),
            s => Ok(s),
        }
    }

    /// Whether a status carries `details` (the others always have `details: null`).
    pub fn keeps_details(self) -> bool {
        matches!(self, Status::Live | Status::InCall)
    }
}

impl FromStr for Status {
    type Err = StatusError;
    fn from_str(s: &str) -> Result<Self, StatusError> {
        match s {
            "online" => Ok(Status::Online),
            "offline" => Ok(Status::Offline),
            "live" => Ok(Status::Live),
            "in_call" => Ok(Status::InCall),
            _ => Err(StatusError::Unknown),
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatusError {
    #[error("status must be one of online, live, in_call")]
    Unknown,
    #[error("offline cannot be set; it follows from closing every connection")]
    OfflineNotSettable,
    #[error("details must be a JSON object")]
    DetailsNotObject,
    #[error("details must be at most 2048 bytes as JSON")]
    DetailsTooLarge,
    #[error("details: text must not contain the NUL character (\\u0000)")]
    DetailsUnstorable,
}

/// The object given with `live`/`in_call`: a JSON object of at most 2 KiB.
/// Shared, because one change is serialised to many viewers and kept in the record.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Details(Arc<serde_json::Value>);

impl Details {
    pub const MAX_BYTES: usize = 2048;

    pub fn parse(v: serde_json::Value) -> Result<Self, StatusError> {
        if !v.is_object() {
            return Err(StatusError::DetailsNotObject);
        }
        // Counting the serialised form is what "2 KiB as JSON" means to a client.
        let len = serde_json::to_vec(&v)
            .map(|b| b.len())
            .unwrap_or(usize::MAX);
        if len > Self::MAX_BYTES {
            return Err(StatusError::DetailsTooLarge);
        }
        if !super::text::json_storable(&v) {
            return Err(StatusError::DetailsUnstorable);
        }
        Ok(Details(Arc::new(v)))
    }

    pub fn value(&self) -> &serde_json::Value {
        &self.0
    }
}

/// The presence object of the contract, as clients receive it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Presence {
    #[schema(value_type = String)]
    pub user_id: UserId,
    pub status: Status,
    pub online: bool,
    pub gender: Gender,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_seen: Option<Timestamp>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub updated_at: Option<Timestamp>,
    pub version: i64,
    #[schema(value_type = Option<Object>)]
    pub details: Option<Details>,
    /// The user's settings (section 11): they decide what other viewers get of this
    /// presence ([`super::privacy`]); never sent as such.
    #[serde(skip)]
    pub privacy: super::Privacy,
}

impl Presence {
    /// What viewers who may no longer see this user (their gender changed) are told: gone,
    /// offline since this change, with this change's version (so it supersedes what they
    /// showed) and the gender they knew, not the new one.
    pub fn gone_for(&self, known_gender: Gender) -> Presence {
        Presence {
            status: Status::Offline,
            online: false,
            gender: known_gender,
            last_seen: self.updated_at,
            details: None,
            ..self.clone()
        }
    }

    /// A user nobody has seen: offline, version 0, never updated.
    pub fn unseen(user_id: UserId, gender: Gender) -> Self {
        PresenceRecord::new(gender).to_presence(user_id)
    }
}

/// What an engine keeps per user.
#[derive(Debug, Clone, PartialEq)]
pub struct PresenceRecord {
    pub gender: Gender,
    pub status: Status,
    pub details: Option<Details>,
    pub last_seen: Option<Timestamp>,
    pub updated_at: Option<Timestamp>,
    pub version: i64,
    pub privacy: super::Privacy,
}

/// The next version after `previous` at `now`.
pub fn next_version(previous: i64, now: Timestamp) -> i64 {
    (previous + 1).max(now.as_micros())
}

impl PresenceRecord {
    pub fn new(gender: Gender) -> Self {
        PresenceRecord {
            gender,
            status: Status::Offline,
            details: None,
            last_seen: None,
            updated_at: None,
            version: 0,
            privacy: super::Privacy::default(),
        }
    }

    pub fn is_online(&self) -> bool {
        self.status != Status::Offline
    }

    fn bump(&mut self, now: Timestamp) {
        self.version = next_version(self.version, now);
        self.updated_at = Some(now);
    }

    /// A connection of this user is live. Returns whether that changed anything: going from
    /// offline to `online`, or a new connection whose token (or database row) now gives
    /// another gender (which moves the user between audiences, so viewers must hear of it).
    /// `gender` is `None` for a connection that is not new (a revival): the newest handshake
    /// decides the gender, and an older connection speaking again must not undo it. `shown`
    /// is the best of the user's live connections' statuses with this one
    /// ([`super::devices::best`]): a status held through a grace by a connection that closed
    /// gives way to them. One change, one version.
    pub fn connect(
        &mut self,
        gender: Option<Gender>,
        shown: (Status, Option<Details>),
        now: Timestamp,
    ) -> bool {
        let mut changed = false;
        if let Some(gender) = gender
            && self.gender != gender
        {
            self.gender = gender;
            changed = true;
        }
        if !self.is_online() {
            self.status = Status::Online;
            self.details = None;
            self.last_seen = None;
            changed = true;
        }
        if (self.status, &self.details) != (shown.0, &shown.1) {
            (self.status, self.details) = shown;
            changed = true;
        }
        if changed {
            self.bump(now);
        }
        changed
    }

    /// Show `shown`, the best of the user's live connections' statuses
    /// ([`super::devices::best`]), after one of them set a status or closed. Returns whether
    /// that is a change (an offline user shows nothing: their connections are gone).
    pub fn show(&mut self, shown: (Status, Option<Details>), now: Timestamp) -> bool {
        if !self.is_online() || (self.status, &self.details) == (shown.0, &shown.1) {
            return false;
        }
        (self.status, self.details) = shown;
        self.last_seen = None;
        self.bump(now);
        true
    }

    /// The user's last connection is gone. Returns whether they were online.
    pub fn disconnect(&mut self, now: Timestamp) -> bool {
        if !self.is_online() {
            return false;
        }
        self.status = Status::Offline;
        self.details = None;
        self.last_seen = Some(now);
        self.bump(now);
        true
    }

    pub fn to_presence(&self, user_id: UserId) -> Presence {
        Presence {
            user_id,
            status: self.status,
            online: self.is_online(),
            gender: self.gender,
            last_seen: self.last_seen,
            updated_at: self.updated_at,
            version: self.version,
            details: self.details.clone(),
            privacy: self.privacy,
        }
    }

    /// `presence:set-privacy`: a change of either setting is a change (announced; what each
    /// viewer gets of it is [`super::privacy`]'s to say). Turning invisible fixes what others
    /// see from now on: offline as of now if the user was online, else their presence as it
    /// was (nothing they knew changes).
    pub fn set_privacy(&mut self, change: super::PrivacyChange, now: Timestamp) -> bool {
        let invisible = change.invisible.unwrap_or(self.privacy.invisible);
        let last_seen = change.last_seen.unwrap_or(self.privacy.last_seen);
        if (invisible, last_seen) == (self.privacy.invisible, self.privacy.last_seen) {
            return false;
        }
        let was = (self.version, self.last_seen, self.updated_at);
        self.bump(now);
        self.privacy.last_seen = last_seen;
        if invisible != self.privacy.invisible {
            self.privacy.invisible = invisible;
            self.privacy.hidden = invisible.then(|| {
                if self.is_online() {
                    super::privacy::Hidden {
                        version: self.version,
                        last_seen: Some(now),
                        updated_at: Some(now),
                    }
                } else {
                    super::privacy::Hidden {
                        version: was.0,
                        last_seen: was.1,
                        updated_at: was.2,
                    }
                }
            });
        } else if let Some(h) = self.privacy.hidden.as_mut() {
            // Invisible still, the last seen rule changed: others get their offline face
            // again, under this change's version (the same version must not read two ways).
            h.version = self.version;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(ms: i64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    #[test]
    fn versions_grow_even_when_the_clock_does_not() {
        assert_eq!(next_version(0, t(5)), 5000);
        assert_eq!(next_version(5000, t(5)), 5001, "same instant");
        assert_eq!(
            next_version(9000, t(5)),
            9001,
            "clock behind the previous version"
        );
        // Realistic clocks stay far below 2^53, JavaScript's exact-integer limit.
        assert!(next_version(0, t(4_102_444_800_000)) < (1 << 53));
    }

    #[test]
    fn lifecycle() {
        let on = (Status::Online, None);
        let mut r = PresenceRecord::new(Gender::Female);
        assert!(r.connect(Some(Gender::Female), on.clone(), t(1)));
        assert!(
            !r.connect(Some(Gender::Female), on.clone(), t(2)),
            "a second connection is not a change"
        );
        let d = Details::parse(json!({"streamId": "s1"})).unwrap();
        assert!(r.show((Status::Live, Some(d.clone())), t(3)));
        assert!(
            !r.show((Status::Live, Some(d)), t(4)),
            "same status and details"
        );
        let d2 = Details::parse(json!({"streamId": "s2"})).unwrap();
        assert!(
            r.show((Status::Live, Some(d2.clone())), t(5)),
            "new details are a change"
        );
        let v = r.version;
        assert!(
            r.connect(None, (Status::Online, None), t(6)),
            "a connection back after a grace whose status left with its connection"
        );
        assert_eq!((r.status, r.details.clone()), (Status::Online, None));
        assert_eq!(r.version, next_version(v, t(6)), "one change, one version");
        let v = r.version;
        assert!(r.disconnect(t(7)));
        assert!(r.version > v);
        let p = r.to_presence(UserId::parse("u").unwrap());
        assert_eq!(
            (p.status, p.online, p.last_seen),
            (Status::Offline, false, Some(t(7)))
        );
        assert!(!r.disconnect(t(8)), "offline twice is one change");
        assert!(
            !r.show((Status::Live, Some(d2)), t(8)),
            "offline shows nothing"
        );
        assert!(r.connect(Some(Gender::Female), on, t(9)));
        assert_eq!(
            (r.status, r.last_seen),
            (Status::Online, None),
            "status resets on return"
        );
    }

    #[test]
    fn details_are_bounded() {
        assert_eq!(
            Details::parse(json!([1])),
            Err(StatusError::DetailsNotObject)
        );
        let big = json!({"x": "y".repeat(2100)});
        assert_eq!(Details::parse(big), Err(StatusError::DetailsTooLarge));
        assert_eq!("busy".parse::<Status>(), Err(StatusError::Unknown));
    }

    #[test]
    fn serialises_as_the_contract_says() {
        let p = Presence::unseen(UserId::parse("u1").unwrap(), Gender::Other);
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            json!({"userId":"u1","status":"offline","online":false,"gender":"other",
                   "lastSeen":null,"updatedAt":null,"version":0,"details":null})
        );
    }
}
