//! Namespace isolation cases: nothing in one namespace is visible from, or touched by, another.

use std::time::Duration;

use dcron_core::{ClaimOutcome, FireKey, NodeEvent, PutMode, TaskMeta, TaskMetaEvent};
use futures::StreamExt;

use crate::harness::{instant, node_listed, now_millis, CaseContext, CaseError, CaseResult};
use crate::{ensure, ensure_eq};

const LONG: Duration = Duration::from_secs(600);

/// Task records of one namespace are invisible in another, even under the same name.
pub async fn tasks_are_isolated(cx: &CaseContext) -> CaseResult {
    let a = cx.open().await?;
    let b = cx.open_other().await?;
    let in_a = TaskMeta::new("shared-name", "@hourly").with_payload("a");
    a.put_task(&in_a, PutMode::CreateOnly).await?;
    a.put_task(&TaskMeta::new("only-a", "@hourly"), PutMode::CreateOnly)
        .await?;
    ensure_eq!(b.get_task("shared-name").await?, None, "get in B");
    ensure!(b.list_tasks().await?.items.is_empty(), "list in B");
    let in_b = TaskMeta::new("shared-name", "@daily").with_payload("b");
    b.put_task(&in_b, PutMode::CreateOnly).await?;
    ensure_eq!(b.get_task("shared-name").await?, Some(in_b), "B's record");
    ensure_eq!(a.get_task("shared-name").await?, Some(in_a), "A's record");
    ensure_eq!(a.list_tasks().await?.items.len(), 2, "A lists its own two");
    Ok(())
}

/// Tombstones of one namespace are invisible in another and do not block its writes or claims.
pub async fn tombstones_are_isolated(cx: &CaseContext) -> CaseResult {
    let a = cx.open().await?;
    let b = cx.open_other().await?;
    a.mark_deleted("gone-in-a", now_millis()).await?;
    ensure_eq!(b.get_tombstone("gone-in-a").await?, None, "tombstone in B");
    ensure!(
        b.list_tombstones().await?.items.is_empty(),
        "tombstones listed in B"
    );
    b.put_task(&TaskMeta::new("gone-in-a", "@hourly"), PutMode::CreateOnly)
        .await?;
    let out = crate::harness::claim_fires(&*b, "n", &[FireKey::new("gone-in-a", instant(0))], LONG)
        .await?;
    ensure!(
        matches!(out[..], [ClaimOutcome::Won { .. }]),
        "B's fire must be claimable: {out:?}"
    );
    Ok(())
}

/// The same fire is won once in each namespace; claims are listed only in their own.
pub async fn claims_are_isolated(cx: &CaseContext) -> CaseResult {
    let a = cx.open().await?;
    let b = cx.open_other().await?;
    let fire = FireKey::new("both", instant(0));
    let oa = crate::harness::claim_fires(&*a, "n", std::slice::from_ref(&fire), LONG).await?;
    ensure!(b.list_claims("both").await?.items.is_empty(), "claims in B");
    let ob = crate::harness::claim_fires(&*b, "n", std::slice::from_ref(&fire), LONG).await?;
    ensure!(
        oa[0].is_won() && ob[0].is_won(),
        "one win per namespace: {oa:?} {ob:?}"
    );
    b.cleanup_task("both").await?;
    ensure_eq!(
        a.list_claims("both").await?.items.len(),
        1,
        "cleanup in B keeps A's claim"
    );
    Ok(())
}

/// Nodes registered in one namespace are not listed in another.
pub async fn nodes_are_isolated(cx: &CaseContext) -> CaseResult {
    let a = cx.open().await?;
    let b = cx.open_other().await?;
    let node = cx.node("ns-node");
    let lease = a.register(&node, cx.min_ttl() * 10).await?;
    ensure!(node_listed(a.as_ref(), &node.id).await?, "listed in A");
    ensure!(
        !node_listed(b.as_ref(), &node.id).await?,
        "a node of A is listed in B"
    );
    // The same node id may register in B independently.
    let lease_b = b.register(&node, cx.min_ttl() * 10).await?;
    b.unregister(&lease_b).await?;
    ensure!(
        node_listed(a.as_ref(), &node.id).await?,
        "unregistering in B removed the node from A"
    );
    a.keep_alive(&lease).await?;
    a.unregister(&lease).await?;
    Ok(())
}

