//! A small client for the parts of Consul's HTTP API dcron uses: `/v1/kv`, `/v1/session`,
//! `/v1/txn` and blocking queries. Every failure becomes a `dcron_core::Error` here, naming the
//! registry operation that sent the request.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use dcron_core::{Error, Result};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::{Deserialize, Serialize};

use crate::config::ConsulRegistryConfig;
use crate::error::{AgentError, Failure};

/// Characters kept as they are in a URL path built from a KV key (`/` separates segments). The
/// registry's own keys only use `[A-Za-z0-9_/-]`; anything else is percent-encoded.
const PATH: &AsciiSet = &NON_ALPHANUMERIC.remove(b'/').remove(b'-').remove(b'_');

/// The backend name used in errors.
pub(crate) const BACKEND: &str = "consul";

/// The most operations Consul accepts in one transaction (`maxTxnOps`, 128 since 1.14; 64
/// before). More is refused with 413.
pub(crate) const MAX_TXN_OPS: usize = 128;

/// The most bytes of `/v1/txn` body sent at once: Consul refuses bodies over `txn_max_req_len`
/// (512 KiB by default) with 413; 8 KiB stay for the estimate's slack.
pub(crate) const MAX_TXN_BODY: usize = 512 * 1024 - 8 * 1024;

/// What a request is for, for error messages: the registry operation and its subject.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ctx<'a> {
    pub operation: &'static str,
    pub subject: &'a str,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(operation: &'static str, subject: &'a str) -> Self {
        Ctx { operation, subject }
    }

    /// The error of a failed answer.
    pub(crate) fn agent(self, status: Option<u16>, message: impl Into<String>) -> Error {
        AgentError::new(self.operation, self.subject, status, message).into_error()
    }

    /// The error of one failed operation of a rolled-back transaction.
    pub(crate) fn op_failed(self, op: &TxnKvOp, failure: &TxnFailure) -> Error {
        self.agent(
            Some(409),
            format!(
                "transaction operation {} ({} {}) failed: {}",
                failure.op_index, op.verb, op.key, failure.what
            ),
        )
    }

    /// A transaction that failed without naming any of its operations.
    pub(crate) fn rolled_back(self, failures: &[TxnFailure]) -> Error {
        let what: Vec<String> = failures
            .iter()
            .map(|f| format!("{}: {}", f.op_index, f.what))
            .collect();
        self.agent(
            Some(409),
            format!("transaction rolled back: {}", what.join("; ")),
        )
    }
}

/// One KV entry as Consul returns it (`GET /v1/kv/…`, txn results).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct KvEntry {
    pub key: String,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub modify_index: u64,
    #[serde(default)]
    pub session: Option<String>,
}

impl KvEntry {
    /// The decoded value (empty when Consul sent `null`).
    pub(crate) fn bytes(&self) -> Result<Vec<u8>> {
        match &self.value {
            None => Ok(Vec::new()),
            Some(v) => {
                // Refused unread above the limit: the size follows from the base64 length.
                let padding = v.bytes().rev().take_while(|b| *b == b'=').count().min(2);
                let len = (v.len() / 4 * 3).saturating_sub(padding);
                dcron_core::backend::check_stored_size(
                    &self.key,
                    len,
                    crate::registry::MAX_VALUE_BYTES,
                )?;
                BASE64.decode(v).map_err(|e| Error::Corrupt {
                    key: self.key.clone(),
                    reason: format!("value is not base64: {e}"),
                })
            }
        }
    }
}

/// One KV operation of a `/v1/txn` request.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct TxnKvOp {
    verb: &'static str,
    key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(skip_serializing_if = "is_zero")]
    index: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    session: Option<String>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

#[derive(Serialize)]
struct TxnOpJson<'a> {
    #[serde(rename = "KV")]
    kv: &'a TxnKvOp,
}

impl TxnKvOp {
    fn new(verb: &'static str, key: String) -> Self {
        TxnKvOp {
            verb,
            key,
            value: None,
            index: 0,
            session: None,
        }
    }

