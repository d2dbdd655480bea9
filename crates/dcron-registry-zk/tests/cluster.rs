//! `Dcron` nodes on ZooKeeper while one of them loses every session: it re-registers, its
//! watches come back, and no fire runs twice or is missed.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::Utc;
use common::{shared_connect, unique, Proxy};
use dcron_core::{Dcron, FireKey, MisfirePolicy, Schedule, SecondsField};
use dcron_registry_zk::{ZkRegistry, ZkRegistryConfig};
use dcron_testkit::{check, wait_until, Ledger};

const EVERY_SECOND: &str = "* * * * * *";
const TASKS: [&str; 4] = ["alpha", "beta", "gamma", "delta"];

/// Whether every task has run a fire scheduled at or after `at`.
fn every_task_ran_after(ledger: &Ledger, at: chrono::DateTime<Utc>) -> bool {
    TASKS
        .iter()
        .all(|t| ledger.for_task(t).iter().any(|e| e.fire.instant >= at))
}

async fn node(config: ZkRegistryConfig, name: &str, ledger: &Ledger) -> Dcron {
    let registry = ZkRegistry::connect(config).await.expect("connect");
    let node = Dcron::builder(registry)
        .node_name(name)
        .ttl(Duration::from_secs(2))
        .poll_interval(Duration::from_millis(300))
        .misfire_policy(MisfirePolicy::FireAll { max: 1000 })
        .misfire_window(Duration::from_secs(60))
        .max_clock_skew(Duration::from_millis(200))
        .grace_period(Duration::from_secs(5))
        .build()
        .expect("build");
    for task in TASKS {
        let ledger = ledger.clone();
        node.add_func(task, EVERY_SECOND, move |ctx| {
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
        })
        .await
        .expect("add");
    }
    node.start().await.expect("start");
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_sessions_expire_comes_back_and_no_fire_is_lost_or_doubled() {
    let ns = unique("cluster-expiry");
    if common::shared_registry(&ns).await.is_none() {
        return;
    }
    let root = common::root_of(&ns);
    let proxy = Proxy::start(&shared_connect()).await;
    let ledger = Ledger::new();
    let cut_off = node(
        ZkRegistryConfig::new(proxy.connect())
            .namespace(root.clone())
            .session_timeout(Duration::from_secs(2))
            .operation_timeout(Duration::from_secs(1)),
        "cut-off",
        &ledger,
    )
    .await;
    let steady = node(
        ZkRegistryConfig::new(shared_connect()).namespace(root.clone()),
        "steady",
        &ledger,
    )
    .await;
    let working = |n: &Dcron| n.state() == "working";
    wait_until("both nodes working", Duration::from_secs(20), || async {
        working(&cut_off) && working(&steady)
    })
    .await
    .expect("cluster up");
    let from = Utc::now() + chrono::Duration::seconds(1);
    wait_until(
        "every task run once after `from`, before the cut",
        Duration::from_secs(10),
        || async { every_task_ran_after(&ledger, from) },
    )
    .await
    .expect("fires before the cut");

    // Every session of the cut-off node expires on the server.
    proxy.set_down(true);
    wait_until(
        "the steady node takes every task over",
        Duration::from_secs(15),
        || async { steady.my_running_tasks().len() == TASKS.len() },
    )
    .await
    .expect("takeover");
    let alone = Utc::now();
    wait_until(
        "every task run by the steady node alone",
        Duration::from_secs(10),
        || async { every_task_ran_after(&ledger, alone) },
    )
    .await
    .expect("fires while cut off");
    proxy.set_down(false);

    // The cut-off node registers again (a new session, a new epoch) and gets tasks back.
    if let Err(e) = wait_until(
        "the cut-off node is back and owns tasks again",
        Duration::from_secs(30),
        || async { working(&cut_off) && !cut_off.my_running_tasks().is_empty() },
    )
    .await
    {
        panic!("{e}: state {:?}", cut_off.state());
    }
    // Both nodes run fires again, then the window closes 2 s before the stop (fires still in
    // flight at the stop are not counted).
    let back = Utc::now() + chrono::Duration::seconds(2);
    wait_until(
        "every task run after the comeback",
        Duration::from_secs(10),
        || async { every_task_ran_after(&ledger, back) },
    )
    .await
    .expect("fires after the comeback");
    let to = Utc::now() - chrono::Duration::seconds(2);
    cut_off.stop().await.expect("stop");
    steady.stop().await.expect("stop");

    let schedule = Schedule::parse(EVERY_SECOND, None, SecondsField::Optional).expect("schedule");
    let expected: BTreeSet<FireKey> = schedule
        .occurrences_in(from, to, 100_000)
        .into_iter()
        .flat_map(|i| TASKS.iter().map(move |t| FireKey::new(*t, i)))
        .collect();
    let report = check(&ledger, &expected);
    assert!(
        report.duplicates.is_empty() && report.missed.is_empty(),
        "{} expected fires: {report}",
        expected.len()
    );
    let cleanup = ZkRegistry::connect(ZkRegistryConfig::new(shared_connect()).namespace(root))
        .await
        .expect("connect");
    dcron_core::Registry::cleanup_all(&cleanup)
        .await
        .expect("cleanup");
}
