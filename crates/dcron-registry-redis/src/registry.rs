//! [`RedisRegistry`]: the `Registry` implementation.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use dcron_core::backend::check_stored_size;
use dcron_core::{
    check_claims, check_record_key, check_records, check_slot, check_value_size,
    validate_task_name, Capabilities, Claim, ClaimOutcome, ClaimRequest, Claimant, CorruptEntry,
    Error, FireKey, Lease, Life, Listing, Node, NodeEvent, PutMode, RecordKind, Registry, Result,
    SlotOutcome, SlotRecord, TaskMeta, TaskMetaEvent, Tombstone, WatchStream,
};
use deadpool_redis::{Connection, Pool, Runtime};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{AsyncConnectionConfig, Client, FromRedisValue, IntoConnectionInfo, Script, Value};

use crate::config::{redact_url, RedisRegistryConfig, DEFAULT_URL, TEST_URL_ENV};
use crate::error::{from_pool, from_redis};
use crate::keys::RedisKeys;
use crate::{events, scripts, watch, BACKEND};

/// The largest task record stored, in bytes (Redis strings could hold 512 MB; a schedule
/// record that large is a mistake, and every node reads every record on each poll).
pub const MAX_VALUE_BYTES: usize = 4 * 1024 * 1024;

/// How many keys one `SCAN` step asks for, and how many values one `MGET`/`UNLINK` carries.
const BATCH: usize = 1000;

/// The most fires (or names) one script call decides: a larger batch is split into several
/// calls sent concurrently, so that no single script keeps the server busy for long.
const MAX_PER_SCRIPT: usize = 1000;

/// A dcron registry on a Redis server (standalone or a primary) or a Redis Cluster
/// ([`RedisRegistryConfig::cluster`]).
///
/// Cheap to clone: clones share the connection pool. Watches stop when every clone is dropped.
/// See the crate documentation for the key layout and what the server must provide.
///
/// ```no_run
/// # async fn demo() -> dcron_core::Result<()> {
/// use dcron_core::Registry;
/// use dcron_registry_redis::RedisRegistry;
///
/// let registry = RedisRegistry::from_url("redis://127.0.0.1:6379")?;
/// registry.ping().await?;
/// println!("{} tasks", registry.list_tasks().await?.items.len());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisRegistry {
    pub(crate) core: Arc<Core>,
    /// Dropped with the last clone: the watchers see the channel close and stop.
    _shutdown: Arc<tokio::sync::watch::Sender<()>>,
    pub(crate) shutdown_rx: tokio::sync::watch::Receiver<()>,
}

/// How commands reach the server(s).
pub(crate) enum Backend {
    /// A single server (or a primary): a pool of connections.
    Single(Pool),
    /// A Redis Cluster: one multiplexed cluster connection (it routes every command by its
    /// keys and follows `MOVED`/`ASK` by itself), made on first use.
    Cluster(Box<ClusterBackend>),
}

/// The cluster client and its connection, made on first use.
pub(crate) struct ClusterBackend {
    client: ClusterClient,
    conn: tokio::sync::OnceCell<ClusterConnection>,
}

/// A connection of either [`Backend`].
pub(crate) enum Conn {
    Single(Connection),
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// What the registry and its watchers share.
pub(crate) struct Core {
    pub(crate) backend: Backend,
    /// The client watches subscribe through (the first seed node of a cluster).
    pub(crate) client: Client,
    pub(crate) keys: RedisKeys,
    pub(crate) config: RedisRegistryConfig,
}

impl std::fmt::Debug for RedisRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRegistry")
            .field("url", &redact_url(&self.core.config.url))
            .field("namespace", &self.core.config.namespace)
            .finish_non_exhaustive()
    }
}

/// The longest TTL or retention sent to the server (100 years): longer ones are capped, as
/// Redis refuses expiry times past the end of its clock.
const MAX_TTL_MS: u64 = 100 * 365 * 24 * 3600 * 1000;

/// A duration in whole milliseconds for `PX`/`PEXPIRE`: rounded up (a sub-millisecond duration
/// never becomes zero), at least 1, at most [`MAX_TTL_MS`].
fn millis(d: Duration) -> u64 {
    let ms = d.as_millis() + u128::from(d.subsec_nanos() % 1_000_000 != 0);
    u64::try_from(ms).unwrap_or(u64::MAX).clamp(1, MAX_TTL_MS)
}

impl RedisRegistry {
    /// A registry for the server at `url` with the default namespace (`dcron`) and settings.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when the URL does not parse.
    pub fn from_url(url: &str) -> Result<Self> {
        RedisRegistryConfig::new(url).build()
    }

    /// A registry for tests: the server named by `DCRON_TEST_REDIS_URL`, or
    /// `redis://127.0.0.1:6379` when it is not set.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when the URL does not parse.
    pub fn from_env() -> Result<Self> {
        RedisRegistryConfig::new(Self::env_url()).build()
    }

