//! Life cases: the durable live-since and generation of every task name (DESIGN §2), which
//! `ensure_lives` creates once, create-only and force writes and `restart_life` renew, and
//! cleanup removes. They need [`dcron_core::Capabilities::exactly_once`].

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dcron_core::{ClaimOutcome, ClaimRequest, Claimant, Error, FireKey, Life, PutMode, Registry};
use futures::future::join_all;

use crate::harness::{instant, now_millis, task_meta, CaseContext, CaseError, CaseResult};
use crate::{ensure, ensure_eq, ensure_err};

const LONG: Duration = Duration::from_secs(600);

/// The life of one name, starting it at `at` when there is none.
async fn ensure_one(reg: &dyn Registry, name: &str, at: DateTime<Utc>) -> Result<Life, CaseError> {
    let lives = reg.ensure_lives(&[(name.to_string(), at)]).await?;
    ensure_eq!(lives.len(), 1, "ensure_lives of one name answers one life");
    Ok(lives[0])
}

/// Claims `fire` in `generation` as node `node`.
async fn claim(
    reg: &dyn Registry,
    node: &str,
    fire: &FireKey,
    generation: u64,
) -> Result<ClaimOutcome, CaseError> {
    let out = reg
        .claim(
            &Claimant::new(node, 1),
            &[ClaimRequest::new(
                fire.clone(),
                generation,
                fire.instant + chrono::Duration::days(1),
                LONG,
            )],
        )
        .await?;
    ensure_eq!(out.len(), 1, "one request, one outcome");
    Ok(out[0].clone())
}

/// An instant `s` seconds after [`instant`]`(0)`.
fn at(s: i64) -> DateTime<Utc> {
    instant(s * 1000)
}

/// `ensure_lives` starts a life once (a non-zero generation, live-since the given instant),
/// answers it again with its first live-since whatever instant is given later, from any
/// client, and answers a batch in order.
pub async fn ensure_lives_creates_once(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let other = cx.open().await?;
    let first = ensure_one(reg.as_ref(), "static", at(10)).await?;
    ensure!(
        first.generation > 0,
        "a stored life has a non-zero generation"
    );
    ensure_eq!(first.live_since, at(10), "live-since of a new life");
    for (client, t) in [(&reg, at(20)), (&other, at(5)), (&other, at(10))] {
        ensure_eq!(
            ensure_one(client.as_ref(), "static", t).await?,
            first,
            "the life answered again (asked with {t})"
        );
    }
    let names = ["b-new", "static", "c-new", "b-new"];
    let batch: Vec<(String, DateTime<Utc>)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.to_string(), at(100 + i as i64)))
        .collect();
    let lives = other.ensure_lives(&batch).await?;
    ensure_eq!(lives.len(), names.len(), "one life per name, in order");
    ensure_eq!(lives[1], first, "an existing life in a batch");
    ensure_eq!(lives[0].live_since, at(100), "b-new's live-since");
    ensure_eq!(lives[2].live_since, at(102), "c-new's live-since");
    ensure_eq!(lives[3], lives[0], "a name twice in a batch gets one life");
    ensure!(
        lives[0].generation > 0 && lives[2].generation > 0,
        "stored lives have non-zero generations: {lives:?}"
    );
    Ok(())
}

/// Eight clients racing to start the life of one name all get the same life, with one of the
/// instants they gave.
pub async fn racing_clients_get_the_same_life(cx: &CaseContext) -> CaseResult {
    let mut calls = Vec::new();
    let mut instants = BTreeSet::new();
    for i in 0..8i64 {
        let reg = cx.open().await?;
        let t = at(i);
        instants.insert(t);
        calls.push(tokio::spawn(async move {
            reg.ensure_lives(&[("raced".to_string(), t)]).await
        }));
    }
    let mut lives = Vec::new();
    for call in join_all(calls).await {
        let out = call.map_err(|e| CaseError::Failed(format!("task failed: {e}")))??;
        ensure_eq!(out.len(), 1, "one life per name");
        lives.push(out[0]);
    }
    let distinct: BTreeSet<(u64, DateTime<Utc>)> =
        lives.iter().map(|l| (l.generation, l.live_since)).collect();
    ensure_eq!(
        distinct.len(),
        1,
        "every racer gets the same life: {lives:?}"
    );
    ensure!(
        instants.contains(&lives[0].live_since),
        "the life's live-since {} is none of the given instants",
        lives[0].live_since
    );
    Ok(())
}

/// A tombstoned name gets a life too (tombstones are separate), and its claims stay
/// `Tombstoned`.
pub async fn tombstoned_name_gets_a_life(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    reg.mark_deleted("gone", now_millis()).await?;
    let life = ensure_one(reg.as_ref(), "gone", at(1)).await?;
    ensure!(life.generation > 0, "a life for a tombstoned name");
    ensure_eq!(life.live_since, at(1), "its live-since");
    let out = claim(
        reg.as_ref(),
        "n",
        &FireKey::new("gone", at(2)),
        life.generation,
    )
    .await?;
    ensure_eq!(
        out,
        ClaimOutcome::Tombstoned,
        "a claim of the tombstoned name"
    );
    Ok(())
}

