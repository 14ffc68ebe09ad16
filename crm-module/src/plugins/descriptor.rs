//! What a plugin declares about itself, as stored and shown: its identity,
//! its step types (palette entry, config JSON Schema, outcomes) or the
//! channels it sends. Validated when the plugin is installed.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::contract::PluginKind;
use super::contract::sender_world::exports::crm::plugin::sender;
use super::contract::step_world::exports::crm::plugin::step;
use crate::error::{Error, Result};

/// A plugin's declaration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Descriptor {
    /// Stable id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// The plugin's own version.
    pub version: String,
    /// Who made it.
    pub vendor: String,
    /// One line.
    pub description: String,
    /// Step plugin or sender adapter.
    pub kind: PluginKind,
    /// The contract version it was built against (`1.0.0`).
    pub contract: String,
    /// Step types (step plugins).
    #[serde(default)]
    pub step_types: Vec<StepTypeDecl>,
    /// Channels (sender adapters): `email`, `sms`.
    #[serde(default)]
    pub channels: Vec<String>,
}

/// One custom step type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StepTypeDecl {
    /// Unique within the plugin.
    pub id: String,
    /// Palette label.
    pub display_name: String,
    /// `communication`, `flow_control` or `crm_actions`.
    pub palette_group: String,
    /// Font Awesome class.
    pub icon: String,
    /// One line under the palette item.
    pub description: String,
    /// JSON Schema of the config object.
    pub config_schema: Value,
    /// `continue`, `branch`, `property_changes`, `failure`.
    pub outcomes: Vec<String>,
    /// The config properties in the order the schema lists them (the
    /// builder shows the fields in this order).
    #[serde(default)]
    pub field_order: Vec<String>,
}

impl StepTypeDecl {
    /// True when the step returns YES / NO rather than continuing.
    pub fn branches(&self) -> bool {
        self.outcomes.iter().any(|o| o == "branch")
    }

    /// True when it may return property changes.
    pub fn sets_properties(&self) -> bool {
        self.outcomes.iter().any(|o| o == "property_changes")
    }
}

impl Descriptor {
    /// The identity part, with no step types or channels yet.
    fn identity(
        info: super::contract::step_world::crm::plugin::types::PluginInfo,
        kind: PluginKind,
        contract: &str,
    ) -> Descriptor {
        Descriptor {
            id: info.id,
            name: info.name,
            version: info.version,
            vendor: info.vendor,
            description: info.description,
            kind,
            contract: contract.to_string(),
            step_types: Vec::new(),
            channels: Vec::new(),
        }
    }

    /// From a step plugin's `describe`.
    pub fn from_step(d: step::Description, contract: &str) -> Descriptor {
        Descriptor {
            step_types: d
                .step_types
                .into_iter()
                .map(|t| StepTypeDecl {
                    id: t.id,
                    display_name: t.display_name,
                    palette_group: match t.palette_group {
                        step::PaletteGroup::Communication => "communication",
                        step::PaletteGroup::FlowControl => "flow_control",
                        step::PaletteGroup::CrmActions => "crm_actions",
                    }
                    .into(),
                    icon: t.icon,
                    description: t.description,
                    field_order: property_order(&t.config_schema),
                    // Kept as text when it is not JSON: `validate` names the problem.
                    config_schema: serde_json::from_str(&t.config_schema)
                        .unwrap_or(Value::String(t.config_schema)),
                    outcomes: t
                        .outcomes
                        .into_iter()
                        .map(|o| {
                            match o {
                                step::OutcomeKind::Continue => "continue",
                                step::OutcomeKind::Branch => "branch",
                                step::OutcomeKind::PropertyChanges => "property_changes",
                                step::OutcomeKind::Failure => "failure",
                            }
                            .to_string()
                        })
                        .collect(),
                })
                .collect(),
            ..Descriptor::identity(d.info, PluginKind::Step, contract)
        }
    }

    /// From a sender adapter's `describe`.
    pub fn from_sender(d: sender::Description, contract: &str) -> Descriptor {
        use super::contract::step_world::crm::plugin::types::Channel;
        Descriptor {
            channels: d
                .channels
                .into_iter()
                .map(|c| match c {
                    Channel::Email => "email".to_string(),
                    Channel::Sms => "sms".to_string(),
                })
                .collect(),
            ..Descriptor::identity(d.info, PluginKind::Sender, contract)
        }
    }

