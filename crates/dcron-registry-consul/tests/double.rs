//! The Consul test double's own tests: every endpoint and semantic the registry relies on.

mod support;

use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::{json, Value};
use support::double::{parse_go_duration, ConsulDouble, DoubleConfig};

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
    let client = reqwest::Client::new();
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
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    a.json()["ID"].as_str().expect("ID").to_string()
}

fn b64(s: &str) -> String {
    BASE64.encode(s)
}

fn value_of(entry: &Value) -> String {
    let v = entry["Value"].as_str().unwrap_or("");
    String::from_utf8(BASE64.decode(v).expect("base64")).expect("utf8")
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
    assert_eq!(a.index, e["ModifyIndex"].as_u64());

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

    // Escaped characters in keys round-trip (the URL path is decoded).
    put(&d, "/v1/kv/app/x%2520y", "esc").await;
    assert_eq!(
        get(&d, "/v1/kv/app/x%2520y").await.json()[0]["Key"],
        "app/x%20y"
    );

    assert_eq!(delete(&d, "/v1/kv/app/a").await.json(), json!(true));
    assert_eq!(get(&d, "/v1/kv/app/a").await.status, 404);
    assert_eq!(delete(&d, "/v1/kv/app/?recurse").await.json(), json!(true));
    assert_eq!(get(&d, "/v1/kv/app/?recurse").await.status, 404);
    assert_eq!(get(&d, "/v1/kv/other").await.status, 200);

    let big = "x".repeat(512 * 1024 + 1);
    assert_eq!(put(&d, "/v1/kv/big", &big).await.status, 413);
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
    assert_eq!(
        put(&d, &format!("/v1/kv/k?cas={idx}"), "e").await.json(),
        json!(false)
    );
    assert_eq!(value_of(&get(&d, "/v1/kv/k").await.json()[0]), "d");
    // DELETE with cas.
    assert_eq!(delete(&d, "/v1/kv/k?cas=1").await.json(), json!(false));
    let idx = get(&d, "/v1/kv/k").await.json()[0]["ModifyIndex"]
        .as_u64()
        .expect("index");
    assert_eq!(
        delete(&d, &format!("/v1/kv/k?cas={idx}")).await.json(),
        json!(true)
    );
    // Consul answers `true` to a CAS delete of a key that is gone, whatever the index: it
    // cannot tell concurrent deleters apart (a txn `get` + `delete` can).
    assert_eq!(
        delete(&d, &format!("/v1/kv/k?cas={idx}")).await.json(),
        json!(true)
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
    // Re-acquiring by the holder updates the value and keeps LockIndex.
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
    // A plain PUT keeps the lock.
    put(&d, "/v1/kv/lock", "plain").await;
    assert_eq!(
        get(&d, "/v1/kv/lock").await.json()[0]["Session"],
        s1.as_str()
    );
    // Release by the wrong session fails, by the holder succeeds.
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
    // An unknown session cannot acquire.
    assert_eq!(put(&d, "/v1/kv/lock?acquire=nope", "x").await.status, 500);
}

#[tokio::test]
async fn sessions_renew_destroy_info_and_ttl_bounds() {
    let d = ConsulDouble::start_with(DoubleConfig {
        min_session_ttl: Duration::from_secs(10),
        ..DoubleConfig::default()
    })
    .await;
    let short = put(&d, "/v1/session/create", r#"{"TTL":"5s"}"#).await;
    assert_eq!(short.status, 400, "Consul's minimum TTL is enforced");
    let long = put(&d, "/v1/session/create", r#"{"TTL":"86401s"}"#).await;
    assert_eq!(long.status, 400);
    let bad = put(&d, "/v1/session/create", r#"{"Behavior":"explode"}"#).await;
    assert_eq!(bad.status, 400);

    let id = session(&d, json!({"Name": "n", "TTL": "10s", "Behavior": "delete"})).await;
    let info = get(&d, &format!("/v1/session/info/{id}")).await.json();
    assert_eq!(info[0]["ID"], id.as_str());
    assert_eq!(info[0]["Behavior"], "delete");
    assert_eq!(info[0]["TTL"], "10s");
    let renewed = put(&d, &format!("/v1/session/renew/{id}"), "").await;
    assert_eq!(renewed.status, 200);
    assert_eq!(renewed.json()[0]["ID"], id.as_str());
    assert_eq!(
        put(&d, &format!("/v1/session/destroy/{id}"), "")
            .await
            .json(),
        json!(true)
    );
    assert_eq!(
        put(&d, &format!("/v1/session/renew/{id}"), "").await.status,
        404
    );
    assert_eq!(
        get(&d, &format!("/v1/session/info/{id}")).await.json(),
        json!([])
    );
    // Destroy is idempotent.
    assert_eq!(
        put(&d, &format!("/v1/session/destroy/{id}"), "")
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn session_expiry_deletes_or_releases_its_keys() {
    let d = ConsulDouble::start().await;
    let del = session(
        &d,
        json!({"TTL": "1s", "Behavior": "delete", "LockDelay": "0s"}),
    )
    .await;
    let rel = session(
        &d,
        json!({"TTL": "1s", "Behavior": "release", "LockDelay": "0s"}),
    )
    .await;
    put(&d, &format!("/v1/kv/n/del?acquire={del}"), "d").await;
    put(&d, &format!("/v1/kv/n/rel?acquire={rel}"), "r").await;
    let started = Instant::now();
    let mut gone = false;
    while started.elapsed() < Duration::from_secs(5) {
        if get(&d, "/v1/kv/n/del").await.status == 404 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(gone, "behavior=delete key removed at session expiry");
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "not before the TTL"
    );
    assert!(
        support::eventually(Duration::from_secs(3), || async {
            get(&d, "/v1/kv/n/rel")
                .await
                .json()
                .get(0)
                .is_some_and(|e| e.get("Session").is_none())
        })
        .await
    );
    assert_eq!(value_of(&get(&d, "/v1/kv/n/rel").await.json()[0]), "r");
    assert_eq!(
        put(&d, &format!("/v1/session/renew/{del}"), "")
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn renewals_keep_a_session_alive_past_its_ttl() {
    let d = ConsulDouble::start().await;
    let id = session(
        &d,
        json!({"TTL": "1s", "Behavior": "delete", "LockDelay": "0s"}),
    )
    .await;
    put(&d, &format!("/v1/kv/alive?acquire={id}"), "x").await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2500) {
        assert_eq!(
            put(&d, &format!("/v1/session/renew/{id}"), "").await.status,
            200
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(get(&d, "/v1/kv/alive").await.status, 200);
}

#[tokio::test]
async fn lock_delay_blocks_reacquiring_after_invalidation() {
    let d = ConsulDouble::start().await;
    let s1 = session(&d, json!({"TTL": "10s", "LockDelay": "15s"})).await;
    let s2 = session(&d, json!({"TTL": "10s", "LockDelay": "0s"})).await;
    put(&d, &format!("/v1/kv/l?acquire={s1}"), "x").await;
    put(&d, &format!("/v1/session/destroy/{s1}"), "").await;
    assert_eq!(
        put(&d, &format!("/v1/kv/l?acquire={s2}"), "y").await.json(),
        json!(false),
        "the default 15 s lock-delay holds the key"
    );
    let s3 = session(&d, json!({"TTL": "10s", "LockDelay": "0s"})).await;
    put(&d, &format!("/v1/kv/m?acquire={s3}"), "x").await;
    put(&d, &format!("/v1/session/destroy/{s3}"), "").await;
    assert_eq!(
        put(&d, &format!("/v1/kv/m?acquire={s2}"), "y").await.json(),
        json!(true),
        "lock-delay 0 lets another session take over at once"
    );
}

#[tokio::test]
async fn blocking_query_wakes_on_change_and_times_out_on_wait() {
    let d = ConsulDouble::start().await;
    put(&d, "/v1/kv/w/a", "1").await;
    put(&d, "/v1/kv/unrelated", "1").await;
    let first = get(&d, "/v1/kv/w/?recurse").await;
    let idx = first.index.expect("index");

    // Times out after `wait` with the same index.
    let started = Instant::now();
    let timed_out = get(&d, &format!("/v1/kv/w/?recurse&index={idx}&wait=300ms")).await;
    let took = started.elapsed();
    assert_eq!(timed_out.index, Some(idx));
    assert!(took >= Duration::from_millis(280), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");

    // A write elsewhere does not wake it; a write under the prefix does.
    let addr = d.address();
    let waiter = tokio::spawn(async move {
        call(
            reqwest::Method::GET,
            format!("{addr}/v1/kv/w/?recurse&index={idx}&wait=10s"),
            None,
        )
        .await
    });
    put(&d, "/v1/kv/unrelated", "2").await;
    put(&d, "/v1/kv/w/b", "2").await;
    let woke = waiter.await.expect("join");
    assert!(woke.index.expect("index") > idx);
    assert_eq!(woke.json().as_array().map(Vec::len), Some(2));

    // Deletes move the prefix index too.
    let before = get(&d, "/v1/kv/w/?recurse").await.index.expect("index");
    delete(&d, "/v1/kv/w/a").await;
    let after = get(&d, "/v1/kv/w/?recurse").await.index.expect("index");
    assert!(after > before);
    let still = get(&d, &format!("/v1/kv/w/?recurse&index={before}&wait=5s")).await;
    assert_eq!(
        still.index,
        Some(after),
        "answers at once: the index already moved"
    );
}

#[tokio::test]
async fn txn_is_all_or_nothing_and_reports_every_failed_operation() {
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
        ]),
    )
    .await;
    assert_eq!(a.status, 409);
    let body = a.json();
    assert_eq!(body["Results"], Value::Null);
    let failed: Vec<u64> = body["Errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e["OpIndex"].as_u64().expect("op index"))
        .collect();
    assert_eq!(failed, [1, 3]);
    assert_eq!(get(&d, "/v1/kv/t/new").await.status, 404, "rolled back");
    assert_eq!(get(&d, "/v1/kv/t/exists").await.status, 200, "rolled back");
    assert_eq!(d.index(), before, "no index consumed");

    // Success: one index for every write, results for set/cas/get, values only for reads.
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

    // cas with a stale index and delete-cas fail; get-tree reads a prefix; delete-tree removes it.
    let stale = txn(
        &d,
        json!([
            {"KV": {"Verb": "cas", "Key": "t/a", "Value": b64("x"), "Index": 0}},
            {"KV": {"Verb": "delete-cas", "Key": "t/b", "Index": 1}},
            {"KV": {"Verb": "check-index", "Key": "t/b", "Index": 1}},
        ]),
    )
    .await;
    assert_eq!(stale.status, 409);
    assert_eq!(stale.json()["Errors"].as_array().map(Vec::len), Some(3));
    let tree = txn(&d, json!([{"KV": {"Verb": "get-tree", "Key": "t/"}}])).await;
    assert_eq!(tree.json()["Results"].as_array().map(Vec::len), Some(3));
    let gone = txn(&d, json!([{"KV": {"Verb": "delete-tree", "Key": "t/"}}])).await;
    assert_eq!(gone.status, 200);
    assert_eq!(get(&d, "/v1/kv/t/?recurse").await.status, 404);
}

#[tokio::test]
async fn txn_locks_check_sessions_and_limits_size() {
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
    assert_eq!(wrong.json()["Errors"].as_array().map(Vec::len), Some(2));
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

    let ops: Vec<Value> = (0..65)
        .map(|i| json!({"KV": {"Verb": "set", "Key": format!("many/{i}"), "Value": b64("x")}}))
        .collect();
    assert_eq!(txn(&d, Value::Array(ops[..64].to_vec())).await.status, 200);
    let too_many = txn(&d, Value::Array(ops)).await;
    assert_eq!(too_many.status, 413);
    let big = json!([{"KV": {"Verb": "set", "Key": "big", "Value": BASE64.encode(vec![0u8; 400 * 1024])}}]);
    assert_eq!(txn(&d, big).await.status, 413, "body over 512 KiB");
    let not_kv = txn(&d, json!([{"Node": {"Verb": "get"}}])).await;
    assert_eq!(not_kv.status, 400);
}

#[tokio::test]
async fn acl_token_and_datacenter_are_checked() {
    let d = ConsulDouble::start_with(DoubleConfig {
        acl_token: Some("tok".into()),
        ..DoubleConfig::default()
    })
    .await;
    let url = format!("{}/v1/kv/x", d.address());
    let denied = call(reqwest::Method::GET, url.clone(), None).await;
    assert_eq!(denied.status, 403);
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
    let same_dc = call_with(
        reqwest::Method::GET,
        format!("{url}?dc=dc1"),
        None,
        Some("tok"),
    )
    .await;
    assert_eq!(same_dc.status, 404);
}

#[tokio::test]
async fn restart_keeps_state_and_drops_connections() {
    let d = ConsulDouble::start().await;
    put(&d, "/v1/kv/p", "kept").await;
    let s = session(&d, json!({"TTL": "10s", "LockDelay": "0s"})).await;
    d.restart().await;
    assert_eq!(value_of(&get(&d, "/v1/kv/p").await.json()[0]), "kept");
    assert_eq!(
        put(&d, &format!("/v1/session/renew/{s}"), "").await.status,
        200
    );
    d.stop_serving();
    let refused = reqwest::Client::new()
        .get(format!("{}/v1/kv/p", d.address()))
        .send()
        .await;
    assert!(refused.is_err(), "no listener while stopped");
}

#[test]
fn go_durations_parse() {
    assert_eq!(parse_go_duration("10s"), Some(Duration::from_secs(10)));
    assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
    assert_eq!(parse_go_duration("250ms"), Some(Duration::from_millis(250)));
    assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
    assert_eq!(parse_go_duration("1.5s"), Some(Duration::from_millis(1500)));
    assert_eq!(parse_go_duration("ten"), None);
    assert_eq!(parse_go_duration(""), None);
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
    // Consul's `delete-cas` of a missing key is not an error, whatever the index.
    let cas = txn(
        &d,
        json!([{"KV": {"Verb": "delete-cas", "Key": "r/k", "Index": 42}}]),
    )
    .await;
    assert_eq!(cas.status, 200);
}
