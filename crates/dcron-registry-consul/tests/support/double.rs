//! A test double of the parts of Consul's HTTP API that `ConsulRegistry` uses, written from
//! Consul's API documentation (KV store, sessions, transactions, blocking queries).
//!
//! It serves HTTP/1.1 on `127.0.0.1:<random port>` from one in-memory state:
//! - a raft-like global `index`, bumped once per write (a transaction's writes share one index);
//!   every key has `CreateIndex`, `ModifyIndex`, `LockIndex`, `Flags` and an optional lock
//!   `Session`; deleted keys leave a grave (the index of their deletion) so that a prefix's
//!   `X-Consul-Index` moves on deletes, as Consul's KV tombstones make it do;
//! - `GET /v1/kv/<key>` (`recurse`, `keys` with `separator`, `raw`), blocking with `index` and
//!   `wait` (answers once the key's or prefix's index exceeds `index`, or when `wait` passes);
//!   `PUT` with `flags`, `cas`, `acquire`, `release` (plain writes keep an existing lock);
//!   `DELETE` with `recurse` and `cas` (a CAS delete of a missing key answers `true`, as
//!   Consul's does); values over 512 KiB → 413;
//! - sessions: `create` (`TTL` between the configured minimum — 1 s by default, Consul's is 10 s
//!   — and 24 h, `Behavior` `release`/`delete`, `LockDelay`, default 15 s), `renew` (404 when
//!   gone), `destroy`, `info`; a session not renewed within its TTL is invalidated (Consul may
//!   take up to 2×TTL, the double does it at TTL): its locks are released, or its keys deleted
//!   for `behavior=delete`, and its lock-delay applies to those keys;
//! - `PUT /v1/txn` with the KV verbs `set`, `cas`, `lock`, `unlock`, `get`, `get-tree`,
//!   `check-index`, `check-session`, `check-not-exists`, `delete`, `delete-tree`, `delete-cas`
//!   (which, as in Consul, succeeds on a missing key), `get` failing on a missing key:
//!   all-or-nothing, at most 64 operations and 512 KiB (413 otherwise), 409 with `Errors`
//!   (every failed operation, by `OpIndex`) on rollback, `Results` for the verbs that return an
//!   entry (values only for `get`/`get-tree`);
//! - ACLs reduced to one optional token (`X-Consul-Token` or `?token=`; 403 otherwise) and one
//!   datacenter name (`?dc=` of another one → 500 "No path to datacenter").
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use percent_encoding::percent_decode_str;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::AbortHandle;
use tokio::time::Instant;

/// Consul's value size limit (`kv_max_value_size`) and transaction body limit.
pub const MAX_BODY: usize = 512 * 1024;
/// Operations allowed in one transaction.
pub const MAX_TXN_OPS: usize = 64;
const DEFAULT_LOCK_DELAY: Duration = Duration::from_secs(15);
const MAX_WAIT: Duration = Duration::from_secs(600);

/// Settings of a double.
#[derive(Clone, Debug)]
pub struct DoubleConfig {
    /// Smallest session TTL accepted (Consul: 10 s).
    pub min_session_ttl: Duration,
    /// When set, every request must carry this token.
    pub acl_token: Option<String>,
    /// The datacenter's name.
    pub datacenter: String,
}

impl Default for DoubleConfig {
    fn default() -> Self {
        DoubleConfig {
            min_session_ttl: Duration::from_secs(1),
            acl_token: None,
            datacenter: "dc1".into(),
        }
    }
}

#[derive(Clone, Debug)]
struct Entry {
    value: Vec<u8>,
    flags: u64,
    create_index: u64,
    modify_index: u64,
    lock_index: u64,
    session: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Behavior {
    Release,
    Delete,
}

#[derive(Clone, Debug)]
struct Session {
    id: String,
    name: String,
    ttl: Option<Duration>,
    behavior: Behavior,
    lock_delay: Duration,
    deadline: Option<Instant>,
    create_index: u64,
}

#[derive(Default)]
struct State {
    /// The raft-like index: last applied write.
    index: u64,
    /// Index of the last change of the KV table (writes and deletes).
    kv_index: u64,
    kv: BTreeMap<String, Entry>,
    /// Deleted keys: index of their deletion.
    graves: BTreeMap<String, u64>,
    sessions: HashMap<String, Session>,
    lock_delays: HashMap<String, Instant>,
    next_session: u64,
}

struct Shared {
    config: DoubleConfig,
    state: Mutex<State>,
    changed: tokio::sync::watch::Sender<u64>,
    tasks: Mutex<Vec<AbortHandle>>,
    /// Blocking queries waiting right now.
    blocked: std::sync::atomic::AtomicUsize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn notify(&self, index: u64) {
        self.changed.send_replace(index);
    }

