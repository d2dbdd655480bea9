//! Which registry to talk to: parsing `--registry <url>` and the credential flags and
//! environment variables into a [`RegistryTarget`], and connecting to it.
//!
//! | URL | backend |
//! |---|---|
//! | `redis://[user:password@]host[:port][/db]`, `rediss://…` (TLS) | Redis |
//! | `etcd://[user:password@]host[:port][,host[:port]…]`, `etcd+https://…` (TLS) | etcd |
//! | `zk://[user:password@]host[:port][,host[:port]…][/chroot]` (also `zookeeper://`) | ZooKeeper |
//! | `consul://host[:port]`, `consul+https://host[:port]` | Consul |
//! | `postgres://[user[:password]@]host[:port][,…][/db][?sslmode=…&sslrootcert=…]` (also `postgresql://`) | PostgreSQL |
//!
//! A `consul://` URL may leave the host out: the agent is then `CONSUL_HTTP_ADDR` (default
//! `127.0.0.1:8500`), and Consul's standard variables apply as in every Consul tool
//! (`CONSUL_HTTP_TOKEN(_FILE)`, `CONSUL_HTTP_SSL`, `CONSUL_CACERT`, `CONSUL_CLIENT_CERT`,
//! `CONSUL_CLIENT_KEY`, `CONSUL_TLS_SERVER_NAME`; see `dcron_registry_consul::ConsulEnv`).
//!
//! TLS files (`--tls-ca`, `--tls-cert`, `--tls-key`, else `DCRON_TLS_CA`, `DCRON_TLS_CERT`,
//! `DCRON_TLS_KEY`) apply to `rediss://`, `etcd+https://` and Consul; they are read when the
//! target is resolved, and a missing, unreadable or oversized file is a usage error naming it.
//!
//! Credentials come from, in order: the flags (`--user`, `--password`, `--token`), the
//! environment, the URL. Nothing that holds a credential is ever printed: the target's
//! `Display` and `Debug` show the URL without its user information.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use dcron_core::Registry;

use crate::cli::TlsArgs;
use crate::error::{CliError, CliResult};
use crate::secret::{Secret, Secrets};

/// Environment variable read when `--registry` is not given.
pub const ENV_REGISTRY_URL: &str = "DCRON_REGISTRY_URL";
/// Environment variable read when `--namespace` is not given.
pub const ENV_NAMESPACE: &str = "DCRON_NAMESPACE";
/// Environment variable read when `--user` is not given (Redis, etcd, ZooKeeper).
pub const ENV_USER: &str = "DCRON_REGISTRY_USER";
/// Environment variable read when `--password` is not given (Redis, etcd, ZooKeeper).
pub const ENV_PASSWORD: &str = "DCRON_REGISTRY_PASSWORD";
/// etcd user, read after [`ENV_USER`].
pub const ENV_ETCD_USER: &str = "DCRON_ETCD_USER";
/// etcd password, read after [`ENV_PASSWORD`].
pub const ENV_ETCD_PASSWORD: &str = "DCRON_ETCD_PASSWORD";
/// ZooKeeper digest credentials as `user:password`, read after [`ENV_USER`]/[`ENV_PASSWORD`].
pub const ENV_ZK_DIGEST: &str = "DCRON_ZK_DIGEST";
/// Consul ACL token, read when `--token` is not given (Consul's own variable).
pub const ENV_CONSUL_TOKEN: &str = "CONSUL_HTTP_TOKEN";

/// Environment variable read when `--tls-ca` is not given.
pub const ENV_TLS_CA: &str = "DCRON_TLS_CA";
/// Environment variable read when `--tls-cert` is not given.
pub const ENV_TLS_CERT: &str = "DCRON_TLS_CERT";
/// Environment variable read when `--tls-key` is not given.
pub const ENV_TLS_KEY: &str = "DCRON_TLS_KEY";
/// The largest TLS file (CA bundle, certificate or key) `dcronctl` reads.
pub const MAX_TLS_FILE_BYTES: u64 = 1024 * 1024;

/// The PEM contents of the TLS files, read at resolve time.
#[derive(Clone, Default)]
struct TlsFiles {
    ca: Option<Vec<u8>>,
    /// Client certificate and key.
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsFiles")
            .field("ca", &self.ca.is_some())
            .field("client_identity", &self.identity.is_some())
            .finish()
    }
}

impl TlsFiles {
    fn is_empty(&self) -> bool {
        self.ca.is_none() && self.identity.is_none()
    }

    /// Reads the files the flags (else the environment) name.
    fn read(args: &TlsArgs, env: &dyn Fn(&str) -> Option<String>) -> CliResult<Self> {
        let pick = |flag: &Option<PathBuf>, var: &str| {
            flag.clone()
                .filter(|p| !p.as_os_str().is_empty())
                .or_else(|| env(var).map(PathBuf::from))
        };
        let ca = pick(&args.ca, ENV_TLS_CA);
        let cert = pick(&args.cert, ENV_TLS_CERT);
        let key = pick(&args.key, ENV_TLS_KEY);
        let identity = match (cert, key) {
            (None, None) => None,
            (Some(c), Some(k)) => Some((read_tls_file("--tls-cert", &c)?, read_tls_file("--tls-key", &k)?)),
            (Some(_), None) => {
                return Err(CliError::usage(format!(
                    "--tls-cert needs --tls-key (or {ENV_TLS_KEY}): the client certificate's private key"
                )))
            }
            (None, Some(_)) => {
                return Err(CliError::usage(format!(
                    "--tls-key needs --tls-cert (or {ENV_TLS_CERT}): the client certificate"
                )))
            }
        };
        let ca = ca.map(|p| read_tls_file("--tls-ca", &p)).transpose()?;
        Ok(TlsFiles { ca, identity })
    }
}

