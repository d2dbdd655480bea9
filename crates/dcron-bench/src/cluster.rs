//! `redis`: k dcron nodes in one process, each with its own connection pool to one Redis server
//! (as k processes would have), n every-second tasks spread over them.
//!
//! Reports claimed fires per second (cluster and per node), registry round trips per fire
//! (every call of every node during the window, counted by [`CountingRegistry`], divided by the
//! fires executed), claim calls per instant, and lateness percentiles. The lateness includes
//! the claim: a dcron handler starts only after its fire's batch claim came back.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dcron_core::{Dcron, NodeStatus, Registry, SecondsField};
use dcron_registry_redis::RedisRegistryConfig;
use tokio::time::Instant;

use crate::cli::RedisArgs;
use crate::counting::{Counters, CountingRegistry, Op};
use crate::exactly::{ExactlyOnce, Expected, Plan};
use crate::latency::{sleep_until_wall_ms, task_name, EVERY_SECOND};
use crate::recorder::{in_window, now_us, Recorder};
use crate::stats::Distribution;
use crate::summary::{ms, Summary};
use crate::sys::cpu_time;
use crate::{err, Result};

/// The longest the cluster may take to form and own every task.
const READY_LIMIT: Duration = Duration::from_secs(120);

/// The Redis URL: the flag, else `$DCRON_TEST_REDIS_URL`, else the local default.
pub fn redis_url(flag: Option<&str>) -> String {
    match flag {
        Some(url) => url.to_string(),
        None => dcron_registry_redis::RedisRegistry::env_url(),
    }
}

/// A registry on `url` in `namespace`, checked to answer within a few seconds.
///
/// # Errors
/// A message naming the URL and how to start a local server when it does not answer.
pub async fn connect_redis(url: &str, namespace: &str) -> Result<Arc<dyn Registry>> {
    let registry = RedisRegistryConfig::new(url)
        .namespace(namespace)
        .build()
        .map_err(|e| err(format!("redis configuration: {e}")))?;
    match tokio::time::timeout(Duration::from_secs(5), registry.list_nodes()).await {
        Ok(Ok(_)) => Ok(Arc::new(registry)),
        Ok(Err(e)) => Err(unreachable(url, &e.to_string())),
        Err(_) => Err(unreachable(url, "no answer within 5 s")),
    }
}

/// A registry on the Redis Cluster reached through `urls` (seed nodes) in `namespace`, checked
/// to answer within a few seconds.
///
/// # Errors
/// A message naming the seeds and how to start a local cluster when it does not answer.
pub async fn connect_redis_cluster(urls: &[String], namespace: &str) -> Result<Arc<dyn Registry>> {
    let registry = RedisRegistryConfig::cluster(urls.iter().cloned())
        .namespace(namespace)
        .build()
        .map_err(|e| err(format!("redis cluster configuration: {e}")))?;
    let shown = urls.join(",");
    let why = match tokio::time::timeout(Duration::from_secs(10), registry.list_nodes()).await {
        Ok(Ok(_)) => return Ok(Arc::new(registry)),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "no answer within 10 s".to_string(),
    };
    Err(err(format!(
        "cannot reach the Redis Cluster at {shown}: {why}. Start a local one with \
         `eval \"$(bash scripts/services/redis-cluster.sh)\"` or pass --url"
    )))
}

fn unreachable(url: &str, why: &str) -> crate::BenchError {
    err(format!(
        "cannot reach Redis at {url}: {why}. Start a local server with \
         `eval \"$(bash scripts/services/redis.sh)\"` or pass --url"
    ))
}

/// Runs `redis` and prints its summary.
///
/// # Errors
/// When Redis is unreachable or the cluster does not form in time.
pub fn run(args: &RedisArgs, out: &mut dyn Write) -> Result<()> {
    let rt = crate::runtime()?;
    let (summary, counts) = rt.block_on(cluster(args))?;
    writeln!(out, "{summary}")?;
    counts.verdict("redis")
}

