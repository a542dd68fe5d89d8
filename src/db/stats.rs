//! Statistics events in PostgreSQL: storing a batch in cluster-wide `seq` order, reading
//! ranges of it back (to fill gaps in what a replica received), and the `/api/stats` report.

use super::{Database, DbError};
use crate::domain::Timestamp;
use crate::domain::stats::{Channel, EventType, NewEvent, StatsUpdate};
use sqlx::Row;
use sqlx::postgres::PgConnection;

/// Advisory lock key serialising event inserts and their announcement, cluster-wide
/// ("pgstats" in ASCII). Migration 0003's rollup triggers take it too, as a number.
pub const SEQ_LOCK: i64 = 0x0070_6773_7461_7473;

/// What storing one event gave.
#[derive(Debug, Clone, PartialEq)]
pub enum Stored {
    /// Stored now, with this seq: announce it.
    New(StatsUpdate),
    /// A retry of an already stored event (same idempotency key): its seq, not announced again.
    Duplicate(i64),
}

fn update(seq: i64, e: &NewEvent) -> StatsUpdate {
    StatsUpdate {
        seq,
        kind: e.kind,
        channel: e.visitor.channel,
        visitor_id: e.visitor.id.clone(),
        at: e.at,
    }
}

const INSERT: &str = r#"
INSERT INTO stats_events (type, channel, visitor_id, at, sender, body, human_mode,
                          visitor_name, country, city, idempotency_key)
SELECT type, channel, visitor_id, 'epoch'::timestamptz + at_us * interval '1 microsecond',
       sender, body, human_mode, visitor_name, country, city, idem
FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[], $6::text[], $7::bool[],
            $8::text[], $9::text[], $10::text[], $11::text[])
     WITH ORDINALITY AS t(type, channel, visitor_id, at_us, sender, body, human_mode,
                          visitor_name, country, city, idem, ord)
ORDER BY ord
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING seq, idempotency_key"#;

/// Insert `events` on `conn` (which holds [`SEQ_LOCK`]), in one statement. Seqs follow the
/// order of `events`: rows are produced in `ord` order and each takes the next value.
pub async fn insert(conn: &mut PgConnection, events: &[NewEvent]) -> Result<Vec<Stored>, DbError> {
    let col = |f: &dyn Fn(&NewEvent) -> Option<String>| -> Vec<Option<String>> {
        events.iter().map(f).collect()
    };
    let rows = sqlx::query(INSERT)
        .bind(col(&|e| Some(e.kind.as_str().into())))
        .bind(col(&|e| Some(e.visitor.channel.as_str().into())))
        .bind(col(&|e| Some(e.visitor.id.clone())))
        .bind(events.iter().map(|e| e.at.as_micros()).collect::<Vec<_>>())
        .bind(col(&|e| {
            e.message.as_ref().map(|m| m.sender.as_str().into())
        }))
        .bind(col(&|e| e.message.as_ref().map(|m| m.text.clone())))
        .bind(
            events
                .iter()
                .map(|e| e.message.as_ref().map(|m| m.human_mode))
                .collect::<Vec<_>>(),
        )
        .bind(col(&|e| e.visitor.name.clone()))
        .bind(col(&|e| e.visitor.country.clone()))
        .bind(col(&|e| e.visitor.city.clone()))
        .bind(col(&|e| e.idempotency_key.clone()))
        .fetch_all(&mut *conn)
        .await?;
    let mut returned: Vec<(i64, Option<String>)> = rows
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<_, sqlx::Error>>()?;
    returned.sort_by_key(|(seq, _)| *seq);
    let mut it = returned.into_iter().peekable();
    let mut out = Vec::with_capacity(events.len());
    for e in events {
        // Inserted rows come back in input order once sorted by seq; an event whose key
        // conflicted is absent, and is looked up below.
        let inserted = match (&e.idempotency_key, it.peek()) {
            (None, Some(_)) => true,
            (Some(k), Some((_, Some(rk)))) => k == rk,
            _ => false,
        };
        if inserted {
            let (seq, _) = it.next().expect("peeked");
            out.push(Stored::New(update(seq, e)));
        } else {
            let key = e.idempotency_key.clone().unwrap_or_default();
            let seq: i64 =
                sqlx::query_scalar("SELECT seq FROM stats_events WHERE idempotency_key = $1")
                    .bind(key)
                    .fetch_one(&mut *conn)
                    .await?;
            out.push(Stored::Duplicate(seq));
        }
    }
    Ok(out)
}

