//! Live statistics: events stored, then announced to every dashboard on every replica, in
//! `seq` order; the `/api/stats` report with a cache that never predates an announcement.
//! (One file for the one ordering argument: store, announce, deliver and the cache's floor
//! only make sense together.)
//!
//! An event is never announced before it is written, so no dashboard ever needs to wait
//! before refetching:
//!
//! 1. **Store.** Events queue to this replica's committer, which writes a batch in one
//!    statement while holding a PostgreSQL advisory lock ([`SEQ_LOCK`]), so `seq` order is
//!    commit order cluster-wide;
//! 2. **Announce.** Still holding the lock, it publishes the stored batch on the engine's
//!    statistics bus (Redis pub/sub, or in-process), so publication order is `seq` order;
//! 3. **Deliver.** Each replica's receiver emits `stats_update` to its `/dashboard` sockets in
//!    `seq` order. A jump in `seq` (a message lost, a publisher that died between commit and
//!    publish) is filled from the database before going on, and a once-a-second check of the
//!    highest stored `seq` catches a tail nobody announced.
//!
//! Since an event reaches a dashboard only after its commit, `GET /api/stats` on any
//! replica afterwards reflects it. The report cache is keyed by query and a cached report is
//! served only while its `lastEventSeq` is at least the highest `seq` committed when the
//! request arrived (whichever replica delivered it).
//!
//! A dashboard that cannot keep up is not buffered for without bound and not silently
//! skipped (see `gateway::dashboard`): past a bounded backlog it gets a `stats_resync`
//! `{"lastEventSeq"}` telling it to refetch `/api/stats` and carry on from there.

use crate::db::stats::{ReportQuery, SEQ_LOCK, Stored};
use crate::db::{Database, DbError};
use crate::domain::Timestamp;
use crate::domain::stats::{Channel, EventType, NewEvent, StatsUpdate};
use crate::engine::PresenceEngine;
use crate::error::AppError;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Events waiting for the committer; beyond this, recording answers `unavailable` rather
/// than queue without bound behind a stalled database.
const QUEUE: usize = 10_000;
/// Queue room kept for events that are not a widget's own requests (publishers' `POST
/// /api/events`, a visitor's going offline): past it, widget joins and messages are refused
/// first, so a flood of them from many sockets cannot fill the queue everyone waits in.
const RESERVED: usize = QUEUE / 5;
/// Events per insert statement.
const BATCH: usize = 500;
/// How often the receiver checks for stored events nobody announced.
const TAIL_CHECK: Duration = Duration::from_secs(1);
/// A cached report also expires after this (a default window slides with the clock).
const CACHE_TTL: Duration = Duration::from_secs(10);
const CACHE_MAX: usize = 256;

struct Job {
    events: Vec<NewEvent>,
    done: oneshot::Sender<Result<Vec<Stored>, NotStored>>,
}

/// Why a job's events were not stored.
#[derive(Debug, Clone, Copy)]
enum NotStored {
    /// The database refused these events themselves (a value it cannot store).
    Refused,
    /// The database did not answer, or the committer is stopping.
    Unavailable,
}

pub struct Stats {
    db: Arc<Database>,
    jobs: mpsc::Sender<Job>,
    queue: Mutex<Option<mpsc::Receiver<Job>>>,
    /// The highest seq delivered to this replica's dashboards.
    delivered: AtomicI64,
    cache: Mutex<HashMap<ReportQuery, CacheEntry>>,
    /// The receiver knows where it starts: events stored from now on will be delivered.
    receiving: tokio::sync::watch::Sender<bool>,
}

/// A report being computed (empty slot) or computed at `at`.
struct CacheEntry {
    slot: Arc<tokio::sync::OnceCell<Arc<Value>>>,
    at: Instant,
}

fn not_stored(e: &DbError, events: usize) -> NotStored {
    if e.is_data_error() {
        tracing::warn!(error = %e, events, "statistics events refused by the database");
        NotStored::Refused
    } else {
        tracing::warn!(error = %e, events, "statistics events not stored");
        NotStored::Unavailable
    }
}

