//! The event stream a node reports: lifecycle, ownership and every step of the fire path.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::policy::SkipReason;

/// Something that happened on a node; read them with `Dcron::events()`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DcronEvent {
    /// The node entered a lifecycle state (`starting`, `working`, `lost`, `leaving`, `stopped`).
    Lifecycle {
        /// The node id.
        node: String,
        /// The state's name.
        state: &'static str,
    },
    /// The set of tasks this node owns changed.
    Rebalanced {
        /// The node id.
        node: String,
        /// Tasks gained.
        gained: usize,
        /// Tasks lost.
        lost: usize,
        /// Tasks owned now.
        owned: usize,
        /// Working members seen.
        members: usize,
    },
    /// A fire was claimed by this node (it will run it).
    Claimed(FireInfo),
    /// A fire was already claimed elsewhere: not run here.
    LostClaim(FireInfo),
    /// A fire was not run because the task is tombstoned.
    SkippedTombstoned(FireInfo),
    /// A fire's handler started.
    Started(FireInfo),
    /// A fire's handler succeeded.
    Succeeded(FireInfo),
    /// A fire's handler failed, panicked or timed out.
    Failed {
        /// The fire.
        fire: FireInfo,
        /// The error, as text.
        error: String,
    },
    /// A fire could not be claimed before its misfire window closed (registry unreachable).
    Missed(FireInfo),
    /// A fire was planned for a life of its task that has ended (a cleanup, a force-add or a
    /// reuse started a new one): not run; the node reads the task's new life.
    Superseded(FireInfo),
    /// The timer took a fire of an owned task and sent it to be claimed.
    Scheduled(FireInfo),
    /// A fire was not run: overlap, pause (tombstones have [`DcronEvent::SkippedTombstoned`]).
    Skipped {
        /// The fire.
        fire: FireInfo,
        /// Why.
        reason: SkipReason,
    },
    /// An attempt failed and the fire will be retried after `delay`.
    Retried {
        /// The fire.
        fire: FireInfo,
        /// The attempt that failed (1 for the first run).
        attempt: u32,
        /// Its error, as text.
        error: String,
        /// The wait before the next attempt.
        delay: Duration,
    },
    /// A fire had retries left but stopped retrying (ownership lost, node stopping).
    RetryAbandoned {
        /// The fire.
        fire: FireInfo,
        /// The last attempt made.
        attempt: u32,
        /// Why.
        reason: &'static str,
    },
    /// An attempt ran past the task's timeout; its cancellation token was cancelled.
    TimedOut(FireInfo),
    /// A fire started later than the node's overdue threshold after its instant.
    Overdue {
        /// The fire.
        fire: FireInfo,
        /// How late it started, in milliseconds.
        late_ms: i64,
    },
    /// Missed occurrences were sent to be claimed when the node gained a task.
    CaughtUp {
        /// The task.
        task: String,
        /// How many occurrences.
        fires: usize,
    },
    /// A backfill was claimed: `claimed` fires will run here, `already_claimed` ran before.
    Backfilled {
        /// The task.
        task: String,
        /// Fires won (run by this node).
        claimed: usize,
        /// Fires that were already claimed.
        already_claimed: usize,
    },
    /// A trigger-now request was consumed by this node and its fire is starting.
    Triggered(FireInfo),
    /// The node lost its lease while running a fire of a task whose overlap policy is not
    /// `Allow`: another node may start the next fire while this one still runs. The fire's
    /// cancellation token was cancelled.
    LeaseLostWhileRunning {
        /// The task.
        task: String,
        /// The running fire's instant.
        scheduled: DateTime<Utc>,
    },
    /// This node owns a dynamic task but has no `task_run_fn`: its fires do not run here.
    /// Reported once per task and node; the task's status says so too.
    NoHandler {
        /// The task.
        task: String,
        /// The node.
        node: String,
    },
    /// The node's driver failed (a panic or a fatal error): it stopped scheduling and left the
    /// cluster so its tasks move to healthy nodes.
    NodeFailed {
        /// The node.
        node: String,
        /// Why.
        reason: String,
    },
    /// A registration attempt failed; the next one is made after `delay` (exponential back-off
    /// with jitter).
    RegisterRetry {
        /// The node.
        node: String,
        /// The attempt that failed (1 for the first).
        attempt: u32,
        /// The error, as text.
        error: String,
        /// The wait before the next attempt.
        delay: Duration,
    },
    /// A registry record did not decode and was skipped.
    CorruptRecord {
        /// The key or name of the record.
        key: String,
        /// Why it did not decode.
        reason: String,
    },
}

/// Which fire an event is about.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FireInfo {
    /// The task name.
    pub task: String,
    /// The scheduled instant.
    pub scheduled: DateTime<Utc>,
    /// The node reporting it.
    pub node: String,
    /// Whether it is a catch-up fire.
    pub catch_up: bool,
}
