//! Tombstone cases: mark deleted, reuse, cleanup of one name and of the whole namespace.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::Duration as ChronoDuration;
use dcron_core::{ClaimOutcome, Error, FireKey, PutMode, Tombstone};

use crate::harness::{instant, node_listed, now_millis, CaseContext, CaseResult};
use crate::{ensure, ensure_eq, ensure_err};

const LONG: Duration = Duration::from_secs(600);

/// `mark_deleted` works without a record (static tasks): the tombstone is readable and listed with its time.
pub async fn mark_deleted_without_a_record(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let other = cx.open().await?;
    let at = now_millis();
    reg.mark_deleted("static-task", at).await?;
    let expected = Tombstone {
        name: "static-task".into(),
        deleted_at: at,
    };
    ensure_eq!(
        other.get_tombstone("static-task").await?,
        Some(expected.clone()),
        "tombstone"
    );
    ensure_eq!(
        other.list_tombstones().await?.items,
        vec![expected],
        "listed tombstones"
    );
    ensure_eq!(
        other.get_task("static-task").await?,
        None,
        "no record appears"
    );
    ensure_eq!(
        other.get_tombstone("other").await?,
        None,
        "absent tombstone"
    );
    Ok(())
}

/// `mark_deleted` is idempotent: the first time is kept and the record is kept.
pub async fn mark_deleted_is_idempotent(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let m = crate::harness::task_meta("twice", "@hourly").with_payload("kept");
    reg.put_task(&m, PutMode::CreateOnly).await?;
    let first = now_millis() - ChronoDuration::seconds(30);
    reg.mark_deleted("twice", first).await?;
    reg.mark_deleted("twice", first + ChronoDuration::seconds(10))
        .await?;
    ensure_eq!(
        reg.get_tombstone("twice").await?.map(|t| t.deleted_at),
        Some(first),
        "the first deletion time is kept"
    );
    ensure_eq!(reg.list_tombstones().await?.items.len(), 1, "one tombstone");
    ensure_eq!(reg.get_task("twice").await?, Some(m), "the record is kept");
    Ok(())
}

/// `clear_tombstone` (reuse) makes the record live again; without a tombstone it answers `NotFound`.
pub async fn reuse_clears_the_tombstone(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    ensure_err!(
        reg.clear_tombstone("never-deleted").await,
        Error::NotFound { .. },
        "clear_tombstone without a tombstone"
    );
    let m = crate::harness::task_meta("reborn", "@daily");
    reg.put_task(&m, PutMode::CreateOnly).await?;
    reg.mark_deleted("reborn", now_millis()).await?;
    reg.clear_tombstone("reborn").await?;
    ensure_eq!(
        reg.get_tombstone("reborn").await?,
        None,
        "tombstone cleared"
    );
    ensure_eq!(reg.get_task("reborn").await?, Some(m), "record kept");
    reg.put_task(
        &crate::harness::task_meta("reborn", "@daily").with_payload("v2"),
        PutMode::Update,
    )
    .await?;
    ensure_err!(
        reg.clear_tombstone("reborn").await,
        Error::NotFound { .. },
        "second clear_tombstone"
    );
    // A name tombstoned without a record can be created again after reuse.
    reg.mark_deleted("fresh", now_millis()).await?;
    reg.clear_tombstone("fresh").await?;
    reg.put_task(
        &crate::harness::task_meta("fresh", "@daily"),
        PutMode::CreateOnly,
    )
    .await?;
    Ok(())
}

/// `cleanup_task` removes the record, the tombstone and the life of the name and nothing else;
/// its claims stay until their retention ends.
pub async fn cleanup_removes_record_tombstone_and_life(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    for name in ["doomed", "doomed-neighbour"] {
        reg.put_task(
            &crate::harness::task_meta(name, "@hourly"),
            PutMode::CreateOnly,
        )
        .await?;
        crate::harness::claim_fires(&*reg, "n", &[FireKey::new(name, instant(0))], LONG).await?;
        reg.mark_deleted(name, now_millis()).await?;
    }
    reg.cleanup_task("doomed").await?;
    ensure_eq!(reg.get_task("doomed").await?, None, "record removed");
    ensure_eq!(
        reg.get_tombstone("doomed").await?,
        None,
        "tombstone removed"
    );
    ensure_eq!(
        reg.list_claims("doomed").await?.items.len(),
        1,
        "the claim stays until its retention ends"
    );
    ensure!(
        reg.get_task("doomed-neighbour").await?.is_some()
            && reg.get_tombstone("doomed-neighbour").await?.is_some()
            && reg.list_claims("doomed-neighbour").await?.items.len() == 1,
        "the neighbour keeps its record, tombstone and claim"
    );
    // The name is free again.
    reg.put_task(
        &crate::harness::task_meta("doomed", "@hourly"),
        PutMode::CreateOnly,
    )
    .await?;
    let out = crate::harness::claim_fires(
        &*reg,
        "other",
        &[
            FireKey::new("doomed", instant(0)),
            FireKey::new("doomed", instant(1000)),
        ],
        LONG,
    )
    .await?;
    ensure!(
        matches!(out[..], [ClaimOutcome::Lost { .. }, ClaimOutcome::Won { .. }]),
        "in the new life, the fire claimed before the cleanup is still held and a new one is won: {out:?}"
    );
    Ok(())
}

