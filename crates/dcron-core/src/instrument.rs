//! Metrics and tracing around every registry call.
//!
//! A `Dcron` node wraps its registry in [`InstrumentedRegistry`], so every call is timed into
//! `dcron_registry_call_seconds{backend, op}`, every failure counted in
//! `dcron_registry_errors_total{backend, op, kind}`, and traced in a `dcron.registry` span with
//! the fields `backend`, `op` and (for claims and record batches) `items`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tracing::Instrument;

use crate::error::{Error, Result};
use crate::registry::{Capabilities, Lease, PutMode, RecordKind, Registry, WatchStream};
use crate::types::{
    Claim, ClaimOutcome, ClaimRequest, Claimant, FireKey, Life, Listing, Node, NodeEvent,
    SlotOutcome, TaskMeta, TaskMetaEvent, Tombstone,
};

/// A registry that records metrics and a tracing span for each call to the one it wraps.
#[derive(Debug, Clone)]
pub struct InstrumentedRegistry {
    inner: Arc<dyn Registry>,
}

impl InstrumentedRegistry {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Registry>) -> Self {
        InstrumentedRegistry { inner }
    }

    async fn call<T, F>(&self, op: &'static str, items: usize, f: F) -> Result<T>
    where
        F: Future<Output = Result<T>>,
    {
        let backend = self.inner.backend();
        let span = tracing::debug_span!("dcron.registry", backend, op, items);
        let t0 = tokio::time::Instant::now();
        let r = f.instrument(span).await;
        let elapsed = t0.elapsed();
        metrics::histogram!("dcron_registry_call_seconds", "backend" => backend, "op" => op)
            .record(elapsed.as_secs_f64());
        if let Err(e) = &r {
            metrics::counter!(
                "dcron_registry_errors_total",
                "backend" => backend,
                "op" => op,
                "kind" => error_kind(e)
            )
            .increment(1);
        }
        r
    }
}

/// A short, stable label for an error: `unavailable`, `lease_lost`, `corrupt`, …
pub fn error_kind(e: &Error) -> &'static str {
    match e {
        Error::AlreadyExists { .. } => "already_exists",
        Error::Tombstoned { .. } => "tombstoned",
        Error::NotFound { .. } => "not_found",
        Error::LeaseLost { .. } => "lease_lost",
        Error::InvalidSchedule { .. } => "invalid_schedule",
        Error::InvalidTimeZone { .. } => "invalid_time_zone",
        Error::InvalidTaskName { .. } => "invalid_task_name",
        Error::InvalidArgument(_) => "invalid_argument",
        Error::Unavailable { .. } => "unavailable",
        Error::Unsupported { .. } => "unsupported",
        Error::Corrupt { .. } => "corrupt",
        Error::AccessDenied { .. } => "access_denied",
        Error::Timeout { .. } => "timeout",
        _ => "other",
    }
}

#[async_trait]
impl Registry for InstrumentedRegistry {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn register(&self, node: &Node, ttl: Duration) -> Result<Lease> {
        self.call("register", 1, self.inner.register(node, ttl))
            .await
    }

    async fn keep_alive(&self, lease: &Lease) -> Result<()> {
        self.call("keep_alive", 1, self.inner.keep_alive(lease))
            .await
    }

    async fn update_node(&self, lease: &Lease, node: &Node) -> Result<()> {
        self.call("update_node", 1, self.inner.update_node(lease, node))
            .await
    }

    async fn unregister(&self, lease: &Lease) -> Result<()> {
        self.call("unregister", 1, self.inner.unregister(lease))
            .await
    }

    async fn list_nodes(&self) -> Result<Listing<Node>> {
        self.call("list_nodes", 0, self.inner.list_nodes()).await
    }

    async fn watch_nodes(&self) -> Result<WatchStream<NodeEvent>> {
        self.call("watch_nodes", 0, self.inner.watch_nodes()).await
    }

    async fn put_task(&self, meta: &TaskMeta, mode: PutMode) -> Result<()> {
        self.call("put_task", 1, self.inner.put_task(meta, mode))
            .await
    }

    async fn get_task(&self, name: &str) -> Result<Option<TaskMeta>> {
        self.call("get_task", 1, self.inner.get_task(name)).await
    }

    async fn list_tasks(&self) -> Result<Listing<TaskMeta>> {
        self.call("list_tasks", 0, self.inner.list_tasks()).await
    }

    async fn watch_tasks(&self) -> Result<WatchStream<TaskMetaEvent>> {
        self.call("watch_tasks", 0, self.inner.watch_tasks()).await
    }

