//! The whole conformance suite on `SqliteRegistry` (examples/custom-registry): the glue a
//! third-party registry needs. Each test gets a fresh database file; every `open` is a new
//! connection to it, as another process would have.

#[allow(dead_code)] // the program uses more of the registry's API than the suite
#[path = "../custom-registry/sqlite_registry.rs"]
mod sqlite_registry;

use std::{path::PathBuf, sync::Arc};

use dcron_core::{Lease, Registry, Result};
use dcron_testkit::{async_trait, RegistryFactory};
use sqlite_registry::SqliteRegistry;

/// One scratch database file per test, removed when the test ends.
struct SqliteFactory(PathBuf);

#[async_trait]
impl RegistryFactory for SqliteFactory {
    fn name(&self) -> &'static str {
        "sqlite"
    }
    async fn open(&self, ns: &str) -> Result<Arc<dyn Registry>> {
        Ok(Arc::new(SqliteRegistry::open(&self.0, ns).await?))
    }
    async fn expire_lease(&self, ns: &str, lease: &Lease) -> Result<()> {
        SqliteRegistry::open(&self.0, ns)
            .await?
            .expire_lease_now(&lease.node_id)
            .await
            .map(drop)
    }
    async fn write_raw_task(&self, ns: &str, name: &str, bytes: &[u8]) -> Result<()> {
        SqliteRegistry::open(&self.0, ns)
            .await?
            .write_raw_task(name, bytes)
            .await
    }
}

impl Drop for SqliteFactory {
    fn drop(&mut self) {
        sqlite_registry::remove_database(&self.0);
    }
}

dcron_testkit::conformance_tests!(SqliteFactory(sqlite_registry::scratch_path()));
