//! Test support: registry factories for the conformance suite and a `redis-server` the harness
//! owns (own port, own directory, AOF on, restartable, killed on drop).

#![allow(dead_code)] // each test file uses a different part of this module

pub mod pki;
pub mod proxy;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use dcron_core::{Error, Lease, Registry, TaskMeta};
use dcron_registry_redis::{RedisKeys, RedisRegistry, RedisRegistryConfig};
use dcron_testkit::{async_trait, Hooks, RawKind, RegistryFactory};
use redis::AsyncCommands;

/// Whether a missing server must fail the test instead of skipping it.
pub fn required() -> bool {
    dcron_testkit::servers_required()
}

/// Prints why a test is skipped, or panics when servers are required.
pub fn skip(reason: &str) {
    assert!(!required(), "{reason} and {}=1", dcron_testkit::REQUIRE_ENV);
    eprintln!("skipped: {reason}");
    println!("skipped: {reason}");
}

/// A task record as a node writes it: `created_at` (its live-since) set to now.
pub fn meta(name: &str, cron: &str) -> TaskMeta {
    let mut meta = TaskMeta::new(name, cron);
    meta.created_at = Some(Utc::now());
    meta
}

#[allow(unused_imports)] // not every test file claims
pub use dcron_testkit::harness::claim_fires;

/// Builds a registry on `url` in `namespace` and checks that the server answers.
pub async fn open(url: &str, namespace: &str) -> dcron_core::Result<RedisRegistry> {
    let reg = RedisRegistryConfig::new(url)
        .namespace(namespace)
        .pool_size(8)
        .build()?;
    reg.ping().await?;
    Ok(reg)
}

/// A raw client connection, for planting values and inspecting keys.
pub async fn raw(url: &str) -> dcron_core::Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url)
        .map_err(|e| Error::InvalidArgument(format!("bad url {url}: {e}")))?;
    tokio::time::timeout(
        Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await
    .map_err(|_| Error::unavailable(format!("connecting to {url} timed out")))?
    .map_err(|e| Error::unavailable(format!("connecting to {url}: {e}")))
}

fn hook_error(e: redis::RedisError) -> Error {
    Error::unavailable(format!("raw redis command: {e}"))
}

/// Stores raw bytes where the registry keeps the record of `name`.
pub async fn write_raw_task(
    url: &str,
    namespace: &str,
    name: &str,
    bytes: &[u8],
) -> dcron_core::Result<()> {
    let mut conn = raw(url).await?;
    let key = RedisKeys::new(namespace, 0).task(name);
    conn.set::<_, _, ()>(key, bytes).await.map_err(hook_error)
}

/// Every kind of value the standalone layout keeps (see `dcron_registry_redis::keys`).
pub const RAW_KINDS: &[RawKind] = &RawKind::ALL;

