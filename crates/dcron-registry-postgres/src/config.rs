//! [`PostgresRegistryConfig`]: where the server is, how to authenticate, and the registry's
//! settings; resolved the way libpq resolves a connection (URL, then environment, then
//! defaults).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use dcron_core::{Error, Result};

use crate::registry::PostgresRegistry;

/// The environment variable the tests read the server URL from.
pub const ENV_TEST_URL: &str = "DCRON_TEST_POSTGRES_URL";

/// The namespace used when none is configured.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The schema the registry's tables live in when none is configured.
pub const DEFAULT_SCHEMA: &str = "dcron";

/// The longest schema name accepted (PostgreSQL identifiers are at most 63 bytes).
pub const MAX_SCHEMA_BYTES: usize = 48;

/// How TLS is negotiated with the server, with libpq's names and meanings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS when the server offers it, without verifying the server (libpq tries plain text
    /// first; here it is the same as `Prefer`).
    Allow,
    /// TLS when the server offers it, without verifying the server (libpq's default).
    Prefer,
    /// TLS always; the server is verified against the root certificate when one is configured
    /// (as libpq does), otherwise not verified.
    Require,
    /// TLS always; the server's certificate must chain to the root certificate.
    VerifyCa,
    /// TLS always; the certificate must chain to the root certificate **and** name the host.
    VerifyFull,
}

impl SslMode {
    /// The libpq name (`disable`, `allow`, `prefer`, `require`, `verify-ca`, `verify-full`).
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SslMode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.trim() {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(Error::InvalidArgument(format!(
                    "sslmode `{other}` is not one of disable, allow, prefer, require, verify-ca, verify-full"
                )))
            }
        })
    }
}

/// A string that is never printed.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(String);

impl Secret {
    pub(crate) fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// Settings of a [`PostgresRegistry`]; build one with [`PostgresRegistryConfig::new`] and
/// [`PostgresRegistryConfig::connect`].
///
/// Connection parameters are resolved as libpq does: what the connection string (a
/// `postgres://` URL or `key=value` pairs) says wins over the environment (`PGHOST`, `PGPORT`,
/// `PGUSER`, `PGPASSWORD`, `PGDATABASE`, `PGSSLMODE`, `PGSSLROOTCERT`, `PGPASSFILE`,
/// `PGAPPNAME`, `PGCONNECT_TIMEOUT`), which wins over the defaults (`localhost:5432`, the user
/// `$USER`, the database named after the user, `sslmode=prefer`). A password missing from both
/// is looked up in the password file (`passfile`, `PGPASSFILE` or `~/.pgpass`, libpq's format,
/// ignored when group- or world-readable). Values set with the builder methods win over all of
/// these.
///
/// Neither `Debug` nor [`PostgresRegistryConfig::describe`] ever shows a password.
///
/// ```
/// use std::time::Duration;
/// use dcron_registry_postgres::{PostgresRegistryConfig, SslMode};
///
/// let config = PostgresRegistryConfig::new("postgres://app:secret@db.internal:5432/app")
///     .namespace("billing")
///     .schema("dcron")
///     .ssl_mode(SslMode::VerifyFull)
///     .ssl_root_cert("/etc/ssl/certs/db-ca.pem")
///     .pool_size(16)
///     .command_timeout(Duration::from_secs(5));
/// assert!(!format!("{config:?}").contains("secret"));
/// ```
#[derive(Clone, Debug)]
pub struct PostgresRegistryConfig {
    conninfo: Option<Secret>,
    pub(crate) namespace: String,
    pub(crate) schema: String,
    pub(crate) pool_size: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) command_timeout: Duration,
    pub(crate) node_check_interval: Duration,
    user: Option<String>,
    password: Option<Secret>,
    password_file: Option<PathBuf>,
    ssl_mode: Option<SslMode>,
    ssl_root_cert: Option<PathBuf>,
    application_name: Option<String>,
    use_environment: bool,
}

