//! The simulator itself: runs are a function of the seed, and the checker fails when the
//! registry lets every claim win.

use dcron_testkit::sim::{run_seed, FaultPlan, SimOptions, SimParams};

fn short() -> SimParams {
    SimParams {
        fault_ms: 60_000,
        ..SimParams::default()
    }
}

fn opts(seed: u64, broken_claims: bool) -> SimOptions {
    SimOptions {
        seed,
        params: short(),
        broken_claims,
        journal: false,
    }
}

#[test]
fn the_same_seed_replays_the_same_run() {
    for seed in [3, 11] {
        let a = run_seed(&opts(seed, false)).expect("run");
        let b = run_seed(&opts(seed, false)).expect("run");
        assert_eq!(a.plan, b.plan);
        assert!(a.verdict.executions > 0, "the run executed nothing");
        assert_eq!(a.digest, b.digest, "seed {seed}: executions differ");
        assert_eq!(a.verdict.executions, b.verdict.executions);
        assert_eq!(a.verdict.expected, b.verdict.expected);
        assert_eq!(a.verdict.missed, b.verdict.missed);
        assert_eq!(a.verdict.lost_in_flight, b.verdict.lost_in_flight);
        assert_eq!(a.verdict.violations, b.verdict.violations);
        assert_eq!(a.processes, b.processes);
    }
    let other = run_seed(&opts(4, false)).expect("run");
    let first = run_seed(&opts(3, false)).expect("run");
    assert_ne!(first.plan, other.plan);
    assert_ne!(first.digest, other.digest);
}

#[test]
fn a_registry_letting_every_claim_win_is_caught() {
    let mut caught = 0;
    for seed in 0..3 {
        let o = run_seed(&opts(seed, true)).expect("run");
        assert!(
            !o.verdict.duplicates.is_empty(),
            "seed {seed}: broken claims produced no duplicate"
        );
        assert!(!o.verdict.is_clean());
        assert!(o
            .verdict
            .violations
            .iter()
            .any(|v| v.starts_with("invariant 1")));
        assert!(o.replay_command(true).ends_with("--broken-claims"));
        caught += 1;
    }
    assert_eq!(caught, 3);
}

#[test]
fn a_correct_registry_never_runs_a_fire_twice() {
    let mut executions = 0;
    for seed in 100..106 {
        let o = run_seed(&opts(seed, false)).expect("run");
        assert!(
            o.verdict.duplicates.is_empty(),
            "seed {seed}: {:?}\n{}",
            o.verdict.duplicates,
            o.plan
        );
        assert!(
            o.verdict.expected > 0 && o.verdict.executed_expected > 0,
            "seed {seed}: nothing expected or executed"
        );
        executions += o.verdict.executions;
    }
    assert!(executions > 1000, "only {executions} executions");
}

#[test]
fn plans_print_every_step() {
    let plan = FaultPlan::generate(9, &short());
    let text = plan.to_string();
    assert!(text.starts_with("seed 9:"));
    assert_eq!(text.lines().count(), plan.steps.len() + 1);
}
