//! `GET /api/users/search`: users by name, with the visibility rule applied in the query.

use super::error::ApiResult;
use super::extract::{ApiQuery, Caller};
use crate::auth::Role;
use crate::error::AppError;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;

pub const DEFAULT_LIMIT: usize = 20;
pub const MAX_LIMIT: usize = 100;
/// Longer queries match nothing a person would type and only cost the database.
pub const MAX_QUERY_CHARS: usize = 128;

#[derive(Deserialize)]
pub struct SearchQuery {
    q: Option<String>,
    limit: Option<String>,
}

pub async fn search(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<SearchQuery>,
) -> ApiResult<Json<Value>> {
    let who = caller.require(&[Role::User])?;
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
    let viewer = crate::presence::viewer_of(Some(db), &who).await?;
    let genders = state
        .config
        .visibility_policy
        .visible_genders(viewer.gender);
    let hits = db.search(&q, genders, &who.user_id, limit).await?;
    // Live presence wins over the database's copy, which lags by the debounce.
    let ids: Vec<_> = hits.iter().map(|h| h.presence.user_id.clone()).collect();
    let live: HashMap<_, _> = match state.engine.get(&ids).await {
        Ok(found) => ids
            .iter()
            .cloned()
            .zip(found)
            .filter_map(|(id, p)| Some((id, p?)))
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "live presence unavailable for search; using the database's");
            HashMap::new()
        }
    };
    let policy = state.config.visibility_policy;
    let users: Vec<Value> = hits
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
            )
        })
        .map(|(name, presence)| {
            json!({
                "userId": presence.user_id,
                "name": name,
                "gender": presence.gender,
                "presence": presence,
            })
        })
        .collect();
    Ok(Json(json!({"users": users})))
}
