//! Executing one fire: attempts with a timeout, retries with back-off, events, metrics and
//! the `dcron.fire` span; no registry writes.

use super::*;

/// Runs the handler until it succeeds or the retry policy gives up; answers the last error.
pub(super) async fn attempts(
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
pub(super) fn abandon(env: &FireEnv, l: &Launch, attempt: u32) -> bool {
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
pub(super) async fn owner_lost(l: &Launch) {
    match &l.owner {
        Some(t) => t.cancelled().await,
        None => std::future::pending().await,
    }
}

pub(super) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}
