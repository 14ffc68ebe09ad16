//! The scoring itself: plain Rust over `serde_json`, no host imports, so it is
//! unit-tested natively with `cargo test -p lead-score`.
//!
//! # The score
//!
//! Five factors, each worth between 0 and 1 of its weight (weights come from
//! the step config):
//!
//! | factor | 1.0 | partial | 0 |
//! |---|---|---|---|
//! | `status` | `lead` | — | `patient`, absent |
//! | `lead_source` | `walk_in` | `website_form` 0.8, `manual_entry` 0.5, other 0.5, `import` 0.3 | absent |
//! | `tags` | 2+ tags from `interest_tags` | 1 tag: 0.5 | none |
//! | subscriptions | email and SMS `subscribed` | one of them: 0.5 | neither |
//! | activity | see below | | |
//!
//! The score is `round(100 × points / sum of weights)`, so it stays in 0–100
//! whatever the weights.
//!
//! # Activity, and why there is no clock read
//!
//! A step must not depend on the wall clock (the host may run a manual clock,
//! and a step is judged on what the host passed), so the plugin never reads
//! it. Activity is *recency*: the days from the contact's last sign of life
//! (`last_activity_at`, else `last_activity`, else `created_at` when there is
//! no activity yet) to the reference time, which is the request's `now` (the
//! module's time) unless the step config sets `as_of` (e.g. to score a
//! campaign as of a fixed date). Full points within `recent_days`, then
//! linear down to 0 at three times `recent_days`; 0 without any timestamp.
//! Activity after the reference time counts as recent. The same request
//! always gives the same score.
//!
//! Timestamps are accepted as epoch milliseconds (a JSON number), `YYYY-MM-DD`
//! or RFC 3339 (`2026-03-01T12:00:00Z`, `...+02:00`).

use crm_plugin_sdk::json::{opt_bool, opt_i64, opt_str, opt_str_list};
use crm_plugin_sdk::serde_json::{Map, Value};

const MS_PER_DAY: f64 = 86_400_000.0;

/// Lead temperature bands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Temperature {
    /// Score at or above `hot_threshold`.
    Hot,
    /// Score at or above `warm_threshold`.
    Warm,
    /// Anything lower.
    Cold,
}

impl Temperature {
    /// The value written to the temperature property.
    pub fn as_str(self) -> &'static str {
        match self {
            Temperature::Hot => "hot",
            Temperature::Warm => "warm",
            Temperature::Cold => "cold",
        }
    }
}

/// The step config, with the schema's defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Property that receives the score (custom property, snake case).
    pub property: String,
    /// Property that receives `hot` / `warm` / `cold`; empty: not set.
    pub temperature_property: String,
    /// Tag added to hot contacts; empty: none.
    pub hot_tag: String,
    /// Score from which a contact is hot.
    pub hot_threshold: i64,
    /// Score from which a contact is warm.
    pub warm_threshold: i64,
    /// `is-hot`: YES at or above this score.
    pub threshold: i64,
    /// Weight of the `status` factor.
    pub status_weight: i64,
    /// Weight of the `lead_source` factor.
    pub source_weight: i64,
    /// Weight of the `tags` factor.
    pub tags_weight: i64,
    /// Weight of the subscriptions factor.
    pub subscription_weight: i64,
    /// Weight of the activity factor.
    pub activity_weight: i64,
    /// Tags that show interest (from a comma-separated list, lowercased).
    pub interest_tags: Vec<String>,
    /// Reference time for recency (epoch ms) instead of the request's `now`.
    pub as_of: Option<i64>,
    /// Recency window for full activity points (days).
    pub recent_days: i64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            property: "lead_score".into(),
            temperature_property: "lead_temperature".into(),
            hot_tag: String::new(),
            hot_threshold: 70,
            warm_threshold: 40,
            threshold: 70,
            status_weight: 15,
            source_weight: 20,
            tags_weight: 20,
            subscription_weight: 15,
            activity_weight: 30,
            interest_tags: vec![
                "interested".into(),
                "consult-requested".into(),
                "vip".into(),
            ],
            as_of: None,
            recent_days: 30,
        }
    }
}

