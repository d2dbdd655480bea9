//! Consul-specific behaviour of `ConsulRegistry`, on the test double: keys every Consul version
//! accepts, sessions of half the lease without health checks, typed errors per operation, the
//! `CONSUL_*` environment and `dc`, lost transaction replies, transaction limits, and the
//! exactly-once claim contract (lives, generations, idempotent claims, per-fire outcomes).

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use dcron_core::{
    ClaimOutcome, ClaimRequest, Claimant, Error, FireKey, Life, Node, NodeEvent, NodeStatus,
    PutMode, RecordKind, Registry, SlotOutcome, TaskMeta, TaskMetaEvent,
};
use dcron_registry_consul::{AgentError, ConsulRegistry, ConsulRegistryConfig, MAX_VALUE_BYTES};
use dcron_testkit::wait_until;
use futures::StreamExt;
use support::double::{ConsulDouble, DoubleConfig, KeyRules};
use support::{config, fast_double, raw_put, registry};

const LONG: Duration = Duration::from_secs(600);

fn at(offset_ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(1_900_000_000_000 + offset_ms)
        .single()
        .expect("instant")
}

fn fire(task: &str, offset_ms: i64) -> FireKey {
    FireKey::new(task, at(offset_ms))
}

fn meta(name: &str) -> TaskMeta {
    let mut m = TaskMeta::new(name, "@hourly");
    m.created_at = Some(at(-60_000));
    m
}

fn node(id: &str) -> Node {
    Node::new(id, Utc::now())
}

fn request(f: &FireKey, generation: u64) -> ClaimRequest {
    ClaimRequest::new(
        f.clone(),
        generation,
        f.instant + chrono::Duration::days(1),
        LONG,
    )
}

async fn life(reg: &dyn Registry, name: &str) -> Life {
    reg.ensure_lives(&[(name.to_string(), at(0))])
        .await
        .expect("life")[0]
}

async fn claim_one(reg: &dyn Registry, who: &Claimant, f: &FireKey) -> ClaimOutcome {
    let generation = life(reg, &f.task).await.generation;
    let out = reg
        .claim(who, &[request(f, generation)])
        .await
        .expect("claim");
    assert_eq!(out.len(), 1);
    out.into_iter().next().expect("one outcome")
}

fn me() -> Claimant {
    Claimant::new("me", 1)
}

/// Keys every Consul version accepts on its plain KV endpoints (see the `keys` module).
fn portable(key: &str) -> bool {
    !key.contains("..")
        && !key.contains('.')
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'/'))
}

const AWKWARD: [&str; 11] = [
    "billing.report-v2",
    "a:b",
    "a..b",
    "..",
    "zürich 日本",
    "100%",
    "x.json",
    "host.example.com",
    "with space",
    "*?#@!&=~",
    "a_2Eb",
];

/// Issue item 1: names with `.`, `:`, `..`, `%`, unicode, "suspicious" extensions… work in
/// every operation on an agent enforcing the 1.22 key rules and on one enforcing 1.21's; and
/// because `mark_deleted` works, a later claim of the deleted task is `Tombstoned`.
#[tokio::test]
async fn every_operation_works_with_names_consul_refuses_in_keys() {
    for rules in [KeyRules::V1_22, KeyRules::V1_21] {
        let d = ConsulDouble::start_with(DoubleConfig {
            key_rules: rules,
            ..DoubleConfig::fast_sessions()
        })
        .await;
        let reg = registry(&d, "billing.prod:eu");
        let mut tasks = reg.watch_tasks().await.expect("watch tasks");
        for name in AWKWARD {
            let what = format!("{rules:?} {name:?}");
            reg.put_task(&meta(name), PutMode::CreateOnly)
                .await
                .expect(&what);
            assert_eq!(
                reg.get_task(name).await.expect(&what),
                Some(meta(name)),
                "{what}"
            );
            let mut changed = meta(name);
            changed.payload = "v2".into();
            reg.put_task(&changed, PutMode::Update).await.expect(&what);
            let g = life(&reg, name).await.generation;
            let f = fire(name, 0);
            let won = reg.claim(&me(), &[request(&f, g)]).await.expect(&what);
            assert!(won[0].is_won(), "{what}: {won:?}");
            let claims = reg.list_claims(name).await.expect(&what);
            assert_eq!(claims.items.len(), 1, "{what}");
            assert_eq!(claims.items[0].fire, f, "{what}");
            reg.mark_deleted(name, at(5)).await.expect(&what);
            let tomb = reg
                .get_tombstone(name)
                .await
                .expect(&what)
                .expect("tombstone");
            assert_eq!(
                (tomb.name.as_str(), tomb.deleted_at),
                (name, at(5)),
                "{what}"
            );
            let late = reg
                .claim(&me(), &[request(&fire(name, 1000), g)])
                .await
                .expect(&what);
            assert_eq!(late[0], ClaimOutcome::Tombstoned, "{what}");
            reg.clear_tombstone(name).await.expect(&what);
            let restarted = reg.restart_life(name, at(2000)).await.expect(&what);
            assert!(restarted.generation > g, "{what}");
            reg.put_records(RecordKind::Pause, &[(name.to_string(), b"p".to_vec())])
                .await
                .expect(&what);
            assert_eq!(
                reg.get_record(RecordKind::Pause, name).await.expect(&what),
                Some(b"p".to_vec())
            );
            assert!(reg
                .delete_record(RecordKind::Pause, name)
                .await
                .expect(&what));
        }
        let listed: HashSet<String> = reg
            .list_tasks()
            .await
            .expect("list")
            .items
            .into_iter()
            .map(|m| m.name)
            .collect();
        assert_eq!(listed, AWKWARD.iter().map(|n| n.to_string()).collect());
        for name in AWKWARD {
            reg.mark_deleted(name, at(9)).await.expect("tombstone");
        }
        let tombs = reg.list_tombstones().await.expect("list").items;
        assert_eq!(tombs.len(), AWKWARD.len());
        // The watch decoded every name.
        let mut seen = HashSet::new();
        while seen.len() < AWKWARD.len() {
            match tokio::time::timeout(Duration::from_secs(5), tasks.next()).await {
                Ok(Some(TaskMetaEvent::Put(m))) => {
                    seen.insert(m.name);
                }
                Ok(Some(_)) => {}
                other => panic!("{rules:?}: watch ended early: {other:?} after {seen:?}"),
            }
        }
        // Node ids too.
        for id in ["node-1.example.com:8080", "a..b", "ünï"] {
            let lease = reg
                .register(&node(id), Duration::from_secs(30))
                .await
                .expect(id);
            let mut working = node(id);
            working.status = NodeStatus::Working;
            reg.update_node(&lease, &working).await.expect(id);
            reg.keep_alive(&lease).await.expect(id);
            assert!(reg
                .list_nodes()
                .await
                .expect("list")
                .items
                .iter()
                .any(|n| n.id == id && n.status == NodeStatus::Working));
            reg.unregister(&lease).await.expect(id);
        }
        let keys = d.keys("");
        assert!(keys.len() >= 3 * AWKWARD.len(), "{keys:?}");
        for key in keys {
            assert!(portable(&key), "{rules:?}: key {key:?} is not portable");
        }
        for name in AWKWARD {
            reg.cleanup_task(name).await.expect(name);
            assert_eq!(reg.get_task(name).await.expect(name), None);
        }
    }
}

