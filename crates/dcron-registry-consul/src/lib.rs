#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod claims;
mod client;
mod config;
mod error;
mod keys;
mod registry;
mod slots;
mod watch;

pub use config::{
    ConsulEnv, ConsulRegistryConfig, CONSUL_MAX_SESSION_TTL, CONSUL_MIN_SESSION_TTL, ENV_CACERT,
    ENV_CLIENT_CERT, ENV_CLIENT_KEY, ENV_HTTP_ADDR, ENV_HTTP_SSL, ENV_HTTP_TOKEN,
    ENV_HTTP_TOKEN_FILE, ENV_TLS_SERVER_NAME, SESSION_TTL_MULTIPLIER,
};
pub use error::AgentError;
pub use registry::{ConsulRegistry, MAX_VALUE_BYTES};
