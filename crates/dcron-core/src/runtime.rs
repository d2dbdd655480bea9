//! The driver: the one place with `tokio::select!`.
//!
//! ```text
//!   API commands ─┐                                 ┌─▶ registry calls (spawned; replies come
//!   watch events ─┤                                 │    back as Internal messages with the
//!   poll / renew ─┼─▶ Driver ── crate::engine ──────┤    epoch they were made for)
//!   timer (heap) ─┤   (I/O)     lifecycle::step     ├─▶ claim batches (one call per instant)
//!   replies ──────┘                                 └─▶ handlers (TaskTracker, cancel token)
//! ```
//!
//! Decisions are pure ([`crate::lifecycle::step`], [`crate::tombstone`], the assigner, and the
//! modules of [`crate::engine`]: the task table, ownership, catch-up, timers, claim planning,
//! pauses and triggers, status counts); the driver feeds them inputs (time is always an
//! argument) and executes their outputs. Per node it keeps a min-heap of `(next instant, task)`
//! over **owned** tasks only, sleeps until the earliest, claims every fire due at that instant
//! in one batch, and spawns the handlers of the fires it won. Ownership changes are applied as
//! a diff; a task gained is caught up over its misfire window.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use dcron_assign::{Member, Placement};
use futures::StreamExt;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::{until, Clock};
use crate::engine::backoff::register_backoff;
use crate::engine::claims::BackfillReport;
use crate::engine::claims::{self, window_of, ClaimTiming, Due, Verdict, MAX_BATCH};
use crate::engine::config::Config;
use crate::engine::control::{self, Pauses, Trigger, TriggerSeen};
use crate::engine::ownership::{self, Placed};
use crate::engine::plan::{self, CatchUp};
use crate::engine::status::{StatusBook, StatusLocal};
use crate::engine::tasks::{Entry, Gain, Tasks};
use crate::engine::timers::{self, Timers};
use crate::error::{Error, Result};
use crate::event::DcronEvent;
use crate::fire::{FireEnv, FireKind, FireNote, Launch, RunningSet};
use crate::lifecycle::{self, Action, Input, NodeState, State, Timing};
use crate::policy::{PauseRecord, SkipReason, TaskStatus, TriggerRecord};
use crate::registry::{Lease, RecordKind, Registry, WatchStream};
use crate::schedule::Schedule;
use crate::task::Task;
use crate::types::{
    ClaimRequest, Claimant, FireKey, Life, Listing, Node, NodeEvent, NodeStatus, TaskMeta,
    TaskMetaEvent, Tombstone,
};

/// How often a working node rewrites its record to refresh `last_alive`.
const LAST_ALIVE_REFRESH: Duration = Duration::from_secs(30);

/// The most task names in one `ensure_lives` call.
const LIFE_BATCH: usize = 1000;

/// The longest the API's view (`all_tasks`, `my_running_tasks`) lags the driver.
const VIEW_FLUSH: Duration = Duration::from_millis(50);

/// What the driver publishes for the API to read without a round trip.
#[derive(Debug, Default)]
pub(crate) struct View {
    pub(crate) owned: Vec<Arc<str>>,
    pub(crate) all: Vec<Arc<str>>,
}

/// The node's state and readiness, watched by `start()` and `ready()`.
#[derive(Clone, Debug, Default)]
pub(crate) struct Health {
    pub(crate) state: NodeState,
    /// Registered and its share taken (set once).
    pub(crate) ready: bool,
    /// The last registration error, for a start that times out.
    pub(crate) last_error: Option<String>,
}

/// What the driver shares with the API handle (`Dcron`).
pub(crate) struct Shared {
    pub(crate) node_id: Arc<str>,
    pub(crate) cfg: Arc<Config>,
    pub(crate) registry: Arc<dyn Registry>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) view: Arc<RwLock<View>>,
    pub(crate) health: watch::Sender<Health>,
    pub(crate) lease_slot: Arc<std::sync::Mutex<Option<Lease>>>,
    pub(crate) lease_until: Arc<watch::Sender<crate::fire::LeaseBound>>,
    pub(crate) events: broadcast::Sender<DcronEvent>,
    /// The fires running on this node.
    pub(crate) in_flight: Arc<crate::inflight::InFlight>,
    /// What the last stop saw, filled in when its drain ends.
    pub(crate) stop_report: Arc<std::sync::Mutex<crate::inflight::StopReport>>,
}

/// A static task as registered in code.
pub(crate) struct StaticDef {
    pub(crate) meta: Arc<TaskMeta>,
    pub(crate) schedule: Schedule,
    pub(crate) task: Arc<dyn Task>,
}

/// Requests from the API.
pub(crate) enum Command {
    UpsertStatic(StaticDef),
    UpsertDynamic(Arc<TaskMeta>),
    Tombstoned(String),
    TombstoneCleared(String),
    Removed(String),
    Resync,
    Stop(oneshot::Sender<()>),
    /// A pause record changed through this node's API: apply it at once.
    PauseChanged(PauseRecord),
    /// A task started a new life through this node's API (force-add, reuse).
    LifeStarted(String, Life),
    /// Claim and run the occurrences of a task in `[from, to)` that nobody claimed.
    Backfill {
        name: String,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        reply: oneshot::Sender<Result<BackfillReport>>,
    },
    /// What this node knows of a task's status (`None` when it knows nothing).
    Status {
        name: String,
        reply: oneshot::Sender<Option<TaskStatus>>,
    },
}

/// Replies and timers fed back into the loop.
pub(crate) enum Internal {
    /// A registration ended; the instant is when it was sent (the lease cannot have started
    /// earlier).
    Registered(u64, Result<Lease>, Instant),
    /// A keep-alive ended; the instant is when it was sent: the lease is known to live until
    /// that instant plus the TTL, and no longer.
    Renewed(u64, Result<()>, Instant),
    StatusWritten(u64, Result<()>),
    Nodes(Result<Listing<Node>>),
    Tasks(Result<(Listing<TaskMeta>, Listing<Tombstone>)>),
    NodeWatch(Result<WatchStream<NodeEvent>>),
    TaskWatch(Result<WatchStream<TaskMetaEvent>>),
    RetryRegister(u64),
    RetryWatches,
    /// A one-shot fire ended: done (tombstoned) or not (scheduled again).
    OneShotEnded {
        name: String,
        done: bool,
    },
    Drained,
    /// The set of running fires with overlap markers changed: publish it.
    RunningChanged,
    /// Pause and trigger records, read at a poll.
    Records(Result<(Listing<PauseRecord>, Listing<TriggerRecord>)>),
    /// A status flush ended; the stored counts it loaded for tasks seen the first time.
    StatusFlushed(Result<HashMap<String, (u64, u64)>>),
    /// A trigger request was handled (consumed or found gone).
    TriggerDone(String),
    /// A node-record write that published running markers ended.
    MarkersWritten(u64, Result<()>),
    /// The lives of these tasks, read (or started) in the registry.
    Lives(Vec<Arc<str>>, Result<Vec<Life>>),
    /// Ask again for the lives of tasks whose lives are unknown.
    RetryLives,
    /// A claim found the task's life stale (a new life started, or none is left).
    Superseded(String),
}

/// One fire on its way to the registry.
#[derive(Clone)]
struct PendingFire {
    key: FireKey,
    meta: Arc<TaskMeta>,
    task: Arc<dyn Task>,
    kind: FireKind,
    window: Duration,
    owner: Option<CancellationToken>,
    /// The generation of the life the fire belongs to.
    life: u64,
    /// The fire's deadline (its instant plus its window) on the wall clock.
    deadline: DateTime<Utc>,
    /// The same deadline on the node's monotonic clock: checked after the claim reply and
    /// right before the handler starts, so a node frozen meanwhile never starts a late fire.
    deadline_at: Instant,
    /// The least retention of its claim (a backfill keeps its claims as long as its range is
    /// old); zero for the others.
    min_retention: Duration,
    /// The task's stamp and its value when the fire was planned (see [`Entry::stamp`]).
    stamp: (Arc<AtomicU64>, u64),
}

pub(crate) struct Driver {
    node_id: Arc<str>,
    cfg: Arc<Config>,
    registry: Arc<dyn Registry>,
    clock: Arc<dyn Clock>,
    view: Arc<RwLock<View>>,
    /// What `state()`, `ready()` and `start()` read.
    health: watch::Sender<Health>,
    /// The lease in force, shared with the supervisor (which unregisters it if the driver
    /// fails).
    lease_slot: Arc<std::sync::Mutex<Option<Lease>>>,
    /// Until when the lease in force is known to live (last keep-alive sent + TTL), shared with
    /// the fires holding running slots: they are cancelled when it passes unrenewed.
    lease_until: Arc<watch::Sender<crate::fire::LeaseBound>>,
    /// Registration failures in a row (the back-off grows with them).
    register_failures: u32,
    events: broadcast::Sender<DcronEvent>,
    commands: mpsc::UnboundedReceiver<Command>,
    internal_tx: mpsc::UnboundedSender<Internal>,
    internal_rx: mpsc::UnboundedReceiver<Internal>,

    state: State,
    timing: Timing,
    lease: Option<(u64, Lease)>,
    record: Node,

