//! Claim cases: exactly one winner per fire, batches, retention, tombstones and fencing tokens.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use dcron_core::{ClaimOutcome, FireKey, PutMode, Registry, TaskMeta};
use futures::future::join_all;

use crate::harness::{instant, now_millis, wait_until, CaseContext, CaseError, CaseResult};
use crate::{ensure, ensure_eq};

/// The retention used by cases that do not test retention itself: long enough to outlive them.
const LONG: Duration = Duration::from_secs(600);

fn fires(task: &str, n: i64) -> Vec<FireKey> {
    (0..n)
        .map(|i| FireKey::new(task, instant(i * 1000)))
        .collect()
}

fn won_token(outcome: &ClaimOutcome) -> Option<u64> {
    match outcome {
        ClaimOutcome::Won { token } => Some(*token),
        _ => None,
    }
}

async fn claim_one(
    reg: &dyn Registry,
    fire: &FireKey,
    node: &str,
) -> Result<ClaimOutcome, CaseError> {
    let out = crate::harness::claim_fires(&*reg, node, std::slice::from_ref(fire), LONG).await?;
    ensure_eq!(out.len(), 1, "one fire claimed, one outcome expected");
    Ok(out[0].clone())
}

/// 16 clients race to claim each of 100 fires: exactly one `Won` per fire, 100 wins in total.
pub async fn sixteen_claimers_one_winner_per_fire(cx: &CaseContext) -> CaseResult {
    const CLAIMERS: usize = 16;
    const FIRES: i64 = 100;
    let mut clients = Vec::new();
    for _ in 0..CLAIMERS {
        clients.push(cx.open().await?);
    }
    let all = fires("race", FIRES);
    let mut workers = Vec::new();
    for (i, reg) in clients.into_iter().enumerate() {
        let all = all.clone();
        workers.push(tokio::spawn(async move {
            let node = format!("node-{i}");
            let mut wins = Vec::new();
            // Each claimer walks the fires from a different starting point, one claim per call,
            // so that every fire is contended by calls in flight at the same time.
            for k in 0..all.len() {
                let fire = &all[(k + i * 7) % all.len()];
                let out = crate::harness::claim_fires(&*reg, &node, std::slice::from_ref(fire), LONG).await?;
                if out.len() != 1 {
                    return Err(CaseError::Failed(format!(
                        "claim of one fire answered {} outcomes",
                        out.len()
                    )));
                }
                if let ClaimOutcome::Won { token } = out[0] {
                    wins.push((fire.clone(), node.clone(), token));
                } else if !matches!(out[0], ClaimOutcome::Lost { .. }) {
                    return Err(CaseError::Failed(format!(
                        "{fire}: expected Won or Lost, got {:?}",
                        out[0]
                    )));
                }
            }
            Ok::<_, CaseError>(wins)
        }));
    }
    let mut winners: BTreeMap<FireKey, Vec<String>> = BTreeMap::new();
    for w in join_all(workers).await {
        let wins = w.map_err(|e| CaseError::Failed(format!("claimer task failed: {e}")))??;
        for (fire, node, _) in wins {
            winners.entry(fire).or_default().push(node);
        }
    }
    let duplicated: Vec<_> = winners.iter().filter(|(_, w)| w.len() > 1).collect();
    ensure!(
        duplicated.is_empty(),
        "{} fires won more than once, e.g. {:?}",
        duplicated.len(),
        &duplicated[..duplicated.len().min(3)]
    );
    ensure_eq!(
        winners.len(),
        FIRES as usize,
        "every fire must be won exactly once"
    );
    let reg = cx.open().await?;
    for fire in all.iter().take(5) {
        let claims = reg.list_claims(&fire.task).await?;
        let stored: Vec<_> = claims.items.iter().filter(|c| &c.fire == fire).collect();
        ensure_eq!(stored.len(), 1, "{fire}: one retained claim");
        ensure_eq!(
            Some(&stored[0].node_id),
            winners.get(fire).and_then(|w| w.first()),
            "{fire}: the retained claim names the winner"
        );
    }
    Ok(())
}

