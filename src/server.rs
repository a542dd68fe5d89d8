//! Building the gateway from a [`Config`] and running it until shutdown.
//! (Over 400 lines because the shutdown sequence and the database loop are told here in
//! full, in the order they run; each part's own loops live with the part.)
//!
//! [`Gateway::build`] wires engine, auth, Socket.IO and HTTP without listening, so tests can
//! drive the router directly; [`run`] takes an already-bound listener (tests bind port 0)
//! and a [`CancellationToken`] that starts the shutdown sequence:
//!
//! 1. `/readyz` turns 503 at once; the replica keeps serving for `SHUTDOWN_DELAY_MS`, so a
//!    load balancer stops sending it new clients;
//! 2. it stops accepting, and closes every socket's *transport* (not a namespace disconnect,
//!    which would make socket.io-client give up): clients reconnect by themselves, elsewhere;
//!    their connections are recorded as closed by a shutdown, so the shutdown grace applies;
//! 3. background tasks stop, after a last heartbeat flush; grace timers are dropped (the
//!    rest of the cluster applies them); it returns, and the process exits 0.

use crate::auth::{Authenticator, KeySetup};
use crate::config::{Config, ConfigError};
use crate::db::{Database, DbSettings};
use crate::domain::Timestamp;
use crate::engine::{PresenceEngine, memory::MemoryEngine, redis::RedisEngine};
use crate::gateway::{self, heartbeats};
use crate::state::AppState;
use axum::Router;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How long shutdown waits for sockets to close and tasks to end before it gives up on them.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(5);
/// How long in-flight HTTP requests get once every socket is closed. A long-poll request of a
/// session closed meanwhile may never be answered; its client sees the connection drop and
/// reconnects all the same.
const HTTP_DRAIN: Duration = Duration::from_secs(1);

pub struct Gateway {
    pub state: AppState,
    pub router: Router,
    /// The key was generated for this run (development without `JWT_SECRET`).
    pub generated_secret: bool,
}

impl Gateway {
    pub async fn build(config: Config) -> Result<Self, ConfigError> {
        let KeySetup {
            authenticator,
            generated_secret,
        } = Authenticator::from_config(&config)?;
        let engine: Arc<dyn PresenceEngine> = match &config.redis_url {
            None => Arc::new(
                MemoryEngine::with_buffer(&config.node_id, config.event_buffer)
                    .with_max_connections_per_user(config.max_connections_per_user)
                    .with_flap_rule(config.flap),
            ),
            Some(url) => {
                let e = RedisEngine::connect_with_buffer(
                    url,
                    &config.redis_key_prefix,
                    &config.node_id,
                    config.event_buffer,
                )
                .await
                .map(|e| {
                    e.with_max_connections_per_user(config.max_connections_per_user)
                        .with_flap_rule(config.flap)
                        .with_webhooks(config.webhook.is_some())
                })
                .map_err(|e| ConfigError {
                    var: "REDIS_URL",
                    message: format!("cannot use Redis: {e}"),
                })?;
                Arc::new(e)
            }
        };
        let db = match &config.database_url {
            None => None,
            Some(url) => Some(Arc::new(
                Database::new(DbSettings {
                    url,
                    max_connections: config.database_pool_size,
                    online_debounce: Duration::from_millis(config.db_online_debounce_ms),
                    offline_debounce: Duration::from_millis(config.db_offline_debounce_ms),
                    node: &config.node_id,
                })
                .map_err(|e| ConfigError {
                    var: "DATABASE_URL",
                    message: e.to_string(),
                })?,
            )),
        };
        let state = AppState::new(config, engine, db, authenticator);
        // Health and dashboards show figures from the first request on.
        crate::figures::refresh(&state).await;
        let router = crate::http::router(state.clone())
            .layer(gateway::layer(&state))
            .layer(axum::middleware::map_request(gateway::detach_request))
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                gateway::admit_session,
            ))
            // Web widgets connect from other origins; no cookies are involved, so any origin.
            .layer(
                tower_http::cors::CorsLayer::new()
                    .allow_origin(tower_http::cors::Any)
                    .allow_headers(tower_http::cors::Any)
                    .allow_methods(tower_http::cors::Any),
            );
        Ok(Gateway {
            state,
            router,
            generated_secret,
        })
    }

    /// Start the background work; each part spawns its own loops into
    /// [`AppState::background`](crate::state::Shared::background).
    pub fn spawn_background(&self) {
        let state = &self.state;
        gateway::spawn(state);
        state.background.spawn(gateway::rules::run(state.clone()));
        crate::figures::spawn(state);
        crate::webhook::spawn(state);
        let bg = &state.background;
        bg.spawn(sweep_loop(state.clone()));
        if state.config.enable_server_heartbeat {
            bg.spawn(server_heartbeat_loop(state.clone()));
        }
        if let Some(stats) = &state.stats {
            spawn_stats(state, stats);
        }
        if let Some(db) = &state.db {
            spawn_database(state, db);
        }
    }
}

