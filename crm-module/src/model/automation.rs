//! Automation definitions (SPEC §2): details, one trigger, a tree of steps.
//!
//! A definition is a versioned document: every save of an automation stores a
//! new version, and every enrollment records the version it runs. Steps carry
//! stable ids chosen by the builder (or assigned on create), which is what
//! lets in-flight contacts follow an edit (see [`Flow::migrate_position`]).
//!
//! The canvas is a tree: `steps` is the main path; an If/then branch ends its
//! chain and splits into a YES chain and a NO chain, each ending in its own
//! End node.

use std::collections::HashMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::contact::{normalize_property, validate_id};
use crate::schedule::{BirthdayOffset, RunWindow};

/// Lifecycle state of an automation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AutomationStatus {
    /// Saved but never activated.
    Draft,
    /// Enrolling and running.
    Active,
    /// Paused: no new enrollments; in-flight contacts hold at their step until reactivated.
    Inactive,
}

impl AutomationStatus {
    /// The value stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            AutomationStatus::Draft => "draft",
            AutomationStatus::Active => "active",
            AutomationStatus::Inactive => "inactive",
        }
    }

    /// Parses a stored value.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "draft" => Some(AutomationStatus::Draft),
            "active" => Some(AutomationStatus::Active),
            "inactive" => Some(AutomationStatus::Inactive),
            _ => None,
        }
    }

    /// The label the UI shows.
    pub fn label(self) -> &'static str {
        match self {
            AutomationStatus::Draft => "Draft",
            AutomationStatus::Active => "Active",
            AutomationStatus::Inactive => "Inactive",
        }
    }
}

/// The seven automation goals (SPEC §2.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum GoalKind {
    /// First appointment, any provider: Status flips Lead → Patient.
    BookAppointment,
    /// An existing Patient books another appointment after enrolling.
    RebookAppointment,
    /// A contact whose last contact-initiated activity is 90 calendar days
    /// old or more does something again.
    PatientReactivation,
    /// A review is attached to the contact.
    ReviewSubmitted,
    /// Insurance verification flips to Verified.
    VerificationComplete,
    /// The patient portal account becomes active.
    PortalActivated,
    /// Any open, click, reply, form submission or page visit.
    Engagement,
}

impl GoalKind {
    /// All goals, in the order the UI lists them.
    pub const ALL: [GoalKind; 7] = [
        GoalKind::BookAppointment,
        GoalKind::RebookAppointment,
        GoalKind::PatientReactivation,
        GoalKind::ReviewSubmitted,
        GoalKind::VerificationComplete,
        GoalKind::PortalActivated,
        GoalKind::Engagement,
    ];

    /// The label the UI shows.
    pub fn label(self) -> &'static str {
        match self {
            GoalKind::BookAppointment => "Book appointment",
            GoalKind::RebookAppointment => "Rebook appointment",
            GoalKind::PatientReactivation => "Patient reactivation",
            GoalKind::ReviewSubmitted => "Review submitted",
            GoalKind::VerificationComplete => "Verification complete",
            GoalKind::PortalActivated => "Patient portal activated",
            GoalKind::Engagement => "Engagement",
        }
    }

    /// The stable id.
    pub fn id(self) -> &'static str {
        match self {
            GoalKind::BookAppointment => "book_appointment",
            GoalKind::RebookAppointment => "rebook_appointment",
            GoalKind::PatientReactivation => "patient_reactivation",
            GoalKind::ReviewSubmitted => "review_submitted",
            GoalKind::VerificationComplete => "verification_complete",
            GoalKind::PortalActivated => "portal_activated",
            GoalKind::Engagement => "engagement",
        }
    }
}

/// Unenrollment toggles (SPEC §2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Unenrollment {
    /// Exit as soon as the goal is reached (off by default).
    #[serde(default)]
    pub goal_met: bool,
    /// Exit when the contact replies to an email.
    #[serde(default)]
    pub email_reply: bool,
    /// Exit when the contact replies STOP (or another opt-out keyword) by SMS.
    #[serde(default = "yes")]
    pub sms_opt_out: bool,
}

fn yes() -> bool {
    true
}

impl Default for Unenrollment {
    fn default() -> Self {
        Unenrollment {
            goal_met: false,
            email_reply: false,
            sms_opt_out: true,
        }
    }
}

/// Email engagement kinds of the Email engagement trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EmailEngagement {
    /// An open (tracking pixel).
    Opened,
    /// A click on a tracked link.
    Clicked,
    /// Either an open or a click.
    Either,
}

/// The enrollment trigger: 10 criteria in 5 themes (SPEC §2.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Trigger {
    /// Lifecycle: the first time the module sees a contact. `source` narrows by
    /// Lead Source (`website_form`, `walk_in`, `manual_entry`, `import`, or a
    /// host-defined value); absent means any source.
    ContactCreated {
        /// Lead Source to match, or none for any.
        #[serde(default)]
        source: Option<String>,
    },
    /// Lifecycle: Status flips Lead → Patient.
    // Written `{}`, not as a unit variant, so that serde refuses a field
    // given with it (as it does for the other variants).
    StatusChangedToPatient {},
    /// Forms & lists: a form submission; `form_id` absent means any form.
    FormSubmitted {
        /// The form to watch, or none for any.
        #[serde(default)]
        form_id: Option<String>,
    },
    /// Forms & lists: the contact joins the list.
    AddedToList {
        /// The list to watch.
        list_id: String,
    },
    /// Forms & lists: the contact leaves the list.
    RemovedFromList {
        /// The list to watch.
        list_id: String,
    },
    /// Properties: a property changes; `new_value` narrows to a change to that value.
    PropertyChanged {
        /// The property to watch.
        property: String,
        /// Only fire when the new value is this one.
        #[serde(default)]
        new_value: Option<Value>,
    },
    /// Engagement: an open and/or click on a marketing email.
    EmailEngagement {
        /// What counts as engaged.
        engagement: EmailEngagement,
        /// The email (template id) to watch, or none for any marketing email.
        #[serde(default)]
        email_id: Option<String>,
    },
    /// Engagement: an SMS reply that is not an opt-out keyword.
    SmsReply {
        /// The SMS (template id) to watch, or none for any marketing SMS.
        #[serde(default)]
        sms_id: Option<String>,
    },
    /// Date-based: yearly around the contact's date of birth.
    Birthday {
        /// When, relative to the birthday.
        offset: BirthdayOffset,
    },
    /// Date-based: Last Activity older than `days`.
    InactiveForDays {
        /// Days without activity (default 90).
        #[serde(default = "ninety")]
        days: u32,
    },
}

fn ninety() -> u32 {
    90
}

impl Trigger {
    /// True for the date-based triggers, which are evaluated once per practice day.
    pub fn is_date_based(&self) -> bool {
        matches!(
            self,
            Trigger::Birthday { .. } | Trigger::InactiveForDays { .. }
        )
    }

    /// The stable id of the criterion.
    pub fn kind_id(&self) -> &'static str {
        match self {
            Trigger::ContactCreated { .. } => "contact_created",
            Trigger::StatusChangedToPatient {} => "status_changed_to_patient",
            Trigger::FormSubmitted { .. } => "form_submitted",
            Trigger::AddedToList { .. } => "added_to_list",
            Trigger::RemovedFromList { .. } => "removed_from_list",
            Trigger::PropertyChanged { .. } => "property_changed",
            Trigger::EmailEngagement { .. } => "email_engagement",
            Trigger::SmsReply { .. } => "sms_reply",
            Trigger::Birthday { .. } => "birthday",
            Trigger::InactiveForDays { .. } => "inactive_for_days",
        }
    }
}

/// The builder's node of the trigger.
pub const TRIGGER_NODE: &str = "trigger";

/// The builder's End node of the main path.
pub const END_NODE: &str = "end";

/// The builder's End node of an If/then's YES (or NO) path.
pub fn branch_end_node(branch_id: &str, yes: bool) -> String {
    format!("{branch_id}.{}.end", if yes { "yes" } else { "no" })
}

/// Whether `id` names one of the builder's own nodes ([`TRIGGER_NODE`],
/// [`END_NODE`], a [`branch_end_node`]) rather than a step.
fn is_builder_node(id: &str) -> bool {
    id == TRIGGER_NODE
        || id == END_NODE
        || [true, false]
            .into_iter()
            .any(|yes| id.ends_with(&branch_end_node("", yes)))
}

/// The longest a Delay waits (a day counted as 24 hours).
pub const MAX_DELAY: crate::clock::Millis = 365 * crate::clock::DAY;

/// Unit of a Delay step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DelayUnit {
    /// Minutes.
    Minutes,
    /// Hours.
    Hours,
    /// Days.
    Days,
    /// Weeks.
    Weeks,
}

