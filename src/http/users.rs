//! `GET /api/users/search`: users by name, with the visibility rule applied in the query.

use super::error::ApiResult;
use super::extract::{ApiQuery, Caller};
use crate::auth::Role;
use crate::error::AppError;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use serde::Deserialize;

use std::collections::HashMap;

pub const DEFAULT_LIMIT: usize = 20;
pub const MAX_LIMIT: usize = 100;
/// Longer queries match nothing a person would type and only cost the database.
pub const MAX_QUERY_CHARS: usize = 128;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// Text the name contains (case-insensitive, every character literal), 1-128 characters.
    q: Option<String>,
    /// 1-100, default 20.
    limit: Option<String>,
}

/// `GET /api/users/search`'s answer.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct SearchResults {
    pub users: Vec<SearchUser>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SearchUser {
    #[schema(value_type = String)]
    pub user_id: crate::domain::UserId,
    pub name: Option<String>,
    pub gender: crate::domain::Gender,
    pub presence: crate::domain::Presence,
}

#[utoipa::path(get, path = "/api/users/search", tag = "users", security(("bearer" = [])), params(SearchQuery),
    responses((status = 200, body = SearchResults), (status = 400, body = super::error::ErrorResponse), (status = 401, body = super::error::ErrorResponse), (status = 403, body = super::error::ErrorResponse), (status = 429, body = super::error::ErrorResponse), (status = 503, body = super::error::ErrorResponse)))]
pub async fn search(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<SearchQuery>,
) -> ApiResult<Json<SearchResults>> {
    let who = caller.require(&[Role::User, Role::Admin])?;
    let db = state.db.as_deref().ok_or_else(super::database_missing)?;
    let q = params.q.unwrap_or_default();
    if q.trim().is_empty() {
        return Err(AppError::bad_request("q is required"));
    }
    if q.chars().count() > MAX_QUERY_CHARS {
        return Err(AppError::bad_request(format!(
            "q: at most {MAX_QUERY_CHARS} characters"
        )));
    }
    let limit = super::limit_param(params.limit.as_deref(), DEFAULT_LIMIT, MAX_LIMIT)?;
    // An operator (the console's Users view) is bound by no visibility rule, as in the other
    // admin views; anyone else sees whom the rule lets them see.
    let policy = if who.roles.contains(Role::Admin) {
        crate::domain::VisibilityPolicy::All
    } else {
        state.config.visibility_policy
    };
    let operator = who.roles.contains(Role::Admin);
    let viewer = match policy {
        crate::domain::VisibilityPolicy::All if operator => crate::presence::Viewer {
            user: who.user_id.clone(),
            gender: who.gender.unwrap_or_default(),
            hides_last_seen: false,
            operator: true,
            blocked: None,
        },
        _ => {
            crate::presence::viewer_of(
                &*state.engine,
                Some(db),
                state.config.last_seen_reciprocal,
                &who,
            )
            .await?
        }
    };
    let genders = policy.visible_genders(viewer.gender);
    let hits = db.search(&q, genders, &who.user_id, limit).await?;
    // Live presence wins over the database's copy, which lags by the debounce. Without it
    // the answer fails: only the engine knows who is invisible (section 11), and the
    // database's copy would show them online.
    let ids: Vec<_> = hits.iter().map(|h| h.presence.user_id.clone()).collect();
    let live: HashMap<_, _> = ids
        .iter()
        .cloned()
        .zip(state.engine.get(&ids).await?)
        .filter_map(|(id, p)| Some((id, p?)))
        .collect();
    let users: Vec<SearchUser> = hits
        .into_iter()
        .map(|h| {
            let presence = live.get(&h.presence.user_id).cloned().unwrap_or(h.presence);
            (h.name, presence)
        })
        // The database filtered by its copy of each gender; the live one may differ (a new
        // token with another gender), and the answer shows the live one: the rule is checked
        // against what is returned.
        .filter(|(_, p)| {
            policy.can_see(
                (viewer.user.as_str(), viewer.gender),
                (p.user_id.as_str(), p.gender),
            ) && !viewer.blocks(&p.user_id)
        })
        .map(|(name, presence)| (name, viewer.sees(presence)))
        .map(|(name, presence)| SearchUser {
            user_id: presence.user_id.clone(),
            name,
            gender: presence.gender,
            presence,
        })
        .collect();
    Ok(Json(SearchResults { users }))
}
