//! Liveness, readiness and the operator's health summary.

use super::error::ApiResult;
use crate::figures;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

/// 200 while the process runs.
pub async fn healthz() -> &'static str {
    "ok"
}

/// 200 when this replica can serve; 503 while draining or when its engine cannot serve.
/// From the figures kept by [`crate::figures`]: no round trip of its own.
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    state.figures.probed();
    if state.is_draining() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reason": "draining"})),
        );
    }
    if state.engine.is_shared() && !figures::redis_up(&state).await {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reason": "presence store unreachable"})),
        );
    }
    (StatusCode::OK, Json(json!({"ready": true})))
}

/// The operator's summary, from the figures kept by [`crate::figures`] (the cluster-wide
/// ones as last read, whatever Redis or PostgreSQL are doing now).
pub async fn health(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    state.figures.looked_at();
    let (redis, database) = figures::dependencies(&state).await;
    let stats = figures::current(&state).await;
    let presence = match &stats {
        Some(s) => json!({
            "onlineUsers": s.online_users,
            "peakOnline": s.peak_online,
            "totalConnections": s.total_connections,
            "totalDisconnections": s.total_disconnections,
            "totalSwepts": s.total_swept,
            "lastSweepAt": s.last_sweep_at,
            "uptimeMs": state.started_at.elapsed().as_millis() as u64,
        }),
        None => json!({"uptimeMs": state.started_at.elapsed().as_millis() as u64}),
    };
    let degraded = redis == "down" || stats.is_none() || state.is_draining() || database == "down";
    Ok(Json(json!({
        "status": if degraded { "degraded" } else { "ok" },
        "node": state.config.node_id,
        "engine": state.engine.kind(),
        "presence": presence,
        "sockets": {"connected": state.sockets.len(), "connectedUsers": state.sockets.users()},
        "dependencies": {"redis": redis, "database": database},
        "database": state.db.as_ref().map(|db| json!({"pendingWrites": db.writer.pending()})),
    })))
}
