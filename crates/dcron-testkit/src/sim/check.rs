//! The checks run after every simulated run: the DESIGN §2 invariants against the ledger.
//!
//! # What counts as expected, missed and lost
//!
//! A fire `(task, t)` is **expected** (invariant 2) when
//! - the task was live at `t`: static tasks always; a dynamic task from 6 s after it was added
//!   or revived (the largest clock skew plus a second, since a skewed owner may legitimately
//!   skip the first instants) until [`SETTLE_MS`] before it was deleted (a fire closer to the
//!   deletion may be caught up only after the tombstone, which then rightly refuses it);
//! - some node was **working and stayed working** from at or before `t` until at least
//!   [`SETTLE_MS`] after `t` (observed from the nodes' own lifecycle events; a process that
//!   crashes ends its stretch). That is invariant 2's "at least one working node could reach
//!   the registry": partitions shorter than the TTL do not end a stretch, longer ones make the
//!   node `lost` and do. Such a node, if it does not own the task, takes it over with catch-up
//!   when the owner dies, and catch-up never looks before the node became working;
//! - `t` is at least [`SETTLE_MS`] before the end of the run (every fault is healed
//!   `settle_ms` before the end).
//!
//! An expected fire with no execution is **lost in flight** when the registry's claim log shows
//! a winner that never ran it because it could not: the winner crashed, or the registry's reply
//! to its claim was lost (the node then retries, is answered `Lost`, and correctly does not
//! run it). This is the at-most-once edge of the design (a claim is the right to run, and
//! nobody else may run a claimed fire); it is reported separately and is not a violation.
//! Every other expected fire with no execution is **missed**: a violation.
//!
//! Violations: a fire executed twice (invariant 1); a missed fire (invariant 2); at the end, a
//! node that is not `working`, or a live task without exactly one owner among the working
//! nodes, or a dead task owned (invariant 3); a dynamic task executing an instant later than its
//! deletion plus the largest skew, while deleted (invariant 4); an execution at an instant that
//! is not an occurrence of the task's schedule.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use dcron_core::{FireKey, Schedule, SecondsField};

use super::faulty::ClaimLog;
use super::plan::{SimParams, DYNAMIC_TASKS, STATIC_TASKS};
use crate::ledger::{Duplicate, Execution};

/// How long a node must stay working after an instant for the fire to be expected, and how
/// long before a deletion or the end of the run an instant must be: detection of a dead owner
/// (TTL) plus a poll plus claim retries, with room to spare.
pub const SETTLE_MS: u64 = 15_000;

/// A lifecycle state a simulated process entered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LifeEvent {
    /// The process (`n2`, `n2.1`, …).
    pub label: String,
    /// The state (`starting`, `working`, `lost`, `leaving`, `stopped`, or `crashed`).
    pub state: String,
    /// When, in virtual milliseconds since the start.
    pub at_ms: u64,
}

/// What happened to a dynamic task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskChange {
    /// Stored in the registry.
    Added,
    /// Marked deleted.
    Deleted,
    /// Tombstone cleared.
    Revived,
}

/// A dynamic task change applied by the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskEvent {
    /// Index into [`DYNAMIC_TASKS`].
    pub task: usize,
    /// What happened.
    pub change: TaskChange,
    /// When, in virtual milliseconds since the start.
    pub at_ms: u64,
}

/// One process at the end of the run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinalNode {
    /// The process.
    pub label: String,
    /// Its lifecycle state.
    pub state: String,
    /// The tasks it owns.
    pub owned: Vec<String>,
}

/// Everything a run recorded, as the checker needs it.
#[derive(Clone, Debug)]
pub struct RunRecord {
    /// The run's parameters.
    pub params: SimParams,
    /// True wall time at virtual time 0.
    pub base: DateTime<Utc>,
    /// Virtual milliseconds at the end of the run.
    pub end_ms: u64,
    /// Every execution (node = process label, `started_at` in true time).
    pub executions: Vec<Execution>,
    /// Lifecycle events of every process, in order.
    pub lifecycle: Vec<LifeEvent>,
    /// Dynamic task changes, in order.
    pub task_events: Vec<TaskEvent>,
    /// Processes that crashed.
    pub crashed: BTreeSet<String>,
    /// Claims the registry granted.
    pub claims: ClaimLog,
    /// The processes still running at the end (not crashed, not left).
    pub final_nodes: Vec<FinalNode>,
    /// The node records in the registry at the end: `(process, status)`.
    pub registered: Vec<(String, String)>,
}

