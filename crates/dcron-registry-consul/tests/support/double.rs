//! A test double of the parts of Consul's HTTP API that `ConsulRegistry` uses, written from
//! Consul's source and documentation (KV store, sessions, transactions, blocking queries). The
//! crate README has the table of what it reproduces, with the source of each fact, and what it
//! does not.
//!
//! It serves HTTP/1.1 on `127.0.0.1:<random port>` from one in-memory state:
//! - a raft-like global `index`, bumped once per applied write (a transaction's writes share
//!   one index); keys have `CreateIndex`, `ModifyIndex`, `LockIndex`, `Flags` and an optional
//!   lock `Session`; a write that changes nothing keeps the key's `ModifyIndex`; deleted keys
//!   leave a grave (the index of their deletion) so that a prefix's `X-Consul-Index` moves on
//!   deletes, and that index is never 0;
//! - `/v1/kv/<key>`: `GET` (`recurse`, `keys`, `separator`, `raw`; blocking with `index` and
//!   `wait`, default 5 min, capped at 10 min), `PUT` (`flags`, `cas`, `acquire`, `release`),
//!   `DELETE` (`recurse`, `cas`); the key must pass the plain-KV key rules of the configured
//!   Consul version ([`KeyRules`]); transactions do not check keys;
//! - sessions: `create` (TTL between `session_ttl_min` and 24 h or 0, else 500 `Invalid
//!   Session TTL`; `Behavior`, `LockDelay` (default 15 s, small numbers are seconds), `Checks` /
//!   `NodeChecks`, defaulting to `serfHealth`), `renew`, `destroy`, `info`; a session is
//!   invalidated exactly 2×TTL after its creation or last renewal, or when a node check it
//!   names fails ([`ConsulDouble::fail_serf_health`]); its locks are released, or its keys
//!   deleted for `behavior=delete`, and its lock-delay then holds those keys against `acquire`
//!   and the transaction verb `lock`;
//! - `PUT /v1/txn` with the KV verbs `set`, `cas`, `lock`, `unlock`, `get`, `get-tree`,
//!   `check-index`, `check-session`, `check-not-exists`, `delete`, `delete-tree`, `delete-cas`:
//!   at most 128 operations and 512 KiB of body (413 otherwise), pre-checks (ACL, lock-delay)
//!   first, then all-or-nothing with every failed operation reported (409 with
//!   `Errors: [{OpIndex, What}]`, Consul's messages), `Results` for the verbs that return an
//!   entry (values only for `get`/`get-tree`);
//! - ACLs reduced to one optional token (`X-Consul-Token` or `?token=`; 403 otherwise) and
//!   denied key prefixes ([`ConsulDouble::deny_prefix`]); one datacenter name (`?dc=` of
//!   another one → 500 "No path to datacenter").
//!
//! Its clock is tokio's monotonic clock plus an offset the tests move with
//! [`ConsulDouble::advance`], or (with [`DoubleConfig::manual_clock`]) only that offset, so that
//! TTLs, lock-delays and blocking waits can be checked to the millisecond without sleeping.
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
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio::time::Instant;

/// Consul's `kv_max_value_size` and `txn_max_req_len` defaults (512 KiB).
pub const MAX_BODY: usize = 512 * 1024;
/// Consul's `maxTxnOps` (128 since 1.14).
pub const MAX_TXN_OPS: usize = 128;
/// Consul's default lock-delay of a session.
pub const DEFAULT_LOCK_DELAY: Duration = Duration::from_secs(15);
/// Consul's `defaultQueryTime` and `maxQueryTime` for blocking queries.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(300);
/// See [`DEFAULT_WAIT`].
pub const MAX_WAIT: Duration = Duration::from_secs(600);
/// Consul's `SessionTTLMax`.
pub const SESSION_TTL_MAX: Duration = Duration::from_secs(86_400);
/// Consul's `SessionTTLMultiplier`: a session is invalidated this many TTLs after its renewal.
pub const SESSION_TTL_MULTIPLIER: u32 = 2;
/// The node health check every agent has.
pub const SERF_HEALTH: &str = "serfHealth";

/// Which Consul version's key rules the plain KV endpoints enforce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyRules {
    /// No check (Consul before 1.21).
    None,
    /// 1.21: `^[a-zA-Z0-9,_./\-?&=]+$` and no `..`, refused with a plain 500.
    V1_21,
    /// 1.22: `^[a-zA-Z0-9,\-_./]+$`, no leading `/`, no `..` at either end or before a
    /// separator, no "suspicious" file extension at the end; refused with 400.
    V1_22,
}

