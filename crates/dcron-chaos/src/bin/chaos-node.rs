//! `chaos-node`: one dcron node of a chaos run. It joins the cluster on a registry, runs the
//! chaos tasks (every second each), and appends every execution to a ledger file. It stops
//! gracefully on SIGTERM or SIGINT, and by itself after `--max-seconds`.
//!
//! ```text
//! chaos-node --backend redis|etcd|zk --address <registry> --namespace <ns> --ledger <file>
//!            --name <process name> [--tasks 20] [--ttl-ms <ms>] [--max-seconds 3600]
//! ```

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use dcron_chaos::backend::Backend;
use dcron_chaos::ledger::Entry;
use dcron_chaos::{task_names, EVERY_SECOND};
use dcron_core::{Dcron, Error, MisfirePolicy, Result};

struct Args {
    backend: Backend,
    address: String,
    namespace: String,
    ledger: String,
    name: String,
    tasks: usize,
    ttl: Option<Duration>,
    max_seconds: u64,
}

fn parse() -> Result<Args> {
    let mut it = std::env::args().skip(1);
    let (mut backend, mut address, mut namespace, mut ledger, mut name) =
        (None, None, None, None, None);
    let (mut tasks, mut ttl, mut max_seconds) = (20usize, None, 3600u64);
    let (need, num) = (dcron_chaos::flag_value, dcron_chaos::flag_number);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--backend" => backend = Some(need(&a, it.next())?.parse::<Backend>()?),
            "--address" => address = Some(need(&a, it.next())?),
            "--namespace" => namespace = Some(need(&a, it.next())?),
            "--ledger" => ledger = Some(need(&a, it.next())?),
            "--name" => name = Some(need(&a, it.next())?),
            "--tasks" => tasks = num(&a, it.next())?.clamp(1, 1000) as usize,
            "--ttl-ms" => ttl = Some(Duration::from_millis(num(&a, it.next())?.max(1000))),
            "--max-seconds" => max_seconds = num(&a, it.next())?.clamp(1, 86_400),
            other => {
                return Err(Error::InvalidArgument(format!(
                    "unknown argument `{other}`"
                )))
            }
        }
    }
    let missing = |f: &str| Error::InvalidArgument(format!("{f} is required"));
    Ok(Args {
        backend: backend.ok_or_else(|| missing("--backend"))?,
        address: address.ok_or_else(|| missing("--address"))?,
        namespace: namespace.ok_or_else(|| missing("--namespace"))?,
        ledger: ledger.ok_or_else(|| missing("--ledger"))?,
        name: name.ok_or_else(|| missing("--name"))?,
        tasks,
        ttl,
        max_seconds,
    })
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
        .map_err(|e| Error::InvalidArgument(format!("ledger {}: {e}", args.ledger)))?;
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
        .ttl(args.ttl.unwrap_or_else(|| args.backend.ttl()))
        .poll_interval(Duration::from_secs(1))
        .misfire_policy(MisfirePolicy::FireAll { max: 120 })
        .misfire_window(Duration::from_secs(30))
        .max_clock_skew(Duration::from_secs(1))
        .grace_period(Duration::from_secs(3))
        .build()?;
    for task in task_names(args.tasks) {
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
        _ = tokio::time::sleep(Duration::from_secs(args.max_seconds)) => {}
    }
    match tokio::time::timeout(Duration::from_secs(15), node.stop()).await {
        Ok(r) => r,
        Err(_) => Err(Error::unavailable("stop did not finish within 15 s")),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("chaos-node: {e}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chaos-node: {e}");
            ExitCode::FAILURE
        }
    }
}
