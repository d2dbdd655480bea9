//! `Dcron` nodes on the Consul test double: every fire runs once, and a node's departure hands
//! its tasks to the survivor.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use dcron_core::Dcron;
use dcron_testkit::wait_until;
use support::double::ConsulDouble;

type Runs = Arc<Mutex<BTreeMap<(String, DateTime<Utc>), Vec<String>>>>;

async fn start_node(d: &ConsulDouble, name: &'static str, runs: &Runs) -> Dcron {
    let node = Dcron::builder(support::registry(d, "cluster"))
        .node_name(name)
        .ttl(Duration::from_secs(2))
        .build()
        .expect("build");
    for task in ["a", "b", "c"] {
        let runs = runs.clone();
        node.add_func(task, "* * * * * *", move |ctx| {
            let runs = runs.clone();
            async move {
                if let Ok(mut r) = runs.lock() {
                    r.entry((ctx.name().to_string(), ctx.scheduled))
                        .or_default()
                        .push(name.to_string());
                }
                Ok(())
            }
        })
        .await
        .expect("add");
    }
    node.start().await.expect("start");
    node
}

fn snapshot(runs: &Runs) -> BTreeMap<(String, DateTime<Utc>), Vec<String>> {
    runs.lock().map(|r| r.clone()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_fire_runs_once_and_the_survivor_takes_over() {
    let d = support::fast_double().await;
    let runs: Runs = Arc::default();
    let alpha = start_node(&d, "alpha", &runs).await;
    let beta = start_node(&d, "beta", &runs).await;

    // Both nodes working: fires of every task keep coming.
    if let Err(e) = wait_until(
        "three fires of every task",
        Duration::from_secs(20),
        || async {
            let r = snapshot(&runs);
            ["a", "b", "c"]
                .iter()
                .all(|t| r.keys().filter(|(task, _)| task == t).count() >= 3)
        },
    )
    .await
    {
        panic!("{e}; fires ran: {:?}", snapshot(&runs));
    }

    // alpha leaves: beta runs every task from then on.
    alpha.stop().await.expect("stop");
    let left_at = Utc::now();
    if let Err(e) = wait_until(
        "beta runs every task after alpha left",
        Duration::from_secs(20),
        || async {
            let r = snapshot(&runs);
            ["a", "b", "c"].iter().all(|t| {
                r.iter()
                    .filter(|((task, at), _)| task == t && *at > left_at)
                    .count()
                    >= 2
            })
        },
    )
    .await
    {
        panic!("{e}; beta took over: {:?}", snapshot(&runs));
    }
    beta.stop().await.expect("stop");

    let r = snapshot(&runs);
    let twice: Vec<_> = r.iter().filter(|(_, who)| who.len() > 1).collect();
    assert!(twice.is_empty(), "fires ran twice: {twice:?}");
    assert!(r
        .iter()
        .filter(|((_, at), _)| *at > left_at + chrono::Duration::seconds(1))
        .all(|(_, who)| who == &["beta".to_string()]));
}