/// Issue items 2 and 3: a lease of `ttl` is a session of `ttl / 2` (at least Consul's 10 s
/// minimum, so leases of at least 20 s), created without health checks; the node stays listed
/// exactly 2×the session TTL after its last keep-alive, and an agent whose `serfHealth` fails
/// does not take it away.
#[tokio::test]
async fn leases_are_sessions_of_half_the_ttl_and_only_the_ttl_decides() {
    let d = ConsulDouble::start_with(DoubleConfig {
        manual_clock: true,
        ..DoubleConfig::default()
    })
    .await;
    let reg = ConsulRegistry::new(ConsulRegistryConfig::new(d.address()).with_namespace("ns"))
        .expect("config");
    for (asked, session, granted) in [
        (1, "10s", 20),
        (20, "10s", 20),
        (25, "13s", 26),
        (60, "30s", 60),
    ] {
        let lease = reg
            .register(&node(&format!("n{asked}")), Duration::from_secs(asked))
            .await
            .expect("register");
        assert_eq!(lease.ttl, Duration::from_secs(granted), "{asked}");
        let info = session_info(&d, &lease.id).await;
        assert_eq!(info["TTL"], session, "{asked}");
        assert_eq!(info["Behavior"], "delete");
        assert_eq!(info["LockDelay"], 0);
        assert_eq!(info["NodeChecks"], serde_json::json!([]));
        assert_eq!(info["Checks"], serde_json::Value::Null);
        reg.unregister(&lease).await.expect("unregister");
    }
    let lease = reg
        .register(&node("timed"), Duration::from_secs(20))
        .await
        .expect("register");
    d.fail_serf_health();
    assert_eq!(
        reg.list_nodes().await.expect("list").items.len(),
        1,
        "serfHealth is not attached"
    );
    d.advance(Duration::from_secs(15));
    reg.keep_alive(&lease).await.expect("keep alive");
    d.advance(Duration::from_millis(19_999));
    assert_eq!(
        reg.list_nodes().await.expect("list").items.len(),
        1,
        "listed for the whole granted TTL"
    );
    d.advance(Duration::from_millis(1));
    assert!(
        reg.list_nodes().await.expect("list").items.is_empty(),
        "gone exactly at the granted TTL"
    );
    assert!(matches!(
        reg.keep_alive(&lease).await,
        Err(Error::LeaseLost { .. })
    ));
    assert!(matches!(
        reg.register(&node("forever"), Duration::from_secs(3 * 86_400))
            .await,
        Err(Error::InvalidArgument(_))
    ));
}

async fn session_info(d: &ConsulDouble, id: &str) -> serde_json::Value {
    reqwest::get(format!("{}/v1/session/info/{id}", d.address()))
        .await
        .expect("info")
        .json::<serde_json::Value>()
        .await
        .expect("json")[0]
        .clone()
}

#[tokio::test]
async fn registration_replaces_an_older_lease_and_updates_keep_the_session() {
    let d = fast_double().await;
    let reg = registry(&d, "ns");
    let old = reg
        .register(&node("n1"), Duration::from_secs(30))
        .await
        .expect("register");
    let new = reg
        .register(&node("n1"), Duration::from_secs(30))
        .await
        .expect("register again");
    assert_ne!(old.id, new.id);
    let key = reg.node_key("n1");
    assert_eq!(d.key_session(&key), Some(Some(new.id.clone())));
    assert!(matches!(
        reg.keep_alive(&old).await,
        Err(Error::LeaseLost { .. })
    ));
    assert!(matches!(
        reg.update_node(&old, &node("n1")).await,
        Err(Error::LeaseLost { .. })
    ));
    reg.unregister(&old)
        .await
        .expect("a stale unregister is a no-op");
    assert_eq!(reg.list_nodes().await.expect("list").items.len(), 1);
    let mut working = node("n1");
    working.status = NodeStatus::Working;
    reg.update_node(&new, &working).await.expect("update");
    assert_eq!(
        d.key_session(&key),
        Some(Some(new.id.clone())),
        "still attached"
    );
    assert!(matches!(
        reg.update_node(&new, &node("other")).await,
        Err(Error::InvalidArgument(_))
    ));
    reg.unregister(&new).await.expect("unregister");
    assert_eq!(d.key_session(&key), None);
    assert_eq!(d.session_count(), 0);
    reg.unregister(&new).await.expect("idempotent");
}

