//! Three dcron nodes in one process on `MemoryRegistry`, with static, dynamic, one-shot and
//! deleted tasks, a graceful leave and a crash; ends with a ledger check.
//!
//! `cargo run --release --example quickstart`

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dcron_core::{Dcron, FireKey, MemoryRegistry, MisfirePolicy, Schedule, SecondsField, TaskMeta};
use dcron_testkit::ledger::{check, Ledger};
use tokio::time::Instant;

const STATIC_TASKS: [(&str, &str); 2] = [
    ("static-every-second", "* * * * * *"),
    ("static-every-2s", "*/2 * * * * *"),
];
const DYNAMIC_TASKS: [&str; 4] = ["dynamic-a", "dynamic-b", "dynamic-c", "dynamic-doomed"];
const ONE_SHOT: &str = "one-shot-hello";

struct Clock0(Instant);
impl Clock0 {
    fn t(&self) -> f64 {
        self.0.elapsed().as_secs_f64()
    }
}

fn occurrences(expr: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    Schedule::parse(expr, None, SecondsField::Optional)
        .map(|s| s.occurrences_in(from, to, 10_000))
        .unwrap_or_default()
}

async fn node(
    name: &str,
    registry: &MemoryRegistry,
    ledger: &Ledger,
    t0: &Arc<Clock0>,
) -> dcron_core::Result<Dcron> {
    let (l, c) = (ledger.clone(), t0.clone());
    let node = Dcron::builder(registry.clone())
        .node_name(name)
        .ttl(Duration::from_secs(2))
        .poll_interval(Duration::from_millis(500))
        // Exact accounting: every missed occurrence in the window is caught up, not just the
        // latest one (the default FireOnce coalesces).
        .misfire_policy(MisfirePolicy::FireAll { max: 100 })
        .misfire_window(Duration::from_secs(20))
        // All nodes share one clock here.
        .max_clock_skew(Duration::from_millis(200))
        .grace_period(Duration::from_secs(5))
        .task_run_fn(move |ctx| {
            let (l, c) = (l.clone(), c.clone());
            async move {
                println!(
                    "[{:5.2}s] {} ran {} @ {} (payload {:?}{})",
                    c.t(),
                    short(&ctx.node_id),
                    ctx.name(),
                    ctx.scheduled.format("%H:%M:%S"),
                    ctx.payload(),
                    if ctx.catch_up { ", catch-up" } else { "" }
                );
                l.record(
                    FireKey::new(ctx.name(), ctx.scheduled),
                    ctx.node_id.to_string(),
                    ctx.token,
                    Utc::now(),
                );
                Ok(())
            }
        })
        .build()?;
    for (task, cron) in STATIC_TASKS {
        let (l, c) = (ledger.clone(), t0.clone());
        node.add_func(task, cron, move |ctx| {
            let (l, c) = (l.clone(), c.clone());
            async move {
                println!(
                    "[{:5.2}s] {} ran {} @ {}{}",
                    c.t(),
                    short(&ctx.node_id),
                    ctx.name(),
                    ctx.scheduled.format("%H:%M:%S"),
                    if ctx.catch_up { " (catch-up)" } else { "" }
                );
                l.record(
                    FireKey::new(ctx.name(), ctx.scheduled),
                    ctx.node_id.to_string(),
                    ctx.token,
                    Utc::now(),
                );
                Ok(())
            }
        })
        .await?;
    }
    let (l, c) = (ledger.clone(), t0.clone());
    node.add_one_shot_func(ONE_SHOT, "*/3 * * * * *", move |ctx| {
        let (l, c) = (l.clone(), c.clone());
        async move {
            println!(
                "[{:5.2}s] {} ran the one-shot {} @ {}",
                c.t(),
                short(&ctx.node_id),
                ctx.name(),
                ctx.scheduled.format("%H:%M:%S")
            );
            l.record(
                FireKey::new(ctx.name(), ctx.scheduled),
                ctx.node_id.to_string(),
                ctx.token,
                Utc::now(),
            );
            Ok(())
        }
    })
    .await?;
    node.start().await?;
    Ok(node)
}

