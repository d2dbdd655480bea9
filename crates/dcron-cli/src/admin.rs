//! Pause, resume and trigger, and the per-task status the nodes keep in the registry, through
//! [`dcron_core::admin`].
//!
//! These use the registry's records (`Capabilities::records`); with a backend that has none
//! the commands fail with exit code 1 and say so, and `tasks` shows `-` for the state it cannot
//! read.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use dcron_core::{
    admin, Error, LastResult, NodeStatus, RecordKind, Registry, TaskStatus, TriggerRecord,
};

use crate::error::{CliError, CliResult};
use crate::ops::{CorruptRecord, TaskExtras};

fn unsupported(registry: &dyn Registry, command: &str) -> CliError {
    CliError::failed(format!(
        "`{command}` needs pause/trigger records, which the {} registry does not support",
        registry.backend()
    ))
}

fn map(registry: &dyn Registry, command: &str, e: Error) -> CliError {
    match e {
        Error::Unsupported { .. } => unsupported(registry, command),
        e => e.into(),
    }
}

/// A short text for a last result: `ok`, `failed: <error>` or `no handler on <node>`.
pub fn result_text(r: &LastResult) -> String {
    r.to_string()
}

/// Reads the pause flags and task statuses. A registry without records gives empty ones.
///
/// # Errors
/// The registry's errors.
pub async fn extras(registry: &dyn Registry) -> CliResult<TaskExtras> {
    if !registry.capabilities().records {
        return Ok(TaskExtras::default());
    }
    let (pauses, statuses) =
        tokio::try_join!(admin::pause_records(registry), admin::list_status(registry))?;
    let corrupt = pauses
        .corrupt
        .iter()
        .chain(statuses.corrupt.iter())
        .map(|c| CorruptRecord {
            key: c.key.clone(),
            reason: c.reason.clone(),
        })
        .collect();
    let status: HashMap<String, TaskStatus> = statuses
        .items
        .into_iter()
        .map(|s| (s.task.clone(), s))
        .collect();
    Ok(TaskExtras {
        paused: pauses
            .items
            .into_iter()
            .filter(|p| p.paused)
            .map(|p| p.task)
            .collect(),
        status,
        corrupt,
    })
}

/// The names with a life record: registries without native lives keep each task's life as a
/// [`RecordKind::Life`] record, static tasks included. Empty for other registries.
///
/// # Errors
/// The registry's errors.
pub async fn life_names(registry: &dyn Registry) -> CliResult<Vec<String>> {
    let caps = registry.capabilities();
    if !caps.records || caps.exactly_once {
        return Ok(Vec::new());
    }
    Ok(registry
        .list_records(RecordKind::Life)
        .await?
        .into_iter()
        .map(|(name, _)| name)
        .collect())
}

/// Whether the registry knows the name: a dynamic record, a tombstone, retained claims, a
/// pause, or a status record written by the task's owner (static tasks that ran).
///
/// # Errors
/// The registry's errors.
pub async fn known(registry: &dyn Registry, name: &str) -> CliResult<bool> {
    if registry.get_task(name).await?.is_some()
        || registry.get_tombstone(name).await?.is_some()
        || !registry.list_claims(name).await?.items.is_empty()
    {
        return Ok(true);
    }
    if registry.capabilities().records {
        return Ok(admin::task_status(registry, name).await?.is_some()
            || admin::is_paused(registry, name).await?);
    }
    Ok(false)
}

async fn require_known(registry: &dyn Registry, name: &str, allow_unknown: bool) -> CliResult<()> {
    dcron_core::validate_task_name(name)?;
    if !allow_unknown && !known(registry, name).await? {
        return Err(CliError::not_found(format!(
            "unknown task `{name}` (pass --static for a task defined in code that has not run yet)"
        )));
    }
    Ok(())
}

/// `dcronctl pause`: the task's fires are skipped everywhere until it is resumed. Answers
/// whether it was already paused.
///
/// # Errors
/// Usage error for a bad name; not found for an unknown name (unless `allow_unknown`); exit 1
/// when the registry has no records.
pub async fn pause(
    registry: &dyn Registry,
    name: &str,
    allow_unknown: bool,
    now: DateTime<Utc>,
) -> CliResult<bool> {
    set_paused(registry, name, allow_unknown, true, now).await
}

/// `dcronctl resume`. Answers whether the task was paused.
///
/// # Errors
/// As [`pause`].
pub async fn resume(
    registry: &dyn Registry,
    name: &str,
    allow_unknown: bool,
    now: DateTime<Utc>,
) -> CliResult<bool> {
    set_paused(registry, name, allow_unknown, false, now).await
}

