//! The sweep's expiry against interleavings no end-to-end test can time: a change or a
//! heartbeat landing between the sweeper's claim of a stale connection and its expiry. Real
//! Redis (`TEST_REDIS_URL`, else the test command's on 6379).

use super::*;
use crate::engine::Connection;

const S: i64 = 1_000_000;

async fn engine() -> RedisEngine {
    let url = std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!(
        "exp{}x{}",
        std::process::id(),
        Timestamp::now().as_micros() % 1_000_000_000
    );
    RedisEngine::connect(&url, &prefix, "n1")
        .await
        .expect("Redis for tests")
}

fn conn(user: &str) -> Connection {
    Connection {
        id: format!("n1:{user}").into(),
        user: UserId::parse(user).unwrap(),
        gender: crate::domain::Gender::Female,
    }
}

/// A connection of `user`, connected at `t0` and claimed by a sweep whose cutoff is a second
/// later: the engine, the connection, its index member, `t0` and the claimed score.
async fn claimed(user: &str) -> (RedisEngine, Connection, String, Timestamp, String) {
    let e = engine().await;
    let c = conn(user);
    let t0 = Timestamp::now();
    e.connect(&c, t0).await.unwrap();
    let m = member(&c.user, &c.id);
    let cutoff = Timestamp(t0.as_micros() + S).as_micros().to_string();
    let score = e
        .claim("n1", &m, &cutoff)
        .await
        .unwrap()
        .expect("stale: claimed");
    (e, c, m, t0, score)
}

async fn presence(e: &RedisEngine, c: &Connection) -> Presence {
    let got = e.get(std::slice::from_ref(&c.user)).await.unwrap();
    got.into_iter().next().flatten().expect("a record")
}

/// A status change re-indexes the connection after the sweeper claimed it: the expiry must
/// leave it, and it must stay findable by later sweeps. (Before: the expiry removed the
/// connection and then, unconditionally, the fresh index entry; had the replica died, the user
/// would have stayed online for ever.)
#[tokio::test]
async fn a_connection_indexed_again_after_its_claim_is_not_expired_and_stays_sweepable() {
    let (e, c, m, t0, score) = claimed("reindexed").await;
    e.set_status(&c, Status::Live, None, Timestamp(t0.as_micros() + 2 * S))
        .await
        .unwrap();
    let now = Timestamp(t0.as_micros() + 3 * S);
    assert_eq!(
        e.expire_claimed("n1", &m, &score, now).await.unwrap(),
        (false, false)
    );
    assert_eq!(presence(&e, &c).await.status, Status::Live);
    // Silent from now on: a later sweep finds it and takes the user offline.
    let later = Timestamp(t0.as_micros() + 20 * S);
    let r = e.sweep(15_000, later).await.unwrap();
    assert_eq!((r.swept, r.went_offline), (1, 1));
    assert_eq!(presence(&e, &c).await.status, Status::Offline);
}

/// A heartbeat that finds its connection claimed revives it (as the heartbeat flush does):
/// the expiry that follows must not take the user offline (no offline-then-online flap).
#[tokio::test]
async fn a_connection_heard_while_it_is_being_swept_does_not_flap() {
    let (e, c, m, t0, score) = claimed("heard").await;
    let online = presence(&e, &c).await;
    let mut events = e.subscribe();
    let heard = Timestamp(t0.as_micros() + 2 * S);
    let touch = Touch {
        conn: c.id.clone(),
        user: c.user.clone(),
        heard_at: heard,
    };
    let missing = e.touch(&[touch], heard).await.unwrap();
    assert_eq!(
        missing,
        vec![c.id.clone()],
        "claimed: the heartbeat does not find it"
    );
    e.restore(&c, Some(&online), &Default::default(), heard)
        .await
        .unwrap();
    let now = Timestamp(t0.as_micros() + 3 * S);
    assert_eq!(
        e.expire_claimed("n1", &m, &score, now).await.unwrap(),
        (false, false)
    );
    assert_eq!(presence(&e, &c).await.status, Status::Online);
    // Nothing was announced for this user.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    while let Ok(ev) = events.try_recv() {
        assert_ne!(
            ev.presence.user_id, c.user,
            "announced {:?}",
            ev.presence.status
        );
    }
}

/// A sweeper that dies between claim and expiry leaves the member claimed; the next sweep
/// finishes the job.
#[tokio::test]
async fn a_claim_left_unfinished_is_finished_by_the_next_sweep() {
    let (e, c, _, t0, _) = claimed("orphaned").await;
    // (the sweeper dies here)
    let r = e
        .sweep(15_000, Timestamp(t0.as_micros() + 2 * S))
        .await
        .unwrap();
    assert_eq!((r.swept, r.went_offline), (1, 1));
    assert_eq!(presence(&e, &c).await.status, Status::Offline);
}
