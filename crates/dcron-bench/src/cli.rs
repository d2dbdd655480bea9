//! Command-line parsing (clap derive): every argument is checked, and bad input is a
//! [`UsageError`] with a clear message, never a panic.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// The text after the command list of `dcron-bench help`.
const AFTER_HELP: &str = "\
Each command prints `summary key=value ...` lines. Addresses default to $DCRON_TEST_REDIS_URL,
$DCRON_TEST_ETCD_ENDPOINTS, $DCRON_TEST_ZK_CONNECT and $DCRON_TEST_POSTGRES_URL (or the local
default port); etcd, zk and postgres need a build with `--features etcd|zk|postgres`. Consul is
not measured: no real Consul agent is available here, and a figure taken on the test double
would say nothing.";

/// `dcron-bench`: whole-system benchmark runs.
#[derive(Debug, Parser)]
#[command(name = "dcron-bench", about, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// What to run.
#[derive(Clone, Debug, PartialEq, Subcommand)]
pub enum Command {
    /// n every-second tasks on one node (MemoryRegistry), then the same workload on
    /// tokio-cron-scheduler and on bare tokio timers (one task per job, the floor), each in a
    /// child process; then the ratios.
    Latency(LatencyArgs),
    /// One system in this process (internal: `latency` runs it as a child).
    #[command(hide = true)]
    LatencyChild(ChildArgs),
    /// k nodes on one Redis server.
    Redis(RedisArgs),
    /// One node with n tasks: start time, memory per task, steady CPU.
    Scale(ScaleArgs),
    /// 3 nodes; the owner of task 0 dies; time to the next fire elsewhere, missed fires.
    Failover(FailoverArgs),
    /// The largest burst (fires in one instant on one node) held with p99 lateness <= 50 ms
    /// (a doubling search from 256, within the budget), beside the raw speed of the same
    /// server with the same client crate doing the backend's bare primitive (redis pipelined
    /// SET NX PX, etcd txn puts, zk create, postgres batched INSERT into a scratch table).
    Registry(RegistryArgs),
}

/// The registries `registry` measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegistryBackend {
    /// A Redis server.
    Redis,
    /// A Redis Cluster (the registry's cluster layout; seed URLs comma-separated).
    RedisCluster,
    /// An etcd cluster (feature `etcd`).
    Etcd,
    /// A ZooKeeper ensemble (feature `zk`).
    Zk,
    /// A PostgreSQL server (feature `postgres`).
    Postgres,
}

impl RegistryBackend {
    /// The name used on the command line and in summaries.
    pub fn name(self) -> &'static str {
        match self {
            RegistryBackend::Redis => "redis",
            RegistryBackend::RedisCluster => "redis-cluster",
            RegistryBackend::Etcd => "etcd",
            RegistryBackend::Zk => "zk",
            RegistryBackend::Postgres => "postgres",
        }
    }

    fn parse(text: &str) -> Result<Self, String> {
        match text {
            "redis" => Ok(RegistryBackend::Redis),
            "redis-cluster" => Ok(RegistryBackend::RedisCluster),
            "etcd" => Ok(RegistryBackend::Etcd),
            "zk" | "zookeeper" => Ok(RegistryBackend::Zk),
            "postgres" | "postgresql" => Ok(RegistryBackend::Postgres),
            "consul" => Err(
                "consul is not measured: no real Consul agent is available here, \
                             and a figure taken on the test double would say nothing"
                    .into(),
            ),
            other => Err(format!(
                "unknown backend `{other}`; use redis, redis-cluster, etcd, zk or postgres"
            )),
        }
    }

    /// Whether the backend is Redis (one server or a cluster): `registry` then also measures
    /// the burst of goal 3 against the memory registry.
    pub fn is_redis(self) -> bool {
        matches!(self, RegistryBackend::Redis | RegistryBackend::RedisCluster)
    }
}

