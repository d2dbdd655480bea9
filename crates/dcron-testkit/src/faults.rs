//! Fault cases, run where the factory offers the hooks: server restart and lease expiry.

use std::time::Duration;

use dcron_core::{ClaimOutcome, Error, FireKey, PutMode};

use crate::harness::{
    instant, node_listed, now_millis, reached, CaseContext, CaseError, CaseResult,
};
use crate::{ensure, ensure_eq, ensure_err};

/// How long a restarted server may take to answer again.
pub const RECOVERY_BOUND: Duration = Duration::from_secs(60);

/// After a server restart the registry answers again (polling until `list_tasks` works) and
/// records, tombstones and claims survive.
pub async fn restart_keeps_records(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let m = crate::harness::task_meta("durable", "@hourly").with_payload("kept");
    reg.put_task(&m, PutMode::CreateOnly).await?;
    let at = now_millis();
    reg.mark_deleted("durable-tomb", at).await?;
    let fire = FireKey::new("durable", instant(0));
    let won = crate::harness::claim_fires(
        &*reg,
        "n",
        std::slice::from_ref(&fire),
        Duration::from_secs(600),
    )
    .await?;
    ensure!(won[0].is_won(), "fresh fire: {won:?}");

    cx.restart_server().await?;
    let back = reached(RECOVERY_BOUND, || {
        let reg = reg.clone();
        async move {
            match reg.list_tasks().await {
                Ok(_) => Ok(true),
                Err(e) if e.is_retryable() => Ok(false),
                Err(e) => Err(CaseError::Failed(format!(
                    "while the server restarts, calls must fail with a retryable error, got {e}"
                ))),
            }
        }
    })
    .await?;
    ensure!(
        back,
        "the registry did not answer within {RECOVERY_BOUND:?} of the restart"
    );
    ensure_eq!(
        reg.get_task("durable").await?,
        Some(m),
        "record after restart"
    );
    ensure_eq!(
        reg.get_tombstone("durable-tomb")
            .await?
            .map(|t| t.deleted_at),
        Some(at),
        "tombstone after restart"
    );
    let again = crate::harness::claim_fires(
        &*reg,
        "m",
        std::slice::from_ref(&fire),
        Duration::from_secs(600),
    )
    .await?;
    ensure!(
        matches!(again[0], ClaimOutcome::Lost { .. }),
        "claim after restart: expected Lost, got {:?}",
        again[0]
    );
    Ok(())
}

/// After a server restart a node's lease is either still alive or `LeaseLost`; re-registering brings it back.
pub async fn restart_node_comes_back(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let node = cx.node("survivor");
    let lease = reg.register(&node, cx.min_ttl() * 10).await?;
    cx.restart_server().await?;
    // Whether the old lease survived the restart (set once keep_alive answers).
    let survived = std::sync::atomic::AtomicBool::new(false);
    let answered = reached(RECOVERY_BOUND, || {
        let reg = reg.clone();
        let lease = lease.clone();
        let survived = &survived;
        async move {
            match reg.keep_alive(&lease).await {
                Ok(()) => {
                    survived.store(true, std::sync::atomic::Ordering::Relaxed);
                    Ok(true)
                }
                Err(Error::LeaseLost { .. }) => Ok(true),
                Err(e) if e.is_retryable() => Ok(false),
                Err(e) => Err(CaseError::Failed(format!(
                    "keep_alive after a restart: expected Ok, LeaseLost or a retryable error, got {e}"
                ))),
            }
        }
    })
    .await?;
    ensure!(
        answered,
        "keep_alive did not answer within {RECOVERY_BOUND:?} of the restart"
    );
    let lease = if survived.load(std::sync::atomic::Ordering::Relaxed) {
        lease
    } else {
        let new = reg.register(&node, cx.min_ttl() * 10).await?;
        ensure!(
            new.id != lease.id,
            "re-registration must get a new lease id"
        );
        new
    };
    ensure!(
        node_listed(reg.as_ref(), &node.id).await?,
        "node listed after recovery"
    );
    reg.unregister(&lease).await?;
    Ok(())
}

/// An expired session answers `LeaseLost` to keep-alive, the node disappears, and re-registering brings it back.
pub async fn expired_lease_then_reregister(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let observer = cx.open().await?;
    let node = cx.node("expired");
    let lease = reg.register(&node, cx.min_ttl() * 10).await?;
    cx.expire_lease(&lease).await?;
    let lost = reached(cx.expiry_slack() + Duration::from_secs(1), || {
        let reg = reg.clone();
        let lease = lease.clone();
        async move {
            match reg.keep_alive(&lease).await {
                Ok(()) => Ok(false),
                Err(Error::LeaseLost { .. }) => Ok(true),
                Err(e) => Err(e.into()),
            }
        }
    })
    .await?;
    ensure!(
        lost,
        "keep_alive still succeeds after the lease was expired"
    );
    let gone = reached(cx.expiry_slack() + Duration::from_secs(1), || {
        let observer = observer.clone();
        let id = node.id.clone();
        async move { Ok(!node_listed(observer.as_ref(), &id).await?) }
    })
    .await?;
    ensure!(gone, "the node of an expired lease is still listed");
    ensure_err!(
        reg.update_node(&lease, &node).await,
        Error::LeaseLost { .. },
        "update_node on the expired lease"
    );
    let new = reg.register(&node, cx.min_ttl() * 10).await?;
    ensure!(
        new.id != lease.id,
        "re-registration must get a new lease id"
    );
    ensure!(
        node_listed(observer.as_ref(), &node.id).await?,
        "node back after re-registering"
    );
    reg.keep_alive(&new).await?;
    reg.unregister(&new).await?;
    Ok(())
}