/// Reads one TLS file (at most [`MAX_TLS_FILE_BYTES`]); errors are usage errors naming the flag
/// and the file.
fn read_tls_file(flag: &str, path: &Path) -> CliResult<Vec<u8>> {
    use std::io::Read;
    let bad = |why: String| CliError::usage(format!("{flag} `{}`: {why}", path.display()));
    let file = std::fs::File::open(path).map_err(|e| bad(format!("cannot open: {e}")))?;
    let mut bytes = Vec::new();
    file.take(MAX_TLS_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| bad(format!("cannot read: {e}")))?;
    if bytes.len() as u64 > MAX_TLS_FILE_BYTES {
        return Err(bad(format!(
            "larger than {MAX_TLS_FILE_BYTES} bytes; a PEM certificate or key is a few KiB"
        )));
    }
    if !String::from_utf8_lossy(&bytes).contains("-----BEGIN ") {
        return Err(bad("not PEM (no `-----BEGIN` line)".into()));
    }
    Ok(bytes)
}

/// The registry-related command-line values, before the environment is consulted.
#[derive(Clone, Debug, Default)]
pub struct ConnectArgs {
    /// `--registry`.
    pub registry: Option<Secret>,
    /// `--namespace`.
    pub namespace: Option<String>,
    /// `--user`.
    pub user: Option<String>,
    /// `--password`.
    pub password: Option<Secret>,
    /// `--token`.
    pub token: Option<Secret>,
    /// `--tls-ca`, `--tls-cert`, `--tls-key`.
    pub tls: TlsArgs,
}

/// The kind of registry a URL names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Redis (`redis://`, `rediss://`).
    Redis,
    /// etcd (`etcd://`, `etcd+https://`).
    Etcd,
    /// ZooKeeper (`zk://`, `zookeeper://`).
    ZooKeeper,
    /// Consul (`consul://`, `consul+https://`).
    Consul,
    /// PostgreSQL (`postgres://`, `postgresql://`).
    Postgres,
}

impl Backend {
    /// The backend's short name.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Redis => "redis",
            Backend::Etcd => "etcd",
            Backend::ZooKeeper => "zookeeper",
            Backend::Consul => "consul",
            Backend::Postgres => "postgres",
        }
    }
}

#[derive(Clone, Debug)]
enum Location {
    Redis { url: Secret },
    Etcd { endpoints: Vec<String>, tls: bool },
    ZooKeeper { connect: String },
    Consul { at: ConsulAt },
    Postgres { url: Secret },
}

/// Where a Consul agent is: the URL's address (`None`: `CONSUL_HTTP_ADDR`) and Consul's
/// standard environment.
#[derive(Clone, Debug)]
struct ConsulAt {
    address: Option<String>,
    env: dcron_registry_consul::ConsulEnv,
}

/// A parsed, credential-resolved registry address. `Display` shows the URL without
/// credentials; `Debug` never shows a credential either.
#[derive(Clone, Debug)]
pub struct RegistryTarget {
    backend: Backend,
    display: String,
    location: Location,
    user: Option<String>,
    password: Option<Secret>,
    token: Option<Secret>,
    namespace: Option<String>,
    tls: TlsFiles,
    secrets: Secrets,
}

impl fmt::Display for RegistryTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display)
    }
}

/// The pieces of a registry URL.
struct Parts {
    scheme: String,
    user: Option<String>,
    password: Option<String>,
    /// The host list as written: `host[:port][,host[:port]…]`.
    hosts: String,
    /// The path as [`url`] normalises it (`""` when there is none).
    path: String,
    /// The path as written, to refuse `.`/`..` components that normalising would hide.
    raw_path: String,
    query: Option<String>,
}

/// `url` with any user information replaced by `***`, for error messages.
pub fn redact_url(url: &str) -> String {
    let (prefix, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{prefix}***{}", &rest[at..]),
        None => url.to_string(),
    }
}

/// The password in a URL's user information, if any (decoded), to scrub it from messages.
pub fn url_password(url: &str) -> Option<String> {
    split_url(url).ok().and_then(|p| p.password)
}

