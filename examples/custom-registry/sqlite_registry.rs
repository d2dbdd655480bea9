//! `SqliteRegistry`: a dcron registry on one SQLite database file, written only against the
//! public [`Registry`] trait — the template for a third-party backend.
//!
//! It is a useful registry in its own right for several processes on **one host** sharing a
//! database file (WAL mode, a busy timeout, every multi-key decision in one `BEGIN IMMEDIATE`
//! transaction).
//!
//! # How it works
//!
//! - **No blocking on the async runtime.** Each handle owns one connection, living on a
//!   dedicated thread; the async methods send a closure to that thread and await its answer.
//!   (With `spawn_blocking` and a mutex, a burst of 2,000 calls would park hundreds of blocking
//!   threads on that mutex; one thread per connection queues them instead.) Several handles, in
//!   one process or many, contend through SQLite's own locks, waiting up to [`BUSY_TIMEOUT`].
//! - **Durability**: WAL with `synchronous = FULL`, so a claim that was answered `Won` survives
//!   a power loss and the fire is not run again after a reboot.
//! - **Tables** are keyed by namespace first: `nodes(ns, id, lease_id, ttl_ms, record,
//!   expires_at_ms)`, `tasks(ns, name, bytes)`, `tombstones(ns, name, record)`,
//!   `lives(ns, name, generation, live_since)`, `claims(ns, task, instant_ms, node, epoch,
//!   generation, token, expires_at_ms)`, `tokens(ns, last)`, `records(ns, kind, key, value)`.
//!   Namespaces are compared for equality, never by prefix. A database written by the earlier
//!   version of this file is upgraded in place when opened (the claim columns are added).
//! - **The exactly-once contract, natively** ([`Capabilities::exactly_once`]): every fencing
//!   token and every generation is the next number of the namespace's sequence (`tokens.last`),
//!   which no cleanup removes, so both strictly increase per name across cleanups and new lives.
//!   Lives are started and removed by the effects [`dcron_core::tombstone::decide`] answers
//!   (create-only and force writes, cleanups) in the same transaction as the rest of the write;
//!   no write removes a claim (a claim lives until its retention ends, so a fire claimed in an
//!   earlier life stays claimed in the next one);
//!   `ensure_lives` and `restart_life` are one transaction each. A claim batch is one immediate
//!   transaction deciding each fire with [`dcron_core::claim::decide_claim`], in the contract's
//!   order; a fire whose stored claim does not read answers `Failed` alone.
//! - **Clock**: every process on the host shares one wall clock, and a claim reads it inside its
//!   transaction (after `BEGIN IMMEDIATE`, so no other writer runs between the check and the
//!   write): this registry refuses a claim past its deadline ([`Capabilities::clock`]).
//! - **Records** (pause markers, trigger-now requests, task status) are opaque bytes in
//!   `records`, keyed by namespace, kind and key as given (a column needs no escaping). A batch
//!   is one immediate transaction of upserts; `delete_record` answers whether its `DELETE`
//!   changed a row, and SQLite serializes writers, so of several concurrent deleters exactly one
//!   is answered `true`.
//! - **Tasks and tombstones** are decided by [`dcron_core::tombstone::decide`] inside one
//!   immediate transaction that reads the name's state and applies the effects.
//! - **Time**: lease and retention deadlines are wall-clock milliseconds written into the rows
//!   and compared with the clock of whoever reads them. Every process shares the host's clock,
//!   which is what makes this "server-side" expiry; do not put the file on a network share used
//!   by several hosts, and do not test it under `tokio::time::pause()` (leases would not follow
//!   the virtual clock). A row past its deadline is treated as absent at once and deleted
//!   lazily.
//! - **Watches**: SQLite has no notifications, so every write also appends to an `events` table
//!   in the same transaction (an outbox). A watcher polls it every [`POLL_INTERVAL`] from the
//!   sequence number current when it started, and also deletes expired nodes of its namespace
//!   (logging their `Delete`), so expiries are delivered even when nobody writes. Events older
//!   than [`EVENT_RETENTION`] are trimmed; a watcher that fell behind the trim gets a `Resync`.
//! - **Corrupt values**: records are stored as raw bytes and decoded on read, so a bad value is
//!   reported ([`Listing::corrupt`], [`Error::Corrupt`]) and never hides the others.

use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use dcron_core::claim::{decide_claim, ClaimDecision, Holder};
use dcron_core::tombstone::{decide, NameState, Request};
use dcron_core::{
    check_claims, check_record_key, check_records, check_value_size, validate_task_name,
    watch_channel, Capabilities, Claim, ClaimOutcome, ClaimRequest, Claimant, CorruptEntry, Error,
    FireKey, Lease, Life, Listing, Node, NodeEvent, PutMode, RecordKind, Registry, Result,
    ResyncEvent, TaskMeta, TaskMetaEvent, Tombstone, WatchSender, WatchStream,
};
use rusqlite::{
    params, Connection, ErrorCode, OptionalExtension, Transaction, TransactionBehavior,
};

/// The backend name reported in errors and logs.
const BACKEND: &str = "sqlite";

/// How long a statement waits for another connection's lock before answering
/// [`Error::Unavailable`].
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a watcher looks for new events.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// How many polls in a row may fail (a locked database) before a watch stream ends.
const MAX_POLL_FAILURES: u32 = 50;

/// How long logged events are kept for watchers.
pub const EVENT_RETENTION: Duration = Duration::from_secs(60);

/// How many events each watch stream buffers before it overflows into one `Resync`.
pub const WATCH_BUFFER: usize = 1024;