    fn track(&self, handle: AbortHandle) {
        let mut tasks = match self.tasks.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        tasks.retain(|h| !h.is_finished());
        tasks.push(handle);
    }
}

/// A running double; stops when dropped.
pub struct ConsulDouble {
    addr: SocketAddr,
    shared: Arc<Shared>,
    reaper: AbortHandle,
}

impl Drop for ConsulDouble {
    fn drop(&mut self) {
        self.reaper.abort();
        self.stop_serving();
    }
}

impl ConsulDouble {
    /// Starts a double with the default settings.
    pub async fn start() -> Self {
        Self::start_with(DoubleConfig::default()).await
    }

    /// Starts a double.
    pub async fn start_with(config: DoubleConfig) -> Self {
        let (changed, _) = tokio::sync::watch::channel(0);
        let shared = Arc::new(Shared {
            config,
            // A bootstrapped cluster's raft log is never empty: writes start above the index an
            // empty KV table reports.
            state: Mutex::new(State {
                index: 10,
                kv_index: 10,
                ..State::default()
            }),
            changed,
            tasks: Mutex::new(Vec::new()),
            blocked: std::sync::atomic::AtomicUsize::new(0),
        });
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("local addr");
        serve(shared.clone(), listener);
        let reaper = tokio::spawn(reap(shared.clone())).abort_handle();
        ConsulDouble {
            addr,
            shared,
            reaper,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The current raft-like index.
    pub fn index(&self) -> u64 {
        self.shared.lock().index
    }

    /// Replaces the whole store by an empty one whose index is lower than before, as a
    /// snapshot restore or a rebuilt cluster would: blocking queries see the index go backwards.
    pub fn rewind(&self) {
        {
            let mut st = self.shared.lock();
            *st = State {
                index: 10,
                kv_index: 10,
                ..State::default()
            };
        }
        self.shared.notify(10);
    }

    /// The lock session of a key, if the key exists.
    pub fn key_session(&self, key: &str) -> Option<Option<String>> {
        self.shared.lock().kv.get(key).map(|e| e.session.clone())
    }

    /// Number of keys under a prefix.
    pub fn count_keys(&self, prefix: &str) -> usize {
        self.shared
            .lock()
            .kv
            .keys()
            .filter(|k| k.starts_with(prefix))
            .count()
    }

    /// Number of blocking queries waiting right now.
    pub fn blocked_queries(&self) -> usize {
        self.shared
            .blocked
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Number of live sessions.
    pub fn session_count(&self) -> usize {
        self.shared.lock().sessions.len()
    }

    /// Drops every connection and stops listening (the state is kept).
    pub fn stop_serving(&self) {
        let mut tasks = match self.shared.tasks.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        for t in tasks.drain(..) {
            t.abort();
        }
    }

    /// Restarts the server on the same port, keeping the state; session timers restart from
    /// their full TTL, as after a Consul leader election.
    pub async fn restart(&self) {
        self.stop_serving();
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::task::yield_now().await;
                }
                Err(e) => panic!("rebind {}: {e}", self.addr),
            }
        };
        {
            let mut st = self.shared.lock();
            let now = Instant::now();
            for s in st.sessions.values_mut() {
                s.deadline = s.ttl.map(|t| now + t);
            }
        }
        serve(self.shared.clone(), listener);
    }
}

fn serve(shared: Arc<Shared>, listener: TcpListener) {
    let accept_shared = shared.clone();
    let handle = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let conn_shared = accept_shared.clone();
            let conn = tokio::spawn(async move {
                let svc_shared = conn_shared.clone();
                let service = hyper::service::service_fn(move |req| {
                    let s = svc_shared.clone();
                    async move { Ok::<_, Infallible>(handle(s, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
            accept_shared.track(conn.abort_handle());
        }
    });
    shared.track(handle.abort_handle());
}

/// Invalidates sessions whose TTL passed.
async fn reap(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tick.tick().await;
        let now = Instant::now();
        let notify = {
            let mut st = shared.lock();
            let expired: Vec<String> = st
                .sessions
                .values()
                .filter(|s| s.deadline.is_some_and(|d| d <= now))
                .map(|s| s.id.clone())
                .collect();
            if expired.is_empty() {
                None
            } else {
                st.index += 1;
                let idx = st.index;
                for id in expired {
                    invalidate(&mut st, &id, idx);
                }
                Some(idx)
            }
        };
        if let Some(idx) = notify {
            shared.notify(idx);
        }
    }
}

/// Removes a session, releasing or deleting (behavior) its keys at index `idx`.
fn invalidate(st: &mut State, id: &str, idx: u64) -> bool {
    let Some(session) = st.sessions.remove(id) else {
        return false;
    };
    let held: Vec<String> = st
        .kv
        .iter()
        .filter(|(_, e)| e.session.as_deref() == Some(id))
        .map(|(k, _)| k.clone())
        .collect();
    let now = Instant::now();
    for key in held {
        if !session.lock_delay.is_zero() {
            st.lock_delays.insert(key.clone(), now + session.lock_delay);
        }
        match session.behavior {
            Behavior::Delete => {
                st.kv.remove(&key);
                st.graves.insert(key, idx);
            }
            Behavior::Release => {
                if let Some(e) = st.kv.get_mut(&key) {
                    e.session = None;
                    e.modify_index = idx;
                }
            }
        }
        st.kv_index = idx;
    }
    true
}

// ----- HTTP plumbing -----

type Resp = Response<Full<Bytes>>;

fn reply(status: StatusCode, body: impl Into<Bytes>, index: Option<u64>) -> Resp {
    let mut b = Response::builder()
        .status(status)
        .header("Content-Type", "application/json");
    if let Some(i) = index {
        b = b.header("X-Consul-Index", i.to_string());
    }
    b.body(Full::new(body.into()))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn json_reply(status: StatusCode, v: &Value, index: Option<u64>) -> Resp {
    reply(status, v.to_string(), index)
}

fn text(status: StatusCode, msg: impl Into<String>) -> Resp {
    reply(status, msg.into(), None)
}

fn parse_query(q: Option<&str>) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let dec = |s: &str| {
            percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        out.insert(dec(k), dec(v));
    }
    out
}

/// Parses a Go duration (`10s`, `1.5s`, `100ms`, `1m30s`, `0`).
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += num * scale;
        rest = &rest[unit_end..];
    }
    Some(Duration::from_secs_f64(total))
}

fn go_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

fn entry_json(key: &str, e: &Entry, with_value: bool) -> Value {
    let mut v = json!({
        "LockIndex": e.lock_index,
        "Key": key,
        "Flags": e.flags,
        "Value": if with_value && !e.value.is_empty() { Value::String(BASE64.encode(&e.value)) } else { Value::Null },
        "CreateIndex": e.create_index,
        "ModifyIndex": e.modify_index,
    });
    if let Some(s) = &e.session {
        v["Session"] = Value::String(s.clone());
    }
    v
}

fn session_json(s: &Session) -> Value {
    json!({
        "ID": s.id,
        "Name": s.name,
        "Node": "consul-double",
        "LockDelay": s.lock_delay.as_nanos() as u64,
        "Behavior": match s.behavior { Behavior::Release => "release", Behavior::Delete => "delete" },
        "TTL": s.ttl.map(go_duration).unwrap_or_default(),
        "NodeChecks": ["serfHealth"],
        "ServiceChecks": null,
        "CreateIndex": s.create_index,
        "ModifyIndex": s.create_index,
    })
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Resp {
    let query = parse_query(req.uri().query());
    if let Some(required) = &shared.config.acl_token {
        let given = req
            .headers()
            .get("X-Consul-Token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| query.get("token").cloned());
        if given.as_deref() != Some(required.as_str()) {
            return text(StatusCode::FORBIDDEN, "ACL not found");
        }
    }
    if let Some(dc) = query.get("dc") {
        if !dc.is_empty() && *dc != shared.config.datacenter {
            return text(StatusCode::INTERNAL_SERVER_ERROR, "No path to datacenter");
        }
    }
    let method = req.method().clone();
    let raw_path = req.uri().path().to_string();
    let Ok(path) = percent_decode_str(&raw_path).decode_utf8() else {
        return text(StatusCode::BAD_REQUEST, "path is not UTF-8");
    };
    let path = path.into_owned();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("reading body: {e}")),
    };
    if let Some(key) = path.strip_prefix("/v1/kv/") {
        return match method {
            Method::GET => kv_get(&shared, key, &query).await,
            Method::PUT => kv_put(&shared, key, &query, &body),
            Method::DELETE => kv_delete(&shared, key, &query),
            _ => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        };
    }
    match (method, path.as_str()) {
        (Method::PUT, "/v1/session/create") => session_create(&shared, &body),
        (Method::PUT, p) if p.starts_with("/v1/session/renew/") => {
            session_renew(&shared, &p["/v1/session/renew/".len()..])
        }
        (Method::PUT, p) if p.starts_with("/v1/session/destroy/") => {
            session_destroy(&shared, &p["/v1/session/destroy/".len()..])
        }
        (Method::GET, p) if p.starts_with("/v1/session/info/") => {
            let st = shared.lock();
            let id = &p["/v1/session/info/".len()..];
            let list: Vec<Value> = st.sessions.get(id).map(session_json).into_iter().collect();
            json_reply(StatusCode::OK, &Value::Array(list), Some(st.index))
        }
        (Method::PUT, "/v1/txn") => txn(&shared, &body),
        (_, p) if p.starts_with("/v1/session/") || p == "/v1/txn" => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => text(StatusCode::NOT_FOUND, "not found"),
    }
}

// ----- KV -----

/// The index a read of `key` (or of the prefix, when `prefix`) reports.
fn read_index(st: &State, key: &str, prefix: bool) -> u64 {
    let idx = if prefix {
        let live = st
            .kv
            .range(key.to_string()..)
            .take_while(|(k, _)| k.starts_with(key))
            .map(|(_, e)| e.modify_index)
            .max()
            .unwrap_or(0);
        let dead = st
            .graves
            .range(key.to_string()..)
            .take_while(|(k, _)| k.starts_with(key))
            .map(|(_, i)| *i)
            .max()
            .unwrap_or(0);
        live.max(dead)
    } else {
        st.kv
            .get(key)
            .map(|e| e.modify_index)
            .or_else(|| st.graves.get(key).copied())
            .unwrap_or(0)
    };
    if idx == 0 {
        st.kv_index.max(1)
    } else {
        idx
    }
}

async fn kv_get(shared: &Shared, key: &str, q: &HashMap<String, String>) -> Resp {
    let prefix = q.contains_key("recurse") || q.contains_key("keys");
    let min_index: u64 = q.get("index").and_then(|i| i.parse().ok()).unwrap_or(0);
    if min_index > 0 {
        let wait = q
            .get("wait")
            .and_then(|w| parse_go_duration(w))
            .unwrap_or(Duration::from_secs(300))
            .min(MAX_WAIT);
        let deadline = Instant::now() + wait;
        let mut rx = shared.changed.subscribe();
        let _waiting = Waiting::new(&shared.blocked);
        loop {
            if read_index(&shared.lock(), key, prefix) > min_index {
                break;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => break,
            }
        }
    }
    let st = shared.lock();
    let index = read_index(&st, key, prefix);
    if q.contains_key("keys") {
        let sep = q.get("separator").filter(|s| !s.is_empty());
        let mut keys: Vec<String> = Vec::new();
        for (k, _) in st
            .kv
            .range(key.to_string()..)
            .take_while(|(k, _)| k.starts_with(key))
        {
            let shown = match sep {
                Some(sep) => match k[key.len()..].find(sep.as_str()) {
                    Some(pos) => k[..key.len() + pos + sep.len()].to_string(),
                    None => k.clone(),
                },
                None => k.clone(),
            };
            if keys.last() != Some(&shown) {
                keys.push(shown);
            }
        }
        if keys.is_empty() {
            return reply(StatusCode::NOT_FOUND, "", Some(index));
        }
        return json_reply(StatusCode::OK, &json!(keys), Some(index));
    }
    if q.contains_key("recurse") {
        let list: Vec<Value> = st
            .kv
            .range(key.to_string()..)
            .take_while(|(k, _)| k.starts_with(key))
            .map(|(k, e)| entry_json(k, e, true))
            .collect();
        if list.is_empty() {
            return reply(StatusCode::NOT_FOUND, "", Some(index));
        }
        return json_reply(StatusCode::OK, &Value::Array(list), Some(index));
    }
    match st.kv.get(key) {
        None => reply(StatusCode::NOT_FOUND, "", Some(index)),
        Some(e) if q.contains_key("raw") => {
            let mut r = reply(StatusCode::OK, e.value.clone(), Some(index));
            r.headers_mut().insert(
                "Content-Type",
                hyper::header::HeaderValue::from_static("application/octet-stream"),
            );
            r
        }
        Some(e) => json_reply(
            StatusCode::OK,
            &json!([entry_json(key, e, true)]),
            Some(index),
        ),
    }
}

/// Counts a waiting blocking query for as long as it lives (also when its connection drops).
struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(counter: &'a std::sync::atomic::AtomicUsize) -> Self {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Waiting(counter)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Writes a value keeping an existing lock (Consul's plain set).
fn set_value(st: &mut State, key: &str, value: Vec<u8>, flags: u64, idx: u64) {
    match st.kv.get_mut(key) {
        Some(e) => {
            e.value = value;
            e.flags = flags;
            e.modify_index = idx;
        }
        None => {
            st.kv.insert(
                key.to_string(),
                Entry {
                    value,
                    flags,
                    create_index: idx,
                    modify_index: idx,
                    lock_index: 0,
                    session: None,
                },
            );
        }
    }
    st.graves.remove(key);
    st.kv_index = idx;
}

fn delete_key(st: &mut State, key: &str, idx: u64) -> bool {
    if st.kv.remove(key).is_some() {
        st.graves.insert(key.to_string(), idx);
        st.kv_index = idx;
        true
    } else {
        false
    }
}

/// Acquires `key` for `session`: Err(message) when the session is invalid, Ok(false) when the
/// lock is held by another session or in lock-delay.
fn acquire(
    st: &mut State,
    key: &str,
    session: &str,
    value: Vec<u8>,
    flags: u64,
    idx: u64,
) -> Result<bool, String> {
    if !st.sessions.contains_key(session) {
        return Err(format!("invalid session {session:?}"));
    }
    if let Some(e) = st.kv.get(key) {
        match &e.session {
            Some(holder) if holder == session => {
                set_value(st, key, value, flags, idx);
                return Ok(true);
            }
            Some(_) => return Ok(false),
            None => {}
        }
    }
    if st
        .lock_delays
        .get(key)
        .is_some_and(|until| *until > Instant::now())
    {
        return Ok(false);
    }
    set_value(st, key, value, flags, idx);
    if let Some(e) = st.kv.get_mut(key) {
        e.session = Some(session.to_string());
        e.lock_index += 1;
    }
    Ok(true)
}

fn release(st: &mut State, key: &str, session: &str, value: Vec<u8>, flags: u64, idx: u64) -> bool {
    match st.kv.get(key) {
        Some(e) if e.session.as_deref() == Some(session) => {
            set_value(st, key, value, flags, idx);
            if let Some(e) = st.kv.get_mut(key) {
                e.session = None;
            }
            true
        }
        _ => false,
    }
}

fn kv_put(shared: &Shared, key: &str, q: &HashMap<String, String>, body: &Bytes) -> Resp {
    if key.is_empty() || key.starts_with('/') {
        return text(StatusCode::BAD_REQUEST, "Missing key name");
    }
    if body.len() > MAX_BODY {
        return text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "Request body({} bytes) too large, max size: {MAX_BODY} bytes",
                body.len()
            ),
        );
    }
    let flags: u64 = match q.get("flags").map(|f| f.parse()) {
        None => 0,
        Some(Ok(f)) => f,
        Some(Err(_)) => return text(StatusCode::BAD_REQUEST, "Invalid flags"),
    };
    let cas: Option<u64> = match q.get("cas").map(|c| c.parse()) {
        None => None,
        Some(Ok(c)) => Some(c),
        Some(Err(_)) => return text(StatusCode::BAD_REQUEST, "Invalid cas index"),
    };
    let mut st = shared.lock();
    let idx = st.index + 1;
    let value = body.to_vec();
    let done = if let Some(session) = q.get("acquire") {
        match acquire(&mut st, key, session, value, flags, idx) {
            Ok(done) => done,
            Err(msg) => return text(StatusCode::INTERNAL_SERVER_ERROR, msg),
        }
    } else if let Some(session) = q.get("release") {
        release(&mut st, key, session, value, flags, idx)
    } else if let Some(cas) = cas {
        let ok = match (cas, st.kv.get(key)) {
            (0, None) => true,
            (c, Some(e)) => c != 0 && e.modify_index == c,
            _ => false,
        };
        if ok {
            set_value(&mut st, key, value, flags, idx);
        }
        ok
    } else {
        set_value(&mut st, key, value, flags, idx);
        true
    };
    if done {
        st.index = idx;
    }
    drop(st);
    if done {
        shared.notify(idx);
    }
    json_reply(StatusCode::OK, &json!(done), None)
}

