//! [`PostgresRegistry`]: the [`Registry`] implementation.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use dcron_core::backend::check_stored_size;
use dcron_core::{
    check_claims, check_record_key, check_records, check_registration, check_slot,
    check_value_size, validate_task_name, Capabilities, Claim, ClaimOutcome, ClaimRequest,
    Claimant, CorruptEntry, Error, FireKey, Lease, Life, Listing, Node, NodeEvent, PutMode,
    RecordKind, Registry, Result, SlotOutcome, TaskMeta, TaskMetaEvent, Tombstone, WatchStream,
};
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio::time::Instant;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::config::{PostgresRegistryConfig, Resolved, ENV_TEST_URL};
use crate::error::{corrupt, map_pg, map_pool, timed_out, BACKEND};
use crate::schema::{self, render};
use crate::sql::Statements;
use crate::time::{duration_micros, to_pg_time, to_pg_time_ceil};
use crate::tls::{self, Tls};
use crate::watch;

/// The largest encoded task record or record value stored: 1 MiB (every node reads every task
/// record on each poll; PostgreSQL itself would take up to 1 GB).
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;

/// The most fires decided by one statement; larger batches are split (invisibly to the caller).
pub const CLAIM_CHUNK: usize = 2000;

/// How many expired claims one purge statement removes.
pub const PURGE_BATCH: i64 = 1000;

/// Above this many removed records and tombstones, `cleanup_all` tells watchers to list again
/// (one `Resync`) instead of sending one event each.
pub const CLEANUP_EVENT_LIMIT: i32 = 1000;

/// How often at most one handle purges the expired claims of its namespace.
const PURGE_INTERVAL: Duration = Duration::from_secs(1);

/// A [`Registry`] on a PostgreSQL database, through a `deadpool-postgres` pool.
///
/// Clones share the pool. Every decision is taken by the server inside one transaction (a
/// PL/pgSQL function or a single statement) and judged by the server's clock: node leases
/// expire at `now() + ttl` on the server, claims are refused past their deadline by
/// `clock_timestamp()` on the server. See the crate documentation for the schema and why each
/// write is atomic.
///
/// ```no_run
/// # async fn demo() -> dcron_core::Result<()> {
/// use dcron_core::Registry;
/// use dcron_registry_postgres::PostgresRegistryConfig;
///
/// let registry = PostgresRegistryConfig::new("postgres://dcron@127.0.0.1:5432/app")
///     .namespace("billing")
///     .connect()
///     .await?;
/// println!("{} nodes", registry.list_nodes().await?.items.len());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct PostgresRegistry {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) pool: Pool,
    pub(crate) namespace: String,
    pub(crate) schema: String,
    pub(crate) sql: Statements,
    pub(crate) resolved: Resolved,
    pub(crate) tls: Tls,
    pub(crate) pg: tokio_postgres::Config,
    pub(crate) command_timeout: Duration,
    pub(crate) node_check_interval: Duration,
    /// When this handle last purged expired claims (`None`: never).
    last_purge: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for PostgresRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresRegistry")
            .field("server", &self.inner.resolved.display)
            .field("schema", &self.inner.schema)
            .field("namespace", &self.inner.namespace)
            .finish()
    }
}

impl PostgresRegistry {
    /// A builder for the connection string `conninfo` (see [`PostgresRegistryConfig::new`]).
    pub fn builder(conninfo: impl Into<String>) -> PostgresRegistryConfig {
        PostgresRegistryConfig::new(conninfo)
    }

    /// The test server's URL: `DCRON_TEST_POSTGRES_URL`, or
    /// `postgres://postgres@127.0.0.1:5432/postgres` when unset.
    pub fn env_url() -> String {
        std::env::var(ENV_TEST_URL)
            .ok()
            .filter(|u| !u.trim().is_empty())
            .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
    }