/// Durations beyond this count as this (about a century), so deadlines never overflow.
const FOREVER_MS: i64 = 100 * 365 * 24 * 3600 * 1000;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS nodes (
    ns TEXT NOT NULL, id TEXT NOT NULL, lease_id TEXT NOT NULL, ttl_ms INTEGER NOT NULL,
    record BLOB NOT NULL, expires_at_ms INTEGER NOT NULL, PRIMARY KEY (ns, id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS nodes_by_expiry ON nodes (ns, expires_at_ms);
CREATE TABLE IF NOT EXISTS tasks (
    ns TEXT NOT NULL, name TEXT NOT NULL, bytes BLOB NOT NULL, PRIMARY KEY (ns, name));
CREATE TABLE IF NOT EXISTS tombstones (
    ns TEXT NOT NULL, name TEXT NOT NULL, record BLOB NOT NULL, PRIMARY KEY (ns, name))
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS claims (
    ns TEXT NOT NULL, task TEXT NOT NULL, instant_ms INTEGER NOT NULL, node TEXT NOT NULL,
    token INTEGER NOT NULL, expires_at_ms INTEGER NOT NULL,
    epoch INTEGER NOT NULL DEFAULT 0, generation INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (ns, task, instant_ms)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS lives (
    ns TEXT NOT NULL, name TEXT NOT NULL, generation INTEGER NOT NULL, live_since TEXT NOT NULL,
    PRIMARY KEY (ns, name)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS claims_by_expiry ON claims (ns, expires_at_ms);
CREATE TABLE IF NOT EXISTS tokens (ns TEXT PRIMARY KEY, last INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, ns TEXT NOT NULL, topic INTEGER NOT NULL,
    kind INTEGER NOT NULL, key TEXT NOT NULL, value BLOB, at_ms INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_ns ON events (ns, topic, seq);
CREATE INDEX IF NOT EXISTS events_by_age ON events (at_ms);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS records (
    ns TEXT NOT NULL, kind TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,
    PRIMARY KEY (ns, kind, key)) WITHOUT ROWID;
";

/// Which watch stream an event belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Topic {
    Nodes = 0,
    Tasks = 1,
}

/// What an event says; stored as an integer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A node or task record was written (value: the record).
    Put = 0,
    /// A node or task record was removed.
    Delete = 1,
    /// A tombstone was written (value: the tombstone).
    Tombstoned = 2,
    /// A tombstone was removed.
    TombstoneCleared = 3,
    /// Too much changed to describe: list again.
    Resync = 4,
}

/// A job for a handle's connection thread.
type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// A registry on a SQLite database file, shared by every handle (and process) that opens it.
///
/// Clones share one connection; [`SqliteRegistry::open`] again for another one. It implements
/// the whole exactly-once contract with a clock (the host's, read inside each claim's
/// transaction). Choices where the contract leaves room: records of at most 1 MiB; zero TTL or
/// retention is [`Error::InvalidArgument`]; a granted TTL is the requested one and retention is
/// kept to the millisecond (rows past their deadline are treated as absent at once);
/// `put_task` and `mark_deleted` validate the name; a life row that does not read is replaced by
/// a new life in `ensure_lives`; `cleanup_all` logs one event per removed entry, or one `Resync`
/// beyond [`WATCH_BUFFER`] of them.
///
/// ```no_run
/// # async fn demo() -> dcron_core::Result<()> {
/// let registry = SqliteRegistry::open("/var/lib/myapp/dcron.sqlite", "prod").await?;
/// let node = dcron_core::Dcron::builder(registry).build()?;
/// # let _ = node; Ok(()) }
/// ```
#[derive(Clone)]
pub struct SqliteRegistry {
    jobs: std_mpsc::Sender<Job>,
    namespace: Arc<str>,
    path: Arc<Path>,
}

impl std::fmt::Debug for SqliteRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteRegistry")
            .field("path", &self.path)
            .field("namespace", &self.namespace)
            .finish()
    }
}

impl SqliteRegistry {
    /// Opens (creating if needed) the database at `path` with a new connection, working in
    /// `namespace`.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the file cannot be opened or stays locked longer than
    /// [`BUSY_TIMEOUT`]; [`Error::Backend`] for any other SQLite failure.
    pub async fn open(path: impl AsRef<Path>, namespace: &str) -> Result<SqliteRegistry> {
        let path: Arc<Path> = Arc::from(path.as_ref());
        let (jobs, queue) = std_mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let thread_path = path.to_path_buf();
        std::thread::Builder::new()
            .name("dcron-sqlite".into())
            .spawn(move || connection_thread(thread_path, queue, ready_tx))
            .map_err(|e| Error::backend(BACKEND, "cannot start the connection thread", e))?;
        ready_rx
            .await
            .map_err(|_| Error::unavailable("the SQLite connection thread ended"))??;
        Ok(SqliteRegistry {
            jobs,
            namespace: Arc::from(namespace),
            path,
        })
    }

    /// The namespace this handle works in.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// For tests and fault injection: stores `bytes` as the task record of `name`, as another
    /// writer could. Task watchers get a `Put` when the bytes decode, a `Resync` otherwise.
    ///
    /// # Errors
    /// As any write.
    pub async fn write_raw_task(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let (ns, name, bytes) = (self.namespace.clone(), name.to_string(), bytes.to_vec());
        self.run(move |conn| {
            let tx = immediate(conn)?;
            upsert_task(&tx, &ns, &name, &bytes)?;
            match TaskMeta::decode(&name, &bytes) {
                Ok(_) => log(&tx, &ns, Topic::Tasks, Kind::Put, &name, Some(&bytes))?,
                Err(_) => log(&tx, &ns, Topic::Tasks, Kind::Resync, &name, None)?,
            }
            commit(tx)
        })
        .await
    }

    /// For tests and fault injection: ends the lease of `node_id` now, as if its TTL had run
    /// out (node watchers get a `Delete`).
    ///
    /// # Errors
    /// [`Error::NotFound`] (`what = "node"`) when the node is not registered; as any write.
    pub async fn expire_lease_now(&self, node_id: &str) -> Result<()> {
        let (ns, id) = (self.namespace.clone(), node_id.to_string());
        self.run(move |conn| {
            let tx = immediate(conn)?;
            let removed = tx
                .execute(
                    "DELETE FROM nodes WHERE ns = ?1 AND id = ?2",
                    params![ns, id],
                )
                .map_err(sql("expire a lease"))?;
            if removed > 0 {
                log(&tx, &ns, Topic::Nodes, Kind::Delete, &id, None)?;
            }
            commit(tx)?;
            if removed == 0 {
                return Err(Error::NotFound {
                    what: "node",
                    name: id,
                });
            }
            Ok(())
        })
        .await
    }

    /// Runs `f` on this handle's connection thread and awaits its answer.
    async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        run_on(&self.jobs, f).await
    }

    /// Starts a watcher of `topic` from the current end of the event log.
    async fn watch<T>(&self, topic: Topic) -> Result<WatchStream<T>>
    where
        T: ResyncEvent + From<Event> + Send + Unpin + 'static,
    {
        // The poller is a tokio task: refuse (rather than panic) outside a tokio runtime.
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::InvalidState("SqliteRegistry watches need a tokio runtime".into())
        })?;
        let start = self.run(|conn| last_seq(conn)).await?;
        let (tx, rx) = watch_channel(WATCH_BUFFER);
        runtime.spawn(poll_events(
            self.jobs.clone(),
            self.namespace.clone(),
            topic,
            start,
            tx,
        ));
        Ok(rx)
    }

    /// Decides `request` for `name` with the tombstone rules and applies the effects, all in one
    /// immediate transaction. `record` is the record a put writes, with its encoded bytes.
    /// Answers the name's life afterwards.
    async fn decide_and_apply(
        &self,
        name: &str,
        request: RequestKind,
        record: Option<(TaskMeta, Vec<u8>)>,
    ) -> Result<Option<Life>> {
        let (ns, name) = (self.namespace.clone(), name.to_string());
        self.run(move |conn| {
            let tx = immediate(conn)?;
            let stored: Option<Vec<u8>> = tx
                .query_row(
                    "SELECT bytes FROM tasks WHERE ns = ?1 AND name = ?2",
                    params![ns, name],
                    |row| row.get(0),
                )
                .optional()
                .map_err(sql("read a task"))?;
            let tombstone = read_tombstone(&tx, &ns, &name)?;
            let (meta, bytes) = record.unwrap_or_default();
            // A record that does not decode still exists: only its presence matters to the rules.
            let placeholder = TaskMeta::default();
            let state = NameState {
                meta: stored.as_ref().map(|_| &placeholder),
                tombstone: tombstone.as_ref(),
            };
            let request = match request {
                RequestKind::Put(PutMode::CreateOnly) => Request::AddDynamic(&meta),
                RequestKind::Put(PutMode::Update) => Request::UpdateDynamic(&meta),
                RequestKind::Put(PutMode::Force) => Request::ForceAddDynamic(&meta),
                RequestKind::MarkDeleted(at) => Request::MarkDeleted(at),
                RequestKind::Reuse => Request::Reuse,
                RequestKind::Cleanup => Request::Cleanup,
                RequestKind::RestartLife(at) => Request::ForceAddStatic(at),
            };
            let effects = decide(&name, state, request)?;
            if effects.write_meta.is_some() {
                upsert_task(&tx, &ns, &name, &bytes)?;
                log(&tx, &ns, Topic::Tasks, Kind::Put, &name, Some(&bytes))?;
            }
            if effects.remove_meta {
                tx.execute(
                    "DELETE FROM tasks WHERE ns = ?1 AND name = ?2",
                    params![ns, name],
                )
                .map_err(sql("remove a task"))?;
                log(&tx, &ns, Topic::Tasks, Kind::Delete, &name, None)?;
            }
            if let Some(tombstone) = &effects.set_tombstone {
                let record = tombstone.encode();
                tx.execute(
                    "INSERT INTO tombstones (ns, name, record) VALUES (?1, ?2, ?3)",
                    params![ns, name, record],
                )
                .map_err(sql("write a tombstone"))?;
                log(
                    &tx,
                    &ns,
                    Topic::Tasks,
                    Kind::Tombstoned,
                    &name,
                    Some(&record),
                )?;
            }
            if effects.clear_tombstone {
                tx.execute(
                    "DELETE FROM tombstones WHERE ns = ?1 AND name = ?2",
                    params![ns, name],
                )
                .map_err(sql("clear a tombstone"))?;
                log(&tx, &ns, Topic::Tasks, Kind::TombstoneCleared, &name, None)?;
            }
            if effects.remove_life {
                tx.execute(
                    "DELETE FROM lives WHERE ns = ?1 AND name = ?2",
                    params![ns, name],
                )
                .map_err(sql("remove a life"))?;
            }
            if let Some(at) = effects.start_life {
                start_life(&tx, &ns, &name, at)?;
            }
            let life = read_life(&tx, &ns, &name)?;
            commit(tx)?;
            Ok(life.and_then(|(life, _)| life))
        })
        .await
    }
}

