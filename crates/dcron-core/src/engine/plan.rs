//! Which instants of a task are fires, and which of them a node catches up: pure functions of
//! the schedule, the task's life and the node's view, unit-tested without a runtime.
//!
//! The rules (DESIGN §2):
//! - a task's fires are exactly its schedule's instants **at or after its live-since**; nothing
//!   of a previous life and nothing before the task existed ever fires;
//! - a **one-shot** has one fire in its life: the first instant at or after live-since (or the
//!   live-since itself for an `@at` in the past added with "run if past"), whatever the misfire
//!   policy, catch-up or handover;
//! - when a node gains a task it catches up the unclaimed instants of the task's misfire window.
//!   Instants that fell while some node of the cluster was working (at or after the **gap
//!   floor**) are an ownership gap, not a misfire: every one of them is caught up, whatever the
//!   policy. Older instants fell while no node was known to run, and the misfire policy decides
//!   (`Skip` none, `FireOnce` the latest, `FireAll` the latest `max`);
//! - nothing that fell inside a pause is caught up, and a paused task catches up nothing.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use crate::schedule::Schedule;
use crate::types::{Life, MisfirePolicy};

/// The most gap instants one catch-up claims for one task (the latest are kept).
pub(crate) const MAX_GAP_FIRES: usize = 1_000;

/// `t - d`, saturating at the earliest representable instant.
pub(crate) fn minus(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(d)
        .ok()
        .and_then(|d| t.checked_sub_signed(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// `t + d`, saturating at the latest representable instant.
pub(crate) fn plus(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The instant just before `t` (one millisecond, the fire precision), saturating.
fn just_before(t: DateTime<Utc>) -> DateTime<Utc> {
    t.checked_sub_signed(TimeDelta::milliseconds(1))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// What a task's fires are made of.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fires<'a> {
    /// The schedule.
    pub(crate) schedule: &'a Schedule,
    /// The task's current life.
    pub(crate) life: Life,
    /// One fire in its life.
    pub(crate) one_shot: bool,
    /// A one-time schedule whose instant precedes live-since fires once at live-since.
    pub(crate) run_if_past: bool,
}

impl Fires<'_> {
    /// The one fire of a one-shot (or of any task, its first): the first instant at or after
    /// live-since.
    pub(crate) fn first(&self) -> Option<DateTime<Utc>> {
        match self.schedule.next_after(just_before(self.life.live_since)) {
            Some(t) => Some(t),
            None if self.run_if_past && self.schedule.is_one_time() => Some(self.life.live_since),
            None => None,
        }
    }

    /// The next fire strictly after `after`.
    pub(crate) fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if self.one_shot {
            return self.first().filter(|t| *t > after);
        }
        let floor = just_before(self.life.live_since);
        let from = after.max(floor);
        match self.schedule.next_after(from) {
            Some(t) => Some(t),
            // An `@at` in the past with "run if past": its one fire is live-since.
            None if self.run_if_past && self.schedule.is_one_time() => {
                self.first().filter(|t| *t > after)
            }
            None => None,
        }
    }

    /// The fires in `(from_exclusive, to_inclusive]`, oldest first, at most `limit`.
    pub(crate) fn between(
        &self,
        from_exclusive: DateTime<Utc>,
        to_inclusive: DateTime<Utc>,
        limit: usize,
    ) -> Vec<DateTime<Utc>> {
        if self.one_shot || (self.run_if_past && self.schedule.is_one_time()) {
            return self
                .first()
                .filter(|t| *t > from_exclusive && *t <= to_inclusive)
                .into_iter()
                .collect();
        }
        let from = from_exclusive.max(just_before(self.life.live_since));
        self.schedule.occurrences_in(from, to_inclusive, limit)
    }
}

/// The state of a task's pause, as catch-up needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pause {
    /// Never paused (or nothing known).
    None,
    /// Paused now.
    Paused,
    /// Resumed at this instant: nothing before it is caught up.
    ResumedAt(DateTime<Utc>),
}

/// What a node knows when it catches a task up.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CatchUp<'a> {
    /// The task's fires.
    pub(crate) fires: Fires<'a>,
    /// The node's wall clock now.
    pub(crate) now: DateTime<Utc>,
    /// The task's misfire window: nothing older than `now - window` is caught up.
    pub(crate) window: Duration,
    /// The task's misfire policy, for instants before the gap floor.
    pub(crate) policy: MisfirePolicy,
    /// Instants at or after this fell while some node of the cluster was working.
    pub(crate) gap_floor: Option<DateTime<Utc>>,
    /// The pause state.
    pub(crate) pause: Pause,
}

