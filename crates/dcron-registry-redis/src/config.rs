//! [`RedisRegistryConfig`]: how to reach the server and where to keep the keys.

use std::time::Duration;

use dcron_core::{Error, Result};

use crate::RedisRegistry;

/// The namespace used when none is configured.
pub const DEFAULT_NAMESPACE: &str = "dcron";

/// The environment variable [`RedisRegistry::from_env`] reads.
pub const TEST_URL_ENV: &str = "DCRON_TEST_REDIS_URL";

/// The environment variable naming the nodes of a Redis Cluster for the tests (comma-separated
/// URLs; `scripts/services/redis-cluster.sh` starts one and sets it).
pub const TEST_CLUSTER_URLS_ENV: &str = "DCRON_TEST_REDIS_CLUSTER_URLS";

/// The URL [`RedisRegistry::from_env`] uses when [`TEST_URL_ENV`] is not set.
pub const DEFAULT_URL: &str = "redis://127.0.0.1:6379";

/// Configuration of a [`RedisRegistry`], built step by step.
///
/// ```
/// use std::time::Duration;
/// use dcron_registry_redis::RedisRegistryConfig;
///
/// let registry = RedisRegistryConfig::new("redis://app:secret@127.0.0.1:6379/2")
///     .namespace("billing")
///     .pool_size(8)
///     .command_timeout(Duration::from_secs(1))
///     .build()
///     .expect("a valid configuration");
/// // Nothing is connected until the first call.
/// # drop(registry);
/// ```
#[derive(Clone)]
pub struct RedisRegistryConfig {
    pub(crate) url: String,
    /// The seed nodes of a Redis Cluster; empty for a single server.
    pub(crate) cluster_urls: Vec<String>,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) database: Option<i64>,
    pub(crate) namespace: String,
    pub(crate) pool_size: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) command_timeout: Duration,
    pub(crate) watch_buffer: usize,
    pub(crate) node_check_interval: Duration,
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<RedisTls>,
}

/// TLS settings for a `rediss://` URL: a private CA and a client certificate.
///
/// Without a CA the server certificate is checked against the system's root certificates. The
/// server certificate must be valid for the host named in the URL (a DNS name or an IP address).
///
/// ```
/// use dcron_registry_redis::{RedisRegistryConfig, RedisTls};
///
/// # let (ca, cert, key) = (Vec::<u8>::new(), Vec::<u8>::new(), Vec::<u8>::new());
/// // let ca = std::fs::read("/etc/dcron/redis-ca.pem")?; and so on.
/// let config = RedisRegistryConfig::new("rediss://dcron@redis.internal:6380")
///     .tls(RedisTls::new().ca_pem(ca).client_identity(cert, key));
/// # drop(config);
/// ```
#[cfg(feature = "tls")]
#[derive(Clone, Default)]
pub struct RedisTls {
    pub(crate) ca_pem: Option<Vec<u8>>,
    pub(crate) identity: Option<(Vec<u8>, Vec<u8>)>,
}

#[cfg(feature = "tls")]
impl std::fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTls")
            .field("ca_pem_bytes", &self.ca_pem.as_ref().map(Vec::len))
            .field("client_identity", &self.identity.is_some())
            .finish()
    }
}

#[cfg(feature = "tls")]
impl RedisTls {
    /// TLS with the system's root certificates and no client certificate.
    pub fn new() -> Self {
        RedisTls::default()
    }

    /// The PEM-encoded CA certificate(s) the server certificate must chain to, instead of the
    /// system's roots.
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// A PEM-encoded client certificate (chain) and private key, for servers started with
    /// `--tls-auth-clients yes`.
    pub fn client_identity(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.identity = Some((cert_pem.into(), key_pem.into()));
        self
    }
}

impl std::fmt::Debug for RedisRegistryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut f = f.debug_struct("RedisRegistryConfig");
        f.field("url", &redact_url(&self.url))
            .field(
                "cluster_urls",
                &self
                    .cluster_urls
                    .iter()
                    .map(|u| redact_url(u))
                    .collect::<Vec<_>>(),
            )
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("database", &self.database)
            .field("namespace", &self.namespace)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("watch_buffer", &self.watch_buffer)
            .field("node_check_interval", &self.node_check_interval);
        #[cfg(feature = "tls")]
        f.field("tls", &self.tls);
        f.finish()
    }
}

/// The URL with its password (if any) replaced by `***`, for logs and errors.
pub(crate) fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_string();
    };
    match rest[..at].find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &url[..scheme_end],
            &rest[..colon],
            &rest[at..]
        ),
        None => url.to_string(),
    }
}

