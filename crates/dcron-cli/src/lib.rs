//! `dcronctl`: see and steer a dcron cluster from the command line, through its registry.
//!
//! The binary is a thin shell over this library: [`target`] turns `--registry <url>` and the
//! credential flags and variables into a registry client, [`ops`] does each command's work over
//! the [`dcron_core::Registry`] trait and returns plain data, [`render`] prints it as tables (or
//! `serde` gives the `--json` form), [`watch`] streams events, and [`app`] ties them together
//! with the exit codes of [`error`]. See the crate README for every command with sample output.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod cli;
pub mod console;
pub mod duration;
pub mod error;
pub mod limits;
pub mod ops;
pub mod render;
pub mod secret;
pub mod target;
pub mod watch;

pub use cli::Cli;
pub use error::{CliError, CliResult, ErrorKind};

/// Helpers for this crate's unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::time::Duration;

    use dcron_core::{ClaimOutcome, ClaimRequest, Claimant, FireKey, Registry, TaskMeta};

    /// A task record as `dcron` writes it: its creation (live-since) set.
    pub(crate) fn meta(name: &str, cron: &str) -> TaskMeta {
        let mut m = TaskMeta::new(name, cron);
        m.created_at = Some(chrono::DateTime::<chrono::Utc>::UNIX_EPOCH);
        m
    }

    /// Claims `fires` for `node` in their tasks' current lives (started at the epoch when
    /// missing), with a long deadline.
    pub(crate) async fn claim(
        reg: &dyn Registry,
        node: &str,
        fires: &[FireKey],
        retention: Duration,
    ) -> dcron_core::Result<Vec<ClaimOutcome>> {
        let mut requests = Vec::new();
        for f in fires {
            let life = reg
                .ensure_lives(&[(f.task.clone(), chrono::DateTime::<chrono::Utc>::UNIX_EPOCH)])
                .await?[0];
            requests.push(ClaimRequest::new(
                f.clone(),
                life.generation,
                f.instant + chrono::Duration::days(3650),
                retention,
            ));
        }
        reg.claim(&Claimant::new(node, 1), &requests).await
    }
}
