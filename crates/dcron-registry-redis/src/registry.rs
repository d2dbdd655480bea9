//! [`RedisRegistry`]: the `Registry` implementation.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use dcron_core::{
    check_record_key, check_records, check_value_size, validate_task_name, Capabilities, Claim,
    ClaimOutcome, CorruptEntry, Error, FireKey, Lease, Listing, Node, NodeEvent, PutMode,
    RecordKind, Registry, Result, TaskMeta, TaskMetaEvent, Tombstone, WatchStream,
};
use deadpool_redis::{Connection, Pool, Runtime};
use redis::{AsyncConnectionConfig, Client, FromRedisValue, IntoConnectionInfo, Script};

use crate::config::{redact_url, RedisRegistryConfig, DEFAULT_URL, TEST_URL_ENV};
use crate::error::{from_pool, from_redis};
use crate::keys::{unescape, RedisKeys};
use crate::{events, scripts, watch, BACKEND};

/// The largest task record stored, in bytes (Redis strings could hold 512 MB; a schedule
/// record that large is a mistake, and every node reads every record on each poll).
pub const MAX_VALUE_BYTES: usize = 4 * 1024 * 1024;

/// How many keys one `SCAN` step asks for, and how many values one `MGET`/`UNLINK` carries.
const BATCH: usize = 1000;

/// A dcron registry on a Redis server (standalone or a primary; not Redis Cluster).
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

/// What the registry and its watchers share.
pub(crate) struct Core {
    pub(crate) pool: Pool,
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
                pool,
                client,
                keys,
                config,
            }),
            _shutdown: Arc::new(shutdown),
            shutdown_rx,
        })
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

impl Core {
    pub(crate) async fn conn(&self, context: &str) -> Result<Connection> {
        self.pool.get().await.map_err(|e| from_pool(e, context))
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

    pub(crate) async fn list_nodes(&self) -> Result<Listing<Node>> {
        let node_prefix = self.keys.node_prefix();
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = self
            .eval(
                &scripts::LIST_NODES,
                &[&self.keys.node_index()],
                &[node_prefix.as_bytes()],
                "list nodes",
            )
            .await?;
        let mut listing = Listing::default();
        for (member, bytes) in pairs {
            let key = format!("{node_prefix}{}", String::from_utf8_lossy(&member));
            match Node::decode(&key, &bytes) {
                Ok(node) => listing.items.push(node),
                Err(e) => listing.corrupt.push(corrupt_entry(key, e)),
            }
        }
        Ok(listing)
    }

    /// Every key matching `pattern`, each once, with `SCAN` cursors followed until they wrap.
    /// Keys are bytes: a key someone wrote that is not UTF-8 must not fail the whole scan.
    async fn scan(&self, conn: &mut Connection, pattern: &str) -> Result<Vec<Vec<u8>>> {
        let mut seen = HashSet::new();
        let mut keys = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(BATCH)
                .query_async(conn)
                .await
                .map_err(|e| from_redis(e, &format!("scan {pattern}")))?;
            for key in batch {
                // SCAN may return a key more than once.
                if seen.insert(key.clone()) {
                    keys.push(key);
                }
            }
            if next == 0 {
                return Ok(keys);
            }
            cursor = next;
        }
    }

