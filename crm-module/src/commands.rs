//! Commands the host UI sends (JSON in, JSON out): automations, static lists,
//! settings. Each runs inside the worker's transaction, within a savepoint: an
//! error changes nothing.

use std::collections::{HashMap, HashSet};

use rusqlite::{OptionalExtension, params};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::catalog::{self, Catalog};
use crate::core::{Ctx, dates, enrollment, lists, triggers};
use crate::error::{Error, Result};
use crate::model::automation::{AutomationDefinition, AutomationStatus, Reference, Trigger};
use crate::model::contact::validate_id;
use crate::settings::{Resolved, Settings};

/// A command, tagged by `command`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(tag = "command", deny_unknown_fields)]
pub enum Command {
    /// Creates an automation in Draft.
    #[serde(rename = "automation.create")]
    AutomationCreate {
        /// Optional id; generated when absent.
        #[serde(default)]
        automation_id: Option<String>,
        /// The definition.
        definition: AutomationDefinition,
        /// Staff member creating it (shown as Entered By).
        #[serde(default)]
        entered_by: Option<String>,
    },
    /// Saves a new version of an automation; in-flight contacts follow it.
    #[serde(rename = "automation.update")]
    AutomationUpdate {
        /// The automation.
        automation_id: String,
        /// The whole new definition.
        definition: AutomationDefinition,
        /// Staff member saving it.
        #[serde(default)]
        updated_by: Option<String>,
    },
    /// Turns an automation on (Draft or Inactive → Active).
    #[serde(rename = "automation.activate")]
    AutomationActivate {
        /// The automation.
        automation_id: String,
    },
    /// Pauses an automation (Active → Inactive).
    #[serde(rename = "automation.pause")]
    AutomationPause {
        /// The automation.
        automation_id: String,
    },
    /// Deletes an automation: active contacts exit; history stays for analytics.
    #[serde(rename = "automation.delete")]
    AutomationDelete {
        /// The automation.
        automation_id: String,
    },
    /// Creates a static list.
    #[serde(rename = "list.create")]
    ListCreate {
        /// Optional id; generated when absent.
        #[serde(default)]
        list_id: Option<String>,
        /// Name.
        name: String,
    },
    /// Renames a list.
    #[serde(rename = "list.rename")]
    ListRename {
        /// The list.
        list_id: String,
        /// New name.
        name: String,
    },
    /// Deletes a list (members leave it; the contacts stay).
    #[serde(rename = "list.delete")]
    ListDelete {
        /// The list.
        list_id: String,
    },
    /// Adds contacts to a static list.
    #[serde(rename = "list.add_contacts")]
    ListAddContacts {
        /// The list.
        list_id: String,
        /// Contacts (at most 10,000).
        contact_ids: Vec<String>,
        /// How they got there: `manual` (default) or `import`.
        #[serde(default)]
        source: Option<String>,
    },
    /// Removes contacts from a static list.
    #[serde(rename = "list.remove_contacts")]
    ListRemoveContacts {
        /// The list.
        list_id: String,
        /// Contacts.
        contact_ids: Vec<String>,
    },
    /// Saves a new email or SMS template (validated: unknown placeholders are refused).
    #[serde(rename = "template.create")]
    TemplateCreate {
        /// Optional id; generated when absent.
        #[serde(default)]
        template_id: Option<String>,
        /// The template.
        template: TemplateInput,
    },
    /// Replaces a template's content.
    #[serde(rename = "template.update")]
    TemplateUpdate {
        /// The template.
        template_id: String,
        /// The new content.
        template: TemplateInput,
    },
    /// Deletes a template. Refused (conflict) while an automation's steps
    /// use it: take it out of them first.
    #[serde(rename = "template.delete")]
    TemplateDelete {
        /// The template.
        template_id: String,
    },
    /// Sends a test of a saved template to an address (email) or number
    /// (SMS), rendered with a contact's data or sample data, subject prefixed
    /// `"[Test] "`. Not a real send: no consent check, no analytics (no event
    /// rows), no tracking; the message effect has category `test` and
    /// purpose `test_send`.
    #[serde(rename = "template.test_send")]
    TemplateTestSend {
        /// The template.
        template_id: String,
        /// Email address (email template) or phone number, E.164 or national
        /// in `sms.default_region` (SMS template).
        to: String,
        /// Render with this contact's data; sample data when absent.
        #[serde(default)]
        contact_id: Option<String>,
    },
    /// Returns the settings, without the SMTP password (`null`).
    #[serde(rename = "settings.get")]
    SettingsGet {},
    /// Replaces the settings (validated as a whole). An SMTP password left
    /// out keeps the stored one when the relay host and username are
    /// unchanged, so the document `settings.get` returns saves back as is.
    #[serde(rename = "settings.update")]
    SettingsUpdate {
        /// The new settings.
        settings: Box<Settings>,
    },
    /// Installs a WebAssembly plugin (a step plugin or a sender adapter),
    /// or upgrades an installed one with `replace`. The component is
    /// compiled, its contract version checked and its declaration validated
    /// before anything is stored.
    #[serde(rename = "plugin.install")]
    PluginInstall {
        /// Path of the `.wasm` component on the host's disk.
        #[serde(default)]
        path: Option<String>,
        /// Or the component itself, base64.
        #[serde(default)]
        wasm_base64: Option<String>,
        /// Origins a sender adapter may fetch (`https://api.provider.example`).
        /// Left out: none at a first install, the installed version's on a
        /// replacement (as for every part of what the practice grants).
        #[serde(default)]
        grants: Option<Vec<String>>,
        /// Limits of each call: the fields given; the others are the
        /// defaults at a first install, the installed version's on a
        /// replacement.
        #[serde(default)]
        limits: Option<crate::plugins::limits::LimitChanges>,
        /// Plain settings the plugin reads (`config.get`).
        #[serde(default)]
        config: Option<std::collections::BTreeMap<String, String>>,
        /// Secrets the plugin reads (`config.secret`); never shown back.
        #[serde(default)]
        secrets: Option<std::collections::BTreeMap<String, String>>,
        /// Enabled once installed. Left out: true at a first install; on a
        /// replacement, as the installed version was.
        #[serde(default)]
        enabled: Option<bool>,
        /// Upgrade the installed plugin with the same id, keeping what the
        /// practice granted it except the parts given here.
        #[serde(default)]
        replace: bool,
        /// The compiled and described component (filled by the module).
        #[serde(skip)]
        #[schemars(skip)]
        prepared: Option<Box<crate::plugins::Prepared>>,
    },
    /// Replaces what the practice grants an installed plugin; fields left
    /// out keep their stored value.
    #[serde(rename = "plugin.configure")]
    PluginConfigure {
        /// The plugin.
        plugin_id: String,
        /// Granted origins.
        #[serde(default)]
        grants: Option<Vec<String>>,
        /// Limits: the fields given; the others keep their stored value.
        #[serde(default)]
        limits: Option<crate::plugins::limits::LimitChanges>,
        /// Plain settings.
        #[serde(default)]
        config: Option<std::collections::BTreeMap<String, String>>,
        /// Secrets.
        #[serde(default)]
        secrets: Option<std::collections::BTreeMap<String, String>>,
    },
    /// Enables a plugin.
    #[serde(rename = "plugin.enable")]
    PluginEnable {
        /// The plugin.
        plugin_id: String,
    },
    /// Disables a plugin: its calls wait (retried with backoff).
    #[serde(rename = "plugin.disable")]
    PluginDisable {
        /// The plugin.
        plugin_id: String,
    },
    /// Removes a plugin no automation or setting uses.
    #[serde(rename = "plugin.remove")]
    PluginRemove {
        /// The plugin.
        plugin_id: String,
    },
    /// Lists the installed plugins with their figures (the `plugins` view).
    #[serde(rename = "plugin.list")]
    PluginList {},
}

