//! Execution policies (retries, timeouts, overlap) and the records that steer a running cluster
//! (pause, trigger-now) or report on it (task status).
//!
//! Policies are per task: a dynamic task carries them in its [`crate::TaskMeta`] (so every node
//! applies the same ones), a static task gets them from [`crate::TaskOptions`], and the builder
//! sets the defaults for tasks that say nothing. The records live in the registry
//! ([`crate::Registry::put_records`]) so that every node, and an operator tool, sees them.
//!
//! All of them are stored as JSON with the field names shown; new versions only add optional
//! fields.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How long to wait before each retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Backoff {
    /// The same delay before every retry (`delay_ms`).
    Fixed {
        /// Delay in milliseconds.
        delay_ms: u64,
    },
    /// `step_ms × attempt` before retry number `attempt` (1, 2, 3, …).
    Linear {
        /// Step in milliseconds.
        step_ms: u64,
    },
    /// `initial_ms × 2^(attempt−1)` before retry number `attempt`.
    Exponential {
        /// First delay in milliseconds.
        initial_ms: u64,
    },
}

/// Retries of a failed fire. A retry belongs to the same fire: it runs on the node that won the
/// claim, with the same scheduled instant and fencing token, and is never claimed again. A node
/// that loses ownership of the task while waiting to retry stops retrying (and reports
/// [`crate::DcronEvent::RetryAbandoned`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts in all, the first run included (`max_attempts`, at least 1; 1 = no retry).
    pub max_attempts: u32,
    /// Delay before each retry (`backoff`).
    pub backoff: Backoff,
    /// Upper bound of one delay in milliseconds (`max_interval_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_interval_ms: Option<u64>,
    /// Spread each delay at random over `[delay/2, delay]` (`jitter`), so that retries of many
    /// tasks failing together do not hit a downstream system at one instant. The jitter is
    /// derived from the fire (task, instant, attempt), so a run is reproducible.
    #[serde(default)]
    pub jitter: bool,
}

impl RetryPolicy {
    /// No retry: one attempt.
    pub const NONE: RetryPolicy = RetryPolicy {
        max_attempts: 1,
        backoff: Backoff::Fixed { delay_ms: 0 },
        max_interval_ms: None,
        jitter: false,
    };

    /// `attempts` attempts in all with a fixed delay between them.
    pub fn fixed(attempts: u32, delay: Duration) -> Self {
        RetryPolicy {
            max_attempts: attempts,
            backoff: Backoff::Fixed {
                delay_ms: millis(delay),
            },
            max_interval_ms: None,
            jitter: false,
        }
    }

    /// `attempts` attempts in all with linearly growing delays (`step`, `2×step`, …).
    pub fn linear(attempts: u32, step: Duration) -> Self {
        RetryPolicy {
            backoff: Backoff::Linear {
                step_ms: millis(step),
            },
            ..RetryPolicy::fixed(attempts, Duration::ZERO)
        }
    }

    /// `attempts` attempts in all with doubling delays starting at `initial`.
    pub fn exponential(attempts: u32, initial: Duration) -> Self {
        RetryPolicy {
            backoff: Backoff::Exponential {
                initial_ms: millis(initial),
            },
            ..RetryPolicy::fixed(attempts, Duration::ZERO)
        }
    }

    /// Caps every delay at `max`.
    pub fn max_interval(mut self, max: Duration) -> Self {
        self.max_interval_ms = Some(millis(max));
        self
    }

    /// Spreads delays at random over `[delay/2, delay]`.
    pub fn with_jitter(mut self) -> Self {
        self.jitter = true;
        self
    }

    /// Checks the policy: at least one attempt, at most 1000.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the rule.
    pub fn validate(&self) -> Result<()> {
        if self.max_attempts == 0 || self.max_attempts > 1000 {
            return Err(Error::InvalidArgument(format!(
                "retry max_attempts must be between 1 and 1000, not {}",
                self.max_attempts
            )));
        }
        Ok(())
    }

    /// The delay before retry number `retry` (1 for the first retry), before jitter; `seed`
    /// picks the jitter when it is on.
    pub fn delay(&self, retry: u32, seed: u64) -> Duration {
        let retry = retry.max(1);
        let base = match self.backoff {
            Backoff::Fixed { delay_ms } => delay_ms,
            Backoff::Linear { step_ms } => step_ms.saturating_mul(u64::from(retry)),
            Backoff::Exponential { initial_ms } => {
                initial_ms.saturating_mul(1u64.checked_shl(retry - 1).unwrap_or(u64::MAX))
            }
        };
        let capped = match self.max_interval_ms {
            Some(max) => base.min(max),
            None => base,
        }
        .min(MAX_DELAY_MS);
        let ms = if self.jitter && capped > 1 {
            let half = capped / 2;
            half + splitmix(seed ^ u64::from(retry)) % (capped - half + 1)
        } else {
            capped
        };
        Duration::from_millis(ms)
    }
}