    nodes: HashMap<String, Node>,
    members: Vec<Member>,
    placement: Option<Box<dyn Placement>>,
    tasks: Tasks,
    /// Per owned task that retries: cancelled when the node stops owning it (retries in flight
    /// stop). The others never wait on one.
    owners: HashMap<Arc<str>, CancellationToken>,
    heap: Timers,

    node_watch: Option<WatchStream<NodeEvent>>,
    task_watch: Option<WatchStream<TaskMetaEvent>>,
    watch_retry_pending: bool,

    handlers: TaskTracker,
    in_flight: Arc<crate::inflight::InFlight>,
    stop_report: Arc<std::sync::Mutex<crate::inflight::StopReport>>,
    handler_cancel: CancellationToken,
    stopping: CancellationToken,
    stop_waiters: Vec<oneshot::Sender<()>>,
    view_dirty: bool,
    view_flushed: Instant,
    /// At least `VIEW_FLUSH`, and ten times what the last flush took: a view of a million
    /// names is rebuilt rarely enough to cost at most a tenth of the driver.
    view_flush_every: Duration,

    env: Arc<FireEnv>,
    /// Fires that ended (see `FireEnv::ended`).
    ended: Arc<crate::fire::EndedInbox>,
    running: Arc<RunningSet>,
    markers_inflight: bool,
    markers_dirty: bool,
    paused: Pauses,
    triggers_inflight: HashSet<String>,
    statuses: StatusBook,
    status_inflight: bool,
    /// Handlers drained; leaving waits for the last status write.
    drained_pending: bool,
    /// The last write of this node's record failed: rewrite it at the next renewal.
    record_stale: bool,
    /// When this node last became `Working` (its wall clock); see [`Driver::gap_floor`].
    working_since: Option<DateTime<Utc>>,
    /// Dynamic tasks this node owned without a handler (reported once each).
    no_handler: HashSet<String>,
    /// A retry of failed `ensure_lives` calls is scheduled.
    lives_retry_pending: bool,
}

impl Driver {
    pub(crate) fn new(shared: Shared, commands: mpsc::UnboundedReceiver<Command>) -> Self {
        let Shared {
            node_id,
            cfg,
            registry,
            clock,
            view,
            health,
            lease_slot,
            lease_until,
            events,
            in_flight,
            stop_report,
        } = shared;
        let (internal_tx, internal_rx) = mpsc::unbounded_channel();
        let now = clock.now();
        let mut record = Node::new(node_id.to_string(), now);
        record.name = cfg.name.clone();
        record.weight = cfg.weight;
        record.ip = cfg.ip.clone();
        record.hostname = cfg.hostname.clone();
        let timing = Timing {
            ttl: cfg.ttl,
            retry: cfg.retry_backoff,
        };
        let handlers = TaskTracker::new();
        let handler_cancel = CancellationToken::new();
        let stopping = CancellationToken::new();
        let running = Arc::new(RunningSet::default());
        let ended = Arc::new(crate::fire::EndedInbox::default());
        let env = Arc::new(FireEnv {
            node_id: node_id.clone(),
            cfg: cfg.clone(),
            registry: registry.clone(),
            clock: clock.clone(),
            events: events.clone(),
            handlers: handlers.clone(),
            cancel: handler_cancel.clone(),
            stopping: stopping.clone(),
            notes: {
                let tx = internal_tx.clone();
                Arc::new(move |note| {
                    let _ = tx.send(match note {
                        FireNote::RunningChanged => Internal::RunningChanged,
                        FireNote::OneShotEnded { name, done } => {
                            Internal::OneShotEnded { name, done }
                        }
                    });
                })
            },
            running: running.clone(),
            lease: lease_slot.clone(),
            lease_until: lease_until.clone(),
            slots: registry.capabilities().slots,
            ended: ended.clone(),
            waiting: Arc::default(),
            launched: Arc::default(),
            in_flight: in_flight.clone(),
            limits: Arc::new(crate::inflight::Limits::new(cfg.max_concurrent_fires)),
            labels: crate::inflight::TaskLabels::new(cfg.task_label_limit).map(Arc::new),
        });
        Driver {
            node_id,
            cfg,
            registry,
            clock,
            view,
            health,
            lease_slot,
            lease_until,
            register_failures: 0,
            events,
            commands,
            internal_tx,
            internal_rx,
            state: State::Idle,
            timing,
            lease: None,
            record,
            nodes: HashMap::new(),
            members: Vec::new(),
            placement: None,
            tasks: Tasks::default(),
            owners: HashMap::new(),
            heap: Timers::default(),
            node_watch: None,
            task_watch: None,
            watch_retry_pending: false,
            handlers,
            in_flight,
            stop_report,
            handler_cancel,
            stopping,
            stop_waiters: Vec::new(),
            view_dirty: false,
            view_flushed: Instant::now(),
            view_flush_every: VIEW_FLUSH,
            env,
            ended,
            running,
            markers_inflight: false,
            markers_dirty: false,
            paused: Pauses::default(),
            triggers_inflight: HashSet::new(),
            statuses: StatusBook::default(),
            status_inflight: false,
            drained_pending: false,
            record_stale: false,
            working_since: None,
            no_handler: HashSet::new(),
            lives_retry_pending: false,
        }
    }

    /// Runs until stopped (or until every API handle is dropped, which ends it like a crash).
    /// Marks the API's view stale; the loop flushes it at most every [`VIEW_FLUSH`], so a burst
    /// of task events costs one sort, not one per event.
    fn publish_view(&mut self) {
        self.view_dirty = true;
    }

    pub(crate) async fn run(mut self) {
        self.lifecycle(Input::Start);
        let mut renew = tokio::time::interval(self.cfg.renew_interval);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut poll = tokio::time::interval(self.cfg.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let status_every = if self.cfg.status_interval.is_zero() {
            Duration::from_secs(3600)
        } else {
            self.cfg.status_interval
        };
        // Status writes go out in the middle of a second: cron instants are whole seconds, so
        // the batch never competes with a burst of fires for the CPU.
        let to_mid = {
            let ms = self.clock.now().timestamp_subsec_millis();
            Duration::from_millis(u64::from((1500 - ms) % 1000))
        };
        let mut status_tick =
            tokio::time::interval_at(tokio::time::Instant::now() + to_mid, status_every);
        status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        renew.tick().await;
        poll.tick().await;
        loop {
            if self.state == State::Stopped {
                break;
            }
            let deadline = self.next_deadline();
            let flush_at = self
                .view_dirty
                .then(|| self.view_flushed + self.view_flush_every);
            tokio::select! {
                biased;
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => self.command(cmd),
                    None => {
                        // Every handle dropped without stop(): end abruptly, like a crash.
                        self.handler_cancel.cancel();
                        self.stopping.cancel();
                        tracing::warn!(node = %self.node_id, "all Dcron handles dropped without stop(): node ends without unregistering");
                        break;
                    }
                },
                Some(msg) = self.internal_rx.recv() => self.internal(msg),
                ev = next_event(&mut self.node_watch), if self.node_watch.is_some() => match ev {
                    Some(ev) => self.node_event(ev),
                    None => { self.node_watch = None; self.retry_watches(); }
                },
                ev = next_event(&mut self.task_watch), if self.task_watch.is_some() => match ev {
                    Some(ev) => self.task_event(ev),
                    None => { self.task_watch = None; self.retry_watches(); }
                },
                _ = renew.tick() => {
                    let now = self.clock.monotonic();
                    self.lifecycle(Input::RenewTick { now });
                }
                _ = poll.tick() => if self.is_active() { self.list_all() },
                _ = status_tick.tick() => {
                    self.flush_status();
                    self.env.launched.forget_before(self.clock.now());
                }
                _ = sleep_until(deadline), if deadline.is_some() => self.fire_due(),
                _ = sleep_until(flush_at), if flush_at.is_some() => self.flush_view(),
            }
        }
        self.flush_status();
        self.flush_view();
    }

    // ----- lifecycle -----

    fn is_active(&self) -> bool {
        matches!(self.state, State::Working { .. })
    }