impl Command {
    /// Parses a command from JSON text. An error names the field at fault
    /// by its path, inside the document a command carries too
    /// (`definition.steps[1]: unknown variant, expected one of minutes,
    /// hours, days, weeks`): serde reads a command's fields only after its
    /// `command` tag, and loses their place.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] for text that is not such a command.
    pub fn parse(text: &str) -> Result<Command> {
        Command::from_value(crate::error::parse_json(text)?)
    }

    /// [`Command::parse`] for a parsed JSON value.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] for a value that is not such a command.
    pub fn from_value(value: Value) -> Result<Command> {
        match crate::error::part_from_value("", &value) {
            Ok(command) => Ok(command),
            Err(e) => Err(Command::find_error(&value).unwrap_or(e)),
        }
    }

    /// The error inside the document `value` carries (a definition, a
    /// template, settings, plugin limits), with its path; `None` when that
    /// part reads well (the error is the command's own).
    fn find_error(value: &Value) -> Option<Error> {
        use crate::error::part_from_value;
        let part = |field: &str| value.get(field).filter(|v| !v.is_null());
        match value.get("command")?.as_str()? {
            "automation.create" | "automation.update" => {
                let definition = part("definition")?;
                part_from_value::<AutomationDefinition>("definition", definition)
                    .err()
                    .map(|e| name_the_step(definition, e))
            }
            "template.create" | "template.update" => {
                part_from_value::<TemplateInput>("template", part("template")?).err()
            }
            "settings.update" => part_from_value::<Settings>("settings", part("settings")?).err(),
            "plugin.install" | "plugin.configure" => {
                part_from_value::<crate::plugins::limits::LimitChanges>("limits", part("limits")?)
                    .err()
            }
            _ => None,
        }
    }

    /// True when the command changes automations (the catalog must reload).
    pub fn touches_catalog(&self) -> bool {
        matches!(
            self,
            Command::AutomationCreate { .. }
                | Command::AutomationUpdate { .. }
                | Command::AutomationActivate { .. }
                | Command::AutomationPause { .. }
                | Command::AutomationDelete { .. }
        )
    }

    /// Checks the syntax of every id the command names (1 to 128 bytes, no
    /// spaces, control characters or invisible formatting) before anything is
    /// looked up, so that a malformed id is refused as invalid input and is
    /// never quoted back in a "not found" or "conflict" message (which hosts
    /// log).
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] naming the field at fault.
    pub fn validate_ids(&self) -> Result<()> {
        let (field, id) = match self {
            Command::AutomationCreate { automation_id, .. } => {
                ("automation_id", automation_id.as_deref())
            }
            Command::AutomationUpdate { automation_id, .. }
            | Command::AutomationActivate { automation_id }
            | Command::AutomationPause { automation_id }
            | Command::AutomationDelete { automation_id } => {
                ("automation_id", Some(automation_id.as_str()))
            }
            Command::ListCreate { list_id, .. } => ("list_id", list_id.as_deref()),
            Command::ListRename { list_id, .. }
            | Command::ListDelete { list_id }
            | Command::ListAddContacts { list_id, .. }
            | Command::ListRemoveContacts { list_id, .. } => ("list_id", Some(list_id.as_str())),
            Command::TemplateCreate { template_id, .. } => ("template_id", template_id.as_deref()),
            Command::TemplateUpdate { template_id, .. }
            | Command::TemplateDelete { template_id } => {
                ("template_id", Some(template_id.as_str()))
            }
            Command::TemplateTestSend {
                template_id,
                contact_id,
                ..
            } => {
                if let Some(c) = contact_id {
                    validate_id("contact_id", c)?;
                }
                ("template_id", Some(template_id.as_str()))
            }
            Command::PluginConfigure { plugin_id, .. }
            | Command::PluginEnable { plugin_id }
            | Command::PluginDisable { plugin_id }
            | Command::PluginRemove { plugin_id } => ("plugin_id", Some(plugin_id.as_str())),
            Command::SettingsGet {}
            | Command::SettingsUpdate { .. }
            | Command::PluginInstall { .. }
            | Command::PluginList {} => ("", None),
        };
        match id {
            Some(id) => validate_id(field, id),
            None => Ok(()),
        }
    }

    /// True when the command changes installed plugins (the plugin host must reload).
    pub fn touches_plugins(&self) -> bool {
        matches!(
            self,
            Command::PluginInstall { .. }
                | Command::PluginConfigure { .. }
                | Command::PluginEnable { .. }
                | Command::PluginDisable { .. }
                | Command::PluginRemove { .. }
        )
    }
}

/// A saved email or SMS template.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateInput {
    /// `email` or `sms`.
    pub channel: String,
    /// Name in the library.
    pub name: String,
    /// Email subject.
    #[serde(default)]
    pub subject: String,
    /// Email preheader.
    #[serde(default)]
    pub preheader: String,
    /// Email HTML body.
    #[serde(default)]
    pub html_body: String,
    /// Email plain-text part (derived from the HTML when absent).
    #[serde(default)]
    pub text_body: Option<String>,
    /// SMS text.
    #[serde(default)]
    pub message: String,
}

/// Result of a template command.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct TemplateResult {
    /// The template.
    pub template_id: String,
}