fn kv_delete(shared: &Shared, key: &str, q: &HashMap<String, String>) -> Resp {
    let mut st = shared.lock();
    let idx = st.index + 1;
    let done = if q.contains_key("recurse") {
        let keys: Vec<String> = st
            .kv
            .range(key.to_string()..)
            .take_while(|(k, _)| k.starts_with(key))
            .map(|(k, _)| k.clone())
            .collect();
        let any = !keys.is_empty();
        for k in keys {
            delete_key(&mut st, &k, idx);
        }
        if !any {
            return json_reply(StatusCode::OK, &json!(true), None);
        }
        true
    } else if let Some(cas) = q.get("cas") {
        let Ok(cas) = cas.parse::<u64>() else {
            return text(StatusCode::BAD_REQUEST, "Invalid cas index");
        };
        match st.kv.get(key) {
            Some(e) if e.modify_index == cas => delete_key(&mut st, key, idx),
            // Consul's CAS delete of a missing key succeeds, whatever the index: `true` does
            // not mean this call removed anything.
            None => return json_reply(StatusCode::OK, &json!(true), None),
            _ => false,
        }
    } else {
        if !delete_key(&mut st, key, idx) {
            return json_reply(StatusCode::OK, &json!(true), None);
        }
        true
    };
    if done {
        st.index = idx;
    }
    drop(st);
    if done {
        shared.notify(idx);
    }
    json_reply(StatusCode::OK, &json!(done), None)
}

