//! This backend's own integration tests on a real ZooKeeper: what the conformance suite does not
//! look at (ephemeral znodes, session loss and expiry through a proxy, digest ACLs, the sweeper,
//! data watches on node status, claims across a server restart).

mod common;

use std::collections::HashMap;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use common::{eventually, shared_connect, shared_registry, shared_registry_with, unique, Proxy};
use dcron_core::{
    ClaimOutcome, Error, FireKey, Node, NodeEvent, NodeStatus, PutMode, Registry, TaskMeta,
    TaskMetaEvent,
};
use dcron_registry_zk::{ZkRegistry, ZkRegistryConfig};
use futures::StreamExt;
use zookeeper_async::{ZkError, ZooKeeper};

fn node(id: &str) -> Node {
    Node::new(id, Utc::now())
}

async fn listed(reg: &ZkRegistry, id: &str) -> bool {
    reg.list_nodes()
        .await
        .map(|l| l.items.iter().any(|n| n.id == id))
        .unwrap_or(false)
}

async fn raw_client(connect: &str) -> ZooKeeper {
    ZooKeeper::connect(connect, Duration::from_secs(5), |_| {})
        .await
        .expect("plain client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_is_an_ephemeral_znode_of_its_own_session() {
    let ns = unique("ephemeral");
    let Some(reg) = shared_registry(&ns).await else {
        return;
    };
    let mut n = node("n1");
    let lease = reg
        .register(&n, Duration::from_secs(5))
        .await
        .expect("register");
    let session = reg.session_id(&lease).expect("session");
    assert_eq!(lease.id, format!("{session:016x}"));
    let raw = raw_client(&shared_connect()).await;
    let path = format!("{}/nodes/n1", reg.root());
    let stat = raw
        .exists(&path, false)
        .await
        .expect("exists")
        .expect("present");
    assert_eq!(
        stat.ephemeral_owner, session,
        "owned by the lease's session"
    );

    // A status update keeps the znode ephemeral and owned by the same session.
    n.status = NodeStatus::Working;
    reg.update_node(&lease, &n).await.expect("update");
    let stat = raw
        .exists(&path, false)
        .await
        .expect("exists")
        .expect("present");
    assert_eq!(stat.ephemeral_owner, session);
    assert!(stat.version >= 1);
    let listed_node = reg.list_nodes().await.expect("list").items;
    assert_eq!(listed_node, vec![n.clone()]);

    // A second registration of the same id replaces the first; the old lease is lost.
    let second = reg
        .register(&n, Duration::from_secs(5))
        .await
        .expect("again");
    assert_ne!(second.id, lease.id);
    assert!(matches!(
        reg.keep_alive(&lease).await,
        Err(Error::LeaseLost { .. })
    ));
    reg.keep_alive(&second).await.expect("new lease alive");
    reg.unregister(&second).await.expect("unregister");
    assert!(raw.exists(&path, false).await.expect("exists").is_none());
    let _ = raw.close().await;
    reg.cleanup_all().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_connection_loss_keeps_the_session() {
    let ns = unique("blip");
    let Some(observer) = shared_registry(&ns).await else {
        return;
    };
    let proxy = Proxy::start(&shared_connect()).await;
    let config = ZkRegistryConfig::new(proxy.connect())
        .namespace(common::root_of(&ns))
        .operation_timeout(Duration::from_secs(1));
    let reg = ZkRegistry::connect(config)
        .await
        .expect("through the proxy");
    let n = node("blip");
    let ttl = Duration::from_secs(8);
    let lease = reg.register(&n, ttl).await.expect("register");
    let mut events = reg.watch_tasks().await.expect("watch");

    proxy.set_down(true);
    let saw_outage = eventually(Duration::from_secs(5), || async {
        matches!(reg.keep_alive(&lease).await, Err(Error::Unavailable { .. }))
    })
    .await;
    assert!(
        saw_outage,
        "keep_alive must report the outage as Unavailable"
    );
    proxy.set_down(false);
    let back = eventually(Duration::from_secs(6), || async {
        reg.keep_alive(&lease).await.is_ok()
    })
    .await;
    assert!(back, "the same lease works again after reconnecting");
    assert!(listed(&observer, "blip").await, "the node never left");

    // The watch says it may have missed something, and works again afterwards.
    let resync = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(e) = events.next().await {
            if e == TaskMetaEvent::Resync {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(resync, Ok(true), "a Resync after the reconnect");
    observer
        .put_task(&TaskMeta::new("after", "@every 1s"), PutMode::CreateOnly)
        .await
        .expect("put");
    let put = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(e) = events.next().await {
            if matches!(&e, TaskMetaEvent::Put(m) if m.name == "after") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(put, Ok(true), "watch re-armed after the reconnect");
    reg.unregister(&lease).await.expect("unregister");
    observer.cleanup_all().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_longer_than_the_ttl_loses_the_lease_and_reregistering_recovers() {
    let ns = unique("expiry");
    let Some(observer) = shared_registry(&ns).await else {
        return;
    };
    let proxy = Proxy::start(&shared_connect()).await;
    let config = ZkRegistryConfig::new(proxy.connect())
        .namespace(common::root_of(&ns))
        .operation_timeout(Duration::from_secs(1));
    let reg = ZkRegistry::connect(config)
        .await
        .expect("through the proxy");
    let n = node("expiring");
    let lease = reg
        .register(&n, Duration::from_secs(2))
        .await
        .expect("register");
    assert!(listed(&observer, "expiring").await);

    proxy.set_down(true);
    let gone = eventually(Duration::from_secs(10), || async {
        !listed(&observer, "expiring").await
    })
    .await;
    assert!(gone, "the server expired the unreachable node's session");
    proxy.set_down(false);
    let lost = eventually(Duration::from_secs(10), || async {
        matches!(reg.keep_alive(&lease).await, Err(Error::LeaseLost { .. }))
    })
    .await;
    assert!(lost, "keep_alive reports LeaseLost after the expiry");
    assert!(matches!(
        reg.update_node(&lease, &n).await,
        Err(Error::LeaseLost { .. })
    ));
    assert!(!listed(&observer, "expiring").await, "not recreated");
    let again = eventually(Duration::from_secs(10), || async {
        reg.register(&n, Duration::from_secs(4)).await.is_ok()
    })
    .await;
    assert!(again, "re-registering works once the server is back");
    assert!(listed(&observer, "expiring").await, "the node is back");
    reg.close().await;
    observer.cleanup_all().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_acl_keeps_other_clients_out() {
    let ns = unique("auth");
    let root = common::root_of(&ns);
    let owner_config = ZkRegistryConfig::new(shared_connect())
        .namespace(root.clone())
        .digest_auth("dcron", "s3cret");
    let Some(owner) = shared_registry_with(owner_config).await else {
        return;
    };
    owner
        .put_task(&TaskMeta::new("private", "@hourly"), PutMode::CreateOnly)
        .await
        .expect("owner writes");
    let lease = owner
        .register(&node("owner-node"), Duration::from_secs(5))
        .await
        .expect("owner registers");
    assert_eq!(
        owner.list_tasks().await.expect("owner lists").items.len(),
        1
    );

    // No credentials, or the wrong ones: the namespace can be neither read nor changed.
    for config in [
        ZkRegistryConfig::new(shared_connect()).namespace(root.clone()),
        ZkRegistryConfig::new(shared_connect())
            .namespace(root.clone())
            .digest_auth("dcron", "wrong"),
    ] {
        match ZkRegistry::connect(config).await {
            Err(Error::AccessDenied(_)) => {}
            other => panic!("expected AccessDenied, got {other:?}"),
        }
    }
    let raw = raw_client(&shared_connect()).await;
    let task = owner.task_path("private");
    assert_eq!(
        raw.get_data(&task, false).await.err(),
        Some(ZkError::NoAuth)
    );
    assert_eq!(
        raw.set_data(&task, b"{}".to_vec(), None).await.err(),
        Some(ZkError::NoAuth)
    );
    assert_eq!(raw.delete(&task, None).await.err(), Some(ZkError::NoAuth));
    assert_eq!(
        raw.get_children(&format!("{root}/tasks"), false)
            .await
            .err(),
        Some(ZkError::NoAuth)
    );
    let _ = raw.close().await;

    // The owner is unaffected.
    assert_eq!(
        owner
            .get_task("private")
            .await
            .expect("read")
            .map(|m| m.name),
        Some("private".to_string())
    );
    owner.unregister(&lease).await.expect("unregister");
    owner.cleanup_all().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_status_changes_are_watched() {
    let ns = unique("status");
    let Some(reg) = shared_registry(&ns).await else {
        return;
    };
    let Some(watcher) = shared_registry(&ns).await else {
        return;
    };
    let mut n = node("watched");
    let lease = reg
        .register(&n, Duration::from_secs(5))
        .await
        .expect("register");
    let mut events = watcher.watch_nodes().await.expect("watch");
    for status in [NodeStatus::Working, NodeStatus::Leaving] {
        n.status = status;
        reg.update_node(&lease, &n).await.expect("update");
        let seen = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(e) = events.next().await {
                if matches!(&e, NodeEvent::Put(x) if x.id == "watched" && x.status == status) {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(seen, Ok(true), "status {status} delivered as a data change");
    }
    reg.unregister(&lease).await.expect("unregister");
    let deleted = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(e) = events.next().await {
            if e == (NodeEvent::Delete {
                id: "watched".into(),
            }) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(deleted, Ok(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweeper_removes_expired_claims_when_ttl_znodes_are_off() {
    let ns = unique("sweeper");
    let config = ZkRegistryConfig::new(shared_connect())
        .namespace(common::root_of(&ns))
        .ttl_claims(false)
        .sweep_interval(Duration::from_millis(200));
    let Some(reg) = shared_registry_with(config).await else {
        return;
    };
    assert!(!reg.ttl_claims());
    let fire = FireKey::new("swept", Utc.timestamp_millis_opt(1_000).unwrap());
    let keep = FireKey::new("swept", Utc.timestamp_millis_opt(2_000).unwrap());
    let won = reg
        .claim(std::slice::from_ref(&fire), "a", Duration::from_millis(500))
        .await
        .expect("claim");
    assert!(won[0].is_won());
    assert!(reg
        .claim(std::slice::from_ref(&keep), "a", Duration::from_secs(600))
        .await
        .expect("claim")[0]
        .is_won());
    let swept = eventually(Duration::from_secs(10), || async {
        reg.list_claims("swept")
            .await
            .map(|l| l.items.len() == 1 && l.items[0].fire == keep)
            .unwrap_or(false)
    })
    .await;
    assert!(swept, "the expired claim is swept, the retained one stays");
    assert!(reg
        .claim(&[fire], "b", Duration::from_secs(60))
        .await
        .expect("claim")[0]
        .is_won());
    assert_eq!(
        reg.claim(&[keep], "b", Duration::from_secs(60))
            .await
            .expect("claim"),
        vec![ClaimOutcome::Lost]
    );
    reg.cleanup_all().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_across_a_server_restart_are_never_won_twice() {
    let Some(server) = common::OwnedServer::start().await else {
        return;
    };
    let mut server = server;
    let ns = common::root_of(&unique("restart"));
    let open = |connect: String, ns: String| async move {
        ZkRegistry::connect(
            ZkRegistryConfig::new(connect)
                .namespace(ns)
                .operation_timeout(Duration::from_secs(2)),
        )
        .await
        .expect("connect")
    };
    let regs: Vec<ZkRegistry> =
        futures::future::join_all((0..4).map(|_| open(server.connect(), ns.clone()))).await;
    let mut workers = Vec::new();
    for (w, reg) in regs.iter().cloned().enumerate() {
        workers.push(tokio::spawn(async move {
            let mut won: Vec<i64> = Vec::new();
            let mut round = 0i64;
            let mut errors = 0u32;
            // 200 rounds, each deciding 10 fires (a failed batch is retried).
            while round < 200 {
                // Every worker claims the same 10 fires per round, in its own order.
                let mut fires: Vec<FireKey> = (0..10)
                    .map(|i| FireKey::new("t", Utc.timestamp_millis_opt(round * 10 + i).unwrap()))
                    .collect();
                fires.rotate_left(w % 10);
                match reg
                    .claim(&fires, &format!("w{w}"), Duration::from_secs(600))
                    .await
                {
                    Ok(outcomes) => {
                        for (f, o) in fires.iter().zip(outcomes) {
                            if o.is_won() {
                                won.push(f.instant_millis());
                            }
                        }
                        round += 1;
                    }
                    Err(e) => {
                        assert!(e.is_retryable(), "only Unavailable during a restart: {e}");
                        errors += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            (won, errors)
        }));
    }
    // Restart once some rounds have been decided.
    let progressed = eventually(Duration::from_secs(20), || async {
        regs[0]
            .list_claims("t")
            .await
            .map(|l| l.items.len() >= 100)
            .unwrap_or(false)
    })
    .await;
    assert!(progressed, "claims progress before the restart");
    server.restart().await.expect("restart");
    let mut all: HashMap<i64, usize> = HashMap::new();
    let mut errors = 0;
    for w in workers {
        let (won, e) = tokio::time::timeout(Duration::from_secs(120), w)
            .await
            .expect("workers finish")
            .expect("worker did not panic");
        errors += e;
        for f in won {
            *all.entry(f).or_default() += 1;
        }
    }
    let twice: Vec<_> = all.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "fires won twice: {twice:?}");
    assert!(all.len() >= 1_900, "most fires decided: {}", all.len());
    println!(
        "restart: {} fires won once, {errors} retried batches",
        all.len()
    );
    // The claims survived the restart: every won fire is listed with its winner.
    let listed = regs[0].list_claims("t").await.expect("list").items;
    assert_eq!(listed.len(), 2_000, "all claims retained");
    for reg in &regs {
        reg.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_without_ttl_znodes_falls_back_to_the_sweeper() {
    let Some(server) = common::OwnedServer::start_with(false).await else {
        return;
    };
    let reg = ZkRegistry::connect(
        ZkRegistryConfig::new(server.connect())
            .namespace("/fallback")
            .sweep_interval(Duration::from_millis(200)),
    )
    .await
    .expect("connect");
    assert!(reg.ttl_claims(), "TTL claims are tried first");
    let fire = FireKey::new("t", Utc.timestamp_millis_opt(7).unwrap());
    let won = reg
        .claim(std::slice::from_ref(&fire), "a", Duration::from_millis(300))
        .await
        .expect("claim");
    assert!(won[0].is_won(), "the claim is still decided: {won:?}");
    assert!(
        !reg.ttl_claims(),
        "the refusal switched claims to the sweeper"
    );
    assert_eq!(
        reg.claim(std::slice::from_ref(&fire), "b", Duration::from_secs(60))
            .await
            .expect("claim"),
        vec![ClaimOutcome::Lost]
    );
    let swept = eventually(Duration::from_secs(10), || async {
        reg.list_claims("t")
            .await
            .map(|l| l.items.is_empty())
            .unwrap_or(false)
    })
    .await;
    assert!(swept, "the sweeper removed the claim after its retention");
    reg.close().await;
}

#[tokio::test]
async fn unreachable_server_is_unavailable_quickly() {
    // Port 1 on loopback: nothing listens there.
    let started = tokio::time::Instant::now();
    let result = ZkRegistry::connect(
        ZkRegistryConfig::new("127.0.0.1:1").connect_timeout(Duration::from_millis(800)),
    )
    .await;
    assert!(
        matches!(result, Err(Error::Unavailable { .. })),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(matches!(
        ZkRegistry::connect(ZkRegistryConfig::new("127.0.0.1:2181").namespace("/a/../b")).await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        ZkRegistry::connect(ZkRegistryConfig::new("no-such-host-name.invalid:2181")).await,
        Err(Error::InvalidArgument(_) | Error::Unavailable { .. })
    ));
}

/// A force-add of a tombstoned task while 8 clients keep claiming the same fire: before the
/// force every answer is `Tombstoned`, after it exactly one client wins — never two, although
/// the force deletes claims and the tombstone in separate steps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_during_claims_never_lets_a_fire_win_twice() {
    let ns = unique("force-race");
    let Some(admin) = shared_registry(&ns).await else {
        return;
    };
    let mut claimers = Vec::new();
    for _ in 0..8 {
        match shared_registry(&ns).await {
            Some(r) => claimers.push(r),
            None => return,
        }
    }
    for round in 0..5i64 {
        let name = format!("raced-{round}");
        let fire = FireKey::new(name.as_str(), Utc.timestamp_millis_opt(round).unwrap());
        admin
            .mark_deleted(&name, Utc::now())
            .await
            .expect("tombstone");
        let forced = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let attempts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for (c, reg) in claimers.iter().cloned().enumerate() {
            let (fire, forced, attempts) = (fire.clone(), forced.clone(), attempts.clone());
            tasks.push(tokio::spawn(async move {
                let mut wins = 0;
                let mut after = 0;
                // Keep claiming until 20 attempts were made after the force finished.
                while after < 20 {
                    if forced.load(std::sync::atomic::Ordering::Acquire) {
                        after += 1;
                    }
                    attempts.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                    let out = reg
                        .claim(
                            std::slice::from_ref(&fire),
                            &format!("c{c}"),
                            Duration::from_secs(600),
                        )
                        .await
                        .expect("claim");
                    if out[0].is_won() {
                        wins += 1;
                    }
                }
                wins
            }));
        }
        // Force while the claimers are busy.
        let busy = eventually(Duration::from_secs(10), || async {
            attempts.load(std::sync::atomic::Ordering::Acquire) >= 40
        })
        .await;
        assert!(busy, "claimers started");
        admin
            .put_task(&TaskMeta::new(name.as_str(), "@hourly"), PutMode::Force)
            .await
            .expect("force");
        forced.store(true, std::sync::atomic::Ordering::Release);
        let mut wins = 0;
        for t in tasks {
            wins += t.await.expect("claimer");
        }
        assert_eq!(wins, 1, "round {round}: the fire must be won exactly once");
    }
    admin.cleanup_all().await.expect("cleanup");
}
