#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod claims;
mod config;
mod error;
mod keys;
mod lives;
mod slots;
mod tls_probe;
mod watch;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use dcron_core::backend::check_stored_size;
use dcron_core::{
    check_record_key, check_records, check_value_size, validate_task_name, Capabilities, Claim,
    ClaimOutcome, ClaimRequest, Claimant, CorruptEntry, Error, FireKey, Lease, Life, Listing, Node,
    NodeEvent, PutMode, RecordKind, Registry, Result, SlotOutcome, TaskMeta, TaskMetaEvent,
    Tombstone, WatchStream,
};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, Error as EtcdError, GetOptions,
    KeyValue, PutOptions, Txn, TxnOp, TxnOpResponse, TxnResponse,
};
use futures::StreamExt;

pub use config::{
    EtcdRegistryConfig, EtcdTls, DEFAULT_ENDPOINT, DEFAULT_MAX_TXN_OPS, DEFAULT_NAMESPACE,
    MIN_TXN_OPS, TEST_ENDPOINTS_ENV,
};

use crate::claims::RetentionLeases;
use crate::error::{map_err, BACKEND};
use crate::keys::{prefix_end, Keys};

/// The largest encoded task record stored, in bytes (1 MiB). etcd refuses requests larger than
/// its `--max-request-bytes` (1.5 MiB by default); 1 MiB leaves room for the key and the
/// transaction around the value.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;

/// The most key and value bytes one record transaction carries, so that a transaction stays
/// under etcd's default `--max-request-bytes` (1.5 MiB) while a single record of
/// [`MAX_VALUE_BYTES`] still fits alone.
const MAX_TXN_BYTES: usize = MAX_VALUE_BYTES + 64 * 1024;

/// Splits a batch of `(key, value)` puts into groups that each fit one transaction (`max_ops`
/// operations, [`MAX_TXN_BYTES`] bytes; a group holds at least one record).
fn txn_groups<'a, 'b>(
    puts: &'a [(String, &'b [u8])],
    max_ops: usize,
) -> Vec<&'a [(String, &'b [u8])]> {
    let mut groups = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, (key, value)) in puts.iter().enumerate() {
        let size = key.len() + value.len();
        if i > start && (i - start == max_ops || bytes + size > MAX_TXN_BYTES) {
            groups.push(&puts[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < puts.len() {
        groups.push(&puts[start..]);
    }
    groups
}

/// The largest response a listing page may be (pages hold at most
/// [`EtcdRegistryConfig::list_page_size`] keys of at most 1.5 MiB each).
const MAX_DECODING_BYTES: usize = 512 * 1024 * 1024;

/// A [`Registry`] on an etcd v3 cluster.
///
/// Node records are attached to a lease kept alive by [`Registry::keep_alive`]; writes that must
/// be atomic are etcd transactions comparing `create_revision`; a task name's life is a key whose
/// `mod_revision` is its generation; a claim batch is one transaction of nested create-if-absent
/// transactions (one per fire) attached to a shared retention lease; watches resume from the
/// revision of the snapshot they follow; a task's running slot is a key attached to its holder
/// node's lease. It implements the exactly-once contract ([`Capabilities::exactly_once`]) and
/// running slots ([`Capabilities::slots`]) without a registry clock (etcd cannot compare with
/// the time; nodes check deadlines). See the crate documentation for the key layout.
///
/// Cheap to clone: clones share one connection (one HTTP/2 channel per endpoint).
#[derive(Clone)]
pub struct EtcdRegistry {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    keys: Keys,
    config: EtcdRegistryConfig,
    retention: RetentionLeases,
}

impl std::fmt::Debug for EtcdRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdRegistry")
            .field("endpoints", &self.inner.config.endpoints)
            .field("namespace", &self.inner.config.namespace)
            .finish()
    }
}

/// Why a request failed before it was mapped into [`Error`].
enum Failure {
    Etcd(EtcdError),
    TimedOut(Duration),
    Mapped(Error),
}

impl Failure {
    fn into_error(self, context: &str) -> Error {
        match self {
            Failure::Etcd(e) => map_err(e, context),
            Failure::TimedOut(after) => {
                Error::unavailable(format!("{BACKEND}: {context}: no answer within {after:?}"))
            }
            Failure::Mapped(e) => e,
        }
    }

    fn is_lease_not_found(&self) -> bool {
        matches!(self, Failure::Etcd(e) if error::is_lease_not_found(e))
    }

    fn is_too_many_ops(&self) -> bool {
        matches!(self, Failure::Etcd(e) if error::is_too_many_ops(e))
    }
}

fn ttl_seconds(ttl: Duration) -> i64 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i64::try_from(secs.max(1)).unwrap_or(i64::MAX)
}