    /// Connects with `config`: builds the pool, checks that the server answers and creates or
    /// migrates the schema.
    ///
    /// # Errors
    /// As [`PostgresRegistryConfig::connect`].
    pub async fn connect(config: PostgresRegistryConfig) -> Result<Self> {
        let resolved = config.resolve()?;
        let (ssl_mode, tls) = tls::connector(resolved.ssl_mode, resolved.root_cert.as_deref())?;
        let mut pg = resolved.pg.clone();
        pg.ssl_mode(ssl_mode);
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &tls {
            Tls::None => Manager::from_config(pg.clone(), tokio_postgres::NoTls, manager_config),
            Tls::Rustls(connector) => {
                Manager::from_config(pg.clone(), connector.clone(), manager_config)
            }
        };
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(config.command_timeout))
            .create_timeout(Some(config.connect_timeout))
            .recycle_timeout(Some(config.connect_timeout))
            .build()
            .map_err(|e| Error::InvalidArgument(format!("building the connection pool: {e}")))?;
        let schema_name = config.schema.clone();
        let registry = PostgresRegistry {
            inner: Arc::new(Inner {
                pool,
                namespace: config.namespace.clone(),
                sql: Statements::new(&schema_name),
                schema: schema_name,
                resolved,
                tls,
                pg,
                command_timeout: config.command_timeout,
                node_check_interval: config.node_check_interval,
                last_purge: Mutex::new(None),
            }),
        };
        let inner = registry.inner.clone();
        registry
            .timed("connect and migrate", async move {
                let mut client = inner.client("connect").await?;
                schema::migrate(&mut client, &inner.schema).await
            })
            .await?;
        Ok(registry)
    }

    /// The namespace this handle works in.
    pub fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    /// The schema holding the tables.
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// The server as a URL without its password, for logs.
    pub fn server(&self) -> &str {
        &self.inner.resolved.display
    }

    /// A handle on the same pool and schema under another namespace: it sees nothing of this
    /// one.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an empty namespace or one with a NUL character.
    pub fn with_namespace(&self, namespace: &str) -> Result<PostgresRegistry> {
        if namespace.is_empty() || namespace.contains('\0') {
            return Err(Error::InvalidArgument(
                "the namespace must be non-empty and free of NUL characters".into(),
            ));
        }
        let i = &self.inner;
        Ok(PostgresRegistry {
            inner: Arc::new(Inner {
                pool: i.pool.clone(),
                namespace: namespace.to_string(),
                schema: i.schema.clone(),
                sql: i.sql.clone(),
                resolved: i.resolved.clone(),
                tls: i.tls.clone(),
                pg: i.pg.clone(),
                command_timeout: i.command_timeout,
                node_check_interval: i.node_check_interval,
                last_purge: Mutex::new(None),
            }),
        })
    }

    /// Checks that the server answers (one `SELECT 1`).
    ///
    /// # Errors
    /// [`Error::Unavailable`] when it does not within the command timeout.
    pub async fn ping(&self) -> Result<()> {
        self.query("ping", "SELECT 1", &[]).await.map(|_| ())
    }

    /// Removes up to `limit` expired claims now, of any namespace in the schema (expired claims
    /// are invisible already; the registry also removes them by itself, in bounded batches,
    /// after claim calls). Answers how many were removed.
    ///
    /// # Errors
    /// The database's errors.
    pub async fn purge_expired_claims(&self, limit: i64) -> Result<u64> {
        purge_once(&self.inner, limit).await
    }

    /// Runs `fut` with the command timeout.
    async fn timed<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.inner.command_timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(timed_out(what, self.inner.command_timeout)),
        }
    }

    /// Runs one statement (prepared and cached per connection) and answers its rows.
    async fn query(
        &self,
        what: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>> {
        self.timed(what, self.inner.query(what, sql, params)).await
    }

    /// Purges expired claims in the background when this handle has not for a while.
    fn maybe_purge(&self) {
        let due = {
            let mut last = self
                .inner
                .last_purge
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let due = last.is_none_or(|t| now.saturating_duration_since(t) >= PURGE_INTERVAL);
            if due {
                *last = Some(now);
            }
            due
        };
        if due {
            let inner = self.inner.clone();
            tokio::spawn(async move {
                // Bounded batches, at most ten a round; the next round continues.
                for _ in 0..10 {
                    match purge_once(&inner, PURGE_BATCH).await {
                        Ok(n) if n >= u64::try_from(PURGE_BATCH).unwrap_or(u64::MAX) => {}
                        Ok(_) => break,
                        Err(e) => {
                            tracing::debug!(error = %e, "purging expired claims failed");
                            break;
                        }
                    }
                }
            });
        }
    }

    fn ns(&self) -> &str {
        &self.inner.namespace
    }

    async fn claim_chunk(
        &self,
        claimant: &Claimant,
        epoch: i64,
        requests: &[(usize, &ClaimRequest)],
        outcomes: &mut [Option<ClaimOutcome>],
    ) -> Result<()> {
        let mut tasks = Vec::with_capacity(requests.len());
        let mut instants = Vec::with_capacity(requests.len());
        let mut generations = Vec::with_capacity(requests.len());
        let mut deadlines = Vec::with_capacity(requests.len());
        let mut retentions = Vec::with_capacity(requests.len());
        for (_, r) in requests {
            tasks.push(r.fire.task.as_str());
            instants.push(r.fire.instant_millis());
            generations.push(i64::try_from(r.generation).unwrap_or(i64::MAX));
            deadlines.push(to_pg_time(r.deadline));
            retentions.push(duration_micros(r.retention));
        }
        let rows = self
            .query(
                "claim",
                &self.inner.sql.claim,
                &[
                    &self.ns(),
                    &claimant.node_id,
                    &epoch,
                    &tasks,
                    &instants,
                    &generations,
                    &deadlines,
                    &retentions,
                ],
            )
            .await?;
        if rows.len() != requests.len() {
            return Err(Error::Backend {
                backend: BACKEND,
                message: format!(
                    "claim answered {} outcomes for {} fires",
                    rows.len(),
                    requests.len()
                ),
                source: None,
            });
        }
        for (row, (slot, request)) in rows.iter().zip(requests) {
            outcomes[*slot] = Some(decode_outcome(row, &request.fire));
        }
        Ok(())
    }
}

