//! `audit`: delivery you can prove. Thousands of viewers of every shape (broadcast sockets,
//! subscription sockets, batching sockets; men, women and others) spread over the replicas
//! watch changers who connect, leave, set statuses, heartbeat and come back as another
//! gender, while faults are injected from outside (`loadtest/audit.sh`). Every update a
//! viewer gets is checked as it arrives (a user's versions only grow; nothing about a user it
//! may not see; a subscription socket hears only whom it follows), and once the changes have
//! stopped and things are quiet, each viewer's last view is held against the truth read from
//! every replica (nothing lost), and every viewer still connected must have heard a change
//! made after the last fault (none deaf).
//!
//! Viewers behave as socket.io-client and the README's examples do: a dropped connection is
//! reconnected with backoff (elsewhere when its replica is down); a reconnected viewer starts
//! a new record and re-syncs with `presence:get` (subscription sockets: their subscriptions'
//! snapshot); `presence:resync` makes it refetch what it shows. A view is the newest version
//! among what was pushed and what was read, as a client that drops what is not newer keeps;
//! a read that leaves someone out (the viewer may not see them now) takes them off the view,
//! unless something of theirs was pushed since it was asked.
//!
//! Visibility is judged against what the auditor itself did, not against what a payload
//! says. A version is the committing replica's clock in µs (`max(previous + 1, now)`, and the
//! replicas run on this machine), so it places a change in time; each changer's handshakes,
//! each with the gender of its token, say which genders the user could have had then (one
//! gender between handshakes; either around one, or after one that failed).

use super::*;
use crate::AuditArgs;
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::AtomicI64;

/// Slack around a changer's handshakes when a version is placed in time: a version may run a
/// little ahead of the clock (`previous + 1`), and a replica reads the clock before it commits.
const SLACK_US: i64 = 50_000;
/// A heartbeat not acked for this long: the connection is taken for dead and replaced
/// (socket.io-client's ping timeout does the same for a silent server).
const WATCHDOG_US: i64 = 20_000_000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A change made before an unsubscribe may still reach the socket after it (in a batch being
/// gathered, or a backlog); later than this after the unsubscribe's ack it is noted.
const UNSUBSCRIBE_GRACE_US: i64 = 2_000_000;
/// For the deaf check, a change counts only if made this long after the viewer could hear it.
const DEAF_MARGIN_US: i64 = 1_000_000;
/// Ids per `presence:get` (the contract's most).
const GET_CHUNK: usize = 200;
/// Examples kept per anomaly.
const EXAMPLES: usize = 20;

fn now() -> i64 {
    now_us() as i64
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Gender {
    Male,
    Female,
    Other,
}

/// The bit of a woman in a set of genders (`Gender::bit`).
const FEMALE: u8 = 2;

impl Gender {
    fn as_str(self) -> &'static str {
        match self {
            Gender::Male => "male",
            Gender::Female => "female",
            Gender::Other => "other",
        }
    }

    fn parse(s: &str) -> Option<Gender> {
        match s {
            "male" => Some(Gender::Male),
            "female" => Some(Gender::Female),
            "other" => Some(Gender::Other),
            _ => None,
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }

    /// Under the default `gender` policy a man sees only women; everyone else sees everyone.
    fn sees(self, other: Gender) -> bool {
        self != Gender::Male || other == Gender::Female
    }
}

fn genders(set: u8) -> Vec<&'static str> {
    [Gender::Male, Gender::Female, Gender::Other]
        .into_iter()
        .filter(|g| set & g.bit() != 0)
        .map(Gender::as_str)
        .collect()
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
enum Status {
    #[default]
    Unknown,
    Offline,
    Online,
    Live,
    InCall,
}

impl Status {
    fn parse(s: Option<&str>) -> Status {
        match s {
            Some("offline") => Status::Offline,
            Some("online") => Status::Online,
            Some("live") => Status::Live,
            Some("in_call") => Status::InCall,
            _ => Status::Unknown,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Status::Unknown => "?",
            Status::Offline => "offline",
            Status::Online => "online",
            Status::Live => "live",
            Status::InCall => "in_call",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Shape {
    Broadcast,
    BroadcastBatch,
    Subscriptions,
    SubscriptionsBatch,
}

impl Shape {
    const ALL: [Shape; 4] = [
        Shape::Broadcast,
        Shape::BroadcastBatch,
        Shape::Subscriptions,
        Shape::SubscriptionsBatch,
    ];

    fn subs(self) -> bool {
        matches!(self, Shape::Subscriptions | Shape::SubscriptionsBatch)
    }

    fn batch(self) -> bool {
        matches!(self, Shape::BroadcastBatch | Shape::SubscriptionsBatch)
    }

    fn name(self) -> &'static str {
        match self {
            Shape::Broadcast => "broadcast",
            Shape::BroadcastBatch => "broadcast_batch",
            Shape::Subscriptions => "subscriptions",
            Shape::SubscriptionsBatch => "subscriptions_batch",
        }
    }
}

/// A viewer's shape and gender, from the seed: 40 % broadcast, 20 % broadcast with batches,
/// 25 % subscriptions, 15 % subscriptions with batches; 45 % men, 45 % women, 10 % others.
fn viewer_kind(seed: u64, i: usize) -> (Shape, Gender) {
    let mut rng = Rng::new(seed.wrapping_mul(1_000_003) ^ i as u64);
    let shape = match rng.below(100) {
        0..40 => Shape::Broadcast,
        40..60 => Shape::BroadcastBatch,
        60..85 => Shape::Subscriptions,
        _ => Shape::SubscriptionsBatch,
    };
    let gender = match rng.below(100) {
        0..45 => Gender::Male,
        45..90 => Gender::Female,
        _ => Gender::Other,
    };
    (shape, gender)
}

fn chance(rng: &mut Rng, p: f64) -> bool {
    (rng.below(1_000_000) as f64) < p * 1e6
}

/// socket.io-client's reconnection delay: 1 s doubling to 5 s, ± 50 %.
fn backoff(rng: &mut Rng, attempt: u32) -> Duration {
    let base = (1000u64 << attempt.min(3)).min(5000);
    Duration::from_millis(base / 2 + rng.below(base + 1))
}

/// What the auditor did as one changer: its handshakes (each with its token's gender) and
/// the status changes acked to it.
#[derive(Default)]
struct Log {
    attempts: Vec<Attempt>,
    acked: Vec<Acked>,
    /// Connected now, with the status this connection set (`online` until it sets one).
    connected: bool,
    status: Status,
    /// The gender of the last handshake that succeeded.
    gender: Option<Gender>,
    last_version: i64,
}

struct Attempt {
    start: i64,
    /// When the client knew the outcome (`i64::MAX` while it does not).
    end: i64,
    gender: Gender,
    ok: bool,
}

struct Acked {
    version: i64,
    gender: Gender,
}

impl Log {
    /// The genders the user may have had at `t`: that of the last handshake done by then,
    /// and of any begun but not known to have succeeded by then (in flight, or failed, which
    /// may have reached the server all the same) since.
    fn genders_at(&self, t: i64) -> u8 {
        let mut set = 0;
        for a in &self.attempts {
            if a.start > t {
                break;
            }
            if a.ok && a.end <= t {
                set = a.gender.bit();
            } else {
                set |= a.gender.bit();
            }
        }
        set
    }

    /// The genders the user may have had at any time from `t1` to `t2`.
    fn genders_between(&self, t1: i64, t2: i64) -> u8 {
        let mut set = self.genders_at(t1);
        for a in &self.attempts {
            if a.start > t1 && a.start <= t2 {
                set |= a.gender.bit();
            }
        }
        set
    }

    /// The last handshake as a woman begun by `t` (which "gone" announcement may follow it).
    fn last_female(&self, t: i64) -> Option<u32> {
        self.attempts
            .iter()
            .enumerate()
            .rev()
            .find(|(_, a)| a.start <= t && a.gender == Gender::Female)
            .map(|(k, _)| k as u32)
    }
}

/// Anomalies (or notes) by kind: a count and the first examples.
#[derive(Default)]
struct Tally(Mutex<BTreeMap<&'static str, Counted>>);

/// One kind's count, first examples, and (for what a viewer saw) counts by the replica the
/// viewer was connected to and by its shape.
#[derive(Default)]
struct Counted {
    n: u64,
    examples: Vec<Value>,
    by_replica: BTreeMap<String, u64>,
    by_shape: BTreeMap<&'static str, u64>,
    /// A viewer's first record, or one after it reconnected (and synced again).
    by_record: BTreeMap<&'static str, u64>,
}

impl Tally {
    fn note(&self, kind: &'static str, example: impl FnOnce() -> Value) {
        let mut m = self.0.lock().unwrap();
        let e = m.entry(kind).or_default();
        e.n += 1;
        if e.examples.len() < EXAMPLES {
            e.examples.push(example());
        }
    }

    /// What a viewer connected to `rec.target` saw (or failed to).
    fn note_in(
        &self,
        kind: &'static str,
        rec: &Record,
        shape: Shape,
        example: impl FnOnce() -> Value,
    ) {
        self.note(kind, example);
        let mut m = self.0.lock().unwrap();
        let e = m.entry(kind).or_default();
        *e.by_replica.entry(rec.target.to_string()).or_default() += 1;
        *e.by_shape.entry(shape.name()).or_default() += 1;
        let record = if rec.n == 0 { "first" } else { "reconnected" };
        *e.by_record.entry(record).or_default() += 1;
    }

    /// Per kind, the counts by replica, by shape and by record (kinds viewers noted).
    fn breakdown(&self) -> Value {
        let m = self.0.lock().unwrap();
        Value::Object(
            m.iter()
                .filter(|(_, e)| !e.by_replica.is_empty())
                .map(|(k, e)| {
                    (
                        k.to_string(),
                        json!({"by_replica": e.by_replica, "by_shape": e.by_shape, "by_record": e.by_record}),
                    )
                })
                .collect(),
        )
    }

    fn counts(&self, kinds: &[&'static str]) -> Value {
        let m = self.0.lock().unwrap();
        let mut out = serde_json::Map::new();
        for k in kinds {
            out.insert(k.to_string(), json!(m.get(k).map_or(0, |e| e.n)));
        }
        for (k, e) in m.iter() {
            out.entry(k.to_string()).or_insert(json!(e.n));
        }
        Value::Object(out)
    }

    fn examples(&self) -> Value {
        let m = self.0.lock().unwrap();
        Value::Object(
            m.iter()
                .map(|(k, e)| (k.to_string(), json!(e.examples)))
                .collect(),
        )
    }

    fn total(&self) -> u64 {
        self.0.lock().unwrap().values().map(|e| e.n).sum()
    }
}

/// The anomalies the audit fails on, in the report's order.
const ANOMALIES: [&str; 7] = [
    "lost",
    "out_of_order",
    "doubled",
    "leaked",
    "deaf",
    "unexpected",
    "truth_mismatch",
];

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        /// What happened, counted.
        #[derive(Default)]
        struct Counters { $($name: AtomicU64,)* }
        impl Counters {
            fn get(&self) -> BTreeMap<&'static str, u64> {
                BTreeMap::from([$((stringify!($name), self.$name.load(Ordering::Relaxed)),)*])
            }
        }
    };
}

counters!(
    // changers
    connects,
    disconnects,
    gender_switches,
    status_sets,
    status_acked,
    versions_acked,
    status_refused,
    heartbeats,
    // viewers
    updates,
    other_updates,
    frames,
    reads,
    resyncs,
    subscribes,
    unsubscribes,
    records,
    records_after_reconnect,
    records_after_drop,
    deliberate_reconnects,
    // faults
    viewer_drops,
    changer_drops,
    server_disconnects,
    connect_failures,
    refused_unavailable,
    watchdog,
);

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Debug)]
enum Phase {
    /// Changers change, viewers come and go and change their subscriptions.
    Run,
    /// Changes stopped: everyone stays, heartbeats, reconnects and resyncs if need be.
    Settle,
    /// Report.
    Final,
}

struct Shared {
    c: Common,
    o: AuditArgs,
    /// Every user id of this run starts with it: changers `{prefix}c{j}`, viewers `{prefix}v{i}`.
    prefix: String,
    start: i64,
    who: Vec<(Shape, Gender)>,
    changers: Vec<Mutex<Log>>,
    anomalies: Tally,
    notes: Tally,
    n: Counters,
    /// The last update of a changer any viewer received, and the last anything (an update, a
    /// read, a connect): the drain waits for quiet.
    last_push: AtomicI64,
    last_activity: AtomicI64,
    /// The last fault a client noticed (a drop, a refused connect, `unavailable`, a resync).
    last_fault: AtomicI64,
}

enum User {
    Changer(usize),
    Viewer(usize),
}

impl Shared {
    fn new(c: &Common, o: AuditArgs) -> Arc<Shared> {
        Arc::new(Shared {
            c: c.clone(),
            // This run's users are apart from any other run's.
            prefix: format!("{}-au{}-", c.prefix, now_us() % 100_000),
            start: now(),
            who: (0..o.viewers).map(|i| viewer_kind(o.seed, i)).collect(),
            changers: (0..o.changers)
                .map(|_| Mutex::new(Log::default()))
                .collect(),
            anomalies: Tally::default(),
            notes: Tally::default(),
            n: Counters::default(),
            last_push: AtomicI64::new(0),
            last_activity: AtomicI64::new(0),
            last_fault: AtomicI64::new(0),
            o,
        })
    }

    fn user_of(&self, id: &str) -> Option<User> {
        let rest = id.strip_prefix(&self.prefix)?;
        let n = rest.get(1..)?.parse().ok()?;
        match rest.as_bytes()[0] {
            b'c' if n < self.changers.len() => Some(User::Changer(n)),
            b'v' if n < self.who.len() => Some(User::Viewer(n)),
            _ => None,
        }
    }

    fn changer_id(&self, j: usize) -> String {
        format!("{}c{j}", self.prefix)
    }

    fn t_s(&self, t: i64) -> f64 {
        ((t - self.start) / 10_000) as f64 / 100.0
    }

    /// `t_s`, none for never (0).
    fn t_opt(&self, t: i64) -> Option<f64> {
        (t > 0).then(|| self.t_s(t))
    }

    fn fault(&self) {
        self.last_fault.fetch_max(now(), Ordering::Relaxed);
    }

    fn active(&self) {
        self.last_activity.fetch_max(now(), Ordering::Relaxed);
    }

    async fn connect(&self, target: SocketAddr, source: IpAddr, auth: &Value) -> Option<Client> {
        let r = tokio::time::timeout(CONNECT_TIMEOUT, Client::connect(target, source, auth)).await;
        match r {
            Ok(Ok((client, _))) => {
                self.active();
                Some(client)
            }
            _ => {
                inc(&self.n.connect_failures);
                self.fault();
                None
            }
        }
    }

    fn other_target(&self, rng: &mut Rng, not: SocketAddr) -> SocketAddr {
        let t = &self.c.target;
        if t.len() < 2 {
            return t[0];
        }
        loop {
            let x = t[rng.below(t.len() as u64) as usize];
            if x != not {
                return x;
            }
        }
    }
}

/// A presence frame read for the audit: `[event, payload]`, where a `presence-batch` payload
/// holds `updates`.
#[derive(Deserialize)]
struct Frame<'a>(serde::de::IgnoredAny, #[serde(borrow)] Seen<'a>);