/// `node-1-<uuid>` → `node-1`.
fn short(id: &str) -> &str {
    id.rsplit_once('-').map(|(name, _)| name).unwrap_or(id)
}

async fn wait_working(nodes: &[&Dcron]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && !nodes.iter().all(|n| n.state() == "working") {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::main]
async fn main() {
    let code = match run().await {
        Ok(clean) => {
            if clean {
                0
            } else {
                1
            }
        }
        Err(e) => {
            eprintln!("quickstart failed: {e}");
            2
        }
    };
    std::process::exit(code);
}

async fn run() -> dcron_core::Result<bool> {
    let t0 = Arc::new(Clock0(Instant::now()));
    let registry = MemoryRegistry::new();
    let ledger = Ledger::new();
    println!("starting three nodes on one MemoryRegistry");
    let n1 = node("node-1", &registry, &ledger, &t0).await?;
    let n2 = node("node-2", &registry, &ledger, &t0).await?;
    let n3 = node("node-3", &registry, &ledger, &t0).await?;
    wait_working(&[&n1, &n2, &n3]).await;
    let start = Utc::now();
    println!("[{:5.2}s] all three working", t0.t());

    for name in DYNAMIC_TASKS {
        n1.add_task_meta(
            TaskMeta::new(name, "* * * * * *").with_payload(format!("hello from {name}")),
        )
        .await?;
    }
    let dynamic_added = Utc::now();
    println!(
        "[{:5.2}s] added {} dynamic tasks",
        t0.t(),
        DYNAMIC_TASKS.len()
    );

    tokio::time::sleep(Duration::from_secs(5)).await;
    n2.mark_task_deleted("dynamic-doomed").await?;
    let deleted_at = Utc::now();
    println!("[{:5.2}s] marked dynamic-doomed deleted", t0.t());

    tokio::time::sleep(Duration::from_secs(3)).await;
    println!("[{:5.2}s] node-3 leaves gracefully", t0.t());
    n3.stop().await?;

    tokio::time::sleep(Duration::from_secs(3)).await;
    println!("[{:5.2}s] node-2 crashes (dropped without stop)", t0.t());
    drop(n2);

    tokio::time::sleep(Duration::from_secs(7)).await;
    let end = Utc::now() - chrono::Duration::milliseconds(300);
    println!(
        "[{:5.2}s] stopping node-1; owned {:?}",
        t0.t(),
        n1.my_running_tasks()
    );
    n1.stop().await?;

    // What should have run exactly once.
    let mut expected: BTreeSet<FireKey> = BTreeSet::new();
    for (task, cron) in STATIC_TASKS {
        expected.extend(
            occurrences(cron, start, end)
                .into_iter()
                .map(|t| FireKey::new(task, t)),
        );
    }
    for name in DYNAMIC_TASKS {
        let to = if name == "dynamic-doomed" {
            deleted_at - chrono::Duration::seconds(1)
        } else {
            end
        };
        expected.extend(
            occurrences("* * * * * *", dynamic_added, to)
                .into_iter()
                .map(|t| FireKey::new(name, t)),
        );
    }
    let report = check(&ledger, &expected);
    let execs = ledger.executions();
    let after_delete = execs
        .iter()
        .filter(|e| e.fire.task == "dynamic-doomed" && e.fire.instant > deleted_at)
        .count();
    let one_shot_runs = execs.iter().filter(|e| e.fire.task == ONE_SHOT).count();
    for d in &report.duplicates {
        println!("DUPLICATE {}", d.fire);
    }
    for m in &report.missed {
        println!("MISSED {m}");
    }
    println!("one-shot runs={one_shot_runs} (want 1); deleted-task runs after deletion={after_delete} (want 0)");
    let fires = expected.len() + 1;
    let executed = report.executed + usize::from(one_shot_runs >= 1);
    let duplicates = report.duplicates.len();
    let missed = report.missed.len() + usize::from(one_shot_runs == 0);
    println!("summary fires={fires} executed={executed} duplicates={duplicates} missed={missed}");
    Ok(duplicates == 0 && missed == 0 && after_delete == 0 && one_shot_runs == 1)
}