/// The bus payload: a stored batch, in seq order.
#[derive(serde::Serialize, serde::Deserialize)]
struct Wire(i64, String, String, String, i64);

fn encode(updates: &[&StatsUpdate]) -> String {
    let w: Vec<Wire> = updates
        .iter()
        .map(|u| {
            Wire(
                u.seq,
                u.kind.as_str().into(),
                u.channel.as_str().into(),
                u.visitor_id.clone(),
                u.at.as_micros(),
            )
        })
        .collect();
    serde_json::to_string(&w).unwrap_or_default()
}

fn decode(payload: &str) -> Vec<StatsUpdate> {
    let w: Vec<Wire> = serde_json::from_str(payload).unwrap_or_default();
    w.into_iter()
        .filter_map(|Wire(seq, kind, channel, visitor_id, at)| {
            Some(StatsUpdate {
                seq,
                kind: EventType::parse(&kind)?,
                channel: Channel::parse(&channel)?,
                visitor_id,
                at: Timestamp(at),
            })
        })
        .collect()
}

impl Stats {
    pub fn new(db: Arc<Database>) -> Self {
        let (jobs, rx) = mpsc::channel(QUEUE);
        Stats {
            db,
            jobs,
            queue: Mutex::new(Some(rx)),
            delivered: AtomicI64::new(0),
            cache: Mutex::new(HashMap::new()),
            receiving: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Store `events` (consecutive seqs, in this order) and have them announced. Returns when
    /// they are committed.
    /// [`record`](Self::record), for a widget's own request (its join, its messages): refused
    /// while the queue is down to its [`RESERVED`] room.
    pub async fn record_widget(&self, events: Vec<NewEvent>) -> Result<Vec<Stored>, AppError> {
        if self.jobs.capacity() < RESERVED {
            return Err(AppError::Unavailable(
                "statistics are busy; widget events are refused first, retry shortly".into(),
            ));
        }
        self.record(events).await
    }

    pub async fn record(&self, events: Vec<NewEvent>) -> Result<Vec<Stored>, AppError> {
        let (done, rx) = oneshot::channel();
        self.jobs
            .try_send(Job { events, done })
            .map_err(|_| AppError::Unavailable("statistics are backed up; retry shortly".into()))?;
        rx.await
            .map_err(|_| AppError::Unavailable("statistics are shutting down".into()))?
            .map_err(|e| match e {
                NotStored::Refused => AppError::bad_request("the database refused this event"),
                NotStored::Unavailable => {
                    AppError::Unavailable("the database is temporarily unavailable".into())
                }
            })
    }

    /// The committer: batches of queued events, stored and published under [`SEQ_LOCK`].
    pub async fn run_committer(
        &self,
        engine: Arc<dyn PresenceEngine>,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let Some(mut rx) = self.queue.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        // Nothing is stored before this replica's receiver knows where it starts, or its
        // own dashboards could miss the first events.
        let mut receiving = self.receiving.subscribe();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = receiving.wait_for(|r| *r) => {}
        }
        loop {
            let first = tokio::select! {
                _ = stop.cancelled() => None,
                j = rx.recv() => j,
            };
            let Some(first) = first else { break };
            let mut jobs = vec![first];
            let mut n = jobs[0].events.len();
            while n < BATCH {
                match rx.try_recv() {
                    Ok(j) => {
                        n += j.events.len();
                        jobs.push(j);
                    }
                    Err(_) => break,
                }
            }
            let events: Vec<NewEvent> =
                jobs.iter().flat_map(|j| j.events.iter().cloned()).collect();
            let result = self.commit(&*engine, &events).await;
            match result {
                Ok(stored) => {
                    let mut it = stored.into_iter();
                    for j in jobs {
                        let _ = j.done.send(Ok(it.by_ref().take(j.events.len()).collect()));
                    }
                }
                // One job's events the database refuses must not fail the others with it:
                // each is committed on its own (text is checked where it enters, so this is
                // the committer's own defence).
                Err(e) if e.is_data_error() && jobs.len() > 1 => {
                    tracing::warn!(error = %e, jobs = jobs.len(), "statistics batch refused; committing its jobs one by one");
                    for j in jobs {
                        let r = self.commit(&*engine, &j.events).await;
                        let _ = j.done.send(r.map_err(|e| not_stored(&e, j.events.len())));
                    }
                }
                Err(e) => {
                    let why = not_stored(&e, events.len());
                    for j in jobs {
                        let _ = j.done.send(Err(why));
                    }
                }
            }
        }
        // Stopping: refuse what is still queued rather than leave its senders waiting.
        rx.close();
        while let Ok(j) = rx.try_recv() {
            let _ = j.done.send(Err(NotStored::Unavailable));
        }
    }

    async fn commit(
        &self,
        engine: &dyn PresenceEngine,
        events: &[NewEvent],
    ) -> Result<Vec<Stored>, DbError> {
        let mut conn = self.db.pool().acquire().await.map_err(DbError::from)?;
        let r = async {
            sqlx::query("SELECT pg_advisory_lock($1)")
                .bind(SEQ_LOCK)
                .execute(&mut *conn)
                .await?;
            let stored = crate::db::stats::insert(&mut conn, events).await?;
            let new: Vec<&StatsUpdate> = stored
                .iter()
                .filter_map(|s| match s {
                    Stored::New(u) => Some(u),
                    Stored::Duplicate(_) => None,
                })
                .collect();
            for u in &new {
                crate::metrics::stats_event_recorded(u.kind.as_str());
            }
            // Still under the lock, so publication order is seq order. A failed publish
            // loses nothing: receivers fill gaps, and find the tail, from the database.
            if !new.is_empty()
                && let Err(e) = engine.publish(crate::engine::Topic::Stats, encode(&new)).await
            {
                tracing::warn!(error = %e, "statistics not published; replicas will read them from the database");
            }
            sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(SEQ_LOCK)
                .execute(&mut *conn)
                .await?;
            Ok::<_, DbError>(stored)
        }
        .await;
        self.db.observe(&r);
        if r.is_err() {
            // The session may still hold the lock: end it rather than pool it.
            let _ = conn.close().await;
        }
        r
    }

    /// The receiver: every stored event, in seq order, to this replica's dashboards.
    pub async fn run_receiver(
        &self,
        engine: Arc<dyn PresenceEngine>,
        emit: impl Fn(&StatsUpdate),
        stop: tokio_util::sync::CancellationToken,
    ) {
        let mut rx = engine.subscribe_topic(crate::engine::Topic::Stats);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = self.db.wait_schema() => {}
        }
        // Dashboards get what is stored from now on.
        loop {
            match self.db.last_event_seq().await {
                Ok(seq) => {
                    self.delivered.store(seq, Ordering::Release);
                    break;
                }
                Err(_) => tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(TAIL_CHECK) => {}
                },
            }
        }
        tracing::debug!(from = self.delivered(), "statistics receiver running");
        self.receiving.send_replace(true);
        let mut tick = tokio::time::interval(TAIL_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                m = rx.recv() => match m {
                    Ok(payload) => {
                        for u in decode(&payload) {
                            self.deliver_through(u, &emit).await;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => self.catch_up(&emit).await,
                    Err(_) => break,
                },
                _ = tick.tick() => self.catch_up(&emit).await,
            }
        }
    }

