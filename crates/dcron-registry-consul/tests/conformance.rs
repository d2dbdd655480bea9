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
                .with_write_raw_task(),
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
}

dcron_testkit::conformance_main!(DoubleFactory::new());