    /// The key the operation works on.
    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    /// `set`: writes the value.
    pub(crate) fn set(key: String, value: &[u8]) -> Self {
        TxnKvOp {
            value: Some(BASE64.encode(value)),
            ..TxnKvOp::new("set", key)
        }
    }

    /// `cas`: writes when the key's ModifyIndex is `index` (0: only when the key is absent).
    pub(crate) fn cas(key: String, value: &[u8], index: u64) -> Self {
        TxnKvOp {
            value: Some(BASE64.encode(value)),
            index,
            ..TxnKvOp::new("cas", key)
        }
    }

    /// `lock`: writes the value when `session` holds (or can take) the key's lock.
    pub(crate) fn lock(key: String, value: &[u8], session: &str) -> Self {
        TxnKvOp {
            value: Some(BASE64.encode(value)),
            session: Some(session.to_string()),
            ..TxnKvOp::new("lock", key)
        }
    }

    /// `get`: reads the key, failing the transaction when it is absent.
    pub(crate) fn get(key: String) -> Self {
        TxnKvOp::new("get", key)
    }

    /// `get-tree`: reads every key with the prefix (never fails).
    pub(crate) fn get_tree(prefix: String) -> Self {
        TxnKvOp::new("get-tree", prefix)
    }

    /// `check-not-exists`: fails the transaction when the key exists.
    pub(crate) fn check_not_exists(key: String) -> Self {
        TxnKvOp::new("check-not-exists", key)
    }

    /// `check-index`: fails the transaction unless the key exists with ModifyIndex `index`.
    pub(crate) fn check_index(key: String, index: u64) -> Self {
        TxnKvOp {
            index,
            ..TxnKvOp::new("check-index", key)
        }
    }

    /// `check-session`: fails the transaction unless `session` holds the key's lock.
    pub(crate) fn check_session(key: String, session: &str) -> Self {
        TxnKvOp {
            session: Some(session.to_string()),
            ..TxnKvOp::new("check-session", key)
        }
    }

    /// `delete`: removes the key (absent is fine).
    pub(crate) fn delete(key: String) -> Self {
        TxnKvOp::new("delete", key)
    }

    /// `delete-tree`: removes every key with the prefix.
    pub(crate) fn delete_tree(prefix: String) -> Self {
        TxnKvOp::new("delete-tree", prefix)
    }

    /// `delete-cas`: removes the key when its ModifyIndex is `index` (a missing key is fine).
    pub(crate) fn delete_cas(key: String, index: u64) -> Self {
        TxnKvOp {
            index,
            ..TxnKvOp::new("delete-cas", key)
        }
    }

    /// An estimate (from above) of the JSON size of this operation in a transaction body.
    pub(crate) fn body_size(&self) -> usize {
        // `{"KV":{"Verb":"…","Key":"…","Value":"…","Index":…,"Session":"…"}},`
        80 + self.verb.len()
            + 2 * self.key.len()
            + self.value.as_ref().map_or(0, String::len)
            + self.session.as_ref().map_or(0, String::len)
    }
}

/// Splits operations into consecutive groups that each fit one transaction: at most
/// [`MAX_TXN_OPS`] operations and [`MAX_TXN_BODY`] bytes of body (a group holds at least one
/// operation).
pub(crate) fn txn_groups(ops: &[TxnKvOp]) -> Vec<std::ops::Range<usize>> {
    let mut groups = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, op) in ops.iter().enumerate() {
        let size = op.body_size();
        if i > start && (i - start == MAX_TXN_OPS || bytes + size > MAX_TXN_BODY) {
            groups.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < ops.len() {
        groups.push(start..ops.len());
    }
    groups
}

/// A failed operation of a rolled-back transaction.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct TxnFailure {
    pub op_index: usize,
    #[serde(default)]
    pub what: String,
}

