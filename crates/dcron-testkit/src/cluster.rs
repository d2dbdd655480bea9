//! Cluster cases: several `Dcron` nodes on one registry namespace, in real time with short
//! TTLs, checked against an execution ledger (each fire once, none missed).
//!
//! Every node is a separate client from [`CaseContext::open`], as separate processes would be.
//! Nodes use `FireAll` catch-up so every missed occurrence is accounted for exactly.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dcron_core::{Dcron, FireContext, FireKey, MisfirePolicy, Schedule, SecondsField, TaskMeta};

use crate::harness::{now_millis, reached, CaseContext, CaseError, CaseResult};
use crate::ledger::{check, Ledger};

pub(crate) const EVERY_SECOND: &str = "* * * * * *";

pub(crate) fn record(ledger: &Ledger, ctx: &FireContext) {
    ledger.record(
        FireKey::new(ctx.name(), ctx.scheduled),
        ctx.node_id.to_string(),
        ctx.token,
        now_millis(),
    );
}

/// The node TTL for a case: the backend's minimum, at least one second.
pub(crate) fn ttl(cx: &CaseContext) -> Duration {
    cx.min_ttl().max(Duration::from_secs(1))
}

/// How long a crashed node's tasks may take to move: its TTL, the backend's expiry slack, one
/// poll and one second.
fn takeover_bound(cx: &CaseContext) -> Duration {
    ttl(cx) + cx.expiry_slack() + Duration::from_secs(2)
}

async fn start_node(
    cx: &CaseContext,
    name: &str,
    ledger: &Ledger,
    statics: &[&str],
) -> Result<Dcron, CaseError> {
    let node = node_builder(cx, name, ledger).await?.build()?;
    for task in statics {
        let ledger = ledger.clone();
        node.add_func(task, EVERY_SECOND, move |ctx| {
            let ledger = ledger.clone();
            async move {
                record(&ledger, &ctx);
                Ok(())
            }
        })
        .await?;
    }
    node.start().await?;
    Ok(node)
}

/// The builder every cluster case starts from: a fresh client, short TTL and poll, `FireAll`
/// catch-up, and a `task_run_fn` that records into `ledger`.
pub(crate) async fn node_builder(
    cx: &CaseContext,
    name: &str,
    ledger: &Ledger,
) -> Result<dcron_core::DcronBuilder, CaseError> {
    let registry = cx.open().await?;
    let dynamic_ledger = ledger.clone();
    Ok(Dcron::builder(registry)
        .node_name(name)
        .ttl(ttl(cx))
        .poll_interval(Duration::from_millis(300))
        .misfire_policy(MisfirePolicy::FireAll { max: 1000 })
        .misfire_window(Duration::from_secs(60))
        .max_clock_skew(Duration::from_millis(200))
        .grace_period(Duration::from_secs(5))
        .task_run_fn(move |ctx| {
            let ledger = dynamic_ledger.clone();
            async move {
                record(&ledger, &ctx);
                Ok(())
            }
        }))
}

pub(crate) async fn all_working(nodes: &[&Dcron]) -> Result<(), CaseError> {
    let ok = reached(Duration::from_secs(20), || async {
        Ok(nodes.iter().all(|n| n.state() == "working"))
    })
    .await?;
    crate::ensure!(ok, "nodes did not all reach `working` within 20 s");
    Ok(())
}

pub(crate) async fn owned_once(
    nodes: &[&Dcron],
    tasks: usize,
    within: Duration,
) -> Result<bool, CaseError> {
    reached(within, || async {
        let mut owned: Vec<String> = nodes.iter().flat_map(|n| n.my_running_tasks()).collect();
        let total = owned.len();
        owned.sort();
        owned.dedup();
        Ok(total == tasks && owned.len() == tasks)
    })
    .await
}

