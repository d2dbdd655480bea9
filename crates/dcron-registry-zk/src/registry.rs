//! [`ZkRegistry`]: the `Registry` implementation.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use dcron_core::{
    check_record_key, check_records, check_value_size, validate_task_name, watch_channel,
    Capabilities, Claim, ClaimOutcome, CorruptEntry, Error, FireKey, Lease, Listing, Node,
    NodeEvent, PutMode, RecordKind, Registry, Result, TaskMeta, TaskMetaEvent, Tombstone,
    WatchStream,
};
use futures::{StreamExt, TryStreamExt};
use tokio::sync::Notify;
use zookeeper_async::{CreateMode, Stat, ZkError};

use crate::config::{ZkRegistryConfig, MIN_SESSION_TIMEOUT};
use crate::conn::{Conn, BACKEND};
use crate::layout::{escape, unescape, Layout};
use crate::watcher::{self, Change};

/// The largest task record stored, in bytes: ZooKeeper refuses packets above `jute.maxbuffer`
/// (1 MiB by default, request header and path included), so records keep a margin below it.
pub const MAX_VALUE_BYTES: usize = 1_000_000;

/// How many reads a listing keeps in flight at once.
const LIST_CONCURRENCY: usize = 64;

/// A dcron registry on ZooKeeper.
///
/// Cheap to clone (an `Arc` inside). See the crate documentation for the layout and the
/// design decisions (one session per node registration, TTL znodes for claims).
#[derive(Clone)]
pub struct ZkRegistry {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ZkRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZkRegistry")
            .field("hosts", &self.inner.hosts)
            .field("root", &self.inner.layout.root())
            .finish()
    }
}

pub(crate) struct Inner {
    config: ZkRegistryConfig,
    hosts: String,
    layout: Layout,
    conn: Arc<Conn>,
    leases: Mutex<HashMap<String, Arc<LeaseSession>>>,
    ttl_claims: AtomicBool,
    sweeper: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The client's I/O task never ends by itself: close every session we own.
        let leases: Vec<Arc<LeaseSession>> = match self.leases.lock() {
            Ok(mut l) => l.drain().map(|(_, s)| s).collect(),
            Err(_) => Vec::new(),
        };
        if let Ok(mut s) = self.sweeper.lock() {
            if let Some(h) = s.take() {
                h.abort();
            }
        }
        let conn = self.conn.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                for lease in leases {
                    lease.end().await;
                }
                conn.close().await;
            });
        }
    }
}

/// One node registration: its own session, whose ephemeral znode holds the node record.
struct LeaseSession {
    node_id: String,
    path: String,
    conn: Arc<Conn>,
    session_id: i64,
    ttl: Duration,
    version: AtomicI32,
    renewed_at: Mutex<tokio::time::Instant>,
    lost: AtomicBool,
    ended: Notify,
}

impl LeaseSession {
    fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire) || self.conn.session_ended()
    }

    fn renewed_at(&self) -> tokio::time::Instant {
        self.renewed_at
            .lock()
            .map(|t| *t)
            .unwrap_or_else(|p| *p.into_inner())
    }

    fn renew(&self, at: tokio::time::Instant) {
        if let Ok(mut t) = self.renewed_at.lock() {
            if at > *t {
                *t = at;
            }
        }
    }

    async fn end(&self) {
        self.lost.store(true, Ordering::Release);
        self.ended.notify_one();
        self.conn.close().await;
    }

    fn lease_lost(&self) -> Error {
        Error::LeaseLost {
            node: self.node_id.clone(),
        }
    }
}

/// The decoded records of one directory.
pub(crate) struct Fetched {
    pub(crate) key: String,
    pub(crate) data: Vec<u8>,
    pub(crate) stat: Stat,
}

impl ZkRegistry {
    /// Connects, authenticates and creates the namespace directories (with the configured ACL).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a bad connect string or namespace; [`Error::Unavailable`]
    /// when the ensemble cannot be reached within the connect timeout; [`Error::AccessDenied`]
    /// when the namespace exists but belongs to other credentials.
    pub async fn connect(config: ZkRegistryConfig) -> Result<Self> {
        let (hosts, root) = config.hosts_and_root()?;
        let conn = Conn::open(
            &hosts,
            config.session_timeout.max(MIN_SESSION_TIMEOUT),
            config.connect_timeout,
            config.operation_timeout,
            config.digest.as_ref(),
        )
        .await?;
        let layout = Layout::new(root);
        let registry = ZkRegistry {
            inner: Arc::new(Inner {
                ttl_claims: AtomicBool::new(config.ttl_claims),
                config,
                hosts,
                layout,
                conn,
                leases: Mutex::new(HashMap::new()),
                sweeper: Mutex::new(None),
            }),
        };
        registry.ensure_directories().await?;
        if !registry.inner.ttl_claims.load(Ordering::Acquire) {
            registry.start_sweeper();
        }
        Ok(registry)
    }

