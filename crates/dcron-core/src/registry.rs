//! The `Registry` trait: what a backend must do for dcron.
//!
//! A registry stores, under one namespace: node registrations (each tied to a lease that expires
//! when not kept alive), dynamic task records, tombstones, the *life* of every task name, and
//! fire claims. The conformance suite in `dcron-testkit` is the executable definition of this
//! contract; every rule below has cases there. [`crate::MemoryRegistry`] is the reference
//! implementation.
//!
//! General rules for every method:
//! - Task names reaching the registry are already validated ([`crate::validate_task_name`]);
//!   backends escape them for their key space (they may contain `:`, spaces, `*`, `%`, `.`,
//!   unicode, …). Two distinct names never share a key.
//! - Connection loss and timeouts are [`Error::Unavailable`]; authentication failures
//!   [`Error::AccessDenied`]; values that do not decode [`Error::Corrupt`] (or, in listings,
//!   [`Listing::corrupt`] entries). A bad value never panics and never hides the good ones.
//! - Every listing names each entry once, and lists nothing expired.
//! - Nothing in one namespace is visible from another namespace on the same server, including
//!   a namespace whose name is a prefix of the other's.
//! - Every write is atomic on the server (one transaction, one script, one compare-and-set).
//!
//! # Numeric promises
//!
//! Durations are kept within a documented tolerance, [`expiry_tolerance`]: a node lease granted
//! `ttl` keeps its node listed for at least `ttl` after the start of the last successful
//! `register` or `keep_alive` call, and removes it within `ttl + expiry_tolerance(ttl)` after
//! keep-alives stop (counted from the return of the last of those calls); a claim written with
//! `retention` is kept for at least `retention` after the start of the `claim` call, and is gone
//! (not listed, claimable by another claimant) within `retention + expiry_tolerance(retention)`
//! after the call returns. A watch delivers each change within
//! [`MAX_WATCH_DELAY`].

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;

pub use crate::backend::MAX_WATCH_DELAY;
#[allow(unused_imports)] // rustdoc links
use crate::backend::{
    check_record_key, ensure_lives_in_records, expiry_tolerance, restart_life_in_records,
};
use crate::error::{Error, Result};
use crate::types::{
    Claim, ClaimOutcome, ClaimRequest, Claimant, FireKey, Life, Listing, Node, NodeEvent,
    SlotOutcome, TaskMeta, TaskMetaEvent, Tombstone,
};

/// A stream of watch events. It ends when the registry side stops (connection lost, registry
/// closed); the consumer then watches again after a back-off and reconciles with a full list.
pub type WatchStream<T> = BoxStream<'static, T>;

/// A node's registration lease, as returned by [`Registry::register`].
///
/// A lease is used (`keep_alive`, `update_node`, `unregister`) through the registry handle that
/// registered it, from any number of tasks; another handle, e.g. in another process, may refuse
/// it with [`Error::LeaseLost`] (a ZooKeeper lease is the registering handle's session).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Lease {
    /// The node the lease belongs to.
    pub node_id: String,
    /// The backend's lease identity (etcd lease id, Consul session id, ZooKeeper session, a
    /// random token, …). Opaque to the core; a new registration always gets a new one.
    pub id: String,
    /// The time to live the lease was granted with: the backend's granted value, which may be
    /// larger than requested (etcd grants whole seconds, at least 2; Consul at least 10 s).
    pub ttl: Duration,
}

/// How [`Registry::put_task`] treats an existing record or tombstone.
///
/// Deliberately exhaustive (not `#[non_exhaustive]`): every backend must handle every mode,
/// so a new one is a breaking change that the compiler points out in each backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PutMode {
    /// Create only: [`Error::AlreadyExists`] when a record exists, [`Error::Tombstoned`] when
    /// the name is tombstoned (checked in that order, atomically with the write).
    CreateOnly,
    /// Replace an existing, live record: [`Error::NotFound`] when there is none,
    /// [`Error::Tombstoned`] when the name is tombstoned. Claims are kept.
    Update,
    /// Write whatever is there: the record is replaced and the tombstone removed, in one atomic
    /// step that starts a new life (the seed's `ForceAdd`). Claims are kept.
    Force,
}

