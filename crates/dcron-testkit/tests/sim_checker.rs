//! The invariant checker on hand-made run records: each invariant can fail.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use dcron_core::FireKey;
use dcron_testkit::ledger::Execution;
use dcron_testkit::sim::{
    check_run, ClaimLog, FinalNode, GrantedClaim, LifeEvent, RunRecord, SimParams, TaskChange,
    TaskEvent, BASE, DYNAMIC_TASKS, ONE_SHOT_TASKS, OVERLAP_TASK, SETTLE_MS, STATIC_TASKS,
};

const END_MS: u64 = 60_000;

fn base() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(BASE)
        .expect("BASE parses")
        .with_timezone(&Utc)
}

fn at(ms: u64) -> DateTime<Utc> {
    base() + chrono::Duration::milliseconds(ms as i64)
}

/// A run where one node works throughout and runs every second of `s-every-1s` up to the end.
fn clean() -> RunRecord {
    let executions = (0..=60)
        .map(|s| Execution {
            fire: FireKey::new(STATIC_TASKS[0].0, at(s * 1000)),
            node: "n0".into(),
            token: s + 1,
            started_at: at(s * 1000),
        })
        .collect();
    RunRecord {
        params: SimParams::default(),
        base: base(),
        end_ms: END_MS,
        executions,
        lifecycle: vec![LifeEvent {
            label: "n0".into(),
            state: "working".into(),
            at_ms: 0,
        }],
        task_events: Vec::new(),
        crashed: BTreeSet::new(),
        claims: ClaimLog::new(),
        freezes: 0,
        final_nodes: vec![FinalNode {
            label: "n0".into(),
            state: "working".into(),
            owned: STATIC_TASKS
                .iter()
                .map(|(n, _)| n.to_string())
                .chain(std::iter::once(OVERLAP_TASK.0.to_string()))
                .collect(),
        }],
        registered: vec![("n0".into(), "working".into())],
        overlap_runs: vec![("n0".into(), 0, 5_000), ("n0".into(), 6_000, 11_000)],
        revocations: Vec::new(),
        frozen: Vec::new(),
    }
}

/// The missed fires of one task (the other static tasks never ran in `clean()`).
fn missed_of(record: &RunRecord, task: &str) -> Vec<FireKey> {
    check_run(record)
        .missed
        .into_iter()
        .filter(|f| f.task == task)
        .collect()
}

#[test]
fn every_second_ran_once_and_nothing_of_it_is_missed() {
    let v = check_run(&clean());
    assert!(v.duplicates.is_empty());
    assert!(missed_of(&clean(), "s-every-1s").is_empty());
    // Fires up to 15 s before the end are expected: 0..=45 s.
    assert!(v.expected >= 46);
    // The other static tasks never ran: the checker reports them.
    assert!(!v.missed.is_empty());
    assert!(!v.is_clean());
}

#[test]
fn a_second_execution_is_a_duplicate() {
    let mut r = clean();
    r.executions.push(Execution {
        fire: FireKey::new("s-every-1s", at(7000)),
        node: "n1".into(),
        token: 99,
        started_at: at(7100),
    });
    let v = check_run(&r);
    assert_eq!(v.duplicates.len(), 1);
    assert!(v.violations.iter().any(|l| l.starts_with("invariant 1")));
}

#[test]
fn a_missing_execution_is_a_miss_unless_its_winner_could_not_run_it() {
    let mut r = clean();
    r.executions.retain(|e| e.fire.instant != at(9000));
    let fire = FireKey::new("s-every-1s", at(9000));
    assert_eq!(missed_of(&r, "s-every-1s"), vec![fire.clone()]);
    // Granted to a live node that heard of it: still a miss.
    let heard = r.clone();
    heard.claims.grant(
        fire.clone(),
        GrantedClaim {
            node: "n0".into(),
            token: 5,
            delivered: true,
        },
    );
    assert_eq!(missed_of(&heard, "s-every-1s"), vec![fire.clone()]);
    // Granted, but the reply was lost: the winner retries as the same claimant and learns
    // it won, so this excuses nothing: still a miss.
    let mut lost = r.clone();
    lost.claims = ClaimLog::new();
    lost.claims.grant(
        fire.clone(),
        GrantedClaim {
            node: "n0".into(),
            token: 5,
            delivered: false,
        },
    );
    assert_eq!(missed_of(&lost, "s-every-1s"), vec![fire.clone()]);
    assert!(check_run(&lost).lost_in_flight.is_empty());
    // Granted to a node that crashed: lost in flight too.
    let mut crashed = r.clone();
    crashed.claims = ClaimLog::new();
    crashed.claims.grant(
        fire.clone(),
        GrantedClaim {
            node: "n1".into(),
            token: 6,
            delivered: true,
        },
    );
    crashed.crashed.insert("n1".into());
    assert!(missed_of(&crashed, "s-every-1s").is_empty());
    assert_eq!(check_run(&crashed).lost_in_flight, vec![fire.clone()]);
    // No node working around the instant: excused.
    let mut idle = r.clone();
    idle.lifecycle.push(LifeEvent {
        label: "n0".into(),
        state: "lost".into(),
        at_ms: 8_000,
    });
    idle.lifecycle.push(LifeEvent {
        label: "n0".into(),
        state: "working".into(),
        at_ms: 20_000,
    });
    assert!(missed_of(&idle, "s-every-1s").is_empty());
}