impl Inner {
    /// A pooled connection, or `Unavailable`.
    pub(crate) async fn client(&self, what: &str) -> Result<Object> {
        self.pool.get().await.map_err(|e| map_pool(what, e))
    }

    pub(crate) async fn query(
        &self,
        what: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>> {
        let client = self.client(what).await?;
        let statement = client
            .prepare_cached(sql)
            .await
            .map_err(|e| map_pg(what, e))?;
        client
            .query(&statement, params)
            .await
            .map_err(|e| map_pg(what, e))
    }
}

async fn purge_once(inner: &Inner, limit: i64) -> Result<u64> {
    let client = inner.client("purge claims").await?;
    let statement = client
        .prepare_cached(&inner.sql.purge_claims)
        .await
        .map_err(|e| map_pg("purge claims", e))?;
    let params: [&(dyn ToSql + Sync); 1] = [&limit];
    let fut = client.execute(&statement, &params);
    match tokio::time::timeout(inner.command_timeout, fut).await {
        Ok(r) => r.map_err(|e| map_pg("purge claims", e)),
        Err(_) => Err(timed_out("purge claims", inner.command_timeout)),
    }
}

fn decode_outcome(row: &Row, fire: &FireKey) -> ClaimOutcome {
    let bad = |reason: String| ClaimOutcome::Failed(corrupt(format!("claim of {fire}"), reason));
    let outcome: Option<String> = match row.try_get(1) {
        Ok(o) => o,
        Err(e) => return bad(e.to_string()),
    };
    let token = || -> std::result::Result<u64, String> {
        let t: Option<i64> = row.try_get(2).map_err(|e| e.to_string())?;
        t.and_then(|t| u64::try_from(t).ok())
            .filter(|t| *t > 0)
            .ok_or_else(|| format!("bad token {t:?}"))
    };
    match outcome.as_deref() {
        Some("won") => match token() {
            Ok(token) => ClaimOutcome::Won { token },
            Err(e) => bad(e),
        },
        Some("won_earlier") => match token() {
            Ok(token) => ClaimOutcome::WonEarlier { token },
            Err(e) => bad(e),
        },
        Some("lost") => ClaimOutcome::Lost {
            holder: row.try_get::<_, Option<String>>(3).ok().flatten(),
        },
        Some("late") => ClaimOutcome::Late,
        Some("tombstoned") => ClaimOutcome::Tombstoned,
        Some("superseded") => ClaimOutcome::Superseded {
            current: row
                .try_get::<_, Option<i64>>(4)
                .ok()
                .flatten()
                .and_then(|g| u64::try_from(g).ok()),
        },
        Some("failed") => ClaimOutcome::Failed(Error::Backend {
            backend: BACKEND,
            message: format!("claim of {fire} was decided but not written"),
            source: None,
        }),
        other => bad(format!("unknown outcome {other:?}")),
    }
}

fn positive(key: &str, what: &str, v: i64) -> Result<u64> {
    u64::try_from(v).map_err(|_| corrupt(key, format!("negative {what} {v}")))
}

fn decode_life(key: &str, row: &Row, generation: usize, live_since: usize) -> Result<Life> {
    let g: i64 = row
        .try_get(generation)
        .map_err(|e| corrupt(key, e.to_string()))?;
    let at: DateTime<Utc> = row
        .try_get(live_since)
        .map_err(|e| corrupt(key, e.to_string()))?;
    Ok(Life::new(positive(key, "generation", g)?, at))
}

fn lease_lost(lease: &Lease) -> Error {
    Error::LeaseLost {
        node: lease.node_id.clone(),
    }
}

#[async_trait]
impl Registry for PostgresRegistry {
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

