//! `automation_builder`: the full-screen builder of one automation — top bar,
//! tabs (or the 2-step create wizard rail), the Details tab (General, "When can
//! this automation run?", Unenrollment) and the Build tab (ADD STEP palette,
//! the canvas tree with an End on every path, and the right-rail Node
//! Configuration Panel of the selected node).
//!
//! Without `automation_id` it is the create wizard's empty state: the module's
//! default run window, no trigger chosen and an empty canvas.
//!
//! Every config field's `id` is the dot-separated path of the definition field
//! it edits, relative to the node (`subject`, `sender.from_name`, `value.add`;
//! for the trigger node, relative to `trigger`, with `type` the criterion).
//! A `disabled` field (the SMS counter, `sms_counter`) is shown, edits
//! nothing, and is not written back.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::picker_options::Picker;
use super::{
    Action, ActionStyle, AutomationRecord, Ctx, Label, Names, PICKER_LIMIT, Timestamp, ViewRef,
    clip, humanize, load_automation,
};
use crate::error::{Error, Result};
use crate::model::automation::{
    Assignee, AutomationDefinition, CompareOp, Condition, DelayUnit, END_NODE, EmailEngagement,
    Flow, GoalKind, SettableProperty, Step, StepEngagement, StepKind, TRIGGER_NODE, Trigger,
    Unenrollment, branch_end_node,
};
use crate::model::contact::{DERIVED_PROPERTIES, KNOWN_PROPERTIES, LEAD_SOURCES};
use crate::schedule::{BirthdayOffset, RunWindow, Weekday};

/// Parameters of `automation_builder`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BuilderParams {
    /// The automation to edit; absent opens the create wizard's empty state.
    #[serde(default)]
    pub automation_id: Option<String>,
    /// The tab shown (default `build`). Performance is its own view, `automation_performance`.
    #[serde(default)]
    pub tab: Option<BuilderTab>,
    /// The canvas node whose configuration panel is shown: `trigger` (the
    /// default), a step id, or an End node id (`end`, `<branch>.yes.end`, `<branch>.no.end`).
    #[serde(default)]
    pub selected_node: Option<String>,
    /// The definition as the UI holds it, with changes not saved yet (a
    /// criterion just chosen, a step just dragged from the palette, with an
    /// id the UI gives it): the canvas and the panels are built from it
    /// instead of the saved version, so that a new node's fields, options
    /// and limits come from the module. It is not validated (saving does
    /// that), but its step ids must be present and distinct.
    #[serde(default)]
    pub draft: Option<AutomationDefinition>,
}

/// The builder's editing tabs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BuilderTab {
    /// General, run window, unenrollment.
    Details,
    /// Palette, canvas, config panel.
    Build,
}

/// Whether the builder creates or edits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BuilderMode {
    /// The 2-step create wizard (Details → Build); nothing saved yet.
    Create,
    /// An existing automation.
    Edit,
}

/// The Automation Builder screen.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct BuilderView {
    /// Create wizard or edit.
    pub mode: BuilderMode,
    /// The automation (null in the wizard).
    pub automation_id: Option<String>,
    /// The top bar: back arrow, title (= name), Update.
    pub header: Header,
    /// Edit mode: Details, Build, Performance. Empty in the wizard.
    pub tabs: Vec<TabItem>,
    /// Wizard: the 2-step rail Details → Build. Empty in edit mode.
    pub step_rail: Vec<RailStep>,
    /// The tab shown.
    pub active_tab: BuilderTab,
    /// The Details tab.
    pub details: DetailsTab,
    /// The Build tab.
    pub build: BuildTab,
    /// Wizard footer buttons (Previous, Next / Save automation). Empty in edit mode.
    pub footer: Vec<Action>,
    /// The current version's definition as stored (null in the wizard):
    /// what `automation.update` takes whole. The UI edits a copy through
    /// the fields' paths and sends it back, so nothing the screen does not
    /// show (a plugin step's `plugin_id`, a definition written through the
    /// API) is lost on save.
    pub definition: Option<AutomationDefinition>,
}

/// The builder's top bar (also used by the Performance view).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Header {
    /// Breadcrumb ("CRM", "Automation").
    pub breadcrumb: Vec<String>,
    /// The back arrow. On the builder's editing tabs it saves like Update
    /// (`command`), then returns to the list (`view`).
    pub back: Action,
    /// The title: the automation's name (kept in sync with the Name field).
    pub title: String,
    /// Placeholder while the title is empty.
    pub title_placeholder: String,
    /// Status badge (null in the wizard).
    pub status: Option<Label>,
    /// The Update button: saves from any tab and returns to the list (null in the wizard).
    pub update: Option<Action>,
}

/// A tab of the builder.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct TabItem {
    /// `details`, `build` or `performance`.
    pub id: String,
    /// Label.
    pub label: String,
    /// The tab shown.
    pub selected: bool,
    /// The view the tab shows.
    pub view: ViewRef,
}

/// State of a wizard step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RailState {
    /// Already passed.
    Done,
    /// Shown now.
    Current,
    /// Still ahead.
    Upcoming,
}

/// A step of the wizard rail.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct RailStep {
    /// `details` or `build`.
    pub id: String,
    /// 1 or 2.
    pub number: u32,
    /// Label.
    pub label: String,
    /// Done, current or upcoming.
    pub state: RailState,
}

/// The Details tab.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct DetailsTab {
    /// Page heading ("Automation Details").
    pub title: String,
    /// General: name, goal, notes.
    pub general: FormSection,
    /// "When can this automation run?"
    pub run_window: RunWindowSection,
    /// Unenrollment: the three toggles.
    pub unenrollment: FormSection,
    /// Status (null in the wizard).
    pub status: Option<Label>,
    /// Staff member who created it (null in the wizard).
    pub entered_by: Option<String>,
    /// When it was created (null in the wizard).
    pub created: Option<Timestamp>,
    /// When it was last saved or changed status (null in the wizard).
    pub last_updated: Option<Timestamp>,
    /// Current definition version (null in the wizard).
    pub version: Option<i64>,
}

/// A titled group of fields.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct FormSection {
    /// Stable id.
    pub id: String,
    /// Heading.
    pub title: String,
    /// Line under the heading.
    pub description: String,
    /// The fields, in order.
    pub fields: Vec<Field>,
    /// Helper text under the fields.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The "When can this automation run?" section.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct RunWindowSection {
    /// Stable id (`run_window`).
    pub id: String,
    /// Heading.
    pub title: String,
    /// Line under the heading.
    pub description: String,
    /// The mode choice: `any_time` or `specific_hours`.
    pub mode: Field,
    /// The seven weekday rows (Monday first), shown when the mode is `specific_hours`.
    pub days: Vec<DayRow>,
    /// Whether the day rows are shown (mode is `specific_hours`).
    pub days_visible: bool,
    /// The practice's IANA time zone the hours are in.
    pub time_zone: String,
    /// Helper text under the rows.
    pub helper: String,
    /// True when the automation has no window of its own and follows the module default.
    pub uses_module_default: bool,
}

/// One weekday row of the run-window panel.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct DayRow {
    /// `mon` … `sun`.
    pub day: String,
    /// "Monday" … "Sunday".
    pub label: String,
    /// On/off.
    pub enabled: bool,
    /// Start "HH:MM".
    pub start: String,
    /// End "HH:MM" (`24:00` = end of day).
    pub end: String,
}

/// The Build tab.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct BuildTab {
    /// The ADD STEP palette.
    pub palette: Palette,
    /// The canvas tree.
    pub canvas: Canvas,
    /// The selected node's id.
    pub selected_node: String,
    /// The right rail: the selected node's configuration.
    pub config_panel: ConfigPanel,
    /// The helper note at the left ("Enrollment: …").
    pub helper: String,
}

/// The ADD STEP palette (also the + button's add-step picker).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Palette {
    /// Heading ("ADD STEP").
    pub title: String,
    /// Communication (2), Flow control (2), CRM actions (3).
    pub groups: Vec<PaletteGroup>,
}

/// A group of step types.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct PaletteGroup {
    /// `communication`, `flow_control` or `crm_actions`.
    pub id: String,
    /// Label.
    pub label: String,
    /// The step types.
    pub items: Vec<PaletteItem>,
}

/// A step type the palette can add.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct PaletteItem {
    /// The step `type` of the definition (`send_email`, …; `custom` for a
    /// plugin's step type).
    #[serde(rename = "type")]
    pub step_type: String,
    /// Label.
    pub label: String,
    /// Font Awesome icon name.
    pub icon: String,
    /// What the step does.
    pub description: String,
    /// Custom steps: the plugin (the definition's `plugin_id`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plugin_id: Option<String>,
    /// Custom steps: the plugin's step type (the definition's `step_type`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub custom_type: Option<String>,
    /// Custom steps: the plugin's name, shown as the source.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plugin_name: Option<String>,
    /// Custom steps: true when it splits into YES / NO paths.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub branches: bool,
}

/// The canvas: the trigger, then the main path; branches nest their paths.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Canvas {
    /// The trigger node, then the main path's steps, then its End (a path that
    /// ends in an If/then branch has no End of its own: each branch path does).
    pub nodes: Vec<CanvasNode>,
}

/// A node card of the canvas.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct CanvasNode {
    /// `trigger`, a step id, or an End id (`end`, `<branch>.yes.end`, `<branch>.no.end`).
    pub id: String,
    /// `trigger`, a step type (`send_email`, …, `branch`) or `end`.
    #[serde(rename = "type")]
    pub node_type: String,
    /// Card title (for the trigger: the criterion's label).
    pub title: String,
    /// Card summary (for the trigger: its secondary control).
    pub summary: String,
    /// Font Awesome icon name.
    pub icon: String,
    /// The selected node (blue outline).
    pub selected: bool,
    /// Whether the node can be deleted (steps only).
    pub deletable: bool,
    /// Branches: the YES path, ending in its End node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub yes: Option<Vec<CanvasNode>>,
    /// Branches: the NO path, ending in its End node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no: Option<Vec<CanvasNode>>,
}

/// The Node Configuration Panel of the selected node.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ConfigPanel {
    /// The node's id.
    pub node_id: String,
    /// The node's type.
    pub node_type: String,
    /// Heading ("Enrollment trigger", "Send email", …).
    pub title: String,
    /// Explanation under the heading.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The fields, in order.
    pub fields: Vec<Field>,
    /// Panel buttons (e.g. Preview / Open editor on an email).
    pub actions: Vec<Action>,
    /// Whether the node can be deleted.
    pub deletable: bool,
}

/// The kind of input a field renders as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FieldKind {
    /// One line of text.
    Text,
    /// Several lines of text.
    Textarea,
    /// A dropdown of `options`.
    Select,
    /// A number.
    Number,
    /// On/off.
    Toggle,
    /// A picker of the module's lists (`options`).
    ListPicker,
    /// A picker of staff members and queues (`options` lists the fixed choices;
    /// the host adds its staff directory).
    StaffPicker,
    /// A list of tags: the value is a JSON array of strings.
    Tags,
    /// An If/then condition builder; `options` are the subjects it can test.
    Condition,
    /// Read-only SMS counter: encoding, characters, segments and credits of the text.
    SmsCounter,
}

/// A form field.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Field {
    /// Path of the definition field it edits (dot-separated, relative to the
    /// node); a `disabled` field edits nothing and is not written back.
    pub id: String,
    /// Label.
    pub label: String,
    /// Input kind.
    pub kind: FieldKind,
    /// Current value as it is stored in the definition (null when unset).
    pub value: Value,
    /// Choices of select-like kinds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub options: Option<Vec<FieldOption>>,
    /// Whether a value is required to save.
    pub required: bool,
    /// Help text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
    /// Placeholder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub placeholder: Option<String>,
    /// Smallest number allowed (number fields) or shortest length (text fields).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<i64>,
    /// Largest number allowed (number fields) or longest length (text fields).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<i64>,
    /// Shown but not editable.
    pub disabled: bool,
    /// A picker whose `options` were cut at the first 1,000 by name (a
    /// practice with more lists, forms or templates): the
    /// `picker_options` view finds the others by name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search: Option<PickerSearch>,
}

/// Where a picker cut at the first 1,000 by name finds the others.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct PickerSearch {
    /// `picker_options`.
    pub view: String,
    /// Its parameters; add `query` (part of the name) and `limit`.
    pub params: PickerSearchParams,
    /// "Showing the first 1,000 by name. Search to find the others."
    pub note: String,
}

/// The parameters of a [`PickerSearch`].
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct PickerSearchParams {
    /// Which picker.
    pub picker: Picker,
}

