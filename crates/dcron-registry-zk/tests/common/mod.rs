//! Shared test support: factories for the conformance suite, and a ZooKeeper server owned by
//! the test (own port and data directory, killed on drop) for the fault cases.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dcron_core::{Error, Lease, Registry, Result};
use dcron_registry_zk::{ZkRegistry, ZkRegistryConfig};
use dcron_testkit::{async_trait, wait_until, RegistryFactory};
use tokio::process::{Child, Command};
use zookeeper_async::{Acl, CreateMode, ZkError, ZooKeeper};

/// The shared server's connect string.
pub fn shared_connect() -> String {
    std::env::var("DCRON_TEST_ZK_CONNECT")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| "127.0.0.1:2181".to_string())
}

/// Whether an unreachable server must fail the test instead of skipping it.
pub fn required() -> bool {
    dcron_testkit::servers_required()
}

/// The namespace root a test namespace maps to: one path component, escaped one-to-one, so
/// that `ns/tasks`, `ns:tasks` and `ns.tasks` are three distinct siblings of `ns`.
pub fn root_of(namespace: &str) -> String {
    let mut clean = String::new();
    for b in namespace.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            clean.push(b as char);
        } else {
            clean.push_str(&format!("%{b:02X}"));
        }
    }
    format!("/dcron-test/{clean}")
}

/// Connects to the shared server on `namespace`; `None` (after printing why) when it is
/// unreachable and servers are not required.
pub async fn shared_registry(namespace: &str) -> Option<ZkRegistry> {
    shared_registry_with(ZkRegistryConfig::new(shared_connect()).namespace(root_of(namespace)))
        .await
}

/// Like [`shared_registry`] with a full configuration.
pub async fn shared_registry_with(config: ZkRegistryConfig) -> Option<ZkRegistry> {
    match ZkRegistry::connect(config).await {
        Ok(r) => Some(r),
        Err(e @ Error::Unavailable { .. }) if !required() => {
            println!("skipped: no ZooKeeper at {}: {e}", shared_connect());
            None
        }
        Err(e) => panic!("cannot connect to ZooKeeper at {}: {e}", shared_connect()),
    }
}

/// A unique namespace name for one test.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// Writes raw bytes at a znode path (creating it when absent) through a plain client.
pub async fn write_raw(connect: &str, path: &str, bytes: &[u8]) -> Result<()> {
    let zk = ZooKeeper::connect(connect, Duration::from_secs(5), |_| {})
        .await
        .map_err(|e| Error::unavailable(format!("{e:?}")))?;
    let res = write_raw_with(&zk, path, bytes).await;
    let _ = zk.close().await;
    res
}

/// Plants `bytes` as the task record in a state znode (`{header}\n{record}`), keeping the rest
/// of the state (tombstone, life) as it is.
pub async fn write_raw_record(connect: &str, path: &str, bytes: &[u8]) -> Result<()> {
    let zk = ZooKeeper::connect(connect, Duration::from_secs(5), |_| {})
        .await
        .map_err(|e| Error::unavailable(format!("{e:?}")))?;
    let current = zk.get_data(path, false).await.ok().map(|(d, _)| d);
    let mut header = current
        .as_deref()
        .and_then(|d| d.split(|b| *b == b'\n').next())
        .and_then(|line| serde_json::from_slice::<serde_json::Value>(line).ok())
        .filter(|h| h.get("dcron_state").is_some())
        .unwrap_or_else(|| serde_json::json!({ "dcron_state": 1 }));
    header["record"] = serde_json::Value::Bool(true);
    let mut data = serde_json::to_vec(&header).expect("json");
    data.push(b'\n');
    data.extend_from_slice(bytes);
    let res = write_raw_with(&zk, path, &data).await;
    let _ = zk.close().await;
    res
}

/// Every kind of value the ZooKeeper layout keeps. Tombstones and lives are fields of the state
/// znode's header line: the hostile bytes are spliced in as the field's JSON value.
pub const RAW_KINDS: &[dcron_testkit::RawKind] = &dcron_testkit::RawKind::ALL;

