//! Statistics events of the chat widgets: what happened, to which visitor, on which channel.
//! Pure data and validation; storing and announcing them is `crate::stats`.

use super::Timestamp;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    WidgetOpened,
    NewMessage,
    UserOnline,
    UserOffline,
}

impl EventType {
    pub const ALL: [EventType; 4] = [
        EventType::WidgetOpened,
        EventType::NewMessage,
        EventType::UserOnline,
        EventType::UserOffline,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::WidgetOpened => "widget_opened",
            EventType::NewMessage => "new_message",
            EventType::UserOnline => "user_online",
            EventType::UserOffline => "user_offline",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Web,
    Premium,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Web => "web",
            Channel::Premium => "premium",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "web" => Some(Channel::Web),
            "premium" => Some(Channel::Premium),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Sender {
    User,
    Bot,
    Agent,
}

impl Sender {
    pub fn as_str(self) -> &'static str {
        match self {
            Sender::User => "user",
            Sender::Bot => "bot",
            Sender::Agent => "agent",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "user" => Some(Sender::User),
            "bot" => Some(Sender::Bot),
            "agent" => Some(Sender::Agent),
            _ => None,
        }
    }
}

/// Longest message text, in characters.
pub const MAX_TEXT_CHARS: usize = 4096;
/// Longest name, country or city a widget may give, in characters.
pub const MAX_LABEL_CHARS: usize = 128;

/// `^[A-Za-z0-9_-]{1,64}$`.
pub fn valid_visitor_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Who a widget connection says it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Visitor {
    pub id: String,
    pub channel: Channel,
    pub name: Option<String>,
    pub country: Option<String>,
    pub city: Option<String>,
}

/// A message's content, for `new_message`.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub sender: Sender,
    pub text: String,
    pub human_mode: bool,
}

/// One event to store and announce.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub kind: EventType,
    pub visitor: Visitor,
    pub at: Timestamp,
    pub message: Option<Message>,
    pub idempotency_key: Option<String>,
}

/// A stored event, as dashboards receive it (`stats_update`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatsUpdate {
    pub seq: i64,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub channel: Channel,
    #[serde(rename = "visitorId")]
    pub visitor_id: String,
    pub at: Timestamp,
}

const QUARTER_US: i64 = 15 * 60 * 1_000_000;
const DAY_US: i64 = 24 * 60 * 60 * 1_000_000;

/// The statistics retention horizon at `now` (`STATS_RETENTION_DAYS`): `days` earlier,
/// rounded down to a quarter hour, where the rollups' buckets begin (none is half deleted).
pub fn retention_horizon(now: Timestamp, days: u64) -> Timestamp {
    let t = now.as_micros().saturating_sub(
        i64::try_from(days)
            .unwrap_or(i64::MAX)
            .saturating_mul(DAY_US),
    );
    Timestamp(t.div_euclid(QUARTER_US).saturating_mul(QUARTER_US))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visitor_ids() {
        assert!(valid_visitor_id("W-Guest-q0cbry909"));
        assert!(valid_visitor_id(&"a".repeat(64)));
        for bad in ["", "a b", "ü", "a.b", &"a".repeat(65)] {
            assert!(!valid_visitor_id(bad), "{bad}");
        }
    }

    #[test]
    fn update_wire_form() {
        let u = StatsUpdate {
            seq: 7,
            kind: EventType::UserOnline,
            channel: Channel::Premium,
            visitor_id: "v1".into(),
            at: Timestamp(0),
        };
        assert_eq!(
            serde_json::to_string(&u).unwrap(),
            r#"{"seq":7,"type":"user_online","channel":"premium","visitorId":"v1","at":"1970-01-01T00:00:00.000Z"}"#
        );
    }

    #[test]
    fn the_retention_horizon_is_a_quarter_hour_days_ago() {
        use super::{DAY_US, QUARTER_US, retention_horizon};
        let now = Timestamp(1_765_000_000_123_456);
        let h = retention_horizon(now, 400).as_micros();
        assert_eq!(h % QUARTER_US, 0);
        assert!(now.as_micros() - h >= 400 * DAY_US);
        assert!(now.as_micros() - h < 400 * DAY_US + QUARTER_US);
        assert!(retention_horizon(Timestamp(0), u64::MAX).as_micros() < 0);
    }
}
