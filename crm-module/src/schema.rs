//! JSON Schemas of everything the host exchanges with the module: pushed
//! events, commands, the open config, settings, and every view model.
//! Published through the `schemas` view and in `include/crm_schemas.json`.

use serde_json::{Value, json};

/// All schemas, keyed by name.
pub fn all() -> Value {
    json!({
        "event": schemars::schema_for!(crate::event::IncomingEvent),
        "event_batch": schemars::schema_for!(Vec<crate::event::IncomingEvent>),
        "command": schemars::schema_for!(crate::commands::Command),
        "open_config": schemars::schema_for!(crate::module::OpenConfig),
        "settings": schemars::schema_for!(crate::settings::Settings),
        "automation_definition": schemars::schema_for!(crate::model::automation::AutomationDefinition),
        "push_result": schemars::schema_for!(Vec<crate::module::PushResult>),
        "views": crate::views::schemas(),
    })
}
