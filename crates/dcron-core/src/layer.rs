//! Wrapping a registry without forwarding every method by hand.
//!
//! A wrapper (metrics, fault injection, access checks, a test double that changes one answer)
//! implements [`RegistryLayer`]: it names the registry it wraps and overrides only the methods
//! it changes; every other method forwards to the inner registry. [`Layered`] turns such a
//! layer into a [`Registry`]. A method added to the trait later forwards by default, so a
//! wrapper never silently answers `Unsupported` for it.
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use dcron_core::layer::{Layered, RegistryLayer};
//! use dcron_core::{
//!     async_trait, ClaimOutcome, ClaimRequest, Claimant, MemoryRegistry, Registry, Result,
//! };
//!
//! /// Counts claim batches, changes nothing else.
//! #[derive(Debug)]
//! struct Counting {
//!     inner: MemoryRegistry,
//!     batches: AtomicUsize,
//! }
//!
//! #[async_trait]
//! impl RegistryLayer for Counting {
//!     fn inner(&self) -> &dyn Registry {
//!         &self.inner
//!     }
//!     async fn claim(&self, who: &Claimant, fires: &[ClaimRequest]) -> Result<Vec<ClaimOutcome>> {
//!         self.batches.fetch_add(1, Ordering::Relaxed);
//!         self.inner.claim(who, fires).await
//!     }
//! }
//!
//! let registry: Arc<dyn Registry> = Arc::new(Layered(Counting {
//!     inner: MemoryRegistry::new(),
//!     batches: AtomicUsize::new(0),
//! }));
//! assert_eq!(registry.backend(), "memory");
//! ```

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::error::Result;
use crate::registry::{Capabilities, Lease, PutMode, RecordKind, Registry, WatchStream};
use crate::types::{
    Claim, ClaimOutcome, ClaimRequest, Claimant, FireKey, Life, Listing, Node, NodeEvent,
    SlotOutcome, TaskMeta, TaskMetaEvent, Tombstone,
};

