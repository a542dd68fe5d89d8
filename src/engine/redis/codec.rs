//! Presence as Redis holds it: the record's fields (`st`, `det`, `g`, `ls`, `ua`, `v`), and the
//! same fields as the scripts publish and return them (JSON, with `u`, `at`, `o`, `pg`). One
//! decoder for both, with one set of fallbacks.

use crate::domain::privacy::Hidden;
use crate::domain::{Details, LastSeen, Presence, Privacy, Status, Timestamp, UserId};
use crate::engine::{EngineError, PresenceEvent};
use serde_json::Value as Json;
use std::sync::Arc;

/// A presence from its stored fields; `None` when the status is missing or unknown (no
/// record). Other fields fall back to their defaults.
pub fn presence(user: UserId, field: impl Fn(&str) -> Option<String>) -> Option<Presence> {
    let present = |k: &str| field(k).filter(|v| !v.is_empty());
    let status: Status = present("st")?.parse().ok()?;
    let details = present("det")
        .and_then(|d| serde_json::from_str(&d).ok())
        .and_then(|v| Details::parse(v).ok());
    Some(Presence {
        user_id: user,
        status,
        online: status != Status::Offline,
        gender: present("g")
            .and_then(|g| g.parse().ok())
            .unwrap_or_default(),
        last_seen: present("ls").as_deref().and_then(ts),
        updated_at: present("ua").as_deref().and_then(ts),
        version: present("v").and_then(|v| v.parse().ok()).unwrap_or(0),
        details,
        privacy: privacy(&present),
    })
}

/// The settings (section 11): `inv` and `lsn` "1" when set; `hv`, `hls`, `hua` what others
/// see while invisible.
fn privacy(present: &impl Fn(&str) -> Option<String>) -> Privacy {
    let on = |k: &str| present(k).is_some_and(|v| v == "1");
    let invisible = on("inv");
    Privacy {
        invisible,
        last_seen: if on("lsn") {
            LastSeen::Nobody
        } else {
            LastSeen::Everyone
        },
        hidden: invisible.then(|| Hidden {
            version: present("hv").and_then(|v| v.parse().ok()).unwrap_or(0),
            last_seen: present("hls").as_deref().and_then(ts),
            updated_at: present("hua").as_deref().and_then(ts),
        }),
    }
}

pub fn ts(s: &str) -> Option<Timestamp> {
    s.parse::<i64>().ok().map(Timestamp)
}

/// A presence in the scripts' encoding (the inverse of [`decode_event`]'s presence part).
pub fn encode_presence(p: &Presence) -> String {
    let t = |t: Option<Timestamp>| t.map(|t| t.as_micros().to_string()).unwrap_or_default();
    serde_json::json!({
        "u": p.user_id, "st": p.status.as_str(), "g": p.gender.as_str(),
        "ls": t(p.last_seen), "ua": t(p.updated_at), "v": p.version.to_string(),
        "d": p.details.as_ref().map(|d| d.value().to_string()).unwrap_or_default(),
        "inv": if p.privacy.invisible { "1" } else { "" },
        "lsn": if p.privacy.last_seen == LastSeen::Nobody { "1" } else { "" },
        "hv": p.privacy.hidden.map(|h| h.version.to_string()).unwrap_or_default(),
        "hls": t(p.privacy.hidden.and_then(|h| h.last_seen)),
        "hua": t(p.privacy.hidden.and_then(|h| h.updated_at)),
    })
    .to_string()
}

/// A change as a script published (or returned) it.
pub fn decode_event(text: &str) -> Option<PresenceEvent> {
    let j: Json = serde_json::from_str(text).ok()?;
    let s = |k: &str| j.get(k).and_then(Json::as_str).map(str::to_string);
    // The scripts name the details `d`; the record names them `det`.
    let field = |k: &str| s(if k == "det" { "d" } else { k });
    let presence = presence(UserId::parse(&s("u")?).ok()?, field)?;
    Some(PresenceEvent {
        presence,
        committed_at: s("at").as_deref().and_then(ts).unwrap_or_default(),
        origin: Arc::from(s("o").unwrap_or_default().as_str()),
        was_online_as: s("pg").and_then(|g| g.parse().ok()),
        was_online: s("wo").is_some_and(|w| w == "1"),
    })
}

pub fn int_at(r: &[fred::types::Value], i: usize) -> i64 {
    r.get(i).and_then(|v| v.as_i64()).unwrap_or(0)
}

pub fn str_at(r: &[fred::types::Value], i: usize) -> Option<String> {
    r.get(i).and_then(|v| v.as_string())
}

/// The presence a script returned at position `i`.
pub fn presence_at(r: &[fred::types::Value], i: usize) -> Result<Presence, EngineError> {
    str_at(r, i)
        .and_then(|s| decode_event(&s))
        .map(|e| e.presence)
        .ok_or_else(|| EngineError::Unavailable("malformed script answer".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Gender;

    #[test]
    fn a_presence_survives_the_scripts_encoding() {
        let p = Presence {
            user_id: UserId::parse("u1").unwrap(),
            status: Status::Live,
            online: true,
            gender: Gender::Female,
            last_seen: None,
            updated_at: Some(Timestamp(1_700_000_000_000_000)),
            version: 1_700_000_000_000_001,
            details: Some(Details::parse(serde_json::json!({"room": 7})).unwrap()),
            privacy: Privacy::default(),
        };
        assert_eq!(decode_event(&encode_presence(&p)).unwrap().presence, p);
        // With settings (section 11): a restored record keeps them.
        let hidden = Presence {
            privacy: Privacy {
                invisible: true,
                last_seen: LastSeen::Nobody,
                hidden: Some(Hidden {
                    version: 5,
                    last_seen: Some(Timestamp(4)),
                    updated_at: Some(Timestamp(4)),
                }),
            },
            ..p
        };
        assert_eq!(
            decode_event(&encode_presence(&hidden)).unwrap().presence,
            hidden
        );
    }
}