fn lease_lost(lease: &Lease) -> Error {
    Error::LeaseLost {
        node: lease.node_id.clone(),
    }
}

fn create_revision_is(key: &str, op: CompareOp) -> Compare {
    Compare::create_revision(key, op, 0)
}

/// The `count` of the get at `index` of a transaction's responses (0 when absent).
fn count_at(resp: &TxnResponse, index: usize) -> i64 {
    match resp.op_responses().get(index) {
        Some(TxnOpResponse::Get(get)) => get.count(),
        _ => 0,
    }
}

impl EtcdRegistry {
    /// Connects to the cluster described by `config` and checks that it answers.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a bad configuration (no endpoint, empty namespace, zero
    /// timeout, TLS options with an `http://` endpoint); [`Error::AccessDenied`] for refused
    /// credentials; [`Error::Unavailable`] when no endpoint answers within the timeouts.
    pub async fn connect(config: EtcdRegistryConfig) -> Result<Self> {
        config.validate()?;
        let context = format!("connect to {:?}", config.endpoints);
        let client = match connect_client(&config, true).await {
            Err(Failure::Etcd(e))
                if config.credentials.is_some() && error::is_auth_not_enabled(&e) =>
            {
                // Like the Go client: credentials given before authentication is enabled are
                // kept for later (a request refused for its missing token authenticates).
                tracing::info!(
                    endpoints = ?config.endpoints,
                    "etcd authentication is not enabled; connecting without credentials"
                );
                connect_client(&config, false)
                    .await
                    .map_err(|f| f.into_error(&context))?
            }
            Err(f) => {
                let e = f.into_error(&context);
                return Err(match (&e, &config.tls) {
                    (Error::Unavailable { .. }, Some(tls)) => {
                        diagnose_tls(&config, tls, &context).await.unwrap_or(e)
                    }
                    _ => e,
                });
            }
            Ok(client) => client,
        };
        let registry = EtcdRegistry {
            inner: Arc::new(Inner {
                client,
                keys: Keys::new(&config.namespace),
                config,
                retention: RetentionLeases::default(),
            }),
        };
        // The client connects lazily: ask for something cheap so that an unreachable cluster
        // fails here rather than on first use.
        let root = registry.inner.keys.root().to_string();
        let first = registry
            .call("connect", &root, |mut c| {
                let root = root.clone();
                async move { c.get(root, Some(GetOptions::new().with_count_only())).await }
            })
            .await;
        match (first, &registry.inner.config.tls) {
            (Ok(_), _) => Ok(registry),
            (Err(e @ Error::Unavailable { .. }), Some(tls)) => {
                Err(diagnose_tls(&registry.inner.config, tls, &context)
                    .await
                    .unwrap_or(e))
            }
            (Err(e), _) => Err(e),
        }
    }

    /// Connects with [`EtcdRegistryConfig::from_env`]: the endpoints in
    /// `DCRON_TEST_ETCD_ENDPOINTS` (comma-separated), or `127.0.0.1:2379`, and the namespace
    /// `dcron`.
    ///
    /// # Errors
    /// As [`EtcdRegistry::connect`].
    pub async fn from_env() -> Result<Self> {
        EtcdRegistry::connect(EtcdRegistryConfig::from_env()).await
    }

    /// The namespace every key of this registry lives under.
    pub fn namespace(&self) -> &str {
        &self.inner.config.namespace
    }

    /// The underlying `etcd-client` client (shared with this registry), for operations dcron
    /// does not cover.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// The etcd key the record of task `name` is stored under (`/{ns}/tasks/{escaped name}`),
    /// for tools that read or repair the registry directly.
    pub fn task_key(&self, name: &str) -> String {
        self.inner.keys.task(name)
    }

    fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    fn request_timeout(&self) -> Duration {
        self.inner.config.request_timeout
    }

