//! `chaos-node`: one dcron node of a chaos run. It joins the cluster on a registry, runs the
//! chaos tasks (every second each), and appends every execution to a ledger file. It stops
//! gracefully on SIGTERM or SIGINT, and by itself after `--max-seconds`.
//!
//! ```text
//! chaos-node --backend redis|etcd|zk|postgres --address <registry> --namespace <ns>
//!            --ledger <file> --name <process name> [--tasks 20] [--ttl 3s]
//!            [--max-seconds 3600|1h]
//! ```

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use clap::Parser;
use dcron_chaos::backend::Backend;
use dcron_chaos::ledger::Entry;
use dcron_chaos::{parse_duration, task_names, EVERY_SECOND};
use dcron_core::{Dcron, Error, MisfirePolicy, Result};

/// One dcron node of a chaos run: runs the chaos tasks and appends every execution to a ledger.
#[derive(Debug, Parser)]
#[command(name = "chaos-node", version)]
struct Args {
    /// The registry: redis, etcd, zk (zookeeper) or postgres (postgresql).
    #[arg(long)]
    backend: Backend,
    /// The registry address (etcd and ZooKeeper: a comma-separated list of members).
    #[arg(long)]
    address: String,
    /// The namespace every node of the run shares.
    #[arg(long)]
    namespace: String,
    /// The ledger file executions are appended to.
    #[arg(long)]
    ledger: PathBuf,
    /// The process name (`n1`, `n1.2`), written in the ledger.
    #[arg(long)]
    name: String,
    /// How many tasks (each fires every second).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..=1000))]
    tasks: u16,
    /// The node lease TTL (default: the backend's chaos TTL), at least 1 s.
    #[arg(long, value_name = "DURATION", value_parser = ttl, conflicts_with = "ttl_ms")]
    ttl: Option<Duration>,
    /// The node lease TTL in milliseconds (the older spelling of --ttl).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1000..))]
    ttl_ms: Option<u64>,
    /// Stop by itself after this long: seconds (`3600`) or a duration (`1h`), at most a day.
    #[arg(long, value_name = "DURATION", default_value = "3600", value_parser = max_run)]
    max_seconds: Duration,
}

/// `--ttl`: a duration of at least 1 s.
fn ttl(text: &str) -> Result<Duration> {
    let d = parse_duration(text)?;
    if d >= Duration::from_secs(1) {
        Ok(d)
    } else {
        Err(Error::InvalidArgument(format!(
            "`{text}` is too short: a TTL is at least 1 s"
        )))
    }
}

/// `--max-seconds`: a duration of 1 s to 1 day.
fn max_run(text: &str) -> Result<Duration> {
    let d = parse_duration(text)?;
    if (Duration::from_secs(1)..=Duration::from_secs(86_400)).contains(&d) {
        Ok(d)
    } else {
        Err(Error::InvalidArgument(format!(
            "`{text}` is out of range: from 1 s to 1 day"
        )))
    }
}

fn append(file: &Mutex<File>, entry: &Entry) {
    let line = entry.line();
    let mut f = file.lock().unwrap_or_else(PoisonError::into_inner);
    // One write of one line on an O_APPEND file: lines never interleave or split.
    if let Err(e) = f.write_all(line.as_bytes()).and_then(|()| f.flush()) {
        eprintln!("chaos-node: cannot append to the ledger: {e}");
    }
}

async fn run(args: Args) -> Result<()> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.ledger)
        .map_err(|e| Error::InvalidArgument(format!("ledger {}: {e}", args.ledger.display())))?;
    let file = Arc::new(Mutex::new(file));
    // The registry may be restarting or cut off: try for up to 60 s.
    let mut registry = None;
    for attempt in 0..60 {
        match args.backend.connect(&args.address, &args.namespace).await {
            Ok(r) => {
                registry = Some(r);
                break;
            }
            Err(e) if e.is_retryable() => {
                eprintln!("chaos-node {}: connect attempt {attempt}: {e}", args.name);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    }
    let registry = registry.ok_or_else(|| Error::unavailable("registry unreachable for 60 s"))?;
    let node = Dcron::builder(registry)
        .node_name(args.name.clone())
        .ttl(
            args.ttl
                .or(args.ttl_ms.map(Duration::from_millis))
                .unwrap_or_else(|| args.backend.ttl()),
        )
        .poll_interval(Duration::from_secs(1))
        .misfire_policy(MisfirePolicy::FireAll { max: 120 })
        .misfire_window(Duration::from_secs(30))
        .max_clock_skew(Duration::from_secs(1))
        .grace_period(Duration::from_secs(3))
        .build()?;
    for task in task_names(usize::from(args.tasks)) {
        let file = file.clone();
        let name = args.name.clone();
        node.add_func(&task, EVERY_SECOND, move |ctx| {
            append(
                &file,
                &Entry {
                    task: ctx.name().to_string(),
                    instant_ms: ctx.scheduled.timestamp_millis(),
                    node: name.clone(),
                    token: ctx.token,
                    started_ms: chrono::Utc::now().timestamp_millis(),
                },
            );
            async { Ok(()) }
        })
        .await?;
    }
    node.start().await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::InvalidState(format!("cannot watch SIGTERM: {e}")))?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = tokio::time::sleep(args.max_seconds) => {}
    }
    match tokio::time::timeout(Duration::from_secs(15), node.stop()).await {
        Ok(r) => r.map(drop),
        Err(_) => Err(Error::unavailable("stop did not finish within 15 s")),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    // Bad arguments: clap prints why and exits with status 2.
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chaos-node: {e}");
            ExitCode::FAILURE
        }
    }
}
