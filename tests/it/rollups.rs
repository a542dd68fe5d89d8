//! The statistics report from rollups (migration 0003) against the report from raw events,
//! on random event histories: inserts out of order and in batches, deletes and updates, ties,
//! visitors switching channel or country, windows cutting through sessions, time zones with
//! half-hour offsets, and a change of session gap.

use super::db::fresh_database;
use presence_gateway::db::stats::ReportQuery;
use presence_gateway::db::{Database, DbSettings};
use presence_gateway::domain::Timestamp;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::time::Duration;

const MIN_US: i64 = 60_000_000;
/// Yesterday's UTC midnight: the histories straddle "now", so some visitors count as online
/// (the online figure looks back one day), and no date in the calendar can turn this red.
/// Taken once, so a run that crosses midnight keeps one origin.
fn t0() -> i64 {
    static T0: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *T0.get_or_init(|| {
        const DAY_US: i64 = 24 * 60 * MIN_US;
        let now = Timestamp::now().as_micros();
        now - now.rem_euclid(DAY_US) - DAY_US
    })
}

struct Event {
    kind: &'static str,
    channel: &'static str,
    visitor: String,
    at: i64,
    country: Option<&'static str>,
    name: Option<String>,
}

/// Visitors writing in bursts: gaps under, exactly at, and over 30 minutes; repeated
/// timestamps; several visitors sharing timestamps; channel and country changes.
fn history(rng: &mut StdRng) -> Vec<Event> {
    let t0 = t0();
    let mut out = Vec::new();
    for v in 0..60 {
        let visitor = format!("V-{v}");
        let mut at = t0 + rng.random_range(0..48 * 60) * MIN_US;
        let channel = if v % 3 == 0 { "premium" } else { "web" };
        out.push(Event {
            kind: "widget_opened",
            channel,
            visitor: visitor.clone(),
            at,
            country: [Some("TR"), Some("DE"), None][v % 3],
            name: None,
        });
        for _ in 0..rng.random_range(0..25) {
            at += match rng.random_range(0..10) {
                0 => 0,
                1 => 30 * MIN_US,
                2..=6 => rng.random_range(1..20) * MIN_US,
                _ => rng.random_range(31..600) * MIN_US,
            };
            let r = rng.random_range(0..20);
            out.push(Event {
                kind: match r {
                    0 => "user_online",
                    1 => "user_offline",
                    2 => "widget_opened",
                    _ => "new_message",
                },
                channel: if r == 3 { "premium" } else { channel },
                visitor: visitor.clone(),
                at,
                country: match r {
                    4 => None,
                    5 => Some("US"),
                    _ => [Some("TR"), Some("DE"), None][v % 3],
                },
                name: (r % 2 == 0).then(|| format!("Name {r}")),
            });
        }
    }
    out
}

async fn insert(db: &Database, events: &[Event]) {
    let mut q = String::from(
        "INSERT INTO stats_events (type, channel, visitor_id, at, country, visitor_name, human_mode) VALUES ",
    );
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            q.push(',');
        }
        let opt = |s: Option<&str>| s.map_or("NULL".to_string(), |s| format!("'{s}'"));
        q.push_str(&format!(
            "('{}', '{}', '{}', 'epoch'::timestamptz + {} * interval '1 microsecond', {}, {}, {})",
            e.kind,
            e.channel,
            e.visitor,
            e.at,
            opt(e.country),
            opt(e.name.as_deref()),
            e.at % 7 == 0,
        ));
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(q))
        .execute(db.pool())
        .await
        .unwrap();
}

/// A fresh database, migrated.
async fn migrated(max_connections: u32) -> Database {
    let url = fresh_database().await;
    let db = Database::new(DbSettings {
        url: &url,
        max_connections,
        online_debounce: Duration::ZERO,
        offline_debounce: Duration::ZERO,
        node: "it",
    })
    .unwrap();
    db.migrate().await.unwrap();
    db
}

fn query(from: i64, to: i64, tz: &str, limit: usize, gap_ms: u64) -> ReportQuery {
    ReportQuery {
        from: Timestamp(from),
        to: Timestamp(to),
        tz: tz.into(),
        session_gap_ms: gap_ms,
        limit,
    }
}