    fn lifecycle(&mut self, input: Input) {
        let (state, actions) = lifecycle::step(self.state, input, &self.timing);
        let changed = std::mem::discriminant(&state) != std::mem::discriminant(&self.state);
        self.state = state;
        if changed {
            let name = state_name(&state);
            tracing::info!(node = %self.node_id, state = name, "lifecycle");
            let _ = self.events.send(DcronEvent::Lifecycle {
                node: self.node_id.to_string(),
                state: name,
            });
            metrics::counter!("dcron_lifecycle_transitions_total", "state" => name).increment(1);
            let api_state = NodeState::of(&state);
            self.health.send_modify(|h| {
                if !matches!(h.state, NodeState::Failed(_)) {
                    h.state = api_state;
                }
            });
            self.flush_view();
        }
        for action in actions {
            self.act(action);
        }
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::Register { epoch, delay } => {
                // Retries back off exponentially (capped), with a jitter of the node's own so
                // that nodes cut off together do not come back in step.
                let delay = if delay.is_zero() {
                    delay
                } else {
                    register_backoff(delay, self.register_failures, self.jitter_seed())
                };
                if delay.is_zero() {
                    self.register(epoch);
                } else {
                    let tx = self.internal_tx.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let _ = tx.send(Internal::RetryRegister(epoch));
                    });
                }
            }
            Action::WriteStatus { epoch, status } => {
                let Some(lease) = self.lease_for(epoch) else {
                    return;
                };
                self.record.status = status;
                self.write_record(epoch, lease, Internal::StatusWritten);
            }
            Action::Renew { epoch } => {
                let Some(lease) = self.lease_for(epoch) else {
                    return;
                };
                let registry = self.registry.clone();
                let tx = self.internal_tx.clone();
                let sent = self.clock.monotonic();
                tokio::spawn(async move {
                    let r = registry.keep_alive(&lease).await;
                    let _ = tx.send(Internal::Renewed(epoch, r, sent));
                });
            }
            Action::Activate => {
                self.working_since = Some(self.clock.now());
                self.open_watches();
                // Ownership is computed when the node list arrives, not before: owning
                // everything for a moment would trigger needless claims.
                self.list_all();
            }
            Action::Deactivate => {
                self.drop_ownership();
                if matches!(self.state, State::Lost { .. }) {
                    self.set_lease_until(None);
                    for fire in self.running.lease_lost() {
                        tracing::warn!(task = %fire.task, scheduled = %fire.instant, "lease lost while a non-overlapping fire runs; its cancellation token is cancelled");
                        let _ = self.events.send(DcronEvent::LeaseLostWhileRunning {
                            task: fire.task,
                            scheduled: fire.instant,
                        });
                    }
                }
            }
            Action::Drain => {
                self.stopping.cancel();
                self.handlers.close();
                let handlers = self.handlers.clone();
                let cancel = self.handler_cancel.clone();
                let grace = self.cfg.grace_period;
                let tx = self.internal_tx.clone();
                let in_flight = self.in_flight.clone();
                let report = self.stop_report.clone();
                tokio::spawn(async move {
                    let began = Instant::now();
                    let mut seen = crate::inflight::StopReport::default();
                    if tokio::time::timeout(grace, handlers.wait()).await.is_err() {
                        seen.unfinished = in_flight.snapshot();
                        cancel.cancel();
                        // Handlers that ignore cancellation are not waited for forever.
                        if tokio::time::timeout(Duration::from_secs(5), handlers.wait())
                            .await
                            .is_err()
                        {
                            seen.abandoned = in_flight.snapshot();
                        }
                    }
                    seen.waited = began.elapsed();
                    if !seen.is_clean() {
                        let names = |f: &[crate::FireInfo]| {
                            f.iter()
                                .map(|f| format!("{}@{}", f.task, f.scheduled))
                                .collect::<Vec<_>>()
                        };
                        tracing::warn!(
                            unfinished = ?names(&seen.unfinished),
                            abandoned = ?names(&seen.abandoned),
                            "fires still running at the end of the grace period were cancelled"
                        );
                    }
                    *report.lock().unwrap_or_else(|p| p.into_inner()) = seen;
                    let _ = tx.send(Internal::Drained);
                });
            }
            Action::Unregister { epoch } => {
                if let Ok(mut slot) = self.lease_slot.lock() {
                    *slot = None;
                }
                self.set_lease_until(None);
                if let Some(lease) = self.lease_for(epoch) {
                    let registry = self.registry.clone();
                    let waiters = std::mem::take(&mut self.stop_waiters);
                    tokio::spawn(async move {
                        if let Err(e) = registry.unregister(&lease).await {
                            tracing::warn!(error = %e, "unregister failed; the lease will expire");
                        }
                        for w in waiters {
                            let _ = w.send(());
                        }
                    });
                }
            }
        }
        if self.state == State::Stopped {
            for w in std::mem::take(&mut self.stop_waiters) {
                let _ = w.send(());
            }
        }
    }

    /// Sets until when the lease is known to live: `sent` (a registration's send) plus the
    /// TTL, or none without a lease.
    fn set_lease_until(&self, sent: Option<(&Lease, Instant)>) {
        let bound = sent.map(|(lease, s)| (Arc::<str>::from(lease.id.as_str()), s + self.cfg.ttl));
        self.lease_until.send_replace(bound);
    }

    /// A keep-alive sent at `sent` succeeded: the lease lives at least until `sent` + TTL.
    fn extend_lease_until(&self, sent: Instant) {
        let until = sent + self.cfg.ttl;
        self.lease_until.send_if_modified(|current| match current {
            Some((_, c)) if *c < until => {
                *c = until;
                true
            }
            _ => false,
        });
    }

    fn lease_for(&self, epoch: u64) -> Option<Lease> {
        match &self.lease {
            Some((e, lease)) if *e == epoch => Some(lease.clone()),
            _ => None,
        }
    }

    fn register(&mut self, epoch: u64) {
        let registry = self.registry.clone();
        let tx = self.internal_tx.clone();
        let mut record = self.record.clone();
        record.status = NodeStatus::Starting;
        record.last_alive = self.clock.now();
        let ttl = self.cfg.ttl;
        let sent = self.clock.monotonic();
        tokio::spawn(async move {
            let r = registry.register(&record, ttl).await;
            let _ = tx.send(Internal::Registered(epoch, r, sent));
        });
    }

    // ----- messages -----

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::UpsertStatic(def) => {
                let name = def.meta.name.clone();
                self.upsert(name, def.meta, def.schedule, Some(def.task), true);
            }
            Command::UpsertDynamic(meta) => self.upsert_dynamic(meta),
            Command::Tombstoned(name) => self.set_tombstone(name),
            Command::TombstoneCleared(name) => self.clear_tombstone(&name),
            Command::Removed(name) => {
                self.clear_tombstone(&name);
                self.remove_dynamic(&name);
                self.life_stale(&name);
            }
            Command::Resync => {
                if self.is_active() {
                    self.list_all();
                }
            }
            Command::PauseChanged(record) => self.apply_pause(record),
            Command::LifeStarted(name, life) => {
                if self.set_life(&name, life) {
                    let key: Option<Arc<str>> = self.tasks.get(&name).map(|e| e.name.clone());
                    self.plan_gained(key.into_iter().collect());
                }
            }
            Command::Backfill {
                name,
                from,
                to,
                reply,
            } => self.backfill(name, from, to, reply),
            Command::Status { name, reply } => {
                self.collect_ended();
                let _ = reply.send(self.local_status(&name));
            }
            Command::Stop(reply) => {
                self.stop_waiters.push(reply);
                if self.state == State::Stopped {
                    for w in std::mem::take(&mut self.stop_waiters) {
                        let _ = w.send(());
                    }
                } else {
                    self.lifecycle(Input::Stop);
                }
            }
        }
    }

    fn internal(&mut self, msg: Internal) {
        let now = self.clock.monotonic();
        let status_write = matches!(msg, Internal::StatusWritten(..));
        match msg {
            Internal::Registered(epoch, Ok(lease), sent) => {
                if matches!(self.state, State::Starting { epoch: e } | State::Lost { epoch: e } if e == epoch)
                {
                    self.register_failures = 0;
                    if let Ok(mut slot) = self.lease_slot.lock() {
                        *slot = Some(lease.clone());
                    }
                    self.set_lease_until(Some((&lease, sent)));
                    self.lease = Some((epoch, lease));
                    self.lifecycle(Input::Registered { epoch, now });
                } else {
                    // A late registration for an abandoned epoch: release it.
                    let registry = self.registry.clone();
                    tokio::spawn(async move {
                        let _ = registry.unregister(&lease).await;
                    });
                }
            }
            Internal::Registered(epoch, Err(e), _) => {
                self.register_failures = self.register_failures.saturating_add(1);
                let attempt = self.register_failures;
                let delay = register_backoff(self.cfg.retry_backoff, attempt, self.jitter_seed());
                tracing::warn!(node = %self.node_id, error = %e, attempt, delay_ms = delay.as_millis() as u64, "registration failed; retrying");
                metrics::counter!("dcron_register_retries_total").increment(1);
                let _ = self.events.send(DcronEvent::RegisterRetry {
                    node: self.node_id.to_string(),
                    attempt,
                    error: e.to_string(),
                    delay,
                });
                let message = e.to_string();
                self.health.send_modify(|h| h.last_error = Some(message));
                self.lifecycle(Input::RegisterFailed { epoch });
            }
            Internal::RetryRegister(epoch) => {
                if matches!(self.state, State::Starting { epoch: e } | State::Lost { epoch: e } if e == epoch)
                {
                    self.register(epoch);
                }
            }
            Internal::Renewed(epoch, Ok(()), sent) => {
                // The lease is known to live a TTL from when the keep-alive was sent, not from
                // when its (possibly late) reply came back.
                // (Slot-holding fires watch that bound; the lifecycle keeps judging renewals by
                // their replies, as its TTL check of hung renewals always did.)
                if self.lease.as_ref().is_some_and(|(e, _)| *e == epoch) {
                    self.extend_lease_until(sent);
                }
                self.lifecycle(Input::Renewed { epoch, now });
                // Keep the informational `last_alive` of the record fresh (liveness itself is
                // the lease): one record write every LAST_ALIVE_REFRESH.
                let stale = (self.clock.now() - self.record.last_alive)
                    .to_std()
                    .is_ok_and(|age| age >= LAST_ALIVE_REFRESH);
                if self.record_stale || (self.is_active() && stale) {
                    self.markers_dirty = true;
                    self.publish_markers();
                }
            }
            Internal::Renewed(epoch, Err(e), _) | Internal::StatusWritten(epoch, Err(e)) => {
                let lease_lost = matches!(e, Error::LeaseLost { .. } | Error::NotFound { .. });
                if status_write {
                    // The record (its status) did not reach the registry: write it again at the
                    // next successful renewal, or peers never see this node's status change.
                    self.record_stale = true;
                }
                tracing::warn!(node = %self.node_id, error = %e, lease_lost, "lease renewal failed");
                self.lifecycle(Input::RenewFailed {
                    epoch,
                    lease_lost,
                    now,
                });
            }
            Internal::StatusWritten(_, Ok(())) => self.record_stale = false,
            Internal::Nodes(Ok(listing)) => {
                self.nodes = listing
                    .items
                    .into_iter()
                    .map(|n| (n.id.clone(), n))
                    .collect();
                self.refresh_remote_running();
                self.rebalance();
                if self.is_active() && !self.health.borrow().ready {
                    // Registered, and its share computed from a full listing: ready.
                    self.health.send_modify(|h| h.ready = true);
                }
            }
            Internal::Tasks(Ok((tasks, tombstones))) => self.reconcile_tasks(tasks, tombstones),
            Internal::Nodes(Err(e)) | Internal::Tasks(Err(e)) => {
                tracing::warn!(node = %self.node_id, error = %e, "listing failed; next poll retries");
            }
            Internal::NodeWatch(Ok(stream)) => self.node_watch = Some(stream),
            Internal::TaskWatch(Ok(stream)) => self.task_watch = Some(stream),
            Internal::NodeWatch(Err(e)) | Internal::TaskWatch(Err(e)) => {
                if !matches!(e, Error::Unsupported { .. }) {
                    tracing::debug!(error = %e, "watch failed; polling covers it, retrying");
                    self.retry_watches();
                }
            }
            Internal::RetryWatches => {
                self.watch_retry_pending = false;
                self.open_watches();
                self.list_all();
            }
            Internal::OneShotEnded { name, done } => {
                // A one-shot has one fire in its life, whatever its result: nothing to
                // schedule again. Done (deleted) means tombstoned here too at once.
                if done {
                    self.set_tombstone(name);
                }
            }
            Internal::Lives(names, r) => self.lives_read(names, r),
            Internal::RetryLives => {
                self.lives_retry_pending = false;
                let unknown = self.tasks.take_unread_lives();
                self.ensure_lives(unknown);
            }
            Internal::Superseded(name) => {
                tracing::info!(node = %self.node_id, task = %name, "a claim found the task's life changed: reading it again");
                self.life_stale(&name);
            }
            Internal::Drained => {
                // Handlers are done: store their status before the registration goes (a new
                // owner reads the stored counts), then leave.
                self.drained_pending = true;
                self.finish_drain();
            }
            Internal::RunningChanged => self.publish_markers(),
            Internal::MarkersWritten(epoch, r) => {
                self.markers_inflight = false;
                self.record_stale = r.is_err();
                if let Err(e) = r {
                    let lease_lost = matches!(e, Error::LeaseLost { .. } | Error::NotFound { .. });
                    if lease_lost {
                        self.lifecycle(Input::RenewFailed {
                            epoch,
                            lease_lost,
                            now,
                        });
                    } else {
                        tracing::debug!(error = %e, "publishing running markers failed; retried at the next change or renewal");
                    }
                }
                if self.markers_dirty {
                    self.publish_markers();
                }
            }
            Internal::Records(Ok((pauses, triggers))) => {
                self.report_corrupt(&pauses.corrupt);
                self.report_corrupt(&triggers.corrupt);
                for record in pauses.items {
                    self.apply_pause(record);
                }
                self.handle_triggers(triggers.items);
            }
            Internal::Records(Err(e)) => {
                if !matches!(e, Error::Unsupported { .. }) {
                    tracing::warn!(error = %e, "reading pause/trigger records failed; next poll retries");
                }
            }
            Internal::StatusFlushed(r) => {
                self.status_inflight = false;
                let failed = r.is_err();
                match r {
                    Ok(bases) => {
                        for (name, (runs, failures)) in bases {
                            self.statuses.load_base(&name, runs, failures);
                        }
                    }
                    Err(e) => {
                        if !matches!(e, Error::Unsupported { .. }) {
                            tracing::warn!(error = %e, "writing task status failed; written again after the task's next fire");
                        }
                    }
                }
                if self.drained_pending {
                    if failed {
                        // Unreachable registry: leave without the last status.
                        self.statuses.forget_dirty();
                    }
                    self.finish_drain();
                }
            }
            Internal::TriggerDone(key) => {
                self.triggers_inflight.remove(&key);
            }
        }
    }

    // ----- registry reads -----

    fn list_all(&mut self) {
        let registry = self.registry.clone();
        let tx = self.internal_tx.clone();
        tokio::spawn(async move {
            let nodes = registry.list_nodes().await;
            let _ = tx.send(Internal::Nodes(nodes));
            let tasks = match registry.list_tasks().await {
                Ok(t) => registry.list_tombstones().await.map(|tb| (t, tb)),
                Err(e) => Err(e),
            };
            let _ = tx.send(Internal::Tasks(tasks));
            if registry.capabilities().records {
                let records = match crate::admin::pause_records(&*registry).await {
                    Ok(p) => crate::admin::pending_triggers(&*registry)
                        .await
                        .map(|t| (p, t)),
                    Err(e) => Err(e),
                };
                let _ = tx.send(Internal::Records(records));
            }
        });
    }

    fn open_watches(&mut self) {
        if self.node_watch.is_none() {
            let registry = self.registry.clone();
            let tx = self.internal_tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(Internal::NodeWatch(registry.watch_nodes().await));
            });
        }
        if self.task_watch.is_none() {
            let registry = self.registry.clone();
            let tx = self.internal_tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(Internal::TaskWatch(registry.watch_tasks().await));
            });
        }
    }

    fn retry_watches(&mut self) {
        if self.watch_retry_pending || !self.is_active() {
            return;
        }
        self.watch_retry_pending = true;
        let tx = self.internal_tx.clone();
        let delay = self.cfg.retry_backoff.max(Duration::from_millis(100));
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(Internal::RetryWatches);
        });
    }

    fn node_event(&mut self, ev: NodeEvent) {
        match ev {
            NodeEvent::Put(node) => {
                // A watch event can arrive after a listing that already holds a newer record of
                // the same node (the node writes `last_alive` with every record): keep the newer.
                let stale = self
                    .nodes
                    .get(&node.id)
                    .is_some_and(|known| known.last_alive > node.last_alive);
                if !stale {
                    self.nodes.insert(node.id.clone(), node);
                }
            }
            NodeEvent::Delete { id } => {
                self.nodes.remove(&id);
            }
            NodeEvent::Resync => {
                self.list_all();
                return;
            }
        }
        self.refresh_remote_running();
        self.rebalance();
    }

    fn task_event(&mut self, ev: TaskMetaEvent) {
        match ev {
            TaskMetaEvent::Put(meta) => self.upsert_dynamic(Arc::new(meta)),
            TaskMetaEvent::Removed { name } => {
                // A cleanup ended the name's life; a static task of that name starts another.
                self.remove_dynamic(&name);
                self.life_stale(&name);
            }
            TaskMetaEvent::Tombstoned(t) => self.set_tombstone(t.name),
            TaskMetaEvent::TombstoneCleared { name } => self.clear_tombstone(&name),
            TaskMetaEvent::Resync => self.list_all(),
        }
    }

    fn report_corrupt(&self, corrupt: &[crate::types::CorruptEntry]) {
        for c in corrupt {
            tracing::warn!(key = %c.key, reason = %c.reason, "corrupt registry record skipped");
            let _ = self.events.send(DcronEvent::CorruptRecord {
                key: c.key.clone(),
                reason: c.reason.clone(),
            });
        }
    }

    fn reconcile_tasks(&mut self, tasks: Listing<TaskMeta>, tombstones: Listing<Tombstone>) {
        self.report_corrupt(&tasks.corrupt);
        self.report_corrupt(&tombstones.corrupt);
        let new_tombs: HashSet<String> = tombstones.items.into_iter().map(|t| t.name).collect();
        let cleared: Vec<String> = self
            .tasks
            .tombstones()
            .difference(&new_tombs)
            .cloned()
            .collect();
        for name in new_tombs
            .difference(self.tasks.tombstones())
            .cloned()
            .collect::<Vec<_>>()
        {
            self.set_tombstone(name);
        }
        for name in cleared {
            self.clear_tombstone(&name);
        }
        let listed: HashSet<String> = tasks.items.iter().map(|m| m.name.clone()).collect();
        let gone: Vec<Arc<str>> = self
            .tasks
            .values()
            .filter(|e| !e.is_static && !listed.contains(&*e.name))
            .map(|e| e.name.clone())
            .collect();
        for name in gone {
            self.remove_dynamic(&name);
        }
        for meta in tasks.items {
            self.upsert_dynamic(Arc::new(meta));
        }
    }

    // ----- task set -----

    fn upsert_dynamic(&mut self, meta: Arc<TaskMeta>) {
        if let Some(existing) = self.tasks.get(&meta.name) {
            if existing.is_static {
                tracing::warn!(task = %meta.name, "dynamic task has the name of a static task on this node; the static task wins here");
                return;
            }
            if *existing.meta == *meta {
                return;
            }
        }
        // A record any client may have written: outside the bounds it is reported as corrupt
        // and skipped (an earlier version of it stops too); the other tasks keep firing.
        let checked = meta.check_bounds().and_then(|()| {
            Schedule::parse(
                &meta.cron_format,
                meta.time_zone.as_deref(),
                self.cfg.seconds,
            )
        });
        match checked {
            Ok(schedule) => {
                let name = meta.name.clone();
                self.upsert(name, meta, schedule, None, false);
            }
            Err(e) => {
                tracing::warn!(task = %meta.name.chars().take(64).collect::<String>(), error = %e, "dynamic task record refused: skipped");
                self.report_corrupt(&[crate::types::CorruptEntry {
                    key: meta.name.chars().take(256).collect(),
                    reason: e.to_string(),
                }]);
                (self.cfg.error_handler)(&meta, &e);
                if crate::types::validate_task_name(&meta.name).is_ok() {
                    self.remove_dynamic(&meta.name);
                }
            }
        }
    }

    fn upsert(
        &mut self,
        name: String,
        meta: Arc<TaskMeta>,
        schedule: Schedule,
        task: Option<Arc<dyn Task>>,
        is_static: bool,
    ) {
        let up = self.tasks.upsert(&name, meta, schedule, task, is_static);
        if up.new_name && self.cfg.assigner.depends_on_task_list() {
            self.rebalance_all();
        } else {
            self.place(&name, up.was_owned);
        }
        if up.was_owned && !self.tasks.get(&name).is_some_and(|e| e.owned) {
            self.disown(&name);
        }
        self.publish_view();
    }

    /// Cancels the owner token of a task this node stopped owning (or forgot).
    fn disown(&mut self, name: &str) {
        if let Some(t) = self.owners.remove(name) {
            t.cancel();
        }
    }

    fn remove_dynamic(&mut self, name: &str) {
        if self.tasks.remove_dynamic(name) {
            self.disown(name);
            if self.cfg.assigner.depends_on_task_list() {
                self.rebalance_all();
            }
            self.publish_view();
        }
    }

    fn set_tombstone(&mut self, name: String) {
        if self.tasks.tombstone(name.clone()) {
            self.disown(&name);
        }
        self.publish_view();
    }

    fn clear_tombstone(&mut self, name: &str) {
        if self.tasks.clear_tombstone(name) {
            if self.tasks.get(name).is_some() {
                self.place(name, false);
            }
            self.publish_view();
        }
    }

    // ----- assignment -----

    fn rebalance(&mut self) {
        let members = ownership::members(
            self.nodes.values(),
            &self.node_id,
            self.is_active(),
            self.cfg.weight,
        );
        if members == self.members && self.placement.is_some() {
            return;
        }
        self.placement = match self.cfg.assigner.prepare(&members) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::error!(error = %e, "assignment failed; owning nothing");
                None
            }
        };
        self.members = members;
        self.rebalance_all();
    }

    fn rebalance_all(&mut self) {
        let before = self.tasks.owned_count();
        let sorted = self.sorted_names();
        let refs: Vec<&str> = sorted.iter().map(String::as_str).collect();
        let view = self.ownership_view(&refs);
        let ownership::Diff { gained, lost } = ownership::diff(self.tasks.values().map(|e| {
            let should = view.owns(&e.name, self.tasks.is_tombstoned(&e.name));
            (e.name.clone(), e.owned, should)
        }));
        let lost_count = lost.len();
        for name in lost {
            if self.tasks.lose(&name) {
                self.disown(&name);
            }
        }
        let lost = lost_count;
        let count_gained = gained.len();
        self.gain(gained);
        if count_gained > 0 || lost > 0 {
            let owned = before + count_gained - lost;
            tracing::info!(node = %self.node_id, gained = count_gained, lost, owned, members = self.members.len(), "rebalanced");
            let _ = self.events.send(DcronEvent::Rebalanced {
                node: self.node_id.to_string(),
                gained: count_gained,
                lost,
                owned,
                members: self.members.len(),
            });
            metrics::counter!("dcron_rebalances_total").increment(1);
            self.publish_view();
        }
    }

    fn sorted_names(&self) -> Vec<String> {
        ownership::sorted_names(
            self.cfg.assigner.depends_on_task_list(),
            self.tasks.names(),
            |n| self.tasks.is_tombstoned(n),
        )
    }

    /// What ownership is judged from; `sorted` comes from [`Driver::sorted_names`].
    fn ownership_view<'a>(&'a self, sorted: &'a [&'a str]) -> ownership::View<'a> {
        ownership::View {
            me: &self.node_id,
            active: self.is_active(),
            placement: self.placement.as_deref(),
            sorted,
        }
    }

    /// Places one task after it was added or changed.
    fn place(&mut self, name: &str, was_owned: bool) {
        let sorted = self.sorted_names();
        let refs: Vec<&str> = sorted.iter().map(String::as_str).collect();
        let should = self
            .ownership_view(&refs)
            .owns(name, self.tasks.is_tombstoned(name));
        let life_known = self.tasks.get(name).is_some_and(|e| e.life.is_some());
        match ownership::place(should, was_owned, life_known) {
            Placed::Elsewhere => {}
            Placed::Reschedule => {
                // Schedule changed on an owned task in the same life: no catch-up, just the
                // next occurrence.
                self.tasks.keep(name);
                self.schedule_next(name, self.clock.now());
            }
            Placed::Gain => {
                let key = self.tasks.get(name).map(|e| e.name.clone());
                self.gain(key.into_iter().collect());
            }
        }
    }

    fn drop_ownership(&mut self) {
        for name in self.tasks.lose_all() {
            self.disown(&name);
        }
        self.heap.clear();
        self.members.clear();
        self.placement = None;
        self.publish_view();
    }

    /// Takes tasks over: learn their lives (one batch for those not known yet), then catch up
    /// what nobody claimed and schedule (see [`Driver::plan_gained`]).
    fn gain(&mut self, names: Vec<Arc<str>>) {
        if names.is_empty() {
            return;
        }
        let mut unknown = Vec::new();
        let mut known = Vec::new();
        for name in names {
            // Counts stored meanwhile by other owners are read again before the next write.
            self.statuses.gained(&name);
            match self.tasks.gain(&name) {
                Gain::Plan => known.push(name),
                Gain::ReadLife => unknown.push(name),
                Gain::Pending | Gain::Unknown => {}
            }
        }
        self.plan_gained(known);
        self.ensure_lives(unknown);
    }

    /// Reads the lives of `names` from the registry, starting a life now for a name without
    /// one (the first registration of a static task), in batches; the replies come back as
    /// [`Internal::Lives`].
    fn ensure_lives(&mut self, names: Vec<Arc<str>>) {
        if names.is_empty() {
            return;
        }
        let now = self.clock.now();
        for chunk in names.chunks(LIFE_BATCH) {
            let chunk = chunk.to_vec();
            let registry = self.registry.clone();
            let tx = self.internal_tx.clone();
            tokio::spawn(async move {
                let request: Vec<(String, DateTime<Utc>)> =
                    chunk.iter().map(|n| (n.to_string(), now)).collect();
                let r = registry.ensure_lives(&request).await;
                let r = match r {
                    Ok(lives) if lives.len() != chunk.len() => Err(Error::Backend {
                        backend: registry.backend(),
                        message: format!(
                            "ensure_lives answered {} lives for {} names",
                            lives.len(),
                            chunk.len()
                        ),
                        source: None,
                    }),
                    other => other,
                };
                let _ = tx.send(Internal::Lives(chunk, r));
            });
        }
    }

    /// Applies lives read from the registry.
    fn lives_read(&mut self, names: Vec<Arc<str>>, result: Result<Vec<Life>>) {
        match result {
            Ok(lives) => {
                let mut plan = Vec::new();
                for (name, life) in names.into_iter().zip(lives) {
                    if self.set_life(&name, life) {
                        plan.push(name);
                    }
                }
                self.plan_gained(plan);
            }
            Err(e) => {
                tracing::warn!(node = %self.node_id, error = %e, tasks = names.len(), "reading task lives failed; retrying");
                self.tasks.life_unread(&names);
                if !self.lives_retry_pending {
                    self.lives_retry_pending = true;
                    let tx = self.internal_tx.clone();
                    let delay = self.cfg.retry_backoff.max(Duration::from_millis(100));
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let _ = tx.send(Internal::RetryLives);
                    });
                }
            }
        }
    }

    /// Records a task's life; answers whether the task is owned and must be (re)planned: its
    /// life is new to this node. A changed life drops what was scheduled for the old one.
    fn set_life(&mut self, name: &str, life: Life) -> bool {
        self.tasks.set_life(name, life)
    }

    /// Forgets a task's life (it changed or ended in the registry) and, when the task is owned,
    /// reads it again.
    fn life_stale(&mut self, name: &str) {
        if let Some(key) = self.tasks.life_stale(name) {
            self.ensure_lives(vec![key]);
        }
    }

    /// The earliest instant from which some working node is known to have run: instants at or
    /// after it that nobody claimed fell in an ownership gap and are all caught up. Node
    /// records carry their creation on their own clock: the largest skew is allowed for.
    fn gap_floor(&self) -> Option<DateTime<Utc>> {
        ownership::gap_floor(
            self.nodes.values(),
            &self.node_id,
            self.working_since,
            self.cfg.max_clock_skew,
        )
    }

    /// Catches up and schedules owned tasks whose lives are known.
    fn plan_gained(&mut self, names: Vec<Arc<str>>) {
        if names.is_empty() {
            return;
        }
        let now = self.clock.now();
        let gap_floor = self.gap_floor();
        let mut catch_up = Vec::new();
        for name in names {
            let pause = self.paused.state(&name);
            let Some(entry) = self.tasks.get_mut(&name) else {
                continue;
            };
            if !entry.owned {
                continue;
            }
            let Some(fires) = entry.fires() else {
                continue;
            };
            let window = window_of(&entry.meta, self.cfg.misfire_window);
            let missed = plan::catch_up(&CatchUp {
                fires,
                now,
                window,
                policy: entry.meta.misfire.unwrap_or(self.cfg.misfire),
                gap_floor,
                pause,
            });
            let life = fires.life.generation;
            match entry.task.clone().or_else(|| self.cfg.task_run_fn.clone()) {
                Some(task) => {
                    if !missed.is_empty() {
                        let _ = self.events.send(DcronEvent::CaughtUp {
                            task: name.to_string(),
                            fires: missed.len(),
                        });
                        metrics::counter!("dcron_catch_up_fires_total")
                            .increment(missed.len() as u64);
                    }
                    let owner = owner_token(&mut self.owners, entry, &self.cfg);
                    let mono = self.clock.monotonic();
                    let stamp = entry.stamp_now();
                    for instant in missed {
                        let deadline = plan::plus(instant, window);
                        catch_up.push(PendingFire {
                            key: FireKey::new(&*name, instant),
                            meta: entry.meta.clone(),
                            task: task.clone(),
                            kind: FireKind::CatchUp,
                            window,
                            owner: owner.clone(),
                            life,
                            deadline,
                            deadline_at: mono + until(now, deadline),
                            min_retention: Duration::ZERO,
                            stamp: stamp.clone(),
                        });
                    }
                }
                None => self.no_handler(&name),
            }
            self.schedule_next(&name, now);
        }
        if !catch_up.is_empty() {
            for chunk in catch_up.chunks(MAX_BATCH) {
                self.claim_batch(chunk.to_vec());
            }
        }
    }

    /// Reports, once per task and node, that this node owns a dynamic task it cannot run.
    fn no_handler(&mut self, name: &str) {
        if !self.no_handler.insert(name.to_string()) {
            return;
        }
        tracing::error!(node = %self.node_id, task = name, "this node owns a dynamic task but has no task_run_fn: its fires are not run here");
        metrics::counter!("dcron_tasks_without_handler_total").increment(1);
        let _ = self.events.send(DcronEvent::NoHandler {
            task: name.to_string(),
            node: self.node_id.to_string(),
        });
        self.statuses.no_handler(name, &self.node_id);
    }

    fn schedule_next(&mut self, name: &str, after: DateTime<Utc>) {
        let Some(entry) = self.tasks.get(name) else {
            return;
        };
        if !entry.owned {
            return;
        }
        if let Some(next) = entry.fires().and_then(|f| f.next_after(after)) {
            self.heap.push(next, entry.generation, entry.name.clone());
        }
    }

    // ----- firing -----

    fn next_deadline(&mut self) -> Option<Instant> {
        let tasks = &self.tasks;
        let ms = self
            .heap
            .earliest(|name, generation| tasks.is_live(name, generation))?;
        // Claims go out `claim_ahead` before the instant; the handlers start at the instant.
        let target = timers::wake_at(ms, self.cfg.claim_ahead)?;
        Some(self.clock.monotonic() + until(self.clock.now(), target))
    }

    fn fire_due(&mut self) {
        if !self.is_active() {
            return;
        }
        let now = self.clock.now();
        let mono = self.clock.monotonic();
        let horizon_ms = timers::horizon_ms(now, self.cfg.claim_ahead);
        let mut batch = Vec::new();
        let mut reschedule = Vec::new();
        let mut sent = 0;
        loop {
            let tasks = &self.tasks;
            let Some(due) = self.heap.pop_due(horizon_ms, |name, generation| {
                tasks.is_live(name, generation)
            }) else {
                break;
            };
            let name = due.name.clone();
            let Some(entry) = self.tasks.get_mut(&name) else {
                continue;
            };
            let Some(life) = entry.life else {
                continue;
            };
            let Some(instant) = due.instant() else {
                continue;
            };
            let window = window_of(&entry.meta, self.cfg.misfire_window);
            let task = entry.task.clone().or_else(|| self.cfg.task_run_fn.clone());
            let meta = entry.meta.clone();
            let owner = owner_token(&mut self.owners, entry, &self.cfg);
            let stamp = entry.stamp_now();
            reschedule.push((name.clone(), instant));
            let paused = self.paused.is_paused(&name);
            let deadline = match claims::judge_due(now, instant, window, paused, task.is_some()) {
                Due::Paused => {
                    let key = FireKey::new(&*name, instant);
                    let info = self.env.info(&key, FireKind::Scheduled);
                    metrics::counter!("dcron_fires_skipped_total", "reason" => SkipReason::Paused.as_str()).increment(1);
                    let _ = self.events.send(DcronEvent::Skipped {
                        fire: info,
                        reason: SkipReason::Paused,
                    });
                    continue;
                }
                Due::Missed => {
                    let key = FireKey::new(&*name, instant);
                    tracing::warn!(task = %name, scheduled = %instant, "fire later than its misfire window: not claimed");
                    metrics::counter!("dcron_fires_missed_total").increment(1);
                    let _ = self
                        .events
                        .send(DcronEvent::Missed(self.env.info(&key, FireKind::Scheduled)));
                    continue;
                }
                Due::NoHandler => {
                    self.no_handler(&name);
                    continue;
                }
                Due::Claim { deadline } => deadline,
            };
            let Some(task) = task else {
                continue;
            };
            let key = FireKey::new(&*name, instant);
            self.env
                .emit(|| DcronEvent::Scheduled(self.env.info(&key, FireKind::Scheduled)));
            batch.push(PendingFire {
                key,
                meta,
                task,
                kind: FireKind::Scheduled,
                window,
                owner,
                life: life.generation,
                deadline,
                deadline_at: mono + until(now, deadline),
                min_retention: Duration::ZERO,
                stamp,
            });
            // A full batch goes out at once, the first of a burst sooner: its
            // handlers start while the rest is still being claimed.
            if batch.len() >= claims::batch_limit(sent) {
                sent += batch.len();
                self.claim_batch(std::mem::take(&mut batch));
            }
        }
        if !batch.is_empty() {
            self.claim_batch(batch);
        }
        // The next occurrences are computed after the claims went out: the cron math of a
        // large burst then runs while the claims and handlers do, not before them.
        for (name, instant) in reschedule {
            self.schedule_next(&name, instant);
        }
    }

    /// The settings a claim's retention depends on.
    fn claim_timing(cfg: &Config) -> ClaimTiming {
        ClaimTiming {
            max_clock_skew: cfg.max_clock_skew,
            ttl: cfg.ttl,
            claim_margin: cfg.claim_margin,
            claim_retention: cfg.claim_retention,
        }
    }

    /// The seed of this node's back-off jitter: its stable name when it has one (so that a
    /// replayed simulation waits the same), else its id.
    fn jitter_seed(&self) -> u64 {
        let key = self.cfg.name.as_deref().unwrap_or(&self.node_id);
        dcron_assign::stable_hash(key.as_bytes())
    }

    /// The claimant this node claims as now: its id and its current registration epoch.
    fn claimant(&self) -> Option<Claimant> {
        self.lease
            .as_ref()
            .map(|(epoch, _)| Claimant::new(self.node_id.to_string(), *epoch))
    }

    /// Claims a batch in one registry call (retried while the window is open), then runs the
    /// fires won. Runs in its own task so the loop keeps its timers.
    fn claim_batch(&self, batch: Vec<PendingFire>) {
        self.claim_batch_with(batch, None);
    }

    fn claim_batch_with(
        &self,
        batch: Vec<PendingFire>,
        report: Option<oneshot::Sender<(usize, usize, usize)>>,
    ) {
        let Some(claimant) = self.claimant() else {
            return;
        };
        let env = self.env.clone();
        let internal = self.internal_tx.clone();
        let timing = Driver::claim_timing(&self.cfg);
        let backoff = claims::first_backoff(self.cfg.retry_backoff);
        // Tracked with the handlers: a stop waits for claims in flight, and a fire that was
        // won still runs (nobody else can run it once it is claimed).
        let tracker = self.handlers.clone();
        tracker.spawn(async move {
            let now = env.clock.now();
            let mut pending: Vec<(PendingFire, ClaimRequest)> = batch
                .into_iter()
                .map(|f| {
                    let retention =
                        timing.retention(now, f.deadline).max(f.min_retention);
                    let request = ClaimRequest::new(f.key.clone(), f.life, f.deadline, retention);
                    (f, request)
                })
                .collect();
            let (mut won, mut lost, mut tombstoned) = (0, 0, 0);
            let mut delay = backoff;
            let mut first_attempt = true;
            while !pending.is_empty() {
                // The same claimant retries the same requests: a claim that was applied but
                // whose reply was lost answers `WonEarlier` now, so no fire is lost that way.
                let requests: Vec<ClaimRequest> = pending.iter().map(|(_, r)| r.clone()).collect();
                let t0 = Instant::now();
                let r = env.registry.claim(&claimant, &requests).await;
                metrics::histogram!("dcron_claim_batch_seconds").record(t0.elapsed().as_secs_f64());
                let mut retry = Vec::new();
                match r {
                    Ok(outcomes) if outcomes.len() == requests.len() => {
                        let mut launches = Vec::with_capacity(pending.len());
                        for ((fire, request), outcome) in pending.into_iter().zip(outcomes) {
                            match claims::judge_outcome(outcome, first_attempt) {
                                // Held by this node since an earlier call of another path (a
                                // catch-up of an instant it claimed before, a backfill of one
                                // it ran): started already; not started again.
                                Verdict::HeldAlready => lost += 1,
                                // A retry learning the claim it made when its reply was lost
                                // (`WonEarlier`), or a fresh win.
                                Verdict::Start { token } => match accept(&env, fire, token) {
                                    Accepted::Launch(launch) => {
                                        won += 1;
                                        launches.push(launch);
                                    }
                                    // Started here before: for a backfill, that is "already
                                    // claimed".
                                    Accepted::AlreadyStarted => lost += 1,
                                    Accepted::Late => {}
                                },
                                Verdict::Lost => {
                                    lost += 1;
                                    metrics::counter!("dcron_fires_lost_total").increment(1);
                                    env.emit(|| DcronEvent::LostClaim(env.info(&fire.key, fire.kind)));
                                }
                                Verdict::Late => {
                                    report_missed(&env, &fire, "the registry refused the claim past its deadline");
                                }
                                Verdict::Tombstoned => {
                                    tombstoned += 1;
                                    metrics::counter!("dcron_fires_skipped_total", "reason" => "tombstoned")
                                        .increment(1);
                                    env.emit(|| DcronEvent::SkippedTombstoned(env.info(&fire.key, fire.kind)));
                                    let _ = internal.send(Internal::OneShotEnded {
                                        name: fire.key.task.clone(),
                                        done: true,
                                    });
                                }
                                Verdict::Superseded => {
                                    // Planned for a life that ended: the driver learns the new
                                    // one and plans its fires.
                                    metrics::counter!("dcron_fires_superseded_total").increment(1);
                                    env.emit(|| DcronEvent::Superseded(env.info(&fire.key, fire.kind)));
                                    let _ = internal.send(Internal::Superseded(fire.key.task.clone()));
                                }
                                Verdict::Retry => retry.push((fire, request)),
                                Verdict::Failed(e) => {
                                    tracing::error!(error = %e, fire = %fire.key, "claim of one fire failed");
                                    report_missed(&env, &fire, "the claim failed");
                                }
                            }
                        }
                        env.launch_all(launches);
                    }
                    Ok(o) => {
                        tracing::error!(expected = requests.len(), got = o.len(), "registry answered a claim batch with the wrong number of outcomes; retrying it");
                        retry = pending;
                    }
                    Err(e) if e.is_retryable() => {
                        tracing::debug!(error = %e, fires = requests.len(), "claim batch failed; retrying");
                        retry = pending;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, fires = requests.len(), "claim batch refused");
                        for (fire, _) in &pending {
                            report_missed(&env, fire, "the claim was refused");
                        }
                        break;
                    }
                }
                // Retry what is undecided while its deadline allows. A stop lets them go on
                // through its grace period (the claim may be this node's, and then nobody else
                // may run the fire); only the end of the grace period gives up.
                let mono = env.clock.monotonic();
                pending = Vec::new();
                for (fire, request) in retry {
                    if claims::gives_up(mono, fire.deadline_at, env.cancel.is_cancelled()) {
                        report_missed(&env, &fire, "its claim could not be decided before its deadline");
                    } else {
                        pending.push((fire, request));
                    }
                }
                if !pending.is_empty() {
                    first_attempt = false;
                    tokio::time::sleep(delay).await;
                    delay = claims::next_backoff(delay);
                }
            }
            metrics::counter!("dcron_fires_claimed_total").increment(won as u64);
            if let Some(report) = report {
                let _ = report.send((won, lost, tombstoned));
            }
        });
    }

    // ----- pause, trigger, backfill -----

    fn apply_pause(&mut self, record: PauseRecord) {
        let task = record.task.clone();
        if self.paused.apply(record) {
            self.invalidate(&task);
        }
    }

    /// Moves a task's stamp: fires claimed ahead of their instant for it do not start.
    fn invalidate(&self, name: &str) {
        self.tasks.invalidate(name);
    }

    /// Consumes the trigger requests of owned tasks (one atomic delete each: only the node
    /// whose delete succeeds runs the fire) and drops requests nobody knows after they expire.
    fn handle_triggers(&mut self, triggers: Vec<TriggerRecord>) {
        let now = self.clock.now();
        for t in triggers {
            let key = t.key();
            if self.triggers_inflight.contains(&key) {
                continue;
            }
            let tombstoned = self.tasks.is_tombstoned(&t.task);
            let entry = self.tasks.get(&t.task);
            let seen = TriggerSeen {
                tombstoned,
                owned: entry.is_some_and(|e| e.owned),
                has_handler: entry.is_some_and(|e| e.task.is_some())
                    || self.cfg.task_run_fn.is_some(),
                requested_at: t.requested_at,
            };
            let launch = match control::judge_trigger(&seen, now, crate::admin::TRIGGER_EXPIRY) {
                Trigger::Leave => continue,
                Trigger::Drop(why) => Err(why),
                Trigger::Run => {
                    let Some(e) = self.tasks.get_mut(&t.task) else {
                        continue;
                    };
                    let owner = owner_token(&mut self.owners, e, &self.cfg);
                    let Some(task) = e.task.clone().or_else(|| self.cfg.task_run_fn.clone()) else {
                        continue;
                    };
                    Ok(Launch {
                        key: FireKey::new(t.task.clone(), t.requested_at),
                        meta: e.meta.clone(),
                        task,
                        token: t.id,
                        kind: FireKind::Trigger,
                        window: window_of(&e.meta, self.cfg.misfire_window),
                        owner,
                        deadline_at: None,
                        stamp: None,
                    })
                }
            };
            self.triggers_inflight.insert(key.clone());
            let env = self.env.clone();
            let internal = self.internal_tx.clone();
            tokio::spawn(async move {
                match env.registry.delete_record(RecordKind::Trigger, &key).await {
                    Ok(true) => match launch {
                        Ok(launch) => {
                            let info = env.info(&launch.key, FireKind::Trigger);
                            tracing::info!(task = %info.task, id = launch.token, "trigger-now request consumed");
                            metrics::counter!("dcron_fires_triggered_total").increment(1);
                            let _ = env.events.send(DcronEvent::Triggered(info));
                            env.launch_all(vec![launch]);
                        }
                        Err(why) => {
                            tracing::warn!(trigger = %key, reason = why, "trigger-now request dropped unrun");
                        }
                    },
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(trigger = %key, error = %e, "consuming a trigger-now request failed; next poll retries")
                    }
                }
                let _ = internal.send(Internal::TriggerDone(key));
            });
        }
    }

    fn backfill(
        &mut self,
        name: String,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        reply: oneshot::Sender<Result<BackfillReport>>,
    ) {
        let now = self.clock.now();
        let prepared = (|| {
            let range = claims::backfill_range(&name, from, to, now)?;
            if self.tasks.is_tombstoned(&name) {
                return Err(Error::Tombstoned { name: name.clone() });
            }
            let entry = self.tasks.get(&name).ok_or_else(|| Error::NotFound {
                what: "task",
                name: name.clone(),
            })?;
            let task = entry
                .task
                .clone()
                .or_else(|| self.cfg.task_run_fn.clone())
                .ok_or_else(|| {
                    Error::NotConfigured("task_run_fn (needed to run dynamic tasks)".into())
                })?;
            let fires = entry.fires().ok_or_else(|| {
                Error::InvalidState(format!(
                    "backfill of `{name}`: the task's life is not known on this node yet; try again"
                ))
            })?;
            let window = window_of(&entry.meta, self.cfg.misfire_window);
            let life = fires.life.generation;
            let plan = claims::plan_backfill(&name, &fires, range, now, window)?;
            let deadline_at = self.clock.monotonic() + window;
            let stamp = entry.stamp_now();
            let fires: Vec<PendingFire> = plan
                .instants
                .into_iter()
                .map(|instant| PendingFire {
                    key: FireKey::new(name.clone(), instant),
                    meta: entry.meta.clone(),
                    task: task.clone(),
                    kind: FireKind::Backfill,
                    window,
                    // A backfill is not bound to ownership (it runs where it was asked).
                    owner: None,
                    life,
                    deadline: plan.deadline,
                    deadline_at,
                    min_retention: plan.min_retention,
                    stamp: stamp.clone(),
                })
                .collect();
            Ok(fires)
        })();
        let fires = match prepared {
            Ok(f) => f,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let occurrences = fires.len();
        let mut waits = Vec::new();
        for chunk in fires.chunks(MAX_BATCH) {
            let (tx, rx) = oneshot::channel();
            self.claim_batch_with(chunk.to_vec(), Some(tx));
            waits.push(rx);
        }
        let events = self.events.clone();
        tokio::spawn(async move {
            let mut report = BackfillReport {
                occurrences,
                ..Default::default()
            };
            for rx in waits {
                match rx.await {
                    Ok((won, lost, tombstoned)) => {
                        report.claimed += won;
                        report.already_claimed += lost;
                        report.tombstoned += tombstoned;
                    }
                    Err(_) => report.unclaimed += 1,
                }
            }
            let _ = events.send(DcronEvent::Backfilled {
                task: name,
                claimed: report.claimed,
                already_claimed: report.already_claimed,
            });
            let _ = reply.send(Ok(report));
        });
    }

    // ----- overlap markers -----

    /// Rebuilds the set of tasks other nodes publish as running.
    fn refresh_remote_running(&mut self) {
        let remote = ownership::remote_running(self.nodes.values(), &self.node_id);
        self.running.set_remote(remote);
    }

    /// Writes this node's record with its current running markers (one write in flight at a
    /// time; changes meanwhile are coalesced into the next write).
    fn publish_markers(&mut self) {
        let markers = self.running.markers();
        if markers == self.record.running && !self.markers_dirty {
            return;
        }
        let Some((epoch, lease)) = self.lease.clone() else {
            return;
        };
        if self.markers_inflight {
            self.markers_dirty = true;
            return;
        }
        self.markers_dirty = false;
        self.markers_inflight = true;
        self.record.running = markers;
        self.write_record(epoch, lease, Internal::MarkersWritten);
    }

    /// Writes this node's record (with a fresh `last_alive`) in its own task; `done` wraps the
    /// outcome for the loop.
    fn write_record(&mut self, epoch: u64, lease: Lease, done: fn(u64, Result<()>) -> Internal) {
        self.record.last_alive = self.clock.now();
        let record = self.record.clone();
        let registry = self.registry.clone();
        let tx = self.internal_tx.clone();
        tokio::spawn(async move {
            let r = registry.update_node(&lease, &record).await;
            let _ = tx.send(done(epoch, r));
        });
    }

    // ----- status -----

    /// Takes the fires that ended since the last look into the local status counts.
    fn collect_ended(&mut self) {
        for e in self.ended.drain() {
            self.fire_ended(&e.meta.name, e.scheduled, e.error);
        }
    }

    fn fire_ended(&mut self, name: &str, scheduled: DateTime<Utc>, error: Option<String>) {
        if self.cfg.status_interval.is_zero() {
            return;
        }
        self.statuses.fire_ended(name, scheduled, error);
    }

    fn status_record(&self, name: &str, st: &StatusLocal) -> TaskStatus {
        let owned = self.tasks.get(name).is_some_and(|e| e.owned);
        st.record(name, &self.node_id, owned, self.clock.now())
    }

    /// Writes the status of tasks whose fires ended since the last flush, in one batch; the
    /// first time a task is written here, its stored counts are read and added.
    fn flush_status(&mut self) {
        self.collect_ended();
        if self.status_inflight
            || !self.statuses.is_dirty()
            || !self.registry.capabilities().records
        {
            return;
        }
        let tasks = &self.tasks;
        let (records, unloaded) = self.statuses.take_dirty(
            &self.node_id,
            |name| tasks.get(name).is_some_and(|e| e.owned),
            self.clock.now(),
        );
        self.status_inflight = true;
        let registry = self.registry.clone();
        let tx = self.internal_tx.clone();
        tokio::spawn(async move {
            let r = async {
                let mut bases = HashMap::new();
                if !unloaded.is_empty() {
                    let stored = crate::admin::list_status(&*registry).await?;
                    for s in stored.items {
                        if unloaded.contains(&s.task) {
                            bases.insert(s.task.clone(), (s.run_count, s.failure_count));
                        }
                    }
                    for name in &unloaded {
                        bases.entry(name.clone()).or_insert((0, 0));
                    }
                }
                let batch: Vec<(String, Vec<u8>)> = records
                    .into_iter()
                    .map(|mut rec| {
                        if let Some((runs, failures)) = bases.get(&rec.task) {
                            rec.run_count += runs;
                            rec.failure_count += failures;
                        }
                        (rec.task.clone(), rec.encode())
                    })
                    .collect();
                for chunk in batch.chunks(500) {
                    registry.put_records(RecordKind::Status, chunk).await?;
                }
                Ok(bases)
            }
            .await;
            let _ = tx.send(Internal::StatusFlushed(r));
        });
    }

    /// Leaves once no status write is in flight and none is due.
    fn finish_drain(&mut self) {
        if !self.status_inflight {
            self.flush_status();
        }
        if !self.status_inflight && self.drained_pending {
            self.drained_pending = false;
            self.lifecycle(Input::Drained);
        }
    }

    /// What this node knows of a task: its local counts (when loaded), its owner and next fire.
    fn local_status(&self, name: &str) -> Option<TaskStatus> {
        let entry = self.tasks.get(name)?;
        let now = self.clock.now();
        let mut out = match self.statuses.get(name) {
            Some(st) if st.base_loaded => self.status_record(name, st),
            _ => TaskStatus::new(name, now),
        };
        if entry.owned {
            out.owner = Some(self.node_id.to_string());
            // Life-aware: nothing before live-since, a one-shot's one fire only.
            out.next_fire = entry.fires().and_then(|f| f.next_after(now));
        }
        Some(out)
    }

    /// Publishes the API's view now (sorting every name: O(n log n)).
    fn flush_view(&mut self) {
        let started = std::time::Instant::now();
        self.view_dirty = false;
        self.view_flushed = Instant::now();
        let mut owned: Vec<Arc<str>> = self
            .tasks
            .values()
            .filter(|e| e.owned)
            .map(|e| e.name.clone())
            .collect();
        owned.sort();
        let mut all: Vec<Arc<str>> = self
            .tasks
            .values()
            .filter(|e| !self.tasks.is_tombstoned(&e.name))
            .map(|e| e.name.clone())
            .collect();
        all.sort();
        if let Ok(mut v) = self.view.write() {
            v.owned = owned;
            v.all = all;
        }
        self.view_flush_every = VIEW_FLUSH.max(started.elapsed() * 10);
    }
}