impl DelayUnit {
    /// When a delay of `amount` units started at `from` ends: minutes and
    /// hours are elapsed time; days and weeks are calendar days in the
    /// practice's time zone `tz`, at the same wall-clock time across a DST
    /// change ("1 day" after 16:30 is 16:30 the next day).
    pub fn after(
        self,
        from: crate::clock::Millis,
        amount: u32,
        tz: chrono_tz::Tz,
    ) -> crate::clock::Millis {
        match self {
            DelayUnit::Minutes | DelayUnit::Hours => from + i64::from(amount) * self.millis(),
            DelayUnit::Days => crate::schedule::add_local_days(from, amount, tz),
            DelayUnit::Weeks => crate::schedule::add_local_days(from, amount.saturating_mul(7), tz),
        }
    }

    /// The largest amount of this unit a Delay takes: [`MAX_DELAY`] in
    /// whole units (525,600 minutes, 8,760 hours, 365 days, 52 weeks).
    pub fn max_amount(self) -> i64 {
        MAX_DELAY / self.millis()
    }

    /// Nominal length of one unit in milliseconds (a day as 24 hours).
    pub fn millis(self) -> i64 {
        match self {
            DelayUnit::Minutes => crate::clock::MINUTE,
            DelayUnit::Hours => crate::clock::HOUR,
            DelayUnit::Days => crate::clock::DAY,
            DelayUnit::Weeks => 7 * crate::clock::DAY,
        }
    }
}

/// Who a Create task step assigns the task to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Assignee {
    /// A named staff member.
    Staff {
        /// Staff id in the host.
        id: String,
        /// Display name.
        #[serde(default)]
        name: Option<String>,
    },
    /// Whoever owns the contact when the step runs.
    // `{}`: a field given with it is refused (see `Trigger`).
    ContactOwner {},
    /// A shared queue such as `front_desk`.
    Queue {
        /// Queue name.
        name: String,
    },
}

/// Email sender identity override of one step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SenderOverride {
    /// Display name.
    #[serde(default)]
    pub from_name: Option<String>,
    /// From address.
    #[serde(default)]
    pub from_address: Option<String>,
    /// Reply-to address.
    #[serde(default)]
    pub reply_to: Option<String>,
}

/// The SMS an email step falls back to (issue 3 §7). Same category and
/// preference bypass as its step; sent from the module's default number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SmsFallback {
    /// Message text (placeholders as in an SMS step).
    pub message: String,
}

/// The email an SMS step falls back to (issue 3 §7). Same category and
/// preference bypass as its step; sent with the module's sender identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailFallback {
    /// Subject.
    pub subject: String,
    /// HTML body (placeholders as in an email step).
    pub body: String,
}

/// The seven properties Set property may write (SPEC §2.3 decision).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SettableProperty {
    /// `patient` only: Lead → Patient is for good, and a patient never
    /// becomes a lead again.
    Status,
    /// A lead source.
    LeadSource,
    /// `{ "id", "name" }` of a staff member.
    Owner,
    /// `{ "id", "name" }` of a provider.
    Provider,
    /// `{ "add": [..], "remove": [..] }`.
    Tags,
    /// Only `unsubscribed`: automations may not re-subscribe.
    SmsSubscription,
    /// Only `unsubscribed`: automations may not re-subscribe.
    EmailSubscription,
}

impl SettableProperty {
    /// The contact property it writes.
    pub fn property(self) -> &'static str {
        match self {
            SettableProperty::Status => "status",
            SettableProperty::LeadSource => "lead_source",
            SettableProperty::Owner => "owner",
            SettableProperty::Provider => "provider",
            SettableProperty::Tags => "tags",
            SettableProperty::SmsSubscription => "sms_subscription",
            SettableProperty::EmailSubscription => "email_subscription",
        }
    }
}

/// Comparison of a property condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CompareOp {
    /// Equal (case-insensitive for text; membership for tags).
    Equals,
    /// Not equal.
    NotEquals,
    /// Text contains (case-insensitive) or list contains.
    Contains,
    /// Numerically greater.
    GreaterThan,
    /// Numerically smaller.
    LessThan,
    /// Has a value.
    IsSet,
    /// Has no value.
    IsNotSet,
}

impl CompareOp {
    /// Every comparison, in the order the builder lists them.
    pub const ALL: [CompareOp; 7] = [
        CompareOp::Equals,
        CompareOp::NotEquals,
        CompareOp::Contains,
        CompareOp::GreaterThan,
        CompareOp::LessThan,
        CompareOp::IsSet,
        CompareOp::IsNotSet,
    ];
}

/// Engagement with an earlier step, for If/then conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepEngagement {
    /// The message of that step was opened.
    Opened,
    /// A link in it was clicked.
    Clicked,
    /// The contact replied to it.
    Replied,
}

/// An If/then condition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Condition {
    /// A contact property compared with a value.
    Property {
        /// Property name (known or custom).
        property: String,
        /// Comparison.
        op: CompareOp,
        /// Value to compare with (not used by is_set / is_not_set).
        #[serde(default)]
        value: Option<Value>,
    },
    /// Membership of a static list.
    ListMembership {
        /// The list.
        list_id: String,
        /// True: is a member; false: is not.
        #[serde(default = "yes")]
        member: bool,
    },
    /// Engagement with an earlier message step of this automation.
    StepEngagement {
        /// The earlier step.
        step_id: String,
        /// The engagement looked for.
        engagement: StepEngagement,
    },
    /// Whether this enrollment has reached the automation's goal.
    // `{}`: a field given with it is refused (see `Trigger`).
    GoalReached {},
    /// All of the conditions hold.
    All {
        /// The conditions.
        conditions: Vec<Condition>,
    },
    /// Any of the conditions holds.
    Any {
        /// The conditions.
        conditions: Vec<Condition>,
    },
}

/// A step on the canvas. A field its type does not have is refused by
/// name (a misspelt `due_in_minute` would otherwise leave the task due at
/// once).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(extend("unevaluatedProperties" = false))]
pub struct Step {
    /// Stable id, unique within the automation across versions.
    #[serde(default)]
    pub id: String,
    /// Title on the canvas card; a default is derived from the type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What the step does.
    #[serde(flatten)]
    pub kind: StepKind,
}

/// The step types of SPEC §2.3.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum StepKind {
    /// Send an email (a saved template, or inline content).
    SendEmail {
        /// Saved email template (asset) id.
        #[serde(default)]
        template_id: Option<String>,
        /// Subject (inline content).
        #[serde(default)]
        subject: String,
        /// Preheader (inline content).
        #[serde(default)]
        preheader: String,
        /// Body (inline content).
        #[serde(default)]
        body: String,
        /// Sender identity override.
        #[serde(default)]
        sender: Option<SenderOverride>,
        /// Marketing (default) or care.
        #[serde(default)]
        category: crate::messaging::consent::Category,
        /// Care only: send to a channel with no recorded consent. Never overrides an unsubscribe or STOP.
        #[serde(default)]
        bypass_preferences: bool,
        /// Email → SMS fallback: the SMS sent instead when the email may not
        /// go out (no address, no consent, undeliverable) or hard-fails.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fallback: Option<SmsFallback>,
    },
    /// Send an SMS.
    SendSms {
        /// Saved SMS template (asset) id.
        #[serde(default)]
        template_id: Option<String>,
        /// Message text (inline content).
        #[serde(default)]
        message: String,
        /// Sender number override.
        #[serde(default)]
        sender_number: Option<String>,
        /// Marketing (default) or care.
        #[serde(default)]
        category: crate::messaging::consent::Category,
        /// Care only: send to a channel with no recorded consent. Never overrides an unsubscribe or STOP.
        #[serde(default)]
        bypass_preferences: bool,
        /// SMS → email fallback: the email sent instead when the SMS may not
        /// go out (no number, no consent, a number that hard-bounced) or
        /// fails.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fallback: Option<EmailFallback>,
    },
    /// Wait.
    Delay {
        /// How many units.
        amount: u32,
        /// The unit.
        unit: DelayUnit,
    },
    /// If/then: YES and NO paths, each ending.
    Branch {
        /// The condition.
        condition: Condition,
        /// Steps when the condition holds.
        #[serde(default)]
        yes: Vec<Step>,
        /// Steps when it does not.
        #[serde(default)]
        no: Vec<Step>,
    },
    /// Drop a task in the host's queue.
    CreateTask {
        /// Task title.
        title: String,
        /// Who gets it.
        assignee: Assignee,
        /// Due this many minutes after the step runs.
        #[serde(default)]
        due_in_minutes: u32,
    },
    /// Write a property back to the host's contact record.
    SetProperty {
        /// Which property.
        property: SettableProperty,
        /// The value (for tags: `{ "add": [...], "remove": [...] }`).
        value: Value,
    },
    /// Add the contact to a static list.
    AddToList {
        /// The list.
        list_id: String,
    },
    /// A custom step type of an installed step plugin (WebAssembly), run
    /// through the outbox; the contact waits at it until the plugin answers.
    Custom {
        /// The plugin.
        plugin_id: String,
        /// The plugin's step type.
        step_type: String,
        /// Config, validated against the step type's JSON Schema on save and
        /// again before each run.
        #[serde(default = "empty_object")]
        config: Value,
        /// True for a step type that returns YES / NO (set on save from the
        /// plugin's declaration): the step then ends its path.
        #[serde(default)]
        branches: bool,
        /// Steps when a branching step answers YES.
        #[serde(default)]
        yes: Vec<Step>,
        /// Steps when it answers NO (or fails, unless `on_failure` is `exit`).
        #[serde(default)]
        no: Vec<Step>,
        /// What a failed call does: `continue` (default: the next step, or
        /// the NO path of a branching step) or `exit` the automation.
        #[serde(default)]
        on_failure: OnFailure,
    },
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

