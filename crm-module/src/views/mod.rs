//! View models (SPEC §7): the JSON documents the host UI renders the module's
//! screens from, one per screen of the `seeds/001_*` index.
//!
//! The host asks for a view by name with JSON parameters ([`query`]); the
//! answer is a typed model serialized to JSON. Every model carries the display
//! strings the UI shows (labels, "97.9%", "2 days", "3.2d") next to the raw
//! numbers it sorts by. [`schemas`] publishes the JSON Schema of each model.
//!
//! Views only read: `query` takes any connection (a read-only connection or an
//! open transaction) and never writes. Analytics come from the append-only
//! `events` table through a handful of aggregate queries per view (never one
//! query per row), which the `events_automation(automation_id, kind, step_id, channel, at)`
//! index serves; partial indexes serve the rarer questions (opt-outs by the
//! message that caused them, completed steps' durations and paths).

pub mod automation_list;
pub mod builder;
pub mod detailed_analytics;
pub mod engagement_grade;
pub mod engagement_timeline;
pub mod performance;
pub mod picker_options;
pub mod plugins;
pub mod settings;
pub mod step_analytics;
pub mod template_preview;

use rusqlite::{Connection, OptionalExtension, params};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Number, Value};

use crate::catalog::{self, Version};
use crate::clock::{DAY, HOUR, MINUTE, Millis};
use crate::error::{Error, Result};
use crate::model::automation::{AutomationStatus, GoalKind};
use crate::settings::Resolved;

/// Names of the screens' views this module serves (each with a view
/// model and its schema). [`crate::Module::view`] also serves `schemas`,
/// every JSON Schema the host's UI uses.
pub const VIEW_NAMES: &[&str] = &[
    "automation_list",
    "automation_builder",
    "automation_performance",
    "settings",
    "template_preview",
    "step_analytics",
    "plugins",
    "picker_options",
];

/// Builds the view `name` with JSON `params`, reading through `conn` (a read connection or transaction).
///
/// `params` may be `null` (every parameter at its default) or an object; see
/// [`automation_list::ListParams`], [`builder::BuilderParams`] and
/// [`performance::PerformanceParams`],
/// [`template_preview::TemplatePreviewParams`] and
/// [`step_analytics::StepAnalyticsParams`] and
/// [`picker_options::PickerOptionsParams`]; `settings` takes none
/// ([`settings::SettingsParams`]).
///
/// # Errors
///
/// * [`Error::NotFound`] for an unknown view name (the message lists the known
///   ones), an unknown or deleted automation, an unknown canvas node, or an
///   unknown template or contact (`template_preview`), or a step the
///   automation never had (`step_analytics`).
/// * [`Error::Invalid`] naming the parameter when `params` do not fit the view.
/// * [`Error::Storage`] when the database fails.
pub fn query(
    conn: &Connection,
    settings: &Resolved,
    name: &str,
    params: &Value,
    now: Millis,
) -> Result<Value> {
    let ctx = Ctx {
        conn,
        settings,
        now,
    };
    match name {
        "automation_list" => to_json(&automation_list::build(&ctx, parse_params(params)?)?),
        "automation_builder" => to_json(&builder::build(&ctx, parse_params(params)?)?),
        "automation_performance" => to_json(&performance::build(&ctx, parse_params(params)?)?),
        "settings" => to_json(&settings::build(&ctx, parse_params(params)?)?),
        "template_preview" => to_json(&template_preview::build(&ctx, parse_params(params)?)?),
        "step_analytics" => to_json(&step_analytics::build(&ctx, parse_params(params)?)?),
        "picker_options" => to_json(&picker_options::build(&ctx, parse_params(params)?)?),
        "plugins" => {
            no_params(params)?;
            to_json(&plugins::build(ctx.conn, ctx.now)?)
        }
        other => {
            // A malformed name is refused as invalid, unquoted.
            crate::model::contact::validate_id("view", other)?;
            // `schemas` is served by `Module::view` before it gets here.
            Err(Error::not_found(format!(
                "view {other}; known views: {}, schemas",
                VIEW_NAMES.join(", ")
            )))
        }
    }
}

