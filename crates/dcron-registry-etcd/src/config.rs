//! [`EtcdRegistryConfig`]: how to reach the cluster and where to keep the keys.

use std::time::Duration;

use dcron_core::{Error, Result};

use crate::EtcdRegistry;

/// The namespace used when none is configured.
pub const DEFAULT_NAMESPACE: &str = "dcron";

/// The environment variable [`EtcdRegistry::from_env`] reads: comma-separated endpoints.
pub const TEST_ENDPOINTS_ENV: &str = "DCRON_TEST_ETCD_ENDPOINTS";

/// The endpoint [`EtcdRegistry::from_env`] uses when [`TEST_ENDPOINTS_ENV`] is not set.
pub const DEFAULT_ENDPOINT: &str = "127.0.0.1:2379";

/// The default of [`EtcdRegistryConfig::max_txn_ops`]: etcd's own default `--max-txn-ops`.
pub const DEFAULT_MAX_TXN_OPS: usize = 128;

/// The smallest accepted [`EtcdRegistryConfig::max_txn_ops`].
pub const MIN_TXN_OPS: usize = 8;

/// TLS settings for the connection to etcd (endpoints then use `https://`).
///
/// Without a CA certificate the server certificate is checked against the system's root
/// certificates; give the cluster's CA with [`EtcdTls::ca_pem`] for a private CA.
#[derive(Clone, Default)]
pub struct EtcdTls {
    pub(crate) ca_pem: Option<Vec<u8>>,
    pub(crate) identity: Option<(Vec<u8>, Vec<u8>)>,
    pub(crate) domain: Option<String>,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTls")
            .field("ca_pem", &self.ca_pem.as_ref().map(|c| c.len()))
            .field("client_identity", &self.identity.is_some())
            .field("domain", &self.domain)
            .finish()
    }
}

impl EtcdTls {
    /// TLS with the default settings.
    pub fn new() -> Self {
        EtcdTls::default()
    }

    /// The PEM-encoded CA certificate(s) the server certificate must chain to.
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// A PEM-encoded client certificate and private key, for clusters that require client
    /// certificates (`--client-cert-auth`).
    pub fn client_identity(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.identity = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// The name the server certificate must be valid for, when it differs from the endpoint's
    /// host.
    pub fn domain(mut self, domain: impl Into<String>) -> Self {
        self.domain = Some(domain.into());
        self
    }

    pub(crate) fn to_options(&self) -> etcd_client::TlsOptions {
        let mut tls = etcd_client::TlsOptions::new();
        tls = match &self.ca_pem {
            Some(ca) => tls.ca_certificate(etcd_client::Certificate::from_pem(ca)),
            None => tls.with_native_roots(),
        };
        if let Some((cert, key)) = &self.identity {
            tls = tls.identity(etcd_client::Identity::from_pem(cert, key));
        }
        if let Some(domain) = &self.domain {
            tls = tls.domain_name(domain.clone());
        }
        tls
    }
}

/// Configuration of an [`EtcdRegistry`], built step by step.
///
/// ```no_run
/// use std::time::Duration;
/// use dcron_registry_etcd::EtcdRegistryConfig;
///
/// # async fn demo() -> dcron_core::Result<()> {
/// let registry = EtcdRegistryConfig::new(["10.0.0.1:2379", "10.0.0.2:2379"])
///     .namespace("billing")
///     .credentials("dcron", "secret")
///     .request_timeout(Duration::from_secs(2))
///     .connect()
///     .await?;
/// # drop(registry);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct EtcdRegistryConfig {
    pub(crate) endpoints: Vec<String>,
    pub(crate) credentials: Option<(String, String)>,
    pub(crate) tls: Option<EtcdTls>,
    pub(crate) namespace: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) watch_buffer: usize,
    pub(crate) list_page_size: usize,
    pub(crate) max_txn_ops: usize,
}

impl std::fmt::Debug for EtcdRegistryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdRegistryConfig")
            .field("endpoints", &self.endpoints)
            .field("user", &self.credentials.as_ref().map(|(u, _)| u))
            .field("password", &self.credentials.as_ref().map(|_| "***"))
            .field("tls", &self.tls)
            .field("namespace", &self.namespace)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("watch_buffer", &self.watch_buffer)
            .field("list_page_size", &self.list_page_size)
            .field("max_txn_ops", &self.max_txn_ops)
            .finish()
    }
}

