//! [`ManualClock`]: a wall clock that moves only when a test says so.
//!
//! For schedule and catch-up tests that need exact wall instants. Monotonic time (leases,
//! timers) stays tokio's, so combine it with `tokio::time::pause()` and advance both together
//! when a test needs them in step — or use [`dcron_core::TokioClock`], which derives wall time
//! from tokio's clock.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use dcron_core::Clock;

/// A shared, settable wall clock; clones read and move the same time.
#[derive(Clone, Debug)]
pub struct ManualClock {
    now: Arc<Mutex<DateTime<Utc>>>,
}

impl ManualClock {
    /// A clock reading `at` until moved.
    pub fn new(at: DateTime<Utc>) -> Self {
        ManualClock {
            now: Arc::new(Mutex::new(at)),
        }
    }

    /// Sets the time (it may go backwards, as a corrected clock does).
    pub fn set(&self, at: DateTime<Utc>) {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner) = at;
    }

    /// Moves the time forward by `by` (saturating at the largest representable instant).
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(PoisonError::into_inner);
        let step = chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX);
        *now = now
            .checked_add_signed(step)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::instant;

    #[test]
    fn moves_only_when_told_and_clones_share_it() {
        let clock = ManualClock::new(instant(0));
        let other = clock.clone();
        assert_eq!(clock.now(), instant(0));
        clock.advance(Duration::from_millis(1500));
        assert_eq!(other.now(), instant(1500));
        other.set(instant(-60_000));
        assert_eq!(clock.now(), instant(-60_000));
        clock.advance(Duration::MAX);
        assert_eq!(clock.now(), DateTime::<Utc>::MAX_UTC);
    }
}