/// Statistics: the committer, and the receiver that delivers to this replica's dashboards.
fn spawn_stats(state: &AppState, stats: &Arc<crate::stats::Stats>) {
    let bg = &state.background;
    let (s, st) = (stats.clone(), state.clone());
    bg.spawn(async move {
        s.run_committer(st.engine.clone(), st.background.stop.clone())
            .await
    });
    let (s, st) = (stats.clone(), state.clone());
    bg.spawn(async move {
        let emit_state = st.clone();
        s.run_receiver(
            st.engine.clone(),
            move |u| gateway::dashboard::emit_update(&emit_state, u),
            st.background.stop.clone(),
        )
        .await
    });
}

/// PostgreSQL: migrations and the presence writer, the change recorder, and the listener of
/// gender changes.
fn spawn_database(state: &AppState, db: &Arc<Database>) {
    let bg = &state.background;
    let (st, d) = (state.clone(), db.clone());
    bg.spawn(async move {
        let each = |user| {
            let st2 = st.clone();
            st.background
                .spawn(async move { gateway::gender::apply_database_gender(&st2, &user).await });
        };
        d.gender_changes(each, st.background.stop.clone()).await
    });
    // The writer's last flush waits until the recorder has drained what arrived.
    let (drained, drained_rx) = tokio::sync::oneshot::channel();
    let (state2, db2, rx) = (state.clone(), db.clone(), state.engine.subscribe());
    bg.spawn(database_loop(state.clone(), db.clone(), drained_rx));
    bg.spawn(async move {
        record_changes(state2, db2, rx).await;
        let _ = drained.send(());
    });
}

async fn sweep_loop(state: AppState) {
    let mut tick = crate::background::ticker(Duration::from_millis(state.config.sweep_interval_ms));
    let mut was_ready = true;
    while state.background.tick(&mut tick).await {
        // Budgets nobody used lately are as good as new: forget them. A session's is kept a
        // minute, so a namespace reconnect finds the budget it left with.
        state.http_limits.prune(Duration::ZERO);
        state.handshake_limits.prune(Duration::ZERO);
        state.widget_join_limits.prune(Duration::ZERO);
        state.session_budgets.prune(Duration::from_secs(60));
        // The store is back after an outage (and may have lost everything): have the next
        // heartbeat flush check, and restore, every local connection.
        let ready = state.engine.ready().await;
        if ready && !was_ready {
            tracing::info!("presence store reachable again; restoring local connections");
            heartbeats::requeue_all(&state);
        }
        was_ready = ready;
        if !ready {
            continue;
        }
        match state
            .engine
            .sweep(state.config.heartbeat_timeout_ms, Timestamp::now())
            .await
        {
            Ok(r) => {
                state.metrics.swept.increment(r.swept);
                if r.swept > 0 || r.went_offline > 0 {
                    tracing::info!(swept = r.swept, went_offline = r.went_offline, "sweep");
                }
            }
            Err(e) => tracing::warn!(error = %e, "sweep failed; next tick retries"),
        }
    }
}

/// How often the database is pinged while nothing else shows whether it answers.
const DB_PING: Duration = Duration::from_secs(2);

/// The database side: migrate (retrying until the database answers), then run the presence
/// writer and a health ping; on shutdown, flush what is pending.
async fn database_loop(
    state: AppState,
    db: Arc<Database>,
    recorder_drained: tokio::sync::oneshot::Receiver<()>,
) {
    if !state.config.database_skip_migrations {
        let mut delay = Duration::from_millis(200);
        loop {
            match db.migrate().await {
                Ok(()) => break,
                Err(e) => tracing::warn!(error = %e, "migrations not applied yet; retrying"),
            }
            tokio::select! {
                _ = state.background.stop.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
    db.set_schema_ready();
    let (retention, stop) = (db.clone(), state.background.stop.clone());
    let days = state.config.stats_retention_days;
    state
        .background
        .spawn(async move { retention.run_retention(days, stop).await });
    let rollups = db.clone();
    let gap = state.config.stats_session_gap_ms;
    tokio::spawn(async move {
        match rollups.ensure_rollup_gap(gap).await {
            Ok(false) => {}
            Ok(true) => tracing::warn!(
                session_gap_ms = gap,
                "statistics rollups rebuilt for this STATS_SESSION_GAP_MS; replicas configured otherwise report from raw events (slower)"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "statistics rollups not checked; reports may come from raw events")
            }
        }
    });
    if !state.engine.is_shared() {
        // This replica is the whole cluster and it starts empty: whoever the database still
        // believes online (the users of a last run that did not stop cleanly) is offline now.
        match db.settle_all_offline(Timestamp::now(), false).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                users = n,
                "marked offline in the database: left online by the last run"
            ),
            Err(e) => tracing::warn!(error = %e, "could not settle the last run's online users"),
        }
    } else {
        db.ping().await;
    }
    let ping = async {
        let mut tick = tokio::time::interval(DB_PING);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            db.ping().await;
        }
    };
    tokio::select! {
        _ = db.writer.run(&db, state.background.stop.clone()) => {}
        _ = ping => {}
    }
    // Stopping: what the change recorder still drains must make this flush.
    if tokio::time::timeout(SHUTDOWN_DEADLINE, recorder_drained)
        .await
        .is_err()
    {
        tracing::warn!("presence change recorder did not drain in time");
    }
    let pending = db.writer.pending();
    if pending > 0 {
        if db.writer.flush_all(&db, SHUTDOWN_DEADLINE).await {
            tracing::info!(users = pending, "pending presence writes flushed");
        } else {
            tracing::warn!(
                left = db.writer.pending(),
                "pending presence writes not flushed at exit"
            );
            return;
        }
    }
    if !state.engine.is_shared() {
        // This replica was the whole cluster: once it is gone nobody is online, and they were
        // last seen now (left online, they would get their last change as lastSeen at the
        // next start). The Redis engine leaves the shutdown grace to the other replicas.
        match db.settle_all_offline(Timestamp::now(), true).await {
            Ok(n) => tracing::info!(users = n, "users stored offline at shutdown"),
            Err(e) => {
                tracing::warn!(error = %e, "users not stored offline at shutdown; the next start will")
            }
        }
    }
}

