//! The fault plan: everything a simulated run does to the cluster, drawn up front from the seed.
//!
//! A plan is a pure function of its seed and [`SimParams`]: the initial nodes and their clock
//! skews, the tasks, and a time-ordered list of [`Step`]s (partitions, latency, dropped replies,
//! failed calls, forced lease expiry, clock steps, crashes and restarts, graceful leaves and
//! joins, dynamic tasks added, deleted and revived). Printing a plan shows exactly what a seed
//! does; [`FaultPlan::generate`] with the same seed gives the same plan.

use std::fmt;

use super::rng::SimRng;

/// The shape of a simulated run. [`SimParams::default`] is what `simulate` uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimParams {
    /// Fewest nodes at the start.
    pub min_initial_nodes: usize,
    /// Most nodes at the start.
    pub max_initial_nodes: usize,
    /// Most node slots over the whole run (initial nodes plus joins).
    pub max_slots: usize,
    /// Virtual milliseconds during which faults are injected.
    pub fault_ms: u64,
    /// Virtual milliseconds after the faults, with every fault healed, before the checks.
    pub settle_ms: u64,
    /// Largest clock skew of a node, either way, in milliseconds.
    pub max_skew_ms: i64,
    /// Registration lease TTL of every node, in milliseconds.
    pub ttl_ms: u64,
    /// Full-poll interval of every node, in milliseconds.
    pub poll_ms: u64,
    /// Misfire window of every task, in milliseconds.
    pub window_ms: u64,
    /// Shortest gap between two steps, in milliseconds.
    pub min_gap_ms: u64,
    /// Longest gap between two steps, in milliseconds.
    pub max_gap_ms: u64,
}

impl Default for SimParams {
    fn default() -> Self {
        SimParams {
            min_initial_nodes: 2,
            max_initial_nodes: 4,
            max_slots: 7,
            fault_ms: 120_000,
            settle_ms: 25_000,
            max_skew_ms: 5_000,
            ttl_ms: 3_000,
            poll_ms: 1_000,
            window_ms: 30_000,
            min_gap_ms: 700,
            max_gap_ms: 4_000,
        }
    }
}

/// Static tasks: registered in code on every node, `(name, schedule)`.
pub const STATIC_TASKS: [(&str, &str); 5] = [
    ("s-every-1s", "* * * * * *"),
    ("s-every-2s", "*/2 * * * * *"),
    ("s-every-3s", "@every 3s"),
    ("s-every-5s", "*/5 * * * * *"),
    ("s-odd", "1-59/2 * * * * *"),
];

/// One-shot static tasks: registered in code on every node; one fire in their life (the first
/// instant of the schedule once the task exists), then marked deleted.
pub const ONE_SHOT_TASKS: [(&str, &str); 1] = [("s-once", "*/7 * * * * *")];

/// A static task with `OverlapPolicy::Skip` whose runs last [`OVERLAP_RUN_MS`], longer than its
/// period: its fires are not counted as expected (skipping is its policy); the checker verifies
/// that no two of its runs on different processes overlap in time, through handovers, crashes,
/// partitions and freezes.
pub const OVERLAP_TASK: (&str, &str) = ("s-overlap-skip", "*/2 * * * * *");

/// How long a run of [`OVERLAP_TASK`] lasts unless cancelled (its node lost its lease or is
/// stopping) or its process crashed.
pub const OVERLAP_RUN_MS: u64 = 5_000;

/// The name of the record a hostile client writes (a misfire window of `u64::MAX`
/// milliseconds, a timeout and a retry delay far out of bounds): every node must report it as
/// corrupt, skip it, and keep running the other tasks.
pub const HOSTILE_TASK: &str = "d-hostile";

/// Dynamic tasks: stored in the registry at run time by the plan, `(name, schedule)`.
pub const DYNAMIC_TASKS: [(&str, &str); 3] = [
    ("d-every-1s", "* * * * * *"),
    ("d-every-2s", "@every 2s"),
    ("d-every-4s", "*/4 * * * * *"),
];