/// The longest single retry delay: one day.
const MAX_DELAY_MS: u64 = 86_400_000;

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A fast, well-mixed 64-bit hash step (public-domain SplitMix64 constants).
pub(crate) fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// What to do with a fire whose task is still running (its previous fire has not ended).
///
/// Checked **cluster-wide**: a node publishes the fires it is running of tasks whose policy is
/// not `Allow` in its node record ([`crate::Node::running`]); that record lives and dies with the
/// node's lease, so a crashed node's markers vanish with it. The check is made by the node that
/// won the claim, just before it would start the handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum OverlapPolicy {
    /// Run every fire, whether or not an earlier one is still running.
    #[default]
    Allow,
    /// Do not run the fire if an earlier fire of the task is still running anywhere in the
    /// cluster; report [`crate::DcronEvent::Skipped`] with [`SkipReason::Overlap`].
    Skip,
    /// Wait for the earlier fire to end, then run (at most one fire waits per task and node;
    /// a further one is skipped). The wait is bounded by the task's misfire window: past it the
    /// fire is skipped as overlapping.
    Queue,
}

/// Why a fire was not run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SkipReason {
    /// An earlier fire of the task was still running ([`OverlapPolicy::Skip`] or a full queue).
    Overlap,
    /// The task is paused.
    Paused,
    /// The task is tombstoned.
    Tombstoned,
    /// The fire was claimed ahead of its instant, and before the instant its task was deleted,
    /// paused, changed or started a new life: it does not run (anywhere: its claim stays).
    Cancelled,
    /// The node's or the task's concurrency limit ([`crate::DcronBuilder::max_concurrent_fires`],
    /// [`crate::TaskMeta::max_concurrent`]) stayed full until the fire's deadline, or until the
    /// node stopped.
    ConcurrencyLimit,
}

impl SkipReason {
    /// A short name for logs and metrics labels: `overlap`, `paused`, `tombstoned`,
    /// `cancelled`, `concurrency_limit`.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Overlap => "overlap",
            SkipReason::Paused => "paused",
            SkipReason::Tombstoned => "tombstoned",
            SkipReason::Cancelled => "cancelled",
            SkipReason::ConcurrencyLimit => "concurrency_limit",
        }
    }
}

/// A fire a node is running, as published in its node record for overlap checks.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RunningFire {
    /// The task (`task`).
    pub task: String,
    /// The scheduled instant (`instant`).
    pub instant: DateTime<Utc>,
    /// The claim's fencing token (`token`).
    pub token: u64,
}

/// The pause state of a task ([`crate::RecordKind::Pause`], keyed by task name).
///
/// Resuming writes `paused: false` rather than deleting the record: its `changed_at` tells
/// catch-up not to run occurrences that fell inside the pause.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PauseRecord {
    /// The task (`task`).
    pub task: String,
    /// Whether the task is paused (`paused`).
    pub paused: bool,
    /// When the state last changed (`changed_at`).
    pub changed_at: DateTime<Utc>,
}

/// A request to run a task once now ([`crate::RecordKind::Trigger`], keyed
/// `<task>@<id>`). The owner of the task consumes it with `delete_record`; only the node whose
/// delete succeeds runs it, so each request runs at most once, on one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TriggerRecord {
    /// The task (`task`).
    pub task: String,
    /// A random, non-zero id; also the fencing token of the fire it runs (`id`).
    pub id: u64,
    /// When it was requested; the fire's scheduled instant (`requested_at`).
    pub requested_at: DateTime<Utc>,
}

impl TriggerRecord {
    /// The record key: `<task>@<id>`.
    pub fn key(&self) -> String {
        format!("{}@{}", self.task, self.id)
    }
}

/// The result of a task's last completed fire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
#[non_exhaustive]
pub enum LastResult {
    /// The handler succeeded.
    Ok,
    /// The handler failed (after every retry), panicked or timed out.
    Failed {
        /// The error, as text.
        error: String,
    },
    /// The task's owner has no handler for it (a dynamic task on a node without
    /// `task_run_fn`): its fires do not run.
    NoHandler {
        /// The node that owns the task.
        node: String,
    },
}

impl std::fmt::Display for LastResult {
    /// `ok`, `failed: <error>` or `no handler on <node>`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LastResult::Ok => f.write_str("ok"),
            LastResult::Failed { error } => write!(f, "failed: {error}"),
            LastResult::NoHandler { node } => write!(f, "no handler on {node}"),
        }
    }
}

