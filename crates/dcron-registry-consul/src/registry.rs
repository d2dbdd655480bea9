//! `ConsulRegistry`: the `Registry` contract on Consul's HTTP API.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use dcron_core::{
    check_record_key, check_records, check_value_size, validate_task_name, Capabilities, Claim,
    ClaimOutcome, ClaimRequest, Claimant, Clock, CorruptEntry, Error, FireKey, Lease, Life,
    Listing, Node, NodeEvent, PutMode, RecordKind, Registry, Result, SlotOutcome, SystemClock,
    TaskMeta, TaskMetaEvent, Tombstone, WatchStream,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::claims::{self, ClaimContext};
use crate::client::{txn_groups, Client, Ctx, KvEntry, TxnKvOp, TxnOutcome, BACKEND};
use crate::config::ConsulRegistryConfig;
use crate::keys::Keys;
use crate::watch::{self, Change};

/// The largest encoded task record stored: task records travel base64-encoded inside `/v1/txn`
/// bodies, which Consul limits to 512 KiB (`txn_max_req_len`), so 3/4 of that minus 8 KiB for
/// the other operations and JSON (Consul's own value limit, `kv_max_value_size`, is 512 KiB).
pub const MAX_VALUE_BYTES: usize = 512 * 1024 / 4 * 3 - 8 * 1024;

/// The most record transactions of one `put_records` batch in flight at once.
const MAX_TXNS_IN_FLIGHT: usize = 16;

/// Rounds of read-then-create before `ensure_lives` reports contention.
const MAX_LIFE_ROUNDS: usize = 8;

/// Buffered events per watch before it coalesces into a `Resync`.
const WATCH_BUFFER: usize = 1024;

/// The stored value of a life. Its generation is the key's `ModifyIndex` (the raft index of the
/// write that started the life), so the value carries a fresh nonce: rewriting the same
/// live-since still starts a new life (Consul does not bump the index of an unchanged value).
#[derive(Serialize, Deserialize)]
struct StoredLife {
    live_since: DateTime<Utc>,
    nonce: String,
}

impl StoredLife {
    fn encode(live_since: DateTime<Utc>) -> Vec<u8> {
        serde_json::to_vec(&StoredLife {
            live_since,
            nonce: nonce(),
        })
        .unwrap_or_default()
    }

    fn life(entry: &KvEntry) -> Result<Life> {
        let stored: StoredLife =
            serde_json::from_slice(&entry.bytes()?).map_err(|e| Error::Corrupt {
                key: entry.key.clone(),
                reason: e.to_string(),
            })?;
        Ok(Life::new(entry.modify_index, stored.live_since))
    }
}

/// A value that differs on every call (time and a process-wide counter).
fn nonce() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = Utc::now().timestamp_nanos_opt().unwrap_or_default();
    format!("{t:x}-{}-{n:x}", std::process::id())
}

/// A dcron registry on Consul: sessions for membership, `/v1/txn` for tasks, tombstones, lives
/// and claims, blocking queries for watches.
///
/// Cheap to clone (shared state). See the crate documentation for the key layout and the
/// algorithms.
#[derive(Clone)]
pub struct ConsulRegistry {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    keys: Keys,
    config: ConsulRegistryConfig,
    clock: Arc<dyn Clock>,
    /// When each task's expired claims are next due for a sweep (never held across an `.await`).
    swept: Mutex<HashMap<String, Instant>>,
    /// Names whose claims a background task deletes as they expire.
    draining: Mutex<std::collections::HashSet<String>>,
}

