//! `MemoryRegistry`: the in-process registry, the embedded default and the reference
//! implementation of the [`Registry`] contract.
//!
//! # How it works
//!
//! One store (`Arc<Shared>`) holds every namespace behind a single `std::sync::Mutex`. Each
//! method takes the lock once, decides and applies everything under it, and releases it before
//! returning: no lock is ever held across an `.await` (the methods have none while locked).
//!
//! - **Tasks and tombstones** are decided by [`crate::backend::tombstone::decide`], the same pure rules
//!   every backend implements, so the reference and the rules table cannot diverge.
//! - **Leases** are measured on tokio's monotonic clock ([`tokio::time::Instant`]), so tests
//!   under `tokio::time::pause()` run on virtual time. All lease deadlines sit in one ordered
//!   index; every call first expires the leases that are due (cheap: it looks at the earliest
//!   deadline only), and a reaper task, spawned on first need and holding only a `Weak` to the
//!   store, sleeps until the earliest deadline so watchers get [`NodeEvent::Delete`] within the
//!   TTL even when nobody calls the registry. The reaper ends when the last handle to the store
//!   is dropped.
//! - **Claims** are kept per task (so [`Registry::list_claims`] and [`Registry::cleanup_task`]
//!   touch one task only) with a min-heap of retention deadlines purged incrementally: a claim
//!   batch costs `O(batch · log n)`, never a scan of all claims.
//! - **Watches** use [`crate::watch_channel`] with a buffer of [`WATCH_BUFFER`] events per
//!   watcher. Events are queued under the store lock, so each watcher sees them in the order the
//!   changes were applied; a watcher that does not read never blocks a writer (its overflow
//!   becomes one `Resync`), and watchers whose stream was dropped are pruned on the next event.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::backend::claim::{decide_claim, ClaimDecision, Holder};
use crate::backend::tombstone::{decide, Effects, NameState, Request};
use crate::backend::watch::{watch_channel, WatchSender};
use crate::backend::{check_claims, check_record_key, check_records, check_slot, check_value_size};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::registry::{Capabilities, Lease, PutMode, RecordKind, Registry, WatchStream};
use crate::types::{
    validate_task_name, Claim, ClaimOutcome, ClaimRequest, Claimant, CorruptEntry, FireKey, Life,
    Listing, Node, NodeEvent, ResyncEvent, SlotOutcome, TaskMeta, TaskMetaEvent, Tombstone,
};

/// The backend name reported by [`MemoryRegistry`].
const BACKEND: &str = "memory";

/// The namespace of [`MemoryRegistry::new`].
pub const DEFAULT_NAMESPACE: &str = "default";

/// How many events each watch stream buffers before it overflows into one `Resync`.
pub const WATCH_BUFFER: usize = 1024;

/// The largest encoded task record [`MemoryRegistry`] stores: 1 MiB, the trait's default, so
/// that a record accepted here fits the common limit of the networked backends. A 1 MiB payload
/// is therefore refused (its encoded record is larger).
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;

/// Durations beyond this are treated as this (about a century), so that `now + ttl` never
/// overflows the monotonic clock.
const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The in-process registry: the embedded default and the reference implementation of
/// [`Registry`].
///
/// It implements every rule of the [`Registry`] contract for the nodes of one process: leases
/// that expire on tokio's clock (virtual time under `tokio::time::pause()`), watches that never
/// block a writer, atomic batch claims with fencing tokens and retention, tombstones decided by
/// [`crate::backend::tombstone::decide`], and fully isolated namespaces. Every other backend is measured
/// against it by the conformance suite of `dcron-testkit`, which also runs on it.
///
/// Clones share the store and the namespace; [`MemoryRegistry::with_namespace`] gives a handle on
/// the same store under another namespace, which sees nothing of the first. Nothing is persisted:
/// the data lives as long as some handle to the store does.
///
/// Choices where the contract leaves room, recorded here:
/// - records of at most [`MAX_VALUE_BYTES`] (1 MiB) encoded bytes are stored;
/// - a zero `ttl` (register) or zero `retention` (claim) is refused with
///   [`Error::InvalidArgument`]; durations beyond a century count as a century;
/// - [`Registry::put_task`] and [`Registry::mark_deleted`] check the name with
///   [`crate::validate_task_name`];
/// - [`Registry::cleanup_all`] sends one event per removed record and tombstone, or a single
///   `Resync` to each watcher when there are more than [`WATCH_BUFFER`] of them;
/// - corrupt values (see [`MemoryRegistry::inject_raw_task`]) are reported by `list_tasks` and
///   `get_task`; their arrival is announced to task watchers as a `Resync`.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use chrono::Utc;
/// use dcron_core::memory::MemoryRegistry;
/// use dcron_core::{ClaimOutcome, ClaimRequest, Claimant, FireKey, Node, PutMode, Registry, TaskMeta};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> dcron_core::Result<()> {
/// let registry = MemoryRegistry::new();
/// let lease = registry
///     .register(&Node::new("node-a", Utc::now()), Duration::from_secs(10))
///     .await?;
/// assert_eq!(registry.list_nodes().await?.items.len(), 1);
///
/// let mut meta = TaskMeta::new("report", "0 * * * *");
/// meta.created_at = Some(Utc::now());
/// registry.put_task(&meta, PutMode::CreateOnly).await?;
/// // The record's creation started the task's life.
/// let life = registry.ensure_lives(&[("report".into(), Utc::now())]).await?[0];
///
/// // Two nodes claim the same fire: exactly one wins.
/// let now = Utc::now();
/// let fire = ClaimRequest::new(
///     FireKey::new("report", now),
///     life.generation,
///     now + chrono::Duration::seconds(60),
///     Duration::from_secs(120),
/// );
/// let a = registry.claim(&Claimant::new("node-a", 1), &[fire.clone()]).await?;
/// let b = registry.claim(&Claimant::new("node-b", 1), &[fire.clone()]).await?;
/// assert!(a[0].is_won());
/// assert_eq!(b[0], ClaimOutcome::Lost { holder: Some("node-a".into()) });
/// // A retry by the winner (its first reply lost) answers the same claim.
/// let again = registry.claim(&Claimant::new("node-a", 1), &[fire]).await?;
/// assert_eq!(again[0], ClaimOutcome::WonEarlier { token: a[0].token().unwrap_or(0) });
///
/// registry.unregister(&lease).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct MemoryRegistry {
    shared: Arc<Shared>,
    namespace: Arc<str>,
    /// The registry's own wall clock, when it has one: late claims are refused by it.
    clock: Option<Arc<dyn Clock>>,
}