impl PostgresRegistryConfig {
    /// A configuration for the connection string `conninfo`: a URL
    /// (`postgres://[user[:password]@][host][:port][,…][/dbname][?param=value&…]`, also
    /// `postgresql://`) or libpq `key=value` pairs. The parameters `sslmode` (every libpq mode,
    /// `verify-full` included), `sslrootcert` (a PEM file, or `system` for the system's
    /// roots) and `passfile` are understood besides those of `tokio-postgres`.
    pub fn new(conninfo: impl Into<String>) -> Self {
        PostgresRegistryConfig {
            conninfo: Some(Secret::new(conninfo)),
            ..PostgresRegistryConfig::from_environment()
        }
    }

    /// A configuration with no connection string: everything comes from the `PG*` environment
    /// variables and the defaults.
    pub fn from_environment() -> Self {
        PostgresRegistryConfig {
            conninfo: None,
            namespace: DEFAULT_NAMESPACE.to_string(),
            schema: DEFAULT_SCHEMA.to_string(),
            pool_size: 8,
            connect_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(10),
            node_check_interval: Duration::from_secs(1),
            user: None,
            password: None,
            password_file: None,
            ssl_mode: None,
            ssl_root_cert: None,
            application_name: None,
            use_environment: true,
        }
    }

    /// The namespace (default `default`): a column of every table, so two namespaces on one
    /// database never see each other. Any non-empty string without NUL characters.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// The schema holding the registry's tables and functions (default `dcron`): lowercase
    /// ASCII letters, digits and `_`, starting with a letter or `_`, at most
    /// [`MAX_SCHEMA_BYTES`] bytes. It is created and migrated by
    /// [`PostgresRegistryConfig::connect`].
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// The most pooled connections (default 8; at least 1). Watches use a connection each,
    /// outside the pool.
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size.max(1);
        self
    }

    /// How long connecting may take (default 5 s), unless the connection string says
    /// `connect_timeout`.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long one registry call may take, waiting for a pooled connection included (default
    /// 10 s); past it the call fails with `Unavailable`.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// How often a node watch removes the expired node rows of its namespace (and so reports
    /// expiries; default 1 s, at least 100 ms).
    pub fn node_check_interval(mut self, interval: Duration) -> Self {
        self.node_check_interval = interval.max(Duration::from_millis(100));
        self
    }

    /// The user, over the connection string and `PGUSER`.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// The password, over the connection string, `PGPASSWORD` and the password file.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(Secret::new(password));
        self
    }

    /// The password file (libpq's `.pgpass` format), over `passfile` and `PGPASSFILE`.
    pub fn password_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.password_file = Some(path.into());
        self
    }

    /// The TLS mode, over `sslmode` and `PGSSLMODE`.
    pub fn ssl_mode(mut self, mode: SslMode) -> Self {
        self.ssl_mode = Some(mode);
        self
    }

    /// The root certificate(s) (a PEM file) the server is verified against, over `sslrootcert`
    /// and `PGSSLROOTCERT`; the path `system` means the system's roots.
    pub fn ssl_root_cert(mut self, path: impl Into<PathBuf>) -> Self {
        self.ssl_root_cert = Some(path.into());
        self
    }

    /// The `application_name` the server shows for the connections (default `dcron`).
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = Some(name.into());
        self
    }

    /// Ignores the `PG*` environment variables and `~/.pgpass` (for programs that must not
    /// pick up an operator's settings by accident).
    pub fn ignore_environment(mut self) -> Self {
        self.use_environment = false;
        self
    }

    /// The server as a URL without its password, e.g.
    /// `postgres://app@db.internal:5432/app?sslmode=verify-full`, for logs.
    ///
    /// # Errors
    /// As [`PostgresRegistryConfig::connect`] for a configuration that does not resolve.
    pub fn describe(&self) -> Result<String> {
        Ok(self.resolve()?.display)
    }

    /// Connects: builds the pool, checks that the server answers, and creates or migrates the
    /// schema.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a bad connection string, schema or namespace;
    /// [`Error::Unavailable`] when the server cannot be reached within the connect timeout;
    /// [`Error::AccessDenied`] when it refuses the credentials.
    pub async fn connect(self) -> Result<PostgresRegistry> {
        PostgresRegistry::connect(self).await
    }

    /// Resolves against the process environment and home directory.
    pub(crate) fn resolve(&self) -> Result<Resolved> {
        if self.use_environment {
            let home = std::env::var_os("HOME").map(PathBuf::from);
            self.resolve_with(&|k| std::env::var(k).ok(), home.as_deref())
        } else {
            self.resolve_with(&|_| None, None)
        }
    }

    /// Resolves the connection with `env` as the environment and `home` as the home directory.
    pub(crate) fn resolve_with(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
        home: Option<&Path>,
    ) -> Result<Resolved> {
        check_schema(&self.schema)?;
        check_namespace(&self.namespace)?;
        let env = |k: &str| env(k).filter(|v| !v.is_empty());
        let (rest, params) = match &self.conninfo {
            Some(c) => split_conninfo(c.expose())?,
            None => (String::new(), Vec::new()),
        };
        let param = |k: &str| {
            params
                .iter()
                .rev()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        let mut pg = if rest.trim().is_empty() {
            tokio_postgres::Config::new()
        } else {
            rest.parse::<tokio_postgres::Config>().map_err(|e| {
                Error::InvalidArgument(format!("bad PostgreSQL connection string: {e}"))
            })?
        };
        if pg.get_hosts().is_empty() {
            match env("PGHOST") {
                Some(hosts) => {
                    for h in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
                        if h.starts_with('/') {
                            pg.host_path(h);
                        } else {
                            pg.host(h);
                        }
                    }
                }
                None => {
                    pg.host("localhost");
                }
            }
        }
        if pg.get_ports().is_empty() {
            if let Some(ports) = env("PGPORT") {
                for p in ports.split(',').map(str::trim) {
                    let port = p.parse::<u16>().map_err(|_| {
                        Error::InvalidArgument(format!("PGPORT `{p}` is not a port number"))
                    })?;
                    pg.port(port);
                }
            }
        }
        if let Some(user) = &self.user {
            pg.user(user);
        } else if pg.get_user().is_none() {
            let user = env("PGUSER")
                .or_else(|| env("USER"))
                .unwrap_or_else(|| "postgres".to_string());
            pg.user(&user);
        }
        if pg.get_dbname().is_none() {
            if let Some(db) = env("PGDATABASE") {
                pg.dbname(&db);
            }
        }
        if pg.get_application_name().is_none() {
            let name = self
                .application_name
                .clone()
                .or_else(|| env("PGAPPNAME"))
                .unwrap_or_else(|| "dcron".to_string());
            pg.application_name(&name);
        }
        if pg.get_connect_timeout().is_none() {
            let timeout = env("PGCONNECT_TIMEOUT")
                .and_then(|s| s.trim().parse::<u64>().ok())
                .filter(|s| *s > 0)
                .map_or(self.connect_timeout, Duration::from_secs);
            pg.connect_timeout(timeout);
        }
        if let Some(p) = &self.password {
            pg.password(p.expose());
        } else if pg.get_password().is_none() {
            if let Some(p) = env("PGPASSWORD") {
                pg.password(p);
            } else {
                let file = self
                    .password_file
                    .clone()
                    .or_else(|| param("passfile").map(PathBuf::from))
                    .or_else(|| env("PGPASSFILE").map(PathBuf::from))
                    .or_else(|| home.map(|h| h.join(".pgpass")));
                if let Some(file) = file {
                    if let Some(p) = password_from_file(&file, &pg) {
                        pg.password(p);
                    }
                }
            }
        }
        let ssl_mode = match self.ssl_mode {
            Some(m) => m,
            None => match param("sslmode").or_else(|| env("PGSSLMODE")) {
                Some(s) => s.parse()?,
                None => SslMode::Prefer,
            },
        };
        let explicit_root = self
            .ssl_root_cert
            .clone()
            .or_else(|| param("sslrootcert").map(PathBuf::from))
            .or_else(|| env("PGSSLROOTCERT").map(PathBuf::from));
        let default_root = home
            .map(|h| h.join(".postgresql").join("root.crt"))
            .filter(|p| p.is_file());
        let root_cert = explicit_root.or(default_root);
        let display = display_url(&pg, ssl_mode);
        Ok(Resolved {
            pg,
            ssl_mode,
            root_cert,
            display,
        })
    }
}

