//! What follows a fire's end: the status bookkeeping and a one-shot's deletion or cleanup (the
//! only registry writes of the fire path besides its running slot).

use super::*;

/// After the last attempt: status, the error handler, one-shot bookkeeping.
pub(super) async fn finish(env: &FireEnv, l: &Launch, error: Option<Error>) {
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
