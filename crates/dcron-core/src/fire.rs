//! Running one fire this node has the right to run (a won claim, a consumed trigger): the
//! overlap check, attempts with a timeout and retries, events, metrics and the bookkeeping that
//! follows (one-shot deletion, status).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::FutureExt;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::clock::Clock;
use crate::engine::config::Config;
use crate::error::Error;
use crate::event::{DcronEvent, FireInfo};
use crate::inflight::{InFlight, Limits, Permits, TaskLabels};
use crate::policy::{OverlapPolicy, RetryPolicy, RunningFire, SkipReason};
use crate::registry::Registry;
use crate::task::{FireContext, Task};
use crate::types::{FireKey, TaskMeta};

/// The lease in force (its [`crate::Lease::id`]) and until when it is known to live; none
/// without a lease.
pub(crate) type LeaseBound = Option<(Arc<str>, Instant)>;

/// How often a queued fire looks again whether the running one ended.
const QUEUE_POLL: Duration = Duration::from_millis(100);

/// Attempts at releasing a running slot (with a growing wait between them) before leaving it
/// to end with the lease.
const RELEASE_ATTEMPTS: u32 = 8;

/// Fires per runtime worker below which a pool is not shared with another worker.
const GATE_MIN: usize = 256;

/// Fires a starting task takes from its pool at a time.
const POOL_CHUNK: usize = 64;

/// A first poll longer than this makes a gate spawn the rest of its share.
pub(crate) const INLINE_SLOW: Duration = Duration::from_micros(200);

/// Timers wake up to about two milliseconds late (tokio rounds to whole milliseconds, and so
/// does the kernel's poll timeout): a gate sleeps the last stretch before its instant on a
/// blocking thread, with the operating system's precision.
const PRECISE_WAIT: Duration = Duration::from_millis(3);

/// Why a fire runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FireKind {
    /// Its instant came (or a late timer within the window).
    Scheduled,
    /// Caught up when the node gained the task.
    CatchUp,
    /// Asked for by `Dcron::backfill`.
    Backfill,
    /// Asked for by a trigger-now request.
    Trigger,
}

/// One fire this node will run.
pub(crate) struct Launch {
    pub(crate) key: FireKey,
    pub(crate) meta: Arc<TaskMeta>,
    pub(crate) task: Arc<dyn Task>,
    pub(crate) token: u64,
    pub(crate) kind: FireKind,
    pub(crate) window: Duration,
    /// Cancelled when this node stops owning the task: retries stop (none for tasks that do
    /// not retry).
    pub(crate) owner: Option<CancellationToken>,
    /// The fire's deadline on the monotonic clock: it does not start after it (none for a
    /// trigger-now request, which has no claim).
    pub(crate) deadline_at: Option<Instant>,
    /// The task's stamp and its value when the fire was planned: when it moved (the task was
    /// deleted, paused, changed or started a new life), the fire does not start.
    pub(crate) stamp: Option<(Arc<std::sync::atomic::AtomicU64>, u64)>,
}

struct RunningEntry {
    fire: RunningFire,
    overlap: OverlapPolicy,
    cancel: CancellationToken,
}

#[derive(Default)]
struct RunningInner {
    local: HashMap<String, Vec<RunningEntry>>,
    queued: HashSet<String>,
    /// Tasks other nodes publish as running.
    remote: HashSet<String>,
}

/// The fires running on this node, and the ones other nodes publish; shared by the driver and
/// the fire tasks. The lock is never held across an `.await`.
#[derive(Default)]
pub(crate) struct RunningSet {
    inner: Mutex<RunningInner>,
}

impl RunningSet {
    fn lock(&self) -> std::sync::MutexGuard<'_, RunningInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts `fire` unless the policy forbids it now: `Allow` always starts; otherwise it
    /// starts only when no fire of the task runs here or elsewhere.
    fn try_start(&self, entry: RunningEntry) -> Result<(), RunningEntry> {
        let mut inner = self.lock();
        if entry.overlap != OverlapPolicy::Allow {
            let busy = inner
                .local
                .get(&entry.fire.task)
                .is_some_and(|v| !v.is_empty())
                || inner.remote.contains(&entry.fire.task);
            if busy {
                return Err(entry);
            }
        }
        inner
            .local
            .entry(entry.fire.task.clone())
            .or_default()
            .push(entry);
        Ok(())
    }

    fn end(&self, task: &str, token: u64, instant: DateTime<Utc>) {
        let mut inner = self.lock();
        if let Some(v) = inner.local.get_mut(task) {
            v.retain(|e| !(e.fire.token == token && e.fire.instant == instant));
            if v.is_empty() {
                inner.local.remove(task);
            }
        }
    }

    fn take_queue_slot(&self, task: &str) -> bool {
        self.lock().queued.insert(task.to_string())
    }

