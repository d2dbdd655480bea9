//! Measures every built-in strategy on 100k tasks over 10 members (weight 1).
//!
//! ```text
//! cargo run --release -p dcron-assign --example quality
//! ```
//!
//! One line per strategy:
//! - `balance`: tasks of the busiest member / mean tasks per member (1.000 is perfect);
//! - `join_moved`: fraction of tasks whose owner changes when an 11th member joins;
//! - `leave_moved`: fraction of tasks whose owner changes when one of the 10 leaves;
//! - `ideal_join` / `ideal_leave`: the least any strategy can move (1/11 and 1/10);
//! - `assign_ms`: time to prepare the placement for 10 members and assign all the tasks
//!   (best of 3 runs).

use std::time::{Duration, Instant};

use dcron_assign::{Assignment, Member, Strategy};

const TASKS: usize = 100_000;
const MEMBERS: usize = 10;

fn members(count: usize) -> Vec<Member> {
    (0..count)
        .map(|i| Member::new(format!("node-{i:02}"), 1))
        .collect()
}

fn moved(before: &Assignment, after: &Assignment) -> f64 {
    let changed = before
        .iter()
        .filter(|(task, owner)| after.owner_of(task) != *owner)
        .count();
    changed as f64 / before.len() as f64
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let names: Vec<String> = (0..TASKS).map(|i| format!("task-{i:06}")).collect();
    let tasks: Vec<&str> = names.iter().map(String::as_str).collect();
    let base = members(MEMBERS);
    let joined = members(MEMBERS + 1); // adds node-10
    let left = members(MEMBERS - 1); // removes node-09

    for &strategy in Strategy::all() {
        let assigner = strategy.assigner();
        let mut best = Duration::MAX;
        let mut assignment = None;
        for _ in 0..3 {
            let start = Instant::now();
            let placement = assigner.prepare(&base)?;
            let result = placement.assign(&tasks);
            best = best.min(start.elapsed());
            assignment = Some(result);
        }
        let assignment = assignment.ok_or("no run")?;
        let max = base
            .iter()
            .map(|m| assignment.count_of(&m.id))
            .max()
            .unwrap_or(0);
        let balance = max as f64 / (TASKS as f64 / MEMBERS as f64);
        let after_join = assigner.prepare(&joined)?.assign(&tasks);
        let after_leave = assigner.prepare(&left)?.assign(&tasks);
        println!(
            "strategy={} balance={:.3} join_moved={:.4} leave_moved={:.4} ideal_join={:.4} \
             ideal_leave={:.4} assign_ms={:.1}",
            assigner.name(),
            balance,
            moved(&assignment, &after_join),
            moved(&assignment, &after_leave),
            1.0 / (MEMBERS + 1) as f64,
            1.0 / MEMBERS as f64,
            best.as_secs_f64() * 1000.0,
        );
    }
    Ok(())
}
