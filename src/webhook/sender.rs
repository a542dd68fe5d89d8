//! Sending the queue: signed batches, one request at a time, each batch retried with growing
//! delays until the receiver takes it (2xx), refuses it for good (4xx other than 408/429:
//! dropped, counted) or its events are older than `WEBHOOK_MAX_AGE_MS` (dropped, counted).
//! A resend is the same events with the same ids; later events wait behind it, so each
//! user's events arrive in version order.

use super::Event;
use super::queue::Queue;
use crate::domain::Timestamp;
use crate::domain::webhook::{WebhookSettings, signature};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const FIRST_RETRY: Duration = Duration::from_millis(250);
/// How long a batch that is not full waits for more events: at 200 changes/s, a request
/// every 25 ms cost the replicas 13 % more CPU (BENCHMARKS.md, session 14).
const FILL: Duration = Duration::from_millis(50);
const LAST_RETRY: Duration = Duration::from_secs(30);

/// How one attempt went.
#[derive(Debug, PartialEq)]
enum Outcome {
    Taken,
    Retry(String),
    Refused(String),
}

pub struct Sender {
    settings: WebhookSettings,
    client: reqwest::Client,
}

impl Sender {
    pub fn new(settings: WebhookSettings) -> Result<Self, String> {
        // One process-wide TLS provider (ring: no C toolchain beyond cc, no cmake).
        #[allow(deprecated)] // aws-lc, its successor, needs cmake to build; ring needs cc only.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.timeout_ms))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("presence-gateway/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("webhook client: {e}"))?;
        Ok(Sender { settings, client })
    }

    async fn attempt(&self, body: &[u8]) -> Outcome {
        let ts = (Timestamp::now().as_micros() / 1_000_000).max(0) as u64;
        let r = self
            .client
            .post(&self.settings.url)
            .header("content-type", "application/json")
            .header("x-presence-timestamp", ts.to_string())
            .header(
                "x-presence-signature",
                signature(self.settings.secret.as_bytes(), ts, body),
            )
            .body(body.to_vec())
            .send()
            .await;
        match r {
            Ok(res) => {
                let s = res.status();
                if s.is_success() {
                    Outcome::Taken
                } else if s.is_server_error() || s.as_u16() == 408 || s.as_u16() == 429 {
                    Outcome::Retry(format!("HTTP {}", s.as_u16()))
                } else {
                    Outcome::Refused(format!("HTTP {}", s.as_u16()))
                }
            }
            Err(e) if e.is_timeout() => Outcome::Retry("timeout".into()),
            Err(e) => Outcome::Retry(format!("{e}")),
        }
    }

    /// Send `batch` until it is taken, refused, too old, or the replica stops; returns the
    /// events done with (not those left when stopping: they stay in the store, if any).
    async fn deliver(&self, mut batch: Vec<Event>, stop: &CancellationToken) -> Vec<Event> {
        let mut gone = vec![];
        let mut wait = FIRST_RETRY;
        loop {
            let mut body =
                String::with_capacity(16 + batch.iter().map(|e| e.json.len() + 1).sum::<usize>());
            body.push_str(r#"{"events":["#);
            for (i, e) in batch.iter().enumerate() {
                if i > 0 {
                    body.push(',');
                }
                body.push_str(&e.json);
            }
            body.push_str("]}");
            let body = body.into_bytes();
            match self.attempt(&body).await {
                Outcome::Taken => {
                    let now = Timestamp::now();
                    for e in &batch {
                        crate::metrics::webhook_delivered(
                            now.micros_since(e.committed_at) as f64 / 1e6,
                        );
                    }
                    gone.extend(batch);
                    return gone;
                }
                Outcome::Refused(why) => {
                    tracing::warn!(events = batch.len(), reason = %why, "webhook receiver refused a batch; dropped");
                    crate::metrics::webhook_result("dropped", batch.len() as u64);
                    crate::metrics::webhook_error(&why);
                    gone.extend(batch);
                    return gone;
                }
                Outcome::Retry(why) => {
                    crate::metrics::webhook_result("retried", batch.len() as u64);
                    crate::metrics::webhook_error(&why);
                    let oldest =
                        Timestamp::now().as_micros() - self.settings.max_age_ms as i64 * 1000;
                    let (keep, old): (Vec<_>, Vec<_>) = batch
                        .into_iter()
                        .partition(|e| e.committed_at.as_micros() >= oldest);
                    batch = keep;
                    if !old.is_empty() {
                        tracing::warn!(
                            events = old.len(),
                            "webhook events older than WEBHOOK_MAX_AGE_MS dropped"
                        );
                        crate::metrics::webhook_result("dropped", old.len() as u64);
                        gone.extend(old);
                    }
                    if batch.is_empty() {
                        return gone;
                    }
                    tracing::debug!(reason = %why, retry_in_ms = wait.as_millis() as u64, "webhook batch retried");
                    tokio::select! {
                        _ = stop.cancelled() => return gone,
                        _ = tokio::time::sleep(wait) => {}
                    }
                    wait = (wait * 2).min(LAST_RETRY);
                }
            }
        }
    }

    /// Send what the queue holds, as it comes, until `stop`.
    pub async fn run(&self, queue: &Queue, stop: CancellationToken) {
        loop {
            let max = self.settings.batch_max;
            let (mut batch, due) = queue.take(Timestamp::now(), max);
            if !batch.is_empty() && batch.len() < max {
                // A moment for more: a request per change would cost one each.
                tokio::time::sleep(FILL).await;
                batch.extend(queue.take(Timestamp::now(), max - batch.len()).0);
            }
            if !batch.is_empty() {
                if !queue.stored {
                    crate::metrics::webhook_depth((queue.depth() + batch.len()) as f64);
                }
                let gone = self.deliver(batch, &stop).await;
                queue.done(&gone);
                if !queue.stored {
                    crate::metrics::webhook_depth(queue.depth() as f64);
                }
                if stop.is_cancelled() {
                    return;
                }
                continue;
            }
            let nap = due.map_or(Duration::from_secs(1), |t| {
                Duration::from_micros(
                    (t.as_micros() - Timestamp::now().as_micros()).clamp(0, 1_000_000) as u64,
                )
            });
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = queue.ready.notified() => {}
                _ = tokio::time::sleep(nap) => {}
            }
        }
    }
}
