//! JSON Schemas of everything the host exchanges with the module: pushed
//! events, commands, the open config, settings, every view model and the
//! parameters of each view.
//! Published through the `schemas` view and in `include/crm_schemas.json`.
//!
//! What the host sends is described as the module reads it (schemars'
//! default, deserialize contract); what it receives (view models, push
//! results) as the module writes it ([`output`]): a field always written is
//! required, `null` where it may be, and one left out when empty is not.

use serde_json::{Value, json};

/// The schema of `T` as the module serializes it.
pub fn output<T: schemars::JsonSchema>() -> schemars::Schema {
    schemars::generate::SchemaSettings::default()
        .for_serialize()
        .into_generator()
        .into_root_schema_for::<T>()
}

/// All schemas, keyed by name.
pub fn all() -> Value {
    json!({
        "event": schemars::schema_for!(crate::event::IncomingEvent),
        "event_batch": schemars::schema_for!(Vec<crate::event::IncomingEvent>),
        "command": schemars::schema_for!(crate::commands::Command),
        "open_config": schemars::schema_for!(crate::module::OpenConfig),
        "settings": schemars::schema_for!(crate::settings::Settings),
        "automation_definition": schemars::schema_for!(crate::model::automation::AutomationDefinition),
        "push_result": output::<Vec<crate::module::PushResult>>(),
        "views": crate::views::schemas(),
        "view_params": crate::views::params_schemas(),
    })
}
