//! Watches: a dedicated pub/sub connection per watch, turned into events through
//! [`dcron_core::watch_channel`].
//!
//! ```text
//!   writing script ──PUBLISH──▶ <ns>:events:db<N>:{nodes,tasks}
//!                                          │ (own connection, not from the pool)
//!   watcher task: ── message ─▶ parse ─▶ WatchSender ─▶ WatchStream (bounded; overflow → Resync)
//!                 ── tick (1 s) ─▶ nodes only: list, diff against known ids ─▶ Put / Delete
//!                 ── stream ends / ping fails ─▶ resubscribe with back-off ─▶ Resync
//! ```
//!
//! Node expiry is not published by any script, so the node watcher also lists the nodes every
//! [`crate::RedisRegistryConfig::node_check_interval`] and reports the ones that vanished. The
//! watcher stops when the stream is dropped or the last clone of the registry is dropped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dcron_core::{
    watch_channel, Error, Node, NodeEvent, Result, ResyncEvent, TaskMetaEvent, WatchSender,
    WatchStream,
};
use futures::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use tokio::time::Instant;

use crate::error::from_redis;
use crate::registry::Core;
use crate::{events, RedisRegistry};

/// How often an idle subscription is checked with a `PING`.
const PING_EVERY: Duration = Duration::from_secs(5);
/// The longest pause between two resubscription attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

struct Subscription {
    sink: PubSubSink,
    stream: PubSubStream,
}

async fn subscribe(core: &Core, channel: &str) -> Result<Subscription> {
    let context = format!("subscribe to `{channel}`");
    let limit = core.config.connect_timeout + core.config.command_timeout;
    let pubsub = tokio::time::timeout(limit, core.client.get_async_pubsub())
        .await
        .map_err(|_| Error::unavailable(format!("redis: {context}: timed out after {limit:?}")))?
        .map_err(|e| from_redis(e, &context))?;
    let (mut sink, stream) = pubsub.split();
    tokio::time::timeout(core.config.command_timeout, sink.subscribe(channel))
        .await
        .map_err(|_| Error::unavailable(format!("redis: {context}: timed out")))?
        .map_err(|e| from_redis(e, &context))?;
    Ok(Subscription { sink, stream })
}

/// What differs between the node and the task watch.
#[async_trait]
trait Feed: Send + 'static {
    type Event: ResyncEvent + Send + Unpin + 'static;

    /// Turns a published message into an event.
    fn message(&mut self, channel: &str, payload: &[u8]) -> Self::Event;

    /// Called after a resubscription, before the `Resync` is sent.
    async fn resubscribed(&mut self, _core: &Core) {}

    /// Called on every tick while subscribed.
    async fn tick(&mut self, _core: &Core, _tx: &WatchSender<Self::Event>) {}
}

/// The node watch: knows which node ids it has reported, to notice expired registrations.
struct NodeFeed {
    known: HashMap<String, Node>,
}

fn by_id(nodes: Vec<Node>) -> HashMap<String, Node> {
    nodes.into_iter().map(|n| (n.id.clone(), n)).collect()
}

#[async_trait]
impl Feed for NodeFeed {
    type Event = NodeEvent;

    fn message(&mut self, channel: &str, payload: &[u8]) -> NodeEvent {
        let event = events::node_event(channel, payload);
        match &event {
            NodeEvent::Put(node) => {
                self.known.insert(node.id.clone(), node.clone());
            }
            NodeEvent::Delete { id } => {
                self.known.remove(id);
            }
            NodeEvent::Resync => {}
        }
        event
    }

    async fn resubscribed(&mut self, core: &Core) {
        if let Ok(listing) = core.list_nodes().await {
            self.known = by_id(listing.items);
        }
    }

    async fn tick(&mut self, core: &Core, tx: &WatchSender<NodeEvent>) {
        let Ok(listing) = core.list_nodes().await else {
            // Unreachable: the subscription notices too, and resubscribing sends a Resync.
            return;
        };
        let current = by_id(listing.items);
        for id in self.known.keys() {
            if !current.contains_key(id) {
                tx.send(NodeEvent::Delete { id: id.clone() });
            }
        }
        for (id, node) in &current {
            if !self.known.contains_key(id) {
                tx.send(NodeEvent::Put(node.clone()));
            }
        }
        self.known = current;
    }
}

