//! HS256 tokens, minted with the gateway's `JWT_SECRET`.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

/// An HS256 token for `sub` with `extra` claims, valid for a day.
fn sign(secret: &str, sub: &str, extra: serde_json::Value) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 24 * 3600;
    let mut claims = json!({"sub": sub, "exp": exp});
    if let (Some(c), serde_json::Value::Object(e)) = (claims.as_object_mut(), extra) {
        c.extend(e);
    }
    let header = B64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let unsigned = format!("{header}.{}", B64.encode(claims.to_string()));
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(unsigned.as_bytes());
    format!("{unsigned}.{}", B64.encode(mac.finalize().into_bytes()))
}

/// A presence user's token.
pub fn mint(secret: &str, sub: &str, gender: &str) -> String {
    sign(secret, sub, json!({"gender": gender}))
}

/// A token with these roles (no gender).
pub fn mint_roles(secret: &str, sub: &str, roles: &[&str]) -> String {
    sign(secret, sub, json!({"roles": roles}))
}