    /// Connects with [`ZkRegistryConfig::from_env`].
    ///
    /// # Errors
    /// As [`ZkRegistry::connect`].
    pub async fn from_env() -> Result<Self> {
        Self::connect(ZkRegistryConfig::from_env()).await
    }

    /// The namespace root path on the server (chroot included).
    pub fn root(&self) -> &str {
        self.inner.layout.root()
    }

    /// The znode path of a task's record (for operators and tests: the record is the
    /// [`TaskMeta`] JSON).
    pub fn task_path(&self, name: &str) -> String {
        self.layout().task(name)
    }

    /// Whether claims are currently written as TTL znodes (`false`: persistent znodes removed by
    /// the sweeper, either by configuration or because the server refused TTL znodes).
    pub fn ttl_claims(&self) -> bool {
        self.inner.ttl_claims.load(Ordering::Acquire)
    }

    /// The ZooKeeper session id behind a lease of this registry, if the lease is still held.
    pub fn session_id(&self, lease: &Lease) -> Option<i64> {
        self.lease(&lease.id).map(|s| s.session_id)
    }

    /// Ends a lease's session on the server as an expiry would, without unregistering first:
    /// the server deletes the node's ephemeral znode and the next
    /// [`Registry::keep_alive`] answers [`Error::LeaseLost`]. Meant for fault-injection tests.
    /// Returns whether this registry held the lease.
    pub async fn expire_session(&self, lease: &Lease) -> bool {
        match self.lease(&lease.id) {
            Some(s) => {
                s.end().await;
                true
            }
            None => false,
        }
    }

    /// Closes every session of this registry (node registrations end as if they expired). The
    /// registry answers [`Error::Unavailable`] afterwards.
    pub async fn close(&self) {
        let leases: Vec<Arc<LeaseSession>> = match self.inner.leases.lock() {
            Ok(mut l) => l.drain().map(|(_, s)| s).collect(),
            Err(_) => Vec::new(),
        };
        for lease in leases {
            lease.end().await;
        }
        self.inner.conn.close().await;
    }

    fn conn(&self) -> &Conn {
        &self.inner.conn
    }

    fn layout(&self) -> &Layout {
        &self.inner.layout
    }

    fn lease(&self, id: &str) -> Option<Arc<LeaseSession>> {
        self.inner
            .leases
            .lock()
            .ok()
            .and_then(|l| l.get(id).cloned())
    }

    fn forget(&self, id: &str) -> Option<Arc<LeaseSession>> {
        self.inner.leases.lock().ok().and_then(|mut l| l.remove(id))
    }

    async fn ensure_directories(&self) -> Result<()> {
        for dir in self.layout().directories() {
            self.conn()
                .create(
                    &dir,
                    Vec::new(),
                    CreateMode::Persistent,
                    None,
                    &[ZkError::NodeExists],
                )
                .await?
                .ok();
        }
        // Creating an existing directory is answered NodeExists even without permission: a
        // read proves the namespace is ours.
        self.conn().children(&self.layout().nodes_dir()).await?;
        Ok(())
    }

    /// Reads every child of `dir` (concurrently, bounded); children that vanished meanwhile are
    /// skipped.
    pub(crate) async fn fetch_dir(&self, dir: &str) -> Result<Vec<Fetched>> {
        let children = self.conn().children(dir).await?;
        let conn = self.conn();
        futures::stream::iter(children)
            .map(|child| async move {
                let key = format!("{dir}/{child}");
                Ok::<_, Error>(conn.get_data(&key).await?.map(|(data, stat)| Fetched {
                    key,
                    data,
                    stat,
                }))
            })
            .buffered(LIST_CONCURRENCY)
            .try_filter_map(|f| async move { Ok(f) })
            .try_collect()
            .await
    }

