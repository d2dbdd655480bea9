//! Execution policies on virtual time: retries, timeouts, panics, overlap, pause/resume,
//! trigger-now, status, backfill, schedule_once, and fixed-time tasks across DST transitions.
//! Nothing sleeps to wait: virtual time is advanced and conditions are polled with deadlines.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use dcron_core::{
    admin, Dcron, DcronBuilder, DcronEvent, Error, LastResult, MemoryRegistry, MisfirePolicy,
    OverlapPolicy, Registry, RetryPolicy, SkipReason, TaskMeta, TaskOptions, TokioClock,
};
use tokio::sync::broadcast;

fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s)
        .single()
        .expect("valid date")
}

fn base() -> DateTime<Utc> {
    at(2026, 1, 1, 0, 0, 0)
}

fn builder(reg: &MemoryRegistry, clock: &TokioClock, name: &str) -> DcronBuilder {
    Dcron::builder(reg.clone())
        .node_name(name)
        .clock(Arc::new(clock.clone()))
        .ttl(Duration::from_secs(3))
        .poll_interval(Duration::from_secs(1))
        .status_interval(Duration::from_millis(500))
        .max_clock_skew(Duration::ZERO)
        .grace_period(Duration::from_secs(30))
}

async fn advance(d: Duration) {
    tokio::time::sleep(d).await;
}

async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let steps = (limit.as_millis() / 100).max(1);
    for _ in 0..steps {
        if cond() {
            return;
        }
        advance(Duration::from_millis(100)).await;
    }
    panic!("timed out ({limit:?} virtual) waiting for {what}");
}

/// Every event received so far on `rx`.
fn drain(rx: &mut broadcast::Receiver<DcronEvent>, into: &mut Vec<DcronEvent>) {
    while let Ok(ev) = rx.try_recv() {
        into.push(ev);
    }
}

/// (task, scheduled, node, attempt, start, end) of each handler run, on virtual wall time.
type Runs = Arc<
    Mutex<
        Vec<(
            String,
            DateTime<Utc>,
            String,
            u32,
            DateTime<Utc>,
            DateTime<Utc>,
        )>,
    >,
>;

#[tokio::test(start_paused = true)]
async fn a_retry_belongs_to_the_same_fire_and_stops_when_it_succeeds() {
    let reg = MemoryRegistry::new();
    let clock = TokioClock::starting_at(base());
    let errors = Arc::new(AtomicUsize::new(0));
    let e2 = errors.clone();
    let node = builder(&reg, &clock, "a")
        .error_handler(move |_, _| {
            e2.fetch_add(1, Ordering::SeqCst);
        })
        .build()
        .expect("valid");
    let mut rx = node.events();
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let a2 = attempts.clone();
    let c2 = clock.clone();
    let options = TaskOptions::new().retry(RetryPolicy::fixed(4, Duration::from_secs(2)));
    node.add_func_with("flaky", "@every 1h", options, move |ctx| {
        let attempts = a2.clone();
        let clock = c2.clone();
        async move {
            use dcron_core::Clock;
            attempts.lock().expect("lock").push((
                ctx.scheduled,
                ctx.attempt,
                ctx.token,
                clock.now(),
            ));
            if ctx.attempt < 3 {
                Err("not yet".into())
            } else {
                Ok(())
            }
        }
    })
    .await
    .expect("added");
    node.start().await.expect("started");
    wait_for("three attempts", Duration::from_secs(3700), || {
        attempts.lock().expect("lock").len() >= 3
    })
    .await;
    advance(Duration::from_secs(10)).await;
    let seen = attempts.lock().expect("lock").clone();
    assert_eq!(seen.len(), 3, "success ends the retries: {seen:?}");
    let first = seen[0];
    // 00:00 is the start instant: caught up at once (FireOnce), then retried.
    assert_eq!(first.0, base(), "the fire of 00:00");
    for (i, (scheduled, attempt, token, _)) in seen.iter().enumerate() {
        assert_eq!(*scheduled, first.0, "same fire");
        assert_eq!(*token, first.2, "same claim token");
        assert_eq!(*attempt, i as u32 + 1);
    }
    assert!(
        seen[1].3 - seen[0].3 >= chrono::Duration::seconds(2),
        "fixed delay"
    );
    assert_eq!(errors.load(Ordering::SeqCst), 0, "no error reported");
    let claims = reg.list_claims("flaky").await.expect("lists");
    assert_eq!(claims.items.len(), 1, "retries claim nothing new");
    let mut events = Vec::new();
    drain(&mut rx, &mut events);
    let retried = events
        .iter()
        .filter(|e| matches!(e, DcronEvent::Retried { .. }))
        .count();
    assert_eq!(retried, 2);
    assert!(events.iter().any(|e| matches!(e, DcronEvent::Succeeded(_))));
    node.stop().await.expect("stops");
}

