//! A small client for the parts of Consul's HTTP API dcron uses: `/v1/kv`, `/v1/session`,
//! `/v1/txn` and blocking queries. Every failure becomes a `dcron_core::Error` here.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use dcron_core::{Error, Result};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::{Deserialize, Serialize};

use crate::config::ConsulRegistryConfig;

/// Characters kept as they are in a URL path built from a KV key (`/` separates segments).
const PATH: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The backend name used in errors.
pub(crate) const BACKEND: &str = "consul";

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
            Some(v) => BASE64.decode(v).map_err(|e| Error::Corrupt {
                key: self.key.clone(),
                reason: format!("value is not base64: {e}"),
            }),
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

    /// `get-tree`: reads every key with the prefix.
    pub(crate) fn get_tree(prefix: String) -> Self {
        TxnKvOp::new("get-tree", prefix)
    }

    /// `check-not-exists`: fails the transaction when the key exists.
    pub(crate) fn check_not_exists(key: String) -> Self {
        TxnKvOp::new("check-not-exists", key)
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

    /// `delete-cas`: removes the key when its ModifyIndex is `index`.
    pub(crate) fn delete_cas(key: String, index: u64) -> Self {
        TxnKvOp {
            index,
            ..TxnKvOp::new("delete-cas", key)
        }
    }
}

/// The most operations sent in one transaction (Consul's limit before 1.x raised it to 128).
pub(crate) const MAX_TXN_OPS: usize = 64;

/// The most bytes of `/v1/txn` body one transaction of records may take: Consul refuses bodies
/// over 512 KiB (`txn_max_req_len`); 8 KiB stay for the JSON around the operations.
pub(crate) const MAX_TXN_BODY: usize = 512 * 1024 - 8 * 1024;

impl TxnKvOp {
    /// An estimate (from above) of the JSON size of this operation in a transaction body.
    pub(crate) fn body_size(&self) -> usize {
        // `{"KV":{"Verb":"…","Key":"…","Value":"…","Index":…,"Session":"…"}},`
        80 + self.verb.len()
            + 2 * self.key.len()
            + self.value.as_ref().map_or(0, String::len)
            + self.session.as_ref().map_or(0, String::len)
    }
}

/// A failed operation of a rolled-back transaction.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct TxnError {
    pub op_index: usize,
    #[serde(default)]
    pub what: String,
}

