//! The bus: Redis pub/sub of committed changes (one channel per key bucket, sharded pub/sub on
//! Redis Cluster) and of the opaque [`Topic`]s (statistics
//! batches, the admin API's questions and answers), read by one subscriber connection per
//! replica. The engine owns it; dropping the engine stops its tasks.
//!
//! After every reconnect the subscriptions are made again (fred does not keep them), retried
//! until they hold, then a [`Resync::Resubscribed`] says that what was published meanwhile was
//! missed; a reader that fell behind fred's buffer is a [`Resync::BusLagged`].
//!
//! On Redis Cluster a failover ends sharded subscriptions without closing any connection: the
//! demoted master tells its subscribers `SUNSUBSCRIBE`, which fred drops, and no reconnect
//! follows, so a replica would stop hearing a third of the changes for good. The bus therefore
//! watches the cluster's slot map ([`TOPOLOGY_CHECK`]); when the masters of its channels'
//! slots change, it subscribes again where they are now, and resyncs.

use super::codec::decode_event;
use super::keys::Keys;
use crate::engine::{EngineError, PresenceEvent, Resync, Topic};
use fred::clients::SubscriberClient;
use fred::prelude::*;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// How often, on Redis Cluster, the slot map is read again to notice a failover.
pub const TOPOLOGY_CHECK: Duration = Duration::from_secs(1);

/// The channels the bus reads: the topics' (classic pub/sub) and the buckets' (classic, or
/// sharded on Redis Cluster).
#[derive(Clone)]
struct Channels {
    topics: [String; Topic::COUNT],
    events: Vec<String>,
    sharded: bool,
}

impl Channels {
    /// Subscribe to all of them (again: subscribing twice to a channel is harmless).
    async fn subscribe(&self, subscriber: &SubscriberClient) -> Result<(), fred::error::Error> {
        let mut classic = self.topics.to_vec();
        if self.sharded {
            // One slot per SSUBSCRIBE: each bucket's channel on its own, routed to the master
            // that holds its slot now.
            for c in &self.events {
                subscriber.ssubscribe(c.clone()).await?;
            }
        } else {
            classic.extend(self.events.iter().cloned());
        }
        subscriber.subscribe(classic).await
    }

    /// Subscribe until it holds (or the bus stops): each failure waits longer, up to 5 s.
    async fn subscribe_until_done(
        &self,
        subscriber: &SubscriberClient,
        stop: &CancellationToken,
    ) -> bool {
        let mut wait = Duration::from_millis(100);
        loop {
            match self.subscribe(subscriber).await {
                Ok(()) => return true,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "could not subscribe to Redis; retrying")
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return false,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }
}

pub struct Bus {
    subscriber: SubscriberClient,
    pub events: broadcast::Sender<PresenceEvent>,
    /// Indexed by [`Topic::index`].
    pub topics: [broadcast::Sender<Arc<str>>; Topic::COUNT],
    pub resyncs: broadcast::Sender<Resync>,
    stop: CancellationToken,
}

impl Bus {
    /// Subscribe to the deployment's channels; `buffer` changes wait for slow readers.
    /// `sharded`: the changes are published with `SPUBLISH` (Redis Cluster), so they are read
    /// with `SSUBSCRIBE`, from the shard that owns each bucket's channel.
    pub async fn start(
        builder: &Builder,
        keys: &Keys,
        buffer: usize,
        sharded: bool,
    ) -> Result<Bus, EngineError> {
        let unavailable = |e: fred::error::Error| EngineError::Unavailable(e.to_string());
        let subscriber = builder.build_subscriber_client().map_err(unavailable)?;
        subscriber.init().await.map_err(unavailable)?;
        let bus = Bus {
            subscriber,
            events: broadcast::channel(buffer.max(1)).0,
            topics: Topic::ALL.map(|_| broadcast::channel(crate::engine::EVENT_BUFFER).0),
            resyncs: broadcast::channel(16).0,
            stop: CancellationToken::new(),
        };
        let topics = Topic::ALL.map(|t| keys.topic_channel(t));
        // Every replica reads every bucket (docs/redis.md says why not only the watched ones).
        let channels = Channels {
            topics: topics.clone(),
            events: keys.event_channels(),
            sharded,
        };
        bus.spawn_resubscriber(channels.clone());
        bus.spawn_reader(topics);
        channels
            .subscribe(&bus.subscriber)
            .await
            .map_err(unavailable)?;
        if sharded {
            bus.spawn_topology_watch(channels);
        }
        Ok(bus)
    }