/// JSON Schemas (schemars 1.x) of every view model as the module writes it
/// ([`crate::schema::output`]), keyed by view name.
pub fn schemas() -> Value {
    let mut out = serde_json::Map::new();
    out.insert(
        "automation_list".into(),
        crate::schema::output::<automation_list::AutomationListView>().to_value(),
    );
    out.insert(
        "automation_builder".into(),
        crate::schema::output::<builder::BuilderView>().to_value(),
    );
    out.insert(
        "automation_performance".into(),
        crate::schema::output::<performance::PerformanceView>().to_value(),
    );
    out.insert(
        "settings".into(),
        crate::schema::output::<settings::SettingsView>().to_value(),
    );
    out.insert(
        "template_preview".into(),
        crate::schema::output::<template_preview::TemplatePreviewView>().to_value(),
    );
    out.insert(
        "step_analytics".into(),
        crate::schema::output::<step_analytics::StepAnalyticsView>().to_value(),
    );
    out.insert(
        "plugins".into(),
        crate::schema::output::<plugins::PluginsView>().to_value(),
    );
    out.insert(
        "picker_options".into(),
        crate::schema::output::<picker_options::PickerOptionsView>().to_value(),
    );
    Value::Object(out)
}

/// What every view builder reads.
pub(crate) struct Ctx<'a> {
    pub(crate) conn: &'a Connection,
    pub(crate) settings: &'a Resolved,
    pub(crate) now: Millis,
}

/// Parameters of a view that takes none (`plugins`, `schemas`): send `null` or `{}`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

/// The JSON Schema of each view's parameters (what `params_json` may hold),
/// keyed by view name.
pub fn params_schemas() -> Value {
    serde_json::json!({
        "automation_list": schemars::schema_for!(automation_list::ListParams),
        "automation_builder": schemars::schema_for!(builder::BuilderParams),
        "automation_performance": schemars::schema_for!(performance::PerformanceParams),
        "settings": schemars::schema_for!(settings::SettingsParams),
        "template_preview": schemars::schema_for!(template_preview::TemplatePreviewParams),
        "step_analytics": schemars::schema_for!(step_analytics::StepAnalyticsParams),
        "plugins": schemars::schema_for!(NoParams),
        "picker_options": schemars::schema_for!(picker_options::PickerOptionsParams),
        "schemas": schemars::schema_for!(NoParams),
    })
}

/// Refuses parameters for a view that takes none (`plugins`, and
/// `schemas`, which `Module::view` serves before [`query`]).
pub fn no_params(params: &Value) -> Result<()> {
    let NoParams {} = parse_params(params)?;
    Ok(())
}

fn parse_params<T: DeserializeOwned>(params: &Value) -> Result<T> {
    let value = match params {
        Value::Null => Value::Object(serde_json::Map::new()),
        Value::Object(_) => params.clone(),
        _ => return Err(Error::invalid("params: must be a JSON object")),
    };
    crate::error::from_value(value).map_err(|e| match e {
        Error::Invalid(m) => Error::Invalid(format!("params: {m}")),
        other => other,
    })
}

fn to_json<T: Serialize>(model: &T) -> Result<Value> {
    serde_json::to_value(model).map_err(|e| Error::Internal(format!("view model: {e}")))
}

// ---------------------------------------------------------------------------
// Shared building blocks of the view models
// ---------------------------------------------------------------------------

/// An id with the label the UI shows for it (a status, a goal, a type).
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Label {
    /// Stable id (e.g. `active`, `book_appointment`).
    pub id: String,
    /// Display label (e.g. "Active", "Book appointment").
    pub label: String,
}

impl Label {
    pub(crate) fn new(id: &str, label: &str) -> Self {
        Label {
            id: id.to_string(),
            label: label.to_string(),
        }
    }

    pub(crate) fn status(s: AutomationStatus) -> Self {
        Label::new(s.as_str(), s.label())
    }
}

/// The goal of an automation, or none (`id` null, label "—").
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct GoalCell {
    /// Goal id (`book_appointment`, …), null when the automation has no goal.
    pub id: Option<String>,
    /// Goal label, or "—" when there is none.
    pub label: String,
}

impl GoalCell {
    pub(crate) fn of(goal: Option<GoalKind>) -> Self {
        match goal {
            Some(g) => GoalCell {
                id: Some(g.id().to_string()),
                label: g.label().to_string(),
            },
            None => GoalCell {
                id: None,
                label: DASH.to_string(),
            },
        }
    }
}

