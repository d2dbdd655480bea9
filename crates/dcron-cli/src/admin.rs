//! Pause, resume and trigger, and the per-task status they leave in the registry.
//!
//! These need dcron-core's task administration API, which this version of dcron-core does not
//! have yet: the commands fail with exit code 1 and say so, and `tasks` shows `-` for the last
//! result.

use dcron_core::Registry;

use crate::error::{CliError, CliResult};
use crate::ops::TaskExtras;

fn unsupported(command: &str) -> CliError {
    CliError::failed(format!(
        "`{command}` is not supported by this version of dcron-core (it has no task administration API yet)"
    ))
}

/// Reads the pause flags and last results (empty with this version of dcron-core).
///
/// # Errors
/// The registry's errors.
pub async fn extras(_registry: &dyn Registry) -> CliResult<TaskExtras> {
    Ok(TaskExtras::default())
}

/// `dcronctl pause`.
///
/// # Errors
/// Always, with this version of dcron-core (exit code 1).
pub async fn pause(_registry: &dyn Registry, name: &str) -> CliResult<()> {
    dcron_core::validate_task_name(name)?;
    Err(unsupported("pause"))
}

/// `dcronctl resume`.
///
/// # Errors
/// Always, with this version of dcron-core (exit code 1).
pub async fn resume(_registry: &dyn Registry, name: &str) -> CliResult<()> {
    dcron_core::validate_task_name(name)?;
    Err(unsupported("resume"))
}

/// `dcronctl trigger`.
///
/// # Errors
/// Always, with this version of dcron-core (exit code 1).
pub async fn trigger(_registry: &dyn Registry, name: &str) -> CliResult<()> {
    dcron_core::validate_task_name(name)?;
    Err(unsupported("trigger"))
}