    /// Deliver `u`, after whatever stored events precede it that were not delivered.
    async fn deliver_through(&self, u: StatsUpdate, emit: &impl Fn(&StatsUpdate)) {
        let last = self.delivered.load(Ordering::Acquire);
        tracing::debug!(seq = u.seq, last, "statistics event received");
        if u.seq <= last {
            return;
        }
        if u.seq > last + 1 {
            self.fill(last, u.seq, emit).await;
        }
        emit(&u);
        self.delivered.store(u.seq, Ordering::Release);
    }

    /// Deliver stored events with `after < seq < before` (a gap; possibly none exist: a
    /// failed insert burns seqs).
    async fn fill(&self, after: i64, before: i64, emit: &impl Fn(&StatsUpdate)) {
        let mut from = after;
        loop {
            match self.db.events_between(from, before, 1000).await {
                Ok(missing) if missing.is_empty() => return,
                Ok(missing) => {
                    for m in &missing {
                        emit(m);
                        self.delivered.store(m.seq, Ordering::Release);
                    }
                    from = missing.last().map_or(before, |m| m.seq);
                }
                Err(e) => {
                    tracing::warn!(error = %e, after, before, "could not fill a gap in statistics events");
                    return;
                }
            }
        }
    }

    async fn catch_up(&self, emit: &impl Fn(&StatsUpdate)) {
        let Ok(max) = self.db.last_event_seq().await else {
            return;
        };
        let last = self.delivered.load(Ordering::Acquire);
        if max > last {
            self.fill(last, max + 1, emit).await;
        }
    }