    /// Runs one request with the request timeout; when the server forgot the auth token (a
    /// restart), authentication was enabled meanwhile, or users or roles changed since the token
    /// was issued (etcd then refuses it as of an old auth revision), authenticates again and
    /// retries (at most [`AUTH_RETRIES`] times: the auth store may change again meanwhile).
    async fn raw<T, F, Fut>(&self, op: F) -> std::result::Result<T, Failure>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, EtcdError>>,
    {
        let timeout = self.request_timeout();
        let attempt = || async {
            match tokio::time::timeout(timeout, op(self.inner.client.clone())).await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(Failure::Etcd(e)),
                Err(_) => Err(Failure::TimedOut(timeout)),
            }
        };
        let mut retries = 0;
        loop {
            match attempt().await {
                Err(Failure::Etcd(e))
                    if retries < AUTH_RETRIES
                        && self.inner.config.credentials.is_some()
                        && (error::is_invalid_auth_token(&e)
                            || error::is_token_missing(&e)
                            || error::is_auth_old_revision(&e)) =>
                {
                    retries += 1;
                    self.authenticate().await.map_err(Failure::Mapped)?;
                }
                other => return other,
            }
        }
    }

    /// [`EtcdRegistry::raw`] with the failure mapped into [`Error`], naming `what` and `key`.
    async fn call<T, F, Fut>(&self, what: &str, key: &str, op: F) -> Result<T>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, EtcdError>>,
    {
        self.raw(op)
            .await
            .map_err(|f| f.into_error(&format!("{what} {key}")))
    }

    async fn txn(&self, what: &str, key: &str, txn: Txn) -> Result<TxnResponse> {
        self.call(what, key, |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
    }

    async fn authenticate(&self) -> Result<()> {
        let Some((user, password)) = self.inner.config.credentials.clone() else {
            return Ok(());
        };
        let timeout = self.request_timeout();
        let mut client = self.inner.client.clone();
        // The token lives behind a lock shared by every clone of the client. The stale token
        // goes first: the server refuses even the Authenticate request when it carries one it
        // does not know.
        let renew = async move {
            // Clearing needs no request (and cannot fail); it only drops the stored token.
            client.update_user(None).await?;
            client.update_user(Some((user, password))).await
        };
        match tokio::time::timeout(timeout, renew).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(map_err(e, "authenticate")),
            Err(_) => Err(Error::unavailable(format!(
                "{BACKEND}: authenticate: no answer within {timeout:?}"
            ))),
        }
    }

    /// Reads one key; `None` when absent.
    async fn get_kv(&self, what: &str, key: &str) -> Result<Option<KeyValue>> {
        let mut resp = self
            .call(what, key, |mut c| {
                let key = key.to_string();
                async move { c.get(key, None).await }
            })
            .await?;
        Ok(resp.take_kvs().into_iter().next())
    }

    /// The current revision of the store (a cheap count-only read of the namespace root).
    async fn current_revision(&self) -> Result<i64> {
        let root = self.keys().root().to_string();
        let resp = self
            .call("read revision", &root, |mut c| {
                let root = root.clone();
                async move {
                    c.get(
                        root.clone(),
                        Some(
                            GetOptions::new()
                                .with_range(prefix_end(root.as_bytes()))
                                .with_count_only(),
                        ),
                    )
                    .await
                }
            })
            .await?;
        resp.header()
            .map(|h| h.revision())
            .ok_or_else(|| error::malformed(format!("read revision {root}"), "no header"))
    }

    /// Every key-value under `prefix`, read page by page at one revision (a consistent
    /// snapshot, however many keys there are).
    async fn list_prefix(&self, what: &str, prefix: &str) -> Result<Vec<KeyValue>> {
        const ATTEMPTS: usize = 3;
        let end = prefix_end(prefix.as_bytes());
        let page = i64::try_from(self.inner.config.list_page_size).unwrap_or(i64::MAX);
        let mut last_failure = None;
        'attempt: for _ in 0..ATTEMPTS {
            let mut out = Vec::new();
            let mut start = prefix.as_bytes().to_vec();
            let mut revision = 0;
            loop {
                let mut options = GetOptions::new().with_range(end.clone()).with_limit(page);
                if revision > 0 {
                    options = options.with_revision(revision);
                }
                let result = self
                    .raw(|c| {
                        let start = start.clone();
                        let options = options.clone();
                        async move {
                            c.kv_client()
                                .max_decoding_message_size(MAX_DECODING_BYTES)
                                .get(start, Some(options))
                                .await
                        }
                    })
                    .await;
                let mut resp = match result {
                    Ok(resp) => resp,
                    // The snapshot revision was compacted between two pages: start again.
                    Err(Failure::Etcd(e)) if error::is_compacted(&e) => {
                        last_failure = Some(map_err(e, format!("{what} {prefix}")));
                        continue 'attempt;
                    }
                    Err(f) => return Err(f.into_error(&format!("{what} {prefix}"))),
                };
                if revision == 0 {
                    revision = resp.header().map(|h| h.revision()).unwrap_or(0);
                }
                let more = resp.more();
                let kvs = resp.take_kvs();
                let Some(last) = kvs.last() else {
                    return Ok(out);
                };
                start = last.key().to_vec();
                start.push(0);
                out.extend(kvs);
                if !more {
                    return Ok(out);
                }
            }
        }
        Err(last_failure
            .unwrap_or_else(|| Error::unavailable(format!("{BACKEND}: {what} {prefix}: gave up"))))
    }

    /// Decodes a task record read at `kv`, checking that it is stored under its own name.
    fn decode_task(&self, kv: &KeyValue) -> std::result::Result<TaskMeta, CorruptEntry> {
        let prefix = self.keys().tasks_prefix();
        let raw_key = String::from_utf8_lossy(kv.key()).into_owned();
        let name = Keys::name_under(&prefix, kv.key()).ok_or_else(|| CorruptEntry {
            key: raw_key.clone(),
            reason: "key is not a task name escaped by dcron".into(),
        })?;
        let meta = crate::sized(&name, kv)
            .and_then(|v| TaskMeta::decode(&name, v))
            .map_err(|e| CorruptEntry {
                key: name.clone(),
                reason: format!("{} (etcd key {raw_key})", corrupt_reason(e)),
            })?;
        if meta.name != name {
            return Err(CorruptEntry {
                key: name,
                reason: format!(
                    "record names task `{}` but is stored under etcd key {raw_key}",
                    meta.name
                ),
            });
        }
        Ok(meta)
    }

    /// Checks that `lease` names a node key attached to it (not expired, revoked or replaced).
    async fn node_attached(&self, lease: &Lease, id: i64) -> Result<bool> {
        let key = self.keys().node(&lease.node_id);
        Ok(self
            .get_kv("keep_alive: read node", &key)
            .await?
            .is_some_and(|kv| kv.lease() == id))
    }

    async fn revoke_quietly(&self, id: i64, why: &str) {
        let result = self
            .raw(|mut c| async move { c.lease_revoke(id).await })
            .await;
        match result {
            Ok(_) => {}
            Err(f) if f.is_lease_not_found() => {}
            Err(f) => {
                let e = f.into_error(&format!("revoke lease {id:x}"));
                tracing::warn!(lease = id, error = %e, "{why}: could not revoke an etcd lease");
            }
        }
    }
}

