//! Liveness, readiness and the operator's health summary.

use super::error::ApiResult;
use crate::figures;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

/// 200 while the process runs.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, body = String, content_type = "text/plain")))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// `/readyz`'s answer.
#[derive(Serialize, ToSchema)]
pub struct Ready {
    pub ready: bool,
    /// Why not, when not ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
}

/// 200 when this replica can serve; 503 while draining or when its engine cannot serve.
/// From the figures kept by [`crate::figures`]: no round trip of its own.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, body = Ready), (status = 503, body = Ready)))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Ready>) {
    state.figures.probed();
    let not = |reason| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Ready {
                ready: false,
                reason: Some(reason),
            }),
        )
    };
    if state.is_draining() {
        return not("draining");
    }
    if state.engine.is_shared() && !figures::redis_up(&state).await {
        return not("presence store unreachable");
    }
    (
        StatusCode::OK,
        Json(Ready {
            ready: true,
            reason: None,
        }),
    )
}

/// `/api/health`'s answer.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok`, or `degraded` while a dependency is down, the figures are unknown or the
    /// replica is draining.
    pub status: &'static str,
    pub node: String,
    /// `memory` or `redis`.
    pub engine: &'static str,
    pub presence: HealthPresence,
    pub sockets: HealthSockets,
    pub dependencies: Dependencies,
    /// With a database: the presence writes waiting.
    pub database: Option<HealthDatabase>,
}

/// Cluster-wide figures (as last read), and this replica's uptime.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthPresence {
    pub online_users: Option<u64>,
    pub peak_online: Option<u64>,
    pub total_connections: Option<u64>,
    pub total_disconnections: Option<u64>,
    pub total_swepts: Option<u64>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_sweep_at: Option<crate::domain::Timestamp>,
    pub uptime_ms: u64,
}

/// This replica's `/` namespace.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthSockets {
    pub connected: usize,
    pub connected_users: usize,
}

/// Each `up`, `down` or `disabled` (not configured).
#[derive(Serialize, ToSchema)]
pub struct Dependencies {
    pub redis: &'static str,
    pub database: &'static str,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthDatabase {
    pub pending_writes: usize,
}

/// The operator's summary, from the figures kept by [`crate::figures`] (the cluster-wide
/// ones as last read, whatever Redis or PostgreSQL are doing now).
#[utoipa::path(get, path = "/api/health", tag = "health", responses((status = 200, body = Health)))]
pub async fn health(State(state): State<AppState>) -> ApiResult<Json<Health>> {
    state.figures.looked_at();
    let (redis, database) = figures::dependencies(&state).await;
    let stats = figures::current(&state).await;
    let degraded = redis == "down" || stats.is_none() || state.is_draining() || database == "down";
    let s = stats.as_ref();
    Ok(Json(Health {
        status: if degraded { "degraded" } else { "ok" },
        node: state.config.node_id.clone(),
        engine: state.engine.kind(),
        presence: HealthPresence {
            online_users: s.map(|s| s.online_users),
            peak_online: s.map(|s| s.peak_online),
            total_connections: s.map(|s| s.total_connections),
            total_disconnections: s.map(|s| s.total_disconnections),
            total_swepts: s.map(|s| s.total_swept),
            last_sweep_at: s.and_then(|s| s.last_sweep_at),
            uptime_ms: state.started_at.elapsed().as_millis() as u64,
        },
        sockets: HealthSockets {
            connected: state.gateway.sockets.len(),
            connected_users: state.gateway.sockets.users(),
        },
        dependencies: Dependencies { redis, database },
        database: state.db.as_ref().map(|db| HealthDatabase {
            pending_writes: db.writer.pending(),
        }),
    }))
}
