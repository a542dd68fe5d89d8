//! Fan-out: every committed change, from whichever replica, to this replica's viewers.
//!
//! One task per replica reads the engine's change stream, encodes each change once, and
//! sends it to every local socket allowed to see the user ([`Viewers`](super::viewers):
//! its audiences, plus the user's own sockets when needed): written straight onto the
//! connection of a socket that connected over WebSocket ([`crate::wire`]: one frame for
//! all, one non-blocking write each), through the library's queue for the others. Emitting
//! only locally is what keeps a cluster from delivering twice: every replica receives every
//! change exactly once.
//!
//! A socket that cannot take the change now (its queue or connection full, a burst such as N
//! viewers connecting at once and each receiving N announcements, or its CONNECT not written
//! yet) does not lose it: it waits in the socket's backlog, every change in order, and is
//! delivered as soon as there is room ([`super::outbox`]). A socket with a backlog gets new
//! changes through the backlog too. Only one that falls far behind has its backlog folded
//! into each user's newest, so it still converges on the latest state of every user it may
//! see, with memory bounded per socket.

use super::connection::{BACKLOG_MAX, BATCH_MAX, ConnHandle, Encoded, Mailbox, Pending};
use super::viewers::Viewer;
use crate::domain::Timestamp;
use crate::engine::{PresenceEvent, Resync};
use crate::state::AppState;
use crate::wire::{Via, event_frame};
use socketioxide::socket::Sid;
use socketioxide::{SendError, SocketError};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::broadcast::{Receiver, error::RecvError};

/// How often outboxes are retried.
const BACKLOG_RETRY: Duration = Duration::from_millis(25);

#[derive(Debug, PartialEq, Eq)]
enum Sent {
    Now,
    Deferred,
    Gone,
}

/// How long after our handshake middleware a socket may still be waiting for the library to
/// complete its namespace connect (it is joined to [`Viewers`](super::viewers) by the
/// middleware, and the library marks it connected only afterwards). Past this, a socket that
/// refuses updates as closed never completed its connect, and no disconnect will be reported.
const HANDSHAKE_LIMIT_US: u64 = 30_000_000;

/// What an update the socket refused as closed becomes: it waits while the socket's connect
/// may still complete (what a client is sent right after connecting must not be lost); once
/// our connect handler ran, or the handshake is long over, the socket is gone.
///
/// The decision reads only our own flag ([`ConnHandle::is_open`]). Reading the library's
/// `connected()` again here — as this once did — races with the library setting it: the emit
/// saw "not connected", the library then completed the CONNECT, the second read saw
/// "connected", and a socket that had just connected was taken out of the viewers for good
/// (connected throughout, it received nothing: one viewer in 10,000 in a connect storm).
fn refused_as_closed(h: &ConnHandle, now: Timestamp) -> Sent {
    if !h.is_open() && now.micros_since(h.connected_at) < HANDSHAKE_LIMIT_US {
        Sent::Deferred
    } else {
        Sent::Gone
    }
}

/// Send one event now: `Now`, `Deferred` (no room yet, or not connected yet) or `Gone`.
/// The socket's route ([`crate::wire`]) writes it onto the connection while it can (`frame`
/// is the event's frame if already built); else the library sends it.
fn send(
    state: &AppState,
    v: &Viewer,
    event: &'static str,
    payload: &Encoded,
    frame: Option<&Arc<[u8]>>,
) -> Sent {
    let h = &v.handle;
    if let Some(route) = h.route() {
        let frame = || match frame {
            Some(f) => f.clone(),
            None => event_frame(event, payload.get()),
        };
        match route.send(frame) {
            Via::Sent => return Sent::Now,
            Via::Later => return Sent::Deferred,
            Via::Library(None) => {}
            Via::Library(Some(why)) => {
                tracing::debug!(conn = %h.conn.id, reason = why.as_str(), "the library sends this socket's updates from now on");
                state.metrics.direct_fallback(why);
            }
        }
    }
    match v.socket.emit(event, &**payload) {
        Ok(()) => Sent::Now,
        Err(SendError::Socket(SocketError::InternalChannelFull)) => Sent::Deferred,
        Err(SendError::Socket(SocketError::Closed)) => {
            refused_as_closed(&v.handle, Timestamp::now())
        }
        Err(_) => Sent::Gone,
    }
}

