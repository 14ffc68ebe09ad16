//! Calendar logic of the automation engine.
//!
//! * Run windows ("any time" or "only during specific hours") evaluated in the
//!   practice's IANA time zone, including the daylight-saving edge cases.
//! * Date math for date-based triggers (birthdays).
//!
//! Every instant is an `i64` count of milliseconds since the Unix epoch (UTC).
//!
//! # Window semantics
//!
//! An enabled row `start..end` of a [`RunWindow::SpecificHours`] window opens, on
//! every practice-local date whose weekday matches, the half-open interval of
//! instants `[local_to_utc_ms(date, start), local_to_utc_ms(date, end))`.
//! Local times are resolved with [`local_to_utc_ms`]: a time inside a
//! spring-forward gap moves to the end of the gap, an ambiguous fall-back time
//! resolves to its earlier instant. `24:00` as an end time means the next
//! day's midnight.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use chrono::{
    DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, Offset,
    TimeZone,
};
use chrono_tz::Tz;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

const MINUTES_PER_DAY: u16 = 1440;
const MS_PER_MINUTE: i64 = 60_000;

// ---------------------------------------------------------------------------
// Weekday
// ---------------------------------------------------------------------------

/// Day of week, Monday first, serialized lowercase `"mon"`..`"sun"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Weekday {
    /// Monday.
    Mon,
    /// Tuesday.
    Tue,
    /// Wednesday.
    Wed,
    /// Thursday.
    Thu,
    /// Friday.
    Fri,
    /// Saturday.
    Sat,
    /// Sunday.
    Sun,
}

impl Weekday {
    /// All seven days, Monday first.
    pub const ALL: [Weekday; 7] = [
        Weekday::Mon,
        Weekday::Tue,
        Weekday::Wed,
        Weekday::Thu,
        Weekday::Fri,
        Weekday::Sat,
        Weekday::Sun,
    ];

    /// The serialized name (`"mon"`..`"sun"`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Weekday::Mon => "mon",
            Weekday::Tue => "tue",
            Weekday::Wed => "wed",
            Weekday::Thu => "thu",
            Weekday::Fri => "fri",
            Weekday::Sat => "sat",
            Weekday::Sun => "sun",
        }
    }

    /// The weekday of a calendar date.
    pub fn of(date: NaiveDate) -> Weekday {
        Weekday::from(date.weekday())
    }
}

impl fmt::Display for Weekday {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<chrono::Weekday> for Weekday {
    fn from(day: chrono::Weekday) -> Self {
        match day {
            chrono::Weekday::Mon => Weekday::Mon,
            chrono::Weekday::Tue => Weekday::Tue,
            chrono::Weekday::Wed => Weekday::Wed,
            chrono::Weekday::Thu => Weekday::Thu,
            chrono::Weekday::Fri => Weekday::Fri,
            chrono::Weekday::Sat => Weekday::Sat,
            chrono::Weekday::Sun => Weekday::Sun,
        }
    }
}

impl From<Weekday> for chrono::Weekday {
    fn from(day: Weekday) -> Self {
        match day {
            Weekday::Mon => chrono::Weekday::Mon,
            Weekday::Tue => chrono::Weekday::Tue,
            Weekday::Wed => chrono::Weekday::Wed,
            Weekday::Thu => chrono::Weekday::Thu,
            Weekday::Fri => chrono::Weekday::Fri,
            Weekday::Sat => chrono::Weekday::Sat,
            Weekday::Sun => chrono::Weekday::Sun,
        }
    }
}

// ---------------------------------------------------------------------------
// LocalTime
// ---------------------------------------------------------------------------

/// A local time of day `"HH:MM"` (24h), stored as minutes after midnight.
///
/// Serializes/deserializes as the string `"HH:MM"` (exactly two digits each).
/// `"24:00"` (1440 minutes) is accepted by the parser but is only valid as an
/// end time, meaning end of day; [`RunWindow::validate`] enforces that.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct LocalTime {
    /// Minutes after midnight, `0..=1440`.
    pub minutes: u16,
}

impl LocalTime {
    /// 00:00.
    pub const MIDNIGHT: LocalTime = LocalTime { minutes: 0 };
    /// 24:00, the end of the day (valid only as an end time).
    pub const END_OF_DAY: LocalTime = LocalTime {
        minutes: MINUTES_PER_DAY,
    };

    /// Builds `hour:minute`; `None` unless `hour < 24 && minute < 60`, or it is exactly 24:00.
    pub const fn from_hm(hour: u16, minute: u16) -> Option<LocalTime> {
        if (hour < 24 && minute < 60) || (hour == 24 && minute == 0) {
            Some(LocalTime {
                minutes: hour * 60 + minute,
            })
        } else {
            None
        }
    }

    /// The hour part (`0..=24`).
    pub const fn hour(self) -> u16 {
        self.minutes / 60
    }

    /// The minute part (`0..=59`).
    pub const fn minute(self) -> u16 {
        self.minutes % 60
    }

    /// True for `24:00`.
    pub const fn is_end_of_day(self) -> bool {
        self.minutes == MINUTES_PER_DAY
    }

    /// True when `minutes` is within `0..=1440`.
    pub const fn is_in_range(self) -> bool {
        self.minutes <= MINUTES_PER_DAY
    }
}

impl fmt::Display for LocalTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.hour(), self.minute())
    }
}

impl FromStr for LocalTime {
    type Err = String;

    /// Parses strict `"HH:MM"`: `00:00`..`23:59`, or `24:00`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!(
                "invalid time {s:?}: expected \"HH:MM\" (00:00..23:59, or 24:00 as an end time)"
            )
        };
        let digit = |b: u8| -> Option<u16> { b.is_ascii_digit().then(|| u16::from(b - b'0')) };
        let &[h1, h2, b':', m1, m2] = s.as_bytes() else {
            return Err(bad());
        };
        let (Some(h1), Some(h2), Some(m1), Some(m2)) = (digit(h1), digit(h2), digit(m1), digit(m2))
        else {
            return Err(bad());
        };
        LocalTime::from_hm(h1 * 10 + h2, m1 * 10 + m2).ok_or_else(bad)
    }
}

impl Serialize for LocalTime {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for LocalTime {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl serde::de::Visitor<'_> for Visitor {
            type Value = LocalTime;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a time of day \"HH:MM\"")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<LocalTime, E> {
                v.parse().map_err(E::custom)
            }
        }

        deserializer.deserialize_str(Visitor)
    }
}

