//! [`MemoryFactory`]: the conformance suite's factory for [`MemoryRegistry`].

use std::sync::Arc;

use async_trait::async_trait;
use dcron_core::memory::MemoryRegistry;
use dcron_core::{Error, Lease, RecordKind, Registry};

use crate::harness::{Hooks, RawKind, RegistryFactory};

/// The kinds the memory store keeps as bytes: task records and the core's records (nodes,
/// tombstones, claims, lives and slots are kept as typed values, never decoded).
const RAW_KINDS: &[RawKind] = &[
    RawKind::Task,
    RawKind::Record(RecordKind::Pause),
    RawKind::Record(RecordKind::Trigger),
    RawKind::Record(RecordKind::Status),
    RawKind::Record(RecordKind::Life),
];

/// Opens [`MemoryRegistry`] clients that all share one in-process store, so several clients of
/// one namespace see the same state; offers the `write_raw_task` and `expire_lease` hooks (there
/// is no server to restart).
///
/// ```no_run
/// dcron_testkit::conformance_main!(dcron_testkit::MemoryFactory::new());
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

    /// A factory on the store of an existing registry handle (and with its clock, if any).
    pub fn on_store(registry: &MemoryRegistry) -> Self {
        MemoryFactory {
            store: registry.clone(),
        }
    }

    /// This factory's clients with a wall clock of their own, like a server's: they declare
    /// [`dcron_core::Capabilities::clock`] and refuse late claims (the `Clock` cases run).
    pub fn with_clock(self, clock: std::sync::Arc<dyn dcron_core::Clock>) -> Self {
        MemoryFactory {
            store: self.store.with_clock(clock),
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

    fn hooks(&self) -> Option<Hooks> {
        Some(
            Hooks::none()
                .with_expire_lease()
                .with_write_raw_task()
                .with_write_raw(RAW_KINDS),
        )
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

    async fn write_raw(
        &self,
        namespace: &str,
        kind: RawKind,
        name: &str,
        bytes: &[u8],
    ) -> dcron_core::Result<()> {
        let store = self.store.with_namespace(namespace);
        match kind {
            RawKind::Task => {
                store.inject_raw_task(name, bytes.to_vec());
                Ok(())
            }
            // Records are opaque bytes to the store: its own write path is the raw one (a
            // value over the limit is refused there, as the server refuses it).
            RawKind::Record(kind) => {
                store
                    .put_records(kind, &[(name.to_string(), bytes.to_vec())])
                    .await
            }
            _ => Err(Error::Unsupported {
                operation: "write_raw",
            }),
        }
    }
}