impl Field {
    fn new(id: &str, label: &str, kind: FieldKind, value: Value) -> Self {
        Field {
            id: id.to_string(),
            label: label.to_string(),
            kind,
            value,
            options: None,
            required: false,
            help: None,
            placeholder: None,
            min: None,
            max: None,
            disabled: false,
            search: None,
        }
    }

    /// Names the `picker_options` search when `picker`'s choices were cut.
    fn searchable(mut self, names: &Names, picker: Picker) -> Self {
        if names.is_cut(picker) {
            self.search = Some(PickerSearch {
                view: "picker_options".into(),
                params: PickerSearchParams { picker },
                note: format!(
                    "Showing the first {} by name. Search to find the others.",
                    super::fmt_count(PICKER_LIMIT as u64)
                ),
            });
        }
        self
    }

    fn required(mut self) -> Self {
        self.required = true;
        self
    }

    /// Required only when the step writes its content inline (no saved
    /// template chosen): a template brings its own.
    fn required_inline(mut self, template_id: &Option<String>) -> Self {
        self.required = template_id.is_none();
        self
    }

    fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    fn placeholder(mut self, p: impl Into<String>) -> Self {
        self.placeholder = Some(p.into());
        self
    }

    fn options(mut self, options: Vec<FieldOption>) -> Self {
        self.options = Some(options);
        self
    }

    fn range(mut self, min: i64, max: i64) -> Self {
        self.min = Some(min);
        self.max = Some(max);
        self
    }
}

/// A choice of a select-like field.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct FieldOption {
    /// The value stored when chosen (null = "any" / "none").
    pub value: Value,
    /// Label.
    pub label: String,
    /// Group heading the option is listed under.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// A line explaining the option.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Of an If/then property subject: the comparisons its type has (saving
    /// refuses the others).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operators: Option<Vec<crate::model::automation::CompareOp>>,
    /// Of an If/then property subject that takes fixed values (Status, Lead
    /// Source, a subscription, Insurance Verification, a yes/no property):
    /// those values, for a select in place of free text. A stored value
    /// not among them (a lead source of the host's own) is shown as text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<FieldOption>>,
}

pub(crate) fn opt(value: Value, label: &str) -> FieldOption {
    FieldOption {
        value,
        label: label.to_string(),
        group: None,
        description: None,
        operators: None,
        values: None,
    }
}

fn grouped(value: Value, label: &str, group: &str) -> FieldOption {
    FieldOption {
        group: Some(group.to_string()),
        ..opt(value, label)
    }
}

// ---------------------------------------------------------------------------
// Catalog texts
// ---------------------------------------------------------------------------

/// The five trigger themes, in order.
const THEMES: [(&str, &str); 5] = [
    ("lifecycle", "Lifecycle"),
    ("forms_lists", "Forms & lists"),
    ("properties", "Properties"),
    ("engagement", "Engagement"),
    ("date_based", "Date-based"),
];

/// The ten criteria: id, label, theme id, what fires it.
const CRITERIA: [(&str, &str, &str, &str); 10] = [
    (
        "contact_created",
        "Contact created",
        "lifecycle",
        "Fires once, the first time PracticeEHR sees this person: a website form, the front desk typing them in, a walk-in added at check-in, or a spreadsheet import.",
    ),
    (
        "status_changed_to_patient",
        "Status changed to Patient",
        "lifecycle",
        "Fires when Status flips from Lead to Patient, automatically on the contact's first booked appointment. No secondary control: the event itself is the rule.",
    ),
    (
        "form_submitted",
        "Form submitted",
        "forms_lists",
        "Fires on each submission of the form.",
    ),
    (
        "added_to_list",
        "Added to list",
        "forms_lists",
        "Fires each time the contact joins the list: added by staff (list.add_contacts) or by an automation's Add to list step.",
    ),
    (
        "removed_from_list",
        "Removed from list",
        "forms_lists",
        "Fires each time the contact leaves the list (removed by staff).",
    ),
    (
        "property_changed",
        "Property changed",
        "properties",
        "Fires on any change of the property, or only when it changes to the new value.",
    ),
    (
        "email_engagement",
        "Email engagement",
        "engagement",
        "Fires on an open (pixel-tracked) or a click (link-wrapped) of a marketing email.",
    ),
    (
        "sms_reply",
        "SMS reply",
        "engagement",
        "Fires on any reply to a marketing SMS except STOP-type keywords: those go to the SMS Subscription audit log and never fire this trigger.",
    ),
    (
        "birthday",
        "Birthday",
        "date_based",
        "Fires yearly around the contact's DOB, at most once a year; 29 February birthdays use 28 February in non-leap years.",
    ),
    (
        "inactive_for_days",
        "Inactive for N days",
        "date_based",
        "Fires when the contact's Last Activity becomes older than N days; again only after new activity and another N days.",
    ),
];

fn criterion_label(id: &str) -> &'static str {
    CRITERIA
        .iter()
        .find(|c| c.0 == id)
        .map(|c| c.1)
        .unwrap_or("Enrollment trigger")
}

fn criterion_help(id: &str) -> &'static str {
    CRITERIA
        .iter()
        .find(|c| c.0 == id)
        .map(|c| c.3)
        .unwrap_or("")
}

/// Palette: group id, group label, items (type, label, icon, description).
/// A palette item: step type, label, icon, description.
type PaletteEntry = (&'static str, &'static str, &'static str, &'static str);

const PALETTE: [(&str, &str, &[PaletteEntry]); 3] = [
    (
        "communication",
        "Communication",
        &[
            (
                "send_email",
                "Send email",
                "fa-envelope",
                "Send a marketing email: a saved template or inline subject and body.",
            ),
            (
                "send_sms",
                "Send SMS",
                "fa-comment-dots",
                "Send a text message; \"Reply STOP to opt out\" is appended automatically.",
            ),
        ],
    ),
    (
        "flow_control",
        "Flow control",
        &[
            (
                "delay",
                "Delay",
                "fa-clock",
                "Wait minutes, hours, days or weeks before the next step.",
            ),
            (
                "branch",
                "If / then branch",
                "fa-code-branch",
                "Split the canvas into YES and NO paths on a condition.",
            ),
        ],
    ),
    (
        "crm_actions",
        "CRM actions",
        &[
            (
                "create_task",
                "Create task",
                "fa-clipboard-check",
                "Drop a task in a staff member's or the front desk's queue.",
            ),
            (
                "set_property",
                "Set property",
                "fa-user-pen",
                "Write a property back to the contact's record.",
            ),
            (
                "add_to_list",
                "Add to list",
                "fa-list-ul",
                "Add the contact to a static list.",
            ),
        ],
    ),
];

pub(crate) fn step_icon(step_type: &str) -> &'static str {
    PALETTE
        .iter()
        .flat_map(|g| g.2.iter())
        .find(|i| i.0 == step_type)
        .map(|i| i.2)
        .unwrap_or("fa-puzzle-piece")
}

const TRIGGER_ICON: &str = "fa-bolt";
const END_ICON: &str = "fa-flag-checkered";

fn goal_description(g: GoalKind) -> &'static str {
    match g {
        GoalKind::BookAppointment => {
            "First appointment, any provider: Status flips Lead → Patient."
        }
        GoalKind::RebookAppointment => {
            "An existing Patient books another appointment after enrolling."
        }
        GoalKind::PatientReactivation => {
            "A contact whose last own activity (a visit, booking, form, open, click or reply) is 90 calendar days old or more does something again."
        }
        GoalKind::ReviewSubmitted => {
            "A review is attached to the contact (Google, internal, intake form)."
        }
        GoalKind::VerificationComplete => "Insurance verification flips to Verified.",
        GoalKind::PortalActivated => "The contact activates their patient portal account.",
        GoalKind::Engagement => "Any open, click, reply, form submission or page visit.",
    }
}

/// The label of a contact property.
pub(crate) fn property_label(name: &str) -> String {
    let known = match name {
        "first_name" => "First name",
        "last_name" => "Last name",
        "email" => "Email",
        "phone" => "Phone",
        "dob" => "Date of birth",
        "status" => "Status",
        "lead_source" => "Lead Source",
        "owner" => "Contact Owner",
        "provider" => "Provider",
        "sms_subscription" => "SMS Subscription",
        "email_subscription" => "Email Subscription",
        "tags" => "Tags",
        "default_clinic" => "Default clinic",
        "default_practitioner" => "Default practitioner",
        "marketing_only" => "Marketing only",
        "recall_scheduled" => "Recall scheduled",
        "no_show_count" => "No-show count",
        "balance" => "Balance",
        "benefits_remaining" => "Benefits remaining",
        "time_zone" => "Time zone",
        "last_activity" => "Last Activity",
        "created_at" => "Created",
        "days_since_last_activity" => "Days since last activity",
        "days_since_created" => "Days since created",
        "age" => "Age",
        "insurance_verification" => "Insurance verification",
        "portal_active" => "Patient portal active",
        "email_undeliverable" => "Email address that hard-bounced",
        "sms_undeliverable" => "Mobile number that hard-bounced",
        other => return humanize(other),
    };
    known.to_string()
}

/// The label of a stored property value ("patient" → "Patient").
fn value_label(property: &str, v: &Value) -> String {
    match v {
        Value::String(s) => match (property, s.as_str()) {
            ("status", "lead") => "Lead".into(),
            ("status", "patient") => "Patient".into(),
            ("sms_subscription" | "email_subscription", s) => humanize(s),
            ("lead_source", s) => source_label(s),
            _ => clip(s, 60),
        },
        Value::Bool(true) => "Yes".into(),
        Value::Bool(false) => "No".into(),
        Value::Number(n) => n.to_string(),
        Value::Object(o) => o
            .get("name")
            .or_else(|| o.get("id"))
            .and_then(Value::as_str)
            .map(|s| clip(s, 60))
            .unwrap_or_else(|| "a value".into()),
        Value::Array(items) => items
            .iter()
            .map(|i| value_label(property, i))
            .collect::<Vec<_>>()
            .join(", "),
        Value::Null => "nothing".into(),
    }
}

fn source_label(s: &str) -> String {
    match crate::model::contact::fold_source(s).as_str() {
        "website_form" => "Website form".into(),
        "walk_in" => "Walk-in".into(),
        "manual_entry" => "Manual entry".into(),
        "import" => "Import".into(),
        _ => humanize(s),
    }
}

fn offset_label(o: BirthdayOffset) -> &'static str {
    match o {
        BirthdayOffset::SevenDaysBefore => "7 days before",
        BirthdayOffset::OneDayBefore => "1 day before",
        BirthdayOffset::OnTheDay => "On the day",
        BirthdayOffset::OneDayAfter => "1 day after",
        BirthdayOffset::SevenDaysAfter => "7 days after",
    }
}

const OFFSETS: [BirthdayOffset; 5] = [
    BirthdayOffset::SevenDaysBefore,
    BirthdayOffset::OneDayBefore,
    BirthdayOffset::OnTheDay,
    BirthdayOffset::OneDayAfter,
    BirthdayOffset::SevenDaysAfter,
];

fn engagement_label(e: EmailEngagement) -> &'static str {
    match e {
        EmailEngagement::Opened => "Opened",
        EmailEngagement::Clicked => "Clicked",
        EmailEngagement::Either => "Either",
    }
}

fn to_value<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn day_label(d: Weekday) -> &'static str {
    match d {
        Weekday::Mon => "Monday",
        Weekday::Tue => "Tuesday",
        Weekday::Wed => "Wednesday",
        Weekday::Thu => "Thursday",
        Weekday::Fri => "Friday",
        Weekday::Sat => "Saturday",
        Weekday::Sun => "Sunday",
    }
}

// ---------------------------------------------------------------------------
// The view
// ---------------------------------------------------------------------------

