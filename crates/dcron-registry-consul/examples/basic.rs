//! Two dcron nodes sharing one Consul namespace run a task every second for about twelve
//! seconds; each fire runs on exactly one of them.
//!
//! ```sh
//! cargo run -p dcron-registry-consul --example basic -- http://127.0.0.1:8500
//! ```
//!
//! The address is the first argument, else Consul's `CONSUL_HTTP_ADDR`, else
//! `http://127.0.0.1:8500`; `CONSUL_HTTP_TOKEN`, `CONSUL_CACERT` and the other standard
//! variables apply.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use dcron_core::{Dcron, Registry};
use dcron_registry_consul::{ConsulRegistry, ConsulRegistryConfig};

type Runs = Arc<Mutex<BTreeMap<DateTime<Utc>, Vec<String>>>>;

#[tokio::main]
async fn main() -> dcron_core::Result<()> {
    let namespace = format!("dcron-examples-basic-{}", std::process::id());
    let mut config = ConsulRegistryConfig::from_consul_env()?.with_namespace(namespace.clone());
    if let Some(address) = std::env::args().nth(1) {
        config.address = address;
    }
    let address = config.address.clone();
    println!("Consul {address} namespace {namespace}");
    let runs: Runs = Arc::default();

    let mut nodes = Vec::new();
    for name in ["alpha", "beta"] {
        // One registry per node, as two processes would have.
        let registry = match ConsulRegistry::connect(config.clone()).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("cannot use Consul at {address}: {e}");
                return Err(e);
            }
        };
        // Consul's smallest session TTL is 10 s; renew well within it.
        let node = Dcron::builder(registry)
            .node_name(name)
            .ttl(Duration::from_secs(10))
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

    tokio::time::sleep(Duration::from_secs(12)).await;
    for node in &nodes {
        node.stop().await?;
    }
    ConsulRegistry::connect(config).await?.cleanup_all().await?;

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