    fn release_queue_slot(&self, task: &str) {
        self.lock().queued.remove(task);
    }

    /// The markers to publish in this node's record: fires of tasks whose policy is not `Allow`.
    pub(crate) fn markers(&self) -> Vec<RunningFire> {
        let inner = self.lock();
        let mut out: Vec<RunningFire> = inner
            .local
            .values()
            .flatten()
            .filter(|e| e.overlap != OverlapPolicy::Allow)
            .map(|e| e.fire.clone())
            .collect();
        out.sort_by(|a, b| (&a.task, a.instant).cmp(&(&b.task, b.instant)));
        out
    }

    /// Replaces the set of tasks other nodes publish as running.
    pub(crate) fn set_remote(&self, remote: HashSet<String>) {
        self.lock().remote = remote;
    }

    /// The node lost its lease: the overlap guarantee no longer holds for its running fires of
    /// non-`Allow` tasks. Cancels them (their handlers see `ctx.cancel`) and returns them.
    pub(crate) fn lease_lost(&self) -> Vec<RunningFire> {
        let inner = self.lock();
        inner
            .local
            .values()
            .flatten()
            .filter(|e| e.overlap != OverlapPolicy::Allow)
            .map(|e| {
                e.cancel.cancel();
                e.fire.clone()
            })
            .collect()
    }
}

/// Everything a fire task needs from its node. Shared behind an `Arc`; each task that starts
/// fires works on its own copy, so that the per-fire reference counting of one thread does
/// not contend with another's.
#[derive(Clone)]
pub(crate) struct FireEnv {
    pub(crate) node_id: Arc<str>,
    pub(crate) cfg: Arc<Config>,
    pub(crate) registry: Arc<dyn Registry>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) events: broadcast::Sender<DcronEvent>,
    pub(crate) handlers: TaskTracker,
    pub(crate) cancel: CancellationToken,
    pub(crate) stopping: CancellationToken,
    /// Tells the driver what it must know of a fire (see [`FireNote`]).
    pub(crate) notes: Arc<dyn Fn(FireNote) + Send + Sync>,
    pub(crate) running: Arc<RunningSet>,
    /// The node's lease in force (none between registrations): running slots are held under it.
    pub(crate) lease: Arc<Mutex<Option<crate::registry::Lease>>>,
    /// Until when the lease is known to live (the last keep-alive's send plus the TTL): a fire
    /// holding a running slot is cancelled when it passes, before the slot can end with the
    /// lease in the registry.
    pub(crate) lease_until: Arc<tokio::sync::watch::Sender<LeaseBound>>,
    /// Whether the registry keeps running slots ([`crate::Capabilities::slots`]): the
    /// cluster-wide overlap check is then its atomic slot, not the published markers alone.
    pub(crate) slots: bool,
    /// Fires that ended, for the task status, drained by the driver when it writes or
    /// reports status (not one driver message per fire, so a burst of fires does not wake
    /// the driver once per fire).
    pub(crate) ended: Arc<EndedInbox>,
    /// Pools of fires claimed ahead of their instant, by instant.
    pub(crate) waiting: Arc<Mutex<HashMap<DateTime<Utc>, Arc<Pool>>>>,
    /// The fires this process started (none starts twice).
    pub(crate) launched: Arc<crate::engine::launched::Launched>,
    /// The fires running now (for `Dcron::running_fires` and the stop report).
    pub(crate) in_flight: Arc<InFlight>,
    /// The node's and the tasks' concurrency limits.
    pub(crate) limits: Arc<Limits>,
    /// The bounded `task` label of the fire metrics, when asked for.
    pub(crate) labels: Option<Arc<TaskLabels>>,
}

/// What a fire tells the driver.
pub(crate) enum FireNote {
    /// The set of running fires with overlap markers changed: publish it.
    RunningChanged,
    /// A one-shot fire ended: done (tombstoned) or not (it is not scheduled again either way).
    OneShotEnded {
        /// The task.
        name: String,
        /// The task was tombstoned.
        done: bool,
    },
}

/// Fires that ended, sharded by thread so that threads ending fires at once do not contend.
#[derive(Default)]
pub(crate) struct EndedInbox {
    shards: [EndedShard; ENDED_SHARDS],
}

/// One shard, alone on its cache lines.
#[derive(Default)]
#[repr(align(128))]
struct EndedShard(Mutex<Vec<Ended>>);

const ENDED_SHARDS: usize = 8;

impl EndedInbox {
    fn push(&self, ended: Ended) {
        thread_local! {
            static SHARD: usize = {
                static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
                NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % ENDED_SHARDS
            };
        }
        let shard = SHARD.with(|s| *s);
        self.shards[shard]
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(ended);
    }

    /// Takes every fire that ended so far.
    pub(crate) fn drain(&self) -> Vec<Ended> {
        let mut out = Vec::new();
        for shard in &self.shards {
            out.append(&mut shard.0.lock().unwrap_or_else(|p| p.into_inner()));
        }
        out
    }
}