/// Result of `template.test_send`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct TestSendResult {
    /// The template.
    pub template_id: String,
    /// The idempotency key of the queued test message.
    pub key: String,
    /// `email` or `sms`.
    pub channel: String,
    /// The normalized recipient.
    pub to: String,
}

/// The placeholders of the custom properties seen on contacts, which
/// templates may use ([`crate::model::contact::placeholder_name`]).
pub fn custom_properties(conn: &rusqlite::Connection) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached("SELECT key FROM custom_properties ORDER BY key")?;
    let mut names = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .map(|k| k.map(|k| crate::model::contact::placeholder_name(&k).into_owned()))
        .collect::<rusqlite::Result<Vec<String>>>()?;
    names.sort();
    names.dedup();
    Ok(names)
}

/// Validates every template field; the error names the field, the
/// placeholder and its line and column.
pub fn validate_template_fields(fields: &[(&str, &str)], custom: &[String]) -> Result<()> {
    for (field, source) in fields {
        crate::messaging::template::validate(field, source, custom)
            .map_err(|e| Error::invalid(e.to_string()))?;
    }
    Ok(())
}

fn check_template(t: &TemplateInput, custom: &[String]) -> Result<()> {
    let name = t.name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(Error::invalid("template.name: must be 1 to 200 characters"));
    }
    match t.channel.as_str() {
        "email" => {
            if t.subject.trim().is_empty() || t.html_body.trim().is_empty() {
                return Err(Error::invalid(
                    "template: an email template needs a subject and an html_body",
                ));
            }
            if t.subject.chars().count() > 500
                || t.preheader.chars().count() > 500
                || t.html_body.len() > 512 * 1024
                || t.text_body.as_ref().is_some_and(|b| b.len() > 512 * 1024)
            {
                return Err(Error::TooLarge(
                    "template: subject and preheader up to 500 characters, html_body and text_body up to 512 KiB each"
                        .into(),
                ));
            }
            let mut fields = vec![
                ("subject", t.subject.as_str()),
                ("preheader", t.preheader.as_str()),
                ("html_body", t.html_body.as_str()),
            ];
            if let Some(text) = &t.text_body {
                fields.push(("text_body", text.as_str()));
            }
            validate_template_fields(&fields, custom)
        }
        "sms" => {
            if t.message.trim().is_empty() || t.message.chars().count() > 1600 {
                return Err(Error::invalid("template.message: 1 to 1600 characters"));
            }
            validate_template_fields(&[("message", t.message.as_str())], custom)
        }
        _ => Err(Error::invalid("template.channel: email or sms")),
    }
}

/// Validates the inline content and template references of an automation's message steps.
fn check_message_steps(ctx: &Ctx<'_>, def: &AutomationDefinition) -> Result<()> {
    let custom = custom_properties(ctx.conn)?;
    let flow = crate::model::automation::Flow::new(def);
    for id in flow.ordered_ids() {
        let Some(step) = flow.step(&id) else { continue };
        let here = format!("definition: step {id}");
        let (template_id, channel, fields): (&Option<String>, &str, Vec<(&str, &str)>) =
            match &step.kind {
                crate::model::automation::StepKind::SendEmail {
                    template_id,
                    subject,
                    preheader,
                    body,
                    ..
                } => (
                    template_id,
                    "email",
                    vec![
                        ("subject", subject),
                        ("preheader", preheader),
                        ("body", body),
                    ],
                ),
                crate::model::automation::StepKind::SendSms {
                    template_id,
                    message,
                    ..
                } => (template_id, "sms", vec![("message", message)]),
                _ => continue,
            };
        let fallback: Vec<(&str, &str)> = match &step.kind {
            crate::model::automation::StepKind::SendEmail {
                fallback: Some(f), ..
            } => vec![("fallback.message", &f.message)],
            crate::model::automation::StepKind::SendSms {
                fallback: Some(f), ..
            } => vec![("fallback.subject", &f.subject), ("fallback.body", &f.body)],
            _ => vec![],
        };
        validate_template_fields(&fallback, &custom).map_err(|e| e.at(&here))?;
        if let Some(t) = template_id {
            check_template_channel(ctx, &here, t, channel)?;
        } else {
            validate_template_fields(&fields, &custom).map_err(|e| e.at(&here))?;
        }
    }
    Ok(())
}

/// A step's own sender, checked as the module's is in settings: its From
/// and Reply-to addresses valid (a blank one is no override), its From
/// name one line of at most 100 characters, its SMS sender number stored
/// in E.164 (read in the practice's default region). Before, a bad address
/// saved and failed every contact's email at composition, and a number was
/// handed to the host as typed.
fn normalize_senders(
    steps: &mut [crate::model::automation::Step],
    settings: &crate::settings::Resolved,
) -> Result<()> {
    use crate::model::automation::StepKind;
    let blank = |v: &mut Option<String>| {
        if crate::settings::is_blank(v) {
            *v = None;
        }
    };
    for step in steps {
        let here = format!("definition: step {}", step.id);
        match &mut step.kind {
            StepKind::SendEmail {
                sender: Some(sender),
                ..
            } => {
                blank(&mut sender.from_name);
                blank(&mut sender.from_address);
                blank(&mut sender.reply_to);
                for (field, value) in [
                    ("from_address", &mut sender.from_address),
                    ("reply_to", &mut sender.reply_to),
                ] {
                    if let Some(v) = value {
                        crate::settings::check_email(v)
                            .map_err(|m| Error::invalid(format!("{here}: sender.{field}: {m}")))?;
                        *v = v.trim().to_string();
                    }
                }
                if let Some(name) = &sender.from_name {
                    crate::settings::check_line(name, crate::settings::MAX_FROM_NAME)
                        .map_err(|m| Error::invalid(format!("{here}: sender.from_name: {m}")))?;
                }
            }
            StepKind::SendSms { sender_number, .. } => {
                blank(sender_number);
                if let Some(n) = sender_number {
                    *n = crate::messaging::sms::normalize_e164(n, &settings.doc.sms.default_region)
                        .map_err(|m| Error::invalid(format!("{here}: sender_number: {m}")))?;
                }
            }
            _ => {}
        }
        if let Some((yes, no)) = step.kind.paths_mut() {
            normalize_senders(yes, settings)?;
            normalize_senders(no, settings)?;
        }
    }
    Ok(())
}

/// A lead source as the builder offers it: `Walk-in` or `walk in` for a
/// source the builder lists is stored as its option (`walk_in`), so that
/// the select shows it; a host-defined one is kept as written.
fn builder_source(source: &mut String) {
    let folded = crate::model::contact::fold_source(source);
    if crate::model::contact::LEAD_SOURCES.contains(&folded.as_str()) {
        *source = folded;
    }
}

