//! Two dcron nodes sharing one PostgreSQL database, and a handler that fences its own writes
//! with the claim's token.
//!
//! `cargo run -p examples --example postgres` (uses `DCRON_TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`; `scripts/services/postgres.sh` starts a local
//! server and prints the variable). A task runs every second for about five seconds; each run
//! writes its fire into an application table with `INSERT … ON CONFLICT DO UPDATE … WHERE
//! token < excluded.token`, so a stale writer (a paused node whose fire was claimed again in a
//! later life) could never overwrite a newer one. Exits non-zero if a fire ran twice.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use dcron_core::{Dcron, Registry};
use dcron_registry_postgres::{PostgresRegistry, PostgresRegistryConfig};

const NAMESPACE: &str = "dcron-example-postgres";

/// Fire instant → the nodes that ran it.
type Runs = Arc<Mutex<BTreeMap<DateTime<Utc>, Vec<String>>>>;

/// An application connection (not dcron's): where the handler writes its results.
async fn app_db(url: &str) -> Result<tokio_postgres::Client, Box<dyn std::error::Error>> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("application connection ended: {e}");
        }
    });
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS dcron_example_reports (
                 fire   timestamptz PRIMARY KEY,
                 node   text        NOT NULL,
                 token  bigint      NOT NULL
             )",
        )
        .await?;
    Ok(client)
}

async fn node(
    name: &str,
    url: &str,
    runs: &Runs,
    db: Arc<tokio_postgres::Client>,
) -> dcron_core::Result<Dcron> {
    // Each node gets its own pool, as two processes would.
    let registry = PostgresRegistryConfig::new(url)
        .namespace(NAMESPACE)
        .pool_size(4)
        .connect()
        .await?;
    let node = Dcron::builder(registry)
        .node_name(name)
        .ttl(Duration::from_secs(3))
        .build()?;
    let (runs, me) = (runs.clone(), name.to_string());
    node.add_func("report", "* * * * * *", move |ctx| {
        let (runs, me, db) = (runs.clone(), me.clone(), db.clone());
        async move {
            let token = i64::try_from(ctx.token)?;
            // Fenced write: only a larger token may replace what is there.
            let written = db
                .execute(
                    "INSERT INTO dcron_example_reports (fire, node, token) VALUES ($1, $2, $3)
                     ON CONFLICT (fire) DO UPDATE SET node = excluded.node, token = excluded.token
                     WHERE dcron_example_reports.token < excluded.token",
                    &[&ctx.scheduled, &me, &token],
                )
                .await?;
            println!(
                "{me} ran {} @ {} (token {token}, {written} row written)",
                ctx.name(),
                ctx.scheduled.format("%H:%M:%S")
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

async fn run() -> Result<bool, Box<dyn std::error::Error>> {
    let url = PostgresRegistry::env_url();
    let admin = PostgresRegistryConfig::new(&url)
        .namespace(NAMESPACE)
        .connect()
        .await?;
    admin.cleanup_all().await?;
    let db = Arc::new(app_db(&url).await?);
    db.execute("DELETE FROM dcron_example_reports", &[]).await?;

    let runs: Runs = Arc::default();
    let a = node("node-a", &url, &runs, db.clone()).await?;
    let b = node("node-b", &url, &runs, db.clone()).await?;
    println!("two nodes started on {}", admin.server());
    tokio::time::sleep(Duration::from_secs(5)).await;
    a.stop().await?;
    b.stop().await?;
    admin.cleanup_all().await?;

    let rows: i64 = db
        .query_one("SELECT count(*) FROM dcron_example_reports", &[])
        .await?
        .get(0);
    let runs = runs.lock().map(|r| r.clone()).unwrap_or_default();
    let duplicates = runs.values().filter(|who| who.len() > 1).count();
    println!(
        "summary fires={} rows={rows} duplicates={duplicates}",
        runs.len()
    );
    Ok(duplicates == 0 && !runs.is_empty())
}

#[tokio::main]
async fn main() {
    match run().await {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    }
}
