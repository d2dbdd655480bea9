//! Operator control: pauses and trigger-now requests.
//!
//! The rules (DESIGN §2):
//! - of two pause records of a task the later `changed_at` wins, whichever arrives first (the
//!   API's own write and the poll race); pausing moves the task's stamp so that fires claimed
//!   ahead for it do not start;
//! - a paused task's instants are skipped, and catch-up never reaches before its resume;
//! - a trigger request is run by the task's owner (it consumes the record; the one delete that
//!   succeeds runs it). A request the owner cannot run (the task is deleted, or the owner has
//!   no handler) is dropped at once; one nobody consumed is dropped after it expires.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::engine::plan::{self, Pause};
use crate::policy::PauseRecord;

/// The pause records known to this node, by task.
#[derive(Debug, Default)]
pub(crate) struct Pauses {
    by_task: HashMap<String, PauseRecord>,
}

impl Pauses {
    /// Applies a record; answers whether it pauses a task that was not paused (its fires
    /// claimed ahead must not start).
    pub(crate) fn apply(&mut self, record: PauseRecord) -> bool {
        let old = self.by_task.get(&record.task);
        if old.is_some_and(|old| old.changed_at > record.changed_at) {
            return false;
        }
        let pausing = record.paused && !old.is_some_and(|p| p.paused);
        self.by_task.insert(record.task.clone(), record);
        pausing
    }

    /// Whether `task` is paused now.
    pub(crate) fn is_paused(&self, task: &str) -> bool {
        self.by_task.get(task).is_some_and(|p| p.paused)
    }

    /// The pause state of `task`, as catch-up needs it.
    pub(crate) fn state(&self, task: &str) -> Pause {
        match self.by_task.get(task) {
            Some(p) if p.paused => Pause::Paused,
            Some(p) => Pause::ResumedAt(p.changed_at),
            None => Pause::None,
        }
    }
}

/// What this node knows of a trigger request.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TriggerSeen {
    /// The task is tombstoned.
    pub(crate) tombstoned: bool,
    /// This node owns the task.
    pub(crate) owned: bool,
    /// This node has a handler for the task.
    pub(crate) has_handler: bool,
    /// When it was requested.
    pub(crate) requested_at: DateTime<Utc>,
}

/// What a node does with a trigger request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// Not this node's to decide (yet): leave it.
    Leave,
    /// Consume it and run the fire.
    Run,
    /// Consume it without running it, for this reason.
    Drop(&'static str),
}

/// Decides a trigger request at `now`; requests live `expiry`.
pub(crate) fn judge_trigger(seen: &TriggerSeen, now: DateTime<Utc>, expiry: Duration) -> Trigger {
    let runnable = seen.owned && !seen.tombstoned && seen.has_handler;
    if runnable {
        return Trigger::Run;
    }
    // The owner cannot run it: no other node will either.
    let unrunnable = seen.owned;
    let expired = plan::plus(seen.requested_at, expiry) < now;
    if !expired && !unrunnable {
        return Trigger::Leave;
    }
    Trigger::Drop(if seen.tombstoned {
        "the task is deleted"
    } else if unrunnable {
        "the owner has no handler for it"
    } else {
        "no node ran it before it expired"
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::<Utc>::UNIX_EPOCH + TimeDelta::seconds(1_000_000 + s)
    }

    fn rec(paused: bool, at: i64) -> PauseRecord {
        PauseRecord {
            task: "job".into(),
            paused,
            changed_at: t(at),
        }
    }

    #[test]
    fn the_later_pause_record_wins_whatever_the_order() {
        let mut p = Pauses::default();
        assert_eq!(p.state("job"), Pause::None);
        assert!(p.apply(rec(true, 10)), "pausing moves the stamp");
        assert!(p.is_paused("job"));
        assert_eq!(p.state("job"), Pause::Paused);
        // The same pause again (the poll reads it back): not a new pause.
        assert!(!p.apply(rec(true, 10)));
        // A stale resume from before the pause arrives late: ignored.
        assert!(!p.apply(rec(false, 5)));
        assert!(p.is_paused("job"));
        assert!(!p.apply(rec(false, 20)));
        assert_eq!(p.state("job"), Pause::ResumedAt(t(20)));
        // And the pause it superseded, read late by a poll: ignored.
        assert!(!p.apply(rec(true, 10)));
        assert!(!p.is_paused("job"));
        assert!(p.apply(rec(true, 30)));
    }

    fn seen(owned: bool, tombstoned: bool, has_handler: bool) -> TriggerSeen {
        TriggerSeen {
            tombstoned,
            owned,
            has_handler,
            requested_at: t(0),
        }
    }

    #[test]
    fn the_owner_runs_a_trigger_and_drops_what_it_cannot_run() {
        let expiry = Duration::from_secs(600);
        assert_eq!(
            judge_trigger(&seen(true, false, true), t(1), expiry),
            Trigger::Run
        );
        // Even an expired request is run by an owner that finds it.
        assert_eq!(
            judge_trigger(&seen(true, false, true), t(700), expiry),
            Trigger::Run
        );
        assert_eq!(
            judge_trigger(&seen(true, true, true), t(1), expiry),
            Trigger::Drop("the task is deleted")
        );
        assert_eq!(
            judge_trigger(&seen(true, false, false), t(1), expiry),
            Trigger::Drop("the owner has no handler for it")
        );
    }

    #[test]
    fn others_leave_a_trigger_until_it_expires() {
        let expiry = Duration::from_secs(600);
        assert_eq!(
            judge_trigger(&seen(false, false, true), t(600), expiry),
            Trigger::Leave
        );
        assert_eq!(
            judge_trigger(&seen(false, false, true), t(601), expiry),
            Trigger::Drop("no node ran it before it expired")
        );
        assert_eq!(
            judge_trigger(&seen(false, true, true), t(601), expiry),
            Trigger::Drop("the task is deleted")
        );
        // A far-future request time never overflows.
        let far = TriggerSeen {
            requested_at: DateTime::<Utc>::MAX_UTC,
            ..seen(false, false, true)
        };
        assert_eq!(judge_trigger(&far, t(0), Duration::MAX), Trigger::Leave);
    }
}