impl std::fmt::Debug for MemoryRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryRegistry")
            .field("namespace", &self.namespace)
            .field("store", &self.shared.tag)
            .finish()
    }
}

impl Default for MemoryRegistry {
    fn default() -> Self {
        MemoryRegistry::new()
    }
}

impl MemoryRegistry {
    /// A registry on a fresh, empty store, in the namespace `"default"`.
    pub fn new() -> Self {
        MemoryRegistry {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                wake: Arc::new(Notify::new()),
                reaper_running: Arc::new(AtomicBool::new(false)),
                tag: uuid::Uuid::new_v4().simple().to_string()[..12].to_string(),
            }),
            namespace: Arc::from(DEFAULT_NAMESPACE),
            clock: None,
        }
    }

    /// This handle with a wall clock of its own, like a server's: claims whose deadline has
    /// passed by `clock` are refused ([`ClaimOutcome::Late`]) and
    /// [`Capabilities::clock`] is declared. Without one (the default) the nodes check
    /// deadlines themselves.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> MemoryRegistry {
        self.clock = Some(clock);
        self
    }

    /// A handle on the same store under namespace `namespace`: it sees none of the nodes,
    /// tasks, tombstones, claims or events of any other namespace.
    pub fn with_namespace(&self, namespace: &str) -> MemoryRegistry {
        MemoryRegistry {
            shared: self.shared.clone(),
            namespace: Arc::from(namespace),
            clock: self.clock.clone(),
        }
    }

    /// The namespace this handle works in.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// For tests and fault injection: stores `bytes` as the task record of `name`, as if another
    /// writer had put them there.
    ///
    /// Bytes that decode become an ordinary record (watchers get a `Put`). Bytes that do not
    /// decode, or more than [`MAX_VALUE_BYTES`] of them (refused unread), are kept as a corrupt record: [`Registry::list_tasks`] reports it in
    /// [`Listing::corrupt`], [`Registry::get_task`] answers [`Error::Corrupt`], a create-only put
    /// of the name finds it existing, and every other name is unaffected; task watchers get a
    /// `Resync`.
    pub fn inject_raw_task(&self, name: &str, bytes: Vec<u8>) {
        let now = Instant::now();
        let mut state = self.shared.lock();
        state.expire_due(now);
        let ns = state.namespace(&self.namespace);
        match crate::backend::check_stored_size(name, bytes.len(), MAX_VALUE_BYTES)
            .and_then(|()| TaskMeta::decode(name, &bytes))
        {
            Ok(meta) => {
                broadcast(&mut ns.task_watchers, TaskMetaEvent::Put(meta.clone()));
                ns.tasks
                    .insert(name.to_string(), StoredTask::Good(Box::new(meta)));
            }
            Err(err) => {
                let reason = match err {
                    Error::Corrupt { reason, .. } => reason,
                    other => other.to_string(),
                };
                ns.tasks
                    .insert(name.to_string(), StoredTask::Corrupt { reason });
                broadcast(&mut ns.task_watchers, TaskMetaEvent::Resync);
            }
        }
    }

    /// For tests and fault injection: ends the lease of `node_id` in this namespace now, as if
    /// its TTL had run out (the record disappears and node watchers get a `Delete`). Returns
    /// whether the node was registered.
    pub fn expire_lease(&self, node_id: &str) -> bool {
        let now = Instant::now();
        let mut state = self.shared.lock();
        state.expire_due(now);
        let lease_id = match state
            .namespaces
            .get(&*self.namespace)
            .and_then(|ns| ns.nodes.get(node_id))
        {
            Some(entry) => entry.lease_id,
            None => return false,
        };
        state.end_lease(lease_id);
        true
    }

    /// Starts the lease reaper on the current tokio runtime unless one is running. Outside a
    /// runtime nothing is spawned: expiry then happens lazily, on the next call.
    fn ensure_reaper(&self) {
        if self.shared.reaper_running.swap(true, Ordering::AcqRel) {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                // The guard is built before spawning so that it also resets the flag if the
                // runtime drops the task before its first poll.
                let guard = ReaperGuard(self.shared.reaper_running.clone());
                handle.spawn(reap(
                    Arc::downgrade(&self.shared),
                    self.shared.wake.clone(),
                    guard,
                ));
            }
            Err(_) => self.shared.reaper_running.store(false, Ordering::Release),
        }
    }

    fn parse_lease_id(&self, lease: &Lease) -> Option<u64> {
        let (tag, n) = lease.id.split_once(':')?;
        if tag != self.shared.tag {
            return None;
        }
        n.parse().ok()
    }

    /// Checks that `lease` is the live, current lease of its node in this namespace.
    fn live_lease(&self, state: &State, lease: &Lease) -> Result<u64> {
        let lost = || Error::LeaseLost {
            node: lease.node_id.clone(),
        };
        let id = self.parse_lease_id(lease).ok_or_else(lost)?;
        match state.leases.get(&id) {
            Some(entry)
                if *entry.namespace == *self.namespace && entry.node_id == lease.node_id =>
            {
                Ok(id)
            }
            _ => Err(lost()),
        }
    }

    /// Locks the store, expires what is due and hands over this handle's namespace.
    fn with_namespace_state<R>(&self, f: impl FnOnce(&mut Namespace, Instant) -> R) -> R {
        let now = Instant::now();
        let mut state = self.shared.lock();
        state.expire_due(now);
        f(state.namespace(&self.namespace), now)
    }
}