// ----- sessions -----

fn session_create(shared: &Shared, body: &Bytes) -> Resp {
    let req: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("Request decode failed: {e}"),
                )
            }
        }
    };
    let duration_field =
        |name: &str, default: Option<Duration>| -> Result<Option<Duration>, String> {
            match req.get(name) {
                None | Some(Value::Null) => Ok(default),
                Some(Value::String(s)) if s.is_empty() => Ok(default),
                Some(Value::String(s)) => parse_go_duration(s).map(Some).ok_or_else(|| {
                    format!("Request decode failed: invalid duration {s:?} for {name}")
                }),
                Some(Value::Number(n)) => Ok(n.as_u64().map(Duration::from_nanos)),
                Some(other) => Err(format!("Request decode failed: {name} is {other}")),
            }
        };
    let ttl = match duration_field("TTL", None) {
        Ok(t) => t,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    if let Some(t) = ttl {
        let max = Duration::from_secs(86_400);
        if !t.is_zero() && (t < shared.config.min_session_ttl || t > max) {
            return text(
                StatusCode::BAD_REQUEST,
                format!(
                    "Invalid Session TTL '{}', must be between [{}={}]",
                    go_duration(t),
                    go_duration(shared.config.min_session_ttl),
                    go_duration(max)
                ),
            );
        }
    }
    let ttl = ttl.filter(|t| !t.is_zero());
    let lock_delay = match duration_field("LockDelay", Some(DEFAULT_LOCK_DELAY)) {
        Ok(d) => d.unwrap_or(DEFAULT_LOCK_DELAY),
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let behavior = match req
        .get("Behavior")
        .and_then(Value::as_str)
        .unwrap_or("release")
    {
        "" | "release" => Behavior::Release,
        "delete" => Behavior::Delete,
        other => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("Invalid Behavior setting '{other}'"),
            )
        }
    };
    let name = req
        .get("Name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let mut st = shared.lock();
    st.index += 1;
    st.next_session += 1;
    let idx = st.index;
    let id = format!("{:08x}-0000-4000-8000-{:012x}", idx, st.next_session);
    st.sessions.insert(
        id.clone(),
        Session {
            id: id.clone(),
            name,
            ttl,
            behavior,
            lock_delay,
            deadline: ttl.map(|t| Instant::now() + t),
            create_index: idx,
        },
    );
    drop(st);
    shared.notify(idx);
    json_reply(StatusCode::OK, &json!({ "ID": id }), Some(idx))
}

