//! `registry --backend b`: the largest burst one node holds on a real registry, beside the raw
//! speed of the same server doing the backend's bare primitive, measured in the same run.
//!
//! **Burst search.** A burst of n is n tasks firing every second on one node (default settings,
//! a fresh namespace per step). Each step waits until the node owns the n tasks, lets 1.5 s
//! pass, then measures two whole instants (2·n fires): lateness = handler start − scheduled
//! instant, which includes the claim. A step is *held* when its p99 lateness is at most 50 ms.
//! The search starts at 256 and doubles while the step is held, the burst is at most
//! `--max-burst`, and less than half the budget is spent; when 256 is not held it halves
//! instead, down to 16, until a step is held. The summary gives the largest held burst and its
//! p99 (`burst=0` when none was), and the last burst tried with its p99.
//!
//! **Claimed fires per second.** The node's registry is wrapped in [`CountingRegistry`], which
//! counts the fires sent in `claim` batches and the time spent inside `claim` calls. From half a
//! second before the first measured instant to half a second before the end of the window (the
//! claims of exactly the measured instants, sent at or up to `claim_ahead` before them): fires
//! claimed divided by the time inside `claim` calls (summed: overlapping calls count twice, so
//! it is a lower bound of the rate). The summary gives the best step's rate (small bursts are
//! bounded by the round trip, large ones by the server).
//!
//! **Raw primitive.** With the backend's own client crate, on the same server, one client
//! writes fresh keys in sequential batches for a bounded time (a sixth of the budget, at most
//! 5 s): Redis pipelined `SET key v NX PX 60000` (1,000 per round trip); etcd transactions of
//! 128 puts guarded by 128 `create_revision == 0` compares; ZooKeeper `create` of persistent
//! znodes, 256 in flight at once (the client pipelines them; it has no `multi`); PostgreSQL
//! `INSERT … SELECT unnest($1) ON CONFLICT DO NOTHING` of 1,000 rows into a scratch table (one
//! autocommit statement per batch). Everything written is removed afterwards.
//! `raw_ratio` = `claimed_per_s / raw_per_s`.
//!
//! Every execution of every step is judged exactly once ([`crate::exactly`]); the run exits
//! non-zero when any `duplicates`, `missed` or `unexpected` is not 0.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use dcron_core::{Dcron, MemoryRegistry, Registry, SecondsField};
use tokio::time::Instant;

use crate::cli::{RegistryArgs, RegistryBackend};
use crate::counting::{ClaimCall, Counters, CountingRegistry};
use crate::exactly::{ExactlyOnce, Expected, Plan};
use crate::latency::{add_recording_tasks, sleep_until_wall_ms, wait_owned};
use crate::recorder::{in_window, now_us, Recorder};
use crate::stats::Distribution;
use crate::summary::{ms, ratio, Summary};
use crate::{err, Result};

/// The p99 lateness a burst must stay under to be held, in µs.
pub const HELD_P99_US: i64 = 50_000;
/// The first burst tried.
pub const FIRST_BURST: usize = 256;
/// Instants measured per step.
const INSTANTS: i64 = 2;
/// Warm-up between owning the tasks and the first measured instant, in ms.
const WARMUP_MS: i64 = 1_500;
/// How long after the last measured instant its fires are waited for, at most, in ms.
const DRAIN_MS: i64 = 5_000;
/// The part of the budget a step's setup leaves for its measurement and the raw one.
const RESERVE: Duration = Duration::from_secs(20);

/// One step of the search.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// Fires per instant.
    pub burst: usize,
    /// p99 lateness of the measured fires, µs.
    pub p99_us: i64,
    /// Claimed fires per second during the bursts.
    pub claimed_per_s: f64,
    /// The step's exactly-once counts.
    pub counts: ExactlyOnce,
    /// From connecting to the node owning every task.
    pub setup: Duration,
}

impl Step {
    /// Whether the burst was held (p99 ≤ 50 ms).
    pub fn held(&self) -> bool {
        self.p99_us <= HELD_P99_US
    }
}

/// A p99 in ms for a summary; `inf` when some fire never ran (the p99 is then unbounded).
pub fn p99_text(p99_us: i64) -> String {
    if p99_us == i64::MAX {
        "inf".into()
    } else {
        ms(p99_us as f64)
    }
}

/// Fires claimed per second of time spent inside `claim` calls (0 when nothing was claimed).
pub fn claimed_rate(fires: u64, busy_ns: u64) -> f64 {
    if fires == 0 {
        0.0
    } else {
        fires as f64 / (busy_ns.max(1) as f64 / 1e9)
    }
}

/// The smallest burst tried when even the first is not held.
pub const MIN_BURST: usize = 16;

