//! The `/` namespace handshake: who is connecting, and registering them.
//!
//! This runs as socketioxide connect *middleware*, which the library awaits before it sends
//! the client CONNECT; the connect handler proper is spawned after that. So everything a
//! client relies on right after `connect` — its event handlers, its presence, its rooms —
//! is set up here, and an event sent the moment the client is connected is never dropped.

use super::connection::{ConnHandle, Mode};
use super::events;
use super::protocol::{Refusal, admission};
use super::ratelimit::TokenBucket;
use crate::auth::{Identity, Role, Roles};
use crate::db::writer::Profile;
use crate::domain::{Gender, Timestamp, UserId};
use crate::engine::Connection;
use crate::state::AppState;
use serde_json::Value;
use socketioxide::extract::{SocketRef, State, TryData};
use std::sync::Arc;

/// The token, from the first of: `auth.token`, an `Authorization: Bearer` header, a `token`
/// query parameter.
pub(crate) fn find_token(s: &SocketRef, auth: &Value) -> Option<String> {
    find_token_outside_url(s, auth).or_else(|| query_token(s))
}

/// The token from `auth.token` or an `Authorization: Bearer` header, never from the URL.
pub(crate) fn find_token_outside_url(s: &SocketRef, auth: &Value) -> Option<String> {
    if let Some(t) = auth.get("token").and_then(Value::as_str) {
        return Some(t.to_string());
    }
    let parts = s.req_parts();
    if let Some(h) = parts
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        && let Some(t) = h
            .strip_prefix("Bearer ")
            .or_else(|| h.strip_prefix("bearer "))
    {
        return Some(t.trim().to_string());
    }
    None
}

/// A `token` query parameter of the handshake.
pub(crate) fn query_token(s: &SocketRef) -> Option<String> {
    s.req_parts().uri.query().and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "token")
            .map(|(_, v)| percent_decode(v))
    })
}

/// Enough of percent-decoding for a JWT (which is base64url and dots, so rarely encoded).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) =
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or(""), 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The development-only `{userId, gender}` handshake.
fn insecure_identity(auth: &Value) -> Result<Identity, Refusal> {
    let bad = |m: &str| Refusal::unauthorized(m.to_string());
    let id = auth
        .get("userId")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("missing token"))?;
    let user_id = UserId::parse(id).map_err(|e| Refusal::unauthorized(format!("userId: {e}")))?;
    let gender = match auth.get("gender") {
        None | Some(Value::Null) => None,
        Some(g) => Some(
            g.as_str()
                .and_then(|g| g.parse::<Gender>().ok())
                .ok_or_else(|| bad("gender must be male, female or other"))?,
        ),
    };
    Ok(Identity {
        user_id,
        gender,
        name: None,
        roles: Roles::from(Role::User),
        expires_at: None,
        static_admin: false,
    })
}

fn identify(state: &AppState, s: &SocketRef, auth: &Value) -> Result<Identity, Refusal> {
    let identity = match find_token(s, auth) {
        Some(token) => state.auth.verify(&token)?,
        None if state.config.insecure_userid_allowed() && auth.get("userId").is_some() => {
            insecure_identity(auth)?
        }
        None => return Err(Refusal::unauthorized("missing token")),
    };
    identity.require(&[Role::User])?;
    Ok(identity)
}

/// How the socket receives changes (section 9): `auth.presence` (`broadcast`, the default, or
/// `subscriptions`; `PRESENCE_BROADCAST=false` makes every socket a subscription socket) and
/// `auth.batch` (`false` by default). Any other value of either is refused.
fn mode(state: &AppState, auth: &Value) -> Result<Mode, Refusal> {
    let subscriptions = match auth.get("presence") {
        None => false,
        Some(Value::String(p)) if p == "broadcast" => false,
        Some(Value::String(p)) if p == "subscriptions" => true,
        Some(_) => {
            return Err(Refusal::unauthorized(
                "auth.presence must be \"broadcast\" or \"subscriptions\"",
            ));
        }
    };
    let batch = match auth.get("batch") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(Refusal::unauthorized("auth.batch must be true or false")),
    };
    Ok(Mode {
        subscriptions: subscriptions || !state.config.presence_broadcast,
        batch,
    })
}