    // ----- membership -----

    async fn register(&self, node: &Node, ttl: Duration) -> Result<Lease> {
        check_registration(node, ttl)?;
        if node.id.contains('\0') {
            return Err(Error::InvalidArgument("the node id contains NUL".into()));
        }
        let ttl_us = duration_micros(ttl);
        let granted = Duration::from_micros(u64::try_from(ttl_us).unwrap_or(u64::MAX));
        let lease_id = uuid::Uuid::new_v4().simple().to_string();
        self.query(
            "register",
            &self.inner.sql.register,
            &[&self.ns(), &node.id, &lease_id, &ttl_us, &node.encode()],
        )
        .await?;
        // Expired rows of the namespace go in passing (bounded), with their Delete events.
        if let Err(e) = self
            .query(
                "remove expired nodes",
                &self.inner.sql.reap_nodes,
                &[&self.ns(), &100_i64],
            )
            .await
        {
            tracing::debug!(error = %e, "removing expired nodes failed");
        }
        Ok(Lease {
            node_id: node.id.clone(),
            id: lease_id,
            ttl: granted.max(ttl),
        })
    }

    async fn keep_alive(&self, lease: &Lease) -> Result<()> {
        let rows = self
            .query(
                "keep_alive",
                &self.inner.sql.keep_alive,
                &[&self.ns(), &lease.node_id, &lease.id],
            )
            .await?;
        if rows.is_empty() {
            return Err(lease_lost(lease));
        }
        Ok(())
    }

    async fn update_node(&self, lease: &Lease, node: &Node) -> Result<()> {
        if node.id != lease.node_id {
            return Err(Error::InvalidArgument(format!(
                "node record `{}` does not belong to the lease of node `{}`",
                node.id, lease.node_id
            )));
        }
        let rows = self
            .query(
                "update_node",
                &self.inner.sql.update_node,
                &[&self.ns(), &lease.node_id, &lease.id, &node.encode()],
            )
            .await?;
        if rows.is_empty() {
            return Err(lease_lost(lease));
        }
        Ok(())
    }

    async fn unregister(&self, lease: &Lease) -> Result<()> {
        self.query(
            "unregister",
            &self.inner.sql.unregister,
            &[&self.ns(), &lease.node_id, &lease.id],
        )
        .await?;
        Ok(())
    }

    async fn list_nodes(&self) -> Result<Listing<Node>> {
        let rows = self
            .query("list_nodes", &self.inner.sql.list_nodes, &[&self.ns()])
            .await?;
        let mut listing = Listing::default();
        for row in rows {
            match decode_node_row(&row) {
                Ok(node) => listing.items.push(node),
                Err(entry) => listing.corrupt.push(entry),
            }
        }
        Ok(listing)
    }

    async fn watch_nodes(&self) -> Result<WatchStream<NodeEvent>> {
        watch::watch_nodes(self.inner.clone()).await
    }

    // ----- tasks -----

    async fn put_task(&self, meta: &TaskMeta, mode: PutMode) -> Result<()> {
        validate_task_name(&meta.name)?;
        let bytes = meta.encode();
        check_value_size(meta, bytes.len(), &self.capabilities())?;
        let mode_name = match mode {
            PutMode::CreateOnly => "create",
            PutMode::Update => "update",
            PutMode::Force => "force",
        };
        let live_since = meta.created_at.map(to_pg_time_ceil);
        let rows = self
            .query(
                "put_task",
                &self.inner.sql.put_task,
                &[&self.ns(), &meta.name, &bytes, &mode_name, &live_since],
            )
            .await?;
        let answer: Option<String> = rows.first().and_then(|r| r.try_get(0).ok());
        match answer.as_deref() {
            Some("ok") => Ok(()),
            Some("already_exists") => Err(Error::AlreadyExists {
                name: meta.name.clone(),
            }),
            Some("tombstoned") => Err(Error::Tombstoned {
                name: meta.name.clone(),
            }),
            Some("not_found") => Err(Error::task_not_found(&meta.name)),
            Some("no_live_since") => Err(Error::InvalidArgument(format!(
                "task `{}`: a create-only or force write needs `created_at` (its live-since)",
                meta.name
            ))),
            other => Err(Error::Backend {
                backend: BACKEND,
                message: format!("put_task answered {other:?}"),
                source: None,
            }),
        }
    }