/// What the checker found.
#[derive(Clone, Debug, Default)]
pub struct Verdict {
    /// Every execution.
    pub executions: usize,
    /// Expected fires.
    pub expected: usize,
    /// Expected fires that ran.
    pub executed_expected: usize,
    /// Fires that ran more than once.
    pub duplicates: Vec<Duplicate>,
    /// Expected fires that never ran, with no excuse.
    pub missed: Vec<FireKey>,
    /// Expected fires that never ran because their claim's winner could not run them.
    pub lost_in_flight: Vec<FireKey>,
    /// Scheduled instants not expected because no node was working throughout.
    pub excused: usize,
    /// Every invariant violation, one line each.
    pub violations: Vec<String>,
}

impl Verdict {
    /// No violation.
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }
}

fn at(base: DateTime<Utc>, ms: u64) -> DateTime<Utc> {
    base + chrono::Duration::milliseconds(ms as i64)
}

fn schedule_of(task: &str) -> Option<Schedule> {
    STATIC_TASKS
        .iter()
        .chain(DYNAMIC_TASKS.iter())
        .find(|(n, _)| *n == task)
        .and_then(|(_, expr)| Schedule::parse(expr, None, SecondsField::Optional).ok())
}

/// Intervals of virtual milliseconds.
type Spans = Vec<(u64, u64)>;

/// The `[from, to]` virtual-millisecond intervals during which a dynamic task's fires are
/// expected, and the `(deleted_at, revived_at)` intervals during which it must not run.
fn dynamic_intervals(
    events: &[TaskEvent],
    task: usize,
    skew_ms: u64,
    end_ms: u64,
) -> (Spans, Spans) {
    let lead = skew_ms + 1_000;
    let mut live = Vec::new();
    let mut dead = Vec::new();
    let mut live_from: Option<u64> = None;
    let mut dead_from: Option<u64> = None;
    for e in events.iter().filter(|e| e.task == task) {
        match e.change {
            TaskChange::Added | TaskChange::Revived => {
                if let Some(d) = dead_from.take() {
                    dead.push((d, e.at_ms));
                }
                live_from = Some(e.at_ms + lead);
            }
            TaskChange::Deleted => {
                if let Some(from) = live_from.take() {
                    live.push((from, e.at_ms.saturating_sub(SETTLE_MS)));
                }
                dead_from = Some(e.at_ms);
            }
        }
    }
    if let Some(from) = live_from {
        live.push((from, end_ms));
    }
    if let Some(d) = dead_from {
        dead.push((d, u64::MAX));
    }
    (live, dead)
}

/// Working stretches `[from, to)` of every process, from its lifecycle events.
fn stretches(record: &RunRecord) -> Vec<(u64, u64)> {
    let mut open: BTreeMap<&str, u64> = BTreeMap::new();
    let mut out = Vec::new();
    for e in &record.lifecycle {
        if e.state == "working" {
            open.entry(e.label.as_str()).or_insert(e.at_ms);
        } else if let Some(from) = open.remove(e.label.as_str()) {
            out.push((from, e.at_ms));
        }
    }
    for (_, from) in open {
        out.push((from, record.end_ms));
    }
    out
}