/// An instant, raw and formatted.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Timestamp {
    /// Milliseconds since the Unix epoch (for sorting).
    pub ms: i64,
    /// RFC 3339 UTC with milliseconds.
    pub rfc3339: String,
    /// Practice-local display: "Today, 9:14 AM", "Yesterday, 4:02 PM" or "Mar 8, 2026".
    pub display: String,
}

impl Timestamp {
    pub(crate) fn new(ctx: &Ctx<'_>, ms: Millis) -> Self {
        Timestamp {
            ms,
            rfc3339: crate::clock::to_rfc3339(ms),
            display: fmt_instant(ms, ctx.now, ctx.settings.tz),
        }
    }
}

/// A headline number card.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct StatCard {
    /// Stable id of the card.
    pub id: String,
    /// Card title.
    pub label: String,
    /// The raw number (counts are integers, rates are percentages with one
    /// decimal, durations are milliseconds, as the card's `definition`
    /// says); null when undefined (e.g. a rate with nothing to divide by).
    pub value: Option<Number>,
    /// The formatted value ("1,245", "18.3%", "—").
    pub display: String,
    /// A short line under the value.
    pub hint: String,
    /// What the number means and how it is computed (the info tooltip).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub definition: Option<String>,
}

/// A table column.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Column {
    /// Stable id, also the sort key where sortable.
    pub id: String,
    /// Header label.
    pub label: String,
    /// Whether the UI offers sorting on it.
    pub sortable: bool,
    /// True for numeric columns (right-aligned).
    pub numeric: bool,
    /// How the column's figures are computed (info tooltip), where useful.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub definition: Option<String>,
}

impl Column {
    pub(crate) fn new(id: &str, label: &str, sortable: bool, numeric: bool) -> Self {
        Column {
            id: id.to_string(),
            label: label.to_string(),
            sortable,
            numeric,
            definition: None,
        }
    }
}

/// A command the UI sends (through the host's command entry point) when an
/// action is used. It serializes as the command's own JSON: send it as is,
/// adding what the UI collects (e.g. `definition` for `automation.create` and
/// `automation.update`).
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct CommandRef {
    /// Command name (`automation.pause`, `automation.create`, …).
    pub command: String,
    /// The automation the command acts on, when it acts on one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub automation_id: Option<String>,
}

impl CommandRef {
    pub(crate) fn new(command: &str, automation_id: Option<&str>) -> Self {
        CommandRef {
            command: command.to_string(),
            automation_id: automation_id.map(str::to_string),
        }
    }
}

/// Parameters of a view link.
#[derive(Debug, Clone, PartialEq, Default, Serialize, JsonSchema)]
pub struct ViewLinkParams {
    /// The automation to open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub automation_id: Option<String>,
    /// The builder tab to open (`details` or `build`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tab: Option<String>,
    /// The step to preview (`template_preview`) or whose analytics to
    /// show (`step_analytics`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_id: Option<String>,
}

/// A view the UI navigates to (a page, or a modal such as
/// `step_analytics`): ask [`query`] for `view` with `params`.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct ViewRef {
    /// View name (one of [`VIEW_NAMES`]).
    pub view: String,
    /// Its parameters.
    pub params: ViewLinkParams,
}

impl ViewRef {
    pub(crate) fn new(view: &str, automation_id: Option<&str>, tab: Option<&str>) -> Self {
        ViewRef {
            view: view.to_string(),
            params: ViewLinkParams {
                automation_id: automation_id.map(str::to_string),
                tab: tab.map(str::to_string),
                step_id: None,
            },
        }
    }

    /// The `template_preview` of a saved automation's email or SMS step.
    pub(crate) fn step_preview(automation_id: &str, step_id: &str) -> Self {
        ViewRef {
            view: "template_preview".to_string(),
            params: ViewLinkParams {
                automation_id: Some(automation_id.to_string()),
                tab: None,
                step_id: Some(step_id.to_string()),
            },
        }
    }

    /// The `step_analytics` modal of an automation's email, SMS or Delay
    /// step.
    pub(crate) fn step_analytics(automation_id: &str, step_id: &str) -> Self {
        ViewRef {
            view: "step_analytics".to_string(),
            params: ViewLinkParams {
                automation_id: Some(automation_id.to_string()),
                tab: None,
                step_id: Some(step_id.to_string()),
            },
        }
    }
}

