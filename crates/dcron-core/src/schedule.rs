//! Schedules: parsing an expression and computing its instants.
//!
//! A [`Schedule`] is pure: it never reads a clock and never does I/O. Every method takes the
//! instant to compute from, and every instant it returns is in UTC, in whole seconds for cron
//! expressions and in whole milliseconds for `@every` and `@at`.
//!
//! # Expressions
//!
//! | Form | Meaning |
//! |------|---------|
//! | `m h dom mon dow` | cron, 5 fields, minute precision (second 0) |
//! | `s m h dom mon dow` | cron, 6 fields, with seconds |
//! | `s m h dom mon dow year` | cron, 7 fields, with seconds and a year (1–5000) |
//! | `@yearly` `@annually` `@monthly` `@weekly` `@daily` `@midnight` `@hourly` `@minutely` `@secondly` | cron macros |
//! | `@every <duration>` | a fixed interval, e.g. `@every 30s`, `@every 1m30s`, `@every 2h`, `@every 1d`, `@every 1500ms` |
//! | `@at <RFC 3339>` (or `@once <RFC 3339>`) | one time, e.g. `@at 2030-01-01T09:00:00+01:00` |
//!
//! Cron fields accept `*`, lists (`1,15`), ranges (`1-5`), steps (`*/15`, `10-40/10`), month
//! and weekday names (`JAN`, `MON`, case-insensitive), `?` in the day fields, `L` (last day of
//! the month; `5L` = last Friday), `W` (`15W` = weekday nearest the 15th) and `#` (`MON#2` =
//! second Monday). Weekdays are 0–7 with both 0 and 7 meaning Sunday. When both the day of
//! month and the day of week are restricted, a day matches if **either** matches (classic cron).
//! How many fields are accepted is set by [`SecondsField`]; macros are accepted in every mode
//! except `@secondly` under [`SecondsField::Disallowed`].
//!
//! `@every` durations are a sequence of `<integer><unit>` with the units `d`, `h`, `m`, `s`
//! and `ms` (no fractions, no spaces); the interval must be at least one second and at most
//! 36,600 days. Its instants are the multiples of the interval counted from the Unix epoch
//! (`1970-01-01T00:00:00Z`), so every node computes the same instants without coordinating and
//! the time zone plays no part. `@at` instants are truncated to the millisecond.
//!
//! # Time zones and daylight saving time
//!
//! A cron expression is evaluated against the wall clock of its IANA time zone (UTC when none
//! is given). Where a daylight-saving transition makes a local time not exist (a
//! *spring-forward gap*) or exist twice (a *fall-back overlap*), what happens depends on the
//! hour field:
//!
//! - **Time-of-day schedules** — the hour field names particular hours (`30 2 * * *`,
//!   `0 30 2 * * *`, `0 9-17 * * MON-FRI`, `@daily`): each matching local time runs **once per
//!   local day**.
//!   - In a gap, every matching local time inside the gap runs **once, at the first instant
//!     after the gap** (the instant of the transition). `30 2 * * *` in America/New_York on
//!     2024-03-10 runs at 03:00 EDT (07:00 UTC).
//!   - In an overlap, a matching local time runs once, at its **first** occurrence (the one
//!     with the earlier, daylight-saving offset). `30 1 * * *` in America/New_York on
//!     2024-11-03 runs at 01:30 EDT (05:30 UTC) only.
//! - **Periodic schedules** — the hour field matches every hour (`*`, `*/1`, `0-23`; e.g.
//!   `@hourly`, `*/15 * * * *`, `* * * * * *`): they follow the wall clock as it really runs.
//!   - In a gap, the local times that do not exist are skipped (the clock never shows them);
//!     the schedule continues with the first matching local time after the gap.
//!   - In an overlap, a matching local time runs **each time the clock shows it**, so an
//!     hourly task fires in both real hours of a repeated hour: `0 * * * *` in
//!     America/New_York on 2024-11-03 fires at 04:00, 05:00, 06:00 and 07:00 UTC (00:00 EDT,
//!     01:00 EDT, 01:00 EST, 02:00 EST).
//!
//! A step over hours that does not cover every hour (`0 */2 * * *`) names particular hours, so
//! it is a time-of-day schedule. Zones without daylight saving (Asia/Tokyo, UTC) never meet
//! either case. Transitions of any size are handled (30 minutes on Australia/Lord_Howe, whole
//! days on historical date-line changes), as recorded in the `chrono-tz` database.
//!
//! # Searching
//!
//! [`Schedule::next_after`] and [`Schedule::latest_at_or_before`] jump from match to match
//! (croner's field-by-field search over local wall-clock time), then map local times to UTC with
//! the rules above; neither walks second by second. Cron expressions are evaluated within the
//! years 1 to 5000; an expression that never matches (`0 0 30 2 *`) has no instants, and
//! learning that costs one search through the remaining years (tens of milliseconds), so a
//! caller should drop such a schedule after the first `None`. Every other search takes
//! microseconds.

use chrono::{DateTime, Datelike, Duration, LocalResult, NaiveDateTime, Offset, TimeZone, Utc};
use chrono_tz::{GapInfo, Tz};
use croner::parser::{CronParser, Seconds};
use croner::Cron;

use crate::error::{Error, Result};

/// How the seconds field of a cron expression is treated (the seed's
/// `WithCronOptions(cron.WithSeconds())`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SecondsField {
    /// 5 fields (minute precision, second 0), 6 fields (with seconds) or 7 fields (with seconds
    /// and a year).
    #[default]
    Optional,
    /// 6 or 7 fields only: the seconds field must be given.
    Required,
    /// 5 fields only: minute precision.
    Disallowed,
}

/// Shortest `@every` interval, in milliseconds.
const MIN_INTERVAL_MS: i64 = 1_000;
/// Longest `@every` interval, in milliseconds (36,600 days, about a century).
const MAX_INTERVAL_MS: i64 = 36_600 * 86_400_000;
/// Bound on the jumps one search makes over gaps and overlaps; each jump passes a transition,
/// so real searches need a handful.
const MAX_SEARCH_STEPS: usize = 64;

/// A parsed schedule in a time zone.
///
/// Cheap to clone, `Send + Sync`. See the [module documentation](self) for the accepted
/// expressions and the daylight-saving rules.
#[derive(Clone, Debug)]
pub struct Schedule {
    expr: String,
    tz: Tz,
    kind: Kind,
}

#[derive(Clone, Debug)]
enum Kind {
    /// Shared: parsed once per distinct expression (see `CRON_RULES`) and never changed.
    Cron(std::sync::Arc<CronRule>),
    Every {
        millis: i64,
    },
    At(DateTime<Utc>),
}

#[derive(Clone, Debug)]
struct CronRule {
    cron: Cron,
    /// The hour field matches every hour: follow the wall clock through gaps and overlaps
    /// instead of running each local time once per day.
    periodic: bool,
}

/// What one local wall-clock time is in UTC.
enum Mapped {
    /// The usual case: exactly one instant.
    One(DateTime<Utc>),
    /// A fall-back overlap: the earlier and the later instant.
    Two(DateTime<Utc>, DateTime<Utc>),
    /// A spring-forward gap: the first local time of the gap, and the first instant after it.
    Gap {
        begin: Option<NaiveDateTime>,
        end: Option<DateTime<Utc>>,
    },
}

/// The most instants [`Schedule::next_fires`] computes in one call.
pub const MAX_PREVIEW_FIRES: usize = 1_000;

impl Schedule {
    /// Parses `expr` in the IANA time zone `zone` (`None` means UTC).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSchedule`] naming the expression and the reason: an empty expression, a
    /// wrong number of fields for `seconds`, a bad field (the reason names the field and the
    /// rule, e.g. `minute 61 is out of range 0–59`), an unknown macro, an `@every` interval
    /// that is malformed, zero, shorter than a second or longer than 36,600 days, or an `@at`
    /// instant that is not RFC 3339. [`Error::InvalidTimeZone`] for a zone that is not an IANA
    /// name.
    ///
    /// # Example
    ///
    /// ```
    /// use chrono::{TimeZone, Utc};
    /// use dcron_core::schedule::{Schedule, SecondsField};
    ///
    /// let s = Schedule::parse("30 2 * * *", Some("Europe/Berlin"), SecondsField::Optional)?;
    /// let after = Utc.with_ymd_and_hms(2024, 6, 1, 12, 0, 0).unwrap();
    /// // 02:30 CEST is 00:30 UTC.
    /// assert_eq!(s.next_after(after), Some(Utc.with_ymd_and_hms(2024, 6, 2, 0, 30, 0).unwrap()));
    /// # Ok::<(), dcron_core::Error>(())
    /// ```
    pub fn parse(expr: &str, zone: Option<&str>, seconds: SecondsField) -> Result<Schedule> {
        let invalid = |reason: String| Error::InvalidSchedule {
            expr: expr.to_owned(),
            reason,
        };
        let tz = match zone {
            None => Tz::UTC,
            Some(name) => name.parse::<Tz>().map_err(|_| Error::InvalidTimeZone {
                zone: name.to_owned(),
            })?,
        };
        let kind = parse_kind(expr.trim(), seconds).map_err(invalid)?;
        Ok(Schedule {
            expr: expr.to_owned(),
            tz,
            kind,
        })
    }