/// A configuration resolved into what the client needs.
#[derive(Clone)]
pub(crate) struct Resolved {
    /// The client configuration (without `sslmode`; TLS is set up from the two fields below).
    pub(crate) pg: tokio_postgres::Config,
    pub(crate) ssl_mode: SslMode,
    pub(crate) root_cert: Option<PathBuf>,
    /// The server as a URL without the password.
    pub(crate) display: String,
}

impl fmt::Debug for Resolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display)
    }
}

fn check_schema(schema: &str) -> Result<()> {
    let mut chars = schema.chars();
    let ok = schema.len() <= MAX_SCHEMA_BYTES
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !schema.starts_with("pg_");
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "schema `{}` must be lowercase ASCII letters, digits and `_`, start with a letter or `_`, not start with `pg_`, and be at most {MAX_SCHEMA_BYTES} bytes",
            schema.chars().take(64).collect::<String>()
        )))
    }
}

fn check_namespace(namespace: &str) -> Result<()> {
    if namespace.is_empty() || namespace.contains('\0') {
        return Err(Error::InvalidArgument(
            "the namespace must be non-empty and free of NUL characters".into(),
        ));
    }
    Ok(())
}

/// The parameters this crate handles itself rather than `tokio-postgres`.
const OWN_PARAMS: [&str; 3] = ["sslmode", "sslrootcert", "passfile"];
/// Parameters refused with a clear message.
const UNSUPPORTED_PARAMS: [&str; 4] = ["sslcert", "sslkey", "sslpassword", "sslcrl"];