/// Queue one update on one socket, or defer it. A batching socket's updates all wait in its
/// outbox for their batch, which leaves when due ([`run_backlogs`]) or full (here).
fn offer(
    state: &AppState,
    v: &Viewer,
    user: &crate::domain::UserId,
    p: &Pending,
    frame: Option<&Arc<[u8]>>,
) -> Sent {
    let h = &v.handle;
    if h.mode.batch {
        let Some((kept, first, waiting)) = h.gather(user, p.clone()) else {
            return Sent::Gone;
        };
        if !kept {
            state.metrics.dropped.increment(1);
        }
        if first {
            let due = std::time::Instant::now() + Duration::from_millis(state.config.batch_ms);
            state.gateway.batches.push(due, h.sid);
        }
        if waiting >= BATCH_MAX {
            return send_batch(state, v, &mut Frames::default());
        }
        return Sent::Deferred;
    }
    if !h.has_backlog() {
        match send(state, v, "presence-update", &p.payload, frame) {
            Sent::Deferred => {}
            done => return done,
        }
    }
    match h.defer(user, p.clone()) {
        Some(true) => {
            state.gateway.backlogged.insert(Mailbox::Presence(h.sid));
            state.metrics.deferred.increment(1);
        }
        Some(false) => {
            state.metrics.dropped.increment(1);
            tracing::warn!(conn = %h.conn.id, max = BACKLOG_MAX, "socket backlog full; update dropped");
        }
        None => return Sent::Gone,
    }
    Sent::Deferred
}

/// The `presence-batch` frames encoded in one retry tick, by content. Sockets whose batches
/// hold the same changes share one encoding: an audience's broadcast sockets got their first
/// change in the same fan-out, so their batches are due together and alike.
#[derive(Default)]
pub struct Frames(std::collections::HashMap<u64, Vec<(Vec<u64>, Batch)>>);

/// A `presence-batch` payload and its WebSocket frame.
type Batch = (Encoded, Arc<[u8]>);

impl Frames {
    fn encode(&mut self, batch: &[&Pending]) -> Option<Batch> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        for p in batch {
            p.seq.hash(&mut hasher);
        }
        let alike = self.0.entry(hasher.finish()).or_default();
        let same = |seqs: &Vec<u64>| seqs.iter().copied().eq(batch.iter().map(|p| p.seq));
        if let Some((_, frame)) = alike.iter().find(|(seqs, _)| same(seqs)) {
            return Some(frame.clone());
        }
        let raw = encode_batch(batch)?;
        let frame = (raw.clone(), event_frame("presence-batch", raw.get()));
        alike.push((batch.iter().map(|p| p.seq).collect(), frame.clone()));
        Some(frame)
    }
}

/// `{"updates":[…]}` from the changes' shared encodings.
fn encode_batch(batch: &[&Pending]) -> Option<Encoded> {
    let mut frame = String::with_capacity(
        16 + batch
            .iter()
            .map(|p| p.payload.get().len() + 1)
            .sum::<usize>(),
    );
    frame.push_str("{\"updates\":[");
    for (i, p) in batch.iter().enumerate() {
        if i > 0 {
            frame.push(',');
        }
        frame.push_str(p.payload.get());
    }
    frame.push_str("]}");
    serde_json::value::RawValue::from_string(frame)
        .ok()
        .map(Arc::from)
}

