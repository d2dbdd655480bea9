//! Two dcron nodes sharing one Redis server: a task every second runs on exactly one of them.
//!
//! `cargo run -p dcron-registry-redis --example basic` (uses `DCRON_TEST_REDIS_URL`, default
//! `redis://127.0.0.1:6379`; `scripts/services/redis.sh` starts a local server). Runs for about
//! five seconds, prints who ran what, stops both nodes, and exits non-zero if a fire ran twice.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use dcron_core::{Dcron, Registry};
use dcron_registry_redis::RedisRegistry;

const NAMESPACE: &str = "dcron-example-basic";

/// Fire instant → the nodes that ran it.
type Runs = Arc<Mutex<BTreeMap<DateTime<Utc>, Vec<String>>>>;

async fn node(name: &str, runs: &Runs) -> dcron_core::Result<Dcron> {
    // Each node gets its own client, as two processes would.
    let registry = RedisRegistry::builder(RedisRegistry::env_url())
        .namespace(NAMESPACE)
        .build()?;
    let node = Dcron::builder(registry)
        .node_name(name)
        .ttl(Duration::from_secs(3))
        .build()?;
    let (runs, me) = (runs.clone(), name.to_string());
    node.add_func("every-second", "* * * * * *", move |ctx| {
        let (runs, me) = (runs.clone(), me.clone());
        async move {
            println!(
                "{me} ran {} @ {} (fencing token {})",
                ctx.name(),
                ctx.scheduled.format("%H:%M:%S"),
                ctx.token
            );
            if let Ok(mut runs) = runs.lock() {
                runs.entry(ctx.scheduled).or_default().push(me);
            }
            Ok(())
        }
    })
    .await?;
    node.start().await?;
    Ok(node)
}

async fn run() -> dcron_core::Result<bool> {
    let admin = RedisRegistry::builder(RedisRegistry::env_url())
        .namespace(NAMESPACE)
        .build()?;
    admin.ping().await?;
    admin.cleanup_all().await?;

    let runs: Runs = Arc::default();
    let a = node("node-a", &runs).await?;
    let b = node("node-b", &runs).await?;
    println!("two nodes started on {}", RedisRegistry::env_url());
    tokio::time::sleep(Duration::from_secs(5)).await;
    println!(
        "node-a owns {:?}, node-b owns {:?}",
        a.my_running_tasks(),
        b.my_running_tasks()
    );
    a.stop().await?;
    b.stop().await?;
    admin.cleanup_all().await?;

    let runs = runs.lock().map(|r| r.clone()).unwrap_or_default();
    let duplicates: Vec<_> = runs.iter().filter(|(_, who)| who.len() > 1).collect();
    println!(
        "{} fires ran, {} ran more than once{}",
        runs.len(),
        duplicates.len(),
        if duplicates.is_empty() { "" } else { ": BUG" }
    );
    Ok(duplicates.is_empty() && !runs.is_empty())
}

#[tokio::main]
async fn main() {
    let code = match run().await {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("basic example failed: {e}");
            eprintln!("is a Redis server running? try `bash scripts/services/redis.sh`");
            2
        }
    };
    std::process::exit(code);
}