/// Parses a registry URL with [`url`].
///
/// A host list (`h1:1,h2:2`, as etcd, ZooKeeper and PostgreSQL take) is not a WHATWG URL
/// authority, so it is cut out first: [`url::Url`] parses the rest around one placeholder host
/// (scheme, path, query), each listed host is parsed on its own by [`parse_host`], and the user
/// information is percent-decoded with [`percent_encoding`] (it may hold any byte, `#` included).
fn split_url(url: &str) -> CliResult<Parts> {
    let bad = |why: &str| CliError::usage(format!("bad registry URL `{}`: {why}", redact_url(url)));
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(bad(
            "expected <scheme>://…, e.g. redis://127.0.0.1:6379 (schemes: redis, rediss, etcd, zk, consul, postgres)",
        ));
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
        None => (None, authority),
    };
    let parsed = url::Url::parse(&format!("{scheme}://placeholder{tail}"))
        .map_err(|e| bad(&e.to_string()))?;
    if parsed.fragment().is_some() {
        return Err(bad("a fragment (`#…`) is not supported"));
    }
    let (user, password) = match userinfo {
        None => (None, None),
        Some(info) => {
            let (u, p) = match info.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (info, None),
            };
            let decode = |v: &str| {
                percent_encoding::percent_decode_str(v)
                    .decode_utf8()
                    .map(|d| d.into_owned())
                    .map_err(|_| bad("the credentials are not UTF-8 once %-decoded"))
            };
            let user = Some(decode(u)?).filter(|u| !u.is_empty());
            let password = p.map(decode).transpose()?.filter(|p| !p.is_empty());
            (user, password)
        }
    };
    Ok(Parts {
        scheme: parsed.scheme().to_string(),
        user,
        password,
        hosts: hosts.to_string(),
        path: parsed.path().to_string(),
        raw_path: tail.split('?').next().unwrap_or_default().to_string(),
        query: parsed.query().map(str::to_string),
    })
}

/// Parses one `host[:port]` of a host list with [`url`] (a domain name, an IPv4 address or a
/// bracketed IPv6 address; a port from 1 to 65535) and answers `host:port`, with
/// `default_port` when none is given.
fn parse_host(url: &str, item: &str, default_port: u16) -> CliResult<String> {
    let bad =
        |why: String| CliError::usage(format!("bad registry URL `{}`: {why}", redact_url(url)));
    let parsed = url::Url::parse(&format!("dcron://{item}"))
        .map_err(|e| bad(format!("`{item}` is not host[:port]: {e}")))?;
    if !parsed.path().is_empty() || parsed.fragment().is_some() {
        return Err(bad(format!("`{item}` is not host[:port]")));
    }
    let host = parsed
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| bad(format!("no host in `{item}`")))?;
    let host = url::Host::parse(host)
        .map_err(|e| bad(format!("`{host}` is not a host name or address: {e}")))?;
    let port = match parsed.port() {
        None => default_port,
        Some(0) => return Err(bad(format!("port 0 in `{item}`: use 1 to 65535"))),
        Some(p) => p,
    };
    Ok(format!("{host}:{port}"))
}

/// Parses a comma-separated host list (see [`parse_host`]); `many` says whether the backend
/// takes more than one host.
fn check_hosts(url: &str, hosts: &str, default_port: u16, many: bool) -> CliResult<Vec<String>> {
    let bad =
        |why: String| CliError::usage(format!("bad registry URL `{}`: {why}", redact_url(url)));
    if hosts.trim().is_empty() {
        return Err(bad("no host given".into()));
    }
    let mut out = Vec::new();
    for item in hosts.split(',') {
        let item = item.trim();
        if item.is_empty() {
            return Err(bad("empty host in the host list".into()));
        }
        out.push(parse_host(url, item, default_port)?);
    }
    if out.len() > 1 && !many {
        return Err(bad("this registry takes one host".into()));
    }
    Ok(out)
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.is_empty())
}

