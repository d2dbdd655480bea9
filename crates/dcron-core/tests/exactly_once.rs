//! Exactly-once, scenario by scenario (issues "exactly-once engine" and "registry boundary"):
//! live-since, one-shots, handovers with the default policy, hostile records, failing nodes,
//! honest starts, missing handlers, lost claim replies, frozen nodes and per-fire failures.
//!
//! Every test runs a cluster of `Dcron` nodes on one `MemoryRegistry` on virtual time (tokio's
//! paused clock), with a fault-injecting layer where a test needs one. No test sleeps to wait
//! for something: they advance virtual time and poll with deadlines.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use dcron_core::layer::{Layered, RegistryLayer};
use dcron_core::{
    async_trait, Assigner, Capabilities, ClaimOutcome, ClaimRequest, Claimant, Clock, Dcron,
    DcronBuilder, DcronEvent, Error, FireKey, LastResult, Lease, Member, MemoryRegistry,
    MisfirePolicy, Node, NodeEvent, NodeState, Placement, PutMode, Registry, Result, Schedule,
    SecondsField, Strategy, TaskMeta, TaskMetaEvent, TaskOptions, TokioClock, WatchStream,
};
use tokio::sync::broadcast;

fn base() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0)
        .single()
        .expect("valid date")
}

/// Every execution: fire → the nodes that ran it.
type Ledger = Arc<Mutex<BTreeMap<FireKey, Vec<String>>>>;

// ----- a fault-injecting registry layer -----

#[derive(Debug, Default)]
struct Faults {
    /// Watches answer `Unsupported` (a registry that only polls).
    no_watch: AtomicBool,
    /// Registrations fail as unreachable.
    fail_register: AtomicBool,
    /// The replies of this many claim batches are lost after the registry applied them.
    drop_claim_replies: AtomicUsize,
    /// Fires of this task answer `Failed` (retryable) once each.
    fail_fires_of: Mutex<Option<String>>,
    /// Every call of a frozen node waits here until the freeze ends.
    frozen: tokio::sync::watch::Sender<bool>,
}

impl Faults {
    async fn thawed(&self) {
        let mut rx = self.frozen.subscribe();
        let _ = rx.wait_for(|f| !*f).await;
    }
}

#[derive(Debug)]
struct Faulty {
    inner: MemoryRegistry,
    faults: Arc<Faults>,
    failed_once: Mutex<BTreeSet<FireKey>>,
}

fn faulty(inner: &MemoryRegistry, faults: &Arc<Faults>) -> Arc<dyn Registry> {
    Arc::new(Layered(Faulty {
        inner: inner.clone(),
        faults: faults.clone(),
        failed_once: Mutex::new(BTreeSet::new()),
    }))
}

#[async_trait]
impl RegistryLayer for Faulty {
    fn inner(&self) -> &dyn Registry {
        &self.inner
    }

    fn capabilities(&self) -> Capabilities {
        let mut caps = self.inner.capabilities();
        if self.faults.no_watch.load(Ordering::SeqCst) {
            caps.watch = false;
        }
        caps
    }

    async fn register(&self, node: &Node, ttl: Duration) -> Result<Lease> {
        self.faults.thawed().await;
        if self.faults.fail_register.load(Ordering::SeqCst) {
            return Err(Error::unavailable("injected: registry unreachable"));
        }
        self.inner.register(node, ttl).await
    }

    async fn keep_alive(&self, lease: &Lease) -> Result<()> {
        self.faults.thawed().await;
        self.inner.keep_alive(lease).await
    }

    async fn list_nodes(&self) -> Result<dcron_core::Listing<Node>> {
        self.faults.thawed().await;
        self.inner.list_nodes().await
    }

    async fn watch_nodes(&self) -> Result<WatchStream<NodeEvent>> {
        if self.faults.no_watch.load(Ordering::SeqCst) {
            return Err(Error::Unsupported {
                operation: "watch_nodes",
            });
        }
        self.inner.watch_nodes().await
    }

    async fn watch_tasks(&self) -> Result<WatchStream<TaskMetaEvent>> {
        if self.faults.no_watch.load(Ordering::SeqCst) {
            return Err(Error::Unsupported {
                operation: "watch_tasks",
            });
        }
        self.inner.watch_tasks().await
    }

    async fn claim(
        &self,
        claimant: &Claimant,
        requests: &[ClaimRequest],
    ) -> Result<Vec<ClaimOutcome>> {
        self.faults.thawed().await;
        let failing = self.faults.fail_fires_of.lock().expect("lock").clone();
        let mut out = self.inner.claim(claimant, requests).await?;
        if let Some(task) = failing {
            let mut once = self.failed_once.lock().expect("lock");
            for (r, o) in requests.iter().zip(out.iter_mut()) {
                if r.fire.task == task && once.insert(r.fire.clone()) {
                    // Undecided for this fire alone (whatever the registry did).
                    *o = ClaimOutcome::Failed(Error::unavailable("injected: one key failed"));
                }
            }
        }
        let dropped = self
            .faults
            .drop_claim_replies
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if dropped {
            return Err(Error::unavailable("injected: the claim's reply was lost"));
        }
        Ok(out)
    }
}

