#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod claims;
mod client;
mod config;
mod keys;
mod registry;
mod watch;

pub use config::{ConsulRegistryConfig, CONSUL_MAX_SESSION_TTL, CONSUL_MIN_SESSION_TTL};
pub use registry::{ConsulRegistry, MAX_VALUE_BYTES};
