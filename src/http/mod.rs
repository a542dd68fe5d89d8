//! The HTTP API: health, readiness, metrics, presence, admin views, and the web console.
//!
//! [`router`] builds the routes over an [`AppState`]; it knows nothing of listening or
//! shutdown, so tests drive it directly with `tower::ServiceExt::oneshot`. [`serve`] accepts
//! connections, each wrapped in a [`crate::wire::LineIo`], which the fan-out also writes to.

pub mod admin;
pub mod blocks;
pub mod debug;
pub mod error;
pub mod extract;
pub mod health;
pub mod openapi;
pub mod presence;
pub mod privacy;
pub mod serve;
pub mod stats;
pub mod ui;
pub mod users;

use crate::error::AppError;
use crate::state::AppState;
use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post, put};

/// Bodies larger than this are refused with 413 before they are read.
pub const MAX_BODY: usize = 64 * 1024;

pub fn router(state: AppState) -> Router {
    // With METRICS_PORT, /metrics lives on its own listener ([`metrics_router`]) only.
    let base = if state.config.metrics_port.is_some() {
        Router::new()
    } else {
        Router::new().route("/metrics", get(metrics))
    };
    base.route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/api/health", get(health::health))
        .route("/api/openapi.json", get(openapi::openapi))
        .route("/api/presence", get(presence::many))
        .route("/api/presence/{user_id}", get(presence::one))
        .route("/api/users/search", get(users::search))
        .route(
            "/api/users/{user_id}/privacy",
            get(privacy::get).put(privacy::put),
        )
        .route("/api/users/{user_id}/blocks", get(blocks::list))
        .route(
            "/api/users/{user_id}/blocks/{other_id}",
            put(blocks::put).delete(blocks::delete),
        )
        .route("/api/stats", get(stats::report))
        .route("/api/events", post(stats::publish))
        .route("/api/debug/presence", get(debug::presence))
        .route("/api/debug/socket-status", get(debug::socket_status))
        .route("/api/check-online-status", get(debug::check_online_status))
        .route("/api/admin/nodes", get(admin::nodes))
        .route("/api/admin/users/{user_id}", get(admin::user))
        .route(
            "/api/admin/users/{user_id}/disconnect",
            post(admin::disconnect),
        )
        .route("/", get(ui::root))
        .route("/ui", get(ui::bare))
        .route("/ui/", get(ui::index))
        .route("/ui/{file}", get(ui::file))
        .fallback(|| async { AppError::NotFound("no such endpoint".into()) })
        // 405 keeps its HTTP meaning; the body is the API's error shape like every other.
        .method_not_allowed_fallback(|| async {
            (
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                AppError::bad_request("method not allowed on this path"),
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// `/metrics` alone, for the `METRICS_PORT` listener (anything else: 404 in the API's shape).
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .fallback(|| async { AppError::NotFound("no such endpoint".into()) })
        .with_state(state)
}

/// The Prometheus text. The cluster-wide gauges and the dependency states are kept current by
/// [`crate::figures`], so a scrape sends nothing to Redis or PostgreSQL.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, body = String, content_type = "text/plain")))]
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    state.figures.looked_at();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

pub(crate) fn database_missing() -> AppError {
    AppError::Unavailable("needs DATABASE_URL: persistence is disabled".into())
}

/// A `limit` query parameter: `default` when absent or empty, else a whole number 1..=`max`.
pub(crate) fn limit_param(
    raw: Option<&str>,
    default: usize,
    max: usize,
) -> Result<usize, AppError> {
    match raw {
        None | Some("") => Ok(default),
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| AppError::bad_request(format!("limit must be 1 to {max}"))),
    }
}
