//! `GET` and `PUT /api/users/{userId}/privacy` (section 11): a user's own settings, open to
//! that user and to `admin` (an app's backend may set them).

use super::error::ApiResult;
use super::extract::{ApiJson, ApiPath, Caller};
use crate::auth::{Identity, Role};
use crate::domain::{PrivacyChange, PrivacySettings, UserId};
use crate::error::AppError;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;

/// The caller may read and change `user_id`'s settings: they are that user, or `admin`.
pub fn owner(caller: Caller, user_id: &str) -> Result<UserId, AppError> {
    let who: Identity = caller.require(&[Role::User, Role::Admin])?;
    let id = UserId::parse(user_id).map_err(|e| AppError::bad_request(e.to_string()))?;
    if who.user_id != id && !who.roles.contains(Role::Admin) {
        return Err(AppError::Forbidden(
            "only the user themselves or admin".into(),
        ));
    }
    Ok(id)
}

#[utoipa::path(get, path = "/api/users/{userId}/privacy", tag = "privacy", security(("bearer" = [])),
    params(("userId" = String, Path, description = "1-128 characters")),
    responses((status = 200, body = PrivacySettings), (status = 400, body = super::error::ErrorResponse), (status = 401, body = super::error::ErrorResponse), (status = 403, body = super::error::ErrorResponse), (status = 429, body = super::error::ErrorResponse), (status = 503, body = super::error::ErrorResponse)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(user_id): ApiPath<String>,
) -> ApiResult<Json<PrivacySettings>> {
    let id = owner(caller, &user_id)?;
    Ok(Json(
        crate::privacy::get(&*state.engine, state.db.as_deref(), &id).await?,
    ))
}

#[utoipa::path(put, path = "/api/users/{userId}/privacy", tag = "privacy", security(("bearer" = [])),
    params(("userId" = String, Path, description = "1-128 characters")),
    request_body = PrivacyChange,
    responses((status = 200, body = PrivacySettings), (status = 400, body = super::error::ErrorResponse), (status = 401, body = super::error::ErrorResponse), (status = 403, body = super::error::ErrorResponse), (status = 413, body = super::error::ErrorResponse), (status = 429, body = super::error::ErrorResponse), (status = 503, body = super::error::ErrorResponse)))]
pub async fn put(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(user_id): ApiPath<String>,
    body: Result<ApiJson<PrivacyChange>, AppError>,
) -> ApiResult<Json<PrivacySettings>> {
    let id = owner(caller, &user_id)?;
    let ApiJson(change) = body?;
    Ok(Json(
        crate::privacy::set(&*state.engine, state.db.as_deref(), &id, change).await?,
    ))
}