/// What a failed custom step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Go on: the next step, or the NO path of a branching step.
    #[default]
    Continue,
    /// The contact exits the automation (reason `step_failed`).
    Exit,
}

impl StepKind {
    /// The stable id of the step type.
    pub fn type_id(&self) -> &'static str {
        match self {
            StepKind::SendEmail { .. } => "send_email",
            StepKind::SendSms { .. } => "send_sms",
            StepKind::Delay { .. } => "delay",
            StepKind::Branch { .. } => "branch",
            StepKind::CreateTask { .. } => "create_task",
            StepKind::SetProperty { .. } => "set_property",
            StepKind::AddToList { .. } => "add_to_list",
            StepKind::Custom { .. } => "custom",
        }
    }

    /// What a step is, for telling whether an id names the same step across
    /// versions: the type id, and for a custom step its plugin and step type.
    pub fn identity(&self) -> String {
        match self {
            StepKind::Custom {
                plugin_id,
                step_type,
                ..
            } => format!("custom step {step_type} of plugin {plugin_id}"),
            other => other.type_id().to_string(),
        }
    }

    /// The label of the step type in the palette.
    pub fn type_label(&self) -> &'static str {
        match self {
            StepKind::SendEmail { .. } => "Send email",
            StepKind::SendSms { .. } => "Send SMS",
            StepKind::Delay { .. } => "Delay",
            StepKind::Branch { .. } => "If / then branch",
            StepKind::CreateTask { .. } => "Create task",
            StepKind::SetProperty { .. } => "Set property",
            StepKind::AddToList { .. } => "Add to list",
            StepKind::Custom { .. } => "Custom step",
        }
    }

    /// The YES and NO paths of a step that splits the canvas: an If/then
    /// branch, or a branching custom step.
    pub fn paths(&self) -> Option<(&Vec<Step>, &Vec<Step>)> {
        match self {
            StepKind::Branch { yes, no, .. } => Some((yes, no)),
            StepKind::Custom {
                branches: true,
                yes,
                no,
                ..
            } => Some((yes, no)),
            _ => None,
        }
    }

    /// [`StepKind::paths`], mutable.
    pub fn paths_mut(&mut self) -> Option<(&mut Vec<Step>, &mut Vec<Step>)> {
        match self {
            StepKind::Branch { yes, no, .. } => Some((yes, no)),
            StepKind::Custom {
                branches: true,
                yes,
                no,
                ..
            } => Some((yes, no)),
            _ => None,
        }
    }

    /// The fallback message of a communication step, as the step that would
    /// send it (inline content, same category and bypass, no fallback of its own).
    pub fn fallback(&self) -> Option<StepKind> {
        match self {
            StepKind::SendEmail {
                category,
                bypass_preferences,
                fallback: Some(f),
                ..
            } => Some(StepKind::SendSms {
                template_id: None,
                message: f.message.clone(),
                sender_number: None,
                category: *category,
                bypass_preferences: *bypass_preferences,
                fallback: None,
            }),
            StepKind::SendSms {
                category,
                bypass_preferences,
                fallback: Some(f),
                ..
            } => Some(StepKind::SendEmail {
                template_id: None,
                subject: f.subject.clone(),
                preheader: String::new(),
                body: f.body.clone(),
                sender: None,
                category: *category,
                bypass_preferences: *bypass_preferences,
                fallback: None,
            }),
            _ => None,
        }
    }

    /// The message channel of a communication step.
    pub fn channel(&self) -> Option<&'static str> {
        match self {
            StepKind::SendEmail { .. } => Some("email"),
            StepKind::SendSms { .. } => Some("sms"),
            _ => None,
        }
    }
}

impl Step {
    /// The title shown on the canvas: the given name, else derived from the type.
    pub fn title(&self) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        match &self.kind {
            StepKind::Delay { amount, unit } => {
                let u = match unit {
                    DelayUnit::Minutes => "minute",
                    DelayUnit::Hours => "hour",
                    DelayUnit::Days => "day",
                    DelayUnit::Weeks => "week",
                };
                format!("Wait {amount} {u}{}", if *amount == 1 { "" } else { "s" })
            }
            StepKind::CreateTask { title, .. } => format!("Task: {title}"),
            k => k.type_label().to_string(),
        }
    }
}

/// Maximum steps in one automation.
pub const MAX_STEPS: usize = 200;
/// Maximum branch nesting.
pub const MAX_DEPTH: usize = 16;

/// A whole automation definition: Details + Trigger + Build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AutomationDefinition {
    /// Name (kept in sync with the builder's title).
    pub name: String,
    /// Goal, optional.
    #[serde(default)]
    pub goal: Option<GoalKind>,
    /// Goal lookback window in days after enrollment (default 30).
    #[serde(default = "thirty")]
    pub goal_lookback_days: u32,
    /// Notes and context for the team.
    #[serde(default)]
    pub notes: String,
    /// When the automation may run; absent takes the module-wide default at creation.
    #[serde(default)]
    pub run_window: Option<RunWindow>,
    /// Unenrollment toggles.
    #[serde(default)]
    pub unenrollment: Unenrollment,
    /// The one enrollment trigger.
    pub trigger: Trigger,
    /// The main path of the canvas.
    #[serde(default)]
    pub steps: Vec<Step>,
}

fn thirty() -> u32 {
    30
}

impl AutomationDefinition {
    /// Whether reaching the goal ends a contact's run: *Goal met* on, with
    /// a goal to meet.
    pub fn leaves_on_goal(&self) -> bool {
        self.goal.is_some() && self.unenrollment.goal_met
    }

    /// Validates the definition and assigns ids to steps that have none
    /// (`s1`, `s2`, … skipping ids in use). Errors name the step by its path.
    pub fn validate_and_assign_ids(&mut self) -> Result<()> {
        self.validate_and_assign_ids_avoiding(&std::collections::HashSet::new())
    }