/// Splits the parameters this crate handles out of a connection string: answers the rest (for
/// `tokio-postgres`) and the extracted `(key, value)` pairs, decoded.
fn split_conninfo(conninfo: &str) -> Result<(String, Vec<(String, String)>)> {
    let trimmed = conninfo.trim();
    let mut own = Vec::new();
    let lower = trimmed.to_ascii_lowercase();
    if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
        let Some((base, query)) = trimmed.split_once('?') else {
            return Ok((trimmed.to_string(), own));
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode(k)?;
            if UNSUPPORTED_PARAMS.contains(&key.as_str()) {
                return Err(unsupported_param(&key));
            }
            if OWN_PARAMS.contains(&key.as_str()) {
                own.push((key, percent_decode(v)?));
            } else {
                kept.push(pair);
            }
        }
        let rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return Ok((rest, own));
    }
    // key=value pairs, values optionally single-quoted with backslash escapes.
    let mut kept = Vec::new();
    for (key, value) in tokenize_key_values(trimmed)? {
        if UNSUPPORTED_PARAMS.contains(&key.as_str()) {
            return Err(unsupported_param(&key));
        }
        if OWN_PARAMS.contains(&key.as_str()) {
            own.push((key, value));
        } else {
            let quoted = value.replace('\\', "\\\\").replace('\'', "\\'");
            kept.push(format!("{key}='{quoted}'"));
        }
    }
    Ok((kept.join(" "), own))
}

fn unsupported_param(key: &str) -> Error {
    Error::InvalidArgument(format!(
        "the connection parameter `{key}` is not supported (client certificates are not implemented)"
    ))
}