/// A fire this node holds the claim of: checks its deadline on the monotonic clock and that
/// this process has not launched it already (a retried claim and a catch-up of the same
/// instant both answer `WonEarlier`), then makes it a launch.
fn accept(env: &FireEnv, fire: PendingFire, token: u64) -> Accepted {
    if env.clock.monotonic() > fire.deadline_at {
        report_missed(env, &fire, "the claim reply came after its deadline");
        return Accepted::Late;
    }
    if !env.launched.insert(&fire.key, fire.deadline) {
        tracing::debug!(fire = %fire.key, "claim held again by this node; the fire already started here");
        return Accepted::AlreadyStarted;
    }
    env.emit(|| DcronEvent::Claimed(env.info(&fire.key, fire.kind)));
    Accepted::Launch(Launch {
        key: fire.key,
        meta: fire.meta,
        task: fire.task,
        token,
        kind: fire.kind,
        window: fire.window,
        owner: fire.owner,
        deadline_at: Some(fire.deadline_at),
        stamp: Some(fire.stamp),
    })
}

/// What [`accept`] decided for a fire this node holds.
enum Accepted {
    /// Start it.
    Launch(Launch),
    /// This process started it already.
    AlreadyStarted,
    /// Its deadline passed.
    Late,
}

/// Reports a fire that will not run here and that nobody else may run either.
fn report_missed(env: &FireEnv, fire: &PendingFire, why: &'static str) {
    tracing::warn!(fire = %fire.key, why, "fire missed");
    metrics::counter!("dcron_fires_missed_total").increment(1);
    let _ = env
        .events
        .send(DcronEvent::Missed(env.info(&fire.key, fire.kind)));
}

/// The token that tells a fire's retries the node lost the task: only tasks that retry get one.
fn owner_token(
    owners: &mut HashMap<Arc<str>, CancellationToken>,
    entry: &Entry,
    cfg: &Config,
) -> Option<CancellationToken> {
    (crate::fire::retry_of(&entry.meta, cfg).max_attempts > 1)
        .then(|| owners.entry(entry.name.clone()).or_default().clone())
}

fn state_name(state: &State) -> &'static str {
    match state {
        State::Idle => "idle",
        State::Starting { .. } => "starting",
        State::Working { .. } => "working",
        State::Lost { .. } => "lost",
        State::Leaving { .. } => "leaving",
        State::Stopped => "stopped",
    }
}

async fn next_event<T>(stream: &mut Option<WatchStream<T>>) -> Option<T> {
    match stream {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