#[derive(Deserialize)]
struct Seen<'a> {
    #[serde(rename = "userId", borrow, default)]
    user_id: Option<Cow<'a, str>>,
    #[serde(default)]
    version: Option<i64>,
    #[serde(borrow, default)]
    status: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    gender: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    updates: Option<Vec<Seen<'a>>>,
}

/// One viewer connection's record, from its connect to its end.
struct Record {
    /// The viewer's how-manieth connection (0: the first).
    n: u32,
    target: SocketAddr,
    started: i64,
    connected: i64,
    /// Per changer.
    views: Vec<View>,
    subs: Vec<Sub>,
    /// The last update of a changer received.
    last_push: i64,
    synced: bool,
}

impl Record {
    fn new(n: u32, target: SocketAddr, started: i64, changers: usize, shape: Shape) -> Record {
        Record {
            n,
            target,
            started,
            connected: now(),
            views: vec![View::default(); changers],
            subs: vec![Sub::No; if shape.subs() { changers } else { 0 }],
            last_push: 0,
            synced: false,
        }
    }
}

#[derive(Clone, Copy, Default)]
struct View {
    /// The last version pushed (versions pushed must only grow), and when (0: never).
    pushed: i64,
    pushed_at: i64,
    /// What the viewer shows: the newest version pushed or read, and its status.
    version: i64,
    status: Status,
    /// The handshake as a woman whose "gone" this viewer got (one per such handshake).
    gone_for: Option<u32>,
}

#[derive(Clone, Copy, Default, PartialEq, Debug)]
enum Sub {
    #[default]
    No,
    /// Asked at; updates may come before the ack.
    Asked(i64),
    /// Since the ack.
    Yes(i64),
    /// Unsubscribe asked; subscribed since.
    Leaving(i64),
    /// Unsubscribed (acked) at.
    Left(i64),
}

enum Req {
    Beat(i64),
    /// `presence:get`: when asked, of whom, and whether it is the record's initial sync.
    Get(i64, Vec<usize>, bool),
    Subscribe(i64, Vec<usize>, bool),
    Unsubscribe(Vec<usize>),
}

/// What a changer asked, by ack id.
enum Ask {
    Beat(i64),
    Status(Status),
}

enum End {
    Dropped,
    ServerDisconnect,
    Watchdog,
    Churn,
    Final,
}

struct Viewer {
    sh: Arc<Shared>,
    i: usize,
    shape: Shape,
    gender: Gender,
    rng: Rng,
    /// Subscription sockets: the changers it shows, and subscribes to on every connect.
    want: Vec<usize>,
    next_ack: u64,
    pending: HashMap<u64, Req>,
    sync_left: usize,
    need_sync: bool,
    need_refetch: bool,
}

impl Viewer {
    /// Viewer `i`, of the shape and gender the seed gives it; a subscription socket shows 5
    /// to 30 changers.
    fn new(sh: Arc<Shared>, i: usize) -> Viewer {
        let (shape, gender) = sh.who[i];
        let changers = sh.changers.len();
        let mut rng = Rng::new(sh.o.seed.wrapping_mul(31) ^ (i as u64 + 99));
        let mut want = Vec::new();
        if shape.subs() {
            let k = (5 + rng.below(26) as usize).min(changers);
            while want.len() < k {
                let j = rng.below(changers as u64) as usize;
                if !want.contains(&j) {
                    want.push(j);
                }
            }
        }
        Viewer {
            sh,
            i,
            shape,
            gender,
            rng,
            want,
            next_ack: 0,
            pending: HashMap::new(),
            sync_left: 0,
            need_sync: false,
            need_refetch: false,
        }
    }