fn session_renew(shared: &Shared, id: &str) -> Resp {
    let mut st = shared.lock();
    let index = st.index;
    match st.sessions.get_mut(id) {
        None => text(
            StatusCode::NOT_FOUND,
            format!("Session id '{id}' not found"),
        ),
        Some(s) => {
            s.deadline = s.ttl.map(|t| Instant::now() + t);
            json_reply(StatusCode::OK, &json!([session_json(s)]), Some(index))
        }
    }
}

fn session_destroy(shared: &Shared, id: &str) -> Resp {
    let mut st = shared.lock();
    let idx = st.index + 1;
    let existed = invalidate(&mut st, id, idx);
    if existed {
        st.index = idx;
    }
    drop(st);
    if existed {
        shared.notify(idx);
    }
    json_reply(StatusCode::OK, &json!(true), None)
}

// ----- transactions -----

struct Op {
    verb: String,
    key: String,
    value: Vec<u8>,
    flags: u64,
    index: u64,
    session: String,
}

fn parse_ops(body: &Bytes) -> Result<Vec<Op>, String> {
    let list: Vec<Value> =
        serde_json::from_slice(body).map_err(|e| format!("Failed to parse body: {e}"))?;
    let mut ops = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let kv = item.get("KV").ok_or_else(|| {
            format!("operation {i}: only KV operations are supported by this double")
        })?;
        let s = |f: &str| kv.get(f).and_then(Value::as_str).unwrap_or("").to_string();
        let n = |f: &str| kv.get(f).and_then(Value::as_u64).unwrap_or(0);
        let value = match kv.get("Value").and_then(Value::as_str) {
            None | Some("") => Vec::new(),
            Some(v) => BASE64
                .decode(v)
                .map_err(|e| format!("operation {i}: Value is not base64: {e}"))?,
        };
        ops.push(Op {
            verb: s("Verb"),
            key: s("Key"),
            value,
            flags: n("Flags"),
            index: n("Index"),
            session: s("Session"),
        });
    }
    Ok(ops)
}

