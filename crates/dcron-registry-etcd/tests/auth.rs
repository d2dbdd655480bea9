//! Authentication on an etcd server owned by the test: right credentials work (also after a
//! restart, which makes the server forget its tokens), wrong or missing ones are refused quickly
//! with `AccessDenied`, and a user limited to one namespace cannot touch another.

mod common;

use std::time::Duration;

use chrono::Utc;
use dcron_core::{Error, Node, PutMode, Registry};
use dcron_registry_etcd::EtcdRegistry;
use etcd_client::Permission;
use tokio::time::Instant;

use common::OwnedEtcd;
use dcron_testkit::wait_until;

const ROOT_PASSWORD: &str = "root-secret";
const APP_PASSWORD: &str = "app-secret";

/// Creates `root` and `app` (read/write on `/app/` only), then enables authentication.
async fn enable_auth(server: &OwnedEtcd) {
    let reg = server.config("setup").connect().await.expect("connect");
    let mut client = reg.client().clone();
    client
        .user_add("root", ROOT_PASSWORD, None)
        .await
        .expect("add root");
    client
        .user_grant_role("root", "root")
        .await
        .expect("grant root");
    client.role_add("app").await.expect("add role");
    client
        .role_grant_permission("app", Permission::read_write("/app/").with_prefix())
        .await
        .expect("grant permission");
    client
        .user_add("app", APP_PASSWORD, None)
        .await
        .expect("add app");
    client
        .user_grant_role("app", "app")
        .await
        .expect("grant app");
    client.auth_enable().await.expect("auth enable");
}

async fn exercise(reg: &EtcdRegistry) {
    reg.put_task(&common::meta("t", "@hourly"), PutMode::Force)
        .await
        .expect("put");
    assert!(reg
        .list_tasks()
        .await
        .expect("list")
        .items
        .iter()
        .any(|m| m.name == "t"));
    let lease = reg
        .register(&Node::new("n", Utc::now()), Duration::from_secs(10))
        .await
        .expect("register");
    reg.keep_alive(&lease).await.expect("keep_alive");
    assert!(common::claim_fires(
        reg,
        "n",
        &[dcron_core::FireKey::new("t", Utc::now())],
        Duration::from_secs(60)
    )
    .await
    .expect("claim")[0]
        .is_won());
    reg.unregister(&lease).await.expect("unregister");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_right_wrong_and_missing() {
    let Some(server) = OwnedEtcd::start("auth").await else {
        return;
    };
    // Credentials given before authentication is enabled: accepted, and used once it is.
    let early = server
        .config("app")
        .credentials("root", ROOT_PASSWORD)
        .connect()
        .await
        .expect("credentials on a server without authentication");
    enable_auth(&server).await;
    exercise(&early).await;

    // Right credentials.
    let root = server
        .config("app")
        .credentials("root", ROOT_PASSWORD)
        .connect()
        .await
        .expect("root connects");
    exercise(&root).await;

    // Wrong password and unknown user: refused at connect, quickly.
    for (user, password) in [("root", "wrong"), ("nobody", "x")] {
        let started = Instant::now();
        let result = server
            .config("app")
            .credentials(user, password)
            .connect()
            .await;
        assert!(
            matches!(result, Err(Error::AccessDenied(_))),
            "{user}: {result:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }

    // No credentials: refused too.
    let result = server.config("app").connect().await;
    assert!(matches!(result, Err(Error::AccessDenied(_))), "{result:?}");

    // A user limited to its namespace works there and is refused elsewhere.
    let app = server
        .config("app")
        .credentials("app", APP_PASSWORD)
        .connect()
        .await
        .expect("app connects");
    app.put_task(&common::meta("mine", "@hourly"), PutMode::CreateOnly)
        .await
        .expect("put in its namespace");
    let other = server
        .config("other")
        .credentials("app", APP_PASSWORD)
        .connect()
        .await;
    let denied = match other {
        Err(e) => e,
        Ok(reg) => reg
            .put_task(&common::meta("theirs", "@hourly"), PutMode::CreateOnly)
            .await
            .expect_err("refused outside its namespace"),
    };
    assert!(matches!(denied, Error::AccessDenied(_)), "{denied:?}");

    // A restart makes the server forget its tokens: the client authenticates again by itself.
    server.restart_and_wait().await;
    wait_until(
        "the authenticated client did not come back after a restart",
        Duration::from_secs(60),
        || async {
            match root.list_tasks().await {
                Ok(_) => true,
                Err(e) if e.is_retryable() => false,
                Err(e) => panic!("after a restart: {e}"),
            }
        },
    )
    .await
    .expect("wait");
    exercise(&root).await;
    assert_eq!(
        app.get_task("mine")
            .await
            .expect("app after restart")
            .map(|m| m.name),
        Some("mine".to_string())
    );
}