/// Settings of a double.
#[derive(Clone, Debug)]
pub struct DoubleConfig {
    /// The agent's `session_ttl_min` (Consul's default: 10 s).
    pub session_ttl_min: Duration,
    /// When set, every request must carry this token.
    pub acl_token: Option<String>,
    /// The datacenter's name.
    pub datacenter: String,
    /// The key rules of the plain KV endpoints.
    pub key_rules: KeyRules,
    /// Time moves only by [`ConsulDouble::advance`].
    pub manual_clock: bool,
}

impl Default for DoubleConfig {
    fn default() -> Self {
        DoubleConfig {
            session_ttl_min: Duration::from_secs(10),
            acl_token: None,
            datacenter: "dc1".into(),
            key_rules: KeyRules::V1_22,
            manual_clock: false,
        }
    }
}

impl DoubleConfig {
    /// An agent configured with `session_ttl_min = "1s"`, for suites that expire leases.
    pub fn fast_sessions() -> Self {
        DoubleConfig {
            session_ttl_min: Duration::from_secs(1),
            ..DoubleConfig::default()
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
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
    checks: Vec<String>,
    node_checks: Vec<String>,
    deadline: Option<Instant>,
    create_index: u64,
}

impl Session {
    fn watches(&self, check: &str) -> bool {
        self.checks
            .iter()
            .chain(&self.node_checks)
            .any(|c| c == check)
    }
}

/// One transaction as the double received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnSeen {
    /// Number of operations.
    pub ops: usize,
    /// Body size in bytes.
    pub body: usize,
    /// The HTTP status answered (or that would have been, for a dropped reply).
    pub status: u16,
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
    /// The double's clock: added to tokio's (or to the start, with a manual clock).
    offset: Duration,
    serf_healthy: bool,
    denied: Vec<String>,
    drop_txn_replies: usize,
    txns: Vec<TxnSeen>,
}

struct Shared {
    config: DoubleConfig,
    started: Instant,
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

    fn now(&self, st: &State) -> Instant {
        let base = if self.config.manual_clock {
            self.started
        } else {
            Instant::now()
        };
        base + st.offset
    }