/// The next burst to try after `step`, or `None` when the search ends: double while held;
/// when nothing was held yet, halve down to [`MIN_BURST`]; never once half the budget is spent.
pub fn next_burst(
    step: &Step,
    any_held_before: bool,
    max_burst: usize,
    spent: Duration,
    budget: Duration,
) -> Option<usize> {
    if spent >= budget / 2 {
        return None;
    }
    if step.held() {
        step.burst.checked_mul(2).filter(|n| *n <= max_burst)
    } else if !any_held_before {
        Some(step.burst / 2).filter(|n| *n >= MIN_BURST)
    } else {
        None
    }
}

/// Runs `registry` and prints its summary (and a comment line per step).
///
/// # Errors
/// When the server is unreachable, the first step cannot be set up within the budget, the raw
/// measurement fails, or the exactly-once counts are not all 0.
pub fn run(args: &RegistryArgs, out: &mut dyn Write) -> Result<()> {
    let rt = crate::runtime()?;
    let (summary, counts) = rt.block_on(registry(args, out))?;
    writeln!(out, "{summary}")?;
    out.flush()?;
    if !args.backend.is_redis() || args.burst_fires == 0 {
        return counts.verdict("registry");
    }
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let (burst, burst_counts) = rt.block_on(burst_against_memory(args, &run_id, out))?;
    writeln!(out, "{burst}")?;
    counts.verdict("registry")?;
    burst_counts.verdict("registry-burst")
}

async fn registry(args: &RegistryArgs, out: &mut dyn Write) -> Result<(Summary, ExactlyOnce)> {
    let t0 = Instant::now();
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let mut steps: Vec<Step> = Vec::new();
    let mut burst = FIRST_BURST.min(args.max_burst);
    loop {
        let namespace = format!("dcron-bench-registry-{run_id}-{burst}");
        // A step's setup may use what the budget leaves after its measurement (at most
        // WARMUP_MS + INSTANTS s + DRAIN_MS) and the raw measurement: RESERVE.
        let remaining = args
            .budget
            .saturating_sub(t0.elapsed())
            .saturating_sub(RESERVE)
            .max(Duration::from_secs(1));
        let step = match measure_step(args, &namespace, burst, remaining).await {
            Ok(step) => step,
            // A later step that cannot be set up in the budget ends the search; the first is
            // an error (there is nothing to report).
            Err(e) if !steps.is_empty() => {
                writeln!(out, "# step burst={burst} not measured: {e}")?;
                break;
            }
            Err(e) => return Err(e),
        };
        writeln!(
            out,
            "# step burst={} setup_s={:.1} p99_ms={} claimed_per_s={:.0} held={} duplicates={} missed={} unexpected={}",
            step.burst,
            step.setup.as_secs_f64(),
            p99_text(step.p99_us),
            step.claimed_per_s,
            step.held(),
            step.counts.duplicates,
            step.counts.missed,
            step.counts.unexpected
        )?;
        out.flush()?;
        let any_held = steps.iter().any(Step::held);
        let next = next_burst(&step, any_held, args.max_burst, t0.elapsed(), args.budget);
        // Going down after a miss, the first held step ends the search: its double was not.
        let done = !steps.is_empty() && step.held() && !any_held;
        steps.push(step);
        if done {
            break;
        }
        match next {
            Some(n) => burst = n,
            None => break,
        }
    }
    let raw_time = (args.budget / 6).min(Duration::from_secs(5));
    let raw = raw_per_s(args, &run_id, raw_time).await?;
    if let Some(path) = &args.plot {
        let points: Vec<(usize, f64)> = steps.iter().map(|s| (s.burst, s.claimed_per_s)).collect();
        crate::plot::throughput_by_burst(
            path,
            &format!(
                "{}: claimed fires/s by burst size, and the raw primitive",
                args.backend.name()
            ),
            &points,
            raw,
        )?;
    }

    let counts = steps
        .iter()
        .fold(ExactlyOnce::default(), |a, s| a.plus(s.counts));
    let held = steps.iter().filter(|s| s.held()).max_by_key(|s| s.burst);
    let claimed = steps.iter().map(|s| s.claimed_per_s).fold(0.0, f64::max);
    let last = steps.last();
    let summary = Summary::new("registry")
        .field("backend", args.backend.name())
        .field("burst", held.map_or(0, |s| s.burst))
        .field("p99_ms", p99_text(held.map_or(0, |s| s.p99_us)))
        .field("claimed_per_s", format!("{claimed:.0}"))
        .field("raw_per_s", format!("{raw:.0}"))
        .field("raw_ratio", ratio(claimed, raw));
    let summary = counts
        .fields(summary)
        .field("tried", last.map_or(0, |s| s.burst))
        .field("tried_p99_ms", p99_text(last.map_or(0, |s| s.p99_us)))
        .field("expected", counts.expected)
        .field("run_s", format!("{:.1}", t0.elapsed().as_secs_f64()));
    Ok((summary, counts))
}