fn decode_update(row: &sqlx::postgres::PgRow) -> Result<StatsUpdate, DbError> {
    let kind: String = row.try_get(1)?;
    let channel: String = row.try_get(2)?;
    let bad = || DbError::Sql(sqlx::Error::Decode("unknown event type or channel".into()));
    Ok(StatsUpdate {
        seq: row.try_get(0)?,
        kind: EventType::parse(&kind).ok_or_else(bad)?,
        channel: Channel::parse(&channel).ok_or_else(bad)?,
        visitor_id: row.try_get(3)?,
        at: Timestamp(row.try_get(4)?),
    })
}

impl Database {
    /// Stored events with `after < seq < before`, in order (at most `limit`).
    pub async fn events_between(
        &self,
        after: i64,
        before: i64,
        limit: i64,
    ) -> Result<Vec<StatsUpdate>, DbError> {
        let r = sqlx::query(
            "SELECT seq, type, channel, visitor_id, (extract(epoch FROM at) * 1000000)::int8
             FROM stats_events WHERE seq > $1 AND seq < $2 ORDER BY seq LIMIT $3",
        )
        .bind(after)
        .bind(before)
        .bind(limit)
        .fetch_all(self.pool())
        .await
        .map_err(DbError::from);
        self.observe(&r);
        r?.iter().map(decode_update).collect()
    }

    /// The highest stored seq (0 when there is none).
    pub async fn last_event_seq(&self) -> Result<i64, DbError> {
        let r = sqlx::query_scalar::<_, i64>("SELECT COALESCE(max(seq), 0) FROM stats_events")
            .fetch_one(self.pool())
            .await
            .map_err(DbError::from);
        self.observe(&r);
        r
    }

    /// The `/api/stats` report over `[from, to)`, as JSON built by PostgreSQL in one
    /// statement (one snapshot: `lastEventSeq` and every figure agree).
    pub async fn stats_report(&self, q: &ReportQuery) -> Result<serde_json::Value, DbError> {
        let r = async {
            let (gap_ms, horizon) = self.rollup_settings().await?;
            if gap_ms == q.session_gap_ms as i64 {
                self.report_from_rollups(q, horizon).await
            } else {
                self.report_from_events(q).await
            }
        }
        .await;
        self.observe(&r);
        r
    }

    /// `horizon`: the retention horizon (microseconds; events before it may be deleted). An
    /// edge before it is rounded down to its quarter hour, where the rollups still count.
    async fn report_from_rollups(
        &self,
        q: &ReportQuery,
        horizon: i64,
    ) -> Result<serde_json::Value, DbError> {
        let retained = |t: i64| {
            if t < horizon {
                t.div_euclid(QUARTER_US) * QUARTER_US
            } else {
                t
            }
        };
        let (lo, hi) = (retained(q.from.as_micros()), retained(q.to.as_micros()));
        // Not persistent: planned with this window's values, which decide the plan.
        Ok(sqlx::query_scalar::<_, serde_json::Value>(REPORT)
            .persistent(false)
            .bind(lo)
            .bind(hi)
            .bind(
                lo.div_euclid(QUARTER_US) * QUARTER_US
                    + if lo.rem_euclid(QUARTER_US) == 0 {
                        0
                    } else {
                        QUARTER_US
                    },
            )
            .bind(hi.div_euclid(QUARTER_US) * QUARTER_US)
            .bind(&q.tz)
            .bind(q.limit as i64)
            .bind(horizon)
            .fetch_one(self.pool())
            .await?)
    }

