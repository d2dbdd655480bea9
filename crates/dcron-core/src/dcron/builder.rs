//! [`DcronBuilder`]: a node's settings, their defaults and their bounds.

use super::*;

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
    pub(super) registry: Arc<dyn Registry>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) cfg: Config,
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
