//! Policy cases: pause, trigger-now, stored status, retries and cluster-wide overlap, with
//! several `Dcron` nodes on one registry in real time. They need record support
//! ([`dcron_core::Capabilities::records`]); a registry without it is skipped explicitly.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use dcron_core::{admin, Dcron, FireKey, OverlapPolicy, RetryPolicy, TaskOptions};

use crate::cluster::{all_working, node_builder, pause, record, stop_all, EVERY_SECOND};
use crate::harness::{now_millis, reached, CaseContext, CaseError, CaseResult};
use crate::ledger::Ledger;
use crate::{ensure, ensure_eq};

async fn require_records(cx: &CaseContext) -> Result<(), CaseError> {
    let reg = cx.open().await?;
    if reg.capabilities().records {
        Ok(())
    } else {
        Err(CaseError::Skipped(
            "the registry declares no record support".into(),
        ))
    }
}

/// A node whose static task `name` records every run into `ledger`.
async fn recording_node(
    cx: &CaseContext,
    node: &str,
    ledger: &Ledger,
    task: &str,
    options: TaskOptions,
) -> Result<Dcron, CaseError> {
    let n = node_builder(cx, node, ledger)
        .await?
        .status_interval(Duration::from_millis(300))
        .build()?;
    let l = ledger.clone();
    n.add_func_with(task, EVERY_SECOND, options, move |ctx| {
        let ledger = l.clone();
        async move {
            record(&ledger, &ctx);
            Ok(())
        }
    })
    .await?;
    n.start().await?;
    Ok(n)
}

fn runs_after(ledger: &Ledger, task: &str, after: DateTime<Utc>) -> Vec<String> {
    ledger
        .for_task(task)
        .into_iter()
        .filter(|e| e.fire.instant > after)
        .map(|e| format!("{} on {}", e.fire, e.node))
        .collect()
}

/// Pause from an operator's client stops the task on every node; trigger-now runs one extra
/// fire exactly once; resume brings the schedule back.
pub async fn pause_trigger_resume_cluster_wide(cx: &CaseContext) -> CaseResult {
    require_records(cx).await?;
    let ledger = Ledger::new();
    let task = "paused-task";
    let mut nodes = Vec::new();
    for name in ["n1", "n2", "n3"] {
        nodes.push(recording_node(cx, name, &ledger, task, TaskOptions::new()).await?);
    }
    let refs: Vec<&Dcron> = nodes.iter().collect();
    all_working(&refs).await?;
    let ran = reached(Duration::from_secs(10), || async {
        Ok(!ledger.for_task(task).is_empty())
    })
    .await?;
    ensure!(ran, "the task runs before the pause");
    let operator = cx.open().await?;
    admin::pause_task(&*operator, task, now_millis()).await?;
    // Every node sees the pause within one poll (300 ms); allow a second.
    let settled = now_millis() + chrono::Duration::seconds(1);
    pause(Duration::from_secs(3)).await;
    let during = runs_after(&ledger, task, settled);
    ensure!(during.is_empty(), "fired while paused: {during:?}");
    let trigger = admin::trigger_task(&*operator, task, now_millis()).await?;
    let triggered = reached(Duration::from_secs(10), || async {
        Ok(ledger.count(&FireKey::new(task, trigger.requested_at)) > 0)
    })
    .await?;
    ensure!(triggered, "the triggered fire ran within 10 s");
    pause(Duration::from_secs(2)).await;
    ensure_eq!(
        ledger.count(&FireKey::new(task, trigger.requested_at)),
        1,
        "runs of the triggered fire"
    );
    ensure!(
        admin::pending_triggers(&*operator).await?.items.is_empty(),
        "the trigger request was consumed"
    );
    let still = runs_after(&ledger, task, settled)
        .into_iter()
        .filter(|r| !r.contains(&trigger.requested_at.to_rfc3339()))
        .collect::<Vec<_>>();
    ensure!(
        still.is_empty(),
        "scheduled fires ran while paused: {still:?}"
    );
    admin::resume_task(&*operator, task, now_millis()).await?;
    let resumed = now_millis();
    let back = reached(Duration::from_secs(10), || async {
        Ok(!runs_after(&ledger, task, resumed).is_empty())
    })
    .await?;
    stop_all(&refs).await?;
    ensure!(back, "the task fires again after resume");
    let dups = ledger
        .executions()
        .into_iter()
        .filter(|e| ledger.count(&e.fire) > 1)
        .count();
    ensure_eq!(dups, 0, "duplicated executions");
    Ok(())
}

