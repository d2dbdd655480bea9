//! Fault cases on a `redis-server` the harness starts itself (AOF on, own port and directory):
//! the testkit's restart and lease-expiry cases, recovery with no claim won twice, watches
//! resubscribing, and ACL users.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use common::{claim_fires, meta, OwnedFactory, OwnedServer};
use dcron_core::{
    ClaimOutcome, ClaimRequest, Claimant, Error, FireKey, Node, PutMode, Registry, TaskMetaEvent,
    WatchStream,
};
use dcron_registry_redis::{RedisKeys, RedisRegistry, RedisRegistryConfig};
use dcron_testkit::{cases, run_case, wait_until, CaseError, RegistryFactory};
use futures::StreamExt;
use tokio::time::Instant;

/// Runs the testkit's `faults` cases against a fresh harness-owned server each.
fn run_fault_case(name: &str) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let case = cases()
        .into_iter()
        .find(|c| c.module == "faults" && c.name == name)
        .unwrap_or_else(|| panic!("no conformance case faults::{name}"));
    let outcome = runtime.block_on(async {
        let factory: Arc<dyn RegistryFactory> = Arc::new(OwnedFactory::new());
        run_case(factory, &case).await
    });
    match outcome {
        Ok(()) => {}
        Err(CaseError::Skipped(reason)) => common::skip(&format!("faults::{name}: {reason}")),
        Err(CaseError::Failed(msg)) => panic!("faults::{name} FAILED: {msg}"),
    }
}

#[test]
fn faults_restart_keeps_records() {
    run_fault_case("restart_keeps_records");
}

#[test]
fn faults_restart_node_comes_back() {
    run_fault_case("restart_node_comes_back");
}

#[test]
fn faults_expired_lease_then_reregister() {
    run_fault_case("expired_lease_then_reregister");
}

/// A server for one test, or `None` after printing why it is skipped.
fn owned(extra: &[&str]) -> Option<OwnedServer> {
    match OwnedServer::start(extra) {
        Ok(server) => Some(server),
        Err(reason) => {
            common::skip(&format!("harness redis-server: {reason}"));
            None
        }
    }
}

fn fire(task: &str, i: i64) -> FireKey {
    FireKey::new(
        task,
        Utc.timestamp_millis_opt(1_893_456_000_000 + i * 1000)
            .single()
            .expect("valid instant"),
    )
}

async fn wait_back(reg: &RedisRegistry, within: Duration) {
    wait_until("the registry answers again", within, || async {
        match reg.list_tasks().await {
            Ok(_) => true,
            Err(e) => {
                assert!(e.is_retryable(), "while the server is down: {e:?}");
                false
            }
        }
    })
    .await
    .expect("server back");
}

/// Claims `fires` from `clients` concurrently; answers the winning tokens per fire.
async fn race(clients: &[RedisRegistry], fires: &[FireKey]) -> HashMap<FireKey, Vec<u64>> {
    let answers = futures::future::join_all(clients.iter().enumerate().map(|(i, c)| {
        let fires = fires.to_vec();
        async move {
            claim_fires(c, &format!("client-{i}"), &fires, Duration::from_secs(600))
                .await
                .expect("claim")
        }
    }))
    .await;
    let mut wins: HashMap<FireKey, Vec<u64>> = HashMap::new();
    for outcomes in answers {
        assert_eq!(outcomes.len(), fires.len());
        for (f, o) in fires.iter().zip(outcomes) {
            let entry = wins.entry(f.clone()).or_default();
            if let ClaimOutcome::Won { token } = o {
                entry.push(token);
            }
        }
    }
    wins
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_recovers_keeps_tasks_and_never_wins_a_claim_twice() {
    let Some(server) = owned(&[]) else { return };
    let url = server.url();
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(common::open(&url, "restart").await.expect("open"));
    }
    let reg = clients[0].clone();
    for i in 0..20 {
        reg.put_task(&meta(&format!("t{i}"), "@every 1s"), PutMode::CreateOnly)
            .await
            .expect("put");
    }
    reg.mark_deleted("t0", Utc::now()).await.expect("tombstone");

    let before: Vec<FireKey> = (0..50)
        .map(|i| fire(&format!("t{}", 1 + i % 19), i))
        .collect();
    let wins = race(&clients, &before).await;
    let mut max_token = 0;
    for f in &before {
        assert_eq!(wins[f].len(), 1, "one winner for {f}: {:?}", wins[f]);
        max_token = max_token.max(wins[f][0]);
    }

    server.restart().expect("restart");
    wait_back(&reg, Duration::from_secs(30)).await;
    for c in &clients {
        wait_back(c, Duration::from_secs(30)).await;
    }

    let listed = reg.list_tasks().await.expect("list");
    assert_eq!(listed.items.len(), 20, "dynamic tasks survive the restart");
    assert!(reg.get_tombstone("t0").await.expect("get").is_some());
    let all: Vec<FireKey> = (0..100)
        .map(|i| fire(&format!("t{}", 1 + i % 19), i))
        .collect();
    let wins = race(&clients, &all).await;
    for (i, f) in all.iter().enumerate() {
        let expected = usize::from(i >= 50);
        assert_eq!(wins[f].len(), expected, "winners of {f} after the restart");
        if let Some(token) = wins[f].first() {
            assert!(*token > max_token, "tokens keep growing across the restart");
        }
    }
    assert_eq!(
        claim_fires(&reg, "x", &[fire("t0", 1)], Duration::from_secs(60))
            .await
            .expect("claim"),
        vec![ClaimOutcome::Tombstoned]
    );
}