/// Visual weight of a button.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActionStyle {
    /// The page's main action.
    Primary,
    /// An ordinary button or menu item.
    Default,
    /// Destructive (delete).
    Danger,
}

/// A button, link or menu item. It runs `command`, opens `view`, or, when
/// both are absent, is handled by the UI itself, identified by `id` (e.g.
/// opening the email preview modal).
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Action {
    /// Stable id (`open`, `pause`, `activate`, `delete`, `update`, `back`, …).
    pub id: String,
    /// Label or tooltip.
    pub label: String,
    /// Font Awesome icon name, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icon: Option<String>,
    /// Visual weight.
    pub style: ActionStyle,
    /// The command it sends.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<CommandRef>,
    /// The view it opens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub view: Option<ViewRef>,
    /// A confirmation question to ask first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confirm: Option<String>,
    /// Shown but not usable.
    pub disabled: bool,
}

impl Action {
    pub(crate) fn new(id: &str, label: &str, icon: Option<&str>) -> Self {
        Action {
            id: id.to_string(),
            label: label.to_string(),
            icon: icon.map(str::to_string),
            style: ActionStyle::Default,
            command: None,
            view: None,
            confirm: None,
            disabled: false,
        }
    }

    pub(crate) fn command(mut self, command: &str, automation_id: Option<&str>) -> Self {
        self.command = Some(CommandRef::new(command, automation_id));
        self
    }

    pub(crate) fn view(mut self, view: ViewRef) -> Self {
        self.view = Some(view);
        self
    }

    pub(crate) fn style(mut self, style: ActionStyle) -> Self {
        self.style = style;
        self
    }

    pub(crate) fn confirm(mut self, question: String) -> Self {
        self.confirm = Some(question);
        self
    }

    pub(crate) fn disabled(mut self, disabled: bool) -> Self {
        self.disabled = disabled;
        self
    }
}

/// The row of an automation plus its current definition.
pub(crate) struct AutomationRecord {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) status: AutomationStatus,
    pub(crate) entered_by: String,
    pub(crate) created_at: Millis,
    pub(crate) updated_at: Millis,
    pub(crate) current: Version,
}

/// Loads a live (not deleted) automation with its current version.
pub(crate) fn load_automation(conn: &Connection, id: &str) -> Result<AutomationRecord> {
    crate::model::contact::validate_id("automation_id", id).map_err(|e| e.at("params"))?;
    let row = conn
        .prepare_cached(
            "SELECT name, status, current_version, entered_by, created_at, updated_at
             FROM automations WHERE id = ?1 AND deleted_at IS NULL",
        )?
        .query_row(params![id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Millis>(4)?,
                r.get::<_, Millis>(5)?,
            ))
        })
        .optional()?;
    let Some((name, status, version, entered_by, created_at, updated_at)) = row else {
        return Err(Error::not_found(format!("automation {id}")));
    };
    let status = AutomationStatus::parse(&status)
        .ok_or_else(|| Error::Internal(format!("automation {id}: bad status")))?;
    let current = catalog::load_version(conn, id, version)?;
    Ok(AutomationRecord {
        id: id.to_string(),
        name,
        status,
        entered_by,
        created_at,
        updated_at,
        current,
    })
}

/// Names of the lists, forms and saved templates that pickers and
/// summaries show.
#[derive(Debug, Default)]
pub(crate) struct Names {
    pub(crate) lists: Vec<(String, String)>,
    pub(crate) forms: Vec<(String, String)>,
    /// Saved email templates (not deleted).
    pub(crate) email_templates: Vec<(String, String)>,
    /// Saved SMS templates (not deleted).
    pub(crate) sms_templates: Vec<(String, String)>,
    /// Installed step plugins and whether each is enabled.
    pub(crate) step_plugins: Vec<(crate::plugins::descriptor::Descriptor, bool)>,
    /// Custom properties seen on contacts, by name (SPEC §1: usable in
    /// filters): offered beside the known ones.
    pub(crate) custom_properties: Vec<String>,
    /// The pickers whose names were cut at [`PICKER_LIMIT`].
    pub(crate) cut: Vec<picker_options::Picker>,
}

/// Most lists/forms/templates a picker offers.
pub(crate) const PICKER_LIMIT: usize = 1000;