/// A registry wrapper: names the registry it wraps; every method forwards to it unless
/// overridden. Wrap it in [`Layered`] to use it as a [`Registry`].
#[async_trait]
pub trait RegistryLayer: Send + Sync + std::fmt::Debug + 'static {
    /// The wrapped registry.
    fn inner(&self) -> &dyn Registry;

    /// The backend's name (see [`Registry::backend`]).
    fn backend(&self) -> &'static str {
        self.inner().backend()
    }

    /// The backend's capabilities (see [`Registry::capabilities`]).
    fn capabilities(&self) -> Capabilities {
        self.inner().capabilities()
    }

    /// Registers a node (see [`Registry::register`]).
    async fn register(&self, node: &Node, ttl: Duration) -> Result<Lease> {
        self.inner().register(node, ttl).await
    }

    /// Renews a lease (see [`Registry::keep_alive`]).
    async fn keep_alive(&self, lease: &Lease) -> Result<()> {
        self.inner().keep_alive(lease).await
    }

    /// Rewrites a node record (see [`Registry::update_node`]).
    async fn update_node(&self, lease: &Lease, node: &Node) -> Result<()> {
        self.inner().update_node(lease, node).await
    }

    /// Unregisters a node (see [`Registry::unregister`]).
    async fn unregister(&self, lease: &Lease) -> Result<()> {
        self.inner().unregister(lease).await
    }

    /// Lists the nodes (see [`Registry::list_nodes`]).
    async fn list_nodes(&self) -> Result<Listing<Node>> {
        self.inner().list_nodes().await
    }

    /// Watches the nodes (see [`Registry::watch_nodes`]).
    async fn watch_nodes(&self) -> Result<WatchStream<NodeEvent>> {
        self.inner().watch_nodes().await
    }

    /// Stores a task record (see [`Registry::put_task`]).
    async fn put_task(&self, meta: &TaskMeta, mode: PutMode) -> Result<()> {
        self.inner().put_task(meta, mode).await
    }

    /// Reads a task record (see [`Registry::get_task`]).
    async fn get_task(&self, name: &str) -> Result<Option<TaskMeta>> {
        self.inner().get_task(name).await
    }

    /// Lists the task records (see [`Registry::list_tasks`]).
    async fn list_tasks(&self) -> Result<Listing<TaskMeta>> {
        self.inner().list_tasks().await
    }

    /// Watches the tasks (see [`Registry::watch_tasks`]).
    async fn watch_tasks(&self) -> Result<WatchStream<TaskMetaEvent>> {
        self.inner().watch_tasks().await
    }

    /// Marks a name deleted (see [`Registry::mark_deleted`]).
    async fn mark_deleted(&self, name: &str, at: DateTime<Utc>) -> Result<()> {
        self.inner().mark_deleted(name, at).await
    }

    /// Reads a tombstone (see [`Registry::get_tombstone`]).
    async fn get_tombstone(&self, name: &str) -> Result<Option<Tombstone>> {
        self.inner().get_tombstone(name).await
    }

    /// Lists the tombstones (see [`Registry::list_tombstones`]).
    async fn list_tombstones(&self) -> Result<Listing<Tombstone>> {
        self.inner().list_tombstones().await
    }

    /// Clears a tombstone (see [`Registry::clear_tombstone`]).
    async fn clear_tombstone(&self, name: &str) -> Result<()> {
        self.inner().clear_tombstone(name).await
    }

    /// Removes a name (see [`Registry::cleanup_task`]).
    async fn cleanup_task(&self, name: &str) -> Result<()> {
        self.inner().cleanup_task(name).await
    }

    /// Removes every name (see [`Registry::cleanup_all`]).
    async fn cleanup_all(&self) -> Result<()> {
        self.inner().cleanup_all().await
    }

    /// Reads or starts lives (see [`Registry::ensure_lives`]).
    async fn ensure_lives(&self, names: &[(String, DateTime<Utc>)]) -> Result<Vec<Life>> {
        self.inner().ensure_lives(names).await
    }

    /// Starts a new life (see [`Registry::restart_life`]).
    async fn restart_life(&self, name: &str, at: DateTime<Utc>) -> Result<Life> {
        self.inner().restart_life(name, at).await
    }

    /// Claims fires (see [`Registry::claim`]).
    async fn claim(
        &self,
        claimant: &Claimant,
        requests: &[ClaimRequest],
    ) -> Result<Vec<ClaimOutcome>> {
        self.inner().claim(claimant, requests).await
    }

    /// Lists a task's claims (see [`Registry::list_claims`]).
    async fn list_claims(&self, task: &str) -> Result<Listing<Claim>> {
        self.inner().list_claims(task).await
    }

    /// Takes a running slot (see [`Registry::acquire_slot`]).
    async fn acquire_slot(&self, lease: &Lease, fire: &FireKey) -> Result<SlotOutcome> {
        self.inner().acquire_slot(lease, fire).await
    }

    /// Frees a running slot (see [`Registry::release_slot`]).
    async fn release_slot(&self, lease: &Lease, fire: &FireKey) -> Result<()> {
        self.inner().release_slot(lease, fire).await
    }

    /// Writes records (see [`Registry::put_records`]).
    async fn put_records(&self, kind: RecordKind, records: &[(String, Vec<u8>)]) -> Result<()> {
        self.inner().put_records(kind, records).await
    }

    /// Reads a record (see [`Registry::get_record`]).
    async fn get_record(&self, kind: RecordKind, key: &str) -> Result<Option<Vec<u8>>> {
        self.inner().get_record(kind, key).await
    }

    /// Lists records (see [`Registry::list_records`]).
    async fn list_records(&self, kind: RecordKind) -> Result<Vec<(String, Vec<u8>)>> {
        self.inner().list_records(kind).await
    }

    /// Deletes a record (see [`Registry::delete_record`]).
    async fn delete_record(&self, kind: RecordKind, key: &str) -> Result<bool> {
        self.inner().delete_record(kind, key).await
    }
}