impl JsonSchema for LocalTime {
    fn schema_name() -> Cow<'static, str> {
        "LocalTime".into()
    }

    fn schema_id() -> Cow<'static, str> {
        concat!(module_path!(), "::LocalTime").into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$",
            "description": "Local time of day \"HH:MM\" (24h). \"24:00\" is allowed only as an end time, meaning end of day."
        })
    }
}

// ---------------------------------------------------------------------------
// Run windows
// ---------------------------------------------------------------------------

/// One weekday row of the "Only during specific hours" panel.
///
/// Other fields in a row are ignored: the builder's view shows each row
/// with its `label` ("Monday"), and a screen may post its rows back as it
/// got them. A misspelt field still fails, as every field is required.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DayHours {
    /// The weekday this row configures.
    pub day: Weekday,
    /// Whether the automation may run on this weekday.
    pub enabled: bool,
    /// Local opening time (inclusive).
    pub start: LocalTime,
    /// Local closing time (exclusive); `24:00` means end of day.
    pub end: LocalTime,
}

impl DayHours {
    /// True when this row opens a non-empty window (enabled, in range, start < end).
    fn is_usable(&self) -> bool {
        self.enabled && self.end.is_in_range() && self.start < self.end
    }
}

/// When can this automation run?
///
/// Serialized as `{"mode":"any_time"}` or
/// `{"mode":"specific_hours","days":[...7 rows...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum RunWindow {
    /// No restriction: steps run as soon as they are due.
    // Written `{}`, not as a unit variant, so that serde refuses a field
    // given with it (`days` sent with `any_time` is an error, not ignored).
    AnyTime {},
    /// Steps run only inside the enabled weekday rows, in the practice's time zone.
    SpecificHours {
        /// Exactly seven rows, one per weekday.
        days: Vec<DayHours>,
    },
}

impl RunWindow {
    /// Validates: `specific_hours` has exactly 7 rows, one per weekday, no
    /// duplicates; each enabled row has start < end; at least one row enabled.
    /// `24:00` is rejected as a start time (on any row).
    ///
    /// # Errors
    ///
    /// A human message naming the field, e.g.
    /// `"days[2].end: must be later than start (09:00)"`.
    pub fn validate(&self) -> Result<(), String> {
        let days = match self {
            RunWindow::AnyTime {} => return Ok(()),
            RunWindow::SpecificHours { days } => days,
        };
        if days.len() != 7 {
            return Err(format!(
                "days: must have exactly 7 rows (one per weekday), got {}",
                days.len()
            ));
        }
        for (i, row) in days.iter().enumerate() {
            if let Some(j) = days.iter().take(i).position(|other| other.day == row.day) {
                return Err(format!(
                    "days[{i}].day: duplicate weekday \"{}\" (already used by days[{j}])",
                    row.day
                ));
            }
            if !row.start.is_in_range() {
                return Err(format!(
                    "days[{i}].start: out of range ({} minutes); expected 00:00..23:59",
                    row.start.minutes
                ));
            }
            if row.start.is_end_of_day() {
                return Err(format!(
                    "days[{i}].start: 24:00 is only allowed as an end time"
                ));
            }
            if !row.end.is_in_range() {
                return Err(format!(
                    "days[{i}].end: out of range ({} minutes); expected 00:00..24:00",
                    row.end.minutes
                ));
            }
            if row.enabled && row.end <= row.start {
                return Err(format!(
                    "days[{i}].end: must be later than start ({})",
                    row.start
                ));
            }
        }
        if !days.iter().any(|row| row.enabled) {
            return Err("days: at least one day must be enabled".to_owned());
        }
        Ok(())
    }

    /// The default specific-hours window: Mon-Fri 09:00-17:00 enabled,
    /// Sat/Sun disabled (09:00-17:00).
    pub fn business_hours() -> RunWindow {
        let days = Weekday::ALL
            .iter()
            .map(|&day| DayHours {
                day,
                enabled: !matches!(day, Weekday::Sat | Weekday::Sun),
                start: LocalTime { minutes: 9 * 60 },
                end: LocalTime { minutes: 17 * 60 },
            })
            .collect();
        RunWindow::SpecificHours { days }
    }

    /// The earliest instant `>= now_ms` at which a step may run, in `tz`.
    ///
    /// `AnyTime` -> `now_ms`. If now is inside an enabled window `[start, end)`
    /// -> `now_ms`. Otherwise the start of the next open window (a whole local
    /// minute, so any seconds/milliseconds of `now_ms` are rounded up to it).
    /// Searches from the previous local day to 9 local days ahead; returns `None`
    /// when no window opens in that range (cannot happen after [`Self::validate`],
    /// except at the edges of the representable calendar). Rows that are disabled,
    /// out of range, or have `start >= end` never open.
    pub fn next_open(&self, now_ms: i64, tz: Tz) -> Option<i64> {
        let days = match self {
            RunWindow::AnyTime {} => return Some(now_ms),
            RunWindow::SpecificHours { days } => days,
        };
        let today = local_date(now_ms, tz);
        let mut best: Option<i64> = None;
        // One day back covers odd midnight transitions; 8 days ahead plus one of slack
        // covers a full week of closed days.
        for offset in -1..=9 {
            let Some(date) = today.checked_add_signed(Duration::days(offset)) else {
                continue;
            };
            if let Some(found) = best
                && local_to_utc_ms(date, 0, tz) > found
            {
                break;
            }
            let weekday = Weekday::of(date);
            for row in days.iter().filter(|r| r.day == weekday && r.is_usable()) {
                let open = local_to_utc_ms(date, row.start.minutes, tz);
                let close = local_to_utc_ms(date, row.end.minutes, tz);
                if open >= close || close <= now_ms {
                    continue;
                }
                let candidate = open.max(now_ms);
                best = Some(best.map_or(candidate, |b| b.min(candidate)));
            }
        }
        best
    }

    /// True when `now_ms` lies inside an open window (always true for `AnyTime`).
    pub fn is_open(&self, now_ms: i64, tz: Tz) -> bool {
        self.next_open(now_ms, tz) == Some(now_ms)
    }