/// The owner stores the task's status; the counts continue across a change of owner and match
/// the executions.
pub async fn status_is_stored_and_survives_a_handover(cx: &CaseContext) -> CaseResult {
    require_records(cx).await?;
    let ledger = Ledger::new();
    let task = "status-task";
    let n1 = recording_node(cx, "n1", &ledger, task, TaskOptions::new()).await?;
    let n2 = recording_node(cx, "n2", &ledger, task, TaskOptions::new()).await?;
    all_working(&[&n1, &n2]).await?;
    let operator = cx.open().await?;
    let ran = reached(Duration::from_secs(10), || async {
        Ok(ledger.for_task(task).len() >= 3)
    })
    .await?;
    ensure!(ran, "three runs");
    // Hand the task over: stop its owner.
    let (leaving, staying) = if n1.my_running_tasks().is_empty() {
        (n2, n1)
    } else {
        (n1, n2)
    };
    leaving.stop().await?;
    let before = ledger.for_task(task).len();
    let more = reached(Duration::from_secs(15), || async {
        Ok(ledger.for_task(task).len() >= before + 3)
    })
    .await?;
    ensure!(more, "the new owner runs the task");
    // Quiesce, then the stored count must equal the executions.
    admin::pause_task(&*operator, task, now_millis()).await?;
    pause(Duration::from_secs(2)).await;
    let executed = ledger.for_task(task).len() as u64;
    let last: Arc<Mutex<Option<dcron_core::TaskStatus>>> = Arc::new(Mutex::new(None));
    let matched = reached(Duration::from_secs(10), || async {
        let s = admin::task_status(&*operator, task).await?;
        let ok = s.as_ref().is_some_and(|s| s.run_count == executed);
        *last.lock().unwrap_or_else(|p| p.into_inner()) = s;
        Ok(ok)
    })
    .await?;
    let last = last.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let local = staying.task_status(task).await?;
    staying.stop().await?;
    ensure!(
        matched,
        "stored run_count must reach the {executed} executions: {last:?}"
    );
    let stored = last.unwrap_or_else(|| dcron_core::TaskStatus::new(task, now_millis()));
    ensure_eq!(stored.failure_count, 0, "failures");
    ensure_eq!(
        stored.last_result,
        Some(dcron_core::LastResult::Ok),
        "last result"
    );
    ensure!(
        local.is_some_and(|l| l.run_count == executed),
        "the node's own view agrees"
    );
    Ok(())
}

/// A failed attempt is retried on the node that won the claim, with the same token; the retry
/// claims nothing.
pub async fn retries_stay_with_the_claim(cx: &CaseContext) -> CaseResult {
    require_records(cx).await?;
    type Attempts = Arc<Mutex<Vec<(FireKey, String, u64, u32)>>>;
    let attempts: Attempts = Arc::new(Mutex::new(Vec::new()));
    let ledger = Ledger::new();
    let mut nodes = Vec::new();
    for name in ["n1", "n2"] {
        let n = node_builder(cx, name, &ledger).await?.build()?;
        let a = attempts.clone();
        n.add_func_with(
            "retried",
            EVERY_SECOND,
            TaskOptions::new().retry(RetryPolicy::fixed(2, Duration::from_millis(200))),
            move |ctx| {
                let a = a.clone();
                async move {
                    a.lock().unwrap_or_else(|p| p.into_inner()).push((
                        FireKey::new(ctx.name(), ctx.scheduled),
                        ctx.node_id.to_string(),
                        ctx.token,
                        ctx.attempt,
                    ));
                    if ctx.attempt == 1 {
                        Err("first attempt fails".into())
                    } else {
                        Ok(())
                    }
                }
            },
        )
        .await?;
        n.start().await?;
        nodes.push(n);
    }
    let refs: Vec<&Dcron> = nodes.iter().collect();
    all_working(&refs).await?;
    pause(Duration::from_secs(4)).await;
    stop_all(&refs).await?;
    let seen = attempts.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut fires: Vec<FireKey> = seen.iter().map(|a| a.0.clone()).collect();
    fires.sort();
    fires.dedup();
    ensure!(fires.len() >= 2, "fires ran: {}", fires.len());
    for fire in &fires {
        let of: Vec<_> = seen.iter().filter(|a| &a.0 == fire).collect();
        let complete = of.len() == 2;
        let same = of.iter().all(|a| a.1 == of[0].1 && a.2 == of[0].2);
        let ordered = of.iter().map(|a| a.3).collect::<Vec<_>>();
        // A fire cut off by the stop may have only its first attempt.
        ensure!(
            (complete && same && ordered == vec![1, 2]) || (of.len() == 1 && ordered == vec![1]),
            "fire {fire}: attempts {of:?}"
        );
    }
    let claims = cx.open().await?.list_claims("retried").await?;
    ensure_eq!(
        claims.items.len(),
        fires.len(),
        "one claim per fire, none per retry"
    );
    Ok(())
}