    fn auth(&self) -> Value {
        let mut auth = json!({
            "token": token::mint(&self.sh.c.secret, &format!("{}v{}", self.sh.prefix, self.i), self.gender.as_str()),
        });
        if self.shape.subs() {
            auth["presence"] = json!("subscriptions");
        }
        if self.shape.batch() {
            auth["batch"] = json!(true);
        }
        auth
    }

    fn example(&self, rec: &Record, user: &str) -> Value {
        json!({
            "viewer": self.i, "shape": self.shape.name(), "viewer_gender": self.gender.as_str(),
            "record": rec.n, "replica": rec.target.to_string(),
            "record_start_s": self.sh.t_s(rec.started), "user": user,
        })
    }

    /// Connect, follow, and connect again, until the end. `ready` hears whether the first
    /// connect succeeded, and `permit` (the ramp's concurrency) is held until then.
    async fn run(
        mut self,
        mut phase: watch::Receiver<Phase>,
        ready: mpsc::UnboundedSender<bool>,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Option<(Viewer, Record)> {
        let sh = self.sh.clone();
        let source = sh.c.source(self.i);
        let mut target = sh.c.target_for(self.i);
        let mut ready = Some((ready, permit));
        // Why the last record ended (none yet), failed connects since, and the wait before
        // the next.
        let (mut n, mut attempt, mut after, mut delay) = (0u32, 0u32, None::<End>, Duration::ZERO);
        loop {
            if *phase.borrow() == Phase::Final {
                return None;
            }
            if !delay.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = until(&mut phase, Phase::Final) => return None,
                }
            }
            let started = now();
            let client = sh.connect(target, source, &self.auth()).await;
            if let Some((r, _permit)) = ready.take() {
                let _ = r.send(client.is_some());
            }
            let Some(client) = client else {
                delay = backoff(&mut self.rng, attempt);
                attempt += 1;
                target = sh.other_target(&mut self.rng, target);
                continue;
            };
            inc(&sh.n.records);
            match after {
                Some(End::Churn) => inc(&sh.n.records_after_reconnect),
                Some(_) => {
                    inc(&sh.n.records_after_reconnect);
                    inc(&sh.n.records_after_drop);
                }
                None => {}
            }
            let changers = sh.changers.len();
            let mut rec = Record::new(n, target, started, changers, self.shape);
            n += 1;
            let (end, client) = self.session(client, &mut rec, &mut phase).await;
            delay = backoff(&mut self.rng, 0);
            attempt = 1;
            match end {
                End::Final => {
                    client.close().await;
                    return Some((self, rec));
                }
                End::Churn => {
                    client.close().await;
                    target = sh.other_target(&mut self.rng, target);
                    delay = Duration::ZERO;
                }
                End::Dropped | End::ServerDisconnect | End::Watchdog => {
                    inc(match end {
                        End::ServerDisconnect => &sh.n.server_disconnects,
                        End::Watchdog => &sh.n.watchdog,
                        _ => &sh.n.viewer_drops,
                    });
                    sh.fault();
                    drop(client);
                    // socket.io-client tries the same address; behind a load balancer that
                    // is another replica when this one is down.
                    target = sh.other_target(&mut self.rng, target);
                }
            }
            after = Some(end);
        }
    }

    fn ack_id(&mut self, req: Req) -> u64 {
        self.next_ack += 1;
        self.pending.insert(self.next_ack, req);
        self.next_ack
    }

    /// The record's first snapshot: `presence:get` of every changer, or the subscriptions'.
    async fn sync(&mut self, client: &mut Client, rec: &mut Record) {
        self.need_sync = false;
        let t = now();
        if self.shape.subs() {
            let ids = self.want.clone();
            for &j in &ids {
                rec.subs[j] = match rec.subs[j] {
                    s @ (Sub::Yes(_) | Sub::Leaving(_)) => s,
                    _ => Sub::Asked(t),
                };
            }
            let body =
                json!({"userIds": ids.iter().map(|&j| self.sh.changer_id(j)).collect::<Vec<_>>()});
            let id = self.ack_id(Req::Subscribe(t, ids, true));
            inc(&self.sh.n.subscribes);
            let _ = client
                .emit("presence:subscribe", Some(&body), Some(id))
                .await;
        } else {
            let all: Vec<usize> = (0..self.sh.changers.len()).collect();
            self.sync_left = 0;
            for chunk in all.chunks(GET_CHUNK) {
                self.sync_left += 1;
                self.get(client, chunk, t, true).await;
            }
        }
    }

    async fn get(&mut self, client: &mut Client, ids: &[usize], t: i64, sync: bool) {
        let body =
            json!({"userIds": ids.iter().map(|&j| self.sh.changer_id(j)).collect::<Vec<_>>()});
        let id = self.ack_id(Req::Get(t, ids.to_vec(), sync));
        let _ = client.emit("presence:get", Some(&body), Some(id)).await;
    }

    /// `presence:resync` (or a refetch that failed): read again what it shows.
    async fn refetch(&mut self, client: &mut Client, rec: &Record) {
        self.need_refetch = false;
        let ids: Vec<usize> = if self.shape.subs() {
            (0..rec.subs.len())
                .filter(|&j| matches!(rec.subs[j], Sub::Asked(_) | Sub::Yes(_) | Sub::Leaving(_)))
                .collect()
        } else {
            (0..self.sh.changers.len()).collect()
        };
        let t = now();
        for chunk in ids.chunks(GET_CHUNK) {
            self.get(client, chunk, t, false).await;
        }
    }

    async fn session(
        &mut self,
        mut client: Client,
        rec: &mut Record,
        phase: &mut watch::Receiver<Phase>,
    ) -> (End, Client) {
        self.pending.clear();
        self.need_refetch = false;
        self.sync(&mut client, rec).await;
        let sh = self.sh.clone();
        let hb = Duration::from_millis(sh.o.heartbeat_ms.max(100));
        let first = tokio::time::Instant::now() + hb.mul_f64(self.rng.below(1000) as f64 / 1000.0);
        let mut tick = tokio::time::interval_at(first, hb);
        // The chance of leaving (and of changing a subscription) at each tick.
        let p_leave = sh.o.viewer_reconnects * hb.as_secs_f64() / sh.who.len().max(1) as f64;
        let p_resub = hb.as_secs_f64() / sh.o.resubscribe_s.max(0.001);
        loop {
            // The end and the ticks (heartbeats) first: a flood of updates must not
            // keep a viewer from its heartbeats, nor from stopping.
            tokio::select! {
                biased;
                r = phase.changed() => {
                    if r.is_err() || *phase.borrow() == Phase::Final {
                        return (End::Final, client);
                    }
                }
                _ = tick.tick() => {
                    let t = now();
                    let stale = self.pending.values().any(|r| matches!(r, Req::Beat(at) if t - at > WATCHDOG_US));
                    if stale {
                        return (End::Watchdog, client);
                    }
                    let id = self.ack_id(Req::Beat(t));
                    let _ = client.emit("user:heartbeat", None, Some(id)).await;
                    if self.need_sync {
                        self.sync(&mut client, rec).await;
                    }
                    if self.need_refetch {
                        self.refetch(&mut client, rec).await;
                    }
                    if *phase.borrow() == Phase::Run {
                        if chance(&mut self.rng, p_leave) {
                            inc(&sh.n.deliberate_reconnects);
                            return (End::Churn, client);
                        }
                        if self.shape.subs() && chance(&mut self.rng, p_resub) {
                            self.resubscribe(&mut client, rec).await;
                        }
                    }
                }
                m = client.recv() => match m {
                    None => return (End::Dropped, client),
                    Some(Incoming::Presence(t)) => self.on_push(rec, &t),
                    Some(Incoming::Ack(id, v)) => self.on_ack(rec, id, &v),
                    Some(Incoming::Event(t)) => {
                        if t.starts_with("41") {
                            return (End::ServerDisconnect, client);
                        }
                        if t.starts_with("42[\"presence:resync\"") {
                            inc(&sh.n.resyncs);
                            sh.fault();
                            self.refetch(&mut client, rec).await;
                        }
                    }
                    Some(Incoming::Other) => {}
                },
            }
        }
    }

    /// Follow one more changer, or stop following one (as a list scrolls).
    async fn resubscribe(&mut self, client: &mut Client, rec: &mut Record) {
        let changers = self.sh.changers.len();
        let t = now();
        if self.want.len() < 2 || (self.want.len() < changers && self.rng.below(2) == 0) {
            let j = loop {
                let j = self.rng.below(changers as u64) as usize;
                if !self.want.contains(&j) {
                    break j;
                }
            };
            self.want.push(j);
            if !matches!(rec.subs[j], Sub::Yes(_) | Sub::Leaving(_)) {
                rec.subs[j] = Sub::Asked(t);
            }
            let id = self.ack_id(Req::Subscribe(t, vec![j], false));
            inc(&self.sh.n.subscribes);
            let body = json!({"userIds": [self.sh.changer_id(j)]});
            let _ = client
                .emit("presence:subscribe", Some(&body), Some(id))
                .await;
        } else {
            let k = self.rng.below(self.want.len() as u64) as usize;
            let j = self.want.swap_remove(k);
            rec.subs[j] = match rec.subs[j] {
                Sub::Yes(since) | Sub::Leaving(since) => Sub::Leaving(since),
                _ => Sub::Leaving(t),
            };
            let id = self.ack_id(Req::Unsubscribe(vec![j]));
            inc(&self.sh.n.unsubscribes);
            let body = json!({"userIds": [self.sh.changer_id(j)]});
            let _ = client
                .emit("presence:unsubscribe", Some(&body), Some(id))
                .await;
        }
    }

    fn on_ack(&mut self, rec: &mut Record, id: u64, v: &Value) {
        let Some(req) = self.pending.remove(&id) else {
            return;
        };
        let ok = v["ok"] == true;
        if !ok && v["error"]["code"] == "unavailable" {
            inc(&self.sh.n.refused_unavailable);
            self.sh.fault();
        }
        let t = now();
        match req {
            Req::Beat(_) => {}
            Req::Get(asked, ids, sync) => {
                if ok {
                    self.apply_reads(rec, &ids, &v["presences"], asked, t);
                    if sync {
                        self.sync_left = self.sync_left.saturating_sub(1);
                        rec.synced |= self.sync_left == 0;
                    }
                } else if sync {
                    self.need_sync = true;
                } else {
                    self.need_refetch = true;
                }
            }
            Req::Subscribe(asked, ids, sync) => {
                for &j in &ids {
                    if let Sub::Asked(_) = rec.subs[j] {
                        rec.subs[j] = if ok { Sub::Yes(t) } else { Sub::Left(t) };
                    }
                }
                if ok {
                    self.apply_reads(rec, &ids, &v["presences"], asked, t);
                    rec.synced |= sync;
                } else {
                    // As a client would: ask again at the next tick.
                    self.need_sync = true;
                }
            }
            Req::Unsubscribe(ids) => {
                for j in ids {
                    if let Sub::Leaving(since) = rec.subs[j] {
                        rec.subs[j] = if ok { Sub::Left(t) } else { Sub::Yes(since) };
                        if !ok {
                            self.want.push(j);
                        }
                    }
                }
            }
        }
    }

    /// Presences of `ids` read (asked at `asked`, answered at `t`): what the viewer shows,
    /// unless it already shows newer; and nothing the viewer may not see.
    ///
    /// A read leaves out whom the viewer may not see, and nothing tells them from ids never
    /// seen (section 9), so a client shows nothing of someone left out, unless something of
    /// theirs was pushed since it asked (a change after the read). The audit once kept what
    /// the view showed before, and counted as `lost` every man who stopped following a woman,
    /// followed her again after she had come back as another gender (no "gone" reached him:
    /// he did not follow her then; the snapshot that leaves her out is all he is told), and
    /// so "still showed her online".
    fn apply_reads(
        &mut self,
        rec: &mut Record,
        ids: &[usize],
        presences: &Value,
        asked: i64,
        t: i64,
    ) {
        let sh = &self.sh;
        sh.active();
        let mut read = vec![false; rec.views.len()];
        for p in presences.as_array().into_iter().flatten() {
            let Some(User::Changer(j)) = p["userId"].as_str().and_then(|u| sh.user_of(u)) else {
                continue;
            };
            read[j] = true;
            inc(&sh.n.reads);
            let version = p["version"].as_i64().unwrap_or(0);
            let status = Status::parse(p["status"].as_str());
            if self.gender == Gender::Male {
                let log = sh.changers[j].lock().unwrap();
                let possible = log.genders_between(asked - SLACK_US, t + SLACK_US);
                if possible & FEMALE == 0 {
                    drop(log);
                    sh.anomalies.note_in("leaked", rec, self.shape, || {
                        let mut e = self.example(rec, &sh.changer_id(j));
                        e["read"] = json!(true);
                        e["version"] = json!(version);
                        e["status"] = json!(status.as_str());
                        e["payload_gender"] = p["gender"].clone();
                        e["possible_genders"] = json!(genders(possible));
                        e["at_s"] = json!(sh.t_s(t));
                        e
                    });
                }
            }
            let view = &mut rec.views[j];
            if version > view.version {
                view.version = version;
                view.status = status;
            }
        }
        for &j in ids.iter().filter(|&&j| !read[j]) {
            let view = rec.views[j];
            if view.pushed_at >= asked {
                continue;
            }
            if !matches!(view.status, Status::Unknown | Status::Offline) {
                // Shown online until this read said he may not see them: he was not told
                // they were gone (not following them then, or a change missed before a resync).
                sh.notes.note("taken_off_by_a_read", || {
                    let mut e = self.example(rec, &sh.changer_id(j));
                    e["shown_status"] = json!(view.status.as_str());
                    e["shown_version_s"] = json!(sh.t_s(view.version));
                    e["asked_s"] = json!(sh.t_s(asked));
                    e["user_pushed_s"] = json!(sh.t_opt(view.pushed_at));
                    e
                });
            }
            rec.views[j].version = 0;
            rec.views[j].status = Status::Unknown;
        }
    }

    fn on_push(&mut self, rec: &mut Record, text: &str) {
        let sh = self.sh.clone();
        inc(&sh.n.frames);
        let Some(Frame(_, p)) = text
            .strip_prefix("42")
            .and_then(|t| serde_json::from_str::<Frame>(t).ok())
        else {
            sh.notes.note(
                "unreadable_frame",
                || json!({"frame": format!("{text:.200}")}),
            );
            return;
        };
        let t = now();
        let one = std::slice::from_ref(&p);
        for u in p.updates.as_deref().unwrap_or(one) {
            let Some(id) = u.user_id.as_deref() else {
                continue;
            };
            match sh.user_of(id) {
                Some(User::Viewer(w)) => {
                    inc(&sh.n.other_updates);
                    if w == self.i {
                        continue; // a user always sees themselves
                    }
                    let unexpected = self.shape.subs();
                    let leaked = !self.gender.sees(sh.who[w].1);
                    for (kind, bad) in [("unexpected", unexpected), ("leaked", leaked)] {
                        if bad {
                            sh.anomalies.note_in(kind, rec, self.shape, || {
                                let mut e = self.example(rec, id);
                                e["user_gender"] = json!(sh.who[w].1.as_str());
                                e["version"] = json!(u.version);
                                e["status"] = json!(u.status);
                                e["at_s"] = json!(sh.t_s(t));
                                e
                            });
                        }
                    }
                }
                Some(User::Changer(j)) => self.on_change(rec, j, id, u, t),
                None => {}
            }
        }
    }

    fn on_change(&mut self, rec: &mut Record, j: usize, id: &str, u: &Seen, t: i64) {
        let sh = &self.sh;
        inc(&sh.n.updates);
        sh.last_push.fetch_max(t, Ordering::Relaxed);
        sh.last_activity.fetch_max(t, Ordering::Relaxed);
        rec.last_push = t;
        let version = u.version.unwrap_or(0);
        let status = Status::parse(u.status.as_deref());
        let example = |rec: &Record, why: &str, prev: i64| {
            let mut e = self.example(rec, id);
            e["why"] = json!(why);
            e["version"] = json!(version);
            e["previous"] = json!(prev);
            e["status"] = json!(status.as_str());
            e["payload_gender"] = json!(u.gender);
            e["version_s"] = json!(sh.t_s(version));
            e["at_s"] = json!(sh.t_s(t));
            e
        };
        if self.shape.subs() {
            // A change made after the unsubscribe was acked must not come; one made before
            // may still be on its way (in a batch being gathered, or a backlog).
            let (unexpected, late) = match rec.subs[j] {
                Sub::Asked(_) | Sub::Yes(_) | Sub::Leaving(_) => (false, false),
                Sub::Left(at) => (version > at + SLACK_US, t - at > UNSUBSCRIBE_GRACE_US),
                Sub::No => (true, false),
            };
            let subscription = |e: &mut Value| {
                e["subscription"] = json!(match rec.subs[j] {
                    Sub::Left(at) => format!("unsubscribed at {} s", sh.t_s(at)),
                    _ => "never subscribed".into(),
                });
            };
            if unexpected {
                sh.anomalies.note_in("unexpected", rec, self.shape, || {
                    let mut e = example(rec, "a change made while not subscribed", 0);
                    subscription(&mut e);
                    e
                });
            } else if late {
                sh.notes.note("delivered_after_unsubscribe", || {
                    let mut e = example(rec, "made while subscribed, came late", 0);
                    subscription(&mut e);
                    e
                });
            }
        }
        let view = rec.views[j];
        if self.gender == Gender::Male {
            let log = sh.changers[j].lock().unwrap();
            let possible = log.genders_between(version - SLACK_US, version + SLACK_US);
            if possible & FEMALE == 0 {
                // A man may get one "gone" (offline) of a woman he could see who is no longer
                // one; nothing else of someone who is not a woman.
                let gone_for = log.last_female(version + SLACK_US);
                let could_see =
                    log.genders_between(rec.started - SLACK_US, version + SLACK_US) & FEMALE != 0;
                let history: Vec<Value> = log
                    .attempts
                    .iter()
                    .rev()
                    .take(4)
                    .map(|a| json!({"gender": a.gender.as_str(), "start_s": sh.t_s(a.start), "end_s": if a.end == i64::MAX { None } else { Some(sh.t_s(a.end)) }, "ok": a.ok}))
                    .collect();
                drop(log);
                if status == Status::Offline
                    && could_see
                    && gone_for.is_some()
                    && view.gone_for != gone_for
                {
                    rec.views[j].gone_for = gone_for;
                } else {
                    sh.anomalies.note_in("leaked", rec, self.shape, || {
                        let mut e = example(rec, "not a woman at that version", view.version);
                        e["possible_genders"] = json!(genders(possible));
                        e["handshakes_newest_first"] = json!(history);
                        e
                    });
                }
            }
        }
        let pushed = rec.views[j].pushed;
        if version <= pushed {
            let kind = if version == pushed {
                "doubled"
            } else {
                "out_of_order"
            };
            sh.anomalies.note_in(kind, rec, self.shape, || {
                example(rec, "pushed before", pushed)
            });
        } else {
            rec.views[j].pushed = version;
        }
        let view = &mut rec.views[j];
        view.pushed_at = t;
        if version > view.version {
            view.version = version;
            view.status = status;
        }
    }
}

