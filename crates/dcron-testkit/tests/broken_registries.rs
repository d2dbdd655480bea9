//! The suite can fail: registries with one deliberate contract violation each (the seed's
//! pitfalls and every broken promise of the exactly-once contract) must fail the named cases
//! that guard that rule.
//!
//! Each broken registry wraps `MemoryRegistry`. The faults of the exactly-once contract run on
//! tokio's paused clock (the memory registry's leases and claims expire on it), so the timing
//! cases take no real time; the earlier faults, and the case that needs the registry's wall
//! clock to move, run on real time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use dcron_core::memory::MemoryRegistry;
use dcron_core::{
    validate_task_name, Capabilities, Claim, ClaimOutcome, ClaimRequest, Claimant, Error, FireKey,
    Lease, Life, Listing, Node, NodeEvent, PutMode, Registry, SlotOutcome, TaskMeta, TaskMetaEvent,
    Tombstone, WatchStream, MAX_WATCH_DELAY,
};
use dcron_testkit::{
    async_trait, cases, run_case, CaseError, Hooks, MemoryFactory, RegistryFactory, Requirement,
};
use futures::StreamExt;

/// One contract violation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    // ----- the seed's pitfalls and earlier rules -----
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
    /// `cleanup_task`, a `Force` put and `restart_life` forget the name's claims before their
    /// retention ends.
    ForgetsClaims,
    /// Declares watches unsupported but serves them anyway.
    WatchDeclaredUnsupportedButWorks,
    /// Honestly without watches (not a fault: the watch cases must be skipped).
    NoWatches,
    // ----- numeric promises -----
    /// Claims are kept half their retention.
    ClaimsKeptHalf,
    /// Claims are kept twice their retention.
    ClaimsKeptDouble,
    /// Every request of a batch is kept for the first request's retention.
    BatchUsesFirstRetention,
    /// Nodes are kept half their TTL (the lease claims the full TTL).
    NodeTtlHalf,
    /// Nodes are kept twice their TTL (the lease claims the requested TTL).
    NodeTtlDouble,
    /// The granted TTL is half the requested one.
    GrantsLessTtl,
    /// Every event reaches watchers twice `MAX_WATCH_DELAY` late.
    WatchDelayed,
    // ----- epochs and listings -----
    /// `update_node` with a replaced lease updates the newer registration.
    StaleLeaseUpdates,
    /// `unregister` with a replaced lease removes the newer registration.
    StaleLeaseUnregisters,
    /// `list_claims` also lists expired claims.
    ExpiredClaimsListed,
    /// `list_nodes` also lists expired nodes.
    ExpiredNodesListed,
    /// `list_claims` and `list_nodes` list their first entry twice.
    ListsAnEntryTwice,
    // ----- tokens, generations, claims -----
    /// Fencing tokens go down as claims go on.
    TokensGoDown,
    /// Fencing tokens of a name restart after `cleanup_task`, a `Force` put or `restart_life`.
    TokensRestartAfterCleanup,
    /// Generations go down as lives go on.
    GenerationsGoDown,
    /// A retry by the claimant that won answers `Lost` instead of `WonEarlier`.
    WonEarlierAnsweredLost,
    /// Declares a clock but accepts claims past their deadline.
    AcceptsLateClaims,
    /// Claims are decided in whatever life is current (no `Superseded`).
    IgnoresGeneration,
    /// A claimant holding a fire gets `WonEarlier` even once the name is tombstoned.
    WonEarlierBeforeTombstone,
    /// A zero retention fails the call only after writing the batch's other claims.
    ZeroRetentionPartialWrite,
    /// Names are escaped by replacing `:` with `%3A`: `a:b` and `a%3Ab` share a key.
    NamesCollide,
    /// One request with an invalid name fails the whole batch.
    BatchFailsWhole,
    // ----- lives -----
    /// `ensure_lives` answers the instant it is given instead of the first live-since.
    EnsureLivesMovesLiveSince,
    /// An `Update` put starts a new life.
    UpdateStartsNewLife,
    /// `restart_life` only clears the tombstone: same life, claims kept.
    RestartLifeKeepsLife,
    // ----- watches across namespaces, stale events -----
    /// A watch also delivers the events of namespaces whose names extend its own (bare prefix
    /// matching).
    WatchLeaksPrefixNamespaces,
    /// A watch delivers the events of every namespace.
    WatchLeaksOtherNamespaces,
    /// After each `Put` of a key the watch repeats the previous `Put` of that key.
    WatchStaleDuplicates,
    // ----- more -----
    /// Task and node listings also list the namespaces whose names extend this one.
    ListsPrefixNamespaces,
    /// Declares records unsupported but serves them anyway.
    RecordsDeclaredUnsupportedButWork,
    /// `Lost` never names the holder.
    LostHidesHolder,
    /// A tombstoned name gets no life (`ensure_lives` answers `Tombstoned`).
    NoLifeForTombstoned,
    // ----- running slots (kept in the broken registry's own table) -----
    /// The broken registry's own slot table, without a fault (the control: it passes).
    SlotTable,
    /// A slot is read, then written in a second step: racing nodes can both take it.
    SlotNotAtomic,
    /// A slot outlives its holder's lease (unregister, re-registration, expiry).
    SlotOutlivesLease,
    /// Anyone's release frees the slot.
    SlotReleasedByAnyone,
    /// The holder retrying its own fire gets `Held`.
    SlotRetryHeld,
    /// `cleanup_all` leaves the slots.
    SlotSurvivesCleanupAll,
    /// Declares slots but answers `Unsupported`.
    SlotsDeclaredButUnsupported,
}