// ----- the cluster harness -----

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
            ledger: Arc::default(),
        }
    }

    /// A node builder: TTL 3 s, poll 1 s, misfire window 60 s, the default misfire policy,
    /// and a dynamic-task handler that records to the ledger.
    fn builder(&self, name: &str, registry: Arc<dyn Registry>) -> DcronBuilder {
        let ledger = self.ledger.clone();
        let label = name.to_string();
        Dcron::builder(registry)
            .node_name(name)
            .clock(Arc::new(self.clock.clone()))
            .ttl(Duration::from_secs(3))
            .poll_interval(Duration::from_secs(1))
            .misfire_window(Duration::from_secs(60))
            .max_clock_skew(Duration::ZERO)
            .grace_period(Duration::from_secs(2))
            .task_run_fn(move |ctx| {
                let (ledger, label) = (ledger.clone(), label.clone());
                async move {
                    record(&ledger, &label, &ctx);
                    Ok(())
                }
            })
    }

    /// Builds `builder`, adds every static task of `statics`, starts it.
    async fn start(&self, builder: DcronBuilder, name: &str, statics: &[(&str, &str)]) -> Dcron {
        let node = builder.build().expect("valid config");
        for (task, cron) in statics {
            self.add_static(&node, name, task, cron, false)
                .await
                .expect("static task added");
        }
        node.start().await.expect("started");
        node
    }

    async fn add_static(
        &self,
        node: &Dcron,
        name: &str,
        task: &str,
        cron: &str,
        one_shot: bool,
    ) -> Result<()> {
        let (ledger, label) = (self.ledger.clone(), name.to_string());
        let f = move |ctx: dcron_core::FireContext| {
            let (ledger, label) = (ledger.clone(), label.clone());
            async move {
                record(&ledger, &label, &ctx);
                Ok(())
            }
        };
        if one_shot {
            node.add_one_shot_func(task, cron, f).await
        } else {
            node.add_func(task, cron, f).await
        }
    }

    fn runs(&self) -> BTreeMap<FireKey, Vec<String>> {
        self.ledger.lock().expect("ledger").clone()
    }

    fn runs_of(&self, task: &str) -> Vec<(DateTime<Utc>, Vec<String>)> {
        self.runs()
            .into_iter()
            .filter(|(k, _)| k.task == task)
            .map(|(k, v)| (k.instant, v))
            .collect()
    }

    async fn live_since(&self, task: &str) -> DateTime<Utc> {
        self.registry
            .ensure_lives(&[(task.to_string(), self.clock.now())])
            .await
            .expect("lives")[0]
            .live_since
    }

    /// Checks that every instant of `cron` in `[from, to]` ran exactly once, and that nothing
    /// else of `task` ran before `from`.
    fn assert_exactly_once(&self, task: &str, cron: &str, from: DateTime<Utc>, to: DateTime<Utc>) {
        let runs = self.runs_of(task);
        let twice: Vec<_> = runs.iter().filter(|(_, n)| n.len() > 1).collect();
        assert!(twice.is_empty(), "{task}: ran twice: {twice:?}");
        let early: Vec<_> = runs.iter().filter(|(t, _)| *t < from).collect();
        assert!(early.is_empty(), "{task}: ran before {from}: {early:?}");
        let ran: BTreeSet<DateTime<Utc>> = runs.iter().map(|(t, _)| *t).collect();
        let want = Schedule::parse(cron, None, SecondsField::Optional)
            .expect("schedule")
            .occurrences_in(from - chrono::Duration::milliseconds(1), to, 100_000);
        let missed: Vec<_> = want.iter().filter(|t| !ran.contains(*t)).collect();
        assert!(missed.is_empty(), "{task}: missed {missed:?}");
    }
}

fn record(ledger: &Ledger, node: &str, ctx: &dcron_core::FireContext) {
    ledger
        .lock()
        .expect("ledger")
        .entry(FireKey::new(ctx.name(), ctx.scheduled))
        .or_default()
        .push(node.to_string());
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

fn drain(rx: &mut broadcast::Receiver<DcronEvent>) -> Vec<DcronEvent> {
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        out.push(e);
    }
    out
}

const EVERY_SECOND: &str = "* * * * * *";

// ----- live-since -----

