//! The behaviour every engine must have. Each case is a function over a fresh engine; the
//! `engine_suite!` macro instantiates all of them for one engine factory, so the memory engine
//! and the Redis engine run exactly the same cases.

use presence_gateway::domain::{
    Details, DeviceStatus, FlapRule, Gender, GenderSet, LastSeen, PrivacyChange, Status, Timestamp,
    UserId,
};
use presence_gateway::engine::*;
use std::sync::Arc;
use tokio::sync::broadcast::Receiver;

pub use super::conformance::random_sequences_follow_the_domain_rules;

pub type Engine = Arc<dyn PresenceEngine>;

fn uid(s: &str) -> UserId {
    UserId::parse(s).unwrap()
}

fn conn(id: &str, user: &str, gender: Gender) -> Connection {
    Connection {
        id: id.into(),
        user: uid(user),
        gender,
    }
}

/// A fixed clock origin, so cases are exact about time.
fn t(ms: i64) -> Timestamp {
    Timestamp::from_millis(1_800_000_000_000 + ms)
}

/// Every event published so far (engines publish before returning).
async fn drain(rx: &mut Receiver<PresenceEvent>) -> Vec<(String, Status, i64)> {
    // A remote engine delivers through a network hop: allow it a moment, bounded.
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(150);
    while let Ok(Ok(e)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        out.push((
            e.presence.user_id.to_string(),
            e.presence.status,
            e.presence.version,
        ));
    }
    out
}

fn statuses(events: &[(String, Status, i64)], user: &str) -> Vec<Status> {
    events.iter().filter(|e| e.0 == user).map(|e| e.1).collect()
}

pub async fn connect_is_announced_once_per_user(e: Engine) {
    let mut rx = e.subscribe();
    let p = e
        .connect(&conn("c1", "u1", Gender::Female), t(0))
        .await
        .unwrap();
    assert_eq!(
        (p.status, p.online, p.version > 0),
        (Status::Online, true, true)
    );
    assert_eq!(p.updated_at, Some(t(0)));
    let p2 = e
        .connect(&conn("c2", "u1", Gender::Female), t(1))
        .await
        .unwrap();
    assert_eq!(p2.version, p.version, "a second connection changes nothing");
    assert_eq!(statuses(&drain(&mut rx).await, "u1"), [Status::Online]);
    let s = e.stats().await.unwrap();
    assert_eq!(
        (s.online_users, s.total_connections, s.online_by_gender),
        (1, 2, [0, 1, 0])
    );
}

pub async fn last_disconnect_goes_offline_once(e: Engine) {
    let mut rx = e.subscribe();
    let (a, b) = (conn("a", "u", Gender::Male), conn("b", "u", Gender::Male));
    e.connect(&a, t(0)).await.unwrap();
    e.connect(&b, t(0)).await.unwrap();
    assert_eq!(
        e.disconnect(&a, 0, t(1)).await.unwrap(),
        DisconnectOutcome::StillOnline
    );
    let DisconnectOutcome::Offline(p) = e.disconnect(&b, 0, t(2)).await.unwrap() else {
        panic!("offline")
    };
    assert_eq!(
        (p.status, p.online, p.last_seen),
        (Status::Offline, false, Some(t(2)))
    );
    assert_eq!(
        e.disconnect(&b, 0, t(3)).await.unwrap(),
        DisconnectOutcome::Unknown,
        "closing twice"
    );
    assert_eq!(
        statuses(&drain(&mut rx).await, "u"),
        [Status::Online, Status::Offline]
    );
    let s = e.stats().await.unwrap();
    assert_eq!(
        (s.online_users, s.peak_online, s.total_disconnections),
        (0, 1, 3)
    );
}

pub async fn grace_cancelled_by_a_reconnect(e: Engine) {
    let mut rx = e.subscribe();
    let c = conn("c", "g", Gender::Other);
    e.connect(&c, t(0)).await.unwrap();
    let out = e.disconnect(&c, 1000, t(10)).await.unwrap();
    assert_eq!(out, DisconnectOutcome::Pending { deadline: t(1010) });
    let during = e.get(&[uid("g")]).await.unwrap();
    assert!(
        during[0].as_ref().unwrap().online,
        "online during the grace"
    );
    e.connect(&conn("c2", "g", Gender::Other), t(500))
        .await
        .unwrap();
    assert_eq!(e.settle(&uid("g"), t(2000)).await.unwrap(), None);
    e.sweep(60_000, t(2000)).await.unwrap();
    assert_eq!(statuses(&drain(&mut rx).await, "g"), [Status::Online]);
}

