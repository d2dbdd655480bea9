//! Redis-specific checks on the shared server (`DCRON_TEST_REDIS_URL`): the documented key
//! layout, TTLs that stay attached, cleanup that keeps to its namespace, and damaged keys.
//! Unreachable server → skipped with the reason printed (fails under `DCRON_TEST_REQUIRE=1`).

mod common;

use std::time::Duration;

use chrono::{TimeZone, Utc};
use common::meta;
use dcron_core::{
    ClaimRequest, Claimant, Error, FireKey, Node, NodeStatus, PutMode, Registry, TaskMeta,
};
use dcron_registry_redis::{RedisKeys, RedisRegistry};
use redis::aio::MultiplexedConnection;
use redis::AsyncCommands;

/// A registry on a fresh namespace plus a raw connection, or `None` (skipped).
async fn setup(label: &str) -> Option<(RedisRegistry, MultiplexedConnection, String)> {
    let url = RedisRegistry::env_url();
    let namespace = format!("dcron-layout-{label}-{}", uuid::Uuid::new_v4().simple());
    match (
        common::open(&url, &namespace).await,
        common::raw(&url).await,
    ) {
        (Ok(reg), Ok(raw)) => Some((reg, raw, namespace)),
        (Err(e), _) | (_, Err(e)) => {
            common::skip(&format!("redis at {url} unreachable: {e}"));
            None
        }
    }
}

async fn pttl(raw: &mut MultiplexedConnection, key: &str) -> i64 {
    raw.pttl(key).await.expect("pttl")
}

#[tokio::test]
async fn node_ttl_is_server_side_and_survives_updates() {
    let Some((reg, mut raw, ns)) = setup("ttl").await else {
        return;
    };
    let keys = RedisKeys::new(&ns, 0);
    let mut node = Node::new("node:1 ü", Utc::now());
    let lease = reg
        .register(&node, Duration::from_secs(30))
        .await
        .expect("register");
    let key = keys.node(&node.id);
    assert_eq!(key, format!("{ns}:node:node%3A1%20%C3%BC"));
    let ttl = pttl(&mut raw, &key).await;
    assert!(ttl > 25_000 && ttl <= 30_000, "ttl {ttl}");

    // Shorten the TTL by hand, then update: the update must not reset or remove it.
    let _: bool = raw.pexpire(&key, 5_000).await.expect("pexpire");
    node.status = NodeStatus::Working;
    reg.update_node(&lease, &node).await.expect("update");
    let ttl = pttl(&mut raw, &key).await;
    assert!(ttl > 0 && ttl <= 5_000, "update kept the TTL: {ttl}");
    reg.keep_alive(&lease).await.expect("keep alive");
    assert!(pttl(&mut raw, &key).await > 25_000);

    // A registration under a newer lease is not touched by the old lease.
    let newer = reg
        .register(&node, Duration::from_secs(30))
        .await
        .expect("again");
    assert!(matches!(
        reg.keep_alive(&lease).await,
        Err(Error::LeaseLost { .. })
    ));
    reg.unregister(&lease)
        .await
        .expect("old unregister is a no-op");
    assert_eq!(reg.list_nodes().await.expect("list").items.len(), 1);
    reg.unregister(&newer).await.expect("unregister");
    assert!(reg.list_nodes().await.expect("list").items.is_empty());
    let members: Vec<String> = raw.smembers(keys.node_index()).await.expect("smembers");
    assert!(members.is_empty(), "index pruned: {members:?}");
}