/// Wait until the phase is at least `p` (or the sender is gone).
async fn until(phase: &mut watch::Receiver<Phase>, p: Phase) {
    loop {
        if *phase.borrow_and_update() >= p {
            return;
        }
        if phase.changed().await.is_err() {
            return;
        }
    }
}

async fn recv_opt(client: &mut Option<Client>) -> Option<Incoming> {
    match client {
        Some(c) => c.recv().await,
        None => std::future::pending().await,
    }
}

/// One changer: connects, leaves, sets statuses, heartbeats, comes back as another gender;
/// reconnects with backoff when its connection drops, and sets its status again then (as an
/// app would). Everything it does is logged for the checks.
async fn changer(sh: Arc<Shared>, j: usize, mut phase: watch::Receiver<Phase>) {
    let mut rng = Rng::new(sh.o.seed.wrapping_mul(7_777_777) ^ (j as u64 + 0xC0FFEE));
    let mut gender = match rng.below(100) {
        0..50 => Gender::Female,
        50..85 => Gender::Male,
        _ => Gender::Other,
    };
    let slot = sh.who.len() + j;
    let source = sh.c.source(slot);
    let mut target = sh.c.target_for(slot);
    let user = sh.changer_id(j);
    let mut client: Option<Client> = None;
    let mut pending: HashMap<u64, Ask> = HashMap::new();
    let mut next_ack = 0u64;
    let mut seq = 0u64;
    // What its connection should show (set again after a reconnect).
    let mut wanted = Status::Online;
    let mut attempt = 0u32;
    let hb = Duration::from_millis(sh.o.heartbeat_ms.max(100));
    let mut beat = tokio::time::interval(hb);
    let period = Duration::from_secs_f64(sh.changers.len() as f64 / sh.o.rate.max(0.001));
    let tnow = tokio::time::Instant::now;
    let mut next_action = tnow() + period.mul_f64(rng.below(1000) as f64 / 1000.0);
    let mut reconnect_at = Some(tnow());
    loop {
        let running = *phase.borrow() == Phase::Run;
        tokio::select! {
            r = phase.changed() => {
                if r.is_err() || *phase.borrow() == Phase::Final {
                    break;
                }
            }
            m = recv_opt(&mut client) => {
                let gone = match m {
                    None => Some(&sh.n.changer_drops),
                    Some(Incoming::Event(t)) if t.starts_with("41") => Some(&sh.n.server_disconnects),
                    Some(Incoming::Ack(id, v)) => {
                        if let Some(Ask::Status(status)) = pending.remove(&id) {
                            let ok = v["ok"] == true;
                            let mut log = sh.changers[j].lock().unwrap();
                            if ok {
                                inc(&sh.n.status_acked);
                                log.status = status;
                                wanted = status;
                                let version = v["presence"]["version"].as_i64().unwrap_or(0);
                                let g = v["presence"]["gender"].as_str().and_then(Gender::parse).unwrap_or(gender);
                                if version > log.last_version {
                                    inc(&sh.n.versions_acked);
                                    log.last_version = version;
                                    log.acked.push(Acked { version, gender: g });
                                }
                            } else {
                                inc(&sh.n.status_refused);
                                if v["error"]["code"] == "unavailable" {
                                    inc(&sh.n.refused_unavailable);
                                    sh.fault();
                                }
                            }
                        }
                        None
                    }
                    _ => None,
                };
                if let Some(counter) = gone {
                    inc(counter);
                    sh.fault();
                    client = None;
                    pending.clear();
                    sh.changers[j].lock().unwrap().connected = false;
                    target = sh.other_target(&mut rng, target);
                    reconnect_at = Some(tnow() + backoff(&mut rng, 0));
                    attempt = 1;
                }
            }
            _ = tokio::time::sleep_until(reconnect_at.unwrap_or_else(tnow)), if reconnect_at.is_some() => {
                let auth = json!({"token": token::mint(&sh.c.secret, &user, gender.as_str()), "presence": "subscriptions"});
                let k = {
                    let mut log = sh.changers[j].lock().unwrap();
                    log.attempts.push(Attempt { start: now(), end: i64::MAX, gender, ok: false });
                    log.attempts.len() - 1
                };
                let c = sh.connect(target, source, &auth).await;
                {
                    let mut log = sh.changers[j].lock().unwrap();
                    let a = &mut log.attempts[k];
                    a.end = now();
                    a.ok = c.is_some();
                    if c.is_some() {
                        log.connected = true;
                        log.status = Status::Online;
                        log.gender = Some(gender);
                    }
                }
                match c {
                    Some(c) => {
                        inc(&sh.n.connects);
                        client = Some(c);
                        reconnect_at = None;
                        attempt = 0;
                        if wanted != Status::Online {
                            seq += 1;
                            set_status(&mut client, &mut pending, &mut next_ack, wanted, seq, j).await;
                            inc(&sh.n.status_sets);
                        }
                    }
                    None => {
                        target = sh.other_target(&mut rng, target);
                        reconnect_at = Some(tnow() + backoff(&mut rng, attempt));
                        attempt += 1;
                    }
                }
            }
            _ = beat.tick() => {
                if let Some(c) = client.as_mut() {
                    let t = now();
                    if pending.values().any(|r| matches!(r, Ask::Beat(at) if t - at > WATCHDOG_US)) {
                        inc(&sh.n.watchdog);
                        sh.fault();
                        client = None;
                        pending.clear();
                        sh.changers[j].lock().unwrap().connected = false;
                        target = sh.other_target(&mut rng, target);
                        reconnect_at = Some(tnow() + backoff(&mut rng, 0));
                        continue;
                    }
                    next_ack += 1;
                    pending.insert(next_ack, Ask::Beat(t));
                    let _ = c.emit("user:heartbeat", None, Some(next_ack)).await;
                }
            }
            _ = tokio::time::sleep_until(next_action), if running => {
                next_action = tnow() + period.mul_f64(0.5 + rng.below(1000) as f64 / 1000.0);
                let Some(c) = client.as_mut() else { continue };
                match rng.below(100) {
                    0..45 => {
                        let cur = sh.changers[j].lock().unwrap().status;
                        let status = match rng.below(3) {
                            0 if cur != Status::Online => Status::Online,
                            0 | 1 => Status::Live,
                            _ => Status::InCall,
                        };
                        seq += 1;
                        set_status(&mut client, &mut pending, &mut next_ack, status, seq, j).await;
                        inc(&sh.n.status_sets);
                    }
                    45..60 => {
                        inc(&sh.n.heartbeats);
                        let _ = c.emit("user:heartbeat", None, None).await;
                    }
                    r => {
                        // Leave: for a few seconds, or (a fifth of the time) at once, to come
                        // back with another gender's token.
                        let switch = r >= 80;
                        if let Some(c) = client.take() {
                            c.close().await;
                        }
                        pending.clear();
                        {
                            let mut log = sh.changers[j].lock().unwrap();
                            log.connected = false;
                        }
                        inc(&sh.n.disconnects);
                        wanted = Status::Online;
                        let away = if switch {
                            inc(&sh.n.gender_switches);
                            gender = match (gender, rng.below(2)) {
                                (Gender::Female, 0) | (Gender::Other, 0) => Gender::Male,
                                (Gender::Male, 0) | (Gender::Other, 1) => Gender::Female,
                                _ => Gender::Other,
                            };
                            Duration::from_millis(rng.below(300))
                        } else {
                            Duration::from_millis(2000 + rng.below(8000))
                        };
                        target = sh.other_target(&mut rng, target);
                        reconnect_at = Some(tnow() + away);
                    }
                }
            }
        }
    }
    if let Some(c) = client {
        c.close().await;
    }
}

