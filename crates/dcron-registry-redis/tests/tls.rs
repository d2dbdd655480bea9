//! TLS against a TLS-only `redis-server` the test starts itself (`--port 0`, `--tls-port`,
//! `--tls-auth-clients yes`), with a CA and certificates made at test time: a client with the
//! CA and a client certificate registers, claims and watches; a wrong CA or a missing client
//! certificate is `AccessDenied` naming the certificate, at once.

mod common;

use std::path::Path;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use common::pki::Pki;
use common::{claim_fires, meta, OwnedServer};
use dcron_core::{Error, FireKey, Node, PutMode, Registry, TaskMetaEvent};
use dcron_registry_redis::{RedisRegistry, RedisRegistryConfig, RedisTls};
use futures::StreamExt;
use tokio::time::Instant;

/// A TLS-only server with `pki`'s server certificate, requiring client certificates from its CA.
fn tls_server(pki: &Pki) -> Option<OwnedServer> {
    let write = |dir: &Path, name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
        Ok::<String, String>(path.display().to_string())
    };
    let started = OwnedServer::start_with(|port, dir| {
        Ok(vec![
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            write(dir, "server.crt", &pki.server_cert)?,
            "--tls-key-file".into(),
            write(dir, "server.key", &pki.server_key)?,
            "--tls-ca-cert-file".into(),
            write(dir, "ca.crt", &pki.ca_pem)?,
            "--tls-auth-clients".into(),
            "yes".into(),
        ])
    });
    match started {
        Ok(server) => Some(server),
        Err(reason) => {
            common::skip(&format!("harness redis-server with TLS: {reason}"));
            None
        }
    }
}

fn config(server: &OwnedServer, host: &str, tls: RedisTls) -> RedisRegistryConfig {
    RedisRegistryConfig::new(format!("rediss://{host}:{}", server.port()))
        .namespace("tls")
        .connect_timeout(Duration::from_secs(2))
        .command_timeout(Duration::from_secs(2))
        .tls(tls)
}

fn full(pki: &Pki) -> RedisTls {
    RedisTls::new()
        .ca_pem(pki.ca_pem.as_bytes())
        .client_identity(pki.client_cert.as_bytes(), pki.client_key.as_bytes())
}

fn fire(task: &str) -> FireKey {
    FireKey::new(
        task,
        Utc.timestamp_millis_opt(1_893_456_000_000)
            .single()
            .expect("valid instant"),
    )
}

async fn exercise(reg: &RedisRegistry) {
    reg.ping().await.expect("ping over TLS");
    let mut events = reg.watch_tasks().await.expect("watch over TLS");
    let task = meta("tls-task", "@hourly");
    reg.put_task(&task, PutMode::CreateOnly).await.expect("put");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(TaskMetaEvent::Put(m))) if m == task => break,
            Ok(Some(_)) => {}
            other => panic!("no Put event over the TLS watch: {other:?}"),
        }
    }
    let node = Node::new("tls-node", Utc::now());
    let lease = reg
        .register(&node, Duration::from_secs(10))
        .await
        .expect("register");
    reg.keep_alive(&lease).await.expect("keep alive");
    assert_eq!(reg.list_nodes().await.expect("nodes").items, vec![node]);
    let won = claim_fires(
        reg,
        "tls-node",
        &[fire("tls-task")],
        Duration::from_secs(60),
    )
    .await
    .expect("claim");
    assert!(won[0].is_won(), "{won:?}");
    reg.unregister(&lease).await.expect("unregister");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_ca_and_client_certificate_connect_register_and_claim() {
    let pki = Pki::new("dcron test CA");
    let Some(server) = tls_server(&pki) else {
        return;
    };
    // By name and by IP address: the certificate names both.
    for host in ["localhost", "127.0.0.1"] {
        let reg = config(&server, host, full(&pki)).build().expect("config");
        exercise(&reg).await;
        reg.cleanup_all().await.expect("cleanup");
    }
}

/// Asserts `result` is `AccessDenied` whose message contains `needle`.
fn assert_denied<T>(result: dcron_core::Result<T>, needle: &str, what: &str) {
    match result {
        Err(Error::AccessDenied(message)) => {
            eprintln!("{what}: {message}");
            assert!(message.contains(needle), "{what}: {message}");
            assert!(message.len() < 400, "{what}: a short message: {message}");
        }
        Err(other) => panic!("{what}: expected AccessDenied naming `{needle}`, got {other:?}"),
        Ok(_) => panic!("{what}: expected AccessDenied naming `{needle}`, got Ok"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ca_and_missing_client_certificate_are_access_denied_naming_the_cause() {
    let pki = Pki::new("dcron test CA");
    let other = Pki::new("some other CA");
    let Some(server) = tls_server(&pki) else {
        return;
    };
    let started = Instant::now();

    // A CA that did not sign the server certificate: we refuse the server.
    let wrong_ca = config(
        &server,
        "localhost",
        RedisTls::new()
            .ca_pem(other.ca_pem.as_bytes())
            .client_identity(pki.client_cert.as_bytes(), pki.client_key.as_bytes()),
    )
    .build()
    .expect("config");
    let cause = "server certificate failed verification";
    assert_denied(wrong_ca.ping().await, cause, "wrong CA, ping");
    assert_denied(
        wrong_ca
            .put_task(&meta("x", "@hourly"), PutMode::CreateOnly)
            .await,
        cause,
        "wrong CA, put",
    );
    assert_denied(wrong_ca.watch_tasks().await, cause, "wrong CA, watch");

    // No client certificate, or one from another CA: the server refuses us.
    let cause = "server refused the client certificate";
    for (what, tls) in [
        (
            "no client certificate",
            RedisTls::new().ca_pem(pki.ca_pem.as_bytes()),
        ),
        (
            "client certificate of another CA",
            RedisTls::new()
                .ca_pem(pki.ca_pem.as_bytes())
                .client_identity(other.client_cert.as_bytes(), other.client_key.as_bytes()),
        ),
    ] {
        let reg = config(&server, "localhost", tls).build().expect("config");
        assert_denied(reg.ping().await, cause, what);
        assert_denied(reg.list_tasks().await, cause, what);
        assert_denied(reg.watch_nodes().await, cause, what);
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "refusals took {:?}",
        started.elapsed()
    );
}

#[test]
fn tls_settings_need_a_rediss_url_and_parseable_pem() {
    let pki = Pki::new("dcron test CA");
    for cfg in [
        RedisRegistryConfig::new("redis://127.0.0.1:1").tls(full(&pki)),
        RedisRegistryConfig::new("rediss://127.0.0.1:1").tls(RedisTls::new().ca_pem("nothing")),
        RedisRegistryConfig::new("rediss://127.0.0.1:1")
            .tls(RedisTls::new().client_identity(pki.client_cert.as_bytes(), "not a key")),
    ] {
        let result = cfg.clone().build();
        assert!(
            matches!(result, Err(Error::InvalidArgument(_))),
            "{cfg:?}: {result:?}"
        );
    }
}