/// Create-only and force puts start a new life at `meta.created_at` with a greater generation
/// (a missing `created_at` is `InvalidArgument`); requests of the earlier life are
/// `Superseded`, and a fire claimed in it stays claimed.
pub async fn create_and_force_start_a_new_life(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let mut bare = task_meta("no-created-at", "@hourly");
    bare.created_at = None;
    ensure_err!(
        reg.put_task(&bare, PutMode::CreateOnly).await,
        Error::InvalidArgument(_),
        "create-only without created_at"
    );
    ensure_err!(
        reg.put_task(&bare, PutMode::Force).await,
        Error::InvalidArgument(_),
        "force without created_at"
    );
    ensure_eq!(
        reg.get_task("no-created-at").await?,
        None,
        "nothing written without created_at"
    );
    // A static life first, then a dynamic record over it.
    let before = ensure_one(reg.as_ref(), "dyn", at(1)).await?;
    let mut meta = task_meta("dyn", "@hourly");
    meta.created_at = Some(at(50));
    reg.put_task(&meta, PutMode::CreateOnly).await?;
    let created = ensure_one(reg.as_ref(), "dyn", at(99)).await?;
    ensure!(
        created.generation > before.generation,
        "create-only: generation {} must exceed {}",
        created.generation,
        before.generation
    );
    ensure_eq!(
        created.live_since,
        at(50),
        "create-only: live-since is created_at"
    );
    let fire = FireKey::new("dyn", at(60));
    ensure!(
        claim(reg.as_ref(), "a", &fire, created.generation)
            .await?
            .is_won(),
        "a fire of the created life"
    );
    let mut forced = meta.clone().with_payload("forced");
    forced.created_at = Some(at(70));
    reg.put_task(&forced, PutMode::Force).await?;
    let after = ensure_one(reg.as_ref(), "dyn", at(99)).await?;
    ensure!(
        after.generation > created.generation,
        "force: generation {} must exceed {}",
        after.generation,
        created.generation
    );
    ensure_eq!(
        after.live_since,
        at(70),
        "force: live-since is the new created_at"
    );
    ensure_eq!(
        claim(reg.as_ref(), "a", &fire, created.generation).await?,
        ClaimOutcome::Superseded {
            current: Some(after.generation)
        },
        "a claim of the earlier life after force"
    );
    ensure_eq!(
        claim(reg.as_ref(), "b", &fire, after.generation).await?,
        ClaimOutcome::Lost {
            holder: Some("a".into())
        },
        "the same instant in the new life: still claimed (claims end with their retention)"
    );
    ensure!(
        claim(
            reg.as_ref(),
            "b",
            &FireKey::new("dyn", at(80)),
            after.generation
        )
        .await?
        .is_won(),
        "a new instant in the new life"
    );
    Ok(())
}

/// `Update`, `mark_deleted` and `clear_tombstone` keep the life, and `clear_tombstone` keeps
/// the claims.
pub async fn update_and_tombstones_keep_the_life(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let meta = task_meta("kept", "@hourly");
    reg.put_task(&meta, PutMode::CreateOnly).await?;
    let life = ensure_one(reg.as_ref(), "kept", at(1)).await?;
    let fire = FireKey::new("kept", at(2));
    ensure!(
        claim(reg.as_ref(), "a", &fire, life.generation)
            .await?
            .is_won(),
        "a fire of the life"
    );
    reg.put_task(&meta.clone().with_payload("v2"), PutMode::Update)
        .await?;
    ensure_eq!(
        ensure_one(reg.as_ref(), "kept", at(3)).await?,
        life,
        "after Update"
    );
    reg.mark_deleted("kept", now_millis()).await?;
    ensure_eq!(
        ensure_one(reg.as_ref(), "kept", at(4)).await?,
        life,
        "after mark_deleted"
    );
    reg.clear_tombstone("kept").await?;
    ensure_eq!(
        ensure_one(reg.as_ref(), "kept", at(5)).await?,
        life,
        "after clear_tombstone"
    );
    let out = claim(reg.as_ref(), "b", &fire, life.generation).await?;
    ensure!(
        matches!(out, ClaimOutcome::Lost { .. }),
        "clear_tombstone keeps the claims: expected Lost, got {out:?}"
    );
    Ok(())
}

