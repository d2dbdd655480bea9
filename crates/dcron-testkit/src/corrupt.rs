//! Corrupt value cases: a stored value that does not decode is reported, never a panic, and
//! never hides or blocks the good ones. They need the factory's `write_raw_task` hook.

use std::time::Duration;

use dcron_core::{Error, FireKey, PutMode, TaskMeta};

use crate::harness::{instant, now_millis, CaseContext, CaseResult};
use crate::{ensure, ensure_eq, ensure_err};

/// Values that are not task records.
const GARBAGE: [&[u8]; 4] = [
    b"\xff\xfe\x00 not utf-8",
    b"{",
    b"[1,2,3]",
    b"{\"name\":42}",
];

/// `list_tasks` reports undecodable values in `corrupt` and still returns every good record.
pub async fn list_reports_corrupt_and_keeps_good(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let good: Vec<TaskMeta> = (0..5)
        .map(|i| crate::harness::task_meta(format!("good-{i}"), "@hourly"))
        .collect();
    for m in &good {
        reg.put_task(m, PutMode::CreateOnly).await?;
    }
    for (i, bytes) in GARBAGE.iter().enumerate() {
        cx.write_raw_task(&format!("bad-{i}"), bytes).await?;
    }
    let listing = reg.list_tasks().await?;
    let mut names: Vec<String> = listing.items.iter().map(|m| m.name.clone()).collect();
    names.sort();
    let expected: Vec<String> = good.iter().map(|m| m.name.clone()).collect();
    ensure_eq!(names, expected, "good records listed");
    ensure_eq!(
        listing.corrupt.len(),
        GARBAGE.len(),
        "corrupt entries reported: {:?}",
        listing.corrupt
    );
    for i in 0..GARBAGE.len() {
        let name = format!("bad-{i}");
        ensure!(
            listing.corrupt.iter().any(|c| c.key.contains(&name)),
            "corrupt entry for {name} (its key must contain the name): {:?}",
            listing.corrupt
        );
    }
    Ok(())
}

/// `get_task` of an undecodable value answers `Error::Corrupt`; other names are unaffected.
pub async fn get_corrupt_is_corrupt_error(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let ok = crate::harness::task_meta("neighbour", "@hourly");
    reg.put_task(&ok, PutMode::CreateOnly).await?;
    for (i, bytes) in GARBAGE.iter().enumerate() {
        let name = format!("bad-{i}");
        cx.write_raw_task(&name, bytes).await?;
        ensure_err!(
            reg.get_task(&name).await,
            Error::Corrupt { .. },
            "get of corrupt {name}"
        );
    }
    ensure_eq!(reg.get_task("neighbour").await?, Some(ok), "neighbour");
    Ok(())
}

/// A corrupt record blocks nothing else: tombstones, claims and cleanup of its name work; create-only never overwrites it.
pub async fn corrupt_record_blocks_nothing_else(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    cx.write_raw_task("broken", b"{").await?;
    match reg
        .put_task(&crate::harness::task_meta("broken", "@hourly"), PutMode::CreateOnly)
        .await
    {
        Err(Error::AlreadyExists { .. } | Error::Corrupt { .. }) => {}
        other => {
            return Err(crate::CaseError::Failed(format!(
                "create-only over a corrupt record must be refused (AlreadyExists or Corrupt), got {other:?}"
            )))
        }
    }
    ensure_err!(
        reg.get_task("broken").await,
        Error::Corrupt { .. },
        "the corrupt value is untouched by a refused create-only"
    );
    let out = crate::harness::claim_fires(
        &*reg,
        "n",
        &[FireKey::new("broken", instant(0))],
        Duration::from_secs(600),
    )
    .await?;
    ensure!(out[0].is_won(), "a fire of the name is claimable: {out:?}");
    reg.mark_deleted("broken", now_millis()).await?;
    ensure!(
        reg.get_tombstone("broken").await?.is_some(),
        "tombstone written"
    );
    reg.cleanup_task("broken").await?;
    ensure_eq!(reg.get_task("broken").await?, None, "cleanup removes it");
    let listing = reg.list_tasks().await?;
    ensure!(
        listing.items.is_empty() && listing.corrupt.is_empty(),
        "nothing left: {listing:?}"
    );
    Ok(())
}

/// A `Force` put over a corrupt value repairs it.
pub async fn force_put_repairs_corrupt(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    cx.write_raw_task("mended", b"\x00\x01garbage").await?;
    let m = crate::harness::task_meta("mended", "@hourly").with_payload("fixed");
    reg.put_task(&m, PutMode::Force).await?;
    ensure_eq!(
        reg.get_task("mended").await?,
        Some(m.clone()),
        "after Force"
    );
    let listing = reg.list_tasks().await?;
    ensure!(listing.corrupt.is_empty(), "still corrupt: {listing:?}");
    ensure_eq!(listing.items, vec![m], "listed");
    Ok(())
}
