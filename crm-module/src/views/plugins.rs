//! The Plugins screen: installed plugins with what they declare, what the
//! practice granted them (secrets by name only, never their values) and
//! their call figures (calls, failures, time).

use rusqlite::Connection;
use schemars::JsonSchema;
use serde::Serialize;

use crate::clock::{Millis, to_rfc3339};
use crate::error::Result;
use crate::plugins::contract::{PluginKind, host_version};
use crate::plugins::limits::Limits;
use crate::plugins::registry;

/// The Plugins view.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct PluginsView {
    /// Screen title.
    pub title: String,
    /// The contract version this module implements (`1.0.0`).
    pub contract: String,
    /// Installed plugins, by id.
    pub plugins: Vec<PluginRow>,
    /// Totals over every plugin.
    pub totals: CallTotals,
}

/// One installed plugin.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct PluginRow {
    /// Id.
    pub plugin_id: String,
    /// Display name.
    pub name: String,
    /// `step` or `sender`.
    pub kind: PluginKind,
    /// "Custom steps" or "Sender adapter".
    pub kind_label: String,
    /// The plugin's version.
    pub version: String,
    /// Vendor.
    pub vendor: String,
    /// One line.
    pub description: String,
    /// Contract version it was built against.
    pub contract: String,
    /// Enabled.
    pub enabled: bool,
    /// Step types (step plugins): id, label, palette group, outcomes.
    pub step_types: Vec<StepTypeRow>,
    /// Channels (sender adapters).
    pub channels: Vec<String>,
    /// Granted origins.
    pub grants: Vec<String>,
    /// Limits of each call.
    pub limits: Limits,
    /// Config keys and values.
    pub config: std::collections::BTreeMap<String, String>,
    /// Secret names (values are never shown).
    pub secret_names: Vec<String>,
    /// SHA-256 of the component.
    pub sha256: String,
    /// Installed at (RFC 3339).
    pub installed_at: String,
    /// Last changed at (RFC 3339).
    pub updated_at: String,
    /// Figures over all its operations.
    pub figures: CallTotals,
    /// Figures per operation (step type, or `send`).
    pub operations: Vec<OperationRow>,
}

/// A custom step type as listed.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct StepTypeRow {
    /// Id.
    pub id: String,
    /// Palette label.
    pub label: String,
    /// Palette group.
    pub palette_group: String,
    /// Outcomes it may return.
    pub outcomes: Vec<String>,
}

/// Call figures.
#[derive(Debug, Clone, Default, Serialize, JsonSchema)]
pub struct CallTotals {
    /// Calls.
    pub calls: i64,
    /// Failed calls (trap, deadline, memory, refused output, plugin-reported failure).
    pub failures: i64,
    /// failures ÷ calls, "2.5%".
    pub failure_rate: String,
    /// Mean time per call in ms (3 decimals), instantiation included.
    pub avg_ms: f64,
    /// Slowest call in ms.
    pub max_ms: f64,
    /// Total time in ms.
    pub total_ms: f64,
}

/// Figures of one operation.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct OperationRow {
    /// Step type id, or `send`.
    pub operation: String,
    /// Figures.
    #[serde(flatten)]
    pub figures: CallTotals,
    /// Latest failure reason.
    pub last_failure: Option<String>,
    /// When (RFC 3339).
    pub last_failure_at: Option<String>,
    /// Latest call (RFC 3339).
    pub last_call_at: Option<String>,
}

fn totals(calls: i64, failures: i64, total_micros: i64, max_micros: i64) -> CallTotals {
    let ms = |us: i64| (us as f64 / 1000.0 * 1000.0).round() / 1000.0;
    CallTotals {
        calls,
        failures,
        failure_rate: if calls == 0 {
            "0%".into()
        } else {
            format!("{:.1}%", failures as f64 * 100.0 / calls as f64)
        },
        avg_ms: if calls == 0 {
            0.0
        } else {
            ms(total_micros / calls)
        },
        max_ms: ms(max_micros),
        total_ms: ms(total_micros),
    }
}

/// Builds the Plugins view.
pub fn build(conn: &Connection, _now: Millis) -> Result<PluginsView> {
    let mut rows = Vec::new();
    let (mut all_calls, mut all_fail, mut all_us, mut all_max) = (0, 0, 0, 0);
    for p in registry::all(conn)? {
        let d = &p.descriptor;
        let ops = registry::figures(conn, &d.id)?;
        let (calls, fails, us, max) = ops.iter().fold((0, 0, 0, 0), |a, o| {
            (
                a.0 + o.calls,
                a.1 + o.failures,
                a.2 + o.total_micros,
                a.3.max(o.max_micros),
            )
        });
        all_calls += calls;
        all_fail += fails;
        all_us += us;
        all_max = all_max.max(max);
        rows.push(PluginRow {
            plugin_id: d.id.clone(),
            name: d.name.clone(),
            kind: d.kind,
            kind_label: match d.kind {
                PluginKind::Step => "Custom steps",
                PluginKind::Sender => "Sender adapter",
            }
            .into(),
            version: d.version.clone(),
            vendor: d.vendor.clone(),
            description: d.description.clone(),
            contract: d.contract.clone(),
            enabled: p.enabled,
            step_types: d
                .step_types
                .iter()
                .map(|t| StepTypeRow {
                    id: t.id.clone(),
                    label: t.display_name.clone(),
                    palette_group: t.palette_group.clone(),
                    outcomes: t.outcomes.clone(),
                })
                .collect(),
            channels: d.channels.clone(),
            grants: p.grants.clone(),
            limits: p.limits,
            config: p.config.clone(),
            secret_names: p.secrets.keys().cloned().collect(),
            sha256: p.sha256.clone(),
            installed_at: to_rfc3339(p.installed_at),
            updated_at: to_rfc3339(p.updated_at),
            figures: totals(calls, fails, us, max),
            operations: ops
                .into_iter()
                .map(|o| OperationRow {
                    figures: totals(o.calls, o.failures, o.total_micros, o.max_micros),
                    operation: o.operation,
                    last_failure: o.last_failure,
                    last_failure_at: o.last_failure_at.map(to_rfc3339),
                    last_call_at: o.last_call_at.map(to_rfc3339),
                })
                .collect(),
        });
    }
    Ok(PluginsView {
        title: "Plugins".into(),
        contract: host_version(),
        plugins: rows,
        totals: totals(all_calls, all_fail, all_us, all_max),
    })
}
