//! The timer heap: the next instant of every owned task, earliest first, and when the driver
//! must wake up to claim them.
//!
//! An entry carries the generation its task had when it was pushed; a task whose generation
//! moved since (it was lost, changed, tombstoned or started a new life) has its old entries
//! skipped instead of searched for and removed. Claims go out `claim_ahead` before an instant:
//! the wake-up is that much earlier, and everything due within the lead is taken at once.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

/// An instant of a task, as the heap holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Timer {
    /// The instant, in milliseconds since the epoch (the fire precision).
    pub(crate) at_ms: i64,
    /// The task's generation when it was scheduled.
    pub(crate) generation: u64,
    /// The task's name.
    pub(crate) name: Arc<str>,
}

impl Timer {
    /// The instant as a time (`None` only for a value no schedule produces).
    pub(crate) fn instant(&self) -> Option<DateTime<Utc>> {
        DateTime::<Utc>::from_timestamp_millis(self.at_ms)
    }
}

/// The min-heap of scheduled instants.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<(i64, u64, Arc<str>)>>,
}

impl Timers {
    /// Schedules `name` (at `generation`) at `at`.
    pub(crate) fn push(&mut self, at: DateTime<Utc>, generation: u64, name: Arc<str>) {
        self.heap
            .push(Reverse((at.timestamp_millis(), generation, name)));
    }

    /// Forgets every entry (the node owns nothing any more).
    pub(crate) fn clear(&mut self) {
        self.heap.clear();
    }

    /// How many entries the heap holds, stale ones included.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    /// The earliest live instant in milliseconds, dropping the stale entries above it;
    /// `live(name, generation)` says whether an entry still counts.
    pub(crate) fn earliest(&mut self, live: impl Fn(&str, u64) -> bool) -> Option<i64> {
        while let Some(Reverse((_, generation, name))) = self.heap.peek() {
            if live(name, *generation) {
                break;
            }
            self.heap.pop();
        }
        self.heap.peek().map(|Reverse((ms, _, _))| *ms)
    }

    /// Takes the next entry at or before `horizon_ms`, skipping the stale ones; `None` when
    /// nothing more is due.
    pub(crate) fn pop_due(
        &mut self,
        horizon_ms: i64,
        live: impl Fn(&str, u64) -> bool,
    ) -> Option<Timer> {
        while let Some(Reverse((ms, _, _))) = self.heap.peek() {
            if *ms > horizon_ms {
                return None;
            }
            let Reverse((at_ms, generation, name)) = self.heap.pop()?;
            if live(&name, generation) {
                return Some(Timer {
                    at_ms,
                    generation,
                    name,
                });
            }
        }
        None
    }
}

/// The claim lead in milliseconds (a lead too large to count is no lead).
pub(crate) fn lead_ms(claim_ahead: Duration) -> i64 {
    i64::try_from(claim_ahead.as_millis()).unwrap_or(0)
}

/// When the driver wakes up for the instant `at_ms`: `claim_ahead` before it.
pub(crate) fn wake_at(at_ms: i64, claim_ahead: Duration) -> Option<DateTime<Utc>> {
    DateTime::<Utc>::from_timestamp_millis(at_ms.saturating_sub(lead_ms(claim_ahead)))
}

/// The latest instant (milliseconds) claimed at `now`: everything due within the lead.
pub(crate) fn horizon_ms(now: DateTime<Utc>, claim_ahead: Duration) -> i64 {
    now.timestamp_millis().saturating_add(lead_ms(claim_ahead))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::plan::Fires;
    use crate::schedule::{Schedule, SecondsField};
    use crate::types::Life;
    use chrono::TimeDelta;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::<Utc>::UNIX_EPOCH + TimeDelta::seconds(1_000_000 + s)
    }

    fn name(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn earliest_first_and_stale_entries_are_skipped() {
        let mut timers = Timers::default();
        timers.push(t(3), 1, name("c"));
        timers.push(t(1), 1, name("a"));
        timers.push(t(2), 7, name("b"));
        // `a` moved to generation 2 (it was lost or changed): its entry no longer counts.
        let live = |n: &str, g: u64| !(n == "a" && g == 1);
        assert_eq!(timers.earliest(live), Some(t(2).timestamp_millis()));
        assert_eq!(timers.len(), 2, "the stale top was dropped");
        let horizon = t(3).timestamp_millis();
        let first = timers.pop_due(horizon, live).expect("b is due");
        assert_eq!((&*first.name, first.generation), ("b", 7));
        assert_eq!(first.instant(), Some(t(2)));
        assert_eq!(
            timers.pop_due(horizon, live).map(|x| x.name),
            Some(name("c"))
        );
        assert_eq!(timers.pop_due(horizon, live), None);
    }

    #[test]
    fn nothing_after_the_horizon_is_taken() {
        let mut timers = Timers::default();
        timers.push(t(10), 1, name("a"));
        let live = |_: &str, _: u64| true;
        let lead = Duration::from_millis(100);
        // 150 ms before the instant: not yet within the claim lead.
        let early = t(10) - TimeDelta::milliseconds(150);
        assert_eq!(timers.pop_due(horizon_ms(early, lead), live), None);
        // 100 ms before: claimed ahead.
        let ahead = t(10) - TimeDelta::milliseconds(100);
        assert!(timers.pop_due(horizon_ms(ahead, lead), live).is_some());
    }

    #[test]
    fn the_wake_up_comes_the_lead_before_the_instant() {
        let at = t(10).timestamp_millis();
        assert_eq!(
            wake_at(at, Duration::from_millis(100)),
            Some(t(10) - TimeDelta::milliseconds(100))
        );
        assert_eq!(wake_at(at, Duration::ZERO), Some(t(10)));
        // A lead too large to count is none, never an overflow.
        assert_eq!(lead_ms(Duration::MAX), 0);
        assert_eq!(horizon_ms(t(0), Duration::MAX), t(0).timestamp_millis());
        assert_eq!(wake_at(i64::MIN, Duration::from_secs(1)), None);
    }

    #[test]
    fn a_one_shot_is_scheduled_once_and_a_new_life_from_its_live_since() {
        let s = Schedule::parse("* * * * * *", None, SecondsField::Optional).expect("parses");
        let mut fires = Fires {
            schedule: &s,
            life: Life::new(1, t(5)),
            one_shot: true,
            run_if_past: false,
        };
        let mut timers = Timers::default();
        let live = |_: &str, g: u64| g == 1;
        // Gained at +2 s: its one fire is its live-since.
        let first = fires.next_after(t(2)).expect("one fire");
        assert_eq!(first, t(5));
        timers.push(first, 1, name("once"));
        let due = timers.pop_due(t(5).timestamp_millis(), live).expect("due");
        // After it fired, the driver asks for the next instant after it: there is none.
        assert_eq!(fires.next_after(due.instant().expect("valid")), None);
        assert_eq!(timers.earliest(live), None);
        // A reuse starts a new life (generation 2, live since +40 s): the old entry is stale,
        // and the new life's one fire is at its own live-since, not before.
        timers.push(t(6), 1, name("once"));
        fires.life = Life::new(2, t(40));
        let live2 = |_: &str, g: u64| g == 2;
        assert_eq!(timers.earliest(live2), None);
        assert_eq!(fires.next_after(t(6)), Some(t(40)));
    }
}
