//! Least privilege on an etcd the test starts itself with authentication enabled: the whole
//! conformance suite passes as a user whose only role grants read-write on a key prefix
//! (`/dcron-test-`, where the cases' namespaces live), and a user with read-write on its
//! namespace's prefix (`EtcdRegistryConfig::key_prefix`) can neither read nor write another
//! namespace.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use common::OwnedEtcd;
use dcron_core::{Error, Lease, Node, PutMode, RecordKind, Registry};
use dcron_registry_etcd::EtcdRegistry;
use dcron_testkit::{async_trait, cases, run_case, CaseError, Hooks, RegistryFactory};
use etcd_client::Permission;
use futures::StreamExt;

const ROOT_PASSWORD: &str = "root-secret";

/// The tests of this file run one after the other: each loads its own server heavily
/// (authentication costs a bcrypt per client), and the suite's timing cases want a fair share.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A server with `root` and authentication enabled, or `None` (skip).
async fn owned(test: &str) -> Option<Arc<OwnedEtcd>> {
    let server = OwnedEtcd::start(test).await?;
    // Generous: enabling authentication can take a while on a loaded machine.
    let setup = server
        .config("setup")
        .request_timeout(Duration::from_secs(30))
        .connect()
        .await
        .expect("connect");
    let mut client = setup.client().clone();
    client
        .user_add("root", ROOT_PASSWORD, None)
        .await
        .expect("add root");
    client
        .user_grant_role("root", "root")
        .await
        .expect("grant root");
    client.auth_enable().await.expect("auth enable");
    Some(Arc::new(server))
}

async fn as_root(server: &OwnedEtcd, namespace: &str) -> dcron_core::Result<EtcdRegistry> {
    server
        .config(namespace)
        .credentials("root", ROOT_PASSWORD)
        .connect()
        .await
}

fn setup_error(what: &str, e: etcd_client::Error) -> Error {
    Error::backend("etcd", format!("least-privilege setup: {what}"), e)
}

/// A user (made once) whose only role grants read-write on the keys starting with `prefix`.
async fn prefix_user(server: &OwnedEtcd, prefix: &str) -> dcron_core::Result<(String, String)> {
    let user = format!("dcron{}", prefix.trim_end_matches('/').replace('/', "-"));
    let password = format!("pw-{user}");
    let root = as_root(server, "setup").await?;
    let mut client = root.client().clone();
    match client
        .user_add(user.as_str(), password.as_str(), None)
        .await
    {
        Ok(_) => {}
        Err(e) if e.to_string().contains("already exists") => return Ok((user, password)),
        Err(e) => return Err(setup_error("user add", e)),
    }
    client
        .role_add(user.as_str())
        .await
        .map_err(|e| setup_error("role add", e))?;
    client
        .role_grant_permission(user.as_str(), Permission::read_write(prefix).with_prefix())
        .await
        .map_err(|e| setup_error("grant permission", e))?;
    client
        .user_grant_role(user.as_str(), user.as_str())
        .await
        .map_err(|e| setup_error("grant role", e))?;
    Ok((user, password))
}

/// The user of `namespace`: read-write on its key prefix (`/<namespace>/`) only.
async fn namespace_user(
    server: &OwnedEtcd,
    namespace: &str,
) -> dcron_core::Result<(String, String)> {
    prefix_user(server, &server.config(namespace).key_prefix()).await
}

/// The key prefix every conformance namespace (`dcron-test-…`) starts with.
const CONFORMANCE_PREFIX: &str = "/dcron-test-";

/// Conformance factory: every client is opened by one user whose only role grants read-write
/// on the keys under `/dcron-test-` (where every case's namespaces live), made before the run:
/// etcd invalidates every token when users or roles change, so users made during the run
/// would make every client authenticate again each time. The fault-injection hooks act as
/// `root` (they stand for the server's own doings).
struct LeastPrivilege {
    server: Arc<OwnedEtcd>,
    user: (String, String),
}