/// Where a step runs: the backend under test, or the memory registry (the baseline of the
/// `registry-burst` line).
#[derive(Clone, Copy, Debug)]
enum Target<'a> {
    /// The backend and its address.
    Backend(RegistryBackend, Option<&'a str>),
    /// `MemoryRegistry`, in this process.
    Memory,
}

/// What the claims of a step's measured instants did, from the [`Counters`] log.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClaimProfile {
    /// Claim calls made for the measured instants.
    pub calls: usize,
    /// The most fires one call carried.
    pub max_fires: usize,
    /// Mean time of one call, µs.
    pub mean_call_us: i64,
    /// The longest call, µs.
    pub max_call_us: i64,
    /// When the first claim of the last measured instant was sent, relative to the instant
    /// (negative: ahead of it), µs.
    pub first_sent_us: i64,
    /// When the last claim of the last measured instant came back, relative to the instant, µs.
    pub last_answered_us: i64,
}

impl ClaimProfile {
    /// The profile of `calls` (the claims of the instants up to `instant_ms`, the last one).
    pub fn of(calls: &[ClaimCall], instant_ms: i64) -> ClaimProfile {
        if calls.is_empty() {
            return ClaimProfile::default();
        }
        let instant_us = instant_ms * 1000;
        let durations: Vec<i64> = calls.iter().map(|c| c.end_us - c.start_us).collect();
        // The calls of the last instant: sent within a second before it (or after it).
        let last: Vec<&ClaimCall> = calls
            .iter()
            .filter(|c| c.start_us > instant_us - 1_000_000)
            .collect();
        ClaimProfile {
            calls: calls.len(),
            max_fires: calls.iter().map(|c| c.fires).max().unwrap_or(0),
            mean_call_us: durations.iter().sum::<i64>() / durations.len() as i64,
            max_call_us: durations.iter().copied().max().unwrap_or(0),
            first_sent_us: last.iter().map(|c| c.start_us).min().unwrap_or(instant_us) - instant_us,
            last_answered_us: last.iter().map(|c| c.end_us).max().unwrap_or(instant_us)
                - instant_us,
        }
    }
}

/// One step: `burst` every-second tasks on one fresh node in `namespace`, two instants.
async fn measure_step(
    args: &RegistryArgs,
    namespace: &str,
    burst: usize,
    limit: Duration,
) -> Result<Step> {
    let target = Target::Backend(args.backend, args.url.as_deref());
    measure_on(target, args.claim_ahead_ms, namespace, burst, limit)
        .await
        .map(|(step, _, _)| step)
}

/// One step on `target` with `claim_ahead_ms`, and the profile of its claims.
async fn measure_on(
    target: Target<'_>,
    claim_ahead_ms: u64,
    namespace: &str,
    burst: usize,
    limit: Duration,
) -> Result<(Step, ClaimProfile, Distribution)> {
    let t0 = Instant::now();
    let registry: Arc<dyn Registry> = match target {
        Target::Backend(backend, url) => connect(backend, url, namespace).await?,
        Target::Memory => Arc::new(MemoryRegistry::new()),
    };
    let counters = Counters::new();
    let counted: Arc<dyn Registry> =
        Arc::new(CountingRegistry::new(registry.clone(), counters.clone()));
    let recorder = Arc::new(Recorder::with_capacity(
        burst.saturating_mul(INSTANTS as usize + 4),
    ));
    recorder.keep_from(i64::MAX);
    let since_ms = now_us().div_euclid(1000);
    let node = Dcron::builder(counted)
        .seconds(SecondsField::Required)
        .node_name(format!("bench-registry-{burst}"))
        .claim_ahead(Duration::from_millis(claim_ahead_ms))
        .build()?;
    add_recording_tasks(&node, burst, &recorder).await?;
    let mut events = node.events();
    node.start().await?;
    let owned = wait_owned(&node, &mut events, burst, limit).await;
    drop(events);
    if let Err(e) = owned {
        finish(&node, &registry).await;
        return Err(e);
    }
    let setup = t0.elapsed();
    let w0 = ((now_us() / 1000 + WARMUP_MS).div_euclid(1000) + 1) * 1000;
    let w1 = w0 + INSTANTS * 1000;
    recorder.keep_from(w0);
    // Wait (polling, bounded) until every fire of the window has started.
    let want = burst * INSTANTS as usize;
    sleep_until_wall_ms(w0 - 500).await;
    let claims_a = counters.snapshot();
    sleep_until_wall_ms(w1 - 500).await;
    let claims = counters.snapshot().since(&claims_a);
    sleep_until_wall_ms(w1).await;
    while in_window(&recorder.fires(), w0, w1).len() < want && now_us() < (w1 + DRAIN_MS) * 1000 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    finish(&node, &registry).await;

    let all = recorder.fires();
    let fires = in_window(&all, w0, w1);
    let counts = ExactlyOnce::check(
        all.iter().map(|f| (f.tag, f.scheduled_ms)),
        &Expected {
            plan: Plan::EverySecond,
            tasks: burst,
            since_ms,
            window: (w0, w1),
        },
    );
    let dist = Distribution::new(fires.iter().map(|f| f.lateness_us).collect());
    // Fires that never ran count as infinitely late.
    let p99_us = if fires.len() < want {
        i64::MAX
    } else {
        dist.quantile(0.99).unwrap_or(0)
    };
    let profile = ClaimProfile::of(
        &counters.claim_calls((w0 - 500) * 1000, (w1 - 500) * 1000),
        w1 - 1000,
    );
    let step = Step {
        burst,
        p99_us,
        claimed_per_s: claimed_rate(claims.claimed_fires, claims.claim_busy_ns),
        counts,
        setup,
    };
    Ok((step, profile, dist))
}