    async fn get_task(&self, name: &str) -> Result<Option<TaskMeta>> {
        if name.contains('\0') {
            return Ok(None);
        }
        let rows = self
            .query("get_task", &self.inner.sql.get_task, &[&self.ns(), &name])
            .await?;
        match rows.first() {
            None => Ok(None),
            Some(row) => {
                let bytes: Vec<u8> = row.try_get(0).map_err(|e| corrupt(name, e.to_string()))?;
                check_stored_size(name, bytes.len(), MAX_VALUE_BYTES)?;
                let meta = TaskMeta::decode(name, &bytes)?;
                Ok(Some(meta))
            }
        }
    }

    async fn list_tasks(&self) -> Result<Listing<TaskMeta>> {
        let rows = self
            .query("list_tasks", &self.inner.sql.list_tasks, &[&self.ns()])
            .await?;
        let mut listing = Listing::default();
        for row in rows {
            match decode_task_row(&row) {
                Ok(meta) => listing.items.push(meta),
                Err(entry) => listing.corrupt.push(entry),
            }
        }
        Ok(listing)
    }

    async fn watch_tasks(&self) -> Result<WatchStream<TaskMetaEvent>> {
        watch::watch_tasks(self.inner.clone()).await
    }

    // ----- tombstones -----

    async fn mark_deleted(&self, name: &str, at: DateTime<Utc>) -> Result<()> {
        validate_task_name(name)?;
        self.query(
            "mark_deleted",
            &self.inner.sql.mark_deleted,
            &[&self.ns(), &name, &to_pg_time(at)],
        )
        .await?;
        Ok(())
    }

    async fn get_tombstone(&self, name: &str) -> Result<Option<Tombstone>> {
        if name.contains('\0') {
            return Ok(None);
        }
        let rows = self
            .query(
                "get_tombstone",
                &self.inner.sql.get_tombstone,
                &[&self.ns(), &name],
            )
            .await?;
        match rows.first() {
            None => Ok(None),
            Some(row) => {
                let deleted_at: DateTime<Utc> =
                    row.try_get(0).map_err(|e| corrupt(name, e.to_string()))?;
                Ok(Some(Tombstone {
                    name: name.to_string(),
                    deleted_at,
                }))
            }
        }
    }

    async fn list_tombstones(&self) -> Result<Listing<Tombstone>> {
        let rows = self
            .query(
                "list_tombstones",
                &self.inner.sql.list_tombstones,
                &[&self.ns()],
            )
            .await?;
        let mut listing = Listing::default();
        for row in rows {
            match decode_tombstone_row(&row) {
                Ok(t) => listing.items.push(t),
                Err(entry) => listing.corrupt.push(entry),
            }
        }
        Ok(listing)
    }

    async fn clear_tombstone(&self, name: &str) -> Result<()> {
        let not_found = || Error::NotFound {
            what: "tombstone",
            name: name.to_string(),
        };
        if name.contains('\0') {
            return Err(not_found());
        }
        let rows = self
            .query(
                "clear_tombstone",
                &self.inner.sql.clear_tombstone,
                &[&self.ns(), &name],
            )
            .await?;
        match rows.first().and_then(|r| r.try_get::<_, bool>(0).ok()) {
            Some(true) => Ok(()),
            _ => Err(not_found()),
        }
    }

    async fn cleanup_task(&self, name: &str) -> Result<()> {
        if name.contains('\0') {
            return Ok(());
        }
        self.query(
            "cleanup_task",
            &self.inner.sql.cleanup_task,
            &[&self.ns(), &name],
        )
        .await?;
        Ok(())
    }

    async fn cleanup_all(&self) -> Result<()> {
        self.query(
            "cleanup_all",
            &self.inner.sql.cleanup_all,
            &[&self.ns(), &CLEANUP_EVENT_LIMIT],
        )
        .await?;
        Ok(())
    }