/// 8 clients claim the same 50-fire batch (in different orders) at once: one winner per fire.
pub async fn concurrent_overlapping_batches(cx: &CaseContext) -> CaseResult {
    let all = fires("batch-race", 50);
    let mut calls = Vec::new();
    for i in 0..8usize {
        let reg = cx.open().await?;
        let mut batch = all.clone();
        batch.rotate_left(i * 6);
        if i % 2 == 1 {
            batch.reverse();
        }
        calls.push(tokio::spawn(async move {
            let out = crate::harness::claim_fires(&*reg, &format!("node-{i}"), &batch, LONG).await;
            (batch, out)
        }));
    }
    let mut wins: BTreeMap<FireKey, usize> = BTreeMap::new();
    for call in join_all(calls).await {
        let (batch, out) = call.map_err(|e| CaseError::Failed(format!("task failed: {e}")))?;
        let out = out?;
        ensure_eq!(out.len(), batch.len(), "one outcome per fire");
        for (fire, o) in batch.iter().zip(&out) {
            ensure!(
                matches!(o, ClaimOutcome::Won { .. } | ClaimOutcome::Lost { .. }),
                "{fire}: unexpected {o:?}"
            );
            if o.is_won() {
                *wins.entry(fire.clone()).or_default() += 1;
            }
        }
    }
    let wrong: Vec<_> = wins.iter().filter(|(_, n)| **n != 1).take(3).collect();
    ensure!(
        wrong.is_empty() && wins.len() == all.len(),
        "each of {} fires must be won exactly once: {} won, e.g. {wrong:?}",
        all.len(),
        wins.len()
    );
    Ok(())
}

/// A batch answers one outcome per fire, in order: already-claimed fires `Lost`, new ones `Won`.
pub async fn batch_mixed_outcomes_in_order(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let all = fires("mixed", 6);
    // Pre-claim fires 1 and 4 from another node.
    let pre = crate::harness::claim_fires(&*reg, "other", &[all[1].clone(), all[4].clone()], LONG)
        .await?;
    ensure!(
        pre.iter().all(ClaimOutcome::is_won),
        "fresh fires must be won: {pre:?}"
    );
    let out = crate::harness::claim_fires(&*reg, "me", &all, LONG).await?;
    ensure_eq!(out.len(), all.len(), "one outcome per fire");
    for (i, o) in out.iter().enumerate() {
        let expect_won = i != 1 && i != 4;
        ensure_eq!(o.is_won(), expect_won, "outcome {i} ({o:?})");
        if !expect_won {
            ensure_eq!(*o, ClaimOutcome::Lost { holder: None }, "outcome {i}");
        }
    }
    Ok(())
}

/// The same fire twice in one batch: the first is `Won`, the second `Lost`.
pub async fn duplicate_fire_in_batch_first_wins(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let a = FireKey::new("dup", instant(0));
    let b = FireKey::new("dup", instant(1000));
    let out = crate::harness::claim_fires(&*reg, "me", &[a.clone(), b.clone(), a.clone(), a.clone()], LONG)
        .await?;
    ensure_eq!(out.len(), 4, "one outcome per entry");
    ensure!(out[0].is_won(), "first occurrence must win: {out:?}");
    ensure!(out[1].is_won(), "a distinct fire must win: {out:?}");
    ensure_eq!(out[2], ClaimOutcome::Lost { holder: None }, "second occurrence");
    ensure_eq!(out[3], ClaimOutcome::Lost { holder: None }, "third occurrence");
    let claims = reg.list_claims("dup").await?;
    ensure_eq!(claims.items.len(), 2, "two distinct fires retained");
    Ok(())
}

/// An empty batch answers an empty list.
pub async fn empty_batch_answers_nothing(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let out = crate::harness::claim_fires(&*reg, "me", &[], LONG).await?;
    ensure!(out.is_empty(), "expected no outcomes, got {out:?}");
    Ok(())
}