/// The instants to claim when a node gains a task, oldest first (see the module rules).
pub(crate) fn catch_up(c: &CatchUp<'_>) -> Vec<DateTime<Utc>> {
    let mut lower = minus(c.now, c.window);
    match c.pause {
        Pause::Paused => return Vec::new(),
        Pause::ResumedAt(at) => lower = lower.max(at),
        Pause::None => {}
    }
    // A window that reaches the whole history is still bounded by the search itself.
    let all = c.fires.between(lower, c.now, MAX_GAP_FIRES * 4);
    let split = match c.gap_floor {
        Some(floor) => all.partition_point(|t| *t < floor),
        None => all.len(),
    };
    let (misfired, gap) = all.split_at(split);
    let keep = match c.policy {
        MisfirePolicy::Skip => 0,
        MisfirePolicy::FireOnce => 1,
        MisfirePolicy::FireAll { max } => max as usize,
    };
    let mut out: Vec<DateTime<Utc>> = misfired[misfired.len().saturating_sub(keep)..].to_vec();
    out.extend_from_slice(&gap[gap.len().saturating_sub(MAX_GAP_FIRES)..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::SecondsField;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::<Utc>::UNIX_EPOCH + TimeDelta::seconds(1_000_000 + s)
    }

    fn every_second() -> Schedule {
        Schedule::parse("* * * * * *", None, SecondsField::Optional).expect("parses")
    }

    fn fires(s: &Schedule, live_since: i64, one_shot: bool) -> Fires<'_> {
        Fires {
            schedule: s,
            life: Life::new(1, t(live_since)),
            one_shot,
            run_if_past: false,
        }
    }

    fn cu<'a>(f: Fires<'a>, now: i64, policy: MisfirePolicy, floor: Option<i64>) -> CatchUp<'a> {
        CatchUp {
            fires: f,
            now: t(now),
            window: Duration::from_secs(60),
            policy,
            gap_floor: floor.map(t),
            pause: Pause::None,
        }
    }

    #[test]
    fn nothing_before_live_since_ever_fires() {
        let s = every_second();
        let f = fires(&s, 10, false);
        // A static task registered at +10 s never fires +9 s, whatever the window or policy.
        let all = catch_up(&cu(f, 20, MisfirePolicy::FireAll { max: 100 }, Some(0)));
        assert_eq!(all.first(), Some(&t(10)));
        assert_eq!(all.len(), 11);
        assert_eq!(f.next_after(t(0)), Some(t(10)));
        assert!(f.between(t(0), t(9), 100).is_empty());
    }

    #[test]
    fn an_ownership_gap_is_caught_up_whole_under_fire_once() {
        let s = every_second();
        let f = fires(&s, 0, false);
        // Some node has worked since +5 s: every instant from then is a gap instant.
        let out = catch_up(&cu(f, 30, MisfirePolicy::FireOnce, Some(5)));
        // The latest instant before the floor (policy FireOnce), then the whole gap.
        assert_eq!(out.first(), Some(&t(4)));
        assert_eq!(&out[1..], &(5..=30).map(t).collect::<Vec<_>>()[..]);
        // Nobody worked: the policy alone decides.
        assert_eq!(
            catch_up(&cu(f, 30, MisfirePolicy::FireOnce, None)),
            vec![t(30)]
        );
        assert!(catch_up(&cu(f, 30, MisfirePolicy::Skip, None)).is_empty());
        assert_eq!(
            catch_up(&cu(f, 30, MisfirePolicy::FireAll { max: 3 }, None)),
            vec![t(28), t(29), t(30)]
        );
    }

    #[test]
    fn the_window_bounds_everything() {
        let s = every_second();
        let f = fires(&s, 0, false);
        let out = catch_up(&cu(f, 1000, MisfirePolicy::FireOnce, Some(0)));
        assert_eq!(out.len(), 60);
        assert_eq!(out[0], t(941));
    }

    #[test]
    fn a_one_shot_has_one_fire_in_its_life() {
        let s = every_second();
        let f = fires(&s, 10, true);
        assert_eq!(f.first(), Some(t(10)));
        assert_eq!(f.next_after(t(0)), Some(t(10)));
        assert_eq!(f.next_after(t(10)), None);
        assert_eq!(f.between(t(0), t(100), 100), vec![t(10)]);
        for policy in [
            MisfirePolicy::Skip,
            MisfirePolicy::FireOnce,
            MisfirePolicy::FireAll { max: 100 },
        ] {
            // Its owner crashed before the instant; the new owner finds one instant at most.
            assert_eq!(catch_up(&cu(f, 30, policy, Some(0))), vec![t(10)]);
        }
        // Past its window: gone for good.
        assert!(catch_up(&cu(f, 100, MisfirePolicy::FireAll { max: 9 }, Some(0))).is_empty());
    }

    #[test]
    fn an_at_in_the_past_runs_at_live_since_only_when_asked() {
        let s = Schedule::parse("@at 1970-01-12T13:46:30Z", None, SecondsField::Optional)
            .expect("parses");
        let live = DateTime::<Utc>::UNIX_EPOCH + TimeDelta::seconds(2_000_000);
        let mut f = Fires {
            schedule: &s,
            life: Life::new(1, live),
            one_shot: true,
            run_if_past: false,
        };
        assert_eq!(f.first(), None);
        f.run_if_past = true;
        assert_eq!(f.first(), Some(live));
        assert_eq!(
            f.next_after(minus(live, Duration::from_secs(1))),
            Some(live)
        );
    }

    #[test]
    fn pauses_hide_instants() {
        let s = every_second();
        let f = fires(&s, 0, false);
        let mut c = cu(f, 30, MisfirePolicy::FireAll { max: 100 }, Some(0));
        c.pause = Pause::Paused;
        assert!(catch_up(&c).is_empty());
        c.pause = Pause::ResumedAt(t(25));
        assert_eq!(catch_up(&c), (26..=30).map(t).collect::<Vec<_>>());
    }

    #[test]
    fn extreme_windows_do_not_overflow() {
        let s = every_second();
        let f = fires(&s, 0, false);
        let mut c = cu(f, 30, MisfirePolicy::FireAll { max: u32::MAX }, Some(0));
        c.window = Duration::MAX;
        assert_eq!(catch_up(&c).len(), 31);
        assert_eq!(minus(t(0), Duration::MAX), DateTime::<Utc>::MIN_UTC);
        assert_eq!(plus(t(0), Duration::MAX), DateTime::<Utc>::MAX_UTC);
    }
}