/// Send the socket's oldest [`BATCH_MAX`] waiting changes as one `presence-batch`, encoded
/// once for every socket of `frames` that sends the same. `Now` if it left, `Deferred` if it
/// waits for room (whole, merging newer changes meanwhile), `Gone` if the socket closed.
fn send_batch(state: &AppState, v: &Viewer, frames: &mut Frames) -> Sent {
    let mut outcome = Sent::Deferred;
    let sent = v.handle.drain_batch(|batch| {
        let Some((raw, frame)) = frames.encode(batch) else {
            return false;
        };
        match send(state, v, "presence-batch", &raw, Some(&frame)) {
            Sent::Now => {
                outcome = Sent::Now;
                true
            }
            Sent::Deferred => false,
            Sent::Gone => {
                outcome = Sent::Gone;
                false
            }
        }
    });
    if sent > 0 {
        state.metrics.batches_sent.increment(1);
        state.metrics.delivered.increment(sent);
        state.metrics.activity.delivered(sent);
    }
    if outcome == Sent::Gone {
        v.handle.cut_off();
        state.gateway.viewers.leave(&v.handle);
    }
    outcome
}

/// How often outboxes are looked at: often enough that a batch leaves on time.
fn batch_tick(state: &AppState) -> Duration {
    (Duration::from_millis(state.config.batch_ms) / 4)
        .clamp(Duration::from_millis(2), BACKLOG_RETRY)
}

/// Sockets a fan-out sends to before it lets the worker's other tasks run.
const YIELD_EVERY: usize = 1024;

/// The place of each change in this replica's fan-out order (an outbox sends in it).
static SEQ: AtomicU64 = AtomicU64::new(0);

pub async fn run(state: AppState, mut rx: Receiver<PresenceEvent>) {
    let mut resyncs = state.engine.subscribe_resyncs();
    let scheduled = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut sent = LastSent::default();
    loop {
        let event = tokio::select! {
            _ = state.background.stop.cancelled() => break,
            r = rx.recv() => r,
            r = resyncs.recv() => {
                match r {
                    Ok(cause) => schedule_resync(&state, cause, &scheduled),
                    Err(RecvError::Lagged(_)) => resync_all(&state, Resync::BusLagged),
                    Err(RecvError::Closed) => {}
                }
                continue;
            }
        };
        match event {
            Ok(ev) => {
                if sent.is_new(&ev.presence) {
                    deliver(&state, ev).await;
                } else {
                    state.metrics.repeated.increment(1);
                }
            }
            Err(RecvError::Lagged(n)) => {
                state.metrics.lagged.increment(n);
                tracing::warn!(
                    missed = n,
                    "fan-out fell behind; viewers are told to resync"
                );
                resync_all(&state, Resync::BusLagged);
            }
            Err(RecvError::Closed) => break,
        }
    }
}

/// The version of each user's last change this replica fanned out, for the changes of the
/// last [`RECENT`]. A change can reach the stream twice: on Redis Cluster, a script whose
/// reply was lost in a failover is run again by the client on the promoted replica, which
/// never received the first run's write, and publishes the same change (same version) again;
/// viewers got it twice (728 sockets in a 600 s audit, RELIABILITY.md session 11). A version
/// not above the last one sent is no change to a viewer (section 2), so it is not sent.
#[derive(Default)]
struct LastSent {
    last: std::collections::HashMap<crate::domain::UserId, (i64, std::time::Instant)>,
    /// Entries older than [`RECENT`] are dropped when `last` reaches this size.
    prune_at: usize,
}

/// How long a user's last version is remembered (a repeat comes within seconds).
const RECENT: Duration = Duration::from_secs(600);

impl LastSent {
    fn is_new(&mut self, p: &crate::domain::Presence) -> bool {
        let now = std::time::Instant::now();
        if let Some((v, at)) = self.last.get_mut(&p.user_id) {
            if p.version <= *v {
                return false;
            }
            *v = p.version;
            *at = now;
            return true;
        }
        if self.last.len() >= self.prune_at {
            self.last
                .retain(|_, (_, at)| now.duration_since(*at) < RECENT);
            self.prune_at = (self.last.len() * 2).max(4096);
        }
        self.last.insert(p.user_id.clone(), (p.version, now));
        true
    }
}

