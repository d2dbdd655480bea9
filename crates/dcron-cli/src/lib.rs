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
pub mod duration;
pub mod error;
pub mod ops;
pub mod render;
pub mod secret;
pub mod target;
pub mod watch;

pub use cli::Cli;
pub use error::{CliError, CliResult, ErrorKind};