/// `<stem>-burst.svg` next to `path`.
pub fn burst_plot_path(path: &std::path::Path) -> std::path::PathBuf {
    let stem = path
        .file_stem()
        .map_or_else(|| "registry".into(), |s| s.to_string_lossy().into_owned());
    path.with_file_name(format!("{stem}-burst.svg"))
}

/// Goal 3: one burst of `args.burst_fires` fires in one instant on one node, on the backend
/// and on the memory registry, measured the same way one after the other (memory first).
///
/// Prints a `# burst …` comment line with each side's claim profile, and returns the
/// `registry-burst` summary with the counts of both.
async fn burst_against_memory(
    args: &RegistryArgs,
    run_id: &str,
    out: &mut dyn Write,
) -> Result<(Summary, ExactlyOnce)> {
    let fires = args.burst_fires;
    let limit = args.budget.max(Duration::from_secs(60));
    let (memory, memory_profile, memory_dist) =
        measure_on(Target::Memory, args.claim_ahead_ms, "memory", fires, limit).await?;
    let namespace = format!("dcron-bench-registry-{run_id}-burst");
    let target = Target::Backend(args.backend, args.url.as_deref());
    let (backend, profile, dist) =
        measure_on(target, args.claim_ahead_ms, &namespace, fires, limit).await?;
    if let Some(path) = &args.plot {
        let path = burst_plot_path(path);
        crate::plot::lateness_cdf(
            &path,
            &format!(
                "{fires} fires in one instant on one node, claim_ahead {} ms",
                args.claim_ahead_ms
            ),
            &[("memory", &memory_dist), (args.backend.name(), &dist)],
        )?;
    }
    for (name, step, p) in [
        ("memory", &memory, &memory_profile),
        (args.backend.name(), &backend, &profile),
    ] {
        writeln!(
            out,
            "# burst on={name} fires={} setup_s={:.1} p99_ms={} claim_calls={} max_fires_per_call={} mean_call_ms={} max_call_ms={} last_instant_first_claim_ms={} last_instant_last_answer_ms={}",
            step.burst,
            step.setup.as_secs_f64(),
            p99_text(step.p99_us),
            p.calls,
            p.max_fires,
            ms(p.mean_call_us as f64),
            ms(p.max_call_us as f64),
            ms(p.first_sent_us as f64),
            ms(p.last_answered_us as f64),
        )?;
    }
    let counts = memory.counts.plus(backend.counts);
    let summary = Summary::new("registry-burst")
        .field("backend", args.backend.name())
        .field("fires", fires)
        .field("p99_ms", p99_text(backend.p99_us))
        .field("memory_p99_ms", p99_text(memory.p99_us))
        .field(
            "ratio",
            if backend.p99_us == i64::MAX || memory.p99_us == i64::MAX {
                "inf".to_string()
            } else {
                ratio(backend.p99_us as f64, memory.p99_us.max(1) as f64)
            },
        )
        .field("claim_ahead_ms", args.claim_ahead_ms)
        .field("claim_calls", profile.calls)
        .field("max_call_ms", ms(profile.max_call_us as f64))
        .field("last_answer_ms", ms(profile.last_answered_us as f64));
    Ok((counts.fields(summary), counts))
}

