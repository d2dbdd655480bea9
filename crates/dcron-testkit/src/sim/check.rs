//! The checks run after every simulated run: the DESIGN §2 invariants against the ledger.
//!
//! # What counts as expected, missed and lost
//!
//! A fire `(task, t)` is **expected** (invariant 2) when
//! - the task was live at `t`: a static task from the start of the run (its life starts at
//!   virtual 0), a dynamic task from 6 s after it was added, revived or force-written (the
//!   largest clock skew plus a second, since a skewed owner may legitimately skip the first
//!   instants), until [`SETTLE_MS`] before it was deleted or its life ended (a cleanup or a
//!   force-write; a fire closer to it may be caught up only after it, which then rightly
//!   refuses it); after a static task's cleanup, from [`SETTLE_MS`] after it (the new life
//!   starts when a node first registers the name again); a one-shot's one fire is the first
//!   instant of its schedule in its life;
//! - some node was **working and stayed working** from at or before `t` until at least
//!   [`SETTLE_MS`] after `t` (observed from the nodes' own lifecycle events; a process that
//!   crashes ends its stretch). That is invariant 2's "at least one working node could reach
//!   the registry": partitions shorter than the TTL do not end a stretch, longer ones make the
//!   node `lost` and do. Such a node, if it does not own the task, takes it over with catch-up
//!   when the owner dies, and catch-up never looks before the node became working;
//! - `t` is at least [`SETTLE_MS`] before the end of the run (every fault is healed
//!   `settle_ms` before the end).
//!
//! An expected fire with no execution is **lost in flight** when every claim the registry
//! granted for it went to a process that **ended before it could start the fire**: it
//! crashed, its driver failed on purpose ([`super::Fault::PanicNode`]), or it was asked to stop
//! while cut off from the registry (it cannot learn, within its grace period, that a claim it
//! sent was applied). This is the
//! at-most-once edge of the design (a claim is the right to run, and nobody else may run a
//! claimed fire); it is reported separately and is not a violation. A winner whose reply was
//! lost retries as the same claimant and is answered `WonEarlier`, so a lost reply never
//! excuses a fire. Every other expected fire with no execution is **missed**: a violation.
//!
//! An execution is **unexpected** (invariant 5) when its instant is not an occurrence of the
//! task's schedule, precedes the task's first life (a static task's instants before the run
//! started, a dynamic task's before it was added), belongs to an ended life (older than the
//! next life's start minus the largest clock skew) but started more than [`REPLAY_SLACK_MS`]
//! after the next life began (a replay of a previous life), is a
//! second instant of a one-shot, or is of a task the run never defined (the hostile record).
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
use super::plan::{SimParams, DYNAMIC_TASKS, ONE_SHOT_TASKS, STATIC_TASKS};
use crate::ledger::{Duplicate, Execution};

/// How long a node must stay working after an instant for the fire to be expected, and how
/// long before a deletion or the end of the run an instant must be: detection of a dead owner
/// (TTL) plus a poll plus claim retries, with room to spare.
pub const SETTLE_MS: u64 = 15_000;

/// How long after a new life began a fire of the previous life may still start (its claim was
/// answered before the life changed, its reply delayed by latency).
pub const REPLAY_SLACK_MS: u64 = 2_000;

/// A lifecycle state a simulated process entered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LifeEvent {
    /// The process (`n2`, `n2.1`, …).
    pub label: String,
    /// The state (`starting`, `working`, `lost`, `leaving`, `stopped`, `failed`, or
    /// `crashed`).
    pub state: String,
    /// When, in virtual milliseconds since the start.
    pub at_ms: u64,
}

/// What happened to a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskChange {
    /// Stored in the registry (a new life).
    Added,
    /// Marked deleted.
    Deleted,
    /// Reused after a deletion (a new life).
    Revived,
    /// A new life started over a live or deleted one: a force-write, or a static task's
    /// cleanup.
    NewLife,
}

