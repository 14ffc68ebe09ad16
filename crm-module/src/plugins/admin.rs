//! The `plugin.*` commands: install, configure, enable, disable, remove,
//! list. They run in the worker's transaction like every command; the
//! component itself is compiled and described before (by
//! [`crate::module::Module::execute`], off the worker), and the plugin host
//! reloads from the database after the commit.

use serde::Serialize;
use serde_json::Value;

use super::Prepared;
use super::contract::PluginKind;
use super::descriptor::Descriptor;
use super::fetch::Grant;
use super::registry::{self, GrantChanges, Grants};
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

/// `plugin.install`. A first install starts from the defaults (nothing
/// granted, default limits, enabled); a replacement keeps what the practice
/// granted the installed version, and whether it is enabled, except the
/// parts the command gives.
pub fn install(
    ctx: &Ctx<'_>,
    prepared: Option<&Prepared>,
    changes: GrantChanges,
    enabled: Option<bool>,
    replace: bool,
) -> Result<Value> {
    let Some(p) = prepared else {
        return Err(Error::Internal(
            "plugin.install reached the worker without its compiled component".into(),
        ));
    };
    let stored = match replace {
        true => registry::get(ctx.conn, &p.descriptor.id)?,
        false => None,
    };
    let (base, was_enabled) = match stored {
        Some(s) => (s.grants(), s.enabled),
        None => (Grants::default(), true),
    };
    let grants = changes.onto(base)?;
    let enabled = enabled.unwrap_or(was_enabled);
    check_grants(p.descriptor.kind, &grants)?;
    if replace {
        check_replacement(ctx, &p.descriptor)?;
    }
    registry::install(ctx.conn, p, &grants, enabled, replace, ctx.now)?;
    if replace {
        // A sender adapter's new version must still send each channel the
        // settings deliver through it (read back as stored; refused, the
        // command's savepoint undoes the install).
        check_adapters(ctx.conn, &ctx.settings.doc).map_err(|e| {
            Error::Conflict(format!(
                "the new version cannot replace plugin {:?}: {e}; choose another delivery first",
                p.descriptor.id
            ))
        })?;
    }
    to_json(&summary(&p.descriptor, enabled, &p.sha256))
}

/// A replacement must keep every step type that a live automation uses,
/// as the automation saved it: branching or not (the canvas's YES and NO
/// paths hang from it), and taking the step's saved config (each call's
/// config is checked against the schema: a refused one fails every
/// contact's call).
fn check_replacement(ctx: &Ctx<'_>, new: &Descriptor) -> Result<()> {
    for u in uses(ctx, &new.id) {
        let (automation, step) = (&u.automation_id, &u.step_id);
        let step_type = &u.step_type;
        let Some(decl) = new.step_type(step_type) else {
            return Err(Error::Conflict(format!(
                "automation {automation} uses step type {step_type:?}, which the new version of plugin {:?} no longer declares",
                new.id
            )));
        };
        if decl.branches() != u.branches {
            return Err(Error::Conflict(format!(
                "automation {automation}, step {step}: step type {step_type:?} {} in the new version of plugin {:?}; change the automation first",
                if u.branches {
                    "no longer branches"
                } else {
                    "branches"
                },
                new.id
            )));
        }
        if let Err(e) = super::descriptor::validate_config(decl, &u.config) {
            return Err(Error::Conflict(format!(
                "automation {automation}, step {step}: the new version of plugin {:?} refuses its saved config ({e})",
                new.id
            )));
        }
    }
    Ok(())
}

