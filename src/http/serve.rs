//! Accepting connections: HTTP/1.1 (and the WebSocket upgrades Socket.IO asks for) with a
//! deadline for request headers, and the peer's address on every request.
//!
//! `axum::serve` offers neither: hyper's header-read timeout needs a timer it does not set, so
//! a client that sends half a request line ("slowloris") held its connection — a file
//! descriptor and a task — for ever, and 20,000 of them would take a replica's every file.

use crate::wire::{LineIo, Upgrades};
use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;

/// A client that has not sent its request headers within this is disconnected.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The most a request head (request line and headers) may take: hyper answers a larger one
/// with 431. hyper's default (about 400 KiB) let one handshake grow a connection's read buffer
/// that far; nginx's default for large headers is the same 32 KiB.
pub const MAX_HEAD: usize = 32 * 1024;

/// Serve `router` on `listener` until `stop` is cancelled; then stop accepting, let each
/// connection finish the request it is in, and return once all have closed (WebSocket
/// connections have left hyper by then: they belong to the Socket.IO layer).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    upgrades: Upgrades,
    stop: CancellationToken,
) {
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors, most likely: wait rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (router, stop, upgrades) = (router.clone(), stop.clone(), upgrades.clone());
        // The fan-out writes presence frames straight onto a WebSocket's connection
        // (`crate::wire`): the line hears of every request, and a connection's first, when
        // it asks for a WebSocket, carries a reference to it.
        let (io, line) = LineIo::new(stream);
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                if let Some(ws) = line.request(req.method(), req.headers()) {
                    upgrades.note(req.uri(), &ws);
                    req.extensions_mut().insert(ws);
                }
                router.clone().call(req)
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_HEAD)
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades();
            tokio::pin!(conn);
            let r = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    connections.close();
    connections.wait().await;
}