/// A change to undo when the transaction rolls back.
struct Undo {
    key: String,
    entry: Option<Entry>,
    grave: Option<u64>,
}

fn remember(st: &State, undo: &mut Vec<Undo>, key: &str) {
    undo.push(Undo {
        key: key.to_string(),
        entry: st.kv.get(key).cloned(),
        grave: st.graves.get(key).copied(),
    });
}

/// Applies one operation at index `idx`: Ok(results) or Err(message).
fn apply(
    st: &mut State,
    op: &Op,
    idx: u64,
    undo: &mut Vec<Undo>,
    wrote: &mut bool,
) -> Result<Vec<Value>, String> {
    let key = op.key.as_str();
    let blank = |st: &State| -> Vec<Value> {
        st.kv
            .get(key)
            .map(|e| entry_json(key, e, false))
            .into_iter()
            .collect()
    };
    match op.verb.as_str() {
        "set" => {
            remember(st, undo, key);
            set_value(st, key, op.value.clone(), op.flags, idx);
            *wrote = true;
            Ok(blank(st))
        }
        "cas" => {
            let ok = match (op.index, st.kv.get(key)) {
                (0, None) => true,
                (i, Some(e)) => i != 0 && e.modify_index == i,
                _ => false,
            };
            if !ok {
                return Err(format!("failed to set key {key:?}, index is stale"));
            }
            remember(st, undo, key);
            set_value(st, key, op.value.clone(), op.flags, idx);
            *wrote = true;
            Ok(blank(st))
        }
        "lock" => {
            remember(st, undo, key);
            match acquire(st, key, &op.session, op.value.clone(), op.flags, idx) {
                Ok(true) => {
                    *wrote = true;
                    Ok(blank(st))
                }
                Ok(false) => Err(format!("failed to lock key {key:?}, lock is already held")),
                Err(msg) => Err(format!("failed to lock key {key:?}: {msg}")),
            }
        }
        "unlock" => {
            remember(st, undo, key);
            if release(st, key, &op.session, op.value.clone(), op.flags, idx) {
                *wrote = true;
                Ok(blank(st))
            } else {
                Err(format!(
                    "failed to unlock key {key:?}, lock isn't held, or is held by another session"
                ))
            }
        }
        "get" => match st.kv.get(key) {
            Some(e) => Ok(vec![entry_json(key, e, true)]),
            None => Err(format!("key {key:?} doesn't exist")),
        },
        "get-tree" => Ok(st
            .kv
            .range(key.to_string()..)
            .take_while(|(k, _)| k.starts_with(key))
            .map(|(k, e)| entry_json(k, e, true))
            .collect()),
        "check-index" => match st.kv.get(key) {
            Some(e) if e.modify_index == op.index => Ok(blank(st)),
            Some(e) => Err(format!(
                "current modify index {} != {}",
                e.modify_index, op.index
            )),
            None => Err(format!("key {key:?} doesn't exist")),
        },
        "check-session" => match st.kv.get(key) {
            Some(e) if e.session.as_deref() == Some(op.session.as_str()) => Ok(blank(st)),
            Some(_) => Err(format!(
                "key {key:?} is not currently locked by session {:?}",
                op.session
            )),
            None => Err(format!("key {key:?} doesn't exist")),
        },
        "check-not-exists" => {
            if st.kv.contains_key(key) {
                Err(format!("key {key:?} exists"))
            } else {
                Ok(Vec::new())
            }
        }
        "delete" => {
            remember(st, undo, key);
            if delete_key(st, key, idx) {
                *wrote = true;
            }
            Ok(Vec::new())
        }
        "delete-tree" => {
            let keys: Vec<String> = st
                .kv
                .range(key.to_string()..)
                .take_while(|(k, _)| k.starts_with(key))
                .map(|(k, _)| k.clone())
                .collect();
            for k in keys {
                remember(st, undo, &k);
                delete_key(st, &k, idx);
                *wrote = true;
            }
            Ok(Vec::new())
        }
        "delete-cas" => match st.kv.get(key) {
            Some(e) if e.modify_index == op.index => {
                remember(st, undo, key);
                delete_key(st, key, idx);
                *wrote = true;
                Ok(Vec::new())
            }
            // As in Consul, a CAS delete of a missing key succeeds whatever the index.
            None => Ok(Vec::new()),
            Some(_) => Err(format!("failed to delete key {key:?}, index is stale")),
        },
        other => Err(format!("unknown KV verb {other:?}")),
    }
}

