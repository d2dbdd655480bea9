//! Command-line parsing: every argument is checked, and bad input is a [`UsageError`] with a
//! clear message, never a panic.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// The usage text printed by `--help` and after a usage error.
pub const USAGE: &str = "\
usage: dcron-bench <command> [options]

commands (each prints `summary key=value ...` lines):
  latency  --tasks <n> --seconds <s> [--plot <file.svg>] [--claim-ahead-ms <ms, default 100>]
           n every-second tasks on one node (MemoryRegistry), then the same workload on
           tokio-cron-scheduler and on bare tokio timers (one task per job, the floor),
           each in a child process; then the ratios
  redis    --nodes <k> --tasks <n> --seconds <s> [--url <redis-url>]
           k nodes on one Redis server (default $DCRON_TEST_REDIS_URL or redis://127.0.0.1:6379)
  scale    [--tasks <n>] [--seconds <s>] [--timeout <s>]
           one node with n tasks (default 100000): start time, memory per task, steady CPU
  failover --backend <memory|redis|etcd|zk> [--tasks <n>] [--ttl-ms <ms>] [--url <address>]
           3 nodes; the owner of task 0 dies; time to the next fire elsewhere, missed fires
           (etcd and zk need a build with `--features etcd` / `--features zk`; their address
           defaults to $DCRON_TEST_ETCD_ENDPOINTS / $DCRON_TEST_ZK_CONNECT or the local port)
  registry --backend <redis|etcd|zk|postgres> [--url <address>] [--seconds <budget>]
           [--max-burst <n>]
           the largest burst (fires in one instant on one node) held with p99 lateness
           <= 50 ms (a doubling search from 256, ending within the budget, default 60 s),
           and the raw speed of the same server with the same client crate doing the
           backend's bare primitive (redis pipelined SET NX PX, etcd txn puts, zk create,
           postgres batched INSERT into a scratch table); addresses default to
           $DCRON_TEST_REDIS_URL, $DCRON_TEST_ETCD_ENDPOINTS, $DCRON_TEST_ZK_CONNECT,
           $DCRON_TEST_POSTGRES_URL (etcd, zk and postgres need `--features etcd|zk|postgres`).
           consul is not measured: no real Consul agent is available here, and a figure
           taken on the test double would say nothing
  help     this text";

/// What to run.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// Print [`USAGE`].
    Help,
    /// `latency`: both systems, the ratios, optionally a plot.
    Latency(LatencyArgs),
    /// `latency-child` (internal): one system in this process.
    LatencyChild(ChildArgs),
    /// `redis`: several nodes on one Redis server.
    Redis(RedisArgs),
    /// `scale`: many tasks on one node.
    Scale(ScaleArgs),
    /// `failover`: kill an owner, measure the takeover.
    Failover(FailoverArgs),
    /// `registry`: the largest burst held on one backend, beside its raw primitive.
    Registry(RegistryArgs),
}

/// The registries `registry` measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegistryBackend {
    /// A Redis server.
    Redis,
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
            RegistryBackend::Etcd => "etcd",
            RegistryBackend::Zk => "zk",
            RegistryBackend::Postgres => "postgres",
        }
    }
}

/// Arguments of `registry`.
#[derive(Clone, Debug, PartialEq)]
pub struct RegistryArgs {
    /// The registry.
    pub backend: RegistryBackend,
    /// The server address (Redis URL, etcd endpoint, ZooKeeper connect string, PostgreSQL URL).
    pub url: Option<String>,
    /// The whole run's time budget: the search stops doubling once it is half spent, and
    /// the raw measurement takes a bounded slice of the rest.
    pub budget: Duration,
    /// The largest burst tried.
    pub max_burst: usize,
}

