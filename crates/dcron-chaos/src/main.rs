//! `chaos`: a multi-process chaos run of dcron against a real Redis, etcd, ZooKeeper or
//! PostgreSQL.
//!
//! It starts `--nodes` `chaos-node` processes, each reaching every registry server through its
//! own loopback TCP proxy. For `--seconds` it then, at random (seeded) moments, SIGKILLs a node
//! and restarts it a moment later, cuts one node's proxies for a few seconds (a partition),
//! and, with `--own-server` (Redis and PostgreSQL), kills the registry server and starts it
//! again on the same port and data (Redis: SIGKILL, append-only file with fsync always;
//! PostgreSQL: a cluster `initdb`ed in the work directory, stopped with `pg_ctl stop -m
//! immediate`, i.e. a crash; so claims survive). With `--cluster` (etcd and ZooKeeper) the run
//! starts its own 3-member etcd cluster or 3-server ZooKeeper ensemble on loopback, gives the
//! nodes every member, and every `--member-kill-every` SIGKILLs a member (the leader and a
//! follower in turn, found with etcd's status API or ZooKeeper's `srvr`), restarting it on the
//! same ports and data after about `--member-down`. Then every fault is healed, the cluster
//! settles, the nodes are stopped, and the ledgers are merged:
//!
//! ```text
//! summary backend=<b> seconds=<d> nodes=<k> kills=<n> partitions=<n> registry_restarts=<n> member_kills=<n> leader_kills=<n> fires=<n> duplicates=<n> missed=<n> unexpected=<n> max_failover_ms=<n> max_delay_ms=<n>
//! ```
//!
//! Every fire of every task (each runs every second) from the end of the warm-up to a few
//! seconds before the stop is expected exactly once. A fire that never ran but whose claim the
//! registry still holds for a killed process was lost in flight (the process died between its
//! claim and its handler): reported as `lost_in_flight`, not as missed. `max_delay_ms` is the
//! longest time from a fire's scheduled instant to its handler's start. The exit status is 1 on
//! any duplicate, miss or unexpected fire (and, with `--cluster`, when no leader or no follower
//! was killed), 2 on bad arguments or a failure to run. All traffic stays on loopback; every
//! wait is bounded.
//!
//! ```text
//! chaos --backend redis|etcd|zk|postgres [--seconds 30|2m] [--nodes 3] [--tasks 20]
//!       [--address <registry>] [--own-server | --cluster [--member-kill-every 12s]
//!       [--member-down 4s]] [--seed <n>] [--work-dir <dir>] [--keep]
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use clap::{CommandFactory, Parser};
use dcron_chaos::backend::Backend;
use dcron_chaos::cluster::{Cluster, Role};
use dcron_chaos::ledger::{analyze, read_ledgers, Kill};
use dcron_chaos::proxy::Proxy;
use dcron_chaos::task_names;
use dcron_core::{Error, Result};
use dcron_testkit::sim::SimRng;
use tokio::process::{Child, Command};
use tokio::time::{sleep, Instant};

/// Seconds of warm-up before fires are expected.
const WARMUP: Duration = Duration::from_secs(8);
/// Seconds without faults at the end, before the nodes stop.
const SETTLE: Duration = Duration::from_secs(20);
/// Fires closer than this to the stop are not expected.
const TAIL_MS: i64 = 8_000;

