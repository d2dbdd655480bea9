//! Record cases: the small per-task documents beside tasks (pause markers, trigger-now
//! requests, task status) — put in batches, get, list, delete with exactly one winner.

use std::collections::BTreeMap;
use std::sync::Arc;

use dcron_core::{Error, RecordKind, Registry};

use crate::harness::{CaseContext, CaseError, CaseResult};
use crate::{ensure, ensure_eq};

/// Opens a client, checking the records capability: a registry without it must answer
/// `Unsupported` to every record call, and the case is then skipped.
async fn records_client(cx: &CaseContext) -> Result<Arc<dyn Registry>, CaseError> {
    let reg = cx.open().await?;
    if reg.capabilities().records {
        return Ok(reg);
    }
    let put = reg
        .put_records(RecordKind::Pause, &[("x".into(), b"{}".to_vec())])
        .await;
    let list = reg.list_records(RecordKind::Pause).await;
    ensure!(
        matches!(put, Err(Error::Unsupported { .. }))
            && matches!(list, Err(Error::Unsupported { .. })),
        "capabilities.records is false, so record calls must be `Unsupported`: {put:?} {list:?}"
    );
    Err(CaseError::Skipped(
        "the registry declares no record support".into(),
    ))
}

fn sorted(records: Vec<(String, Vec<u8>)>) -> BTreeMap<String, Vec<u8>> {
    records.into_iter().collect()
}

/// A batch is written whole; each record reads back exactly; a second put replaces one.
pub async fn records_round_trip(cx: &CaseContext) -> CaseResult {
    let reg = records_client(cx).await?;
    let other = cx.open().await?;
    let batch: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| (format!("task-{i}"), format!("{{\"v\":{i}}}").into_bytes()))
        .collect();
    reg.put_records(RecordKind::Status, &batch).await?;
    for (key, value) in &batch {
        ensure_eq!(
            other.get_record(RecordKind::Status, key).await?,
            Some(value.clone()),
            "record {key}"
        );
    }
    ensure_eq!(
        other.get_record(RecordKind::Status, "absent").await?,
        None,
        "absent record"
    );
    ensure_eq!(
        sorted(other.list_records(RecordKind::Status).await?),
        sorted(batch.clone()),
        "listing"
    );
    reg.put_records(RecordKind::Status, &[("task-1".into(), b"new".to_vec())])
        .await?;
    ensure_eq!(
        other.get_record(RecordKind::Status, "task-1").await?,
        Some(b"new".to_vec()),
        "replaced record"
    );
    ensure_eq!(
        other.list_records(RecordKind::Status).await?.len(),
        3,
        "a replacement adds nothing"
    );
    reg.put_records(RecordKind::Status, &[]).await?;
    Ok(())
}

/// Kinds are separate key spaces: the same key in two kinds is two records.
pub async fn kinds_are_separate(cx: &CaseContext) -> CaseResult {
    let reg = records_client(cx).await?;
    reg.put_records(RecordKind::Pause, &[("same".into(), b"pause".to_vec())])
        .await?;
    reg.put_records(RecordKind::Status, &[("same".into(), b"status".to_vec())])
        .await?;
    ensure_eq!(
        reg.list_records(RecordKind::Trigger).await?,
        Vec::<(String, Vec<u8>)>::new(),
        "no triggers"
    );
    ensure!(
        reg.delete_record(RecordKind::Pause, "same").await?,
        "delete of the pause record"
    );
    ensure_eq!(
        reg.get_record(RecordKind::Status, "same").await?,
        Some(b"status".to_vec()),
        "the status record is untouched"
    );
    ensure_eq!(
        reg.get_record(RecordKind::Pause, "same").await?,
        None,
        "pause record gone"
    );
    Ok(())
}

/// Keys with spaces, `:`, `@`, `%`, `.`, unicode and 256 bytes round-trip and stay distinct;
/// bad keys are `InvalidArgument` and write nothing (not even the good keys of their batch).
pub async fn record_keys_every_character_class(cx: &CaseContext) -> CaseResult {
    let reg = records_client(cx).await?;
    let keys = [
        "plain".to_string(),
        "with space".into(),
        "a:b".into(),
        "a".into(),
        "a@1".into(),
        "a@12".into(),
        "100%".into(),
        ".".into(),
        "..".into(),
        "zürich-日本".into(),
        "*?#[]".into(),
        "k".repeat(256),
    ];
    let batch: Vec<(String, Vec<u8>)> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (k.clone(), vec![b'0' + (i % 10) as u8, b'!']))
        .collect();
    reg.put_records(RecordKind::Trigger, &batch).await?;
    ensure_eq!(
        sorted(reg.list_records(RecordKind::Trigger).await?),
        sorted(batch.clone()),
        "every key listed once with its value"
    );
    for (key, value) in &batch {
        ensure_eq!(
            reg.get_record(RecordKind::Trigger, key).await?,
            Some(value.clone()),
            "key {key:?}"
        );
    }
    for bad in [String::new(), "a/b".into(), "tab\t".into(), "k".repeat(257)] {
        let r = reg
            .put_records(
                RecordKind::Pause,
                &[("fine".into(), b"1".to_vec()), (bad.clone(), b"1".to_vec())],
            )
            .await;
        ensure!(
            matches!(r, Err(Error::InvalidArgument(_))),
            "bad key {bad:?} must be InvalidArgument: {r:?}"
        );
        let g = reg.get_record(RecordKind::Pause, &bad).await;
        ensure!(
            matches!(g, Err(Error::InvalidArgument(_))),
            "get of bad key {bad:?}: {g:?}"
        );
    }
    ensure_eq!(
        reg.list_records(RecordKind::Pause).await?,
        Vec::<(String, Vec<u8>)>::new(),
        "a refused batch writes nothing"
    );
    Ok(())
}