    /// Locks the state after invalidating the sessions that are due.
    fn lock_now(&self) -> (MutexGuard<'_, State>, Instant) {
        let mut st = self.lock();
        let now = self.now(&st);
        if let Some(idx) = expire_due(&mut st, now) {
            self.notify(idx);
        }
        (st, now)
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

/// Invalidates the sessions whose timer ran out; the index of the change, if any.
fn expire_due(st: &mut State, now: Instant) -> Option<u64> {
    let expired: Vec<String> = st
        .sessions
        .values()
        .filter(|s| s.deadline.is_some_and(|d| d <= now))
        .map(|s| s.id.clone())
        .collect();
    if expired.is_empty() {
        return None;
    }
    st.index += 1;
    let idx = st.index;
    for id in expired {
        invalidate(st, &id, idx, now);
    }
    Some(idx)
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
    /// Starts a double with the default settings (Consul's: `session_ttl_min` 10 s, 1.22 key
    /// rules).
    pub async fn start() -> Self {
        Self::start_with(DoubleConfig::default()).await
    }

    /// Starts a double.
    pub async fn start_with(config: DoubleConfig) -> Self {
        let (changed, _) = tokio::sync::watch::channel(0);
        let shared = Arc::new(Shared {
            config,
            started: Instant::now(),
            // A bootstrapped cluster's raft log is never empty: writes start above the index an
            // empty KV table reports.
            state: Mutex::new(State {
                index: 10,
                kv_index: 10,
                serf_healthy: true,
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

    /// Moves the double's clock forward by `d`, invalidating the sessions that are due and
    /// waking blocking queries whose wait is over.
    pub fn advance(&self, d: Duration) {
        let idx = {
            let mut st = self.shared.lock();
            st.offset += d;
            let now = self.shared.now(&st);
            expire_due(&mut st, now).unwrap_or(st.index)
        };
        self.shared.notify(idx);
    }

    /// The agent's `serfHealth` check goes critical: every session that names it is
    /// invalidated, and new sessions naming it are refused until [`ConsulDouble::heal_serf_health`].
    pub fn fail_serf_health(&self) {
        let idx = {
            let (mut st, now) = self.shared.lock_now();
            st.serf_healthy = false;
            let ids: Vec<String> = st
                .sessions
                .values()
                .filter(|s| s.watches(SERF_HEALTH))
                .map(|s| s.id.clone())
                .collect();
            if ids.is_empty() {
                None
            } else {
                st.index += 1;
                let idx = st.index;
                for id in ids {
                    invalidate(&mut st, &id, idx, now);
                }
                Some(idx)
            }
        };
        if let Some(idx) = idx {
            self.shared.notify(idx);
        }
    }

    /// The agent's `serfHealth` check passes again.
    pub fn heal_serf_health(&self) {
        self.shared.lock().serf_healthy = true;
    }

    /// The token may neither read nor write keys under `prefix` (plain KV: 403; transactions:
    /// 409 with `Permission denied` for those operations, nothing applied).
    pub fn deny_prefix(&self, prefix: &str) {
        self.shared.lock().denied.push(prefix.to_string());
    }

    /// The next `n` write transactions are applied but their connection is closed without a
    /// reply, as when the network drops the answer.
    pub fn drop_next_txn_replies(&self, n: usize) {
        self.shared.lock().drop_txn_replies = n;
    }

    /// Every transaction received so far.
    pub fn txns(&self) -> Vec<TxnSeen> {
        self.shared.lock().txns.clone()
    }

    /// Replaces the whole store by an empty one whose index is lower than before, as a
    /// snapshot restore or a rebuilt cluster would: blocking queries see the index go backwards.
    pub fn rewind(&self) {
        {
            let mut st = self.shared.lock();
            let offset = st.offset;
            *st = State {
                index: 10,
                kv_index: 10,
                serf_healthy: true,
                offset,
                ..State::default()
            };
        }
        self.shared.notify(10);
    }

    /// The lock session of a key, if the key exists.
    pub fn key_session(&self, key: &str) -> Option<Option<String>> {
        self.shared.lock().kv.get(key).map(|e| e.session.clone())
    }

    /// The keys under a prefix.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        self.shared
            .lock()
            .kv
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// Number of keys under a prefix.
    pub fn count_keys(&self, prefix: &str) -> usize {
        self.keys(prefix).len()
    }

    /// Number of blocking queries waiting right now.
    pub fn blocked_queries(&self) -> usize {
        self.shared
            .blocked
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Number of live sessions.
    pub fn session_count(&self) -> usize {
        self.shared.lock_now().0.sessions.len()
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
    /// their full 2×TTL, as after a Consul leader election.
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
            let now = self.shared.now(&st);
            for s in st.sessions.values_mut() {
                s.deadline = s.ttl.map(|t| now + t * SESSION_TTL_MULTIPLIER);
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
                let kill = Arc::new(Notify::new());
                let svc_shared = conn_shared.clone();
                let svc_kill = kill.clone();
                let service = hyper::service::service_fn(move |req| {
                    let s = svc_shared.clone();
                    let k = svc_kill.clone();
                    async move { Ok::<_, Infallible>(handle(s, req, k).await) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                // A dropped reply closes the connection without an answer.
                tokio::select! {
                    _ = connection => {}
                    _ = kill.notified() => {}
                }
            });
            accept_shared.track(conn.abort_handle());
        }
    });
    shared.track(handle.abort_handle());
}

/// Invalidates sessions whose TTL passed, in real time (requests and `advance` do it too).
async fn reap(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        tick.tick().await;
        drop(shared.lock_now());
    }
}

/// Removes a session, releasing or deleting (behavior) its keys at index `idx` and starting
/// its lock-delay on them.
fn invalidate(st: &mut State, id: &str, idx: u64, now: Instant) -> bool {
    let Some(session) = st.sessions.remove(id) else {
        return false;
    };
    let held: Vec<String> = st
        .kv
        .iter()
        .filter(|(_, e)| e.session.as_deref() == Some(id))
        .map(|(k, _)| k.clone())
        .collect();
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
        b = b.header("X-Consul-Index", i.max(1).to_string());
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

/// Query parameters in order (Go's `url.Values`, decoded).
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

/// Formats a duration as Go's `time.Duration.String()` does (`10s`, `24h0m0s`, `1.5s`,
/// `250ms`).
pub fn go_duration(d: Duration) -> String {
    fn frac(whole: u128, rem: u128, digits: usize) -> String {
        if rem == 0 {
            return whole.to_string();
        }
        let f = format!("{rem:0digits$}");
        format!("{whole}.{}", f.trim_end_matches('0'))
    }
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".into();
    }
    if ns < 1_000 {
        return format!("{ns}ns");
    }
    if ns < 1_000_000 {
        return format!("{}µs", frac(ns / 1_000, ns % 1_000, 3));
    }
    if ns < 1_000_000_000 {
        return format!("{}ms", frac(ns / 1_000_000, ns % 1_000_000, 6));
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let sec = frac(u128::from(s), u128::from(d.subsec_nanos()), 9);
    match (h, m) {
        (0, 0) => format!("{sec}s"),
        (0, m) => format!("{m}m{sec}s"),
        (h, m) => format!("{h}h{m}m{sec}s"),
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
        "NodeChecks": s.node_checks,
        "ServiceChecks": null,
        "Checks": if s.checks.is_empty() { Value::Null } else { json!(s.checks) },
        "CreateIndex": s.create_index,
        "ModifyIndex": s.create_index,
    })
}

fn denied(st: &State, key: &str) -> bool {
    st.denied.iter().any(|p| key.starts_with(p.as_str()))
}

fn permission_denied(key: &str, access: &str) -> String {
    format!(
        "Permission denied: token with AccessorID '00000000-0000-0000-0000-000000000002' lacks permission 'key:{access}' on \"{key}\""
    )
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>, kill: Arc<Notify>) -> Resp {
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
    // Go's net/http hands handlers the decoded path.
    let Ok(path) = percent_decode_str(&raw_path).decode_utf8() else {
        return text(StatusCode::BAD_REQUEST, "path is not UTF-8");
    };
    let path = path.into_owned();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("reading body: {e}")),
    };
    if let Some(key) = path.strip_prefix("/v1/kv/") {
        if let Some(refusal) = check_key(shared.config.key_rules, key) {
            return refusal;
        }
        if !key.is_empty() && denied(&shared.lock(), key) {
            let access = if method == Method::GET {
                "read"
            } else {
                "write"
            };
            return text(StatusCode::FORBIDDEN, permission_denied(key, access));
        }
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
            let (st, _) = shared.lock_now();
            let id = &p["/v1/session/info/".len()..];
            let list: Vec<Value> = st.sessions.get(id).map(session_json).into_iter().collect();
            json_reply(StatusCode::OK, &Value::Array(list), Some(st.index))
        }
        (Method::PUT, "/v1/txn") => txn(&shared, &body, &kill).await,
        (_, p) if p.starts_with("/v1/session/") || p == "/v1/txn" => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => text(StatusCode::NOT_FOUND, "not found"),
    }
}

// ----- KV key rules -----

/// The 1.22 list of extensions a key must not end with (`suspiciousExtensionPattern`).
const SUSPICIOUS: &[&str] = &[
    "js", "css", "html", "htm", "xml", "json", "txt", "log", "php", "asp", "jsp", "cgi", "pl",
    "py", "rb", "sh", "exe", "dll", "bat", "cmd", "com", "scr", "vbs", "pdf", "doc", "docx", "xls",
    "xlsx", "ppt", "pptx", "zip", "rar", "tar", "gz", "7z", "bz2", "jpg", "jpeg", "png", "gif",
    "svg", "ico", "bmp", "mp3", "mp4", "avi", "mov", "wmv", "flv", "swf", "woff", "woff2", "ttf",
    "eot", "otf",
];

/// The refusal of a plain KV key under `rules`, if any. An empty key (a listing of the root)
/// is not checked.
fn check_key(rules: KeyRules, key: &str) -> Option<Resp> {
    if key.is_empty() {
        return None;
    }
    match rules {
        KeyRules::None => None,
        KeyRules::V1_21 => {
            let charset = key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b",_./-?&=".contains(&b));
            if !charset || key.contains("..") {
                return Some(text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("invalid key: {key:?}"),
                ));
            }
            None
        }
        KeyRules::V1_22 => {
            let bad = |m: &str| Some(text(StatusCode::BAD_REQUEST, m.to_string()));
            if key.starts_with('/') {
                return bad("key must not begin with a '/'");
            }
            if !key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b",-_./".contains(&b))
            {
                return bad(
                    "key contains invalid characters. Only alphanumeric characters and ,-_./ are allowed",
                );
            }
            if key.starts_with("..") || key.ends_with("..") || key.contains("../") {
                return bad("key contains path traversal sequence");
            }
            let lower = key.to_ascii_lowercase();
            if let Some((_, ext)) = lower.rsplit_once('.') {
                if SUSPICIOUS.contains(&ext) {
                    return bad(
                        "key contains suspicious file extension that may be cached by proxies or exploited",
                    );
                }
            }
            None
        }
    }
}

// ----- KV -----

/// The index a read of `key` (or of the prefix, when `prefix`) reports: for a prefix the
/// highest index of its entries and graves, for an existing key its `ModifyIndex`, else the
/// table's; never 0.
fn read_index(st: &State, key: &str, prefix: bool) -> u64 {
    let idx = if !prefix {
        st.kv.get(key).map_or(0, |e| e.modify_index)
    } else {
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
            .filter(|w| !w.is_zero())
            .unwrap_or(DEFAULT_WAIT)
            .min(MAX_WAIT);
        let mut rx = shared.changed.subscribe();
        let _waiting = Waiting::new(&shared.blocked);
        let deadline = {
            let (st, now) = shared.lock_now();
            drop(st);
            now + wait
        };
        loop {
            let remaining = {
                let (st, now) = shared.lock_now();
                if read_index(&st, key, prefix) > min_index || now >= deadline {
                    break;
                }
                if shared.config.manual_clock {
                    // Only `advance` moves time; it notifies.
                    Duration::from_secs(3600)
                } else {
                    deadline - now
                }
            };
            let _ = tokio::time::timeout(remaining, rx.changed()).await;
        }
    }
    let (st, _) = shared.lock_now();
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
        if keys.is_empty() && !key.is_empty() {
            return reply(StatusCode::NOT_FOUND, "", Some(index));
        }
        return json_reply(StatusCode::OK, &json!(keys), Some(index));
    }
    if q.contains_key("recurse") {
        let list: Vec<Value> = st
            .kv
            .range(key.to_string()..)
            .take_while(|(k, _)| k.starts_with(key))
            .filter(|(k, _)| !denied(&st, k))
            .map(|(k, e)| entry_json(k, e, true))
            .collect();
        if list.is_empty() {
            return reply(StatusCode::NOT_FOUND, "", Some(index));
        }
        return json_reply(StatusCode::OK, &Value::Array(list), Some(index));
    }
    if key.is_empty() {
        return text(StatusCode::BAD_REQUEST, "Missing key name");
    }
    match st.kv.get(key) {
        None => reply(StatusCode::NOT_FOUND, "", Some(index)),
        Some(e) if q.contains_key("raw") => {
            let mut r = reply(StatusCode::OK, e.value.clone(), Some(index));
            r.headers_mut().insert(
                "Content-Type",
                hyper::header::HeaderValue::from_static("text/plain"),
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

/// Writes a value, keeping the key's session unless `session` says otherwise (Consul's
/// `kvsSetTxn`); a write that changes nothing keeps the `ModifyIndex`. Answers whether the key
/// changed.
fn set_value(
    st: &mut State,
    key: &str,
    value: Vec<u8>,
    flags: u64,
    session: Option<Option<String>>,
    lock_index: Option<u64>,
    idx: u64,
) -> bool {
    let existing = st.kv.get(key).cloned();
    let new = Entry {
        value,
        flags,
        create_index: existing.as_ref().map_or(idx, |e| e.create_index),
        modify_index: idx,
        lock_index: lock_index.unwrap_or_else(|| existing.as_ref().map_or(0, |e| e.lock_index)),
        session: match session {
            Some(s) => s,
            None => existing.as_ref().and_then(|e| e.session.clone()),
        },
    };
    if let Some(old) = &existing {
        let unchanged = Entry {
            modify_index: old.modify_index,
            ..new.clone()
        };
        if unchanged == *old {
            return false;
        }
    }
    st.kv.insert(key.to_string(), new);
    st.graves.remove(key);
    st.kv_index = idx;
    true
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

/// Acquires `key` for `session` (Consul's `kvsLockTxn`): Err(message) when the session is
/// missing or invalid, Ok(false) when another session holds the lock.
fn acquire(
    st: &mut State,
    key: &str,
    session: &str,
    value: Vec<u8>,
    flags: u64,
    idx: u64,
) -> Result<bool, String> {
    if session.is_empty() {
        return Err("missing session".into());
    }
    if !st.sessions.contains_key(session) {
        return Err(format!("invalid session {session:?}"));
    }
    let lock_index = match st.kv.get(key) {
        Some(e) => match &e.session {
            Some(holder) if holder == session => e.lock_index,
            Some(_) => return Ok(false),
            None => e.lock_index + 1,
        },
        None => 1,
    };
    set_value(
        st,
        key,
        value,
        flags,
        Some(Some(session.to_string())),
        Some(lock_index),
        idx,
    );
    Ok(true)
}

fn release(st: &mut State, key: &str, session: &str, value: Vec<u8>, flags: u64, idx: u64) -> bool {
    match st.kv.get(key) {
        Some(e) if e.session.as_deref() == Some(session) => {
            set_value(st, key, value, flags, Some(None), None, idx);
            true
        }
        _ => false,
    }
}

fn in_lock_delay(st: &State, key: &str, now: Instant) -> bool {
    st.lock_delays.get(key).is_some_and(|until| *until > now)
}

fn kv_put(shared: &Shared, key: &str, q: &HashMap<String, String>, body: &Bytes) -> Resp {
    if key.is_empty() {
        return text(StatusCode::BAD_REQUEST, "Missing key name");
    }
    let given = ["cas", "acquire", "release"]
        .iter()
        .filter(|f| q.contains_key(**f))
        .count();
    if given > 1 {
        return text(StatusCode::BAD_REQUEST, "Conflicting flags");
    }
    if body.len() > MAX_BODY {
        return text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "Request body({} bytes) too large, max size: {MAX_BODY} bytes. See https://developer.hashicorp.com/docs/agent/config/config-files#kv_max_value_size.",
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
    let (mut st, now) = shared.lock_now();
    let idx = st.index + 1;
    let value = body.to_vec();
    let (answer, applied) = if let Some(session) = q.get("acquire") {
        // Lock-delay is enforced before the write reaches raft: the answer is `false`.
        if in_lock_delay(&st, key, now) {
            (false, false)
        } else {
            match acquire(&mut st, key, session, value, flags, idx) {
                Ok(done) => (done, done),
                Err(msg) => return text(StatusCode::INTERNAL_SERVER_ERROR, msg),
            }
        }
    } else if let Some(session) = q.get("release") {
        let done = release(&mut st, key, session, value, flags, idx);
        (done, done)
    } else if let Some(cas) = cas {
        let ok = match (cas, st.kv.get(key)) {
            (0, None) => true,
            (c, Some(e)) => c != 0 && e.modify_index == c,
            _ => false,
        };
        if ok {
            set_value(&mut st, key, value, flags, None, None, idx);
        }
        (ok, ok)
    } else {
        set_value(&mut st, key, value, flags, None, None, idx);
        (true, true)
    };
    if applied {
        st.index = idx;
    }
    drop(st);
    if applied {
        shared.notify(idx);
    }
    json_reply(StatusCode::OK, &json!(answer), None)
}

fn kv_delete(shared: &Shared, key: &str, q: &HashMap<String, String>) -> Resp {
    if q.contains_key("recurse") && q.contains_key("cas") {
        return text(StatusCode::BAD_REQUEST, "Conflicting flags");
    }
    let (mut st, _) = shared.lock_now();
    let idx = st.index + 1;
    let answer = if q.contains_key("recurse") {
        let keys: Vec<String> = st
            .kv
            .range(key.to_string()..)
            .take_while(|(k, _)| k.starts_with(key))
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            delete_key(&mut st, &k, idx);
        }
        true
    } else if key.is_empty() {
        return text(StatusCode::BAD_REQUEST, "Missing key name");
    } else if let Some(cas) = q.get("cas") {
        let Ok(cas) = cas.parse::<u64>() else {
            return text(StatusCode::BAD_REQUEST, "Invalid cas index");
        };
        match st.kv.get(key) {
            Some(e) if e.modify_index == cas => delete_key(&mut st, key, idx),
            // Consul's CAS delete of a missing key succeeds, whatever the index: `true` does
            // not mean this call removed anything.
            None => true,
            _ => false,
        }
    } else {
        delete_key(&mut st, key, idx);
        true
    };
    st.index = idx;
    drop(st);
    shared.notify(idx);
    json_reply(StatusCode::OK, &json!(answer), None)
}

// ----- sessions -----

/// A field of a JSON object, matched case-insensitively as Go's decoder does.
fn field<'a>(obj: &'a Value, name: &str) -> Option<&'a Value> {
    obj.as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

fn string_list(v: &Value) -> Result<Vec<String>, String> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("expected a string, got {i}"))
            })
            .collect(),
        other => Err(format!("expected a list, got {other}")),
    }
}

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
    // The HTTP handler's defaults (agent/session_endpoint.go).
    let mut checks = vec![SERF_HEALTH.to_string()];
    let mut node_checks = vec![SERF_HEALTH.to_string()];
    if let Some(v) = field(&req, "Checks") {
        match string_list(v) {
            Ok(list) => checks = list,
            Err(e) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("Request decode failed: {e}"),
                )
            }
        }
    }
    if let Some(v) = field(&req, "NodeChecks") {
        match string_list(v) {
            Ok(list) => node_checks = list,
            Err(e) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("Request decode failed: {e}"),
                )
            }
        }
    }
    // fixupEmptySessionChecks: an empty `Checks` empties `NodeChecks`; the default `Checks`,
    // or any `Checks` beside an empty `NodeChecks`, is dropped.
    if checks.is_empty() {
        node_checks.clear();
    } else if (checks.len() == 1 && checks[0] == SERF_HEALTH) || node_checks.is_empty() {
        checks.clear();
    }
    // FixupLockDelay: a string is a Go duration, a number nanoseconds; below 1000 ns both mean
    // seconds.
    let lock_delay = match field(&req, "LockDelay") {
        None | Some(Value::Null) => DEFAULT_LOCK_DELAY,
        Some(Value::String(s)) => match parse_go_duration(s) {
            Some(d) if d.as_nanos() < 1000 => Duration::from_secs(d.as_nanos() as u64),
            Some(d) => d,
            None => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("Request decode failed: time: invalid duration {s:?}"),
                )
            }
        },
        Some(Value::Number(n)) => {
            let nanos = n.as_u64().unwrap_or(0);
            if nanos < 1000 {
                Duration::from_secs(nanos)
            } else {
                Duration::from_nanos(nanos)
            }
        }
        Some(other) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("Request decode failed: LockDelay is {other}"),
            )
        }
    };
    // Session.Apply (agent/consul/session_endpoint.go): its errors reach the client as 500.
    let behavior = match field(&req, "Behavior")
        .and_then(Value::as_str)
        .unwrap_or("")
    {
        "" | "release" => Behavior::Release,
        "delete" => Behavior::Delete,
        other => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("Invalid Behavior setting '{other}'"),
            )
        }
    };
    let ttl = match field(&req, "TTL") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => match parse_go_duration(s) {
            Some(t) => Some(t),
            None => {
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("Session TTL '{s}' invalid: time: invalid duration {s:?}"),
                )
            }
        },
        Some(other) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("Request decode failed: TTL is {other}"),
            )
        }
    };
    if let Some(t) = ttl {
        let min = shared.config.session_ttl_min;
        if !t.is_zero() && (t < min || t > SESSION_TTL_MAX) {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "Invalid Session TTL '{}', must be between [{}={}]",
                    t.as_nanos(),
                    go_duration(min),
                    go_duration(SESSION_TTL_MAX)
                ),
            );
        }
    }
    let ttl = ttl.filter(|t| !t.is_zero());
    let name = field(&req, "Name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let (mut st, now) = shared.lock_now();
    let watches_serf = checks.iter().chain(&node_checks).any(|c| c == SERF_HEALTH);
    if watches_serf && !st.serf_healthy {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("Check '{SERF_HEALTH}' is in critical state"),
        );
    }
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
            checks,
            node_checks,
            deadline: ttl.map(|t| now + t * SESSION_TTL_MULTIPLIER),
            create_index: idx,
        },
    );
    drop(st);
    shared.notify(idx);
    json_reply(StatusCode::OK, &json!({ "ID": id }), Some(idx))
}

