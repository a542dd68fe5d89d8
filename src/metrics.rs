//! Prometheus metrics: the names of the contract, in one place.
//!
//! The exporter's recorder is process-global, so it is installed once and shared; several
//! gateways in one process (integration tests) then share one registry, told apart by the
//! `node` label that every per-replica figure carries.

use metrics::{
    Counter, Gauge, Histogram, counter, describe_counter, describe_gauge, describe_histogram,
    gauge, histogram,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// Fan-out latency buckets, in seconds: the goal is p99 under 50 ms, so resolve well below it.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Install the recorder if it is not yet: metric handles made before it would record nothing.
pub fn install() {
    handle();
}

fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(LATENCY_BUCKETS)
            .expect("buckets are not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder is installed, which this crate never does.
        let _ = metrics::set_global_recorder(recorder);
        describe();
        handle
    })
}

fn describe() {
    describe_gauge!("presence_online_users", "Users online, cluster-wide");
    describe_counter!(
        "presence_blocks_total",
        "Blocks made on this replica (section 11)"
    );
    describe_gauge!(
        "presence_invisible_users",
        "Users who set invisible (section 11), cluster-wide"
    );
    describe_gauge!(
        "presence_peak_online_users",
        "Most users online at once, cluster-wide"
    );
    describe_gauge!(
        "presence_online_users_by_gender",
        "Users online by gender, cluster-wide"
    );
    describe_counter!(
        "presence_connections_total",
        "Connections opened on this replica"
    );
    describe_counter!(
        "presence_disconnections_total",
        "Connections closed on this replica"
    );
    describe_counter!(
        "presence_swept_total",
        "Silent connections removed by this replica's sweeps"
    );
    describe_counter!(
        "presence_heartbeats_total",
        "user:heartbeat events received by this replica"
    );
    describe_counter!(
        "presence_updates_published_total",
        "Presence changes committed by this replica"
    );
    describe_counter!(
        "presence_updates_delivered_total",
        "presence-update messages sent to sockets by this replica"
    );
    describe_counter!(
        "presence_updates_lagged_total",
        "Presence changes this replica's fan-out missed by falling behind"
    );
    describe_counter!(
        "presence_updates_repeated_total",
        "Presence changes this replica received again (a version not above the last one it sent for the user) and did not send"
    );
    describe_counter!(
        "presence_updates_deferred_total",
        "presence-update messages that found a socket's queue full and waited in its backlog"
    );
    describe_counter!(
        "presence_updates_dropped_total",
        "presence-update messages dropped because a socket's backlog was full"
    );
    describe_counter!(
        "presence_slow_sockets_disconnected_total",
        "Sockets disconnected because the backlogs of all sockets together exceeded SOCKET_BACKLOG_TOTAL"
    );
    describe_counter!(
        "presence_connects_abandoned_total",
        "Sockets admitted by the handshake whose namespace connect never completed (their transport closed meanwhile), recorded as closed"
    );
    describe_counter!(
        "presence_direct_fallbacks_total",
        "Sockets whose presence frames the library sends instead of the direct path, by reason"
    );
    describe_counter!(
        "gateway_database_queries_total",
        "Database reads made for clients' requests, by query (last_known: users the presence store does not hold; search)"
    );
    describe_counter!(
        "presence_flap_holds_total",
        "Offlines held PRESENCE_FLAP_HOLD_MS because their user flapped past PRESENCE_FLAP_LIMIT"
    );
    describe_counter!(
        "presence_batches_sent_total",
        "presence-batch messages sent by this replica (section 9)"
    );
    describe_gauge!(
        "presence_subscriptions",
        "Subscribed user ids over all of this replica's subscription sockets (section 9)"
    );
    describe_counter!(
        "presence_resyncs_total",
        "presence:resync messages sent to sockets (fan-out lagged or the bus was resubscribed)"
    );
    describe_counter!(
        "gateway_rejected_requests_total",
        "Socket requests refused, by code"
    );
    describe_counter!(
        "gateway_handshake_failures_total",
        "Socket.IO handshakes refused, by reason"
    );
    describe_gauge!(
        "gateway_connected_sockets",
        "Sockets connected to this replica, by namespace"
    );
    describe_counter!(
        "webhook_events_total",
        "Webhook events by result: delivered (2xx), retried (per attempt), dropped (refused, too old or past WEBHOOK_QUEUE_MAX)"
    );
    describe_counter!(
        "webhook_changes_unsent_total",
        "Committed changes that became no webhook request: flap (cancelled by the offline delay), type (not in WEBHOOK_EVENTS), no_event (a change while offline)"
    );
    describe_gauge!(
        "webhook_queue_depth",
        "Webhook events waiting on this replica"
    );
    describe_gauge!(
        "webhook_last_error_timestamp_seconds",
        "When a webhook request last failed (unix seconds)"
    );
    describe_histogram!(
        "webhook_delivery_latency_seconds",
        metrics::Unit::Seconds,
        "From a change's commit to the webhook receiver's 2xx"
    );
    describe_histogram!(
        "presence_fanout_latency_seconds",
        metrics::Unit::Seconds,
        "From a change's commit (committing side's clock) to its emission on this replica"
    );
    describe_histogram!(
        "presence_fanout_stage_seconds",
        metrics::Unit::Seconds,
        "From a change's commit to each stage of its fan-out on this replica: start (it reached the fan-out), first_write and last_write (the first and the last socket it was written or handed to)"
    );
    describe_counter!("stats_events_total", "Statistics events recorded, by type");
    describe_counter!(
        "stats_events_retired_total",
        "Statistics events deleted past STATS_RETENTION_DAYS (their rollups are kept)"
    );
    describe_counter!(
        "stats_report_cache_hits_total",
        "Statistics reports answered from this replica's cache"
    );
    describe_counter!(
        "stats_dashboards_resynced_total",
        "Dashboards told to resync because they fell further behind than their backlog"
    );
    describe_gauge!(
        "gateway_dependency_up",
        "Whether this replica reaches a configured dependency (redis, database): 1 or 0"
    );
    describe_gauge!(
        "db_pending_writes",
        "Users whose presence waits to be written to PostgreSQL (at most one entry per user)"
    );
    describe_counter!(
        "db_write_errors_total",
        "Failed presence write batches (each is kept and retried), and changes the writer missed"
    );
    describe_counter!(
        "db_presence_writes_dropped_total",
        "Presence writes the database refused on their data, dropped after a few tries"
    );
    describe_counter!(
        "db_presence_writes_total",
        "User rows written to PostgreSQL by the presence writer"
    );
}

