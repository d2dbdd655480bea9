//! Redis Cluster specifics beyond the conformance suite (`tests/redis_cluster.rs`): a claim
//! batch over many tasks is split per bucket (one hash slot each), reaches every master, and
//! stays one batch to the caller (one outcome per fire, distinct tokens, lives and claims
//! readable). Needs `DCRON_TEST_REDIS_CLUSTER_URLS` (`scripts/services/redis-cluster.sh`);
//! skipped with a message without it, failing under `DCRON_TEST_REQUIRE=1`.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use dcron_core::{ClaimOutcome, Claimant, FireKey, Registry};
use dcron_registry_redis::{RedisKeys, RedisRegistry, TEST_CLUSTER_URLS_ENV};

fn skip(reason: &str) {
    assert!(
        !dcron_testkit::servers_required(),
        "{reason} and {}=1",
        dcron_testkit::REQUIRE_ENV
    );
    eprintln!("skipped: {reason}");
}

async fn open(tag: &str) -> Option<RedisRegistry> {
    let ns = format!(
        "dcron-test-cluster-{tag}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let Some(reg) = RedisRegistry::cluster_from_env(&ns) else {
        skip(&format!("{TEST_CLUSTER_URLS_ENV} is not set"));
        return None;
    };
    let reg = reg.expect("a valid cluster configuration");
    if let Err(e) = reg.ping().await {
        skip(&format!("the cluster is unreachable: {e}"));
        return None;
    }
    Some(reg)
}

fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_900_000_000 + secs, 0).unwrap()
}

/// How many keys matching `pattern` each seed node holds (each seed is one master here).
async fn keys_per_node(pattern: &str) -> Vec<usize> {
    let urls = std::env::var(TEST_CLUSTER_URLS_ENV).expect("set");
    let mut counts = Vec::new();
    for url in urls.split(',').filter(|u| !u.is_empty()) {
        let client = redis::Client::open(url).expect("url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect to a master");
        let mut cursor: u64 = 0;
        let mut n = 0;
        loop {
            let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .expect("scan");
            n += batch.len();
            if next == 0 {
                break;
            }
            cursor = next;
        }
        counts.push(n);
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_many_tasks_is_split_per_slot_and_reaches_every_master() {
    let Some(reg) = open("batch").await else {
        return;
    };
    let keys = RedisKeys::cluster(reg.namespace());
    // 600 tasks over the buckets, 2 fires each: 1,200 fires in one call.
    let names: Vec<(String, DateTime<Utc>)> =
        (0..600).map(|i| (format!("spread-{i}"), at(0))).collect();
    let buckets: BTreeSet<u16> = names.iter().map(|(n, _)| keys.bucket(n)).collect();
    assert!(
        buckets.len() > 100,
        "the names spread over {} buckets",
        buckets.len()
    );
    let lives = reg.ensure_lives(&names).await.expect("lives");
    assert_eq!(lives.len(), names.len());
    let generations: BTreeSet<u64> = lives.iter().map(|l| l.generation).collect();
    assert_eq!(generations.len(), names.len(), "one generation per name");
    let fires: Vec<FireKey> = (0..1200)
        .map(|i| {
            FireKey::new(
                names[i % 600].0.clone(),
                at(60 + i64::try_from(i / 600).unwrap()),
            )
        })
        .collect();
    let batch: Vec<dcron_core::ClaimRequest> = fires
        .iter()
        .map(|f| {
            let life = &lives[names.iter().position(|(n, _)| *n == f.task).unwrap()];
            dcron_core::ClaimRequest::new(
                f.clone(),
                life.generation,
                f.instant + chrono::Duration::days(1),
                Duration::from_secs(600),
            )
        })
        .collect();
    let out = reg
        .claim(&Claimant::new("a", 1), &batch)
        .await
        .expect("claim");
    assert_eq!(out.len(), batch.len());
    let tokens: BTreeSet<u64> = out.iter().map(|o| o.token().expect("won")).collect();
    assert_eq!(tokens.len(), batch.len(), "distinct tokens across buckets");
    let again = reg
        .claim(&Claimant::new("b", 1), &batch)
        .await
        .expect("claim");
    assert!(again.iter().all(|o| *o
        == ClaimOutcome::Lost {
            holder: Some("a".into())
        }));
    // The claims live on every master, not on the one slot of the namespace.
    let per_node = keys_per_node(&format!("{}claim:*", keys.prefix())).await;
    assert_eq!(per_node.iter().sum::<usize>(), 1200, "{per_node:?}");
    assert!(
        per_node.iter().all(|n| *n > 0),
        "every master holds claims: {per_node:?}"
    );
    let listed = reg.list_claims("spread-7").await.expect("list");
    assert_eq!(listed.items.len(), 2);
    let first = listed
        .items
        .iter()
        .find(|c| c.fire == fires[7])
        .expect("the first fire of spread-7 is listed");
    assert_eq!(first.token, out[7].token().expect("won"));
    reg.cleanup_all().await.expect("cleanup");
    assert!(reg.list_tasks().await.expect("list").items.is_empty());
}