    /// [`validate_and_assign_ids`](Self::validate_and_assign_ids) for a new
    /// version of a saved automation: a new step never takes an id in
    /// `retired` (the ids of its earlier versions). A step's id keys its
    /// effects and its per-step figures, so an id reused for another step
    /// would let an enrollment's earlier effect swallow the new step's
    /// message and merge the two steps' performance.
    pub fn validate_and_assign_ids_avoiding(
        &mut self,
        retired: &std::collections::HashSet<String>,
    ) -> Result<()> {
        let name = self.name.trim();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(Error::invalid("name: must be 1 to 200 characters"));
        }
        self.name = name.to_string();
        if self.notes.chars().count() > 5000 {
            return Err(Error::invalid("notes: at most 5000 characters"));
        }
        if self.goal_lookback_days == 0 || self.goal_lookback_days > 365 {
            return Err(Error::invalid("goal_lookback_days: must be 1 to 365"));
        }
        if let Some(w) = &self.run_window {
            w.validate()
                .map_err(|m| Error::invalid(format!("run_window: {m}")))?;
        }
        validate_trigger(&self.trigger)?;
        if self.unenrollment.goal_met && self.goal.is_none() {
            return Err(Error::invalid(
                "unenrollment.goal_met: needs a goal (choose one, or turn Goal met off)",
            ));
        }
        let used = self.step_ids();
        let mut seen = std::collections::HashSet::new();
        for id in used.iter().filter(|i| !i.is_empty()) {
            validate_id("step id", id)?;
            // The builder names its own nodes `trigger`, `end` and
            // `<if/then>.yes.end` / `<if/then>.no.end`: a step by such a
            // name could not be selected on the canvas. A step saved by
            // such a name before keeps it (a new id would be a new step
            // to a live edit: its contacts would move on).
            if is_builder_node(id) && !retired.contains(id) {
                return Err(Error::invalid(format!(
                    "steps: step id {id} is reserved for the builder's trigger and End nodes"
                )));
            }
            if !seen.insert(id.clone()) {
                return Err(Error::invalid(format!("steps: duplicate step id {id}")));
            }
        }
        let mut next = 1usize;
        assign_ids(&mut self.steps, &mut seen, retired, &mut next);
        let total = seen.len();
        if total > MAX_STEPS {
            return Err(Error::TooLarge(format!("steps: at most {MAX_STEPS} steps")));
        }
        validate_chain(&self.steps, "steps", 0)?;
        check_condition_refs(&Flow::new(self))
    }

    /// The ids of every step on the canvas, branches included.
    pub fn step_ids(&self) -> Vec<String> {
        self.all_steps().iter().map(|s| s.id.clone()).collect()
    }

    /// Every step on the canvas, depth first (a branch, then its YES path,
    /// then its NO path).
    pub fn all_steps(&self) -> Vec<&Step> {
        let mut out = Vec::new();
        collect_steps(&self.steps, &mut out);
        out
    }

    /// The lists and templates the definition names, each with where: the
    /// trigger, a step's template or Add to list, a branch's list condition.
    /// They must exist to save it, and cannot be deleted while it names them.
    pub fn references(&self) -> Vec<(String, Reference)> {
        let mut out = Vec::new();
        match &self.trigger {
            Trigger::AddedToList { list_id } | Trigger::RemovedFromList { list_id } => {
                out.push(("trigger".to_string(), Reference::List(list_id.clone())));
            }
            Trigger::EmailEngagement {
                email_id: Some(id), ..
            } => out.push(("trigger".to_string(), Reference::Template(id.clone()))),
            Trigger::SmsReply { sms_id: Some(id) } => {
                out.push(("trigger".to_string(), Reference::Template(id.clone())))
            }
            _ => {}
        }
        collect_references(&self.steps, &mut out);
        out
    }

    /// The run window, falling back to `default`.
    pub fn window<'a>(&'a self, default: &'a RunWindow) -> &'a RunWindow {
        self.run_window.as_ref().unwrap_or(default)
    }
}

fn validate_trigger(t: &Trigger) -> Result<()> {
    let loc = |e: Error| e.at("trigger");
    match t {
        Trigger::ContactCreated { source: Some(s) } if s.is_empty() || s.len() > 64 => {
            Err(loc(Error::invalid("source: must be 1 to 64 characters")))
        }
        Trigger::FormSubmitted { form_id: Some(id) } => validate_id("form_id", id).map_err(loc),
        Trigger::AddedToList { list_id } | Trigger::RemovedFromList { list_id } => {
            validate_id("list_id", list_id).map_err(loc)
        }
        Trigger::PropertyChanged {
            property,
            new_value,
        } => {
            crate::model::contact::validate_key(property).map_err(loc)?;
            match (property.as_str(), new_value) {
                // A list property changes "to" a value when it comes to contain it.
                ("tags", Some(v)) if !v.is_string() => {
                    Err(loc(Error::invalid("new_value: a tag (string) for tags")))
                }
                // Computed on every touch or from the date: no change to
                // react to (Inactive for N days and Birthday cover them).
                (
                    "last_activity"
                    | "created_at"
                    | "age"
                    | "days_since_last_activity"
                    | "days_since_created",
                    _,
                ) => Err(loc(Error::invalid(format!(
                    "property: {property} is computed by the module; it cannot trigger an automation"
                )))),
                ("tags", _) | (_, None) => Ok(()),
                (p, Some(_)) if crate::model::contact::DERIVED_PROPERTIES.contains(&p) => Ok(()),
                // A staff member may be named by id or display name, as in
                // If/then conditions.
                (p, Some(Value::String(s))) if crate::model::contact::is_staff(p) => {
                    if s.trim().is_empty() || s.chars().count() > 200 {
                        Err(loc(Error::invalid(
                            "new_value: a staff member's id or name (1 to 200 characters)",
                        )))
                    } else {
                        Ok(())
                    }
                }
                (p, Some(v)) => normalize_property(p, v.clone()).map(|_| ()).map_err(loc),
            }
        }
        Trigger::EmailEngagement {
            email_id: Some(id), ..
        } => validate_id("email_id", id).map_err(loc),
        Trigger::SmsReply { sms_id: Some(id) } => validate_id("sms_id", id).map_err(loc),
        Trigger::InactiveForDays { days } if *days == 0 || *days > 3650 => {
            Err(loc(Error::invalid("days: must be 1 to 3650")))
        }
        _ => Ok(()),
    }
}

/// Something outside an automation that its definition names by id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// A static list.
    List(String),
    /// A saved email or SMS template.
    Template(String),
}

impl Reference {
    /// What it is (`list`, `template`) and its id, as messages name it.
    pub fn parts(&self) -> (&'static str, &str) {
        match self {
            Reference::List(id) => ("list", id),
            Reference::Template(id) => ("template", id),
        }
    }
}

fn collect_references(steps: &[Step], out: &mut Vec<(String, Reference)>) {
    fn lists_in(c: &Condition, here: &str, out: &mut Vec<(String, Reference)>) {
        match c {
            Condition::ListMembership { list_id, .. } => {
                out.push((here.to_string(), Reference::List(list_id.clone())))
            }
            Condition::All { conditions } | Condition::Any { conditions } => {
                conditions.iter().for_each(|c| lists_in(c, here, out))
            }
            _ => {}
        }
    }
    for s in steps {
        let here = format!("step {}", s.id);
        match &s.kind {
            StepKind::SendEmail {
                template_id: Some(t),
                ..
            }
            | StepKind::SendSms {
                template_id: Some(t),
                ..
            } => out.push((here, Reference::Template(t.clone()))),
            StepKind::AddToList { list_id } => out.push((here, Reference::List(list_id.clone()))),
            StepKind::Branch { condition, .. } => lists_in(condition, &here, out),
            _ => {}
        }
        if let Some((yes, no)) = s.kind.paths() {
            collect_references(yes, out);
            collect_references(no, out);
        }
    }
}

fn collect_steps<'a>(steps: &'a [Step], out: &mut Vec<&'a Step>) {
    for s in steps {
        out.push(s);
        if let Some((yes, no)) = s.kind.paths() {
            collect_steps(yes, out);
            collect_steps(no, out);
        }
    }
}

fn assign_ids(
    steps: &mut [Step],
    used: &mut std::collections::HashSet<String>,
    retired: &std::collections::HashSet<String>,
    next: &mut usize,
) {
    for s in steps {
        if s.id.is_empty() {
            s.id = loop {
                let id = format!("s{next}");
                if !used.contains(&id) && !retired.contains(&id) {
                    break id;
                }
                *next += 1;
            };
            used.insert(s.id.clone());
        }
        if let Some((yes, no)) = s.kind.paths_mut() {
            assign_ids(yes, used, retired, next);
            assign_ids(no, used, retired, next);
        }
    }
}