/// The values a trigger waits for, stored as the builder offers them and
/// the record stores them: a date (`1985-3-7` as `1985-03-07`, or it would
/// never match), a status in lowercase, a lead source as its option.
fn normalize_trigger(trigger: &mut Trigger) -> Result<()> {
    use crate::model::contact::{PropertyType, normalize_property, property_type};
    match trigger {
        Trigger::ContactCreated {
            source: Some(source),
        } => builder_source(source),
        Trigger::PropertyChanged {
            property,
            new_value: Some(value),
        } => match (property.as_str(), &mut *value) {
            ("lead_source", Value::String(source)) => builder_source(source),
            (p, _)
                if matches!(
                    property_type(p),
                    Some(PropertyType::Date | PropertyType::Choice(_))
                ) =>
            {
                *value = normalize_property(p, value.clone())
                    .map_err(|e| e.at("definition.trigger.new_value"))?;
            }
            _ => {}
        },
        _ => {}
    }
    Ok(())
}

/// A Set property step's value, stored as the builder shows it: a lead
/// source as its option, a tag change with both its lists (`add`,
/// `remove`), so that saving the builder's panel back changes nothing.
fn normalize_set_values(steps: &mut [crate::model::automation::Step]) {
    use crate::model::automation::{SettableProperty, StepKind};
    for step in steps {
        match &mut step.kind {
            StepKind::SetProperty {
                property: SettableProperty::LeadSource,
                value: Value::String(source),
            } => builder_source(source),
            // A status or subscription in the case the builder offers it.
            StepKind::SetProperty {
                property:
                    property @ (SettableProperty::Status
                    | SettableProperty::SmsSubscription
                    | SettableProperty::EmailSubscription),
                value: value @ Value::String(_),
            } => {
                if let Ok(canonical) =
                    crate::model::contact::normalize_property(property.property(), value.clone())
                {
                    *value = canonical;
                }
            }
            StepKind::SetProperty {
                property: SettableProperty::Tags,
                value: Value::Object(change),
            } => {
                for list in ["add", "remove"] {
                    change
                        .entry(list)
                        .or_insert_with(|| Value::Array(Vec::new()));
                }
            }
            _ => {}
        }
        if let Some((yes, no)) = step.kind.paths_mut() {
            normalize_set_values(yes);
            normalize_set_values(no);
        }
    }
}

/// The message an engagement trigger watches is a saved template of the
/// trigger's channel: an SMS template under Email engagement (or the
/// reverse) would save and never fire.
fn check_trigger_template(ctx: &Ctx<'_>, def: &AutomationDefinition) -> Result<()> {
    match &def.trigger {
        Trigger::EmailEngagement {
            email_id: Some(t), ..
        } => check_template_channel(ctx, "definition: trigger", t, "email"),
        Trigger::SmsReply { sms_id: Some(t) } => {
            check_template_channel(ctx, "definition: trigger", t, "sms")
        }
        _ => Ok(()),
    }
}

/// `id` is a saved template of `channel`, not deleted.
fn check_template_channel(ctx: &Ctx<'_>, here: &str, id: &str, channel: &str) -> Result<()> {
    let ok: bool = ctx.conn.prepare_cached(
        "SELECT EXISTS(SELECT 1 FROM templates WHERE id = ?1 AND channel = ?2 AND deleted_at IS NULL)",
    )?
    .query_row(params![id, channel], |r| r.get(0))?;
    if ok {
        Ok(())
    } else {
        Err(Error::not_found(format!("{here}: {channel} template {id}")))
    }
}

/// Result of an automation command.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct AutomationResult {
    /// The automation.
    pub automation_id: String,
    /// Its current version.
    pub version: i64,
    /// Its status (for `automation.delete`, the status it had).
    pub status: AutomationStatus,
    /// Enrollments moved to the new version (update) or exited (delete).
    pub enrollments_affected: usize,
    /// True when the automation is deleted (`automation.delete`): it has
    /// left the views, and its id cannot be used again.
    pub deleted: bool,
}

/// Result of a list command.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ListResult {
    /// The list.
    pub list_id: String,
    /// Contacts whose membership changed.
    pub changed: usize,
}

/// Most contacts in one list command.
pub const MAX_LIST_BATCH: usize = 10_000;

fn to_json<T: Serialize>(v: T) -> Result<Value> {
    serde_json::to_value(v).map_err(|e| Error::Internal(e.to_string()))
}

struct Row {
    status: AutomationStatus,
    version: i64,
    deleted: bool,
}

fn automation_row(ctx: &Ctx<'_>, id: &str) -> Result<Row> {
    let row: Option<(String, i64, Option<i64>)> = ctx
        .conn
        .prepare_cached(
            "SELECT status, current_version, deleted_at FROM automations WHERE id = ?1",
        )?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let (status, version, deleted) =
        row.ok_or_else(|| Error::not_found(format!("automation {id}")))?;
    if deleted.is_some() {
        return Err(Error::not_found(format!("automation {id} (deleted)")));
    }
    let status =
        AutomationStatus::parse(&status).ok_or_else(|| Error::Internal("bad status".into()))?;
    Ok(Row {
        status,
        version,
        deleted: deleted.is_some(),
    })
}

/// The answer to a command that changed nothing of automation `id`.
fn unchanged(id: String, row: &Row) -> Result<(Value, Option<Catalog>)> {
    let out = AutomationResult {
        automation_id: id,
        version: row.version,
        status: row.status,
        enrollments_affected: 0,
        deleted: false,
    };
    Ok((to_json(out)?, None))
}

fn staff(who: &Option<String>) -> Result<String> {
    match who {
        Some(w) if w.trim().is_empty() || w.chars().count() > 200 => {
            Err(Error::invalid("entered_by/updated_by: 1 to 200 characters"))
        }
        Some(w) => Ok(w.trim().to_string()),
        None => Ok("host".into()),
    }
}

/// The id of a new automation, list or template: the one the host gave, if
/// no row of `table` has ever had it, else the next free `<prefix><n>`. A
/// deleted row keeps its id for good (its history still names it), so a
/// given id that a deleted row had is refused as well, and said so.
fn new_id(
    ctx: &Ctx<'_>,
    given: Option<String>,
    table: &str,
    noun: &str,
    prefix: &str,
) -> Result<String> {
    let Some(id) = given else {
        return next_id(ctx, table, prefix);
    };
    let deleted: Option<bool> = ctx
        .conn
        .query_row(
            &format!("SELECT deleted_at IS NOT NULL FROM {table} WHERE id = ?1"),
            [&id],
            |r| r.get(0),
        )
        .optional()?;
    match deleted {
        None => Ok(id),
        Some(false) => Err(Error::Conflict(format!("{noun} {id} already exists"))),
        Some(true) => Err(Error::Conflict(format!(
            "{noun} {id} was deleted, and a deleted {noun}'s id is not used again: its history keeps it"
        ))),
    }
}

