//! The public node API: [`Dcron`] and its builder.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use dcron_assign::{Assigner, Strategy};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::clock::{Clock, SystemClock};
pub use crate::engine::claims::BackfillReport;
use crate::engine::config::Config;
use crate::error::{Error, Result};
use crate::event::DcronEvent;
use crate::lifecycle::NodeState;
use crate::policy::{OverlapPolicy, RetryPolicy};
use crate::registry::Lease;
use crate::registry::{PutMode, Registry, WatchStream};
use crate::runtime::{Command, Driver, Shared, StaticDef};
use crate::runtime::{Health, View};
use crate::schedule::{Schedule, SecondsField};
use crate::task::{log_error, FnTask, Task, TaskResult};
use crate::types::{
    validate_task_name, FireKey, MisfirePolicy, NodeEvent, TaskMeta, TaskMetaEvent,
    DEFAULT_MISFIRE_WINDOW,
};
use crate::FireContext;

mod builder;
mod options;
mod tasks;

pub use builder::{DcronBuilder, DEFAULT_CLAIM_AHEAD, MAX_CONCURRENT_FIRES, MAX_TASK_LABELS};
pub use options::TaskOptions;

/// Anything that can be used as a node's registry: a registry value or an `Arc<dyn Registry>`.
pub trait IntoRegistry {
    /// Converts into the shared form the node keeps.
    fn into_registry(self) -> Arc<dyn Registry>;
}

impl<R: Registry> IntoRegistry for R {
    fn into_registry(self) -> Arc<dyn Registry> {
        Arc::new(self)
    }
}

impl IntoRegistry for Arc<dyn Registry> {
    fn into_registry(self) -> Arc<dyn Registry> {
        self
    }
}

pub(crate) struct Inner {
    pub(crate) node_id: Arc<str>,
    pub(crate) cfg: Arc<Config>,
    pub(crate) registry: Arc<dyn Registry>,
    pub(crate) clock: Arc<dyn Clock>,
    cmd_tx: mpsc::UnboundedSender<Command>,
    pending: Mutex<Option<mpsc::UnboundedReceiver<Command>>>,
    /// The static tasks added on this node, with their schedules and tags.
    statics: Mutex<HashMap<String, (Schedule, Vec<String>)>>,
    pub(crate) view: Arc<RwLock<View>>,
    pub(crate) health: watch::Sender<Health>,
    pub(crate) lease_slot: Arc<Mutex<Option<Lease>>>,
    /// Until when the lease in force is known to live (see `Driver`), watched by the fires
    /// holding running slots; the supervisor clears it when the driver fails.
    pub(crate) lease_until: Arc<watch::Sender<crate::fire::LeaseBound>>,
    pub(crate) events: broadcast::Sender<DcronEvent>,
    in_flight: Arc<crate::inflight::InFlight>,
    stop_report: Arc<Mutex<crate::inflight::StopReport>>,
}

/// A dcron node: register tasks, `start()`, and every fire of every task runs exactly once
/// across all nodes sharing the registry.
///
/// Cloning gives another handle to the same node. Dropping every handle without calling
/// [`Dcron::stop`] ends the node abruptly, like a crash: in-flight handlers are cancelled, the
/// registration is left to expire, and peers take the tasks over after the TTL. Call `stop()`
/// for a graceful leave.
///
/// ```
/// # use std::sync::Arc;
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> dcron_core::Result<()> {
/// use dcron_core::{Dcron, MemoryRegistry};
/// let registry = MemoryRegistry::new();
/// let node = Dcron::builder(registry.clone()).build()?;
/// node.add_func("report", "*/5 * * * * *", |ctx| async move {
///     println!("{} at {}", ctx.name(), ctx.scheduled);
///     Ok(())
/// }).await?;
/// node.start().await?;
/// node.stop().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Dcron {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Dcron {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dcron")
            .field("node_id", &self.inner.node_id)
            .field("registry", &self.inner.registry.backend())
            .finish_non_exhaustive()
    }
}

