//! Runs one seed: a cluster of `Dcron` nodes in one current-thread runtime on virtual time.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use dcron_core::memory::MemoryRegistry;
use dcron_core::{
    Clock, Dcron, DcronEvent, Error, FireContext, FireKey, OverlapPolicy, PutMode, Registry,
    Strategy, TaskMeta, TaskOptions, TokioClock,
};
use tokio::time::Instant;

use super::assign::ByNodeName;
use super::check::{check_run, FinalNode, LifeEvent, RunRecord, TaskChange, TaskEvent, Verdict};
use super::faulty::{ClaimLog, FaultyRegistry, SlotFaults};
use super::plan::{
    Fault, FaultPlan, SimParams, DYNAMIC_TASKS, HOSTILE_TASK, ONE_SHOT_TASKS, OVERLAP_RUN_MS,
    OVERLAP_TASK, STATIC_TASKS,
};
use crate::ledger::Ledger;

/// The true wall time at the start of every simulated run.
pub const BASE: &str = "2026-03-01T00:00:00Z";

/// How to run one seed.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// The seed: it alone decides the plan.
    pub seed: u64,
    /// The run's shape.
    pub params: SimParams,
    /// Answer every claim `Won` (a deliberately broken registry, to show the checker fails).
    pub broken_claims: bool,
    /// Keep every node event in [`SeedOutcome::journal`] (for diagnosing a violation).
    pub journal: bool,
}

impl SimOptions {
    /// Default parameters, a correct registry.
    pub fn new(seed: u64) -> Self {
        SimOptions {
            seed,
            params: SimParams::default(),
            broken_claims: false,
            journal: false,
        }
    }
}

/// The result of one seed.
#[derive(Clone, Debug)]
pub struct SeedOutcome {
    /// The seed.
    pub seed: u64,
    /// The plan it ran.
    pub plan: FaultPlan,
    /// What the checker found.
    pub verdict: Verdict,
    /// A digest of the sorted executions (task, instant, process): equal for equal runs.
    pub digest: u64,
    /// How many processes were started in all (restarts and joins included).
    pub processes: usize,
    /// With [`SimOptions::journal`]: every node event and plan step, as
    /// `(virtual ms, process, event)`, in order.
    pub journal: Vec<(u64, String, String)>,
}

impl SeedOutcome {
    /// The command that replays this seed.
    pub fn replay_command(&self, broken_claims: bool) -> String {
        format!(
            "cargo run --release -p dcron-testkit --bin simulate -- --seed {}{}",
            self.seed,
            if broken_claims {
                " --broken-claims"
            } else {
                ""
            }
        )
    }
}

/// Runs one seed on a fresh current-thread runtime with a paused clock.
///
/// # Errors
/// [`Error::InvalidState`] when the runtime cannot be built; node errors that the plan does not
/// expect (a refused static task, a node that cannot be built).
pub fn run_seed(opts: &SimOptions) -> Result<SeedOutcome, Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .map_err(|e| Error::InvalidState(format!("cannot build the simulator runtime: {e}")))?;
    let outcome = rt.block_on(simulate(opts));
    // Drops every leftover task (crashed nodes' claim loops, watchers) with the runtime.
    rt.shutdown_background();
    outcome
}

struct Proc {
    node: Dcron,
    alive: Arc<AtomicBool>,
    label: String,
    clock: FuseClock,
}

/// A node's clock that panics when its fuse is lit: the way the simulator makes a node's
/// scheduling driver fail (it reads the clock all the time).
#[derive(Clone, Debug)]
struct FuseClock {
    inner: TokioClock,
    fuse: Arc<AtomicBool>,
}

impl Clock for FuseClock {
    fn now(&self) -> DateTime<Utc> {
        if self.fuse.load(Ordering::SeqCst) {
            panic!("simulated fatal failure of the node");
        }
        self.inner.now()
    }
}

