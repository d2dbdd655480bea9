//! Membership cases: registration, leases, keep-alive, expiry, status updates, unregistering.

use std::time::Duration;

use chrono::TimeZone;
use dcron_core::{expiry_tolerance, Error, NodeStatus, Registry};
use tokio::time::Instant;

use crate::harness::{holds_until, node_listed, reached, CaseContext, CaseResult};
use crate::{ensure, ensure_eq, ensure_err};

/// A TTL long enough to outlive any case.
const LONG_TTL: Duration = Duration::from_secs(600);

/// Waits until the node is gone from the list, within the expiry bound.
async fn gone_within(
    reg: &dyn Registry,
    id: &str,
    within: Duration,
) -> Result<bool, crate::CaseError> {
    reached(within, || async move { Ok(!node_listed(reg, id).await?) }).await
}

/// A fresh namespace lists no nodes.
pub async fn fresh_namespace_lists_no_nodes(cx: &CaseContext) -> CaseResult {
    let listing = cx.open().await?.list_nodes().await?;
    ensure!(
        listing.items.is_empty() && listing.corrupt.is_empty(),
        "fresh namespace must list no nodes: {listing:?}"
    );
    Ok(())
}

/// A registered node is listed at once (from another client too) with the record it registered.
pub async fn register_then_list(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let observer = cx.open().await?;
    let mut node = cx.node("listed");
    node.name = Some("web-1".into());
    node.ip = "10.0.0.7".into();
    node.hostname = "host-a".into();
    node.weight = 3;
    let lease = reg.register(&node, cx.min_ttl() * 10).await?;
    ensure_eq!(lease.node_id, node.id, "lease names the node");
    ensure!(!lease.id.is_empty(), "lease id must not be empty");
    let listed = observer.list_nodes().await?;
    let found: Vec<_> = listed.items.iter().filter(|n| n.id == node.id).collect();
    ensure_eq!(found.len(), 1, "the node is listed once");
    ensure_eq!(
        *found[0],
        node,
        "the listed record equals the registered one"
    );
    reg.unregister(&lease).await?;
    Ok(())
}

/// Every field of a node record round-trips, including weight 0 and odd strings.
pub async fn node_record_round_trips(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let mut node = cx.node("fields");
    node.name = Some("ünïcode: name with spaces".into());
    node.ip = "::1".into();
    node.hostname = "h.example".into();
    node.weight = 0;
    node.status = NodeStatus::Leaving;
    node.create_time = chrono::Utc
        .timestamp_millis_opt(1_700_000_000_123)
        .single()
        .unwrap_or_default();
    let lease = reg.register(&node, cx.min_ttl() * 10).await?;
    let listed = reg.list_nodes().await?;
    let found = listed.items.iter().find(|n| n.id == node.id);
    ensure_eq!(found, Some(&node), "listed record");
    reg.unregister(&lease).await?;
    Ok(())
}

/// Two nodes registered by two clients are both listed by a third.
pub async fn two_nodes_listed(cx: &CaseContext) -> CaseResult {
    let (a, b, observer) = (cx.open().await?, cx.open().await?, cx.open().await?);
    let (na, nb) = (cx.node("a"), cx.node("b"));
    let ttl = cx.min_ttl() * 10;
    let la = a.register(&na, ttl).await?;
    let lb = b.register(&nb, ttl).await?;
    let mut ids: Vec<String> = observer
        .list_nodes()
        .await?
        .items
        .into_iter()
        .map(|n| n.id)
        .collect();
    ids.sort();
    let mut expected = vec![na.id.clone(), nb.id.clone()];
    expected.sort();
    ensure_eq!(ids, expected, "listed node ids");
    a.unregister(&la).await?;
    let ids: Vec<String> = observer
        .list_nodes()
        .await?
        .items
        .into_iter()
        .map(|n| n.id)
        .collect();
    ensure_eq!(ids, vec![nb.id.clone()], "after unregistering a");
    b.unregister(&lb).await?;
    Ok(())
}

