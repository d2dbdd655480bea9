//! Consul-specific behaviour of `ConsulRegistry`, on the test double: sessions, transactions
//! beyond 64 operations, claim expiry and fencing, watch resyncs, error mapping.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use dcron_core::{
    ClaimOutcome, Error, FireKey, Node, NodeEvent, NodeStatus, PutMode, Registry, TaskMeta,
    TaskMetaEvent,
};
use dcron_registry_consul::{ConsulRegistry, ConsulRegistryConfig, MAX_VALUE_BYTES};
use futures::StreamExt;
use support::double::{ConsulDouble, DoubleConfig};
use support::{config, eventually, registry};

fn fire(task: &str, offset_ms: i64) -> FireKey {
    FireKey::new(
        task,
        Utc.timestamp_millis_opt(1_900_000_000_000 + offset_ms)
            .single()
            .expect("instant"),
    )
}

fn node(id: &str) -> Node {
    Node::new(id, Utc::now())
}

async fn session_info(d: &ConsulDouble, id: &str) -> serde_json::Value {
    reqwest::get(format!("{}/v1/session/info/{id}", d.address()))
        .await
        .expect("info")
        .json()
        .await
        .expect("json")
}

#[tokio::test]
async fn register_uses_a_delete_session_without_lock_delay_and_update_keeps_it() {
    let d = ConsulDouble::start().await;
    let reg = registry(&d, "ns");
    let lease = reg
        .register(&node("n1"), Duration::from_millis(1500))
        .await
        .expect("register");
    assert_eq!(
        lease.ttl,
        Duration::from_secs(2),
        "rounded up to whole seconds"
    );
    let info = session_info(&d, &lease.id).await;
    assert_eq!(info[0]["Behavior"], "delete");
    assert_eq!(info[0]["LockDelay"], 0);
    assert_eq!(info[0]["TTL"], "2s");
    assert_eq!(d.key_session("ns/nodes/n1"), Some(Some(lease.id.clone())));

    let mut working = node("n1");
    working.status = NodeStatus::Working;
    reg.update_node(&lease, &working).await.expect("update");
    assert_eq!(
        d.key_session("ns/nodes/n1"),
        Some(Some(lease.id.clone())),
        "the record stays attached to the session"
    );
    let listed = reg.list_nodes().await.expect("list").items;
    assert_eq!(listed[0].status, NodeStatus::Working);

    assert!(matches!(
        reg.update_node(&lease, &node("other")).await,
        Err(Error::InvalidArgument(_))
    ));

    reg.unregister(&lease).await.expect("unregister");
    assert_eq!(d.key_session("ns/nodes/n1"), None);
    assert_eq!(d.session_count(), 0);
    assert!(matches!(
        reg.keep_alive(&lease).await,
        Err(Error::LeaseLost { .. })
    ));
    reg.unregister(&lease).await.expect("idempotent");
}

#[tokio::test]
async fn ttl_is_clamped_to_the_configured_minimum() {
    let d = ConsulDouble::start().await;
    let reg = registry(&d, "ns");
    let lease = reg
        .register(&node("n"), Duration::from_millis(1))
        .await
        .expect("register");
    assert_eq!(lease.ttl, Duration::from_secs(1));
    assert!(matches!(
        reg.register(&node("n"), Duration::ZERO).await,
        Err(Error::InvalidArgument(_))
    ));
    // A double that enforces Consul's real minimum refuses 1 s sessions: the registry must then
    // be configured with min_session_ttl = 10 s (the default), which it is by default.
    let strict = ConsulDouble::start_with(DoubleConfig {
        min_session_ttl: Duration::from_secs(10),
        ..DoubleConfig::default()
    })
    .await;
    let default_min =
        ConsulRegistry::new(ConsulRegistryConfig::new(strict.address()).with_namespace("ns"))
            .expect("config");
    let lease = default_min
        .register(&node("n"), Duration::from_secs(1))
        .await
        .expect("raised to 10 s");
    assert_eq!(lease.ttl, Duration::from_secs(10));
    let too_low = registry(&strict, "ns")
        .register(&node("m"), Duration::from_secs(1))
        .await;
    match too_low {
        Err(Error::Backend {
            backend, message, ..
        }) => {
            assert_eq!(backend, "consul");
            assert!(
                message.contains("400") && message.contains("Invalid Session TTL"),
                "{message}"
            );
        }
        other => panic!("expected a Backend error, got {other:?}"),
    }
}

