//! The presence writer: changes into PostgreSQL, debounced, batched, never lost. (Its one
//! statement is written out in SQL below; the rest is the map's bookkeeping.)
//!
//! The map of pending writes holds at most one entry per user — a newer change replaces the older one, so a
//! flapping user costs one write — and an entry leaves it only when a write of it succeeded;
//! a failed batch goes back (merged with whatever arrived meanwhile) and is retried with
//! backoff. Memory is therefore bounded by the number of distinct users changed during an
//! outage, not by the number of changes.
//!
//! Each entry is due `PRESENCE_DB_ONLINE_DEBOUNCE_MS` after an online change or
//! `PRESENCE_DB_OFFLINE_DEBOUNCE_MS` after an offline one (an earlier due time is never
//! pushed back). A flush writes everything due, in one statement per [`MAX_BATCH`] users;
//! the statement refuses to replace a row with an older version, so replicas need no
//! coordination and a write may land late or twice without harm.

use super::{Database, DbError};
use crate::domain::{Gender, Presence, UserId};
use metrics::{Counter, Gauge};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Users per statement.
pub const MAX_BATCH: usize = 2000;
/// A flush takes everything due within this window too: a few milliseconds early costs
/// nothing and turns a stream of immediate offline writes into batches.
const COALESCE: Duration = Duration::from_millis(20);
/// Writes of one entry the database refuses on its data before it is dropped (logged and
/// counted): no input should get here (text is checked where it enters), but one that does
/// must not block every other user's writes for ever.
const MAX_TRIES: u8 = 3;
/// Retry delays after a failed flush.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// What a token told us about a user.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub name: Option<String>,
    pub gender: Option<Gender>,
}

#[derive(Debug, Clone)]
struct Pending {
    profile: Option<Profile>,
    presence: Option<Presence>,
    due: Instant,
    /// Writes of this entry alone that the database refused on its data.
    refused: u8,
}

impl Pending {
    /// Fold `newer` (taken out of the map later, or arrived later) over `self`.
    fn merge(&mut self, newer: Pending) {
        if newer.profile.is_some() {
            self.profile = newer.profile;
        }
        match (&self.presence, newer.presence) {
            (Some(old), Some(new)) if new.version <= old.version => {}
            (_, Some(new)) => self.presence = Some(new),
            (_, None) => {}
        }
        self.due = self.due.min(newer.due);
        self.refused = self.refused.max(newer.refused);
    }
}

/// The pending entries, and when the flush loop plans to wake next (so that a new entry
/// due earlier wakes it, and one due later does not).
struct Inner {
    map: HashMap<UserId, Pending>,
    planned: Option<Instant>,
    /// Entries taken out for a write that has not finished: still pending to the outside.
    in_flight: usize,
}

impl Inner {
    fn pending(&self) -> usize {
        self.map.len() + self.in_flight
    }
}

pub struct PresenceWriter {
    pending: Mutex<Inner>,
    wake: Notify,
    online_debounce: Duration,
    offline_debounce: Duration,
    pending_gauge: Gauge,
    errors: Counter,
    written: Counter,
    dropped: Counter,
}