    /// The URL [`RedisRegistry::from_env`] uses.
    pub fn env_url() -> String {
        std::env::var(TEST_URL_ENV)
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| DEFAULT_URL.to_string())
    }

    /// A builder starting from `url` (same as [`RedisRegistryConfig::new`]).
    pub fn builder(url: impl Into<String>) -> RedisRegistryConfig {
        RedisRegistryConfig::new(url)
    }

    pub(crate) fn from_config(config: RedisRegistryConfig) -> Result<Self> {
        let invalid = |e: redis::RedisError| {
            Error::InvalidArgument(format!("redis URL `{}`: {e}", redact_url(&config.url)))
        };
        let mut info = config
            .url
            .as_str()
            .into_connection_info()
            .map_err(invalid)?;
        let mut settings = info.redis_settings().clone();
        if let Some(user) = &config.username {
            settings = settings.set_username(user);
        }
        if let Some(password) = &config.password {
            settings = settings.set_password(password);
        }
        if let Some(db) = config.database {
            settings = settings.set_db(db);
        }
        info = info.set_redis_settings(settings);
        #[cfg(feature = "tls")]
        if matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }) {
            // rustls needs a process-wide crypto provider; an error only means one is installed.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        #[cfg(feature = "tls")]
        if let Some(tls) = &config.tls {
            info = crate::tls::with_certificates(info, tls, &redact_url(&config.url))?;
        }
        if !config.cluster_urls.is_empty() {
            return Self::cluster_from_config(config, info);
        }
        let keys = RedisKeys::new(&config.namespace, info.redis_settings().db());
        let connection = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.command_timeout));
        let manager =
            deadpool_redis::Manager::new_with_config(info.clone(), connection).map_err(invalid)?;
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(config.connect_timeout + config.command_timeout))
            .create_timeout(Some(config.connect_timeout + config.command_timeout))
            .recycle_timeout(Some(config.command_timeout))
            .build()
            .map_err(|e| Error::backend(BACKEND, "building the connection pool", e))?;
        let client = Client::open(info).map_err(invalid)?;
        let (shutdown, shutdown_rx) = tokio::sync::watch::channel(());
        Ok(RedisRegistry {
            core: Arc::new(Core {
                backend: Backend::Single(pool),
                client,
                keys,
                config,
            }),
            _shutdown: Arc::new(shutdown),
            shutdown_rx,
        })
    }

    /// A registry on a Redis Cluster; `first` is the parsed first seed URL (with the
    /// configured credentials), the one watches subscribe through.
    fn cluster_from_config(
        config: RedisRegistryConfig,
        first: redis::ConnectionInfo,
    ) -> Result<Self> {
        #[cfg(feature = "tls")]
        if config.tls.is_some() {
            return Err(Error::InvalidArgument(
                "redis cluster: TLS settings are not supported with a cluster".into(),
            ));
        }
        let mut seeds = Vec::with_capacity(config.cluster_urls.len());
        for url in &config.cluster_urls {
            let info = url.as_str().into_connection_info().map_err(|e| {
                Error::InvalidArgument(format!("redis cluster URL `{}`: {e}", redact_url(url)))
            })?;
            seeds.push(info);
        }
        let mut builder = ClusterClient::builder(seeds)
            .connection_timeout(config.connect_timeout)
            .response_timeout(config.command_timeout);
        if let Some(user) = &config.username {
            builder = builder.username(user.clone());
        }
        if let Some(password) = &config.password {
            builder = builder.password(password.clone());
        }
        let cluster = builder
            .build()
            .map_err(|e| Error::InvalidArgument(format!("redis cluster: {e}")))?;
        let client = Client::open(first).map_err(|e| {
            Error::InvalidArgument(format!("redis URL `{}`: {e}", redact_url(&config.url)))
        })?;
        let (shutdown, shutdown_rx) = tokio::sync::watch::channel(());
        Ok(RedisRegistry {
            core: Arc::new(Core {
                backend: Backend::Cluster(Box::new(ClusterBackend {
                    client: cluster,
                    conn: tokio::sync::OnceCell::new(),
                })),
                client,
                keys: RedisKeys::cluster(&config.namespace),
                config,
            }),
            _shutdown: Arc::new(shutdown),
            shutdown_rx,
        })
    }

    /// A registry for tests on the Redis Cluster named by `DCRON_TEST_REDIS_CLUSTER_URLS`
    /// (comma-separated URLs), or `None` when it is not set.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when a URL does not parse.
    pub fn cluster_from_env(namespace: &str) -> Option<Result<Self>> {
        let urls = std::env::var(crate::TEST_CLUSTER_URLS_ENV).ok()?;
        let urls: Vec<&str> = urls
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        if urls.is_empty() {
            return None;
        }
        Some(
            RedisRegistryConfig::cluster(urls)
                .namespace(namespace)
                .build(),
        )
    }

    /// The key layout of this registry's namespace.
    pub fn keys(&self) -> &RedisKeys {
        &self.core.keys
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.core.config.namespace
    }

    /// Checks that the server answers (`PING`).
    ///
    /// # Errors
    /// [`Error::Unavailable`] when it cannot be reached in time, [`Error::AccessDenied`] when
    /// the credentials are refused.
    pub async fn ping(&self) -> Result<()> {
        let mut conn = self.core.conn("ping").await?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map_err(|e| from_redis(e, "ping"))?;
        Ok(())
    }
}

impl RedisRegistry {
    /// One script call of [`Registry::ensure_lives`].
    async fn ensure_lives_once(&self, names: &[(String, DateTime<Utc>)]) -> Result<Vec<Life>> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let keys = &self.core.keys;
        // Every name of one call is of one bucket (one slot, one sequence).
        let token = keys.sequence(&names[0].0);
        let (scale, offset) = keys.token_scale(&names[0].0);
        let life_keys: Vec<String> = names.iter().map(|(name, _)| keys.life(name)).collect();
        let mut key_refs: Vec<&str> = Vec::with_capacity(names.len() + 1);
        key_refs.push(&token);
        key_refs.extend(life_keys.iter().map(String::as_str));
        let since: Vec<String> = [scale.to_string(), offset.to_string()]
            .into_iter()
            .chain(names.iter().flat_map(|(_, at)| {
                let (s, ns) = since_fields(*at);
                [s, ns]
            }))
            .collect();
        let arg_refs: Vec<&[u8]> = since.iter().map(String::as_bytes).collect();
        let context = format!("ensure the lives of {} task(s)", names.len());
        let values: Vec<Value> = self
            .core
            .eval(&scripts::ENSURE_LIVES, &key_refs, &arg_refs, &context)
            .await?;
        if values.len() != names.len() * 3 {
            return Err(Error::Backend {
                backend: BACKEND,
                message: format!("{context}: {} values answered", values.len()),
                source: None,
            });
        }
        values
            .chunks(3)
            .zip(&life_keys)
            .map(|(triple, key)| {
                let generation = as_u64(&triple[0]).filter(|g| *g > 0);
                let since = since_from_fields(&triple[1], &triple[2]);
                match (generation, since) {
                    (Some(generation), Some(since)) => Ok(Life::new(generation, since)),
                    _ => Err(Error::Corrupt {
                        key: key.clone(),
                        reason: format!("not a life: {triple:?}"),
                    }),
                }
            })
            .collect()
    }

    /// One script call of [`Registry::claim`] for requests with valid task names.
    async fn claim_once(
        &self,
        claimant: &Claimant,
        requests: &[(usize, &ClaimRequest)],
    ) -> Result<Vec<ClaimOutcome>> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let keys = &self.core.keys;
        // Each task's tombstone, life and index go once; fires refer to their task by number.
        let mut tasks: Vec<&str> = Vec::new();
        let mut task_of: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        let mut claim_keys = Vec::with_capacity(requests.len());
        // Every request of one call is of one bucket (one slot, one sequence).
        let first = requests[0].1.fire.task.as_str();
        let (scale, offset) = keys.token_scale(first);
        let mut args: Vec<Vec<u8>> = Vec::with_capacity(5 + requests.len() * 5);
        args.push(claimant.node_id.as_bytes().to_vec());
        args.push(claimant.epoch.to_string().into_bytes());
        args.push(Vec::new()); // the number of tasks, known at the end
        args.push(scale.to_string().into_bytes());
        args.push(offset.to_string().into_bytes());
        for (_, request) in requests {
            let fire = &request.fire;
            let task = *task_of.entry(fire.task.as_str()).or_insert_with(|| {
                tasks.push(fire.task.as_str());
                tasks.len()
            });
            let instant = fire.instant_millis().to_string();
            claim_keys.push(format!("{}{instant}", keys.claim_prefix(&fire.task)));
            args.push(task.to_string().into_bytes());
            args.push(request.generation.to_string().into_bytes());
            args.push(request.deadline.timestamp_micros().to_string().into_bytes());
            args.push(millis(request.retention).to_string().into_bytes());
            args.push(instant.into_bytes());
        }
        args[2] = tasks.len().to_string().into_bytes();
        let mut key_list: Vec<String> = Vec::with_capacity(1 + tasks.len() * 3 + claim_keys.len());
        key_list.push(keys.sequence(first));
        for task in &tasks {
            key_list.push(keys.tombstone(task));
            key_list.push(keys.life(task));
            key_list.push(keys.claim_index(task));
        }
        key_list.extend(claim_keys.iter().cloned());
        let key_refs: Vec<&str> = key_list.iter().map(String::as_str).collect();
        let arg_refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        let context = format!("claim {} fire(s) for `{claimant}`", requests.len());
        let answers: Vec<Value> = self
            .core
            .eval(&scripts::CLAIM, &key_refs, &arg_refs, &context)
            .await?;
        if answers.len() != requests.len() {
            return Err(Error::Backend {
                backend: BACKEND,
                message: format!("{context}: {} answers", answers.len()),
                source: None,
            });
        }
        Ok(answers
            .into_iter()
            .zip(&claim_keys)
            .map(|(answer, key)| claim_outcome(answer, || key.clone()))
            .collect())
    }
}

