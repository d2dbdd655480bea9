//! Faults on an etcd server owned by the test: a crash and restart in the middle of claiming and
//! watching, leases revoked from outside.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use dcron_core::{
    ClaimOutcome, Error, FireKey, Node, NodeStatus, PutMode, Registry, TaskMetaEvent,
};
use futures::StreamExt;
use tokio::time::Instant;

use common::{fire, fresh_namespace, OwnedEtcd};
use dcron_testkit::wait_until;

const LONG: Duration = Duration::from_secs(600);
const RECOVERY: Duration = Duration::from_secs(60);

/// Four claimers walk the same 300 fires while the server is killed and restarted: no fire is
/// won twice, every fire ends with exactly one claim and exactly one claimer that knows it won
/// (a retry of a call whose reply was lost in the crash answers `WonEarlier`), and the registry
/// answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_mid_run_never_wins_a_fire_twice() {
    let Some(server) = OwnedEtcd::start("restart_mid_run").await else {
        return;
    };
    let namespace = fresh_namespace("restart_mid_run");
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(server.config(&namespace).connect().await.expect("connect"));
    }
    const FIRES: i64 = 300;
    let fires: Arc<Vec<FireKey>> = Arc::new((0..FIRES).map(|i| fire("tick", i * 1000)).collect());
    let mut workers = Vec::new();
    for (w, reg) in clients.iter().cloned().enumerate() {
        let fires = fires.clone();
        workers.push(tokio::spawn(async move {
            let node = format!("node-{w}");
            let wins = std::sync::Mutex::new(Vec::new());
            let unavailable = std::sync::atomic::AtomicUsize::new(0);
            for fire in fires.iter() {
                // Retry until the fire is decided; a retry after an undecided call answers
                // `WonEarlier` for a claim of ours that was written.
                let what = format!("{node}: the claim of {fire} decided");
                wait_until(&what, RECOVERY, || async {
                    match common::claim_fires(&reg, &node, std::slice::from_ref(fire), LONG).await {
                        Ok(out) => {
                            if let Some(token) = out[0].token() {
                                wins.lock().expect("wins").push((fire.clone(), token));
                            }
                            true
                        }
                        Err(e) if e.is_retryable() => {
                            unavailable.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            false
                        }
                        Err(e) => panic!("{node}: claim of {fire} failed: {e}"),
                    }
                })
                .await
                .expect("wait");
            }
            (
                node,
                wins.into_inner().expect("wins"),
                unavailable.into_inner(),
            )
        }));
    }
    // Let the claimers get going, then crash the server.
    let first = clients[0].clone();
    wait_until("claims did not start", Duration::from_secs(20), || async {
        first
            .list_claims("tick")
            .await
            .map(|l| l.items.len() >= 30)
            .unwrap_or(false)
    })
    .await
    .expect("wait");
    server.restart();

    let mut winners: BTreeMap<FireKey, Vec<(String, u64)>> = BTreeMap::new();
    let mut retried = 0;
    for worker in workers {
        let (node, wins, unavailable) = worker.await.expect("claimer");
        retried += unavailable;
        for (fire, token) in wins {
            winners.entry(fire).or_default().push((node.clone(), token));
        }
    }
    for (fire, who) in &winners {
        assert_eq!(who.len(), 1, "{fire} won more than once: {who:?}");
    }
    assert_eq!(
        winners.len(),
        FIRES as usize,
        "every fire has a claimer that knows it won"
    );
    let claims = clients[0].list_claims("tick").await.expect("list claims");
    assert_eq!(claims.items.len(), FIRES as usize, "one claim per fire");
    for claim in &claims.items {
        let who = &winners[&claim.fire];
        assert_eq!(
            who[0].0, claim.node_id,
            "{}: the stored claim names the winner",
            claim.fire
        );
        assert_eq!(
            who[0].1, claim.token,
            "{}: the same fencing token",
            claim.fire
        );
    }
    println!("{} fires won; {retried} retried calls", winners.len());
}

/// A watch survives a crash of the server: it yields `Resync`, then the events after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_survives_a_restart() {
    let Some(server) = OwnedEtcd::start("watch_restart").await else {
        return;
    };
    let namespace = fresh_namespace("watch_restart");
    let reg = server.config(&namespace).connect().await.expect("connect");
    let mut stream = reg.watch_tasks().await.expect("watch");
    reg.put_task(&common::meta("before", "@hourly"), PutMode::CreateOnly)
        .await
        .expect("put");
    server.restart_and_wait().await;
    wait_until("the registry did not come back", RECOVERY, || async {
        reg.put_task(&common::meta("after", "@hourly"), PutMode::CreateOnly)
            .await
            .is_ok()
    })
    .await
    .expect("wait");
    let (mut before, mut resync, mut after) = (false, false, false);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(before && resync && after) && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(15), stream.next()).await {
            Ok(Some(TaskMetaEvent::Put(m))) if m.name == "before" => before = true,
            Ok(Some(TaskMetaEvent::Put(m))) if m.name == "after" => after = true,
            Ok(Some(TaskMetaEvent::Resync)) => resync = true,
            Ok(Some(_)) => {}
            Ok(None) => panic!("the watch stream ended"),
            Err(_) => break,
        }
    }
    assert!(before, "event before the restart");
    assert!(resync, "Resync after the stream broke");
    assert!(after, "event after the restart");
}

