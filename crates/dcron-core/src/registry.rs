//! The `Registry` trait: what a backend must do for dcron.
//!
//! A registry stores, under one namespace: node registrations (each tied to a lease that expires
//! when not kept alive), dynamic task records, tombstones, and fire claims. The conformance suite
//! in `dcron-testkit` is the executable definition of this contract; every rule below has cases
//! there. [`crate::MemoryRegistry`] is the reference implementation.
//!
//! General rules for every method:
//! - Task names reaching the registry are already validated ([`crate::validate_task_name`]);
//!   backends escape them for their key space (they may contain `:`, spaces, `*`, unicode, …).
//! - Connection loss and timeouts are [`Error::Unavailable`]; authentication failures
//!   [`Error::AccessDenied`]; values that do not decode [`Error::Corrupt`] (or, in listings,
//!   [`Listing::corrupt`] entries). A bad value never panics and never hides the good ones.
//! - Nothing in one namespace is visible from another namespace on the same server.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;

use crate::error::{Error, Result};
use crate::types::{
    Claim, ClaimOutcome, FireKey, Listing, Node, NodeEvent, TaskMeta, TaskMetaEvent, Tombstone,
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PutMode {
    /// Create only: [`Error::AlreadyExists`] when a record exists, [`Error::Tombstoned`] when
    /// the name is tombstoned (checked in that order, atomically with the write).
    CreateOnly,
    /// Replace an existing, live record: [`Error::NotFound`] when there is none,
    /// [`Error::Tombstoned`] when the name is tombstoned. Claims are kept.
    Update,
    /// Write whatever is there: the record is replaced, and the tombstone and every claim of the
    /// name are removed, in one atomic step (the seed's `ForceAdd`).
    Force,
}

/// What a backend can and cannot do, for the conformance suite and the core's checks.
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
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities {
            max_value_bytes: 1024 * 1024,
            watch: true,
            records: false,
        }
    }
}

impl Capabilities {
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
}

/// A registry: membership, dynamic tasks, tombstones and fire claims under one namespace.
///
/// Implementations must be cheap to share (`Arc<dyn Registry>`), safe to call concurrently from
/// many tasks, and must never hold a lock across an `.await` on their hot paths (`claim`,
/// `keep_alive`). Run `dcron_testkit::conformance_tests!` against an implementation to prove it.
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
    /// A record for the same node id under an older lease is replaced. The node must appear in
    /// [`Registry::list_nodes`] as soon as this returns, and disappear by itself within
    /// `ttl` (plus the backend's expiry granularity) once keep-alives stop. Liveness is judged
    /// by the registry (server-side expiry), never by comparing client clocks.
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
    /// [`Error::LeaseLost`] when the lease is gone (the record is then not recreated).
    async fn update_node(&self, lease: &Lease, node: &Node) -> Result<()>;

    /// Removes the node's record and releases the lease. Idempotent: unregistering twice, or
    /// after expiry, is `Ok`. With a lease replaced by a newer registration of the node it is a
    /// no-op (`Ok`) that leaves the newer registration alone.
    async fn unregister(&self, lease: &Lease) -> Result<()>;

    /// Lists the nodes whose lease is alive, in any order.
    async fn list_nodes(&self) -> Result<Listing<Node>>;

    /// Watches node changes. Every change made after this returns is delivered (at-least-once,
    /// possibly coalesced); after any gap the stream yields [`NodeEvent::Resync`]. A watcher that does not read for a while must not block the
    /// registry or other watchers (overflow becomes `Resync`).
    ///
    /// # Errors
    /// [`Error::Unsupported`] when [`Capabilities::watch`] is false.
    async fn watch_nodes(&self) -> Result<WatchStream<NodeEvent>>;

    // ----- tasks -----

    /// Stores a dynamic task record according to `mode` (see [`PutMode`]).
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

    /// Watches task records and tombstones. Same delivery rules as [`Registry::watch_nodes`].
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

    /// Clears a tombstone so the name can be used again (the seed's `ReuseDeletedTask`); the
    /// record, if any, becomes live again.
    ///
    /// # Errors
    /// [`Error::NotFound`] (`what = "tombstone"`) when the name is not tombstoned.
    async fn clear_tombstone(&self, name: &str) -> Result<()>;

    /// Removes every trace of one name: record, tombstone and claims. Idempotent.
    async fn cleanup_task(&self, name: &str) -> Result<()>;

    /// Removes every task record, tombstone and claim of the namespace, and nothing outside it.
    /// Node registrations are kept.
    async fn cleanup_all(&self) -> Result<()>;

    // ----- claims -----

    /// Claims a batch of fires for `node_id`, answering one outcome per fire, in order.
    ///
    /// For each fire, atomically: if the task name is tombstoned → `Tombstoned`; else if a claim
    /// for the fire exists → `Lost`; else the claim is created (kept for `retention`, then
    /// removed by the registry) → `Won` with a fencing token. Across all nodes and all calls,
    /// at most one `Won` per fire while the claim is retained. A claim is not released when the
    /// handler ends. The whole batch should cost one round trip (pipeline, script, transaction)
    /// or requests sent concurrently, never one sequential round trip per fire. Duplicate fires
    /// within one batch: the first is decided as above, every later copy is `Lost`.
    /// The stored [`Claim::token`] may be 0 where the backend learns the token only from the
    /// write (etcd, ZooKeeper); [`Registry::list_claims`] reports the real token.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the batch could not be decided; no outcome is then implied
    /// (some claims may have been written; a retry answers `Lost` for those, which is safe).
    async fn claim(
        &self,
        fires: &[FireKey],
        node_id: &str,
        retention: Duration,
    ) -> Result<Vec<ClaimOutcome>>;

    /// Lists the retained claims of one task (any order).
    async fn list_claims(&self, task: &str) -> Result<Listing<Claim>>;

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
}

