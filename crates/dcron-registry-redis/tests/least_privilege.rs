//! Least privilege on a `redis-server` the test starts itself (`--requirepass`): every
//! namespace gets an ACL user with exactly [`RedisKeys::acl_rules`] (its keys, its channels, the
//! commands of `ACL_COMMANDS`), the whole conformance suite passes with those users, and one
//! user can neither read nor write another namespace.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use common::{claim_fires, meta, OwnedServer};
use dcron_core::{Error, FireKey, Lease, Node, PutMode, RecordKind, Registry};
use dcron_registry_redis::{RedisKeys, RedisRegistry, RedisRegistryConfig};
use dcron_testkit::{async_trait, cases, run_case, CaseError, Hooks, RegistryFactory};
use futures::StreamExt;

const ADMIN_PASSWORD: &str = "admin-secret";

/// The tests of this file run one after the other: the suite's timing cases want a fair share
/// of this machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A server for one test whose default user needs a password, or `None` after printing why
/// it is skipped.
fn owned() -> Option<Arc<OwnedServer>> {
    match OwnedServer::start(&["--requirepass", ADMIN_PASSWORD]) {
        Ok(server) => Some(Arc::new(server)),
        Err(reason) => {
            common::skip(&format!("harness redis-server: {reason}"));
            None
        }
    }
}

fn admin_url(server: &OwnedServer) -> String {
    format!("redis://:{ADMIN_PASSWORD}@127.0.0.1:{}", server.port())
}

/// The ACL user of `namespace` (created or reset with exactly the documented rules) and its
/// password.
async fn namespace_user(
    server: &OwnedServer,
    namespace: &str,
) -> dcron_core::Result<(String, String)> {
    let keys = RedisKeys::new(namespace, 0);
    let user = format!("dcron-{}", keys.prefix().trim_end_matches(':'));
    let password = format!("pw-{user}");
    let mut admin = common::raw(&admin_url(server)).await?;
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg("reset")
        .arg("on")
        .arg(format!(">{password}"))
        .arg(keys.acl_rules())
        .query_async(&mut admin)
        .await
        .map_err(|e| Error::unavailable(format!("ACL SETUSER {user}: {e}")))?;
    Ok((user, password))
}

async fn open_as(
    server: &OwnedServer,
    namespace: &str,
    user: &str,
    password: &str,
) -> dcron_core::Result<RedisRegistry> {
    let reg = RedisRegistryConfig::new(format!("redis://127.0.0.1:{}", server.port()))
        .username(user)
        .password(password)
        .namespace(namespace)
        .pool_size(8)
        .build()?;
    reg.ping().await?;
    Ok(reg)
}

/// Conformance factory: every namespace is opened by its own least-privileged user; the
/// fault-injection hooks act as the administrator (they stand for the server's own doings).
struct LeastPrivilege {
    server: Arc<OwnedServer>,
}