/// After a resubscription, wait until every replica has had a sweep and a heartbeat flush to
/// notice the store is back and restore its connections (it may have come back empty), so
/// that what the sockets refetch is whole. One such resync waits at a time: resubscriptions
/// that come while it waits (a failover is noticed both by the reconnect and by the slot map's
/// watch) are covered by it, since it goes out after them. Each resync makes every viewer
/// refetch what it shows: two in a row after a failover doubled the reads that kept two
/// replicas overloaded in a cluster audit (RELIABILITY.md, session 11).
fn schedule_resync(
    state: &AppState,
    cause: Resync,
    scheduled: &Arc<std::sync::atomic::AtomicBool>,
) {
    if cause != Resync::Resubscribed {
        return resync_all(state, cause);
    }
    if scheduled.swap(true, Ordering::AcqRel) {
        return;
    }
    let settle = Duration::from_millis(state.config.sweep_interval_ms)
        + super::heartbeats::flush_interval(state.config.heartbeat_timeout_ms) * 2;
    let (state2, scheduled) = (state.clone(), scheduled.clone());
    state.background.tasks.spawn(async move {
        tokio::select! {
            _ = state2.background.stop.cancelled() => {}
            _ = tokio::time::sleep(settle) => {
                // Cleared first: a resubscription after this resync gets one of its own.
                scheduled.store(false, Ordering::Release);
                resync_all(&state2, cause);
            }
        }
    });
}

/// `presence:resync` to every `/` socket of this replica: it may have missed changes and
/// should refetch what it shows.
fn resync_all(state: &AppState, cause: Resync) {
    let body = serde_json::json!({"reason": cause.reason()});
    let viewers = state.gateway.viewers.all();
    tracing::info!(
        reason = cause.reason(),
        sockets = viewers.len(),
        "presence:resync"
    );
    state.metrics.resyncs.increment(viewers.len() as u64);
    for v in viewers {
        // A socket whose queue is full has a backlog of newer changes coming anyway; one that
        // closed needs nothing.
        let _ = v.socket.emit("presence:resync", &body);
    }
}

async fn deliver(state: &AppState, ev: PresenceEvent) {
    let policy = state.config.visibility_policy;
    let p = &ev.presence;
    if ev.origin == state.metrics.node {
        state.metrics.published.increment(1);
        state.metrics.activity.published();
    }
    let since_commit = || Timestamp::now().micros_since(ev.committed_at) as f64 / 1e6;
    let [started, first_write, last_write] = &state.metrics.fanout_stages;
    started.record(since_commit());
    let payload = match serde_json::value::to_raw_value(p) {
        Ok(raw) => Arc::from(raw),
        Err(e) => {
            tracing::error!(error = %e, "presence not encodable");
            return;
        }
    };
    let pending = Pending {
        version: p.version,
        seq: SEQ.fetch_add(1, Ordering::Relaxed),
        payload,
    };
    // Encoded once for every socket it is written to directly.
    let frame = event_frame("presence-update", pending.payload.get());
    // What other viewers get when the user's settings (or a viewer's) say otherwise
    // (section 11): decided from the change itself, encoded once per variant.
    let mut views = Views::new(p, state.config.last_seen_reciprocal);
    // Local users this user's changes must not reach (blocks, section 11): one lookup per
    // change, a check per delivery only when there are some.
    let hidden = state.gateway.blocks.hidden_from(&p.user_id);
    let mut sent = 0u64;
    let viewers = state
        .gateway
        .viewers
        .for_change(policy, &p.user_id, p.gender);
    for (i, v) in viewers.into_iter().enumerate() {
        // The writes are made here, one per socket: a large audience would otherwise hold
        // this worker thread for the whole fan-out, and the tasks queued behind it (acks,
        // heartbeats) with it.
        if i % YIELD_EVERY == YIELD_EVERY - 1 {
            tokio::task::yield_now().await;
        }
        if let Some(h) = &hidden
            && h.holds(v.handle.user_key, &v.handle.conn.user)
        {
            continue;
        }
        v.handle.remember(p);
        let (pending, frame) = match views.for_viewer(&v.handle) {
            View::Same => (&pending, &frame),
            View::Other(k) => match views.variant(k) {
                Some((pending, frame)) => (pending, frame),
                None => continue,
            },
        };
        match offer(state, &v, &p.user_id, pending, Some(frame)) {
            Sent::Now => {
                if sent == 0 {
                    first_write.record(since_commit());
                }
                sent += 1;
            }
            Sent::Deferred => {}
            // Closed for good: its disconnect takes it out too, if the library reports one
            // (it does not for a connect that never completed).
            Sent::Gone => state.gateway.viewers.leave(&v.handle),
        }
    }
    if sent > 0 {
        last_write.record(since_commit());
    }
    if let Some(old) = ev.was_online_as {
        sent += tell_gone(state, p, old);
    }
    state.metrics.delivered.increment(sent);
    let latency = Timestamp::now().micros_since(ev.committed_at);
    state.metrics.fanout_latency.record(latency as f64 / 1e6);
    state.metrics.activity.fanned_out(sent, latency);
}

