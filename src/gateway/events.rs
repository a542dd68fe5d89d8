//! Client-to-server events of the `/` namespace, and the disconnect.
//!
//! Each handler answers through the ack, if one was asked for, with `{"ok":true,...}` or
//! `{"ok":false,"error":{code,message}}`. Any event counts as hearing from the client; a
//! refused request never closes the connection.

use super::connection::ConnHandle;
use super::protocol::{
    GetPresences, ListOnline, SetStatus, Subscribe, Unsubscribe, answer, request,
    request_or_default,
};
use super::viewers::SubscribeError;
use crate::domain::{Details, Status, Timestamp, UserId};
use crate::engine::DisconnectOutcome;
use crate::error::AppError;
use crate::presence::{self, Viewer};
use crate::state::AppState;
use serde_json::{Value, json};
use socketioxide::extract::{AckSender, Event, Extension, SocketRef, State, TryData};
use socketioxide::socket::DisconnectReason;
use std::sync::Arc;

pub fn register(s: &SocketRef) {
    // One fallback that dispatches by name rather than one `on` per event: `on` builds a
    // handler map per socket, and at tens of thousands of sockets that map is memory.
    s.on_fallback(dispatch);
    s.on_disconnect(disconnected);
}

/// Requests whose effects must follow the order the client sent them in.
const ORDERED: [&str; 6] = [
    "presence:set-status",
    "presence:set-privacy",
    "presence:block",
    "presence:unblock",
    "presence:subscribe",
    "presence:unsubscribe",
];

/// A state-changing request's place in its socket's line, taken while socketioxide reads the
/// packet — in packet order, before the handler is spawned (see `connection::Turns`). Last of
/// the handler's extractors, so a ticket is only taken for a handler that will run.
pub struct Turn(Option<u64>);

impl<A: socketioxide::adapter::Adapter> socketioxide::handler::FromMessageParts<A> for Turn {
    type Error = std::convert::Infallible;

    fn from_message_parts(
        s: &Arc<socketioxide::socket::Socket<A>>,
        v: &mut socketioxide::handler::Value,
        ack: &Option<i64>,
    ) -> Result<Self, Self::Error> {
        let ordered = Event::from_message_parts(s, v, ack)
            .is_ok_and(|Event(e)| ORDERED.contains(&e.as_str()));
        let handle = Extension::<Arc<ConnHandle>>::from_message_parts(s, v, ack);
        Ok(Turn(match (ordered, handle) {
            (true, Ok(Extension(h))) => Some(h.turns.take()),
            _ => None,
        }))
    }
}

async fn dispatch(
    Event(event): Event,
    ack: AckSender,
    TryData(data): TryData<Value>,
    State(state): State<AppState>,
    Extension(h): Handle,
    Turn(turn): Turn,
) {
    let _turn = match turn {
        Some(t) => Some(h.turns.wait(t).await),
        None => None,
    };
    if event == "user:heartbeat" {
        state.metrics.heartbeats.increment(1);
    }
    let r = match begin(&state, &h) {
        Err(e) => Err(e),
        Ok(()) => match event.as_str() {
            "user:heartbeat" => Ok(json!({})),
            "presence:set-status" => set_status(&state, &h, data).await,
            "presence:set-privacy" => set_privacy(&state, &h, data).await,
            "presence:block" => block(&state, &h, data, true).await,
            "presence:unblock" => block(&state, &h, data, false).await,
            "presence:get" => get(&state, &h, data).await,
            "presence:list-online" => list_online(&state, &h, data).await,
            "presence:subscribe" => subscribe(&state, &h, data).await,
            "presence:unsubscribe" => unsubscribe(&state, &h, data),
            _ => Err(AppError::bad_request("unknown event")),
        },
    };
    answer(&state, ack, r);
}

type Handle = Extension<Arc<ConnHandle>>;

/// Ids (or page entries) a request names for the one request it paid to be heard: past that,
/// each started group of this many costs one request more, so a budget buys a bounded number
/// of reads whatever the requests' sizes (a `presence:get` of 200 ids costs 8).
const IDS_PER_REQUEST: usize = 25;

