//! TLS against an etcd the test starts itself, serving clients over TLS only with
//! `--client-cert-auth`, with a CA and certificates made at test time: a client with the CA and
//! a client certificate registers, claims and watches; a wrong CA or a missing client
//! certificate is `AccessDenied` naming the cause, at once.

mod common;

use std::time::Duration;

use chrono::Utc;
use common::pki::Pki;
use common::OwnedEtcd;
use dcron_core::{Error, Node, PutMode, Registry, TaskMetaEvent};
use dcron_registry_etcd::{EtcdRegistry, EtcdTls};
use futures::StreamExt;
use tokio::time::Instant;

async fn exercise(reg: &EtcdRegistry) {
    let mut events = reg.watch_tasks().await.expect("watch over TLS");
    let task = common::meta("tls-task", "@hourly");
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
    let won = common::claim_fires(
        reg,
        "tls-node",
        &[common::fire("tls-task", 0)],
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
    let Some(server) = OwnedEtcd::start_tls("tls-ok", &pki).await else {
        return;
    };
    let reg = server
        .config("tls")
        .connect()
        .await
        .expect("connect over TLS");
    exercise(&reg).await;
    // By name too, with the name checked against the certificate (`domain`).
    let by_name = server
        .config_without_tls("tls-by-name")
        .tls(
            EtcdTls::new()
                .ca_pem(pki.ca_pem.as_bytes())
                .client_identity(pki.client_cert.as_bytes(), pki.client_key.as_bytes())
                .domain("localhost"),
        )
        .connect()
        .await
        .expect("connect with a domain override");
    by_name.list_tasks().await.expect("list");
}

/// Asserts `result` is `AccessDenied` whose message contains `needle`, and is short.
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
    let Some(server) = OwnedEtcd::start_tls("tls-refused", &pki).await else {
        return;
    };
    let started = Instant::now();
    let attempt = |tls: EtcdTls| server.config_without_tls("tls").tls(tls).connect();

    // A CA that did not sign the server certificate: we refuse the server.
    assert_denied(
        attempt(
            EtcdTls::new()
                .ca_pem(other.ca_pem.as_bytes())
                .client_identity(pki.client_cert.as_bytes(), pki.client_key.as_bytes()),
        )
        .await,
        "server certificate failed verification",
        "wrong CA",
    );
    // A certificate valid for other names than the one asked for.
    assert_denied(
        attempt(
            EtcdTls::new()
                .ca_pem(pki.ca_pem.as_bytes())
                .client_identity(pki.client_cert.as_bytes(), pki.client_key.as_bytes())
                .domain("etcd.example"),
        )
        .await,
        "server certificate failed verification",
        "wrong name",
    );
    // No client certificate, or one from another CA: the server refuses us.
    let cause = "server refused the client certificate";
    assert_denied(
        attempt(EtcdTls::new().ca_pem(pki.ca_pem.as_bytes())).await,
        cause,
        "no client certificate",
    );
    assert_denied(
        attempt(
            EtcdTls::new()
                .ca_pem(pki.ca_pem.as_bytes())
                .client_identity(other.client_cert.as_bytes(), other.client_key.as_bytes()),
        )
        .await,
        cause,
        "client certificate of another CA",
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "refusals took {:?}",
        started.elapsed()
    );
}