#[tokio::test]
async fn claims_expire_with_the_retention_and_are_indexed() {
    let Some((reg, mut raw, ns)) = setup("claims").await else {
        return;
    };
    let keys = RedisKeys::new(&ns, 0);
    let instant = Utc
        .timestamp_millis_opt(1_893_456_000_123)
        .single()
        .expect("instant");
    let fire = FireKey::new("job:a", instant);
    let won = common::claim_fires(
        &reg,
        "n1",
        std::slice::from_ref(&fire),
        Duration::from_secs(90),
    )
    .await
    .expect("claim");
    assert!(won[0].is_won());
    let claim_key = format!("{}1893456000123", keys.claim_prefix("job:a"));
    let ttl = pttl(&mut raw, &claim_key).await;
    assert!(ttl > 85_000 && ttl <= 90_000, "claim ttl {ttl}");
    // The claim names its token, the life's generation and the claimant (node id last).
    let stored: String = raw.get(&claim_key).await.expect("get");
    let life: std::collections::HashMap<String, String> =
        raw.hgetall(keys.life("job:a")).await.expect("hgetall");
    let token = won[0].token().expect("won");
    assert_eq!(stored, format!("{token}:{}:1:n1", life["gen"]));
    let index: Vec<String> = raw
        .zrange(keys.claim_index("job:a"), 0, -1)
        .await
        .expect("zrange");
    assert_eq!(index, vec!["1893456000123".to_string()]);
    assert!(pttl(&mut raw, &keys.claim_index("job:a")).await > 85_000);
    reg.cleanup_task("job:a").await.expect("cleanup");
    let life_left: bool = raw.exists(keys.life("job:a")).await.expect("exists");
    assert!(!life_left, "cleanup removed the life");
    // Claims stay until their retention ends, whatever happens to the name.
    reg.cleanup_all().await.expect("cleanup all");
    let left: bool = raw.exists(&claim_key).await.expect("exists");
    assert!(left, "cleanups keep the claim");
    assert!(
        pttl(&mut raw, &claim_key).await > 80_000,
        "with its retention"
    );
    assert_eq!(
        common::claim_fires(&reg, "n2", &[fire], Duration::from_secs(90))
            .await
            .expect("claim"),
        vec![dcron_core::ClaimOutcome::Lost {
            holder: Some("n1".into())
        }]
    );
    let index: Vec<String> = raw
        .zrange(keys.claim_index("job:a"), 0, -1)
        .await
        .expect("zrange");
    assert_eq!(
        index,
        vec!["1893456000123".to_string()],
        "the index is kept too"
    );
    let _: () = raw
        .del(&[claim_key.clone(), keys.claim_index("job:a")])
        .await
        .expect("del");
    reg.cleanup_all().await.expect("cleanup all");
}

#[tokio::test]
async fn cleanup_all_keeps_nodes_and_other_namespaces() {
    let Some((reg, mut raw, ns)) = setup("cleanup").await else {
        return;
    };
    let other = common::open(&RedisRegistry::env_url(), &format!("{ns}:x"))
        .await
        .expect("open other");
    let node = Node::new("keeper", Utc::now());
    let lease = reg
        .register(&node, Duration::from_secs(30))
        .await
        .expect("register");
    for r in [&reg, &other] {
        for i in 0..1500 {
            r.put_task(&meta(&format!("t{i}"), "@hourly"), PutMode::CreateOnly)
                .await
                .expect("put");
        }
        r.mark_deleted("t1", Utc::now()).await.expect("mark");
    }
    let unrelated = format!("{ns}-unrelated");
    let _: () = raw.set(&unrelated, "x").await.expect("set");
    reg.cleanup_all().await.expect("cleanup all");
    assert!(reg.list_tasks().await.expect("list").items.is_empty());
    assert!(reg.list_tombstones().await.expect("list").items.is_empty());
    assert_eq!(reg.list_nodes().await.expect("nodes").items, vec![node]);
    assert_eq!(other.list_tasks().await.expect("list").items.len(), 1500);
    assert_eq!(other.list_tombstones().await.expect("list").items.len(), 1);
    let kept: bool = raw.exists(&unrelated).await.expect("exists");
    assert!(kept);
    let _: () = raw.del(&unrelated).await.expect("del");
    reg.unregister(&lease).await.expect("unregister");
    other.cleanup_all().await.expect("cleanup other");
}