    /// Deletes the children of `dir` (concurrently, at most [`LIST_CONCURRENCY`] at a time);
    /// children already gone are fine.
    async fn delete_children(&self, dir: &str) -> Result<()> {
        let conn = self.conn();
        let children = conn.children(dir).await?;
        futures::stream::iter(children)
            .map(|c| {
                let path = format!("{dir}/{c}");
                async move {
                    conn.delete(&path, None, &[ZkError::NoNode])
                        .await
                        .map(|_| ())
                }
            })
            .buffer_unordered(LIST_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Deletes every claim of the escaped task name; with `dir`, the claims directory too.
    async fn delete_claims(&self, escaped: &str, dir: bool) -> Result<()> {
        let claims_dir = format!("{}/{escaped}", self.layout().claims_dir());
        for _ in 0..5 {
            self.delete_children(&claims_dir).await?;
            if !dir {
                return Ok(());
            }
            match self
                .conn()
                .delete(&claims_dir, None, &[ZkError::NoNode, ZkError::NotEmpty])
                .await?
            {
                Err(ZkError::NotEmpty) => continue, // a claim arrived meanwhile
                _ => return Ok(()),
            }
        }
        Ok(())
    }

    /// Removes the record, claims and tombstone of one escaped name, in that order: while a
    /// tombstone exists no claim can be won, so it goes last.
    async fn cleanup_escaped(&self, escaped: &str) -> Result<()> {
        let l = self.layout();
        self.conn()
            .delete(
                &format!("{}/{escaped}", l.tasks_dir()),
                None,
                &[ZkError::NoNode],
            )
            .await?
            .ok();
        self.delete_claims(escaped, true).await?;
        self.conn()
            .delete(
                &format!("{}/{escaped}", l.tombstones_dir()),
                None,
                &[ZkError::NoNode],
            )
            .await?
            .ok();
        Ok(())
    }

    /// Creates one claim znode: `Some(stat)` when created, `None` when it already existed.
    async fn create_claim(
        &self,
        fire: &FireKey,
        node_id: &str,
        retention: Duration,
    ) -> Result<Option<Stat>> {
        let path = self.layout().claim(&fire.task, fire.instant_millis());
        let data = claim_bytes(fire, node_id, retention);
        for _ in 0..4 {
            let ttl = self.ttl_claims();
            let (mode, ttl_value) = if ttl {
                (CreateMode::PersistentWithTTL, Some(retention))
            } else {
                (CreateMode::Persistent, None)
            };
            let created = self
                .conn()
                .create(
                    &path,
                    data.clone(),
                    mode,
                    ttl_value,
                    &[ZkError::NodeExists, ZkError::NoNode, ZkError::Unimplemented],
                )
                .await?;
            match created {
                Ok(stat) => return Ok(Some(stat)),
                Err(ZkError::NodeExists) => return Ok(None),
                Err(ZkError::NoNode) => {
                    // First claim of the task (or its directory was cleaned up): create it.
                    self.conn()
                        .create(
                            &self.layout().task_claims(&fire.task),
                            Vec::new(),
                            CreateMode::Persistent,
                            None,
                            &[ZkError::NodeExists],
                        )
                        .await?
                        .ok();
                }
                Err(_) if ttl => {
                    tracing::warn!(
                        "zookeeper refuses TTL znodes (extendedTypesEnabled=false): claims fall \
                         back to persistent znodes removed by the sweeper"
                    );
                    self.inner.ttl_claims.store(false, Ordering::Release);
                    self.start_sweeper();
                }
                Err(e) => return Err(crate::conn::map_err(e, &path)),
            }
        }
        Err(Error::Backend {
            backend: BACKEND,
            message: format!("claim `{path}` could not be created (its directory keeps vanishing)"),
            source: None,
        })
    }

    /// Writes one record: replaces the data of an existing znode, or creates it (and the
    /// directories above it, on first use).
    async fn put_record(&self, kind: RecordKind, key: &str, data: &[u8]) -> Result<()> {
        let path = self.layout().record(kind, key);
        let conn = self.conn();
        for _ in 0..5 {
            if conn
                .set_data(&path, data.to_vec(), None, &[ZkError::NoNode])
                .await?
                .is_ok()
            {
                return Ok(());
            }
            match conn
                .create(
                    &path,
                    data.to_vec(),
                    CreateMode::Persistent,
                    None,
                    &[ZkError::NodeExists, ZkError::NoNode],
                )
                .await?
            {
                Ok(_) => return Ok(()),
                // Created by someone else meanwhile: replace its data on the next turn.
                Err(ZkError::NodeExists) => {}
                // The directories are missing (first record, or cleaned up): create them.
                Err(_) => {
                    for dir in [
                        self.layout().records_dir(),
                        self.layout().records_kind_dir(kind),
                    ] {
                        conn.create(
                            &dir,
                            Vec::new(),
                            CreateMode::Persistent,
                            None,
                            &[ZkError::NodeExists],
                        )
                        .await?
                        .ok();
                    }
                }
            }
        }
        Err(Error::Backend {
            backend: BACKEND,
            message: format!(
                "record `{path}` could not be written (its directory keeps vanishing)"
            ),
            source: None,
        })
    }

    /// Deletes every record of every kind; the directories go too when nothing arrived since.
    async fn delete_all_records(&self) -> Result<()> {
        let records = self.layout().records_dir();
        let conn = self.conn();
        for kind_dir in conn.children(&records).await? {
            let dir = format!("{records}/{kind_dir}");
            self.delete_children(&dir).await?;
            // A record written meanwhile keeps its directory (NotEmpty): it came after.
            conn.delete(&dir, None, &[ZkError::NoNode, ZkError::NotEmpty])
                .await?
                .ok();
        }
        Ok(())
    }

    fn start_sweeper(&self) {
        let Ok(mut slot) = self.inner.sweeper.lock() else {
            return;
        };
        if slot.is_some() {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        let interval = self.inner.config.sweep_interval;
        *slot = Some(tokio::spawn(crate::sweeper::run(weak, interval)));
    }

    pub(crate) fn from_inner(inner: Arc<Inner>) -> Self {
        ZkRegistry { inner }
    }

    fn downgrade(&self) -> Weak<Inner> {
        Arc::downgrade(&self.inner)
    }

    pub(crate) fn shared_conn(&self) -> &Conn {
        self.conn()
    }

    pub(crate) fn claims_dir(&self) -> String {
        self.layout().claims_dir()
    }

    pub(crate) fn sweeper_lock(&self) -> String {
        self.layout().sweeper_lock()
    }
}

pub(crate) type InnerRef = Inner;

fn claim_bytes(fire: &FireKey, node_id: &str, retention: Duration) -> Vec<u8> {
    // The stored token is 0: the real fencing token is the znode's czxid, known only once it is
    // created, and `list_claims` reports that. `retention_ms` is for the sweeper.
    let claim = Claim {
        fire: fire.clone(),
        node_id: node_id.to_string(),
        token: 0,
    };
    let mut value = serde_json::from_slice::<serde_json::Value>(&claim.encode())
        .unwrap_or(serde_json::Value::Null);
    if let Some(obj) = value.as_object_mut() {
        obj.insert(
            "retention_ms".into(),
            serde_json::Value::from(u64::try_from(retention.as_millis()).unwrap_or(u64::MAX)),
        );
    }
    serde_json::to_vec(&value).unwrap_or_else(|_| claim.encode())
}

/// A listing entry that did not decode, keyed by the name it stands for (the znode path when the
/// znode name is not one this crate wrote), with the path in the reason.
fn corrupt(path: &str, e: Error) -> CorruptEntry {
    let name = path.rsplit('/').next().and_then(unescape);
    let reason = match e {
        Error::Corrupt { reason, .. } => reason,
        other => other.to_string(),
    };
    CorruptEntry {
        key: name.unwrap_or_else(|| path.to_string()),
        reason: format!("{reason} (znode `{path}`)"),
    }
}

fn token_of(stat: &Stat) -> u64 {
    u64::try_from(stat.czxid).unwrap_or(0).max(1)
}

#[async_trait]
impl Registry for ZkRegistry {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::with_max_value_bytes(MAX_VALUE_BYTES).with_records()
    }

    // ----- membership -----

    async fn register(&self, node: &Node, ttl: Duration) -> Result<Lease> {
        dcron_core::check_registration(node, ttl)?;
        let cfg = &self.inner.config;
        let conn = Conn::open(
            &self.inner.hosts,
            ttl.max(MIN_SESSION_TIMEOUT),
            cfg.connect_timeout,
            cfg.operation_timeout,
            cfg.digest.as_ref(),
        )
        .await?;
        let path = self.layout().node(&node.id);
        let data = node.encode();
        let mut created = None;
        for _ in 0..5 {
            let attempt = conn
                .create(
                    &path,
                    data.clone(),
                    CreateMode::Ephemeral,
                    None,
                    &[ZkError::NodeExists],
                )
                .await;
            match attempt {
                Ok(Ok(stat)) => {
                    created = Some(stat);
                    break;
                }
                // A record of the node under an older session: replace it.
                Ok(Err(_)) => {
                    if let Err(e) = conn.delete(&path, None, &[ZkError::NoNode]).await {
                        conn.close().await;
                        return Err(e);
                    }
                }
                Err(e) => {
                    conn.close().await;
                    return Err(e);
                }
            }
        }
        let Some(stat) = created else {
            conn.close().await;
            return Err(Error::Backend {
                backend: BACKEND,
                message: format!("node `{}`: `{path}` keeps being recreated", node.id),
                source: None,
            });
        };
        let session = Arc::new(LeaseSession {
            node_id: node.id.clone(),
            path,
            conn,
            session_id: stat.ephemeral_owner,
            ttl,
            version: AtomicI32::new(stat.version),
            renewed_at: Mutex::new(tokio::time::Instant::now()),
            lost: AtomicBool::new(false),
            ended: Notify::new(),
        });
        let lease = Lease {
            node_id: node.id.clone(),
            id: format!("{:016x}", stat.ephemeral_owner),
            ttl,
        };
        let replaced: Vec<Arc<LeaseSession>> = match self.inner.leases.lock() {
            Ok(mut l) => {
                let old: Vec<String> = l
                    .iter()
                    .filter(|(_, s)| s.node_id == node.id)
                    .map(|(k, _)| k.clone())
                    .collect();
                let old = old.iter().filter_map(|k| l.remove(k)).collect();
                l.insert(lease.id.clone(), session.clone());
                old
            }
            Err(_) => Vec::new(),
        };
        for old in replaced {
            old.end().await;
        }
        tokio::spawn(watchdog(self.downgrade(), lease.id.clone(), session));
        Ok(lease)
    }

    async fn keep_alive(&self, lease: &Lease) -> Result<()> {
        let lost = || Error::LeaseLost {
            node: lease.node_id.clone(),
        };
        let Some(s) = self.lease(&lease.id) else {
            return Err(lost());
        };
        if s.is_lost() {
            self.forget(&lease.id);
            s.end().await;
            return Err(lost());
        }
        let started = tokio::time::Instant::now();
        match s.conn.exists(&s.path).await {
            Ok(Some(stat)) if stat.ephemeral_owner == s.session_id && !s.is_lost() => {
                s.renew(started);
                Ok(())
            }
            Ok(_) => {
                self.forget(&lease.id);
                s.end().await;
                Err(lost())
            }
            Err(e) => {
                if s.is_lost() {
                    self.forget(&lease.id);
                    s.end().await;
                    Err(lost())
                } else {
                    Err(e)
                }
            }
        }
    }

    async fn update_node(&self, lease: &Lease, node: &Node) -> Result<()> {
        if node.id != lease.node_id {
            return Err(Error::InvalidArgument(format!(
                "update of node `{}` with the lease of node `{}`",
                node.id, lease.node_id
            )));
        }
        let Some(s) = self.lease(&lease.id) else {
            return Err(Error::LeaseLost {
                node: lease.node_id.clone(),
            });
        };
        if s.is_lost() {
            return Err(s.lease_lost());
        }
        let data = node.encode();
        for _ in 0..5 {
            let version = s.version.load(Ordering::Acquire);
            let set = s
                .conn
                .set_data(
                    &s.path,
                    data.clone(),
                    Some(version),
                    &[ZkError::NoNode, ZkError::BadVersion],
                )
                .await;
            match set {
                Ok(Ok(stat)) if stat.ephemeral_owner == s.session_id => {
                    s.version.store(stat.version, Ordering::Release);
                    return Ok(());
                }
                Ok(Err(ZkError::BadVersion)) => match s.conn.exists(&s.path).await? {
                    Some(stat) if stat.ephemeral_owner == s.session_id => {
                        s.version.store(stat.version, Ordering::Release);
                    }
                    _ => return Err(s.lease_lost()),
                },
                Ok(_) => return Err(s.lease_lost()),
                Err(e) => {
                    return Err(if s.is_lost() { s.lease_lost() } else { e });
                }
            }
        }
        Err(Error::unavailable(format!(
            "zookeeper: node `{}` record keeps changing under its update",
            node.id
        )))
    }

    async fn unregister(&self, lease: &Lease) -> Result<()> {
        let Some(s) = self.forget(&lease.id) else {
            return Ok(());
        };
        s.lost.store(true, Ordering::Release);
        s.ended.notify_one();
        if !s.conn.session_ended() {
            // Delete explicitly so the record is gone when this returns (closing a session does
            // not wait for the server).
            if let Ok(Some(stat)) = s.conn.exists(&s.path).await {
                if stat.ephemeral_owner == s.session_id {
                    if let Err(e) = s
                        .conn
                        .delete(
                            &s.path,
                            Some(stat.version),
                            &[ZkError::NoNode, ZkError::BadVersion],
                        )
                        .await
                    {
                        tracing::warn!(node = %s.node_id, error = %e,
                            "zookeeper: could not delete the node record; its session will expire");
                    }
                }
            }
        }
        s.conn.close().await;
        Ok(())
    }

    async fn list_nodes(&self) -> Result<Listing<Node>> {
        let mut listing = Listing::default();
        for f in self.fetch_dir(&self.layout().nodes_dir()).await? {
            match Node::decode(&f.key, &f.data) {
                Ok(n) => listing.items.push(n),
                Err(e) => listing.corrupt.push(corrupt(&f.key, e)),
            }
        }
        Ok(listing)
    }

    async fn watch_nodes(&self) -> Result<WatchStream<NodeEvent>> {
        let (tx, rx) = watch_channel(self.inner.config.watch_buffer);
        let map: watcher::Mapper<NodeEvent> = Box::new(|_, change| match change {
            Change::Put { child, data } => match Node::decode(child, data) {
                Ok(n) => Some(NodeEvent::Put(n)),
                Err(e) => {
                    tracing::warn!(error = %e, "zookeeper: skipping a node record");
                    None
                }
            },
            Change::Gone { child } => unescape(child).map(|id| NodeEvent::Delete { id }),
        });
        watcher::spawn(
            self.inner.conn.clone(),
            vec![self.layout().nodes_dir()],
            tx,
            map,
        )
        .await?;
        Ok(rx)
    }

    // ----- tasks -----

    async fn put_task(&self, meta: &TaskMeta, mode: PutMode) -> Result<()> {
        validate_task_name(&meta.name)?;
        let data = meta.encode();
        check_value_size(meta, data.len(), &self.capabilities())?;
        let name = meta.name.as_str();
        let task = self.layout().task(name);
        let tomb = self.layout().tombstone(name);
        let conn = self.conn();
        match mode {
            PutMode::CreateOnly => {
                // No `multi` in zookeeper-async: check, create, and undo the create when a
                // tombstone appeared in between (see the crate docs).
                let (m, t) = futures::join!(conn.exists(&task), conn.exists(&tomb));
                if m?.is_some() {
                    return Err(Error::AlreadyExists { name: name.into() });
                }
                if t?.is_some() {
                    return Err(Error::Tombstoned { name: name.into() });
                }
                let created = conn
                    .create(
                        &task,
                        data,
                        CreateMode::Persistent,
                        None,
                        &[ZkError::NodeExists],
                    )
                    .await?;
                if created.is_err() {
                    return Err(Error::AlreadyExists { name: name.into() });
                }
                if conn.exists(&tomb).await?.is_some() {
                    conn.delete(&task, Some(0), &[ZkError::NoNode, ZkError::BadVersion])
                        .await?
                        .ok();
                    return Err(Error::Tombstoned { name: name.into() });
                }
                Ok(())
            }
            PutMode::Update => {
                if conn.exists(&tomb).await?.is_some() {
                    return Err(Error::Tombstoned { name: name.into() });
                }
                match conn.set_data(&task, data, None, &[ZkError::NoNode]).await? {
                    Ok(_) => Ok(()),
                    Err(_) => Err(Error::task_not_found(name)),
                }
            }
            PutMode::Force => {
                // Record first, then claims, then the tombstone: while the tombstone exists
                // every claim is answered Tombstoned, so no claim is decided on a half-done
                // force.
                for _ in 0..5 {
                    match conn
                        .set_data(&task, data.clone(), None, &[ZkError::NoNode])
                        .await?
                    {
                        Ok(_) => break,
                        Err(_) => {
                            let created = conn
                                .create(
                                    &task,
                                    data.clone(),
                                    CreateMode::Persistent,
                                    None,
                                    &[ZkError::NodeExists],
                                )
                                .await?;
                            if created.is_ok() {
                                break;
                            }
                        }
                    }
                }
                self.delete_claims(&escape(name), false).await?;
                conn.delete(&tomb, None, &[ZkError::NoNode]).await?.ok();
                Ok(())
            }
        }
    }

    async fn get_task(&self, name: &str) -> Result<Option<TaskMeta>> {
        let key = self.layout().task(name);
        match self.conn().get_data(&key).await? {
            Some((data, _)) => TaskMeta::decode(&key, &data).map(Some),
            None => Ok(None),
        }
    }

    async fn list_tasks(&self) -> Result<Listing<TaskMeta>> {
        let mut listing = Listing::default();
        for f in self.fetch_dir(&self.layout().tasks_dir()).await? {
            match TaskMeta::decode(&f.key, &f.data) {
                Ok(m) => listing.items.push(m),
                Err(e) => listing.corrupt.push(corrupt(&f.key, e)),
            }
        }
        Ok(listing)
    }

    async fn watch_tasks(&self) -> Result<WatchStream<TaskMetaEvent>> {
        let (tx, rx) = watch_channel(self.inner.config.watch_buffer);
        let map: watcher::Mapper<TaskMetaEvent> = Box::new(|dir, change| match (dir, change) {
            (0, Change::Put { child, data }) => match TaskMeta::decode(child, data) {
                Ok(m) => Some(TaskMetaEvent::Put(m)),
                Err(e) => {
                    tracing::warn!(error = %e, "zookeeper: skipping a task record");
                    None
                }
            },
            (0, Change::Gone { child }) => {
                unescape(child).map(|name| TaskMetaEvent::Removed { name })
            }
            (_, Change::Put { child, data }) => match Tombstone::decode(child, data) {
                Ok(t) => Some(TaskMetaEvent::Tombstoned(t)),
                Err(e) => {
                    tracing::warn!(error = %e, "zookeeper: skipping a tombstone");
                    None
                }
            },
            (_, Change::Gone { child }) => {
                unescape(child).map(|name| TaskMetaEvent::TombstoneCleared { name })
            }
        });
        watcher::spawn(
            self.inner.conn.clone(),
            vec![self.layout().tasks_dir(), self.layout().tombstones_dir()],
            tx,
            map,
        )
        .await?;
        Ok(rx)
    }

    // ----- tombstones -----

    async fn mark_deleted(&self, name: &str, at: DateTime<Utc>) -> Result<()> {
        validate_task_name(name)?;
        let data = Tombstone {
            name: name.to_string(),
            deleted_at: at,
        }
        .encode();
        // An existing tombstone keeps its original time.
        self.conn()
            .create(
                &self.layout().tombstone(name),
                data,
                CreateMode::Persistent,
                None,
                &[ZkError::NodeExists],
            )
            .await?
            .ok();
        Ok(())
    }

    async fn get_tombstone(&self, name: &str) -> Result<Option<Tombstone>> {
        let key = self.layout().tombstone(name);
        match self.conn().get_data(&key).await? {
            Some((data, _)) => Tombstone::decode(&key, &data).map(Some),
            None => Ok(None),
        }
    }

    async fn list_tombstones(&self) -> Result<Listing<Tombstone>> {
        let mut listing = Listing::default();
        for f in self.fetch_dir(&self.layout().tombstones_dir()).await? {
            match Tombstone::decode(&f.key, &f.data) {
                Ok(t) => listing.items.push(t),
                Err(e) => listing.corrupt.push(corrupt(&f.key, e)),
            }
        }
        Ok(listing)
    }

    async fn clear_tombstone(&self, name: &str) -> Result<()> {
        match self
            .conn()
            .delete(&self.layout().tombstone(name), None, &[ZkError::NoNode])
            .await?
        {
            Ok(()) => Ok(()),
            Err(_) => Err(Error::NotFound {
                what: "tombstone",
                name: name.to_string(),
            }),
        }
    }

    async fn cleanup_task(&self, name: &str) -> Result<()> {
        self.cleanup_escaped(&escape(name)).await
    }

    async fn cleanup_all(&self) -> Result<()> {
        let l = self.layout();
        let mut names = HashSet::new();
        for dir in [l.tasks_dir(), l.tombstones_dir(), l.claims_dir()] {
            names.extend(self.conn().children(&dir).await?);
        }
        futures::stream::iter(names)
            .map(|n| async move { self.cleanup_escaped(&n).await })
            .buffer_unordered(16)
            .try_collect::<Vec<()>>()
            .await?;
        self.delete_all_records().await
    }

    // ----- claims -----

    async fn claim(
        &self,
        fires: &[FireKey],
        node_id: &str,
        retention: Duration,
    ) -> Result<Vec<ClaimOutcome>> {
        // ZooKeeper TTLs are whole milliseconds and must be positive.
        let retention = retention.max(Duration::from_millis(1));
        let mut outcomes: Vec<Option<ClaimOutcome>> = vec![None; fires.len()];
        let mut seen = HashSet::new();
        let mut jobs = Vec::new();
        for (i, fire) in fires.iter().enumerate() {
            validate_task_name(&fire.task)?;
            if seen.insert((fire.task.as_str(), fire.instant_millis())) {
                jobs.push(i);
            } else {
                outcomes[i] = Some(ClaimOutcome::Lost);
            }
        }
        // 1. every claim of the batch is sent at once;
        let created = futures::future::join_all(
            jobs.iter()
                .map(|&i| self.create_claim(&fires[i], node_id, retention)),
        )
        .await;
        // 2. then the tombstones of the batch's names, read after the creates: a tombstone
        //    written before a claim's read turns that claim into `Tombstoned`.
        let names: Vec<&str> = jobs
            .iter()
            .map(|&i| fires[i].task.as_str())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let tombs = futures::future::join_all(
            names
                .iter()
                .map(|n| async move { self.conn().exists(&self.layout().tombstone(n)).await }),
        )
        .await;
        let mut tombstoned = HashSet::new();
        let mut first_error = None;
        for (name, t) in names.iter().zip(tombs) {
            match t {
                Ok(Some(_)) => {
                    tombstoned.insert(*name);
                }
                Ok(None) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        let mut undo = Vec::new();
        let mut candidates = Vec::new();
        for (&i, c) in jobs.iter().zip(created) {
            let fire = &fires[i];
            let path = self.layout().claim(&fire.task, fire.instant_millis());
            match c {
                Ok(stat) if tombstoned.contains(fire.task.as_str()) => {
                    if let Some(stat) = stat {
                        undo.push((path, stat.czxid));
                    }
                    outcomes[i] = Some(ClaimOutcome::Tombstoned);
                }
                Ok(Some(stat)) => candidates.push((i, path, stat)),
                Ok(None) => outcomes[i] = Some(ClaimOutcome::Lost),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        // 3. a would-be win is read back after the tombstone read: the znode must still be the
        //    one created (same czxid). A force or cleanup may have deleted it in between, and
        //    then the fire can be won again by someone else: this claim is answered `Lost`.
        //    Meanwhile a claim created for a tombstoned name is removed again (only if it is
        //    still ours), so the fire can be won once the tombstone is cleared.
        let confirm = futures::future::join_all(
            candidates
                .iter()
                .map(|(_, path, _)| async move { self.conn().exists(path).await }),
        );
        let remove = futures::future::join_all(undo.iter().map(|(path, czxid)| async move {
            if let Ok(Some(stat)) = self.conn().exists(path).await {
                if stat.czxid == *czxid {
                    let _ = self
                        .conn()
                        .delete(
                            path,
                            Some(stat.version),
                            &[ZkError::NoNode, ZkError::BadVersion],
                        )
                        .await;
                }
            }
        }));
        let (confirmed, _) = futures::join!(confirm, remove);
        for ((i, _, stat), check) in candidates.iter().zip(confirmed) {
            match check {
                Ok(Some(now)) if now.czxid == stat.czxid => {
                    outcomes[*i] = Some(ClaimOutcome::Won {
                        token: token_of(stat),
                    })
                }
                Ok(_) => outcomes[*i] = Some(ClaimOutcome::Lost),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.unwrap_or(ClaimOutcome::Lost))
            .collect())
    }

    async fn list_claims(&self, task: &str) -> Result<Listing<Claim>> {
        let mut listing = Listing::default();
        for f in self.fetch_dir(&self.layout().task_claims(task)).await? {
            match Claim::decode(&f.key, &f.data) {
                Ok(mut c) => {
                    c.token = token_of(&f.stat);
                    listing.items.push(c);
                }
                Err(e) => listing.corrupt.push(CorruptEntry {
                    key: f.key.clone(),
                    reason: e.to_string(),
                }),
            }
        }
        Ok(listing)
    }

    // ----- records -----

    async fn put_records(&self, kind: RecordKind, records: &[(String, Vec<u8>)]) -> Result<()> {
        check_records(kind, records, &self.capabilities())?;
        // No `multi` in zookeeper-async: the records are written concurrently, each whole.
        futures::stream::iter(0..records.len())
            .map(|i| self.put_record(kind, &records[i].0, &records[i].1))
            .buffer_unordered(LIST_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    async fn get_record(&self, kind: RecordKind, key: &str) -> Result<Option<Vec<u8>>> {
        check_record_key(kind, key)?;
        let path = self.layout().record(kind, key);
        Ok(self.conn().get_data(&path).await?.map(|(data, _)| data))
    }

    async fn list_records(&self, kind: RecordKind) -> Result<Vec<(String, Vec<u8>)>> {
        let dir = self.layout().records_kind_dir(kind);
        let mut out = Vec::new();
        for f in self.fetch_dir(&dir).await? {
            let name = f.key.rsplit('/').next().and_then(unescape);
            match name {
                Some(key) => out.push((key, f.data)),
                None => tracing::warn!(
                    znode = %f.key,
                    "zookeeper: skipping a record whose znode name dcron did not write"
                ),
            }
        }
        Ok(out)
    }

    async fn delete_record(&self, kind: RecordKind, key: &str) -> Result<bool> {
        check_record_key(kind, key)?;
        let path = self.layout().record(kind, key);
        // Any version: among concurrent deleters the server answers NoNode to all but one.
        Ok(self
            .conn()
            .delete(&path, None, &[ZkError::NoNode])
            .await?
            .is_ok())
    }
}

/// Ends a lease whose keep-alives stopped for its TTL: the session is closed, so the server
/// deletes the node record, exactly as an expiry would.
async fn watchdog(registry: Weak<Inner>, id: String, lease: Arc<LeaseSession>) {
    loop {
        let deadline = lease.renewed_at() + lease.ttl;
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {}
            _ = lease.ended.notified() => {}
        }
        if lease.lost.load(Ordering::Acquire) {
            return;
        }
        if tokio::time::Instant::now() >= lease.renewed_at() + lease.ttl {
            tracing::info!(node = %lease.node_id, "zookeeper: no keep-alive for the lease TTL; ending the session");
            if let Some(inner) = registry.upgrade() {
                ZkRegistry::from_inner(inner).forget(&id);
            }
            lease.end().await;
            return;
        }
    }
}
