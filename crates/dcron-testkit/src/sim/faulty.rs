//! [`FaultyRegistry`]: a [`Registry`] that wraps the shared [`MemoryRegistry`] and injects the
//! faults of one simulated node.
//!
//! Each node process gets its own wrapper; the wrappers of one slot share that slot's
//! [`SlotFaults`] (a restarted process sits on the same, possibly still cut, network), and each
//! process has its own liveness flag (a crashed process makes no more calls and gets no more
//! replies). Every fault answers [`Error::Unavailable`], the error a real client reports for a
//! network problem. Random choices (which call fails, which reply is lost) are a hash of the
//! seed, the slot and the slot's call counter, so a replay makes the same choices.
//!
//! The wrapper also keeps the [`ClaimLog`]: the registry's own record of every claim it granted
//! and whether the winner heard about it, which tells a lost fire (a claim won by a node that
//! never ran it: crashed or lost the reply) from a miss.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use dcron_core::memory::MemoryRegistry;
use dcron_core::{
    Capabilities, Claim, ClaimOutcome, ClaimRequest, Claimant, Error, FireKey, Lease, Life,
    Listing, Node, NodeEvent, PutMode, RecordKind, Registry, Result, SlotOutcome, TaskMeta,
    TaskMetaEvent, Tombstone, WatchStream,
};
use futures::StreamExt;
use tokio::sync::watch;

use super::rng::{mix, unit};

/// The faults currently in force on one node slot.
#[derive(Debug)]
pub struct SlotFaults {
    slot: u64,
    seed: u64,
    /// Nesting count of partitions in force.
    partitions: AtomicU64,
    latency_ms: AtomicU64,
    drop_percent: AtomicU64,
    fail_percent: AtomicU64,
    calls: AtomicU64,
    /// Bumped when the slot is cut off, so open watch streams end.
    cut: watch::Sender<u64>,
    /// While set, the slot's process is frozen: every call it starts waits, before reaching
    /// the registry, until the freeze ends (a GC pause, SIGSTOP, a VM freeze).
    frozen: watch::Sender<bool>,
}

impl SlotFaults {
    /// No fault in force.
    pub fn new(seed: u64, slot: usize) -> Self {
        SlotFaults {
            slot: slot as u64,
            seed,
            partitions: AtomicU64::new(0),
            latency_ms: AtomicU64::new(0),
            drop_percent: AtomicU64::new(0),
            fail_percent: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            cut: watch::Sender::new(0),
            frozen: watch::Sender::new(false),
        }
    }

    /// Freezes (`true`) or thaws (`false`) the slot's process.
    pub fn freeze(&self, on: bool) {
        self.frozen.send_replace(on);
    }

    /// Waits while the slot is frozen.
    async fn thawed(&self) {
        let mut rx = self.frozen.subscribe();
        let _ = rx.wait_for(|frozen| !*frozen).await;
    }

    /// Starts (`true`) or ends (`false`) one partition; partitions nest.
    pub fn partition(&self, on: bool) {
        if on {
            self.partitions.fetch_add(1, Ordering::SeqCst);
            self.cut.send_modify(|v| *v += 1);
        } else {
            let _ = self
                .partitions
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1));
        }
    }

    /// Whether the slot is cut off from the registry.
    pub fn partitioned(&self) -> bool {
        self.partitions.load(Ordering::SeqCst) > 0
    }

    /// Sets the added latency per call.
    pub fn set_latency_ms(&self, ms: u64) {
        self.latency_ms.store(ms, Ordering::SeqCst);
    }

    /// Sets the share of calls whose reply is lost.
    pub fn set_drop_percent(&self, percent: u8) {
        self.drop_percent
            .store(u64::from(percent.min(100)), Ordering::SeqCst);
    }

    /// Sets the share of calls that fail before reaching the registry.
    pub fn set_fail_percent(&self, percent: u8) {
        self.fail_percent
            .store(u64::from(percent.min(100)), Ordering::SeqCst);
    }

    /// Heals every fault of the slot.
    pub fn heal(&self) {
        self.freeze(false);
        self.partitions.store(0, Ordering::SeqCst);
        self.set_latency_ms(0);
        self.set_drop_percent(0);
        self.set_fail_percent(0);
    }

    /// Whether a fault that changes call outcomes is in force (latency alone does not count).
    pub fn disturbed(&self) -> bool {
        *self.frozen.borrow()
            || self.partitioned()
            || self.drop_percent.load(Ordering::SeqCst) > 0
            || self.fail_percent.load(Ordering::SeqCst) > 0
    }

    fn roll(&self, percent: &AtomicU64, salt: u64) -> bool {
        let p = percent.load(Ordering::SeqCst);
        if p == 0 {
            return false;
        }
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let bits = mix(self.seed ^ mix(self.slot.wrapping_mul(0x1000_0001) ^ n) ^ salt);
        unit(bits) * 100.0 < p as f64
    }
}

