//! The `step-plugin` world: custom step types for the automation builder.
//!
//! The generated bindings live here (`crm::plugin::*` for the imports,
//! `exports::crm::plugin::step` for the export); the types a plugin needs are
//! re-exported at this module's top level, with a few helpers.

// The bindings are generated from `plugins/wit` (relative to this crate).
#[allow(missing_docs)]
mod bindings {
    wit_bindgen::generate!({
        world: "step-plugin",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "export_step_plugin",
        default_bindings_module: "crm_plugin_sdk::step",
        additional_derives: [PartialEq, Eq],
    });
}

#[doc(hidden)]
pub use bindings::*;

pub use bindings::crm::plugin::types::{PluginInfo, PropertyChange};
pub use bindings::exports::crm::plugin::step::{
    BranchTaken, Description, Guest, OutcomeKind, PaletteGroup, StepOutcome, StepRequest, StepType,
};

use serde_json::{Map, Value};

impl PropertyChange {
    /// A change of property `name` to `value` (serialized as JSON text).
    ///
    /// ```ignore
    /// PropertyChange::json("lead_score", &72.into());
    /// PropertyChange::json("tags", &serde_json::json!({"add": ["hot-lead"]}));
    /// ```
    pub fn json(name: impl Into<String>, value: &Value) -> Self {
        Self {
            name: name.into(),
            value: value.to_string(),
        }
    }

    /// The new value parsed back from its JSON text.
    pub fn parsed_value(&self) -> Result<Value, String> {
        serde_json::from_str(&self.value)
            .map_err(|e| format!("property {}: invalid JSON value: {e}", self.name))
    }
}

impl StepRequest {
    /// The contact as a JSON object, or a reason naming what is wrong (never
    /// the contact's data).
    pub fn contact_object(&self) -> Result<Map<String, Value>, String> {
        crate::json::parse_object(&self.contact, "contact")
    }

    /// The step's config as a JSON object (`{}` when the text is empty).
    pub fn config_object(&self) -> Result<Map<String, Value>, String> {
        if self.config.trim().is_empty() {
            return Ok(Map::new());
        }
        crate::json::parse_object(&self.config, "config")
    }
}

impl StepOutcome {
    /// `continue` with no property changes.
    pub fn proceed() -> Self {
        StepOutcome::Continue(Vec::new())
    }

    /// `continue` applying `changes`.
    pub fn proceed_with(changes: Vec<PropertyChange>) -> Self {
        StepOutcome::Continue(changes)
    }

    /// `branch`: the YES path when `yes`, else the NO path.
    pub fn branch(yes: bool, changes: Vec<PropertyChange>) -> Self {
        StepOutcome::Branch(BranchTaken { yes, changes })
    }

    /// `failed` with a reason (codes and ids only, never patient data).
    pub fn fail(reason: impl Into<String>) -> Self {
        StepOutcome::Failed(reason.into())
    }
}

impl From<Result<StepOutcome, String>> for StepOutcome {
    /// `Err(reason)` becomes `failed(reason)`, so `run` can use `?` in a helper.
    fn from(result: Result<StepOutcome, String>) -> Self {
        result.unwrap_or_else(StepOutcome::Failed)
    }
}
