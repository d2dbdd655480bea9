//! Task record cases: put modes, get, list (completely), names, sizes and field round trips.

use std::collections::BTreeSet;
use std::sync::Arc;

use dcron_core::{Error, MisfirePolicy, PutMode, Registry, TaskMeta};
use futures::future::join_all;

use crate::harness::{now_millis, CaseContext, CaseError, CaseResult};
use crate::{ensure, ensure_eq, ensure_err};

fn meta(name: &str) -> TaskMeta {
    crate::harness::task_meta(name, "*/5 * * * * *")
}

/// A record with every optional field set.
pub fn full_record(name: &str) -> TaskMeta {
    // `TaskMeta` is `#[non_exhaustive]`: built from `new`, then every optional field set.
    let mut m = TaskMeta::new(name, "0 30 9 * * Mon-Fri")
        .one_shot()
        .with_payload("{\"json\": [1, 2, \"ü\"], \"quote\": \"\\\"\"}\n\ttabs and newlines")
        .with_time_zone("Europe/Berlin")
        .with_misfire(MisfirePolicy::FireAll { max: 7 })
        .with_misfire_window(std::time::Duration::from_millis(90_000))
        .with_retry(
            dcron_core::RetryPolicy::exponential(4, std::time::Duration::from_millis(250))
                .with_jitter(),
        )
        .with_timeout(std::time::Duration::from_millis(30_000))
        .with_overlap(dcron_core::OverlapPolicy::Skip)
        .with_tag("billing")
        .with_tag("team:ops")
        .with_max_concurrent(3);
    m.executed_and_mark_deleted = true;
    m.executed_and_cleanup = true;
    m.created_at = Some(now_millis());
    m.run_if_past = true;
    m
}

/// `get_task` of an absent name answers `None`; `list_tasks` of an empty namespace is empty.
pub async fn get_absent_is_none(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    ensure_eq!(reg.get_task("absent").await?, None, "get of an absent task");
    let listing = reg.list_tasks().await?;
    ensure!(
        listing.items.is_empty() && listing.corrupt.is_empty(),
        "fresh namespace must list no tasks: {listing:?}"
    );
    Ok(())
}

/// Every field of a record (payload, time zone, misfire, one-shot flags, times) round-trips exactly.
pub async fn record_fields_round_trip(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let other = cx.open().await?;
    let full = full_record("full");
    let bare = meta("bare");
    reg.put_task(&full, PutMode::CreateOnly).await?;
    reg.put_task(&bare, PutMode::CreateOnly).await?;
    ensure_eq!(
        other.get_task("full").await?,
        Some(full.clone()),
        "full record"
    );
    ensure_eq!(
        other.get_task("bare").await?,
        Some(bare.clone()),
        "bare record"
    );
    let mut listed = other.list_tasks().await?.items;
    listed.sort_by(|a, b| a.name.cmp(&b.name));
    ensure_eq!(listed, vec![bare, full], "listed records");
    Ok(())
}

/// Create-only refuses an existing name with `AlreadyExists` and leaves the record unchanged.
pub async fn create_only_refuses_existing(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let original = meta("taken").with_payload("first");
    reg.put_task(&original, PutMode::CreateOnly).await?;
    ensure_err!(
        reg.put_task(&meta("taken").with_payload("second"), PutMode::CreateOnly)
            .await,
        Error::AlreadyExists { .. },
        "second create-only"
    );
    ensure_eq!(
        reg.get_task("taken").await?,
        Some(original),
        "record after refusal"
    );
    Ok(())
}

/// Create-only refuses a tombstoned name: `Tombstoned` without a record, `AlreadyExists` with one.
pub async fn create_only_refuses_tombstoned(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    reg.mark_deleted("buried", now_millis()).await?;
    ensure_err!(
        reg.put_task(&meta("buried"), PutMode::CreateOnly).await,
        Error::Tombstoned { .. },
        "create-only on a tombstoned name"
    );
    ensure_eq!(
        reg.get_task("buried").await?,
        None,
        "nothing written on refusal"
    );
    reg.put_task(&meta("both"), PutMode::CreateOnly).await?;
    reg.mark_deleted("both", now_millis()).await?;
    ensure_err!(
        reg.put_task(&meta("both"), PutMode::CreateOnly).await,
        Error::AlreadyExists { .. },
        "create-only on an existing, tombstoned name (AlreadyExists is checked first)"
    );
    Ok(())
}