impl RegistryTarget {
    /// Resolves the target from the command-line values and the environment (`env` looks a
    /// variable up; empty values count as unset).
    ///
    /// # Errors
    /// A usage error (exit code 2) for a missing or malformed URL, an unsupported scheme
    /// (`memory://` included), credentials that do not apply to the backend, or incomplete
    /// credentials.
    pub fn resolve(args: &ConnectArgs, env: &dyn Fn(&str) -> Option<String>) -> CliResult<Self> {
        let env = |k: &str| non_empty(env(k));
        let url = match &args.registry {
            Some(u) if !u.is_empty() => u.expose().to_string(),
            _ => env(ENV_REGISTRY_URL).ok_or_else(|| {
                CliError::usage(format!(
                    "no registry given: pass --registry <url> or set {ENV_REGISTRY_URL}"
                ))
            })?,
        };
        let url = url.trim().to_string();
        let parts = split_url(&url)?;
        let mut secrets = Secrets::new();
        for s in [
            &parts.password,
            &args.password.as_ref().map(|p| p.expose().to_string()),
        ]
        .into_iter()
        .flatten()
        {
            secrets.add(s);
        }
        if let Some(t) = &args.token {
            secrets.add(t.expose());
        }
        let bad =
            |why: &str| CliError::usage(format!("bad registry URL `{}`: {why}", redact_url(&url)));
        let namespace = match args.namespace.clone().or_else(|| env(ENV_NAMESPACE)) {
            Some(ns) if ns.trim().is_empty() || ns.chars().any(char::is_control) => {
                return Err(CliError::usage(
                    "the namespace must be non-empty and free of control characters",
                ))
            }
            other => other,
        };
        let flag_user = non_empty(args.user.clone());
        let flag_password = args.password.clone().filter(|p| !p.is_empty());
        let flag_token = args.token.clone().filter(|t| !t.is_empty());
        let no_query = |q: Option<&str>| match q {
            Some(_) => Err(bad("query parameters are not supported for this registry")),
            None => Ok(()),
        };
        let no_path = |p: &str| match p {
            "" | "/" => Ok(()),
            _ => Err(bad("this registry takes no path (use --namespace)")),
        };
        let tls = TlsFiles::read(&args.tls, &env)?;
        let tls_scheme = matches!(
            parts.scheme.as_str(),
            "rediss" | "etcd+https" | "consul" | "consul+http" | "consul+https"
        );
        if !tls.is_empty() && !tls_scheme {
            let hint = match parts.scheme.as_str() {
                "redis" => " (use rediss:// for TLS)",
                "etcd" => " (use etcd+https:// for TLS)",
                _ => "",
            };
            return Err(CliError::usage(format!(
                "--tls-ca/--tls-cert/--tls-key apply to rediss://, etcd+https:// and consul registries, not {}://{hint}",
                parts.scheme
            )));
        }
        let (backend, location, display, user, password, token) = match parts.scheme.as_str() {
            "redis" | "rediss" => {
                if flag_token.is_some() {
                    return Err(CliError::usage("--token applies to consul:// registries only"));
                }
                let hosts = check_hosts(&url, &parts.hosts, 6379, false)?;
                let db = parts.path.trim_start_matches('/');
                if !db.is_empty() && db.parse::<u32>().is_err() {
                    return Err(bad("the path must be a database number, e.g. /0"));
                }
                let user = flag_user.or_else(|| env(ENV_USER));
                let password = flag_password.or_else(|| env(ENV_PASSWORD).map(Secret::new));
                let display = format!("{}://{}{}", parts.scheme, hosts[0], parts.path);
                (
                    Backend::Redis,
                    Location::Redis {
                        url: Secret::new(url.clone()),
                    },
                    display,
                    user,
                    password,
                    None,
                )
            }
            "etcd" | "etcd+https" => {
                if flag_token.is_some() {
                    return Err(CliError::usage("--token applies to consul:// registries only"));
                }
                no_query(parts.query.as_deref())?;
                no_path(&parts.path)?;
                let endpoints = check_hosts(&url, &parts.hosts, 2379, true)?;
                let user = flag_user
                    .or_else(|| env(ENV_USER))
                    .or_else(|| env(ENV_ETCD_USER))
                    .or(parts.user.clone());
                let password = flag_password
                    .or_else(|| env(ENV_PASSWORD).map(Secret::new))
                    .or_else(|| env(ENV_ETCD_PASSWORD).map(Secret::new))
                    .or(parts.password.clone().map(Secret::new));
                if user.is_some() != password.is_some() {
                    return Err(CliError::usage(format!(
                        "etcd authentication needs both a user and a password (--user/--password, {ENV_ETCD_USER}/{ENV_ETCD_PASSWORD} or user:password@ in the URL)"
                    )));
                }
                let display = format!("{}://{}", parts.scheme, endpoints.join(","));
                let tls = parts.scheme == "etcd+https";
                (
                    Backend::Etcd,
                    Location::Etcd { endpoints, tls },
                    display,
                    user,
                    password,
                    None,
                )
            }
            "zk" | "zookeeper" => {
                if flag_token.is_some() {
                    return Err(CliError::usage("--token applies to consul:// registries only"));
                }
                no_query(parts.query.as_deref())?;
                let hosts = check_hosts(&url, &parts.hosts, 2181, true)?;
                let chroot = parts.path.trim_end_matches('/');
                let raw_chroot = parts.raw_path.trim_end_matches('/');
                if raw_chroot
                    .split('/')
                    .skip(1)
                    .any(|c| c.is_empty() || c == "." || c == "..")
                {
                    return Err(bad("the chroot path has an empty, `.` or `..` component"));
                }
                let digest = env(ENV_ZK_DIGEST).and_then(|d| {
                    d.split_once(':')
                        .map(|(u, p)| (u.to_string(), p.to_string()))
                });
                if let Some((_, p)) = &digest {
                    secrets.add(p);
                }
                let user = flag_user
                    .or_else(|| env(ENV_USER))
                    .or_else(|| digest.as_ref().map(|d| d.0.clone()))
                    .or(parts.user.clone());
                let password = flag_password
                    .or_else(|| env(ENV_PASSWORD).map(Secret::new))
                    .or_else(|| digest.as_ref().map(|d| Secret::new(d.1.clone())))
                    .or(parts.password.clone().map(Secret::new));
                if user.is_some() != password.is_some() {
                    return Err(CliError::usage(format!(
                        "zookeeper digest authentication needs both a user and a password (--user/--password, {ENV_ZK_DIGEST}=user:password or user:password@ in the URL)"
                    )));
                }
                let connect = format!("{}{chroot}", hosts.join(","));
                let display = format!("zk://{connect}");
                (
                    Backend::ZooKeeper,
                    Location::ZooKeeper { connect },
                    display,
                    user,
                    password,
                    None,
                )
            }
            "consul" | "consul+http" | "consul+https" => {
                no_query(parts.query.as_deref())?;
                no_path(&parts.path)?;
                if parts.user.is_some() || parts.password.is_some() {
                    return Err(bad(&format!(
                        "consul URLs take no user:password; pass the ACL token with --token or {ENV_CONSUL_TOKEN}"
                    )));
                }
                if flag_user.is_some() || flag_password.is_some() {
                    return Err(CliError::usage(format!(
                        "--user/--password do not apply to consul; pass the ACL token with --token or {ENV_CONSUL_TOKEN}"
                    )));
                }
                let consul_env = dcron_registry_consul::ConsulEnv::read(&env)
                    .map_err(|e| CliError::usage(format!("consul environment: {e}")))?;
                let (address, shown) = if parts.hosts.trim().is_empty() {
                    let shown = consul_env
                        .http_addr
                        .clone()
                        .unwrap_or_else(|| "127.0.0.1:8500".into());
                    (None, shown)
                } else {
                    let hosts = check_hosts(&url, &parts.hosts, 8500, false)?;
                    let http = if parts.scheme == "consul+https" { "https" } else { "http" };
                    (Some(format!("{http}://{}", hosts[0])), hosts[0].clone())
                };
                let token = flag_token.or_else(|| consul_env.token().map(Secret::new));
                let display = format!("{}://{shown}", parts.scheme);
                (
                    Backend::Consul,
                    Location::Consul {
                        at: ConsulAt {
                            address,
                            env: consul_env,
                        },
                    },
                    display,
                    None,
                    None,
                    token,
                )
            }
            "postgres" | "postgresql" => {
                if flag_token.is_some() {
                    return Err(CliError::usage("--token applies to consul:// registries only"));
                }
                let hosts = check_hosts(&url, &parts.hosts, 5432, true)?;
                let user = flag_user.or_else(|| env(ENV_USER));
                let password = flag_password.or_else(|| env(ENV_PASSWORD).map(Secret::new));
                let display = format!("{}://{}{}", parts.scheme, hosts.join(","), parts.path);
                (
                    Backend::Postgres,
                    Location::Postgres {
                        url: Secret::new(url.clone()),
                    },
                    display,
                    user,
                    password,
                    None,
                )
            }
            "memory" => {
                return Err(CliError::usage(
                    "memory:// registries live inside one process and cannot be reached by dcronctl; use redis://, etcd://, zk://, consul:// or postgres://",
                ))
            }
            other => {
                return Err(CliError::usage(format!(
                    "unsupported registry scheme `{other}`; use redis://, rediss://, etcd://, zk://, consul:// or postgres://"
                )))
            }
        };
        if let Some(p) = &password {
            secrets.add(p.expose());
        }
        if let Some(t) = &token {
            secrets.add(t.expose());
        }
        Ok(RegistryTarget {
            backend,
            display,
            location,
            user,
            password,
            token,
            namespace,
            tls,
            secrets,
        })
    }

