//! The `plugin.*` commands: install, configure, enable, disable, remove,
//! list. They run in the worker's transaction like every command; the
//! component itself is compiled and described before (by
//! [`crate::module::Module::execute`], off the worker), and the plugin host
//! reloads from the database after the commit.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::Prepared;
use super::contract::PluginKind;
use super::descriptor::Descriptor;
use super::fetch::Grant;
use super::limits::Limits;
use super::registry::{self, Grants};
use crate::core::Ctx;
use crate::error::{Error, Result};
use crate::model::automation::{Step, StepKind};

/// Most config or secret entries per plugin.
const MAX_ENTRIES: usize = 64;
/// Longest config or secret value (bytes).
const MAX_VALUE: usize = 8 * 1024;
/// Most granted origins per plugin.
const MAX_GRANTS: usize = 32;

/// Checks what the practice grants a plugin of `kind`.
///
/// # Errors
///
/// [`Error::Invalid`] naming the field.
pub fn check_grants(kind: PluginKind, g: &Grants) -> Result<()> {
    if kind == PluginKind::Step && !g.grants.is_empty() {
        return Err(Error::invalid(
            "grants: a step plugin cannot fetch; hosts are granted to sender adapters only",
        ));
    }
    if g.grants.len() > MAX_GRANTS {
        return Err(Error::invalid(format!("grants: at most {MAX_GRANTS}")));
    }
    for grant in &g.grants {
        Grant::parse(grant)?;
    }
    g.limits.validate()?;
    for (what, map) in [("config", &g.config), ("secrets", &g.secrets)] {
        if map.len() > MAX_ENTRIES {
            return Err(Error::invalid(format!(
                "{what}: at most {MAX_ENTRIES} entries"
            )));
        }
        for (k, v) in map {
            let key_ok = (1..=64).contains(&k.len())
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
            if !key_ok {
                return Err(Error::invalid(format!(
                    "{what}: key {k:?} must be 1 to 64 letters, digits, '_', '-' or '.'"
                )));
            }
            if v.len() > MAX_VALUE {
                return Err(Error::invalid(format!(
                    "{what}.{k}: at most {MAX_VALUE} bytes"
                )));
            }
        }
    }
    Ok(())
}

/// What a plugin command answers: the plugin as listed.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct PluginSummary {
    /// Id.
    pub plugin_id: String,
    /// Step plugin or sender adapter.
    pub kind: PluginKind,
    /// Display name.
    pub name: String,
    /// The plugin's version.
    pub version: String,
    /// Contract version it was built against.
    pub contract: String,
    /// Enabled.
    pub enabled: bool,
    /// Its step types (ids).
    pub step_types: Vec<String>,
    /// Its channels.
    pub channels: Vec<String>,
    /// SHA-256 of the component.
    pub sha256: String,
}

fn summary(d: &Descriptor, enabled: bool, sha256: &str) -> PluginSummary {
    PluginSummary {
        plugin_id: d.id.clone(),
        kind: d.kind,
        name: d.name.clone(),
        version: d.version.clone(),
        contract: d.contract.clone(),
        enabled,
        step_types: d.step_types.iter().map(|t| t.id.clone()).collect(),
        channels: d.channels.clone(),
        sha256: sha256.to_string(),
    }
}

fn to_json<T: Serialize>(v: &T) -> Result<Value> {
    serde_json::to_value(v).map_err(|e| Error::Internal(e.to_string()))
}

/// `plugin.install`.
pub fn install(
    ctx: &Ctx<'_>,
    prepared: Option<&Prepared>,
    grants: Grants,
    enabled: bool,
    replace: bool,
) -> Result<Value> {
    let Some(p) = prepared else {
        return Err(Error::Internal(
            "plugin.install reached the worker without its compiled component".into(),
        ));
    };
    check_grants(p.descriptor.kind, &grants)?;
    if replace {
        check_replacement(ctx, &p.descriptor)?;
    }
    registry::install(ctx.conn, p, &grants, enabled, replace, ctx.now)?;
    to_json(&summary(&p.descriptor, enabled, &p.sha256))
}

/// A replacement must keep every step type that a live automation uses.
fn check_replacement(ctx: &Ctx<'_>, new: &Descriptor) -> Result<()> {
    for (automation, step_type) in uses(ctx, &new.id) {
        if new.step_type(&step_type).is_none() {
            return Err(Error::Conflict(format!(
                "automation {automation} uses step type {step_type:?}, which the new version of plugin {:?} no longer declares",
                new.id
            )));
        }
    }
    Ok(())
}

/// `plugin.configure`: replaces the given parts of what the practice grants.
pub fn configure(
    ctx: &Ctx<'_>,
    plugin_id: &str,
    grants: Option<Vec<String>>,
    limits: Option<Limits>,
    config: Option<BTreeMap<String, String>>,
    secrets: Option<BTreeMap<String, String>>,
) -> Result<Value> {
    let stored = registry::get(ctx.conn, plugin_id)?
        .ok_or_else(|| Error::NotFound(format!("plugin {plugin_id:?}")))?;
    let next = Grants {
        grants: grants.unwrap_or(stored.grants),
        limits: limits.unwrap_or(stored.limits),
        config: config.unwrap_or(stored.config),
        secrets: secrets.unwrap_or(stored.secrets),
    };
    check_grants(stored.descriptor.kind, &next)?;
    registry::configure(ctx.conn, plugin_id, &next, ctx.now)?;
    to_json(&summary(&stored.descriptor, stored.enabled, &stored.sha256))
}

