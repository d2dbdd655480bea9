//! `failover`: three nodes (on memory, Redis, and with the `etcd` / `zk` features etcd or
//! ZooKeeper) share tasks that fire every second; the owner of task 0 dies
//! abruptly (its runtime is shut down: no stop, no unregister, no more keep-alives), and the
//! run measures the time from its death to the first fire of each of its tasks by another
//! node, and counts missed and duplicate fires over the whole run from a ledger of executions.
//!
//! Each node runs on its own tokio runtime (one worker thread), as it would in its own process,
//! so killing one stops its driver, its lease renewals and its handlers at once. The nodes use
//! the misfire policy `FireAll` (every occurrence missed in the 60 s window is caught up), so the
//! expected number of missed fires is 0. The takeover time is bounded below by the lease TTL
//! (`--ttl-ms`, default 2 s): the registry must first expire the dead node's lease.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dcron_core::{Dcron, MemoryRegistry, MisfirePolicy, Registry, SecondsField};
use tokio::runtime::Runtime;

use crate::cli::{Backend, FailoverArgs};
use crate::cluster::{connect_redis, redis_url, wait_cluster};
use crate::exactly::{ExactlyOnce, Expected, Plan};
use crate::latency::{task_name, EVERY_SECOND};
use crate::recorder::now_us;
use crate::stats::Distribution;
use crate::summary::{ms, Summary};
use crate::{err, Result};

/// Nodes in the cluster.
const NODES: usize = 3;
/// The longest the takeover may take beyond the TTL before the run gives up.
const TAKEOVER_LIMIT: Duration = Duration::from_secs(60);

/// One executed fire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Exec {
    task: usize,
    scheduled_ms: i64,
    node: usize,
    started_us: i64,
    catch_up: bool,
}

type Ledger = Arc<Mutex<Vec<Exec>>>;

struct Member {
    rt: Option<Runtime>,
    node: Option<Dcron>,
}

/// Runs `failover` and prints its summary.
///
/// # Errors
/// When the registry is unreachable, the cluster does not form, or the dead node's tasks are
/// not taken over within the TTL plus a minute.
pub fn run(args: &FailoverArgs, out: &mut dyn Write) -> Result<()> {
    let (summary, counts) = failover(args)?;
    writeln!(out, "{summary}")?;
    counts.verdict("failover")
}

fn node_runtime(k: usize) -> Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(format!("failover-node-{k}"))
        .enable_all()
        .build()
        .map_err(|e| err(format!("cannot start a runtime: {e}")))
}

fn sleep_until_wall_ms(ms: i64) {
    let delta = ms * 1000 - now_us();
    if delta > 0 {
        std::thread::sleep(Duration::from_micros(delta as u64));
    }
}

fn failover(args: &FailoverArgs) -> Result<(Summary, ExactlyOnce)> {
    let admin_rt = crate::runtime()?;
    let memory = MemoryRegistry::new();
    let url = redis_url(args.url.as_deref());
    let namespace = format!("dcron-bench-failover-{}", uuid::Uuid::new_v4().simple());
    let connect = |rt: &Runtime| -> Result<Arc<dyn Registry>> {
        match args.backend {
            Backend::Memory => Ok(Arc::new(memory.clone())),
            Backend::Redis => rt.block_on(connect_redis(&url, &namespace)),
            Backend::Etcd | Backend::Zk => {
                rt.block_on(connect_other(args.backend, args.url.as_deref(), &namespace))
            }
        }
    };
    let admin = connect(&admin_rt)?;
    let ledger: Ledger = Arc::new(Mutex::new(Vec::new()));
    let since_ms = now_us().div_euclid(1000);
    let mut members = Vec::new();
    for k in 0..NODES {
        let rt = node_runtime(k)?;
        let registry = connect(&rt)?;
        let node = Dcron::builder(registry)
            .seconds(SecondsField::Required)
            .node_name(format!("failover-{k}"))
            .ttl(args.ttl)
            .misfire_policy(MisfirePolicy::FireAll { max: 1_000 })
            .misfire_window(Duration::from_secs(60))
            .build()?;
        rt.block_on(async {
            for i in 0..args.tasks {
                let ledger = ledger.clone();
                node.add_func(&task_name(i), EVERY_SECOND, move |ctx| {
                    let ledger = ledger.clone();
                    async move {
                        let exec = Exec {
                            task: i,
                            scheduled_ms: ctx.scheduled.timestamp_millis(),
                            node: k,
                            started_us: now_us(),
                            catch_up: ctx.catch_up,
                        };
                        ledger.lock().unwrap_or_else(|p| p.into_inner()).push(exec);
                        Ok(())
                    }
                })
                .await?;
            }
            node.start().await
        })?;
        members.push(Member {
            rt: Some(rt),
            node: Some(node),
        });
    }
    let result = measure(args, since_ms, &admin_rt, &admin, &mut members, &ledger);
    // Stop the survivors and clean up, whatever the outcome.
    for m in &mut members {
        if let (Some(rt), Some(node)) = (m.rt.as_ref(), m.node.take()) {
            let stopped = rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(30), node.stop()).await
            });
            if stopped.is_err() {
                eprintln!("dcron-bench: a node did not stop within 30 s");
            }
        }
    }
    if args.backend != Backend::Memory {
        if let Err(e) = admin_rt.block_on(admin.cleanup_all()) {
            eprintln!("dcron-bench: could not clean the bench namespace: {e}");
        }
    }
    result
}