/// A multi-process chaos run of dcron against a real registry; exits 0 only when every fire ran
/// exactly once.
#[derive(Debug, Parser)]
#[command(name = "chaos", version)]
struct Args {
    /// The registry: redis, etcd, zk (zookeeper) or postgres (postgresql).
    #[arg(long)]
    backend: Backend,
    /// How long faults are injected: seconds (`120`) or a duration (`2m`, `90s`), 5 s to 7 days.
    #[arg(long = "seconds", value_name = "DURATION", default_value = "30", value_parser = chaos_span)]
    span: Duration,
    /// How many node processes run.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(2..=16))]
    nodes: u16,
    /// How many tasks (each fires every second).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..=200))]
    tasks: u16,
    /// The registry address (else the backend's `DCRON_TEST_*` variable); etcd and ZooKeeper
    /// take a comma-separated list of members.
    #[arg(long, conflicts_with_all = ["own_server", "cluster"])]
    address: Option<String>,
    /// Run a private server and kill and restart it during the run (redis and postgres).
    #[arg(long, conflicts_with = "cluster")]
    own_server: bool,
    /// Run a private 3-member cluster on loopback and kill and restart its leader and a
    /// follower during the run (etcd and zk).
    #[arg(long)]
    cluster: bool,
    /// With --cluster: the time from one member kill to the next (`12s`, `1m`).
    #[arg(long, value_name = "DURATION", default_value = "12s", value_parser = member_duration)]
    member_kill_every: Duration,
    /// With --cluster: about how long a killed member stays down before its restart (each
    /// time between half and one and a half times this).
    #[arg(long, value_name = "DURATION", default_value = "4s", value_parser = member_duration)]
    member_down: Duration,
    /// The seed of the fault schedule (default: the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Where ledgers and logs go (default: a fresh directory under the temp dir, removed after
    /// a clean run).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Keep the work directory after a clean run.
    #[arg(long)]
    keep: bool,
}

impl Args {
    fn nodes(&self) -> usize {
        usize::from(self.nodes)
    }

    fn tasks(&self) -> usize {
        usize::from(self.tasks)
    }
}

/// `--seconds`: a duration of 5 s to 7 days.
fn chaos_span(text: &str) -> Result<Duration> {
    let d = dcron_chaos::parse_duration(text)?;
    if (Duration::from_secs(5)..=Duration::from_secs(7 * 86_400)).contains(&d) {
        Ok(d)
    } else {
        Err(Error::InvalidArgument(format!(
            "`{text}` is out of range: from 5 s to 7 days"
        )))
    }
}

/// `--member-*`: a duration of 1 s to 1 hour.
fn member_duration(text: &str) -> Result<Duration> {
    let d = dcron_chaos::parse_duration(text)?;
    if (Duration::from_secs(1)..=Duration::from_secs(3_600)).contains(&d) {
        Ok(d)
    } else {
        Err(Error::InvalidArgument(format!(
            "`{text}` is out of range: from 1 s to 1 hour"
        )))
    }
}

/// The arguments, or the process exits with status 2 and clap's message.
fn parse() -> Args {
    let args = Args::parse();
    let conflict = |msg: &str| {
        Args::command()
            .error(clap::error::ErrorKind::ArgumentConflict, msg)
            .exit()
    };
    if args.own_server && !matches!(args.backend, Backend::Redis | Backend::Postgres) {
        conflict("--own-server is supported for redis and postgres only");
    }
    if args.cluster && !matches!(args.backend, Backend::Etcd | Backend::Zk) {
        conflict("--cluster is supported for etcd and zk only");
    }
    args
}

fn io(what: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::InvalidState(format!("{what}: {e}"))
}

/// A private redis-server on a free loopback port, persisted with fsync on every write.
struct OwnRedis {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl OwnRedis {
    async fn start(dir: &Path) -> Result<OwnRedis> {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(io("free port"))?;
            l.local_addr().map_err(io("free port"))?.port()
        };
        let dir = dir.join("redis");
        std::fs::create_dir_all(&dir).map_err(io("redis dir"))?;
        let mut r = OwnRedis {
            port,
            dir,
            child: None,
        };
        r.spawn().await?;
        Ok(r)
    }

    async fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("redis.log"))
            .map_err(io("redis log"))?;
        let child = Command::new("redis-server")
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
            .stdout(Stdio::from(log.try_clone().map_err(io("redis log"))?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .map_err(io("cannot start redis-server"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            sleep(Duration::from_millis(100)).await;
        }
        Err(Error::unavailable(
            "own redis-server did not listen within 15 s",
        ))
    }

    async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(5), c.wait()).await;
        }
    }
}

