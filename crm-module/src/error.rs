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
pub fn parse_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T> {
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(json_error)
}

/// Like [`parse_json`] for an already parsed value.
pub fn from_value<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(json_error)
}

/// Redacts a serde error: keeps the path, the kind of problem and what was
/// expected; drops quoted input.
pub fn json_error(e: serde_path_to_error::Error<serde_json::Error>) -> Error {
    let path = e.path().to_string();
    let inner = e.inner();
    let what = redact(&inner.to_string());
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

/// Removes the input echoed inside serde messages: `invalid type: string "x"`
/// and `unknown variant `x`` become `invalid type: string` and `unknown variant`.
fn redact(msg: &str) -> String {
    // serde appends " at line N column M" itself; we add our own position.
    let msg = match msg.find(" at line ") {
        Some(i) => &msg[..i],
        None => msg,
    };
    // Field names are the schema's (or the host's keys), never values.
    if msg.starts_with("missing field")
        || msg.starts_with("unknown field")
        || msg.starts_with("duplicate field")
    {
        return msg.to_string();
    }
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    // Only the text before ", expected" can carry input; the expectation is ours.
    let (head, tail) = match rest.find(", expected") {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    rest = head;
    for (open, close) in [('"', '"'), ('`', '`')] {
        if let Some(start) = rest.find(open) {
            let after = &rest[start + 1..];
            let end = after
                .rfind(close)
                .map(|e| start + 1 + e + 1)
                .unwrap_or(rest.len());
            out.push_str(rest[..start].trim_end());
            out.push_str(&rest[end..]);
            return format!("{out}{tail}");
        }
    }
    // Numbers and other scalars echoed as `invalid value: integer 5`.
    if let Some(idx) = rest
        .find("invalid value: ")
        .or_else(|| rest.find("invalid type: "))
    {
        let prefix_len = idx + rest[idx..].find(": ").map(|p| p + 2).unwrap_or(0);
        let kind: String = rest[prefix_len..]
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string();
        return format!("{}{}{}", &rest[..prefix_len], kind, tail);
    }
    format!("{rest}{tail}")
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
}