impl std::fmt::Debug for ConsulRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulRegistry")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl ConsulRegistry {
    /// Builds a registry without contacting Consul.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a configuration that
    /// [`ConsulRegistryConfig::validate`] refuses or TLS material that does not parse.
    pub fn new(config: ConsulRegistryConfig) -> Result<Self> {
        let client = Client::new(&config)?;
        Ok(ConsulRegistry {
            inner: Arc::new(Inner {
                client,
                keys: Keys::new(&config.namespace),
                config,
                clock: Arc::new(SystemClock),
                swept: Mutex::new(HashMap::new()),
                draining: Mutex::new(Default::default()),
            }),
        })
    }

    /// Builds a registry and checks that Consul answers (and accepts the token) with one read.
    ///
    /// # Errors
    /// As [`ConsulRegistry::new`]; [`Error::Unavailable`] when the agent cannot be reached,
    /// [`Error::AccessDenied`] when the token is refused.
    pub async fn connect(config: ConsulRegistryConfig) -> Result<Self> {
        let registry = ConsulRegistry::new(config)?;
        registry.check().await?;
        Ok(registry)
    }

    /// Reads the namespace's node prefix once: `Ok` when Consul answers.
    ///
    /// # Errors
    /// [`Error::Unavailable`] or [`Error::AccessDenied`] as for any call.
    pub async fn check(&self) -> Result<()> {
        let prefix = self.inner.keys.nodes_prefix();
        self.inner
            .client
            .kv_list(&prefix, None, Ctx::new("check", &prefix))
            .await
            .map(|_| ())
    }

    /// Uses another wall clock for claim expiry (the default is the system clock).
    pub fn with_clock(self, clock: Arc<dyn Clock>) -> Self {
        let inner = Arc::try_unwrap(self.inner).unwrap_or_else(|shared| Inner {
            client: shared.client.clone(),
            keys: shared.keys.clone(),
            config: shared.config.clone(),
            clock: shared.clock.clone(),
            swept: Mutex::new(HashMap::new()),
            draining: Mutex::new(Default::default()),
        });
        ConsulRegistry {
            inner: Arc::new(Inner { clock, ..inner }),
        }
    }

    /// The KV key of a task record (`<namespace>/tasks/meta/<escaped name>`), for operators and
    /// tests that look at the store directly.
    pub fn task_key(&self, name: &str) -> String {
        self.inner.keys.task(name)
    }

    /// The KV key of a node record (`<namespace>/nodes/<escaped id>`).
    pub fn node_key(&self, node_id: &str) -> String {
        self.inner.keys.node(node_id)
    }

    /// The configuration in use.
    pub fn config(&self) -> &ConsulRegistryConfig {
        &self.inner.config
    }

    fn client(&self) -> &Client {
        &self.inner.client
    }

    fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    fn now(&self) -> DateTime<Utc> {
        self.inner.clock.now()
    }

    /// Sweeps a task's expired claims in the background: the first claim of a task schedules
    /// its next sweep one retention (at least 1 s) later, and each sweep schedules the next.
    fn maybe_sweep(&self, tasks: impl IntoIterator<Item = String>, retention: Duration) {
        let due: Vec<String> = {
            let mut next = match self.inner.swept.lock() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            let now = Instant::now();
            let period = retention.max(Duration::from_secs(1));
            if next.len() > 100_000 {
                next.retain(|_, due| *due > now);
            }
            let mut due = Vec::new();
            for task in tasks {
                match next.get(&task) {
                    Some(at) if *at > now => {}
                    Some(_) => {
                        next.insert(task.clone(), now + period);
                        due.push(task);
                    }
                    None => {
                        next.insert(task, now + period);
                    }
                }
            }
            due
        };
        if due.is_empty() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            for task in due {
                let now_ms = this.now().timestamp_millis();
                let result = async {
                    let found =
                        claims::list_claims(this.client(), this.keys(), now_ms, &task).await?;
                    claims::delete_expired(this.client(), &task, &found.expired).await
                }
                .await;
                if let Err(error) = result {
                    tracing::debug!(%task, %error, "consul claim sweep failed");
                }
            }
        });
    }

    /// Deletes the claims of `names` as their retentions end, in one background task, until
    /// none is left (names removed by cleanup are claimed no more, so the per-claim sweep would
    /// never come back to them). Names already being swept are skipped.
    fn sweep_until_empty(&self, names: Vec<String>) {
        let mut names: Vec<String> = {
            let mut busy = match self.inner.draining.lock() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            names
                .into_iter()
                .filter(|n| busy.insert(n.clone()))
                .collect()
        };
        if names.is_empty() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let mut failures = 0u32;
            while !names.is_empty() {
                let now_ms = this.now().timestamp_millis();
                let mut next_ms: Option<i64> = None;
                let mut left = Vec::with_capacity(names.len());
                for name in names {
                    let swept = async {
                        // A name given a life again is claimed again: the per-claim sweep has it.
                        let life = this.keys().life(&name);
                        let ctx = Ctx::new("claim sweep", &name);
                        if this.client().kv_get(&life, ctx).await?.is_some() {
                            return Ok(None);
                        }
                        let found =
                            claims::list_claims(this.client(), this.keys(), now_ms, &name).await?;
                        claims::delete_expired(this.client(), &name, &found.expired).await?;
                        Ok::<_, Error>(found.next_expiry_ms)
                    }
                    .await;
                    match swept {
                        // Nothing live left (an undecodable claim never expires: cleanup leaves
                        // it to an operator), or the name lives again.
                        Ok(None) => this.done_draining(&name),
                        Ok(Some(soonest)) => {
                            next_ms = Some(next_ms.map_or(soonest, |n| n.min(soonest)));
                            left.push(name);
                        }
                        Err(error) => {
                            tracing::debug!(%name, %error, "consul claim sweep failed");
                            failures += 1;
                            left.push(name);
                        }
                    }
                }
                names = left;
                if names.is_empty() || failures > 20 {
                    break;
                }
                let wait_ms = next_ms.map_or(1_000, |n| n.saturating_sub(now_ms));
                let wait = Duration::from_millis(u64::try_from(wait_ms).unwrap_or(0))
                    .clamp(Duration::from_secs(1), Duration::from_secs(3600));
                tokio::time::sleep(wait).await;
            }
            for name in names {
                this.done_draining(&name);
            }
        });
    }

    fn done_draining(&self, name: &str) {
        let mut busy = match self.inner.draining.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        busy.remove(name);
    }

    fn decode_listing<T>(
        entries: Vec<KvEntry>,
        prefix: &str,
        decode: impl Fn(&str, &[u8]) -> Result<T>,
    ) -> Listing<T> {
        let mut listing = Listing::default();
        for entry in entries {
            let name = Keys::name_under(prefix, &entry.key);
            match entry.bytes().and_then(|b| decode(&entry.key, &b)) {
                Ok(item) => listing.items.push(item),
                Err(e) => listing.corrupt.push(CorruptEntry {
                    key: name.unwrap_or_else(|| entry.key.clone()),
                    reason: match e {
                        Error::Corrupt { reason, .. } => reason,
                        other => other.to_string(),
                    },
                }),
            }
        }
        listing
    }

    /// Runs a transaction whose rollback can only mean a failed condition; other failures
    /// (ACL refusals, …) become errors. Answers the entries, or the failed op indexes.
    async fn txn(
        &self,
        ops: &[TxnKvOp],
        ctx: Ctx<'_>,
    ) -> Result<std::result::Result<Vec<KvEntry>, Vec<usize>>> {
        match self.client().txn(ops, ctx).await? {
            TxnOutcome::Committed(entries) => Ok(Ok(entries)),
            TxnOutcome::RolledBack(failures) => {
                TxnOutcome::conditions_only(&failures, ops, ctx)?;
                if failures.is_empty() {
                    return Err(ctx.rolled_back(&failures));
                }
                Ok(Err(failures.iter().map(|f| f.op_index).collect()))
            }
        }
    }

    /// Reads the life keys of `names` with read-only transactions: name → entry.
    async fn read_lives(&self, names: &[&str]) -> Result<HashMap<String, KvEntry>> {
        let keys = self.keys();
        let ops: Vec<TxnKvOp> = names
            .iter()
            .map(|name| TxnKvOp::get_tree(keys.life(name)))
            .collect();
        let wanted: HashMap<String, &str> =
            names.iter().map(|name| (keys.life(name), *name)).collect();
        let subject = names.first().copied().unwrap_or("");
        let ctx = Ctx::new("ensure_lives", subject);
        let mut found = HashMap::new();
        for group in txn_groups(&ops) {
            let entries = match self.txn(&ops[group], ctx).await? {
                Ok(entries) => entries,
                Err(_) => return Err(ctx.agent(Some(409), "a read-only transaction rolled back")),
            };
            for entry in entries {
                if let Some(name) = wanted.get(&entry.key) {
                    found.insert((*name).to_string(), entry);
                }
            }
        }
        Ok(found)
    }
}

