//! Fault cases on a PostgreSQL server the harness starts itself (own data directory and port):
//! the testkit's restart and lease-expiry cases, and a crash-restart during which every error is
//! retryable, after which every write survives, claims answer as before and watches
//! resynchronise.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use common::{OwnedFactory, OwnedServer};
use dcron_core::{
    ClaimOutcome, ClaimRequest, Claimant, FireKey, Node, NodeEvent, PutMode, RecordKind, Registry,
    TaskMeta, TaskMetaEvent,
};
use dcron_registry_postgres::PostgresRegistry;
use dcron_testkit::{cases, run_case, wait_until, CaseError, RegistryFactory};
use futures::StreamExt;

/// Runs one of the testkit's `faults` cases against a fresh harness-owned server.
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
fn owned() -> Option<OwnedServer> {
    match OwnedServer::start(&[], &[]) {
        Ok(server) => Some(server),
        Err(reason) => {
            common::skip(&format!("harness PostgreSQL: {reason}"));
            None
        }
    }
}

/// Polls `list_tasks` until it answers; every error meanwhile must be retryable. Answers how
/// many errors were seen.
async fn wait_back(reg: &PostgresRegistry, within: Duration) -> usize {
    let errors = std::sync::atomic::AtomicUsize::new(0);
    wait_until("the registry answers again", within, || async {
        match reg.list_tasks().await {
            Ok(_) => true,
            Err(e) => {
                assert!(e.is_retryable(), "while the server is down: {e:?}");
                errors.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                false
            }
        }
    })
    .await
    .expect("server back");
    errors.into_inner()
}

fn at(ms: i64) -> chrono::DateTime<Utc> {
    Utc.timestamp_millis_opt(1_893_456_000_000 + ms)
        .single()
        .expect("valid instant")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_survive_a_crash_restart_and_errors_are_retryable_meanwhile() {
    let Some(server) = owned() else { return };
    let url = server.url();
    let reg = common::open(&url, "restart").await.expect("connect");
    let mut meta = TaskMeta::new("durable", "@hourly").with_payload("kept");
    meta.created_at = Some(at(0));
    reg.put_task(&meta, PutMode::CreateOnly).await.expect("put");
    reg.mark_deleted("gone", at(1)).await.expect("mark");
    reg.put_records(RecordKind::Pause, &[("durable".into(), b"paused".to_vec())])
        .await
        .expect("record");
    let life = reg
        .ensure_lives(&[("durable".into(), at(0))])
        .await
        .expect("life")[0];
    let me = Claimant::new("me", 1);
    let fire = ClaimRequest::new(
        FireKey::new("durable", at(0)),
        life.generation,
        at(0) + chrono::Duration::days(1),
        Duration::from_secs(600),
    );
    let won = reg
        .claim(&me, std::slice::from_ref(&fire))
        .await
        .expect("claim");
    let token = won[0].token().expect("won");
    let lease = reg
        .register(&Node::new("survivor", Utc::now()), Duration::from_secs(120))
        .await
        .expect("register");
    let mut tasks = reg.watch_tasks().await.expect("watch tasks");
    let mut nodes = reg.watch_nodes().await.expect("watch nodes");

    tokio::task::block_in_place(|| server.kill()).expect("kill");
    // While it is down every call fails, retryably.
    let down = reg.list_tasks().await.expect_err("server is down");
    assert!(down.is_retryable(), "{down:?}");
    let down = reg
        .claim(&me, std::slice::from_ref(&fire))
        .await
        .expect_err("down");
    assert!(down.is_retryable(), "{down:?}");
    tokio::task::block_in_place(|| server.start_again()).expect("start");
    wait_back(&reg, Duration::from_secs(30)).await;

    assert_eq!(reg.get_task("durable").await.expect("get"), Some(meta));
    assert!(reg.get_tombstone("gone").await.expect("get").is_some());
    assert_eq!(
        reg.get_record(RecordKind::Pause, "durable")
            .await
            .expect("record"),
        Some(b"paused".to_vec())
    );
    assert_eq!(
        reg.ensure_lives(&[("durable".into(), at(5))])
            .await
            .expect("life")[0],
        life
    );
    // The claim survived: its winner learns it again, everyone else loses.
    assert_eq!(
        reg.claim(&me, std::slice::from_ref(&fire))
            .await
            .expect("claim"),
        vec![ClaimOutcome::WonEarlier { token }]
    );
    assert_eq!(
        reg.claim(&Claimant::new("other", 1), &[fire])
            .await
            .expect("claim"),
        vec![ClaimOutcome::Lost {
            holder: Some("me".into())
        }]
    );
    reg.keep_alive(&lease).await.expect("the lease survived");
    // Watches reconnect by themselves and say so with a Resync, then deliver again.
    let resync = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(e) = tasks.next().await {
            if e == TaskMetaEvent::Resync {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(resync, Ok(true), "task watch resynchronised");
    let resync = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(e) = nodes.next().await {
            if e == NodeEvent::Resync {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(resync, Ok(true), "node watch resynchronised");
    let mut next = TaskMeta::new("after", "@daily");
    next.created_at = Some(at(9));
    reg.put_task(&next, PutMode::CreateOnly).await.expect("put");
    let delivered = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(e) = tasks.next().await {
            if matches!(&e, TaskMetaEvent::Put(m) if m.name == "after") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        delivered,
        Ok(true),
        "a write after the restart is delivered"
    );
}
