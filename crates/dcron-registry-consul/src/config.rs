//! Configuration of a [`crate::ConsulRegistry`], from code or from Consul's standard environment
//! variables.

use std::path::{Path, PathBuf};
use std::time::Duration;

use dcron_core::{Error, Result};

/// Consul's default smallest session TTL (`session_ttl_min`, `10s`).
pub const CONSUL_MIN_SESSION_TTL: Duration = Duration::from_secs(10);

/// Consul's largest session TTL (`86400s`).
pub const CONSUL_MAX_SESSION_TTL: Duration = Duration::from_secs(86_400);

/// Consul invalidates a session this many times its TTL after its last renewal
/// (`structs.SessionTTLMultiplier`): a lease granted `ttl` is a session of `ttl / 2`.
pub const SESSION_TTL_MULTIPLIER: u32 = 2;

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
    /// `wait` of the blocking queries behind the watches (default 55 s; Consul caps it at
    /// 10 min).
    pub watch_wait: Duration,
    /// Smallest session TTL the agent accepts: its `session_ttl_min` (default and Consul's
    /// default: [`CONSUL_MIN_SESSION_TTL`]). Lower it only for an agent configured with a lower
    /// `session_ttl_min`.
    pub min_session_ttl: Duration,
    /// Extra PEM-encoded CA certificate(s) trusted for `https` addresses.
    pub ca_cert_pem: Option<Vec<u8>>,
    /// PEM-encoded client certificate and private key for mutual TLS.
    pub client_identity_pem: Option<Vec<u8>>,
    /// The name the agent's certificate is checked against (and sent as SNI) instead of the
    /// address's host (`CONSUL_TLS_SERVER_NAME`).
    pub tls_server_name: Option<String>,
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
            .field("tls_server_name", &self.tls_server_name)
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
            tls_server_name: None,
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

    /// The defaults overridden by Consul's standard environment variables, as every Consul tool
    /// reads them (see [`ConsulEnv`]).
    ///
    /// # Errors
    /// As [`ConsulEnv::read`].
    pub fn from_consul_env() -> Result<Self> {
        ConsulRegistryConfig::default().with_consul_env(&ConsulEnv::from_process()?)
    }

    /// The configuration of the test suites: `DCRON_TEST_CONSUL_ADDR` (required; `None` when
    /// unset) and `DCRON_TEST_CONSUL_TOKEN`, on top of Consul's standard environment variables
    /// (so `CONSUL_CACERT`, `CONSUL_HTTP_TOKEN`… apply too).
    ///
    /// # Errors
    /// As [`ConsulEnv::read`].
    pub fn from_test_env() -> Result<Option<Self>> {
        let Some(address) = std::env::var("DCRON_TEST_CONSUL_ADDR")
            .ok()
            .filter(|a| !a.trim().is_empty())
        else {
            return Ok(None);
        };
        let mut config = ConsulRegistryConfig::from_consul_env()?;
        config.address = normalize_address(address.trim(), false)?;
        if let Some(token) = std::env::var("DCRON_TEST_CONSUL_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
        {
            config.token = Some(token);
        }
        Ok(Some(config))
    }

    /// This configuration with the values `env` sets replacing the current ones: the address
    /// (and `https` from `CONSUL_HTTP_SSL`), the token (the token file's first), the CA, the
    /// client identity and the TLS server name.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an address that is not `host:port`, `http://…` or
    /// `https://…`.
    pub fn with_consul_env(mut self, env: &ConsulEnv) -> Result<Self> {
        let https = env.ssl.unwrap_or(false);
        if let Some(address) = &env.http_addr {
            self.address = normalize_address(address, https)?;
        } else if https {
            self.address = normalize_address(&self.address, true)?;
        }
        if let Some(token) = env.token() {
            self.token = Some(token.to_string());
        }
        if let Some(pem) = &env.ca_cert_pem {
            self.ca_cert_pem = Some(pem.clone());
        }
        if let Some(pem) = &env.client_identity_pem {
            self.client_identity_pem = Some(pem.clone());
        }
        if let Some(name) = &env.tls_server_name {
            self.tls_server_name = Some(name.clone());
        }
        Ok(self)
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

    /// Sets the agent's smallest session TTL (its `session_ttl_min`).
    pub fn with_min_session_ttl(mut self, ttl: Duration) -> Self {
        self.min_session_ttl = ttl;
        self
    }

    /// Sets the name the agent's certificate is checked against.
    pub fn with_tls_server_name(mut self, name: impl Into<String>) -> Self {
        self.tls_server_name = Some(name.into());
        self
    }

    /// Checks the values that can be checked without contacting the agent.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an address that is not `http(s)://…`, an empty namespace,
    /// zero timeouts or a zero `watch_wait` or `min_session_ttl`.
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

    /// The session TTL requested for a lease of `ttl`, and the lease TTL it grants.
    ///
    /// Consul invalidates a session [`SESSION_TTL_MULTIPLIER`] (2) times its TTL after its last
    /// renewal, so a lease of `ttl` is a session of `ttl / 2`, rounded up to whole seconds and
    /// raised to [`ConsulRegistryConfig::min_session_ttl`]; the granted lease is twice the
    /// session TTL (at least 20 s with Consul's default minimum).
    ///
    /// ```
    /// use std::time::Duration;
    /// use dcron_registry_consul::ConsulRegistryConfig;
    ///
    /// let c = ConsulRegistryConfig::default();
    /// let s = |secs| c.session_ttl(Duration::from_secs(secs)).unwrap();
    /// assert_eq!(s(1), (Duration::from_secs(10), Duration::from_secs(20)));
    /// assert_eq!(s(30), (Duration::from_secs(15), Duration::from_secs(30)));
    /// assert_eq!(s(25), (Duration::from_secs(13), Duration::from_secs(26)));
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a zero `ttl`, or one longer than two of Consul's largest
    /// session TTL (48 h): no session could keep the promise.
    pub fn session_ttl(&self, ttl: Duration) -> Result<(Duration, Duration)> {
        if ttl.is_zero() {
            return Err(Error::InvalidArgument(
                "the lease TTL must not be zero".into(),
            ));
        }
        let max_lease = CONSUL_MAX_SESSION_TTL * SESSION_TTL_MULTIPLIER;
        if ttl > max_lease {
            return Err(Error::InvalidArgument(format!(
                "a Consul lease lasts at most {}s (twice the largest session TTL); {}s asked",
                max_lease.as_secs(),
                ttl.as_secs()
            )));
        }
        let half = ttl / SESSION_TTL_MULTIPLIER;
        let half_secs = half.as_secs() + u64::from(half.subsec_nanos() > 0);
        let min = self.min_session_ttl.min(CONSUL_MAX_SESSION_TTL);
        let min_secs = min.as_secs() + u64::from(min.subsec_nanos() > 0);
        let session = Duration::from_secs(half_secs.max(min_secs).max(1));
        Ok((session, session * SESSION_TTL_MULTIPLIER))
    }
}

/// `host:port`, `http://…` or `https://…` as a base URL; `https` forces TLS (Consul's
/// `CONSUL_HTTP_SSL` "never reverts to http if TLS was explicitly requested").
fn normalize_address(address: &str, https: bool) -> Result<String> {
    let address = address.trim().trim_end_matches('/');
    let (scheme, rest) = match address.split_once("://") {
        Some(("http", rest)) => (if https { "https" } else { "http" }, rest),
        Some(("https", rest)) => ("https", rest),
        Some((other, _)) => {
            return Err(Error::InvalidArgument(format!(
                "consul address `{address}`: scheme `{other}` is not supported (http or https)"
            )))
        }
        None => (if https { "https" } else { "http" }, address),
    };
    if rest.is_empty() || rest.contains(char::is_whitespace) {
        return Err(Error::InvalidArgument(format!(
            "consul address `{address}` has no host"
        )));
    }
    Ok(format!("{scheme}://{rest}"))
}

/// Consul's standard client environment variables, as `consul` and every HashiCorp tool read
/// them (`api.DefaultConfig`):
///
/// | variable | meaning |
/// |---|---|
/// | `CONSUL_HTTP_ADDR` | agent address, `host:port` or `http(s)://host:port` |
/// | `CONSUL_HTTP_TOKEN` | ACL token |
/// | `CONSUL_HTTP_TOKEN_FILE` | file holding the ACL token; wins over `CONSUL_HTTP_TOKEN` |
/// | `CONSUL_HTTP_SSL` | `true`: use `https` (a boolean as Go's `strconv.ParseBool` reads it) |
/// | `CONSUL_CACERT` | PEM file of the CA to trust |
/// | `CONSUL_CLIENT_CERT`, `CONSUL_CLIENT_KEY` | PEM files of the client certificate and key (both or neither) |
/// | `CONSUL_TLS_SERVER_NAME` | name to check the agent's certificate against (SNI) |
///
/// Files are read when the environment is read, so a missing file is reported then.
#[derive(Clone, Default)]
pub struct ConsulEnv {
    /// `CONSUL_HTTP_ADDR`.
    pub http_addr: Option<String>,
    /// `CONSUL_HTTP_TOKEN`.
    pub http_token: Option<String>,
    /// `CONSUL_HTTP_TOKEN_FILE`, and the token read from it.
    pub token_file: Option<(PathBuf, String)>,
    /// `CONSUL_HTTP_SSL`.
    pub ssl: Option<bool>,
    /// The PEM read from `CONSUL_CACERT`.
    pub ca_cert_pem: Option<Vec<u8>>,
    /// The PEM read from `CONSUL_CLIENT_CERT` followed by `CONSUL_CLIENT_KEY`.
    pub client_identity_pem: Option<Vec<u8>>,
    /// `CONSUL_TLS_SERVER_NAME`.
    pub tls_server_name: Option<String>,
}

impl std::fmt::Debug for ConsulEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulEnv")
            .field("http_addr", &self.http_addr)
            .field(
                "http_token",
                &self.http_token.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "token_file",
                &self.token_file.as_ref().map(|(path, _)| path),
            )
            .field("ssl", &self.ssl)
            .field("ca_cert_pem", &self.ca_cert_pem.as_ref().map(|_| "<pem>"))
            .field(
                "client_identity_pem",
                &self.client_identity_pem.as_ref().map(|_| "<redacted>"),
            )
            .field("tls_server_name", &self.tls_server_name)
            .finish()
    }
}