/// `plugin.enable` / `plugin.disable`. A disabled plugin's calls wait and
/// are retried with backoff; after the last attempt the step fails.
pub fn set_enabled(ctx: &Ctx<'_>, plugin_id: &str, enabled: bool) -> Result<Value> {
    registry::set_enabled(ctx.conn, plugin_id, enabled, ctx.now)?;
    let stored = registry::get(ctx.conn, plugin_id)?
        .ok_or_else(|| Error::NotFound(format!("plugin {plugin_id:?}")))?;
    to_json(&summary(&stored.descriptor, enabled, &stored.sha256))
}

/// `plugin.remove`: refused while an automation uses one of its step types
/// or settings deliver a channel through it.
pub fn remove(ctx: &Ctx<'_>, plugin_id: &str) -> Result<Value> {
    if let Some((automation, step_type)) = uses(ctx, plugin_id).into_iter().next() {
        return Err(Error::Conflict(format!(
            "automation {automation} uses step type {step_type:?} of plugin {plugin_id:?}: remove the step or delete the automation first"
        )));
    }
    for channel in ["email", "sms"] {
        if ctx.settings.doc.adapter_for(channel) == Some(plugin_id) {
            return Err(Error::Conflict(format!(
                "settings deliver {channel} through plugin {plugin_id:?}: choose another delivery first"
            )));
        }
    }
    registry::remove(ctx.conn, plugin_id)?;
    Ok(serde_json::json!({"plugin_id": plugin_id, "removed": true}))
}

/// (automation, step type) pairs of automations (not deleted) using the plugin.
fn uses(ctx: &Ctx<'_>, plugin_id: &str) -> Vec<(String, String)> {
    fn walk(steps: &[Step], plugin_id: &str, out: &mut Vec<String>) {
        for s in steps {
            if let StepKind::Custom {
                plugin_id: p,
                step_type,
                ..
            } = &s.kind
                && p == plugin_id
            {
                out.push(step_type.clone());
            }
            if let Some((yes, no)) = s.kind.paths() {
                walk(yes, plugin_id, out);
                walk(no, plugin_id, out);
            }
        }
    }
    let mut out = Vec::new();
    for entry in ctx.catalog.all() {
        let mut types = Vec::new();
        walk(&entry.current.def.steps, plugin_id, &mut types);
        out.extend(types.into_iter().map(|t| (entry.id.clone(), t)));
    }
    out
}

/// Checks the custom steps of a definition against the installed plugins
/// and sets each one's `branches` from its step type's declaration.
///
/// # Errors
///
/// [`Error::NotFound`] for an unknown plugin or step type;
/// [`Error::Invalid`] for a config its schema refuses.
pub fn check_custom_steps(conn: &rusqlite::Connection, steps: &mut [Step]) -> Result<()> {
    for s in steps.iter_mut() {
        let here = if s.id.is_empty() {
            "definition: custom step".to_string()
        } else {
            format!("definition: step {}", s.id)
        };
        if let StepKind::Custom {
            plugin_id,
            step_type,
            config,
            branches,
            ..
        } = &mut s.kind
        {
            let (descriptor, _) = registry::descriptor(conn, plugin_id)?
                .ok_or_else(|| Error::not_found(format!("{here}: plugin {plugin_id}")))?;
            if descriptor.kind != PluginKind::Step {
                return Err(Error::invalid(format!(
                    "{here}: plugin {plugin_id} is a sender adapter, not a step plugin"
                )));
            }
            let decl = descriptor.step_type(step_type).ok_or_else(|| {
                Error::not_found(format!(
                    "{here}: step type {step_type} of plugin {plugin_id}"
                ))
            })?;
            super::descriptor::validate_config(decl, config).map_err(|e| e.at(&here))?;
            *branches = decl.branches();
        }
        if let StepKind::Custom { yes, no, .. } | StepKind::Branch { yes, no, .. } = &mut s.kind {
            check_custom_steps(conn, yes)?;
            check_custom_steps(conn, no)?;
        }
    }
    Ok(())
}

/// Checks that a channel's sender adapter in settings is installed, is an
/// adapter, and sends that channel.
///
/// # Errors
///
/// [`Error::Invalid`] naming the settings field.
pub fn check_adapters(
    conn: &rusqlite::Connection,
    settings: &crate::settings::Settings,
) -> Result<()> {
    for channel in ["email", "sms"] {
        let Some(id) = settings.adapter_for(channel) else {
            continue;
        };
        let field = format!("{channel}_delivery.plugin_id");
        let Some((d, _)) = registry::descriptor(conn, id)? else {
            return Err(Error::invalid(format!(
                "{field}: no plugin {id:?} is installed"
            )));
        };
        if d.kind != PluginKind::Sender {
            return Err(Error::invalid(format!(
                "{field}: plugin {id:?} is a step plugin, not a sender adapter"
            )));
        }
        if !d.channels.iter().any(|c| c == channel) {
            return Err(Error::invalid(format!(
                "{field}: plugin {id:?} does not send {channel}"
            )));
        }
    }
    Ok(())
}
