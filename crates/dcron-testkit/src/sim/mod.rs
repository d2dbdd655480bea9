//! A deterministic cluster simulator: N [`dcron_core::Dcron`] nodes in one current-thread
//! runtime on virtual time, over [`dcron_core::MemoryRegistry`] behind a fault injector, checked
//! against the DESIGN §2 invariants after every run.
//!
//! One seed decides everything: the [`FaultPlan`] (partitions from the registry, added latency,
//! dropped replies, failed calls, forced lease expiry, clock skew up to ±5 s and clock steps,
//! crashes and restarts, graceful leaves and joins, dynamic tasks added, deleted and revived),
//! which calls fail, and, through [`ByNodeName`], which node owns which task. Time is tokio's
//! paused clock, so a run of minutes of cluster time takes a fraction of a second and replays
//! identically. [`run_seed`] runs one seed; [`check_run`] explains what is checked and how
//! *expected*, *missed* and *lost in flight* are defined. The `simulate` binary runs many
//! seeds and prints a summary line; see `SIMULATOR.md` in this crate.
//!
//! ```no_run
//! use dcron_testkit::sim::{run_seed, SimOptions};
//!
//! let outcome = run_seed(&SimOptions::new(7))?;
//! assert!(outcome.verdict.is_clean(), "{:?}\n{}", outcome.verdict.violations, outcome.plan);
//! # Ok::<(), dcron_core::Error>(())
//! ```

mod assign;
mod check;
mod faulty;
mod plan;
mod rng;
mod run;

pub use assign::{node_name, ByNodeName};
pub use check::{
    check_run, FinalNode, LifeEvent, RunRecord, TaskChange, TaskEvent, Verdict, SETTLE_MS,
};
pub use faulty::{ClaimLog, FaultyRegistry, GrantedClaim, SlotFaults};
pub use plan::{
    Fault, FaultPlan, SimParams, Step, DYNAMIC_TASKS, HOSTILE_TASK, ONE_SHOT_TASKS, OVERLAP_RUN_MS,
    OVERLAP_TASK, STATIC_TASKS,
};
pub use rng::SimRng;
pub use run::{run_seed, SeedOutcome, SimOptions, BASE};
