//! `GET /api/presence/{userId}` and `GET /api/presence?ids=a,b`, with the visibility rule.

use super::error::ApiResult;
use super::extract::{ApiPath, ApiQuery, Caller};
use crate::auth::Role;
use crate::domain::UserId;
use crate::error::AppError;
use crate::presence;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::Value;

/// The presences of `ids` the caller may see, as they may see them.
async fn visible(
    state: &AppState,
    who: &crate::auth::Identity,
    ids: &[UserId],
) -> Result<Vec<crate::domain::Presence>, AppError> {
    let viewer = presence::viewer_of(
        &*state.engine,
        state.db.as_deref(),
        state.config.last_seen_reciprocal,
        who,
    )
    .await?;
    presence::get_visible(
        &*state.engine,
        state.db.as_deref(),
        state.config.visibility_policy,
        &viewer,
        ids,
    )
    .await
}

#[utoipa::path(get, path = "/api/presence/{userId}", tag = "presence", security(("bearer" = [])),
    params(("userId" = String, Path, description = "a user id, 1-128 characters")),
    responses((status = 200, body = crate::domain::Presence),
        (status = 404, description = "not visible to the caller, or never seen", body = super::error::ErrorResponse),
        (status = 400, body = super::error::ErrorResponse), (status = 401, body = super::error::ErrorResponse), (status = 403, body = super::error::ErrorResponse), (status = 429, body = super::error::ErrorResponse), (status = 503, body = super::error::ErrorResponse)))]
pub async fn one(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(user_id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let who = caller.require(&[Role::User])?;
    let id = UserId::parse(&user_id).map_err(|e| AppError::bad_request(e.to_string()))?;
    let mut found = visible(&state, &who, &[id]).await?;
    // Invisible and unknown look the same from outside: neither reveals that the user exists.
    let p = found
        .pop()
        .ok_or_else(|| AppError::NotFound("no such user".into()))?;
    Ok(Json(
        serde_json::to_value(p).map_err(|_| AppError::Internal)?,
    ))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct IdsQuery {
    /// Comma-separated user ids, at most 200.
    ids: Option<String>,
}

/// `GET /api/presence?ids=`'s answer: the visible ones.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Presences {
    pub presences: Vec<crate::domain::Presence>,
}

#[utoipa::path(get, path = "/api/presence", tag = "presence", security(("bearer" = [])), params(IdsQuery),
    responses((status = 200, body = Presences), (status = 400, body = super::error::ErrorResponse), (status = 401, body = super::error::ErrorResponse), (status = 403, body = super::error::ErrorResponse), (status = 429, body = super::error::ErrorResponse), (status = 503, body = super::error::ErrorResponse)))]
pub async fn many(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<IdsQuery>,
) -> ApiResult<Json<Presences>> {
    let who = caller.require(&[Role::User])?;
    let raw = q
        .ids
        .ok_or_else(|| AppError::bad_request("ids is required: ?ids=a,b"))?;
    let parts: Vec<&str> = raw.split(',').filter(|s| !s.is_empty()).collect();
    let ids = presence::parse_ids(parts.into_iter())?;
    let presences = visible(&state, &who, &ids).await?;
    Ok(Json(Presences { presences }))
}
