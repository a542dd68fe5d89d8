//! The bus: Redis pub/sub of committed changes (one channel per key bucket, sharded pub/sub on
//! Redis Cluster) and of the opaque [`Topic`]s (statistics
//! batches, the admin API's questions and answers), read by one subscriber connection per
//! replica. The engine owns it; dropping the engine stops its tasks.
//!
//! After every reconnect the subscriptions are made again (fred does not keep them), then a
//! [`Resync::Resubscribed`] says that what was published meanwhile was missed; a reader that
//! fell behind fred's buffer is a [`Resync::BusLagged`].

use super::codec::decode_event;
use super::keys::Keys;
use crate::engine::{EngineError, PresenceEvent, Resync, Topic};
use fred::clients::SubscriberClient;
use fred::prelude::*;
use std::sync::Arc;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

pub struct Bus {
    subscriber: SubscriberClient,
    pub events: broadcast::Sender<PresenceEvent>,
    /// Indexed by [`Topic::index`].
    pub topics: [broadcast::Sender<Arc<str>>; 2],
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
        bus.spawn_resubscriber();
        let topics = Topic::ALL.map(|t| keys.topic_channel(t));
        bus.spawn_reader(topics.clone());
        // Every replica reads every bucket (docs/redis.md says why not only the watched ones).
        let mut channels = topics.to_vec();
        if sharded {
            // One slot per SSUBSCRIBE: each bucket's channel on its own.
            for c in keys.event_channels() {
                bus.subscriber.ssubscribe(c).await.map_err(unavailable)?;
            }
        } else {
            channels.extend(keys.event_channels());
        }
        bus.subscriber
            .subscribe(channels)
            .await
            .map_err(unavailable)?;
        Ok(bus)
    }

    pub fn is_connected(&self) -> bool {
        self.subscriber.is_connected()
    }

    fn spawn_resubscriber(&self) {
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
                match subscriber.resubscribe_all().await {
                    Ok(()) => {
                        let _ = resyncs.send(Resync::Resubscribed);
                    }
                    Err(e) => tracing::warn!(error = %e, "could not resubscribe to Redis"),
                }
            }
        });
    }

    /// Read every message; `topics` are the topics' channels, by [`Topic::index`].
    fn spawn_reader(&self, topics: [String; 2]) {
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

impl Drop for Bus {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
