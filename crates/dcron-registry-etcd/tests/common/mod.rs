//! Shared test support: the shared server from the environment, the skip-or-fail rule, and etcd
//! servers owned by a test (own ports, own data directory, killed on drop).
#![allow(dead_code)] // each test binary uses a part of it

pub mod pki;
pub mod proxy;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use dcron_core::{Error, FireKey, Lease, TaskMeta};
use dcron_registry_etcd::{EtcdRegistry, EtcdRegistryConfig, EtcdTls};

/// Whether `DCRON_TEST_REQUIRE=1`: a missing server fails instead of skipping.
pub fn required() -> bool {
    std::env::var("DCRON_TEST_REQUIRE").is_ok_and(|v| v.trim() == "1")
}

/// Skips (prints and answers `None`) or, under `DCRON_TEST_REQUIRE=1`, fails the test.
pub fn skip<T>(test: &str, reason: impl std::fmt::Display) -> Option<T> {
    if required() {
        panic!("{test}: {reason} and DCRON_TEST_REQUIRE=1");
    }
    println!("{test}: skipped: {reason}");
    eprintln!("{test}: skipped: {reason}");
    None
}

/// A task record as a node writes it: `created_at` (its live-since) set, to a fixed instant so
/// that records built apart compare equal.
pub fn meta(name: impl Into<String>, cron: &str) -> TaskMeta {
    let mut meta = TaskMeta::new(name, cron);
    meta.created_at = Some(live_since());
    meta
}

/// The live-since of [`meta`]'s records: 2030-01-01T00:00:00Z.
pub fn live_since() -> DateTime<Utc> {
    Utc.timestamp_opt(1_893_456_000, 0)
        .single()
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

#[allow(unused_imports)] // not every test file claims
pub use dcron_testkit::harness::claim_fires;

/// etcd grants leases of at least 2 s (its minimum TTL with the default timing), in whole seconds.
pub const MIN_TTL: Duration = Duration::from_secs(2);

/// Revokes a lease from outside, as if the server had timed it out.
pub async fn revoke(reg: &EtcdRegistry, lease: &Lease) -> dcron_core::Result<()> {
    let id: i64 = lease
        .id
        .parse()
        .map_err(|_| Error::InvalidArgument(format!("not an etcd lease id: {}", lease.id)))?;
    match reg.client().clone().lease_revoke(id).await {
        Ok(_) => Ok(()),
        Err(e) if e.to_string().contains("lease not found") => Ok(()),
        Err(e) => Err(Error::backend("etcd", "revoke lease", e)),
    }
}

/// Stores raw bytes where the registry keeps the record of `name`.
pub async fn raw_put(reg: &EtcdRegistry, name: &str, bytes: &[u8]) -> dcron_core::Result<()> {
    reg.client()
        .clone()
        .put(reg.task_key(name), bytes.to_vec(), None)
        .await
        .map(|_| ())
        .map_err(|e| Error::backend("etcd", "raw put", e))
}

/// Every kind of value the etcd layout keeps (see the crate's `keys` module).
pub const RAW_KINDS: &[dcron_testkit::RawKind] = &dcron_testkit::RawKind::ALL;

/// Stores raw bytes as the value of `kind` named `name` under the layout's key (without the
/// lease a node, claim or slot key is normally attached to; `cleanup_all` removes them). The
/// names the hostile cases use are plain, so their escaped form is the name itself.
pub async fn raw_write(
    reg: &EtcdRegistry,
    kind: dcron_testkit::RawKind,
    name: &str,
    bytes: &[u8],
) -> dcron_core::Result<()> {
    use dcron_testkit::RawKind;
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
    {
        return Err(Error::InvalidArgument(format!(
            "raw_write takes plain names only: {name:?}"
        )));
    }
    let task_key = reg.task_key("x");
    let root = task_key.strip_suffix("tasks/x").unwrap_or(&task_key);
    let key = match kind {
        RawKind::Node => format!("{root}nodes/{name}"),
        RawKind::Task => format!("{root}tasks/{name}"),
        RawKind::Tombstone => format!("{root}tombstones/{name}"),
        RawKind::Claim => format!(
            "{root}claims/{name}/{}",
            dcron_testkit::instant(0).timestamp_millis()
        ),
        RawKind::Life => format!("{root}lives/{name}"),
        RawKind::Slot => format!("{root}slots/{name}"),
        RawKind::Record(kind) => format!("{root}records/{}/{name}", kind.as_str()),
        _ => {
            return Err(Error::Unsupported {
                operation: "write_raw",
            })
        }
    };
    match reg.client().clone().put(key, bytes.to_vec(), None).await {
        Ok(_) => Ok(()),
        // The server's own request limit (`--max-request-bytes`).
        Err(e) if e.to_string().contains("too large") => Err(Error::InvalidArgument(format!(
            "etcd refuses the value: {e}"
        ))),
        Err(e) => Err(Error::backend("etcd", "raw put", e)),
    }
}

/// A namespace nobody else uses.
pub fn fresh_namespace(test: &str) -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("dcron-etcd-test-{test}-{}", &random[..8])
}

