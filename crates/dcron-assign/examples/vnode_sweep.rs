//! Sweeps the virtual-node count of consistent hashing, to choose its default by measurement.
//!
//! ```text
//! cargo run --release -p dcron-assign --example vnode_sweep [-- 16 64 256 1024]
//! ```
//!
//! For each count, 100k tasks over 10 members (weight 1) are assigned for several clusters
//! whose member ids differ (`<cluster>-node-NN`), so that the figures do not hang on one lucky
//! set of names. Printed per count: mean and worst `balance` (busiest / mean), worst ratio of
//! moved tasks to the ideal on a join (10 → 11) and on a leave (10 → 9, every member in turn),
//! and the time to prepare the ring.

use std::time::Instant;

use dcron_assign::{Assigner, Assignment, ConsistentHash, Member};

const TASKS: usize = 100_000;
const MEMBERS: usize = 10;
const CLUSTERS: usize = 8;

fn moved(before: &Assignment, after: &Assignment) -> f64 {
    let changed = before
        .iter()
        .filter(|(task, owner)| after.owner_of(task) != *owner)
        .count();
    changed as f64 / before.len() as f64
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<u32> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let counts = if args.is_empty() {
        vec![16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
    } else {
        args
    };
    let names: Vec<String> = (0..TASKS).map(|i| format!("task-{i:06}")).collect();
    let tasks: Vec<&str> = names.iter().map(String::as_str).collect();

    for vnodes in counts {
        let assigner = ConsistentHash::new(vnodes);
        let mut balances = Vec::new();
        let mut worst_join: f64 = 0.0;
        let mut worst_leave: f64 = 0.0;
        let mut prepare_ms: f64 = 0.0;
        for cluster in 0..CLUSTERS {
            let members: Vec<Member> = (0..=MEMBERS)
                .map(|i| Member::new(format!("c{cluster}-node-{i:02}"), 1))
                .collect();
            let base = &members[..MEMBERS];
            let start = Instant::now();
            let placement = assigner.prepare(base)?;
            prepare_ms = prepare_ms.max(start.elapsed().as_secs_f64() * 1000.0);
            let assignment = placement.assign(&tasks);
            let max = base
                .iter()
                .map(|m| assignment.count_of(&m.id))
                .max()
                .unwrap_or(0);
            balances.push(max as f64 / (TASKS as f64 / MEMBERS as f64));

            let joined = assigner.prepare(&members)?.assign(&tasks);
            worst_join = worst_join.max(moved(&assignment, &joined) * (MEMBERS + 1) as f64);
            for leaving in 0..MEMBERS {
                let rest: Vec<Member> = base
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != leaving)
                    .map(|(_, m)| m.clone())
                    .collect();
                let after = assigner.prepare(&rest)?.assign(&tasks);
                worst_leave = worst_leave.max(moved(&assignment, &after) * MEMBERS as f64);
            }
        }
        let mean_balance = balances.iter().sum::<f64>() / balances.len() as f64;
        let worst_balance = balances.iter().cloned().fold(0.0, f64::max);
        println!(
            "vnodes={vnodes} mean_balance={mean_balance:.3} worst_balance={worst_balance:.3} \
             worst_join_vs_ideal={worst_join:.3} worst_leave_vs_ideal={worst_leave:.3} \
             prepare_ms={prepare_ms:.2}"
        );
    }
    Ok(())
}