pub(crate) fn build(ctx: &Ctx<'_>, p: BuilderParams) -> Result<BuilderView> {
    let rec = match &p.automation_id {
        Some(id) => Some(load_automation(ctx.conn, id)?),
        None => None,
    };
    let mut names = Names::load(ctx.conn)?;
    let tab = p.tab.unwrap_or(BuilderTab::Build);
    let selected = p.selected_node.unwrap_or_else(|| TRIGGER_NODE.to_string());
    crate::model::contact::validate_id_up_to("params: selected_node", &selected, 300)?;
    let draft = match p.draft {
        Some(d) => {
            let ids = d.step_ids();
            let distinct: std::collections::HashSet<&String> = ids.iter().collect();
            if ids.iter().any(|id| id.is_empty()) || distinct.len() != ids.len() {
                return Err(Error::invalid(
                    "params: draft: every step needs an id of its own (the UI gives new steps one)",
                ));
            }
            for id in &ids {
                crate::model::contact::validate_id_up_to("params: draft: step id", id, 300)?;
            }
            let flow = Flow::new(&d);
            Some((d, flow))
        }
        None => None,
    };
    let def = match &draft {
        Some((d, _)) => Some(d),
        None => rec.as_ref().map(|r| &r.current.def),
    };
    let flow = match &draft {
        Some((_, f)) => Some(f),
        None => rec.as_ref().map(|r| &r.current.flow),
    };
    if let Some(def) = def {
        names.include(ctx.conn, def)?;
    }

    let canvas = Canvas {
        nodes: canvas_nodes(def, &names, flow, &selected),
    };
    let config_panel = config_panel(
        rec.as_ref().map(|r| r.id.as_str()),
        def,
        flow,
        &names,
        &selected,
    )?;
    let mode = if rec.is_some() {
        BuilderMode::Edit
    } else {
        BuilderMode::Create
    };
    let (tabs, step_rail, footer) = match &rec {
        Some(r) => (
            tabs(
                &r.id,
                if tab == BuilderTab::Details {
                    "details"
                } else {
                    "build"
                },
            ),
            Vec::new(),
            Vec::new(),
        ),
        None => (Vec::new(), rail(tab), wizard_footer(tab)),
    };
    Ok(BuilderView {
        mode,
        automation_id: rec.as_ref().map(|r| r.id.clone()),
        header: header(rec.as_ref(), true),
        tabs,
        step_rail,
        active_tab: tab,
        details: details(ctx, rec.as_ref()),
        build: BuildTab {
            palette: palette(&names),
            canvas,
            selected_node: selected,
            config_panel,
            helper: "Enrollment: contacts enter at the trigger when it fires, then walk the steps top to bottom. Every path ends at an End node; reaching it counts as Completed.".into(),
        },
        footer,
        definition: rec.as_ref().map(|r| r.current.def.clone()),
    })
}

/// The top bar of an automation's builder (or of the wizard when `rec` is
/// None). With `back_saves`, the back arrow saves like Update before
/// returning to the list (the builder's editing tabs); otherwise it only
/// returns (the Performance tab, which edits nothing).
pub(crate) fn header(rec: Option<&AutomationRecord>, back_saves: bool) -> Header {
    let list = ViewRef::new("automation_list", None, None);
    match rec {
        Some(r) => Header {
            breadcrumb: vec!["CRM".into(), "Automation".into()],
            back: {
                let back = Action::new("back", "Back to automations", Some("fa-arrow-left"))
                    .view(list.clone());
                if back_saves {
                    back.command("automation.update", Some(&r.id))
                } else {
                    back
                }
            },
            title: r.name.clone(),
            title_placeholder: "Untitled automation".into(),
            status: Some(Label::status(r.status)),
            update: Some(
                Action::new("update", "Update", Some("fa-floppy-disk"))
                    .style(ActionStyle::Primary)
                    .command("automation.update", Some(&r.id))
                    .view(list),
            ),
        },
        None => Header {
            breadcrumb: vec!["CRM".into(), "Automation".into()],
            back: Action::new("back", "Back to automations", Some("fa-arrow-left")).view(list),
            title: String::new(),
            title_placeholder: "Untitled automation".into(),
            status: None,
            update: None,
        },
    }
}

/// The three tabs of a saved automation.
pub(crate) fn tabs(automation_id: &str, selected: &str) -> Vec<TabItem> {
    [
        ("details", "Details", "automation_builder"),
        ("build", "Build", "automation_builder"),
        ("performance", "Performance", "automation_performance"),
    ]
    .into_iter()
    .map(|(id, label, view)| TabItem {
        id: id.into(),
        label: label.into(),
        selected: id == selected,
        view: ViewRef::new(
            view,
            Some(automation_id),
            (view == "automation_builder").then_some(id),
        ),
    })
    .collect()
}

fn rail(tab: BuilderTab) -> Vec<RailStep> {
    let on_build = tab == BuilderTab::Build;
    vec![
        RailStep {
            id: "details".into(),
            number: 1,
            label: "Details".into(),
            state: if on_build {
                RailState::Done
            } else {
                RailState::Current
            },
        },
        RailStep {
            id: "build".into(),
            number: 2,
            label: "Build".into(),
            state: if on_build {
                RailState::Current
            } else {
                RailState::Upcoming
            },
        },
    ]
}

fn wizard_footer(tab: BuilderTab) -> Vec<Action> {
    match tab {
        BuilderTab::Details => vec![
            Action::new("previous", "Previous", Some("fa-arrow-left")).disabled(true),
            Action::new("next", "Next", Some("fa-arrow-right")).style(ActionStyle::Primary),
        ],
        BuilderTab::Build => vec![
            Action::new("previous", "Previous", Some("fa-arrow-left")),
            Action::new("save", "Save automation", Some("fa-floppy-disk"))
                .style(ActionStyle::Primary)
                .command("automation.create", None),
        ],
    }
}

/// The palette: the built-in step types, then the custom step types of the
/// enabled step plugins in the group each declares.
fn palette(names: &Names) -> Palette {
    Palette {
        title: "ADD STEP".into(),
        groups: PALETTE
            .iter()
            .map(|(id, label, items)| PaletteGroup {
                id: id.to_string(),
                label: label.to_string(),
                items: items
                    .iter()
                    .map(|(t, l, i, d)| PaletteItem {
                        step_type: t.to_string(),
                        label: l.to_string(),
                        icon: i.to_string(),
                        description: d.to_string(),
                        plugin_id: None,
                        custom_type: None,
                        plugin_name: None,
                        branches: false,
                    })
                    .chain(
                        names
                            .step_plugins
                            .iter()
                            .filter(|(_, enabled)| *enabled)
                            .flat_map(|(d, _)| d.step_types.iter().map(move |t| (d, t)))
                            .filter(|(_, t)| t.palette_group == *id)
                            .map(|(d, t)| PaletteItem {
                                step_type: "custom".into(),
                                label: t.display_name.clone(),
                                icon: t.icon.clone(),
                                description: t.description.clone(),
                                plugin_id: Some(d.id.clone()),
                                custom_type: Some(t.id.clone()),
                                plugin_name: Some(d.name.clone()),
                                branches: t.branches(),
                            }),
                    )
                    .collect(),
            })
            .collect(),
    }
}

// ---------------------------------------------------------------------------
// Details tab
// ---------------------------------------------------------------------------

fn details(ctx: &Ctx<'_>, rec: Option<&AutomationRecord>) -> DetailsTab {
    let def = rec.map(|r| &r.current.def);
    let name = def.map(|d| d.name.clone()).unwrap_or_default();
    let goal = def.and_then(|d| d.goal);
    let lookback = def.map(|d| d.goal_lookback_days).unwrap_or(30);
    let mut goal_options = vec![FieldOption {
        description: Some(
            "Without a goal, conversion only counts leads whose Status changed to Patient.".into(),
        ),
        ..opt(Value::Null, "No goal")
    }];
    goal_options.extend(GoalKind::ALL.iter().map(|g| FieldOption {
        description: Some(goal_description(*g).into()),
        ..opt(Value::String(g.id().into()), g.label())
    }));
    let general = FormSection {
        id: "general".into(),
        title: "General".into(),
        description: "Name your automation, set a goal, and add context for your team.".into(),
        fields: vec![
            Field::new("name", "Automation name", FieldKind::Text, json!(name))
                .required()
                .placeholder("e.g. New lead welcome series")
                .help("Kept in sync with the title in the top bar.")
                .range(1, 200),
            Field::new("goal", "Goal", FieldKind::Select, to_value(&goal))
                .options(goal_options)
                .help(format!(
                    "The win condition. Counted when a contact reaches it within {lookback} days of enrolling; reaching it is a measurement, not an exit, unless \"Goal met\" is on."
                )),
            Field::new(
                "goal_lookback_days",
                "Goal lookback (days)",
                FieldKind::Number,
                json!(lookback),
            )
            .required()
            .help("How long after enrolling a contact's goal still counts.")
            .range(1, 365),
            Field::new(
                "notes",
                "Notes for your team",
                FieldKind::Textarea,
                json!(def.map(|d| d.notes.clone()).unwrap_or_default()),
            )
            .placeholder("Context, audience, the result you want")
            .range(0, 5000),
        ],
        note: None,
    };

    let default_window = &ctx.settings.doc.default_run_window;
    let own = def.and_then(|d| d.run_window.as_ref());
    let window = own.unwrap_or(default_window);
    let rows_source = match window {
        RunWindow::SpecificHours { .. } => window.clone(),
        RunWindow::AnyTime {} => match default_window {
            RunWindow::SpecificHours { .. } => default_window.clone(),
            RunWindow::AnyTime {} => RunWindow::business_hours(),
        },
    };
    let days = match rows_source {
        RunWindow::SpecificHours { days } => Weekday::ALL
            .iter()
            .filter_map(|d| days.iter().find(|r| r.day == *d))
            .map(|r| DayRow {
                day: r.day.as_str().into(),
                label: day_label(r.day).into(),
                enabled: r.enabled,
                start: r.start.to_string(),
                end: r.end.to_string(),
            })
            .collect(),
        RunWindow::AnyTime {} => Vec::new(),
    };
    let specific = matches!(window, RunWindow::SpecificHours { .. });
    let tz = ctx.settings.doc.time_zone.clone();
    let run_window = RunWindowSection {
        id: "run_window".into(),
        title: "When can this automation run?".into(),
        description: "Pick the days and times this automation is allowed to send messages and execute actions for enrolled contacts.".into(),
        mode: Field::new(
            "run_window.mode",
            "Run",
            FieldKind::Select,
            json!(if specific { "specific_hours" } else { "any_time" }),
        )
        .options(vec![
            opt(json!("any_time"), "Any time"),
            opt(json!("specific_hours"), "Only during specific hours"),
        ])
        .required(),
        days,
        days_visible: specific,
        helper: format!(
            "Times are in the practice's time zone ({tz}). A step that falls due outside these hours waits for the next open minute."
        ),
        time_zone: tz,
        uses_module_default: own.is_none(),
    };

    let u = def.map(|d| d.unenrollment).unwrap_or_default();
    let unenrollment = FormSection {
        id: "unenrollment".into(),
        title: "Unenrollment".into(),
        description: "When should contacts exit this automation automatically?".into(),
        fields: unenrollment_fields(u),
        note: Some(
            "A global opt-out (STOP or unsubscribe at account level) always removes the contact."
                .into(),
        ),
    };

    DetailsTab {
        title: "Automation Details".into(),
        general,
        run_window,
        unenrollment,
        status: rec.map(|r| Label::status(r.status)),
        entered_by: rec.map(|r| r.entered_by.clone()),
        created: rec.map(|r| Timestamp::new(ctx, r.created_at)),
        last_updated: rec.map(|r| Timestamp::new(ctx, r.updated_at)),
        version: rec.map(|r| r.current.number),
    }
}

fn unenrollment_fields(u: Unenrollment) -> Vec<Field> {
    vec![
        Field::new(
            "unenrollment.goal_met",
            "Goal met",
            FieldKind::Toggle,
            json!(u.goal_met),
        )
        .help("The contact exits as soon as they reach the goal. Off by default: reaching the goal is a measurement, not an exit. Needs a goal."),
        Field::new(
            "unenrollment.email_reply",
            "Email reply",
            FieldKind::Toggle,
            json!(u.email_reply),
        )
        .help("The contact exits when they reply to an email this automation sent them since they enrolled."),
        Field::new(
            "unenrollment.sms_opt_out",
            "SMS opt-out",
            FieldKind::Toggle,
            json!(u.sms_opt_out),
        )
        .help("STOP reply removes the contact from the automation."),
    ]
}

// ---------------------------------------------------------------------------
// Canvas
// ---------------------------------------------------------------------------

fn canvas_nodes(
    def: Option<&AutomationDefinition>,
    names: &Names,
    flow: Option<&Flow>,
    selected: &str,
) -> Vec<CanvasNode> {
    let trigger = def.map(|d| &d.trigger);
    let mut nodes = vec![CanvasNode {
        id: TRIGGER_NODE.into(),
        node_type: "trigger".into(),
        title: trigger
            .map(|t| criterion_label(t.kind_id()).to_string())
            .unwrap_or_else(|| "Enrollment trigger".into()),
        summary: trigger
            .map(|t| trigger_summary(t, names))
            .unwrap_or_else(|| "Choose what enrolls contacts".into()),
        icon: TRIGGER_ICON.into(),
        selected: selected == TRIGGER_NODE,
        deletable: false,
        yes: None,
        no: None,
    }];
    let steps: &[Step] = def.map(|d| d.steps.as_slice()).unwrap_or(&[]);
    nodes.extend(chain(steps, END_NODE, names, flow, selected));
    nodes
}