async fn connect_client(
    config: &EtcdRegistryConfig,
    with_credentials: bool,
) -> std::result::Result<Client, Failure> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(config.connect_timeout)
        .with_timeout(config.request_timeout)
        // HTTP/2 pings find a dead connection under an idle watch; not while idle (etcd
        // answers pings without streams with GOAWAY "too many pings").
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
        .with_keep_alive_while_idle(false);
    if with_credentials {
        if let Some((user, password)) = &config.credentials {
            options = options.with_user(user.clone(), password.clone());
        }
    }
    if let Some(tls) = &config.tls {
        options = options.with_tls(tls.to_options());
    }
    let limit = config.connect_timeout + config.request_timeout;
    match tokio::time::timeout(limit, Client::connect(&config.endpoints, Some(options))).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(Failure::Etcd(e)),
        Err(_) => Err(Failure::TimedOut(limit)),
    }
}

fn corrupt_reason(e: Error) -> String {
    match e {
        Error::Corrupt { reason, .. } => reason,
        other => other.to_string(),
    }
}

/// The value of `kv`, refused unread ([`Error::Corrupt`] naming `key` and the size) when it is
/// larger than [`MAX_VALUE_BYTES`]: dcron never writes such a value.
pub(crate) fn sized<'a>(key: &str, kv: &'a KeyValue) -> Result<&'a [u8]> {
    check_stored_size(key, kv.value().len(), MAX_VALUE_BYTES)?;
    Ok(kv.value())
}

/// Splits key-values into decoded items and corrupt entries.
fn decode_all<T>(
    kvs: Vec<KeyValue>,
    mut decode: impl FnMut(&KeyValue) -> std::result::Result<T, CorruptEntry>,
) -> Listing<T> {
    let mut listing = Listing::default();
    for kv in &kvs {
        match decode(kv) {
            Ok(item) => listing.items.push(item),
            Err(entry) => {
                tracing::warn!(key = %entry.key, reason = %entry.reason, "corrupt value in etcd");
                listing.corrupt.push(entry);
            }
        }
    }
    listing
}

fn parse_lease_id(lease: &Lease) -> Option<i64> {
    lease.id.parse::<i64>().ok().filter(|id| *id != 0)
}