#[test]
fn a_fire_run_while_deleted_is_a_violation() {
    let mut r = clean();
    let (name, _) = DYNAMIC_TASKS[0];
    r.task_events = vec![
        TaskEvent {
            task: name.into(),
            change: TaskChange::Added,
            at_ms: 1_000,
        },
        TaskEvent {
            task: name.into(),
            change: TaskChange::Deleted,
            at_ms: 20_000,
        },
    ];
    r.executions.push(Execution {
        fire: FireKey::new(name, at(40_000)),
        node: "n0".into(),
        token: 500,
        started_at: at(40_000),
    });
    let v = check_run(&r);
    assert!(
        v.violations.iter().any(|l| l.starts_with("invariant 4")),
        "{v:?}"
    );
}

#[test]
fn two_owners_or_a_node_not_working_at_the_end_is_a_violation() {
    let mut r = clean();
    r.final_nodes.push(FinalNode {
        label: "n1".into(),
        state: "lost".into(),
        owned: vec!["s-every-2s".into()],
    });
    let v = check_run(&r);
    let three: Vec<&String> = v
        .violations
        .iter()
        .filter(|l| l.starts_with("invariant 3"))
        .collect();
    assert_eq!(three.len(), 2, "{three:?}");
}

#[test]
fn an_execution_off_the_schedule_is_a_violation() {
    let mut r = clean();
    r.executions.push(Execution {
        fire: FireKey::new("s-every-2s", at(3_000)),
        node: "n0".into(),
        token: 77,
        started_at: at(3_000),
    });
    let v = check_run(&r);
    assert!(v.violations.iter().any(|l| l.contains("not an occurrence")));
}

fn unexpected_with(r: &RunRecord, extra: Execution) -> Vec<String> {
    let mut r = r.clone();
    r.executions.push(extra);
    check_run(&r)
        .violations
        .into_iter()
        .filter(|l| l.starts_with("invariant 5"))
        .collect()
}

fn run(task: &str, instant_ms: i64, started_ms: i64) -> Execution {
    Execution {
        fire: FireKey::new(task, base() + chrono::Duration::milliseconds(instant_ms)),
        node: "n0".into(),
        token: 1_000,
        started_at: base() + chrono::Duration::milliseconds(started_ms),
    }
}

#[test]
fn a_static_fire_from_before_the_run_is_unexpected() {
    let r = clean();
    assert!(check_run(&r).unexpected.is_empty());
    // s-every-2s at -2 s: an instant before the task existed (the old catch-up bug).
    let v = unexpected_with(&r, run("s-every-2s", -2_000, 500));
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].contains("before the task existed"), "{v:?}");
}

#[test]
fn a_dynamic_fire_from_before_it_was_added_is_unexpected() {
    let mut r = clean();
    let (name, _) = DYNAMIC_TASKS[0];
    r.task_events = vec![TaskEvent {
        task: name.into(),
        change: TaskChange::Added,
        at_ms: 10_000,
    }];
    assert!(unexpected_with(&r, run(name, 12_000, 12_000)).is_empty());
    assert_eq!(unexpected_with(&r, run(name, 8_000, 10_500)).len(), 1);
}

#[test]
fn a_replay_of_an_ended_life_is_unexpected() {
    let mut r = clean();
    r.task_events = vec![TaskEvent {
        task: "s-every-2s".into(),
        change: TaskChange::NewLife,
        at_ms: 30_000,
    }];
    // An instant of the old life started well after the new life began.
    let v = unexpected_with(&r, run("s-every-2s", 20_000, 33_000));
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].contains("ended life"), "{v:?}");
    // Near the change (a clock skew away) it may belong to either life.
    assert!(unexpected_with(&r, run("s-every-2s", 28_000, 33_000)).is_empty());
    // Started in time: fine.
    assert!(unexpected_with(&r, run("s-every-2s", 20_000, 20_100)).is_empty());
}

#[test]
fn a_one_shot_runs_its_first_instant_only() {
    let r = clean();
    let (name, _) = ONE_SHOT_TASKS[0];
    // */7: its first instant from the start of the run is 00:00:00 itself.
    assert!(unexpected_with(&r, run(name, 0, 10)).is_empty());
    let v = unexpected_with(&r, run(name, 7_000, 7_010));
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].contains("one-shot"), "{v:?}");
}

#[test]
fn a_task_nobody_defined_is_unexpected() {
    let v = unexpected_with(&clean(), run("d-hostile", 1_000, 1_000));
    assert_eq!(v.len(), 1, "{v:?}");
}

#[test]
fn an_ended_process_still_registered_is_a_violation() {
    let mut r = clean();
    r.registered.push(("n7".into(), "working".into()));
    let v = check_run(&r);
    assert!(
        v.violations.iter().any(|l| l.contains("n7 ended")),
        "{:?}",
        v.violations
    );
}

