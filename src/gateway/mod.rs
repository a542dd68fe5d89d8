//! The Socket.IO side: namespaces, handshakes, client events, and pushing presence out.
//!
//! - [`handshake`]: who is connecting (JWT or the development-only insecure login), and
//!   registering the connection before the client is told it is connected;
//! - [`events`]: `user:heartbeat`, `presence:*` requests, the disconnect;
//! - [`connection`]: per-socket state and this replica's socket registry; [`outbox`]: a
//!   socket's updates not sent yet and their two policies; [`turns`]: the order of a socket's
//!   state-changing requests;
//! - [`hub`]: what the Socket.IO side shares, one value in the application state, and its
//!   small queues (nothing in it reads the state: the loops below do);
//! - [`heartbeats`]: batching "heard from" writes to the engine;
//! - [`fanout`]: committed changes to this replica's viewers ([`viewers`]: by audience);
//! - [`blocks`], [`hidden`], [`rules`]: blocks (section 11) as this replica applies them, the
//!   fan-out's check by key, and the blocks every replica announces;
//! - [`gender`]: a gender changed in the database, applied to live connections;
//! - [`widget`]: `/widget`, anonymous chat widgets recording statistics events;
//! - [`dashboard`]: `/dashboard`, live statistics and presence figures for dashboards;
//! - [`expiry`]: sockets closed when the token they were opened with expires ([`expiries`]:
//!   the heap of when);
//! - [`ratelimit`]: the per-socket request budget;
//! - [`cluster`]: every replica's report, and the admin API's questions to every replica
//!   ([`asked`]: the questions, their answers, and those waiting);
//! - [`protocol`]: typed requests, the one ack, and how a refused handshake reads.

pub mod asked;
pub mod blocks;
pub mod cluster;
pub mod connection;
pub mod dashboard;
pub mod events;
pub mod expiries;
pub mod expiry;
pub mod fanout;
pub mod gender;
pub mod handshake;
pub mod heartbeats;
pub mod hidden;
pub mod hub;
pub mod outbox;
pub mod protocol;
pub mod ratelimit;
pub mod rules;
pub mod turns;
pub mod viewers;
pub mod widget;

pub use connection::{ConnHandle, SocketRegistry};
pub use hub::{HeartbeatBatch, Hub};

/// The Socket.IO side's loops: fan-out, the outboxes' retries (`/` and `/dashboard`),
/// heartbeat flushing, dashboards' figures, server heartbeats.
pub fn spawn(state: &AppState) {
    let bg = &state.background;
    state
        .gateway
        .viewers
        .count_subscriptions_in(state.metrics.subscriptions.clone());
    bg.spawn(fanout::run(state.clone(), state.engine.subscribe()));
    bg.spawn(fanout::run_backlogs(state.clone()));
    bg.spawn(heartbeats::run(state.clone()));
    bg.spawn(dashboard::run_presence_stats(state.clone()));
    bg.spawn(expiry::run(state.clone()));
    cluster::spawn(state);
}

/// When the token a socket (`/` or `/dashboard`) was opened with expires, if it does.
pub fn token_expiry(s: &socketioxide::extract::SocketRef) -> Option<i64> {
    if let Some(h) = s.extensions.get::<std::sync::Arc<ConnHandle>>() {
        return h.identity.expires_at;
    }
    s.extensions
        .get::<std::sync::Arc<dashboard::DashboardHandle>>()
        .and_then(|h| h.expires_at)
}

use crate::state::AppState;
use socketioxide::handler::ConnectHandler;
use socketioxide::{SocketIo, layer::SocketIoLayer};

/// Largest WebSocket message or frame a client may send. The biggest legitimate request is a
/// `presence:get` of 200 ids of 128 characters (~27 KiB); socketioxide's defaults (64 MiB /
/// 16 MiB) would let one client make the replica buffer megabytes. A larger message closes
/// that client's connection.
pub const WS_MAX_MESSAGE: usize = 64 * 1024;
/// Per-connection WebSocket read buffer, and the most read per `read` call. Client messages
/// are a few dozen to a few hundred bytes (a heartbeat is 20), and every idle connection keeps
/// this buffer: 256 bytes rather than 1 KiB saved 0.5 KiB per connection (BENCHMARKS.md). A
/// larger message (a `presence:get` of 200 ids) is read into a buffer grown to its size, in
/// reads of this size: a hundred small reads for the rare 27 KiB request.
pub const WS_READ_BUFFER: usize = 256;
/// Largest HTTP long-polling body (it may batch several packets).
pub const POLLING_MAX_PAYLOAD: u64 = 128 * 1024;

/// The transport a `/` socket of this replica uses now (`websocket`, `polling`), while it is
/// connected.
pub fn transport_of(io: &SocketIo, sid: socketioxide::socket::Sid) -> Option<&'static str> {
    io.get_socket(sid).map(|s| match s.transport_type() {
        socketioxide::TransportType::Websocket => "websocket",
        socketioxide::TransportType::Polling => "polling",
    })
}