pub async fn grace_expires_once(e: Engine) {
    let mut rx = e.subscribe();
    let c = conn("c", "g", Gender::Other);
    e.connect(&c, t(0)).await.unwrap();
    e.disconnect(&c, 1000, t(10)).await.unwrap();
    assert_eq!(
        e.settle(&uid("g"), t(500)).await.unwrap(),
        None,
        "not due yet"
    );
    let p = e.settle(&uid("g"), t(1010)).await.unwrap().expect("due");
    assert_eq!(p.last_seen, Some(t(1010)));
    assert_eq!(
        e.settle(&uid("g"), t(1100)).await.unwrap(),
        None,
        "settled once"
    );
    e.sweep(60_000, t(1200)).await.unwrap();
    assert_eq!(
        statuses(&drain(&mut rx).await, "g"),
        [Status::Online, Status::Offline]
    );
}

pub async fn sweep_applies_due_graces(e: Engine) {
    let mut rx = e.subscribe();
    let c = conn("c", "g", Gender::Other);
    e.connect(&c, t(0)).await.unwrap();
    e.disconnect(&c, 1000, t(0)).await.unwrap();
    let r = e.sweep(60_000, t(1500)).await.unwrap();
    assert_eq!(r.went_offline, 1);
    assert_eq!(
        statuses(&drain(&mut rx).await, "g"),
        [Status::Online, Status::Offline]
    );
}

pub async fn silent_connections_are_swept_and_revived(e: Engine) {
    let mut rx = e.subscribe();
    let quiet = conn("q", "quiet", Gender::Female);
    let chatty = conn("k", "chatty", Gender::Female);
    e.connect(&quiet, t(0)).await.unwrap();
    e.connect(&chatty, t(0)).await.unwrap();
    let touch = Touch {
        conn: chatty.id.clone(),
        user: chatty.user.clone(),
        heard_at: t(1000),
    };
    assert!(e.touch(&[touch], t(1000)).await.unwrap().is_empty());
    let r = e.sweep(1500, t(2000)).await.unwrap();
    assert_eq!((r.swept, r.went_offline), (1, 1));
    // Two replicas sweeping at once: the second finds nothing more to do.
    assert_eq!(
        e.sweep(1500, t(2000)).await.unwrap(),
        SweepReport {
            swept: 0,
            went_offline: 0
        }
    );
    let missing = e
        .touch(
            &[Touch {
                conn: quiet.id.clone(),
                user: quiet.user.clone(),
                heard_at: t(2100),
            }],
            t(2100),
        )
        .await
        .unwrap();
    assert_eq!(missing, vec![quiet.id.clone()]);
    let p = e.revive(&quiet, t(2100)).await.unwrap();
    assert!(p.online);
    let ev = drain(&mut rx).await;
    assert_eq!(
        statuses(&ev, "quiet"),
        [Status::Online, Status::Offline, Status::Online]
    );
    assert_eq!(statuses(&ev, "chatty"), [Status::Online]);
    let s = e.stats().await.unwrap();
    assert_eq!(
        (s.total_swept, s.total_connections, s.last_sweep_at),
        (1, 2, Some(t(2000)))
    );
}

pub async fn statuses_and_versions(e: Engine) {
    let mut rx = e.subscribe();
    let c = conn("c", "s", Gender::Female);
    let p0 = e.connect(&c, t(0)).await.unwrap();
    let d = |v: serde_json::Value| Some(Details::parse(v).unwrap());
    // The same instant for every call: versions must still grow.
    let a = e
        .set_status(&c, Status::Live, d(serde_json::json!({"s": 1})), t(0))
        .await
        .unwrap();
    assert!(a.changed && a.presence.version > p0.version);
    let b = e
        .set_status(&c, Status::Live, d(serde_json::json!({"s": 1})), t(0))
        .await
        .unwrap();
    assert!(!b.changed);
    assert_eq!(b.presence.version, a.presence.version);
    let c2 = e
        .set_status(&c, Status::Live, d(serde_json::json!({"s": 2})), t(0))
        .await
        .unwrap();
    assert!(c2.changed && c2.presence.version > a.presence.version);
    let on = e
        .set_status(&c, Status::Online, d(serde_json::json!({"x": 1})), t(0))
        .await
        .unwrap();
    assert_eq!(on.presence.details, None);
    assert!(matches!(
        e.set_status(&c, Status::Offline, None, t(0)).await,
        Err(EngineError::Status(_))
    ));
    let ev = drain(&mut rx).await;
    assert_eq!(
        statuses(&ev, "s"),
        [Status::Online, Status::Live, Status::Live, Status::Online]
    );
    assert!(
        ev.windows(2).all(|w| w[1].2 > w[0].2),
        "versions strictly grow: {ev:?}"
    );
}

