//! Contacts mirrored from the host (SPEC §1).
//!
//! A contact is an id plus a map of properties. Known properties are validated
//! against [`KNOWN_PROPERTIES`]; any other key is a custom property, kept and
//! usable in filters, conditions and templates. Values are canonical JSON:
//! `status` is `"lead"`/`"patient"`, subscriptions are
//! `"subscribed"`/`"unsubscribed"`/`"unknown"`, dates are `YYYY-MM-DD`.

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The type of a known contact property.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropertyType {
    /// Free text up to the given length.
    Text(usize),
    /// An email address.
    Email,
    /// A phone number as the host stores it.
    Phone,
    /// A calendar date `YYYY-MM-DD`.
    Date,
    /// One of a fixed set of values.
    Choice(&'static [&'static str]),
    /// A staff member `{ "id": "...", "name": "..." }`.
    Staff,
    /// A list of tags (strings).
    Tags,
    /// `true` / `false`.
    Bool,
    /// A non-negative integer.
    Count,
    /// A number (money, benefits).
    Number,
    /// An IANA time zone name.
    TimeZone,
}

/// Contact status values.
pub const STATUSES: &[&str] = &["lead", "patient"];
/// Subscription values of the email and SMS channels.
pub const SUBSCRIPTIONS: &[&str] = &["subscribed", "unsubscribed", "unknown"];
/// Lead sources the UI offers; hosts may send others.
pub const LEAD_SOURCES: &[&str] = &["website_form", "walk_in", "manual_entry", "import"];

/// Every property the module understands, with its type.
pub const KNOWN_PROPERTIES: &[(&str, PropertyType)] = &[
    ("first_name", PropertyType::Text(200)),
    ("last_name", PropertyType::Text(200)),
    ("email", PropertyType::Email),
    ("phone", PropertyType::Phone),
    ("dob", PropertyType::Date),
    ("status", PropertyType::Choice(STATUSES)),
    ("lead_source", PropertyType::Text(64)),
    ("owner", PropertyType::Staff),
    ("provider", PropertyType::Staff),
    ("sms_subscription", PropertyType::Choice(SUBSCRIPTIONS)),
    ("email_subscription", PropertyType::Choice(SUBSCRIPTIONS)),
    ("tags", PropertyType::Tags),
    ("default_clinic", PropertyType::Text(200)),
    ("default_practitioner", PropertyType::Text(200)),
    ("marketing_only", PropertyType::Bool),
    ("recall_scheduled", PropertyType::Bool),
    ("no_show_count", PropertyType::Count),
    ("balance", PropertyType::Number),
    ("benefits_remaining", PropertyType::Number),
    ("time_zone", PropertyType::TimeZone),
];

/// Properties the module computes itself; a host may read them in filters but
/// not push them.
pub const DERIVED_PROPERTIES: &[&str] = &[
    "last_activity",
    "created_at",
    "days_since_last_activity",
    "days_since_created",
    "age",
    "insurance_verification",
    "portal_active",
    crate::messaging::consent::EMAIL_UNDELIVERABLE,
    crate::messaging::consent::SMS_UNDELIVERABLE,
];

/// Maximum number of properties on one contact.
pub const MAX_PROPERTIES: usize = 200;
/// Maximum length of a custom property's key.
pub const MAX_KEY_LEN: usize = 64;
/// Maximum serialized size of one custom value.
pub const MAX_CUSTOM_VALUE_BYTES: usize = 4096;

/// The type of a known property, if `name` is one.
pub fn property_type(name: &str) -> Option<PropertyType> {
    KNOWN_PROPERTIES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| *t)
}

/// Validates an id (contact, list, automation, step, event): 1–128 bytes of
/// UTF-8, no whitespace, control characters or invisible formatting (a
/// zero-width space or a right-to-left override would make two ids look
/// alike in a log).
pub fn validate_id(what: &str, id: &str) -> Result<()> {
    validate_id_up_to(what, id, 128)
}

/// [`validate_id`] with another length limit, for names built from ids
/// (a builder node such as `<branch>.yes.end`).
pub fn validate_id_up_to(what: &str, id: &str, max_len: usize) -> Result<()> {
    if id.is_empty() || id.len() > max_len {
        return Err(Error::invalid(format!(
            "{what}: must be 1 to {max_len} bytes (UTF-8)"
        )));
    }
    if id
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || invisible(c))
    {
        return Err(Error::invalid(format!(
            "{what}: must not contain spaces, control characters or invisible formatting"
        )));
    }
    Ok(())
}