fn chain(
    steps: &[Step],
    end_id: &str,
    names: &Names,
    flow: Option<&Flow>,
    selected: &str,
) -> Vec<CanvasNode> {
    let mut out: Vec<CanvasNode> = steps
        .iter()
        .map(|s| step_node(s, names, flow, selected))
        .collect();
    let ends_in_branch = steps.last().and_then(|s| s.kind.paths()).is_some();
    if !ends_in_branch {
        out.push(CanvasNode {
            id: end_id.into(),
            node_type: "end".into(),
            title: "End of automation".into(),
            summary: "Reaching here counts as Completed".into(),
            icon: END_ICON.into(),
            selected: selected == end_id,
            deletable: false,
            yes: None,
            no: None,
        });
    }
    out
}

fn step_node(s: &Step, names: &Names, flow: Option<&Flow>, selected: &str) -> CanvasNode {
    let (yes, no) = match s.kind.paths() {
        Some((yes, no)) => (
            Some(chain(
                yes,
                &branch_end_node(&s.id, true),
                names,
                flow,
                selected,
            )),
            Some(chain(
                no,
                &branch_end_node(&s.id, false),
                names,
                flow,
                selected,
            )),
        ),
        _ => (None, None),
    };
    let custom = match &s.kind {
        StepKind::Custom {
            plugin_id,
            step_type,
            ..
        } => names.step_type(plugin_id, step_type),
        _ => None,
    };
    CanvasNode {
        id: s.id.clone(),
        node_type: s.kind.type_id().into(),
        title: names.step_title(s),
        summary: step_summary(s, names, flow),
        icon: custom.map_or_else(
            || step_icon(s.kind.type_id()).into(),
            |(t, _)| t.icon.clone(),
        ),
        selected: selected == s.id,
        deletable: true,
        yes,
        no,
    }
}

fn trigger_summary(t: &Trigger, names: &Names) -> String {
    match t {
        Trigger::ContactCreated { source } => format!(
            "Source: {}",
            source
                .as_deref()
                .map(source_label)
                .unwrap_or_else(|| "Any source".into())
        ),
        Trigger::StatusChangedToPatient {} => "Lead → Patient".into(),
        Trigger::FormSubmitted { form_id } => format!(
            "Form: {}",
            form_id
                .as_deref()
                .map(|f| names.form(f))
                .unwrap_or_else(|| "Any form".into())
        ),
        Trigger::AddedToList { list_id } | Trigger::RemovedFromList { list_id } => {
            format!("List: {}", names.list(list_id))
        }
        Trigger::PropertyChanged {
            property,
            new_value,
        } => match new_value {
            Some(v) => format!(
                "{} changes to {}",
                property_label(property),
                value_label(property, v)
            ),
            None => format!("{}: any change", property_label(property)),
        },
        Trigger::EmailEngagement {
            engagement,
            email_id,
        } => {
            let what = match engagement {
                EmailEngagement::Opened => "Opened",
                EmailEngagement::Clicked => "Clicked",
                EmailEngagement::Either => "Opened or clicked",
            };
            match email_id {
                Some(id) => format!("{what} · {}", names.template("email", id)),
                None => format!("{what} · any marketing email"),
            }
        }
        Trigger::SmsReply { sms_id } => match sms_id {
            Some(id) => format!("Reply to {} (STOP excluded)", names.template("sms", id)),
            None => "Reply to any marketing SMS (STOP excluded)".into(),
        },
        Trigger::Birthday { offset } => format!("Offset: {}", offset_label(*offset)),
        Trigger::InactiveForDays { days } => format!("Last Activity older than {days} days"),
    }
}

fn step_summary(s: &Step, names: &Names, flow: Option<&Flow>) -> String {
    let text = match &s.kind {
        StepKind::SendEmail {
            template_id,
            subject,
            ..
        } => match (template_id, subject.trim()) {
            (_, subj) if !subj.is_empty() => format!("Subject: {subj}"),
            (Some(t), _) => format!("Template: {}", names.template("email", t)),
            _ => "No subject yet".into(),
        },
        StepKind::SendSms {
            template_id,
            message,
            ..
        } => match (template_id, message.trim()) {
            (_, m) if !m.is_empty() => m.to_string(),
            (Some(t), _) => format!("Template: {}", names.template("sms", t)),
            _ => "No message yet".into(),
        },
        StepKind::Delay { amount, unit } => {
            let u = match unit {
                DelayUnit::Minutes => "minute",
                DelayUnit::Hours => "hour",
                DelayUnit::Days => "day",
                DelayUnit::Weeks => "week",
            };
            format!(
                "Wait {amount} {u}{}, then continue in the run window",
                if *amount == 1 { "" } else { "s" }
            )
        }
        StepKind::Branch { condition, .. } => {
            format!("If {}", condition_summary(condition, names, flow))
        }
        StepKind::Custom {
            plugin_id,
            step_type,
            ..
        } => match names.step_type(plugin_id, step_type) {
            Some((t, plugin)) => format!("{} · {plugin}", t.display_name),
            None => format!("{step_type} · plugin {plugin_id} (not installed)"),
        },
        StepKind::CreateTask {
            assignee,
            due_in_minutes,
            ..
        } => {
            let who = assignee_label(assignee);
            if *due_in_minutes == 0 {
                format!("Assign to {who} · due now")
            } else {
                format!(
                    "Assign to {who} · due within {}",
                    super::fmt_duration((*due_in_minutes as i64 * crate::clock::MINUTE) as f64)
                )
            }
        }
        StepKind::SetProperty { property, value } => {
            let name = property.property();
            match (property, value) {
                (SettableProperty::Tags, Value::Object(o)) => {
                    let mut parts = Vec::new();
                    for (k, verb) in [("add", "add"), ("remove", "remove")] {
                        if let Some(v) = o.get(k)
                            && !v.as_array().is_some_and(|a| a.is_empty())
                        {
                            parts.push(format!("{verb} {}", value_label(name, v)));
                        }
                    }
                    format!("Tags: {}", parts.join("; "))
                }
                _ => format!("{} → {}", property_label(name), value_label(name, value)),
            }
        }
        StepKind::AddToList { list_id } => format!("List: {}", names.list(list_id)),
    };
    clip(&text, 120)
}

fn assignee_label(a: &Assignee) -> String {
    match a {
        Assignee::Staff { id, name } => name.clone().unwrap_or_else(|| id.clone()),
        Assignee::ContactOwner {} => "the contact owner".into(),
        Assignee::Queue { name } => match name.as_str() {
            "front_desk" => "the front desk".into(),
            other => format!("the {} queue", humanize(other).to_lowercase()),
        },
    }
}

fn condition_summary(c: &Condition, names: &Names, flow: Option<&Flow>) -> String {
    match c {
        Condition::Property {
            property,
            op,
            value,
        } => {
            let p = property_label(property);
            let v = value
                .as_ref()
                .map(|v| value_label(property, v))
                .unwrap_or_default();
            match op {
                CompareOp::Equals => format!("{p} is {v}"),
                CompareOp::NotEquals => format!("{p} is not {v}"),
                CompareOp::Contains => format!("{p} contains {v}"),
                CompareOp::GreaterThan => format!("{p} is more than {v}"),
                CompareOp::LessThan => format!("{p} is less than {v}"),
                CompareOp::IsSet => format!("{p} is set"),
                CompareOp::IsNotSet => format!("{p} is not set"),
            }
        }
        Condition::ListMembership { list_id, member } => {
            if *member {
                format!("is on the list {}", names.list(list_id))
            } else {
                format!("is not on the list {}", names.list(list_id))
            }
        }
        Condition::StepEngagement {
            step_id,
            engagement,
        } => {
            let title = flow
                .and_then(|f| f.step(step_id))
                .map(Step::title)
                .unwrap_or_else(|| format!("step {step_id}"));
            let verb = match engagement {
                StepEngagement::Opened => "opened",
                StepEngagement::Clicked => "clicked in",
                StepEngagement::Replied => "replied to",
            };
            format!("{verb} \"{title}\"")
        }
        Condition::GoalReached {} => "the goal is reached".into(),
        Condition::All { conditions } | Condition::Any { conditions } => {
            let joiner = if matches!(c, Condition::All { .. }) {
                " and "
            } else {
                " or "
            };
            let parts: Vec<String> = conditions
                .iter()
                .map(|c| match c {
                    Condition::All { .. } | Condition::Any { .. } => {
                        format!("({})", condition_summary(c, names, flow))
                    }
                    _ => condition_summary(c, names, flow),
                })
                .collect();
            parts.join(joiner)
        }
    }
}

// ---------------------------------------------------------------------------
// Config panel
// ---------------------------------------------------------------------------

fn config_panel(
    automation_id: Option<&str>,
    def: Option<&AutomationDefinition>,
    flow: Option<&Flow>,
    names: &Names,
    selected: &str,
) -> Result<ConfigPanel> {
    if selected == TRIGGER_NODE {
        let trigger = def.map(|d| &d.trigger);
        return Ok(ConfigPanel {
            node_id: TRIGGER_NODE.into(),
            node_type: "trigger".into(),
            title: "Enrollment trigger".into(),
            description: Some("Every automation has exactly one trigger and it can't be deleted. It reads the contact's real record (Status, Last Activity, DOB, SMS Subscription, Lead Source), not a separate marketing database.".into()),
            fields: trigger_fields(trigger, names),
            actions: Vec::new(),
            deletable: false,
        });
    }
    if let (Some(def), Some(flow)) = (def, flow)
        && let Some(step) = flow.step(selected)
    {
        return Ok(step_panel(automation_id, step, def, flow, names));
    }
    let end_ids = end_ids(def.map(|d| d.steps.as_slice()).unwrap_or(&[]), END_NODE);
    if end_ids.iter().any(|e| e == selected) {
        return Ok(ConfigPanel {
            node_id: selected.to_string(),
            node_type: "end".into(),
            title: "End of automation".into(),
            description: Some("Contacts who reach this point have walked every step of their path and are counted as Completed. Reaching the goal is counted separately.".into()),
            fields: Vec::new(),
            actions: Vec::new(),
            deletable: false,
        });
    }
    let shown: String = selected.chars().take(128).collect();
    Err(Error::not_found(format!("node {shown}")))
}

/// A config field of a custom step, rendered from its JSON Schema property
/// (`config.<name>`), showing the stored value or the schema's default.
fn custom_field(f: crate::plugins::descriptor::ConfigField, config: &Value) -> Field {
    let kind = match f.kind.as_str() {
        "number" | "integer" => FieldKind::Number,
        "toggle" => FieldKind::Toggle,
        "select" => FieldKind::Select,
        _ => FieldKind::Text,
    };
    let value = config
        .get(&f.name)
        .cloned()
        .or(f.default.clone())
        .unwrap_or(Value::Null);
    let mut field = Field::new(&format!("config.{}", f.name), &f.label, kind, value);
    if f.required {
        field = field.required();
    }
    if let Some(h) = f.help {
        field = field.help(h);
    }
    if !f.options.is_empty() {
        field = field.options(
            f.options
                .iter()
                .map(|o| opt(o.clone(), o.as_str().unwrap_or_default()))
                .collect(),
        );
    }
    match (f.minimum, f.maximum, f.max_length) {
        (_, _, Some(max)) => field.range(0, max as i64),
        (Some(min), Some(max), _) => field.range(min as i64, max as i64),
        _ => field,
    }
}

fn end_ids(steps: &[Step], end_id: &str) -> Vec<String> {
    let mut out = Vec::new();
    for s in steps {
        if let Some((yes, no)) = s.kind.paths() {
            out.extend(end_ids(yes, &branch_end_node(&s.id, true)));
            out.extend(end_ids(no, &branch_end_node(&s.id, false)));
        }
    }
    if steps.last().and_then(|s| s.kind.paths()).is_none() {
        out.push(end_id.to_string());
    }
    out
}

fn criterion_field(t: Option<&Trigger>) -> Field {
    let options = CRITERIA
        .iter()
        .map(|(id, label, theme, help)| FieldOption {
            description: Some(help.to_string()),
            ..grouped(
                json!(id),
                label,
                THEMES
                    .iter()
                    .find(|t| t.0 == *theme)
                    .map(|t| t.1)
                    .unwrap_or(theme),
            )
        })
        .collect();
    let mut f = Field::new(
        "type",
        "Enrollment criteria",
        FieldKind::Select,
        t.map(|t| json!(t.kind_id())).unwrap_or(Value::Null),
    )
    .options(options)
    .required()
    .placeholder("Choose a criterion");
    if let Some(t) = t {
        f = f.help(criterion_help(t.kind_id()));
    }
    f
}

fn any_or(v: &Option<String>) -> Value {
    v.as_ref().map(|s| json!(s)).unwrap_or(Value::Null)
}