/// The store shared by every handle and namespace.
struct Shared {
    state: Mutex<State>,
    /// Wakes the reaper when an earlier deadline may exist, or when the store is dropped.
    wake: Arc<Notify>,
    reaper_running: Arc<AtomicBool>,
    /// Distinguishes this store's lease ids from another store's.
    tag: String,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; should it ever, the data is still consistent
        // at the granularity of one call, so keep serving rather than propagate the poison.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Lets the reaper notice that the store is gone and end.
        self.wake.notify_one();
    }
}

/// Resets the "reaper running" flag when the reaper task ends or is dropped by its runtime.
struct ReaperGuard(Arc<AtomicBool>);

impl Drop for ReaperGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Expires leases as their deadlines pass, until the store is dropped.
async fn reap(store: Weak<Shared>, wake: Arc<Notify>, _guard: ReaperGuard) {
    loop {
        let next = {
            let Some(shared) = store.upgrade() else {
                return;
            };
            let mut state = shared.lock();
            state.expire_due(Instant::now());
            state.deadlines.first().map(|(deadline, _)| *deadline)
        };
        match next {
            Some(deadline) => {
                // Either the deadline passes or something changed: look again in both cases.
                let _ = tokio::time::timeout_at(deadline, wake.notified()).await;
            }
            None => wake.notified().await,
        }
    }
}

/// Everything in the store.
#[derive(Default)]
struct State {
    namespaces: HashMap<Arc<str>, Namespace>,
    /// Every live lease of every namespace, by id.
    leases: HashMap<u64, LeaseEntry>,
    /// `(deadline, lease id)` of every live lease, earliest first.
    deadlines: BTreeSet<(Instant, u64)>,
    next_lease: u64,
}

struct LeaseEntry {
    namespace: Arc<str>,
    node_id: String,
    ttl: Duration,
    deadline: Instant,
}

impl State {
    fn namespace(&mut self, name: &Arc<str>) -> &mut Namespace {
        self.namespaces.entry(name.clone()).or_default()
    }