#[async_trait]
impl Registry for EtcdRegistry {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        // No clock: an etcd transaction cannot compare with the time, so the node checks
        // deadlines itself (see `claims`).
        Capabilities::with_max_value_bytes(MAX_VALUE_BYTES)
            .with_records()
            .with_exactly_once()
            .with_slots()
    }

    // ----- membership -----

    async fn register(&self, node: &Node, ttl: Duration) -> Result<Lease> {
        dcron_core::check_registration(node, ttl)?;
        let key = self.keys().node(&node.id);
        let grant = self
            .call("register: grant lease for", &key, |mut c| async move {
                c.lease_grant(ttl_seconds(ttl), None).await
            })
            .await?;
        let id = grant.id();
        let value = node.encode();
        let put = self
            .call("register", &key, |mut c| {
                let (key, value) = (key.clone(), value.clone());
                async move {
                    c.put(
                        key,
                        value,
                        Some(PutOptions::new().with_lease(id).with_prev_key()),
                    )
                    .await
                }
            })
            .await;
        let put = match put {
            Ok(put) => put,
            Err(e) => {
                self.revoke_quietly(id, "register failed").await;
                return Err(e);
            }
        };
        if let Some(prev) = put.prev_key() {
            if prev.lease() != 0 && prev.lease() != id {
                // The record moved to the new lease; the old one must answer LeaseLost.
                self.revoke_quietly(prev.lease(), "register replaced a lease")
                    .await;
            }
        }
        let granted = u64::try_from(grant.ttl()).unwrap_or(0);
        Ok(Lease {
            node_id: node.id.clone(),
            id: id.to_string(),
            ttl: Duration::from_secs(granted).max(ttl),
        })
    }

    async fn keep_alive(&self, lease: &Lease) -> Result<()> {
        let Some(id) = parse_lease_id(lease) else {
            return Err(lease_lost(lease));
        };
        let key = self.keys().node(&lease.node_id);
        // One renewal on its own stream, and a check that the record still belongs to the
        // lease (a newer registration of the node replaces it), concurrently.
        let renew = self.raw(|mut c| async move {
            let (_keeper, _stream) = c.lease_keep_alive(id).await?;
            Ok(())
        });
        let (renewed, attached) = futures::join!(renew, self.node_attached(lease, id));
        match renewed {
            Ok(()) => {}
            Err(f) if f.is_lease_not_found() => return Err(lease_lost(lease)),
            Err(f) => return Err(f.into_error(&format!("keep_alive lease {id:x} of {key}"))),
        }
        if !attached? {
            self.revoke_quietly(id, "keep_alive found the record gone or replaced")
                .await;
            return Err(lease_lost(lease));
        }
        Ok(())
    }

    async fn update_node(&self, lease: &Lease, node: &Node) -> Result<()> {
        if node.id != lease.node_id {
            return Err(Error::InvalidArgument(format!(
                "update_node: record of node `{}` given with the lease of node `{}`",
                node.id, lease.node_id
            )));
        }
        let Some(id) = parse_lease_id(lease) else {
            return Err(lease_lost(lease));
        };
        let key = self.keys().node(&lease.node_id);
        // Written only while the record is still attached to this lease, and attached to it
        // again: the record expires with the lease whatever updates it received.
        let txn = Txn::new()
            .when([Compare::lease(key.as_str(), CompareOp::Equal, id)])
            .and_then([TxnOp::put(
                key.as_str(),
                node.encode(),
                Some(PutOptions::new().with_lease(id)),
            )]);
        let result = self
            .raw(|mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await;
        match result {
            Ok(resp) if resp.succeeded() => Ok(()),
            Ok(_) => Err(lease_lost(lease)),
            Err(f) if f.is_lease_not_found() => Err(lease_lost(lease)),
            Err(f) => Err(f.into_error(&format!("update_node {key}"))),
        }
    }

    async fn unregister(&self, lease: &Lease) -> Result<()> {
        let Some(id) = parse_lease_id(lease) else {
            return Ok(());
        };
        // Revoking deletes every key attached to the lease: the node record.
        match self
            .raw(|mut c| async move { c.lease_revoke(id).await })
            .await
        {
            Ok(_) => Ok(()),
            Err(f) if f.is_lease_not_found() => Ok(()),
            Err(f) => {
                Err(f.into_error(&format!("unregister node {} (lease {id:x})", lease.node_id)))
            }
        }
    }

    async fn list_nodes(&self) -> Result<Listing<Node>> {
        let prefix = self.keys().nodes_prefix();
        let kvs = self.list_prefix("list_nodes", &prefix).await?;
        Ok(decode_all(kvs, |kv| {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            crate::sized(&key, kv)
                .and_then(|v| Node::decode(&key, v))
                .map_err(|e| CorruptEntry {
                    key,
                    reason: corrupt_reason(e),
                })
        }))
    }

    async fn watch_nodes(&self) -> Result<WatchStream<NodeEvent>> {
        watch::watch_nodes(self.clone()).await
    }

    // ----- tasks -----

    async fn put_task(&self, meta: &TaskMeta, mode: PutMode) -> Result<()> {
        validate_task_name(&meta.name)?;
        let value = meta.encode();
        check_value_size(meta, value.len(), &self.capabilities())?;
        let name = meta.name.as_str();
        let task = self.keys().task(name);
        let tomb = self.keys().tombstone(name);
        let life = self.keys().life(name);
        let put = TxnOp::put(task.as_str(), value, None);
        let count = || Some(GetOptions::new().with_count_only());
        // Create-only and force writes start a new life in the same transaction: the life key
        // written at the transaction's revision (its generation), valued the live-since.
        let new_life = || match meta.created_at {
            Some(at) => Ok(TxnOp::put(life.as_str(), lives::since_value(at), None)),
            None => Err(Error::InvalidArgument(format!(
                "task `{name}`: a create-only or force write needs `created_at` (its live-since)"
            ))),
        };
        match mode {
            PutMode::CreateOnly => {
                let txn = Txn::new()
                    .when([
                        create_revision_is(&task, CompareOp::Equal),
                        create_revision_is(&tomb, CompareOp::Equal),
                    ])
                    .and_then([put, new_life()?])
                    .or_else([
                        TxnOp::get(task.as_str(), count()),
                        TxnOp::get(tomb.as_str(), count()),
                    ]);
                let resp = self.txn("put_task (create only)", &task, txn).await?;
                if resp.succeeded() {
                    Ok(())
                } else if count_at(&resp, 0) > 0 {
                    Err(Error::AlreadyExists { name: name.into() })
                } else {
                    Err(Error::Tombstoned { name: name.into() })
                }
            }
            PutMode::Update => {
                let txn = Txn::new()
                    .when([
                        create_revision_is(&task, CompareOp::Greater),
                        create_revision_is(&tomb, CompareOp::Equal),
                    ])
                    .and_then([put])
                    .or_else([TxnOp::get(tomb.as_str(), count())]);
                let resp = self.txn("put_task (update)", &task, txn).await?;
                if resp.succeeded() {
                    Ok(())
                } else if count_at(&resp, 0) > 0 {
                    Err(Error::Tombstoned { name: name.into() })
                } else {
                    Err(Error::task_not_found(name))
                }
            }
            PutMode::Force => {
                // Claims are kept: they live until their retention ends.
                let txn =
                    Txn::new().and_then([put, TxnOp::delete(tomb.as_str(), None), new_life()?]);
                self.txn("put_task (force)", &task, txn).await?;
                Ok(())
            }
        }
    }

    async fn get_task(&self, name: &str) -> Result<Option<TaskMeta>> {
        let key = self.keys().task(name);
        match self.get_kv("get_task", &key).await? {
            None => Ok(None),
            Some(kv) => self.decode_task(&kv).map(Some).map_err(|c| Error::Corrupt {
                key: c.key,
                reason: c.reason,
            }),
        }
    }

    async fn list_tasks(&self) -> Result<Listing<TaskMeta>> {
        let prefix = self.keys().tasks_prefix();
        let kvs = self.list_prefix("list_tasks", &prefix).await?;
        Ok(decode_all(kvs, |kv| self.decode_task(kv)))
    }

    async fn watch_tasks(&self) -> Result<WatchStream<TaskMetaEvent>> {
        watch::watch_tasks(self.clone()).await
    }

    // ----- tombstones -----

    async fn mark_deleted(&self, name: &str, at: DateTime<Utc>) -> Result<()> {
        validate_task_name(name)?;
        let tomb = self.keys().tombstone(name);
        let value = Tombstone {
            name: name.to_string(),
            deleted_at: at,
        }
        .encode();
        // An existing tombstone keeps its original time.
        let txn = Txn::new()
            .when([create_revision_is(&tomb, CompareOp::Equal)])
            .and_then([TxnOp::put(tomb.as_str(), value, None)]);
        self.txn("mark_deleted", &tomb, txn).await?;
        Ok(())
    }

    async fn get_tombstone(&self, name: &str) -> Result<Option<Tombstone>> {
        let key = self.keys().tombstone(name);
        match self.get_kv("get_tombstone", &key).await? {
            None => Ok(None),
            Some(kv) => crate::sized(&key, &kv)
                .and_then(|v| Tombstone::decode(&key, v))
                .map(Some),
        }
    }

    async fn list_tombstones(&self) -> Result<Listing<Tombstone>> {
        let prefix = self.keys().tombstones_prefix();
        let kvs = self.list_prefix("list_tombstones", &prefix).await?;
        Ok(decode_all(kvs, |kv| {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            crate::sized(&key, kv)
                .and_then(|v| Tombstone::decode(&key, v))
                .map_err(|e| CorruptEntry {
                    key,
                    reason: corrupt_reason(e),
                })
        }))
    }

    async fn clear_tombstone(&self, name: &str) -> Result<()> {
        let tomb = self.keys().tombstone(name);
        let txn = Txn::new()
            .when([create_revision_is(&tomb, CompareOp::Greater)])
            .and_then([TxnOp::delete(tomb.as_str(), None)]);
        if self.txn("clear_tombstone", &tomb, txn).await?.succeeded() {
            Ok(())
        } else {
            Err(Error::NotFound {
                what: "tombstone",
                name: name.to_string(),
            })
        }
    }

    async fn cleanup_task(&self, name: &str) -> Result<()> {
        let task = self.keys().task(name);
        // Claims are kept: they live until their retention ends.
        let txn = Txn::new().and_then([
            TxnOp::delete(task.as_str(), None),
            TxnOp::delete(self.keys().tombstone(name).as_str(), None),
            TxnOp::delete(self.keys().life(name).as_str(), None),
        ]);
        self.txn("cleanup_task", &task, txn).await?;
        Ok(())
    }

    async fn cleanup_all(&self) -> Result<()> {
        let keys = self.keys();
        // Claims are kept: they live until their retention ends. Running slots are freed.
        let prefixes = [
            keys.tasks_prefix(),
            keys.tombstones_prefix(),
            keys.lives_prefix(),
            keys.records_root(),
        ];
        let txn = Txn::new().and_then(
            prefixes
                .iter()
                .map(|p| TxnOp::delete(p.as_str(), Some(DeleteOptions::new().with_prefix())))
                .chain([slots::delete_all(keys)])
                .collect::<Vec<_>>(),
        );
        self.txn("cleanup_all", keys.root(), txn).await?;
        Ok(())
    }

    // ----- claims -----

    async fn claim(
        &self,
        claimant: &Claimant,
        requests: &[ClaimRequest],
    ) -> Result<Vec<ClaimOutcome>> {
        claims::claim_batch(self, claimant, requests).await
    }

    async fn list_claims(&self, task: &str) -> Result<Listing<Claim>> {
        validate_task_name(task)?;
        let prefix = self.keys().task_claims_prefix(task);
        let kvs = self.list_prefix("list_claims", &prefix).await?;
        // Expired claims went with their lease: every listed one is retained.
        Ok(decode_all(kvs, |kv| {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            claims::decode_claim(&key, kv).map_err(|e| CorruptEntry {
                key: key.clone(),
                reason: corrupt_reason(e),
            })
        }))
    }

    // ----- running slots -----

    async fn acquire_slot(&self, lease: &Lease, fire: &FireKey) -> Result<SlotOutcome> {
        slots::acquire(self, lease, fire).await
    }

    async fn release_slot(&self, lease: &Lease, fire: &FireKey) -> Result<()> {
        slots::release(self, lease, fire).await
    }

    // ----- lives -----

    async fn ensure_lives(&self, names: &[(String, DateTime<Utc>)]) -> Result<Vec<Life>> {
        lives::ensure_lives(self, names).await
    }

    async fn restart_life(&self, name: &str, at: DateTime<Utc>) -> Result<Life> {
        validate_task_name(name)?;
        let keys = self.keys();
        let life = keys.life(name);
        // One transaction: tombstone removed, the life written at its revision (the new
        // generation); the record and the claims are kept.
        let txn = Txn::new().and_then([
            TxnOp::delete(keys.tombstone(name).as_str(), None),
            TxnOp::put(life.as_str(), lives::since_value(at), None),
        ]);
        let resp = self.txn("restart_life", &life, txn).await?;
        let generation = resp
            .header()
            .and_then(|h| u64::try_from(h.revision()).ok())
            .filter(|r| *r > 0)
            .ok_or_else(|| error::malformed(format!("restart_life {life}"), "no revision"))?;
        Ok(Life::new(generation, at))
    }

    // ----- records -----

    async fn put_records(&self, kind: RecordKind, records: &[(String, Vec<u8>)]) -> Result<()> {
        check_records(kind, records, &self.capabilities())?;
        let puts: Vec<(String, &[u8])> = records
            .iter()
            .map(|(key, value)| (self.keys().record(kind, key), value.as_slice()))
            .collect();
        let prefix = self.keys().records_prefix(kind);
        // One transaction per group (etcd limits operations and bytes per request), the groups
        // sent concurrently: each record is written whole, the batch costs one round trip.
        let mut pending = futures::stream::FuturesUnordered::new();
        for group in txn_groups(&puts, self.inner.config.max_txn_ops) {
            let ops: Vec<TxnOp> = group
                .iter()
                .map(|(key, value)| TxnOp::put(key.as_str(), *value, None))
                .collect();
            let what = format!("put_records ({} of {})", group.len(), puts.len());
            let txn = Txn::new().and_then(ops);
            let prefix = prefix.as_str();
            pending.push(async move { self.txn(&what, prefix, txn).await });
        }
        while let Some(done) = pending.next().await {
            done?;
        }
        Ok(())
    }

    async fn get_record(&self, kind: RecordKind, key: &str) -> Result<Option<Vec<u8>>> {
        check_record_key(kind, key)?;
        let etcd_key = self.keys().record(kind, key);
        match self.get_kv("get_record", &etcd_key).await? {
            Some(kv) => Ok(Some(sized(&etcd_key, &kv)?.to_vec())),
            None => Ok(None),
        }
    }

    async fn list_records(&self, kind: RecordKind) -> Result<Vec<(String, Vec<u8>)>> {
        let prefix = self.keys().records_prefix(kind);
        let kvs = self.list_prefix("list_records", &prefix).await?;
        let mut out = Vec::with_capacity(kvs.len());
        for kv in kvs {
            match Keys::name_under(&prefix, kv.key()) {
                Some(_) if kv.value().len() > MAX_VALUE_BYTES => tracing::warn!(
                    key = %String::from_utf8_lossy(kv.key()),
                    bytes = kv.value().len(),
                    "skipping a record larger than the registry stores"
                ),
                Some(key) => {
                    let (_, value) = kv.into_key_value();
                    out.push((key, value));
                }
                None => tracing::warn!(
                    key = %String::from_utf8_lossy(kv.key()),
                    "skipping a record whose key is not escaped by dcron"
                ),
            }
        }
        Ok(out)
    }

    async fn delete_record(&self, kind: RecordKind, key: &str) -> Result<bool> {
        check_record_key(kind, key)?;
        let etcd_key = self.keys().record(kind, key);
        // etcd answers how many keys this delete removed: among concurrent deleters of one key
        // exactly one sees 1.
        let resp = self
            .call("delete_record", &etcd_key, |mut c| {
                let key = etcd_key.clone();
                async move { c.delete(key, None).await }
            })
            .await?;
        Ok(resp.deleted() == 1)
    }
}