#[async_trait]
impl RegistryFactory for LeastPrivilege {
    fn name(&self) -> &'static str {
        "redis (one ACL user per namespace)"
    }

    async fn open(&self, namespace: &str) -> dcron_core::Result<Arc<dyn Registry>> {
        let (user, password) = namespace_user(&self.server, namespace).await?;
        Ok(Arc::new(
            open_as(&self.server, namespace, &user, &password).await?,
        ))
    }

    fn hooks(&self) -> Option<Hooks> {
        Some(Hooks::none().with_expire_lease().with_write_raw_task())
    }

    async fn expire_lease(&self, namespace: &str, lease: &Lease) -> dcron_core::Result<()> {
        common::expire_lease(&admin_url(&self.server), namespace, lease).await
    }

    async fn write_raw_task(
        &self,
        namespace: &str,
        name: &str,
        bytes: &[u8],
    ) -> dcron_core::Result<()> {
        common::write_raw_task(&admin_url(&self.server), namespace, name, bytes).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conformance_suite_passes_with_least_privileged_users() {
    let _serial = SERIAL.lock().await;
    let Some(server) = owned() else { return };
    let factory: Arc<dyn RegistryFactory> = Arc::new(LeastPrivilege {
        server: server.clone(),
    });
    let all = cases();
    let total = all.len();
    let outcomes: Vec<(String, Result<(), CaseError>)> = futures::stream::iter(all)
        .map(|case| {
            let factory = factory.clone();
            async move { (case.path(), run_case(factory, &case).await) }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let mut failed = Vec::new();
    let mut passed = 0;
    for (path, outcome) in outcomes {
        match outcome {
            Ok(()) => passed += 1,
            // The restart cases run in `owned_server.rs`: a restart would disturb the others.
            // A case the registry's capabilities exclude is skipped as on any server. The
            // hostile-value cases plant bytes as another client would: they run in
            // `conformance.rs` (the namespace user's rights do not change what they show).
            Err(CaseError::Skipped(reason))
                if reason.contains("restart_server")
                    || reason.contains("`write_raw` hook")
                    || reason.starts_with("capabilities.") =>
            {
                println!("{path}: skipped ({reason})")
            }
            Err(CaseError::Skipped(reason)) => failed.push(format!("{path}: skipped: {reason}")),
            Err(CaseError::Failed(message)) => failed.push(format!("{path}: {message}")),
        }
    }
    // Whatever a script or the client was refused shows in the ACL log.
    let mut admin = common::raw(&admin_url(&server)).await.expect("admin");
    let denials: Vec<redis::Value> = redis::cmd("ACL")
        .arg("LOG")
        .query_async(&mut admin)
        .await
        .expect("acl log");
    println!("{passed} of {total} cases passed with least-privileged users");
    assert!(
        failed.is_empty(),
        "{} failed:\n{}\nACL LOG: {denials:?}",
        failed.len(),
        failed.join("\n")
    );
}

fn fire(task: &str) -> FireKey {
    FireKey::new(
        task,
        Utc.timestamp_millis_opt(1_893_456_000_000)
            .single()
            .expect("valid instant"),
    )
}

fn assert_denied<T>(result: dcron_core::Result<T>, what: &str) {
    match result {
        Err(Error::AccessDenied(message)) => {
            assert!(
                message.to_lowercase().contains("noperm"),
                "{what}: {message}"
            );
        }
        Err(other) => panic!("{what}: expected AccessDenied, got {other:?}"),
        Ok(_) => panic!("{what}: expected AccessDenied, got Ok"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_user_cannot_read_or_write_another_namespace() {
    let _serial = SERIAL.lock().await;
    let Some(server) = owned() else { return };
    let (user, password) = namespace_user(&server, "app").await.expect("user");
    let mine = open_as(&server, "app", &user, &password)
        .await
        .expect("open own namespace");
    mine.put_task(&meta("mine", "@hourly"), PutMode::CreateOnly)
        .await
        .expect("put in its own namespace");

    // Another namespace holding data, written by its own user.
    let (theirs_user, theirs_password) = namespace_user(&server, "app-b").await.expect("user");
    let theirs = open_as(&server, "app-b", &theirs_user, &theirs_password)
        .await
        .expect("open");
    theirs
        .put_task(&meta("theirs", "@hourly"), PutMode::CreateOnly)
        .await
        .expect("put");
    let lease = theirs
        .register(
            &Node::new("their-node", Utc::now()),
            Duration::from_secs(30),
        )
        .await
        .expect("register");

    // The first user, pointed at the other namespace (a namespace extending its own name).
    let intruder = RedisRegistryConfig::new(format!("redis://127.0.0.1:{}", server.port()))
        .username(&user)
        .password(&password)
        .namespace("app-b")
        .build()
        .expect("config");
    intruder.ping().await.expect("PING is allowed");
    assert_denied(intruder.get_task("theirs").await, "get_task");
    assert_denied(intruder.list_nodes().await, "list_nodes");
    assert_denied(intruder.list_claims("theirs").await, "list_claims");
    assert_denied(
        intruder.get_record(RecordKind::Pause, "theirs").await,
        "get_record",
    );
    assert_denied(
        intruder
            .put_task(&meta("planted", "@hourly"), PutMode::Force)
            .await,
        "put_task",
    );
    assert_denied(
        intruder.mark_deleted("theirs", Utc::now()).await,
        "mark_deleted",
    );
    assert_denied(
        intruder
            .register(&Node::new("intruder", Utc::now()), Duration::from_secs(30))
            .await,
        "register",
    );
    assert_denied(intruder.keep_alive(&lease).await, "keep_alive");
    assert_denied(
        claim_fires(
            &intruder,
            "intruder",
            &[fire("theirs")],
            Duration::from_secs(60),
        )
        .await,
        "claim",
    );
    assert_denied(intruder.cleanup_all().await, "cleanup_all");
    assert_denied(intruder.watch_tasks().await, "watch_tasks");

    // The other namespace is untouched, and the first user still works in its own.
    let listed = theirs.list_tasks().await.expect("list");
    assert_eq!(
        listed
            .items
            .iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>(),
        ["theirs"]
    );
    assert!(theirs.get_tombstone("theirs").await.expect("get").is_none());
    assert_eq!(theirs.list_nodes().await.expect("nodes").items.len(), 1);
    assert_eq!(
        mine.list_tasks().await.expect("list").items.len(),
        1,
        "its own namespace"
    );
}
