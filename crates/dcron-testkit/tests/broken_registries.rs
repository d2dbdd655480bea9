//! The suite can fail: registries with one deliberate contract violation each (the seed's
//! pitfalls among them) must fail the cases that guard that rule.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dcron_core::memory::MemoryRegistry;
use dcron_core::{
    Capabilities, Claim, ClaimOutcome, FireKey, Lease, Listing, Node, NodeEvent, PutMode, Registry,
    TaskMeta, TaskMetaEvent, Tombstone, WatchStream,
};
use dcron_testkit::{async_trait, cases, run_case, CaseError, MemoryFactory, RegistryFactory};
use futures::StreamExt;

/// One contract violation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// Every claim wins (no create-if-absent).
    ClaimAlwaysWins,
    /// Claims ignore tombstones.
    ClaimIgnoresTombstones,
    /// Status updates rewrite the node without its lease (the seed's dead-node-stays-working bug).
    UpdateDetachesLease,
    /// Listing stops after 100 tasks (the seed's pagination bug), nodes and claims after 200.
    ListStopsAt100,
    /// Create-only overwrites.
    CreateOnlyOverwrites,
    /// Every namespace is the same.
    NoNamespaces,
    /// The task watch silently drops every seventh event.
    WatchDropsEvents,
    /// `keep_alive` never reports a lost lease.
    KeepAliveNeverLost,
    /// A corrupt record reads as absent.
    CorruptReadsAsAbsent,
    /// `mark_deleted` overwrites the first deletion time.
    MarkDeletedOverwrites,
    /// `cleanup_task` leaves the claims.
    CleanupKeepsClaims,
    /// Declares watches unsupported but serves them anyway.
    WatchDeclaredUnsupportedButWorks,
    /// Honestly without watches (not a fault: the watch cases must be skipped).
    NoWatches,
}

#[derive(Debug)]
struct Broken {
    inner: MemoryRegistry,
    fault: Fault,
    tokens: AtomicU64,
}