/// How many times one request authenticates again before its auth error is returned.
const AUTH_RETRIES: u32 = 3;

/// When connecting over TLS failed as if the cluster were unreachable, a handshake of our own
/// with the first endpoint that names a refused certificate, as [`Error::AccessDenied`].
async fn diagnose_tls(config: &EtcdRegistryConfig, tls: &EtcdTls, context: &str) -> Option<Error> {
    let endpoint = config.endpoints.first()?;
    let why = tls_probe::diagnose(endpoint, tls, config.connect_timeout).await?;
    Some(Error::AccessDenied(format!("{BACKEND}: {context}: {why}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_batches_split_by_operations_and_bytes() {
        let small = vec![0u8; 10];
        let puts: Vec<(String, &[u8])> = (0..300)
            .map(|i| (format!("k{i}"), small.as_slice()))
            .collect();
        let sizes: Vec<usize> = txn_groups(&puts, 128).iter().map(|g| g.len()).collect();
        assert_eq!(sizes, vec![128, 128, 300 - 2 * 128]);

        let big = vec![0u8; MAX_VALUE_BYTES];
        let puts: Vec<(String, &[u8])> = vec![
            ("a".into(), big.as_slice()),
            ("b".into(), small.as_slice()),
            ("c".into(), big.as_slice()),
        ];
        let sizes: Vec<usize> = txn_groups(&puts, 128).iter().map(|g| g.len()).collect();
        assert_eq!(
            sizes,
            vec![2, 1],
            "a full-size record shares a txn only with small ones"
        );
        assert!(txn_groups(&[], 128).is_empty());
    }
}