    // ----- running slots -----

    async fn acquire_slot(&self, lease: &Lease, fire: &FireKey) -> Result<SlotOutcome> {
        check_slot(lease, fire)?;
        if lease.node_id.contains('\0') || lease.id.contains('\0') {
            // `register` refuses such ids: no live lease has one.
            return Err(lease_lost(lease));
        }
        let rows = self
            .query(
                "acquire_slot",
                &self.inner.sql.acquire_slot,
                &[
                    &self.ns(),
                    &fire.task,
                    &lease.node_id,
                    &lease.id,
                    &fire.instant_millis(),
                ],
            )
            .await?;
        let key = format!("running slot of `{}`", fire.task);
        let row = match rows.as_slice() {
            [row] => row,
            _ => {
                return Err(Error::Backend {
                    backend: BACKEND,
                    message: format!("acquire_slot answered {} rows", rows.len()),
                    source: None,
                })
            }
        };
        let outcome: String = row.try_get(0).map_err(|e| corrupt(&key, e.to_string()))?;
        match outcome.as_str() {
            "taken" => Ok(SlotOutcome::Taken),
            "lease_lost" => Err(lease_lost(lease)),
            "held" => {
                let node_id: String = row.try_get(1).map_err(|e| corrupt(&key, e.to_string()))?;
                let ms: i64 = row.try_get(2).map_err(|e| corrupt(&key, e.to_string()))?;
                let instant = DateTime::<Utc>::from_timestamp_millis(ms)
                    .ok_or_else(|| corrupt(&key, format!("instant {ms} ms out of range")))?;
                Ok(SlotOutcome::Held {
                    node_id,
                    fire: FireKey::new(fire.task.clone(), instant),
                })
            }
            other => Err(Error::Backend {
                backend: BACKEND,
                message: format!("acquire_slot answered `{other}`"),
                source: None,
            }),
        }
    }

    async fn release_slot(&self, lease: &Lease, fire: &FireKey) -> Result<()> {
        check_slot(lease, fire)?;
        if lease.node_id.contains('\0') || lease.id.contains('\0') {
            return Ok(());
        }
        self.query(
            "release_slot",
            &self.inner.sql.release_slot,
            &[
                &self.ns(),
                &fire.task,
                &lease.node_id,
                &lease.id,
                &fire.instant_millis(),
            ],
        )
        .await?;
        Ok(())
    }

    // ----- lives -----

    async fn ensure_lives(&self, names: &[(String, DateTime<Utc>)]) -> Result<Vec<Life>> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        for (name, _) in names {
            validate_task_name(name)?;
        }
        let list: Vec<&str> = names.iter().map(|(n, _)| n.as_str()).collect();
        let ats: Vec<DateTime<Utc>> = names.iter().map(|(_, at)| to_pg_time_ceil(*at)).collect();
        let rows = self
            .query(
                "ensure_lives",
                &self.inner.sql.ensure_lives,
                &[&self.ns(), &list, &ats],
            )
            .await?;
        if rows.len() != names.len() {
            return Err(Error::Backend {
                backend: BACKEND,
                message: format!(
                    "ensure_lives answered {} lives for {} names",
                    rows.len(),
                    names.len()
                ),
                source: None,
            });
        }
        rows.iter()
            .zip(names)
            .map(|(row, (name, _))| decode_life(name, row, 1, 2))
            .collect()
    }

    async fn restart_life(&self, name: &str, at: DateTime<Utc>) -> Result<Life> {
        validate_task_name(name)?;
        let rows = self
            .query(
                "restart_life",
                &self.inner.sql.restart_life,
                &[&self.ns(), &name, &to_pg_time_ceil(at)],
            )
            .await?;
        match rows.first() {
            Some(row) => decode_life(name, row, 0, 1),
            None => Err(Error::InvalidState(format!(
                "no life for `{name}` after a restart"
            ))),
        }
    }

    // ----- claims -----