/// Issue item 4: every non-success answer is a typed error naming the operation and the
/// agent's message.
#[tokio::test]
async fn errors_name_the_operation_and_the_agents_message() {
    // Nothing listens: Unavailable.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let down = ConsulRegistry::new(config(&format!("http://{closed}"), "ns")).expect("config");
    let e = down.list_tasks().await.expect_err("refused");
    assert!(e.is_retryable(), "{e:?}");
    assert!(e.to_string().contains("list_tasks"), "{e}");
    assert!(matches!(
        ConsulRegistry::connect(config(&format!("http://{closed}"), "ns")).await,
        Err(Error::Unavailable { .. })
    ));

    // A registry that believes the agent takes 1 s sessions, on one that does not.
    let d = ConsulDouble::start().await;
    match registry(&d, "ns")
        .register(&node("n1"), Duration::from_secs(1))
        .await
    {
        Err(Error::Backend {
            backend,
            message,
            source,
        }) => {
            assert_eq!(backend, "consul");
            assert!(message.contains("register `n1`"), "{message}");
            assert!(
                message.contains("Invalid Session TTL '1000000000'"),
                "{message}"
            );
            let agent = source
                .as_deref()
                .and_then(|s| s.downcast_ref::<AgentError>())
                .expect("AgentError source");
            assert_eq!(agent.status(), Some(500));
            assert_eq!(agent.operation(), "register");
        }
        other => panic!("expected Backend, got {other:?}"),
    }

    // ACLs: the wrong token is AccessDenied; the right one works and never shows in Debug.
    let d = ConsulDouble::start_with(DoubleConfig {
        acl_token: Some("s3cret".into()),
        ..DoubleConfig::fast_sessions()
    })
    .await;
    match registry(&d, "ns").list_nodes().await {
        Err(Error::AccessDenied(m)) => assert!(
            m.contains("list_nodes") && m.contains("ACL not found"),
            "{m}"
        ),
        other => panic!("expected AccessDenied, got {other:?}"),
    }
    let with_token =
        ConsulRegistry::new(config(&d.address(), "ns").with_token("s3cret")).expect("config");
    with_token.list_nodes().await.expect("token accepted");
    assert!(!format!("{with_token:?}").contains("s3cret"));
}

/// Issue item 4: a 409 is mapped per operation. An ACL refusal of the tombstone check fails
/// that task's fires (`AccessDenied`), never `Tombstoned`; the other fires are decided.
#[tokio::test]
async fn transaction_failures_are_mapped_per_operation() {
    let d = fast_double().await;
    let reg = registry(&d, "ns");
    reg.ensure_lives(&[
        ("secret".into(), at(0)),
        ("open".into(), at(0)),
        ("guarded".into(), at(0)),
    ])
    .await
    .expect("lives");
    let tomb_key = reg
        .task_key("secret")
        .replace("/tasks/meta/", "/tasks/tomb/")
        + "/";
    d.deny_prefix(&tomb_key);
    let claims_of_guarded = format!(
        "{}/claims/guarded/",
        reg.task_key("x").split('/').next().expect("root")
    );
    d.deny_prefix(&claims_of_guarded);
    let g = |name: &str| {
        let reg = &reg;
        let name = name.to_string();
        async move { life(reg, &name).await.generation }
    };
    let batch = vec![
        request(&fire("secret", 0), g("secret").await),
        request(&fire("open", 0), g("open").await),
        request(&fire("secret", 1000), g("secret").await),
        request(&fire("guarded", 0), g("guarded").await),
        request(&fire("open", 1000), g("open").await),
    ];
    let out = reg.claim(&me(), &batch).await.expect("claim");
    for i in [0, 2, 3] {
        assert!(
            matches!(&out[i], ClaimOutcome::Failed(Error::AccessDenied(m)) if m.contains("claim") && m.contains("Permission denied")),
            "{i}: {:?}",
            out[i]
        );
    }
    assert!(out[1].is_won() && out[4].is_won(), "{out:?}");
    // Single operations too: never Tombstoned or AlreadyExists for a refusal.
    assert!(matches!(
        reg.mark_deleted("secret", at(0)).await,
        Err(Error::AccessDenied(_))
    ));
    assert!(matches!(
        reg.put_task(&meta("secret"), PutMode::CreateOnly).await,
        Err(Error::AccessDenied(_))
    ));
    assert!(matches!(
        reg.get_tombstone("secret").await,
        Err(Error::AccessDenied(_))
    ));
}

/// Issue item 5: `dc` is sent with every request, the session endpoints and `/v1/txn` included.
#[tokio::test]
async fn the_datacenter_is_used_by_every_request() {
    let d = ConsulDouble::start_with(DoubleConfig {
        datacenter: "dc2".into(),
        ..DoubleConfig::fast_sessions()
    })
    .await;
    let reg =
        ConsulRegistry::new(config(&d.address(), "ns").with_datacenter("dc2")).expect("config");
    let lease = reg
        .register(&node("n"), Duration::from_secs(10))
        .await
        .expect("register");
    reg.keep_alive(&lease).await.expect("keep alive");
    reg.put_task(&meta("t"), PutMode::CreateOnly)
        .await
        .expect("put");
    assert!(claim_one(&reg, &me(), &fire("t", 0)).await.is_won());
    let mut watch = reg.watch_nodes().await.expect("watch");
    reg.unregister(&lease).await.expect("unregister");
    assert!(matches!(
        tokio::time::timeout(Duration::from_secs(5), watch.next()).await,
        Ok(Some(NodeEvent::Delete { .. }))
    ));
    let wrong =
        ConsulRegistry::new(config(&d.address(), "ns").with_datacenter("dc9")).expect("config");
    let e = wrong.get_task("t").await.expect_err("no such datacenter");
    assert!(e.to_string().contains("No path to datacenter"), "{e}");
    assert!(e.to_string().contains("get_task `t`"), "{e}");
}

