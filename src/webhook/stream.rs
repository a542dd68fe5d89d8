//! Filling the queue from the store's streams (Redis engine): this replica takes the leases
//! of the buckets no live replica holds, reads their streams in order (what a dead holder
//! read but never sent first, claimed from it), and takes each entry off the stream once it
//! is done with. A bucket is read when a change of one of its users goes by on the bus, and
//! every 5 s regardless.

use super::event_of;
use super::queue::Queue;
use crate::domain::webhook::WebhookSettings;
use crate::engine::WebhookLog;
use crate::state::AppState;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A lease outlives its holder by this much: the longest a dead replica's buckets wait.
const LEASE_TTL_MS: u64 = 10_000;
const LEASE_EVERY: Duration = Duration::from_secs(2);
/// Every held stream is read this often even when no change of it went by (a change whose
/// announcement this replica missed is still sent, this much later at worst).
const READ_EVERY: Duration = Duration::from_secs(5);
/// The held streams are measured (and trimmed) every this many lease renewals.
const BOUND_EVERY: u32 = 5;
const READ_MAX: usize = 1_000;
/// How long a read, a batch and an acknowledgement wait for more after the first: one per
/// change would cost a round trip or a request each (measured: a third more replica CPU at
/// 200 changes/s). Beside the offline delay's 3 s, 25 ms is nothing a backend notices.
pub const LINGER: Duration = Duration::from_millis(25);

pub async fn run(
    st: AppState,
    settings: WebhookSettings,
    queue: Arc<Queue>,
    lead_stats: Arc<AtomicBool>,
) {
    let engine = st.engine.clone();
    let Some(log) = engine.webhook_log() else {
        return;
    };
    let stop = st.background.stop.clone();
    let per_bucket = settings
        .queue_max
        .div_ceil(crate::engine::redis::BUCKETS as usize)
        .max(1);
    let mut rx = engine.subscribe();
    let mut held: Vec<u32> = vec![];
    let mut claim: BTreeSet<u32> = BTreeSet::new();
    let mut dirty: BTreeSet<u32> = BTreeSet::new();
    let mut read_tick = tokio::time::interval(READ_EVERY);
    // The leases are renewed by a task of their own: a slow read or a long claim here must
    // never let them lapse (another replica would then resend what this one holds).
    let (leases_tx, mut leases) = tokio::sync::mpsc::channel(4);
    let renewer = tokio::spawn(renew(
        engine.clone(),
        per_bucket,
        queue.clone(),
        leases_tx,
        stop.clone(),
    ));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            l = leases.recv() => match l {
                Some((h, new)) => {
                    held = h;
                    lead_stats.store(held.contains(&0), Ordering::Release);
                    claim.extend(new);
                    claim.retain(|b| held.contains(b));
                }
                None => break,
            },
            _ = read_tick.tick() => dirty.extend(held.iter().copied()),
            ev = rx.recv() => match ev {
                Ok(ev) => mark(&mut dirty, &held, log.bucket_of(&ev.presence.user_id)),
                Err(_) => dirty.extend(held.iter().copied()),
            },
        }
        if claim.is_empty() && dirty.is_empty() {
            continue;
        }
        // A moment for more changes to arrive: one round trip reads them all.
        tokio::time::sleep(LINGER).await;
        while let Ok(ev) = rx.try_recv() {
            mark(&mut dirty, &held, log.bucket_of(&ev.presence.user_id));
        }
        // While the receiver is down, entries wait in the stream, not here.
        if !queue.room() {
            continue;
        }
        for b in claim.clone() {
            match log.claim(b).await {
                Ok(entries) => {
                    take_in(&settings, &queue, entries);
                    claim.remove(&b);
                    // Then what nobody has read yet (changes made before the lease was
                    // taken went by unmarked).
                    dirty.insert(b);
                }
                Err(e) => tracing::warn!(error = %e, bucket = b, "webhook stream not claimed"),
            }
        }
        dirty.retain(|b| held.contains(b) && !claim.contains(b));
        let buckets: Vec<u32> = dirty.iter().copied().collect();
        match log.read(&buckets, READ_MAX).await {
            Ok(entries) => {
                // A bucket that gave a full read has more: read it again at once.
                let mut full = std::collections::HashMap::<u32, usize>::new();
                for e in &entries {
                    *full.entry(e.bucket).or_default() += 1;
                }
                dirty.retain(|b| full.get(b).is_some_and(|n| *n >= READ_MAX));
                take_in(&settings, &queue, entries);
            }
            Err(e) => tracing::warn!(error = %e, "webhook streams not read"),
        }
    }
    // Whatever this replica read and did not send stays in the streams for the next holder,
    // which need not wait for the leases to expire.
    let _ = renewer.await;
    let _ = log.release(&held).await;
}

/// Take and renew leases every [`LEASE_EVERY`], and keep the held streams bounded; tell the
/// reader which buckets it holds and which it just took.
async fn renew(
    engine: Arc<dyn crate::engine::PresenceEngine>,
    per_bucket: usize,
    queue: Arc<Queue>,
    tx: tokio::sync::mpsc::Sender<(Vec<u32>, Vec<u32>)>,
    stop: tokio_util::sync::CancellationToken,
) {
    let Some(log) = engine.webhook_log() else {
        return;
    };
    let mut tick = tokio::time::interval(LEASE_EVERY);
    for round in 0u32.. {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match log.lease(LEASE_TTL_MS).await {
            Ok((held, new)) => {
                if tx.send((held.clone(), new)).await.is_err() {
                    return;
                }
                if round % BOUND_EVERY == 0 {
                    bound(log, &queue, &held, per_bucket).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "webhook leases not renewed"),
        }
    }
}

/// A change of bucket `b` went by: read it if this replica sends it.
fn mark(dirty: &mut BTreeSet<u32>, held: &[u32], b: u32) {
    if held.contains(&b) {
        dirty.insert(b);
    }
}

/// Entries read from the streams into the queue, in order.
fn take_in(settings: &WebhookSettings, queue: &Queue, entries: Vec<crate::engine::LogEntry>) {
    for e in entries {
        let ack = (e.bucket, e.id);
        let Some(ev) = e.event else {
            // Trimmed past WEBHOOK_QUEUE_MAX (counted then), or unreadable.
            queue.skip(ack);
            continue;
        };
        match event_of(
            settings,
            ev.was_online,
            &ev.presence,
            ev.committed_at,
            Some(ack.clone()),
        ) {
            Some(c) => queue.push(c),
            None => queue.skip(ack),
        }
    }
}

/// Trim each held stream to its share of `WEBHOOK_QUEUE_MAX`; report what waits.
async fn bound(log: &dyn WebhookLog, queue: &Queue, held: &[u32], per_bucket: usize) {
    let mut waiting = 0;
    for &b in held {
        match log.bound(b, per_bucket).await {
            Ok(crate::engine::Bounded {
                left,
                dropped,
                first,
            }) => {
                waiting += left;
                let sending = first.map_or(0, |f| queue.forget(b, &f));
                let dropped = dropped.saturating_sub(sending);
                if dropped > 0 {
                    tracing::warn!(
                        events = dropped,
                        bucket = b,
                        "webhook events past WEBHOOK_QUEUE_MAX dropped"
                    );
                    crate::metrics::webhook_result("dropped", dropped);
                }
            }
            Err(e) => tracing::warn!(error = %e, "webhook stream not measured"),
        }
    }
    crate::metrics::webhook_depth(waiting as f64);
}