/// Build the Socket.IO layer and register the namespaces.
pub fn layer(state: &AppState) -> SocketIoLayer {
    let (layer, io) = SocketIo::builder()
        .with_state(state.clone())
        // Past this many queued packets, presence updates wait in the socket's conflated backlog
        // (see `fanout`). tokio allocates the queue 32 slots at a time (5.3 KiB, the first block
        // up front), so a large bound costs only the sockets that actually fall behind.
        .max_buffer_size(state.config.socket_queue_packets)
        .max_payload(POLLING_MAX_PAYLOAD)
        .ws_max_message_size(WS_MAX_MESSAGE)
        .ws_max_frame_size(WS_MAX_MESSAGE)
        // engineioxide's default is 4 KiB for every connection; see `WS_READ_BUFFER`.
        .ws_read_buffer_size(WS_READ_BUFFER)
        .build_layer();
    io.ns("/", handshake::connected.with(handshake::authenticate));
    io.ns("/widget", widget::connected.with(widget::admit));
    io.ns(
        dashboard::NAMESPACE,
        dashboard::connected.with(dashboard::admit),
    );
    let _ = state.gateway.io.set(io);
    layer
}

/// Headers a Socket.IO request keeps: those read after this point, by engineioxide (the
/// WebSocket key it answers the upgrade with, a polling POST's content type) and by our
/// handshake (a bearer token). hyper has already decided on the upgrade from the request as it
/// arrived. Everything else (host, origin, cookies, accept-*, caches…) would be stored with
/// every socket for its lifetime and never read.
const KEPT_HEADERS: [http::HeaderName; 3] = [
    http::header::SEC_WEBSOCKET_KEY,
    http::header::AUTHORIZATION,
    http::header::CONTENT_TYPE,
];

/// Give a Socket.IO request headers and a URI of their own, keeping only the few headers a handshake reads.
///
/// hyper parses header values without copying: each is a slice of the connection's read
/// buffer (16 KiB). socketioxide keeps every socket's request parts for its whole life
/// (`req_parts()`), so one small header value would pin that whole buffer per connection —
/// measured at a third of a connection's memory. Copying the few headers we need releases it.
pub async fn detach_request(req: axum::extract::Request) -> axum::extract::Request {
    if !req.uri().path().starts_with("/socket.io") {
        return req;
    }
    let (mut parts, body) = req.into_parts();
    // Sized to what is kept: a map grown one header at a time reserves room for six.
    let kept = KEPT_HEADERS
        .iter()
        .filter(|n| parts.headers.contains_key(*n));
    let mut headers = http::HeaderMap::with_capacity(kept.count());
    for name in KEPT_HEADERS {
        for value in parts.headers.get_all(&name) {
            // Of an Authorization, only a bearer token is ever read (`find_token`).
            let bytes = value.as_bytes();
            if name == http::header::AUTHORIZATION
                && !(bytes.starts_with(b"Bearer ") || bytes.starts_with(b"bearer "))
            {
                continue;
            }
            if let Ok(v) = http::HeaderValue::from_bytes(bytes) {
                headers.append(name.clone(), v);
            }
        }
    }
    parts.headers = headers;
    // A URI of its own, with only the parameters read later: the rest of a query string
    // (any size up to the head's cap) would be kept with the socket for its lifetime.
    let kept = kept_query(parts.uri.query().unwrap_or(""));
    let uri = if kept.is_empty() {
        parts.uri.path().to_string()
    } else {
        format!("{}?{kept}", parts.uri.path())
    };
    if let Ok(uri) = http::Uri::try_from(uri) {
        parts.uri = uri;
    }
    axum::extract::Request::from_parts(parts, body)
}

/// The most an `Authorization` header or a `token` query parameter may hold: a JWT with
/// generous claims is well under 2 KiB.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The query parameters a Socket.IO request keeps: engineioxide's (`EIO`, `transport`, `sid`)
/// and the handshake's `token` (when not over [`MAX_TOKEN_BYTES`]).
fn kept_query(query: &str) -> String {
    query
        .split('&')
        .filter(|kv| match kv.split_once('=') {
            Some(("EIO" | "transport" | "sid", _)) => true,
            Some(("token", v)) => v.len() <= MAX_TOKEN_BYTES,
            _ => false,
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// The client address a Socket.IO session was opened from ([`admit_session`]).
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub std::net::IpAddr);

/// New Engine.IO sessions per client address (`HANDSHAKE_RATE_PER_IP`): a request to
/// `/socket.io` without a session id opens one. Over the budget: 429 in the API's error shape,
/// before the Socket.IO layer spends anything on it. Runs before [`detach_request`], which
/// drops the `X-Forwarded-For` header the client address may come from.
///
/// Any request whose `Authorization` is over [`MAX_TOKEN_BYTES`] is refused here too (431),
/// before anything reads or keeps it.
pub async fn admit_session(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let authorization: usize = req
        .headers()
        .get_all(http::header::AUTHORIZATION)
        .iter()
        .map(|v| v.len())
        .sum();
    if authorization > MAX_TOKEN_BYTES {
        state.metrics.rejected("bad_request");
        let e = crate::error::AppError::bad_request("the Authorization header is over 8 KiB");
        let mut response = e.into_response();
        *response.status_mut() = http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
        return response;
    }
    let opens_session = req.uri().path().starts_with("/socket.io")
        && !req
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv.starts_with("sid=")));
    let mut req = req;
    if opens_session {
        let peer = req
            .extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip());
        if let Some(peer) = peer {
            let forwarded = crate::limits::forwarded_for(req.headers());
            let ip =
                crate::limits::client_ip(peer, forwarded.as_deref(), &state.config.trusted_proxies);
            if !state.handshake_limits.allow(&crate::limits::limit_key(ip)) {
                state.metrics.handshake_failed("rate_limited");
                return crate::error::AppError::RateLimited.into_response();
            }
            // Kept with the session's request (the header it may come from is not): the
            // namespaces limit by it too.
            req.extensions_mut().insert(ClientIp(ip));
        }
    }
    next.run(req).await
}