#[test]
fn overlapping_skip_runs_on_two_processes_are_violations() {
    assert_eq!(check_run(&clean()).overlaps, 0);
    let mut r = clean();
    // Back to back on two processes: fine.
    r.overlap_runs.push(("n1".into(), 11_000, 16_000));
    let v = check_run(&r);
    assert_eq!(v.overlaps, 0, "{:?}", v.violations);
    // One millisecond of overlap is one violation.
    r.overlap_runs.push(("n2".into(), 15_999, 20_000));
    let v = check_run(&r);
    assert_eq!(v.overlaps, 1, "{:?}", v.violations);
    assert!(
        v.violations.iter().any(|l| l.contains("invariant 6")),
        "{:?}",
        v.violations
    );
}

#[test]
fn an_overlap_after_a_revoked_lease_is_excused_only_within_a_ttl() {
    let ttl = SimParams::default().ttl_ms;
    let mut r = clean();
    r.overlap_runs = vec![("n0".into(), 0, 3_000), ("n1".into(), 2_000, 7_000)];
    assert_eq!(check_run(&r).overlaps, 1, "no revocation: a violation");
    // n0's lease revoked at 1.5 s, after its run started and before n1's: excused, counted.
    r.revocations = vec![("n0".into(), 1_500)];
    let v = check_run(&r);
    assert_eq!(
        (v.overlaps, v.overlaps_after_revocation),
        (0, 1),
        "{:?}",
        v.violations
    );
    // The revoked run went on longer than a TTL after the revocation: a violation.
    r.overlap_runs[0].2 = 1_500 + ttl + 1;
    r.overlap_runs[1].2 = 1_500 + ttl + 5_000;
    let v = check_run(&r);
    assert_eq!(v.overlaps, 1, "{:?}", v.violations);
    // A revocation of the other node, or one after the later run started, excuses nothing.
    r.overlap_runs = vec![("n0".into(), 0, 3_000), ("n1".into(), 2_000, 7_000)];
    r.revocations = vec![("n1".into(), 1_500), ("n0".into(), 2_500)];
    assert_eq!(check_run(&r).overlaps, 1);
}

#[test]
fn a_fire_won_by_a_node_frozen_through_its_deadline_is_frozen_in_flight_and_nothing_else() {
    let p = SimParams::default();
    let mut r = clean();
    r.executions.retain(|e| e.started_at != at(30_000));
    let fire = FireKey::new(STATIC_TASKS[0].0, at(30_000));
    r.claims.grant(
        fire.clone(),
        GrantedClaim {
            node: "n0".into(),
            token: 31,
            delivered: false,
        },
    );
    // Frozen from before the instant until past its deadline: excused as frozen in flight.
    let mut frozen = r.clone();
    frozen.frozen = vec![("n0".into(), 29_900, 30_000 + p.window_ms + 1_000)];
    assert!(missed_of(&frozen, "s-every-1s").is_empty());
    assert_eq!(check_run(&frozen).frozen_in_flight, vec![fire.clone()]);
    // Thawed well before the deadline: the winner could have run it, a miss.
    let mut short = r.clone();
    short.frozen = vec![("n0".into(), 29_900, 31_000)];
    assert_eq!(missed_of(&short, "s-every-1s"), vec![fire.clone()]);
    assert!(check_run(&short).frozen_in_flight.is_empty());
    // Frozen only after the instant had long passed: a miss.
    let mut late = r.clone();
    late.frozen = vec![("n0".into(), 30_000 + p.max_skew_ms as u64 + 1_000, 200_000)];
    assert_eq!(missed_of(&late, "s-every-1s"), vec![fire.clone()]);
    // Another node was frozen, not the winner: a miss.
    let mut other = r.clone();
    other.frozen = vec![("n1".into(), 29_900, 200_000)];
    assert_eq!(missed_of(&other, "s-every-1s"), vec![fire]);
}

#[test]
fn a_static_task_cleaned_up_is_expected_again_from_its_new_life_only() {
    let name = STATIC_TASKS[0].0;
    let mut r = clean();
    r.task_events = vec![TaskEvent {
        task: name.into(),
        change: TaskChange::NewLife,
        at_ms: 5_000,
    }];
    // Nothing ran after the cleanup.
    r.executions.retain(|e| e.started_at < at(5_000));
    // The registry gave the new life a live-since of 40 s (its first node came late).
    r.claims.record_lives(
        &[(name.to_string(), at(39_000))],
        &[dcron_core::Life::new(7, at(40_000))],
    );
    let missed = missed_of(&r, name);
    assert!(
        missed.iter().all(|f| f.instant >= at(40_000)),
        "nothing before the new life is expected: {missed:?}"
    );
    assert!(
        missed.contains(&FireKey::new(name, at(40_000))),
        "the new life's fires are: {missed:?}"
    );
    // Without the recorded life, the settle period alone decides (from 5 s + SETTLE_MS).
    let mut unknown = r.clone();
    unknown.claims = ClaimLog::new();
    let missed = missed_of(&unknown, name);
    assert!(
        missed.contains(&FireKey::new(name, at(5_000 + SETTLE_MS))),
        "{missed:?}"
    );
}