/// A node lease revoked from outside: `keep_alive` and `update_node` answer `LeaseLost`, the node
/// is gone, and registering again brings it back under a new lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_revoked_from_outside_is_lost_and_reregistration_works() {
    let Some(server) = OwnedEtcd::start("revoked_lease").await else {
        return;
    };
    let namespace = fresh_namespace("revoked_lease");
    let reg = server.config(&namespace).connect().await.expect("connect");
    let admin = server.config(&namespace).connect().await.expect("connect");
    let mut node = Node::new("victim", Utc::now());
    let lease = reg
        .register(&node, Duration::from_secs(30))
        .await
        .expect("register");
    reg.keep_alive(&lease).await.expect("keep_alive");
    let id: i64 = lease.id.parse().expect("numeric id");
    admin
        .client()
        .clone()
        .lease_revoke(id)
        .await
        .expect("revoke");

    assert!(matches!(
        reg.keep_alive(&lease).await,
        Err(Error::LeaseLost { .. })
    ));
    node.status = NodeStatus::Working;
    assert!(matches!(
        reg.update_node(&lease, &node).await,
        Err(Error::LeaseLost { .. })
    ));
    assert!(!admin
        .list_nodes()
        .await
        .expect("list")
        .items
        .iter()
        .any(|n| n.id == "victim"));
    reg.unregister(&lease)
        .await
        .expect("unregister after revocation is Ok");

    let new = reg
        .register(&node, Duration::from_secs(30))
        .await
        .expect("register again");
    assert_ne!(new.id, lease.id);
    reg.keep_alive(&new).await.expect("keep_alive");
    let listed = admin.list_nodes().await.expect("list");
    assert_eq!(
        listed.items.iter().filter(|n| n.id == "victim").count(),
        1,
        "listed again"
    );
    reg.unregister(&new).await.expect("unregister");
}

/// The shared retention lease revoked from outside: the next claims take a new lease and win.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_retention_lease_is_replaced() {
    let Some(server) = OwnedEtcd::start("retention_revoked").await else {
        return;
    };
    let namespace = fresh_namespace("retention_revoked");
    let reg = server.config(&namespace).connect().await.expect("connect");
    let out = common::claim_fires(&reg, "n", &[fire("t", 0)], LONG)
        .await
        .expect("claim");
    assert!(out[0].is_won());
    let key = format!("/{namespace}/claims/t/{}", fire("t", 0).instant_millis());
    let resp = reg.client().clone().get(key, None).await.expect("raw get");
    let lease = resp.kvs().first().expect("claim stored").lease();
    reg.client()
        .clone()
        .lease_revoke(lease)
        .await
        .expect("revoke");
    // The revoked lease took its claim with it; new claims need a new lease.
    let out = common::claim_fires(&reg, "n", &[fire("t", 1000), fire("t", 2000)], LONG)
        .await
        .expect("claim after revocation");
    assert!(out.iter().all(ClaimOutcome::is_won), "{out:?}");
    assert_eq!(reg.list_claims("t").await.expect("list").items.len(), 2);
}

/// A frozen server (accepting nothing, answering nothing) makes every call fail with
/// `Unavailable` within the request timeout instead of hanging; after it thaws, calls work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_gives_unavailable_not_a_hang() {
    let Some(server) = OwnedEtcd::start("frozen").await else {
        return;
    };
    let namespace = fresh_namespace("frozen");
    // This test is about the request timeout, so it sets its own instead of the (longer,
    // load-tolerant) default of `OwnedEtcd::config`.
    let timeout = Duration::from_secs(2);
    let reg = server
        .config(&namespace)
        .request_timeout(timeout)
        .connect()
        .await
        .expect("connect");
    let lease = reg
        .register(&Node::new("n", Utc::now()), Duration::from_secs(30))
        .await
        .expect("register");
    server.signal("STOP");
    // Each call may take its timeout plus some slack, never much more.
    let bound = timeout + Duration::from_secs(3);
    let started = Instant::now();
    let listed = reg.list_tasks().await;
    assert!(
        matches!(listed, Err(Error::Unavailable { .. })),
        "{listed:?}"
    );
    let kept = reg.keep_alive(&lease).await;
    assert!(matches!(kept, Err(Error::Unavailable { .. })), "{kept:?}");
    let claimed = common::claim_fires(&reg, "n", &[fire("t", 0), fire("t", 1)], LONG).await;
    assert!(
        matches!(claimed, Err(Error::Unavailable { .. })),
        "{claimed:?}"
    );
    assert!(
        started.elapsed() < bound * 3,
        "three calls took {:?}",
        started.elapsed()
    );
    server.signal("CONT");
    wait_until(
        "keep_alive works again after the server thaws",
        RECOVERY,
        || async { reg.keep_alive(&lease).await.is_ok() },
    )
    .await
    .expect("wait");
    // The claim may have been applied while we waited: deciding it again never wins it twice.
    let out = common::claim_fires(&reg, "m", &[fire("t", 0)], LONG)
        .await
        .expect("claim");
    let claims = reg.list_claims("t").await.expect("list");
    let holders: Vec<_> = claims
        .items
        .iter()
        .filter(|c| c.fire == fire("t", 0))
        .map(|c| c.node_id.clone())
        .collect();
    assert_eq!(holders.len(), 1, "{holders:?}");
    assert_eq!(out[0].is_won(), holders[0] == "m");
}