#[tokio::test]
async fn claims_beyond_one_transaction_mix_outcomes_in_order() {
    let d = ConsulDouble::start().await;
    let reg = registry(&d, "ns");
    reg.mark_deleted("dead", Utc::now())
        .await
        .expect("tombstone");
    // 150 fires of three tasks (more than 64 operations), one tombstoned task, some claimed.
    let mut fires = Vec::new();
    for i in 0..60 {
        fires.push(fire("a", i));
        fires.push(fire("b", i));
    }
    for i in 0..30 {
        fires.push(fire("dead", i));
    }
    let pre: Vec<FireKey> = (0..60).step_by(3).map(|i| fire("b", i)).collect();
    let pre_out = reg
        .claim(&pre, "other", Duration::from_secs(60))
        .await
        .expect("claim");
    assert!(pre_out.iter().all(ClaimOutcome::is_won));
    let out = reg
        .claim(&fires, "me", Duration::from_secs(60))
        .await
        .expect("claim");
    assert_eq!(out.len(), fires.len());
    for (f, o) in fires.iter().zip(&out) {
        let expected = if f.task == "dead" {
            "tombstoned"
        } else if pre.contains(f) {
            "lost"
        } else {
            "won"
        };
        let got = match o {
            ClaimOutcome::Won { .. } => "won",
            ClaimOutcome::Lost => "lost",
            ClaimOutcome::Tombstoned => "tombstoned",
        };
        assert_eq!(got, expected, "{f}");
    }
    assert_eq!(
        d.count_keys("ns/claims/dead/"),
        0,
        "tombstoned fires write nothing"
    );
    // Tokens: non-zero and distinct within a task, and what list_claims shows.
    let mut tokens = HashSet::new();
    for (f, o) in fires.iter().zip(&out) {
        if let ClaimOutcome::Won { token } = o {
            assert!(*token > 0);
            assert!(tokens.insert((f.task.clone(), *token)), "duplicate token");
        }
    }
    let listed = reg.list_claims("a").await.expect("list").items;
    assert_eq!(listed.len(), 60);
    for c in listed {
        assert!(tokens.contains(&("a".to_string(), c.token)));
        assert_eq!(c.node_id, "me");
    }
}

#[tokio::test]
async fn expired_claims_are_replaced_hidden_and_swept() {
    let d = ConsulDouble::start().await;
    let reg = registry(&d, "ns");
    let f = fire("t", 0);
    let first = reg
        .claim(std::slice::from_ref(&f), "n1", Duration::from_millis(300))
        .await
        .expect("claim")[0];
    let ClaimOutcome::Won { token: t1 } = first else {
        panic!("first claim {first:?}");
    };
    assert_eq!(
        reg.claim(std::slice::from_ref(&f), "n2", Duration::from_secs(60))
            .await
            .expect("claim"),
        [ClaimOutcome::Lost]
    );
    // Once expired the claim is hidden and the fire can be won again, with a larger token.
    let reg2 = reg.clone();
    assert!(
        eventually(Duration::from_secs(5), || {
            let reg = reg2.clone();
            async move { reg.list_claims("t").await.expect("list").items.is_empty() }
        })
        .await
    );
    let again = reg
        .claim(std::slice::from_ref(&f), "n2", Duration::from_secs(60))
        .await
        .expect("claim")[0];
    let ClaimOutcome::Won { token: t2 } = again else {
        panic!("re-claim {again:?}");
    };
    assert!(t2 > t1);
    let listed = reg.list_claims("t").await.expect("list").items;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].node_id, "n2");

    // Expired claims of other fires are deleted by list_claims' sweep.
    let short: Vec<FireKey> = (1..=5).map(|i| fire("s", i)).collect();
    reg.claim(&short, "n1", Duration::from_millis(100))
        .await
        .expect("claim");
    assert_eq!(d.count_keys("ns/claims/s/"), 5);
    assert!(
        eventually(Duration::from_secs(5), || {
            let reg = reg.clone();
            let d = &d;
            async move {
                let _ = reg.list_claims("s").await;
                d.count_keys("ns/claims/s/") == 0
            }
        })
        .await,
        "expired claim keys are deleted"
    );
}

