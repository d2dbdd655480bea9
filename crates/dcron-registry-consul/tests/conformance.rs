//! The dcron-testkit conformance suite against the Consul test double (a `harness = false`
//! target: skipped cases show as ignored, with the reason). `tests/agent.rs` runs it against a
//! real agent when `DCRON_TEST_CONSUL_ADDR` is set.

mod support;

use std::sync::Arc;
use std::time::Duration;

use dcron_core::{Lease, Registry, Result};
use dcron_registry_consul::{ConsulRegistry, ConsulRegistryConfig};
use dcron_testkit::async_trait;
use support::double::ConsulDouble;
use support::{kv_path, raw_put};

/// One double per test case, started on first use (inside the case's runtime).
struct DoubleFactory {
    double: tokio::sync::OnceCell<ConsulDouble>,
}

impl DoubleFactory {
    fn new() -> Self {
        DoubleFactory {
            double: tokio::sync::OnceCell::new(),
        }
    }

    async fn double(&self) -> &ConsulDouble {
        self.double.get_or_init(support::fast_double).await
    }

    async fn config(&self, namespace: &str) -> ConsulRegistryConfig {
        support::config(&self.double().await.address(), namespace)
    }
}

#[async_trait]
impl dcron_testkit::RegistryFactory for DoubleFactory {
    fn name(&self) -> &'static str {
        "consul-double"
    }

    fn min_ttl(&self) -> Duration {
        // A 1 s session (the double's `session_ttl_min`) grants a 2 s lease.
        Duration::from_secs(2)
    }

    async fn open(&self, namespace: &str) -> Result<Arc<dyn Registry>> {
        Ok(Arc::new(ConsulRegistry::new(self.config(namespace).await)?))
    }

    fn hooks(&self) -> Option<dcron_testkit::Hooks> {
        Some(
            dcron_testkit::Hooks::none()
                .with_restart_server()
                .with_expire_lease()
                .with_write_raw_task()
                .with_write_raw(&dcron_testkit::RawKind::ALL),
        )
    }

    async fn restart_server(&self) -> Result<()> {
        self.double().await.restart().await;
        Ok(())
    }

    async fn expire_lease(&self, namespace: &str, lease: &Lease) -> Result<()> {
        let config = self.config(namespace).await;
        raw_put(
            &config,
            &format!("/v1/session/destroy/{}", lease.id),
            Vec::new(),
        )
        .await
    }

    async fn write_raw_task(&self, namespace: &str, name: &str, bytes: &[u8]) -> Result<()> {
        let config = self.config(namespace).await;
        let key = ConsulRegistry::new(config.clone())?.task_key(name);
        raw_put(&config, &kv_path(&key), bytes.to_vec()).await
    }

    /// Plants `bytes` under the layout's key of `kind` (see the crate's `keys` module), without
    /// the session a node record or slot is normally locked by. The names the hostile cases use
    /// are plain except for `@`, escaped as `_40`.
    async fn write_raw(
        &self,
        namespace: &str,
        kind: dcron_testkit::RawKind,
        name: &str,
        bytes: &[u8],
    ) -> Result<()> {
        use dcron_testkit::RawKind;
        let config = self.config(namespace).await;
        let task_key = ConsulRegistry::new(config.clone())?.task_key("x");
        let root = task_key.strip_suffix("tasks/meta/x").unwrap_or(&task_key);
        let name = name.replace('@', "_40");
        // A fire instant's key segment: the milliseconds shifted by 2^63, 20 digits.
        let instant = format!(
            "{:020}",
            (dcron_testkit::instant(0).timestamp_millis() as u64) ^ (1u64 << 63)
        );
        let key = match kind {
            RawKind::Node => format!("{root}nodes/{name}"),
            RawKind::Task => format!("{root}tasks/meta/{name}"),
            RawKind::Tombstone => format!("{root}tasks/tomb/{name}/"),
            RawKind::Life => format!("{root}lives/{name}/"),
            RawKind::Claim => format!("{root}claims/{name}/{instant}"),
            RawKind::Slot => format!("{root}slots/{name}/held"),
            RawKind::Record(kind) => format!("{root}records/{}/{name}", kind.as_str()),
            _ => {
                return Err(dcron_core::Error::Unsupported {
                    operation: "write_raw",
                })
            }
        };
        if kind != RawKind::Node {
            return raw_put(&config, &kv_path(&key), bytes.to_vec()).await;
        }
        // A node record counts only while a session holds it: plant it under a session of
        // its own, as a registration would.
        let address = config.address.trim_end_matches('/').to_string();
        let unavailable = |e: reqwest::Error| dcron_core::Error::unavailable(format!("{e}"));
        let created: serde_json::Value = support::http()
            .put(format!("{address}/v1/session/create"))
            .body(r#"{"TTL":"60s","Behavior":"delete"}"#)
            .send()
            .await
            .map_err(unavailable)?
            .json()
            .await
            .map_err(unavailable)?;
        let session = created["ID"].as_str().unwrap_or_default().to_string();
        raw_put(
            &config,
            &format!("{}?acquire={session}", kv_path(&key)),
            bytes.to_vec(),
        )
        .await
    }
}

dcron_testkit::conformance_main!(DoubleFactory::new());