/// Send one socket `p`, as its user may see it, as a change (a block made or lifted:
/// `crate::blocks`).
pub fn offer_one(state: &AppState, v: &Viewer, p: &crate::domain::Presence) {
    let Ok(raw) = serde_json::value::to_raw_value(p) else {
        return;
    };
    let pending = Pending {
        version: p.version,
        seq: SEQ.fetch_add(1, Ordering::Relaxed),
        payload: Arc::from(raw),
    };
    match offer(state, v, &p.user_id, &pending, None) {
        Sent::Now => state.metrics.delivered.increment(1),
        Sent::Deferred => {}
        Sent::Gone => state.gateway.viewers.leave(&v.handle),
    }
}

/// Which encoding of a change a viewer gets.
enum View {
    /// The change as committed.
    Same,
    /// What others get: with their `lastSeen` or without (the viewer's reciprocal rule).
    Other(bool),
}

/// One encoding of a change for other viewers and its frame; `None`: not sent to them.
type Variant = Option<(Pending, Arc<[u8]>)>;

/// The encodings of one change for viewers other than its user, made when first needed.
struct Views<'a> {
    p: &'a crate::domain::Presence,
    /// Nothing to decide: no settings of the user apply, and no `lastSeen` to hide.
    plain: bool,
    reciprocal: bool,
    /// Others get nothing of this change (the user is invisible).
    silent: bool,
    made: [Option<Variant>; 2],
}

impl<'a> Views<'a> {
    fn new(p: &'a crate::domain::Presence, reciprocal: bool) -> Self {
        Views {
            p,
            plain: p.privacy.is_default() && p.last_seen.is_none(),
            reciprocal,
            silent: crate::domain::privacy::pushed_to_others(p).is_none(),
            made: [None, None],
        }
    }

    fn for_viewer(&self, h: &ConnHandle) -> View {
        // The common case costs one branch per delivery.
        if self.plain {
            return View::Same;
        }
        if h.conn.user == self.p.user_id {
            return View::Same;
        }
        View::Other(self.reciprocal && h.hides_last_seen())
    }

    /// The change as others get it (`hiding`: without any `lastSeen`); `None`: not sent.
    fn variant(&mut self, hiding: bool) -> Option<(&Pending, &Arc<[u8]>)> {
        if self.silent {
            return None;
        }
        let p = self.p;
        self.made[hiding as usize]
            .get_or_insert_with(|| {
                let seen = crate::domain::privacy::seen_by_others(p, hiding);
                let raw = serde_json::value::to_raw_value(&seen).ok()?;
                let payload: Encoded = Arc::from(raw);
                let frame = event_frame("presence-update", payload.get());
                Some((
                    Pending {
                        version: seen.version,
                        seq: SEQ.fetch_add(1, Ordering::Relaxed),
                        payload,
                    },
                    frame,
                ))
            })
            .as_ref()
            .map(|(p, f)| (p, f))
    }
}