/// `plugin.configure`: replaces the given parts of what the practice grants
/// (limits field by field).
pub fn configure(ctx: &Ctx<'_>, plugin_id: &str, changes: GrantChanges) -> Result<Value> {
    let stored = registry::get(ctx.conn, plugin_id)?
        .ok_or_else(|| Error::NotFound(format!("plugin {plugin_id:?}")))?;
    let next = changes.onto(stored.grants())?;
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
    if let Some(u) = uses(ctx, plugin_id).into_iter().next() {
        return Err(Error::Conflict(format!(
            "automation {} uses step type {:?} of plugin {plugin_id:?}: remove the step or delete the automation first",
            u.automation_id, u.step_type
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
fn uses(ctx: &Ctx<'_>, plugin_id: &str) -> Vec<Use> {
    let mut out = Vec::new();
    for entry in ctx.catalog.all() {
        for s in entry.current.def.all_steps() {
            if let StepKind::Custom {
                plugin_id: p,
                step_type,
                config,
                branches,
                ..
            } = &s.kind
                && p == plugin_id
            {
                out.push(Use {
                    automation_id: entry.id.clone(),
                    step_id: s.id.clone(),
                    step_type: step_type.clone(),
                    config: config.clone(),
                    branches: *branches,
                });
            }
        }
    }
    out
}

/// A custom step of a plugin in an automation's current version.
struct Use {
    automation_id: String,
    step_id: String,
    step_type: String,
    config: serde_json::Value,
    branches: bool,
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
            // Checked before they are looked up: an error quotes them.
            crate::model::contact::validate_id("plugin_id", plugin_id).map_err(|e| e.at(&here))?;
            crate::model::contact::validate_id("step_type", step_type).map_err(|e| e.at(&here))?;
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
        // A malformed id is refused without being quoted (it is input that
        // failed the rules: it may hold anything); a well-formed one is.
        if !super::descriptor::is_id(id, 3) {
            return Err(Error::invalid(format!(
                "{field}: not a plugin id (3 to 64 lowercase letters, digits and '-')"
            )));
        }
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::core::sim::Sim;

    /// A step plugin declaring one step type `score`.
    fn scorer(outcomes: &[&str], required: &[&str]) -> Descriptor {
        serde_json::from_value(json!({
            "id": "scorer", "name": "Scorer", "version": "1", "vendor": "V", "description": "d",
            "kind": "step", "contract": "1.0.0",
            "step_types": [{"id": "score", "display_name": "Score", "palette_group": "crm_actions",
                "icon": "fa-star", "description": "d", "outcomes": outcomes,
                "config_schema": {"type": "object", "properties": {"min": {"type": "integer"}, "list": {"type": "string"}},
                                  "required": required}}]
        }))
        .unwrap()
    }

    /// A custom step's plugin and step type ids are checked before they
    /// are looked up, so a bad one is refused without being quoted back.
    /// A sender adapter's id in settings that breaks the id rules is
    /// refused without being quoted; a well-formed unknown one is named.
    #[test]
    fn an_adapters_id_is_checked_before_it_is_quoted() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        crate::store::migrations::migrate(&conn).unwrap();
        let with = |id: &str| crate::settings::Settings {
            sms_delivery: crate::settings::SmsDelivery::Plugin {
                plugin_id: id.into(),
            },
            ..crate::settings::Settings::default()
        };
        for bad in ["Pat Quill +16175550101\n<b>", "+16175550101", "<script>"] {
            let text = check_adapters(&conn, &with(bad)).unwrap_err().to_string();
            assert!(
                text.contains("sms_delivery.plugin_id: not a plugin id"),
                "{text}"
            );
            assert!(
                !text.contains("Pat") && !text.contains("1617") && !text.contains('<'),
                "{text}"
            );
        }
        let err = check_adapters(&conn, &with("twilio-sms")).unwrap_err();
        assert!(
            err.to_string().contains("no plugin \"twilio-sms\""),
            "{err}"
        );
    }

    #[test]
    fn a_custom_steps_ids_are_checked_before_they_are_looked_up() {
        let mut s = Sim::new();
        let e = s
            .cmd(json!({"command": "automation.create", "definition": {"name": "Bad", "trigger": {"type": "contact_created"},
                "steps": [{"type": "custom", "plugin_id": "Pat Doe 555-0100", "step_type": "score", "config": {}}]}}))
            .unwrap_err();
        assert_eq!(e.code(), crate::ErrorCode::Invalid, "{e}");
        assert!(!e.to_string().contains("Pat Doe"), "{e}");
    }

    /// A replacement that changes how a live automation's custom step
    /// branches, or refuses its saved config, is refused; one that keeps
    /// both is taken.
    #[test]
    fn a_replacement_keeps_what_live_automations_saved() {
        let mut s = Sim::new();
        let installed = scorer(&["continue"], &[]);
        s.conn
            .execute(
                "INSERT INTO plugins (id, kind, descriptor, wasm, sha256, grants, limits, config, secrets, enabled, installed_at, updated_at)
                 VALUES ('scorer', 'step', ?1, x'00', 'sha', '[]', '{}', '{}', '{}', 1, 0, 0)",
                [serde_json::to_string(&installed).unwrap()],
            )
            .unwrap();
        s.automation(json!({"name": "Score", "trigger": {"type": "contact_created"},
            "steps": [{"id": "sc", "type": "custom", "plugin_id": "scorer", "step_type": "score", "config": {"min": 3}}]}));
        let check = |s: &mut Sim, d: Descriptor| s.in_tx(|ctx| check_replacement(ctx, &d));
        check(&mut s, scorer(&["continue", "failure"], &["min"])).unwrap();
        for (new, why) in [
            (scorer(&["branch"], &[]), "branches in the new version"),
            (scorer(&["continue"], &["list"]), "refuses its saved config"),
        ] {
            let e = check(&mut s, new).unwrap_err();
            assert_eq!(e.code(), crate::ErrorCode::Conflict, "{e}");
            assert!(
                e.to_string().contains("automation") && e.to_string().contains(why),
                "{e}"
            );
        }
    }

    /// A sender adapter declaring `channels`.
    fn sender(channels: &[&str]) -> Prepared {
        let descriptor = serde_json::from_value(json!({
            "id": "texter", "name": "Texter", "version": "1", "vendor": "V", "description": "d",
            "kind": "sender", "contract": "1.0.0", "channels": channels
        }))
        .unwrap();
        Prepared {
            descriptor,
            sha256: "sha".into(),
            wasm: std::sync::Arc::new(vec![0]),
        }
    }

    fn changes(v: serde_json::Value) -> GrantChanges {
        let limits = v
            .get("limits")
            .map(|l| serde_json::from_value(l.clone()).unwrap());
        GrantChanges {
            grants: v
                .get("grants")
                .map(|g| serde_json::from_value(g.clone()).unwrap()),
            limits,
            config: v
                .get("config")
                .map(|c| serde_json::from_value(c.clone()).unwrap()),
            secrets: v
                .get("secrets")
                .map(|c| serde_json::from_value(c.clone()).unwrap()),
        }
    }

    /// A replacement keeps what the practice granted the installed version
    /// (origins, limits field by field, settings, secrets) and whether it
    /// was enabled, except the parts the command gives; `plugin.configure`
    /// changes limits field by field too.
    #[test]
    fn a_replacement_keeps_what_the_practice_granted() {
        let mut s = Sim::new();
        let first = json!({"grants": ["https://api.example.com"], "limits": {"deadline_ms": 5000},
            "config": {"account": "a1"}, "secrets": {"api_key": "k"}});
        let p = sender(&["sms"]);
        s.in_tx(|ctx| install(ctx, Some(&p), changes(first), None, false))
            .unwrap();
        s.in_tx(|ctx| set_enabled(ctx, "texter", false)).unwrap();
        let new = json!({"limits": {"fuel": 20_000_000}});
        s.in_tx(|ctx| install(ctx, Some(&p), changes(new), None, true))
            .unwrap();
        let stored = registry::get(&s.conn, "texter").unwrap().unwrap();
        assert_eq!(stored.grants, ["https://api.example.com"]);
        assert_eq!(
            (stored.limits.deadline_ms, stored.limits.fuel),
            (5000, 20_000_000)
        );
        assert_eq!(stored.config["account"], "a1");
        assert_eq!(stored.secrets["api_key"], "k");
        assert!(!stored.enabled, "still disabled");
        let tighter = json!({"limits": {"fetches_per_call": 2}});
        s.in_tx(|ctx| configure(ctx, "texter", changes(tighter)))
            .unwrap();
        let stored = registry::get(&s.conn, "texter").unwrap().unwrap();
        assert_eq!(
            (stored.limits.deadline_ms, stored.limits.fetches_per_call),
            (5000, 2)
        );
    }

    /// A sender adapter that settings deliver a channel through cannot be
    /// replaced by a version that does not send it.
    #[test]
    fn a_replacement_still_sends_what_settings_deliver_through_it() {
        let mut s = Sim::new();
        s.in_tx(|ctx| {
            install(
                ctx,
                Some(&sender(&["sms"])),
                GrantChanges::default(),
                None,
                false,
            )
        })
        .unwrap();
        s.settings.doc.sms_delivery = crate::settings::SmsDelivery::Plugin {
            plugin_id: "texter".into(),
        };
        let e = s
            .in_tx(|ctx| {
                install(
                    ctx,
                    Some(&sender(&["email"])),
                    GrantChanges::default(),
                    None,
                    true,
                )
            })
            .unwrap_err();
        assert_eq!(e.code(), crate::ErrorCode::Conflict, "{e}");
        assert!(e.to_string().contains("does not send sms"), "{e}");
        let stored = registry::get(&s.conn, "texter").unwrap().unwrap();
        assert_eq!(
            stored.descriptor.channels,
            ["sms"],
            "the installed version stays"
        );
        s.in_tx(|ctx| {
            install(
                ctx,
                Some(&sender(&["sms", "email"])),
                GrantChanges::default(),
                None,
                true,
            )
        })
        .unwrap();
    }
}