/// One claim the registry granted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantedClaim {
    /// The winning process (incarnation label, e.g. `n2.1`).
    pub node: String,
    /// The fencing token.
    pub token: u64,
    /// Whether the winner received the answer.
    pub delivered: bool,
}

/// Every claim the registry granted during a run, by fire (several when claims are broken),
/// and how many replies the fault injector lost after the registry had acted.
#[derive(Clone, Debug, Default)]
pub struct ClaimLog {
    granted: Arc<Mutex<BTreeMap<FireKey, Vec<GrantedClaim>>>>,
    lost_replies: Arc<AtomicU64>,
    /// Every life the registry answered, by task and generation: its live-since.
    lives: Arc<Mutex<LiveSince>>,
}

/// The live-since of every life answered, by task and generation.
type LiveSince = BTreeMap<(String, u64), DateTime<Utc>>;

impl ClaimLog {
    /// An empty log.
    pub fn new() -> Self {
        ClaimLog::default()
    }

    /// Records that the registry granted `fire` as `claim`.
    pub fn grant(&self, fire: FireKey, claim: GrantedClaim) {
        self.granted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(fire)
            .or_default()
            .push(claim);
    }

    /// Records lives the registry answered (whether or not the reply reached the node).
    pub fn record_lives(&self, names: &[(String, DateTime<Utc>)], lives: &[Life]) {
        let mut known = self.lives.lock().unwrap_or_else(PoisonError::into_inner);
        for ((name, _), life) in names.iter().zip(lives) {
            known
                .entry((name.clone(), life.generation))
                .or_insert(life.live_since);
        }
    }

    /// The live-since of every life of `task` the registry answered, by generation.
    pub fn lives_of(&self, task: &str) -> Vec<(u64, DateTime<Utc>)> {
        self.lives
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|((t, _), _)| t == task)
            .map(|((_, g), since)| (*g, *since))
            .collect()
    }

    /// The claims granted for `fire`.
    pub fn get(&self, fire: &FireKey) -> Vec<GrantedClaim> {
        self.granted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(fire)
            .cloned()
            .unwrap_or_default()
    }

    /// How many fires were granted at least once.
    pub fn len(&self) -> usize {
        self.granted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether nothing was granted.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Replies lost after the registry had acted on the call (the request was applied).
    pub fn lost_replies(&self) -> u64 {
        self.lost_replies.load(Ordering::SeqCst)
    }
}

/// The registry as one simulated node process sees it.
#[derive(Clone)]
pub struct FaultyRegistry {
    inner: MemoryRegistry,
    faults: Arc<SlotFaults>,
    alive: Arc<AtomicBool>,
    label: Arc<str>,
    claims: ClaimLog,
    broken_claims: bool,
    broken_tokens: Arc<AtomicU64>,
}

impl std::fmt::Debug for FaultyRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyRegistry")
            .field("node", &self.label)
            .field("broken_claims", &self.broken_claims)
            .finish_non_exhaustive()
    }
}

impl FaultyRegistry {
    /// A wrapper for the process `label` of a slot with `faults`, alive while `alive` is set.
    ///
    /// With `broken_claims`, every claim is answered `Won` without asking the registry: the
    /// deliberately broken registry that shows the checker catches duplicates.
    pub fn new(
        inner: MemoryRegistry,
        faults: Arc<SlotFaults>,
        alive: Arc<AtomicBool>,
        label: &str,
        claims: ClaimLog,
        broken_claims: bool,
    ) -> Self {
        FaultyRegistry {
            inner,
            faults,
            alive,
            label: Arc::from(label),
            claims,
            broken_claims,
            broken_tokens: Arc::new(AtomicU64::new(1 << 40)),
        }
    }