/// Visitors online per channel by definition, from the events: latest online/offline event
/// (by seq) is `user_online` and within the last day.
const ONLINE_BY_DEFINITION: &str = "
    SELECT channel, count(*) FROM (
        SELECT DISTINCT ON (visitor_id, channel) type, channel, at FROM stats_events
        WHERE type IN ('user_online', 'user_offline') ORDER BY visitor_id, channel, seq DESC
    ) latest WHERE type = 'user_online' AND at > now() - interval '1 day'
    GROUP BY channel ORDER BY channel";

async fn same_online(db: &Database) -> i64 {
    let want: Vec<(String, i64)> = sqlx::query_as(ONLINE_BY_DEFINITION)
        .fetch_all(db.pool())
        .await
        .unwrap();
    let got: Vec<(String, i64)> =
        sqlx::query_as("SELECT channel, n FROM stats_online_now ORDER BY channel")
            .fetch_all(db.pool())
            .await
            .unwrap();
    assert_eq!(got, want, "online visitors per channel");
    want.iter().map(|(_, n)| n).sum()
}

/// Every window compared; returns how many sessions they held (so a test can tell it
/// compared something).
async fn same_reports(db: &Database, rng: &mut StdRng, gap_ms: u64) -> i64 {
    let (lo, hi) = (t0() - 60 * MIN_US, t0() + 10 * 24 * 60 * MIN_US);
    let mut windows = vec![(lo, hi, "UTC", 100), (lo, hi, "Asia/Kolkata", 5)];
    for i in 0..40 {
        let a = rng.random_range(lo..hi);
        let len = match i % 4 {
            0 => rng.random_range(1..30) * MIN_US,
            1 => rng.random_range(1..48 * 60) * MIN_US,
            // on quarter-hour boundaries
            2 => rng.random_range(1..400) * 15 * MIN_US,
            _ => rng.random_range(1_000_000..5 * 24 * 60 * MIN_US),
        };
        let a = if i % 4 == 2 {
            a - a.rem_euclid(15 * MIN_US)
        } else {
            a
        };
        let tz = [
            "UTC",
            "America/St_Johns",
            "Europe/Istanbul",
            "Asia/Kathmandu",
        ][i % 4];
        windows.push((a, a + len, tz, [100, 3, 1, 1000][i % 4]));
    }
    let mut sessions = 0;
    for (a, b, tz, limit) in windows {
        let q = query(a, b, tz, limit, gap_ms);
        let fast = db.stats_report(&q).await.unwrap();
        let raw = db.report_from_events(&q).await.unwrap();
        assert_eq!(
            fast, raw,
            "window {a}..{b} in {tz}, limit {limit}: rollups disagree with raw events"
        );
        sessions += raw["totalSessions"].as_i64().unwrap();
    }
    sessions
}

