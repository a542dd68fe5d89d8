//! PostgreSQL, against a real server: a fresh database per test (the test command starts
//! PostgreSQL when none answers; `TEST_DATABASE_URL` points elsewhere).

use presence_gateway::db::writer::Profile;
use presence_gateway::db::{Database, DbSettings};
use presence_gateway::domain::{
    Gender, GenderSet, Presence, PresenceRecord, Status, Timestamp, UserId,
};
use std::sync::Arc;
use std::time::Duration;

fn server_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A new, empty database; returns its URL.
pub async fn fresh_database() -> String {
    use sqlx::Connection;
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let name = format!(
        "pgw_it_{}_{}_{}",
        std::process::id(),
        Timestamp::now().as_micros() % 1_000_000_000,
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let admin = format!("{}/postgres", server_url());
    let mut c = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {admin}: {e} (scripts/test.sh starts one)"));
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut c)
        .await
        .unwrap();
    format!("{}/{name}", server_url())
}

fn open(url: &str, node: &str, online_ms: u64) -> Database {
    Database::new(DbSettings {
        url,
        max_connections: 4,
        online_debounce: Duration::from_millis(online_ms),
        offline_debounce: Duration::ZERO,
        node,
    })
    .unwrap()
}

async fn migrated(online_ms: u64) -> (String, Database) {
    let url = fresh_database().await;
    let db = open(&url, "it", online_ms);
    db.migrate().await.unwrap();
    (url, db)
}

fn uid(s: &str) -> UserId {
    UserId::parse(s).unwrap()
}

fn presence(user: &str, gender: Gender, status: Status, version: i64) -> Presence {
    let mut r = PresenceRecord::new(gender);
    r.status = status;
    r.version = version;
    r.updated_at = Some(Timestamp(version));
    r.last_seen = (status == Status::Offline).then_some(Timestamp(version));
    r.to_presence(uid(user))
}

async fn stored(db: &Database, user: &str) -> Option<(String, bool, i64)> {
    sqlx::query_as("SELECT status, online, version FROM user_presence WHERE user_id = $1")
        .bind(user)
        .fetch_optional(db.pool())
        .await
        .unwrap()
}

async fn flush(db: &Database) {
    assert!(
        db.writer.flush_all(db, Duration::from_secs(10)).await,
        "flush failed"
    );
}

#[tokio::test]
async fn migrations_are_idempotent_and_safe_from_several_replicas_at_once() {
    let url = fresh_database().await;
    let dbs: Vec<Arc<Database>> = (0..4)
        .map(|i| Arc::new(open(&url, &format!("r{i}"), 0)))
        .collect();
    let runs = dbs
        .iter()
        .cloned()
        .map(|db| tokio::spawn(async move { db.migrate().await }));
    for r in runs {
        r.await.unwrap().unwrap();
    }
    dbs[0].migrate().await.unwrap();
    assert!(dbs[0].is_up());
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(dbs[0].pool())
        .await
        .unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn a_row_is_never_replaced_by_an_older_version() {
    let (url, a) = migrated(0).await;
    let b = open(&url, "other-replica", 0);
    a.writer
        .record(&presence("u1", Gender::Female, Status::Online, 100));
    flush(&a).await;
    b.writer
        .record(&presence("u1", Gender::Female, Status::Offline, 200));
    flush(&b).await;
    // A replica whose write of an older change arrives late changes nothing.
    a.writer
        .record(&presence("u1", Gender::Female, Status::Live, 150));
    flush(&a).await;
    assert_eq!(stored(&a, "u1").await, Some(("offline".into(), false, 200)));
}

#[tokio::test]
async fn pending_writes_coalesce_per_user_and_land_in_one_batch() {
    let (_, db) = migrated(60_000).await;
    for i in 0..50 {
        db.writer.record(&presence(
            "flapper",
            Gender::Male,
            Status::Online,
            1000 + 2 * i,
        ));
        db.writer.record(&presence(
            "flapper",
            Gender::Male,
            Status::Offline,
            1001 + 2 * i,
        ));
    }
    for i in 0..300 {
        db.writer.record(&presence(
            &format!("u{i}"),
            Gender::Other,
            Status::Online,
            5,
        ));
    }
    assert_eq!(db.writer.pending(), 301, "one entry per user");
    flush(&db).await;
    assert_eq!(db.writer.pending(), 0);
    assert_eq!(
        stored(&db, "flapper").await,
        Some(("offline".into(), false, 1099))
    );
    assert_eq!(stored(&db, "u299").await, Some(("online".into(), true, 5)));
}

#[tokio::test]
async fn an_offline_change_is_not_held_back_by_the_online_debounce() {
    let (_, db) = migrated(3_600_000).await;
    let db = Arc::new(db);
    let stop = tokio_util::sync::CancellationToken::new();
    let runner = {
        let (db, stop) = (db.clone(), stop.clone());
        tokio::spawn(async move { db.writer.run(&db, stop).await })
    };
    db.writer
        .record(&presence("u1", Gender::Female, Status::Online, 10));
    db.writer
        .record(&presence("u1", Gender::Female, Status::Offline, 20));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while stored(&db, "u1").await.is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "offline never written"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stored(&db, "u1").await, Some(("offline".into(), false, 20)));
    stop.cancel();
    runner.await.unwrap();
}

