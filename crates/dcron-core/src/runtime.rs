//! The driver: the one place with `tokio::select!`.
//!
//! ```text
//!   API commands ─┐                               ┌─▶ registry calls (spawned; replies come
//!   watch events ─┤                               │    back as Internal messages with the
//!   poll / renew ─┼─▶ Driver ── lifecycle::step ──┤    epoch they were made for)
//!   timer (heap) ─┤   (state)   assignment diff   ├─▶ claim batches (one call per instant)
//!   replies ──────┘                               └─▶ handlers (TaskTracker, cancel token)
//! ```
//!
//! Decisions are pure ([`crate::lifecycle::step`], [`crate::tombstone`], the assigner); the
//! driver only feeds them inputs and executes their outputs. Per node it keeps a min-heap of
//! `(next instant, task)` over **owned** tasks only, sleeps until the earliest, claims every
//! fire due at that instant in one batch, and spawns the handlers of the fires it won.
//! Ownership changes are applied as a diff; a task gained is caught up over its misfire window.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use dcron_assign::{Member, Placement};
use futures::{FutureExt, StreamExt};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::clock::{until, Clock};
use crate::dcron::{Config, View};
use crate::error::{Error, Result};
use crate::event::{DcronEvent, FireInfo};
use crate::lifecycle::{self, Action, Input, State, Timing};
use crate::registry::{Lease, Registry, WatchStream};
use crate::schedule::Schedule;
use crate::task::{FireContext, Task};
use crate::types::{
    ClaimOutcome, FireKey, Listing, MisfirePolicy, Node, NodeEvent, NodeStatus, TaskMeta,
    TaskMetaEvent, Tombstone,
};

/// The most fires sent in one claim call (larger sets are split into several batches).
const MAX_BATCH: usize = 2048;

/// The longest the API's view (`all_tasks`, `my_running_tasks`) lags the driver.
const VIEW_FLUSH: Duration = Duration::from_millis(50);

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
}

/// Replies and timers fed back into the loop.
enum Internal {
    Registered(u64, Result<Lease>),
    Renewed(u64, Result<()>),
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
}

struct Entry {
    meta: Arc<TaskMeta>,
    schedule: Schedule,
    /// Static handler; dynamic tasks use the node's `task_run_fn`.
    task: Option<Arc<dyn Task>>,
    is_static: bool,
    owned: bool,
    /// Bumped whenever heap entries for this task must be ignored.
    generation: u64,
    /// A one-shot fire is in flight or done: schedule nothing more.
    spent: bool,
}

/// One fire on its way to the registry.
#[derive(Clone)]
struct PendingFire {
    key: FireKey,
    meta: Arc<TaskMeta>,
    task: Arc<dyn Task>,
    catch_up: bool,
    window: Duration,
}

pub(crate) struct Driver {
    node_id: Arc<str>,
    cfg: Arc<Config>,
    registry: Arc<dyn Registry>,
    clock: Arc<dyn Clock>,
    view: Arc<RwLock<View>>,
    events: broadcast::Sender<DcronEvent>,
    commands: mpsc::UnboundedReceiver<Command>,
    internal_tx: mpsc::UnboundedSender<Internal>,
    internal_rx: mpsc::UnboundedReceiver<Internal>,

    state: State,
    timing: Timing,
    lease: Option<(u64, Lease)>,
    record: Node,
    active_since: Option<DateTime<Utc>>,

    nodes: HashMap<String, Node>,
    members: Vec<Member>,
    placement: Option<Box<dyn Placement>>,
    tasks: HashMap<String, Entry>,
    tombstones: HashSet<String>,
    heap: BinaryHeap<Reverse<(i64, u64, String)>>,
    next_generation: u64,

    node_watch: Option<WatchStream<NodeEvent>>,
    task_watch: Option<WatchStream<TaskMetaEvent>>,
    watch_retry_pending: bool,

    handlers: TaskTracker,
    handler_cancel: CancellationToken,
    stopping: CancellationToken,
    stop_waiters: Vec<oneshot::Sender<()>>,
    view_dirty: bool,
    view_flushed: Instant,
}