/// An owned form of [`Request`], sent to the connection thread.
enum RequestKind {
    Put(PutMode),
    MarkDeleted(DateTime<Utc>),
    Reuse,
    Cleanup,
    RestartLife(DateTime<Utc>),
}

/// The next number of the namespace's sequence (fencing tokens and generations).
fn next_number(tx: &Transaction<'_>, ns: &str) -> Result<i64> {
    tx.query_row(
        "INSERT INTO tokens (ns, last) VALUES (?1, 1)
         ON CONFLICT (ns) DO UPDATE SET last = last + 1 RETURNING last",
        params![ns],
        |row| row.get(0),
    )
    .map_err(sql("take the next number of the sequence"))
}

/// Starts a new life of `name` at `at` (the next number of the sequence as its generation).
fn start_life(tx: &Transaction<'_>, ns: &str, name: &str, at: DateTime<Utc>) -> Result<Life> {
    let generation = next_number(tx, ns)?;
    tx.execute(
        "INSERT INTO lives (ns, name, generation, live_since) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (ns, name) DO UPDATE SET generation = excluded.generation,
           live_since = excluded.live_since",
        params![
            ns,
            name,
            generation,
            at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
        ],
    )
    .map_err(sql("start a life"))?;
    Ok(Life::new(u64::try_from(generation).unwrap_or(0), at))
}

