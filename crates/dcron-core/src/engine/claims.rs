//! Claim planning: whether a due instant is claimed, the deadline and retention of its claim,
//! how a burst is cut into batches, what each claim outcome means, and which occurrences a
//! backfill claims.
//!
//! The rules (DESIGN §2):
//! - a fire's **deadline** is its instant plus its misfire window; a fire found past it is
//!   missed, never claimed late;
//! - a paused task's instants are skipped, not claimed (nobody else runs them either);
//! - a claim is kept at least until the deadline plus the largest clock skew plus the lease TTL
//!   (plus a margin), so a stale claimer always meets the winner's claim;
//! - a burst goes out in batches: a small first one so its handlers start early, then large
//!   ones;
//! - `WonEarlier` on a first attempt means another path of this node holds the fire already
//!   (not started again); on a retry it is the claim whose reply was lost (started now).

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use crate::clock::until;
use crate::engine::plan::{self, Fires};
use crate::error::Error;
use crate::types::{ClaimOutcome, TaskMeta};

/// The most fires sent in one claim call (larger sets are split into several batches).
pub(crate) const MAX_BATCH: usize = 2048;

/// The first claim batch of a burst: small, so its handlers start early.
pub(crate) const FIRST_BATCH: usize = 256;

/// The most occurrences one backfill call runs.
pub(crate) const MAX_BACKFILL: usize = 10_000;

/// The longest wait between two attempts of a claim batch.
const MAX_CLAIM_BACKOFF: Duration = Duration::from_secs(2);

/// The settings claims depend on.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ClaimTiming {
    /// The largest clock skew between nodes.
    pub(crate) max_clock_skew: Duration,
    /// The lease TTL.
    pub(crate) ttl: Duration,
    /// A margin added to every retention.
    pub(crate) claim_margin: Duration,
    /// The least retention of any claim.
    pub(crate) claim_retention: Duration,
}

impl ClaimTiming {
    /// How long the claim of a fire whose deadline is `deadline` is kept, asked at `now`.
    pub(crate) fn retention(&self, now: DateTime<Utc>, deadline: DateTime<Utc>) -> Duration {
        until(now, deadline)
            .saturating_add(self.max_clock_skew)
            .saturating_add(self.ttl)
            .saturating_add(self.claim_margin)
            .max(self.claim_retention)
    }
}

/// A task's misfire window: its own, or the node's default.
pub(crate) fn window_of(meta: &TaskMeta, default: Duration) -> Duration {
    meta.misfire_window_ms
        .map(Duration::from_millis)
        .unwrap_or(default)
}

/// What becomes of an instant taken from the timer heap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Due {
    /// The task is paused: skipped.
    Paused,
    /// Past its deadline: missed, not claimed.
    Missed,
    /// This node has no handler for the task: not claimed.
    NoHandler,
    /// Claim it; the fire's deadline.
    Claim {
        /// The instant plus the window.
        deadline: DateTime<Utc>,
    },
}

/// Judges a due instant at `now`.
pub(crate) fn judge_due(
    now: DateTime<Utc>,
    instant: DateTime<Utc>,
    window: Duration,
    paused: bool,
    has_handler: bool,
) -> Due {
    let deadline = plan::plus(instant, window);
    if paused {
        Due::Paused
    } else if now > deadline {
        Due::Missed
    } else if !has_handler {
        Due::NoHandler
    } else {
        Due::Claim { deadline }
    }
}

/// How many fires the batch being filled may hold, `sent` fires of the burst having gone out.
pub(crate) fn batch_limit(sent: usize) -> usize {
    if sent == 0 {
        FIRST_BATCH
    } else {
        MAX_BATCH
    }
}

/// The first wait before a claim batch is tried again.
pub(crate) fn first_backoff(retry_backoff: Duration) -> Duration {
    retry_backoff.max(Duration::from_millis(50))
}

/// The wait after `delay` (doubling, capped).
pub(crate) fn next_backoff(delay: Duration) -> Duration {
    delay.saturating_mul(2).min(MAX_CLAIM_BACKOFF)
}

/// What a claim outcome means for the fire.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// This node holds the claim (fresh, or learnt on a retry): start the fire if it may.
    Start {
        /// The fencing token.
        token: u64,
    },
    /// Held by this node since another path claimed it: not started again.
    HeldAlready,
    /// Another node holds it.
    Lost,
    /// The registry refused it past its deadline.
    Late,
    /// The task is deleted.
    Tombstoned,
    /// Planned for a life that ended: learn the current one.
    Superseded,
    /// Undecided: try again while the deadline allows.
    Retry,
    /// Undecided for good.
    Failed(Error),
}

