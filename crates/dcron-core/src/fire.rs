//! Running one fire this node has the right to run (a won claim, a consumed trigger): the
//! overlap check, attempts with a timeout and retries, events, metrics and the bookkeeping that
//! follows (one-shot deletion, status).

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::FutureExt;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::clock::Clock;
use crate::dcron::Config;
use crate::error::Error;
use crate::event::{DcronEvent, FireInfo};
use crate::policy::{OverlapPolicy, RetryPolicy, RunningFire, SkipReason};
use crate::registry::Registry;
use crate::runtime::Internal;
use crate::task::{FireContext, Task};
use crate::types::{FireKey, TaskMeta};

/// How often a queued fire looks again whether the running one ended.
const QUEUE_POLL: Duration = Duration::from_millis(100);

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

/// Everything a fire task needs from its node.
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
    pub(crate) internal: mpsc::UnboundedSender<Internal>,
    pub(crate) running: Arc<RunningSet>,
}

impl FireEnv {
    /// Runs `launch` in its own task, tracked with the node's handlers.
    pub(crate) fn launch(&self, launch: Launch) {
        let env = self.clone();
        self.handlers.spawn(run(env, launch));
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

    fn skipped(&self, info: FireInfo, reason: SkipReason) {
        metrics::counter!("dcron_fires_skipped_total", "reason" => reason.as_str()).increment(1);
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

async fn run(env: FireEnv, l: Launch) {
    // Claimed ahead of its instant: start at the instant, never before (a won claim is the
    // right to run, so a stop meanwhile does not cancel it).
    if l.kind == FireKind::Scheduled {
        let wait = crate::clock::until(env.clock.now(), l.key.instant);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
    let overlap = overlap_of(&l.meta, &env.cfg);
    // Only fires of non-`Allow` tasks are tracked (overlap checks and published markers); an
    // `Allow` fire costs no shared state.
    let tracked = overlap != OverlapPolicy::Allow;
    // A fire gets its own token only when something may cancel it alone (a timeout, a lost
    // lease for a tracked fire); otherwise the node's token, cancelled at the end of a stop's
    // grace period, is the one to watch, and sharing it costs nothing per fire.
    let cancel = if tracked || timeout_of(&l.meta, &env.cfg).is_some() {
        env.cancel.child_token()
    } else {
        env.cancel.clone()
    };
    if tracked && !start_tracked(&env, &l, overlap, &cancel).await {
        return;
    }
    let error = attempts(&env, &l, cancel, tracked).await;
    if tracked {
        env.running.end(&l.key.task, l.token, l.key.instant);
        let _ = env.internal.send(Internal::RunningChanged);
    }
    finish(&env, &l, error).await;
}

/// Registers a tracked fire in the running set per its overlap policy; `false` when it must
/// not run (reported as skipped).
async fn start_tracked(
    env: &FireEnv,
    l: &Launch,
    overlap: OverlapPolicy,
    cancel: &CancellationToken,
) -> bool {
    let mut entry = RunningEntry {
        fire: RunningFire {
            task: l.key.task.clone(),
            instant: l.key.instant,
            token: l.token,
        },
        overlap,
        cancel: cancel.clone(),
    };
    // Start now, wait in the queue, or skip.
    if let Err(back) = env.running.try_start(entry) {
        entry = back;
        if overlap != OverlapPolicy::Queue || !env.running.take_queue_slot(&l.key.task) {
            env.skipped(env.info(&l.key, l.kind), SkipReason::Overlap);
            return false;
        }
        let deadline = l.key.instant
            + chrono::Duration::from_std(l.window).unwrap_or_else(|_| chrono::Duration::zero());
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
            return false;
        }
    }
    let _ = env.internal.send(Internal::RunningChanged);
    true
}

/// After the last attempt: status, the error handler, one-shot bookkeeping.
async fn finish(env: &FireEnv, l: &Launch, error: Option<Error>) {
    if !env.cfg.status_interval.is_zero() {
        let _ = env.internal.send(Internal::FireEnded {
            name: l.key.task.clone(),
            scheduled: l.key.instant,
            error: error.as_ref().map(|e| e.to_string()),
        });
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
                let _ = env.internal.send(Internal::OneShotEnded {
                    name: meta.name.clone(),
                    done: r.is_ok(),
                });
            }
        }
        Some(err) => {
            (env.cfg.error_handler)(meta, &err);
            if meta.one_shot && l.kind != FireKind::Trigger {
                let _ = env.internal.send(Internal::OneShotEnded {
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
        env.emit(|| DcronEvent::Started(info()));
        metrics::histogram!("dcron_fire_lateness_seconds").record(lateness.max(0) as f64 / 1000.0);
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
        // an untracked one uses `cancel` itself for its first attempt.
        let mut attempt_cancel = if tracked {
            cancel.child_token()
        } else {
            cancel.clone()
        };
        let outcome = loop {
            let ctx = FireContext {
                meta: meta.clone(),
                scheduled: l.key.instant,
                token: l.token,
                node_id: env.node_id.clone(),
                catch_up: matches!(l.kind, FireKind::CatchUp | FireKind::Backfill),
                attempt,
                cancel: attempt_cancel.clone(),
            };
            let run = AssertUnwindSafe(l.task.run(ctx)).catch_unwind();
            let result = match timeout {
                Some(limit) => tokio::time::timeout(limit, run).await.ok(),
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
                    attempt_cancel.cancel();
                    metrics::counter!("dcron_fires_timed_out_total").increment(1);
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
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = owner_lost(l) => {}
                _ = env.stopping.cancelled() => {}
            }
            if abandon(env, l, attempt) {
                break Some(error);
            }
            attempt += 1;
            attempt_cancel = if tracked {
                cancel.child_token()
            } else if timeout.is_some() {
                env.cancel.child_token()
            } else {
                env.cancel.clone()
            };
        };
        let elapsed = t0.elapsed();
        metrics::histogram!("dcron_fire_duration_seconds").record(elapsed.as_secs_f64());
        let span = tracing::Span::current();
        span.record("attempts", attempt);
        span.record("duration_ms", elapsed.as_millis() as u64);
        match &outcome {
            None => {
                span.record("result", "ok");
                tracing::debug!("fire succeeded");
                metrics::counter!("dcron_fires_executed_total", "result" => "ok").increment(1);
                env.emit(|| DcronEvent::Succeeded(info()));
            }
            Some(err) => {
                span.record("result", "error");
                tracing::warn!(error = %err, "fire failed");
                metrics::counter!("dcron_fires_executed_total", "result" => "error").increment(1);
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