fn validate_chain(steps: &[Step], path: &str, depth: usize) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(Error::invalid(format!(
            "{path}: branches nest at most {MAX_DEPTH} deep"
        )));
    }
    for (i, s) in steps.iter().enumerate() {
        let here = format!("{path}[{i}] ({})", s.id);
        if let Some(n) = &s.name
            && (n.trim().is_empty() || n.chars().count() > 200)
        {
            return Err(Error::invalid(format!(
                "{here}.name: must be 1 to 200 characters"
            )));
        }
        let err = |m: &str| Err(Error::invalid(format!("{here}: {m}")));
        if let StepKind::SendEmail {
            category,
            bypass_preferences: true,
            ..
        }
        | StepKind::SendSms {
            category,
            bypass_preferences: true,
            ..
        } = &s.kind
            && *category == crate::messaging::consent::Category::Marketing
        {
            return err("bypass_preferences applies only to care messages, never to marketing");
        }
        match &s.kind {
            StepKind::SendEmail {
                template_id,
                subject,
                preheader,
                body,
                fallback,
                ..
            } => {
                if template_id.is_none() && (subject.trim().is_empty() || body.trim().is_empty()) {
                    return err("an email needs a template_id or a subject and a body");
                }
                if subject.chars().count() > 500
                    || preheader.chars().count() > 500
                    || body.len() > 512 * 1024
                {
                    return err(
                        "subject and preheader are limited to 500 characters and body to 512 KiB",
                    );
                }
                if let Some(f) = fallback {
                    if f.message.trim().is_empty() {
                        return err("fallback.message: the fallback SMS needs a message");
                    }
                    if f.message.chars().count() > 1600 {
                        return err("fallback.message: at most 1600 characters");
                    }
                }
            }
            StepKind::SendSms {
                template_id,
                message,
                sender_number,
                fallback,
                ..
            } => {
                if template_id.is_none() && message.trim().is_empty() {
                    return err("an SMS needs a template_id or a message");
                }
                if message.chars().count() > 1600 {
                    return err("message: at most 1600 characters");
                }
                if let Some(f) = fallback {
                    if f.subject.trim().is_empty() || f.body.trim().is_empty() {
                        return err("fallback: the fallback email needs a subject and a body");
                    }
                    if f.subject.chars().count() > 500 || f.body.len() > 512 * 1024 {
                        return err(
                            "fallback: subject is limited to 500 characters and body to 512 KiB",
                        );
                    }
                }
                if let Some(n) = sender_number {
                    normalize_property("phone", Value::String(n.clone())).map_err(|_| {
                        Error::invalid(format!("{here}.sender_number: must be a phone number"))
                    })?;
                }
            }
            StepKind::Delay { amount, unit } => {
                if *amount == 0 || i64::from(*amount) > unit.max_amount() {
                    return err("delay: amount must be at least 1 and at most 365 days in total");
                }
            }
            StepKind::Branch { condition, yes, no } => {
                if i + 1 != steps.len() {
                    return err(
                        "an If/then branch ends its path: put the following steps inside its YES or NO path",
                    );
                }
                validate_condition(condition, &format!("{here}.condition"))?;
                validate_chain(yes, &format!("{here}.yes"), depth + 1)?;
                validate_chain(no, &format!("{here}.no"), depth + 1)?;
            }
            StepKind::CreateTask {
                title,
                assignee,
                due_in_minutes,
            } => {
                if title.trim().is_empty() || title.chars().count() > 300 {
                    return err("title: must be 1 to 300 characters");
                }
                // Written as it is: the task carries the contact's id, and a
                // placeholder would reach the front desk as typed.
                if ["{{", "{%", "{#"].iter().any(|t| title.contains(t)) {
                    return err(
                        "title: placeholders are not filled in a task's title (the task names its contact by id)",
                    );
                }
                if *due_in_minutes > 60 * 24 * 365 {
                    return err("due_in_minutes: at most a year");
                }
                match assignee {
                    Assignee::Staff { id, .. } => {
                        validate_id("assignee.id", id).map_err(|e| e.at(&here))?
                    }
                    Assignee::Queue { name } if name.trim().is_empty() || name.len() > 100 => {
                        return err("assignee.name: must be 1 to 100 characters");
                    }
                    _ => {}
                }
            }
            StepKind::SetProperty { property, value } => {
                validate_set_property(*property, value).map_err(|e| e.at(&here))?;
            }
            StepKind::AddToList { list_id } => {
                validate_id("list_id", list_id).map_err(|e| e.at(&here))?
            }
            StepKind::Custom {
                plugin_id,
                step_type,
                config,
                branches,
                yes,
                no,
                ..
            } => {
                validate_id("plugin_id", plugin_id).map_err(|e| e.at(&here))?;
                validate_id("step_type", step_type).map_err(|e| e.at(&here))?;
                if !config.is_object() {
                    return err("config: must be an object");
                }
                if config.to_string().len() > 64 * 1024 {
                    return err("config: at most 64 KiB");
                }
                if *branches {
                    if i + 1 != steps.len() {
                        return err(
                            "a branching custom step ends its path: put the following steps inside its YES or NO path",
                        );
                    }
                    validate_chain(yes, &format!("{here}.yes"), depth + 1)?;
                    validate_chain(no, &format!("{here}.no"), depth + 1)?;
                } else if !yes.is_empty() || !no.is_empty() {
                    return err("yes/no paths belong to branching step types only");
                }
            }
        }
    }
    Ok(())
}

/// Validates the value of a Set property step.
pub fn validate_set_property(property: SettableProperty, value: &Value) -> Result<()> {
    match property {
        SettableProperty::Tags => {
            let Value::Object(o) = value else {
                return Err(Error::invalid(
                    "value: tags take {\"add\": [..], \"remove\": [..]}",
                ));
            };
            if o.keys().any(|k| k != "add" && k != "remove") || o.is_empty() {
                return Err(Error::invalid(
                    "value: tags take {\"add\": [..], \"remove\": [..]}",
                ));
            }
            for k in ["add", "remove"] {
                if let Some(v) = o.get(k) {
                    normalize_property("tags", v.clone()).map_err(|e| e.at("value"))?;
                }
            }
            Ok(())
        }
        SettableProperty::Status => {
            // Lead → Patient is for good (SPEC §1): a patient is never a lead again.
            let status = normalize_property("status", value.clone()).map_err(|e| e.at("value"))?;
            if status.as_str() != Some("patient") {
                return Err(Error::invalid(
                    "value: Status can only be set to Patient; a patient never becomes a lead again",
                ));
            }
            Ok(())
        }
        SettableProperty::SmsSubscription | SettableProperty::EmailSubscription => {
            if value.as_str() != Some("unsubscribed") {
                return Err(Error::invalid(
                    "value: automations may only unsubscribe; re-subscribing needs the person's own action",
                ));
            }
            Ok(())
        }
        p => normalize_property(p.property(), value.clone())
            .map(|_| ())
            .and_then(|_| {
                // Blank text clears nothing either: a Set property that
                // writes `""` would erase the lead source it means to set.
                if value.is_null() || value.as_str().is_some_and(|s| s.trim().is_empty()) {
                    Err(Error::invalid("value: required"))
                } else {
                    Ok(())
                }
            }),
    }
}

fn validate_condition(c: &Condition, path: &str) -> Result<()> {
    match c {
        Condition::Property {
            property,
            op,
            value,
        } => {
            crate::model::contact::validate_key(property).map_err(|e| e.at(path))?;
            // Instants (milliseconds since 1970), which no one can compare
            // with a number they would type: "more than 30" held for every
            // contact. Their whole days ago can be.
            if let Some(days) = match property.as_str() {
                "last_activity" => Some("days_since_last_activity"),
                "created_at" => Some("days_since_created"),
                _ => None,
            } {
                return Err(Error::invalid(format!(
                    "{path}.property: {property} is a moment in time; compare {days} (whole days ago, in the practice's time zone) instead"
                )));
            }
            let needs_value = !matches!(op, CompareOp::IsSet | CompareOp::IsNotSet);
            if needs_value && value.is_none() {
                return Err(Error::invalid(format!(
                    "{path}.value: required for this comparison"
                )));
            }
            match value {
                Some(v) if needs_value => check_comparison(property, *op, v)
                    .map_err(|m| Error::invalid(format!("{path}: {property}: {m}"))),
                _ => Ok(()),
            }
        }
        Condition::ListMembership { list_id, .. } => {
            validate_id("list_id", list_id).map_err(|e| e.at(path))
        }
        Condition::StepEngagement { step_id, .. } => {
            validate_id("step_id", step_id).map_err(|e| e.at(path))
        }
        Condition::GoalReached {} => Ok(()),
        Condition::All { conditions } | Condition::Any { conditions } => {
            if conditions.is_empty() || conditions.len() > 20 {
                return Err(Error::invalid(format!(
                    "{path}.conditions: 1 to 20 conditions"
                )));
            }
            for (i, c) in conditions.iter().enumerate() {
                validate_condition(c, &format!("{path}.conditions[{i}]"))?;
            }
            Ok(())
        }
    }
}