#[async_trait]
impl Registry for Broken {
    fn backend(&self) -> &'static str {
        "broken"
    }
    fn capabilities(&self) -> Capabilities {
        let mut caps = self.inner.capabilities();
        if matches!(
            self.fault,
            Fault::WatchDeclaredUnsupportedButWorks | Fault::NoWatches
        ) {
            caps.watch = false;
        }
        caps
    }
    async fn register(&self, node: &Node, ttl: Duration) -> dcron_core::Result<Lease> {
        self.inner.register(node, ttl).await
    }
    async fn keep_alive(&self, lease: &Lease) -> dcron_core::Result<()> {
        match (self.fault, self.inner.keep_alive(lease).await) {
            (Fault::KeepAliveNeverLost, Err(dcron_core::Error::LeaseLost { .. })) => Ok(()),
            (_, r) => r,
        }
    }
    async fn update_node(&self, lease: &Lease, node: &Node) -> dcron_core::Result<()> {
        if self.fault == Fault::UpdateDetachesLease {
            self.inner
                .register(node, Duration::from_secs(3600))
                .await
                .map(|_| ())
        } else {
            self.inner.update_node(lease, node).await
        }
    }
    async fn unregister(&self, lease: &Lease) -> dcron_core::Result<()> {
        self.inner.unregister(lease).await
    }
    async fn list_nodes(&self) -> dcron_core::Result<Listing<Node>> {
        let mut listing = self.inner.list_nodes().await?;
        if self.fault == Fault::ListStopsAt100 {
            listing.items.truncate(200);
        }
        Ok(listing)
    }
    async fn watch_nodes(&self) -> dcron_core::Result<WatchStream<NodeEvent>> {
        if self.fault == Fault::NoWatches {
            return Err(dcron_core::Error::Unsupported {
                operation: "watch_nodes",
            });
        }
        self.inner.watch_nodes().await
    }
    async fn put_task(&self, meta: &TaskMeta, mode: PutMode) -> dcron_core::Result<()> {
        let mode = match (self.fault, mode) {
            (Fault::CreateOnlyOverwrites, PutMode::CreateOnly) => PutMode::Force,
            (_, m) => m,
        };
        self.inner.put_task(meta, mode).await
    }
    async fn get_task(&self, name: &str) -> dcron_core::Result<Option<TaskMeta>> {
        match (self.fault, self.inner.get_task(name).await) {
            (Fault::CorruptReadsAsAbsent, Err(dcron_core::Error::Corrupt { .. })) => Ok(None),
            (_, r) => r,
        }
    }
    async fn list_tasks(&self) -> dcron_core::Result<Listing<TaskMeta>> {
        let mut listing = self.inner.list_tasks().await?;
        if self.fault == Fault::ListStopsAt100 {
            listing.items.truncate(100);
        }
        Ok(listing)
    }
    async fn watch_tasks(&self) -> dcron_core::Result<WatchStream<TaskMetaEvent>> {
        if self.fault == Fault::NoWatches {
            return Err(dcron_core::Error::Unsupported {
                operation: "watch_tasks",
            });
        }
        let stream = self.inner.watch_tasks().await?;
        if self.fault != Fault::WatchDropsEvents {
            return Ok(stream);
        }
        let mut seen = 0u64;
        Ok(stream
            .filter(move |_| {
                seen += 1;
                futures::future::ready(seen % 7 != 0)
            })
            .boxed())
    }
    async fn mark_deleted(&self, name: &str, at: DateTime<Utc>) -> dcron_core::Result<()> {
        if self.fault == Fault::MarkDeletedOverwrites {
            let _ = self.inner.clear_tombstone(name).await;
        }
        self.inner.mark_deleted(name, at).await
    }
    async fn get_tombstone(&self, name: &str) -> dcron_core::Result<Option<Tombstone>> {
        self.inner.get_tombstone(name).await
    }
    async fn list_tombstones(&self) -> dcron_core::Result<Listing<Tombstone>> {
        self.inner.list_tombstones().await
    }
    async fn clear_tombstone(&self, name: &str) -> dcron_core::Result<()> {
        self.inner.clear_tombstone(name).await
    }
    async fn cleanup_task(&self, name: &str) -> dcron_core::Result<()> {
        if self.fault == Fault::CleanupKeepsClaims {
            // Remove record and tombstone, then put the claims back.
            let claims = self.inner.list_claims(name).await?.items;
            self.inner.cleanup_task(name).await?;
            for c in claims {
                self.inner
                    .claim(&[c.fire], &c.node_id, Duration::from_secs(600))
                    .await?;
            }
            return Ok(());
        }
        self.inner.cleanup_task(name).await
    }
    async fn cleanup_all(&self) -> dcron_core::Result<()> {
        self.inner.cleanup_all().await
    }
    async fn claim(
        &self,
        fires: &[FireKey],
        node_id: &str,
        retention: Duration,
    ) -> dcron_core::Result<Vec<ClaimOutcome>> {
        match self.fault {
            Fault::ClaimAlwaysWins => {
                self.inner.claim(fires, node_id, retention).await?;
                Ok(fires
                    .iter()
                    .map(|_| ClaimOutcome::Won {
                        token: self.tokens.fetch_add(1, Ordering::Relaxed) + 1,
                    })
                    .collect())
            }
            Fault::ClaimIgnoresTombstones => {
                let mut out = Vec::new();
                for fire in fires {
                    let tomb = self.inner.get_tombstone(&fire.task).await?;
                    if let Some(t) = &tomb {
                        self.inner.clear_tombstone(&fire.task).await?;
                        out.extend(
                            self.inner
                                .claim(std::slice::from_ref(fire), node_id, retention)
                                .await?,
                        );
                        self.inner.mark_deleted(&t.name, t.deleted_at).await?;
                    } else {
                        out.extend(
                            self.inner
                                .claim(std::slice::from_ref(fire), node_id, retention)
                                .await?,
                        );
                    }
                }
                Ok(out)
            }
            _ => self.inner.claim(fires, node_id, retention).await,
        }
    }
    async fn list_claims(&self, task: &str) -> dcron_core::Result<Listing<Claim>> {
        let mut listing = self.inner.list_claims(task).await?;
        if self.fault == Fault::ListStopsAt100 {
            listing.items.truncate(200);
        }
        Ok(listing)
    }
}

struct BrokenFactory {
    store: MemoryRegistry,
    raw: MemoryFactory,
    fault: Fault,
}