/// A client of the shared server on a fresh namespace, or `None` (skip) when it is unreachable.
pub async fn shared(test: &str) -> Option<EtcdRegistry> {
    shared_in(test, &fresh_namespace(test)).await
}

/// A client of the shared server on `namespace`, or `None` (skip) when it is unreachable.
pub async fn shared_in(test: &str, namespace: &str) -> Option<EtcdRegistry> {
    match EtcdRegistryConfig::from_env()
        .namespace(namespace)
        .connect()
        .await
    {
        Ok(reg) => Some(reg),
        Err(e @ Error::Unavailable { .. }) => skip(test, format!("etcd unreachable: {e}")),
        Err(e) => panic!("{test}: connecting to the shared etcd failed: {e}"),
    }
}

/// The etcd binary: `DCRON_TEST_ETCD_BIN`, else `etcd` on the `PATH`, else `/usr/bin/etcd`.
pub fn etcd_binary() -> Option<PathBuf> {
    if let Ok(bin) = std::env::var("DCRON_TEST_ETCD_BIN") {
        let path = PathBuf::from(bin);
        return path.is_file().then_some(path);
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("etcd");
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    let fallback = PathBuf::from("/usr/bin/etcd");
    fallback.is_file().then_some(fallback)
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// An etcd server owned by one test: its own ports and data directory, killed (and the
/// directory removed) on drop.
pub struct OwnedEtcd {
    binary: PathBuf,
    dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    extra: Vec<String>,
    /// Client TLS settings when the server serves its clients over TLS.
    tls: Option<EtcdTls>,
    child: std::sync::Mutex<Option<Child>>,
}

impl std::fmt::Debug for OwnedEtcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnedEtcd")
            .field("endpoint", &self.endpoint())
            .field("dir", &self.dir)
            .finish()
    }
}

impl OwnedEtcd {
    /// Starts a server and waits until it answers; `None` (skip) when there is no etcd binary.
    pub async fn start(test: &str) -> Option<OwnedEtcd> {
        OwnedEtcd::start_with(test, &[]).await
    }

    /// [`OwnedEtcd::start`] with more `etcd` arguments (e.g. `--max-txn-ops`).
    pub async fn start_with(test: &str, extra: &[&str]) -> Option<OwnedEtcd> {
        OwnedEtcd::start_full(test, extra, None).await
    }

    /// A server that serves its clients over TLS only, with `pki`'s server certificate, and
    /// requires client certificates signed by `pki`'s CA (`--client-cert-auth`). Its
    /// [`OwnedEtcd::config`] carries the CA and the client certificate.
    pub async fn start_tls(test: &str, pki: &pki::Pki) -> Option<OwnedEtcd> {
        let tls = EtcdTls::new()
            .ca_pem(pki.ca_pem.as_bytes())
            .client_identity(pki.client_cert.as_bytes(), pki.client_key.as_bytes());
        OwnedEtcd::start_full(test, &[], Some((pki, tls))).await
    }