#[tokio::test(start_paused = true)]
async fn static_tasks_fire_only_from_their_first_registration() {
    let c = Cluster::new();
    let reg: Arc<dyn Registry> = Arc::new(c.registry.clone());
    // A policy that would catch up a minute of instants if catch-up could look before the
    // task existed.
    let node = c
        .start(
            c.builder("a", reg)
                .misfire_policy(MisfirePolicy::FireAll { max: 1000 }),
            "a",
            &[("t", EVERY_SECOND)],
        )
        .await;
    advance(Duration::from_secs(10)).await;
    let live = c.live_since("t").await;
    assert!(
        live >= base(),
        "live-since {live} is the first registration"
    );
    c.assert_exactly_once(
        "t",
        EVERY_SECOND,
        live,
        c.clock.now() - chrono::Duration::seconds(1),
    );
    node.stop().await.expect("stop");
}

#[tokio::test(start_paused = true)]
async fn a_restarted_node_catches_up_what_its_predecessor_left_since_live_since() {
    let c = Cluster::new();
    let reg: Arc<dyn Registry> = Arc::new(c.registry.clone());
    let builder = |name| {
        c.builder(name, reg.clone())
            .misfire_policy(MisfirePolicy::FireAll { max: 1000 })
    };
    let a = c.start(builder("a"), "a", &[("t", EVERY_SECOND)]).await;
    advance(Duration::from_secs(10)).await;
    let live = c.live_since("t").await;
    drop(a); // a crash: no stop()
    advance(Duration::from_secs(10)).await;
    let a2 = c.start(builder("a2"), "a2", &[("t", EVERY_SECOND)]).await;
    advance(Duration::from_secs(5)).await;
    // The restart kept the task's life: the gap the crash left is caught up, and nothing
    // before the first registration ran.
    assert_eq!(c.live_since("t").await, live);
    c.assert_exactly_once(
        "t",
        EVERY_SECOND,
        live,
        c.clock.now() - chrono::Duration::seconds(1),
    );
    a2.stop().await.expect("stop");
}

/// Places every task on the member whose id sorts first (node ids start with the node's name).
#[derive(Debug)]
struct FirstMember;

#[derive(Debug)]
struct First(Option<String>);

impl Placement for First {
    fn owner(&self, _task: &str, _tasks: &[&str]) -> Option<&str> {
        self.0.as_deref()
    }
}

impl Assigner for FirstMember {
    fn name(&self) -> &str {
        "first-member"
    }
    fn depends_on_task_list(&self) -> bool {
        false
    }
    fn prepare(
        &self,
        members: &[Member],
    ) -> std::result::Result<Box<dyn Placement>, dcron_assign::AssignError> {
        Ok(Box::new(First(members.iter().map(|m| m.id.clone()).min())))
    }
}

#[tokio::test(start_paused = true)]
async fn cleanup_and_force_add_of_a_static_task_never_rerun_a_past_fire() {
    let c = Cluster::new();
    let reg: Arc<dyn Registry> = Arc::new(c.registry.clone());
    // b's clock runs 3 s behind a's: when b starts the task's next life, its live-since
    // is 3 s behind the instants a already ran. Only the claims (kept across lives) stand in
    // the way of running them again.
    let behind = c.clock.with_own_skew(-3_000);
    let builder = |name, clock: TokioClock| {
        c.builder(name, reg.clone())
            .clock(Arc::new(clock))
            .assigner(Arc::new(FirstMember))
            .max_clock_skew(Duration::from_secs(5))
            .misfire_policy(MisfirePolicy::FireAll { max: 1000 })
    };
    let a = c
        .start(builder("a", c.clock.clone()), "a", &[("t", EVERY_SECOND)])
        .await;
    advance(Duration::from_secs(5)).await;
    let b = c
        .start(builder("b", behind), "b", &[("t", EVERY_SECOND)])
        .await;
    advance(Duration::from_secs(4)).await;
    // The owner cleans the task up and hands it over at once.
    let owner = if a.my_running_tasks().is_empty() {
        &b
    } else {
        &a
    };
    owner.cleanup_task("t").await.expect("cleanup");
    owner.stop().await.expect("stop");
    advance(Duration::from_secs(6)).await;
    let other = if owner.node_id() == a.node_id() {
        &b
    } else {
        &a
    };
    let (ledger, label) = (c.ledger.clone(), "forced".to_string());
    other
        .force_add_func("t", EVERY_SECOND, move |ctx| {
            let (ledger, label) = (ledger.clone(), label.clone());
            async move {
                record(&ledger, &label, &ctx);
                Ok(())
            }
        })
        .await
        .expect("force-add");
    advance(Duration::from_secs(6)).await;
    let twice: Vec<_> = c
        .runs_of("t")
        .into_iter()
        .filter(|(_, n)| n.len() > 1)
        .collect();
    assert!(twice.is_empty(), "a past fire ran again: {twice:?}");
    assert!(c.runs_of("t").len() >= 15, "the task kept running");
    other.stop().await.expect("stop");
}

