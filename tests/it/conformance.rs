//! The presence rules live once, in the domain (`PresenceRecord`'s transitions and
//! `next_version`); the memory engine applies them, and the Redis engine's Lua scripts
//! restate them. This holds both engines to the domain: random sequences of connect, touch,
//! set-status, disconnect (with and without grace, under flap damping), sweep and settle,
//! applied to an engine and to a model built on the domain's transitions, must give the same
//! presences, versions and announcements after every step. Statuses are per connection
//! (section 11, `domain::devices`): the model keeps what each connection set and shows the
//! best of them.

use super::engine::Engine;
use presence_gateway::domain::{
    Details, DeviceStatus, FlapRule, FlapWindow, Gender, LastSeen, PresenceRecord, Privacy,
    PrivacyChange, Status, Timestamp, UserId, devices,
};
use presence_gateway::engine::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::time::Duration;

const USERS: usize = 3;
const CONNS: usize = 6;
const TIMEOUT_MS: u64 = 2000;
/// The engines under this test damp flapping this tightly (a user's second offline in 10 s is
/// held), so that random sequences meet the rule often.
pub const FLAP: FlapRule = FlapRule {
    limit: 2,
    hold_ms: 1500,
};

/// What is compared of a presence: status, details, online, lastSeen, updatedAt, version.
type Observed = (
    Status,
    Option<serde_json::Value>,
    bool,
    Option<Timestamp>,
    Option<Timestamp>,
    i64,
    Privacy,
);

fn observed(p: &presence_gateway::domain::Presence) -> Observed {
    (
        p.status,
        p.details.as_ref().map(|d| d.value().clone()),
        p.online,
        p.last_seen,
        p.updated_at,
        p.version,
        p.privacy,
    )
}

#[derive(Default)]
struct User {
    record: Option<PresenceRecord>,
    /// Live connections: when each was last heard (µs), and what it set.
    conns: HashMap<String, (i64, DeviceStatus)>,
    /// The user's counter for `DeviceStatus::seq`.
    seq: u64,
    pending: Option<Timestamp>,
    flap: FlapWindow,
}

/// The domain's rules, composed the way the contract says an engine composes them.
#[derive(Default)]
struct Model {
    users: HashMap<String, User>,
    announced: Vec<(String, Status, i64)>,
}

impl Model {
    fn user(&mut self, u: &str) -> &mut User {
        self.users.entry(u.to_string()).or_default()
    }

    fn commit(&mut self, u: &str) {
        let r = self.users[u].record.clone().expect("a record");
        self.announced.push((u.to_string(), r.status, r.version));
    }

    /// A connection of `u` is live (new: a handshake with `gender`; else a revival).
    fn attach(&mut self, u: &str, c: &str, gender: Gender, fresh: bool, now: Timestamp) {
        let user = self.user(u);
        let e = user.conns.entry(c.to_string()).or_default();
        e.0 = e.0.max(now.as_micros());
        user.pending = None;
        let shown = devices::best(user.conns.values().map(|c| &c.1));
        let record = user
            .record
            .get_or_insert_with(|| PresenceRecord::new(gender));
        if record.connect(fresh.then_some(gender), shown, now) {
            self.commit(u);
        }
    }

    /// Show the best of `u`'s live connections' statuses.
    fn reshow(&mut self, u: &str, now: Timestamp) {
        let user = self.user(u);
        let shown = devices::best(user.conns.values().map(|c| &c.1));
        if user.record.as_mut().is_some_and(|r| r.show(shown, now)) {
            self.commit(u);
        }
    }

    fn go_offline(&mut self, u: &str, now: Timestamp) -> bool {
        let user = self.user(u);
        user.pending = None;
        let went = user.record.as_mut().is_some_and(|r| r.disconnect(now));
        if went {
            self.commit(u);
        }
        went
    }

    fn presence(&self, u: &str) -> Option<Observed> {
        let r = self.users.get(u)?.record.as_ref()?;
        Some(observed(&r.to_presence(UserId::parse(u).unwrap())))
    }
}

thread_local! {
    /// The seed being run: each seed has users and connections of its own.
    static SEED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

fn uid(i: usize) -> String {
    format!("cu{}-{i}", SEED.get())
}

fn conn_of(i: usize, gender: Gender) -> Connection {
    Connection {
        id: format!("cc{}-{i}", SEED.get()).into(),
        user: UserId::parse(&uid(i % USERS)).unwrap(),
        gender,
    }
}

async fn events(
    rx: &mut tokio::sync::broadcast::Receiver<PresenceEvent>,
    n: usize,
) -> Vec<(String, Status, i64)> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while out.len() < n {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Ok(e)) => out.push((
                e.presence.user_id.to_string(),
                e.presence.status,
                e.presence.version,
            )),
            _ => break,
        }
    }
    out
}

