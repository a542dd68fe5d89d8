//! Statuses per device (section 11): a status set with `presence:set-status` belongs to the
//! connection that set it, and the user's status is the best of their live connections'.
//!
//! A user's status as a whole went wrong with two devices: a phone that died during a call
//! left its user `in_call` for as long as the laptop stayed connected. Here each connection
//! keeps what it set ([`DeviceStatus`]), and [`best`] combines them: the highest status
//! (`in_call` > `live` > `online`), with that connection's details, the most recently set
//! among equals. An engine stores one `DeviceStatus` per live connection and shows
//! [`best`] of them through [`super::PresenceRecord`]'s transitions.

use super::{Details, Status, StatusError};

/// What one connection set. A new connection is `online` with no details (`seq` 0).
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceStatus {
    pub status: Status,
    pub details: Option<Details>,
    /// When it was set, as the user's own counter: the greater was set later.
    pub seq: u64,
}

impl Default for DeviceStatus {
    fn default() -> Self {
        DeviceStatus {
            status: Status::Online,
            details: None,
            seq: 0,
        }
    }
}

impl DeviceStatus {
    /// What `presence:set-status` makes of this connection's status; `None` when it leaves
    /// it as it was (then it is not "set later" either: a repeated request changes nothing).
    /// `seq` is the user's next counter value. Details are kept only for `live`/`in_call`.
    pub fn set(
        &self,
        status: Status,
        details: Option<Details>,
        seq: u64,
    ) -> Result<Option<DeviceStatus>, StatusError> {
        let status = status.settable()?;
        let details = if status.keeps_details() {
            details
        } else {
            None
        };
        if self.status == status && self.details == details {
            return Ok(None);
        }
        Ok(Some(DeviceStatus {
            status,
            details,
            seq,
        }))
    }
}

/// How a status ranks among a user's connections.
fn rank(s: Status) -> u8 {
    match s {
        Status::InCall => 3,
        Status::Live => 2,
        Status::Online => 1,
        Status::Offline => 0,
    }
}

/// The user's status from their live connections': the highest, with its details, the most
/// recently set among equals; `online` with no details when there is none.
pub fn best<'a>(devices: impl IntoIterator<Item = &'a DeviceStatus>) -> (Status, Option<Details>) {
    devices
        .into_iter()
        .max_by_key(|d| (rank(d.status), d.seq))
        .map_or((Status::Online, None), |d| (d.status, d.details.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn d(v: serde_json::Value) -> Option<Details> {
        Some(Details::parse(v).unwrap())
    }

    fn set(s: Status, det: Option<Details>, seq: u64) -> DeviceStatus {
        DeviceStatus::default().set(s, det, seq).unwrap().unwrap()
    }

    #[test]
    fn the_highest_status_wins_with_its_own_details() {
        let phone = set(Status::InCall, d(json!({"call": 1})), 1);
        let laptop = set(Status::Live, d(json!({"stream": 2})), 2);
        assert_eq!(
            best([&phone, &laptop]),
            (Status::InCall, d(json!({"call": 1})))
        );
        // The phone dies during the call: the laptop's status shows.
        assert_eq!(best([&laptop]), (Status::Live, d(json!({"stream": 2}))));
        assert_eq!(best([&DeviceStatus::default()]), (Status::Online, None));
        assert_eq!(best([]), (Status::Online, None));
    }

    #[test]
    fn among_equals_the_most_recently_set() {
        let a = set(Status::Live, d(json!({"a": 1})), 1);
        let b = set(Status::Live, d(json!({"b": 1})), 2);
        assert_eq!(best([&a, &b]).1, d(json!({"b": 1})));
        assert_eq!(best([&b, &a]).1, d(json!({"b": 1})), "whatever the order");
    }

    #[test]
    fn setting_what_a_connection_has_is_no_change_and_offline_is_refused() {
        let a = set(Status::Live, d(json!({"a": 1})), 1);
        assert_eq!(a.set(Status::Live, d(json!({"a": 1})), 2).unwrap(), None);
        assert_eq!(
            DeviceStatus::default().set(Status::Online, d(json!({"x": 1})), 1),
            Ok(None),
            "online keeps no details: a new connection already is that"
        );
        assert_eq!(
            a.set(Status::Offline, None, 2),
            Err(StatusError::OfflineNotSettable)
        );
    }
}