/// Stores raw bytes as the value of `kind` named `name`, under the standalone layout's key,
/// with the structure the layout gives it (hash fields, TTLs, index entries), so the registry
/// finds it where it looks: every field of a hash gets the bytes.
pub async fn write_raw(
    url: &str,
    namespace: &str,
    kind: RawKind,
    name: &str,
    bytes: &[u8],
) -> dcron_core::Result<()> {
    let keys = RedisKeys::new(namespace, 0);
    let mut conn = raw(url).await?;
    let mut pipe = redis::pipe();
    pipe.atomic();
    match kind {
        RawKind::Node => {
            let key = keys.node(name);
            pipe.cmd("HSET")
                .arg(&key)
                .arg("lease")
                .arg(bytes)
                .arg("node")
                .arg(bytes)
                .arg("ver")
                .arg(bytes)
                .ignore();
            pipe.cmd("PEXPIRE").arg(&key).arg(60_000).ignore();
            pipe.cmd("SADD")
                .arg(keys.node_index())
                .arg(dcron_registry_redis::keys::escape(name))
                .ignore();
        }
        RawKind::Task => {
            pipe.cmd("SET").arg(keys.task(name)).arg(bytes).ignore();
        }
        RawKind::Tombstone => {
            pipe.cmd("SET")
                .arg(keys.tombstone(name))
                .arg(bytes)
                .ignore();
        }
        RawKind::Claim => {
            let millis = dcron_testkit::instant(0).timestamp_millis();
            pipe.cmd("SET")
                .arg(format!("{}{millis}", keys.claim_prefix(name)))
                .arg(bytes)
                .arg("PX")
                .arg(600_000)
                .ignore();
            // Scored far ahead: the index entry outlives the planted value, as after a crash.
            pipe.cmd("ZADD")
                .arg(keys.claim_index(name))
                .arg(i64::MAX / 2)
                .arg(millis)
                .ignore();
        }
        RawKind::Life => {
            pipe.cmd("HSET")
                .arg(keys.life(name))
                .arg("gen")
                .arg(bytes)
                .arg("since_s")
                .arg(bytes)
                .arg("since_ns")
                .arg(bytes)
                .ignore();
        }
        RawKind::Slot => {
            pipe.cmd("HSET")
                .arg(keys.slot(name))
                .arg("lease")
                .arg(bytes)
                .arg("nkey")
                .arg(bytes)
                .arg("rec")
                .arg(bytes)
                .ignore();
        }
        RawKind::Record(kind) => {
            pipe.cmd("HSET")
                .arg(keys.records(kind))
                .arg(name)
                .arg(bytes)
                .ignore();
        }
        _ => {
            return Err(Error::Unsupported {
                operation: "write_raw",
            })
        }
    }
    pipe.query_async::<()>(&mut conn).await.map_err(hook_error)
}

/// Deletes a node's key, as if its TTL had run out.
pub async fn expire_lease(url: &str, namespace: &str, lease: &Lease) -> dcron_core::Result<()> {
    let mut conn = raw(url).await?;
    let key = RedisKeys::new(namespace, 0).node(&lease.node_id);
    conn.del::<_, ()>(key).await.map_err(hook_error)
}

/// The conformance factory on the shared server (`DCRON_TEST_REDIS_URL`).
pub struct SharedServer {
    url: String,
}

impl SharedServer {
    /// The factory for the server named by the environment.
    pub fn new() -> Self {
        SharedServer {
            url: RedisRegistry::env_url(),
        }
    }
}

#[async_trait]
impl RegistryFactory for SharedServer {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn open(&self, namespace: &str) -> dcron_core::Result<Arc<dyn Registry>> {
        Ok(Arc::new(open(&self.url, namespace).await?))
    }

    fn hooks(&self) -> Option<Hooks> {
        Some(
            Hooks::none()
                .with_expire_lease()
                .with_write_raw_task()
                .with_write_raw(RAW_KINDS),
        )
    }

    async fn expire_lease(&self, namespace: &str, lease: &Lease) -> dcron_core::Result<()> {
        expire_lease(&self.url, namespace, lease).await
    }

    async fn write_raw(
        &self,
        namespace: &str,
        kind: RawKind,
        name: &str,
        bytes: &[u8],
    ) -> dcron_core::Result<()> {
        write_raw(&self.url, namespace, kind, name, bytes).await
    }

    async fn write_raw_task(
        &self,
        namespace: &str,
        name: &str,
        bytes: &[u8],
    ) -> dcron_core::Result<()> {
        write_raw_task(&self.url, namespace, name, bytes).await
    }
}

/// The `redis-server` binary: on `PATH`, else `/usr/bin/redis-server`.
pub fn redis_server_binary() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("redis-server"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let fallback = PathBuf::from("/usr/bin/redis-server");
        fallback.is_file().then_some(fallback)
    })
}

/// A `redis-server` started by the test on a free loopback port, with AOF (`appendfsync
/// always`, so a kill loses nothing acknowledged) in its own directory. Killed on drop.
pub struct OwnedServer {
    binary: PathBuf,
    dir: PathBuf,
    port: u16,
    extra: Vec<String>,
    child: Mutex<Option<Child>>,
}

