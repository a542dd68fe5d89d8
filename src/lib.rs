//! presence-gateway: who is online, right now, correctly, from any number of replicas.
//!
//! A tour of the crate, from the inside out:
//!
//! - [`domain`]: the presence rules — statuses, versions, the lifecycle of a user's presence,
//!   who may see whom. Pure: no transport or storage crate is imported there.
//! - [`engine`]: where presence state lives and how changes reach every replica. One trait,
//!   [`engine::PresenceEngine`]; [`engine::memory`] for a single replica, the Redis engine
//!   for a cluster.
//! - [`db`]: PostgreSQL — users, a durable copy of presence written behind the live path,
//!   search. Optional: without `DATABASE_URL` the rest works unchanged.
//! - [`stats`]: live statistics of the chat widgets — stored, then announced in `seq` order
//!   to every dashboard, and the `/api/stats` report.
//! - [`presence`]: queries with the visibility rule applied, shared by both transports.
//! - [`auth`]: JWTs in, an [`auth::Identity`] out.
//! - [`gateway`]: Socket.IO — handshakes, client events, heartbeat batching, fan-out.
//! - [`http`]: the HTTP API, health, readiness and `/metrics`.
//! - [`wire`]: the direct path — presence frames written straight onto a WebSocket client's
//!   connection, only while the bytes on it prove that is right.
//! - [`server`]: wiring it all from a [`config::Config`], serving, and shutting down.
//! - [`background`]: background work supervised as one thing (stop token, tracker, timer).
//! - [`figures`]: the cluster figures and dependency states health, metrics and dashboards
//!   show, refreshed in the background (no request waits on Redis or PostgreSQL for them).
//! - [`limits`]: budgets by identity, address and session, and the client's address.
//! - [`config`], [`metrics`], [`error`], [`state`], [`telemetry`], [`cli`]: the pieces
//!   those share; `main.rs` only calls [`cli::main`].

pub mod auth;
pub mod background;
pub mod blocks;
pub mod cli;
pub mod config;
pub mod db;
pub mod domain;
pub mod engine;
pub mod error;
pub mod figures;
pub mod gateway;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod presence;
pub mod privacy;
pub mod server;
pub mod state;
pub mod stats;
pub mod telemetry;
pub mod webhook;
pub mod wire;

pub use server::{Gateway, run};