struct Slot {
    faults: Arc<SlotFaults>,
    skew_ms: i64,
    incarnations: u32,
    proc: Option<Proc>,
}

/// `(virtual ms, process, event)` lines, shared with the event readers.
type Journal = Arc<Mutex<Vec<(u64, String, String)>>>;

struct Sim {
    store: MemoryRegistry,
    master: TokioClock,
    base: DateTime<Utc>,
    start: Instant,
    ledger: Ledger,
    claims: ClaimLog,
    broken_claims: bool,
    params: SimParams,
    lifecycle: Arc<Mutex<Vec<LifeEvent>>>,
    journal: Option<Journal>,
    slots: Vec<Slot>,
    crashed: BTreeSet<String>,
    leaving: Vec<Dcron>,
    task_events: Vec<TaskEvent>,
    processes: usize,
    /// Processes whose driver failed on purpose (kept alive, as a real one would be).
    failed: Vec<Dcron>,
    freezes: usize,
    /// Runs of [`OVERLAP_TASK`]: `(process, start, end)` in virtual milliseconds.
    overlap_runs: OverlapRuns,
    /// Leases expired from outside: `(process, virtual ms)`.
    revocations: Vec<(String, u64)>,
    /// Freezes: `(process, from, to)` in virtual ms.
    frozen: Vec<(String, u64, u64)>,
}

/// Runs of [`OVERLAP_TASK`], shared with the handlers (an end of `None` while running).
type OverlapRuns = Arc<Mutex<Vec<(String, u64, Option<u64>)>>>;

fn elapsed_ms(start: Instant) -> u64 {
    Instant::now().saturating_duration_since(start).as_millis() as u64
}

impl Sim {
    fn log(&self, label: &str, state: &str) {
        let at_ms = elapsed_ms(self.start);
        self.lifecycle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(LifeEvent {
                label: label.to_string(),
                state: state.to_string(),
                at_ms,
            });
    }