impl Names {
    pub(crate) fn load(conn: &Connection) -> Result<Names> {
        use picker_options::Picker;
        let mut cut = Vec::new();
        // The first by name, one more than the limit to tell a picker that
        // was cut: what `picker_options` finds with no query.
        let mut picker = |p: Picker| -> Result<Vec<(String, String)>> {
            let mut names = picker_options::matching(conn, p, "", PICKER_LIMIT + 1)?;
            if names.len() > PICKER_LIMIT {
                names.truncate(PICKER_LIMIT);
                cut.push(p);
            }
            Ok(names)
        };
        Ok(Names {
            lists: picker(Picker::Lists)?,
            forms: picker(Picker::Forms)?,
            email_templates: picker(Picker::EmailTemplates)?,
            sms_templates: picker(Picker::SmsTemplates)?,
            custom_properties: conn
                .prepare_cached("SELECT key FROM custom_properties ORDER BY key LIMIT ?1")?
                .query_map(params![PICKER_LIMIT as i64], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?
                .into_iter()
                // Only names saving accepts (earlier versions kept `Email` too).
                .filter(|key| crate::model::contact::validate_key(key).is_ok())
                .collect(),
            cut,
            ..Names::step_plugins(conn)?
        })
    }

    /// Whether `picker`'s choices were cut at [`PICKER_LIMIT`].
    pub(crate) fn is_cut(&self, picker: picker_options::Picker) -> bool {
        self.cut.contains(&picker)
    }

    /// Adds the lists, templates and form `def` names that the pickers'
    /// [`PICKER_LIMIT`] left out (a practice with more lists than that),
    /// so that the builder names them and its pickers offer them. An id
    /// nothing has (a draft's typo) stays unnamed.
    pub(crate) fn include(
        &mut self,
        conn: &Connection,
        def: &crate::model::automation::AutomationDefinition,
    ) -> Result<()> {
        use crate::model::automation::{Reference, Trigger};
        let name = |sql: &str, id: &str| -> Result<Option<(String, String)>> {
            Ok(conn
                .prepare_cached(sql)?
                .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?)
        };
        let missing =
            |entries: &[(String, String)], id: &str| !entries.iter().any(|(i, _)| i == id);
        for (_, r) in def.references() {
            match r {
                Reference::List(id) if missing(&self.lists, &id) => {
                    let sql = "SELECT id, name FROM lists WHERE id = ?1 AND deleted_at IS NULL";
                    self.lists.extend(name(sql, &id)?);
                }
                Reference::Template(id)
                    if missing(&self.email_templates, &id) && missing(&self.sms_templates, &id) =>
                {
                    let sql =
                        "SELECT channel, name FROM templates WHERE id = ?1 AND deleted_at IS NULL";
                    if let Some((channel, n)) = name(sql, &id)? {
                        let to = match channel.as_str() {
                            "email" => &mut self.email_templates,
                            _ => &mut self.sms_templates,
                        };
                        to.push((id, n));
                    }
                }
                _ => {}
            }
        }
        if let Trigger::FormSubmitted { form_id: Some(id) } = &def.trigger
            && missing(&self.forms, id.as_str())
        {
            let sql = "SELECT id, name FROM forms WHERE id = ?1";
            self.forms.extend(name(sql, id.as_str())?);
        }
        Ok(())
    }

    /// Only the installed step plugins (no list or form names): for screens
    /// that title steps and pick nothing.
    pub(crate) fn step_plugins(conn: &Connection) -> Result<Names> {
        Ok(Names {
            step_plugins: crate::plugins::registry::descriptors(conn)?
                .into_iter()
                .filter(|(d, _)| d.kind == crate::plugins::contract::PluginKind::Step)
                .collect(),
            ..Names::default()
        })
    }

    /// The title a screen gives a step: its name; an unnamed custom step
    /// takes its step type's display name from the installed plugin; else
    /// [`crate::model::automation::Step::title`].
    pub(crate) fn step_title(&self, step: &crate::model::automation::Step) -> String {
        use crate::model::automation::StepKind;
        match (&step.name, &step.kind) {
            (
                None,
                StepKind::Custom {
                    plugin_id,
                    step_type,
                    ..
                },
            ) => self
                .step_type(plugin_id, step_type)
                .map_or_else(|| step.title(), |(t, _)| t.display_name.clone()),
            _ => step.title(),
        }
    }

    /// A custom step type's declaration and its plugin's name.
    pub(crate) fn step_type(
        &self,
        plugin_id: &str,
        step_type: &str,
    ) -> Option<(&crate::plugins::descriptor::StepTypeDecl, &str)> {
        self.step_plugins
            .iter()
            .find(|(d, _)| d.id == plugin_id)
            .and_then(|(d, _)| d.step_type(step_type).map(|t| (t, d.name.as_str())))
    }

    pub(crate) fn list(&self, id: &str) -> String {
        name_in(&self.lists, "list", id)
    }

    pub(crate) fn form(&self, id: &str) -> String {
        name_in(&self.forms, "form", id)
    }

    /// The saved templates of a channel (`email` or `sms`).
    pub(crate) fn templates(&self, channel: &str) -> &[(String, String)] {
        match channel {
            "email" => &self.email_templates,
            _ => &self.sms_templates,
        }
    }

    /// A saved template's name, or "template {id}" when it is not among
    /// the channel's (deleted, or beyond the picker's limit).
    pub(crate) fn template(&self, channel: &str, id: &str) -> String {
        name_in(self.templates(channel), "template", id)
    }
}

/// The name `id` has among `entries`, or "{what} {id}".
fn name_in(entries: &[(String, String)], what: &str, id: &str) -> String {
    entries
        .iter()
        .find(|(i, _)| i == id)
        .map(|(_, n)| n.clone())
        .unwrap_or_else(|| format!("{what} {id}"))
}

// ---------------------------------------------------------------------------
// Formatting
// ---------------------------------------------------------------------------

/// Shown for a figure that is undefined (nothing to divide by, no data).
pub const DASH: &str = "—";

/// A count with thousands separators: 1245 → "1,245".
pub(crate) fn fmt_count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Rounds to one decimal.
pub(crate) fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// One decimal, without a trailing ".0": 97.86 → "97.9", 100.0 → "100".
fn fmt_1(v: f64) -> String {
    let s = format!("{:.1}", round1(v));
    match s.strip_suffix(".0") {
        Some(whole) => whole.to_string(),
        None => s,
    }
}

/// A percentage: 97.86 → "97.9%", 100.0 → "100%".
pub(crate) fn fmt_percent(v: f64) -> String {
    format!("{}%", fmt_1(v))
}

/// `part ÷ whole × 100` to one decimal, truncated like the product's own
/// figures (335 ÷ 342 → 97.9, never rounded up to a misleading 98.0 or 100);
/// None when `whole` is 0. Exact: integer arithmetic.
pub(crate) fn rate(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| (u128::from(part) * 1000 / u128::from(whole)) as f64 / 10.0)
}