/// Connects to etcd or ZooKeeper (when built with the feature), checked to answer.
pub(crate) async fn connect_other(
    backend: Backend,
    address: Option<&str>,
    namespace: &str,
) -> Result<Arc<dyn Registry>> {
    let registry = match backend {
        Backend::Etcd => connect_etcd(address, namespace).await?,
        Backend::Zk => connect_zk(address, namespace).await?,
        other => return Err(err(format!("{} is not a server backend", other.name()))),
    };
    match tokio::time::timeout(Duration::from_secs(10), registry.list_nodes()).await {
        Ok(Ok(_)) => Ok(registry),
        Ok(Err(e)) => Err(err(format!("{} does not answer: {e}", backend.name()))),
        Err(_) => Err(err(format!(
            "{} does not answer within 10 s",
            backend.name()
        ))),
    }
}

#[cfg(not(all(feature = "etcd", feature = "zk")))]
fn not_built(backend: &str) -> crate::BenchError {
    err(format!(
        "this build has no {backend} backend: build with `--features {backend}`"
    ))
}

#[cfg(feature = "etcd")]
async fn connect_etcd(address: Option<&str>, namespace: &str) -> Result<Arc<dyn Registry>> {
    use dcron_registry_etcd::EtcdRegistryConfig;
    let config = match address {
        Some(a) => EtcdRegistryConfig::new([a]),
        None => EtcdRegistryConfig::from_env(),
    };
    match tokio::time::timeout(
        Duration::from_secs(10),
        config.namespace(namespace).connect(),
    )
    .await
    {
        Ok(Ok(r)) => Ok(Arc::new(r)),
        Ok(Err(e)) => Err(err(format!("cannot reach etcd: {e}"))),
        Err(_) => Err(err("cannot reach etcd: no answer within 10 s")),
    }
}

#[cfg(not(feature = "etcd"))]
async fn connect_etcd(_address: Option<&str>, _namespace: &str) -> Result<Arc<dyn Registry>> {
    Err(not_built("etcd"))
}

#[cfg(feature = "zk")]
async fn connect_zk(address: Option<&str>, namespace: &str) -> Result<Arc<dyn Registry>> {
    use dcron_registry_zk::{ZkRegistry, ZkRegistryConfig};
    let config = match address {
        Some(a) => ZkRegistryConfig::new(a),
        None => ZkRegistryConfig::from_env(),
    };
    let connecting = ZkRegistry::connect(config.namespace(format!("/{namespace}")));
    match tokio::time::timeout(Duration::from_secs(10), connecting).await {
        Ok(Ok(r)) => Ok(Arc::new(r)),
        Ok(Err(e)) => Err(err(format!("cannot reach ZooKeeper: {e}"))),
        Err(_) => Err(err("cannot reach ZooKeeper: no answer within 10 s")),
    }
}

#[cfg(not(feature = "zk"))]
async fn connect_zk(_address: Option<&str>, _namespace: &str) -> Result<Arc<dyn Registry>> {
    Err(not_built("zk"))
}