// ----- one-shot -----

#[tokio::test(start_paused = true)]
async fn a_one_shot_runs_once_whatever_the_policy_catch_up_or_handover() {
    let c = Cluster::new();
    let reg: Arc<dyn Registry> = Arc::new(c.registry.clone());
    // Mid-second: the task's first instant is the next whole second.
    advance(Duration::from_millis(500)).await;
    let a = c
        .builder("a", reg.clone())
        .misfire_policy(MisfirePolicy::FireAll { max: 100 })
        .build()
        .expect("build");
    c.add_static(&a, "a", "once", EVERY_SECOND, true)
        .await
        .expect("add");
    a.start().await.expect("start");
    let live = c.live_since("once").await;
    // Its owner crashes before the first instant.
    drop(a);
    advance(Duration::from_secs(10)).await;
    assert!(c.runs_of("once").is_empty());
    let b = c
        .builder("b", reg)
        .misfire_policy(MisfirePolicy::FireAll { max: 100 })
        .build()
        .expect("build");
    c.add_static(&b, "b", "once", EVERY_SECOND, true)
        .await
        .expect("add");
    b.start().await.expect("start");
    advance(Duration::from_secs(10)).await;
    let runs = c.runs_of("once");
    let first = Schedule::parse(EVERY_SECOND, None, SecondsField::Optional)
        .expect("parse")
        .next_after(live - chrono::Duration::milliseconds(1))
        .expect("an instant");
    assert_eq!(
        runs,
        vec![(first, vec!["b".to_string()])],
        "one fire in its life"
    );
    wait_for(
        "the one-shot marked deleted",
        Duration::from_secs(5),
        || b.all_tasks().is_empty(),
    )
    .await;
    b.stop().await.expect("stop");
}

/// The status of a one-shot whose one fire failed names no next fire: it is not scheduled
/// again in its life (a next fire read off the bare schedule would say "in a second").
#[tokio::test(start_paused = true)]
async fn a_failed_one_shot_has_no_next_fire_in_its_status() {
    let c = Cluster::new();
    let reg: Arc<dyn Registry> = Arc::new(c.registry.clone());
    let node = c.builder("a", reg).build().expect("build");
    node.add_one_shot_func("once", EVERY_SECOND, |_ctx| async {
        Err::<(), dcron_core::BoxError>("it fails".into())
    })
    .await
    .expect("add");
    let mut events = node.events();
    node.start().await.expect("start");
    wait_for("the one fire failed", Duration::from_secs(10), || {
        drain(&mut events)
            .iter()
            .any(|e| matches!(e, DcronEvent::Failed { .. }))
    })
    .await;
    advance(Duration::from_secs(2)).await;
    let status = node
        .task_status("once")
        .await
        .expect("status")
        .expect("known");
    assert_eq!(status.next_fire, None, "{status:?}");
    node.stop().await.expect("stop");
}

#[tokio::test(start_paused = true)]
async fn an_at_in_the_past_is_refused_unless_asked_to_run_at_once() {
    let c = Cluster::new();
    let reg: Arc<dyn Registry> = Arc::new(c.registry.clone());
    let node = c.builder("a", reg).build().expect("build");
    let past = format!("@at {}", (base() - chrono::Duration::hours(1)).to_rfc3339());
    let refused = node.add_func("late", &past, |_| async { Ok(()) }).await;
    assert!(
        matches!(&refused, Err(Error::InvalidSchedule { reason, .. }) if reason.contains("past")),
        "{refused:?}"
    );
    let never = node
        .add_func("never", "0 0 0 30 2 *", |_| async { Ok(()) })
        .await;
    assert!(
        matches!(never, Err(Error::InvalidSchedule { .. })),
        "{never:?}"
    );
    let dynamic = node.add_task_meta(TaskMeta::new("late-dyn", &past)).await;
    assert!(matches!(dynamic, Err(Error::InvalidSchedule { .. })));
    let (ledger, label) = (c.ledger.clone(), "a".to_string());
    node.add_func_with(
        "late",
        &past,
        TaskOptions::new().run_if_past(),
        move |ctx| {
            let (ledger, label) = (ledger.clone(), label.clone());
            async move {
                record(&ledger, &label, &ctx);
                Ok(())
            }
        },
    )
    .await
    .expect("runs at once when asked");
    node.start().await.expect("start");
    advance(Duration::from_secs(5)).await;
    let runs = c.runs_of("late");
    assert_eq!(runs.len(), 1, "{runs:?}");
    node.stop().await.expect("stop");
}

// ----- handovers with the default policy -----

