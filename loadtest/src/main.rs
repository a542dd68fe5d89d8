//! `loadgen`: load scenarios against presence-gateway over real Socket.IO WebSocket framing.
//!
//! Scenarios: `idle` (clients heartbeating), `fanout` (changers set statuses, viewers measure
//! delivery latency and count missing or doubled updates), `storm` (connect as fast as
//! possible until `/api/health` shows everyone online), `churn` (clients come and go while
//! viewers check that announcements alternate, once each), `audit` (thousands of viewers of
//! every shape check delivery under faults: nothing lost, out of order, doubled, leaked, or
//! deaf; `loadtest/audit.sh` injects the faults). Connections are spread over
//! 127.0.0.x source addresses and over every `--url`; `--procs K` splits the clients over K
//! processes (one process holds about 19,000 sockets here). Given the server's pids, it reports
//! RSS per connection and CPU.

mod http;
mod measure;
mod scenarios;
mod sio;
mod token;

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

#[derive(Parser, Debug, Clone)]
#[command(name = "loadgen", about = "Load scenarios for presence-gateway")]
pub struct Cli {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub scenario: Scenario,
}

#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Gateway addresses (host:port), comma-separated; clients are spread over them.
    #[arg(
        long,
        default_value = "127.0.0.1:3000",
        value_delimiter = ',',
        global = true
    )]
    pub target: Vec<SocketAddr>,
    /// The gateway's JWT_SECRET (HS256), to mint tokens.
    #[arg(
        long,
        env = "JWT_SECRET",
        default_value = "loadtest-secret-0123456789abcdef-0123",
        global = true
    )]
    pub secret: String,
    /// Spread client connections over 127.0.0.1 … 127.0.0.N.
    #[arg(long, default_value_t = 16, global = true)]
    pub source_ips: u8,
    /// Server pids to sample for RSS and CPU, comma-separated.
    #[arg(long, value_delimiter = ',', global = true)]
    pub pids: Vec<u32>,
    /// Split clients over this many processes (idle and storm).
    #[arg(long, default_value_t = 1, global = true)]
    pub procs: usize,
    /// Connections being opened at once, per process.
    #[arg(long, default_value_t = 200, global = true)]
    pub concurrency: usize,
    /// Section 11's load (fanout, subs): blocks each viewer and changer holds.
    #[arg(long, default_value_t = 0, global = true)]
    pub rules_blocks: usize,
    /// Section 11's load (fanout, subs): the share of viewers (subs: of users) who turn invisible, in percent.
    #[arg(long, default_value_t = 0.0, global = true)]
    pub rules_invisible_pct: f64,
    /// User id prefix, so runs do not collide.
    #[arg(long, default_value = "lg", global = true)]
    pub prefix: String,
    /// Gender of idle, storm and churn clients. `male` (the default) sees only women, so an
    /// all-male crowd measures connections without cross-traffic; `female` sees everyone
    /// (every connect is then announced to every client: N² deliveries).
    #[arg(long, default_value = "male", global = true)]
    pub gender: String,
    /// A Redis (host:port) whose `INFO commandstats` is sampled over the idle hold, to report
    /// Redis commands per heartbeat.
    #[arg(long, global = true)]
    pub redis: Option<SocketAddr>,
    /// Print one JSON object instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Internal: this process is worker I of the split (set by --procs).
    #[arg(long, hide = true, global = true)]
    pub worker: Option<usize>,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Scenario {
    /// N clients connect and heartbeat; report memory per connection and CPU per heartbeat rate.
    Idle {
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        #[arg(long, default_value_t = 5000)]
        heartbeat_ms: u64,
        /// How long to hold the connections once all are up.
        #[arg(long, default_value_t = 30)]
        hold_s: u64,
    },
    /// Viewers receive status changes from changers; latency, missing and doubled deliveries.
    Fanout {
        #[arg(long, default_value_t = 1000)]
        viewers: usize,
        #[arg(long, default_value_t = 10)]
        changers: usize,
        /// Changes per second, all changers together.
        #[arg(long, default_value_t = 20.0)]
        rate: f64,
        #[arg(long, default_value_t = 20)]
        duration_s: u64,
        /// Viewers' gender. Changers are women, so every viewer sees them; men (the
        /// default) see only women, so viewers do not also receive each other's connects.
        #[arg(long, default_value = "male")]
        viewer_gender: String,
        /// Viewers ask for `presence-batch` frames (`auth.batch`).
        #[arg(long)]
        batch: bool,
        #[command(flatten)]
        reading: Reading,
    },
    /// Subscription sockets (section 9): each client is a user who subscribes to `per` other
    /// clients (the first `watching`; the rest to users who never change) and changes status
    /// now and then. Latency, missing, CPU per change.
    Subs {
        #[arg(long, default_value_t = 5000)]
        subscribers: usize,
        /// Clients watching other clients (default: all of them).
        #[arg(long)]
        watching: Option<usize>,
        #[arg(long, default_value_t = 50)]
        per: usize,
        /// Changes per second, all clients together.
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        #[arg(long, default_value_t = 30)]
        duration_s: u64,
        /// Subscribers ask for `presence-batch` frames too.
        #[arg(long)]
        batch: bool,
        /// How often each client sends `user:heartbeat`.
        #[arg(long, default_value_t = 5000)]
        heartbeat_ms: u64,
        /// Start the changes at this wall-clock time (ms since the epoch), once connected.
        #[arg(long)]
        start_at_ms: Option<u64>,
        #[command(flatten)]
        reading: Reading,
    },
    /// Connect N clients as fast as possible; time until /api/health shows them online.
    Storm {
        #[arg(long, default_value_t = 10000)]
        clients: usize,
    },
    /// `GET /api/users/search` with a mix of queries (short, common, rare, none), as a man
    /// and as a woman; latency per query.
    Search {
        /// Passes over the query mix.
        #[arg(long, default_value_t = 100)]
        rounds: usize,
    },
    /// `GET /api/stats` as a dashboard: the first request of a window cold (nothing cached on
    /// the replica), the rest cached; latency of each.
    Report {
        #[arg(long, default_value_t = 50)]
        rounds: usize,
        /// Report windows asked, as `from,to` pairs separated by `;` (RFC 3339).
        #[arg(long)]
        windows: String,
    },
    /// Delivery you can prove: viewers of every shape (broadcast, subscriptions, batches; men,
    /// women, others) over the replicas record every update while changers connect, leave,
    /// set statuses and come back as another gender; then each viewer's last view is checked
    /// against the truth. Counts lost, out of order, doubled, leaked and deaf (run it under
    /// faults with `loadtest/audit.sh`).
    Audit(AuditArgs),
    /// Clients connect and disconnect repeatedly; viewers check each announcement comes once.
    Churn {
        #[arg(long, default_value_t = 200)]
        clients: usize,
        #[arg(long, default_value_t = 50)]
        viewers: usize,
        #[arg(long, default_value_t = 20)]
        duration_s: u64,
    },
}

