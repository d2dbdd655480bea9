//! The case catalogue and the two ways to run it: [`run_all`] and one test per case
//! (`conformance_tests!`).

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use dcron_core::{Capabilities, RecordKind};

use crate::harness::{CaseContext, CaseError, CaseResult, Hooks, RawKind, RegistryFactory};

/// The longest one case may run before it is reported as failed (a hung backend must not hang
/// the suite).
pub const CASE_TIMEOUT: Duration = Duration::from_secs(300);

/// What a case needs beyond the [`dcron_core::Registry`] trait itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Requirement {
    /// Nothing: every registry must pass it.
    None,
    /// Watches ([`dcron_core::Capabilities::watch`]); without them the case checks that
    /// `watch_*` answer `Unsupported` and is skipped.
    Watch,
    /// The factory's [`RegistryFactory::write_raw_task`] hook.
    RawWrites,
    /// The factory's [`RegistryFactory::write_raw`] hook for node records.
    RawNode,
    /// The factory's [`RegistryFactory::write_raw`] hook for task records.
    RawTask,
    /// The factory's [`RegistryFactory::write_raw`] hook for tombstones.
    RawTombstone,
    /// The factory's [`RegistryFactory::write_raw`] hook for claims.
    RawClaim,
    /// The factory's [`RegistryFactory::write_raw`] hook for native lives.
    RawLife,
    /// The factory's [`RegistryFactory::write_raw`] hook for running slots.
    RawSlot,
    /// The factory's [`RegistryFactory::write_raw`] hook for pause records.
    RawPause,
    /// The factory's [`RegistryFactory::write_raw`] hook for trigger-now records.
    RawTrigger,
    /// The factory's [`RegistryFactory::write_raw`] hook for status records.
    RawStatus,
    /// The factory's [`RegistryFactory::write_raw`] hook for life records.
    RawLifeRecord,
    /// The factory's [`RegistryFactory::expire_lease`] hook.
    ExpireLease,
    /// The factory's [`RegistryFactory::restart_server`] hook.
    Restart,
    /// Record support ([`dcron_core::Capabilities::records`]); without it the case is skipped.
    Records,
    /// A clock of the registry's own that refuses late claims
    /// ([`dcron_core::Capabilities::clock`]).
    Clock,
    /// The whole exactly-once contract: lives, generations, idempotent claims naming the
    /// holder ([`dcron_core::Capabilities::exactly_once`]).
    ExactlyOnce,
    /// Running slots ([`dcron_core::Capabilities::slots`]): the atomic overlap guarantee.
    Slots,
    /// A [`dcron_core::Capabilities::max_value_bytes`] of at most 8 MiB, the largest limit the
    /// suite probes byte for byte.
    SmallValues,
}

/// The largest `max_value_bytes` probed exactly ([`Requirement::SmallValues`]).
pub const MAX_PROBED_VALUE_BYTES: usize = 8 * 1024 * 1024;