    /// The first instant strictly after `after`, or `None` when there is none (a one-time
    /// schedule already past, an impossible date such as 30 February, or beyond year 5000).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.kind {
            Kind::At(at) => (*at > after).then_some(*at),
            Kind::Every { millis } => {
                let k = after
                    .timestamp_millis()
                    .div_euclid(*millis)
                    .checked_add(1)?;
                DateTime::from_timestamp_millis(k.checked_mul(*millis)?)
            }
            Kind::Cron(rule) => {
                let start = DateTime::from_timestamp(after.timestamp().checked_add(1)?, 0)?;
                self.cron_at_or_after(rule, start)
            }
        }
    }

    /// The latest instant at or before `at`, or `None` when there is none.
    pub fn latest_at_or_before(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.kind {
            Kind::At(once) => (*once <= at).then_some(*once),
            Kind::Every { millis } => {
                let k = at.timestamp_millis().div_euclid(*millis);
                DateTime::from_timestamp_millis(k.checked_mul(*millis)?)
            }
            Kind::Cron(rule) => {
                let start = DateTime::from_timestamp(at.timestamp(), 0)?;
                self.cron_at_or_before(rule, start)
            }
        }
    }

    /// The instants in the half-open window `(from_exclusive, to_inclusive]`, oldest first, at
    /// most `limit` of them (the catch-up window). Empty when the window is empty.
    pub fn occurrences_in(
        &self,
        from_exclusive: DateTime<Utc>,
        to_inclusive: DateTime<Utc>,
        limit: usize,
    ) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        let mut cursor = from_exclusive;
        while out.len() < limit {
            match self.next_after(cursor) {
                Some(next) if next <= to_inclusive => {
                    out.push(next);
                    cursor = next;
                }
                _ => break,
            }
        }
        out
    }

    /// The next `n` instants strictly after `after`, oldest first: a preview of the schedule.
    /// Fewer than `n` when the schedule ends sooner (a one-time schedule, an impossible date,
    /// beyond year 5000); empty for `n = 0`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when `n` exceeds [`MAX_PREVIEW_FIRES`].
    ///
    /// # Example
    ///
    /// ```
    /// use chrono::{TimeZone, Utc};
    /// use dcron_core::schedule::{Schedule, SecondsField};
    ///
    /// let s = Schedule::parse("0 */15 * * * *", None, SecondsField::Optional)?;
    /// let after = Utc.with_ymd_and_hms(2024, 6, 1, 12, 0, 0).unwrap();
    /// let next = s.next_fires(after, 3)?;
    /// assert_eq!(next, vec![
    ///     Utc.with_ymd_and_hms(2024, 6, 1, 12, 15, 0).unwrap(),
    ///     Utc.with_ymd_and_hms(2024, 6, 1, 12, 30, 0).unwrap(),
    ///     Utc.with_ymd_and_hms(2024, 6, 1, 12, 45, 0).unwrap(),
    /// ]);
    /// assert!(s.next_fires(after, 1_000_000).is_err());
    /// # Ok::<(), dcron_core::Error>(())
    /// ```
    pub fn next_fires(&self, after: DateTime<Utc>, n: usize) -> Result<Vec<DateTime<Utc>>> {
        if n > MAX_PREVIEW_FIRES {
            return Err(Error::InvalidArgument(format!(
                "schedule `{}`: a preview of {n} fires was asked for; at most {MAX_PREVIEW_FIRES} \
                 are computed at once (ask again after the last one for more)",
                self.expr
            )));
        }
        let mut out = Vec::with_capacity(n);
        let mut cursor = after;
        while out.len() < n {
            match self.next_after(cursor) {
                Some(next) => {
                    out.push(next);
                    cursor = next;
                }
                None => break,
            }
        }
        Ok(out)
    }

    /// Whether this is a one-time (`@at`/`@once`) schedule.
    pub fn is_one_time(&self) -> bool {
        matches!(self.kind, Kind::At(_))
    }

    /// The expression exactly as given to [`Schedule::parse`].
    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The IANA name of the time zone (`UTC` when none was given).
    pub fn zone(&self) -> &str {
        self.tz.name()
    }

    /// The first cron instant at or after `s` (a whole second).
    fn cron_at_or_after(&self, rule: &CronRule, s: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let s = s.max(search_floor());
        if s > search_ceiling() {
            return None;
        }
        let x = self.local(s)?;
        // A gap opens exactly at `s`: a time-of-day schedule's local times inside it run at `s`.
        if !rule.periodic {
            let gap_start = self
                .local(s - Duration::seconds(1))?
                .checked_add_signed(Duration::seconds(1))?;
            if gap_start < x && rule.next_match(gap_start).is_some_and(|m| m < x) {
                return Some(s);
            }
        }
        let mut best: Option<DateTime<Utc>> = None;
        // `s` in the first pass of an overlap: a periodic schedule also runs at the second pass
        // of local times before `x`, which come after `s`. The earliest such is a candidate.
        if rule.periodic {
            if let Mapped::Two(e, l) = self.map(x) {
                if s < l {
                    let overlap_start = self.local(self.transition_between(e, l))?;
                    if let Some(m) = rule.next_match(overlap_start).filter(|m| *m < x) {
                        if let Mapped::Two(_, later) = self.map(m) {
                            best = Some(later);
                        }
                    }
                }
            }
        }
        let keep = |c: DateTime<Utc>| Some(best.map_or(c, |b| b.min(c)));
        let mut n = x;
        for _ in 0..MAX_SEARCH_STEPS {
            let Some(m) = rule.next_match(n) else {
                return best;
            };
            match self.map(m) {
                Mapped::One(u) if u >= s => return keep(u),
                Mapped::One(_) => n = m.checked_add_signed(Duration::seconds(1))?,
                Mapped::Two(e, _) if e >= s => return keep(e),
                Mapped::Two(_, l) if rule.periodic && l >= s => return keep(l),
                Mapped::Two(e, l) => {
                    // A time-of-day schedule whose first pass is over: skip the rest of the
                    // overlap rather than visiting its repeated local times one by one.
                    let last_first_pass = self.transition_between(e, l) - Duration::seconds(1);
                    n = self
                        .local(last_first_pass)?
                        .checked_add_signed(Duration::seconds(1))?
                        .max(m.checked_add_signed(Duration::seconds(1))?);
                }
                Mapped::Gap { end, .. } => {
                    let end = end?;
                    if !rule.periodic && end >= s {
                        return keep(end);
                    }
                    n = self
                        .local(end)?
                        .max(m.checked_add_signed(Duration::seconds(1))?);
                }
            }
        }
        best
    }

    /// The latest cron instant at or before `s` (a whole second).
    fn cron_at_or_before(&self, rule: &CronRule, s: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let s = s.min(search_ceiling());
        if s < search_floor() {
            return None;
        }
        let x = self.local(s)?;
        let mut best: Option<DateTime<Utc>> = None;
        // `s` in the second pass of an overlap: the first pass of local times after `x` came
        // before `s`. The latest such is a candidate, for both kinds of schedule.
        if let Mapped::Two(e, l) = self.map(x) {
            if s > e {
                let last_first_pass = self.transition_between(e, l) - Duration::seconds(1);
                let first_pass_end = self.local(last_first_pass)?;
                if let Some(m) = rule.prev_match(first_pass_end).filter(|m| *m > x) {
                    if let Mapped::Two(earlier, _) = self.map(m) {
                        best = Some(earlier);
                    }
                }
            }
        }
        let keep = |c: DateTime<Utc>| Some(best.map_or(c, |b| b.max(c)));
        let mut n = x;
        for _ in 0..MAX_SEARCH_STEPS {
            let Some(m) = rule.prev_match(n) else {
                return best;
            };
            match self.map(m) {
                Mapped::One(u) if u <= s => return keep(u),
                Mapped::Two(_, l) if rule.periodic && l <= s => return keep(l),
                Mapped::Two(e, _) if e <= s => return keep(e),
                Mapped::One(_) | Mapped::Two(..) => {
                    n = m.checked_sub_signed(Duration::seconds(1))?;
                }
                Mapped::Gap { begin, end } => {
                    if !rule.periodic {
                        if let Some(end) = end.filter(|end| *end <= s) {
                            return keep(end);
                        }
                    }
                    n = begin?.min(m).checked_sub_signed(Duration::seconds(1))?;
                }
            }
        }
        best
    }

    /// The local wall-clock time of `u` in this schedule's zone.
    fn local(&self, u: DateTime<Utc>) -> Option<NaiveDateTime> {
        u.naive_utc()
            .checked_add_signed(Duration::seconds(i64::from(self.offset_at(u))))
    }

    fn offset_at(&self, u: DateTime<Utc>) -> i32 {
        self.tz
            .offset_from_utc_datetime(&u.naive_utc())
            .fix()
            .local_minus_utc()
    }

    /// The instants a local time stands for.
    fn map(&self, n: NaiveDateTime) -> Mapped {
        match self.tz.from_local_datetime(&n) {
            LocalResult::Single(d) => Mapped::One(d.with_timezone(&Utc)),
            LocalResult::Ambiguous(a, b) => {
                let (a, b) = (a.with_timezone(&Utc), b.with_timezone(&Utc));
                Mapped::Two(a.min(b), a.max(b))
            }
            LocalResult::None => match GapInfo::new(&n, &self.tz) {
                Some(info) => Mapped::Gap {
                    begin: info.begin.map(|(begin, _)| begin),
                    end: info.end.map(|end| end.with_timezone(&Utc)),
                },
                None => Mapped::Gap {
                    begin: None,
                    end: None,
                },
            },
        }
    }

    /// The instant of the offset change between the two instants `e < l` of one repeated
    /// local time: the first instant with the later offset.
    fn transition_between(&self, e: DateTime<Utc>, l: DateTime<Utc>) -> DateTime<Utc> {
        let before = self.offset_at(e);
        let (mut lo, mut hi) = (e.timestamp(), l.timestamp());
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            let changed =
                DateTime::from_timestamp(mid, 0).is_none_or(|m| self.offset_at(m) != before);
            if changed {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        DateTime::from_timestamp(hi, 0).unwrap_or(l)
    }
}