/// `CONSUL_HTTP_ADDR`.
pub const ENV_HTTP_ADDR: &str = "CONSUL_HTTP_ADDR";
/// `CONSUL_HTTP_TOKEN`.
pub const ENV_HTTP_TOKEN: &str = "CONSUL_HTTP_TOKEN";
/// `CONSUL_HTTP_TOKEN_FILE`.
pub const ENV_HTTP_TOKEN_FILE: &str = "CONSUL_HTTP_TOKEN_FILE";
/// `CONSUL_HTTP_SSL`.
pub const ENV_HTTP_SSL: &str = "CONSUL_HTTP_SSL";
/// `CONSUL_CACERT`.
pub const ENV_CACERT: &str = "CONSUL_CACERT";
/// `CONSUL_CLIENT_CERT`.
pub const ENV_CLIENT_CERT: &str = "CONSUL_CLIENT_CERT";
/// `CONSUL_CLIENT_KEY`.
pub const ENV_CLIENT_KEY: &str = "CONSUL_CLIENT_KEY";
/// `CONSUL_TLS_SERVER_NAME`.
pub const ENV_TLS_SERVER_NAME: &str = "CONSUL_TLS_SERVER_NAME";

impl ConsulEnv {
    /// Reads the variables through `lookup` (empty values count as unset), and the files they
    /// name.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a `CONSUL_HTTP_SSL` that is not a boolean, a file that
    /// cannot be read, or only one of `CONSUL_CLIENT_CERT` and `CONSUL_CLIENT_KEY`.
    pub fn read(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        let var = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let ssl = match var(ENV_HTTP_SSL) {
            None => None,
            Some(v) => Some(parse_go_bool(v.trim()).ok_or_else(|| {
                Error::InvalidArgument(format!("{ENV_HTTP_SSL}=`{v}` is not a boolean"))
            })?),
        };
        let token_file = match var(ENV_HTTP_TOKEN_FILE) {
            None => None,
            Some(path) => {
                let path = PathBuf::from(path);
                let token = read_file(ENV_HTTP_TOKEN_FILE, &path)?;
                let token = String::from_utf8(token).map_err(|_| {
                    Error::InvalidArgument(format!(
                        "{ENV_HTTP_TOKEN_FILE} `{}` is not UTF-8",
                        path.display()
                    ))
                })?;
                Some((path, token.trim().to_string()))
            }
        };
        let ca_cert_pem = match var(ENV_CACERT) {
            None => None,
            Some(path) => Some(read_file(ENV_CACERT, Path::new(&path))?),
        };
        let client_identity_pem = match (var(ENV_CLIENT_CERT), var(ENV_CLIENT_KEY)) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                let mut pem = read_file(ENV_CLIENT_CERT, Path::new(&cert))?;
                pem.push(b'\n');
                pem.extend(read_file(ENV_CLIENT_KEY, Path::new(&key))?);
                Some(pem)
            }
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "{ENV_CLIENT_CERT} and {ENV_CLIENT_KEY} must be set together"
                )))
            }
        };
        Ok(ConsulEnv {
            http_addr: var(ENV_HTTP_ADDR).map(|a| a.trim().to_string()),
            http_token: var(ENV_HTTP_TOKEN),
            token_file,
            ssl,
            ca_cert_pem,
            client_identity_pem,
            tls_server_name: var(ENV_TLS_SERVER_NAME).map(|n| n.trim().to_string()),
        })
    }

    /// Reads the variables of this process.
    ///
    /// # Errors
    /// As [`ConsulEnv::read`].
    pub fn from_process() -> Result<Self> {
        ConsulEnv::read(&|name| std::env::var(name).ok())
    }

    /// The ACL token: the token file's content when `CONSUL_HTTP_TOKEN_FILE` is set and not
    /// empty (Consul's precedence), else `CONSUL_HTTP_TOKEN`.
    pub fn token(&self) -> Option<&str> {
        match &self.token_file {
            Some((_, token)) if !token.is_empty() => Some(token),
            _ => self.http_token.as_deref(),
        }
    }
}