/// Handles to this replica's metrics; cheap to clone, cheap to update.
#[derive(Clone)]
pub struct Metrics {
    pub node: Arc<str>,
    pub connections: Counter,
    pub disconnections: Counter,
    pub swept: Counter,
    pub heartbeats: Counter,
    pub published: Counter,
    pub delivered: Counter,
    pub lagged: Counter,
    pub repeated: Counter,
    pub deferred: Counter,
    pub dropped: Counter,
    pub resyncs: Counter,
    pub slow_disconnected: Counter,
    pub connects_abandoned: Counter,
    pub batches_sent: Counter,
    pub subscriptions: Gauge,
    pub fanout_latency: Histogram,
    /// `presence_fanout_stage_seconds{stage}`: start, first_write, last_write.
    pub fanout_stages: [Histogram; 3],
    pub sockets_root: Gauge,
    pub sockets_widget: Gauge,
    pub sockets_dashboard: Gauge,
    pub online_users: Gauge,
    pub invisible_users: Gauge,
    pub peak_online: Gauge,
    /// The same activity as running totals this replica can read back (for its report).
    pub activity: Arc<Activity>,
}

/// Running totals of this replica's fan-out, which Prometheus handles cannot be read back
/// from: the replica's report (the console's rates and latency) is made of them.
#[derive(Default)]
pub struct Activity {
    published: AtomicU64,
    delivered: AtomicU64,
    fanout_us: AtomicU64,
    fanout_n: AtomicU64,
    fanout_us_max: AtomicU64,
}

/// [`Activity`] as read at one instant; the fan-out latency's greatest is since the last read.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ActivityTotals {
    pub published: u64,
    pub delivered: u64,
    /// Microseconds of fan-out latency summed over `fanout_n` changes.
    pub fanout_us: u64,
    pub fanout_n: u64,
    pub fanout_us_max: u64,
}

impl Activity {
    pub fn published(&self) {
        self.published.fetch_add(1, Ordering::Relaxed);
    }

    pub fn fanned_out(&self, delivered: u64, latency_us: u64) {
        self.delivered.fetch_add(delivered, Ordering::Relaxed);
        self.fanout_us.fetch_add(latency_us, Ordering::Relaxed);
        self.fanout_n.fetch_add(1, Ordering::Relaxed);
        self.fanout_us_max.fetch_max(latency_us, Ordering::Relaxed);
    }

    pub fn delivered(&self, n: u64) {
        self.delivered.fetch_add(n, Ordering::Relaxed);
    }

    /// The totals, and the greatest latency since the previous call (reset).
    pub fn read(&self) -> ActivityTotals {
        ActivityTotals {
            published: self.published.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            fanout_us: self.fanout_us.load(Ordering::Relaxed),
            fanout_n: self.fanout_n.load(Ordering::Relaxed),
            fanout_us_max: self.fanout_us_max.swap(0, Ordering::Relaxed),
        }
    }
}