/// Judges the outcome of one fire's claim; `first_attempt` is whether the batch was sent for
/// the first time.
pub(crate) fn judge_outcome(outcome: ClaimOutcome, first_attempt: bool) -> Verdict {
    match outcome {
        ClaimOutcome::WonEarlier { .. } if first_attempt => Verdict::HeldAlready,
        ClaimOutcome::Won { token } | ClaimOutcome::WonEarlier { token } => {
            Verdict::Start { token }
        }
        ClaimOutcome::Lost { .. } => Verdict::Lost,
        ClaimOutcome::Late => Verdict::Late,
        ClaimOutcome::Tombstoned => Verdict::Tombstoned,
        ClaimOutcome::Superseded { .. } => Verdict::Superseded,
        ClaimOutcome::Failed(e) if e.is_retryable() => Verdict::Retry,
        ClaimOutcome::Failed(e) => Verdict::Failed(e),
    }
}

/// Whether a fire still undecided gives up: its deadline (on the monotonic clock) passed, or
/// the node's grace period ended.
pub(crate) fn gives_up<T: PartialOrd>(now: T, deadline: T, cancelled: bool) -> bool {
    now > deadline || cancelled
}

/// What a backfill claims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Backfill {
    /// The occurrences, oldest first.
    pub(crate) instants: Vec<DateTime<Utc>>,
    /// The deadline of every one of them: the request's time plus the window (a backfill is a
    /// deliberate late run).
    pub(crate) deadline: DateTime<Utc>,
    /// The least retention of their claims: as long as the range is old, so that a second
    /// backfill of the same range finds them.
    pub(crate) min_retention: Duration,
}

