//! PostgreSQL: what must outlive Redis and the replicas — users, their last known presence.
//!
//! Live presence is the engine's; the database is a durable, slightly delayed copy of it
//! (so `lastSeen` survives Redis forgetting a user who left months ago) plus the user
//! directory that search runs over. Nothing on the live path waits for PostgreSQL:
//!
//! - [`writer::PresenceWriter`] takes changes from memory and writes them in batches, late by
//!   at most the debounce, and keeps them (one per user) through an outage;
//! - [`users`] reads: the gender of a token without one (cached), offline users' last
//!   presence, search, and the database-versus-live comparison.
//!
//! Every query is a runtime query (`sqlx::query`), so building needs no live database; the
//! migrations in `migrations/` are embedded in the binary.

pub mod blocks;
pub mod privacy;
pub mod retention;
pub mod stats;
pub mod unknown;
pub mod users;
pub mod webhook;
pub mod writer;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long a request waits for a pooled connection before it gives up: a database that
/// does not answer must turn into a quick `unavailable`, not a hung request.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl DbError {
    /// The database refused what was sent (a value it cannot store, a constraint), as opposed
    /// to not answering: the same statement will fail again, so retrying it whole is useless.
    pub fn is_data_error(&self) -> bool {
        matches!(self, DbError::Sql(sqlx::Error::Database(d))
            if d.code().is_some_and(|c| c.starts_with("22") || c.starts_with("23")))
    }
}

impl From<DbError> for crate::error::AppError {
    fn from(e: DbError) -> Self {
        tracing::warn!(cause = %e, "database unavailable");
        crate::error::AppError::Unavailable("the database is temporarily unavailable".into())
    }
}

/// The pool, and what this replica believes about the database's health.
pub struct Database {
    pool: PgPool,
    up: AtomicBool,
    /// The schema is migrated (or migrations are someone else's job): queries may run.
    schema: tokio::sync::watch::Sender<bool>,
    pub users: users::Users,
    /// Ids the database did not know lately ([`unknown`]).
    pub unknown: unknown::UnknownIds,
    pub writer: writer::PresenceWriter,
}

pub struct DbSettings<'a> {
    pub url: &'a str,
    pub max_connections: u32,
    pub online_debounce: Duration,
    pub offline_debounce: Duration,
    pub node: &'a str,
}

impl Database {
    /// A pool that connects on first use: the gateway starts (and serves presence) even when
    /// the database is down at that moment.
    pub fn new(s: DbSettings<'_>) -> Result<Self, DbError> {
        let options = PgConnectOptions::from_str(s.url)?.application_name("presence-gateway");
        let pool = PgPoolOptions::new()
            .max_connections(s.max_connections)
            .min_connections(0)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options);
        Ok(Database {
            pool,
            // Presumed up until a query fails: lookups right after start-up are tried, not
            // skipped (they fail fast enough if it is in fact down).
            up: AtomicBool::new(true),
            schema: tokio::sync::watch::Sender::new(false),
            users: users::Users::default(),
            unknown: unknown::UnknownIds::default(),
            writer: writer::PresenceWriter::new(s.online_debounce, s.offline_debounce, s.node),
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Apply the embedded migrations. Idempotent, and safe from several replicas at once:
    /// sqlx serialises migrators on a PostgreSQL advisory lock.
    pub async fn migrate(&self) -> Result<(), DbError> {
        let r = MIGRATOR.run(&self.pool).await.map_err(DbError::from);
        self.observe(&r);
        r
    }

    /// Declare the schema ready (migrated here, or by `presence-gateway migrate`).
    pub fn set_schema_ready(&self) {
        self.schema.send_replace(true);
    }

    pub fn schema_ready(&self) -> bool {
        *self.schema.borrow()
    }

    /// Whether the schema is ready, waiting for it at most `limit` (a handshake right after
    /// start, while this replica migrates, waits rather than fails).
    pub async fn schema_within(&self, limit: Duration) -> bool {
        self.schema_ready()
            || tokio::time::timeout(limit, self.wait_schema())
                .await
                .is_ok()
    }

    /// Wait until the schema is ready.
    pub async fn wait_schema(&self) {
        let mut rx = self.schema.subscribe();
        let _ = rx.wait_for(|ready| *ready).await;
    }

    /// Whether the database answered its last query.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Record the outcome of a query, for health and for skipping doomed lookups.
    pub fn observe<T>(&self, r: &Result<T, DbError>) {
        let ok = match r {
            Ok(_) => true,
            // A constraint violation or a bad query says nothing about reachability.
            Err(DbError::Sql(e)) => !is_connectivity(e),
            Err(DbError::Migrate(m)) => match m {
                sqlx::migrate::MigrateError::Execute(e)
                | sqlx::migrate::MigrateError::ExecuteMigration(e, _) => !is_connectivity(e),
                // A modified or missing migration: the database answered.
                _ => true,
            },
        };
        if self.up.swap(ok, Ordering::AcqRel) != ok {
            if ok {
                tracing::info!("database reachable");
            } else {
                tracing::warn!("database unreachable");
            }
        }
    }

    /// A cheap round trip, for the health monitor.
    pub async fn ping(&self) -> bool {
        let r = sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(DbError::from);
        self.observe(&r);
        r.is_ok()
    }
}

fn is_connectivity(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Protocol(_)
    ) || matches!(e, sqlx::Error::Database(d) if d.code().is_some_and(|c|
        // admin_shutdown, crash_shutdown, cannot_connect_now, too_many_connections
        matches!(&*c, "57P01" | "57P02" | "57P03" | "53300")))
}