    async fn claim(
        &self,
        claimant: &Claimant,
        requests: &[ClaimRequest],
    ) -> Result<Vec<ClaimOutcome>> {
        check_claims(requests)?;
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let epoch = i64::try_from(claimant.epoch).map_err(|_| {
            Error::InvalidArgument(format!("claimant epoch {} is too large", claimant.epoch))
        })?;
        if claimant.node_id.is_empty() || claimant.node_id.contains('\0') {
            return Err(Error::InvalidArgument(
                "the claimant's node id must be non-empty and free of NUL".into(),
            ));
        }
        let mut outcomes: Vec<Option<ClaimOutcome>> = vec![None; requests.len()];
        let mut sendable = Vec::with_capacity(requests.len());
        for (i, r) in requests.iter().enumerate() {
            if let Err(e) = validate_task_name(&r.fire.task) {
                outcomes[i] = Some(ClaimOutcome::Failed(e));
            } else if i64::try_from(r.generation).is_err() {
                // No life of this registry has such a generation.
                outcomes[i] = Some(ClaimOutcome::Failed(Error::InvalidArgument(format!(
                    "claim of {}: generation {} is out of range",
                    r.fire, r.generation
                ))));
            } else {
                sendable.push((i, r));
            }
        }
        for chunk in sendable.chunks(CLAIM_CHUNK) {
            self.claim_chunk(claimant, epoch, chunk, &mut outcomes)
                .await?;
        }
        self.maybe_purge();
        outcomes
            .into_iter()
            .map(|o| {
                o.ok_or_else(|| Error::Backend {
                    backend: BACKEND,
                    message: "a claim request got no outcome".into(),
                    source: None,
                })
            })
            .collect()
    }

    async fn list_claims(&self, task: &str) -> Result<Listing<Claim>> {
        if task.contains('\0') {
            return Ok(Listing::default());
        }
        let rows = self
            .query(
                "list_claims",
                &self.inner.sql.list_claims,
                &[&self.ns(), &task],
            )
            .await?;
        let mut listing = Listing::default();
        for row in rows {
            match decode_claim_row(task, &row) {
                Ok(c) => listing.items.push(c),
                Err(entry) => listing.corrupt.push(entry),
            }
        }
        Ok(listing)
    }

    // ----- records -----

    async fn put_records(&self, kind: RecordKind, records: &[(String, Vec<u8>)]) -> Result<()> {
        check_records(kind, records, &self.capabilities())?;
        if records.is_empty() {
            return Ok(());
        }
        // The last value of a key repeated in the batch wins, as if written in order.
        let mut latest: std::collections::HashMap<&str, &[u8]> =
            std::collections::HashMap::with_capacity(records.len());
        for (key, value) in records {
            latest.insert(key.as_str(), value.as_slice());
        }
        let keys: Vec<&str> = latest.keys().copied().collect();
        let values: Vec<&[u8]> = keys.iter().map(|k| latest[k]).collect();
        self.query(
            "put_records",
            &self.inner.sql.put_records,
            &[&self.ns(), &kind.as_str(), &keys, &values],
        )
        .await?;
        Ok(())
    }

    async fn get_record(&self, kind: RecordKind, key: &str) -> Result<Option<Vec<u8>>> {
        check_record_key(kind, key)?;
        let rows = self
            .query(
                "get_record",
                &self.inner.sql.get_record,
                &[&self.ns(), &kind.as_str(), &key],
            )
            .await?;
        match rows.first() {
            None => Ok(None),
            Some(row) => {
                let value: Vec<u8> = row.try_get(0).map_err(|e| corrupt(key, e.to_string()))?;
                check_stored_size(key, value.len(), MAX_VALUE_BYTES)?;
                Ok(Some(value))
            }
        }
    }

    async fn list_records(&self, kind: RecordKind) -> Result<Vec<(String, Vec<u8>)>> {
        let rows = self
            .query(
                "list_records",
                &self.inner.sql.list_records,
                &[&self.ns(), &kind.as_str()],
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            match (row.try_get::<_, String>(0), row.try_get::<_, Vec<u8>>(1)) {
                (Ok(k), Ok(v)) if v.len() > MAX_VALUE_BYTES => tracing::warn!(
                    kind = %kind,
                    key = %k,
                    bytes = v.len(),
                    "a record larger than the registry stores; skipped"
                ),
                (Ok(k), Ok(v)) => out.push((k, v)),
                (k, _) => tracing::warn!(
                    kind = %kind,
                    key = ?k.ok(),
                    "a record row does not decode; skipped"
                ),
            }
        }
        Ok(out)
    }

    async fn delete_record(&self, kind: RecordKind, key: &str) -> Result<bool> {
        check_record_key(kind, key)?;
        let rows = self
            .query(
                "delete_record",
                &self.inner.sql.delete_record,
                &[&self.ns(), &kind.as_str(), &key],
            )
            .await?;
        Ok(!rows.is_empty())
    }
}