/// A zero TTL is refused with `InvalidArgument` and nothing is registered.
pub async fn zero_ttl_refused(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let node = cx.node("zero");
    ensure_err!(
        reg.register(&node, Duration::ZERO).await,
        Error::InvalidArgument(_),
        "register with a zero TTL"
    );
    ensure!(
        !node_listed(reg.as_ref(), &node.id).await?,
        "a refused registration must not be listed"
    );
    Ok(())
}

/// A node that stops keeping alive disappears by itself within TTL + slack.
pub async fn expires_without_keep_alive(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let observer = cx.open().await?;
    let node = cx.node("mortal");
    let started = Instant::now();
    reg.register(&node, cx.min_ttl()).await?;
    ensure!(
        node_listed(observer.as_ref(), &node.id).await?,
        "listed right after register"
    );
    let gone = gone_within(observer.as_ref(), &node.id, cx.expiry_bound()).await?;
    ensure!(
        gone,
        "node still listed {:?} after registering with TTL {:?}",
        started.elapsed(),
        cx.min_ttl()
    );
    Ok(())
}

/// Keep-alives keep a node listed well past its TTL; it expires once they stop.
pub async fn keep_alive_extends_life(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let observer = cx.open().await?;
    let node = cx.node("kept");
    let ttl = cx.min_ttl();
    let lease = reg.register(&node, ttl).await?;
    let until = Instant::now() + ttl * 2 + cx.expiry_slack();
    while Instant::now() < until {
        reg.keep_alive(&lease).await?;
        ensure!(
            node_listed(observer.as_ref(), &node.id).await?,
            "a kept-alive node must stay listed"
        );
        tokio::time::sleep(ttl / 4).await;
    }
    reg.keep_alive(&lease).await?;
    let gone = gone_within(observer.as_ref(), &node.id, cx.expiry_bound()).await?;
    ensure!(gone, "node still listed after keep-alives stopped");
    Ok(())
}

/// `keep_alive` on an expired lease answers `LeaseLost`.
pub async fn keep_alive_after_expiry_is_lease_lost(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let node = cx.node("late");
    let lease = reg.register(&node, cx.min_ttl()).await?;
    ensure!(
        gone_within(reg.as_ref(), &node.id, cx.expiry_bound()).await?,
        "node did not expire"
    );
    ensure_err!(
        reg.keep_alive(&lease).await,
        Error::LeaseLost { .. },
        "keep_alive after expiry"
    );
    ensure!(
        !node_listed(reg.as_ref(), &node.id).await?,
        "a failed keep_alive must not bring the node back"
    );
    Ok(())
}

/// `update_node` changes the record but keeps the lease: the node still expires when not kept alive.
pub async fn update_node_keeps_the_lease(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let observer = cx.open().await?;
    let mut node = cx.node("updated");
    let lease = reg.register(&node, cx.min_ttl()).await?;
    node.status = NodeStatus::Working;
    node.weight = 5;
    reg.update_node(&lease, &node).await?;
    let listed = observer.list_nodes().await?;
    let found = listed.items.iter().find(|n| n.id == node.id);
    ensure_eq!(found, Some(&node), "record after update_node");
    // Update again right away (a heartbeat rewriting the record must not detach it either).
    node.status = NodeStatus::Leaving;
    reg.update_node(&lease, &node).await?;
    let gone = gone_within(observer.as_ref(), &node.id, cx.expiry_bound()).await?;
    ensure!(
        gone,
        "an updated node must still expire when keep-alives stop (record detached from its lease?)"
    );
    Ok(())
}

/// `update_node` after expiry answers `LeaseLost` and does not recreate the record.
pub async fn update_node_after_expiry_is_lease_lost(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let mut node = cx.node("zombie");
    let lease = reg.register(&node, cx.min_ttl()).await?;
    ensure!(
        gone_within(reg.as_ref(), &node.id, cx.expiry_bound()).await?,
        "node did not expire"
    );
    node.status = NodeStatus::Working;
    ensure_err!(
        reg.update_node(&lease, &node).await,
        Error::LeaseLost { .. },
        "update_node after expiry"
    );
    ensure!(
        !node_listed(reg.as_ref(), &node.id).await?,
        "update_node after expiry must not recreate the node"
    );
    Ok(())
}

