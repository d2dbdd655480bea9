//! `latency`: n tasks firing every second on one node, dcron then tokio-cron-scheduler.
//!
//! Each system runs in its own child process (`dcron-bench latency-child …`) so that CPU time
//! and resident memory are measured on a clean process, with the same tokio runtime (one worker
//! thread per core) and the same recording code in the handler.
//!
//! Method, for both systems:
//! - n tasks with the schedule "every second" (`* * * * * *`), handlers that only record;
//! - lateness = handler start (first poll of the handler's future, wall clock) minus the
//!   scheduled instant. dcron hands the handler its scheduled instant (`FireContext::scheduled`).
//!   tokio-cron-scheduler does not; its scheduled instant is the whole second the job was due,
//!   taken as the whole second at or before the handler's start. That is exact while its
//!   lateness stays under a second; beyond, it under-reports (in its favour), and the fires of
//!   skipped seconds show as `missed`;
//! - after setup and a warm-up of at least 1.5 s, the window is `seconds` whole seconds; only
//!   fires scheduled in it count; CPU time is read half a second before the window's first and
//!   last instants (so it spans exactly `seconds` bursts); memory per task is the resident set
//!   growth from before the tasks were created to just before the window, divided by n.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use dcron_core::{Dcron, DcronEvent, MemoryRegistry, SecondsField};
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_cron_scheduler::{Job, JobScheduler};

use crate::cli::{ChildArgs, LatencyArgs, System};
use crate::exactly::{verdict_of, ExactlyOnce, Expected, Plan};
use crate::recorder::{in_window, now_us, Recorder};
use crate::stats::Distribution;
use crate::summary::{ms, ratio, Summary};
use crate::sys::{cpu_time, rss_bytes};
use crate::{err, plot, Result};

/// The every-second schedule both systems run (six fields, seconds first).
pub const EVERY_SECOND: &str = "* * * * * *";
/// The least warm-up between the end of the setup and the window.
const WARMUP_MS: i64 = 1_500;
/// How long after the window late fires are still waited for.
const DRAIN_MS: i64 = 3_000;
/// The longest a setup (adding the tasks, starting) may take.
const SETUP_LIMIT: Duration = Duration::from_secs(600);

/// The name of task `i`.
pub fn task_name(i: usize) -> String {
    format!("task-{i:07}")
}

/// Runs both systems in child processes, prints their summaries and the ratio line, and
/// writes the plot when asked.
///
/// # Errors
/// When a child cannot be started, fails, or prints no summary; when the plot cannot be
/// written.
pub fn run(args: &LatencyArgs, out: &mut dyn Write) -> Result<()> {
    let exe = std::env::current_exe()?;
    let dir = std::env::temp_dir().join(format!("dcron-bench-latency-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    writeln!(out, "# machine: {}", crate::sys::machine())?;
    let mut results = Vec::new();
    for system in [
        System::Dcron,
        System::TokioCronScheduler,
        System::TokioTimers,
    ] {
        let samples = dir.join(format!("{}.samples", system.name()));
        let output = Command::new(&exe)
            .arg("latency-child")
            .args(["--system", system.name()])
            .args(["--tasks", &args.tasks.to_string()])
            .args(["--seconds", &args.seconds.to_string()])
            .args(["--claim-ahead-ms", &args.claim_ahead_ms.to_string()])
            .arg("--samples")
            .arg(&samples)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| err(format!("cannot start {}: {e}", exe.display())))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        for line in stdout.lines() {
            writeln!(out, "{line}")?;
        }
        out.flush()?;
        // A child that printed its summary and then failed its exactly-once verdict is judged
        // below, after every system ran; one that printed nothing failed to run at all.
        let summary = stdout.lines().find_map(Summary::parse).ok_or_else(|| {
            err(format!(
                "the {} run printed no summary ({})",
                system.name(),
                output.status
            ))
        })?;
        let lateness = read_samples(&samples)?;
        results.push((system, summary, Distribution::new(lateness)));
    }
    let _ = std::fs::remove_dir_all(&dir);

    let (_, d_sum, d_dist) = &results[0];
    let (_, t_sum, t_dist) = &results[1];
    let (_, _, f_dist) = &results[2];
    let q = |d: &Distribution, p: f64| d.quantile(p).unwrap_or(0) as f64;
    let num = |s: &Summary, k: &str| s.number(k).unwrap_or(0.0);
    let line = Summary::new("latency-ratio")
        .field("tasks", args.tasks)
        .field("seconds", args.seconds)
        .field("baseline", System::TokioCronScheduler.name())
        .field("dcron_p99_ms", ms(q(d_dist, 0.99)))
        .field("tcs_p99_ms", ms(q(t_dist, 0.99)))
        .field("tokio_timers_p99_ms", ms(q(f_dist, 0.99)))
        .field("p50_ratio", ratio(q(t_dist, 0.5), q(d_dist, 0.5)))
        .field("p99_ratio", ratio(q(t_dist, 0.99), q(d_dist, 0.99)))
        .field(
            "max_ratio",
            ratio(
                t_dist.max().unwrap_or(0) as f64,
                d_dist.max().unwrap_or(0) as f64,
            ),
        )
        .field(
            "cpu_per_fire_ratio",
            ratio(num(t_sum, "cpu_us_per_fire"), num(d_sum, "cpu_us_per_fire")),
        )
        .field(
            "memory_per_task_ratio",
            ratio(
                num(t_sum, "rss_bytes_per_task"),
                num(d_sum, "rss_bytes_per_task"),
            ),
        );
    writeln!(out, "{line}")?;
    if let Some(path) = &args.plot {
        let title = format!(
            "Fire lateness, {} tasks every second, one node ({} s)",
            args.tasks, args.seconds
        );
        plot::lateness_cdf(
            path,
            &title,
            &[
                (System::Dcron.name(), d_dist),
                (System::TokioCronScheduler.name(), t_dist),
                (System::TokioTimers.name(), f_dist),
            ],
        )?;
        writeln!(out, "# plot written to {}", path.display())?;
    }
    // Every system's line carries exactly-once counts; dcron's failing any fails the run. A
    // baseline's are printed for comparison only: a third-party scheduler that misses a fire on
    // a loaded machine says something about it, not about dcron.
    let failures: Vec<String> = results
        .iter()
        .filter(|(system, _, _)| *system == System::Dcron)
        .filter_map(|(_, s, _)| verdict_of(s).err().map(|e| e.to_string()))
        .collect();
    if failures.is_empty() {
        Ok(())
    } else {
        Err(err(failures.join("; ")))
    }
}

fn read_samples(path: &Path) -> Result<Vec<i64>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| err(format!("cannot read samples {}: {e}", path.display())))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.trim()
                .parse()
                .map_err(|_| err(format!("bad sample `{l}` in {}", path.display())))
        })
        .collect()
}

