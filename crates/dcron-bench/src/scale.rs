//! `scale`: one node with many tasks: start time (adding the tasks, then assignment and heap),
//! resident memory per task, CPU per second at steady state.
//!
//! Task `i` fires once an hour, at second `i % 60` of minute `(i / 60) % 60`, so a million tasks
//! make about 278 fires per second spread over every second of the hour: steady state is the
//! scheduler's own cost plus a realistic trickle of fires, not a burst test (that is
//! `latency`). Every fire is kept in a ledger (task, instant) and judged exactly once against
//! the hourly schedule: `duplicates`, `missed` (in the window) and `unexpected`.
//!
//! **Several nodes on a real registry** (`--backend redis`, or `--nodes` > 1): k nodes in this
//! process, each with its own registry connection and each holding all n tasks (as k
//! processes with the same static tasks would), one namespace per run. `start_s`: from the
//! k `start()` calls to the nodes owning the n tasks between them (every node's latest
//! `Rebalanced` count, polled every 20 ms, summing to n, with every node owning some, the
//! time of the poll where they took the values they then keep for a second). Then a node k+1, holding the same n tasks (built before the others, while nothing
//! runs, and left out of the memory baseline), starts: `settle_s` is the time from its
//! `start()` to the k+1 counts summing to n again with the new node owning some (their final
//! values, kept for a second); `join_moved_ratio` is the number of tasks whose owner changed (from each node's
//! owned set before and after) over the ideal n/(k+1). `bytes_per_task`: the resident set
//! growth of the process from before the tasks were added to the k nodes owning them, over
//! n (every node holds every task, so this is the cluster's memory per owned task; the
//! per-node figure is `bytes_per_task_per_node`). Every fire from the first whole second after
//! the start to two seconds after the join settled is judged exactly once.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use dcron_core::{Dcron, DcronEvent, MemoryRegistry, Registry, SecondsField};
use tokio::time::Instant;

use crate::cli::{Backend, ScaleArgs};
use crate::exactly::{ExactlyOnce, Expected, Plan};
use crate::latency::{sleep_until_wall_ms, task_name, wait_owned};
use crate::recorder::{now_us, Recorder};
use crate::summary::Summary;
use crate::sys::{cpu_time, rss_bytes};
use crate::Result;

/// The schedule of task `i`: hourly, spread over the seconds of the hour.
pub fn spread_hourly(i: usize) -> String {
    format!("{} {} * * * *", i % 60, (i / 60) % 60)
}

/// Runs `scale` and prints its summary.
///
/// # Errors
/// When the node does not own every task within the timeout, or `/proc` cannot be read.
pub fn run(args: &ScaleArgs, out: &mut dyn Write) -> Result<()> {
    let rt = crate::runtime()?;
    let (summary, counts) = if args.backend == Backend::Memory && args.nodes == 1 {
        rt.block_on(scale(args))?
    } else {
        rt.block_on(scale_cluster(args, out))?
    };
    writeln!(out, "{summary}")?;
    counts.verdict("scale")
}

/// How long after the window late fires are still waited for before the node stops.
const DRAIN_MS: i64 = 1_500;