    fn reachable(&self) -> bool {
        self.alive.load(Ordering::SeqCst) && !self.faults.partitioned()
    }

    fn down(&self, what: &str) -> Error {
        Error::unavailable(format!("simulated fault on {}: {what}", self.label))
    }

    /// Runs one call through the faults: refused while cut off or dead, delayed by the latency,
    /// failed or its reply lost by chance. Returns the result and whether the reply arrived.
    async fn call<T, F>(&self, f: F) -> (Result<T>, bool)
    where
        F: std::future::Future<Output = Result<T>>,
    {
        // A frozen process sends nothing until it thaws; then its request goes out as it was.
        self.faults.thawed().await;
        if !self.reachable() {
            return (Err(self.down("registry unreachable")), false);
        }
        let latency = self.faults.latency_ms.load(Ordering::SeqCst);
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency / 2)).await;
        }
        if !self.reachable() || self.faults.roll(&self.faults.fail_percent, 0xFA11) {
            return (Err(self.down("call failed")), false);
        }
        let result = f.await;
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency - latency / 2)).await;
        }
        if !self.reachable() || self.faults.roll(&self.faults.drop_percent, 0xD409) {
            self.claims.lost_replies.fetch_add(1, Ordering::SeqCst);
            return (Err(self.down("reply lost")), true);
        }
        (result, true)
    }

    fn guard_stream<T: Send + 'static>(&self, stream: WatchStream<T>) -> WatchStream<T> {
        let mut cut = self.faults.cut.subscribe();
        let start = *cut.borrow_and_update();
        let alive = self.alive.clone();
        futures::stream::unfold(
            (stream, cut, start, alive),
            |(mut stream, mut cut, start, alive)| async move {
                if !alive.load(Ordering::SeqCst) || *cut.borrow() != start {
                    return None;
                }
                let item = tokio::select! {
                    biased;
                    _ = cut.changed() => None,
                    item = stream.next() => item,
                }?;
                if !alive.load(Ordering::SeqCst) || *cut.borrow() != start {
                    return None;
                }
                Some((item, (stream, cut, start, alive)))
            },
        )
        .boxed()
    }
}

#[async_trait]
impl Registry for FaultyRegistry {
    fn backend(&self) -> &'static str {
        "simulated"
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn register(&self, node: &Node, ttl: Duration) -> Result<Lease> {
        self.call(self.inner.register(node, ttl)).await.0
    }

    async fn keep_alive(&self, lease: &Lease) -> Result<()> {
        self.call(self.inner.keep_alive(lease)).await.0
    }

    async fn update_node(&self, lease: &Lease, node: &Node) -> Result<()> {
        self.call(self.inner.update_node(lease, node)).await.0
    }

    async fn unregister(&self, lease: &Lease) -> Result<()> {
        self.call(self.inner.unregister(lease)).await.0
    }

    async fn list_nodes(&self) -> Result<Listing<Node>> {
        self.call(self.inner.list_nodes()).await.0
    }

    async fn watch_nodes(&self) -> Result<WatchStream<NodeEvent>> {
        let stream = self.call(self.inner.watch_nodes()).await.0?;
        Ok(self.guard_stream(stream))
    }

    async fn put_task(&self, meta: &TaskMeta, mode: PutMode) -> Result<()> {
        self.call(self.inner.put_task(meta, mode)).await.0
    }

    async fn get_task(&self, name: &str) -> Result<Option<TaskMeta>> {
        self.call(self.inner.get_task(name)).await.0
    }

    async fn list_tasks(&self) -> Result<Listing<TaskMeta>> {
        self.call(self.inner.list_tasks()).await.0
    }

    async fn watch_tasks(&self) -> Result<WatchStream<TaskMetaEvent>> {
        let stream = self.call(self.inner.watch_tasks()).await.0?;
        Ok(self.guard_stream(stream))
    }

    async fn mark_deleted(&self, name: &str, at: DateTime<Utc>) -> Result<()> {
        self.call(self.inner.mark_deleted(name, at)).await.0
    }

    async fn get_tombstone(&self, name: &str) -> Result<Option<Tombstone>> {
        self.call(self.inner.get_tombstone(name)).await.0
    }

    async fn list_tombstones(&self) -> Result<Listing<Tombstone>> {
        self.call(self.inner.list_tombstones()).await.0
    }