/// Invisible formatting characters: the soft hyphen, zero-width spaces and
/// joiners, bidirectional marks, embeddings, overrides and isolates, word
/// joiners and the byte order mark.
fn invisible(c: char) -> bool {
    matches!(c, '\u{AD}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

/// Validates a custom property key. A refused key is not quoted in the
/// error: it is host input that failed the rules (it may hold control
/// characters, or data put in the wrong place).
pub fn validate_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(Error::invalid(format!(
            "property names must be 1 to {MAX_KEY_LEN} characters"
        )));
    }
    if !key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
    {
        return Err(Error::invalid(
            "property names may use only letters, digits, '_', '-' and '.'",
        ));
    }
    // `Email` or `STATUS` is the known field misspelt, not a property of
    // its own: kept as one, the contact would have no email.
    if let Some(known) = (KNOWN_PROPERTIES.iter().map(|(known, _)| *known))
        .chain(DERIVED_PROPERTIES.iter().copied())
        .find(|known| *known != key && known.eq_ignore_ascii_case(key))
    {
        return Err(Error::invalid(format!(
            "{key}: the known field is written `{known}` (property names are case-sensitive)"
        )));
    }
    Ok(())
}

/// An address of the shape mail can go to: one `@`, a local part without
/// empty dot-separated pieces, a dotted domain of non-empty labels that do
/// not start or end with `-`. `ann@@example.com` or `ann@example..com`
/// would be kept and fail at every send. (A cheap check on every pushed
/// address; the composer parses the address fully when it sends.)
fn is_address(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    let labels: Vec<&str> = domain.split('.').collect();
    local.len() <= 64
        && !local.is_empty()
        && local.split('.').all(|piece| !piece.is_empty())
        && labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars()
                    .all(|c| c.is_alphanumeric() || c == '-' || c == '_')
        })
}

/// Whether `property` holds a staff member (`owner`, `provider`).
pub fn is_staff(property: &str) -> bool {
    property_type(property) == Some(PropertyType::Staff)
}

/// A staff member's display name: none when not given, or when it is the
/// member's id (earlier versions made the id the name when the host sent
/// none, and an id must not reach patients as `{{owner}}`).
pub fn staff_name(member: &Value) -> Option<&str> {
    let name = member.get("name").and_then(Value::as_str)?;
    let id = member.get("id").and_then(Value::as_str);
    (!name.trim().is_empty() && Some(name) != id).then_some(name)
}

/// The placeholder a custom property is written as in templates: its name,
/// with `-` and `.` written `_` (`{{plan-type}}` would read as a
/// subtraction, `{{insurance.carrier}}` as an attribute).
pub fn placeholder_name(key: &str) -> std::borrow::Cow<'_, str> {
    if key.contains(['-', '.']) {
        std::borrow::Cow::Owned(key.replace(['-', '.'], "_"))
    } else {
        std::borrow::Cow::Borrowed(key)
    }
}

