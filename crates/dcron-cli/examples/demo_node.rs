//! A dcron node on Redis that runs every dynamic task, to try `dcronctl` against.
//!
//! `cargo run -p dcron-cli --example demo_node -- <name>` with `DCRON_REGISTRY_URL` (default
//! `redis://127.0.0.1:6379`) and `DCRON_NAMESPACE` (default `dcron`). A task whose payload is
//! `fail` fails, to show failed results. Runs until Ctrl-C, then leaves gracefully.

use std::time::Duration;

use dcron_core::Dcron;
use dcron_registry_redis::RedisRegistry;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let name = std::env::args().nth(1).unwrap_or_else(|| "demo".into());
    let url =
        std::env::var("DCRON_REGISTRY_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let namespace = std::env::var("DCRON_NAMESPACE").unwrap_or_else(|_| "dcron".into());
    let registry = RedisRegistry::builder(url).namespace(namespace).build()?;
    let node = Dcron::builder(registry)
        .node_name(name.clone())
        .ttl(Duration::from_secs(5))
        .poll_interval(Duration::from_secs(1))
        .task_run_fn(move |ctx| {
            let name = name.clone();
            async move {
                println!("{name}: {} @ {}", ctx.name(), ctx.scheduled);
                if ctx.payload() == "fail" {
                    return Err("the payload asked for a failure".into());
                }
                Ok(())
            }
        })
        .build()?;
    node.start().await?;
    println!("node {} started; Ctrl-C to stop", node.node_id());
    tokio::signal::ctrl_c().await?;
    node.stop().await?;
    Ok(())
}