#[tokio::test]
async fn batches_of_many_distinct_tasks_fit_the_operation_limit() {
    let d = ConsulDouble::start().await;
    let reg = registry(&d, "ns");
    // Two operations per fire (tombstone check + cas): 150 fires need five transactions.
    let fires: Vec<FireKey> = (0..150).map(|i| fire(&format!("t{i}"), i)).collect();
    let out = reg
        .claim(&fires, "n", Duration::from_secs(60))
        .await
        .expect("claim");
    assert!(out.iter().all(ClaimOutcome::is_won));
    assert_eq!(d.count_keys("ns/claims/"), 150);
    let again = reg
        .claim(&fires, "m", Duration::from_secs(60))
        .await
        .expect("claim");
    assert!(again.iter().all(|o| *o == ClaimOutcome::Lost));
}

#[tokio::test]
async fn claiming_sweeps_a_tasks_expired_claims_in_the_background() {
    let d = ConsulDouble::start().await;
    let reg = registry(&d, "ns");
    let short: Vec<FireKey> = (0..5).map(|i| fire("bg", i)).collect();
    reg.claim(&short, "n", Duration::from_millis(100))
        .await
        .expect("claim");
    // Later claims of the task (long retention) trigger a sweep at most once per second;
    // without list_claims, the five expired keys must go.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    let mut long = 0;
    loop {
        long += 1;
        reg.claim(&[fire("bg", 1000 + long)], "n", Duration::from_secs(60))
            .await
            .expect("claim");
        if d.count_keys("ns/claims/bg/") == long as usize {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expired claims not swept: {} keys for {long} live claims",
            d.count_keys("ns/claims/bg/")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn concurrent_clients_each_fire_has_exactly_one_winner() {
    let d = ConsulDouble::start().await;
    let fires: Vec<FireKey> = (0..100)
        .map(|i| fire(&format!("task{}", i % 7), i))
        .collect();
    let mut handles = Vec::new();
    for c in 0..16 {
        let reg = registry(&d, "race");
        let mut mine = fires.clone();
        mine.rotate_left(c * 6);
        handles.push(tokio::spawn(async move {
            let out = reg
                .claim(&mine, &format!("node{c}"), Duration::from_secs(60))
                .await
                .expect("claim");
            mine.into_iter()
                .zip(out)
                .filter(|(_, o)| o.is_won())
                .map(|(f, _)| f)
                .collect::<Vec<_>>()
        }));
    }
    let mut won = Vec::new();
    for h in handles {
        won.extend(h.await.expect("join"));
    }
    let unique: HashSet<&FireKey> = won.iter().collect();
    assert_eq!(won.len(), 100, "one win per fire");
    assert_eq!(unique.len(), 100);
}

#[tokio::test]
async fn create_only_and_tombstone_are_decided_atomically() {
    let d = ConsulDouble::start().await;
    let reg = registry(&d, "ns");
    let meta = TaskMeta::new("job", "@hourly");
    reg.mark_deleted("job", Utc::now())
        .await
        .expect("tombstone");
    assert!(matches!(
        reg.put_task(&meta, PutMode::CreateOnly).await,
        Err(Error::Tombstoned { .. })
    ));
    assert_eq!(reg.get_task("job").await.expect("get"), None);
    reg.claim(&[fire("job", 1)], "n", Duration::from_secs(60))
        .await
        .expect("claim");
    reg.put_task(&meta, PutMode::Force).await.expect("force");
    assert_eq!(reg.get_tombstone("job").await.expect("get"), None);
    assert_eq!(d.count_keys("ns/claims/job/"), 0, "force clears claims");
    assert!(matches!(
        reg.put_task(&meta, PutMode::CreateOnly).await,
        Err(Error::AlreadyExists { .. })
    ));
    let big = TaskMeta::new("big", "@hourly").with_payload("x".repeat(MAX_VALUE_BYTES));
    assert!(matches!(
        reg.put_task(&big, PutMode::Force).await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        reg.put_task(&TaskMeta::new("a/b", "@hourly"), PutMode::Force)
            .await,
        Err(Error::InvalidTaskName { .. })
    ));
}

#[tokio::test]
async fn namespaces_with_slashes_and_prefixes_stay_apart() {
    let d = ConsulDouble::start().await;
    let a = registry(&d, "team");
    let b = registry(&d, "team/tasks");
    let c = registry(&d, "team-b");
    for r in [&a, &b, &c] {
        r.put_task(&TaskMeta::new("x", "@hourly"), PutMode::CreateOnly)
            .await
            .expect("each namespace has its own `x`");
    }
    b.cleanup_all().await.expect("cleanup");
    assert_eq!(a.list_tasks().await.expect("list").items.len(), 1);
    assert_eq!(b.list_tasks().await.expect("list").items.len(), 0);
    assert_eq!(c.list_tasks().await.expect("list").items.len(), 1);
}

#[tokio::test]
async fn errors_map_to_semantic_variants() {
    // Nothing listens: Unavailable.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let down = ConsulRegistry::new(config(&format!("http://{closed}"), "ns")).expect("config");
    let e = down.list_tasks().await.expect_err("refused");
    assert!(e.is_retryable(), "{e:?}");
    assert!(matches!(
        ConsulRegistry::connect(config(&format!("http://{closed}"), "ns")).await,
        Err(Error::Unavailable { .. })
    ));

    // ACLs: 403 is AccessDenied; the right token works and never shows in Debug.
    let d = ConsulDouble::start_with(DoubleConfig {
        acl_token: Some("s3cret".into()),
        ..DoubleConfig::default()
    })
    .await;
    assert!(matches!(
        registry(&d, "ns").list_nodes().await,
        Err(Error::AccessDenied(_))
    ));
    let with_token =
        ConsulRegistry::new(config(&d.address(), "ns").with_token("s3cret")).expect("config");
    with_token.list_nodes().await.expect("token accepted");
    assert!(!format!("{with_token:?}").contains("s3cret"));

    // Another status: Backend with the status, Consul's message and the key.
    let wrong_dc = ConsulRegistry::new(
        config(&d.address(), "ns")
            .with_token("s3cret")
            .with_datacenter("dc9"),
    )
    .expect("config");
    match wrong_dc.get_task("t").await {
        Err(Error::Backend {
            backend, message, ..
        }) => {
            assert_eq!(backend, "consul");
            assert!(message.contains("500"), "{message}");
            assert!(message.contains("No path to datacenter"), "{message}");
            assert!(message.contains("ns/tasks/t"), "{message}");
        }
        other => panic!("expected Backend, got {other:?}"),
    }
    let right_dc = ConsulRegistry::new(
        config(&d.address(), "ns")
            .with_token("s3cret")
            .with_datacenter("dc1"),
    )
    .expect("config");
    assert_eq!(right_dc.get_task("t").await.expect("dc1"), None);
}

#[tokio::test]
async fn corrupt_base64_or_json_is_reported_not_fatal() {
    let d = ConsulDouble::start().await;
    let reg = registry(&d, "ns");
    reg.put_task(&TaskMeta::new("good", "@hourly"), PutMode::CreateOnly)
        .await
        .expect("put");
    reqwest::Client::new()
        .put(format!("{}/v1/kv/ns/tasks/bad", d.address()))
        .body("{not json")
        .send()
        .await
        .expect("raw put");
    let listing = reg.list_tasks().await.expect("list");
    assert_eq!(listing.items.len(), 1);
    assert_eq!(listing.corrupt.len(), 1);
    assert!(matches!(
        reg.get_task("bad").await,
        Err(Error::Corrupt { .. })
    ));
}

#[tokio::test]
async fn watch_resyncs_when_the_index_goes_backwards_and_after_errors() {
    let d = ConsulDouble::start().await;
    let reg =
        ConsulRegistry::new(config(&d.address(), "ns").with_watch_wait(Duration::from_millis(300)))
            .expect("config");
    let mut nodes = reg.watch_nodes().await.expect("watch");
    let lease = reg
        .register(&node("w1"), Duration::from_secs(5))
        .await
        .expect("register");
    let next = tokio::time::timeout(Duration::from_secs(5), nodes.next())
        .await
        .expect("event in time");
    assert!(
        matches!(next, Some(NodeEvent::Put(ref n)) if n.id == "w1"),
        "{next:?}"
    );

    // A store rebuilt with a lower index: the watcher answers with Resync.
    d.rewind();
    let mut saw_resync = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, nodes.next()).await {
        if event == NodeEvent::Resync {
            saw_resync = true;
            break;
        }
    }
    assert!(saw_resync, "index went backwards → Resync");
    assert!(matches!(
        reg.keep_alive(&lease).await,
        Err(Error::LeaseLost { .. })
    ));

    // The server goes away and comes back: the watch retries and resyncs.
    let mut tasks = reg.watch_tasks().await.expect("watch");
    // Both blocking loops (tasks, tombstones) plus the node watch are waiting on the server.
    assert!(
        eventually(Duration::from_secs(5), || async {
            d.blocked_queries() >= 3
        })
        .await
    );
    d.stop_serving();
    d.restart().await;
    let mut saw_resync = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, tasks.next()).await {
        if event == TaskMetaEvent::Resync {
            saw_resync = true;
            break;
        }
    }
    assert!(saw_resync, "errors → back off, retry, Resync");
    // And it keeps delivering afterwards.
    reg.put_task(&TaskMeta::new("after", "@hourly"), PutMode::CreateOnly)
        .await
        .expect("put");
    let mut delivered = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, tasks.next()).await {
        if matches!(event, TaskMetaEvent::Put(ref m) if m.name == "after") {
            delivered = true;
            break;
        }
    }
    assert!(delivered);
}