/// Validates and canonicalizes one property value. `Value::Null` clears the
/// property and is always valid. The error names the property, never the value.
pub fn normalize_property(name: &str, value: Value) -> Result<Value> {
    // Neither set nor cleared: a null would erase what the module recorded
    // (an address that hard-bounced).
    if DERIVED_PROPERTIES.contains(&name) {
        return Err(Error::invalid(format!(
            "{name}: computed by the module and cannot be set"
        )));
    }
    if value.is_null() {
        return Ok(Value::Null);
    }
    let Some(ty) = property_type(name) else {
        validate_key(name)?;
        return normalize_custom(name, value);
    };
    let bad = |expect: &str| Error::invalid(format!("{name}: must be {expect}"));
    match ty {
        PropertyType::Text(max) => match value {
            Value::String(s) if s.chars().count() <= max => Ok(Value::String(s.trim().to_string())),
            _ => Err(bad(&format!("a string of at most {max} characters"))),
        },
        PropertyType::Email => match value {
            Value::String(s) => {
                let s = s.trim().to_string();
                let ok = s.len() <= 254
                    && !s.chars().any(|c| c.is_whitespace() || c.is_control())
                    && is_address(&s);
                if ok {
                    Ok(Value::String(s))
                } else {
                    Err(bad("an email address"))
                }
            }
            _ => Err(bad("an email address")),
        },
        PropertyType::Phone => match value {
            Value::String(s) => {
                let digits = s.chars().filter(|c| c.is_ascii_digit()).count();
                let ok = (7..=15).contains(&digits)
                    && s.chars()
                        .all(|c| c.is_ascii_digit() || " +-().".contains(c));
                if ok {
                    Ok(Value::String(s.trim().to_string()))
                } else {
                    Err(bad("a phone number"))
                }
            }
            _ => Err(bad("a phone number")),
        },
        // Stored canonical (zero-padded `YYYY-MM-DD`, four-digit year):
        // chrono also reads "1985-3-7", " 1985-03-07" and "+1985-03-07",
        // and the birthday lookup matches the stored text's month and day.
        PropertyType::Date => match value {
            Value::String(s) => match chrono::NaiveDate::parse_from_str(&s, "%Y-%m-%d") {
                Ok(d) if (1..=9999).contains(&chrono::Datelike::year(&d)) => {
                    Ok(Value::String(d.format("%Y-%m-%d").to_string()))
                }
                _ => Err(bad("a date YYYY-MM-DD")),
            },
            _ => Err(bad("a date YYYY-MM-DD")),
        },
        PropertyType::Choice(values) => match value {
            Value::String(s) => {
                let lower = s.trim().to_ascii_lowercase();
                values
                    .iter()
                    .find(|v| **v == lower)
                    .map(|v| Value::String((*v).to_string()))
                    .ok_or_else(|| bad(&format!("one of {}", values.join(", "))))
            }
            _ => Err(bad(&format!("one of {}", values.join(", ")))),
        },
        PropertyType::Staff => {
            let Value::Object(o) = value else {
                return Err(bad("a staff member {\"id\", \"name\"}"));
            };
            let id = o.get("id").and_then(Value::as_str).unwrap_or("");
            validate_id(&format!("{name}.id"), id)?;
            // Without a name, none is made up: the id is the host's own and
            // must not reach a patient as `{{owner}}` (a partial update
            // naming the same member keeps the stored name, see
            // `core::contacts::apply_props`).
            let display = match o.get("name") {
                None | Some(Value::Null) => None,
                Some(Value::String(n)) if n.chars().count() <= 200 => Some(n.trim()),
                Some(_) => return Err(bad("a staff member {\"id\", \"name\"}")),
            };
            if o.len() > 2 {
                return Err(bad("a staff member {\"id\", \"name\"}"));
            }
            let mut m = Map::new();
            m.insert("id".into(), Value::String(id.to_string()));
            if let Some(display) = display.filter(|d| !d.is_empty()) {
                m.insert("name".into(), Value::String(display.to_string()));
            }
            Ok(Value::Object(m))
        }
        PropertyType::Tags => {
            let Value::Array(items) = value else {
                return Err(bad("an array of tag strings"));
            };
            let mut tags: Vec<String> = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::String(s) if !s.trim().is_empty() && s.len() <= 100 => {
                        // One tag whatever its case (the first spelling is
                        // kept), as conditions and triggers compare them.
                        let t = s.trim().to_string();
                        if !tags.iter().any(|have| have.eq_ignore_ascii_case(&t)) {
                            tags.push(t);
                        }
                    }
                    _ => return Err(bad("an array of tag strings (1 to 100 characters)")),
                }
            }
            if tags.len() > 100 {
                return Err(bad("at most 100 tags"));
            }
            tags.sort();
            Ok(Value::Array(tags.into_iter().map(Value::String).collect()))
        }
        PropertyType::Bool => match value {
            Value::Bool(_) => Ok(value),
            _ => Err(bad("true or false")),
        },
        // A whole number however it was written (`2.0`, as `balance` takes it).
        PropertyType::Count => match (value.as_u64(), value.as_f64()) {
            (Some(n), _) if n <= u32::MAX as u64 => Ok(Value::from(n)),
            (None, Some(f)) if f.fract() == 0.0 && (0.0..=u32::MAX as f64).contains(&f) => {
                Ok(Value::from(f as u64))
            }
            _ => Err(bad("a non-negative integer")),
        },
        // A whole number is stored as an integer, however it was written:
        // `100.0` after `100` is no change (no Property changed trigger).
        PropertyType::Number => match value {
            Value::Number(n) => Ok(match n.as_f64() {
                Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 9.0e15 => {
                    Value::from(f as i64)
                }
                _ => Value::Number(n),
            }),
            _ => Err(bad("a number")),
        },
        PropertyType::TimeZone => match value {
            Value::String(s) if s.parse::<chrono_tz::Tz>().is_ok() => Ok(Value::String(s)),
            _ => Err(bad("an IANA time zone such as America/New_York")),
        },
    }
}