/// A task change applied by the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskEvent {
    /// The task name.
    pub task: String,
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
    /// Task changes, in order.
    pub task_events: Vec<TaskEvent>,
    /// Processes that ended before the end of the run unable to finish their claims in flight:
    /// crashed, failed, or asked to stop while cut off from the registry (partitioned, losing
    /// replies or calls, frozen).
    pub crashed: BTreeSet<String>,
    /// Claims the registry granted.
    pub claims: ClaimLog,
    /// Freezes injected.
    pub freezes: usize,
    /// The processes still running at the end (not crashed, not left).
    pub final_nodes: Vec<FinalNode>,
    /// The node records in the registry at the end: `(process, status)`.
    pub registered: Vec<(String, String)>,
    /// Runs of [`super::plan::OVERLAP_TASK`]: `(process, start, end)` in virtual milliseconds.
    pub overlap_runs: Vec<(String, u64, u64)>,
    /// Leases expired from outside (an operator's revoke): `(process, virtual ms)`.
    pub revocations: Vec<(String, u64)>,
    /// Freezes: `(process, from, to)` in virtual milliseconds.
    pub frozen: Vec<(String, u64, u64)>,
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
    /// Executions that should not have happened at all (invariant 5).
    pub unexpected: Vec<Execution>,
    /// Expected fires that never ran because their claim's winner ended before starting them.
    pub lost_in_flight: Vec<FireKey>,
    /// Expected fires that never ran because every process granted their claim was frozen
    /// from before the fire's instant until after its deadline (a won claim is the only
    /// right to run it; the winner drops it, past its deadline, when it thaws).
    pub frozen_in_flight: Vec<FireKey>,
    /// Scheduled instants not expected because no node was working throughout.
    pub excused: usize,
    /// Replies lost after the registry had acted (claims included).
    pub lost_replies: u64,
    /// Freezes injected.
    pub freezes: usize,
    /// Runs of the `Skip` task on different processes that overlapped in time.
    pub overlaps: usize,
    /// Overlaps excused because the earlier run's lease was revoked from outside after it
    /// started and before the later run started, and the earlier run ended within a TTL of
    /// the revocation (its node learns of it at its next keep-alive and cancels the run; no
    /// lease-based lock can stop a holder sooner).
    pub overlaps_after_revocation: usize,
    /// Runs of the `Skip` task.
    pub overlap_runs: usize,
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

fn ms_of(base: DateTime<Utc>, t: DateTime<Utc>) -> i64 {
    (t - base).num_milliseconds()
}

fn schedule_of(task: &str) -> Option<Schedule> {
    STATIC_TASKS
        .iter()
        .chain(DYNAMIC_TASKS.iter())
        .chain(ONE_SHOT_TASKS.iter())
        .find(|(n, _)| *n == task)
        .and_then(|(_, expr)| Schedule::parse(expr, None, SecondsField::Optional).ok())
}

/// Intervals of virtual milliseconds.
type Spans = Vec<(u64, u64)>;

/// What the changes of one task mean for the checker.
#[derive(Debug, Default)]
struct TaskLives {
    /// `[from, to]` during which its fires are expected.
    live: Spans,
    /// `(deleted_at, revived_at)` during which it must not run.
    dead: Spans,
    /// When each life began, in order (the first: when the task came to exist).
    starts: Vec<u64>,
}

