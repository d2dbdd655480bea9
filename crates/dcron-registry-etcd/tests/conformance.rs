//! The dcron-testkit conformance suite against etcd, every case on the shared server
//! (`DCRON_TEST_ETCD_ENDPOINTS`), one trial per case (a `harness = false` target, so a skipped
//! case shows as ignored with its reason). The cases that restart the server run on an etcd the
//! test owns, in `tests/restart_cases.rs`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use dcron_core::{Lease, Registry};
use dcron_registry_etcd::EtcdRegistryConfig;
use dcron_testkit::{async_trait, Hooks, RawKind, RegistryFactory};

use common::{raw_put, raw_write, revoke, MIN_TTL, RAW_KINDS};

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

    fn hooks(&self) -> Option<Hooks> {
        Some(
            Hooks::none()
                .with_expire_lease()
                .with_write_raw_task()
                .with_write_raw(RAW_KINDS),
        )
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

    async fn write_raw(
        &self,
        namespace: &str,
        kind: RawKind,
        name: &str,
        bytes: &[u8],
    ) -> dcron_core::Result<()> {
        let other = EtcdRegistryConfig::from_env()
            .namespace(namespace)
            .connect()
            .await?;
        raw_write(&other, kind, name, bytes).await
    }
}

dcron_testkit::conformance_main!(SharedEtcd);