/// `cleanup_task` is idempotent: twice, or on a name that never existed, is `Ok`.
pub async fn cleanup_is_idempotent(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    reg.cleanup_task("never-existed").await?;
    reg.put_task(
        &crate::harness::task_meta("once", "@hourly"),
        PutMode::CreateOnly,
    )
    .await?;
    reg.cleanup_task("once").await?;
    reg.cleanup_task("once").await?;
    ensure_eq!(reg.get_task("once").await?, None, "record removed");
    Ok(())
}

/// Many tombstones are all listed, each once, with their times.
pub async fn list_tombstones_lists_all(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let base = now_millis();
    let mut expected = BTreeSet::new();
    for i in 0..150i64 {
        let name = format!("tomb-{i:03}");
        let at = base - ChronoDuration::seconds(i);
        reg.mark_deleted(&name, at).await?;
        expected.insert((name, at));
    }
    let listing = reg.list_tombstones().await?;
    ensure!(listing.corrupt.is_empty(), "corrupt: {:?}", listing.corrupt);
    let got: BTreeSet<_> = listing
        .items
        .into_iter()
        .map(|t| (t.name, t.deleted_at))
        .collect();
    ensure_eq!(got.len(), expected.len(), "number of tombstones");
    ensure!(got == expected, "listed tombstones differ");
    Ok(())
}

/// `cleanup_all` removes every record and tombstone of the namespace and keeps node
/// registrations and claims (until their retention ends).
pub async fn cleanup_all_empties_the_namespace(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let node = cx.node("survivor");
    let lease = reg.register(&node, cx.min_ttl() * 10).await?;
    for i in 0..30 {
        let name = format!("all-{i}");
        reg.put_task(
            &crate::harness::task_meta(&name, "@hourly"),
            PutMode::CreateOnly,
        )
        .await?;
        crate::harness::claim_fires(&*reg, "n", &[FireKey::new(&name, instant(0))], LONG).await?;
        if i % 3 == 0 {
            reg.mark_deleted(&name, now_millis()).await?;
        }
    }
    reg.mark_deleted("static-only", now_millis()).await?;
    crate::harness::claim_fires(&*reg, "n", &[FireKey::new("claims-only", instant(0))], LONG)
        .await?;
    reg.cleanup_all().await?;
    let other = cx.open().await?;
    ensure!(other.list_tasks().await?.items.is_empty(), "records remain");
    ensure!(
        other.list_tombstones().await?.items.is_empty(),
        "tombstones remain"
    );
    for name in ["all-0", "all-1", "claims-only"] {
        ensure_eq!(
            other.list_claims(name).await?.items.len(),
            1,
            "the claim of {name} stays until its retention ends"
        );
    }
    ensure!(
        node_listed(other.as_ref(), &node.id).await?,
        "cleanup_all must keep node registrations"
    );
    reg.keep_alive(&lease).await?;
    reg.cleanup_all().await?;
    reg.unregister(&lease).await?;
    Ok(())
}

/// Eight clients mark one name deleted at once with different times: one time wins and stays.
pub async fn concurrent_mark_deleted_keeps_one_time(cx: &CaseContext) -> CaseResult {
    let base = now_millis();
    let mut calls = Vec::new();
    let mut times = BTreeSet::new();
    for i in 0..8i64 {
        let reg = cx.open().await?;
        let at = base - ChronoDuration::seconds(i);
        times.insert(at);
        calls.push(tokio::spawn(async move {
            reg.mark_deleted("contested", at).await
        }));
    }
    for call in futures::future::join_all(calls).await {
        call.map_err(|e| crate::CaseError::Failed(format!("task failed: {e}")))??;
    }
    let reg = cx.open().await?;
    let first = reg.get_tombstone("contested").await?.map(|t| t.deleted_at);
    ensure!(
        first.is_some_and(|t| times.contains(&t)),
        "tombstone time {first:?} is none of the written ones"
    );
    reg.mark_deleted("contested", base + ChronoDuration::seconds(60))
        .await?;
    ensure_eq!(
        reg.get_tombstone("contested").await?.map(|t| t.deleted_at),
        first,
        "the time is stable afterwards"
    );
    ensure_eq!(reg.list_tombstones().await?.items.len(), 1, "one tombstone");
    Ok(())
}