impl CronRule {
    /// The first local time at or after `n` that matches the fields.
    fn next_match(&self, n: NaiveDateTime) -> Option<NaiveDateTime> {
        if n.year() > croner::YEAR_UPPER_LIMIT {
            return None;
        }
        self.cron
            .find_next_occurrence(&n.and_utc(), true)
            .ok()
            .map(|d| d.naive_utc())
    }

    /// The last local time at or before `n` that matches the fields.
    fn prev_match(&self, n: NaiveDateTime) -> Option<NaiveDateTime> {
        if n.year() < croner::YEAR_LOWER_LIMIT {
            return None;
        }
        self.cron
            .find_previous_occurrence(&n.and_utc(), true)
            .ok()
            .map(|d| d.naive_utc())
    }
}

/// Earliest instant a cron search starts from: inside croner's year range, with a day of
/// margin so that no zone offset leaves it.
fn search_floor() -> DateTime<Utc> {
    DateTime::from_timestamp(-62_135_596_800 + 2 * 86_400, 0).unwrap_or(DateTime::UNIX_EPOCH)
}

/// Latest instant a cron search starts from (5000-12-30T00:00:00Z).
fn search_ceiling() -> DateTime<Utc> {
    DateTime::from_timestamp(95_648_947_200, 0).unwrap_or(DateTime::UNIX_EPOCH)
}

fn parse_kind(expr: &str, seconds: SecondsField) -> std::result::Result<Kind, String> {
    if expr.is_empty() {
        return Err("empty expression".into());
    }
    let Some(rest) = expr.strip_prefix('@') else {
        return parse_cron(expr, seconds);
    };
    let (word, arg) = match rest.split_once(char::is_whitespace) {
        Some((word, arg)) => (word, arg.trim()),
        None => (rest, ""),
    };
    let word = word.to_ascii_lowercase();
    match word.as_str() {
        "every" => parse_interval(arg).map(|millis| Kind::Every { millis }),
        "at" | "once" => parse_instant(arg, &word).map(Kind::At),
        _ => {
            let fields = match word.as_str() {
                "yearly" | "annually" => "0 0 0 1 1 *",
                "monthly" => "0 0 0 1 * *",
                "weekly" => "0 0 0 * * 0",
                "daily" | "midnight" => "0 0 0 * * *",
                "hourly" => "0 0 * * * *",
                "minutely" => "0 * * * * *",
                "secondly" => "* * * * * *",
                _ => return Err(format!("unknown macro `@{word}`")),
            };
            if !arg.is_empty() {
                return Err(format!("`@{word}` takes no argument"));
            }
            if word == "secondly" && seconds == SecondsField::Disallowed {
                return Err("`@secondly` needs the seconds field, which is disallowed here".into());
            }
            compile_cron(fields)
        }
    }
}

fn parse_cron(expr: &str, seconds: SecondsField) -> std::result::Result<Kind, String> {
    let fields: Vec<&str> = expr.split_whitespace().collect();
    let n = fields.len();
    let ok = match seconds {
        SecondsField::Optional => (5..=7).contains(&n),
        SecondsField::Required => (6..=7).contains(&n),
        SecondsField::Disallowed => n == 5,
    };
    if !ok {
        let expected = match seconds {
            SecondsField::Optional => "5, 6 or 7 fields",
            SecondsField::Required => "6 or 7 fields (the seconds field is required)",
            SecondsField::Disallowed => "5 fields (the seconds field is not allowed)",
        };
        return Err(format!(
            "expected {expected}, got {n}: the fields are [second] minute hour day-of-month \
             month day-of-week [year]"
        ));
    }
    if let Some(field) = fields
        .iter()
        .find(|f| f.split(',').any(|part| part.is_empty()))
    {
        return Err(format!("empty list element in field `{field}`"));
    }
    compile_cron(&fields.join(" ")).map_err(|parser| explain_cron(&fields, &parser))
}

/// One cron field: its name, its range and the names it accepts for values.
struct FieldSpec {
    name: &'static str,
    lo: u32,
    hi: u32,
    names: &'static [&'static str],
    /// Letters allowed besides names: `L`, `W`, `#`, `?`.
    specials: &'static str,
}

const SECOND: FieldSpec = FieldSpec {
    name: "second",
    lo: 0,
    hi: 59,
    names: &[],
    specials: "",
};
const MINUTE: FieldSpec = FieldSpec {
    name: "minute",
    lo: 0,
    hi: 59,
    names: &[],
    specials: "",
};
const HOUR: FieldSpec = FieldSpec {
    name: "hour",
    lo: 0,
    hi: 23,
    names: &[],
    specials: "",
};
const DAY_OF_MONTH: FieldSpec = FieldSpec {
    name: "day-of-month",
    lo: 1,
    hi: 31,
    names: &[],
    specials: "LW?",
};
const MONTH: FieldSpec = FieldSpec {
    name: "month",
    lo: 1,
    hi: 12,
    names: &[
        "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
    ],
    specials: "",
};
const DAY_OF_WEEK: FieldSpec = FieldSpec {
    name: "day-of-week",
    lo: 0,
    hi: 7,
    names: &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
    specials: "L#?",
};
const YEAR: FieldSpec = FieldSpec {
    name: "year",
    lo: 1,
    hi: 5000,
    names: &[],
    specials: "",
};

/// Says which field of a cron expression the parser refused and why, in the user's terms
/// (`minute 61 is out of range 0–59`), falling back to the parser's own words with the field
/// layout when no field rule explains it.
fn explain_cron(fields: &[&str], parser: &str) -> String {
    let specs: &[&FieldSpec] = match fields.len() {
        5 => &[&MINUTE, &HOUR, &DAY_OF_MONTH, &MONTH, &DAY_OF_WEEK],
        6 => &[&SECOND, &MINUTE, &HOUR, &DAY_OF_MONTH, &MONTH, &DAY_OF_WEEK],
        _ => &[
            &SECOND,
            &MINUTE,
            &HOUR,
            &DAY_OF_MONTH,
            &MONTH,
            &DAY_OF_WEEK,
            &YEAR,
        ],
    };
    for (field, spec) in fields.iter().zip(specs) {
        for part in field.split(',') {
            if let Err(reason) = check_part(part, spec) {
                return reason;
            }
        }
    }
    format!(
        "not a valid cron expression ({parser}); the fields are [second] minute hour \
         day-of-month month day-of-week [year]"
    )
}

/// Checks one comma-separated element (`*/5`, `1-10/2`, `MON`, `15W`, `5#2`, …) of a field.
fn check_part(part: &str, spec: &FieldSpec) -> std::result::Result<(), String> {
    let name = spec.name;
    let mut pieces = part.split('/');
    let base = pieces.next().unwrap_or_default();
    if let Some(step) = pieces.next() {
        if pieces.next().is_some() {
            return Err(format!("{name} `{part}` has more than one `/`"));
        }
        match step.parse::<u32>() {
            Ok(0) => return Err(format!("{name} `{part}`: the step must be at least 1")),
            Ok(n) if n > spec.hi => {
                return Err(format!(
                    "{name} `{part}`: the step {n} is larger than the range {}–{}",
                    spec.lo, spec.hi
                ))
            }
            Ok(_) => {}
            Err(_) => {
                return Err(format!(
                    "{name} `{part}`: the step `{step}` is not a positive number"
                ))
            }
        }
    }
    if base == "*" {
        return Ok(());
    }
    if base == "?" {
        return if spec.specials.contains('?') {
            Ok(())
        } else {
            Err(format!(
                "`?` is only allowed in day-of-month and day-of-week, not in {name}"
            ))
        };
    }
    let values: Vec<&str> = match base.split_once('-') {
        Some((a, b)) => vec![a, b],
        None => vec![base],
    };
    let mut numbers = Vec::with_capacity(2);
    for value in values {
        numbers.push(check_value(value, part, spec)?);
    }
    if let [Some(a), Some(b)] = numbers[..] {
        if a > b {
            return Err(format!(
                "{name} range `{base}` runs backwards: write the smaller value first"
            ));
        }
    }
    Ok(())
}