impl Dcron {
    /// Starts building a node on `registry`.
    pub fn builder(registry: impl IntoRegistry) -> DcronBuilder {
        let hostname = hostname::get()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default();
        DcronBuilder {
            registry: registry.into_registry(),
            clock: Arc::new(SystemClock),
            cfg: Config {
                assigner: Strategy::default().assigner(),
                seconds: SecondsField::default(),
                task_run_fn: None,
                error_handler: Arc::new(log_error),
                misfire: MisfirePolicy::default(),
                misfire_window: DEFAULT_MISFIRE_WINDOW,
                ttl: Duration::from_secs(10),
                renew_interval: Duration::from_millis(3333),
                poll_interval: Duration::from_secs(5),
                grace_period: Duration::from_secs(30),
                max_clock_skew: Duration::from_secs(5),
                claim_margin: Duration::from_secs(30),
                retry_backoff: Duration::from_millis(500),
                default_retry: RetryPolicy::NONE,
                default_timeout: None,
                default_overlap: OverlapPolicy::Allow,
                status_interval: Duration::from_secs(2),
                overdue_threshold: Duration::from_secs(1),
                claim_retention: Duration::ZERO,
                claim_ahead: DEFAULT_CLAIM_AHEAD,
                start_timeout: Duration::from_secs(10),
                max_concurrent_fires: None,
                task_label_limit: 0,
                name: None,
                weight: 1,
                ip: String::new(),
                hostname,
            },
        }
    }

    /// This node's unique id (the seed's `GetNodeID`).
    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    /// The registry this node uses, wrapped in a layer that records metrics and a
    /// tracing span per call (`dcron_registry_call_seconds`, `dcron.registry`).
    pub fn registry(&self) -> &Arc<dyn Registry> {
        &self.inner.registry
    }

    /// Every task this node knows, static and dynamic, sorted (the seed's `GetAllTasks`).
    pub fn all_tasks(&self) -> Vec<String> {
        self.read_view(|v| v.all.iter().map(|n| n.to_string()).collect())
    }

    /// The tasks this node owns and schedules now, sorted (the seed's `GetMyselfRunningTasks`).
    pub fn my_running_tasks(&self) -> Vec<String> {
        self.read_view(|v| v.owned.iter().map(|n| n.to_string()).collect())
    }

    /// The node's state: its lifecycle state, or [`NodeState::Failed`] with the reason when its
    /// driver failed. Compares with a state name: `node.state() == "working"`.
    pub fn state(&self) -> NodeState {
        self.inner.health.borrow().state.clone()
    }

    /// Resolves once the node is registered and has taken its share of the tasks (at once if
    /// it already has). For callers that start a node in the background.
    ///
    /// # Errors
    /// [`Error::InvalidState`] when the node stops or fails before it is ready.
    pub async fn ready(&self) -> Result<()> {
        let mut rx = self.inner.health.subscribe();
        let health = rx
            .wait_for(|h| h.ready || matches!(h.state, NodeState::Stopped | NodeState::Failed(_)))
            .await
            .map_err(|_| Error::InvalidState("the node is gone".into()))?
            .clone();
        if health.ready {
            Ok(())
        } else {
            Err(Error::InvalidState(format!(
                "node `{}` is {} and will not become ready",
                self.inner.node_id, health.state
            )))
        }
    }

    pub(crate) fn read_view<T>(&self, f: impl FnOnce(&View) -> T) -> T {
        match self.inner.view.read() {
            Ok(v) => f(&v),
            Err(poisoned) => f(&poisoned.into_inner()),
        }
    }

    /// Subscribes to this node's events (lifecycle, ownership, every fire).
    pub fn events(&self) -> broadcast::Receiver<DcronEvent> {
        self.inner.events.subscribe()
    }

    /// Watches the cluster's nodes through the registry (the seed's `WatchNodes`).
    ///
    /// # Errors
    /// As [`Registry::watch_nodes`].
    pub async fn watch_nodes(&self) -> Result<WatchStream<NodeEvent>> {
        self.inner.registry.watch_nodes().await
    }