/// Reads the life of `name`: `None` when there is none, `Some((None, _))` when the row does not
/// hold a life (its generation, when readable, beside it).
fn read_life(conn: &Connection, ns: &str, name: &str) -> Result<Option<(Option<Life>, i64)>> {
    let row: Option<(rusqlite::types::Value, rusqlite::types::Value)> = conn
        .query_row(
            "SELECT generation, live_since FROM lives WHERE ns = ?1 AND name = ?2",
            params![ns, name],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()
        .map_err(sql("read a life"))?;
    Ok(row.map(|(generation, since)| {
        let generation = match generation {
            rusqlite::types::Value::Integer(g) if g > 0 => g,
            _ => 0,
        };
        let since = match since {
            rusqlite::types::Value::Text(s) => DateTime::parse_from_rfc3339(&s)
                .ok()
                .map(|t| t.with_timezone(&Utc)),
            _ => None,
        };
        let life = match (u64::try_from(generation).ok().filter(|g| *g > 0), since) {
            (Some(g), Some(since)) => Some(Life::new(g, since)),
            _ => None,
        };
        (life, generation)
    }))
}

/// Sends `f` to a connection thread and awaits its answer.
async fn run_on<T, F>(jobs: &std_mpsc::Sender<Job>, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    jobs.send(Box::new(move |conn| {
        let _ = tx.send(f(conn));
    }))
    .map_err(|_| Error::unavailable("the SQLite connection thread ended"))?;
    rx.await
        .map_err(|_| Error::unavailable("the SQLite connection thread dropped a request"))?
}

/// Owns one connection and runs jobs on it until every sender is gone.
fn connection_thread(
    path: PathBuf,
    queue: std_mpsc::Receiver<Job>,
    ready: tokio::sync::oneshot::Sender<Result<()>>,
) {
    let mut conn = match connect(&path) {
        Ok(conn) => {
            let _ = ready.send(Ok(()));
            conn
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    for job in queue {
        // A panicking job loses its own answer (the caller sees `Unavailable`), not the thread.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut conn)));
    }
}

/// Opens a connection, switches the file to WAL and creates the schema.
fn connect(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path).map_err(sql("open the database"))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(sql("set the busy timeout"))?;
    // Switching to WAL needs a moment alone with the file; another process opening it at the
    // same time answers BUSY without waiting, so try again for a while.
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        let setup = conn
            .pragma_update(None, "journal_mode", "WAL")
            .and_then(|()| conn.pragma_update(None, "synchronous", "FULL"))
            .and_then(|()| conn.execute_batch(SCHEMA))
            .and_then(|()| upgrade(&conn));
        match setup {
            Ok(()) => return Ok(conn),
            Err(e) if is_busy(&e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(sql("prepare the database")(e)),
        }
    }
}

/// Adds the claim columns a database written by the earlier version of this file lacks.
fn upgrade(conn: &Connection) -> rusqlite::Result<()> {
    let mut columns = Vec::new();
    {
        let mut stmt = conn.prepare("PRAGMA table_info(claims)")?;
        let rows = stmt.query_map([], |row| row.get::<_, String>(1))?;
        for row in rows {
            columns.push(row?);
        }
    }
    for column in ["epoch", "generation"] {
        if !columns.iter().any(|c| c == column) {
            conn.execute_batch(&format!(
                "ALTER TABLE claims ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0"
            ))?;
        }
    }
    Ok(())
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// Maps a SQLite error: lock timeouts and unopenable files are retryable, the rest is `Backend`.
fn sql(what: &'static str) -> impl Fn(rusqlite::Error) -> Error {
    move |e| {
        if is_busy(&e) || e.sqlite_error_code() == Some(ErrorCode::CannotOpen) {
            Error::Unavailable {
                message: format!("sqlite: cannot {what}: {e}"),
                source: Some(Box::new(e)),
            }
        } else {
            Error::backend(BACKEND, format!("cannot {what}"), e)
        }
    }
}

fn immediate(conn: &mut Connection) -> Result<Transaction<'_>> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql("begin a transaction"))
}

fn commit(tx: Transaction<'_>) -> Result<()> {
    tx.commit().map_err(sql("commit"))
}

/// Wall-clock milliseconds since the Unix epoch: the one clock every process on the host shares.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis())
        .unwrap_or(FOREVER_MS)
        .min(FOREVER_MS)
}

fn upsert_task(tx: &Transaction<'_>, ns: &str, name: &str, bytes: &[u8]) -> Result<()> {
    tx.execute(
        "INSERT INTO tasks (ns, name, bytes) VALUES (?1, ?2, ?3)
         ON CONFLICT (ns, name) DO UPDATE SET bytes = excluded.bytes",
        params![ns, name, bytes],
    )
    .map_err(sql("write a task"))?;
    Ok(())
}

/// Reads a tombstone; one that does not decode still counts as a tombstone (at the epoch).
fn read_tombstone(conn: &Connection, ns: &str, name: &str) -> Result<Option<Tombstone>> {
    let record: Option<Vec<u8>> = conn
        .query_row(
            "SELECT record FROM tombstones WHERE ns = ?1 AND name = ?2",
            params![ns, name],
            |row| row.get(0),
        )
        .optional()
        .map_err(sql("read a tombstone"))?;
    Ok(record.map(|bytes| {
        Tombstone::decode(name, &bytes).unwrap_or_else(|_| Tombstone {
            name: name.to_string(),
            deleted_at: DateTime::<Utc>::UNIX_EPOCH,
        })
    }))
}

/// Reads the unexpired claim of a fire as `(node, epoch, token)`; a row whose columns do not
/// read is [`Error::Corrupt`].
fn read_claim(
    conn: &Connection,
    ns: &str,
    task: &str,
    instant_ms: i64,
) -> Result<Option<(String, u64, u64)>> {
    let row: Option<(
        rusqlite::types::Value,
        rusqlite::types::Value,
        rusqlite::types::Value,
    )> = conn
        .query_row(
            "SELECT node, epoch, token FROM claims
             WHERE ns = ?1 AND task = ?2 AND instant_ms = ?3",
            params![ns, task, instant_ms],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .optional()
        .map_err(sql("read a claim"))?;
    let Some((node, epoch, token)) = row else {
        return Ok(None);
    };
    match (
        text(node),
        unsigned(epoch),
        unsigned(token).filter(|t| *t > 0),
    ) {
        (Some(node), Some(epoch), Some(token)) => Ok(Some((node, epoch, token))),
        _ => Err(Error::Corrupt {
            key: format!("{task}@{instant_ms}"),
            reason: "the claim row does not hold a claim".into(),
        }),
    }
}

/// A non-empty text column.
fn text(value: rusqlite::types::Value) -> Option<String> {
    match value {
        rusqlite::types::Value::Text(s) if !s.is_empty() => Some(s),
        _ => None,
    }
}

/// A non-negative integer column.
fn unsigned(value: rusqlite::types::Value) -> Option<u64> {
    match value {
        rusqlite::types::Value::Integer(n) => u64::try_from(n).ok(),
        _ => None,
    }
}

/// Appends an event to the log, in the caller's transaction, and trims old events.
fn log(
    tx: &Transaction<'_>,
    ns: &str,
    topic: Topic,
    kind: Kind,
    key: &str,
    value: Option<&[u8]>,
) -> Result<()> {
    let now = now_ms();
    tx.execute(
        "INSERT INTO events (ns, topic, kind, key, value, at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![ns, topic as i64, kind as i64, key, value, now],
    )
    .map_err(sql("log an event"))?;
    let cutoff = now - duration_ms(EVENT_RETENTION);
    let trim: Option<i64> = tx
        .query_row(
            "SELECT max(seq) FROM events WHERE at_ms < ?1",
            params![cutoff],
            |row| row.get(0),
        )
        .map_err(sql("trim events"))?;
    if let Some(upto) = trim {
        tx.execute("DELETE FROM events WHERE seq <= ?1", params![upto])
            .map_err(sql("trim events"))?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('trimmed_through', ?1)
             ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)",
            params![upto],
        )
        .map_err(sql("trim events"))?;
    }
    Ok(())
}