impl Requirement {
    /// A short label for tables (`-` for none).
    pub fn label(self) -> &'static str {
        match self {
            Requirement::None => "-",
            Requirement::Watch => "watch",
            Requirement::RawWrites => "write_raw_task",
            Requirement::RawNode => "write_raw(node)",
            Requirement::RawTask => "write_raw(task)",
            Requirement::RawTombstone => "write_raw(tombstone)",
            Requirement::RawClaim => "write_raw(claim)",
            Requirement::RawLife => "write_raw(life)",
            Requirement::RawSlot => "write_raw(slot)",
            Requirement::RawPause => "write_raw(pause record)",
            Requirement::RawTrigger => "write_raw(trigger record)",
            Requirement::RawStatus => "write_raw(status record)",
            Requirement::RawLifeRecord => "write_raw(life record)",
            Requirement::ExpireLease => "expire_lease",
            Requirement::Restart => "restart_server",
            Requirement::Records => "records",
            Requirement::Clock => "clock",
            Requirement::ExactlyOnce => "exactly_once",
            Requirement::Slots => "slots",
            Requirement::SmallValues => "max_value_bytes <= 8 MiB",
        }
    }

    /// Why a registry with these capabilities and a factory with these hooks cannot run a case
    /// with this requirement, or `None` when it can. Undeclared hooks (`None`) are assumed
    /// present: the case finds out at run time.
    pub fn unmet(self, caps: &Capabilities, hooks: Option<Hooks>) -> Option<String> {
        let hook = |offered: fn(&Hooks) -> bool, name: &str| {
            hooks
                .filter(|h| !offered(h))
                .map(|_| format!("the factory does not offer the `{name}` hook"))
        };
        match self {
            Requirement::None => None,
            Requirement::Watch => (!caps.watch).then(|| "capabilities.watch is false".into()),
            Requirement::Records => {
                (!caps.records).then(|| "the registry declares no record support".into())
            }
            Requirement::Clock => (!caps.clock)
                .then(|| "capabilities.clock is false (the registry has no clock)".into()),
            Requirement::ExactlyOnce => (!caps.exactly_once).then(|| {
                "capabilities.exactly_once is false (a registry of the earlier contract)".into()
            }),
            Requirement::Slots => (!caps.slots).then(|| {
                "capabilities.slots is false (overlap falls back to published markers)".into()
            }),
            Requirement::SmallValues => {
                (caps.max_value_bytes > MAX_PROBED_VALUE_BYTES).then(|| {
                    format!(
                        "max_value_bytes is {}; the suite probes limits up to 8 MiB",
                        caps.max_value_bytes
                    )
                })
            }
            Requirement::RawWrites => hook(|h| h.write_raw_task, "write_raw_task"),
            Requirement::RawNode
            | Requirement::RawTask
            | Requirement::RawTombstone
            | Requirement::RawClaim
            | Requirement::RawLife
            | Requirement::RawSlot
            | Requirement::RawPause
            | Requirement::RawTrigger
            | Requirement::RawStatus
            | Requirement::RawLifeRecord => {
                let kind = self.raw_kind()?;
                hooks.filter(|h| !h.write_raw.contains(&kind)).map(|_| {
                    format!("the factory does not write raw {kind} values (`write_raw` hook)")
                })
            }
            Requirement::ExpireLease => hook(|h| h.expire_lease, "expire_lease"),
            Requirement::Restart => hook(|h| h.restart_server, "restart_server"),
        }
    }
}