fn tokenize_key_values(s: &str) -> Result<Vec<(String, String)>> {
    let bad =
        |why: &str| Error::InvalidArgument(format!("bad PostgreSQL connection string: {why}"));
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(bad(&format!("expected `=` after `{key}`")));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err(bad("unterminated quoted value")),
                    Some('\'') => break,
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => return Err(bad("unterminated quoted value")),
                    },
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                if c == '\\' {
                    chars.next();
                    if let Some(n) = chars.next() {
                        value.push(n);
                    }
                    continue;
                }
                value.push(c);
                chars.next();
            }
        }
        out.push((key, value));
    }
}

fn percent_decode(s: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    Error::InvalidArgument("bad %-escape in the connection URL".into())
                })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| Error::InvalidArgument("the connection URL is not UTF-8".into()))
}

/// The password for the first host of `pg` from a libpq password file, if a line matches.
/// A file readable by group or others is ignored, as libpq does.
fn password_from_file(path: &Path, pg: &tokio_postgres::Config) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() {
        return None;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                file = %path.display(),
                "password file has group or world access; ignored (chmod 0600 it)"
            );
            return None;
        }
    }
    let text = std::fs::read_to_string(path).ok()?;
    let host = match pg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        // libpq matches a socket directory as `localhost`.
        _ => "localhost".to_string(),
    };
    let port = pg.get_ports().first().copied().unwrap_or(5432).to_string();
    let user = pg.get_user().unwrap_or_default().to_string();
    let db = pg.get_dbname().map_or_else(|| user.clone(), str::to_string);
    password_from_lines(&text, [&host, &port, &db, &user])
}

/// The password of the first line whose four fields match (`*` matches anything).
fn password_from_lines(text: &str, wanted: [&str; 4]) -> Option<String> {
    for line in text.lines() {
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields = split_pgpass_line(line);
        if fields.len() < 5 {
            continue;
        }
        let matches = fields[..4]
            .iter()
            .zip(wanted)
            .all(|(field, want)| field == "*" || field == want);
        if matches {
            return Some(fields[4..].join(":"));
        }
    }
    None
}

/// Splits a password-file line on unescaped `:` and removes the `\` escapes.
fn split_pgpass_line(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    if let Some(last) = fields.last_mut() {
                        last.push(n);
                    }
                }
            }
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => {
                if let Some(last) = fields.last_mut() {
                    last.push(c);
                }
            }
        }
    }
    fields
}

