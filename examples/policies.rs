//! Execution policies on a two-node cluster in one process (`MemoryRegistry`): a flaky task
//! retried with exponential backoff, a slow task cut by its timeout, a task paused and resumed
//! cluster-wide, a trigger-now, and the stored status of each task.
//!
//! `cargo run --example policies`

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dcron_core::{
    admin, Dcron, DcronEvent, LastResult, MemoryRegistry, RetryPolicy, SecondsField, TaskOptions,
};

async fn node(name: &str, registry: &MemoryRegistry) -> dcron_core::Result<Dcron> {
    let node = Dcron::builder(registry.clone())
        .node_name(name)
        .seconds(SecondsField::Optional)
        .ttl(Duration::from_secs(2))
        .poll_interval(Duration::from_millis(300))
        .status_interval(Duration::from_millis(300))
        .error_handler(|meta, err| eprintln!("  error handler: {}: {err}", meta.name))
        .build()?;
    // Fails twice per fire, then succeeds: each fire runs three attempts on one node.
    let calls = Arc::new(AtomicU32::new(0));
    node.add_func_with(
        "flaky",
        "*/3 * * * * *",
        TaskOptions::new().retry(
            RetryPolicy::exponential(4, Duration::from_millis(100))
                .max_interval(Duration::from_secs(1))
                .with_jitter(),
        ),
        move |ctx| {
            calls.fetch_add(1, Ordering::Relaxed);
            async move {
                if ctx.attempt < 3 {
                    Err(format!("attempt {} failed", ctx.attempt).into())
                } else {
                    Ok(())
                }
            }
        },
    )
    .await?;
    // Takes 10 s but may run for 500 ms: every fire times out.
    node.add_func_with(
        "slow",
        "*/4 * * * * *",
        TaskOptions::new().timeout(Duration::from_millis(500)),
        |ctx| async move {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(10)) => Ok(()),
                _ = ctx.cancel.cancelled() => Err("cancelled".into()),
            }
        },
    )
    .await?;
    node.add_func("heartbeat", "* * * * * *", |_ctx| async { Ok(()) })
        .await?;
    node.start().await?;
    Ok(node)
}

#[tokio::main]
async fn main() -> dcron_core::Result<()> {
    let registry = MemoryRegistry::new();
    let a = node("a", &registry).await?;
    let b = node("b", &registry).await?;
    let mut events = a.events();
    let mut events_b = b.events();

    tokio::time::sleep(Duration::from_secs(4)).await;
    println!("pausing `heartbeat` cluster-wide");
    a.pause_task("heartbeat").await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    println!("resuming `heartbeat`; triggering `flaky` once now");
    b.resume_task("heartbeat").await?;
    a.trigger_task("flaky").await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    a.stop().await?;
    b.stop().await?;

    let (mut retried, mut timed_out, mut paused, mut triggered) = (0, 0, 0, 0);
    for rx in [&mut events, &mut events_b] {
        while let Ok(ev) = rx.try_recv() {
            match ev {
                DcronEvent::Retried { .. } => retried += 1,
                DcronEvent::TimedOut(_) => timed_out += 1,
                DcronEvent::Skipped { .. } => paused += 1,
                DcronEvent::Triggered(_) => triggered += 1,
                _ => {}
            }
        }
    }
    for task in ["flaky", "slow", "heartbeat"] {
        if let Some(s) = admin::task_status(&registry, task).await? {
            let last = s
                .last_result
                .as_ref()
                .map_or_else(|| "-".to_string(), LastResult::to_string);
            println!(
                "status {task:10} runs={:3} failures={:3} last={last}",
                s.run_count, s.failure_count
            );
        }
    }
    println!(
        "summary retried={retried} timed_out={timed_out} skipped_while_paused={paused} triggered={triggered}"
    );
    Ok(())
}
