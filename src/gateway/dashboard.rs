//! `/dashboard` (roles `dashboard` or `admin`): `stats_update` for every stored statistics
//! event, in `seq` order; `presence_stats` at most once a second when the cluster's figures
//! changed (and once on connect); `stats_resync` to a dashboard too slow to keep up.

use super::handshake::{HandshakeError, find_token};
use crate::auth::Role;
use crate::domain::stats::StatsUpdate;
use crate::domain::{Gender, Timestamp};
use crate::state::AppState;
use crate::stats::DashboardHandle;
use serde_json::{Value, json};
use socketioxide::extract::{SocketRef, State, TryData};
use socketioxide::{SendError, SocketError};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

pub const NAMESPACE: &str = "/dashboard";
/// How often sockets that fell behind are offered their `stats_resync`.
const RESYNC_RETRY: Duration = Duration::from_millis(250);

pub async fn admit(
    s: SocketRef,
    TryData(auth): TryData<Value>,
    State(state): State<AppState>,
) -> Result<(), HandshakeError> {
    let r = (|| {
        if state.is_closing() {
            return Err(HandshakeError::Unavailable("this replica is shutting down"));
        }
        let token = find_token(&s, &auth.unwrap_or(Value::Null))
            .ok_or_else(|| HandshakeError::Unauthorized("missing token".into()))?;
        let who = state.auth.verify_bearer(&token)?;
        who.require(&[Role::Dashboard, Role::Admin])?;
        s.extensions.insert(Arc::new(DashboardHandle::default()));
        Ok(())
    })();
    if let Err(e) = &r {
        state.metrics.handshake_failed(e.reason());
    }
    r
}

pub async fn connected(s: SocketRef, State(state): State<AppState>) {
    state.metrics.sockets_dashboard.increment(1.0);
    s.on_disconnect(|State(state): State<AppState>| async move {
        state.metrics.sockets_dashboard.decrement(1.0);
    });
    if let Ok(stats) = state.engine.stats().await {
        let _ = s.emit("presence_stats", &presence_stats(&stats));
    }
}

fn sockets(state: &AppState) -> Vec<SocketRef> {
    state
        .io
        .get()
        .and_then(|io| io.of(NAMESPACE))
        .map(|ns| ns.sockets())
        .unwrap_or_default()
}

fn handle(s: &SocketRef) -> Option<Arc<DashboardHandle>> {
    s.extensions.get::<Arc<DashboardHandle>>()
}

/// Emit one stored event to every dashboard here that is keeping up.
pub fn emit_update(state: &AppState, u: &StatsUpdate) {
    for s in sockets(state) {
        let Some(h) = handle(&s) else { continue };
        if h.behind.load(Ordering::Acquire) {
            continue;
        }
        if let Err(SendError::Socket(SocketError::InternalChannelFull)) = s.emit("stats_update", u)
        {
            h.behind.store(true, Ordering::Release);
            metrics::counter!("stats_dashboards_resynced_total").increment(1);
        }
    }
}

/// Offer `stats_resync` to dashboards that fell behind, until each has taken it.
pub async fn run_resync(state: AppState) {
    let mut tick = tokio::time::interval(RESYNC_RETRY);
    loop {
        tokio::select! {
            _ = state.stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let Some(stats) = &state.stats else { continue };
        for s in sockets(&state) {
            let Some(h) = handle(&s) else { continue };
            if h.behind.load(Ordering::Acquire) {
                let body = json!({
                    "lastEventSeq": stats.delivered(),
                    "reason": "too many updates for this connection; refetch /api/stats",
                });
                if s.emit("stats_resync", &body).is_ok() {
                    h.behind.store(false, Ordering::Release);
                }
            }
        }
    }
}

fn presence_stats(s: &crate::engine::ClusterStats) -> Value {
    json!({
        "onlineUsers": s.online_users,
        "peakOnline": s.peak_online,
        "byGender": {
            "male": s.online_by_gender[Gender::Male.index()],
            "female": s.online_by_gender[Gender::Female.index()],
            "other": s.online_by_gender[Gender::Other.index()],
        },
        "nodes": s.nodes,
    })
}

/// `presence_stats` to this replica's dashboards, at most once a second, when it changed.
pub async fn run_presence_stats(state: AppState) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<Value> = None;
    loop {
        tokio::select! {
            _ = state.stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let targets = sockets(&state);
        if targets.is_empty() {
            last = None;
            continue;
        }
        let Ok(stats) = state.engine.stats().await else {
            continue;
        };
        let figures = presence_stats(&stats);
        if last.as_ref() == Some(&figures) {
            continue;
        }
        let mut body = figures.clone();
        body["at"] = json!(Timestamp::now());
        for s in targets {
            let _ = s.emit("presence_stats", &body);
        }
        last = Some(figures);
    }
}
