//! The `Registry` contract, method by method, on `MemoryRegistry`.
//!
//! Lease and retention cases run on tokio's paused clock, so TTLs are virtual time. Events that
//! a call queues are already in the stream when the call returns, so they are read with
//! `now_or_never` (no waiting at all); events produced later by the lease reaper are awaited
//! under a deadline.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use dcron_core::memory::{MemoryRegistry, MAX_VALUE_BYTES, WATCH_BUFFER};
use dcron_core::{
    ClaimOutcome, Error, FireKey, Lease, Node, NodeEvent, NodeStatus, PutMode, Registry, TaskMeta,
    TaskMetaEvent, Tombstone, WatchStream,
};
use futures::{FutureExt, StreamExt};
use tokio::time::Instant;

const RETENTION: Duration = Duration::from_secs(300);

fn node(id: &str) -> Node {
    Node::new(id, at(0))
}

fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_767_225_600 + secs, 0)
        .single()
        .expect("valid instant")
}

fn fire(task: &str, secs: i64) -> FireKey {
    FireKey::new(task, at(secs))
}

fn meta(name: &str) -> TaskMeta {
    TaskMeta::new(name, "* * * * *")
}

/// The event a call has already queued. Read outside tokio's cooperative budget, which would
/// otherwise make the channel look empty after 128 reads within one poll of the test task.
fn queued<T>(stream: &mut WatchStream<T>) -> T {
    tokio::task::unconstrained(stream.next())
        .now_or_never()
        .expect("an event is queued")
        .expect("the stream is open")
}

/// Nothing is queued.
fn assert_quiet<T: std::fmt::Debug>(stream: &mut WatchStream<T>) {
    if let Some(event) = tokio::task::unconstrained(stream.next()).now_or_never() {
        panic!("unexpected event {event:?}");
    }
}

/// The next event, waiting at most `limit` (virtual time when the clock is paused).
async fn next_within<T>(stream: &mut WatchStream<T>, limit: Duration) -> T {
    tokio::time::timeout(limit, stream.next())
        .await
        .expect("an event in time")
        .expect("the stream is open")
}

async fn node_ids(registry: &MemoryRegistry) -> HashSet<String> {
    let listing = registry.list_nodes().await.expect("list nodes");
    assert!(listing.corrupt.is_empty());
    listing.items.into_iter().map(|n| n.id).collect()
}

fn ids(list: &[&str]) -> HashSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

// ----- basics -----

#[tokio::test]
async fn backend_capabilities_and_handles() {
    let registry = MemoryRegistry::new();
    assert_eq!(registry.backend(), "memory");
    assert_eq!(registry.namespace(), "default");
    assert_eq!(MemoryRegistry::default().namespace(), "default");
    let caps = registry.capabilities();
    assert!(caps.watch);
    assert_eq!(caps.max_value_bytes, MAX_VALUE_BYTES);

    // Clones share the store and the namespace; `new` and `default` are fresh stores.
    let clone = registry.clone();
    clone
        .put_task(&meta("shared"), PutMode::CreateOnly)
        .await
        .expect("put");
    assert!(registry.get_task("shared").await.expect("get").is_some());
    assert!(MemoryRegistry::new()
        .get_task("shared")
        .await
        .expect("get")
        .is_none());
    assert!(format!("{registry:?}").contains("default"));

    // Usable as a trait object.
    let dynamic: Arc<dyn Registry> = Arc::new(registry.clone());
    assert_eq!(dynamic.list_tasks().await.expect("list").items.len(), 1);
}

// ----- membership -----

#[tokio::test(start_paused = true)]
async fn register_lists_and_unregister_is_idempotent() {
    let registry = MemoryRegistry::new();
    let mut watch = registry.watch_nodes().await.expect("watch");
    let a = registry
        .register(&node("a"), Duration::from_secs(10))
        .await
        .expect("register a");
    let b = registry
        .register(&node("b"), Duration::from_secs(10))
        .await
        .expect("register b");
    assert_eq!(a.node_id, "a");
    assert_eq!(a.ttl, Duration::from_secs(10));
    assert_ne!(a.id, b.id);
    assert_eq!(node_ids(&registry).await, ids(&["a", "b"]));
    assert_eq!(queued(&mut watch), NodeEvent::Put(node("a")));
    assert_eq!(queued(&mut watch), NodeEvent::Put(node("b")));

    registry.unregister(&a).await.expect("unregister");
    assert_eq!(node_ids(&registry).await, ids(&["b"]));
    assert_eq!(queued(&mut watch), NodeEvent::Delete { id: "a".into() });
    registry.unregister(&a).await.expect("second unregister");
    assert_quiet(&mut watch);
    assert!(matches!(
        registry.keep_alive(&a).await,
        Err(Error::LeaseLost { node }) if node == "a"
    ));
}

