//! [`MemoryFactory`]: the conformance suite's factory for [`MemoryRegistry`].

use std::sync::Arc;

use async_trait::async_trait;
use dcron_core::memory::MemoryRegistry;
use dcron_core::{Error, Lease, Registry};

use crate::harness::RegistryFactory;

/// Opens [`MemoryRegistry`] clients that all share one in-process store, so several clients of
/// one namespace see the same state; offers the `write_raw_task` and `expire_lease` hooks (there
/// is no server to restart).
///
/// ```no_run
/// dcron_testkit::conformance_tests!(dcron_testkit::MemoryFactory::new());
/// # fn main() {}
/// ```
#[derive(Clone, Debug, Default)]
pub struct MemoryFactory {
    store: MemoryRegistry,
}

impl MemoryFactory {
    /// A factory on a fresh, empty store.
    pub fn new() -> Self {
        MemoryFactory::default()
    }

    /// A factory on the store of an existing registry handle.
    pub fn on_store(registry: &MemoryRegistry) -> Self {
        MemoryFactory {
            store: registry.clone(),
        }
    }
}

#[async_trait]
impl RegistryFactory for MemoryFactory {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn open(&self, namespace: &str) -> dcron_core::Result<Arc<dyn Registry>> {
        Ok(Arc::new(self.store.with_namespace(namespace)))
    }

    async fn expire_lease(&self, namespace: &str, lease: &Lease) -> dcron_core::Result<()> {
        if self
            .store
            .with_namespace(namespace)
            .expire_lease(&lease.node_id)
        {
            Ok(())
        } else {
            Err(Error::NotFound {
                what: "node",
                name: lease.node_id.clone(),
            })
        }
    }

    async fn write_raw_task(
        &self,
        namespace: &str,
        name: &str,
        bytes: &[u8],
    ) -> dcron_core::Result<()> {
        self.store
            .with_namespace(namespace)
            .inject_raw_task(name, bytes.to_vec());
        Ok(())
    }
}
