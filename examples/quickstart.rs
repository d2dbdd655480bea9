//! Three dcron nodes in one process on `MemoryRegistry`, with static, dynamic, one-shot and
//! deleted tasks, a graceful leave and a crash; ends with a ledger check that counts
//! duplicates, misses and unexpected fires (an instant the schedule did not produce since the
//! task existed, a fire of a deleted task, a second fire of a one-shot) and exits non-zero on
//! any of them.
//!
//! `cargo run --release --example quickstart`

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dcron_core::{
    Dcron, FireKey, MemoryRegistry, MisfirePolicy, Registry, Schedule, SecondsField, TaskMeta,
};
use dcron_testkit::ledger::{check_allowed, Ledger};
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

/// The instants of `expr` in `[from, to]`.
fn occurrences(expr: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    Schedule::parse(expr, None, SecondsField::Optional)
        .map(|s| s.occurrences_in(from - chrono::Duration::milliseconds(1), to, 10_000))
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
    // One fire in its life: the first */3 instant once the task exists, on one node only.
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
    // Every node registers the same static tasks in code, then starts: `start()` answers once
    // the node is registered and has taken its share.
    let n1 = node("node-1", &registry, &ledger, &t0).await?;
    let n2 = node("node-2", &registry, &ledger, &t0).await?;
    let n3 = node("node-3", &registry, &ledger, &t0).await?;
    for n in [&n1, &n2, &n3] {
        n.start().await?;
    }
    wait_working(&[&n1, &n2, &n3]).await;
    println!("[{:5.2}s] all three working", t0.t());

    for name in DYNAMIC_TASKS {
        n1.add_task_meta(
            TaskMeta::new(name, "* * * * * *").with_payload(format!("hello from {name}")),
        )
        .await?;
    }
    println!(
        "[{:5.2}s] added {} dynamic tasks",
        t0.t(),
        DYNAMIC_TASKS.len()
    );

    tokio::time::sleep(Duration::from_secs(5)).await;
    let deleting = Utc::now();
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
    // Fires up to here must have run; the ones of the last moments may or may not have.
    let end = Utc::now() - chrono::Duration::milliseconds(300);
    println!(
        "[{:5.2}s] stopping node-1; owned {:?}",
        t0.t(),
        n1.my_running_tasks()
    );
    n1.stop().await?;
    let stopped = Utc::now();

    // Each task's life as the registry recorded it: its fires are exactly the schedule's
    // instants from then on.
    let mut names: Vec<String> = STATIC_TASKS.iter().map(|(n, _)| n.to_string()).collect();
    names.extend(DYNAMIC_TASKS.iter().map(|n| n.to_string()));
    names.push(ONE_SHOT.to_string());
    let request: Vec<(String, DateTime<Utc>)> = names.iter().map(|n| (n.clone(), end)).collect();
    let lives = registry.ensure_lives(&request).await?;
    let live_since = |name: &str| {
        names
            .iter()
            .position(|n| n == name)
            .and_then(|i| lives.get(i))
            .map_or(end, |l| l.live_since)
    };

    // Required: must have run exactly once. Allowed: may have run (at most once).
    let mut required: BTreeSet<FireKey> = BTreeSet::new();
    let mut allowed: BTreeSet<FireKey> = BTreeSet::new();
    let mut both = |task: &str, expr: &str, from: DateTime<Utc>, must: DateTime<Utc>, may| {
        required.extend(
            occurrences(expr, from, must)
                .into_iter()
                .map(|t| FireKey::new(task, t)),
        );
        allowed.extend(
            occurrences(expr, from, may)
                .into_iter()
                .map(|t| FireKey::new(task, t)),
        );
    };
    for (task, cron) in STATIC_TASKS {
        both(task, cron, live_since(task), end, stopped);
    }
    for name in DYNAMIC_TASKS {
        let (must, may) = if name == "dynamic-doomed" {
            // Fires before the deletion was asked must run; none after it returned may.
            (deleting - chrono::Duration::seconds(1), deleted_at)
        } else {
            (end, stopped)
        };
        both(name, "* * * * * *", live_since(name), must, may);
    }
    // A one-shot has exactly one fire: its first instant once it exists.
    let one_shot = occurrences("*/3 * * * * *", live_since(ONE_SHOT), stopped)
        .into_iter()
        .next()
        .map(|t| FireKey::new(ONE_SHOT, t));
    required.extend(one_shot.clone());
    allowed.extend(one_shot);

    let report = check_allowed(&ledger, &required, &allowed);
    for d in &report.duplicates {
        println!("DUPLICATE {}", d.fire);
    }
    for m in &report.missed {
        println!("MISSED {m}");
    }
    for u in &report.unexpected {
        println!("UNEXPECTED {} on {}", u.fire, short(&u.node));
    }
    let one_shot_runs = ledger.for_task(ONE_SHOT).len();
    println!("one-shot runs={one_shot_runs} (want 1)");
    let (duplicates, missed, unexpected) = (
        report.duplicates.len(),
        report.missed.len(),
        report.unexpected.len(),
    );
    println!(
        "summary fires={} executed={} duplicates={duplicates} missed={missed} unexpected={unexpected}",
        required.len(),
        report.executed
    );
    Ok(duplicates == 0 && missed == 0 && unexpected == 0)
}
