//! JSON helpers for the contract's JSON texts: the contact, a step's config,
//! property-change values, provider bodies.
//!
//! Error reasons name the field and what was expected, never the value, so
//! they are safe to return as a `failed` reason.

use serde_json::{Map, Value};

/// Parses `text` as a JSON object; `what` names it in the error
/// (e.g. `"contact"` → `"contact: not a JSON object"`).
pub fn parse_object(text: &str, what: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(format!("{what}: not a JSON object")),
        Err(e) => Err(format!(
            "{what}: invalid JSON at line {} column {}",
            e.line(),
            e.column()
        )),
    }
}

/// The JSON text of `value`, as a property change carries it
/// (`"hot"` → `"\"hot\""`, `42` → `"42"`).
pub fn to_text(value: &Value) -> String {
    value.to_string()
}

/// An optional string field: `Ok(None)` when absent or `null`, an error when
/// present with another type.
pub fn opt_str<'a>(object: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, String> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("{key}: expected a string")),
    }
}

/// An optional boolean field: `Ok(None)` when absent or `null`.
pub fn opt_bool(object: &Map<String, Value>, key: &str) -> Result<Option<bool>, String> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(format!("{key}: expected true or false")),
    }
}

/// An optional integer field (a JSON number without a fraction, within
/// `i64`): `Ok(None)` when absent or `null`.
pub fn opt_i64(object: &Map<String, Value>, key: &str) -> Result<Option<i64>, String> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(i) => Ok(Some(i)),
            None => match n.as_f64() {
                Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(Some(f as i64)),
                _ => Err(format!("{key}: expected an integer")),
            },
        },
        Some(_) => Err(format!("{key}: expected an integer")),
    }
}

/// An optional number field: `Ok(None)` when absent or `null`.
pub fn opt_f64(object: &Map<String, Value>, key: &str) -> Result<Option<f64>, String> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .map(Some)
            .ok_or_else(|| format!("{key}: expected a number")),
        Some(_) => Err(format!("{key}: expected a number")),
    }
}

/// An optional list of strings (e.g. `tags`): `Ok(None)` when absent or
/// `null`, an error when it is not an array of strings.
pub fn opt_str_list<'a>(
    object: &'a Map<String, Value>,
    key: &str,
) -> Result<Option<Vec<&'a str>>, String> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .ok_or_else(|| format!("{key}: expected a list of strings"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(format!("{key}: expected a list of strings")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn parse_object_reports_without_the_text() {
        assert!(parse_object("{}", "contact").is_ok());
        assert_eq!(
            parse_object("[1]", "contact").unwrap_err(),
            "contact: not a JSON object"
        );
        let err = parse_object("{\"name\": \"Jane", "contact").unwrap_err();
        assert!(err.starts_with("contact: invalid JSON"), "{err}");
        assert!(!err.contains("Jane"));
    }

    #[test]
    fn typed_fields() {
        let o = obj(
            json!({"s": "x", "b": true, "i": 3, "f": 2.5, "fi": 4.0, "l": ["a", "b"], "n": null}),
        );
        assert_eq!(opt_str(&o, "s"), Ok(Some("x")));
        assert_eq!(opt_str(&o, "n"), Ok(None));
        assert_eq!(opt_str(&o, "missing"), Ok(None));
        assert!(opt_str(&o, "b").is_err());
        assert_eq!(opt_bool(&o, "b"), Ok(Some(true)));
        assert_eq!(opt_i64(&o, "i"), Ok(Some(3)));
        assert_eq!(opt_i64(&o, "fi"), Ok(Some(4)));
        assert!(opt_i64(&o, "f").is_err());
        assert_eq!(opt_f64(&o, "f"), Ok(Some(2.5)));
        assert_eq!(opt_str_list(&o, "l"), Ok(Some(vec!["a", "b"])));
        assert!(opt_str_list(&o, "s").is_err());
        assert_eq!(to_text(&json!("hot")), "\"hot\"");
    }
}