/// What a backend can and cannot do, for the conformance suite and the core's checks.
///
/// The struct is `#[non_exhaustive]` (a capability added later defaults to off), so a backend
/// outside this crate builds its value from [`Capabilities::new`] or
/// [`Capabilities::with_max_value_bytes`] and the `with_*` / `without_*` methods:
///
/// ```
/// use dcron_core::Capabilities;
///
/// // A backend storing values up to 512 KiB, with records and slots but no watches.
/// let caps = Capabilities::with_max_value_bytes(512 * 1024)
///     .with_records()
///     .with_slots()
///     .without_watch();
/// assert_eq!(caps.max_value_bytes, 512 * 1024);
/// assert!(caps.records && caps.slots && !caps.watch && !caps.exactly_once);
/// assert_eq!(Capabilities::new(), Capabilities::default());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// The largest encoded task record the backend stores, in bytes. Larger records are refused
    /// with [`Error::InvalidArgument`] before anything is written.
    pub max_value_bytes: usize,
    /// Whether [`Registry::watch_nodes`] and [`Registry::watch_tasks`] are implemented (if not,
    /// they return [`Error::Unsupported`] and the core relies on polling alone).
    pub watch: bool,
    /// Whether the record operations ([`Registry::put_records`], [`Registry::get_record`],
    /// [`Registry::list_records`], [`Registry::delete_record`]) are implemented. Without them
    /// pause, trigger-now and stored task status are unavailable (the calls answer
    /// [`Error::Unsupported`]); scheduling and claims work as before. Off by default: a
    /// registry that implements the record methods says so.
    pub records: bool,
    /// Whether the registry has a clock of its own and refuses a claim whose deadline has
    /// passed by that clock ([`ClaimOutcome::Late`]). Off by default.
    pub clock: bool,
    /// Whether the registry implements the whole exactly-once contract natively: lives
    /// ([`Registry::ensure_lives`], [`Registry::restart_life`], new lives on create-only and
    /// force writes, removed by cleanup), claims checked against the life's generation and
    /// idempotent per [`Claimant`]. Off by default: for a registry written against the earlier
    /// contract the node keeps lives in records (see the default methods), with weaker
    /// guarantees, and the conformance suite skips the cases of the newer contract, saying so.
    pub exactly_once: bool,
    /// Whether the registry keeps running slots ([`Registry::acquire_slot`],
    /// [`Registry::release_slot`]): the cluster-wide, atomic guarantee that two fires of a task
    /// whose overlap policy is `Skip` or `Queue` never run at once. Off by default: the node then
    /// falls back to the running markers published in node records, which two nodes can both
    /// miss when they start within one publication delay of each other.
    pub slots: bool,
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities {
            max_value_bytes: 1024 * 1024,
            watch: true,
            records: false,
            clock: false,
            exactly_once: false,
            slots: false,
        }
    }
}

impl Capabilities {
    /// The defaults: 1 MiB values, watches supported, every optional capability off (the same
    /// as [`Capabilities::default`]).
    pub fn new() -> Self {
        Capabilities::default()
    }

    /// These capabilities with watches declared unsupported: [`Registry::watch_nodes`] and
    /// [`Registry::watch_tasks`] answer [`Error::Unsupported`] and nodes rely on polling.
    pub fn without_watch(mut self) -> Self {
        self.watch = false;
        self
    }

    /// Capabilities with the given maximum value size and watches supported.
    pub fn with_max_value_bytes(max_value_bytes: usize) -> Self {
        Capabilities {
            max_value_bytes,
            ..Capabilities::default()
        }
    }

    /// These capabilities with record support declared.
    pub fn with_records(mut self) -> Self {
        self.records = true;
        self
    }

    /// These capabilities with a registry clock declared (late claims are refused).
    pub fn with_clock(mut self) -> Self {
        self.clock = true;
        self
    }

    /// These capabilities with the whole exactly-once contract declared (lives, generations,
    /// idempotent claims).
    pub fn with_exactly_once(mut self) -> Self {
        self.exactly_once = true;
        self
    }

    /// These capabilities with running slots declared ([`Registry::acquire_slot`]).
    pub fn with_slots(mut self) -> Self {
        self.slots = true;
        self
    }
}