#[async_trait]
impl RegistryFactory for BrokenFactory {
    fn name(&self) -> &'static str {
        "broken"
    }
    async fn open(&self, namespace: &str) -> dcron_core::Result<Arc<dyn Registry>> {
        let namespace = if self.fault == Fault::NoNamespaces {
            "shared"
        } else {
            namespace
        };
        Ok(Arc::new(Broken {
            inner: self.store.with_namespace(namespace),
            fault: self.fault,
            tokens: AtomicU64::new(0),
        }))
    }
    async fn write_raw_task(
        &self,
        namespace: &str,
        name: &str,
        bytes: &[u8],
    ) -> dcron_core::Result<()> {
        self.raw.write_raw_task(namespace, name, bytes).await
    }
}

fn broken(fault: Fault) -> BrokenFactory {
    let store = MemoryRegistry::new();
    BrokenFactory {
        raw: MemoryFactory::on_store(&store),
        store,
        fault,
    }
}

async fn must_fail(fault: Fault, case_paths: &[&str]) {
    let all = cases();
    for path in case_paths {
        let case = all
            .iter()
            .find(|c| c.path() == *path)
            .unwrap_or_else(|| panic!("no case {path}"));
        match run_case(Arc::new(broken(fault)), case).await {
            Err(CaseError::Failed(msg)) => println!("{fault:?} caught by {path}: {msg}"),
            other => panic!("{fault:?} was not caught by {path}: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_is_caught() {
    // The faults run one after another; each case gets its own store.
    must_fail(
        Fault::ClaimAlwaysWins,
        &[
            "claims::sixteen_claimers_one_winner_per_fire",
            "claims::concurrent_overlapping_batches",
            "claims::batch_mixed_outcomes_in_order",
            "claims::claims_outlive_the_handler",
        ],
    )
    .await;
    must_fail(
        Fault::ClaimIgnoresTombstones,
        &[
            "claims::tombstoned_task_answers_tombstoned",
            "claims::mark_deleted_races_claimers",
        ],
    )
    .await;
    must_fail(
        Fault::UpdateDetachesLease,
        &[
            "membership::update_node_keeps_the_lease",
            "membership::keep_alive_and_update_race_keeps_the_lease",
        ],
    )
    .await;
    must_fail(
        Fault::ListStopsAt100,
        &[
            "tasks::list_two_thousand_tasks",
            "membership::list_many_nodes",
            "claims::list_claims_lists_a_thousand",
        ],
    )
    .await;
    must_fail(
        Fault::CreateOnlyOverwrites,
        &[
            "tasks::create_only_refuses_existing",
            "tasks::concurrent_create_only_one_wins",
        ],
    )
    .await;
    must_fail(
        Fault::NoNamespaces,
        &[
            "namespace::tasks_are_isolated",
            "namespace::claims_are_isolated",
            "namespace::nodes_are_isolated",
            "namespace::cleanup_all_stays_in_its_namespace",
            "namespace::watches_are_isolated",
        ],
    )
    .await;
    must_fail(Fault::WatchDropsEvents, &["watch::late_reader_converges"]).await;
    must_fail(
        Fault::KeepAliveNeverLost,
        &["membership::keep_alive_after_expiry_is_lease_lost"],
    )
    .await;
    must_fail(
        Fault::CorruptReadsAsAbsent,
        &["corrupt::get_corrupt_is_corrupt_error"],
    )
    .await;
    must_fail(
        Fault::MarkDeletedOverwrites,
        &[
            "tombstones::mark_deleted_is_idempotent",
            "tombstones::concurrent_mark_deleted_keeps_one_time",
        ],
    )
    .await;
    must_fail(
        Fault::WatchDeclaredUnsupportedButWorks,
        &["watch::watch_capability_is_honest"],
    )
    .await;
    must_fail(
        Fault::CleanupKeepsClaims,
        &[
            "tombstones::cleanup_removes_every_trace",
            "claims::cleanup_frees_claims",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_without_watches_skips_the_watch_cases() {
    let watch_cases: Vec<_> = cases()
        .into_iter()
        .filter(|c| c.requires == dcron_testkit::Requirement::Watch)
        .collect();
    assert!(watch_cases.len() >= 8);
    for case in &watch_cases {
        match run_case(Arc::new(broken(Fault::NoWatches)), case).await {
            Err(CaseError::Skipped(reason)) => assert!(reason.contains("watch"), "{reason}"),
            other => panic!("{}: expected a skip, got {other:?}", case.path()),
        }
    }
}