/// The last sequence number ever given to an event (trimming never lowers it).
fn last_seq(conn: &Connection) -> Result<i64> {
    conn.query_row(
        "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0)",
        [],
        |row| row.get(0),
    )
    .map_err(sql("read the event log"))
}

/// Deletes the expired nodes of `ns`, logging a `Delete` for each.
fn purge_expired_nodes(conn: &mut Connection, ns: &str, now: i64) -> Result<()> {
    let any: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM nodes WHERE ns = ?1 AND expires_at_ms <= ?2)",
            params![ns, now],
            |row| row.get(0),
        )
        .map_err(sql("look for expired nodes"))?;
    if !any {
        return Ok(());
    }
    let tx = immediate(conn)?;
    let ids: Vec<String> = {
        let mut stmt = tx
            .prepare("DELETE FROM nodes WHERE ns = ?1 AND expires_at_ms <= ?2 RETURNING id")
            .map_err(sql("expire nodes"))?;
        let rows = stmt
            .query_map(params![ns, now], |row| row.get(0))
            .map_err(sql("expire nodes"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(sql("expire nodes"))?
    };
    for id in &ids {
        log(&tx, ns, Topic::Nodes, Kind::Delete, id, None)?;
    }
    commit(tx)
}

/// One row of the event log.
struct Event {
    kind: i64,
    key: String,
    value: Option<Vec<u8>>,
}

impl From<Event> for NodeEvent {
    fn from(e: Event) -> Self {
        match (e.kind, e.value) {
            (k, Some(bytes)) if k == Kind::Put as i64 => match Node::decode(&e.key, &bytes) {
                Ok(node) => NodeEvent::Put(node),
                // The listing reports what does not decode; make the watcher look.
                Err(_) => NodeEvent::Resync,
            },
            (k, _) if k == Kind::Delete as i64 => NodeEvent::Delete { id: e.key },
            _ => NodeEvent::Resync,
        }
    }
}

impl From<Event> for TaskMetaEvent {
    fn from(e: Event) -> Self {
        match (e.kind, e.value) {
            (k, Some(bytes)) if k == Kind::Put as i64 => match TaskMeta::decode(&e.key, &bytes) {
                Ok(meta) => TaskMetaEvent::Put(meta),
                Err(_) => TaskMetaEvent::Resync,
            },
            (k, _) if k == Kind::Delete as i64 => TaskMetaEvent::Removed { name: e.key },
            (k, Some(bytes)) if k == Kind::Tombstoned as i64 => {
                match Tombstone::decode(&e.key, &bytes) {
                    Ok(t) => TaskMetaEvent::Tombstoned(t),
                    Err(_) => TaskMetaEvent::Resync,
                }
            }
            (k, _) if k == Kind::TombstoneCleared as i64 => {
                TaskMetaEvent::TombstoneCleared { name: e.key }
            }
            _ => TaskMetaEvent::Resync,
        }
    }
}

/// What one poll found: the events after the cursor (or a gap) and the new cursor.
struct Polled {
    events: Vec<Event>,
    gap: bool,
    cursor: i64,
}

/// Reads the events of `ns`/`topic` after `cursor` (expiring due nodes first for node watchers).
fn poll_once(conn: &mut Connection, ns: &str, topic: Topic, cursor: i64) -> Result<Polled> {
    if topic == Topic::Nodes {
        purge_expired_nodes(conn, ns, now_ms())?;
    }
    let trimmed: i64 = conn
        .query_row(
            "SELECT coalesce((SELECT value FROM meta WHERE key = 'trimmed_through'), 0)",
            [],
            |row| row.get(0),
        )
        .map_err(sql("read the event log"))?;
    if cursor < trimmed {
        return Ok(Polled {
            events: Vec::new(),
            gap: true,
            cursor: last_seq(conn)?,
        });
    }
    let mut stmt = conn
        .prepare_cached(
            "SELECT seq, kind, key, value FROM events
             WHERE ns = ?1 AND topic = ?2 AND seq > ?3 ORDER BY seq LIMIT 2048",
        )
        .map_err(sql("read the event log"))?;
    let mut next = cursor;
    let rows = stmt
        .query_map(params![ns, topic as i64, cursor], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                Event {
                    kind: row.get(1)?,
                    key: row.get(2)?,
                    value: row.get(3)?,
                },
            ))
        })
        .map_err(sql("read the event log"))?;
    let mut events = Vec::new();
    for row in rows {
        let (seq, event) = row.map_err(sql("read the event log"))?;
        next = seq;
        events.push(event);
    }
    Ok(Polled {
        events,
        gap: false,
        cursor: next,
    })
}

/// Feeds one watch stream from the event log until the stream is dropped or the connection
/// thread ends.
async fn poll_events<T>(
    jobs: std_mpsc::Sender<Job>,
    ns: Arc<str>,
    topic: Topic,
    mut cursor: i64,
    tx: WatchSender<T>,
) where
    T: ResyncEvent + From<Event> + Send + Unpin + 'static,
{
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures = 0u32;
    loop {
        ticker.tick().await;
        if tx.is_closed() {
            return;
        }
        let ns = ns.clone();
        match run_on(&jobs, move |conn| poll_once(conn, &ns, topic, cursor)).await {
            Ok(polled) => {
                failures = 0;
                cursor = polled.cursor;
                if polled.gap && !tx.resync() {
                    return;
                }
                for event in polled.events {
                    if !tx.send(T::from(event)) {
                        return;
                    }
                }
            }
            // A busy database: the cursor is kept, so the next poll loses nothing.
            Err(_) if failures < MAX_POLL_FAILURES => failures += 1,
            // Ending the stream tells the consumer to watch again and list.
            Err(_) => return,
        }
    }
}