#[derive(Args, Debug, Clone)]
pub struct AuditArgs {
    /// Viewer sockets (a mix of broadcast, subscription and batching sockets, of men, women
    /// and others).
    #[arg(long, default_value_t = 3000)]
    pub viewers: usize,
    /// Users who change (at most 500).
    #[arg(long, default_value_t = 100)]
    pub changers: usize,
    /// How long the changers change (after every viewer connected).
    #[arg(long, default_value_t = 600)]
    pub secs: u64,
    /// Changers' actions per second, all together (connect, leave, set a status, heartbeat,
    /// come back as another gender).
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Viewers that leave and come back (a new record), per second, all together.
    #[arg(long, default_value_t = 0.5)]
    pub viewer_reconnects: f64,
    /// Each subscription socket subscribes to or unsubscribes from one changer about this
    /// often (seconds).
    #[arg(long, default_value_t = 30.0)]
    pub resubscribe_s: f64,
    /// How often every socket sends `user:heartbeat` (keep it under the replicas'
    /// PRESENCE_HEARTBEAT_TIMEOUT_MS).
    #[arg(long, default_value_t = 3000)]
    pub heartbeat_ms: u64,
    /// After the changes stop, wait at least this long (sweeps and graces of connections
    /// lost in faults end within it) ...
    #[arg(long, default_value_t = 15)]
    pub settle_s: u64,
    /// ... and then until no update arrived for this long ...
    #[arg(long, default_value_t = 3)]
    pub quiet_s: u64,
    /// ... but no longer than this in all.
    #[arg(long, default_value_t = 90)]
    pub drain_max_s: u64,
    /// The fault injector's log (`<epoch ms> <what>` per line, as `audit.sh` writes it): the
    /// last fault in it counts for the deaf check, and the schedule is echoed in the report.
    #[arg(long)]
    pub fault_log: Option<String>,
    /// Seed of the viewers' shapes and the changers' choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

impl Common {
    pub fn source(&self, i: usize) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(
            127,
            0,
            0,
            1 + (i % self.source_ips.max(1) as usize) as u8,
        ))
    }

    pub fn target_for(&self, i: usize) -> SocketAddr {
        self.target[i % self.target.len()]
    }
}