impl Settings {
    /// Reads the step config; a reason names the offending key.
    pub fn from_config(config: &Map<String, Value>) -> Result<Self, String> {
        let cfg = |e: String| format!("config {e}");
        let mut s = Settings::default();
        if let Some(v) = opt_str(config, "property").map_err(cfg)? {
            s.property = v.trim().to_string();
        }
        check_property_name("property", &s.property, false)?;
        if let Some(v) = opt_str(config, "temperature_property").map_err(cfg)? {
            s.temperature_property = v.trim().to_string();
        }
        check_property_name("temperature_property", &s.temperature_property, true)?;
        if let Some(v) = opt_str(config, "hot_tag").map_err(cfg)? {
            s.hot_tag = v.trim().to_string();
        }
        if s.hot_tag.len() > 100 {
            return Err("config hot_tag: at most 100 characters".into());
        }
        for (key, slot, max) in [
            ("hot_threshold", &mut s.hot_threshold, 100),
            ("warm_threshold", &mut s.warm_threshold, 100),
            ("threshold", &mut s.threshold, 100),
            ("status_weight", &mut s.status_weight, 1000),
            ("source_weight", &mut s.source_weight, 1000),
            ("tags_weight", &mut s.tags_weight, 1000),
            ("subscription_weight", &mut s.subscription_weight, 1000),
            ("activity_weight", &mut s.activity_weight, 1000),
            ("recent_days", &mut s.recent_days, 3650),
        ] {
            let value = opt_i64(config, key).map_err(cfg)?;
            if let Some(v) = value {
                if !(0..=max).contains(&v) {
                    return Err(format!("config {key}: must be between 0 and {max}"));
                }
                *slot = v;
            }
        }
        if s.warm_threshold > s.hot_threshold {
            return Err("config warm_threshold: must not exceed hot_threshold".into());
        }
        if s.weight_sum() == 0 {
            return Err("config: all weights are 0".into());
        }
        if let Some(v) = opt_str(config, "interest_tags").map_err(cfg)? {
            s.interest_tags = v
                .split(',')
                .map(|t| t.trim().to_lowercase())
                .filter(|t| !t.is_empty())
                .collect();
        }
        let as_of = opt_str(config, "as_of").map_err(cfg)?.map(str::trim);
        if let Some(v) = as_of.filter(|v| !v.is_empty()) {
            s.as_of = Some(
                parse_timestamp_text(v)
                    .ok_or("config as_of: expected a date YYYY-MM-DD or an RFC 3339 time")?,
            );
        }
        Ok(s)
    }

    fn weight_sum(&self) -> i64 {
        self.status_weight
            + self.source_weight
            + self.tags_weight
            + self.subscription_weight
            + self.activity_weight
    }

    /// The temperature band of `score`.
    pub fn temperature(&self, score: u8) -> Temperature {
        let score = i64::from(score);
        if score >= self.hot_threshold {
            Temperature::Hot
        } else if score >= self.warm_threshold {
            Temperature::Warm
        } else {
            Temperature::Cold
        }
    }
}

/// A custom property name: lowercase snake case, 1 to 64 characters.
fn check_property_name(key: &str, name: &str, may_be_empty: bool) -> Result<(), String> {
    if name.is_empty() && may_be_empty {
        return Ok(());
    }
    let ok = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "config {key}: expected a lowercase snake_case property name"
        ))
    }
}