/// `unregister` removes the node at once and is idempotent (twice, and after expiry, is `Ok`).
pub async fn unregister_removes_and_is_idempotent(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let observer = cx.open().await?;
    let node = cx.node("leaving");
    let lease = reg.register(&node, cx.min_ttl() * 10).await?;
    reg.unregister(&lease).await?;
    ensure!(
        !node_listed(observer.as_ref(), &node.id).await?,
        "unregistered node still listed"
    );
    reg.unregister(&lease).await?;
    ensure_err!(
        reg.keep_alive(&lease).await,
        Error::LeaseLost { .. },
        "keep_alive after unregister"
    );
    let short = cx.node("expired");
    let lease = reg.register(&short, cx.min_ttl()).await?;
    ensure!(
        gone_within(reg.as_ref(), &short.id, cx.expiry_bound()).await?,
        "node did not expire"
    );
    reg.unregister(&lease).await?;
    Ok(())
}

/// Re-registering after expiry gets a new lease id and the node is listed again.
pub async fn reregister_after_expiry(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let node = cx.node("phoenix");
    let old = reg.register(&node, cx.min_ttl()).await?;
    ensure!(
        gone_within(reg.as_ref(), &node.id, cx.expiry_bound()).await?,
        "node did not expire"
    );
    let new = reg.register(&node, cx.min_ttl() * 10).await?;
    ensure!(
        new.id != old.id,
        "a new registration must get a new lease id"
    );
    ensure!(
        node_listed(reg.as_ref(), &node.id).await?,
        "re-registered node must be listed"
    );
    reg.keep_alive(&new).await?;
    ensure_err!(
        reg.keep_alive(&old).await,
        Error::LeaseLost { .. },
        "keep_alive on the old lease"
    );
    reg.unregister(&new).await?;
    Ok(())
}

/// Registering a live node id again replaces the record: listed once, the old lease is lost.
pub async fn reregister_replaces_the_old_lease(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let mut node = cx.node("twice");
    let ttl = cx.min_ttl() * 10;
    let old = reg.register(&node, ttl).await?;
    node.weight = 9;
    let new = reg.register(&node, ttl).await?;
    ensure!(
        new.id != old.id,
        "a new registration must get a new lease id"
    );
    let listed = reg.list_nodes().await?;
    let found: Vec<_> = listed.items.iter().filter(|n| n.id == node.id).collect();
    ensure_eq!(found.len(), 1, "the node is listed once");
    ensure_eq!(found[0].weight, 9, "the newer record wins");
    reg.keep_alive(&new).await?;
    ensure_err!(
        reg.keep_alive(&old).await,
        Error::LeaseLost { .. },
        "keep_alive on the replaced lease"
    );
    reg.unregister(&new).await?;
    Ok(())
}