/// A user online as `old` has another gender now: the viewers who could see them and may
/// not any more get them as gone, once (later changes of theirs never reach those audiences).
/// The user's own sockets are not told: a user always sees themselves.
fn tell_gone(state: &AppState, p: &crate::domain::Presence, old: crate::domain::Gender) -> u64 {
    let lost = state.config.visibility_policy.audiences_lost(old, p.gender);
    if lost.is_empty() || p.privacy.invisible {
        // No audience loses sight of them, so no viewer does (the same rule decides both);
        // or they already see an invisible user offline.
        return 0;
    }
    // Two faces: with the lastSeen the user's settings allow, and without any (a viewer's
    // own reciprocal rule).
    let encode = |hides: bool| {
        let gone = crate::domain::privacy::seen_by_others(&p.gone_for(old), hides);
        let raw = serde_json::value::to_raw_value(&gone).ok()?;
        Some(Pending {
            version: gone.version,
            seq: SEQ.fetch_add(1, Ordering::Relaxed),
            payload: Arc::from(raw),
        })
    };
    let (Some(pending), Some(pending_hiding)) = (encode(false), encode(true)) else {
        return 0;
    };
    let reciprocal = state.config.last_seen_reciprocal;
    // Viewers a block hides from them already heard the last of them.
    let hidden = state.gateway.blocks.hidden_from(&p.user_id);
    let policy = state.config.visibility_policy;
    // Subscription sockets that could see the old gender and may not see the new one.
    let subscribers = state
        .gateway
        .viewers
        .subscribers_of(&p.user_id)
        .into_iter()
        .filter(|v| {
            let c = &v.handle.conn;
            let viewer = (c.user.as_str(), c.gender);
            policy.can_see(viewer, (p.user_id.as_str(), old))
                && !policy.can_see(viewer, (p.user_id.as_str(), p.gender))
        });
    let mut sent = 0;
    for v in state
        .gateway
        .viewers
        .in_audiences(&lost)
        .into_iter()
        .chain(subscribers)
    {
        if v.handle.conn.user == p.user_id
            || hidden
                .as_ref()
                .is_some_and(|h| h.holds(v.handle.user_key, &v.handle.conn.user))
        {
            continue;
        }
        let pending = if reciprocal && v.handle.hides_last_seen() {
            &pending_hiding
        } else {
            &pending
        };
        match offer(state, &v, &p.user_id, pending, None) {
            Sent::Now => sent += 1,
            Sent::Deferred => {}
            Sent::Gone => state.gateway.viewers.leave(&v.handle),
        }
    }
    sent
}

/// All backlogs of this replica together hold at most `SOCKET_BACKLOG_TOTAL` updates: past it
/// the sockets furthest behind are disconnected (their backlogs dropped), largest first, until
/// the rest fit. Each socket's own bound ([`BACKLOG_MAX`]) is not enough on its own: ten
/// thousand slow readers could each hold the most.
fn bound_backlogs(state: &AppState, sids: &[Sid]) {
    let bound = state.config.socket_backlog_total;
    // A batching socket's outbox that is not overdue is a batch being gathered, not a
    // socket falling behind.
    let overdue = Duration::from_millis(state.config.batch_ms) + Duration::from_secs(1);
    let mut sizes: Vec<(usize, Viewer)> = sids
        .iter()
        .filter_map(|sid| state.gateway.viewers.get(*sid))
        .filter(|v| {
            !v.handle.mode.batch
                || v.handle
                    .waiting_since()
                    .is_some_and(|t| t.elapsed() > overdue)
        })
        .map(|v| (v.handle.backlog_len(), v))
        .collect();
    let mut total: usize = sizes.iter().map(|(n, _)| n).sum();
    if total <= bound {
        return;
    }
    sizes.sort_unstable_by_key(|(n, _)| std::cmp::Reverse(*n));
    for (n, v) in sizes {
        if total <= bound {
            break;
        }
        total -= n;
        v.handle.cut_off();
        state
            .gateway
            .backlogged
            .remove(Mailbox::Presence(v.handle.sid));
        state.gateway.viewers.leave(&v.handle);
        state.metrics.slow_disconnected.increment(1);
        tracing::warn!(conn = %v.handle.conn.id, backlog = n, bound, "socket too far behind; disconnected");
        // Cut off at once (no more updates, its backlog dropped); then closed: a namespace
        // disconnect if its queue has room for the packet, else by the transport at its next
        // ping, which a full queue cannot carry.
        let _ = v.socket.disconnect();
    }
}