/// Truncates a percentage to one decimal (tolerating float noise just below a tenth).
pub(crate) fn floor1(v: f64) -> f64 {
    ((v * 10.0) + 1e-9).floor() / 10.0
}

/// A rate's display: "97.9%" or "—".
pub(crate) fn fmt_rate(r: Option<f64>) -> String {
    r.map(fmt_percent).unwrap_or_else(|| DASH.to_string())
}

/// [`fmt_rate`] of a rate that is known to be above zero when `nonzero`:
/// under a tenth of a percent it reads "<0.1%", where its truncated value
/// would read "0%" (1 bounce in 1,500 sends is not none).
pub(crate) fn fmt_rate_above_zero(r: Option<f64>, nonzero: bool) -> String {
    match r {
        Some(v) if nonzero && v < 0.1 => "<0.1%".to_string(),
        _ => fmt_rate(r),
    }
}

/// The display of `part ÷ whole` ([`rate`]): "97.9%", "<0.1%" for a share
/// above zero but under a tenth of a percent, "—" when `whole` is 0.
pub(crate) fn fmt_share(part: u64, whole: u64) -> String {
    fmt_rate_above_zero(rate(part, whole), part > 0)
}

/// A JSON number of a count.
pub(crate) fn num_u(n: u64) -> Number {
    Number::from(n)
}

/// A JSON number of a float (None for NaN/infinity).
pub(crate) fn num_f(v: f64) -> Option<Number> {
    Number::from_f64(v)
}

fn plural(v: &str, one: &str, many: &str) -> String {
    if v == "1" {
        format!("{v} {one}")
    } else {
        format!("{v} {many}")
    }
}