fn every_second(tasks: &[&str], from: DateTime<Utc>, to: DateTime<Utc>) -> BTreeSet<FireKey> {
    let schedule = match Schedule::parse(EVERY_SECOND, None, SecondsField::Optional) {
        Ok(s) => s,
        Err(_) => return BTreeSet::new(),
    };
    let instants = schedule.occurrences_in(from, to, 100_000);
    tasks
        .iter()
        .flat_map(|t| instants.iter().map(move |i| FireKey::new(*t, *i)))
        .collect()
}

/// Fails on any duplicate, or any expected fire that never ran.
fn verdict(ledger: &Ledger, expected: &BTreeSet<FireKey>) -> CaseResult {
    let report = check(ledger, expected);
    crate::ensure!(
        report.duplicates.is_empty() && report.missed.is_empty(),
        "{} expected fires: {report}",
        expected.len()
    );
    Ok(())
}

pub(crate) async fn stop_all(nodes: &[&Dcron]) -> CaseResult {
    for n in nodes {
        n.stop().await?;
    }
    Ok(())
}

pub(crate) fn pause(d: Duration) -> tokio::time::Sleep {
    // Letting the cluster run for a while is the subject of these cases, not a wait for a
    // condition: conditions are awaited with `reached` (the testkit's `wait_until`).
    tokio::time::sleep(d)
}

/// Nodes joining and leaving gracefully: every fire runs once, none is lost.
pub async fn every_fire_once_through_join_and_leave(cx: &CaseContext) -> CaseResult {
    let ledger = Ledger::new();
    let tasks = ["join-a", "join-b", "join-c", "join-d"];
    let n1 = start_node(cx, "n1", &ledger, &tasks).await?;
    let n2 = start_node(cx, "n2", &ledger, &tasks).await?;
    all_working(&[&n1, &n2]).await?;
    let start = now_millis();
    pause(Duration::from_secs(3)).await;
    let n3 = start_node(cx, "n3", &ledger, &tasks).await?;
    all_working(&[&n3]).await?;
    let joined = owned_once(&[&n1, &n2, &n3], tasks.len(), Duration::from_secs(10)).await?;
    crate::ensure!(
        joined,
        "after a join every task must have exactly one owner"
    );
    pause(Duration::from_secs(2)).await;
    n1.stop().await?;
    let left = owned_once(&[&n2, &n3], tasks.len(), Duration::from_secs(10)).await?;
    crate::ensure!(
        left,
        "after a graceful leave every task must have exactly one owner"
    );
    pause(Duration::from_secs(3)).await;
    let end = now_millis() - chrono::Duration::milliseconds(1500);
    stop_all(&[&n2, &n3]).await?;
    verdict(&ledger, &every_second(&tasks, start, end))
}

/// A crashed node's tasks are taken over within TTL + slack and the fires of the gap are
/// caught up: each fire once, none missed.
pub async fn crashed_node_is_taken_over_and_the_gap_caught_up(cx: &CaseContext) -> CaseResult {
    let ledger = Ledger::new();
    let tasks = [
        "crash-a", "crash-b", "crash-c", "crash-d", "crash-e", "crash-f",
    ];
    let n1 = start_node(cx, "n1", &ledger, &tasks).await?;
    let n2 = start_node(cx, "n2", &ledger, &tasks).await?;
    all_working(&[&n1, &n2]).await?;
    let spread = owned_once(&[&n1, &n2], tasks.len(), Duration::from_secs(10)).await?;
    crate::ensure!(spread, "every task must have exactly one owner");
    let start = now_millis();
    pause(Duration::from_secs(2)).await;
    // Crash the node that owns more (it owns at least one task).
    let (victim, survivor) = if n1.my_running_tasks().len() >= n2.my_running_tasks().len() {
        (n1, n2)
    } else {
        (n2, n1)
    };
    crate::ensure!(
        !victim.my_running_tasks().is_empty(),
        "the victim owns a task"
    );
    let crashed_at = tokio::time::Instant::now();
    drop(victim);
    let bound = takeover_bound(cx);
    let taken = reached(bound, || async {
        Ok(survivor.my_running_tasks().len() == tasks.len())
    })
    .await?;
    crate::ensure!(
        taken,
        "the survivor must own every task within {bound:?} of the crash"
    );
    let took = crashed_at.elapsed();
    crate::ensure!(took <= bound, "takeover took {took:?}, bound {bound:?}");
    pause(Duration::from_secs(2)).await;
    let end = now_millis() - chrono::Duration::milliseconds(1500);
    survivor.stop().await?;
    verdict(&ledger, &every_second(&tasks, start, end))
}

