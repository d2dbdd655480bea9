//! The dcron-testkit conformance suite against a real Consul agent, when
//! `DCRON_TEST_CONSUL_ADDR` is set (no agent can be installed on this project's machines).

mod support;

use std::sync::Arc;
use std::time::Duration;

use dcron_core::{Lease, Registry, Result};
use dcron_registry_consul::{ConsulRegistry, ConsulRegistryConfig};
use dcron_testkit::async_trait;
use support::{kv_path, raw_put};

/// A real agent from `DCRON_TEST_CONSUL_ADDR` (and `DCRON_TEST_CONSUL_TOKEN`).
struct AgentFactory {
    config: ConsulRegistryConfig,
}

#[async_trait]
impl dcron_testkit::RegistryFactory for AgentFactory {
    fn name(&self) -> &'static str {
        "consul"
    }

    async fn open(&self, namespace: &str) -> Result<Arc<dyn Registry>> {
        let config = self.config.clone().with_namespace(namespace);
        Ok(Arc::new(ConsulRegistry::connect(config).await?))
    }

    fn min_ttl(&self) -> Duration {
        // The smallest lease: a session of Consul's minimum TTL (10 s), invalidated 2×TTL after
        // its last renewal.
        dcron_registry_consul::CONSUL_MIN_SESSION_TTL
            * dcron_registry_consul::SESSION_TTL_MULTIPLIER
    }

    fn expiry_slack(&self) -> Duration {
        dcron_core::expiry_tolerance(self.min_ttl())
    }

    async fn expire_lease(&self, _namespace: &str, lease: &Lease) -> Result<()> {
        raw_put(
            &self.config,
            &format!("/v1/session/destroy/{}", lease.id),
            Vec::new(),
        )
        .await
    }

    async fn write_raw_task(&self, namespace: &str, name: &str, bytes: &[u8]) -> Result<()> {
        let config = self.config.clone().with_namespace(namespace);
        let key = ConsulRegistry::new(config)?.task_key(name);
        raw_put(&self.config, &kv_path(&key), bytes.to_vec()).await
    }
}

/// The whole suite against a real agent; skipped (with the reason printed) when
/// `DCRON_TEST_CONSUL_ADDR` is not set — no agent can be installed on this project's machines,
/// so this is not required even under `DCRON_TEST_REQUIRE=1`. `CONSUL_HTTP_TOKEN`,
/// `CONSUL_CACERT` and the other standard variables apply.
#[test]
fn real_agent_conformance() {
    let config = match ConsulRegistryConfig::from_test_env() {
        Ok(Some(config)) => config,
        Ok(None) => {
            println!("real_agent_conformance skipped: DCRON_TEST_CONSUL_ADDR is not set");
            return;
        }
        Err(e) => panic!("bad Consul test environment: {e}"),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let summary = runtime.block_on(dcron_testkit::run_all(AgentFactory {
        config: config.with_watch_wait(Duration::from_secs(5)),
    }));
    assert!(summary.is_success(), "{summary}");
}
