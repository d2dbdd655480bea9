//! Test support shared by the integration tests: the Consul test double and helpers.
#![allow(dead_code)]

pub mod double;

use std::time::Duration;

use dcron_core::{Error, Result};
use dcron_registry_consul::{ConsulRegistry, ConsulRegistryConfig};
use double::{ConsulDouble, DoubleConfig};

/// A plain HTTP client for raw calls. reqwest is built without a crypto provider of its own
/// (see the crate's client), so install *ring* as the process default first, as the
/// registry does.
pub fn http() -> reqwest::Client {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    reqwest::Client::new()
}

/// A double configured like an agent with `session_ttl_min = "1s"`, so leases can expire in
/// seconds.
pub async fn fast_double() -> ConsulDouble {
    ConsulDouble::start_with(DoubleConfig::fast_sessions()).await
}

/// A registry on the double, in `namespace`, for an agent with `session_ttl_min = "1s"`.
pub fn registry(double: &ConsulDouble, namespace: &str) -> ConsulRegistry {
    ConsulRegistry::new(config(&double.address(), namespace)).expect("valid config")
}

/// The test configuration for an address (`session_ttl_min` 1 s, short waits).
pub fn config(address: &str, namespace: &str) -> ConsulRegistryConfig {
    ConsulRegistryConfig::new(address)
        .with_namespace(namespace)
        .with_min_session_ttl(Duration::from_secs(1))
        .with_watch_wait(Duration::from_secs(5))
        .with_request_timeout(Duration::from_secs(5))
}

/// Raw HTTP calls the hooks need (outside the registry's API).
pub async fn raw_put(config: &ConsulRegistryConfig, path: &str, body: Vec<u8>) -> Result<()> {
    let mut req = http()
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

pub fn kv_path(key: &str) -> String {
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