/// `OverlapPolicy::Skip` holds across nodes: when the owner leaves while a long run is in
/// flight, the new owner does not start a fire until that run ends.
pub async fn overlap_skip_holds_across_nodes(cx: &CaseContext) -> CaseResult {
    require_records(cx).await?;
    type Spans = Arc<Mutex<Vec<(String, DateTime<Utc>, DateTime<Utc>)>>>;
    let spans: Spans = Arc::new(Mutex::new(Vec::new()));
    let ledger = Ledger::new();
    let mut nodes = Vec::new();
    for name in ["n1", "n2"] {
        let n = node_builder(cx, name, &ledger)
            .await?
            .default_overlap(OverlapPolicy::Skip)
            .grace_period(Duration::from_secs(10))
            .build()?;
        let s = spans.clone();
        n.add_func("long-run", EVERY_SECOND, move |ctx| {
            let s = s.clone();
            async move {
                let start = Utc::now();
                tokio::time::sleep(Duration::from_millis(2500)).await;
                s.lock().unwrap_or_else(|p| p.into_inner()).push((
                    ctx.node_id.to_string(),
                    start,
                    Utc::now(),
                ));
                Ok(())
            }
        })
        .await?;
        n.start().await?;
        nodes.push(n);
    }
    let refs: Vec<&Dcron> = nodes.iter().collect();
    all_working(&refs).await?;
    pause(Duration::from_millis(3500)).await;
    let owner = nodes
        .iter()
        .position(|n| !n.my_running_tasks().is_empty())
        .unwrap_or(0);
    let leaving = nodes.remove(owner);
    let staying = nodes.remove(0);
    leaving.stop().await?;
    let more = reached(Duration::from_secs(15), || async {
        let s = spans.lock().unwrap_or_else(|p| p.into_inner());
        Ok(s.iter().any(|x| x.0 == staying.node_id()))
    })
    .await?;
    staying.stop().await?;
    ensure!(more, "the new owner runs the task");
    let mut v = spans.lock().unwrap_or_else(|p| p.into_inner()).clone();
    v.sort_by_key(|x| x.1);
    // Wall clocks of one process: no tolerance needed beyond a few ms of timer jitter.
    let jitter = chrono::Duration::milliseconds(20);
    for pair in v.windows(2) {
        ensure!(
            pair[1].1 + jitter >= pair[0].2,
            "runs overlap: {:?} then {:?}",
            pair[0],
            pair[1]
        );
    }
    Ok(())
}

/// `backfill` claims the occurrences of a range and runs only those never claimed (here: the
/// ones a pause skipped); occurrences from before the task's live-since are not fires of it;
/// a second backfill of the same range runs nothing.
pub async fn backfill_runs_only_unclaimed_fires(cx: &CaseContext) -> CaseResult {
    let ledger = Ledger::new();
    let task = "backfilled";
    let n1 = node_builder(cx, "n1", &ledger)
        .await?
        .claim_retention(Duration::from_secs(600))
        .build()?;
    let l = ledger.clone();
    n1.add_func(task, EVERY_SECOND, move |ctx| {
        let ledger = l.clone();
        async move {
            record(&ledger, &ctx);
            Ok(())
        }
    })
    .await?;
    let started = now_millis();
    n1.start().await?;
    all_working(&[&n1]).await?;
    let ran = reached(Duration::from_secs(10), || async {
        Ok(ledger.for_task(task).len() >= 2)
    })
    .await?;
    ensure!(ran, "live fires ran");
    // A pause skips a few seconds of occurrences: never claimed.
    n1.pause_task(task).await?;
    let paused_at = now_millis();
    pause(Duration::from_millis(3_500)).await;
    n1.resume_task(task).await?;
    let ran_before = ledger.for_task(task).len();
    // The range reaches back before the task existed.
    let from = started - chrono::Duration::seconds(5);
    let to = now_millis();
    let report = n1.backfill(task, from, to).await?;
    let again = n1.backfill(task, from, to).await?;
    pause(Duration::from_secs(1)).await;
    n1.stop().await?;
    ensure!(
        report.claimed >= 2,
        "the paused seconds were never claimed: {report:?}"
    );
    ensure_eq!(
        report.claimed + report.already_claimed,
        report.occurrences,
        "every occurrence decided"
    );
    ensure_eq!(again.claimed, 0, "a second backfill runs nothing");
    let dups = ledger
        .executions()
        .into_iter()
        .filter(|e| ledger.count(&e.fire) > 1)
        .count();
    ensure_eq!(dups, 0, "duplicated executions");
    let early = ledger
        .for_task(task)
        .into_iter()
        .filter(|e| e.fire.instant < started - chrono::Duration::seconds(1))
        .count();
    ensure_eq!(early, 0, "fires from before the task existed");
    let backfilled = ledger
        .for_task(task)
        .into_iter()
        .filter(|e| e.fire.instant > paused_at && e.fire.instant < to)
        .count();
    ensure!(
        backfilled >= report.claimed && ledger.for_task(task).len() >= ran_before + report.claimed,
        "backfilled fires ran: {backfilled} for {report:?}"
    );
    Ok(())
}