async fn next_task_event(
    stream: &mut WatchStream<TaskMetaEvent>,
    within: Duration,
    wanted: impl Fn(&TaskMetaEvent) -> bool,
) -> bool {
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(e)) if wanted(&e) => return true,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resubscribes_after_a_lost_connection_and_a_restart() {
    let Some(server) = owned(&[]) else { return };
    let reg = common::open(&server.url(), "watch").await.expect("open");
    let mut stream = reg.watch_tasks().await.expect("watch");

    // The server drops the subscriber: the watch says so with a Resync and keeps working.
    let mut raw = common::raw(&server.url()).await.expect("raw");
    let killed: i64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "pubsub"][..])
        .query_async(&mut raw)
        .await
        .expect("client kill");
    assert_eq!(killed, 1);
    assert!(
        next_task_event(&mut stream, Duration::from_secs(10), |e| {
            *e == TaskMetaEvent::Resync
        })
        .await,
        "a Resync after the subscription was killed"
    );
    let task = meta("after-kill", "@hourly");
    reg.put_task(&task, PutMode::CreateOnly).await.expect("put");
    assert!(
        next_task_event(&mut stream, Duration::from_secs(5), |e| {
            *e == TaskMetaEvent::Put(task.clone())
        })
        .await,
        "events flow again after resubscribing"
    );
    // An idle, healthy subscription stays quiet past its keep-alive ping (no spurious Resync).
    let quiet = tokio::time::timeout(Duration::from_secs(7), stream.next()).await;
    assert!(quiet.is_err(), "an idle watch yielded {quiet:?}");

    // The whole server restarts.
    server.restart().expect("restart");
    assert!(
        next_task_event(&mut stream, Duration::from_secs(30), |e| {
            *e == TaskMetaEvent::Resync
        })
        .await,
        "a Resync after the server restarted"
    );
    let task = meta("after-restart", "@hourly");
    reg.put_task(&task, PutMode::CreateOnly).await.expect("put");
    assert!(
        next_task_event(&mut stream, Duration::from_secs(5), |e| {
            *e == TaskMetaEvent::Put(task.clone())
        })
        .await,
        "events flow again after the restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_user_works_and_wrong_credentials_are_access_denied_quickly() {
    let Some(server) = owned(&["--requirepass", "adminpw"]) else {
        return;
    };
    let admin_url = format!("redis://:adminpw@127.0.0.1:{}", server.port());
    let mut admin = common::raw(&admin_url).await.expect("admin connection");
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("app")
        .arg(&["on", ">s3cret"][..])
        // The rules the README documents for a restricted user of namespace `app`.
        .arg(RedisKeys::new("app", 0).acl_rules())
        .query_async(&mut admin)
        .await
        .expect("acl setuser");

    // The right password: everything works, watches included.
    let url = format!("redis://app:s3cret@127.0.0.1:{}", server.port());
    let reg = RedisRegistryConfig::new(&url)
        .namespace("app")
        .build()
        .expect("config");
    reg.ping().await.expect("ping as app");
    let mut events = reg.watch_tasks().await.expect("watch as app");
    let task = meta("acl:task", "@hourly");
    reg.put_task(&task, PutMode::CreateOnly).await.expect("put");
    assert!(
        next_task_event(&mut events, Duration::from_secs(5), |e| {
            *e == TaskMetaEvent::Put(task.clone())
        })
        .await
    );
    let node = Node::new("n1", Utc::now());
    let lease = reg
        .register(&node, Duration::from_secs(10))
        .await
        .expect("register");
    reg.keep_alive(&lease).await.expect("keep alive");
    assert_eq!(reg.list_nodes().await.expect("nodes").items, vec![node]);
    let won = claim_fires(&reg, "n1", &[fire("acl:task", 0)], Duration::from_secs(60))
        .await
        .expect("claim");
    assert!(won[0].is_won());
    assert_eq!(
        reg.list_claims("acl:task")
            .await
            .expect("claims")
            .items
            .len(),
        1
    );
    assert_eq!(reg.list_tasks().await.expect("list").items, vec![task]);
    reg.mark_deleted("acl:task", Utc::now())
        .await
        .expect("mark");
    reg.cleanup_all().await.expect("cleanup all");

    // Outside its namespace the same user is refused: AccessDenied, not a backend error.
    let elsewhere = RedisRegistryConfig::new(&url)
        .namespace("other")
        .build()
        .expect("config");
    let refused = elsewhere
        .put_task(&meta("x", "@hourly"), PutMode::CreateOnly)
        .await;
    assert!(
        matches!(refused, Err(Error::AccessDenied(_))),
        "{refused:?}"
    );

    // Wrong password, unknown user, no password: AccessDenied, quickly, from every entry point.
    for bad in [
        format!("redis://app:wrong@127.0.0.1:{}", server.port()),
        format!("redis://nobody:s3cret@127.0.0.1:{}", server.port()),
        format!("redis://127.0.0.1:{}", server.port()),
    ] {
        let reg = RedisRegistryConfig::new(&bad)
            .namespace("app")
            .build()
            .expect("config");
        let started = Instant::now();
        let ping = reg.ping().await;
        assert!(
            matches!(ping, Err(Error::AccessDenied(_))),
            "{bad}: {ping:?}"
        );
        let put = reg
            .put_task(&meta("x", "@hourly"), PutMode::CreateOnly)
            .await;
        assert!(matches!(put, Err(Error::AccessDenied(_))), "{bad}: {put:?}");
        let watch = reg.watch_nodes().await.err();
        assert!(
            matches!(watch, Some(Error::AccessDenied(_))),
            "{bad}: {watch:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{bad}: refusals took {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn nothing_listening_is_unavailable_quickly() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let reg = RedisRegistryConfig::new(format!("redis://127.0.0.1:{port}"))
        .connect_timeout(Duration::from_millis(500))
        .build()
        .expect("config");
    let started = Instant::now();
    let ping = reg.ping().await;
    assert!(matches!(&ping, Err(e) if e.is_retryable()), "{ping:?}");
    let claim = claim_fires(&reg, "n", &[fire("t", 0)], Duration::from_secs(1)).await;
    assert!(
        matches!(&claim, Err(Error::Unavailable { .. })),
        "{claim:?}"
    );
    let watch = reg.watch_tasks().await.err();
    assert!(
        matches!(watch, Some(Error::Unavailable { .. })),
        "{watch:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn tls_url_against_a_plain_server_fails_cleanly() {
    // A `rediss://` URL builds (the TLS crypto provider is installed, no panic) and a server that
    // does not speak TLS gives an error, quickly, rather than a hang.
    let Some(server) = owned(&[]) else { return };
    let reg = RedisRegistryConfig::new(format!("rediss://127.0.0.1:{}", server.port()))
        .connect_timeout(Duration::from_millis(500))
        .command_timeout(Duration::from_millis(500))
        .build()
        .expect("a rediss:// URL is accepted");
    let started = Instant::now();
    let ping = reg.ping().await;
    // The TLS handshake gets no answer: a timeout, which is `Unavailable`.
    assert!(matches!(ping, Err(Error::Unavailable { .. })), "{ping:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

/// `calls=` of one command in `INFO commandstats` (0 when absent).
fn calls(info: &str, command: &str) -> u64 {
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_claims_is_one_script_call() {
    let Some(server) = owned(&[]) else { return };
    let reg = common::open(&server.url(), "batch").await.expect("open");
    let mut raw = common::raw(&server.url()).await.expect("raw");
    // The first call loads the scripts (NOSCRIPT, SCRIPT LOAD, EVALSHA); later ones do not.
    let fires: Vec<FireKey> = (0..300)
        .map(|i| fire(&format!("task {}", i % 7), i))
        .collect();
    let mut tasks: Vec<(String, chrono::DateTime<Utc>)> =
        (0..7).map(|t| (format!("task {t}"), Utc::now())).collect();
    tasks.push(("warm-up".into(), Utc::now()));
    let lives = reg.ensure_lives(&tasks).await.expect("lives");
    claim_fires(&reg, "n", &[fire("warm-up", 0)], Duration::from_secs(60))
        .await
        .expect("claim");
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut raw)
        .await
        .expect("resetstat");
    let requests: Vec<ClaimRequest> = fires
        .iter()
        .enumerate()
        .map(|(i, f)| {
            ClaimRequest::new(
                f.clone(),
                lives[i % 7].generation,
                f.instant + chrono::Duration::days(1),
                Duration::from_secs(60),
            )
        })
        .collect();
    let outcomes = reg
        .claim(&Claimant::new("n", 1), &requests)
        .await
        .expect("claim");
    assert!(outcomes.iter().all(ClaimOutcome::is_won));
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut raw)
        .await
        .expect("info");
    assert_eq!(calls(&info, "evalsha"), 1, "{info}");
    assert_eq!(calls(&info, "eval"), 0, "{info}");
    assert_eq!(calls(&info, "script|load"), 0, "{info}");
    // Inside the script: one SET per won fire, nothing sent one by one from the client.
    assert_eq!(calls(&info, "set"), 300, "{info}");
    assert_eq!(calls(&info, "incrby"), 1, "{info}");
    // Each task's tombstone is read and its index written once, not once per fire.
    assert_eq!(calls(&info, "exists"), 7, "{info}");
    assert_eq!(calls(&info, "zadd"), 7, "{info}");
    assert_eq!(calls(&info, "get"), 0, "{info}");
}
