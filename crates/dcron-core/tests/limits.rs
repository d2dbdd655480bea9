//! What peers offer and a node now has too (issue "day one", item 6): concurrency limits per
//! node and per task, the stop report of fires still running at the end of the grace period,
//! `running_fires`, tags and `tasks_tagged`, and the bounded `task` label of the fire metrics.
//!
//! Every test runs `Dcron` nodes on one `MemoryRegistry` on virtual time (tokio's paused
//! clock): handlers "work" by sleeping virtual time, and the tests advance it and poll with
//! deadlines; nothing sleeps on the wall clock.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use dcron_core::{
    Dcron, DcronBuilder, DcronEvent, Error, MemoryRegistry, SkipReason, TaskMeta, TaskOptions,
    TokioClock,
};
use tokio::sync::broadcast;

const EVERY_SECOND: &str = "* * * * * *";

fn base() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0)
        .single()
        .expect("valid date")
}

fn builder(registry: &MemoryRegistry) -> DcronBuilder {
    Dcron::builder(registry.clone())
        .clock(Arc::new(TokioClock::starting_at(base())))
        .ttl(Duration::from_secs(3))
        .poll_interval(Duration::from_secs(1))
        .grace_period(Duration::from_secs(2))
        .misfire_window(Duration::from_secs(3))
        .task_run_fn(|_ctx| async { Ok(()) })
}

async fn advance(d: Duration) {
    tokio::time::sleep(d).await;
}

async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        advance(Duration::from_millis(50)).await;
    }
}

/// How many handlers run now, the most that ever ran at once (per task and in all), and how
/// often each fire ran.
#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    peak: AtomicUsize,
    per_task: Mutex<BTreeMap<String, (usize, usize)>>,
    runs: Mutex<BTreeMap<(String, DateTime<Utc>), usize>>,
}

impl Gauge {
    fn enter(&self, task: &str, at: DateTime<Utc>) {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(n, Ordering::SeqCst);
        let mut per = self.per_task.lock().expect("gauge");
        let e = per.entry(task.to_string()).or_default();
        e.0 += 1;
        e.1 = e.1.max(e.0);
        *self
            .runs
            .lock()
            .expect("gauge")
            .entry((task.to_string(), at))
            .or_default() += 1;
    }

    fn leave(&self, task: &str) {
        self.now.fetch_sub(1, Ordering::SeqCst);
        if let Some(e) = self.per_task.lock().expect("gauge").get_mut(task) {
            e.0 -= 1;
        }
    }

    fn peak_of(&self, task: &str) -> usize {
        self.per_task
            .lock()
            .expect("gauge")
            .get(task)
            .map_or(0, |e| e.1)
    }

    fn total_runs(&self) -> usize {
        self.runs.lock().expect("gauge").len()
    }