/// Runs one system in this process and returns its summary (the `latency-child` command).
///
/// # Errors
/// When the system cannot be set up in time, or `/proc` cannot be read.
pub fn run_child(args: &ChildArgs) -> Result<Summary> {
    let rt = crate::runtime()?;
    rt.block_on(child(args))
}

enum Running {
    Dcron(Dcron),
    Tcs(JobScheduler),
    Timers(Vec<tokio::task::JoinHandle<()>>),
}

impl Running {
    async fn stop(self) -> Result<()> {
        match self {
            Running::Dcron(node) => node.stop().await.map(drop).map_err(Into::into),
            Running::Tcs(mut sched) => sched
                .shutdown()
                .await
                .map_err(|e| err(format!("tokio-cron-scheduler shutdown: {e}"))),
            Running::Timers(tasks) => {
                for t in tasks {
                    t.abort();
                }
                Ok(())
            }
        }
    }
}

async fn child(args: &ChildArgs) -> Result<Summary> {
    let n = args.tasks;
    let seconds = args.seconds as i64;
    let recorder = Arc::new(Recorder::with_capacity(
        n.saturating_mul(args.seconds as usize + 4),
    ));
    // Nothing is kept until the window is known (the setup may take a while).
    recorder.keep_from(i64::MAX);
    let rss0 = rss_bytes()?;
    let t0 = Instant::now();
    let since_ms = now_us().div_euclid(1000);
    let running = match args.system {
        System::Dcron => Running::Dcron(start_dcron(n, &recorder, args.claim_ahead_ms).await?),
        System::TokioCronScheduler => Running::Tcs(start_tcs(n, &recorder).await?),
        System::TokioTimers => Running::Timers(start_timers(n, &recorder)),
    };
    let setup = t0.elapsed();

    let w0 = ((now_us() / 1000 + WARMUP_MS).div_euclid(1000) + 1) * 1000;
    let w1 = w0 + seconds * 1000;
    recorder.keep_from(w0);
    sleep_until_wall_ms(w0 - 500).await;
    let rss_a = rss_bytes()?;
    let cpu_a = cpu_time()?;
    sleep_until_wall_ms(w1 - 500).await;
    let cpu_b = cpu_time()?;
    sleep_until_wall_ms(w1 + DRAIN_MS).await;
    running.stop().await?;

    let fires = in_window(&recorder.fires(), w0, w1);
    if let Some(path) = &args.samples {
        let mut text = String::with_capacity(fires.len() * 8);
        for f in &fires {
            text.push_str(&f.lateness_us.to_string());
            text.push('\n');
        }
        std::fs::write(path, text)
            .map_err(|e| err(format!("cannot write {}: {e}", path.display())))?;
    }
    // Judged on every fire kept (the window and the drain after it), against the window.
    let counts = ExactlyOnce::check(
        recorder.fires().iter().map(|f| (f.tag, f.scheduled_ms)),
        &Expected {
            plan: Plan::EverySecond,
            tasks: n,
            since_ms,
            window: (w0, w1),
        },
    );
    let in_window_fires = fires.len() as u64;
    let dist = Distribution::new(fires.iter().map(|f| f.lateness_us).collect());
    let cpu_us = (cpu_b.saturating_sub(cpu_a)).as_micros() as f64;
    let q = |p: f64| ms(dist.quantile(p).unwrap_or(0) as f64);
    let summary = Summary::new("latency")
        .field("system", args.system.name())
        .field("tasks", n)
        .field("seconds", seconds)
        .field("fires", in_window_fires)
        .field("expected", counts.expected);
    Ok(counts
        .fields(summary)
        .field("min_ms", q(0.0))
        .field("p50_ms", q(0.5))
        .field("p90_ms", q(0.9))
        .field("p99_ms", q(0.99))
        .field("p999_ms", q(0.999))
        .field("max_ms", ms(dist.max().unwrap_or(0) as f64))
        .field("mean_ms", ms(dist.mean()))
        .field(
            "cpu_us_per_fire",
            format!("{:.2}", cpu_us / in_window_fires.max(1) as f64),
        )
        .field("cpu_cores", format!("{:.3}", cpu_us / 1e6 / seconds as f64))
        .field(
            "rss_bytes_per_task",
            (rss_a.saturating_sub(rss0)) / n as u64,
        )
        .field("setup_s", format!("{:.3}", setup.as_secs_f64()))
        .field("overflow", recorder.overflow()))
}