impl OwnedServer {
    /// Starts a server; `extra` are more `redis-server` arguments. `None` (with the reason
    /// printed) when there is no binary or it does not start.
    pub fn start(extra: &[&str]) -> Result<Self, String> {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        OwnedServer::start_with(move |_, _| Ok(extra.clone()))
    }

    /// Starts a server whose extra arguments `args(port, dir)` makes from its port and data
    /// directory (it may write files there first, e.g. certificates).
    pub fn start_with(
        args: impl FnOnce(u16, &Path) -> Result<Vec<String>, String>,
    ) -> Result<Self, String> {
        let binary = redis_server_binary().ok_or("no redis-server binary (PATH or /usr/bin)")?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let dir =
            std::env::temp_dir().join(format!("dcron-redis-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let extra = args(port, &dir)?;
        let server = OwnedServer {
            binary,
            dir,
            port,
            extra,
            child: Mutex::new(None),
        };
        server.spawn()?;
        server.wait_ready(Duration::from_secs(20))?;
        Ok(server)
    }

    fn spawn(&self) -> Result<(), String> {
        let child = Command::new(&self.binary)
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .arg("--dir")
            .arg(&self.dir)
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .args(["--maxmemory-policy", "noeviction", "--daemonize", "no"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.binary.display()))?;
        *self.child.lock().map_err(|_| "poisoned lock")? = Some(child);
        Ok(())
    }

    /// Polls until the port accepts connections (or the deadline passes).
    pub fn wait_ready(&self, within: Duration) -> Result<(), String> {
        let deadline = std::time::Instant::now() + within;
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                return Err(format!(
                    "redis-server on port {} did not start within {within:?}",
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (like a crash) and starts it again on the same port and directory.
    pub fn restart(&self) -> Result<(), String> {
        self.kill();
        self.spawn()
    }

    /// Kills the server and waits for it to exit.
    pub fn kill(&self) {
        if let Ok(mut guard) = self.child.lock() {
            if let Some(mut child) = guard.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for OwnedServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The conformance factory on a harness-owned server: offers `restart_server` (and the raw hooks).
pub struct OwnedFactory {
    server: Result<OwnedServer, String>,
}

impl OwnedFactory {
    /// Starts the factory's own server (a failure shows up as `Unavailable` from `open`).
    pub fn new() -> Self {
        OwnedFactory {
            server: OwnedServer::start(&[]),
        }
    }

    fn url(&self) -> dcron_core::Result<String> {
        self.server
            .as_ref()
            .map(OwnedServer::url)
            .map_err(|e| Error::unavailable(format!("harness redis-server: {e}")))
    }
}

#[async_trait]
impl RegistryFactory for OwnedFactory {
    fn name(&self) -> &'static str {
        "redis (harness-owned server)"
    }

    async fn open(&self, namespace: &str) -> dcron_core::Result<Arc<dyn Registry>> {
        Ok(Arc::new(open(&self.url()?, namespace).await?))
    }

    fn hooks(&self) -> Option<Hooks> {
        Some(
            Hooks::none()
                .with_restart_server()
                .with_expire_lease()
                .with_write_raw_task(),
        )
    }

    async fn restart_server(&self) -> dcron_core::Result<()> {
        let server = self
            .server
            .as_ref()
            .map_err(|e| Error::unavailable(format!("harness redis-server: {e}")))?;
        server.restart().map_err(Error::unavailable)
    }

    async fn expire_lease(&self, namespace: &str, lease: &Lease) -> dcron_core::Result<()> {
        expire_lease(&self.url()?, namespace, lease).await
    }

    async fn write_raw_task(
        &self,
        namespace: &str,
        name: &str,
        bytes: &[u8],
    ) -> dcron_core::Result<()> {
        write_raw_task(&self.url()?, namespace, name, bytes).await
    }
}