fn display_url(pg: &tokio_postgres::Config, ssl_mode: SslMode) -> String {
    let ports = pg.get_ports();
    let hosts: Vec<String> = pg
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let port = ports
                .get(i)
                .or_else(|| ports.first())
                .copied()
                .unwrap_or(5432);
            match h {
                tokio_postgres::config::Host::Tcp(h) if h.contains(':') => format!("[{h}]:{port}"),
                tokio_postgres::config::Host::Tcp(h) => format!("{h}:{port}"),
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(p) => format!("{}:{port}", p.display()),
            }
        })
        .collect();
    let user = pg.get_user().unwrap_or_default();
    let db = pg.get_dbname().unwrap_or(user);
    format!(
        "postgres://{user}@{}/{db}?sslmode={ssl_mode}",
        hosts.join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn resolve(conninfo: &str, vars: &[(&str, &str)]) -> Result<Resolved> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        PostgresRegistryConfig::new(conninfo).resolve_with(&|k| vars.get(k).cloned(), None)
    }

    #[test]
    fn url_wins_over_the_environment() {
        let r = resolve(
            "postgres://app:pw@db:6000/appdb?sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem",
            &[
                ("PGHOST", "other"),
                ("PGUSER", "x"),
                ("PGSSLMODE", "disable"),
            ],
        )
        .expect("resolves");
        assert_eq!(r.ssl_mode, SslMode::VerifyFull);
        assert_eq!(r.root_cert.as_deref(), Some(Path::new("/tmp/ca.pem")));
        assert_eq!(r.pg.get_user(), Some("app"));
        assert_eq!(r.pg.get_password(), Some(&b"pw"[..]));
        assert_eq!(
            r.display,
            "postgres://app@db:6000/appdb?sslmode=verify-full"
        );
        assert!(!format!("{r:?}").contains("pw@"));
    }

    #[test]
    fn environment_fills_what_the_url_leaves_out() {
        let r = resolve(
            "",
            &[
                ("PGHOST", "h1"),
                ("PGPORT", "7000"),
                ("PGUSER", "u"),
                ("PGPASSWORD", "p"),
                ("PGDATABASE", "d"),
                ("PGSSLMODE", "require"),
            ],
        )
        .expect("resolves");
        assert_eq!(r.display, "postgres://u@h1:7000/d?sslmode=require");
        assert_eq!(r.pg.get_password(), Some(&b"p"[..]));
        let defaults = resolve("", &[("USER", "me")]).expect("resolves");
        assert_eq!(
            defaults.display,
            "postgres://me@localhost:5432/me?sslmode=prefer"
        );
    }

    #[test]
    fn key_value_strings_keep_their_quoting() {
        let r = resolve(
            r"host=db user=app password='it\'s secret' dbname=x sslmode=verify-ca",
            &[],
        )
        .expect("resolves");
        assert_eq!(r.pg.get_password(), Some(&b"it's secret"[..]));
        assert_eq!(r.ssl_mode, SslMode::VerifyCa);
    }

    #[test]
    fn bad_values_are_typed_errors() {
        for bad in [
            "postgres://h/db?sslmode=sometimes",
            "postgres://h/db?sslcert=/x",
            "postgres://h/db?x=%zz",
            "host=h port",
        ] {
            assert!(
                matches!(resolve(bad, &[]), Err(Error::InvalidArgument(_))),
                "{bad}"
            );
        }
        for schema in ["", "Upper", "1abc", "a-b", "pg_x", &"a".repeat(49)] {
            let r = PostgresRegistryConfig::new("postgres://h/db")
                .schema(schema)
                .resolve_with(&|_| None, None);
            assert!(matches!(r, Err(Error::InvalidArgument(_))), "{schema}");
        }
        let r = PostgresRegistryConfig::new("postgres://h/db")
            .namespace("")
            .resolve_with(&|_| None, None);
        assert!(matches!(r, Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn password_file_lines_match_like_libpq() {
        let text = "# comment\nother:5432:*:*:nope\ndb:5432:app:u:pa\\:ss\n*:*:*:*:fallback\n";
        assert_eq!(
            password_from_lines(text, ["db", "5432", "app", "u"]).as_deref(),
            Some("pa:ss")
        );
        assert_eq!(
            password_from_lines(text, ["x", "1", "y", "z"]).as_deref(),
            Some("fallback")
        );
        assert_eq!(password_from_lines("a:b:c", ["a", "b", "c", "d"]), None);
    }

    #[test]
    fn password_file_is_read_when_private() {
        let dir = std::env::temp_dir().join(format!("dcron-pgpass-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("pgpass");
        std::fs::write(&file, "db:5432:app:u:filepw\n").expect("write");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        }
        let r = PostgresRegistryConfig::new("postgres://u@db/app")
            .password_file(&file)
            .resolve_with(&|_| None, None)
            .expect("resolves");
        assert_eq!(r.pg.get_password(), Some(&b"filepw"[..]));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
            let r = PostgresRegistryConfig::new("postgres://u@db/app")
                .password_file(&file)
                .resolve_with(&|_| None, None)
                .expect("resolves");
            assert_eq!(r.pg.get_password(), None);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn secrets_never_print() {
        let c = PostgresRegistryConfig::new("postgres://u:hunter2@h/db").password("hunter3");
        let shown = format!("{c:?} {}", c.describe().expect("resolves"));
        assert!(
            !shown.contains("hunter2") && !shown.contains("hunter3"),
            "{shown}"
        );
    }
}
