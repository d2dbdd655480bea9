//! [`ZkEvent`]: what the registry reports about its sessions and its server, beside logs and
//! metrics.

use std::time::Duration;

use tokio::sync::broadcast;

/// Something the registry noticed about its ZooKeeper sessions or server.
///
/// Subscribe with [`crate::ZkRegistry::events`]. Each event is also logged (`tracing`) and
/// counted (the `metrics` facade: `dcron_zk_events_total{event=…}`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ZkEvent {
    /// The shared session (lists, tasks, claims, watches) expired and the client opened a new
    /// one: the registry re-created its session marker and re-armed every watch (watch streams
    /// yield a resync).
    SessionRenewed {
        /// The expired session's id.
        old: i64,
        /// The new session's id.
        new: i64,
    },
    /// The shared connection was re-established within the same session (watches re-armed).
    Reconnected {
        /// The session's id.
        session: i64,
    },
    /// The session of a node registration ended (expired, closed by the lease watchdog after a
    /// TTL without keep-alive, or replaced by a newer registration): the lease is lost and the
    /// node registers again with a new epoch.
    LeaseLost {
        /// The node id.
        node_id: String,
        /// The registration's session id.
        session: i64,
    },
    /// The server does not offer TTL znodes (`extendedTypesEnabled=false`), or they are turned
    /// off by configuration: expired claims are removed by the sweeper of this namespace.
    SweeperActive {
        /// How often the sweeper runs.
        interval: Duration,
    },
}

impl ZkEvent {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ZkEvent::SessionRenewed { .. } => "session_renewed",
            ZkEvent::Reconnected { .. } => "reconnected",
            ZkEvent::LeaseLost { .. } => "lease_lost",
            ZkEvent::SweeperActive { .. } => "sweeper_active",
        }
    }
}

/// The sending side, shared by the registry's tasks.
#[derive(Clone, Debug)]
pub(crate) struct Events {
    tx: broadcast::Sender<ZkEvent>,
}

impl Events {
    pub(crate) fn new() -> Self {
        let (tx, _) = broadcast::channel(256);
        Events { tx }
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<ZkEvent> {
        self.tx.subscribe()
    }

    /// Logs, counts and broadcasts an event (nobody listening is fine).
    pub(crate) fn emit(&self, event: ZkEvent) {
        match &event {
            ZkEvent::SweeperActive { interval } => tracing::warn!(
                ?interval,
                "zookeeper: TTL znodes unavailable; expired claims are removed by the sweeper"
            ),
            ZkEvent::SessionRenewed { old, new } => tracing::warn!(
                old = format_args!("{old:#x}"),
                new = format_args!("{new:#x}"),
                "zookeeper: the shared session expired; a new one was opened and watches re-armed"
            ),
            ZkEvent::LeaseLost { node_id, session } => tracing::info!(
                node = %node_id,
                session = format_args!("{session:#x}"),
                "zookeeper: a registration's session ended; the lease is lost"
            ),
            ZkEvent::Reconnected { session } => tracing::debug!(
                session = format_args!("{session:#x}"),
                "zookeeper: reconnected; watches re-armed"
            ),
        }
        metrics::counter!("dcron_zk_events_total", "event" => event.kind()).increment(1);
        let _ = self.tx.send(event);
    }
}
