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
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities {
            max_value_bytes: 1024 * 1024,
            watch: true,
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
