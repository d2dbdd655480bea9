//! What a node knows of its tasks' runs, and the record it writes of them.
//!
//! The rules:
//! - counts are kept as deltas until the stored counts are loaded (the first write of a task
//!   on this node reads them and adds them once);
//! - the last fire and its result are those of the latest instant, not of the fire that ended
//!   last (a late retry of an older instant does not hide a newer result);
//! - a node that gains a task forgets the counts it has already written (other owners stored
//!   theirs meanwhile, and the stored counts are read again); counts not written yet are kept.

use std::collections::{HashMap, HashSet};

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

/// The runs of every task this node ran, and which of them changed since the last write.
#[derive(Debug, Default)]
pub(crate) struct StatusBook {
    by_task: HashMap<String, StatusLocal>,
    dirty: HashSet<String>,
}

impl StatusBook {
    /// What is known of `task`.
    pub(crate) fn get(&self, task: &str) -> Option<&StatusLocal> {
        self.by_task.get(task)
    }

    /// Counts a fire of `task` that ended.
    pub(crate) fn fire_ended(
        &mut self,
        task: &str,
        scheduled: DateTime<Utc>,
        error: Option<String>,
    ) {
        let st = match self.by_task.get_mut(task) {
            Some(st) => st,
            None => self.by_task.entry(task.to_string()).or_default(),
        };
        st.fire_ended(scheduled, error);
        if !self.dirty.contains(task) {
            self.dirty.insert(task.to_string());
        }
    }

    /// Records that `node` owns `task` and has no handler for it.
    pub(crate) fn no_handler(&mut self, task: &str, node: &str) {
        let st = self.by_task.entry(task.to_string()).or_default();
        st.last_result = Some(LastResult::NoHandler {
            node: node.to_string(),
        });
        self.dirty.insert(task.to_string());
    }

    /// This node gained `task` (see the module rules).
    pub(crate) fn gained(&mut self, task: &str) {
        if !self.dirty.contains(task) {
            if let Some(st) = self.by_task.get_mut(task) {
                *st = StatusLocal::default();
            }
        }
    }

    /// Adds the stored counts of `task`, once.
    pub(crate) fn load_base(&mut self, task: &str, runs: u64, failures: u64) {
        if let Some(st) = self.by_task.get_mut(task) {
            st.load_base(runs, failures);
        }
    }

    /// Whether some task changed since the last write.
    pub(crate) fn is_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Gives up writing what changed (the node leaves without it).
    pub(crate) fn forget_dirty(&mut self) {
        self.dirty.clear();
    }

    /// The records to write now, written at `now` by `node` (`owned` says which tasks it
    /// owns), and the tasks whose stored counts must be read first.
    pub(crate) fn take_dirty(
        &mut self,
        node: &str,
        owned: impl Fn(&str) -> bool,
        now: DateTime<Utc>,
    ) -> (Vec<TaskStatus>, HashSet<String>) {
        let mut records = Vec::with_capacity(self.dirty.len());
        let mut unloaded = HashSet::new();
        for name in self.dirty.drain() {
            let Some(st) = self.by_task.get(&name) else {
                continue;
            };
            if !st.base_loaded {
                unloaded.insert(name.clone());
            }
            records.push(st.record(&name, node, owned(&name), now));
        }
        (records, unloaded)
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

    #[test]
    fn a_gain_forgets_written_counts_and_keeps_unwritten_ones() {
        let mut book = StatusBook::default();
        book.fire_ended("a", t(1), None);
        book.fire_ended("b", t(1), Some("x".into()));
        let (records, unloaded) = book.take_dirty("n1", |n| n == "a", t(2));
        assert_eq!(records.len(), 2);
        assert_eq!(
            unloaded.len(),
            2,
            "the stored counts are read before the first write"
        );
        assert!(!book.is_dirty());
        book.load_base("a", 10, 0);
        book.load_base("b", 5, 5);
        assert_eq!(book.get("a").map(|s| s.run_count), Some(11));
        // `a` was written: regained later, its counts are read again (another owner ran it).
        book.gained("a");
        assert_eq!(book.get("a"), Some(&StatusLocal::default()));
        // `b` ran again here and is not written yet: a gain keeps it.
        book.fire_ended("b", t(3), None);
        book.gained("b");
        assert_eq!(book.get("b").map(|s| s.run_count), Some(7));
        let (records, unloaded) = book.take_dirty("n1", |_| false, t(4));
        assert_eq!(records[0].run_count, 7);
        assert!(unloaded.is_empty());
    }

    #[test]
    fn a_task_without_handler_is_reported_in_its_status() {
        let mut book = StatusBook::default();
        book.no_handler("dyn", "n1");
        assert!(book.is_dirty());
        let (records, _) = book.take_dirty("n1", |_| true, t(0));
        assert_eq!(
            records[0].last_result,
            Some(LastResult::NoHandler { node: "n1".into() })
        );
        book.fire_ended("dyn", t(1), None);
        book.forget_dirty();
        assert!(!book.is_dirty());
    }
}
