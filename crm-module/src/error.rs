//! Errors of the module, with stable numeric codes the C ABI maps one to one.
//!
//! Messages name fields, ids and limits only. They never quote a contact's
//! data: serde's own messages (which can echo input values) are redacted by
//! [`json_error`] before they reach an [`Error`].

/// Stable classification of an [`Error`], also the C ABI's status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
#[repr(i32)]
pub enum ErrorCode {
    /// Input was malformed or failed validation; nothing changed.
    Invalid = 2,
    /// An id named by the input does not exist; nothing changed.
    NotFound = 3,
    /// The request conflicts with the current state (e.g. editing a deleted automation).
    Conflict = 4,
    /// The input is larger than the configured limit; nothing changed.
    TooLarge = 5,
    /// The database failed (disk full, corruption, locked past the timeout).
    Storage = 6,
    /// The module was closed or its worker stopped.
    Closed = 7,
    /// A wait ran out of time.
    Timeout = 8,
    /// A bug: an internal invariant failed. The operation did not take effect.
    Internal = 9,
}

/// Every error the module returns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Malformed or invalid input; nothing changed.
    #[error("invalid input: {0}")]
    Invalid(String),
    /// Unknown id; nothing changed.
    #[error("not found: {0}")]
    NotFound(String),
    /// Not allowed in the current state; nothing changed.
    #[error("conflict: {0}")]
    Conflict(String),
    /// Over a size limit; nothing changed.
    #[error("too large: {0}")]
    TooLarge(String),
    /// SQLite reported an error.
    #[error("storage error: {0}")]
    Storage(String),
    /// The module is closed.
    #[error("the module is closed")]
    Closed,
    /// A wait timed out.
    #[error("timed out: {0}")]
    Timeout(String),
    /// An internal invariant failed.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The stable code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Invalid(_) => ErrorCode::Invalid,
            Error::NotFound(_) => ErrorCode::NotFound,
            Error::Conflict(_) => ErrorCode::Conflict,
            Error::TooLarge(_) => ErrorCode::TooLarge,
            Error::Storage(_) => ErrorCode::Storage,
            Error::Closed => ErrorCode::Closed,
            Error::Timeout(_) => ErrorCode::Timeout,
            Error::Internal(_) => ErrorCode::Internal,
        }
    }

    /// Shorthand for [`Error::Invalid`].
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }

    /// Shorthand for [`Error::NotFound`].
    pub fn not_found(msg: impl Into<String>) -> Self {
        Error::NotFound(msg.into())
    }

    /// Prefixes the message with a location such as `events[3]`.
    pub fn at(self, location: &str) -> Self {
        match self {
            Error::Invalid(m) => Error::Invalid(format!("{location}: {m}")),
            Error::NotFound(m) => Error::NotFound(format!("{location}: {m}")),
            Error::Conflict(m) => Error::Conflict(format!("{location}: {m}")),
            Error::TooLarge(m) => Error::TooLarge(format!("{location}: {m}")),
            other => other,
        }
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        // rusqlite's messages carry SQLite's text (statement errors, constraint
        // names), never bound parameter values.
        Error::Storage(e.to_string())
    }
}

/// Result alias of the module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Parses JSON into `T`, turning serde's error into a redacted [`Error::Invalid`]
/// that names the JSON path and position but never the offending value.
/// The text must hold that one value: anything after it but whitespace
/// (`{...}{...}`, a second event pasted on) is refused, never ignored.
pub fn parse_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T> {
    let de = &mut serde_json::Deserializer::from_str(text);
    let value = serde_path_to_error::deserialize(&mut *de).map_err(json_error)?;
    de.end().map_err(|e| {
        Error::Invalid(format!(
            "text after the JSON value (line {} column {}): one value per call",
            e.line(),
            e.column()
        ))
    })?;
    Ok(value)
}

/// Like [`parse_json`] for an already parsed value.
pub fn from_value<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(json_error)
}

/// Like [`from_value`] for the part of a document at path `at` (`definition`),
/// so that an error names its place in the whole document
/// (`definition.steps[1]: ...`).
pub fn part_from_value<'a, T: serde::Deserialize<'a>>(
    at: &str,
    value: &'a serde_json::Value,
) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(|e| json_error_at(at, e))
}

/// Redacts a serde error: keeps the path, the kind of problem and what was
/// expected; drops quoted input.
pub fn json_error(e: serde_path_to_error::Error<serde_json::Error>) -> Error {
    json_error_at("", e)
}

/// [`json_error`] for a part of a document at path `at`.
fn json_error_at(at: &str, e: serde_path_to_error::Error<serde_json::Error>) -> Error {
    // The path of an unknown field may end with the field itself: the
    // message names it, or says it is not shown (and then the path must
    // not).
    let message = e.inner().to_string();
    let path = match (at, safe_path(e.path(), unknown_field_name(&message))) {
        ("", p) => p,
        (at, p) if p.is_empty() || p == "." => at.to_string(),
        (at, p) if p.starts_with('[') => format!("{at}{p}"),
        (at, p) => format!("{at}.{p}"),
    };
    let inner = e.inner();
    let what = redact(&message);
    let location = if inner.line() > 0 {
        format!(" (line {} column {})", inner.line(), inner.column())
    } else {
        String::new()
    };
    if path.is_empty() || path == "." {
        Error::Invalid(format!("{what}{location}"))
    } else {
        Error::Invalid(format!("{path}: {what}{location}"))
    }
}

