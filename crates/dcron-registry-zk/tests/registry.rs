//! This backend's own integration tests on a real ZooKeeper: what the conformance suite does not
//! look at (sequential ephemeral registrations, stale leases, session loss and expiry through a
//! proxy, digest ACLs on every znode, nested namespaces, a server without TTL znodes (and its
//! sweeper collecting claims by expiry alone), claims racing new lives, data watches on node
//! status).

mod common;

use std::time::Duration;

use chrono::Utc;
use common::{shared_connect, shared_registry, shared_registry_with, unique, Proxy};
use dcron_core::{
    ClaimOutcome, ClaimRequest, Claimant, Error, FireKey, Node, NodeEvent, NodeStatus, PutMode,
    Registry, TaskMeta, TaskMetaEvent,
};
use dcron_registry_zk::{ZkEvent, ZkRegistry, ZkRegistryConfig};
use dcron_testkit::wait_until;
use futures::StreamExt;
use zookeeper_async::{Acl, CreateMode, ZkError, ZooKeeper};

fn node(id: &str) -> Node {
    Node::new(id, Utc::now())
}

fn meta(name: &str) -> TaskMeta {
    let mut m = TaskMeta::new(name, "@hourly");
    m.created_at = Some(Utc::now());
    m
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

/// Claims one fire in the name's current life for `node` (epoch 1).
async fn claim(reg: &ZkRegistry, fire: &FireKey, node: &str, retention: Duration) -> ClaimOutcome {
    let life = reg
        .ensure_lives(&[(fire.task.clone(), Utc::now())])
        .await
        .expect("life")[0];
    let request = ClaimRequest::new(
        fire.clone(),
        life.generation,
        fire.instant + chrono::Duration::days(1),
        retention,
    );
    reg.claim(&Claimant::new(node, 1), &[request])
        .await
        .expect("claim")
        .remove(0)
}

fn fire(task: &str, ms: i64) -> FireKey {
    FireKey::new(
        task,
        chrono::DateTime::from_timestamp_millis(1_900_000_000_000 + ms).expect("instant"),
    )
}

async fn next_matching<T, S: futures::Stream<Item = T> + Unpin>(
    stream: &mut S,
    within: Duration,
    mut pred: impl FnMut(&T) -> bool,
) -> bool {
    tokio::time::timeout(within, async {
        while let Some(e) = stream.next().await {
            if pred(&e) {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_is_an_ephemeral_sequential_znode_of_its_own_session() {
    let ns = unique("ephemeral");
    let Some(reg) = shared_registry(&ns).await else {
        return;
    };
    let Some(other) = shared_registry(&ns).await else {
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
    let dir = format!("{}/nodes", reg.root());
    let children = raw.get_children(&dir, false).await.expect("children");
    assert_eq!(children.len(), 1);
    assert!(children[0].starts_with("n1."), "{children:?}");
    let path = format!("{dir}/{}", children[0]);
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
    assert_eq!(reg.list_nodes().await.expect("list").items, vec![n.clone()]);

    // Another handle (another process) registers the same id: the older lease is lost and can
    // neither renew nor overwrite the newer record, nor remove it.
    let mut newer = n.clone();
    newer.weight = 7;
    let second = other
        .register(&newer, Duration::from_secs(5))
        .await
        .expect("again");
    assert_ne!(second.id, lease.id);
    assert!(matches!(
        reg.keep_alive(&lease).await,
        Err(Error::LeaseLost { .. })
    ));
    assert!(matches!(
        reg.update_node(&lease, &n).await,
        Err(Error::LeaseLost { .. })
    ));
    reg.unregister(&lease)
        .await
        .expect("a stale unregister is Ok");
    assert_eq!(
        other.list_nodes().await.expect("list").items,
        vec![newer.clone()],
        "the newer record is untouched"
    );
    other.keep_alive(&second).await.expect("new lease alive");
    other.unregister(&second).await.expect("unregister");
    assert!(raw
        .get_children(&dir, false)
        .await
        .expect("children")
        .is_empty());
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
    let session = reg.session();
    let mut zk_events = reg.events();
    let n = node("blip");
    let lease = reg
        .register(&n, Duration::from_secs(8))
        .await
        .expect("register");
    let mut events = reg.watch_tasks().await.expect("watch");

    proxy.set_down(true);
    wait_until(
        "keep_alive reports the outage as Unavailable",
        Duration::from_secs(5),
        || async { matches!(reg.keep_alive(&lease).await, Err(Error::Unavailable { .. })) },
    )
    .await
    .expect("wait");
    proxy.set_down(false);
    wait_until(
        "the same lease works again after reconnecting",
        Duration::from_secs(6),
        || async { reg.keep_alive(&lease).await.is_ok() },
    )
    .await
    .expect("wait");
    assert!(listed(&observer, "blip").await, "the node never left");
    assert!(
        next_matching(&mut events, Duration::from_secs(10), |e| *e
            == TaskMetaEvent::Resync)
        .await,
        "a Resync after the reconnect"
    );
    observer
        .put_task(&meta("after"), PutMode::CreateOnly)
        .await
        .expect("put");
    assert!(
        next_matching(&mut events, Duration::from_secs(10), |e| {
            matches!(e, TaskMetaEvent::Put(m) if m.name == "after")
        })
        .await,
        "watch re-armed after the reconnect"
    );
    assert_eq!(reg.session(), session, "the same session");
    let reconnected = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match zk_events.recv().await {
                Ok(ZkEvent::Reconnected { session: s }) => return s,
                Ok(_) => {}
                Err(_) => return 0,
            }
        }
    })
    .await;
    assert_eq!(reconnected, Ok(session), "a Reconnected event");
    reg.unregister(&lease).await.expect("unregister");
    observer.cleanup_all().await.expect("cleanup");
}

/// The server expires every session of a registry (an outage longer than the session timeout):
/// the shared session is renewed (event, marker, watches re-armed and delivering), the lease
/// is lost, and registering again brings the node back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_expiry_renews_the_session_rearms_watches_and_loses_the_lease() {
    let ns = unique("expiry");
    let Some(observer) = shared_registry(&ns).await else {
        return;
    };
    let proxy = Proxy::start(&shared_connect()).await;
    let config = ZkRegistryConfig::new(proxy.connect())
        .namespace(common::root_of(&ns))
        .session_timeout(Duration::from_secs(2))
        .operation_timeout(Duration::from_secs(1));
    let reg = ZkRegistry::connect(config)
        .await
        .expect("through the proxy");
    let old_session = reg.session();
    let mut zk_events = reg.events();
    let n = node("expiring");
    let lease = reg
        .register(&n, Duration::from_secs(2))
        .await
        .expect("register");
    let mut tasks = reg.watch_tasks().await.expect("watch tasks");
    let mut nodes = reg.watch_nodes().await.expect("watch nodes");
    assert!(listed(&observer, "expiring").await);

    proxy.set_down(true);
    wait_until(
        "the server expired the unreachable node's session",
        Duration::from_secs(15),
        || async { !listed(&observer, "expiring").await },
    )
    .await
    .expect("wait");
    proxy.set_down(false);

    let renewed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match zk_events.recv().await {
                Ok(ZkEvent::SessionRenewed { old, new }) => return Some((old, new)),
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return None,
            }
        }
    })
    .await
    .ok()
    .flatten();
    let (old, new) = renewed.expect("a SessionRenewed event");
    assert_eq!(old, old_session);
    assert_ne!(new, old);
    assert_eq!(reg.session(), new);

    wait_until(
        "keep_alive reports LeaseLost after the expiry",
        Duration::from_secs(10),
        || async { matches!(reg.keep_alive(&lease).await, Err(Error::LeaseLost { .. })) },
    )
    .await
    .expect("wait");
    assert!(matches!(
        reg.update_node(&lease, &n).await,
        Err(Error::LeaseLost { .. })
    ));
    assert!(!listed(&observer, "expiring").await, "not recreated");

    // Both watches came back and deliver changes made by others.
    observer
        .put_task(&meta("after-expiry"), PutMode::CreateOnly)
        .await
        .expect("put");
    assert!(
        next_matching(&mut tasks, Duration::from_secs(10), |e| {
            matches!(e, TaskMetaEvent::Put(m) if m.name == "after-expiry")
        })
        .await,
        "the task watch is re-armed in the new session"
    );
    wait_until(
        "re-registering works once the server is back",
        Duration::from_secs(10),
        || async { reg.register(&n, Duration::from_secs(4)).await.is_ok() },
    )
    .await
    .expect("wait");
    assert!(listed(&observer, "expiring").await, "the node is back");
    assert!(
        next_matching(&mut nodes, Duration::from_secs(10), |e| {
            matches!(e, NodeEvent::Put(x) if x.id == "expiring")
        })
        .await,
        "the node watch is re-armed in the new session"
    );
    // Claims work in the new session.
    assert!(
        claim(&reg, &fire("after-expiry", 0), "x", Duration::from_secs(60))
            .await
            .is_won()
    );
    reg.close().await;
    observer.cleanup_all().await.expect("cleanup");
}