#[tokio::test]
async fn a_failed_write_keeps_its_entries_and_counts_the_error() {
    // Nothing listens on port 1: every write fails.
    let db = open("postgres://postgres@127.0.0.1:1/none", "down", 0);
    db.writer
        .record(&presence("u1", Gender::Female, Status::Online, 10));
    assert!(!db.writer.flush_all(&db, Duration::from_secs(5)).await);
    db.writer
        .record(&presence("u1", Gender::Female, Status::Offline, 20));
    assert_eq!(
        db.writer.pending(),
        1,
        "kept, and merged with the newer change"
    );
    assert!(!db.is_up());
    assert!(!db.ping().await);
}

#[tokio::test]
async fn profiles_are_upserted_and_a_token_without_gender_keeps_the_stored_one() {
    let (_, db) = migrated(0).await;
    let u = uid("ann");
    db.writer.record_profile(
        &u,
        Profile {
            name: Some("Ann".into()),
            gender: Some(Gender::Female),
        },
    );
    flush(&db).await;
    db.writer.record_profile(
        &u,
        Profile {
            name: Some("Ann B".into()),
            gender: None,
        },
    );
    flush(&db).await;
    let (name, gender): (String, String) =
        sqlx::query_as("SELECT name, gender FROM users WHERE id = 'ann'")
            .fetch_one(db.pool())
            .await
            .unwrap();
    assert_eq!((name.as_str(), gender.as_str()), ("Ann B", "female"));
    assert_eq!(db.gender_of(&u).await.unwrap(), Some(Gender::Female));
    assert_eq!(db.gender_of(&uid("nobody")).await.unwrap(), None);
}

#[tokio::test]
async fn gender_lookups_are_cached_so_a_reconnect_storm_is_not_a_query_storm() {
    let (_, db) = migrated(0).await;
    let u = uid("cat");
    db.writer.record_profile(
        &u,
        Profile {
            name: None,
            gender: Some(Gender::Female),
        },
    );
    flush(&db).await;
    let db = Arc::new(db);
    let lookups: Vec<_> = (0..200)
        .map(|_| {
            let (db, u) = (db.clone(), u.clone());
            tokio::spawn(async move { db.gender_of(&u).await.unwrap() })
        })
        .collect();
    for l in lookups {
        assert_eq!(l.await.unwrap(), Some(Gender::Female));
    }
    // Changed behind the cache's back: the cached answer stands (a query per handshake
    // would have seen the change).
    sqlx::query("UPDATE users SET gender = 'male' WHERE id = 'cat'")
        .execute(db.pool())
        .await
        .unwrap();
    assert_eq!(db.gender_of(&u).await.unwrap(), Some(Gender::Female));
}

#[tokio::test]
async fn last_known_presence_comes_from_the_database() {
    let (_, db) = migrated(0).await;
    db.writer.record_profile(
        &uid("gone"),
        Profile {
            name: Some("Gone".into()),
            gender: Some(Gender::Female),
        },
    );
    db.writer.record(&presence(
        "gone",
        Gender::Female,
        Status::Offline,
        1_700_000_000_000_000,
    ));
    // The database believed this one online: its offline write never landed.
    db.writer.record(&presence(
        "stuck",
        Gender::Male,
        Status::Online,
        1_700_000_000_000_123,
    ));
    flush(&db).await;
    let got = db
        .last_known(&[uid("gone"), uid("stuck"), uid("never")])
        .await
        .unwrap();
    let gone = &got[&uid("gone")];
    assert_eq!(gone.status, Status::Offline);
    assert_eq!(gone.gender, Gender::Female);
    assert_eq!(gone.last_seen, Some(Timestamp(1_700_000_000_000_000)));
    assert_eq!(gone.version, 1_700_000_000_000_000);
    let stuck = &got[&uid("stuck")];
    assert!(!stuck.online);
    assert_eq!(stuck.last_seen, Some(Timestamp(1_700_000_000_000_123)));
    assert!(!got.contains_key(&uid("never")));
}