#[tokio::test(start_paused = true)]
async fn exhausted_retries_report_one_typed_error_and_timeouts_cancel_the_handler() {
    let reg = MemoryRegistry::new();
    let clock = TokioClock::starting_at(base());
    let errors: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let e2 = errors.clone();
    let node = builder(&reg, &clock, "a")
        .error_handler(move |meta, err| {
            let kind = match err {
                Error::Timeout { timeout, .. } => format!("timeout {}ms", timeout.as_millis()),
                Error::Task { .. } => "task".to_string(),
                Error::Panicked { message, .. } => format!("panic {message}"),
                other => format!("other {other}"),
            };
            e2.lock()
                .expect("lock")
                .push(format!("{}: {kind}", meta.name));
        })
        .build()
        .expect("valid");
    let mut rx = node.events();
    let runs = Arc::new(AtomicU32::new(0));
    let r2 = runs.clone();
    node.add_func_with(
        "always-fails",
        "@every 1h",
        TaskOptions::new().retry(RetryPolicy::exponential(3, Duration::from_secs(1))),
        move |_| {
            r2.fetch_add(1, Ordering::SeqCst);
            async { Err("boom".into()) }
        },
    )
    .await
    .expect("added");
    node.add_func_with(
        "slow",
        "@every 1h",
        TaskOptions::new().timeout(Duration::from_secs(5)),
        |_| async {
            tokio::time::sleep(Duration::from_secs(600)).await;
            Ok(())
        },
    )
    .await
    .expect("added");
    node.add_func("panics", "@every 1h", |_| async { panic!("kaput") })
        .await
        .expect("added");
    node.start().await.expect("started");
    wait_for("three errors", Duration::from_secs(3700), || {
        errors.lock().expect("lock").len() >= 3
    })
    .await;
    advance(Duration::from_secs(30)).await;
    let mut got = errors.lock().expect("lock").clone();
    got.sort();
    assert_eq!(
        got,
        vec![
            "always-fails: task".to_string(),
            "panics: panic kaput".to_string(),
            "slow: timeout 5000ms".to_string(),
        ]
    );
    assert_eq!(runs.load(Ordering::SeqCst), 3, "three attempts in all");
    let mut events = Vec::new();
    drain(&mut rx, &mut events);
    assert!(events
        .iter()
        .any(|e| matches!(e, DcronEvent::TimedOut(f) if f.task == "slow")));
    assert_eq!(
        node.state(),
        "working",
        "the node survives a panic and a timeout"
    );
    node.stop().await.expect("stops");
}

fn recording_task(
    runs: &Runs,
    clock: &TokioClock,
    node: &str,
    busy: Duration,
) -> impl Fn(dcron_core::FireContext) -> futures::future::BoxFuture<'static, dcron_core::TaskResult>
       + Send
       + Sync
       + 'static {
    let runs = runs.clone();
    let clock = clock.clone();
    let node = node.to_string();
    move |ctx| {
        let runs = runs.clone();
        let clock = clock.clone();
        let node = node.clone();
        Box::pin(async move {
            use dcron_core::Clock;
            let start = clock.now();
            tokio::time::sleep(busy).await;
            runs.lock().expect("lock").push((
                ctx.name().to_string(),
                ctx.scheduled,
                node,
                ctx.attempt,
                start,
                clock.now(),
            ));
            Ok(())
        })
    }
}

