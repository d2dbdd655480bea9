//! etcd-specific checks of the registry contract on the shared server (the generic ones are in
//! the conformance suite): what is stored where, lease attachment, paging, sharing of retention
//! leases, escaping, errors.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use dcron_core::{
    ClaimOutcome, Error, FireKey, Node, NodeStatus, PutMode, Registry, TaskMetaEvent,
};
use dcron_registry_etcd::{EtcdRegistry, EtcdRegistryConfig, MAX_VALUE_BYTES};
use etcd_client::GetOptions;
use futures::stream::{self, StreamExt};
use tokio::time::Instant;

use common::{fire, fresh_namespace, shared, shared_in};
use dcron_testkit::wait_until;

const LONG: Duration = Duration::from_secs(600);

/// The lease of the node key, read directly.
async fn node_key_lease(reg: &EtcdRegistry, node_id: &str) -> Option<i64> {
    let key = format!("/{}/nodes/{}", reg.namespace(), node_id);
    let resp = reg.client().clone().get(key, None).await.expect("raw get");
    resp.kvs().first().map(|kv| kv.lease())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_node_keeps_the_key_on_its_lease_and_the_node_still_expires() {
    let Some(reg) = shared("update_node_lease").await else {
        return;
    };
    let Some(observer) = shared_in("update_node_lease", reg.namespace()).await else {
        return;
    };
    let mut node = Node::new("n1", Utc::now());
    let lease = reg
        .register(&node, Duration::from_secs(2))
        .await
        .expect("register");
    let id: i64 = lease.id.parse().expect("numeric lease id");
    assert_eq!(node_key_lease(&reg, "n1").await, Some(id));
    // Several status updates, as a heartbeat would write them.
    for status in [
        NodeStatus::Working,
        NodeStatus::Working,
        NodeStatus::Leaving,
    ] {
        node.status = status;
        node.last_alive = Utc::now();
        reg.update_node(&lease, &node).await.expect("update_node");
        assert_eq!(
            node_key_lease(&reg, "n1").await,
            Some(id),
            "the record must stay attached to the lease after update_node"
        );
    }
    let started = Instant::now();
    // Keep-alives stop: the updated record still expires with the lease.
    if let Err(e) = wait_until(
        "the updated node unlisted with its lease",
        Duration::from_secs(5),
        || async {
            !observer
                .list_nodes()
                .await
                .expect("list")
                .items
                .iter()
                .any(|n| n.id == "n1")
        },
    )
    .await
    {
        panic!(
            "{e}; updated node still listed after {:?}",
            started.elapsed()
        );
    }
    assert!(matches!(
        reg.update_node(&lease, &node).await,
        Err(Error::LeaseLost { .. })
    ));
    assert_eq!(node_key_lease(&reg, "n1").await, None, "not recreated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_node_refuses_a_record_of_another_node() {
    let Some(reg) = shared("update_other").await else {
        return;
    };
    let lease = reg
        .register(&Node::new("a", Utc::now()), Duration::from_secs(10))
        .await
        .expect("register");
    assert!(matches!(
        reg.update_node(&lease, &Node::new("b", Utc::now())).await,
        Err(Error::InvalidArgument(_))
    ));
    reg.unregister(&lease).await.expect("unregister");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_tasks_are_listed_completely() {
    let Some(reg) = shared("many_tasks").await else {
        return;
    };
    const N: usize = 2_100;
    let reg = Arc::new(reg);
    let results: Vec<_> = stream::iter(0..N)
        .map(|i| {
            let reg = reg.clone();
            async move {
                reg.put_task(
                    &common::meta(format!("task {i:05} ✓"), "@hourly"),
                    PutMode::CreateOnly,
                )
                .await
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    assert!(results.iter().all(Result::is_ok), "every put succeeds");
    for page in [200, 7] {
        let paged = EtcdRegistryConfig::from_env()
            .namespace(reg.namespace())
            .list_page_size(page)
            .connect()
            .await
            .expect("connect");
        let listing = paged.list_tasks().await.expect("list");
        assert!(listing.corrupt.is_empty());
        let names: HashSet<String> = listing.items.into_iter().map(|m| m.name).collect();
        assert_eq!(names.len(), N, "page size {page}: every task listed once");
        assert!(names.contains("task 02099 ✓"));
    }
    reg.cleanup_all().await.expect("cleanup");
    assert!(reg.list_tasks().await.expect("list").items.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_with_one_key_per_page_lists_everything() {
    let Some(reg) = shared("one_per_page").await else {
        return;
    };
    for i in 0..5 {
        reg.put_task(
            &common::meta(format!("t{i}"), "@hourly"),
            PutMode::CreateOnly,
        )
        .await
        .expect("put");
    }
    let paged = EtcdRegistryConfig::from_env()
        .namespace(reg.namespace())
        .list_page_size(1)
        .connect()
        .await
        .expect("connect");
    let mut names: Vec<String> = paged
        .list_tasks()
        .await
        .expect("list")
        .items
        .into_iter()
        .map(|m| m.name)
        .collect();
    names.sort();
    assert_eq!(names, ["t0", "t1", "t2", "t3", "t4"]);
    reg.cleanup_all().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_shares_one_retention_lease_and_tokens_increase() {
    let Some(reg) = shared("retention_lease").await else {
        return;
    };
    let fires: Vec<FireKey> = (0..50).map(|i| fire(&format!("job-{i}"), 0)).collect();
    let outcomes = common::claim_fires(&reg, "n", &fires, LONG)
        .await
        .expect("claim");
    assert!(outcomes.iter().all(ClaimOutcome::is_won));
    let prefix = format!("/{}/claims/", reg.namespace());
    let resp = reg
        .client()
        .clone()
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .expect("raw get");
    assert_eq!(resp.kvs().len(), 50);
    let leases: HashSet<i64> = resp.kvs().iter().map(|kv| kv.lease()).collect();
    assert_eq!(
        leases.len(),
        1,
        "one retention lease for the batch: {leases:?}"
    );
    assert!(!leases.contains(&0), "claims are attached to a lease");
    // A later batch reuses it too, and later claims get greater tokens.
    let first_max = outcomes
        .iter()
        .filter_map(|o| match o {
            ClaimOutcome::Won { token } => Some(*token),
            _ => None,
        })
        .max()
        .expect("tokens");
    let later = common::claim_fires(&reg, "n", &[fire("job-0", 1)], LONG)
        .await
        .expect("claim");
    match &later[0] {
        ClaimOutcome::Won { token } => assert!(*token > first_max),
        other => panic!("expected a win, got {other:?}"),
    }
    let claims = reg.list_claims("job-0").await.expect("list");
    assert_eq!(claims.items.len(), 2);
    reg.cleanup_all().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_clients_race_on_create_only_one_wins() {
    let namespace = fresh_namespace("create_race");
    let mut clients = Vec::new();
    for _ in 0..16 {
        let Some(reg) = shared_in("create_race", &namespace).await else {
            return;
        };
        clients.push(reg);
    }
    for round in 0..10 {
        let name = format!("contested-{round}");
        let results = futures::future::join_all(clients.iter().enumerate().map(|(i, reg)| {
            let meta = common::meta(name.clone(), "@hourly").with_payload(i.to_string());
            async move { reg.put_task(&meta, PutMode::CreateOnly).await }
        }))
        .await;
        let ok = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(ok, 1, "round {round}: exactly one create-only put wins");
        assert!(results
            .iter()
            .all(|r| r.is_ok() || matches!(r, Err(Error::AlreadyExists { .. }))));
    }
    clients[0].cleanup_all().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_only_and_mark_deleted_race_atomically() {
    let Some(a) = shared("create_vs_tomb").await else {
        return;
    };
    let Some(b) = shared_in("create_vs_tomb", a.namespace()).await else {
        return;
    };
    for i in 0..50 {
        let name = format!("t{i}");
        let meta = common::meta(name.clone(), "@hourly");
        let (put, tomb) = tokio::join!(
            a.put_task(&meta, PutMode::CreateOnly),
            b.mark_deleted(&name, Utc::now())
        );
        tomb.expect("mark_deleted");
        let stored = a.get_task(&name).await.expect("get");
        match put {
            Ok(()) => assert_eq!(stored, Some(meta), "a successful put is stored"),
            Err(Error::Tombstoned { .. }) => {
                assert_eq!(stored, None, "a refused put wrote nothing")
            }
            Err(e) => panic!("unexpected {e}"),
        }
        assert!(a.get_tombstone(&name).await.expect("get").is_some());
    }
    a.cleanup_all().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_with_slashes_and_prefixes_are_isolated() {
    let base = fresh_namespace("ns_iso");
    let mut regs = Vec::new();
    for ns in [
        base.clone(),
        format!("{base}/tasks"),
        format!("{base}-b"),
        format!("{base}/x"),
    ] {
        let Some(reg) = shared_in("ns_iso", &ns).await else {
            return;
        };
        reg.put_task(
            &common::meta("same", "@hourly").with_payload(ns.clone()),
            PutMode::CreateOnly,
        )
        .await
        .expect("put");
        reg.mark_deleted("gone", Utc::now()).await.expect("tomb");
        regs.push((ns, reg));
    }
    for (ns, reg) in &regs {
        let tasks = reg.list_tasks().await.expect("list");
        assert_eq!(tasks.items.len(), 1, "{ns}: {:?}", tasks.items);
        assert_eq!(&tasks.items[0].payload, ns);
        assert!(tasks.corrupt.is_empty(), "{ns}: {:?}", tasks.corrupt);
        assert_eq!(reg.list_tombstones().await.expect("list").items.len(), 1);
    }
    regs[0].1.cleanup_all().await.expect("cleanup");
    for (ns, reg) in &regs[1..] {
        assert_eq!(
            reg.list_tasks().await.expect("list").items.len(),
            1,
            "{ns} untouched"
        );
        reg.cleanup_all().await.expect("cleanup");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_are_escaped_and_round_trip() {
    let Some(reg) = shared("escaping").await else {
        return;
    };
    let names = ["report: daily ✓ 100%", "a*b?c", "%2F", "日本語", "x y", "x"];
    let mut stream = reg.watch_tasks().await.expect("watch");
    for name in names {
        reg.put_task(&common::meta(name, "@hourly"), PutMode::CreateOnly)
            .await
            .expect("put");
        common::claim_fires(&reg, "n", &[fire(name, 0)], LONG)
            .await
            .expect("claim");
    }
    let mut listed: Vec<String> = reg
        .list_tasks()
        .await
        .expect("list")
        .items
        .into_iter()
        .map(|m| m.name)
        .collect();
    listed.sort();
    let mut expected: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(listed, expected);
    // One task's claims never include another's whose name extends it ("x" and "x y").
    assert_eq!(reg.list_claims("x").await.expect("list").items.len(), 1);
    reg.cleanup_task("x").await.expect("cleanup");
    assert_eq!(reg.list_claims("x y").await.expect("list").items.len(), 1);
    assert!(reg.get_task("x y").await.expect("get").is_some());
    // Watch events carry the unescaped names.
    let mut seen = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.len() < names.len() + 1 && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), stream.next()).await {
            Ok(Some(TaskMetaEvent::Put(meta))) => {
                seen.insert(format!("put {}", meta.name));
            }
            Ok(Some(TaskMetaEvent::Removed { name })) => {
                seen.insert(format!("removed {name}"));
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    for name in names {
        assert!(seen.contains(&format!("put {name}")), "{name}: {seen:?}");
    }
    assert!(seen.contains("removed x"), "{seen:?}");
    reg.cleanup_all().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_under_another_name_is_corrupt() {
    let Some(reg) = shared("misplaced").await else {
        return;
    };
    reg.put_task(&common::meta("good", "@hourly"), PutMode::CreateOnly)
        .await
        .expect("put");
    reg.client()
        .clone()
        .put(
            reg.task_key("here"),
            common::meta("elsewhere", "@hourly").encode(),
            None,
        )
        .await
        .expect("raw put");
    let listing = reg.list_tasks().await.expect("list");
    assert_eq!(listing.items.len(), 1);
    assert_eq!(listing.corrupt.len(), 1);
    assert_eq!(listing.corrupt[0].key, "here");
    assert!(matches!(
        reg.get_task("here").await,
        Err(Error::Corrupt { .. })
    ));
    reg.cleanup_all().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_records_are_refused_before_writing() {
    let Some(reg) = shared("oversized").await else {
        return;
    };
    let big = common::meta("big", "@hourly").with_payload("x".repeat(MAX_VALUE_BYTES));
    assert!(matches!(
        reg.put_task(&big, PutMode::Force).await,
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(reg.get_task("big").await.expect("get"), None);
    // Just under the limit is stored.
    let fits = common::meta("fits", "@hourly").with_payload("x".repeat(MAX_VALUE_BYTES - 100));
    reg.put_task(&fits, PutMode::CreateOnly).await.expect("put");
    assert_eq!(reg.get_task("fits").await.expect("get"), Some(fits));
    reg.cleanup_all().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_unavailable_quickly() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let started = Instant::now();
    let result = EtcdRegistryConfig::new([format!("127.0.0.1:{port}")])
        .connect_timeout(Duration::from_millis(500))
        .request_timeout(Duration::from_secs(1))
        .connect()
        .await;
    assert!(
        matches!(result, Err(Error::Unavailable { .. })),
        "{result:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configurations_are_invalid_arguments() {
    for config in [
        EtcdRegistryConfig::new(Vec::<String>::new()),
        EtcdRegistryConfig::new(["127.0.0.1:2379"]).namespace(""),
        EtcdRegistryConfig::new(["not a uri \u{7f}"]),
    ] {
        assert!(
            matches!(config.connect().await, Err(Error::InvalidArgument(_))),
            "expected InvalidArgument"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_watch_reader_gets_resync_not_a_stall() {
    let Some(reg) = shared("slow_reader").await else {
        return;
    };
    let small = EtcdRegistryConfig::from_env()
        .namespace(reg.namespace())
        .watch_buffer(4)
        .connect()
        .await
        .expect("connect");
    let mut stream = small.watch_tasks().await.expect("watch");
    for i in 0..50 {
        reg.put_task(
            &common::meta(format!("t{i}"), "@hourly"),
            PutMode::CreateOnly,
        )
        .await
        .expect("put");
    }
    // Writes never waited for the reader; reading now yields the buffered events, then Resync.
    let mut resynced = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !resynced && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), stream.next()).await {
            Ok(Some(TaskMetaEvent::Resync)) => resynced = true,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    assert!(resynced, "an overflowing watch must yield Resync");
    reg.cleanup_all().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_on_a_server_without_authentication_are_accepted() {
    let Some(plain) = shared("creds_no_auth").await else {
        return;
    };
    let reg = EtcdRegistryConfig::from_env()
        .namespace(plain.namespace())
        .credentials("someone", "secret")
        .connect()
        .await
        .expect("connect");
    reg.put_task(&common::meta("t", "@hourly"), PutMode::CreateOnly)
        .await
        .expect("put");
    reg.cleanup_all().await.expect("cleanup");
}
