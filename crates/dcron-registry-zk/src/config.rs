//! [`ZkRegistryConfig`]: where the server is, which namespace, how to authenticate.

use std::time::Duration;

use dcron_core::{Error, Result};

/// The default namespace root.
pub const DEFAULT_NAMESPACE: &str = "/dcron";

/// The default connect string (a ZooKeeper on loopback).
pub const DEFAULT_CONNECT: &str = "127.0.0.1:2181";

/// The shortest session timeout this client asks for. `zookeeper-async` computes its receive
/// deadline in whole seconds from two thirds of the session timeout, so sessions below 1.5 s make
/// it reconnect in a loop; leases with a shorter TTL get a 2 s session (their record still
/// disappears after the TTL while the process lives: see the crate docs).
pub const MIN_SESSION_TIMEOUT: Duration = Duration::from_secs(2);

/// How a [`crate::ZkRegistry`] reaches and uses a ZooKeeper ensemble.
///
/// ```
/// use std::time::Duration;
/// use dcron_registry_zk::ZkRegistryConfig;
///
/// let config = ZkRegistryConfig::new("127.0.0.1:2181")
///     .namespace("/dcron/orders")
///     .digest_auth("dcron", "secret")
///     .session_timeout(Duration::from_secs(10));
/// assert_eq!(config.namespace_root(), "/dcron/orders");
/// ```
#[derive(Clone)]
pub struct ZkRegistryConfig {
    pub(crate) connect: String,
    pub(crate) namespace: String,
    pub(crate) session_timeout: Duration,
    pub(crate) operation_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) digest: Option<(String, String)>,
    pub(crate) ttl_claims: bool,
    pub(crate) require_ttl: bool,
    pub(crate) world_readable: bool,
    pub(crate) sweep_interval: Duration,
    pub(crate) watch_buffer: usize,
    pub(crate) faults: Option<crate::FaultInjector>,
}

impl std::fmt::Debug for ZkRegistryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZkRegistryConfig")
            .field("connect", &self.connect)
            .field("namespace", &self.namespace)
            .field("session_timeout", &self.session_timeout)
            .field("operation_timeout", &self.operation_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("digest_user", &self.digest.as_ref().map(|(u, _)| u))
            .field("ttl_claims", &self.ttl_claims)
            .field("require_ttl", &self.require_ttl)
            .field("world_readable", &self.world_readable)
            .field("sweep_interval", &self.sweep_interval)
            .field("watch_buffer", &self.watch_buffer)
            .field("fault_injector", &self.faults.is_some())
            .finish()
    }
}

impl Default for ZkRegistryConfig {
    fn default() -> Self {
        ZkRegistryConfig::new(DEFAULT_CONNECT)
    }
}

impl ZkRegistryConfig {
    /// A configuration for the ensemble in `connect` (`host:port[,host:port…][/chroot]`), with
    /// namespace [`DEFAULT_NAMESPACE`], no authentication, a 10 s session for the shared
    /// connection, 5 s operation and connect timeouts, and TTL znodes for claims.
    ///
    /// A chroot suffix in the connect string is put in front of the namespace (so
    /// `"zk:2181/apps"` with namespace `/dcron` stores under `/apps/dcron`).
    pub fn new(connect: impl Into<String>) -> Self {
        ZkRegistryConfig {
            connect: connect.into(),
            namespace: DEFAULT_NAMESPACE.to_string(),
            session_timeout: Duration::from_secs(10),
            operation_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            digest: None,
            ttl_claims: true,
            require_ttl: false,
            world_readable: false,
            sweep_interval: Duration::from_secs(10),
            watch_buffer: 1024,
            faults: None,
        }
    }

