//! The floor under the gateway's memory per connection: a bare socketioxide server built with
//! exactly the gateway's Socket.IO settings (queue, payload and WebSocket limits, read buffer,
//! request detaching) and nothing of ours: no authentication, engine, registry or fan-out. Its
//! namespace `/` accepts any handshake and takes `user:heartbeat`.
//!
//! `loadtest/bench.sh floor10k` holds 10,000 heartbeating clients on it, as `idle10k` does on
//! the gateway; the difference between the two is what the gateway itself costs per connection.
//! Run alone: `cargo run --release --example socketioxide_floor` (`PORT`, default 3300).

use presence_gateway::gateway::{
    POLLING_MAX_PAYLOAD, WS_MAX_MESSAGE, WS_READ_BUFFER, detach_request,
};
use socketioxide::SocketIo;
use socketioxide::extract::SocketRef;

/// The gateway's default `SOCKET_QUEUE_PACKETS`.
const QUEUE_PACKETS: usize = 256;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let (layer, io) = SocketIo::builder()
        .max_buffer_size(QUEUE_PACKETS)
        .max_payload(POLLING_MAX_PAYLOAD)
        .ws_max_message_size(WS_MAX_MESSAGE)
        .ws_max_frame_size(WS_MAX_MESSAGE)
        .ws_read_buffer_size(WS_READ_BUFFER)
        .build_layer();
    io.ns("/", async |socket: SocketRef| {
        socket.on("user:heartbeat", async || {});
    });
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(async || "ok"))
        .layer(layer)
        .layer(axum::middleware::map_request(detach_request));
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3300);
    // The gateway's deep accept queue, so that connect times compare too.
    let listener = presence_gateway::cli::bind(([127, 0, 0, 1], port).into())?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await
}
