//! Exactly-once accounting of a run's own ledger of executions.
//!
//! Every run that counts fires keeps a ledger of `(task index, scheduled instant)` per
//! execution and judges it against what its tasks' schedules produce since the tasks existed:
//!
//! - **missed**: an instant of the measured window that no execution covers;
//! - **duplicates**: executions of an instant of the schedule beyond its first;
//! - **unexpected**: executions that should never have run: an instant the schedule does not
//!   produce, an instant from before the task existed, a task index nobody defined.
//!
//! The counts are printed as `duplicates=`, `missed=` and `unexpected=`, and a run whose counts
//! are not all 0 exits non-zero ([`ExactlyOnce::verdict`]).

use std::collections::HashMap;

use crate::summary::Summary;
use crate::{err, Result};

/// Which schedule the tasks of a run have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Every task fires at every whole second (`* * * * * *`).
    EverySecond,
    /// Task `i` fires once an hour, at the second `i % 3600` of the hour (UTC), as
    /// [`crate::scale::spread_hourly`] makes it.
    SpreadHourly,
}

/// What a run's ledger is judged against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expected {
    /// The schedule of every task.
    pub plan: Plan,
    /// Tasks `0..tasks` were defined; any other index is unexpected.
    pub tasks: usize,
    /// When the tasks were added (ms since the epoch): an instant before it is unexpected.
    pub since_ms: i64,
    /// The measured window `[from, to)` in ms: each of its instants must run exactly once.
    pub window: (i64, i64),
}

impl Expected {
    /// Whether the schedule of `task` produces `scheduled_ms`, at or after the task existed.
    pub fn is_instant(&self, task: i64, scheduled_ms: i64) -> bool {
        let Ok(index) = usize::try_from(task) else {
            return false;
        };
        if index >= self.tasks || scheduled_ms < self.since_ms || scheduled_ms % 1000 != 0 {
            return false;
        }
        match self.plan {
            Plan::EverySecond => true,
            Plan::SpreadHourly => (scheduled_ms / 1000).rem_euclid(3600) == (index % 3600) as i64,
        }
    }

    /// Every `(task, instant)` of the window that must run.
    pub fn window_fires(&self) -> Vec<(i64, i64)> {
        let (from, to) = self.window;
        let first = from.max(self.since_ms).div_euclid(1000)
            + i64::from(from.max(self.since_ms).rem_euclid(1000) != 0);
        let last = to.div_euclid(1000) - i64::from(to.rem_euclid(1000) == 0);
        let mut fires = Vec::new();
        for second in first..=last {
            let ms = second * 1000;
            match self.plan {
                Plan::EverySecond => {
                    fires.extend((0..self.tasks as i64).map(|t| (t, ms)));
                }
                Plan::SpreadHourly => {
                    let slot = second.rem_euclid(3600) as usize;
                    fires.extend((slot..self.tasks).step_by(3600).map(|t| (t as i64, ms)));
                }
            }
        }
        fires
    }
}

/// The exactly-once counts of one ledger.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExactlyOnce {
    /// Fires the window must run.
    pub expected: u64,
    /// Distinct fires of the schedule that ran (window or not).
    pub executed: u64,
    /// Executions of a fire of the schedule beyond its first.
    pub duplicates: u64,
    /// Fires of the window that never ran.
    pub missed: u64,
    /// Executions of something the schedule never produced.
    pub unexpected: u64,
}

impl ExactlyOnce {
    /// Judges `executions` (`(task index, scheduled ms)`, one per run of a handler) against
    /// `expected`.
    pub fn check(executions: impl IntoIterator<Item = (i64, i64)>, expected: &Expected) -> Self {
        let mut runs: HashMap<(i64, i64), u64> = HashMap::new();
        let mut counts = ExactlyOnce::default();
        for (task, ms) in executions {
            if expected.is_instant(task, ms) {
                *runs.entry((task, ms)).or_default() += 1;
            } else {
                counts.unexpected += 1;
            }
        }
        counts.executed = runs.len() as u64;
        counts.duplicates = runs.values().map(|n| n - 1).sum();
        for fire in expected.window_fires() {
            counts.expected += 1;
            if !runs.contains_key(&fire) {
                counts.missed += 1;
            }
        }
        counts
    }

    /// The sum of two runs' counts.
    pub fn plus(self, other: ExactlyOnce) -> ExactlyOnce {
        ExactlyOnce {
            expected: self.expected + other.expected,
            executed: self.executed + other.executed,
            duplicates: self.duplicates + other.duplicates,
            missed: self.missed + other.missed,
            unexpected: self.unexpected + other.unexpected,
        }
    }

    /// Whether every fire of the window ran once and nothing else ran.
    pub fn is_clean(&self) -> bool {
        self.duplicates == 0 && self.missed == 0 && self.unexpected == 0
    }

    /// Appends `duplicates=`, `missed=` and `unexpected=` to `summary`.
    pub fn fields(&self, summary: Summary) -> Summary {
        summary
            .field("duplicates", self.duplicates)
            .field("missed", self.missed)
            .field("unexpected", self.unexpected)
    }