    /// The backend the URL names.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The namespace given with `--namespace` or the environment (`None`: the backend's
    /// default).
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// The user name that will authenticate, if any (not a secret).
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// Whether a password or token will be sent.
    pub fn has_secret(&self) -> bool {
        self.password.is_some() || self.token.is_some()
    }

    /// Every credential of this target, to scrub messages with.
    pub fn secrets(&self) -> &Secrets {
        &self.secrets
    }

    /// Builds the registry client and checks that the registry answers within `timeout`.
    ///
    /// # Errors
    /// Exit code 3 when the registry cannot be reached in time; 2 for a configuration the
    /// client refuses; 1 for anything else (e.g. refused credentials). Messages never contain
    /// credentials.
    pub async fn connect(&self, timeout: Duration) -> CliResult<Arc<dyn Registry>> {
        let attempt = tokio::time::timeout(timeout, self.connect_inner(timeout)).await;
        let result = match attempt {
            Err(_) => Err(CliError::unreachable(format!(
                "registry {} unreachable: no answer within {}",
                self.display,
                crate::duration::format_duration(timeout)
            ))),
            Ok(Ok(r)) => Ok(r),
            Ok(Err(dcron_core::Error::Unavailable { message, .. })) => Err(CliError::unreachable(
                format!("registry {} unreachable: {message}", self.display),
            )),
            Ok(Err(e)) => Err(CliError::from(e)),
        };
        result.map_err(|e| e.scrubbed(&self.secrets))
    }