/// `presence:set-status` with new details (a change every time, unless `online` again).
async fn set_status(
    client: &mut Option<Client>,
    pending: &mut HashMap<u64, Ask>,
    next_ack: &mut u64,
    status: Status,
    seq: u64,
    j: usize,
) {
    let Some(c) = client.as_mut() else { return };
    let body = match status {
        Status::Live => json!({"status": "live", "details": {"streamId": format!("s{j}-{seq}")}}),
        Status::InCall => {
            json!({"status": "in_call", "details": {"callId": format!("c{j}-{seq}")}})
        }
        _ => json!({"status": "online"}),
    };
    *next_ack += 1;
    pending.insert(*next_ack, Ask::Status(status));
    let _ = c
        .emit("presence:set-status", Some(&body), Some(*next_ack))
        .await;
}

/// One changer as every replica answered for it: version, status, gender.
type Truth = Option<(i64, Status, Option<Gender>)>;

/// The checks of a viewer's record that is still connected at the end, against the truth:
/// (b) its last view of everyone it may see is the truth, and (d) it is not deaf: a change it
/// should have heard was made after the last fault (and after it connected), so it heard
/// something since. Returns the views checked, and whether it could be checked for deafness.
fn check_end(
    sh: &Shared,
    v: &Viewer,
    rec: &Record,
    truth: &[Truth],
    last_fault: i64,
) -> (u64, bool) {
    let mut checked = 0u64;
    let male = v.gender == Gender::Male;
    for (j, t) in truth.iter().enumerate() {
        let Some((version, status, gender)) = *t else {
            continue;
        };
        if v.shape.subs() && !matches!(rec.subs[j], Sub::Yes(_)) {
            continue;
        }
        let id = sh.changer_id(j);
        let view = rec.views[j];
        let visible = !male || gender == Some(Gender::Female);
        let e = |why: &str| {
            let mut e = v.example(rec, &id);
            e["why"] = json!(why);
            e["shown_version"] = json!(view.version);
            e["shown_status"] = json!(view.status.as_str());
            e["shown_version_s"] = json!(sh.t_s(view.version));
            e["truth_version"] = json!(version);
            e["truth_version_s"] = json!(sh.t_s(version));
            e["truth_status"] = json!(status.as_str());
            e["truth_gender"] = json!(gender.map(Gender::as_str));
            e["synced"] = json!(rec.synced);
            e["last_update_s"] = json!(sh.t_opt(rec.last_push));
            e["user_pushed_s"] = json!(sh.t_opt(view.pushed_at));
            if let Some(Sub::Yes(since)) = rec.subs.get(j) {
                e["subscribed_since_s"] = json!(sh.t_s(*since));
            }
            e
        };
        checked += 1;
        let wrong = if !visible {
            (view.version > 0 && view.status != Status::Offline)
                .then_some(("lost", "shown online though it may no longer see them"))
        } else if view.version == 0 {
            (version > rec.started).then_some(("lost", "changed since it connected, never shown"))
        } else if view.version < version {
            Some(("lost", "shows an older version"))
        } else if view.version == version && view.status != status {
            Some(("lost", "same version, another status"))
        } else if view.version > version {
            Some(("truth_mismatch", "a viewer shows a newer version"))
        } else {
            None
        };
        if let Some((kind, why)) = wrong {
            sh.anomalies.note_in(kind, rec, v.shape, || e(why));
        }
    }
    let after = last_fault.max(rec.connected);
    let should = (0..sh.changers.len()).find_map(|j| {
        let since = match (v.shape.subs(), rec.subs.get(j)) {
            (false, _) => i64::MIN,
            (true, Some(Sub::Yes(since))) => *since,
            _ => return None,
        };
        let log = sh.changers[j].lock().unwrap();
        log.acked
            .iter()
            .find(|a| {
                a.version > after + DEAF_MARGIN_US
                    && a.version > since + DEAF_MARGIN_US
                    && v.gender.sees(a.gender)
            })
            .map(|a| (j, a.version))
    });
    if let Some((j, version)) = should
        && rec.last_push <= after
    {
        sh.anomalies.note_in("deaf", rec, v.shape, || {
            let mut e = v.example(rec, &sh.changer_id(j));
            e["change_version_s"] = json!(sh.t_s(version));
            e["last_fault_s"] = json!(sh.t_s(last_fault));
            e["last_update_s"] = json!(sh.t_opt(rec.last_push));
            e
        });
    }
    (checked, should.is_some())
}

