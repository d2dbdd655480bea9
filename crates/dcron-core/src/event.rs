//! The event stream a node reports: lifecycle, ownership and every step of the fire path.

use chrono::{DateTime, Utc};

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
