//! `AppState`: the cheap, cloneable bundle of handles shared by axum, socketioxide and the
//! background tasks.

use crate::auth::Authenticator;
use crate::config::Config;
use crate::db::Database;
use crate::engine::PresenceEngine;
use crate::metrics::Metrics;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub config: Arc<Config>,
    pub engine: Arc<dyn PresenceEngine>,
    /// PostgreSQL, when `DATABASE_URL` is set.
    pub db: Option<Arc<Database>>,
    /// Live statistics, when there is a database to store them.
    pub stats: Option<Arc<crate::stats::Stats>>,
    pub auth: Arc<Authenticator>,
    pub metrics: Metrics,
    /// The Socket.IO side's shared pieces: the layer's handle, this replica's sockets, the
    /// heartbeat batch, the fan-out's viewers and backlogs.
    pub gateway: crate::gateway::hub::Hub,
    /// Authenticated HTTP requests per caller identity.
    pub http_limits: crate::limits::KeyedLimiter<String>,
    /// New Socket.IO sessions per client address.
    pub handshake_limits: crate::limits::KeyedLimiter<std::net::IpAddr>,
    /// `/widget` joins per client address (each stores a row).
    pub widget_join_limits: crate::limits::KeyedLimiter<std::net::IpAddr>,
    /// Each Engine.IO session's request budget per namespace: a namespace reconnect inside the
    /// session (same socket id) gets the budget it left with, not a full one.
    pub session_budgets: crate::limits::ParkedBudgets<(socketioxide::socket::Sid, &'static str)>,
    /// The cluster figures and dependency states, refreshed in the background.
    pub figures: crate::figures::cache::Figures,
    /// Connections that asked to carry an upgrading session (the direct path's candidates).
    pub upgrades: crate::wire::Upgrades,
    pub started_at: Instant,
    /// `/readyz` answers 503 from the first shutdown signal on.
    draining: AtomicBool,
    /// Sockets closing from now on are closed by the shutdown (shutdown grace applies).
    closing: AtomicBool,
    /// Every task this replica spawns that must end before it exits (loops, grace timers,
    /// revivals), and the token that stops them.
    pub background: crate::background::Background,
}

impl Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    pub fn new(
        config: Config,
        engine: Arc<dyn PresenceEngine>,
        db: Option<Arc<Database>>,
        auth: Authenticator,
    ) -> Self {
        let metrics = Metrics::new(&config.node_id);
        let http_limits = crate::limits::KeyedLimiter::new(
            config.http_rate_limit_per_sec,
            config.http_rate_limit_burst,
        );
        let handshake_limits = crate::limits::KeyedLimiter::new(
            config.handshake_rate_per_ip,
            config.handshake_burst_per_ip,
        );
        let widget_join_limits = crate::limits::KeyedLimiter::new(
            config.widget_join_rate_per_ip,
            config.widget_join_burst_per_ip,
        );
        let session_budgets = crate::limits::ParkedBudgets::default();
        AppState(Arc::new(Shared {
            config: Arc::new(config),
            engine,
            stats: db.clone().map(|d| Arc::new(crate::stats::Stats::new(d))),
            db,
            auth: Arc::new(auth),
            metrics,
            gateway: Default::default(),
            http_limits,
            handshake_limits,
            widget_join_limits,
            session_budgets,
            figures: Default::default(),
            upgrades: Default::default(),
            started_at: Instant::now(),
            draining: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            background: Default::default(),
        }))
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Where blocks are kept, and their limit (section 11).
    pub fn blocks(&self) -> crate::blocks::Blocks<'_> {
        crate::blocks::Blocks {
            engine: &*self.engine,
            db: self.db.as_deref(),
            max: self.config.max_blocks,
        }
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    pub fn start_closing(&self) {
        self.closing.store(true, Ordering::Release);
    }
}
