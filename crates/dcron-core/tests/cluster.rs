//! Clusters of `Dcron` nodes on one `MemoryRegistry`, on virtual time (tokio paused clock).
//! No test sleeps to wait for something: they advance virtual time and poll with deadlines.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use dcron_core::{
    Clock, Dcron, DcronEvent, Error, FireKey, MemoryRegistry, MisfirePolicy, PutMode, Registry,
    Schedule, SecondsField, TaskMeta, TokioClock,
};

type Ledger = Arc<Mutex<HashMap<FireKey, Vec<String>>>>;

fn base() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .expect("valid date")
}

struct Cluster {
    registry: MemoryRegistry,
    clock: TokioClock,
    ledger: Ledger,
}

impl Cluster {
    fn new() -> Self {
        Cluster {
            registry: MemoryRegistry::new(),
            clock: TokioClock::starting_at(base()),
            ledger: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn builder(&self, name: &str, clock: TokioClock) -> dcron_core::DcronBuilder {
        let ledger = self.ledger.clone();
        Dcron::builder(self.registry.clone())
            .node_name(name)
            .clock(Arc::new(clock))
            .ttl(Duration::from_secs(3))
            .poll_interval(Duration::from_secs(1))
            .misfire_policy(MisfirePolicy::FireAll { max: 1000 })
            .misfire_window(Duration::from_secs(60))
            .max_clock_skew(Duration::ZERO)
            .grace_period(Duration::from_secs(5))
            .task_run_fn(move |ctx| {
                let ledger = ledger.clone();
                async move {
                    record(&ledger, &ctx);
                    Ok(())
                }
            })
    }

    async fn node(&self, name: &str, statics: &[(&str, &str)]) -> Dcron {
        self.node_with(self.builder(name, self.clock.clone()), statics)
            .await
    }

    async fn node_with(
        &self,
        builder: dcron_core::DcronBuilder,
        statics: &[(&str, &str)],
    ) -> Dcron {
        let node = builder.build().expect("valid config");
        for (task, cron) in statics {
            let ledger = self.ledger.clone();
            node.add_func(task, cron, move |ctx| {
                let ledger = ledger.clone();
                async move {
                    record(&ledger, &ctx);
                    Ok(())
                }
            })
            .await
            .expect("static task added");
        }
        node.start().await.expect("started");
        node
    }

    fn executions(&self) -> HashMap<FireKey, Vec<String>> {
        self.ledger.lock().expect("ledger").clone()
    }
}

fn record(ledger: &Ledger, ctx: &dcron_core::FireContext) {
    ledger
        .lock()
        .expect("ledger")
        .entry(FireKey::new(ctx.name(), ctx.scheduled))
        .or_default()
        .push(ctx.node_id.to_string());
}

async fn advance(d: Duration) {
    tokio::time::sleep(d).await;
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..600 {
        if cond() {
            return;
        }
        advance(Duration::from_millis(100)).await;
    }
    panic!("timed out (60 s virtual) waiting for {what}");
}

fn expected(tasks: &[(&str, &str)], from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<FireKey> {
    let mut out = Vec::new();
    for (task, cron) in tasks {
        let s = Schedule::parse(cron, None, SecondsField::Optional).expect("valid schedule");
        out.extend(
            s.occurrences_in(from, to, 1_000_000)
                .into_iter()
                .map(|t| FireKey::new(*task, t)),
        );
    }
    out
}

/// (executed expected fires, duplicates, missed)
fn tally(exec: &HashMap<FireKey, Vec<String>>, want: &[FireKey]) -> (usize, usize, Vec<FireKey>) {
    let duplicates = exec.values().filter(|v| v.len() > 1).count();
    let missed: Vec<FireKey> = want
        .iter()
        .filter(|k| !exec.contains_key(*k))
        .cloned()
        .collect();
    (want.len() - missed.len(), duplicates, missed)
}

#[tokio::test(start_paused = true)]
async fn three_nodes_for_a_simulated_hour_run_every_fire_once_across_a_crash_and_a_leave() {
    let c = Cluster::new();
    let statics: Vec<(String, String)> = (0..10)
        .map(|i| (format!("static-{i}"), "*/10 * * * * *".to_string()))
        .collect();
    let statics: Vec<(&str, &str)> = statics
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let n1 = c.node("n1", &statics).await;
    let n2 = c.node("n2", &statics).await;
    let n3 = c.node("n3", &statics).await;
    wait_for("three working nodes", || {
        [&n1, &n2, &n3].iter().all(|n| n.state() == "working")
    })
    .await;
    let start = c.clock.now();
    let dynamic: Vec<(String, String)> = (0..5)
        .map(|i| (format!("dynamic-{i}"), "15,45 * * * * *".to_string()))
        .collect();
    for (name, cron) in &dynamic {
        n1.add_task_meta(TaskMeta::new(name, cron))
            .await
            .expect("added");
    }
    let added = c.clock.now();
    wait_for("every task owned once", || {
        let owned: usize = [&n1, &n2, &n3]
            .iter()
            .map(|n| n.my_running_tasks().len())
            .sum();
        owned == 15
    })
    .await;

    advance(Duration::from_secs(20 * 60)).await;
    drop(n2); // crash: no stop(), the lease expires
    advance(Duration::from_secs(20 * 60)).await;
    n3.stop().await.expect("graceful stop");
    advance(Duration::from_secs(20 * 60)).await;
    let end = c.clock.now() - chrono::Duration::seconds(1);
    n1.stop().await.expect("stop");

    let mut want = expected(&statics, start, end);
    let dynamic: Vec<(&str, &str)> = dynamic
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    want.extend(expected(&dynamic, added, end));
    let exec = c.executions();
    let (executed, duplicates, missed) = tally(&exec, &want);
    assert!(want.len() > 4000, "the run covers {} fires", want.len());
    assert_eq!(duplicates, 0, "duplicates found");
    assert!(
        missed.is_empty(),
        "missed {} fires, first {:?}",
        missed.len(),
        missed.first()
    );
    assert_eq!(executed, want.len());
}

#[tokio::test(start_paused = true)]
async fn clock_skew_of_five_seconds_between_nodes_produces_no_duplicate() {
    let c = Cluster::new();
    let statics = [
        ("skewed-a", "* * * * * *"),
        ("skewed-b", "*/2 * * * * *"),
        ("skewed-c", "*/3 * * * * *"),
    ];
    let mut nodes = Vec::new();
    for (i, skew) in [-5_000i64, 0, 5_000].into_iter().enumerate() {
        let b = c
            .builder(&format!("skew{i}"), c.clock.with_own_skew(skew))
            .max_clock_skew(Duration::from_secs(5));
        nodes.push(c.node_with(b, &statics).await);
    }
    wait_for("working", || nodes.iter().all(|n| n.state() == "working")).await;
    let start = c.clock.now() + chrono::Duration::seconds(6);
    // Churn ownership: a node leaves and another joins while clocks disagree.
    advance(Duration::from_secs(120)).await;
    let leaving = nodes.remove(0);
    leaving.stop().await.expect("stop");
    advance(Duration::from_secs(60)).await;
    let b = c
        .builder("skew-late", c.clock.with_own_skew(-3_000))
        .max_clock_skew(Duration::from_secs(5));
    nodes.push(c.node_with(b, &statics).await);
    advance(Duration::from_secs(120)).await;
    let end = c.clock.now() - chrono::Duration::seconds(6);
    for n in &nodes {
        n.stop().await.expect("stop");
    }
    let exec = c.executions();
    let want = expected(&statics, start, end);
    let (_, duplicates, missed) = tally(&exec, &want);
    assert_eq!(duplicates, 0);
    assert!(
        missed.is_empty(),
        "missed {:?}",
        &missed[..missed.len().min(5)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_node_whose_lease_expired_comes_back_and_nothing_runs_twice() {
    let c = Cluster::new();
    let statics = [("lease-a", "* * * * * *"), ("lease-b", "* * * * * *")];
    let n1 = c.node("n1", &statics).await;
    let n2 = c.node("n2", &statics).await;
    wait_for("working", || {
        n1.state() == "working" && n2.state() == "working"
    })
    .await;
    let start = c.clock.now();
    let mut events = n1.events();
    advance(Duration::from_secs(5)).await;
    assert!(c.registry.expire_lease(n1.node_id()), "lease existed");
    wait_for("n1 lost", || {
        let mut lost = false;
        while let Ok(ev) = events.try_recv() {
            if matches!(ev, DcronEvent::Lifecycle { state: "lost", .. }) {
                lost = true;
            }
        }
        lost || n1.state() == "lost"
    })
    .await;
    wait_for("n1 working again", || n1.state() == "working").await;
    let nodes = c.registry.list_nodes().await.expect("list").items;
    assert!(
        nodes.iter().any(|n| n.id == n1.node_id()),
        "n1 re-registered"
    );
    advance(Duration::from_secs(10)).await;
    let end = c.clock.now() - chrono::Duration::seconds(1);
    n1.stop().await.expect("stop");
    n2.stop().await.expect("stop");
    let (_, duplicates, missed) = tally(&c.executions(), &expected(&statics, start, end));
    assert_eq!(duplicates, 0);
    assert!(missed.is_empty(), "missed {missed:?}");
}

#[tokio::test(start_paused = true)]
async fn a_put_for_a_task_never_seen_is_scheduled_and_5000_dynamic_tasks_all_fire_once() {
    let c = Cluster::new();
    let n1 = c.node("n1", &[]).await;
    let n2 = c.node("n2", &[]).await;
    wait_for("working", || {
        n1.state() == "working" && n2.state() == "working"
    })
    .await;
    // Written straight into the registry, as another process would: the nodes learn of them
    // only through watch events (more than any watch buffer) and polls.
    let created = c.clock.now();
    for i in 0..5000 {
        let mut meta = TaskMeta::new(format!("bulk-{i:04}"), "0 * * * * *");
        meta.created_at = Some(created);
        c.registry
            .put_task(&meta, PutMode::CreateOnly)
            .await
            .expect("put");
    }
    wait_for("all 5000 tasks known and owned", || {
        n1.all_tasks().len() == 5000
            && n1.my_running_tasks().len() + n2.my_running_tasks().len() == 5000
    })
    .await;
    advance(Duration::from_secs(61)).await;
    let end = c.clock.now();
    n1.stop().await.expect("stop");
    n2.stop().await.expect("stop");
    let names: Vec<String> = (0..5000).map(|i| format!("bulk-{i:04}")).collect();
    let tasks: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "0 * * * * *")).collect();
    let want = expected(&tasks, created, end);
    assert_eq!(want.len(), 5000);
    let (executed, duplicates, missed) = tally(&c.executions(), &want);
    assert_eq!(duplicates, 0);
    assert_eq!(executed, 5000, "missed {}", missed.len());
}

#[tokio::test(start_paused = true)]
async fn a_deleted_task_stops_everywhere_and_a_one_shot_runs_once() {
    let c = Cluster::new();
    let n1 = c.node("n1", &[]).await;
    let n2 = c.node("n2", &[]).await;
    wait_for("working", || {
        n1.state() == "working" && n2.state() == "working"
    })
    .await;
    n1.add_task_meta(TaskMeta::new("doomed", "* * * * * *"))
        .await
        .expect("add");
    n1.add_task_meta(TaskMeta::new("once", "*/5 * * * * *").one_shot())
        .await
        .expect("add");
    advance(Duration::from_secs(10)).await;
    n2.mark_task_deleted("doomed").await.expect("delete");
    let deleted = c.clock.now();
    advance(Duration::from_secs(10)).await;
    let exec = c.executions();
    let after: Vec<&FireKey> = exec
        .keys()
        .filter(|k| k.task == "doomed" && k.instant > deleted)
        .collect();
    assert!(after.is_empty(), "ran after deletion: {after:?}");
    assert!(
        exec.keys().any(|k| k.task == "doomed"),
        "ran before deletion"
    );
    let once: usize = exec
        .iter()
        .filter(|(k, _)| k.task == "once")
        .map(|(_, v)| v.len())
        .sum();
    assert_eq!(once, 1, "one-shot runs");
    assert!(c
        .registry
        .get_tombstone("once")
        .await
        .expect("read")
        .is_some());
    // The record is kept under the tombstone: a plain add is refused, reuse revives it.
    assert!(matches!(
        n1.add_task_meta(TaskMeta::new("doomed", "* * * * * *"))
            .await,
        Err(Error::AlreadyExists { .. })
    ));
    n1.reuse_deleted_task("doomed").await.expect("reuse");
    let revived = c.clock.now();
    advance(Duration::from_secs(5)).await;
    assert!(
        c.executions()
            .keys()
            .any(|k| k.task == "doomed" && k.instant > revived),
        "revived task runs again"
    );
    n1.stop().await.expect("stop");
    n2.stop().await.expect("stop");
}

#[tokio::test(start_paused = true)]
async fn bad_input_is_refused_with_typed_errors() {
    let c = Cluster::new();
    let node = c.builder("n", c.clock.clone()).build().expect("build");
    let ok = |_ctx| async { Ok(()) };
    assert!(matches!(
        node.add_func("bad-cron", "61 * * * *", ok).await,
        Err(Error::InvalidSchedule { .. })
    ));
    assert!(matches!(
        node.add_func("bad-cron", "not a cron", ok).await,
        Err(Error::InvalidSchedule { .. })
    ));
    for name in ["", "a/b", "new\nline"] {
        assert!(matches!(
            node.add_func(name, "* * * * *", ok).await,
            Err(Error::InvalidTaskName { .. })
        ));
    }
    node.add_func("twice", "* * * * *", ok)
        .await
        .expect("first");
    assert!(matches!(
        node.add_func("twice", "* * * * *", ok).await,
        Err(Error::AlreadyExists { .. })
    ));
    let no_handler = Dcron::builder(c.registry.clone()).build().expect("build");
    assert!(matches!(
        no_handler
            .add_task_meta(TaskMeta::new("dyn", "* * * * *"))
            .await,
        Err(Error::NotConfigured(_))
    ));
    assert!(matches!(
        Dcron::builder(c.registry.clone())
            .ttl(Duration::ZERO)
            .build(),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        node.add_task_meta(TaskMeta::new("zone", "* * * * *").with_time_zone("Mars/Olympus"))
            .await,
        Err(Error::InvalidTimeZone { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn a_panicking_handler_is_reported_and_the_node_keeps_running() {
    let c = Cluster::new();
    let errors = Arc::new(AtomicUsize::new(0));
    let e2 = errors.clone();
    let builder = c
        .builder("n", c.clock.clone())
        .error_handler(move |meta, err| {
            assert_eq!(meta.name, "boom");
            assert!(matches!(err, Error::Panicked { .. }), "{err}");
            e2.fetch_add(1, Ordering::SeqCst);
        });
    let node = builder.build().expect("build");
    node.add_one_shot_func("boom", "* * * * * *", |_ctx| async {
        panic!("handler exploded");
    })
    .await
    .expect("add");
    let ledger = c.ledger.clone();
    node.add_func("healthy", "* * * * * *", move |ctx| {
        let ledger = ledger.clone();
        async move {
            record(&ledger, &ctx);
            Ok(())
        }
    })
    .await
    .expect("add");
    node.start().await.expect("start");
    wait_for("the panic reported", || errors.load(Ordering::SeqCst) >= 1).await;
    wait_for("the healthy task running on", || {
        c.executions()
            .keys()
            .filter(|k| k.task == "healthy")
            .count()
            >= 3
    })
    .await;
    // A one-shot has one fire in its life, whatever its result: its failure is reported once,
    // it is not retried at a later occurrence, and it is not marked done.
    assert_eq!(errors.load(Ordering::SeqCst), 1);
    assert!(c
        .registry
        .get_tombstone("boom")
        .await
        .expect("read")
        .is_none());
    let healthy = c
        .executions()
        .keys()
        .filter(|k| k.task == "healthy")
        .count();
    assert!(healthy >= 2, "other tasks keep running ({healthy})");
    assert_eq!(node.state(), "working");
    node.stop().await.expect("stop");
}

#[tokio::test(start_paused = true)]
async fn a_corrupt_task_record_is_reported_and_skipped_while_others_run() {
    let c = Cluster::new();
    c.registry
        .inject_raw_task("garbage", b"\xff{not json".to_vec());
    let mut good = TaskMeta::new("good", "* * * * * *");
    good.created_at = Some(c.clock.now());
    c.registry
        .put_task(&good, PutMode::CreateOnly)
        .await
        .expect("put");
    let node = c.node("n", &[]).await;
    let mut events = node.events();
    wait_for("corrupt record reported", || {
        let mut seen = false;
        while let Ok(ev) = events.try_recv() {
            if matches!(ev, DcronEvent::CorruptRecord { ref key, .. } if key.contains("garbage")) {
                seen = true;
            }
        }
        seen
    })
    .await;
    wait_for("good task ran", || {
        c.executions().keys().any(|k| k.task == "good")
    })
    .await;
    assert_eq!(node.all_tasks(), vec!["good".to_string()]);
    node.stop().await.expect("stop");
}

#[tokio::test(start_paused = true)]
async fn stop_is_idempotent_and_waits_for_in_flight_handlers() {
    let c = Cluster::new();
    let node = c.builder("n", c.clock.clone()).build().expect("build");
    let finished = Arc::new(AtomicUsize::new(0));
    let f2 = finished.clone();
    node.add_func("slow", "* * * * * *", move |_ctx| {
        let f2 = f2.clone();
        async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            f2.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    })
    .await
    .expect("add");
    node.start().await.expect("start");
    let mut events = node.events();
    wait_for("a fire started", || {
        let mut started = false;
        while let Ok(ev) = events.try_recv() {
            started |= matches!(ev, DcronEvent::Started(_));
        }
        started
    })
    .await;
    let before = finished.load(Ordering::SeqCst);
    node.stop().await.expect("stop");
    assert!(
        finished.load(Ordering::SeqCst) > before,
        "in-flight handler finished before stop returned"
    );
    node.stop().await.expect("second stop is a no-op");
    assert_eq!(node.state(), "stopped");
    assert!(
        c.registry
            .list_nodes()
            .await
            .expect("list")
            .items
            .is_empty(),
        "unregistered"
    );
    assert!(matches!(node.start().await, Err(Error::InvalidState(_))));
}