    /// `Ok` when clean, else an error naming the run and its counts (the run exits non-zero).
    ///
    /// # Errors
    /// When any of the three counts is not 0.
    pub fn verdict(&self, run: &str) -> Result<()> {
        if self.is_clean() {
            Ok(())
        } else {
            Err(err(format!(
                "{run}: not exactly once: duplicates={} missed={} unexpected={}",
                self.duplicates, self.missed, self.unexpected
            )))
        }
    }
}

/// Judges a printed summary line: its `duplicates`, `missed` and `unexpected` must be present
/// and 0.
///
/// # Errors
/// When a field is missing or not 0.
pub fn verdict_of(summary: &Summary) -> Result<()> {
    let name = format!(
        "{}{}",
        summary.get("run").unwrap_or("?"),
        summary
            .get("system")
            .map(|s| format!(" ({s})"))
            .unwrap_or_default()
    );
    let mut bad = Vec::new();
    for key in ["duplicates", "missed", "unexpected"] {
        match summary.number(key) {
            Some(0.0) => {}
            Some(v) => bad.push(format!("{key}={v}")),
            None => bad.push(format!("no {key}")),
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(err(format!("{name}: not exactly once: {}", bad.join(" "))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_second() -> Expected {
        // Two tasks, added at 1500 ms; window [2000, 4000): instants 2000 and 3000.
        Expected {
            plan: Plan::EverySecond,
            tasks: 2,
            since_ms: 1_500,
            window: (2_000, 4_000),
        }
    }

    fn clean() -> Vec<(i64, i64)> {
        vec![(0, 2_000), (1, 2_000), (0, 3_000), (1, 3_000), (0, 4_000)]
    }

    #[test]
    fn a_clean_ledger_is_clean() {
        let c = ExactlyOnce::check(clean(), &every_second());
        assert_eq!(
            c,
            ExactlyOnce {
                expected: 4,
                executed: 5,
                duplicates: 0,
                missed: 0,
                unexpected: 0
            }
        );
        assert!(c.verdict("t").is_ok());
    }

    #[test]
    fn one_duplicate_is_counted() {
        let mut ledger = clean();
        ledger.push((1, 3_000));
        let c = ExactlyOnce::check(ledger, &every_second());
        assert_eq!((c.duplicates, c.missed, c.unexpected), (1, 0, 0));
        assert!(c.verdict("t").is_err());
    }

    #[test]
    fn one_miss_is_counted() {
        let mut ledger = clean();
        ledger.retain(|f| *f != (1, 2_000));
        let c = ExactlyOnce::check(ledger, &every_second());
        assert_eq!((c.duplicates, c.missed, c.unexpected), (0, 1, 0));
        assert!(c.verdict("t").is_err());
    }

    #[test]
    fn one_unexpected_fire_of_each_kind_is_counted() {
        // An instant the schedule does not produce, one from before the task existed, a task
        // nobody defined: each alone is one unexpected fire.
        for extra in [(0, 2_500), (0, 1_000), (2, 3_000), (-1, 3_000)] {
            let mut ledger = clean();
            ledger.push(extra);
            let c = ExactlyOnce::check(ledger, &every_second());
            assert_eq!(
                (c.duplicates, c.missed, c.unexpected),
                (0, 0, 1),
                "{extra:?}"
            );
            assert!(c.verdict("t").is_err());
        }
    }

    #[test]
    fn spread_hourly_instants() {
        // 7,300 tasks: second 5 of the hour belongs to tasks 5, 3605 and 7205.
        let hour = 1_000 * 3_600 * 500_000;
        let e = Expected {
            plan: Plan::SpreadHourly,
            tasks: 7_300,
            since_ms: hour,
            window: (hour + 5_000, hour + 6_000),
        };
        assert_eq!(
            e.window_fires(),
            vec![
                (5, hour + 5_000),
                (3_605, hour + 5_000),
                (7_205, hour + 5_000)
            ]
        );
        let ok = vec![
            (5, hour + 5_000),
            (3_605, hour + 5_000),
            (7_205, hour + 5_000),
        ];
        assert!(ExactlyOnce::check(ok.clone(), &e).is_clean());
        let mut dup = ok.clone();
        dup.push((3_605, hour + 5_000));
        assert_eq!(ExactlyOnce::check(dup, &e).duplicates, 1);
        let c = ExactlyOnce::check(ok[..2].to_vec(), &e);
        assert_eq!((c.duplicates, c.missed, c.unexpected), (0, 1, 0));
        let mut wrong = ok.clone();
        wrong.push((6, hour + 5_000));
        assert_eq!(ExactlyOnce::check(wrong, &e).unexpected, 1);
    }

    #[test]
    fn printed_lines_are_judged() {
        let line = |d, m, u| {
            ExactlyOnce {
                duplicates: d,
                missed: m,
                unexpected: u,
                ..ExactlyOnce::default()
            }
            .fields(Summary::new("x"))
        };
        assert!(verdict_of(&line(0, 0, 0)).is_ok());
        for (d, m, u) in [(1, 0, 0), (0, 1, 0), (0, 0, 1)] {
            assert!(verdict_of(&line(d, m, u)).is_err());
        }
        assert!(verdict_of(&Summary::new("x").field("duplicates", 0).field("missed", 0)).is_err());
    }
}