/// A comparison of a known or computed property that can be true for
/// some contact: one its type has (no "more than" of a Status, no
/// "contains" of a date), against a value of its type (a Status the
/// module knows, a number, a date). Anything else saved and then was false
/// for every contact. Custom properties have no declared type: any goes.
fn check_comparison(
    property: &str,
    op: CompareOp,
    value: &Value,
) -> std::result::Result<(), String> {
    use crate::model::contact::{PropertyType as T, normalize_property, property_type};
    let numeric = || match value {
        Value::Number(_) => Ok(()),
        // As the comparison reads it (`contact::as_number`).
        Value::String(_) if crate::model::contact::as_number(value).is_some() => Ok(()),
        _ => Err("value: must be a number".to_string()),
    };
    let ordered = matches!(op, CompareOp::GreaterThan | CompareOp::LessThan);
    let contains = op == CompareOp::Contains;
    match (property, property_type(property)) {
        ("age" | "days_since_last_activity" | "days_since_created", _) if !contains => numeric(),
        ("portal_active", _) if !ordered && !contains => match value {
            Value::Bool(_) => Ok(()),
            _ => Err("value: must be true or false".into()),
        },
        (
            "insurance_verification"
            | crate::messaging::consent::EMAIL_UNDELIVERABLE
            | crate::messaging::consent::SMS_UNDELIVERABLE,
            _,
        ) if !ordered => Ok(()),
        (_, Some(T::Number | T::Count)) if !contains => numeric(),
        (_, Some(T::Tags)) if !ordered => match value {
            Value::String(s) if !s.trim().is_empty() => Ok(()),
            _ => Err("value: must be a tag".into()),
        },
        // Text of any kind is searched as text ("1980" in a date of birth).
        (_, Some(T::Text(_) | T::Email | T::Phone | T::TimeZone | T::Choice(_) | T::Date))
            if contains =>
        {
            match value {
                Value::String(s) if !s.trim().is_empty() => Ok(()),
                _ => Err("value: must be text".into()),
            }
        }
        // A staff member matches by id or display name, or as an object.
        (_, Some(T::Staff))
            if !ordered
                && !contains
                && matches!(value, Value::String(s) if !s.trim().is_empty()) =>
        {
            Ok(())
        }
        (
            _,
            Some(
                ty @ (T::Choice(_)
                | T::Bool
                | T::Date
                | T::Staff
                | T::Text(_)
                | T::Email
                | T::Phone
                | T::TimeZone),
            ),
        ) if !ordered && !contains => match normalize_property(property, value.clone()) {
            // A date is stored canonical and compared as text: "1980-3-4"
            // would never equal the stored "1980-03-04".
            Ok(canonical) if matches!(ty, T::Date) && &canonical != value => {
                Err("value: must be a date YYYY-MM-DD".into())
            }
            Ok(_) => Ok(()),
            Err(Error::Invalid(m)) => Err(m.replace(&format!("{property}: "), "value: ")),
            Err(e) => Err(e.to_string()),
        },
        (_, None) if !crate::model::contact::DERIVED_PROPERTIES.contains(&property) => Ok(()),
        _ => Err(format!("cannot be compared with {}", op_name(op))),
    }
}

/// The comparisons an If/then condition on `property` may use, as saving
/// checks them (the builder offers these): having a value or not for
/// every property, and of the others those the property's type has.
pub fn operators_for(property: &str) -> Vec<CompareOp> {
    use CompareOp::*;
    CompareOp::ALL
        .into_iter()
        .filter(|op| {
            matches!(op, IsSet | IsNotSet)
                || !check_comparison(property, *op, &Value::Null)
                    .is_err_and(|m| m.starts_with("cannot be compared"))
        })
        .collect()
}

