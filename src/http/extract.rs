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
        Ok(Caller(state.auth.verify_bearer(token.trim())?))
    }
}

/// `axum::Json`, refusing as the API does: a body over [`MAX_BODY`](super::MAX_BODY) is 413
/// `payload_too_large`, anything else unreadable 400 `bad_request`, both in the JSON error
/// shape (axum's own rejections are plain text).
pub struct ApiJson<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequest<S> for ApiJson<T> {
    type Rejection = AppError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, AppError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(e) if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => Err(
                AppError::PayloadTooLarge(format!("request body over {} bytes", super::MAX_BODY)),
            ),
            Err(e) => Err(AppError::bad_request(e.body_text())),
        }
    }
}

/// `axum::extract::Query`, with a malformed query string refused as 400 `bad_request` in the
/// JSON error shape.
pub struct ApiQuery<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
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
