//! The Consul test double's own tests: each behaviour of the real agent it reproduces is pinned
//! here (the crate README's table points at these tests).

mod support;

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use dcron_testkit::{holds_until, wait_until};
use serde_json::{json, Value};
use support::double::{go_duration, parse_go_duration, ConsulDouble, DoubleConfig, KeyRules};

struct Answer {
    status: u16,
    index: Option<u64>,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

async fn call(method: reqwest::Method, url: String, body: Option<Vec<u8>>) -> Answer {
    call_with(method, url, body, None).await
}

async fn call_with(
    method: reqwest::Method,
    url: String,
    body: Option<Vec<u8>>,
    token: Option<&str>,
) -> Answer {
    let client = support::http();
    let mut req = client.request(method, url);
    if let Some(b) = body {
        req = req.body(b);
    }
    if let Some(t) = token {
        req = req.header("X-Consul-Token", t);
    }
    let resp = req.send().await.expect("double answers");
    let status = resp.status().as_u16();
    let index = resp
        .headers()
        .get("X-Consul-Index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let body = resp.bytes().await.expect("body").to_vec();
    Answer {
        status,
        index,
        body,
    }
}

async fn put(d: &ConsulDouble, path_and_query: &str, body: &str) -> Answer {
    call(
        reqwest::Method::PUT,
        format!("{}{path_and_query}", d.address()),
        Some(body.as_bytes().to_vec()),
    )
    .await
}

async fn get(d: &ConsulDouble, path_and_query: &str) -> Answer {
    call(
        reqwest::Method::GET,
        format!("{}{path_and_query}", d.address()),
        None,
    )
    .await
}

async fn delete(d: &ConsulDouble, path_and_query: &str) -> Answer {
    call(
        reqwest::Method::DELETE,
        format!("{}{path_and_query}", d.address()),
        None,
    )
    .await
}

async fn txn(d: &ConsulDouble, ops: Value) -> Answer {
    put(d, "/v1/txn", &ops.to_string()).await
}

async fn session(d: &ConsulDouble, body: Value) -> String {
    let a = put(d, "/v1/session/create", &body.to_string()).await;
    assert_eq!(a.status, 200, "{}", a.text());
    a.json()["ID"].as_str().expect("ID").to_string()
}

async fn session_alive(d: &ConsulDouble, id: &str) -> bool {
    get(d, &format!("/v1/session/info/{id}"))
        .await
        .json()
        .as_array()
        .is_some_and(|l| !l.is_empty())
}

fn b64(s: &str) -> String {
    BASE64.encode(s)
}

fn value_of(entry: &Value) -> String {
    let v = entry["Value"].as_str().unwrap_or("");
    String::from_utf8(BASE64.decode(v).expect("base64")).expect("utf8")
}

fn manual() -> DoubleConfig {
    DoubleConfig {
        manual_clock: true,
        ..DoubleConfig::default()
    }
}

#[tokio::test]
async fn kv_put_get_recurse_keys_raw_and_delete() {
    let d = ConsulDouble::start().await;
    assert_eq!(put(&d, "/v1/kv/app/a", "one").await.json(), json!(true));
    assert_eq!(put(&d, "/v1/kv/app/b/c", "two").await.json(), json!(true));
    assert_eq!(put(&d, "/v1/kv/other", "x").await.json(), json!(true));

    let a = get(&d, "/v1/kv/app/a").await;
    assert_eq!(a.status, 200);
    let e = &a.json()[0];
    assert_eq!(e["Key"], "app/a");
    assert_eq!(value_of(e), "one");
    assert_eq!(e["CreateIndex"], e["ModifyIndex"]);

    let raw = get(&d, "/v1/kv/app/a?raw").await;
    assert_eq!(raw.body, b"one");

    let rec = get(&d, "/v1/kv/app/?recurse").await.json();
    let keys: Vec<&str> = rec
        .as_array()
        .expect("list")
        .iter()
        .map(|e| e["Key"].as_str().expect("key"))
        .collect();
    assert_eq!(keys, ["app/a", "app/b/c"]);
    assert_eq!(
        get(&d, "/v1/kv/app/?keys").await.json(),
        json!(["app/a", "app/b/c"])
    );
    assert_eq!(
        get(&d, "/v1/kv/app/?keys&separator=/").await.json(),
        json!(["app/a", "app/b/"])
    );

    // Modify bumps ModifyIndex, keeps CreateIndex.
    let created = e["CreateIndex"].as_u64().expect("index");
    put(&d, "/v1/kv/app/a", "uno").await;
    let e2 = get(&d, "/v1/kv/app/a").await.json()[0].clone();
    assert_eq!(e2["CreateIndex"].as_u64(), Some(created));
    assert!(e2["ModifyIndex"].as_u64() > Some(created));

    assert_eq!(delete(&d, "/v1/kv/app/a").await.json(), json!(true));
    assert_eq!(get(&d, "/v1/kv/app/a").await.status, 404);
    assert_eq!(delete(&d, "/v1/kv/app/?recurse").await.json(), json!(true));
    assert_eq!(get(&d, "/v1/kv/app/?recurse").await.status, 404);
    assert_eq!(get(&d, "/v1/kv/other").await.status, 200);

    let big = "x".repeat(512 * 1024 + 1);
    assert_eq!(put(&d, "/v1/kv/big", &big).await.status, 413);
}

/// agent/kvs_endpoint.go (1.22 `validateKVKey`): the plain KV endpoints refuse keys outside
/// `a-zA-Z0-9 ,-_./`, with `..` at an end or before a `/`, or ending in a "suspicious"
/// extension — 400 — while `/v1/txn` checks nothing.
#[tokio::test]
async fn plain_kv_refuses_what_consul_1_22_refuses_and_txn_does_not_check() {
    let d = ConsulDouble::start().await;
    for ok in [
        "a/b-c_d.e,f",
        "ns/tasks/meta/billing_2Ereport-v2",
        "dir/",
        "a..b",
    ] {
        let a = put(&d, &format!("/v1/kv/{ok}"), "v").await;
        assert_eq!(a.status, 200, "{ok}: {}", a.text());
    }
    for (bad, why) in [
        ("a%25b", "invalid characters"),       // `%`
        ("a:b", "invalid characters"),         // `:`
        ("a%20b", "invalid characters"),       // space
        ("z%C3%BCrich", "invalid characters"), // unicode
        ("a=b", "invalid characters"),
        // (`..` as a whole segment never reaches the agent: URLs are normalised.)
        ("..etc", "path traversal"),
        ("a..", "path traversal"),
        ("a../b", "path traversal"),
        ("billing.json", "suspicious file extension"),
        ("host.example.com", "suspicious file extension"),
        ("report.SH", "suspicious file extension"),
    ] {
        for method in [
            reqwest::Method::PUT,
            reqwest::Method::GET,
            reqwest::Method::DELETE,
        ] {
            let a = call(
                method.clone(),
                format!("{}/v1/kv/{bad}", d.address()),
                Some(b"v".to_vec()),
            )
            .await;
            assert_eq!(a.status, 400, "{method} {bad}: {}", a.text());
            assert!(a.text().contains(why), "{bad}: {}", a.text());
        }
    }
    // A transaction writes and reads such keys without complaint...
    let w = txn(
        &d,
        json!([
            {"KV": {"Verb": "set", "Key": "t/a:b", "Value": b64("1")}},
            {"KV": {"Verb": "set", "Key": "t/100%", "Value": b64("2")}},
            {"KV": {"Verb": "set", "Key": "t/x.json", "Value": b64("3")}},
            {"KV": {"Verb": "get", "Key": "t/a:b"}},
        ]),
    )
    .await;
    assert_eq!(w.status, 200, "{}", w.text());
    // ...which a plain GET then cannot read.
    assert_eq!(get(&d, "/v1/kv/t/a:b").await.status, 400);
    // Listing a valid prefix still shows them (the prefix is what is checked).
    assert_eq!(
        get(&d, "/v1/kv/t/?recurse")
            .await
            .json()
            .as_array()
            .map(Vec::len),
        Some(3)
    );
}

/// The 1.21 rule (`^[a-zA-Z0-9,_./\-?&=]+$`, no `..`) is refused with a plain 500.
#[tokio::test]
async fn plain_kv_refuses_what_consul_1_21_refuses_with_a_500() {
    let d = ConsulDouble::start_with(DoubleConfig {
        key_rules: KeyRules::V1_21,
        ..DoubleConfig::default()
    })
    .await;
    assert_eq!(put(&d, "/v1/kv/a=b,c", "v").await.status, 200);
    assert_eq!(put(&d, "/v1/kv/x.json", "v").await.status, 200);
    for bad in ["a%25b", "a:b", "a..b", "z%C3%BCrich"] {
        let a = put(&d, &format!("/v1/kv/{bad}"), "v").await;
        assert_eq!(a.status, 500, "{bad}: {}", a.text());
    }
    let none = ConsulDouble::start_with(DoubleConfig {
        key_rules: KeyRules::None,
        ..DoubleConfig::default()
    })
    .await;
    assert_eq!(put(&none, "/v1/kv/a%25b", "v").await.status, 200);
    assert_eq!(get(&none, "/v1/kv/a%25b").await.json()[0]["Key"], "a%b");
}

#[tokio::test]
async fn kv_cas_creates_only_once_and_refuses_stale_indexes() {
    let d = ConsulDouble::start().await;
    assert_eq!(put(&d, "/v1/kv/k?cas=0", "a").await.json(), json!(true));
    assert_eq!(put(&d, "/v1/kv/k?cas=0", "b").await.json(), json!(false));
    let idx = get(&d, "/v1/kv/k").await.json()[0]["ModifyIndex"]
        .as_u64()
        .expect("index");
    assert_eq!(
        put(&d, &format!("/v1/kv/k?cas={}", idx + 100), "c")
            .await
            .json(),
        json!(false)
    );
    assert_eq!(
        put(&d, &format!("/v1/kv/k?cas={idx}"), "d").await.json(),
        json!(true)
    );
    assert_eq!(value_of(&get(&d, "/v1/kv/k").await.json()[0]), "d");
    assert_eq!(delete(&d, "/v1/kv/k?cas=1").await.json(), json!(false));
    let idx = get(&d, "/v1/kv/k").await.json()[0]["ModifyIndex"]
        .as_u64()
        .expect("index");
    assert_eq!(
        delete(&d, &format!("/v1/kv/k?cas={idx}")).await.json(),
        json!(true)
    );
    // Consul answers `true` to a CAS delete of a key that is gone, whatever the index.
    assert_eq!(
        delete(&d, &format!("/v1/kv/k?cas={idx}")).await.json(),
        json!(true)
    );
    assert_eq!(put(&d, "/v1/kv/k?cas=0&acquire=x", "v").await.status, 400);
}

/// agent/consul/state/kvs.go `kvsSetTxn`: an entry written unchanged keeps its ModifyIndex
/// (and the prefix's index does not move).
#[tokio::test]
async fn a_write_that_changes_nothing_keeps_the_modify_index() {
    let d = ConsulDouble::start().await;
    put(&d, "/v1/kv/same/k", "v").await;
    let first = get(&d, "/v1/kv/same/k").await.json()[0]["ModifyIndex"].clone();
    let prefix = get(&d, "/v1/kv/same/?recurse").await.index;
    put(&d, "/v1/kv/same/k", "v").await;
    let set = txn(
        &d,
        json!([{"KV": {"Verb": "set", "Key": "same/k", "Value": b64("v")}}]),
    )
    .await;
    assert_eq!(set.json()["Results"][0]["KV"]["ModifyIndex"], first);
    assert_eq!(
        get(&d, "/v1/kv/same/k").await.json()[0]["ModifyIndex"],
        first
    );
    assert_eq!(get(&d, "/v1/kv/same/?recurse").await.index, prefix);
    // A lock taken again by its holder with the same value does not move it either.
    let s = session(&d, json!({"LockDelay": "0s"})).await;
    let lock = json!([{"KV": {"Verb": "lock", "Key": "same/l", "Value": b64("x"), "Session": s}}]);
    let a = txn(&d, lock.clone()).await.json()["Results"][0]["KV"]["ModifyIndex"].clone();
    let b = txn(&d, lock).await.json()["Results"][0]["KV"]["ModifyIndex"].clone();
    assert_eq!(a, b);
    // A changed value does.
    put(&d, "/v1/kv/same/k", "w").await;
    assert_ne!(
        get(&d, "/v1/kv/same/k").await.json()[0]["ModifyIndex"],
        first
    );
}

#[tokio::test]
async fn acquire_by_another_session_is_refused_and_plain_writes_keep_the_lock() {
    let d = ConsulDouble::start().await;
    let s1 = session(&d, json!({"TTL": "10s", "LockDelay": "0s"})).await;
    let s2 = session(&d, json!({"TTL": "10s", "LockDelay": "0s"})).await;
    assert_eq!(
        put(&d, &format!("/v1/kv/lock?acquire={s1}"), "1")
            .await
            .json(),
        json!(true)
    );
    assert_eq!(
        put(&d, &format!("/v1/kv/lock?acquire={s2}"), "2")
            .await
            .json(),
        json!(false)
    );
    assert_eq!(
        put(&d, &format!("/v1/kv/lock?acquire={s1}"), "1b")
            .await
            .json(),
        json!(true)
    );
    let e = get(&d, "/v1/kv/lock").await.json()[0].clone();
    assert_eq!(e["Session"], s1.as_str());
    assert_eq!(e["LockIndex"], 1);
    assert_eq!(value_of(&e), "1b");
    put(&d, "/v1/kv/lock", "plain").await;
    assert_eq!(
        get(&d, "/v1/kv/lock").await.json()[0]["Session"],
        s1.as_str()
    );
    assert_eq!(
        put(&d, &format!("/v1/kv/lock?release={s2}"), "x")
            .await
            .json(),
        json!(false)
    );
    assert_eq!(
        put(&d, &format!("/v1/kv/lock?release={s1}"), "free")
            .await
            .json(),
        json!(true)
    );
    assert!(get(&d, "/v1/kv/lock").await.json()[0]
        .get("Session")
        .is_none());
    let unknown = put(&d, "/v1/kv/lock?acquire=nope", "x").await;
    assert_eq!(unknown.status, 500);
    assert!(
        unknown.text().contains("invalid session"),
        "{}",
        unknown.text()
    );
}

/// agent/consul/session_endpoint.go `Session.Apply`: a TTL outside `session_ttl_min`–24 h is
/// refused with `Invalid Session TTL '<ns>', must be between [10s=24h0m0s]` (a 500: an RPC
/// error); 0 means no TTL.
#[tokio::test]
async fn invalid_session_ttls_are_refused_like_consul() {
    let d = ConsulDouble::start().await;
    for (ttl, nanos) in [
        ("5s", "5000000000"),
        ("9.999s", "9999000000"),
        ("86401s", "86401000000000"),
    ] {
        let a = put(&d, "/v1/session/create", &json!({ "TTL": ttl }).to_string()).await;
        assert_eq!(a.status, 500, "{ttl}");
        assert_eq!(
            a.text(),
            format!("Invalid Session TTL '{nanos}', must be between [10s=24h0m0s]")
        );
    }
    for ttl in ["10s", "24h", "0", "0s", ""] {
        let a = put(&d, "/v1/session/create", &json!({ "TTL": ttl }).to_string()).await;
        assert_eq!(a.status, 200, "{ttl}: {}", a.text());
    }
    let info = get(
        &d,
        &format!(
            "/v1/session/info/{}",
            session(&d, json!({"TTL": "0s"})).await
        ),
    )
    .await
    .json();
    assert_eq!(info[0]["TTL"], "", "0 means no TTL");
    let garbage = put(&d, "/v1/session/create", r#"{"TTL":"ten"}"#).await;
    assert_eq!(garbage.status, 500);
    assert!(garbage.text().starts_with("Session TTL 'ten' invalid"));
    let behavior = put(&d, "/v1/session/create", r#"{"Behavior":"explode"}"#).await;
    assert_eq!(behavior.status, 500);
    assert_eq!(behavior.text(), "Invalid Behavior setting 'explode'");
    // An agent configured with a lower `session_ttl_min` accepts it.
    let low = support::fast_double().await;
    assert_eq!(
        put(&low, "/v1/session/create", r#"{"TTL":"1s"}"#)
            .await
            .status,
        200
    );
    let a = put(&low, "/v1/session/create", r#"{"TTL":"500ms"}"#).await;
    assert_eq!(
        a.text(),
        "Invalid Session TTL '500000000', must be between [1s=24h0m0s]"
    );
}

/// agent/session_endpoint.go: a session gets `serfHealth` unless the request says
/// `NodeChecks: []` or `Checks: []` (`fixupEmptySessionChecks`); when the check fails, the
/// session is invalidated whatever its TTL.
#[tokio::test]
async fn sessions_without_checks_get_serf_health_and_lose_it() {
    let d = ConsulDouble::start().await;
    let default = session(
        &d,
        json!({"TTL": "60s", "Behavior": "delete", "LockDelay": "0s"}),
    )
    .await;
    let node_checks = session(
        &d,
        json!({"TTL": "60s", "NodeChecks": [], "LockDelay": "0s"}),
    )
    .await;
    let checks = session(&d, json!({"TTL": "60s", "Checks": [], "LockDelay": "0s"})).await;
    let both = session(
        &d,
        json!({"TTL": "60s", "NodeChecks": [], "Checks": [], "Behavior": "delete", "LockDelay": "0s"}),
    )
    .await;
    let info = |id: String| {
        let d = &d;
        async move { get(d, &format!("/v1/session/info/{id}")).await.json()[0].clone() }
    };
    assert_eq!(
        info(default.clone()).await["NodeChecks"],
        json!(["serfHealth"])
    );
    for id in [&node_checks, &checks, &both] {
        assert_eq!(info(id.clone()).await["NodeChecks"], json!([]), "{id}");
    }
    put(&d, &format!("/v1/kv/n/default?acquire={default}"), "a").await;
    put(&d, &format!("/v1/kv/n/both?acquire={both}"), "b").await;

    d.fail_serf_health();
    assert!(
        !session_alive(&d, &default).await,
        "serfHealth failed: invalidated"
    );
    assert_eq!(
        get(&d, "/v1/kv/n/default").await.status,
        404,
        "behavior=delete"
    );
    for id in [&node_checks, &checks, &both] {
        assert!(
            session_alive(&d, id).await,
            "{id} has no checks: the TTL alone decides"
        );
    }
    assert_eq!(get(&d, "/v1/kv/n/both").await.status, 200);
    // While the check is critical, a session naming it cannot be created.
    let refused = put(&d, "/v1/session/create", r#"{"TTL":"60s"}"#).await;
    assert_eq!(refused.status, 500);
    assert!(refused.text().contains("critical"), "{}", refused.text());
    d.heal_serf_health();
    session(&d, json!({"TTL": "60s"})).await;
}

/// agent/consul/session_ttl.go: the timer is TTL × `SessionTTLMultiplier` (2), restarted by
/// each renewal: the session is invalidated exactly 2×TTL after its last renewal.
#[tokio::test]
async fn sessions_are_invalidated_exactly_twice_their_ttl_after_the_last_renewal() {
    let d = ConsulDouble::start_with(manual()).await;
    let id = session(
        &d,
        json!({"TTL": "10s", "Behavior": "delete", "LockDelay": "0s", "NodeChecks": []}),
    )
    .await;
    put(&d, &format!("/v1/kv/ttl/k?acquire={id}"), "x").await;
    d.advance(Duration::from_secs(15));
    assert!(session_alive(&d, &id).await, "alive after 1.5×TTL");
    assert_eq!(
        put(&d, &format!("/v1/session/renew/{id}"), "").await.status,
        200
    );
    // Renewed at t=15 s: due at t=35 s.
    d.advance(Duration::from_millis(19_999));
    assert!(
        session_alive(&d, &id).await,
        "alive 1 ms before 2×TTL after the renewal"
    );
    assert_eq!(get(&d, "/v1/kv/ttl/k").await.status, 200);
    d.advance(Duration::from_millis(1));
    assert!(!session_alive(&d, &id).await, "invalidated at 2×TTL");
    assert_eq!(
        get(&d, "/v1/kv/ttl/k").await.status,
        404,
        "its key went with it"
    );
    assert_eq!(
        put(&d, &format!("/v1/session/renew/{id}"), "").await.status,
        404
    );

    // Behavior release keeps the key, unlocked.
    let rel = session(
        &d,
        json!({"TTL": "10s", "LockDelay": "0s", "NodeChecks": []}),
    )
    .await;
    put(&d, &format!("/v1/kv/ttl/r?acquire={rel}"), "r").await;
    d.advance(Duration::from_secs(20));
    let e = get(&d, "/v1/kv/ttl/r").await.json()[0].clone();
    assert!(e.get("Session").is_none());
    assert_eq!(value_of(&e), "r");
}

/// In real time too (the reaper), for the registry's own tests.
#[tokio::test]
async fn sessions_expire_in_real_time_without_requests() {
    let d = support::fast_double().await;
    let id = session(
        &d,
        json!({"TTL": "1s", "Behavior": "delete", "LockDelay": "0s", "NodeChecks": []}),
    )
    .await;
    put(&d, &format!("/v1/kv/rt/k?acquire={id}"), "x").await;
    let started = tokio::time::Instant::now();
    // A generous deadline: the reaper runs in real time on a machine shared with builds.
    wait_until("every session reaped", Duration::from_secs(20), || async {
        d.session_count() == 0
    })
    .await
    .expect("wait");
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        started.elapsed()
    );
}

/// agent/consul/kvs_endpoint.go and txn_endpoint.go: after a session holding a key is
/// invalidated, its lock-delay (default 15 s) refuses `acquire` (`false`) and the transaction
/// verb `lock` (409 `failed to lock key … due to lock delay`), then lapses.
#[tokio::test]
async fn lock_delay_holds_a_key_after_invalidation() {
    let d = ConsulDouble::start_with(manual()).await;
    let s1 = session(&d, json!({"TTL": "10s", "NodeChecks": []})).await;
    let s2 = session(&d, json!({"LockDelay": "0s"})).await;
    let info = get(&d, &format!("/v1/session/info/{s1}")).await.json();
    assert_eq!(
        info[0]["LockDelay"],
        json!(15_000_000_000u64),
        "15 s by default"
    );
    put(&d, &format!("/v1/kv/l?acquire={s1}"), "x").await;
    put(&d, &format!("/v1/session/destroy/{s1}"), "").await;
    assert_eq!(
        put(&d, &format!("/v1/kv/l?acquire={s2}"), "y").await.json(),
        json!(false)
    );
    let lock = json!([{"KV": {"Verb": "lock", "Key": "l", "Value": b64("y"), "Session": s2}}]);
    let refused = txn(&d, lock.clone()).await;
    assert_eq!(refused.status, 409);
    assert_eq!(
        refused.json()["Errors"][0]["What"],
        "failed to lock key \"l\" due to lock delay"
    );
    d.advance(Duration::from_millis(14_999));
    assert_eq!(txn(&d, lock.clone()).await.status, 409);
    d.advance(Duration::from_millis(1));
    assert_eq!(txn(&d, lock).await.status, 200, "the lock-delay lapsed");

    // A numeric LockDelay below 1000 counts in seconds (FixupLockDelay); "0s" means none.
    let s3 = session(&d, json!({"LockDelay": 2, "NodeChecks": []})).await;
    let info = get(&d, &format!("/v1/session/info/{s3}")).await.json();
    assert_eq!(info[0]["LockDelay"], json!(2_000_000_000u64));
    let s4 = session(&d, json!({"LockDelay": "0s"})).await;
    put(&d, &format!("/v1/kv/m?acquire={s4}"), "x").await;
    put(&d, &format!("/v1/session/destroy/{s4}"), "").await;
    assert_eq!(
        put(&d, &format!("/v1/kv/m?acquire={s2}"), "y").await.json(),
        json!(true),
        "lock-delay 0 lets another session take over at once"
    );
}

/// agent/consul/rpc.go `blockingQuery`: a blocking query answers when the index passes the
/// one given, or after `wait` (default 5 min, capped at 10 min); a prefix's index is the
/// highest of its entries and deletions, and never 0.
#[tokio::test]
async fn blocking_queries_answer_on_change_or_after_the_wait() {
    let d = ConsulDouble::start_with(manual()).await;
    let empty = get(&d, "/v1/kv/nothing/?recurse").await;
    assert_eq!(empty.status, 404);
    assert!(empty.index.expect("index") >= 1, "never 0");
    put(&d, "/v1/kv/w/a", "1").await;
    put(&d, "/v1/kv/unrelated", "1").await;
    let idx = get(&d, "/v1/kv/w/?recurse").await.index.expect("index");
    let block = |query: &'static str| {
        let addr = d.address();
        tokio::spawn(async move {
            call(
                reqwest::Method::GET,
                format!("{addr}/v1/kv/w/?recurse&index={idx}{query}"),
                None,
            )
            .await
        })
    };

    // No wait given: 5 min. 10 min asked: 10 min. 20 min asked: capped at 10 min.
    let default = block("");
    let ten = block("&wait=10m");
    let twenty = block("&wait=20m");
    wait_until("three blocked queries", Duration::from_secs(5), || async {
        d.blocked_queries() == 3
    })
    .await
    .expect("wait");
    put(&d, "/v1/kv/unrelated", "2").await;
    d.advance(Duration::from_millis(299_999));
    // Nothing must happen here: the double answers a due query within a few ms of the clock
    // moving, so a 200 ms window of real time would see a wrong answer.
    let window = tokio::time::Instant::now() + Duration::from_millis(200);
    assert_eq!(
        holds_until(window, || async { !default.is_finished() }).await,
        Ok(true),
        "a write elsewhere and 5 min − 1 ms do not end it"
    );
    d.advance(Duration::from_millis(1));
    let answered = default.await.expect("join");
    assert_eq!(answered.index, Some(idx), "timed out with the same index");
    d.advance(Duration::from_secs(300));
    let (ten, twenty) = (ten.await.expect("join"), twenty.await.expect("join"));
    assert_eq!((ten.index, twenty.index), (Some(idx), Some(idx)));

    // A write under the prefix wakes it at once.
    let woken = block("&wait=10m");
    wait_until("one blocked query", Duration::from_secs(5), || async {
        d.blocked_queries() == 1
    })
    .await
    .expect("wait");
    put(&d, "/v1/kv/w/b", "2").await;
    let woken = woken.await.expect("join");
    assert!(woken.index.expect("index") > idx);
    assert_eq!(woken.json().as_array().map(Vec::len), Some(2));

    // Deletes move the prefix index too.
    let before = get(&d, "/v1/kv/w/?recurse").await.index.expect("index");
    delete(&d, "/v1/kv/w/a").await;
    let after = get(&d, "/v1/kv/w/?recurse").await.index.expect("index");
    assert!(after > before);
    delete(&d, "/v1/kv/w/b").await;
    let gone = get(&d, "/v1/kv/w/?recurse").await;
    assert_eq!(gone.status, 404);
    assert!(
        gone.index.expect("index") > after,
        "an emptied prefix keeps a non-zero index"
    );
}

/// agent/consul/state/txn.go: a transaction is all-or-nothing; a failed one answers 409 with
/// every failed operation (`OpIndex`, `What` in Consul's words) and applies nothing.
#[tokio::test]
async fn failed_transactions_report_every_operation_and_apply_nothing() {
    let d = ConsulDouble::start().await;
    put(&d, "/v1/kv/t/exists", "e").await;
    let before = d.index();
    let a = txn(
        &d,
        json!([
            {"KV": {"Verb": "set", "Key": "t/new", "Value": b64("n")}},
            {"KV": {"Verb": "check-not-exists", "Key": "t/exists"}},
            {"KV": {"Verb": "delete", "Key": "t/exists"}},
            {"KV": {"Verb": "get", "Key": "t/missing"}},
            {"KV": {"Verb": "cas", "Key": "t/exists", "Value": b64("x"), "Index": 0}},
            {"KV": {"Verb": "check-index", "Key": "t/exists", "Index": 1}},
            {"KV": {"Verb": "check-index", "Key": "t/missing", "Index": 1}},
        ]),
    )
    .await;
    assert_eq!(a.status, 409);
    let body = a.json();
    assert_eq!(body["Results"], Value::Null);
    let errors: Vec<(u64, String)> = body["Errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| {
            (
                e["OpIndex"].as_u64().expect("op"),
                e["What"].as_str().expect("what").to_string(),
            )
        })
        .collect();
    let idx = get(&d, "/v1/kv/t/exists").await.json()[0]["ModifyIndex"].clone();
    assert_eq!(
        errors,
        [
            (1, "key \"t/exists\" exists".to_string()),
            (3, "key \"t/missing\" doesn't exist".to_string()),
            // Operations see the earlier ones: deleted, then created again by the `cas`.
            (
                5,
                format!(
                    "failed index check for key \"t/exists\", current modify index {} != 1",
                    before + 1
                )
            ),
            (
                6,
                "failed to check index, key \"t/missing\" doesn't exist".to_string()
            ),
        ]
    );
    assert_eq!(get(&d, "/v1/kv/t/new").await.status, 404, "rolled back");
    assert_eq!(get(&d, "/v1/kv/t/exists").await.status, 200, "rolled back");
    assert_eq!(d.index(), before, "no index consumed");
    let stale = txn(
        &d,
        json!([
            {"KV": {"Verb": "check-index", "Key": "t/exists", "Index": 1}},
            {"KV": {"Verb": "cas", "Key": "t/exists", "Value": b64("x"), "Index": 0}},
            {"KV": {"Verb": "delete-cas", "Key": "t/exists", "Index": 1}},
        ]),
    )
    .await;
    let whats: Vec<String> = stale.json()["Errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e["What"].as_str().expect("what").to_string())
        .collect();
    assert_eq!(
        whats,
        [
            format!("failed index check for key \"t/exists\", current modify index {idx} != 1"),
            "failed to set key \"t/exists\", index is stale".to_string(),
            "failed to delete key \"t/exists\", index is stale".to_string(),
        ]
    );

    // Success: one index for every write, results for the verbs that return an entry, values
    // only for reads.
    let ok = txn(
        &d,
        json!([
            {"KV": {"Verb": "cas", "Key": "t/a", "Value": b64("a"), "Index": 0}},
            {"KV": {"Verb": "set", "Key": "t/b", "Value": b64("b")}},
            {"KV": {"Verb": "check-not-exists", "Key": "t/c"}},
            {"KV": {"Verb": "get", "Key": "t/exists"}},
            {"KV": {"Verb": "delete", "Key": "t/nothing"}},
        ]),
    )
    .await;
    assert_eq!(ok.status, 200);
    let results = ok.json()["Results"].as_array().expect("results").clone();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["KV"]["Key"], "t/a");
    assert_eq!(results[0]["KV"]["Value"], Value::Null);
    assert_eq!(
        results[0]["KV"]["ModifyIndex"],
        results[1]["KV"]["ModifyIndex"]
    );
    assert_eq!(value_of(&results[2]["KV"]), "e");
    let tree = txn(&d, json!([{"KV": {"Verb": "get-tree", "Key": "t/"}}])).await;
    assert_eq!(tree.json()["Results"].as_array().map(Vec::len), Some(3));
    let gone = txn(&d, json!([{"KV": {"Verb": "delete-tree", "Key": "t/"}}])).await;
    assert_eq!(gone.status, 200);
    assert_eq!(get(&d, "/v1/kv/t/?recurse").await.status, 404);
}

/// agent/txn_endpoint.go: more than 128 operations (`maxTxnOps`, since 1.14) or a body over
/// 512 KiB (`txn_max_req_len`) is refused with 413 before anything is applied.
#[tokio::test]
async fn transactions_over_128_operations_or_512_kib_are_refused() {
    let d = ConsulDouble::start().await;
    let ops: Vec<Value> = (0..129)
        .map(|i| json!({"KV": {"Verb": "set", "Key": format!("many/{i}"), "Value": b64("x")}}))
        .collect();
    assert_eq!(txn(&d, Value::Array(ops[..128].to_vec())).await.status, 200);
    let too_many = txn(&d, Value::Array(ops)).await;
    assert_eq!(too_many.status, 413);
    assert_eq!(
        too_many.text(),
        "Transaction contains too many operations (129 > 128)"
    );
    assert_eq!(d.count_keys("many/128"), 0);
    let big = json!([{"KV": {"Verb": "set", "Key": "big", "Value": BASE64.encode(vec![0u8; 400 * 1024])}}]);
    let body_len = big.to_string().len();
    assert!(body_len > 512 * 1024);
    let too_big = txn(&d, big).await;
    assert_eq!(too_big.status, 413);
    assert!(too_big.text().starts_with(&format!(
        "Request body({body_len} bytes) too large, max size: 524288 bytes"
    )));
    let fits = json!([{"KV": {"Verb": "set", "Key": "big", "Value": BASE64.encode(vec![0u8; 380 * 1024])}}]);
    assert_eq!(txn(&d, fits).await.status, 200);
    let not_kv = txn(&d, json!([{"Node": {"Verb": "get"}}])).await;
    assert_eq!(not_kv.status, 400);
}

#[tokio::test]
async fn txn_locks_and_session_checks() {
    let d = ConsulDouble::start().await;
    let s = session(
        &d,
        json!({"TTL": "10s", "Behavior": "delete", "LockDelay": "0s"}),
    )
    .await;
    let other = session(&d, json!({"TTL": "10s", "LockDelay": "0s"})).await;
    let lock = txn(
        &d,
        json!([{"KV": {"Verb": "lock", "Key": "n/1", "Value": b64("v1"), "Session": s}}]),
    )
    .await;
    assert_eq!(lock.status, 200);
    let upd = txn(
        &d,
        json!([
            {"KV": {"Verb": "check-session", "Key": "n/1", "Session": s}},
            {"KV": {"Verb": "lock", "Key": "n/1", "Value": b64("v2"), "Session": s}},
        ]),
    )
    .await;
    assert_eq!(upd.status, 200);
    let e = get(&d, "/v1/kv/n/1").await.json()[0].clone();
    assert_eq!(
        (value_of(&e).as_str(), e["LockIndex"].as_u64()),
        ("v2", Some(1))
    );
    let wrong = txn(
        &d,
        json!([
            {"KV": {"Verb": "check-session", "Key": "n/1", "Session": other}},
            {"KV": {"Verb": "lock", "Key": "n/1", "Value": b64("v3"), "Session": other}},
        ]),
    )
    .await;
    assert_eq!(wrong.status, 409);
    let whats: Vec<String> = wrong.json()["Errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e["What"].as_str().expect("what").to_string())
        .collect();
    assert_eq!(
        whats,
        [
            format!("failed session check for key \"n/1\", current session \"{s}\" != \"{other}\""),
            "failed to lock key \"n/1\", lock is already held".to_string(),
        ]
    );
    put(&d, &format!("/v1/session/destroy/{s}"), "").await;
    let after = txn(
        &d,
        json!([
            {"KV": {"Verb": "check-session", "Key": "n/1", "Session": s}},
            {"KV": {"Verb": "lock", "Key": "n/1", "Value": b64("v4"), "Session": s}},
        ]),
    )
    .await;
    assert_eq!(after.status, 409, "a destroyed session cannot write");
    assert_eq!(
        get(&d, "/v1/kv/n/1").await.status,
        404,
        "nor recreate the key"
    );
}

/// What running slots rely on (agent/consul/state/kvs.go `kvsLockTxn`,
/// `kvsCheckSessionTxn`; state/session.go `deleteSessionTxn`): keys locked in transactions
/// belong to the session; another session's `lock` fails while they are held; a `lock` needs
/// a live session ("invalid session"); destroying a `behavior=delete` session deletes every key
/// it holds in one write.
#[tokio::test]
async fn keys_locked_in_transactions_go_with_their_session() {
    let d = ConsulDouble::start().await;
    let body = json!({"TTL": "10s", "Behavior": "delete", "LockDelay": "0s"});
    let s = session(&d, body.clone()).await;
    let o = session(&d, body).await;
    let take = |who: &str, fire: &str| {
        json!([
            {"KV": {"Verb": "check-not-exists", "Key": "a/held"}},
            {"KV": {"Verb": "delete-tree", "Key": "a/fire/"}},
            {"KV": {"Verb": "lock", "Key": "a/held", "Value": b64(who), "Session": who}},
            {"KV": {"Verb": "lock", "Key": format!("a/fire/{fire}"), "Value": "", "Session": who}},
        ])
    };
    let taken = txn(&d, take(&s, "1")).await;
    assert_eq!(taken.status, 200, "{}", taken.text());
    let results = taken.json()["Results"].as_array().expect("results").clone();
    assert_eq!(results.len(), 2, "one entry per lock");
    for r in &results {
        assert_eq!(r["KV"]["Session"], Value::String(s.clone()));
        assert_eq!(r["KV"]["LockIndex"], 1);
        assert_eq!(r["KV"]["Value"], Value::Null, "values only for reads");
    }
    let rival = txn(&d, take(&o, "2")).await;
    assert_eq!(rival.status, 409);
    let errors: Vec<(u64, String)> = rival.json()["Errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| {
            (
                e["OpIndex"].as_u64().expect("op"),
                e["What"].as_str().expect("what").to_string(),
            )
        })
        .collect();
    assert_eq!(
        errors,
        [
            (0, "key \"a/held\" exists".to_string()),
            (
                2,
                "failed to lock key \"a/held\", lock is already held".to_string()
            ),
        ]
    );
    assert_eq!(
        d.keys("a/"),
        ["a/fire/1", "a/held"],
        "nothing of the rival applied"
    );
    let check = txn(
        &d,
        json!([{"KV": {"Verb": "check-session", "Key": "a/fire/1", "Session": o}}]),
    )
    .await;
    assert_eq!(
        check.json()["Errors"][0]["What"],
        format!("failed session check for key \"a/fire/1\", current session \"{s}\" != \"{o}\"")
    );

    let before = d.index();
    put(&d, &format!("/v1/session/destroy/{s}"), "").await;
    assert!(d.keys("a/").is_empty(), "every key of the session deleted");
    assert_eq!(d.index(), before + 1, "in one write");
    let listing = get(&d, "/v1/kv/a/?recurse").await;
    assert_eq!((listing.status, listing.index), (404, Some(before + 1)));

    let late = txn(&d, take(&s, "1")).await;
    assert_eq!(late.status, 409);
    let whats: Vec<String> = late.json()["Errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e["What"].as_str().expect("what").to_string())
        .collect();
    assert_eq!(
        whats,
        [
            format!("invalid session \"{s}\""),
            format!("invalid session \"{s}\""),
        ],
        "a destroyed session cannot lock"
    );
    let gone = txn(
        &d,
        json!([{"KV": {"Verb": "check-session", "Key": "a/held", "Session": s}}]),
    )
    .await;
    assert_eq!(
        gone.json()["Errors"][0]["What"],
        "failed to check session, key \"a/held\" doesn't exist"
    );
}

/// Txn.Apply's preCheck: an ACL refusal names its operation (409, `Permission denied…`) and
/// nothing is applied; the plain endpoints answer 403.
#[tokio::test]
async fn denied_prefixes_refuse_operations_by_index() {
    let d = ConsulDouble::start().await;
    d.deny_prefix("secret/");
    let a = txn(
        &d,
        json!([
            {"KV": {"Verb": "set", "Key": "open/a", "Value": b64("1")}},
            {"KV": {"Verb": "check-not-exists", "Key": "secret/b"}},
        ]),
    )
    .await;
    assert_eq!(a.status, 409);
    let errors = a.json()["Errors"].clone();
    assert_eq!(errors.as_array().map(Vec::len), Some(1));
    assert_eq!(errors[0]["OpIndex"], 1);
    assert!(errors[0]["What"]
        .as_str()
        .expect("what")
        .starts_with("Permission denied"));
    assert_eq!(
        get(&d, "/v1/kv/open/a").await.status,
        404,
        "nothing applied"
    );
    let plain = get(&d, "/v1/kv/secret/b").await;
    assert_eq!(plain.status, 403);
    assert!(plain.text().starts_with("Permission denied"));
}

#[tokio::test]
async fn acl_token_and_datacenter_are_checked() {
    let d = ConsulDouble::start_with(DoubleConfig {
        acl_token: Some("tok".into()),
        datacenter: "dc2".into(),
        ..DoubleConfig::default()
    })
    .await;
    let url = format!("{}/v1/kv/x", d.address());
    assert_eq!(
        call(reqwest::Method::GET, url.clone(), None).await.status,
        403
    );
    let wrong = call_with(reqwest::Method::GET, url.clone(), None, Some("nope")).await;
    assert_eq!(wrong.status, 403);
    let ok = call_with(reqwest::Method::GET, url.clone(), None, Some("tok")).await;
    assert_eq!(ok.status, 404);
    let query_token = call(reqwest::Method::GET, format!("{url}?token=tok"), None).await;
    assert_eq!(query_token.status, 404);
    let other_dc = call_with(
        reqwest::Method::GET,
        format!("{url}?dc=dc9"),
        None,
        Some("tok"),
    )
    .await;
    assert_eq!(other_dc.status, 500);
    assert_eq!(other_dc.text(), "No path to datacenter");
    let same_dc = call_with(
        reqwest::Method::GET,
        format!("{url}?dc=dc2"),
        None,
        Some("tok"),
    )
    .await;
    assert_eq!(same_dc.status, 404);
}

/// A write transaction whose reply is dropped is applied all the same.
#[tokio::test]
async fn a_dropped_reply_still_applies_the_transaction() {
    let d = ConsulDouble::start().await;
    d.drop_next_txn_replies(1);
    let sent = support::http()
        .put(format!("{}/v1/txn", d.address()))
        .body(json!([{"KV": {"Verb": "set", "Key": "lost/k", "Value": b64("v")}}]).to_string())
        .send()
        .await;
    assert!(
        sent.is_err(),
        "the connection closes without an answer: {sent:?}"
    );
    assert_eq!(value_of(&get(&d, "/v1/kv/lost/k").await.json()[0]), "v");
    let again = txn(&d, json!([{"KV": {"Verb": "get", "Key": "lost/k"}}])).await;
    assert_eq!(
        again.status, 200,
        "only the next write transaction lost its reply"
    );
}

#[tokio::test]
async fn restart_keeps_state_and_restarts_session_timers() {
    let d = ConsulDouble::start_with(manual()).await;
    put(&d, "/v1/kv/p", "kept").await;
    let s = session(
        &d,
        json!({"TTL": "10s", "LockDelay": "0s", "NodeChecks": []}),
    )
    .await;
    d.advance(Duration::from_secs(19));
    d.restart().await;
    assert_eq!(value_of(&get(&d, "/v1/kv/p").await.json()[0]), "kept");
    d.advance(Duration::from_secs(19));
    assert!(
        session_alive(&d, &s).await,
        "the timers restarted at the leader change"
    );
    d.advance(Duration::from_secs(1));
    assert!(!session_alive(&d, &s).await);
    d.stop_serving();
    let refused = support::http()
        .get(format!("{}/v1/kv/p", d.address()))
        .send()
        .await;
    assert!(refused.is_err(), "no listener while stopped");
}

#[test]
fn go_durations_parse_and_print() {
    assert_eq!(parse_go_duration("10s"), Some(Duration::from_secs(10)));
    assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
    assert_eq!(parse_go_duration("250ms"), Some(Duration::from_millis(250)));
    assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
    assert_eq!(parse_go_duration("1.5s"), Some(Duration::from_millis(1500)));
    assert_eq!(parse_go_duration("ten"), None);
    assert_eq!(parse_go_duration(""), None);
    assert_eq!(go_duration(Duration::from_secs(10)), "10s");
    assert_eq!(go_duration(Duration::from_secs(86_400)), "24h0m0s");
    assert_eq!(go_duration(Duration::from_secs(90)), "1m30s");
    assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
    assert_eq!(go_duration(Duration::from_millis(250)), "250ms");
    assert_eq!(go_duration(Duration::ZERO), "0s");
}

#[tokio::test]
async fn txn_get_then_delete_commits_once_and_delete_cas_of_a_missing_key_succeeds() {
    let d = ConsulDouble::start().await;
    put(&d, "/v1/kv/r/k", "v").await;
    let consume = json!([
        {"KV": {"Verb": "get", "Key": "r/k"}},
        {"KV": {"Verb": "delete", "Key": "r/k"}},
    ]);
    let first = txn(&d, consume.clone()).await;
    assert_eq!(first.status, 200);
    assert_eq!(value_of(&first.json()["Results"][0]["KV"]), "v");
    let second = txn(&d, consume).await;
    assert_eq!(second.status, 409, "the key is gone: `get` fails");
    assert_eq!(second.json()["Errors"][0]["OpIndex"], json!(0));
    let cas = txn(
        &d,
        json!([{"KV": {"Verb": "delete-cas", "Key": "r/k", "Index": 42}}]),
    )
    .await;
    assert_eq!(cas.status, 200);
}
