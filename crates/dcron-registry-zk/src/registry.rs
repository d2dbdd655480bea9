//! [`ZkRegistry`]: connecting, the namespace, the shared session, and the `Registry` impl that
//! hands each operation to its module (`names`, `claims`, `nodes`, `records`, `slots`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use dcron_core::{
    Capabilities, Claim, ClaimOutcome, ClaimRequest, Claimant, CorruptEntry, Error, FireKey, Lease,
    Life, Listing, Node, NodeEvent, PutMode, RecordKind, Registry, Result, SlotOutcome, TaskMeta,
    TaskMetaEvent, Tombstone, WatchStream,
};
use futures::{StreamExt, TryStreamExt};
use tokio::sync::broadcast;
use zookeeper_async::{CreateMode, ZkError};

use crate::config::{ZkRegistryConfig, MIN_SESSION_TIMEOUT};
use crate::conn::{acl_for, Conn, ConnSpec, BACKEND};
use crate::events::{Events, ZkEvent};
use crate::keys::{ancestors, unescape, Layout};
use crate::nodes::LeaseSession;

/// The largest task record stored, in bytes: ZooKeeper refuses packets above `jute.maxbuffer`
/// (1 MiB by default, request header, path and the state header included), so records keep a
/// margin below it.
pub const MAX_VALUE_BYTES: usize = 1_000_000;

/// How many requests a listing or a batch keeps in flight at once.
pub(crate) const CONCURRENCY: usize = 64;

/// The data of a namespace root: what marks a znode as a dcron namespace.
const NAMESPACE_MARKER: &[u8] = b"{\"dcron_namespace\":1}";

/// The children a namespace root of an earlier version of this crate may have.
const KNOWN_CHILDREN: [&str; 8] = [
    "nodes",
    "tasks",
    "tombstones",
    "claims",
    "records",
    "clients",
    "sweeper",
    "slots",
];

