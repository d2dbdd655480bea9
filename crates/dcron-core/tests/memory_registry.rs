//! The `Registry` contract, method by method, on `MemoryRegistry`.
//!
//! Lease and retention cases run on tokio's paused clock, so TTLs are virtual time. Events that
//! a call queues are already in the stream when the call returns, so they are read with
//! `now_or_never` (no waiting at all); events produced later by the lease reaper are awaited
//! under a deadline.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use dcron_core::memory::{MemoryRegistry, MAX_VALUE_BYTES, WATCH_BUFFER};
use dcron_core::{
    Error, Lease, Node, NodeEvent, NodeStatus, PutMode, Registry, TaskMeta, TaskMetaEvent,
    Tombstone, WatchStream,
};
use futures::{FutureExt, StreamExt};
use tokio::time::Instant;

fn node(id: &str) -> Node {
    Node::new(id, at(0))
}

fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_767_225_600 + secs, 0)
        .single()
        .expect("valid instant")
}

fn meta(name: &str) -> TaskMeta {
    let mut m = TaskMeta::new(name, "* * * * *");
    // The node sets a record's creation (its live-since) at the write.
    m.created_at = Some(at(0));
    m
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

// ----- claims -----

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
