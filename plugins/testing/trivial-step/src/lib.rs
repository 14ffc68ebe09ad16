//! `trivial-step`: the smallest step plugin built with the SDK, for the
//! benchmark's per-call overhead. One step type, `noop`, that continues at
//! once without reading its request.
//!
//! It uses nothing of WASI itself, so its component imports only what the
//! Rust standard library for `wasm32-wasip2` always brings (standard streams,
//! environment, exit). `test-steps` also reads files, the environment and
//! clocks for its sandbox probes, and so imports more: the host's cost of a
//! call grows with the number of imports it wires into each fresh instance.

use crm_plugin_sdk::step::{
    Description, Guest, OutcomeKind, PaletteGroup, PluginInfo, StepOutcome, StepRequest, StepType,
};

/// The plugin.
pub struct TrivialStep;

#[cfg(target_arch = "wasm32")]
crm_plugin_sdk::export_step_plugin!(TrivialStep);

impl Guest for TrivialStep {
    fn describe() -> Description {
        Description {
            info: PluginInfo {
                id: "trivial-step".into(),
                name: "Trivial step".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                vendor: "CRM module benchmark".into(),
                description: "One step type that continues at once".into(),
            },
            step_types: vec![StepType {
                id: "noop".into(),
                display_name: "No-op".into(),
                palette_group: PaletteGroup::CrmActions,
                icon: "fa-circle".into(),
                description: "Continues at once".into(),
                config_schema: r#"{"type": "object", "properties": {}}"#.into(),
                outcomes: vec![OutcomeKind::Continue],
            }],
        }
    }

    fn run(_request: StepRequest) -> StepOutcome {
        StepOutcome::Continue(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_one_step_type_that_continues() {
        let d = TrivialStep::describe();
        assert_eq!(d.info.id, "trivial-step");
        assert_eq!(d.step_types.len(), 1);
        assert_eq!(d.step_types[0].outcomes, vec![OutcomeKind::Continue]);
    }
}