fn measure(
    args: &FailoverArgs,
    since_ms: i64,
    admin_rt: &Runtime,
    admin: &Arc<dyn Registry>,
    members: &mut [Member],
    ledger: &Ledger,
) -> Result<(Summary, ExactlyOnce)> {
    let refs: Vec<&Dcron> = members.iter().filter_map(|m| m.node.as_ref()).collect();
    admin_rt.block_on(wait_cluster(
        admin,
        &refs,
        args.tasks,
        Duration::from_secs(120),
    ))?;

    // Count fires from a whole second after the cluster settled; kill in the middle of a
    // second, two seconds later, when no handler of the victim is running.
    let w_start = (now_us() / 1_000_000 + 2) * 1000;
    sleep_until_wall_ms(w_start + 2_500);
    let probe = task_name(0);
    let victim = members
        .iter()
        .position(|m| {
            m.node
                .as_ref()
                .is_some_and(|n| n.my_running_tasks().contains(&probe))
        })
        .ok_or_else(|| err("no node owns task 0"))?;
    let index: HashMap<String, usize> = (0..args.tasks).map(|i| (task_name(i), i)).collect();
    let victim_tasks: Vec<usize> = members[victim]
        .node
        .as_ref()
        .map(|n| n.my_running_tasks())
        .unwrap_or_default()
        .iter()
        .filter_map(|name| index.get(name).copied())
        .collect();

    let kill_us = now_us();
    {
        let m = &mut members[victim];
        if let Some(rt) = m.rt.take() {
            let guard = rt.enter();
            // The last handle dropped: the driver ends like a crash, without unregistering.
            drop(m.node.take());
            drop(guard);
            rt.shutdown_background();
        }
    }

    // Wait for every task of the victim to fire on another node.
    let limit_us = (args.ttl + TAKEOVER_LIMIT).as_micros() as i64;
    let takeovers: HashMap<usize, i64> = loop {
        let execs = ledger.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut first: HashMap<usize, i64> = HashMap::new();
        for e in execs
            .iter()
            .filter(|e| e.node != victim && e.started_us > kill_us)
        {
            let t = first.entry(e.task).or_insert(e.started_us);
            *t = (*t).min(e.started_us);
        }
        first.retain(|task, _| victim_tasks.contains(task));
        if first.len() == victim_tasks.len() {
            break first;
        }
        if now_us() - kill_us > limit_us {
            return Err(err(format!(
                "only {} of the dead node's {} tasks fired elsewhere within {:?}",
                first.len(),
                victim_tasks.len(),
                args.ttl + TAKEOVER_LIMIT
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let delays = Distribution::new(takeovers.values().map(|t| t - kill_us).collect());
    let last_takeover_us = kill_us + delays.max().unwrap_or(0);

    // Keep counting three more seconds after the last takeover, then let late fires finish.
    let w_end = (last_takeover_us / 1_000_000 + 4) * 1000;
    sleep_until_wall_ms(w_end + 2_000);

    let execs = ledger.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let counts = judge(&execs, args.tasks, since_ms, (w_start, w_end));
    let catch_ups = execs
        .iter()
        .filter(|e| e.catch_up && e.node != victim && e.started_us > kill_us)
        .count();
    let summary = Summary::new("failover")
        .field("backend", args.backend.name())
        .field("nodes", NODES)
        .field("tasks", args.tasks)
        .field("ttl_ms", args.ttl.as_millis())
        .field("policy", "FireAll")
        .field("victim_tasks", victim_tasks.len())
        .field("takeover_first_ms", ms(delays.min().unwrap_or(0) as f64))
        .field(
            "takeover_p50_ms",
            ms(delays.quantile(0.5).unwrap_or(0) as f64),
        )
        .field("takeover_ms", ms(delays.max().unwrap_or(0) as f64))
        .field("caught_up_fires", catch_ups)
        .field("expected", counts.expected)
        .field("executed", counts.executed);
    Ok((counts.fields(summary), counts))
}

/// The exactly-once counts of the failover ledger: every execution of the run (before and
/// after the kill, on any node) against every-second instants since the tasks were added;
/// each instant of `window` must have run once.
fn judge(execs: &[Exec], tasks: usize, since_ms: i64, window: (i64, i64)) -> ExactlyOnce {
    ExactlyOnce::check(
        execs.iter().map(|e| (e.task as i64, e.scheduled_ms)),
        &Expected {
            plan: Plan::EverySecond,
            tasks,
            since_ms,
            window,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(task: usize, scheduled_ms: i64, node: usize) -> Exec {
        Exec {
            task,
            scheduled_ms,
            node,
            started_us: scheduled_ms * 1000,
            catch_up: false,
        }
    }

    #[test]
    fn the_ledger_counts_each_kind_of_fault() {
        // Two tasks added at 1000 ms, window [2000, 4000); a takeover at 3000 by node 1.
        let clean = vec![
            exec(0, 2_000, 0),
            exec(1, 2_000, 0),
            exec(0, 3_000, 1),
            exec(1, 3_000, 1),
        ];
        let counts = |execs: &[Exec]| {
            let c = judge(execs, 2, 1_000, (2_000, 4_000));
            (c.duplicates, c.missed, c.unexpected)
        };
        assert_eq!(counts(&clean), (0, 0, 0));
        let mut dup = clean.clone();
        dup.push(exec(0, 3_000, 2)); // the dead owner's fire run again by a survivor
        assert_eq!(counts(&dup), (1, 0, 0));
        assert_eq!(counts(&clean[1..]), (0, 1, 0));
        let mut early = clean.clone();
        early.push(exec(1, 0, 1)); // an instant from before the tasks existed
        assert_eq!(counts(&early), (0, 0, 1));
    }
}