fn decode_listing<T>(
    rows: Vec<(String, Vec<u8>)>,
    decode: impl Fn(&str, &[u8]) -> Result<T>,
) -> Listing<T> {
    let mut listing = Listing::default();
    for (key, bytes) in rows {
        match decode(&key, &bytes) {
            Ok(item) => listing.items.push(item),
            Err(e) => listing.corrupt.push(CorruptEntry {
                reason: match e {
                    Error::Corrupt { reason, .. } => reason,
                    other => other.to_string(),
                },
                key,
            }),
        }
    }
    listing
}

fn query_pairs(conn: &Connection, query: &str, ns: &str) -> Result<Vec<(String, Vec<u8>)>> {
    let mut stmt = conn.prepare_cached(query).map_err(sql("list"))?;
    let rows = stmt
        .query_map(params![ns], |row| Ok((row.get(0)?, row.get(1)?)))
        .map_err(sql("list"))?;
    rows.collect::<rusqlite::Result<_>>().map_err(sql("list"))
}

#[async_trait]
impl Registry for SqliteRegistry {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
            .with_records()
            .with_clock()
            .with_exactly_once()
    }

    // ----- membership -----

    async fn register(&self, node: &Node, ttl: Duration) -> Result<Lease> {
        dcron_core::check_registration(node, ttl)?;
        let lease_id = uuid::Uuid::new_v4().simple().to_string();
        let (ns, id, record, ttl_ms) = (
            self.namespace.clone(),
            node.id.clone(),
            node.encode(),
            duration_ms(ttl).max(1),
        );
        let lid = lease_id.clone();
        self.run(move |conn| {
            let tx = immediate(conn)?;
            tx.execute(
                "INSERT INTO nodes (ns, id, lease_id, ttl_ms, record, expires_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (ns, id) DO UPDATE SET lease_id = excluded.lease_id,
                   ttl_ms = excluded.ttl_ms, record = excluded.record,
                   expires_at_ms = excluded.expires_at_ms",
                params![ns, id, lid, ttl_ms, record, now_ms() + ttl_ms],
            )
            .map_err(sql("register a node"))?;
            log(&tx, &ns, Topic::Nodes, Kind::Put, &id, Some(&record))?;
            commit(tx)
        })
        .await?;
        Ok(Lease {
            node_id: node.id.clone(),
            id: lease_id,
            ttl,
        })
    }

    async fn keep_alive(&self, lease: &Lease) -> Result<()> {
        let (ns, id, lid) = (
            self.namespace.clone(),
            lease.node_id.clone(),
            lease.id.clone(),
        );
        let renewed = self
            .run(move |conn| {
                let now = now_ms();
                conn.execute(
                    "UPDATE nodes SET expires_at_ms = ?4 + ttl_ms
                     WHERE ns = ?1 AND id = ?2 AND lease_id = ?3 AND expires_at_ms > ?4",
                    params![ns, id, lid, now],
                )
                .map_err(sql("renew a lease"))
            })
            .await?;
        if renewed == 0 {
            return Err(Error::LeaseLost {
                node: lease.node_id.clone(),
            });
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
        let (ns, id, lid, record) = (
            self.namespace.clone(),
            lease.node_id.clone(),
            lease.id.clone(),
            node.encode(),
        );
        let updated = self
            .run(move |conn| {
                let tx = immediate(conn)?;
                let n = tx
                    .execute(
                        "UPDATE nodes SET record = ?4
                         WHERE ns = ?1 AND id = ?2 AND lease_id = ?3 AND expires_at_ms > ?5",
                        params![ns, id, lid, record, now_ms()],
                    )
                    .map_err(sql("update a node"))?;
                if n > 0 {
                    log(&tx, &ns, Topic::Nodes, Kind::Put, &id, Some(&record))?;
                }
                commit(tx)?;
                Ok(n)
            })
            .await?;
        if updated == 0 {
            return Err(Error::LeaseLost {
                node: lease.node_id.clone(),
            });
        }
        Ok(())
    }

    async fn unregister(&self, lease: &Lease) -> Result<()> {
        let (ns, id, lid) = (
            self.namespace.clone(),
            lease.node_id.clone(),
            lease.id.clone(),
        );
        self.run(move |conn| {
            let tx = immediate(conn)?;
            // Only this lease's record: a newer registration of the node is left alone.
            let n = tx
                .execute(
                    "DELETE FROM nodes WHERE ns = ?1 AND id = ?2 AND lease_id = ?3",
                    params![ns, id, lid],
                )
                .map_err(sql("unregister a node"))?;
            if n > 0 {
                log(&tx, &ns, Topic::Nodes, Kind::Delete, &id, None)?;
            }
            commit(tx)
        })
        .await
    }

    async fn list_nodes(&self) -> Result<Listing<Node>> {
        let ns = self.namespace.clone();
        let rows = self
            .run(move |conn| {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT id, record FROM nodes WHERE ns = ?1 AND expires_at_ms > ?2",
                    )
                    .map_err(sql("list nodes"))?;
                let rows = stmt
                    .query_map(params![ns, now_ms()], |row| Ok((row.get(0)?, row.get(1)?)))
                    .map_err(sql("list nodes"))?;
                rows.collect::<rusqlite::Result<Vec<(String, Vec<u8>)>>>()
                    .map_err(sql("list nodes"))
            })
            .await?;
        Ok(decode_listing(rows, Node::decode))
    }

    async fn watch_nodes(&self) -> Result<WatchStream<NodeEvent>> {
        self.watch(Topic::Nodes).await
    }

    // ----- tasks -----

    async fn put_task(&self, meta: &TaskMeta, mode: PutMode) -> Result<()> {
        validate_task_name(&meta.name)?;
        let bytes = meta.encode();
        check_value_size(meta, bytes.len(), &self.capabilities())?;
        self.decide_and_apply(
            &meta.name,
            RequestKind::Put(mode),
            Some((meta.clone(), bytes)),
        )
        .await
        .map(drop)
    }

    async fn get_task(&self, name: &str) -> Result<Option<TaskMeta>> {
        let (ns, key) = (self.namespace.clone(), name.to_string());
        let bytes: Option<Vec<u8>> = self
            .run(move |conn| {
                conn.query_row(
                    "SELECT bytes FROM tasks WHERE ns = ?1 AND name = ?2",
                    params![ns, key],
                    |row| row.get(0),
                )
                .optional()
                .map_err(sql("read a task"))
            })
            .await?;
        bytes.map(|b| TaskMeta::decode(name, &b)).transpose()
    }

    async fn list_tasks(&self) -> Result<Listing<TaskMeta>> {
        let ns = self.namespace.clone();
        let rows = self
            .run(move |conn| query_pairs(conn, "SELECT name, bytes FROM tasks WHERE ns = ?1", &ns))
            .await?;
        Ok(decode_listing(rows, TaskMeta::decode))
    }

    async fn watch_tasks(&self) -> Result<WatchStream<TaskMetaEvent>> {
        self.watch(Topic::Tasks).await
    }

    // ----- tombstones -----

    async fn mark_deleted(&self, name: &str, at: DateTime<Utc>) -> Result<()> {
        validate_task_name(name)?;
        self.decide_and_apply(name, RequestKind::MarkDeleted(at), None)
            .await
            .map(drop)
    }

    async fn get_tombstone(&self, name: &str) -> Result<Option<Tombstone>> {
        let (ns, key) = (self.namespace.clone(), name.to_string());
        self.run(move |conn| read_tombstone(conn, &ns, &key)).await
    }

    async fn list_tombstones(&self) -> Result<Listing<Tombstone>> {
        let ns = self.namespace.clone();
        let rows = self
            .run(move |conn| {
                query_pairs(
                    conn,
                    "SELECT name, record FROM tombstones WHERE ns = ?1",
                    &ns,
                )
            })
            .await?;
        Ok(decode_listing(rows, Tombstone::decode))
    }

    async fn clear_tombstone(&self, name: &str) -> Result<()> {
        self.decide_and_apply(name, RequestKind::Reuse, None)
            .await
            .map(drop)
    }

    async fn cleanup_task(&self, name: &str) -> Result<()> {
        self.decide_and_apply(name, RequestKind::Cleanup, None)
            .await
            .map(drop)
    }

    async fn cleanup_all(&self) -> Result<()> {
        let ns = self.namespace.clone();
        self.run(move |conn| {
            let tx = immediate(conn)?;
            let names = |query: &str| -> Result<Vec<String>> {
                let mut stmt = tx.prepare(query).map_err(sql("cleanup"))?;
                let rows = stmt
                    .query_map(params![ns], |row| row.get(0))
                    .map_err(sql("cleanup"))?;
                rows.collect::<rusqlite::Result<_>>()
                    .map_err(sql("cleanup"))
            };
            let tasks = names("SELECT name FROM tasks WHERE ns = ?1")?;
            let tombstones = names("SELECT name FROM tombstones WHERE ns = ?1")?;
            // Claims are kept: they live until their retention ends.
            for table in ["tasks", "tombstones", "lives", "records"] {
                tx.execute(&format!("DELETE FROM {table} WHERE ns = ?1"), params![ns])
                    .map_err(sql("cleanup"))?;
            }
            if tasks.len() + tombstones.len() > WATCH_BUFFER {
                // More than a watcher could buffer anyway: one full list instead.
                log(&tx, &ns, Topic::Tasks, Kind::Resync, "", None)?;
            } else {
                for name in &tasks {
                    log(&tx, &ns, Topic::Tasks, Kind::Delete, name, None)?;
                }
                for name in &tombstones {
                    log(&tx, &ns, Topic::Tasks, Kind::TombstoneCleared, name, None)?;
                }
            }
            commit(tx)
        })
        .await
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
        let (ns, claimant, requests) =
            (self.namespace.clone(), claimant.clone(), requests.to_vec());
        self.run(move |conn| {
            let tx = immediate(conn)?;
            // The registry's clock, read inside the transaction: no writer runs between this
            // check and the claim's write.
            let now = Utc::now();
            let now_ms = now.timestamp_millis();
            tx.execute(
                "DELETE FROM claims WHERE ns = ?1 AND expires_at_ms <= ?2",
                params![ns, now_ms],
            )
            .map_err(sql("purge claims"))?;
            let mut outcomes = Vec::with_capacity(requests.len());
            let mut tombstones: std::collections::HashMap<String, bool> = Default::default();
            let mut lives: std::collections::HashMap<String, Option<Life>> = Default::default();
            for request in &requests {
                let task = &request.fire.task;
                if let Err(e) = validate_task_name(task) {
                    outcomes.push(ClaimOutcome::Failed(e));
                    continue;
                }
                if !tombstones.contains_key(task) {
                    let tombstoned = read_tombstone(&tx, &ns, task)?.is_some();
                    tombstones.insert(task.clone(), tombstoned);
                }
                if !lives.contains_key(task) {
                    let life = read_life(&tx, &ns, task)?.and_then(|(life, generation)| {
                        // Claims only need the generation; a damaged live-since does not stop
                        // them.
                        life.or_else(|| {
                            u64::try_from(generation)
                                .ok()
                                .filter(|g| *g > 0)
                                .map(|g| Life::new(g, DateTime::<Utc>::UNIX_EPOCH))
                        })
                    });
                    lives.insert(task.clone(), life);
                }
                let stored = read_claim(&tx, &ns, task, request.fire.instant_millis());
                let holder = match &stored {
                    Ok(Some((node, epoch, token))) => Some(Holder {
                        node_id: node,
                        epoch: *epoch,
                        token: *token,
                    }),
                    Ok(None) => None,
                    Err(_) => None,
                };
                let decision = decide_claim(
                    tombstones[task],
                    lives[task].as_ref(),
                    holder,
                    Some(now),
                    &claimant,
                    request,
                );
                match (decision, stored) {
                    (ClaimDecision::Answer(outcome), _) => outcomes.push(outcome),
                    // A stored claim that does not read: this fire alone cannot be decided.
                    (ClaimDecision::Write, Err(e)) => outcomes.push(ClaimOutcome::Failed(e)),
                    (ClaimDecision::Write, Ok(_)) => {
                        let token = next_number(&tx, &ns)?;
                        tx.execute(
                            "INSERT INTO claims (ns, task, instant_ms, node, epoch, generation,
                               token, expires_at_ms)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                             ON CONFLICT (ns, task, instant_ms) DO UPDATE SET
                               node = excluded.node, epoch = excluded.epoch,
                               generation = excluded.generation, token = excluded.token,
                               expires_at_ms = excluded.expires_at_ms",
                            params![
                                ns,
                                task,
                                request.fire.instant_millis(),
                                claimant.node_id,
                                i64::try_from(claimant.epoch).unwrap_or(i64::MAX),
                                i64::try_from(request.generation).unwrap_or(i64::MAX),
                                token,
                                now_ms.saturating_add(duration_ms(request.retention).max(1))
                            ],
                        )
                        .map_err(sql("write a claim"))?;
                        outcomes.push(ClaimOutcome::Won {
                            token: u64::try_from(token).unwrap_or(u64::MAX),
                        });
                    }
                }
            }
            commit(tx)?;
            Ok(outcomes)
        })
        .await
    }

    async fn list_claims(&self, task: &str) -> Result<Listing<Claim>> {
        let (ns, task) = (self.namespace.clone(), task.to_string());
        self.run(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT instant_ms, node, epoch, generation, token FROM claims
                     WHERE ns = ?1 AND task = ?2 AND expires_at_ms > ?3",
                )
                .map_err(sql("list claims"))?;
            let rows = stmt
                .query_map(params![ns, task, now_ms()], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, rusqlite::types::Value>(1)?,
                        row.get::<_, rusqlite::types::Value>(2)?,
                        row.get::<_, rusqlite::types::Value>(3)?,
                        row.get::<_, rusqlite::types::Value>(4)?,
                    ))
                })
                .map_err(sql("list claims"))?;
            let mut listing = Listing::default();
            for row in rows {
                let (instant_ms, node, epoch, generation, token) =
                    row.map_err(sql("list claims"))?;
                let key = format!("{task}@{instant_ms}");
                let instant = Utc.timestamp_millis_opt(instant_ms).single();
                let fields = (
                    instant,
                    text(node),
                    unsigned(epoch),
                    unsigned(generation),
                    unsigned(token).filter(|t| *t > 0),
                );
                match fields {
                    (Some(instant), Some(node_id), Some(epoch), Some(generation), Some(token)) => {
                        listing.items.push(Claim {
                            fire: FireKey::new(task.clone(), instant),
                            node_id,
                            epoch,
                            generation,
                            token,
                        })
                    }
                    _ => listing.corrupt.push(CorruptEntry {
                        key,
                        reason: "not a claim (instant, node, epoch, generation, token)".into(),
                    }),
                }
            }
            Ok(listing)
        })
        .await
    }

    // ----- lives -----

    async fn ensure_lives(&self, names: &[(String, DateTime<Utc>)]) -> Result<Vec<Life>> {
        for (name, _) in names {
            validate_task_name(name)?;
        }
        let (ns, names) = (self.namespace.clone(), names.to_vec());
        self.run(move |conn| {
            let tx = immediate(conn)?;
            let mut out = Vec::with_capacity(names.len());
            for (name, at) in &names {
                // A row that does not hold a life is replaced by a new life.
                let life = match read_life(&tx, &ns, name)? {
                    Some((Some(life), _)) => life,
                    _ => start_life(&tx, &ns, name, *at)?,
                };
                out.push(life);
            }
            commit(tx)?;
            Ok(out)
        })
        .await
    }

    async fn restart_life(&self, name: &str, at: DateTime<Utc>) -> Result<Life> {
        validate_task_name(name)?;
        self.decide_and_apply(name, RequestKind::RestartLife(at), None)
            .await?
            .ok_or_else(|| Error::InvalidState(format!("no life for `{name}` after a restart")))
    }

    // ----- records -----

    async fn put_records(&self, kind: RecordKind, records: &[(String, Vec<u8>)]) -> Result<()> {
        check_records(kind, records, &self.capabilities())?;
        if records.is_empty() {
            return Ok(());
        }
        let (ns, records) = (self.namespace.clone(), records.to_vec());
        self.run(move |conn| {
            let tx = immediate(conn)?;
            {
                let mut stmt = tx
                    .prepare_cached(
                        "INSERT INTO records (ns, kind, key, value) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (ns, kind, key) DO UPDATE SET value = excluded.value",
                    )
                    .map_err(sql("write records"))?;
                for (key, value) in &records {
                    stmt.execute(params![ns, kind.as_str(), key, value])
                        .map_err(sql("write records"))?;
                }
            }
            commit(tx)
        })
        .await
    }

    async fn get_record(&self, kind: RecordKind, key: &str) -> Result<Option<Vec<u8>>> {
        check_record_key(kind, key)?;
        let (ns, key) = (self.namespace.clone(), key.to_string());
        self.run(move |conn| {
            conn.query_row(
                "SELECT value FROM records WHERE ns = ?1 AND kind = ?2 AND key = ?3",
                params![ns, kind.as_str(), key],
                |row| row.get(0),
            )
            .optional()
            .map_err(sql("read a record"))
        })
        .await
    }

    async fn list_records(&self, kind: RecordKind) -> Result<Vec<(String, Vec<u8>)>> {
        let ns = self.namespace.clone();
        self.run(move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT key, value FROM records WHERE ns = ?1 AND kind = ?2")
                .map_err(sql("list records"))?;
            let rows = stmt
                .query_map(params![ns, kind.as_str()], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })
                .map_err(sql("list records"))?;
            rows.collect::<rusqlite::Result<_>>()
                .map_err(sql("list records"))
        })
        .await
    }

    async fn delete_record(&self, kind: RecordKind, key: &str) -> Result<bool> {
        check_record_key(kind, key)?;
        let (ns, key) = (self.namespace.clone(), key.to_string());
        self.run(move |conn| {
            // `execute` answers `changes()`: SQLite serializes writers, so of concurrent
            // deleters exactly one removes the row and sees 1.
            let removed = conn
                .execute(
                    "DELETE FROM records WHERE ns = ?1 AND kind = ?2 AND key = ?3",
                    params![ns, kind.as_str(), key],
                )
                .map_err(sql("delete a record"))?;
            Ok(removed == 1)
        })
        .await
    }
}

/// A database file in the temporary directory (`dcron-<uuid>.sqlite`), removed with its WAL
/// companions when dropped: one per test or demo run.
#[derive(Debug)]
pub struct ScratchDatabase(PathBuf);

impl ScratchDatabase {
    /// A fresh, not yet created, database path: in `/dev/shm` where the host has it (a test's
    /// 1 s leases must not wait behind the fsyncs of a machine busy building), else in the
    /// temporary directory.
    pub fn new() -> Self {
        let name = format!("dcron-{}.sqlite", uuid::Uuid::new_v4().simple());
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        ScratchDatabase(dir.join(name))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Default for ScratchDatabase {
    fn default() -> Self {
        ScratchDatabase::new()
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut file = self.0.as_os_str().to_owned();
            file.push(suffix);
            // Absent files are fine: the database may never have been opened.
            let _ = std::fs::remove_file(file);
        }
    }
}