    async fn clear_tombstone(&self, name: &str) -> Result<()> {
        self.call(self.inner.clear_tombstone(name)).await.0
    }

    async fn cleanup_task(&self, name: &str) -> Result<()> {
        self.call(self.inner.cleanup_task(name)).await.0
    }

    async fn cleanup_all(&self) -> Result<()> {
        self.call(self.inner.cleanup_all()).await.0
    }

    async fn ensure_lives(&self, names: &[(String, DateTime<Utc>)]) -> Result<Vec<Life>> {
        self.call(async {
            let r = self.inner.ensure_lives(names).await;
            if let Ok(lives) = &r {
                self.claims.record_lives(names, lives);
            }
            r
        })
        .await
        .0
    }

    async fn restart_life(&self, name: &str, at: DateTime<Utc>) -> Result<Life> {
        self.call(async {
            let r = self.inner.restart_life(name, at).await;
            if let Ok(life) = &r {
                self.claims
                    .record_lives(&[(name.to_string(), at)], std::slice::from_ref(life));
            }
            r
        })
        .await
        .0
    }

    async fn claim(
        &self,
        claimant: &Claimant,
        requests: &[ClaimRequest],
    ) -> Result<Vec<ClaimOutcome>> {
        let fires: Vec<FireKey> = requests.iter().map(|r| r.fire.clone()).collect();
        let node_id = claimant.node_id.as_str();
        let decide = async {
            if self.broken_claims {
                Ok(requests
                    .iter()
                    .map(|_| ClaimOutcome::Won {
                        token: self.broken_tokens.fetch_add(1, Ordering::SeqCst),
                    })
                    .collect())
            } else {
                self.inner.claim(claimant, requests).await
            }
        };
        let (result, acted) = self.call(decide).await;
        // The registry acted: log what it granted, and whether the winner hears of it.
        if acted {
            let delivered = result.is_ok();
            let outcomes: Vec<ClaimOutcome> = match &result {
                Ok(o) => o.clone(),
                // The reply was lost: read back what the registry decided.
                Err(_) => Vec::new(),
            };
            if delivered {
                for (fire, outcome) in fires.iter().zip(&outcomes) {
                    if let ClaimOutcome::Won { token } = *outcome {
                        self.claims.grant(
                            fire.clone(),
                            GrantedClaim {
                                node: self.label.to_string(),
                                token,
                                delivered: true,
                            },
                        );
                    }
                }
            } else {
                for fire in &fires {
                    let listed = self.inner.list_claims(&fire.task).await;
                    let won = listed.ok().and_then(|l| {
                        l.items.into_iter().find(|c| {
                            c.fire.instant_millis() == fire.instant_millis() && c.node_id == node_id
                        })
                    });
                    if let Some(c) = won {
                        let already = self
                            .claims
                            .get(fire)
                            .iter()
                            .any(|g| g.token == c.token && g.node == *self.label);
                        if !already {
                            self.claims.grant(
                                fire.clone(),
                                GrantedClaim {
                                    node: self.label.to_string(),
                                    token: c.token,
                                    delivered: false,
                                },
                            );
                        }
                    }
                }
            }
        }
        result
    }

    async fn list_claims(&self, task: &str) -> Result<Listing<Claim>> {
        self.call(self.inner.list_claims(task)).await.0
    }

    async fn acquire_slot(&self, lease: &Lease, fire: &FireKey) -> Result<SlotOutcome> {
        self.call(self.inner.acquire_slot(lease, fire)).await.0
    }

    async fn release_slot(&self, lease: &Lease, fire: &FireKey) -> Result<()> {
        self.call(self.inner.release_slot(lease, fire)).await.0
    }

    async fn put_records(&self, kind: RecordKind, records: &[(String, Vec<u8>)]) -> Result<()> {
        self.call(self.inner.put_records(kind, records)).await.0
    }

    async fn get_record(&self, kind: RecordKind, key: &str) -> Result<Option<Vec<u8>>> {
        self.call(self.inner.get_record(kind, key)).await.0
    }

    async fn list_records(&self, kind: RecordKind) -> Result<Vec<(String, Vec<u8>)>> {
        self.call(self.inner.list_records(kind)).await.0
    }

    async fn delete_record(&self, kind: RecordKind, key: &str) -> Result<bool> {
        self.call(self.inner.delete_record(kind, key)).await.0
    }
}