    /// Watches dynamic task changes through the registry (the seed's `WatchTaskEvent`).
    ///
    /// # Errors
    /// As [`Registry::watch_tasks`].
    pub async fn watch_task_events(&self) -> Result<WatchStream<TaskMetaEvent>> {
        self.inner.registry.watch_tasks().await
    }

    /// The schedule of a static task added on this node.
    pub(crate) fn static_schedule(&self, name: &str) -> Option<Schedule> {
        let statics = self.inner.statics.lock().unwrap_or_else(|p| p.into_inner());
        statics.get(name).map(|(s, _)| s.clone())
    }

    /// The static tasks added on this node that carry `tag`.
    fn static_tags(&self, tag: &str) -> Vec<String> {
        let statics = self.inner.statics.lock().unwrap_or_else(|p| p.into_inner());
        statics
            .iter()
            .filter(|(_, (_, tags))| tags.iter().any(|t| t == tag))
            .map(|(name, _)| name.clone())
            .collect()
    }

    fn parse(&self, expr: &str, zone: Option<&str>) -> Result<Schedule> {
        Schedule::parse(expr, zone, self.inner.cfg.seconds)
    }

    fn send(&self, cmd: Command) {
        // The driver may be gone (stopped); commands after that have nothing left to change.
        let _ = self.inner.cmd_tx.send(cmd);
    }

    /// Pauses a task cluster-wide: its fires are skipped (reported as
    /// [`DcronEvent::Skipped`]) on every node until [`Dcron::resume_task`]. Takes effect on this
    /// node at once and on the others within their poll interval.
    ///
    /// # Errors
    /// [`Error::InvalidTaskName`]; [`Error::Unsupported`] on a registry without records;
    /// registry errors.
    pub async fn pause_task(&self, name: &str) -> Result<()> {
        let now = self.inner.clock.now();
        crate::admin::pause_task(&*self.inner.registry, name, now).await?;
        self.send(Command::PauseChanged(crate::PauseRecord {
            task: name.to_string(),
            paused: true,
            changed_at: now,
        }));
        Ok(())
    }

    /// Resumes a paused task; occurrences that fell inside the pause are not caught up.
    ///
    /// # Errors
    /// As [`Dcron::pause_task`].
    pub async fn resume_task(&self, name: &str) -> Result<()> {
        let now = self.inner.clock.now();
        crate::admin::resume_task(&*self.inner.registry, name, now).await?;
        self.send(Command::PauseChanged(crate::PauseRecord {
            task: name.to_string(),
            paused: false,
            changed_at: now,
        }));
        Ok(())
    }

    /// Runs a task once now, in addition to its schedule, exactly once cluster-wide, on its
    /// owner (within the owner's poll interval). Answers the request.
    ///
    /// # Errors
    /// [`Error::InvalidTaskName`]; [`Error::Tombstoned`]; [`Error::Unsupported`] on a registry
    /// without records; registry errors.
    pub async fn trigger_task(&self, name: &str) -> Result<crate::TriggerRecord> {
        let record =
            crate::admin::trigger_task(&*self.inner.registry, name, self.inner.clock.now()).await?;
        self.send(Command::Resync);
        Ok(record)
    }

    /// The status of a task: run and failure counts, the last fire and its result (as stored
    /// by the owners, up to one status interval old), with the owner and next fire as this node
    /// computes them when it owns the task.
    ///
    /// # Errors
    /// [`Error::InvalidTaskName`]; registry errors.
    pub async fn task_status(&self, name: &str) -> Result<Option<crate::TaskStatus>> {
        validate_task_name(name)?;
        let (tx, rx) = oneshot::channel();
        self.send(Command::Status {
            name: name.to_string(),
            reply: tx,
        });
        let local = rx.await.ok().flatten();
        let stored = match crate::admin::task_status(&*self.inner.registry, name).await {
            Ok(s) => s,
            Err(Error::Unsupported { .. }) => None,
            Err(e) => return Err(e),
        };
        Ok(match (local, stored) {
            (Some(mut l), Some(s)) => {
                if s.run_count >= l.run_count {
                    l.run_count = s.run_count;
                    l.failure_count = s.failure_count;
                    l.last_fire = s.last_fire;
                    l.last_node = s.last_node;
                    l.last_result = s.last_result;
                }
                if l.owner.is_none() {
                    l.owner = s.owner;
                }
                Some(l)
            }
            (l, s) => l.or(s),
        })
    }

