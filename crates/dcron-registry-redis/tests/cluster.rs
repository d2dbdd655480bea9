//! Several `Dcron` nodes on the shared Redis server: every fire of static and dynamic tasks runs
//! exactly once while a node leaves and another crashes; a deleted task stops firing everywhere.
//! Unreachable server → skipped with the reason printed (fails under `DCRON_TEST_REQUIRE=1`).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dcron_core::{Dcron, FireKey, MisfirePolicy, Schedule, SecondsField, TaskMeta};
use dcron_registry_redis::RedisRegistry;
use dcron_testkit::ledger::{check, Ledger};
use dcron_testkit::wait_until;

const EVERY_SECOND: &str = "* * * * * *";
const DYNAMIC: [&str; 3] = ["dyn:a", "dyn b", "dyn-doomed"];
const ALL: [&str; 4] = ["static", "dyn:a", "dyn b", "dyn-doomed"];
const LIVE: [&str; 3] = ["static", "dyn:a", "dyn b"];

fn occurrences(from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    Schedule::parse(EVERY_SECOND, None, SecondsField::Optional)
        .map(|s| s.occurrences_in(from, to, 10_000))
        .unwrap_or_default()
}

async fn node(name: &str, namespace: &str, ledger: &Ledger) -> dcron_core::Result<Dcron> {
    let registry = common::open(&RedisRegistry::env_url(), namespace).await?;
    let record = |ledger: Ledger| {
        move |ctx: dcron_core::FireContext| {
            let ledger = ledger.clone();
            async move {
                ledger.record(
                    FireKey::new(ctx.name(), ctx.scheduled),
                    ctx.node_id.to_string(),
                    ctx.token,
                    Utc::now(),
                );
                Ok(())
            }
        }
    };
    let node = Dcron::builder(registry)
        .node_name(name)
        .ttl(Duration::from_secs(2))
        .poll_interval(Duration::from_millis(500))
        .misfire_policy(MisfirePolicy::FireAll { max: 100 })
        .misfire_window(Duration::from_secs(30))
        .max_clock_skew(Duration::from_millis(200))
        .grace_period(Duration::from_secs(5))
        .task_run_fn(record(ledger.clone()))
        .build()?;
    node.add_func("static", EVERY_SECOND, record(ledger.clone()))
        .await?;
    node.start().await?;
    Ok(node)
}

async fn wait_working(nodes: &[&Dcron]) {
    if let Err(e) = wait_until("nodes working", Duration::from_secs(15), || async {
        nodes.iter().all(|n| n.state() == "working")
    })
    .await
    {
        panic!(
            "{e}: {:?}",
            nodes.iter().map(|n| n.state()).collect::<Vec<_>>()
        );
    }
}

/// Whether every task of `tasks` ran a fire scheduled after `at`.
fn all_ran_after(ledger: &Ledger, tasks: &[&str], at: DateTime<Utc>) -> bool {
    tasks
        .iter()
        .all(|t| ledger.for_task(t).iter().any(|e| e.fire.instant > at))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_fire_runs_once_through_leave_and_crash() {
    let url = RedisRegistry::env_url();
    let namespace = format!("dcron-cluster-{}", uuid::Uuid::new_v4().simple());
    if let Err(e) = common::open(&url, &namespace).await {
        common::skip(&format!("redis at {url} unreachable: {e}"));
        return;
    }
    let ledger = Ledger::new();
    let n1 = node("n1", &namespace, &ledger).await.expect("n1");
    let n2 = node("n2", &namespace, &ledger).await.expect("n2");
    let n3 = node("n3", &namespace, &ledger).await.expect("n3");
    wait_working(&[&n1, &n2, &n3]).await;
    let start = Utc::now();
    for name in DYNAMIC {
        n1.add_task_meta(TaskMeta::new(name, EVERY_SECOND))
            .await
            .expect("add dynamic");
    }
    let added = Utc::now();

    wait_until(
        "every task runs on the three nodes",
        Duration::from_secs(15),
        || async { all_ran_after(&ledger, &ALL, added + chrono::Duration::seconds(1)) },
    )
    .await
    .expect("fires before the leave");
    n2.mark_task_deleted("dyn-doomed").await.expect("delete");
    let deleted = Utc::now();
    n3.stop().await.expect("n3 leaves");
    let left = Utc::now();
    wait_until(
        "every live task runs after n3 left",
        Duration::from_secs(15),
        || async { all_ran_after(&ledger, &LIVE, left + chrono::Duration::seconds(1)) },
    )
    .await
    .expect("fires after the leave");
    drop(n2); // a crash: no stop, the lease expires by itself
    let crashed = Utc::now();
    // n2's tasks move once its 2 s lease ends; fires after that can only be n1's.
    wait_until(
        "n1 runs every live task after n2's lease ended",
        Duration::from_secs(20),
        || async {
            let owned = n1.my_running_tasks();
            LIVE.iter().all(|t| owned.iter().any(|o| o == t))
                && all_ran_after(&ledger, &LIVE, crashed + chrono::Duration::seconds(4))
        },
    )
    .await
    .expect("takeover after the crash");
    let end = Utc::now() - chrono::Duration::milliseconds(300);
    n1.stop().await.expect("n1 stops");

    let mut expected: BTreeSet<FireKey> = occurrences(start, end)
        .into_iter()
        .map(|t| FireKey::new("static", t))
        .collect();
    for name in DYNAMIC {
        let to = if name == "dyn-doomed" {
            deleted - chrono::Duration::seconds(1)
        } else {
            end
        };
        expected.extend(
            occurrences(added, to)
                .into_iter()
                .map(|t| FireKey::new(name, t)),
        );
    }
    let report = check(&ledger, &expected);
    assert!(
        report.duplicates.is_empty(),
        "duplicates: {:?}",
        report.duplicates
    );
    assert!(report.missed.is_empty(), "missed: {:?}", report.missed);
    let after_delete = ledger
        .executions()
        .iter()
        .filter(|e| e.fire.task == "dyn-doomed" && e.fire.instant > deleted)
        .count();
    assert_eq!(after_delete, 0, "a deleted task fired after its deletion");
    let admin = common::open(&url, &namespace).await.expect("open");
    dcron_core::Registry::cleanup_all(&admin)
        .await
        .expect("cleanup");
}