/// Stops the node (bounded) and removes the step's namespace.
async fn finish(node: &Dcron, registry: &Arc<dyn Registry>) {
    if tokio::time::timeout(Duration::from_secs(30), node.stop())
        .await
        .is_err()
    {
        eprintln!("dcron-bench: the node did not stop within 30 s");
    }
    if let Err(e) = registry.cleanup_all().await {
        eprintln!("dcron-bench: could not clean the bench namespace: {e}");
    }
}

/// A registry of `backend` in `namespace`, checked to answer.
async fn connect(
    backend: RegistryBackend,
    address: Option<&str>,
    namespace: &str,
) -> Result<Arc<dyn Registry>> {
    use crate::cli::Backend;
    match backend {
        RegistryBackend::Redis => {
            crate::cluster::connect_redis(&crate::cluster::redis_url(address), namespace).await
        }
        RegistryBackend::RedisCluster => {
            crate::cluster::connect_redis_cluster(&redis_cluster_urls(address)?, namespace).await
        }
        RegistryBackend::Etcd => {
            crate::failover::connect_other(Backend::Etcd, address, namespace).await
        }
        RegistryBackend::Zk => {
            crate::failover::connect_other(Backend::Zk, address, namespace).await
        }
        RegistryBackend::Postgres => connect_postgres(address, namespace).await,
    }
}

#[cfg(feature = "postgres")]
fn postgres_url(address: Option<&str>) -> String {
    address.map_or_else(
        dcron_registry_postgres::PostgresRegistry::env_url,
        str::to_string,
    )
}

#[cfg(feature = "postgres")]
async fn connect_postgres(address: Option<&str>, namespace: &str) -> Result<Arc<dyn Registry>> {
    use dcron_registry_postgres::PostgresRegistryConfig;
    let url = postgres_url(address);
    let connecting = PostgresRegistryConfig::new(url.as_str())
        .namespace(namespace)
        .connect();
    match tokio::time::timeout(Duration::from_secs(15), connecting).await {
        Ok(Ok(r)) => Ok(Arc::new(r)),
        Ok(Err(e)) => Err(err(format!("cannot reach PostgreSQL: {e}"))),
        Err(_) => Err(err("cannot reach PostgreSQL: no answer within 15 s")),
    }
}

#[cfg(not(feature = "postgres"))]
async fn connect_postgres(_address: Option<&str>, _namespace: &str) -> Result<Arc<dyn Registry>> {
    Err(not_built("postgres"))
}

#[cfg(not(all(feature = "etcd", feature = "zk", feature = "postgres")))]
fn not_built(backend: &str) -> crate::BenchError {
    err(format!(
        "this build has no {backend} backend: build with `--features {backend}`"
    ))
}

/// Writes of the backend's bare primitive per second, one client, for `time`.
async fn raw_per_s(args: &RegistryArgs, run_id: &str, time: Duration) -> Result<f64> {
    let prefix = format!("dcron-bench-raw-{run_id}");
    let address = args.url.as_deref();
    let (writes, elapsed) = match args.backend {
        RegistryBackend::Redis => raw_redis(address, &prefix, time).await?,
        RegistryBackend::RedisCluster => {
            raw_redis_cluster(&redis_cluster_urls(address)?, &prefix, time).await?
        }
        RegistryBackend::Etcd => raw_etcd(address, &prefix, time).await?,
        RegistryBackend::Zk => raw_zk(address, &prefix, time).await?,
        RegistryBackend::Postgres => raw_postgres(address, &prefix, time).await?,
    };
    Ok(writes as f64 / elapsed.as_secs_f64().max(1e-9))
}

/// Keys `prefix/0 …` of batch `b` of `size`.
fn batch_keys(prefix: &str, b: usize, size: usize) -> Vec<String> {
    (b * size..(b + 1) * size)
        .map(|i| format!("{prefix}/{i}"))
        .collect()
}

async fn raw_redis(address: Option<&str>, prefix: &str, time: Duration) -> Result<(u64, Duration)> {
    use deadpool_redis::{redis, Config, Runtime};
    const BATCH: usize = 1_000;
    let url = crate::cluster::redis_url(address);
    let pool = Config::from_url(url.as_str())
        .create_pool(Some(Runtime::Tokio1))
        .map_err(|e| err(format!("redis pool: {e}")))?;
    let mut conn = pool
        .get()
        .await
        .map_err(|e| err(format!("cannot reach Redis at {url}: {e}")))?;
    let t0 = Instant::now();
    let mut written = 0u64;
    let mut b = 0;
    while t0.elapsed() < time {
        let mut pipe = redis::pipe();
        for key in batch_keys(prefix, b, BATCH) {
            pipe.cmd("SET")
                .arg(key)
                .arg("1")
                .arg("NX")
                .arg("PX")
                .arg(60_000)
                .ignore();
        }
        pipe.query_async::<()>(&mut *conn)
            .await
            .map_err(|e| err(format!("redis pipelined SET NX PX: {e}")))?;
        written += BATCH as u64;
        b += 1;
    }
    let elapsed = t0.elapsed();
    // The keys expire by themselves within a minute; delete them now anyway.
    for i in 0..b {
        let _: std::result::Result<(), _> = redis::cmd("DEL")
            .arg(batch_keys(prefix, i, BATCH))
            .query_async(&mut *conn)
            .await;
    }
    Ok((written, elapsed))
}