/// A picker's choices: `none` (null), then `entries`, then the current
/// value when it is not among them (named by `name_of`), so the field
/// never shows a value its choices lack.
fn picker_options(
    none: &str,
    entries: &[(String, String)],
    current: &Option<String>,
    name_of: impl Fn(&str) -> String,
) -> Vec<FieldOption> {
    let mut options = vec![opt(Value::Null, none)];
    options.extend(choices(entries, current.as_deref(), name_of));
    options
}

/// `entries`, then the current value when it is not among them (named by
/// `name_of`).
fn choices(
    entries: &[(String, String)],
    current: Option<&str>,
    name_of: impl Fn(&str) -> String,
) -> Vec<FieldOption> {
    let mut options: Vec<FieldOption> = entries.iter().map(|(id, n)| opt(json!(id), n)).collect();
    if let Some(c) = current
        && !entries.iter().any(|(id, _)| id == c)
    {
        options.push(opt(json!(c), &name_of(c)));
    }
    options
}

/// The saved templates of `channel` a message step or an engagement
/// trigger can pick.
fn template_options(
    names: &Names,
    channel: &str,
    none: &str,
    current: &Option<String>,
) -> Vec<FieldOption> {
    picker_options(none, names.templates(channel), current, |t| {
        names.template(channel, t)
    })
}

/// The static lists a list picker offers, with `current` when it is not
/// among them (named as the canvas names it).
fn list_options(names: &Names, current: &str) -> Vec<FieldOption> {
    choices(&names.lists, Some(current), |l| names.list(l))
}

fn trigger_fields(t: Option<&Trigger>, names: &Names) -> Vec<Field> {
    let mut fields = vec![criterion_field(t)];
    let Some(t) = t else {
        return fields;
    };
    match t {
        Trigger::ContactCreated { source } => {
            let mut options = vec![opt(Value::Null, "Any source")];
            options.extend(LEAD_SOURCES.iter().map(|s| opt(json!(s), &source_label(s))));
            if let Some(s) = source
                && !LEAD_SOURCES.iter().any(|k| {
                    crate::model::contact::fold_source(k) == crate::model::contact::fold_source(s)
                })
            {
                options.push(opt(json!(s), &source_label(s)));
            }
            fields.push(
                Field::new("source", "Source", FieldKind::Select, any_or(source))
                    .options(options)
                    .help("Send different welcome flows depending on where the lead came from."),
            );
        }
        Trigger::StatusChangedToPatient {} => {}
        Trigger::FormSubmitted { form_id } => {
            fields.push(
                Field::new("form_id", "Form", FieldKind::Select, any_or(form_id))
                    .searchable(names, Picker::Forms)
                    .options(picker_options("Any form", &names.forms, form_id, |f| {
                        names.form(f)
                    }))
                    .help("Any form, or pick one so the automation only fires for that form."),
            );
        }
        Trigger::AddedToList { list_id } | Trigger::RemovedFromList { list_id } => {
            fields.push(
                Field::new("list_id", "List", FieldKind::ListPicker, json!(list_id))
                    .options(list_options(names, list_id))
                    .searchable(names, Picker::Lists)
                    .required()
                    .help("Pick the list to watch."),
            );
        }
        Trigger::PropertyChanged {
            property,
            new_value,
        } => {
            // The host's facts the module mirrors change too; the properties
            // it computes (Last Activity, created, age) do not fire.
            let options = KNOWN_PROPERTIES
                .iter()
                .map(|(n, _)| *n)
                .chain(["insurance_verification", "portal_active"])
                .map(|n| opt(json!(n), &property_label(n)))
                // The host's own fields, by the name it gives them.
                .chain(names.custom_properties.iter().map(|n| opt(json!(n), n)))
                .collect();
            fields.push(
                Field::new("property", "Property", FieldKind::Select, json!(property))
                    .options(options)
                    .required()
                    .help("The picker mirrors the contact record. Common picks: Status, Lead Source, Contact Owner, Provider."),
            );
            let choices = value_choices(property);
            let mut f = Field::new(
                "new_value",
                "New value",
                if choices.is_some() {
                    FieldKind::Select
                } else {
                    FieldKind::Text
                },
                new_value.clone().unwrap_or(Value::Null),
            )
            .placeholder("Any change")
            .help("Optional: only fire when the property changes to this value.");
            if let Some(mut c) = choices {
                c.insert(0, opt(Value::Null, "Any change"));
                f = f.options(c);
            }
            fields.push(f);
        }
        Trigger::EmailEngagement {
            engagement,
            email_id,
        } => {
            fields.push(
                Field::new(
                    "engagement",
                    "Engagement type",
                    FieldKind::Select,
                    to_value(engagement),
                )
                .options(
                    [
                        EmailEngagement::Opened,
                        EmailEngagement::Clicked,
                        EmailEngagement::Either,
                    ]
                    .iter()
                    .map(|e| opt(to_value(e), engagement_label(*e)))
                    .collect(),
                )
                .required()
                .help("Opens are pixel-tracked, clicks are link-wrapped."),
            );
            fields.push(
                Field::new("email_id", "Email", FieldKind::Select, any_or(email_id))
                    .options(template_options(names, "email", "Any marketing email", email_id))
                    .searchable(names, Picker::EmailTemplates)
                    .help("Any marketing email, or pick one saved email so only its opens and clicks count."),
            );
        }
        Trigger::SmsReply { sms_id } => {
            fields.push(
                Field::new("sms_id", "SMS", FieldKind::Select, any_or(sms_id))
                    .options(template_options(names, "sms", "Any marketing SMS", sms_id))
                    .searchable(names, Picker::SmsTemplates)
                    .help("STOP is not a reply, it is an opt-out: it goes to the SMS Subscription audit log and never fires this trigger."),
            );
        }
        Trigger::Birthday { offset } => {
            fields.push(
                Field::new("offset", "Offset", FieldKind::Select, to_value(offset))
                    .options(
                        OFFSETS
                            .iter()
                            .map(|o| opt(to_value(o), offset_label(*o)))
                            .collect(),
                    )
                    .required()
                    .help("7 days before for \"book your physical\", on the day for the greeting itself."),
            );
        }
        Trigger::InactiveForDays { days } => {
            fields.push(
                Field::new("days", "Days", FieldKind::Number, json!(days))
                    .required()
                    .range(1, 3650)
                    .help("Default 90. Common values: 30 (a soft nudge), 90 (the standard win-back), 180 (a last-ditch effort)."),
            );
        }
    }
    fields
}

/// Fixed choices of a property's values, when it has some.
fn value_choices(property: &str) -> Option<Vec<FieldOption>> {
    match property {
        "status" => Some(vec![
            opt(json!("lead"), "Lead"),
            opt(json!("patient"), "Patient"),
        ]),
        "sms_subscription" | "email_subscription" => Some(
            crate::model::contact::SUBSCRIPTIONS
                .iter()
                .map(|s| opt(json!(s), &humanize(s)))
                .collect(),
        ),
        "lead_source" => Some(
            LEAD_SOURCES
                .iter()
                .map(|s| opt(json!(s), &source_label(s)))
                .collect(),
        ),
        "insurance_verification" => Some(vec![
            opt(json!("pending"), "Pending"),
            opt(json!("verified"), "Verified"),
            opt(json!("failed"), "Failed"),
        ]),
        "marketing_only" | "recall_scheduled" | "portal_active" => {
            Some(vec![opt(json!(true), "Yes"), opt(json!(false), "No")])
        }
        _ => None,
    }
}

fn name_field(s: &Step) -> Field {
    let default_title = Step {
        name: None,
        ..s.clone()
    }
    .title();
    Field::new(
        "name",
        "Step name",
        FieldKind::Text,
        s.name.as_ref().map(|n| json!(n)).unwrap_or(Value::Null),
    )
    .range(1, 200)
    .placeholder(default_title)
    .help("The title on the canvas card.")
}

fn step_panel(
    automation_id: Option<&str>,
    s: &Step,
    def: &AutomationDefinition,
    flow: &Flow,
    names: &Names,
) -> ConfigPanel {
    let mut fields = vec![name_field(s)];
    let mut actions = Vec::new();
    let mut description = None;
    match &s.kind {
        StepKind::SendEmail {
            template_id,
            subject,
            preheader,
            body,
            sender,
            category,
            bypass_preferences,
            fallback,
        } => {
            let sender = sender
                .clone()
                .unwrap_or(crate::model::automation::SenderOverride {
                    from_name: None,
                    from_address: None,
                    reply_to: None,
                });
            fields.extend([
                Field::new("template_id", "Saved template", FieldKind::Select, any_or(template_id))
                    .options(template_options(names, "email", "Inline content", template_id))
                    .searchable(names, Picker::EmailTemplates)
                    .help("Use a saved email, or write the subject and body here."),
                Field::new("subject", "Subject", FieldKind::Text, json!(subject))
                    .required_inline(template_id)
                    .range(0, 500),
                Field::new("preheader", "Preheader", FieldKind::Text, json!(preheader))
                    .range(0, 500)
                    .help("The preview line inboxes show after the subject."),
                Field::new("body", "Body", FieldKind::Textarea, json!(body))
                    .required_inline(template_id)
                    .help("Placeholders {{firstname}}, {{lastname}}, {{practice}}, {{owner}} and {{unsubscribe_link}} are replaced per contact. The compliant footer is appended."),
                Field::new("sender.from_name", "From name", FieldKind::Text, any_or(&sender.from_name))
                    .range(0, crate::settings::MAX_FROM_NAME as i64)
                    .placeholder("Module default"),
                Field::new("sender.from_address", "From address", FieldKind::Text, any_or(&sender.from_address))
                    .placeholder("Module default"),
                Field::new("sender.reply_to", "Reply-to", FieldKind::Text, any_or(&sender.reply_to))
                    .placeholder("Module default"),
            ]);
            fields.extend(consent_fields(*category, *bypass_preferences));
            fields.push(
                Field::new(
                    "fallback.message",
                    "Fallback SMS",
                    FieldKind::Textarea,
                    fallback.as_ref().map(|f| json!(f.message)).unwrap_or(Value::Null),
                )
                .range(0, 1600)
                .placeholder("No fallback")
                .help("Email → SMS fallback: sent by SMS instead when the contact has no usable email address or no email consent, or when the email hard-bounces."),
            );
            // The step as saved, rendered as a real send renders it.
            let mut preview = Action::new("preview", "Preview", Some("fa-eye"));
            if let Some(id) = automation_id {
                preview = preview.view(ViewRef::step_preview(id, &s.id));
            }
            actions.push(preview);
            actions.push(Action::new(
                "open_editor",
                "Open editor",
                Some("fa-pen-to-square"),
            ));
        }
        StepKind::SendSms {
            template_id,
            message,
            sender_number,
            category,
            bypass_preferences,
            fallback,
        } => {
            fields.extend([
                Field::new("template_id", "Saved SMS", FieldKind::Select, any_or(template_id))
                    .options(template_options(names, "sms", "Inline message", template_id))
                    .searchable(names, Picker::SmsTemplates),
                Field::new("message", "Message", FieldKind::Textarea, json!(message))
                    .required_inline(template_id)
                    .range(0, 1600)
                    .help("Use {{firstname}}, {{practice}} tokens. Reply STOP to opt out is appended automatically."),
                Field::new("sender_number", "Sender number", FieldKind::Text, any_or(sender_number))
                    .placeholder("Module default number"),
            ]);
            let mut counter = Field::new(
                "sms_counter",
                "Characters · segments · credits",
                FieldKind::SmsCounter,
                to_value(&crate::messaging::sms::measure(message)),
            )
            .help("Counted by the GSM-7 / UCS-2 rules as written; placeholders change the count per contact, and the first message of a thread adds the consent footer.");
            counter.disabled = true;
            fields.push(counter);
            fields.extend(consent_fields(*category, *bypass_preferences));
            let fb = |v: Option<&String>| v.map(|t| json!(t)).unwrap_or(Value::Null);
            fields.extend([
                Field::new(
                    "fallback.subject",
                    "Fallback email subject",
                    FieldKind::Text,
                    fb(fallback.as_ref().map(|f| &f.subject)),
                )
                .range(0, 500)
                .placeholder("No fallback")
                .help("SMS → email fallback: sent by email instead when the contact has no usable number or no SMS consent, or when the SMS fails. Set both subject and body."),
                Field::new(
                    "fallback.body",
                    "Fallback email body",
                    FieldKind::Textarea,
                    fb(fallback.as_ref().map(|f| &f.body)),
                )
                .placeholder("No fallback"),
            ]);
        }
        StepKind::Delay { amount, unit } => {
            fields.extend([
                Field::new("amount", "Wait for", FieldKind::Number, json!(amount))
                    .required()
                    .range(1, unit.max_amount()),
                Field::new("unit", "Unit", FieldKind::Select, to_value(unit))
                    .required()
                    .options(vec![
                        opt(json!("minutes"), "Minutes"),
                        opt(json!("hours"), "Hours"),
                        opt(json!("days"), "Days"),
                        opt(json!("weeks"), "Weeks"),
                    ]),
            ]);
            description = Some("The run window still applies after the wait: a step that falls due outside it waits for the next open minute. At most 365 days in total.".into());
        }
        StepKind::Custom {
            plugin_id,
            step_type,
            config,
            on_failure,
            branches,
            ..
        } => {
            match names.step_type(plugin_id, step_type) {
                Some((t, plugin)) => {
                    description = Some(format!("{} (plugin {plugin})", t.description));
                    if let Ok(schema_fields) =
                        crate::plugins::descriptor::config_fields(&t.config_schema, &t.field_order)
                    {
                        fields.extend(schema_fields.into_iter().map(|f| custom_field(f, config)));
                    }
                }
                None => {
                    description = Some(format!(
                        "Plugin {plugin_id} (step type {step_type}) is not installed: contacts reaching this step wait and it fails after the retries."
                    ));
                }
            }
            fields.push(
                Field::new("on_failure", "If the plugin fails", FieldKind::Select, to_value(on_failure))
                    .required()
                    .options(vec![
                        opt(
                            json!("continue"),
                            if *branches { "Take the NO path" } else { "Continue to the next step" },
                        ),
                        opt(json!("exit"), "Exit the automation"),
                    ])
                    .help("A plugin fails when it reports a failure, traps, runs past its deadline or memory cap, or returns too much."),
            );
        }
        StepKind::Branch { condition, .. } => {
            fields.push(
                Field::new("condition", "Condition", FieldKind::Condition, to_value(condition))
                    .required()
                    .options(condition_options(s, def, flow, names))
                    .help("Contacts who match go down the YES path; everyone else goes down NO. Each path ends at its own End."),
            );
        }
        StepKind::CreateTask {
            title,
            assignee,
            due_in_minutes,
        } => {
            let mut who = vec![
                opt(json!({"kind": "contact_owner"}), "Contact owner"),
                opt(
                    json!({"kind": "queue", "name": "front_desk"}),
                    "Front desk queue",
                ),
            ];
            if !matches!(assignee, Assignee::ContactOwner {})
                && !matches!(assignee, Assignee::Queue { name } if name == "front_desk")
            {
                who.push(opt(
                    to_value(assignee),
                    &humanize(&assignee_label(assignee)),
                ));
            }
            fields.extend([
                Field::new("title", "Task title", FieldKind::Text, json!(title))
                    .required()
                    .range(1, 300)
                    .placeholder("e.g. Call this person back")
                    .help("Written as it is, without placeholders: the task carries the contact, whom the EHR shows by name."),
                Field::new(
                    "assignee",
                    "Assignee",
                    FieldKind::StaffPicker,
                    to_value(assignee),
                )
                .required()
                .options(who)
                .help("A staff member, the contact's owner, or a queue such as the front desk (a queue's name is 1 to 100 characters)."),
                Field::new(
                    "due_in_minutes",
                    "Due within (minutes)",
                    FieldKind::Number,
                    json!(due_in_minutes),
                )
                .range(0, 525_600)
                .help("e.g. 5 for a callback within 5 minutes."),
            ]);
        }
        StepKind::SetProperty { property, value } => {
            fields.push(
                Field::new(
                    "property",
                    "Property",
                    FieldKind::Select,
                    to_value(property),
                )
                .required()
                .options(
                    SETTABLE
                        .iter()
                        .map(|p| opt(to_value(p), &property_label(p.property())))
                        .collect(),
                ),
            );
            fields.extend(set_property_value_fields(*property, value));
            description = Some("Writes the value back to the contact's record in the EHR.".into());
        }
        StepKind::AddToList { list_id } => {
            fields.push(
                Field::new("list_id", "List", FieldKind::ListPicker, json!(list_id))
                    .required()
                    .options(list_options(names, list_id))
                    .searchable(names, Picker::Lists)
                    .help("Static list membership."),
            );
        }
    }
    ConfigPanel {
        node_id: s.id.clone(),
        node_type: s.kind.type_id().into(),
        title: s.kind.type_label().into(),
        description,
        fields,
        actions,
        deletable: true,
    }
}