struct TaskFeed;

#[async_trait]
impl Feed for TaskFeed {
    type Event = TaskMetaEvent;

    fn message(&mut self, channel: &str, payload: &[u8]) -> TaskMetaEvent {
        events::task_event(channel, payload)
    }
}

pub(crate) async fn watch_nodes(registry: &RedisRegistry) -> Result<WatchStream<NodeEvent>> {
    let core = registry.core.clone();
    let channel = core.keys.node_channel().to_string();
    // Subscribe first, then list: a change between the two is seen twice, never missed.
    let subscription = subscribe(&core, &channel).await?;
    let known = by_id(core.list_nodes().await?.items);
    let (tx, stream) = watch_channel(core.config.watch_buffer);
    let shutdown = registry.shutdown_rx.clone();
    tokio::spawn(run(
        core,
        channel,
        subscription,
        tx,
        NodeFeed { known },
        shutdown,
    ));
    Ok(stream)
}

pub(crate) async fn watch_tasks(registry: &RedisRegistry) -> Result<WatchStream<TaskMetaEvent>> {
    let core = registry.core.clone();
    let channel = core.keys.task_channel().to_string();
    let subscription = subscribe(&core, &channel).await?;
    let (tx, stream) = watch_channel(core.config.watch_buffer);
    let shutdown = registry.shutdown_rx.clone();
    tokio::spawn(run(core, channel, subscription, tx, TaskFeed, shutdown));
    Ok(stream)
}

async fn run<F: Feed>(
    core: Arc<Core>,
    channel: String,
    mut subscription: Subscription,
    tx: WatchSender<F::Event>,
    mut feed: F,
    mut shutdown: tokio::sync::watch::Receiver<()>,
) {
    let mut tick = tokio::time::interval(core.config.node_check_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_ping = Instant::now();
    loop {
        let healthy = tokio::select! {
            _ = shutdown.changed() => return,
            message = subscription.stream.next() => match message {
                Some(message) => {
                    let event = feed.message(message.get_channel_name(), message.get_payload_bytes());
                    if !tx.send(event) {
                        return;
                    }
                    true
                }
                None => false,
            },
            _ = tick.tick() => {
                if tx.is_closed() {
                    return;
                }
                feed.tick(&core, &tx).await;
                if last_ping.elapsed() >= PING_EVERY {
                    last_ping = Instant::now();
                    let ping = subscription.sink.ping::<redis::Value>();
                    matches!(
                        tokio::time::timeout(core.config.command_timeout, ping).await,
                        Ok(Ok(_))
                    )
                } else {
                    true
                }
            }
        };
        if !healthy {
            tracing::debug!(%channel, "redis watch lost its subscription; resubscribing");
            match resubscribe(&core, &channel, &mut feed, &tx, &mut shutdown).await {
                Some(fresh) => subscription = fresh,
                None => return,
            }
        }
    }
}

/// Subscribes again with back-off until it works (then sends a `Resync`), the stream is
/// dropped or the registry is dropped (then `None`).
async fn resubscribe<F: Feed>(
    core: &Core,
    channel: &str,
    feed: &mut F,
    tx: &WatchSender<F::Event>,
    shutdown: &mut tokio::sync::watch::Receiver<()>,
) -> Option<Subscription> {
    let mut backoff = Duration::from_millis(100);
    loop {
        if tx.is_closed() {
            return None;
        }
        tokio::select! {
            _ = shutdown.changed() => return None,
            _ = tokio::time::sleep(backoff) => {}
        }
        match subscribe(core, channel).await {
            Ok(subscription) => {
                feed.resubscribed(core).await;
                // Sent as an event rather than through `WatchSender::resync`, which only sets
                // a flag and does not wake a receiver that is already waiting.
                return tx.send(F::Event::resync()).then_some(subscription);
            }
            Err(e) => {
                tracing::debug!(%channel, error = %e, "redis watch: resubscribe failed");
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}