async fn handovers(polling_only: bool, graceful: bool) {
    let c = Cluster::new();
    let faults = Arc::new(Faults::default());
    faults.no_watch.store(polling_only, Ordering::SeqCst);
    let tasks: Vec<String> = (0..12).map(|i| format!("t{i}")).collect();
    let statics: Vec<(&str, &str)> = tasks.iter().map(|t| (t.as_str(), EVERY_SECOND)).collect();
    let mut nodes = Vec::new();
    for i in 0..4 {
        let name = format!("n{i}");
        // The default misfire policy (FireOnce); a polling registry is polled at the default
        // interval (5 s), so a handover leaves seconds unclaimed.
        let mut b = c.builder(&name, faulty(&c.registry, &faults));
        if polling_only {
            b = b.poll_interval(Duration::from_secs(5));
        }
        nodes.push(c.start(b, &name, &statics).await);
    }
    advance(Duration::from_secs(3)).await;
    let from = c.live_since("t0").await;
    // Three owners end in turn, at offsets that fall inside seconds.
    for offset_ms in [4_300, 7_850, 6_100] {
        advance(Duration::from_millis(offset_ms)).await;
        let node = nodes.remove(0);
        if graceful {
            node.stop().await.expect("stop");
        } else {
            drop(node);
        }
    }
    advance(Duration::from_secs(12)).await;
    let to = c.clock.now() - chrono::Duration::seconds(1);
    for t in &tasks {
        c.assert_exactly_once(t, EVERY_SECOND, from.max(c.live_since(t).await), to);
    }
    for n in nodes {
        n.stop().await.expect("stop");
    }
}

#[tokio::test(start_paused = true)]
async fn crashed_owners_lose_nothing_with_the_default_policy() {
    handovers(false, false).await;
}

#[tokio::test(start_paused = true)]
async fn graceful_stops_on_a_polling_registry_lose_nothing_with_the_default_policy() {
    handovers(true, true).await;
}

// ----- hostile records -----

#[tokio::test(start_paused = true)]
async fn a_hostile_record_is_reported_and_skipped_and_stops_nobody() {
    let c = Cluster::new();
    let mut hostile = TaskMeta::new("hostile", EVERY_SECOND);
    hostile.created_at = Some(base());
    hostile.misfire_window_ms = Some(u64::MAX);
    hostile.timeout_ms = Some(u64::MAX);
    hostile.misfire = Some(MisfirePolicy::FireAll { max: u32::MAX });
    c.registry
        .put_task(&hostile, PutMode::Force)
        .await
        .expect("a client of the registry writes it");
    let mut nodes = Vec::new();
    let mut events = Vec::new();
    for i in 0..3 {
        let name = format!("n{i}");
        let b = c.builder(&name, Arc::new(c.registry.clone()));
        let node = b.build().expect("build");
        events.push(node.events());
        node.start().await.expect("start");
        nodes.push(node);
    }
    let mut good = TaskMeta::new("good", EVERY_SECOND);
    good.misfire_window_ms = Some(60_000);
    nodes[0].add_task_meta(good).await.expect("add");
    let from = c.live_since("good").await;
    advance(Duration::from_secs(10)).await;
    c.assert_exactly_once(
        "good",
        EVERY_SECOND,
        from,
        c.clock.now() - chrono::Duration::seconds(1),
    );
    assert!(
        c.runs_of("hostile").is_empty(),
        "the hostile record never runs"
    );
    for n in &nodes {
        assert_eq!(n.state(), "working", "{}", n.node_id());
    }
    let reported = events.iter_mut().any(|rx| {
        drain(rx)
            .iter()
            .any(|e| matches!(e, DcronEvent::CorruptRecord { key, .. } if key == "hostile"))
    });
    assert!(reported, "reported as corrupt");
    for n in nodes {
        n.stop().await.expect("stop");
    }
}

mod hostile_property {
    use super::*;
    use proptest::prelude::*;
    use proptest::strategy::Strategy as _;

