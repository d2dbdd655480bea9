//! Waiting in tests: poll a condition until it holds, with a deadline; or watch that it keeps
//! holding for a bounded window.
//!
//! [`wait_until`] is the one way a dcron test waits for something to happen (a node listed,
//! a takeover, a claim swept): never a fixed sleep, which is either too short on a loaded CI
//! machine or wastes time everywhere else. The polls run on tokio's clock, so under
//! `tokio::time::pause` a wait costs no wall time. [`holds_until`] is its mirror for "nothing
//! happens" checks: an observation window that fails at the first poll where the condition
//! breaks.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// The first pause between two polls; it doubles up to [`MAX_POLL_INTERVAL`].
pub const FIRST_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// The longest pause between two polls of [`wait_until`] and [`holds_until`].
pub const MAX_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// What a condition polled by [`wait_until`] answers: a plain `bool`, or a `Result<bool, E>`
/// whose error ends the wait at once.
pub trait Condition {
    /// The error that ends a wait early ([`Infallible`] for `bool`).
    type Error;

    /// Whether the condition holds, or the error that ends the wait.
    ///
    /// # Errors
    /// The condition's own error.
    fn holds(self) -> Result<bool, Self::Error>;
}

impl Condition for bool {
    type Error = Infallible;

    fn holds(self) -> Result<bool, Infallible> {
        Ok(self)
    }
}

impl<E> Condition for Result<bool, E> {
    type Error = E;

    fn holds(self) -> Result<bool, E> {
        self
    }
}

/// Why [`wait_until`] gave up.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WaitError<E> {
    /// The condition did not hold by the deadline.
    TimedOut {
        /// What was awaited, as the caller named it.
        what: String,
        /// How long the wait lasted.
        within: Duration,
        /// How many times the condition was polled.
        polls: u32,
    },
    /// The condition answered an error; the wait ended there.
    Failed(E),
}

impl<E: std::fmt::Display> std::fmt::Display for WaitError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WaitError::TimedOut {
                what,
                within,
                polls,
            } => write!(
                f,
                "timed out after {within:?} waiting for: {what} (polled {polls} times)"
            ),
            WaitError::Failed(e) => write!(f, "the awaited condition failed: {e}"),
        }
    }
}

impl<E: std::fmt::Debug + std::fmt::Display> std::error::Error for WaitError<E> {}

/// Polls `condition` until it holds, for at most `within` (tokio's clock: virtual time under
/// `tokio::time::pause`). The pause between polls starts at [`FIRST_POLL_INTERVAL`] and
/// doubles up to [`MAX_POLL_INTERVAL`]; the last poll starts at or after the deadline, so a
/// condition that becomes true just in time is still seen.
///
/// `what` names the awaited state in the error ("node n1 listed"), so a test that times out
/// says what it waited for.
///
/// # Errors
/// [`WaitError::TimedOut`] when the condition did not hold by the deadline;
/// [`WaitError::Failed`] with the first error a fallible condition answers.
///
/// # Examples
/// ```
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let polls = AtomicU32::new(0);
/// dcron_testkit::wait_until("the third poll", Duration::from_secs(5), || async {
///     polls.fetch_add(1, Ordering::SeqCst) >= 2
/// })
/// .await
/// .expect("three polls within 5 s");
///
/// let never = dcron_testkit::wait_until("never", Duration::from_millis(50), || async { false });
/// assert!(matches!(never.await, Err(dcron_testkit::WaitError::TimedOut { .. })));
/// # }
/// ```
pub async fn wait_until<F, Fut>(
    what: &str,
    within: Duration,
    mut condition: F,
) -> Result<(), WaitError<<Fut::Output as Condition>::Error>>
where
    F: FnMut() -> Fut,
    Fut: Future,
    Fut::Output: Condition,
{
    let deadline = Instant::now() + within;
    let mut pause = FIRST_POLL_INTERVAL;
    let mut polls: u32 = 0;
    loop {
        let polled = Instant::now();
        polls = polls.saturating_add(1);
        if condition().await.holds().map_err(WaitError::Failed)? {
            return Ok(());
        }
        if polled >= deadline {
            return Err(WaitError::TimedOut {
                what: what.to_owned(),
                within,
                polls,
            });
        }
        tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
        pause = pause.saturating_mul(2).min(MAX_POLL_INTERVAL);
    }
}

/// Polls `condition` until `until`, answering `false` at the first poll where it does not hold,
/// and `true` when it held at every poll, the last of which starts at or after `until`. For
/// promises of the form "still there at least until" and for "nothing happens" windows: it
/// never sleeps past the next poll, so a break is seen within [`MAX_POLL_INTERVAL`].
///
/// # Errors
/// The first error a fallible condition answers.
pub async fn holds_until<F, Fut>(
    until: Instant,
    mut condition: F,
) -> Result<bool, <Fut::Output as Condition>::Error>
where
    F: FnMut() -> Fut,
    Fut: Future,
    Fut::Output: Condition,
{
    loop {
        let polled = Instant::now();
        if !condition().await.holds()? {
            return Ok(false);
        }
        if polled >= until {
            return Ok(true);
        }
        let left = until.saturating_duration_since(Instant::now());
        tokio::time::sleep(left.min(MAX_POLL_INTERVAL)).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_on_virtual_time_and_names_what_timed_out() {
        let started = Instant::now();
        let err = wait_until("the flag", Duration::from_secs(30), || async { false })
            .await
            .expect_err("never holds");
        assert!(started.elapsed() >= Duration::from_secs(30));
        let WaitError::TimedOut { what, polls, .. } = &err else {
            panic!("{err}");
        };
        assert_eq!(what, "the flag");
        assert!(*polls > 1);
        assert!(err.to_string().contains("waiting for: the flag"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn returns_once_the_condition_holds() {
        let polls = AtomicU32::new(0);
        let started = Instant::now();
        wait_until("the fifth poll", Duration::from_secs(30), || async {
            polls.fetch_add(1, Ordering::SeqCst) >= 4
        })
        .await
        .expect("holds at the fifth poll");
        assert_eq!(polls.load(Ordering::SeqCst), 5);
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_ends_the_wait_at_once() {
        let polls = AtomicU32::new(0);
        let err = wait_until("ok", Duration::from_secs(30), || async {
            polls.fetch_add(1, Ordering::SeqCst);
            Err::<bool, _>("boom")
        })
        .await
        .expect_err("fails");
        assert_eq!(err, WaitError::Failed("boom"));
        assert_eq!(polls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn holds_until_sees_a_break() {
        let polls = AtomicU32::new(0);
        let until = Instant::now() + Duration::from_secs(5);
        let held = holds_until(until, || async { polls.fetch_add(1, Ordering::SeqCst) < 3 }).await;
        assert_eq!(held, Ok::<_, Infallible>(false));
        let whole = holds_until(until, || async { true }).await;
        assert_eq!(whole, Ok::<_, Infallible>(true));
        assert!(Instant::now() >= until);
    }
}