/// Every znode of the namespace, depth first (root included).
async fn every_znode(zk: &ZooKeeper, root: &str) -> Vec<String> {
    let mut out = vec![root.to_string()];
    let mut i = 0;
    while i < out.len() {
        let path = out[i].clone();
        for c in zk.get_children(&path, false).await.expect("children") {
            out.push(format!("{path}/{c}"));
        }
        i += 1;
    }
    out
}

/// Claims racing new lives: a batch of fires claimed in one life while another client starts
/// the next life (`restart_life`, then a `Force` put, in turns), then the same fires claimed in
/// the new life by someone else. Whatever the interleaving, no fire is held by two claimants
/// across the lives, every claim answered `Won` is listed as written, and a fire listed after
/// the race is `Lost` to the new life, naming its holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_racing_new_lives_never_win_twice() {
    let ns = unique("lives-race");
    let Some(a) = shared_registry(&ns).await else {
        return;
    };
    let b = shared_registry(&ns).await.expect("second client");
    let name = "raced";
    a.put_task(&meta(name), PutMode::CreateOnly)
        .await
        .expect("create");
    let mut generation = a
        .ensure_lives(&[(name.to_string(), Utc::now())])
        .await
        .expect("life")[0]
        .generation;
    let request = |ms: i64, generation: u64| {
        let f = fire(name, ms);
        ClaimRequest::new(
            f.clone(),
            generation,
            f.instant + chrono::Duration::days(1),
            Duration::from_secs(600),
        )
    };
    let (mut won, mut kept, mut superseded) = (0usize, 0usize, 0usize);
    for round in 0..24i64 {
        let offsets: Vec<i64> = (0..40).map(|i| round * 1000 + i).collect();
        let batch: Vec<ClaimRequest> = offsets.iter().map(|ms| request(*ms, generation)).collect();
        let old_life = Claimant::new("old-life", 1);
        let claimed = a.claim(&old_life, &batch);
        let restarted = async {
            // Not a wait for anything: the new life starts 0–5 ms into the claims, so that the
            // rounds meet the claims at different steps (before R1, between R1 and R2, after).
            tokio::time::sleep(Duration::from_millis(u64::try_from(round % 6).unwrap_or(0))).await;
            if round % 2 == 0 {
                b.restart_life(name, Utc::now()).await.map(|l| l.generation)
            } else {
                b.put_task(&meta(name), PutMode::Force).await?;
                b.ensure_lives(&[(name.to_string(), Utc::now())])
                    .await
                    .map(|l| l[0].generation)
            }
        };
        let (first, next) = tokio::join!(claimed, restarted);
        let first = first.expect("claims of the old life");
        let next = next.expect("new life");
        assert!(
            next > generation,
            "round {round}: {next} after {generation}"
        );
        let second = b
            .claim(
                &Claimant::new("new-life", 1),
                &offsets
                    .iter()
                    .map(|ms| request(*ms, next))
                    .collect::<Vec<_>>(),
            )
            .await
            .expect("claims of the new life");
        let listed = a.list_claims(name).await.expect("claims").items;
        for (i, (old, new)) in first.iter().zip(&second).enumerate() {
            let fire = &batch[i].fire;
            let holders: Vec<_> = listed.iter().filter(|c| &c.fire == fire).collect();
            assert!(holders.len() <= 1, "{fire}: listed twice: {holders:?}");
            match old {
                ClaimOutcome::Won { token } => {
                    won += 1;
                    assert_eq!(
                        new,
                        &ClaimOutcome::Lost {
                            holder: Some("old-life".into())
                        },
                        "{fire}: won in the old life"
                    );
                    assert_eq!(
                        holders.first().map(|c| (c.token, c.generation)),
                        Some((*token, generation)),
                        "{fire}: listed as won"
                    );
                }
                ClaimOutcome::Superseded { current } => {
                    superseded += 1;
                    assert_eq!(*current, Some(next), "{fire}");
                    // A claim written before the new life was seen stays held by its claimant.
                    match holders.first() {
                        Some(c) => {
                            kept += 1;
                            assert_eq!(c.node_id, "old-life", "{fire}");
                            assert!(
                                matches!(new, ClaimOutcome::Lost { holder: Some(h) } if h == "old-life"),
                                "{fire}: {new:?}"
                            );
                        }
                        None => assert!(new.is_won(), "{fire}: {new:?}"),
                    }
                }
                other => panic!("{fire}: the old life answered {other:?}"),
            }
            if new.is_won() {
                assert_eq!(
                    holders.first().map(|c| c.node_id.as_str()),
                    Some("new-life"),
                    "{fire}"
                );
            }
        }
        generation = next;
    }
    println!("old life: {won} won, {superseded} superseded ({kept} of them with their claim kept)");
    a.cleanup_all().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_acl_keeps_other_clients_out_of_every_znode() {
    let ns = unique("auth");
    let root = common::root_of(&ns);
    let owner_config = ZkRegistryConfig::new(shared_connect())
        .namespace(root.clone())
        .digest_auth("dcron", "s3cret");
    let Some(owner) = shared_registry_with(owner_config).await else {
        return;
    };
    // One of everything: record, tombstone, life, claim, node record, records.
    owner
        .put_task(&meta("private"), PutMode::CreateOnly)
        .await
        .expect("owner writes");
    owner
        .mark_deleted("dead", Utc::now())
        .await
        .expect("tombstone");
    assert!(
        claim(&owner, &fire("private", 0), "n", Duration::from_secs(60))
            .await
            .is_won()
    );
    let lease = owner
        .register(&node("owner-node"), Duration::from_secs(5))
        .await
        .expect("owner registers");
    owner
        .put_records(
            dcron_core::RecordKind::Pause,
            &[("private".into(), b"p".to_vec())],
        )
        .await
        .expect("record");

    // No credentials, or the wrong ones: the registry refuses to connect.
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
    // A plain client with the credentials sees every znode; one without can change none.
    let authed = raw_client(&shared_connect()).await;
    authed
        .add_auth("digest", b"dcron:s3cret".to_vec())
        .await
        .expect("auth");
    let all = every_znode(&authed, &root).await;
    assert!(all.len() >= 10, "{all:?}");
    let stranger = raw_client(&shared_connect()).await;
    for path in &all {
        let (acl, _) = authed.get_acl(path).await.expect("acl");
        assert_eq!(acl.len(), 1, "{path}: {acl:?}");
        assert_eq!(acl[0].scheme, "digest", "{path}: {acl:?}");
        assert_eq!(
            stranger.get_data(path, false).await.err(),
            Some(ZkError::NoAuth),
            "{path}: read"
        );
        assert_eq!(
            stranger.set_data(path, b"x".to_vec(), None).await.err(),
            Some(ZkError::NoAuth),
            "{path}: write"
        );
        let child = format!("{path}/intruder");
        let created = stranger
            .create(
                &child,
                Vec::new(),
                Acl::open_unsafe().clone(),
                CreateMode::Persistent,
            )
            .await
            .err();
        assert!(
            matches!(
                created,
                Some(ZkError::NoAuth | ZkError::NoChildrenForEphemerals)
            ),
            "{path}: create a child → {created:?}"
        );
        if path != &root {
            // Deleting needs the parent's permission, which strangers lack.
            assert_eq!(
                stranger.delete(path, None).await.err(),
                Some(ZkError::NoAuth),
                "{path}: delete"
            );
        }
    }
    let _ = stranger.close().await;
    let _ = authed.close().await;
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
async fn world_readable_lets_others_read_but_not_write() {
    let ns = unique("readable");
    let root = common::root_of(&ns);
    let config = ZkRegistryConfig::new(shared_connect())
        .namespace(root.clone())
        .digest_auth("dcron", "s3cret")
        .world_readable(true);
    let Some(owner) = shared_registry_with(config).await else {
        return;
    };
    owner
        .put_task(&meta("shown"), PutMode::CreateOnly)
        .await
        .expect("write");
    let stranger = raw_client(&shared_connect()).await;
    let path = owner.task_path("shown");
    assert!(stranger.get_data(&path, false).await.is_ok(), "readable");
    assert_eq!(
        stranger.set_data(&path, b"x".to_vec(), None).await.err(),
        Some(ZkError::NoAuth)
    );
    let _ = stranger.close().await;
    owner.cleanup_all().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_namespaces_are_refused() {
    let ns = unique("nest");
    let outer = common::root_of(&ns);
    let Some(reg) =
        shared_registry_with(ZkRegistryConfig::new(shared_connect()).namespace(outer.clone()))
            .await
    else {
        return;
    };
    // A namespace inside another one (even at one of its own directories) is refused …
    for inner in [format!("{outer}/tasks"), format!("{outer}/x/y")] {
        match ZkRegistry::connect(ZkRegistryConfig::new(shared_connect()).namespace(inner.clone()))
            .await
        {
            Err(Error::InvalidArgument(m)) => assert!(m.contains("nest"), "{m}"),
            other => panic!("{inner}: expected InvalidArgument, got {other:?}"),
        }
    }
    // … and so is one around another one.
    let deep = format!("{}/{}", common::root_of(&unique("around")), "inner");
    let inner =
        ZkRegistry::connect(ZkRegistryConfig::new(shared_connect()).namespace(deep.clone()))
            .await
            .expect("a namespace under a plain znode");
    let parent = deep
        .rsplit_once('/')
        .map(|(p, _)| p.to_string())
        .expect("parent");
    match ZkRegistry::connect(ZkRegistryConfig::new(shared_connect()).namespace(parent.clone()))
        .await
    {
        Err(Error::InvalidArgument(m)) => assert!(m.contains("nest"), "{m}"),
        other => panic!("{parent}: expected InvalidArgument, got {other:?}"),
    }
    // Siblings whose names extend one another are fine.
    let sibling = ZkRegistry::connect(
        ZkRegistryConfig::new(shared_connect()).namespace(format!("{outer}-tasks")),
    )
    .await
    .expect("a sibling namespace");
    sibling.cleanup_all().await.expect("cleanup");
    inner.cleanup_all().await.expect("cleanup");
    reg.cleanup_all().await.expect("cleanup");
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
        assert!(
            next_matching(&mut events, Duration::from_secs(5), |e| {
                matches!(e, NodeEvent::Put(x) if x.id == "watched" && x.status == status)
            })
            .await,
            "status {status} delivered as a data change"
        );
    }
    reg.unregister(&lease).await.expect("unregister");
    assert!(
        next_matching(&mut events, Duration::from_secs(5), |e| *e
            == NodeEvent::Delete {
                id: "watched".into()
            })
        .await
    );
    reg.cleanup_all().await.expect("cleanup");
}

/// On a server without TTL znodes: `require_ttl` is a typed error; otherwise the sweeper is
/// announced, expired claims count as absent at once, and the sweeper collects them — by
/// expiry alone: the claims of a removed life stay, and claim znodes of earlier builds
/// (`{generation}_{instant}`, no longer read) are collected once expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_without_ttl_znodes() {
    let Some(server) = common::OwnedServer::start_with(false).await else {
        return;
    };
    let root = common::root_of(&unique("nottl"));
    let base = || {
        ZkRegistryConfig::new(server.connect())
            .namespace(root.clone())
            .operation_timeout(Duration::from_secs(3))
    };
    match ZkRegistry::connect(base().require_ttl(true)).await {
        Err(Error::Unsupported { operation }) => {
            assert!(operation.contains("extendedTypesEnabled"), "{operation}")
        }
        other => panic!("require_ttl on a server without TTL znodes: {other:?}"),
    }
    let reg = ZkRegistry::connect(base().sweep_interval(Duration::from_millis(200)))
        .await
        .expect("falls back to the sweeper");
    assert!(!reg.ttl_claims(), "claims are persistent znodes");

    let short = fire("swept", 0);
    let keep = fire("swept", 1000);
    assert!(claim(&reg, &short, "a", Duration::from_millis(1500))
        .await
        .is_won());
    assert!(claim(&reg, &keep, "a", Duration::from_secs(600))
        .await
        .is_won());
    let first_life = reg
        .list_claims("swept")
        .await
        .expect("claims")
        .items
        .iter()
        .find(|c| c.fire == keep)
        .map(|c| c.generation)
        .expect("the kept claim is listed");
    // Expired: not listed and claimable by another at once, long before any sweep could help.
    wait_until(
        "the expired claim is no longer listed",
        Duration::from_secs(5),
        || async {
            reg.list_claims("swept")
                .await
                .map(|l| l.items.len() == 1 && l.items[0].fire == keep)
                .unwrap_or(false)
        },
    )
    .await
    .expect("wait");
    assert!(claim(&reg, &short, "b", Duration::from_secs(600))
        .await
        .is_won());
    // The name is removed: its life goes, its claims stay (the next claim starts a new life).
    reg.cleanup_task("swept").await.expect("cleanup");
    // Claim znodes of an earlier build: one long expired, one retained.
    let raw = raw_client(&server.connect()).await;
    let dir = reg.task_path("swept");
    let legacy = |retention_ms: u64| {
        serde_json::to_vec(&serde_json::json!({
            "node_id": "old-build", "epoch": 1, "generation": first_life,
            "retention_ms": retention_ms
        }))
        .expect("json")
    };
    for (name, retention_ms) in [("1_1900000003000", 1), ("1_1900000004000", 600_000)] {
        raw.create(
            &format!("{dir}/{name}"),
            legacy(retention_ms),
            Acl::open_unsafe().clone(),
            CreateMode::Persistent,
        )
        .await
        .expect("legacy claim");
    }
    // The sweeper collects expired claim znodes (the takeover's parent once the chain is
    // expired: here the 1.5 s claim, its successor still held keeps it).
    let short2 = fire("swept", 2000);
    assert!(claim(&reg, &short2, "a", Duration::from_millis(300))
        .await
        .is_won());
    wait_until(
        "the sweeper deleted the expired claim znodes, of this build and an earlier one",
        Duration::from_secs(15),
        || async {
            let children = raw.get_children(&dir, false).await.unwrap_or_default();
            !children
                .iter()
                .any(|c| c == "1900000002000" || c == "1_1900000003000")
        },
    )
    .await
    .expect("wait");
    let mut children = raw.get_children(&dir, false).await.expect("children");
    children.sort();
    assert_eq!(
        children,
        vec!["1900000000000", "1900000001000", "1_1900000004000"],
        "retained claims stay through the sweeps, whatever their life"
    );
    // The claim of the removed life still holds its fire in the new one, and is listed as it
    // was written; the earlier build's claim is not read.
    assert!(matches!(
        claim(&reg, &keep, "b", Duration::from_secs(60)).await,
        ClaimOutcome::Lost { holder: Some(h) } if h == "a"
    ));
    let listed = reg.list_claims("swept").await.expect("claims").items;
    let kept = listed.iter().find(|c| c.fire == keep).expect("listed");
    assert_eq!(
        (kept.node_id.as_str(), kept.epoch, kept.generation),
        ("a", 1, first_life)
    );
    assert!(
        claim(&reg, &fire("swept", 4000), "b", Duration::from_secs(60))
            .await
            .is_won()
    );
    let _ = raw.close().await;
    reg.cleanup_all().await.expect("cleanup");
    reg.close().await;
}

#[tokio::test]
async fn unreachable_server_is_unavailable_quickly() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let started = tokio::time::Instant::now();
    let res = ZkRegistry::connect(
        ZkRegistryConfig::new(format!("127.0.0.1:{port}"))
            .connect_timeout(Duration::from_millis(800)),
    )
    .await;
    assert!(matches!(res, Err(Error::Unavailable { .. })), "{res:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(matches!(
        ZkRegistry::connect(ZkRegistryConfig::new("not a host:xx")).await,
        Err(Error::InvalidArgument(_))
    ));
}
