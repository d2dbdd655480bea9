//! The whole conformance suite on `SqliteRegistry` (examples/custom-registry): the glue a
//! third-party registry needs (a `harness = false` target: one trial per case, a skipped case
//! shows as ignored with its reason). Each test gets a fresh database file; every `open` is a new
//! connection to it, as another process would have.

#[allow(dead_code)] // the program uses more of the registry's API than the suite
#[path = "../custom-registry/sqlite_registry.rs"]
mod sqlite_registry;

use std::sync::Arc;

use dcron_core::{Lease, Registry, Result};
use dcron_testkit::{async_trait, Hooks, RegistryFactory};
use sqlite_registry::{ScratchDatabase, SqliteRegistry};

/// One database file per test; every `open` is a new connection to it.
struct SqliteFactory(ScratchDatabase);

#[async_trait]
impl RegistryFactory for SqliteFactory {
    fn name(&self) -> &'static str {
        "sqlite"
    }
    async fn open(&self, ns: &str) -> Result<Arc<dyn Registry>> {
        Ok(Arc::new(SqliteRegistry::open(self.0.path(), ns).await?))
    }
    // The two optional hooks that let the `faults` and `corrupt` cases run, declared so that the
    // suite knows which cases to run.
    fn hooks(&self) -> Option<Hooks> {
        Some(Hooks::none().with_expire_lease().with_write_raw_task())
    }
    async fn expire_lease(&self, ns: &str, lease: &Lease) -> Result<()> {
        let registry = SqliteRegistry::open(self.0.path(), ns).await?;
        registry.expire_lease_now(&lease.node_id).await
    }
    async fn write_raw_task(&self, ns: &str, name: &str, bytes: &[u8]) -> Result<()> {
        let registry = SqliteRegistry::open(self.0.path(), ns).await?;
        registry.write_raw_task(name, bytes).await
    }
}

dcron_testkit::conformance_main!(SqliteFactory(ScratchDatabase::new()));
