//! Durations on the command line (`500ms`, `2s`, `1m30s`, `1h`) and in human output.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// Parses a duration: one or more `<number><unit>` pairs with units `ms`, `s`, `m`, `h`, `d`
/// (`1m30s`), or a bare number of seconds (`5`).
///
/// # Errors
/// A message naming the problem (clap turns it into a usage error).
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    let s = input.trim();
    let bad = || format!("`{input}` is not a duration (examples: 500ms, 2s, 1m30s, 1h)");
    if s.is_empty() {
        return Err(bad());
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let millis_per = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        let add = n.checked_mul(millis_per).ok_or_else(bad)?;
        total = total
            .checked_add(Duration::from_millis(add))
            .ok_or_else(bad)?;
    }
    Ok(total)
}

/// Formats a duration compactly: `750ms`, `5s`, `2m5s`, `3h2m`, `4d3h`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1_000 {
        return format!("{ms}ms");
    }
    let secs = d.as_secs();
    let (days, hours, mins, s) = (secs / 86_400, secs / 3_600 % 24, secs / 60 % 60, secs % 60);
    match (days, hours, mins) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, m) => {
            if s == 0 {
                format!("{m}m")
            } else {
                format!("{m}m{s}s")
            }
        }
        (0, h, m) => {
            if m == 0 {
                format!("{h}h")
            } else {
                format!("{h}h{m}m")
            }
        }
        (d, h, _) => {
            if h == 0 {
                format!("{d}d")
            } else {
                format!("{d}d{h}h")
            }
        }
    }
}

/// `t` relative to `now`: `in 5s`, `3m ago`, `now`.
pub fn relative(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let delta = t.signed_duration_since(now);
    let abs = delta.abs().to_std().unwrap_or(Duration::ZERO);
    if abs < Duration::from_secs(1) {
        return "now".into();
    }
    let abs = Duration::from_secs(abs.as_secs());
    if delta > chrono::Duration::zero() {
        format!("in {}", format_duration(abs))
    } else {
        format!("{} ago", format_duration(abs))
    }
}

/// An instant as `YYYY-MM-DDTHH:MM:SSZ` (UTC, whole seconds), for tables.
pub fn format_instant(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration(" 2h "), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        for bad in ["", "s", "5x", "1.5s", "-1s", "5 s", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formats_durations_and_instants() {
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::from_secs(5)), "5s");
        assert_eq!(format_duration(Duration::from_secs(125)), "2m5s");
        assert_eq!(format_duration(Duration::from_secs(3 * 3600 + 120)), "3h2m");
        assert_eq!(format_duration(Duration::from_secs(86_400 * 2)), "2d");
        let now = Utc
            .with_ymd_and_hms(2026, 1, 2, 3, 4, 5)
            .single()
            .expect("valid");
        assert_eq!(format_instant(now), "2026-01-02T03:04:05Z");
        assert_eq!(relative(now + chrono::Duration::seconds(7), now), "in 7s");
        assert_eq!(
            relative(now - chrono::Duration::seconds(61), now),
            "1m1s ago"
        );
        assert_eq!(relative(now, now), "now");
    }
}
