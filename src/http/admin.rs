//! The admin API (role `admin`): the cluster's replicas, one user's presence and connections
//! on every replica, and disconnecting a user everywhere. The cluster-wide parts are questions
//! put to every replica ([`crate::gateway::cluster`]).

use super::error::ApiResult;
use super::extract::{ApiPath, Caller};
use crate::auth::Role;
use crate::domain::{UserId, VisibilityPolicy};
use crate::error::AppError;
use crate::gateway::cluster::{self, Answer, Question};
use crate::presence::Viewer;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

type Errors = super::error::ErrorResponse;

/// Every live replica: when it started, when it last reported, its sockets per namespace.
#[utoipa::path(get, path = "/api/admin/nodes", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = Object), (status = 401, body = Errors), (status = 403, body = Errors), (status = 429, body = Errors), (status = 503, body = Errors)))]
pub async fn nodes(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require(&[Role::Admin])?;
    Ok(Json(json!({"nodes": crate::figures::nodes(&state).await?})))
}

/// A user's presence (no visibility rule binds an operator) and their connections on every
/// replica; 404 for a user never seen.
#[utoipa::path(get, path = "/api/admin/users/{userId}", tag = "admin", security(("bearer" = [])),
    params(("userId" = String, Path, description = "1-128 characters")),
    responses((status = 200, body = Object), (status = 404, description = "never seen", body = Errors),
        (status = 400, body = Errors), (status = 401, body = Errors), (status = 403, body = Errors), (status = 429, body = Errors), (status = 503, body = Errors)))]
pub async fn user(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(user_id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    caller.require(&[Role::Admin])?;
    let id = UserId::parse(&user_id).map_err(|e| AppError::bad_request(e.to_string()))?;
    let operator = Viewer {
        user: id.clone(),
        gender: Default::default(),
        hides_last_seen: false,
        operator: true,
        blocked: None,
    };
    let presence = crate::presence::get_visible(
        &*state.engine,
        state.db.as_deref(),
        VisibilityPolicy::All,
        &operator,
        std::slice::from_ref(&id),
    )
    .await?
    .pop()
    .ok_or(AppError::Internal)?;
    let mut connections: Vec<Value> = cluster::ask(
        &state,
        Question::Connections {
            user: id.to_string(),
        },
    )
    .await?
    .into_iter()
    .flat_map(|(_, a)| match a {
        Answer::Connections { connections } => connections,
        Answer::Disconnected { .. } => vec![],
    })
    .collect();
    if presence.updated_at.is_none() && connections.is_empty() {
        return Err(AppError::NotFound("no such user".into()));
    }
    // RFC 3339 in UTC sorts as text.
    connections.sort_by(|a, b| a["connectedAt"].as_str().cmp(&b["connectedAt"].as_str()));
    let privacy = presence.privacy.settings();
    Ok(Json(
        json!({"presence": presence, "privacy": privacy, "connections": connections}),
    ))
}

/// Close every `/` connection of the user on every replica with a namespace disconnect, so
/// socket.io-client does not reconnect by itself; logged with the caller's identity.
#[utoipa::path(post, path = "/api/admin/users/{userId}/disconnect", tag = "admin", security(("bearer" = [])),
    params(("userId" = String, Path, description = "1-128 characters")),
    responses((status = 202, body = Object, description = "{\"connections\": N} closed"),
        (status = 400, body = Errors), (status = 401, body = Errors), (status = 403, body = Errors), (status = 429, body = Errors), (status = 503, body = Errors)))]
pub async fn disconnect(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(user_id): ApiPath<String>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let who = caller.require(&[Role::Admin])?;
    let id = UserId::parse(&user_id).map_err(|e| AppError::bad_request(e.to_string()))?;
    let by = who.caller();
    let answers = cluster::ask(
        &state,
        Question::Disconnect {
            user: id.to_string(),
            by: by.clone(),
        },
    )
    .await?;
    let n: u64 = answers
        .iter()
        .map(|(_, a)| match a {
            Answer::Disconnected { connections } => *connections,
            Answer::Connections { .. } => 0,
        })
        .sum();
    tracing::info!(target: "audit", caller = ?by, user = ?id.as_str(), connections = n,
        replicas = answers.len(), "admin disconnect requested");
    Ok((StatusCode::ACCEPTED, Json(json!({"connections": n}))))
}