async fn scale(args: &ScaleArgs) -> Result<(Summary, ExactlyOnce)> {
    let n = args.tasks;
    // The ledger: room for every fire of the window and the drain (one per task and hour,
    // spread over the hour), allocated before the memory baseline is read.
    let per_second = n.div_ceil(3_600);
    let fires = Arc::new(Recorder::with_capacity(
        per_second.saturating_mul(args.seconds as usize + 8),
    ));
    fires.keep_from(i64::MAX);
    let rss0 = rss_bytes()?;
    let since_ms = now_us().div_euclid(1000);
    let cpu0 = cpu_time()?;
    let t0 = Instant::now();
    let node = Dcron::builder(MemoryRegistry::new())
        .seconds(SecondsField::Required)
        .build()?;
    for i in 0..n {
        let fires = fires.clone();
        node.add_func(&task_name(i), &spread_hourly(i), move |ctx| {
            let fires = fires.clone();
            async move {
                fires.record(ctx.scheduled.timestamp_micros(), now_us(), i as i64);
                Ok(())
            }
        })
        .await?;
        if t0.elapsed() > args.timeout {
            return Err(crate::err(format!(
                "added only {i} of {n} tasks in {:?}; giving up",
                args.timeout
            )));
        }
    }
    let added = t0.elapsed();
    let cpu_added = cpu_time()?;
    let mut events = node.events();
    let t1 = Instant::now();
    node.start().await?;
    let limit = args
        .timeout
        .saturating_sub(added)
        .max(Duration::from_secs(1));
    wait_owned(&node, &mut events, n, limit).await?;
    drop(events);
    let started = t1.elapsed();
    let cpu_started = cpu_time()?;
    let rss1 = rss_bytes()?;

    // Steady state: from the next whole second after a one-second settle, for `seconds`.
    let w0 = (now_us() / 1000 / 1000 + 2) * 1000;
    let w1 = w0 + args.seconds as i64 * 1000;
    fires.keep_from(w0);
    sleep_until_wall_ms(w0).await;
    let cpu_a = cpu_time()?;
    sleep_until_wall_ms(w1).await;
    let cpu_b = cpu_time()?;
    let rss2 = rss_bytes()?;
    sleep_until_wall_ms(w1 + DRAIN_MS).await;
    let t2 = Instant::now();
    node.stop().await?;
    let stopped = t2.elapsed();

    let secs = args.seconds as f64;
    let counts = ExactlyOnce::check(
        fires.fires().iter().map(|f| (f.tag, f.scheduled_ms)),
        &Expected {
            plan: Plan::SpreadHourly,
            tasks: n,
            since_ms,
            window: (w0, w1),
        },
    );
    let in_window = crate::recorder::in_window(&fires.fires(), w0, w1).len();
    let summary = Summary::new("scale")
        .field("tasks", n)
        .field("add_s", format!("{:.3}", added.as_secs_f64()))
        .field("start_s", format!("{:.3}", started.as_secs_f64()))
        .field("total_s", format!("{:.3}", (added + started).as_secs_f64()))
        .field(
            "add_cpu_s",
            format!("{:.2}", cpu_added.saturating_sub(cpu0).as_secs_f64()),
        )
        .field(
            "start_cpu_s",
            format!("{:.2}", cpu_started.saturating_sub(cpu_added).as_secs_f64()),
        )
        .field("rss_bytes_per_task", rss1.saturating_sub(rss0) / n as u64)
        .field(
            "rss_bytes_per_task_steady",
            rss2.saturating_sub(rss0) / n as u64,
        )
        .field("seconds", args.seconds)
        .field("fires_per_s", format!("{:.1}", in_window as f64 / secs))
        .field(
            "cpu_ms_per_s",
            format!(
                "{:.1}",
                cpu_b.saturating_sub(cpu_a).as_secs_f64() * 1000.0 / secs
            ),
        )
        .field("stop_s", format!("{:.3}", stopped.as_secs_f64()))
        .field("expected", counts.expected)
        .field("overflow", fires.overflow());
    Ok((counts.fields(summary), counts))
}

/// Adds in flight at once on one node: adding a static task reads its tombstone from the
/// registry (one round trip each on Redis), so adds one at a time would take n round trips.
const ADDS_IN_FLIGHT: usize = 64;

/// The tasks of `scale`, added to `node` ([`ADDS_IN_FLIGHT`] at a time), recording into `fires`.
async fn add_spread_tasks(node: &Dcron, n: usize, fires: &Arc<Recorder>) -> Result<()> {
    use futures::stream::{self, StreamExt, TryStreamExt};
    stream::iter(0..n)
        .map(|i| {
            let fires = fires.clone();
            async move {
                node.add_func(&task_name(i), &spread_hourly(i), move |ctx| {
                    let fires = fires.clone();
                    async move {
                        fires.record(ctx.scheduled.timestamp_micros(), now_us(), i as i64);
                        Ok(())
                    }
                })
                .await
            }
        })
        .buffer_unordered(ADDS_IN_FLIGHT)
        .try_collect::<()>()
        .await?;
    Ok(())
}

/// A node and the latest owned count of its `Rebalanced` events.
struct Member {
    node: Dcron,
    owned: Arc<AtomicUsize>,
}

impl Member {
    /// Builds a node on `registry` holding the n tasks, and follows its owned count.
    async fn new(
        registry: Arc<dyn Registry>,
        name: String,
        n: usize,
        fires: &Arc<Recorder>,
        start_timeout: Duration,
    ) -> Result<Member> {
        let node = Dcron::builder(registry)
            .seconds(SecondsField::Required)
            .node_name(name)
            .start_timeout(start_timeout)
            .build()?;
        add_spread_tasks(&node, n, fires).await?;
        let owned = Arc::new(AtomicUsize::new(0));
        let mut events = node.events();
        let seen = owned.clone();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(DcronEvent::Rebalanced { owned, .. }) => seen.store(owned, Ordering::SeqCst),
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        Ok(Member { node, owned })
    }
}

/// How long the owned counts must stay unchanged for the cluster to count as settled: while
/// the nodes learn of a change one after the other, intermediate assignments can also sum to n.
const STABLE: Duration = Duration::from_secs(1);