#[async_trait]
impl Registry for ConsulRegistry {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::with_max_value_bytes(MAX_VALUE_BYTES)
            .with_records()
            .with_exactly_once()
            .with_slots()
    }

    // ----- membership -----

    async fn register(&self, node: &Node, ttl: Duration) -> Result<Lease> {
        dcron_core::check_registration(node, ttl)?;
        let (session_ttl, granted) = self.inner.config.session_ttl(ttl)?;
        let ctx = Ctx::new("register", &node.id);
        let client = self.client();
        let name = format!("dcron {} node {}", self.inner.config.namespace, node.id);
        let session = client.session_create(&name, session_ttl, ctx).await?;
        let key = self.keys().node(&node.id);
        let value = node.encode();
        let result = async {
            for _ in 0..3 {
                let ops = [TxnKvOp::lock(key.clone(), &value, &session)];
                match client.txn(&ops, ctx).await? {
                    TxnOutcome::Committed(_) => return Ok(true),
                    TxnOutcome::RolledBack(failures) => {
                        TxnOutcome::conditions_only(&failures, &ops, ctx)?;
                    }
                }
                // An older registration of this node holds the key: replace it. Destroying its
                // session deletes the key (behavior=delete) and makes its keep-alives fail.
                if let Some(entry) = client.kv_get(&key, ctx).await? {
                    match entry.session {
                        Some(old) if old != session => client.session_destroy(&old, ctx).await?,
                        _ => {}
                    }
                }
            }
            Ok::<bool, Error>(false)
        }
        .await;
        match result {
            Ok(true) => Ok(Lease {
                node_id: node.id.clone(),
                id: session,
                ttl: granted,
            }),
            Ok(false) => {
                let _ = client.session_destroy(&session, ctx).await;
                Err(ctx.agent(None, format!("{key} stays locked by another session")))
            }
            Err(e) => {
                let _ = client.session_destroy(&session, ctx).await;
                Err(e)
            }
        }
    }

    async fn keep_alive(&self, lease: &Lease) -> Result<()> {
        let ctx = Ctx::new("keep_alive", &lease.node_id);
        if self.client().session_renew(&lease.id, ctx).await? {
            Ok(())
        } else {
            Err(Error::LeaseLost {
                node: lease.node_id.clone(),
            })
        }
    }

    async fn update_node(&self, lease: &Lease, node: &Node) -> Result<()> {
        if node.id != lease.node_id {
            return Err(Error::InvalidArgument(format!(
                "node `{}` cannot be updated under the lease of node `{}`",
                node.id, lease.node_id
            )));
        }
        let key = self.keys().node(&node.id);
        // Atomically: only while our session still holds the key, rewrite it under the same lock.
        let ops = [
            TxnKvOp::check_session(key.clone(), &lease.id),
            TxnKvOp::lock(key.clone(), &node.encode(), &lease.id),
        ];
        let ctx = Ctx::new("update_node", &node.id);
        match self.client().txn(&ops, ctx).await? {
            TxnOutcome::Committed(_) => Ok(()),
            // The session check failed (another session, or none, holds the key; the `lock`
            // then also fails, with "invalid session" when ours is gone): the lease is lost.
            TxnOutcome::RolledBack(failures)
                if failures
                    .iter()
                    .any(|f| f.op_index == 0 && f.kind() == crate::error::Failure::Condition) =>
            {
                Err(Error::LeaseLost {
                    node: lease.node_id.clone(),
                })
            }
            TxnOutcome::RolledBack(failures) => {
                TxnOutcome::conditions_only(&failures, &ops, ctx)?;
                Err(Error::LeaseLost {
                    node: lease.node_id.clone(),
                })
            }
        }
    }

    async fn unregister(&self, lease: &Lease) -> Result<()> {
        let ctx = Ctx::new("unregister", &lease.node_id);
        let key = self.keys().node(&lease.node_id);
        let ops = [
            TxnKvOp::check_session(key.clone(), &lease.id),
            TxnKvOp::delete(key.clone()),
        ];
        // Rolled back: the key is not ours (any more); nothing to delete.
        let _ = self.txn(&ops, ctx).await?;
        self.client().session_destroy(&lease.id, ctx).await
    }

    async fn list_nodes(&self) -> Result<Listing<Node>> {
        let prefix = self.keys().nodes_prefix();
        let (entries, _) = self
            .client()
            .kv_list(&prefix, None, Ctx::new("list_nodes", &prefix))
            .await?;
        // A node key without a session is not attached to a live lease.
        let live = entries
            .into_iter()
            .filter(|e| e.session.is_some())
            .collect();
        Ok(Self::decode_listing(live, &prefix, Node::decode))
    }

    async fn watch_nodes(&self) -> Result<WatchStream<NodeEvent>> {
        let client = self.client().clone();
        let prefix = self.keys().nodes_prefix();
        let (entries, index) = client
            .kv_list(&prefix, None, Ctx::new("watch_nodes", &prefix))
            .await?;
        let (tx, rx) = dcron_core::watch_channel(WATCH_BUFFER);
        let wait = self.inner.config.watch_wait;
        let names = prefix.clone();
        tokio::spawn(watch::run(
            client,
            prefix,
            wait,
            index,
            watch::snapshot(&entries),
            tx,
            move |change| match change {
                Change::Put(entry) => {
                    entry.session.as_ref()?;
                    match entry.bytes().and_then(|b| Node::decode(&entry.key, &b)) {
                        Ok(node) => Some(NodeEvent::Put(node)),
                        Err(error) => {
                            tracing::warn!(key = %entry.key, %error, "corrupt node record skipped");
                            None
                        }
                    }
                }
                Change::Delete(key) => {
                    Keys::name_under(&names, key).map(|id| NodeEvent::Delete { id })
                }
            },
        ));
        Ok(rx)
    }

    // ----- tasks -----

    async fn put_task(&self, meta: &TaskMeta, mode: PutMode) -> Result<()> {
        validate_task_name(&meta.name)?;
        let encoded = meta.encode();
        check_value_size(meta, encoded.len(), &self.capabilities())?;
        let keys = self.keys();
        let name = &meta.name;
        let (task, tomb, life) = (keys.task(name), keys.tombstone(name), keys.life(name));
        let live_since = || {
            meta.created_at.ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "task `{name}`: a create-only or force write needs `created_at` (its live-since)"
                ))
            })
        };
        // The core's rules refuse an existing or tombstoned name before a missing `created_at`
        // (`tombstone::decide`): without one, the checks run alone and nothing is written.
        let checks_only = mode == PutMode::CreateOnly && meta.created_at.is_none();
        let ops = match mode {
            PutMode::CreateOnly if checks_only => vec![
                TxnKvOp::check_not_exists(task.clone()),
                TxnKvOp::check_not_exists(tomb),
            ],
            PutMode::CreateOnly => vec![
                TxnKvOp::check_not_exists(task.clone()),
                TxnKvOp::check_not_exists(tomb),
                TxnKvOp::set(task, &encoded),
                TxnKvOp::set(life, &StoredLife::encode(live_since()?)),
            ],
            PutMode::Update => vec![
                TxnKvOp::check_not_exists(tomb),
                TxnKvOp::get(task.clone()),
                TxnKvOp::set(task, &encoded),
            ],
            // Claims are kept: they go only when their retention ends.
            PutMode::Force => vec![
                TxnKvOp::set(task, &encoded),
                TxnKvOp::delete(tomb),
                TxnKvOp::set(life, &StoredLife::encode(live_since()?)),
            ],
        };
        let ctx = Ctx::new("put_task", name);
        let failed = match self.txn(&ops, ctx).await? {
            Ok(_) if checks_only => return live_since().map(|_| ()),
            Ok(_) => return Ok(()),
            Err(failed) => failed,
        };
        let name = name.clone();
        let has = |i: usize| failed.contains(&i);
        Err(match mode {
            PutMode::CreateOnly if has(0) => Error::AlreadyExists { name },
            PutMode::CreateOnly if has(1) => Error::Tombstoned { name },
            PutMode::Update if has(0) => Error::Tombstoned { name },
            PutMode::Update if has(1) => Error::task_not_found(name),
            _ => ctx.agent(
                Some(409),
                format!("unexpected failed operations {failed:?}"),
            ),
        })
    }

    async fn get_task(&self, name: &str) -> Result<Option<TaskMeta>> {
        let key = self.keys().task(name);
        match self
            .client()
            .kv_get(&key, Ctx::new("get_task", name))
            .await?
        {
            None => Ok(None),
            Some(entry) => TaskMeta::decode(name, &entry.bytes()?).map(Some),
        }
    }

    async fn list_tasks(&self) -> Result<Listing<TaskMeta>> {
        let prefix = self.keys().metas_prefix();
        let (entries, _) = self
            .client()
            .kv_list(&prefix, None, Ctx::new("list_tasks", &prefix))
            .await?;
        Ok(Self::decode_listing(entries, &prefix, TaskMeta::decode))
    }

    async fn watch_tasks(&self) -> Result<WatchStream<TaskMetaEvent>> {
        let client = self.client().clone();
        let keys = self.keys();
        let root = keys.tasks_root();
        // Records and tombstones share one prefix: one blocking query, one consistent listing,
        // events of a name in the order of its keys (record, then tombstone).
        let (entries, index) = client
            .kv_list(&root, None, Ctx::new("watch_tasks", &root))
            .await?;
        let (tx, rx) = dcron_core::watch_channel(WATCH_BUFFER);
        let wait = self.inner.config.watch_wait;
        let (metas, tombs) = (keys.metas_prefix(), keys.tombstones_prefix());
        tokio::spawn(watch::run(
            client,
            root,
            wait,
            index,
            watch::snapshot(&entries),
            tx,
            move |change| match change {
                Change::Put(entry) if entry.key.starts_with(&metas) => {
                    match entry.bytes().and_then(|b| TaskMeta::decode(&entry.key, &b)) {
                        Ok(meta) => Some(TaskMetaEvent::Put(meta)),
                        Err(error) => {
                            tracing::warn!(key = %entry.key, %error, "corrupt task record skipped");
                            // Listed as corrupt by list_tasks: let the consumer list again.
                            Some(TaskMetaEvent::Resync)
                        }
                    }
                }
                Change::Put(entry) => {
                    match entry
                        .bytes()
                        .and_then(|b| Tombstone::decode(&entry.key, &b))
                    {
                        Ok(t) => Some(TaskMetaEvent::Tombstoned(t)),
                        Err(error) => {
                            tracing::warn!(key = %entry.key, %error, "corrupt tombstone skipped");
                            Some(TaskMetaEvent::Resync)
                        }
                    }
                }
                Change::Delete(key) => {
                    if let Some(name) = Keys::name_under(&metas, key) {
                        Some(TaskMetaEvent::Removed { name })
                    } else {
                        Keys::name_under(&tombs, key)
                            .map(|name| TaskMetaEvent::TombstoneCleared { name })
                    }
                }
            },
        ));
        Ok(rx)
    }

    // ----- tombstones -----

    async fn mark_deleted(&self, name: &str, at: DateTime<Utc>) -> Result<()> {
        validate_task_name(name)?;
        let tomb = Tombstone {
            name: name.to_string(),
            deleted_at: at,
        };
        // cas 0: create only, so an existing tombstone keeps its first time.
        let ops = [TxnKvOp::cas(self.keys().tombstone(name), &tomb.encode(), 0)];
        self.txn(&ops, Ctx::new("mark_deleted", name))
            .await
            .map(|_| ())
    }

    async fn get_tombstone(&self, name: &str) -> Result<Option<Tombstone>> {
        let key = self.keys().tombstone(name);
        match self
            .client()
            .kv_get(&key, Ctx::new("get_tombstone", name))
            .await?
        {
            None => Ok(None),
            Some(entry) => Tombstone::decode(name, &entry.bytes()?).map(Some),
        }
    }

    async fn list_tombstones(&self) -> Result<Listing<Tombstone>> {
        let prefix = self.keys().tombstones_prefix();
        let (entries, _) = self
            .client()
            .kv_list(&prefix, None, Ctx::new("list_tombstones", &prefix))
            .await?;
        Ok(Self::decode_listing(entries, &prefix, Tombstone::decode))
    }

    async fn clear_tombstone(&self, name: &str) -> Result<()> {
        let key = self.keys().tombstone(name);
        let ops = [TxnKvOp::get(key.clone()), TxnKvOp::delete(key)];
        match self.txn(&ops, Ctx::new("clear_tombstone", name)).await? {
            Ok(_) => Ok(()),
            Err(_) => Err(Error::NotFound {
                what: "tombstone",
                name: name.to_string(),
            }),
        }
    }

    async fn cleanup_task(&self, name: &str) -> Result<()> {
        let keys = self.keys();
        // Claims stay until their retention ends; a background sweep deletes them then.
        let ops = [
            TxnKvOp::delete(keys.task(name)),
            TxnKvOp::delete(keys.tombstone(name)),
            TxnKvOp::delete(keys.life(name)),
        ];
        let ctx = Ctx::new("cleanup_task", name);
        match self.txn(&ops, ctx).await? {
            Ok(_) => {
                self.sweep_until_empty(vec![name.to_string()]);
                Ok(())
            }
            Err(failed) => Err(ctx.agent(Some(409), format!("failed operations {failed:?}"))),
        }
    }

    async fn cleanup_all(&self) -> Result<()> {
        let keys = self.keys();
        // Claims stay until their retention ends; a background sweep deletes them then.
        let ops = [
            TxnKvOp::delete_tree(keys.tasks_root()),
            TxnKvOp::delete_tree(keys.lives_prefix()),
            TxnKvOp::delete_tree(keys.records_root()),
            // Running slots go too: their holders' sessions live on, the slots are free.
            TxnKvOp::delete_tree(keys.slots_root()),
        ];
        let root = keys.tasks_root();
        let ctx = Ctx::new("cleanup_all", &root);
        match self.txn(&ops, ctx).await? {
            Ok(_) => {}
            Err(failed) => {
                return Err(ctx.agent(Some(409), format!("failed operations {failed:?}")))
            }
        }
        let claims_root = keys.claims_root();
        match self
            .client()
            .kv_keys(&claims_root, "/", Ctx::new("cleanup_all", &claims_root))
            .await
        {
            Ok(dirs) => self.sweep_until_empty(
                dirs.iter()
                    .filter_map(|dir| Keys::name_under(&claims_root, dir))
                    .collect(),
            ),
            Err(error) => tracing::debug!(%error, "consul: claims left to the per-task sweeps"),
        }
        Ok(())
    }

    // ----- lives -----

    async fn ensure_lives(&self, names: &[(String, DateTime<Utc>)]) -> Result<Vec<Life>> {
        for (name, _) in names {
            validate_task_name(name)?;
        }
        let mut wanted: Vec<(&str, DateTime<Utc>)> = Vec::with_capacity(names.len());
        for (name, at) in names {
            if !wanted.iter().any(|(n, _)| *n == name.as_str()) {
                wanted.push((name.as_str(), *at));
            }
        }
        let keys = self.keys();
        let mut lives: HashMap<String, Life> = HashMap::new();
        let mut missing: Vec<(&str, DateTime<Utc>)> = wanted.clone();
        for _ in 0..MAX_LIFE_ROUNDS {
            // Read what exists.
            let names: Vec<&str> = missing.iter().map(|(n, _)| *n).collect();
            for (name, entry) in self.read_lives(&names).await? {
                let life = StoredLife::life(&entry).unwrap_or_else(|error| {
                    // The generation (the key's index) is still right; the live-since is not
                    // readable, so the caller's instant stands in for it.
                    tracing::warn!(key = %entry.key, %error, "corrupt life: live-since unknown");
                    let at = missing
                        .iter()
                        .find(|(n, _)| *n == name)
                        .map_or_else(Utc::now, |(_, at)| *at);
                    Life::new(entry.modify_index, at)
                });
                lives.insert(name, life);
            }
            missing.retain(|(n, _)| !lives.contains_key(*n));
            if missing.is_empty() {
                break;
            }
            // Create the rest, each only if still absent; a rival's life wins the race and is
            // read in the next round.
            let ops: Vec<TxnKvOp> = missing
                .iter()
                .map(|(name, at)| TxnKvOp::cas(keys.life(name), &StoredLife::encode(*at), 0))
                .collect();
            let ctx = Ctx::new("ensure_lives", missing[0].0);
            for group in txn_groups(&ops) {
                if let Ok(entries) = self.txn(&ops[group.clone()], ctx).await? {
                    for (name, at) in &missing[group] {
                        let key = keys.life(name);
                        if let Some(entry) = entries.iter().find(|e| e.key == key) {
                            lives.insert((*name).to_string(), Life::new(entry.modify_index, *at));
                        }
                    }
                }
            }
            missing.retain(|(n, _)| !lives.contains_key(*n));
            if missing.is_empty() {
                break;
            }
        }
        if !missing.is_empty() {
            return Err(Error::unavailable(format!(
                "consul ensure_lives `{}`: still contended after {MAX_LIFE_ROUNDS} rounds",
                missing[0].0
            )));
        }
        names
            .iter()
            .map(|(name, _)| {
                lives.get(name).copied().ok_or_else(|| Error::Backend {
                    backend: BACKEND,
                    message: format!("consul ensure_lives `{name}`: no life after creation"),
                    source: None,
                })
            })
            .collect()
    }

    async fn restart_life(&self, name: &str, at: DateTime<Utc>) -> Result<Life> {
        validate_task_name(name)?;
        let keys = self.keys();
        let life_key = keys.life(name);
        let ops = [
            TxnKvOp::delete(keys.tombstone(name)),
            TxnKvOp::set(life_key.clone(), &StoredLife::encode(at)),
        ];
        let ctx = Ctx::new("restart_life", name);
        match self.txn(&ops, ctx).await? {
            Ok(entries) => entries
                .iter()
                .find(|e| e.key == life_key)
                .map(|e| Life::new(e.modify_index, at))
                .ok_or_else(|| ctx.agent(None, "the committed transaction lacks the life")),
            Err(failed) => Err(ctx.agent(Some(409), format!("failed operations {failed:?}"))),
        }
    }

    // ----- claims -----

    async fn claim(
        &self,
        claimant: &Claimant,
        requests: &[ClaimRequest],
    ) -> Result<Vec<ClaimOutcome>> {
        let clock = self.inner.clock.clone();
        let now = move || clock.now();
        let cx = ClaimContext {
            client: self.client(),
            keys: self.keys(),
            claimant,
            now: &now,
        };
        let outcomes = claims::claim_batch(&cx, requests).await?;
        if let Some(retention) = requests.iter().map(|r| r.retention).min() {
            self.maybe_sweep(requests.iter().map(|r| r.fire.task.clone()), retention);
        }
        Ok(outcomes)
    }

    async fn list_claims(&self, task: &str) -> Result<Listing<Claim>> {
        let now_ms = self.now().timestamp_millis();
        let found = claims::list_claims(self.client(), self.keys(), now_ms, task).await?;
        if !found.expired.is_empty() {
            if let Err(error) = claims::delete_expired(self.client(), task, &found.expired).await {
                tracing::debug!(%task, %error, "consul claim sweep failed");
            }
        }
        Ok(found.listing)
    }

    // ----- running slots -----

    async fn acquire_slot(&self, lease: &Lease, fire: &FireKey) -> Result<SlotOutcome> {
        crate::slots::acquire(self.client(), self.keys(), lease, fire).await
    }

    async fn release_slot(&self, lease: &Lease, fire: &FireKey) -> Result<()> {
        crate::slots::release(self.client(), self.keys(), lease, fire).await
    }

    // ----- records -----

    async fn put_records(&self, kind: RecordKind, records: &[(String, Vec<u8>)]) -> Result<()> {
        check_records(kind, records, &self.capabilities())?;
        let ops: Vec<TxnKvOp> = records
            .iter()
            .map(|(key, value)| TxnKvOp::set(self.keys().record(kind, key), value))
            .collect();
        let ctx = Ctx::new("put_records", kind.as_str());
        // One transaction per group (Consul limits operations and body size), the groups sent
        // concurrently: each record is written whole, the batch costs one round trip.
        let ops = ops.as_slice();
        let txns = txn_groups(ops).into_iter().map(|group| async move {
            match self.txn(&ops[group], ctx).await? {
                Ok(_) => Ok(()),
                Err(failed) => Err(ctx.agent(Some(409), format!("failed operations {failed:?}"))),
            }
        });
        futures::stream::iter(txns)
            .buffer_unordered(MAX_TXNS_IN_FLIGHT)
            .collect::<Vec<Result<()>>>()
            .await
            .into_iter()
            .collect()
    }

    async fn get_record(&self, kind: RecordKind, key: &str) -> Result<Option<Vec<u8>>> {
        check_record_key(kind, key)?;
        let consul_key = self.keys().record(kind, key);
        match self
            .client()
            .kv_get(&consul_key, Ctx::new("get_record", key))
            .await?
        {
            Some(entry) => entry.bytes().map(Some),
            None => Ok(None),
        }
    }

    async fn list_records(&self, kind: RecordKind) -> Result<Vec<(String, Vec<u8>)>> {
        let prefix = self.keys().records_prefix(kind);
        let (entries, _) = self
            .client()
            .kv_list(&prefix, None, Ctx::new("list_records", kind.as_str()))
            .await?;
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            let Some(key) = Keys::name_under(&prefix, &entry.key) else {
                tracing::warn!(key = %entry.key, "skipping a record whose key dcron did not write");
                continue;
            };
            match entry.bytes() {
                Ok(value) => out.push((key, value)),
                Err(error) => tracing::warn!(key = %entry.key, %error, "skipping a record"),
            }
        }
        Ok(out)
    }

    async fn delete_record(&self, kind: RecordKind, key: &str) -> Result<bool> {
        check_record_key(kind, key)?;
        let consul_key = self.keys().record(kind, key);
        // `get` fails the transaction when the key is absent, so among concurrent deleters
        // exactly one commits. (A `DELETE ?cas=<index>` would not do: Consul answers `true`
        // to a CAS delete of a key that is already gone.)
        let ops = [
            TxnKvOp::get(consul_key.clone()),
            TxnKvOp::delete(consul_key),
        ];
        Ok(self
            .txn(&ops, Ctx::new("delete_record", key))
            .await?
            .is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_differ() {
        assert_ne!(nonce(), nonce());
        let t = DateTime::<Utc>::UNIX_EPOCH;
        assert_ne!(StoredLife::encode(t), StoredLife::encode(t));
    }
}