#[tokio::test]
async fn bad_registrations_are_refused() {
    let registry = MemoryRegistry::new();
    assert!(matches!(
        registry.register(&node("a"), Duration::ZERO).await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        registry.register(&node(""), Duration::from_secs(1)).await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(node_ids(&registry).await.is_empty());
    // A huge TTL is accepted (capped), not an overflow.
    registry
        .register(&node("a"), Duration::MAX)
        .await
        .expect("huge ttl");
    assert_eq!(node_ids(&registry).await, ids(&["a"]));
}

#[tokio::test(start_paused = true)]
async fn ttl_expiry_drops_the_node_and_tells_watchers() {
    let registry = MemoryRegistry::new();
    let mut watch = registry.watch_nodes().await.expect("watch");
    let start = Instant::now();
    let ttl = Duration::from_secs(10);
    registry.register(&node("a"), ttl).await.expect("register");
    assert!(matches!(queued(&mut watch), NodeEvent::Put(_)));

    // Nobody calls the registry: the Delete comes from the expiry itself, at the TTL.
    let event = next_within(&mut watch, Duration::from_secs(60)).await;
    assert_eq!(event, NodeEvent::Delete { id: "a".into() });
    let elapsed = start.elapsed();
    assert!(
        elapsed >= ttl && elapsed <= ttl + Duration::from_millis(100),
        "{elapsed:?}"
    );
    assert!(node_ids(&registry).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn expiry_is_seen_by_reads_even_before_the_reaper_runs() {
    let registry = MemoryRegistry::new();
    registry
        .register(&node("a"), Duration::from_secs(10))
        .await
        .expect("register");
    tokio::time::advance(Duration::from_secs(9)).await;
    assert_eq!(node_ids(&registry).await, ids(&["a"]));
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(node_ids(&registry).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn keep_alive_extends_the_lease() {
    let registry = MemoryRegistry::new();
    let ttl = Duration::from_secs(10);
    let lease = registry.register(&node("a"), ttl).await.expect("register");
    for _ in 0..10 {
        tokio::time::advance(Duration::from_secs(6)).await;
        registry.keep_alive(&lease).await.expect("keep alive");
        assert_eq!(node_ids(&registry).await, ids(&["a"]));
    }
    tokio::time::advance(Duration::from_secs(9)).await;
    assert_eq!(node_ids(&registry).await, ids(&["a"]));
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(node_ids(&registry).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn update_node_keeps_the_lease() {
    let registry = MemoryRegistry::new();
    let mut watch = registry.watch_nodes().await.expect("watch");
    let ttl = Duration::from_secs(10);
    let start = Instant::now();
    let lease = registry.register(&node("a"), ttl).await.expect("register");
    assert!(matches!(queued(&mut watch), NodeEvent::Put(_)));

    tokio::time::advance(Duration::from_secs(5)).await;
    let mut working = node("a");
    working.status = NodeStatus::Working;
    working.weight = 3;
    registry
        .update_node(&lease, &working)
        .await
        .expect("update");
    assert_eq!(queued(&mut watch), NodeEvent::Put(working.clone()));
    let listed = registry.list_nodes().await.expect("list").items;
    assert_eq!(listed, vec![working.clone()]);

    // The update did not renew or detach the lease: the record still expires at the TTL of
    // the registration (the seed's dead node stayed "working" forever here).
    let event = next_within(&mut watch, Duration::from_secs(60)).await;
    assert_eq!(event, NodeEvent::Delete { id: "a".into() });
    assert_eq!(start.elapsed(), ttl);
    assert!(node_ids(&registry).await.is_empty());

    // And an update after expiry neither succeeds nor recreates the record.
    assert!(matches!(
        registry.update_node(&lease, &working).await,
        Err(Error::LeaseLost { .. })
    ));
    assert!(node_ids(&registry).await.is_empty());
    assert_quiet(&mut watch);
}

#[tokio::test]
async fn update_node_refuses_another_nodes_record() {
    let registry = MemoryRegistry::new();
    let lease = registry
        .register(&node("a"), Duration::from_secs(10))
        .await
        .expect("register");
    assert!(matches!(
        registry.update_node(&lease, &node("b")).await,
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(node_ids(&registry).await, ids(&["a"]));
}

#[tokio::test(start_paused = true)]
async fn lease_lost_after_expiry_and_re_register_works() {
    let registry = MemoryRegistry::new();
    let ttl = Duration::from_secs(5);
    let old = registry.register(&node("a"), ttl).await.expect("register");
    tokio::time::advance(ttl).await;
    assert!(matches!(
        registry.keep_alive(&old).await,
        Err(Error::LeaseLost { node }) if node == "a"
    ));
    registry
        .unregister(&old)
        .await
        .expect("unregister after expiry");

    let new = registry.register(&node("a"), ttl).await.expect("again");
    assert_ne!(new.id, old.id);
    registry.keep_alive(&new).await.expect("new lease alive");
    assert!(matches!(
        registry.keep_alive(&old).await,
        Err(Error::LeaseLost { .. })
    ));
    // Unregistering with the dead lease leaves the new registration alone.
    registry.unregister(&old).await.expect("idempotent");
    assert_eq!(node_ids(&registry).await, ids(&["a"]));
}

#[tokio::test(start_paused = true)]
async fn a_new_registration_replaces_the_old_lease() {
    let registry = MemoryRegistry::new();
    let mut watch = registry.watch_nodes().await.expect("watch");
    let first = registry
        .register(&node("a"), Duration::from_secs(5))
        .await
        .expect("register");
    let mut second_record = node("a");
    second_record.status = NodeStatus::Working;
    let second = registry
        .register(&second_record, Duration::from_secs(30))
        .await
        .expect("register again");
    assert!(matches!(queued(&mut watch), NodeEvent::Put(_)));
    assert_eq!(queued(&mut watch), NodeEvent::Put(second_record.clone()));
    assert!(matches!(
        registry.keep_alive(&first).await,
        Err(Error::LeaseLost { .. })
    ));
    assert!(matches!(
        registry.update_node(&first, &node("a")).await,
        Err(Error::LeaseLost { .. })
    ));
    registry.unregister(&first).await.expect("idempotent");

    // The first lease's deadline passes without touching the node.
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(
        registry.list_nodes().await.expect("list").items,
        vec![second_record]
    );
    assert_quiet(&mut watch);
    registry.keep_alive(&second).await.expect("alive");
}

#[tokio::test(start_paused = true)]
async fn expire_lease_hook_ends_a_lease_now() {
    let registry = MemoryRegistry::new();
    let mut watch = registry.watch_nodes().await.expect("watch");
    let lease = registry
        .register(&node("a"), Duration::from_secs(60))
        .await
        .expect("register");
    assert!(matches!(queued(&mut watch), NodeEvent::Put(_)));
    assert!(registry.expire_lease("a"));
    assert_eq!(queued(&mut watch), NodeEvent::Delete { id: "a".into() });
    assert!(!registry.expire_lease("a"));
    assert!(node_ids(&registry).await.is_empty());
    assert!(matches!(
        registry.keep_alive(&lease).await,
        Err(Error::LeaseLost { .. })
    ));
}

// ----- tasks -----

#[tokio::test]
async fn create_only_refuses_existing_then_tombstoned() {
    let registry = MemoryRegistry::new();
    let mut watch = registry.watch_tasks().await.expect("watch");
    let m = meta("t").with_payload("v1");
    registry
        .put_task(&m, PutMode::CreateOnly)
        .await
        .expect("create");
    assert_eq!(queued(&mut watch), TaskMetaEvent::Put(m.clone()));
    assert!(matches!(
        registry.put_task(&meta("t"), PutMode::CreateOnly).await,
        Err(Error::AlreadyExists { name }) if name == "t"
    ));
    // Existing and tombstoned: AlreadyExists is checked first.
    registry.mark_deleted("t", at(1)).await.expect("mark");
    assert!(matches!(
        registry.put_task(&meta("t"), PutMode::CreateOnly).await,
        Err(Error::AlreadyExists { .. })
    ));
    // Tombstoned without a record (a static task's name).
    registry.mark_deleted("s", at(1)).await.expect("mark");
    assert!(matches!(
        registry.put_task(&meta("s"), PutMode::CreateOnly).await,
        Err(Error::Tombstoned { name }) if name == "s"
    ));
    assert_eq!(registry.get_task("t").await.expect("get"), Some(m));
    assert_eq!(registry.get_task("s").await.expect("get"), None);
}

#[tokio::test]
async fn update_needs_a_live_record_and_keeps_claims() {
    let registry = MemoryRegistry::new();
    assert!(matches!(
        registry.put_task(&meta("t"), PutMode::Update).await,
        Err(Error::NotFound { what: "task", .. })
    ));
    registry
        .put_task(&meta("t"), PutMode::CreateOnly)
        .await
        .expect("create");
    let won = registry
        .claim(&[fire("t", 60)], "a", RETENTION)
        .await
        .expect("claim");
    assert!(won[0].is_won());
    let v2 = meta("t").with_payload("v2");
    registry
        .put_task(&v2, PutMode::Update)
        .await
        .expect("update");
    assert_eq!(registry.get_task("t").await.expect("get"), Some(v2));
    assert_eq!(
        registry.list_claims("t").await.expect("claims").items.len(),
        1
    );

    registry.mark_deleted("t", at(1)).await.expect("mark");
    assert!(matches!(
        registry.put_task(&meta("t"), PutMode::Update).await,
        Err(Error::Tombstoned { .. })
    ));
}

#[tokio::test]
async fn force_clears_tombstone_and_claims() {
    let registry = MemoryRegistry::new();
    registry
        .put_task(&meta("t"), PutMode::CreateOnly)
        .await
        .expect("create");
    let first = registry
        .claim(&[fire("t", 60)], "a", RETENTION)
        .await
        .expect("claim");
    registry.mark_deleted("t", at(1)).await.expect("mark");
    assert_eq!(
        registry
            .claim(&[fire("t", 60)], "b", RETENTION)
            .await
            .expect("claim"),
        vec![ClaimOutcome::Tombstoned]
    );

    let mut watch = registry.watch_tasks().await.expect("watch");
    let forced = meta("t").with_payload("forced");
    registry
        .put_task(&forced, PutMode::Force)
        .await
        .expect("force");
    assert_eq!(queued(&mut watch), TaskMetaEvent::Put(forced.clone()));
    assert_eq!(
        queued(&mut watch),
        TaskMetaEvent::TombstoneCleared { name: "t".into() }
    );
    assert_quiet(&mut watch);
    assert_eq!(registry.get_tombstone("t").await.expect("tomb"), None);
    assert_eq!(registry.get_task("t").await.expect("get"), Some(forced));
    assert!(registry
        .list_claims("t")
        .await
        .expect("claims")
        .items
        .is_empty());

    // The fire can be claimed again, with a later token.
    let again = registry
        .claim(&[fire("t", 60)], "b", RETENTION)
        .await
        .expect("claim");
    match (first[0], again[0]) {
        (ClaimOutcome::Won { token: t1 }, ClaimOutcome::Won { token: t2 }) => assert!(t2 > t1),
        other => panic!("{other:?}"),
    }

    // Force on a fresh name simply creates it; no tombstone event.
    registry
        .put_task(&meta("new"), PutMode::Force)
        .await
        .expect("force");
    assert_eq!(queued(&mut watch), TaskMetaEvent::Put(meta("new")));
    assert_quiet(&mut watch);
}

#[tokio::test]
async fn put_refuses_bad_names_and_oversized_records() {
    let registry = MemoryRegistry::new();
    assert!(matches!(
        registry.put_task(&meta("a/b"), PutMode::CreateOnly).await,
        Err(Error::InvalidTaskName { .. })
    ));
    let huge = meta("big").with_payload("x".repeat(MAX_VALUE_BYTES));
    for mode in [PutMode::CreateOnly, PutMode::Force] {
        assert!(matches!(
            registry.put_task(&huge, mode).await,
            Err(Error::InvalidArgument(_))
        ));
    }
    assert_eq!(registry.get_task("big").await.expect("get"), None);
    // Just under the limit round-trips.
    let fits = meta("big").with_payload("x".repeat(MAX_VALUE_BYTES - 1024));
    registry
        .put_task(&fits, PutMode::CreateOnly)
        .await
        .expect("fits");
    assert_eq!(registry.get_task("big").await.expect("get"), Some(fits));
}

#[tokio::test]
async fn five_thousand_tasks_are_listed_completely() {
    let registry = MemoryRegistry::new();
    for i in 0..5_000 {
        registry
            .put_task(&meta(&format!("task {i}")), PutMode::CreateOnly)
            .await
            .expect("put");
    }
    let listing = registry.list_tasks().await.expect("list");
    assert!(listing.corrupt.is_empty());
    let names: HashSet<String> = listing.items.into_iter().map(|m| m.name).collect();
    assert_eq!(names.len(), 5_000);
    assert!((0..5_000).all(|i| names.contains(&format!("task {i}"))));
}

#[tokio::test]
async fn corrupt_value_is_reported_and_skipped() {
    let registry = MemoryRegistry::new();
    let mut watch = registry.watch_tasks().await.expect("watch");
    registry
        .put_task(&meta("good"), PutMode::CreateOnly)
        .await
        .expect("put");
    assert!(matches!(queued(&mut watch), TaskMetaEvent::Put(_)));
    registry.inject_raw_task("bad", b"{not json".to_vec());
    assert_eq!(queued(&mut watch), TaskMetaEvent::Resync);

    let listing = registry.list_tasks().await.expect("list does not fail");
    assert_eq!(listing.items, vec![meta("good")]);
    assert_eq!(listing.corrupt.len(), 1);
    assert_eq!(listing.corrupt[0].key, "bad");
    assert!(!listing.corrupt[0].reason.is_empty());
    assert!(matches!(
        registry.get_task("bad").await,
        Err(Error::Corrupt { key, .. }) if key == "bad"
    ));
    assert_eq!(
        registry.get_task("good").await.expect("good"),
        Some(meta("good"))
    );
    // The corrupt record exists for create-only, and can be overwritten or cleaned up.
    assert!(matches!(
        registry.put_task(&meta("bad"), PutMode::CreateOnly).await,
        Err(Error::AlreadyExists { .. })
    ));
    registry
        .put_task(&meta("bad"), PutMode::Update)
        .await
        .expect("update over corrupt");
    assert_eq!(
        registry.get_task("bad").await.expect("fixed"),
        Some(meta("bad"))
    );
    registry.inject_raw_task("bad", vec![0xff, 0x00]);
    registry.cleanup_task("bad").await.expect("cleanup");
    assert!(registry
        .list_tasks()
        .await
        .expect("list")
        .corrupt
        .is_empty());

    // Injected bytes that do decode are an ordinary record.
    registry.inject_raw_task("raw-ok", meta("raw-ok").encode());
    assert_eq!(
        registry.get_task("raw-ok").await.expect("get"),
        Some(meta("raw-ok"))
    );
}

// ----- tombstones -----

#[tokio::test]
async fn mark_deleted_keeps_the_record_and_the_first_time() {
    let registry = MemoryRegistry::new();
    let mut watch = registry.watch_tasks().await.expect("watch");
    registry
        .put_task(&meta("t"), PutMode::CreateOnly)
        .await
        .expect("put");
    assert!(matches!(queued(&mut watch), TaskMetaEvent::Put(_)));

    registry.mark_deleted("t", at(10)).await.expect("mark");
    let tomb = Tombstone {
        name: "t".into(),
        deleted_at: at(10),
    };
    assert_eq!(queued(&mut watch), TaskMetaEvent::Tombstoned(tomb.clone()));
    registry.mark_deleted("t", at(20)).await.expect("again");
    assert_quiet(&mut watch);
    assert_eq!(
        registry.get_tombstone("t").await.expect("tomb"),
        Some(tomb.clone())
    );
    // The record is still returned; tombstones are separate.
    assert_eq!(registry.get_task("t").await.expect("get"), Some(meta("t")));

    // A static task (no record) can be marked too.
    registry.mark_deleted("static", at(5)).await.expect("mark");
    let mut tombs = registry.list_tombstones().await.expect("list").items;
    tombs.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(tombs.len(), 2);
    assert_eq!(tombs[0].name, "static");
    assert_eq!(tombs[1], tomb);
    assert!(matches!(
        registry.mark_deleted("", at(5)).await,
        Err(Error::InvalidTaskName { .. })
    ));
}

#[tokio::test]
async fn claims_of_a_tombstoned_name_are_refused_from_the_moment_it_returns() {
    let registry = MemoryRegistry::new();
    registry.mark_deleted("t", at(0)).await.expect("mark");
    let outcomes = registry
        .claim(
            &[fire("t", 60), fire("u", 60), fire("t", 120)],
            "a",
            RETENTION,
        )
        .await
        .expect("claim");
    assert_eq!(outcomes[0], ClaimOutcome::Tombstoned);
    assert!(outcomes[1].is_won());
    assert_eq!(outcomes[2], ClaimOutcome::Tombstoned);
    assert!(registry
        .list_claims("t")
        .await
        .expect("claims")
        .items
        .is_empty());
}

#[tokio::test]
async fn clear_tombstone_reuses_the_name() {
    let registry = MemoryRegistry::new();
    assert!(matches!(
        registry.clear_tombstone("t").await,
        Err(Error::NotFound { what: "tombstone", name }) if name == "t"
    ));
    registry
        .put_task(&meta("t"), PutMode::CreateOnly)
        .await
        .expect("put");
    registry.mark_deleted("t", at(0)).await.expect("mark");
    let mut watch = registry.watch_tasks().await.expect("watch");
    registry.clear_tombstone("t").await.expect("clear");
    assert_eq!(
        queued(&mut watch),
        TaskMetaEvent::TombstoneCleared { name: "t".into() }
    );
    assert_eq!(registry.get_tombstone("t").await.expect("tomb"), None);
    assert_eq!(registry.get_task("t").await.expect("get"), Some(meta("t")));
    assert!(registry
        .claim(&[fire("t", 60)], "a", RETENTION)
        .await
        .expect("claim")[0]
        .is_won());
    assert!(matches!(
        registry.clear_tombstone("t").await,
        Err(Error::NotFound { .. })
    ));
}

#[tokio::test]
async fn cleanup_task_removes_every_trace_and_is_idempotent() {
    let registry = MemoryRegistry::new();
    registry
        .put_task(&meta("t"), PutMode::CreateOnly)
        .await
        .expect("put");
    registry
        .put_task(&meta("other"), PutMode::CreateOnly)
        .await
        .expect("put");
    registry
        .claim(&[fire("t", 60), fire("other", 60)], "a", RETENTION)
        .await
        .expect("claim");
    registry.mark_deleted("t", at(0)).await.expect("mark");

    let mut watch = registry.watch_tasks().await.expect("watch");
    registry.cleanup_task("t").await.expect("cleanup");
    assert_eq!(
        queued(&mut watch),
        TaskMetaEvent::Removed { name: "t".into() }
    );
    assert_eq!(
        queued(&mut watch),
        TaskMetaEvent::TombstoneCleared { name: "t".into() }
    );
    assert_eq!(registry.get_task("t").await.expect("get"), None);
    assert_eq!(registry.get_tombstone("t").await.expect("tomb"), None);
    assert!(registry
        .list_claims("t")
        .await
        .expect("claims")
        .items
        .is_empty());
    registry.cleanup_task("t").await.expect("idempotent");
    registry
        .cleanup_task("never-existed")
        .await
        .expect("idempotent");
    assert_quiet(&mut watch);

    // Other names are untouched, and the name is free again.
    assert_eq!(
        registry
            .list_claims("other")
            .await
            .expect("claims")
            .items
            .len(),
        1
    );
    assert!(registry.get_task("other").await.expect("get").is_some());
    registry
        .put_task(&meta("t"), PutMode::CreateOnly)
        .await
        .expect("reuse");
}

#[tokio::test]
async fn cleanup_all_touches_only_its_namespace_and_keeps_nodes() {
    let store = MemoryRegistry::new();
    let mine = store.with_namespace("mine");
    let theirs = store.with_namespace("theirs");
    for registry in [&mine, &theirs] {
        registry
            .register(&node("n"), Duration::from_secs(60))
            .await
            .expect("register");
        registry
            .put_task(&meta("t"), PutMode::CreateOnly)
            .await
            .expect("put");
        registry.mark_deleted("s", at(0)).await.expect("mark");
        registry
            .claim(&[fire("t", 60)], "n", RETENTION)
            .await
            .expect("claim");
    }
    let mut watch = mine.watch_tasks().await.expect("watch");
    let mut their_watch = theirs.watch_tasks().await.expect("watch");

    mine.cleanup_all().await.expect("cleanup all");
    assert!(mine.list_tasks().await.expect("list").items.is_empty());
    assert!(mine.list_tombstones().await.expect("list").items.is_empty());
    assert!(mine
        .list_claims("t")
        .await
        .expect("claims")
        .items
        .is_empty());
    assert_eq!(node_ids(&mine).await, ids(&["n"]));
    let mut events = vec![queued(&mut watch), queued(&mut watch)];
    events.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(
        events,
        vec![
            TaskMetaEvent::Removed { name: "t".into() },
            TaskMetaEvent::TombstoneCleared { name: "s".into() },
        ]
    );
    assert_quiet(&mut watch);

    assert_eq!(theirs.list_tasks().await.expect("list").items.len(), 1);
    assert_eq!(theirs.list_tombstones().await.expect("list").items.len(), 1);
    assert_eq!(
        theirs.list_claims("t").await.expect("claims").items.len(),
        1
    );
    assert_eq!(node_ids(&theirs).await, ids(&["n"]));
    assert_quiet(&mut their_watch);

    // A fire cleaned up can be claimed again.
    assert!(mine
        .claim(&[fire("t", 60)], "n", RETENTION)
        .await
        .expect("claim")[0]
        .is_won());
}

#[tokio::test]
async fn cleanup_all_of_many_records_sends_one_resync() {
    let registry = MemoryRegistry::new();
    for i in 0..(WATCH_BUFFER + 10) {
        registry
            .put_task(&meta(&format!("t{i}")), PutMode::CreateOnly)
            .await
            .expect("put");
    }
    let mut watch = registry.watch_tasks().await.expect("watch");
    registry.cleanup_all().await.expect("cleanup all");
    assert_eq!(queued(&mut watch), TaskMetaEvent::Resync);
    assert_quiet(&mut watch);
    assert!(registry.list_tasks().await.expect("list").items.is_empty());
}

// ----- namespaces -----

#[tokio::test]
async fn namespaces_are_isolated() {
    let a = MemoryRegistry::new().with_namespace("a");
    let b = a.with_namespace("b");
    assert_eq!(a.namespace(), "a");
    assert_eq!(b.namespace(), "b");
    let mut b_nodes = b.watch_nodes().await.expect("watch");
    let mut b_tasks = b.watch_tasks().await.expect("watch");

    let lease = a
        .register(&node("n"), Duration::from_secs(60))
        .await
        .expect("register");
    a.put_task(&meta("t"), PutMode::CreateOnly)
        .await
        .expect("put");
    a.mark_deleted("s", at(0)).await.expect("mark");
    let won = a
        .claim(&[fire("t", 60)], "n", RETENTION)
        .await
        .expect("claim");
    assert!(won[0].is_won());

    assert!(node_ids(&b).await.is_empty());
    assert!(b.list_tasks().await.expect("list").items.is_empty());
    assert_eq!(b.get_task("t").await.expect("get"), None);
    assert!(b.list_tombstones().await.expect("list").items.is_empty());
    assert!(b.list_claims("t").await.expect("claims").items.is_empty());
    assert_quiet(&mut b_nodes);
    assert_quiet(&mut b_tasks);
    // The same fire is free in the other namespace, the same name creatable.
    assert!(b
        .claim(&[fire("t", 60)], "n", RETENTION)
        .await
        .expect("claim")[0]
        .is_won());
    b.put_task(&meta("s"), PutMode::CreateOnly)
        .await
        .expect("put");
    // A lease belongs to its namespace.
    assert!(matches!(
        b.keep_alive(&lease).await,
        Err(Error::LeaseLost { .. })
    ));
    b.unregister(&lease).await.expect("no-op");
    assert_eq!(node_ids(&a).await, ids(&["n"]));
    assert_quiet(&mut b_nodes);
}

// ----- claims -----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_concurrent_claimers_one_winner_per_fire() {
    let registry = MemoryRegistry::new();
    let fires: Vec<FireKey> = (0..100).map(|i| fire("race", i * 60)).collect();
    let mut handles = Vec::new();
    for n in 0..16 {
        let registry = registry.clone();
        let mut mine = fires.clone();
        // Each claimer sends the fires in its own order, in batches of varying size.
        mine.rotate_left(n * 7 % fires.len());
        handles.push(tokio::spawn(async move {
            let node = format!("node-{n}");
            let mut wins = Vec::new();
            for chunk in mine.chunks(n % 5 + 1) {
                let outcomes = registry
                    .claim(chunk, &node, RETENTION)
                    .await
                    .expect("claim");
                assert_eq!(outcomes.len(), chunk.len());
                for (f, outcome) in chunk.iter().zip(outcomes) {
                    match outcome {
                        ClaimOutcome::Won { token } => wins.push((f.clone(), node.clone(), token)),
                        ClaimOutcome::Lost => {}
                        ClaimOutcome::Tombstoned => panic!("not tombstoned"),
                    }
                }
            }
            wins
        }));
    }
    let mut winners: HashMap<FireKey, (String, u64)> = HashMap::new();
    for handle in handles {
        for (f, node, token) in handle.await.expect("claimer") {
            assert!(
                winners.insert(f.clone(), (node, token)).is_none(),
                "two winners for {f}"
            );
        }
    }
    assert_eq!(winners.len(), 100);
    let tokens: HashSet<u64> = winners.values().map(|(_, t)| *t).collect();
    assert_eq!(tokens.len(), 100);
    assert!(!tokens.contains(&0));

    // The registry agrees with what the claimers were told.
    let claims = registry.list_claims("race").await.expect("claims").items;
    assert_eq!(claims.len(), 100);
    for claim in claims {
        assert_eq!(
            winners.get(&claim.fire),
            Some(&(claim.node_id.clone(), claim.token))
        );
    }
}

#[tokio::test]
async fn duplicates_in_a_batch_first_wins_and_tokens_increase() {
    let registry = MemoryRegistry::new();
    let outcomes = registry
        .claim(
            &[fire("t", 60), fire("t", 60), fire("t", 120), fire("t", 60)],
            "a",
            RETENTION,
        )
        .await
        .expect("claim");
    assert!(outcomes[0].is_won());
    assert_eq!(outcomes[1], ClaimOutcome::Lost);
    assert!(outcomes[2].is_won());
    assert_eq!(outcomes[3], ClaimOutcome::Lost);
    let token = |o: ClaimOutcome| match o {
        ClaimOutcome::Won { token } => token,
        other => panic!("{other:?}"),
    };
    assert!(token(outcomes[2]) > token(outcomes[0]));
    let later = registry
        .claim(&[fire("u", 60)], "b", RETENTION)
        .await
        .expect("claim");
    assert!(token(later[0]) > token(outcomes[2]));
    assert!(registry
        .claim(&[], "a", RETENTION)
        .await
        .expect("empty")
        .is_empty());
}

#[tokio::test]
async fn list_claims_reports_the_winner_and_the_fire() {
    let registry = MemoryRegistry::new();
    let instant = at(60) + chrono::Duration::milliseconds(250);
    let key = FireKey::new("t", instant);
    let outcome = registry
        .claim(std::slice::from_ref(&key), "winner", RETENTION)
        .await
        .expect("claim");
    registry
        .claim(std::slice::from_ref(&key), "loser", RETENTION)
        .await
        .expect("claim");
    let claims = registry.list_claims("t").await.expect("claims");
    assert!(claims.corrupt.is_empty());
    assert_eq!(claims.items.len(), 1);
    assert_eq!(claims.items[0].fire, key);
    assert_eq!(claims.items[0].node_id, "winner");
    assert_eq!(
        outcome[0],
        ClaimOutcome::Won {
            token: claims.items[0].token
        }
    );
    assert!(registry
        .list_claims("other")
        .await
        .expect("claims")
        .items
        .is_empty());
}

#[tokio::test(start_paused = true)]
async fn claims_are_kept_for_the_retention_then_removed() {
    let registry = MemoryRegistry::new();
    let retention = Duration::from_secs(120);
    let first = registry
        .claim(&[fire("t", 60)], "a", retention)
        .await
        .expect("claim");
    assert!(first[0].is_won());
    tokio::time::advance(Duration::from_secs(60)).await;
    // A second fire, claimed later, expires later.
    registry
        .claim(&[fire("t", 120)], "a", retention)
        .await
        .expect("claim");
    tokio::time::advance(Duration::from_secs(59)).await;
    assert_eq!(
        registry
            .claim(&[fire("t", 60)], "b", retention)
            .await
            .expect("claim"),
        vec![ClaimOutcome::Lost]
    );
    assert_eq!(
        registry.list_claims("t").await.expect("claims").items.len(),
        2
    );

    tokio::time::advance(Duration::from_secs(1)).await;
    let claims = registry.list_claims("t").await.expect("claims").items;
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0].fire, fire("t", 120));
    // After its retention the fire can be won again (and the claim is not released earlier).
    let again = registry
        .claim(&[fire("t", 60)], "b", retention)
        .await
        .expect("claim");
    assert!(again[0].is_won());
    tokio::time::advance(Duration::from_secs(60)).await;
    let claims = registry.list_claims("t").await.expect("claims").items;
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0].node_id, "b");
}

#[tokio::test]
async fn zero_retention_is_refused() {
    let registry = MemoryRegistry::new();
    assert!(matches!(
        registry.claim(&[fire("t", 0)], "a", Duration::ZERO).await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(registry
        .list_claims("t")
        .await
        .expect("claims")
        .items
        .is_empty());
}

// ----- watches -----

#[tokio::test]
async fn a_watcher_that_never_reads_does_not_block_writers() {
    let registry = MemoryRegistry::new();
    let mut stuck = registry.watch_tasks().await.expect("watch");
    let mut stuck_nodes = registry.watch_nodes().await.expect("watch");
    let writes = async {
        let mut leases: Vec<Lease> = Vec::new();
        for i in 0..10_000 {
            registry
                .put_task(&meta(&format!("t{i}")), PutMode::CreateOnly)
                .await
                .expect("put");
        }
        for i in 0..(WATCH_BUFFER + 5) {
            leases.push(
                registry
                    .register(&node(&format!("n{i}")), Duration::from_secs(600))
                    .await
                    .expect("register"),
            );
        }
        leases
    };
    let leases = tokio::time::timeout(Duration::from_secs(60), writes)
        .await
        .expect("writers never wait for a watcher");
    assert_eq!(leases.len(), WATCH_BUFFER + 5);

    // The watcher gets what fit in its buffer, in order, then one Resync.
    for i in 0..WATCH_BUFFER {
        assert_eq!(
            queued(&mut stuck),
            TaskMetaEvent::Put(meta(&format!("t{i}")))
        );
    }
    assert_eq!(queued(&mut stuck), TaskMetaEvent::Resync);
    assert_quiet(&mut stuck);
    for _ in 0..WATCH_BUFFER {
        assert!(matches!(queued(&mut stuck_nodes), NodeEvent::Put(_)));
    }
    assert_eq!(queued(&mut stuck_nodes), NodeEvent::Resync);

    // After the resync, new events flow again.
    registry.mark_deleted("t0", at(0)).await.expect("mark");
    assert!(matches!(queued(&mut stuck), TaskMetaEvent::Tombstoned(_)));
    assert_eq!(
        registry.list_tasks().await.expect("list").items.len(),
        10_000
    );
}

#[tokio::test]
async fn every_watcher_gets_every_event_and_dropped_ones_do_not_matter() {
    let registry = MemoryRegistry::new();
    let mut first = registry.watch_tasks().await.expect("watch");
    let dropped = registry.watch_tasks().await.expect("watch");
    let mut second = registry.watch_tasks().await.expect("watch");
    drop(dropped);
    registry
        .put_task(&meta("t"), PutMode::CreateOnly)
        .await
        .expect("put");
    registry.mark_deleted("t", at(0)).await.expect("mark");
    registry.clear_tombstone("t").await.expect("clear");
    registry.cleanup_task("t").await.expect("cleanup");
    let expected = vec![
        TaskMetaEvent::Put(meta("t")),
        TaskMetaEvent::Tombstoned(Tombstone {
            name: "t".into(),
            deleted_at: at(0),
        }),
        TaskMetaEvent::TombstoneCleared { name: "t".into() },
        TaskMetaEvent::Removed { name: "t".into() },
    ];
    for watch in [&mut first, &mut second] {
        let got: Vec<_> = (0..expected.len()).map(|_| queued(watch)).collect();
        assert_eq!(got, expected);
        assert_quiet(watch);
    }
}

#[tokio::test]
async fn watch_streams_end_when_the_registry_is_dropped() {
    let registry = MemoryRegistry::new();
    let mut nodes = registry.watch_nodes().await.expect("watch");
    let mut tasks = registry
        .with_namespace("x")
        .watch_tasks()
        .await
        .expect("watch");
    drop(registry);
    assert_eq!(nodes.next().await, None);
    assert_eq!(tasks.next().await, None);
}