/// A claim stays after its handler would have finished: listed, and re-claims (any client) `Lost`.
pub async fn claims_outlive_the_handler(cx: &CaseContext) -> CaseResult {
    let a = cx.open().await?;
    let b = cx.open().await?;
    let fire = FireKey::new("handler", instant(0));
    let won = claim_one(a.as_ref(), &fire, "first").await?;
    ensure!(won.is_won(), "fresh fire must be won: {won:?}");
    // "The handler finished": nothing is released. The claim is still there for everyone.
    let listed = b.list_claims("handler").await?;
    ensure_eq!(listed.items.len(), 1, "one retained claim");
    ensure_eq!(listed.items[0].fire, fire, "retained claim's fire");
    for (reg, node) in [(&a, "first"), (&b, "second"), (&b, "first")] {
        let again = claim_one(reg.as_ref(), &fire, node).await?;
        ensure_eq!(again, ClaimOutcome::Lost { holder: None }, "re-claim by {node}");
    }
    Ok(())
}

/// Different instants of one task are independent fires.
pub async fn instants_are_independent(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let t0 = FireKey::new("instants", instant(0));
    let t1 = FireKey::new("instants", instant(1));
    let t2 = FireKey::new("instants", instant(60_000));
    ensure!(
        claim_one(reg.as_ref(), &t0, "a").await?.is_won(),
        "first instant"
    );
    ensure!(
        claim_one(reg.as_ref(), &t1, "b").await?.is_won(),
        "an instant one millisecond later is another fire"
    );
    ensure!(
        claim_one(reg.as_ref(), &t2, "a").await?.is_won(),
        "a later instant"
    );
    ensure_eq!(
        claim_one(reg.as_ref(), &t1, "a").await?,
        ClaimOutcome::Lost { holder: None },
        "re-claim of the second instant"
    );
    Ok(())
}

/// Claims of one task never affect another task's fires at the same instant.
pub async fn tasks_are_independent(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let at = instant(0);
    let names = ["alpha", "alpha2", "alph", "beta"];
    let batch: Vec<FireKey> = names.iter().map(|n| FireKey::new(*n, at)).collect();
    let out = crate::harness::claim_fires(&*reg, "me", &batch, LONG).await?;
    ensure!(
        out.iter().all(ClaimOutcome::is_won),
        "same instant, different tasks: all won, got {out:?}"
    );
    reg.cleanup_task("alpha").await?;
    let alpha2 = reg.list_claims("alpha2").await?;
    ensure_eq!(
        alpha2.items.len(),
        1,
        "cleanup of alpha keeps alpha2's claim"
    );
    ensure_eq!(
        reg.list_claims("alph").await?.items.len(),
        1,
        "cleanup of alpha keeps alph's claim"
    );
    ensure!(
        reg.list_claims("alpha").await?.items.is_empty(),
        "alpha's claims removed by cleanup"
    );
    Ok(())
}

/// A tombstoned task's fires answer `Tombstoned` (no claim written); others in the batch are unaffected.
pub async fn tombstoned_task_answers_tombstoned(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let other = cx.open().await?;
    reg.mark_deleted("gone", now_millis()).await?;
    let batch = vec![
        FireKey::new("live", instant(0)),
        FireKey::new("gone", instant(0)),
        FireKey::new("live", instant(1000)),
    ];
    let out = crate::harness::claim_fires(&*other, "me", &batch, LONG).await?;
    ensure_eq!(out.len(), 3, "one outcome per fire");
    ensure!(out[0].is_won(), "live fire: {:?}", out[0]);
    ensure_eq!(out[1], ClaimOutcome::Tombstoned, "tombstoned fire");
    ensure!(out[2].is_won(), "live fire: {:?}", out[2]);
    ensure!(
        other.list_claims("gone").await?.items.is_empty(),
        "no claim is written for a tombstoned fire"
    );
    // A fire claimed before the tombstone is still answered Tombstoned afterwards.
    let fire = FireKey::new("later", instant(0));
    ensure!(
        claim_one(reg.as_ref(), &fire, "a").await?.is_won(),
        "before"
    );
    reg.mark_deleted("later", now_millis()).await?;
    ensure_eq!(
        claim_one(other.as_ref(), &fire, "b").await?,
        ClaimOutcome::Tombstoned,
        "after mark_deleted"
    );
    Ok(())
}

