//! The cluster figures this replica shows — `/api/health`, `/readyz`, `/metrics` and the
//! dashboards' `presence_stats` — kept refreshed in the background.
//!
//! Reading the cluster-wide figures costs a pipeline of Redis commands (one per bucket of
//! every counter). Done per request, an anonymous caller could make a replica hammer Redis,
//! and while Redis hangs (paused, or failing over) every health check would hang with it:
//! exactly when an operator needs the answer. Here one loop reads them, with a deadline, and
//! requests read what it last got, together with whether that read succeeded recently — which
//! is what "Redis is up" means to a replica whose connection may be open to a server that no
//! longer answers.
//!
//! The loop reads only while someone looks, at most once a second however many requests
//! arrive: the figures while a health or metrics request came in the last few seconds or a
//! dashboard is connected; otherwise, while readiness is probed, a one-command liveness check
//! (a probe every few seconds must not cost a figures read). An idle replica costs Redis
//! nothing. A request never waits for either: it gets what the last read found.

use crate::domain::Timestamp;
use crate::engine::{ClusterStats, EngineError};
use crate::state::AppState;
use serde_json::Value;
use std::time::Duration;

pub mod cache;
pub use cache::Figures;

/// How often the figures are read while someone looks.
pub const REFRESH: Duration = Duration::from_secs(1);
/// A read that takes longer is abandoned and counts as the store not answering.
const DEADLINE: Duration = Duration::from_millis(800);

/// The figures to show now: a replica that is the whole cluster reads its own memory (no
/// round trip, so always current); a shared store's are the last read.
pub async fn current(state: &AppState) -> Option<ClusterStats> {
    if state.engine.is_shared() {
        state.figures.stats()
    } else {
        state.engine.stats().await.ok()
    }
}

/// The live replicas' reports, as [`current`] reads them.
pub async fn replicas(state: &AppState) -> Vec<serde_json::Value> {
    if state.engine.is_shared() {
        state.figures.replicas()
    } else {
        nodes(state).await.unwrap_or_default()
    }
}

/// Whether Redis (the Redis engine's store) is up: connected, and answering.
pub async fn redis_up(state: &AppState) -> bool {
    state.engine.ready().await && state.figures.store_answers()
}

/// The dependencies' states as health shows them: `up`, `down` or `disabled`.
pub async fn dependencies(state: &AppState) -> (&'static str, &'static str) {
    let redis = if !state.engine.is_shared() {
        "disabled"
    } else if redis_up(state).await {
        "up"
    } else {
        "down"
    };
    let database = match &state.db {
        None => "disabled",
        Some(db) if db.is_up() && db.schema_ready() => "up",
        Some(_) => "down",
    };
    (redis, database)
}

/// Read the figures once, within the deadline, and set the gauges that follow them.
pub async fn refresh(state: &AppState) {
    read(state).await;
    let (redis, database) = dependencies(state).await;
    if state.engine.is_shared() {
        state.metrics.set_dependency_up("redis", redis == "up");
    }
    if state.db.is_some() {
        state
            .metrics
            .set_dependency_up("database", database == "up");
    }
}

/// Only whether the store answers, in one command.
async fn check(state: &AppState) {
    let ok = matches!(
        tokio::time::timeout(DEADLINE, state.engine.ping()).await,
        Ok(Ok(()))
    );
    state.figures.answered(ok);
    let up = redis_up(state).await;
    state.metrics.set_dependency_up("redis", up);
}

async fn read(state: &AppState) {
    let both = async { tokio::try_join!(state.engine.stats(), nodes(state)) };
    match tokio::time::timeout(DEADLINE, both).await {
        Ok(Ok((s, replicas))) => {
            state.metrics.online_users.set(s.online_users as f64);
            state.metrics.invisible_users.set(s.invisible_users as f64);
            state.metrics.peak_online.set(s.peak_online as f64);
            state.metrics.set_online_by_gender(s.online_by_gender);
            state.figures.read(s, replicas);
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "cluster figures not read");
            state.figures.answered(false);
        }
        Err(_) => {
            tracing::debug!("cluster figures not read in time");
            state.figures.answered(false);
        }
    }
}

/// The refresh loop.
pub fn spawn(state: &AppState) {
    state.background.spawn(run(state.clone()));
}

async fn run(state: AppState) {
    let mut tick = crate::background::ticker(REFRESH);
    while state.background.tick(&mut tick).await {
        let f = &state.figures;
        if f.looked_at_lately() {
            refresh(&state).await;
        } else if f.probed_lately() && state.engine.is_shared() {
            check(&state).await;
        }
    }
}

/// A replica whose report (`gateway::cluster`) is older than this is gone (three missed
/// reports, and a second for a slow store).
pub const REPORT_MAX_AGE: Duration = Duration::from_secs(7);

/// The live replicas' reports, by node.
pub async fn nodes(state: &AppState) -> Result<Vec<Value>, EngineError> {
    let reports = state
        .engine
        .replicas(REPORT_MAX_AGE.as_millis() as u64, Timestamp::now())
        .await?;
    Ok(reports
        .into_iter()
        .filter_map(|(_, r)| serde_json::from_str(&r).ok())
        .collect())
}