/// `schedule_once` runs the `task_run_fn` handler once, after the delay, on one node, and
/// leaves no record or tombstone behind; its one claim stays until its retention ends (so the
/// fire can never run again).
pub async fn schedule_once_runs_once_and_leaves_no_trace(cx: &CaseContext) -> CaseResult {
    let ledger = Ledger::new();
    let n1 = node_builder(cx, "n1", &ledger).await?.build()?;
    let n2 = node_builder(cx, "n2", &ledger).await?.build()?;
    n1.start().await?;
    n2.start().await?;
    all_working(&[&n1, &n2]).await?;
    let asked = now_millis();
    n2.schedule_once("once-later", Duration::from_secs(2), "payload")
        .await?;
    let ran = reached(Duration::from_secs(15), || async {
        Ok(!ledger.for_task("once-later").is_empty())
    })
    .await?;
    ensure!(ran, "the scheduled run happened");
    let observer = cx.open().await?;
    let gone = reached(Duration::from_secs(10), || async {
        Ok(observer.get_task("once-later").await?.is_none())
    })
    .await?;
    pause(Duration::from_secs(2)).await;
    stop_all(&[&n1, &n2]).await?;
    ensure!(gone, "the record is cleaned up after the run");
    let runs = ledger.for_task("once-later");
    ensure_eq!(runs.len(), 1, "runs");
    ensure!(
        runs[0].fire.instant >= asked + chrono::Duration::milliseconds(1900),
        "not before the delay: {} vs {asked}",
        runs[0].fire.instant
    );
    ensure_eq!(
        observer.get_tombstone("once-later").await?,
        None,
        "no tombstone"
    );
    ensure_eq!(
        observer.list_claims("once-later").await?.items.len(),
        1,
        "its one claim, kept for its retention"
    );
    Ok(())
}

/// A handler that outlives its timeout is cut at the timeout on whichever node runs it: the
/// error handler receives `Error::Timeout`, the fire ran once, and the task's later fires still
/// run.
pub async fn timeouts_cut_slow_handlers(cx: &CaseContext) -> CaseResult {
    let ledger = Ledger::new();
    let timeouts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let other_errors = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut nodes = Vec::new();
    for name in ["n1", "n2"] {
        let (t, o) = (timeouts.clone(), other_errors.clone());
        let n = node_builder(cx, name, &ledger)
            .await?
            .error_handler(move |_, e| {
                let counter = if matches!(e, dcron_core::Error::Timeout { .. }) {
                    &t
                } else {
                    &o
                };
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            })
            .build()?;
        let l = ledger.clone();
        n.add_func_with(
            "slow",
            EVERY_SECOND,
            TaskOptions::new().timeout(Duration::from_millis(200)),
            move |ctx| {
                let ledger = l.clone();
                async move {
                    record(&ledger, &ctx);
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    Ok(())
                }
            },
        )
        .await?;
        n.start().await?;
        nodes.push(n);
    }
    let refs: Vec<&Dcron> = nodes.iter().collect();
    all_working(&refs).await?;
    let started = now_millis();
    // Three fires after the start ran (each cut at 200 ms, so they do not pile up).
    let ran = reached(Duration::from_secs(15), || async {
        Ok(runs_after(&ledger, "slow", started).len() >= 3)
    })
    .await?;
    // Let the last one reach its timeout before stopping.
    pause(Duration::from_millis(500)).await;
    stop_all(&refs).await?;
    ensure!(ran, "three fires after the start ran within 15 s");
    let runs = ledger.for_task("slow").len();
    let cut = timeouts.load(std::sync::atomic::Ordering::SeqCst);
    ensure!(
        cut >= 3 && cut <= runs,
        "{cut} timeouts for {runs} runs: every run is cut, none reported twice"
    );
    ensure_eq!(
        other_errors.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "errors other than timeouts"
    );
    let dups = ledger
        .executions()
        .into_iter()
        .filter(|e| ledger.count(&e.fire) > 1)
        .count();
    ensure_eq!(dups, 0, "duplicated executions");
    Ok(())
}