/// Charge a request naming `n` ids its price beyond the one request already paid.
fn pay_for(h: &ConnHandle, n: usize) -> Result<(), AppError> {
    let extra = n.saturating_sub(1) / IDS_PER_REQUEST;
    if extra == 0 || h.charge(extra as u32) {
        Ok(())
    } else {
        Err(AppError::RateLimited)
    }
}

/// Hear the client, then apply its request budget.
fn begin(state: &AppState, h: &Arc<ConnHandle>) -> Result<(), AppError> {
    if h.heard(Timestamp::now()) {
        state.gateway.heartbeats.push(h.clone());
    }
    if h.allow_request() {
        Ok(())
    } else {
        Err(AppError::RateLimited)
    }
}

fn viewer(state: &AppState, h: &ConnHandle) -> Viewer {
    Viewer {
        user: h.conn.user.clone(),
        gender: h.conn.gender,
        hides_last_seen: state.config.last_seen_reciprocal && h.hides_last_seen(),
        operator: false,
        blocked: state.gateway.blocks.of(&h.conn.user),
    }
}

async fn set_status(
    state: &AppState,
    h: &Arc<ConnHandle>,
    data: Result<Value, socketioxide::ParserError>,
) -> Result<Value, AppError> {
    let req: SetStatus = request(data)?;
    let status = req
        .status
        .parse::<Status>()
        .and_then(Status::settable)
        .map_err(|e| AppError::bad_request(e.to_string()))?;
    let details = match req.details {
        None | Some(Value::Null) => None,
        Some(d) if status.keeps_details() => {
            Some(Details::parse(d).map_err(|e| AppError::bad_request(e.to_string()))?)
        }
        Some(_) => None,
    };
    let mine = crate::domain::DeviceStatus {
        status,
        details: details.clone(),
        seq: 0,
    };
    let change = h
        .while_open(
            state
                .engine
                .set_status(&h.conn, status, details, Timestamp::now()),
        )
        .await
        .ok_or_else(|| AppError::Unavailable("connection closed".into()))??;
    h.set_own_status(mine);
    Ok(json!({"presence": change.presence}))
}

/// `presence:set-privacy` (section 11): the user's own settings, for every connection.
async fn set_privacy(
    state: &AppState,
    h: &Arc<ConnHandle>,
    data: Result<Value, socketioxide::ParserError>,
) -> Result<Value, AppError> {
    let change: crate::domain::PrivacyChange = request(data)?;
    let privacy = h
        .while_open(crate::privacy::set(
            &*state.engine,
            state.db.as_deref(),
            &h.conn.user,
            change,
        ))
        .await
        .ok_or_else(|| AppError::Unavailable("connection closed".into()))??;
    Ok(json!({ "privacy": privacy }))
}

/// `presence:block` / `presence:unblock` `{"userId":"…"}` (section 11).
async fn block(
    state: &AppState,
    h: &Arc<ConnHandle>,
    data: Result<Value, socketioxide::ParserError>,
    on: bool,
) -> Result<Value, AppError> {
    let req: crate::gateway::protocol::Block = request(data)?;
    let other = crate::domain::UserId::parse(&req.user_id)
        .map_err(|e| AppError::bad_request(format!("userId: {e}")))?;
    let user = &h.conn.user;
    let done = if on {
        h.while_open(crate::blocks::block(state.blocks(), user, &other))
            .await
    } else {
        h.while_open(crate::blocks::unblock(state.blocks(), user, &other))
            .await
    };
    done.ok_or_else(|| AppError::Unavailable("connection closed".into()))??;
    Ok(json!({}))
}

async fn get(
    state: &AppState,
    h: &Arc<ConnHandle>,
    data: Result<Value, socketioxide::ParserError>,
) -> Result<Value, AppError> {
    let req: GetPresences = request(data)?;
    let ids = presence::parse_ids(req.user_ids.iter().map(String::as_str))?;
    pay_for(h, ids.len())?;
    let presences = presence::get_visible(
        &*state.engine,
        state.db.as_deref(),
        state.config.visibility_policy,
        &viewer(state, h),
        &ids,
    )
    .await?;
    Ok(json!({"presences": presences}))
}

/// Ids per `presence:subscribe` or `presence:unsubscribe`, at most.
const MAX_SUBSCRIBE_IDS: usize = 500;

