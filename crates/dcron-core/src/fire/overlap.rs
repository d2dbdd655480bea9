//! The overlap policies on this node and across the cluster: the fires running here (and
//! the ones other nodes publish), the queue of a `Queue` task, the registry's running slot,
//! and the watchdog that cancels a slot holder whose lease is no longer known to live.

use super::*;

/// How often a queued fire looks again whether the running one ended.
pub(super) const QUEUE_POLL: Duration = Duration::from_millis(100);

/// Attempts at releasing a running slot (with a growing wait between them) before leaving it
/// to end with the lease.
pub(super) const RELEASE_ATTEMPTS: u32 = 8;

pub(super) struct RunningEntry {
    pub(super) fire: RunningFire,
    pub(super) overlap: OverlapPolicy,
    pub(super) cancel: CancellationToken,
}

#[derive(Default)]
pub(super) struct RunningInner {
    pub(super) local: HashMap<String, Vec<RunningEntry>>,
    pub(super) queued: HashSet<String>,
    /// Tasks other nodes publish as running.
    pub(super) remote: HashSet<String>,
}

/// The fires running on this node, and the ones other nodes publish; shared by the driver and
/// the fire tasks. The lock is never held across an `.await`.
#[derive(Default)]
pub(crate) struct RunningSet {
    pub(super) inner: Mutex<RunningInner>,
}

impl RunningSet {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, RunningInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts `fire` unless the policy forbids it now: `Allow` always starts; otherwise it
    /// starts only when no fire of the task runs here or elsewhere.
    pub(super) fn try_start(&self, entry: RunningEntry) -> Result<(), RunningEntry> {
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

    pub(super) fn end(&self, task: &str, token: u64, instant: DateTime<Utc>) {
        let mut inner = self.lock();
        if let Some(v) = inner.local.get_mut(task) {
            v.retain(|e| !(e.fire.token == token && e.fire.instant == instant));
            if v.is_empty() {
                inner.local.remove(task);
            }
        }
    }

    pub(super) fn take_queue_slot(&self, task: &str) -> bool {
        self.lock().queued.insert(task.to_string())
    }

    pub(super) fn release_queue_slot(&self, task: &str) {
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

/// Registers a tracked fire in the running set per its overlap policy and, with a registry
/// that keeps running slots, takes the task's slot: `None` when it must not run (reported as
/// skipped or missed), else the lease holding the slot (none without slots).
pub(super) async fn start_tracked(
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
pub(super) async fn lease_watchdog(
    env: Arc<FireEnv>,
    held_under: Arc<str>,
    cancel: CancellationToken,
) {
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
pub(super) fn lease_known_alive(env: &FireEnv, id: &str) -> bool {
    matches!(&*env.lease_until.borrow(), Some((held, until)) if **held == *id && env.clock.monotonic() < *until)
}

/// How taking a running slot ended.
pub(super) enum SlotTaken {
    /// Held under this lease.
    Yes(crate::registry::Lease),
    /// Another fire holds it (and the policy does not wait, or the wait ran out).
    Held,
    /// No answer before the deadline (registry unreachable, no lease).
    Unknown,
}

/// Takes the task's running slot for `l`: at once, or for `Queue` by waiting until it is free.
/// Unanswered calls are retried (the same call again is safe) until the fire's deadline.
pub(super) async fn take_slot(
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
pub(super) fn end_tracked(env: &FireEnv, l: &Launch, slot: Option<crate::registry::Lease>) {
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
