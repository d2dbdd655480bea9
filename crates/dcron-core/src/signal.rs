//! Stopping a node when the process is asked to stop (Ctrl-C, SIGTERM).
//!
//! A node stopped with [`crate::Dcron::stop`] leaves cleanly: its peers take its tasks at once
//! and catch up, its in-flight handlers drain. A process killed without it leaves its tasks
//! unowned until its lease expires. [`ShutdownSignal`] turns the usual stop requests into a
//! future, so `main` can await it and stop the node:
//!
//! ```no_run
//! use dcron_core::{Dcron, MemoryRegistry};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let node = Dcron::builder(MemoryRegistry::new()).build()?;
//! node.add_func("tick", "*/5 * * * * *", |_ctx| async { Ok(()) }).await?;
//! node.start().await?;
//! let signal = dcron_core::shutdown_signal().await?; // Ctrl-C or SIGTERM
//! println!("{signal}: stopping");
//! node.stop().await?;
//! # Ok(()) }
//! ```
//!
//! [`Dcron::run_until_shutdown`](crate::Dcron::run_until_shutdown) does the same in one call.

use std::fmt;

/// The stop request a process received.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Shutdown {
    /// Ctrl-C in a terminal (SIGINT on Unix).
    Interrupt,
    /// SIGTERM (Unix only): what `kill`, systemd, Docker and Kubernetes send.
    Terminate,
}

impl fmt::Display for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Shutdown::Interrupt => "interrupt (Ctrl-C)",
            Shutdown::Terminate => "terminate (SIGTERM)",
        })
    }
}

/// Listens for Ctrl-C and, on Unix, SIGTERM, from the moment it is created.
///
/// Creating it replaces the default action of those signals (ending the process) for the rest
/// of the process's life: from then on the program decides when to exit. Create it before
/// starting work, so that a signal arriving early is not lost.
#[derive(Debug)]
pub struct ShutdownSignal {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl ShutdownSignal {
    /// Starts listening. Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// The operating system's error when a handler cannot be installed.
    pub fn listen() -> std::io::Result<ShutdownSignal> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(ShutdownSignal {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(ShutdownSignal {})
        }
    }

    /// Waits for the next stop request and names it.
    ///
    /// # Errors
    /// The operating system's error when listening fails (not on Unix, where it cannot).
    pub async fn recv(&mut self) -> std::io::Result<Shutdown> {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => Ok(Shutdown::Interrupt),
                _ = self.terminate.recv() => Ok(Shutdown::Terminate),
            }
        }
        #[cfg(not(unix))]
        {
            tokio::signal::ctrl_c().await?;
            Ok(Shutdown::Interrupt)
        }
    }
}

/// Resolves at the first Ctrl-C or SIGTERM (see [`ShutdownSignal`]; the handlers are installed
/// when this future is first polled).
///
/// # Errors
/// The operating system's error when a handler cannot be installed.
pub async fn shutdown_signal() -> std::io::Result<Shutdown> {
    ShutdownSignal::listen()?.recv().await
}