fn next_id(ctx: &Ctx<'_>, table: &str, prefix: &str) -> Result<String> {
    let n: i64 = ctx
        .conn
        .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))?;
    let mut k = n + 1;
    loop {
        let id = format!("{prefix}{k}");
        let taken: bool = ctx.conn.query_row(
            &format!("SELECT EXISTS(SELECT 1 FROM {table} WHERE id = ?1)"),
            [&id],
            |r| r.get(0),
        )?;
        if !taken {
            return Ok(id);
        }
        k += 1;
    }
}

/// Validates a definition and gives its new steps ids; for a new version of
/// `saved` (an automation's id), none that an earlier version used.
fn prepare_definition(
    ctx: &Ctx<'_>,
    mut def: AutomationDefinition,
    saved: Option<&str>,
) -> Result<AutomationDefinition> {
    crate::plugins::admin::check_custom_steps(ctx.conn, &mut def.steps)?;
    let earlier = match saved {
        Some(id) => earlier_steps(ctx, id)?,
        None => HashMap::new(),
    };
    let retired: HashSet<String> = earlier.keys().cloned().collect();
    def.validate_and_assign_ids_avoiding(&retired)
        .map_err(|e| e.at("definition"))?;
    for step in def.all_steps() {
        let is = step.kind.identity();
        if let Some(was) = earlier.get(&step.id).filter(|was| **was != is) {
            return Err(Error::invalid(format!(
                "definition.steps: step id {} was a {was} step in an earlier version; a {is} step needs an id of its own (leave it out to get one)",
                step.id
            )));
        }
    }
    check_message_steps(ctx, &def)?;
    normalize_senders(&mut def.steps, ctx.settings)?;
    normalize_trigger(&mut def.trigger)?;
    normalize_set_values(&mut def.steps);
    check_trigger_template(ctx, &def)?;
    check_references(ctx, &def)?;
    if def.run_window.is_none() {
        def.run_window = Some(ctx.settings.doc.default_run_window.clone());
    }
    Ok(def)
}

/// The lists and templates a definition names exist (the templates,
/// already checked with their channels by [`check_message_steps`] and
/// [`check_trigger_template`], are looked up once more here).
fn check_references(ctx: &Ctx<'_>, def: &AutomationDefinition) -> Result<()> {
    for (here, reference) in def.references() {
        let (what, id) = reference.parts();
        let sql = match reference {
            Reference::List(_) => {
                "SELECT EXISTS(SELECT 1 FROM lists WHERE id = ?1 AND deleted_at IS NULL)"
            }
            Reference::Template(_) => {
                "SELECT EXISTS(SELECT 1 FROM templates WHERE id = ?1 AND deleted_at IS NULL)"
            }
        };
        let exists: bool = ctx
            .conn
            .prepare_cached(sql)?
            .query_row([id], |r| r.get(0))?;
        if !exists {
            return Err(Error::not_found(format!("definition: {here}: {what} {id}")));
        }
    }
    Ok(())
}

/// Refuses to delete a list or template an automation names: its trigger
/// would never fire again, its steps would fail for every contact.
fn check_unused(ctx: &Ctx<'_>, target: &Reference) -> Result<()> {
    let users: Vec<&str> = ctx
        .catalog
        .all()
        .filter(|a| a.current.def.references().iter().any(|(_, r)| r == target))
        .map(|a| a.id.as_str())
        .collect();
    if users.is_empty() {
        return Ok(());
    }
    let (what, id) = target.parts();
    Err(Error::Conflict(format!(
        "{what} {id} is used by automation {}: take it out of them first",
        users.join(", ")
    )))
}

/// The step ids of every saved version of an automation.
/// Every step id an automation's versions used, with what the step was
/// ([`crate::model::automation::StepKind::identity`], as the latest
/// version using the id had it). A step's id keys its effects and its per-step
/// figures, so an id names one step for good: a new step never gets one of
/// these ids, and a step given one explicitly must be of the same kind
/// (otherwise it would inherit the old step's figures, and an enrollment's
/// earlier effect under that key would swallow its own).
fn earlier_steps(ctx: &Ctx<'_>, automation_id: &str) -> Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    for v in catalog::all_versions(ctx.conn, automation_id)? {
        for step in v.def.all_steps() {
            // The latest version's wins (the step as it stands).
            out.insert(step.id.clone(), step.kind.identity());
        }
    }
    Ok(out)
}

fn definition_text(def: &AutomationDefinition) -> Result<String> {
    serde_json::to_string(def).map_err(|e| Error::Internal(e.to_string()))
}

/// After a change of the practice's time zone or SMS sending hours: what
/// waits for a local time decides again. Enrollments held for a run window
/// or the sending hours run at once (a closed window holds them again, in
/// the new zone), SMS held at hand-over for the sending hours are screened
/// again, and date-based evaluations move to their window's start in the
/// new zone. A delay keeps the wake-up it counted.
fn reschedule(ctx: &Ctx<'_>, new: &Resolved) -> Result<()> {
    ctx.conn.execute(
        "UPDATE enrollments SET wake_at = ?1
          WHERE state = 'active' AND step_phase = 'ready' AND wake_at > ?1",
        [ctx.now],
    )?;
    crate::messaging::handover::release_sending_hours(ctx.conn, ctx.now)?;
    let due: Vec<(String, i64)> = ctx
        .conn
        .prepare(
            "SELECT id, current_version FROM automations
              WHERE status = 'active' AND deleted_at IS NULL AND next_eval_at IS NOT NULL",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (id, version) in due {
        let def = catalog::load_version(ctx.conn, &id, version)?.def;
        schedule_evaluation(ctx, new, &id, &def, true)?;
    }
    Ok(())
}

/// Schedules (or clears) the next date-based evaluation of an active
/// automation, in the time zone of `settings` (the stored ones, or new ones
/// being saved).
fn schedule_evaluation(
    ctx: &Ctx<'_>,
    settings: &Resolved,
    id: &str,
    def: &AutomationDefinition,
    active: bool,
) -> Result<()> {
    let next = if active && def.trigger.is_date_based() {
        dates::next_evaluation(def, settings, ctx.now)
    } else {
        None
    };
    ctx.conn.execute(
        "UPDATE automations SET next_eval_at = ?2 WHERE id = ?1",
        params![id, next],
    )?;
    Ok(())
}

