//! [`CountingRegistry`]: a [`Registry`] that forwards every call and counts it, so a run can
//! report registry round trips per fire.
//!
//! Every trait method is forwarded explicitly (including the ones with default bodies), so the
//! wrapped backend behaves exactly as without the wrapper.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use dcron_core::{
    Capabilities, Claim, ClaimOutcome, ClaimRequest, Claimant, FireKey, Lease, Life, Listing, Node,
    NodeEvent, PutMode, RecordKind, Registry, Result, SlotOutcome, TaskMeta, TaskMetaEvent,
    Tombstone, WatchStream,
};

/// The registry operations that are counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// `register`
    Register,
    /// `keep_alive`
    KeepAlive,
    /// `update_node`
    UpdateNode,
    /// `unregister`
    Unregister,
    /// `list_nodes`
    ListNodes,
    /// `watch_nodes`
    WatchNodes,
    /// `put_task`
    PutTask,
    /// `get_task`
    GetTask,
    /// `list_tasks`
    ListTasks,
    /// `watch_tasks`
    WatchTasks,
    /// `mark_deleted`
    MarkDeleted,
    /// `get_tombstone`
    GetTombstone,
    /// `list_tombstones`
    ListTombstones,
    /// `clear_tombstone`
    ClearTombstone,
    /// `cleanup_task`
    CleanupTask,
    /// `cleanup_all`
    CleanupAll,
    /// `ensure_lives` (one call per batch)
    EnsureLives,
    /// `restart_life`
    RestartLife,
    /// `claim` (one call per batch)
    Claim,
    /// `list_claims`
    ListClaims,
    /// `acquire_slot`
    AcquireSlot,
    /// `release_slot`
    ReleaseSlot,
    /// `put_records` (one call per batch)
    PutRecords,
    /// `get_record`
    GetRecord,
    /// `list_records`
    ListRecords,
    /// `delete_record`
    DeleteRecord,
}

impl Op {
    /// Every operation, in a fixed order.
    pub const ALL: [Op; 26] = [
        Op::Register,
        Op::KeepAlive,
        Op::UpdateNode,
        Op::Unregister,
        Op::ListNodes,
        Op::WatchNodes,
        Op::PutTask,
        Op::GetTask,
        Op::ListTasks,
        Op::WatchTasks,
        Op::MarkDeleted,
        Op::GetTombstone,
        Op::ListTombstones,
        Op::ClearTombstone,
        Op::CleanupTask,
        Op::CleanupAll,
        Op::EnsureLives,
        Op::RestartLife,
        Op::Claim,
        Op::ListClaims,
        Op::AcquireSlot,
        Op::ReleaseSlot,
        Op::PutRecords,
        Op::GetRecord,
        Op::ListRecords,
        Op::DeleteRecord,
    ];

    /// The trait method's name.
    pub fn name(self) -> &'static str {
        match self {
            Op::Register => "register",
            Op::KeepAlive => "keep_alive",
            Op::UpdateNode => "update_node",
            Op::Unregister => "unregister",
            Op::ListNodes => "list_nodes",
            Op::WatchNodes => "watch_nodes",
            Op::PutTask => "put_task",
            Op::GetTask => "get_task",
            Op::ListTasks => "list_tasks",
            Op::WatchTasks => "watch_tasks",
            Op::MarkDeleted => "mark_deleted",
            Op::GetTombstone => "get_tombstone",
            Op::ListTombstones => "list_tombstones",
            Op::ClearTombstone => "clear_tombstone",
            Op::CleanupTask => "cleanup_task",
            Op::CleanupAll => "cleanup_all",
            Op::EnsureLives => "ensure_lives",
            Op::RestartLife => "restart_life",
            Op::Claim => "claim",
            Op::ListClaims => "list_claims",
            Op::AcquireSlot => "acquire_slot",
            Op::ReleaseSlot => "release_slot",
            Op::PutRecords => "put_records",
            Op::GetRecord => "get_record",
            Op::ListRecords => "list_records",
            Op::DeleteRecord => "delete_record",
        }
    }

    fn index(self) -> usize {
        Op::ALL.iter().position(|&o| o == self).unwrap_or(0)
    }
}

/// One `claim` call: when it was sent and answered (wall clock, µs since the epoch) and how
/// many fires it carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClaimCall {
    /// Wall-clock µs when the call was made.
    pub start_us: i64,
    /// Wall-clock µs when its answer came back.
    pub end_us: i64,
    /// Fires in the batch.
    pub fires: usize,
}

/// The most claim calls [`Counters`] keeps in its log (the oldest are kept).
const CLAIM_LOG_LIMIT: usize = 100_000;

/// Call counters, shared by any number of [`CountingRegistry`] handles.
#[derive(Debug, Default)]
pub struct Counters {
    calls: [AtomicU64; Op::ALL.len()],
    claimed_fires: AtomicU64,
    claim_busy_ns: AtomicU64,
    claim_log: Mutex<Vec<ClaimCall>>,
}