/// Checks one value of a field; returns its number when it is a plain number or name.
fn check_value(
    value: &str,
    part: &str,
    spec: &FieldSpec,
) -> std::result::Result<Option<u32>, String> {
    let name = spec.name;
    if value.is_empty() {
        return Err(format!("{name} `{part}` has an empty value"));
    }
    if let Ok(n) = value.parse::<u64>() {
        if n < u64::from(spec.lo) || n > u64::from(spec.hi) {
            return Err(format!(
                "{name} {n} is out of range {}–{}",
                spec.lo, spec.hi
            ));
        }
        return Ok(u32::try_from(n).ok());
    }
    let upper = value.to_ascii_uppercase();
    if let Some(i) = spec.names.iter().position(|n| *n == upper) {
        return Ok(u32::try_from(i).ok().map(|i| i + spec.lo));
    }
    // `5#2` / `MON#2`: the second Friday / Monday of the month.
    if let Some((day, nth)) = upper
        .split_once('#')
        .filter(|_| spec.specials.contains('#'))
    {
        check_value(day, part, spec)?;
        return match nth.parse::<u64>() {
            Ok(n) if (1..=5).contains(&n) => Ok(None),
            Ok(n) => Err(format!(
                "{name} `{value}`: the occurrence {n} is out of range 1–5"
            )),
            Err(_) => Err(format!(
                "{name} `{value}`: the occurrence `{nth}` is not a number 1–5"
            )),
        };
    }
    // `L`, `LW`, `15W`, `5L`: the digits in them must still be in range.
    let special = upper.chars().any(|c| c.is_ascii_alphabetic())
        && upper
            .chars()
            .all(|c| c.is_ascii_digit() || (c != '#' && spec.specials.contains(c)));
    if special {
        let digits: String = upper.chars().filter(char::is_ascii_digit).collect();
        if let Ok(n) = digits.parse::<u64>() {
            if n < u64::from(spec.lo) || n > u64::from(spec.hi) {
                return Err(format!(
                    "{name} `{value}`: the value {n} is out of range {}–{}",
                    spec.lo, spec.hi
                ));
            }
        }
        return Ok(None);
    }
    let hint = if spec.names.is_empty() {
        format!("a number {}–{}", spec.lo, spec.hi)
    } else {
        format!(
            "a number {}–{} or a name {}–{}",
            spec.lo,
            spec.hi,
            spec.names.first().copied().unwrap_or_default(),
            spec.names.last().copied().unwrap_or_default()
        )
    };
    Err(format!("{name} `{value}` is not {hint}"))
}

/// Parsed cron rules shared by every schedule with the same fields: a parsed rule holds a few
/// kilobytes (croner keeps a bitfield of years), and a node often has thousands of tasks on
/// one expression. Entries whose rule is no longer used are pruned as the map grows.
static CRON_RULES: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<String, std::sync::Weak<CronRule>>>,
> = std::sync::LazyLock::new(Default::default);

fn compile_cron(fields: &str) -> std::result::Result<Kind, String> {
    let mut rules = CRON_RULES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(rule) = rules.get(fields).and_then(std::sync::Weak::upgrade) {
        return Ok(Kind::Cron(rule));
    }
    let rule = std::sync::Arc::new(compile_rule(fields)?);
    if rules.len() >= 1024 && rules.len().is_power_of_two() {
        rules.retain(|_, w| w.strong_count() > 0);
    }
    rules.insert(fields.to_string(), std::sync::Arc::downgrade(&rule));
    Ok(Kind::Cron(rule))
}

fn compile_rule(fields: &str) -> std::result::Result<CronRule, String> {
    let cron = CronParser::builder()
        .seconds(Seconds::Optional)
        .build()
        .parse(fields)
        .map_err(|e| e.to_string())?;
    let p = &cron.pattern;
    let matches_some = |f: &dyn Fn(u32) -> bool, max: u32, min: u32| (min..=max).any(f);
    if !matches_some(&|v| p.second_match(v).unwrap_or(false), 59, 0)
        || !matches_some(&|v| p.minute_match(v).unwrap_or(false), 59, 0)
        || !matches_some(&|v| p.hour_match(v).unwrap_or(false), 23, 0)
        || !matches_some(&|v| p.month_match(v).unwrap_or(false), 12, 1)
    {
        return Err("a field matches no value".into());
    }
    let periodic = (0..=23).all(|h| p.hour_match(h).unwrap_or(false));
    Ok(CronRule { cron, periodic })
}

/// Parses an `@every` duration into milliseconds.
fn parse_interval(arg: &str) -> std::result::Result<i64, String> {
    if arg.is_empty() {
        return Err("`@every` needs a duration such as `30s`, `1m30s` or `2h`".into());
    }
    let text = arg.to_ascii_lowercase();
    let mut rest = text.as_str();
    let mut total: i64 = 0;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return Err(format!(
                "invalid duration `{arg}`: expected a number at `{rest}` (units d, h, m, s, ms)"
            ));
        }
        let (number, after) = rest.split_at(digits);
        let unit_len = after.len()
            - after
                .trim_start_matches(|c: char| !c.is_ascii_digit())
                .len();
        let (unit, after) = after.split_at(unit_len);
        let unit_ms: i64 = match unit {
            "d" => 86_400_000,
            "h" => 3_600_000,
            "m" => 60_000,
            "s" => 1_000,
            "ms" => 1,
            "" => {
                return Err(format!(
                    "invalid duration `{arg}`: `{number}` has no unit (d, h, m, s, ms)"
                ))
            }
            u if u.starts_with('.') => {
                return Err(format!(
                "invalid duration `{arg}`: fractions are not supported (write `1h30m`, not `1.5h`)"
            ))
            }
            other => {
                return Err(format!(
                    "invalid duration `{arg}`: unknown unit `{other}` (d, h, m, s, ms)"
                ))
            }
        };
        let too_long = || format!("interval `{arg}` is longer than 36600d");
        let value: i64 = number.parse().map_err(|_| too_long())?;
        total = value
            .checked_mul(unit_ms)
            .and_then(|v| total.checked_add(v))
            .filter(|t| *t <= MAX_INTERVAL_MS)
            .ok_or_else(too_long)?;
        rest = after;
    }
    if total == 0 {
        return Err("the interval must not be zero".into());
    }
    if total < MIN_INTERVAL_MS {
        return Err(format!(
            "interval `{arg}` is shorter than the minimum of 1s"
        ));
    }
    Ok(total)
}