/// One thing the plan does to the cluster. Nodes are named by slot (`n0`, `n1`, …); a slot's
/// process may crash and restart (a new incarnation, a new node id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Cut the slot from the registry for `ms`: every call fails as unreachable, watch
    /// streams end.
    Partition {
        /// The slot.
        node: usize,
        /// How long.
        ms: u64,
    },
    /// Add `extra_ms` of latency (half before, half after the registry acts) for `ms`.
    Latency {
        /// The slot.
        node: usize,
        /// The added latency per call.
        extra_ms: u64,
        /// How long.
        ms: u64,
    },
    /// For `ms`, `percent` % of calls act on the registry but their reply is lost.
    DropReplies {
        /// The slot.
        node: usize,
        /// Share of calls whose reply is lost.
        percent: u8,
        /// How long.
        ms: u64,
    },
    /// For `ms`, `percent` % of calls fail as unreachable without reaching the registry.
    FailCalls {
        /// The slot.
        node: usize,
        /// Share of calls that fail.
        percent: u8,
        /// How long.
        ms: u64,
    },
    /// End the slot's registration lease now, as if its TTL had run out.
    ExpireLease {
        /// The slot.
        node: usize,
    },
    /// Step the slot's clock to `skew_ms` away from true time.
    ClockStep {
        /// The slot.
        node: usize,
        /// The new skew.
        skew_ms: i64,
    },
    /// Kill the slot's process (no `stop()`; in-flight work is lost).
    Crash {
        /// The slot.
        node: usize,
    },
    /// Start the crashed slot again as a new process.
    Restart {
        /// The slot.
        node: usize,
    },
    /// Stop the slot gracefully (`stop()`); it does not come back.
    Leave {
        /// The slot.
        node: usize,
    },
    /// Start a new node in a fresh slot.
    Join {
        /// The new slot.
        node: usize,
        /// Its clock skew.
        skew_ms: i64,
    },
    /// Store dynamic task `task` in the registry (create-only).
    AddTask {
        /// Index into [`DYNAMIC_TASKS`].
        task: usize,
    },
    /// Mark dynamic task `task` deleted.
    DeleteTask {
        /// Index into [`DYNAMIC_TASKS`].
        task: usize,
    },
    /// Reuse deleted dynamic task `task` (`Dcron::reuse_deleted_task`: a new life).
    ReviveTask {
        /// Index into [`DYNAMIC_TASKS`].
        task: usize,
    },
    /// Force-write dynamic task `task` (`force_add_task_meta`: a new life, tombstone cleared).
    ForceAddTask {
        /// Index into [`DYNAMIC_TASKS`].
        task: usize,
    },
    /// Clean static task `task` up (`cleanup_task`): its life ends, claims and all; the nodes
    /// that run it start a new one.
    CleanupStatic {
        /// Index into [`STATIC_TASKS`].
        task: usize,
    },
    /// Freeze the slot's process for `ms` (longer than a claim's retention): the calls it
    /// starts meanwhile reach the registry only when it thaws.
    Freeze {
        /// The slot.
        node: usize,
        /// How long.
        ms: u64,
    },
    /// A hostile client writes [`HOSTILE_TASK`], a record out of every bound.
    HostileRecord,
    /// The slot's scheduling driver panics (its assigner does): the node must fail, say so,
    /// and unregister, and its tasks move. It does not come back.
    PanicNode {
        /// The slot.
        node: usize,
    },
}

/// A fault at a virtual time (milliseconds since the start of the run).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// When, in virtual milliseconds since the start.
    pub at_ms: u64,
    /// What.
    pub fault: Fault,
}

/// Everything a run does, drawn from its seed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultPlan {
    /// The seed it was drawn from.
    pub seed: u64,
    /// The parameters it was drawn with.
    pub params: SimParams,
    /// Clock skew of each initial node (slot `i` is `n{i}`).
    pub initial_skews_ms: Vec<i64>,
    /// The steps, in time order.
    pub steps: Vec<Step>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Unused,
    Up,
    Down { until: u64 },
    Gone,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum TaskState {
    Absent,
    Live,
    Deleted,
}