/// Section 11: a status belongs to the connection that set it; the user shows the best of
/// their live connections', and falls back when that one closes or goes silent.
pub async fn statuses_per_device(e: Engine) {
    let mut rx = e.subscribe();
    let d = |v: serde_json::Value| Some(Details::parse(v).unwrap());
    let (phone, laptop) = (
        conn("phone", "dv", Gender::Female),
        conn("laptop", "dv", Gender::Female),
    );
    e.connect(&phone, t(0)).await.unwrap();
    e.connect(&laptop, t(0)).await.unwrap();
    let call = e
        .set_status(
            &phone,
            Status::InCall,
            d(serde_json::json!({"c": 1})),
            t(10),
        )
        .await
        .unwrap();
    assert!(call.changed);
    let live = e
        .set_status(&laptop, Status::Live, d(serde_json::json!({"l": 1})), t(20))
        .await
        .unwrap();
    assert!(!live.changed, "in_call outranks live: nothing to announce");
    assert_eq!(live.presence.status, Status::InCall);
    assert_eq!(live.presence.version, call.presence.version);
    // The phone dies during the call (silent: the laptop keeps talking).
    e.touch(
        &[Touch {
            conn: laptop.id.clone(),
            user: laptop.user.clone(),
            heard_at: t(3000),
        }],
        t(3000),
    )
    .await
    .unwrap();
    e.sweep(2000, t(3100)).await.unwrap();
    let p = e.get(&[uid("dv")]).await.unwrap()[0].clone().unwrap();
    assert_eq!(
        (p.status, p.details.clone()),
        (Status::Live, d(serde_json::json!({"l": 1}))),
        "the laptop's status, with its details"
    );
    assert!(p.version > call.presence.version);
    // Among equals, the most recently set.
    let tablet = conn("tablet", "dv", Gender::Female);
    assert!(
        !e.set_status(&tablet, Status::Online, None, t(3200))
            .await
            .unwrap()
            .changed,
        "a new connection is online: the laptop's live still shows"
    );
    let newer = e
        .set_status(
            &tablet,
            Status::Live,
            d(serde_json::json!({"t": 1})),
            t(3300),
        )
        .await
        .unwrap();
    assert!(newer.changed);
    assert_eq!(newer.presence.details, d(serde_json::json!({"t": 1})));
    assert_eq!(
        e.disconnect(&tablet, 0, t(3400)).await.unwrap(),
        DisconnectOutcome::StillOnline
    );
    let back = e.get(&[uid("dv")]).await.unwrap()[0].clone().unwrap();
    assert_eq!(back.details, d(serde_json::json!({"l": 1})));
    // The laptop closes with a grace; a connection back within it shows what it has.
    assert!(matches!(
        e.disconnect(&laptop, 5000, t(3500)).await.unwrap(),
        DisconnectOutcome::Pending { .. }
    ));
    let again = e.connect(&phone, t(4000)).await.unwrap();
    assert_eq!((again.status, again.details), (Status::Online, None));
    let ev = drain(&mut rx).await;
    assert_eq!(
        statuses(&ev, "dv"),
        [
            Status::Online,
            Status::InCall,
            Status::Live,
            Status::Live,
            Status::Live,
            Status::Online
        ],
        "each change of the combined presence once: {ev:?}"
    );
    assert!(ev.windows(2).all(|w| w[1].2 > w[0].2), "versions grow");
}