    async fn start_full(
        test: &str,
        extra: &[&str],
        tls: Option<(&pki::Pki, EtcdTls)>,
    ) -> Option<OwnedEtcd> {
        let Some(binary) = etcd_binary() else {
            return skip(
                test,
                "no etcd binary (set DCRON_TEST_ETCD_BIN or install etcd-server)",
            );
        };
        let base = std::env::var("DCRON_STATE_DIR").unwrap_or_else(|_| "/tmp/dcron-test".into());
        let dir = PathBuf::from(base).join(format!(
            "etcd-owned-{test}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        std::fs::create_dir_all(&dir).expect("create the data directory");
        let mut extra: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
        let tls = tls.map(|(pki, tls)| {
            for (name, text, flag) in [
                ("server.crt", &pki.server_cert, "--cert-file"),
                ("server.key", &pki.server_key, "--key-file"),
                ("ca.crt", &pki.ca_pem, "--trusted-ca-file"),
            ] {
                let path = dir.join(name);
                std::fs::write(&path, text).expect("write a certificate file");
                extra.push(format!("{flag}={}", path.display()));
            }
            extra.push("--client-cert-auth".into());
            tls
        });
        let server = OwnedEtcd {
            binary,
            dir,
            client_port: free_port().expect("a free port"),
            peer_port: free_port().expect("a free port"),
            extra,
            tls,
            child: std::sync::Mutex::new(None),
        };
        server.spawn();
        server.wait_ready().await;
        Some(server)
    }

    /// `127.0.0.1:<client port>`.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// A configuration for this server on `namespace`, with short timeouts.
    pub fn config(&self, namespace: &str) -> EtcdRegistryConfig {
        let config = self.config_without_tls(namespace);
        match &self.tls {
            Some(tls) => config.tls(tls.clone()),
            None => config,
        }
    }

    /// [`OwnedEtcd::config`] without the server's TLS settings (a TLS server needs others).
    pub fn config_without_tls(&self, namespace: &str) -> EtcdRegistryConfig {
        EtcdRegistryConfig::new([self.endpoint()])
            .namespace(namespace)
            .connect_timeout(Duration::from_secs(2))
            .request_timeout(Duration::from_secs(5))
    }

    fn spawn(&self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))
            .expect("open the log");
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new(&self.binary)
            .arg("--name")
            .arg("owned")
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("owned={peer}"))
            .arg("--initial-cluster-state")
            .arg("new")
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .expect("start etcd");
        *self.child.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
    }

    fn kill(&self) {
        if let Some(mut child) = self.child.lock().unwrap_or_else(|p| p.into_inner()).take() {
            // SIGKILL also ends a stopped (frozen) process.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn wait_ready(&self) {
        let endpoint = self.endpoint();
        let ready =
            dcron_testkit::wait_until("the owned etcd answers", Duration::from_secs(30), || {
                let config = self
                    .config("ready")
                    .connect_timeout(Duration::from_millis(500))
                    .request_timeout(Duration::from_secs(1));
                async move {
                    match config.connect().await {
                        Ok(_) => true,
                        // An auth-enabled server refuses anonymous requests: it is up.
                        Err(Error::AccessDenied(_)) => true,
                        Err(_) => false,
                    }
                }
            })
            .await;
        if let Err(e) = ready {
            panic!(
                "{e}: the owned etcd at {endpoint}; see {}",
                self.dir.join("etcd.log").display()
            );
        }
    }

    /// Sends `signal` (`STOP`, `CONT`) to the server process with `kill`.
    pub fn signal(&self, signal: &str) {
        let pid = self
            .child
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(Child::id)
            .expect("the server runs");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {pid} failed");
    }

    /// Kills the server (like a crash) and starts it again on the same ports and data; returns
    /// once the process runs (callers poll the registry until it answers).
    pub fn restart(&self) {
        self.kill();
        self.spawn();
    }

    /// Kills the server and starts it again, then waits until it answers.
    pub async fn restart_and_wait(&self) {
        self.restart();
        self.wait_ready().await;
    }
}

impl Drop for OwnedEtcd {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The fire of `task` `offset_ms` after a fixed instant in 2030.
pub fn fire(task: &str, offset_ms: i64) -> FireKey {
    FireKey::new(
        task,
        Utc.timestamp_millis_opt(1_893_456_000_000 + offset_ms)
            .single()
            .expect("valid instant"),
    )
}
