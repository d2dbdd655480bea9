#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod config;
mod conn;
mod layout;
mod registry;
mod sweeper;
mod watcher;

pub use config::{ZkRegistryConfig, DEFAULT_CONNECT, DEFAULT_NAMESPACE, MIN_SESSION_TIMEOUT};
pub use registry::{ZkRegistry, MAX_VALUE_BYTES};
