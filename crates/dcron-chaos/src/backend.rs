//! The registries a chaos run can use, and how a node connects to one.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use dcron_core::{Error, Registry, Result};
use dcron_registry_etcd::{EtcdRegistry, EtcdRegistryConfig};
use dcron_registry_postgres::PostgresRegistryConfig;
use dcron_registry_redis::RedisRegistryConfig;
use dcron_registry_zk::{ZkRegistry, ZkRegistryConfig};

/// A real registry backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Redis (`redis://host:port`).
    Redis,
    /// etcd (`host:port` or `http://host:port`).
    Etcd,
    /// ZooKeeper (`host:port`).
    Zk,
    /// PostgreSQL (`postgres://user@host:port/db`).
    Postgres,
}

impl FromStr for Backend {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "redis" => Ok(Backend::Redis),
            "etcd" => Ok(Backend::Etcd),
            "zk" | "zookeeper" => Ok(Backend::Zk),
            "postgres" | "postgresql" => Ok(Backend::Postgres),
            other => Err(Error::InvalidArgument(format!(
                "unknown backend `{other}` (redis, etcd, zk, postgres)"
            ))),
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Redis => "redis",
            Backend::Etcd => "etcd",
            Backend::Zk => "zk",
            Backend::Postgres => "postgres",
        })
    }
}