pub async fn authenticate(
    s: SocketRef,
    TryData(auth): TryData<Value>,
    State(state): State<AppState>,
) -> Result<(), Refusal> {
    admission(&state, "/", admit(&s, auth.unwrap_or(Value::Null), &state)).await
}

async fn admit(s: &SocketRef, auth: Value, state: &AppState) -> Result<(), Refusal> {
    // The join itself is a request: a client that joins and leaves `/` on one session pays
    // for each join from the budget it leaves with (issue 25), before any work is done.
    charge_join(state, s.id, "/")?;
    // The transport the join came on, read before anything below waits: a session that
    // upgrades while its join is admitted joined on long-polling (its frames go through the
    // library), whatever the timing of the store's answers.
    let sid = s.id.as_str();
    let upgraded = (s.transport_type() == socketioxide::TransportType::Websocket)
        .then(|| state.upgrades.line_of(sid))
        .flatten();
    let identity = identify(state, s, &auth)?;
    let mode = mode(state, &auth)?;
    if !state.engine.ready().await {
        return Err(Refusal::unavailable(
            "presence store unreachable; retry shortly",
        ));
    }
    let gender = crate::presence::gender_of(state.db.as_deref(), &identity)
        .await
        .map_err(|_| Refusal::unavailable("user directory unreachable; retry shortly"))?;
    if let Some(db) = state.db.as_deref() {
        crate::privacy::restore(&*state.engine, db, &identity.user_id)
            .await
            .map_err(|_| Refusal::unavailable("user settings unreachable; retry shortly"))?;
    }
    let conn_id: Arc<str> = format!(
        "{}:{}",
        state.config.node_id,
        super::connection::public_id(s.id)
    )
    .into();
    // Their blocks (section 11), before any change reaches them: whom they must not hear of.
    // Held first (empty), so that a block announced while they are read is not missed; the
    // read is merged in (a block lifted meanwhile may stay until they reconnect: hidden).
    if state.gateway.blocks.hold(&identity.user_id, &conn_id) {
        match crate::blocks::store::hidden(&*state.engine, state.db.as_deref(), &identity.user_id)
            .await
        {
            Ok(read) => state.gateway.blocks.merge(&identity.user_id, read),
            Err(_) => {
                state.gateway.blocks.release(&identity.user_id, &conn_id);
                return Err(Refusal::unavailable(
                    "user blocks unreachable; retry shortly",
                ));
            }
        }
    }
    let conn = Connection {
        id: conn_id.clone(),
        user: identity.user_id.clone(),
        gender,
    };
    let policy = state.config.visibility_policy;
    let now = Timestamp::now();
    let handle = Arc::new(ConnHandle::new(
        conn,
        s.id,
        identity,
        policy.audience_of(gender),
        mode,
        now,
        // The budget the join was charged to (`charge_join` parked it).
        session_budget(state, s.id, "/"),
    ));
    // Decided here, before the library writes the CONNECT this socket's frames wait for.
    let (route, fallback) = crate::wire::Route::for_socket(s.req_parts(), sid, upgraded);
    if let Some(why) = fallback {
        state.metrics.direct_fallback(why);
    }
    handle.set_route(Arc::new(route));
    s.extensions.insert(handle.clone());
    events::register(s);
    match state.engine.connect(&handle.conn, now).await {
        Ok(p) => {
            handle.remember(&p);
            if let Some(db) = &state.db {
                let profile = Profile {
                    name: handle.identity.name.clone(),
                    gender: handle.identity.gender,
                };
                // The presence is written even when nothing changed: if the replica that
                // announced this user online died before its write, this one records it.
                db.writer.record_connect(profile, &p);
            }
        }
        Err(crate::engine::EngineError::TooManyConnections(n)) => {
            // Refused after it took its budget: left parked for the next attempt.
            state.session_budgets.park((s.id, "/"), handle.budget());
            state
                .gateway
                .blocks
                .release(&handle.conn.user, &handle.conn.id);
            return Err(Refusal::rate_limited(format!(
                "this user holds the most connections allowed ({n})"
            )));
        }
        Err(e) => {
            state.session_budgets.park((s.id, "/"), handle.budget());
            state
                .gateway
                .blocks
                .release(&handle.conn.user, &handle.conn.id);
            tracing::warn!(error = %e, "could not register a connection");
            return Err(Refusal::unavailable(
                "presence store unreachable; retry shortly",
            ));
        }
    }
    state
        .gateway
        .viewers
        .join(policy, s.clone(), handle.clone());
    watch_connect(state, handle);
    Ok(())
}