    async fn connect_inner(&self, timeout: Duration) -> dcron_core::Result<Arc<dyn Registry>> {
        match &self.location {
            Location::Redis { url } => {
                let mut cfg = dcron_registry_redis::RedisRegistryConfig::new(url.expose())
                    .connect_timeout(timeout)
                    .command_timeout(timeout)
                    .pool_size(4);
                if let Some(ns) = &self.namespace {
                    cfg = cfg.namespace(ns);
                }
                if let Some(u) = &self.user {
                    cfg = cfg.username(u);
                }
                if let Some(p) = &self.password {
                    cfg = cfg.password(p.expose());
                }
                if !self.tls.is_empty() {
                    let mut tls = dcron_registry_redis::RedisTls::new();
                    if let Some(ca) = &self.tls.ca {
                        tls = tls.ca_pem(ca.clone());
                    }
                    if let Some((cert, key)) = &self.tls.identity {
                        tls = tls.client_identity(cert.clone(), key.clone());
                    }
                    cfg = cfg.tls(tls);
                }
                let registry = cfg.build()?;
                registry.ping().await?;
                Ok(Arc::new(registry))
            }
            Location::Etcd { endpoints, tls } => {
                let mut cfg = dcron_registry_etcd::EtcdRegistryConfig::new(endpoints.clone())
                    .connect_timeout(timeout)
                    .request_timeout(timeout);
                if let Some(ns) = &self.namespace {
                    cfg = cfg.namespace(ns);
                }
                if let (Some(u), Some(p)) = (&self.user, &self.password) {
                    cfg = cfg.credentials(u, p.expose());
                }
                if *tls {
                    let mut tls = dcron_registry_etcd::EtcdTls::new();
                    if let Some(ca) = &self.tls.ca {
                        tls = tls.ca_pem(ca.clone());
                    }
                    if let Some((cert, key)) = &self.tls.identity {
                        tls = tls.client_identity(cert.clone(), key.clone());
                    }
                    cfg = cfg.tls(tls);
                }
                let registry = cfg.connect().await?;
                // etcd connects lazily: one listing proves the cluster answers.
                registry.list_tombstones().await?;
                Ok(Arc::new(registry))
            }
            Location::ZooKeeper { connect } => {
                let mut cfg = dcron_registry_zk::ZkRegistryConfig::new(connect)
                    .connect_timeout(timeout)
                    .operation_timeout(timeout);
                if let Some(ns) = &self.namespace {
                    cfg = cfg.namespace(ns);
                }
                if let (Some(u), Some(p)) = (&self.user, &self.password) {
                    cfg = cfg.digest_auth(u, p.expose());
                }
                let registry = dcron_registry_zk::ZkRegistry::connect(cfg).await?;
                Ok(Arc::new(registry))
            }
            Location::Consul { at } => {
                let mut cfg = dcron_registry_consul::ConsulRegistryConfig::default()
                    .with_consul_env(&at.env)?
                    .with_request_timeout(timeout);
                if let Some(address) = &at.address {
                    cfg.address = address.clone();
                }
                cfg.connect_timeout = timeout;
                // The flags win over CONSUL_CACERT / CONSUL_CLIENT_CERT / CONSUL_CLIENT_KEY.
                if let Some(ca) = &self.tls.ca {
                    cfg.ca_cert_pem = Some(ca.clone());
                }
                if let Some((cert, key)) = &self.tls.identity {
                    let mut pem = cert.clone();
                    pem.push(b'\n');
                    pem.extend_from_slice(key);
                    cfg.client_identity_pem = Some(pem);
                }
                if let Some(ns) = &self.namespace {
                    cfg = cfg.with_namespace(ns);
                }
                if let Some(t) = &self.token {
                    cfg = cfg.with_token(t.expose());
                }
                let registry = dcron_registry_consul::ConsulRegistry::connect(cfg).await?;
                Ok(Arc::new(registry))
            }
            Location::Postgres { url } => {
                let mut cfg = dcron_registry_postgres::PostgresRegistryConfig::new(url.expose())
                    .connect_timeout(timeout)
                    .command_timeout(timeout)
                    .pool_size(2);
                if let Some(ns) = &self.namespace {
                    cfg = cfg.namespace(ns);
                }
                if let Some(u) = &self.user {
                    cfg = cfg.user(u);
                }
                if let Some(p) = &self.password {
                    cfg = cfg.password(p.expose());
                }
                Ok(Arc::new(cfg.connect().await?))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn resolve_with(
        url: &str,
        args: ConnectArgs,
        vars: &[(&str, &str)],
    ) -> CliResult<RegistryTarget> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let args = ConnectArgs {
            registry: Some(Secret::new(url)),
            ..args
        };
        RegistryTarget::resolve(&args, &|k| vars.get(k).cloned())
    }

    fn resolve(url: &str) -> CliResult<RegistryTarget> {
        resolve_with(url, ConnectArgs::default(), &[])
    }

    fn usage_message(r: CliResult<RegistryTarget>) -> String {
        match r {
            Err(e) => {
                assert_eq!(e.exit_code(), crate::error::EXIT_USAGE, "{e}");
                e.message().to_string()
            }
            Ok(t) => panic!("expected a usage error, got {t:?}"),
        }
    }

    #[test]
    fn redis_urls() {
        let t = resolve("redis://127.0.0.1:6379/2").expect("valid");
        assert_eq!(t.backend(), Backend::Redis);
        assert_eq!(t.to_string(), "redis://127.0.0.1:6379/2");
        let t = resolve("rediss://cache.internal").expect("valid");
        assert_eq!(t.to_string(), "rediss://cache.internal:6379");
        assert!(!t.has_secret());
        for bad in [
            "redis://",
            "redis://h:port",
            "redis://h:0",
            "redis://h:70000",
            "redis://a:1,b:2",
            "redis://h/db",
            "redis://bad host",
        ] {
            let msg = usage_message(resolve(bad));
            assert!(msg.starts_with("bad registry URL"), "{bad}: {msg}");
        }
    }

    #[test]
    fn hosts_are_parsed_by_the_url_crate() {
        for (url, shown) in [
            ("redis://[::1]:6380/0", "redis://[::1]:6380/0"),
            ("REDIS://Cache.Internal", "redis://cache.internal:6379"),
            ("redis://my_host:7000", "redis://my_host:7000"),
            (
                "etcd://10.0.0.1, [fe80::1]:2380",
                "etcd://10.0.0.1:2379,[fe80::1]:2380",
            ),
            ("zk://z1:2182,z2/apps/", "zk://z1:2182,z2:2181/apps"),
        ] {
            assert_eq!(resolve(url).expect(url).to_string(), shown, "{url}");
        }
        // A password may hold `#`, `/`-free bytes and %-escapes.
        let t = resolve("redis://u:pa#ss%2Fw@h").expect("valid");
        assert!(t.secrets().scrub("pa#ss/w").contains("***"));
        assert_eq!(url_password("etcd://u:p%40ss@h").as_deref(), Some("p@ss"));
    }

    #[test]
    fn bad_hosts_and_ports_name_the_input() {
        for (url, names) in [
            (
                "redis://h:port",
                "`h:port` is not host[:port]: invalid port number",
            ),
            (
                "redis://h:70000",
                "`h:70000` is not host[:port]: invalid port number",
            ),
            ("redis://h:0", "port 0 in `h:0`"),
            ("redis://bad host", "`bad host` is not host[:port]"),
            ("etcd://e1,,e2", "empty host in the host list"),
            ("etcd://e1,[::1", "`[::1` is not host[:port]"),
            ("zk://z1:2181,:2182", "`:2182` is not host[:port]"),
            ("zk://z1/a/../b", "`..` component"),
            ("redis://h/0#frag", "fragment"),
            ("redis://u:p%FF@h", "not UTF-8"),
        ] {
            let r = resolve(url);
            let e = r.expect_err(url);
            assert_eq!(e.kind(), crate::ErrorKind::Usage, "{url}");
            let msg = e.message();
            assert!(
                msg.starts_with(&format!("bad registry URL `{}`", redact_url(url))),
                "{url}: {msg}"
            );
            assert!(msg.contains(names), "{url}: {msg}");
        }
    }

    #[test]
    fn postgres_urls() {
        let t = resolve("postgres://app:pw-secret@db1,db2:6000/app?sslmode=verify-full")
            .expect("valid");
        assert_eq!(t.backend(), Backend::Postgres);
        assert_eq!(t.to_string(), "postgres://db1:5432,db2:6000/app");
        assert!(!format!("{t:?}").contains("pw-secret"));
        let t = resolve("postgresql://localhost").expect("valid");
        assert_eq!(t.to_string(), "postgresql://localhost:5432");
        assert!(usage_message(resolve("postgres://h:port/db")).starts_with("bad registry URL"));
    }

    #[test]
    fn credentials_are_never_displayed() {
        let t = resolve("redis://admin:s3cr%40t-pw@10.0.0.1:6380/1").expect("valid");
        let shown = format!("{t} {t:?}");
        for leak in ["s3cr", "s3cr@t-pw", "s3cr%40t-pw"] {
            assert!(!shown.contains(leak), "{shown}");
        }
        assert_eq!(t.to_string(), "redis://10.0.0.1:6380/1");
        assert!(t.secrets().scrub("auth s3cr@t-pw failed").contains("***"));

        // Flags and environment variables as well.
        let args = ConnectArgs {
            user: Some("ops".into()),
            password: Some(Secret::new("flag-password")),
            ..ConnectArgs::default()
        };
        let t = resolve_with("etcd://e1:2379,e2", args.clone(), &[]).expect("valid");
        assert_eq!(t.to_string(), "etcd://e1:2379,e2:2379");
        assert_eq!(t.user(), Some("ops"));
        assert!(!format!("{t:?} {args:?}").contains("flag-password"));
        let t = resolve_with(
            "consul://c:8500",
            ConnectArgs::default(),
            &[(ENV_CONSUL_TOKEN, "tok-en-123")],
        )
        .expect("valid");
        assert!(t.has_secret());
        assert!(!format!("{t:?} {t}").contains("tok-en-123"));
    }

    #[test]
    fn bad_urls_do_not_echo_credentials() {
        for url in [
            "redis://user:topsecret@host:notaport",
            "ftp://user:topsecret@host",
            "user:topsecret@host:6379",
            "consul://user:topsecret@host",
            "etcd://user:topsecret@h/path",
        ] {
            let msg = usage_message(resolve(url));
            assert!(!msg.contains("topsecret"), "{msg}");
        }
    }

    #[test]
    fn memory_and_unknown_schemes_are_refused() {
        assert!(usage_message(resolve("memory://")).contains("inside one process"));
        assert!(usage_message(resolve("http://h:1")).contains("unsupported registry scheme"));
        assert!(usage_message(resolve("localhost:6379")).contains("expected <scheme>://"));
    }

    #[test]
    fn url_from_the_environment() {
        let vars: HashMap<&str, &str> = [(ENV_REGISTRY_URL, "zk://z1,z2:2182/apps")].into();
        let t = RegistryTarget::resolve(&ConnectArgs::default(), &|k| {
            vars.get(k).map(|v| v.to_string())
        })
        .expect("valid");
        assert_eq!(t.backend(), Backend::ZooKeeper);
        assert_eq!(t.to_string(), "zk://z1:2181,z2:2182/apps");
        let none = RegistryTarget::resolve(&ConnectArgs::default(), &|_| None);
        assert!(usage_message(none).contains(ENV_REGISTRY_URL));
    }

    #[test]
    fn credential_precedence_and_completeness() {
        // Flag beats environment beats URL.
        let t = resolve_with(
            "etcd://u:urlpw@h",
            ConnectArgs::default(),
            &[(ENV_ETCD_USER, "envuser"), (ENV_ETCD_PASSWORD, "envpw")],
        )
        .expect("valid");
        assert_eq!(t.user(), Some("envuser"));
        let t = resolve_with(
            "etcd://h",
            ConnectArgs {
                user: Some("flaguser".into()),
                ..ConnectArgs::default()
            },
            &[(ENV_PASSWORD, "pw123")],
        )
        .expect("valid");
        assert_eq!(t.user(), Some("flaguser"));
        // A user without a password is refused for etcd and ZooKeeper.
        assert!(usage_message(resolve("etcd://onlyuser@h")).contains("both a user"));
        assert!(usage_message(resolve_with(
            "zk://h",
            ConnectArgs {
                user: Some("u".into()),
                ..ConnectArgs::default()
            },
            &[]
        ))
        .contains("both a user"));
        let t = resolve_with(
            "zk://h",
            ConnectArgs::default(),
            &[(ENV_ZK_DIGEST, "zu:zpw")],
        )
        .expect("valid");
        assert_eq!(t.user(), Some("zu"));
        // Credentials that do not apply to the backend.
        let token = ConnectArgs {
            token: Some(Secret::new("t0ken")),
            ..ConnectArgs::default()
        };
        assert!(usage_message(resolve_with("redis://h", token, &[])).contains("--token"));
        let pw = ConnectArgs {
            password: Some(Secret::new("pw")),
            ..ConnectArgs::default()
        };
        assert!(usage_message(resolve_with("consul://h", pw, &[])).contains("--token"));
    }

    #[test]
    fn consul_reads_the_consul_environment() {
        // The agent and its credentials from CONSUL_* alone.
        let t = resolve_with(
            "consul://",
            ConnectArgs::default(),
            &[
                ("CONSUL_HTTP_ADDR", "https://consul.internal:8501"),
                (ENV_CONSUL_TOKEN, "env-token"),
                ("CONSUL_TLS_SERVER_NAME", "server.dc1.consul"),
            ],
        )
        .expect("valid");
        assert_eq!(t.backend(), Backend::Consul);
        assert_eq!(t.to_string(), "consul://https://consul.internal:8501");
        assert!(t.has_secret());
        assert!(t.secrets().scrub("token env-token").contains("***"));
        match &t.location {
            Location::Consul { at } => {
                assert_eq!(at.address, None);
                let cfg = dcron_registry_consul::ConsulRegistryConfig::default()
                    .with_consul_env(&at.env)
                    .expect("config");
                assert_eq!(cfg.address, "https://consul.internal:8501");
                assert_eq!(cfg.tls_server_name.as_deref(), Some("server.dc1.consul"));
            }
            other => panic!("{other:?}"),
        }
        // Without CONSUL_HTTP_ADDR: Consul's default address.
        assert_eq!(
            resolve("consul://").expect("valid").to_string(),
            "consul://127.0.0.1:8500"
        );
        // A host in the URL wins; --token wins over the environment.
        let t = resolve_with(
            "consul://c:8600",
            ConnectArgs {
                token: Some(Secret::new("flag-token")),
                ..ConnectArgs::default()
            },
            &[
                ("CONSUL_HTTP_ADDR", "elsewhere:1"),
                (ENV_CONSUL_TOKEN, "env-token"),
            ],
        )
        .expect("valid");
        assert_eq!(t.to_string(), "consul://c:8600");
        assert_eq!(
            t.token.as_ref().map(|t| t.expose().to_string()).as_deref(),
            Some("flag-token")
        );
        assert!(usage_message(resolve_with(
            "consul://",
            ConnectArgs::default(),
            &[("CONSUL_HTTP_SSL", "maybe")]
        ))
        .contains("CONSUL_HTTP_SSL"));
    }

    #[test]
    fn consul_and_namespace() {
        let t = resolve_with(
            "consul+https://consul.example:8501",
            ConnectArgs {
                namespace: Some("billing".into()),
                ..ConnectArgs::default()
            },
            &[],
        )
        .expect("valid");
        assert_eq!(t.backend(), Backend::Consul);
        assert_eq!(t.namespace(), Some("billing"));
        let t = resolve_with(
            "consul://c",
            ConnectArgs::default(),
            &[(ENV_NAMESPACE, "ns2")],
        )
        .expect("valid");
        assert_eq!(t.namespace(), Some("ns2"));
        assert!(usage_message(resolve("consul://c/path")).contains("no path"));
        assert!(usage_message(resolve_with(
            "redis://h",
            ConnectArgs {
                namespace: Some(" ".into()),
                ..ConnectArgs::default()
            },
            &[]
        ))
        .contains("namespace"));
    }
}