    /// Reads the string values of `keys` (`None` for a key gone since, or not a string).
    async fn mget(&self, conn: &mut Connection, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
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
        conn: &mut Connection,
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
            let decoded = match unescape(&key[prefix.len()..]) {
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
    let tomb = Tombstone::decode(key, bytes)?;
    if tomb.name != name {
        return Err(Error::Corrupt {
            key: key.to_string(),
            reason: format!("the tombstone names task `{}`", tomb.name),
        });
    }
    Ok(tomb)
}

/// The stored claim JSON up to and including `"token":`; the claim script appends the token
/// and the closing brace. Built from the same serde types as [`Claim`], so it decodes as one.
fn claim_prefix(fire: &FireKey, node_id: &str) -> Result<Vec<u8>> {
    let fire =
        serde_json::to_vec(fire).map_err(|e| Error::backend(BACKEND, "encoding a claim", e))?;
    let node =
        serde_json::to_vec(node_id).map_err(|e| Error::backend(BACKEND, "encoding a claim", e))?;
    let mut out = Vec::with_capacity(fire.len() + node.len() + 32);
    out.extend_from_slice(b"{\"fire\":");
    out.extend_from_slice(&fire);
    out.extend_from_slice(b",\"node_id\":");
    out.extend_from_slice(&node);
    out.extend_from_slice(b",\"token\":");
    Ok(out)
}

#[async_trait]
impl Registry for RedisRegistry {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::with_max_value_bytes(MAX_VALUE_BYTES).with_records()
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
                &[&keys.node(&node.id), &keys.node_index()],
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
                &[&self.core.keys.node(&node.id)],
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
                &[&keys.node(&lease.node_id), &keys.node_index()],
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
        let answer: String = self
            .core
            .eval(
                &scripts::PUT_TASK,
                &[
                    &keys.task(name),
                    &keys.tombstone(name),
                    &keys.claim_index(name),
                ],
                &[
                    mode_arg,
                    &encoded,
                    keys.task_channel().as_bytes(),
                    keys.claim_prefix(name).as_bytes(),
                    name.as_bytes(),
                ],
                &format!("put task `{name}`"),
            )
            .await?;
        match answer.as_str() {
            "ok" => Ok(()),
            "exists" => Err(Error::AlreadyExists { name: name.clone() }),
            "tombstoned" => Err(Error::Tombstoned { name: name.clone() }),
            "notfound" => Err(Error::task_not_found(name.clone())),
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
                &[
                    &keys.task(name),
                    &keys.tombstone(name),
                    &keys.claim_index(name),
                ],
                &[
                    keys.task_channel().as_bytes(),
                    keys.claim_prefix(name).as_bytes(),
                    name.as_bytes(),
                ],
                &format!("clean up task `{name}`"),
            )
            .await?;
        Ok(())
    }

    async fn cleanup_all(&self) -> Result<()> {
        let keys = &self.core.keys;
        let mut conn = self.core.conn("cleanup all").await?;
        let pattern = format!("{}*", keys.prefix());
        let mut cursor: u64 = 0;
        let mut removed = 0usize;
        loop {
            let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(BATCH)
                .query_async(&mut conn)
                .await
                .map_err(|e| from_redis(e, "cleanup all: scan"))?;
            let doomed: Vec<&Vec<u8>> = batch.iter().filter(|k| keys.is_task_data(k)).collect();
            if !doomed.is_empty() {
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
        let _: i64 = redis::cmd("PUBLISH")
            .arg(keys.task_channel())
            .arg(events::TASKS_RESYNC)
            .query_async(&mut conn)
            .await
            .map_err(|e| from_redis(e, "cleanup all: publish"))?;
        tracing::debug!(namespace = %self.namespace(), removed, "redis cleanup_all");
        Ok(())
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
        if retention.is_zero() {
            return Err(Error::InvalidArgument(
                "claim retention must be non-zero".into(),
            ));
        }
        let keys = &self.core.keys;
        let token_key = keys.token();
        let mut key_list: Vec<String> = Vec::with_capacity(fires.len() * 3);
        let mut arg_list: Vec<Vec<u8>> = Vec::with_capacity(fires.len() * 2 + 1);
        arg_list.push(millis(retention).to_string().into_bytes());
        for fire in fires {
            validate_task_name(&fire.task)?;
            let instant = fire.instant_millis().to_string();
            key_list.push(keys.tombstone(&fire.task));
            key_list.push(format!("{}{instant}", keys.claim_prefix(&fire.task)));
            key_list.push(keys.claim_index(&fire.task));
            arg_list.push(claim_prefix(fire, node_id)?);
            arg_list.push(instant.into_bytes());
        }
        let mut key_refs: Vec<&str> = Vec::with_capacity(key_list.len() + 1);
        key_refs.push(&token_key);
        key_refs.extend(key_list.iter().map(String::as_str));
        let arg_refs: Vec<&[u8]> = arg_list.iter().map(Vec::as_slice).collect();
        let context = format!("claim {} fire(s) for node `{node_id}`", fires.len());
        let answers: Vec<i64> = self
            .core
            .eval(&scripts::CLAIM, &key_refs, &arg_refs, &context)
            .await?;
        if answers.len() != fires.len() {
            return Err(Error::Backend {
                backend: BACKEND,
                message: format!("{context}: {} answers", answers.len()),
                source: None,
            });
        }
        Ok(answers
            .into_iter()
            .map(|a| match a {
                -1 => ClaimOutcome::Tombstoned,
                token if token > 0 => ClaimOutcome::Won {
                    token: token.unsigned_abs(),
                },
                _ => ClaimOutcome::Lost,
            })
            .collect())
    }

    async fn list_claims(&self, task: &str) -> Result<Listing<Claim>> {
        validate_task_name(task)?;
        let keys = &self.core.keys;
        let prefix = keys.claim_prefix(task);
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = self
            .core
            .eval(
                &scripts::LIST_CLAIMS,
                &[&keys.claim_index(task)],
                &[prefix.as_bytes()],
                &format!("list claims of `{task}`"),
            )
            .await?;
        let mut listing = Listing::default();
        for (member, bytes) in pairs {
            let key = format!("{prefix}{}", String::from_utf8_lossy(&member));
            match Claim::decode(&key, &bytes) {
                Ok(claim) => listing.items.push(claim),
                Err(e) => listing.corrupt.push(corrupt_entry(key, e)),
            }
        }
        Ok(listing)
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
        redis::cmd("HGET")
            .arg(&hash)
            .arg(key.as_bytes())
            .query_async(&mut conn)
            .await
            .map_err(|e| record_error(e, &hash, &context))
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
    fn claim_prefix_plus_token_decodes_as_a_claim() {
        let fire = FireKey::new(
            "a:\"quoted\" ünï",
            Utc.timestamp_millis_opt(1_700_000_000_123).unwrap(),
        );
        let mut bytes = claim_prefix(&fire, "node \"1\"").expect("encodes");
        bytes.extend_from_slice(b"42}");
        let claim = Claim::decode("k", &bytes).expect("decodes");
        assert_eq!(
            claim,
            Claim {
                fire,
                node_id: "node \"1\"".into(),
                token: 42
            }
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