/// How long the library may take to complete a namespace connect after our middleware
/// admitted it (it runs our connect handler only then).
pub const CONNECT_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// A socket whose transport closed while our middleware was admitting it never gets a
/// connect or disconnect handler from the library: what the middleware took for it (its
/// place among the viewers, its user's blocks held here, its registration in the engine)
/// would stay for ever. Past [`CONNECT_LIMIT`] without its connect handler, it is recorded
/// as closed; the gate keeps that to one close, and keeps a later handler from registering it.
fn watch_connect(state: &AppState, handle: Arc<ConnHandle>) {
    let st = state.clone();
    state.background.spawn(async move {
        tokio::select! {
            _ = tokio::time::sleep(CONNECT_LIMIT) => {}
            // Connected: nothing to watch (and the handle is not kept in memory by this).
            _ = handle.opened() => return,
            // At shutdown, the shutdown's own close of what is left does it.
            _ = st.background.stop.cancelled() => return,
        }
        if !handle.is_open() {
            st.metrics.connects_abandoned.increment(1);
            tracing::debug!(conn = %handle.conn.id, "admitted, never connected: recorded as closed");
            super::events::record_close(&st, &handle, 0).await;
        }
    });
}

/// The session's request budget in `namespace`: the one it left with (parked), or a full one.
pub fn session_budget(
    state: &AppState,
    sid: socketioxide::socket::Sid,
    namespace: &'static str,
) -> TokenBucket {
    state
        .session_budgets
        .take(&(sid, namespace))
        .unwrap_or_else(|| {
            TokenBucket::new(
                state.config.rate_limit_per_sec,
                state.config.rate_limit_burst,
            )
        })
}

/// Take one request from the session's budget in `namespace` for joining it (the budget the
/// session left that namespace with: a rejoin does not refill it), and park the budget for
/// the join to pick up, or for the next attempt if this one fails. `rate_limited` when spent.
pub fn charge_join(
    state: &AppState,
    sid: socketioxide::socket::Sid,
    namespace: &'static str,
) -> Result<(), Refusal> {
    let mut bucket = session_budget(state, sid, namespace);
    let paid = bucket.try_take();
    state.session_budgets.park((sid, namespace), bucket);
    if paid {
        Ok(())
    } else {
        Err(Refusal::rate_limited(
            "too many joins on this session; slow down",
        ))
    }
}

/// The connect handler proper: runs once the client has been told it is connected.
pub async fn connected(s: SocketRef, State(state): State<AppState>) {
    let Some(handle) = s.extensions.get::<Arc<ConnHandle>>() else {
        return;
    };
    // The library sent CONNECT and marked the socket connected before running this.
    handle.open();
    if let Some(exp) = handle.identity.expires_at {
        state.gateway.expiries.watch(exp, s.id, "/");
    }
    // Under the gate, so a disconnect that already ran keeps the socket out of the registry.
    let added = handle
        .while_open(async {
            state.gateway.sockets.add(handle.clone());
        })
        .await;
    if added.is_some() {
        state.metrics.connections.increment(1);
        state.metrics.sockets_root.increment(1.0);
    } else {
        // Closed first (by its disconnect, or recorded closed past `CONNECT_LIMIT`): a socket
        // nothing delivers to must not stay connected.
        let _ = s.disconnect();
    }
}
