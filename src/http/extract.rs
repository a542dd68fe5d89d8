//! `Caller`: the bearer of a request's `Authorization` header, as an axum extractor.

use crate::auth::{Identity, Role};
use crate::error::AppError;
use crate::state::AppState;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;

pub struct Caller(pub Identity);

impl Caller {
    /// Refuse unless the caller has one of these roles.
    pub fn require(self, any_of: &[Role]) -> Result<Identity, AppError> {
        self.0.require(any_of)?;
        Ok(self.0)
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| AppError::Unauthorized("missing bearer token".into()))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| {
                AppError::Unauthorized("expected Authorization: Bearer <token>".into())
            })?;
        let who = state.auth.verify_bearer(token.trim())?;
        // Per identity, so one leaked token cannot take the database's capacity (searches,
        // reports) from everyone; anonymous paths (health, metrics) are not counted.
        if !state.http_limits.allow(&who.caller()) {
            state.metrics.rejected("rate_limited");
            return Err(AppError::RateLimited);
        }
        Ok(Caller(who))
    }
}

/// `axum::Json`, refusing as the API does: a body over [`MAX_BODY`](super::MAX_BODY) is 413
/// `payload_too_large`, anything else unreadable 400 `bad_request`, both in the JSON error
/// shape (axum's own rejections are plain text).
pub struct ApiJson<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequest<S> for ApiJson<T> {
    type Rejection = AppError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, AppError> {
        // Read as a JSON value first: text PostgreSQL cannot store is refused here, for every
        // field of every body, before any handler sees it.
        let v = match axum::Json::<serde_json::Value>::from_request(req, state).await {
            Ok(axum::Json(v)) => v,
            Err(e) if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(AppError::PayloadTooLarge(format!(
                    "request body over {} bytes",
                    super::MAX_BODY
                )));
            }
            Err(e) => return Err(AppError::bad_request(e.body_text())),
        };
        if !crate::domain::text::json_storable(&v) {
            return Err(AppError::bad_request(crate::domain::text::UNSTORABLE));
        }
        T::deserialize(v)
            .map(ApiJson)
            .map_err(|e| AppError::bad_request(format!("invalid request body: {e}")))
    }
}

/// `axum::extract::Query`, with a malformed query string refused as 400 `bad_request` in the
/// JSON error shape.
pub struct ApiQuery<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        if parts.uri.query().is_some_and(encodes_nul) {
            return Err(AppError::bad_request(crate::domain::text::UNSTORABLE));
        }
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| ApiQuery(v))
            .map_err(|e| AppError::bad_request(e.body_text()))
    }
}

/// `axum::extract::Path`, with an undecodable segment refused as 400 `bad_request`.
pub struct ApiPath<T>(pub T);

impl<T: serde::de::DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| ApiPath(v))
            .map_err(|e| AppError::bad_request(e.body_text()))
    }
}

/// Whether a query string decodes to a NUL character (`%00`; a literal one cannot be in a
/// URI). Decoded as form-urlencoding does: "%2500" is "%" then "00", and "%%00" holds one.
fn encodes_nul(q: &str) -> bool {
    let b = q.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let pair = (b[i] == b'%' && i + 2 < b.len())
            .then(|| (b[i + 1], b[i + 2]))
            .filter(|(h, l)| h.is_ascii_hexdigit() && l.is_ascii_hexdigit());
        match pair {
            Some((b'0', b'0')) => return true,
            Some(_) => i += 3,
            None => i += 1,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_query_string_decoding_to_nul_is_found() {
        for (q, nul) in [
            ("q=a%00b", true),
            ("q=%00", true),
            ("q=%%00", true),
            ("q=%2500", false),
            ("q=100%25", false),
            ("q=%0", false),
            ("q=a&limit=10", false),
        ] {
            assert_eq!(super::encodes_nul(q), nul, "{q}");
        }
    }
}