/// A duration in words: "< 1 sec", "40 sec", "2 min", "1.5 hours", "2 days".
pub(crate) fn fmt_duration(ms: f64) -> String {
    let ms = ms.max(0.0);
    if ms < 1000.0 {
        "< 1 sec".to_string()
    } else if ms < (MINUTE as f64) - 500.0 {
        format!("{} sec", (ms / 1000.0).round())
    } else if ms < (HOUR as f64) - (MINUTE as f64) / 2.0 {
        format!("{} min", (ms / MINUTE as f64).round().max(1.0))
    } else if ms < (DAY as f64) - (HOUR as f64) / 20.0 {
        plural(&fmt_1(ms / HOUR as f64), "hour", "hours")
    } else {
        plural(&fmt_1(ms / DAY as f64), "day", "days")
    }
}

/// A compact duration: "< 1s", "40s", "42m", "5.5h", "3.2d".
pub(crate) fn fmt_duration_short(ms: f64) -> String {
    let ms = ms.max(0.0);
    if ms < 1000.0 {
        "< 1s".to_string()
    } else if ms < (MINUTE as f64) - 500.0 {
        format!("{}s", (ms / 1000.0).round())
    } else if ms < (HOUR as f64) - (MINUTE as f64) / 2.0 {
        format!("{}m", (ms / MINUTE as f64).round().max(1.0))
    } else if ms < (DAY as f64) - (HOUR as f64) / 20.0 {
        format!("{}h", fmt_1(ms / HOUR as f64))
    } else {
        format!("{}d", fmt_1(ms / DAY as f64))
    }
}

/// An instant in the practice's time zone, relative to `now` for the last two days.
pub(crate) fn fmt_instant(ms: Millis, now: Millis, tz: chrono_tz::Tz) -> String {
    let Some(utc) = chrono::DateTime::from_timestamp_millis(ms) else {
        return crate::clock::to_rfc3339(ms);
    };
    let local = utc.with_timezone(&tz);
    let today = crate::schedule::local_date(now, tz);
    let date = local.date_naive();
    let time = local.format("%-I:%M %p");
    if date == today {
        format!("Today, {time}")
    } else if today.pred_opt() == Some(date) {
        format!("Yesterday, {time}")
    } else {
        local.format("%b %-d, %Y").to_string()
    }
}