#[tokio::test]
async fn the_report_from_rollups_equals_the_report_from_raw_events() {
    let db = migrated(4).await;
    let mut rng = StdRng::seed_from_u64(20261122);

    // Inserted in random order and random batches: many events arrive before earlier ones.
    let mut events = history(&mut rng);
    let total = events.len();
    events.shuffle(&mut rng);
    let mut rest = &events[..];
    while !rest.is_empty() {
        let n = rng.random_range(1..=40).min(rest.len());
        insert(&db, &rest[..n]).await;
        rest = &rest[n..];
    }
    assert!(same_reports(&db, &mut rng, 1_800_000).await > 50);

    // Visits of the last day: some still open, some closed, some closed by a back-dated
    // `user_offline` published late, some opened more than a day ago and never closed.
    for (i, (kind, minutes_ago)) in [
        ("user_online", 30),
        ("user_online", 90),
        ("user_offline", 10),
        ("user_online", 3000),
        ("user_online", 200),
        ("user_offline", 5000),
        ("user_online", 20),
    ]
    .into_iter()
    .cycle()
    .take(70)
    .enumerate()
    {
        sqlx::query(
            "INSERT INTO stats_events (type, channel, visitor_id, at)
             VALUES ($1, $2, $3, now() - $4 * interval '1 minute')",
        )
        .bind(kind)
        .bind(if i % 3 == 0 { "premium" } else { "web" })
        .bind(format!("V-{}", i % 23))
        .bind(minutes_ago as f64)
        .execute(db.pool())
        .await
        .unwrap();
    }
    assert!(same_online(&db).await > 0, "some visitors online");

    // Retried publications: the committer's statement skips rows whose idempotency key is
    // stored already, and the rollups must count each once.
    for _ in 0..2 {
        sqlx::query(
            "INSERT INTO stats_events (type, channel, visitor_id, at, country, idempotency_key)
             SELECT 'new_message', 'web', 'V-' || (g % 7), to_timestamp($1::bigint / 1e6) + g * interval '3 minutes', 'TR', 'retry-' || g
             FROM generate_series(1, 30) g
             ON CONFLICT (idempotency_key) DO NOTHING",
        )
        .bind(t0() + 34 * 60 * MIN_US)
        .execute(db.pool())
        .await
        .unwrap();
    }
    same_reports(&db, &mut rng, 1_800_000).await;

    // Deletes (retention, or an operator's repair) and updates (a moved event).
    sqlx::query("DELETE FROM stats_events WHERE seq % 11 = 3")
        .execute(db.pool())
        .await
        .unwrap();
    sqlx::query(
        "UPDATE stats_events SET at = at + interval '47 minutes', country = 'NL' WHERE seq % 13 = 5",
    )
    .execute(db.pool())
    .await
    .unwrap();
    same_reports(&db, &mut rng, 1_800_000).await;
    same_online(&db).await;

    // A replica with another gap reports from raw events until the rollups are rebuilt for it.
    assert!(db.ensure_rollup_gap(600_000).await.unwrap());
    assert!(!db.ensure_rollup_gap(600_000).await.unwrap());
    same_reports(&db, &mut rng, 600_000).await;
    same_online(&db).await;
    let q = query(t0(), t0() + 24 * 60 * MIN_US, "UTC", 10, 1_800_000);
    assert_eq!(
        db.stats_report(&q).await.unwrap(),
        db.report_from_events(&q).await.unwrap(),
        "a gap other than the rollups' falls back to raw events"
    );
    assert!(total > 300, "history too small: {total} events");

    // Emptied by hand: the rollups empty with it.
    sqlx::query("TRUNCATE stats_events")
        .execute(db.pool())
        .await
        .unwrap();
    let after: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM stats_spans) + (SELECT count(*) FROM stats_quarters)
              + (SELECT count(*) FROM stats_visitor_online)",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(after, 0);
}

/// Quarter-hour boundaries in `[lo, hi]` that no span of any key crosses: windows between
/// them cut no session, so retention must leave their reports exactly as they were.
async fn uncut_quarters(db: &Database, lo: i64, hi: i64) -> Vec<i64> {
    sqlx::query_scalar(
        "SELECT (extract(epoch FROM b) * 1000000)::int8
         FROM generate_series(stats_us($1), stats_us($2), interval '15 minutes') b
         WHERE NOT EXISTS (SELECT 1 FROM stats_spans s WHERE s.first_at < b AND s.last_at >= b)
         ORDER BY b",
    )
    .bind(lo)
    .bind(hi)
    .fetch_all(db.pool())
    .await
    .unwrap()
}

/// What retention keeps of a report: every figure, and each listed session without the
/// details only its events held.
fn kept(mut report: serde_json::Value) -> serde_json::Value {
    for u in report["users"].as_array_mut().unwrap() {
        for k in [
            "messageTimestamps",
            "userName",
            "country",
            "city",
            "channel",
            "isHumanMode",
        ] {
            u.as_object_mut().unwrap().remove(k);
        }
    }
    report.as_object_mut().unwrap().remove("online");
    report
}

