//! Test support: registry factories for the conformance suite and a PostgreSQL server the
//! harness owns (own data directory, own loopback port, restartable, stopped on drop).

#![allow(dead_code)] // each test file uses a different part of this module

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use dcron_core::{Error, Lease, RecordKind, Registry};
use dcron_registry_postgres::{PostgresRegistry, PostgresRegistryConfig, DEFAULT_SCHEMA};
use dcron_testkit::{async_trait, Hooks, RawKind, RegistryFactory};

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

/// A registry on `url` in `namespace` (schema `dcron`), checked to answer.
pub async fn open(url: &str, namespace: &str) -> dcron_core::Result<PostgresRegistry> {
    open_in(url, DEFAULT_SCHEMA, namespace).await
}

/// A registry on `url` in `schema` and `namespace`, with short timeouts.
pub async fn open_in(
    url: &str,
    schema: &str,
    namespace: &str,
) -> dcron_core::Result<PostgresRegistry> {
    PostgresRegistryConfig::new(url)
        .schema(schema)
        .namespace(namespace)
        .pool_size(4)
        .connect_timeout(Duration::from_secs(5))
        .command_timeout(Duration::from_secs(10))
        .connect()
        .await
}

/// A plain client connection, for planting values and inspecting rows.
pub async fn raw(url: &str) -> dcron_core::Result<tokio_postgres::Client> {
    let (client, connection) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_postgres::connect(url, tokio_postgres::NoTls),
    )
    .await
    .map_err(|_| Error::unavailable("raw connect timed out"))?
    .map_err(|e| Error::unavailable(format!("raw connect: {e}")))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

fn hook_error(e: tokio_postgres::Error) -> Error {
    Error::unavailable(format!("raw statement: {e}"))
}

/// Stores raw bytes as the task record of `name`.
pub async fn write_raw_task(
    url: &str,
    namespace: &str,
    name: &str,
    bytes: &[u8],
) -> dcron_core::Result<()> {
    let client = raw(url).await?;
    client
        .execute(
            "INSERT INTO dcron.tasks (ns, name, record, version)
             VALUES ($1, $2, $3, nextval('dcron.versions'))
             ON CONFLICT (ns, name) DO UPDATE SET record = excluded.record",
            &[&namespace, &name, &bytes],
        )
        .await
        .map_err(hook_error)?;
    Ok(())
}

/// The kinds the PostgreSQL layout keeps as bytes: node records, task records and the core's
/// records. Tombstones, lives, claims and slots are typed columns the server checks.
pub const RAW_KINDS: &[RawKind] = &[
    RawKind::Node,
    RawKind::Task,
    RawKind::Record(RecordKind::Pause),
    RawKind::Record(RecordKind::Trigger),
    RawKind::Record(RecordKind::Status),
    RawKind::Record(RecordKind::Life),
];

/// Stores raw bytes as the value of `kind` named `name`, in the row the registry reads (a
/// node row with a lease alive for a minute).
pub async fn write_raw(
    url: &str,
    namespace: &str,
    kind: RawKind,
    name: &str,
    bytes: &[u8],
) -> dcron_core::Result<()> {
    let client = raw(url).await?;
    let statement = match kind {
        RawKind::Task => return write_raw_task(url, namespace, name, bytes).await,
        RawKind::Node => {
            "INSERT INTO dcron.nodes (ns, node_id, lease_id, ttl_us, expires_at, record, version)
             VALUES ($1, $2, 'hostile-lease', 60000000, now() + interval '60 seconds', $3,
                     nextval('dcron.versions'))
             ON CONFLICT (ns, node_id) DO UPDATE SET record = excluded.record"
        }
        RawKind::Record(kind) => {
            client
                .execute(
                    "INSERT INTO dcron.records (ns, kind, key, value) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (ns, kind, key) DO UPDATE SET value = excluded.value",
                    &[&namespace, &kind.as_str(), &name, &bytes],
                )
                .await
                .map_err(hook_error)?;
            return Ok(());
        }
        _ => {
            return Err(Error::Unsupported {
                operation: "write_raw",
            })
        }
    };
    client
        .execute(statement, &[&namespace, &name, &bytes])
        .await
        .map_err(hook_error)?;
    Ok(())
}