/// Checks one run's record against the invariants.
pub fn check_run(record: &RunRecord) -> Verdict {
    let mut v = Verdict {
        executions: record.executions.len(),
        ..Verdict::default()
    };
    let p = &record.params;
    let skew_ms = p.max_skew_ms.unsigned_abs();
    let last = record.end_ms.saturating_sub(SETTLE_MS);
    let work = stretches(record);
    let covered = |ms: u64| {
        work.iter()
            .any(|(from, to)| *from <= ms && *to >= ms + SETTLE_MS)
    };

    // Executions by fire.
    let mut by_fire: BTreeMap<FireKey, Vec<Execution>> = BTreeMap::new();
    for e in &record.executions {
        by_fire.entry(e.fire.clone()).or_default().push(e.clone());
    }
    for (fire, runs) in &by_fire {
        if runs.len() > 1 {
            let nodes: Vec<&str> = runs.iter().map(|r| r.node.as_str()).collect();
            v.violations.push(format!(
                "invariant 1: {} executed {} times, on {nodes:?}",
                fire,
                runs.len()
            ));
            v.duplicates.push(Duplicate {
                fire: fire.clone(),
                executions: runs.clone(),
            });
        }
        match schedule_of(&fire.task) {
            None => v
                .violations
                .push(format!("execution of an unknown task: {fire}")),
            Some(s) => {
                let previous = fire.instant - chrono::Duration::milliseconds(1);
                if s.next_after(previous) != Some(fire.instant) {
                    v.violations.push(format!(
                        "execution at an instant that is not an occurrence of the schedule: {fire}"
                    ));
                }
            }
        }
    }

    // Expected fires.
    let mut expected: BTreeSet<FireKey> = BTreeSet::new();
    let mut scheduled = 0usize;
    let mut add_interval = |task: &str, from: u64, to: u64, expected: &mut BTreeSet<FireKey>| {
        let Some(s) = schedule_of(task) else {
            return;
        };
        let to = to.min(last);
        if to <= from {
            return;
        }
        let from_t = at(record.base, from) - chrono::Duration::milliseconds(1);
        for instant in s.occurrences_in(from_t, at(record.base, to), 1_000_000) {
            scheduled += 1;
            let ms = (instant - record.base).num_milliseconds().max(0) as u64;
            if covered(ms) {
                expected.insert(FireKey::new(task, instant));
            }
        }
    };
    for (name, _) in STATIC_TASKS {
        add_interval(name, 0, record.end_ms, &mut expected);
    }
    for (i, (name, _)) in DYNAMIC_TASKS.iter().enumerate() {
        let (live, dead) = dynamic_intervals(&record.task_events, i, skew_ms, record.end_ms);
        for (from, to) in live {
            add_interval(name, from, to, &mut expected);
        }
        // Invariant 4: nothing runs while deleted, past the deletion plus the skew.
        for (deleted, revived) in dead {
            let limit = at(record.base, deleted + skew_ms + 500);
            let revived_at = at(record.base, revived.min(record.end_ms + 1));
            for e in record.executions.iter().filter(|e| e.fire.task == *name) {
                if e.fire.instant > limit && e.started_at < revived_at {
                    v.violations.push(format!(
                        "invariant 4: {} ran on {} while deleted (deleted at +{}ms)",
                        e.fire, e.node, deleted
                    ));
                }
            }
        }
    }
    v.expected = expected.len();
    v.excused = scheduled.saturating_sub(expected.len());
    for fire in &expected {
        if by_fire.contains_key(fire) {
            v.executed_expected += 1;
            continue;
        }
        let grants = record.claims.get(fire);
        let excusable = !grants.is_empty()
            && grants
                .iter()
                .all(|g| !g.delivered || record.crashed.contains(&g.node));
        if excusable {
            v.lost_in_flight.push(fire.clone());
        } else {
            v.missed.push(fire.clone());
            let who: Vec<String> = grants
                .iter()
                .map(|g| format!("{} (delivered: {})", g.node, g.delivered))
                .collect();
            v.violations.push(format!(
                "invariant 2: {fire} never ran; claim granted to {who:?}"
            ));
        }
    }

    // Invariant 3: one owner per live task among the working nodes, after the settle period.
    let mut live_tasks: BTreeSet<String> =
        STATIC_TASKS.iter().map(|(n, _)| n.to_string()).collect();
    for (i, (name, _)) in DYNAMIC_TASKS.iter().enumerate() {
        let mut state = None;
        for e in record.task_events.iter().filter(|e| e.task == i) {
            state = Some(e.change);
        }
        if matches!(state, Some(TaskChange::Added | TaskChange::Revived)) {
            live_tasks.insert(name.to_string());
        }
    }
    let mut owners: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for n in &record.final_nodes {
        if n.state != "working" {
            v.violations.push(format!(
                "invariant 3: {} is `{}` after the faults were healed",
                n.label, n.state
            ));
        }
        for t in &n.owned {
            owners.entry(t.as_str()).or_default().push(n.label.as_str());
        }
    }
    if !record.final_nodes.is_empty() {
        for t in &live_tasks {
            let o = owners.get(t.as_str()).cloned().unwrap_or_default();
            if o.len() != 1 {
                v.violations.push(format!(
                    "invariant 3: task {t} has owners {o:?} after the faults were healed (registry records: {:?})",
                    record.registered
                ));
            }
        }
    }
    for (t, o) in &owners {
        if !live_tasks.contains(*t) {
            v.violations
                .push(format!("invariant 3: deleted task {t} is owned by {o:?}"));
        }
    }
    v
}
