//! The case catalogue and the two ways to run it: [`run_all`] and one test per case
//! (`conformance_tests!`).

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::harness::{CaseContext, CaseError, CaseResult, RegistryFactory};

/// The longest one case may run before it is reported as failed (a hung backend must not hang
/// the suite).
pub const CASE_TIMEOUT: Duration = Duration::from_secs(300);

/// What a case needs beyond the [`crate::Registry`] trait itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Requirement {
    /// Nothing: every registry must pass it.
    None,
    /// Watches ([`dcron_core::Capabilities::watch`]); without them the case checks that
    /// `watch_*` answer `Unsupported` and is skipped.
    Watch,
    /// The factory's [`RegistryFactory::write_raw_task`] hook.
    RawWrites,
    /// The factory's [`RegistryFactory::expire_lease`] hook.
    ExpireLease,
    /// The factory's [`RegistryFactory::restart_server`] hook.
    Restart,
    /// Record support ([`dcron_core::Capabilities::records`]); without it the case is skipped.
    Records,
}

impl Requirement {
    /// A short label for tables (`-` for none).
    pub fn label(self) -> &'static str {
        match self {
            Requirement::None => "-",
            Requirement::Watch => "watch",
            Requirement::RawWrites => "write_raw_task",
            Requirement::ExpireLease => "expire_lease",
            Requirement::Restart => "restart_server",
            Requirement::Records => "records",
        }
    }
}

/// The function type of a case.
pub type CaseFn = for<'a> fn(&'a CaseContext) -> BoxFuture<'a, CaseResult>;

/// One conformance case: where it lives, the contract it checks and how to run it.
#[derive(Clone, Copy)]
pub struct Case {
    /// The module holding the case function (`claims`, `membership`, …).
    pub module: &'static str,
    /// The case function's name (unique within its module).
    pub name: &'static str,
    /// The contract the case checks, in one line.
    pub contract: &'static str,
    /// What the case needs beyond the trait.
    pub requires: Requirement,
    /// Runs the case.
    pub run: CaseFn,
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Case")
            .field("module", &self.module)
            .field("name", &self.name)
            .field("requires", &self.requires)
            .finish()
    }
}

impl Case {
    /// `module::name`.
    pub fn path(&self) -> String {
        format!("{}::{}", self.module, self.name)
    }
}

/// Every conformance case, in catalogue order (the README table and [`run_all`] use this list).
pub fn cases() -> Vec<Case> {
    crate::__dcron_case_list!([crate::__dcron_case_table] [])
}

/// Runs one case in a fresh namespace, with a time limit, catching panics, and cleans the
/// namespace up afterwards whatever happened.
pub async fn run_case(factory: Arc<dyn RegistryFactory>, case: &Case) -> CaseResult {
    let cx = Arc::new(CaseContext::new(factory, &case.path()));
    let run = case.run;
    let task_cx = cx.clone();
    let mut handle = tokio::spawn(async move { run(&task_cx).await });
    let outcome = match tokio::time::timeout(CASE_TIMEOUT, &mut handle).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(CaseError::Failed(match join.try_into_panic() {
            Ok(payload) => format!("panicked: {}", panic_message(payload.as_ref())),
            Err(e) => format!("case task ended abnormally: {e}"),
        })),
        Err(_) => {
            handle.abort();
            Err(CaseError::Failed(format!(
                "did not finish within {CASE_TIMEOUT:?}"
            )))
        }
    };
    cx.cleanup().await;
    outcome
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// The outcome of [`run_all`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Cases that passed (`module::name`).
    pub passed: Vec<String>,
    /// Cases that failed, with the message.
    pub failed: Vec<(String, String)>,
    /// Cases that were skipped, with the reason.
    pub skipped: Vec<(String, String)>,
}

impl Summary {
    /// Whether no case failed.
    pub fn is_success(&self) -> bool {
        self.failed.is_empty()
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} passed, {} failed, {} skipped",
            self.passed.len(),
            self.failed.len(),
            self.skipped.len()
        )?;
        for (name, msg) in &self.failed {
            write!(f, "\n  FAILED {name}: {msg}")?;
        }
        Ok(())
    }
}

/// Runs every case against the factory, one after another, printing one line per case
/// (`passed`, `FAILED (message)` or `skipped (reason)`), and answers the summary.
///
/// ```no_run
/// # async fn demo<F: dcron_testkit::RegistryFactory>(factory: F) {
/// let summary = dcron_testkit::run_all(factory).await;
/// assert!(summary.is_success(), "{summary}");
/// # }
/// ```
pub async fn run_all<F: RegistryFactory>(factory: F) -> Summary {
    let factory: Arc<dyn RegistryFactory> = Arc::new(factory);
    let mut summary = Summary::default();
    for case in cases() {
        let path = case.path();
        match run_case(factory.clone(), &case).await {
            Ok(()) => {
                println!("{path} ... passed");
                summary.passed.push(path);
            }
            Err(CaseError::Failed(msg)) => {
                println!("{path} ... FAILED ({msg})");
                summary.failed.push((path, msg));
            }
            Err(CaseError::Skipped(reason)) => {
                println!("{path} ... skipped ({reason})");
                summary.skipped.push((path, reason));
            }
        }
    }
    println!("{}: {summary}", factory.name());
    summary
}

/// Support for `conformance_tests!`; not a stable API.
#[doc(hidden)]
pub mod __private {
    use super::*;

    /// Runs the case `module::name` on a fresh two-worker runtime; panics when it fails.
    ///
    /// The runtime runs on its own thread, watched from the test thread, so that a registry that
    /// blocks its worker threads (and with them the case's own time limit) still fails the test
    /// after [`CASE_TIMEOUT`] plus a margin instead of hanging it.
    pub fn run_test<F, M>(module: &str, name: &str, make_factory: M)
    where
        F: RegistryFactory,
        M: FnOnce() -> F + Send + 'static,
    {
        let Some(case) = cases()
            .into_iter()
            .find(|c| c.module == module && c.name == name)
        else {
            panic!("no conformance case {module}::{name} in this dcron-testkit");
        };
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => panic!("cannot build a tokio runtime: {e}"),
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name(format!("{module}::{name}"))
            .spawn(move || {
                let outcome = runtime.block_on(async move {
                    let factory: Arc<dyn RegistryFactory> = Arc::new(make_factory());
                    run_case(factory, &case).await
                });
                let _ = tx.send(outcome);
            });
        if let Err(e) = spawned {
            panic!("cannot start the case thread: {e}");
        }
        let outcome = match rx.recv_timeout(CASE_TIMEOUT + Duration::from_secs(30)) {
            Ok(outcome) => outcome,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(CaseError::Failed(format!(
                "hung for more than {CASE_TIMEOUT:?}: the registry blocks the runtime's worker threads"
            ))),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(CaseError::Failed(
                "the case thread panicked outside the case".to_string(),
            )),
        };
        match outcome {
            Ok(()) => {}
            Err(CaseError::Skipped(reason)) => {
                println!("{module}::{name} skipped: {reason}");
                eprintln!("{module}::{name} skipped: {reason}");
            }
            Err(CaseError::Failed(msg)) => panic!("{module}::{name} FAILED: {msg}"),
        }
    }
}