/// A node row `(node_id, record)`.
pub(crate) fn decode_node_row(row: &Row) -> std::result::Result<Node, CorruptEntry> {
    let id: String = row.try_get(0).map_err(|e| CorruptEntry {
        key: "<node>".into(),
        reason: e.to_string(),
    })?;
    let bytes: Vec<u8> = row.try_get(1).map_err(|e| CorruptEntry {
        key: id.clone(),
        reason: e.to_string(),
    })?;
    match check_stored_size(&id, bytes.len(), MAX_VALUE_BYTES)
        .and_then(|()| Node::decode(&id, &bytes))
    {
        Ok(node) if node.id == id => Ok(node),
        Ok(node) => Err(CorruptEntry {
            key: id,
            reason: format!("the record names node `{}`", node.id),
        }),
        Err(e) => Err(CorruptEntry {
            key: id,
            reason: reason_of(e),
        }),
    }
}

/// A task row `(name, record)`.
pub(crate) fn decode_task_row(row: &Row) -> std::result::Result<TaskMeta, CorruptEntry> {
    let name: String = row.try_get(0).map_err(|e| CorruptEntry {
        key: "<task>".into(),
        reason: e.to_string(),
    })?;
    let bytes: Vec<u8> = row.try_get(1).map_err(|e| CorruptEntry {
        key: name.clone(),
        reason: e.to_string(),
    })?;
    check_stored_size(&name, bytes.len(), MAX_VALUE_BYTES)
        .and_then(|()| TaskMeta::decode(&name, &bytes))
        .map_err(|e| CorruptEntry {
            key: name,
            reason: reason_of(e),
        })
}

/// A tombstone row `(name, deleted_at)`.
pub(crate) fn decode_tombstone_row(row: &Row) -> std::result::Result<Tombstone, CorruptEntry> {
    let name: String = row.try_get(0).map_err(|e| CorruptEntry {
        key: "<tombstone>".into(),
        reason: e.to_string(),
    })?;
    let deleted_at: DateTime<Utc> = row.try_get(1).map_err(|e| CorruptEntry {
        key: name.clone(),
        reason: e.to_string(),
    })?;
    Ok(Tombstone { name, deleted_at })
}

fn decode_claim_row(task: &str, row: &Row) -> std::result::Result<Claim, CorruptEntry> {
    let fields = || -> std::result::Result<Claim, String> {
        let instant_ms: i64 = row.try_get(0).map_err(|e| e.to_string())?;
        let node_id: String = row.try_get(1).map_err(|e| e.to_string())?;
        let epoch: i64 = row.try_get(2).map_err(|e| e.to_string())?;
        let generation: i64 = row.try_get(3).map_err(|e| e.to_string())?;
        let token: i64 = row.try_get(4).map_err(|e| e.to_string())?;
        let instant = DateTime::<Utc>::from_timestamp_millis(instant_ms)
            .ok_or_else(|| format!("instant {instant_ms} ms is out of range"))?;
        let num = |what: &str, v: i64| u64::try_from(v).map_err(|_| format!("negative {what} {v}"));
        Ok(Claim {
            fire: FireKey::new(task, instant),
            node_id,
            epoch: num("epoch", epoch)?,
            generation: num("generation", generation)?,
            token: num("token", token)?,
        })
    };
    fields().map_err(|reason| CorruptEntry {
        key: format!("{task}@claim"),
        reason,
    })
}

fn reason_of(e: Error) -> String {
    match e {
        Error::Corrupt { reason, .. } => reason,
        other => other.to_string(),
    }
}

/// The namespace's channel for node watches (`nodes`) or task watches, for watches.
pub(crate) async fn channel_of(inner: &Inner, nodes: bool) -> Result<String> {
    let watch = if nodes { "n" } else { "t" };
    let rows = inner
        .query(
            "watch channel",
            &inner.sql.channel,
            &[&inner.namespace, &watch],
        )
        .await?;
    rows.first()
        .and_then(|r| r.try_get::<_, String>(0).ok())
        .ok_or_else(|| Error::Backend {
            backend: BACKEND,
            message: "the channel function answered nothing".into(),
            source: None,
        })
}

/// Renders a statement template (used by the tests' raw hooks).
#[doc(hidden)]
pub fn render_sql(template: &str, schema: &str) -> String {
    render(template, schema)
}