/// A registry: membership, dynamic tasks, tombstones and fire claims under one namespace.
///
/// Implementations must be cheap to share (`Arc<dyn Registry>`), safe to call concurrently from
/// many tasks, and must never hold a lock across an `.await` on their hot paths (`claim`,
/// `keep_alive`). Run `dcron_testkit::conformance_main!` against an implementation to prove it.
#[async_trait]
pub trait Registry: Send + Sync + std::fmt::Debug + 'static {
    /// The backend's short name (`memory`, `redis`, `etcd`, `consul`, `zookeeper`, …), used in
    /// errors, logs and metrics.
    fn backend(&self) -> &'static str;

    /// What the backend supports.
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    // ----- membership -----

    /// Registers `node` under a new lease that expires `ttl` after the last keep-alive.
    ///
    /// A record for the same node id under an older lease is replaced, and that lease is lost.
    /// The node must appear in [`Registry::list_nodes`] as soon as this returns. The granted
    /// [`Lease::ttl`] is never smaller than `ttl`; the node stays listed for at least the
    /// granted TTL after the start of the last successful `register` or `keep_alive`, and
    /// disappears by itself within the granted TTL plus [`expiry_tolerance`] of it once
    /// keep-alives stop. Liveness is judged by the registry (server-side expiry), never by
    /// comparing client clocks.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a zero `ttl`; [`Error::Unavailable`] when unreachable.
    async fn register(&self, node: &Node, ttl: Duration) -> Result<Lease>;

    /// Renews the lease for another `ttl`.
    ///
    /// # Errors
    /// [`Error::LeaseLost`] when the lease has expired, was revoked, or was replaced by a newer
    /// registration of the node: the caller must register again. [`Error::Unavailable`] when the
    /// registry cannot be reached (the lease may still be alive).
    async fn keep_alive(&self, lease: &Lease) -> Result<()>;

    /// Replaces the node's record (status, weight, `last_alive`…) **keeping it attached to the
    /// lease**: the record still expires if keep-alives stop afterwards.
    ///
    /// # Errors
    /// [`Error::LeaseLost`] when the lease has expired, was revoked, or was replaced by a newer
    /// registration of the node: the record is then not recreated, and a newer registration's
    /// record is left as it is.
    async fn update_node(&self, lease: &Lease, node: &Node) -> Result<()>;

    /// Removes the node's record and releases the lease. Idempotent: unregistering twice, or
    /// after expiry, is `Ok`. With a lease replaced by a newer registration of the node it is a
    /// no-op (`Ok`) that leaves the newer registration alone.
    async fn unregister(&self, lease: &Lease) -> Result<()>;

    /// Lists the nodes whose lease is alive, in any order.
    async fn list_nodes(&self) -> Result<Listing<Node>>;

    /// Watches node changes in this namespace only. Every change made after this returns is
    /// delivered within [`MAX_WATCH_DELAY`] (at-least-once, possibly coalesced into the latest
    /// state); events of one node arrive in the order of its changes, and an event may be
    /// repeated but never arrives after a newer event of the same node. After any gap the stream
    /// yields [`NodeEvent::Resync`]. A watcher that does not read for a while must not block the
    /// registry or other watchers (overflow becomes `Resync`).
    ///
    /// # Errors
    /// [`Error::Unsupported`] when [`Capabilities::watch`] is false.
    async fn watch_nodes(&self) -> Result<WatchStream<NodeEvent>>;

    // ----- tasks -----

    /// Stores a dynamic task record according to `mode` (see [`PutMode`]).
    ///
    /// `CreateOnly` and `Force` start a **new life** of the name in the same atomic write: a
    /// generation greater than any the name had, and live-since `meta.created_at` (the node
    /// sets it to its clock at the write; a missing `created_at` is [`Error::InvalidArgument`]
    /// for an exactly-once registry). `Update` keeps the life.
    ///
    /// # Errors
    /// As listed on [`PutMode`]; [`Error::InvalidArgument`] when the encoded record is larger
    /// than [`Capabilities::max_value_bytes`] (nothing is written).
    async fn put_task(&self, meta: &TaskMeta, mode: PutMode) -> Result<()>;

    /// Reads one task record; `Ok(None)` when absent. A tombstoned task's record is still
    /// returned (tombstones are separate).
    ///
    /// # Errors
    /// [`Error::Corrupt`] when the stored value does not decode.
    async fn get_task(&self, name: &str) -> Result<Option<TaskMeta>>;

    /// Lists every task record in the namespace, completely (however many there are), in any
    /// order; values that do not decode are reported in [`Listing::corrupt`].
    async fn list_tasks(&self) -> Result<Listing<TaskMeta>>;

    /// Watches task records and tombstones of this namespace. Same delivery rules as
    /// [`Registry::watch_nodes`] (per task name).
    ///
    /// # Errors
    /// [`Error::Unsupported`] when [`Capabilities::watch`] is false.
    async fn watch_tasks(&self) -> Result<WatchStream<TaskMetaEvent>>;

    // ----- tombstones -----

    /// Marks a task name deleted at `at`. Works whether or not a record exists (static tasks
    /// have none); the record, if any, is kept. Idempotent: an existing tombstone keeps its
    /// original time. From the moment this returns, every claim for the name is answered
    /// [`ClaimOutcome::Tombstoned`].
    async fn mark_deleted(&self, name: &str, at: DateTime<Utc>) -> Result<()>;

    /// Reads one tombstone; `Ok(None)` when the name is not tombstoned.
    async fn get_tombstone(&self, name: &str) -> Result<Option<Tombstone>>;

    /// Lists every tombstone in the namespace.
    async fn list_tombstones(&self) -> Result<Listing<Tombstone>>;

    /// Clears a tombstone; the record, if any, becomes live again. The life and the claims are
    /// kept. (`Dcron::reuse_deleted_task` uses [`Registry::restart_life`] instead, so that the
    /// fires that fell in the deletion are never caught up.)
    ///
    /// # Errors
    /// [`Error::NotFound`] (`what = "tombstone"`) when the name is not tombstoned.
    async fn clear_tombstone(&self, name: &str) -> Result<()>;

    /// Removes one name: record, tombstone and life. Idempotent. Its claims stay until their
    /// retention ends (a fire claimed before stays claimed, so a later life never runs it
    /// again), and the name's token and generation sequence is not reset: a later life and its
    /// claims get greater numbers.
    async fn cleanup_task(&self, name: &str) -> Result<()>;

    /// Removes every task record, tombstone, life and record of the namespace, and nothing
    /// outside it. Node registrations are kept; claims stay until their retention ends; token
    /// and generation sequences are not reset.
    async fn cleanup_all(&self) -> Result<()>;

    // ----- lives -----

    /// Answers the current life of each name, starting one for each name that has none with the
    /// instant given beside it as live-since (the first registration of a static task, or a
    /// dynamic record without a life). One life per name, in order; a tombstoned name gets its
    /// life too (tombstones are separate). Two callers racing for a name without a life get the
    /// same life. The batch should cost one round trip.
    ///
    /// A registry without native lives can keep them in records with
    /// [`ensure_lives_in_records`] (not atomic; such a registry does not declare
    /// [`Capabilities::exactly_once`]).
    ///
    /// # Errors
    /// [`Error::Unavailable`]; [`Error::Unsupported`] for a registry without lives or records.
    async fn ensure_lives(&self, names: &[(String, DateTime<Utc>)]) -> Result<Vec<Life>>;

    /// Starts a new life of `name` at `at` whatever is there: clears its tombstone and keeps
    /// the task record and the claims, in one atomic write (the force-add of a static task, and
    /// the reuse of a deleted one). The new generation is greater than any the name had.
    ///
    /// A registry without native lives can use [`restart_life_in_records`] (two steps, not
    /// atomic; such a registry does not declare [`Capabilities::exactly_once`]).
    ///
    /// # Errors
    /// [`Error::Unavailable`]; [`Error::Unsupported`] for a registry without lives or records.
    async fn restart_life(&self, name: &str, at: DateTime<Utc>) -> Result<Life>;

    // ----- claims -----

    /// Claims a batch of fires for `claimant`, answering exactly one outcome per request, in
    /// order.
    ///
    /// For each request, atomically with every other write of the task name:
    /// 1. the name is tombstoned → [`ClaimOutcome::Tombstoned`];
    /// 2. the name has no life, or its generation is not `request.generation` →
    ///    [`ClaimOutcome::Superseded`] with the current generation;
    /// 3. a claim for the fire exists: held by this same claimant (node id **and** epoch) →
    ///    [`ClaimOutcome::WonEarlier`] with the same token; held by another →
    ///    [`ClaimOutcome::Lost`] naming the holder;
    /// 4. the registry has a clock ([`Capabilities::clock`]) and it reads past
    ///    `request.deadline` → [`ClaimOutcome::Late`], nothing written;
    /// 5. otherwise the claim is written (claimant, generation, a fencing token) and kept for
    ///    `request.retention` within [`expiry_tolerance`] → [`ClaimOutcome::Won`].
    ///
    /// Across all nodes and calls, at most one claimant holds a fire while its claim is
    /// retained. **Claims are removed only when their retention ends** (never by cleanup, a
    /// force write, a new life or `cleanup_all`): a claim of an earlier life answers `Lost` (or
    /// `WonEarlier` to its holder) to a request of a later one. Tokens are non-zero, distinct
    /// across all the claims of the namespace, and strictly greater than every token handed out
    /// before for the same name, across cleanup and new lives. A claim is not
    /// released when the handler ends. A fire requested twice in one batch is decided once: the
    /// later copy answers as a retry would. The whole batch should cost one round trip
    /// (pipeline, script, transaction, or requests sent concurrently); batches larger than a
    /// backend's transaction limit are split invisibly. A request that cannot be decided alone
    /// (a bad key) answers [`ClaimOutcome::Failed`] and the others are decided; a request whose
    /// task name fails [`crate::validate_task_name`] (such a name never has a life) answers
    /// `Failed` or `Superseded { current: None }`, and never fails the batch.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a zero retention (nothing written);
    /// [`Error::Unavailable`] when the batch could not be decided. No outcome is then implied:
    /// some claims may have been written, and retrying the same requests as the same claimant
    /// answers `WonEarlier` for those, so a retry is always safe.
    async fn claim(
        &self,
        claimant: &Claimant,
        requests: &[ClaimRequest],
    ) -> Result<Vec<ClaimOutcome>>;

    /// Lists the retained, unexpired claims of one task, each once, in any order.
    async fn list_claims(&self, task: &str) -> Result<Listing<Claim>>;

    // ----- running slots -----

    /// Takes the running slot of `fire.task` for `fire`, held under `lease`, atomically: the
    /// slot is free (no holder, or a holder whose lease has ended or was replaced by a newer
    /// registration) → it is written and [`SlotOutcome::Taken`]; held by this same lease for
    /// this same fire → `Taken` again (a retry after a lost reply); held by anyone else (another
    /// node, or another fire under this lease) → [`SlotOutcome::Held`] naming the holder,
    /// nothing written.
    ///
    /// Across all nodes, at most one fire holds a task's slot at a time. The slot lives with
    /// the lease: it is free once the lease ends (expiry within the granted TTL plus
    /// [`expiry_tolerance`] after the last keep-alive, `unregister`, or a new registration of
    /// the node). It needs no renewal of its own. `cleanup_all` frees every slot of the
    /// namespace; `cleanup_task` may leave a slot (it ends with its lease or its release).
    ///
    /// The node takes the slot right before a fire of a `Skip` or `Queue` task starts, after
    /// the fire's claim was won, and releases it when the fire ends. It is not folded into
    /// [`Registry::claim`]: claims are decided ahead of the instant and in batches, while the
    /// slot belongs to the moment a fire starts (a queued fire waits for it).
    ///
    /// # Errors
    /// [`Error::LeaseLost`] when `lease` has ended (nothing written);
    /// [`Error::Unavailable`] when unreachable (the slot may or may not have been taken; the
    /// same call again answers `Taken` if it was); [`Error::Unsupported`] for a registry
    /// without slots ([`Capabilities::slots`] off), the default.
    async fn acquire_slot(&self, lease: &Lease, fire: &FireKey) -> Result<SlotOutcome> {
        let _ = (lease, fire);
        Err(slots_unsupported(self.backend()))
    }

    /// Frees the running slot of `fire.task` when it is held by `lease` for `fire`; does
    /// nothing otherwise (a slot that already ended with its lease, or was taken since by
    /// another fire, is left alone). Idempotent.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when unreachable (the slot may or may not have been freed);
    /// [`Error::Unsupported`] for a registry without slots, the default.
    async fn release_slot(&self, lease: &Lease, fire: &FireKey) -> Result<()> {
        let _ = (lease, fire);
        Err(slots_unsupported(self.backend()))
    }

    // ----- records -----
    //
    // Small per-task documents beside the task itself: pause markers, trigger-now requests and
    // task status. The core encodes and decodes them; a backend stores opaque bytes under
    // `(kind, key)` in the namespace. Keys pass [`check_record_key`]. `cleanup_all` removes every
    // record of the namespace; `cleanup_task` may leave them (the core removes a task's records
    // itself). The default implementations answer [`Error::Unsupported`] so that a third-party
    // registry written before records existed still compiles; such a registry must report
    // `Capabilities::records = false`.

    /// Writes each `(key, value)` of `records` under `kind`, replacing what is there. The batch
    /// should cost one round trip; it need not be atomic as a whole, but each record is written
    /// whole or not at all.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a key failing [`check_record_key`] or a value larger than
    /// [`Capabilities::max_value_bytes`] (nothing of the batch is written then);
    /// [`Error::Unavailable`] when unreachable.
    async fn put_records(&self, kind: RecordKind, records: &[(String, Vec<u8>)]) -> Result<()> {
        let _ = (kind, records);
        Err(records_unsupported(self.backend()))
    }

    /// Reads one record.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a bad key; [`Error::Unavailable`] when unreachable.
    async fn get_record(&self, kind: RecordKind, key: &str) -> Result<Option<Vec<u8>>> {
        let _ = (kind, key);
        Err(records_unsupported(self.backend()))
    }

    /// Lists every record of `kind` as `(key, value)`, in any order.
    async fn list_records(&self, kind: RecordKind) -> Result<Vec<(String, Vec<u8>)>> {
        let _ = kind;
        Err(records_unsupported(self.backend()))
    }

    /// Deletes one record, answering whether **this call** removed it: among concurrent
    /// deleters of one record at most one gets `true` (trigger-now requests are consumed this
    /// way, so each runs once). Deleting a missing record answers `false`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a bad key; [`Error::Unavailable`] when unreachable (the
    /// record may or may not have been removed).
    async fn delete_record(&self, kind: RecordKind, key: &str) -> Result<bool> {
        let _ = (kind, key);
        Err(records_unsupported(self.backend()))
    }
}