/// Scores `contact` (the host's contact JSON) from 0 to 100, with `now`
/// (epoch ms, the request's `now`) as the reference time unless `as_of` is
/// configured. The reason of an error names the field and what was expected,
/// never the value.
pub fn score(contact: &Map<String, Value>, s: &Settings, now: i64) -> Result<u8, String> {
    let field = |e: String| format!("contact {e}");

    let status = match opt_str(contact, "status").map_err(field)? {
        Some(v) if v.eq_ignore_ascii_case("lead") => 1.0,
        _ => 0.0,
    };

    let source = match opt_str(contact, "lead_source").map_err(field)? {
        None => 0.0,
        Some(v) => match v.trim().to_ascii_lowercase().as_str() {
            "" => 0.0,
            "walk_in" => 1.0,
            "website_form" => 0.8,
            "manual_entry" => 0.5,
            "import" => 0.3,
            _ => 0.5,
        },
    };

    let tags = opt_str_list(contact, "tags")
        .map_err(field)?
        .unwrap_or_default();
    let matching = tags
        .iter()
        .filter(|t| {
            let t = t.trim().to_lowercase();
            s.interest_tags.contains(&t)
        })
        .count();
    let tags = (matching.min(2) as f64) / 2.0;

    let subscribed = |key: &str| -> Result<f64, String> {
        Ok(match subscription(contact, key).map_err(field)? {
            Some(true) => 0.5,
            _ => 0.0,
        })
    };
    let subscriptions = subscribed("email_subscription")? + subscribed("sms_subscription")?;

    let created = timestamp(contact, "created_at").map_err(field)?;
    let last = match timestamp(contact, "last_activity_at").map_err(field)? {
        Some(t) => Some(t),
        None => timestamp(contact, "last_activity").map_err(field)?,
    };
    let activity = activity(last.or(created), s.as_of.unwrap_or(now), s.recent_days);

    let points = status * s.status_weight as f64
        + source * s.source_weight as f64
        + tags * s.tags_weight as f64
        + subscriptions * s.subscription_weight as f64
        + activity * s.activity_weight as f64;
    let score = (100.0 * points / s.weight_sum() as f64).round();
    Ok(score.clamp(0.0, 100.0) as u8)
}

/// The activity factor (0 to 1), see the module docs.
fn activity(last_seen: Option<i64>, reference: i64, recent_days: i64) -> f64 {
    let Some(last_seen) = last_seen else {
        return 0.0;
    };
    let days = (reference - last_seen) as f64 / MS_PER_DAY;
    let window = recent_days.max(1) as f64;
    if days <= window {
        1.0
    } else {
        (1.0 - (days - window) / (2.0 * window)).clamp(0.0, 1.0)
    }
}

/// `subscribed` → true, `unsubscribed`/`unknown` → false; a boolean is
/// accepted too.
fn subscription(contact: &Map<String, Value>, key: &str) -> Result<Option<bool>, String> {
    if let Ok(b) = opt_bool(contact, key) {
        return Ok(b);
    }
    match opt_str(contact, key)? {
        None => Ok(None),
        Some(v) => match v {
            "subscribed" => Ok(Some(true)),
            "unsubscribed" | "unknown" | "" => Ok(Some(false)),
            _ => Err(format!(
                "{key}: expected subscribed, unsubscribed or unknown"
            )),
        },
    }
}

/// A timestamp field as epoch milliseconds: a number, `YYYY-MM-DD` or RFC 3339.
fn timestamp(contact: &Map<String, Value>, key: &str) -> Result<Option<i64>, String> {
    let expected = || format!("{key}: expected epoch milliseconds, YYYY-MM-DD or RFC 3339");
    match contact.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .map(Some)
            .ok_or_else(expected),
        Some(Value::String(t)) if t.trim().is_empty() => Ok(None),
        Some(Value::String(t)) => parse_timestamp_text(t.trim())
            .map(Some)
            .ok_or_else(expected),
        Some(_) => Err(expected()),
    }
}

