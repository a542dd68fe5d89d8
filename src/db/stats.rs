//! Statistics events in PostgreSQL: storing a batch in cluster-wide `seq` order, reading
//! ranges of it back (to fill gaps in what a replica received), and the `/api/stats` report.

use super::{Database, DbError};
use crate::domain::Timestamp;
use crate::domain::stats::{Channel, EventType, NewEvent, StatsUpdate};
use sqlx::Row;
use sqlx::postgres::PgConnection;

/// Advisory lock key serialising event inserts and their announcement, cluster-wide
/// ("pgstats" in ASCII).
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
        let r = sqlx::query_scalar::<_, serde_json::Value>(REPORT)
            .persistent(false)
            .bind(q.from.as_micros())
            .bind(q.to.as_micros())
            .bind(q.session_gap_ms as i64)
            .bind(&q.tz)
            .bind(q.limit as i64)
            .fetch_one(self.pool())
            .await
            .map_err(DbError::from);
        self.observe(&r);
        r
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

/// Sessions are runs of a visitor's messages with no gap over `$3` ms (window functions:
/// a run starts where `lag(at)` is missing or too far back); runs under two messages are
/// dropped, then numbered per visitor.
const REPORT: &str = r#"
WITH bounds AS (
    SELECT 'epoch'::timestamptz + $1::int8 * interval '1 microsecond' AS lo,
           'epoch'::timestamptz + $2::int8 * interval '1 microsecond' AS hi,
           $3::int8 * interval '1 millisecond' AS gap
),
ev AS (
    SELECT e.type, e.channel, e.visitor_id, e.country
    FROM stats_events e, bounds b WHERE e.at >= b.lo AND e.at < b.hi
),
msgs AS (
    SELECT e.seq, e.visitor_id, e.channel, e.at, e.human_mode, e.visitor_name, e.country, e.city
    FROM stats_events e, bounds b
    WHERE e.type = 'new_message' AND e.at >= b.lo AND e.at < b.hi
),
marked AS (
    SELECT m.*,
           CASE WHEN lag(m.at) OVER w IS NULL OR m.at - lag(m.at) OVER w > (SELECT gap FROM bounds)
                THEN 1 ELSE 0 END AS starts
    FROM msgs m
    WINDOW w AS (PARTITION BY m.visitor_id ORDER BY m.at, m.seq)
),
runs AS (
    SELECT *, sum(starts) OVER (PARTITION BY visitor_id ORDER BY at, seq) AS run FROM marked
),
sessions AS (
    SELECT visitor_id, run, count(*) AS n, min(at) AS first_at, max(at) AS last_at,
           array_agg(at ORDER BY at, seq) AS stamps,
           bool_or(COALESCE(human_mode, false)) AS human,
           (array_agg(visitor_name ORDER BY at DESC, seq DESC) FILTER (WHERE visitor_name IS NOT NULL))[1] AS name,
           (array_agg(country ORDER BY at DESC, seq DESC) FILTER (WHERE country IS NOT NULL))[1] AS country,
           (array_agg(city ORDER BY at DESC, seq DESC) FILTER (WHERE city IS NOT NULL))[1] AS city,
           (array_agg(channel ORDER BY at DESC, seq DESC))[1] AS channel
    FROM runs GROUP BY visitor_id, run HAVING count(*) >= 2
),
numbered AS (
    SELECT s.*, row_number() OVER (PARTITION BY visitor_id ORDER BY first_at) AS number,
           count(*) OVER (PARTITION BY visitor_id) AS of
    FROM sessions s
),
heat AS (
    SELECT extract(dow FROM at AT TIME ZONE $4)::int AS d,
           extract(hour FROM at AT TIME ZONE $4)::int AS h, count(*) AS n
    FROM msgs GROUP BY 1, 2
),
online AS (
    SELECT channel, count(*) AS n FROM (
        SELECT DISTINCT ON (visitor_id, channel) type, channel
        FROM stats_events
        WHERE type IN ('user_online', 'user_offline') AND at > now() - interval '1 day'
        ORDER BY visitor_id, channel, seq DESC
    ) latest WHERE type = 'user_online' GROUP BY channel
)
SELECT json_build_object(
    'lastEventSeq', (SELECT COALESCE(max(seq), 0) FROM stats_events),
    'totalUsers', (SELECT count(DISTINCT visitor_id) FROM msgs),
    'totalSessions', (SELECT count(*) FROM sessions),
    'totalMessages', (SELECT count(*) FROM msgs),
    'widgetOpens', (SELECT count(*) FROM ev WHERE type = 'widget_opened'),
    'webUniqueUsers', (SELECT count(DISTINCT visitor_id) FROM msgs WHERE channel = 'web'),
    'premiumUniqueUsers', (SELECT count(DISTINCT visitor_id) FROM msgs WHERE channel = 'premium'),
    'online', json_build_object(
        'web', COALESCE((SELECT n FROM online WHERE channel = 'web'), 0),
        'premium', COALESCE((SELECT n FROM online WHERE channel = 'premium'), 0)),
    'users', COALESCE((SELECT json_agg(u ORDER BY u."lastActivity" DESC, u."userId") FROM (
        SELECT CASE WHEN number = 1 THEN visitor_id ELSE visitor_id || '#' || number END AS "userId",
               visitor_id AS "originalUserId",
               number AS "sessionNumber",
               of AS "totalSessions",
               name AS "userName",
               to_char(first_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS "firstActivity",
               to_char(last_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS "lastActivity",
               n AS "messageCount",
               (SELECT array_agg(to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')) FROM unnest(stamps) t) AS "messageTimestamps",
               human AS "isHumanMode",
               country, city, channel
        FROM numbered ORDER BY last_at DESC, visitor_id LIMIT $5
    ) u), '[]'::json),
    'countries', COALESCE((SELECT json_agg(c ORDER BY c.users DESC, c.country) FROM (
        SELECT country, count(DISTINCT visitor_id) AS users FROM ev
        WHERE country IS NOT NULL GROUP BY country
    ) c), '[]'::json),
    'heatmap', (SELECT json_agg(x.hours ORDER BY x.d) FROM (
        SELECT d.d, json_agg(COALESCE(heat.n, 0) ORDER BY hr.h) AS hours
        FROM generate_series(0, 6) d(d) CROSS JOIN generate_series(0, 23) hr(h)
        LEFT JOIN heat ON heat.d = d.d AND heat.h = hr.h
        GROUP BY d.d
    ) x),
    'from', to_char((SELECT lo FROM bounds) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
    'to', to_char((SELECT hi FROM bounds) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
    'tz', $4::text
)"#;
