//! The bus: Redis pub/sub of committed changes and of stored statistics batches, read by one
//! subscriber connection per replica. The engine owns it; dropping the engine stops its tasks.
//!
//! After every reconnect the subscriptions are made again (fred does not keep them), then a
//! [`Resync::Resubscribed`] says that what was published meanwhile was missed; a reader that
//! fell behind fred's buffer is a [`Resync::BusLagged`].

use super::codec::decode_event;
use super::keys::Keys;
use crate::engine::{EngineError, PresenceEvent, Resync};
use fred::clients::SubscriberClient;
use fred::prelude::*;
use std::sync::Arc;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

pub struct Bus {
    subscriber: SubscriberClient,
    pub events: broadcast::Sender<PresenceEvent>,
    pub stats: broadcast::Sender<Arc<str>>,
    pub resyncs: broadcast::Sender<Resync>,
    stop: CancellationToken,
}

impl Bus {
    /// Subscribe to the deployment's channels; `buffer` changes wait for slow readers.
    pub async fn start(builder: &Builder, keys: &Keys, buffer: usize) -> Result<Bus, EngineError> {
        let unavailable = |e: fred::error::Error| EngineError::Unavailable(e.to_string());
        let subscriber = builder.build_subscriber_client().map_err(unavailable)?;
        subscriber.init().await.map_err(unavailable)?;
        let bus = Bus {
            subscriber,
            events: broadcast::channel(buffer.max(1)).0,
            stats: broadcast::channel(crate::engine::EVENT_BUFFER).0,
            resyncs: broadcast::channel(16).0,
            stop: CancellationToken::new(),
        };
        bus.spawn_resubscriber();
        bus.spawn_reader(keys.stats_channel());
        bus.subscriber
            .subscribe(vec![keys.events_channel(), keys.stats_channel()])
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

    fn spawn_reader(&self, stats_channel: String) {
        let mut rx = self.subscriber.message_rx();
        let (events, stats, resyncs, stop) = (
            self.events.clone(),
            self.stats.clone(),
            self.resyncs.clone(),
            self.stop.clone(),
        );
        tokio::spawn(async move {
            loop {
                let m = tokio::select! {
                    _ = stop.cancelled() => break,
                    m = rx.recv() => m,
                };
                match m {
                    Ok(msg) if &*msg.channel == stats_channel.as_str() => {
                        if let Some(text) = msg.value.as_str() {
                            let _ = stats.send(Arc::from(&*text));
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
