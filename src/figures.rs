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

use crate::engine::ClusterStats;
use crate::state::AppState;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often the figures are read while someone looks.
pub const REFRESH: Duration = Duration::from_secs(1);
/// A read that takes longer is abandoned and counts as the store not answering.
const DEADLINE: Duration = Duration::from_millis(800);
/// Reads go on this long after the last request that looked.
const LOOKED_AT: Duration = Duration::from_secs(3);

pub struct Figures {
    last: RwLock<Last>,
    /// When a request last looked at the figures, and at liveness only (ms since `epoch`).
    looked: AtomicU64,
    probed: AtomicU64,
    epoch: Instant,
}

impl Default for Figures {
    fn default() -> Self {
        Figures {
            last: RwLock::default(),
            looked: AtomicU64::new(0),
            probed: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

#[derive(Default, Clone)]
struct Last {
    stats: Option<ClusterStats>,
    /// The live replicas' reports (`gateway::cluster`).
    replicas: Vec<serde_json::Value>,
    /// Whether the last read succeeded in time.
    answered: bool,
}

impl Figures {
    fn last(&self) -> std::sync::RwLockReadGuard<'_, Last> {
        self.last.read().unwrap_or_else(|e| e.into_inner())
    }

    fn now_ms(&self) -> u64 {
        (self.epoch.elapsed().as_millis() as u64).max(1)
    }

    /// Someone looks at the figures: keep them fresh for a while.
    pub fn looked_at(&self) {
        self.looked.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Someone asks whether the store answers (readiness): check it for a while.
    pub fn probed(&self) {
        self.probed.store(self.now_ms(), Ordering::Relaxed);
    }

    fn recent(&self, at: &AtomicU64) -> bool {
        let at = at.load(Ordering::Relaxed);
        at > 0 && self.now_ms() - at <= LOOKED_AT.as_millis() as u64
    }

    /// The last figures read, however old (none before the first read).
    pub fn stats(&self) -> Option<ClusterStats> {
        self.last().stats.clone()
    }

    /// Whether the presence store answered the last read in time.
    pub fn store_answers(&self) -> bool {
        self.last().answered
    }

    /// Read the figures once, within the deadline, and set the gauges that follow them.
    pub async fn refresh(&self, state: &AppState) {
        self.read(state).await;
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
    async fn check(&self, state: &AppState) {
        let ok = matches!(
            tokio::time::timeout(DEADLINE, state.engine.ping()).await,
            Ok(Ok(()))
        );
        self.last
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .answered = ok;
        let up = redis_up(state).await;
        state.metrics.set_dependency_up("redis", up);
    }

    async fn read(&self, state: &AppState) {
        let both =
            async { tokio::try_join!(state.engine.stats(), crate::gateway::cluster::nodes(state)) };
        let read = tokio::time::timeout(DEADLINE, both).await;
        let mut last = self.last.write().unwrap_or_else(|e| e.into_inner());
        match read {
            Ok(Ok((s, replicas))) => {
                state.metrics.online_users.set(s.online_users as f64);
                state.metrics.invisible_users.set(s.invisible_users as f64);
                state.metrics.peak_online.set(s.peak_online as f64);
                state.metrics.set_online_by_gender(s.online_by_gender);
                *last = Last {
                    stats: Some(s),
                    replicas,
                    answered: true,
                };
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "cluster figures not read");
                last.answered = false;
            }
            Err(_) => {
                tracing::debug!("cluster figures not read in time");
                last.answered = false;
            }
        }
    }
}

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
        state.figures.last().replicas.clone()
    } else {
        crate::gateway::cluster::nodes(state)
            .await
            .unwrap_or_default()
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

/// The refresh loop.
pub fn spawn(state: &AppState) {
    state.background.spawn(run(state.clone()));
}

async fn run(state: AppState) {
    let mut tick = crate::background::ticker(REFRESH);
    while state.background.tick(&mut tick).await {
        let f = &state.figures;
        if f.recent(&f.looked) {
            f.refresh(&state).await;
        } else if f.recent(&f.probed) && state.engine.is_shared() {
            f.check(&state).await;
        }
    }
}