    async fn start_proc(&mut self, slot: usize) -> Result<(), Error> {
        let s = &mut self.slots[slot];
        let label = if s.incarnations == 0 {
            format!("n{slot}")
        } else {
            format!("n{slot}.{}", s.incarnations)
        };
        s.incarnations += 1;
        let alive = Arc::new(AtomicBool::new(true));
        let registry = FaultyRegistry::new(
            self.store.clone(),
            s.faults.clone(),
            alive.clone(),
            &label,
            self.claims.clone(),
            self.broken_claims,
        );
        let clock = FuseClock {
            inner: self.master.with_own_skew(s.skew_ms),
            fuse: Arc::new(AtomicBool::new(false)),
        };
        let p = &self.params;
        let record = {
            let ledger = self.ledger.clone();
            let master = self.master.clone();
            let alive = alive.clone();
            let label = label.clone();
            move |ctx: &FireContext| {
                // A dead process runs nothing.
                if alive.load(Ordering::SeqCst) {
                    ledger.record(
                        FireKey::new(ctx.name(), ctx.scheduled),
                        label.clone(),
                        ctx.token,
                        master.now(),
                    );
                }
            }
        };
        let record = Arc::new(record);
        let dynamic = record.clone();
        let node = Dcron::builder(registry)
            .node_name(label.clone())
            .clock(Arc::new(clock.clone()))
            .assigner(Arc::new(ByNodeName::new(Strategy::default().assigner())))
            .ttl(Duration::from_millis(p.ttl_ms))
            .poll_interval(Duration::from_millis(p.poll_ms))
            // The default misfire policy (`FireOnce`): a handover is not a misfire, so every
            // fire of an ownership gap must still be caught up.
            .misfire_window(Duration::from_millis(p.window_ms))
            .max_clock_skew(Duration::from_millis(p.max_skew_ms.unsigned_abs()))
            .grace_period(Duration::from_secs(2))
            .task_run_fn(move |ctx| {
                dynamic(&ctx);
                async { Ok(()) }
            })
            .build()?;
        for (name, expr) in STATIC_TASKS {
            let record = record.clone();
            node.add_func(name, expr, move |ctx| {
                record(&ctx);
                async { Ok(()) }
            })
            .await?;
        }
        {
            let (runs, alive, label, start) = (
                self.overlap_runs.clone(),
                alive.clone(),
                label.clone(),
                self.start,
            );
            node.add_func_with(
                OVERLAP_TASK.0,
                OVERLAP_TASK.1,
                TaskOptions::new().overlap(OverlapPolicy::Skip),
                move |ctx| {
                    let (runs, alive, label) = (runs.clone(), alive.clone(), label.clone());
                    async move {
                        if !alive.load(Ordering::SeqCst) {
                            return Ok(());
                        }
                        let i = {
                            let mut r = runs.lock().unwrap_or_else(PoisonError::into_inner);
                            r.push((label, elapsed_ms(start), None));
                            r.len() - 1
                        };
                        // Runs until its time is up, its node cancels it (lease lost, stop), or
                        // its process crashes (a crashed process runs nothing further).
                        let until = Instant::now() + Duration::from_millis(OVERLAP_RUN_MS);
                        while Instant::now() < until
                            && !ctx.cancel.is_cancelled()
                            && alive.load(Ordering::SeqCst)
                        {
                            tokio::select! {
                                () = tokio::time::sleep(Duration::from_millis(50)) => {}
                                () = ctx.cancel.cancelled() => {}
                            }
                        }
                        runs.lock().unwrap_or_else(PoisonError::into_inner)[i].2 =
                            Some(elapsed_ms(start));
                        Ok(())
                    }
                },
            )
            .await?;
        }
        for (name, expr) in ONE_SHOT_TASKS {
            let record = record.clone();
            let added = node
                .add_one_shot_func(name, expr, move |ctx| {
                    record(&ctx);
                    async { Ok(()) }
                })
                .await;
            match added {
                // Ran and deleted already: a process started later does not have it.
                Ok(()) | Err(Error::Tombstoned { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let mut events = node.events();
        let lifecycle = self.lifecycle.clone();
        let start = self.start;
        let who = label.clone();
        let journal = self.journal.clone();
        tokio::spawn(async move {
            loop {
                let event = events.recv().await;
                if let (Some(j), Ok(e)) = (&journal, &event) {
                    j.lock().unwrap_or_else(PoisonError::into_inner).push((
                        elapsed_ms(start),
                        who.clone(),
                        format!("{e:?}"),
                    ));
                }
                match event {
                    Ok(DcronEvent::Lifecycle { state, .. }) => {
                        lifecycle
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(LifeEvent {
                                label: who.clone(),
                                state: state.to_string(),
                                at_ms: elapsed_ms(start),
                            });
                    }
                    Ok(DcronEvent::NodeFailed { .. }) => {
                        lifecycle
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(LifeEvent {
                                label: who.clone(),
                                state: "failed".to_string(),
                                at_ms: elapsed_ms(start),
                            });
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        // A node started while cut off answers after its start timeout; it keeps trying.
        match node.start().await {
            Ok(()) | Err(Error::Unavailable { .. }) => {}
            Err(e) => return Err(e),
        }
        self.processes += 1;
        self.slots[slot].proc = Some(Proc {
            node,
            alive,
            label,
            clock,
        });
        Ok(())
    }

    fn crash(&mut self, slot: usize) {
        if let Some(p) = self.slots[slot].proc.take() {
            p.alive.store(false, Ordering::SeqCst);
            // Wake watch streams so they notice the process is gone.
            self.slots[slot].faults.partition(true);
            self.slots[slot].faults.partition(false);
            self.log(&p.label, "crashed");
            self.crashed.insert(p.label.clone());
            drop(p.node);
        }
    }

    fn timed(&self, slot: usize, ms: u64, undo: impl FnOnce(&SlotFaults) + Send + 'static) {
        let faults = self.slots[slot].faults.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            undo(&faults);
        });
    }

    async fn apply(&mut self, fault: &Fault) -> Result<(), Error> {
        let now_ms = elapsed_ms(self.start);
        let true_now = self.master.now();
        match *fault {
            Fault::Partition { node, ms } => {
                self.slots[node].faults.partition(true);
                self.timed(node, ms, |f| f.partition(false));
            }
            Fault::Latency { node, extra_ms, ms } => {
                self.slots[node].faults.set_latency_ms(extra_ms);
                self.timed(node, ms, |f| f.set_latency_ms(0));
            }
            Fault::DropReplies { node, percent, ms } => {
                self.slots[node].faults.set_drop_percent(percent);
                self.timed(node, ms, |f| f.set_drop_percent(0));
            }
            Fault::FailCalls { node, percent, ms } => {
                self.slots[node].faults.set_fail_percent(percent);
                self.timed(node, ms, |f| f.set_fail_percent(0));
            }
            Fault::ExpireLease { node } => {
                if let Some(p) = &self.slots[node].proc {
                    self.revocations
                        .push((p.label.clone(), elapsed_ms(self.start)));
                    self.store.expire_lease(p.node.node_id());
                }
            }
            Fault::ClockStep { node, skew_ms } => {
                self.slots[node].skew_ms = skew_ms;
                if let Some(p) = &self.slots[node].proc {
                    p.clock.inner.set_skew_ms(skew_ms);
                }
            }
            Fault::Freeze { node, ms } => {
                self.freezes += 1;
                if let Some(p) = &self.slots[node].proc {
                    let from = elapsed_ms(self.start);
                    self.frozen.push((p.label.clone(), from, from + ms));
                }
                self.slots[node].faults.freeze(true);
                self.timed(node, ms, |f| f.freeze(false));
            }
            Fault::PanicNode { node } => {
                if let Some(p) = self.slots[node].proc.take() {
                    // The process lives on (its in-flight handlers may finish, and its
                    // supervisor unregisters it), but schedules nothing more.
                    p.clock.fuse.store(true, Ordering::SeqCst);
                    self.crashed.insert(p.label.clone());
                    self.failed.push(p.node);
                }
            }
            Fault::HostileRecord => {
                let mut meta = TaskMeta::new(HOSTILE_TASK, "* * * * * *");
                meta.created_at = Some(true_now);
                meta.misfire_window_ms = Some(u64::MAX);
                meta.timeout_ms = Some(u64::MAX);
                meta.retry = Some(dcron_core::RetryPolicy::fixed(
                    u32::MAX,
                    Duration::from_secs(u64::MAX / 4),
                ));
                // Written straight to the store, as a client of the registry other than dcron.
                let _ = self.store.put_task(&meta, PutMode::Force).await;
            }
            Fault::CleanupStatic { task } => {
                let name = STATIC_TASKS[task].0;
                // Straight on the store, at a known instant (a node's API could be frozen or
                // cut off, and the run must not wait for it): the nodes learn of it when their
                // next claim answers `Superseded`.
                if self.store.cleanup_task(name).await.is_ok() {
                    self.task_events.push(TaskEvent {
                        task: name.to_string(),
                        change: TaskChange::NewLife,
                        at_ms: now_ms,
                    });
                }
            }
            Fault::ForceAddTask { task } => {
                let (name, expr) = DYNAMIC_TASKS[task];
                let mut meta = TaskMeta::new(name, expr);
                meta.created_at = Some(true_now);
                if self.store.put_task(&meta, PutMode::Force).await.is_ok() {
                    self.task_events.push(TaskEvent {
                        task: name.to_string(),
                        change: TaskChange::NewLife,
                        at_ms: now_ms,
                    });
                }
            }
            Fault::Crash { node } => self.crash(node),
            Fault::Restart { node } => {
                if self.slots[node].proc.is_none() {
                    self.start_proc(node).await?;
                }
            }
            Fault::Leave { node } => {
                if let Some(p) = self.slots[node].proc.take() {
                    // A process asked to stop while cut off from the registry (or frozen)
                    // cannot learn the fate of its claims in flight before its grace ends.
                    if self.slots[node].faults.disturbed() {
                        self.crashed.insert(p.label.clone());
                    }
                    let n = p.node.clone();
                    self.leaving.push(p.node);
                    tokio::spawn(async move {
                        let _ = n.stop().await;
                    });
                }
            }
            Fault::Join { node, skew_ms } => {
                if self.slots[node].proc.is_none() {
                    self.slots[node].skew_ms = skew_ms;
                    self.start_proc(node).await?;
                }
            }
            Fault::AddTask { task } => {
                let (name, expr) = DYNAMIC_TASKS[task];
                let mut meta = TaskMeta::new(name, expr);
                meta.created_at = Some(true_now);
                if self
                    .store
                    .put_task(&meta, PutMode::CreateOnly)
                    .await
                    .is_ok()
                {
                    self.task_events.push(TaskEvent {
                        task: name.to_string(),
                        change: TaskChange::Added,
                        at_ms: now_ms,
                    });
                }
            }
            Fault::DeleteTask { task } => {
                let name = DYNAMIC_TASKS[task].0;
                if self.store.mark_deleted(name, true_now).await.is_ok() {
                    self.task_events.push(TaskEvent {
                        task: name.to_string(),
                        change: TaskChange::Deleted,
                        at_ms: now_ms,
                    });
                }
            }
            Fault::ReviveTask { task } => {
                let name = DYNAMIC_TASKS[task].0;
                // As `Dcron::reuse_deleted_task` does it: a new life, now.
                if self
                    .store
                    .get_tombstone(name)
                    .await
                    .ok()
                    .flatten()
                    .is_some()
                    && self.store.restart_life(name, true_now).await.is_ok()
                {
                    self.task_events.push(TaskEvent {
                        task: name.to_string(),
                        change: TaskChange::Revived,
                        at_ms: now_ms,
                    });
                }
            }
        }
        Ok(())
    }
}

fn base_time() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(BASE)
        .map(|d| d.with_timezone(&Utc))
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

/// FNV-1a over bytes: a digest that is the same on every platform and version.
fn fnv(hash: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *hash ^= u64::from(*b);
        *hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
}

async fn simulate(opts: &SimOptions) -> Result<SeedOutcome, Error> {
    let plan = FaultPlan::generate(opts.seed, &opts.params);
    let base = base_time();
    let master = TokioClock::starting_at(base);
    let start = Instant::now();
    // Half the seeds run on a registry with a clock of its own (late claims refused there),
    // half on one without (the nodes' own deadline checks are all there is).
    let store = MemoryRegistry::new().with_namespace("sim");
    let store = if opts.seed % 2 == 1 {
        store.with_clock(Arc::new(master.clone()))
    } else {
        store
    };
    let mut sim = Sim {
        store,
        master,
        base,
        start,
        ledger: Ledger::new(),
        claims: ClaimLog::new(),
        broken_claims: opts.broken_claims,
        params: opts.params.clone(),
        lifecycle: Arc::new(Mutex::new(Vec::new())),
        journal: opts.journal.then(|| Arc::new(Mutex::new(Vec::new()))),
        slots: (0..opts.params.max_slots.max(1))
            .map(|i| Slot {
                faults: Arc::new(SlotFaults::new(opts.seed, i)),
                skew_ms: 0,
                incarnations: 0,
                proc: None,
            })
            .collect(),
        crashed: BTreeSet::new(),
        leaving: Vec::new(),
        task_events: Vec::new(),
        processes: 0,
        failed: Vec::new(),
        freezes: 0,
        overlap_runs: Arc::default(),
        revocations: Vec::new(),
        frozen: Vec::new(),
    };
    // The static tasks exist from the start of the run: their lives start at virtual 0 (as the
    // first node's first registration of them would).
    let statics: Vec<(String, DateTime<Utc>)> = STATIC_TASKS
        .iter()
        .chain(ONE_SHOT_TASKS.iter())
        .map(|(name, _)| (name.to_string(), base))
        .collect();
    sim.store.ensure_lives(&statics).await?;
    for (i, skew) in plan.initial_skews_ms.iter().enumerate() {
        sim.slots[i].skew_ms = *skew;
        sim.start_proc(i).await?;
    }
    for step in &plan.steps {
        tokio::time::sleep_until(start + Duration::from_millis(step.at_ms)).await;
        if let Some(j) = &sim.journal {
            j.lock().unwrap_or_else(PoisonError::into_inner).push((
                step.at_ms,
                "plan".into(),
                step.fault.to_string(),
            ));
        }
        sim.apply(&step.fault).await?;
    }
    tokio::time::sleep_until(start + Duration::from_millis(opts.params.fault_ms)).await;
    for s in &sim.slots {
        s.faults.heal();
    }
    let end_ms = opts.params.fault_ms + opts.params.settle_ms;
    tokio::time::sleep_until(start + Duration::from_millis(end_ms)).await;
    let final_nodes: Vec<FinalNode> = sim
        .slots
        .iter()
        .filter_map(|s| s.proc.as_ref())
        .map(|p| FinalNode {
            label: p.label.clone(),
            state: p.node.state().to_string(),
            owned: p.node.my_running_tasks(),
        })
        .collect();
    let registered: Vec<(String, String)> = match sim.store.list_nodes().await {
        Ok(l) => {
            let mut r: Vec<(String, String)> = l
                .items
                .iter()
                .map(|n| {
                    (
                        super::assign::node_name(&n.id).to_string(),
                        format!("{:?}", n.status).to_lowercase(),
                    )
                })
                .collect();
            r.sort();
            r
        }
        Err(e) => vec![("?".into(), e.to_string())],
    };
    // End every process abruptly: nothing after this point is recorded.
    for i in 0..sim.slots.len() {
        if let Some(p) = sim.slots[i].proc.take() {
            p.alive.store(false, Ordering::SeqCst);
        }
    }
    let record = RunRecord {
        params: opts.params.clone(),
        base: sim.base,
        end_ms,
        executions: sim.ledger.executions(),
        lifecycle: sim
            .lifecycle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone(),
        task_events: sim.task_events.clone(),
        crashed: sim.crashed.clone(),
        claims: sim.claims.clone(),
        freezes: sim.freezes,
        final_nodes,
        registered,
        overlap_runs: sim
            .overlap_runs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(n, s, e)| (n.clone(), *s, e.unwrap_or(end_ms)))
            .collect(),
        revocations: sim.revocations.clone(),
        frozen: sim.frozen.clone(),
    };
    let verdict = check_run(&record);
    let mut runs: Vec<(String, i64, String)> = record
        .executions
        .iter()
        .map(|e| (e.fire.task.clone(), e.fire.instant_millis(), e.node.clone()))
        .collect();
    runs.sort();
    let mut digest = 0xcbf2_9ce4_8422_2325u64;
    for (task, ms, node) in &runs {
        fnv(&mut digest, task.as_bytes());
        fnv(&mut digest, &ms.to_le_bytes());
        fnv(&mut digest, node.as_bytes());
    }
    drop(sim.leaving);
    drop(sim.failed);
    Ok(SeedOutcome {
        seed: opts.seed,
        plan,
        verdict,
        digest,
        processes: sim.processes,
        journal: sim
            .journal
            .map(|j| j.lock().unwrap_or_else(PoisonError::into_inner).clone())
            .unwrap_or_default(),
    })
}
