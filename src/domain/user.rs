//! Who a presence belongs to: validated user ids and genders.

use serde::{Deserialize, Serialize};
use std::{fmt, str::FromStr, sync::Arc};

/// A user id as the token's `sub` gives it: 1 to 128 characters, no control characters.
///
/// Cloned on every event and stored per connection, so it is an `Arc<str>`: a clone is a
/// reference count, not an allocation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct UserId(Arc<str>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserIdError {
    #[error("user id must be 1 to 128 characters")]
    Length,
    #[error("user id must not contain control characters")]
    Control,
}

impl UserId {
    pub const MAX_CHARS: usize = 128;

    pub fn parse(s: &str) -> Result<Self, UserIdError> {
        let n = s.chars().count();
        if n == 0 || n > Self::MAX_CHARS {
            return Err(UserIdError::Length);
        }
        if s.chars().any(char::is_control) {
            return Err(UserIdError::Control);
        }
        Ok(UserId(Arc::from(s)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for UserId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        UserId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The three genders the visibility rule knows.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Gender {
    Male,
    Female,
    /// Also what a user whose gender nobody told us is taken to be.
    #[default]
    Other,
}

impl Gender {
    pub const ALL: [Gender; 3] = [Gender::Male, Gender::Female, Gender::Other];

    pub fn as_str(self) -> &'static str {
        match self {
            Gender::Male => "male",
            Gender::Female => "female",
            Gender::Other => "other",
        }
    }

    /// A dense index, for per-gender counters.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl FromStr for Gender {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "male" => Ok(Gender::Male),
            "female" => Ok(Gender::Female),
            "other" => Ok(Gender::Other),
            _ => Err(()),
        }
    }
}

impl fmt::Display for Gender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_are_bounded() {
        assert!(UserId::parse("u1").is_ok());
        assert_eq!(UserId::parse(""), Err(UserIdError::Length));
        assert!(UserId::parse(&"x".repeat(128)).is_ok());
        assert_eq!(UserId::parse(&"x".repeat(129)), Err(UserIdError::Length));
        // Characters, not bytes.
        assert!(UserId::parse(&"é".repeat(128)).is_ok());
        assert_eq!(UserId::parse("a\nb"), Err(UserIdError::Control));
    }

    #[test]
    fn genders_parse_exactly() {
        assert_eq!("female".parse(), Ok(Gender::Female));
        assert_eq!("Female".parse::<Gender>(), Err(()));
        assert_eq!("".parse::<Gender>(), Err(()));
    }
}
