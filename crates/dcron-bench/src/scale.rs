//! `scale`: one node with many tasks: start time (adding the tasks, then assignment and heap),
//! resident memory per task, CPU per second at steady state.
//!
//! Task `i` fires once an hour, at second `i % 60` of minute `(i / 60) % 60`, so a million tasks
//! make about 278 fires per second spread over every second of the hour: steady state is the
//! scheduler's own cost plus a realistic trickle of fires, not a burst test (that is
//! `latency`). Every fire is kept in a ledger (task, instant) and judged exactly once against
//! the hourly schedule: `duplicates`, `missed` (in the window) and `unexpected`.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use dcron_core::{Dcron, MemoryRegistry, SecondsField};
use tokio::time::Instant;

use crate::cli::ScaleArgs;
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
    let (summary, counts) = rt.block_on(scale(args))?;
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