const SETTABLE: [SettableProperty; 7] = [
    SettableProperty::Status,
    SettableProperty::LeadSource,
    SettableProperty::Owner,
    SettableProperty::Provider,
    SettableProperty::Tags,
    SettableProperty::SmsSubscription,
    SettableProperty::EmailSubscription,
];

fn set_property_value_fields(p: SettableProperty, value: &Value) -> Vec<Field> {
    match p {
        // Lead → Patient is for good: Patient is the one value to set.
        SettableProperty::Status => vec![
            Field::new("value", "Value", FieldKind::Select, value.clone())
                .required()
                .options(vec![opt(json!("patient"), "Patient")]),
        ],
        SettableProperty::LeadSource => {
            let mut options = value_choices("lead_source").unwrap_or_default();
            if let Some(s) = value.as_str()
                && !LEAD_SOURCES.contains(&s)
            {
                options.push(opt(json!(s), &source_label(s)));
            }
            vec![
                Field::new("value", "Value", FieldKind::Select, value.clone())
                    .required()
                    .options(options),
            ]
        }
        SettableProperty::Owner | SettableProperty::Provider => vec![
            Field::new("value", "Value", FieldKind::StaffPicker, value.clone())
                .required()
                .help("A staff member { id, name }."),
        ],
        SettableProperty::Tags => {
            let part = |k: &str| value.get(k).cloned().unwrap_or_else(|| json!([]));
            vec![
                Field::new("value.add", "Tags to add", FieldKind::Tags, part("add"))
                    .placeholder("e.g. vip, allergy-season"),
                Field::new("value.remove", "Tags to remove", FieldKind::Tags, part("remove")),
            ]
        }
        SettableProperty::SmsSubscription | SettableProperty::EmailSubscription => vec![
            Field::new("value", "Value", FieldKind::Select, value.clone())
                .required()
                .options(vec![opt(json!("unsubscribed"), "Unsubscribed")])
                .help("Automations may only unsubscribe; re-subscribing needs the person's own action (START reply, link, or staff with consent)."),
        ],
    }
}

/// The subjects an If/then condition can test: contact properties, list
/// membership, engagement with an earlier message step, the goal.
fn condition_options(
    branch: &Step,
    def: &AutomationDefinition,
    flow: &Flow,
    names: &Names,
) -> Vec<FieldOption> {
    let mut out: Vec<FieldOption> = KNOWN_PROPERTIES
        .iter()
        .map(|(n, _)| n)
        // The instants themselves are compared as days since.
        .chain(
            DERIVED_PROPERTIES
                .iter()
                .filter(|n| !matches!(**n, "last_activity" | "created_at")),
        )
        .map(|n| (*n, property_label(n)))
        .chain((names.custom_properties.iter()).map(|n| (n.as_str(), n.clone())))
        .map(|(n, label)| FieldOption {
            operators: Some(crate::model::automation::operators_for(n)),
            values: value_choices(n),
            ..grouped(
                json!({"type": "property", "property": n}),
                &label,
                "Contact property",
            )
        })
        .collect();
    out.extend(names.lists.iter().map(|(id, name)| {
        grouped(
            json!({"type": "list_membership", "list_id": id}),
            name,
            "List membership",
        )
    }));
    // Only the steps a contact reaching this If/then has passed: those
    // before it on its own path (a step on another branch's path could
    // never have been engaged with), in canvas order.
    let before = flow.path_to(&branch.id);
    for id in flow.ordered_ids() {
        if !before.contains(&id) {
            continue;
        }
        if let Some(step) = flow.step(&id)
            && step.kind.channel().is_some()
        {
            out.push(grouped(
                json!({"type": "step_engagement", "step_id": id}),
                &step.title(),
                "Engagement with an earlier step",
            ));
        }
    }
    let goal = def
        .goal
        .map(|g| format!("Goal reached ({})", g.label()))
        .unwrap_or_else(|| "Goal reached (Lead → Patient)".into());
    out.push(grouped(json!({"type": "goal_reached"}), &goal, "Goal"));
    out
}