impl Fault {
    /// Whether the fault is one of the running-slot faults (served from the broken table).
    fn slots(self) -> bool {
        matches!(
            self,
            Fault::SlotTable
                | Fault::SlotNotAtomic
                | Fault::SlotOutlivesLease
                | Fault::SlotReleasedByAnyone
                | Fault::SlotRetryHeld
                | Fault::SlotSurvivesCleanupAll
        )
    }
}

const BIG: u64 = 1 << 40;

/// What the clients of one broken factory share (the state some faults need).
#[derive(Debug, Default)]
struct Shadow {
    /// Every claim ever won, by namespace.
    won: Mutex<Vec<(String, Claim)>>,
    /// Every node registered and not unregistered, by namespace and id.
    nodes: Mutex<HashMap<(String, String), Node>>,
    /// The latest lease of each node, by namespace and id.
    latest: Mutex<HashMap<(String, String), Lease>>,
    /// The token base of a name, by namespace and name (tokens restart above it).
    token_base: Mutex<HashMap<(String, String), u64>>,
    /// The largest token handed out.
    max_token: AtomicU64,
    /// Every namespace opened.
    namespaces: Mutex<Vec<String>>,
    /// Claims forgotten, by namespace, task and instant.
    forgotten: Mutex<std::collections::HashSet<(String, String, i64)>>,
    /// Running slots of the slot faults, by namespace and task: holder node, lease id, fire.
    slots: Mutex<HashMap<(String, String), SlotHolder>>,
}

/// A slot holder in the broken table: node id, lease id, fire.
type SlotHolder = (String, String, FireKey);

#[derive(Debug)]
struct Broken {
    inner: MemoryRegistry,
    store: MemoryRegistry,
    namespace: String,
    fault: Fault,
    tokens: AtomicU64,
    shadow: Arc<Shadow>,
}

fn key(name: &str) -> String {
    name.replace(':', "%3A")
}

