//! Admin views: who is online, this replica's sockets, and (with a database) where the
//! database and live presence disagree.

use super::error::ApiResult;
use super::extract::{ApiQuery, Caller};
use crate::auth::Role;
use crate::domain::{GenderSet, Timestamp, UserId};
use crate::engine::ListFilter;
use crate::error::AppError;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Page {
    limit: Option<usize>,
    cursor: Option<String>,
}

/// Online users (all of them, paged: an admin is bound by no visibility rule) and the
/// cluster's presence figures.
#[utoipa::path(get, path = "/api/debug/presence", tag = "admin", security(("bearer" = [])), params(Page),
    responses((status = 200, body = Object), (status = 400, body = super::error::ErrorResponse), (status = 401, body = super::error::ErrorResponse), (status = 403, body = super::error::ErrorResponse), (status = 429, body = super::error::ErrorResponse), (status = 503, body = super::error::ErrorResponse)))]
pub async fn presence(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<Page>,
) -> ApiResult<Json<Value>> {
    caller.require(&[Role::Admin])?;
    let limit = q.limit.unwrap_or(500).clamp(1, 5000);
    let all = ListFilter {
        genders: GenderSet::ALL,
        include: None,
    };
    let page = state
        .engine
        .list_online(&all, q.cursor.as_deref(), limit)
        .await?;
    let s = state.engine.stats().await?;
    Ok(Json(json!({
        "node": state.config.node_id,
        "engine": state.engine.kind(),
        "onlineUsers": page.users,
        "nextCursor": page.next_cursor,
        "metrics": {
            "onlineUsers": s.online_users,
            "peakOnline": s.peak_online,
            "byGender": {"male": s.online_by_gender[0], "female": s.online_by_gender[1], "other": s.online_by_gender[2]},
            "totalConnections": s.total_connections,
            "totalDisconnections": s.total_disconnections,
            "totalSwepts": s.total_swept,
            "lastSweepAt": s.last_sweep_at,
        },
    })))
}

/// This replica's sockets: id, user, namespace, transport, when last heard.
#[utoipa::path(get, path = "/api/debug/socket-status", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = Object), (status = 401, body = super::error::ErrorResponse), (status = 403, body = super::error::ErrorResponse), (status = 429, body = super::error::ErrorResponse)))]
pub async fn socket_status(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Value>> {
    caller.require(&[Role::Admin])?;
    let io = state.gateway.io.get().ok_or(AppError::Internal)?;
    let now = Timestamp::now();
    let mut sockets: Vec<Value> = state
        .gateway.sockets
        .snapshot()
        .into_iter()
        .map(|h| {
            let transport = crate::gateway::transport_of(io, h.sid);
            json!({
                "id": h.conn.id.to_string(),
                "userId": h.conn.user,
                "gender": h.conn.gender,
                "namespace": "/",
                "transport": transport,
                "connectedAt": h.connected_at,
                "lastHeardAt": h.last_heard(),
                "silentMs": now.micros_since(h.last_heard()) / 1000,
                // Updates waiting for room in its queue, and whether it still gets new ones
                // (a socket cut off for being too far behind waits for its transport to close).
                "backlog": h.backlog_len(),
                "receivesUpdates": state.gateway.viewers.get(h.sid).is_some_and(|v| std::sync::Arc::ptr_eq(&v.handle, &h)),
                // How its presence frames travel: straight onto its WebSocket, or through
                // the library (see `presence_direct_fallbacks_total` for why).
                "delivery": if h.route().is_some_and(|r| r.is_direct()) { "direct" } else { "library" },
            })
        })
        .collect();
    sockets.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    Ok(Json(
        json!({"node": state.config.node_id, "count": sockets.len(), "sockets": sockets}),
    ))
}

/// At most this many users are compared (the database's online rows, and live pages).
const CHECK_MAX: usize = 100_000;

/// Users on which the database and live presence disagree. A user whose write is still
/// pending on this replica is flagged `pendingWrite`: the disagreement is expected for up to
/// the debounce (writes pending on other replicas look the same, and settle as quickly).
#[utoipa::path(get, path = "/api/check-online-status", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = Object), (status = 401, body = super::error::ErrorResponse), (status = 403, body = super::error::ErrorResponse), (status = 429, body = super::error::ErrorResponse), (status = 503, body = super::error::ErrorResponse)))]
pub async fn check_online_status(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Value>> {
    caller.require(&[Role::Admin])?;
    let db = state.db.as_deref().ok_or_else(super::database_missing)?;
    let mut live = std::collections::BTreeMap::new();
    let filter = ListFilter {
        genders: GenderSet::ALL,
        include: None,
    };
    let mut cursor: Option<String> = None;
    loop {
        let page = state
            .engine
            .list_online(&filter, cursor.as_deref(), 500)
            .await?;
        for p in page.users {
            live.insert(p.user_id.clone(), p);
        }
        cursor = page.next_cursor;
        if cursor.is_none() || live.len() >= CHECK_MAX {
            break;
        }
    }
    let stored_online = db.believed_online(CHECK_MAX).await?;
    let live_ids: Vec<UserId> = live.keys().cloned().collect();
    let stored_of_live = db.stored_status(&live_ids).await?;
    let mut disagreements = Vec::new();
    for (id, p) in &live {
        let stored = stored_of_live.get(id);
        if stored.map(|(s, _)| *s) != Some(p.status) {
            disagreements.push(json!({
                "userId": id,
                "live": {"status": p.status, "version": p.version},
                "database": stored.map(|(s, v)| json!({"status": s, "version": v})),
                "pendingWrite": db.writer.is_pending(id),
            }));
        }
    }
    for (id, status, version) in &stored_online {
        if !live.contains_key(id) {
            disagreements.push(json!({
                "userId": id,
                "live": {"status": "offline"},
                "database": {"status": status, "version": version},
                "pendingWrite": db.writer.is_pending(id),
            }));
        }
    }
    Ok(Json(json!({
        "node": state.config.node_id,
        "checkedAt": Timestamp::now(),
        "liveOnline": live.len(),
        "databaseOnline": stored_online.len(),
        "pendingWrites": db.writer.pending(),
        "count": disagreements.len(),
        "disagreements": disagreements,
    })))
}