/// Polls (every 20 ms) until the members' owned counts sum to `n` with every member owning
/// some, and stay unchanged for [`STABLE`]; answers the time from `since` to the poll where
/// they took their final values.
async fn wait_spread(
    members: &[Member],
    n: usize,
    since: Instant,
    limit: Duration,
) -> Result<Duration> {
    let deadline = since + limit;
    let mut last: Vec<usize> = Vec::new();
    let mut changed = since.elapsed();
    let mut polls = 0u64;
    loop {
        polls += 1;
        // Once a second, read the owned sets themselves: a lagging event receiver may have
        // missed the last `Rebalanced`.
        if polls % 50 == 0 {
            for m in members {
                m.owned
                    .store(m.node.my_running_tasks().len(), Ordering::SeqCst);
            }
        }
        let counts: Vec<usize> = members
            .iter()
            .map(|m| m.owned.load(Ordering::SeqCst))
            .collect();
        if counts != last {
            last = counts.clone();
            changed = since.elapsed();
        }
        let done = counts.iter().sum::<usize>() == n && counts.iter().all(|c| *c > 0);
        if done && since.elapsed().saturating_sub(changed) >= STABLE {
            return Ok(changed);
        }
        if Instant::now() >= deadline {
            return Err(crate::err(format!(
                "the nodes own {counts:?} of {n} tasks after {limit:?}; giving up"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Who owns which task, from every member's owned set.
fn owners(members: &[Member]) -> HashMap<String, usize> {
    let mut map = HashMap::new();
    for (k, m) in members.iter().enumerate() {
        for name in m.node.my_running_tasks() {
            map.insert(name, k);
        }
    }
    map
}

/// Tasks whose owner differs between `before` and `after` (a task owned by nobody on one side
/// counts as moved).
pub fn moved(before: &HashMap<String, usize>, after: &HashMap<String, usize>) -> usize {
    let changed = after
        .iter()
        .filter(|(name, owner)| before.get(*name) != Some(*owner))
        .count();
    let lost = before
        .keys()
        .filter(|name| !after.contains_key(*name))
        .count();
    changed + lost
}

/// The Redis command timeout of the `scale` nodes (see [`member_registry`]).
const SCALE_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// A registry for member `k` of the run: its own connection to the Redis namespace, or the
/// shared memory registry.
async fn member_registry(
    args: &ScaleArgs,
    namespace: &str,
    memory: &Arc<MemoryRegistry>,
) -> Result<Arc<dyn Registry>> {
    match args.backend {
        Backend::Redis => {
            // A node's first reads of its owned tasks' lives go out as one script call per
            // 1,000 tasks, all at once: at a million tasks they queue at the server for longer
            // than the default 2 s command timeout, time out and are all sent again.
            let url = crate::cluster::redis_url(args.url.as_deref());
            let registry = dcron_registry_redis::RedisRegistryConfig::new(url.as_str())
                .namespace(namespace)
                .command_timeout(SCALE_COMMAND_TIMEOUT)
                .build()
                .map_err(|e| crate::err(format!("redis configuration: {e}")))?;
            match tokio::time::timeout(Duration::from_secs(5), registry.list_nodes()).await {
                Ok(Ok(_)) => Ok(Arc::new(registry)),
                Ok(Err(e)) => Err(crate::err(format!("cannot reach Redis at {url}: {e}"))),
                Err(_) => Err(crate::err(format!(
                    "cannot reach Redis at {url}: no answer within 5 s"
                ))),
            }
        }
        _ => Ok(memory.clone() as Arc<dyn Registry>),
    }
}

async fn scale_cluster(args: &ScaleArgs, out: &mut dyn Write) -> Result<(Summary, ExactlyOnce)> {
    let (n, k) = (args.tasks, args.nodes);
    let namespace = format!("dcron-bench-scale-{}", uuid::Uuid::new_v4().simple());
    let memory = Arc::new(MemoryRegistry::new());
    let admin = member_registry(args, &namespace, &memory).await?;
    let per_second = n.div_ceil(3_600);
    let fires = Arc::new(Recorder::with_capacity(
        per_second.saturating_mul(600) + 1_000,
    ));
    fires.keep_from(i64::MAX);
    let since_ms = now_us().div_euclid(1000);
    // The joining node holds the same tasks; it is built first, while nothing runs (adding
    // a task reads its tombstone, one round trip each), and its memory is left out of the
    // baseline of `bytes_per_task`.
    let registry = member_registry(args, &namespace, &memory).await?;
    let joiner = Member::new(
        registry,
        format!("bench-scale-{k}"),
        n,
        &fires,
        args.timeout,
    )
    .await?;
    let rss0 = rss_bytes()?;
    let t0 = Instant::now();
    let mut members = Vec::with_capacity(k + 1);
    for j in 0..k {
        let registry = member_registry(args, &namespace, &memory).await?;
        let name = format!("bench-scale-{j}");
        members.push(Member::new(registry, name, n, &fires, args.timeout).await?);
    }
    let added = t0.elapsed();
    writeln!(
        out,
        "# scale: {k} nodes hold {n} tasks each after {:.1} s",
        added.as_secs_f64()
    )?;
    out.flush()?;
    let outcome = scale_cluster_measure(args, joiner, &mut members, &fires, out).await;
    for m in &members {
        if tokio::time::timeout(Duration::from_secs(60), m.node.stop())
            .await
            .is_err()
        {
            eprintln!("dcron-bench: a node did not stop within 60 s");
        }
    }
    if let Err(e) = admin.cleanup_all().await {
        eprintln!("dcron-bench: could not clean the bench namespace: {e}");
    }
    let m = outcome?;
    let counts = ExactlyOnce::check(
        fires.fires().iter().map(|f| (f.tag, f.scheduled_ms)),
        &Expected {
            plan: Plan::SpreadHourly,
            tasks: n,
            since_ms,
            window: (m.w0, m.w1),
        },
    );
    let grown = m.rss_started.saturating_sub(rss0);
    let summary = Summary::new("scale")
        .field("backend", args.backend.name())
        .field("tasks", n)
        .field("nodes", k)
        .field("start_s", format!("{:.3}", m.start.as_secs_f64()))
        .field(
            "join_moved_ratio",
            ratio_3(m.moved as f64, n as f64 / (k + 1) as f64),
        )
        .field("settle_s", format!("{:.3}", m.settle.as_secs_f64()));
    let summary = counts
        .fields(summary)
        .field("bytes_per_task", grown / n as u64)
        .field("bytes_per_task_per_node", grown / (n * k) as u64)
        .field("moved", m.moved)
        .field("add_s", format!("{:.3}", added.as_secs_f64()))
        .field("window_s", (m.w1 - m.w0) / 1000)
        .field("expected", counts.expected)
        .field("overflow", fires.overflow());
    Ok((summary, counts))
}

fn ratio_3(a: f64, b: f64) -> String {
    if b <= 0.0 {
        "0".into()
    } else {
        format!("{:.3}", a / b)
    }
}

/// What the cluster scale run measured.
struct ClusterFigures {
    start: Duration,
    settle: Duration,
    moved: usize,
    rss_started: u64,
    w0: i64,
    w1: i64,
}

async fn scale_cluster_measure(
    args: &ScaleArgs,
    joiner: Member,
    members: &mut Vec<Member>,
    fires: &Arc<Recorder>,
    out: &mut dyn Write,
) -> Result<ClusterFigures> {
    let (n, k) = (args.tasks, args.nodes);
    // The k nodes start at once (`start()` answers once the node has taken its share).
    let t1 = Instant::now();
    for started in futures::future::join_all(members.iter().map(|m| m.node.start())).await {
        started?;
    }
    let start = wait_spread(members, n, t1, args.timeout).await?;
    let rss_started = rss_bytes()?;
    writeln!(
        out,
        "# scale: {k} nodes own {n} tasks {:.3} s after start",
        start.as_secs_f64()
    )?;
    out.flush()?;
    // The ledger window opens at the next whole second after a settle; the join happens in it.
    let w0 = (now_us() / 1000 / 1000 + 2) * 1000;
    fires.keep_from(w0);
    sleep_until_wall_ms(w0).await;
    let before = owners(members);
    members.push(joiner);
    let t2 = Instant::now();
    members[k].node.start().await?;
    let settle = wait_spread(members, n, t2, args.timeout).await?;
    let after = owners(members);
    let moved = moved(&before, &after);
    writeln!(
        out,
        "# scale: node {k} joined; settled after {:.3} s, {moved} tasks moved",
        settle.as_secs_f64()
    )?;
    out.flush()?;
    let w1 = (now_us() / 1000 / 1000 + 3) * 1000;
    sleep_until_wall_ms(w1 + DRAIN_MS).await;
    Ok(ClusterFigures {
        start,
        settle,
        moved,
        rss_started,
        w0,
        w1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moved_counts_changed_and_lost_owners() {
        let map = |pairs: &[(&str, usize)]| -> HashMap<String, usize> {
            pairs.iter().map(|(n, k)| (n.to_string(), *k)).collect()
        };
        let before = map(&[("a", 0), ("b", 0), ("c", 1), ("d", 1)]);
        assert_eq!(moved(&before, &before), 0);
        // b moves to node 2, d is owned by nobody after.
        let after = map(&[("a", 0), ("b", 2), ("c", 1)]);
        assert_eq!(moved(&before, &after), 2);
    }
}