/// Arguments of `latency`.
#[derive(Clone, Debug, PartialEq)]
pub struct LatencyArgs {
    /// Tasks, each firing every second.
    pub tasks: usize,
    /// Seconds measured per system.
    pub seconds: u64,
    /// Where to write the SVG plot of both lateness distributions.
    pub plot: Option<PathBuf>,
    /// dcron's `claim_ahead` in milliseconds (default: dcron's own default,
    /// [`dcron_core::DEFAULT_CLAIM_AHEAD`]; 0 claims at the instant).
    pub claim_ahead_ms: u64,
}

/// The systems `latency` compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
#[derive(Clone, Debug, PartialEq)]
pub struct ChildArgs {
    /// Which system runs in this process.
    pub system: System,
    /// Tasks, each firing every second.
    pub tasks: usize,
    /// Seconds measured.
    pub seconds: u64,
    /// Where to write the lateness samples (one integer in µs per line).
    pub samples: Option<PathBuf>,
    /// dcron's `claim_ahead` in milliseconds.
    pub claim_ahead_ms: u64,
}

/// Arguments of `redis`.
#[derive(Clone, Debug, PartialEq)]
pub struct RedisArgs {
    /// Nodes in the cluster.
    pub nodes: usize,
    /// Tasks, each firing every second.
    pub tasks: usize,
    /// Seconds measured.
    pub seconds: u64,
    /// The Redis URL (default: `$DCRON_TEST_REDIS_URL`, then `redis://127.0.0.1:6379`).
    pub url: Option<String>,
}

/// Arguments of `scale`.
#[derive(Clone, Debug, PartialEq)]
pub struct ScaleArgs {
    /// Tasks on the node.
    pub tasks: usize,
    /// Seconds of steady state measured.
    pub seconds: u64,
    /// The longest the adds plus the start may take before the run gives up.
    pub timeout: Duration,
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
}

/// Arguments of `failover`.
#[derive(Clone, Debug, PartialEq)]
pub struct FailoverArgs {
    /// The registry.
    pub backend: Backend,
    /// Tasks, each firing every second.
    pub tasks: usize,
    /// The nodes' lease TTL.
    pub ttl: Duration,
    /// The server address (Redis URL, etcd endpoint, ZooKeeper connect string).
    pub url: Option<String>,
}

/// A command line that cannot be run, with the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// The most tasks any run accepts.
pub const MAX_TASKS: usize = 10_000_000;
/// The longest measurement any run accepts, in seconds.
pub const MAX_SECONDS: u64 = 3_600;

/// The `--name value` options of one command, consumed as they are read.
struct Options {
    command: &'static str,
    pairs: Vec<(String, String)>,
}