/// What one replica answers for every changer (`GET /api/presence?ids=`, as a woman: she may
/// see everyone).
async fn read_truth(sh: &Shared, target: SocketAddr) -> Result<Vec<Truth>, String> {
    let token = token::mint(&sh.c.secret, &format!("{}truth", sh.prefix), "female");
    let mut out = vec![None; sh.changers.len()];
    let ids: Vec<String> = (0..sh.changers.len()).map(|j| sh.changer_id(j)).collect();
    let mut conn = crate::http::Conn::open(target).await?;
    for chunk in ids.chunks(GET_CHUNK) {
        let (status, body) = conn
            .get(&format!("/api/presence?ids={}", chunk.join(",")), &token)
            .await?;
        if status != 200 {
            return Err(format!(
                "HTTP {status}: {:.200}",
                String::from_utf8_lossy(&body)
            ));
        }
        let v: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        for p in v["presences"].as_array().into_iter().flatten() {
            if let Some(User::Changer(j)) = p["userId"].as_str().and_then(|u| sh.user_of(u)) {
                out[j] = Some((
                    p["version"].as_i64().unwrap_or(0),
                    Status::parse(p["status"].as_str()),
                    p["gender"].as_str().and_then(Gender::parse),
                ));
            }
        }
    }
    Ok(out)
}

/// The fault injector's log: `<epoch ms> <what>` per line.
fn read_fault_log(path: &str) -> Vec<(i64, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (ms, what) = l.split_once(' ')?;
            Some((ms.trim().parse().ok()?, what.trim().to_string()))
        })
        .collect()
}