    fn any_meta() -> impl proptest::strategy::Strategy<Value = TaskMeta> {
        let cron = prop_oneof![
            Just("* * * * * *".to_string()),
            Just("*/2 * * * * *".to_string()),
            Just("@every 1s".to_string()),
            Just("not a schedule".to_string()),
            Just("61 * * * * *".to_string()),
            Just("@at 1970-01-01T00:00:00Z".to_string()),
            ".{0,40}",
        ];
        let name = prop_oneof![
            Just("h1".to_string()),
            Just("h2".to_string()),
            Just("h3".to_string())
        ];
        (
            name,
            cron,
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u32>()),
            proptest::option::of(".{0,80}"),
            any::<bool>(),
            proptest::option::of((any::<u32>(), any::<u64>())),
        )
            .prop_map(
                |(name, cron, window, timeout, all, zone, one_shot, retry)| {
                    let mut m = TaskMeta::new(name, cron);
                    m.created_at = Some(base());
                    m.misfire_window_ms = window;
                    m.timeout_ms = timeout;
                    m.misfire = all.map(|max| MisfirePolicy::FireAll { max });
                    m.time_zone = zone;
                    m.one_shot = one_shot;
                    m.retry = retry.map(|(n, ms)| {
                        dcron_core::RetryPolicy::fixed(n, Duration::from_millis(ms))
                    });
                    m
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

        /// Arbitrary records written through the `Registry` trait into a running 3-node
        /// cluster: every well-formed task still fires exactly once, every node keeps working.
        #[test]
        fn arbitrary_records_never_disturb_the_good_tasks(metas in proptest::collection::vec(any_meta(), 1..6)) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .start_paused(true)
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let c = Cluster::new();
                let mut nodes = Vec::new();
                for i in 0..3 {
                    let name = format!("n{i}");
                    let b = c.builder(&name, Arc::new(c.registry.clone()));
                    nodes.push(c.start(b, &name, &[("control", EVERY_SECOND)]).await);
                }
                for m in &metas {
                    let _ = c.registry.put_task(m, PutMode::Force).await;
                }
                advance(Duration::from_secs(8)).await;
                let from = c.live_since("control").await;
                c.assert_exactly_once("control", EVERY_SECOND, from, c.clock.now() - chrono::Duration::seconds(1));
                for n in &nodes {
                    assert_eq!(n.state(), "working");
                }
                // No fire of any record ran twice either.
                let twice: Vec<_> = c.runs().into_iter().filter(|(_, v)| v.len() > 1).collect();
                assert!(twice.is_empty(), "{twice:?}");
                for n in nodes {
                    n.stop().await.expect("stop");
                }
            });
        }
    }
}

// ----- a failing node -----

/// The default strategy, until its fuse is lit: then it panics (a bug in user code, say).
#[derive(Debug)]
struct Fused {
    inner: Arc<dyn Assigner>,
    fuse: Arc<AtomicBool>,
}

impl Assigner for Fused {
    fn name(&self) -> &str {
        "fused"
    }
    fn depends_on_task_list(&self) -> bool {
        false
    }
    fn prepare(
        &self,
        members: &[Member],
    ) -> std::result::Result<Box<dyn Placement>, dcron_assign::AssignError> {
        assert!(!self.fuse.load(Ordering::SeqCst), "assigner exploded");
        self.inner.prepare(members)
    }
}

#[tokio::test(start_paused = true)]
async fn a_failing_node_says_so_and_gets_out_of_the_way() {
    let c = Cluster::new();
    let fuse = Arc::new(AtomicBool::new(false));
    let statics = [("t", EVERY_SECOND), ("u", EVERY_SECOND)];
    let a = c
        .builder("a", Arc::new(c.registry.clone()))
        .assigner(Arc::new(Fused {
            inner: Strategy::default().assigner(),
            fuse: fuse.clone(),
        }))
        .build()
        .expect("build");
    for (t, cron) in statics {
        c.add_static(&a, "a", t, cron, false).await.expect("add");
    }
    let mut events = a.events();
    a.start().await.expect("start");
    let b = c
        .start(c.builder("b", Arc::new(c.registry.clone())), "b", &statics)
        .await;
    advance(Duration::from_secs(3)).await;
    fuse.store(true, Ordering::SeqCst);
    // A node joining makes a prepare its assignment again: it panics.
    let joiner = c
        .start(c.builder("c", Arc::new(c.registry.clone())), "c", &statics)
        .await;
    wait_for("a failed", Duration::from_secs(5), || {
        matches!(a.state(), NodeState::Failed(_))
    })
    .await;
    assert!(drain(&mut events)
        .iter()
        .any(|e| matches!(e, DcronEvent::NodeFailed { .. })));
    // It unregistered at once (its lease is 3 s; this is well before), so its tasks moved.
    let listed = c.registry.list_nodes().await.expect("list").items;
    assert!(
        listed.iter().all(|n| n.id != a.node_id()),
        "the failed node left the registry"
    );
    advance(Duration::from_secs(6)).await;
    // Through the failure, every fire ran exactly once.
    for (t, cron) in statics {
        let from = c.live_since(t).await;
        c.assert_exactly_once(t, cron, from, c.clock.now() - chrono::Duration::seconds(1));
    }
    for n in [b, joiner] {
        assert_eq!(n.state(), "working");
        n.stop().await.expect("stop");
    }
}

// ----- honest starts -----

