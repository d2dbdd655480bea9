//! Watches: a dedicated pub/sub connection per watch, turned into events through
//! [`dcron_core::watch_channel`].
//!
//! ```text
//!   writing script ──PUBLISH──▶ <ns>:events:db<N>:{nodes,tasks}
//!                                          │ (own connection, not from the pool)
//!   watcher task: ── message ─▶ parse ─▶ WatchSender ─▶ WatchStream (bounded; overflow → Resync)
//!                 ── tick (1 s) ─▶ nodes only: snapshot, diff against what was reported ─▶ Put / Delete
//!                 ── stream ends / ping fails ─▶ resubscribe with back-off ─▶ Resync
//! ```
//!
//! Node expiry is not published by any script, so the node watcher also lists the nodes every
//! [`crate::RedisRegistryConfig::node_check_interval`] and reports the ones that vanished. The
//! watcher stops when the stream is dropped or the last clone of the registry is dropped.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dcron_core::{
    watch_channel, Error, NodeEvent, Result, ResyncEvent, TaskMetaEvent, WatchSender, WatchStream,
};
use futures::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use tokio::time::Instant;

use crate::error::from_redis;
use crate::registry::{Core, NodeSnapshot};
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

    /// Turns a published message into an event, or `None` to drop it.
    fn message(&mut self, channel: &str, payload: &[u8]) -> Option<Self::Event>;

    /// Called after a resubscription, before the `Resync` is sent.
    async fn resubscribed(&mut self, _core: &Core, _tx: &WatchSender<Self::Event>) {}

    /// Called on every tick while subscribed.
    async fn tick(&mut self, _core: &Core, _tx: &WatchSender<Self::Event>) {}
}

/// The node watch. It reports what the pub/sub messages say, and on every tick compares a
/// snapshot of the node list with what it reported, to notice expired registrations (expiry
/// publishes nothing) and messages lost in a reconnection.
///
/// Messages and snapshots race: a message published just before a snapshot may be read after
/// it. Every change carries a version from the namespace's node-change counter, and a snapshot
/// the counter's value at the instant it was taken, so the feed keeps per node the version of
/// the last event it reported and drops anything not newer: an event never arrives after a
/// newer one of the same node.
struct NodeFeed {
    /// Listed nodes: id → version of the last event reported for it.
    known: HashMap<String, u64>,
    /// Nodes reported deleted since the last snapshot: id → version of that removal.
    deleted: HashMap<String, u64>,
    /// Every change up to this version is reflected in what was reported (the version of the
    /// last snapshot applied).
    floor: u64,
}

impl NodeFeed {
    fn new(snapshot: &NodeSnapshot) -> Self {
        NodeFeed {
            known: snapshot
                .nodes
                .iter()
                .map(|(node, version)| (node.id.clone(), *version))
                .collect(),
            deleted: HashMap::new(),
            floor: snapshot.version,
        }
    }

    /// The version of the last event reported for `id` (the floor when none is remembered).
    fn last(&self, id: &str) -> u64 {
        self.known
            .get(id)
            .or_else(|| self.deleted.get(id))
            .copied()
            .unwrap_or(self.floor)
    }

    /// Reports what changed between the last events and `snapshot`, then moves the floor.
    fn reconcile(&mut self, snapshot: NodeSnapshot, tx: &WatchSender<NodeEvent>) {
        let listed: HashSet<&str> = snapshot.nodes.iter().map(|(n, _)| n.id.as_str()).collect();
        let gone: Vec<String> = self
            .known
            .keys()
            .filter(|id| !listed.contains(id.as_str()))
            .cloned()
            .collect();
        for id in gone {
            self.known.remove(&id);
            self.deleted.insert(id.clone(), snapshot.version);
            tx.send(NodeEvent::Delete { id });
        }
        for (node, version) in snapshot.nodes {
            // A record without a version (written by an older release) is reported once.
            let newer = version > self.last(&node.id)
                || (version == 0 && !self.known.contains_key(&node.id));
            if newer {
                self.known.insert(node.id.clone(), version);
                self.deleted.remove(&node.id);
                tx.send(NodeEvent::Put(node));
            }
        }
        self.floor = self.floor.max(snapshot.version);
        let floor = self.floor;
        self.deleted.retain(|_, version| *version > floor);
    }
}

#[async_trait]
impl Feed for NodeFeed {
    type Event = NodeEvent;

    fn message(&mut self, channel: &str, payload: &[u8]) -> Option<NodeEvent> {
        let (version, event) = events::node_event(channel, payload);
        let Some(version) = version else {
            return Some(event);
        };
        match &event {
            NodeEvent::Put(node) => {
                if version <= self.last(&node.id) {
                    return None;
                }
                self.known.insert(node.id.clone(), version);
                self.deleted.remove(&node.id);
            }
            NodeEvent::Delete { id } => {
                if version <= self.last(id) {
                    return None;
                }
                self.known.remove(id);
                self.deleted.insert(id.clone(), version);
            }
            NodeEvent::Resync => {}
        }
        Some(event)
    }

    async fn resubscribed(&mut self, core: &Core, tx: &WatchSender<NodeEvent>) {
        if let Ok(snapshot) = core.node_snapshot().await {
            self.reconcile(snapshot, tx);
        }
    }

    async fn tick(&mut self, core: &Core, tx: &WatchSender<NodeEvent>) {
        // Unreachable: the subscription notices too, and resubscribing sends a Resync.
        if let Ok(snapshot) = core.node_snapshot().await {
            self.reconcile(snapshot, tx);
        }
    }
}

struct TaskFeed;

#[async_trait]
impl Feed for TaskFeed {
    type Event = TaskMetaEvent;

    fn message(&mut self, channel: &str, payload: &[u8]) -> Option<TaskMetaEvent> {
        Some(events::task_event(channel, payload))
    }
}

pub(crate) async fn watch_nodes(registry: &RedisRegistry) -> Result<WatchStream<NodeEvent>> {
    let core = registry.core.clone();
    let channel = core.keys.node_channel().to_string();
    // Subscribe first, then take a snapshot: a change between the two is in the snapshot and
    // its message is dropped as not newer, never missed.
    let subscription = subscribe(&core, &channel).await?;
    let feed = NodeFeed::new(&core.node_snapshot().await?);
    let (tx, stream) = watch_channel(core.config.watch_buffer);
    let shutdown = registry.shutdown_rx.clone();
    tokio::spawn(run(core, channel, subscription, tx, feed, shutdown));
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
                    if event.is_some_and(|event| !tx.send(event)) {
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
                feed.resubscribed(core, tx).await;
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