/// The seed URLs of a Redis Cluster: the flag's comma-separated list, else
/// `$DCRON_TEST_REDIS_CLUSTER_URLS` (printed by `scripts/services/redis-cluster.sh`).
///
/// # Errors
/// When neither names a URL.
pub fn redis_cluster_urls(flag: Option<&str>) -> Result<Vec<String>> {
    let list = match flag {
        Some(list) => list.to_string(),
        None => std::env::var(dcron_registry_redis::TEST_CLUSTER_URLS_ENV).unwrap_or_default(),
    };
    let urls: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect();
    if urls.is_empty() {
        return Err(err(format!(
            "no Redis Cluster: pass --url redis://host:port,... or set {} \
             (`eval \"$(bash scripts/services/redis-cluster.sh)\"` starts one on loopback)",
            dcron_registry_redis::TEST_CLUSTER_URLS_ENV
        )));
    }
    Ok(urls)
}

/// The raw primitive on a Redis Cluster: the same pipelined `SET NX PX`, 1,000 per round,
/// through the `redis` crate's cluster client. A cluster pipeline must stay in one hash slot,
/// so each round's keys carry one of [`RAW_CLUSTER_TAGS`] hash tags (spread over the masters)
/// and go as one pipeline per tag, all sent at once, as dcron splits a claim batch per bucket.
async fn raw_redis_cluster(
    urls: &[String],
    prefix: &str,
    time: Duration,
) -> Result<(u64, Duration)> {
    use redis::cluster::ClusterClient;
    const BATCH: usize = 1_000;
    let client =
        ClusterClient::new(urls.to_vec()).map_err(|e| err(format!("redis cluster client: {e}")))?;
    let conn = tokio::time::timeout(Duration::from_secs(10), client.get_async_connection())
        .await
        .map_err(|_| err("cannot reach the Redis Cluster: no answer within 10 s"))?
        .map_err(|e| err(format!("cannot reach the Redis Cluster at {urls:?}: {e}")))?;
    let tagged = |b: usize| -> Vec<Vec<String>> {
        let mut groups = vec![Vec::new(); RAW_CLUSTER_TAGS];
        for (i, key) in batch_keys(prefix, b, BATCH).into_iter().enumerate() {
            let tag = i % RAW_CLUSTER_TAGS;
            groups[tag].push(format!("{{raw{tag}}}{key}"));
        }
        groups
    };
    let send = |groups: Vec<Vec<String>>, del: bool| {
        let calls = groups.into_iter().map(|keys| {
            let mut conn = conn.clone();
            async move {
                let mut pipe = redis::pipe();
                for key in keys {
                    if del {
                        pipe.cmd("DEL").arg(key).ignore();
                    } else {
                        pipe.cmd("SET")
                            .arg(key)
                            .arg("1")
                            .arg("NX")
                            .arg("PX")
                            .arg(60_000)
                            .ignore();
                    }
                }
                pipe.query_async::<()>(&mut conn).await
            }
        });
        futures::future::join_all(calls)
    };
    let t0 = Instant::now();
    let mut written = 0u64;
    let mut b = 0;
    while t0.elapsed() < time {
        for answer in send(tagged(b), false).await {
            answer.map_err(|e| err(format!("redis cluster pipelined SET NX PX: {e}")))?;
        }
        written += BATCH as u64;
        b += 1;
    }
    let elapsed = t0.elapsed();
    // The keys expire within a minute; delete them now anyway.
    for i in 0..b {
        send(tagged(i), true).await;
    }
    Ok((written, elapsed))
}

/// The hash tags the raw cluster measurement spreads its keys over.
const RAW_CLUSTER_TAGS: usize = 16;