impl Backend {
    /// The environment variable `scripts/services/*.sh` export the server address in.
    pub fn env(self) -> &'static str {
        match self {
            Backend::Redis => "DCRON_TEST_REDIS_URL",
            Backend::Etcd => "DCRON_TEST_ETCD_ENDPOINTS",
            Backend::Zk => "DCRON_TEST_ZK_CONNECT",
            Backend::Postgres => "DCRON_TEST_POSTGRES_URL",
        }
    }

    /// The node lease TTL used in chaos runs (ZooKeeper leases are sessions, longer).
    pub fn ttl(self) -> Duration {
        match self {
            Backend::Redis | Backend::Etcd | Backend::Postgres => Duration::from_secs(3),
            Backend::Zk => Duration::from_secs(8),
        }
    }

    /// `host:port` of a registry address (`redis://h:p`, `http://h:p`, `h:p`).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when there is no `host:port` in it.
    pub fn host_port(self, address: &str) -> Result<String> {
        let first = address.split(',').next().unwrap_or_default().trim();
        let rest = first
            .split_once("://")
            .map_or(first, |(_, rest)| rest)
            .trim_end_matches('/');
        let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
        let host_port = rest.split('/').next().unwrap_or_default();
        if host_port.contains(':') {
            Ok(host_port.to_string())
        } else {
            Err(Error::InvalidArgument(format!(
                "no host:port in registry address `{address}`"
            )))
        }
    }

    /// Every `host:port` of a registry address: each member of a comma-separated etcd or
    /// ZooKeeper list (`h1:p1,h2:p2`), the one server of the other backends.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when an element has no `host:port`.
    pub fn host_ports(self, address: &str) -> Result<Vec<String>> {
        match self {
            Backend::Etcd | Backend::Zk => address
                .split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(|a| self.host_port(a))
                .collect::<Result<Vec<_>>>()
                .and_then(|v| {
                    if v.is_empty() {
                        Err(Error::InvalidArgument(format!(
                            "no host:port in registry address `{address}`"
                        )))
                    } else {
                        Ok(v)
                    }
                }),
            Backend::Redis | Backend::Postgres => Ok(vec![self.host_port(address)?]),
        }
    }

    /// The address a node uses to reach the servers at `host_ports` (every member of a
    /// cluster; only the first counts for Redis and PostgreSQL). `original` is as in
    /// [`Backend::address`].
    pub fn addresses(self, host_ports: &[String], original: &str) -> String {
        match self {
            Backend::Etcd | Backend::Zk => host_ports
                .iter()
                .map(|hp| self.address(hp, original))
                .collect::<Vec<_>>()
                .join(","),
            Backend::Redis | Backend::Postgres => {
                self.address(host_ports.first().map_or("", String::as_str), original)
            }
        }
    }

    /// The address a node uses to reach a server at `host_port`. `original` is the address
    /// the run was given: a PostgreSQL address keeps its user, database and parameters, with
    /// only its `host:port` replaced.
    pub fn address(self, host_port: &str, original: &str) -> String {
        match self {
            Backend::Redis => format!("redis://{host_port}"),
            Backend::Etcd => format!("http://{host_port}"),
            Backend::Zk => host_port.to_string(),
            Backend::Postgres => match self.host_port(original) {
                Ok(old) => original.replacen(&old, host_port, 1),
                Err(_) => format!("postgres://postgres@{host_port}/postgres"),
            },
        }
    }

    /// Connects to the registry at `address` under `namespace` (for etcd and ZooKeeper, a
    /// comma-separated list of members).
    ///
    /// # Errors
    /// The backend's connection errors.
    pub async fn connect(self, address: &str, namespace: &str) -> Result<Arc<dyn Registry>> {
        Ok(match self {
            Backend::Redis => Arc::new(
                RedisRegistryConfig::new(address)
                    .namespace(namespace)
                    .build()?,
            ),
            Backend::Etcd => Arc::new(
                EtcdRegistry::connect(
                    EtcdRegistryConfig::new(address.split(',').map(str::trim)).namespace(namespace),
                )
                .await?,
            ),
            Backend::Zk => Arc::new(
                ZkRegistry::connect(
                    ZkRegistryConfig::new(address).namespace(format!("/{namespace}")),
                )
                .await?,
            ),
            Backend::Postgres => Arc::new(
                PostgresRegistryConfig::new(address)
                    .namespace(namespace)
                    .pool_size(4)
                    .connect_timeout(Duration::from_secs(3))
                    .command_timeout(Duration::from_secs(5))
                    .connect()
                    .await?,
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip() {
        assert_eq!(
            Backend::Redis.host_port("redis://127.0.0.1:6379").ok(),
            Some("127.0.0.1:6379".to_string())
        );
        assert_eq!(
            Backend::Etcd
                .host_port("127.0.0.1:2379,127.0.0.1:2380")
                .ok(),
            Some("127.0.0.1:2379".to_string())
        );
        assert_eq!(
            Backend::Redis
                .host_port("redis://:pw@127.0.0.1:7000/2")
                .ok(),
            Some("127.0.0.1:7000".to_string())
        );
        assert!(Backend::Zk.host_port("nowhere").is_err());
        let members = Backend::Etcd
            .host_ports("http://127.0.0.1:1, 127.0.0.1:2")
            .unwrap_or_default();
        assert_eq!(members, ["127.0.0.1:1", "127.0.0.1:2"]);
        assert_eq!(
            Backend::Etcd.addresses(&members, ""),
            "http://127.0.0.1:1,http://127.0.0.1:2"
        );
        assert_eq!(
            Backend::Zk.addresses(&members, ""),
            "127.0.0.1:1,127.0.0.1:2"
        );
        assert!(Backend::Zk.host_ports(",").is_err());
        assert!(Backend::Zk.host_ports("127.0.0.1:1,nowhere").is_err());
        assert_eq!(
            Backend::Redis
                .host_ports("redis://127.0.0.1:6379")
                .unwrap_or_default(),
            ["127.0.0.1:6379"]
        );
        assert_eq!(
            Backend::Etcd.address("127.0.0.1:1", "127.0.0.1:2379"),
            "http://127.0.0.1:1"
        );
        let pg = "postgres://app@127.0.0.1:5432/db?sslmode=disable";
        assert_eq!(
            Backend::Postgres.host_port(pg).ok(),
            Some("127.0.0.1:5432".to_string())
        );
        assert_eq!(
            Backend::Postgres.address("127.0.0.1:40000", pg),
            "postgres://app@127.0.0.1:40000/db?sslmode=disable"
        );
        assert_eq!("postgres".parse::<Backend>().ok(), Some(Backend::Postgres));
        assert!("mongo".parse::<Backend>().is_err());
        assert_eq!("zookeeper".parse::<Backend>().ok(), Some(Backend::Zk));
    }
}
