#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod config;
mod error;
mod registry;
mod schema;
mod sql;
mod time;
mod tls;
mod watch;

pub use config::{
    PostgresRegistryConfig, SslMode, DEFAULT_NAMESPACE, DEFAULT_SCHEMA, ENV_TEST_URL,
    MAX_SCHEMA_BYTES,
};
pub use registry::{
    render_sql, PostgresRegistry, CLAIM_CHUNK, CLEANUP_EVENT_LIMIT, MAX_VALUE_BYTES, PURGE_BATCH,
};
pub use watch::WATCH_BUFFER;

/// The schema version this crate creates and needs.
pub const SCHEMA_VERSION: i32 = schema::LATEST;