#[cfg(feature = "etcd")]
async fn raw_etcd(address: Option<&str>, prefix: &str, time: Duration) -> Result<(u64, Duration)> {
    use etcd_client::{Client, Compare, CompareOp, DeleteOptions, Txn, TxnOp};
    const BATCH: usize = 128;
    let endpoints: Vec<String> = match address {
        Some(a) => vec![a.to_string()],
        None => std::env::var("DCRON_TEST_ETCD_ENDPOINTS")
            .unwrap_or_else(|_| "127.0.0.1:2379".into())
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
    };
    let mut client =
        tokio::time::timeout(Duration::from_secs(10), Client::connect(&endpoints, None))
            .await
            .map_err(|_| err("cannot reach etcd: no answer within 10 s"))?
            .map_err(|e| err(format!("cannot reach etcd: {e}")))?;
    let t0 = Instant::now();
    let mut written = 0u64;
    let mut b = 0;
    while t0.elapsed() < time {
        let keys = batch_keys(prefix, b, BATCH);
        let txn = Txn::new()
            .when(
                keys.iter()
                    .map(|k| Compare::create_revision(k.as_str(), CompareOp::Equal, 0))
                    .collect::<Vec<_>>(),
            )
            .and_then(
                keys.iter()
                    .map(|k| TxnOp::put(k.as_str(), "1", None))
                    .collect::<Vec<_>>(),
            );
        let answer = client
            .txn(txn)
            .await
            .map_err(|e| err(format!("etcd txn puts: {e}")))?;
        if !answer.succeeded() {
            return Err(err("etcd txn puts: a fresh key already existed"));
        }
        written += BATCH as u64;
        b += 1;
    }
    let elapsed = t0.elapsed();
    client
        .delete(
            format!("{prefix}/"),
            Some(DeleteOptions::new().with_prefix()),
        )
        .await
        .map_err(|e| err(format!("etcd cleanup: {e}")))?;
    Ok((written, elapsed))
}

#[cfg(not(feature = "etcd"))]
async fn raw_etcd(_: Option<&str>, _: &str, _: Duration) -> Result<(u64, Duration)> {
    Err(not_built("etcd"))
}

#[cfg(feature = "zk")]
async fn raw_zk(address: Option<&str>, prefix: &str, time: Duration) -> Result<(u64, Duration)> {
    use zookeeper_async::{Acl, CreateMode, WatchedEvent, ZooKeeper, ZooKeeperExt};
    const IN_FLIGHT: usize = 256;
    fn ignore(_: WatchedEvent) {}
    let hosts = match address {
        Some(a) => a.to_string(),
        None => std::env::var("DCRON_TEST_ZK_CONNECT").unwrap_or_else(|_| "127.0.0.1:2181".into()),
    };
    let zk = tokio::time::timeout(
        Duration::from_secs(10),
        ZooKeeper::connect(&hosts, Duration::from_secs(10), ignore),
    )
    .await
    .map_err(|_| err("cannot reach ZooKeeper: no answer within 10 s"))?
    .map_err(|e| err(format!("cannot reach ZooKeeper at {hosts}: {e:?}")))?;
    let root = format!("/{prefix}");
    let acl = Acl::open_unsafe().clone();
    zk.create(&root, Vec::new(), acl.clone(), CreateMode::Persistent)
        .await
        .map_err(|e| err(format!("zk create {root}: {e:?}")))?;
    let t0 = Instant::now();
    let mut written = 0u64;
    let mut b = 0;
    while t0.elapsed() < time {
        let creates = batch_keys(&root, b, IN_FLIGHT).into_iter().map(|path| {
            let (zk, acl) = (&zk, acl.clone());
            async move {
                zk.create(&path, b"1".to_vec(), acl, CreateMode::Persistent)
                    .await
            }
        });
        for created in futures::future::join_all(creates).await {
            created.map_err(|e| err(format!("zk create: {e:?}")))?;
        }
        written += IN_FLIGHT as u64;
        b += 1;
    }
    let elapsed = t0.elapsed();
    // Remove what was written the way it was written: IN_FLIGHT deletes at once.
    for i in 0..b {
        let deletes = batch_keys(&root, i, IN_FLIGHT).into_iter().map(|path| {
            let zk = &zk;
            async move { zk.delete(&path, None).await }
        });
        futures::future::join_all(deletes).await;
    }
    if let Err(e) = zk.delete_recursive(&root).await {
        eprintln!("dcron-bench: could not remove {root}: {e:?}");
    }
    let _ = zk.close().await;
    Ok((written, elapsed))
}

#[cfg(not(feature = "zk"))]
async fn raw_zk(_: Option<&str>, _: &str, _: Duration) -> Result<(u64, Duration)> {
    Err(not_built("zk"))
}