/// Issue item 6: a claim committed whose reply is lost is answered through the idempotent
/// claim: `WonEarlier` with the token of the stored claim, never `Lost` to itself.
#[tokio::test]
async fn a_committed_claim_whose_reply_is_lost_is_won_earlier() {
    let d = fast_double().await;
    let reg = registry(&d, "ns");
    let f = fire("lost-reply", 0);
    let g = life(&reg, "lost-reply").await.generation;
    d.drop_next_txn_replies(1);
    let out = reg
        .claim(&me(), &[request(&f, g), request(&fire("lost-reply", 1), g)])
        .await
        .expect("claim");
    let token = match out[0] {
        ClaimOutcome::WonEarlier { token } => token,
        ref other => panic!("expected WonEarlier, got {other:?}"),
    };
    assert!(matches!(out[1], ClaimOutcome::WonEarlier { .. }), "{out:?}");
    let stored = reg.list_claims("lost-reply").await.expect("list").items;
    assert!(stored
        .iter()
        .any(|c| c.fire == f && c.token == token && c.node_id == "me"));
    // The caller's own retry agrees, another claimant loses.
    assert_eq!(
        claim_one(&reg, &me(), &f).await,
        ClaimOutcome::WonEarlier { token }
    );
    assert_eq!(
        claim_one(&reg, &Claimant::new("other", 1), &f).await,
        ClaimOutcome::Lost {
            holder: Some("me".into())
        }
    );
    // A lost reply to a transaction that did not commit (a conflict) is retried too.
    let taken = fire("lost-reply", 5);
    assert!(claim_one(&reg, &Claimant::new("other", 1), &taken)
        .await
        .is_won());
    d.drop_next_txn_replies(1);
    let fresh = fire("lost-reply", 6);
    let out = reg
        .claim(&me(), &[request(&taken, g), request(&fresh, g)])
        .await
        .expect("claim");
    assert_eq!(
        out[0],
        ClaimOutcome::Lost {
            holder: Some("other".into())
        }
    );
    assert!(out[1].is_won());
}

/// When no fire of a batch could be decided the call fails, retryable; retrying is safe.
#[tokio::test]
async fn an_undecided_batch_is_unavailable_and_a_retry_is_safe() {
    let d = fast_double().await;
    let reg = registry(&d, "ns");
    let g = life(&reg, "t").await.generation;
    let f = fire("t", 0);
    d.stop_serving();
    let e = reg.claim(&me(), &[request(&f, g)]).await.expect_err("down");
    assert!(e.is_retryable(), "{e:?}");
    d.restart().await;
    assert!(reg.claim(&me(), &[request(&f, g)]).await.expect("claim")[0].is_won());
}

/// Issue item 7: batches are split by Consul's 128 operations and 512 KiB of body; the split
/// is invisible to the caller.
#[tokio::test]
async fn batches_split_by_128_operations_and_512_kib() {
    let d = fast_double().await;
    let reg = registry(&d, "ns");
    let names: Vec<String> = (0..30).map(|t| format!("task-{t}")).collect();
    let lives = reg
        .ensure_lives(&names.iter().map(|n| (n.clone(), at(0))).collect::<Vec<_>>())
        .await
        .expect("lives");
    let mut batch = Vec::new();
    for i in 0..600 {
        let t = i % 30;
        batch.push(request(&fire(&names[t], i as i64), lives[t].generation));
    }
    let before = d.txns().len();
    let out = reg.claim(&me(), &batch).await.expect("claim");
    assert!(
        out.iter().all(ClaimOutcome::is_won),
        "{:?}",
        out.iter().find(|o| !o.is_won())
    );
    let sent = &d.txns()[before..];
    assert!(
        sent.iter()
            .all(|t| t.status == 200 && t.ops <= 128 && t.body <= 512 * 1024),
        "{sent:?}"
    );
    assert!(
        sent.len() >= 6,
        "600 fires and 60 checks need at least 6 transactions"
    );
    let again = reg
        .claim(&Claimant::new("other", 1), &batch)
        .await
        .expect("claim");
    assert!(again.iter().all(|o| matches!(o, ClaimOutcome::Lost { .. })));

    // Large claim values: the body limit splits before the operation limit.
    let big_node = Claimant::new("n".repeat(4000), 1);
    let big: Vec<ClaimRequest> = (0..200)
        .map(|i| request(&fire(&names[0], 10_000 + i), lives[0].generation))
        .collect();
    let before = d.txns().len();
    let out = reg.claim(&big_node, &big).await.expect("claim");
    assert!(out.iter().all(ClaimOutcome::is_won));
    let sent = &d.txns()[before..];
    assert!(
        sent.iter().all(|t| t.status == 200 && t.body <= 512 * 1024),
        "{sent:?}"
    );
    assert!(sent.iter().any(|t| t.ops < 100), "split by size: {sent:?}");

    // Records too.
    let records: Vec<(String, Vec<u8>)> = (0..12)
        .map(|i| (format!("r{i}"), vec![b'x'; 150 * 1024]))
        .collect();
    let before = d.txns().len();
    reg.put_records(RecordKind::Status, &records)
        .await
        .expect("records");
    let sent = &d.txns()[before..];
    assert!(
        sent.len() >= 4 && sent.iter().all(|t| t.status == 200 && t.body <= 512 * 1024),
        "{sent:?}"
    );
    assert_eq!(
        reg.list_records(RecordKind::Status)
            .await
            .expect("list")
            .len(),
        12
    );
}