/// What is known of a task's runs ([`crate::RecordKind::Status`], keyed by task name), written
/// by the task's owner in batches (see `DcronBuilder::status_interval`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TaskStatus {
    /// The task (`task`).
    pub task: String,
    /// The node that owns the task (`owner`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The next instant the owner will fire it (`next_fire`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_fire: Option<DateTime<Utc>>,
    /// The scheduled instant of the last completed fire (`last_fire`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fire: Option<DateTime<Utc>>,
    /// The node that ran the last completed fire (`last_node`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_node: Option<String>,
    /// How the last completed fire ended (`last_result`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_result: Option<LastResult>,
    /// Completed fires, successful or not (`run_count`).
    #[serde(default)]
    pub run_count: u64,
    /// Failed fires (`failure_count`).
    #[serde(default)]
    pub failure_count: u64,
    /// When this record was written (`updated_at`).
    pub updated_at: DateTime<Utc>,
}

impl TaskStatus {
    /// An empty status for `task`.
    pub fn new(task: impl Into<String>, now: DateTime<Utc>) -> Self {
        TaskStatus {
            task: task.into(),
            owner: None,
            next_fire: None,
            last_fire: None,
            last_node: None,
            last_result: None,
            run_count: 0,
            failure_count: 0,
            updated_at: now,
        }
    }
}

macro_rules! json_record {
    ($($ty:ty),*) => {$(
        impl $ty {
            /// The stored bytes (JSON).
            pub fn encode(&self) -> Vec<u8> {
                serde_json::to_vec(self).unwrap_or_default()
            }

            /// Decodes stored bytes; `key` names the value in the error.
            ///
            /// # Errors
            /// [`Error::Corrupt`] when the bytes are not such a record.
            pub fn decode(key: &str, bytes: &[u8]) -> Result<Self> {
                serde_json::from_slice(bytes).map_err(|e| Error::Corrupt {
                    key: key.to_string(),
                    reason: e.to_string(),
                })
            }
        }
    )*};
}

json_record!(PauseRecord, TriggerRecord, TaskStatus);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_follow_the_backoff_and_the_cap() {
        let fixed = RetryPolicy::fixed(3, Duration::from_millis(200));
        assert_eq!(fixed.delay(1, 0), Duration::from_millis(200));
        assert_eq!(fixed.delay(2, 0), Duration::from_millis(200));
        let linear = RetryPolicy::linear(5, Duration::from_millis(100));
        assert_eq!(linear.delay(3, 0), Duration::from_millis(300));
        let exp = RetryPolicy::exponential(10, Duration::from_millis(100))
            .max_interval(Duration::from_secs(1));
        assert_eq!(exp.delay(1, 0), Duration::from_millis(100));
        assert_eq!(exp.delay(4, 0), Duration::from_millis(800));
        assert_eq!(exp.delay(5, 0), Duration::from_secs(1));
        // Huge attempt numbers saturate instead of overflowing.
        let uncapped = RetryPolicy::exponential(1000, Duration::from_secs(1));
        assert_eq!(uncapped.delay(999, 0), Duration::from_millis(MAX_DELAY_MS));
    }

    #[test]
    fn jitter_stays_in_the_upper_half_and_is_reproducible() {
        let p = RetryPolicy::fixed(3, Duration::from_millis(1000)).with_jitter();
        let mut seen = std::collections::HashSet::new();
        for seed in 0..200u64 {
            let d = p.delay(1, seed);
            assert!(d >= Duration::from_millis(500) && d <= Duration::from_millis(1000));
            assert_eq!(d, p.delay(1, seed));
            seen.insert(d);
        }
        assert!(seen.len() > 50, "jitter spreads delays: {}", seen.len());
    }

    #[test]
    fn validation_refuses_zero_attempts() {
        assert!(RetryPolicy::fixed(0, Duration::ZERO).validate().is_err());
        assert!(RetryPolicy::fixed(1001, Duration::ZERO).validate().is_err());
        assert!(RetryPolicy::NONE.validate().is_ok());
    }

    #[test]
    fn records_round_trip_and_refuse_garbage() {
        let t = TriggerRecord {
            task: "a@b".into(),
            id: 7,
            requested_at: DateTime::<Utc>::UNIX_EPOCH,
        };
        assert_eq!(t.key(), "a@b@7");
        assert_eq!(TriggerRecord::decode("k", &t.encode()).expect("decodes"), t);
        let mut s = TaskStatus::new("x", DateTime::<Utc>::UNIX_EPOCH);
        s.last_result = Some(LastResult::Failed {
            error: "boom".into(),
        });
        let json = String::from_utf8(s.encode()).expect("utf8");
        assert!(
            json.contains(r#""last_result":{"result":"failed","error":"boom"}"#),
            "{json}"
        );
        assert_eq!(
            TaskStatus::decode("k", json.as_bytes()).expect("decodes"),
            s
        );
        assert!(matches!(
            PauseRecord::decode("pause/x", b"\xff"),
            Err(Error::Corrupt { .. })
        ));
    }
}