    /// Checks the declaration: ids, texts, schemas and outcomes.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] naming what is wrong.
    pub fn validate(&self) -> Result<()> {
        check_id("id", &self.id, 3)?;
        for (name, v, max) in [
            ("name", &self.name, 80),
            ("version", &self.version, 32),
            ("vendor", &self.vendor, 80),
            ("description", &self.description, 400),
        ] {
            if v.trim().is_empty() && name != "description" {
                return Err(Error::invalid(format!("plugin {name}: must not be empty")));
            }
            if v.chars().count() > max {
                return Err(Error::invalid(format!(
                    "plugin {name}: at most {max} characters"
                )));
            }
        }
        match self.kind {
            PluginKind::Step => {
                if self.step_types.is_empty() {
                    return Err(Error::invalid("a step plugin must declare a step type"));
                }
                let mut seen = std::collections::HashSet::new();
                for t in &self.step_types {
                    let at = |m: String| Error::invalid(format!("step type {:?}: {m}", t.id));
                    check_id("step type id", &t.id, 1)?;
                    if !seen.insert(t.id.as_str()) {
                        return Err(at("declared twice".into()));
                    }
                    if t.display_name.trim().is_empty() || t.display_name.chars().count() > 60 {
                        return Err(at("display name: 1 to 60 characters".into()));
                    }
                    if t.outcomes.iter().any(|o| o == "branch")
                        && t.outcomes.iter().any(|o| o == "continue")
                    {
                        return Err(at(
                            "returns either continue or branch, not both (a branching step ends its path)".into(),
                        ));
                    }
                    if !t.outcomes.iter().any(|o| o == "branch" || o == "continue") {
                        return Err(at("must declare continue or branch".into()));
                    }
                    config_fields(&t.config_schema, &t.field_order).map_err(at)?;
                }
            }
            PluginKind::Sender => {
                if self.channels.is_empty() {
                    return Err(Error::invalid("a sender adapter must declare a channel"));
                }
            }
        }
        Ok(())
    }

    /// A step type by id.
    pub fn step_type(&self, id: &str) -> Option<&StepTypeDecl> {
        self.step_types.iter().find(|t| t.id == id)
    }
}

/// The keys of a JSON Schema's `properties`, in document order (a JSON
/// object read into a map loses it).
pub fn property_order(schema_text: &str) -> Vec<String> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    struct Keys(Vec<String>);
    impl<'de> Deserialize<'de> for Keys {
        fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Keys;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("an object")
                }
                fn visit_map<A: MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> std::result::Result<Keys, A::Error> {
                    let mut keys = Vec::new();
                    while let Some((k, IgnoredAny)) = map.next_entry::<String, IgnoredAny>()? {
                        keys.push(k);
                    }
                    Ok(Keys(keys))
                }
            }
            d.deserialize_map(V)
        }
    }
    #[derive(Deserialize)]
    struct Root {
        #[serde(default)]
        properties: Option<Keys>,
    }
    serde_json::from_str::<Root>(schema_text)
        .ok()
        .and_then(|r| r.properties)
        .map(|k| k.0)
        .unwrap_or_default()
}

/// Whether `id` is `min` to 64 lowercase letters, digits and '-', not
/// starting with '-' (a plugin's id takes at least 3).
pub(crate) fn is_id(id: &str, min: usize) -> bool {
    (min..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
}

fn check_id(what: &str, id: &str, min: usize) -> Result<()> {
    if is_id(id, min) {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "{what} {id:?}: {min} to 64 lowercase letters, digits and '-'"
        )))
    }
}

/// One config field of a custom step, derived from its JSON Schema.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct ConfigField {
    /// Property name in the config object.
    pub name: String,
    /// Label (`title`, else the name).
    pub label: String,
    /// `text`, `number`, `integer`, `toggle` or `select`.
    pub kind: String,
    /// Listed in `required`.
    pub required: bool,
    /// `default`.
    pub default: Option<Value>,
    /// `description`.
    pub help: Option<String>,
    /// `enum` values (select).
    pub options: Vec<Value>,
    /// `minimum`.
    pub minimum: Option<f64>,
    /// `maximum`.
    pub maximum: Option<f64>,
    /// `maxLength`.
    pub max_length: Option<u64>,
}

/// The builder's config fields of a step type, in the schema's order. The
/// schema must be an object schema whose properties are strings (optionally
/// an `enum`), numbers, integers or booleans; it must compile as JSON Schema.
///
/// # Errors
///
/// A message naming what the builder cannot render.
pub fn config_fields(
    schema: &Value,
    order: &[String],
) -> std::result::Result<Vec<ConfigField>, String> {
    let Value::Object(root) = schema else {
        return Err("config schema: not a JSON object".into());
    };
    if root.get("type").and_then(Value::as_str) != Some("object") {
        return Err("config schema: the root must be {\"type\": \"object\"}".into());
    }
    jsonschema::validator_for(schema).map_err(|e| format!("config schema: {e}"))?;
    let required: Vec<&str> = root
        .get("required")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(props) = root.get("properties") else {
        return Ok(Vec::new());
    };
    let Value::Object(props) = props else {
        return Err("config schema: properties must be an object".into());
    };
    let mut out = Vec::new();
    for (name, p) in props {
        let text = |k: &str| p.get(k).and_then(Value::as_str).map(str::to_string);
        let options: Vec<Value> = p
            .get("enum")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let kind = match (p.get("type").and_then(Value::as_str), options.is_empty()) {
            (Some("string"), false) => "select",
            (Some("string"), true) => "text",
            (Some("number"), _) => "number",
            (Some("integer"), _) => "integer",
            (Some("boolean"), _) => "toggle",
            (other, _) => {
                return Err(format!(
                    "config schema: property {name:?} has type {other:?}; the builder renders string, number, integer and boolean fields"
                ));
            }
        };
        out.push(ConfigField {
            name: name.clone(),
            label: text("title").unwrap_or_else(|| name.clone()),
            kind: kind.into(),
            required: required.contains(&name.as_str()),
            default: p.get("default").cloned(),
            help: text("description"),
            options,
            minimum: p.get("minimum").and_then(Value::as_f64),
            maximum: p.get("maximum").and_then(Value::as_f64),
            max_length: p.get("maxLength").and_then(Value::as_u64),
        });
    }
    let rank = |name: &str| order.iter().position(|o| o == name).unwrap_or(usize::MAX);
    out.sort_by_key(|f| rank(&f.name));
    Ok(out)
}