fn parse_instant(arg: &str, word: &str) -> std::result::Result<DateTime<Utc>, String> {
    if arg.is_empty() {
        return Err(format!(
            "`@{word}` needs an RFC 3339 instant such as `2030-01-01T00:00:00Z`"
        ));
    }
    let at = DateTime::parse_from_rfc3339(arg)
        .map_err(|e| format!("`{arg}` is not an RFC 3339 instant: {e}"))?;
    DateTime::from_timestamp_millis(at.timestamp_millis())
        .ok_or_else(|| format!("`{arg}` is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_expressions_share_one_parsed_rule() {
        let a = Schedule::parse("*/7 * * * * *", None, SecondsField::Optional).expect("valid");
        let b = Schedule::parse(
            " */7 * * * * * ",
            Some("Europe/Berlin"),
            SecondsField::Optional,
        )
        .expect("valid");
        let c = Schedule::parse("*/8 * * * * *", None, SecondsField::Optional).expect("valid");
        let rule = |s: &Schedule| match &s.kind {
            Kind::Cron(r) => std::sync::Arc::as_ptr(r),
            _ => std::ptr::null(),
        };
        assert_eq!(
            rule(&a),
            rule(&b),
            "one rule for one expression, whatever the zone"
        );
        assert_ne!(rule(&a), rule(&c));
        assert!(!rule(&a).is_null());
    }
    use chrono::SecondsFormat;
    use proptest::prelude::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("test instant")
            .with_timezone(&Utc)
    }

    fn sched(expr: &str, zone: &str) -> Schedule {
        Schedule::parse(expr, Some(zone), SecondsField::Optional).expect("valid schedule")
    }

    fn fmt(list: &[DateTime<Utc>]) -> Vec<String> {
        list.iter()
            .map(|d| d.to_rfc3339_opts(SecondsFormat::Millis, true))
            .map(|s| s.replace(".000Z", "Z"))
            .collect()
    }

    /// The instants of `expr` in `zone` in `(from, to]`, formatted.
    fn run(expr: &str, zone: &str, from: &str, to: &str) -> Vec<String> {
        fmt(&sched(expr, zone).occurrences_in(t(from), t(to), 1_000))
    }

    fn invalid_reason(expr: &str, zone: Option<&str>, seconds: SecondsField) -> String {
        match Schedule::parse(expr, zone, seconds) {
            Err(Error::InvalidSchedule { expr: e, reason }) => {
                assert_eq!(e, expr, "the error names the expression");
                reason
            }
            other => panic!("expected InvalidSchedule for {expr:?}, got {other:?}"),
        }
    }

    // ---- DST: America/New_York (2024-03-10 02:00 EST -> 03:00 EDT at 07:00Z;
    //      2024-11-03 02:00 EDT -> 01:00 EST at 06:00Z) ----

    #[test]
    fn new_york_fixed_time_in_spring_gap_runs_once_right_after_the_gap() {
        // 02:30 local: 03-09 02:30 EST, 03-10 does not exist -> 03:00 EDT, 03-11 02:30 EDT.
        let want = [
            "2024-03-09T07:30:00Z",
            "2024-03-10T07:00:00Z",
            "2024-03-11T06:30:00Z",
        ];
        for expr in ["30 2 * * *", "0 30 2 * * *"] {
            let got = run(
                expr,
                "America/New_York",
                "2024-03-08T12:00:00Z",
                "2024-03-12T00:00:00Z",
            );
            assert_eq!(got, want, "{expr}");
        }
    }

    #[test]
    fn new_york_fixed_time_in_fall_overlap_runs_once_at_first_occurrence() {
        // 01:30 local: 11-02 01:30 EDT, 11-03 01:30 EDT only (not 01:30 EST), 11-04 01:30 EST.
        let got = run(
            "30 1 * * *",
            "America/New_York",
            "2024-11-01T12:00:00Z",
            "2024-11-05T00:00:00Z",
        );
        assert_eq!(
            got,
            [
                "2024-11-02T05:30:00Z",
                "2024-11-03T05:30:00Z",
                "2024-11-04T06:30:00Z"
            ]
        );
        // 02:30 is not in the overlap: 02:30 EDT, then 02:30 EST on the day of the change.
        let got = run(
            "0 30 2 * * *",
            "America/New_York",
            "2024-11-01T12:00:00Z",
            "2024-11-05T00:00:00Z",
        );
        assert_eq!(
            got,
            [
                "2024-11-02T06:30:00Z",
                "2024-11-03T07:30:00Z",
                "2024-11-04T07:30:00Z"
            ]
        );
    }

    #[test]
    fn new_york_hourly_fires_every_real_hour_across_both_transitions() {
        // Spring: 01:00 EST, (02:00 does not exist), 03:00 EDT, 04:00 EDT.
        let got = run(
            "0 * * * *",
            "America/New_York",
            "2024-03-10T05:30:00Z",
            "2024-03-10T08:30:00Z",
        );
        assert_eq!(
            got,
            [
                "2024-03-10T06:00:00Z",
                "2024-03-10T07:00:00Z",
                "2024-03-10T08:00:00Z"
            ]
        );
        // Fall: 00:00 EDT, 01:00 EDT, 01:00 EST, 02:00 EST, 03:00 EST.
        let got = run(
            "@hourly",
            "America/New_York",
            "2024-11-03T03:30:00Z",
            "2024-11-03T08:30:00Z",
        );
        assert_eq!(
            got,
            [
                "2024-11-03T04:00:00Z",
                "2024-11-03T05:00:00Z",
                "2024-11-03T06:00:00Z",
                "2024-11-03T07:00:00Z",
                "2024-11-03T08:00:00Z"
            ]
        );
        let got = run(
            "*/30 * * * *",
            "America/New_York",
            "2024-11-03T04:50:00Z",
            "2024-11-03T07:10:00Z",
        );
        assert_eq!(
            got,
            [
                "2024-11-03T05:00:00Z",
                "2024-11-03T05:30:00Z",
                "2024-11-03T06:00:00Z",
                "2024-11-03T06:30:00Z",
                "2024-11-03T07:00:00Z"
            ]
        );
    }

    #[test]
    fn new_york_latest_at_or_before_follows_the_same_rules() {
        let hourly = sched("0 * * * *", "America/New_York");
        // 01:30 EST (second pass) -> 01:00 EST; 01:59:59 EDT (first pass) -> 01:00 EDT.
        assert_eq!(
            hourly.latest_at_or_before(t("2024-11-03T06:30:00Z")),
            Some(t("2024-11-03T06:00:00Z"))
        );
        assert_eq!(
            hourly.latest_at_or_before(t("2024-11-03T05:59:59Z")),
            Some(t("2024-11-03T05:00:00Z"))
        );
        let fixed = sched("30 1 * * *", "America/New_York");
        // 01:45 EST: the 01:30 of that day ran at 01:30 EDT, not at 01:30 EST.
        assert_eq!(
            fixed.latest_at_or_before(t("2024-11-03T06:45:00Z")),
            Some(t("2024-11-03T05:30:00Z"))
        );
        let gap = sched("30 2 * * *", "America/New_York");
        assert_eq!(
            gap.latest_at_or_before(t("2024-03-10T07:10:00Z")),
            Some(t("2024-03-10T07:00:00Z"))
        );
        assert_eq!(
            gap.latest_at_or_before(t("2024-03-10T06:59:59Z")),
            Some(t("2024-03-09T07:30:00Z"))
        );
        assert_eq!(
            gap.next_after(t("2024-03-10T06:59:59Z")),
            Some(t("2024-03-10T07:00:00Z"))
        );
        assert_eq!(
            gap.next_after(t("2024-03-10T07:00:00Z")),
            Some(t("2024-03-11T06:30:00Z"))
        );
    }

    // ---- DST: Europe/Berlin (2024-03-31 02:00 CET -> 03:00 CEST at 01:00Z;
    //      2024-10-27 03:00 CEST -> 02:00 CET at 01:00Z) ----

    #[test]
    fn berlin_fixed_time_across_both_transitions() {
        let spring = run(
            "0 30 2 * * *",
            "Europe/Berlin",
            "2024-03-29T12:00:00Z",
            "2024-04-01T12:00:00Z",
        );
        // 03-30 02:30 CET, 03-31 gap -> 03:00 CEST, 04-01 02:30 CEST.
        assert_eq!(
            spring,
            [
                "2024-03-30T01:30:00Z",
                "2024-03-31T01:00:00Z",
                "2024-04-01T00:30:00Z"
            ]
        );
        let fall = run(
            "0 30 2 * * *",
            "Europe/Berlin",
            "2024-10-25T12:00:00Z",
            "2024-10-28T12:00:00Z",
        );
        // 10-26 02:30 CEST, 10-27 02:30 CEST only, 10-28 02:30 CET.
        assert_eq!(
            fall,
            [
                "2024-10-26T00:30:00Z",
                "2024-10-27T00:30:00Z",
                "2024-10-28T01:30:00Z"
            ]
        );
    }

    #[test]
    fn berlin_hourly_and_two_hourly_around_fall_back() {
        // Hourly: 01:00 CEST, 02:00 CEST, 02:00 CET, 03:00 CET.
        let got = run(
            "0 0 * * * *",
            "Europe/Berlin",
            "2024-10-26T22:30:00Z",
            "2024-10-27T02:30:00Z",
        );
        assert_eq!(
            got,
            [
                "2024-10-26T23:00:00Z",
                "2024-10-27T00:00:00Z",
                "2024-10-27T01:00:00Z",
                "2024-10-27T02:00:00Z"
            ]
        );
        // `*/2` names hours of the day: 02:00 runs once (CEST), then 04:00 CET.
        let got = run(
            "0 */2 * * *",
            "Europe/Berlin",
            "2024-10-26T21:30:00Z",
            "2024-10-27T03:30:00Z",
        );
        assert_eq!(
            got,
            [
                "2024-10-26T22:00:00Z",
                "2024-10-27T00:00:00Z",
                "2024-10-27T03:00:00Z"
            ]
        );
        // ... and in the spring gap its 02:00 runs at 03:00 CEST.
        let got = run(
            "0 */2 * * *",
            "Europe/Berlin",
            "2024-03-30T22:30:00Z",
            "2024-03-31T02:30:00Z",
        );
        assert_eq!(
            got,
            [
                "2024-03-30T23:00:00Z",
                "2024-03-31T01:00:00Z",
                "2024-03-31T02:00:00Z"
            ]
        );
    }

    // ---- DST: Australia/Lord_Howe, a 30-minute shift (2024-04-07 02:00 +11 -> 01:30 +10:30 at
    //      2024-04-06T15:00Z; 2024-10-06 02:00 +10:30 -> 02:30 +11 at 2024-10-05T15:30Z) ----

    #[test]
    fn lord_howe_fixed_time_across_half_hour_transitions() {
        // 02:15 local: 10-05 02:15 +10:30, 10-06 gap -> 02:30 +11, 10-07 02:15 +11.
        let spring = run(
            "15 2 * * *",
            "Australia/Lord_Howe",
            "2024-10-04T00:00:00Z",
            "2024-10-07T00:00:00Z",
        );
        assert_eq!(
            spring,
            [
                "2024-10-04T15:45:00Z",
                "2024-10-05T15:30:00Z",
                "2024-10-06T15:15:00Z"
            ]
        );
        // 01:45 local: 04-06 01:45 +11, 04-07 01:45 +11 only, 04-08 01:45 +10:30.
        let fall = run(
            "0 45 1 * * *",
            "Australia/Lord_Howe",
            "2024-04-05T00:00:00Z",
            "2024-04-08T00:00:00Z",
        );
        assert_eq!(
            fall,
            [
                "2024-04-05T14:45:00Z",
                "2024-04-06T14:45:00Z",
                "2024-04-07T15:15:00Z"
            ]
        );
    }

    #[test]
    fn lord_howe_periodic_schedules_follow_the_wall_clock() {
        // Fall back: 01:30 and 01:45 are shown twice, every real quarter hour fires.
        let got = run(
            "*/15 * * * *",
            "Australia/Lord_Howe",
            "2024-04-06T14:20:00Z",
            "2024-04-06T15:50:00Z",
        );
        assert_eq!(
            got,
            [
                "2024-04-06T14:30:00Z",
                "2024-04-06T14:45:00Z",
                "2024-04-06T15:00:00Z",
                "2024-04-06T15:15:00Z",
                "2024-04-06T15:30:00Z",
                "2024-04-06T15:45:00Z"
            ]
        );
        // Spring forward: 01:00 +10:30, 02:00 does not exist, 03:00 +11.
        let got = run(
            "0 * * * *",
            "Australia/Lord_Howe",
            "2024-10-05T14:00:00Z",
            "2024-10-05T17:30:00Z",
        );
        assert_eq!(
            got,
            [
                "2024-10-05T14:30:00Z",
                "2024-10-05T16:00:00Z",
                "2024-10-05T17:00:00Z"
            ]
        );
    }

    #[test]
    fn tokyo_has_no_transitions() {
        let got = run(
            "30 2 * * *",
            "Asia/Tokyo",
            "2024-03-09T00:00:00Z",
            "2024-03-11T00:00:00Z",
        );
        assert_eq!(got, ["2024-03-09T17:30:00Z", "2024-03-10T17:30:00Z"]);
        let got = run(
            "0 30 2 * * *",
            "Asia/Tokyo",
            "2024-10-26T00:00:00Z",
            "2024-10-28T00:00:00Z",
        );
        assert_eq!(got, ["2024-10-26T17:30:00Z", "2024-10-27T17:30:00Z"]);
    }

    #[test]
    fn a_whole_skipped_day_runs_its_fixed_times_once_after_the_gap() {
        // Pacific/Apia skipped 2011-12-30: 2011-12-29 23:59:59 -10 -> 2011-12-31 00:00 +14
        // at 2011-12-30T10:00Z.
        let got = run(
            "30 12 * * *",
            "Pacific/Apia",
            "2011-12-28T00:00:00Z",
            "2012-01-01T00:00:00Z",
        );
        assert_eq!(
            got,
            [
                "2011-12-28T22:30:00Z",
                "2011-12-29T22:30:00Z",
                "2011-12-30T10:00:00Z",
                "2011-12-30T22:30:00Z",
                "2011-12-31T22:30:00Z"
            ]
        );
        let s = sched("30 12 * * *", "Pacific/Apia");
        assert_eq!(
            s.latest_at_or_before(t("2011-12-30T21:00:00Z")),
            Some(t("2011-12-30T10:00:00Z"))
        );
        // Hourly: 23:00 -10 on the 29th, then 00:00 +14 on the 31st.
        let got = run(
            "0 * * * *",
            "Pacific/Apia",
            "2011-12-30T08:30:00Z",
            "2011-12-30T11:30:00Z",
        );
        assert_eq!(
            got,
            [
                "2011-12-30T09:00:00Z",
                "2011-12-30T10:00:00Z",
                "2011-12-30T11:00:00Z"
            ]
        );
    }

    #[test]
    fn fixed_time_runs_exactly_once_per_local_day_for_a_whole_year() {
        let cases = [
            ("30 2 * * *", "America/New_York"),
            ("30 1 * * *", "America/New_York"),
            ("0 30 2 * * *", "Europe/Berlin"),
            ("15 2 * * *", "Australia/Lord_Howe"),
            ("45 1 * * *", "Australia/Lord_Howe"),
            ("30 2 * * *", "Asia/Tokyo"),
            ("0 0 * * *", "America/Santiago"),
            ("30 23 * * *", "America/Santiago"),
        ];
        for (expr, zone) in cases {
            let s = sched(expr, zone);
            let tz: Tz = zone.parse().expect("zone");
            let got = s.occurrences_in(t("2024-01-01T00:00:00Z"), t("2025-01-01T00:00:00Z"), 1_000);
            let mut days: Vec<_> = got
                .iter()
                .map(|u| u.with_timezone(&tz).date_naive())
                .collect();
            let n = days.len();
            days.dedup();
            assert_eq!(days.len(), n, "{expr} in {zone}: a local day ran twice");
            for pair in days.windows(2) {
                assert_eq!(
                    pair[1] - pair[0],
                    Duration::days(1),
                    "{expr} in {zone}: a day was skipped"
                );
            }
            assert!((365..=367).contains(&n), "{expr} in {zone}: {n} runs");
        }
    }

    // ---- brute force: every second of a window around every 2024 transition ----

    /// Whether `u` is an instant of `rule` in `tz`, straight from the documented rules.
    fn reference_is_instant(rule: &CronRule, tz: Tz, u: DateTime<Utc>) -> bool {
        let matches = |n: NaiveDateTime| rule.cron.is_time_matching(&n.and_utc()).unwrap_or(false);
        let local = u.with_timezone(&tz).naive_local();
        if matches(local) {
            let first = tz
                .from_local_datetime(&local)
                .earliest()
                .map(|d| d.with_timezone(&Utc));
            if rule.periodic || first == Some(u) {
                return true;
            }
        }
        if rule.periodic {
            return false;
        }
        // A gap opens at `u`: the local times skipped run at `u`.
        let before = (u - Duration::seconds(1)).with_timezone(&tz).naive_local();
        let mut n = before + Duration::seconds(1);
        while n < local {
            if matches(n) {
                return true;
            }
            n += Duration::seconds(1);
        }
        false
    }

    fn transitions_2024(tz: Tz) -> Vec<DateTime<Utc>> {
        let off = |u: DateTime<Utc>| {
            tz.offset_from_utc_datetime(&u.naive_utc())
                .fix()
                .local_minus_utc()
        };
        let mut out = Vec::new();
        let mut u = t("2024-01-01T00:00:00Z");
        while u < t("2025-01-01T00:00:00Z") {
            let next = u + Duration::minutes(15);
            if off(next) != off(u) {
                let (mut lo, mut hi) = (u, next);
                while hi - lo > Duration::seconds(1) {
                    let mid = lo + (hi - lo) / 2;
                    if off(mid) == off(u) {
                        lo = mid
                    } else {
                        hi = mid
                    }
                }
                out.push(hi);
            }
            u = next;
        }
        out
    }

    #[test]
    fn every_second_around_transitions_agrees_with_the_rules() {
        let exprs = [
            "30 2 * * *",
            "0 30 1 * * *",
            "15,45 1,2 * * *",
            "* 2 * * *",
            "0 */2 * * *",
            "@daily",
            "0 * * * *",
            "*/15 * * * *",
            "*/20 * * * * *",
        ];
        let zones = [
            "America/New_York",
            "Europe/Berlin",
            "Australia/Lord_Howe",
            "America/Santiago",
        ];
        for zone in zones {
            let tz: Tz = zone.parse().expect("zone");
            let transitions = transitions_2024(tz);
            assert_eq!(transitions.len(), 2, "{zone}");
            for expr in exprs {
                let s = sched(expr, zone);
                let Kind::Cron(rule) = &s.kind else {
                    unreachable!()
                };
                for tr in &transitions {
                    let (from, to) = (*tr - Duration::hours(2), *tr + Duration::hours(2));
                    let mut want = Vec::new();
                    let mut u = from + Duration::seconds(1);
                    while u <= to {
                        if reference_is_instant(rule, tz, u) {
                            want.push(u);
                        }
                        u += Duration::seconds(1);
                    }
                    let got = s.occurrences_in(from, to, 100_000);
                    assert_eq!(fmt(&got), fmt(&want), "{expr} in {zone} around {tr}");
                    // Backward search agrees at and just after every instant, and at a stride.
                    for w in want.windows(2) {
                        let (a, b) = (w[0], w[1]);
                        assert_eq!(
                            s.latest_at_or_before(b - Duration::seconds(1)),
                            Some(a),
                            "{expr} {zone} before {b}"
                        );
                        assert_eq!(s.latest_at_or_before(b), Some(b), "{expr} {zone} at {b}");
                    }
                    let mut probes: Vec<DateTime<Utc>> = Vec::new();
                    for w in &want {
                        probes.extend([*w - Duration::seconds(1), *w]);
                    }
                    for d in -3..=3 {
                        probes.push(*tr + Duration::seconds(d));
                    }
                    let mut probe = from;
                    while probe <= to {
                        probes.push(probe);
                        probe += Duration::seconds(97);
                    }
                    for probe in probes {
                        let latest = s.latest_at_or_before(probe);
                        if let Some(expect) = want.iter().rev().find(|w| **w <= probe) {
                            assert_eq!(latest, Some(*expect), "{expr} {zone} latest at {probe}");
                        }
                        let next = s.next_after(probe);
                        if let Some(expect) = want.iter().find(|w| **w > probe) {
                            assert_eq!(next, Some(*expect), "{expr} {zone} next after {probe}");
                        }
                    }
                }
            }
        }
    }

    // ---- fields and modes ----

    #[test]
    fn field_counts_per_seconds_mode() {
        use SecondsField::*;
        let five = "30 2 * * *";
        let six = "15 30 2 * * *";
        let seven = "15 30 2 * * * 2030";
        let after = t("2029-12-31T00:00:00Z");
        // Optional: all three; five fields means second 0.
        assert_eq!(
            Schedule::parse(five, None, Optional)
                .unwrap()
                .next_after(after),
            Some(t("2029-12-31T02:30:00Z"))
        );
        assert_eq!(
            Schedule::parse(six, None, Optional)
                .unwrap()
                .next_after(after),
            Some(t("2029-12-31T02:30:15Z"))
        );
        assert_eq!(
            Schedule::parse(seven, None, Optional)
                .unwrap()
                .next_after(after),
            Some(t("2030-01-01T02:30:15Z"))
        );
        // Required: six or seven.
        assert!(invalid_reason(five, None, Required).contains("seconds field is required"));
        assert!(Schedule::parse(six, None, Required).is_ok());
        assert!(Schedule::parse(seven, None, Required).is_ok());
        // Disallowed: five only.
        assert!(Schedule::parse(five, None, Disallowed).is_ok());
        assert!(invalid_reason(six, None, Disallowed).contains("not allowed"));
        assert!(invalid_reason(seven, None, Disallowed).contains("not allowed"));
        // Too few or too many, in every mode.
        for mode in [Optional, Required, Disallowed] {
            assert!(invalid_reason("* * * *", None, mode).contains("got 4"));
            assert!(invalid_reason("* * * * * * * *", None, mode).contains("got 8"));
        }
        // A year field bounds the schedule.
        let once = Schedule::parse(seven, None, Optional).unwrap();
        assert_eq!(once.next_after(t("2030-12-31T03:00:00Z")), None);
        assert_eq!(
            once.latest_at_or_before(t("2035-01-01T00:00:00Z")),
            Some(t("2030-12-31T02:30:15Z"))
        );
    }

    #[test]
    fn macros() {
        let after = t("2024-05-15T10:20:30Z");
        let cases = [
            ("@yearly", "2025-01-01T00:00:00Z"),
            ("@annually", "2025-01-01T00:00:00Z"),
            ("@monthly", "2024-06-01T00:00:00Z"),
            ("@weekly", "2024-05-19T00:00:00Z"),
            ("@daily", "2024-05-16T00:00:00Z"),
            ("@midnight", "2024-05-16T00:00:00Z"),
            ("@hourly", "2024-05-15T11:00:00Z"),
            ("@minutely", "2024-05-15T10:21:00Z"),
            ("@secondly", "2024-05-15T10:20:31Z"),
            ("@DAILY", "2024-05-16T00:00:00Z"),
        ];
        for (expr, want) in cases {
            for mode in [SecondsField::Optional, SecondsField::Required] {
                let s = Schedule::parse(expr, None, mode).unwrap();
                assert_eq!(s.next_after(after), Some(t(want)), "{expr}");
                assert!(!s.is_one_time());
            }
        }
        assert!(Schedule::parse("@daily", None, SecondsField::Disallowed).is_ok());
        assert!(invalid_reason("@secondly", None, SecondsField::Disallowed).contains("disallowed"));
        assert!(invalid_reason("@daily 5", None, SecondsField::Optional).contains("no argument"));
        assert!(
            invalid_reason("@fortnightly", None, SecondsField::Optional).contains("unknown macro")
        );
        // Macros use the zone: @daily in Tokyo is 15:00 UTC.
        let tokyo = sched("@daily", "Asia/Tokyo");
        assert_eq!(tokyo.next_after(after), Some(t("2024-05-15T15:00:00Z")));
    }

    #[test]
    fn last_weekday_and_nth() {
        let cases = [
            // Last day of the month, in a leap year.
            ("0 9 L 2 *", "2024-01-01T00:00:00Z", "2024-02-29T09:00:00Z"),
            ("0 9 L * *", "2024-04-01T00:00:00Z", "2024-04-30T09:00:00Z"),
            // Weekday nearest the 15th: 2024-06-15 is a Saturday -> Friday the 14th.
            (
                "0 9 15W * *",
                "2024-06-01T00:00:00Z",
                "2024-06-14T09:00:00Z",
            ),
            // 2024-09-15 is a Sunday -> Monday the 16th.
            (
                "0 9 15W * *",
                "2024-09-01T00:00:00Z",
                "2024-09-16T09:00:00Z",
            ),
            // Second Monday of the month.
            (
                "0 9 * * MON#2",
                "2024-07-01T00:00:00Z",
                "2024-07-08T09:00:00Z",
            ),
            (
                "0 9 * * 1#2",
                "2024-07-09T00:00:00Z",
                "2024-08-12T09:00:00Z",
            ),
            // Last Friday of the month.
            ("0 9 * * 5L", "2024-05-01T00:00:00Z", "2024-05-31T09:00:00Z"),
            (
                "0 9 * * FRIL",
                "2024-06-01T00:00:00Z",
                "2024-06-28T09:00:00Z",
            ),
            // Names, ranges and steps.
            (
                "0 0 9-17/4 * JAN-MAR MON-FRI",
                "2024-01-06T00:00:00Z",
                "2024-01-08T09:00:00Z",
            ),
            (
                "0 0 * * sun",
                "2024-01-01T00:00:00Z",
                "2024-01-07T00:00:00Z",
            ),
            ("0 0 * * 7", "2024-01-01T00:00:00Z", "2024-01-07T00:00:00Z"),
            // Day of month OR day of week.
            (
                "0 0 13 * FRI",
                "2024-09-01T00:00:00Z",
                "2024-09-06T00:00:00Z",
            ),
        ];
        for (expr, after, want) in cases {
            let s = sched(expr, "UTC");
            assert_eq!(
                s.next_after(t(after)),
                Some(t(want)),
                "{expr} after {after}"
            );
            assert_eq!(
                s.latest_at_or_before(t(want)),
                Some(t(want)),
                "{expr} at {want}"
            );
        }
    }

    #[test]
    fn impossible_dates_have_no_instants() {
        for expr in ["0 0 30 2 *", "0 0 31 4,6,9,11 *", "0 0 0 1 1 * 2020"] {
            let s = sched(expr, "Europe/Berlin");
            assert_eq!(s.next_after(t("2024-01-01T00:00:00Z")), None, "{expr}");
            assert!(s
                .occurrences_in(t("2024-01-01T00:00:00Z"), t("2030-01-01T00:00:00Z"), 10)
                .is_empty());
        }
        assert_eq!(
            sched("0 0 30 2 *", "UTC").latest_at_or_before(t("2024-01-01T00:00:00Z")),
            None
        );
    }

    #[test]
    fn every_is_anchored_at_the_epoch() {
        let s = Schedule::parse(
            "@every 1m30s",
            Some("America/New_York"),
            SecondsField::Disallowed,
        )
        .unwrap();
        // 90 s grid from 1970-01-01T00:00:00Z: 2024-01-01T00:00:00Z is 1704067200 s = 18934080 * 90.
        assert_eq!(
            s.next_after(t("2024-01-01T00:00:00Z")),
            Some(t("2024-01-01T00:01:30Z"))
        );
        assert_eq!(
            s.next_after(t("2024-01-01T00:00:45Z")),
            Some(t("2024-01-01T00:01:30Z"))
        );
        assert_eq!(
            s.latest_at_or_before(t("2024-01-01T00:01:29.999Z")),
            Some(t("2024-01-01T00:00:00Z"))
        );
        assert_eq!(
            s.latest_at_or_before(t("2024-01-01T00:01:30Z")),
            Some(t("2024-01-01T00:01:30Z"))
        );
        // Two nodes starting from different points land on the same grid.
        let a = s.occurrences_in(t("2024-01-01T00:00:07Z"), t("2024-01-01T01:00:00Z"), 100);
        let b = s.occurrences_in(
            t("2024-01-01T00:13:51.250Z"),
            t("2024-01-01T01:00:00Z"),
            100,
        );
        assert!(a.ends_with(&b) && b.len() + 9 == a.len(), "{a:?} / {b:?}");
        for u in &a {
            assert_eq!(u.timestamp_millis() % 90_000, 0);
        }
        // Before the epoch too: the grid is ..., 23:57:00, 23:58:30, 00:00:00.
        assert_eq!(
            s.next_after(t("1969-12-31T23:59:00Z")),
            Some(t("1970-01-01T00:00:00Z"))
        );
        assert_eq!(
            s.next_after(t("1969-12-31T23:57:00Z")),
            Some(t("1969-12-31T23:58:30Z"))
        );
        assert_eq!(
            s.latest_at_or_before(t("1969-12-31T23:59:59Z")),
            Some(t("1969-12-31T23:58:30Z"))
        );

        let cases = [
            ("@every 30s", 30_000),
            ("@every 2h", 7_200_000),
            ("@every 1d", 86_400_000),
            ("@every 1h30m", 5_400_000),
            ("@every 1500ms", 1_500),
            ("@every 1s", 1_000),
            ("@EVERY 10S", 10_000),
        ];
        for (expr, ms) in cases {
            let Kind::Every { millis } = sched(expr, "UTC").kind else {
                panic!("{expr}")
            };
            assert_eq!(millis, ms, "{expr}");
        }
        assert_eq!(
            sched("@every 1500ms", "UTC").next_after(t("2024-01-01T00:00:00.100Z")),
            Some(t("2024-01-01T00:00:01.500Z"))
        );
        for (bad, why) in [
            ("@every", "needs a duration"),
            ("@every 0s", "zero"),
            ("@every 500ms", "shorter"),
            ("@every 10", "no unit"),
            ("@every 1.5h", "fractions"),
            ("@every 30 s", "unknown unit"),
            ("@every 5w", "unknown unit"),
            ("@every -5s", "expected a number"),
            ("@every 36601d", "longer"),
            ("@every 99999999999999999999s", "longer"),
        ] {
            assert!(
                invalid_reason(bad, None, SecondsField::Optional).contains(why),
                "{bad}"
            );
        }
    }

    #[test]
    fn at_is_one_time() {
        let s = Schedule::parse(
            "@at 2030-01-01T09:00:00+01:00",
            Some("Asia/Tokyo"),
            SecondsField::Optional,
        )
        .unwrap();
        assert!(s.is_one_time());
        let at = t("2030-01-01T08:00:00Z");
        assert_eq!(s.next_after(t("2029-01-01T00:00:00Z")), Some(at));
        assert_eq!(s.next_after(at), None);
        assert_eq!(s.latest_at_or_before(at), Some(at));
        assert_eq!(s.latest_at_or_before(at - Duration::milliseconds(1)), None);
        assert_eq!(s.occurrences_in(at - Duration::days(1), at, 10), vec![at]);
        let once = sched("@once 2030-01-01T08:00:00.123456Z", "UTC");
        assert_eq!(once.next_after(at), Some(t("2030-01-01T08:00:00.123Z")));
        assert!(invalid_reason("@at", None, SecondsField::Optional).contains("RFC 3339"));
        assert!(invalid_reason("@at tomorrow", None, SecondsField::Optional).contains("RFC 3339"));
    }

    #[test]
    fn accessors() {
        let s =
            Schedule::parse(" 0 9 * * * ", Some("Europe/Berlin"), SecondsField::Optional).unwrap();
        assert_eq!(s.expr(), " 0 9 * * * ");
        assert_eq!(s.zone(), "Europe/Berlin");
        assert!(!s.is_one_time());
        assert_eq!(
            Schedule::parse("@hourly", None, SecondsField::Optional)
                .unwrap()
                .zone(),
            "UTC"
        );
        fn assert_send_sync<T: Send + Sync + Clone + std::fmt::Debug>() {}
        assert_send_sync::<Schedule>();
    }

    #[test]
    fn invalid_expressions_name_the_expression_and_reason() {
        // Each refused expression pins the whole reason: the field, the rule and the fix.
        let cases = [
            ("", "empty expression"),
            ("   ", "empty expression"),
            ("61 * * * *", "minute 61 is out of range 0–59"),
            ("61 * * * * *", "second 61 is out of range 0–59"),
            ("* 24 * * *", "hour 24 is out of range 0–23"),
            ("* * 0 * *", "day-of-month 0 is out of range 1–31"),
            ("* * * 13 *", "month 13 is out of range 1–12"),
            ("* * * * 8", "day-of-week 8 is out of range 0–7"),
            ("0 0 * * * * 5001", "year 5001 is out of range 1–5000"),
            ("*/0 * * * *", "minute `*/0`: the step must be at least 1"),
            (
                "*/x * * * *",
                "minute `*/x`: the step `x` is not a positive number",
            ),
            ("1/2/3 * * * *", "minute `1/2/3` has more than one `/`"),
            (
                "5-1 * * * *",
                "minute range `5-1` runs backwards: write the smaller value first",
            ),
            ("1,,2 * * * *", "empty list element in field `1,,2`"),
            ("* * * * * ,", "empty list element in field `,`"),
            ("x * * * *", "minute `x` is not a number 0–59"),
            (
                "* * * FOO *",
                "month `FOO` is not a number 1–12 or a name JAN–DEC",
            ),
            (
                "* * * * FUN",
                "day-of-week `FUN` is not a number 0–7 or a name SUN–SAT",
            ),
            (
                "? * * * *",
                "`?` is only allowed in day-of-month and day-of-week, not in minute",
            ),
            (
                "* * * * MON#6",
                "day-of-week `MON#6`: the occurrence 6 is out of range 1–5",
            ),
            ("* * * * 9#2", "day-of-week 9 is out of range 0–7"),
            (
                "* * 32W * *",
                "day-of-month `32W`: the value 32 is out of range 1–31",
            ),
            (
                "* * * *",
                "expected 5, 6 or 7 fields, got 4: the fields are [second] minute hour \
                 day-of-month month day-of-week [year]",
            ),
            ("@ * * * *", "unknown macro `@`"),
        ];
        for (expr, want) in cases {
            assert_eq!(
                invalid_reason(expr, None, SecondsField::Optional),
                want,
                "{expr:?}"
            );
        }
        let err = Schedule::parse("0 61 * * *", None, SecondsField::Optional).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid schedule \"0 61 * * *\": hour 61 is out of range 0–23"
        );
        let err =
            Schedule::parse("@daily", Some("Mars/Olympus"), SecondsField::Optional).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidTimeZone { zone } if zone == "Mars/Olympus"),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "unknown time zone \"Mars/Olympus\": use an IANA zone name such as \
             \"Europe/Berlin\", \"America/New_York\" or \"UTC\""
        );
    }

    #[test]
    fn special_fields_still_parse() {
        // The field checks only explain a refusal; they never refuse what the parser accepts.
        for expr in [
            "0 0 L * *",
            "0 0 15W * *",
            "0 0 * * 5L",
            "0 0 * * MON#2",
            "0 0 ? * MON-FRI",
            "0 0 1 JAN-MAR ?",
            "*/15 0-23/2 1-31 * SUN,SAT",
            "0 0 0 1 1 * 2030",
        ] {
            assert!(
                Schedule::parse(expr, None, SecondsField::Optional).is_ok(),
                "{expr}"
            );
        }
    }

    #[test]
    fn per_second_window_is_complete() {
        let s = sched("* * * * * *", "Europe/Berlin");
        let from = t("2024-10-27T00:59:30Z");
        let got = s.occurrences_in(from, from + Duration::seconds(60), 1_000);
        assert_eq!(got.len(), 60);
        assert_eq!(got[0], from + Duration::seconds(1));
        assert_eq!(
            s.occurrences_in(from, from + Duration::seconds(60), 7)
                .len(),
            7
        );
        assert!(s.occurrences_in(from, from, 10).is_empty());
        assert!(s
            .occurrences_in(from, from - Duration::seconds(5), 10)
            .is_empty());
        assert!(s
            .occurrences_in(from, from + Duration::seconds(5), 0)
            .is_empty());
    }

    #[test]
    fn extreme_instants_do_not_panic() {
        let exprs = [
            "* * * * * *",
            "0 0 1 1 *",
            "@every 7s",
            "@at 2030-01-01T00:00:00Z",
        ];
        let zones = [
            "UTC",
            "Pacific/Kiritimati",
            "Etc/GMT+12",
            "America/New_York",
        ];
        for expr in exprs {
            for zone in zones {
                let s = sched(expr, zone);
                for u in [
                    DateTime::<Utc>::MIN_UTC,
                    DateTime::<Utc>::MAX_UTC,
                    t("0001-01-01T00:00:00Z"),
                    t("9999-12-31T23:59:59Z"),
                ] {
                    let _ = s.next_after(u);
                    let _ = s.latest_at_or_before(u);
                    let later = u.checked_add_signed(Duration::seconds(3)).unwrap_or(u);
                    let _ = s.occurrences_in(u, later, 5);
                }
            }
        }
        assert_eq!(
            sched("* * * * *", "UTC").next_after(DateTime::<Utc>::MAX_UTC),
            None
        );
        assert_eq!(
            sched("* * * * *", "UTC").latest_at_or_before(DateTime::<Utc>::MIN_UTC),
            None
        );
    }

    const EXPRS: &[&str] = &[
        "* * * * * *",
        "*/7 * * * * *",
        "0 * * * *",
        "*/15 * * * *",
        "30 2 * * *",
        "0 30 1 * * *",
        "15,45 1,2 * * *",
        "0 */2 * * *",
        "0 0 L * *",
        "0 9 * * MON#2",
        "@daily",
        "@every 45s",
        "@every 1h30m",
        "@at 2024-06-01T12:00:00Z",
    ];
    const ZONES: &[&str] = &[
        "UTC",
        "America/New_York",
        "Europe/Berlin",
        "Australia/Lord_Howe",
        "Asia/Tokyo",
        "America/Santiago",
    ];

    proptest! {
        #[test]
        fn arbitrary_strings_never_panic(expr in any::<String>(), zone in proptest::option::of(any::<String>())) {
            for mode in [SecondsField::Optional, SecondsField::Required, SecondsField::Disallowed] {
                let _ = Schedule::parse(&expr, zone.as_deref(), mode);
            }
        }

        #[test]
        fn cron_like_strings_never_panic(
            fields in proptest::collection::vec("[0-9*/,LW#?MONJAFRSUTE+-]{1,6}", 0..9),
            at in -5_000_000_000i64..5_000_000_000i64,
        ) {
            let expr = fields.join(" ");
            if let Ok(s) = Schedule::parse(&expr, Some("Europe/Berlin"), SecondsField::Optional) {
                let u = DateTime::from_timestamp(at, 0).unwrap();
                let next = s.next_after(u);
                prop_assert!(next.is_none_or(|n| n > u));
                let latest = s.latest_at_or_before(u);
                prop_assert!(latest.is_none_or(|l| l <= u));
            }
        }

        #[test]
        fn macro_like_strings_never_panic(word in "@[a-zA-Z]{0,9}", arg in "[0-9a-zA-Z:+.-]{0,25}") {
            let _ = Schedule::parse(&format!("{word} {arg}"), None, SecondsField::Optional);
        }

        #[test]
        fn searches_are_consistent(
            expr in proptest::sample::select(EXPRS),
            zone in proptest::sample::select(ZONES),
            from_s in 1_704_067_200i64..1_735_689_600i64,
            from_ns in 0u32..1_000_000_000,
            len_s in 0i64..200_000,
        ) {
            let s = sched(expr, zone);
            let from = DateTime::from_timestamp(from_s, from_ns).unwrap();
            let to = from + Duration::seconds(len_s);
            let got = s.occurrences_in(from, to, 500);
            let mut prev = from;
            for (i, o) in got.iter().enumerate() {
                prop_assert!(*o > prev && *o <= to, "{} {} {:?}", expr, zone, got);
                prop_assert_eq!(s.next_after(prev), Some(*o));
                prop_assert_eq!(s.latest_at_or_before(*o), Some(*o));
                if i > 0 {
                    prop_assert_eq!(s.latest_at_or_before(*o - Duration::nanoseconds(1)), Some(prev));
                }
                prev = *o;
            }
            if got.len() < 500 {
                prop_assert!(s.next_after(prev).is_none_or(|n| n > to));
            }
            // Around an arbitrary point: latest <= t < next, and they are neighbours.
            let latest = s.latest_at_or_before(to);
            let next = s.next_after(to);
            prop_assert!(latest.is_none_or(|l| l <= to));
            prop_assert!(next.is_none_or(|n| n > to));
            if let Some(l) = latest {
                prop_assert_eq!(s.next_after(l), next);
            }
            if let Some(n) = next {
                prop_assert_eq!(s.latest_at_or_before(n - Duration::nanoseconds(1)), latest);
            }
        }
    }
}