    fn twice(&self) -> Vec<(String, DateTime<Utc>)> {
        self.runs
            .lock()
            .expect("gauge")
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// A handler that works for `work` of virtual time, counted by `gauge`.
fn busy(
    gauge: &Arc<Gauge>,
    work: Duration,
) -> impl Fn(dcron_core::FireContext) -> futures::future::BoxFuture<'static, dcron_core::TaskResult>
       + Send
       + Sync
       + 'static {
    let gauge = gauge.clone();
    move |ctx| {
        let gauge = gauge.clone();
        Box::pin(async move {
            gauge.enter(ctx.name(), ctx.scheduled);
            tokio::time::sleep(work).await;
            gauge.leave(ctx.name());
            Ok(())
        })
    }
}

fn limit_skips(events: &mut broadcast::Receiver<DcronEvent>) -> usize {
    let mut n = 0;
    while let Ok(e) = events.try_recv() {
        if matches!(
            e,
            DcronEvent::Skipped {
                reason: SkipReason::ConcurrencyLimit,
                ..
            }
        ) {
            n += 1;
        }
    }
    n
}

/// Four tasks fire every second and each fire works 2.5 s: without a limit about ten would run
/// at once. With `max_concurrent_fires(2)` never more than two do; the fires that wait past
/// their deadline (instant plus the 3 s misfire window) are skipped as `ConcurrencyLimit`,
/// and no fire runs twice.
#[tokio::test(start_paused = true)]
async fn the_node_limit_bounds_running_fires() {
    let registry = MemoryRegistry::new();
    let gauge = Arc::new(Gauge::default());
    let node = builder(&registry)
        .max_concurrent_fires(2)
        .build()
        .expect("valid config");
    let mut events = node.events();
    for t in ["a", "b", "c", "d"] {
        node.add_func(t, EVERY_SECOND, busy(&gauge, Duration::from_millis(2500)))
            .await
            .expect("add");
    }
    node.start().await.expect("start");
    wait_for("twelve fires ran", Duration::from_secs(60), || {
        gauge.total_runs() >= 12
    })
    .await;
    assert!(
        node.running_fires().len() <= 2,
        "running: {:?}",
        node.running_fires()
    );
    assert_eq!(gauge.peak.load(Ordering::SeqCst), 2, "at most two at once");
    assert!(
        limit_skips(&mut events) > 0,
        "fires waiting past their deadline are skipped as ConcurrencyLimit"
    );
    assert_eq!(gauge.twice(), Vec::new(), "no fire ran twice");
    node.stop().await.expect("stop");
}

/// A task limited to two fires at once (`TaskMeta::max_concurrent`) never runs a third, while
/// an unlimited task on the same node overlaps freely.
#[tokio::test(start_paused = true)]
async fn the_task_limit_bounds_one_task_only() {
    let registry = MemoryRegistry::new();
    let gauge = Arc::new(Gauge::default());
    let node = builder(&registry)
        .task_run_fn(busy(&gauge, Duration::from_millis(4500)))
        .build()
        .expect("valid config");
    node.add_task_meta(TaskMeta::new("limited", EVERY_SECOND).with_max_concurrent(2))
        .await
        .expect("add limited");
    node.add_task_meta(TaskMeta::new("free", EVERY_SECOND))
        .await
        .expect("add free");
    node.start().await.expect("start");
    wait_for(
        "the free task overlaps four deep",
        Duration::from_secs(60),
        || gauge.peak_of("free") >= 4,
    )
    .await;
    advance(Duration::from_secs(5)).await;
    assert_eq!(gauge.peak_of("limited"), 2, "the limited task: two at once");
    assert_eq!(gauge.twice(), Vec::new(), "no fire ran twice");
    node.stop().await.expect("stop");
}

/// A static task takes its limit from `TaskOptions::max_concurrent`; a limit of 0 is refused
/// with an error naming the field.
#[tokio::test(start_paused = true)]
async fn static_task_limits_and_bad_limits() {
    let registry = MemoryRegistry::new();
    let gauge = Arc::new(Gauge::default());
    let node = builder(&registry).build().expect("valid config");
    node.add_func_with(
        "s",
        EVERY_SECOND,
        TaskOptions::new().max_concurrent(1),
        busy(&gauge, Duration::from_millis(3500)),
    )
    .await
    .expect("add");
    let err = node
        .add_task_meta(TaskMeta::new("zero", EVERY_SECOND).with_max_concurrent(0))
        .await
        .expect_err("a limit of 0 is refused");
    assert!(
        matches!(&err, Error::InvalidArgument(m) if m.contains("max_concurrent is 0")),
        "{err}"
    );
    node.start().await.expect("start");
    wait_for("three fires of s", Duration::from_secs(60), || {
        gauge.total_runs() >= 3
    })
    .await;
    assert_eq!(gauge.peak_of("s"), 1, "one at once");
    node.stop().await.expect("stop");
}

/// `stop()` reports the fires still running when the grace period ended (cancelled), and
/// those that ignored the cancellation too (abandoned); `running_fires` lists them before.
#[tokio::test(start_paused = true)]
async fn stop_reports_fires_still_running_at_the_end_of_the_grace_period() {
    let registry = MemoryRegistry::new();
    let node = builder(&registry)
        .task_run_fn(|ctx| async move {
            if ctx.name() == "slow" {
                // Works for an hour, but honours its cancellation token.
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(3600)) => {}
                    () = ctx.cancel.cancelled() => {}
                }
            } else {
                // Ignores cancellation.
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            Ok(())
        })
        .build()
        .expect("valid config");
    for t in ["slow", "deaf"] {
        node.add_task_meta(TaskMeta::new(t, "*/10 * * * * *"))
            .await
            .expect("add");
    }
    node.start().await.expect("start");
    wait_for("both slow fires run", Duration::from_secs(30), || {
        node.running_fires().len() == 2
    })
    .await;
    let running = node.running_fires();
    let names: Vec<&str> = running.iter().map(|f| f.task.as_str()).collect();
    assert_eq!(names, ["deaf", "slow"]);
    assert!(running.iter().all(|f| f.node == node.node_id()));
    let report = node.stop().await.expect("stop");
    let unfinished: Vec<&str> = report.unfinished.iter().map(|f| f.task.as_str()).collect();
    let abandoned: Vec<&str> = report.abandoned.iter().map(|f| f.task.as_str()).collect();
    assert_eq!(unfinished, ["deaf", "slow"], "{report:?}");
    assert_eq!(abandoned, ["deaf"], "{report:?}");
    assert!(!report.is_clean());
    assert!(
        report.waited >= Duration::from_secs(2),
        "waited the grace period: {report:?}"
    );
    assert_eq!(
        node.stop().await.expect("stop again"),
        report,
        "a later stop gets the same report"
    );
}

/// A stop with nothing running is clean; so is one of a node never started.
#[tokio::test(start_paused = true)]
async fn a_stop_with_nothing_running_is_clean() {
    let registry = MemoryRegistry::new();
    let never = builder(&registry).build().expect("valid config");
    assert!(never.stop().await.expect("stop").is_clean());
    let node = builder(&registry).build().expect("valid config");
    node.add_func("quick", EVERY_SECOND, |_| async { Ok(()) })
        .await
        .expect("add");
    node.start().await.expect("start");
    advance(Duration::from_secs(3)).await;
    let report = node.stop().await.expect("stop");
    assert!(report.is_clean(), "{report:?}");
}