    /// The configuration from the environment: `DCRON_ZK_CONNECT`, else `DCRON_TEST_ZK_CONNECT`,
    /// else [`DEFAULT_CONNECT`]; `DCRON_ZK_NAMESPACE` (default [`DEFAULT_NAMESPACE`]);
    /// `DCRON_ZK_DIGEST` as `user:password` (optional).
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let connect = var("DCRON_ZK_CONNECT")
            .or_else(|| var("DCRON_TEST_ZK_CONNECT"))
            .unwrap_or_else(|| DEFAULT_CONNECT.to_string());
        let mut config = ZkRegistryConfig::new(connect);
        if let Some(ns) = var("DCRON_ZK_NAMESPACE") {
            config.namespace = ns;
        }
        if let Some((user, password)) = var("DCRON_ZK_DIGEST")
            .as_deref()
            .and_then(|d| d.split_once(':'))
        {
            config.digest = Some((user.to_string(), password.to_string()));
        }
        config
    }

    /// Sets the namespace root path (e.g. `/dcron/orders`; the leading `/` may be left out).
    /// Everything the registry stores lives under it; two registries with different roots never
    /// see each other. Empty, `.` and `..` components are refused when connecting.
    pub fn namespace(mut self, root: impl Into<String>) -> Self {
        self.namespace = root.into();
        self
    }

    /// Authenticates every connection with the `digest` scheme (`addauth digest user:password`)
    /// and creates every znode with the ACL "all permissions for the creator's identity"
    /// (`CREATOR_ALL_ACL`), so a client without these credentials can neither read nor change
    /// the namespace (see [`ZkRegistryConfig::world_readable`] to let others read).
    pub fn digest_auth(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.digest = Some((user.into(), password.into()));
        self
    }

    /// With [`ZkRegistryConfig::digest_auth`]: also grant `world:anyone` the read permission on
    /// every znode created, so that monitoring without the credentials can read (never change)
    /// the namespace. Off by default; without credentials every znode is open anyway.
    pub fn world_readable(mut self, readable: bool) -> Self {
        self.world_readable = readable;
        self
    }

    /// Sets the session timeout of the shared connection (lists, tasks, claims, watches). Node
    /// registrations use their own sessions, sized by the lease TTL.
    pub fn session_timeout(mut self, timeout: Duration) -> Self {
        self.session_timeout = timeout;
        self
    }

    /// Sets how long one request may wait for its answer before it fails with
    /// [`Error::Unavailable`].
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = timeout;
        self
    }

    /// Sets how long connecting (TCP and session handshake) may take.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Whether claims are TTL znodes (`true`, the default; needs `extendedTypesEnabled=true` on
    /// the server: probed at connect, see [`ZkRegistryConfig::require_ttl`]) or persistent
    /// znodes removed by the sweeper (`false`). Either way an expired claim counts as absent at
    /// once (its expiry is judged against the server's clock); TTL znodes and the sweeper only
    /// collect the garbage.
    pub fn ttl_claims(mut self, enabled: bool) -> Self {
        self.ttl_claims = enabled;
        self
    }

    /// Whether a server without TTL znodes is an error at connect (`true`:
    /// [`ZkRegistry::connect`](crate::ZkRegistry::connect) answers [`Error::Unsupported`]) or
    /// falls back to the claim sweeper, announced by an event, a metric and a warning (`false`,
    /// the default).
    pub fn require_ttl(mut self, required: bool) -> Self {
        self.require_ttl = required;
        self
    }

    /// Sets how often the claim sweeper runs when claims are not TTL znodes.
    pub fn sweep_interval(mut self, interval: Duration) -> Self {
        self.sweep_interval = interval;
        self
    }

    /// Passes every request of the registry (all its sessions) through `faults`, for tests
    /// that fail, or drop the reply of, one chosen request (see [`crate::FaultInjector`]).
    pub fn fault_injector(mut self, faults: crate::FaultInjector) -> Self {
        self.faults = Some(faults);
        self
    }

    /// Sets how many events a watch stream buffers before it reports a resync instead.
    pub fn watch_buffer(mut self, events: usize) -> Self {
        self.watch_buffer = events;
        self
    }

    /// The connect string as given.
    pub fn connect_string(&self) -> &str {
        &self.connect
    }

    /// The namespace root as given (see [`ZkRegistryConfig::namespace`]).
    pub fn namespace_root(&self) -> &str {
        &self.namespace
    }

    /// Splits the connect string into the host list and the root path (chroot + namespace).
    pub(crate) fn hosts_and_root(&self) -> Result<(String, String)> {
        let (hosts, chroot) = match self.connect.find('/') {
            Some(i) => (&self.connect[..i], self.connect[i..].trim_end_matches('/')),
            None => (self.connect.as_str(), ""),
        };
        if hosts.trim().is_empty() {
            return Err(Error::InvalidArgument(format!(
                "zookeeper connect string {:?} names no server",
                self.connect
            )));
        }
        let root = crate::keys::normalise_root(&format!(
            "{chroot}/{}",
            self.namespace.trim_start_matches('/')
        ))?;
        Ok((hosts.to_string(), root))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chroot_goes_in_front_of_the_namespace() {
        let c = ZkRegistryConfig::new("a:1,b:2/apps").namespace("/dcron/x");
        assert_eq!(
            c.hosts_and_root().expect("ok"),
            ("a:1,b:2".to_string(), "/apps/dcron/x".to_string())
        );
        let c = ZkRegistryConfig::new("a:1");
        assert_eq!(c.hosts_and_root().expect("ok").1, "/dcron");
        assert!(ZkRegistryConfig::new("/x").hosts_and_root().is_err());
        assert!(ZkRegistryConfig::new("a:1")
            .namespace("/a/../b")
            .hosts_and_root()
            .is_err());
    }

    #[test]
    fn debug_hides_the_password() {
        let c = ZkRegistryConfig::new("a:1").digest_auth("u", "hunter2");
        let s = format!("{c:?}");
        assert!(s.contains("\"u\"") && !s.contains("hunter2"), "{s}");
    }
}