    /// Ends every lease whose deadline is at or before `now`.
    fn expire_due(&mut self, now: Instant) {
        while let Some(&(deadline, id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.end_lease(id);
        }
    }

    /// Removes a lease and the node record attached to it, telling the node watchers.
    fn end_lease(&mut self, id: u64) {
        let Some(entry) = self.leases.remove(&id) else {
            return;
        };
        self.deadlines.remove(&(entry.deadline, id));
        if let Some(ns) = self.namespaces.get_mut(&entry.namespace) {
            let attached = ns
                .nodes
                .get(&entry.node_id)
                .is_some_and(|node| node.lease_id == id);
            if attached {
                ns.nodes.remove(&entry.node_id);
                broadcast(
                    &mut ns.node_watchers,
                    NodeEvent::Delete { id: entry.node_id },
                );
            }
        }
    }
}

/// One namespace: what a [`MemoryRegistry`] handle sees.
#[derive(Default)]
struct Namespace {
    nodes: HashMap<String, NodeEntry>,
    tasks: HashMap<String, StoredTask>,
    tombstones: HashMap<String, Tombstone>,
    /// The current life of each name that has one.
    lives: HashMap<String, Life>,
    /// Retained claims by task, then by the fire's instant in milliseconds.
    claims: HashMap<Arc<str>, TaskClaims>,
    /// `(expiry, token, task, instant)` of each claim, earliest first; entries whose claim was
    /// already removed (cleanup, force) are skipped when they come up.
    claim_expiry: BinaryHeap<Reverse<ClaimExpiry>>,
    /// The last fencing token or generation handed out: one sequence for the namespace, never
    /// reset, so tokens and generations increase per name across cleanups and new lives.
    last_token: u64,
    /// Records by kind and key.
    records: HashMap<(RecordKind, String), Vec<u8>>,
    /// Running slots by task name: the holder's lease id and fire.
    slots: HashMap<String, (u64, FireKey)>,
    node_watchers: Vec<WatchSender<NodeEvent>>,
    task_watchers: Vec<WatchSender<TaskMetaEvent>>,
}

/// `(expiry, token, task, instant in milliseconds)` of one retained claim.
type ClaimExpiry = (Instant, u64, Arc<str>, i64);

/// The retained claims of one task. The name and the node ids are shared, so a claim costs no
/// allocation of its own beyond its map slot.
struct TaskClaims {
    name: Arc<str>,
    by_instant: HashMap<i64, StoredClaim>,
}

struct StoredClaim {
    node: Arc<str>,
    epoch: u64,
    generation: u64,
    token: u64,
}

struct NodeEntry {
    node: Node,
    lease_id: u64,
}

enum StoredTask {
    Good(Box<TaskMeta>),
    /// A value that does not decode, with the reason.
    Corrupt {
        reason: String,
    },
}

impl Namespace {
    /// Removes the claims whose retention ended at or before `now`.
    fn purge_claims(&mut self, now: Instant) {
        while let Some(Reverse((expires, token, _, _))) = self.claim_expiry.peek() {
            if *expires > now {
                break;
            }
            let token = *token;
            let Some(Reverse((_, _, task, millis))) = self.claim_expiry.pop() else {
                break;
            };
            if let Some(per_task) = self.claims.get_mut(&task) {
                if per_task
                    .by_instant
                    .get(&millis)
                    .is_some_and(|c| c.token == token)
                {
                    per_task.by_instant.remove(&millis);
                    if per_task.by_instant.is_empty() {
                        self.claims.remove(&task);
                    }
                }
            }
        }
    }

    /// The next number of the namespace's sequence.
    fn next_number(&mut self) -> u64 {
        self.last_token += 1;
        self.last_token
    }

    /// Applies the effects decided for one name, telling the task watchers.
    fn apply(&mut self, name: &str, effects: Effects) {
        if effects.remove_life {
            self.lives.remove(name);
        }
        if let Some(live_since) = effects.start_life {
            let generation = self.next_number();
            self.lives
                .insert(name.to_string(), Life::new(generation, live_since));
        }
        // Removal before the tombstone is cleared, and the new record before it is cleared,
        // so a watcher never sees the old record live again in between.
        if effects.remove_meta && self.tasks.remove(name).is_some() {
            broadcast(
                &mut self.task_watchers,
                TaskMetaEvent::Removed {
                    name: name.to_string(),
                },
            );
        }
        if let Some(meta) = effects.write_meta {
            broadcast(&mut self.task_watchers, TaskMetaEvent::Put(meta.clone()));
            self.tasks
                .insert(name.to_string(), StoredTask::Good(Box::new(meta)));
        }
        if effects.clear_tombstone && self.tombstones.remove(name).is_some() {
            broadcast(
                &mut self.task_watchers,
                TaskMetaEvent::TombstoneCleared {
                    name: name.to_string(),
                },
            );
        }
        if let Some(tombstone) = effects.set_tombstone {
            broadcast(
                &mut self.task_watchers,
                TaskMetaEvent::Tombstoned(tombstone.clone()),
            );
            self.tombstones.insert(name.to_string(), tombstone);
        }
    }

    /// Decides `request` for `name` with the pure rules and applies the outcome.
    fn decide_and_apply(&mut self, name: &str, request: Request<'_>) -> Result<()> {
        self.decide_and_apply_with(name, request).map(|_| ())
    }

