//! The application's error: what a request may fail with, as clients see it.
//!
//! Both transports map it the same way: a Socket.IO ack `{"ok":false,"error":{code,message}}`
//! or an HTTP body `{"error":{code,message}}`. Internal causes (a store that failed, a bug)
//! are logged once where they happen and reach clients only as `unavailable` or `internal`,
//! never with their text.

use crate::auth::AuthError;
use crate::engine::EngineError;
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("too many requests; slow down")]
    RateLimited,
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal,
}

impl AppError {
    /// The stable code clients match on.
    pub fn code(&self) -> &'static str {
        match self {
            AppError::BadRequest(_) => "bad_request",
            AppError::Unauthorized(_) => "unauthorized",
            AppError::Forbidden(_) => "forbidden",
            AppError::NotFound(_) => "not_found",
            AppError::PayloadTooLarge(_) => "payload_too_large",
            AppError::RateLimited => "rate_limited",
            AppError::Unavailable(_) => "unavailable",
            AppError::Internal => "internal",
        }
    }

    pub fn bad_request(m: impl Into<String>) -> Self {
        AppError::BadRequest(m.into())
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            code: self.code(),
            message: self.to_string(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ErrorBody {
    pub code: &'static str,
    pub message: String,
}

impl From<AuthError> for AppError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Unauthorized(m) => AppError::Unauthorized(m),
            AuthError::Forbidden(m) => AppError::Forbidden(m),
        }
    }
}

impl From<EngineError> for AppError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::BadCursor => AppError::bad_request("malformed cursor"),
            EngineError::TooManyConnections(_) => AppError::RateLimited,
            EngineError::Status(s) => AppError::BadRequest(s.to_string()),
            EngineError::Unavailable(cause) => {
                tracing::warn!(%cause, "presence store unavailable");
                AppError::Unavailable("presence is temporarily unavailable".into())
            }
        }
    }
}
