#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod config;
mod error;
mod events;
pub mod keys;
mod registry;
mod scripts;
#[cfg(feature = "tls")]
mod tls;
mod watch;

#[cfg(feature = "tls")]
pub use config::RedisTls;
pub use config::{
    RedisRegistryConfig, DEFAULT_NAMESPACE, DEFAULT_URL, TEST_CLUSTER_URLS_ENV, TEST_URL_ENV,
};
pub use keys::{RedisKeys, ACL_COMMANDS, CLUSTER_BUCKETS};
pub use registry::{RedisRegistry, MAX_VALUE_BYTES};

/// The backend name reported in errors, logs and metrics.
pub const BACKEND: &str = "redis";