/// `cleanup_all` in one namespace leaves another namespace's records, tombstones, claims and nodes intact.
pub async fn cleanup_all_stays_in_its_namespace(cx: &CaseContext) -> CaseResult {
    let a = cx.open().await?;
    let b = cx.open_other().await?;
    let node = cx.node("keeper");
    let lease = a.register(&node, cx.min_ttl() * 10).await?;
    for reg in [&a, &b] {
        reg.put_task(&TaskMeta::new("t", "@hourly"), PutMode::CreateOnly)
            .await?;
        reg.mark_deleted("d", now_millis()).await?;
        crate::harness::claim_fires(&**reg, "n", &[FireKey::new("t", instant(0))], LONG)
            .await?;
    }
    b.cleanup_all().await?;
    ensure!(b.list_tasks().await?.items.is_empty(), "B emptied");
    ensure_eq!(a.list_tasks().await?.items.len(), 1, "A's records");
    ensure_eq!(a.list_tombstones().await?.items.len(), 1, "A's tombstones");
    ensure_eq!(a.list_claims("t").await?.items.len(), 1, "A's claims");
    ensure!(node_listed(a.as_ref(), &node.id).await?, "A's node");
    a.unregister(&lease).await?;
    Ok(())
}

/// A watcher in one namespace sees no event caused by writes in another.
pub async fn watches_are_isolated(cx: &CaseContext) -> CaseResult {
    let a = cx.open().await?;
    let b = cx.open_other().await?;
    if !b.capabilities().watch {
        return Err(CaseError::Skipped("capabilities.watch is false".into()));
    }
    let mut tasks_b = b.watch_tasks().await?;
    let mut nodes_b = b.watch_nodes().await?;
    a.put_task(&TaskMeta::new("noisy", "@hourly"), PutMode::CreateOnly)
        .await?;
    a.mark_deleted("noisy", now_millis()).await?;
    let node = cx.node("noisy");
    let lease = a.register(&node, cx.min_ttl() * 10).await?;
    // A marker write in B: every event before it would have come from A.
    b.put_task(&TaskMeta::new("marker", "@hourly"), PutMode::CreateOnly)
        .await?;
    let marker_node = cx.node("marker");
    let lease_b = b.register(&marker_node, cx.min_ttl() * 10).await?;
    let bound = crate::watch::DELIVERY_BOUND;
    // The first event B sees must be its own marker (or a resync).
    match tokio::time::timeout(bound, tasks_b.next()).await {
        Ok(Some(TaskMetaEvent::Put(m))) if m.name == "marker" => {}
        Ok(Some(TaskMetaEvent::Resync)) => {}
        Ok(Some(other)) => {
            return Err(CaseError::Failed(format!(
                "B's task watcher saw an event from A: {other:?}"
            )))
        }
        Ok(None) => return Err(CaseError::Failed("B's task watch ended".into())),
        Err(_) => return Err(CaseError::Failed("B's own write was not delivered".into())),
    }
    match tokio::time::timeout(bound, nodes_b.next()).await {
        Ok(Some(NodeEvent::Put(n))) if n.id == marker_node.id => {}
        Ok(Some(NodeEvent::Resync)) => {}
        Ok(Some(other)) => {
            return Err(CaseError::Failed(format!(
                "B's node watcher saw an event from A: {other:?}"
            )))
        }
        Ok(None) => return Err(CaseError::Failed("B's node watch ended".into())),
        Err(_) => return Err(CaseError::Failed("B's own node was not delivered".into())),
    }
    a.unregister(&lease).await?;
    b.unregister(&lease_b).await?;
    Ok(())
}
