//! Schema creation races: several pools connecting to a fresh schema at once all succeed, each
//! migration is applied exactly once, and a connection to a current schema takes no lock.

mod common;

use dcron_registry_postgres::{PostgresRegistry, SCHEMA_VERSION};
use futures::future::join_all;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_racing_to_migrate_apply_each_version_once() {
    let url = PostgresRegistry::env_url();
    let client = match common::raw(&url).await {
        Ok(c) => c,
        Err(e) => return common::skip(&format!("PostgreSQL at {url} unreachable: {e}")),
    };
    for round in 0..3 {
        let schema = format!(
            "dcron_mig_{round}_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let opened = join_all((0..8).map(|i| {
            let url = url.clone();
            let schema = schema.clone();
            async move { common::open_in(&url, &schema, &format!("ns-{i}")).await }
        }))
        .await;
        for (i, r) in opened.iter().enumerate() {
            if let Err(e) = r {
                panic!("pool {i} failed to migrate {schema}: {e:?}");
            }
        }
        let versions: Vec<i32> = client
            .query(
                &format!("SELECT version FROM \"{schema}\".migrations ORDER BY version"),
                &[],
            )
            .await
            .expect("read versions")
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(versions, (1..=SCHEMA_VERSION).collect::<Vec<_>>());
        // Every pool works on the schema it found.
        for reg in opened.into_iter().flatten() {
            reg.ping().await.expect("ping");
            use dcron_core::Registry;
            assert!(reg.list_tasks().await.expect("list").items.is_empty());
        }
        client
            .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
            .await
            .expect("drop schema");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_to_a_current_schema_takes_no_lock() {
    let url = PostgresRegistry::env_url();
    let client = match common::raw(&url).await {
        Ok(c) => c,
        Err(e) => return common::skip(&format!("PostgreSQL at {url} unreachable: {e}")),
    };
    let schema = format!(
        "dcron_lock_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    common::open_in(&url, &schema, "a").await.expect("create");
    // Hold the migration lock of this schema in another session: a new pool still connects.
    client.batch_execute("BEGIN").await.expect("begin");
    client
        .execute(
            "SELECT pg_advisory_xact_lock(1684238958, hashtext($1))",
            &[&schema],
        )
        .await
        .expect("lock");
    let reg = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        common::open_in(&url, &schema, "b"),
    )
    .await
    .expect("not blocked by the migration lock")
    .expect("connect");
    reg.ping().await.expect("ping");
    client.batch_execute("COMMIT").await.expect("commit");
    client
        .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .await
        .expect("drop schema");
}