/// Keep-alives and status updates racing for twice the TTL keep the node listed, and it still
/// expires once both stop (no update detaches the record from its lease).
pub async fn keep_alive_and_update_race_keeps_the_lease(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    // Leases are used through the handle that registered them (a ZooKeeper lease is that
    // handle's session); the race is between two tasks sharing it, as in the node driver.
    let updater = reg.clone();
    let observer = cx.open().await?;
    let mut node = cx.node("busy");
    let ttl = cx.min_ttl();
    let lease = reg.register(&node, ttl).await?;
    let until = Instant::now() + ttl * 2;
    let keeper = {
        let reg = reg.clone();
        let lease = lease.clone();
        tokio::spawn(async move {
            while Instant::now() < until {
                reg.keep_alive(&lease).await?;
                tokio::time::sleep(ttl / 5).await;
            }
            Ok::<_, Error>(())
        })
    };
    let mut flips = 0u32;
    while Instant::now() < until {
        node.status = if flips % 2 == 0 {
            NodeStatus::Working
        } else {
            NodeStatus::Starting
        };
        node.last_alive = crate::harness::now_millis();
        updater.update_node(&lease, &node).await?;
        flips += 1;
        ensure!(
            node_listed(observer.as_ref(), &node.id).await?,
            "node vanished while kept alive and updated"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    keeper
        .await
        .map_err(|e| crate::CaseError::Failed(format!("keeper failed: {e}")))??;
    let gone = gone_within(observer.as_ref(), &node.id, cx.expiry_bound()).await?;
    ensure!(
        gone,
        "after {flips} updates the node no longer expires (record detached from its lease)"
    );
    Ok(())
}

/// 250 nodes registered concurrently by 5 clients are all listed, each once.
pub async fn list_many_nodes(cx: &CaseContext) -> CaseResult {
    const N: usize = 250;
    const CLIENTS: usize = 5;
    let ttl = cx.min_ttl() * 30;
    let mut workers = Vec::new();
    for w in 0..CLIENTS {
        let reg = cx.open().await?;
        let nodes: Vec<_> = (w..N)
            .step_by(CLIENTS)
            .map(|i| cx.node(&format!("m{i}")))
            .collect();
        workers.push(tokio::spawn(async move {
            let mut leases = Vec::new();
            for node in &nodes {
                leases.push(reg.register(node, ttl).await?);
            }
            Ok::<_, Error>((reg, nodes, leases))
        }));
    }
    let mut expected = std::collections::BTreeSet::new();
    let mut registered = Vec::new();
    for w in futures::future::join_all(workers).await {
        let (reg, nodes, leases) =
            w.map_err(|e| crate::CaseError::Failed(format!("registering task failed: {e}")))??;
        expected.extend(nodes.into_iter().map(|n| n.id));
        registered.push((reg, leases));
    }
    let listing = cx.open().await?.list_nodes().await?;
    ensure!(listing.corrupt.is_empty(), "corrupt: {:?}", listing.corrupt);
    let ids: std::collections::BTreeSet<String> =
        listing.items.iter().map(|n| n.id.clone()).collect();
    ensure_eq!(listing.items.len(), N, "listed nodes");
    ensure!(
        ids == expected,
        "listed node ids differ from the registered ones"
    );
    for (reg, leases) in registered {
        for lease in leases {
            reg.unregister(&lease).await?;
        }
    }
    Ok(())
}

/// The TTL of the timing cases: long enough that half of it and twice it are told apart from
/// the promise within [`expiry_tolerance`] (6 s, or the backend's smallest TTL if larger).
fn timing_ttl(cx: &CaseContext) -> Duration {
    cx.min_ttl().max(Duration::from_secs(6))
}

/// The granted TTL of a lease is never smaller than the requested one.
pub async fn granted_ttl_at_least_requested(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let base = cx.min_ttl();
    for requested in [
        base,
        base + Duration::from_millis(1500),
        base * 3,
        timing_ttl(cx) + Duration::from_millis(300),
    ] {
        let node = cx.node("granted");
        let lease = reg.register(&node, requested).await?;
        ensure!(
            lease.ttl >= requested,
            "requested TTL {requested:?}, granted {:?}",
            lease.ttl
        );
        reg.unregister(&lease).await?;
    }
    Ok(())
}

/// A node stays listed at least its granted TTL without keep-alives (still listed at 0.8 of
/// it) and is gone within TTL + `expiry_tolerance(TTL)`; once gone it is never listed again.
pub async fn ttl_is_kept_within_tolerance(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let observer = cx.open().await?;
    let node = cx.node("timed");
    let started = Instant::now();
    let lease = reg.register(&node, timing_ttl(cx)).await?;
    let returned = Instant::now();
    let ttl = lease.ttl;
    let listed = holds_until(started + ttl.mul_f64(0.8), || {
        node_listed(observer.as_ref(), &node.id)
    })
    .await?;
    ensure!(
        listed,
        "a node granted TTL {ttl:?} disappeared after {:?} without keep-alives",
        started.elapsed()
    );
    let bound = ttl + expiry_tolerance(ttl);
    let gone = gone_within(
        observer.as_ref(),
        &node.id,
        (returned + bound).saturating_duration_since(Instant::now()),
    )
    .await?;
    ensure!(
        gone,
        "a node granted TTL {ttl:?} is still listed {:?} after registering (bound {bound:?})",
        returned.elapsed()
    );
    let stays_gone = holds_until(Instant::now() + Duration::from_millis(500), || async {
        Ok(!node_listed(observer.as_ref(), &node.id).await?)
    })
    .await?;
    ensure!(stays_gone, "an expired node is listed again");
    Ok(())
}

/// `list_nodes` never lists an expired node: after short-lived nodes expire, the listing is
/// exactly the live ones, each once, and the expired leases are `LeaseLost`.
pub async fn expired_nodes_are_never_listed(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let ttl = timing_ttl(cx);
    let keeper = cx.node("keeper");
    let kept = reg.register(&keeper, LONG_TTL.max(ttl * 10)).await?;
    let mut short = Vec::new();
    for i in 0..4 {
        let node = cx.node(&format!("short-{i}"));
        short.push((reg.register(&node, ttl).await?, node));
    }
    let granted = short.iter().map(|(l, _)| l.ttl).max().unwrap_or(ttl);
    let bound = granted + expiry_tolerance(granted);
    let only_keeper = reached(bound, || {
        let reg = reg.clone();
        let id = keeper.id.clone();
        async move {
            let items = reg.list_nodes().await?.items;
            Ok(items.len() == 1 && items[0].id == id)
        }
    })
    .await?;
    ensure!(
        only_keeper,
        "{bound:?} after registering nodes granted {granted:?}, the listing still holds {:?}",
        reg.list_nodes()
            .await?
            .items
            .iter()
            .map(|n| n.id.clone())
            .collect::<Vec<_>>()
    );
    for (lease, node) in &short {
        ensure_err!(
            reg.keep_alive(lease).await,
            Error::LeaseLost { .. },
            "keep_alive of the expired {}",
            node.id
        );
    }
    reg.unregister(&kept).await?;
    Ok(())
}

/// A lease replaced by a newer registration of its node is stale: its `keep_alive` and
/// `update_node` are `LeaseLost` and leave the newer record unchanged, and `unregister` with it
/// is `Ok` and leaves the newer registration listed.
pub async fn stale_lease_leaves_the_newer_registration(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    let observer = cx.open().await?;
    let mut node = cx.node("twice");
    let ttl = cx.min_ttl() * 10;
    node.weight = 1;
    let stale = reg.register(&node, ttl).await?;
    node.weight = 2;
    node.status = NodeStatus::Working;
    let fresh = reg.register(&node, ttl).await?;
    let current = || async {
        let items = observer.list_nodes().await?.items;
        Ok::<_, crate::CaseError>(
            items
                .into_iter()
                .filter(|n| n.id == node.id)
                .collect::<Vec<_>>(),
        )
    };
    ensure_err!(
        reg.keep_alive(&stale).await,
        Error::LeaseLost { .. },
        "keep_alive with the stale lease"
    );
    let mut changed = node.clone();
    changed.weight = 9;
    changed.status = NodeStatus::Leaving;
    ensure_err!(
        reg.update_node(&stale, &changed).await,
        Error::LeaseLost { .. },
        "update_node with the stale lease"
    );
    ensure_eq!(
        current().await?,
        vec![node.clone()],
        "the newer record after stale keep_alive and update_node"
    );
    reg.unregister(&stale).await?;
    ensure_eq!(
        current().await?,
        vec![node.clone()],
        "the newer registration after unregister with the stale lease"
    );
    reg.keep_alive(&fresh).await?;
    changed.weight = 3;
    reg.update_node(&fresh, &changed).await?;
    ensure_eq!(
        current().await?,
        vec![changed],
        "the newer lease still works"
    );
    reg.unregister(&fresh).await?;
    ensure!(
        current().await?.is_empty(),
        "unregister with the newer lease removes the node"
    );
    Ok(())
}