/// The range `[from, to)` a backfill asked at `now` covers (nothing in the future), or why it
/// covers nothing.
pub(crate) fn backfill_range(
    name: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(DateTime<Utc>, DateTime<Utc>), Error> {
    let to = to.min(now);
    if from >= to {
        return Err(Error::InvalidArgument(format!(
            "backfill of `{name}`: the range [{from}, {to}) is empty or in the future"
        )));
    }
    Ok((from, to))
}

/// The fires of `[from, to)` a backfill asked at `now` claims; never anything before the task's
/// live-since.
pub(crate) fn plan_backfill(
    name: &str,
    fires: &Fires<'_>,
    (from, to): (DateTime<Utc>, DateTime<Utc>),
    now: DateTime<Utc>,
    window: Duration,
) -> Result<Backfill, Error> {
    let before = from
        .checked_sub_signed(TimeDelta::milliseconds(1))
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    let mut instants = fires.between(before, to, MAX_BACKFILL + 1);
    instants.retain(|t| *t >= from && *t < to);
    if instants.len() > MAX_BACKFILL {
        return Err(Error::InvalidArgument(format!(
            "backfill of `{name}`: more than {MAX_BACKFILL} occurrences in the range; split it"
        )));
    }
    Ok(Backfill {
        instants,
        deadline: plan::plus(now, window),
        min_retention: until(from, now).saturating_add(window),
    })
}

/// What [`Dcron::backfill`](crate::Dcron::backfill) found and started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackfillReport {
    /// Occurrences in the range.
    pub occurrences: usize,
    /// Fires this node won and runs.
    pub claimed: usize,
    /// Fires already claimed (they ran, or run, elsewhere).
    pub already_claimed: usize,
    /// Fires refused because the task is tombstoned.
    pub tombstoned: usize,
    /// Batches whose claim failed (registry unreachable until the misfire window closed).
    pub unclaimed: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::{Schedule, SecondsField};
    use crate::types::Life;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::<Utc>::UNIX_EPOCH + TimeDelta::seconds(1_000_000 + s)
    }

    fn ms(m: i64) -> TimeDelta {
        TimeDelta::milliseconds(m)
    }

    #[test]
    fn a_due_instant_is_claimed_only_before_its_deadline() {
        let w = Duration::from_secs(5);
        // Claimed ahead of its instant, and up to its deadline inclusive.
        assert_eq!(
            judge_due(t(10) - ms(100), t(10), w, false, true),
            Due::Claim { deadline: t(15) }
        );
        assert_eq!(
            judge_due(t(15), t(10), w, false, true),
            Due::Claim { deadline: t(15) }
        );
        // One millisecond later (a node frozen meanwhile): missed, never claimed late.
        assert_eq!(judge_due(t(15) + ms(1), t(10), w, false, true), Due::Missed);
        // A zero window: only on time.
        assert_eq!(
            judge_due(t(10) + ms(1), t(10), Duration::ZERO, false, true),
            Due::Missed
        );
    }

    #[test]
    fn pause_wins_over_lateness_and_a_missing_handler() {
        let w = Duration::from_secs(5);
        assert_eq!(judge_due(t(100), t(10), w, true, false), Due::Paused);
        assert_eq!(judge_due(t(100), t(10), w, false, false), Due::Missed);
        assert_eq!(judge_due(t(11), t(10), w, false, false), Due::NoHandler);
    }

    #[test]
    fn a_claim_outlives_its_deadline_by_skew_ttl_and_margin() {
        let timing = ClaimTiming {
            max_clock_skew: Duration::from_secs(1),
            ttl: Duration::from_secs(10),
            claim_margin: Duration::from_secs(2),
            claim_retention: Duration::from_secs(1),
        };
        assert_eq!(timing.retention(t(0), t(5)), Duration::from_secs(18));
        // Past the deadline: the time left is zero, never negative.
        assert_eq!(timing.retention(t(9), t(5)), Duration::from_secs(13));
        // The least retention wins when larger.
        let long = ClaimTiming {
            claim_retention: Duration::from_secs(3600),
            ..timing
        };
        assert_eq!(long.retention(t(0), t(5)), Duration::from_secs(3600));
        let huge = ClaimTiming {
            ttl: Duration::MAX,
            ..timing
        };
        assert_eq!(huge.retention(t(0), t(5)), Duration::MAX);
    }

    #[test]
    fn a_burst_starts_small() {
        assert_eq!(batch_limit(0), FIRST_BATCH);
        assert_eq!(batch_limit(FIRST_BATCH), MAX_BATCH);
        assert_eq!(first_backoff(Duration::ZERO), Duration::from_millis(50));
        assert_eq!(
            next_backoff(Duration::from_millis(600)),
            Duration::from_millis(1200)
        );
        assert_eq!(next_backoff(Duration::from_millis(1200)), MAX_CLAIM_BACKOFF);
        assert_eq!(next_backoff(Duration::MAX), MAX_CLAIM_BACKOFF);
    }

    #[test]
    fn won_earlier_starts_a_fire_only_on_a_retry() {
        let held = ClaimOutcome::WonEarlier { token: 7 };
        assert!(matches!(judge_outcome(held, true), Verdict::HeldAlready));
        let held = ClaimOutcome::WonEarlier { token: 7 };
        assert!(matches!(
            judge_outcome(held, false),
            Verdict::Start { token: 7 }
        ));
        assert!(matches!(
            judge_outcome(ClaimOutcome::Won { token: 3 }, true),
            Verdict::Start { token: 3 }
        ));
        assert!(matches!(
            judge_outcome(ClaimOutcome::Lost { holder: None }, true),
            Verdict::Lost
        ));
        assert!(matches!(
            judge_outcome(ClaimOutcome::Superseded { current: Some(2) }, true),
            Verdict::Superseded
        ));
        let retryable = Error::unavailable("connection reset");
        assert!(retryable.is_retryable());
        assert!(matches!(
            judge_outcome(ClaimOutcome::Failed(retryable), true),
            Verdict::Retry
        ));
        let fatal = Error::InvalidArgument("bad".into());
        assert!(matches!(
            judge_outcome(ClaimOutcome::Failed(fatal), true),
            Verdict::Failed(_)
        ));
        // An undecided fire gives up at its deadline, or when the grace period ends.
        assert!(!gives_up(1, 2, false));
        assert!(gives_up(3, 2, false));
        assert!(gives_up(1, 2, true));
    }

    #[test]
    fn a_backfill_claims_the_range_from_live_since_only() {
        let s = Schedule::parse("* * * * * *", None, SecondsField::Optional).expect("parses");
        let fires = Fires {
            schedule: &s,
            life: Life::new(1, t(10)),
            one_shot: false,
            run_if_past: false,
        };
        let w = Duration::from_secs(5);
        let range = backfill_range("a", t(5), t(15), t(100)).expect("a range");
        let plan = plan_backfill("a", &fires, range, t(100), w).expect("planned");
        // [5, 15) but nothing before live-since (+10 s).
        assert_eq!(plan.instants, (10..15).map(t).collect::<Vec<_>>());
        assert_eq!(plan.deadline, t(105));
        assert_eq!(plan.min_retention, Duration::from_secs(100));
        // The end is cut at now; an empty or future range is refused.
        assert_eq!(
            backfill_range("a", t(5), t(500), t(100)).ok(),
            Some((t(5), t(100)))
        );
        assert!(matches!(
            backfill_range("a", t(100), t(200), t(100)),
            Err(Error::InvalidArgument(_))
        ));
        // Too many occurrences: split it.
        let wide = backfill_range("a", t(0), t(20_000), t(30_000)).expect("a range");
        assert!(matches!(
            plan_backfill("a", &fires, wide, t(30_000), w),
            Err(Error::InvalidArgument(_))
        ));
    }
}
