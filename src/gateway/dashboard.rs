//! `/dashboard` (roles `dashboard` or `admin`): `stats_update` for every stored statistics
//! event, in `seq` order; `presence_stats` on connect, then when the cluster's figures
//! changed, at most once a second per socket; `stats_resync` to a dashboard too slow to keep up
//! (bursts wait in a bounded per-socket backlog; overflowing it means too slow).

use super::handshake::find_token;
use super::protocol::{Refusal, admission};
use crate::auth::Role;
use crate::domain::stats::StatsUpdate;
use crate::domain::{Gender, Timestamp};
use crate::state::AppState;
use serde_json::{Value, json};
use socketioxide::extract::{SocketRef, State, TryData};
use socketioxide::{SendError, SocketError};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const NAMESPACE: &str = "/dashboard";
/// How often dashboard backlogs are retried.
const BACKLOG_RETRY: Duration = Duration::from_millis(25);

pub async fn admit(
    s: SocketRef,
    TryData(auth): TryData<Value>,
    State(state): State<AppState>,
) -> Result<(), Refusal> {
    let admit = async {
        let token = find_token(&s, &auth.unwrap_or(Value::Null))
            .ok_or_else(|| Refusal::unauthorized("missing token"))?;
        let who = state.auth.verify_bearer(&token)?;
        who.require(&[Role::Dashboard, Role::Admin])?;
        s.extensions.insert(Arc::new(DashboardHandle::default()));
        Ok(())
    };
    admission(&state, NAMESPACE, admit).await
}

pub async fn connected(s: SocketRef, State(state): State<AppState>) {
    state.metrics.sockets_dashboard.increment(1.0);
    s.on_disconnect(|State(state): State<AppState>| async move {
        state.metrics.sockets_dashboard.decrement(1.0);
    });
    if let (Some(stats), Some(h)) = (crate::figures::current(&state).await, handle(&s)) {
        let replicas = crate::figures::replicas(&state).await;
        h.offer_presence_stats(&s, presence_stats(&stats, replicas));
    }
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

/// Updates waiting for room in a dashboard socket's queue, in seq order, at most
/// `STATS_DASHBOARD_BACKLOG` of them: a burst (one stored batch is up to 500 events, emitted
/// at once) waits here rather than overflowing the socket queue. A dashboard that lets the
/// backlog fill is too slow to follow: its backlog is dropped and it is told to resync.
#[derive(Default)]
pub struct DashboardHandle {
    state: Mutex<Backlog>,
    /// The last `presence_stats` figures this socket was sent, and when: at most one a second
    /// per socket, the one sent on connect included.
    presence: Mutex<Option<(Value, Instant)>>,
}

#[derive(Default)]
struct Backlog {
    queue: VecDeque<Arc<StatsUpdate>>,
    /// Dropped behind: a `stats_resync` is owed before anything else.
    resync: bool,
}

impl DashboardHandle {
    fn lock(&self) -> std::sync::MutexGuard<'_, Backlog> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
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
enum Sent {
    Yes,
    Full,
    Gone,
}

fn send(s: &SocketRef, event: &str, body: &impl serde::Serialize) -> Sent {
    match s.emit(event, body) {
        Ok(()) => Sent::Yes,
        Err(SendError::Socket(SocketError::InternalChannelFull)) => Sent::Full,
        Err(_) => Sent::Gone,
    }
}

/// Emit one stored event to every dashboard here, in order after whatever waits for it.
pub fn emit_update(state: &AppState, u: &StatsUpdate) {
    let u = Arc::new(u.clone());
    let max = state.config.stats_dashboard_backlog;
    for s in sockets(state) {
        let Some(h) = handle(&s) else { continue };
        let mut b = h.lock();
        if b.resync {
            continue;
        }
        if b.queue.is_empty() {
            match send(&s, "stats_update", &*u) {
                Sent::Yes | Sent::Gone => continue,
                Sent::Full => {}
            }
        }
        if b.queue.len() >= max {
            b.queue.clear();
            b.resync = true;
            crate::metrics::stats_dashboard_resynced();
        } else {
            b.queue.push_back(u.clone());
        }
    }
}

/// Drain dashboard backlogs as their sockets make room, and deliver owed `stats_resync`s.
pub async fn run_backlogs(state: AppState) {
    let mut tick = crate::background::ticker(BACKLOG_RETRY);
    while state.background.tick(&mut tick).await {
        let Some(stats) = &state.stats else { continue };
        for s in sockets(&state) {
            let Some(h) = handle(&s) else { continue };
            let mut b = h.lock();
            if b.resync {
                let body = json!({
                    "lastEventSeq": stats.delivered(),
                    "reason": "too many updates for this connection; refetch /api/stats",
                });
                match send(&s, "stats_resync", &body) {
                    Sent::Yes => b.resync = false,
                    Sent::Full | Sent::Gone => continue,
                }
            }
            while let Some(u) = b.queue.front() {
                match send(&s, "stats_update", &**u) {
                    Sent::Yes => {
                        b.queue.pop_front();
                    }
                    Sent::Full => break,
                    Sent::Gone => {
                        b.queue.clear();
                        break;
                    }
                }
            }
        }
    }
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