/// A copy of the counters at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Calls per operation, in the order of [`Op::ALL`].
    pub calls: [u64; Op::ALL.len()],
    /// Fires sent in `claim` batches.
    pub claimed_fires: u64,
    /// Time spent inside `claim` calls, summed over calls (overlapping calls count twice), ns.
    pub claim_busy_ns: u64,
}

impl Snapshot {
    /// Calls of one operation.
    pub fn of(&self, op: Op) -> u64 {
        self.calls[op.index()]
    }

    /// Calls of every operation.
    pub fn total(&self) -> u64 {
        self.calls.iter().sum()
    }

    /// The counts since `earlier`.
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        let mut calls = [0; Op::ALL.len()];
        for (i, c) in calls.iter_mut().enumerate() {
            *c = self.calls[i].saturating_sub(earlier.calls[i]);
        }
        Snapshot {
            calls,
            claimed_fires: self.claimed_fires.saturating_sub(earlier.claimed_fires),
            claim_busy_ns: self.claim_busy_ns.saturating_sub(earlier.claim_busy_ns),
        }
    }
}

impl Counters {
    /// Fresh counters.
    pub fn new() -> Arc<Self> {
        Arc::new(Counters::default())
    }

    fn bump(&self, op: Op) {
        self.calls[op.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// The claim calls made from `from_us` (inclusive) to `to_us` (exclusive), wall clock µs,
    /// in the order they were answered.
    pub fn claim_calls(&self, from_us: i64, to_us: i64) -> Vec<ClaimCall> {
        let log = self.claim_log.lock().unwrap_or_else(|e| e.into_inner());
        log.iter()
            .filter(|c| c.start_us >= from_us && c.start_us < to_us)
            .copied()
            .collect()
    }

    fn log_claim(&self, call: ClaimCall) {
        let mut log = self.claim_log.lock().unwrap_or_else(|e| e.into_inner());
        if log.len() < CLAIM_LOG_LIMIT {
            log.push(call);
        }
    }

    /// The current counts.
    pub fn snapshot(&self) -> Snapshot {
        let mut calls = [0; Op::ALL.len()];
        for (i, c) in calls.iter_mut().enumerate() {
            *c = self.calls[i].load(Ordering::Relaxed);
        }
        Snapshot {
            calls,
            claimed_fires: self.claimed_fires.load(Ordering::Relaxed),
            claim_busy_ns: self.claim_busy_ns.load(Ordering::Relaxed),
        }
    }
}

fn wall_us() -> i64 {
    crate::recorder::now_us()
}

/// A registry that counts every call and forwards it to `inner`.
#[derive(Debug, Clone)]
pub struct CountingRegistry {
    inner: Arc<dyn Registry>,
    counters: Arc<Counters>,
}

impl CountingRegistry {
    /// Wraps `inner`, counting into `counters`.
    pub fn new(inner: Arc<dyn Registry>, counters: Arc<Counters>) -> Self {
        CountingRegistry { inner, counters }
    }

    /// The counters this wrapper counts into.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }
}

#[async_trait]
impl Registry for CountingRegistry {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn register(&self, node: &Node, ttl: Duration) -> Result<Lease> {
        self.counters.bump(Op::Register);
        self.inner.register(node, ttl).await
    }

    async fn keep_alive(&self, lease: &Lease) -> Result<()> {
        self.counters.bump(Op::KeepAlive);
        self.inner.keep_alive(lease).await
    }

    async fn update_node(&self, lease: &Lease, node: &Node) -> Result<()> {
        self.counters.bump(Op::UpdateNode);
        self.inner.update_node(lease, node).await
    }

    async fn unregister(&self, lease: &Lease) -> Result<()> {
        self.counters.bump(Op::Unregister);
        self.inner.unregister(lease).await
    }

    async fn list_nodes(&self) -> Result<Listing<Node>> {
        self.counters.bump(Op::ListNodes);
        self.inner.list_nodes().await
    }

    async fn watch_nodes(&self) -> Result<WatchStream<NodeEvent>> {
        self.counters.bump(Op::WatchNodes);
        self.inner.watch_nodes().await
    }

    async fn put_task(&self, meta: &TaskMeta, mode: PutMode) -> Result<()> {
        self.counters.bump(Op::PutTask);
        self.inner.put_task(meta, mode).await
    }

    async fn get_task(&self, name: &str) -> Result<Option<TaskMeta>> {
        self.counters.bump(Op::GetTask);
        self.inner.get_task(name).await
    }

    async fn list_tasks(&self) -> Result<Listing<TaskMeta>> {
        self.counters.bump(Op::ListTasks);
        self.inner.list_tasks().await
    }

    async fn watch_tasks(&self) -> Result<WatchStream<TaskMetaEvent>> {
        self.counters.bump(Op::WatchTasks);
        self.inner.watch_tasks().await
    }

    async fn mark_deleted(&self, name: &str, at: DateTime<Utc>) -> Result<()> {
        self.counters.bump(Op::MarkDeleted);
        self.inner.mark_deleted(name, at).await
    }

    async fn get_tombstone(&self, name: &str) -> Result<Option<Tombstone>> {
        self.counters.bump(Op::GetTombstone);
        self.inner.get_tombstone(name).await
    }

    async fn list_tombstones(&self) -> Result<Listing<Tombstone>> {
        self.counters.bump(Op::ListTombstones);
        self.inner.list_tombstones().await
    }

    async fn clear_tombstone(&self, name: &str) -> Result<()> {
        self.counters.bump(Op::ClearTombstone);
        self.inner.clear_tombstone(name).await
    }

    async fn cleanup_task(&self, name: &str) -> Result<()> {
        self.counters.bump(Op::CleanupTask);
        self.inner.cleanup_task(name).await
    }

    async fn cleanup_all(&self) -> Result<()> {
        self.counters.bump(Op::CleanupAll);
        self.inner.cleanup_all().await
    }

    async fn ensure_lives(&self, names: &[(String, DateTime<Utc>)]) -> Result<Vec<Life>> {
        self.counters.bump(Op::EnsureLives);
        self.inner.ensure_lives(names).await
    }

    async fn restart_life(&self, name: &str, at: DateTime<Utc>) -> Result<Life> {
        self.counters.bump(Op::RestartLife);
        self.inner.restart_life(name, at).await
    }

    async fn claim(
        &self,
        claimant: &Claimant,
        requests: &[ClaimRequest],
    ) -> Result<Vec<ClaimOutcome>> {
        self.counters.bump(Op::Claim);
        self.counters
            .claimed_fires
            .fetch_add(requests.len() as u64, Ordering::Relaxed);
        let start_us = wall_us();
        let started = std::time::Instant::now();
        let outcome = self.inner.claim(claimant, requests).await;
        let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.counters.claim_busy_ns.fetch_add(ns, Ordering::Relaxed);
        self.counters.log_claim(ClaimCall {
            start_us,
            end_us: wall_us(),
            fires: requests.len(),
        });
        outcome
    }

    async fn list_claims(&self, task: &str) -> Result<Listing<Claim>> {
        self.counters.bump(Op::ListClaims);
        self.inner.list_claims(task).await
    }

    async fn acquire_slot(&self, lease: &Lease, fire: &FireKey) -> Result<SlotOutcome> {
        self.counters.bump(Op::AcquireSlot);
        self.inner.acquire_slot(lease, fire).await
    }

    async fn release_slot(&self, lease: &Lease, fire: &FireKey) -> Result<()> {
        self.counters.bump(Op::ReleaseSlot);
        self.inner.release_slot(lease, fire).await
    }

    async fn put_records(&self, kind: RecordKind, records: &[(String, Vec<u8>)]) -> Result<()> {
        self.counters.bump(Op::PutRecords);
        self.inner.put_records(kind, records).await
    }

    async fn get_record(&self, kind: RecordKind, key: &str) -> Result<Option<Vec<u8>>> {
        self.counters.bump(Op::GetRecord);
        self.inner.get_record(kind, key).await
    }

    async fn list_records(&self, kind: RecordKind) -> Result<Vec<(String, Vec<u8>)>> {
        self.counters.bump(Op::ListRecords);
        self.inner.list_records(kind).await
    }

    async fn delete_record(&self, kind: RecordKind, key: &str) -> Result<bool> {
        self.counters.bump(Op::DeleteRecord);
        self.inner.delete_record(kind, key).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dcron_core::MemoryRegistry;

    #[tokio::test]
    async fn counts_and_forwards() {
        let counters = Counters::new();
        let reg = CountingRegistry::new(Arc::new(MemoryRegistry::new()), counters.clone());
        let before = counters.snapshot();
        let now = Utc::now();
        let lives = reg
            .ensure_lives(&[("a".into(), now), ("b".into(), now)])
            .await
            .unwrap();
        let requests: Vec<ClaimRequest> = ["a", "b"]
            .iter()
            .zip(&lives)
            .map(|(task, life)| {
                ClaimRequest::new(
                    dcron_core::FireKey::new(*task, now),
                    life.generation,
                    now + chrono::Duration::seconds(60),
                    Duration::from_secs(60),
                )
            })
            .collect();
        let won = reg.claim(&Claimant::new("n1", 1), &requests).await.unwrap();
        assert!(won.iter().all(|o| o.is_won()));
        let lost = reg
            .claim(&Claimant::new("n2", 1), &requests[..1])
            .await
            .unwrap();
        assert_eq!(
            lost,
            vec![ClaimOutcome::Lost {
                holder: Some("n1".into())
            }]
        );
        let restarted = reg.restart_life("a", now).await.unwrap();
        assert!(restarted.generation > lives[0].generation);
        assert!(reg.list_nodes().await.unwrap().items.is_empty());
        let d = counters.snapshot().since(&before);
        assert_eq!(d.of(Op::EnsureLives), 1);
        assert_eq!(d.of(Op::RestartLife), 1);
        assert_eq!(d.of(Op::Claim), 2);
        assert_eq!(d.claimed_fires, 3);
        assert!(d.claim_busy_ns > 0);
        assert_eq!(d.of(Op::ListNodes), 1);
        assert_eq!(d.total(), 5);
        assert_eq!(reg.backend(), "memory");
    }
}