/// `cleanup_task` removes the life: the next `ensure_lives` starts a new one with a greater
/// generation at its own instant.
pub async fn cleanup_removes_the_life(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let old = ensure_one(reg.as_ref(), "recycled", at(1)).await?;
    reg.cleanup_task("recycled").await?;
    let new = ensure_one(reg.as_ref(), "recycled", at(9)).await?;
    ensure!(
        new.generation > old.generation,
        "after cleanup: generation {} must exceed {}",
        new.generation,
        old.generation
    );
    ensure_eq!(
        new.live_since,
        at(9),
        "after cleanup: live-since of the new life"
    );
    Ok(())
}

/// `restart_life` starts a new life at its instant with a greater generation, clears the
/// tombstone, and keeps the record and the claims.
pub async fn restart_life_starts_a_new_life(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let meta = task_meta("reborn", "@hourly").with_payload("kept");
    reg.put_task(&meta, PutMode::CreateOnly).await?;
    let old = ensure_one(reg.as_ref(), "reborn", at(1)).await?;
    let fire = FireKey::new("reborn", at(2));
    ensure!(
        claim(reg.as_ref(), "a", &fire, old.generation)
            .await?
            .is_won(),
        "a fire of the first life"
    );
    reg.mark_deleted("reborn", now_millis()).await?;
    let new = reg.restart_life("reborn", at(40)).await?;
    ensure!(
        new.generation > old.generation,
        "restart_life: generation {} must exceed {}",
        new.generation,
        old.generation
    );
    ensure_eq!(new.live_since, at(40), "restart_life: live-since");
    ensure_eq!(
        ensure_one(reg.as_ref(), "reborn", at(99)).await?,
        new,
        "ensure_lives after restart_life"
    );
    ensure_eq!(
        reg.get_tombstone("reborn").await?,
        None,
        "tombstone cleared"
    );
    ensure_eq!(
        reg.list_claims("reborn").await?.items.len(),
        1,
        "claims kept (they end with their retention)"
    );
    ensure_eq!(reg.get_task("reborn").await?, Some(meta), "record kept");
    ensure_eq!(
        claim(reg.as_ref(), "b", &fire, old.generation).await?,
        ClaimOutcome::Superseded {
            current: Some(new.generation)
        },
        "a claim of the earlier life"
    );
    ensure_eq!(
        claim(reg.as_ref(), "b", &fire, new.generation).await?,
        ClaimOutcome::Lost {
            holder: Some("a".into())
        },
        "the same instant in the new life: still claimed"
    );
    ensure!(
        claim(
            reg.as_ref(),
            "b",
            &FireKey::new("reborn", at(50)),
            new.generation
        )
        .await?
        .is_won(),
        "a new instant in the new life"
    );
    let again = reg.restart_life("reborn", at(80)).await?;
    ensure!(
        again.generation > new.generation,
        "a second restart_life: generation {} must exceed {}",
        again.generation,
        new.generation
    );
    let fresh = reg.restart_life("never-seen", at(3)).await?;
    ensure!(
        fresh.generation > 0,
        "restart_life of a name without a life"
    );
    Ok(())
}

/// `cleanup_all` removes every life of the namespace: later lives have greater generations and
/// their own live-since.
pub async fn cleanup_all_removes_lives(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let names: Vec<(String, DateTime<Utc>)> = (0..5).map(|i| (format!("all-{i}"), at(i))).collect();
    let before = reg.ensure_lives(&names).await?;
    reg.cleanup_all().await?;
    let later: Vec<(String, DateTime<Utc>)> =
        (0..5).map(|i| (format!("all-{i}"), at(100 + i))).collect();
    let after = reg.ensure_lives(&later).await?;
    ensure_eq!(after.len(), 5, "one life per name");
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        ensure!(
            a.generation > b.generation,
            "all-{i}: generation {} after cleanup_all must exceed {}",
            a.generation,
            b.generation
        );
        ensure_eq!(a.live_since, at(100 + i as i64), "all-{i}: live-since");
    }
    Ok(())
}

/// A life of one namespace is invisible in another: each namespace starts its own, and
/// restarting one leaves the other.
pub async fn lives_are_per_namespace(cx: &CaseContext) -> CaseResult {
    let a = cx.open().await?;
    let b = cx.open_other().await?;
    let in_a = ensure_one(a.as_ref(), "shared", at(1)).await?;
    let in_b = ensure_one(b.as_ref(), "shared", at(2)).await?;
    ensure_eq!(in_b.live_since, at(2), "B starts its own life");
    b.restart_life("shared", at(3)).await?;
    ensure_eq!(
        ensure_one(a.as_ref(), "shared", at(4)).await?,
        in_a,
        "A's life after restart_life in B"
    );
    b.cleanup_all().await?;
    ensure_eq!(
        ensure_one(a.as_ref(), "shared", at(5)).await?,
        in_a,
        "A's life after cleanup_all in B"
    );
    let fire = FireKey::new("shared", at(10));
    ensure!(
        claim(a.as_ref(), "n", &fire, in_a.generation)
            .await?
            .is_won(),
        "A's fire in A's generation"
    );
    Ok(())
}
