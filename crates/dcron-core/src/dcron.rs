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

/// The default lead of a claim before its fire's instant ([`DcronBuilder::claim_ahead`]): long
/// enough to take a registry round trip and a large instant's work out of the lateness on the
/// machines measured (`docs/BENCHMARKS.md`), short enough that little can change meanwhile.
pub const DEFAULT_CLAIM_AHEAD: Duration = Duration::from_millis(100);

/// The most distinct `task` labels [`DcronBuilder::task_metric_labels`] accepts.
pub const MAX_TASK_LABELS: usize = 10_000;

/// The most fires [`DcronBuilder::max_concurrent_fires`] accepts (a tokio semaphore's bound
/// is far higher; this one keeps the figure meaningful).
pub const MAX_CONCURRENT_FIRES: usize = 1 << 24;

/// Builds a [`Dcron`] node. Every setting has a default; see each method.
pub struct DcronBuilder {
    registry: Arc<dyn Registry>,
    clock: Arc<dyn Clock>,
    cfg: Config,
}

impl std::fmt::Debug for DcronBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DcronBuilder")
            .field("registry", &self.registry.backend())
            .field("strategy", &self.cfg.assigner.name())
            .field("ttl", &self.cfg.ttl)
            .finish_non_exhaustive()
    }
}

