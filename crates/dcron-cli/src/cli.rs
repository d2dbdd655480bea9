//! The command line, as `clap` definitions.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use dcron_core::Strategy;

use crate::duration::parse_duration;
use crate::secret::Secret;

fn parse_secret(s: &str) -> Result<Secret, String> {
    Ok(Secret::new(s))
}

fn parse_strategy(s: &str) -> Result<Strategy, String> {
    s.parse::<Strategy>().map_err(|e| e.to_string())
}

/// `dcronctl`: see and steer a dcron cluster through its registry.
#[derive(Parser)]
#[command(
    name = "dcronctl",
    version,
    about = "See and steer a dcron cluster through its registry",
    long_about = None,
    arg_required_else_help = true,
    after_help = "Exit codes: 0 ok, 1 operation failed, 2 usage error, 3 registry unreachable, 4 unknown task, 5 conflict (exists or deleted)."
)]
pub struct Cli {
    /// Options shared by every command.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Options shared by every command (accepted before or after the command name).
#[derive(Args, Clone, Debug)]
pub struct GlobalArgs {
    /// The registry URL (`redis://`, `rediss://`, `etcd://`, `zk://` or `consul://`; the
    /// help text shows each form).
    #[arg(
        long,
        global = true,
        value_name = "URL",
        value_parser = parse_secret,
        help = "Registry URL: redis://[user:pass@]host[:port][/db], rediss://…, \
                etcd://host[:port][,…], etcd+https://…, zk://host[:port][,…][/chroot] or consul://host[:port] \
                [env: DCRON_REGISTRY_URL]"
    )]
    pub registry: Option<Secret>,
    /// The dcron namespace (default: the backend's, `dcron`) [env: DCRON_NAMESPACE]
    #[arg(long, global = true, value_name = "NAME")]
    pub namespace: Option<String>,
    /// User for Redis ACL, etcd or ZooKeeper digest auth [env: DCRON_REGISTRY_USER]
    #[arg(long, global = true, value_name = "USER")]
    pub user: Option<String>,
    /// Password for --user; prefer the environment [env: DCRON_REGISTRY_PASSWORD]
    #[arg(long, global = true, value_name = "PASSWORD", value_parser = parse_secret)]
    pub password: Option<Secret>,
    /// Consul ACL token; prefer the environment [env: CONSUL_HTTP_TOKEN]
    #[arg(long, global = true, value_name = "TOKEN", value_parser = parse_secret)]
    pub token: Option<Secret>,
    /// TLS files for `rediss://`, `etcd+https://` and `consul+https://` registries.
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Print JSON instead of tables (JSON lines for `watch`)
    #[arg(long, global = true)]
    pub json: bool,
    /// How long to wait for the registry to answer one request
    #[arg(long, global = true, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// The TLS files: a private CA and a client certificate (each read when the command starts).
#[derive(Args, Clone, Debug, Default)]
pub struct TlsArgs {
    /// PEM CA certificate(s) the registry's certificate must chain to, instead of the system's
    /// roots [env: DCRON_TLS_CA]
    #[arg(long = "tls-ca", global = true, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// PEM client certificate (chain), for servers that require one; needs --tls-key
    /// [env: DCRON_TLS_CERT]
    #[arg(long = "tls-cert", global = true, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// PEM private key of --tls-cert [env: DCRON_TLS_KEY]
    #[arg(long = "tls-key", global = true, value_name = "FILE")]
    pub key: Option<PathBuf>,
}

/// The commands.
#[derive(Subcommand, Clone, Debug)]
pub enum Command {
    /// List live nodes: id, host, status, last alive, number of owned tasks
    Nodes(StrategyArg),
    /// List dynamic tasks, the static ones the registry knows of, and deleted names
    /// (--tag: only the tasks carrying every tag given)
    Tasks(TasksArgs),
    /// Add a dynamic task (refused when the name exists or is marked deleted)
    Add(AddArgs),
    /// Add or replace a dynamic task whatever exists, clearing its deletion mark
    /// (asks first when it replaces something; --yes, --dry-run)
    ForceAdd(ForceAddArgs),
    /// Mark a task deleted: it fires nowhere until reused, force-added or cleaned up
    /// (asks first; --yes, --dry-run)
    Delete(DeleteArgs),
    /// Clear a task's deletion mark so it is scheduled again
    Reuse(NameArg),
    /// Remove every trace of a task: record, deletion mark, claims, pause, status and trigger
    /// records (asks first; --yes, --dry-run)
    Cleanup(CleanupArgs),
    /// Pause a task everywhere until resumed (its fires are skipped)
    Pause(AdminArgs),
    /// Resume a paused task (fires skipped while paused are not caught up)
    Resume(AdminArgs),
    /// Run a task once now on its owner, in addition to its schedule
    Trigger(AdminArgs),
    /// Recent fires of a task and the nodes that ran them, newest first
    Claims(ClaimsArgs),
    /// What each node would own under a strategy
    Assignment(StrategyArg),
    /// Stream node, task and fire events until interrupted
    Watch(WatchArgs),
    /// Serve a web console (nodes, tasks, timeline, actions) until interrupted
    Console(crate::console::ConsoleArgs),
}