#[tokio::test]
async fn keys_of_the_wrong_type_are_corrupt_not_fatal() {
    let Some((reg, mut raw, ns)) = setup("types").await else {
        return;
    };
    let keys = RedisKeys::new(&ns, 0);
    let good = meta("good", "@hourly");
    reg.put_task(&good, PutMode::CreateOnly).await.expect("put");
    let _: () = raw.hset(keys.task("hashed"), "f", "v").await.expect("hset");
    let _: () = raw
        .set(
            keys.task("renamed"),
            TaskMeta::new("someone-else", "@hourly").encode(),
        )
        .await
        .expect("set");
    assert!(matches!(
        reg.get_task("hashed").await,
        Err(Error::Corrupt { .. })
    ));
    assert!(matches!(
        reg.get_task("renamed").await,
        Err(Error::Corrupt { .. })
    ));
    let listing = reg.list_tasks().await.expect("list");
    assert_eq!(listing.items, vec![good]);
    let mut bad: Vec<&str> = listing.corrupt.iter().map(|c| c.key.as_str()).collect();
    bad.sort();
    assert_eq!(bad, vec![keys.task("hashed"), keys.task("renamed")]);

    // A node hash without a record, next to a good node.
    let node = Node::new("ok", Utc::now());
    let lease = reg
        .register(&node, Duration::from_secs(30))
        .await
        .expect("register");
    let _: () = raw
        .hset(keys.node("broken"), "lease", "x")
        .await
        .expect("hset");
    let _: () = raw.sadd(keys.node_index(), "broken").await.expect("sadd");
    let nodes = reg.list_nodes().await.expect("nodes");
    assert_eq!(nodes.items, vec![node]);
    assert_eq!(nodes.corrupt.len(), 1, "{:?}", nodes.corrupt);
    let _: () = raw.del(keys.node("broken")).await.expect("del");
    reg.unregister(&lease).await.expect("unregister");
    reg.cleanup_all().await.expect("cleanup");
}

#[tokio::test]
async fn bad_arguments_are_typed_errors() {
    let Some((reg, _raw, _ns)) = setup("args").await else {
        return;
    };
    let node = Node::new("n", Utc::now());
    assert!(matches!(
        reg.register(&node, Duration::ZERO).await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        reg.put_task(&meta("a/b", "@hourly"), PutMode::CreateOnly)
            .await,
        Err(Error::InvalidTaskName { .. })
    ));
    // A create-only or force write needs its live-since.
    for mode in [PutMode::CreateOnly, PutMode::Force] {
        assert!(matches!(
            reg.put_task(&TaskMeta::new("no-since", "@hourly"), mode)
                .await,
            Err(Error::InvalidArgument(_))
        ));
    }
    assert_eq!(reg.get_task("no-since").await.expect("get"), None);
    let now = Utc::now();
    let request = ClaimRequest::new(FireKey::new("t", now), 1, now, Duration::ZERO);
    assert!(matches!(
        reg.claim(&Claimant::new("n", 1), &[request]).await,
        Err(Error::InvalidArgument(_))
    ));
    let lease = reg
        .register(&node, Duration::from_secs(5))
        .await
        .expect("register");
    let other = Node::new("m", Utc::now());
    assert!(matches!(
        reg.update_node(&lease, &other).await,
        Err(Error::InvalidArgument(_))
    ));
    reg.unregister(&lease).await.expect("unregister");
}

#[tokio::test]
async fn keys_that_are_not_utf8_are_corrupt_and_cleaned_up() {
    let Some((reg, mut raw, ns)) = setup("binary").await else {
        return;
    };
    let fine = meta("fine", "@hourly");
    reg.put_task(&fine, PutMode::CreateOnly).await.expect("put");
    let mut key = format!("{ns}:task:").into_bytes();
    key.extend_from_slice(b"\xff\xfe");
    let _: () = raw.set(&key, "{").await.expect("set");
    let listing = reg.list_tasks().await.expect("list despite a binary key");
    assert_eq!(listing.items, vec![fine]);
    assert_eq!(listing.corrupt.len(), 1, "{:?}", listing.corrupt);
    reg.cleanup_all()
        .await
        .expect("cleanup all despite a binary key");
    let left: bool = raw.exists(&key).await.expect("exists");
    assert!(!left, "cleanup_all removed the binary key");
}