impl FaultPlan {
    /// Draws the plan of `seed` with `params`.
    pub fn generate(seed: u64, params: &SimParams) -> FaultPlan {
        let mut rng = SimRng::new(seed);
        let slots_max = params.max_slots.max(1);
        let lo = params.min_initial_nodes.clamp(1, slots_max);
        let hi = params.max_initial_nodes.clamp(lo, slots_max);
        let initial = rng.range(lo as u64, hi as u64) as usize;
        let skew = params.max_skew_ms.max(0);
        let initial_skews_ms: Vec<i64> = (0..initial).map(|_| rng.range_i64(-skew, skew)).collect();
        let mut slots = vec![SlotState::Unused; slots_max];
        for s in slots.iter_mut().take(initial) {
            *s = SlotState::Up;
        }
        let mut tasks = [TaskState::Absent; DYNAMIC_TASKS.len()];
        let mut froze = false;
        let mut hostile = false;
        let mut panicked = false;
        // A freeze longer than any claim's retention (window + skew + TTL + the 30 s margin).
        let freeze_ms =
            params.window_ms + params.max_skew_ms.unsigned_abs() + params.ttl_ms + 35_000;
        let mut task_free_at = [0u64; DYNAMIC_TASKS.len()];
        // Per slot: until when a timed fault of each kind is in force (no overlap of a kind).
        let mut busy = vec![[0u64; 4]; slots_max];
        let mut steps = Vec::new();
        let mut t = 1_500u64;
        let max_steps = (params.fault_ms / params.min_gap_ms.max(1)) as usize + 1;
        while steps.len() < max_steps {
            t += rng.range(params.min_gap_ms, params.max_gap_ms.max(params.min_gap_ms));
            if t >= params.fault_ms {
                break;
            }
            // Restarts scheduled earlier come first.
            for (i, s) in slots.iter_mut().enumerate() {
                if let SlotState::Down { until } = *s {
                    if until <= t {
                        steps.push(Step {
                            at_ms: until,
                            fault: Fault::Restart { node: i },
                        });
                        *s = SlotState::Up;
                    }
                }
            }
            let up: Vec<usize> = (0..slots_max)
                .filter(|i| slots[*i] == SlotState::Up)
                .collect();
            let remaining = params.fault_ms - t;
            let timed = |rng: &mut SimRng, max: u64| rng.range(300, max.min(remaining).max(300));
            let roll = rng.range(0, 99);
            let fault = if up.is_empty() {
                None
            } else {
                let node = up[rng.index(up.len())];
                match roll {
                    0..=17 if busy[node][0] <= t => {
                        let ms = timed(&mut rng, 12_000);
                        busy[node][0] = t + ms;
                        Some(Fault::Partition { node, ms })
                    }
                    18..=29 if busy[node][1] <= t => {
                        let ms = timed(&mut rng, 15_000);
                        busy[node][1] = t + ms;
                        Some(Fault::Latency {
                            node,
                            extra_ms: rng.range(20, 1_500),
                            ms,
                        })
                    }
                    30..=39 if busy[node][2] <= t => {
                        let ms = timed(&mut rng, 10_000);
                        busy[node][2] = t + ms;
                        Some(Fault::DropReplies {
                            node,
                            percent: rng.range(5, 60) as u8,
                            ms,
                        })
                    }
                    40..=49 if busy[node][3] <= t => {
                        let ms = timed(&mut rng, 10_000);
                        busy[node][3] = t + ms;
                        Some(Fault::FailCalls {
                            node,
                            percent: rng.range(10, 90) as u8,
                            ms,
                        })
                    }
                    50..=55 => Some(Fault::ExpireLease { node }),
                    56..=59 => Some(Fault::ClockStep {
                        node,
                        skew_ms: rng.range_i64(-skew, skew),
                    }),
                    60..=61 if !froze && up.len() >= 2 && remaining > freeze_ms + 5_000 => {
                        froze = true;
                        let ms = freeze_ms + rng.range(0, 8_000);
                        Some(Fault::Freeze { node, ms })
                    }
                    62..=69 if up.len() >= 2 => {
                        let until = t + rng.range(1_000, 15_000);
                        slots[node] = SlotState::Down { until };
                        Some(Fault::Crash { node })
                    }
                    70..=73 if up.len() >= 2 => {
                        slots[node] = SlotState::Gone;
                        Some(Fault::Leave { node })
                    }
                    74..=79 => match slots.iter().position(|s| *s == SlotState::Unused) {
                        Some(fresh) => {
                            slots[fresh] = SlotState::Up;
                            Some(Fault::Join {
                                node: fresh,
                                skew_ms: rng.range_i64(-skew, skew),
                            })
                        }
                        None => None,
                    },
                    94..=95 => {
                        let task = rng.index(DYNAMIC_TASKS.len());
                        (task_free_at[task] <= t).then(|| {
                            task_free_at[task] = t + 8_000;
                            tasks[task] = TaskState::Live;
                            Fault::ForceAddTask { task }
                        })
                    }
                    96 => Some(Fault::CleanupStatic {
                        task: rng.index(STATIC_TASKS.len()),
                    }),
                    97 if !hostile => {
                        hostile = true;
                        Some(Fault::HostileRecord)
                    }
                    98 if !panicked && up.len() >= 2 => {
                        panicked = true;
                        slots[node] = SlotState::Gone;
                        Some(Fault::PanicNode { node })
                    }
                    80..=93 => {
                        let task = rng.index(DYNAMIC_TASKS.len());
                        if task_free_at[task] > t {
                            None
                        } else {
                            task_free_at[task] = t + 8_000;
                            match tasks[task] {
                                TaskState::Absent => {
                                    tasks[task] = TaskState::Live;
                                    Some(Fault::AddTask { task })
                                }
                                TaskState::Live => {
                                    tasks[task] = TaskState::Deleted;
                                    Some(Fault::DeleteTask { task })
                                }
                                TaskState::Deleted => {
                                    tasks[task] = TaskState::Live;
                                    Some(Fault::ReviveTask { task })
                                }
                            }
                        }
                    }
                    _ => None,
                }
            };
            if let Some(fault) = fault {
                steps.push(Step { at_ms: t, fault });
            }
        }
        // Crashed slots whose restart falls after the faults come back before the checks.
        for (i, s) in slots.iter().enumerate() {
            if let SlotState::Down { until } = *s {
                steps.push(Step {
                    at_ms: until.min(params.fault_ms),
                    fault: Fault::Restart { node: i },
                });
            }
        }
        steps.sort_by_key(|s| s.at_ms);
        FaultPlan {
            seed,
            params: params.clone(),
            initial_skews_ms,
            steps,
        }
    }