fn session_renew(shared: &Shared, id: &str) -> Resp {
    let (mut st, now) = shared.lock_now();
    let index = st.index;
    match st.sessions.get_mut(id) {
        None => text(
            StatusCode::NOT_FOUND,
            format!("Session id '{id}' not found"),
        ),
        Some(s) => {
            s.deadline = s.ttl.map(|t| now + t * SESSION_TTL_MULTIPLIER);
            json_reply(StatusCode::OK, &json!([session_json(s)]), Some(index))
        }
    }
}

fn session_destroy(shared: &Shared, id: &str) -> Resp {
    let (mut st, now) = shared.lock_now();
    let idx = st.index + 1;
    let existed = invalidate(&mut st, id, idx, now);
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

fn is_write(verb: &str) -> bool {
    matches!(
        verb,
        "set" | "delete" | "delete-cas" | "delete-tree" | "cas" | "lock" | "unlock"
    )
}

fn parse_ops(body: &Bytes) -> Result<Vec<Op>, String> {
    let list: Vec<Value> =
        serde_json::from_slice(body).map_err(|e| format!("Failed to parse body: {e}"))?;
    let mut ops = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let kv = field(item, "KV").ok_or_else(|| {
            format!("Failed to parse body: operation {i}: only KV operations are supported by this double")
        })?;
        let s = |f: &str| {
            field(kv, f)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let n = |f: &str| field(kv, f).and_then(Value::as_u64).unwrap_or(0);
        let value = match field(kv, "Value").and_then(Value::as_str) {
            None | Some("") => Vec::new(),
            Some(v) => BASE64
                .decode(v)
                .map_err(|e| format!("Failed to parse body: failed to decode value: {e}"))?,
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

/// Applies one operation at index `idx` (`txnKVS` in agent/consul/state/txn.go):
/// Ok(results) or Err(Consul's message).
fn apply(st: &mut State, op: &Op, idx: u64, undo: &mut Vec<Undo>) -> Result<Vec<Value>, String> {
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
            set_value(st, key, op.value.clone(), op.flags, None, None, idx);
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
            set_value(st, key, op.value.clone(), op.flags, None, None, idx);
            Ok(blank(st))
        }
        "lock" => {
            remember(st, undo, key);
            match acquire(st, key, &op.session, op.value.clone(), op.flags, idx) {
                Ok(true) => Ok(blank(st)),
                Ok(false) => Err(format!("failed to lock key {key:?}, lock is already held")),
                Err(msg) => Err(msg),
            }
        }
        "unlock" => {
            remember(st, undo, key);
            if op.session.is_empty() {
                return Err("missing session".into());
            }
            if release(st, key, &op.session, op.value.clone(), op.flags, idx) {
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
                "failed index check for key {key:?}, current modify index {} != {}",
                e.modify_index, op.index
            )),
            None => Err(format!("failed to check index, key {key:?} doesn't exist")),
        },
        "check-session" => match st.kv.get(key) {
            Some(e) if e.session.as_deref().unwrap_or("") == op.session => Ok(blank(st)),
            Some(e) => Err(format!(
                "failed session check for key {key:?}, current session {:?} != {:?}",
                e.session.as_deref().unwrap_or(""),
                op.session
            )),
            None => Err(format!(
                "failed to check session, key {key:?} doesn't exist"
            )),
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
            delete_key(st, key, idx);
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
            }
            Ok(Vec::new())
        }
        "delete-cas" => match st.kv.get(key) {
            Some(e) if e.modify_index == op.index => {
                remember(st, undo, key);
                delete_key(st, key, idx);
                Ok(Vec::new())
            }
            // As in Consul, a CAS delete of a missing key succeeds whatever the index.
            None => Ok(Vec::new()),
            Some(_) => Err(format!("failed to delete key {key:?}, index is stale")),
        },
        other => Err(format!("unknown KV verb {other:?}")),
    }
}

