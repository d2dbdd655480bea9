//! `ConsulRegistry`: the `Registry` contract on Consul's HTTP API.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use dcron_core::{
    check_record_key, check_records, check_value_size, validate_task_name, Capabilities, Claim,
    ClaimOutcome, Clock, CorruptEntry, Error, FireKey, Lease, Listing, Node, NodeEvent, PutMode,
    RecordKind, Registry, Result, SystemClock, TaskMeta, TaskMetaEvent, Tombstone, WatchStream,
};
use futures::StreamExt;
use tokio::time::Instant;

use crate::claims;
use crate::client::{Client, KvEntry, TxnKvOp, TxnOutcome, BACKEND, MAX_TXN_BODY, MAX_TXN_OPS};
use crate::config::ConsulRegistryConfig;
use crate::keys::Keys;
use crate::watch::{self, Change};

/// The largest encoded task record stored: task records travel base64-encoded inside `/v1/txn`
/// bodies, which Consul limits to 512 KiB (`txn_max_req_len`), so 3/4 of that minus 8 KiB for
/// the other operations and JSON (Consul's own value limit, `kv_max_value_size`, is 512 KiB).
pub const MAX_VALUE_BYTES: usize = 512 * 1024 / 4 * 3 - 8 * 1024;

/// The most record transactions of one `put_records` batch in flight at once.
const MAX_RECORD_TXNS_IN_FLIGHT: usize = 16;

/// Splits `set` operations into groups that each fit one transaction ([`MAX_TXN_OPS`]
/// operations, [`MAX_TXN_BODY`] bytes of body; a group holds at least one operation), as
/// index ranges into `ops`.
fn txn_groups(ops: &[TxnKvOp]) -> Vec<std::ops::Range<usize>> {
    let mut groups = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, op) in ops.iter().enumerate() {
        let size = op.body_size();
        if i > start && (i - start == MAX_TXN_OPS || bytes + size > MAX_TXN_BODY) {
            groups.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < ops.len() {
        groups.push(start..ops.len());
    }
    groups
}

/// Buffered events per watch before it coalesces into a `Resync`.
const WATCH_BUFFER: usize = 1024;

/// A dcron registry on Consul: sessions for membership, `/v1/txn` for tasks, tombstones and
/// claims, blocking queries for watches.
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
        self.inner
            .client
            .kv_list(&self.inner.keys.nodes_prefix(), None)
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
        });
        ConsulRegistry {
            inner: Arc::new(Inner { clock, ..inner }),
        }
    }

    /// The KV key of a task record (`<namespace>/tasks/<escaped name>`), for operators and
    /// tests that look at the store directly.
    pub fn task_key(&self, name: &str) -> String {
        self.inner.keys.task(name)
    }

    /// The configuration in use.
    pub fn config(&self) -> &ConsulRegistryConfig {
        &self.inner.config
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
                    let (_, expired) =
                        claims::list_claims(&this.inner.client, &this.inner.keys, now_ms, &task)
                            .await?;
                    claims::delete_expired(&this.inner.client, &expired).await
                }
                .await;
                if let Err(error) = result {
                    tracing::debug!(%task, %error, "consul claim sweep failed");
                }
            }
        });
    }

    fn decode_listing<T>(
        entries: Vec<KvEntry>,
        decode: impl Fn(&str, &[u8]) -> Result<T>,
    ) -> Listing<T> {
        let mut listing = Listing::default();
        for entry in entries {
            match entry.bytes().and_then(|b| decode(&entry.key, &b)) {
                Ok(item) => listing.items.push(item),
                Err(e) => listing.corrupt.push(CorruptEntry {
                    key: entry.key.clone(),
                    reason: match e {
                        Error::Corrupt { reason, .. } => reason,
                        other => other.to_string(),
                    },
                }),
            }
        }
        listing
    }

    fn rolled_back(context: &str, errors: &[crate::client::TxnError]) -> Error {
        let what: Vec<&str> = errors.iter().map(|e| e.what.as_str()).collect();
        Error::Backend {
            backend: BACKEND,
            message: format!(
                "409 transaction rolled back at {context}: {}",
                what.join("; ")
            ),
            source: None,
        }
    }
}