impl TxnFailure {
    /// How it failed.
    pub(crate) fn kind(&self) -> Failure {
        Failure::of(&self.what)
    }
}

/// What a transaction did.
#[derive(Debug)]
pub(crate) enum TxnOutcome {
    /// Applied: the KV entries returned by the operations that return one.
    Committed(Vec<KvEntry>),
    /// Rolled back: the failed operations.
    RolledBack(Vec<TxnFailure>),
}

impl TxnOutcome {
    /// Whether the failures of a rollback are all conditions (no ACL refusal, no other error);
    /// the first other failure as an error otherwise.
    pub(crate) fn conditions_only(
        failures: &[TxnFailure],
        ops: &[TxnKvOp],
        ctx: Ctx<'_>,
    ) -> Result<()> {
        match failures
            .iter()
            .find(|f| !matches!(f.kind(), Failure::Condition))
        {
            None => Ok(()),
            Some(f) => Err(match ops.get(f.op_index) {
                Some(op) => ctx.op_failed(op, f),
                None => ctx.rolled_back(failures),
            }),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TxnResponse {
    #[serde(default)]
    results: Option<Vec<TxnResult>>,
    #[serde(default)]
    errors: Option<Vec<TxnFailure>>,
}

#[derive(Deserialize)]
struct TxnResult {
    #[serde(rename = "KV", default)]
    kv: Option<KvEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SessionCreated {
    #[serde(rename = "ID")]
    id: String,
}

/// Resolves the TLS server name to the configured host, so that the certificate is checked
/// against (and SNI names) `CONSUL_TLS_SERVER_NAME` while the connection goes to the address.
struct ServerNameResolver {
    server_name: String,
    host: String,
}

impl reqwest::dns::Resolve for ServerNameResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = if name.as_str().eq_ignore_ascii_case(&self.server_name) {
            self.host.clone()
        } else {
            name.as_str().to_string()
        };
        Box::pin(async move {
            let addrs: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The HTTP client: base address, token, datacenter and timeouts.
#[derive(Clone)]
pub(crate) struct Client {
    http: reqwest::Client,
    base: Arc<str>,
    token: Option<Arc<str>>,
    datacenter: Option<Arc<str>>,
    request_timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("datacenter", &self.datacenter)
            .finish_non_exhaustive()
    }
}

/// reqwest is built without a crypto provider of its own (its default would add aws-lc, a
/// second TLS stack beside the *ring* one every other dcron crate uses), so the process
/// needs a rustls default provider: install *ring* unless the application already chose one.
fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // A concurrent install by another thread is as good as ours: ignore the error.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

impl Client {
    /// Builds the client (no request is sent).
    pub(crate) fn new(config: &ConsulRegistryConfig) -> Result<Self> {
        config.validate()?;
        install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .tls_backend_rustls();
        if let Some(pem) = &config.ca_cert_pem {
            for cert in reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
                Error::InvalidArgument(format!("consul CA certificate does not parse: {e}"))
            })? {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let Some(pem) = &config.client_identity_pem {
            let identity = reqwest::Identity::from_pem(pem).map_err(|e| {
                Error::InvalidArgument(format!("consul client identity does not parse: {e}"))
            })?;
            builder = builder.identity(identity);
        }
        let mut base = config.address.trim().trim_end_matches('/').to_string();
        if let Some(server_name) = config.tls_server_name.as_deref().filter(|n| !n.is_empty()) {
            let mut url = reqwest::Url::parse(&base).map_err(|e| {
                Error::InvalidArgument(format!("consul address `{base}` is not a URL: {e}"))
            })?;
            let host = match url.host() {
                Some(url::Host::Domain(d)) => d.to_string(),
                Some(url::Host::Ipv4(ip)) => ip.to_string(),
                Some(url::Host::Ipv6(ip)) => ip.to_string(),
                None => {
                    return Err(Error::InvalidArgument(format!(
                        "consul address `{base}` has no host"
                    )))
                }
            };
            if url.scheme() == "https" && !host.eq_ignore_ascii_case(server_name) {
                url.set_host(Some(server_name)).map_err(|e| {
                    Error::InvalidArgument(format!(
                        "consul TLS server name `{server_name}` is not a host name: {e}"
                    ))
                })?;
                builder = builder.dns_resolver(Arc::new(ServerNameResolver {
                    server_name: server_name.to_string(),
                    host,
                }));
                base = url.as_str().trim_end_matches('/').to_string();
            }
        }
        let http = builder.build().map_err(|e| Error::Backend {
            backend: BACKEND,
            message: "building the HTTP client".into(),
            source: Some(Box::new(e)),
        })?;
        Ok(Client {
            http,
            base: Arc::from(base),
            token: config.token.as_deref().map(Arc::from),
            datacenter: config.datacenter.as_deref().map(Arc::from),
            request_timeout: config.request_timeout,
        })
    }

    /// The base URL requests go to.
    #[cfg(test)]
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    fn request(&self, method: Method, path: &str, timeout: Duration) -> RequestBuilder {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .timeout(timeout);
        if let Some(token) = &self.token {
            req = req.header("X-Consul-Token", &**token);
        }
        if let Some(dc) = &self.datacenter {
            req = req.query(&[("dc", &**dc)]);
        }
        req
    }

    fn kv_path(key: &str) -> String {
        format!("/v1/kv/{}", utf8_percent_encode(key, PATH))
    }

    async fn send(&self, req: RequestBuilder, ctx: Ctx<'_>) -> Result<Response> {
        req.send().await.map_err(|e| transport_error(e, ctx))
    }

    /// Reads one key; `None` when absent.
    pub(crate) async fn kv_get(&self, key: &str, ctx: Ctx<'_>) -> Result<Option<KvEntry>> {
        let resp = self
            .send(
                self.request(Method::GET, &Self::kv_path(key), self.request_timeout),
                ctx,
            )
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let resp = check_status(resp, ctx).await?;
        let entries: Vec<KvEntry> = json_body(resp, ctx).await?;
        Ok(entries.into_iter().find(|e| e.key == key))
    }

    /// Reads every key under `prefix` and the prefix's `X-Consul-Index`. With `block`
    /// (`index`, `wait`) it is a blocking query: it answers once the index passed `index` or
    /// `wait` elapsed.
    pub(crate) async fn kv_list(
        &self,
        prefix: &str,
        block: Option<(u64, Duration)>,
        ctx: Ctx<'_>,
    ) -> Result<(Vec<KvEntry>, u64)> {
        let timeout = match block {
            // Consul adds up to wait/16 of jitter.
            Some((_, wait)) => self.request_timeout + wait + wait / 16,
            None => self.request_timeout,
        };
        let mut req = self
            .request(Method::GET, &Self::kv_path(prefix), timeout)
            .query(&[("recurse", "")]);
        if let Some((index, wait)) = block {
            req = req.query(&[
                ("index", index.to_string()),
                ("wait", format!("{}ms", wait.as_millis().max(1))),
            ]);
        }
        let resp = self.send(req, ctx).await?;
        let index = resp
            .headers()
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok((Vec::new(), index));
        }
        let resp = check_status(resp, ctx).await?;
        let entries: Vec<KvEntry> = json_body(resp, ctx).await?;
        Ok((entries, index))
    }

    /// The keys under `prefix`, cut after the first `separator` beyond it
    /// (`GET /v1/kv/<prefix>?keys&separator=`): one entry per "directory".
    pub(crate) async fn kv_keys(
        &self,
        prefix: &str,
        separator: &str,
        ctx: Ctx<'_>,
    ) -> Result<Vec<String>> {
        let req = self
            .request(Method::GET, &Self::kv_path(prefix), self.request_timeout)
            .query(&[("keys", ""), ("separator", separator)]);
        let resp = self.send(req, ctx).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(Vec::new());
        }
        let resp = check_status(resp, ctx).await?;
        json_body(resp, ctx).await
    }

    /// Runs one transaction of at most [`MAX_TXN_OPS`] KV operations.
    pub(crate) async fn txn(&self, ops: &[TxnKvOp], ctx: Ctx<'_>) -> Result<TxnOutcome> {
        if ops.len() > MAX_TXN_OPS {
            return Err(Error::InvalidArgument(format!(
                "consul {} `{}`: a transaction of {} operations (at most {MAX_TXN_OPS})",
                ctx.operation,
                ctx.subject,
                ops.len()
            )));
        }
        let body: Vec<TxnOpJson<'_>> = ops.iter().map(|kv| TxnOpJson { kv }).collect();
        // A transaction without writes is served by `Txn.Read`, which may be stale unless asked
        // to be consistent (the leader then confirms it still leads); writes go through raft.
        let req = self
            .request(Method::PUT, "/v1/txn", self.request_timeout)
            .query(&[("consistent", "")])
            .json(&body);
        let resp = self.send(req, ctx).await?;
        let status = resp.status();
        if status == StatusCode::OK || status == StatusCode::CONFLICT {
            let parsed: TxnResponse = json_body(resp, ctx).await?;
            if status == StatusCode::OK {
                let entries = parsed
                    .results
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|r| r.kv)
                    .collect();
                return Ok(TxnOutcome::Committed(entries));
            }
            return Ok(TxnOutcome::RolledBack(parsed.errors.unwrap_or_default()));
        }
        Err(check_status(resp, ctx)
            .await
            .err()
            .unwrap_or_else(|| ctx.agent(Some(status.as_u16()), "unexpected status")))
    }

    /// Creates a session with `behavior=delete`, lock-delay 0, no health checks (so that the
    /// TTL alone decides; without `NodeChecks: []` Consul attaches `serfHealth`) and `ttl`.
    pub(crate) async fn session_create(
        &self,
        name: &str,
        ttl: Duration,
        ctx: Ctx<'_>,
    ) -> Result<String> {
        let body = serde_json::json!({
            "Name": name,
            "TTL": format!("{}s", ttl.as_secs().max(1)),
            "Behavior": "delete",
            "LockDelay": "0s",
            "NodeChecks": [],
            "Checks": [],
        });
        let req = self
            .request(Method::PUT, "/v1/session/create", self.request_timeout)
            .json(&body);
        let resp = check_status(self.send(req, ctx).await?, ctx).await?;
        Ok(json_body::<SessionCreated>(resp, ctx).await?.id)
    }

    /// Renews a session; `false` when Consul no longer knows it (404).
    pub(crate) async fn session_renew(&self, id: &str, ctx: Ctx<'_>) -> Result<bool> {
        let path = format!("/v1/session/renew/{}", utf8_percent_encode(id, PATH));
        let resp = self
            .send(self.request(Method::PUT, &path, self.request_timeout), ctx)
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(false);
        }
        let resp = check_status(resp, ctx).await?;
        // A renewed session comes back as a one-element list; an empty list means it is gone.
        let sessions: Option<Vec<serde_json::Value>> = json_body(resp, ctx).await?;
        Ok(sessions.is_some_and(|s| !s.is_empty()))
    }

    /// Destroys a session (its `behavior=delete` keys go with it). Unknown ids are fine.
    pub(crate) async fn session_destroy(&self, id: &str, ctx: Ctx<'_>) -> Result<()> {
        let path = format!("/v1/session/destroy/{}", utf8_percent_encode(id, PATH));
        let resp = self
            .send(self.request(Method::PUT, &path, self.request_timeout), ctx)
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(());
        }
        check_status(resp, ctx).await.map(|_| ())
    }
}