/// Pauses or resumes `name` unless it already is in that state; answers whether it was paused.
async fn set_paused(
    registry: &dyn Registry,
    name: &str,
    allow_unknown: bool,
    paused: bool,
    now: DateTime<Utc>,
) -> CliResult<bool> {
    let op = if paused { "pause" } else { "resume" };
    require_known(registry, name, allow_unknown).await?;
    let was = admin::is_paused(registry, name)
        .await
        .map_err(|e| map(registry, op, e))?;
    if was != paused {
        let r = if paused {
            admin::pause_task(registry, name, now).await
        } else {
            admin::resume_task(registry, name, now).await
        };
        r.map_err(|e| map(registry, op, e))?;
    }
    Ok(was)
}

/// The answer of `dcronctl trigger`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Triggered {
    /// The request written.
    pub record: TriggerRecord,
    /// Set when no node can consume the request now (no working node with a weight): it then
    /// stays in the registry until an owner appears, or until a node drops it after
    /// [`admin::TRIGGER_EXPIRY`].
    pub warning: Option<String>,
}

/// `dcronctl trigger`: asks the task's owner to run it once now. The owner deletes the request
/// when it takes it (one atomic delete: only the node whose delete succeeds runs it), so a
/// request with a working owner leaves nothing behind; one nobody can take yet is reported.
///
/// # Errors
/// As [`pause`]; a conflict (exit code 5) when the task is marked deleted.
pub async fn trigger(
    registry: &dyn Registry,
    name: &str,
    allow_unknown: bool,
    now: DateTime<Utc>,
) -> CliResult<Triggered> {
    require_known(registry, name, allow_unknown).await?;
    let record = admin::trigger_task(registry, name, now)
        .await
        .map_err(|e| map(registry, "trigger", e))?;
    let owners = registry
        .list_nodes()
        .await?
        .items
        .iter()
        .filter(|n| n.status == NodeStatus::Working && n.weight > 0)
        .count();
    let warning = (owners == 0).then(|| {
        format!(
            "no working node can run `{name}` now: the request waits in the registry until one \
             does, or is dropped unrun {} after it was made",
            crate::duration::format_duration(admin::TRIGGER_EXPIRY)
        )
    });
    Ok(Triggered { record, warning })
}

/// Removes the pause, status and trigger records of a task (part of `cleanup`, as
/// `Dcron::cleanup_task` does).
///
/// # Errors
/// The registry's errors.
pub async fn forget(registry: &dyn Registry, name: &str) -> CliResult<()> {
    admin::forget_task_records(registry, name).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{EXIT_CONFLICT, EXIT_NOT_FOUND};
    use dcron_core::{MemoryRegistry, PutMode, RecordKind};

    fn t0() -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_800_000_000, 0).expect("valid")
    }

    #[tokio::test]
    async fn pause_resume_trigger_through_the_registry() {
        let reg = MemoryRegistry::new();
        reg.put_task(&crate::testing::meta("job", "@hourly"), PutMode::CreateOnly)
            .await
            .expect("put");
        assert!(!pause(&reg, "job", false, t0()).await.expect("paused"));
        assert!(pause(&reg, "job", false, t0()).await.expect("again"));
        let ex = extras(&reg).await.expect("extras");
        assert!(ex.paused.contains("job"));
        assert!(resume(&reg, "job", false, t0()).await.expect("resumed"));
        assert!(!resume(&reg, "job", false, t0()).await.expect("not paused"));
        assert!(extras(&reg).await.expect("extras").paused.is_empty());

        let t = trigger(&reg, "job", false, t0()).await.expect("triggered");
        assert!(t.warning.expect("no node").contains("no working node"));
        let t = t.record;
        assert_eq!(t.task, "job");
        assert_eq!(
            admin::pending_triggers(&reg).await.expect("list").items,
            vec![t]
        );

        for r in [
            pause(&reg, "nope", false, t0()).await.map(|_| ()),
            resume(&reg, "nope", false, t0()).await.map(|_| ()),
            trigger(&reg, "nope", false, t0()).await.map(|_| ()),
        ] {
            assert_eq!(r.expect_err("unknown").exit_code(), EXIT_NOT_FOUND);
        }
        // A static task that has not run yet may be named explicitly.
        pause(&reg, "static-job", true, t0()).await.expect("paused");
        reg.mark_deleted("job", t0()).await.expect("deleted");
        assert_eq!(
            trigger(&reg, "job", false, t0())
                .await
                .expect_err("tombstoned")
                .exit_code(),
            EXIT_CONFLICT
        );
    }

    #[tokio::test]
    async fn status_records_feed_last_results() {
        let reg = MemoryRegistry::new();
        let mut status = TaskStatus::new("s", t0());
        status.last_result = Some(LastResult::Failed {
            error: "boom".into(),
        });
        status.run_count = 3;
        status.failure_count = 1;
        reg.put_records(RecordKind::Status, &[("s".into(), status.encode())])
            .await
            .expect("put");
        let ex = extras(&reg).await.expect("extras");
        let got = ex.status.get("s").expect("status");
        assert_eq!(
            got.last_result.as_ref().map(result_text).as_deref(),
            Some("failed: boom")
        );
        // A static task known only by its status record counts as known.
        assert!(!pause(&reg, "s", false, t0()).await.expect("paused"));
    }
}
