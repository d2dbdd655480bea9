//! The dcron-testkit conformance suite against etcd: every case on the shared server
//! (`DCRON_TEST_ETCD_ENDPOINTS`), and the cases that restart the server on an etcd this test owns.

mod common;

use std::sync::Arc;
use std::time::Duration;

use dcron_core::{Error, Lease, Registry};
use dcron_registry_etcd::{EtcdRegistry, EtcdRegistryConfig};
use dcron_testkit::{async_trait, CaseError, RegistryFactory, Requirement};

use common::OwnedEtcd;

/// etcd grants leases of at least 2 s (its minimum TTL with the default timing), in whole seconds.
const MIN_TTL: Duration = Duration::from_secs(2);

async fn revoke(reg: &EtcdRegistry, lease: &Lease) -> dcron_core::Result<()> {
    let id: i64 = lease
        .id
        .parse()
        .map_err(|_| Error::InvalidArgument(format!("not an etcd lease id: {}", lease.id)))?;
    match reg.client().clone().lease_revoke(id).await {
        Ok(_) => Ok(()),
        Err(e) if e.to_string().contains("lease not found") => Ok(()),
        Err(e) => Err(Error::backend("etcd", "revoke lease", e)),
    }
}

async fn raw_put(reg: &EtcdRegistry, name: &str, bytes: &[u8]) -> dcron_core::Result<()> {
    reg.client()
        .clone()
        .put(reg.task_key(name), bytes.to_vec(), None)
        .await
        .map(|_| ())
        .map_err(|e| Error::backend("etcd", "raw put", e))
}

/// Clients of the shared server.
struct SharedEtcd;

#[async_trait]
impl RegistryFactory for SharedEtcd {
    fn name(&self) -> &'static str {
        "etcd"
    }

    async fn open(&self, namespace: &str) -> dcron_core::Result<Arc<dyn Registry>> {
        let reg = EtcdRegistryConfig::from_env()
            .namespace(namespace)
            .connect()
            .await?;
        Ok(Arc::new(reg))
    }

    fn min_ttl(&self) -> Duration {
        MIN_TTL
    }

    async fn expire_lease(&self, namespace: &str, lease: &Lease) -> dcron_core::Result<()> {
        // Revoked from another client, as if the server had timed it out.
        let other = EtcdRegistryConfig::from_env()
            .namespace(namespace)
            .connect()
            .await?;
        revoke(&other, lease).await
    }

    async fn write_raw_task(
        &self,
        namespace: &str,
        name: &str,
        bytes: &[u8],
    ) -> dcron_core::Result<()> {
        let other = EtcdRegistryConfig::from_env()
            .namespace(namespace)
            .connect()
            .await?;
        raw_put(&other, name, bytes).await
    }
}

dcron_testkit::conformance_tests!(SharedEtcd);

/// Clients of an etcd owned by the test, which it can restart.
struct OwnedFactory {
    server: OwnedEtcd,
}

#[async_trait]
impl RegistryFactory for OwnedFactory {
    fn name(&self) -> &'static str {
        "etcd (owned server)"
    }

    async fn open(&self, namespace: &str) -> dcron_core::Result<Arc<dyn Registry>> {
        Ok(Arc::new(self.server.config(namespace).connect().await?))
    }

    fn min_ttl(&self) -> Duration {
        MIN_TTL
    }

    async fn restart_server(&self) -> dcron_core::Result<()> {
        self.server.restart();
        Ok(())
    }

    async fn expire_lease(&self, namespace: &str, lease: &Lease) -> dcron_core::Result<()> {
        let other = self.server.config(namespace).connect().await?;
        revoke(&other, lease).await
    }

    async fn write_raw_task(
        &self,
        namespace: &str,
        name: &str,
        bytes: &[u8],
    ) -> dcron_core::Result<()> {
        let other = self.server.config(namespace).connect().await?;
        raw_put(&other, name, bytes).await
    }
}

/// The cases that need `restart_server`, one after another on one owned server (a restart would
/// disturb cases running beside it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_cases_on_an_owned_server() {
    let Some(server) = OwnedEtcd::start("restart_cases").await else {
        return;
    };
    let factory: Arc<dyn RegistryFactory> = Arc::new(OwnedFactory { server });
    let cases: Vec<_> = dcron_testkit::cases()
        .into_iter()
        .filter(|c| c.requires == Requirement::Restart)
        .collect();
    let mut failures = Vec::new();
    for case in &cases {
        match dcron_testkit::run_case(factory.clone(), case).await {
            Ok(()) => println!("{} ... passed", case.path()),
            Err(CaseError::Skipped(reason)) => println!("{} ... skipped ({reason})", case.path()),
            Err(CaseError::Failed(msg)) => failures.push(format!("{}: {msg}", case.path())),
        }
    }
    assert!(
        failures.is_empty(),
        "restart cases failed:\n{}",
        failures.join("\n")
    );
    println!("{} restart cases run on the owned etcd", cases.len());
}