/// Truncates display text to `max` characters with an ellipsis.
pub(crate) fn clip(s: &str, max: usize) -> String {
    let s = s.trim();
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

/// "sms_opt_out" → "Sms opt out": a fallback label for an unknown id.
pub(crate) fn humanize(id: &str) -> String {
    let text = id.replace(['_', '-'], " ");
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    //! A real SQLite file with rows inserted directly, for the view tests.

    use rusqlite::{Connection, params};
    use serde_json::Value;

    use crate::clock::Millis;
    use crate::settings::{Resolved, Settings};

    /// 2026-03-08T12:00:00Z.
    pub const NOW: Millis = 1_772_971_200_000;

    pub struct Db {
        pub conn: Connection,
        pub settings: Resolved,
        _dir: tempfile::TempDir,
    }

    impl Db {
        pub fn new() -> Db {
            let dir = tempfile::tempdir().unwrap();
            let conn =
                crate::store::open(&dir.path().join("views.db"), crate::store::Access::Write)
                    .unwrap();
            let settings = Settings {
                time_zone: "America/New_York".into(),
                ..Settings::default()
            }
            .validate()
            .unwrap();
            Db {
                conn,
                settings,
                _dir: dir,
            }
        }

        pub fn query(&self, name: &str, params: Value) -> crate::error::Result<Value> {
            super::query(&self.conn, &self.settings, name, &params, NOW)
        }

        /// Inserts an automation with its versions (definitions as JSON, oldest first).
        pub fn automation(&self, id: &str, status: &str, updated_at: Millis, versions: &[Value]) {
            let name = versions.last().unwrap()["name"]
                .as_str()
                .unwrap()
                .to_string();
            self.conn
                .execute(
                    "INSERT INTO automations (id, name, status, current_version, entered_by, updated_by, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, 'Dr. Adams', 'Dr. Adams', ?5, ?5)",
                    params![id, name, status, versions.len() as i64, updated_at],
                )
                .unwrap();
            for (i, def) in versions.iter().enumerate() {
                self.conn
                    .execute(
                        "INSERT INTO automation_versions (automation_id, version, definition, created_at)
                         VALUES (?1, ?2, ?3, ?4)",
                        params![id, i as i64 + 1, def.to_string(), updated_at],
                    )
                    .unwrap();
            }
        }

        /// Inserts `n` events of `kind` for an automation (and step).
        pub fn events(
            &self,
            automation_id: &str,
            kind: &str,
            step_id: Option<&str>,
            n: usize,
            at: Millis,
            detail: Option<Value>,
        ) {
            let tx = self.conn.unchecked_transaction().unwrap();
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO events (at, kind, contact_id, automation_id, version, step_id, detail)
                     VALUES (?1, ?2, 'c1', ?3, 1, ?4, ?5)",
                )
                .unwrap();
            let detail = detail.map(|d| d.to_string());
            for _ in 0..n {
                stmt.execute(params![at, kind, automation_id, step_id, detail])
                    .unwrap();
            }
            drop(stmt);
            tx.commit().unwrap();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::Db;
    use super::*;
    use crate::error::ErrorCode;
    use serde_json::json;

    #[test]
    fn formats_numbers_rates_and_durations() {
        assert_eq!(fmt_count(0), "0");
        assert_eq!(fmt_count(999), "999");
        assert_eq!(fmt_count(1245), "1,245");
        assert_eq!(fmt_count(1_234_567), "1,234,567");
        assert_eq!(fmt_rate(rate(335, 342)), "97.9%");
        assert_eq!(fmt_rate(rate(335, 335)), "100%");
        assert_eq!(fmt_rate(rate(331, 335)), "98.8%");
        assert_eq!(fmt_rate(rate(228, 1245)), "18.3%");
        assert_eq!(fmt_rate(rate(1, 0)), DASH);
        assert_eq!(fmt_rate(rate(9_999, 10_000)), "99.9%");
        assert_eq!(fmt_share(1, 1_500), "<0.1%");
        assert_eq!(fmt_share(0, 1_500), "0%");
        assert_eq!(fmt_share(2, 2_000), "0.1%");
        assert_eq!(fmt_share(1, 0), DASH);
        assert_eq!(floor1(34.06), 34.0);
        assert_eq!(floor1(0.3 * 100.0 / 1.0), 30.0);
        assert_eq!(fmt_duration(0.0), "< 1 sec");
        assert_eq!(fmt_duration(40_000.0), "40 sec");
        assert_eq!(fmt_duration(2.0 * MINUTE as f64), "2 min");
        assert_eq!(fmt_duration(HOUR as f64), "1 hour");
        assert_eq!(fmt_duration(1.5 * HOUR as f64), "1.5 hours");
        assert_eq!(fmt_duration(2.0 * DAY as f64), "2 days");
        assert_eq!(fmt_duration(DAY as f64), "1 day");
        assert_eq!(fmt_duration_short(3.2 * DAY as f64), "3.2d");
        assert_eq!(fmt_duration_short(42.0 * MINUTE as f64), "42m");
        assert_eq!(clip("abcdef", 4), "abc…");
        assert_eq!(humanize("global_opt_out"), "Global opt out");
    }

    #[test]
    fn unknown_view_and_bad_params() {
        let db = Db::new();
        let e = db.query("nope", Value::Null).unwrap_err();
        assert_eq!(e.code(), ErrorCode::NotFound);
        let m = e.to_string();
        assert!(
            m.contains("view nope") && m.contains("automation_builder") && m.contains("schemas"),
            "{m}"
        );
        let e = db.query("automation_list", json!([1])).unwrap_err();
        assert_eq!(e.code(), ErrorCode::Invalid);
        let e = db
            .query("automation_list", json!({"bogus": "Jane Doe"}))
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::Invalid);
        assert!(e.to_string().contains("bogus"), "{e}");
        assert!(!e.to_string().contains("Jane"), "{e}");
    }

    #[test]
    fn schemas_cover_every_view() {
        let s = schemas();
        for name in VIEW_NAMES {
            let schema = &s[*name];
            assert!(schema.is_object(), "{name}");
            assert!(schema["properties"].is_object(), "{name}");
        }
        assert!(
            s["automation_list"]["properties"]["stat_cards"].is_object(),
            "{}",
            s["automation_list"]
        );
    }
}