    /// The report computed from raw events (the definition the rollups must agree with).
    pub async fn report_from_events(&self, q: &ReportQuery) -> Result<serde_json::Value, DbError> {
        Ok(sqlx::query_scalar::<_, serde_json::Value>(REPORT_RAW)
            .persistent(false)
            .bind(q.from.as_micros())
            .bind(q.to.as_micros())
            .bind(q.session_gap_ms as i64)
            .bind(&q.tz)
            .bind(q.limit as i64)
            .fetch_one(self.pool())
            .await?)
    }

    /// The session gap the rollups were computed with.
    pub async fn rollup_gap_ms(&self) -> Result<i64, DbError> {
        Ok(self.rollup_settings().await?.0)
    }

    /// The rollups' session gap, and the retention horizon (microseconds since the epoch;
    /// `i64::MIN` while nothing was deleted).
    async fn rollup_settings(&self) -> Result<(i64, i64), DbError> {
        Ok(sqlx::query_as(
            "SELECT session_gap_ms, CASE WHEN retained_from = '-infinity' THEN -9223372036854775808
                    ELSE (extract(epoch FROM retained_from) * 1000000)::int8 END
             FROM stats_settings",
        )
        .fetch_one(self.pool())
        .await?)
    }

    /// Delete at most `batch` events older than `before`, keeping the rollups (migration
    /// 0007); returns how many. One short transaction: inserts wait for one batch at most.
    pub async fn retain_events(&self, before: Timestamp, batch: i32) -> Result<i32, DbError> {
        let r = sqlx::query_scalar::<_, i32>("SELECT stats_retain(stats_us($1), $2)")
            .bind(before.as_micros())
            .bind(batch)
            .fetch_one(self.pool())
            .await
            .map_err(DbError::from);
        self.observe(&r);
        r
    }

    /// Recompute the rollups if they were built with another session gap than `gap_ms`.
    /// Returns whether they were (this takes a while over many events, and holds inserts
    /// back meanwhile).
    pub async fn ensure_rollup_gap(&self, gap_ms: u64) -> Result<bool, DbError> {
        if self.rollup_gap_ms().await? == gap_ms as i64 {
            return Ok(false);
        }
        sqlx::query("SELECT stats_rebuild_rollups($1)")
            .bind(gap_ms as i64)
            .execute(self.pool())
            .await?;
        self.vacuum_rollups().await?;
        Ok(true)
    }

    /// Rebuilt rollups have no visibility map yet: until a vacuum, the report's index-only
    /// scans read the heap too (measured: a week's report 80 → 230 ms). Not every PostgreSQL
    /// runs autovacuum soon, or at all.
    pub async fn vacuum_rollups(&self) -> Result<(), DbError> {
        sqlx::query("VACUUM (ANALYZE) stats_spans, stats_quarters, stats_visitor_online")
            .execute(self.pool())
            .await?;
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReportQuery {
    pub from: Timestamp,
    pub to: Timestamp,
    pub tz: String,
    pub session_gap_ms: u64,
    /// Most recent sessions listed in `users`.
    pub limit: usize,
}

/// The report from the rollups (migration 0003): the edges of the window from raw events.
const REPORT: &str = include_str!("report.sql");
/// The report from raw events: the definition, used when the rollups were built with another
/// session gap than this replica's.
const REPORT_RAW: &str = include_str!("report_raw.sql");

/// A quarter hour in microseconds: the rollups' bucket.
const QUARTER_US: i64 = 15 * 60 * 1_000_000;

#[cfg(test)]
mod tests {
    #[test]
    fn rollup_triggers_take_the_same_lock() {
        let migration = include_str!("../../migrations/0003_stats_rollups.sql");
        let taken = format!("pg_advisory_xact_lock({})", super::SEQ_LOCK);
        assert_eq!(migration.matches(&taken).count(), 2, "{taken}");
        let retention = include_str!("../../migrations/0007_stats_retention.sql");
        assert_eq!(retention.matches(&taken).count(), 2, "{taken}");
    }
}
