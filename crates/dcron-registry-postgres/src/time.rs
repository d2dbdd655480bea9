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

/// `t` rounded **up** to the microsecond (what PostgreSQL keeps), then as [`to_pg_time`]: a
/// live-since stored this way never moves earlier, so no fire before it joins the life.
pub(crate) fn to_pg_time_ceil(t: DateTime<Utc>) -> DateTime<Utc> {
    let rem = i64::from(t.timestamp_subsec_nanos() % 1000);
    let up = if rem == 0 {
        t
    } else {
        t.checked_add_signed(chrono::Duration::nanoseconds(1000 - rem))
            .unwrap_or(t)
    };
    to_pg_time(up)
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
    fn live_since_rounds_up_to_the_microsecond() {
        let t = DateTime::<Utc>::from_timestamp(1_700_000_000, 1_500).expect("valid");
        assert_eq!(to_pg_time_ceil(t).timestamp_subsec_nanos(), 2_000);
        let exact = DateTime::<Utc>::from_timestamp(1_700_000_000, 3_000).expect("valid");
        assert_eq!(to_pg_time_ceil(exact), exact);
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