/// 1 to 500 valid ids, each once.
fn subscription_ids(ids: &[String]) -> Result<Vec<UserId>, AppError> {
    if ids.is_empty() || ids.len() > MAX_SUBSCRIBE_IDS {
        return Err(AppError::bad_request(format!(
            "userIds: 1 to {MAX_SUBSCRIBE_IDS} ids"
        )));
    }
    let mut seen = std::collections::HashSet::with_capacity(ids.len());
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let u = UserId::parse(id).map_err(|e| AppError::bad_request(format!("userIds: {e}")))?;
        if seen.insert(u.clone()) {
            out.push(u);
        }
    }
    Ok(out)
}

fn subscription_socket(h: &ConnHandle) -> Result<(), AppError> {
    if h.mode.subscriptions {
        Ok(())
    } else {
        Err(AppError::bad_request(
            "this socket receives every change it may see (broadcast); connect with auth.presence \"subscriptions\" to subscribe",
        ))
    }
}

/// Subscribe, then read the snapshot: a change committed after the read reaches the socket
/// (it was subscribed before), with a greater version than the snapshot's. Ids the viewer may
/// not see are kept like any other and never produce anything: the rule is applied to each
/// change and to the snapshot, so nothing tells them apart from ids never seen.
async fn subscribe(
    state: &AppState,
    h: &Arc<ConnHandle>,
    data: Result<Value, socketioxide::ParserError>,
) -> Result<Value, AppError> {
    subscription_socket(h)?;
    let req: Subscribe = request(data)?;
    let ids = subscription_ids(&req.user_ids)?;
    pay_for(h, ids.len())?;
    let max = state.config.max_subscriptions;
    let (added, n) = state
        .gateway
        .viewers
        .subscribe(h, &ids, max)
        .map_err(|e| match e {
            SubscribeError::TooMany(max) => AppError::bad_request(format!(
                "at most {max} subscriptions per socket (PRESENCE_MAX_SUBSCRIPTIONS)"
            )),
            SubscribeError::Closed => AppError::Unavailable("connection closed".into()),
        })?;
    let snapshot = presence::get_visible(
        &*state.engine,
        state.db.as_deref(),
        state.config.visibility_policy,
        &viewer(state, h),
        &ids,
    )
    .await;
    match snapshot {
        Ok(presences) => Ok(json!({"presences": presences, "subscribed": n})),
        Err(e) => {
            // Nothing changes: the ids this request added are taken back.
            state.gateway.viewers.unsubscribe(h, Some(&added));
            tracing::debug!(error = %e, "subscription snapshot not read");
            Err(AppError::Unavailable(
                "presence is temporarily unavailable; subscribe again shortly".into(),
            ))
        }
    }
}

fn unsubscribe(
    state: &AppState,
    h: &Arc<ConnHandle>,
    data: Result<Value, socketioxide::ParserError>,
) -> Result<Value, AppError> {
    subscription_socket(h)?;
    let req: Unsubscribe = request(data)?;
    let left = match (req.user_ids, req.all) {
        (None, Some(true)) => state.gateway.viewers.unsubscribe(h, None),
        (Some(ids), None) => {
            let ids = subscription_ids(&ids)?;
            state.gateway.viewers.unsubscribe(h, Some(&ids))
        }
        _ => {
            return Err(AppError::bad_request(
                "expected {\"userIds\":[...]} (1 to 500) or {\"all\":true}",
            ));
        }
    };
    Ok(json!({"subscribed": left}))
}

async fn list_online(
    state: &AppState,
    h: &Arc<ConnHandle>,
    data: Result<Value, socketioxide::ParserError>,
) -> Result<Value, AppError> {
    let req: ListOnline = request_or_default(data)?;
    let limit = match req.limit {
        None => presence::DEFAULT_PAGE,
        Some(n) => usize::try_from(n).map_err(|_| {
            AppError::bad_request(format!("limit must be 1 to {}", presence::MAX_PAGE))
        })?,
    };
    let cursor = req.cursor.as_deref();
    // A malformed request is refused as such, before it is charged for its size.
    presence::check_page(cursor, limit)?;
    pay_for(h, limit)?;
    let page = presence::list_online(
        &*state.engine,
        state.config.visibility_policy,
        &viewer(state, h),
        cursor,
        limit,
    )
    .await?;
    Ok(json!({"users": page.users, "nextCursor": page.next_cursor}))
}