impl DcronBuilder {
    /// The assignment strategy (default: consistent hashing).
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.cfg.assigner = strategy.assigner();
        self
    }

    /// A custom assigner; overrides [`DcronBuilder::strategy`].
    pub fn assigner(mut self, assigner: Arc<dyn Assigner>) -> Self {
        self.cfg.assigner = assigner;
        self
    }

    /// How the cron seconds field is read (the seed's `WithCronOptions(cron.WithSeconds())`;
    /// default: optional, so 5-field expressions run at second 0 and 6-field ones have seconds).
    pub fn seconds(mut self, seconds: SecondsField) -> Self {
        self.cfg.seconds = seconds;
        self
    }

    /// The one handler for every dynamic task (the seed's `WithTaskRunFunc`). Without it,
    /// `add_task_meta` is refused with [`Error::NotConfigured`].
    pub fn task_run_fn<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(FireContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = TaskResult> + Send + 'static,
    {
        self.cfg.task_run_fn = Some(Arc::new(FnTask(f)));
        self
    }

    /// Called whenever a fire fails, panics or times out (the seed's `WithErrHandler`). Default:
    /// log through `tracing` at error level.
    pub fn error_handler<F>(mut self, f: F) -> Self
    where
        F: Fn(&TaskMeta, &Error) + Send + Sync + 'static,
    {
        self.cfg.error_handler = Arc::new(f);
        self
    }

    /// The default misfire policy for tasks that do not set one (default: `FireOnce`).
    pub fn misfire_policy(mut self, policy: MisfirePolicy) -> Self {
        self.cfg.misfire = policy;
        self
    }

    /// The default misfire window (default 60 s).
    pub fn misfire_window(mut self, window: Duration) -> Self {
        self.cfg.misfire_window = window;
        self
    }

    /// The registration lease TTL (default 10 s): a crashed node's tasks move after about this
    /// long. Renewal runs every third of it unless set with [`DcronBuilder::renew_interval`].
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.cfg.ttl = ttl;
        self.cfg.renew_interval = ttl / 3;
        self
    }

    /// How often the lease is renewed (default TTL / 3).
    pub fn renew_interval(mut self, interval: Duration) -> Self {
        self.cfg.renew_interval = interval;
        self
    }

    /// How often nodes and tasks are listed in full even when watches work (default 5 s).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.cfg.poll_interval = interval;
        self
    }

    /// How long `stop()` lets in-flight handlers finish before cancelling them (default 30 s).
    pub fn grace_period(mut self, grace: Duration) -> Self {
        self.cfg.grace_period = grace;
        self
    }

    /// The largest clock difference expected between nodes (default 5 s); widens the claim
    /// retention so a fire is never claimable twice across skewed clocks.
    pub fn max_clock_skew(mut self, skew: Duration) -> Self {
        self.cfg.max_clock_skew = skew;
        self
    }

    /// The retry policy of tasks that set none (default: no retry).
    pub fn default_retry(mut self, retry: RetryPolicy) -> Self {
        self.cfg.default_retry = retry;
        self
    }

    /// The timeout of one attempt for tasks that set none (default: none).
    pub fn default_timeout(mut self, timeout: Duration) -> Self {
        self.cfg.default_timeout = Some(timeout);
        self
    }

    /// The overlap policy of tasks that set none (default: [`OverlapPolicy::Allow`]).
    pub fn default_overlap(mut self, overlap: OverlapPolicy) -> Self {
        self.cfg.default_overlap = overlap;
        self
    }

    /// How often the task status records ([`crate::TaskStatus`]) of completed fires are
    /// written, in one batch (default 2 s; zero turns stored status off).
    pub fn status_interval(mut self, interval: Duration) -> Self {
        self.cfg.status_interval = interval;
        self
    }

    /// A scheduled fire starting later than this after its instant is reported as
    /// [`DcronEvent::Overdue`] (default 1 s).
    pub fn overdue_threshold(mut self, threshold: Duration) -> Self {
        self.cfg.overdue_threshold = threshold;
        self
    }

    /// The least time a claim is kept (default: the misfire window + max clock skew + 30 s).
    /// [`Dcron::backfill`] can tell "never ran" from "ran" only within the retention: set it to
    /// the horizon you intend to backfill over.
    pub fn claim_retention(mut self, retention: Duration) -> Self {
        self.cfg.claim_retention = retention;
        self
    }

    /// How long before a fire's instant its claim is sent (default [`DEFAULT_CLAIM_AHEAD`],
    /// 100 ms; zero claims at the instant). The handler still starts at the instant: claiming
    /// ahead takes the registry round trip and the driver's work for a large instant out of the
    /// lateness. A fire claimed ahead whose task is deleted, paused, changed or starts a new life
    /// before the instant does not start (reported as [`crate::SkipReason::Cancelled`]); its
    /// claim stays, so no other node runs it either. A node that crashes between the claim and
    /// the instant loses that fire, as one crashing just after winning it would: keep the lead
    /// short (tens to hundreds of milliseconds).
    pub fn claim_ahead(mut self, lead: Duration) -> Self {
        self.cfg.claim_ahead = lead;
        self
    }

    /// How long [`Dcron::start`] waits for the node to be registered and to have taken its
    /// share before it answers an error (default 10 s). The node keeps trying meanwhile.
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.cfg.start_timeout = timeout;
        self
    }

    /// The most fires that run at once on this node (default: no limit). A fire beyond it
    /// waits for one to end, at most until its deadline (instant plus misfire window; a
    /// trigger waits until the node stops), then is skipped and reported as
    /// [`crate::SkipReason::ConcurrencyLimit`]; it is not handed to another node (its claim is
    /// this node's). Counts every fire from the start of its first attempt to the end of its
    /// last, retries' delays included. See also [`TaskMeta::max_concurrent`] for one task.
    ///
    /// ```
    /// # fn main() -> dcron_core::Result<()> {
    /// use dcron_core::{Dcron, MemoryRegistry};
    /// let node = Dcron::builder(MemoryRegistry::new()).max_concurrent_fires(8).build()?;
    /// # drop(node);
    /// assert!(Dcron::builder(MemoryRegistry::new()).max_concurrent_fires(0).build().is_err());
    /// # Ok(()) }
    /// ```
    pub fn max_concurrent_fires(mut self, limit: usize) -> Self {
        self.cfg.max_concurrent_fires = Some(limit);
        self
    }

    /// Labels the fire metrics (`dcron_fires_executed_total`, `dcron_fire_duration_seconds`,
    /// `dcron_fire_lateness_seconds`, `dcron_fires_skipped_total`,
    /// `dcron_fires_timed_out_total`) with the task's name, for at most `limit` distinct tasks
    /// (default 0: no `task` label). Fires of tasks past the limit are labelled
    /// `task="_other"`, so the number of series stays bounded whatever the number of tasks.
    /// The first `limit` task names this node runs get their own label (at most
    /// [`MAX_TASK_LABELS`]).
    pub fn task_metric_labels(mut self, limit: usize) -> Self {
        self.cfg.task_label_limit = limit;
        self
    }

    /// The clock (default: the system clock). Tests pass a [`crate::TokioClock`].
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// A stable name kept alongside the generated node id.
    pub fn node_name(mut self, name: impl Into<String>) -> Self {
        self.cfg.name = Some(name.into());
        self
    }

    /// The node's weight for weighted strategies (default 1; 0 = owns nothing).
    pub fn weight(mut self, weight: u32) -> Self {
        self.cfg.weight = weight;
        self
    }

    /// The IP address published in the node record.
    pub fn ip(mut self, ip: impl Into<String>) -> Self {
        self.cfg.ip = ip.into();
        self
    }

    /// Builds the node (not started).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the setting and its bound when one is outside it: TTL
    /// 100 ms – 1 day, renewal interval in (0, TTL), poll interval 10 ms – 1 day, grace period
    /// and status interval ≤ 1 day, clock skew ≤ 1 h, misfire window ≤ 7 days, claim retention
    /// ≤ 30 days, claim lead ≤ 10 s, start timeout 1 ms – 1 day, default timeout ≤ 7 days,
    /// `FireAll` between 1 and 10,000, default retries valid.
    pub fn build(self) -> Result<Dcron> {
        let cfg = self.cfg;
        check_config(&cfg)?;
        let node_id = format!(
            "{}-{}",
            cfg.name.as_deref().unwrap_or("node"),
            uuid::Uuid::new_v4().simple()
        );
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(4096);
        let view = Arc::new(RwLock::new(View::default()));
        let inner = Inner {
            node_id: Arc::from(node_id.as_str()),
            cfg: Arc::new(cfg),
            registry: Arc::new(crate::instrument::InstrumentedRegistry::new(self.registry)),
            clock: self.clock,
            cmd_tx,
            pending: Mutex::new(Some(cmd_rx)),
            statics: Mutex::new(HashMap::new()),
            view,
            health: watch::Sender::new(Health::default()),
            lease_slot: Arc::new(Mutex::new(None)),
            lease_until: Arc::new(watch::Sender::new(None)),
            events,
            in_flight: Arc::new(crate::inflight::InFlight::new(Arc::from(node_id.as_str()))),
            stop_report: Arc::default(),
        };
        Ok(Dcron {
            inner: Arc::new(inner),
        })
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

    async fn add_static(
        &self,
        name: &str,
        cron: &str,
        task: Arc<dyn Task>,
        one_shot: bool,
        force: bool,
    ) -> Result<()> {
        self.add_static_with(name, cron, task, one_shot, force, &TaskOptions::default())
            .await
    }

    async fn add_static_with(
        &self,
        name: &str,
        cron: &str,
        task: Arc<dyn Task>,
        one_shot: bool,
        force: bool,
        options: &TaskOptions,
    ) -> Result<()> {
        validate_task_name(name)?;
        let schedule = self.parse(cron, options.time_zone.as_deref())?;
        let mut meta = TaskMeta::new(name, cron);
        options.apply(&mut meta);
        meta.one_shot = one_shot;
        meta.executed_and_mark_deleted = one_shot;
        check_policies(&meta)?;
        check_fires(&meta, &schedule, self.inner.clock.now())?;
        {
            let statics = self.inner.statics.lock().unwrap_or_else(|p| p.into_inner());
            if !force && statics.contains_key(name) {
                return Err(Error::AlreadyExists {
                    name: name.to_string(),
                });
            }
        }
        let mut new_life = None;
        if force {
            // A new life: the tombstone and the old claims go, and nothing of the previous
            // life (its last fires) is ever replayed. A dynamic record of the name is kept.
            new_life = Some(
                self.inner
                    .registry
                    .restart_life(name, self.inner.clock.now())
                    .await?,
            );
        } else {
            match self.inner.registry.get_tombstone(name).await {
                Ok(Some(_)) => {
                    return Err(Error::Tombstoned {
                        name: name.to_string(),
                    })
                }
                Ok(None) => {}
                // The registry is unreachable: add locally anyway; the claim refuses a
                // tombstoned name at fire time, so this cannot run a deleted task.
                Err(e) if e.is_retryable() => {
                    tracing::warn!(task = name, error = %e, "registry unreachable while adding a static task; tombstone enforced at fire time");
                }
                Err(e) => return Err(e),
            }
        }
        {
            let mut statics = self.inner.statics.lock().unwrap_or_else(|p| p.into_inner());
            if !force && statics.contains_key(name) {
                return Err(Error::AlreadyExists {
                    name: name.to_string(),
                });
            }
            statics.insert(name.to_string(), (schedule.clone(), meta.tags.clone()));
        }
        self.send(Command::UpsertStatic(StaticDef {
            meta: Arc::new(meta),
            schedule,
            task,
        }));
        if let Some(life) = new_life {
            self.send(Command::LifeStarted(name.to_string(), life));
        }
        Ok(())
    }

    /// Adds a static task run by a [`Task`] value (the seed's `AddTask`).
    ///
    /// # Errors
    /// [`Error::InvalidTaskName`], [`Error::InvalidSchedule`], [`Error::AlreadyExists`] (a
    /// static task of that name on this node), [`Error::Tombstoned`] (marked deleted in the
    /// registry).
    pub async fn add_task(&self, name: &str, cron: &str, task: impl Task) -> Result<()> {
        self.add_static(name, cron, Arc::new(task), false, false)
            .await
    }

    /// Adds a static task run by an async closure (the seed's `AddFunc`).
    ///
    /// # Errors
    /// As [`Dcron::add_task`].
    pub async fn add_func<F, Fut>(&self, name: &str, cron: &str, f: F) -> Result<()>
    where
        F: Fn(FireContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = TaskResult> + Send + 'static,
    {
        self.add_static(name, cron, Arc::new(FnTask(f)), false, false)
            .await
    }

    /// Adds a static task that runs once cluster-wide: after its first successful run it is
    /// marked deleted in the registry (the seed's `AddOneShotTask`).
    ///
    /// # Errors
    /// As [`Dcron::add_task`].
    pub async fn add_one_shot_task(&self, name: &str, cron: &str, task: impl Task) -> Result<()> {
        self.add_static(name, cron, Arc::new(task), true, false)
            .await
    }

    /// Closure form of [`Dcron::add_one_shot_task`] (the seed's `AddOneShotFunc`).
    ///
    /// # Errors
    /// As [`Dcron::add_task`].
    pub async fn add_one_shot_func<F, Fut>(&self, name: &str, cron: &str, f: F) -> Result<()>
    where
        F: Fn(FireContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = TaskResult> + Send + 'static,
    {
        self.add_static(name, cron, Arc::new(FnTask(f)), true, false)
            .await
    }

    /// Adds or replaces a static task whatever exists, clearing its tombstone and claims in the
    /// registry (the seed's `ForceAddTask`).
    ///
    /// # Errors
    /// [`Error::InvalidTaskName`], [`Error::InvalidSchedule`], registry errors.
    pub async fn force_add_task(&self, name: &str, cron: &str, task: impl Task) -> Result<()> {
        self.add_static(name, cron, Arc::new(task), false, true)
            .await
    }

    /// Closure form of [`Dcron::force_add_task`] (the seed's `ForceAddFunc`).
    ///
    /// # Errors
    /// As [`Dcron::force_add_task`].
    pub async fn force_add_func<F, Fut>(&self, name: &str, cron: &str, f: F) -> Result<()>
    where
        F: Fn(FireContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = TaskResult> + Send + 'static,
    {
        self.add_static(name, cron, Arc::new(FnTask(f)), false, true)
            .await
    }

    /// One-shot form of [`Dcron::force_add_task`] (the seed's `ForceAddOneShotTask`).
    ///
    /// # Errors
    /// As [`Dcron::force_add_task`].
    pub async fn force_add_one_shot_task(
        &self,
        name: &str,
        cron: &str,
        task: impl Task,
    ) -> Result<()> {
        self.add_static(name, cron, Arc::new(task), true, true)
            .await
    }

    /// Closure form of [`Dcron::force_add_one_shot_task`] (the seed's `ForceAddOneShotFunc`).
    ///
    /// # Errors
    /// As [`Dcron::force_add_task`].
    pub async fn force_add_one_shot_func<F, Fut>(&self, name: &str, cron: &str, f: F) -> Result<()>
    where
        F: Fn(FireContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = TaskResult> + Send + 'static,
    {
        self.add_static(name, cron, Arc::new(FnTask(f)), true, true)
            .await
    }

    fn check_meta(&self, meta: &TaskMeta) -> Result<TaskMeta> {
        if self.inner.cfg.task_run_fn.is_none() {
            return Err(Error::NotConfigured(
                "dynamic tasks need a handler: set DcronBuilder::task_run_fn".into(),
            ));
        }
        validate_task_name(&meta.name)?;
        let schedule = self.parse(&meta.cron_format, meta.time_zone.as_deref())?;
        check_policies(meta)?;
        let now = self.inner.clock.now();
        check_fires(meta, &schedule, now)?;
        let mut meta = meta.clone();
        // The task's live-since is the moment of this write, whatever the caller put there.
        meta.created_at = Some(now);
        Ok(meta)
    }

    /// Adds a dynamic task to the registry; every node sees it and its owner runs it with the
    /// `task_run_fn` handler (the seed's `AddTaskMeta`).
    ///
    /// # Errors
    /// [`Error::NotConfigured`] without a `task_run_fn`; [`Error::InvalidTaskName`],
    /// [`Error::InvalidSchedule`]; [`Error::AlreadyExists`], [`Error::Tombstoned`]; registry
    /// errors.
    pub async fn add_task_meta(&self, meta: TaskMeta) -> Result<()> {
        let meta = self.check_meta(&meta)?;
        self.inner
            .registry
            .put_task(&meta, PutMode::CreateOnly)
            .await?;
        self.send(Command::UpsertDynamic(Arc::new(meta)));
        Ok(())
    }

    /// Adds or replaces a dynamic task whatever exists, clearing its tombstone and claims (the
    /// seed's `ForceAddTaskMeta`).
    ///
    /// # Errors
    /// As [`Dcron::add_task_meta`] minus the existence checks.
    pub async fn force_add_task_meta(&self, meta: TaskMeta) -> Result<()> {
        let meta = self.check_meta(&meta)?;
        self.inner.registry.put_task(&meta, PutMode::Force).await?;
        let life = if self.inner.registry.capabilities().exactly_once {
            None
        } else {
            // A registry without native lives: start the new life as a second step.
            let at = meta.created_at.unwrap_or_else(|| self.inner.clock.now());
            Some(self.inner.registry.restart_life(&meta.name, at).await?)
        };
        let name = meta.name.clone();
        self.send(Command::UpsertDynamic(Arc::new(meta)));
        if let Some(life) = life {
            self.send(Command::LifeStarted(name, life));
        }
        Ok(())
    }

    /// Marks a task deleted cluster-wide: it never fires again on any node until it is reused,
    /// force-added or cleaned up (the seed's `MarkTaskDeleted`).
    ///
    /// # Errors
    /// [`Error::InvalidTaskName`]; registry errors.
    pub async fn mark_task_deleted(&self, name: &str) -> Result<()> {
        validate_task_name(name)?;
        let now: DateTime<Utc> = self.inner.clock.now();
        self.inner.registry.mark_deleted(name, now).await?;
        self.send(Command::Tombstoned(name.to_string()));
        Ok(())
    }

    /// Clears a task's tombstone so it is scheduled again (the seed's `ReuseDeletedTask`). The
    /// task starts a new life now: the occurrences that fell while it was deleted are never
    /// caught up.
    ///
    /// # Errors
    /// [`Error::NotFound`] when the task is not marked deleted; registry errors.
    pub async fn reuse_deleted_task(&self, name: &str) -> Result<()> {
        validate_task_name(name)?;
        if self.inner.registry.get_tombstone(name).await?.is_none() {
            return Err(Error::NotFound {
                what: "tombstone",
                name: name.to_string(),
            });
        }
        let life = self
            .inner
            .registry
            .restart_life(name, self.inner.clock.now())
            .await?;
        self.send(Command::TombstoneCleared(name.to_string()));
        self.send(Command::LifeStarted(name.to_string(), life));
        Ok(())
    }

    /// Removes every trace of a task in the registry: record, tombstone and claims (the seed's
    /// `CleanupTask`). A static task of that name keeps running from code.
    ///
    /// # Errors
    /// [`Error::InvalidTaskName`]; registry errors.
    pub async fn cleanup_task(&self, name: &str) -> Result<()> {
        validate_task_name(name)?;
        self.inner.registry.cleanup_task(name).await?;
        crate::admin::forget_task_records(&*self.inner.registry, name).await?;
        self.send(Command::Removed(name.to_string()));
        Ok(())
    }

    /// Removes every dynamic task, tombstone and claim of the namespace (the seed's
    /// `ForceCleanupAllTasks`). Dangerous: meant for tests and resets, from one node only.
    ///
    /// # Errors
    /// Registry errors.
    pub async fn force_cleanup_all_tasks(&self) -> Result<()> {
        self.inner.registry.cleanup_all().await?;
        self.send(Command::Resync);
        Ok(())
    }

    /// Adds a static task with per-task options: time zone, retries, timeout, overlap and
    /// misfire policies (builder defaults apply to what the options leave unset).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> dcron_core::Result<()> {
    /// use std::time::Duration;
    /// use dcron_core::{Dcron, MemoryRegistry, OverlapPolicy, RetryPolicy, TaskOptions};
    /// let node = Dcron::builder(MemoryRegistry::new()).build()?;
    /// let options = TaskOptions::new()
    ///     .time_zone("Europe/Berlin")
    ///     .retry(RetryPolicy::exponential(3, Duration::from_secs(1)).with_jitter())
    ///     .timeout(Duration::from_secs(30))
    ///     .overlap(OverlapPolicy::Skip);
    /// node.add_func_with("nightly", "0 30 2 * * *", options, |_ctx| async { Ok(()) }).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Dcron::add_task`], plus [`Error::InvalidSchedule`] for an unknown time zone and
    /// [`Error::InvalidArgument`] for an invalid policy.
    pub async fn add_task_with(
        &self,
        name: &str,
        cron: &str,
        options: TaskOptions,
        task: impl Task,
    ) -> Result<()> {
        self.add_static_with(name, cron, Arc::new(task), false, false, &options)
            .await
    }

    /// [`Dcron::add_task_with`] for an async closure.
    ///
    /// # Errors
    /// As [`Dcron::add_task_with`].
    pub async fn add_func_with<F, Fut>(
        &self,
        name: &str,
        cron: &str,
        options: TaskOptions,
        f: F,
    ) -> Result<()>
    where
        F: Fn(FireContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = TaskResult> + Send + 'static,
    {
        self.add_static_with(name, cron, Arc::new(FnTask(f)), false, false, &options)
            .await
    }

    /// Schedules one run of the `task_run_fn` handler after `delay`, with `payload`: a
    /// dynamic one-shot task `@at <now + delay>` that is cleaned up after it succeeds. Runs once
    /// cluster-wide, on whichever node owns the name then. Answers the instant it chose (to
    /// the millisecond); a zero delay runs it at once.
    ///
    /// # Errors
    /// As [`Dcron::add_task_meta`]; [`Error::InvalidArgument`] for a delay past year 9999.
    pub async fn schedule_once(
        &self,
        name: &str,
        delay: Duration,
        payload: impl Into<String>,
    ) -> Result<DateTime<Utc>> {
        let at = chrono::Duration::from_std(delay)
            .ok()
            .and_then(|d| self.inner.clock.now().checked_add_signed(d))
            .ok_or_else(|| Error::InvalidArgument("schedule_once: delay too long".into()))?;
        let at = FireKey::new(name, at).instant;
        let mut meta = TaskMeta::new(
            name,
            format!(
                "@at {}",
                at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            ),
        )
        .with_payload(payload)
        .one_shot();
        meta.executed_and_cleanup = true;
        // A zero (or tiny) delay may already be past when the record is written.
        meta.run_if_past = true;
        self.add_task_meta(meta).await?;
        Ok(at)
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

/// Checks every builder setting against its documented bound.
fn check_config(cfg: &Config) -> Result<()> {
    const DAY: Duration = Duration::from_secs(24 * 3600);
    let within = |name: &str, v: Duration, lo: Duration, hi: Duration| {
        if v < lo || v > hi {
            Err(Error::InvalidArgument(format!(
                "{name} is {v:?}; it must be between {lo:?} and {hi:?}"
            )))
        } else {
            Ok(())
        }
    };
    within("ttl", cfg.ttl, Duration::from_millis(100), DAY)?;
    if let Some(n) = cfg.max_concurrent_fires {
        if n == 0 || n > MAX_CONCURRENT_FIRES {
            return Err(Error::InvalidArgument(format!(
                "max_concurrent_fires is {n}; it must be between 1 and {MAX_CONCURRENT_FIRES}"
            )));
        }
    }
    if cfg.task_label_limit > MAX_TASK_LABELS {
        return Err(Error::InvalidArgument(format!(
            "task_metric_labels is {}; it must be at most {MAX_TASK_LABELS}",
            cfg.task_label_limit
        )));
    }
    if cfg.renew_interval.is_zero() || cfg.renew_interval >= cfg.ttl {
        return Err(Error::InvalidArgument(format!(
            "renew_interval is {:?}; it must be above zero and below the ttl ({:?})",
            cfg.renew_interval, cfg.ttl
        )));
    }
    within(
        "poll_interval",
        cfg.poll_interval,
        Duration::from_millis(10),
        DAY,
    )?;
    within("grace_period", cfg.grace_period, Duration::ZERO, DAY)?;
    within("status_interval", cfg.status_interval, Duration::ZERO, DAY)?;
    within(
        "max_clock_skew",
        cfg.max_clock_skew,
        Duration::ZERO,
        Duration::from_secs(3600),
    )?;
    within(
        "misfire_window",
        cfg.misfire_window,
        Duration::ZERO,
        crate::types::limits::MAX_MISFIRE_WINDOW,
    )?;
    within(
        "claim_retention",
        cfg.claim_retention,
        Duration::ZERO,
        Duration::from_secs(30 * 24 * 3600),
    )?;
    within(
        "claim_ahead",
        cfg.claim_ahead,
        Duration::ZERO,
        Duration::from_secs(10),
    )?;
    within(
        "start_timeout",
        cfg.start_timeout,
        Duration::from_millis(1),
        DAY,
    )?;
    within(
        "retry_backoff",
        cfg.retry_backoff,
        Duration::ZERO,
        Duration::from_secs(60),
    )?;
    if let Some(t) = cfg.default_timeout {
        within(
            "default_timeout",
            t,
            Duration::ZERO,
            crate::types::limits::MAX_TIMEOUT,
        )?;
    }
    if let MisfirePolicy::FireAll { max } = cfg.misfire {
        if max == 0 || max > crate::types::limits::MAX_FIRE_ALL {
            return Err(Error::InvalidArgument(format!(
                "misfire_policy FireAll max is {max}; it must be between 1 and {}",
                crate::types::limits::MAX_FIRE_ALL
            )));
        }
    }
    cfg.default_retry.validate()
}

/// Checks the policies of a task record against [`crate::limits`].
fn check_policies(meta: &TaskMeta) -> Result<()> {
    meta.check_bounds()?;
    if let Some(retry) = &meta.retry {
        retry.validate()?;
    }
    Ok(())
}

/// Refuses a schedule that can never fire again: an `@at` in the past (unless the task asks to
/// run it at once) or a cron expression with no future occurrence (30 February).
fn check_fires(meta: &TaskMeta, schedule: &Schedule, now: DateTime<Utc>) -> Result<()> {
    if schedule.next_after(now).is_some() || (meta.run_if_past && schedule.is_one_time()) {
        return Ok(());
    }
    let reason = if schedule.is_one_time() {
        "the instant is in the past; set `run_if_past` to run it once at once".to_string()
    } else {
        "it has no occurrence after now: it would never fire".to_string()
    };
    Err(Error::InvalidSchedule {
        expr: meta.cron_format.clone(),
        reason,
    })
}

/// Per-task options for static tasks ([`Dcron::add_task_with`]); what is left unset takes the
/// builder's default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskOptions {
    time_zone: Option<String>,
    retry: Option<RetryPolicy>,
    timeout: Option<Duration>,
    overlap: Option<OverlapPolicy>,
    misfire: Option<MisfirePolicy>,
    misfire_window: Option<Duration>,
    run_if_past: bool,
    tags: Vec<String>,
    max_concurrent: Option<u32>,
}

impl TaskOptions {
    /// No options: every policy from the builder, UTC.
    pub fn new() -> Self {
        TaskOptions::default()
    }

    /// The IANA time zone the schedule is evaluated in.
    pub fn time_zone(mut self, zone: impl Into<String>) -> Self {
        self.time_zone = Some(zone.into());
        self
    }

    /// The retry policy.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = Some(retry);
        self
    }

    /// The timeout of one attempt.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The overlap policy.
    pub fn overlap(mut self, overlap: OverlapPolicy) -> Self {
        self.overlap = Some(overlap);
        self
    }

    /// The misfire policy.
    pub fn misfire(mut self, misfire: MisfirePolicy) -> Self {
        self.misfire = Some(misfire);
        self
    }

    /// The misfire window.
    pub fn misfire_window(mut self, window: Duration) -> Self {
        self.misfire_window = Some(window);
        self
    }

    /// For an `@at` schedule already past when the task is added: run it once at once instead
    /// of refusing it.
    pub fn run_if_past(mut self) -> Self {
        self.run_if_past = true;
        self
    }

    /// A tag (see [`TaskMeta::tags`]).
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        let tag = tag.into();
        if !self.tags.contains(&tag) {
            self.tags.push(tag);
        }
        self
    }

    /// The most fires of the task that run at once (see [`TaskMeta::max_concurrent`]).
    pub fn max_concurrent(mut self, limit: u32) -> Self {
        self.max_concurrent = Some(limit);
        self
    }

    fn apply(&self, meta: &mut TaskMeta) {
        meta.time_zone.clone_from(&self.time_zone);
        meta.retry = self.retry;
        meta.timeout_ms = self
            .timeout
            .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
        meta.overlap = self.overlap;
        meta.misfire = self.misfire;
        meta.misfire_window_ms = self
            .misfire_window
            .map(|w| u64::try_from(w.as_millis()).unwrap_or(u64::MAX));
        meta.run_if_past = self.run_if_past;
        meta.tags.clone_from(&self.tags);
        meta.max_concurrent = self.max_concurrent;
    }
}
