//! What is particular to `MemoryRegistry`: its handles, its lease reaper on tokio's paused
//! clock, its hooks, its bounded watch buffers and its stream ends.
//!
//! The `Registry` contract itself is the conformance suite's (`dcron-testkit`, run on this
//! store by `crates/dcron-testkit/tests/memory.rs`); cases that only repeated it are gone:
//! registering, listing and idempotent unregistering (`membership::register_then_list`,
//! `two_nodes_listed`, `unregister_removes_and_is_idempotent`), keep-alives
//! (`membership::keep_alive_extends_life`), updates keeping the lease
//! (`membership::update_node_keeps_the_lease`, `update_node_after_expiry_is_lease_lost`),
//! `LeaseLost` and re-registration (`membership::keep_alive_after_expiry_is_lease_lost`,
//! `reregister_after_expiry`, `stale_lease_leaves_the_newer_registration`), create-only
//! refusals (`tasks::create_only_refuses_existing`, `create_only_refuses_tombstoned`), size
//! limits (`tasks::max_value_bytes_is_exact`; bad names: `tests/bad_input.rs`), long listings
//! (`tasks::list_two_thousand_tasks`), corrupt records (`corrupt::*`), tombstones
//! (`tombstones::mark_deleted_is_idempotent`, `mark_deleted_without_a_record`,
//! `tasks::tombstoned_record_still_readable`) and task events to every watcher
//! (`watch::task_put_delivered`, `tombstone_events_delivered`, `task_removed_delivered`,
//! `dropped_watchers_do_not_block`).
//!
//! Events that a call queues are already in the stream when the call returns, so they are read
//! with `now_or_never` (no waiting at all); events produced later by the lease reaper are
//! awaited under a deadline on virtual time.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use dcron_core::memory::{MemoryRegistry, MAX_VALUE_BYTES, WATCH_BUFFER};
use dcron_core::{
    Error, Lease, Node, NodeEvent, NodeStatus, PutMode, Registry, TaskMeta, TaskMetaEvent,
    WatchStream,
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
async fn injected_raw_bytes_send_a_resync_and_decodable_ones_are_a_record() {
    let registry = MemoryRegistry::new();
    let mut watch = registry.watch_tasks().await.expect("watch");
    registry
        .put_task(&meta("good"), PutMode::CreateOnly)
        .await
        .expect("put");
    assert!(matches!(queued(&mut watch), TaskMetaEvent::Put(_)));
    // A raw write bypasses the record encoding, so watchers cannot be told what changed.
    registry.inject_raw_task("bad", b"{not json".to_vec());
    assert_eq!(queued(&mut watch), TaskMetaEvent::Resync);
    assert_quiet(&mut watch);

    // Injected bytes that do decode are an ordinary record.
    registry.inject_raw_task("raw-ok", meta("raw-ok").encode());
    assert_eq!(
        registry.get_task("raw-ok").await.expect("get"),
        Some(meta("raw-ok"))
    );
}

// ----- tombstones -----

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