fn assert_no_overlap(runs: &Runs) {
    let mut v = runs.lock().expect("lock").clone();
    v.sort_by_key(|r| r.4);
    for pair in v.windows(2) {
        assert!(
            pair[1].4 >= pair[0].5,
            "runs overlap: {:?} and {:?}",
            pair[0],
            pair[1]
        );
    }
}

#[tokio::test(start_paused = true)]
async fn overlap_skip_and_queue_never_run_two_fires_at_once_on_one_node() {
    for (policy, name) in [
        (OverlapPolicy::Skip, "skip"),
        (OverlapPolicy::Queue, "queue"),
    ] {
        let reg = MemoryRegistry::new();
        let clock = TokioClock::starting_at(base());
        let runs: Runs = Arc::new(Mutex::new(Vec::new()));
        let node = builder(&reg, &clock, "a")
            .seconds(dcron_core::SecondsField::Optional)
            .misfire_policy(MisfirePolicy::Skip)
            .build()
            .expect("valid");
        let mut rx = node.events();
        node.add_func_with(
            name,
            "* * * * * *",
            TaskOptions::new().overlap(policy),
            recording_task(&runs, &clock, "a", Duration::from_millis(2500)),
        )
        .await
        .expect("added");
        node.start().await.expect("started");
        wait_for("six runs", Duration::from_secs(60), || {
            runs.lock().expect("lock").len() >= 6
        })
        .await;
        node.stop().await.expect("stops");
        assert_no_overlap(&runs);
        let mut events = Vec::new();
        drain(&mut rx, &mut events);
        let skipped = events
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    DcronEvent::Skipped {
                        reason: SkipReason::Overlap,
                        ..
                    }
                )
            })
            .count();
        assert!(skipped > 0, "{name}: fires during a run are skipped");
        if policy == OverlapPolicy::Queue {
            // Queued fires start as soon as the previous one ends: no idle gap of a second.
            let mut v = runs.lock().expect("lock").clone();
            v.sort_by_key(|r| r.4);
            for pair in v.windows(2) {
                assert!(
                    pair[1].4 - pair[0].5 <= chrono::Duration::milliseconds(200),
                    "queued fire waited too long: {pair:?}"
                );
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn overlap_skip_is_cluster_wide_when_the_owner_leaves_mid_run() {
    let reg = MemoryRegistry::new();
    let clock = TokioClock::starting_at(base());
    let runs: Runs = Arc::new(Mutex::new(Vec::new()));
    let mut nodes = Vec::new();
    for name in ["a", "b"] {
        let node = builder(&reg, &clock, name)
            .seconds(dcron_core::SecondsField::Optional)
            .misfire_policy(MisfirePolicy::FireOnce)
            .default_overlap(OverlapPolicy::Skip)
            .build()
            .expect("valid");
        node.add_func(
            "long",
            "*/2 * * * * *",
            recording_task(&runs, &clock, name, Duration::from_secs(7)),
        )
        .await
        .expect("added");
        node.start().await.expect("started");
        nodes.push(node);
    }
    // Wait until ownership has settled and the owner itself is in the middle of a run (its
    // events say a fire started and has not ended), then stop it gracefully: the other node
    // gains the task while that run still goes on, and must not start a fire until it ends.
    let mut owner_events = Vec::new();
    for n in &nodes {
        owner_events.push(n.events());
    }
    advance(Duration::from_secs(10)).await;
    let owner = nodes
        .iter()
        .position(|n| !n.my_running_tasks().is_empty())
        .expect("an owner");
    let rx = &mut owner_events[owner];
    while rx.try_recv().is_ok() {}
    let mut in_flight = false;
    for _ in 0..200 {
        while let Ok(ev) = rx.try_recv() {
            match ev {
                DcronEvent::Started(_) => in_flight = true,
                DcronEvent::Succeeded(_) | DcronEvent::Failed { .. } => in_flight = false,
                _ => {}
            }
        }
        if in_flight {
            break;
        }
        advance(Duration::from_millis(100)).await;
    }
    assert!(in_flight, "the owner runs a fire");
    advance(Duration::from_secs(2)).await;
    let leaving = nodes.remove(owner);
    let stop = tokio::spawn(async move { leaving.stop().await });
    let before = runs.lock().expect("lock").len();
    wait_for("runs on the other side", Duration::from_secs(120), || {
        runs.lock().expect("lock").len() >= before + 3
    })
    .await;
    stop.await.expect("joins").expect("stops");
    nodes[0].stop().await.expect("stops");
    let v = runs.lock().expect("lock").clone();
    let nodes_seen: std::collections::HashSet<_> = v.iter().map(|r| r.2.clone()).collect();
    assert_eq!(nodes_seen.len(), 2, "both nodes ran the task: {v:?}");
    assert_no_overlap(&runs);
}

#[tokio::test(start_paused = true)]
async fn pause_stops_fires_everywhere_and_resume_does_not_catch_up_the_pause() {
    let reg = MemoryRegistry::new();
    let clock = TokioClock::starting_at(base());
    let runs: Runs = Arc::new(Mutex::new(Vec::new()));
    let mut nodes = Vec::new();
    for name in ["a", "b", "c"] {
        let node = builder(&reg, &clock, name)
            .seconds(dcron_core::SecondsField::Optional)
            .misfire_policy(MisfirePolicy::FireAll { max: 100 })
            .misfire_window(Duration::from_secs(120))
            .build()
            .expect("valid");
        for task in ["t1", "t2", "t3", "t4"] {
            node.add_func(
                task,
                "*/5 * * * * *",
                recording_task(&runs, &clock, name, Duration::ZERO),
            )
            .await
            .expect("added");
        }
        node.start().await.expect("started");
        nodes.push(node);
    }
    advance(Duration::from_secs(20)).await;
    use dcron_core::Clock;
    nodes[0].pause_task("t1").await.expect("pauses");
    let paused_at = clock.now();
    assert!(admin::is_paused(&reg, "t1").await.expect("reads"));
    advance(Duration::from_secs(40)).await;
    nodes[1].resume_task("t1").await.expect("resumes");
    let resumed_at = clock.now();
    // Force a rebalance with catch-up (FireAll over 120 s) after the resume.
    nodes[2].stop().await.expect("stops");
    advance(Duration::from_secs(20)).await;
    for n in &nodes[..2] {
        n.stop().await.expect("stops");
    }
    let v = runs.lock().expect("lock").clone();
    let grace = chrono::Duration::seconds(2); // one poll interval for the other nodes
    let during: Vec<_> = v
        .iter()
        .filter(|r| r.0 == "t1" && r.1 > paused_at + grace && r.1 < resumed_at)
        .collect();
    assert!(during.is_empty(), "t1 fired while paused: {during:?}");
    assert!(
        v.iter().any(|r| r.0 == "t1" && r.1 > resumed_at),
        "t1 fires again after resume"
    );
    let t2_during = v
        .iter()
        .filter(|r| r.0 == "t2" && r.1 > paused_at && r.1 < resumed_at)
        .count();
    assert!(t2_during >= 7, "other tasks keep running: {t2_during}");
}

#[tokio::test(start_paused = true)]
async fn trigger_now_runs_exactly_once_cluster_wide_and_status_is_readable_anywhere() {
    use dcron_core::Clock;
    let reg = MemoryRegistry::new();
    // An hour after midnight: the @daily occurrence is outside the misfire window.
    let clock = TokioClock::starting_at(base() + chrono::Duration::hours(1));
    let runs: Runs = Arc::new(Mutex::new(Vec::new()));
    let mut nodes = Vec::new();
    for name in ["a", "b", "c"] {
        let node = builder(&reg, &clock, name).build().expect("valid");
        node.add_func(
            "daily",
            "@daily",
            recording_task(&runs, &clock, name, Duration::ZERO),
        )
        .await
        .expect("added");
        node.start().await.expect("started");
        nodes.push(node);
    }
    advance(Duration::from_secs(5)).await;
    // From the registry alone, as an operator tool would.
    let t = admin::trigger_task(&reg, "daily", clock.now())
        .await
        .expect("triggers");
    wait_for("the triggered run", Duration::from_secs(30), || {
        !runs.lock().expect("lock").is_empty()
    })
    .await;
    advance(Duration::from_secs(10)).await;
    let second = nodes[2].trigger_task("daily").await.expect("triggers");
    wait_for("the second triggered run", Duration::from_secs(30), || {
        runs.lock().expect("lock").len() >= 2
    })
    .await;
    advance(Duration::from_secs(10)).await;
    let v = runs.lock().expect("lock").clone();
    assert_eq!(v.len(), 2, "each trigger runs once: {v:?}");
    assert_eq!(v[0].1, t.requested_at);
    assert_eq!(v[1].1, second.requested_at);
    assert!(admin::pending_triggers(&reg)
        .await
        .expect("lists")
        .items
        .is_empty());
    let stored = admin::task_status(&reg, "daily")
        .await
        .expect("reads")
        .expect("a status record");
    assert_eq!(stored.run_count, 2);
    assert_eq!(stored.failure_count, 0);
    assert_eq!(stored.last_result, Some(LastResult::Ok));
    assert_eq!(stored.last_fire, Some(second.requested_at));
    for n in &nodes {
        let s = n.task_status("daily").await.expect("reads").expect("known");
        assert_eq!(s.run_count, 2, "node {} sees the counts", n.node_id());
        assert!(s.owner.is_some());
    }
    let mut next_fires = Vec::new();
    for n in &nodes {
        if let Some(next) = n
            .task_status("daily")
            .await
            .expect("reads")
            .and_then(|s| s.next_fire)
        {
            next_fires.push(next);
        }
    }
    assert_eq!(
        next_fires,
        vec![at(2026, 1, 2, 0, 0, 0)],
        "the owner alone reports it"
    );
    // A tombstoned task cannot be triggered.
    nodes[0].mark_task_deleted("daily").await.expect("deletes");
    assert!(matches!(
        nodes[0].trigger_task("daily").await,
        Err(Error::Tombstoned { .. })
    ));
    for n in &nodes {
        n.stop().await.expect("stops");
    }
}

#[tokio::test(start_paused = true)]
async fn backfill_runs_only_what_was_never_claimed() {
    let reg = MemoryRegistry::new();
    let clock = TokioClock::starting_at(base());
    let runs: Runs = Arc::new(Mutex::new(Vec::new()));
    let node = builder(&reg, &clock, "a")
        .misfire_policy(MisfirePolicy::Skip)
        .claim_retention(Duration::from_secs(24 * 3600))
        .build()
        .expect("valid");
    let mut rx = node.events();
    node.add_func(
        "tick",
        "@every 10s",
        recording_task(&runs, &clock, "a", Duration::ZERO),
    )
    .await
    .expect("added");
    node.start().await.expect("started");
    advance(Duration::from_secs(35)).await;
    let ran_live = runs.lock().expect("lock").len();
    // +0 s … +30 s ran live; then a pause skips +40 s … +60 s (never claimed).
    assert_eq!(ran_live, 4, "live fires");
    node.pause_task("tick").await.expect("pauses");
    advance(Duration::from_secs(30)).await;
    node.resume_task("tick").await.expect("resumes");
    assert_eq!(runs.lock().expect("lock").len(), ran_live, "paused");
    // The range reaches back before the task existed: nothing before its live-since (the
    // start, +0 s) is a fire of it.
    let from = base() - chrono::Duration::seconds(60);
    let to = base() + chrono::Duration::seconds(70);
    let report = node.backfill("tick", from, to).await.expect("backfills");
    assert_eq!(report.occurrences, 7, "{report:?}");
    assert_eq!(report.claimed, 3, "{report:?}");
    assert_eq!(report.already_claimed, 4, "{report:?}");
    wait_for("backfilled runs", Duration::from_secs(10), || {
        runs.lock().expect("lock").len() >= ran_live + 3
    })
    .await;
    let again = node.backfill("tick", from, to).await.expect("backfills");
    assert_eq!(again.claimed, 0, "nothing twice: {again:?}");
    assert!(matches!(
        node.backfill("nope", from, base()).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        node.backfill("tick", base(), from).await,
        Err(Error::InvalidArgument(_))
    ));
    let mut events = Vec::new();
    drain(&mut rx, &mut events);
    assert!(events
        .iter()
        .any(|e| matches!(e, DcronEvent::Backfilled { claimed: 3, .. })));
    node.stop().await.expect("stops");
    let v = runs.lock().expect("lock").clone();
    let mut fires: Vec<_> = v.iter().map(|r| r.1).collect();
    fires.sort();
    let before = fires.len();
    fires.dedup();
    assert_eq!(before, fires.len(), "no fire ran twice");
}

#[tokio::test(start_paused = true)]
async fn schedule_once_runs_the_payload_once_then_leaves_no_trace() {
    let reg = MemoryRegistry::new();
    let clock = TokioClock::starting_at(base());
    let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::new(Mutex::new(Vec::new()));
    let mut nodes = Vec::new();
    for name in ["a", "b"] {
        let seen = seen.clone();
        let node = builder(&reg, &clock, name)
            .task_run_fn(move |ctx| {
                let seen = seen.clone();
                async move {
                    seen.lock()
                        .expect("lock")
                        .push((ctx.name().to_string(), ctx.payload().to_string()));
                    Ok(())
                }
            })
            .build()
            .expect("valid");
        node.start().await.expect("started");
        nodes.push(node);
    }
    advance(Duration::from_secs(3)).await;
    nodes[0]
        .schedule_once("send-mail-42", Duration::from_secs(30), "to=ops")
        .await
        .expect("scheduled");
    advance(Duration::from_secs(25)).await;
    assert!(
        seen.lock().expect("lock").is_empty(),
        "not before the delay"
    );
    wait_for("the run", Duration::from_secs(20), || {
        !seen.lock().expect("lock").is_empty()
    })
    .await;
    advance(Duration::from_secs(10)).await;
    assert_eq!(
        *seen.lock().expect("lock"),
        vec![("send-mail-42".to_string(), "to=ops".to_string())]
    );
    assert_eq!(reg.get_task("send-mail-42").await.expect("reads"), None);
    assert_eq!(
        reg.get_tombstone("send-mail-42").await.expect("reads"),
        None
    );
    for n in &nodes {
        n.stop().await.expect("stops");
    }
}

#[tokio::test(start_paused = true)]
async fn a_node_that_loses_the_task_stops_retrying() {
    let reg = MemoryRegistry::new();
    let clock = TokioClock::starting_at(base());
    let node = builder(&reg, &clock, "a").build().expect("valid");
    let mut rx = node.events();
    let attempts = Arc::new(AtomicU32::new(0));
    let a2 = attempts.clone();
    node.add_func_with(
        "doomed",
        "@every 1m",
        TaskOptions::new().retry(RetryPolicy::fixed(10, Duration::from_secs(20))),
        move |_| {
            a2.fetch_add(1, Ordering::SeqCst);
            async { Err("down".into()) }
        },
    )
    .await
    .expect("added");
    node.start().await.expect("started");
    wait_for("the first attempt", Duration::from_secs(70), || {
        attempts.load(Ordering::SeqCst) >= 1
    })
    .await;
    node.mark_task_deleted("doomed").await.expect("deletes");
    advance(Duration::from_secs(120)).await;
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        1,
        "no retry after losing the task"
    );
    let mut events = Vec::new();
    drain(&mut rx, &mut events);
    assert!(
        events.iter().any(|e| matches!(
            e,
            DcronEvent::RetryAbandoned { reason, .. } if reason.contains("no longer owns")
        )),
        "{events:?}"
    );
    node.stop().await.expect("stops");
}

/// Europe/Berlin, `0 30 2 * * *` (02:30 local every day) across both 2026 transitions:
/// - 2026-03-29 02:00 CET → 03:00 CEST: 02:30 does not exist; it runs once at the transition,
///   03:00 CEST = 01:00 UTC.
/// - 2026-10-25 03:00 CEST → 02:00 CET: 02:30 exists twice (00:30 UTC and 01:30 UTC); it runs
///   once, at the first (00:30 UTC).
///
/// Australia/Lord_Howe, `0 15 2 * * *`, across 2026-04-05 02:00 +11 → 01:30 +10:30 (a
/// 30-minute fall-back): 01:30–02:00 repeats but 02:15 occurs once; 2026-10-04 02:00 +10:30 →
/// 02:30 +11 (a 30-minute spring-forward): 02:15 does not exist and runs at the transition,
/// 02:30 +11 = 15:30 UTC the day before.
#[tokio::test(start_paused = true)]
async fn fixed_time_tasks_run_once_per_local_day_across_dst() {
    struct Case {
        zone: &'static str,
        cron: &'static str,
        start: DateTime<Utc>,
        days: i64,
        expected: Vec<DateTime<Utc>>,
    }
    let cases = [
        Case {
            zone: "Europe/Berlin",
            cron: "0 30 2 * * *",
            start: at(2026, 3, 27, 12, 0, 0),
            days: 3,
            // 28 Mar 02:30 CET, 29 Mar 03:00 CEST (gap), 30 Mar 02:30 CEST
            expected: vec![
                at(2026, 3, 28, 1, 30, 0),
                at(2026, 3, 29, 1, 0, 0),
                at(2026, 3, 30, 0, 30, 0),
            ],
        },
        Case {
            zone: "Europe/Berlin",
            cron: "0 30 2 * * *",
            start: at(2026, 10, 23, 12, 0, 0),
            days: 3,
            // 24 Oct 02:30 CEST, 25 Oct 02:30 CEST (first of two), 26 Oct 02:30 CET
            expected: vec![
                at(2026, 10, 24, 0, 30, 0),
                at(2026, 10, 25, 0, 30, 0),
                at(2026, 10, 26, 1, 30, 0),
            ],
        },
        Case {
            zone: "Australia/Lord_Howe",
            cron: "0 15 2 * * *",
            start: at(2026, 4, 3, 0, 0, 0),
            days: 3,
            // 4 Apr 02:15 +11, 5 Apr 02:15 +10:30, 6 Apr 02:15 +10:30
            expected: vec![
                at(2026, 4, 3, 15, 15, 0),
                at(2026, 4, 4, 15, 45, 0),
                at(2026, 4, 5, 15, 45, 0),
            ],
        },
        Case {
            zone: "Australia/Lord_Howe",
            cron: "0 15 2 * * *",
            start: at(2026, 10, 2, 0, 0, 0),
            days: 3,
            // 3 Oct 02:15 +10:30, 4 Oct 02:30 +11 (gap), 5 Oct 02:15 +11
            expected: vec![
                at(2026, 10, 2, 15, 45, 0),
                at(2026, 10, 3, 15, 30, 0),
                at(2026, 10, 4, 15, 15, 0),
            ],
        },
    ];
    for case in cases {
        let reg = MemoryRegistry::new();
        let clock = TokioClock::starting_at(case.start);
        let runs: Runs = Arc::new(Mutex::new(Vec::new()));
        let node = builder(&reg, &clock, "a")
            .poll_interval(Duration::from_secs(600))
            .status_interval(Duration::from_secs(3600))
            .ttl(Duration::from_secs(60))
            .build()
            .expect("valid");
        node.add_func_with(
            "local",
            case.cron,
            TaskOptions::new().time_zone(case.zone),
            recording_task(&runs, &clock, "a", Duration::ZERO),
        )
        .await
        .expect("added");
        node.start().await.expect("started");
        advance(Duration::from_secs(case.days as u64 * 86_400)).await;
        node.stop().await.expect("stops");
        let mut fires: Vec<_> = runs.lock().expect("lock").iter().map(|r| r.1).collect();
        fires.sort();
        assert_eq!(fires, case.expected, "{} {}", case.zone, case.cron);
    }
}

#[tokio::test(start_paused = true)]
async fn dynamic_tasks_carry_their_policies_to_every_node() {
    let reg = MemoryRegistry::new();
    let clock = TokioClock::starting_at(base());
    let attempts: Arc<Mutex<Vec<(String, u32)>>> = Arc::new(Mutex::new(Vec::new()));
    let mut nodes = Vec::new();
    for name in ["a", "b"] {
        let attempts = attempts.clone();
        let node = builder(&reg, &clock, name)
            .task_run_fn(move |ctx| {
                let attempts = attempts.clone();
                async move {
                    attempts
                        .lock()
                        .expect("lock")
                        .push((ctx.node_id.to_string(), ctx.attempt));
                    Err("fails".into())
                }
            })
            .build()
            .expect("valid");
        node.start().await.expect("started");
        nodes.push(node);
    }
    let meta = TaskMeta::new("dyn", "@every 1h")
        .with_retry(RetryPolicy::linear(3, Duration::from_secs(1)))
        .with_timeout(Duration::from_secs(60));
    nodes[1].add_task_meta(meta).await.expect("adds");
    let stored = reg.get_task("dyn").await.expect("reads").expect("stored");
    assert_eq!(
        stored.retry,
        Some(RetryPolicy::linear(3, Duration::from_secs(1)))
    );
    assert_eq!(stored.timeout_ms, Some(60_000));
    wait_for("three attempts", Duration::from_secs(3700), || {
        attempts.lock().expect("lock").len() >= 3
    })
    .await;
    advance(Duration::from_secs(10)).await;
    let v = attempts.lock().expect("lock").clone();
    assert_eq!(v.len(), 3, "{v:?}");
    assert!(
        v.iter().all(|(n, _)| *n == v[0].0),
        "retries stay on one node"
    );
    assert!(matches!(
        nodes[0]
            .add_task_meta(
                TaskMeta::new("bad", "@hourly").with_retry(RetryPolicy::fixed(0, Duration::ZERO))
            )
            .await,
        Err(Error::InvalidArgument(_))
    ));
    for n in &nodes {
        n.stop().await.expect("stops");
    }
}

#[tokio::test(start_paused = true)]
async fn a_working_node_keeps_last_alive_fresh() {
    use dcron_core::Clock;
    let reg = MemoryRegistry::new();
    let clock = TokioClock::starting_at(base());
    let node = builder(&reg, &clock, "a").build().expect("valid");
    node.start().await.expect("started");
    advance(Duration::from_secs(300)).await;
    let nodes = reg.list_nodes().await.expect("lists").items;
    assert_eq!(nodes.len(), 1);
    let age = clock.now() - nodes[0].last_alive;
    assert!(
        age <= chrono::Duration::seconds(35),
        "last_alive is {age} old after 5 minutes"
    );
    node.stop().await.expect("stops");
}

#[tokio::test(start_paused = true)]
async fn a_trigger_its_owner_cannot_run_is_dropped_at_once_not_at_its_expiry() {
    use dcron_core::{Clock, PutMode};
    let reg = MemoryRegistry::new();
    let clock = TokioClock::starting_at(base() + chrono::Duration::hours(1));
    // No handler for dynamic tasks on this node.
    let node = builder(&reg, &clock, "a").build().expect("valid");
    node.start().await.expect("started");
    let mut meta = TaskMeta::new("orphan", "@daily");
    meta.created_at = Some(clock.now());
    reg.put_task(&meta, PutMode::CreateOnly)
        .await
        .expect("another node's add");
    advance(Duration::from_secs(3)).await;
    admin::trigger_task(&reg, "orphan", clock.now())
        .await
        .expect("triggers");
    // Dropped within a few polls (the expiry is 10 minutes away).
    let mut gone = false;
    for _ in 0..100 {
        advance(Duration::from_millis(100)).await;
        if admin::pending_triggers(&reg)
            .await
            .expect("lists")
            .items
            .is_empty()
        {
            gone = true;
            break;
        }
    }
    assert!(
        gone,
        "the unrunnable trigger request is still pending after 10 s"
    );
    node.stop().await.expect("stop");
}
