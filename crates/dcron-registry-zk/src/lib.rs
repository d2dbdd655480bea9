#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod claims;
mod config;
mod conn;
mod events;
mod faults;
mod keys;
mod names;
mod nodes;
mod records;
mod registry;
mod slots;
mod state;
mod sweeper;
mod watch;

pub use config::{ZkRegistryConfig, DEFAULT_CONNECT, DEFAULT_NAMESPACE, MIN_SESSION_TIMEOUT};
pub use events::ZkEvent;
pub use faults::{Fault, FaultInjector};
pub use registry::{ZkRegistry, MAX_VALUE_BYTES};
