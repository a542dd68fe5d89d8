//! `GET /api/users/{userId}/blocks`, `PUT` and `DELETE /api/users/{userId}/blocks/{otherId}`
//! (section 11): open to that user and to `admin` (an app's backend mirroring its own block
//! list).

use super::error::ApiResult;
use super::extract::{ApiPath, Caller};
use crate::domain::UserId;
use crate::error::AppError;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

/// `GET …/blocks`'s answer: whom the user blocked.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct BlockList {
    #[schema(value_type = Vec<String>)]
    pub blocked: Vec<UserId>,
}

fn other(id: &str) -> Result<UserId, AppError> {
    UserId::parse(id).map_err(|e| AppError::bad_request(format!("otherId: {e}")))
}

#[utoipa::path(get, path = "/api/users/{userId}/blocks", tag = "privacy", security(("bearer" = [])),
    params(("userId" = String, Path, description = "1-128 characters")),
    responses((status = 200, body = BlockList), (status = 400, body = super::error::ErrorResponse), (status = 401, body = super::error::ErrorResponse), (status = 403, body = super::error::ErrorResponse), (status = 429, body = super::error::ErrorResponse), (status = 503, body = super::error::ErrorResponse)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(user_id): ApiPath<String>,
) -> ApiResult<Json<BlockList>> {
    let id = super::privacy::owner(caller, &user_id)?;
    Ok(Json(BlockList {
        blocked: crate::blocks::list(state.blocks(), &id).await?,
    }))
}

#[utoipa::path(put, path = "/api/users/{userId}/blocks/{otherId}", tag = "privacy", security(("bearer" = [])),
    params(("userId" = String, Path, description = "the user who blocks"), ("otherId" = String, Path, description = "the user blocked")),
    responses((status = 204, description = "blocked (or it already was)"), (status = 400, description = "themselves, a bad id, or past PRESENCE_MAX_BLOCKS", body = super::error::ErrorResponse), (status = 401, body = super::error::ErrorResponse), (status = 403, body = super::error::ErrorResponse), (status = 429, body = super::error::ErrorResponse), (status = 503, body = super::error::ErrorResponse)))]
pub async fn put(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((user_id, other_id)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    let id = super::privacy::owner(caller, &user_id)?;
    crate::blocks::block(state.blocks(), &id, &other(&other_id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, path = "/api/users/{userId}/blocks/{otherId}", tag = "privacy", security(("bearer" = [])),
    params(("userId" = String, Path, description = "the user who blocked"), ("otherId" = String, Path, description = "the user to unblock")),
    responses((status = 204, description = "not blocked (any more)"), (status = 400, body = super::error::ErrorResponse), (status = 401, body = super::error::ErrorResponse), (status = 403, body = super::error::ErrorResponse), (status = 429, body = super::error::ErrorResponse), (status = 503, body = super::error::ErrorResponse)))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((user_id, other_id)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    let id = super::privacy::owner(caller, &user_id)?;
    crate::blocks::unblock(state.blocks(), &id, &other(&other_id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}