/// `--strategy`.
#[derive(Args, Clone, Debug)]
pub struct StrategyArg {
    /// Assignment strategy: consistent, hash-sharding, hash-slot, range, weighted, round-robin
    /// or rendezvous (use the cluster's)
    #[arg(long, value_name = "STRATEGY", default_value = "consistent", value_parser = parse_strategy)]
    pub strategy: Strategy,
}

/// `tasks`.
#[derive(Args, Clone, Debug)]
pub struct TasksArgs {
    /// The strategy ownership is computed with.
    #[command(flatten)]
    pub strategy: StrategyArg,
    /// Only the tasks that carry this tag (repeat: every tag given); static tasks carry none
    /// in the registry
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
}

/// A task name.
#[derive(Args, Clone, Debug)]
pub struct NameArg {
    /// The task name
    #[arg(value_name = "TASK")]
    pub name: String,
}

/// `pause`, `resume` and `trigger`.
#[derive(Args, Clone, Debug)]
pub struct AdminArgs {
    /// The task name
    #[arg(value_name = "TASK")]
    pub name: String,
    /// Accept a name the registry does not know yet (a static task defined in code)
    #[arg(long = "static")]
    pub allow_static: bool,
}

/// `add` and `force-add`.
#[derive(Args, Clone, Debug)]
pub struct AddArgs {
    /// The task name
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Schedule: cron with 5, 6 (seconds) or 7 (year) fields, @hourly…, @every 30s, @at <RFC 3339>
    #[arg(long, value_name = "EXPR")]
    pub cron: String,
    /// IANA time zone the schedule runs in (default UTC)
    #[arg(long, value_name = "IANA")]
    pub zone: Option<String>,
    /// Payload handed to the handler
    #[arg(long, value_name = "TEXT", conflicts_with = "payload_file")]
    pub payload: Option<String>,
    /// Read the payload from a file (UTF-8 text)
    #[arg(long, value_name = "PATH")]
    pub payload_file: Option<PathBuf>,
    /// Run once, then mark the task deleted
    #[arg(long)]
    pub one_shot: bool,
    /// A tag for grouping and filtering (`tasks --tag`); repeat for more
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// The most fires of the task that run at once on a node
    #[arg(long, value_name = "N")]
    pub max_concurrent: Option<u32>,
}

/// `--yes` and `--dry-run`: how a command that changes or removes what exists is confirmed.
///
/// Such a command first prints what it will change. Then it acts when `--yes` is given, asks
/// when standard input is a terminal, and otherwise refuses (a script must say `--yes`);
/// `--dry-run` only prints the plan.
#[derive(Args, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConfirmArgs {
    /// Do not ask: apply the change (required when standard input is not a terminal)
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Only print what would change; change nothing
    #[arg(long)]
    pub dry_run: bool,
}

/// `force-add`.
#[derive(Args, Clone, Debug)]
pub struct ForceAddArgs {
    /// The task to write.
    #[command(flatten)]
    pub task: AddArgs,
    /// Confirmation.
    #[command(flatten)]
    pub confirm: ConfirmArgs,
}

/// `delete`.
#[derive(Args, Clone, Debug)]
pub struct DeleteArgs {
    /// The task name
    #[arg(value_name = "TASK")]
    pub name: String,
    /// Mark the name deleted even without a dynamic record (a static task defined in code)
    #[arg(long = "static")]
    pub allow_static: bool,
    /// Confirmation.
    #[command(flatten)]
    pub confirm: ConfirmArgs,
}

/// `cleanup`.
#[derive(Args, Clone, Debug)]
pub struct CleanupArgs {
    /// The task name
    #[arg(value_name = "TASK")]
    pub name: String,
    /// Confirmation.
    #[command(flatten)]
    pub confirm: ConfirmArgs,
}

/// `claims`.
#[derive(Args, Clone, Debug)]
pub struct ClaimsArgs {
    /// The task name
    #[arg(value_name = "TASK")]
    pub name: String,
    /// Show at most this many claims (0: all)
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub limit: usize,
}

/// `watch`.
#[derive(Args, Clone, Debug)]
pub struct WatchArgs {
    /// How often claims are polled for fire events
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Stop after this long (default: until Ctrl-C)
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Also report fires of this task (static tasks are not listed in the registry); repeatable
    #[arg(long = "task", value_name = "NAME")]
    pub tasks: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn globals_go_anywhere_and_secrets_stay_hidden() {
        let cli = Cli::try_parse_from([
            "dcronctl",
            "tasks",
            "--registry",
            "redis://u:hunter22@h",
            "--json",
            "--password",
            "pw-secret",
            "--strategy",
            "range",
        ])
        .expect("parses");
        assert!(cli.global.json);
        assert!(matches!(
            cli.command,
            Command::Tasks(TasksArgs {
                strategy: StrategyArg {
                    strategy: Strategy::Range
                },
                ..
            })
        ));
        let shown = format!("{:?}", cli.global);
        assert!(
            !shown.contains("hunter22") && !shown.contains("pw-secret"),
            "{shown}"
        );
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for args in [
            &["dcronctl", "assignment", "--strategy", "nope"][..],
            &["dcronctl", "watch", "--for", "soon"],
            &["dcronctl", "add", "x"],
            &[
                "dcronctl",
                "add",
                "x",
                "--cron",
                "@hourly",
                "--payload",
                "a",
                "--payload-file",
                "p",
            ],
            &["dcronctl", "frobnicate"],
        ] {
            let err = Cli::try_parse_from(args).err().expect("refused");
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }
}