/// Whether a host's key may be quoted in a message: it looks like a field
/// name (ASCII letters, digits, `_`, `-`, `.`, `$`, at most 64 of them),
/// not like data (spaces, punctuation, long or non-ASCII text).
fn is_field_name(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 64
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'$'))
}

/// Whether an unknown field's name may be quoted: it is written like the
/// module's own field names (a letter or `_`, then letters, digits and
/// `_`). A key that starts with a digit or holds `.`, `-`, `$` is more
/// likely data put where a field belongs (a phone number, a date, an
/// address's local part) than a misspelt field.
fn is_identifier(key: &str) -> bool {
    key.len() <= 64
        && key
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The JSON path of an error, with any map key that does not look like a
/// field name replaced by `?` (map keys are the host's, and could be data).
/// A host's key as an error message may show it: itself when it looks like
/// a field name, else `?`.
pub(crate) fn shown_key(key: &str) -> &str {
    if is_field_name(key) { key } else { "?" }
}

/// The path, shown safely; without its last key when that is
/// `unknown_field` (the message speaks of it).
fn safe_path(path: &serde_path_to_error::Path, unknown_field: Option<&str>) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    let mut segments: Vec<&Segment> = path.iter().collect();
    if let (Some(Segment::Map { key }), Some(field)) = (segments.last(), unknown_field)
        && key == field
    {
        segments.pop();
    }
    for segment in segments {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(shown_key(key));
            }
            Segment::Unknown => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push('?');
            }
        }
    }
    out
}

/// serde's own position suffix, ` at line N column M`, if `msg` ends with one.
fn strip_position(msg: &str) -> &str {
    let Some(i) = msg.rfind(" at line ") else {
        return msg;
    };
    let rest = &msg[i + " at line ".len()..];
    let mut parts = rest.splitn(3, ' ');
    let numeric =
        |s: Option<&str>| s.is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()));
    let (line, word, column) = (parts.next(), parts.next(), parts.next());
    if numeric(line) && word == Some("column") && numeric(column) {
        &msg[..i]
    } else {
        msg
    }
}

/// The kinds of input serde names before the input itself (`string "x"`,
/// `integer `5``, ...): only these words are kept.
const UNEXPECTED_KINDS: [&str; 14] = [
    "string",
    "integer",
    "floating",
    "boolean",
    "character",
    "map",
    "sequence",
    "null",
    "unit",
    "bytes",
    "byte",
    "option",
    "newtype",
    "enum",
];

/// The input a serde message echoes after its opening words, and the rest:
/// the input runs to serde's own last `, expected ` or `, there are no `
/// (the input itself may hold either).
fn split_input(rest: &str) -> (&str, &str) {
    let cut = [", expected ", ", there are no "]
        .iter()
        .filter_map(|t| rest.rfind(t))
        .max();
    match cut {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    }
}

/// `x` of an input serde wrote as `` `x` ``.
fn backticked(input: &str) -> Option<&str> {
    input.strip_prefix('`')?.strip_suffix('`')
}

/// The field an `unknown field `x`, expected …` message names, read as
/// [`redact`] reads it.
fn unknown_field_name(msg: &str) -> Option<&str> {
    let rest = strip_position(msg).strip_prefix("unknown field ")?;
    backticked(split_input(rest).0)
}