impl Driver {
    pub(crate) fn new(
        node_id: Arc<str>,
        cfg: Arc<Config>,
        registry: Arc<dyn Registry>,
        clock: Arc<dyn Clock>,
        view: Arc<RwLock<View>>,
        events: broadcast::Sender<DcronEvent>,
        commands: mpsc::UnboundedReceiver<Command>,
    ) -> Self {
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
        Driver {
            node_id,
            cfg,
            registry,
            clock,
            view,
            events,
            commands,
            internal_tx,
            internal_rx,
            state: State::Idle,
            timing,
            lease: None,
            record,
            active_since: None,
            nodes: HashMap::new(),
            members: Vec::new(),
            placement: None,
            tasks: HashMap::new(),
            tombstones: HashSet::new(),
            heap: BinaryHeap::new(),
            next_generation: 1,
            node_watch: None,
            task_watch: None,
            watch_retry_pending: false,
            handlers: TaskTracker::new(),
            handler_cancel: CancellationToken::new(),
            stopping: CancellationToken::new(),
            stop_waiters: Vec::new(),
            view_dirty: false,
            view_flushed: Instant::now(),
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
        renew.tick().await;
        poll.tick().await;
        loop {
            if self.state == State::Stopped {
                break;
            }
            let deadline = self.next_deadline();
            let flush_at = self.view_dirty.then(|| self.view_flushed + VIEW_FLUSH);
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
                _ = renew.tick() => self.lifecycle(Input::RenewTick),
                _ = poll.tick() => if self.is_active() { self.list_all() },
                _ = sleep_until(deadline), if deadline.is_some() => self.fire_due(),
                _ = sleep_until(flush_at), if flush_at.is_some() => self.flush_view(),
            }
        }
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
            self.flush_view();
        }
        for action in actions {
            self.act(action);
        }
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::Register { epoch, delay } => {
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
                self.record.last_alive = self.clock.now();
                let record = self.record.clone();
                let registry = self.registry.clone();
                let tx = self.internal_tx.clone();
                tokio::spawn(async move {
                    let r = registry.update_node(&lease, &record).await;
                    let _ = tx.send(Internal::StatusWritten(epoch, r));
                });
            }
            Action::Renew { epoch } => {
                let Some(lease) = self.lease_for(epoch) else {
                    return;
                };
                let registry = self.registry.clone();
                let tx = self.internal_tx.clone();
                tokio::spawn(async move {
                    let r = registry.keep_alive(&lease).await;
                    let _ = tx.send(Internal::Renewed(epoch, r));
                });
            }
            Action::Activate => {
                self.active_since = Some(self.clock.now());
                self.open_watches();
                // Ownership is computed when the node list arrives, not before: owning
                // everything for a moment would trigger needless claims.
                self.list_all();
            }
            Action::Deactivate => {
                self.active_since = None;
                self.drop_ownership();
            }
            Action::Drain => {
                self.stopping.cancel();
                self.handlers.close();
                let handlers = self.handlers.clone();
                let cancel = self.handler_cancel.clone();
                let grace = self.cfg.grace_period;
                let tx = self.internal_tx.clone();
                tokio::spawn(async move {
                    if tokio::time::timeout(grace, handlers.wait()).await.is_err() {
                        cancel.cancel();
                        // Handlers that ignore cancellation are not waited for forever.
                        let _ = tokio::time::timeout(Duration::from_secs(5), handlers.wait()).await;
                    }
                    let _ = tx.send(Internal::Drained);
                });
            }
            Action::Unregister { epoch } => {
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
        tokio::spawn(async move {
            let r = registry.register(&record, ttl).await;
            let _ = tx.send(Internal::Registered(epoch, r));
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
            }
            Command::Resync => {
                if self.is_active() {
                    self.list_all();
                }
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
        match msg {
            Internal::Registered(epoch, Ok(lease)) => {
                if matches!(self.state, State::Starting { epoch: e } | State::Lost { epoch: e } if e == epoch)
                {
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
            Internal::Registered(epoch, Err(e)) => {
                tracing::warn!(node = %self.node_id, error = %e, "registration failed; retrying");
                self.lifecycle(Input::RegisterFailed { epoch });
            }
            Internal::RetryRegister(epoch) => {
                if matches!(self.state, State::Starting { epoch: e } | State::Lost { epoch: e } if e == epoch)
                {
                    self.register(epoch);
                }
            }
            Internal::Renewed(epoch, Ok(())) => self.lifecycle(Input::Renewed { epoch, now }),
            Internal::Renewed(epoch, Err(e)) | Internal::StatusWritten(epoch, Err(e)) => {
                let lease_lost = matches!(e, Error::LeaseLost { .. } | Error::NotFound { .. });
                tracing::warn!(node = %self.node_id, error = %e, lease_lost, "lease renewal failed");
                self.lifecycle(Input::RenewFailed {
                    epoch,
                    lease_lost,
                    now,
                });
            }
            Internal::StatusWritten(_, Ok(())) => {}
            Internal::Nodes(Ok(listing)) => {
                self.nodes = listing
                    .items
                    .into_iter()
                    .map(|n| (n.id.clone(), n))
                    .collect();
                self.rebalance();
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
                if done {
                    self.set_tombstone(name);
                } else if let Some(entry) = self.tasks.get_mut(&name) {
                    entry.spent = false;
                    if entry.owned {
                        let generation = entry.generation;
                        let after = self.clock.now();
                        if let Some(next) = entry.schedule.next_after(after) {
                            self.heap
                                .push(Reverse((next.timestamp_millis(), generation, name)));
                        }
                    }
                }
            }
            Internal::Drained => self.lifecycle(Input::Drained),
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
                self.nodes.insert(node.id.clone(), node);
            }
            NodeEvent::Delete { id } => {
                self.nodes.remove(&id);
            }
            NodeEvent::Resync => {
                self.list_all();
                return;
            }
        }
        self.rebalance();
    }

    fn task_event(&mut self, ev: TaskMetaEvent) {
        match ev {
            TaskMetaEvent::Put(meta) => self.upsert_dynamic(Arc::new(meta)),
            TaskMetaEvent::Removed { name } => self.remove_dynamic(&name),
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
        let cleared: Vec<String> = self.tombstones.difference(&new_tombs).cloned().collect();
        for name in new_tombs
            .difference(&self.tombstones)
            .cloned()
            .collect::<Vec<_>>()
        {
            self.set_tombstone(name);
        }
        for name in cleared {
            self.clear_tombstone(&name);
        }
        let listed: HashSet<String> = tasks.items.iter().map(|m| m.name.clone()).collect();
        let gone: Vec<String> = self
            .tasks
            .iter()
            .filter(|(name, e)| !e.is_static && !listed.contains(*name))
            .map(|(name, _)| name.clone())
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
        if let Err(e) = crate::types::validate_task_name(&meta.name) {
            tracing::warn!(error = %e, "dynamic task with an invalid name skipped");
            return;
        }
        match Schedule::parse(
            &meta.cron_format,
            meta.time_zone.as_deref(),
            self.cfg.seconds,
        ) {
            Ok(schedule) => {
                let name = meta.name.clone();
                self.upsert(name, meta, schedule, None, false);
            }
            Err(e) => {
                tracing::warn!(task = %meta.name, error = %e, "dynamic task with an invalid schedule skipped");
                (self.cfg.error_handler)(&meta, &e);
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
        let generation = self.bump();
        let was_owned = match self.tasks.get(&name) {
            Some(e) => e.owned,
            None => false,
        };
        let new_name = !self.tasks.contains_key(&name);
        self.tasks.insert(
            name.clone(),
            Entry {
                meta,
                schedule,
                task,
                is_static,
                owned: false,
                generation,
                spent: false,
            },
        );
        if new_name && self.cfg.assigner.depends_on_task_list() {
            self.rebalance_all();
        } else {
            self.place(&name, was_owned);
        }
        self.publish_view();
    }

    fn remove_dynamic(&mut self, name: &str) {
        let is_dynamic = self.tasks.get(name).is_some_and(|e| !e.is_static);
        if is_dynamic {
            self.tasks.remove(name);
            if self.cfg.assigner.depends_on_task_list() {
                self.rebalance_all();
            }
            self.publish_view();
        }
    }

    fn set_tombstone(&mut self, name: String) {
        if let Some(e) = self.tasks.get_mut(&name) {
            e.owned = false;
            e.generation = self.next_generation;
            self.next_generation += 1;
        }
        self.tombstones.insert(name);
        self.publish_view();
    }

    fn clear_tombstone(&mut self, name: &str) {
        if self.tombstones.remove(name) {
            if self.tasks.contains_key(name) {
                self.place(name, false);
            }
            self.publish_view();
        }
    }

    fn bump(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }

    // ----- assignment -----

    fn rebalance(&mut self) {
        let mut members: Vec<Member> = self
            .nodes
            .values()
            .filter(|n| n.status == NodeStatus::Working && *n.id != *self.node_id)
            .map(|n| Member::new(n.id.clone(), n.weight))
            .collect();
        if self.is_active() {
            members.push(Member::new(self.node_id.to_string(), self.cfg.weight));
        }
        members.sort();
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
        let names: Vec<String> = self.tasks.keys().cloned().collect();
        let before = self.tasks.values().filter(|e| e.owned).count();
        let mut gained = Vec::new();
        let mut lost = 0usize;
        let sorted = self.sorted_names();
        for name in names {
            let should = self.should_own(&name, &sorted);
            let Some(entry) = self.tasks.get_mut(&name) else {
                continue;
            };
            if should && !entry.owned {
                gained.push(name);
            } else if !should && entry.owned {
                entry.owned = false;
                self.next_generation += 1;
                entry.generation = self.next_generation;
                lost += 1;
            }
        }
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
        if !self.cfg.assigner.depends_on_task_list() {
            return Vec::new();
        }
        let mut names: Vec<String> = self
            .tasks
            .keys()
            .filter(|n| !self.tombstones.contains(*n))
            .cloned()
            .collect();
        names.sort();
        names
    }

    fn should_own(&self, name: &str, sorted: &[String]) -> bool {
        if !self.is_active() || self.tombstones.contains(name) {
            return false;
        }
        if self.tasks.get(name).is_some_and(|e| e.spent) {
            return self.tasks.get(name).is_some_and(|e| e.owned);
        }
        let Some(placement) = &self.placement else {
            return false;
        };
        let refs: Vec<&str> = sorted.iter().map(String::as_str).collect();
        placement.owner(name, &refs) == Some(&*self.node_id)
    }

    /// Places one task after it was added or changed.
    fn place(&mut self, name: &str, was_owned: bool) {
        let sorted = self.sorted_names();
        let should = self.should_own(name, &sorted);
        if should {
            if was_owned {
                // Schedule changed on an owned task: no catch-up, just the next occurrence.
                if let Some(e) = self.tasks.get_mut(name) {
                    e.owned = true;
                }
                self.schedule_next(name, self.clock.now());
            } else {
                self.gain(vec![name.to_string()]);
            }
        }
    }

    fn drop_ownership(&mut self) {
        for e in self.tasks.values_mut() {
            e.owned = false;
        }
        self.next_generation += 1;
        let floor = self.next_generation;
        for e in self.tasks.values_mut() {
            e.generation = e.generation.max(floor);
        }
        self.heap.clear();
        self.members.clear();
        self.placement = None;
        self.publish_view();
    }

    /// Takes tasks over: catch up what nobody claimed in their misfire window, then schedule.
    fn gain(&mut self, names: Vec<String>) {
        if names.is_empty() {
            return;
        }
        let now = self.clock.now();
        let active_since = self.active_since.unwrap_or(now);
        let skew = chrono::Duration::from_std(self.cfg.max_clock_skew).unwrap_or_default();
        let mut catch_up = Vec::new();
        for name in names {
            let Some(entry) = self.tasks.get_mut(&name) else {
                continue;
            };
            entry.owned = true;
            let policy = entry.meta.misfire.unwrap_or(self.cfg.misfire);
            let window = window_of(&entry.meta, self.cfg.misfire_window);
            let cw = chrono::Duration::from_std(window).unwrap_or_default();
            let mut lower = (now - cw).max(active_since - skew);
            if let Some(created) = entry.meta.created_at {
                lower = lower.max(created);
            }
            let limit = match policy {
                MisfirePolicy::Skip => 0,
                MisfirePolicy::FireOnce => 1,
                MisfirePolicy::FireAll { max } => max as usize,
            };
            if limit > 0 && !entry.spent {
                let missed: Vec<DateTime<Utc>> = if limit == 1 {
                    entry
                        .schedule
                        .latest_at_or_before(now)
                        .filter(|t| *t > lower)
                        .into_iter()
                        .collect()
                } else {
                    let mut all = entry.schedule.occurrences_in(lower, now, 100_000);
                    if all.len() > limit {
                        all.drain(..all.len() - limit);
                    }
                    all
                };
                let task = entry.task.clone().or_else(|| self.cfg.task_run_fn.clone());
                if let Some(task) = task {
                    for instant in missed {
                        catch_up.push(PendingFire {
                            key: FireKey::new(name.clone(), instant),
                            meta: entry.meta.clone(),
                            task: task.clone(),
                            catch_up: true,
                            window,
                        });
                    }
                }
            }
            self.schedule_next(&name, now);
        }
        if !catch_up.is_empty() {
            for chunk in catch_up.chunks(MAX_BATCH) {
                self.claim_batch(chunk.to_vec());
            }
        }
    }

    fn schedule_next(&mut self, name: &str, after: DateTime<Utc>) {
        let Some(entry) = self.tasks.get(name) else {
            return;
        };
        if !entry.owned || entry.spent {
            return;
        }
        if let Some(next) = entry.schedule.next_after(after) {
            self.heap.push(Reverse((
                next.timestamp_millis(),
                entry.generation,
                name.to_string(),
            )));
        }
    }

    // ----- firing -----

    fn next_deadline(&mut self) -> Option<Instant> {
        // Drop stale heap tops so the timer targets a live entry.
        while let Some(Reverse((_, generation, name))) = self.heap.peek() {
            let live = self
                .tasks
                .get(name)
                .is_some_and(|e| e.owned && e.generation == *generation && !e.spent);
            if live {
                break;
            }
            self.heap.pop();
        }
        let Reverse((ms, _, _)) = self.heap.peek()?;
        let target = DateTime::<Utc>::from_timestamp_millis(*ms)?;
        Some(self.clock.monotonic() + until(self.clock.now(), target))
    }

    fn fire_due(&mut self) {
        if !self.is_active() {
            return;
        }
        let now = self.clock.now();
        let now_ms = now.timestamp_millis();
        let mut batch = Vec::new();
        while let Some(Reverse((ms, generation, _))) = self.heap.peek() {
            if *ms > now_ms {
                break;
            }
            let (ms, generation) = (*ms, *generation);
            let Some(Reverse((_, _, name))) = self.heap.pop() else {
                break;
            };
            let Some(entry) = self.tasks.get_mut(&name) else {
                continue;
            };
            if !entry.owned || entry.generation != generation || entry.spent {
                continue;
            }
            let Some(instant) = DateTime::<Utc>::from_timestamp_millis(ms) else {
                continue;
            };
            let window = window_of(&entry.meta, self.cfg.misfire_window);
            let late = (now - instant).to_std().unwrap_or_default();
            let task = entry.task.clone().or_else(|| self.cfg.task_run_fn.clone());
            if entry.meta.one_shot {
                entry.spent = true;
            }
            let meta = entry.meta.clone();
            let one_shot = meta.one_shot;
            if late <= window {
                if let Some(task) = task {
                    batch.push(PendingFire {
                        key: FireKey::new(name.clone(), instant),
                        meta,
                        task,
                        catch_up: false,
                        window,
                    });
                }
            } else {
                tracing::warn!(task = %name, scheduled = %instant, "fire later than its misfire window: skipped");
            }
            if !one_shot {
                self.schedule_next(&name, instant);
            }
        }
        if !batch.is_empty() {
            for chunk in batch.chunks(MAX_BATCH) {
                self.claim_batch(chunk.to_vec());
            }
        }
    }

    /// Claims a batch in one registry call (retried while the window is open), then runs the
    /// fires won. Runs in its own task so the loop keeps its timers.
    fn claim_batch(&self, batch: Vec<PendingFire>) {
        let registry = self.registry.clone();
        let clock = self.clock.clone();
        let node_id = self.node_id.clone();
        let events = self.events.clone();
        let handlers = self.handlers.clone();
        let cancel = self.handler_cancel.clone();
        let stopping = self.stopping.clone();
        let error_handler = self.cfg.error_handler.clone();
        let internal = self.internal_tx.clone();
        let backoff = self.cfg.retry_backoff.max(Duration::from_millis(50));
        let extra = self.cfg.max_clock_skew + self.cfg.claim_margin;
        let retention = batch.iter().map(|f| f.window).max().unwrap_or_default() + extra;
        // Tracked with the handlers: a stop waits for claims in flight, and a fire that was
        // won still runs (nobody else can run it once it is claimed).
        let tracker = self.handlers.clone();
        tracker.spawn(async move {
            let keys: Vec<FireKey> = batch.iter().map(|f| f.key.clone()).collect();
            let mut delay = backoff;
            let outcomes = loop {
                if stopping.is_cancelled() {
                    return;
                }
                match registry.claim(&keys, &node_id, retention).await {
                    Ok(o) if o.len() == keys.len() => break o,
                    Ok(o) => {
                        tracing::error!(expected = keys.len(), got = o.len(), "registry answered a claim batch with the wrong number of outcomes");
                        return;
                    }
                    Err(e) => {
                        let now = clock.now();
                        let open = batch.iter().any(|f| {
                            let w = chrono::Duration::from_std(f.window).unwrap_or_default();
                            f.key.instant + w > now
                        });
                        if !e.is_retryable() || !open {
                            tracing::error!(error = %e, fires = keys.len(), "claim failed; fires missed");
                            for f in &batch {
                                let _ = events.send(DcronEvent::Missed(info(f, &node_id)));
                            }
                            metrics::counter!("dcron_fires_missed_total").increment(keys.len() as u64);
                            return;
                        }
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(2));
                    }
                }
            };
            for (fire, outcome) in batch.into_iter().zip(outcomes) {
                let fi = info(&fire, &node_id);
                match outcome {
                    ClaimOutcome::Won { token } => {
                        metrics::counter!("dcron_fires_claimed_total").increment(1);
                        let _ = events.send(DcronEvent::Claimed(fi.clone()));
                        let ctx = FireContext {
                            meta: fire.meta.clone(),
                            scheduled: fire.key.instant,
                            token,
                            node_id: node_id.clone(),
                            catch_up: fire.catch_up,
                            cancel: cancel.child_token(),
                        };
                        let run = run_fire(RunFire {
                            ctx,
                            task: fire.task,
                            registry: registry.clone(),
                            clock: clock.clone(),
                            events: events.clone(),
                            error_handler: error_handler.clone(),
                            internal: internal.clone(),
                            info: fi,
                        });
                        handlers.spawn(run);
                    }
                    ClaimOutcome::Lost => {
                        metrics::counter!("dcron_fires_lost_total").increment(1);
                        let _ = events.send(DcronEvent::LostClaim(fi));
                    }
                    ClaimOutcome::Tombstoned => {
                        metrics::counter!("dcron_fires_skipped_total", "reason" => "tombstoned")
                            .increment(1);
                        let _ = events.send(DcronEvent::SkippedTombstoned(fi));
                        let _ = internal.send(Internal::OneShotEnded {
                            name: fire.key.task.clone(),
                            done: true,
                        });
                    }
                }
            }
        });
    }

    /// Publishes the API's view now (sorting every name: O(n log n)).
    fn flush_view(&mut self) {
        self.view_dirty = false;
        self.view_flushed = Instant::now();
        let mut owned: Vec<String> = self
            .tasks
            .iter()
            .filter(|(_, e)| e.owned)
            .map(|(n, _)| n.clone())
            .collect();
        owned.sort();
        let mut all: Vec<String> = self
            .tasks
            .keys()
            .filter(|n| !self.tombstones.contains(*n))
            .cloned()
            .collect();
        all.sort();
        if let Ok(mut v) = self.view.write() {
            v.owned = owned;
            v.all = all;
            v.state = state_name(&self.state);
        }
    }
}

fn window_of(meta: &TaskMeta, default: Duration) -> Duration {
    meta.misfire_window_ms
        .map(Duration::from_millis)
        .unwrap_or(default)
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

fn info(fire: &PendingFire, node: &str) -> FireInfo {
    FireInfo {
        task: fire.key.task.clone(),
        scheduled: fire.key.instant,
        node: node.to_string(),
        catch_up: fire.catch_up,
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

struct RunFire {
    ctx: FireContext,
    task: Arc<dyn Task>,
    registry: Arc<dyn Registry>,
    clock: Arc<dyn Clock>,
    events: broadcast::Sender<DcronEvent>,
    error_handler: crate::task::ErrorHandler,
    internal: mpsc::UnboundedSender<Internal>,
    info: FireInfo,
}

/// Runs one won fire: the handler (panics caught), the error handler, one-shot bookkeeping.
async fn run_fire(f: RunFire) {
    let meta = f.ctx.meta.clone();
    let started = f.clock.now();
    let lateness = (started - f.ctx.scheduled).num_milliseconds();
    let span = tracing::info_span!("dcron.fire", task = %meta.name, scheduled = %f.ctx.scheduled, node = %f.ctx.node_id, token = f.ctx.token, lateness_ms = lateness, catch_up = f.ctx.catch_up);
    async move {
        let _ = f.events.send(DcronEvent::Started(f.info.clone()));
        metrics::histogram!("dcron_fire_lateness_seconds").record(lateness as f64 / 1000.0);
        let t0 = Instant::now();
        let result = AssertUnwindSafe(f.task.run(f.ctx.clone()))
            .catch_unwind()
            .await;
        metrics::histogram!("dcron_fire_duration_seconds").record(t0.elapsed().as_secs_f64());
        let error = match result {
            Ok(Ok(())) => None,
            Ok(Err(source)) => Some(Error::Task {
                task: meta.name.clone(),
                source,
            }),
            Err(panic) => Some(Error::Panicked {
                task: meta.name.clone(),
                message: panic_message(&panic),
            }),
        };
        match error {
            None => {
                tracing::debug!("fire succeeded");
                metrics::counter!("dcron_fires_executed_total", "result" => "ok").increment(1);
                let _ = f.events.send(DcronEvent::Succeeded(f.info.clone()));
                if meta.one_shot {
                    let r = if meta.executed_and_cleanup {
                        f.registry.cleanup_task(&meta.name).await
                    } else {
                        f.registry.mark_deleted(&meta.name, f.clock.now()).await
                    };
                    if let Err(e) = &r {
                        tracing::error!(task = %meta.name, error = %e, "one-shot bookkeeping failed");
                        (f.error_handler)(&meta, e);
                    }
                    let _ = f.internal.send(Internal::OneShotEnded {
                        name: meta.name.clone(),
                        done: r.is_ok(),
                    });
                }
            }
            Some(err) => {
                tracing::warn!(error = %err, "fire failed");
                metrics::counter!("dcron_fires_executed_total", "result" => "error").increment(1);
                let _ = f.events.send(DcronEvent::Failed {
                    fire: f.info.clone(),
                    error: err.to_string(),
                });
                (f.error_handler)(&meta, &err);
                if meta.one_shot {
                    let _ = f.internal.send(Internal::OneShotEnded {
                        name: meta.name.clone(),
                        done: false,
                    });
                }
            }
        }
    }
    .instrument(span)
    .await;
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}