/// The kinds of records a registry keeps beside tasks (see [`Registry::put_records`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum RecordKind {
    /// Pause state of a task, keyed by task name (a [`crate::PauseRecord`]).
    Pause,
    /// A trigger-now request, keyed `<task name>@<request id>` (a [`crate::TriggerRecord`]).
    Trigger,
    /// The status of a task, keyed by task name (a [`crate::TaskStatus`]), written by its owner.
    Status,
    /// The life of a task name, keyed by task name (a [`crate::Life`]), for registries without
    /// native lives (see [`Registry::ensure_lives`]).
    Life,
}

impl RecordKind {
    /// Every kind, for backends that iterate over them (e.g. in `cleanup_all`).
    pub const ALL: [RecordKind; 4] = [
        RecordKind::Pause,
        RecordKind::Trigger,
        RecordKind::Status,
        RecordKind::Life,
    ];

    /// The kind's name as used in keys: `pause`, `trigger`, `status`.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Pause => "pause",
            RecordKind::Trigger => "trigger",
            RecordKind::Status => "status",
            RecordKind::Life => "life",
        }
    }
}

impl std::fmt::Display for RecordKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn slots_unsupported(backend: &'static str) -> Error {
    tracing::debug!(backend, "registry without running slots");
    Error::Unsupported {
        operation: "running slots",
    }
}

fn records_unsupported(backend: &'static str) -> Error {
    tracing::debug!(backend, "registry without record support");
    Error::Unsupported {
        operation: "records (pause, trigger-now, task status)",
    }
}