/// Removes the input echoed inside serde messages: `invalid type: string "x"`
/// becomes `invalid type: string`, `unknown variant `x`` becomes
/// `unknown variant`, and `unknown field `x`` keeps `x` only when it looks
/// like a field name. The input is found by serde's wording around it (the
/// last `, expected ` or `, there are no ` is serde's own), never by
/// matching quotes, which the input itself may contain.
fn redact(msg: &str) -> String {
    // serde_json appends " at line N column M" itself; we add our own position.
    let msg = strip_position(msg);
    // Field names of our own schema, never input.
    if msg.starts_with("missing field") || msg.starts_with("duplicate field") {
        return msg.to_string();
    }
    for prefix in [
        "unknown field ",
        "unknown variant ",
        "invalid type: ",
        "invalid value: ",
    ] {
        let Some(rest) = msg.strip_prefix(prefix) else {
            continue;
        };
        let (input, tail) = split_input(rest);
        let head = prefix.trim_end().trim_end_matches(':');
        let shown = match prefix {
            "unknown field " => backticked(input)
                .filter(|f| is_identifier(f))
                .map(|f| format!("`{f}`")),
            "invalid type: " | "invalid value: " => input
                .split_whitespace()
                .next()
                .filter(|w| UNEXPECTED_KINDS.contains(w))
                .map(str::to_string),
            _ => None,
        };
        return match (prefix, shown) {
            (_, Some(shown)) if prefix.ends_with(": ") => format!("{head}: {shown}{tail}"),
            (_, Some(shown)) => format!("{head} {shown}{tail}"),
            ("unknown field ", None) => format!("{head} (its name is not shown){tail}"),
            (_, None) => format!("{head}{tail}"),
        };
    }
    // Anything else (serde_json's syntax errors, our own messages) carries no
    // input; should a quote appear all the same, everything from the first
    // quote to the last one goes.
    let quotes = |c: char| c == '"' || c == '`';
    match (msg.find(quotes), msg.rfind(quotes)) {
        (Some(a), Some(b)) => format!("{}{}", msg[..a].trim_end(), &msg[b + 1..]),
        _ => msg.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Probe {
        age: u32,
        kind: Kind,
    }
    #[derive(Debug, serde::Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum Kind {
        Alpha,
    }

    #[test]
    fn text_after_the_value_is_refused_not_ignored() {
        for text in [
            r#"{"age": 3, "kind": "alpha"}{"age": 4, "kind": "alpha"}"#,
            r#"{"age": 3, "kind": "alpha"} garbage"#,
            r#"{"age": 3, "kind": "alpha"} }"#,
        ] {
            let e = parse_json::<Probe>(text).unwrap_err();
            assert_eq!(e.code(), ErrorCode::Invalid, "{text}");
            assert!(e.to_string().contains("text after the JSON value"), "{e}");
        }
        assert!(parse_json::<Probe>("  {\"age\": 3, \"kind\": \"alpha\"}\n\t ").is_ok());
    }

    #[test]
    fn json_errors_never_echo_values() {
        let e = parse_json::<Probe>(r#"{"age": "Jane Doe", "kind": "alpha"}"#).unwrap_err();
        let m = e.to_string();
        assert!(m.contains("age"), "{m}");
        assert!(!m.contains("Jane"), "{m}");
        let e = parse_json::<Probe>(r#"{"age": 3, "kind": "Smith"}"#).unwrap_err();
        let m = e.to_string();
        assert!(m.contains("kind") && m.contains("unknown variant"), "{m}");
        assert!(!m.contains("Smith"), "{m}");
        let e = parse_json::<Probe>(r#"{"age": -4, "kind": "alpha"}"#).unwrap_err();
        assert!(!e.to_string().contains("-4"), "{e}");
        let e = parse_json::<Probe>("{not json").unwrap_err();
        assert_eq!(e.code(), ErrorCode::Invalid);
    }

    #[test]
    fn quotes_inside_the_input_do_not_defeat_the_redaction() {
        // serde quotes an unknown variant between backticks, and the value
        // may hold double quotes, backticks, commas and serde's own words.
        for value in [
            r#"Jane \"x\" Doe"#,
            "Jane `x` Doe",
            "Jane Doe, expected nothing",
            "Jane Doe at line 1 column 2",
            "Jane\\u0060 Doe",
        ] {
            for text in [
                format!(r#"{{"age": 3, "kind": "{value}"}}"#),
                format!(r#"{{"age": "{value}", "kind": "alpha"}}"#),
            ] {
                let m = parse_json::<Probe>(&text).unwrap_err().to_string();
                assert!(!m.contains("Jane") && !m.contains("Doe"), "{text}: {m}");
                assert!(
                    m.contains("unknown variant") || m.contains("invalid type: string"),
                    "{m}"
                );
            }
        }
        let review = crate::event::Event::parse(
            r#"{"event_id":"e1","type":"review.submitted","review":{"id":"r1","contact_id":"c1","source":"Jane \"x\" Doe"}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(review.contains("unknown variant, expected"), "{review}");
        assert!(
            !review.contains("Jane") && !review.contains("Doe"),
            "{review}"
        );
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Strict {
        age: Option<u32>,
        scores: Option<std::collections::BTreeMap<String, u32>>,
    }

    #[test]
    fn unknown_fields_are_named_only_when_they_look_like_field_names() {
        let m = parse_json::<Strict>(r#"{"agee": 3}"#)
            .unwrap_err()
            .to_string();
        assert!(m.contains("unknown field `agee`, expected"), "{m}");
        for key in [
            "Jane Doe",
            "jane.doe@example.com is sick",
            "Zoë",
            "a`b, expected x",
            // Data where a field belongs: a phone number, a date, a
            // mailbox name.
            "6175550123",
            "1985-03-07",
            "jane.doe",
        ] {
            let text = serde_json::json!({ key: 1 }).to_string();
            let m = parse_json::<Strict>(&text).unwrap_err().to_string();
            assert!(
                m.contains("unknown field (its name is not shown)"),
                "{key}: {m}"
            );
            assert!(
                !m.contains(key)
                    && !m.contains("Jane")
                    && !m.contains("jane")
                    && !m.contains("Zo")
                    && !m.contains("555")
                    && !m.contains("1985"),
                "{key}: {m}"
            );
        }
        // A map key in the path is the host's too.
        let m = parse_json::<Strict>(r#"{"scores": {"Jane Doe": "high"}}"#)
            .unwrap_err()
            .to_string();
        assert!(
            m.starts_with("invalid input: scores.?: invalid type: string"),
            "{m}"
        );
        assert!(!m.contains("Jane") && !m.contains("high"), "{m}");
    }
}