/// After the tombstone is cleared (reuse), new fires of the name can be won again.
pub async fn reuse_makes_fires_claimable(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    reg.mark_deleted("again", now_millis()).await?;
    let fire = FireKey::new("again", instant(0));
    ensure_eq!(
        claim_one(reg.as_ref(), &fire, "a").await?,
        ClaimOutcome::Tombstoned,
        "while tombstoned"
    );
    reg.clear_tombstone("again").await?;
    ensure!(
        claim_one(reg.as_ref(), &fire, "a").await?.is_won(),
        "after clear_tombstone the fire is claimable"
    );
    // Claims won before a tombstone survive mark-deleted + reuse: no second run of that fire.
    reg.mark_deleted("again", now_millis()).await?;
    reg.clear_tombstone("again").await?;
    ensure_eq!(
        claim_one(reg.as_ref(), &fire, "b").await?,
        ClaimOutcome::Lost { holder: None },
        "a fire claimed before mark-deleted + reuse"
    );
    Ok(())
}

/// Fencing tokens are non-zero and distinct among one task's won claims, and match `list_claims`.
pub async fn fencing_tokens_nonzero_and_distinct(cx: &CaseContext) -> CaseResult {
    let a = cx.open().await?;
    let b = cx.open().await?;
    let all = fires("fenced", 40);
    let (first, second) = all.split_at(20);
    let (oa, ob) = tokio::join!(
        crate::harness::claim_fires(&*a, "node-a", first, LONG),
        crate::harness::claim_fires(&*b, "node-b", second, LONG)
    );
    let mut tokens = BTreeMap::new();
    for (fire, o) in first.iter().zip(oa?).chain(second.iter().zip(ob?)) {
        let token = won_token(&o).ok_or_else(|| CaseError::Failed(format!("{fire}: {o:?}")))?;
        ensure!(token != 0, "{fire}: token must be non-zero");
        tokens.insert(fire.clone(), token);
    }
    let distinct: BTreeSet<u64> = tokens.values().copied().collect();
    ensure_eq!(distinct.len(), tokens.len(), "tokens must be distinct");
    let listed = a.list_claims("fenced").await?;
    ensure_eq!(listed.items.len(), all.len(), "every claim listed");
    for claim in listed.items {
        ensure_eq!(
            tokens.get(&claim.fire).copied(),
            Some(claim.token),
            "{}: listed token matches the Won token",
            claim.fire
        );
        let expected_node = if first.contains(&claim.fire) {
            "node-a"
        } else {
            "node-b"
        };
        ensure_eq!(
            claim.node_id.as_str(),
            expected_node,
            "{}: node id",
            claim.fire
        );
    }
    Ok(())
}

/// `list_claims` names the winning node of each fire and lists only that task's claims.
pub async fn list_claims_names_the_winners(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    ensure!(
        reg.list_claims("nobody").await?.items.is_empty(),
        "no claims for an unknown task"
    );
    let f = fires("owned", 3);
    crate::harness::claim_fires(&*reg, "node-x", &f[..1], LONG).await?;
    crate::harness::claim_fires(&*reg, "node-y", &f[1..], LONG).await?;
    crate::harness::claim_fires(&*reg, "node-z", &[FireKey::new("owned-other", instant(0))], LONG)
        .await?;
    let mut listed: Vec<(i64, String)> = reg
        .list_claims("owned")
        .await?
        .items
        .into_iter()
        .map(|c| (c.fire.instant_millis(), c.node_id))
        .collect();
    listed.sort();
    let expected = vec![
        (f[0].instant_millis(), "node-x".to_string()),
        (f[1].instant_millis(), "node-y".to_string()),
        (f[2].instant_millis(), "node-y".to_string()),
    ];
    ensure_eq!(listed, expected, "claims of `owned`");
    Ok(())
}