async fn disconnected(
    s: SocketRef,
    reason: DisconnectReason,
    State(state): State<AppState>,
    Extension(h): Handle,
) {
    let cfg = &state.config;
    let grace = match reason {
        DisconnectReason::ClosingServer => cfg.shutdown_grace_ms,
        _ if state.is_closing() => cfg.shutdown_grace_ms,
        // Engine.IO pings went unanswered: the client went silent, and silence is its own grace.
        DisconnectReason::HeartbeatTimeout => 0,
        // This server sent it away (an admin's disconnect, a socket too far behind): the
        // client does not come back on its own, so there is nothing to wait for.
        DisconnectReason::ServerNSDisconnect => 0,
        _ => cfg.offline_grace_ms,
    };
    debug_assert_eq!(s.id, h.sid);
    // Parked now: a join of this session that comes before the close below is recorded must
    // find the budget this socket left with, not a full one.
    state.session_budgets.park((h.sid, "/"), h.budget());
    // The rest waits on the presence store. socketioxide keeps the socket in its namespace
    // until this handler returns, and ignores a CONNECT for it meanwhile: a client that leaves
    // `/` and joins again at once (a token refresh) would never hear back. So the close is
    // recorded in the background (the replica's shutdown waits for it); the new socket has a
    // connection id of its own, so the two never touch each other's registration.
    let st = state.clone();
    state
        .background
        .tasks
        .spawn(async move { record_close(&st, &h, grace).await });
}

/// Record that a socket closed: out of the registry, and the engine told, at most once
/// whoever calls (the disconnect handler, or the shutdown for sockets whose handler the
/// library never ran).
pub async fn record_close(state: &AppState, h: &Arc<ConnHandle>, grace_ms: u64) {
    state.session_budgets.park((h.sid, "/"), h.budget());
    state.gateway.viewers.leave(h);
    state.gateway.blocks.release(&h.conn.user, &h.conn.id);
    // Under the socket's gate, like the connect handler's registration: either that ran
    // before (and is undone here) or it never will. Outside it, a close arriving before the
    // connect handler ran could be followed by a registration nothing would ever remove.
    let outcome = h
        .close(async {
            if state.gateway.sockets.remove(h).is_some() {
                state.metrics.disconnections.increment(1);
                state.metrics.sockets_root.decrement(1.0);
            }
            state
                .engine
                .disconnect(&h.conn, grace_ms, Timestamp::now())
                .await
        })
        .await;
    match outcome {
        Some(Ok(DisconnectOutcome::Pending { deadline })) => {
            // Without a grace of its own, a pending offline is flap damping's hold.
            if grace_ms == 0 {
                state.metrics.flap_held();
            }
            schedule_settle(state, h, deadline)
        }
        // Recorded here as well as from the change stream: the stream's copy may arrive only
        // after a shutting-down replica's writer flushed (the version guard makes the second
        // record harmless, and the writer keeps one entry per user).
        Some(Ok(DisconnectOutcome::Offline(p))) => {
            if let Some(db) = &state.db {
                db.writer.record(&p);
            }
        }
        Some(Err(e)) => {
            tracing::warn!(error = %e, conn = %h.conn.id, "disconnect not recorded; the sweep will remove it")
        }
        _ => {}
    }
}

/// Announce the user offline when the grace ends, unless a connection came back. The sweep
/// (on any replica) is the backstop if this replica is gone by then.
fn schedule_settle(state: &AppState, h: &ConnHandle, deadline: Timestamp) {
    // A shutting-down replica leaves the grace to the rest of the cluster.
    if state.is_closing() {
        return;
    }
    let (state2, user) = (state.clone(), h.conn.user.clone());
    let wait = std::time::Duration::from_micros(deadline.micros_since(Timestamp::now()));
    state.background.tasks.spawn(async move {
        tokio::select! {
            _ = state2.background.stop.cancelled() => {}
            _ = tokio::time::sleep(wait) => {
                if let Err(e) = state2.engine.settle(&user, Timestamp::now()).await {
                    tracing::warn!(error = %e, "grace not settled; the sweep will");
                }
            }
        }
    });
}
