//! Two dcron nodes sharing one SQLite database file through [`SqliteRegistry`], the custom
//! registry of `sqlite_registry.rs`: they run three static and three dynamic tasks for about
//! five seconds, every fire on exactly one of them, then stop; a ledger check ends with
//! `summary fires=… executed=… duplicates=0 missed=0` (exit code 1 otherwise).
//!
//! `cargo run -p examples --example custom-registry [-- <database file>]`
//!
//! Each node opens its own connection, exactly as two processes on one host would. Without an
//! argument the database is a scratch file removed at the end. With one, start the program in
//! several terminals at once on the same file: the nodes of all processes share the fires, and
//! each process then checks only that it ran nothing twice (the others ran the rest).

#[allow(dead_code)] // fault-injection helpers are for the conformance test
mod sqlite_registry;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use dcron_core::{Dcron, Error, FireKey, Schedule, SecondsField, TaskMeta};
use dcron_testkit::ledger::{check, Ledger};
use sqlite_registry::{ScratchDatabase, SqliteRegistry};
use tokio::time::Instant;

const NAMESPACE: &str = "custom-registry-demo";
const STATIC_TASKS: [(&str, &str); 3] = [
    ("every-second", "* * * * * *"),
    ("every-2s", "*/2 * * * * *"),
    ("every-3s", "*/3 * * * * *"),
];
const DYNAMIC_TASKS: [&str; 3] = ["report-a", "report-b", "report-c"];
const RUN_FOR: Duration = Duration::from_secs(5);

/// Builds and starts one node on its own connection to the database.
async fn node(name: &'static str, path: &Path, ledger: &Ledger) -> dcron_core::Result<Dcron> {
    let registry = SqliteRegistry::open(path, NAMESPACE).await?;
    let l = ledger.clone();
    let node = Dcron::builder(registry)
        .node_name(name)
        .ttl(Duration::from_secs(2))
        .poll_interval(Duration::from_millis(500))
        .max_clock_skew(Duration::from_millis(200))
        .task_run_fn(move |ctx| {
            let l = l.clone();
            async move {
                report(name, &l, ctx.name(), ctx.scheduled, ctx.token, &ctx.node_id);
                Ok(())
            }
        })
        .build()?;
    for (task, cron) in STATIC_TASKS {
        let l = ledger.clone();
        node.add_func(task, cron, move |ctx| {
            let l = l.clone();
            async move {
                report(name, &l, ctx.name(), ctx.scheduled, ctx.token, &ctx.node_id);
                Ok(())
            }
        })
        .await?;
    }
    node.start().await?;
    Ok(node)
}

/// Prints one run and records it in the ledger.
fn report(who: &str, ledger: &Ledger, task: &str, at: DateTime<Utc>, token: u64, node_id: &str) {
    println!(
        "{who} ran {task:<15} @ {} (token {token})",
        at.format("%H:%M:%S")
    );
    ledger.record(
        FireKey::new(task, at),
        node_id.to_string(),
        token,
        Utc::now(),
    );
}

fn occurrences(expr: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    Schedule::parse(expr, None, SecondsField::Optional)
        .map(|s| s.occurrences_in(from, to, 10_000))
        .unwrap_or_default()
}

/// Runs the two nodes; `shared` when other processes may use the database too.
async fn run(path: &Path, shared: bool) -> dcron_core::Result<bool> {
    println!("database: {}", path.display());
    let ledger = Ledger::new();
    let a = node("node-a", path, &ledger).await?;
    let b = node("node-b", path, &ledger).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && !(a.state() == "working" && b.state() == "working") {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for name in DYNAMIC_TASKS {
        match a.add_task_meta(TaskMeta::new(name, "* * * * * *")).await {
            // Another process on the same file added it first.
            Ok(()) | Err(Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    let start = Utc::now();
    println!("both nodes working; node-a added {DYNAMIC_TASKS:?}");
    tokio::time::sleep(RUN_FOR).await;
    let end = Utc::now() - chrono::Duration::milliseconds(300);
    println!(
        "node-a owned {:?}, node-b owned {:?}",
        a.my_running_tasks(),
        b.my_running_tasks()
    );
    a.stop().await?;
    b.stop().await?;

    // Every occurrence after a one-second warm-up must have run exactly once.
    let from = start + chrono::Duration::seconds(1);
    let mut expected = BTreeSet::new();
    let dynamic = DYNAMIC_TASKS.map(|name| (name, "* * * * * *"));
    for (task, cron) in STATIC_TASKS.into_iter().chain(dynamic) {
        expected.extend(
            occurrences(cron, from, end)
                .into_iter()
                .map(|t| FireKey::new(task, t)),
        );
    }
    let result = check(&ledger, &expected);
    for d in &result.duplicates {
        println!("DUPLICATE {}", d.fire);
    }
    if shared {
        println!(
            "shared database: executed={} duplicates={} (other processes ran the other fires)",
            result.executed,
            result.duplicates.len()
        );
        return Ok(result.duplicates.is_empty());
    }
    for m in &result.missed {
        println!("MISSED {m}");
    }
    println!(
        "summary fires={} executed={} duplicates={} missed={}",
        expected.len(),
        result.executed,
        result.duplicates.len(),
        result.missed.len()
    );
    Ok(result.duplicates.is_empty() && result.missed.is_empty())
}

#[tokio::main]
async fn main() {
    let scratch = ScratchDatabase::new();
    let given = std::env::args_os().nth(1).map(PathBuf::from);
    let outcome = run(given.as_deref().unwrap_or(scratch.path()), given.is_some()).await;
    // `process::exit` runs no destructors: remove the scratch file first.
    drop(scratch);
    std::process::exit(match outcome {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("custom-registry failed: {e}");
            2
        }
    });
}