/// Plants `bytes` as the value of `kind` named `name` under the layout's znode (a node record
/// as a persistent sequential znode, so it outlives the writer's session; missing parents are
/// created). The names the hostile cases use are plain except for `@`, escaped as `%40`.
pub async fn write_raw_kind(
    connect: &str,
    root: &str,
    kind: dcron_testkit::RawKind,
    name: &str,
    bytes: &[u8],
) -> Result<()> {
    use dcron_testkit::RawKind;
    let escaped = name.replace('@', "%40");
    let header_with = |field: &str| {
        let mut data = format!("{{\"dcron_state\":1,\"{field}\":").into_bytes();
        data.extend_from_slice(bytes);
        data.extend_from_slice(b"}\n");
        data
    };
    let (path, data, mode) = match kind {
        RawKind::Node => (
            format!("{root}/nodes/{escaped}."),
            bytes.to_vec(),
            CreateMode::PersistentSequential,
        ),
        RawKind::Task => {
            return write_raw_record(connect, &format!("{root}/tasks/{escaped}"), bytes).await
        }
        RawKind::Tombstone => (
            format!("{root}/tasks/{escaped}"),
            header_with("tombstone"),
            CreateMode::Persistent,
        ),
        RawKind::Life => (
            format!("{root}/tasks/{escaped}"),
            header_with("life"),
            CreateMode::Persistent,
        ),
        RawKind::Claim => (
            format!(
                "{root}/tasks/{escaped}/{}",
                dcron_testkit::instant(0).timestamp_millis()
            ),
            bytes.to_vec(),
            CreateMode::Persistent,
        ),
        RawKind::Slot => (
            format!("{root}/slots/{escaped}"),
            bytes.to_vec(),
            CreateMode::Persistent,
        ),
        RawKind::Record(kind) => (
            format!("{root}/records/{}/{escaped}", kind.as_str()),
            bytes.to_vec(),
            CreateMode::Persistent,
        ),
        _ => {
            return Err(Error::Unsupported {
                operation: "write_raw",
            })
        }
    };
    let zk = ZooKeeper::connect(connect, Duration::from_secs(5), |_| {})
        .await
        .map_err(|e| Error::unavailable(format!("{e:?}")))?;
    let oversized = data.len() > dcron_registry_zk::MAX_VALUE_BYTES;
    let sequential = matches!(mode, CreateMode::PersistentSequential);
    let res = async {
        // Parents first (each may exist already).
        let parent = path.rsplit_once('/').map_or("", |(p, _)| p);
        let mut at = String::new();
        for part in parent.split('/').filter(|p| !p.is_empty()) {
            at.push('/');
            at.push_str(part);
            let _ = zk
                .create(
                    &at,
                    Vec::new(),
                    Acl::open_unsafe().clone(),
                    CreateMode::Persistent,
                )
                .await;
        }
        if sequential {
            zk.create(&path, data, Acl::open_unsafe().clone(), mode)
                .await
                .map(|_| ())
                .map_err(|e| Error::backend("zookeeper", path.clone(), e))
        } else {
            write_raw_with(&zk, &path, &data).await
        }
    }
    .await;
    let _ = zk.close().await;
    match res {
        // The server's own packet limit (`jute.maxbuffer`) refuses a larger value.
        Err(e) if oversized => Err(Error::InvalidArgument(format!(
            "zookeeper refuses the value: {e}"
        ))),
        other => other,
    }
}

async fn write_raw_with(zk: &ZooKeeper, path: &str, bytes: &[u8]) -> Result<()> {
    let res = match zk.set_data(path, bytes.to_vec(), None).await {
        Err(ZkError::NoNode) => zk
            .create(
                path,
                bytes.to_vec(),
                Acl::open_unsafe().clone(),
                CreateMode::Persistent,
            )
            .await
            .map(|_| ()),
        other => other.map(|_| ()),
    };
    res.map_err(|e| Error::backend("zookeeper", path.to_string(), e))
}

/// A conformance factory on a ZooKeeper at `connect`, optionally owning that server.
pub struct ZkFactory {
    connect: String,
    server: Option<Arc<tokio::sync::Mutex<OwnedServer>>>,
    opened: Mutex<Vec<(String, ZkRegistry)>>,
}

impl ZkFactory {
    /// On the shared server (`DCRON_TEST_ZK_CONNECT`).
    pub fn shared() -> Self {
        ZkFactory {
            connect: shared_connect(),
            server: None,
            opened: Mutex::new(Vec::new()),
        }
    }