fn normalize_custom(name: &str, value: Value) -> Result<Value> {
    let scalar = |v: &Value| matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_));
    let ok = match &value {
        Value::Array(items) => items.iter().all(scalar),
        Value::Object(_) => false,
        v => scalar(v),
    };
    if !ok {
        return Err(Error::invalid(format!(
            "{name}: custom properties must be a string, number, boolean or an array of those"
        )));
    }
    if value.to_string().len() > MAX_CUSTOM_VALUE_BYTES {
        return Err(Error::TooLarge(format!(
            "{name}: custom values are limited to {MAX_CUSTOM_VALUE_BYTES} bytes"
        )));
    }
    Ok(value)
}

/// Validates a whole property map (as pushed by the host).
pub fn normalize_properties(props: Map<String, Value>) -> Result<Map<String, Value>> {
    if props.len() > MAX_PROPERTIES {
        return Err(Error::TooLarge(format!(
            "a contact may carry at most {MAX_PROPERTIES} properties"
        )));
    }
    let mut out = Map::new();
    for (k, v) in props {
        let v = normalize_property(&k, v)?;
        out.insert(k, v);
    }
    Ok(out)
}

/// A contact's display name for staff-facing screens and task titles.
pub fn display_name(props: &Map<String, Value>) -> String {
    let first = props
        .get("first_name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let last = props.get("last_name").and_then(Value::as_str).unwrap_or("");
    format!("{first} {last}").trim().to_string()
}

/// A property value as a number: a number, or text holding one (as
/// written, untrimmed).
pub fn as_number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        // Text holding a number, spaces around it allowed; not `inf` or
        // `NaN`, which Rust's parser reads as numbers.
        Value::String(s) => s.trim().parse().ok().filter(|f: &f64| f.is_finite()),
        _ => None,
    }
}

/// Folds a lead source for comparison: "Website form" == "website_form".
pub fn fold_source(s: &str) -> String {
    s.trim().to_lowercase().replace([' ', '-'], "_")
}

/// `value` of `property` as filters compare it: a lead source folded (a
/// host writing "Walk-in" means the builder's `walk_in`), any other value
/// as it is.
pub fn comparable<'a>(property: &str, value: &'a Value) -> std::borrow::Cow<'a, Value> {
    match value {
        Value::String(s) if property == "lead_source" => {
            std::borrow::Cow::Owned(Value::String(fold_source(s)))
        }
        v => std::borrow::Cow::Borrowed(v),
    }
}