/// A connection swept while silent that speaks again is the same connection: it takes back
/// the status it had set (its client still shows it), as after Redis came back empty.
pub async fn a_connection_back_from_silence_takes_back_its_status(e: Engine) {
    let d = |v: serde_json::Value| Some(Details::parse(v).unwrap());
    let (phone, laptop) = (
        conn("phone", "bk", Gender::Other),
        conn("laptop", "bk", Gender::Other),
    );
    e.connect(&phone, t(0)).await.unwrap();
    e.connect(&laptop, t(0)).await.unwrap();
    e.set_status(
        &phone,
        Status::InCall,
        d(serde_json::json!({"c": 1})),
        t(10),
    )
    .await
    .unwrap();
    e.touch(
        &[Touch {
            conn: laptop.id.clone(),
            user: laptop.user.clone(),
            heard_at: t(3000),
        }],
        t(3000),
    )
    .await
    .unwrap();
    e.sweep(2000, t(3100)).await.unwrap();
    let fell = e.get(&[uid("bk")]).await.unwrap()[0].clone().unwrap();
    assert_eq!(fell.status, Status::Online);
    let mine = DeviceStatus {
        status: Status::InCall,
        details: d(serde_json::json!({"c": 1})),
        seq: 0,
    };
    let back = e
        .restore(&phone, Some(&fell), &mine, t(3200))
        .await
        .unwrap();
    assert_eq!(
        (back.status, back.details),
        (Status::InCall, d(serde_json::json!({"c": 1})))
    );
    assert!(back.version > fell.version);
}

/// Section 11's settings are stored with the presence and travel with every change.
pub async fn privacy_travels_with_every_change(e: Engine) {
    let mut rx = e.subscribe();
    let c = conn("c", "pv", Gender::Female);
    e.connect(&c, t(0)).await.unwrap();
    let inv = |b| PrivacyChange {
        invisible: Some(b),
        last_seen: None,
    };
    let hid = e.set_privacy(&uid("pv"), inv(true), t(10)).await.unwrap();
    assert!(hid.privacy.invisible);
    let h = hid.privacy.hidden.expect("what others see");
    assert_eq!(
        (h.version, h.last_seen, h.updated_at),
        (hid.version, Some(t(10)), Some(t(10)))
    );
    assert_eq!(e.stats().await.unwrap().invisible_users, 1);
    let same = e.set_privacy(&uid("pv"), inv(true), t(20)).await.unwrap();
    assert_eq!(same.version, hid.version, "the same setting is no change");
    let live = e
        .set_status(&c, Status::Live, None, t(30))
        .await
        .unwrap()
        .presence;
    assert_eq!(live.privacy, hid.privacy, "kept by other transitions");
    let nobody = e
        .set_privacy(
            &uid("pv"),
            PrivacyChange {
                invisible: Some(false),
                last_seen: Some(LastSeen::Nobody),
            },
            t(40),
        )
        .await
        .unwrap();
    assert_eq!(
        (
            nobody.privacy.invisible,
            nobody.privacy.last_seen,
            nobody.privacy.hidden
        ),
        (false, LastSeen::Nobody, None)
    );
    assert_eq!(e.stats().await.unwrap().invisible_users, 0);
    let got = e.get(&[uid("pv")]).await.unwrap()[0].clone().unwrap();
    assert_eq!(got.privacy, nobody.privacy);
    let ev: Vec<PresenceEvent> = {
        let mut out = vec![];
        while let Ok(Ok(e)) =
            tokio::time::timeout(std::time::Duration::from_millis(150), rx.recv()).await
        {
            out.push(e);
        }
        out
    };
    let seen: Vec<(bool, i64)> = ev
        .iter()
        .map(|e| (e.presence.privacy.invisible, e.presence.version))
        .collect();
    assert_eq!(
        seen,
        [
            (false, ev[0].presence.version),
            (true, hid.version),
            (true, live.version),
            (false, nobody.version)
        ]
    );
    // A user never seen may set them too (an app's backend, before they first connect).
    let fresh = e
        .set_privacy(&uid("pv-new"), inv(true), t(50))
        .await
        .unwrap();
    assert!(!fresh.online && fresh.privacy.invisible);
    assert_eq!(fresh.privacy.hidden.unwrap().version, 0);
}

pub async fn set_status_revives_a_swept_connection(e: Engine) {
    let c = conn("c", "r", Gender::Female);
    e.connect(&c, t(0)).await.unwrap();
    e.sweep(1000, t(5000)).await.unwrap();
    let ch = e
        .set_status(&c, Status::InCall, None, t(5100))
        .await
        .unwrap();
    assert_eq!((ch.presence.status, ch.changed), (Status::InCall, true));
    assert_eq!(e.disconnect(&c, 0, t(5200)).await.unwrap().clone(), {
        let p = e.get(&[uid("r")]).await.unwrap()[0].clone().unwrap();
        DisconnectOutcome::Offline(p)
    });
}