    /// On a server this factory starts and owns; `None` when no ZooKeeper can be started here.
    pub async fn owned() -> Option<Self> {
        Self::owned_with(true).await
    }

    /// Like [`ZkFactory::owned`]; `extended_types` says whether the server offers TTL znodes.
    pub async fn owned_with(extended_types: bool) -> Option<Self> {
        let server = OwnedServer::start_with(extended_types).await?;
        Some(ZkFactory {
            connect: server.connect(),
            server: Some(Arc::new(tokio::sync::Mutex::new(server))),
            opened: Mutex::new(Vec::new()),
        })
    }

    fn registries(&self, namespace: &str) -> Vec<ZkRegistry> {
        self.opened
            .lock()
            .map(|o| {
                o.iter()
                    .filter(|(ns, _)| ns == namespace)
                    .map(|(_, r)| r.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[async_trait]
impl RegistryFactory for ZkFactory {
    fn name(&self) -> &'static str {
        "zookeeper"
    }

    async fn open(&self, namespace: &str) -> Result<Arc<dyn Registry>> {
        let config = ZkRegistryConfig::new(self.connect.clone())
            .namespace(root_of(namespace))
            .operation_timeout(Duration::from_secs(3))
            .connect_timeout(Duration::from_secs(3));
        let reg = ZkRegistry::connect(config).await?;
        if let Ok(mut o) = self.opened.lock() {
            o.push((namespace.to_string(), reg.clone()));
        }
        Ok(Arc::new(reg))
    }

    fn hooks(&self) -> Option<dcron_testkit::Hooks> {
        let hooks = dcron_testkit::Hooks::none()
            .with_expire_lease()
            .with_write_raw_task()
            .with_write_raw(RAW_KINDS);
        Some(if self.server.is_some() {
            hooks.with_restart_server()
        } else {
            hooks
        })
    }

    /// ZooKeeper sessions shorter than 2 s are not used (see `MIN_SESSION_TIMEOUT`).
    fn min_ttl(&self) -> Duration {
        Duration::from_secs(2)
    }

    /// Session expiry runs on the server's tick (500 ms here); claims expire by their stored
    /// expiry against the server's clock, whatever the container check interval.
    fn expiry_slack(&self) -> Duration {
        Duration::from_secs(3)
    }

    async fn restart_server(&self) -> Result<()> {
        match &self.server {
            Some(server) => server.lock().await.restart().await,
            None => Err(Error::Unsupported {
                operation: "restart_server",
            }),
        }
    }

    /// Ends the lease's session on the server (the server deletes its ephemeral znode exactly
    /// as on expiry) through the registry that holds it.
    async fn expire_lease(&self, namespace: &str, lease: &Lease) -> Result<()> {
        for reg in self.registries(namespace) {
            if reg.expire_session(lease).await {
                return Ok(());
            }
        }
        Err(Error::NotFound {
            what: "lease",
            name: lease.id.clone(),
        })
    }

    async fn write_raw_task(&self, namespace: &str, name: &str, bytes: &[u8]) -> Result<()> {
        let reg = match self.registries(namespace).into_iter().next() {
            Some(r) => r,
            None => {
                let config =
                    ZkRegistryConfig::new(self.connect.clone()).namespace(root_of(namespace));
                ZkRegistry::connect(config).await?
            }
        };
        write_raw_record(&self.connect, &reg.task_path(name), bytes).await
    }

    async fn write_raw(
        &self,
        namespace: &str,
        kind: dcron_testkit::RawKind,
        name: &str,
        bytes: &[u8],
    ) -> Result<()> {
        let reg = match self.registries(namespace).into_iter().next() {
            Some(r) => r,
            None => {
                let config =
                    ZkRegistryConfig::new(self.connect.clone()).namespace(root_of(namespace));
                ZkRegistry::connect(config).await?
            }
        };
        write_raw_kind(&self.connect, reg.root(), kind, name, bytes).await
    }
}

/// A standalone ZooKeeper started by the test on a free loopback port with its own data
/// directory; killed when dropped.
pub struct OwnedServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    fast_containers: bool,
}

const ZK_JAR: &str = "/usr/share/java/zookeeper.jar";

impl OwnedServer {
    /// Starts a server; `None` (after printing why) when ZooKeeper is not installed and servers
    /// are not required.
    pub async fn start() -> Option<Self> {
        Self::start_with(true).await
    }

    /// Like [`OwnedServer::start`]; `extended_types` says whether TTL znodes are enabled. The
    /// server keeps ZooKeeper's default container check interval (60 s).
    pub async fn start_with(extended_types: bool) -> Option<Self> {
        Self::start_custom(extended_types, false).await
    }

    /// Like [`OwnedServer::start_with`]; `fast_containers` lowers the container (TTL) check
    /// interval to one second.
    pub async fn start_custom(extended_types: bool, fast_containers: bool) -> Option<Self> {
        if !std::path::Path::new(ZK_JAR).exists() {
            if required() {
                panic!("{ZK_JAR} missing: run scripts/services/zk.sh");
            }
            println!("skipped: {ZK_JAR} missing (run scripts/services/zk.sh)");
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let dir =
            std::env::temp_dir().join(format!("dcron-zk-owned-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(dir.join("data")).expect("data dir");
        let cfg = format!(
            "tickTime=500\ndataDir={}\nclientPort={port}\nclientPortAddress=127.0.0.1\n\
             minSessionTimeout=1000\nmaxSessionTimeout=60000\nmaxClientCnxns=0\n\
             extendedTypesEnabled={extended_types}\nadmin.enableServer=false\n\
             4lw.commands.whitelist=ruok,srvr\n",
            dir.join("data").display()
        );
        std::fs::write(dir.join("zoo.cfg"), cfg).expect("zoo.cfg");
        let mut server = OwnedServer {
            port,
            dir,
            child: None,
            fast_containers,
        };
        server.spawn().await.expect("ZooKeeper starts");
        Some(server)
    }

    /// `127.0.0.1:<port>`.
    pub fn connect(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) -> Result<()> {
        let log = std::fs::File::create(self.dir.join("zookeeper.log"))
            .map_err(|e| Error::unavailable(format!("log file: {e}")))?;
        let mut command = Command::new("java");
        command.arg("-Xmx192m");
        if self.fast_containers {
            command
                .arg("-Dznode.container.checkIntervalMs=1000")
                .arg("-Dznode.container.maxPerMinute=6000000");
        }
        let child = command
            .arg("-Dzookeeper.jmx.log4j.disable=true")
            .arg("-cp")
            .arg(ZK_JAR)
            .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
            .arg(self.dir.join("zoo.cfg"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Error::unavailable(format!("cannot start java: {e}")))?;
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        wait_until(
            "the owned ZooKeeper accepts connections",
            Duration::from_secs(60),
            || {
                let addr = addr.clone();
                async move { tokio::net::TcpStream::connect(addr).await.is_ok() }
            },
        )
        .await
        .map_err(|e| Error::unavailable(e.to_string()))
    }

    /// Stops the server (its data is kept) and starts it again on the same port.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await;
        self.spawn().await
    }

    /// Stops the server; its data directory is kept.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }
}

impl Drop for OwnedServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TCP proxy in front of a ZooKeeper, to cut the registry off from the server on demand.
pub struct Proxy {
    port: u16,
    down: Arc<std::sync::atomic::AtomicBool>,
    links: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts forwarding a free loopback port to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let links: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let upstream = upstream.to_string();
        let accept = {
            let (down, links) = (down.clone(), links.clone());
            tokio::spawn(async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if down.load(std::sync::atomic::Ordering::Acquire) {
                        continue; // dropped: the client sees the server as unreachable
                    }
                    let upstream = upstream.clone();
                    let link = tokio::spawn(async move {
                        if let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                    if let Ok(mut l) = links.lock() {
                        l.retain(|h| !h.is_finished());
                        l.push(link);
                    }
                }
            })
        };
        Proxy {
            port,
            down,
            links,
            accept,
        }
    }

    /// The connect string through the proxy.
    pub fn connect(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Cuts every open connection (a connection loss) without refusing new ones.
    pub fn cut(&self) {
        if let Ok(mut l) = self.links.lock() {
            for h in l.drain(..) {
                h.abort();
            }
        }
    }

    /// `true`: cut every connection and drop new ones (the server is unreachable);
    /// `false`: forward again.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::Release);
        if down {
            self.cut();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