/// What a transaction did.
#[derive(Debug)]
pub(crate) enum TxnOutcome {
    /// Applied: the KV entries returned by the operations that return one.
    Committed(Vec<KvEntry>),
    /// Rolled back: the failed operations.
    RolledBack(Vec<TxnError>),
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TxnResponse {
    #[serde(default)]
    results: Option<Vec<TxnResult>>,
    #[serde(default)]
    errors: Option<Vec<TxnError>>,
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

/// The HTTP client: base address, token, datacenter and timeouts.
#[derive(Clone)]
pub(crate) struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    datacenter: Option<String>,
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

impl Client {
    /// Builds the client (no request is sent).
    pub(crate) fn new(config: &ConsulRegistryConfig) -> Result<Self> {
        config.validate()?;
        let mut builder = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .use_rustls_tls();
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
        let http = builder.build().map_err(|e| Error::Backend {
            backend: BACKEND,
            message: "building the HTTP client".into(),
            source: Some(Box::new(e)),
        })?;
        Ok(Client {
            http,
            base: config.address.trim().trim_end_matches('/').to_string(),
            token: config.token.clone(),
            datacenter: config.datacenter.clone(),
            request_timeout: config.request_timeout,
        })
    }

    fn request(&self, method: Method, path: &str, timeout: Duration) -> RequestBuilder {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .timeout(timeout);
        if let Some(token) = &self.token {
            req = req.header("X-Consul-Token", token);
        }
        if let Some(dc) = &self.datacenter {
            req = req.query(&[("dc", dc)]);
        }
        req
    }

    fn kv_path(key: &str) -> String {
        format!("/v1/kv/{}", utf8_percent_encode(key, PATH))
    }

    async fn send(&self, req: RequestBuilder, context: &str) -> Result<Response> {
        req.send().await.map_err(|e| transport_error(e, context))
    }

    /// Reads one key; `None` when absent.
    pub(crate) async fn kv_get(&self, key: &str) -> Result<Option<KvEntry>> {
        let resp = self
            .send(
                self.request(Method::GET, &Self::kv_path(key), self.request_timeout),
                key,
            )
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let resp = check_status(resp, key).await?;
        let entries: Vec<KvEntry> = json_body(resp, key).await?;
        Ok(entries.into_iter().find(|e| e.key == key))
    }

    /// Reads every key under `prefix` and the prefix's `X-Consul-Index`. With `block`
    /// (`index`, `wait`) it is a blocking query: it answers once the index passed `index` or
    /// `wait` elapsed.
    pub(crate) async fn kv_list(
        &self,
        prefix: &str,
        block: Option<(u64, Duration)>,
    ) -> Result<(Vec<KvEntry>, u64)> {
        let timeout = match block {
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
        let resp = self.send(req, prefix).await?;
        let index = resp
            .headers()
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok((Vec::new(), index));
        }
        let resp = check_status(resp, prefix).await?;
        let entries: Vec<KvEntry> = json_body(resp, prefix).await?;
        Ok((entries, index))
    }

    /// `PUT /v1/kv/<key>` with query flags (`cas`, `acquire`, …): Consul's `true`/`false`.
    pub(crate) async fn kv_put(
        &self,
        key: &str,
        value: Vec<u8>,
        query: &[(&str, String)],
    ) -> Result<bool> {
        let req = self
            .request(Method::PUT, &Self::kv_path(key), self.request_timeout)
            .query(query)
            .body(value);
        let resp = check_status(self.send(req, key).await?, key).await?;
        json_body::<bool>(resp, key).await
    }

    /// Runs one transaction of at most [`MAX_TXN_OPS`] KV operations.
    pub(crate) async fn txn(&self, ops: &[TxnKvOp], context: &str) -> Result<TxnOutcome> {
        if ops.len() > MAX_TXN_OPS {
            return Err(Error::InvalidArgument(format!(
                "consul transaction of {} operations (at most {MAX_TXN_OPS})",
                ops.len()
            )));
        }
        let body: Vec<TxnOpJson<'_>> = ops.iter().map(|kv| TxnOpJson { kv }).collect();
        let req = self
            .request(Method::PUT, "/v1/txn", self.request_timeout)
            .json(&body);
        let resp = self.send(req, context).await?;
        let status = resp.status();
        if status == StatusCode::OK || status == StatusCode::CONFLICT {
            let parsed: TxnResponse = json_body(resp, context).await?;
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
        Err(check_status(resp, context)
            .await
            .err()
            .unwrap_or_else(|| unexpected(status, "", context)))
    }

    /// Creates a session with `behavior=delete`, lock-delay 0 and the given TTL.
    pub(crate) async fn session_create(&self, name: &str, ttl: Duration) -> Result<String> {
        let body = serde_json::json!({
            "Name": name,
            "TTL": format!("{}s", ttl.as_secs().max(1)),
            "Behavior": "delete",
            "LockDelay": "0s",
        });
        let req = self
            .request(Method::PUT, "/v1/session/create", self.request_timeout)
            .json(&body);
        let context = "session create";
        let resp = check_status(self.send(req, context).await?, context).await?;
        Ok(json_body::<SessionCreated>(resp, context).await?.id)
    }

    /// Renews a session; `false` when Consul no longer knows it (404).
    pub(crate) async fn session_renew(&self, id: &str) -> Result<bool> {
        let path = format!("/v1/session/renew/{}", utf8_percent_encode(id, PATH));
        let context = format!("session {id}");
        let resp = self
            .send(
                self.request(Method::PUT, &path, self.request_timeout),
                &context,
            )
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(false);
        }
        let resp = check_status(resp, &context).await?;
        // A renewed session comes back as a one-element list; an empty list means it is gone.
        let sessions: Option<Vec<serde_json::Value>> = json_body(resp, &context).await?;
        Ok(sessions.is_some_and(|s| !s.is_empty()))
    }

    /// Destroys a session (its `behavior=delete` keys go with it). Unknown ids are fine.
    pub(crate) async fn session_destroy(&self, id: &str) -> Result<()> {
        let path = format!("/v1/session/destroy/{}", utf8_percent_encode(id, PATH));
        let context = format!("session {id}");
        let resp = self
            .send(
                self.request(Method::PUT, &path, self.request_timeout),
                &context,
            )
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(());
        }
        check_status(resp, &context).await.map(|_| ())
    }
}

/// Maps a transport failure (refused, reset, timeout, bad body stream) to `Unavailable`.
fn transport_error(e: reqwest::Error, context: &str) -> Error {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    Error::Unavailable {
        message: format!("consul {what} at {context}"),
        source: Some(Box::new(e.without_url())),
    }
}

fn unexpected(status: StatusCode, body: &str, context: &str) -> Error {
    let body = body.trim();
    let message = format!("{status} {body} at {context}");
    match status {
        StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => {
            Error::AccessDenied(format!("{body} at {context}"))
        }
        StatusCode::TOO_MANY_REQUESTS
        | StatusCode::BAD_GATEWAY
        | StatusCode::SERVICE_UNAVAILABLE
        | StatusCode::GATEWAY_TIMEOUT => Error::Unavailable {
            message: format!("consul answered {message}"),
            source: None,
        },
        // Consul answers 500 while it has no leader or cannot reach its servers.
        StatusCode::INTERNAL_SERVER_ERROR
            if body.contains("No cluster leader") || body.contains("No known Consul servers") =>
        {
            Error::Unavailable {
                message: format!("consul answered {message}"),
                source: None,
            }
        }
        _ => Error::Backend {
            backend: BACKEND,
            message,
            source: None,
        },
    }
}

/// Passes a 2xx response through; maps every other status into an error.
async fn check_status(resp: Response, context: &str) -> Result<Response> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = resp.text().await.unwrap_or_default();
    Err(unexpected(status, &truncate(&body, 512), context))
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

async fn json_body<T: serde::de::DeserializeOwned>(resp: Response, context: &str) -> Result<T> {
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| transport_error(e, context))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Backend {
        backend: BACKEND,
        message: format!("unexpected answer at {context}: {e}"),
        source: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_semantic_errors() {
        assert!(matches!(
            unexpected(StatusCode::FORBIDDEN, "Permission denied", "k"),
            Error::AccessDenied(m) if m.contains("Permission denied")
        ));
        assert!(unexpected(StatusCode::SERVICE_UNAVAILABLE, "", "k").is_retryable());
        assert!(
            unexpected(StatusCode::INTERNAL_SERVER_ERROR, "No cluster leader", "k").is_retryable()
        );
        match unexpected(StatusCode::BAD_REQUEST, "Invalid TTL", "ns/x") {
            Error::Backend {
                backend, message, ..
            } => {
                assert_eq!(backend, "consul");
                assert!(message.contains("400") && message.contains("Invalid TTL"));
                assert!(message.contains("ns/x"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

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
    fn key_paths_are_percent_encoded() {
        assert_eq!(Client::kv_path("ns/tasks/a%20b"), "/v1/kv/ns/tasks/a%2520b");
    }
}