/// Arguments of `registry`.
#[derive(Clone, Debug, PartialEq, Args)]
pub struct RegistryArgs {
    /// The registry: redis, redis-cluster, etcd, zk or postgres.
    #[arg(long, value_parser = RegistryBackend::parse)]
    pub backend: RegistryBackend,
    /// The server address (Redis URL, Redis Cluster seed URLs separated by commas, etcd
    /// endpoint, ZooKeeper connect string, PostgreSQL URL).
    #[arg(long, value_parser = non_empty)]
    pub url: Option<String>,
    /// The whole run's time budget: the search stops doubling once it is half spent, and
    /// the raw measurement takes a bounded slice of the rest.
    #[arg(long = "seconds", value_name = "SECONDS", default_value = "60", value_parser = seconds_in(20, 600))]
    pub budget: Duration,
    /// The largest burst tried.
    #[arg(long, default_value_t = 65_536, value_parser = count_in(256, 1_048_576))]
    pub max_burst: usize,
    /// Redis only: the fires of the one-instant burst measured after the search, on the
    /// backend and on the memory registry (`summary run=registry-burst`); 0 skips it.
    #[arg(long, default_value_t = 20_000, value_parser = count_in(0, 1_048_576))]
    pub burst_fires: usize,
    /// dcron's `claim_ahead` in milliseconds for every node of the run (default: dcron's own
    /// default, [`dcron_core::DEFAULT_CLAIM_AHEAD`]).
    #[arg(long, default_value_t = default_claim_ahead_ms(), value_parser = number_in(0, 5_000))]
    pub claim_ahead_ms: u64,
    /// Where to write the SVG plots: `<path>` gets claimed fires/s against the burst size
    /// (with the raw primitive), and, for Redis, `<stem>-burst.svg` the lateness CDF of the
    /// burst on the backend and on the memory registry.
    #[arg(long, value_parser = non_empty_path)]
    pub plot: Option<PathBuf>,
}

/// Arguments of `latency`.
#[derive(Clone, Debug, PartialEq, Args)]
pub struct LatencyArgs {
    /// Tasks, each firing every second.
    #[arg(long, value_parser = count_in(1, MAX_TASKS))]
    pub tasks: usize,
    /// Seconds measured per system.
    #[arg(long, value_parser = number_in(1, MAX_SECONDS))]
    pub seconds: u64,
    /// Where to write the SVG plot of both lateness distributions.
    #[arg(long, value_parser = non_empty_path)]
    pub plot: Option<PathBuf>,
    /// dcron's `claim_ahead` in milliseconds (default: dcron's own default,
    /// [`dcron_core::DEFAULT_CLAIM_AHEAD`]; 0 claims at the instant).
    #[arg(long, default_value_t = default_claim_ahead_ms(), value_parser = number_in(0, 1000))]
    pub claim_ahead_ms: u64,
}

/// The systems `latency` compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum System {
    /// dcron on `MemoryRegistry`.
    Dcron,
    /// tokio-cron-scheduler with its in-memory store.
    TokioCronScheduler,
    /// No scheduler: one tokio task per job, each sleeping on tokio's timer until the next
    /// whole second. The floor of any scheduler that wakes one task per fire.
    TokioTimers,
}

impl System {
    /// The name used on the command line and in summaries.
    pub fn name(self) -> &'static str {
        match self {
            System::Dcron => "dcron",
            System::TokioCronScheduler => "tokio-cron-scheduler",
            System::TokioTimers => "tokio-timers",
        }
    }
}

/// Arguments of the internal `latency-child` command.
#[derive(Clone, Debug, PartialEq, Args)]
pub struct ChildArgs {
    /// Which system runs in this process.
    #[arg(long, value_enum)]
    pub system: System,
    /// Tasks, each firing every second.
    #[arg(long, value_parser = count_in(1, MAX_TASKS))]
    pub tasks: usize,
    /// Seconds measured.
    #[arg(long, value_parser = number_in(1, MAX_SECONDS))]
    pub seconds: u64,
    /// Where to write the lateness samples (one integer in µs per line).
    #[arg(long, value_parser = non_empty_path)]
    pub samples: Option<PathBuf>,
    /// dcron's `claim_ahead` in milliseconds.
    #[arg(long, default_value_t = default_claim_ahead_ms(), value_parser = number_in(0, 1000))]
    pub claim_ahead_ms: u64,
}

/// Arguments of `redis`.
#[derive(Clone, Debug, PartialEq, Args)]
pub struct RedisArgs {
    /// Nodes in the cluster.
    #[arg(long, value_parser = count_in(1, 64))]
    pub nodes: usize,
    /// Tasks, each firing every second (at least one per node).
    #[arg(long, value_parser = count_in(1, MAX_TASKS))]
    pub tasks: usize,
    /// Seconds measured.
    #[arg(long, value_parser = number_in(1, MAX_SECONDS))]
    pub seconds: u64,
    /// The Redis URL (default: `$DCRON_TEST_REDIS_URL`, then `redis://127.0.0.1:6379`).
    #[arg(long, value_parser = non_empty)]
    pub url: Option<String>,
}