#[cfg(feature = "postgres")]
async fn raw_postgres(
    address: Option<&str>,
    prefix: &str,
    time: Duration,
) -> Result<(u64, Duration)> {
    const BATCH: usize = 1_000;
    let url = postgres_url(address);
    let (client, connection) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_postgres::connect(&url, tokio_postgres::NoTls),
    )
    .await
    .map_err(|_| err("cannot reach PostgreSQL: no answer within 10 s"))?
    .map_err(|e| err(format!("cannot reach PostgreSQL: {e}")))?;
    let driver = tokio::spawn(connection);
    let table = format!("dcron_bench_scratch_{}", prefix.replace(['-', '/'], "_"));
    let pg = |e: tokio_postgres::Error| err(format!("postgres: {e}"));
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (k text PRIMARY KEY, holder text NOT NULL, \
             expires_at timestamptz NOT NULL)"
        ))
        .await
        .map_err(pg)?;
    let insert = client
        .prepare(&format!(
            "INSERT INTO {table} (k, holder, expires_at) \
             SELECT unnest($1::text[]), 'bench', now() + interval '60 seconds' \
             ON CONFLICT DO NOTHING"
        ))
        .await
        .map_err(pg)?;
    let t0 = Instant::now();
    let mut written = 0u64;
    let mut b = 0;
    let mut outcome = Ok(());
    while t0.elapsed() < time {
        let keys = batch_keys(prefix, b, BATCH);
        match client.execute(&insert, &[&keys]).await {
            Ok(n) => written += n,
            Err(e) => {
                outcome = Err(pg(e));
                break;
            }
        }
        b += 1;
    }
    let elapsed = t0.elapsed();
    let dropped = client
        .batch_execute(&format!("DROP TABLE IF EXISTS {table}"))
        .await;
    drop(client);
    let _ = driver.await;
    outcome?;
    dropped.map_err(pg)?;
    Ok((written, elapsed))
}

#[cfg(not(feature = "postgres"))]
async fn raw_postgres(_: Option<&str>, _: &str, _: Duration) -> Result<(u64, Duration)> {
    Err(not_built("postgres"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(burst: usize, p99_us: i64) -> Step {
        Step {
            burst,
            p99_us,
            claimed_per_s: 0.0,
            counts: ExactlyOnce::default(),
            setup: Duration::ZERO,
        }
    }

    #[test]
    fn the_search_doubles_while_held_and_within_bounds() {
        let budget = Duration::from_secs(60);
        let early = Duration::from_secs(5);
        let next =
            |s: &Step, held_before, max, spent| next_burst(s, held_before, max, spent, budget);
        assert_eq!(next(&step(256, 50_000), false, 65_536, early), Some(512));
        assert_eq!(next(&step(512, 50_001), true, 65_536, early), None);
        assert_eq!(next(&step(256, 50_001), false, 65_536, early), Some(128));
        assert_eq!(next(&step(16, 50_001), false, 65_536, early), None);
        assert_eq!(next(&step(65_536, 1_000), true, 65_536, early), None);
        let late = Duration::from_secs(30);
        assert_eq!(next(&step(256, 1_000), false, 65_536, late), None);
        assert_eq!(next(&step(usize::MAX, 0), true, usize::MAX, early), None);
    }

    #[test]
    fn the_claim_profile_reads_the_last_instant() {
        let instant_ms = 10_000;
        let at = |ms: i64| instant_ms * 1000 + ms * 1000;
        let calls = [
            // The instant before: not part of the last instant's send/answer times.
            ClaimCall {
                start_us: at(-1_100),
                end_us: at(-1_050),
                fires: 256,
            },
            ClaimCall {
                start_us: at(-100),
                end_us: at(-60),
                fires: 256,
            },
            ClaimCall {
                start_us: at(-60),
                end_us: at(30),
                fires: 1_000,
            },
        ];
        let p = ClaimProfile::of(&calls, instant_ms);
        assert_eq!(p.calls, 3);
        assert_eq!(p.max_fires, 1_000);
        assert_eq!(p.max_call_us, 90_000);
        assert_eq!(p.mean_call_us, (50_000 + 40_000 + 90_000) / 3);
        assert_eq!(p.first_sent_us, -100_000);
        assert_eq!(p.last_answered_us, 30_000);
        assert_eq!(ClaimProfile::of(&[], instant_ms), ClaimProfile::default());
    }

    #[test]
    fn a_step_with_fires_that_never_ran_has_an_infinite_p99() {
        assert_eq!(p99_text(i64::MAX), "inf");
        assert_eq!(p99_text(1_500), ms(1_500.0));
    }

    #[test]
    fn the_burst_plot_sits_next_to_the_throughput_plot() {
        assert_eq!(
            burst_plot_path(std::path::Path::new("docs/registry-redis.svg")),
            std::path::PathBuf::from("docs/registry-redis-burst.svg")
        );
    }

    #[test]
    fn claimed_rate_is_fires_over_time_in_claim_calls() {
        // 2,000 fires claimed in 20 ms of claim calls: 100,000 fires/s.
        assert_eq!(claimed_rate(2_000, 20_000_000), 100_000.0);
        assert_eq!(claimed_rate(0, 0), 0.0);
    }
}