impl Metrics {
    pub fn new(node: &str) -> Self {
        handle();
        let n = node.to_string();
        let m = Metrics {
            node: Arc::from(node),
            connections: counter!("presence_connections_total", "node" => n.clone()),
            disconnections: counter!("presence_disconnections_total", "node" => n.clone()),
            swept: counter!("presence_swept_total", "node" => n.clone()),
            heartbeats: counter!("presence_heartbeats_total", "node" => n.clone()),
            published: counter!("presence_updates_published_total", "node" => n.clone()),
            delivered: counter!("presence_updates_delivered_total", "node" => n.clone()),
            lagged: counter!("presence_updates_lagged_total", "node" => n.clone()),
            repeated: counter!("presence_updates_repeated_total", "node" => n.clone()),
            deferred: counter!("presence_updates_deferred_total", "node" => n.clone()),
            dropped: counter!("presence_updates_dropped_total", "node" => n.clone()),
            resyncs: counter!("presence_resyncs_total", "node" => n.clone()),
            slow_disconnected: counter!("presence_slow_sockets_disconnected_total", "node" => n.clone()),
            connects_abandoned: counter!("presence_connects_abandoned_total", "node" => n.clone()),
            batches_sent: counter!("presence_batches_sent_total", "node" => n.clone()),
            subscriptions: gauge!("presence_subscriptions", "node" => n.clone()),
            fanout_latency: histogram!("presence_fanout_latency_seconds", "node" => n.clone()),
            fanout_stages: ["start", "first_write", "last_write"].map(|stage| {
                histogram!("presence_fanout_stage_seconds", "node" => n.clone(), "stage" => stage)
            }),
            sockets_root: gauge!("gateway_connected_sockets", "node" => n.clone(), "namespace" => "/"),
            sockets_widget: gauge!("gateway_connected_sockets", "node" => n.clone(), "namespace" => "/widget"),
            sockets_dashboard: gauge!("gateway_connected_sockets", "node" => n.clone(), "namespace" => "/dashboard"),
            online_users: gauge!("presence_online_users"),
            invisible_users: gauge!("presence_invisible_users"),
            peak_online: gauge!("presence_peak_online_users"),
            activity: Arc::default(),
        };
        // Counters appear in the exposition only once touched; dashboards and alerts
        // should find every series from the first scrape.
        for c in [
            &m.connections,
            &m.disconnections,
            &m.swept,
            &m.heartbeats,
            &m.published,
            &m.delivered,
            &m.lagged,
            &m.deferred,
            &m.dropped,
            &m.resyncs,
            &m.slow_disconnected,
            &m.connects_abandoned,
            &m.batches_sent,
        ] {
            c.increment(0);
        }
        // Labelled counters too, so dashboards and alerts find the families before any error.
        for code in [
            "bad_request",
            "forbidden",
            "rate_limited",
            "unavailable",
            "internal",
        ] {
            counter!("gateway_rejected_requests_total", "node" => n.clone(), "code" => code)
                .increment(0);
        }
        for why in crate::wire::Fallback::ALL {
            counter!("presence_direct_fallbacks_total", "node" => n.clone(), "reason" => why.as_str())
                .increment(0);
        }
        counter!("presence_flap_holds_total", "node" => n.clone()).increment(0);
        for reason in ["unauthorized", "forbidden", "unavailable", "rate_limited"] {
            counter!("gateway_handshake_failures_total", "node" => n.clone(), "reason" => reason)
                .increment(0);
        }
        m.sockets_root.increment(0.0);
        m.subscriptions.increment(0.0);
        m.sockets_widget.increment(0.0);
        m.sockets_dashboard.increment(0.0);
        for t in [
            "widget_opened",
            "new_message",
            "user_online",
            "user_offline",
        ] {
            counter!("stats_events_total", "type" => t).increment(0);
        }
        counter!("stats_events_retired_total").increment(0);
        for r in ["delivered", "retried", "dropped"] {
            counter!("webhook_events_total", "result" => r).increment(0);
        }
        // Nothing waits here until webhooks run (and the alerts read it either way).
        gauge!("webhook_queue_depth").set(0.0);
        m
    }

    /// Handles the writer keeps: (`db_write_errors_total`, `db_presence_writes_total`,
    /// `db_presence_writes_dropped_total`, `db_pending_writes`) of `node`.
    pub fn writer_handles(node: &str) -> (Counter, Counter, Counter, Gauge) {
        let n = node.to_string();
        (
            counter!("db_write_errors_total", "node" => n.clone()),
            counter!("db_presence_writes_total", "node" => n.clone()),
            counter!("db_presence_writes_dropped_total", "node" => n.clone()),
            gauge!("db_pending_writes", "node" => n),
        )
    }