impl Requirement {
    /// The kind of value a hostile case plants, for the `Raw*` requirements.
    pub fn raw_kind(self) -> Option<RawKind> {
        Some(match self {
            Requirement::RawNode => RawKind::Node,
            Requirement::RawTask => RawKind::Task,
            Requirement::RawTombstone => RawKind::Tombstone,
            Requirement::RawClaim => RawKind::Claim,
            Requirement::RawLife => RawKind::Life,
            Requirement::RawSlot => RawKind::Slot,
            Requirement::RawPause => RawKind::Record(RecordKind::Pause),
            Requirement::RawTrigger => RawKind::Record(RecordKind::Trigger),
            Requirement::RawStatus => RawKind::Record(RecordKind::Status),
            Requirement::RawLifeRecord => RawKind::Record(RecordKind::Life),
            _ => return None,
        })
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
/// namespace up afterwards whatever happened. A case whose [`Requirement`] the registry's
/// capabilities or the factory's declared hooks do not meet is skipped without running.
pub async fn run_case(factory: Arc<dyn RegistryFactory>, case: &Case) -> CaseResult {
    let cx = Arc::new(CaseContext::new(factory.clone(), &case.path()));
    if case.requires != Requirement::None {
        let caps = cx.open().await?.capabilities();
        if let Some(reason) = case.requires.unmet(&caps, factory.hooks()) {
            return Err(CaseError::Skipped(reason));
        }
    }
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

/// Support for `conformance_tests!` and `conformance_main!`; not a stable API.
#[doc(hidden)]
pub mod __private {
    use super::*;
    use crate::harness::servers_required;

    /// Runs `case` on a fresh two-worker runtime of its own with a factory built there.
    ///
    /// The runtime runs on its own thread, watched from the calling thread, so that a registry
    /// that blocks its worker threads (and with them the case's own time limit) still fails the
    /// case after [`CASE_TIMEOUT`] plus a margin instead of hanging.
    pub fn run_on_own_runtime<F, M>(case: Case, make_factory: M) -> CaseResult
    where
        F: RegistryFactory,
        M: FnOnce() -> F + Send + 'static,
    {
        let path = case.path();
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                return Err(CaseError::Failed(format!(
                    "cannot build a tokio runtime: {e}"
                )))
            }
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new().name(path).spawn(move || {
            let outcome = runtime.block_on(async move {
                let factory: Arc<dyn RegistryFactory> = Arc::new(make_factory());
                run_case(factory, &case).await
            });
            let _ = tx.send(outcome);
        });
        if let Err(e) = spawned {
            return Err(CaseError::Failed(format!(
                "cannot start the case thread: {e}"
            )));
        }
        match rx.recv_timeout(CASE_TIMEOUT + Duration::from_secs(30)) {
            Ok(outcome) => outcome,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(CaseError::Failed(format!(
                "hung for more than {CASE_TIMEOUT:?}: the registry blocks the runtime's worker threads"
            ))),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(CaseError::Failed(
                "the case thread panicked outside the case".to_string(),
            )),
        }
    }

    fn find(module: &str, name: &str) -> Case {
        match cases()
            .into_iter()
            .find(|c| c.module == module && c.name == name)
        {
            Some(case) => case,
            None => panic!("no conformance case {module}::{name} in this dcron-testkit"),
        }
    }

    /// Runs the case `module::name` (see [`run_on_own_runtime`]); panics when it fails. A skip
    /// prints its reason and passes: libtest cannot report it otherwise (`conformance_main!`
    /// can).
    pub fn run_test<F, M>(module: &str, name: &str, make_factory: M)
    where
        F: RegistryFactory,
        M: FnOnce() -> F + Send + 'static,
    {
        match run_on_own_runtime(find(module, name), make_factory) {
            Ok(()) => {}
            Err(CaseError::Skipped(reason)) => {
                println!("{module}::{name} skipped: {reason}");
                eprintln!("{module}::{name} skipped: {reason}");
            }
            Err(CaseError::Failed(msg)) => panic!("{module}::{name} FAILED: {msg}"),
        }
    }

    /// What the probe before the run found out.
    enum Plan {
        /// `--list`: nothing is probed or run.
        Listing,
        /// The server could not be reached.
        Unreachable(String),
        /// Opening a client failed otherwise: every case fails.
        Broken(String),
        /// The registry answered: skips follow from its capabilities and the factory's hooks.
        Ready {
            caps: Capabilities,
            hooks: Option<Hooks>,
        },
    }

    /// How long the probe may take to open a client.
    const PROBE_TIMEOUT: Duration = Duration::from_secs(60);

    /// Opens one client on a probe namespace to learn whether the server answers and what the
    /// registry declares.
    fn probe<F: RegistryFactory>(make_factory: impl FnOnce() -> F) -> Plan {
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => return Plan::Broken(format!("cannot build a tokio runtime: {e}")),
        };
        let plan = runtime.block_on(async move {
            let factory = make_factory();
            let random = uuid::Uuid::new_v4().simple().to_string();
            let namespace = format!("dcron-test-probe-{}", &random[..8]);
            match tokio::time::timeout(PROBE_TIMEOUT, factory.open(&namespace)).await {
                Err(_) => Plan::Unreachable(format!(
                    "{}: opening a client took more than {PROBE_TIMEOUT:?}",
                    factory.name()
                )),
                Ok(Err(e @ dcron_core::Error::Unavailable { .. })) => {
                    Plan::Unreachable(format!("{} server unreachable: {e}", factory.name()))
                }
                Ok(Err(e)) => {
                    Plan::Broken(format!("opening a {} client failed: {e}", factory.name()))
                }
                Ok(Ok(reg)) => {
                    let caps = reg.capabilities();
                    let _ = reg.cleanup_all().await;
                    eprintln!(
                        "dcron conformance suite on `{}`: {caps:?}; hooks {}",
                        factory.name(),
                        match factory.hooks() {
                            Some(h) => format!("{h:?}"),
                            None => "undeclared (found out at run time)".into(),
                        }
                    );
                    Plan::Ready {
                        caps,
                        hooks: factory.hooks(),
                    }
                }
            }
        });
        runtime.shutdown_timeout(Duration::from_secs(1));
        plan
    }

    /// The trial of one case under `plan`.
    fn trial<F, M>(case: Case, plan: &Plan, make_factory: M) -> libtest_mimic::Trial
    where
        F: RegistryFactory,
        M: FnOnce() -> F + Send + 'static,
    {
        use libtest_mimic::{Completion, Failed, Trial};
        let name = case.path();
        let decided = |outcome: Result<Completion, Failed>| {
            Trial::ignorable_test(name.clone(), move || outcome)
        };
        match plan {
            Plan::Unreachable(reason) if servers_required() => decided(Err(Failed::from(format!(
                "{reason}, and {}=1",
                crate::REQUIRE_ENV
            )))),
            Plan::Unreachable(reason) => decided(Ok(Completion::ignored_with(reason))),
            Plan::Broken(message) => decided(Err(Failed::from(message.as_str()))),
            Plan::Ready { caps, hooks } => match case.requires.unmet(caps, *hooks) {
                Some(reason) => decided(Ok(Completion::ignored_with(reason))),
                None => run_trial(case, make_factory),
            },
            Plan::Listing => run_trial(case, make_factory),
        }
    }

    /// A trial that runs the case; a skip found while running is reported as ignored with its
    /// reason, or fails with `DCRON_TEST_REQUIRE=1`.
    fn run_trial<F, M>(case: Case, make_factory: M) -> libtest_mimic::Trial
    where
        F: RegistryFactory,
        M: FnOnce() -> F + Send + 'static,
    {
        use libtest_mimic::{Completion, Failed, Trial};
        Trial::ignorable_test(case.path(), move || {
            match run_on_own_runtime(case, make_factory) {
                Ok(()) => Ok(Completion::Completed),
                Err(CaseError::Failed(msg)) => Err(Failed::from(msg)),
                Err(CaseError::Skipped(reason)) if servers_required() => Err(Failed::from(format!(
                    "skipped at run time: {reason}; with {}=1 a skip must be decided before the run (declare the factory's hooks and the registry's capabilities)",
                    crate::REQUIRE_ENV
                ))),
                Err(CaseError::Skipped(reason)) => Ok(Completion::ignored_with(format!(
                    "skipped at run time: {reason}"
                ))),
            }
        })
    }

    /// The `main` of `conformance_main!`: one libtest-mimic trial per case, skips decided up
    /// front from a probe of the server, libtest's arguments and exit code.
    pub fn conformance_main<F, M>(make_factory: M) -> std::process::ExitCode
    where
        F: RegistryFactory,
        M: Fn() -> F + Clone + Send + 'static,
    {
        let args = libtest_mimic::Arguments::from_args();
        let plan = if args.list {
            Plan::Listing
        } else {
            probe(make_factory.clone())
        };
        let trials = cases()
            .into_iter()
            .map(|case| trial(case, &plan, make_factory.clone()))
            .collect();
        libtest_mimic::run(&args, trials).exit_code()
    }
}