/// Waits until `nodes` are all `Working` in the registry and own `n` tasks together, twice in
/// a row a few hundred milliseconds apart.
///
/// # Errors
/// When that does not happen within `limit`.
pub async fn wait_cluster(
    registry: &Arc<dyn Registry>,
    nodes: &[&Dcron],
    n: usize,
    limit: Duration,
) -> Result<()> {
    let deadline = Instant::now() + limit;
    let mut stable = 0;
    loop {
        let working = registry
            .list_nodes()
            .await
            .map(|l| {
                l.items
                    .iter()
                    .filter(|node| node.status == NodeStatus::Working)
                    .count()
            })
            .unwrap_or(0);
        let owned: Vec<usize> = nodes.iter().map(|d| d.my_running_tasks().len()).collect();
        let total: usize = owned.iter().sum();
        if working == nodes.len() && total == n {
            stable += 1;
            if stable >= 2 {
                return Ok(());
            }
        } else {
            stable = 0;
        }
        if Instant::now() >= deadline {
            return Err(err(format!(
                "the cluster did not settle in {limit:?}: {working} of {} nodes working, \
                 owned {owned:?} of {n} tasks",
                nodes.len()
            )));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn cluster(args: &RedisArgs) -> Result<(Summary, ExactlyOnce)> {
    let url = redis_url(args.url.as_deref());
    let namespace = format!("dcron-bench-{}", uuid::Uuid::new_v4().simple());
    let admin = connect_redis(&url, &namespace).await?;
    let counters = Counters::new();
    let recorder = Arc::new(Recorder::with_capacity(
        args.tasks.saturating_mul(args.seconds as usize + 4),
    ));
    // Nothing is kept until the window is known (the setup may take a while).
    recorder.keep_from(i64::MAX);
    let per_node: Arc<Vec<AtomicU64>> =
        Arc::new((0..args.nodes).map(|_| AtomicU64::new(0)).collect());
    let mut nodes = Vec::new();
    let t0 = Instant::now();
    let since_ms = now_us().div_euclid(1000);
    for k in 0..args.nodes {
        let registry: Arc<dyn Registry> = Arc::new(CountingRegistry::new(
            connect_redis(&url, &namespace).await?,
            counters.clone(),
        ));
        let node = Dcron::builder(registry)
            .seconds(SecondsField::Required)
            .node_name(format!("bench-{k}"))
            .build()?;
        for i in 0..args.tasks {
            let (rec, per_node) = (recorder.clone(), per_node.clone());
            node.add_func(&task_name(i), EVERY_SECOND, move |ctx| {
                let (rec, per_node) = (rec.clone(), per_node.clone());
                async move {
                    rec.record(ctx.scheduled.timestamp_micros(), now_us(), i as i64);
                    per_node[k].fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }
            })
            .await?;
        }
        nodes.push(node);
    }
    for node in &nodes {
        node.start().await?;
    }
    let refs: Vec<&Dcron> = nodes.iter().collect();
    let ready = wait_cluster(&admin, &refs, args.tasks, READY_LIMIT).await;
    let setup = t0.elapsed();
    if let Err(e) = ready {
        shutdown(&nodes, &admin).await;
        return Err(e);
    }

    let seconds = args.seconds as i64;
    let w0 = (now_us() / 1000 / 1000 + 3) * 1000;
    let w1 = w0 + seconds * 1000;
    recorder.keep_from(w0);
    sleep_until_wall_ms(w0 - 500).await;
    let calls_a = counters.snapshot();
    let cpu_a = cpu_time()?;
    let node_a: Vec<u64> = per_node.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    sleep_until_wall_ms(w1 - 500).await;
    let calls_b = counters.snapshot();
    let cpu_b = cpu_time()?;
    let node_b: Vec<u64> = per_node.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    sleep_until_wall_ms(w1 + 3_000).await;
    shutdown(&nodes, &admin).await;

    let fires = in_window(&recorder.fires(), w0, w1);
    let counts = ExactlyOnce::check(
        recorder.fires().iter().map(|f| (f.tag, f.scheduled_ms)),
        &Expected {
            plan: Plan::EverySecond,
            tasks: args.tasks,
            since_ms,
            window: (w0, w1),
        },
    );
    let in_window_fires = fires.len() as u64;
    let dist = Distribution::new(fires.iter().map(|f| f.lateness_us).collect());
    let calls = calls_b.since(&calls_a);
    let executed = in_window_fires.max(1) as f64;
    let per_node_rate: Vec<String> = node_a
        .iter()
        .zip(&node_b)
        .map(|(a, b)| format!("{:.0}", (b - a) as f64 / seconds as f64))
        .collect();
    let q = |p: f64| ms(dist.quantile(p).unwrap_or(0) as f64);
    let summary = Summary::new("redis")
        .field("nodes", args.nodes)
        .field("tasks", args.tasks)
        .field("seconds", seconds)
        .field("fires", in_window_fires)
        .field("expected", counts.expected);
    let summary = counts
        .fields(summary)
        .field(
            "claimed_fires_per_s",
            format!("{:.0}", in_window_fires as f64 / seconds as f64),
        )
        .field(
            "claimed_fires_per_s_per_node",
            format!(
                "{:.0}",
                in_window_fires as f64 / seconds as f64 / args.nodes as f64
            ),
        )
        .field("per_node_fires_per_s", per_node_rate.join(","))
        .field(
            "round_trips_per_fire",
            format!("{:.5}", calls.total() as f64 / executed),
        )
        .field(
            "claim_calls_per_fire",
            format!("{:.5}", calls.of(Op::Claim) as f64 / executed),
        )
        .field(
            "claim_calls_per_instant",
            format!("{:.2}", calls.of(Op::Claim) as f64 / seconds as f64),
        )
        .field("registry_calls", calls.total())
        .field("p50_ms", q(0.5))
        .field("p99_ms", q(0.99))
        .field("max_ms", ms(dist.max().unwrap_or(0) as f64))
        .field(
            "client_cpu_us_per_fire",
            format!(
                "{:.2}",
                cpu_b.saturating_sub(cpu_a).as_micros() as f64 / executed
            ),
        )
        .field("setup_s", format!("{:.3}", setup.as_secs_f64()))
        .field("overflow", recorder.overflow());
    Ok((summary, counts))
}

/// Stops every node (bounded) and removes the run's keys.
async fn shutdown(nodes: &[Dcron], admin: &Arc<dyn Registry>) {
    for node in nodes {
        if tokio::time::timeout(Duration::from_secs(30), node.stop())
            .await
            .is_err()
        {
            eprintln!("dcron-bench: a node did not stop within 30 s");
        }
    }
    if let Err(e) = admin.cleanup_all().await {
        eprintln!("dcron-bench: could not clean the bench namespace: {e}");
    }
}