/// Checks a step's config against its type's schema (compiling the schema:
/// for a one-off check, such as saving an automation).
///
/// # Errors
///
/// [`Error::Invalid`] listing each failing field (`/threshold: 500 is
/// greater than the maximum of 100`).
pub fn validate_config(decl: &StepTypeDecl, config: &Value) -> Result<()> {
    ConfigCheck::compile(decl)?.check(config)
}

/// A step type's config schema compiled once, to check every call's config
/// (compiling a schema costs far more than checking against it).
pub struct ConfigCheck {
    step_type: String,
    validator: jsonschema::Validator,
}

impl ConfigCheck {
    /// Compiles the step type's schema.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] when the schema does not compile.
    pub fn compile(decl: &StepTypeDecl) -> Result<ConfigCheck> {
        let validator = jsonschema::validator_for(&decl.config_schema)
            .map_err(|e| Error::invalid(format!("config schema of {:?}: {e}", decl.id)))?;
        Ok(ConfigCheck {
            step_type: decl.id.clone(),
            validator,
        })
    }

    /// Checks a config.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] listing each failing field.
    pub fn check(&self, config: &Value) -> Result<()> {
        let problems: Vec<String> = self
            .validator
            .iter_errors(config)
            // Where and which rule, never the value: a config can hold
            // whatever the practice typed.
            .map(|e| {
                let at = e.instance_path().to_string();
                format!(
                    "{}: does not meet the schema's {}",
                    if at.is_empty() { "/" } else { &at },
                    e.schema_path()
                )
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::invalid(format!(
                "config of {:?}: {}",
                self.step_type,
                problems.join("; ")
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decl(schema: Value) -> StepTypeDecl {
        StepTypeDecl {
            id: "score".into(),
            display_name: "Score".into(),
            palette_group: "crm_actions".into(),
            icon: "fa-star".into(),
            description: String::new(),
            config_schema: schema,
            outcomes: vec!["continue".into()],
            field_order: Vec::new(),
        }
    }

    #[test]
    fn fields_follow_the_schema() {
        let text = r#"{
            "type": "object",
            "required": ["threshold"],
            "properties": {
                "threshold": {"type": "integer", "title": "Hot at", "minimum": 0, "maximum": 100, "default": 70},
                "property": {"type": "string", "maxLength": 40},
                "mode": {"type": "string", "enum": ["fast", "exact"]},
                "notify": {"type": "boolean"}
            }
        }"#;
        let order = property_order(text);
        assert_eq!(order, ["threshold", "property", "mode", "notify"]);
        let schema: Value = serde_json::from_str(text).unwrap();
        let f = config_fields(&schema, &order).unwrap();
        let kinds: Vec<&str> = f.iter().map(|f| f.kind.as_str()).collect();
        assert_eq!(kinds, ["integer", "text", "select", "toggle"]);
        assert_eq!(f[0].label, "Hot at");
        assert!(f[0].required && !f[1].required);
        assert_eq!(f[0].maximum, Some(100.0));
        assert_eq!(f[2].options, vec![json!("fast"), json!("exact")]);
    }

    #[test]
    fn unrenderable_schemas_are_refused() {
        assert!(config_fields(&json!({"type": "array"}), &[]).is_err());
        assert!(
            config_fields(
                &json!({"type": "object", "properties": {"x": {"type": "object"}}}),
                &[]
            )
            .unwrap_err()
            .contains("\"x\"")
        );
        assert!(config_fields(&json!("nope"), &[]).is_err());
    }

    #[test]
    fn configs_are_checked_against_the_schema() {
        let d = decl(json!({
            "type": "object",
            "required": ["threshold"],
            "additionalProperties": false,
            "properties": {"threshold": {"type": "integer", "maximum": 100}}
        }));
        validate_config(&d, &json!({"threshold": 70})).unwrap();
        let e = validate_config(&d, &json!({"threshold": 500}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/threshold") && e.contains("maximum"), "{e}");
        assert!(!e.contains("500"), "the value is not quoted: {e}");
        assert!(validate_config(&d, &json!({})).is_err());
        assert!(validate_config(&d, &json!({"threshold": 1, "x": 2})).is_err());
    }
}
