//! Two dcron nodes sharing one ZooKeeper namespace run a task every second for about five
//! seconds; each fire runs on exactly one of them.
//!
//! Needs a ZooKeeper (`scripts/services/zk.sh` starts one); the address comes from
//! `DCRON_ZK_CONNECT` / `DCRON_TEST_ZK_CONNECT` (default `127.0.0.1:2181`).
//!
//! `cargo run -p dcron-registry-zk --example basic`

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use dcron_core::{Dcron, Registry};
use dcron_registry_zk::{ZkRegistry, ZkRegistryConfig};

type Runs = Arc<Mutex<BTreeMap<DateTime<Utc>, Vec<String>>>>;

#[tokio::main]
async fn main() -> dcron_core::Result<()> {
    let namespace = format!("/dcron-examples/basic-{}", std::process::id());
    let config = ZkRegistryConfig::from_env().namespace(namespace.clone());
    println!(
        "ZooKeeper {} namespace {namespace}",
        config.connect_string()
    );
    let runs: Runs = Arc::default();

    let mut nodes = Vec::new();
    for name in ["alpha", "beta"] {
        // One registry per node, as two processes would have.
        let registry = ZkRegistry::connect(config.clone()).await?;
        let node = Dcron::builder(registry)
            .node_name(name)
            .ttl(Duration::from_secs(3))
            .build()?;
        let runs = runs.clone();
        node.add_func("heartbeat", "* * * * * *", move |ctx| {
            let runs = runs.clone();
            let who = name.to_string();
            async move {
                println!(
                    "{who:>5} ran {} @ {} (token {})",
                    ctx.name(),
                    ctx.scheduled.format("%H:%M:%S"),
                    ctx.token
                );
                if let Ok(mut r) = runs.lock() {
                    r.entry(ctx.scheduled).or_default().push(who);
                }
                Ok(())
            }
        })
        .await?;
        node.start().await?;
        nodes.push(node);
    }

    tokio::time::sleep(Duration::from_secs(5)).await;
    for node in &nodes {
        node.stop().await?;
    }
    let cleanup = ZkRegistry::connect(config).await?;
    cleanup.cleanup_all().await?;

    let runs = runs.lock().map(|r| r.clone()).unwrap_or_default();
    let twice: Vec<_> = runs.iter().filter(|(_, who)| who.len() > 1).collect();
    println!("{} fires, {} run twice", runs.len(), twice.len());
    if !twice.is_empty() {
        return Err(dcron_core::Error::InvalidState(format!(
            "fires ran twice: {twice:?}"
        )));
    }
    Ok(())
}