/// Compares two property values for filters: numbers numerically (a
/// number and text holding one too, as "more than" reads them), strings
/// case-insensitively, arrays by membership of `expected`.
pub fn value_matches(actual: &Value, expected: &Value) -> bool {
    match (actual, expected) {
        (Value::String(a), Value::String(b)) => a.eq_ignore_ascii_case(b),
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Value::Number(_), Value::String(_)) | (Value::String(_), Value::Number(_)) => {
            as_number(actual).is_some_and(|a| as_number(expected) == Some(a))
        }
        (Value::Array(items), e) if !e.is_array() => items.iter().any(|i| value_matches(i, e)),
        // A staff member given as an object is the one with its id.
        (Value::Object(a), Value::Object(b)) if b.contains_key("id") => {
            match (
                a.get("id").and_then(Value::as_str),
                b.get("id").and_then(Value::as_str),
            ) {
                (Some(x), Some(y)) => x.eq_ignore_ascii_case(y),
                _ => false,
            }
        }
        (Value::Object(a), Value::String(b)) => {
            // Staff members match by id or display name.
            a.get("id")
                .and_then(Value::as_str)
                .is_some_and(|i| i.eq_ignore_ascii_case(b))
                || a.get("name")
                    .and_then(Value::as_str)
                    .is_some_and(|n| n.eq_ignore_ascii_case(b))
        }
        (a, b) => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A count written with a fraction of zero is the whole number.
    #[test]
    fn a_count_written_as_a_whole_float_is_the_integer() {
        assert_eq!(
            normalize_property("no_show_count", json!(2.0)).unwrap(),
            json!(2)
        );
        for bad in [json!(2.5), json!(-1), json!("2")] {
            assert!(
                normalize_property("no_show_count", bad.clone()).is_err(),
                "{bad}"
            );
        }
    }

    /// An address the composer could not send to is refused at the push.
    #[test]
    fn malformed_email_addresses_are_refused() {
        for bad in [
            "ann@@example.com",
            "a@b@example.com",
            "ann@example..com",
            "@example.com",
            "ann@example",
        ] {
            assert!(normalize_property("email", json!(bad)).is_err(), "{bad}");
        }
        for good in [" Ann.Lee+news@example.com ", "o'brien@mail.example.org"] {
            assert!(normalize_property("email", json!(good)).is_ok(), "{good}");
        }
    }

    /// A known field written in another case is refused, naming the
    /// field as the module knows it: kept as a custom property, `Email`
    /// left the contact without an email.
    #[test]
    fn a_known_field_in_another_case_is_refused() {
        for (key, known) in [
            ("Email", "email"),
            ("STATUS", "status"),
            ("First_Name", "first_name"),
        ] {
            match normalize_property(key, json!("x")) {
                Err(Error::Invalid(m)) => assert!(m.contains(&format!("`{known}`")), "{m}"),
                other => panic!("{key}: {other:?}"),
            }
        }
        assert!(normalize_property("emails", json!("x")).is_ok());
    }

    #[test]
    fn ids_are_up_to_128_bytes_of_visible_characters() {
        assert!(validate_id("id", "p-123_é").is_ok());
        assert!(validate_id("id", &"患".repeat(42)).is_ok(), "126 bytes");
        let e = validate_id("contact.id", &"患".repeat(43)).unwrap_err();
        assert!(e.to_string().contains("1 to 128 bytes"), "{e}");
        for id in [
            "a\u{200B}b",
            "abc\u{202E}fdp",
            "\u{FEFF}x",
            "a\u{2066}b",
            "so\u{AD}ft",
        ] {
            let e = validate_id("id", id).unwrap_err();
            assert!(
                e.to_string().contains("invisible formatting"),
                "{id:?}: {e}"
            );
        }
    }

    #[test]
    fn known_properties_are_canonicalized() {
        assert_eq!(
            normalize_property("status", json!("Patient")).unwrap(),
            json!("patient")
        );
        assert_eq!(
            normalize_property("tags", json!(["b", "a", "b"])).unwrap(),
            json!(["a", "b"])
        );
        assert_eq!(
            normalize_property("owner", json!({"id": "s1", "name": "Sarah"})).unwrap(),
            json!({"id": "s1", "name": "Sarah"})
        );
        assert_eq!(
            normalize_property("email", Value::Null).unwrap(),
            Value::Null
        );
        assert_eq!(
            normalize_property("balance", json!(100.0)).unwrap(),
            json!(100)
        );
        assert_eq!(
            normalize_property("balance", json!(12.5)).unwrap(),
            json!(12.5)
        );
        // A date of birth is stored zero-padded, whatever padding it came
        // with: the Birthday trigger matches the stored month and day.
        for dob in ["1985-3-7", " 1985-03-07", "+1985-03-07", "1985-03-07"] {
            assert_eq!(
                normalize_property("dob", json!(dob)).unwrap(),
                json!("1985-03-07"),
                "{dob:?}"
            );
        }
    }

    #[test]
    fn bad_values_are_refused_without_echoing_them() {
        for (k, v) in [
            ("status", json!("VIP")),
            ("email", json!("jane.doe")),
            ("dob", json!("31/12/1980")),
            ("phone", json!("call me")),
            ("no_show_count", json!(-1)),
            ("time_zone", json!("Mars/Olympus")),
            ("last_activity", json!("2026-01-01")),
            ("nested", json!({"a": 1})),
        ] {
            let e = normalize_property(k, v.clone()).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(k), "{msg}");
            if let Value::String(s) = &v {
                assert!(!msg.contains(s.as_str()), "{msg}");
            }
        }
    }

    #[test]
    fn custom_properties_are_kept() {
        assert_eq!(
            normalize_property("favorite_color", json!("teal")).unwrap(),
            json!("teal")
        );
        assert!(normalize_property("bad key", json!(1)).is_err());
    }

    #[test]
    fn matching_rules() {
        assert!(value_matches(&json!("Patient"), &json!("patient")));
        assert!(value_matches(&json!(["vip", "diabetes"]), &json!("vip")));
        assert!(value_matches(
            &json!({"id": "s1", "name": "Sarah"}),
            &json!("sarah")
        ));
        assert!(value_matches(&json!(2), &json!(2.0)));
        // A number pushed as text equals the number, as "more than" reads it.
        assert!(value_matches(&json!("3"), &json!(3)));
        assert!(value_matches(&json!(3), &json!("3.0")));
        assert!(!value_matches(&json!("3 visits"), &json!(3)));
        assert!(!value_matches(&json!("lead"), &json!("patient")));
    }
}