#[tokio::test]
async fn search_is_literal_case_insensitive_and_applies_visibility_in_the_query() {
    let (_, db) = migrated(0).await;
    let people = [
        ("f1", "Zoë 100% Real", Gender::Female),
        ("f2", "under_score", Gender::Female),
        ("f3", r"back\slash", Gender::Female),
        ("f4", "Dot.Star (x)* [y] 'q'", Gender::Female),
        ("m1", "Real Man 100", Gender::Male),
        ("o1", "REAL other", Gender::Other),
        ("f5", "underXscore", Gender::Female),
    ];
    for (id, name, g) in people {
        db.writer.record_profile(
            &uid(id),
            Profile {
                name: Some(name.into()),
                gender: Some(g),
            },
        );
    }
    flush(&db).await;
    let ids = |hits: Vec<presence_gateway::db::users::SearchHit>| -> Vec<String> {
        hits.into_iter()
            .map(|h| h.presence.user_id.to_string())
            .collect()
    };
    let all = GenderSet::ALL;
    let women = GenderSet::only(Gender::Female);
    let me = uid("viewer");
    assert_eq!(
        ids(db.search("real", all, &me, 10).await.unwrap()),
        ["m1", "o1", "f1"]
    );
    assert_eq!(ids(db.search("100%", all, &me, 10).await.unwrap()), ["f1"]);
    assert_eq!(ids(db.search("r_s", all, &me, 10).await.unwrap()), ["f2"]);
    assert_eq!(ids(db.search(r"k\s", all, &me, 10).await.unwrap()), ["f3"]);
    // One or two characters: names that start with them first, then names containing them.
    assert_eq!(
        ids(db.search("UN", all, &me, 10).await.unwrap()),
        ["f2", "f5"]
    );
    assert_eq!(
        ids(db.search("re", all, &me, 10).await.unwrap()),
        ["m1", "o1", "f2", "f5", "f1"]
    );
    assert_eq!(
        ids(db.search("x", all, &me, 10).await.unwrap()),
        ["f4", "f5"]
    );
    assert_eq!(ids(db.search("%", all, &me, 10).await.unwrap()), ["f1"]);
    assert_eq!(ids(db.search("\\", all, &me, 10).await.unwrap()), ["f3"]);
    assert_eq!(ids(db.search("ë", women, &me, 10).await.unwrap()), ["f1"]);
    assert_eq!(
        ids(db.search(".*", all, &me, 10).await.unwrap()),
        Vec::<String>::new()
    );
    assert_eq!(
        ids(db.search(")* [y] 'q", all, &me, 10).await.unwrap()),
        ["f4"]
    );
    assert_eq!(ids(db.search("ZOË", all, &me, 10).await.unwrap()), ["f1"]);
    // Punctuation alone, three characters or more: the trigram index has nothing to look up,
    // the substring index finds the candidates (never every name read).
    db.writer.record_profile(
        &uid("f6"),
        Profile {
            name: Some("--- dashes".into()),
            gender: Some(Gender::Female),
        },
    );
    db.writer.record_profile(
        &uid("f7"),
        Profile {
            name: Some("a --- b".into()),
            gender: Some(Gender::Female),
        },
    );
    flush(&db).await;
    assert_eq!(
        ids(db.search("---", all, &me, 10).await.unwrap()),
        ["f6", "f7"]
    );
    assert_eq!(
        ids(db.search("- b", all, &me, 10).await.unwrap()),
        ["f7"],
        "with a letter, contains"
    );
    // A man sees women only, and himself.
    assert_eq!(
        ids(db.search("real", women, &uid("m1"), 10).await.unwrap()),
        ["m1", "f1"]
    );
    assert_eq!(
        ids(db.search("real", women, &me, 10).await.unwrap()),
        ["f1"]
    );
    assert_eq!(db.search("real", all, &me, 2).await.unwrap().len(), 2);
}

/// An entry the database refuses on its data (a NUL in a name: refused where text enters,
/// so this is the writer's own defence) no longer fails the whole batch for ever: the batch
/// is written in halves, the others land at once, and the bad entry is dropped after a few
/// tries, counted. (Before: the batch went back whole and failed on every flush, so no
/// presence of that replica was stored again.)
#[tokio::test]
async fn a_row_the_database_refuses_is_split_out_and_dropped_while_the_others_land() {
    let (_, db) = migrated(0).await;
    for i in 0..50 {
        db.writer.record(&presence(
            &format!("ok-{i}"),
            Gender::Female,
            Status::Online,
            10,
        ));
    }
    db.writer.record_profile(
        &uid("poisoned"),
        Profile {
            name: Some("bad\u{0}name".into()),
            gender: Some(Gender::Female),
        },
    );
    db.writer
        .record(&presence("poisoned", Gender::Female, Status::Online, 10));
    // The good rows land in the first flush, whatever happens to the bad one.
    let _ = db.writer.flush_all(&db, Duration::from_secs(10)).await;
    for i in 0..50 {
        assert_eq!(
            stored(&db, &format!("ok-{i}")).await.map(|r| r.2),
            Some(10),
            "ok-{i}"
        );
    }
    assert_eq!(
        db.writer.pending(),
        1,
        "the refused entry waits for another try"
    );
    // It is tried a bounded number of times, then dropped, and later writes flow.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while db.writer.pending() > 0 {
        assert!(std::time::Instant::now() < deadline, "never dropped");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = db.writer.flush_all(&db, Duration::from_secs(10)).await;
    }
    assert_eq!(stored(&db, "poisoned").await, None);
    db.writer
        .record(&presence("after", Gender::Male, Status::Online, 11));
    flush(&db).await;
    assert_eq!(stored(&db, "after").await.map(|r| r.2), Some(11));
}

#[tokio::test]
async fn blocks_are_kept_both_ways_in_the_database() {
    let (_, db) = migrated(0).await;
    super::engine::block_store_rules(&db).await;
}