pub(super) async fn audit(c: &Common, o: AuditArgs) -> Result<Value, String> {
    if o.changers == 0 || o.changers > 500 || o.viewers == 0 {
        return Err("audit: --viewers at least 1, --changers 1 to 500".into());
    }
    let sh = Shared::new(c, o);
    let o = &sh.o;
    // Viewers and changers apart: at the end the viewers stop recording before any changer
    // leaves (its offline would be newer than the truth just read).
    let (phase, phase_rx) = watch::channel(Phase::Run);
    let (cphase, cphase_rx) = watch::channel(Phase::Run);

    // Viewers first. Women and others with broadcast sockets see every viewer connect, so
    // they connect last (they then see fewer of the others' connects).
    let mut order: Vec<usize> = (0..o.viewers).collect();
    order.sort_by_key(|&i| {
        let (shape, gender) = sh.who[i];
        !shape.subs() && gender != Gender::Male
    });
    let sem = Arc::new(Semaphore::new(c.concurrency.max(1)));
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<bool>();
    let mut vtasks = Vec::with_capacity(o.viewers);
    for i in order {
        let v = Viewer::new(sh.clone(), i);
        let (sem, ready_tx, phase_rx) = (sem.clone(), ready_tx.clone(), phase_rx.clone());
        vtasks.push(tokio::spawn(async move {
            let permit = sem.acquire_owned().await.ok();
            v.run(phase_rx, ready_tx, permit).await
        }));
    }
    drop(ready_tx);
    let mut up = 0usize;
    for _ in 0..o.viewers {
        up += ready_rx.recv().await.unwrap_or(false) as usize;
    }
    let ramp_s = (now() - sh.start) as f64 / 1e6;
    // Let the first snapshots come back before anyone changes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    eprintln!(
        "audit: {up} of {} viewers connected in {ramp_s:.1} s; changes start ({} s)",
        o.viewers, o.secs
    );
    let changes_from = now();
    let ctasks: Vec<_> = (0..o.changers)
        .map(|j| tokio::spawn(changer(sh.clone(), j, cphase_rx.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(o.secs)).await;
    let _ = phase.send(Phase::Settle);
    let _ = cphase.send(Phase::Settle);
    let changes_until = now();
    eprintln!(
        "audit: changes stop; settling {} s, then until {} s quiet",
        o.settle_s, o.quiet_s
    );
    tokio::time::sleep(Duration::from_secs(o.settle_s)).await;
    let deadline = now() + (o.drain_max_s.saturating_sub(o.settle_s) as i64) * 1_000_000;
    let quiet = (o.quiet_s as i64) * 1_000_000;
    let drained = loop {
        let last = sh
            .last_push
            .load(Ordering::Relaxed)
            .max(sh.last_activity.load(Ordering::Relaxed));
        if now() - last >= quiet {
            break true;
        }
        if now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let quiet_at = now();
    eprintln!(
        "audit: {} after {:.1} s; reading the truth from every replica",
        if drained { "quiet" } else { "not quiet" },
        (quiet_at - changes_until) as f64 / 1e6
    );

    // The truth, from every replica (they must agree).
    let mut answers = Vec::new();
    let mut truth_errors = Vec::new();
    for &t in &c.target {
        match read_truth(&sh, t).await {
            Ok(a) => answers.push((t, a)),
            Err(e) => truth_errors.push(json!({"replica": t.to_string(), "error": e})),
        }
    }
    if answers.is_empty() {
        return Err(format!("audit: no replica answered: {truth_errors:?}"));
    }
    let truth: Vec<Truth> = answers[0].1.clone();
    for j in 0..o.changers {
        let all: Vec<_> = answers.iter().map(|(_, a)| a[j]).collect();
        let id = sh.changer_id(j);
        if all.iter().any(|a| *a != all[0] || a.is_none()) {
            sh.anomalies.note("truth_mismatch", || {
                json!({"user": id, "why": "replicas disagree", "replicas": answers.iter().map(|(t, a)| json!({"replica": t.to_string(), "answer": a[j].map(|(v, s, g)| json!({"version": v, "status": s.as_str(), "gender": g.map(Gender::as_str)}))})).collect::<Vec<_>>()})
            });
        }
        let Some((version, status, gender)) = truth[j] else {
            continue;
        };
        let log = sh.changers[j].lock().unwrap();
        let e = |why: &str| {
            json!({"user": id, "why": why, "version": version, "version_s": sh.t_s(version),
                   "status": status.as_str(), "gender": gender.map(Gender::as_str),
                   "connected": log.connected, "set_status": log.status.as_str(),
                   "token_gender": log.gender.map(Gender::as_str)})
        };
        if (status != Status::Offline) != log.connected {
            sh.anomalies.note("truth_mismatch", || {
                e(if log.connected {
                    "offline while connected"
                } else {
                    "online with no connection"
                })
            });
        }
        if log.gender.is_some() && gender != log.gender {
            sh.anomalies
                .note("truth_mismatch", || e("not the gender of its last token"));
        }
        if log.connected && status != log.status {
            sh.notes.note("status_not_as_set", || {
                e("the connection set another status")
            });
        }
    }

    // The last fault: what the clients noticed, and what the injector logged.
    let fault_log = o
        .fault_log
        .as_deref()
        .map(read_fault_log)
        .unwrap_or_default();
    let injected_last = fault_log.iter().map(|(ms, _)| ms * 1000).max().unwrap_or(0);
    let seen_last = sh.last_fault.load(Ordering::Relaxed);
    let last_fault = injected_last.max(seen_last);

    let _ = phase.send(Phase::Final);
    let mut ends = Vec::with_capacity(vtasks.len());
    for t in vtasks {
        ends.push(t.await);
    }
    let _ = cphase.send(Phase::Final);
    for t in ctasks {
        let _ = t.await;
    }
    let mut alive = 0u64;
    let mut synced = 0u64;
    let mut checked_views = 0u64;
    let mut deaf_checked = 0u64;
    for end in ends {
        let Ok(Some((v, rec))) = end else {
            continue;
        };
        alive += 1;
        synced += rec.synced as u64;
        let (views, deaf) = check_end(&sh, &v, &rec, &truth, last_fault);
        checked_views += views;
        deaf_checked += deaf as u64;
    }

    let mut by_shape = serde_json::Map::new();
    for shape in Shape::ALL {
        let mut g = serde_json::Map::new();
        for gender in [Gender::Male, Gender::Female, Gender::Other] {
            let n = sh.who.iter().filter(|w| **w == (shape, gender)).count();
            g.insert(gender.as_str().into(), json!(n));
        }
        g.insert(
            "total".into(),
            json!(sh.who.iter().filter(|w| w.0 == shape).count()),
        );
        by_shape.insert(shape.name().into(), Value::Object(g));
    }
    let n = sh.n.get();
    let anomalies_total = sh.anomalies.total();
    Ok(json!({
        "scenario": "audit",
        "run": sh.prefix,
        "replicas": c.target.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
        "viewers": o.viewers, "changers": o.changers, "secs": o.secs, "rate": o.rate,
        "sockets": by_shape,
        "viewers_connected_at_start": up,
        "ramp_s": ramp_s,
        "records": {
            "total": n["records"], "after_reconnect": n["records_after_reconnect"],
            "after_drop": n["records_after_drop"], "deliberate_reconnects": n["deliberate_reconnects"],
            "alive_at_end": alive, "synced_at_end": synced,
        },
        "changes": {
            "connects": n["connects"], "disconnects": n["disconnects"],
            "gender_switches": n["gender_switches"], "status_sets": n["status_sets"],
            "status_acked": n["status_acked"], "new_versions_acked": n["versions_acked"],
            "status_refused": n["status_refused"], "extra_heartbeats": n["heartbeats"],
        },
        "updates_received": n["updates"],
        "viewer_updates_received": n["other_updates"],
        "frames_received": n["frames"],
        "presences_read": n["reads"],
        "subscriptions": {"subscribe": n["subscribes"], "unsubscribe": n["unsubscribes"]},
        "faults_seen": {
            "viewer_drops": n["viewer_drops"], "changer_drops": n["changer_drops"],
            "server_disconnects": n["server_disconnects"], "connect_failures": n["connect_failures"],
            "refused_unavailable": n["refused_unavailable"], "resyncs": n["resyncs"],
            "watchdog": n["watchdog"],
            "last_seen_s": if seen_last > 0 { Some(sh.t_s(seen_last)) } else { None },
        },
        "fault_log": fault_log.iter().map(|(ms, what)| json!({"at_s": sh.t_s(ms * 1000), "what": what})).collect::<Vec<_>>(),
        "last_fault_s": if last_fault > 0 { Some(sh.t_s(last_fault)) } else { None },
        "timeline_s": {
            "changes_from": sh.t_s(changes_from), "changes_until": sh.t_s(changes_until),
            "quiet_at": sh.t_s(quiet_at), "drained": drained,
        },
        "truth_errors": truth_errors,
        "checked": {"views": checked_views, "viewers_for_deafness": deaf_checked},
        "anomalies": sh.anomalies.counts(&ANOMALIES),
        "anomalies_total": anomalies_total,
        "anomalies_where": sh.anomalies.breakdown(),
        "examples": sh.anomalies.examples(),
        "notes": sh.notes.counts(&[]),
        "note_examples": sh.notes.examples(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    const S: i64 = 1_000_000;

    /// A run of these viewers (kinds) and `changers` changers, connected nowhere.
    fn setup(kinds: &[(Shape, Gender)], changers: usize) -> Arc<Shared> {
        let (v, c) = (kinds.len().to_string(), changers.to_string());
        let cli = crate::Cli::parse_from(["loadgen", "audit", "--viewers", &v, "--changers", &c]);
        let crate::Scenario::Audit(o) = cli.scenario else {
            unreachable!()
        };
        let mut sh = Shared::new(&cli.common, o);
        Arc::get_mut(&mut sh).unwrap().who = kinds.to_vec();
        sh
    }

    fn record(sh: &Shared, i: usize, started: i64) -> Record {
        let target = "127.0.0.1:1".parse().unwrap();
        Record::new(0, target, started, sh.changers.len(), sh.who[i].0)
    }

    fn update(sh: &Shared, user: &str, version: i64, status: &str) -> String {
        format!(
            r#"42["presence-update",{{"userId":"{}{user}","status":"{status}","online":{},"gender":"x","version":{version},"details":null}}]"#,
            sh.prefix,
            status != "offline"
        )
    }

    fn handshake(sh: &Shared, j: usize, gender: Gender, start: i64, ok: bool) {
        let mut log = sh.changers[j].lock().unwrap();
        log.attempts.push(Attempt {
            start,
            end: start + 1000,
            gender,
            ok,
        });
    }

    fn count(sh: &Shared, kind: &str) -> u64 {
        sh.anomalies.0.lock().unwrap().get(kind).map_or(0, |e| e.n)
    }

    #[test]
    fn the_genders_a_changer_may_have_had() {
        let sh = setup(&[(Shape::Broadcast, Gender::Male)], 1);
        let t = 1_000 * S;
        handshake(&sh, 0, Gender::Female, t, true);
        handshake(&sh, 0, Gender::Male, t + 10 * S, true);
        handshake(&sh, 0, Gender::Female, t + 20 * S, false);
        handshake(&sh, 0, Gender::Male, t + 30 * S, true);
        let log = sh.changers[0].lock().unwrap();
        let (f, m) = (Gender::Female.bit(), Gender::Male.bit());
        assert_eq!(log.genders_at(t - 1), 0, "never seen");
        assert_eq!(log.genders_at(t + 500), f, "during its first handshake");
        assert_eq!(log.genders_at(t + 5 * S), f);
        assert_eq!(
            log.genders_at(t + 10 * S + 500),
            f | m,
            "during a handshake: either"
        );
        assert_eq!(log.genders_at(t + 15 * S), m);
        // A handshake that failed may have reached the server all the same.
        assert_eq!(log.genders_at(t + 25 * S), m | f);
        assert_eq!(log.genders_at(t + 40 * S), m, "until one succeeds");
        assert_eq!(log.genders_between(t + 5 * S, t + 15 * S), f | m);
        assert_eq!(log.last_female(t + 15 * S), Some(0));
        assert_eq!(log.last_female(t + 25 * S), Some(2));
    }

    #[test]
    fn counts_versions_pushed_twice_or_backwards() {
        let sh = setup(&[(Shape::BroadcastBatch, Gender::Female)], 2);
        let mut v = Viewer::new(sh.clone(), 0);
        let mut rec = record(&sh, 0, 0);
        v.on_push(&mut rec, &update(&sh, "c0", 100, "online"));
        v.on_push(&mut rec, &update(&sh, "c0", 100, "online"));
        v.on_push(&mut rec, &update(&sh, "c0", 50, "live"));
        let batch = format!(
            r#"42["presence-batch",{{"updates":[{{"userId":"{p}c0","status":"live","version":200}},{{"userId":"{p}c1","status":"online","version":7}}]}}]"#,
            p = sh.prefix
        );
        v.on_push(&mut rec, &batch);
        assert_eq!((count(&sh, "doubled"), count(&sh, "out_of_order")), (1, 1));
        assert_eq!(
            (rec.views[0].version, rec.views[0].status),
            (200, Status::Live)
        );
        assert_eq!(
            (rec.views[1].version, rec.views[1].status),
            (7, Status::Online)
        );
        assert_eq!(sh.n.updates.load(Ordering::Relaxed), 5);
        assert_eq!(count(&sh, "leaked"), 0, "a woman sees everyone");
    }

    #[test]
    fn a_man_hears_of_women_only_and_of_a_woman_who_changed_once() {
        let kinds = [
            (Shape::Broadcast, Gender::Male),
            (Shape::Broadcast, Gender::Male),
            (Shape::Broadcast, Gender::Female),
        ];
        let sh = setup(&kinds, 1);
        let t = now() - 100 * S;
        handshake(&sh, 0, Gender::Female, t, true);
        handshake(&sh, 0, Gender::Male, t + 10 * S, true);
        let mut v = Viewer::new(sh.clone(), 0);
        let mut rec = record(&sh, 0, t - S);
        v.on_push(&mut rec, &update(&sh, "c0", t + 5 * S, "live"));
        assert_eq!(count(&sh, "leaked"), 0);
        // Gone (offline, greater version) once she is a man: allowed once.
        v.on_push(&mut rec, &update(&sh, "c0", t + 10 * S + 500, "offline"));
        v.on_push(&mut rec, &update(&sh, "c0", t + 20 * S, "offline"));
        assert_eq!(count(&sh, "leaked"), 0, "either gender within a handshake");
        v.on_push(&mut rec, &update(&sh, "c0", t + 21 * S, "offline"));
        assert_eq!(count(&sh, "leaked"), 1, "a second gone is a leak");
        v.on_push(&mut rec, &update(&sh, "c0", t + 22 * S, "online"));
        assert_eq!(count(&sh, "leaked"), 2);
        // Other viewers: a man is a leak, a woman is not, and oneself never.
        v.on_push(&mut rec, &update(&sh, "v1", t, "online"));
        v.on_push(&mut rec, &update(&sh, "v2", t, "online"));
        v.on_push(&mut rec, &update(&sh, "v0", t, "online"));
        assert_eq!(count(&sh, "leaked"), 3);
        // A man who connected after she became one may not even hear she is gone.
        let mut late = Viewer::new(sh.clone(), 1);
        let mut rec = record(&sh, 1, t + 15 * S);
        late.on_push(&mut rec, &update(&sh, "c0", t + 20 * S, "offline"));
        assert_eq!(count(&sh, "leaked"), 4);
        // Reads: she is read as what she is now (a man) by a man.
        let p = json!([{"userId": sh.changer_id(0), "version": t + 20 * S, "status": "online"}]);
        late.apply_reads(&mut rec, &[0], &p, t + 30 * S, t + 30 * S + 1000);
        assert_eq!(count(&sh, "leaked"), 5);
    }

    #[test]
    fn a_subscription_socket_hears_only_whom_it_follows() {
        let kinds = [
            (Shape::SubscriptionsBatch, Gender::Female),
            (Shape::Broadcast, Gender::Female),
        ];
        let sh = setup(&kinds, 4);
        let mut v = Viewer::new(sh.clone(), 0);
        let t = now();
        let mut rec = record(&sh, 0, t - 10 * S);
        rec.subs = vec![
            Sub::Yes(t - 9 * S),
            Sub::No,
            Sub::Left(t - 5 * S),
            Sub::Left(t - S / 2),
        ];
        for j in 0..4 {
            v.on_push(&mut rec, &update(&sh, &format!("c{j}"), t - S, "online"));
        }
        assert_eq!(
            count(&sh, "unexpected"),
            2,
            "c1 never followed, c2 left before"
        );
        // A change made before the unsubscribe, come late: noted, not an anomaly.
        v.on_push(&mut rec, &update(&sh, "c2", t - 5 * S - 1000, "live"));
        assert_eq!(count(&sh, "unexpected"), 2);
        assert_eq!(
            sh.notes.0.lock().unwrap()["delivered_after_unsubscribe"].n,
            1
        );
        v.on_push(&mut rec, &update(&sh, "v1", t, "online"));
        assert_eq!(count(&sh, "unexpected"), 3, "another viewer");
    }

    /// The run's 8 `lost` (all men, all subscription sockets): he followed her while she was
    /// a woman, stopped following her, she came back as another gender meanwhile (nothing is
    /// said to a socket that does not follow her), and he followed her again. The snapshot
    /// leaves her out, as it must (section 9: nothing tells an id he may not see from one never
    /// seen), so a client shows nothing of her; the audit kept showing what he saw of her
    /// before he stopped following her.
    #[test]
    fn a_man_who_follows_again_someone_he_may_no_longer_see_shows_nothing_of_them() {
        let sh = setup(&[(Shape::Subscriptions, Gender::Male)], 1);
        let t = now();
        handshake(&sh, 0, Gender::Female, t - 100 * S, true);
        let mut v = Viewer::new(sh.clone(), 0);
        let mut rec = record(&sh, 0, t - 99 * S);
        let ack = |v: &mut Viewer, rec: &mut Record, req: Req, presences: Value| {
            let id = v.ack_id(req);
            v.on_ack(
                rec,
                id,
                &json!({"ok": true, "presences": presences, "subscribed": 1}),
            );
        };
        // Followed while she is a woman, in a call.
        rec.subs[0] = Sub::Asked(t - 98 * S);
        let her = json!([{"userId": sh.changer_id(0), "version": t - 98 * S, "status": "in_call"}]);
        ack(
            &mut v,
            &mut rec,
            Req::Subscribe(t - 98 * S, vec![0], true),
            her,
        );
        assert_eq!(rec.views[0].status, Status::InCall);
        // Unfollowed; then she leaves and comes back at once as another gender.
        rec.subs[0] = Sub::Leaving(t - 98 * S);
        let id = v.ack_id(Req::Unsubscribe(vec![0]));
        v.on_ack(&mut rec, id, &json!({"ok": true, "subscribed": 0}));
        handshake(&sh, 0, Gender::Other, t - 50 * S, true);
        // Followed again: the snapshot leaves her out, and nothing is pushed of her.
        rec.subs[0] = Sub::Asked(t - 40 * S);
        ack(
            &mut v,
            &mut rec,
            Req::Subscribe(t - 40 * S, vec![0], false),
            json!([]),
        );
        assert!(matches!(rec.subs[0], Sub::Yes(_)));
        let truth: Vec<Truth> = vec![Some((t - 30 * S, Status::Live, Some(Gender::Other)))];
        check_end(&sh, &v, &rec, &truth, 0);
        assert_eq!(
            count(&sh, "lost"),
            0,
            "he shows nothing of her: {:?}",
            sh.anomalies.examples()
        );
        assert_eq!(
            (rec.views[0].version, rec.views[0].status),
            (0, Status::Unknown)
        );
    }

    /// A read that leaves someone out takes them off the view, but not what was pushed of
    /// them since it was asked (a change after the read, e.g. her coming back as a woman).
    #[test]
    fn a_read_that_leaves_someone_out_keeps_what_was_pushed_since_it_was_asked() {
        let sh = setup(&[(Shape::Broadcast, Gender::Male)], 2);
        let t = now();
        for j in 0..2 {
            handshake(&sh, j, Gender::Female, t - 100 * S, true);
        }
        let mut v = Viewer::new(sh.clone(), 0);
        let mut rec = record(&sh, 0, t - 99 * S);
        v.on_push(&mut rec, &update(&sh, "c0", t - 90 * S, "live"));
        v.on_push(&mut rec, &update(&sh, "c1", t - 90 * S, "live"));
        // A refetch (after a presence:resync) asked now; c1's new change is pushed before the
        // answer, which leaves both out (it was read before that change).
        let asked = now();
        v.on_push(&mut rec, &update(&sh, "c1", t + S, "online"));
        let id = v.ack_id(Req::Get(asked, vec![0, 1], false));
        v.on_ack(&mut rec, id, &json!({"ok": true, "presences": []}));
        assert_eq!(rec.views[0].status, Status::Unknown, "left out: not shown");
        assert_eq!(
            (rec.views[1].version, rec.views[1].status),
            (t + S, Status::Online),
            "pushed since the question: kept"
        );
    }

    #[test]
    fn the_last_view_is_the_truth_and_nobody_is_deaf() {
        let kinds = [
            (Shape::Broadcast, Gender::Female),
            (Shape::Broadcast, Gender::Male),
        ];
        let sh = setup(&kinds, 4);
        let t = 1_000 * S;
        let truth: Vec<Truth> = vec![
            Some((t + 5 * S, Status::Live, Some(Gender::Female))),
            Some((t + 6 * S, Status::Online, Some(Gender::Male))),
            Some((t + 7 * S, Status::Offline, Some(Gender::Other))),
            Some((t - 5 * S, Status::Offline, Some(Gender::Female))),
        ];
        let woman = Viewer::new(sh.clone(), 0);
        let mut rec = record(&sh, 0, t);
        rec.views[0] = View {
            version: t + 5 * S,
            status: Status::Live,
            ..View::default()
        };
        rec.views[1] = View {
            version: t + 4 * S,
            status: Status::Online,
            ..View::default()
        };
        // c2 never shown though changed since (lost); c3 never shown, unchanged since (fine).
        assert_eq!(check_end(&sh, &woman, &rec, &truth, 0), (4, false));
        assert_eq!(count(&sh, "lost"), 2);
        // A man: c1 is a man now, so he must not show him online; c2, c3 are not his to see.
        let man = Viewer::new(sh.clone(), 1);
        let mut rec = record(&sh, 1, t);
        rec.views[0].version = t + 5 * S;
        rec.views[0].status = Status::Live;
        rec.views[1].version = t + 3 * S;
        rec.views[1].status = Status::Online;
        check_end(&sh, &man, &rec, &truth, 0);
        assert_eq!(count(&sh, "lost"), 3);
        // Deaf: a change he may see was acked after the last fault, and he heard nothing since.
        sh.changers[0].lock().unwrap().acked.push(Acked {
            version: t + 20 * S,
            gender: Gender::Female,
        });
        rec.connected = t;
        rec.last_push = t + 9 * S;
        assert!(check_end(&sh, &man, &rec, &truth, t + 10 * S).1);
        assert_eq!(count(&sh, "deaf"), 1);
        rec.last_push = t + 21 * S;
        check_end(&sh, &man, &rec, &truth, t + 10 * S);
        assert_eq!(count(&sh, "deaf"), 1);
        // Not a change he may see: not deaf whatever he heard.
        sh.changers[0].lock().unwrap().acked[0].gender = Gender::Male;
        rec.last_push = 0;
        assert!(!check_end(&sh, &man, &rec, &truth, t + 10 * S).1);
        assert_eq!(count(&sh, "deaf"), 1);
    }
}