#[async_trait]
impl Registry for ConsulRegistry {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::with_max_value_bytes(MAX_VALUE_BYTES).with_records()
    }

    async fn register(&self, node: &Node, ttl: Duration) -> Result<Lease> {
        dcron_core::check_registration(node, ttl)?;
        let client = &self.inner.client;
        let session_ttl = self.inner.config.session_ttl(ttl);
        let name = format!("dcron {} node {}", self.inner.config.namespace, node.id);
        let session = client.session_create(&name, session_ttl).await?;
        let key = self.inner.keys.node(&node.id);
        let value = node.encode();
        let result = async {
            for _ in 0..3 {
                if client
                    .kv_put(&key, value.clone(), &[("acquire", session.clone())])
                    .await?
                {
                    return Ok(true);
                }
                // An older registration of this node holds the key: replace it. Destroying its
                // session deletes the key (behavior=delete) and makes its keep-alives fail.
                if let Some(entry) = client.kv_get(&key).await? {
                    match entry.session {
                        Some(old) if old != session => client.session_destroy(&old).await?,
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
                ttl: session_ttl,
            }),
            Ok(false) => {
                let _ = client.session_destroy(&session).await;
                Err(Error::Backend {
                    backend: BACKEND,
                    message: format!("could not acquire {key}: held by another session"),
                    source: None,
                })
            }
            Err(e) => {
                let _ = client.session_destroy(&session).await;
                Err(e)
            }
        }
    }

    async fn keep_alive(&self, lease: &Lease) -> Result<()> {
        if self.inner.client.session_renew(&lease.id).await? {
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
        let key = self.inner.keys.node(&node.id);
        // Atomically: only while our session still holds the key, rewrite it under the same lock.
        let ops = [
            TxnKvOp::check_session(key.clone(), &lease.id),
            TxnKvOp::lock(key.clone(), &node.encode(), &lease.id),
        ];
        match self.inner.client.txn(&ops, &key).await? {
            TxnOutcome::Committed(_) => Ok(()),
            TxnOutcome::RolledBack(_) => Err(Error::LeaseLost {
                node: lease.node_id.clone(),
            }),
        }
    }

    async fn unregister(&self, lease: &Lease) -> Result<()> {
        let key = self.inner.keys.node(&lease.node_id);
        let ops = [
            TxnKvOp::check_session(key.clone(), &lease.id),
            TxnKvOp::delete(key.clone()),
        ];
        // Rolled back: the key is not ours (any more); nothing to delete.
        let _ = self.inner.client.txn(&ops, &key).await?;
        self.inner.client.session_destroy(&lease.id).await
    }

    async fn list_nodes(&self) -> Result<Listing<Node>> {
        let (entries, _) = self
            .inner
            .client
            .kv_list(&self.inner.keys.nodes_prefix(), None)
            .await?;
        // A node key without a session is not attached to a live lease.
        let live = entries
            .into_iter()
            .filter(|e| e.session.is_some())
            .collect();
        Ok(Self::decode_listing(live, Node::decode))
    }

    async fn watch_nodes(&self) -> Result<WatchStream<NodeEvent>> {
        let client = self.inner.client.clone();
        let prefix = self.inner.keys.nodes_prefix();
        let (entries, index) = client.kv_list(&prefix, None).await?;
        let (tx, rx) = dcron_core::watch_channel(WATCH_BUFFER);
        let wait = self.inner.config.watch_wait;
        let names_prefix = prefix.clone();
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
                    Keys::name_under(&names_prefix, key).map(|id| NodeEvent::Delete { id })
                }
            },
        ));
        Ok(rx)
    }

    async fn put_task(&self, meta: &TaskMeta, mode: PutMode) -> Result<()> {
        validate_task_name(&meta.name)?;
        let encoded = meta.encode();
        check_value_size(meta, encoded.len(), &self.capabilities())?;
        let keys = &self.inner.keys;
        let (task, tomb) = (keys.task(&meta.name), keys.tombstone(&meta.name));
        let ops = match mode {
            PutMode::CreateOnly => vec![
                TxnKvOp::check_not_exists(task.clone()),
                TxnKvOp::check_not_exists(tomb),
                TxnKvOp::set(task.clone(), &encoded),
            ],
            PutMode::Update => vec![
                TxnKvOp::check_not_exists(tomb),
                TxnKvOp::get(task.clone()),
                TxnKvOp::set(task.clone(), &encoded),
            ],
            PutMode::Force => vec![
                TxnKvOp::set(task.clone(), &encoded),
                TxnKvOp::delete(tomb),
                TxnKvOp::delete_tree(keys.claims_prefix(&meta.name)),
            ],
        };
        let errors = match self.inner.client.txn(&ops, &task).await? {
            TxnOutcome::Committed(_) => return Ok(()),
            TxnOutcome::RolledBack(errors) => errors,
        };
        let failed = |i: usize| errors.iter().any(|e| e.op_index == i);
        let name = meta.name.clone();
        Err(match mode {
            PutMode::CreateOnly if failed(0) => Error::AlreadyExists { name },
            PutMode::CreateOnly if failed(1) => Error::Tombstoned { name },
            PutMode::Update if failed(0) => Error::Tombstoned { name },
            PutMode::Update if failed(1) => Error::task_not_found(name),
            _ => Self::rolled_back(&task, &errors),
        })
    }

    async fn get_task(&self, name: &str) -> Result<Option<TaskMeta>> {
        let key = self.inner.keys.task(name);
        match self.inner.client.kv_get(&key).await? {
            None => Ok(None),
            Some(entry) => TaskMeta::decode(&key, &entry.bytes()?).map(Some),
        }
    }

    async fn list_tasks(&self) -> Result<Listing<TaskMeta>> {
        let (entries, _) = self
            .inner
            .client
            .kv_list(&self.inner.keys.tasks_prefix(), None)
            .await?;
        Ok(Self::decode_listing(entries, TaskMeta::decode))
    }

    async fn watch_tasks(&self) -> Result<WatchStream<TaskMetaEvent>> {
        let client = self.inner.client.clone();
        let keys = &self.inner.keys;
        let (tasks_prefix, tombs_prefix) = (keys.tasks_prefix(), keys.tombstones_prefix());
        let ((tasks, tasks_index), (tombs, tombs_index)) = futures::try_join!(
            client.kv_list(&tasks_prefix, None),
            client.kv_list(&tombs_prefix, None)
        )?;
        let (tx, rx) = dcron_core::watch_channel(WATCH_BUFFER);
        let wait = self.inner.config.watch_wait;
        let names = tasks_prefix.clone();
        tokio::spawn(watch::run(
            client.clone(),
            tasks_prefix,
            wait,
            tasks_index,
            watch::snapshot(&tasks),
            tx.clone(),
            move |change| match change {
                Change::Put(entry) => {
                    match entry.bytes().and_then(|b| TaskMeta::decode(&entry.key, &b)) {
                        Ok(meta) => Some(TaskMetaEvent::Put(meta)),
                        Err(error) => {
                            tracing::warn!(key = %entry.key, %error, "corrupt task record skipped");
                            None
                        }
                    }
                }
                Change::Delete(key) => {
                    Keys::name_under(&names, key).map(|name| TaskMetaEvent::Removed { name })
                }
            },
        ));
        let names = tombs_prefix.clone();
        tokio::spawn(watch::run(
            client,
            tombs_prefix,
            wait,
            tombs_index,
            watch::snapshot(&tombs),
            tx,
            move |change| match change {
                Change::Put(entry) => {
                    match entry
                        .bytes()
                        .and_then(|b| Tombstone::decode(&entry.key, &b))
                    {
                        Ok(t) => Some(TaskMetaEvent::Tombstoned(t)),
                        Err(error) => {
                            tracing::warn!(key = %entry.key, %error, "corrupt tombstone skipped");
                            None
                        }
                    }
                }
                Change::Delete(key) => Keys::name_under(&names, key)
                    .map(|name| TaskMetaEvent::TombstoneCleared { name }),
            },
        ));
        Ok(rx)
    }

    async fn mark_deleted(&self, name: &str, at: DateTime<Utc>) -> Result<()> {
        let tomb = Tombstone {
            name: name.to_string(),
            deleted_at: at,
        };
        // cas=0: create only, so an existing tombstone keeps its first time (`false` is fine).
        self.inner
            .client
            .kv_put(
                &self.inner.keys.tombstone(name),
                tomb.encode(),
                &[("cas", "0".to_string())],
            )
            .await
            .map(|_| ())
    }

    async fn get_tombstone(&self, name: &str) -> Result<Option<Tombstone>> {
        let key = self.inner.keys.tombstone(name);
        match self.inner.client.kv_get(&key).await? {
            None => Ok(None),
            Some(entry) => Tombstone::decode(&key, &entry.bytes()?).map(Some),
        }
    }

    async fn list_tombstones(&self) -> Result<Listing<Tombstone>> {
        let (entries, _) = self
            .inner
            .client
            .kv_list(&self.inner.keys.tombstones_prefix(), None)
            .await?;
        Ok(Self::decode_listing(entries, Tombstone::decode))
    }

    async fn clear_tombstone(&self, name: &str) -> Result<()> {
        let key = self.inner.keys.tombstone(name);
        let ops = [TxnKvOp::get(key.clone()), TxnKvOp::delete(key.clone())];
        match self.inner.client.txn(&ops, &key).await? {
            TxnOutcome::Committed(_) => Ok(()),
            TxnOutcome::RolledBack(_) => Err(Error::NotFound {
                what: "tombstone",
                name: name.to_string(),
            }),
        }
    }

    async fn cleanup_task(&self, name: &str) -> Result<()> {
        let keys = &self.inner.keys;
        let ops = [
            TxnKvOp::delete(keys.task(name)),
            TxnKvOp::delete(keys.tombstone(name)),
            TxnKvOp::delete_tree(keys.claims_prefix(name)),
        ];
        match self.inner.client.txn(&ops, &keys.task(name)).await? {
            TxnOutcome::Committed(_) => Ok(()),
            TxnOutcome::RolledBack(errors) => Err(Self::rolled_back(&keys.task(name), &errors)),
        }
    }

    async fn cleanup_all(&self) -> Result<()> {
        let keys = &self.inner.keys;
        let ops = [
            TxnKvOp::delete_tree(keys.tasks_prefix()),
            TxnKvOp::delete_tree(keys.tombstones_prefix()),
            TxnKvOp::delete_tree(keys.claims_root()),
            TxnKvOp::delete_tree(keys.records_root()),
        ];
        match self.inner.client.txn(&ops, &keys.tasks_prefix()).await? {
            TxnOutcome::Committed(_) => Ok(()),
            TxnOutcome::RolledBack(errors) => Err(Self::rolled_back(&keys.tasks_prefix(), &errors)),
        }
    }

    async fn claim(
        &self,
        fires: &[FireKey],
        node_id: &str,
        retention: Duration,
    ) -> Result<Vec<ClaimOutcome>> {
        if fires.is_empty() {
            return Ok(Vec::new());
        }
        let clock = self.inner.clock.clone();
        let outcomes = claims::claim_batch(
            &self.inner.client,
            &self.inner.keys,
            move || clock.now(),
            fires,
            node_id,
            retention,
        )
        .await?;
        self.maybe_sweep(fires.iter().map(|f| f.task.clone()), retention);
        Ok(outcomes)
    }

    async fn list_claims(&self, task: &str) -> Result<Listing<Claim>> {
        let now_ms = self.now().timestamp_millis();
        let (listing, expired) =
            claims::list_claims(&self.inner.client, &self.inner.keys, now_ms, task).await?;
        if !expired.is_empty() {
            if let Err(error) = claims::delete_expired(&self.inner.client, &expired).await {
                tracing::debug!(%task, %error, "consul claim sweep failed");
            }
        }
        Ok(listing)
    }

    // ----- records -----

    async fn put_records(&self, kind: RecordKind, records: &[(String, Vec<u8>)]) -> Result<()> {
        check_records(kind, records, &self.capabilities())?;
        let ops: Vec<TxnKvOp> = records
            .iter()
            .map(|(key, value)| TxnKvOp::set(self.inner.keys.record(kind, key), value))
            .collect();
        let context = self.inner.keys.records_prefix(kind);
        // One transaction per group (Consul limits operations and body size), the groups sent
        // concurrently: each record is written whole, the batch costs one round trip.
        let ops = ops.as_slice();
        let context = context.as_str();
        let txns = txn_groups(ops).into_iter().map(|group| async move {
            match self.inner.client.txn(&ops[group], context).await? {
                TxnOutcome::Committed(_) => Ok(()),
                TxnOutcome::RolledBack(errors) => Err(Self::rolled_back(context, &errors)),
            }
        });
        futures::stream::iter(txns)
            .buffer_unordered(MAX_RECORD_TXNS_IN_FLIGHT)
            .collect::<Vec<Result<()>>>()
            .await
            .into_iter()
            .collect()
    }

    async fn get_record(&self, kind: RecordKind, key: &str) -> Result<Option<Vec<u8>>> {
        check_record_key(kind, key)?;
        let consul_key = self.inner.keys.record(kind, key);
        match self.inner.client.kv_get(&consul_key).await? {
            Some(entry) => entry.bytes().map(Some),
            None => Ok(None),
        }
    }

    async fn list_records(&self, kind: RecordKind) -> Result<Vec<(String, Vec<u8>)>> {
        let prefix = self.inner.keys.records_prefix(kind);
        let (entries, _) = self.inner.client.kv_list(&prefix, None).await?;
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
        let consul_key = self.inner.keys.record(kind, key);
        // `get` fails the transaction when the key is absent, so among concurrent deleters
        // exactly one commits. (A `DELETE ?cas=<index>` would not do: Consul answers `true`
        // to a CAS delete of a key that is already gone.)
        let ops = [
            TxnKvOp::get(consul_key.clone()),
            TxnKvOp::delete(consul_key.clone()),
        ];
        match self.inner.client.txn(&ops, &consul_key).await? {
            TxnOutcome::Committed(_) => Ok(true),
            TxnOutcome::RolledBack(errors) if errors.iter().all(|e| e.op_index == 0) => Ok(false),
            TxnOutcome::RolledBack(errors) => Err(Self::rolled_back(&consul_key, &errors)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_batches_split_by_operations_and_body_size() {
        let small: Vec<TxnKvOp> = (0..150)
            .map(|i| TxnKvOp::set(format!("ns/records/status/t{i}"), b"{}"))
            .collect();
        assert_eq!(txn_groups(&small), vec![0..64, 64..128, 128..150]);
        let big = vec![b'x'; MAX_VALUE_BYTES];
        let ops = vec![
            TxnKvOp::set("ns/records/status/a".into(), &big),
            TxnKvOp::set("ns/records/status/b".into(), b"1"),
            TxnKvOp::set("ns/records/status/c".into(), &big),
        ];
        assert!(
            ops[0].body_size() <= MAX_TXN_BODY,
            "a full-size record fits alone"
        );
        assert_eq!(txn_groups(&ops), vec![0..2, 2..3]);
        assert!(txn_groups(&[]).is_empty());
    }
}