pub async fn get_and_list_with_filters_and_cursors(e: Engine) {
    for i in 0..7 {
        e.connect(
            &conn(&format!("f{i}"), &format!("f{i}"), Gender::Female),
            t(0),
        )
        .await
        .unwrap();
        e.connect(
            &conn(&format!("m{i}"), &format!("m{i}"), Gender::Male),
            t(0),
        )
        .await
        .unwrap();
    }
    let got = e.get(&[uid("f1"), uid("nobody")]).await.unwrap();
    assert!(got[0].as_ref().unwrap().online);
    assert!(got[1].is_none(), "never seen");

    let female_only = ListFilter {
        genders: GenderSet::only(Gender::Female),
        include: Some(uid("m3")),
    };
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = e
            .list_online(&female_only, cursor.as_deref(), 3)
            .await
            .unwrap();
        assert!(page.users.len() <= 3);
        seen.extend(page.users.iter().map(|p| p.user_id.to_string()));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let mut want: Vec<String> = (0..7).map(|i| format!("f{i}")).collect();
    want.push("m3".into());
    want.sort();
    seen.sort();
    assert_eq!(seen, want);
    let all = ListFilter {
        genders: GenderSet::ALL,
        include: None,
    };
    assert_eq!(
        e.list_online(&all, None, 500).await.unwrap().users.len(),
        14
    );
    assert!(matches!(
        e.list_online(&all, Some("not a cursor!"), 10).await,
        Err(EngineError::BadCursor)
    ));
}