/// Ends a lease now, as if its TTL had run out on the server.
pub async fn expire_lease(url: &str, namespace: &str, lease: &Lease) -> dcron_core::Result<()> {
    let client = raw(url).await?;
    client
        .execute(
            "UPDATE dcron.nodes SET expires_at = now() - interval '1 millisecond'
             WHERE ns = $1 AND node_id = $2 AND lease_id = $3",
            &[&namespace, &lease.node_id, &lease.id],
        )
        .await
        .map_err(hook_error)?;
    Ok(())
}

/// The conformance factory on the shared server (`DCRON_TEST_POSTGRES_URL`).
pub struct SharedServer {
    url: String,
}

impl SharedServer {
    /// The factory for the server named by the environment.
    pub fn new() -> Self {
        SharedServer {
            url: PostgresRegistry::env_url(),
        }
    }

    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.url
    }
}

#[async_trait]
impl RegistryFactory for SharedServer {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn hooks(&self) -> Option<Hooks> {
        Some(
            Hooks::none()
                .with_expire_lease()
                .with_write_raw_task()
                .with_write_raw(RAW_KINDS),
        )
    }

    async fn open(&self, namespace: &str) -> dcron_core::Result<Arc<dyn Registry>> {
        Ok(Arc::new(open(&self.url, namespace).await?))
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

    async fn expire_lease(&self, namespace: &str, lease: &Lease) -> dcron_core::Result<()> {
        expire_lease(&self.url, namespace, lease).await
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

/// The directory of the PostgreSQL binaries: `DCRON_TEST_POSTGRES_BIN`, else the newest
/// `/usr/lib/postgresql/<version>/bin` with `initdb`.
pub fn postgres_bin() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DCRON_TEST_POSTGRES_BIN") {
        let dir = PathBuf::from(dir);
        if dir.join("initdb").is_file() {
            return Some(dir);
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .is_some_and(|s| s.trim() == "0")
}

/// `(uid, gid)` of the `postgres` user.
fn postgres_ids() -> Option<(u32, u32)> {
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, "postgres"]).output().ok()?;
        String::from_utf8(out.stdout).ok()?.trim().parse().ok()
    };
    Some((id("-u")?, id("-g")?))
}

/// A PostgreSQL server started by the test on a free loopback port, in a data directory of its
/// own (as the `postgres` user when the test runs as root). Stopped and removed on drop.
pub struct OwnedServer {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl OwnedServer {
    /// Initialises and starts a server; `conf` lines are appended to `postgresql.conf` (with
    /// `{dir}` replaced by the data directory) and `files` (name, contents, mode) are written
    /// into the data directory first.
    pub fn start(conf: &[String], files: &[(&str, &[u8], u32)]) -> Result<Self, String> {
        let bin = postgres_bin().ok_or("no PostgreSQL binaries (DCRON_TEST_POSTGRES_BIN)")?;
        let as_postgres = running_as_root();
        let ids = if as_postgres {
            Some(postgres_ids().ok_or("running as root and there is no `postgres` user")?)
        } else {
            None
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let dir = std::env::temp_dir().join(format!("dcron-pg-{}", uuid::Uuid::new_v4().simple()));
        let server = OwnedServer {
            bin,
            dir,
            port,
            as_postgres,
        };
        server.run(
            "initdb",
            &[
                "-D",
                &server.dir.to_string_lossy(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )?;
        let mut settings = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\nfsync = off\nmax_connections = 200\n",
            server.dir.display()
        );
        for line in conf {
            settings.push_str(&line.replace("{dir}", &server.dir.to_string_lossy()));
            settings.push('\n');
        }
        append(&server.dir.join("postgresql.conf"), &settings)?;
        for (name, contents, mode) in files {
            let path = server.dir.join(name);
            std::fs::write(&path, contents).map_err(|e| format!("writing {name}: {e}"))?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode))
                    .map_err(|e| format!("chmod {name}: {e}"))?;
                if let Some((uid, gid)) = ids {
                    std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                        .map_err(|e| format!("chown {name}: {e}"))?;
                }
            }
        }
        server.pg_ctl_start()?;
        Ok(server)
    }