impl Core {
    pub(crate) async fn conn(&self, context: &str) -> Result<Conn> {
        match &self.backend {
            Backend::Single(pool) => pool
                .get()
                .await
                .map(Conn::Single)
                .map_err(|e| from_pool(e, context)),
            Backend::Cluster(cluster) => {
                let ClusterBackend { client, conn } = &**cluster;
                let limit = self.config.connect_timeout + self.config.command_timeout;
                let made = conn.get_or_try_init(|| async {
                    tokio::time::timeout(limit, client.get_async_connection())
                        .await
                        .map_err(|_| {
                            Error::unavailable(format!(
                                "redis: {context}: no cluster connection within {limit:?}"
                            ))
                        })?
                        .map_err(|e| from_redis(e, context))
                });
                Ok(Conn::Cluster(made.await?.clone()))
            }
        }
    }

    /// Whether commands go to a Redis Cluster.
    fn is_cluster(&self) -> bool {
        matches!(self.backend, Backend::Cluster(_))
    }

    /// The `host:port` of every master of the cluster (from `CLUSTER SLOTS`).
    async fn masters(&self, conn: &mut Conn) -> Result<Vec<(String, u16)>> {
        let Conn::Cluster(cluster) = conn else {
            return Ok(Vec::new());
        };
        let slots: Value = cluster
            .route_command(
                redis::cmd("CLUSTER").arg("SLOTS").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            )
            .await
            .map_err(|e| from_redis(e, "cluster slots"))?;
        let mut masters = Vec::new();
        if let Value::Array(ranges) = slots {
            for range in ranges {
                let Value::Array(fields) = range else {
                    continue;
                };
                let Some(Value::Array(master)) = fields.get(2) else {
                    continue;
                };
                let host = master.first().cloned().map(as_bytes);
                let port = master
                    .get(1)
                    .and_then(as_i64)
                    .and_then(|p| u16::try_from(p).ok());
                if let (Some(host), Some(port)) = (host, port) {
                    let host = String::from_utf8_lossy(&host).into_owned();
                    if !masters.contains(&(host.clone(), port)) {
                        masters.push((host, port));
                    }
                }
            }
        }
        if masters.is_empty() {
            return Err(Error::unavailable("redis: cluster slots: no master listed"));
        }
        Ok(masters)
    }