    /// Claims and runs, on this node, the occurrences of a task in `[from, to)` (`to` capped at
    /// now) that were never claimed: exactly once cluster-wide, like every fire. Claims are only
    /// known for the claim retention (see [`DcronBuilder::claim_retention`]). Answers once the
    /// claims are decided; the fires run in the background.
    ///
    /// # Errors
    /// [`Error::NotFound`] for a task this node does not know; [`Error::Tombstoned`];
    /// [`Error::InvalidArgument`] for an empty range or more than 10,000 occurrences;
    /// [`Error::InvalidState`] when the node is not running.
    pub async fn backfill(
        &self,
        name: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<BackfillReport> {
        validate_task_name(name)?;
        let (tx, rx) = oneshot::channel();
        self.send(Command::Backfill {
            name: name.to_string(),
            from,
            to,
            reply: tx,
        });
        rx.await
            .map_err(|_| Error::InvalidState("the node is not running".into()))?
    }

    /// Starts the node: registers it, takes its share of the tasks, and answers once it has
    /// (see [`Dcron::ready`]). Installs no signal handler.
    ///
    /// The node's driver runs supervised: should it panic or fail, the node moves to
    /// [`NodeState::Failed`], reports [`DcronEvent::NodeFailed`], and unregisters so its tasks
    /// move to healthy nodes; other nodes are never affected.
    ///
    /// # Errors
    /// [`Error::InvalidState`] when the node was already started, or failed while starting;
    /// [`Error::Unavailable`] when it is not ready within the start timeout
    /// ([`DcronBuilder::start_timeout`], default 10 s; the registry is unreachable, say). The
    /// node keeps trying in the background after such an error: `ready()` resolves when it
    /// gets there, and `stop()` ends it.
    pub async fn start(&self) -> Result<()> {
        let rx = self
            .inner
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| Error::InvalidState("node already started".into()))?;
        let inner = &self.inner;
        let shared = Shared {
            node_id: inner.node_id.clone(),
            cfg: inner.cfg.clone(),
            registry: inner.registry.clone(),
            clock: inner.clock.clone(),
            view: inner.view.clone(),
            health: inner.health.clone(),
            lease_slot: inner.lease_slot.clone(),
            lease_until: inner.lease_until.clone(),
            events: inner.events.clone(),
            in_flight: inner.in_flight.clone(),
            stop_report: inner.stop_report.clone(),
        };
        let driver = Driver::new(shared, rx);
        tokio::spawn(supervise(
            tokio::spawn(driver.run()),
            self.inner.node_id.clone(),
            self.inner.registry.clone(),
            self.inner.health.clone(),
            self.inner.lease_slot.clone(),
            self.inner.lease_until.clone(),
            self.inner.events.clone(),
        ));
        let timeout = self.inner.cfg.start_timeout;
        match tokio::time::timeout(timeout, self.ready()).await {
            Ok(r) => r,
            Err(_) => {
                let last = self.inner.health.borrow().last_error.clone();
                Err(Error::unavailable(format!(
                    "node `{}` was not registered and working within {timeout:?}{}; it keeps trying in the background",
                    self.inner.node_id,
                    last.map(|e| format!(" (last registration error: {e})"))
                        .unwrap_or_default()
                )))
            }
        }
    }