/// The comparison's name, as the definition writes it.
fn op_name(op: CompareOp) -> String {
    serde_json::to_value(op)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// An If/then's engagement conditions name a message step a contact
/// reaching it has passed: one before it on its own path, as the builder
/// offers. Any other step (the If/then itself, a step after it or on
/// another branch's path, a step that sends nothing) has no engagement a
/// contact here could have had, so the condition would always be false.
fn check_condition_refs(flow: &Flow) -> Result<()> {
    fn walk(c: &Condition, flow: &Flow, before: &[String], here: &str) -> Result<()> {
        match c {
            Condition::StepEngagement { step_id, .. } => match flow.step(step_id) {
                None => Err(Error::invalid(format!(
                    "{here}: condition refers to unknown step {step_id}"
                ))),
                Some(s) if s.kind.channel().is_none() => Err(Error::invalid(format!(
                    "{here}: condition refers to step {step_id}, which sends no message"
                ))),
                Some(_) if !before.contains(step_id) => Err(Error::invalid(format!(
                    "{here}: condition refers to step {step_id}, which is not before this If/then on its path"
                ))),
                Some(_) => Ok(()),
            },
            Condition::All { conditions } | Condition::Any { conditions } => conditions
                .iter()
                .try_for_each(|c| walk(c, flow, before, here)),
            _ => Ok(()),
        }
    }
    for id in flow.ordered_ids() {
        if let Some(Step {
            kind: StepKind::Branch { condition, .. },
            ..
        }) = flow.step(&id)
        {
            walk(condition, flow, &flow.path_to(&id), &format!("step {id}"))?;
        }
    }
    Ok(())
}

/// Where a step sits in the tree: its chain and index in it.
#[derive(Debug, Clone)]
struct Position {
    chain: usize,
    index: usize,
}

/// Navigation index over a definition's step tree.
#[derive(Debug, Clone)]
pub struct Flow {
    chains: Vec<Vec<String>>,
    positions: HashMap<String, Position>,
    steps: HashMap<String, Step>,
    branch_heads: HashMap<String, (Option<String>, Option<String>)>,
}

impl Flow {
    /// Builds the index of a (validated) definition.
    pub fn new(def: &AutomationDefinition) -> Self {
        let mut flow = Flow {
            chains: Vec::new(),
            positions: HashMap::new(),
            steps: HashMap::new(),
            branch_heads: HashMap::new(),
        };
        flow.add_chain(&def.steps);
        flow
    }

    fn add_chain(&mut self, steps: &[Step]) -> usize {
        let chain = self.chains.len();
        self.chains
            .push(steps.iter().map(|s| s.id.clone()).collect());
        for (index, s) in steps.iter().enumerate() {
            self.positions
                .insert(s.id.clone(), Position { chain, index });
            if let Some((yes, no)) = s.kind.paths() {
                let y = yes.first().map(|s| s.id.clone());
                let n = no.first().map(|s| s.id.clone());
                self.branch_heads.insert(s.id.clone(), (y, n));
                self.add_chain(yes);
                self.add_chain(no);
            }
            let mut shallow = s.clone();
            if let Some((yes, no)) = shallow.kind.paths_mut() {
                yes.clear();
                no.clear();
            }
            self.steps.insert(s.id.clone(), shallow);
        }
        chain
    }

    /// The first step of the main path (None: the canvas is empty).
    pub fn first(&self) -> Option<&str> {
        self.chains
            .first()
            .and_then(|c| c.first())
            .map(String::as_str)
    }

    /// A step by id (branches without their children).
    pub fn step(&self, id: &str) -> Option<&Step> {
        self.steps.get(id)
    }

    /// True when the step exists in this version.
    pub fn contains(&self, id: &str) -> bool {
        self.positions.contains_key(id)
    }

    /// The step after `id` in its chain (None: End of that path).
    pub fn next_after(&self, id: &str) -> Option<&str> {
        let p = self.positions.get(id)?;
        self.chains[p.chain].get(p.index + 1).map(String::as_str)
    }

    /// The first step of a branch's YES or NO path (None: that path is empty and ends at once).
    pub fn branch_head(&self, id: &str, yes: bool) -> Option<&str> {
        let (y, n) = self.branch_heads.get(id)?;
        if yes { y.as_deref() } else { n.as_deref() }
    }

    /// Where an in-flight contact at `step_id` of this (old) version continues in
    /// `new`: the same step if it survived, else the next surviving step after it
    /// on its old path, else End (None).
    ///
    /// A removed If/then (or branching custom step) on the way ends the old
    /// path, but the contact never took either of its paths: it continues at
    /// the first step, in the new version's canvas order, of those that were
    /// inside that branch and survived (steps an edit pulled out of the
    /// branch onto the path); none survived: End.
    pub fn migrate_position(&self, step_id: &str, new: &Flow) -> Option<String> {
        let mut cur = Some(step_id);
        while let Some(id) = cur {
            if new.contains(id) {
                return Some(id.to_string());
            }
            if self.branch_heads.contains_key(id) {
                let mut inside = Vec::new();
                self.walk_branch_paths(id, &mut inside);
                return new.ordered_ids().into_iter().find(|s| inside.contains(s));
            }
            cur = self.next_after(id);
        }
        None
    }

    /// The steps inside branch `id`'s YES and NO paths, nested ones too.
    fn walk_branch_paths(&self, id: &str, out: &mut Vec<String>) {
        if let Some((y, n)) = self.branch_heads.get(id) {
            for head in [y, n].into_iter().flatten() {
                if let Some(p) = self.positions.get(head) {
                    self.walk_chain(p.chain, out);
                }
            }
        }
    }

    /// The steps before `step_id` on its path from the first step: the
    /// earlier steps of its own path, the If/then that opened that path,
    /// and so on up to the main path (a path has one way in, and ends).
    /// Empty for an unknown step.
    pub fn path_to(&self, step_id: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut at = self.positions.get(step_id);
        while let Some(p) = at {
            out.extend(self.chains[p.chain][..p.index].iter().rev().cloned());
            // The If/then whose YES or NO path this chain is.
            let opener = self.branch_heads.iter().find(|(_, (y, n))| {
                [y, n]
                    .into_iter()
                    .flatten()
                    .any(|h| self.positions.get(h).is_some_and(|hp| hp.chain == p.chain))
            });
            at = opener.and_then(|(id, _)| {
                out.push(id.clone());
                self.positions.get(id)
            });
        }
        out.reverse();
        out
    }

    /// All step ids in canvas order (depth first, YES before NO).
    pub fn ordered_ids(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.walk_chain(0, &mut out);
        out
    }

    fn walk_chain(&self, chain: usize, out: &mut Vec<String>) {
        let Some(ids) = self.chains.get(chain) else {
            return;
        };
        for id in ids {
            out.push(id.clone());
            self.walk_branch_paths(id, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_step_refuses_fields_its_type_does_not_have() {
        let step = |v: serde_json::Value| serde_json::from_value::<Step>(v);
        let ok = step(
            json!({"id": "t", "name": "Call", "type": "create_task", "title": "Call",
            "assignee": {"kind": "queue", "name": "front_desk"}, "due_in_minutes": 60}),
        )
        .unwrap();
        assert_eq!(ok.id, "t");
        assert_eq!(ok.name.as_deref(), Some("Call"));
        for (bad, field) in [
            (
                json!({"type": "create_task", "title": "Call", "assignee": {"kind": "queue", "name": "front_desk"},
                "due_in_minute": 60}),
                "due_in_minute",
            ),
            (
                json!({"type": "send_email", "subject": "S", "body": "B", "category": "care",
                "bypass_preference": true}),
                "bypass_preference",
            ),
            (
                json!({"id": "d", "type": "delay", "amount": 1, "unit": "days", "bogus": 1}),
                "bogus",
            ),
        ] {
            let e = step(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("unknown field `{field}`")), "{e}");
        }
    }

    /// A kind that has no fields refuses one given with it, as the kinds
    /// with fields do: a field sent with the wrong kind (a builder that
    /// switched modes, a typo) is an error, not silently dropped.
    #[test]
    fn a_kind_without_fields_refuses_a_field_given_with_it() {
        fn refused<T: serde::de::DeserializeOwned + std::fmt::Debug>(
            v: serde_json::Value,
            field: &str,
        ) {
            let e = serde_json::from_value::<T>(v.clone())
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("unknown field `{field}`")), "{v}: {e}");
        }
        refused::<Trigger>(
            json!({"type": "status_changed_to_patient", "form_id": "intake"}),
            "form_id",
        );
        refused::<Assignee>(
            json!({"kind": "contact_owner", "name": "front_desk"}),
            "name",
        );
        refused::<Condition>(
            json!({"type": "goal_reached", "conditions": [{"type": "goal_reached"}]}),
            "conditions",
        );
        refused::<crate::schedule::RunWindow>(
            json!({"mode": "any_time", "days": [{"day": "mon", "enabled": true, "start": "09:00", "end": "17:00"}]}),
            "days",
        );
        // Alone, each is taken, and written back as it came.
        for (v, back) in [
            (
                serde_json::to_value(
                    serde_json::from_value::<Trigger>(json!({"type": "status_changed_to_patient"}))
                        .unwrap(),
                ),
                json!({"type": "status_changed_to_patient"}),
            ),
            (
                serde_json::to_value(
                    serde_json::from_value::<Assignee>(json!({"kind": "contact_owner"})).unwrap(),
                ),
                json!({"kind": "contact_owner"}),
            ),
            (
                serde_json::to_value(
                    serde_json::from_value::<Condition>(json!({"type": "goal_reached"})).unwrap(),
                ),
                json!({"type": "goal_reached"}),
            ),
            (
                serde_json::to_value(
                    serde_json::from_value::<crate::schedule::RunWindow>(
                        json!({"mode": "any_time"}),
                    )
                    .unwrap(),
                ),
                json!({"mode": "any_time"}),
            ),
        ] {
            assert_eq!(v.unwrap(), back);
        }
    }

    fn welcome() -> AutomationDefinition {
        serde_json::from_value(json!({
            "name": "New lead welcome series",
            "goal": "book_appointment",
            "trigger": {"type": "contact_created"},
            "steps": [
                {"type": "send_email", "subject": "Welcome", "body": "Hi {{firstname}}"},
                {"type": "delay", "amount": 2, "unit": "days"},
                {"type": "send_sms", "message": "Book with {{practice}}"},
                {"type": "branch", "condition": {"type": "property", "property": "status", "op": "equals", "value": "patient"},
                 "yes": [], "no": [{"type": "create_task", "title": "Call", "assignee": {"kind": "queue", "name": "front_desk"}}]}
            ]
        }))
        .unwrap()
    }

    #[test]
    fn ids_are_assigned_and_flow_navigates() {
        let mut d = welcome();
        d.validate_and_assign_ids().unwrap();
        let f = Flow::new(&d);
        assert_eq!(f.first(), Some("s1"));
        assert_eq!(f.next_after("s1"), Some("s2"));
        assert_eq!(f.next_after("s4"), None);
        assert_eq!(f.branch_head("s4", true), None);
        assert_eq!(f.branch_head("s4", false), Some("s5"));
        assert_eq!(f.next_after("s5"), None);
        assert_eq!(f.ordered_ids(), vec!["s1", "s2", "s3", "s4", "s5"]);
        assert_eq!(f.path_to("s5"), vec!["s1", "s2", "s3", "s4"]);
        assert_eq!(f.path_to("s3"), vec!["s1", "s2"]);
        assert!(f.path_to("s1").is_empty() && f.path_to("nope").is_empty());
    }

    #[test]
    fn the_path_to_a_step_in_a_nested_branch_leaves_out_the_other_paths() {
        let branch = |yes: Value, no: Value| json!({"type": "branch", "condition": {"type": "goal_reached"}, "yes": yes, "no": no});
        let mail = |id: &str| json!({"id": id, "type": "send_email", "subject": "s", "body": "b"});
        let mut outer = branch(
            json!([
                mail("y1"),
                branch(json!([mail("yy1")]), json!([mail("yn1"), mail("yn2")]))
            ]),
            json!([mail("n1")]),
        );
        outer["id"] = json!("b1");
        outer["yes"][1]["id"] = json!("b2");
        let mut d: AutomationDefinition = serde_json::from_value(json!({
            "name": "Nested", "goal": "book_appointment", "trigger": {"type": "contact_created"},
            "steps": [mail("m1"), outer]
        }))
        .unwrap();
        d.validate_and_assign_ids().unwrap();
        let f = Flow::new(&d);
        assert_eq!(f.path_to("yn2"), vec!["m1", "b1", "y1", "b2", "yn1"]);
        assert_eq!(f.path_to("yy1"), vec!["m1", "b1", "y1", "b2"]);
        assert_eq!(f.path_to("n1"), vec!["m1", "b1"]);
    }

    #[test]
    fn removed_step_continues_at_next_survivor() {
        let mut old = welcome();
        old.validate_and_assign_ids().unwrap();
        let mut new = old.clone();
        new.steps.remove(1); // drop the delay s2
        new.steps.remove(1); // and the SMS s3
        let (fo, fnew) = (Flow::new(&old), Flow::new(&new));
        assert_eq!(fo.migrate_position("s1", &fnew).as_deref(), Some("s1"));
        assert_eq!(fo.migrate_position("s2", &fnew).as_deref(), Some("s4"));
        let mut tail = old.clone();
        tail.steps.truncate(2);
        assert_eq!(fo.migrate_position("s3", &Flow::new(&tail)), None);
    }

    #[test]
    fn a_removed_branch_continues_at_the_steps_pulled_out_of_it() {
        let mut old = welcome();
        old.validate_and_assign_ids().unwrap();
        let fo = Flow::new(&old);
        // The delay, the SMS and the If/then go; the NO path's task (s5)
        // moves onto the main path.
        let mut new = old.clone();
        let task = match &new.steps[3].kind {
            StepKind::Branch { no, .. } => no[0].clone(),
            other => panic!("{other:?}"),
        };
        new.steps.truncate(1);
        new.steps.push(task);
        let fnew = Flow::new(&new);
        assert_eq!(fo.migrate_position("s2", &fnew).as_deref(), Some("s5"));
        assert_eq!(fo.migrate_position("s4", &fnew).as_deref(), Some("s5"));
        // Nothing of the branch survives: End.
        new.steps.truncate(1);
        assert_eq!(fo.migrate_position("s2", &Flow::new(&new)), None);
    }

    /// An engagement condition names a message step before its If/then on
    /// the If/then's own path, as the builder offers; anything else would
    /// always be false.
    #[test]
    fn engagement_conditions_name_earlier_message_steps_on_their_path() {
        let with = |step_id: &str| -> Result<()> {
            let mut d: AutomationDefinition = serde_json::from_value(json!({
                "name": "Engaged", "trigger": {"type": "contact_created"},
                "steps": [
                    {"id": "mail", "type": "send_email", "subject": "Hi", "body": "Hi"},
                    {"id": "wait", "type": "delay", "amount": 1, "unit": "days"},
                    {"id": "b1", "type": "branch", "condition": {"type": "goal_reached"},
                     "yes": [{"id": "text", "type": "send_sms", "message": "Hi"}],
                     "no": [{"id": "b2", "type": "branch",
                             "condition": {"type": "any", "conditions": [
                                 {"type": "goal_reached"},
                                 {"type": "step_engagement", "step_id": step_id, "engagement": "clicked"}]},
                             "yes": [{"id": "late", "type": "send_email", "subject": "A", "body": "A"}], "no": []}]}
                ]
            }))
            .unwrap();
            d.validate_and_assign_ids()
        };
        with("mail").unwrap();
        for (step, why) in [
            ("text", "not before this If/then"),
            ("late", "not before this If/then"),
            ("b2", "sends no message"),
            ("wait", "sends no message"),
            ("nope", "unknown step nope"),
        ] {
            let e = with(step).unwrap_err().to_string();
            assert!(
                e.contains("step b2: condition refers to") && e.contains(why),
                "{step}: {e}"
            );
        }
    }

    /// A property comparison saves only when some contact could meet it.
    #[test]
    fn property_comparisons_fit_the_propertys_type() {
        let with = |condition: Value| -> Result<()> {
            let mut d: AutomationDefinition = serde_json::from_value(json!({
                "name": "Compare", "trigger": {"type": "contact_created"},
                "steps": [{"type": "branch", "condition": condition, "yes": [], "no": []}]
            }))
            .unwrap();
            d.validate_and_assign_ids()
        };
        let c = |property: &str, op: &str, value: Value| json!({"type": "property", "property": property, "op": op, "value": value});
        for ok in [
            c("status", "equals", json!("Patient")),
            c("balance", "greater_than", json!(100)),
            c("no_show_count", "less_than", json!("3")),
            c("age", "greater_than", json!(64)),
            c("days_since_last_activity", "greater_than", json!(30)),
            c("days_since_created", "less_than", json!(7)),
            c("tags", "contains", json!("vip")),
            c("tags", "equals", json!("vip")),
            c("email", "contains", json!("@example.org")),
            c("dob", "equals", json!("1980-03-04")),
            c("marketing_only", "equals", json!(true)),
            c("portal_active", "not_equals", json!(false)),
            c("insurance_verification", "equals", json!("verified")),
            c("favorite_color", "greater_than", json!("blue")),
            c("owner", "equals", json!("s1")),
            c("owner", "equals", json!({"id": "s1", "name": "Dr. Lee"})),
            c("status", "contains", json!("pat")),
            c("dob", "contains", json!("1980")),
            json!({"type": "property", "property": "balance", "op": "is_set"}),
        ] {
            with(ok.clone()).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for (bad, why) in [
            (
                c("status", "equals", json!("booked")),
                "value: must be one of",
            ),
            (
                c("balance", "greater_than", json!("abc")),
                "must be a number",
            ),
            (
                c("tags", "greater_than", json!(1)),
                "cannot be compared with greater_than",
            ),
            (
                c("first_name", "greater_than", json!("M")),
                "cannot be compared with greater_than",
            ),
            (
                c("dob", "equals", json!("1980-3-4")),
                "value: must be a date",
            ),
            (
                c("balance", "equals", json!("3 dollars")),
                "must be a number",
            ),
            (c("balance", "equals", json!("inf")), "must be a number"),
            (
                c("last_activity", "greater_than", json!(30)),
                "compare days_since_last_activity",
            ),
            (
                json!({"type": "property", "property": "created_at", "op": "is_set"}),
                "compare days_since_created",
            ),
            (
                c("days_since_created", "greater_than", json!("a week")),
                "must be a number",
            ),
            (
                c("owner", "contains", json!("Lee")),
                "cannot be compared with contains",
            ),
            (
                c("dob", "less_than", json!("2000-01-01")),
                "cannot be compared",
            ),
            (
                c("dob", "equals", json!("03/04/1980")),
                "value: must be a date",
            ),
            (c("portal_active", "equals", json!("yes")), "true or false"),
            (c("tags", "contains", json!(["a"])), "must be a tag"),
        ] {
            let e = with(bad.clone()).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    /// The comparisons offered for a property are those saving accepts:
    /// each offered one saves with a value of the property's type, and
    /// the others are refused whatever the value.
    #[test]
    fn the_operators_offered_are_those_saving_accepts() {
        use CompareOp::*;
        let sample = |p: &str| match p {
            "status" => json!("patient"),
            "owner" => json!("s1"),
            "balance" | "age" => json!(3),
            "tags" => json!("vip"),
            "marketing_only" => json!(true),
            "dob" => json!("1980-03-04"),
            _ => json!("x"),
        };
        for (property, want) in [
            ("status", vec![Equals, NotEquals, Contains, IsSet, IsNotSet]),
            ("owner", vec![Equals, NotEquals, IsSet, IsNotSet]),
            (
                "balance",
                vec![Equals, NotEquals, GreaterThan, LessThan, IsSet, IsNotSet],
            ),
            ("tags", vec![Equals, NotEquals, Contains, IsSet, IsNotSet]),
            ("favorite_color", CompareOp::ALL.to_vec()),
        ] {
            let got = operators_for(property);
            assert_eq!(got, want, "{property}");
            for op in [Equals, NotEquals, Contains, GreaterThan, LessThan] {
                let r = check_comparison(property, op, &sample(property));
                assert_eq!(r.is_ok(), got.contains(&op), "{property} {op:?}: {r:?}");
            }
        }
    }

    /// Step ids the builder uses for its own nodes are refused.
    #[test]
    fn builder_node_names_are_not_step_ids() {
        for id in ["trigger", "end", "b1.yes.end", "b1.no.end"] {
            let mut d = welcome();
            d.steps[0].id = id.into();
            let e = d.validate_and_assign_ids().unwrap_err().to_string();
            assert!(e.contains("reserved"), "{id}: {e}");
        }
        let mut d = welcome();
        d.steps[0].id = "end.of.year".into();
        d.validate_and_assign_ids().unwrap();
        // An earlier version's step keeps its id.
        let mut d = welcome();
        d.steps[0].id = "end".into();
        d.validate_and_assign_ids_avoiding(&["end".to_string()].into())
            .unwrap();
    }

    #[test]
    fn invalid_definitions_are_refused() {
        let mut d = welcome();
        d.steps.swap(2, 3);
        let e = d.validate_and_assign_ids().unwrap_err().to_string();
        assert!(e.contains("branch ends its path"), "{e}");

        let mut d = welcome();
        d.steps[0].id = "x".into();
        d.steps[1].id = "x".into();
        assert!(
            d.validate_and_assign_ids()
                .unwrap_err()
                .to_string()
                .contains("duplicate")
        );

        let mut d = welcome();
        d.steps.push(Step {
            id: String::new(),
            name: None,
            kind: StepKind::SetProperty {
                property: SettableProperty::EmailSubscription,
                value: json!("subscribed"),
            },
        });
        let mut d2 = d.clone();
        d2.steps.swap(3, 4);
        assert!(
            d2.validate_and_assign_ids()
                .unwrap_err()
                .to_string()
                .contains("only unsubscribe")
        );

        // Status: Lead → Patient is for good; Patient is the one value.
        let status = |value: &str| {
            let mut d = welcome();
            d.steps.insert(
                0,
                Step {
                    id: String::new(),
                    name: None,
                    kind: StepKind::SetProperty {
                        property: SettableProperty::Status,
                        value: json!(value),
                    },
                },
            );
            d.validate_and_assign_ids().map_err(|e| e.to_string())
        };
        let err = status("Lead").unwrap_err();
        assert!(err.contains("only be set to Patient"), "{err}");
        assert!(status("patient").is_ok());

        // A blank lead source would erase the one it means to set.
        for blank in [json!(""), json!("  "), Value::Null] {
            let err = validate_set_property(SettableProperty::LeadSource, &blank).unwrap_err();
            assert!(err.to_string().contains("value: required"), "{err}");
        }
        assert!(validate_set_property(SettableProperty::LeadSource, &json!("walk_in")).is_ok());

        // A task's title is written as it is: a placeholder is refused.
        let mut d = welcome();
        d.steps.insert(
            0,
            Step {
                id: String::new(),
                name: None,
                kind: StepKind::CreateTask {
                    title: "Call {{firstname}} to book".into(),
                    assignee: Assignee::ContactOwner {},
                    due_in_minutes: 5,
                },
            },
        );
        let e = d.validate_and_assign_ids().unwrap_err().to_string();
        assert!(e.contains("placeholders are not filled"), "{e}");

        let mut d = welcome();
        d.name = "  ".into();
        assert!(d.validate_and_assign_ids().is_err());
    }
}
