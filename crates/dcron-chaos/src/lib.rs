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

/// The value following a command-line flag.
///
/// # Errors
/// [`dcron_core::Error::InvalidArgument`] when the flag is the last argument.
pub fn flag_value(flag: &str, value: Option<String>) -> dcron_core::Result<String> {
    value.ok_or_else(|| dcron_core::Error::InvalidArgument(format!("{flag} needs a value")))
}

/// The whole number following a command-line flag.
///
/// # Errors
/// As [`flag_value`], and [`dcron_core::Error::InvalidArgument`] for a value that is not a
/// whole number.
pub fn flag_number(flag: &str, value: Option<String>) -> dcron_core::Result<u64> {
    let v = flag_value(flag, value)?;
    v.parse()
        .map_err(|_| dcron_core::Error::InvalidArgument(format!("{flag}: `{v}` is not a number")))
}
