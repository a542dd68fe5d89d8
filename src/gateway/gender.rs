//! A user's gender changed in the database while they are connected: their live connections
//! whose tokens carry no gender (the database decides theirs) take the new one at once.
//!
//! The engine hears of it as from a new handshake, so viewers who may no longer see the user
//! are told they are gone (see `fanout`); the connection gets a handle with the new gender and
//! audience (what the user may now see) and a `presence:resync` to refetch with it.

use super::connection::ConnHandle;
use crate::domain::{Timestamp, UserId};
use crate::engine::Connection;
use crate::state::AppState;
use std::sync::Arc;

pub async fn apply_database_gender(state: &AppState, user: &UserId) {
    let Some(db) = state.db.as_deref() else {
        return;
    };
    let targets: Vec<_> = state
        .gateway
        .viewers
        .all()
        .into_iter()
        .filter(|v| v.handle.conn.user == *user && v.handle.identity.gender.is_none())
        .collect();
    let Some(first) = targets.first() else {
        return;
    };
    let Ok(gender) = crate::presence::gender_of(Some(db), &first.handle.identity).await else {
        tracing::warn!(user = ?user.as_str(), "gender changed in the database but not readable; the next handshake applies it");
        return;
    };
    let policy = state.config.visibility_policy;
    for v in targets {
        let old = &v.handle;
        if old.conn.gender == gender {
            continue;
        }
        let conn = Connection {
            id: old.conn.id.clone(),
            user: old.conn.user.clone(),
            gender,
        };
        let new = Arc::new(ConnHandle::new(
            conn,
            old.sid,
            old.identity.clone(),
            policy.audience_of(gender),
            old.mode,
            old.connected_at,
            old.budget(),
        ));
        new.open();
        new.set_own_status(old.own_status());
        // Same socket, same connection: the frames keep their way (and their order).
        if let Some(route) = old.route() {
            new.set_route(route.clone());
        }
        let r = old
            .while_open(state.engine.connect(&new.conn, Timestamp::now()))
            .await;
        match r {
            Some(Ok(p)) => new.remember(&p),
            Some(Err(e)) => {
                tracing::warn!(error = %e, user = ?user.as_str(), "new gender not applied; the next handshake will");
                continue;
            }
            None => continue,
        }
        v.socket.extensions.insert(new.clone());
        // The subscriptions move to the new handle (what each may see is judged per change).
        let subscribed: Vec<_> = old.subscriptions().iter().cloned().collect();
        state.gateway.viewers.leave(old);
        state
            .gateway
            .viewers
            .join(policy, v.socket.clone(), new.clone());
        let _ = state
            .gateway
            .viewers
            .subscribe(&new, &subscribed, usize::MAX);
        state.gateway.sockets.add(new);
        let _ = v
            .socket
            .emit("presence:resync", &serde_json::json!({"reason": "gender"}));
        tracing::info!(user = ?user.as_str(), gender = gender.as_str(), "gender changed in the database; applied to a live connection");
    }
}