/// Arguments of `scale`.
#[derive(Clone, Debug, PartialEq, Args)]
pub struct ScaleArgs {
    /// Tasks on the node.
    #[arg(long, default_value_t = 100_000, value_parser = count_in(1, MAX_TASKS))]
    pub tasks: usize,
    /// Seconds of steady state measured.
    #[arg(long, default_value_t = 10, value_parser = number_in(1, MAX_SECONDS))]
    pub seconds: u64,
    /// The longest the adds plus the start may take before the run gives up, in seconds or
    /// as a duration (`900`, `15m`).
    #[arg(long, default_value = "900", value_parser = seconds_in(1, 7_200))]
    pub timeout: Duration,
    /// The registry: memory (one process-wide `MemoryRegistry`) or redis. With redis, or with
    /// more than one node, the run also measures a node joining (`join_moved_ratio`,
    /// `settle_s`).
    #[arg(long, default_value = "memory", value_parser = Backend::parse_scale)]
    pub backend: Backend,
    /// Nodes started together, each holding every task (a further node joins after they own
    /// them all, when the run measures a join).
    #[arg(long, default_value_t = 1, value_parser = count_in(1, 16))]
    pub nodes: usize,
    /// The Redis URL (default: `$DCRON_TEST_REDIS_URL`, then `redis://127.0.0.1:6379`).
    #[arg(long, value_parser = non_empty)]
    pub url: Option<String>,
}

/// The registries `failover` runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// `MemoryRegistry`, shared by the nodes of one process.
    Memory,
    /// A Redis server.
    Redis,
    /// An etcd cluster (feature `etcd`).
    Etcd,
    /// A ZooKeeper ensemble (feature `zk`).
    Zk,
}

impl Backend {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::Redis => "redis",
            Backend::Etcd => "etcd",
            Backend::Zk => "zk",
        }
    }

    fn parse(text: &str) -> Result<Self, String> {
        match text {
            "memory" => Ok(Backend::Memory),
            "redis" => Ok(Backend::Redis),
            "etcd" => Ok(Backend::Etcd),
            "zk" | "zookeeper" => Ok(Backend::Zk),
            other => Err(format!(
                "unknown backend `{other}`; use memory, redis, etcd or zk"
            )),
        }
    }

    fn parse_scale(text: &str) -> Result<Self, String> {
        match Backend::parse(text)? {
            b @ (Backend::Memory | Backend::Redis) => Ok(b),
            other => Err(format!(
                "scale runs on memory or redis, not {}",
                other.name()
            )),
        }
    }
}

/// Arguments of `failover`.
#[derive(Clone, Debug, PartialEq, Args)]
pub struct FailoverArgs {
    /// The registry: memory, redis, etcd or zk.
    #[arg(long, value_parser = Backend::parse)]
    pub backend: Backend,
    /// Tasks, each firing every second.
    #[arg(long, default_value_t = 50, value_parser = count_in(1, 100_000))]
    pub tasks: usize,
    /// The nodes' lease TTL, in milliseconds or as a duration (`2000`, `2s`).
    #[arg(long = "ttl-ms", value_name = "MS", default_value = "2000", value_parser = millis_in(300, 60_000))]
    pub ttl: Duration,
    /// The server address (Redis URL, etcd endpoint, ZooKeeper connect string).
    #[arg(long, value_parser = non_empty)]
    pub url: Option<String>,
}

/// A command line that cannot be run, with the reason (clap's rendering, which names the
/// argument and shows the usage), or the help text that was asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageError {
    message: String,
    help: bool,
}

impl UsageError {
    /// True when the "error" is the help (or version) text the user asked for: print it on
    /// stdout and exit 0.
    pub fn is_help(&self) -> bool {
        self.help
    }
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message.trim_end())
    }
}

impl std::error::Error for UsageError {}

/// The most tasks any run accepts.
pub const MAX_TASKS: usize = 10_000_000;
/// The longest measurement any run accepts, in seconds.
pub const MAX_SECONDS: u64 = 3_600;

/// A whole number (underscores allowed as separators: `10_000`).
fn whole(text: &str) -> Result<u64, String> {
    text.replace('_', "")
        .parse()
        .map_err(|_| format!("`{text}` is not a whole number"))
}

fn number_in(min: u64, max: u64) -> impl Fn(&str) -> Result<u64, String> + Clone {
    move |text| {
        let n = whole(text)?;
        if n < min || n > max {
            return Err(format!(
                "`{text}` is out of range; it must be between {min} and {max}"
            ));
        }
        Ok(n)
    }
}

fn count_in(min: usize, max: usize) -> impl Fn(&str) -> Result<usize, String> + Clone {
    let bounded = number_in(min as u64, max as u64);
    move |text| {
        let n = bounded(text)?;
        usize::try_from(n).map_err(|_| format!("`{text}` is too large for this machine"))
    }
}