/// A fire that ended, after all its attempts.
pub(crate) struct Ended {
    pub(crate) meta: Arc<TaskMeta>,
    pub(crate) scheduled: DateTime<Utc>,
    pub(crate) error: Option<String>,
}

impl FireEnv {
    /// Tells the driver `note`.
    pub(crate) fn note(&self, note: FireNote) {
        (self.notes)(note);
    }

    /// Starts the fires won in one claim batch (or a consumed trigger).
    ///
    /// Fires due at one future instant (claimed ahead) are pooled across claim batches and
    /// wait together: one timer per instant, not one per fire. At the instant (or at once for
    /// fires already due) the pool opens: one task per runtime worker takes fires from it in
    /// chunks and starts each inline, polling its future once; only a fire still pending after
    /// that first poll gets a task of its own. Starting 10,000 fires this way costs a fraction
    /// of spawning 10,000 tasks. A handler that holds its first poll longer than
    /// [`INLINE_SLOW`] makes the task that started it spawn every later fire instead, so one
    /// slow handler delays the others by at most its own first poll.
    pub(crate) fn launch_all(self: &Arc<Self>, launches: Vec<Launch>) {
        let now = self.clock.now();
        let mut due_now = Vec::new();
        let mut later: Vec<Launch> = Vec::new();
        for l in launches {
            if l.kind == FireKind::Scheduled && l.key.instant > now {
                later.push(l);
            } else {
                due_now.push(l);
            }
        }
        if !due_now.is_empty() {
            let pool = Arc::new(Pool::new(due_now));
            self.handlers.spawn(open(self.clone(), pool));
        }
        later.sort_by_key(|l| l.key.instant);
        let mut later = later.into_iter().peekable();
        while let Some(first) = later.next() {
            let at = first.key.instant;
            let mut group = vec![first];
            while let Some(l) = later.next_if(|l| l.key.instant == at) {
                group.push(l);
            }
            let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
            match waiting.get(&at) {
                Some(pool) => pool.extend(group),
                None => {
                    let pool = Arc::new(Pool::new(group));
                    waiting.insert(at, pool.clone());
                    self.handlers.spawn(open_at(self.clone(), at, pool));
                }
            }
        }
    }

    /// Sends the event built by `make` when anyone listens (building events costs allocations
    /// on the hot path).
    pub(crate) fn emit(&self, make: impl FnOnce() -> DcronEvent) {
        if self.events.receiver_count() > 0 {
            let _ = self.events.send(make());
        }
    }

    pub(crate) fn info(&self, key: &FireKey, kind: FireKind) -> FireInfo {
        FireInfo {
            task: key.task.clone(),
            scheduled: key.instant,
            node: self.node_id.to_string(),
            catch_up: matches!(kind, FireKind::CatchUp | FireKind::Backfill),
        }
    }

    /// The fire metrics' `task` label of `task`, when the node labels them.
    fn task_label(&self, task: &str) -> Option<metrics::SharedString> {
        self.labels.as_ref().map(|l| l.label(task))
    }

    fn skipped(&self, info: FireInfo, reason: SkipReason) {
        match self.task_label(&info.task) {
            Some(task) => metrics::counter!("dcron_fires_skipped_total", "reason" => reason.as_str(), "task" => task).increment(1),
            None => metrics::counter!("dcron_fires_skipped_total", "reason" => reason.as_str()).increment(1),
        }
        tracing::info!(task = %info.task, scheduled = %info.scheduled, reason = reason.as_str(), "fire skipped");
        let _ = self.events.send(DcronEvent::Skipped { fire: info, reason });
    }
}

/// The policies that apply to a task: its own, else the node's defaults.
pub(crate) fn retry_of(meta: &TaskMeta, cfg: &Config) -> RetryPolicy {
    meta.retry.unwrap_or(cfg.default_retry)
}

pub(crate) fn timeout_of(meta: &TaskMeta, cfg: &Config) -> Option<Duration> {
    meta.timeout_ms
        .map(Duration::from_millis)
        .or(cfg.default_timeout)
        .filter(|t| !t.is_zero())
}

pub(crate) fn overlap_of(meta: &TaskMeta, cfg: &Config) -> OverlapPolicy {
    meta.overlap.unwrap_or(cfg.default_overlap)
}

/// What the fires of one gate share: a token (a child of the node's, so that cloning it per
/// fire does not contend with the other gates) and whether anyone listened for events when the
/// gate opened (asking costs a lock).
#[derive(Clone)]
struct Share {
    cancel: CancellationToken,
    listening: bool,
}

/// Fires to start, shared by the tasks that start them.
pub(crate) struct Pool {
    fires: Mutex<std::collections::VecDeque<Launch>>,
}