    pub fn rejected(&self, code: &'static str) {
        counter!("gateway_rejected_requests_total", "node" => self.node.to_string(), "code" => code).increment(1);
    }

    /// A socket's presence frames go through the library (`presence_direct_fallbacks_total`).
    pub fn direct_fallback(&self, why: crate::wire::Fallback) {
        counter!("presence_direct_fallbacks_total", "node" => self.node.to_string(), "reason" => why.as_str()).increment(1);
    }

    /// An offline held by flap damping (`presence_flap_holds_total`).
    pub fn flap_held(&self) {
        counter!("presence_flap_holds_total", "node" => self.node.to_string()).increment(1);
    }

    pub fn handshake_failed(&self, reason: &'static str) {
        counter!("gateway_handshake_failures_total", "node" => self.node.to_string(), "reason" => reason).increment(1);
    }

    pub fn set_dependency_up(&self, dependency: &'static str, up: bool) {
        gauge!("gateway_dependency_up", "node" => self.node.to_string(), "dependency" => dependency)
            .set(if up { 1.0 } else { 0.0 });
    }

    pub fn set_online_by_gender(&self, by_gender: [u64; 3]) {
        for g in crate::domain::Gender::ALL {
            gauge!("presence_online_users_by_gender", "gender" => g.as_str())
                .set(by_gender[g.index()] as f64);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let h = handle();
        h.run_upkeep();
        h.render()
    }
}

/// A statistics event was stored (`stats_events_total{type}`).
pub fn stats_event_recorded(kind: &'static str) {
    counter!("stats_events_total", "type" => kind).increment(1);
}

/// This replica's webhook figures, for its report to the console's Overview (`None` while
/// webhooks are off).
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookStatus {
    pub queued: u64,
    pub delivered: u64,
    pub dropped: u64,
    pub last_error: Option<String>,
    pub last_error_at: Option<crate::domain::Timestamp>,
}

static WEBHOOK: std::sync::Mutex<Option<WebhookStatus>> = std::sync::Mutex::new(None);

fn webhook_status_mut(f: impl FnOnce(&mut WebhookStatus)) {
    let mut w = WEBHOOK.lock().unwrap_or_else(|e| e.into_inner());
    f(w.get_or_insert_with(WebhookStatus::default));
}

/// Webhooks are on here.
pub fn webhook_started() {
    webhook_status_mut(|_| {});
}

pub fn webhook_status() -> Option<WebhookStatus> {
    WEBHOOK.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Webhook events that reached the receiver (`webhook_events_total{result="delivered"}`),
/// with their delay from commit to the receiver's 2xx.
pub fn webhook_delivered(seconds: f64) {
    counter!("webhook_events_total", "result" => "delivered").increment(1);
    histogram!("webhook_delivery_latency_seconds").record(seconds);
    webhook_status_mut(|w| w.delivered += 1);
}

/// Webhook events retried or dropped (`webhook_events_total{result}`).
pub fn webhook_result(result: &'static str, n: u64) {
    counter!("webhook_events_total", "result" => result).increment(n);
    if result == "dropped" {
        webhook_status_mut(|w| w.dropped += n);
    }
}

/// Committed changes that became no request (`webhook_changes_unsent_total{reason}`): `flap`
/// (an offline and the online that cancelled it), `type` (a type `WEBHOOK_EVENTS` leaves
/// out), `no_event` (a change while offline).
pub fn webhook_unsent(reason: &'static str, n: u64) {
    counter!("webhook_changes_unsent_total", "reason" => reason).increment(n);
}

/// Events waiting to be sent (`webhook_queue_depth`).
pub fn webhook_depth(n: f64) {
    gauge!("webhook_queue_depth").set(n);
    webhook_status_mut(|w| w.queued = n as u64);
}

/// The last delivery error, for the console (`webhook_last_error_timestamp_seconds`).
pub fn webhook_error(why: &str) {
    let now = crate::domain::Timestamp::now();
    gauge!("webhook_last_error_timestamp_seconds").set(now.as_micros() as f64 / 1e6);
    webhook_status_mut(|w| {
        w.last_error = Some(why.chars().take(200).collect());
        w.last_error_at = Some(now);
    });
}

/// Statistics events deleted past `STATS_RETENTION_DAYS` (`stats_events_retired_total`).
pub fn stats_events_retired(n: u64) {
    counter!("stats_events_retired_total").increment(n);
}

/// A report came from the cache (`stats_report_cache_hits_total`).
pub fn stats_report_cache_hit() {
    counter!("stats_report_cache_hits_total").increment(1);
}

/// A dashboard was told to resync (`stats_dashboards_resynced_total`).
pub fn stats_dashboard_resynced() {
    counter!("stats_dashboards_resynced_total").increment(1);
}