/// A duration given as a whole number of `unit`s or in humantime form (`90s`, `15m`), within
/// `[min, max]` units.
fn duration_in(
    unit: Duration,
    unit_name: &'static str,
    min: u64,
    max: u64,
) -> impl Fn(&str) -> Result<Duration, String> + Clone {
    move |text| {
        let d = match whole(text) {
            Ok(n) => unit.checked_mul(u32::try_from(n).map_err(|_| {
                format!("`{text}` is out of range; it must be between {min} and {max} {unit_name}")
            })?),
            Err(_) => Some(humantime::parse_duration(text).map_err(|e| {
                format!("`{text}` is neither a whole number of {unit_name} nor a duration such as `90s` ({e})")
            })?),
        };
        let lo = unit.checked_mul(u32::try_from(min).unwrap_or(u32::MAX));
        let hi = unit.checked_mul(u32::try_from(max).unwrap_or(u32::MAX));
        match (d, lo, hi) {
            (Some(d), Some(lo), Some(hi)) if d >= lo && d <= hi => Ok(d),
            _ => Err(format!(
                "`{text}` is out of range; it must be between {min} and {max} {unit_name}"
            )),
        }
    }
}

fn seconds_in(min: u64, max: u64) -> impl Fn(&str) -> Result<Duration, String> + Clone {
    duration_in(Duration::from_secs(1), "seconds", min, max)
}

fn millis_in(min: u64, max: u64) -> impl Fn(&str) -> Result<Duration, String> + Clone {
    duration_in(Duration::from_millis(1), "milliseconds", min, max)
}

fn non_empty(text: &str) -> Result<String, String> {
    if text.is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(text.to_string())
    }
}

fn non_empty_path(text: &str) -> Result<PathBuf, String> {
    non_empty(text).map(PathBuf::from)
}

/// Parses the arguments after the program name.
///
/// # Errors
/// A [`UsageError`] naming the problem: no or an unknown command, an unknown, repeated or
/// valueless option, a missing required option, a value that is not a number or is out of
/// range, an unknown backend or system. `help`, `--help` and `-h` also come back as a
/// [`UsageError`] whose [`is_help`](UsageError::is_help) is true.
///
/// ```
/// use dcron_bench::cli::{parse, Command};
/// let args: Vec<String> = ["latency", "--tasks", "100", "--seconds", "2"]
///     .iter().map(|s| s.to_string()).collect();
/// assert!(matches!(parse(&args), Ok(Command::Latency(a)) if a.tasks == 100 && a.seconds == 2));
/// let bad: Vec<String> = ["latency", "--tasks", "many"].iter().map(|s| s.to_string()).collect();
/// assert!(parse(&bad).unwrap_err().to_string().contains("not a whole number"));
/// ```
pub fn parse(args: &[String]) -> Result<Command, UsageError> {
    if args.is_empty() {
        return Err(UsageError {
            message: "error: no command given\n\nUsage: dcron-bench <COMMAND>; \
                      `dcron-bench help` lists the commands"
                .into(),
            help: false,
        });
    }
    let cli =
        Cli::try_parse_from(std::iter::once("dcron-bench").chain(args.iter().map(String::as_str)))
            .map_err(|e| UsageError {
                help: matches!(
                    e.kind(),
                    clap::error::ErrorKind::DisplayHelp
                        | clap::error::ErrorKind::DisplayVersion
                        | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
                ) && !args.is_empty(),
                message: e.render().to_string(),
            })?;
    if let Command::Redis(r) = &cli.command {
        if r.tasks < r.nodes {
            return Err(UsageError {
                message: format!(
                    "error: redis: --tasks {} is fewer than --nodes {}; give every node work",
                    r.tasks, r.nodes
                ),
                help: false,
            });
        }
    }
    Ok(cli.command)
}