impl Options {
    fn parse(command: &'static str, args: &[String], known: &[&str]) -> Result<Self, UsageError> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let Some(name) = arg.strip_prefix("--") else {
                return Err(UsageError(format!(
                    "{command}: unexpected argument `{arg}` (options look like --name value)"
                )));
            };
            let (name, inline) = match name.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (name, None),
            };
            if !known.contains(&name) {
                return Err(UsageError(format!(
                    "{command}: unknown option `--{name}`; it takes {}",
                    known
                        .iter()
                        .map(|k| format!("--{k}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            if pairs.iter().any(|(n, _)| n == name) {
                return Err(UsageError(format!(
                    "{command}: option `--{name}` given twice"
                )));
            }
            let value = match inline {
                Some(v) => v,
                None => match it.next() {
                    Some(v) if !v.starts_with("--") => v.clone(),
                    _ => {
                        return Err(UsageError(format!(
                            "{command}: option `--{name}` needs a value"
                        )))
                    }
                },
            };
            pairs.push((name.to_string(), value));
        }
        Ok(Options { command, pairs })
    }

    fn raw(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn required(&self, name: &str) -> Result<&str, UsageError> {
        self.raw(name).ok_or_else(|| {
            UsageError(format!(
                "{}: missing required option `--{name}`",
                self.command
            ))
        })
    }

    fn number(&self, name: &str, value: &str, min: u64, max: u64) -> Result<u64, UsageError> {
        let n: u64 = value.replace('_', "").parse().map_err(|_| {
            UsageError(format!(
                "{}: `--{name} {value}` is not a whole number",
                self.command
            ))
        })?;
        if n < min || n > max {
            return Err(UsageError(format!(
                "{}: `--{name} {value}` is out of range; it must be between {min} and {max}",
                self.command
            )));
        }
        Ok(n)
    }

    fn count(
        &self,
        name: &str,
        default: Option<u64>,
        min: u64,
        max: u64,
    ) -> Result<u64, UsageError> {
        match (self.raw(name), default) {
            (Some(v), _) => self.number(name, v, min, max),
            (None, Some(d)) => Ok(d),
            (None, None) => {
                let v = self.required(name)?;
                self.number(name, v, min, max)
            }
        }
    }

    fn text(&self, name: &str) -> Result<Option<String>, UsageError> {
        match self.raw(name) {
            Some("") => Err(UsageError(format!(
                "{}: `--{name}` must not be empty",
                self.command
            ))),
            Some(v) => Ok(Some(v.to_string())),
            None => Ok(None),
        }
    }
}

fn tasks(o: &Options, default: Option<u64>) -> Result<usize, UsageError> {
    Ok(o.count("tasks", default, 1, MAX_TASKS as u64)? as usize)
}

fn seconds(o: &Options, default: Option<u64>) -> Result<u64, UsageError> {
    o.count("seconds", default, 1, MAX_SECONDS)
}

/// Parses the arguments after the program name.
///
/// # Errors
/// A [`UsageError`] naming the problem: no or an unknown command, an unknown, repeated or
/// valueless option, a missing required option, a value that is not a number or is out of
/// range, an unknown backend or system.
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
    let Some((command, rest)) = args.split_first() else {
        return Err(UsageError("no command given".into()));
    };
    match command.as_str() {
        "help" | "--help" | "-h" => Ok(Command::Help),
        "latency" => {
            let o = Options::parse(
                "latency",
                rest,
                &["tasks", "seconds", "plot", "claim-ahead-ms"],
            )?;
            Ok(Command::Latency(LatencyArgs {
                tasks: tasks(&o, None)?,
                seconds: seconds(&o, None)?,
                plot: o.text("plot")?.map(PathBuf::from),
                claim_ahead_ms: o.count(
                    "claim-ahead-ms",
                    Some(default_claim_ahead_ms()),
                    0,
                    1000,
                )?,
            }))
        }
        "latency-child" => {
            let o = Options::parse(
                "latency-child",
                rest,
                &["system", "tasks", "seconds", "samples", "claim-ahead-ms"],
            )?;
            let system = match o.required("system")? {
                "dcron" => System::Dcron,
                "tokio-cron-scheduler" => System::TokioCronScheduler,
                "tokio-timers" => System::TokioTimers,
                other => {
                    return Err(UsageError(format!(
                        "latency-child: unknown system `{other}`; use dcron, tokio-cron-scheduler or tokio-timers"
                    )))
                }
            };
            Ok(Command::LatencyChild(ChildArgs {
                system,
                tasks: tasks(&o, None)?,
                seconds: seconds(&o, None)?,
                samples: o.text("samples")?.map(PathBuf::from),
                claim_ahead_ms: o.count(
                    "claim-ahead-ms",
                    Some(default_claim_ahead_ms()),
                    0,
                    1000,
                )?,
            }))
        }
        "redis" => {
            let o = Options::parse("redis", rest, &["nodes", "tasks", "seconds", "url"])?;
            let nodes = o.count("nodes", None, 1, 64)? as usize;
            let tasks = tasks(&o, None)?;
            if tasks < nodes {
                return Err(UsageError(format!(
                    "redis: --tasks {tasks} is fewer than --nodes {nodes}; give every node work"
                )));
            }
            Ok(Command::Redis(RedisArgs {
                nodes,
                tasks,
                seconds: seconds(&o, None)?,
                url: o.text("url")?,
            }))
        }
        "scale" => {
            let o = Options::parse("scale", rest, &["tasks", "seconds", "timeout"])?;
            Ok(Command::Scale(ScaleArgs {
                tasks: tasks(&o, Some(100_000))?,
                seconds: seconds(&o, Some(10))?,
                timeout: Duration::from_secs(o.count("timeout", Some(900), 1, 7_200)?),
            }))
        }
        "failover" => {
            let o = Options::parse("failover", rest, &["backend", "tasks", "ttl-ms", "url"])?;
            let backend = match o.required("backend")? {
                "memory" => Backend::Memory,
                "redis" => Backend::Redis,
                "etcd" => Backend::Etcd,
                "zk" | "zookeeper" => Backend::Zk,
                other => {
                    return Err(UsageError(format!(
                        "failover: unknown backend `{other}`; use memory, redis, etcd or zk"
                    )))
                }
            };
            Ok(Command::Failover(FailoverArgs {
                backend,
                tasks: o.count("tasks", Some(50), 1, 100_000)? as usize,
                ttl: Duration::from_millis(o.count("ttl-ms", Some(2_000), 300, 60_000)?),
                url: o.text("url")?,
            }))
        }
        "registry" => {
            let o = Options::parse(
                "registry",
                rest,
                &["backend", "url", "seconds", "max-burst"],
            )?;
            let backend = match o.required("backend")? {
                "redis" => RegistryBackend::Redis,
                "etcd" => RegistryBackend::Etcd,
                "zk" | "zookeeper" => RegistryBackend::Zk,
                "postgres" | "postgresql" => RegistryBackend::Postgres,
                "consul" => {
                    return Err(UsageError(
                        "registry: consul is not measured: no real Consul agent is available \
                         here, and a figure taken on the test double would say nothing"
                            .into(),
                    ))
                }
                other => {
                    return Err(UsageError(format!(
                        "registry: unknown backend `{other}`; use redis, etcd, zk or postgres"
                    )))
                }
            };
            Ok(Command::Registry(RegistryArgs {
                backend,
                url: o.text("url")?,
                budget: Duration::from_secs(o.count("seconds", Some(60), 20, 600)?),
                max_burst: o.count("max-burst", Some(65_536), 256, 1_048_576)? as usize,
            }))
        }
        other => Err(UsageError(format!(
            "unknown command `{other}`; commands: latency, redis, scale, failover, registry, help"
        ))),
    }
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
            })
        );
        assert_eq!(p(&["--help"]).unwrap(), Command::Help);
    }

    #[test]
    fn bad_lines_say_why() {
        assert!(message(&[]).contains("no command"));
        assert!(message(&["bogus"]).contains("unknown command `bogus`"));
        assert!(
            message(&["latency", "--tasks", "5"]).contains("missing required option `--seconds`")
        );
        assert!(
            message(&["latency", "--tasks", "-5", "--seconds", "1"]).contains("not a whole number")
        );
        assert!(message(&["latency", "--tasks", "--seconds", "1"]).contains("needs a value"));
        assert!(
            message(&["latency", "--tasks", "x", "--seconds", "1"]).contains("not a whole number")
        );
        assert!(message(&["latency", "--tasks", "0", "--seconds", "1"]).contains("out of range"));
        assert!(
            message(&["latency", "--tasks", "1", "--seconds", "99999"]).contains("out of range")
        );
        assert!(message(&["latency", "--tasks", "1", "--tasks", "2"]).contains("given twice"));
        assert!(message(&["latency", "--nodes", "1"]).contains("unknown option `--nodes`"));
        assert!(message(&["latency", "stray"]).contains("unexpected argument"));
        assert!(
            message(&["latency", "--tasks", "1", "--seconds", "1", "--plot", ""])
                .contains("must not be empty")
        );
        assert!(message(&["failover", "--backend", "mysql"]).contains("unknown backend"));
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