fn unkey(name: &str) -> String {
    name.replace("%3A", ":")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Broken {
    fn collide(&self) -> bool {
        self.fault == Fault::NamesCollide
    }

    fn name(&self, name: &str) -> String {
        if self.collide() {
            key(name)
        } else {
            name.to_string()
        }
    }

    fn out_name(&self, name: &str) -> String {
        if self.collide() {
            unkey(name)
        } else {
            name.to_string()
        }
    }

    fn base(&self, name: &str) -> u64 {
        lock(&self.shadow.token_base)
            .get(&(self.namespace.clone(), name.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// Tokens of `name` restart above everything handed out so far.
    fn restart_tokens(&self, name: &str) {
        if self.fault == Fault::TokensRestartAfterCleanup {
            let max = self.shadow.max_token.load(Ordering::SeqCst);
            lock(&self.shadow.token_base).insert((self.namespace.clone(), name.to_string()), max);
        }
    }

    fn token_out(&self, name: &str, token: u64) -> u64 {
        self.shadow.max_token.fetch_max(token, Ordering::SeqCst);
        match self.fault {
            Fault::TokensGoDown => BIG - token,
            Fault::TokensRestartAfterCleanup => token - self.base(name),
            _ => token,
        }
    }

    fn generation_map(&self, generation: u64) -> u64 {
        if self.fault == Fault::GenerationsGoDown {
            BIG.saturating_sub(generation)
        } else {
            generation
        }
    }

    fn life_out(&self, life: Life) -> Life {
        Life::new(self.generation_map(life.generation), life.live_since)
    }

    fn outcome_out(&self, name: &str, outcome: ClaimOutcome) -> ClaimOutcome {
        match outcome {
            ClaimOutcome::Won { token } => ClaimOutcome::Won {
                token: self.token_out(name, token),
            },
            ClaimOutcome::WonEarlier { token } => ClaimOutcome::WonEarlier {
                token: self.token_out(name, token),
            },
            ClaimOutcome::Superseded { current } => ClaimOutcome::Superseded {
                current: current.map(|g| self.generation_map(g)),
            },
            other => other,
        }
    }

    /// Watch streams of the namespaces this watch wrongly delivers.
    fn leaked_namespaces(&self) -> Vec<MemoryRegistry> {
        let all = lock(&self.shadow.namespaces).clone();
        all.into_iter()
            .filter(|ns| *ns != self.namespace)
            .filter(|ns| match self.fault {
                Fault::WatchLeaksPrefixNamespaces | Fault::ListsPrefixNamespaces => {
                    ns.starts_with(&self.namespace)
                }
                Fault::WatchLeaksOtherNamespaces => true,
                _ => false,
            })
            .map(|ns| self.store.with_namespace(&ns))
            .collect()
    }

    /// The namespaces whose events this watch wrongly delivers.
    fn leaked_watches(&self) -> Vec<MemoryRegistry> {
        if self.fault == Fault::ListsPrefixNamespaces {
            return Vec::new();
        }
        self.leaked_namespaces()
    }

    /// The namespaces whose entries this listing wrongly shows.
    fn leaked_listings(&self) -> Vec<MemoryRegistry> {
        if self.fault == Fault::ListsPrefixNamespaces {
            self.leaked_namespaces()
        } else {
            Vec::new()
        }
    }

    /// Forgets the claims of `name` (the `ForgetsClaims` fault).
    async fn forget_claims(&self, name: &str) -> dcron_core::Result<()> {
        if self.fault == Fault::ForgetsClaims {
            let claims = self.inner.list_claims(name).await?.items;
            let mut forgotten = lock(&self.shadow.forgotten);
            for c in claims {
                forgotten.insert((
                    self.namespace.clone(),
                    c.fire.task.clone(),
                    c.fire.instant_millis(),
                ));
            }
        }
        Ok(())
    }

    fn is_forgotten(&self, fire: &dcron_core::FireKey) -> bool {
        lock(&self.shadow.forgotten).contains(&(
            self.namespace.clone(),
            fire.task.clone(),
            fire.instant_millis(),
        ))
    }

    /// Whether `lease` is its node's current, unexpired lease (the broken slot table's view).
    async fn lease_alive(&self, node_id: &str, lease_id: &str) -> dcron_core::Result<bool> {
        let current = lock(&self.shadow.latest)
            .get(&(self.namespace.clone(), node_id.to_string()))
            .is_some_and(|l| l.id == lease_id);
        Ok(current
            && self
                .inner
                .list_nodes()
                .await?
                .items
                .iter()
                .any(|n| n.id == node_id))
    }

    /// `acquire_slot` of the slot faults, from the broken table.
    async fn broken_acquire(
        &self,
        lease: &Lease,
        fire: &FireKey,
    ) -> dcron_core::Result<SlotOutcome> {
        if !self.lease_alive(&lease.node_id, &lease.id).await? {
            return Err(Error::LeaseLost {
                node: lease.node_id.clone(),
            });
        }
        let key = (self.namespace.clone(), fire.task.clone());
        loop {
            let held = lock(&self.shadow.slots).get(&key).cloned();
            if let Some((node, lease_id, held_fire)) = &held {
                let mine = *lease_id == lease.id && held_fire == fire;
                if mine && self.fault != Fault::SlotRetryHeld {
                    return Ok(SlotOutcome::Taken);
                }
                let alive = self.fault == Fault::SlotOutlivesLease
                    || self.lease_alive(node, lease_id).await?;
                if alive {
                    return Ok(SlotOutcome::Held {
                        node_id: node.clone(),
                        fire: held_fire.clone(),
                    });
                }
            }
            let mine = (lease.node_id.clone(), lease.id.clone(), fire.clone());
            if self.fault == Fault::SlotNotAtomic {
                // The read above and the write below are two steps.
                tokio::task::yield_now().await;
                lock(&self.shadow.slots).insert(key, mine);
                return Ok(SlotOutcome::Taken);
            }
            // Written only if the slot is still what was judged above (compare and set).
            let mut slots = lock(&self.shadow.slots);
            if slots.get(&key) == held.as_ref() {
                slots.insert(key, mine);
                return Ok(SlotOutcome::Taken);
            }
        }
    }

    async fn claim_one(
        &self,
        claimant: &Claimant,
        request: ClaimRequest,
    ) -> dcron_core::Result<ClaimOutcome> {
        let mut out = self.inner.claim(claimant, &[request]).await?;
        Ok(out.pop().unwrap_or(ClaimOutcome::Late))
    }
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
        if self.fault == Fault::AcceptsLateClaims {
            caps.clock = true;
        }
        if self.fault == Fault::RecordsDeclaredUnsupportedButWork {
            caps.records = false;
        }
        caps
    }

    async fn register(&self, node: &Node, ttl: Duration) -> dcron_core::Result<Lease> {
        let (kept, granted) = match self.fault {
            Fault::NodeTtlHalf => (ttl / 2, ttl),
            Fault::NodeTtlDouble => (ttl * 2, ttl),
            Fault::GrantsLessTtl => (ttl / 2, ttl / 2),
            _ => (ttl, ttl),
        };
        let mut lease = self.inner.register(node, kept).await?;
        lease.ttl = granted;
        let id = (self.namespace.clone(), node.id.clone());
        lock(&self.shadow.latest).insert(id.clone(), lease.clone());
        lock(&self.shadow.nodes).insert(id, node.clone());
        Ok(lease)
    }

    async fn keep_alive(&self, lease: &Lease) -> dcron_core::Result<()> {
        match (self.fault, self.inner.keep_alive(lease).await) {
            (Fault::KeepAliveNeverLost, Err(Error::LeaseLost { .. })) => Ok(()),
            (_, r) => r,
        }
    }

    async fn update_node(&self, lease: &Lease, node: &Node) -> dcron_core::Result<()> {
        let latest = lock(&self.shadow.latest)
            .get(&(self.namespace.clone(), node.id.clone()))
            .cloned();
        match self.fault {
            Fault::UpdateDetachesLease => self
                .inner
                .register(node, Duration::from_secs(3600))
                .await
                .map(|_| ()),
            Fault::StaleLeaseUpdates => match self.inner.update_node(lease, node).await {
                Err(Error::LeaseLost { .. }) if latest.is_some() => {
                    let latest = latest.unwrap_or_else(|| lease.clone());
                    self.inner.update_node(&latest, node).await
                }
                r => r,
            },
            _ => self.inner.update_node(lease, node).await,
        }
    }

    async fn unregister(&self, lease: &Lease) -> dcron_core::Result<()> {
        let id = (self.namespace.clone(), lease.node_id.clone());
        let latest = lock(&self.shadow.latest).get(&id).cloned();
        let lease = match (self.fault, latest) {
            (Fault::StaleLeaseUnregisters, Some(latest)) => latest,
            _ => lease.clone(),
        };
        if lock(&self.shadow.latest).get(&id) == Some(&lease) {
            lock(&self.shadow.nodes).remove(&id);
        }
        self.inner.unregister(&lease).await
    }

    async fn list_nodes(&self) -> dcron_core::Result<Listing<Node>> {
        let mut listing = self.inner.list_nodes().await?;
        for other in self.leaked_listings() {
            listing.items.extend(other.list_nodes().await?.items);
        }
        match self.fault {
            Fault::ListStopsAt100 => listing.items.truncate(200),
            Fault::ListsAnEntryTwice => {
                if let Some(first) = listing.items.first().cloned() {
                    listing.items.push(first);
                }
            }
            Fault::ExpiredNodesListed => {
                let known = lock(&self.shadow.nodes).clone();
                for ((ns, id), node) in known {
                    if ns == self.namespace && !listing.items.iter().any(|n| n.id == id) {
                        listing.items.push(node);
                    }
                }
            }
            _ => {}
        }
        Ok(listing)
    }

    async fn watch_nodes(&self) -> dcron_core::Result<WatchStream<NodeEvent>> {
        if self.fault == Fault::NoWatches {
            return Err(Error::Unsupported {
                operation: "watch_nodes",
            });
        }
        let mut streams = vec![self.inner.watch_nodes().await?];
        for other in self.leaked_watches() {
            streams.push(other.watch_nodes().await?);
        }
        let stream = futures::stream::select_all(streams).boxed();
        Ok(match self.fault {
            Fault::WatchStaleDuplicates => {
                let mut last: HashMap<String, Node> = HashMap::new();
                stream
                    .flat_map(move |event| {
                        let mut out = vec![event.clone()];
                        if let NodeEvent::Put(n) = &event {
                            if let Some(previous) = last.insert(n.id.clone(), n.clone()) {
                                out.push(NodeEvent::Put(previous));
                            }
                        }
                        futures::stream::iter(out)
                    })
                    .boxed()
            }
            Fault::WatchDelayed => stream
                .then(|e| async move {
                    tokio::time::sleep(MAX_WATCH_DELAY * 2).await;
                    e
                })
                .boxed(),
            _ => stream,
        })
    }

    async fn put_task(&self, meta: &TaskMeta, mode: PutMode) -> dcron_core::Result<()> {
        let mode = match (self.fault, mode) {
            (Fault::CreateOnlyOverwrites, PutMode::CreateOnly) => PutMode::Force,
            (_, m) => m,
        };
        let mut meta = meta.clone();
        meta.name = self.name(&meta.name);
        if mode == PutMode::Force {
            self.restart_tokens(&meta.name);
            self.forget_claims(&meta.name).await?;
        }
        self.inner.put_task(&meta, mode).await?;
        if self.fault == Fault::UpdateStartsNewLife && mode == PutMode::Update {
            self.inner
                .restart_life(&meta.name, meta.created_at.unwrap_or_else(Utc::now))
                .await?;
        }
        Ok(())
    }

    async fn get_task(&self, name: &str) -> dcron_core::Result<Option<TaskMeta>> {
        match (self.fault, self.inner.get_task(&self.name(name)).await) {
            (Fault::CorruptReadsAsAbsent, Err(Error::Corrupt { .. })) => Ok(None),
            (_, r) => r.map(|m| {
                m.map(|mut m| {
                    m.name = self.out_name(&m.name);
                    m
                })
            }),
        }
    }

    async fn list_tasks(&self) -> dcron_core::Result<Listing<TaskMeta>> {
        let mut listing = self.inner.list_tasks().await?;
        for other in self.leaked_listings() {
            listing.items.extend(other.list_tasks().await?.items);
        }
        if self.fault == Fault::ListStopsAt100 {
            listing.items.truncate(100);
        }
        for m in &mut listing.items {
            m.name = self.out_name(&m.name);
        }
        Ok(listing)
    }

    async fn watch_tasks(&self) -> dcron_core::Result<WatchStream<TaskMetaEvent>> {
        if self.fault == Fault::NoWatches {
            return Err(Error::Unsupported {
                operation: "watch_tasks",
            });
        }
        let mut streams = vec![self.inner.watch_tasks().await?];
        for other in self.leaked_watches() {
            streams.push(other.watch_tasks().await?);
        }
        let stream = futures::stream::select_all(streams).boxed();
        Ok(match self.fault {
            Fault::WatchDropsEvents => {
                let mut seen = 0u64;
                stream
                    .filter(move |_| {
                        seen += 1;
                        futures::future::ready(seen % 7 != 0)
                    })
                    .boxed()
            }
            Fault::WatchStaleDuplicates => {
                let mut last: HashMap<String, TaskMeta> = HashMap::new();
                stream
                    .flat_map(move |event| {
                        let mut out = vec![event.clone()];
                        if let TaskMetaEvent::Put(m) = &event {
                            if let Some(previous) = last.insert(m.name.clone(), m.clone()) {
                                out.push(TaskMetaEvent::Put(previous));
                            }
                        }
                        futures::stream::iter(out)
                    })
                    .boxed()
            }
            Fault::WatchDelayed => stream
                .then(|e| async move {
                    tokio::time::sleep(MAX_WATCH_DELAY * 2).await;
                    e
                })
                .boxed(),
            _ => stream,
        })
    }

    async fn mark_deleted(&self, name: &str, at: DateTime<Utc>) -> dcron_core::Result<()> {
        let name = self.name(name);
        if self.fault == Fault::MarkDeletedOverwrites {
            let _ = self.inner.clear_tombstone(&name).await;
        }
        self.inner.mark_deleted(&name, at).await
    }

    async fn get_tombstone(&self, name: &str) -> dcron_core::Result<Option<Tombstone>> {
        Ok(self
            .inner
            .get_tombstone(&self.name(name))
            .await?
            .map(|mut t| {
                t.name = self.out_name(&t.name);
                t
            }))
    }

    async fn list_tombstones(&self) -> dcron_core::Result<Listing<Tombstone>> {
        let mut listing = self.inner.list_tombstones().await?;
        for t in &mut listing.items {
            t.name = self.out_name(&t.name);
        }
        Ok(listing)
    }

    async fn clear_tombstone(&self, name: &str) -> dcron_core::Result<()> {
        self.inner.clear_tombstone(&self.name(name)).await
    }

    async fn cleanup_task(&self, name: &str) -> dcron_core::Result<()> {
        let name = self.name(name);
        self.restart_tokens(&name);
        self.forget_claims(&name).await?;
        self.inner.cleanup_task(&name).await
    }

    async fn cleanup_all(&self) -> dcron_core::Result<()> {
        if self.fault.slots() && self.fault != Fault::SlotSurvivesCleanupAll {
            lock(&self.shadow.slots).retain(|(ns, _), _| *ns != self.namespace);
        }
        self.inner.cleanup_all().await
    }

    async fn acquire_slot(&self, lease: &Lease, fire: &FireKey) -> dcron_core::Result<SlotOutcome> {
        if self.fault == Fault::SlotsDeclaredButUnsupported {
            return Err(Error::Unsupported {
                operation: "running slots",
            });
        }
        if self.fault.slots() {
            return self.broken_acquire(lease, fire).await;
        }
        self.inner.acquire_slot(lease, fire).await
    }

    async fn release_slot(&self, lease: &Lease, fire: &FireKey) -> dcron_core::Result<()> {
        if self.fault == Fault::SlotsDeclaredButUnsupported {
            return Err(Error::Unsupported {
                operation: "running slots",
            });
        }
        if self.fault.slots() {
            let key = (self.namespace.clone(), fire.task.clone());
            let mut slots = lock(&self.shadow.slots);
            let mine = slots
                .get(&key)
                .is_some_and(|(_, lease_id, f)| *lease_id == lease.id && f == fire);
            if mine || self.fault == Fault::SlotReleasedByAnyone {
                slots.remove(&key);
            }
            return Ok(());
        }
        self.inner.release_slot(lease, fire).await
    }

    async fn ensure_lives(
        &self,
        names: &[(String, DateTime<Utc>)],
    ) -> dcron_core::Result<Vec<Life>> {
        let mapped: Vec<(String, DateTime<Utc>)> =
            names.iter().map(|(n, at)| (self.name(n), *at)).collect();
        if self.fault == Fault::NoLifeForTombstoned {
            for (name, _) in &mapped {
                if self.inner.get_tombstone(name).await?.is_some() {
                    return Err(Error::Tombstoned { name: name.clone() });
                }
            }
        }
        let lives = self.inner.ensure_lives(&mapped).await?;
        Ok(lives
            .into_iter()
            .zip(names)
            .map(|(life, (_, at))| {
                let life = self.life_out(life);
                if self.fault == Fault::EnsureLivesMovesLiveSince {
                    Life::new(life.generation, *at)
                } else {
                    life
                }
            })
            .collect())
    }

    async fn restart_life(&self, name: &str, at: DateTime<Utc>) -> dcron_core::Result<Life> {
        let name = self.name(name);
        if self.fault == Fault::RestartLifeKeepsLife {
            match self.inner.clear_tombstone(&name).await {
                Ok(()) | Err(Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
            let life = self.inner.ensure_lives(&[(name, at)]).await?[0];
            return Ok(self.life_out(life));
        }
        self.restart_tokens(&name);
        self.forget_claims(&name).await?;
        Ok(self.life_out(self.inner.restart_life(&name, at).await?))
    }

    async fn claim(
        &self,
        claimant: &Claimant,
        requests: &[ClaimRequest],
    ) -> dcron_core::Result<Vec<ClaimOutcome>> {
        let mut requests: Vec<ClaimRequest> = requests
            .iter()
            .map(|r| {
                let mut r = r.clone();
                r.fire.task = self.name(&r.fire.task);
                r.generation = self.generation_map(r.generation);
                r.retention = match self.fault {
                    Fault::ClaimsKeptHalf => r.retention / 2,
                    Fault::ClaimsKeptDouble => r.retention * 2,
                    _ => r.retention,
                };
                r
            })
            .collect();
        if self.fault == Fault::BatchUsesFirstRetention {
            if let Some(first) = requests.first().map(|r| r.retention) {
                for r in &mut requests {
                    r.retention = first;
                }
            }
        }
        if self.fault == Fault::BatchFailsWhole
            && requests
                .iter()
                .any(|r| validate_task_name(&r.fire.task).is_err())
        {
            return Err(Error::InvalidArgument("a bad key in the batch".into()));
        }
        if self.fault == Fault::ZeroRetentionPartialWrite
            && requests.iter().any(|r| r.retention.is_zero())
        {
            let valid: Vec<ClaimRequest> = requests
                .iter()
                .filter(|r| !r.retention.is_zero())
                .cloned()
                .collect();
            self.inner.claim(claimant, &valid).await?;
            return Err(Error::InvalidArgument("a zero retention".into()));
        }
        if self.fault == Fault::IgnoresGeneration {
            for r in &mut requests {
                r.generation = self
                    .inner
                    .ensure_lives(&[(r.fire.task.clone(), r.fire.instant)])
                    .await?[0]
                    .generation;
            }
        }
        let outcomes = match self.fault {
            Fault::ClaimAlwaysWins => {
                self.inner.claim(claimant, &requests).await?;
                requests
                    .iter()
                    .map(|_| ClaimOutcome::Won {
                        token: self.tokens.fetch_add(1, Ordering::Relaxed) + 1,
                    })
                    .collect()
            }
            Fault::ClaimIgnoresTombstones => {
                let mut out = Vec::new();
                for r in &requests {
                    let tomb = self.inner.get_tombstone(&r.fire.task).await?;
                    if let Some(t) = &tomb {
                        self.inner.clear_tombstone(&r.fire.task).await?;
                        out.push(self.claim_one(claimant, r.clone()).await?);
                        self.inner.mark_deleted(&t.name, t.deleted_at).await?;
                    } else {
                        out.push(self.claim_one(claimant, r.clone()).await?);
                    }
                }
                out
            }
            Fault::WonEarlierBeforeTombstone => {
                let mut out = Vec::new();
                for r in &requests {
                    let held = self
                        .inner
                        .list_claims(&r.fire.task)
                        .await?
                        .items
                        .into_iter()
                        .find(|c| c.fire == r.fire && c.claimant() == *claimant);
                    out.push(match held {
                        Some(c) => ClaimOutcome::WonEarlier { token: c.token },
                        None => self.claim_one(claimant, r.clone()).await?,
                    });
                }
                out
            }
            _ => self.inner.claim(claimant, &requests).await?,
        };
        let mut answered = Vec::with_capacity(outcomes.len());
        for (r, o) in requests.iter().zip(outcomes) {
            if let ClaimOutcome::Won { token } = &o {
                let claim = Claim {
                    fire: r.fire.clone(),
                    node_id: claimant.node_id.clone(),
                    epoch: claimant.epoch,
                    generation: r.generation,
                    token: *token,
                };
                lock(&self.shadow.won).push((self.namespace.clone(), claim));
            }
            let o = match (self.fault, o) {
                (Fault::WonEarlierAnsweredLost, ClaimOutcome::WonEarlier { .. }) => {
                    ClaimOutcome::Lost {
                        holder: Some(claimant.node_id.clone()),
                    }
                }
                (Fault::LostHidesHolder, ClaimOutcome::Lost { .. }) => {
                    ClaimOutcome::Lost { holder: None }
                }
                (
                    Fault::ForgetsClaims,
                    ClaimOutcome::Lost { .. } | ClaimOutcome::WonEarlier { .. },
                ) if self.is_forgotten(&r.fire) => ClaimOutcome::Won {
                    token: self.shadow.max_token.load(Ordering::SeqCst) + 1,
                },
                (_, o) => o,
            };
            answered.push(self.outcome_out(&r.fire.task, o));
        }
        Ok(answered)
    }

    async fn list_claims(&self, task: &str) -> dcron_core::Result<Listing<Claim>> {
        let name = self.name(task);
        let mut listing = self.inner.list_claims(&name).await?;
        match self.fault {
            Fault::ListStopsAt100 => listing.items.truncate(200),
            Fault::ListsAnEntryTwice => {
                if let Some(first) = listing.items.first().cloned() {
                    listing.items.push(first);
                }
            }
            Fault::ExpiredClaimsListed => {
                let won = lock(&self.shadow.won).clone();
                for (ns, c) in won {
                    if ns == self.namespace
                        && c.fire.task == name
                        && !listing.items.iter().any(|l| l.fire == c.fire)
                    {
                        listing.items.push(c);
                    }
                }
            }
            Fault::ForgetsClaims => listing.items.retain(|c| !self.is_forgotten(&c.fire)),
            _ => {}
        }
        for c in &mut listing.items {
            c.token = self.token_out(&name, c.token);
            c.generation = self.generation_map(c.generation);
            c.fire.task = self.out_name(&c.fire.task);
        }
        Ok(listing)
    }

    async fn put_records(
        &self,
        kind: dcron_core::RecordKind,
        records: &[(String, Vec<u8>)],
    ) -> dcron_core::Result<()> {
        self.inner.put_records(kind, records).await
    }

    async fn get_record(
        &self,
        kind: dcron_core::RecordKind,
        key: &str,
    ) -> dcron_core::Result<Option<Vec<u8>>> {
        self.inner.get_record(kind, key).await
    }

    async fn list_records(
        &self,
        kind: dcron_core::RecordKind,
    ) -> dcron_core::Result<Vec<(String, Vec<u8>)>> {
        self.inner.list_records(kind).await
    }

    async fn delete_record(
        &self,
        kind: dcron_core::RecordKind,
        key: &str,
    ) -> dcron_core::Result<bool> {
        self.inner.delete_record(kind, key).await
    }
}

struct BrokenFactory {
    store: MemoryRegistry,
    raw: MemoryFactory,
    fault: Fault,
    shadow: Arc<Shadow>,
}

#[async_trait]
impl RegistryFactory for BrokenFactory {
    fn name(&self) -> &'static str {
        "broken"
    }

    fn hooks(&self) -> Option<Hooks> {
        Some(Hooks::none().with_write_raw_task())
    }

    async fn open(&self, namespace: &str) -> dcron_core::Result<Arc<dyn Registry>> {
        let namespace = if self.fault == Fault::NoNamespaces {
            "shared"
        } else {
            namespace
        };
        {
            let mut known = lock(&self.shadow.namespaces);
            if !known.iter().any(|n| n == namespace) {
                known.push(namespace.to_string());
            }
        }
        Ok(Arc::new(Broken {
            inner: self.store.with_namespace(namespace),
            store: self.store.clone(),
            namespace: namespace.to_string(),
            fault: self.fault,
            tokens: AtomicU64::new(0),
            shadow: self.shadow.clone(),
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
        shadow: Arc::new(Shadow::default()),
    }
}

/// Runs each named case against a fresh registry with `fault`; each must fail.
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

// Real time: `claims::mark_deleted_races_claimers` keeps claimers busy, so a paused clock would
// never auto-advance to its deadlines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn earlier_faults_are_caught() {
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
            "namespace::prefix_namespaces_are_isolated",
            "lives::lives_are_per_namespace",
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
}

#[tokio::test(start_paused = true)]
async fn broken_numeric_promises_are_caught() {
    for fault in [Fault::ClaimsKeptHalf, Fault::ClaimsKeptDouble] {
        must_fail(fault, &["claims::retention_is_kept_within_tolerance"]).await;
    }
    must_fail(
        Fault::BatchUsesFirstRetention,
        &["claims::per_request_retentions_in_one_batch"],
    )
    .await;
    for fault in [Fault::NodeTtlHalf, Fault::NodeTtlDouble] {
        must_fail(fault, &["membership::ttl_is_kept_within_tolerance"]).await;
    }
    must_fail(
        Fault::GrantsLessTtl,
        &["membership::granted_ttl_at_least_requested"],
    )
    .await;
    must_fail(
        Fault::WatchDelayed,
        &[
            "watch::task_put_delivered",
            "watch::node_put_and_delete_delivered",
        ],
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn broken_epochs_and_listings_are_caught() {
    for fault in [Fault::StaleLeaseUpdates, Fault::StaleLeaseUnregisters] {
        must_fail(
            fault,
            &["membership::stale_lease_leaves_the_newer_registration"],
        )
        .await;
    }
    must_fail(
        Fault::ExpiredClaimsListed,
        &[
            "claims::expired_claims_are_never_listed",
            "claims::retention_is_kept_within_tolerance",
        ],
    )
    .await;
    must_fail(
        Fault::ExpiredNodesListed,
        &[
            "membership::expired_nodes_are_never_listed",
            "membership::ttl_is_kept_within_tolerance",
        ],
    )
    .await;
    must_fail(
        Fault::ListsAnEntryTwice,
        &[
            "claims::expired_claims_are_never_listed",
            "membership::expired_nodes_are_never_listed",
        ],
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn broken_claim_rules_are_caught() {
    for fault in [Fault::TokensGoDown, Fault::TokensRestartAfterCleanup] {
        must_fail(
            fault,
            &[
                "claims::fencing_tokens_increase_across_cleanup_and_force",
                "claims::tokens_and_generations_increase_across_lives",
            ],
        )
        .await;
    }
    must_fail(
        Fault::TokensGoDown,
        &[
            "claims::lost_reply_retry_of_a_mixed_batch",
            "claims::retention_is_kept_within_tolerance",
        ],
    )
    .await;
    must_fail(
        Fault::GenerationsGoDown,
        &[
            "claims::tokens_and_generations_increase_across_lives",
            "lives::cleanup_removes_the_life",
            "lives::restart_life_starts_a_new_life",
            "lives::create_and_force_start_a_new_life",
            "lives::cleanup_all_removes_lives",
        ],
    )
    .await;
    must_fail(
        Fault::WonEarlierAnsweredLost,
        &[
            "claims::claimant_is_idempotent",
            "claims::lost_reply_retry_of_a_mixed_batch",
            "claims::fire_twice_in_one_batch_is_decided_once",
        ],
    )
    .await;
    must_fail(
        Fault::AcceptsLateClaims,
        &["claims::late_claims_are_refused"],
    )
    .await;
    must_fail(
        Fault::IgnoresGeneration,
        &[
            "claims::superseded_for_a_stale_generation_or_no_life",
            "lives::create_and_force_start_a_new_life",
            "lives::restart_life_starts_a_new_life",
        ],
    )
    .await;
    must_fail(
        Fault::WonEarlierBeforeTombstone,
        &["claims::tombstone_precedes_won_earlier"],
    )
    .await;
    must_fail(
        Fault::ZeroRetentionPartialWrite,
        &["claims::zero_retention_is_refused"],
    )
    .await;
    must_fail(Fault::NamesCollide, &["claims::names_never_collide"]).await;
    must_fail(
        Fault::BatchFailsWhole,
        &["claims::one_bad_request_fails_alone"],
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn broken_lives_are_caught() {
    must_fail(
        Fault::EnsureLivesMovesLiveSince,
        &[
            "lives::ensure_lives_creates_once",
            "lives::racing_clients_get_the_same_life",
        ],
    )
    .await;
    must_fail(
        Fault::UpdateStartsNewLife,
        &["lives::update_and_tombstones_keep_the_life"],
    )
    .await;
    must_fail(
        Fault::RestartLifeKeepsLife,
        &[
            "lives::restart_life_starts_a_new_life",
            "claims::tokens_and_generations_increase_across_lives",
        ],
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn broken_watches_are_caught() {
    for fault in [
        Fault::WatchLeaksPrefixNamespaces,
        Fault::WatchLeaksOtherNamespaces,
    ] {
        must_fail(fault, &["namespace::watches_are_isolated"]).await;
    }
    must_fail(
        Fault::WatchStaleDuplicates,
        &[
            "watch::task_events_never_go_back",
            "watch::node_events_never_go_back",
        ],
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn more_broken_promises_are_caught() {
    must_fail(
        Fault::ForgetsClaims,
        &[
            "tombstones::cleanup_removes_record_tombstone_and_life",
            "claims::cleanup_keeps_claims",
            "claims::force_and_update_keep_claims",
            "claims::claims_survive_new_lives",
            "lives::restart_life_starts_a_new_life",
            "lives::create_and_force_start_a_new_life",
        ],
    )
    .await;
    must_fail(
        Fault::ListsPrefixNamespaces,
        &["namespace::prefix_namespaces_are_isolated"],
    )
    .await;
    must_fail(
        Fault::RecordsDeclaredUnsupportedButWork,
        &["records::record_capability_is_honest"],
    )
    .await;
    must_fail(
        Fault::LostHidesHolder,
        &[
            "claims::lost_names_the_holder",
            "claims::claimant_is_idempotent",
        ],
    )
    .await;
    must_fail(
        Fault::NoLifeForTombstoned,
        &["lives::tombstoned_name_gets_a_life"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_running_slots_are_caught() {
    must_fail(
        Fault::SlotNotAtomic,
        &["slots::racing_nodes_one_winner_per_task"],
    )
    .await;
    must_fail(
        Fault::SlotOutlivesLease,
        &["slots::slot_ends_with_the_lease"],
    )
    .await;
    must_fail(
        Fault::SlotReleasedByAnyone,
        &["slots::release_frees_only_its_own"],
    )
    .await;
    must_fail(Fault::SlotRetryHeld, &["slots::one_holder_per_task"]).await;
    must_fail(
        Fault::SlotSurvivesCleanupAll,
        &["slots::cleanup_all_frees_slots_of_its_namespace"],
    )
    .await;
    must_fail(
        Fault::SlotsDeclaredButUnsupported,
        &["slots::slot_capability_is_honest"],
    )
    .await;
    // The broken registry's table without a fault passes every slot case: the faults above are
    // what the cases catch.
    for case in cases().iter().filter(|c| c.module == "slots") {
        let outcome = run_case(Arc::new(broken(Fault::SlotTable)), case).await;
        assert_eq!(outcome, Ok(()), "{}", case.path());
    }
}

#[tokio::test(start_paused = true)]
async fn a_registry_without_watches_skips_the_watch_cases() {
    let watch_cases: Vec<_> = cases()
        .into_iter()
        .filter(|c| c.requires == Requirement::Watch)
        .collect();
    assert!(watch_cases.len() >= 8);
    for case in &watch_cases {
        match run_case(Arc::new(broken(Fault::NoWatches)), case).await {
            Err(CaseError::Skipped(reason)) => assert!(reason.contains("watch"), "{reason}"),
            other => panic!("{}: expected a skip, got {other:?}", case.path()),
        }
    }
    let honest = cases()
        .into_iter()
        .find(|c| c.path() == "watch::watch_capability_is_honest")
        .expect("the honesty case");
    let outcome = run_case(Arc::new(broken(Fault::NoWatches)), &honest).await;
    assert_eq!(outcome, Ok(()), "an honest registry without watches");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clock_cases_pass_on_a_memory_registry_with_a_clock() {
    let factory = MemoryFactory::new().with_clock(Arc::new(dcron_core::SystemClock));
    let clock_cases: Vec<_> = cases()
        .into_iter()
        .filter(|c| c.requires == Requirement::Clock)
        .collect();
    assert!(!clock_cases.is_empty());
    for case in &clock_cases {
        let outcome = run_case(Arc::new(factory.clone()), case).await;
        assert_eq!(outcome, Ok(()), "{}", case.path());
    }
}