/// The one retry loop of every outbox: a batching socket's batch when it is due (a batch
/// that finds no room is tried again every tick), any other `/` socket's backlog as its
/// socket's queue drains, and `/dashboard` backlogs ([`super::dashboard::drain`]).
pub async fn run_backlogs(state: AppState) {
    let period = batch_tick(&state);
    let mut tick = crate::background::ticker(period);
    let mut retry: Vec<Sid> = Vec::new();
    while state.background.tick(&mut tick).await {
        // Due within the coming tick: sent now, so none leaves later than PRESENCE_BATCH_MS.
        let due = state
            .gateway
            .batches
            .take_due(std::time::Instant::now() + period);
        let mut again = Vec::new();
        let mut frames = Frames::default();
        for sid in retry.drain(..).chain(due) {
            let Some(v) = state.gateway.viewers.get(sid) else {
                continue;
            };
            if v.handle.has_backlog() {
                send_batch(&state, &v, &mut frames);
                if v.handle.has_backlog() {
                    again.push(sid);
                }
            }
        }
        again.dedup();
        retry = again;
        let waiting: Vec<Mailbox> = state.gateway.backlogged.lock().iter().copied().collect();
        let mut sids = Vec::with_capacity(waiting.len());
        for m in waiting {
            match m {
                Mailbox::Presence(sid) => sids.push(sid),
                Mailbox::Dashboard(sid) => super::dashboard::drain(&state, sid),
            }
        }
        // A batch that found no room for longer than a batch is a socket falling behind too.
        sids.extend(retry.iter().copied());
        bound_backlogs(&state, &sids);
        for sid in sids {
            drain_backlog(&state, sid);
        }
    }
}

