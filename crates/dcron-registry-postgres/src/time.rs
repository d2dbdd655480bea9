//! Checked conversions between Rust durations and instants and PostgreSQL's microseconds.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// Durations beyond this (about a century) count as this, so that `now() + d` stays in range.
pub(crate) const FOREVER_MICROS: i64 = 100 * 365 * 24 * 3600 * 1_000_000;

/// The earliest instant stored: PostgreSQL's `timestamptz` starts at 4713 BC.
const MIN_PG_SECONDS: i64 = -210_000_000_000;

/// `d` in whole microseconds, rounded **up** (a promise of at least `d` stays kept), at least 1
/// for a non-zero `d`, capped at [`FOREVER_MICROS`].
pub(crate) fn duration_micros(d: Duration) -> i64 {
    let micros = d.as_nanos().div_ceil(1000);
    i64::try_from(micros).map_or(FOREVER_MICROS, |m| m.min(FOREVER_MICROS))
}

/// `t` within the range PostgreSQL stores (earlier instants become its earliest one; chrono's
/// latest instant is inside PostgreSQL's range).
pub(crate) fn to_pg_time(t: DateTime<Utc>) -> DateTime<Utc> {
    match DateTime::<Utc>::from_timestamp(MIN_PG_SECONDS, 0) {
        Some(min) if t < min => min,
        _ => t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_up_and_cap() {
        assert_eq!(duration_micros(Duration::from_nanos(1)), 1);
        assert_eq!(duration_micros(Duration::from_nanos(1001)), 2);
        assert_eq!(duration_micros(Duration::from_millis(1500)), 1_500_000);
        assert_eq!(duration_micros(Duration::MAX), FOREVER_MICROS);
        assert_eq!(duration_micros(Duration::ZERO), 0);
    }

    #[test]
    fn instants_clamp_to_postgres_range() {
        assert_eq!(
            to_pg_time(DateTime::<Utc>::MIN_UTC).timestamp(),
            MIN_PG_SECONDS
        );
        assert_eq!(
            to_pg_time(DateTime::<Utc>::MAX_UTC),
            DateTime::<Utc>::MAX_UTC
        );
        let now = Utc::now();
        assert_eq!(to_pg_time(now), now);
    }
}