async fn rollup_rows(db: &Database) -> (Vec<(String, String, String, i64)>, i64) {
    let quarters = sqlx::query_as(
        "SELECT quarter::text, type, channel, n FROM stats_quarters WHERE n <> 0 ORDER BY 1, 2, 3",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    let spans = sqlx::query_scalar(
        "SELECT count(*) FROM stats_spans s WHERE EXISTS (SELECT 1 FROM stats_spans_before b
            WHERE (b.kind, b.value, b.visitor_id, b.first_at, b.last_at, b.n, b.prev_last_at)
              IS NOT DISTINCT FROM (s.kind, s.value, s.visitor_id, s.first_at, s.last_at, s.n, s.prev_last_at))",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
    (quarters, spans)
}

#[tokio::test]
async fn retention_deletes_in_batches_and_old_reports_keep_their_figures() {
    let db = migrated(4).await;
    let mut rng = StdRng::seed_from_u64(20261207);
    let mut events = history(&mut rng);
    events.shuffle(&mut rng);
    for chunk in events.chunks(37) {
        insert(&db, chunk).await;
    }
    const DAY: i64 = 24 * 60 * MIN_US;
    let horizon = t0() + 3 * DAY;

    // Windows before the horizon between boundaries that cut no session, and windows after it.
    let edges = uncut_quarters(&db, t0(), horizon).await;
    assert!(edges.len() > 20, "{} uncut boundaries", edges.len());
    let mut windows = vec![(edges[0], *edges.last().unwrap())];
    for _ in 0..20 {
        let a = rng.random_range(0..edges.len() - 1);
        let b = rng.random_range(a + 1..edges.len());
        windows.push((edges[a], edges[b]));
    }
    let late: Vec<(i64, i64)> = (0..10)
        .map(|_| {
            let a = rng.random_range(horizon..horizon + 5 * DAY);
            (a, a + rng.random_range(MIN_US..3 * DAY))
        })
        .collect();
    let mut before = Vec::new();
    for &(a, b) in windows.iter().chain(&late) {
        before.push(
            db.stats_report(&query(a, b, "UTC", 50, 1_800_000))
                .await
                .unwrap(),
        );
    }
    sqlx::raw_sql("CREATE TABLE stats_spans_before AS SELECT * FROM stats_spans")
        .execute(db.pool())
        .await
        .unwrap();
    let spans: i64 = sqlx::query_scalar("SELECT count(*) FROM stats_spans")
        .fetch_one(db.pool())
        .await
        .unwrap();
    let (quarters, _) = rollup_rows(&db).await;
    let old: i64 = sqlx::query_scalar("SELECT count(*) FROM stats_events WHERE at < stats_us($1)")
        .bind(horizon)
        .fetch_one(db.pool())
        .await
        .unwrap();
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM stats_events")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert!(old > 200, "{old} old events");
    // The newest event stays whatever its age (it holds the cluster's last seq).
    let newest_old: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM stats_events WHERE at < stats_us($1)
           AND seq = (SELECT max(seq) FROM stats_events)",
    )
    .bind(horizon)
    .fetch_one(db.pool())
    .await
    .unwrap();
    let old = old - newest_old;

    // In batches of 50: each call deletes at most that, and they add up to every old event.
    let (mut deleted, mut calls) = (0i64, 0);
    loop {
        let n = db.retain_events(Timestamp(horizon), 50).await.unwrap();
        assert!(n <= 50);
        deleted += n as i64;
        calls += 1;
        if n < 50 {
            break;
        }
    }
    assert_eq!(
        deleted, old,
        "every event older than the horizon, in {calls} calls"
    );
    assert_eq!(calls, old / 50 + 1);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM stats_events")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(left, total - old);

    // The rollups are untouched, and so is every report's figure.
    assert_eq!(rollup_rows(&db).await, (quarters.clone(), spans));
    let check = |label: &'static str, before: Vec<serde_json::Value>| {
        let db = &db;
        let windows = windows.clone();
        let late = late.clone();
        async move {
            for (i, &(a, b)) in windows.iter().chain(&late).enumerate() {
                let after = db
                    .stats_report(&query(a, b, "UTC", 50, 1_800_000))
                    .await
                    .unwrap();
                if i < windows.len() {
                    assert_eq!(
                        kept(after),
                        kept(before[i].clone()),
                        "{label}: window {a}..{b}"
                    );
                } else {
                    assert_eq!(
                        after["totalMessages"], before[i]["totalMessages"],
                        "{label}: {a}..{b}"
                    );
                    assert_eq!(
                        after["totalSessions"], before[i]["totalSessions"],
                        "{label}: {a}..{b}"
                    );
                    assert_eq!(after["users"], before[i]["users"], "{label}: {a}..{b}");
                }
            }
        }
    };
    check("after retention", before.clone()).await;

    // New events of visitors whose old spans are kept, and a late one older than the horizon:
    // old spans are never recomputed from the events that are left.
    let mut fresh = history(&mut rng);
    for e in &mut fresh {
        e.at += 6 * DAY;
    }
    insert(&db, &fresh).await;
    insert(
        &db,
        &[Event {
            kind: "new_message",
            channel: "web",
            visitor: "V-1".into(),
            at: horizon - 7 * MIN_US,
            country: None,
            name: None,
        }],
    )
    .await;
    let (_, still) = rollup_rows(&db).await;
    let old_spans: i64 =
        sqlx::query_scalar("SELECT count(*) FROM stats_spans_before WHERE first_at < stats_us($1)")
            .bind(horizon)
            .fetch_one(db.pool())
            .await
            .unwrap();
    assert!(
        still >= old_spans,
        "spans before the horizon kept: {still} of {old_spans}"
    );

    // A new session gap rebuilds only what starts after the horizon; before it, figures stay.
    let sessions_before: i64 = before[0]["totalSessions"].as_i64().unwrap();
    assert!(db.ensure_rollup_gap(600_000).await.unwrap());
    let (lo, hi) = windows[0];
    let r = db
        .stats_report(&query(lo, hi, "UTC", 50, 600_000))
        .await
        .unwrap();
    assert_eq!(
        r["totalSessions"].as_i64().unwrap(),
        sessions_before,
        "old sessions kept through a rebuild"
    );
    // Plus the late message, counted in its quarter.
    let late_in = (lo..hi).contains(&(horizon - 7 * MIN_US)) as i64;
    assert_eq!(
        r["totalMessages"].as_i64().unwrap(),
        before[0]["totalMessages"].as_i64().unwrap() + late_in
    );
}