    async fn mark_deleted(&self, name: &str, at: DateTime<Utc>) -> Result<()> {
        self.call("mark_deleted", 1, self.inner.mark_deleted(name, at))
            .await
    }

    async fn get_tombstone(&self, name: &str) -> Result<Option<Tombstone>> {
        self.call("get_tombstone", 1, self.inner.get_tombstone(name))
            .await
    }

    async fn list_tombstones(&self) -> Result<Listing<Tombstone>> {
        self.call("list_tombstones", 0, self.inner.list_tombstones())
            .await
    }

    async fn clear_tombstone(&self, name: &str) -> Result<()> {
        self.call("clear_tombstone", 1, self.inner.clear_tombstone(name))
            .await
    }

    async fn cleanup_task(&self, name: &str) -> Result<()> {
        self.call("cleanup_task", 1, self.inner.cleanup_task(name))
            .await
    }

    async fn cleanup_all(&self) -> Result<()> {
        self.call("cleanup_all", 0, self.inner.cleanup_all()).await
    }

    async fn ensure_lives(&self, names: &[(String, DateTime<Utc>)]) -> Result<Vec<Life>> {
        self.call("ensure_lives", names.len(), self.inner.ensure_lives(names))
            .await
    }

    async fn restart_life(&self, name: &str, at: DateTime<Utc>) -> Result<Life> {
        self.call("restart_life", 1, self.inner.restart_life(name, at))
            .await
    }

    async fn claim(
        &self,
        claimant: &Claimant,
        requests: &[ClaimRequest],
    ) -> Result<Vec<ClaimOutcome>> {
        self.call(
            "claim",
            requests.len(),
            self.inner.claim(claimant, requests),
        )
        .await
    }

    async fn list_claims(&self, task: &str) -> Result<Listing<Claim>> {
        self.call("list_claims", 1, self.inner.list_claims(task))
            .await
    }

    async fn acquire_slot(&self, lease: &Lease, fire: &FireKey) -> Result<SlotOutcome> {
        self.call("acquire_slot", 1, self.inner.acquire_slot(lease, fire))
            .await
    }

    async fn release_slot(&self, lease: &Lease, fire: &FireKey) -> Result<()> {
        self.call("release_slot", 1, self.inner.release_slot(lease, fire))
            .await
    }

    async fn put_records(&self, kind: RecordKind, records: &[(String, Vec<u8>)]) -> Result<()> {
        self.call(
            "put_records",
            records.len(),
            self.inner.put_records(kind, records),
        )
        .await
    }

    async fn get_record(&self, kind: RecordKind, key: &str) -> Result<Option<Vec<u8>>> {
        self.call("get_record", 1, self.inner.get_record(kind, key))
            .await
    }

    async fn list_records(&self, kind: RecordKind) -> Result<Vec<(String, Vec<u8>)>> {
        self.call("list_records", 0, self.inner.list_records(kind))
            .await
    }

    async fn delete_record(&self, kind: RecordKind, key: &str) -> Result<bool> {
        self.call("delete_record", 1, self.inner.delete_record(kind, key))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryRegistry;

    #[tokio::test]
    async fn forwards_every_call_and_labels_errors() {
        let reg = InstrumentedRegistry::new(Arc::new(MemoryRegistry::new()));
        assert_eq!(reg.backend(), "memory");
        assert!(reg.capabilities().records);
        let t0 = DateTime::<Utc>::UNIX_EPOCH;
        let mut meta = TaskMeta::new("a", "@hourly");
        meta.created_at = Some(t0);
        reg.put_task(&meta, PutMode::CreateOnly)
            .await
            .expect("puts");
        let again = reg
            .put_task(&meta, PutMode::CreateOnly)
            .await
            .expect_err("exists");
        assert_eq!(error_kind(&again), "already_exists");
        assert_eq!(reg.list_tasks().await.expect("lists").items.len(), 1);
        let life = reg.ensure_lives(&[("a".into(), t0)]).await.expect("life")[0];
        let restarted = reg.restart_life("a", t0).await.expect("restart");
        assert!(restarted.generation > life.generation);
        let out = reg
            .claim(
                &Claimant::new("n", 1),
                &[ClaimRequest::new(
                    crate::types::FireKey::new("a", t0),
                    restarted.generation,
                    t0,
                    Duration::from_secs(60),
                )],
            )
            .await
            .expect("claims");
        assert!(matches!(out[..], [ClaimOutcome::Won { .. }]));
        reg.put_records(RecordKind::Pause, &[("a".into(), b"x".to_vec())])
            .await
            .expect("writes");
        assert!(reg
            .delete_record(RecordKind::Pause, "a")
            .await
            .expect("deletes"));
    }
}
