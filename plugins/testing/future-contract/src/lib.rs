//! `future-contract`: a step plugin built against `crm:plugin@2.0.0`, a
//! contract major version the host does not have. The host must refuse it at
//! install with a clear version error.
//!
//! `wit/crm-plugin.wit` is a copy of `plugins/wit/crm-plugin.wit` with only
//! the package version changed; `plugins/build.sh` refreshes it. The bindings
//! are generated here directly (not through the SDK, which is pinned to the
//! current contract).

#[allow(missing_docs)]
mod bindings {
    wit_bindgen::generate!({
        world: "step-plugin",
        path: "wit",
    });
}

use bindings::crm::plugin::types::PluginInfo;
use bindings::exports::crm::plugin::step::{
    Description, Guest, OutcomeKind, PaletteGroup, StepOutcome, StepRequest, StepType,
};

/// The plugin.
pub struct FutureContract;

#[cfg(target_arch = "wasm32")]
bindings::export!(FutureContract with_types_in bindings);

impl Guest for FutureContract {
    fn describe() -> Description {
        Description {
            info: PluginInfo {
                id: "future-contract".into(),
                name: "Future contract".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                vendor: "CRM module tests".into(),
                description: "Built against crm:plugin@2.0.0; must be refused".into(),
            },
            step_types: vec![StepType {
                id: "noop".into(),
                display_name: "Noop (contract 2.0)".into(),
                palette_group: PaletteGroup::CrmActions,
                icon: "fa-clock".into(),
                description: "Continues at once".into(),
                config_schema: r#"{"type":"object","properties":{}}"#.into(),
                outcomes: vec![OutcomeKind::Continue],
            }],
        }
    }

    fn run(_request: StepRequest) -> StepOutcome {
        StepOutcome::Continue(Vec::new())
    }
}