/// A private PostgreSQL cluster on a free loopback port, `initdb`ed in the work directory (as
/// the `postgres` user when run as root); "killed" with `pg_ctl stop -m immediate`, a crash
/// that loses nothing committed.
struct OwnPostgres {
    port: u16,
    bin: PathBuf,
    data: PathBuf,
    as_postgres: bool,
}

impl OwnPostgres {
    async fn start(dir: &Path) -> Result<OwnPostgres> {
        let bin = postgres_bin().ok_or_else(|| {
            Error::InvalidState(
                "no PostgreSQL binaries: set DCRON_TEST_POSTGRES_BIN or install postgresql".into(),
            )
        })?;
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(io("free port"))?;
            l.local_addr().map_err(io("free port"))?.port()
        };
        let data = dir.join("postgres");
        std::fs::create_dir_all(&data).map_err(io("postgres dir"))?;
        let as_postgres = command_output("id", &["-u"]).await.as_deref() == Some("0");
        if as_postgres {
            let uid = command_output("id", &["-u", "postgres"]).await;
            let gid = command_output("id", &["-g", "postgres"]).await;
            let (Some(uid), Some(gid)) = (
                uid.and_then(|u| u.parse().ok()),
                gid.and_then(|g| g.parse().ok()),
            ) else {
                return Err(Error::InvalidState(
                    "running as root and there is no `postgres` user".into(),
                ));
            };
            std::os::unix::fs::chown(&data, Some(uid), Some(gid)).map_err(io("chown"))?;
        }
        let mut pg = OwnPostgres {
            port,
            bin,
            data,
            as_postgres,
        };
        let data_arg = pg.data.to_string_lossy().to_string();
        pg.run(
            "initdb",
            &[
                "-D",
                &data_arg,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
            ],
        )
        .await?;
        let conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{data_arg}'\nmax_connections = 200\n"
        );
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .open(pg.data.join("postgresql.conf"))
            .and_then(|mut f| f.write_all(conf.as_bytes()))
            .map_err(io("postgresql.conf"))?;
        pg.spawn().await?;
        Ok(pg)
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    async fn run(&self, tool: &str, args: &[&str]) -> Result<()> {
        let path = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        let out = tokio::time::timeout(
            Duration::from_secs(60),
            cmd.args(args).stdin(Stdio::null()).output(),
        )
        .await
        .map_err(|_| Error::unavailable(format!("{tool} did not finish within 60 s")))?
        .map_err(io("running a PostgreSQL tool"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(Error::unavailable(format!(
                "{tool} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )))
        }
    }

    async fn spawn(&mut self) -> Result<()> {
        let data = self.data.to_string_lossy().to_string();
        let log = self.data.join("server.log").to_string_lossy().to_string();
        self.run(
            "pg_ctl",
            &["-D", &data, "-l", &log, "-w", "-t", "30", "start"],
        )
        .await
    }

    async fn kill(&mut self) {
        let data = self.data.to_string_lossy().to_string();
        let _ = self
            .run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"])
            .await;
    }
}

/// The directory of the PostgreSQL binaries: `DCRON_TEST_POSTGRES_BIN`, else the newest
/// `/usr/lib/postgresql/<version>/bin`.
fn postgres_bin() -> Option<PathBuf> {
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

/// The trimmed standard output of a command that succeeded.
async fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().await.ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8(out.stdout)
        .ok()
        .map(|s| s.trim().to_string())
}

/// The registry server a run owns and restarts.
enum OwnServer {
    Redis(OwnRedis),
    Postgres(OwnPostgres),
}

impl OwnServer {
    async fn start(backend: Backend, dir: &Path) -> Result<OwnServer> {
        Ok(match backend {
            Backend::Postgres => OwnServer::Postgres(OwnPostgres::start(dir).await?),
            _ => OwnServer::Redis(OwnRedis::start(dir).await?),
        })
    }

    /// The address the run was "given": the server's own URL.
    fn address(&self) -> String {
        match self {
            OwnServer::Redis(r) => format!("redis://127.0.0.1:{}", r.port),
            OwnServer::Postgres(p) => p.url(),
        }
    }

    async fn kill(&mut self) {
        match self {
            OwnServer::Redis(r) => r.kill().await,
            OwnServer::Postgres(p) => p.kill().await,
        }
    }

    async fn spawn(&mut self) -> Result<()> {
        match self {
            OwnServer::Redis(r) => r.spawn().await,
            OwnServer::Postgres(p) => p.spawn().await,
        }
    }
}

struct NodeProc {
    slot: usize,
    label: String,
    child: Child,
}

struct Run {
    args: Args,
    exe: PathBuf,
    dir: PathBuf,
    namespace: String,
    /// The registry address the run was given (or its own server's or cluster's).
    original: String,
    /// By node slot: one proxy per registry server (per member of a cluster).
    proxies: Vec<Vec<Proxy>>,
    incarnations: Vec<u32>,
    kills: Vec<Kill>,
}

impl Run {
    fn ledger(&self, slot: usize) -> PathBuf {
        self.dir.join(format!("n{slot}.ledger"))
    }

    fn spawn_node(&mut self, slot: usize) -> Result<NodeProc> {
        let inc = self.incarnations[slot];
        self.incarnations[slot] += 1;
        let label = if inc == 0 {
            format!("n{slot}")
        } else {
            format!("n{slot}.{inc}")
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("n{slot}.log")))
            .map_err(io("node log"))?;
        let through: Vec<String> = self.proxies[slot]
            .iter()
            .map(|p| p.addr().to_string())
            .collect();
        let address = self.args.backend.addresses(&through, &self.original);
        let child = Command::new(&self.exe)
            .args(["--backend", &self.args.backend.to_string()])
            .args(["--address", &address, "--namespace", &self.namespace])
            .arg("--ledger")
            .arg(self.ledger(slot))
            .args(["--name", &label, "--tasks", &self.args.tasks.to_string()])
            .args([
                "--max-seconds",
                &(self.args.span.as_secs() + 300).to_string(),
            ])
            .stdout(Stdio::from(log.try_clone().map_err(io("node log"))?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .map_err(io("cannot start chaos-node"))?;
        Ok(NodeProc { slot, label, child })
    }
}

/// The member faults of a `--cluster` run: one member down at a time (a majority always
/// runs), the leader and a follower in turn, each killed only when every member runs and the
/// cluster has a leader.
struct MemberFaults {
    cluster: Cluster,
    every: Duration,
    down: Duration,
    next_kill: Instant,
    leader_next: bool,
    /// The member that is down and when it is restarted.
    down_member: Option<(Instant, usize)>,
    kills: u64,
    leader_kills: u64,
    postponed: bool,
}

impl MemberFaults {
    fn new(cluster: Cluster, args: &Args) -> MemberFaults {
        MemberFaults {
            cluster,
            every: args.member_kill_every,
            down: args.member_down,
            // The first kill comes early, so that even a short run kills a leader.
            next_kill: Instant::now() + args.member_kill_every.min(Duration::from_secs(4)),
            leader_next: true,
            down_member: None,
            kills: 0,
            leader_kills: 0,
            postponed: false,
        }
    }

    /// Restarts the down member when due, else kills the next one when due.
    async fn step(&mut self, rng: &mut SimRng, from_ms: i64) -> Result<()> {
        let now = Instant::now();
        if let Some((at, i)) = self.down_member {
            if at <= now {
                self.cluster.spawn(i)?;
                self.down_member = None;
                println!("chaos: t={:>5.1}s restart member m{i}", secs(from_ms));
            }
            return Ok(());
        }
        if now < self.next_kill {
            return Ok(());
        }
        let roles = self.cluster.roles().await;
        let leaders: Vec<usize> = (0..roles.len())
            .filter(|i| roles[*i] == Some(Role::Leader))
            .collect();
        let followers: Vec<usize> = (0..roles.len())
            .filter(|i| roles[*i] == Some(Role::Follower))
            .collect();
        if leaders.len() != 1 || leaders.len() + followers.len() != self.cluster.len() {
            if !self.postponed {
                println!(
                    "chaos: t={:>5.1}s member kill postponed: the cluster is not whole yet ({})",
                    secs(from_ms),
                    roles_text(&roles)
                );
                self.postponed = true;
            }
            return Ok(());
        }
        self.postponed = false;
        let (victim, role) = if self.leader_next {
            (leaders[0], Role::Leader)
        } else {
            (followers[rng.index(followers.len())], Role::Follower)
        };
        self.cluster.kill(victim).await;
        self.kills += 1;
        if role == Role::Leader {
            self.leader_kills += 1;
        }
        self.leader_next = !self.leader_next;
        let down_ms = ms(self.down);
        let down_ms = rng.range(down_ms / 2, down_ms + down_ms / 2);
        println!(
            "chaos: t={:>5.1}s kill -9 member m{victim} ({role}), down for {down_ms} ms",
            secs(from_ms)
        );
        self.down_member = Some((Instant::now() + Duration::from_millis(down_ms), victim));
        self.next_kill = now + self.every;
        Ok(())
    }

    /// Restarts a down member and waits until the cluster is whole again.
    async fn heal(&mut self) -> Result<()> {
        if let Some((_, i)) = self.down_member.take() {
            self.cluster.spawn(i)?;
        }
        self.cluster
            .wait_formed(Instant::now() + Duration::from_secs(90))
            .await
    }
}

fn roles_text(roles: &[Option<Role>]) -> String {
    roles
        .iter()
        .enumerate()
        .map(|(i, r)| match r {
            Some(r) => format!("m{i}={r}"),
            None => format!("m{i}=down"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whole milliseconds of a (small) duration.
fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

async fn terminate(mut p: NodeProc) {
    if let Some(pid) = p.child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    if tokio::time::timeout(Duration::from_secs(20), p.child.wait())
        .await
        .is_err()
    {
        let _ = p.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), p.child.wait()).await;
    }
}

async fn chaos(args: Args) -> Result<bool> {
    let dir = match &args.work_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!(
            "dcron-chaos-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        )),
    };
    std::fs::create_dir_all(&dir).map_err(io("work dir"))?;
    let exe = std::env::current_exe()
        .map_err(io("own path"))?
        .with_file_name("chaos-node");
    if !exe.exists() {
        return Err(Error::InvalidState(format!(
            "{} not found: build it with `cargo build -p dcron-chaos`",
            exe.display()
        )));
    }
    let mut own = if args.own_server {
        Some(OwnServer::start(args.backend, &dir).await?)
    } else {
        None
    };
    let mut members = if args.cluster {
        let cluster = Cluster::start(args.backend, &dir).await?;
        Some(MemberFaults::new(cluster, &args))
    } else {
        None
    };
    let original = match (&own, &members) {
        (Some(o), _) => o.address(),
        (None, Some(m)) => args.backend.addresses(&m.cluster.endpoints(), ""),
        (None, None) => match &args.address {
            Some(a) => a.clone(),
            None => std::env::var(args.backend.env()).map_err(|_| {
                Error::InvalidArgument(format!(
                    "give --address or set {} (eval \"$(bash scripts/services/{}.sh)\")",
                    args.backend.env(),
                    args.backend
                ))
            })?,
        },
    };
    let upstreams = args.backend.host_ports(&original)?;
    let mut proxies = Vec::new();
    for _ in 0..args.nodes() {
        let mut own_proxies = Vec::new();
        for upstream in &upstreams {
            own_proxies.push(Proxy::start(upstream.clone()).await.map_err(io("proxy"))?);
        }
        proxies.push(own_proxies);
    }
    let namespace = format!("chaos-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let seed = args
        .seed
        .unwrap_or_else(|| Utc::now().timestamp_millis().unsigned_abs());
    println!(
        "chaos: backend={} upstream={} namespace={namespace} seed={seed} work_dir={}",
        args.backend,
        upstreams.join(","),
        dir.display()
    );
    let mut rng = SimRng::new(seed);
    let direct = args.backend.addresses(&upstreams, &original);
    let mut run = Run {
        incarnations: vec![0; args.nodes()],
        args,
        exe,
        dir: dir.clone(),
        namespace,
        original: original.clone(),
        proxies,
        kills: Vec::new(),
    };
    let mut alive: Vec<Option<NodeProc>> = Vec::new();
    for slot in 0..run.args.nodes() {
        alive.push(Some(run.spawn_node(slot)?));
    }
    sleep(WARMUP).await;
    let from_ms = Utc::now().timestamp_millis();
    // Claims are kept only for their retention (about a minute), so a long run records who
    // held each claim as it goes: at the end a fire missed early on can still be told "lost in
    // flight" (its claim was held by a process that was then killed) from "missed".
    let seen_claims: Arc<Mutex<HashMap<(String, i64), String>>> = Arc::default();
    let collector = {
        let seen = seen_claims.clone();
        let backend = run.args.backend;
        let direct = direct.clone();
        let namespace = run.namespace.clone();
        let tasks = task_names(run.args.tasks());
        let rounds = run.args.span.as_secs() / 10 + 60;
        tokio::spawn(async move {
            let mut client = None;
            for _ in 0..rounds {
                sleep(Duration::from_secs(10)).await;
                if client.is_none() {
                    client = backend.connect(&direct, &namespace).await.ok();
                }
                let Some(registry) = client.as_ref() else {
                    continue;
                };
                let mut failed = false;
                for task in &tasks {
                    let Ok(listing) = registry.list_claims(task).await else {
                        failed = true;
                        continue;
                    };
                    let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                    for c in listing.items {
                        seen.insert(
                            (task.clone(), c.fire.instant_millis()),
                            dcron_testkit::sim::node_name(&c.node_id).to_string(),
                        );
                    }
                }
                if failed {
                    // Reconnect at the next round (the server may have been restarted).
                    client = None;
                }
            }
        })
    };
    let chaos_end = Instant::now() + run.args.span;
    let (mut partitions, mut restarts) = (0u64, 0u64);
    let max_events = run.args.span.as_secs(); // at most one event per second of chaos
    let mut events = 0u64;
    let mut pending_restarts: Vec<(Instant, usize)> = Vec::new();
    let mut partition_until: Option<(Instant, usize)> = None;
    let mut last_registry_restart = Instant::now();
    while Instant::now() < chaos_end && events < max_events {
        let wait = Duration::from_millis(rng.range(1_500, 4_000));
        sleep(wait.min(chaos_end.saturating_duration_since(Instant::now()))).await;
        events += 1;
        let now = Instant::now();
        // Due restarts and partition ends.
        let due: Vec<usize> = pending_restarts
            .iter()
            .filter(|(t, _)| *t <= now)
            .map(|(_, s)| *s)
            .collect();
        pending_restarts.retain(|(t, _)| *t > now);
        for slot in due {
            alive[slot] = Some(run.spawn_node(slot)?);
        }
        if let Some((until, slot)) = partition_until {
            if until <= now {
                run.proxies[slot].iter().for_each(Proxy::restore);
                partition_until = None;
            }
        }
        if now >= chaos_end {
            break;
        }
        if let Some(m) = members.as_mut() {
            m.step(&mut rng, from_ms).await?;
        }
        let up: Vec<usize> = (0..alive.len()).filter(|i| alive[*i].is_some()).collect();
        match rng.range(0, 9) {
            0..=4 if up.len() >= 2 => {
                let slot = up[rng.index(up.len())];
                if let Some(mut p) = alive[slot].take() {
                    let _ = p.child.start_kill();
                    let _ = tokio::time::timeout(Duration::from_secs(5), p.child.wait()).await;
                    run.kills.push(Kill {
                        node: p.label.clone(),
                        at_ms: Utc::now().timestamp_millis(),
                    });
                    println!(
                        "chaos: t={:>5.1}s kill -9 {} (slot {})",
                        secs(from_ms),
                        p.label,
                        p.slot
                    );
                    let back = now + Duration::from_millis(rng.range(500, 3_000));
                    pending_restarts.push((back, slot));
                }
            }
            5..=7 if partition_until.is_none() && !up.is_empty() => {
                let slot = up[rng.index(up.len())];
                let ms = rng.range(2_000, 8_000);
                run.proxies[slot].iter().for_each(Proxy::cut);
                partitions += 1;
                println!(
                    "chaos: t={:>5.1}s partition n{slot} for {ms} ms",
                    secs(from_ms)
                );
                partition_until = Some((now + Duration::from_millis(ms), slot));
            }
            8 | 9 => {
                if let Some(o) = own.as_mut() {
                    if now.duration_since(last_registry_restart) >= Duration::from_secs(10) {
                        o.kill().await;
                        sleep(Duration::from_millis(rng.range(200, 1_500))).await;
                        o.spawn().await?;
                        restarts += 1;
                        last_registry_restart = Instant::now();
                        println!(
                            "chaos: t={:>5.1}s registry server killed and restarted",
                            secs(from_ms)
                        );
                    }
                }
            }
            _ => {}
        }
    }
    // Heal: restore the network and the cluster, bring every node back, let the cluster settle.
    for p in run.proxies.iter().flatten() {
        p.restore();
    }
    if let Some(m) = members.as_mut() {
        m.heal().await?;
    }
    for (_, slot) in std::mem::take(&mut pending_restarts) {
        if alive[slot].is_none() {
            alive[slot] = Some(run.spawn_node(slot)?);
        }
    }
    sleep(SETTLE).await;
    let to_ms = Utc::now().timestamp_millis() - TAIL_MS;
    for p in alive.into_iter().flatten() {
        terminate(p).await;
    }
    let ledgers: Vec<PathBuf> = (0..run.args.nodes()).map(|s| run.ledger(s)).collect();
    let (entries, bad_lines) = read_ledgers(&ledgers)?;
    let tasks = task_names(run.args.tasks());
    let registry = run.args.backend.connect(&direct, &run.namespace).await?;
    // Each task's live-since, as the registry recorded it (the first registration by a node).
    let asked: Vec<(String, chrono::DateTime<Utc>)> =
        tasks.iter().map(|t| (t.clone(), Utc::now())).collect();
    let live_since: BTreeMap<String, i64> = registry
        .ensure_lives(&asked)
        .await?
        .into_iter()
        .zip(&tasks)
        .map(|(life, t)| (t.clone(), life.live_since.timestamp_millis()))
        .collect();
    let mut a = analyze(&entries, &tasks, &live_since, from_ms, to_ms, &run.kills);
    // A missed fire whose claim a killed process holds was lost in flight.
    let killed: BTreeSet<&str> = run.kills.iter().map(|k| k.node.as_str()).collect();
    let mut lost = Vec::new();
    let mut still_missed = Vec::new();
    for (task, instant) in std::mem::take(&mut a.missed) {
        let claims = registry
            .list_claims(&task)
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        let holder = claims
            .iter()
            .find(|c| c.fire.instant_millis() == instant)
            .map(|c| dcron_testkit::sim::node_name(&c.node_id).to_string())
            .or_else(|| {
                seen_claims
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&(task.clone(), instant))
                    .cloned()
            });
        match holder {
            Some(h) if killed.contains(h.as_str()) => lost.push((task, instant, h)),
            _ => still_missed.push((task, instant, holder)),
        }
    }
    collector.abort();
    let _ = registry.cleanup_all().await;
    drop(registry);
    if let Some(o) = own.as_mut() {
        o.kill().await;
    }
    let (member_kills, leader_kills) = match members.as_mut() {
        Some(m) => {
            m.cluster.stop().await;
            (m.kills, m.leader_kills)
        }
        None => (0, 0),
    };
    for (t, i) in a.duplicates.iter().take(20) {
        println!("DUPLICATE {t} @ {i}");
    }
    for (t, i, h) in still_missed.iter().take(20) {
        println!("MISSED {t} @ {i} (claim holder: {h:?})");
    }
    for (t, i, h) in lost.iter().take(20) {
        println!("lost in flight: {t} @ {i} (claimed by killed {h})");
    }
    for (t, i, why) in a.unexpected.iter().take(20) {
        println!("UNEXPECTED {t} @ {i}: {why}");
    }
    // A cluster run that never killed a leader or a follower did not test what it claims to.
    let members_faulted = !run.args.cluster || (leader_kills > 0 && member_kills > leader_kills);
    if !members_faulted {
        println!(
            "FAILED: the run killed {leader_kills} leader(s) and {} follower(s); give it more --seconds",
            member_kills - leader_kills
        );
    }
    let max_delay_fire = a
        .max_delay_fire
        .as_ref()
        .map_or_else(|| "none".to_string(), |(t, i)| format!("{t}@{i}"));
    println!(
        "figures expected={} lost_in_flight={} unreadable_lines={bad_lines} window_ms={} max_delay_fire={max_delay_fire}",
        a.expected,
        lost.len(),
        to_ms - from_ms
    );
    println!(
        "summary backend={} seconds={} nodes={} kills={} partitions={partitions} registry_restarts={restarts} member_kills={member_kills} leader_kills={leader_kills} fires={} duplicates={} missed={} unexpected={} max_failover_ms={} max_delay_ms={}",
        run.args.backend,
        run.args.span.as_secs(),
        run.args.nodes,
        run.kills.len(),
        a.fires,
        a.duplicates.len(),
        still_missed.len(),
        a.unexpected.len(),
        a.max_failover_ms,
        a.max_delay_ms
    );
    let clean = a.duplicates.is_empty()
        && still_missed.is_empty()
        && a.unexpected.is_empty()
        && members_faulted;
    if !run.args.keep && clean && run.args.work_dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(clean)
}

fn secs(from_ms: i64) -> f64 {
    (Utc::now().timestamp_millis() - from_ms) as f64 / 1000.0
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = parse();
    // A hard deadline over the whole run: cluster start, chaos, heal, settle, stops, analysis.
    let cluster_time = if args.cluster {
        Duration::from_secs(180)
    } else {
        Duration::ZERO
    };
    let deadline = args.span + WARMUP + SETTLE + Duration::from_secs(180) + cluster_time;
    match tokio::time::timeout(deadline, chaos(args)).await {
        Ok(Ok(true)) => ExitCode::SUCCESS,
        Ok(Ok(false)) => ExitCode::FAILURE,
        Ok(Err(e)) => {
            eprintln!("chaos: {e}");
            ExitCode::from(2)
        }
        Err(_) => {
            eprintln!("chaos: the run overran its deadline of {deadline:?}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flags_scripts_test_passes_parse() {
        let a = Args::try_parse_from(["chaos", "--backend", "zk", "--seconds", "30"]);
        let a = a.map_err(|e| e.to_string());
        assert_eq!(a.as_ref().map(|a| a.span), Ok(Duration::from_secs(30)));
        let a = Args::try_parse_from([
            "chaos",
            "--backend",
            "redis",
            "--own-server",
            "--seconds",
            "30",
        ]);
        assert!(a.is_ok_and(|a| a.own_server && a.backend == Backend::Redis));
        let a = Args::try_parse_from([
            "chaos",
            "--backend",
            "etcd",
            "--cluster",
            "--seconds",
            "2m",
            "--member-down",
            "1500ms",
        ]);
        let a = a.map_err(|e| e.to_string());
        assert_eq!(
            a.as_ref().map(|a| (a.cluster, a.span, a.member_down)),
            Ok((true, Duration::from_secs(120), Duration::from_millis(1500)))
        );
    }

    #[test]
    fn bad_flags_are_refused() {
        for bad in [
            &["chaos", "--seconds", "30"][..],
            &["chaos", "--backend", "mongo"],
            &["chaos", "--backend", "redis", "--seconds", "soon"],
            &["chaos", "--backend", "redis", "--seconds", "1"],
            &["chaos", "--backend", "redis", "--nodes", "1"],
            &["chaos", "--backend", "etcd", "--cluster", "--own-server"],
            &[
                "chaos",
                "--backend",
                "etcd",
                "--cluster",
                "--member-down",
                "0s",
            ],
        ] {
            assert!(Args::try_parse_from(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
