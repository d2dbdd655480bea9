//! The execution ledger and the exactly-once checkers.
//!
//! Handlers under test record every execution in a shared [`Ledger`]; at the end of a run,
//! [`check`] compares it with the set of fires that should have run and reports duplicates
//! (invariant 1: at most one execution per fire), misses (invariant 2: every due fire runs) and
//! executions of fires that were not expected at all.
//!
//! ```
//! use dcron_testkit::{check, expected_fires, instant, Ledger};
//!
//! let ledger = Ledger::new();
//! let expected = expected_fires("report", [instant(0), instant(60_000)]);
//! for fire in &expected {
//!     ledger.record(fire.clone(), "node-1", 7, instant(5));
//! }
//! let report = check(&ledger, &expected);
//! assert!(report.is_clean(), "{report}");
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use dcron_core::FireKey;

/// One execution of a fire by a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Execution {
    /// The fire that ran.
    pub fire: FireKey,
    /// The node that ran it.
    pub node: String,
    /// The fencing token of the claim it ran under.
    pub token: u64,
    /// When the handler started (wall time of the executing node).
    pub started_at: DateTime<Utc>,
}

/// A thread-safe record of executions; clones share the same record.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    executions: Arc<Mutex<Vec<Execution>>>,
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Self {
        Ledger::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Execution>> {
        // A panic while holding the lock cannot leave the Vec half-updated (push is atomic for
        // our purposes), so a poisoned lock is still usable.
        self.executions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that `node` started executing `fire` under `token` at `started_at`.
    pub fn record(
        &self,
        fire: FireKey,
        node: impl Into<String>,
        token: u64,
        started_at: DateTime<Utc>,
    ) {
        self.lock().push(Execution {
            fire,
            node: node.into(),
            token,
            started_at,
        });
    }

    /// Every execution so far, in recording order.
    pub fn executions(&self) -> Vec<Execution> {
        self.lock().clone()
    }

    /// How many executions were recorded.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// How many times `fire` was executed.
    pub fn count(&self, fire: &FireKey) -> usize {
        self.lock().iter().filter(|e| &e.fire == fire).count()
    }

    /// The executions of one task, in recording order.
    pub fn for_task(&self, task: &str) -> Vec<Execution> {
        self.lock()
            .iter()
            .filter(|e| e.fire.task == task)
            .cloned()
            .collect()
    }

    /// Forgets every execution.
    pub fn clear(&self) {
        self.lock().clear();
    }
}

/// A fire executed more than once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Duplicate {
    /// The fire.
    pub fire: FireKey,
    /// All its executions.
    pub executions: Vec<Execution>,
}

/// What [`check`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// How many distinct expected fires were executed (at least once).
    pub executed: usize,
    /// Fires executed more than once (expected or not).
    pub duplicates: Vec<Duplicate>,
    /// Expected fires never executed, in order.
    pub missed: Vec<FireKey>,
    /// Executions of fires that were not expected.
    pub unexpected: Vec<Execution>,
}

impl Report {
    /// No duplicate, no miss, nothing unexpected.
    pub fn is_clean(&self) -> bool {
        self.duplicates.is_empty() && self.missed.is_empty() && self.unexpected.is_empty()
    }

    /// No fire ran twice (misses and unexpected fires allowed).
    pub fn at_most_once(&self) -> bool {
        self.duplicates.is_empty()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} executed, {} duplicated, {} missed, {} unexpected",
            self.executed,
            self.duplicates.len(),
            self.missed.len(),
            self.unexpected.len()
        )?;
        for d in self.duplicates.iter().take(10) {
            let nodes: Vec<&str> = d.executions.iter().map(|e| e.node.as_str()).collect();
            write!(f, "\n  duplicate {} on {nodes:?}", d.fire)?;
        }
        for m in self.missed.iter().take(10) {
            write!(f, "\n  missed {m}")?;
        }
        for u in self.unexpected.iter().take(10) {
            write!(f, "\n  unexpected {} on {}", u.fire, u.node)?;
        }
        Ok(())
    }
}

/// Compares the ledger with the fires that should have run exactly once.
pub fn check(ledger: &Ledger, expected: &BTreeSet<FireKey>) -> Report {
    check_allowed(ledger, expected, expected)
}

/// Compares the ledger with two sets: `required` fires must each run exactly once (a required
/// fire that did not run is *missed*); `allowed` fires may run at most once (the required ones
/// and those at the edges of a run, such as an instant a few milliseconds before a deletion).
/// An execution of a fire outside both is *unexpected*: an instant the schedule did not
/// produce since the task's live-since, a fire of a deleted task, a second fire of a one-shot.
pub fn check_allowed(
    ledger: &Ledger,
    required: &BTreeSet<FireKey>,
    allowed: &BTreeSet<FireKey>,
) -> Report {
    let mut by_fire: BTreeMap<FireKey, Vec<Execution>> = BTreeMap::new();
    for e in ledger.executions() {
        by_fire.entry(e.fire.clone()).or_default().push(e);
    }
    let mut report = Report::default();
    for (fire, executions) in &by_fire {
        if required.contains(fire) {
            report.executed += 1;
        } else if !allowed.contains(fire) {
            report.unexpected.extend(executions.iter().cloned());
        }
        if executions.len() > 1 {
            report.duplicates.push(Duplicate {
                fire: fire.clone(),
                executions: executions.clone(),
            });
        }
    }
    report.missed = required
        .iter()
        .filter(|f| !by_fire.contains_key(*f))
        .cloned()
        .collect();
    report
}