impl RedisRegistryConfig {
    /// A configuration for the server at `url`, with every other setting at its default.
    ///
    /// `url` is `redis://[[user]:password@]host[:port][/db]`, or `rediss://…` for TLS (with the
    /// default `tls` feature; the server certificate is checked against the system's roots).
    pub fn new(url: impl Into<String>) -> Self {
        RedisRegistryConfig {
            url: url.into(),
            cluster_urls: Vec::new(),
            username: None,
            password: None,
            database: None,
            namespace: DEFAULT_NAMESPACE.to_string(),
            pool_size: 16,
            connect_timeout: Duration::from_secs(2),
            command_timeout: Duration::from_secs(2),
            watch_buffer: 1024,
            node_check_interval: Duration::from_secs(1),
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// A registry on a Redis Cluster reached through `urls` (seed nodes: any of the masters;
    /// the others are found through `CLUSTER SLOTS`). Keys use the cluster layout
    /// ([`crate::RedisKeys::cluster`]); the database is 0; watches subscribe on the first seed
    /// node (classic pub/sub reaches every node of a cluster).
    ///
    /// ```
    /// use dcron_registry_redis::RedisRegistryConfig;
    /// let registry = RedisRegistryConfig::cluster(["redis://10.0.0.1:7001", "redis://10.0.0.2:7001"])
    ///     .namespace("billing")
    ///     .build()
    ///     .expect("a valid configuration");
    /// assert!(registry.keys().is_cluster());
    /// ```
    pub fn cluster<I, U>(urls: I) -> Self
    where
        I: IntoIterator<Item = U>,
        U: Into<String>,
    {
        let cluster_urls: Vec<String> = urls.into_iter().map(Into::into).collect();
        RedisRegistryConfig {
            cluster_urls: cluster_urls.clone(),
            ..RedisRegistryConfig::new(cluster_urls.first().cloned().unwrap_or_default())
        }
    }

    /// TLS settings (a private CA, a client certificate) for a `rediss://` URL.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: RedisTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The key prefix: every key lives under `<namespace>:` (default `dcron`). Two namespaces on
    /// one server never see each other.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// The ACL user name, overriding the one in the URL.
    pub fn username(mut self, username: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self
    }

    /// The password, overriding the one in the URL.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// The database number, overriding the one in the URL (default 0).
    pub fn database(mut self, db: i64) -> Self {
        self.database = Some(db);
        self
    }

    /// The most pooled connections (default 16). Watches use their own connections besides.
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size;
        self
    }

    /// How long to wait for a connection to be established (default 2 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long to wait for the answer to one command or script (default 2 s). A call that
    /// times out fails with [`Error::Unavailable`].
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// How many events a watch buffers for a slow reader before it drops them and yields a
    /// `Resync` instead (default 1024).
    pub fn watch_buffer(mut self, events: usize) -> Self {
        self.watch_buffer = events;
        self
    }

    /// How often a node watch lists the nodes to notice registrations that expired (expiry is
    /// not published by any script; default 1 s).
    pub fn node_check_interval(mut self, interval: Duration) -> Self {
        self.node_check_interval = interval;
        self
    }

    /// Builds the registry. Nothing is connected yet: the pool connects on first use and
    /// reconnects by itself after the server comes back.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a URL that does not parse, an empty namespace or one with
    /// control characters, a zero pool size or a zero timeout; TLS settings with a `redis://`
    /// URL, a CA PEM holding no certificate, or a client certificate or key that does not parse.
    pub fn build(self) -> Result<RedisRegistry> {
        if self.namespace.is_empty() || self.namespace.chars().any(char::is_control) {
            return Err(Error::InvalidArgument(format!(
                "redis namespace {:?} must be non-empty and free of control characters",
                self.namespace
            )));
        }
        if !self.cluster_urls.is_empty() && self.database.is_some_and(|db| db != 0) {
            return Err(Error::InvalidArgument(
                "redis cluster: only database 0 exists".into(),
            ));
        }
        if self.pool_size == 0 {
            return Err(Error::InvalidArgument(
                "redis pool size must be at least 1".into(),
            ));
        }
        if self.connect_timeout.is_zero()
            || self.command_timeout.is_zero()
            || self.node_check_interval.is_zero()
        {
            return Err(Error::InvalidArgument(
                "redis timeouts and the node check interval must be non-zero".into(),
            ));
        }
        RedisRegistry::from_config(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("redis://user:pw@host:1/2"),
            "redis://user:***@host:1/2"
        );
        assert_eq!(redact_url("rediss://:pw@host"), "rediss://:***@host");
        assert_eq!(redact_url("redis://host:1/0"), "redis://host:1/0");
        assert_eq!(redact_url("redis://user@host"), "redis://user@host");
        assert_eq!(redact_url("nonsense"), "nonsense");
        let cfg = RedisRegistryConfig::new("redis://u:secret@h").password("other");
        let shown = format!("{cfg:?}");
        assert!(
            !shown.contains("secret") && !shown.contains("other"),
            "{shown}"
        );
    }

    #[test]
    fn bad_settings_are_invalid_arguments() {
        let base = || RedisRegistryConfig::new(DEFAULT_URL);
        for cfg in [
            base().namespace(""),
            base().namespace("a\nb"),
            base().pool_size(0),
            base().command_timeout(Duration::ZERO),
            base().connect_timeout(Duration::ZERO),
            RedisRegistryConfig::new("not a url"),
            RedisRegistryConfig::new("http://host"),
        ] {
            assert!(
                matches!(cfg.clone().build(), Err(Error::InvalidArgument(_))),
                "{cfg:?}"
            );
        }
    }
}
