//! Durations on the command line (`500ms`, `2s`, `1m30s`, `1h`) and in human output.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// A command-line duration that does not parse: the input and why.
#[derive(Clone, Debug, PartialEq)]
pub struct DurationError {
    /// The text given.
    pub input: String,
    /// Why it is not a duration.
    pub reason: DurationErrorReason,
}

/// Why a command-line duration does not parse.
#[derive(Clone, Debug, PartialEq)]
pub enum DurationErrorReason {
    /// Nothing was given.
    Empty,
    /// `humantime` refused it (unknown unit, missing number, stray character, overflow).
    Syntax(humantime::DurationError),
}

impl std::fmt::Display for DurationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let reason = match &self.reason {
            DurationErrorReason::Empty => "it is empty".to_string(),
            DurationErrorReason::Syntax(e) => e.to_string(),
        };
        write!(
            f,
            "`{}` is not a duration: {reason} (examples: 500ms, 2s, 1m30s, 1h)",
            self.input
        )
    }
}

impl std::error::Error for DurationError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.reason {
            DurationErrorReason::Empty => None,
            DurationErrorReason::Syntax(e) => Some(e),
        }
    }
}

/// Parses a duration with [`humantime`]: one or more `<number><unit>` pairs (`500ms`, `2s`,
/// `1m30s`, `1h 5min`, `1.5s`, `1d`), or a bare number of seconds (`5`).
///
/// # Errors
/// A [`DurationError`] naming the input (clap turns it into a usage error).
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(DurationError {
            input: input.to_string(),
            reason: DurationErrorReason::Empty,
        });
    }
    // humantime wants a unit; a bare number has always meant seconds here.
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s).map_err(|e| DurationError {
        input: input.to_string(),
        reason: DurationErrorReason::Syntax(e),
    })
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
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1h 5min"), Ok(Duration::from_secs(3900)));
    }

    #[test]
    fn bad_durations_are_typed_errors_naming_the_input() {
        let e = parse_duration("  ").expect_err("empty");
        assert_eq!(e.reason, DurationErrorReason::Empty);
        assert!(e.to_string().starts_with("`  ` is not a duration"), "{e}");
        for (bad, reason) in [
            ("s", humantime::DurationError::NumberExpected(0)),
            ("-1s", humantime::DurationError::NumberExpected(0)),
            (
                "5x",
                humantime::DurationError::UnknownUnit {
                    start: 1,
                    end: 2,
                    unit: "x".into(),
                    value: 5,
                },
            ),
            (
                "99999999999999999999d",
                humantime::DurationError::NumberOverflow,
            ),
        ] {
            let e = parse_duration(bad).expect_err(bad);
            assert_eq!(e.input, bad);
            assert_eq!(e.reason, DurationErrorReason::Syntax(reason), "{bad}");
            let shown = e.to_string();
            assert!(
                shown.contains(&format!("`{bad}` is not a duration")),
                "{shown}"
            );
        }
        assert!(parse_duration("5x")
            .expect_err("unit")
            .to_string()
            .contains("unknown time unit \"x\""));
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