/// The fire keys of `task` at the given instants (truncated to the millisecond).
pub fn expected_fires(
    task: &str,
    instants: impl IntoIterator<Item = DateTime<Utc>>,
) -> BTreeSet<FireKey> {
    instants
        .into_iter()
        .map(|at| FireKey::new(task, at))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::instant;

    fn expected() -> BTreeSet<FireKey> {
        let mut set = expected_fires("a", (0..5).map(|i| instant(i * 1000)));
        set.extend(expected_fires("b", [instant(0)]));
        set
    }

    #[test]
    fn a_clean_run_is_clean() {
        let ledger = Ledger::new();
        for (i, fire) in expected().into_iter().enumerate() {
            ledger.record(fire, format!("n{}", i % 2), i as u64 + 1, instant(0));
        }
        let report = check(&ledger, &expected());
        assert!(report.is_clean(), "{report}");
        assert_eq!(report.executed, 6);
    }

    #[test]
    fn the_checker_catches_a_duplicate() {
        let ledger = Ledger::new();
        for fire in expected() {
            ledger.record(fire, "n1", 1, instant(0));
        }
        let twice = FireKey::new("a", instant(2000));
        ledger.record(twice.clone(), "n2", 9, instant(1));
        let report = check(&ledger, &expected());
        assert!(!report.is_clean());
        assert!(!report.at_most_once());
        assert_eq!(report.duplicates.len(), 1);
        assert_eq!(report.duplicates[0].fire, twice);
        let nodes: Vec<&str> = report.duplicates[0]
            .executions
            .iter()
            .map(|e| e.node.as_str())
            .collect();
        assert_eq!(nodes, ["n1", "n2"]);
        assert!(report.missed.is_empty());
        assert!(report.to_string().contains("duplicate"));
    }

    #[test]
    fn the_checker_catches_a_miss_and_an_unexpected_fire() {
        let ledger = Ledger::new();
        let missing = FireKey::new("a", instant(3000));
        for fire in expected().into_iter().filter(|f| *f != missing) {
            ledger.record(fire, "n1", 1, instant(0));
        }
        ledger.record(FireKey::new("c", instant(0)), "n1", 1, instant(0));
        let report = check(&ledger, &expected());
        assert!(!report.is_clean());
        assert!(report.at_most_once());
        assert_eq!(report.missed, vec![missing]);
        assert_eq!(report.executed, 5);
        assert_eq!(report.unexpected.len(), 1);
        assert_eq!(report.unexpected[0].fire.task, "c");
    }

    #[test]
    fn allowed_fires_are_neither_missed_nor_unexpected() {
        let ledger = Ledger::new();
        let required = expected_fires("a", [instant(0)]);
        let mut allowed = required.clone();
        allowed.extend(expected_fires("a", [instant(1000)]));
        ledger.record(FireKey::new("a", instant(0)), "n", 1, instant(0));
        assert!(check_allowed(&ledger, &required, &allowed).is_clean());
        ledger.record(FireKey::new("a", instant(1000)), "n", 2, instant(0));
        assert!(check_allowed(&ledger, &required, &allowed).is_clean());
        ledger.record(FireKey::new("a", instant(2000)), "n", 3, instant(0));
        let report = check_allowed(&ledger, &required, &allowed);
        assert_eq!(report.unexpected.len(), 1, "{report}");
        assert!(report.missed.is_empty() && report.duplicates.is_empty());
    }

    #[test]
    fn ledger_is_shared_between_clones_and_threads() {
        let ledger = Ledger::new();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let l = ledger.clone();
                std::thread::spawn(move || {
                    for i in 0..100 {
                        l.record(
                            FireKey::new("t", instant(i)),
                            format!("n{t}"),
                            1,
                            instant(0),
                        );
                    }
                })
            })
            .collect();
        for t in threads {
            assert!(t.join().is_ok());
        }
        assert_eq!(ledger.len(), 400);
        assert_eq!(ledger.count(&FireKey::new("t", instant(5))), 4);
        assert_eq!(ledger.for_task("t").len(), 400);
        let report = check(&ledger, &expected_fires("t", (0..100).map(instant)));
        assert_eq!(report.duplicates.len(), 100);
        ledger.clear();
        assert!(ledger.is_empty());
    }
}
