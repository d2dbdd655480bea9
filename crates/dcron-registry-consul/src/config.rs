//! Configuration of a [`crate::ConsulRegistry`].

use std::time::Duration;

use dcron_core::{Error, Result};

/// Consul's smallest session TTL (`10s`); shorter TTLs are raised to it.
pub const CONSUL_MIN_SESSION_TTL: Duration = Duration::from_secs(10);

/// Consul's largest session TTL (`86400s`); longer TTLs are lowered to it.
pub const CONSUL_MAX_SESSION_TTL: Duration = Duration::from_secs(86_400);

/// How to reach Consul and where to keep dcron's keys.
///
/// The ACL token is sent in the `X-Consul-Token` header; it never appears in logs, errors or
/// this type's `Debug` output.
///
/// ```
/// use std::time::Duration;
/// use dcron_registry_consul::ConsulRegistryConfig;
///
/// let config = ConsulRegistryConfig::new("https://consul.internal:8501")
///     .with_token("secret")
///     .with_datacenter("dc1")
///     .with_namespace("billing-cron")
///     .with_request_timeout(Duration::from_secs(5));
/// assert!(!format!("{config:?}").contains("secret"));
/// ```
#[derive(Clone)]
pub struct ConsulRegistryConfig {
    /// Base address of the agent, `http://…` or `https://…` (default `http://127.0.0.1:8500`).
    pub address: String,
    /// ACL token (`X-Consul-Token`), if ACLs are enabled.
    pub token: Option<String>,
    /// Datacenter to talk to (`?dc=`); the agent's own when `None`.
    pub datacenter: Option<String>,
    /// dcron namespace: the first KV path segment of every key (default `dcron`). It is one
    /// escaped segment, so a `/` in it does not nest namespaces. Not Consul Enterprise's
    /// namespaces.
    pub namespace: String,
    /// Timeout for establishing a connection (default 5 s).
    pub connect_timeout: Duration,
    /// Timeout of one ordinary request (default 10 s). Blocking queries get `watch_wait` plus
    /// Consul's jitter (`wait / 16`) on top of it.
    pub request_timeout: Duration,
    /// `wait` of the blocking queries behind the watches (default 55 s, Consul's maximum is
    /// 10 min).
    pub watch_wait: Duration,
    /// Smallest session TTL requested from Consul (default and minimum for a real agent:
    /// [`CONSUL_MIN_SESSION_TTL`]). Lower it only for a test server that accepts shorter TTLs.
    pub min_session_ttl: Duration,
    /// Extra PEM-encoded CA certificate(s) trusted for `https` addresses.
    pub ca_cert_pem: Option<Vec<u8>>,
    /// PEM-encoded client certificate and private key for mutual TLS.
    pub client_identity_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for ConsulRegistryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulRegistryConfig")
            .field("address", &self.address)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("datacenter", &self.datacenter)
            .field("namespace", &self.namespace)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("watch_wait", &self.watch_wait)
            .field("min_session_ttl", &self.min_session_ttl)
            .field("ca_cert_pem", &self.ca_cert_pem.as_ref().map(|_| "<pem>"))
            .field(
                "client_identity_pem",
                &self.client_identity_pem.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl Default for ConsulRegistryConfig {
    fn default() -> Self {
        ConsulRegistryConfig {
            address: "http://127.0.0.1:8500".to_string(),
            token: None,
            datacenter: None,
            namespace: "dcron".to_string(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            watch_wait: Duration::from_secs(55),
            min_session_ttl: CONSUL_MIN_SESSION_TTL,
            ca_cert_pem: None,
            client_identity_pem: None,
        }
    }
}

impl ConsulRegistryConfig {
    /// The defaults with another agent address.
    pub fn new(address: impl Into<String>) -> Self {
        ConsulRegistryConfig {
            address: address.into(),
            ..ConsulRegistryConfig::default()
        }
    }

    /// Reads `DCRON_TEST_CONSUL_ADDR` (required) and `DCRON_TEST_CONSUL_TOKEN` (optional), as the
    /// test suites do; `None` when no address is set.
    pub fn from_env() -> Option<Self> {
        let address = std::env::var("DCRON_TEST_CONSUL_ADDR")
            .ok()
            .filter(|a| !a.trim().is_empty())?;
        let mut config = ConsulRegistryConfig::new(address.trim());
        config.token = std::env::var("DCRON_TEST_CONSUL_TOKEN")
            .ok()
            .filter(|t| !t.is_empty());
        Some(config)
    }

    /// Sets the ACL token.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Sets the datacenter.
    pub fn with_datacenter(mut self, dc: impl Into<String>) -> Self {
        self.datacenter = Some(dc.into());
        self
    }

    /// Sets the dcron namespace.
    pub fn with_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Sets the per-request timeout.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets the blocking-query `wait` of the watches.
    pub fn with_watch_wait(mut self, wait: Duration) -> Self {
        self.watch_wait = wait;
        self
    }

    /// Sets the smallest session TTL requested (for test servers accepting less than 10 s).
    pub fn with_min_session_ttl(mut self, ttl: Duration) -> Self {
        self.min_session_ttl = ttl;
        self
    }

    /// Checks the values that can be checked without contacting the agent.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an address that is not `http(s)://…`, an empty namespace,
    /// zero timeouts or a zero `watch_wait`.
    pub fn validate(&self) -> Result<()> {
        let addr = self.address.trim();
        if !(addr.starts_with("http://") || addr.starts_with("https://")) {
            return Err(Error::InvalidArgument(format!(
                "consul address `{addr}` must start with http:// or https://"
            )));
        }
        if self.namespace.is_empty() {
            return Err(Error::InvalidArgument(
                "consul namespace must not be empty".into(),
            ));
        }
        if self.connect_timeout.is_zero()
            || self.request_timeout.is_zero()
            || self.watch_wait.is_zero()
        {
            return Err(Error::InvalidArgument(
                "consul timeouts and watch_wait must be greater than zero".into(),
            ));
        }
        if self.min_session_ttl.is_zero() {
            return Err(Error::InvalidArgument(
                "consul min_session_ttl must be greater than zero".into(),
            ));
        }
        Ok(())
    }

    /// The session TTL actually requested for a lease of `ttl`: clamped to
    /// [`ConsulRegistryConfig::min_session_ttl`]..=[`CONSUL_MAX_SESSION_TTL`] and rounded up to
    /// whole seconds (Consul's TTLs are durations like `10s`).
    pub fn session_ttl(&self, ttl: Duration) -> Duration {
        let clamped = ttl.clamp(
            self.min_session_ttl.min(CONSUL_MAX_SESSION_TTL),
            CONSUL_MAX_SESSION_TTL,
        );
        let secs = clamped.as_secs() + u64::from(clamped.subsec_nanos() > 0);
        Duration::from_secs(secs.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_is_clamped_to_consul_bounds() {
        let c = ConsulRegistryConfig::default();
        assert_eq!(
            c.session_ttl(Duration::from_secs(1)),
            CONSUL_MIN_SESSION_TTL
        );
        assert_eq!(
            c.session_ttl(Duration::from_secs(30)),
            Duration::from_secs(30)
        );
        assert_eq!(
            c.session_ttl(Duration::from_secs(100_000)),
            CONSUL_MAX_SESSION_TTL
        );
        let t = c.with_min_session_ttl(Duration::from_secs(1));
        assert_eq!(
            t.session_ttl(Duration::from_millis(1500)),
            Duration::from_secs(2)
        );
        assert_eq!(
            t.session_ttl(Duration::from_millis(1)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn debug_never_shows_the_token() {
        let c = ConsulRegistryConfig::default().with_token("s3cr3t-token");
        let d = format!("{c:?}");
        assert!(!d.contains("s3cr3t"), "{d}");
        assert!(d.contains("redacted"));
    }

    #[test]
    fn bad_values_are_typed_errors() {
        for c in [
            ConsulRegistryConfig::new("127.0.0.1:8500"),
            ConsulRegistryConfig::default().with_namespace(""),
            ConsulRegistryConfig::default().with_request_timeout(Duration::ZERO),
        ] {
            assert!(matches!(c.validate(), Err(Error::InvalidArgument(_))));
        }
        assert!(ConsulRegistryConfig::default().validate().is_ok());
    }
}