/// `e`, an error at `definition.steps[1]` (or deeper, `steps[0].yes[2]`),
/// with the id of the step it is in: serde reads a step's fields after its
/// `type`, so the path ends at the step, and the id is how staff know it.
fn name_the_step(definition: &Value, e: Error) -> Error {
    let Error::Invalid(message) = &e else {
        return e;
    };
    let Some((path, rest)) = message.split_once(": ") else {
        return e;
    };
    let mut node = definition;
    for segment in path.trim_start_matches("definition").split('.') {
        let mut parts = segment.split('[');
        if let Some(key) = parts.next().filter(|k| !k.is_empty()) {
            node = &node[key];
        }
        for index in parts {
            match index.trim_end_matches(']').parse::<usize>() {
                Ok(i) => node = &node[i],
                Err(_) => return e,
            }
        }
    }
    match node.get("id").and_then(Value::as_str) {
        Some(id) if path.ends_with(']') && !id.is_empty() => Error::Invalid(format!(
            "{path} (step {}): {rest}",
            crate::error::shown_key(id)
        )),
        _ => e,
    }
}

/// Runs a command. `catalog_after` reloads the catalog within the transaction
/// so that later work in the same transaction sees the change.
pub fn execute(ctx: &mut Ctx<'_>, cmd: Command) -> Result<(Value, Option<Catalog>)> {
    cmd.validate_ids()?;
    match cmd {
        Command::AutomationCreate {
            automation_id,
            definition,
            entered_by,
        } => {
            let id = new_id(ctx, automation_id, "automations", "automation", "a")?;
            let def = prepare_definition(ctx, definition, None)?;
            let by = staff(&entered_by)?;
            ctx.conn.execute(
                "INSERT INTO automations (id, name, status, current_version, entered_by, updated_by, created_at, updated_at)
                 VALUES (?1, ?2, 'draft', 1, ?3, ?3, ?4, ?4)",
                params![id, def.name, by, ctx.now],
            )?;
            ctx.conn.execute(
                "INSERT INTO automation_versions (automation_id, version, definition, created_at) VALUES (?1, 1, ?2, ?3)",
                params![id, definition_text(&def)?, ctx.now],
            )?;
            let out = AutomationResult {
                automation_id: id,
                version: 1,
                status: AutomationStatus::Draft,
                enrollments_affected: 0,
                deleted: false,
            };
            Ok((to_json(out)?, Some(Catalog::load(ctx.conn)?)))
        }
        Command::AutomationUpdate {
            automation_id: id,
            definition,
            updated_by,
        } => {
            let row = automation_row(ctx, &id)?;
            let def = prepare_definition(ctx, definition, Some(&id))?;
            let by = staff(&updated_by)?;
            let text = definition_text(&def)?;
            let old = catalog::load_version(ctx.conn, &id, row.version)?;
            // The stored definition as saving normalizes today: one saved
            // by an earlier version (a `Walk-in` source, a tag change with
            // one list) is the same automation.
            let mut stored = old.def.clone();
            normalize_set_values(&mut stored.steps);
            if normalize_trigger(&mut stored.trigger).is_ok() && definition_text(&stored)? == text {
                // Nothing changed (a builder saving as staff leave it): no
                // version, and Last Updated and Entered By stay.
                return unchanged(id, &row);
            }
            let version = row.version + 1;
            ctx.conn.execute(
                "INSERT INTO automation_versions (automation_id, version, definition, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![id, version, text, ctx.now],
            )?;
            ctx.conn.execute(
                "UPDATE automations SET name = ?2, current_version = ?3, updated_by = ?4, updated_at = ?5 WHERE id = ?1",
                params![id, def.name, version, by, ctx.now],
            )?;
            schedule_evaluation(
                ctx,
                ctx.settings,
                &id,
                &def,
                row.status == AutomationStatus::Active,
            )?;
            let new = catalog::load_version(ctx.conn, &id, version)?;
            if old.def.goal != new.def.goal {
                crate::core::goals::rebase(ctx.conn, &id, new.def.goal)?;
            }
            if old.def.trigger != new.def.trigger {
                // Days covered under another trigger are not a Birthday's.
                ctx.conn.execute(
                    "UPDATE automations SET evaluated_through = NULL WHERE id = ?1",
                    [&id],
                )?;
            }
            let cat = Catalog::load(ctx.conn)?;
            let moved = {
                let mut sub = Ctx::new(ctx.conn, ctx.now, &cat, ctx.settings, ctx.install_id);
                sub.rescreen = ctx.rescreen;
                let moved = enrollment::migrate(&mut sub, &id, &old, &new)?;
                if new.def.leaves_on_goal() {
                    // Goal met is on (again, or for a goal some contacts
                    // have reached already): they leave now.
                    crate::core::goals::exit_reached(&mut sub, &id)?;
                }
                // So do those who opted out or replied, for the toggles
                // turned on.
                crate::core::triggers::exit_already_left(
                    &mut sub,
                    &id,
                    &old.def.unenrollment,
                    &new.def.unenrollment,
                )?;
                ctx.effects.extend(sub.take_effects());
                moved
            };
            let out = AutomationResult {
                automation_id: id,
                version,
                status: row.status,
                enrollments_affected: moved,
                deleted: false,
            };
            Ok((to_json(out)?, Some(cat)))
        }
        Command::AutomationActivate { automation_id: id } => {
            let row = automation_row(ctx, &id)?;
            if row.status != AutomationStatus::Active {
                ctx.conn.execute(
                    "UPDATE automations SET status = 'active', activated_at = ?2, updated_at = ?2,
                         evaluated_through = NULL WHERE id = ?1",
                    params![id, ctx.now],
                )?;
                let v = catalog::load_version(ctx.conn, &id, row.version)?;
                schedule_evaluation(ctx, ctx.settings, &id, &v.def, true)?;
                let cat = Catalog::load(ctx.conn)?;
                let mut sub = Ctx::new(ctx.conn, ctx.now, &cat, ctx.settings, ctx.install_id);
                sub.rescreen = ctx.rescreen;
                enrollment::resume(&sub, &id)?;
                crate::messaging::handover::release_paused(ctx.conn, &id, ctx.now)?;
                let out = AutomationResult {
                    automation_id: id,
                    version: row.version,
                    status: AutomationStatus::Active,
                    enrollments_affected: 0,
                    deleted: false,
                };
                return Ok((to_json(out)?, Some(cat)));
            }
            // Active already.
            unchanged(id, &row)
        }
        Command::AutomationPause { automation_id: id } => {
            let row = automation_row(ctx, &id)?;
            if row.status == AutomationStatus::Draft {
                return Err(Error::Conflict(format!(
                    "automation {id} is a draft: activate it first"
                )));
            }
            if row.status == AutomationStatus::Inactive {
                // Paused already: nothing changes, Last Updated included.
                return unchanged(id, &row);
            }
            ctx.conn.execute(
                "UPDATE automations SET status = 'inactive', updated_at = ?2 WHERE id = ?1",
                params![id, ctx.now],
            )?;
            enrollment::hold(ctx.conn, &id)?;
            // Its messages already screened for hand-over hold too.
            ctx.rescreen_everyone();
            let out = AutomationResult {
                automation_id: id,
                version: row.version,
                status: AutomationStatus::Inactive,
                enrollments_affected: 0,
                deleted: false,
            };
            Ok((to_json(out)?, Some(Catalog::load(ctx.conn)?)))
        }
        Command::AutomationDelete { automation_id: id } => {
            let row = automation_row(ctx, &id)?;
            debug_assert!(!row.deleted);
            let active = enrollment::active_of_automation(ctx.conn, &id)?;
            for e in &active {
                enrollment::exit(ctx, e, "automation_deleted")?;
            }
            // Messages held while it was paused are withdrawn at once, and
            // those already screened for hand-over are screened again.
            crate::messaging::handover::release_paused(ctx.conn, &id, ctx.now)?;
            ctx.rescreen_everyone();
            ctx.conn.execute(
                "UPDATE automations SET deleted_at = ?2, next_eval_at = NULL, updated_at = ?2 WHERE id = ?1",
                params![id, ctx.now],
            )?;
            let out = AutomationResult {
                automation_id: id,
                version: row.version,
                status: row.status,
                enrollments_affected: active.len(),
                deleted: true,
            };
            Ok((to_json(out)?, Some(Catalog::load(ctx.conn)?)))
        }
        Command::ListCreate { list_id, name } => {
            let name = list_name(&name)?;
            let id = new_id(ctx, list_id, "lists", "list", "l")?;
            ctx.conn.execute(
                "INSERT INTO lists (id, name, kind, created_at) VALUES (?1, ?2, 'static', ?3)",
                params![id, name, ctx.now],
            )?;
            Ok((
                to_json(ListResult {
                    list_id: id,
                    changed: 0,
                })?,
                None,
            ))
        }
        Command::ListRename { list_id, name } => {
            let name = list_name(&name)?;
            let n = ctx.conn.execute(
                "UPDATE lists SET name = ?2 WHERE id = ?1 AND deleted_at IS NULL",
                params![list_id, name],
            )?;
            if n == 0 {
                return Err(Error::not_found(format!("list {list_id}")));
            }
            Ok((
                to_json(ListResult {
                    list_id,
                    changed: 0,
                })?,
                None,
            ))
        }
        Command::ListDelete { list_id } => {
            check_unused(ctx, &Reference::List(list_id.clone()))?;
            let members: Vec<String> = {
                let mut stmt = ctx.conn.prepare(
                    "SELECT contact_id FROM list_members WHERE list_id = ?1 ORDER BY contact_id",
                )?;
                stmt.query_map([&list_id], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?
            };
            // Members leave (firing Removed from list), then the list goes.
            let mut changed = 0;
            for c in &members {
                let signals = lists::remove_member(ctx, &list_id, c, lists::LIST_DELETED)?;
                changed += signals.len();
                triggers::fire(ctx, c, &signals)?;
            }
            let n = ctx.conn.execute(
                "UPDATE lists SET deleted_at = ?2 WHERE id = ?1 AND deleted_at IS NULL",
                params![list_id, ctx.now],
            )?;
            if n == 0 {
                return Err(Error::not_found(format!("list {list_id}")));
            }
            Ok((to_json(ListResult { list_id, changed })?, None))
        }
        Command::ListAddContacts {
            list_id,
            contact_ids,
            source,
        } => {
            check_batch(&contact_ids)?;
            let source = match source.as_deref() {
                None | Some("manual") => "manual",
                Some("import") => "import",
                Some(_) => return Err(Error::invalid("source: manual or import")),
            };
            let mut changed = 0;
            for c in &contact_ids {
                let signals = lists::add_member(ctx, &list_id, c, source)?;
                changed += signals.len();
                triggers::fire(ctx, c, &signals)?;
            }
            Ok((to_json(ListResult { list_id, changed })?, None))
        }
        Command::ListRemoveContacts {
            list_id,
            contact_ids,
        } => {
            check_batch(&contact_ids)?;
            let mut changed = 0;
            for c in &contact_ids {
                let signals = lists::remove_member(ctx, &list_id, c, "manual")?;
                changed += signals.len();
                triggers::fire(ctx, c, &signals)?;
            }
            Ok((to_json(ListResult { list_id, changed })?, None))
        }
        Command::TemplateCreate {
            template_id,
            template,
        } => {
            let custom = custom_properties(ctx.conn)?;
            check_template(&template, &custom)?;
            let id = new_id(ctx, template_id, "templates", "template", "t")?;
            ctx.conn.execute(
                "INSERT INTO templates (id, channel, name, subject, preheader, html_body, text_body, message, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9)",
                params![id, template.channel, template.name.trim(), template.subject, template.preheader, template.html_body, template.text_body, template.message, ctx.now],
            )?;
            Ok((to_json(TemplateResult { template_id: id })?, None))
        }
        Command::TemplateUpdate {
            template_id,
            template,
        } => {
            let custom = custom_properties(ctx.conn)?;
            check_template(&template, &custom)?;
            let n = ctx.conn.execute(
                "UPDATE templates SET name = ?3, subject = ?4, preheader = ?5, html_body = ?6, text_body = ?7, message = ?8, updated_at = ?9
                 WHERE id = ?1 AND channel = ?2 AND deleted_at IS NULL",
                params![template_id, template.channel, template.name.trim(), template.subject, template.preheader, template.html_body, template.text_body, template.message, ctx.now],
            )?;
            if n == 0 {
                // It exists on the other channel: a template keeps its channel
                // (the steps that use it were checked against it).
                let stored: Option<String> = ctx
                    .conn
                    .prepare_cached(
                        "SELECT channel FROM templates WHERE id = ?1 AND deleted_at IS NULL",
                    )?
                    .query_row([&template_id], |r| r.get(0))
                    .optional()?;
                return Err(match stored {
                    Some(channel) => Error::invalid(format!(
                        "template.channel: template {template_id} is an {} template; a template's channel cannot change (create a new one)",
                        if channel == "sms" { "SMS" } else { "email" }
                    )),
                    None => Error::not_found(format!("template {template_id}")),
                });
            }
            Ok((to_json(TemplateResult { template_id })?, None))
        }
        Command::TemplateDelete { template_id } => {
            check_unused(ctx, &Reference::Template(template_id.clone()))?;
            let n = ctx.conn.execute(
                "UPDATE templates SET deleted_at = ?2 WHERE id = ?1 AND deleted_at IS NULL",
                params![template_id, ctx.now],
            )?;
            if n == 0 {
                return Err(Error::not_found(format!("template {template_id}")));
            }
            Ok((to_json(TemplateResult { template_id })?, None))
        }
        Command::TemplateTestSend {
            template_id,
            to,
            contact_id,
        } => {
            // The test sends so far: a range of the key index (`LIKE
            // '%-test-%'` read every key, and counted a step id with
            // "-test-" in it).
            let prefix = crate::outbox::test_send_prefix(ctx.install_id);
            // The first key past the prefix: its last `-` is followed by `.`.
            let past = format!("{}.", &prefix[..prefix.len() - 1]);
            let n: i64 = ctx
                .conn
                .prepare_cached(
                    "SELECT COUNT(*) FROM outbox WHERE idempotency_key >= ?1 AND idempotency_key < ?2",
                )?
                .query_row(params![prefix, past], |r| r.get(0))?;
            let queued = ctx
                .effects
                .iter()
                .filter(|e| crate::outbox::is_test_send(ctx.install_id, &e.key))
                .count() as i64;
            let key = format!("{prefix}{template_id}-{}-{}", ctx.now, n + queued + 1);
            let (channel, rendered) = crate::views::template_preview::test_message(
                ctx.conn,
                ctx.settings,
                ctx.now,
                &template_id,
                contact_id.as_deref(),
                &to,
                &key,
            )?;
            let to = rendered["to"].as_str().unwrap_or_default().to_string();
            // Rendered with a contact's data, the sample carries their name,
            // as an automation's message does: a sender adapter's logs and
            // reasons are scrubbed of it (`plugins::redact`).
            let placeholders = match contact_id.as_deref() {
                Some(id) => {
                    let c = crate::core::contacts::require(ctx.conn, id)?;
                    serde_json::json!({
                        "firstname": c.text("first_name").unwrap_or(""),
                        "lastname": c.text("last_name").unwrap_or(""),
                    })
                }
                None => serde_json::json!({}),
            };
            ctx.effects.push(crate::outbox::Effect {
                key: key.clone(),
                kind: crate::outbox::EffectKind::Message,
                payload: serde_json::json!({
                    "key": key, "kind": "message", "channel": channel, "category": "test",
                    "purpose": "test_send", "contact_id": contact_id, "to": to,
                    "template_id": template_id, "rendered": rendered,
                    "placeholders": placeholders,
                }),
                contact_id: contact_id.clone().unwrap_or_default(),
                automation_id: None,
                enrollment_id: None,
                step_id: None,
                channel: Some(channel.clone()),
                asset_id: None,
                not_before: None,
                hold: None,
            });
            Ok((
                to_json(TestSendResult {
                    template_id,
                    key,
                    channel,
                    to,
                })?,
                None,
            ))
        }
        Command::SettingsGet {} => Ok((to_json(ctx.settings.doc.without_secrets())?, None)),
        Command::SettingsUpdate { mut settings } => {
            settings.keep_stored_password(&ctx.settings.doc);
            // Store the canonical form (trimmed, E.164 numbers).
            let resolved = settings.validate()?;
            crate::plugins::admin::check_adapters(ctx.conn, &resolved.doc)?;
            crate::store::put_setting(ctx.conn, "settings", &to_json(&resolved.doc)?)?;
            if resolved.tz != ctx.settings.tz || resolved.doc.sms != ctx.settings.doc.sms {
                reschedule(ctx, &resolved)?;
                // Sending hours: rows already screened are decided again.
                ctx.rescreen_everyone();
            }
            if resolved.doc.email_delivery != ctx.settings.doc.email_delivery {
                // New relay settings may cure a refused login: what the
                // old ones held goes again now, not at the end of its pause.
                crate::outbox::release_held_by_sender(ctx.conn, ctx.now)?;
            }
            Ok((to_json(resolved.doc.without_secrets())?, None))
        }
        Command::PluginInstall {
            grants,
            limits,
            config,
            secrets,
            enabled,
            replace,
            prepared,
            ..
        } => {
            let changes = crate::plugins::registry::GrantChanges {
                grants,
                limits,
                config,
                secrets,
            };
            let v = crate::plugins::admin::install(
                ctx,
                prepared.as_deref(),
                changes,
                enabled,
                replace,
            )?;
            Ok((v, None))
        }
        Command::PluginConfigure {
            plugin_id,
            grants,
            limits,
            config,
            secrets,
        } => {
            let changes = crate::plugins::registry::GrantChanges {
                grants,
                limits,
                config,
                secrets,
            };
            Ok((
                crate::plugins::admin::configure(ctx, &plugin_id, changes)?,
                None,
            ))
        }
        Command::PluginEnable { plugin_id } => Ok((
            crate::plugins::admin::set_enabled(ctx, &plugin_id, true)?,
            None,
        )),
        Command::PluginDisable { plugin_id } => Ok((
            crate::plugins::admin::set_enabled(ctx, &plugin_id, false)?,
            None,
        )),
        Command::PluginRemove { plugin_id } => {
            Ok((crate::plugins::admin::remove(ctx, &plugin_id)?, None))
        }
        Command::PluginList {} => Ok((
            to_json(crate::views::plugins::build(ctx.conn, ctx.now)?)?,
            None,
        )),
    }
}

fn list_name(name: &str) -> Result<String> {
    let n = name.trim();
    if n.is_empty() || n.chars().count() > 200 {
        return Err(Error::invalid("name: must be 1 to 200 characters"));
    }
    Ok(n.to_string())
}

fn check_batch(ids: &[String]) -> Result<()> {
    if ids.is_empty() {
        return Err(Error::invalid("contact_ids: at least one contact"));
    }
    if ids.len() > MAX_LIST_BATCH {
        return Err(Error::TooLarge(format!(
            "contact_ids: at most {MAX_LIST_BATCH} per command"
        )));
    }
    for (i, id) in ids.iter().enumerate() {
        validate_id(&format!("contact_ids[{i}]"), id)?;
    }
    Ok(())
}