    /// The instant the window opens on the given practice-local date.
    ///
    /// `AnyTime` -> local midnight; `SpecificHours` -> that day's start if the
    /// row is enabled (and usable: start < end), else `None`. Used for
    /// date-based triggers: evaluated once per practice-local day at the start
    /// of the run window.
    pub fn day_start(&self, date: NaiveDate, tz: Tz) -> Option<i64> {
        match self {
            RunWindow::AnyTime {} => Some(local_to_utc_ms(date, 0, tz)),
            RunWindow::SpecificHours { days } => {
                let weekday = Weekday::of(date);
                days.iter()
                    .filter(|r| r.day == weekday && r.is_usable())
                    .map(|r| r.start.minutes)
                    .min()
                    .map(|start| local_to_utc_ms(date, start, tz))
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Time-zone conversions
// ---------------------------------------------------------------------------

/// The instant of a practice-local date + local time (minutes after midnight),
/// resolving DST:
///
/// * a nonexistent local time (spring-forward gap) maps to the first valid
///   instant after the gap (e.g. 02:30 on a spring-forward day in
///   `America/New_York` -> 03:00 EDT, i.e. 07:00Z);
/// * an ambiguous one (fall-back) maps to the EARLIER instant.
///
/// 1440 minutes = next day's midnight (larger values keep counting into the
/// following days). At the extreme edges of chrono's calendar range, where no
/// zone conversion is possible, the local time is read as UTC.
pub fn local_to_utc_ms(date: NaiveDate, minutes: u16, tz: Tz) -> i64 {
    let midnight = date.and_time(NaiveTime::MIN);
    let local_ms = midnight.and_utc().timestamp_millis() + i64::from(minutes) * MS_PER_MINUTE;
    let Some(naive) = midnight.checked_add_signed(Duration::minutes(i64::from(minutes))) else {
        return local_ms;
    };
    match tz.from_local_datetime(&naive) {
        LocalResult::Single(dt) => dt.timestamp_millis(),
        LocalResult::Ambiguous(a, b) => a.timestamp_millis().min(b.timestamp_millis()),
        LocalResult::None => first_instant_at_or_after(naive, tz).unwrap_or(local_ms),
    }
}

/// The instant `days` practice-local calendar days after `from_ms`, at the
/// same wall-clock time: across a DST change that day is 23 or 25 hours
/// long. A wall-clock time the change skips or repeats resolves as in
/// [`local_to_utc_ms`]. Outside chrono's calendar range: `days` times 24 hours.
pub fn add_local_days(from_ms: i64, days: u32, tz: Tz) -> i64 {
    let elapsed = from_ms + i64::from(days) * 24 * 60 * MS_PER_MINUTE;
    let Some(utc) = DateTime::from_timestamp_millis(from_ms) else {
        return elapsed;
    };
    let local = utc.with_timezone(&tz).naive_local();
    let Some(date) = local
        .date()
        .checked_add_days(chrono::Days::new(u64::from(days)))
    else {
        return elapsed;
    };
    let ms_of_day = (local - local.date().and_time(NaiveTime::MIN)).num_milliseconds();
    local_to_utc_ms(date, (ms_of_day / MS_PER_MINUTE) as u16, tz) + ms_of_day % MS_PER_MINUTE
}

/// UTC offset in seconds of `tz` at the instant `utc_s` (seconds since the epoch).
fn offset_at(utc_s: i64, tz: Tz) -> Option<i64> {
    let utc = DateTime::from_timestamp(utc_s, 0)?;
    Some(i64::from(
        tz.offset_from_utc_datetime(&utc.naive_utc())
            .fix()
            .local_minus_utc(),
    ))
}

/// For a local time inside a spring-forward gap: the first instant whose local
/// wall-clock time is `>= naive`, i.e. the transition instant ending the gap.
/// Returns milliseconds, or `None` if the zone's transitions around `naive` are
/// too irregular to resolve (caller falls back).
fn first_instant_at_or_after(naive: NaiveDateTime, tz: Tz) -> Option<i64> {
    // Wall-clock seconds, as if the local time were UTC.
    // Offsets never exceed ~16 h, so 48 h either side is safely before/after the gap.
    const SLACK_S: i64 = 48 * 3600;
    let local_s = naive.and_utc().timestamp();
    let before = offset_at(local_s.checked_sub(SLACK_S)?, tz)?;
    let after = offset_at(local_s.checked_add(SLACK_S)?, tz)?;
    if after <= before {
        return None;
    }
    let wall = |utc_s: i64| offset_at(utc_s, tz).map(|off| utc_s + off);
    // lo: wall clock still before `naive`; hi: wall clock at or after `naive`.
    let mut lo = local_s - after;
    let mut hi = local_s - before;
    if wall(lo)? >= local_s || wall(hi)? < local_s {
        return None;
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if wall(mid)? >= local_s {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi.checked_mul(1000)
}

/// The practice-local calendar date of an instant.
///
/// Instants outside chrono's representable range clamp to
/// `NaiveDate::MIN`/`NaiveDate::MAX`.
pub fn local_date(now_ms: i64, tz: Tz) -> NaiveDate {
    match DateTime::from_timestamp_millis(now_ms) {
        Some(utc) => utc.with_timezone(&tz).date_naive(),
        None if now_ms < 0 => NaiveDate::MIN,
        None => NaiveDate::MAX,
    }
}

/// Parses an IANA zone name (e.g. `"America/New_York"`; surrounding whitespace
/// is ignored).
///
/// # Errors
///
/// A message naming the bad value when the name is empty or not a known zone.
pub fn parse_tz(name: &str) -> Result<Tz, String> {
    let trimmed = name.trim();
    if trimmed.is_empty() {
        return Err(
            "time zone: must not be empty (expected an IANA name such as \"America/New_York\")"
                .to_owned(),
        );
    }
    trimmed.parse::<Tz>().map_err(|_| {
        format!(
            "time zone: unknown IANA time zone {name:?} (expected a name such as \"America/New_York\")"
        )
    })
}

// ---------------------------------------------------------------------------
// Birthdays
// ---------------------------------------------------------------------------

/// Birthday offsets of the Birthday trigger, serialized `snake_case`:
/// `"seven_days_before"`, `"one_day_before"`, `"on_the_day"`, `"one_day_after"`,
/// `"seven_days_after"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BirthdayOffset {
    /// Fires 7 days before the birthday.
    SevenDaysBefore,
    /// Fires 1 day before the birthday.
    OneDayBefore,
    /// Fires on the birthday.
    OnTheDay,
    /// Fires 1 day after the birthday.
    OneDayAfter,
    /// Fires 7 days after the birthday.
    SevenDaysAfter,
}

impl BirthdayOffset {
    /// Signed day offset from the birthday: -7, -1, 0, 1, 7.
    pub fn days(self) -> i64 {
        match self {
            BirthdayOffset::SevenDaysBefore => -7,
            BirthdayOffset::OneDayBefore => -1,
            BirthdayOffset::OnTheDay => 0,
            BirthdayOffset::OneDayAfter => 1,
            BirthdayOffset::SevenDaysAfter => 7,
        }
    }
}

/// The birthday as observed in `year`: same month/day; 29 February maps to
/// 28 February in non-leap years. (If `year` is outside chrono's calendar
/// range, `dob` itself is returned.)
pub fn birthday_in_year(dob: NaiveDate, year: i32) -> NaiveDate {
    NaiveDate::from_ymd_opt(year, dob.month(), dob.day())
        .or_else(|| NaiveDate::from_ymd_opt(year, dob.month(), dob.day().saturating_sub(1)))
        .unwrap_or(dob)
}

/// If `today` is the firing day for this DOB and offset, returns the year of the
/// birthday occurrence it refers to (so "7 days before" a 3 January birthday
/// fires on 27 December of the previous calendar year and returns the
/// birthday's year). Otherwise `None`.
///
/// Checks the occurrences in `today.year()-1`, `today.year()`, `today.year()+1`.
/// Occurrences in years before the birth year are ignored (a future DOB never fires).
pub fn birthday_fires_on(dob: NaiveDate, offset: BirthdayOffset, today: NaiveDate) -> Option<i32> {
    let year = today.year();
    [year.checked_sub(1), Some(year), year.checked_add(1)]
        .into_iter()
        .flatten()
        .filter(|&y| y >= dob.year())
        .find(|&y| {
            let occurrence = birthday_in_year(dob, y);
            occurrence.year() == y
                && occurrence.checked_add_signed(Duration::days(offset.days())) == Some(today)
        })
}

/// All (month, day) pairs of birthdays that fire on `today` with the offset, as
/// `"MM-DD"` strings, sorted (1 or 2 entries: on 28 Feb of a non-leap year the
/// on-the-day set includes both `"02-28"` and `"02-29"`). Used to query contacts
/// by DOB month/day. Empty only at the edges of the representable calendar.
pub fn birthday_month_days_firing(offset: BirthdayOffset, today: NaiveDate) -> Vec<String> {
    let Some(occurrence) = today.checked_sub_signed(Duration::days(offset.days())) else {
        return Vec::new();
    };
    let mut out = vec![format!("{:02}-{:02}", occurrence.month(), occurrence.day())];
    if occurrence.month() == 2 && occurrence.day() == 28 && !occurrence.leap_year() {
        out.push("02-29".to_owned());
    }
    out
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::America::New_York;
    use chrono_tz::Australia::Sydney;
    use chrono_tz::Europe::London;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).expect("valid test date")
    }

    /// UTC instant in ms from an RFC 3339 string.
    fn ms(rfc3339: &str) -> i64 {
        DateTime::parse_from_rfc3339(rfc3339)
            .expect("valid test timestamp")
            .timestamp_millis()
    }

    fn t(s: &str) -> LocalTime {
        s.parse().expect("valid test time")
    }

    #[test]
    fn local_days_keep_the_wall_clock_across_dst() {
        for (from, days, to, why) in [
            (
                "2026-03-07T16:30:00-05:00",
                1,
                "2026-03-08T16:30:00-04:00",
                "spring forward: 23 hours",
            ),
            (
                "2026-10-30T16:30:15.250-04:00",
                3,
                "2026-11-02T16:30:15.250-05:00",
                "fall back: 25 hours",
            ),
            (
                "2026-10-30T16:30:15.250-04:00",
                7,
                "2026-11-06T16:30:15.250-05:00",
                "a week: 7 local days",
            ),
            // 02:30 does not exist on 8 March: the first instant after the gap.
            (
                "2026-03-07T02:30:00-05:00",
                1,
                "2026-03-08T03:00:00-04:00",
                "into the gap",
            ),
        ] {
            assert_eq!(add_local_days(ms(from), days, New_York), ms(to), "{why}");
        }
        // No change in between: exactly 24 hours a day.
        let jan = ms("2026-01-05T09:00:00Z");
        assert_eq!(add_local_days(jan, 2, London), jan + 2 * 24 * 3_600_000);
        assert_eq!(add_local_days(jan, 0, Sydney), jan);
    }

    fn rows(spec: &[(Weekday, bool, &str, &str)]) -> Vec<DayHours> {
        spec.iter()
            .map(|&(day, enabled, start, end)| DayHours {
                day,
                enabled,
                start: t(start),
                end: t(end),
            })
            .collect()
    }

    /// All seven days enabled with the same hours.
    fn every_day(start: &str, end: &str) -> RunWindow {
        let days = Weekday::ALL
            .iter()
            .map(|&day| DayHours {
                day,
                enabled: true,
                start: t(start),
                end: t(end),
            })
            .collect();
        RunWindow::SpecificHours { days }
    }

    // --- LocalTime / serde -------------------------------------------------

    #[test]
    fn local_time_parse_and_display() {
        assert_eq!(t("00:00").minutes, 0);
        assert_eq!(t("09:05").minutes, 545);
        assert_eq!(t("23:59").minutes, 1439);
        assert_eq!(t("24:00"), LocalTime::END_OF_DAY);
        for bad in [
            "24:01", "25:00", "9:00", "09:60", "0900", "09:0a", "", " 09:00", "+9:00",
        ] {
            assert!(
                bad.parse::<LocalTime>().is_err(),
                "{bad:?} should be rejected"
            );
        }
        assert_eq!(t("07:30").to_string(), "07:30");
        assert_eq!(LocalTime::END_OF_DAY.to_string(), "24:00");
        assert_eq!(LocalTime::from_hm(24, 1), None);
        assert_eq!(LocalTime::from_hm(13, 15), Some(LocalTime { minutes: 795 }));
    }

    #[test]
    fn serde_round_trip() {
        let any = serde_json::to_value(RunWindow::AnyTime {}).expect("serialize");
        assert_eq!(any, serde_json::json!({"mode": "any_time"}));

        let bh = RunWindow::business_hours();
        let v = serde_json::to_value(&bh).expect("serialize");
        assert_eq!(v["mode"], "specific_hours");
        assert_eq!(v["days"][0]["day"], "mon");
        assert_eq!(v["days"][0]["enabled"], true);
        assert_eq!(v["days"][0]["start"], "09:00");
        assert_eq!(v["days"][0]["end"], "17:00");
        assert_eq!(v["days"][6]["day"], "sun");
        assert_eq!(v["days"][6]["enabled"], false);
        let back: RunWindow = serde_json::from_value(v).expect("deserialize");
        assert_eq!(back, bh);

        let bad = serde_json::json!({"mode": "specific_hours", "days": [
            {"day": "mon", "enabled": true, "start": "9am", "end": "17:00"}
        ]});
        let err = serde_json::from_value::<RunWindow>(bad).expect_err("bad time");
        assert!(err.to_string().contains("9am"), "{err}");

        let offsets: Vec<BirthdayOffset> = serde_json::from_str(
            r#"["seven_days_before","one_day_before","on_the_day","one_day_after","seven_days_after"]"#,
        )
        .expect("deserialize offsets");
        let days: Vec<i64> = offsets.iter().map(|o| o.days()).collect();
        assert_eq!(days, vec![-7, -1, 0, 1, 7]);
        assert_eq!(
            serde_json::to_string(&Weekday::Wed).expect("serialize"),
            "\"wed\""
        );
    }

    #[test]
    fn json_schema_has_time_pattern() {
        let schema = schemars::schema_for!(RunWindow);
        let text = serde_json::to_string(&schema).expect("schema json");
        assert!(text.contains("24:00)$"), "{text}");
        assert!(text.contains("specific_hours"), "{text}");
        assert!(text.contains("any_time"), "{text}");
    }

    // --- validate ------------------------------------------------------------

    #[test]
    fn validate_accepts_defaults() {
        assert_eq!(RunWindow::AnyTime {}.validate(), Ok(()));
        assert_eq!(RunWindow::business_hours().validate(), Ok(()));
        assert_eq!(every_day("00:00", "24:00").validate(), Ok(()));
    }

    #[test]
    fn validate_errors() {
        use Weekday::*;
        let six = RunWindow::SpecificHours {
            days: rows(&[
                (Mon, true, "09:00", "17:00"),
                (Tue, true, "09:00", "17:00"),
                (Wed, true, "09:00", "17:00"),
                (Thu, true, "09:00", "17:00"),
                (Fri, true, "09:00", "17:00"),
                (Sat, false, "09:00", "17:00"),
            ]),
        };
        assert_eq!(
            six.validate(),
            Err("days: must have exactly 7 rows (one per weekday), got 6".to_owned())
        );

        let dup = RunWindow::SpecificHours {
            days: rows(&[
                (Mon, true, "09:00", "17:00"),
                (Tue, true, "09:00", "17:00"),
                (Wed, true, "09:00", "17:00"),
                (Thu, true, "09:00", "17:00"),
                (Fri, true, "09:00", "17:00"),
                (Sat, false, "09:00", "17:00"),
                (Tue, false, "09:00", "17:00"),
            ]),
        };
        assert_eq!(
            dup.validate(),
            Err("days[6].day: duplicate weekday \"tue\" (already used by days[1])".to_owned())
        );

        let mut backwards = RunWindow::business_hours();
        if let RunWindow::SpecificHours { days } = &mut backwards {
            days[2].end = t("08:00");
        }
        assert_eq!(
            backwards.validate(),
            Err("days[2].end: must be later than start (09:00)".to_owned())
        );

        let mut empty = RunWindow::business_hours();
        if let RunWindow::SpecificHours { days } = &mut empty {
            days[4].end = t("09:00");
        }
        assert_eq!(
            empty.validate(),
            Err("days[4].end: must be later than start (09:00)".to_owned())
        );

        // A disabled row may have any (in-range) hours.
        let mut disabled_backwards = RunWindow::business_hours();
        if let RunWindow::SpecificHours { days } = &mut disabled_backwards {
            days[5].end = t("08:00");
        }
        assert_eq!(disabled_backwards.validate(), Ok(()));

        let mut none = RunWindow::business_hours();
        if let RunWindow::SpecificHours { days } = &mut none {
            days.iter_mut().for_each(|r| r.enabled = false);
        }
        assert_eq!(
            none.validate(),
            Err("days: at least one day must be enabled".to_owned())
        );

        let mut start_eod = RunWindow::business_hours();
        if let RunWindow::SpecificHours { days } = &mut start_eod {
            days[0].start = LocalTime::END_OF_DAY;
        }
        assert_eq!(
            start_eod.validate(),
            Err("days[0].start: 24:00 is only allowed as an end time".to_owned())
        );

        let mut out_of_range = RunWindow::business_hours();
        if let RunWindow::SpecificHours { days } = &mut out_of_range {
            days[3].end = LocalTime { minutes: 2000 };
        }
        let err = out_of_range.validate().expect_err("out of range");
        assert!(err.starts_with("days[3].end: out of range"), "{err}");
    }

    // --- next_open / is_open ----------------------------------------------------

    #[test]
    fn any_time_is_always_open() {
        let now = ms("2026-03-08T07:30:12.345Z");
        assert_eq!(RunWindow::AnyTime {}.next_open(now, New_York), Some(now));
        assert!(RunWindow::AnyTime {}.is_open(now, New_York));
    }

    #[test]
    fn next_open_inside_outside_and_edges() {
        let bh = RunWindow::business_hours();
        // Wednesday 2026-01-14, New York is EST (UTC-5): 09:00 = 14:00Z, 17:00 = 22:00Z.
        let inside = ms("2026-01-14T15:00:00Z");
        assert_eq!(bh.next_open(inside, New_York), Some(inside));
        assert!(bh.is_open(inside, New_York));

        let at_start = ms("2026-01-14T14:00:00Z");
        assert_eq!(bh.next_open(at_start, New_York), Some(at_start));

        let before = ms("2026-01-14T12:00:00Z"); // 07:00 local
        assert_eq!(bh.next_open(before, New_York), Some(at_start));
        assert!(!bh.is_open(before, New_York));

        let just_before_end = ms("2026-01-14T21:59:59.999Z");
        assert_eq!(
            bh.next_open(just_before_end, New_York),
            Some(just_before_end)
        );
        assert!(bh.is_open(just_before_end, New_York));

        let at_end = ms("2026-01-14T22:00:00Z");
        assert!(!bh.is_open(at_end, New_York));
        assert_eq!(
            bh.next_open(at_end, New_York),
            Some(ms("2026-01-15T14:00:00Z"))
        );

        // 23:30 local Wednesday is already Thursday 04:30Z: still opens Thursday 09:00 local.
        let late = ms("2026-01-15T04:30:00Z");
        assert_eq!(
            bh.next_open(late, New_York),
            Some(ms("2026-01-15T14:00:00Z"))
        );
    }

    #[test]
    fn next_open_rounds_up_to_the_minute() {
        let bh = RunWindow::business_hours();
        let now = ms("2026-01-14T13:59:30.500Z"); // 08:59:30.5 local
        assert_eq!(
            bh.next_open(now, New_York),
            Some(ms("2026-01-14T14:00:00Z"))
        );
        let now = ms("2026-01-14T13:59:59.999Z");
        let next = bh.next_open(now, New_York).expect("opens");
        assert_eq!(next, ms("2026-01-14T14:00:00Z"));
        assert_eq!(next % MS_PER_MINUTE, 0);
    }

    #[test]
    fn weekend_skip() {
        let bh = RunWindow::business_hours();
        // Friday 2026-01-16 17:30 EST = 22:30Z -> Monday 2026-01-19 09:00 EST = 14:00Z.
        let fri = ms("2026-01-16T22:30:00Z");
        assert_eq!(
            bh.next_open(fri, New_York),
            Some(ms("2026-01-19T14:00:00Z"))
        );
        // Saturday noon too.
        let sat = ms("2026-01-17T17:00:00Z");
        assert_eq!(
            bh.next_open(sat, New_York),
            Some(ms("2026-01-19T14:00:00Z"))
        );
        assert!(!bh.is_open(sat, New_York));
    }

    #[test]
    fn single_open_day_a_week_later() {
        use Weekday::*;
        let only_wed = RunWindow::SpecificHours {
            days: rows(&[
                (Mon, false, "09:00", "17:00"),
                (Tue, false, "09:00", "17:00"),
                (Wed, true, "10:00", "11:00"),
                (Thu, false, "09:00", "17:00"),
                (Fri, false, "09:00", "17:00"),
                (Sat, false, "09:00", "17:00"),
                (Sun, false, "09:00", "17:00"),
            ]),
        };
        assert_eq!(only_wed.validate(), Ok(()));
        // Wednesday 2026-01-14 11:00 EST (window just closed) -> next Wednesday 10:00 EST.
        let now = ms("2026-01-14T16:00:00Z");
        assert_eq!(
            only_wed.next_open(now, New_York),
            Some(ms("2026-01-21T15:00:00Z"))
        );
        // An invalid window with nothing enabled never opens.
        let closed = RunWindow::SpecificHours {
            days: rows(&[(Mon, false, "09:00", "17:00")]),
        };
        assert_eq!(closed.next_open(now, New_York), None);
        assert!(!closed.is_open(now, New_York));
    }

    #[test]
    fn end_of_day_window() {
        let all_day = every_day("00:00", "24:00");
        let now = ms("2026-01-14T04:59:59.999Z"); // 23:59:59.999 EST
        assert!(all_day.is_open(now, New_York));
        let midnight = ms("2026-01-14T05:00:00Z");
        assert!(all_day.is_open(midnight, New_York));

        let evening = every_day("20:00", "24:00");
        // 19:00 EST -> 20:00 EST same day.
        assert_eq!(
            evening.next_open(ms("2026-01-15T00:00:00Z"), New_York),
            Some(ms("2026-01-15T01:00:00Z"))
        );
        // Just before local midnight still open, at local midnight closed until 20:00.
        assert!(evening.is_open(ms("2026-01-15T04:59:00Z"), New_York));
        assert!(!evening.is_open(ms("2026-01-15T05:00:00Z"), New_York));
    }

    #[test]
    fn us_spring_forward_2026() {
        // 2026-03-08 (Sunday): 02:00 EST -> 03:00 EDT at 07:00Z.
        let bh = RunWindow::business_hours();
        // Friday 2026-03-06 17:30 EST = 22:30Z -> Monday 2026-03-09 09:00 EDT = 13:00Z.
        assert_eq!(
            bh.next_open(ms("2026-03-06T22:30:00Z"), New_York),
            Some(ms("2026-03-09T13:00:00Z"))
        );
        // The week before, Monday 09:00 was EST = 14:00Z.
        assert_eq!(
            bh.next_open(ms("2026-02-27T22:30:00Z"), New_York),
            Some(ms("2026-03-02T14:00:00Z"))
        );
        // Monday 17:00 EDT = 21:00Z closes.
        assert!(bh.is_open(ms("2026-03-09T20:59:59.999Z"), New_York));
        assert!(!bh.is_open(ms("2026-03-09T21:00:00Z"), New_York));

        // A window every day 09:00-17:00 on the transition Sunday itself is EDT.
        let daily = every_day("09:00", "17:00");
        assert_eq!(
            daily.next_open(ms("2026-03-08T05:00:00Z"), New_York),
            Some(ms("2026-03-08T13:00:00Z"))
        );
    }

    #[test]
    fn start_inside_spring_forward_gap() {
        // 02:30 does not exist on 2026-03-08 in New York: opens at 03:00 EDT = 07:00Z.
        assert_eq!(
            local_to_utc_ms(d(2026, 3, 8), 150, New_York),
            ms("2026-03-08T07:00:00Z")
        );
        // Exactly 02:00 is in the gap too; 03:00 exists.
        assert_eq!(
            local_to_utc_ms(d(2026, 3, 8), 120, New_York),
            ms("2026-03-08T07:00:00Z")
        );
        assert_eq!(
            local_to_utc_ms(d(2026, 3, 8), 180, New_York),
            ms("2026-03-08T07:00:00Z")
        );
        assert_eq!(
            local_to_utc_ms(d(2026, 3, 8), 119, New_York),
            ms("2026-03-08T06:59:00Z")
        );

        let w = every_day("02:30", "04:00");
        // Saturday 23:00 EST (04:00Z Sunday) -> Sunday 03:00 EDT.
        let now = ms("2026-03-08T04:00:00Z");
        assert_eq!(w.next_open(now, New_York), Some(ms("2026-03-08T07:00:00Z")));
        assert_eq!(
            w.day_start(d(2026, 3, 8), New_York),
            Some(ms("2026-03-08T07:00:00Z"))
        );
        // On Monday 02:30 EDT = 06:30Z again.
        assert_eq!(
            w.next_open(ms("2026-03-08T09:00:00Z"), New_York),
            Some(ms("2026-03-09T06:30:00Z"))
        );
        // A window entirely inside the gap is empty that day and skipped.
        let gap_only = every_day("02:10", "02:50");
        assert_eq!(
            gap_only.next_open(now, New_York),
            Some(ms("2026-03-09T06:10:00Z"))
        );
    }

    #[test]
    fn us_fall_back_2026() {
        // 2026-11-01 (Sunday): 02:00 EDT -> 01:00 EST at 06:00Z.
        let bh = RunWindow::business_hours();
        // Friday 2026-10-30 17:30 EDT = 21:30Z -> Monday 2026-11-02 09:00 EST = 14:00Z.
        assert_eq!(
            bh.next_open(ms("2026-10-30T21:30:00Z"), New_York),
            Some(ms("2026-11-02T14:00:00Z"))
        );
        // The Monday before was EDT: 13:00Z.
        assert_eq!(
            bh.next_open(ms("2026-10-23T21:30:00Z"), New_York),
            Some(ms("2026-10-26T13:00:00Z"))
        );
        // Ambiguous 01:30 resolves to the earlier (EDT) instant, 05:30Z.
        assert_eq!(
            local_to_utc_ms(d(2026, 11, 1), 90, New_York),
            ms("2026-11-01T05:30:00Z")
        );
        let w = every_day("01:30", "03:00");
        assert_eq!(
            w.next_open(ms("2026-11-01T04:00:00Z"), New_York),
            Some(ms("2026-11-01T05:30:00Z"))
        );
        // The window spans 01:30 EDT (05:30Z) .. 03:00 EST (08:00Z): 2.5 real hours.
        assert!(w.is_open(ms("2026-11-01T07:59:59Z"), New_York));
        assert!(!w.is_open(ms("2026-11-01T08:00:00Z"), New_York));
        assert_eq!(
            local_date(ms("2026-11-01T06:30:00Z"), New_York),
            d(2026, 11, 1)
        );
    }

    #[test]
    fn europe_london() {
        let bh = RunWindow::business_hours();
        // Spring forward 2026-03-29 (Sunday) 01:00 GMT -> 02:00 BST.
        // Friday 2026-03-27 17:30 GMT -> Monday 2026-03-30 09:00 BST = 08:00Z.
        assert_eq!(
            bh.next_open(ms("2026-03-27T17:30:00Z"), London),
            Some(ms("2026-03-30T08:00:00Z"))
        );
        // Fall back 2026-10-25 (Sunday): Monday 2026-10-26 09:00 GMT = 09:00Z.
        assert_eq!(
            bh.next_open(ms("2026-10-23T16:30:00Z"), London),
            Some(ms("2026-10-26T09:00:00Z"))
        );
        // 01:30 on 2026-03-29 does not exist -> 02:00 BST = 01:00Z.
        assert_eq!(
            local_to_utc_ms(d(2026, 3, 29), 90, London),
            ms("2026-03-29T01:00:00Z")
        );
        // 01:30 on 2026-10-25 is ambiguous -> 01:30 BST = 00:30Z.
        assert_eq!(
            local_to_utc_ms(d(2026, 10, 25), 90, London),
            ms("2026-10-25T00:30:00Z")
        );
    }

    #[test]
    fn australia_sydney_southern_hemisphere() {
        let bh = RunWindow::business_hours();
        // DST ends 2026-04-05 (Sunday) 03:00 AEDT -> 02:00 AEST.
        // Friday 2026-04-03 17:30 AEDT (+11) = 06:30Z -> Monday 2026-04-06 09:00 AEST (+10) = 23:00Z Sunday.
        assert_eq!(
            bh.next_open(ms("2026-04-03T06:30:00Z"), Sydney),
            Some(ms("2026-04-05T23:00:00Z"))
        );
        // DST starts 2026-10-04 (Sunday) 02:00 AEST -> 03:00 AEDT.
        // Friday 2026-10-02 17:30 AEST = 07:30Z -> Monday 2026-10-05 09:00 AEDT = 22:00Z Sunday.
        assert_eq!(
            bh.next_open(ms("2026-10-02T07:30:00Z"), Sydney),
            Some(ms("2026-10-04T22:00:00Z"))
        );
        // 02:30 on 2026-10-04 is in the gap -> 03:00 AEDT = 16:00Z on 10-03.
        assert_eq!(
            local_to_utc_ms(d(2026, 10, 4), 150, Sydney),
            ms("2026-10-03T16:00:00Z")
        );
        // 02:30 on 2026-04-05 is ambiguous -> earlier, 02:30 AEDT = 15:30Z on 04-04.
        assert_eq!(
            local_to_utc_ms(d(2026, 4, 5), 150, Sydney),
            ms("2026-04-04T15:30:00Z")
        );
        // The local date is ahead of UTC.
        assert_eq!(
            local_date(ms("2026-04-05T23:00:00Z"), Sydney),
            d(2026, 4, 6)
        );
    }

    #[test]
    fn whole_day_gap_samoa() {
        // Pacific/Apia skipped 2011-12-30 entirely (UTC-10 -> UTC+14 at 10:00Z).
        let apia = chrono_tz::Pacific::Apia;
        assert_eq!(
            local_to_utc_ms(d(2011, 12, 30), 9 * 60, apia),
            ms("2011-12-30T10:00:00Z")
        );
        let daily = every_day("09:00", "17:00");
        // Thursday 29th 18:00 local (-10) = 30th 04:00Z -> Saturday 31st 09:00 (+14) = 30th 19:00Z.
        assert_eq!(
            daily.next_open(ms("2011-12-30T04:00:00Z"), apia),
            Some(ms("2011-12-30T19:00:00Z"))
        );
    }

    // --- day_start / conversions ---------------------------------------------------

    #[test]
    fn day_start() {
        let bh = RunWindow::business_hours();
        // Monday 2026-01-12 09:00 EST.
        assert_eq!(
            bh.day_start(d(2026, 1, 12), New_York),
            Some(ms("2026-01-12T14:00:00Z"))
        );
        // Summer: Monday 2026-07-13 09:00 EDT.
        assert_eq!(
            bh.day_start(d(2026, 7, 13), New_York),
            Some(ms("2026-07-13T13:00:00Z"))
        );
        // Saturday disabled.
        assert_eq!(bh.day_start(d(2026, 1, 17), New_York), None);
        // AnyTime: local midnight.
        assert_eq!(
            RunWindow::AnyTime {}.day_start(d(2026, 1, 17), New_York),
            Some(ms("2026-01-17T05:00:00Z"))
        );
        assert_eq!(
            RunWindow::AnyTime {}.day_start(d(2026, 7, 1), Sydney),
            Some(ms("2026-06-30T14:00:00Z"))
        );
    }

    #[test]
    fn local_conversions() {
        // 1440 minutes = next day's midnight.
        assert_eq!(
            local_to_utc_ms(d(2026, 1, 14), 1440, New_York),
            local_to_utc_ms(d(2026, 1, 15), 0, New_York)
        );
        assert_eq!(
            local_date(ms("2026-01-15T04:59:59Z"), New_York),
            d(2026, 1, 14)
        );
        assert_eq!(
            local_date(ms("2026-01-15T05:00:00Z"), New_York),
            d(2026, 1, 15)
        );
        // Extremes never panic.
        let _ = local_date(i64::MAX, New_York);
        let _ = local_date(i64::MIN, Sydney);
        assert_eq!(local_date(i64::MAX, New_York), NaiveDate::MAX);
        assert_eq!(local_date(i64::MIN, New_York), NaiveDate::MIN);
        let _ = local_to_utc_ms(NaiveDate::MAX, 1440, Sydney);
        let _ = local_to_utc_ms(NaiveDate::MIN, 0, New_York);
        let _ = local_to_utc_ms(NaiveDate::MAX, u16::MAX, New_York);
        let bh = RunWindow::business_hours();
        let _ = bh.next_open(i64::MAX, New_York);
        let _ = bh.next_open(i64::MIN, Sydney);
        let _ = bh.day_start(NaiveDate::MAX, Sydney);
    }

    #[test]
    fn parse_tz_names() {
        assert_eq!(parse_tz("America/New_York"), Ok(New_York));
        assert_eq!(parse_tz(" Europe/London "), Ok(London));
        assert_eq!(parse_tz("UTC"), Ok(chrono_tz::UTC));
        let err = parse_tz("Mars/Olympus_Mons").expect_err("unknown");
        assert!(err.contains("Mars/Olympus_Mons"), "{err}");
        assert!(parse_tz("").is_err());
    }

    // --- birthdays ---------------------------------------------------------------

    #[test]
    fn birthday_in_year_leap_day() {
        let dob = d(2000, 2, 29);
        assert_eq!(birthday_in_year(dob, 2027), d(2027, 2, 28));
        assert_eq!(birthday_in_year(dob, 2028), d(2028, 2, 29));
        assert_eq!(birthday_in_year(d(1990, 7, 4), 2026), d(2026, 7, 4));
        // Out of calendar range: no panic.
        assert_eq!(birthday_in_year(dob, i32::MAX), dob);
    }

    #[test]
    fn birthday_fires_on_offsets() {
        use BirthdayOffset::*;
        let dob = d(1985, 1, 3);
        // 7 days before a 3 January birthday fires on 27 December of the previous year.
        assert_eq!(
            birthday_fires_on(dob, SevenDaysBefore, d(2026, 12, 27)),
            Some(2027)
        );
        assert_eq!(
            birthday_fires_on(dob, SevenDaysBefore, d(2026, 12, 28)),
            None
        );
        assert_eq!(birthday_fires_on(dob, OnTheDay, d(2027, 1, 3)), Some(2027));
        assert_eq!(
            birthday_fires_on(dob, OneDayBefore, d(2027, 1, 2)),
            Some(2027)
        );
        assert_eq!(
            birthday_fires_on(dob, SevenDaysAfter, d(2027, 1, 10)),
            Some(2027)
        );
        assert_eq!(birthday_fires_on(dob, OnTheDay, d(2027, 1, 4)), None);

        // one_day_after a 31 December birthday fires on 1 January and refers to the previous year.
        let nye = d(1970, 12, 31);
        assert_eq!(
            birthday_fires_on(nye, OneDayAfter, d(2027, 1, 1)),
            Some(2026)
        );
        assert_eq!(
            birthday_fires_on(nye, OnTheDay, d(2026, 12, 31)),
            Some(2026)
        );

        // Leap-day birthdays.
        let leap = d(2000, 2, 29);
        assert_eq!(
            birthday_fires_on(leap, OnTheDay, d(2027, 2, 28)),
            Some(2027)
        );
        assert_eq!(birthday_fires_on(leap, OnTheDay, d(2027, 3, 1)), None);
        assert_eq!(birthday_fires_on(leap, OnTheDay, d(2028, 2, 28)), None);
        assert_eq!(
            birthday_fires_on(leap, OnTheDay, d(2028, 2, 29)),
            Some(2028)
        );
        assert_eq!(
            birthday_fires_on(leap, OneDayAfter, d(2027, 3, 1)),
            Some(2027)
        );
        assert_eq!(
            birthday_fires_on(leap, OneDayAfter, d(2028, 3, 1)),
            Some(2028)
        );
        // A 28 February birthday in a leap year stays on the 28th.
        assert_eq!(
            birthday_fires_on(d(1999, 2, 28), OnTheDay, d(2028, 2, 28)),
            Some(2028)
        );

        // No occurrence before the birth year.
        assert_eq!(
            birthday_fires_on(d(2027, 1, 3), SevenDaysBefore, d(2026, 12, 27)),
            Some(2027)
        );
        assert_eq!(
            birthday_fires_on(d(2028, 1, 3), OnTheDay, d(2027, 1, 3)),
            None
        );
    }

    #[test]
    fn birthday_month_days() {
        use BirthdayOffset::*;
        assert_eq!(
            birthday_month_days_firing(OnTheDay, d(2027, 2, 28)),
            vec!["02-28".to_owned(), "02-29".to_owned()]
        );
        assert_eq!(
            birthday_month_days_firing(OnTheDay, d(2028, 2, 28)),
            vec!["02-28".to_owned()]
        );
        assert_eq!(
            birthday_month_days_firing(OnTheDay, d(2028, 2, 29)),
            vec!["02-29".to_owned()]
        );
        assert_eq!(
            birthday_month_days_firing(SevenDaysBefore, d(2026, 12, 27)),
            vec!["01-03".to_owned()]
        );
        assert_eq!(
            birthday_month_days_firing(OneDayAfter, d(2027, 1, 1)),
            vec!["12-31".to_owned()]
        );
        // 7 days before 28 Feb 2027 is 21 Feb.
        assert_eq!(
            birthday_month_days_firing(SevenDaysBefore, d(2027, 2, 21)),
            vec!["02-28".to_owned(), "02-29".to_owned()]
        );
        assert_eq!(
            birthday_month_days_firing(OneDayAfter, d(2027, 3, 1)),
            vec!["02-28".to_owned(), "02-29".to_owned()]
        );

        // Consistency with birthday_fires_on over two full years, every offset.
        let offsets = [
            SevenDaysBefore,
            OneDayBefore,
            OnTheDay,
            OneDayAfter,
            SevenDaysAfter,
        ];
        let dobs = [
            d(1980, 1, 3),
            d(1980, 2, 28),
            d(1980, 2, 29),
            d(1980, 3, 1),
            d(1980, 12, 31),
        ];
        let mut day = d(2026, 1, 1);
        while day < d(2029, 1, 1) {
            for offset in offsets {
                let set = birthday_month_days_firing(offset, day);
                for dob in dobs {
                    let key = format!("{:02}-{:02}", dob.month(), dob.day());
                    assert_eq!(
                        set.contains(&key),
                        birthday_fires_on(dob, offset, day).is_some(),
                        "dob {dob} offset {offset:?} day {day}"
                    );
                }
            }
            day = day.succ_opt().expect("next day");
        }
    }
}