#[tokio::test]
async fn session_expiry_removes_the_node_and_a_new_registration_comes_back() {
    let d = ConsulDouble::start().await;
    let reg: Arc<dyn Registry> = Arc::new(registry(&d, "ns"));
    let lease = reg
        .register(&node("gone"), Duration::from_secs(1))
        .await
        .expect("register");
    assert!(
        eventually(Duration::from_secs(4), || {
            let reg = reg.clone();
            async move { reg.list_nodes().await.expect("list").items.is_empty() }
        })
        .await
    );
    assert!(matches!(
        reg.keep_alive(&lease).await,
        Err(Error::LeaseLost { .. })
    ));
    assert!(matches!(
        reg.update_node(&lease, &node("gone")).await,
        Err(Error::LeaseLost { .. })
    ));
    assert!(
        reg.list_nodes().await.expect("list").items.is_empty(),
        "not recreated"
    );
    let again = reg
        .register(&node("gone"), Duration::from_secs(5))
        .await
        .expect("register");
    assert_ne!(again.id, lease.id);
    assert_eq!(reg.list_nodes().await.expect("list").items.len(), 1);
}

#[tokio::test]
async fn claim_expiry_follows_the_injected_clock() {
    let d = ConsulDouble::start().await;
    let clock = dcron_core::TokioClock::starting_at(Utc::now());
    let reg = registry(&d, "ns").with_clock(Arc::new(clock.clone()));
    let f = fire("clocked", 0);
    let first = reg
        .claim(std::slice::from_ref(&f), "n1", Duration::from_secs(60))
        .await
        .expect("claim");
    assert!(first[0].is_won());
    assert_eq!(
        reg.list_claims("clocked").await.expect("list").items.len(),
        1
    );
    // The claimer's clock moves past the retention: the claim counts as expired.
    clock.set_skew_ms(61_000);
    assert!(reg
        .list_claims("clocked")
        .await
        .expect("list")
        .items
        .is_empty());
    let again = reg
        .claim(std::slice::from_ref(&f), "n2", Duration::from_secs(60))
        .await
        .expect("claim");
    assert!(again[0].is_won());
}