/// Queue, for the database, every change this replica committed. Each change is committed
/// by exactly one replica, so each is written once (the version guard makes a second write
/// harmless anyway).
async fn record_changes(
    state: AppState,
    db: Arc<Database>,
    mut rx: tokio::sync::broadcast::Receiver<crate::engine::PresenceEvent>,
) {
    use tokio::sync::broadcast::error::RecvError;
    let node = state.config.node_id.as_str();
    loop {
        let ev = tokio::select! {
            _ = state.background.stop.cancelled() => break,
            r = rx.recv() => r,
        };
        match ev {
            Ok(ev) if &*ev.origin == node => db.writer.record(&ev.presence),
            Ok(_) => {}
            Err(RecvError::Lagged(n)) => {
                // Cannot happen short of a stalled runtime (recording is a map insert), but
                // if it does, say so: the database may miss these changes until the users'
                // next ones, and /api/check-online-status shows them.
                db.writer.note_lost(n);
                tracing::error!(missed = n, "presence writer fell behind the change stream");
            }
            Err(RecvError::Closed) => break,
        }
    }
    // Whatever arrived before the stop is still recorded.
    while let Ok(ev) = rx.try_recv() {
        if &*ev.origin == node {
            db.writer.record(&ev.presence);
        }
    }
}

async fn server_heartbeat_loop(state: AppState) {
    let period = Duration::from_millis(state.config.server_heartbeat_interval_ms);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    while state.background.tick(&mut tick).await {
        if let Some(io) = state.gateway.io.get() {
            let _ = io
                .emit(
                    "server:heartbeat",
                    &serde_json::json!({"at": Timestamp::now()}),
                )
                .await;
        }
    }
}

/// Serve on `listener` until `shutdown` is cancelled, then shut down as the module says.
pub async fn run(
    gw: Gateway,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let state = gw.state.clone();
    gw.spawn_background();
    let stop_accepting = CancellationToken::new();
    let server = tokio::spawn(crate::http::serve::serve(
        listener,
        gw.router,
        state.upgrades.clone(),
        stop_accepting.clone(),
    ));

    shutdown.cancelled().await;
    tracing::info!(
        delay_ms = state.config.shutdown_delay_ms,
        "shutting down: readiness off"
    );
    state.start_draining();
    tokio::time::sleep(Duration::from_millis(state.config.shutdown_delay_ms)).await;

    state.start_closing();
    stop_accepting.cancel();
    if let Some(io) = state.gateway.io.get()
        && tokio::time::timeout(SHUTDOWN_DEADLINE, io.close())
            .await
            .is_err()
    {
        tracing::warn!("sockets did not all close in time");
    }
    tracing::debug!("sockets closed");
    // socketioxide runs no disconnect handler for a long-polling socket closed this way (the
    // namespaces are gone by the time the engine reports the close), so record whatever is
    // left as closed by the shutdown; the per-socket gate keeps each close to one.
    let left = state.gateway.sockets.snapshot();
    tracing::debug!(
        left = left.len(),
        "recording closes the library did not report"
    );
    // All at once, and within the deadline: one at a time, with the presence store gone, each
    // would wait out its command timeout (thousands of sockets: a replica that never exits).
    // What is not recorded by then, the sweep of the replicas that stay removes.
    let mut closes = tokio::task::JoinSet::new();
    for h in left {
        let st = state.clone();
        closes.spawn(async move {
            gateway::events::record_close(&st, &h, st.config.shutdown_grace_ms).await;
        });
    }
    if tokio::time::timeout(SHUTDOWN_DEADLINE, closes.join_all())
        .await
        .is_err()
    {
        tracing::warn!("closes not all recorded in time; the sweep will remove the rest");
    }
    if !state.background.shut_down(SHUTDOWN_DEADLINE).await {
        tracing::warn!("background tasks did not stop in time");
    }
    // Only plain HTTP requests can be left by now, and they are short.
    match tokio::time::timeout(HTTP_DRAIN, server).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "server task failed"),
        Err(_) => tracing::warn!("connections still open at exit"),
    }
    tracing::info!("stopped");
    Ok(())
}
