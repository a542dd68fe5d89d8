//! Tokens expire on live sockets too. A token is checked once, at the handshake; without
//! this, a `/` or `/dashboard` socket opened a minute before its token expired would go on
//! seeing presence (or the whole cluster's figures) for as long as it stayed connected. Each
//! socket opened with an expiring token is watched; when its token expires it is told why
//! (`auth:expired`) and disconnected by the server, so socket.io-client does not reconnect on
//! its own: the app reconnects with a new token.
//!
//! One heap for the replica, not a timer per socket ([`super::expiries::Expiries`]).

use crate::state::AppState;
use std::time::Duration;

/// The event a socket gets just before the server disconnects it for an expired token.
pub const EXPIRED_EVENT: &str = "auth:expired";

/// Every second: disconnect the sockets whose tokens expired.
pub async fn run(state: AppState) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while state.background.tick(&mut tick).await {
        let Some(io) = state.gateway.io.get() else {
            continue;
        };
        let now = crate::domain::Timestamp::now().as_micros() / 1_000_000;
        for (exp, sid, ns) in state.gateway.expiries.take_due(now) {
            let Some(s) = io.of(ns).and_then(|n| n.get_socket(sid)) else {
                continue;
            };
            // The socket under this id may have re-joined with another token since.
            if super::token_expiry(&s) != Some(exp) {
                continue;
            }
            let _ = s.emit(
                EXPIRED_EVENT,
                &serde_json::json!({"code": "unauthorized", "message": "token expired; connect again with a new token"}),
            );
            let _ = s.disconnect();
        }
        let live =
            state.gateway.sockets.len() + io.of("/dashboard").map_or(0, |n| n.sockets().len());
        state.gateway.expiries.compact(live, |sid, ns| {
            io.of(ns)
                .and_then(|n| n.get_socket(sid))
                .and_then(|s| super::token_expiry(&s))
        });
    }
}