    /// One `SCAN` step on the server, or on the master `at` of a cluster.
    async fn scan_step(
        conn: &mut Conn,
        at: Option<&(String, u16)>,
        cursor: u64,
        pattern: &str,
    ) -> Result<(u64, Vec<Vec<u8>>)> {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(BATCH);
        let context = format!("scan {pattern}");
        match (conn, at) {
            (Conn::Cluster(cluster), Some((host, port))) => {
                let value = cluster
                    .route_command(
                        cmd,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                            host: host.clone(),
                            port: *port,
                        }),
                    )
                    .await
                    .map_err(|e| from_redis(e, &context))?;
                FromRedisValue::from_redis_value(value).map_err(|e| from_redis(e.into(), &context))
            }
            (conn, _) => cmd
                .query_async(conn)
                .await
                .map_err(|e| from_redis(e, &context)),
        }
    }

    /// Runs a script with the given keys and arguments on a pooled connection.
    async fn eval<T: FromRedisValue>(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&[u8]],
        context: &str,
    ) -> Result<T> {
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(*key);
        }
        for arg in args {
            invocation.arg(*arg);
        }
        let mut conn = self.conn(context).await?;
        invocation
            .invoke_async(&mut conn)
            .await
            .map_err(|e| from_redis(e, context))
    }

    /// The registered nodes with the version of each record, and the node-change counter at
    /// the same instant (see `watch`).
    pub(crate) async fn node_snapshot(&self) -> Result<NodeSnapshot> {
        let node_prefix = self.keys.node_prefix();
        let values: Vec<Value> = self
            .eval(
                &scripts::LIST_NODES,
                &[&self.keys.node_index(), &self.keys.node_version()],
                &[node_prefix.as_bytes()],
                "list nodes",
            )
            .await?;
        let mut values = values.into_iter();
        let version = values.next().and_then(|v| as_u64(&v)).unwrap_or(0);
        let mut snapshot = NodeSnapshot {
            version,
            nodes: Vec::new(),
            corrupt: Vec::new(),
        };
        while let (Some(member), Some(record), Some(node_version)) =
            (values.next(), values.next(), values.next())
        {
            let key = format!(
                "{node_prefix}{}",
                String::from_utf8_lossy(&as_bytes(member))
            );
            let record = as_bytes(record);
            match check_stored_size(&key, record.len(), MAX_VALUE_BYTES)
                .and_then(|()| Node::decode(&key, &record))
            {
                Ok(node) => snapshot
                    .nodes
                    .push((node, as_u64(&node_version).unwrap_or(0))),
                Err(e) => snapshot.corrupt.push(corrupt_entry(key, e)),
            }
        }
        Ok(snapshot)
    }

    pub(crate) async fn list_nodes(&self) -> Result<Listing<Node>> {
        let snapshot = self.node_snapshot().await?;
        Ok(Listing {
            items: snapshot.nodes.into_iter().map(|(node, _)| node).collect(),
            corrupt: snapshot.corrupt,
        })
    }

    /// Every key matching `pattern`, each once, with `SCAN` cursors followed until they wrap.
    /// Keys are bytes: a key someone wrote that is not UTF-8 must not fail the whole scan.
    /// On a cluster, every master is scanned (keys live on the master of their slot).
    async fn scan(&self, conn: &mut Conn, pattern: &str) -> Result<Vec<Vec<u8>>> {
        let masters = self.masters(conn).await?;
        let targets: Vec<Option<&(String, u16)>> = if masters.is_empty() {
            vec![None]
        } else {
            masters.iter().map(Some).collect()
        };
        let mut seen = HashSet::new();
        let mut keys = Vec::new();
        for at in targets {
            let mut cursor: u64 = 0;
            loop {
                let (next, batch) = Self::scan_step(conn, at, cursor, pattern).await?;
                for key in batch {
                    // SCAN may return a key more than once.
                    if seen.insert(key.clone()) {
                        keys.push(key);
                    }
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(keys)
    }

    /// Reads the string values of `keys` (`None` for a key gone since, or not a string).
    async fn mget(&self, conn: &mut Conn, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        if self.is_cluster() {
            // The cluster connection splits an `MGET` by slot; a pipeline must stay on one node.
            let mut out = Vec::with_capacity(keys.len());
            for chunk in keys.chunks(BATCH) {
                let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                    .arg(chunk)
                    .query_async(conn)
                    .await
                    .map_err(|e| from_redis(e, "read values"))?;
                out.extend(values);
            }
            return Ok(out);
        }
        let mut pipe = redis::pipe();
        for chunk in keys.chunks(BATCH) {
            pipe.cmd("MGET").arg(chunk);
        }
        let chunks: Vec<Vec<Option<Vec<u8>>>> = pipe
            .query_async(conn)
            .await
            .map_err(|e| from_redis(e, "read values"))?;
        Ok(chunks.into_iter().flatten().collect())
    }

    /// Of the keys `MGET` answered nil for, the ones that exist with another type than string
    /// (the others were removed since the scan).
    async fn wrong_type(
        &self,
        conn: &mut Conn,
        keys: &[String],
        values: &[Option<Vec<u8>>],
    ) -> Result<HashSet<String>> {
        let missing: Vec<&String> = keys
            .iter()
            .zip(values)
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| k)
            .collect();
        if missing.is_empty() {
            return Ok(HashSet::new());
        }
        if self.is_cluster() {
            let mut wrong = HashSet::new();
            for key in missing {
                let t: String = redis::cmd("TYPE")
                    .arg(key)
                    .query_async(conn)
                    .await
                    .map_err(|e| from_redis(e, "read key types"))?;
                if t != "none" {
                    wrong.insert(key.clone());
                }
            }
            return Ok(wrong);
        }
        let mut pipe = redis::pipe();
        for key in &missing {
            pipe.cmd("TYPE").arg(*key);
        }
        let types: Vec<String> = pipe
            .query_async(conn)
            .await
            .map_err(|e| from_redis(e, "read key types"))?;
        Ok(missing
            .into_iter()
            .zip(types)
            .filter(|(_, t)| t != "none")
            .map(|(k, _)| k.clone())
            .collect())
    }

    /// Lists the records under `prefix`, decoding each with `decode(name, key, bytes)`.
    async fn list_records<T>(
        &self,
        prefix: &str,
        decode: impl Fn(&str, &str, &[u8]) -> Result<T>,
    ) -> Result<Listing<T>> {
        let mut conn = self.conn("list").await?;
        let mut listing = Listing::default();
        let mut keys = Vec::new();
        for raw in self.scan(&mut conn, &format!("{prefix}*")).await? {
            match String::from_utf8(raw) {
                Ok(key) => keys.push(key),
                Err(e) => listing.corrupt.push(CorruptEntry {
                    key: String::from_utf8_lossy(e.as_bytes()).into_owned(),
                    reason: "the key is not UTF-8".into(),
                }),
            }
        }
        let values = self.mget(&mut conn, &keys).await?;
        let wrong_type = self.wrong_type(&mut conn, &keys, &values).await?;
        for (key, value) in keys.into_iter().zip(values) {
            let Some(bytes) = value else {
                if wrong_type.contains(&key) {
                    listing.corrupt.push(CorruptEntry {
                        key,
                        reason: "not a string value".into(),
                    });
                }
                continue;
            };
            let decoded = match self.keys.name_of(prefix, &key) {
                Some(name) => decode(&name, &key, &bytes),
                None => Err(Error::Corrupt {
                    key: key.clone(),
                    reason: "the key is not an escaped name".into(),
                }),
            };
            match decoded {
                Ok(item) => listing.items.push(item),
                Err(e) => listing.corrupt.push(corrupt_entry(key, e)),
            }
        }
        Ok(listing)
    }
}

/// Splits the indices `0..len` of a batch into script calls: grouped by `bucket` (keeping
/// their order within a group), then cut into pieces of at most [`MAX_PER_SCRIPT`]. In the
/// cluster layout a bucket is one hash slot, so each call only touches keys of one slot.
fn split_batch(len: usize, bucket: impl Fn(usize) -> u16) -> Vec<Vec<usize>> {
    let mut groups: std::collections::BTreeMap<u16, Vec<usize>> = Default::default();
    for i in 0..len {
        groups.entry(bucket(i)).or_default().push(i);
    }
    groups
        .into_values()
        .flat_map(|group| {
            group
                .chunks(MAX_PER_SCRIPT)
                .map(<[usize]>::to_vec)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The node list at one instant (see [`Core::node_snapshot`]).
pub(crate) struct NodeSnapshot {
    /// The node-change counter when the list was read: every change with a version up to it
    /// is reflected.
    pub(crate) version: u64,
    /// Each listed node with the version of its record (0 for a record without one).
    pub(crate) nodes: Vec<(Node, u64)>,
    /// Records that do not decode.
    pub(crate) corrupt: Vec<CorruptEntry>,
}

/// A stored claim: `<token>:<generation>:<epoch>:<node id>` (what the claim script writes).
struct StoredClaim {
    token: u64,
    generation: u64,
    epoch: u64,
    node_id: String,
}

/// Parses a stored claim; `None` when the bytes are not one.
fn parse_claim(bytes: &[u8]) -> Option<StoredClaim> {
    if bytes.len() > MAX_VALUE_BYTES {
        return None;
    }
    let text = std::str::from_utf8(bytes).ok()?;
    let mut parts = text.splitn(4, ':');
    let token = parts.next()?.parse().ok().filter(|t| *t > 0)?;
    let generation = parts.next()?.parse().ok()?;
    let epoch = parts.next()?.parse().ok()?;
    let node_id = parts.next().filter(|n| !n.is_empty())?.to_string();
    Some(StoredClaim {
        token,
        generation,
        epoch,
        node_id,
    })
}

/// The bytes of a bulk or simple string reply (empty for anything else).
fn as_bytes(value: Value) -> Vec<u8> {
    match value {
        Value::BulkString(b) => b,
        Value::SimpleString(s) => s.into_bytes(),
        _ => Vec::new(),
    }
}

/// An integer reply, or a string holding one.
fn as_i64(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn as_u64(value: &Value) -> Option<u64> {
    as_i64(value).and_then(|n| u64::try_from(n).ok())
}

/// A live-since instant as the two fields stored in a life hash: whole seconds since the Unix
/// epoch and nanoseconds (a leap second's are capped, so they stay below one second).
fn since_fields(at: DateTime<Utc>) -> (String, String) {
    (
        at.timestamp().to_string(),
        at.timestamp_subsec_nanos().min(999_999_999).to_string(),
    )
}

/// Reads the fields of [`since_fields`] back.
fn since_from_fields(secs: &Value, nanos: &Value) -> Option<DateTime<Utc>> {
    let nanos = u32::try_from(as_i64(nanos)?).ok()?;
    DateTime::from_timestamp(as_i64(secs)?, nanos)
}

/// A copy of an error for each fire of a batch that failed as a whole (errors are not `Clone`):
/// the message, and whether it is retryable.
fn copy_error(e: &Error) -> Error {
    if e.is_retryable() {
        Error::unavailable(e.to_string())
    } else {
        Error::Backend {
            backend: BACKEND,
            message: e.to_string(),
            source: None,
        }
    }
}

/// Turns one answer of the claim script into an outcome; `key` names the claim in errors.
fn claim_outcome(answer: Value, key: impl Fn() -> String) -> ClaimOutcome {
    let unexpected = |what: &str| {
        ClaimOutcome::Failed(Error::Backend {
            backend: BACKEND,
            message: format!("claim {}: unexpected script answer {what}", key()),
            source: None,
        })
    };
    let Value::Array(items) = answer else {
        return unexpected(&format!("{answer:?}"));
    };
    let code = items.first().cloned().map(as_bytes).unwrap_or_default();
    let token = || items.get(1).and_then(as_u64).filter(|t| *t > 0);
    match code.as_slice() {
        b"W" => token().map_or_else(
            || unexpected("W without a token"),
            |token| ClaimOutcome::Won { token },
        ),
        b"E" => token().map_or_else(
            || unexpected("E without a token"),
            |token| ClaimOutcome::WonEarlier { token },
        ),
        b"L" => ClaimOutcome::Lost {
            holder: items
                .get(1)
                .cloned()
                .map(as_bytes)
                .map(|b| String::from_utf8_lossy(&b).into_owned()),
        },
        b"T" => ClaimOutcome::Tombstoned,
        b"S" => ClaimOutcome::Superseded {
            current: items.get(1).and_then(as_u64),
        },
        b"D" => ClaimOutcome::Late,
        b"F" => ClaimOutcome::Failed(Error::Corrupt {
            key: key(),
            reason: items
                .get(1)
                .cloned()
                .map(as_bytes)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default(),
        }),
        other => unexpected(&String::from_utf8_lossy(other)),
    }
}

/// Turns the answer of the slot script into an outcome; `key` names the slot in errors.
fn slot_outcome(answer: Value, key: &str, lease: &Lease, context: &str) -> Result<SlotOutcome> {
    let unexpected = |what: &str| Error::Backend {
        backend: BACKEND,
        message: format!("{context}: unexpected script answer {what}"),
        source: None,
    };
    let Value::Array(items) = answer else {
        return Err(unexpected(&format!("{answer:?}")));
    };
    let mut items = items.into_iter().map(as_bytes);
    let code = items.next().unwrap_or_default();
    match code.as_slice() {
        b"T" => Ok(SlotOutcome::Taken),
        b"X" => Err(Error::LeaseLost {
            node: lease.node_id.clone(),
        }),
        b"H" => {
            let record = items
                .next()
                .ok_or_else(|| unexpected("H without a record"))?;
            check_stored_size(key, record.len(), MAX_VALUE_BYTES)?;
            Ok(SlotRecord::decode(key, &record)?.held())
        }
        b"F" => Err(Error::Corrupt {
            key: key.to_string(),
            reason: String::from_utf8_lossy(&items.next().unwrap_or_default()).into_owned(),
        }),
        other => Err(unexpected(&String::from_utf8_lossy(other))),
    }
}

/// Maps the error of reading one value: a key of another type than string where a record
/// belongs is damage ([`Error::Corrupt`]), not an outage.
fn read_error(err: redis::RedisError, key: &str, context: &str) -> Error {
    if err.code() == Some("WRONGTYPE") {
        Error::Corrupt {
            key: key.to_string(),
            reason: "not a string value".into(),
        }
    } else {
        from_redis(err, context)
    }
}

/// Maps the error of a command on a record hash: a key of another type than hash is damage
/// ([`Error::Corrupt`]), not an outage.
fn record_error(err: redis::RedisError, key: &str, context: &str) -> Error {
    if err.code() == Some("WRONGTYPE") {
        Error::Corrupt {
            key: key.to_string(),
            reason: "not a hash of records".into(),
        }
    } else {
        from_redis(err, context)
    }
}

fn corrupt_entry(key: String, err: Error) -> CorruptEntry {
    let reason = match err {
        Error::Corrupt { reason, .. } => reason,
        other => other.to_string(),
    };
    CorruptEntry { key, reason }
}

fn decode_task(name: &str, key: &str, bytes: &[u8]) -> Result<TaskMeta> {
    check_stored_size(key, bytes.len(), MAX_VALUE_BYTES)?;
    let meta = TaskMeta::decode(key, bytes)?;
    if meta.name != name {
        return Err(Error::Corrupt {
            key: key.to_string(),
            reason: format!("the record names task `{}`", meta.name),
        });
    }
    Ok(meta)
}

fn decode_tombstone(name: &str, key: &str, bytes: &[u8]) -> Result<Tombstone> {
    check_stored_size(key, bytes.len(), MAX_VALUE_BYTES)?;
    let tomb = Tombstone::decode(key, bytes)?;
    if tomb.name != name {
        return Err(Error::Corrupt {
            key: key.to_string(),
            reason: format!("the tombstone names task `{}`", tomb.name),
        });
    }
    Ok(tomb)
}

#[async_trait]
impl Registry for RedisRegistry {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::with_max_value_bytes(MAX_VALUE_BYTES)
            .with_records()
            .with_clock()
            .with_exactly_once()
            .with_slots()
    }

    async fn register(&self, node: &Node, ttl: Duration) -> Result<Lease> {
        dcron_core::check_registration(node, ttl)?;
        let keys = &self.core.keys;
        let lease = Lease {
            node_id: node.id.clone(),
            id: uuid::Uuid::new_v4().to_string(),
            ttl,
        };
        let member = crate::keys::escape(&node.id);
        let ttl_ms = millis(ttl).to_string();
        let _: i64 = self
            .core
            .eval(
                &scripts::REGISTER,
                &[
                    &keys.node(&node.id),
                    &keys.node_index(),
                    &keys.node_version(),
                ],
                &[
                    lease.id.as_bytes(),
                    &node.encode(),
                    ttl_ms.as_bytes(),
                    member.as_bytes(),
                    keys.node_channel().as_bytes(),
                ],
                &format!("register node `{}`", node.id),
            )
            .await?;
        Ok(lease)
    }

    async fn keep_alive(&self, lease: &Lease) -> Result<()> {
        if lease.ttl.is_zero() {
            return Err(Error::InvalidArgument(format!(
                "node `{}`: the lease TTL must be non-zero",
                lease.node_id
            )));
        }
        let ttl_ms = millis(lease.ttl).to_string();
        let renewed: i64 = self
            .core
            .eval(
                &scripts::KEEP_ALIVE,
                &[&self.core.keys.node(&lease.node_id)],
                &[lease.id.as_bytes(), ttl_ms.as_bytes()],
                &format!("keep-alive of node `{}`", lease.node_id),
            )
            .await?;
        if renewed == 1 {
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
                "node record `{}` does not match the lease of node `{}`",
                node.id, lease.node_id
            )));
        }
        let written: i64 = self
            .core
            .eval(
                &scripts::UPDATE_NODE,
                &[
                    &self.core.keys.node(&node.id),
                    &self.core.keys.node_version(),
                ],
                &[
                    lease.id.as_bytes(),
                    &node.encode(),
                    self.core.keys.node_channel().as_bytes(),
                ],
                &format!("update node `{}`", node.id),
            )
            .await?;
        if written == 1 {
            Ok(())
        } else {
            Err(Error::LeaseLost {
                node: node.id.clone(),
            })
        }
    }

    async fn unregister(&self, lease: &Lease) -> Result<()> {
        let keys = &self.core.keys;
        let member = crate::keys::escape(&lease.node_id);
        let _: i64 = self
            .core
            .eval(
                &scripts::UNREGISTER,
                &[
                    &keys.node(&lease.node_id),
                    &keys.node_index(),
                    &keys.node_version(),
                ],
                &[
                    lease.id.as_bytes(),
                    member.as_bytes(),
                    keys.node_channel().as_bytes(),
                    lease.node_id.as_bytes(),
                ],
                &format!("unregister node `{}`", lease.node_id),
            )
            .await?;
        Ok(())
    }

    async fn list_nodes(&self) -> Result<Listing<Node>> {
        self.core.list_nodes().await
    }

    async fn watch_nodes(&self) -> Result<WatchStream<NodeEvent>> {
        watch::watch_nodes(self).await
    }

    async fn put_task(&self, meta: &TaskMeta, mode: PutMode) -> Result<()> {
        validate_task_name(&meta.name)?;
        let encoded = meta.encode();
        check_value_size(meta, encoded.len(), &self.capabilities())?;
        let keys = &self.core.keys;
        let name = &meta.name;
        let mode_arg: &[u8] = match mode {
            PutMode::CreateOnly => b"create",
            PutMode::Update => b"update",
            PutMode::Force => b"force",
        };
        let (since_s, since_ns) = meta.created_at.map(since_fields).unwrap_or_default();
        let (scale, offset) = keys.token_scale(name);
        let (scale, offset) = (scale.to_string(), offset.to_string());
        let answer: String = self
            .core
            .eval(
                &scripts::PUT_TASK,
                &[
                    &keys.task(name),
                    &keys.tombstone(name),
                    &keys.life(name),
                    &keys.sequence(name),
                ],
                &[
                    mode_arg,
                    &encoded,
                    keys.task_channel().as_bytes(),
                    name.as_bytes(),
                    since_s.as_bytes(),
                    since_ns.as_bytes(),
                    scale.as_bytes(),
                    offset.as_bytes(),
                ],
                &format!("put task `{name}`"),
            )
            .await?;
        match answer.as_str() {
            "ok" => Ok(()),
            "exists" => Err(Error::AlreadyExists { name: name.clone() }),
            "tombstoned" => Err(Error::Tombstoned { name: name.clone() }),
            "notfound" => Err(Error::task_not_found(name.clone())),
            "nosince" => Err(Error::InvalidArgument(format!(
                "task `{name}`: a create-only or force write needs `created_at` (its live-since)"
            ))),
            other => Err(Error::Backend {
                backend: BACKEND,
                message: format!("put task `{name}`: unexpected script answer `{other}`"),
                source: None,
            }),
        }
    }

    async fn get_task(&self, name: &str) -> Result<Option<TaskMeta>> {
        validate_task_name(name)?;
        let key = self.core.keys.task(name);
        let mut conn = self.core.conn("get task").await?;
        let bytes: Option<Vec<u8>> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .map_err(|e| read_error(e, &key, &format!("get task `{name}`")))?;
        bytes.map(|b| decode_task(name, &key, &b)).transpose()
    }

    async fn list_tasks(&self) -> Result<Listing<TaskMeta>> {
        self.core
            .list_records(&self.core.keys.task_prefix(), decode_task)
            .await
    }

    async fn watch_tasks(&self) -> Result<WatchStream<TaskMetaEvent>> {
        watch::watch_tasks(self).await
    }

    async fn mark_deleted(&self, name: &str, at: DateTime<Utc>) -> Result<()> {
        validate_task_name(name)?;
        let tomb = Tombstone {
            name: name.to_string(),
            deleted_at: at,
        };
        let _: i64 = self
            .core
            .eval(
                &scripts::MARK_DELETED,
                &[&self.core.keys.tombstone(name)],
                &[&tomb.encode(), self.core.keys.task_channel().as_bytes()],
                &format!("mark task `{name}` deleted"),
            )
            .await?;
        Ok(())
    }

    async fn get_tombstone(&self, name: &str) -> Result<Option<Tombstone>> {
        validate_task_name(name)?;
        let key = self.core.keys.tombstone(name);
        let mut conn = self.core.conn("get tombstone").await?;
        let bytes: Option<Vec<u8>> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .map_err(|e| read_error(e, &key, &format!("get tombstone `{name}`")))?;
        bytes.map(|b| decode_tombstone(name, &key, &b)).transpose()
    }

    async fn list_tombstones(&self) -> Result<Listing<Tombstone>> {
        self.core
            .list_records(&self.core.keys.tombstone_prefix(), decode_tombstone)
            .await
    }

    async fn clear_tombstone(&self, name: &str) -> Result<()> {
        validate_task_name(name)?;
        let cleared: i64 = self
            .core
            .eval(
                &scripts::CLEAR_TOMBSTONE,
                &[&self.core.keys.tombstone(name)],
                &[self.core.keys.task_channel().as_bytes(), name.as_bytes()],
                &format!("clear tombstone `{name}`"),
            )
            .await?;
        if cleared == 1 {
            Ok(())
        } else {
            Err(Error::NotFound {
                what: "tombstone",
                name: name.to_string(),
            })
        }
    }

    async fn cleanup_task(&self, name: &str) -> Result<()> {
        validate_task_name(name)?;
        let keys = &self.core.keys;
        let _: i64 = self
            .core
            .eval(
                &scripts::CLEANUP_TASK,
                &[&keys.task(name), &keys.tombstone(name), &keys.life(name)],
                &[keys.task_channel().as_bytes(), name.as_bytes()],
                &format!("clean up task `{name}`"),
            )
            .await?;
        Ok(())
    }

    async fn cleanup_all(&self) -> Result<()> {
        let keys = &self.core.keys;
        let mut conn = self.core.conn("cleanup all").await?;
        let pattern = format!("{}*", keys.prefix());
        let masters = self.core.masters(&mut conn).await?;
        let targets: Vec<Option<&(String, u16)>> = if masters.is_empty() {
            vec![None]
        } else {
            masters.iter().map(Some).collect()
        };
        let mut removed = 0usize;
        for at in targets {
            let mut cursor: u64 = 0;
            loop {
                let (next, batch) = Core::scan_step(&mut conn, at, cursor, &pattern).await?;
                let doomed: Vec<&Vec<u8>> = batch.iter().filter(|k| keys.is_task_data(k)).collect();
                if !doomed.is_empty() {
                    // On a cluster the connection splits a multi-key `UNLINK` by slot.
                    let _: i64 = redis::cmd("UNLINK")
                        .arg(&doomed)
                        .query_async(&mut conn)
                        .await
                        .map_err(|e| from_redis(e, "cleanup all: unlink"))?;
                    removed += doomed.len();
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        let _: i64 = redis::cmd("PUBLISH")
            .arg(keys.task_channel())
            .arg(events::TASKS_RESYNC)
            .query_async(&mut conn)
            .await
            .map_err(|e| from_redis(e, "cleanup all: publish"))?;
        tracing::debug!(namespace = %self.namespace(), removed, "redis cleanup_all");
        Ok(())
    }

    async fn ensure_lives(&self, names: &[(String, DateTime<Utc>)]) -> Result<Vec<Life>> {
        for (name, _) in names {
            validate_task_name(name)?;
        }
        // One call per bucket (all of them in the standalone layout) and per MAX_PER_SCRIPT.
        let keys = &self.core.keys;
        let groups = split_batch(names.len(), |i| keys.bucket(&names[i].0));
        let chunks: Vec<Vec<(String, DateTime<Utc>)>> = groups
            .iter()
            .map(|group| group.iter().map(|&i| names[i].clone()).collect())
            .collect();
        let calls = chunks.iter().map(|chunk| self.ensure_lives_once(chunk));
        let mut lives: Vec<Option<Life>> = vec![None; names.len()];
        for (group, answer) in groups.iter().zip(futures::future::join_all(calls).await) {
            for (&i, life) in group.iter().zip(answer?) {
                lives[i] = Some(life);
            }
        }
        lives
            .into_iter()
            .map(|l| l.ok_or_else(|| Error::unavailable("redis: ensure lives: not decided")))
            .collect()
    }

    async fn restart_life(&self, name: &str, at: DateTime<Utc>) -> Result<Life> {
        validate_task_name(name)?;
        let keys = &self.core.keys;
        let (since_s, since_ns) = since_fields(at);
        let (scale, offset) = keys.token_scale(name);
        let (scale, offset) = (scale.to_string(), offset.to_string());
        let generation: i64 = self
            .core
            .eval(
                &scripts::RESTART_LIFE,
                &[
                    &keys.sequence(name),
                    &keys.tombstone(name),
                    &keys.life(name),
                ],
                &[
                    since_s.as_bytes(),
                    since_ns.as_bytes(),
                    keys.task_channel().as_bytes(),
                    name.as_bytes(),
                    scale.as_bytes(),
                    offset.as_bytes(),
                ],
                &format!("restart the life of `{name}`"),
            )
            .await?;
        let generation = u64::try_from(generation)
            .ok()
            .filter(|g| *g > 0)
            .ok_or_else(|| Error::Corrupt {
                key: keys.sequence(name),
                reason: format!("the sequence gave generation {generation}"),
            })?;
        Ok(Life::new(generation, at))
    }

    async fn claim(
        &self,
        claimant: &Claimant,
        requests: &[ClaimRequest],
    ) -> Result<Vec<ClaimOutcome>> {
        check_claims(requests)?;
        // Fires with a name that cannot be a key are answered alone; the others are decided.
        let mut outcomes: Vec<Option<ClaimOutcome>> = requests
            .iter()
            .map(|r| {
                validate_task_name(&r.fire.task)
                    .err()
                    .map(ClaimOutcome::Failed)
            })
            .collect();
        let valid: Vec<(usize, &ClaimRequest)> = requests
            .iter()
            .enumerate()
            .filter(|(i, _)| outcomes[*i].is_none())
            .collect();
        // One call per bucket (all of them in the standalone layout: one hash slot each in the
        // cluster layout) and per MAX_PER_SCRIPT fires, all sent at once.
        let keys = &self.core.keys;
        let chunks: Vec<Vec<(usize, &ClaimRequest)>> =
            split_batch(valid.len(), |i| keys.bucket(&valid[i].1.fire.task))
                .into_iter()
                .map(|group| group.into_iter().map(|i| valid[i]).collect())
                .collect();
        let calls = chunks.iter().map(|chunk| self.claim_once(claimant, chunk));
        let answers = futures::future::join_all(calls).await;
        let mut first_error = None;
        let mut decided = 0usize;
        for (chunk, answer) in chunks.iter().zip(answers) {
            match answer {
                Ok(answer) => {
                    decided += chunk.len();
                    for ((i, _), outcome) in chunk.iter().zip(answer) {
                        outcomes[*i] = Some(outcome);
                    }
                }
                Err(e) => {
                    for (i, _) in chunk {
                        outcomes[*i] = Some(ClaimOutcome::Failed(copy_error(&e)));
                    }
                    first_error.get_or_insert(e);
                }
            }
        }
        // Nothing could be decided: the batch failed as a whole.
        if let Some(e) = first_error {
            if decided == 0 {
                return Err(e);
            }
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.unwrap_or(ClaimOutcome::Failed(Error::unavailable("not decided"))))
            .collect())
    }

    async fn list_claims(&self, task: &str) -> Result<Listing<Claim>> {
        validate_task_name(task)?;
        let keys = &self.core.keys;
        let prefix = keys.claim_prefix(task);
        let values: Vec<Value> = self
            .core
            .eval(
                &scripts::LIST_CLAIMS,
                &[&keys.claim_index(task)],
                &[prefix.as_bytes()],
                &format!("list claims of `{task}`"),
            )
            .await?;
        let mut listing = Listing::default();
        let mut values = values.into_iter();
        while let (Some(member), Some(value)) = (values.next(), values.next()) {
            let member = String::from_utf8_lossy(&as_bytes(member)).into_owned();
            let key = format!("{prefix}{member}");
            let instant = member
                .parse::<i64>()
                .ok()
                .and_then(DateTime::<Utc>::from_timestamp_millis);
            match (instant, parse_claim(&as_bytes(value))) {
                (Some(instant), Some(stored)) => listing.items.push(Claim {
                    fire: FireKey::new(task, instant),
                    node_id: stored.node_id,
                    epoch: stored.epoch,
                    generation: stored.generation,
                    token: stored.token,
                }),
                _ => listing.corrupt.push(CorruptEntry {
                    key,
                    reason: "not a claim (`<token>:<generation>:<epoch>:<node id>`)".into(),
                }),
            }
        }
        Ok(listing)
    }

    async fn acquire_slot(&self, lease: &Lease, fire: &FireKey) -> Result<SlotOutcome> {
        check_slot(lease, fire)?;
        let keys = &self.core.keys;
        let slot = keys.slot(&fire.task);
        let record = SlotRecord::new(lease, fire).encode();
        let context = format!("take the running slot of `{}` for {fire}", fire.task);
        let answer: Value = self
            .core
            .eval(
                &scripts::ACQUIRE_SLOT,
                &[&keys.node(&lease.node_id), &slot],
                &[lease.id.as_bytes(), &record],
                &context,
            )
            .await?;
        slot_outcome(answer, &slot, lease, &context)
    }

    async fn release_slot(&self, lease: &Lease, fire: &FireKey) -> Result<()> {
        check_slot(lease, fire)?;
        let record = SlotRecord::new(lease, fire).encode();
        let _: i64 = self
            .core
            .eval(
                &scripts::RELEASE_SLOT,
                &[&self.core.keys.slot(&fire.task)],
                &[&record],
                &format!("release the running slot of `{}` for {fire}", fire.task),
            )
            .await?;
        Ok(())
    }

    async fn put_records(&self, kind: RecordKind, records: &[(String, Vec<u8>)]) -> Result<()> {
        check_records(kind, records, &self.capabilities())?;
        if records.is_empty() {
            return Ok(());
        }
        let key = self.core.keys.records(kind);
        let context = format!("put {} {kind} record(s)", records.len());
        // One `HSET` with every field: one round trip, applied atomically by the server.
        let mut cmd = redis::cmd("HSET");
        cmd.arg(&key);
        for (field, value) in records {
            cmd.arg(field.as_bytes()).arg(value.as_slice());
        }
        let mut conn = self.core.conn(&context).await?;
        let _: i64 = cmd
            .query_async(&mut conn)
            .await
            .map_err(|e| record_error(e, &key, &context))?;
        Ok(())
    }

    async fn get_record(&self, kind: RecordKind, key: &str) -> Result<Option<Vec<u8>>> {
        check_record_key(kind, key)?;
        let hash = self.core.keys.records(kind);
        let context = format!("get {kind} record `{key}`");
        let mut conn = self.core.conn(&context).await?;
        let value: Option<Vec<u8>> = redis::cmd("HGET")
            .arg(&hash)
            .arg(key.as_bytes())
            .query_async(&mut conn)
            .await
            .map_err(|e| record_error(e, &hash, &context))?;
        if let Some(bytes) = &value {
            check_stored_size(&format!("{hash} {key}"), bytes.len(), MAX_VALUE_BYTES)?;
        }
        Ok(value)
    }

    async fn list_records(&self, kind: RecordKind) -> Result<Vec<(String, Vec<u8>)>> {
        let hash = self.core.keys.records(kind);
        let context = format!("list {kind} records");
        let mut conn = self.core.conn(&context).await?;
        // `HSCAN` rather than `HGETALL`, so a large hash never blocks the server in one reply;
        // a field may come more than once, the map keeps one.
        let mut out: std::collections::HashMap<String, Vec<u8>> = std::collections::HashMap::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, pairs): (u64, Vec<(Vec<u8>, Vec<u8>)>) = redis::cmd("HSCAN")
                .arg(&hash)
                .arg(cursor)
                .arg("COUNT")
                .arg(BATCH)
                .query_async(&mut conn)
                .await
                .map_err(|e| record_error(e, &hash, &context))?;
            for (field, value) in pairs {
                match String::from_utf8(field) {
                    Ok(field) if value.len() > MAX_VALUE_BYTES => tracing::warn!(
                        key = %hash,
                        field = %field,
                        bytes = value.len(),
                        "skipping a record larger than the registry stores"
                    ),
                    Ok(field) => {
                        out.insert(field, value);
                    }
                    Err(e) => tracing::warn!(
                        key = %hash,
                        field = %String::from_utf8_lossy(e.as_bytes()),
                        "skipping a record whose key is not UTF-8"
                    ),
                }
            }
            if next == 0 {
                return Ok(out.into_iter().collect());
            }
            cursor = next;
        }
    }

    async fn delete_record(&self, kind: RecordKind, key: &str) -> Result<bool> {
        check_record_key(kind, key)?;
        let hash = self.core.keys.records(kind);
        let context = format!("delete {kind} record `{key}`");
        let mut conn = self.core.conn(&context).await?;
        // `HDEL` answers how many fields it removed: exactly one concurrent caller sees 1.
        let removed: i64 = redis::cmd("HDEL")
            .arg(&hash)
            .arg(key.as_bytes())
            .query_async(&mut conn)
            .await
            .map_err(|e| record_error(e, &hash, &context))?;
        Ok(removed == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn script_answers_become_outcomes() {
        let key = || "k".to_string();
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let answer = |items: Vec<Value>| claim_outcome(Value::Array(items), key);
        assert_eq!(
            answer(vec![bulk("W"), Value::Int(7)]),
            ClaimOutcome::Won { token: 7 }
        );
        assert_eq!(
            answer(vec![bulk("E"), Value::Int(7)]),
            ClaimOutcome::WonEarlier { token: 7 }
        );
        assert_eq!(
            answer(vec![bulk("L"), bulk("n 1")]),
            ClaimOutcome::Lost {
                holder: Some("n 1".into())
            }
        );
        assert_eq!(answer(vec![bulk("T")]), ClaimOutcome::Tombstoned);
        assert_eq!(answer(vec![bulk("D")]), ClaimOutcome::Late);
        assert_eq!(
            answer(vec![bulk("S")]),
            ClaimOutcome::Superseded { current: None }
        );
        assert_eq!(
            answer(vec![bulk("S"), Value::Int(3)]),
            ClaimOutcome::Superseded { current: Some(3) }
        );
        assert!(matches!(
            answer(vec![bulk("F"), bulk("bad")]),
            ClaimOutcome::Failed(Error::Corrupt { .. })
        ));
        for bad in [
            Value::Nil,
            Value::Array(vec![]),
            Value::Array(vec![bulk("W")]),
            Value::Array(vec![bulk("W"), Value::Int(0)]),
            Value::Array(vec![bulk("?")]),
        ] {
            assert!(matches!(
                claim_outcome(bad, key),
                ClaimOutcome::Failed(Error::Backend { .. })
            ));
        }
    }

    #[test]
    fn batches_split_by_bucket_then_size() {
        // Standalone: one bucket, cut by size only, order kept.
        let one = split_batch(2500, |_| 0);
        assert_eq!(
            one.iter().map(Vec::len).collect::<Vec<_>>(),
            [1000, 1000, 500]
        );
        assert_eq!(one.concat(), (0..2500).collect::<Vec<_>>());
        // Cluster: every call holds one bucket; every index is in exactly one call.
        let bucket = |i: usize| u16::try_from(i % 3).expect("small");
        let calls = split_batch(3001, bucket);
        assert_eq!(calls.iter().map(Vec::len).sum::<usize>(), 3001);
        for call in &calls {
            assert!(call.len() <= MAX_PER_SCRIPT && !call.is_empty());
            assert!(
                call.iter().all(|&i| bucket(i) == bucket(call[0])),
                "{call:?}"
            );
        }
        assert!(split_batch(0, bucket).is_empty());
    }

    #[test]
    fn stored_claims_parse() {
        let c = parse_claim(b"12:3:4:node:with:colons").expect("a claim");
        assert_eq!(
            (c.token, c.generation, c.epoch, c.node_id.as_str()),
            (12, 3, 4, "node:with:colons")
        );
        for bad in [
            &b""[..],
            b"0:1:1:n",
            b"1:1:1:",
            b"x:1:1:n",
            b"1:1:n",
            b"\xff",
        ] {
            assert!(parse_claim(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn live_since_round_trips_through_its_fields() {
        for at in [
            DateTime::<Utc>::UNIX_EPOCH,
            Utc.timestamp_opt(1_700_000_000, 123_456_789).unwrap(),
            Utc.timestamp_opt(-5, 1).unwrap(),
        ] {
            let (s, ns) = since_fields(at);
            let back = since_from_fields(
                &Value::BulkString(s.into_bytes()),
                &Value::BulkString(ns.into_bytes()),
            );
            assert_eq!(back, Some(at));
        }
        assert_eq!(
            since_from_fields(&Value::BulkString(b"x".to_vec()), &Value::Int(0)),
            None
        );
    }

    #[test]
    fn millis_rounds_up_and_never_returns_zero() {
        assert_eq!(millis(Duration::from_nanos(1)), 1);
        assert_eq!(millis(Duration::from_micros(1500)), 2);
        assert_eq!(millis(Duration::from_secs(3)), 3000);
        assert_eq!(millis(Duration::MAX), MAX_TTL_MS);
    }

    #[test]
    fn mismatched_records_are_corrupt() {
        let bytes = TaskMeta::new("other", "@hourly").encode();
        assert!(matches!(
            decode_task("mine", "k", &bytes),
            Err(Error::Corrupt { .. })
        ));
        assert!(decode_task("other", "k", &bytes).is_ok());
    }
}
