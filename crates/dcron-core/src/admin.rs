//! Operations on a cluster through its registry alone, without running a node: pause, resume,
//! trigger-now and task status. `Dcron` uses them for its own methods of the same names, and an
//! operator tool (`dcronctl`) calls them directly.
//!
//! Every node polls the pause and trigger records at its poll interval (and a node applies its
//! own `Dcron::pause_task` at once), so a change made here takes effect cluster-wide within one
//! poll interval. Registries without record support answer [`Error::Unsupported`].

use chrono::{DateTime, Utc};

use crate::error::{Error, Result};
use crate::policy::{PauseRecord, TaskStatus, TriggerRecord};
use crate::registry::{RecordKind, Registry};
use crate::types::{validate_task_name, CorruptEntry, Listing};

/// Pauses `name` everywhere: its fires are skipped (and reported as skipped) until it is
/// resumed. A name with no task yet may be paused (a static task deployed later starts paused).
///
/// # Errors
/// [`Error::InvalidTaskName`]; the registry's errors.
pub async fn pause_task(registry: &dyn Registry, name: &str, now: DateTime<Utc>) -> Result<()> {
    set_paused(registry, name, true, now).await
}

/// Resumes `name`. Occurrences that fell inside the pause are not caught up.
///
/// # Errors
/// [`Error::InvalidTaskName`]; the registry's errors.
pub async fn resume_task(registry: &dyn Registry, name: &str, now: DateTime<Utc>) -> Result<()> {
    set_paused(registry, name, false, now).await
}

async fn set_paused(
    registry: &dyn Registry,
    name: &str,
    paused: bool,
    now: DateTime<Utc>,
) -> Result<()> {
    validate_task_name(name)?;
    let record = PauseRecord {
        task: name.to_string(),
        paused,
        changed_at: now,
    };
    registry
        .put_records(RecordKind::Pause, &[(name.to_string(), record.encode())])
        .await
}

/// The pause records of the namespace (paused and resumed ones), undecodable ones apart.
///
/// # Errors
/// The registry's errors.
pub async fn pause_records(registry: &dyn Registry) -> Result<Listing<PauseRecord>> {
    decode_all(registry, RecordKind::Pause, PauseRecord::decode).await
}

/// Whether `name` is paused now.
///
/// # Errors
/// [`Error::InvalidTaskName`]; the registry's errors; [`Error::Corrupt`] for a bad record.
pub async fn is_paused(registry: &dyn Registry, name: &str) -> Result<bool> {
    validate_task_name(name)?;
    match registry.get_record(RecordKind::Pause, name).await? {
        Some(bytes) => {
            Ok(PauseRecord::decode(&record_key(RecordKind::Pause, name), &bytes)?.paused)
        }
        None => Ok(false),
    }
}

/// Asks the cluster to run `name` once now, in addition to its schedule. The task's owner runs
/// it within one poll interval, exactly once cluster-wide (the owner consumes the request with an
/// atomic delete; only the node whose delete succeeds runs it). A paused task still runs a
/// trigger (it is an explicit request); a tombstoned one does not.
///
/// A request for a name that no node knows is dropped after [`TRIGGER_EXPIRY`] unrun.
///
/// # Errors
/// [`Error::InvalidTaskName`]; [`Error::Tombstoned`]; the registry's errors.
pub async fn trigger_task(
    registry: &dyn Registry,
    name: &str,
    now: DateTime<Utc>,
) -> Result<TriggerRecord> {
    validate_task_name(name)?;
    if registry.get_tombstone(name).await?.is_some() {
        return Err(Error::Tombstoned {
            name: name.to_string(),
        });
    }
    let id = loop {
        let id = uuid::Uuid::new_v4().as_u64_pair().0 >> 1;
        if id != 0 {
            break id;
        }
    };
    let record = TriggerRecord {
        task: name.to_string(),
        id,
        requested_at: now,
    };
    registry
        .put_records(RecordKind::Trigger, &[(record.key(), record.encode())])
        .await?;
    Ok(record)
}

/// How long an unconsumed trigger request is kept before a node drops it.
pub const TRIGGER_EXPIRY: std::time::Duration = std::time::Duration::from_secs(600);

/// The pending trigger requests of the namespace.
///
/// # Errors
/// The registry's errors.
pub async fn pending_triggers(registry: &dyn Registry) -> Result<Listing<TriggerRecord>> {
    decode_all(registry, RecordKind::Trigger, TriggerRecord::decode).await
}

/// The stored status of one task, as last written by its owner.
///
/// # Errors
/// [`Error::InvalidTaskName`]; the registry's errors; [`Error::Corrupt`] for a bad record.
pub async fn task_status(registry: &dyn Registry, name: &str) -> Result<Option<TaskStatus>> {
    validate_task_name(name)?;
    match registry.get_record(RecordKind::Status, name).await? {
        Some(bytes) => Ok(Some(TaskStatus::decode(
            &record_key(RecordKind::Status, name),
            &bytes,
        )?)),
        None => Ok(None),
    }
}