/// A dynamic task added on one node is seen by its owner and run once per occurrence.
pub async fn dynamic_task_added_is_run_by_its_owner(cx: &CaseContext) -> CaseResult {
    let ledger = Ledger::new();
    let n1 = start_node(cx, "n1", &ledger, &[]).await?;
    let n2 = start_node(cx, "n2", &ledger, &[]).await?;
    all_working(&[&n1, &n2]).await?;
    n1.add_task_meta(TaskMeta::new("dyn-added", EVERY_SECOND))
        .await?;
    let added = now_millis();
    let owned = owned_once(&[&n1, &n2], 1, Duration::from_secs(10)).await?;
    crate::ensure!(owned, "the dynamic task must get exactly one owner");
    pause(Duration::from_secs(3)).await;
    let end = now_millis() - chrono::Duration::milliseconds(1500);
    stop_all(&[&n1, &n2]).await?;
    let expected = every_second(&["dyn-added"], added, end);
    crate::ensure!(!expected.is_empty(), "the run covers at least one fire");
    verdict(&ledger, &expected)
}

/// After `mark_task_deleted` on any node, the task fires nowhere.
pub async fn marked_deleted_task_stops_everywhere(cx: &CaseContext) -> CaseResult {
    let ledger = Ledger::new();
    let tasks = ["doomed"];
    let n1 = start_node(cx, "n1", &ledger, &tasks).await?;
    let n2 = start_node(cx, "n2", &ledger, &tasks).await?;
    all_working(&[&n1, &n2]).await?;
    let ran = reached(Duration::from_secs(10), || async {
        Ok(!ledger.for_task("doomed").is_empty())
    })
    .await?;
    crate::ensure!(ran, "the task runs before its deletion");
    n2.mark_task_deleted("doomed").await?;
    let deleted = now_millis();
    pause(Duration::from_secs(3)).await;
    stop_all(&[&n1, &n2]).await?;
    let after: Vec<String> = ledger
        .for_task("doomed")
        .into_iter()
        .filter(|e| e.fire.instant > deleted)
        .map(|e| format!("{} on {}", e.fire, e.node))
        .collect();
    crate::ensure!(after.is_empty(), "fired after deletion: {after:?}");
    Ok(())
}

/// A one-shot task runs exactly once cluster-wide, then is tombstoned.
pub async fn one_shot_runs_once_cluster_wide(cx: &CaseContext) -> CaseResult {
    let ledger = Ledger::new();
    let n1 = start_node(cx, "n1", &ledger, &[]).await?;
    let n2 = start_node(cx, "n2", &ledger, &[]).await?;
    all_working(&[&n1, &n2]).await?;
    n1.add_task_meta(TaskMeta::new("once", EVERY_SECOND).one_shot())
        .await?;
    let observer = cx.open().await?;
    let done = reached(Duration::from_secs(15), || async {
        Ok(observer.get_tombstone("once").await?.is_some())
    })
    .await?;
    crate::ensure!(done, "the one-shot is marked deleted after its run");
    pause(Duration::from_secs(2)).await;
    stop_all(&[&n1, &n2]).await?;
    let runs = ledger.for_task("once").len();
    crate::ensure!(runs == 1, "the one-shot ran {runs} times");
    Ok(())
}
