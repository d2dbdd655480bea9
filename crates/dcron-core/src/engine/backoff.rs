//! How long a node waits before it tries to register again.

use std::time::Duration;

/// The longest wait between two registration attempts.
const MAX_REGISTER_BACKOFF: Duration = Duration::from_secs(30);

/// The wait before registration attempt `failures + 1`: `base × 2^(failures − 1)`, capped at
/// 30 s, spread over `[delay/2, delay]` by a jitter derived from the node's `seed`.
pub(crate) fn register_backoff(base: Duration, failures: u32, seed: u64) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    let delay = base
        .max(Duration::from_millis(50))
        .saturating_mul(1u32 << exp)
        .min(MAX_REGISTER_BACKOFF);
    let millis = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
    let half = millis / 2;
    let seed = seed ^ u64::from(failures);
    Duration::from_millis(half + crate::policy::splitmix(seed) % (millis - half + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_backs_off_with_jitter_and_a_cap() {
        let base = Duration::from_millis(100);
        for failures in 1..40 {
            let d = register_backoff(base, failures, 42);
            let full = base
                .saturating_mul(1 << failures.saturating_sub(1).min(16))
                .min(MAX_REGISTER_BACKOFF);
            assert!(d >= full / 2 && d <= full, "{failures}: {d:?} vs {full:?}");
            // The same node waits the same (a replayed simulation is the same).
            assert_eq!(d, register_backoff(base, failures, 42));
        }
        assert!(register_backoff(Duration::MAX, u32::MAX, 1) <= MAX_REGISTER_BACKOFF);
        assert!(register_backoff(Duration::ZERO, 1, 1) >= Duration::from_millis(25));
    }
}