/// dcron's default claim-ahead in milliseconds: `latency` with no flags measures dcron as a
/// user gets it.
fn default_claim_ahead_ms() -> u64 {
    u64::try_from(dcron_core::DEFAULT_CLAIM_AHEAD.as_millis()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Command, UsageError> {
        parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    fn message(args: &[&str]) -> String {
        p(args).unwrap_err().to_string()
    }

    #[test]
    fn good_lines() {
        assert_eq!(
            p(&[
                "latency",
                "--tasks",
                "10_000",
                "--seconds=10",
                "--plot",
                "x.svg"
            ])
            .unwrap(),
            Command::Latency(LatencyArgs {
                tasks: 10_000,
                seconds: 10,
                plot: Some(PathBuf::from("x.svg")),
                claim_ahead_ms: 100,
            })
        );
        assert!(matches!(
            p(&["scale"]).unwrap(),
            Command::Scale(ScaleArgs {
                tasks: 100_000,
                seconds: 10,
                ..
            })
        ));
        assert!(matches!(
            p(&["failover", "--backend", "redis"]).unwrap(),
            Command::Failover(FailoverArgs {
                backend: Backend::Redis,
                tasks: 50,
                ..
            })
        ));
        assert!(matches!(
            p(&["redis", "--nodes", "3", "--tasks", "9", "--seconds", "1"]).unwrap(),
            Command::Redis(RedisArgs {
                nodes: 3,
                tasks: 9,
                ..
            })
        ));
        assert_eq!(
            p(&["registry", "--backend", "zookeeper"]).unwrap(),
            Command::Registry(RegistryArgs {
                backend: RegistryBackend::Zk,
                url: None,
                budget: Duration::from_secs(60),
                max_burst: 65_536,
                burst_fires: 20_000,
                claim_ahead_ms: 100,
                plot: None,
            })
        );
        assert!(matches!(
            p(&[
                "registry",
                "--backend",
                "redis-cluster",
                "--burst-fires",
                "0"
            ])
            .unwrap(),
            Command::Registry(RegistryArgs {
                backend: RegistryBackend::RedisCluster,
                burst_fires: 0,
                ..
            })
        ));
        assert!(p(&["--help"]).unwrap_err().is_help());
        assert!(p(&["help"]).unwrap_err().is_help());
        assert!(p(&["help"]).unwrap_err().to_string().contains("registry"));
        assert!(matches!(
            p(&["failover", "--backend", "memory", "--ttl-ms", "3s"]).unwrap(),
            Command::Failover(FailoverArgs { ttl, .. }) if ttl == Duration::from_secs(3)
        ));
        assert!(matches!(
            p(&["scale", "--backend", "redis", "--nodes", "3"]).unwrap(),
            Command::Scale(ScaleArgs {
                backend: Backend::Redis,
                nodes: 3,
                ..
            })
        ));
        assert!(matches!(
            p(&["scale", "--timeout", "15m"]).unwrap(),
            Command::Scale(ScaleArgs { timeout, .. }) if timeout == Duration::from_secs(900)
        ));
    }

    #[test]
    fn bad_lines_say_why() {
        assert!(!p(&[]).unwrap_err().is_help());
        assert!(message(&[]).contains("no command given"));
        assert!(message(&["bogus"]).contains("unrecognized subcommand 'bogus'"));
        assert!(message(&["latency", "--tasks", "5"]).contains("--seconds"));
        assert!(message(&["latency", "--tasks", "-5", "--seconds", "1"]).contains("'-5'"));
        assert!(message(&["latency", "--tasks", "--seconds", "1"]).contains("a value is required"));
        assert!(
            message(&["latency", "--tasks", "x", "--seconds", "1"]).contains("not a whole number")
        );
        assert!(message(&["latency", "--tasks", "0", "--seconds", "1"]).contains("out of range"));
        assert!(
            message(&["latency", "--tasks", "1", "--seconds", "99999"]).contains("out of range")
        );
        assert!(message(&["latency", "--tasks", "1", "--tasks", "2"])
            .contains("cannot be used multiple times"));
        assert!(message(&["latency", "--nodes", "1"]).contains("unexpected argument '--nodes'"));
        assert!(message(&["latency", "stray"]).contains("unexpected argument"));
        assert!(message(&["scale", "--timeout", "soon"]).contains("nor a duration"));
        assert!(message(&["scale", "--timeout", "3h"]).contains("out of range"));
        assert!(
            message(&["latency", "--tasks", "1", "--seconds", "1", "--plot", ""])
                .contains("must not be empty")
        );
        assert!(message(&["failover", "--backend", "mysql"]).contains("unknown backend"));
        assert!(message(&["scale", "--backend", "zk"]).contains("memory or redis"));
        assert!(message(&["scale", "--nodes", "0"]).contains("out of range"));
        assert!(message(&["failover"]).contains("--backend"));
        assert!(message(&["registry", "--backend", "consul"]).contains("no real Consul agent"));
        assert!(message(&["registry", "--backend", "mysql"]).contains("unknown backend"));
        assert!(
            message(&["registry", "--backend", "redis", "--seconds", "5"]).contains("out of range")
        );
        assert!(
            message(&["redis", "--nodes", "4", "--tasks", "3", "--seconds", "1"])
                .contains("fewer than")
        );
        assert!(
            message(&["failover", "--backend", "memory", "--ttl-ms", "10"])
                .contains("out of range")
        );
    }
}