    /// How many freezes the plan has.
    pub fn freezes(&self) -> usize {
        self.steps
            .iter()
            .filter(|s| matches!(s.fault, Fault::Freeze { .. }))
            .count()
    }

    /// How many steps of each family the plan has: `(partitions, crashes, other faults)`.
    pub fn counts(&self) -> (usize, usize, usize) {
        let mut partitions = 0;
        let mut crashes = 0;
        let mut other = 0;
        for s in &self.steps {
            match s.fault {
                Fault::Partition { .. } => partitions += 1,
                Fault::Crash { .. } => crashes += 1,
                _ => other += 1,
            }
        }
        (partitions, crashes, other)
    }
}

fn secs(ms: u64) -> String {
    format!("{}.{:03}s", ms / 1000, ms % 1000)
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Partition { node, ms } => write!(f, "partition n{node} for {}", secs(*ms)),
            Fault::Latency { node, extra_ms, ms } => {
                write!(f, "latency +{extra_ms}ms on n{node} for {}", secs(*ms))
            }
            Fault::DropReplies { node, percent, ms } => {
                write!(f, "drop {percent}% of replies to n{node} for {}", secs(*ms))
            }
            Fault::FailCalls { node, percent, ms } => {
                write!(f, "fail {percent}% of calls of n{node} for {}", secs(*ms))
            }
            Fault::ExpireLease { node } => write!(f, "expire the lease of n{node}"),
            Fault::ClockStep { node, skew_ms } => {
                write!(f, "step the clock of n{node} to {skew_ms:+}ms")
            }
            Fault::Crash { node } => write!(f, "crash n{node}"),
            Fault::Restart { node } => write!(f, "restart n{node}"),
            Fault::Leave { node } => write!(f, "n{node} leaves gracefully"),
            Fault::Join { node, skew_ms } => write!(f, "n{node} joins (clock {skew_ms:+}ms)"),
            Fault::AddTask { task } => write!(f, "add task {}", DYNAMIC_TASKS[*task].0),
            Fault::DeleteTask { task } => write!(f, "delete task {}", DYNAMIC_TASKS[*task].0),
            Fault::ReviveTask { task } => write!(f, "revive task {}", DYNAMIC_TASKS[*task].0),
            Fault::ForceAddTask { task } => {
                write!(f, "force-add task {}", DYNAMIC_TASKS[*task].0)
            }
            Fault::CleanupStatic { task } => {
                write!(f, "clean static task {} up", STATIC_TASKS[*task].0)
            }
            Fault::Freeze { node, ms } => write!(f, "freeze n{node} for {}", secs(*ms)),
            Fault::HostileRecord => write!(f, "a hostile client writes {HOSTILE_TASK}"),
            Fault::PanicNode { node } => write!(f, "the driver of n{node} panics"),
        }
    }
}

