//! [`AppError`] as an HTTP response: `{"error":{"code","message"}}` with the matching status.

use crate::error::AppError;
use serde::Serialize;
use utoipa::ToSchema;

/// Every error: `{"error":{"code","message"}}` (its schema in the OpenAPI description; here,
/// beside the handlers' error type, so that the description's module imports the handlers
/// and nothing imports it back).
#[derive(Serialize, ToSchema)]
pub struct ErrorResponse {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// `bad_request`, `unauthorized`, `forbidden`, `not_found`, `payload_too_large`,
    /// `rate_limited`, `unavailable` or `internal`.
    pub code: String,
    pub message: String,
}
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

pub fn status_of(e: &AppError) -> StatusCode {
    match e {
        AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
        AppError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        AppError::Forbidden(_) => StatusCode::FORBIDDEN,
        AppError::NotFound(_) => StatusCode::NOT_FOUND,
        AppError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        AppError::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        AppError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        AppError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        (
            status_of(&self),
            Json(serde_json::json!({"error": self.body()})),
        )
            .into_response()
    }
}

pub type ApiResult<T> = Result<T, AppError>;