#[tokio::test]
async fn claims_follow_the_exactly_once_contract() {
    let d = fast_double().await;
    let reg = registry(&d, "ns");
    let f = fire("job", 0);
    // No life: Superseded without a current generation.
    let none = reg.claim(&me(), &[request(&f, 7)]).await.expect("claim");
    assert_eq!(none[0], ClaimOutcome::Superseded { current: None });
    let g = life(&reg, "job").await.generation;
    let won = reg.claim(&me(), &[request(&f, g)]).await.expect("claim");
    let token = won[0].token().expect("won");
    assert!(matches!(won[0], ClaimOutcome::Won { .. }));
    // Idempotent per claimant (node and epoch).
    assert_eq!(
        reg.claim(&me(), &[request(&f, g)]).await.expect("claim")[0],
        ClaimOutcome::WonEarlier { token }
    );
    assert_eq!(
        reg.claim(&Claimant::new("me", 2), &[request(&f, g)])
            .await
            .expect("claim")[0],
        ClaimOutcome::Lost {
            holder: Some("me".into())
        },
        "another epoch is another claimant"
    );
    // A stale generation is Superseded, whatever is claimed.
    assert_eq!(
        reg.claim(&me(), &[request(&fire("job", 1), g + 1)])
            .await
            .expect("claim")[0],
        ClaimOutcome::Superseded { current: Some(g) }
    );
    // A fire twice in a batch is decided once; the copy answers as a retry would.
    let f2 = fire("job", 2);
    let twice = reg
        .claim(&me(), &[request(&f2, g), request(&f2, g)])
        .await
        .expect("claim");
    let t2 = twice[0].token().expect("won");
    assert!(matches!(twice[0], ClaimOutcome::Won { .. }));
    assert_eq!(twice[1], ClaimOutcome::WonEarlier { token: t2 });
    assert!(t2 > token);
    let listed = reg.list_claims("job").await.expect("list").items;
    let stored = listed.iter().find(|c| c.fire == f).expect("listed");
    assert_eq!(
        (stored.epoch, stored.generation, stored.token),
        (1, g, token)
    );

    // Claims go only with their retention: across cleanup, force writes and new lives a fire
    // claimed before stays claimed (its holder gets `WonEarlier`, anyone else `Lost`), while
    // tokens and generations keep growing.
    let mut last_token = t2;
    let mut last_gen = g;
    for step in 0..4i64 {
        match step {
            0 => reg.cleanup_task("job").await.expect("cleanup"),
            1 => reg
                .put_task(&meta("job"), PutMode::Force)
                .await
                .expect("force"),
            2 => {
                reg.restart_life("job", at(1)).await.expect("restart");
            }
            _ => reg.cleanup_all().await.expect("cleanup all"),
        }
        let kept = reg.list_claims("job").await.expect("list").items;
        assert!(
            kept.iter().any(|c| c.fire == f && c.token == token),
            "{step}: {kept:?}"
        );
        let l = life(&reg, "job").await;
        assert!(l.generation > last_gen, "{step}: {l:?}");
        let old = reg
            .claim(&me(), &[request(&f, l.generation)])
            .await
            .expect("claim");
        assert_eq!(old[0], ClaimOutcome::WonEarlier { token }, "{step}");
        let theirs = reg
            .claim(&Claimant::new("other", 1), &[request(&f, l.generation)])
            .await
            .expect("claim");
        assert_eq!(
            theirs[0],
            ClaimOutcome::Lost {
                holder: Some("me".into())
            },
            "{step}"
        );
        let fresh = fire("job", 10_000 + step);
        let out = reg
            .claim(&me(), &[request(&fresh, l.generation)])
            .await
            .expect("claim");
        let t = out[0].token().expect("a new fire is won");
        assert!(t > last_token, "{step}: {t} after {last_token}");
        (last_token, last_gen) = (t, l.generation);
    }
    assert!(matches!(
        reg.claim(
            &me(),
            &[ClaimRequest::new(
                f.clone(),
                last_gen,
                f.instant,
                Duration::ZERO
            )]
        )
        .await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(reg.claim(&me(), &[]).await.expect("empty").is_empty());
}

#[tokio::test]
async fn lives_start_once_and_restart_with_greater_generations() {
    let d = fast_double().await;
    let names: Vec<(String, DateTime<Utc>)> =
        (0..40).map(|i| (format!("static-{i}"), at(i))).collect();
    let mut racers = Vec::new();
    for c in 0..8 {
        let reg = registry(&d, "ns");
        let mut mine = names.clone();
        mine.rotate_left(c * 5);
        racers.push(tokio::spawn(async move {
            let lives = reg.ensure_lives(&mine).await.expect("lives");
            mine.into_iter()
                .map(|(n, _)| n)
                .zip(lives)
                .collect::<Vec<_>>()
        }));
    }
    let mut seen: std::collections::HashMap<String, Life> = std::collections::HashMap::new();
    for r in racers {
        for (name, l) in r.await.expect("join") {
            if let Some(prev) = seen.insert(name.clone(), l) {
                assert_eq!(prev, l, "{name}: racing callers get the same life");
            }
        }
    }
    let reg = registry(&d, "ns");
    let first = seen["static-3"];
    assert_eq!(first.live_since, at(3));
    // Create-only and force writes start a life at `created_at`; an update keeps it.
    let mut m = meta("dyn");
    m.created_at = Some(at(77));
    reg.put_task(&m, PutMode::CreateOnly).await.expect("create");
    let created = life(&reg, "dyn").await;
    assert_eq!(created.live_since, at(77));
    reg.put_task(&m, PutMode::Update).await.expect("update");
    assert_eq!(life(&reg, "dyn").await, created);
    reg.mark_deleted("dyn", at(80)).await.expect("delete");
    reg.clear_tombstone("dyn").await.expect("reuse");
    assert_eq!(life(&reg, "dyn").await, created, "tombstones keep the life");
    reg.put_task(&m, PutMode::Force).await.expect("force");
    let forced = life(&reg, "dyn").await;
    assert!(forced.generation > created.generation);
    // The same live-since still starts a new life.
    let again = reg
        .restart_life("dyn", forced.live_since)
        .await
        .expect("restart");
    assert!(again.generation > forced.generation);
    assert_eq!(life(&reg, "dyn").await, again);
    let mut no_time = meta("dyn2");
    no_time.created_at = None;
    assert!(matches!(
        reg.put_task(&no_time, PutMode::CreateOnly).await,
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(
        reg.get_task("dyn2").await.expect("get"),
        None,
        "nothing written"
    );
    // As in the core's rules, an existing or tombstoned name is refused first.
    no_time.name = "dyn".into();
    assert!(matches!(
        reg.put_task(&no_time, PutMode::CreateOnly).await,
        Err(Error::AlreadyExists { .. })
    ));
    reg.mark_deleted("dyn3", at(0)).await.expect("tombstone");
    no_time.name = "dyn3".into();
    assert!(matches!(
        reg.put_task(&no_time, PutMode::CreateOnly).await,
        Err(Error::Tombstoned { .. })
    ));
}

#[tokio::test]
async fn create_only_update_and_force_are_decided_atomically() {
    let d = fast_double().await;
    let reg = registry(&d, "ns");
    reg.mark_deleted("job", at(0)).await.expect("tombstone");
    assert!(matches!(
        reg.put_task(&meta("job"), PutMode::CreateOnly).await,
        Err(Error::Tombstoned { .. })
    ));
    assert!(matches!(
        reg.put_task(&meta("job"), PutMode::Update).await,
        Err(Error::Tombstoned { .. })
    ));
    assert_eq!(reg.get_task("job").await.expect("get"), None);
    assert!(matches!(
        reg.put_task(&meta("ghost"), PutMode::Update).await,
        Err(Error::NotFound { what: "task", .. })
    ));
    let g = life(&reg, "job").await.generation;
    assert_eq!(
        reg.claim(&me(), &[request(&fire("job", 0), g)])
            .await
            .expect("claim")[0],
        ClaimOutcome::Tombstoned
    );
    reg.put_task(&meta("job"), PutMode::Force)
        .await
        .expect("force");
    assert_eq!(reg.get_tombstone("job").await.expect("get"), None);
    assert!(matches!(
        reg.put_task(&meta("job"), PutMode::CreateOnly).await,
        Err(Error::AlreadyExists { .. })
    ));
    assert!(matches!(
        reg.clear_tombstone("job").await,
        Err(Error::NotFound {
            what: "tombstone",
            ..
        })
    ));
    let big = meta("big").with_payload("x".repeat(MAX_VALUE_BYTES));
    assert!(matches!(
        reg.put_task(&big, PutMode::Force).await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        reg.put_task(&meta("a/b"), PutMode::Force).await,
        Err(Error::InvalidTaskName { .. })
    ));
}

#[tokio::test]
async fn namespaces_with_slashes_and_prefixes_stay_apart() {
    let d = fast_double().await;
    let a = registry(&d, "team");
    let b = registry(&d, "team/tasks");
    let c = registry(&d, "team-b");
    for r in [&a, &b, &c] {
        r.put_task(&meta("x"), PutMode::CreateOnly)
            .await
            .expect("each namespace has its own `x`");
    }
    b.cleanup_all().await.expect("cleanup");
    assert_eq!(a.list_tasks().await.expect("list").items.len(), 1);
    assert_eq!(b.list_tasks().await.expect("list").items.len(), 0);
    assert_eq!(c.list_tasks().await.expect("list").items.len(), 1);
}

#[tokio::test]
async fn expired_claims_are_hidden_replaced_and_swept() {
    let d = fast_double().await;
    let clock = dcron_core::TokioClock::starting_at(Utc::now());
    let reg = registry(&d, "ns").with_clock(Arc::new(clock.clone()));
    let f = fire("clocked", 0);
    let g = life(&reg, "clocked").await.generation;
    let short = ClaimRequest::new(f.clone(), g, f.instant, Duration::from_secs(60));
    let first = reg
        .claim(&me(), std::slice::from_ref(&short))
        .await
        .expect("claim");
    let t1 = first[0].token().expect("won");
    assert_eq!(
        reg.list_claims("clocked").await.expect("list").items.len(),
        1
    );
    clock.set_skew_ms(59_000);
    assert_eq!(
        reg.list_claims("clocked").await.expect("list").items.len(),
        1,
        "kept for the retention"
    );
    clock.set_skew_ms(60_000);
    assert!(
        reg.list_claims("clocked")
            .await
            .expect("list")
            .items
            .is_empty(),
        "never listed once expired"
    );
    assert_eq!(d.count_keys("ns/claims/"), 0, "listing swept it");
    let again = reg
        .claim(&Claimant::new("other", 1), std::slice::from_ref(&short))
        .await
        .expect("claim");
    assert!(again[0].token().expect("won by the other") > t1);

    // An expired claim still stored is replaced by the next claim (cas at its index).
    let f2 = fire("clocked", 1);
    let r2 = ClaimRequest::new(f2.clone(), g, f2.instant, Duration::from_secs(1));
    reg.claim(&me(), std::slice::from_ref(&r2))
        .await
        .expect("claim");
    clock.set_skew_ms(62_000);
    let replaced = reg
        .claim(&Claimant::new("third", 1), &[r2])
        .await
        .expect("claim");
    assert!(
        matches!(replaced[0], ClaimOutcome::Won { .. }),
        "{replaced:?}"
    );
}

#[tokio::test]
async fn concurrent_clients_each_fire_has_exactly_one_winner() {
    let d = fast_double().await;
    let reg = registry(&d, "race");
    let names: Vec<String> = (0..7).map(|i| format!("task{i}")).collect();
    let lives = reg
        .ensure_lives(&names.iter().map(|n| (n.clone(), at(0))).collect::<Vec<_>>())
        .await
        .expect("lives");
    let batch: Vec<ClaimRequest> = (0..100)
        .map(|i| request(&fire(&names[i % 7], i as i64), lives[i % 7].generation))
        .collect();
    let mut handles = Vec::new();
    for c in 0..16 {
        let reg = registry(&d, "race");
        let mut mine = batch.clone();
        mine.rotate_left(c * 6);
        handles.push(tokio::spawn(async move {
            let out = reg
                .claim(&Claimant::new(format!("node{c}"), 1), &mine)
                .await
                .expect("claim");
            mine.into_iter()
                .zip(out)
                .filter(|(_, o)| matches!(o, ClaimOutcome::Won { .. }))
                .map(|(r, _)| r.fire)
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
async fn corrupt_values_are_reported_not_fatal() {
    let d = fast_double().await;
    let reg = registry(&d, "ns");
    reg.put_task(&meta("good"), PutMode::CreateOnly)
        .await
        .expect("put");
    support::http()
        .put(format!("{}/v1/kv/{}", d.address(), reg.task_key("bad")))
        .body("{not json")
        .send()
        .await
        .expect("raw put");
    let listing = reg.list_tasks().await.expect("list");
    assert_eq!(listing.items.len(), 1);
    assert_eq!(listing.corrupt.len(), 1);
    assert_eq!(listing.corrupt[0].key, "bad");
    assert!(matches!(
        reg.get_task("bad").await,
        Err(Error::Corrupt { .. })
    ));
    assert!(matches!(
        reg.put_task(&meta("bad"), PutMode::CreateOnly).await,
        Err(Error::AlreadyExists { .. })
    ));
    // A corrupt claim keeps its fire taken.
    let g = life(&reg, "good").await.generation;
    let f = fire("good", 0);
    let claim_key = reg.task_key("good").replace(
        "/tasks/meta/good",
        &format!("/claims/good/{}", {
            let shifted = (f.instant_millis() as u64) ^ (1u64 << 63);
            format!("{shifted:020}")
        }),
    );
    support::http()
        .put(format!("{}/v1/kv/{claim_key}", d.address()))
        .body("garbage")
        .send()
        .await
        .expect("raw put");
    assert_eq!(
        reg.claim(&me(), &[request(&f, g)]).await.expect("claim")[0],
        ClaimOutcome::Lost { holder: None }
    );
    assert_eq!(
        reg.list_claims("good").await.expect("list").corrupt.len(),
        1
    );
}

#[tokio::test]
async fn watch_resyncs_when_the_index_goes_backwards_and_after_errors() {
    let d = fast_double().await;
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
    // The task watch (one blocking query for records and tombstones) and the node watch wait.
    wait_until(
        "the task and node watches blocked",
        Duration::from_secs(5),
        || async { d.blocked_queries() >= 2 },
    )
    .await
    .expect("wait");
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
    reg.put_task(&meta("after"), PutMode::CreateOnly)
        .await
        .expect("put");
    reg.mark_deleted("after", at(0)).await.expect("delete");
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while events.len() < 2 {
        match tokio::time::timeout_at(deadline, tasks.next()).await {
            Ok(Some(TaskMetaEvent::Resync)) => {}
            Ok(Some(e)) => events.push(e),
            other => panic!("watch stopped: {other:?} after {events:?}"),
        }
    }
    assert!(
        matches!(&events[0], TaskMetaEvent::Put(m) if m.name == "after"),
        "{events:?}"
    );
    assert!(
        matches!(&events[1], TaskMetaEvent::Tombstoned(t) if t.name == "after"),
        "{events:?}"
    );
    // A force write: the record before the tombstone's removal. (An unchanged record would
    // send no `Put`: Consul keeps the index of a value written unchanged.)
    reg.put_task(&meta("after").with_payload("v2"), PutMode::Force)
        .await
        .expect("force");
    let mut events = Vec::new();
    while events.len() < 2 {
        match tokio::time::timeout_at(deadline, tasks.next()).await {
            Ok(Some(TaskMetaEvent::Resync)) => {}
            Ok(Some(e)) => events.push(e),
            other => panic!("watch stopped: {other:?} after {events:?}"),
        }
    }
    assert!(matches!(&events[0], TaskMetaEvent::Put(_)), "{events:?}");
    assert!(
        matches!(&events[1], TaskMetaEvent::TombstoneCleared { name } if name == "after"),
        "{events:?}"
    );
}

#[tokio::test]
async fn session_expiry_removes_the_node_and_a_new_registration_comes_back() {
    let d = fast_double().await;
    let reg: Arc<dyn Registry> = Arc::new(registry(&d, "ns"));
    let lease = reg
        .register(&node("gone"), Duration::from_secs(1))
        .await
        .expect("register");
    assert_eq!(
        lease.ttl,
        Duration::from_secs(2),
        "a 1 s session: a 2 s lease"
    );
    wait_until("the expired node unlisted", Duration::from_secs(5), || {
        let reg = reg.clone();
        async move { reg.list_nodes().await.expect("list").items.is_empty() }
    })
    .await
    .expect("wait");
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

/// Claims of a removed name are deleted from Consul once their retention ends.
#[tokio::test]
async fn claims_of_removed_names_are_swept_when_they_expire() {
    let d = fast_double().await;
    let reg = registry(&d, "ns");
    for name in ["gone-1", "gone-2"] {
        let g = life(&reg, name).await.generation;
        let f = fire(name, 0);
        let short = ClaimRequest::new(f.clone(), g, f.instant, Duration::from_secs(2));
        let long = request(&fire(name, 1), g);
        reg.claim(&me(), &[short, long]).await.expect("claim");
    }
    reg.cleanup_task("gone-1").await.expect("cleanup");
    reg.cleanup_all().await.expect("cleanup all");
    assert_eq!(d.count_keys("ns/claims/"), 4, "kept while retained");
    if let Err(e) = wait_until(
        "the expired claims deleted",
        Duration::from_secs(8),
        || async { d.count_keys("ns/claims/") == 2 },
    )
    .await
    {
        panic!("{e}; claims left: {:?}", d.keys("ns/claims/"));
    }
    assert_eq!(
        reg.list_claims("gone-1").await.expect("list").items.len(),
        1
    );
}

/// Running slots are two keys locked by the holder's node session (so Consul deletes them with
/// it): a free slot costs one transaction, a held one a transaction and a read, a release one
/// transaction; a committed acquire whose reply is lost is `Taken` on retry; a slot key without
/// a session is free; a bad record is `Corrupt`; an ACL refusal is `AccessDenied`.
#[tokio::test]
async fn running_slots_live_on_the_node_session() {
    let d = fast_double().await;
    let a = registry(&d, "ns");
    let b = registry(&d, "ns");
    let la = a.register(&node("a"), LONG).await.expect("register");
    let lb = b.register(&node("b"), LONG).await.expect("register");
    let job = fire("job", 0);
    let txns = || d.txns().len();

    let before = txns();
    assert_eq!(
        a.acquire_slot(&la, &job).await.expect("acquire"),
        SlotOutcome::Taken
    );
    assert_eq!(txns(), before + 1, "a free slot: one round trip");
    let keys = d.keys("ns/slots/");
    assert_eq!(keys.len(), 2, "{keys:?}");
    for key in &keys {
        assert!(portable(key), "{key}");
        assert_eq!(d.key_session(key), Some(Some(la.id.clone())), "{key}");
    }

    let before = txns();
    let held = b.acquire_slot(&lb, &fire("job", 1)).await.expect("acquire");
    assert_eq!(
        held,
        SlotOutcome::Held {
            node_id: "a".into(),
            fire: job.clone()
        }
    );
    assert_eq!(txns(), before + 2, "a held slot: the write and one read");

    let before = txns();
    b.release_slot(&lb, &job).await.expect("release");
    a.release_slot(&la, &fire("job", 1)).await.expect("release");
    assert_eq!(txns(), before + 2, "a release: one round trip");
    assert_eq!(d.count_keys("ns/slots/"), 2, "not the holder's fire: kept");
    a.release_slot(&la, &job).await.expect("release");
    assert_eq!(d.count_keys("ns/slots/"), 0, "released");

    // The reply of a committed acquire is lost: the retry finds the slot held for it.
    d.drop_next_txn_replies(1);
    let lost = a.acquire_slot(&la, &job).await;
    assert!(matches!(lost, Err(Error::Unavailable { .. })), "{lost:?}");
    assert_eq!(
        a.acquire_slot(&la, &job).await.expect("retry"),
        SlotOutcome::Taken
    );
    assert_eq!(
        b.acquire_slot(&lb, &fire("job", 1)).await.expect("acquire"),
        SlotOutcome::Held {
            node_id: "a".into(),
            fire: job.clone()
        }
    );

    // A slot key without a session holds nothing; a held one that does not decode is corrupt.
    let cfg = config(&d.address(), "ns");
    raw_put(&cfg, "/v1/kv/ns/slots/loose/held", b"left over".to_vec())
        .await
        .expect("raw put");
    assert_eq!(
        b.acquire_slot(&lb, &fire("loose", 0))
            .await
            .expect("acquire"),
        SlotOutcome::Taken
    );
    assert_eq!(
        d.key_session("ns/slots/loose/held"),
        Some(Some(lb.id.clone()))
    );
    raw_put(
        &cfg,
        &format!("/v1/kv/ns/slots/bad/held?acquire={}", lb.id),
        b"not a record".to_vec(),
    )
    .await
    .expect("raw put");
    let corrupt = a.acquire_slot(&la, &fire("bad", 0)).await;
    assert!(matches!(corrupt, Err(Error::Corrupt { .. })), "{corrupt:?}");

    d.deny_prefix("ns/slots/denied/");
    let denied = a.acquire_slot(&la, &fire("denied", 0)).await;
    assert!(matches!(denied, Err(Error::AccessDenied(_))), "{denied:?}");
    let denied = a.release_slot(&la, &fire("denied", 0)).await;
    assert!(matches!(denied, Err(Error::AccessDenied(_))), "{denied:?}");

    // The slot keys go with the session.
    a.unregister(&la).await.expect("unregister");
    assert!(
        d.keys("ns/slots/job/").is_empty(),
        "{:?}",
        d.keys("ns/slots/")
    );
    let lost = a.acquire_slot(&la, &job).await;
    assert!(matches!(lost, Err(Error::LeaseLost { .. })), "{lost:?}");
}
