//! The dcron-testkit conformance suite against the Consul test double (always) and against a
//! real agent when `DCRON_TEST_CONSUL_ADDR` is set.

mod support;

use std::sync::Arc;
use std::time::Duration;

use dcron_core::{Error, Lease, Registry, Result};
use dcron_registry_consul::{ConsulRegistry, ConsulRegistryConfig};
use dcron_testkit::async_trait;
use support::double::ConsulDouble;

/// Raw HTTP calls the hooks need (outside the registry's API).
async fn raw_put(config: &ConsulRegistryConfig, path: &str, body: Vec<u8>) -> Result<()> {
    let mut req = reqwest::Client::new()
        .put(format!("{}{path}", config.address.trim_end_matches('/')))
        .body(body);
    if let Some(token) = &config.token {
        req = req.header("X-Consul-Token", token);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| Error::unavailable(format!("consul hook request: {e}")))?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(Error::backend(
            "consul",
            format!("hook request {path}"),
            format!("HTTP {}", resp.status()),
        ))
    }
}

fn kv_path(key: &str) -> String {
    let mut out = String::from("/v1/kv/");
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

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

mod on_double {
    use super::*;

    dcron_testkit::conformance_tests!(DoubleFactory::new());
}

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