/// Maps a transport failure (refused, reset, timeout, reply lost) to `Unavailable`.
fn transport_error(e: reqwest::Error, ctx: Ctx<'_>) -> Error {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect to the agent"
    } else {
        "request failed (the reply may be lost)"
    };
    Error::Unavailable {
        message: format!("consul {} `{}`: {what}", ctx.operation, ctx.subject),
        source: Some(Box::new(e.without_url())),
    }
}

/// Passes a 2xx response through; maps every other status into an error.
async fn check_status(resp: Response, ctx: Ctx<'_>) -> Result<Response> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = resp.text().await.unwrap_or_default();
    let body = truncate(body.trim(), 512);
    let message = if body.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("no message")
            .to_string()
    } else {
        body
    };
    Err(ctx.agent(Some(status.as_u16()), message))
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

async fn json_body<T: serde::de::DeserializeOwned>(resp: Response, ctx: Ctx<'_>) -> Result<T> {
    let bytes = resp.bytes().await.map_err(|e| transport_error(e, ctx))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ctx.agent(None, format!("the agent's answer does not decode: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txn_ops_serialise_like_the_api() {
        let op = TxnKvOp::cas("a/b".into(), b"hi", 0);
        let json = serde_json::to_value(TxnOpJson { kv: &op }).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"KV": {"Verb": "cas", "Key": "a/b", "Value": "aGk="}})
        );
        let op = TxnKvOp::check_session("k".into(), "s");
        let json = serde_json::to_value(TxnOpJson { kv: &op }).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"KV": {"Verb": "check-session", "Key": "k", "Session": "s"}})
        );
        let op = TxnKvOp::check_index("k".into(), 7);
        let json = serde_json::to_value(TxnOpJson { kv: &op }).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"KV": {"Verb": "check-index", "Key": "k", "Index": 7}})
        );
    }

    #[test]
    fn bad_base64_is_corrupt() {
        let e = KvEntry {
            key: "k".into(),
            value: Some("!!".into()),
            modify_index: 1,
            session: None,
        };
        assert!(matches!(e.bytes(), Err(Error::Corrupt { .. })));
    }

    #[test]
    fn key_paths_keep_the_registrys_characters() {
        assert_eq!(
            Client::kv_path("ns/tasks/meta/a_2Eb-c"),
            "/v1/kv/ns/tasks/meta/a_2Eb-c"
        );
        assert_eq!(Client::kv_path("raw key%"), "/v1/kv/raw%20key%25");
    }

    #[test]
    fn groups_split_by_operations_and_body_size() {
        let small: Vec<TxnKvOp> = (0..300)
            .map(|i| TxnKvOp::set(format!("ns/records/status/t{i}"), b"{}"))
            .collect();
        assert_eq!(txn_groups(&small), vec![0..128, 128..256, 256..300]);
        let big = vec![b'x'; 300 * 1024];
        let ops = vec![
            TxnKvOp::set("a".into(), &big),
            TxnKvOp::set("b".into(), b"1"),
            TxnKvOp::set("c".into(), &big),
        ];
        assert_eq!(txn_groups(&ops), vec![0..2, 2..3]);
        assert!(txn_groups(&[]).is_empty());
    }

    #[test]
    fn a_tls_server_name_redirects_the_url_but_not_the_connection() {
        let config = ConsulRegistryConfig::new("https://10.0.0.1:8501")
            .with_tls_server_name("server.dc1.consul");
        let client = Client::new(&config).expect("client");
        assert_eq!(client.base(), "https://server.dc1.consul:8501");
        let plain =
            Client::new(&ConsulRegistryConfig::new("http://10.0.0.1:8500")).expect("client");
        assert_eq!(plain.base(), "http://10.0.0.1:8500");
        let v6 = ConsulRegistryConfig::new("https://[::1]:8501").with_tls_server_name("consul");
        assert_eq!(
            Client::new(&v6).expect("client").base(),
            "https://consul:8501"
        );
        let bad = ConsulRegistryConfig::new("https://10.0.0.1:8501").with_tls_server_name("a b");
        let err = Client::new(&bad).expect_err("a server name with a space is refused");
        assert!(err.to_string().contains("`a b`"), "{err}");
    }
}
