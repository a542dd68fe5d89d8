//! HS256 tokens, minted with the gateway's `JWT_SECRET`.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

pub fn mint(secret: &str, sub: &str, gender: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 24 * 3600;
    let header = B64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = B64.encode(json!({"sub": sub, "gender": gender, "exp": exp}).to_string());
    let unsigned = format!("{header}.{claims}");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(unsigned.as_bytes());
    format!("{unsigned}.{}", B64.encode(mac.finalize().into_bytes()))
}

/// A token with these roles (no gender).
pub fn mint_roles(secret: &str, sub: &str, roles: &[&str]) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 24 * 3600;
    let header = B64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = B64.encode(json!({"sub": sub, "roles": roles, "exp": exp}).to_string());
    let unsigned = format!("{header}.{claims}");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(unsigned.as_bytes());
    format!("{unsigned}.{}", B64.encode(mac.finalize().into_bytes()))
}
