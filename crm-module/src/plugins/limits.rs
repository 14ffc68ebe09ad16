//! What one plugin call may use: time, instructions, memory, bytes in and out.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The largest memory cap a practice may grant (the pooling allocator's slot size).
pub const MAX_MEMORY_BYTES: u64 = 256 * 1024 * 1024;
/// The longest wall-clock deadline a practice may grant.
pub const MAX_DEADLINE_MS: u64 = 30_000;
/// The largest input, output or fetched body a practice may grant.
pub const MAX_IO_BYTES: u64 = 16 * 1024 * 1024;

/// Per-plugin limits, set at install (every field optional: the defaults
/// below apply). One call of the plugin (a step run, a send, a describe)
/// gets all of them afresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Wall-clock deadline of one call, fetches included (default 1,000 ms;
    /// at most 30,000). Enforced by epoch interruption.
    pub deadline_ms: u64,
    /// Instruction budget of one call, in wasmtime fuel units (about one per
    /// WebAssembly instruction; default 500 million). Deterministic.
    pub fuel: u64,
    /// Linear memory cap of one instance (default 64 MiB; at most 256 MiB).
    pub memory_bytes: u64,
    /// Cap on the input handed to the plugin: contact and config JSON, or
    /// the rendered message (default 1 MiB).
    pub input_bytes: u64,
    /// Cap on what the plugin returns: property changes, reasons, ids
    /// (default 1 MiB).
    pub output_bytes: u64,
    /// Cap on one fetched response body (default 1 MiB).
    pub fetch_response_bytes: u64,
    /// Fetches per call (default 8).
    pub fetches_per_call: u32,
    /// Let `fetch` reach private, loopback and link-local addresses (default
    /// false). For a provider inside the practice's network, and for tests.
    pub allow_private_network: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline_ms: 1_000,
            fuel: 500_000_000,
            memory_bytes: 64 * 1024 * 1024,
            input_bytes: 1024 * 1024,
            output_bytes: 1024 * 1024,
            fetch_response_bytes: 1024 * 1024,
            fetches_per_call: 8,
            allow_private_network: false,
        }
    }
}

impl Limits {
    /// Checks every field is within what the host can enforce.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] naming the field.
    pub fn validate(&self) -> Result<()> {
        let range = |name: &str, v: u64, min: u64, max: u64| {
            if (min..=max).contains(&v) {
                Ok(())
            } else {
                Err(Error::invalid(format!(
                    "limits.{name}: must be {min} to {max}"
                )))
            }
        };
        range("deadline_ms", self.deadline_ms, 1, MAX_DEADLINE_MS)?;
        range("fuel", self.fuel, 10_000, 100_000_000_000)?;
        range(
            "memory_bytes",
            self.memory_bytes,
            1024 * 1024,
            MAX_MEMORY_BYTES,
        )?;
        range("input_bytes", self.input_bytes, 1024, MAX_IO_BYTES)?;
        range("output_bytes", self.output_bytes, 1024, MAX_IO_BYTES)?;
        range(
            "fetch_response_bytes",
            self.fetch_response_bytes,
            1024,
            MAX_IO_BYTES,
        )?;
        range("fetches_per_call", u64::from(self.fetches_per_call), 0, 64)?;
        Ok(())
    }
}

/// Limits named in a command: the fields given change, the others keep
/// the value they had (the defaults at a first install; the stored ones on
/// a replacement or `plugin.configure`). Checked as [`Limits`] fields when
/// the command is read.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct LimitChanges(serde_json::Map<String, serde_json::Value>);

/// [`Limits`]' schema without its defaults: a field left out keeps the
/// value it had, which on `plugin.configure` or a replacement is the stored
/// one, so a client that fills in a schema's defaults must not find any.
impl JsonSchema for LimitChanges {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "LimitChanges".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let mut schema = Limits::json_schema(generator);
        if let Some(fields) = schema
            .get_mut("properties")
            .and_then(serde_json::Value::as_object_mut)
        {
            for field in fields.values_mut() {
                if let Some(field) = field.as_object_mut() {
                    field.remove("default");
                }
            }
        }
        schema.insert(
            "description".into(),
            "Limits to change: a field given changes, one left out keeps the value it had \
             (the default at a first install, the stored one on a replacement or \
             `plugin.configure`)."
                .into(),
        );
        schema
    }
}

impl<'de> Deserialize<'de> for LimitChanges {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let changes = LimitChanges(serde_json::Map::deserialize(d)?);
        // Unknown fields and values of the wrong type are refused here.
        changes
            .onto(Limits::default())
            .map_err(serde::de::Error::custom)?;
        Ok(changes)
    }
}

impl LimitChanges {
    /// `base` with the fields given changed.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] for an unknown field or a value of the wrong type.
    pub fn onto(&self, base: Limits) -> Result<Limits> {
        let serde_json::Value::Object(mut merged) =
            serde_json::to_value(base).map_err(|e| Error::Internal(format!("limits: {e}")))?
        else {
            return Err(Error::Internal("limits: not an object".into()));
        };
        merged.extend(self.0.clone());
        serde_json::from_value(serde_json::Value::Object(merged))
            .map_err(|e| Error::invalid(format!("limits: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bounds_are_named() {
        Limits::default().validate().unwrap();
        let e = Limits {
            memory_bytes: MAX_MEMORY_BYTES + 1,
            ..Limits::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("limits.memory_bytes"), "{e}");
        let e = Limits {
            deadline_ms: 0,
            ..Limits::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("limits.deadline_ms"), "{e}");
    }

    /// Limits given in a command change only the fields named; an unknown
    /// field or a wrong type is refused when the command is read.
    #[test]
    fn limit_changes_keep_the_fields_left_out() {
        let base = Limits {
            deadline_ms: 5_000,
            fuel: 1_000_000,
            ..Limits::default()
        };
        let c: LimitChanges =
            serde_json::from_str(r#"{"allow_private_network": true}"#).expect("changes");
        let merged = c.onto(base).expect("merged");
        assert_eq!(
            merged,
            Limits {
                allow_private_network: true,
                ..base
            }
        );
        let e = serde_json::from_str::<LimitChanges>(r#"{"deadline": 5}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        assert!(serde_json::from_str::<LimitChanges>(r#"{"fuel": "lots"}"#).is_err());
    }

    /// The changes' schema names every limit and gives no default: a field
    /// left out keeps its stored value, and a client filling in defaults
    /// from the schema reset a plugin's limits.
    #[test]
    fn the_changes_schema_has_the_limits_fields_and_no_defaults() {
        let changes = schemars::schema_for!(LimitChanges).to_value();
        let limits = schemars::schema_for!(Limits).to_value();
        let names = |s: &serde_json::Value| {
            let mut v: Vec<String> = s["properties"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(&changes), names(&limits));
        assert_eq!(changes["additionalProperties"], false);
        for (name, field) in changes["properties"].as_object().unwrap() {
            assert!(field.get("default").is_none(), "{name}: {field}");
            assert!(field.get("type").is_some(), "{name}: {field}");
        }
        assert!(limits["properties"]["deadline_ms"].get("default").is_some());
    }
}