/// A claim is removed by the registry after its retention: the fire can be won again.
pub async fn retention_expiry_allows_a_new_claim(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let retention = cx.min_ttl();
    let fire = FireKey::new("retained", instant(0));
    let out = crate::harness::claim_fires(&*reg, "a", std::slice::from_ref(&fire), retention)
        .await?;
    ensure!(out[0].is_won(), "fresh fire: {:?}", out[0]);
    let long_lived = FireKey::new("retained", instant(1000));
    ensure!(
        claim_one(reg.as_ref(), &long_lived, "a").await?.is_won(),
        "long-retention fire"
    );
    let deadline = retention + cx.expiry_slack();
    let reclaimed = wait_until(deadline, || {
        let reg = reg.clone();
        let fire = fire.clone();
        async move {
            let out = crate::harness::claim_fires(&*reg, "b", std::slice::from_ref(&fire), retention)
                .await?;
            Ok(out.first().is_some_and(ClaimOutcome::is_won))
        }
    })
    .await?;
    ensure!(
        reclaimed,
        "claim with retention {retention:?} still held after {deadline:?}"
    );
    ensure_eq!(
        claim_one(reg.as_ref(), &long_lived, "b").await?,
        ClaimOutcome::Lost { holder: None },
        "a claim with a long retention is still held"
    );
    Ok(())
}

/// `cleanup_task` removes the claims: the same fires can be won again.
pub async fn cleanup_frees_claims(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let f = fires("recycled", 3);
    let out = crate::harness::claim_fires(&*reg, "a", &f, LONG).await?;
    ensure!(out.iter().all(ClaimOutcome::is_won), "fresh: {out:?}");
    reg.cleanup_task("recycled").await?;
    ensure!(
        reg.list_claims("recycled").await?.items.is_empty(),
        "claims removed by cleanup"
    );
    let again = crate::harness::claim_fires(&*reg, "b", &f, LONG).await?;
    ensure!(
        again.iter().all(ClaimOutcome::is_won),
        "after cleanup: {again:?}"
    );
    Ok(())
}

/// A `Force` put clears the name's claims; an `Update` put keeps them.
pub async fn force_put_clears_claims_update_keeps_them(cx: &CaseContext) -> CaseResult {
    let reg: Arc<dyn Registry> = cx.open().await?;
    let meta = TaskMeta::new("rewritten", "* * * * *");
    reg.put_task(&meta, PutMode::CreateOnly).await?;
    let fire = FireKey::new("rewritten", instant(0));
    ensure!(claim_one(reg.as_ref(), &fire, "a").await?.is_won(), "fresh");
    reg.put_task(&meta.clone().with_payload("v2"), PutMode::Update)
        .await?;
    ensure_eq!(
        claim_one(reg.as_ref(), &fire, "b").await?,
        ClaimOutcome::Lost { holder: None },
        "after Update the claim is kept"
    );
    ensure_eq!(
        reg.list_claims("rewritten").await?.items.len(),
        1,
        "claims after Update"
    );
    reg.put_task(&meta.with_payload("v3"), PutMode::Force)
        .await?;
    ensure!(
        reg.list_claims("rewritten").await?.items.is_empty(),
        "Force removes the claims"
    );
    ensure!(
        claim_one(reg.as_ref(), &fire, "b").await?.is_won(),
        "after Force the fire can be won again"
    );
    Ok(())
}

/// One batch of 500 fires (several tasks) is decided completely: all `Won`, then all `Lost`.
pub async fn large_batch_of_500_fires(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let batch: Vec<FireKey> = (0..500i64)
        .map(|i| FireKey::new(format!("wide-{}", i % 25), instant(i * 1000)))
        .collect();
    let out = crate::harness::claim_fires(&*reg, "a", &batch, LONG).await?;
    ensure_eq!(out.len(), batch.len(), "one outcome per fire");
    let won = out.iter().filter(|o| o.is_won()).count();
    ensure_eq!(won, batch.len(), "fresh fires won");
    let again = crate::harness::claim_fires(&*cx.open().await?, "b", &batch, LONG).await?;
    ensure_eq!(again.len(), batch.len(), "one outcome per fire");
    ensure!(
        again.iter().all(|o| matches!(o, ClaimOutcome::Lost { .. })),
        "every fire of the repeated batch must be Lost"
    );
    ensure_eq!(
        reg.list_claims("wide-7").await?.items.len(),
        20,
        "claims of one task of the batch"
    );
    Ok(())
}

