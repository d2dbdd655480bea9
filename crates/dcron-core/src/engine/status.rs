//! What a node knows of its tasks' runs, and the record it writes of them.
//!
//! The rules:
//! - counts are kept as deltas until the stored counts are loaded (the first write of a task
//!   on this node reads them and adds them once);
//! - the last fire and its result are those of the latest instant, not of the fire that ended
//!   last (a late retry of an older instant does not hide a newer result);
//! - a node that gains a task forgets counts it has not written: other owners stored theirs
//!   meanwhile, and they are read again.

use chrono::{DateTime, Utc};

use crate::policy::{LastResult, TaskStatus};

/// What this node knows of one task's runs; counts are deltas until `base_loaded`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct StatusLocal {
    /// The stored counts were added.
    pub(crate) base_loaded: bool,
    /// Fires that ended.
    pub(crate) run_count: u64,
    /// Fires that failed.
    pub(crate) failure_count: u64,
    /// The latest instant that ended.
    pub(crate) last_fire: Option<DateTime<Utc>>,
    /// How it ended.
    pub(crate) last_result: Option<LastResult>,
}

impl StatusLocal {
    /// Counts a fire of instant `scheduled` that ended (`error` when it failed).
    pub(crate) fn fire_ended(&mut self, scheduled: DateTime<Utc>, error: Option<String>) {
        self.run_count += 1;
        if error.is_some() {
            self.failure_count += 1;
        }
        if self.last_fire.is_none_or(|t| t <= scheduled) {
            self.last_fire = Some(scheduled);
            self.last_result = Some(match error {
                None => LastResult::Ok,
                Some(e) => LastResult::Failed { error: e },
            });
        }
    }

    /// Adds the stored counts, once.
    pub(crate) fn load_base(&mut self, runs: u64, failures: u64) {
        if !self.base_loaded {
            self.base_loaded = true;
            self.run_count += runs;
            self.failure_count += failures;
        }
    }

    /// The record of these runs, written at `now` by `node` (`owned`: the node owns the task).
    pub(crate) fn record(
        &self,
        task: &str,
        node: &str,
        owned: bool,
        now: DateTime<Utc>,
    ) -> TaskStatus {
        let mut out = TaskStatus::new(task, now);
        out.owner = owned.then(|| node.to_string());
        out.last_fire = self.last_fire;
        out.last_node = self.last_fire.map(|_| node.to_string());
        out.last_result = self.last_result.clone();
        out.run_count = self.run_count;
        out.failure_count = self.failure_count;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::<Utc>::UNIX_EPOCH + TimeDelta::seconds(1_000_000 + s)
    }

    #[test]
    fn the_latest_instant_tells_the_last_result() {
        let mut st = StatusLocal::default();
        st.fire_ended(t(10), None);
        // A retry of an older instant ends later, failed: counted, but not the last result.
        st.fire_ended(t(5), Some("boom".into()));
        assert_eq!((st.run_count, st.failure_count), (2, 1));
        assert_eq!(st.last_fire, Some(t(10)));
        assert_eq!(st.last_result, Some(LastResult::Ok));
        st.fire_ended(t(20), Some("late".into()));
        assert_eq!(
            st.last_result,
            Some(LastResult::Failed {
                error: "late".into()
            })
        );
    }

    #[test]
    fn stored_counts_are_added_once() {
        let mut st = StatusLocal::default();
        st.fire_ended(t(1), None);
        st.load_base(100, 7);
        st.load_base(100, 7);
        assert_eq!((st.run_count, st.failure_count), (101, 7));
        let rec = st.record("job", "n1", true, t(2));
        assert_eq!(rec.owner.as_deref(), Some("n1"));
        assert_eq!(rec.last_node.as_deref(), Some("n1"));
        assert_eq!(rec.run_count, 101);
        let rec = StatusLocal::default().record("job", "n1", false, t(2));
        assert_eq!((rec.owner, rec.last_node), (None, None));
    }
}
