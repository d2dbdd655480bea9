//! Several `Dcron` nodes on the shared etcd: every fire of static and dynamic tasks runs exactly
//! once while a node crashes and its tasks move to the others.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use dcron_core::{Dcron, FireKey, MisfirePolicy, TaskMeta};
use dcron_registry_etcd::EtcdRegistryConfig;
use dcron_testkit::ledger::{check, Ledger};

use common::{fresh_namespace, skip, OwnedEtcd};
use dcron_testkit::wait_until;

const STATIC: [&str; 2] = ["static-a", "static-b"];
const DYNAMIC: [&str; 2] = ["dynamic-a", "dynamic-b"];
const ALL: [&str; 4] = ["static-a", "static-b", "dynamic-a", "dynamic-b"];

/// Every whole second in `[from, to]`: the fires of `* * * * * *`.
fn every_second(task: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> BTreeSet<FireKey> {
    let mut at = from
        .duration_trunc(TimeDelta::seconds(1))
        .expect("truncate");
    if at < from {
        at += TimeDelta::seconds(1);
    }
    let mut out = BTreeSet::new();
    while at <= to {
        out.insert(FireKey::new(task, at));
        at += TimeDelta::seconds(1);
    }
    out
}

/// Whether every task of `tasks` ran a fire scheduled after `at`.
fn all_ran_after(ledger: &Ledger, tasks: &[&str], at: DateTime<Utc>) -> bool {
    tasks
        .iter()
        .all(|t| ledger.for_task(t).iter().any(|e| e.fire.instant > at))
}

async fn start_node(name: &str, config: EtcdRegistryConfig, ledger: &Ledger) -> Option<Dcron> {
    let registry = match config.connect().await {
        Ok(reg) => reg,
        Err(e @ dcron_core::Error::Unavailable { .. }) => {
            return skip("cluster", format!("etcd unreachable: {e}"))
        }
        Err(e) => panic!("connect: {e}"),
    };
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
        .task_run_fn(record(ledger.clone()))
        .build()
        .expect("build");
    for task in STATIC {
        node.add_func(task, "* * * * * *", record(ledger.clone()))
            .await
            .expect("add_func");
    }
    node.start().await.expect("start");
    Some(node)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_fire_runs_once_while_a_node_crashes() {
    let namespace = fresh_namespace("cluster");
    let ledger = Ledger::new();
    let mut nodes = Vec::new();
    for name in ["node-1", "node-2", "node-3"] {
        let config = EtcdRegistryConfig::from_env().namespace(&namespace);
        let Some(node) = start_node(name, config, &ledger).await else {
            return;
        };
        nodes.push(node);
    }
    wait_until("nodes working", Duration::from_secs(15), || async {
        nodes.iter().all(|n| n.state() == "working")
    })
    .await
    .expect("cluster up");
    let start = Utc::now();
    for task in DYNAMIC {
        nodes[0]
            .add_task_meta(TaskMeta::new(task, "* * * * * *"))
            .await
            .expect("add_task_meta");
    }
    let dynamic_from = Utc::now();

    wait_until(
        "every task runs on the three nodes",
        Duration::from_secs(15),
        || async { all_ran_after(&ledger, &ALL, dynamic_from + TimeDelta::seconds(1)) },
    )
    .await
    .expect("fires before the crash");
    let crashed = nodes.remove(1);
    let crashed_id = crashed.node_id().to_string();
    drop(crashed); // a crash: no stop, no unregister; its lease expires on the server
    let crashed_at = Utc::now();
    // The crashed node's tasks move once its 2 s lease ends; later fires are the survivors'.
    wait_until(
        "the survivors run every task after the crashed node's lease ended",
        Duration::from_secs(20),
        || async {
            let owned: Vec<String> = nodes.iter().flat_map(|n| n.my_running_tasks()).collect();
            ALL.iter().all(|t| owned.iter().any(|o| o == t))
                && all_ran_after(&ledger, &ALL, crashed_at + TimeDelta::seconds(4))
        },
    )
    .await
    .expect("takeover after the crash");

    // Fires in the last second may still be in flight when the nodes stop (a loaded machine).
    let end = Utc::now() - TimeDelta::seconds(1);
    for node in &nodes {
        node.stop().await.expect("stop");
    }
    let cleanup = EtcdRegistryConfig::from_env()
        .namespace(&namespace)
        .connect()
        .await
        .expect("connect");
    dcron_core::Registry::cleanup_all(&cleanup)
        .await
        .expect("cleanup");

    let mut expected = BTreeSet::new();
    for task in STATIC {
        expected.extend(every_second(task, start, end));
    }
    for task in DYNAMIC {
        // The first second after the add may or may not be seen by the owner in time; from the
        // next one on every fire is due.
        expected.extend(every_second(
            task,
            dynamic_from + TimeDelta::seconds(1),
            end,
        ));
    }
    let report = check(&ledger, &expected);
    assert!(
        report.duplicates.is_empty(),
        "fires run more than once: {:?}",
        report.duplicates
    );
    assert!(
        report.missed.is_empty(),
        "fires missed: {:?} (crashed node {crashed_id})",
        report.missed
    );
    println!(
        "{} fires checked, {} executions, no duplicate, none missed",
        expected.len(),
        ledger.len()
    );
}

/// The server crashes and restarts under two running nodes: they come back by themselves, and
/// every fire (including those due during the outage, caught up) runs exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_come_back_after_a_server_restart_without_duplicates() {
    let Some(server) = OwnedEtcd::start("cluster_restart").await else {
        return;
    };
    let namespace = fresh_namespace("cluster_restart");
    let ledger = Ledger::new();
    let mut nodes = Vec::new();
    for name in ["node-1", "node-2"] {
        let Some(node) = start_node(name, server.config(&namespace), &ledger).await else {
            return;
        };
        nodes.push(node);
    }
    let working = || async { nodes.iter().all(|n| n.state() == "working") };
    wait_until("nodes working", Duration::from_secs(15), working)
        .await
        .expect("cluster up");
    let start = Utc::now();
    wait_until(
        "every task runs before the restart",
        Duration::from_secs(15),
        || async { all_ran_after(&ledger, &STATIC, start + TimeDelta::seconds(1)) },
    )
    .await
    .expect("fires before the restart");
    server.restart();
    // Both nodes work again, and fires run after the restart.
    let restarted = Utc::now();
    wait_until(
        "both nodes working again, every task run after the restart",
        Duration::from_secs(60),
        || async {
            nodes.iter().all(|n| n.state() == "working")
                && all_ran_after(&ledger, &STATIC, restarted + TimeDelta::seconds(2))
        },
    )
    .await
    .expect("the nodes come back after the restart");
    let end = Utc::now() - TimeDelta::seconds(1);
    for node in &nodes {
        node.stop().await.expect("stop");
    }
    let mut expected = BTreeSet::new();
    for task in STATIC {
        expected.extend(every_second(task, start, end));
    }
    let report = check(&ledger, &expected);
    assert!(
        report.duplicates.is_empty(),
        "fires run more than once: {:?}",
        report.duplicates
    );
    assert!(
        report.missed.is_empty(),
        "fires missed: {:?}",
        report.missed
    );
    println!(
        "{} fires across the restart, no duplicate, none missed",
        expected.len()
    );
}