#[tokio::test]
async fn a_session_across_an_old_edge_counts_once_in_the_window_where_it_ends() {
    let db = migrated(2).await;
    // One visitor, a message every 10 minutes from 23:00 to 01:00 across midnight.
    let midnight = t0();
    let events: Vec<Event> = (0..13)
        .map(|i| Event {
            kind: "new_message",
            channel: "web",
            visitor: "edge".into(),
            at: midnight - 60 * MIN_US + i * 10 * MIN_US,
            country: Some("TR"),
            name: None,
        })
        .collect();
    insert(&db, &events).await;
    insert(
        &db,
        &[Event {
            kind: "widget_opened",
            channel: "web",
            visitor: "newest".into(),
            at: midnight + 30 * 24 * 60 * MIN_US,
            country: None,
            name: None,
        }],
    )
    .await;
    let report = |a: i64, b: i64| {
        let db = &db;
        async move {
            db.stats_report(&query(a, b, "UTC", 10, 1_800_000))
                .await
                .unwrap()
        }
    };
    let (day_before, day_after) = (midnight - 24 * 60 * MIN_US, midnight + 24 * 60 * MIN_US);
    // While the events are there, the session is cut at midnight: 6 and 7 messages.
    assert_eq!(report(day_before, midnight).await["totalSessions"], 1);
    assert_eq!(report(midnight, day_after).await["totalSessions"], 1);
    while db.retain_events(Timestamp(day_after), 1000).await.unwrap() == 1000 {}
    let (first, second) = (
        report(day_before, midnight).await,
        report(midnight, day_after).await,
    );
    // Now it counts whole where it ends, once; messages still per quarter hour.
    assert_eq!(first["totalSessions"], 0);
    assert_eq!(second["totalSessions"], 1);
    assert_eq!(second["users"][0]["messageCount"], 13);
    assert_eq!(first["totalMessages"], 6);
    assert_eq!(second["totalMessages"], 7);
    assert_eq!(first["totalUsers"], 1);
    assert_eq!(second["totalUsers"], 1);
    let whole = report(day_before, day_after).await;
    assert_eq!(whole["totalSessions"], 1);
    assert_eq!(whole["totalMessages"], 13);
    // An edge inside a quarter hour is rounded down to it: the report says so.
    let r = report(day_before + 7 * MIN_US, midnight).await;
    assert_eq!(r["from"], first["from"]);
}
