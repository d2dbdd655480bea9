//! Injected time: wall time for cron math, monotonic time for leases and timers.
//!
//! Nothing in dcron reads the system clock directly. [`SystemClock`] is the production clock;
//! [`TokioClock`] derives wall time from tokio's `Instant`, so under `tokio::time::pause()` the
//! whole cluster (timers, TTLs, cron math) runs on virtual time, and each node can be given its
//! own skew to simulate clocks that disagree.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

/// A source of wall and monotonic time.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Wall-clock time, used for schedules and recorded instants.
    fn now(&self) -> DateTime<Utc>;
    /// Monotonic time, used for leases, back-offs and timers.
    fn monotonic(&self) -> Instant {
        Instant::now()
    }
    /// Whether this clock follows real time, so that waiting for an instant may use the
    /// operating system's sleep for the last few milliseconds (which is precise to
    /// microseconds, where tokio's timers round to milliseconds). `false` by default: a clock
    /// driven by virtual time must only be waited on with tokio's timers.
    fn follows_real_time(&self) -> bool {
        false
    }
}

/// The system's wall clock and tokio's monotonic clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
    fn follows_real_time(&self) -> bool {
        true
    }
}

/// Wall time derived from tokio's monotonic `Instant`: `base + (Instant::now() - start) + skew`.
///
/// Under `tokio::time::pause()` both advance together in virtual time. Clones share the skew,
/// which can be changed at run time with [`TokioClock::set_skew_ms`].
#[derive(Clone, Debug)]
pub struct TokioClock {
    base: DateTime<Utc>,
    start: Instant,
    skew_ms: Arc<AtomicI64>,
}

impl TokioClock {
    /// A clock that reads `base` now and advances with tokio's clock.
    pub fn starting_at(base: DateTime<Utc>) -> Self {
        TokioClock {
            base,
            start: Instant::now(),
            skew_ms: Arc::new(AtomicI64::new(0)),
        }
    }

    /// A clock sharing this one's base but with its own skew (for another simulated node).
    pub fn with_own_skew(&self, skew_ms: i64) -> Self {
        TokioClock {
            base: self.base,
            start: self.start,
            skew_ms: Arc::new(AtomicI64::new(skew_ms)),
        }
    }

    /// Sets the skew in milliseconds (positive: this clock runs ahead).
    pub fn set_skew_ms(&self, skew_ms: i64) {
        self.skew_ms.store(skew_ms, Ordering::Relaxed);
    }

    /// The current skew in milliseconds.
    pub fn skew_ms(&self) -> i64 {
        self.skew_ms.load(Ordering::Relaxed)
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = Instant::now().saturating_duration_since(self.start);
        let skew = chrono::Duration::milliseconds(self.skew_ms());
        self.base + chrono::Duration::from_std(elapsed).unwrap_or(chrono::Duration::zero()) + skew
    }
}

/// How long to sleep from `now` until the wall instant `target` (zero if it has passed).
pub fn until(now: DateTime<Utc>, target: DateTime<Utc>) -> Duration {
    (target - now).to_std().unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_virtual_time_and_skew() {
        let base = DateTime::parse_from_rfc3339("2026-03-01T00:00:00Z")
            .expect("valid")
            .with_timezone(&Utc);
        let clock = TokioClock::starting_at(base);
        assert_eq!(clock.now(), base);
        tokio::time::sleep(Duration::from_secs(90)).await;
        assert_eq!(clock.now(), base + chrono::Duration::seconds(90));
        let skewed = clock.with_own_skew(-5_000);
        assert_eq!(skewed.now(), base + chrono::Duration::seconds(85));
        assert_eq!(clock.now(), base + chrono::Duration::seconds(90));
        assert_eq!(until(clock.now(), base), Duration::ZERO);
        assert_eq!(until(base, clock.now()), Duration::from_secs(90));
    }
}