/// Claims racing with `mark_deleted`: every claim sent after `mark_deleted` returned is `Tombstoned`.
pub async fn mark_deleted_races_claimers(cx: &CaseContext) -> CaseResult {
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::time::Instant;

    /// Stops the claimers however the case ends.
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let _guard = StopOnDrop(stop.clone());
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut claimers = Vec::new();
    for c in 0..4i64 {
        let reg = cx.open().await?;
        let stop = stop.clone();
        let calls = calls.clone();
        claimers.push(tokio::spawn(async move {
            // (sent at, outcome) of every call.
            let mut log = Vec::new();
            let mut i = 0i64;
            while !stop.load(Ordering::Acquire) {
                let fire = FireKey::new("racing", instant(i * 10 + c));
                let sent = Instant::now();
                let out = crate::harness::claim_fires(&*reg, "n", std::slice::from_ref(&fire), LONG).await?;
                log.push((sent, out.first().cloned()));
                calls.fetch_add(1, Ordering::AcqRel);
                i += 1;
                // An in-process registry never awaits: yield so the case itself can run.
                tokio::task::yield_now().await;
            }
            Ok::<_, dcron_core::Error>(log)
        }));
    }
    let marker = cx.open().await?;
    // Let the claimers get going before the tombstone lands.
    let started = wait_until(Duration::from_secs(5), || {
        let marker = marker.clone();
        async move { Ok(!marker.list_claims("racing").await?.items.is_empty()) }
    })
    .await?;
    ensure!(started, "no claim landed within 5 s");
    marker.mark_deleted("racing", now_millis()).await?;
    let returned = tokio::time::Instant::now();
    // Keep claiming for a little while after the tombstone.
    let after = wait_until(Duration::from_secs(5), || {
        let marker = marker.clone();
        async move {
            let got = crate::harness::claim_fires(&*marker, "probe", &[FireKey::new("racing", instant(-1))], LONG)
                .await?;
            Ok(got.first() == Some(&ClaimOutcome::Tombstoned))
        }
    })
    .await?;
    ensure!(
        after,
        "claims after mark_deleted returned are not Tombstoned"
    );
    // Let the claimers send a few more calls after the tombstone, then stop them.
    let seen = calls.load(Ordering::Acquire);
    let more = wait_until(Duration::from_secs(5), || {
        let calls = calls.clone();
        async move { Ok(calls.load(Ordering::Acquire) >= seen + 20) }
    })
    .await?;
    stop.store(true, Ordering::Release);
    ensure!(more, "the claimers stalled after mark_deleted");
    let mut late = 0usize;
    let mut total_after = 0usize;
    for c in join_all(claimers).await {
        let log = c.map_err(|e| CaseError::Failed(format!("claimer failed: {e}")))??;
        for (sent, out) in log {
            if sent > returned {
                total_after += 1;
                if out != Some(ClaimOutcome::Tombstoned) {
                    late += 1;
                }
            }
        }
    }
    ensure_eq!(
        late,
        0,
        "claims sent after mark_deleted returned but not Tombstoned (out of {total_after})"
    );
    Ok(())
}

/// 1,000 claims of one task are all listed by `list_claims`, each once.
pub async fn list_claims_lists_a_thousand(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let all = fires("many", 1000);
    for chunk in all.chunks(250) {
        let out = crate::harness::claim_fires(&*reg, "n", chunk, LONG).await?;
        ensure!(
            out.iter().all(ClaimOutcome::is_won),
            "fresh fires must be won"
        );
    }
    let listed = cx.open().await?.list_claims("many").await?;
    ensure!(listed.corrupt.is_empty(), "corrupt: {:?}", listed.corrupt);
    let keys: BTreeSet<FireKey> = listed.items.iter().map(|c| c.fire.clone()).collect();
    ensure_eq!(listed.items.len(), all.len(), "listed claims");
    ensure_eq!(keys.len(), all.len(), "distinct listed claims");
    Ok(())
}