#[tokio::test(start_paused = true)]
async fn start_answers_an_error_when_the_registry_is_unreachable_and_backs_off() {
    let c = Cluster::new();
    let faults = Arc::new(Faults::default());
    faults.fail_register.store(true, Ordering::SeqCst);
    let node = c
        .builder("a", faulty(&c.registry, &faults))
        .start_timeout(Duration::from_secs(10))
        .build()
        .expect("build");
    let mut events = node.events();
    let t0 = tokio::time::Instant::now();
    let r = node.start().await;
    assert!(matches!(r, Err(Error::Unavailable { .. })), "{r:?}");
    assert_eq!(
        t0.elapsed(),
        Duration::from_secs(10),
        "after the start timeout"
    );
    assert_eq!(node.state(), "starting");
    let delays: Vec<Duration> = drain(&mut events)
        .into_iter()
        .filter_map(|e| match e {
            DcronEvent::RegisterRetry { delay, .. } => Some(delay),
            _ => None,
        })
        .collect();
    assert!(delays.len() >= 3, "each attempt reported: {delays:?}");
    assert!(delays[2] > delays[0], "the back-off grows: {delays:?}");
    faults.fail_register.store(false, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(40), node.ready())
        .await
        .expect("ready in time")
        .expect("ready");
    assert_eq!(node.state(), "working");
    node.stop().await.expect("stop");
}

// ----- a node without a handler -----

#[tokio::test(start_paused = true)]
async fn a_dynamic_task_owned_by_a_node_without_a_handler_is_reported() {
    let c = Cluster::new();
    let node = Dcron::builder(c.registry.clone())
        .clock(Arc::new(c.clock.clone()))
        .build()
        .expect("build");
    let mut events = node.events();
    node.start().await.expect("start");
    let mut meta = TaskMeta::new("orphan", EVERY_SECOND);
    meta.created_at = Some(c.clock.now());
    c.registry
        .put_task(&meta, PutMode::CreateOnly)
        .await
        .expect("another node's add");
    advance(Duration::from_secs(4)).await;
    assert!(drain(&mut events)
        .iter()
        .any(|e| matches!(e, DcronEvent::NoHandler { task, .. } if task == "orphan")));
    let status = node
        .task_status("orphan")
        .await
        .expect("status")
        .expect("known");
    assert!(
        matches!(status.last_result, Some(LastResult::NoHandler { .. })),
        "{status:?}"
    );
    node.stop().await.expect("stop");
}

// ----- the registry boundary -----

#[tokio::test(start_paused = true)]
async fn a_lost_claim_reply_is_retried_and_the_fire_runs_once() {
    let c = Cluster::new();
    let faults = Arc::new(Faults::default());
    let node = c
        .start(
            c.builder("a", faulty(&c.registry, &faults)),
            "a",
            &[("t", EVERY_SECOND)],
        )
        .await;
    advance(Duration::from_millis(1_500)).await;
    // The next three claim batches are applied but their replies are lost.
    faults.drop_claim_replies.store(3, Ordering::SeqCst);
    advance(Duration::from_secs(6)).await;
    assert_eq!(
        faults.drop_claim_replies.load(Ordering::SeqCst),
        0,
        "replies were lost"
    );
    let from = c.live_since("t").await;
    c.assert_exactly_once(
        "t",
        EVERY_SECOND,
        from,
        c.clock.now() - chrono::Duration::seconds(1),
    );
    node.stop().await.expect("stop");
}

#[tokio::test(start_paused = true)]
async fn one_failed_key_fails_its_fire_alone_and_the_retry_runs_it() {
    let c = Cluster::new();
    let faults = Arc::new(Faults::default());
    *faults.fail_fires_of.lock().expect("lock") = Some("flaky".into());
    let node = c
        .start(
            c.builder("a", faulty(&c.registry, &faults)),
            "a",
            &[("flaky", EVERY_SECOND), ("steady", EVERY_SECOND)],
        )
        .await;
    advance(Duration::from_secs(6)).await;
    let to = c.clock.now() - chrono::Duration::seconds(1);
    for t in ["flaky", "steady"] {
        let from = c.live_since(t).await;
        c.assert_exactly_once(t, EVERY_SECOND, from, to);
    }
    node.stop().await.expect("stop");
}

