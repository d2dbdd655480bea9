//! Namespace isolation cases: nothing in one namespace is visible from, or touched by, another.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use dcron_core::{ClaimOutcome, FireKey, NodeEvent, PutMode, Registry, TaskMetaEvent};
use futures::StreamExt;

use crate::harness::{
    instant, node_listed, now_millis, task_meta, CaseContext, CaseError, CaseResult,
};
use crate::{ensure, ensure_eq};

const LONG: Duration = Duration::from_secs(600);

/// Task records of one namespace are invisible in another, even under the same name.
pub async fn tasks_are_isolated(cx: &CaseContext) -> CaseResult {
    let a = cx.open().await?;
    let b = cx.open_other().await?;
    let in_a = crate::harness::task_meta("shared-name", "@hourly").with_payload("a");
    a.put_task(&in_a, PutMode::CreateOnly).await?;
    a.put_task(
        &crate::harness::task_meta("only-a", "@hourly"),
        PutMode::CreateOnly,
    )
    .await?;
    ensure_eq!(b.get_task("shared-name").await?, None, "get in B");
    ensure!(b.list_tasks().await?.items.is_empty(), "list in B");
    let in_b = crate::harness::task_meta("shared-name", "@daily").with_payload("b");
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
    b.put_task(
        &crate::harness::task_meta("gone-in-a", "@hourly"),
        PutMode::CreateOnly,
    )
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
        reg.put_task(
            &crate::harness::task_meta("t", "@hourly"),
            PutMode::CreateOnly,
        )
        .await?;
        reg.mark_deleted("d", now_millis()).await?;
        crate::harness::claim_fires(&**reg, "n", &[FireKey::new("t", instant(0))], LONG).await?;
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

/// Suffixes of the namespaces that extend the case's namespace in the prefix cases: a backend
/// that maps namespace `ns` to a key prefix must keep `ns-x`, `ns/tasks`, `ns:tasks` and
/// `ns.tasks` apart from `ns` and from each other.
pub const DERIVED_SUFFIXES: [&str; 4] = ["-x", "/tasks", ":tasks", ".tasks"];

/// The case's namespace, its other namespace and every derived namespace the factory accepts,
/// each with a label.
async fn namespace_family(cx: &CaseContext) -> Result<Vec<(String, Arc<dyn Registry>)>, CaseError> {
    let mut family = vec![
        ("ns".to_string(), cx.open().await?),
        ("ns-b".to_string(), cx.open_other().await?),
    ];
    for suffix in DERIVED_SUFFIXES {
        if let Some(reg) = cx.open_derived(suffix).await? {
            family.push((format!("ns{suffix}"), reg));
        }
    }
    Ok(family)
}

/// Namespaces whose names extend one another (`ns`, `ns-b`, `ns-x`, `ns/tasks`, `ns:tasks`,
/// `ns.tasks`) see only their own records, tombstones, lives, claims and nodes, from both sides;
/// `cleanup_all` in one leaves the others.
pub async fn prefix_namespaces_are_isolated(cx: &CaseContext) -> CaseResult {
    let family = namespace_family(cx).await?;
    let mut nodes = Vec::new();
    for (i, (label, reg)) in family.iter().enumerate() {
        let mut meta = task_meta("t", "@hourly").with_payload(label.clone());
        // The record's creation starts the life: a distinct live-since per namespace.
        meta.created_at = Some(instant(i as i64 * 1000));
        reg.put_task(&meta, PutMode::CreateOnly).await?;
        reg.mark_deleted(&format!("d-{i}"), now_millis()).await?;
        reg.ensure_lives(&[("t".to_string(), instant(i as i64 * 1000))])
            .await?;
        let won = crate::harness::claim_fires(
            &**reg,
            &format!("n-{i}"),
            &[FireKey::new("t", instant(0))],
            LONG,
        )
        .await?;
        ensure!(
            matches!(won[..], [ClaimOutcome::Won { .. }]),
            "{label}: the fire of `t` is won once in each namespace: {won:?}"
        );
        let node = cx.node(&format!("n{i}"));
        let lease = reg.register(&node, cx.min_ttl() * 30).await?;
        nodes.push((node.id, lease));
    }
    let check = |skip_cleaned: usize| {
        let family = &family;
        let nodes = &nodes;
        async move {
            for (i, (label, reg)) in family.iter().enumerate() {
                if i < skip_cleaned {
                    continue;
                }
                let tasks: Vec<String> = reg
                    .list_tasks()
                    .await?
                    .items
                    .into_iter()
                    .map(|m| m.payload)
                    .collect();
                ensure_eq!(tasks, vec![label.clone()], "{label}: listed task records");
                let tombs: Vec<String> = reg
                    .list_tombstones()
                    .await?
                    .items
                    .into_iter()
                    .map(|t| t.name)
                    .collect();
                ensure_eq!(tombs, vec![format!("d-{i}")], "{label}: listed tombstones");
                let claims: Vec<String> = reg
                    .list_claims("t")
                    .await?
                    .items
                    .into_iter()
                    .map(|c| c.node_id)
                    .collect();
                ensure_eq!(claims, vec![format!("n-{i}")], "{label}: listed claims");
                let life = reg
                    .ensure_lives(&[("t".to_string(), instant(999_000))])
                    .await?;
                ensure_eq!(
                    life.first().map(|l| l.live_since),
                    Some(instant(i as i64 * 1000)),
                    "{label}: the life of `t`"
                );
                let ids: Vec<String> = reg
                    .list_nodes()
                    .await?
                    .items
                    .into_iter()
                    .map(|n| n.id)
                    .collect();
                ensure_eq!(ids, vec![nodes[i].0.clone()], "{label}: listed nodes");
            }
            Ok::<_, CaseError>(())
        }
    };
    check(0).await?;
    // Cleaning the shortest name first: a prefix-matching cleanup would take the others along.
    family[0].1.cleanup_all().await?;
    ensure!(
        family[0].1.list_tasks().await?.items.is_empty(),
        "cleanup_all empties its own namespace"
    );
    check(1).await?;
    for (i, (_, reg)) in family.iter().enumerate() {
        reg.unregister(&nodes[i].1).await?;
    }
    Ok(())
}

/// A watcher sees no task or node event caused by writes in another namespace, from both sides,
/// including namespaces whose names extend its own (`ns`, `ns-b`, `ns-x`, `ns/tasks`, …).
pub async fn watches_are_isolated(cx: &CaseContext) -> CaseResult {
    let family = namespace_family(cx).await?;
    let mut watches = Vec::new();
    for (_, reg) in &family {
        watches.push((reg.watch_tasks().await?, reg.watch_nodes().await?));
    }
    let mut leases = Vec::new();
    let mut own_nodes: Vec<BTreeSet<String>> = Vec::new();
    for (i, (_, reg)) in family.iter().enumerate() {
        let name = format!("noisy-{i}");
        reg.put_task(&task_meta(&name, "@hourly"), PutMode::CreateOnly)
            .await?;
        reg.mark_deleted(&name, now_millis()).await?;
        let node = cx.node(&format!("noisy{i}"));
        leases.push((i, reg.register(&node, cx.min_ttl() * 30).await?));
        own_nodes.push(BTreeSet::from([node.id]));
    }
    // Every event arriving within the delivery bound after the writes must be the watcher's own.
    let until = tokio::time::Instant::now() + crate::watch::DELIVERY_BOUND;
    for (i, (tasks, nodes)) in watches.iter_mut().enumerate() {
        let label = &family[i].0;
        let own = format!("noisy-{i}");
        let mut saw_own = false;
        while let Ok(event) = tokio::time::timeout_at(until, tasks.next()).await {
            match event {
                Some(TaskMetaEvent::Put(m)) if m.name == own => saw_own = true,
                Some(TaskMetaEvent::Tombstoned(t)) if t.name == own => saw_own = true,
                Some(TaskMetaEvent::Resync) => saw_own = true,
                Some(other) => {
                    return Err(CaseError::Failed(format!(
                        "the task watcher of {label} saw an event of another namespace: {other:?}"
                    )))
                }
                None => return Err(CaseError::Failed(format!("{label}: the task watch ended"))),
            }
        }
        ensure!(saw_own, "{label}: its own task events were not delivered");
        let mut saw_own = false;
        while let Ok(event) = tokio::time::timeout_at(until, nodes.next()).await {
            match event {
                Some(NodeEvent::Put(n)) if own_nodes[i].contains(&n.id) => saw_own = true,
                Some(NodeEvent::Resync) => saw_own = true,
                Some(other) => {
                    return Err(CaseError::Failed(format!(
                        "the node watcher of {label} saw an event of another namespace: {other:?}"
                    )))
                }
                None => return Err(CaseError::Failed(format!("{label}: the node watch ended"))),
            }
        }
        ensure!(saw_own, "{label}: its own node events were not delivered");
    }
    for (i, lease) in leases {
        family[i].1.unregister(&lease).await?;
    }
    Ok(())
}