/// 16 clients delete the same record at once, for 10 records: exactly one `true` each.
pub async fn concurrent_delete_one_winner(cx: &CaseContext) -> CaseResult {
    let reg = records_client(cx).await?;
    let mut clients = Vec::new();
    for _ in 0..16 {
        clients.push(cx.open().await?);
    }
    for round in 0..10 {
        let key = format!("job@{round}");
        reg.put_records(RecordKind::Trigger, &[(key.clone(), b"t".to_vec())])
            .await?;
        let results = futures::future::join_all(
            clients
                .iter()
                .map(|c| c.delete_record(RecordKind::Trigger, &key)),
        )
        .await;
        let mut wins = 0;
        for r in results {
            if r? {
                wins += 1;
            }
        }
        ensure_eq!(wins, 1, "deleters of {key} answered true");
        ensure_eq!(
            reg.get_record(RecordKind::Trigger, &key).await?,
            None,
            "{key} is gone"
        );
    }
    ensure!(
        !reg.delete_record(RecordKind::Trigger, "never").await?,
        "deleting a missing record answers false"
    );
    Ok(())
}

/// A record of exactly `max_value_bytes` is stored; one byte more is `InvalidArgument`.
pub async fn record_value_size_is_exact(cx: &CaseContext) -> CaseResult {
    let reg = records_client(cx).await?;
    let max = reg.capabilities().max_value_bytes;
    let fits = vec![b'x'; max];
    reg.put_records(RecordKind::Status, &[("big".into(), fits.clone())])
        .await?;
    ensure!(
        reg.get_record(RecordKind::Status, "big").await? == Some(fits),
        "a record of max_value_bytes round-trips"
    );
    let r = reg
        .put_records(
            RecordKind::Status,
            &[("bigger".into(), vec![b'x'; max + 1])],
        )
        .await;
    ensure!(
        matches!(r, Err(Error::InvalidArgument(_))),
        "one byte more is InvalidArgument: {:?}",
        r.map(|_| ())
    );
    ensure_eq!(
        reg.get_record(RecordKind::Status, "bigger").await?,
        None,
        "nothing written"
    );
    Ok(())
}

/// 500 records written in one batch are all listed, each once.
pub async fn list_five_hundred_records(cx: &CaseContext) -> CaseResult {
    let reg = records_client(cx).await?;
    let batch: Vec<(String, Vec<u8>)> = (0..500)
        .map(|i| (format!("t{i:04}"), format!("{i}").into_bytes()))
        .collect();
    reg.put_records(RecordKind::Status, &batch).await?;
    let listed = reg.list_records(RecordKind::Status).await?;
    ensure_eq!(listed.len(), 500, "listed records");
    ensure_eq!(sorted(listed), sorted(batch), "listed exactly the batch");
    Ok(())
}

/// `cleanup_all` removes every record of the namespace and none of another namespace.
pub async fn cleanup_all_removes_records(cx: &CaseContext) -> CaseResult {
    let reg = records_client(cx).await?;
    let other = cx.open_other().await?;
    for kind in RecordKind::ALL {
        reg.put_records(kind, &[("r".into(), b"1".to_vec())])
            .await?;
        other
            .put_records(kind, &[("r".into(), b"2".to_vec())])
            .await?;
    }
    reg.cleanup_all().await?;
    for kind in RecordKind::ALL {
        ensure_eq!(
            reg.list_records(kind).await?,
            Vec::<(String, Vec<u8>)>::new(),
            "{kind} records after cleanup_all"
        );
        ensure_eq!(
            other.get_record(kind, "r").await?,
            Some(b"2".to_vec()),
            "the other namespace's {kind} record"
        );
    }
    Ok(())
}

/// Records work, or every record call answers `Unsupported` as `capabilities.records` declares.
pub async fn record_capability_is_honest(cx: &CaseContext) -> CaseResult {
    // An unreachable server is a skip; a declared-unsupported capability is checked below.
    let reg = cx.open().await?;
    if reg.capabilities().records {
        return Ok(());
    }
    match records_client(cx).await {
        // Declared unsupported, and the calls answer `Unsupported`: honest.
        Ok(_) | Err(CaseError::Skipped(_)) => Ok(()),
        Err(e) => Err(e),
    }
}