pub async fn racing_connects_announce_once(e: Engine) {
    let mut rx = e.subscribe();
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let e = e.clone();
            tokio::spawn(async move {
                e.connect(&conn(&format!("r{i}"), "racer", Gender::Male), t(0))
                    .await
                    .unwrap()
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(statuses(&drain(&mut rx).await, "racer"), [Status::Online]);
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let e = e.clone();
            tokio::spawn(async move {
                e.disconnect(&conn(&format!("r{i}"), "racer", Gender::Male), 0, t(1))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut offline = 0;
    for task in tasks {
        if matches!(task.await.unwrap(), DisconnectOutcome::Offline(_)) {
            offline += 1;
        }
    }
    assert_eq!(offline, 1);
    assert_eq!(statuses(&drain(&mut rx).await, "racer"), [Status::Offline]);
}

pub async fn a_gender_change_is_a_change(e: Engine) {
    let mut rx = e.subscribe();
    e.connect(&conn("a", "gc", Gender::Other), t(0))
        .await
        .unwrap();
    let p = e
        .connect(&conn("b", "gc", Gender::Female), t(1))
        .await
        .unwrap();
    assert_eq!(p.gender, Gender::Female);
    let s = e.stats().await.unwrap();
    assert_eq!(s.online_by_gender, [0, 1, 0]);
    assert_eq!(drain(&mut rx).await.len(), 2);
}

pub async fn replica_reports_live_and_expire(e: Engine) {
    assert!(e.replicas(1000, t(0)).await.unwrap().is_empty());
    e.report_replica(Some("{\"a\":1}".into()), t(0))
        .await
        .unwrap();
    e.report_replica(Some("{\"a\":2}".into()), t(500))
        .await
        .unwrap();
    assert_eq!(
        e.replicas(1000, t(1400)).await.unwrap(),
        vec![("test-node".to_string(), "{\"a\":2}".to_string())],
        "the newest report, while it is recent"
    );
    assert!(
        e.replicas(1000, t(1600)).await.unwrap().is_empty(),
        "too old: gone"
    );
    e.report_replica(Some("{}".into()), t(2000)).await.unwrap();
    e.report_replica(None, t(2001)).await.unwrap();
    assert!(
        e.replicas(1000, t(2002)).await.unwrap().is_empty(),
        "withdrawn"
    );
}

pub async fn topics_reach_their_own_subscribers_in_order(e: Engine) {
    let mut stats = e.subscribe_topic(Topic::Stats);
    let mut admin = e.subscribe_topic(Topic::Admin);
    for i in 0..3 {
        e.publish(Topic::Admin, format!("a{i}")).await.unwrap();
    }
    e.publish(Topic::Stats, "s0".into()).await.unwrap();
    let within = std::time::Duration::from_secs(2);
    for i in 0..3 {
        let m = tokio::time::timeout(within, admin.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&*m, format!("a{i}"));
    }
    let m = tokio::time::timeout(within, stats.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&*m, "s0", "the stats topic saw only its own message");
}

/// Blocks (section 11) where no database keeps them: both ways, the limit, a pair check.
pub async fn blocks_are_kept_both_ways(e: Engine) {
    block_store_rules(e.block_store()).await;
}

/// What every block store must do (the engines', and the database's: `db.rs`).
pub async fn block_store_rules(s: &dyn BlockStore) {
    let (a, b, c) = (uid("bk-a"), uid("bk-b"), uid("bk-c"));
    assert_eq!(s.block(&a, &b, 2).await.unwrap(), Blocked::Added);
    assert_eq!(s.block(&a, &b, 2).await.unwrap(), Blocked::Already);
    assert_eq!(s.block(&a, &c, 2).await.unwrap(), Blocked::Added);
    assert_eq!(
        s.block(&a, &uid("bk-d"), 2).await.unwrap(),
        Blocked::TooMany,
        "at the limit"
    );
    assert_eq!(s.block(&c, &a, 2).await.unwrap(), Blocked::Added);
    assert!(s.blocks(&a, &b).await.unwrap());
    assert!(!s.blocks(&b, &a).await.unwrap(), "one way only");
    assert_eq!(
        s.blocks_of(&a).await.unwrap(),
        (vec![b.clone(), c.clone()], vec![c.clone()])
    );
    assert_eq!(s.blocks_of(&b).await.unwrap(), (vec![], vec![a.clone()]));
    assert!(s.unblock(&a, &b).await.unwrap());
    assert!(!s.unblock(&a, &b).await.unwrap(), "nothing left to lift");
    assert!(!s.blocks(&a, &b).await.unwrap());
    assert_eq!(s.blocks_of(&b).await.unwrap(), (vec![], vec![]));
}

#[macro_export]
macro_rules! engine_suite {
    ($module:ident, $make:path) => {
        mod $module {
            use super::*;
            $crate::engine_suite!(@cases $make, FlapRule::default();
                connect_is_announced_once_per_user,
                last_disconnect_goes_offline_once,
                grace_cancelled_by_a_reconnect,
                grace_expires_once,
                sweep_applies_due_graces,
                silent_connections_are_swept_and_revived,
                statuses_and_versions,
                statuses_per_device,
                a_connection_back_from_silence_takes_back_its_status,
                privacy_travels_with_every_change,
                set_status_revives_a_swept_connection,
                get_and_list_with_filters_and_cursors,
                racing_connects_announce_once,
                a_gender_change_is_a_change,
                replica_reports_live_and_expire,
                topics_reach_their_own_subscribers_in_order,
                blocks_are_kept_both_ways,
            );
            // With flap damping on, tight enough that the random sequences meet it.
            $crate::engine_suite!(@cases $make, super::super::conformance::FLAP;
                random_sequences_follow_the_domain_rules,
            );
        }
    };
    (@cases $make:path, $flap:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let engine: Engine = $make($flap).await;
                super::$case(engine).await;
            }
        )*
    };
}

async fn memory_engine(flap: FlapRule) -> Engine {
    Arc::new(presence_gateway::engine::memory::MemoryEngine::new("test-node").with_flap_rule(flap))
        as Engine
}

engine_suite!(memory, memory_engine);

/// A Redis engine under a key prefix of its own, so tests never see each other's keys.
/// The test command starts Redis when none answers (`scripts/services.sh`).
async fn redis_engine(flap: FlapRule) -> Engine {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let url = std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let prefix = format!(
        "t{}x{}x{n}",
        std::process::id(),
        Timestamp::now().as_micros() % 1_000_000
    );
    let e = presence_gateway::engine::redis::RedisEngine::connect(&url, &prefix, "test-node")
        .await
        .unwrap_or_else(|e| panic!("Redis at {url}: {e} (scripts/test.sh starts one)"));
    Arc::new(e.with_flap_rule(flap)) as Engine
}

engine_suite!(redis, redis_engine);
