//! Running one fire this node has the right to run (a won claim, a consumed trigger): the
//! overlap check, attempts with a timeout and retries, events, metrics and the bookkeeping that
//! follows (one-shot deletion, status).
//!
//! This file holds a fire's shape ([`Launch`]), what fires share ([`FireEnv`]) and a fire's
//! sequence (`run`: limits, overlap, cancellation and deadline checks, then the attempts);
//! `pool` starts the fires of one instant, `overlap` keeps the running set and slots,
//! `attempts` executes a fire, `ending` does the bookkeeping after it.

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

mod attempts;
mod ending;
mod overlap;
mod pool;

use attempts::*;
use ending::*;
pub(crate) use overlap::RunningSet;
use overlap::*;
use pool::*;

/// The lease in force (its [`crate::Lease::id`]) and until when it is known to live; none
/// without a lease.
pub(crate) type LeaseBound = Option<(Arc<str>, Instant)>;

/// A first poll longer than this makes a gate spawn the rest of its share.
pub(crate) const INLINE_SLOW: Duration = Duration::from_micros(200);

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