/// Tags are stored with the task, found by `tasks_tagged` (dynamic and static tasks), and
/// checked: empty, too long, odd characters and too many are refused naming the tag.
#[tokio::test(start_paused = true)]
async fn tags_are_stored_found_and_checked() {
    let registry = MemoryRegistry::new();
    let node = builder(&registry).build().expect("valid config");
    node.add_task_meta(
        TaskMeta::new("invoice", "0 9 * * *")
            .with_tag("billing")
            .with_tag("team:finance"),
    )
    .await
    .expect("add invoice");
    node.add_task_meta(TaskMeta::new("backup", "0 3 * * *").with_tag("ops"))
        .await
        .expect("add backup");
    node.add_func_with(
        "refund",
        "0 10 * * *",
        TaskOptions::new().tag("billing"),
        |_| async { Ok(()) },
    )
    .await
    .expect("add refund");
    assert_eq!(
        node.tasks_tagged("billing").await.expect("tagged"),
        ["invoice", "refund"]
    );
    assert_eq!(node.tasks_tagged("ops").await.expect("tagged"), ["backup"]);
    assert!(node.tasks_tagged("none").await.expect("tagged").is_empty());
    let stored = dcron_core::Registry::get_task(&registry, "invoice")
        .await
        .expect("get")
        .expect("stored");
    assert_eq!(stored.tags, ["billing", "team:finance"]);

    let refused = |meta: TaskMeta, needle: &'static str| {
        let node = node.clone();
        async move {
            let err = node.add_task_meta(meta).await.expect_err("refused");
            assert!(
                matches!(&err, Error::InvalidArgument(m) if m.contains(needle)),
                "{err} (wanted {needle:?})"
            );
        }
    };
    refused(
        TaskMeta::new("t1", "0 9 * * *").with_tag(""),
        "tag \"\" is empty",
    )
    .await;
    refused(
        TaskMeta::new("t2", "0 9 * * *").with_tag("a b"),
        "tag \"a b\" contains ' '",
    )
    .await;
    refused(
        TaskMeta::new("t3", "0 9 * * *").with_tag("x".repeat(65)),
        "is 65 bytes; the limit is 64",
    )
    .await;
    let many = (0..17).fold(TaskMeta::new("t4", "0 9 * * *"), |m, i| {
        m.with_tag(format!("t{i}"))
    });
    refused(many, "tags is 17 tags; it must be at most 16").await;
    node.stop().await.expect("stop");
}

/// With `task_metric_labels(2)`, fire metrics carry the task's name for the first two tasks
/// and `_other` for the rest; without it, no `task` label at all.
#[test]
fn task_metric_labels_are_opt_in_and_bounded() {
    use metrics_util::debugging::DebuggingRecorder;

    let task_labels = |limit: Option<usize>| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime");
        metrics::with_local_recorder(&recorder, || {
            runtime.block_on(async {
                let registry = MemoryRegistry::new();
                let mut b = builder(&registry);
                if let Some(l) = limit {
                    b = b.task_metric_labels(l);
                }
                let node = b.build().expect("valid config");
                for t in ["t1", "t2", "t3", "t4"] {
                    node.add_func(t, EVERY_SECOND, |_| async { Ok(()) })
                        .await
                        .expect("add");
                }
                node.start().await.expect("start");
                advance(Duration::from_secs(4)).await;
                node.stop().await.expect("stop");
            });
        });
        let mut labels = std::collections::BTreeSet::new();
        let mut executed = 0;
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            let key = key.key();
            if key.name() != "dcron_fires_executed_total" {
                continue;
            }
            if let metrics_util::debugging::DebugValue::Counter(n) = value {
                executed += n;
            }
            for l in key.labels() {
                if l.key() == "task" {
                    labels.insert(l.value().to_string());
                }
            }
        }
        (labels, executed)
    };
    let (labels, executed) = task_labels(Some(2));
    assert!(executed >= 8, "fires counted: {executed}");
    assert_eq!(labels.len(), 3, "two tasks and _other: {labels:?}");
    assert!(labels.contains("_other"), "{labels:?}");
    let (labels, executed) = task_labels(None);
    assert!(executed >= 8, "fires counted: {executed}");
    assert!(labels.is_empty(), "no task label by default: {labels:?}");
}

/// Both node-level settings are checked when the node is built.
#[test]
fn bad_node_settings_are_refused() {
    let registry = MemoryRegistry::new();
    let err = builder(&registry)
        .max_concurrent_fires(0)
        .build()
        .expect_err("0 is refused");
    assert!(
        err.to_string().contains("max_concurrent_fires is 0"),
        "{err}"
    );
    let err = builder(&registry)
        .task_metric_labels(dcron_core::MAX_TASK_LABELS + 1)
        .build()
        .expect_err("too many labels");
    assert!(err.to_string().contains("task_metric_labels"), "{err}");
}