fn read_file(variable: &str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        Error::InvalidArgument(format!("{variable}: cannot read `{}`: {e}", path.display()))
    })
}

/// Go's `strconv.ParseBool`.
fn parse_go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> Result<ConsulEnv> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ConsulEnv::read(&|k| map.get(k).cloned())
    }

    #[test]
    fn session_ttl_is_half_the_lease_and_at_least_the_minimum() {
        let c = ConsulRegistryConfig::default();
        let ttl = |s: u64| c.session_ttl(Duration::from_secs(s)).expect("valid");
        assert_eq!(ttl(1), (Duration::from_secs(10), Duration::from_secs(20)));
        assert_eq!(ttl(20), (Duration::from_secs(10), Duration::from_secs(20)));
        assert_eq!(ttl(60), (Duration::from_secs(30), Duration::from_secs(60)));
        assert_eq!(
            ttl(172_800),
            (CONSUL_MAX_SESSION_TTL, 2 * CONSUL_MAX_SESSION_TTL)
        );
        assert!(matches!(
            c.session_ttl(Duration::from_secs(172_801)),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            c.session_ttl(Duration::ZERO),
            Err(Error::InvalidArgument(_))
        ));
        let t = c.with_min_session_ttl(Duration::from_secs(1));
        assert_eq!(
            t.session_ttl(Duration::from_millis(1500)).expect("valid"),
            (Duration::from_secs(1), Duration::from_secs(2))
        );
        assert_eq!(
            t.session_ttl(Duration::from_millis(1)).expect("valid"),
            (Duration::from_secs(1), Duration::from_secs(2))
        );
        // Never less than asked.
        for ms in [1, 999, 1000, 1001, 2500, 19_999, 20_001, 59_999] {
            let asked = Duration::from_millis(ms);
            assert!(t.session_ttl(asked).expect("valid").1 >= asked, "{ms}");
        }
    }

    #[test]
    fn debug_never_shows_the_token() {
        let c = ConsulRegistryConfig::default().with_token("s3cr3t-token");
        let d = format!("{c:?}");
        assert!(!d.contains("s3cr3t"), "{d}");
        assert!(d.contains("redacted"));
        let e = env(&[(ENV_HTTP_TOKEN, "s3cr3t-token")]).expect("env");
        assert!(!format!("{e:?}").contains("s3cr3t"));
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

    #[test]
    fn consul_environment_variables_configure_the_client() {
        let dir = std::env::temp_dir().join(format!("dcron-consul-env-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let token_file = dir.join("token");
        std::fs::write(&token_file, "  file-token\n").expect("write");
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, "CA PEM").expect("write");
        let cert = dir.join("cert.pem");
        std::fs::write(&cert, "CERT").expect("write");
        let key = dir.join("key.pem");
        std::fs::write(&key, "KEY").expect("write");

        let e = env(&[
            (ENV_HTTP_ADDR, "consul.internal:8501"),
            (ENV_HTTP_TOKEN, "env-token"),
            (ENV_HTTP_TOKEN_FILE, token_file.to_str().expect("utf8")),
            (ENV_HTTP_SSL, "true"),
            (ENV_CACERT, ca.to_str().expect("utf8")),
            (ENV_CLIENT_CERT, cert.to_str().expect("utf8")),
            (ENV_CLIENT_KEY, key.to_str().expect("utf8")),
            (ENV_TLS_SERVER_NAME, "server.dc1.consul"),
        ])
        .expect("env");
        assert_eq!(e.token(), Some("file-token"), "the token file wins");
        let c = ConsulRegistryConfig::default()
            .with_consul_env(&e)
            .expect("config");
        assert_eq!(c.address, "https://consul.internal:8501");
        assert_eq!(c.token.as_deref(), Some("file-token"));
        assert_eq!(c.ca_cert_pem.as_deref(), Some(&b"CA PEM"[..]));
        assert_eq!(c.client_identity_pem.as_deref(), Some(&b"CERT\nKEY"[..]));
        assert_eq!(c.tls_server_name.as_deref(), Some("server.dc1.consul"));

        // An explicit scheme in the address; SSL never reverts https to http.
        let c = ConsulRegistryConfig::default()
            .with_consul_env(&env(&[(ENV_HTTP_ADDR, "http://10.0.0.1:8500")]).expect("env"))
            .expect("config");
        assert_eq!(c.address, "http://10.0.0.1:8500");
        let c = ConsulRegistryConfig::default()
            .with_consul_env(
                &env(&[(ENV_HTTP_ADDR, "http://10.0.0.1:8500"), (ENV_HTTP_SSL, "1")]).expect("env"),
            )
            .expect("config");
        assert_eq!(c.address, "https://10.0.0.1:8500");
        let c = ConsulRegistryConfig::default()
            .with_consul_env(&env(&[(ENV_HTTP_SSL, "true")]).expect("env"))
            .expect("config");
        assert_eq!(c.address, "https://127.0.0.1:8500");
        // Without variables nothing changes.
        let c = ConsulRegistryConfig::default()
            .with_consul_env(&env(&[]).expect("env"))
            .expect("config");
        assert_eq!(c.address, "http://127.0.0.1:8500");
        assert_eq!(c.token, None);
        // Token without a file.
        assert_eq!(
            env(&[(ENV_HTTP_TOKEN, "t")]).expect("env").token(),
            Some("t")
        );

        for bad in [
            vec![(ENV_HTTP_SSL, "yes")],
            vec![(ENV_CACERT, "/nonexistent/ca.pem")],
            vec![(ENV_HTTP_TOKEN_FILE, "/nonexistent/token")],
            vec![(ENV_CLIENT_CERT, cert.to_str().expect("utf8"))],
        ] {
            assert!(
                matches!(env(&bad), Err(Error::InvalidArgument(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            ConsulRegistryConfig::default()
                .with_consul_env(&env(&[(ENV_HTTP_ADDR, "unix:///tmp/consul.sock")]).expect("env")),
            Err(Error::InvalidArgument(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
