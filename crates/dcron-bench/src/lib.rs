//! Benchmarks for dcron.
//!
//! The `dcron-bench` binary runs whole systems and prints one `summary key=value …` line per
//! measured system (see [`cli`] for the commands). The library holds the parts the binary, the
//! criterion micro-benchmarks (`benches/micro.rs`) and the smoke test share:
//!
//! - [`latency`]: n every-second tasks on one node, dcron on `MemoryRegistry` and then
//!   tokio-cron-scheduler on the same workload, each in its own child process;
//! - [`cluster`]: k dcron nodes on one Redis server;
//! - [`scale`]: one node with up to millions of tasks;
//! - [`failover`]: the owner of tasks dies; how long until another node fires them, and whether
//!   any fire was lost;
//! - [`exactly`]: the exactly-once verdict of a run's own ledger (`duplicates`, `missed`,
//!   `unexpected`; a run whose counts are not all 0 exits non-zero);
//! - [`registry`]: the largest burst one node holds on a real backend, beside the raw speed of
//!   the backend's bare primitive measured in the same run;
//! - [`counting`]: a `Registry` wrapper that counts calls (registry round trips per fire);
//! - [`recorder`], [`stats`], [`sys`], [`summary`], [`plot`]: measurement and reporting.
//!
//! Every run is bounded in time and reports what it measured even when the goal is missed.

pub mod cli;
pub mod cluster;
pub mod counting;
pub mod exactly;
pub mod failover;
pub mod latency;
pub mod plot;
pub mod recorder;
pub mod registry;
pub mod scale;
pub mod stats;
pub mod summary;
pub mod sys;

use std::fmt;
use std::io::Write;

/// An error that ends a run, with a message meant for the person running the bench.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchError(pub String);

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BenchError {}

impl From<std::io::Error> for BenchError {
    fn from(e: std::io::Error) -> Self {
        BenchError(format!("I/O error: {e}"))
    }
}

impl From<dcron_core::Error> for BenchError {
    fn from(e: dcron_core::Error) -> Self {
        BenchError(format!("dcron error: {e}"))
    }
}

/// The result type of the runs.
pub type Result<T> = std::result::Result<T, BenchError>;

/// Builds an error from anything printable.
pub fn err(msg: impl fmt::Display) -> BenchError {
    BenchError(msg.to_string())
}

/// Runs one parsed command, writing its output lines to `out`.
///
/// # Errors
/// Whatever the run reports: an unreachable server, a node that never became ready in its time
/// bound, an I/O error while writing results.
pub fn run(command: cli::Command, out: &mut dyn Write) -> Result<()> {
    match command {
        cli::Command::Latency(args) => latency::run(&args, out),
        cli::Command::LatencyChild(args) => {
            let summary = latency::run_child(&args)?;
            writeln!(out, "{summary}")?;
            exactly::verdict_of(&summary)
        }
        cli::Command::Redis(args) => cluster::run(&args, out),
        cli::Command::Scale(args) => scale::run(&args, out),
        cli::Command::Failover(args) => failover::run(&args, out),
        cli::Command::Registry(args) => registry::run(&args, out),
    }
}

/// A multi-threaded tokio runtime with every driver enabled (one worker per core).
///
/// # Errors
/// When the runtime cannot be built (out of threads or file descriptors).
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| err(format!("cannot start the tokio runtime: {e}")))
}
