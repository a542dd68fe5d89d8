//! The Socket.IO side: namespaces, handshakes, client events, and pushing presence out.
//!
//! - [`handshake`]: who is connecting (JWT or the development-only insecure login), and
//!   registering the connection before the client is told it is connected;
//! - [`events`]: `user:heartbeat`, `presence:*` requests, the disconnect;
//! - [`connection`]: per-socket state and this replica's socket registry;
//! - [`heartbeats`]: batching "heard from" writes to the engine;
//! - [`fanout`]: committed changes to this replica's viewers, by room;
//! - [`rooms`], [`ratelimit`]: the small pieces those share.

pub mod connection;
pub mod events;
pub mod fanout;
pub mod handshake;
pub mod heartbeats;
pub mod ratelimit;
pub mod rooms;

pub use connection::{ConnHandle, SocketRegistry};
pub use heartbeats::HeartbeatBatch;

use crate::state::AppState;
use socketioxide::handler::ConnectHandler;
use socketioxide::{SocketIo, layer::SocketIoLayer};

/// Largest WebSocket message or frame a client may send. The biggest legitimate request is a
/// `presence:get` of 200 ids of 128 characters (~27 KiB); socketioxide's defaults (64 MiB /
/// 16 MiB) would let one client make the replica buffer megabytes. A larger message closes
/// that client's connection.
pub const WS_MAX_MESSAGE: usize = 64 * 1024;
/// Largest HTTP long-polling body (it may batch several packets).
pub const POLLING_MAX_PAYLOAD: u64 = 128 * 1024;

/// Build the Socket.IO layer and register the namespaces.
pub fn layer(state: &AppState) -> SocketIoLayer {
    let (layer, io) = SocketIo::builder()
        .with_state(state.clone())
        // Past this many queued packets, presence updates wait in the socket's conflated backlog
        // (see `fanout`); queue blocks are allocated as used, so idle sockets pay nothing for it.
        .max_buffer_size(state.config.socket_queue_packets)
        .max_payload(POLLING_MAX_PAYLOAD)
        .ws_max_message_size(WS_MAX_MESSAGE)
        .ws_max_frame_size(WS_MAX_MESSAGE)
        .build_layer();
    io.ns("/", handshake::connected.with(handshake::authenticate));
    let _ = state.io.set(io);
    layer
}