/// The message category and the care-only bypass of a communication step.
fn consent_fields(category: crate::messaging::consent::Category, bypass: bool) -> [Field; 2] {
    [
        Field::new("category", "Message type", FieldKind::Select, to_value(&category))
            .required()
            .options(vec![
                opt(json!("marketing"), "Marketing"),
                opt(json!("care"), "Care (appointment and treatment notices)"),
            ])
            .help("Marketing reaches only contacts who subscribed to the channel."),
        Field::new("bypass_preferences", "Bypass preferences", FieldKind::Toggle, json!(bypass))
            .help("Care messages only: also send when the contact has no recorded preference. Never overrides an unsubscribe or a STOP."),
    ]
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::super::test_support::{Db, NOW};
    use crate::error::ErrorCode;

    fn welcome() -> Value {
        json!({
            "name": "New lead welcome series",
            "goal": "book_appointment",
            "notes": "For website leads",
            "run_window": {"mode": "any_time"},
            "unenrollment": {"goal_met": true},
            "trigger": {"type": "contact_created", "source": "website_form"},
            "steps": [
                {"id": "s1", "name": "Welcome email", "type": "send_email", "subject": "Welcome", "body": "Hi {{firstname}}"},
                {"id": "s2", "type": "delay", "amount": 2, "unit": "days"},
                {"id": "s3", "type": "send_sms", "message": "Book with {{practice}}"},
                {"id": "s4", "type": "branch",
                 "condition": {"type": "property", "property": "status", "op": "equals", "value": "patient"},
                 "yes": [{"id": "s5", "type": "add_to_list", "list_id": "l1"}],
                 "no": [
                    {"id": "s6", "type": "create_task", "title": "Call", "assignee": {"kind": "queue", "name": "front_desk"}, "due_in_minutes": 5},
                    {"id": "s7", "type": "set_property", "property": "tags", "value": {"add": ["cold"]}}
                 ]}
            ]
        })
    }

    /// The config panel's field `id` in builder view `v`.
    fn panel_field(v: &Value, id: &str) -> Value {
        (v["build"]["config_panel"]["fields"]
            .as_array()
            .unwrap()
            .iter())
        .find(|f| f["id"] == id)
        .unwrap_or_else(|| panic!("no field {id}"))
        .clone()
    }

    fn db() -> Db {
        let db = Db::new();
        db.conn
            .execute(
                "INSERT INTO lists (id, name, created_at) VALUES ('l1', 'Booked patients', 0)",
                [],
            )
            .unwrap();
        db.automation("a1", "active", NOW - 1000, &[welcome()]);
        db
    }

    fn ids(nodes: &Value) -> Vec<String> {
        nodes
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["id"].as_str().unwrap().to_string())
            .collect()
    }

    /// A practice with more lists than a picker offers: the automation's
    /// own list (past the first 1,000 by name) is named on the canvas, and
    /// offered by its pickers and the If/then subjects.
    #[test]
    fn an_automations_list_past_the_pickers_limit_is_named_and_offered() {
        let db = Db::new();
        for i in 0..crate::views::PICKER_LIMIT {
            db.conn
                .execute(
                    "INSERT INTO lists (id, name, created_at) VALUES (?1, ?2, 0)",
                    [format!("b{i:04}"), format!("Import batch {i:04}")],
                )
                .unwrap();
        }
        db.conn
            .execute(
                "INSERT INTO lists (id, name, created_at) VALUES ('zeta', 'Zeta VIPs', 0)",
                [],
            )
            .unwrap();
        let def = json!({"name": "VIPs", "trigger": {"type": "added_to_list", "list_id": "zeta"},
            "steps": [{"id": "s1", "type": "add_to_list", "list_id": "zeta"},
                      {"id": "s2", "type": "branch",
                       "condition": {"type": "list_membership", "list_id": "zeta", "member": true},
                       "yes": [], "no": []}]});
        db.automation("a1", "active", NOW - 1000, &[def]);
        let view = |node: &str| {
            db.query(
                "automation_builder",
                json!({"automation_id": "a1", "selected_node": node}),
            )
            .unwrap()
        };
        let v = view("trigger");
        let nodes = &v["build"]["canvas"]["nodes"];
        assert_eq!(nodes[0]["summary"], "List: Zeta VIPs");
        assert_eq!(nodes[1]["summary"], "List: Zeta VIPs");
        let offers = |field: &Value| {
            field["options"]
                .as_array()
                .unwrap()
                .iter()
                .any(|o| o["value"] == "zeta" && o["label"] == "Zeta VIPs")
        };
        assert!(offers(&panel_field(&v, "list_id")));
        assert!(offers(&panel_field(&view("s1"), "list_id")));
        // The pickers say they were cut, and where to find the rest.
        for field in [
            panel_field(&v, "list_id"),
            panel_field(&view("s1"), "list_id"),
        ] {
            let search = &field["search"];
            assert_eq!(search["view"], "picker_options");
            assert_eq!(search["params"], json!({"picker": "lists"}));
            assert!(search["note"].as_str().unwrap().contains("first 1,000"));
            let found = db
                .query(
                    "picker_options",
                    json!({"picker": "lists", "query": "zeta vip"}),
                )
                .unwrap();
            assert_eq!(
                found["options"][0],
                json!({"value": "zeta", "label": "Zeta VIPs"})
            );
        }
        // With 1,000 lists exactly, nothing was cut.
        db.conn
            .execute("UPDATE lists SET deleted_at = 1 WHERE id = 'b0000'", [])
            .unwrap();
        assert!(panel_field(&view("s1"), "list_id").get("search").is_none());
        let subjects = view("s2").to_string();
        assert!(
            subjects.contains("Zeta VIPs"),
            "the If/then offers the list"
        );
    }

    #[test]
    fn build_tab_has_palette_canvas_and_ends_on_every_path() {
        let db = db();
        let v = db
            .query("automation_builder", json!({"automation_id": "a1"}))
            .unwrap();
        assert_eq!(v["mode"], "edit");
        assert_eq!(v["active_tab"], "build");
        assert_eq!(v["header"]["title"], "New lead welcome series");
        assert_eq!(v["header"]["update"]["label"], "Update");
        assert_eq!(
            v["header"]["update"]["command"]["command"],
            "automation.update"
        );
        let tabs: Vec<&str> = v["tabs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["label"].as_str().unwrap())
            .collect();
        assert_eq!(tabs, ["Details", "Build", "Performance"]);
        assert_eq!(v["tabs"][2]["view"]["view"], "automation_performance");
        assert!(v["step_rail"].as_array().unwrap().is_empty());

        let groups = v["build"]["palette"]["groups"].as_array().unwrap();
        let sizes: Vec<usize> = groups
            .iter()
            .map(|g| g["items"].as_array().unwrap().len())
            .collect();
        assert_eq!(sizes, [2, 2, 3]);
        assert_eq!(groups[0]["label"], "Communication");
        assert_eq!(groups[1]["items"][1]["label"], "If / then branch");
        assert_eq!(groups[2]["items"][2]["type"], "add_to_list");

        let nodes = &v["build"]["canvas"]["nodes"];
        assert_eq!(ids(nodes), ["trigger", "s1", "s2", "s3", "s4"]);
        assert_eq!(nodes[0]["title"], "Contact created");
        assert_eq!(nodes[0]["summary"], "Source: Website form");
        assert_eq!(nodes[0]["selected"], true);
        assert_eq!(nodes[1]["title"], "Welcome email");
        assert_eq!(nodes[2]["title"], "Wait 2 days");
        let branch = &nodes[4];
        assert_eq!(branch["type"], "branch");
        assert_eq!(branch["summary"], "If Status is Patient");
        assert_eq!(ids(&branch["yes"]), ["s5", "s4.yes.end"]);
        assert_eq!(ids(&branch["no"]), ["s6", "s7", "s4.no.end"]);
        assert_eq!(branch["yes"][0]["summary"], "List: Booked patients");
        assert_eq!(branch["no"][1]["summary"], "Tags: add cold");
        assert_eq!(branch["no"][2]["type"], "end");

        let panel = &v["build"]["config_panel"];
        assert_eq!(panel["node_id"], "trigger");
        let criterion = &panel["fields"][0];
        assert_eq!(criterion["kind"], "select");
        assert_eq!(criterion["value"], "contact_created");
        let options = criterion["options"].as_array().unwrap();
        assert_eq!(options.len(), 10);
        let mut themes: Vec<&str> = options
            .iter()
            .map(|o| o["group"].as_str().unwrap())
            .collect();
        themes.dedup();
        assert_eq!(
            themes,
            [
                "Lifecycle",
                "Forms & lists",
                "Properties",
                "Engagement",
                "Date-based"
            ]
        );
        let source = &panel["fields"][1];
        assert_eq!(source["label"], "Source");
        assert_eq!(source["value"], "website_form");
        let labels: Vec<&str> = source["options"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["label"].as_str().unwrap())
            .collect();
        assert_eq!(
            labels,
            [
                "Any source",
                "Website form",
                "Walk-in",
                "Manual entry",
                "Import"
            ]
        );
    }

    #[test]
    fn selecting_steps_and_end_nodes() {
        let db = db();
        let q = |node: &str| {
            db.query(
                "automation_builder",
                json!({"automation_id": "a1", "selected_node": node}),
            )
        };
        let v = q("s1").unwrap();
        let panel = &v["build"]["config_panel"];
        assert_eq!(panel["title"], "Send email");
        assert_eq!(panel["actions"][0]["label"], "Preview");
        assert_eq!(panel["actions"][1]["label"], "Open editor");
        assert!(
            panel["fields"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["id"] == "subject" && f["value"] == "Welcome")
        );
        assert_eq!(v["build"]["canvas"]["nodes"][1]["selected"], true);
        assert_eq!(v["build"]["canvas"]["nodes"][0]["selected"], false);

        let v = q("s7").unwrap();
        let panel = &v["build"]["config_panel"];
        assert_eq!(panel["title"], "Set property");
        let props = panel["fields"][1]["options"].as_array().unwrap();
        assert_eq!(props.len(), 7);
        assert_eq!(panel["fields"][2]["id"], "value.add");
        assert_eq!(panel["fields"][2]["kind"], "tags", "its value is an array");
        assert_eq!(panel["fields"][2]["value"], json!(["cold"]));

        let v = q("s4").unwrap();
        let cond = &v["build"]["config_panel"]["fields"][1];
        assert_eq!(cond["kind"], "condition");
        let opts = cond["options"].as_array().unwrap();
        assert!(opts.iter().any(|o| o["value"]["type"] == "goal_reached"));
        let property = |p: &str| opts.iter().find(|o| o["value"]["property"] == p);
        let days = property("days_since_last_activity").expect("days since");
        assert_eq!(days["label"], "Days since last activity");
        assert!(
            property("last_activity").is_none() && property("created_at").is_none(),
            "instants are offered as days since"
        );
        assert!(opts.iter().any(|o| o["value"]["step_id"] == "s1"));
        assert!(opts.iter().any(|o| o["value"]["list_id"] == "l1"));

        let v = q("s6").unwrap();
        assert_eq!(
            v["build"]["config_panel"]["fields"][2]["kind"],
            "staff_picker"
        );

        let v = q("s4.no.end").unwrap();
        assert_eq!(v["build"]["config_panel"]["node_type"], "end");
        assert_eq!(v["build"]["canvas"]["nodes"][4]["no"][2]["selected"], true);
        q("s4.yes.end").unwrap();

        // The main path ends in a branch: it has no End of its own.
        let e = q("end").unwrap_err();
        assert_eq!(e.code(), ErrorCode::NotFound);
        let e = q("s99").unwrap_err();
        assert_eq!(e.code(), ErrorCode::NotFound);
        assert!(e.to_string().contains("node s99"), "{e}");
    }

    /// An If/then offers engagement with the steps a contact reaching it
    /// has passed: not a step on another branch's path.
    #[test]
    fn a_condition_offers_only_the_earlier_steps_on_its_own_path() {
        let db = db();
        db.automation(
            "a2",
            "draft",
            NOW - 1000,
            &[json!({
                "name": "Nested", "trigger": {"type": "contact_created"},
                "steps": [
                    {"id": "s1", "type": "send_email", "subject": "Hi", "body": "Hi"},
                    {"id": "t1", "type": "send_email", "template_id": "tpl1"},
                    {"id": "b1", "type": "branch", "condition": {"type": "goal_reached"},
                     "yes": [{"id": "ea", "type": "send_email", "subject": "A", "body": "A"}],
                     "no": [{"id": "sn", "type": "send_sms", "message": "B"},
                            {"id": "b2", "type": "branch", "condition": {"type": "goal_reached"},
                             "yes": [], "no": []}]}
                ]
            })],
        );
        let v = db
            .query(
                "automation_builder",
                json!({"automation_id": "a2", "selected_node": "b2"}),
            )
            .unwrap();
        let cond = &v["build"]["config_panel"]["fields"][1];
        let steps: Vec<&str> = cond["options"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| o["value"]["step_id"].as_str())
            .collect();
        assert_eq!(
            steps,
            ["s1", "t1", "sn"],
            "the YES path's email is offered on the NO path"
        );
        // Subject and body are required of inline content only.
        let required = |node: &str| -> Vec<(String, bool)> {
            let v = db
                .query(
                    "automation_builder",
                    json!({"automation_id": "a2", "selected_node": node}),
                )
                .unwrap();
            v["build"]["config_panel"]["fields"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|f| f["id"] == "subject" || f["id"] == "body")
                .map(|f| (f["id"].as_str().unwrap().to_string(), f["required"] == true))
                .collect()
        };
        let both = |r: bool| vec![("subject".to_string(), r), ("body".to_string(), r)];
        assert_eq!(required("s1"), both(true));
        assert_eq!(
            required("t1"),
            both(false),
            "a saved template brings its content"
        );
    }

    /// A draft (changes the UI holds, not saved) gets its panels from the
    /// module: the secondary control of a criterion just chosen in the
    /// create wizard, the fields and limits of a step just dragged in.
    #[test]
    fn a_draft_gets_the_panels_of_its_unsaved_nodes() {
        let db = db();
        let field_ids = |v: &Value| -> Vec<String> {
            (v["build"]["config_panel"]["fields"]
                .as_array()
                .unwrap()
                .iter())
            .map(|f| f["id"].as_str().unwrap().to_string())
            .collect()
        };
        let draft = json!({"name": "New", "trigger": {"type": "added_to_list", "list_id": ""}, "steps": []});
        let v = db
            .query("automation_builder", json!({"draft": draft}))
            .unwrap();
        assert!(
            field_ids(&v).contains(&"list_id".to_string()),
            "{:?}",
            field_ids(&v)
        );
        db.automation(
            "a5",
            "draft",
            NOW - 1000,
            &[json!({"name": "Saved", "trigger": {"type": "contact_created"}, "steps": []})],
        );
        let draft = json!({"name": "Saved", "trigger": {"type": "contact_created"},
            "steps": [{"id": "new1", "type": "delay", "amount": 1, "unit": "weeks"}]});
        let v = db
            .query(
                "automation_builder",
                json!({"automation_id": "a5", "selected_node": "new1", "draft": draft}),
            )
            .unwrap();
        let amount = panel_field(&v, "amount");
        assert_eq!(amount["max"], 52, "{amount}");
        let nameless = json!({"name": "Saved", "trigger": {"type": "contact_created"},
            "steps": [{"type": "delay", "amount": 1, "unit": "weeks"}]});
        assert!(
            db.query(
                "automation_builder",
                json!({"automation_id": "a5", "draft": nameless})
            )
            .is_err()
        );
    }

    /// The host's own contact fields (custom properties) are offered as
    /// Property changed's property and as If/then subjects, by name, as the
    /// module accepts them (SPEC §1: usable in filters).
    #[test]
    fn custom_properties_are_offered_beside_the_known_ones() {
        let db = db();
        db.conn
            .execute(
                "INSERT INTO custom_properties (key, first_seen) VALUES ('favorite_color', 0)",
                [],
            )
            .unwrap();
        db.automation(
            "a4",
            "draft",
            NOW - 1000,
            &[json!({
                "name": "Colors", "trigger": {"type": "property_changed", "property": "favorite_color"},
                "steps": [{"id": "b", "type": "branch",
                           "condition": {"type": "property", "property": "favorite_color", "op": "is_set"},
                           "yes": [], "no": []}]
            })],
        );
        let offered = |node: &str, field: &str| -> Vec<Value> {
            let v = db
                .query(
                    "automation_builder",
                    json!({"automation_id": "a4", "selected_node": node}),
                )
                .unwrap();
            panel_field(&v, field)["options"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["value"].clone())
                .collect()
        };
        assert!(offered("trigger", "property").contains(&json!("favorite_color")));
        assert!(
            offered("b", "condition")
                .contains(&json!({"type": "property", "property": "favorite_color"}))
        );
        // Each property subject says which comparisons it takes.
        let v = db
            .query(
                "automation_builder",
                json!({"automation_id": "a4", "selected_node": "b"}),
            )
            .unwrap();
        let condition = panel_field(&v, "condition");
        let operators = |property: &str| {
            (condition["options"].as_array().unwrap().iter())
                .find(|o| o["value"]["property"] == property)
                .map(|o| o["operators"].clone())
                .unwrap()
        };
        assert_eq!(
            operators("owner"),
            json!(["equals", "not_equals", "is_set", "is_not_set"])
        );
        assert!(
            operators("favorite_color")
                .to_string()
                .contains("greater_than")
        );
        // A subject with fixed values offers them; free text has none.
        let values = |property: &str| {
            (condition["options"].as_array().unwrap().iter())
                .find(|o| o["value"]["property"] == property)
                .map(|o| o["values"].clone())
                .unwrap()
        };
        let status: Vec<Value> = (values("status").as_array().unwrap().iter())
            .map(|o| o["value"].clone())
            .collect();
        assert_eq!(status, [json!("lead"), json!("patient")]);
        assert!(values("lead_source").to_string().contains("walk_in"));
        assert_eq!(values("favorite_color"), Value::Null);
        assert_eq!(values("first_name"), Value::Null);
    }

    /// Template and engagement pickers offer the saved templates of their
    /// channel by name; a template no longer offered (deleted) stays
    /// shown by id so the field never holds a value its choices lack.
    #[test]
    fn template_pickers_offer_the_saved_templates_of_their_channel() {
        let db = db();
        for (id, channel, name, deleted) in [
            ("tpl-news", "email", "Spring newsletter", None),
            ("tpl-old", "email", "Old promo", Some(NOW - 10)),
            ("tpl-recall", "sms", "Recall reminder", None),
        ] {
            db.conn
                .execute(
                    "INSERT INTO templates (id, channel, name, subject, html_body, message, created_at, updated_at, deleted_at)
                     VALUES (?1, ?2, ?3, 'S', 'B', 'M', 0, 0, ?4)",
                    rusqlite::params![id, channel, name, deleted],
                )
                .unwrap();
        }
        db.automation(
            "a3",
            "draft",
            NOW - 1000,
            &[json!({
                "name": "Pickers", "trigger": {"type": "email_engagement", "engagement": "opened", "email_id": "tpl-news"},
                "steps": [
                    {"id": "e1", "type": "send_email", "template_id": "tpl-news"},
                    {"id": "e2", "type": "send_email", "template_id": "tpl-old"},
                    {"id": "m1", "type": "send_sms", "template_id": "tpl-recall"}
                ]
            })],
        );
        let view = |node: &str| {
            db.query(
                "automation_builder",
                json!({"automation_id": "a3", "selected_node": node}),
            )
            .unwrap()
        };
        let picker = |v: &Value, field: &str| -> (String, Vec<(Value, String)>) {
            let f = panel_field(v, field);
            let options = f["options"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| (o["value"].clone(), o["label"].as_str().unwrap().to_string()))
                .collect();
            (f["kind"].as_str().unwrap().to_string(), options)
        };
        let opts = |pairs: &[(Value, &str)]| -> Vec<(Value, String)> {
            pairs
                .iter()
                .map(|(v, l)| (v.clone(), l.to_string()))
                .collect()
        };

        let v = view("e1");
        assert_eq!(
            picker(&v, "template_id"),
            (
                "select".to_string(),
                opts(&[
                    (Value::Null, "Inline content"),
                    (json!("tpl-news"), "Spring newsletter")
                ])
            ),
            "email templates only, deleted ones left out"
        );
        let v = view("e2");
        assert_eq!(
            picker(&v, "template_id").1,
            opts(&[
                (Value::Null, "Inline content"),
                (json!("tpl-news"), "Spring newsletter"),
                (json!("tpl-old"), "template tpl-old")
            ]),
            "the step's deleted template stays a choice"
        );
        let v = view("m1");
        assert_eq!(
            picker(&v, "template_id").1,
            opts(&[
                (Value::Null, "Inline message"),
                (json!("tpl-recall"), "Recall reminder")
            ])
        );
        let v = view("trigger");
        assert_eq!(
            picker(&v, "email_id"),
            (
                "select".to_string(),
                opts(&[
                    (Value::Null, "Any marketing email"),
                    (json!("tpl-news"), "Spring newsletter")
                ])
            )
        );
        let nodes = &v["build"]["canvas"]["nodes"];
        assert_eq!(nodes[0]["summary"], "Opened · Spring newsletter");
        assert_eq!(nodes[1]["summary"], "Template: Spring newsletter");
        assert_eq!(nodes[3]["summary"], "Template: Recall reminder");
    }

    /// A Delay's amount offers at most a year in its own unit, as save
    /// accepts.
    #[test]
    fn a_delays_maximum_is_a_year_in_its_unit() {
        let db = db();
        let v = db
            .query(
                "automation_builder",
                json!({"automation_id": "a1", "selected_node": "s2"}),
            )
            .unwrap();
        let amount = panel_field(&v, "amount");
        assert_eq!(
            (amount["min"].clone(), amount["max"].clone()),
            (json!(1), json!(365))
        );
    }

    #[test]
    fn details_tab() {
        let db = db();
        let v = db
            .query(
                "automation_builder",
                json!({"automation_id": "a1", "tab": "details"}),
            )
            .unwrap();
        assert_eq!(v["active_tab"], "details");
        assert_eq!(v["tabs"][0]["selected"], true);
        let d = &v["details"];
        let general = d["general"]["fields"].as_array().unwrap();
        assert_eq!(general.len(), 4);
        assert_eq!(general[0]["value"], "New lead welcome series");
        assert_eq!(general[1]["value"], "book_appointment");
        assert_eq!(general[1]["options"].as_array().unwrap().len(), 8);
        assert_eq!(general[2]["id"], "goal_lookback_days");
        assert_eq!(general[2]["value"], 30);
        assert_eq!(general[3]["value"], "For website leads");
        assert_eq!(d["run_window"]["mode"]["value"], "any_time");
        assert_eq!(d["run_window"]["days_visible"], false);
        assert_eq!(d["run_window"]["days"].as_array().unwrap().len(), 7);
        assert_eq!(d["run_window"]["time_zone"], "America/New_York");
        assert_eq!(d["run_window"]["uses_module_default"], false);
        let toggles = d["unenrollment"]["fields"].as_array().unwrap();
        let ids: Vec<&str> = toggles.iter().map(|t| t["id"].as_str().unwrap()).collect();
        assert_eq!(
            ids,
            [
                "unenrollment.goal_met",
                "unenrollment.email_reply",
                "unenrollment.sms_opt_out"
            ]
        );
        assert_eq!(toggles[0]["value"], true);
        assert_eq!(toggles[1]["value"], false);
        assert_eq!(toggles[2]["value"], true);
        assert_eq!(
            toggles[2]["help"],
            "STOP reply removes the contact from the automation."
        );
        assert_eq!(d["status"]["label"], "Active");
        assert_eq!(d["entered_by"], "Dr. Adams");
        assert_eq!(d["version"], 1);
        assert!(d["last_updated"]["rfc3339"].is_string());
    }

    /// The screen carries the stored definition whole: what the API set
    /// and no field shows (here a 60-day lookback) goes back unchanged
    /// with the Update, where a definition rebuilt from the fields reset it.
    #[test]
    fn the_stored_definition_comes_with_the_screen_for_the_update() {
        let db = Db::new();
        let mut def = welcome();
        def["goal_lookback_days"] = json!(60);
        def["steps"] = json!([{"id": "s1", "type": "delay", "amount": 2, "unit": "days"}]);
        db.automation("a1", "active", NOW - 1000, &[def]);
        let v = db
            .query("automation_builder", json!({"automation_id": "a1"}))
            .unwrap();
        let sent = &v["definition"];
        assert_eq!(sent["goal_lookback_days"], 60);
        let stored: crate::model::automation::AutomationDefinition =
            serde_json::from_value(sent.clone()).unwrap();
        assert_eq!(stored.goal_lookback_days, 60);
        assert_eq!(stored.steps.len(), 1);
        assert_eq!(v["details"]["general"]["fields"][2]["value"], 60);
        let wizard = db.query("automation_builder", Value::Null).unwrap();
        assert!(wizard["definition"].is_null());
    }

    #[test]
    fn wizard_empty_state_uses_default_window() {
        let db = db();
        let v = db.query("automation_builder", Value::Null).unwrap();
        assert_eq!(v["mode"], "create");
        assert!(v["automation_id"].is_null());
        assert!(v["tabs"].as_array().unwrap().is_empty());
        let rail: Vec<&str> = v["step_rail"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["label"].as_str().unwrap())
            .collect();
        assert_eq!(rail, ["Details", "Build"]);
        assert_eq!(v["step_rail"][1]["state"], "current");
        assert_eq!(v["footer"][1]["label"], "Save automation");
        assert_eq!(v["footer"][1]["command"]["command"], "automation.create");
        assert!(v["header"]["update"].is_null());
        let rw = &v["details"]["run_window"];
        assert_eq!(rw["mode"]["value"], "specific_hours");
        assert_eq!(rw["uses_module_default"], true);
        assert_eq!(rw["days"][0]["label"], "Monday");
        assert_eq!(rw["days"][0]["start"], "09:00");
        assert_eq!(rw["days"][5]["enabled"], false);
        assert_eq!(ids(&v["build"]["canvas"]["nodes"]), ["trigger", "end"]);
        let panel = &v["build"]["config_panel"];
        assert_eq!(panel["fields"].as_array().unwrap().len(), 1);
        assert!(panel["fields"][0]["value"].is_null());
        assert!(v["details"]["status"].is_null());

        let v = db
            .query("automation_builder", json!({"tab": "details"}))
            .unwrap();
        assert_eq!(v["footer"][1]["label"], "Next");
        assert_eq!(v["step_rail"][0]["state"], "current");
        let e = db
            .query("automation_builder", json!({"selected_node": "s1"}))
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::NotFound);
    }

    #[test]
    fn trigger_secondary_controls() {
        let db = Db::new();
        let cases = [
            (
                json!({"type": "birthday", "offset": "seven_days_before"}),
                "Offset",
                5,
            ),
            (json!({"type": "inactive_for_days"}), "Days", 0),
            (json!({"type": "form_submitted"}), "Form", 1),
            (
                json!({"type": "email_engagement", "engagement": "either"}),
                "Engagement type",
                3,
            ),
            (
                json!({"type": "property_changed", "property": "status", "new_value": "patient"}),
                "Property",
                22,
            ),
        ];
        for (i, (trigger, label, n_options)) in cases.into_iter().enumerate() {
            let id = format!("t{i}");
            db.automation(
                &id,
                "draft",
                NOW,
                &[json!({"name": "T", "trigger": trigger, "steps": []})],
            );
            let v = db
                .query("automation_builder", json!({"automation_id": id}))
                .unwrap();
            let f = &v["build"]["config_panel"]["fields"][1];
            assert_eq!(f["label"], label, "{trigger}");
            assert_eq!(
                f["options"].as_array().map(|o| o.len()).unwrap_or(0),
                n_options,
                "{trigger}"
            );
            if label == "Property" {
                let values: Vec<&Value> = f["options"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|o| &o["value"])
                    .collect();
                assert!(values.contains(&&json!("insurance_verification")));
                assert!(values.contains(&&json!("portal_active")));
                assert!(
                    !values.contains(&&json!("last_activity")),
                    "computed: cannot fire"
                );
            }
            if label == "Days" {
                assert_eq!(f["value"], 90);
                assert_eq!(
                    v["build"]["canvas"]["nodes"][0]["summary"],
                    "Last Activity older than 90 days"
                );
            }
            if label == "Offset" {
                assert_eq!(
                    v["build"]["canvas"]["nodes"][0]["summary"],
                    "Offset: 7 days before"
                );
            }
            if label == "Property" {
                assert_eq!(v["build"]["config_panel"]["fields"][2]["value"], "patient");
                assert_eq!(
                    v["build"]["canvas"]["nodes"][0]["summary"],
                    "Status changes to Patient"
                );
            }
            assert_eq!(ids(&v["build"]["canvas"]["nodes"]), ["trigger", "end"]);
        }
    }

    #[test]
    fn errors() {
        let db = db();
        let e = db
            .query("automation_builder", json!({"automation_id": "nope"}))
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::NotFound);
        assert!(e.to_string().contains("automation nope"), "{e}");
        let e = db
            .query(
                "automation_builder",
                json!({"automation_id": "a1", "tab": "performance"}),
            )
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::Invalid);
        assert!(e.to_string().contains("tab"), "{e}");
        let e = db
            .query("automation_builder", json!({"automation_id": ""}))
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::Invalid);
        assert!(e.to_string().contains("automation_id"), "{e}");
        db.conn
            .execute("UPDATE automations SET deleted_at = 1 WHERE id = 'a1'", [])
            .unwrap();
        let e = db
            .query("automation_builder", json!({"automation_id": "a1"}))
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::NotFound);
    }
}
