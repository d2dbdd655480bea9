//! Test support shared by the integration tests: the Consul test double and helpers.
#![allow(dead_code)]

pub mod double;

use std::time::Duration;

use dcron_registry_consul::{ConsulRegistry, ConsulRegistryConfig};

/// A registry on the double, in `namespace`, with short TTLs and blocking waits for tests.
pub fn registry(double: &double::ConsulDouble, namespace: &str) -> ConsulRegistry {
    ConsulRegistry::new(config(&double.address(), namespace)).expect("valid config")
}

/// The test configuration for an address.
pub fn config(address: &str, namespace: &str) -> ConsulRegistryConfig {
    ConsulRegistryConfig::new(address)
        .with_namespace(namespace)
        .with_min_session_ttl(Duration::from_secs(1))
        .with_watch_wait(Duration::from_secs(5))
        .with_request_timeout(Duration::from_secs(5))
}

/// Polls `check` until it is true or `within` passes; returns whether it became true.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