/// Send what a `/` socket's backlog holds as its queue has room, at most half a queue per
/// tick: a client that keeps up at all then finds room for the acks of its own requests,
/// which share the queue. Leaves the waiting set once nothing waits.
fn drain_backlog(state: &AppState, sid: Sid) {
    let m = Mailbox::Presence(sid);
    let Some(v) = state.gateway.viewers.get(sid) else {
        return state.gateway.backlogged.remove(m);
    };
    let h = &v.handle;
    if h.mode.batch {
        return state.gateway.backlogged.remove(m);
    }
    let per_tick = (state.config.socket_queue_packets / 2).max(1);
    let mut gone = false;
    let sent = h.drain(per_tick, |p| {
        match send(state, &v, "presence-update", &p.payload, None) {
            Sent::Now => true,
            Sent::Deferred => false,
            Sent::Gone => {
                gone = true;
                false
            }
        }
    });
    if gone {
        state.gateway.viewers.leave(h);
    }
    state.metrics.delivered.increment(sent);
    state.metrics.activity.delivered(sent);
    state.gateway.backlogged.leave_if(m, || !h.has_backlog());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Identity, Role, Roles};
    use crate::domain::{Audience, Gender, UserId};
    use crate::engine::Connection;

    fn connecting(at: Timestamp) -> ConnHandle {
        let user = UserId::parse("viewer").unwrap();
        ConnHandle::new(
            Connection {
                id: "n:1".into(),
                user: user.clone(),
                gender: Gender::Male,
            },
            Sid::new(),
            Identity {
                user_id: user,
                gender: Some(Gender::Male),
                name: None,
                roles: Roles::from(Role::User),
                expires_at: None,
                static_admin: false,
            },
            Audience::FemaleOnly,
            Default::default(),
            at,
            crate::gateway::ratelimit::TokenBucket::new(0, 0),
        )
    }

    /// The interleaving behind the deaf viewer: an emit is refused as "closed" because the
    /// library has not marked the socket connected yet; the library then completes the
    /// CONNECT (and would now answer `connected() == true`); only afterwards is the refusal
    /// judged. It must still be judged "not connected yet" (the update waits, the socket
    /// stays a viewer) until our connect handler ran.
    #[test]
    fn a_change_received_again_with_the_same_version_is_not_sent_again() {
        let user = UserId::parse("u").unwrap();
        let at = |version| {
            let mut r = crate::domain::PresenceRecord::new(Gender::Female);
            r.version = version;
            r.to_presence(user.clone())
        };
        let mut sent = LastSent::default();
        assert!(sent.is_new(&at(10)));
        assert!(
            !sent.is_new(&at(10)),
            "the failover's repeat of the same change"
        );
        assert!(!sent.is_new(&at(9)), "an older one");
        assert!(sent.is_new(&at(11)));
        let other = UserId::parse("v").unwrap();
        let mut p = at(5);
        p.user_id = other;
        assert!(sent.is_new(&p), "versions are per user");
    }

    #[test]
    fn a_refusal_just_before_the_connect_completes_waits_instead_of_dropping_the_viewer() {
        let t0 = Timestamp::now();
        let h = connecting(t0);
        // (the library sets its own flag here; nothing of ours reads it)
        assert_eq!(refused_as_closed(&h, t0.plus_millis(1)), Sent::Deferred);
        h.open();
        assert_eq!(
            refused_as_closed(&h, t0.plus_millis(2)),
            Sent::Gone,
            "once connected, a refusal as closed means the socket closed"
        );
    }

    #[test]
    fn a_connect_that_never_completes_stops_holding_updates() {
        let t0 = Timestamp::now();
        let h = connecting(t0);
        assert_eq!(
            refused_as_closed(&h, t0.plus_millis(29_000)),
            Sent::Deferred
        );
        assert_eq!(refused_as_closed(&h, t0.plus_millis(31_000)), Sent::Gone);
    }

    fn change(seq: u64, body: &str) -> Pending {
        Pending {
            version: seq as i64,
            seq,
            payload: Arc::from(serde_json::value::RawValue::from_string(body.into()).unwrap()),
        }
    }

    #[test]
    fn sockets_with_the_same_batch_share_one_encoding_and_others_get_their_own() {
        let (a, b, c) = (
            change(1, r#"{"u":"a"}"#),
            change(2, r#"{"u":"b"}"#),
            change(3, "3"),
        );
        let mut frames = Frames::default();
        let (first, first_frame) = frames.encode(&[&a, &b]).unwrap();
        assert_eq!(first.get(), r#"{"updates":[{"u":"a"},{"u":"b"}]}"#);
        assert!(
            first_frame.ends_with(br#"42["presence-batch",{"updates":[{"u":"a"},{"u":"b"}]}]"#)
        );
        let (again, again_frame) = frames.encode(&[&a, &b]).unwrap();
        assert!(Arc::ptr_eq(&first, &again), "encoded once");
        assert!(Arc::ptr_eq(&first_frame, &again_frame), "framed once");
        let (other, _) = frames.encode(&[&a, &c]).unwrap();
        assert_eq!(other.get(), r#"{"updates":[{"u":"a"},3]}"#);
        let (shorter, _) = frames.encode(&[&a]).unwrap();
        assert_eq!(shorter.get(), r#"{"updates":[{"u":"a"}]}"#);
    }
}