#[tokio::test]
async fn databases_are_isolated_including_watches() {
    let Some((db0, _raw, ns)) = setup("db").await else {
        return;
    };
    let db1 = dcron_registry_redis::RedisRegistryConfig::new(RedisRegistry::env_url())
        .namespace(&ns)
        .database(1)
        .build()
        .expect("config");
    if let Err(e) = db1.ping().await {
        common::skip(&format!("database 1 not usable: {e}"));
        return;
    }
    let mut db0_events = db0.watch_tasks().await.expect("watch db0");
    let mut db1_events = db1.watch_tasks().await.expect("watch db1");
    let in_db1 = meta("only-in-db1", "@hourly");
    db1.put_task(&in_db1, PutMode::CreateOnly)
        .await
        .expect("put");
    let marker = meta("marker-in-db0", "@hourly");
    db0.put_task(&marker, PutMode::CreateOnly)
        .await
        .expect("put");

    // db0's watcher sees its own write first and nothing of db1's.
    assert_eq!(
        next_event(&mut db0_events).await,
        Some(dcron_core::TaskMetaEvent::Put(marker.clone()))
    );
    assert_eq!(
        next_event(&mut db1_events).await,
        Some(dcron_core::TaskMetaEvent::Put(in_db1.clone()))
    );
    assert_eq!(db0.get_task("only-in-db1").await.expect("get"), None);
    assert_eq!(db1.get_task("marker-in-db0").await.expect("get"), None);
    assert_eq!(db1.list_tasks().await.expect("list").items, vec![in_db1]);
    db0.cleanup_all().await.expect("cleanup");
    db1.cleanup_all().await.expect("cleanup");
}

async fn next_event(
    stream: &mut dcron_core::WatchStream<dcron_core::TaskMetaEvent>,
) -> Option<dcron_core::TaskMetaEvent> {
    use futures::StreamExt;
    tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("an event within 5 s")
}

#[tokio::test]
async fn slots_are_hashes_held_by_the_node_key_and_damage_is_corrupt() {
    let Some((reg, mut raw, ns)) = setup("slot").await else {
        return;
    };
    let keys = RedisKeys::new(&ns, 0);
    let lease = reg
        .register(&Node::new("n:1", Utc::now()), Duration::from_secs(30))
        .await
        .expect("register");
    let fire = FireKey::new("job:x", Utc.timestamp_opt(1_700_000_000, 0).unwrap());
    assert!(reg
        .acquire_slot(&lease, &fire)
        .await
        .expect("acquire")
        .is_taken());
    let slot = keys.slot("job:x");
    assert_eq!(slot, format!("{ns}:slot:job%3Ax"));
    let (held_lease, node_key, record): (String, String, Vec<u8>) = redis::cmd("HMGET")
        .arg(&slot)
        .arg("lease")
        .arg("nkey")
        .arg("rec")
        .query_async(&mut raw)
        .await
        .expect("hmget");
    assert_eq!(held_lease, lease.id);
    assert_eq!(node_key, keys.node("n:1"));
    assert!(dcron_core::SlotRecord::decode(&slot, &record)
        .expect("a slot record")
        .is(&lease, &fire));
    // No TTL of its own: the slot lives as long as the lease on the node key.
    assert_eq!(pttl(&mut raw, &slot).await, -1);

    // Damaged slots answer Corrupt to a caller that would otherwise take or see them.
    let other = FireKey::new("job:x", Utc.timestamp_opt(1_700_000_060, 0).unwrap());
    let _: () = raw
        .hset(&slot, "rec", "not json")
        .await
        .expect("damage the record");
    assert!(matches!(
        reg.acquire_slot(&lease, &other).await,
        Err(Error::Corrupt { ref key, .. }) if *key == slot
    ));
    let _: () = raw.hdel(&slot, "nkey").await.expect("drop a field");
    assert!(matches!(
        reg.acquire_slot(&lease, &other).await,
        Err(Error::Corrupt { ref key, .. }) if *key == slot
    ));
    let _: () = raw.del(&slot).await.expect("del");
    let _: () = raw.set(&slot, "x").await.expect("set a string");
    assert!(matches!(
        reg.acquire_slot(&lease, &other).await,
        Err(Error::Corrupt { ref key, .. }) if *key == slot
    ));
    // A release never touches what it does not hold.
    reg.release_slot(&lease, &other).await.expect("release");
    let left: String = raw.get(&slot).await.expect("get");
    assert_eq!(left, "x");
    // cleanup_all frees it.
    reg.cleanup_all().await.expect("cleanup");
    let exists: bool = raw.exists(&slot).await.expect("exists");
    assert!(!exists);
    assert!(reg
        .acquire_slot(&lease, &other)
        .await
        .expect("acquire")
        .is_taken());
    let _: () = raw.del(&slot).await.expect("del");
    reg.unregister(&lease).await.expect("unregister");
}