/// The stored status of every task that has one.
///
/// # Errors
/// The registry's errors.
pub async fn list_status(registry: &dyn Registry) -> Result<Listing<TaskStatus>> {
    decode_all(registry, RecordKind::Status, TaskStatus::decode).await
}

/// Removes the pause, status and trigger records of `name` (part of cleaning a task up).
///
/// # Errors
/// The registry's errors. [`Error::Unsupported`] is not an error here: such a registry has no
/// records to remove.
pub async fn forget_task_records(registry: &dyn Registry, name: &str) -> Result<()> {
    if !registry.capabilities().records {
        return Ok(());
    }
    validate_task_name(name)?;
    registry.delete_record(RecordKind::Pause, name).await?;
    registry.delete_record(RecordKind::Status, name).await?;
    if !registry.capabilities().exactly_once {
        // A registry without native lives keeps them as records: the cleanup ends the life.
        registry.delete_record(RecordKind::Life, name).await?;
    }
    let triggers = pending_triggers(registry).await?;
    for t in triggers.items.into_iter().filter(|t| t.task == name) {
        registry
            .delete_record(RecordKind::Trigger, &t.key())
            .await?;
    }
    Ok(())
}

fn record_key(kind: RecordKind, key: &str) -> String {
    format!("{kind}/{key}")
}

async fn decode_all<T>(
    registry: &dyn Registry,
    kind: RecordKind,
    decode: fn(&str, &[u8]) -> Result<T>,
) -> Result<Listing<T>> {
    let mut listing = Listing {
        items: Vec::new(),
        corrupt: Vec::new(),
    };
    for (key, bytes) in registry.list_records(kind).await? {
        let full = record_key(kind, &key);
        match decode(&full, &bytes) {
            Ok(item) => listing.items.push(item),
            Err(e) => listing.corrupt.push(CorruptEntry {
                key: full,
                reason: e.to_string(),
            }),
        }
    }
    Ok(listing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryRegistry;

    fn t0() -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_700_000_000, 0).expect("valid")
    }

    #[tokio::test]
    async fn pause_resume_round_trip() {
        let reg = MemoryRegistry::new();
        assert!(!is_paused(&reg, "a").await.expect("reads"));
        pause_task(&reg, "a", t0()).await.expect("pauses");
        assert!(is_paused(&reg, "a").await.expect("reads"));
        resume_task(&reg, "a", t0()).await.expect("resumes");
        assert!(!is_paused(&reg, "a").await.expect("reads"));
        let records = pause_records(&reg).await.expect("lists");
        assert_eq!(
            records.items.len(),
            1,
            "resume keeps the record with paused=false"
        );
        assert!(matches!(
            pause_task(&reg, "a/b", t0()).await,
            Err(Error::InvalidTaskName { .. })
        ));
    }

    #[tokio::test]
    async fn triggers_are_consumed_once_and_refused_for_tombstones() {
        let reg = MemoryRegistry::new();
        let t = trigger_task(&reg, "job", t0()).await.expect("triggers");
        assert_ne!(t.id, 0);
        let pending = pending_triggers(&reg).await.expect("lists");
        assert_eq!(pending.items, vec![t.clone()]);
        assert!(reg
            .delete_record(RecordKind::Trigger, &t.key())
            .await
            .expect("deletes"));
        assert!(!reg
            .delete_record(RecordKind::Trigger, &t.key())
            .await
            .expect("second delete answers false"));
        reg.mark_deleted("gone", t0()).await.expect("tombstones");
        assert!(matches!(
            trigger_task(&reg, "gone", t0()).await,
            Err(Error::Tombstoned { .. })
        ));
    }

    #[tokio::test]
    async fn corrupt_records_are_listed_apart_and_forget_removes_everything() {
        let reg = MemoryRegistry::new();
        reg.put_records(RecordKind::Status, &[("bad".into(), b"{".to_vec())])
            .await
            .expect("writes");
        let status = TaskStatus::new("good", t0());
        reg.put_records(RecordKind::Status, &[("good".into(), status.encode())])
            .await
            .expect("writes");
        let listing = list_status(&reg).await.expect("lists");
        assert_eq!(listing.items, vec![status]);
        assert_eq!(listing.corrupt.len(), 1);
        assert!(matches!(
            task_status(&reg, "bad").await,
            Err(Error::Corrupt { .. })
        ));
        pause_task(&reg, "good", t0()).await.expect("pauses");
        trigger_task(&reg, "good", t0()).await.expect("triggers");
        trigger_task(&reg, "other", t0()).await.expect("triggers");
        forget_task_records(&reg, "good").await.expect("forgets");
        assert_eq!(task_status(&reg, "good").await.expect("reads"), None);
        assert!(!is_paused(&reg, "good").await.expect("reads"));
        let left = pending_triggers(&reg).await.expect("lists");
        assert_eq!(left.items.len(), 1);
        assert_eq!(left.items[0].task, "other");
    }
}