impl PresenceWriter {
    pub fn new(online_debounce: Duration, offline_debounce: Duration, node: &str) -> Self {
        crate::metrics::install();
        let (errors, written, dropped, pending_gauge) =
            crate::metrics::Metrics::writer_handles(node);
        errors.increment(0);
        written.increment(0);
        dropped.increment(0);
        pending_gauge.set(0.0);
        PresenceWriter {
            pending: Mutex::new(Inner {
                map: HashMap::new(),
                planned: None,
                in_flight: 0,
            }),
            wake: Notify::new(),
            online_debounce,
            offline_debounce,
            pending_gauge,
            errors,
            written,
            dropped,
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queue a presence (a change this replica committed, or the state a connection found).
    pub fn record(&self, presence: &Presence) {
        self.record_presence(None, presence);
    }

    /// Queue a user's profile from their token (written with the online debounce: it
    /// rides along with the connection's online write).
    pub fn record_profile(&self, user: &UserId, profile: Profile) {
        self.put(
            user.clone(),
            Pending {
                profile: Some(profile),
                presence: None,
                due: Instant::now() + self.online_debounce,
                refused: 0,
            },
        );
    }

    /// A connection arrived: its token's profile and the presence it found, in one entry.
    pub fn record_connect(&self, profile: Profile, presence: &Presence) {
        self.record_presence(Some(profile), presence);
    }

    /// Queue a presence, due after the debounce of its direction (online or offline).
    fn record_presence(&self, profile: Option<Profile>, presence: &Presence) {
        let debounce = if presence.online {
            self.online_debounce
        } else {
            self.offline_debounce
        };
        self.put(
            presence.user_id.clone(),
            Pending {
                profile,
                presence: Some(presence.clone()),
                due: Instant::now() + debounce,
                refused: 0,
            },
        );
    }

    fn put(&self, user: UserId, p: Pending) {
        let (len, wake) = {
            let mut inner = self.inner();
            let wake = inner.planned.is_none_or(|at| p.due < at);
            if wake {
                // Until the loop replans, do not wake it again for entries due later.
                inner.planned = Some(p.due);
            }
            match inner.map.get_mut(&user) {
                Some(e) => e.merge(p),
                None => {
                    inner.map.insert(user, p);
                }
            }
            (inner.pending(), wake)
        };
        self.pending_gauge.set(len as f64);
        if wake {
            self.wake.notify_one();
        }
    }

    /// Changes that never reached the writer (it fell behind the change stream).
    pub fn note_lost(&self, n: u64) {
        self.errors.increment(n);
    }

    /// Entries waiting to be written.
    pub fn pending(&self) -> usize {
        self.inner().pending()
    }

    /// Whether a write for `user` is waiting.
    pub fn is_pending(&self, user: &UserId) -> bool {
        self.inner().map.contains_key(user)
    }

    /// Take what is due by `horizon`, at most `MAX_BATCH` entries.
    fn take_due(&self, horizon: Instant) -> Vec<(UserId, Pending)> {
        let mut inner = self.inner();
        let due: Vec<UserId> = inner
            .map
            .iter()
            .filter(|(_, p)| p.due <= horizon)
            .map(|(u, _)| u.clone())
            .take(MAX_BATCH)
            .collect();
        let taken: Vec<_> = due
            .into_iter()
            .filter_map(|u| inner.map.remove_entry(&u))
            .collect();
        inner.in_flight += taken.len();
        taken
    }

    /// `n` entries taken out for a write are written.
    fn landed(&self, n: usize) {
        self.written.increment(n as u64);
        let mut inner = self.inner();
        inner.in_flight -= n;
        self.pending_gauge.set(inner.pending() as f64);
    }

    /// Put back a batch whose write failed, under anything newer that arrived meanwhile.
    fn restore(&self, batch: Vec<(UserId, Pending)>) {
        let mut inner = self.inner();
        inner.in_flight -= batch.len();
        for (user, mut old) in batch {
            if let Some(newer) = inner.map.remove(&user) {
                old.merge(newer);
            }
            inner.map.insert(user, old);
        }
        self.pending_gauge.set(inner.pending() as f64);
    }

    /// Write everything due by `horizon`. Returns how many users were written.
    async fn flush_due(&self, db: &Database, horizon: Instant) -> Result<usize, DbError> {
        let mut total = 0;
        loop {
            let batch = self.take_due(horizon);
            if batch.is_empty() {
                break;
            }
            let n = batch.len();
            let r = write_batch(db, &batch).await;
            db.observe(&r);
            match r {
                Ok(()) => {
                    total += n;
                    self.landed(n);
                }
                Err(e) if e.is_data_error() => {
                    self.errors.increment(1);
                    total += self.write_apart(db, batch).await?;
                }
                Err(e) => {
                    self.errors.increment(1);
                    self.restore(batch);
                    return Err(e);
                }
            }
            if n < MAX_BATCH {
                break;
            }
        }
        Ok(total)
    }

    /// A batch the database refused on its data: written in halves, down to the entries it
    /// refuses alone, so the others land now. Such an entry is tried again with the next
    /// flush, and dropped after [`MAX_TRIES`]. Returns how many users were written.
    async fn write_apart(
        &self,
        db: &Database,
        batch: Vec<(UserId, Pending)>,
    ) -> Result<usize, DbError> {
        let mut written = 0;
        let mut parts = vec![batch];
        while let Some(part) = parts.pop() {
            let n = part.len();
            let r = write_batch(db, &part).await;
            db.observe(&r);
            match r {
                Ok(()) => {
                    written += n;
                    self.landed(n);
                }
                Err(e) if e.is_data_error() && n > 1 => {
                    let mut part = part;
                    let right = part.split_off(n / 2);
                    parts.push(right);
                    parts.push(part);
                }
                Err(e) if e.is_data_error() => {
                    let (user, mut p) = part.into_iter().next().expect("one entry");
                    p.refused += 1;
                    if p.refused >= MAX_TRIES {
                        tracing::error!(user = %user, error = %e, tries = p.refused,
                            "presence write refused by the database; dropped");
                        self.dropped.increment(1);
                        let mut inner = self.inner();
                        inner.in_flight -= 1;
                        self.pending_gauge.set(inner.pending() as f64);
                    } else {
                        tracing::warn!(user = %user, error = %e, "presence write refused by the database; tried again later");
                        // Not due again before the next flush's backoff.
                        p.due = Instant::now() + BACKOFF_MAX;
                        self.restore(vec![(user, p)]);
                    }
                }
                Err(e) => {
                    // The database went away meanwhile: everything not written goes back.
                    self.restore(part);
                    for rest in parts {
                        self.restore(rest);
                    }
                    return Err(e);
                }
            }
        }
        Ok(written)
    }

    /// Write everything pending now, whatever its due time (shutdown), until `deadline`.
    pub async fn flush_all(&self, db: &Database, deadline: Duration) -> bool {
        let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        matches!(
            tokio::time::timeout(deadline, self.flush_due(db, far)).await,
            Ok(Ok(_))
        ) && self.pending() == 0
    }

    /// When the loop should wake next (an hour from now if nothing is pending), recorded
    /// for [`put`](Self::put).
    fn plan(&self) -> Instant {
        let mut inner = self.inner();
        let at = inner
            .map
            .values()
            .map(|p| p.due)
            .min()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        inner.planned = Some(at);
        at
    }

    /// The flush loop: sleep until the earliest due entry (or a wake-up for an immediate
    /// one), write, back off on failure. Ends when `stop` is cancelled; the caller then
    /// runs [`flush_all`](Self::flush_all).
    pub async fn run(&self, db: &Database, stop: CancellationToken) {
        let mut backoff = BACKOFF_MIN;
        loop {
            let until = self.plan();
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep_until(until) => {}
                _ = self.wake.notified() => {}
            }
            match self.flush_due(db, Instant::now() + COALESCE).await {
                Ok(_) => backoff = BACKOFF_MIN,
                Err(e) => {
                    tracing::warn!(error = %e, pending = self.pending(), retry_in = ?backoff,
                        "presence write failed; kept for retry");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }
}

/// One statement: upsert the users whose profile is in the batch, and the presences, each
/// row only if its version is newer than the stored one.
async fn write_batch(db: &Database, batch: &[(UserId, Pending)]) -> Result<(), DbError> {
    let n = batch.len();
    let mut ids = Vec::with_capacity(n);
    let mut has_profile = Vec::with_capacity(n);
    let mut names: Vec<Option<String>> = Vec::with_capacity(n);
    let mut genders: Vec<Option<&'static str>> = Vec::with_capacity(n);
    let mut statuses: Vec<Option<&'static str>> = Vec::with_capacity(n);
    let mut last_seen: Vec<Option<i64>> = Vec::with_capacity(n);
    let mut versions: Vec<Option<i64>> = Vec::with_capacity(n);
    let mut updated: Vec<Option<i64>> = Vec::with_capacity(n);
    let mut details: Vec<Option<String>> = Vec::with_capacity(n);
    for (user, p) in batch {
        ids.push(user.as_str().to_string());
        has_profile.push(p.profile.is_some());
        names.push(p.profile.as_ref().and_then(|pr| pr.name.clone()));
        // The gender known with the presence counts too: it is what the engine used.
        genders.push(
            p.profile
                .as_ref()
                .and_then(|pr| pr.gender)
                .map(Gender::as_str),
        );
        let pr = p.presence.as_ref();
        statuses.push(pr.map(|x| x.status.as_str()));
        last_seen.push(pr.and_then(|x| x.last_seen).map(|t| t.as_micros()));
        versions.push(pr.map(|x| x.version));
        updated.push(pr.and_then(|x| x.updated_at).map(|t| t.as_micros()));
        details.push(
            pr.and_then(|x| x.details.as_ref())
                .map(|d| d.value().to_string()),
        );
    }
    const SQL: &str = r#"
WITH input AS (
    SELECT * FROM UNNEST($1::text[], $2::bool[], $3::text[], $4::text[], $5::text[],
                         $6::int8[], $7::int8[], $8::int8[], $9::text[])
        AS t(id, has_profile, name, gender, status, last_seen_us, version, updated_us, details)
),
upsert_users AS (
    INSERT INTO users AS u (id, name, gender)
    SELECT id, name, gender FROM input WHERE has_profile
    ON CONFLICT (id) DO UPDATE
        SET name = COALESCE(EXCLUDED.name, u.name),
            gender = COALESCE(EXCLUDED.gender, u.gender),
            updated_at = now()
        -- a reconnect with the same claims must not rewrite the row
        WHERE (COALESCE(EXCLUDED.name, u.name), COALESCE(EXCLUDED.gender, u.gender))
              IS DISTINCT FROM (u.name, u.gender)
)
INSERT INTO user_presence AS p (user_id, status, online, last_seen, version, updated_at, details)
SELECT id, status, status <> 'offline', ('epoch'::timestamptz + (last_seen_us * interval '1 microsecond')), version, ('epoch'::timestamptz + (updated_us * interval '1 microsecond')), details::jsonb
FROM input WHERE status IS NOT NULL
ON CONFLICT (user_id) DO UPDATE
    SET status = EXCLUDED.status, online = EXCLUDED.online, last_seen = EXCLUDED.last_seen,
        version = EXCLUDED.version, updated_at = EXCLUDED.updated_at, details = EXCLUDED.details
    WHERE p.version < EXCLUDED.version
"#;
    sqlx::query(SQL)
        .bind(ids)
        .bind(has_profile)
        .bind(names)
        .bind(genders)
        .bind(statuses)
        .bind(last_seen)
        .bind(versions)
        .bind(updated)
        .bind(details)
        .execute(db.pool())
        .await?;
    Ok(())
}