impl EtcdRegistryConfig {
    /// A configuration for the cluster at `endpoints` (`host:port`, `http://host:port` or
    /// `https://host:port`), with every other setting at its default.
    pub fn new<I, S>(endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        EtcdRegistryConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            credentials: None,
            tls: None,
            namespace: DEFAULT_NAMESPACE.to_string(),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(3),
            watch_buffer: 1024,
            list_page_size: 200,
            max_txn_ops: DEFAULT_MAX_TXN_OPS,
        }
    }

    /// A configuration for the endpoints in [`TEST_ENDPOINTS_ENV`] (comma-separated), or
    /// [`DEFAULT_ENDPOINT`] when it is not set.
    pub fn from_env() -> Self {
        let endpoints = std::env::var(TEST_ENDPOINTS_ENV)
            .ok()
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| vec![DEFAULT_ENDPOINT.to_string()]);
        EtcdRegistryConfig::new(endpoints)
    }

    /// The key prefix: every key lives under `/{namespace}/` (default `dcron`). The namespace is
    /// escaped into one key segment, so two namespaces never see each other.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Authenticates as `user` with `password` (etcd's `auth enable` mode). The token is renewed
    /// by itself when the server forgets it (after a restart).
    pub fn credentials(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.credentials = Some((user.into(), password.into()));
        self
    }

    /// Connects over TLS (bare `host:port` endpoints then use `https://`).
    pub fn tls(mut self, tls: EtcdTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// How long to wait for a connection to an endpoint (default 2 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long to wait for the answer to one request (default 3 s). A request that times out
    /// fails with [`Error::Unavailable`].
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How many events a watch buffers for a slow reader before it drops them and yields a
    /// `Resync` instead (default 1024).
    pub fn watch_buffer(mut self, events: usize) -> Self {
        self.watch_buffer = events;
        self
    }

    /// How many keys one page of a listing reads (default 200). Listings are always complete;
    /// this only bounds the size of each response.
    pub fn list_page_size(mut self, keys: usize) -> Self {
        self.list_page_size = keys;
        self
    }

    /// The server's `--max-txn-ops` (default 128, etcd's default): the most operations one
    /// transaction may carry. Claim batches, life batches and record batches larger than fit are
    /// split into several transactions, sent concurrently; set this when the server was started
    /// with another value. At least [`MIN_TXN_OPS`].
    pub fn max_txn_ops(mut self, ops: usize) -> Self {
        self.max_txn_ops = ops;
        self
    }

    /// The prefix every key of the namespace starts with, `/<namespace escaped>/`: what a
    /// least-privileged role needs read-write access to (`etcdctl role grant-permission
    /// --prefix <role> readwrite <prefix>`), and nothing else.
    ///
    /// ```
    /// use dcron_registry_etcd::EtcdRegistryConfig;
    /// let config = EtcdRegistryConfig::new(["127.0.0.1:2379"]).namespace("billing");
    /// assert_eq!(config.key_prefix(), "/billing/");
    /// ```
    pub fn key_prefix(&self) -> String {
        crate::keys::Keys::new(&self.namespace).root().to_string()
    }

    /// Checks the configuration.
    pub(crate) fn validate(&self) -> Result<()> {
        if self.endpoints.is_empty() || self.endpoints.iter().any(|e| e.trim().is_empty()) {
            return Err(Error::InvalidArgument(
                "etcd: at least one non-empty endpoint is required".into(),
            ));
        }
        if self.namespace.is_empty() || self.namespace.chars().any(char::is_control) {
            return Err(Error::InvalidArgument(format!(
                "etcd namespace {:?} must be non-empty and free of control characters",
                self.namespace
            )));
        }
        if self.connect_timeout.is_zero() || self.request_timeout.is_zero() {
            return Err(Error::InvalidArgument(
                "etcd timeouts must be non-zero".into(),
            ));
        }
        if self.max_txn_ops < MIN_TXN_OPS {
            return Err(Error::InvalidArgument(format!(
                "etcd max_txn_ops must be at least {MIN_TXN_OPS} (a cleanup needs that many \
                 operations in one transaction)"
            )));
        }
        if self.list_page_size == 0 {
            return Err(Error::InvalidArgument(
                "etcd list page size must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// Connects to the cluster: see [`EtcdRegistry::connect`].
    ///
    /// # Errors
    /// As [`EtcdRegistry::connect`].
    pub async fn connect(self) -> Result<EtcdRegistry> {
        EtcdRegistry::connect(self).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_printed() {
        let c = EtcdRegistryConfig::new(["h:1"]).credentials("root", "hunter2");
        let s = format!("{c:?}");
        assert!(s.contains("root") && !s.contains("hunter2"), "{s}");
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(EtcdRegistryConfig::new(Vec::<String>::new())
            .validate()
            .is_err());
        assert!(EtcdRegistryConfig::new([""]).validate().is_err());
        assert!(EtcdRegistryConfig::new(["h:1"])
            .namespace("")
            .validate()
            .is_err());
        assert!(EtcdRegistryConfig::new(["h:1"])
            .namespace("a\nb")
            .validate()
            .is_err());
        assert!(EtcdRegistryConfig::new(["h:1"])
            .request_timeout(Duration::ZERO)
            .validate()
            .is_err());
        assert!(EtcdRegistryConfig::new(["h:1"])
            .list_page_size(0)
            .validate()
            .is_err());
        assert!(EtcdRegistryConfig::new(["h:1"])
            .namespace("a/b ✓")
            .validate()
            .is_ok());
    }
}