async fn txn(shared: &Shared, body: &Bytes, kill: &Notify) -> Resp {
    let (resp, drop_reply) = txn_apply(shared, body);
    if drop_reply {
        kill.notify_one();
        std::future::pending::<()>().await;
    }
    resp
}

/// Applies a transaction; answers the reply and whether to drop it.
fn txn_apply(shared: &Shared, body: &Bytes) -> (Resp, bool) {
    let seen = |status: StatusCode, ops: usize| {
        shared.lock().txns.push(TxnSeen {
            ops,
            body: body.len(),
            status: status.as_u16(),
        });
    };
    // convertOps (agent/txn_endpoint.go): size first, then decoding, then the operation count.
    if body.len() > MAX_BODY {
        seen(StatusCode::PAYLOAD_TOO_LARGE, 0);
        let resp = text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "Request body({} bytes) too large, max size: {MAX_BODY} bytes. See https://developer.hashicorp.com/docs/agent/config/config-files#txn_max_req_len.",
                body.len()
            ),
        );
        return (resp, false);
    }
    let ops = match parse_ops(body) {
        Ok(ops) => ops,
        Err(e) => {
            seen(StatusCode::BAD_REQUEST, 0);
            return (text(StatusCode::BAD_REQUEST, e), false);
        }
    };
    if ops.len() > MAX_TXN_OPS {
        seen(StatusCode::PAYLOAD_TOO_LARGE, ops.len());
        let resp = text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "Transaction contains too many operations ({} > {MAX_TXN_OPS})",
                ops.len()
            ),
        );
        return (resp, false);
    }
    let writes = ops.iter().filter(|op| is_write(&op.verb)).count();
    let (mut st, now) = shared.lock_now();
    // Txn.Apply's preCheck (agent/consul/txn_endpoint.go): ACLs and lock-delays, before
    // anything is applied.
    let mut errors = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        if op.key.is_empty() && op.verb != "delete-tree" && op.verb != "get-tree" {
            errors.push(json!({"OpIndex": i, "What": "Must provide key"}));
        } else if denied(&st, &op.key) {
            let access = if is_write(&op.verb) || op.verb == "check-not-exists" {
                "write"
            } else {
                "read"
            };
            errors.push(json!({"OpIndex": i, "What": permission_denied(&op.key, access)}));
        } else if op.verb == "lock" && in_lock_delay(&st, &op.key, now) {
            errors.push(json!({
                "OpIndex": i,
                "What": format!("failed to lock key {:?} due to lock delay", op.key),
            }));
        }
    }
    if !errors.is_empty() {
        let index = st.index;
        st.txns.push(TxnSeen {
            ops: ops.len(),
            body: body.len(),
            status: 409,
        });
        let resp = json_reply(
            StatusCode::CONFLICT,
            &json!({"Results": null, "Errors": errors}),
            Some(index),
        );
        return (resp, false);
    }
    let idx = st.index + 1;
    let saved_kv_index = st.kv_index;
    let mut undo = Vec::new();
    let mut results = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        match apply(&mut st, op, idx, &mut undo) {
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
        st.txns.push(TxnSeen {
            ops: ops.len(),
            body: body.len(),
            status: 409,
        });
        let resp = json_reply(
            StatusCode::CONFLICT,
            &json!({"Results": null, "Errors": errors}),
            Some(index),
        );
        return (resp, false);
    }
    // A transaction with writes goes through raft (one index); a read-only one does not.
    if writes > 0 {
        st.index = idx;
    }
    let index = st.index;
    st.txns.push(TxnSeen {
        ops: ops.len(),
        body: body.len(),
        status: 200,
    });
    let drop_reply = writes > 0 && st.drop_txn_replies > 0;
    if drop_reply {
        st.drop_txn_replies -= 1;
    }
    drop(st);
    if writes > 0 {
        shared.notify(idx);
    }
    let resp = json_reply(
        StatusCode::OK,
        &json!({"Results": results, "Errors": null}),
        Some(index),
    );
    (resp, drop_reply)
}