/// Sleeps until the wall clock reads `ms` (milliseconds since the epoch); returns at once if
/// that is past.
pub async fn sleep_until_wall_ms(ms: i64) {
    let delta = ms * 1000 - now_us();
    if delta > 0 {
        tokio::time::sleep(Duration::from_micros(delta as u64)).await;
    }
}

/// Adds `n` every-second tasks (`task_name(0..n)`) to `node`, each recording its fires'
/// lateness in `recorder`.
///
/// # Errors
/// When a task cannot be added.
pub async fn add_recording_tasks(node: &Dcron, n: usize, recorder: &Arc<Recorder>) -> Result<()> {
    for i in 0..n {
        let rec = recorder.clone();
        node.add_func(&task_name(i), EVERY_SECOND, move |ctx| {
            let rec = rec.clone();
            async move {
                rec.record(ctx.scheduled.timestamp_micros(), now_us(), i as i64);
                Ok(())
            }
        })
        .await?;
    }
    Ok(())
}

async fn start_dcron(n: usize, recorder: &Arc<Recorder>, claim_ahead_ms: u64) -> Result<Dcron> {
    let node = Dcron::builder(MemoryRegistry::new())
        .seconds(SecondsField::Required)
        .claim_ahead(Duration::from_millis(claim_ahead_ms))
        .build()?;
    add_recording_tasks(&node, n, recorder).await?;
    let mut events = node.events();
    node.start().await?;
    wait_owned(&node, &mut events, n, SETUP_LIMIT).await?;
    Ok(node)
}

/// One task per job, each sleeping until the next whole second on tokio's timer, then
/// recording: no scheduler, the floor of one woken task per fire.
fn start_timers(n: usize, recorder: &Arc<Recorder>) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|i| {
            let rec = recorder.clone();
            tokio::spawn(async move {
                loop {
                    let next_ms = (now_us() / 1000).div_euclid(1000) * 1000 + 1000;
                    sleep_until_wall_ms(next_ms).await;
                    rec.record(next_ms * 1000, now_us(), i as i64);
                }
            })
        })
        .collect()
}

async fn start_tcs(n: usize, recorder: &Arc<Recorder>) -> Result<JobScheduler> {
    let tcs =
        |e: tokio_cron_scheduler::JobSchedulerError| err(format!("tokio-cron-scheduler: {e}"));
    // Its activation channel is a broadcast channel of this size; the default (200) drops
    // activations when more jobs are due at once, so give it room for every job.
    let sched = JobScheduler::new_with_channel_size((2 * n).max(200))
        .await
        .map_err(tcs)?;
    for i in 0..n {
        let rec = recorder.clone();
        let job = Job::new_async(EVERY_SECOND, move |_id, _sched| {
            let rec = rec.clone();
            Box::pin(async move {
                let now = now_us();
                rec.record(now.div_euclid(1_000_000) * 1_000_000, now, i as i64);
            })
        })
        .map_err(tcs)?;
        sched.add(job).await.map_err(tcs)?;
    }
    sched.start().await.map_err(tcs)?;
    Ok(sched)
}

/// Waits until `node` owns `n` tasks (its `Rebalanced` event, or its view), at most `limit`.
///
/// # Errors
/// When the node does not own `n` tasks within `limit`.
pub async fn wait_owned(
    node: &Dcron,
    events: &mut broadcast::Receiver<DcronEvent>,
    n: usize,
    limit: Duration,
) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let tick = (Instant::now() + Duration::from_secs(1)).min(deadline);
        match tokio::time::timeout_at(tick, events.recv()).await {
            Ok(Ok(DcronEvent::Rebalanced { owned, .. })) if owned == n => return Ok(()),
            Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(broadcast::error::RecvError::Closed)) => {
                return Err(err("the node ended before owning its tasks"))
            }
            Err(_) => {
                let owned = node.my_running_tasks().len();
                if owned == n {
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    return Err(err(format!(
                        "the node owns {owned} of {n} tasks after {limit:?}; giving up"
                    )));
                }
            }
        }
    }
}