/// A dcron registry on ZooKeeper.
///
/// Cheap to clone (an `Arc` inside). See the crate documentation for the layout, the single
/// compare-and-set behind each write, and the session, TTL and ACL behaviour.
#[derive(Clone)]
pub struct ZkRegistry {
    pub(crate) inner: Arc<Inner>,
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
    pub(crate) config: ZkRegistryConfig,
    pub(crate) hosts: String,
    pub(crate) layout: Layout,
    pub(crate) conn: Arc<Conn>,
    pub(crate) acl: Vec<zookeeper_async::Acl>,
    pub(crate) leases: Mutex<HashMap<String, Arc<LeaseSession>>>,
    pub(crate) ttl_claims: AtomicBool,
    pub(crate) tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    pub(crate) sweeper_started: AtomicBool,
    /// The id of this handle's session marker (`{root}/clients/{id}`).
    pub(crate) client_id: String,
    /// The shared session's id, as its marker's `ephemeralOwner` shows it.
    pub(crate) session: AtomicI64,
    pub(crate) events: Events,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The client's I/O task never ends by itself: close every session we own.
        let leases: Vec<Arc<LeaseSession>> = match self.leases.lock() {
            Ok(mut l) => l.drain().map(|(_, s)| s).collect(),
            Err(_) => Vec::new(),
        };
        if let Ok(mut tasks) = self.tasks.lock() {
            for t in tasks.drain(..) {
                t.abort();
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

/// A znode read with its data.
pub(crate) struct Fetched {
    pub(crate) key: String,
    pub(crate) data: Vec<u8>,
}

impl ZkRegistry {
    /// Connects, authenticates, checks and creates the namespace (with the configured ACL),
    /// probes the server for TTL znodes and starts watching the shared session.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a bad connect string or namespace, or a namespace nested
    /// in another dcron namespace (or containing one); [`Error::Unavailable`] when the ensemble
    /// cannot be reached within the connect timeout; [`Error::AccessDenied`] when the namespace
    /// exists but belongs to other credentials; [`Error::Unsupported`] when
    /// [`ZkRegistryConfig::require_ttl`] is set and the server has no TTL znodes.
    pub async fn connect(config: ZkRegistryConfig) -> Result<Self> {
        let (hosts, root) = config.hosts_and_root()?;
        if config.digest.is_none() {
            tracing::warn!(
                root = %root,
                "zookeeper: no credentials configured; every znode of the namespace is created \
                 world-writable (open ACL): configure digest_auth to protect it"
            );
        }
        let acl = acl_for(config.digest.is_some(), config.world_readable);
        let conn = Conn::open(ConnSpec {
            hosts: &hosts,
            session_timeout: config.session_timeout.max(MIN_SESSION_TIMEOUT),
            connect_timeout: config.connect_timeout,
            op_timeout: config.operation_timeout,
            digest: config.digest.as_ref(),
            acl: acl.clone(),
            faults: config.faults.clone(),
        })
        .await?;
        let layout = Layout::new(root);
        let registry = ZkRegistry {
            inner: Arc::new(Inner {
                ttl_claims: AtomicBool::new(config.ttl_claims),
                config,
                hosts,
                layout,
                conn,
                acl,
                leases: Mutex::new(HashMap::new()),
                tasks: Mutex::new(Vec::new()),
                sweeper_started: AtomicBool::new(false),
                client_id: uuid::Uuid::new_v4().simple().to_string(),
                session: AtomicI64::new(0),
                events: Events::new(),
            }),
        };
        if let Err(e) = registry.prepare().await {
            registry.inner.conn.close().await;
            return Err(e);
        }
        Ok(registry)
    }

    async fn prepare(&self) -> Result<()> {
        self.ensure_namespace().await?;
        let session = self.create_marker().await?;
        self.inner.session.store(session, Ordering::Release);
        self.probe_ttl().await?;
        let supervisor = tokio::spawn(supervise(self.downgrade(), self.inner.conn.reconnects()));
        self.push_task(supervisor);
        Ok(())
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

    /// The znode path of a task name's state (record, tombstone, life; its children are the
    /// name's claims). For operators and tests.
    pub fn task_path(&self, name: &str) -> String {
        self.layout().task(name)
    }

    /// Whether claims are currently written as TTL znodes (`false`: persistent znodes removed by
    /// the sweeper, either by configuration or because the server has no TTL znodes).
    pub fn ttl_claims(&self) -> bool {
        self.inner.ttl_claims.load(Ordering::Acquire)
    }

    /// The id of the shared session (lists, tasks, claims, watches).
    pub fn session(&self) -> i64 {
        self.inner.session.load(Ordering::Acquire)
    }

    /// The ZooKeeper session id behind a lease of this registry, if the lease is still held.
    pub fn session_id(&self, lease: &Lease) -> Option<i64> {
        self.lease(&lease.id).map(|s| s.session_id)
    }

    /// Subscribes to what the registry notices about its sessions and its server (see
    /// [`ZkEvent`]). Events sent before the call are not replayed.
    pub fn events(&self) -> broadcast::Receiver<ZkEvent> {
        self.inner.events.subscribe()
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

    pub(crate) fn conn(&self) -> &Conn {
        &self.inner.conn
    }

    pub(crate) fn layout(&self) -> &Layout {
        &self.inner.layout
    }

    pub(crate) fn downgrade(&self) -> Weak<Inner> {
        Arc::downgrade(&self.inner)
    }

    pub(crate) fn from_inner(inner: Arc<Inner>) -> Self {
        ZkRegistry { inner }
    }

    pub(crate) fn push_task(&self, task: tokio::task::JoinHandle<()>) {
        if let Ok(mut tasks) = self.inner.tasks.lock() {
            tasks.retain(|t| !t.is_finished());
            tasks.push(task);
        }
    }

    /// Refuses a namespace nested in another dcron namespace or containing other znodes, then
    /// creates the root (marked as a namespace) and its directories.
    async fn ensure_namespace(&self) -> Result<()> {
        let root = self.layout().root().to_string();
        self.check_ancestors(&root).await?;
        let mut created_root = false;
        for dir in ancestors(&root) {
            self.conn().ensure_dir(&dir).await?;
        }
        match self
            .conn()
            .create(
                &root,
                NAMESPACE_MARKER.to_vec(),
                CreateMode::Persistent,
                None,
                &[ZkError::NodeExists],
            )
            .await?
        {
            Ok(_) => created_root = true,
            Err(_) => self.adopt_root(&root).await?,
        }
        // A namespace created inside ours meanwhile is refused by its own check; one created
        // around ours meanwhile is caught here.
        if let Err(e) = self.check_ancestors(&root).await {
            if created_root {
                let _ = self
                    .conn()
                    .delete(
                        &root,
                        Some(0),
                        &[ZkError::NoNode, ZkError::NotEmpty, ZkError::BadVersion],
                    )
                    .await;
            }
            return Err(e);
        }
        for dir in self.layout().directories() {
            self.conn().ensure_dir(&dir).await?;
        }
        // Creating an existing directory is answered NodeExists even without permission: a
        // read proves the namespace is ours.
        self.conn().children(&self.layout().nodes_dir()).await?;
        Ok(())
    }

    /// Refuses `root` when one of its ancestors is a dcron namespace.
    async fn check_ancestors(&self, root: &str) -> Result<()> {
        for dir in ancestors(root) {
            match self
                .conn()
                .call_or(
                    "get_data",
                    &dir,
                    &[ZkError::NoNode, ZkError::NoAuth],
                    |zk| {
                        let dir = dir.clone();
                        async move { zk.get_data(&dir, false).await }
                    },
                )
                .await?
            {
                Ok((data, _)) if data == NAMESPACE_MARKER => {
                    return Err(Error::InvalidArgument(format!(
                        "zookeeper namespace `{root}` lies inside the dcron namespace `{dir}`: \
                         namespaces must not nest"
                    )))
                }
                Ok(_) => {}
                // An ancestor we may not read is not ours to judge; a missing one ends the walk.
                Err(ZkError::NoAuth) => {}
                Err(_) => return Ok(()),
            }
        }
        Ok(())
    }

    /// Accepts an existing root: a dcron namespace, or an unmarked znode holding nothing but
    /// what this crate writes (marked then); refuses anything else (e.g. the parent of another
    /// namespace).
    async fn adopt_root(&self, root: &str) -> Result<()> {
        let Some((data, stat)) = self.conn().get_data(root).await? else {
            return Err(Error::unavailable(format!(
                "zookeeper: namespace root `{root}` vanished while connecting"
            )));
        };
        if data == NAMESPACE_MARKER {
            return Ok(());
        }
        let children = self.conn().children(root).await?;
        if let Some(foreign) = children
            .iter()
            .find(|c| !KNOWN_CHILDREN.contains(&c.as_str()))
        {
            return Err(Error::InvalidArgument(format!(
                "zookeeper namespace `{root}` exists and is not a dcron namespace (it holds \
                 `{foreign}`, e.g. another namespace nested in it): namespaces must not nest"
            )));
        }
        self.conn()
            .set_data(root, NAMESPACE_MARKER.to_vec(), Some(stat.version), &[])
            .await?
            .map(|_| ())
            .map_err(|e| crate::conn::map_err(e, "set_data", root))
    }

    /// Creates this handle's session marker; answers the session id it shows.
    pub(crate) async fn create_marker(&self) -> Result<i64> {
        let path = self.layout().client(&self.inner.client_id);
        match self
            .conn()
            .create(
                &path,
                Vec::new(),
                CreateMode::Ephemeral,
                None,
                &[ZkError::NodeExists],
            )
            .await?
        {
            Ok((_, stat)) => Ok(stat.ephemeral_owner),
            Err(_) => Ok(self
                .conn()
                .exists(&path)
                .await?
                .map_or(0, |s| s.ephemeral_owner)),
        }
    }

    /// The server's clock now, in milliseconds since the epoch: the `mtime` of this handle's
    /// session marker, written for the purpose. Every expiry decision compares against it,
    /// never against the local clock.
    pub(crate) async fn server_now(&self) -> Result<i64> {
        let path = self.layout().client(&self.inner.client_id);
        match self
            .conn()
            .set_data(&path, Vec::new(), None, &[ZkError::NoNode])
            .await?
        {
            Ok(stat) => Ok(stat.mtime),
            Err(_) => {
                // The marker went with an expired session: the supervisor re-creates it too.
                match self
                    .conn()
                    .create(
                        &path,
                        Vec::new(),
                        CreateMode::Ephemeral,
                        None,
                        &[ZkError::NodeExists],
                    )
                    .await?
                {
                    Ok((_, stat)) => Ok(stat.mtime),
                    Err(_) => Box::pin(self.server_now()).await,
                }
            }
        }
    }

    /// Probes the server for TTL znodes; without them, fails (`require_ttl`) or starts the
    /// sweeper and says so.
    async fn probe_ttl(&self) -> Result<()> {
        let cfg = &self.inner.config;
        if cfg.ttl_claims {
            let probe = self
                .layout()
                .client(&format!("{}-ttl-probe", self.inner.client_id));
            let created = self
                .conn()
                .create(
                    &probe,
                    Vec::new(),
                    CreateMode::PersistentWithTTL,
                    Some(Duration::from_millis(1)),
                    &[ZkError::Unimplemented, ZkError::BadArguments],
                )
                .await?;
            if created.is_ok() {
                let _ = self.conn().delete(&probe, None, &[ZkError::NoNode]).await;
                return Ok(());
            }
            self.inner.ttl_claims.store(false, Ordering::Release);
            if cfg.require_ttl {
                return Err(Error::Unsupported {
                    operation: "zookeeper TTL znodes (the server needs extendedTypesEnabled=true)",
                });
            }
        } else if cfg.require_ttl {
            return Err(Error::InvalidArgument(
                "zookeeper: require_ttl(true) contradicts ttl_claims(false)".into(),
            ));
        }
        self.start_sweeper();
        Ok(())
    }

    /// Starts the claim sweeper (once) and announces it.
    pub(crate) fn start_sweeper(&self) {
        if self.inner.sweeper_started.swap(true, Ordering::AcqRel) {
            return;
        }
        self.inner.ttl_claims.store(false, Ordering::Release);
        let interval = self.inner.config.sweep_interval;
        metrics::gauge!("dcron_zk_sweeper_active", "root" => self.root().to_string()).set(1.0);
        self.inner.events.emit(ZkEvent::SweeperActive { interval });
        let task = tokio::spawn(crate::sweeper::run(self.downgrade(), interval));
        self.push_task(task);
    }

    /// Reads every child of `dir` (concurrently, bounded); children that vanished meanwhile are
    /// skipped.
    pub(crate) async fn fetch_dir(&self, dir: &str) -> Result<Vec<Fetched>> {
        let children = self.conn().children(dir).await?;
        self.fetch_children(dir, children).await
    }

    /// Reads the given children of `dir` (concurrently, bounded).
    pub(crate) async fn fetch_children(
        &self,
        dir: &str,
        children: Vec<String>,
    ) -> Result<Vec<Fetched>> {
        let conn = self.conn();
        futures::stream::iter(children)
            .map(|child| async move {
                let key = format!("{dir}/{child}");
                Ok::<_, Error>(
                    conn.get_data(&key)
                        .await?
                        .map(|(data, _)| Fetched { key, data }),
                )
            })
            .buffered(CONCURRENCY)
            .try_filter_map(|f| async move { Ok(f) })
            .try_collect()
            .await
    }
}

/// Watches the shared session: after each reconnect, tells a reconnect from a new session (the
/// session marker is gone with an expired session), re-creates the marker and reports.
async fn supervise(registry: Weak<Inner>, mut reconnects: tokio::sync::watch::Receiver<u64>) {
    reconnects.borrow_and_update();
    loop {
        if reconnects.changed().await.is_err() {
            return;
        }
        reconnects.borrow_and_update();
        let Some(inner) = registry.upgrade() else {
            return;
        };
        let reg = ZkRegistry::from_inner(inner);
        let old = reg.session();
        let path = reg.layout().client(&reg.inner.client_id);
        let seen = match reg.conn().exists(&path).await {
            Ok(Some(stat)) => Some(stat.ephemeral_owner),
            Ok(None) => None,
            Err(e) => {
                tracing::debug!(error = %e, "zookeeper: cannot check the session marker yet");
                continue;
            }
        };
        match seen {
            Some(id) if id == old => reg.inner.events.emit(ZkEvent::Reconnected { session: id }),
            _ => match reg.create_marker().await {
                Ok(new) => {
                    reg.inner.session.store(new, Ordering::Release);
                    reg.conn().clear_expiry();
                    reg.inner.events.emit(ZkEvent::SessionRenewed { old, new });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "zookeeper: cannot re-create the session marker")
                }
            },
        }
    }
}

/// A listing entry that did not decode, keyed by the name it stands for (the znode path when the
/// znode name is not one this crate wrote), with the path in the reason.
pub(crate) fn corrupt(path: &str, e: Error) -> CorruptEntry {
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

#[async_trait]
impl Registry for ZkRegistry {
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
        self.register_node(node, ttl).await
    }

    async fn keep_alive(&self, lease: &Lease) -> Result<()> {
        self.keep_node_alive(lease).await
    }

    async fn update_node(&self, lease: &Lease, node: &Node) -> Result<()> {
        self.update_node_record(lease, node).await
    }

    async fn unregister(&self, lease: &Lease) -> Result<()> {
        self.unregister_node(lease).await
    }

    async fn list_nodes(&self) -> Result<Listing<Node>> {
        self.list_node_records().await
    }

    async fn watch_nodes(&self) -> Result<WatchStream<NodeEvent>> {
        self.watch_node_records().await
    }

    // ----- tasks -----

    async fn put_task(&self, meta: &TaskMeta, mode: PutMode) -> Result<()> {
        self.put_task_record(meta, mode).await
    }

    async fn get_task(&self, name: &str) -> Result<Option<TaskMeta>> {
        self.get_task_record(name).await
    }

    async fn list_tasks(&self) -> Result<Listing<TaskMeta>> {
        self.list_task_records().await
    }

    async fn watch_tasks(&self) -> Result<WatchStream<TaskMetaEvent>> {
        self.watch_task_states().await
    }

    // ----- tombstones -----

    async fn mark_deleted(&self, name: &str, at: DateTime<Utc>) -> Result<()> {
        self.mark_name_deleted(name, at).await
    }

    async fn get_tombstone(&self, name: &str) -> Result<Option<Tombstone>> {
        self.get_name_tombstone(name).await
    }

    async fn list_tombstones(&self) -> Result<Listing<Tombstone>> {
        self.list_name_tombstones().await
    }

    async fn clear_tombstone(&self, name: &str) -> Result<()> {
        self.clear_name_tombstone(name).await
    }

    async fn cleanup_task(&self, name: &str) -> Result<()> {
        self.cleanup_name(name).await
    }

    async fn cleanup_all(&self) -> Result<()> {
        // Both are tried; the first failure is reported.
        let names = self.cleanup_namespace().await;
        let slots = self.free_all_slots().await;
        names.and(slots)
    }

    // ----- lives -----

    async fn ensure_lives(&self, names: &[(String, DateTime<Utc>)]) -> Result<Vec<Life>> {
        self.ensure_name_lives(names).await
    }

    async fn restart_life(&self, name: &str, at: DateTime<Utc>) -> Result<Life> {
        self.restart_name_life(name, at).await
    }

    // ----- claims -----

    async fn claim(
        &self,
        claimant: &Claimant,
        requests: &[ClaimRequest],
    ) -> Result<Vec<ClaimOutcome>> {
        self.claim_fires(claimant, requests).await
    }

    async fn list_claims(&self, task: &str) -> Result<Listing<Claim>> {
        self.list_fire_claims(task).await
    }

    // ----- running slots -----

    async fn acquire_slot(&self, lease: &Lease, fire: &FireKey) -> Result<SlotOutcome> {
        self.acquire_task_slot(lease, fire).await
    }

    async fn release_slot(&self, lease: &Lease, fire: &FireKey) -> Result<()> {
        self.release_task_slot(lease, fire).await
    }

    // ----- records -----

    async fn put_records(&self, kind: RecordKind, records: &[(String, Vec<u8>)]) -> Result<()> {
        self.put_record_batch(kind, records).await
    }

    async fn get_record(&self, kind: RecordKind, key: &str) -> Result<Option<Vec<u8>>> {
        self.get_one_record(kind, key).await
    }

    async fn list_records(&self, kind: RecordKind) -> Result<Vec<(String, Vec<u8>)>> {
        self.list_kind_records(kind).await
    }

    async fn delete_record(&self, kind: RecordKind, key: &str) -> Result<bool> {
        self.delete_one_record(kind, key).await
    }
}