    fn command(&self, tool: &str) -> Command {
        let path = self.bin.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<(), String> {
        let out = self
            .command(tool)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running {tool}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{tool} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    fn pg_ctl_start(&self) -> Result<(), String> {
        let dir = self.dir.to_string_lossy().to_string();
        let log = self.dir.join("server.log").to_string_lossy().to_string();
        self.run(
            "pg_ctl",
            &["-D", &dir, "-l", &log, "-w", "-t", "60", "start"],
        )
        .map_err(|e| format!("{e}\n{}", self.log_tail()))
    }

    /// Runs SQL as the superuser over the server's Unix socket.
    pub fn psql(&self, sql: &str) -> Result<(), String> {
        let dir = self.dir.to_string_lossy().to_string();
        let port = self.port.to_string();
        self.run(
            "psql",
            &[
                "-h",
                &dir,
                "-p",
                &port,
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ],
        )
    }

    /// The end of the server log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Stops the server at once, like a crash (`pg_ctl stop -m immediate`).
    pub fn kill(&self) -> Result<(), String> {
        let dir = self.dir.to_string_lossy().to_string();
        self.run("pg_ctl", &["-D", &dir, "-m", "immediate", "-w", "stop"])
    }

    /// Starts the server again after [`OwnedServer::kill`].
    pub fn start_again(&self) -> Result<(), String> {
        self.pg_ctl_start()
    }

    /// Kills the server and starts it again on the same port and data.
    pub fn restart(&self) -> Result<(), String> {
        self.kill()?;
        self.pg_ctl_start()
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
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

fn append(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| format!("opening {}: {e}", path.display()))?;
    f.write_all(text.as_bytes())
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

impl Drop for OwnedServer {
    fn drop(&mut self) {
        let _ = self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The conformance factory on a harness-owned server: offers `restart_server` and the raw
/// hooks.
pub struct OwnedFactory {
    server: Result<OwnedServer, String>,
}

impl OwnedFactory {
    /// Starts the factory's own server (a failure shows up as `Unavailable` from `open`).
    pub fn new() -> Self {
        OwnedFactory {
            server: OwnedServer::start(&[], &[]),
        }
    }

    fn url(&self) -> dcron_core::Result<String> {
        self.server
            .as_ref()
            .map(OwnedServer::url)
            .map_err(|e| Error::unavailable(format!("harness PostgreSQL: {e}")))
    }
}

#[async_trait]
impl RegistryFactory for OwnedFactory {
    fn name(&self) -> &'static str {
        "postgres (harness-owned server)"
    }

    fn hooks(&self) -> Option<Hooks> {
        Some(
            Hooks::none()
                .with_restart_server()
                .with_expire_lease()
                .with_write_raw_task(),
        )
    }

    async fn open(&self, namespace: &str) -> dcron_core::Result<Arc<dyn Registry>> {
        Ok(Arc::new(open(&self.url()?, namespace).await?))
    }

    async fn restart_server(&self) -> dcron_core::Result<()> {
        let server = self
            .server
            .as_ref()
            .map_err(|e| Error::unavailable(format!("harness PostgreSQL: {e}")))?;
        let server_ref: &OwnedServer = server;
        // pg_ctl blocks; the suite's runtime has two workers.
        tokio::task::block_in_place(|| server_ref.restart()).map_err(Error::unavailable)
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
