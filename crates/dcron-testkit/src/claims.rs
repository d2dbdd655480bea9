//! Claim cases: exactly one winner per fire, claimants and idempotence, per-fire outcomes,
//! generations, deadlines, retention, tombstones and fencing tokens.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dcron_core::{
    expiry_tolerance, Claim, ClaimOutcome, ClaimRequest, Claimant, Error, FireKey, Life, PutMode,
    Registry,
};
use futures::future::join_all;
use tokio::time::Instant;

use crate::harness::{
    holds_until, instant, now_millis, reached, task_meta, CaseContext, CaseError, CaseResult,
};
use crate::{ensure, ensure_eq, ensure_err};

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
    let out = crate::harness::claim_fires(reg, node, std::slice::from_ref(fire), LONG).await?;
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
                let out =
                    crate::harness::claim_fires(&*reg, &node, std::slice::from_ref(fire), LONG)
                        .await?;
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
            ensure!(
                matches!(o, ClaimOutcome::Lost { .. }),
                "outcome {i}: expected Lost, got {o:?}"
            );
        }
    }
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
    for (reg, node) in [(&a, "second"), (&b, "third"), (&b, "second")] {
        let again = claim_one(reg.as_ref(), &fire, node).await?;
        ensure!(
            matches!(again, ClaimOutcome::Lost { .. }),
            "re-claim by {node}: expected Lost, got {again:?}"
        );
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
    let again = claim_one(reg.as_ref(), &t1, "a").await?;
    ensure!(
        matches!(again, ClaimOutcome::Lost { .. }),
        "re-claim of the second instant by another node: {again:?}"
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
    reg.mark_deleted("alpha", now_millis()).await?;
    let later: Vec<FireKey> = names
        .iter()
        .map(|n| FireKey::new(*n, instant(1000)))
        .collect();
    let out = crate::harness::claim_fires(&*reg, "me", &later, LONG).await?;
    ensure_eq!(
        out[0],
        ClaimOutcome::Tombstoned,
        "alpha after its mark_deleted"
    );
    ensure!(
        out[1..].iter().all(ClaimOutcome::is_won),
        "the names beside a tombstoned `alpha` are unaffected: {out:?}"
    );
    reg.cleanup_task("alpha").await?;
    for name in ["alpha2", "alph", "beta"] {
        ensure_eq!(
            reg.list_claims(name).await?.items.len(),
            2,
            "cleanup of alpha keeps {name}'s claims"
        );
    }
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
    let again = claim_one(reg.as_ref(), &fire, "b").await?;
    ensure!(
        matches!(again, ClaimOutcome::Lost { .. }),
        "a fire claimed before mark-deleted + reuse: {again:?}"
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
    crate::harness::claim_fires(
        &*reg,
        "node-z",
        &[FireKey::new("owned-other", instant(0))],
        LONG,
    )
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
    let out =
        crate::harness::claim_fires(&*reg, "a", std::slice::from_ref(&fire), retention).await?;
    ensure!(out[0].is_won(), "fresh fire: {:?}", out[0]);
    let long_lived = FireKey::new("retained", instant(1000));
    ensure!(
        claim_one(reg.as_ref(), &long_lived, "a").await?.is_won(),
        "long-retention fire"
    );
    let deadline = retention + cx.expiry_slack();
    let reclaimed = reached(deadline, || {
        let reg = reg.clone();
        let fire = fire.clone();
        async move {
            let out =
                crate::harness::claim_fires(&*reg, "b", std::slice::from_ref(&fire), retention)
                    .await?;
            Ok(out.first().is_some_and(ClaimOutcome::is_won))
        }
    })
    .await?;
    ensure!(
        reclaimed,
        "claim with retention {retention:?} still held after {deadline:?}"
    );
    let held = claim_one(reg.as_ref(), &long_lived, "b").await?;
    ensure!(
        matches!(held, ClaimOutcome::Lost { .. }),
        "a claim with a long retention is still held: {held:?}"
    );
    Ok(())
}

/// `cleanup_task` removes the claims: the same fires can be won again.
pub async fn cleanup_keeps_claims(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let f = fires("recycled", 3);
    let out = crate::harness::claim_fires(&*reg, "a", &f, LONG).await?;
    ensure!(out.iter().all(ClaimOutcome::is_won), "fresh: {out:?}");
    reg.cleanup_task("recycled").await?;
    ensure_eq!(
        reg.list_claims("recycled").await?.items.len(),
        3,
        "claims listed after cleanup"
    );
    // A later life of the name (claim_fires starts one) meets the earlier claims.
    let again = crate::harness::claim_fires(&*reg, "b", &f, LONG).await?;
    ensure!(
        again.iter().all(|o| matches!(o, ClaimOutcome::Lost { .. })),
        "fires claimed before a cleanup, claimed again after it: {again:?}"
    );
    let fresh = crate::harness::claim_fires(
        &*reg,
        "b",
        &[FireKey::new("recycled", instant(99_000))],
        LONG,
    )
    .await?;
    ensure!(fresh[0].is_won(), "a new fire after cleanup: {fresh:?}");
    Ok(())
}

/// `Update` and `Force` puts keep the name's claims (claims end only with their retention).
pub async fn force_and_update_keep_claims(cx: &CaseContext) -> CaseResult {
    let reg: Arc<dyn Registry> = cx.open().await?;
    let meta = task_meta("rewritten", "* * * * *");
    reg.put_task(&meta, PutMode::CreateOnly).await?;
    let fire = FireKey::new("rewritten", instant(0));
    ensure!(claim_one(reg.as_ref(), &fire, "a").await?.is_won(), "fresh");
    reg.put_task(&meta.clone().with_payload("v2"), PutMode::Update)
        .await?;
    let kept = claim_one(reg.as_ref(), &fire, "b").await?;
    ensure!(
        matches!(kept, ClaimOutcome::Lost { .. }),
        "after Update the claim is kept: {kept:?}"
    );
    reg.put_task(&meta.with_payload("v3"), PutMode::Force)
        .await?;
    ensure_eq!(
        reg.list_claims("rewritten").await?.items.len(),
        1,
        "claims listed after Force"
    );
    let kept = claim_one(reg.as_ref(), &fire, "b").await?;
    ensure!(
        matches!(kept, ClaimOutcome::Lost { .. }),
        "after Force (a new life) the fire is still held: {kept:?}"
    );
    ensure!(
        claim_one(reg.as_ref(), &FireKey::new("rewritten", instant(1000)), "b")
            .await?
            .is_won(),
        "a new fire after Force"
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
                let out =
                    crate::harness::claim_fires(&*reg, "n", std::slice::from_ref(&fire), LONG)
                        .await?;
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
    let started = reached(Duration::from_secs(5), || {
        let marker = marker.clone();
        async move { Ok(!marker.list_claims("racing").await?.items.is_empty()) }
    })
    .await?;
    ensure!(started, "no claim landed within 5 s");
    marker.mark_deleted("racing", now_millis()).await?;
    let returned = tokio::time::Instant::now();
    // Keep claiming for a little while after the tombstone.
    let after = reached(Duration::from_secs(5), || {
        let marker = marker.clone();
        async move {
            let got = crate::harness::claim_fires(
                &*marker,
                "probe",
                &[FireKey::new("racing", instant(-1))],
                LONG,
            )
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
    let more = reached(Duration::from_secs(5), || {
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

// ----- the exactly-once contract: claimants, outcomes, generations, deadlines, retention -----

/// The current life of `name`, starting one at [`instant`]`(0)` when it has none.
async fn life_of(reg: &dyn Registry, name: &str) -> Result<Life, CaseError> {
    let lives = reg.ensure_lives(&[(name.to_string(), instant(0))]).await?;
    ensure_eq!(lives.len(), 1, "ensure_lives of one name answers one life");
    Ok(lives[0])
}

/// A request for `fire` in `generation`, its deadline a day after its instant.
fn request(fire: &FireKey, generation: u64, retention: Duration) -> ClaimRequest {
    ClaimRequest::new(
        fire.clone(),
        generation,
        fire.instant + chrono::Duration::days(1),
        retention,
    )
}

/// A request with an explicit deadline.
fn request_until(
    fire: &FireKey,
    generation: u64,
    deadline: DateTime<Utc>,
    retention: Duration,
) -> ClaimRequest {
    ClaimRequest::new(fire.clone(), generation, deadline, retention)
}

/// Claims one request, checking that exactly one outcome comes back.
async fn claim_request(
    reg: &dyn Registry,
    claimant: &Claimant,
    request: ClaimRequest,
) -> Result<ClaimOutcome, CaseError> {
    let out = reg.claim(claimant, std::slice::from_ref(&request)).await?;
    ensure_eq!(out.len(), 1, "one request, one outcome");
    Ok(out[0].clone())
}

/// The won token of an outcome that must be `Won`.
fn must_win(outcome: &ClaimOutcome, what: &str) -> Result<u64, CaseError> {
    match outcome {
        ClaimOutcome::Won { token } => Ok(*token),
        other => Err(CaseError::Failed(format!(
            "{what}: expected Won, got {other:?}"
        ))),
    }
}

/// The retained claims of `task` for `fire`.
async fn listed(reg: &dyn Registry, fire: &FireKey) -> Result<Vec<Claim>, CaseError> {
    Ok(reg
        .list_claims(&fire.task)
        .await?
        .items
        .into_iter()
        .filter(|c| c.fire == *fire)
        .collect())
}

/// The retention of the timing cases: long enough that half of it and twice it are told apart
/// from the promise within [`expiry_tolerance`] (6 s, or the backend's smallest TTL if larger).
fn timing_retention(cx: &CaseContext) -> Duration {
    cx.min_ttl().max(Duration::from_secs(6))
}

/// Claiming again as the same claimant (node id and epoch) answers `WonEarlier` with the same
/// token; the same node under another epoch, or another node, is `Lost` naming the holder.
pub async fn claimant_is_idempotent(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let other_client = cx.open().await?;
    let fire = FireKey::new("idem", instant(0));
    let generation = life_of(reg.as_ref(), "idem").await?.generation;
    let me = Claimant::new("node-a", 3);
    let token = must_win(
        &claim_request(reg.as_ref(), &me, request(&fire, generation, LONG)).await?,
        "fresh fire",
    )?;
    for (client, what) in [(&reg, "same client"), (&other_client, "another client")] {
        for attempt in 0..3 {
            let again =
                claim_request(client.as_ref(), &me, request(&fire, generation, LONG)).await?;
            ensure_eq!(
                again,
                ClaimOutcome::WonEarlier { token },
                "retry {attempt} by the same claimant from {what}"
            );
        }
    }
    for claimant in [
        Claimant::new("node-a", 4),
        Claimant::new("node-a", 2),
        Claimant::new("node-b", 3),
    ] {
        let out = claim_request(reg.as_ref(), &claimant, request(&fire, generation, LONG)).await?;
        ensure_eq!(
            out,
            ClaimOutcome::Lost {
                holder: Some("node-a".into())
            },
            "claim by {claimant} of a fire held by node-a#3"
        );
    }
    let claims = listed(reg.as_ref(), &fire).await?;
    ensure_eq!(claims.len(), 1, "one retained claim");
    ensure_eq!(claims[0].claimant(), me, "the listed claimant");
    ensure_eq!(claims[0].token, token, "the listed token");
    ensure_eq!(claims[0].generation, generation, "the listed generation");
    Ok(())
}

/// A claimant whose reply was lost retries the whole batch: fires it won answer `WonEarlier`
/// with their tokens, a fire won meanwhile by another is `Lost`, a new fire is `Won`.
pub async fn lost_reply_retry_of_a_mixed_batch(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let rival = cx.open().await?;
    let f = fires("retry", 5);
    let generation = life_of(reg.as_ref(), "retry").await?.generation;
    let me = Claimant::new("me", 1);
    let first: Vec<ClaimRequest> = f[..3]
        .iter()
        .map(|x| request(x, generation, LONG))
        .collect();
    let out = reg.claim(&me, &first).await?;
    ensure_eq!(out.len(), 3, "one outcome per fire");
    let mut tokens = Vec::new();
    for (i, o) in out.iter().enumerate() {
        tokens.push(must_win(o, &format!("fire {i} of the first batch"))?);
    }
    // The reply is "lost"; meanwhile a rival wins fire 3.
    let rival_token = must_win(
        &claim_request(
            rival.as_ref(),
            &Claimant::new("rival", 1),
            request(&f[3], generation, LONG),
        )
        .await?,
        "the rival's fire",
    )?;
    let retry: Vec<ClaimRequest> = f.iter().map(|x| request(x, generation, LONG)).collect();
    let out = reg.claim(&me, &retry).await?;
    ensure_eq!(out.len(), 5, "one outcome per fire of the retry");
    for i in 0..3 {
        ensure_eq!(
            out[i],
            ClaimOutcome::WonEarlier { token: tokens[i] },
            "retried fire {i}"
        );
    }
    ensure_eq!(
        out[3],
        ClaimOutcome::Lost {
            holder: Some("rival".into())
        },
        "fire won by the rival meanwhile"
    );
    let new = must_win(&out[4], "new fire of the retry")?;
    ensure!(
        tokens.iter().all(|t| *t < new) && rival_token < new,
        "the new fire's token {new} must exceed the earlier ones {tokens:?} and {rival_token}"
    );
    Ok(())
}

/// The same fire twice in one batch is decided once: the first copy `Won`, the later copies
/// `WonEarlier` with the same token (as a retry would); one claim is retained.
pub async fn fire_twice_in_one_batch_is_decided_once(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let generation = life_of(reg.as_ref(), "dup").await?.generation;
    let a = FireKey::new("dup", instant(0));
    let b = FireKey::new("dup", instant(1000));
    let me = Claimant::new("me", 1);
    let batch: Vec<ClaimRequest> = [&a, &b, &a, &a]
        .iter()
        .map(|f| request(f, generation, LONG))
        .collect();
    let out = reg.claim(&me, &batch).await?;
    ensure_eq!(out.len(), 4, "one outcome per entry");
    let token = must_win(&out[0], "first copy")?;
    must_win(&out[1], "a distinct fire")?;
    ensure_eq!(out[2], ClaimOutcome::WonEarlier { token }, "second copy");
    ensure_eq!(out[3], ClaimOutcome::WonEarlier { token }, "third copy");
    ensure_eq!(
        reg.list_claims("dup").await?.items.len(),
        2,
        "two distinct fires retained"
    );
    // Another claimant's batch with the fire twice: both copies lost to `me`.
    let out = reg
        .claim(
            &Claimant::new("other", 1),
            &[request(&a, generation, LONG), request(&a, generation, LONG)],
        )
        .await?;
    for (i, o) in out.iter().enumerate() {
        ensure_eq!(
            *o,
            ClaimOutcome::Lost {
                holder: Some("me".into())
            },
            "copy {i} claimed by another"
        );
    }
    Ok(())
}

/// `Lost` names the holder: the node that won the fire, whoever asks and however often.
pub async fn lost_names_the_holder(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let all = fires("held", 4);
    let generation = life_of(reg.as_ref(), "held").await?.generation;
    for (i, fire) in all.iter().enumerate() {
        let holder = Claimant::new(format!("holder-{i}"), 1 + i as u64);
        must_win(
            &claim_request(reg.as_ref(), &holder, request(fire, generation, LONG)).await?,
            "fresh fire",
        )?;
    }
    let batch: Vec<ClaimRequest> = all.iter().map(|f| request(f, generation, LONG)).collect();
    for asker in ["x", "y"] {
        let out = cx
            .open()
            .await?
            .claim(&Claimant::new(asker, 1), &batch)
            .await?;
        ensure_eq!(out.len(), all.len(), "one outcome per fire");
        for (i, o) in out.iter().enumerate() {
            ensure_eq!(
                *o,
                ClaimOutcome::Lost {
                    holder: Some(format!("holder-{i}"))
                },
                "fire {i} asked by {asker}"
            );
        }
    }
    Ok(())
}

/// A claim for a name without a life is `Superseded { current: None }`, and for another
/// generation than the current one `Superseded` with the current generation; nothing is written.
pub async fn superseded_for_a_stale_generation_or_no_life(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let me = Claimant::new("me", 1);
    let lifeless = FireKey::new("lifeless", instant(0));
    for generation in [0, 1, 7] {
        let out = claim_request(reg.as_ref(), &me, request(&lifeless, generation, LONG)).await?;
        ensure_eq!(
            out,
            ClaimOutcome::Superseded { current: None },
            "claim of generation {generation} for a name without a life"
        );
    }
    ensure!(
        listed(reg.as_ref(), &lifeless).await?.is_empty(),
        "nothing is written for a name without a life"
    );
    let fire = FireKey::new("aged", instant(0));
    let old = life_of(reg.as_ref(), "aged").await?.generation;
    let new = reg.restart_life("aged", now_millis()).await?.generation;
    ensure!(
        new > old,
        "restart_life: generation {new} must exceed {old}"
    );
    for generation in [old, new + 1, 0] {
        let out = claim_request(reg.as_ref(), &me, request(&fire, generation, LONG)).await?;
        ensure_eq!(
            out,
            ClaimOutcome::Superseded { current: Some(new) },
            "claim of generation {generation} when the life is {new}"
        );
    }
    ensure!(
        listed(reg.as_ref(), &fire).await?.is_empty(),
        "nothing is written for a stale generation"
    );
    // A batch mixes the outcomes per fire.
    let ok = FireKey::new("aged", instant(1000));
    let out = reg
        .claim(
            &me,
            &[
                request(&fire, old, LONG),
                request(&ok, new, LONG),
                request(&lifeless, 1, LONG),
            ],
        )
        .await?;
    ensure_eq!(out.len(), 3, "one outcome per fire");
    ensure_eq!(
        out[0],
        ClaimOutcome::Superseded { current: Some(new) },
        "stale"
    );
    must_win(&out[1], "current generation")?;
    ensure_eq!(
        out[2],
        ClaimOutcome::Superseded { current: None },
        "no life"
    );
    Ok(())
}

/// A tombstone takes precedence over an existing claim: the claimant that won the fire gets
/// `Tombstoned`, not `WonEarlier`, once the name is marked deleted.
pub async fn tombstone_precedes_won_earlier(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let fire = FireKey::new("buried", instant(0));
    let generation = life_of(reg.as_ref(), "buried").await?.generation;
    let me = Claimant::new("me", 1);
    must_win(
        &claim_request(reg.as_ref(), &me, request(&fire, generation, LONG)).await?,
        "fresh fire",
    )?;
    reg.mark_deleted("buried", now_millis()).await?;
    for claimant in [me, Claimant::new("other", 1)] {
        let out = claim_request(reg.as_ref(), &claimant, request(&fire, generation, LONG)).await?;
        ensure_eq!(
            out,
            ClaimOutcome::Tombstoned,
            "claim by {claimant} after mark_deleted"
        );
    }
    Ok(())
}

/// A registry with a clock answers `Late` for a fire past its deadline and writes nothing,
/// decides the rest of the batch, and still answers an existing claim (`WonEarlier` to its
/// claimant, `Lost` to others) after the deadline.
pub async fn late_claims_are_refused(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let exactly_once = reg.capabilities().exactly_once;
    let generation = life_of(reg.as_ref(), "late").await?.generation;
    let me = Claimant::new("me", 1);
    // Far enough in the past that no plausible clock skew makes it current.
    let past = now_millis() - chrono::Duration::hours(1);
    let future = now_millis() + chrono::Duration::hours(1);
    let late = FireKey::new("late", instant(0));
    let fresh = FireKey::new("late", instant(1000));
    let out = reg
        .claim(
            &me,
            &[
                request_until(&late, generation, past, LONG),
                request_until(&fresh, generation, future, LONG),
            ],
        )
        .await?;
    ensure_eq!(out.len(), 2, "one outcome per fire");
    ensure_eq!(out[0], ClaimOutcome::Late, "a fire past its deadline");
    must_win(&out[1], "a fire before its deadline")?;
    ensure!(
        listed(reg.as_ref(), &late).await?.is_empty(),
        "nothing is written for a late fire"
    );
    // A fire whose deadline passes while it is held.
    let soon = now_millis() + chrono::Duration::seconds(2);
    let held = FireKey::new("late", instant(2000));
    let token = must_win(
        &claim_request(
            reg.as_ref(),
            &me,
            request_until(&held, generation, soon, LONG),
        )
        .await?,
        "a fire claimed before its deadline",
    )?;
    // Wait until the registry's own clock is past the deadline: a fresh fire with the same
    // deadline is then `Late`.
    let mut probe = 10_000i64;
    let passed = reached(Duration::from_secs(60), || {
        probe += 1;
        let reg = reg.clone();
        let request = request_until(&FireKey::new("late-probe", instant(probe)), 0, soon, LONG);
        async move {
            let generation = life_of(reg.as_ref(), "late-probe").await?.generation;
            let request = ClaimRequest {
                generation,
                ..request
            };
            let out = claim_request(reg.as_ref(), &Claimant::new("probe", 1), request).await?;
            Ok(out == ClaimOutcome::Late)
        }
    })
    .await?;
    ensure!(
        passed,
        "a fire whose deadline passed a minute ago (by this host's clock) is still not Late"
    );
    let again = claim_request(
        reg.as_ref(),
        &me,
        request_until(&held, generation, soon, LONG),
    )
    .await?;
    if exactly_once {
        ensure_eq!(
            again,
            ClaimOutcome::WonEarlier { token },
            "the holder's retry after the deadline"
        );
    } else {
        ensure!(
            matches!(
                again,
                ClaimOutcome::WonEarlier { .. } | ClaimOutcome::Lost { .. }
            ),
            "an existing claim is answered before the deadline is checked: {again:?}"
        );
    }
    let other = claim_request(
        reg.as_ref(),
        &Claimant::new("other", 1),
        request_until(&held, generation, soon, LONG),
    )
    .await?;
    ensure!(
        matches!(other, ClaimOutcome::Lost { .. }),
        "another claimant after the deadline of a held fire: expected Lost, got {other:?}"
    );
    Ok(())
}

/// A zero retention is `InvalidArgument`, and nothing of the batch is written.
pub async fn zero_retention_is_refused(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let generation = life_of(reg.as_ref(), "zero").await?.generation;
    let ok = FireKey::new("zero", instant(0));
    let zero = FireKey::new("zero", instant(1000));
    let me = Claimant::new("me", 1);
    ensure_err!(
        reg.claim(&me, &[request(&zero, generation, Duration::ZERO)])
            .await,
        Error::InvalidArgument(_),
        "a claim with a zero retention"
    );
    ensure_err!(
        reg.claim(
            &me,
            &[
                request(&ok, generation, LONG),
                request(&zero, generation, Duration::ZERO)
            ]
        )
        .await,
        Error::InvalidArgument(_),
        "a batch with one zero retention"
    );
    ensure!(
        reg.list_claims("zero").await?.items.is_empty(),
        "nothing of a refused batch is written"
    );
    must_win(
        &claim_request(
            reg.as_ref(),
            &Claimant::new("other", 1),
            request(&ok, generation, LONG),
        )
        .await?,
        "the valid fire of the refused batch, claimed afterwards by another",
    )?;
    Ok(())
}

/// A claim is kept at least its retention (still listed and held at 0.9 of it) and is gone
/// (not listed, claimable by another claimant) within retention + `expiry_tolerance`.
pub async fn retention_is_kept_within_tolerance(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let other = cx.open().await?;
    let retention = timing_retention(cx);
    let fire = FireKey::new("kept", instant(0));
    let generation = life_of(reg.as_ref(), "kept").await?.generation;
    let started = Instant::now();
    let out = claim_request(
        reg.as_ref(),
        &Claimant::new("holder", 1),
        request(&fire, generation, retention),
    )
    .await?;
    let returned = Instant::now();
    let token = must_win(&out, "fresh fire")?;
    let rival = Claimant::new("rival", 1);
    let held = holds_until(started + retention.mul_f64(0.9), || {
        let other = other.clone();
        let fire = fire.clone();
        let rival = rival.clone();
        async move {
            let present = listed(other.as_ref(), &fire).await?.len() == 1;
            let out = claim_request(
                other.as_ref(),
                &rival,
                request(&fire, generation, retention),
            )
            .await?;
            Ok(present && matches!(out, ClaimOutcome::Lost { .. }))
        }
    })
    .await?;
    ensure!(
        held,
        "a claim with retention {retention:?} was gone (or claimable) after {:?}",
        started.elapsed()
    );
    let bound = retention + expiry_tolerance(retention);
    let gone = reached(
        (returned + bound).saturating_duration_since(Instant::now()),
        || {
            let other = other.clone();
            let fire = fire.clone();
            async move { Ok(listed(other.as_ref(), &fire).await?.is_empty()) }
        },
    )
    .await?;
    ensure!(
        gone,
        "a claim with retention {retention:?} is still listed {:?} after it was written (bound {bound:?})",
        returned.elapsed()
    );
    let again = claim_request(other.as_ref(), &rival, request(&fire, generation, LONG)).await?;
    let new = must_win(&again, "the fire after its claim expired")?;
    ensure!(
        new > token,
        "the token of a re-won fire ({new}) must exceed the expired claim's ({token})"
    );
    Ok(())
}

/// Each request of a batch is retained for its own retention: a short one expires within its
/// bound while the long ones beside it stay.
pub async fn per_request_retentions_in_one_batch(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let short = timing_retention(cx);
    let f = fires("mixed-retention", 3);
    let generation = life_of(reg.as_ref(), "mixed-retention").await?.generation;
    let batch = vec![
        request(&f[0], generation, LONG),
        request(&f[1], generation, short),
        request(&f[2], generation, LONG),
    ];
    let out = reg.claim(&Claimant::new("me", 1), &batch).await?;
    let returned = Instant::now();
    ensure!(
        out.len() == 3 && out.iter().all(ClaimOutcome::is_won),
        "fresh fires: {out:?}"
    );
    let bound = short + expiry_tolerance(short);
    let gone = reached(bound, || {
        let reg = reg.clone();
        let fire = f[1].clone();
        async move { Ok(listed(reg.as_ref(), &fire).await?.is_empty()) }
    })
    .await?;
    ensure!(
        gone,
        "the fire retained {short:?} is still listed {:?} after the batch (bound {bound:?})",
        returned.elapsed()
    );
    for i in [0, 2] {
        ensure_eq!(
            listed(reg.as_ref(), &f[i]).await?.len(),
            1,
            "the fire retained {LONG:?} beside it (request {i})"
        );
    }
    Ok(())
}

/// `list_claims` never lists an expired claim and lists each claim once, also when an expired
/// fire is won again by another claimant.
pub async fn expired_claims_are_never_listed(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let short = timing_retention(cx);
    let f = fires("expiring", 10);
    let generation = life_of(reg.as_ref(), "expiring").await?.generation;
    let batch: Vec<ClaimRequest> = f
        .iter()
        .enumerate()
        .map(|(i, x)| request(x, generation, if i % 2 == 0 { short } else { LONG }))
        .collect();
    let out = reg.claim(&Claimant::new("first", 1), &batch).await?;
    ensure!(out.iter().all(ClaimOutcome::is_won), "fresh fires: {out:?}");
    let long: BTreeSet<FireKey> = f.iter().skip(1).step_by(2).cloned().collect();
    let bound = short + expiry_tolerance(short);
    let only_long = reached(bound, || {
        let reg = reg.clone();
        let long = long.clone();
        async move {
            let items = reg.list_claims("expiring").await?.items;
            let keys: BTreeSet<FireKey> = items.iter().map(|c| c.fire.clone()).collect();
            Ok(items.len() == long.len() && keys == long)
        }
    })
    .await?;
    ensure!(
        only_long,
        "after {bound:?} the listing still differs from the {} long-retained claims: {:?}",
        long.len(),
        reg.list_claims("expiring").await?.items
    );
    let token = must_win(
        &claim_request(
            reg.as_ref(),
            &Claimant::new("second", 1),
            request(&f[0], generation, LONG),
        )
        .await?,
        "an expired fire won again",
    )?;
    let again = listed(reg.as_ref(), &f[0]).await?;
    ensure_eq!(again.len(), 1, "the re-won fire is listed once: {again:?}");
    ensure_eq!(
        again[0].node_id.as_str(),
        "second",
        "the re-won fire's holder"
    );
    ensure_eq!(again[0].token, token, "the re-won fire's token");
    Ok(())
}

/// Tokens of one name increase strictly in claim order, across an `Update`, a `Force` put and
/// `cleanup_task`; each listed claim shows the token, epoch and generation it was won with.
pub async fn fencing_tokens_increase_across_cleanup_and_force(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let name = "fenced-seq";
    let meta = task_meta(name, "@hourly");
    reg.put_task(&meta, PutMode::CreateOnly).await?;
    let me = Claimant::new("me", 5);
    let mut last = 0u64;
    let mut step = |what: &str, token: u64| -> CaseResult {
        ensure!(
            token > last,
            "{what}: token {token} must exceed the previous token {last} of the name"
        );
        last = token;
        Ok(())
    };
    for (i, what) in [
        (0i64, "first claim"),
        (1, "second claim"),
        (2, "after Update"),
        (3, "after Force"),
        (4, "after Force, another fire"),
        (5, "after cleanup_task"),
    ] {
        match what {
            "after Update" => {
                reg.put_task(&meta.clone().with_payload("v2"), PutMode::Update)
                    .await?
            }
            "after Force" => {
                reg.put_task(&task_meta(name, "@daily"), PutMode::Force)
                    .await?
            }
            "after cleanup_task" => reg.cleanup_task(name).await?,
            _ => {}
        }
        let fire = FireKey::new(name, instant(i * 1000));
        let generation = life_of(reg.as_ref(), name).await?.generation;
        let token = must_win(
            &claim_request(reg.as_ref(), &me, request(&fire, generation, LONG)).await?,
            what,
        )?;
        step(what, token)?;
        let claims = listed(reg.as_ref(), &fire).await?;
        ensure_eq!(claims.len(), 1, "{what}: the claim is listed once");
        ensure_eq!(
            (claims[0].token, claims[0].epoch, claims[0].generation),
            (token, me.epoch, generation),
            "{what}: listed token, epoch and generation"
        );
    }
    Ok(())
}

/// Tokens and generations of one name increase strictly across `restart_life`, `Force` puts,
/// `cleanup_task` and `cleanup_all`, and listed claims match what was won.
pub async fn tokens_and_generations_increase_across_lives(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let name = "many-lives";
    let me = Claimant::new("me", 1);
    let (mut last_token, mut last_generation) = (0u64, 0u64);
    for (step, what) in [
        "first life",
        "restart_life",
        "Force put",
        "cleanup_task",
        "restart_life again",
        "cleanup_all",
    ]
    .into_iter()
    .enumerate()
    {
        let fire = FireKey::new(name, instant(step as i64 * 1000));
        match what {
            "restart_life" | "restart_life again" => {
                reg.restart_life(name, now_millis()).await?;
            }
            "Force put" => {
                reg.put_task(&task_meta(name, "@hourly"), PutMode::Force)
                    .await?
            }
            "cleanup_task" => reg.cleanup_task(name).await?,
            "cleanup_all" => reg.cleanup_all().await?,
            _ => {}
        }
        let generation = life_of(reg.as_ref(), name).await?.generation;
        ensure!(
            generation > last_generation,
            "{what}: generation {generation} must exceed the previous one {last_generation}"
        );
        let token = must_win(
            &claim_request(reg.as_ref(), &me, request(&fire, generation, LONG)).await?,
            what,
        )?;
        ensure!(
            token > last_token,
            "{what}: token {token} must exceed the previous one {last_token}"
        );
        let claims = listed(reg.as_ref(), &fire).await?;
        ensure_eq!(claims.len(), 1, "{what}: one claim listed");
        ensure_eq!(
            (claims[0].token, claims[0].epoch, claims[0].generation),
            (token, me.epoch, generation),
            "{what}: listed token, epoch and generation"
        );
        (last_token, last_generation) = (token, generation);
    }
    Ok(())
}

/// Names that an escaping scheme could confuse.
pub fn colliding_names() -> Vec<String> {
    let mut names: Vec<String> = [
        "a",
        "ab",
        "a:",
        "a:b",
        "a:b:c",
        "a%3Ab",
        "a%3ab",
        "a%b",
        "a%25b",
        "a.b",
        "a..b",
        "a b",
        "a+b",
        "a%20b",
        "a_b",
        "a-b",
        "a\\b",
        "a|b",
        "a*",
        "a?",
        "A:B",
        "ä:b",
        "a:ö",
        "名:前",
        "🚀:🚀",
        ":",
        "::",
        "%",
        "%%",
    ]
    .iter()
    .map(|s| (*s).to_string())
    .collect();
    names.push("n".repeat(200));
    names.push(format!("{}m", "n".repeat(199)));
    names.push("n".repeat(199));
    names
}

/// Claims of distinct names never collide, whatever their characters (`a:b`, `a%3Ab`, `a.b`,
/// `a..b`, `a b`, unicode, 200 bytes, names that are prefixes of others).
pub async fn names_never_collide(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let names = colliding_names();
    let at = instant(0);
    let wanted: Vec<(String, DateTime<Utc>)> = names.iter().map(|n| (n.clone(), at)).collect();
    let lives = reg.ensure_lives(&wanted).await?;
    ensure_eq!(lives.len(), names.len(), "one life per name");
    let mut tokens = BTreeSet::new();
    for (i, (name, life)) in names.iter().zip(&lives).enumerate() {
        let fire = FireKey::new(name.clone(), at);
        let out = claim_request(
            reg.as_ref(),
            &Claimant::new(format!("node-{i}"), 1),
            request(&fire, life.generation, LONG),
        )
        .await?;
        tokens.insert(must_win(
            &out,
            &format!("the fire of {name:?} at the same instant"),
        )?);
    }
    ensure_eq!(tokens.len(), names.len(), "distinct tokens");
    for (i, name) in names.iter().enumerate() {
        let items = reg.list_claims(name).await?.items;
        ensure_eq!(items.len(), 1, "claims listed for {name:?}: {items:?}");
        ensure_eq!(
            (items[0].fire.task.as_str(), items[0].node_id.clone()),
            (name.as_str(), format!("node-{i}")),
            "the claim listed for {name:?}"
        );
    }
    reg.mark_deleted("a:b", now_millis()).await?;
    reg.cleanup_task("a").await?;
    // The cleanup ended the life of `a` alone.
    let after = reg.ensure_lives(&wanted).await?;
    for ((name, before), now) in names.iter().zip(&lives).zip(&after) {
        if name == "a" {
            ensure!(
                now.generation > before.generation,
                "cleanup of `a` starts a new life of `a`"
            );
        } else {
            ensure_eq!(*now, *before, "the life of {name:?} after cleanup of `a`");
        }
    }
    for (i, name) in names.iter().enumerate() {
        if name == "a" {
            continue;
        }
        let fire = FireKey::new(name.clone(), at);
        let out = claim_request(
            reg.as_ref(),
            &Claimant::new("late", 1),
            request(&fire, lives[i].generation, LONG),
        )
        .await?;
        if name == "a:b" {
            ensure_eq!(out, ClaimOutcome::Tombstoned, "the tombstoned `a:b`");
        } else {
            ensure!(
                matches!(out, ClaimOutcome::Lost { .. }),
                "{name:?} after `a:b` was tombstoned and `a` cleaned up: expected Lost, got {out:?}"
            );
        }
    }
    Ok(())
}

/// One request that cannot be decided (a name the registry cannot key) fails alone: the call
/// succeeds, the other fires of the batch are won, and the bad one is not.
pub async fn one_bad_request_fails_alone(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let generation = life_of(reg.as_ref(), "good").await?.generation;
    for (round, bad_name) in ["bad/name".to_string(), "x".repeat(300), String::new()]
        .into_iter()
        .enumerate()
    {
        let round = round as i64;
        let good = [
            FireKey::new("good", instant(round * 10_000)),
            FireKey::new("good", instant(round * 10_000 + 1000)),
        ];
        let bad = FireKey::new(bad_name.clone(), instant(0));
        let described = format!(
            "{:?} ({} bytes)",
            bad_name.chars().take(12).collect::<String>(),
            bad_name.len()
        );
        let out = reg
            .claim(
                &Claimant::new("me", 1),
                &[
                    request(&good[0], generation, LONG),
                    request(&bad, generation, LONG),
                    request(&good[1], generation, LONG),
                ],
            )
            .await
            .map_err(|e| {
                CaseError::Failed(format!(
                    "a batch with one bad request {described} failed whole: {e}"
                ))
            })?;
        ensure_eq!(out.len(), 3, "one outcome per request");
        ensure!(
            out[0].is_won() && out[2].is_won(),
            "the good fires of a batch with the bad request {described}: {out:?}"
        );
        ensure!(
            matches!(
                out[1],
                ClaimOutcome::Failed(_) | ClaimOutcome::Superseded { current: None }
            ),
            "the bad request {described}: expected Failed (or Superseded, having no life), got {:?}",
            out[1]
        );
    }
    Ok(())
}

/// A claim ends only with its retention: after `cleanup_task`, a `Force` put, `restart_life`
/// and `cleanup_all`, the fire of the first life still answers `WonEarlier` with its token to
/// its holder and `Lost` naming the holder to anyone else, in every later life, and is listed
/// once with its first generation.
pub async fn claims_survive_new_lives(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let name = "survivor";
    let fire = FireKey::new(name, instant(0));
    let me = Claimant::new("me", 1);
    let first = life_of(reg.as_ref(), name).await?.generation;
    let token = must_win(
        &claim_request(reg.as_ref(), &me, request(&fire, first, LONG)).await?,
        "the fire of the first life",
    )?;
    for what in ["cleanup_task", "Force put", "restart_life", "cleanup_all"] {
        match what {
            "cleanup_task" => reg.cleanup_task(name).await?,
            "Force put" => {
                reg.put_task(&task_meta(name, "@hourly"), PutMode::Force)
                    .await?
            }
            "restart_life" => {
                reg.restart_life(name, now_millis()).await?;
            }
            _ => reg.cleanup_all().await?,
        }
        let generation = life_of(reg.as_ref(), name).await?.generation;
        ensure_eq!(
            claim_request(reg.as_ref(), &me, request(&fire, generation, LONG)).await?,
            ClaimOutcome::WonEarlier { token },
            "the holder, in the life after {what}"
        );
        ensure_eq!(
            claim_request(
                reg.as_ref(),
                &Claimant::new("other", 1),
                request(&fire, generation, LONG)
            )
            .await?,
            ClaimOutcome::Lost {
                holder: Some("me".into())
            },
            "another claimant, in the life after {what}"
        );
        let claims = listed(reg.as_ref(), &fire).await?;
        ensure_eq!(claims.len(), 1, "after {what}: the claim is listed once");
        ensure_eq!(
            (claims[0].token, claims[0].generation),
            (token, first),
            "after {what}: the listed claim keeps its token and generation"
        );
    }
    Ok(())
}
