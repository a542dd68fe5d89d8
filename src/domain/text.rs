//! Text PostgreSQL can store. Its `text` and `jsonb` refuse the NUL character, and one such
//! value fails the whole statement it is in — a batch of other users' writes with it — so it
//! is refused where it enters (a client's request, a token, a handshake), never stored.

use serde_json::Value;

/// Whether `s` can be stored.
pub fn storable(s: &str) -> bool {
    !s.contains('\0')
}

/// Whether every string of `v`, object keys included, can be stored.
pub fn json_storable(v: &Value) -> bool {
    match v {
        Value::String(s) => storable(s),
        Value::Array(items) => items.iter().all(json_storable),
        Value::Object(o) => o.iter().all(|(k, v)| storable(k) && json_storable(v)),
        _ => true,
    }
}

/// The message clients get for such text.
pub const UNSTORABLE: &str = "text must not contain the NUL character (\\u0000)";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nul_anywhere_in_a_json_value_is_refused() {
        assert!(json_storable(&json!({"a": ["b", {"c": "ok"}], "n": 1})));
        assert!(!json_storable(&json!({"x": "\u{0}"})));
        assert!(!json_storable(&json!({"x\u{0}": 1})));
        assert!(!json_storable(&json!([[["deep\u{0}"]]])));
        assert!(storable("ünïcödé ✓ \u{1}"));
        assert!(!storable("a\u{0}b"));
    }
}