    pub fn is_connected(&self) -> bool {
        self.subscriber.is_connected()
    }

    fn spawn_resubscriber(&self, channels: Channels) {
        let (subscriber, resyncs, stop) = (
            self.subscriber.clone(),
            self.resyncs.clone(),
            self.stop.clone(),
        );
        let mut reconnects = subscriber.reconnect_rx();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    r = reconnects.recv() => if r.is_err() { break },
                }
                // Not fred's `resubscribe_all`: on a cluster it sends an empty PSUBSCRIBE,
                // which Redis refuses, and nothing tried again (a replica stayed deaf to the
                // buckets of a failed-over master).
                if channels.subscribe_until_done(&subscriber, &stop).await {
                    let _ = resyncs.send(Resync::Resubscribed);
                }
            }
        });
    }

    /// Redis Cluster: read the slot map every [`TOPOLOGY_CHECK`]; when the masters holding
    /// the buckets' slots change, subscribe again (the new masters never had our sharded
    /// subscriptions, and the demoted ones dropped them) and resync.
    fn spawn_topology_watch(&self, channels: Channels) {
        let (subscriber, resyncs, stop) = (
            self.subscriber.clone(),
            self.resyncs.clone(),
            self.stop.clone(),
        );
        tokio::spawn(async move {
            let mut known = masters(&subscriber);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(TOPOLOGY_CHECK) => {}
                }
                // A paused node must not stall the watch: it asks again next time.
                match tokio::time::timeout(TOPOLOGY_CHECK * 5, subscriber.sync_cluster()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "could not read the cluster's slot map");
                        continue;
                    }
                    Err(_) => continue,
                }
                let now = masters(&subscriber);
                if now == known {
                    continue;
                }
                tracing::warn!(
                    "the Redis Cluster's masters changed; subscribing again where the buckets are now"
                );
                known = now;
                if channels.subscribe_until_done(&subscriber, &stop).await {
                    let _ = resyncs.send(Resync::Resubscribed);
                }
            }
        });
    }

    /// Read every message; `topics` are the topics' channels, by [`Topic::index`].
    fn spawn_reader(&self, topics: [String; Topic::COUNT]) {
        let mut rx = self.subscriber.message_rx();
        let (events, senders, resyncs, stop) = (
            self.events.clone(),
            self.topics.clone(),
            self.resyncs.clone(),
            self.stop.clone(),
        );
        tokio::spawn(async move {
            loop {
                let m = tokio::select! {
                    _ = stop.cancelled() => break,
                    m = rx.recv() => m,
                };
                let topic = m
                    .as_ref()
                    .ok()
                    .and_then(|msg| topics.iter().position(|c| *c == *msg.channel));
                match m {
                    Ok(msg) if topic.is_some() => {
                        if let (Some(text), Some(t)) = (msg.value.as_str(), topic) {
                            let _ = senders[t].send(Arc::from(&*text));
                        }
                    }
                    Ok(msg) => {
                        if let Some(text) = msg.value.as_str()
                            && let Some(ev) = decode_event(&text)
                        {
                            let _ = events.send(ev);
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(
                            missed = n,
                            "Redis subscriber lagged; presence updates lost"
                        );
                        let _ = resyncs.send(Resync::BusLagged);
                    }
                    Err(_) => break,
                }
            }
        });
    }
}

/// Which master holds which slots, as fred last read the cluster (empty when not known).
fn masters(subscriber: &SubscriberClient) -> Vec<(u16, u16, String)> {
    subscriber
        .cached_cluster_state()
        .map(|routing| {
            routing
                .slots()
                .iter()
                .map(|r| (r.start, r.end, r.primary.to_string()))
                .collect()
        })
        .unwrap_or_default()
}

impl Drop for Bus {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