/// The lives of a task from its changes. A static task has a life from 0; after a cleanup its
/// new life starts when a node registers the name again, so fires are expected only from
/// [`SETTLE_MS`] after it, and not before the live-since the registry gave that life
/// (`recorded`: the live-since of every life answered, by generation, as virtual ms).
fn lives_of(
    events: &[TaskEvent],
    task: &str,
    is_static: bool,
    skew_ms: u64,
    end_ms: u64,
    recorded: &[(u64, u64)],
) -> TaskLives {
    let lead = skew_ms + 1_000;
    let mut out = TaskLives::default();
    let mut live_from: Option<u64> = None;
    let mut dead_from: Option<u64> = None;
    if is_static {
        out.starts.push(0);
        live_from = Some(0);
    }
    for e in events.iter().filter(|e| e.task == task) {
        match e.change {
            TaskChange::Added | TaskChange::Revived | TaskChange::NewLife => {
                if let Some(from) = live_from.take() {
                    out.live.push((from, e.at_ms.saturating_sub(SETTLE_MS)));
                }
                if let Some(d) = dead_from.take() {
                    out.dead.push((d, e.at_ms));
                }
                out.starts.push(e.at_ms);
                let delay = if is_static { SETTLE_MS } else { lead };
                let mut from = e.at_ms + delay;
                if is_static && e.change == TaskChange::NewLife {
                    // The first life answered after the cleanup (lives answered before it
                    // started earlier than it, less the skew of the node that started them).
                    let next = recorded
                        .iter()
                        .filter(|(_, since)| *since + skew_ms >= e.at_ms)
                        .min_by_key(|(generation, _)| *generation);
                    if let Some((_, since)) = next {
                        from = from.max(*since);
                    }
                }
                live_from = Some(from);
            }
            TaskChange::Deleted => {
                if let Some(from) = live_from.take() {
                    out.live.push((from, e.at_ms.saturating_sub(SETTLE_MS)));
                }
                dead_from = Some(e.at_ms);
            }
        }
    }
    if let Some(from) = live_from {
        out.live.push((from, end_ms));
    }
    if let Some(d) = dead_from {
        out.dead.push((d, u64::MAX));
    }
    out
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

/// Why an execution is unexpected, if it is (invariant 5).
fn unexpected_reason(
    record: &RunRecord,
    lives: &BTreeMap<String, TaskLives>,
    e: &Execution,
) -> Option<String> {
    let Some(schedule) = schedule_of(&e.fire.task) else {
        return Some("a task the run never defined".into());
    };
    let previous = e.fire.instant - chrono::Duration::milliseconds(1);
    if schedule.next_after(previous) != Some(e.fire.instant) {
        return Some("not an occurrence of the schedule".into());
    }
    let instant_ms = ms_of(record.base, e.fire.instant);
    let started_ms = ms_of(record.base, e.started_at);
    let task_lives = lives.get(&e.fire.task)?;
    let Some(first) = task_lives.starts.first() else {
        return Some("the task was never added".into());
    };
    if instant_ms < *first as i64 {
        return Some(format!("before the task existed (+{first}ms)"));
    }
    // A new life starts at the clock of the node that starts it, which may be up to the
    // largest skew behind: only instants older than that are surely of the previous life.
    let skew = record.params.max_skew_ms.unsigned_abs() as i64;
    for later in task_lives.starts.iter().skip(1) {
        let later = *later as i64;
        if instant_ms < later - skew - 1_000 && started_ms > later + REPLAY_SLACK_MS as i64 {
            return Some(format!(
                "a fire of an ended life, started {}ms after the next life began",
                started_ms - later
            ));
        }
    }
    if ONE_SHOT_TASKS.iter().any(|(n, _)| *n == e.fire.task) {
        let first_fire =
            schedule.next_after(at(record.base, *first) - chrono::Duration::milliseconds(1));
        if first_fire != Some(e.fire.instant) {
            return Some("a one-shot's second instant".into());
        }
    }
    None
}

/// Checks one run's record against the invariants.
pub fn check_run(record: &RunRecord) -> Verdict {
    let mut v = Verdict {
        executions: record.executions.len(),
        lost_replies: record.claims.lost_replies(),
        freezes: record.freezes,
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
    let mut lives: BTreeMap<String, TaskLives> = BTreeMap::new();
    let recorded = |name: &str| -> Vec<(u64, u64)> {
        record
            .claims
            .lives_of(name)
            .into_iter()
            .map(|(g, since)| (g, ms_of(record.base, since).max(0) as u64))
            .collect()
    };
    for (name, _) in STATIC_TASKS.iter().chain(ONE_SHOT_TASKS.iter()) {
        lives.insert(
            name.to_string(),
            lives_of(
                &record.task_events,
                name,
                true,
                skew_ms,
                record.end_ms,
                &recorded(name),
            ),
        );
    }
    for (name, _) in DYNAMIC_TASKS {
        lives.insert(
            name.to_string(),
            lives_of(
                &record.task_events,
                name,
                false,
                skew_ms,
                record.end_ms,
                &recorded(name),
            ),
        );
    }

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
    }
    for e in &record.executions {
        if let Some(reason) = unexpected_reason(record, &lives, e) {
            v.violations.push(format!(
                "invariant 5: unexpected execution of {} on {}: {reason}",
                e.fire, e.node
            ));
            v.unexpected.push(e.clone());
        }
    }

    // Expected fires.
    let mut expected: BTreeSet<FireKey> = BTreeSet::new();
    let mut scheduled = 0usize;
    let mut add_instants =
        |task: &str, instants: Vec<DateTime<Utc>>, expected: &mut BTreeSet<FireKey>| {
            for instant in instants {
                let ms = ms_of(record.base, instant).max(0) as u64;
                if ms > last {
                    continue;
                }
                scheduled += 1;
                if covered(ms) {
                    expected.insert(FireKey::new(task, instant));
                }
            }
        };
    for (name, task_lives) in &lives {
        let Some(s) = schedule_of(name) else {
            continue;
        };
        if ONE_SHOT_TASKS.iter().any(|(n, _)| n == name) {
            // One fire in its life: the first instant of the schedule from its start.
            let first = task_lives.starts.first().copied().unwrap_or(0);
            let one = s.next_after(at(record.base, first) - chrono::Duration::milliseconds(1));
            add_instants(name, one.into_iter().collect(), &mut expected);
            continue;
        }
        for (from, to) in &task_lives.live {
            let to = (*to).min(last);
            if to <= *from {
                continue;
            }
            let from_t = at(record.base, *from) - chrono::Duration::milliseconds(1);
            let instants = s.occurrences_in(from_t, at(record.base, to), 1_000_000);
            add_instants(name, instants, &mut expected);
        }
        // Invariant 4: nothing runs while deleted, past the deletion plus the skew.
        for (deleted, revived) in &task_lives.dead {
            let limit = at(record.base, deleted + skew_ms + 500);
            let revived_at = at(record.base, (*revived).min(record.end_ms + 1));
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
        let excusable =
            !grants.is_empty() && grants.iter().all(|g| record.crashed.contains(&g.node));
        let instant_ms = ms_of(record.base, fire.instant).max(0) as u64;
        let frozen_through = |node: &str| {
            record.frozen.iter().any(|(n, from, to)| {
                n == node
                    && *from <= instant_ms + skew_ms
                    && *to >= (instant_ms + p.window_ms).saturating_sub(skew_ms)
            })
        };
        let frozen = !grants.is_empty() && grants.iter().all(|g| frozen_through(&g.node));
        if excusable {
            v.lost_in_flight.push(fire.clone());
        } else if frozen {
            v.frozen_in_flight.push(fire.clone());
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
    let mut live_tasks: BTreeSet<String> = STATIC_TASKS
        .iter()
        .map(|(n, _)| n.to_string())
        .chain(std::iter::once(super::plan::OVERLAP_TASK.0.to_string()))
        .collect();
    for (name, _) in DYNAMIC_TASKS {
        let mut state = None;
        for e in record.task_events.iter().filter(|e| e.task == name) {
            state = Some(e.change);
        }
        if matches!(
            state,
            Some(TaskChange::Added | TaskChange::Revived | TaskChange::NewLife)
        ) {
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
        // A one-shot may stay owned until its tombstone is seen; nothing else dead may.
        let one_shot = ONE_SHOT_TASKS.iter().any(|(n, _)| n == t);
        if !live_tasks.contains(*t) && !one_shot {
            v.violations
                .push(format!("invariant 3: deleted task {t} is owned by {o:?}"));
        }
    }
    // A process that ended (crashed, failed, left) is not registered at the end.
    let running: BTreeSet<&str> = record
        .final_nodes
        .iter()
        .map(|n| n.label.as_str())
        .collect();
    for (label, status) in &record.registered {
        if !running.contains(label.as_str()) {
            v.violations.push(format!(
                "invariant 3: {label} ended but is still registered (`{status}`)"
            ));
        }
    }
    // Invariant 6: a task whose overlap policy is `Skip` never runs on two processes at once.
    let runs = &record.overlap_runs;
    v.overlap_runs = runs.len();
    let revoked_between = |node: &str, first_start: u64, first_end: u64, second_start: u64| {
        record.revocations.iter().any(|(n, at)| {
            n == node
                && first_start <= *at
                && *at <= second_start
                && first_end <= at.saturating_add(p.ttl_ms)
        })
    };
    for (i, (n1, s1, e1)) in runs.iter().enumerate() {
        for (n2, s2, e2) in &runs[i + 1..] {
            if n1 != n2 && s1 < e2 && s2 < e1 {
                let excused = if s1 <= s2 {
                    revoked_between(n1, *s1, *e1, *s2)
                } else {
                    revoked_between(n2, *s2, *e2, *s1)
                };
                if excused {
                    v.overlaps_after_revocation += 1;
                    continue;
                }
                v.overlaps += 1;
                v.violations.push(format!(
                    "invariant 6: {} ran on {n1} ({s1}–{e1} ms) and {n2} ({s2}–{e2} ms) at once",
                    super::plan::OVERLAP_TASK.0
                ));
            }
        }
    }
    v
}
