//! Multi-process chaos runs of dcron nodes against real registries.
//!
//! Two programs: `chaos-node` joins a cluster on a registry and appends every execution to a
//! ledger file; `chaos` starts several of them as separate processes, kills and restarts them,
//! cuts one off from the registry through a TCP proxy it controls, restarts the registry server
//! when it owns it, and finally merges the ledgers and checks that every fire ran exactly once.
//! This library holds what both share: the backends, the ledger format and the analysis, and
//! the proxy.

#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod backend;
pub mod ledger;
pub mod proxy;

/// The tasks every node registers: `chaos-00` … , each firing every second.
pub fn task_names(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("chaos-{i:02}")).collect()
}

/// The schedule of every chaos task: every second.
pub const EVERY_SECOND: &str = "* * * * * *";