pub async fn random_sequences_follow_the_domain_rules(e: Engine) {
    for seed in 0..8u64 {
        run(&e, seed).await;
    }
}

async fn run(e: &Engine, seed: u64) {
    SEED.set(seed);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut model = Model::default();
    let mut rx = e.subscribe();
    // Each seed on its own users' time line, far from the others'.
    let mut now_ms: i64 = 1_900_000_000_000 + seed as i64 * 10_000_000;
    let genders = [Gender::Female, Gender::Male, Gender::Other];
    // Connections the gateway knows (it only sets statuses on, touches and closes those).
    let mut known: Vec<usize> = Vec::new();
    for step in 0..120 {
        now_ms += rng.random_range(1..900);
        let now = Timestamp::from_millis(now_ms);
        let before = model.announced.len();
        let mut loose: Vec<String> = Vec::new();
        let what;
        match rng.random_range(0..100) {
            0..30 => {
                let i = rng.random_range(0..CONNS);
                let c = conn_of(i, genders[rng.random_range(0..3)]);
                if model
                    .users
                    .get(&uid(i % USERS))
                    .is_some_and(|u| u.conns.contains_key(&*c.id))
                {
                    continue; // a connection id is connected once
                }
                what = format!("connect {} as {:?}", c.id, c.gender);
                e.connect(&c, now).await.unwrap();
                model.attach(&uid(i % USERS), &c.id, c.gender, true, now);
                if !known.contains(&i) {
                    known.push(i);
                }
            }
            30..50 if !known.is_empty() => {
                let i = known[rng.random_range(0..known.len())];
                let c = conn_of(i, Gender::Female);
                let status = [Status::Online, Status::Live, Status::InCall][rng.random_range(0..3)];
                let details = (rng.random_range(0..2) == 0).then(|| {
                    Details::parse(serde_json::json!({"n": rng.random_range(0..2)})).unwrap()
                });
                what = format!("set {} {status:?} {details:?}", c.id);
                e.set_status(&c, status, details.clone(), now)
                    .await
                    .unwrap();
                let u = uid(i % USERS);
                // Speaking revives a swept connection, then the status applies.
                model.attach(&u, &c.id, c.gender, false, now);
                let user = model.user(&u);
                let next = user.seq + 1;
                let mine = &mut user.conns.get_mut(&*c.id).unwrap().1;
                if let Some(set) = mine.set(status, details, next).unwrap() {
                    *mine = set;
                    user.seq = next;
                }
                model.reshow(&u, now);
            }
            50..65 if !known.is_empty() => {
                let i = known[rng.random_range(0..known.len())];
                let c = conn_of(i, Gender::Female);
                what = format!("touch {}", c.id);
                let missing = e
                    .touch(
                        &[Touch {
                            conn: c.id.clone(),
                            user: c.user.clone(),
                            heard_at: now,
                        }],
                        now,
                    )
                    .await
                    .unwrap();
                let user = model.user(&uid(i % USERS));
                match user.conns.get_mut(&*c.id) {
                    Some(h) => {
                        h.0 = h.0.max(now.as_micros());
                        assert!(
                            missing.is_empty(),
                            "seed {seed} step {step}: {what}: known, reported missing"
                        );
                    }
                    None => assert_eq!(
                        missing.len(),
                        1,
                        "seed {seed} step {step}: {what}: gone, not reported"
                    ),
                }
            }
            65..85 if !known.is_empty() => {
                let i = known[rng.random_range(0..known.len())];
                let c = conn_of(i, Gender::Female);
                let grace = [0, 1000][rng.random_range(0..2)];
                what = format!("disconnect {} grace {grace}", c.id);
                e.disconnect(&c, grace, now).await.unwrap();
                let u = uid(i % USERS);
                let user = model.user(&u);
                let removed = user.conns.remove(&*c.id).is_some();
                if removed && !user.conns.is_empty() {
                    model.reshow(&u, now);
                } else if removed {
                    let online = user.record.as_ref().is_some_and(PresenceRecord::is_online);
                    let mut grace = grace;
                    if online {
                        (user.flap, grace) = FLAP.offline(user.flap, now.as_micros(), grace);
                    }
                    if online && grace > 0 {
                        user.pending = Some(now.plus_millis(grace));
                    } else if online {
                        model.go_offline(&u, now);
                    }
                }
            }
            85..95 => {
                what = "sweep".to_string();
                e.sweep(TIMEOUT_MS, now).await.unwrap();
                let cutoff = now.as_micros() - TIMEOUT_MS as i64 * 1000;
                let names: Vec<String> = model.users.keys().cloned().collect();
                for u in &names {
                    let user = model.user(u);
                    let before = user.conns.len();
                    user.conns.retain(|_, h| h.0 >= cutoff);
                    let gone = before - user.conns.len();
                    if gone > 1 {
                        // The Redis engine expires them one at a time, in no set order: what
                        // shows in between (so how many changes, and the version) depends on
                        // it; what shows after does not.
                        loose.push(u.clone());
                    }
                    if before > 0 && user.conns.is_empty() {
                        model.go_offline(u, now);
                    } else if gone > 0 {
                        model.reshow(u, now);
                    }
                }
                for u in &names {
                    let user = model.user(u);
                    if user.pending.is_some_and(|d| d <= now) && user.conns.is_empty() {
                        model.go_offline(u, now);
                    }
                }
            }
            95..98 => {
                // Section 11's settings: each a change (announced), fixing what others see.
                let u = uid(rng.random_range(0..USERS));
                let change = PrivacyChange {
                    invisible: [None, Some(true), Some(false)][rng.random_range(0..3)],
                    last_seen: [None, Some(LastSeen::Nobody), Some(LastSeen::Everyone)]
                        [rng.random_range(0..3)],
                };
                what = format!("privacy {u} {change:?}");
                e.set_privacy(&UserId::parse(&u).unwrap(), change, now)
                    .await
                    .unwrap();
                let user = model.user(&u);
                let record = user
                    .record
                    .get_or_insert_with(|| PresenceRecord::new(Gender::Other));
                if record.set_privacy(change, now) {
                    model.commit(&u);
                }
            }
            _ => {
                let u = uid(rng.random_range(0..USERS));
                what = format!("settle {u}");
                e.settle(&UserId::parse(&u).unwrap(), now).await.unwrap();
                let user = model.user(&u);
                if user.pending.is_some_and(|d| d <= now) && user.conns.is_empty() {
                    model.go_offline(&u, now);
                }
            }
        }
        let mut want = model.announced[before..].to_vec();
        let mut got = events(&mut rx, want.len() + loose.len()).await;
        for u in &loose {
            let mine: Vec<i64> = got.iter().filter(|x| &x.0 == u).map(|x| x.2).collect();
            assert!(
                mine.windows(2).all(|w| w[1] > w[0]),
                "seed {seed} step {step}: {u}'s versions grow"
            );
            got.retain(|x| &x.0 != u);
            want.retain(|x| &x.0 != u);
            // The model takes the engine's version and time of the last one.
            let p = e.get(&[UserId::parse(u).unwrap()]).await.unwrap()[0]
                .clone()
                .unwrap();
            let r = model.user(u).record.as_mut().unwrap();
            assert_eq!(
                (p.status, p.details.clone(), p.last_seen),
                (r.status, r.details.clone(), r.last_seen),
                "seed {seed} step {step}: {u} shows the best of what is left"
            );
            assert!(p.version >= r.version);
            (r.version, r.updated_at) = (p.version, p.updated_at);
        }
        if what == "sweep" {
            // A sweep's users go offline in no particular order among themselves.
            want.sort_by_key(|(u, _, v)| (u.clone(), *v));
            got.sort_by_key(|(u, _, v)| (u.clone(), *v));
        }
        assert_eq!(got, want, "seed {seed} step {step}: {what}: announcements");
        let ids: Vec<UserId> = (0..USERS)
            .map(|i| UserId::parse(&uid(i)).unwrap())
            .collect();
        let live = e.get(&ids).await.unwrap();
        for (i, p) in live.into_iter().enumerate() {
            let got = p.as_ref().map(observed);
            assert_eq!(
                got,
                model.presence(&uid(i)),
                "seed {seed} step {step}: {what}: presence of {}",
                uid(i)
            );
        }
    }
    // Leave nothing for the next seed: every connection swept, every announcement read.
    e.sweep(0, Timestamp::from_millis(now_ms + 10_000))
        .await
        .unwrap();
    while tokio::time::timeout(Duration::from_millis(300), rx.recv())
        .await
        .is_ok()
    {}
}