impl fmt::Display for FaultPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let skews: Vec<String> = self
            .initial_skews_ms
            .iter()
            .enumerate()
            .map(|(i, s)| format!("n{i} {s:+}ms"))
            .collect();
        writeln!(
            f,
            "seed {}: {} nodes ({}), faults for {}, settle {}",
            self.seed,
            self.initial_skews_ms.len(),
            skews.join(", "),
            secs(self.params.fault_ms),
            secs(self.params.settle_ms)
        )?;
        for s in &self.steps {
            writeln!(f, "  t={:>9}  {}", secs(s.at_ms), s.fault)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_are_a_function_of_the_seed() {
        let p = SimParams::default();
        assert_eq!(FaultPlan::generate(42, &p), FaultPlan::generate(42, &p));
        assert_ne!(FaultPlan::generate(42, &p), FaultPlan::generate(43, &p));
    }

    #[test]
    fn plans_respect_their_bounds() {
        let p = SimParams::default();
        for seed in 0..200 {
            let plan = FaultPlan::generate(seed, &p);
            let n = plan.initial_skews_ms.len();
            assert!((p.min_initial_nodes..=p.max_initial_nodes).contains(&n));
            assert!(plan
                .initial_skews_ms
                .iter()
                .all(|s| s.abs() <= p.max_skew_ms));
            assert!(plan.steps.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
            assert!(plan.steps.iter().all(|s| s.at_ms <= p.fault_ms));
            for s in &plan.steps {
                if let Fault::ClockStep { skew_ms, .. } | Fault::Join { skew_ms, .. } = s.fault {
                    assert!(skew_ms.abs() <= p.max_skew_ms);
                }
            }
            // Every crash is followed by a restart of the same slot.
            for (i, s) in plan.steps.iter().enumerate() {
                if let Fault::Crash { node } = s.fault {
                    assert!(plan.steps[i + 1..]
                        .iter()
                        .any(|r| r.fault == Fault::Restart { node }));
                }
            }
            assert!(!plan.to_string().is_empty());
        }
    }
}