    /// [`Namespace::decide_and_apply`], answering the name's life afterwards.
    fn decide_and_apply_with(&mut self, name: &str, request: Request<'_>) -> Result<Option<Life>> {
        // A corrupt record still exists for the rules (create-only must refuse it).
        let placeholder;
        let meta = match self.tasks.get(name) {
            Some(StoredTask::Good(meta)) => Some(&**meta),
            Some(StoredTask::Corrupt { .. }) => {
                placeholder = TaskMeta::new(name, "");
                Some(&placeholder)
            }
            None => None,
        };
        let state = NameState {
            meta,
            tombstone: self.tombstones.get(name),
        };
        let effects = decide(name, state, request)?;
        self.apply(name, effects);
        Ok(self.lives.get(name).copied())
    }
}

/// Sends `event` to every watcher, dropping the ones whose stream is gone.
fn broadcast<T: ResyncEvent + Clone>(watchers: &mut Vec<WatchSender<T>>, event: T) {
    watchers.retain(|watcher| watcher.send(event.clone()));
}

/// `now + d`, with `d` capped at [`FOREVER`] so it cannot overflow.
fn deadline_after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d.min(FOREVER)).unwrap_or(now)
}

#[async_trait]
impl Registry for MemoryRegistry {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        let caps = Capabilities::with_max_value_bytes(MAX_VALUE_BYTES)
            .with_records()
            .with_exactly_once()
            .with_slots();
        if self.clock.is_some() {
            caps.with_clock()
        } else {
            caps
        }
    }

    // ----- membership -----

    async fn register(&self, node: &Node, ttl: Duration) -> Result<Lease> {
        crate::backend::check_registration(node, ttl)?;
        let now = Instant::now();
        let id = {
            let mut state = self.shared.lock();
            state.expire_due(now);
            // An older registration of the node loses its lease (without a Delete: the node is
            // still there, under the new lease).
            let old = state
                .namespaces
                .get(&*self.namespace)
                .and_then(|ns| ns.nodes.get(&node.id))
                .map(|entry| entry.lease_id);
            if let Some(old) = old {
                if let Some(entry) = state.leases.remove(&old) {
                    state.deadlines.remove(&(entry.deadline, old));
                }
            }
            state.next_lease += 1;
            let id = state.next_lease;
            let deadline = deadline_after(now, ttl);
            state.leases.insert(
                id,
                LeaseEntry {
                    namespace: self.namespace.clone(),
                    node_id: node.id.clone(),
                    ttl,
                    deadline,
                },
            );
            state.deadlines.insert((deadline, id));
            let ns = state.namespace(&self.namespace);
            ns.nodes.insert(
                node.id.clone(),
                NodeEntry {
                    node: node.clone(),
                    lease_id: id,
                },
            );
            broadcast(&mut ns.node_watchers, NodeEvent::Put(node.clone()));
            id
        };
        self.shared.wake.notify_one();
        self.ensure_reaper();
        Ok(Lease {
            node_id: node.id.clone(),
            id: format!("{}:{}", self.shared.tag, id),
            ttl,
        })
    }

    async fn keep_alive(&self, lease: &Lease) -> Result<()> {
        let now = Instant::now();
        {
            let mut state = self.shared.lock();
            state.expire_due(now);
            let id = self.live_lease(&state, lease)?;
            if let Some(entry) = state.leases.get_mut(&id) {
                let old = entry.deadline;
                entry.deadline = deadline_after(now, entry.ttl);
                let new = entry.deadline;
                state.deadlines.remove(&(old, id));
                state.deadlines.insert((new, id));
            }
        }
        // A later deadline needs no wake-up: the reaper looks again when the old one passes.
        self.ensure_reaper();
        Ok(())
    }

    async fn update_node(&self, lease: &Lease, node: &Node) -> Result<()> {
        if node.id != lease.node_id {
            return Err(Error::InvalidArgument(format!(
                "node record `{}` does not belong to the lease of node `{}`",
                node.id, lease.node_id
            )));
        }
        let now = Instant::now();
        let mut state = self.shared.lock();
        state.expire_due(now);
        let id = self.live_lease(&state, lease)?;
        let ns = state.namespace(&self.namespace);
        ns.nodes.insert(
            node.id.clone(),
            NodeEntry {
                node: node.clone(),
                lease_id: id,
            },
        );
        broadcast(&mut ns.node_watchers, NodeEvent::Put(node.clone()));
        Ok(())
    }

    async fn unregister(&self, lease: &Lease) -> Result<()> {
        let now = Instant::now();
        let mut state = self.shared.lock();
        state.expire_due(now);
        // A lease that is already gone (expired, replaced, unregistered) leaves the node's
        // newer registration, if any, alone.
        if let Ok(id) = self.live_lease(&state, lease) {
            state.end_lease(id);
        }
        Ok(())
    }

    async fn list_nodes(&self) -> Result<Listing<Node>> {
        Ok(self.with_namespace_state(|ns, _| {
            Listing::of(ns.nodes.values().map(|entry| entry.node.clone()).collect())
        }))
    }

    async fn watch_nodes(&self) -> Result<WatchStream<NodeEvent>> {
        let (tx, rx) = watch_channel(WATCH_BUFFER);
        self.with_namespace_state(|ns, _| ns.node_watchers.push(tx));
        self.ensure_reaper();
        Ok(rx)
    }

    // ----- tasks -----

    async fn put_task(&self, meta: &TaskMeta, mode: PutMode) -> Result<()> {
        validate_task_name(&meta.name)?;
        check_value_size(meta, meta.encode().len(), &self.capabilities())?;
        let request = match mode {
            PutMode::CreateOnly => Request::AddDynamic(meta),
            PutMode::Update => Request::UpdateDynamic(meta),
            PutMode::Force => Request::ForceAddDynamic(meta),
        };
        self.with_namespace_state(|ns, _| ns.decide_and_apply(&meta.name, request))
    }

    async fn get_task(&self, name: &str) -> Result<Option<TaskMeta>> {
        self.with_namespace_state(|ns, _| match ns.tasks.get(name) {
            Some(StoredTask::Good(meta)) => Ok(Some((**meta).clone())),
            Some(StoredTask::Corrupt { reason }) => Err(Error::Corrupt {
                key: name.to_string(),
                reason: reason.clone(),
            }),
            None => Ok(None),
        })
    }

    async fn list_tasks(&self) -> Result<Listing<TaskMeta>> {
        Ok(self.with_namespace_state(|ns, _| {
            let mut listing = Listing {
                items: Vec::with_capacity(ns.tasks.len()),
                corrupt: Vec::new(),
            };
            for (name, stored) in &ns.tasks {
                match stored {
                    StoredTask::Good(meta) => listing.items.push((**meta).clone()),
                    StoredTask::Corrupt { reason } => listing.corrupt.push(CorruptEntry {
                        key: name.clone(),
                        reason: reason.clone(),
                    }),
                }
            }
            listing
        }))
    }

    async fn watch_tasks(&self) -> Result<WatchStream<TaskMetaEvent>> {
        let (tx, rx) = watch_channel(WATCH_BUFFER);
        self.with_namespace_state(|ns, _| ns.task_watchers.push(tx));
        Ok(rx)
    }

    // ----- tombstones -----

    async fn mark_deleted(&self, name: &str, at: DateTime<Utc>) -> Result<()> {
        validate_task_name(name)?;
        self.with_namespace_state(|ns, _| ns.decide_and_apply(name, Request::MarkDeleted(at)))
    }

    async fn get_tombstone(&self, name: &str) -> Result<Option<Tombstone>> {
        Ok(self.with_namespace_state(|ns, _| ns.tombstones.get(name).cloned()))
    }

    async fn list_tombstones(&self) -> Result<Listing<Tombstone>> {
        Ok(self
            .with_namespace_state(|ns, _| Listing::of(ns.tombstones.values().cloned().collect())))
    }

    async fn clear_tombstone(&self, name: &str) -> Result<()> {
        self.with_namespace_state(|ns, _| ns.decide_and_apply(name, Request::Reuse))
    }

    async fn cleanup_task(&self, name: &str) -> Result<()> {
        self.with_namespace_state(|ns, _| ns.decide_and_apply(name, Request::Cleanup))
    }

    async fn cleanup_all(&self) -> Result<()> {
        self.with_namespace_state(|ns, _| {
            let changes = ns.tasks.len() + ns.tombstones.len();
            let tasks = std::mem::take(&mut ns.tasks);
            let tombstones = std::mem::take(&mut ns.tombstones);
            ns.lives.clear();
            ns.records.clear();
            ns.slots.clear();
            if changes > WATCH_BUFFER {
                // More than a watcher could buffer anyway: ask for one full list instead.
                ns.task_watchers.retain(WatchSender::resync);
                return;
            }
            for name in tasks.into_keys() {
                broadcast(&mut ns.task_watchers, TaskMetaEvent::Removed { name });
            }
            for name in tombstones.into_keys() {
                broadcast(
                    &mut ns.task_watchers,
                    TaskMetaEvent::TombstoneCleared { name },
                );
            }
        });
        Ok(())
    }

    // ----- claims -----

    async fn claim(
        &self,
        claimant: &Claimant,
        requests: &[ClaimRequest],
    ) -> Result<Vec<ClaimOutcome>> {
        check_claims(requests)?;
        let wall = self.clock.as_ref().map(|c| c.now());
        Ok(self.with_namespace_state(|ns, now| {
            ns.purge_claims(now);
            let node: Arc<str> = Arc::from(claimant.node_id.as_str());
            let mut outcomes = Vec::with_capacity(requests.len());
            for request in requests {
                let fire = &request.fire;
                let millis = fire.instant_millis();
                let existing = ns
                    .claims
                    .get(fire.task.as_str())
                    .and_then(|per_task| per_task.by_instant.get(&millis))
                    .map(|c| Holder {
                        node_id: &c.node,
                        epoch: c.epoch,
                        token: c.token,
                    });
                let decision = decide_claim(
                    ns.tombstones.contains_key(&fire.task),
                    ns.lives.get(&fire.task),
                    existing,
                    wall,
                    claimant,
                    request,
                );
                if let ClaimDecision::Answer(outcome) = decision {
                    outcomes.push(outcome);
                    continue;
                }
                let token = ns.next_number();
                let per_task = match ns.claims.get_mut(fire.task.as_str()) {
                    Some(per_task) => per_task,
                    None => {
                        let name: Arc<str> = Arc::from(fire.task.as_str());
                        ns.claims.entry(name.clone()).or_insert(TaskClaims {
                            name,
                            by_instant: HashMap::new(),
                        })
                    }
                };
                per_task.by_instant.insert(
                    millis,
                    StoredClaim {
                        node: node.clone(),
                        epoch: claimant.epoch,
                        generation: request.generation,
                        token,
                    },
                );
                let expires = deadline_after(now, request.retention);
                ns.claim_expiry
                    .push(Reverse((expires, token, per_task.name.clone(), millis)));
                outcomes.push(ClaimOutcome::Won { token });
            }
            outcomes
        }))
    }

    // ----- lives -----

    async fn ensure_lives(&self, names: &[(String, DateTime<Utc>)]) -> Result<Vec<Life>> {
        for (name, _) in names {
            validate_task_name(name)?;
        }
        Ok(self.with_namespace_state(|ns, _| {
            names
                .iter()
                .map(|(name, at)| {
                    if let Some(life) = ns.lives.get(name) {
                        return *life;
                    }
                    let life = Life::new(ns.next_number(), *at);
                    ns.lives.insert(name.clone(), life);
                    life
                })
                .collect()
        }))
    }

    async fn restart_life(&self, name: &str, at: DateTime<Utc>) -> Result<Life> {
        validate_task_name(name)?;
        self.with_namespace_state(|ns, _| {
            ns.decide_and_apply_with(name, Request::ForceAddStatic(at))?
                .ok_or_else(|| Error::InvalidState(format!("no life for `{name}` after a restart")))
        })
    }

    async fn list_claims(&self, task: &str) -> Result<Listing<Claim>> {
        Ok(self.with_namespace_state(|ns, now| {
            ns.purge_claims(now);
            let items = ns
                .claims
                .get(task)
                .map(|per_task| {
                    per_task
                        .by_instant
                        .iter()
                        .filter_map(|(millis, c)| {
                            Some(Claim {
                                fire: FireKey::new(
                                    task,
                                    DateTime::<Utc>::from_timestamp_millis(*millis)?,
                                ),
                                node_id: c.node.to_string(),
                                epoch: c.epoch,
                                generation: c.generation,
                                token: c.token,
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            Listing::of(items)
        }))
    }

    // ----- running slots -----

    async fn acquire_slot(&self, lease: &Lease, fire: &FireKey) -> Result<SlotOutcome> {
        check_slot(lease, fire)?;
        let now = Instant::now();
        let mut state = self.shared.lock();
        state.expire_due(now);
        let id = self.live_lease(&state, lease)?;
        let holder = state
            .namespace(&self.namespace)
            .slots
            .get(&fire.task)
            .cloned();
        if let Some((held_by, held_fire)) = holder {
            if held_by == id && held_fire == *fire {
                return Ok(SlotOutcome::Taken);
            }
            // A holder whose lease ended (expired, unregistered, replaced) holds nothing.
            if let Some(entry) = state.leases.get(&held_by) {
                return Ok(SlotOutcome::Held {
                    node_id: entry.node_id.clone(),
                    fire: held_fire,
                });
            }
        }
        state
            .namespace(&self.namespace)
            .slots
            .insert(fire.task.clone(), (id, fire.clone()));
        Ok(SlotOutcome::Taken)
    }

    async fn release_slot(&self, lease: &Lease, fire: &FireKey) -> Result<()> {
        check_slot(lease, fire)?;
        let Some(id) = self.parse_lease_id(lease) else {
            return Ok(());
        };
        self.with_namespace_state(|ns, _| {
            if ns
                .slots
                .get(&fire.task)
                .is_some_and(|(held_by, held_fire)| *held_by == id && held_fire == fire)
            {
                ns.slots.remove(&fire.task);
            }
        });
        Ok(())
    }

    // ----- records -----

    async fn put_records(&self, kind: RecordKind, records: &[(String, Vec<u8>)]) -> Result<()> {
        check_records(kind, records, &self.capabilities())?;
        self.with_namespace_state(|ns, _| {
            for (key, value) in records {
                ns.records.insert((kind, key.clone()), value.clone());
            }
        });
        Ok(())
    }

    async fn get_record(&self, kind: RecordKind, key: &str) -> Result<Option<Vec<u8>>> {
        check_record_key(kind, key)?;
        Ok(self.with_namespace_state(|ns, _| ns.records.get(&(kind, key.to_string())).cloned()))
    }

    async fn list_records(&self, kind: RecordKind) -> Result<Vec<(String, Vec<u8>)>> {
        Ok(self.with_namespace_state(|ns, _| {
            ns.records
                .iter()
                .filter(|((k, _), _)| *k == kind)
                .map(|((_, key), value)| (key.clone(), value.clone()))
                .collect()
        }))
    }

    async fn delete_record(&self, kind: RecordKind, key: &str) -> Result<bool> {
        check_record_key(kind, key)?;
        Ok(
            self.with_namespace_state(|ns, _| {
                ns.records.remove(&(kind, key.to_string())).is_some()
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn node(id: &str) -> Node {
        Node::new(id, DateTime::<Utc>::UNIX_EPOCH)
    }

    /// Polls `cond` with yields until it holds, failing after `limit` of virtual time.
    async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + limit;
        while !cond() {
            assert!(Instant::now() < deadline, "condition not met in {limit:?}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn reaper_ends_when_the_store_is_dropped() {
        let registry = MemoryRegistry::new();
        let wake = registry.shared.wake.clone();
        let running = registry.shared.reaper_running.clone();
        registry
            .register(&node("a"), Duration::from_secs(5))
            .await
            .expect("register");
        assert!(running.load(Ordering::Acquire));
        // The reaper holds one clone of `wake`, the store another, this test the third.
        eventually(Duration::from_secs(1), || Arc::strong_count(&wake) == 3).await;
        drop(registry);
        eventually(Duration::from_secs(1), || Arc::strong_count(&wake) == 1).await;
        assert!(!running.load(Ordering::Acquire));
    }

    #[tokio::test(start_paused = true)]
    async fn reaper_sleeps_until_the_earliest_deadline_then_deletes() {
        let registry = MemoryRegistry::new();
        let mut watch = registry.watch_nodes().await.expect("watch");
        let start = Instant::now();
        registry
            .register(&node("slow"), Duration::from_secs(30))
            .await
            .expect("register");
        registry
            .register(&node("fast"), Duration::from_secs(3))
            .await
            .expect("register");
        assert!(matches!(watch.next().await, Some(NodeEvent::Put(_))));
        assert!(matches!(watch.next().await, Some(NodeEvent::Put(_))));
        // Nobody calls the registry: only the reaper can produce these.
        assert_eq!(
            watch.next().await,
            Some(NodeEvent::Delete { id: "fast".into() })
        );
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        assert_eq!(
            watch.next().await,
            Some(NodeEvent::Delete { id: "slow".into() })
        );
        assert_eq!(start.elapsed(), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn claims_outlive_cleanup_and_new_lives_then_expire() {
        let registry = MemoryRegistry::new();
        let t0 = DateTime::<Utc>::UNIX_EPOCH;
        let req = |generation| {
            ClaimRequest::new(
                FireKey::new("t", t0),
                generation,
                t0 + chrono::Duration::days(1),
                Duration::from_secs(10),
            )
        };
        let life = registry
            .ensure_lives(&[("t".into(), t0)])
            .await
            .expect("life")[0];
        let won = registry
            .claim(&Claimant::new("a", 1), &[req(life.generation)])
            .await
            .expect("claim");
        assert!(won[0].is_won());
        registry.cleanup_task("t").await.expect("cleanup");
        tokio::time::advance(Duration::from_secs(5)).await;
        // A new life after the cleanup: the instant claimed in the previous one stays claimed.
        let life = registry
            .ensure_lives(&[("t".into(), t0)])
            .await
            .expect("life")[0];
        let again = registry
            .claim(&Claimant::new("b", 1), &[req(life.generation)])
            .await
            .expect("claim");
        assert_eq!(
            again[0],
            ClaimOutcome::Lost {
                holder: Some("a".into())
            }
        );
        // Once the retention is over, the fire can be won again.
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(registry
            .list_claims("t")
            .await
            .expect("list")
            .items
            .is_empty());
        let later = registry
            .claim(&Claimant::new("b", 1), &[req(life.generation)])
            .await
            .expect("claim");
        assert!(later[0].is_won());
        let ns = registry.with_namespace_state(|ns, _| (ns.claim_expiry.len(), ns.claims.len()));
        assert_eq!(ns, (1, 1));
    }

    #[test]
    fn works_without_a_runtime() {
        let registry = MemoryRegistry::new();
        let lease =
            futures::executor::block_on(registry.register(&node("a"), Duration::from_secs(60)))
                .expect("register outside a runtime");
        assert!(!registry.shared.reaper_running.load(Ordering::Acquire));
        futures::executor::block_on(registry.keep_alive(&lease)).expect("keep alive");
    }

    #[tokio::test]
    async fn foreign_or_malformed_lease_ids_are_lost() {
        let a = MemoryRegistry::new();
        let b = MemoryRegistry::new();
        let lease = a
            .register(&node("n"), Duration::from_secs(60))
            .await
            .expect("register");
        b.register(&node("n"), Duration::from_secs(60))
            .await
            .expect("register");
        assert!(matches!(
            b.keep_alive(&lease).await,
            Err(Error::LeaseLost { .. })
        ));
        for id in ["", "x", "nocolon", "a:b", ":1"] {
            let bad = Lease {
                id: id.to_string(),
                ..lease.clone()
            };
            assert!(matches!(
                a.keep_alive(&bad).await,
                Err(Error::LeaseLost { .. })
            ));
        }
        a.keep_alive(&lease).await.expect("still alive");
    }
}
