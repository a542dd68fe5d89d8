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