impl RecordKind {
    /// Every kind, for backends that iterate over them (e.g. in `cleanup_all`).
    pub const ALL: [RecordKind; 3] = [RecordKind::Pause, RecordKind::Trigger, RecordKind::Status];

    /// The kind's name as used in keys: `pause`, `trigger`, `status`.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Pause => "pause",
            RecordKind::Trigger => "trigger",
            RecordKind::Status => "status",
        }
    }
}

impl std::fmt::Display for RecordKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The longest record key accepted, in bytes (a task name plus a request id).
pub const MAX_RECORD_KEY_BYTES: usize = 256;

/// Checks a record key: non-empty, at most [`MAX_RECORD_KEY_BYTES`], no control characters, no
/// `/` — the task-name rules with room for a `@<id>` suffix. Backends call it first.
///
/// # Errors
/// [`Error::InvalidArgument`] naming the rule.
pub fn check_record_key(kind: RecordKind, key: &str) -> Result<()> {
    let reason = if key.is_empty() {
        "must not be empty"
    } else if key.len() > MAX_RECORD_KEY_BYTES {
        "must be at most 256 bytes"
    } else if key.chars().any(char::is_control) {
        "must not contain control characters"
    } else if key.contains('/') {
        "must not contain `/`"
    } else {
        return Ok(());
    };
    Err(Error::InvalidArgument(format!(
        "{kind} record key `{}` {reason}",
        key.chars().take(64).collect::<String>()
    )))
}

/// Checks a batch for [`Registry::put_records`]: every key and every value size.
///
/// # Errors
/// As [`check_record_key`], and [`Error::InvalidArgument`] for a value over `caps`.
pub fn check_records(
    kind: RecordKind,
    records: &[(String, Vec<u8>)],
    caps: &Capabilities,
) -> Result<()> {
    for (key, value) in records {
        check_record_key(kind, key)?;
        if value.len() > caps.max_value_bytes {
            return Err(Error::InvalidArgument(format!(
                "{kind} record `{key}` is {} bytes; this registry stores at most {} bytes",
                value.len(),
                caps.max_value_bytes
            )));
        }
    }
    Ok(())
}

fn records_unsupported(backend: &'static str) -> Error {
    tracing::debug!(backend, "registry without record support");
    Error::Unsupported {
        operation: "records (pause, trigger-now, task status)",
    }
}

/// Checks the arguments of [`Registry::register`]: a non-zero TTL and a non-empty node id.
/// Backends call it first, so every registry refuses the same requests the same way.
///
/// # Errors
/// [`Error::InvalidArgument`] naming the rule.
pub fn check_registration(node: &Node, ttl: Duration) -> Result<()> {
    if node.id.is_empty() {
        return Err(Error::InvalidArgument(
            "the node id must not be empty".into(),
        ));
    }
    if ttl.is_zero() {
        return Err(Error::InvalidArgument(format!(
            "node `{}`: the lease TTL must not be zero",
            node.id
        )));
    }
    Ok(())
}

/// Checks the retention of [`Registry::claim`]: it must not be zero.
///
/// # Errors
/// [`Error::InvalidArgument`].
pub fn check_retention(retention: Duration) -> Result<()> {
    if retention.is_zero() {
        return Err(Error::InvalidArgument(
            "the claim retention must not be zero".into(),
        ));
    }
    Ok(())
}

/// Checks a record against [`Capabilities::max_value_bytes`]; backends call it before writing.
///
/// # Errors
/// [`Error::InvalidArgument`] naming the task and both sizes.
pub fn check_value_size(meta: &TaskMeta, encoded_len: usize, caps: &Capabilities) -> Result<()> {
    if encoded_len > caps.max_value_bytes {
        return Err(Error::InvalidArgument(format!(
            "task `{}` record is {} bytes; this registry stores at most {} bytes",
            meta.name, encoded_len, caps.max_value_bytes
        )));
    }
    Ok(())
}