async fn frozen(registry_clock: bool) {
    let c = Cluster::new();
    let store = if registry_clock {
        c.registry.clone().with_clock(Arc::new(c.clock.clone()))
    } else {
        c.registry.clone()
    };
    let fa = Arc::new(Faults::default());
    let a = c
        .start(
            c.builder("a", faulty(&store, &fa)),
            "a",
            &[("t", EVERY_SECOND)],
        )
        .await;
    advance(Duration::from_millis(2_500)).await;
    // a freezes: every call it makes from now on waits, longer than any claim's retention
    // (60 s window + 3 s TTL + 30 s margin).
    fa.frozen.send_replace(true);
    let b = c
        .start(
            c.builder("b", Arc::new(store.clone())),
            "b",
            &[("t", EVERY_SECOND)],
        )
        .await;
    advance(Duration::from_secs(110)).await;
    // a wakes: its held claims go out now, for instants b ran long ago and whose claims
    // have expired. It must not run any of them again.
    fa.frozen.send_replace(false);
    advance(Duration::from_secs(5)).await;
    let twice: Vec<_> = c
        .runs_of("t")
        .into_iter()
        .filter(|(_, n)| n.len() > 1)
        .collect();
    assert!(
        twice.is_empty(),
        "a frozen node ran a fire again: {twice:?}"
    );
    assert!(c.runs_of("t").len() > 100, "b ran the task meanwhile");
    for n in [a, b] {
        n.stop().await.expect("stop");
    }
}

#[tokio::test(start_paused = true)]
async fn a_frozen_node_never_runs_a_fire_twice_on_a_registry_without_a_clock() {
    frozen(false).await;
}

#[tokio::test(start_paused = true)]
async fn a_frozen_node_never_runs_a_fire_twice_on_a_registry_with_a_clock() {
    frozen(true).await;
}

// ----- claims sent ahead of the instant -----

/// What happens to a task between its fire's claim (sent 2 s ahead) and the fire's instant.
#[derive(Clone, Copy, Debug)]
enum Change {
    Nothing,
    Delete,
    Pause,
    Cleanup,
    ForceAdd,
}

async fn claimed_ahead(change: Change) -> (Vec<DateTime<Utc>>, Vec<DcronEvent>) {
    let c = Cluster::new();
    let node = c
        .builder("a", Arc::new(c.registry.clone()))
        .claim_ahead(Duration::from_secs(2))
        .build()
        .expect("build");
    c.add_static(&node, "a", "t", "*/5 * * * * *", false)
        .await
        .expect("add");
    let mut events = node.events();
    node.start().await.expect("start");
    // The fire of +5 s is claimed at +3 s; the change lands at +4 s.
    advance(Duration::from_secs(4)).await;
    let (ledger, label) = (c.ledger.clone(), "a".to_string());
    match change {
        Change::Nothing => {}
        Change::Delete => node.mark_task_deleted("t").await.expect("delete"),
        Change::Pause => node.pause_task("t").await.expect("pause"),
        Change::Cleanup => node.cleanup_task("t").await.expect("cleanup"),
        Change::ForceAdd => node
            .force_add_func("t", "*/5 * * * * *", move |ctx| {
                let (ledger, label) = (ledger.clone(), label.clone());
                async move {
                    record(&ledger, &label, &ctx);
                    Ok(())
                }
            })
            .await
            .expect("force-add"),
    }
    advance(Duration::from_secs(3)).await;
    let runs = c.runs_of("t").into_iter().map(|(t, _)| t).collect();
    let events = drain(&mut events);
    node.stop().await.expect("stop");
    (runs, events)
}

#[tokio::test(start_paused = true)]
async fn a_fire_claimed_ahead_runs_at_its_instant_when_nothing_changed() {
    let (runs, _) = claimed_ahead(Change::Nothing).await;
    assert!(
        runs.contains(&(base() + chrono::Duration::seconds(5))),
        "{runs:?}"
    );
}

async fn cancelled_by(change: Change) {
    let (runs, events) = claimed_ahead(change).await;
    let five = base() + chrono::Duration::seconds(5);
    assert!(
        !runs.contains(&five),
        "{change:?}: the fire claimed ahead ran: {runs:?}"
    );
    // Cancelled at its instant (a deletion may also be refused at the claim, if it was seen
    // before the claim went out; here it is not).
    assert!(
        events.iter().any(|e| matches!(
            e,
            DcronEvent::Skipped {
                fire,
                reason: dcron_core::SkipReason::Cancelled
            } if fire.scheduled == five
        )),
        "{change:?}: no cancellation reported"
    );
}

#[tokio::test(start_paused = true)]
async fn a_fire_claimed_ahead_does_not_run_when_its_task_is_deleted_before_the_instant() {
    cancelled_by(Change::Delete).await;
}

#[tokio::test(start_paused = true)]
async fn a_fire_claimed_ahead_does_not_run_when_its_task_is_paused_before_the_instant() {
    cancelled_by(Change::Pause).await;
}

#[tokio::test(start_paused = true)]
async fn a_fire_claimed_ahead_does_not_run_when_its_task_is_cleaned_up_before_the_instant() {
    cancelled_by(Change::Cleanup).await;
}

#[tokio::test(start_paused = true)]
async fn a_fire_claimed_ahead_does_not_run_when_its_task_is_force_added_before_the_instant() {
    cancelled_by(Change::ForceAdd).await;
}
