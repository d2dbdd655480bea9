//! The conformance cases that restart the server, one after another on an etcd this test owns
//! (a restart would disturb cases running beside it on the shared server).

mod common;

use std::sync::Arc;
use std::time::Duration;

use dcron_core::{Lease, Registry};
use dcron_testkit::{async_trait, CaseError, Hooks, RegistryFactory, Requirement};

use common::{raw_put, revoke, OwnedEtcd, MIN_TTL};

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

    fn hooks(&self) -> Option<Hooks> {
        Some(
            Hooks::none()
                .with_restart_server()
                .with_expire_lease()
                .with_write_raw_task(),
        )
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