#[async_trait]
impl RegistryFactory for LeastPrivilege {
    fn name(&self) -> &'static str {
        "etcd (a user with read-write on /dcron-test- only)"
    }

    async fn open(&self, namespace: &str) -> dcron_core::Result<Arc<dyn Registry>> {
        let (user, password) = self.user.clone();
        let reg = self
            .server
            .config(namespace)
            .connect_timeout(Duration::from_secs(10))
            .credentials(user, password)
            .connect()
            .await?;
        Ok(Arc::new(reg))
    }

    fn min_ttl(&self) -> Duration {
        common::MIN_TTL
    }

    fn hooks(&self) -> Option<Hooks> {
        Some(Hooks::none().with_expire_lease().with_write_raw_task())
    }

    async fn expire_lease(&self, namespace: &str, lease: &Lease) -> dcron_core::Result<()> {
        common::revoke(&as_root(&self.server, namespace).await?, lease).await
    }

    async fn write_raw_task(
        &self,
        namespace: &str,
        name: &str,
        bytes: &[u8],
    ) -> dcron_core::Result<()> {
        common::raw_put(&as_root(&self.server, namespace).await?, name, bytes).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conformance_suite_passes_with_least_privileged_users() {
    let _serial = SERIAL.lock().await;
    let Some(server) = owned("least-privilege").await else {
        return;
    };
    let user = prefix_user(&server, CONFORMANCE_PREFIX)
        .await
        .expect("the conformance user");
    let factory: Arc<dyn RegistryFactory> = Arc::new(LeastPrivilege { server, user });
    let all = cases();
    let total = all.len();
    let outcomes: Vec<(String, Result<(), CaseError>)> = futures::stream::iter(all)
        .map(|case| {
            let factory = factory.clone();
            async move { (case.path(), run_case(factory, &case).await) }
        })
        .buffer_unordered(4)
        .collect()
        .await;
    let mut failed = Vec::new();
    let mut passed = 0;
    for (path, outcome) in outcomes {
        match outcome {
            Ok(()) => passed += 1,
            // The restart cases run in `restart_cases.rs`: a restart would disturb the others.
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
    println!("{passed} of {total} cases passed with least-privileged users");
    assert!(
        failed.is_empty(),
        "{} failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

fn assert_denied<T>(result: dcron_core::Result<T>, what: &str) {
    match result {
        Err(Error::AccessDenied(message)) => {
            assert!(message.contains("permission denied"), "{what}: {message}");
        }
        Err(other) => panic!("{what}: expected AccessDenied, got {other:?}"),
        Ok(_) => panic!("{what}: expected AccessDenied, got Ok"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_user_cannot_read_or_write_another_namespace() {
    let _serial = SERIAL.lock().await;
    let Some(server) = owned("least-privilege-isolation").await else {
        return;
    };
    let (user, password) = namespace_user(&server, "app").await.expect("user");
    let mine = server
        .config("app")
        .credentials(&user, &password)
        .connect()
        .await
        .expect("open own namespace");
    mine.put_task(&common::meta("mine", "@hourly"), PutMode::CreateOnly)
        .await
        .expect("put in its own namespace");

    // Another namespace (extending the first one's name) holding data, written by its own user.
    // Adding that user changes the auth store: etcd refuses a request whose token predates the
    // change ("revision of auth store is old"), and the client authenticates again by itself.
    let (theirs_user, theirs_password) = namespace_user(&server, "app-b").await.expect("user");
    let theirs = server
        .config("app-b")
        .credentials(&theirs_user, &theirs_password)
        .connect()
        .await
        .expect("open");
    theirs
        .put_task(&common::meta("theirs", "@hourly"), PutMode::CreateOnly)
        .await
        .expect("put");
    let lease = theirs
        .register(
            &Node::new("their-node", Utc::now()),
            Duration::from_secs(30),
        )
        .await
        .expect("register");

    // The first user, pointed at the other namespace: refused at connect (it reads the prefix).
    let refused = server
        .config("app-b")
        .credentials(&user, &password)
        .connect()
        .await;
    assert_denied(refused, "connect");

    // A client of its own namespace cannot reach the other's keys either: through the raw
    // client with its token, every read and write of the other prefix is refused.
    let mut raw = mine.client().clone();
    let other = server.config("app-b").key_prefix();
    let denied = |r: Result<(), etcd_client::Error>, what: &str| {
        let e = r.expect_err(what);
        assert!(e.to_string().contains("permission denied"), "{what}: {e}");
    };
    denied(
        raw.get(
            other.as_str(),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .map(|_| ()),
        "read the other prefix",
    );
    denied(
        raw.put(format!("{other}tasks/planted"), "x", None)
            .await
            .map(|_| ()),
        "write the other prefix",
    );
    denied(
        raw.delete(
            other.as_str(),
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await
        .map(|_| ()),
        "delete the other prefix",
    );

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
    assert_eq!(theirs.list_nodes().await.expect("nodes").items.len(), 1);
    theirs.keep_alive(&lease).await.expect("their lease lives");
    assert!(theirs
        .get_record(RecordKind::Pause, "theirs")
        .await
        .expect("records")
        .is_none());
    mine.put_task(&common::meta("after", "@hourly"), PutMode::CreateOnly)
        .await
        .expect("a write after the auth store changed");
    assert_eq!(mine.list_tasks().await.expect("list").items.len(), 2);
}
