//! The dcron conformance suite against a Redis Cluster (`DCRON_TEST_REDIS_CLUSTER_URLS`,
//! comma-separated seed URLs; `scripts/services/redis-cluster.sh` starts a 3-master cluster on
//! 127.0.0.1:7001-7003), one trial per case, with the cluster key layout
//! (`RedisKeys::cluster`). Not set or unreachable → every case is ignored with the reason, or
//! fails under `DCRON_TEST_REQUIRE=1`.

use std::sync::Arc;
use std::time::Duration;

use dcron_core::{Error, Lease, Registry};
use dcron_registry_redis::{RedisKeys, RedisRegistry, TEST_CLUSTER_URLS_ENV};
use dcron_testkit::{async_trait, Hooks, RegistryFactory};
use redis::AsyncCommands;

/// The conformance factory on the cluster named by the environment.
struct ClusterServer {
    urls: Vec<String>,
}

impl ClusterServer {
    fn new() -> Self {
        let urls = std::env::var(TEST_CLUSTER_URLS_ENV).unwrap_or_default();
        ClusterServer {
            urls: urls
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(String::from)
                .collect(),
        }
    }

    /// A raw cluster connection, for planting values and removing keys.
    async fn raw(&self) -> dcron_core::Result<redis::cluster_async::ClusterConnection> {
        let client = redis::cluster::ClusterClient::new(self.urls.clone())
            .map_err(|e| Error::InvalidArgument(format!("cluster urls: {e}")))?;
        tokio::time::timeout(Duration::from_secs(5), client.get_async_connection())
            .await
            .map_err(|_| Error::unavailable("connecting to the cluster timed out"))?
            .map_err(|e| Error::unavailable(format!("connecting to the cluster: {e}")))
    }
}

fn hook_error(e: redis::RedisError) -> Error {
    Error::unavailable(format!("raw redis command: {e}"))
}

#[async_trait]
impl RegistryFactory for ClusterServer {
    fn name(&self) -> &'static str {
        "redis-cluster"
    }

    async fn open(&self, namespace: &str) -> dcron_core::Result<Arc<dyn Registry>> {
        let Some(reg) = RedisRegistry::cluster_from_env(namespace) else {
            return Err(Error::unavailable(format!(
                "{TEST_CLUSTER_URLS_ENV} is not set (eval \"$(bash scripts/services/redis-cluster.sh)\")"
            )));
        };
        let reg = reg?;
        reg.ping().await?;
        Ok(Arc::new(reg))
    }

    fn hooks(&self) -> Option<Hooks> {
        Some(Hooks::none().with_expire_lease().with_write_raw_task())
    }

    async fn expire_lease(&self, namespace: &str, lease: &Lease) -> dcron_core::Result<()> {
        let key = RedisKeys::cluster(namespace).node(&lease.node_id);
        self.raw()
            .await?
            .del::<_, ()>(key)
            .await
            .map_err(hook_error)
    }

    async fn write_raw_task(
        &self,
        namespace: &str,
        name: &str,
        bytes: &[u8],
    ) -> dcron_core::Result<()> {
        let key = RedisKeys::cluster(namespace).task(name);
        self.raw()
            .await?
            .set::<_, _, ()>(key, bytes)
            .await
            .map_err(hook_error)
    }
}

dcron_testkit::conformance_main!(ClusterServer::new());
