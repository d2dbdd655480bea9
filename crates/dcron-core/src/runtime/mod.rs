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
//! Decisions are pure ([`crate::lifecycle::step`], [`crate::backend::tombstone`], the assigner, and the
//! modules of [`crate::engine`]: the task table, ownership, catch-up, timers, claim planning,
//! pauses and triggers, status counts); the driver feeds them inputs (time is always an
//! argument) and executes their outputs. Per node it keeps a min-heap of `(next instant, task)`
//! over **owned** tasks only, sleeps until the earliest, claims every fire due at that instant
//! in one batch, and spawns the handlers of the fires it won. Ownership changes are applied as
//! a diff; a task gained is caught up over its misfire window.
//!
//! This file holds the driver's state, its loop and its lifecycle; the rest of its methods are
//! grouped by theme: `messages` (commands and replies), `membership` (listings, watches, the
//! task set, ownership), `firing` (catch-up, timers, claim batches, pause, trigger, backfill)
//! and `records` (overlap markers, statuses, the API's view).

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

mod firing;
mod membership;
mod messages;
mod records;

/// How often a working node rewrites its record to refresh `last_alive`.
const LAST_ALIVE_REFRESH: Duration = Duration::from_secs(30);

/// The most task names in one `ensure_lives` call.
const LIFE_BATCH: usize = 1000;

/// Batches of life reads in flight at once (see `ensure_lives`).
const LIFE_READS_IN_FLIGHT: usize = 4;

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
    /// Names whose lives are to be read, sent after the message at hand.
    lives_wanted: Vec<Arc<str>>,
    /// Bounds the life-read batches in flight.
    life_reads: Arc<tokio::sync::Semaphore>,
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
            lives_wanted: Vec::new(),
            life_reads: Arc::new(tokio::sync::Semaphore::new(LIFE_READS_IN_FLIGHT)),
        }
    }

    /// Marks the API's view stale; the loop flushes it at most every [`VIEW_FLUSH`], so a burst
    /// of task events costs one sort, not one per event.
    fn publish_view(&mut self) {
        self.view_dirty = true;
    }

    /// Runs until stopped (or until every API handle is dropped, which ends it like a crash).
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
            self.send_life_reads();
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