    /// The highest seq delivered here.
    pub fn delivered(&self) -> i64 {
        self.delivered.load(Ordering::Acquire)
    }

    /// The report, from the cache when that cannot predate anything committed before the
    /// request arrived. Concurrent requests for one report share one query (a dashboard fleet
    /// reloading at once costs the database one report, not one each).
    ///
    /// The floor is the highest *committed* seq (an index probe), not what this replica
    /// delivered: a dashboard on another replica may have received seq N before this
    /// replica's receiver got there, and its refetch must still see N.
    pub async fn report(&self, q: ReportQuery) -> Result<Arc<Value>, AppError> {
        let floor = self.db.last_event_seq().await?.max(self.delivered());
        let fresh = |v: &Value| v["lastEventSeq"].as_i64().unwrap_or(0) >= floor;
        let mut stale = 0;
        loop {
            let slot = {
                let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(e) = cache.get(&q)
                    && e.at.elapsed() < CACHE_TTL
                    && e.slot.get().is_some_and(|v| fresh(v))
                {
                    crate::metrics::stats_report_cache_hit();
                    return Ok(e.slot.get().cloned().expect("checked"));
                }
                match cache.get(&q) {
                    // Being computed right now: wait for it.
                    Some(e) if e.slot.get().is_none() => e.slot.clone(),
                    _ => {
                        if cache.len() >= CACHE_MAX {
                            cache.retain(|_, e| e.slot.get().is_none());
                        }
                        let e = CacheEntry {
                            slot: Arc::default(),
                            at: Instant::now(),
                        };
                        let slot = e.slot.clone();
                        cache.insert(q.clone(), e);
                        slot
                    }
                }
            };
            let r = slot
                .get_or_try_init(|| async {
                    self.db
                        .stats_report(&q)
                        .await
                        .map(Arc::new)
                        .map_err(|e| match &e {
                            // invalid_parameter_value: an unknown time zone.
                            DbError::Sql(sqlx::Error::Database(d))
                                if d.code().as_deref() == Some("22023") =>
                            {
                                AppError::bad_request("tz: unknown time zone")
                            }
                            _ => AppError::from(e),
                        })
                })
                .await;
            match r {
                // A query that started before this request's floor was delivered may miss it:
                // then ask again (the entry is stale now, so a new query starts).
                Ok(v) if fresh(v) => return Ok(v.clone()),
                // A query started after the floor was read that still falls short saw the
                // events deleted by hand: asking forever would never do better.
                Ok(_) if stale < 2 => stale += 1,
                Ok(v) => return Ok(v.clone()),
                Err(e) => {
                    let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                    if cache.get(&q).is_some_and(|c| Arc::ptr_eq(&c.slot, &slot)) {
                        cache.remove(&q);
                    }
                    return Err(e);
                }
            }
        }
    }
}