    /// Stops the node gracefully: status `leaving` (peers take the tasks and catch up), no new
    /// fires, in-flight handlers finish within the grace period (then are cancelled), the
    /// registration is removed. Idempotent; returns when the node has stopped, with a
    /// [`StopReport`](crate::StopReport) of the fires that were still running when the grace
    /// period ended (empty when every handler finished in time; a later call gets the same
    /// report).
    ///
    /// # Errors
    /// None today; the `Result` leaves room for registries that fail to release resources.
    pub async fn stop(&self) -> Result<crate::StopReport> {
        let report = || {
            self.inner
                .stop_report
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        };
        let (tx, rx) = oneshot::channel();
        if self.inner.cmd_tx.send(Command::Stop(tx)).is_err() {
            return Ok(report());
        }
        // Never started: nothing to wait for.
        if self
            .inner
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .is_some()
        {
            self.inner
                .health
                .send_modify(|h| h.state = NodeState::Stopped);
            return Ok(crate::StopReport::default());
        }
        let _ = rx.await;
        Ok(report())
    }

    /// The names of the tasks that carry `tag` ([`TaskMeta::tags`]), sorted: the registry's
    /// live tasks and this node's static tasks.
    ///
    /// # Errors
    /// The registry's, when its tasks cannot be listed.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> dcron_core::Result<()> {
    /// use dcron_core::{Dcron, MemoryRegistry, TaskMeta};
    /// let node = Dcron::builder(MemoryRegistry::new())
    ///     .task_run_fn(|ctx| async move { Ok(()) })
    ///     .build()?;
    /// node.add_task_meta(TaskMeta::new("invoice", "0 9 * * *").with_tag("billing")).await?;
    /// node.add_task_meta(TaskMeta::new("backup", "0 3 * * *").with_tag("ops")).await?;
    /// assert_eq!(node.tasks_tagged("billing").await?, ["invoice"]);
    /// # Ok(()) }
    /// ```
    pub async fn tasks_tagged(&self, tag: &str) -> Result<Vec<String>> {
        let listing = self.inner.registry.list_tasks().await?;
        let mut names: Vec<String> = listing
            .items
            .into_iter()
            .filter(|m| m.has_tag(tag))
            .map(|m| m.name)
            .collect();
        names.extend(self.static_tags(tag));
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// The fires running on this node now (from the start of a fire's first attempt to the
    /// end of its last), by task and instant.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> dcron_core::Result<()> {
    /// use dcron_core::{Dcron, MemoryRegistry};
    /// let node = Dcron::builder(MemoryRegistry::new()).build()?;
    /// assert!(node.running_fires().is_empty());
    /// # Ok(()) }
    /// ```
    pub fn running_fires(&self) -> Vec<crate::FireInfo> {
        self.inner.in_flight.snapshot()
    }
}

/// Waits for the driver; if it panicked, marks the node failed, reports it and unregisters it
/// so that its tasks move to the other nodes at once rather than after its lease expires.
async fn supervise(
    driver: tokio::task::JoinHandle<()>,
    node_id: Arc<str>,
    registry: Arc<dyn Registry>,
    health: watch::Sender<Health>,
    lease_slot: Arc<Mutex<Option<Lease>>>,
    lease_until: Arc<watch::Sender<crate::fire::LeaseBound>>,
    events: broadcast::Sender<DcronEvent>,
) {
    let Err(e) = driver.await else {
        return;
    };
    if !e.is_panic() {
        return;
    }
    let panic = e.into_panic();
    let reason = if let Some(s) = panic.downcast_ref::<&str>() {
        format!("the scheduling driver panicked: {s}")
    } else if let Some(s) = panic.downcast_ref::<String>() {
        format!("the scheduling driver panicked: {s}")
    } else {
        "the scheduling driver panicked".to_string()
    };
    tracing::error!(node = %node_id, %reason, "node failed; unregistering so its tasks move");
    metrics::counter!("dcron_node_failures_total").increment(1);
    health.send_modify(|h| h.state = NodeState::Failed(reason.clone()));
    let _ = events.send(DcronEvent::NodeFailed {
        node: node_id.to_string(),
        reason,
    });
    // Fires holding running slots stop before the slots end with the lease.
    lease_until.send_replace(None);
    let lease = lease_slot.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(lease) = lease {
        if let Err(e) = registry.unregister(&lease).await {
            tracing::warn!(node = %node_id, error = %e, "unregistering the failed node failed; its lease will expire");
        }
    }
}
