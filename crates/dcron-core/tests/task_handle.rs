//! Questions about one task (`owner_of`, `next_fires`), the `TaskHandle`, and `run_until`,
//! on `MemoryRegistry` nodes in real time with short intervals. Conditions are polled under a
//! deadline; nothing sleeps to wait.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use dcron_core::{
    admin, Dcron, Error, MemoryRegistry, NodeState, Registry, TaskMeta, TaskOptions, TokioClock,
    MAX_PREVIEW_FIRES,
};

fn base() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .expect("valid date")
}

fn node(registry: &MemoryRegistry, name: &str) -> Dcron {
    Dcron::builder(registry.clone())
        .node_name(name)
        .ttl(Duration::from_secs(2))
        .renew_interval(Duration::from_millis(500))
        .poll_interval(Duration::from_millis(200))
        .grace_period(Duration::from_secs(2))
        .task_run_fn(|_ctx| async { Ok(()) })
        .build()
        .expect("valid config")
}

/// Polls `check` until it answers `Some`, for at most 10 s.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const TASKS: [&str; 8] = ["t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7"];

/// Every node names the same owner for every task, the one that schedules it; an unknown task
/// has none; when a node leaves, the other owns everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_of_names_the_node_that_runs_the_task() {
    let registry = MemoryRegistry::new();
    let a = node(&registry, "a");
    let b = node(&registry, "b");
    for n in [&a, &b] {
        for t in TASKS {
            n.add_func(t, "0 0 0 1 1 *", |_ctx| async { Ok(()) })
                .await
                .expect("add");
        }
        n.start().await.expect("start");
    }
    // Settled: each task is run by exactly one node, and both nodes own some.
    eventually("the cluster settles", || async {
        let (ra, rb) = (a.my_running_tasks(), b.my_running_tasks());
        let split = ra.len() + rb.len() == TASKS.len() && !ra.is_empty() && !rb.is_empty();
        split.then_some(())
    })
    .await;
    for t in TASKS {
        let runner = if a.my_running_tasks().iter().any(|n| n == t) {
            a.node_id()
        } else {
            b.node_id()
        };
        for n in [&a, &b] {
            assert_eq!(
                n.owner_of(t).await.expect("owner_of").as_deref(),
                Some(runner),
                "{t} asked on {}",
                n.node_id()
            );
        }
    }
    assert_eq!(a.owner_of("never-added").await.expect("unknown"), None);
    assert!(matches!(
        a.owner_of("bad/name").await,
        Err(Error::InvalidTaskName { .. })
    ));

    b.stop().await.expect("stop b");
    eventually("a owns everything", || async {
        for t in TASKS {
            if a.owner_of(t).await.expect("owner_of").as_deref() != Some(a.node_id()) {
                return None;
            }
        }
        Some(())
    })
    .await;
    a.stop().await.expect("stop a");
    // A stopped node is no member: nobody owns anything.
    assert_eq!(a.owner_of("t0").await.expect("owner_of"), None);
}

#[tokio::test]
async fn next_fires_previews_static_and_dynamic_tasks() {
    let registry = MemoryRegistry::new();
    let clock = TokioClock::starting_at(base());
    let n = Dcron::builder(registry.clone())
        .clock(Arc::new(clock))
        .task_run_fn(|_ctx| async { Ok(()) })
        .build()
        .expect("build");
    n.add_func("hourly", "0 0 * * * *", |_ctx| async { Ok(()) })
        .await
        .expect("static");
    n.add_task_meta(TaskMeta::new("quarter", "*/15 * * * *").with_time_zone("Asia/Kolkata"))
        .await
        .expect("dynamic");

    let hours = n.next_fires("hourly", 3).await.expect("static preview");
    assert_eq!(
        hours,
        [1, 2, 3]
            .map(|h| base() + chrono::Duration::hours(h))
            .to_vec()
    );
    let quarters = n.next_fires("quarter", 2).await.expect("dynamic preview");
    assert_eq!(
        quarters,
        [15, 30]
            .map(|m| base() + chrono::Duration::minutes(m))
            .to_vec()
    );
    // Another node finds the dynamic task in the registry.
    let other = Dcron::builder(registry.clone()).build().expect("build");
    assert_eq!(
        other
            .next_fires("quarter", 1)
            .await
            .expect("from the registry")
            .len(),
        1
    );
    assert!(matches!(
        n.next_fires("missing", 1).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        n.next_fires("hourly", MAX_PREVIEW_FIRES + 1).await,
        Err(Error::InvalidArgument(_))
    ));
}

/// Everything a handle does reaches the task: pause and resume records, a trigger that runs
/// the handler, status, owner, preview, and removal (a tombstone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_handle_drives_its_task() {
    let registry = MemoryRegistry::new();
    let n = node(&registry, "solo");
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    // Yearly: only a trigger runs it during the test.
    let h = n
        .add_func_with_handle("yearly", "0 0 0 1 1 *", TaskOptions::new(), move |_ctx| {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .await
        .expect("add with handle");
    assert_eq!(h.name(), "yearly");
    assert_eq!(h.next_fires(2).await.expect("preview").len(), 2);
    n.start().await.expect("start");
    assert_eq!(
        h.owner().await.expect("owner").as_deref(),
        Some(n.node_id())
    );

    let reg: &dyn Registry = &registry;
    h.pause().await.expect("pause");
    assert!(admin::is_paused(reg, "yearly").await.expect("read pause"));
    h.resume().await.expect("resume");
    assert!(!admin::is_paused(reg, "yearly").await.expect("read pause"));

    h.trigger().await.expect("trigger");
    eventually("the trigger runs the handler", || async {
        (runs.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    let status = eventually("the status counts the run", || async {
        h.status()
            .await
            .expect("status")
            .filter(|s| s.run_count == 1)
    })
    .await;
    assert_eq!(status.owner.as_deref(), Some(n.node_id()));

    h.remove().await.expect("remove");
    assert!(reg.get_tombstone("yearly").await.expect("read").is_some());
    eventually("the removed task leaves the node's view", || async {
        (!n.all_tasks().iter().any(|t| t == "yearly")).then_some(())
    })
    .await;
    assert_eq!(h.owner().await.expect("owner"), None);
    n.stop().await.expect("stop");

    assert!(matches!(
        n.task("bad/name"),
        Err(Error::InvalidTaskName { .. })
    ));
    assert_eq!(n.task("yearly").expect("handle").name(), "yearly");
}

/// `run_until` starts the node, keeps it working until the future resolves, then stops it
/// gracefully: unregistered, state `stopped`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_until_stops_the_node_when_the_future_resolves() {
    let registry = MemoryRegistry::new();
    let n = node(&registry, "runner");
    n.add_func("tick", "* * * * * *", |_ctx| async { Ok(()) })
        .await
        .expect("add");
    let (tx, rx) = tokio::sync::oneshot::channel::<&'static str>();
    let running = tokio::spawn({
        let n = n.clone();
        async move { n.run_until(rx).await }
    });
    n.ready().await.expect("ready");
    assert_eq!(n.state(), NodeState::Working);
    assert_eq!(registry.list_nodes().await.expect("list").items.len(), 1);

    tx.send("bye").expect("send");
    let out = running.await.expect("join").expect("run_until");
    assert_eq!(out, Ok("bye"));
    assert_eq!(n.state(), NodeState::Stopped);
    assert!(registry.list_nodes().await.expect("list").items.is_empty());
}