impl Pool {
    fn new(fires: Vec<Launch>) -> Self {
        Pool {
            fires: Mutex::new(fires.into()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<Launch>> {
        self.fires.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn extend(&self, fires: Vec<Launch>) {
        self.lock().extend(fires);
    }

    /// Takes the next chunk of fires (empty when the pool is drained).
    fn take(&self) -> Vec<Launch> {
        let mut fires = self.lock();
        let n = fires.len().min(POOL_CHUNK);
        fires.drain(..n).collect()
    }
}

/// Waits for the instant `at` of fires claimed ahead of it, then opens their pool. A won claim
/// is the right to run: a stop meanwhile does not cancel the wait.
async fn open_at(env: Arc<FireEnv>, at: DateTime<Utc>, pool: Arc<Pool>) {
    wait_until(&*env.clock, at).await;
    // Fires of this instant claimed from now on start at once (see `launch_all`).
    env.waiting
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&at);
    open(env, pool).await;
}

/// Starts every fire of `pool`: one task per runtime worker for a large pool, one for a small
/// one. They are spawned rather than run here, so that the scheduler hands them to idle workers
/// (a task spawned last waits for the spawning task's worker).
async fn open(env: Arc<FireEnv>, pool: Arc<Pool>) {
    let listening = env.events.receiver_count() > 0;
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    let len = pool.lock().len();
    let starters = workers.min(len.div_ceil(GATE_MIN)).max(1);
    for _ in 0..starters {
        // Each starter its own copy of the environment and its own token: cloning an `Arc` or
        // a token per fire is then free of contention between the starters.
        let share = Share {
            cancel: env.cancel.child_token(),
            listening,
        };
        let mut own = FireEnv::clone(&env);
        // The node id is cloned into every fire's context: a copy of its own keeps that
        // reference count local too.
        own.node_id = Arc::from(&*env.node_id);
        let own = Arc::new(own);
        env.handlers.spawn(start_pool(own, pool.clone(), share));
    }
}

/// Takes chunks from `pool` until it is empty and starts them: inline while first polls are
/// fast, each fire in its own task once one was not.
async fn start_pool(env: Arc<FireEnv>, pool: Arc<Pool>, share: Share) {
    let mut inline = true;
    loop {
        let chunk = pool.take();
        if chunk.is_empty() {
            return;
        }
        if !inline {
            for l in chunk {
                env.handlers.spawn(run(env.clone(), l, share.clone()));
            }
            continue;
        }
        let mut chunk = chunk.into_iter();
        std::future::poll_fn(|cx| {
            let mut last = std::time::Instant::now();
            for l in chunk.by_ref() {
                let mut fire = Box::pin(run(env.clone(), l, share.clone()));
                if !inline {
                    env.handlers.spawn(fire);
                    continue;
                }
                match std::panic::catch_unwind(AssertUnwindSafe(|| fire.as_mut().poll(cx))) {
                    Ok(Poll::Ready(())) => {}
                    Ok(Poll::Pending) => {
                        env.handlers.spawn(fire);
                    }
                    Err(panic) => {
                        tracing::error!(panic = %panic_message(&panic), "a fire panicked outside its handler");
                    }
                }
                let now = std::time::Instant::now();
                if now - last > INLINE_SLOW {
                    inline = false;
                }
                last = now;
            }
            Poll::Ready(())
        })
        .await;
    }
}

/// Sleeps until the wall clock reads `at`. With a clock that follows real time, the last
/// [`PRECISE_WAIT`] is slept on a blocking thread, whose sleep overshoots by microseconds rather
/// than the timer wheel's milliseconds.
async fn wait_until(clock: &dyn Clock, at: DateTime<Utc>) {
    let wait = crate::clock::until(clock.now(), at);
    if wait.is_zero() {
        return;
    }
    if !clock.follows_real_time() {
        tokio::time::sleep(wait).await;
        return;
    }
    if wait > PRECISE_WAIT {
        tokio::time::sleep(wait - PRECISE_WAIT).await;
    }
    let rest = crate::clock::until(clock.now(), at);
    if !rest.is_zero() {
        // The timer stays armed too: if the blocking pool is busy with the application's own
        // work (or shutting down), the fire is no later than a timer would have made it.
        let precise = tokio::task::spawn_blocking(move || std::thread::sleep(rest));
        let timer = tokio::time::sleep(rest);
        tokio::pin!(timer);
        tokio::select! {
            slept = precise => {
                if slept.is_err() {
                    timer.await;
                }
            }
            () = &mut timer => {}
        }
    }
}

async fn run(env: Arc<FireEnv>, l: Launch, share: Share) {
    let overlap = overlap_of(&l.meta, &env.cfg);
    // Only fires of non-`Allow` tasks are tracked (overlap checks and published markers); an
    // `Allow` fire costs no shared state.
    let tracked = overlap != OverlapPolicy::Allow;
    // A fire gets its own token only when something may cancel it alone (a timeout, a lost
    // lease for a tracked fire); otherwise its gate's token, cancelled with the node's at the
    // end of a stop's grace period, is the one to watch.
    let cancel = if tracked || timeout_of(&l.meta, &env.cfg).is_some() {
        share.cancel.child_token()
    } else {
        share.cancel.clone()
    };
    // The concurrency limits first: a fire waiting for a permit holds nothing cluster-wide.
    // Boxed, like the tracked start below: limits are opt-in.
    let _permits: Option<Permits> = if env.limits.applies(&l.meta) {
        match Box::pin(take_permits(&env, &l)).await {
            Some(p) => Some(p),
            None => {
                env.skipped(env.info(&l.key, l.kind), SkipReason::ConcurrencyLimit);
                return;
            }
        }
    } else {
        None
    };
    // Boxed: tracked fires are the rare case, and their wait would double every fire's size.
    // `slot`: the lease under which this fire holds its task's running slot in the registry.
    let mut slot = None;
    if tracked {
        match Box::pin(start_tracked(&env, &l, overlap, &cancel)).await {
            Some(held) => slot = held,
            None => return,
        }
    }
    // A fire claimed ahead of its instant whose task was deleted, paused, changed or started a
    // new life meanwhile does not start (its claim stays: nobody else runs it either).
    let moved = l
        .stamp
        .as_ref()
        .is_some_and(|(s, at)| s.load(std::sync::atomic::Ordering::Acquire) != *at);
    if moved {
        env.skipped(env.info(&l.key, l.kind), SkipReason::Cancelled);
        if tracked {
            end_tracked(&env, &l, slot);
        }
        return;
    }
    // No fire starts after its deadline (a node frozen after the claim reply, a long overlap
    // wait): checked on the monotonic clock right before the handler.
    if l.deadline_at.is_some_and(|d| env.clock.monotonic() > d) {
        tracing::warn!(fire = %l.key, "fire reached its start after its deadline: not run");
        metrics::counter!("dcron_fires_missed_total").increment(1);
        let _ = env
            .events
            .send(DcronEvent::Missed(env.info(&l.key, l.kind)));
        if tracked {
            end_tracked(&env, &l, slot);
        }
        return;
    }
    // A fire holding a running slot must not outlive the lease the slot lives with: a watchdog
    // cancels it (its handler sees `ctx.cancel`) once the lease is no longer known to live.
    let watchdog = slot.as_ref().map(|lease| {
        env.handlers.spawn(lease_watchdog(
            env.clone(),
            Arc::from(lease.id.as_str()),
            cancel.clone(),
        ))
    });
    // Listed as running (for `running_fires` and the stop report) from the first poll that
    // leaves it pending: a handler that ends within its first poll is never observable as
    // running, and costs nothing here.
    let fire = attempts(&env, &l, cancel, tracked, &share);
    tokio::pin!(fire);
    let mut running = None;
    let error = std::future::poll_fn(|cx| {
        let polled = fire.as_mut().poll(cx);
        if polled.is_pending() && running.is_none() {
            running = Some(env.in_flight.enter(
                &l.meta,
                l.key.instant,
                matches!(l.kind, FireKind::CatchUp | FireKind::Backfill),
            ));
        }
        polled
    })
    .await;
    drop(running);
    if let Some(w) = watchdog {
        w.abort();
    }
    if tracked {
        end_tracked(&env, &l, slot);
    }
    finish(&env, &l, error).await;
}

/// Waits for the fire's permits under the node's and the task's concurrency limits, until the
/// fire's deadline (a trigger, which has none: until the node stops); `None` when they did not
/// come in time.
async fn take_permits(env: &FireEnv, l: &Launch) -> Option<Permits> {
    let deadline = l.deadline_at;
    let stopping = env.stopping.clone();
    let wait = async move {
        match deadline {
            Some(d) => tokio::select! {
                () = tokio::time::sleep_until(d) => {}
                () = stopping.cancelled() => {}
            },
            None => stopping.cancelled().await,
        }
    };
    env.limits.acquire(&l.meta, wait).await
}

/// Registers a tracked fire in the running set per its overlap policy and, with a registry
/// that keeps running slots, takes the task's slot: `None` when it must not run (reported as
/// skipped or missed), else the lease holding the slot (none without slots).
async fn start_tracked(
    env: &FireEnv,
    l: &Launch,
    overlap: OverlapPolicy,
    cancel: &CancellationToken,
) -> Option<Option<crate::registry::Lease>> {
    let mut entry = RunningEntry {
        fire: RunningFire {
            task: l.key.task.clone(),
            instant: l.key.instant,
            token: l.token,
        },
        overlap,
        cancel: cancel.clone(),
    };
    let deadline = l.key.instant
        + chrono::Duration::from_std(l.window).unwrap_or_else(|_| chrono::Duration::zero());
    // Start now, wait in the queue, or skip.
    if let Err(back) = env.running.try_start(entry) {
        entry = back;
        if overlap != OverlapPolicy::Queue || !env.running.take_queue_slot(&l.key.task) {
            env.skipped(env.info(&l.key, l.kind), SkipReason::Overlap);
            return None;
        }
        let started = loop {
            if env.stopping.is_cancelled() || env.clock.now() > deadline {
                break false;
            }
            tokio::time::sleep(QUEUE_POLL).await;
            match env.running.try_start(entry) {
                Ok(()) => break true,
                Err(back) => entry = back,
            }
        };
        env.running.release_queue_slot(&l.key.task);
        if !started {
            env.skipped(env.info(&l.key, l.kind), SkipReason::Overlap);
            return None;
        }
    }
    env.note(FireNote::RunningChanged);
    if !env.slots {
        return Some(None);
    }
    // The registry's slot is the cluster-wide check: atomic, so two nodes never both start.
    match take_slot(env, l, overlap, deadline).await {
        SlotTaken::Yes(lease) => Some(Some(lease)),
        SlotTaken::Held => {
            env.running.end(&l.key.task, l.token, l.key.instant);
            env.note(FireNote::RunningChanged);
            env.skipped(env.info(&l.key, l.kind), SkipReason::Overlap);
            None
        }
        SlotTaken::Unknown => {
            env.running.end(&l.key.task, l.token, l.key.instant);
            env.note(FireNote::RunningChanged);
            tracing::warn!(fire = %l.key, "the running slot could not be taken before the deadline: not run");
            metrics::counter!("dcron_fires_missed_total").increment(1);
            let _ = env
                .events
                .send(DcronEvent::Missed(env.info(&l.key, l.kind)));
            None
        }
    }
}

/// Cancels `cancel` when the lease `held_under` is no longer known to live: no keep-alive sent
/// within the TTL succeeded, the lease is gone, or another lease replaced it.
async fn lease_watchdog(env: Arc<FireEnv>, held_under: Arc<str>, cancel: CancellationToken) {
    let mut rx = env.lease_until.subscribe();
    loop {
        let bound = rx.borrow_and_update().clone();
        match bound {
            Some((id, until)) if id == held_under && env.clock.monotonic() < until => {
                tokio::select! {
                    () = tokio::time::sleep_until(until) => {}
                    changed = rx.changed() => {
                        if changed.is_err() {
                            cancel.cancel();
                            return;
                        }
                    }
                    () = cancel.cancelled() => return,
                }
            }
            _ => {
                tracing::warn!("the lease is no longer known to live: a fire holding a running slot is cancelled");
                cancel.cancel();
                return;
            }
        }
    }
}

/// Whether the lease `id` is the lease in force and known to live now.
fn lease_known_alive(env: &FireEnv, id: &str) -> bool {
    matches!(&*env.lease_until.borrow(), Some((held, until)) if **held == *id && env.clock.monotonic() < *until)
}

/// How taking a running slot ended.
enum SlotTaken {
    /// Held under this lease.
    Yes(crate::registry::Lease),
    /// Another fire holds it (and the policy does not wait, or the wait ran out).
    Held,
    /// No answer before the deadline (registry unreachable, no lease).
    Unknown,
}

/// Takes the task's running slot for `l`: at once, or for `Queue` by waiting until it is free.
/// Unanswered calls are retried (the same call again is safe) until the fire's deadline.
async fn take_slot(
    env: &FireEnv,
    l: &Launch,
    overlap: OverlapPolicy,
    deadline: DateTime<Utc>,
) -> SlotTaken {
    let mut held = false;
    loop {
        let lease = env.lease.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(lease) = lease {
            match env.registry.acquire_slot(&lease, &l.key).await {
                // A reply that took longer than the lease is known to live may grant a slot
                // that ended with the lease meanwhile (and that another node took since).
                Ok(crate::types::SlotOutcome::Taken) if lease_known_alive(env, &lease.id) => {
                    return SlotTaken::Yes(lease)
                }
                Ok(crate::types::SlotOutcome::Taken) => {
                    tracing::warn!(fire = %l.key, "the running slot was granted after the lease was last known to live: not run");
                    return SlotTaken::Unknown;
                }
                Ok(_) if overlap != OverlapPolicy::Queue => return SlotTaken::Held,
                Ok(_) => held = true,
                Err(e) => {
                    tracing::debug!(fire = %l.key, error = %e, "taking the running slot failed; retried");
                    held = false;
                }
            }
        }
        if env.stopping.is_cancelled() || env.clock.now() > deadline {
            return if held {
                SlotTaken::Held
            } else {
                SlotTaken::Unknown
            };
        }
        tokio::time::sleep(QUEUE_POLL).await;
    }
}

/// A tracked fire ended (or did not start after all): off the running set, and its running
/// slot released in the background (retried a while; it ends with the lease in any case).
fn end_tracked(env: &FireEnv, l: &Launch, slot: Option<crate::registry::Lease>) {
    env.running.end(&l.key.task, l.token, l.key.instant);
    env.note(FireNote::RunningChanged);
    let Some(lease) = slot else {
        return;
    };
    let registry = env.registry.clone();
    let key = l.key.clone();
    env.handlers.spawn(async move {
        let mut wait = QUEUE_POLL;
        for attempt in 1..=RELEASE_ATTEMPTS {
            match registry.release_slot(&lease, &key).await {
                Ok(()) => return,
                Err(e) if attempt == RELEASE_ATTEMPTS || !e.is_retryable() => {
                    tracing::error!(fire = %key, error = %e, "releasing the running slot failed; it ends with the lease");
                    return;
                }
                Err(_) => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
            }
        }
    });
}

/// After the last attempt: status, the error handler, one-shot bookkeeping.
async fn finish(env: &FireEnv, l: &Launch, error: Option<Error>) {
    if !env.cfg.status_interval.is_zero() {
        let ended = Ended {
            meta: l.meta.clone(),
            scheduled: l.key.instant,
            error: error.as_ref().map(|e| e.to_string()),
        };
        env.ended.push(ended);
    }
    let meta = &l.meta;
    match error {
        None => {
            if meta.one_shot && l.kind != FireKind::Trigger {
                let r = if meta.executed_and_cleanup {
                    match env.registry.cleanup_task(&meta.name).await {
                        Ok(()) => crate::admin::forget_task_records(&*env.registry, &meta.name)
                            .await
                            .or(Ok(())),
                        Err(e) => Err(e),
                    }
                } else {
                    env.registry.mark_deleted(&meta.name, env.clock.now()).await
                };
                if let Err(e) = &r {
                    tracing::error!(task = %meta.name, error = %e, "one-shot bookkeeping failed");
                    (env.cfg.error_handler)(meta, e);
                }
                env.note(FireNote::OneShotEnded {
                    name: meta.name.clone(),
                    done: r.is_ok(),
                });
            }
        }
        Some(err) => {
            (env.cfg.error_handler)(meta, &err);
            if meta.one_shot && l.kind != FireKind::Trigger {
                env.note(FireNote::OneShotEnded {
                    name: meta.name.clone(),
                    done: false,
                });
            }
        }
    }
}

/// Runs the handler until it succeeds or the retry policy gives up; answers the last error.
async fn attempts(
    env: &FireEnv,
    l: &Launch,
    cancel: CancellationToken,
    tracked: bool,
    share: &Share,
) -> Option<Error> {
    let meta = &l.meta;
    // Built only when an event needs it (most sends are skipped when nobody listens).
    let info = || env.info(&l.key, l.kind);
    let retry = retry_of(meta, &env.cfg);
    let timeout = timeout_of(meta, &env.cfg);
    let started = env.clock.now();
    let lateness = (started - l.key.instant).num_milliseconds();
    let span = tracing::info_span!(
        "dcron.fire",
        task = %meta.name,
        scheduled = %l.key.instant,
        node = %env.node_id,
        token = l.token,
        kind = ?l.kind,
        lateness_ms = lateness,
        attempts = tracing::field::Empty,
        duration_ms = tracing::field::Empty,
        result = tracing::field::Empty,
    );
    async {
        if share.listening {
            let _ = env.events.send(DcronEvent::Started(info()));
        }
        let label = env.task_label(&meta.name);
        let late_s = lateness.max(0) as f64 / 1000.0;
        match &label {
            Some(task) => metrics::histogram!("dcron_fire_lateness_seconds", "task" => task.clone()).record(late_s),
            None => metrics::histogram!("dcron_fire_lateness_seconds").record(late_s),
        }
        let threshold = i64::try_from(env.cfg.overdue_threshold.as_millis()).unwrap_or(i64::MAX);
        if l.kind == FireKind::Scheduled && lateness > threshold {
            metrics::counter!("dcron_fires_overdue_total").increment(1);
            let _ = env.events.send(DcronEvent::Overdue {
                fire: info(),
                late_ms: lateness,
            });
        }
        let t0 = Instant::now();
        let mut attempt = 1u32;
        // A tracked fire keeps `cancel` for lease-loss cancellation and gives each attempt a child;
        // an untracked one hands `cancel` itself to its first attempt (no clone: each clone
        // and drop of a token locks the node token's tree).
        let (mut attempt_cancel, parent) = if tracked {
            (cancel.child_token(), Some(cancel))
        } else {
            (cancel, None)
        };
        let outcome = loop {
            // Kept only when a timeout may have to cancel the attempt.
            let on_timeout = timeout.map(|_| attempt_cancel.clone());
            let ctx = FireContext {
                meta: meta.clone(),
                scheduled: l.key.instant,
                token: l.token,
                node_id: env.node_id.clone(),
                catch_up: matches!(l.kind, FireKind::CatchUp | FireKind::Backfill),
                attempt,
                cancel: attempt_cancel,
            };
            let run = AssertUnwindSafe(l.task.run(ctx)).catch_unwind();
            let result = match timeout {
                // Boxed: a timer would double the size of every fire without a timeout.
                Some(limit) => Box::pin(tokio::time::timeout(limit, run)).await.ok(),
                None => Some(run.await),
            };
            let error = match result {
                Some(Ok(Ok(()))) => None,
                Some(Ok(Err(source))) => Some(Error::Task {
                    task: meta.name.clone(),
                    source,
                }),
                Some(Err(panic)) => Some(Error::Panicked {
                    task: meta.name.clone(),
                    message: panic_message(&panic),
                }),
                None => {
                    if let Some(token) = &on_timeout {
                        token.cancel();
                    }
                    match &label {
                        Some(task) => metrics::counter!("dcron_fires_timed_out_total", "task" => task.clone()).increment(1),
                        None => metrics::counter!("dcron_fires_timed_out_total").increment(1),
                    }
                    let _ = env.events.send(DcronEvent::TimedOut(info()));
                    Some(Error::Timeout {
                        task: meta.name.clone(),
                        timeout: timeout.unwrap_or_default(),
                    })
                }
            };
            let Some(error) = error else {
                break None;
            };
            if attempt >= retry.max_attempts {
                break Some(error);
            }
            if abandon(env, l, attempt) {
                break Some(error);
            }
            let seed = crate::policy::splitmix(
                dcron_assign::stable_hash(meta.name.as_bytes()) ^ l.key.instant_millis() as u64,
            );
            let delay = retry.delay(attempt, seed);
            tracing::info!(attempt, error = %error, delay_ms = delay.as_millis() as u64, "fire failed; retrying");
            metrics::counter!("dcron_fire_retries_total").increment(1);
            let _ = env.events.send(DcronEvent::Retried {
                fire: info(),
                attempt,
                error: error.to_string(),
                delay,
            });
            // Boxed: retries are the rare case (see `run`).
            Box::pin(async {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = owner_lost(l) => {}
                    _ = env.stopping.cancelled() => {}
                }
            })
            .await;
            if abandon(env, l, attempt) {
                break Some(error);
            }
            attempt += 1;
            attempt_cancel = if let Some(parent) = &parent {
                parent.child_token()
            } else if timeout.is_some() {
                share.cancel.child_token()
            } else {
                share.cancel.clone()
            };
        };
        let elapsed = t0.elapsed();
        let result = if outcome.is_none() { "ok" } else { "error" };
        match &label {
            Some(task) => {
                metrics::histogram!("dcron_fire_duration_seconds", "task" => task.clone())
                    .record(elapsed.as_secs_f64());
                metrics::counter!("dcron_fires_executed_total", "result" => result, "task" => task.clone())
                    .increment(1);
            }
            None => {
                metrics::histogram!("dcron_fire_duration_seconds").record(elapsed.as_secs_f64());
                metrics::counter!("dcron_fires_executed_total", "result" => result).increment(1);
            }
        }
        let span = tracing::Span::current();
        span.record("attempts", attempt);
        span.record("duration_ms", elapsed.as_millis() as u64);
        match &outcome {
            None => {
                span.record("result", "ok");
                tracing::debug!("fire succeeded");
                if share.listening {
                    let _ = env.events.send(DcronEvent::Succeeded(info()));
                }
            }
            Some(err) => {
                span.record("result", "error");
                tracing::warn!(error = %err, "fire failed");
                let _ = env.events.send(DcronEvent::Failed {
                    fire: info(),
                    error: err.to_string(),
                });
            }
        }
        outcome
    }
    .instrument(span)
    .await
}

/// Whether a retry must not happen (node stopping, task no longer owned); reports it.
fn abandon(env: &FireEnv, l: &Launch, attempt: u32) -> bool {
    let reason = if env.stopping.is_cancelled() {
        "the node is stopping"
    } else if l
        .owner
        .as_ref()
        .is_some_and(CancellationToken::is_cancelled)
    {
        "the node no longer owns the task"
    } else {
        return false;
    };
    tracing::warn!(attempt, reason, "retry abandoned");
    let _ = env.events.send(DcronEvent::RetryAbandoned {
        fire: env.info(&l.key, l.kind),
        attempt,
        reason,
    });
    true
}

/// Completes when the node loses the fire's task (never for fires without an owner token).
async fn owner_lost(l: &Launch) {
    match &l.owner {
        Some(t) => t.cancelled().await,
        None => std::future::pending().await,
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}