/// A [`RegistryLayer`] used as a [`Registry`].
#[derive(Debug)]
pub struct Layered<L>(pub L);

#[async_trait]
impl<L: RegistryLayer> Registry for Layered<L> {
    fn backend(&self) -> &'static str {
        self.0.backend()
    }

    fn capabilities(&self) -> Capabilities {
        self.0.capabilities()
    }

    async fn register(&self, node: &Node, ttl: Duration) -> Result<Lease> {
        self.0.register(node, ttl).await
    }

    async fn keep_alive(&self, lease: &Lease) -> Result<()> {
        self.0.keep_alive(lease).await
    }

    async fn update_node(&self, lease: &Lease, node: &Node) -> Result<()> {
        self.0.update_node(lease, node).await
    }

    async fn unregister(&self, lease: &Lease) -> Result<()> {
        self.0.unregister(lease).await
    }

    async fn list_nodes(&self) -> Result<Listing<Node>> {
        self.0.list_nodes().await
    }

    async fn watch_nodes(&self) -> Result<WatchStream<NodeEvent>> {
        self.0.watch_nodes().await
    }

    async fn put_task(&self, meta: &TaskMeta, mode: PutMode) -> Result<()> {
        self.0.put_task(meta, mode).await
    }

    async fn get_task(&self, name: &str) -> Result<Option<TaskMeta>> {
        self.0.get_task(name).await
    }

    async fn list_tasks(&self) -> Result<Listing<TaskMeta>> {
        self.0.list_tasks().await
    }

    async fn watch_tasks(&self) -> Result<WatchStream<TaskMetaEvent>> {
        self.0.watch_tasks().await
    }

    async fn mark_deleted(&self, name: &str, at: DateTime<Utc>) -> Result<()> {
        self.0.mark_deleted(name, at).await
    }

    async fn get_tombstone(&self, name: &str) -> Result<Option<Tombstone>> {
        self.0.get_tombstone(name).await
    }

    async fn list_tombstones(&self) -> Result<Listing<Tombstone>> {
        self.0.list_tombstones().await
    }

    async fn clear_tombstone(&self, name: &str) -> Result<()> {
        self.0.clear_tombstone(name).await
    }

    async fn cleanup_task(&self, name: &str) -> Result<()> {
        self.0.cleanup_task(name).await
    }

    async fn cleanup_all(&self) -> Result<()> {
        self.0.cleanup_all().await
    }

    async fn ensure_lives(&self, names: &[(String, DateTime<Utc>)]) -> Result<Vec<Life>> {
        self.0.ensure_lives(names).await
    }

    async fn restart_life(&self, name: &str, at: DateTime<Utc>) -> Result<Life> {
        self.0.restart_life(name, at).await
    }

    async fn claim(
        &self,
        claimant: &Claimant,
        requests: &[ClaimRequest],
    ) -> Result<Vec<ClaimOutcome>> {
        self.0.claim(claimant, requests).await
    }

    async fn list_claims(&self, task: &str) -> Result<Listing<Claim>> {
        self.0.list_claims(task).await
    }

    async fn acquire_slot(&self, lease: &Lease, fire: &FireKey) -> Result<SlotOutcome> {
        self.0.acquire_slot(lease, fire).await
    }

    async fn release_slot(&self, lease: &Lease, fire: &FireKey) -> Result<()> {
        self.0.release_slot(lease, fire).await
    }

    async fn put_records(&self, kind: RecordKind, records: &[(String, Vec<u8>)]) -> Result<()> {
        self.0.put_records(kind, records).await
    }

    async fn get_record(&self, kind: RecordKind, key: &str) -> Result<Option<Vec<u8>>> {
        self.0.get_record(kind, key).await
    }

    async fn list_records(&self, kind: RecordKind) -> Result<Vec<(String, Vec<u8>)>> {
        self.0.list_records(kind).await
    }

    async fn delete_record(&self, kind: RecordKind, key: &str) -> Result<bool> {
        self.0.delete_record(kind, key).await
    }
}