/// Parses `YYYY-MM-DD` (midnight UTC) or RFC 3339
/// (`YYYY-MM-DDTHH:MM:SS[.fff](Z|±HH:MM)`, `T` or a space) to epoch ms.
pub fn parse_timestamp_text(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = text.get(range)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let mut ms = days_from_civil(year, month, day) * 86_400_000;
    if b.len() == 10 {
        return Some(ms);
    }
    if !(b[10] == b'T' || b[10] == b't' || b[10] == b' ')
        || b.len() < 19
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (h, m, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if h > 23 || m > 59 || sec > 60 {
        return None;
    }
    ms += ((h * 60 + m) * 60 + sec) * 1000;
    let mut rest = &text[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let millis: String = frac[..digits].chars().chain("00".chars()).take(3).collect();
        ms += millis.parse::<i64>().ok()?;
        rest = &frac[digits..];
    }
    match rest {
        "Z" | "z" => Some(ms),
        _ => {
            let rb = rest.as_bytes();
            if rb.len() != 6 || !(rb[0] == b'+' || rb[0] == b'-') || rb[3] != b':' {
                return None;
            }
            let oh: i64 = rest[1..3].parse().ok()?;
            let om: i64 = rest[4..6].parse().ok()?;
            if oh > 23 || om > 59 {
                return None;
            }
            let offset = (oh * 60 + om) * 60_000;
            Some(if rb[0] == b'+' {
                ms - offset
            } else {
                ms + offset
            })
        }
    }
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use crm_plugin_sdk::serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    fn at(text: &str) -> i64 {
        parse_timestamp_text(text).unwrap()
    }

    fn hot_contact() -> Map<String, Value> {
        obj(json!({
            "id": "c1",
            "status": "lead",
            "lead_source": "walk_in",
            "tags": ["Interested", "vip", "other"],
            "email_subscription": "subscribed",
            "sms_subscription": "subscribed",
            "created_at": "2026-01-01",
            "last_activity_at": "2026-01-20T10:00:00Z",
        }))
    }

    #[test]
    fn timestamps() {
        assert_eq!(parse_timestamp_text("1970-01-01"), Some(0));
        assert_eq!(
            parse_timestamp_text("1970-01-02T00:00:00Z"),
            Some(86_400_000)
        );
        assert_eq!(parse_timestamp_text("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(parse_timestamp_text("1970-01-01 00:00:01.5Z"), Some(1500));
        assert_eq!(parse_timestamp_text("2024-02-29"), Some(1_709_164_800_000));
        assert_eq!(parse_timestamp_text("2023-02-29"), None);
        assert_eq!(parse_timestamp_text("2026-13-01"), None);
        assert_eq!(parse_timestamp_text("2026-01-01T10:00"), None);
        assert_eq!(parse_timestamp_text("yesterday"), None);
        assert_eq!(parse_timestamp_text("2026-01-01T10:00:00"), None);
    }

    #[test]
    fn a_recently_active_walk_in_lead_scores_100() {
        let s = Settings::default();
        assert_eq!(score(&hot_contact(), &s, at("2026-01-25")), Ok(100));
        assert_eq!(s.temperature(100), Temperature::Hot);
    }

    #[test]
    fn an_empty_contact_scores_0() {
        let c = obj(json!({"id": "c1"}));
        assert_eq!(score(&c, &Settings::default(), at("2026-01-25")), Ok(0));
    }

    #[test]
    fn partial_factors() {
        let s = Settings::default();
        // lead 15 + website_form 0.8 * 20 = 16 + one tag 10 + email 7.5
        // + 45 days since activity with a 30-day window: 0.75 * 30 = 22.5
        let c = obj(json!({
            "status": "lead",
            "lead_source": "website_form",
            "tags": ["interested"],
            "email_subscription": "subscribed",
            "sms_subscription": "unsubscribed",
            "created_at": 0,
            "last_activity_at": "2026-01-01",
        }));
        assert_eq!(score(&c, &s, at("2026-02-15")), Ok(71));
        assert_eq!(s.temperature(71), Temperature::Hot);
        assert_eq!(s.temperature(69), Temperature::Warm);
        assert_eq!(s.temperature(39), Temperature::Cold);
    }

    #[test]
    fn patients_and_unsubscribed_score_low() {
        let c = obj(json!({
            "status": "patient",
            "lead_source": "import",
            "email_subscription": "unsubscribed",
            "sms_subscription": "unknown",
            "created_at": "2025-01-01",
        }));
        // import 0.3 * 20 = 6; created over a year ago, no activity.
        assert_eq!(score(&c, &Settings::default(), at("2026-01-25")), Ok(6));
    }

    #[test]
    fn recency_against_now_or_as_of() {
        let s = Settings::from_config(&obj(json!({"recent_days": 10}))).unwrap();
        let mut c = obj(json!({"last_activity_at": "2026-02-25"}));
        assert_eq!(score(&c, &s, at("2026-03-01")), Ok(30));
        // 20 days: 10 past the window, half-way to 0 at 30 days.
        assert_eq!(score(&c, &s, at("2026-03-17")), Ok(15));
        assert_eq!(score(&c, &s, at("2026-06-01")), Ok(0));
        // Activity after the reference time counts as recent.
        assert_eq!(score(&c, &s, at("2026-01-01")), Ok(30));
        // Without activity, creation counts.
        c.remove("last_activity_at");
        c.insert("created_at".into(), json!("2026-02-28T23:00:00-05:00"));
        assert_eq!(score(&c, &s, at("2026-03-01")), Ok(30));
        // The module's own name for the field is accepted too.
        let c2 = obj(json!({"last_activity": 1_772_323_200_000_i64})); // 2026-03-01
        assert_eq!(score(&c2, &s, at("2026-03-01")), Ok(30));
        // as_of replaces now.
        let s =
            Settings::from_config(&obj(json!({"recent_days": 10, "as_of": "2026-06-01"}))).unwrap();
        assert_eq!(score(&c, &s, at("2026-03-01")), Ok(0));
    }

    #[test]
    fn weights_and_thresholds_from_config() {
        let config = obj(json!({
            "status_weight": 0, "source_weight": 0, "tags_weight": 10,
            "subscription_weight": 0, "activity_weight": 0,
            "interest_tags": "gold, silver",
            "hot_threshold": 90, "warm_threshold": 50,
        }));
        let s = Settings::from_config(&config).unwrap();
        let c = obj(json!({"tags": ["silver"]}));
        assert_eq!(score(&c, &s, 0), Ok(50));
        assert_eq!(s.temperature(50), Temperature::Warm);
        assert_eq!(s.temperature(90), Temperature::Hot);
    }

    #[test]
    fn deterministic() {
        let s = Settings::default();
        let c = hot_contact();
        let now = at("2026-02-10");
        assert_eq!(score(&c, &s, now), score(&c, &s, now));
    }

    #[test]
    fn malformed_contacts_fail_without_values() {
        let s = Settings::default();
        for (c, reason) in [
            (json!({"status": 3}), "contact status: expected a string"),
            (
                json!({"tags": "vip"}),
                "contact tags: expected a list of strings",
            ),
            (
                json!({"created_at": "Jane's birthday"}),
                "contact created_at: expected epoch milliseconds, YYYY-MM-DD or RFC 3339",
            ),
            (
                json!({"sms_subscription": "maybe"}),
                "contact sms_subscription: expected subscribed, unsubscribed or unknown",
            ),
        ] {
            assert_eq!(score(&obj(c), &s, 0), Err(reason.to_string()));
        }
    }

    #[test]
    fn bad_config() {
        for (c, reason) in [
            (
                json!({"property": "Lead Score"}),
                "config property: expected a lowercase snake_case property name",
            ),
            (json!({"property": 7}), "config property: expected a string"),
            (
                json!({"hot_threshold": 101}),
                "config hot_threshold: must be between 0 and 100",
            ),
            (
                json!({"hot_threshold": "high"}),
                "config hot_threshold: expected an integer",
            ),
            (
                json!({"warm_threshold": 80}),
                "config warm_threshold: must not exceed hot_threshold",
            ),
            (
                json!({"as_of": "soon"}),
                "config as_of: expected a date YYYY-MM-DD or an RFC 3339 time",
            ),
            (
                json!({"status_weight": 0, "source_weight": 0, "tags_weight": 0,
                       "subscription_weight": 0, "activity_weight": 0}),
                "config: all weights are 0",
            ),
        ] {
            assert_eq!(Settings::from_config(&obj(c)), Err(reason.to_string()));
        }
        assert!(Settings::from_config(&obj(json!({"temperature_property": ""}))).is_ok());
        assert!(Settings::from_config(&obj(json!({"as_of": ""}))).is_ok());
    }
}