/// 16 clients create the same name at once: exactly one succeeds, the others get `AlreadyExists`.
pub async fn concurrent_create_only_one_wins(cx: &CaseContext) -> CaseResult {
    let mut calls = Vec::new();
    for i in 0..16 {
        let reg = cx.open().await?;
        calls.push(tokio::spawn(async move {
            reg.put_task(
                &meta("contended").with_payload(format!("writer-{i}")),
                PutMode::CreateOnly,
            )
            .await
            .map(|()| i)
        }));
    }
    let mut winners = Vec::new();
    for call in join_all(calls).await {
        match call.map_err(|e| CaseError::Failed(format!("task failed: {e}")))? {
            Ok(i) => winners.push(i),
            Err(Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    ensure_eq!(winners.len(), 1, "exactly one create-only must succeed");
    let stored = cx.open().await?.get_task("contended").await?;
    ensure_eq!(
        stored.map(|m| m.payload),
        Some(format!("writer-{}", winners[0])),
        "the stored record is the winner's"
    );
    Ok(())
}

/// `Update` answers `NotFound` without a record, `Tombstoned` when tombstoned, and replaces a live one.
pub async fn update_requires_a_live_record(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    ensure_err!(
        reg.put_task(&meta("nobody"), PutMode::Update).await,
        Error::NotFound { .. },
        "update of an absent task"
    );
    ensure_eq!(
        reg.get_task("nobody").await?,
        None,
        "update must not create"
    );
    reg.put_task(&meta("live").with_payload("v1"), PutMode::CreateOnly)
        .await?;
    let v2 = meta("live").with_payload("v2").with_time_zone("Asia/Tokyo");
    reg.put_task(&v2, PutMode::Update).await?;
    ensure_eq!(
        reg.get_task("live").await?,
        Some(v2.clone()),
        "after update"
    );
    reg.mark_deleted("live", now_millis()).await?;
    ensure_err!(
        reg.put_task(&meta("live").with_payload("v3"), PutMode::Update)
            .await,
        Error::Tombstoned { .. },
        "update of a tombstoned task"
    );
    ensure_eq!(
        reg.get_task("live").await?,
        Some(v2),
        "refused update leaves the record"
    );
    reg.mark_deleted("static-only", now_millis()).await?;
    ensure_err!(
        reg.put_task(&meta("static-only"), PutMode::Update).await,
        Error::Tombstoned { .. },
        "update of a tombstoned name without a record"
    );
    Ok(())
}

/// `Force` writes whatever is there and clears the tombstone (the claims case checks claims).
pub async fn force_overwrites_and_clears_tombstone(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let fresh = meta("forced").with_payload("fresh");
    reg.put_task(&fresh, PutMode::Force).await?;
    ensure_eq!(
        reg.get_task("forced").await?,
        Some(fresh),
        "force on an absent name creates"
    );
    reg.mark_deleted("forced", now_millis()).await?;
    let again = meta("forced").with_payload("again");
    reg.put_task(&again, PutMode::Force).await?;
    ensure_eq!(reg.get_task("forced").await?, Some(again), "force replaces");
    ensure_eq!(
        reg.get_tombstone("forced").await?,
        None,
        "force clears the tombstone"
    );
    ensure!(
        reg.list_tombstones().await?.items.is_empty(),
        "no tombstone listed after force"
    );
    reg.put_task(&meta("forced").with_payload("update"), PutMode::Update)
        .await?;
    Ok(())
}

/// A tombstoned task's record is still returned by `get_task` and `list_tasks`.
pub async fn tombstoned_record_still_readable(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let m = meta("marked").with_payload("kept");
    reg.put_task(&m, PutMode::CreateOnly).await?;
    reg.mark_deleted("marked", now_millis()).await?;
    ensure_eq!(reg.get_task("marked").await?, Some(m.clone()), "get");
    ensure_eq!(reg.list_tasks().await?.items, vec![m], "list");
    Ok(())
}

/// 2,000 tasks (written concurrently in chunks) are all listed, each exactly once.
pub async fn list_two_thousand_tasks(cx: &CaseContext) -> CaseResult {
    const N: usize = 2000;
    const WRITERS: usize = 8;
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let reg = cx.open().await?;
        writers.push(tokio::spawn(async move {
            for i in (w..N).step_by(WRITERS) {
                let m = meta(&format!("bulk-{i:05}")).with_payload(i.to_string());
                reg.put_task(&m, PutMode::CreateOnly).await?;
            }
            Ok::<_, Error>(())
        }));
    }
    for w in join_all(writers).await {
        w.map_err(|e| CaseError::Failed(format!("writer failed: {e}")))??;
    }
    let listing = cx.open().await?.list_tasks().await?;
    ensure!(listing.corrupt.is_empty(), "corrupt: {:?}", listing.corrupt);
    ensure_eq!(listing.items.len(), N, "number of listed tasks");
    let names: BTreeSet<&str> = listing.items.iter().map(|m| m.name.as_str()).collect();
    ensure_eq!(names.len(), N, "distinct listed names");
    for m in &listing.items {
        let i: usize = m.name["bulk-".len()..]
            .parse()
            .map_err(|_| CaseError::Failed(format!("unexpected name {:?}", m.name)))?;
        ensure_eq!(m.payload, i.to_string(), "payload of {}", m.name);
    }
    Ok(())
}

/// The names used by [`names_with_every_character_class`]: every allowed character class.
pub fn tricky_names() -> Vec<String> {
    let mut names: Vec<String> = [
        "plain",
        "with space",
        " leading and trailing ",
        "colon:separated:name",
        "star*",
        "*",
        "question?",
        "hash#tag",
        "at@host",
        "percent%20encoded",
        "%",
        ".",
        "..",
        "...",
        "dots.in.name",
        "back\\slash",
        "quote\"s and 'single'",
        "braces{}[]()<>",
        "plus+equals=ampersand&semicolon;",
        "tilde~caret^dollar$bang!pipe|comma,",
        "ünïcödé-名前-имя-🚀",
        "zero-width\u{200b}joiner",
        "PLAIN",
        "plain ",
        "_",
        "-",
        "0",
        "tasks",
        "claims",
        "nodes",
        "tombstones",
    ]
    .iter()
    .map(|s| (*s).to_string())
    .collect();
    names.push("x".repeat(200));
    names.push(format!("{}y", "x".repeat(199)));
    // 200 bytes of multi-byte characters: 50 four-byte characters.
    names.push("🚀".repeat(50));
    names
}

/// Names with every allowed character class (spaces, `:`, `*`, `?`, `#`, `@`, `%`, `.`, `..`,
/// unicode, 200 bytes) round-trip, stay distinct, and can be tombstoned, claimed and cleaned up.
pub async fn names_with_every_character_class(cx: &CaseContext) -> CaseResult {
    let reg: Arc<dyn Registry> = cx.open().await?;
    let names = tricky_names();
    for name in &names {
        if let Err(e) = dcron_core::validate_task_name(name) {
            return Err(CaseError::Failed(format!(
                "suite bug: {name:?} is not a valid name: {e}"
            )));
        }
        reg.put_task(&meta(name).with_payload(name.clone()), PutMode::CreateOnly)
            .await?;
    }
    for name in &names {
        let got = reg.get_task(name).await?;
        ensure_eq!(
            got.map(|m| (m.name, m.payload)),
            Some((name.clone(), name.clone())),
            "record of {name:?}"
        );
    }
    let listed: BTreeSet<String> = reg
        .list_tasks()
        .await?
        .items
        .into_iter()
        .map(|m| m.name)
        .collect();
    let expected: BTreeSet<String> = names.iter().cloned().collect();
    ensure_eq!(listed, expected, "listed names");
    // Operations keyed by name must address exactly that name.
    let star = "*";
    reg.mark_deleted(star, now_millis()).await?;
    let tombs: Vec<String> = reg
        .list_tombstones()
        .await?
        .items
        .into_iter()
        .map(|t| t.name)
        .collect();
    ensure_eq!(tombs, vec![star.to_string()], "only `*` is tombstoned");
    let fire = dcron_core::FireKey::new("star*", crate::harness::instant(0));
    crate::harness::claim_fires(
        &*reg,
        "n",
        std::slice::from_ref(&fire),
        std::time::Duration::from_secs(600),
    )
    .await?;
    reg.cleanup_task(star).await?;
    ensure_eq!(reg.get_task(star).await?, None, "`*` cleaned up");
    ensure_eq!(
        reg.list_tasks().await?.items.len(),
        names.len() - 1,
        "cleanup of `*` removes only `*`"
    );
    ensure_eq!(
        reg.list_claims("star*").await?.items.len(),
        1,
        "cleanup of `*` keeps the claims of `star*`"
    );
    reg.cleanup_task(".").await?;
    ensure!(
        reg.get_task("..").await?.is_some() && reg.get_task("...").await?.is_some(),
        "cleanup of `.` keeps `..` and `...`"
    );
    Ok(())
}

/// A 1 MiB payload round-trips, or is refused with `InvalidArgument` (per `max_value_bytes`) and nothing is written.
pub async fn one_mib_payload_round_trips_or_is_refused(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let max = reg.capabilities().max_value_bytes;
    let pattern = "0123456789abcdefghijklmnopqrstuvwxyz";
    let payload: String = pattern.chars().cycle().take(1024 * 1024).collect();
    let big = meta("big").with_payload(payload);
    let encoded = big.encode().len();
    let result = reg.put_task(&big, PutMode::CreateOnly).await;
    if encoded > max {
        ensure_err!(
            result,
            Error::InvalidArgument(_),
            "record of {encoded} bytes with max_value_bytes {max}"
        );
        ensure_eq!(
            reg.get_task("big").await?,
            None,
            "nothing written on refusal"
        );
        ensure!(
            reg.list_tasks().await?.items.is_empty(),
            "nothing listed after refusal"
        );
        ensure_err!(
            reg.put_task(&big, PutMode::Force).await,
            Error::InvalidArgument(_),
            "Force of an oversized record"
        );
    } else {
        result?;
        ensure!(
            reg.get_task("big").await?.as_ref() == Some(&big),
            "1 MiB record did not round-trip"
        );
    }
    Ok(())
}

/// A record of exactly `max_value_bytes` is stored; one byte more is refused with `InvalidArgument`.
pub async fn max_value_bytes_is_exact(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let max = reg.capabilities().max_value_bytes;
    if max > 8 * 1024 * 1024 {
        return Err(CaseError::Skipped(format!(
            "max_value_bytes is {max}; the suite only probes limits up to 8 MiB"
        )));
    }
    let empty = meta("edge").with_payload("p");
    let overhead = empty.encode().len() - 1;
    if overhead >= max {
        return Err(CaseError::Failed(format!(
            "max_value_bytes {max} is smaller than a minimal record ({overhead} bytes)"
        )));
    }
    let fits = meta("edge").with_payload("a".repeat(max - overhead));
    ensure_eq!(fits.encode().len(), max, "suite bug: record size");
    reg.put_task(&fits, PutMode::CreateOnly).await?;
    ensure!(
        reg.get_task("edge").await?.as_ref() == Some(&fits),
        "record of exactly max_value_bytes did not round-trip"
    );
    let over = meta("edge").with_payload("b".repeat(max - overhead + 1));
    ensure_err!(
        reg.put_task(&over, PutMode::Force).await,
        Error::InvalidArgument(_),
        "record one byte over max_value_bytes"
    );
    ensure!(
        reg.get_task("edge").await?.as_ref() == Some(&fits),
        "a refused write must leave the stored record"
    );
    Ok(())
}
