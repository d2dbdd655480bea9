//! Two dcron nodes sharing one etcd: a task every second runs on exactly one of them.
//!
//! `cargo run -p dcron-registry-etcd --example basic` (etcd at `DCRON_TEST_ETCD_ENDPOINTS`,
//! default `127.0.0.1:2379`; `scripts/services/etcd.sh` starts one).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use dcron_core::Dcron;
use dcron_registry_etcd::EtcdRegistryConfig;

type Runs = Arc<Mutex<BTreeMap<DateTime<Utc>, Vec<String>>>>;

async fn node(name: &str, namespace: &str, runs: &Runs) -> dcron_core::Result<Dcron> {
    let registry = EtcdRegistryConfig::from_env()
        .namespace(namespace)
        .connect()
        .await?;
    let node = Dcron::builder(registry)
        .node_name(name)
        .ttl(Duration::from_secs(3))
        .build()?;
    let (runs, label) = (runs.clone(), name.to_string());
    node.add_func("heartbeat", "* * * * * *", move |ctx| {
        let (runs, label) = (runs.clone(), label.clone());
        async move {
            println!(
                "{label} ran {} @ {} (token {})",
                ctx.name(),
                ctx.scheduled.format("%H:%M:%S"),
                ctx.token
            );
            runs.lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(ctx.scheduled)
                .or_default()
                .push(label);
            Ok(())
        }
    })
    .await?;
    Ok(node)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let namespace = format!(
        "dcron-example-basic-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let runs: Runs = Arc::default();
    let a = node("node-a", &namespace, &runs).await?;
    let b = node("node-b", &namespace, &runs).await?;
    a.start().await?;
    b.start().await?;
    println!("two nodes on etcd namespace `{namespace}`; running for 5 s");
    tokio::time::sleep(Duration::from_secs(5)).await;
    a.stop().await?;
    b.stop().await?;
    a.registry().cleanup_all().await?;

    let runs = runs.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for who in runs.values().flatten() {
        *per_node.entry(who.as_str()).or_default() += 1;
    }
    println!("{} fires run: {per_node:?}", runs.len());
    let duplicates: Vec<_> = runs.iter().filter(|(_, who)| who.len() > 1).collect();
    if !duplicates.is_empty() {
        return Err(format!("fires run more than once: {duplicates:?}").into());
    }
    if runs.is_empty() {
        return Err("no fire ran".into());
    }
    println!("every fire ran exactly once");
    Ok(())
}