fn txn(shared: &Shared, body: &Bytes) -> Resp {
    if body.len() > MAX_BODY {
        return text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "Request body({} bytes) too large, max size: {MAX_BODY} bytes",
                body.len()
            ),
        );
    }
    let ops = match parse_ops(body) {
        Ok(ops) => ops,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    if ops.len() > MAX_TXN_OPS {
        return text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "Transaction contains too many operations ({} > {MAX_TXN_OPS})",
                ops.len()
            ),
        );
    }
    let mut st = shared.lock();
    let idx = st.index + 1;
    let saved_kv_index = st.kv_index;
    let mut undo = Vec::new();
    let mut wrote = false;
    let mut results = Vec::new();
    let mut errors = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        if op.key.is_empty() && op.verb != "delete-tree" && op.verb != "get-tree" {
            errors.push(json!({"OpIndex": i, "What": "Missing key name"}));
            continue;
        }
        match apply(&mut st, op, idx, &mut undo, &mut wrote) {
            Ok(entries) => results.extend(entries.into_iter().map(|kv| json!({ "KV": kv }))),
            Err(what) => errors.push(json!({"OpIndex": i, "What": what})),
        }
    }
    if !errors.is_empty() {
        for u in undo.into_iter().rev() {
            match u.entry {
                Some(e) => {
                    st.kv.insert(u.key.clone(), e);
                }
                None => {
                    st.kv.remove(&u.key);
                }
            }
            match u.grave {
                Some(g) => {
                    st.graves.insert(u.key, g);
                }
                None => {
                    st.graves.remove(&u.key);
                }
            }
        }
        st.kv_index = saved_kv_index;
        let index = st.index;
        return json_reply(
            StatusCode::CONFLICT,
            &json!({"Results": null, "Errors": errors}),
            Some(index),
        );
    }
    if wrote {
        st.index = idx;
    }
    let index = st.index;
    drop(st);
    if wrote {
        shared.notify(idx);
    }
    json_reply(
        StatusCode::OK,
        &json!({"Results": results, "Errors": null}),
        Some(index),
    )
}