fn main() {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let result = rt.block_on(scenarios::run(cli.clone()));
    match result {
        Ok(report) => {
            if cli.common.json || cli.common.worker.is_some() {
                println!("{report}");
            } else {
                print!("{}", human(&report, ""));
            }
        }
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::exit(1);
        }
    }
}

/// The report as indented `name: value` lines, for a person at a terminal.
fn human(v: &serde_json::Value, indent: &str) -> String {
    let mut out = String::new();
    if let serde_json::Value::Object(map) = v {
        for (k, val) in map {
            let name = k.replace('_', " ");
            match val {
                serde_json::Value::Object(_) => {
                    out.push_str(&format!("{indent}{name}:\n"));
                    out.push_str(&human(val, &format!("{indent}  ")));
                }
                serde_json::Value::Number(n) => match n.as_f64() {
                    Some(f) if n.is_f64() => out.push_str(&format!("{indent}{name}: {f:.3}\n")),
                    _ => out.push_str(&format!("{indent}{name}: {n}\n")),
                },
                serde_json::Value::Null => {}
                other => out.push_str(&format!("{indent}{name}: {other}\n")),
            }
        }
    }
    out
}

/// How `fanout` and `subs` read their clients (see `scenarios/mux.rs`).
#[derive(Args, Debug, Clone)]
pub struct Reading {
    /// Threads that read the clients (and, in `subs`, send their changes and heartbeats), each
    /// polling thousands of sockets (the default, the instrument from session 10 on); 0: one
    /// tokio task per client, the instrument before, kept to compare the two.
    #[arg(long, default_value_t = 1)]
    pub readers: usize,
    /// After a poll that found bytes, a reader sleeps this long before it looks again, so
    /// that a burst's deliveries wait for it in the sockets instead of each waking it: a
    /// server writing to a sleeping reader on loopback pays for that wake-up, which a
    /// client on another machine never costs it. With `--stamp read` latency is overstated
    /// by at most this; with `--stamp kernel` not at all.
    #[arg(long, default_value_t = 500)]
    pub nap_us: u64,
    /// When a delivery counts as arrived: `kernel`, when its bytes reached the client's
    /// socket (the kernel's receive timestamp, SO_TIMESTAMPNS), so the reader's own turn on
    /// the cores is not in the figure; `read`, when a reader read them (sessions 10-12).
    #[arg(long, value_enum, default_value_t = Stamp::Kernel)]
    pub stamp: Stamp,
}

/// See [`Reading::stamp`].
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stamp {
    Kernel,
    Read,
}
