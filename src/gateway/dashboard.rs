//! `/dashboard` (roles `dashboard` or `admin`): `stats_update` for every stored statistics
//! event, in `seq` order; `presence_stats` on connect, then when the cluster's figures
//! changed, at most once a second per socket; `stats_resync` to a dashboard too slow to keep up
//! (bursts wait in the socket's in-order [`Outbox`], which the fan-out's retry loop drains
//! with the `/` sockets'; overflowing it means too slow).

use super::handshake::{find_token_outside_url, query_token};
use super::outbox::{Mailbox, Outbox, Pending};
use super::protocol::{Refusal, admission};
use crate::auth::Role;
use crate::domain::stats::StatsUpdate;
use crate::domain::{Gender, Timestamp};
use crate::state::AppState;
use serde_json::{Value, json};
use socketioxide::extract::{SocketRef, State, TryData};
use socketioxide::socket::Sid;
use socketioxide::{SendError, SocketError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const NAMESPACE: &str = "/dashboard";

pub async fn admit(
    s: SocketRef,
    TryData(auth): TryData<Value>,
    State(state): State<AppState>,
) -> Result<(), Refusal> {
    let admit = async {
        // A join is a request, paid from the session's budget (and each is watched for its
        // token's expiry).
        super::handshake::charge_join(&state, s.id, NAMESPACE)?;
        // A dashboard token in the URL ends up in every proxy's access log, where it
        // outlives its use: refused here, where a token sees the whole cluster.
        let token = match find_token_outside_url(&s, &auth.unwrap_or(Value::Null)) {
            Some(t) => t,
            None if query_token(&s).is_some() => {
                return Err(Refusal::unauthorized(
                    "on /dashboard send the token as auth.token or an Authorization header, \
                     never in the URL (proxies log URLs)",
                ));
            }
            None => return Err(Refusal::unauthorized("missing token")),
        };
        let who = state.auth.verify_bearer(&token)?;
        who.require(&[Role::Dashboard, Role::Admin])?;
        s.extensions.insert(Arc::new(DashboardHandle::new(
            state.config.stats_dashboard_backlog,
            (!who.static_admin).then(|| who.user_id.clone()),
            who.expires_at,
        )));
        Ok(())
    };
    admission(&state, NAMESPACE, admit).await
}

pub async fn connected(s: SocketRef, State(state): State<AppState>) {
    state.metrics.sockets_dashboard.increment(1.0);
    if let Some(exp) = handle(&s).and_then(|h| h.expires_at) {
        state.gateway.expiries.watch(exp, s.id, NAMESPACE);
    }
    s.on_disconnect(|State(state): State<AppState>| async move {
        state.metrics.sockets_dashboard.decrement(1.0);
    });
    if let (Some(stats), Some(h)) = (crate::figures::current(&state).await, handle(&s)) {
        let replicas = crate::figures::replicas(&state).await;
        h.offer_presence_stats(&s, presence_stats(&stats, replicas));
    }
}

/// This replica's `/dashboard` sockets opened with a token of `user` (the static admin token
/// is no one's).
pub fn sockets_of(state: &AppState, user: &str) -> Vec<SocketRef> {
    sockets(state)
        .into_iter()
        .filter(|s| {
            s.extensions
                .get::<Arc<DashboardHandle>>()
                .is_some_and(|h| h.user.as_ref().is_some_and(|u| u.as_str() == user))
        })
        .collect()
}

fn sockets(state: &AppState) -> Vec<SocketRef> {
    state
        .gateway
        .io
        .get()
        .and_then(|io| io.of(NAMESPACE))
        .map(|ns| ns.sockets())
        .unwrap_or_default()
}

fn handle(s: &SocketRef) -> Option<Arc<DashboardHandle>> {
    s.extensions.get::<Arc<DashboardHandle>>()
}

/// A dashboard socket's state: updates waiting for room in its queue, in seq order, at most
/// `STATS_DASHBOARD_BACKLOG` of them: a burst (one stored batch is up to 500 events, emitted
/// at once) waits here rather than overflowing the socket queue. A dashboard that lets the
/// outbox overflow is too slow to follow: what it held is dropped and it is told to resync.
pub struct DashboardHandle {
    /// Whose token opened it (an admin's disconnect of that user closes it too); `None` for
    /// the static admin token, which is no one's.
    pub user: Option<crate::domain::UserId>,
    /// When the token this socket was opened with expires ([`super::expiry`]).
    pub expires_at: Option<i64>,
    outbox: Mutex<Outbox>,
    /// The last `presence_stats` figures this socket was sent, and when: at most one a second
    /// per socket, the one sent on connect included.
    presence: Mutex<Option<(Value, Instant)>>,
}

impl DashboardHandle {
    fn new(backlog: usize, user: Option<crate::domain::UserId>, expires_at: Option<i64>) -> Self {
        DashboardHandle {
            user,
            expires_at,
            outbox: Mutex::new(Outbox::in_order(backlog)),
            presence: Mutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Outbox> {
        self.outbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Send `figures` as `presence_stats` if they differ from what this socket was last sent
    /// and a second has passed since (else the next offer tries again).
    fn offer_presence_stats(&self, s: &SocketRef, figures: Value) {
        let mut last = self.presence.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((sent, at)) = &*last
            && (*sent == figures || at.elapsed() < PRESENCE_STATS_EVERY)
        {
            return;
        }
        let mut body = figures.clone();
        body["at"] = json!(Timestamp::now());
        if s.emit("presence_stats", &body).is_ok() {
            *last = Some((figures, Instant::now()));
        }
    }
}

/// The least time between two `presence_stats` to one socket.
const PRESENCE_STATS_EVERY: Duration = Duration::from_secs(1);

/// What one attempt to send gave.
#[derive(PartialEq)]
enum Sent {
    Yes,
    Full,
    Gone,
}

fn send(s: &SocketRef, event: &str, body: &(impl serde::Serialize + ?Sized)) -> Sent {
    match s.emit(event, body) {
        Ok(()) => Sent::Yes,
        Err(SendError::Socket(SocketError::InternalChannelFull)) => Sent::Full,
        Err(_) => Sent::Gone,
    }
}

/// Emit one stored event to every dashboard here, encoded once, in order after whatever
/// waits for it.
pub fn emit_update(state: &AppState, u: &StatsUpdate) {
    let payload: super::outbox::Encoded = match serde_json::value::to_raw_value(u) {
        Ok(raw) => Arc::from(raw),
        Err(e) => return tracing::error!(error = %e, "statistics event not encodable"),
    };
    let p = Pending {
        version: u.seq,
        seq: u.seq as u64,
        payload,
    };
    for s in sockets(state) {
        let Some(h) = handle(&s) else { continue };
        let mut o = h.lock();
        if o.is_empty() {
            match send(&s, "stats_update", &*p.payload) {
                Sent::Yes | Sent::Gone => continue,
                Sent::Full => {}
            }
        }
        let owed = o.owes_resync();
        if !o.push(p.clone()) && !owed {
            crate::metrics::stats_dashboard_resynced();
        }
        drop(o);
        state.gateway.backlogged.insert(Mailbox::Dashboard(s.id));
    }
}

/// One retry of a dashboard's outbox (from the fan-out's retry loop): the `stats_resync` owed,
/// if any, then the updates waiting, as the socket's queue has room. Leaves the waiting set
/// once nothing waits.
pub fn drain(state: &AppState, sid: Sid) {
    let m = Mailbox::Dashboard(sid);
    let socket = state
        .gateway
        .io
        .get()
        .and_then(|io| io.of(NAMESPACE))
        .and_then(|ns| ns.get_socket(sid));
    let (Some(s), Some(stats)) = (socket, &state.stats) else {
        return state.gateway.backlogged.remove(m);
    };
    let Some(h) = handle(&s) else {
        return state.gateway.backlogged.remove(m);
    };
    let mut gone = false;
    // Whether the socket took it; a socket gone takes nothing more.
    let mut took = |sent: Sent| {
        gone |= sent == Sent::Gone;
        sent == Sent::Yes
    };
    let mut o = h.lock();
    // The resync body is built only when one is owed (this runs every retry tick).
    let resync = || {
        json!({
            "lastEventSeq": stats.delivered(),
            "reason": "too many updates for this connection; refetch /api/stats",
        })
    };
    if o.take_resync(|| took(send(&s, "stats_resync", &resync()))) {
        o.drain(usize::MAX, |p| took(send(&s, "stats_update", &*p.payload)));
    }
    if gone {
        o.clear();
        o.take_resync(|| true);
    }
    drop(o);
    state.gateway.backlogged.leave_if(m, || h.lock().is_empty());
}

/// The contract's figures, and (an addition the console uses) every live replica's report.
fn presence_stats(s: &crate::engine::ClusterStats, replicas: Vec<Value>) -> Value {
    json!({
        "onlineUsers": s.online_users,
        "peakOnline": s.peak_online,
        "byGender": {
            "male": s.online_by_gender[Gender::Male.index()],
            "female": s.online_by_gender[Gender::Female.index()],
            "other": s.online_by_gender[Gender::Other.index()],
        },
        "nodes": s.nodes,
        "replicas": replicas,
    })
}

/// `presence_stats` to this replica's dashboards when the figures changed, at most once a
/// second per socket. Checked four times a second, so a change reaches a socket within
/// ~1.25 s of the figures being read; the figures come from [`crate::figures`], so this
/// costs nothing of Redis.
pub async fn run_presence_stats(state: AppState) {
    let mut tick = crate::background::ticker(PRESENCE_STATS_EVERY / 4);
    while state.background.tick(&mut tick).await {
        let targets = sockets(&state);
        if targets.is_empty() {
            continue;
        }
        state.figures.looked_at();
        let Some(stats) = crate::figures::current(&state).await else {
            continue;
        };
        let figures = presence_stats(&stats, crate::figures::replicas(&state).await);
        for s in targets {
            if let Some(h) = handle(&s) {
                h.offer_presence_stats(&s, figures.clone());
            }
        }
    }
}
