//! `settings`: the module-wide messaging settings screen (SPEC §6), one form
//! over the [`Settings`] document.
//!
//! Sections, in the order the settings screen lists them: Module identity,
//! Default run window, then email — Sender identity, Email footer &
//! unsubscribe, Sending limits, Tracking — then SMS — Sender number, Opt-out
//! & consent, Sending limits, Tracking. Each section names its group
//! (`general`, `email`, `sms`) so the UI can show the email and SMS settings
//! under their own headings or tabs.
//!
//! Every field's `id` is the JSON path of the [`Settings`] field it edits
//! (`email_sender.from_address`, `limits.sms_per_day`), its `value` is the
//! stored value (null when unset) and its `error` is the problem
//! [`Settings::validate_all`] finds in the **stored** document (normally
//! none: `settings.update` refuses invalid documents, but a document stored
//! under older rules shows what to fix). The Save action sends
//! `settings.update` with the whole edited document; when it is refused the
//! UI can run the same checks by reading the `field` of each error.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::builder::{FieldOption, opt};
use super::{Action, ActionStyle, Ctx};
use crate::error::{Error, Result};
use crate::messaging::smtp::{MAX_TIMEOUT_SECONDS, SmtpSecurity, SmtpSettings};
use crate::schedule::{RunWindow, Weekday};
use crate::settings::{
    EmailDelivery, FieldError, MAX_CONSENT_FOOTER, MAX_EMAIL_ADDRESS, MAX_EMAIL_FOOTER,
    MAX_FROM_NAME, MAX_KEYWORD_CHARS, MAX_KEYWORDS, MAX_MODULE_NAME, MAX_POSTAL_ADDRESS,
    MAX_PRACTICE_NAME, MAX_TRACKING_URL, Settings, SmsDelivery,
};

/// Parameters of `settings`: none (send `null` or `{}`).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SettingsParams {}

/// The settings screen.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SettingsView {
    /// Page heading ("Settings").
    pub title: String,
    /// Line under the heading.
    pub description: String,
    /// The groups sections belong to, in order: `general`, `email`, `sms`.
    pub groups: Vec<SettingsGroup>,
    /// The sections, in the screen's order.
    pub sections: Vec<SettingsSection>,
    /// Every problem of the stored document (each also shown on its field).
    pub errors: Vec<FieldError>,
    /// True when the stored document has no problem.
    pub valid: bool,
    /// Save: sends `settings.update` with the edited document as `settings`.
    pub save: Action,
}

/// A heading sections are grouped under.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SettingsGroup {
    /// `general`, `email` or `sms`.
    pub id: String,
    /// Label ("General", "Email", "SMS").
    pub label: String,
}

/// A titled group of settings fields.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SettingsSection {
    /// Stable id (`module_identity`, `default_run_window`, `email_sender`,
    /// `email_footer`, `email_limits`, `email_tracking`, `sms_sender`,
    /// `sms_consent`, `sms_limits`, `sms_tracking`).
    pub id: String,
    /// The group (`general`, `email`, `sms`).
    pub group: String,
    /// Heading.
    pub title: String,
    /// Helper text under the heading.
    pub description: String,
    /// The fields, in order.
    pub fields: Vec<SettingsField>,
    /// Helper text under the fields.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The kind of input a settings field renders as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SettingsFieldKind {
    /// One line of text.
    Text,
    /// Several lines of text.
    Textarea,
    /// An email address.
    Email,
    /// A phone number (national numbers are read in `sms.default_region`).
    Phone,
    /// An https URL.
    Url,
    /// A whole number; null means "no limit".
    Number,
    /// On/off.
    Toggle,
    /// A dropdown of `options`.
    Select,
    /// An IANA time zone picker (the host offers its list of zones).
    TimeZone,
    /// A local time `"HH:MM"`.
    Time,
    /// A secret; the stored value is never shown (the value is null).
    Password,
    /// A list of SMS keywords (tags input); the value is an array of strings.
    Keywords,
    /// The seven weekday rows of a run window: an array of
    /// `{day, enabled, start, end}`, Monday first.
    WeeklyHours,
}

/// Shows a field only while another field has a given value.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct VisibleWhen {
    /// The other field's id.
    pub field: String,
    /// The value it must have.
    pub equals: Value,
}

/// A settings field.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SettingsField {
    /// JSON path of the [`Settings`] field it edits (`email_sender.from_name`).
    pub id: String,
    /// Label.
    pub label: String,
    /// Input kind.
    pub kind: SettingsFieldKind,
    /// Current stored value (null when unset).
    pub value: Value,
    /// Choices of a select.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub options: Option<Vec<FieldOption>>,
    /// Whether a value is required to save.
    pub required: bool,
    /// Help text under the field.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
    /// Placeholder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub placeholder: Option<String>,
    /// Smallest number (number fields), shortest text, or fewest keywords.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<i64>,
    /// Largest number, longest text (in characters), or most keywords.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<i64>,
    /// Shown only while another field has a given value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub visible_when: Option<VisibleWhen>,
    /// A notice about the stored value that does not block saving (e.g. no
    /// postal address yet, so marketing email is held back).
    pub warning: Option<String>,
    /// What is wrong with the stored value (null when it is fine).
    pub error: Option<String>,
}

impl SettingsField {
    fn new(id: &str, label: &str, kind: SettingsFieldKind, value: Value) -> Self {
        SettingsField {
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
            visible_when: None,
            warning: None,
            error: None,
        }
    }

    fn required(mut self) -> Self {
        self.required = true;
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

    fn range(mut self, min: i64, max: i64) -> Self {
        self.min = Some(min);
        self.max = Some(max);
        self
    }

    fn options(mut self, options: Vec<FieldOption>) -> Self {
        self.options = Some(options);
        self
    }

    fn max_len(mut self, max: usize) -> Self {
        self.max = Some(max as i64);
        self
    }
}

/// Help under a keyword list.
const KEYWORD_HELP: &str = "Matched against the whole reply, ignoring case, spaces and punctuation (\"Stop!\" matches STOP). A keyword can be in one list only.";

/// Help under per-hour / per-day limits.
const LIMIT_HELP: &str = "Leave empty for no limit. Messages over the limit wait for the next free slot; none are dropped.";

fn section(
    id: &str,
    group: &str,
    title: &str,
    description: &str,
    fields: Vec<SettingsField>,
    note: Option<&str>,
) -> SettingsSection {
    SettingsSection {
        id: id.to_string(),
        group: group.to_string(),
        title: title.to_string(),
        description: description.to_string(),
        fields,
        note: note.map(str::to_string),
    }
}

fn text(value: &str) -> Value {
    Value::String(value.to_string())
}

fn opt_text(value: &Option<String>) -> Value {
    value.as_deref().map(text).unwrap_or(Value::Null)
}

fn opt_num(value: Option<u32>) -> Value {
    value.map(Value::from).unwrap_or(Value::Null)
}

fn to_value<T: Serialize>(v: &T) -> Result<Value> {
    serde_json::to_value(v).map_err(|e| Error::Internal(format!("settings view: {e}")))
}

/// The `email_delivery` fields: the mode, then the SMTP relay's fields
/// (shown only in SMTP mode; null while the mode is `host`).
fn delivery_fields(
    delivery: &EmailDelivery,
    adapters: &[(String, String, Vec<String>)],
) -> Result<Vec<SettingsField>> {
    use SettingsFieldKind as K;
    let smtp: Option<&SmtpSettings> = match delivery {
        EmailDelivery::Smtp { smtp } => Some(smtp),
        _ => None,
    };
    let mode_value = match delivery {
        EmailDelivery::Host {} => "host",
        EmailDelivery::Smtp { .. } => "smtp",
        EmailDelivery::Plugin { .. } => "plugin",
    };
    let mode = SettingsField::new(
        "email_delivery.mode",
        "Email delivery",
        K::Select,
        json!(mode_value),
    )
    .required()
    .options(vec![
        opt(json!("host"), "Through PracticeEHR"),
        opt(json!("smtp"), "Through an SMTP relay"),
        opt(json!("plugin"), "Through a sender adapter plugin"),
    ])
    .help("How emails leave the CRM: handed to PracticeEHR, or sent directly through your email provider's SMTP relay.");
    let or_null = |f: &dyn Fn(&SmtpSettings) -> Value| smtp.map(f).unwrap_or(Value::Null);
    let security = match smtp {
        Some(s) => to_value(&s.security)?,
        None => Value::Null,
    };
    let mut fields = vec![
        SettingsField::new(
            "email_delivery.smtp.host",
            "SMTP host",
            K::Text,
            or_null(&|s| text(&s.host)),
        )
        .required()
        .placeholder("smtp.provider.example")
        .help("Host name or IP address of the relay, without the port."),
        SettingsField::new(
            "email_delivery.smtp.port",
            "SMTP port",
            K::Number,
            or_null(&|s| json!(s.port)),
        )
        .required()
        .range(1, 65535)
        .placeholder("587")
        .help("Usually 587 (STARTTLS) or 465 (TLS)."),
        SettingsField::new(
            "email_delivery.smtp.security",
            "Connection security",
            K::Select,
            security,
        )
        .options(vec![
            opt(to_value(&SmtpSecurity::Starttls)?, "STARTTLS"),
            opt(to_value(&SmtpSecurity::Tls)?, "TLS"),
            opt(
                to_value(&SmtpSecurity::None)?,
                "None (trusted local relay only)",
            ),
        ])
        .help("STARTTLS or TLS verify the relay's certificate. None sends in plain text."),
        SettingsField::new(
            "email_delivery.smtp.username",
            "SMTP username",
            K::Text,
            smtp.map(|s| opt_text(&s.username)).unwrap_or(Value::Null),
        )
        .help("Leave empty when the relay needs no login."),
        SettingsField::new(
            "email_delivery.smtp.password",
            "SMTP password",
            K::Password,
            Value::Null,
        )
        .placeholder(if smtp.is_some_and(|s| s.password.is_some()) {
            "Stored (leave empty to keep it)"
        } else {
            "Not set"
        })
        .help("Required with a username. The stored password is never shown; leave the field empty to keep it while the host and username stay the same."),
        SettingsField::new(
            "email_delivery.smtp.timeout_seconds",
            "Timeout (seconds)",
            K::Number,
            or_null(&|s| json!(s.timeout_seconds)),
        )
        .range(1, i64::from(MAX_TIMEOUT_SECONDS))
        .placeholder("30")
        .help("How long to wait for the relay before trying again later."),
    ];
    for f in &mut fields {
        f.visible_when = Some(VisibleWhen {
            field: "email_delivery.mode".into(),
            equals: json!("smtp"),
        });
    }
    fields.insert(0, mode);
    fields.push(adapter_field(
        "email",
        match delivery {
            EmailDelivery::Plugin { plugin_id } => Some(plugin_id),
            _ => None,
        },
        adapters,
    ));
    Ok(fields)
}

/// The sender adapter select of a channel, shown while its mode is `plugin`;
/// options are the installed adapters that send the channel.
fn adapter_field(
    channel: &str,
    current: Option<&String>,
    adapters: &[(String, String, Vec<String>)],
) -> SettingsField {
    let mut f = SettingsField::new(
        &format!("{channel}_delivery.plugin_id"),
        "Sender adapter",
        SettingsFieldKind::Select,
        current.map_or(Value::Null, |id| json!(id)),
    )
    .required()
    .options(
        adapters
            .iter()
            .filter(|(_, _, channels)| channels.iter().any(|c| c == channel))
            .map(|(id, name, _)| opt(json!(id), name))
            .collect(),
    )
    .help("An installed WebAssembly plugin that delivers through your provider's API. Install one from the Plugins screen.");
    f.visible_when = Some(VisibleWhen {
        field: format!("{channel}_delivery.mode"),
        equals: json!("plugin"),
    });
    f
}

/// The SMS delivery fields: the mode, then the adapter select.
fn sms_delivery_fields(
    delivery: &SmsDelivery,
    adapters: &[(String, String, Vec<String>)],
) -> Vec<SettingsField> {
    let current = match delivery {
        SmsDelivery::Plugin { plugin_id } => Some(plugin_id),
        SmsDelivery::Host {} => None,
    };
    vec![
        SettingsField::new(
            "sms_delivery.mode",
            "SMS delivery",
            SettingsFieldKind::Select,
            json!(if current.is_some() { "plugin" } else { "host" }),
        )
        .required()
        .options(vec![
            opt(json!("host"), "Through PracticeEHR"),
            opt(json!("plugin"), "Through a sender adapter plugin"),
        ])
        .help("How text messages leave the CRM: handed to PracticeEHR, or sent through your SMS provider's API by a sender adapter plugin."),
        adapter_field("sms", current, adapters),
    ]
}

/// The stored settings document (the module's current settings when none is stored yet).
fn stored(ctx: &Ctx<'_>) -> Result<Settings> {
    match crate::store::get_setting(ctx.conn, "settings")? {
        Some(v) => serde_json::from_value(v)
            .map_err(|_| Error::Internal("stored settings unreadable".into())),
        None => Ok(ctx.settings.doc.clone()),
    }
}

/// The seven weekday rows the run-window field edits: the document's own,
/// or the business-hours template while the mode is "Any time".
fn day_rows(window: &RunWindow) -> Result<Value> {
    let template = RunWindow::business_hours();
    let source = match window {
        RunWindow::SpecificHours { .. } => window,
        RunWindow::AnyTime {} => &template,
    };
    let RunWindow::SpecificHours { days } = source else {
        return Ok(Value::Array(Vec::new()));
    };
    // Monday first, whatever order the document has.
    let ordered: Vec<_> = Weekday::ALL
        .iter()
        .filter_map(|d| days.iter().find(|r| r.day == *d))
        .collect();
    to_value(&ordered)
}

/// Builds the settings screen.
pub(crate) fn build(ctx: &Ctx<'_>, _params: SettingsParams) -> Result<SettingsView> {
    let doc = stored(ctx)?;
    let errors = doc.validate_all();
    let adapters: Vec<(String, String, Vec<String>)> =
        crate::plugins::registry::descriptors(ctx.conn)?
            .into_iter()
            .filter(|(d, _)| d.kind == crate::plugins::contract::PluginKind::Sender)
            .map(|(d, _)| (d.id, d.name, d.channels))
            .collect();
    let mut sections = sections(&doc, &adapters)?;
    for field in sections.iter_mut().flat_map(|s| s.fields.iter_mut()) {
        field.error = error_for(&field.id, &errors);
    }
    place_leftovers(&mut sections, &errors);
    Ok(SettingsView {
        title: "Settings".into(),
        description: format!(
            "Messaging settings of the {} module: apply to every automation, sequence and campaign.",
            doc.module_name.trim()
        ),
        groups: vec![
            SettingsGroup {
                id: "general".into(),
                label: "General".into(),
            },
            SettingsGroup {
                id: "email".into(),
                label: "Email".into(),
            },
            SettingsGroup {
                id: "sms".into(),
                label: "SMS".into(),
            },
        ],
        sections,
        valid: errors.is_empty(),
        errors,
        save: Action::new("save", "Save", Some("floppy-disk"))
            .command("settings.update", None)
            .style(ActionStyle::Primary),
    })
}

/// True when the error at path `error` is about the field `field` (the same
/// path, or a path inside it: `default_run_window.days[2].end` is about
/// `default_run_window.days`).
fn is_inside(error: &str, field: &str) -> bool {
    error
        .strip_prefix(field)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
}

fn error_for(field: &str, errors: &[FieldError]) -> Option<String> {
    errors
        .iter()
        .find(|e| is_inside(&e.field, field))
        .map(|e| e.message.clone())
}

/// An error about a whole object (e.g. `default_run_window`) goes on its first field.
fn place_leftovers(sections: &mut [SettingsSection], errors: &[FieldError]) {
    for e in errors {
        let placed = sections
            .iter()
            .flat_map(|s| &s.fields)
            .any(|f| is_inside(&e.field, &f.id));
        if placed {
            continue;
        }
        if let Some(field) = sections
            .iter_mut()
            .flat_map(|s| s.fields.iter_mut())
            .find(|f| is_inside(&f.id, &e.field) && f.error.is_none())
        {
            field.error = Some(e.message.clone());
        }
    }
}

fn sections(
    doc: &Settings,
    adapters: &[(String, String, Vec<String>)],
) -> Result<Vec<SettingsSection>> {
    use SettingsFieldKind as K;

    let module_identity = section(
        "module_identity",
        "general",
        "Module identity",
        "How the CRM module appears to your team across PracticeEHR.",
        vec![
            SettingsField::new("module_name", "Module name", K::Text, text(&doc.module_name))
                .required()
                .max_len(MAX_MODULE_NAME)
                .placeholder("CRM")
                .help("The name of the module in PracticeEHR's menus and breadcrumbs."),
            SettingsField::new(
                "practice_name",
                "Practice name",
                K::Text,
                text(&doc.practice_name),
            )
            .required()
            .max_len(MAX_PRACTICE_NAME)
            .help("Used for {{practice}} in messages and in the answers to SMS HELP and STOP replies."),
            SettingsField::new("time_zone", "Time zone", K::TimeZone, text(&doc.time_zone))
                .required()
                .placeholder("America/New_York")
                .help("Run windows, practice days and the dates in analytics use this time zone."),
        ],
        None,
    );

    let specific = matches!(doc.default_run_window, RunWindow::SpecificHours { .. });
    let mut days = SettingsField::new(
        "default_run_window.days",
        "Hours",
        K::WeeklyHours,
        day_rows(&doc.default_run_window)?,
    )
    .help("Monday first. An end of 24:00 means the end of the day. At least one day must be on.");
    days.visible_when = Some(VisibleWhen {
        field: "default_run_window.mode".into(),
        equals: json!("specific_hours"),
    });
    let default_run_window = section(
        "default_run_window",
        "general",
        "Default run window",
        "Sets the default \"When can this run?\" choice for new automations and sequences. Individual flows can override it.",
        vec![
            SettingsField::new(
                "default_run_window.mode",
                "When can this run?",
                K::Select,
                json!(if specific {
                    "specific_hours"
                } else {
                    "any_time"
                }),
            )
            .options(vec![
                opt(json!("any_time"), "Any time"),
                opt(json!("specific_hours"), "Only during specific hours"),
            ])
            .required()
            .help("New automations and sequences start with this choice."),
            days,
        ],
        Some(&format!(
            "Times are in the practice's time zone ({}). A step that falls due outside these hours waits for the next open minute.",
            doc.time_zone.trim()
        )),
    );

    let email_sender = section(
        "email_sender",
        "email",
        "Sender identity",
        "Who recipients see when an email lands in their inbox. Applied to every email step unless overridden.",
        vec![
            SettingsField::new(
                "email_sender.from_name",
                "From name",
                K::Text,
                text(&doc.email_sender.from_name),
            )
            .required()
            .max_len(MAX_FROM_NAME)
            .placeholder("Bright Smiles Dental")
            .help("Usually the practice's name, as patients know it."),
            SettingsField::new(
                "email_sender.from_address",
                "From address",
                K::Email,
                text(&doc.email_sender.from_address),
            )
            .required()
            .max_len(MAX_EMAIL_ADDRESS)
            .placeholder("hello@practice.example")
            .help(
                "Use an address on a domain your email provider is set up to send for (SPF, DKIM).",
            ),
            SettingsField::new(
                "email_sender.reply_to",
                "Reply-to address",
                K::Email,
                opt_text(&doc.email_sender.reply_to),
            )
            .max_len(MAX_EMAIL_ADDRESS)
            .placeholder("frontdesk@practice.example")
            .help("Where replies go. Leave empty to receive replies at the from address."),
        ]
        .into_iter()
        .chain(delivery_fields(&doc.email_delivery, adapters)?)
        .collect(),
        None,
    );

    let mut postal = SettingsField::new(
        "email_footer.postal_address",
        "Practice postal address",
        K::Textarea,
        text(&doc.email_footer.postal_address),
    )
    .max_len(MAX_POSTAL_ADDRESS)
    .placeholder("1 Main Street, Suite 200, Boston, MA 02110")
    .help("Printed in the footer of every email. Marketing email must carry the practice's postal address.");
    if doc.email_footer.postal_address.trim().is_empty() {
        postal.warning = Some(
            "No postal address yet: marketing email is not sent until one is set (each marketing email fails with no_postal_address; a step's SMS fallback goes instead)."
                .into(),
        );
    }
    let email_footer = section(
        "email_footer",
        "email",
        "Email footer & unsubscribe",
        "A compliant footer is appended to every CRM email. Required for HIPAA-friendly outreach.",
        vec![
            postal,
            SettingsField::new(
                "email_footer.text",
                "Footer text",
                K::Textarea,
                text(&doc.email_footer.text),
            )
            .required()
            .max_len(MAX_EMAIL_FOOTER)
            .help("Must contain {{unsubscribe_link}}. Only the standard placeholders can be used."),
        ],
        Some("{{practice}} and {{unsubscribe_link}} are auto-replaced when the email sends."),
    );

    let email_limits = section(
        "email_limits",
        "email",
        "Sending limits",
        "Protects sender reputation and keeps bounces low.",
        vec![
            SettingsField::new(
                "limits.email_per_hour",
                "Emails per hour",
                K::Number,
                opt_num(doc.limits.email_per_hour),
            )
            .range(1, i64::from(u32::MAX))
            .placeholder("No limit")
            .help(LIMIT_HELP),
            SettingsField::new(
                "limits.email_per_day",
                "Emails per day",
                K::Number,
                opt_num(doc.limits.email_per_day),
            )
            .range(1, i64::from(u32::MAX))
            .placeholder("No limit")
            .help("Leave empty for no limit. Must be at least the hourly limit."),
        ],
        None,
    );

    let email_tracking = section(
        "email_tracking",
        "email",
        "Tracking",
        "What gets recorded so analytics like Open Rate and Click Rate stay populated.",
        vec![
            SettingsField::new(
                "tracking.email_opens",
                "Track opens",
                K::Toggle,
                json!(doc.tracking.email_opens),
            )
            .help("Adds an invisible 1×1 image to each email; an open is recorded when the mail app loads it."),
            SettingsField::new(
                "tracking.email_clicks",
                "Track clicks",
                K::Toggle,
                json!(doc.tracking.email_clicks),
            )
            .help("Links are sent through the tracking address, which records the click and forwards to the original link."),
            tracking_address(doc),
        ],
        None,
    );

    let sms_sender = section(
        "sms_sender",
        "sms",
        "Sender number",
        "The number recipients see and reply to.",
        vec![
            SettingsField::new(
                "sms.sender_number",
                "Sender number",
                K::Phone,
                opt_text(&doc.sms.sender_number),
            )
            .placeholder("+1 617 555 0123")
            .help("Used by every SMS step that does not name its own number. Stored in international (E.164) form."),
            SettingsField::new(
                "sms.default_region",
                "Default country",
                K::Text,
                text(&doc.sms.default_region),
            )
            .required()
            .range(2, 2)
            .placeholder("US")
            .help("Two-letter country code used to read phone numbers written without a +country code."),
        ]
        .into_iter()
        .chain(sms_delivery_fields(&doc.sms_delivery, adapters))
        .collect(),
        None,
    );

    let sms_consent = section(
        "sms_consent",
        "sms",
        "Opt-out & consent",
        "Keywords that automatically opt a recipient out, and the footer appended to the first message in a thread.",
        vec![
            SettingsField::new(
                "sms_opt_out_keywords",
                "Opt-out keywords",
                K::Keywords,
                to_value(&doc.sms_opt_out_keywords)?,
            )
            .required()
            .range(1, MAX_KEYWORDS as i64)
            .help(format!(
                "A reply with one of these opts the number out of all texts, appointment reminders included, until it replies with an opt-in keyword. STOP is always included. {KEYWORD_HELP} Up to {MAX_KEYWORD_CHARS} characters each."
            )),
            SettingsField::new(
                "sms_opt_in_keywords",
                "Opt-in keywords",
                K::Keywords,
                to_value(&doc.sms_opt_in_keywords)?,
            )
            .required()
            .range(1, MAX_KEYWORDS as i64)
            .help(format!("A reply with one of these opts the number back in. {KEYWORD_HELP}")),
            SettingsField::new(
                "sms_help_keywords",
                "Help keywords",
                K::Keywords,
                to_value(&doc.sms_help_keywords)?,
            )
            .required()
            .range(1, MAX_KEYWORDS as i64)
            .help(format!(
                "A reply with one of these is answered with the practice's name, phone number and how to opt out. {KEYWORD_HELP}"
            )),
            SettingsField::new(
                "sms.consent_footer",
                "Consent footer",
                K::Text,
                text(&doc.sms.consent_footer),
            )
            .required()
            .max_len(MAX_CONSENT_FOOTER)
            .placeholder("Reply STOP to opt out")
            .help("Appended to the first message of each thread. Must name an opt-out keyword."),
            SettingsField::new(
                "practice_phone",
                "Practice phone",
                K::Phone,
                opt_text(&doc.practice_phone),
            )
            .placeholder("(617) 555-0100")
            .help("Given in answers to HELP keywords."),
        ],
        None,
    );

    let sms_limits = section(
        "sms_limits",
        "sms",
        "Sending limits",
        "Caps protect against carrier throttling and keep spend predictable.",
        vec![
            SettingsField::new(
                "limits.sms_per_hour",
                "Texts per hour",
                K::Number,
                opt_num(doc.limits.sms_per_hour),
            )
            .range(1, i64::from(u32::MAX))
            .placeholder("No limit")
            .help(LIMIT_HELP),
            SettingsField::new(
                "limits.sms_per_day",
                "Texts per day",
                K::Number,
                opt_num(doc.limits.sms_per_day),
            )
            .range(1, i64::from(u32::MAX))
            .placeholder("No limit")
            .help("Leave empty for no limit. Must be at least the hourly limit."),
            SettingsField::new("sms.send_from", "Send from", K::Time, json!(doc.sms.send_from))
                .required()
                .help("The earliest time, in the recipient's time zone, a text may go out."),
            SettingsField::new(
                "sms.send_until",
                "Send until",
                K::Time,
                json!(doc.sms.send_until),
            )
            .required()
            .help("The latest time (exclusive), in the recipient's time zone, a text may go out. 24:00 means until midnight."),
        ],
        None,
    );

    let sms_tracking = section(
        "sms_tracking",
        "sms",
        "Tracking",
        "What gets recorded so SMS click analytics stay populated.",
        vec![SettingsField::new(
            "tracking.sms_clicks",
            "Track clicks",
            K::Toggle,
            json!(doc.tracking.sms_clicks),
        )
        .help("Links in texts are sent through the tracking address set under Email › Tracking, which records the click and forwards to the original link.")],
        None,
    );

    Ok(vec![
        module_identity,
        default_run_window,
        email_sender,
        email_footer,
        email_limits,
        email_tracking,
        sms_sender,
        sms_consent,
        sms_limits,
        sms_tracking,
    ])
}

/// The tracking address field, with a warning while it is not set: a
/// marketing email's unsubscribe link is served there, so none is sent.
fn tracking_address(doc: &Settings) -> SettingsField {
    let mut field = SettingsField::new(
        "tracking.base_url",
        "Tracking address",
        SettingsFieldKind::Url,
        opt_text(&doc.tracking.base_url),
    )
    .max_len(MAX_TRACKING_URL)
    .placeholder("https://t.practice.example")
    .help("The public https address where PracticeEHR serves open pixels, tracked links and unsubscribe pages. Required for any tracking, email or SMS, and for marketing email, whose unsubscribe link it serves.");
    if doc.tracking.base_url.is_none() {
        field.warning = Some(
            "No tracking address yet: marketing email is not sent until one is set, since it must carry an unsubscribe link (each marketing email fails with no_unsubscribe_link; a step's SMS fallback goes instead)."
                .into(),
        );
    }
    field
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use crate::error::ErrorCode;
    use crate::settings::Settings;
    use crate::views::test_support::Db;

    /// The seed's settings screen: section titles and helper texts, in order.
    const SEED_SECTIONS: [(&str, &str, &str, &str); 10] = [
        (
            "module_identity",
            "general",
            "Module identity",
            "How the CRM module appears to your team across PracticeEHR.",
        ),
        (
            "default_run_window",
            "general",
            "Default run window",
            "Sets the default \"When can this run?\" choice for new automations and sequences. Individual flows can override it.",
        ),
        (
            "email_sender",
            "email",
            "Sender identity",
            "Who recipients see when an email lands in their inbox. Applied to every email step unless overridden.",
        ),
        (
            "email_footer",
            "email",
            "Email footer & unsubscribe",
            "A compliant footer is appended to every CRM email. Required for HIPAA-friendly outreach.",
        ),
        (
            "email_limits",
            "email",
            "Sending limits",
            "Protects sender reputation and keeps bounces low.",
        ),
        (
            "email_tracking",
            "email",
            "Tracking",
            "What gets recorded so analytics like Open Rate and Click Rate stay populated.",
        ),
        (
            "sms_sender",
            "sms",
            "Sender number",
            "The number recipients see and reply to.",
        ),
        (
            "sms_consent",
            "sms",
            "Opt-out & consent",
            "Keywords that automatically opt a recipient out, and the footer appended to the first message in a thread.",
        ),
        (
            "sms_limits",
            "sms",
            "Sending limits",
            "Caps protect against carrier throttling and keep spend predictable.",
        ),
        (
            "sms_tracking",
            "sms",
            "Tracking",
            "What gets recorded so SMS click analytics stay populated.",
        ),
    ];

    /// Field ids of each section, in order.
    const SEED_FIELDS: [&[&str]; 10] = [
        &["module_name", "practice_name", "time_zone"],
        &["default_run_window.mode", "default_run_window.days"],
        &[
            "email_sender.from_name",
            "email_sender.from_address",
            "email_sender.reply_to",
            "email_delivery.mode",
            "email_delivery.smtp.host",
            "email_delivery.smtp.port",
            "email_delivery.smtp.security",
            "email_delivery.smtp.username",
            "email_delivery.smtp.password",
            "email_delivery.smtp.timeout_seconds",
            "email_delivery.plugin_id",
        ],
        &["email_footer.postal_address", "email_footer.text"],
        &["limits.email_per_hour", "limits.email_per_day"],
        &[
            "tracking.email_opens",
            "tracking.email_clicks",
            "tracking.base_url",
        ],
        &[
            "sms.sender_number",
            "sms.default_region",
            "sms_delivery.mode",
            "sms_delivery.plugin_id",
        ],
        &[
            "sms_opt_out_keywords",
            "sms_opt_in_keywords",
            "sms_help_keywords",
            "sms.consent_footer",
            "practice_phone",
        ],
        &[
            "limits.sms_per_hour",
            "limits.sms_per_day",
            "sms.send_from",
            "sms.send_until",
        ],
        &["tracking.sms_clicks"],
    ];

    fn fields(v: &Value) -> Vec<&Value> {
        v["sections"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| s["fields"].as_array().unwrap())
            .collect()
    }

    fn field<'a>(v: &'a Value, id: &str) -> &'a Value {
        fields(v)
            .into_iter()
            .find(|f| f["id"] == id)
            .unwrap_or_else(|| panic!("no field {id}"))
    }

    /// The value at a settings JSON path such as `limits.sms_per_day`.
    fn at<'a>(doc: &'a Value, path: &str) -> Option<&'a Value> {
        path.split('.').try_fold(doc, |v, key| v.get(key))
    }

    fn store(db: &Db, doc: &Settings) {
        crate::store::put_setting(&db.conn, "settings", &serde_json::to_value(doc).unwrap())
            .unwrap();
    }

    #[test]
    fn has_the_seed_sections_in_order_with_their_fields() {
        let db = Db::new();
        let v = db.query("settings", Value::Null).unwrap();
        let mut top: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        top.sort_unstable();
        let mut expected = [
            "title",
            "description",
            "groups",
            "sections",
            "errors",
            "valid",
            "save",
        ];
        expected.sort_unstable();
        assert_eq!(top, expected);
        assert_eq!(v["title"], "Settings");
        assert_eq!(
            v["groups"],
            json!([
                {"id": "general", "label": "General"},
                {"id": "email", "label": "Email"},
                {"id": "sms", "label": "SMS"},
            ])
        );
        let sections = v["sections"].as_array().unwrap();
        assert_eq!(sections.len(), SEED_SECTIONS.len());
        for (i, (s, (id, group, title, description))) in
            sections.iter().zip(SEED_SECTIONS).enumerate()
        {
            assert_eq!(s["id"], id);
            assert_eq!(s["group"], group);
            assert_eq!(s["title"], title);
            assert_eq!(s["description"], description);
            let ids: Vec<&str> = s["fields"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["id"].as_str().unwrap())
                .collect();
            assert_eq!(ids, SEED_FIELDS[i], "{id}");
        }
        assert_eq!(
            sections[3]["note"],
            "{{practice}} and {{unsubscribe_link}} are auto-replaced when the email sends."
        );

        // No stored document yet: the module's settings, all valid.
        assert_eq!(v["valid"], true);
        assert_eq!(v["errors"], json!([]));
        let doc = serde_json::to_value(&db.settings.doc).unwrap();
        for f in fields(&v) {
            let id = f["id"].as_str().unwrap();
            assert!(f["error"].is_null(), "{id}");
            assert!(f["label"].as_str().is_some_and(|l| !l.is_empty()), "{id}");
            assert!(f["help"].is_string(), "{id} has no help");
            // Every id is a path into the document, and the value is the stored one.
            if id.starts_with("email_delivery.smtp.") || id.ends_with("_delivery.plugin_id") {
                // Host mode: the relay's and the adapter's fields are empty (and hidden).
                assert!(f["value"].is_null(), "{id}");
                let mode = format!("{}.mode", id.split('.').next().unwrap());
                assert_eq!(f["visible_when"]["field"], json!(mode), "{id}");
                continue;
            }
            let stored = at(&doc, id).unwrap_or_else(|| panic!("{id} is not a settings path"));
            if id == "default_run_window.days" {
                assert_eq!(f["value"].as_array().unwrap().len(), 7);
            } else {
                assert_eq!(&f["value"], stored, "{id}");
            }
        }
        assert_eq!(field(&v, "time_zone")["value"], "America/New_York");
        assert_eq!(field(&v, "time_zone")["kind"], "time_zone");
        assert_eq!(field(&v, "email_sender.from_address")["kind"], "email");
        assert_eq!(field(&v, "email_sender.from_address")["required"], true);
        assert_eq!(field(&v, "email_sender.reply_to")["required"], false);
        assert_eq!(field(&v, "limits.email_per_hour")["value"], Value::Null);
        assert_eq!(field(&v, "limits.email_per_hour")["min"], 1);
        assert_eq!(field(&v, "sms_opt_out_keywords")["kind"], "keywords");
        assert_eq!(field(&v, "sms.send_from")["value"], "08:00");
        let mode = field(&v, "default_run_window.mode");
        assert_eq!(mode["value"], "specific_hours");
        assert_eq!(mode["options"].as_array().unwrap().len(), 2);
        let days = field(&v, "default_run_window.days");
        assert_eq!(days["kind"], "weekly_hours");
        assert_eq!(
            days["visible_when"],
            json!({"field": "default_run_window.mode", "equals": "specific_hours"})
        );
        assert_eq!(
            days["value"][0],
            json!({"day": "mon", "enabled": true, "start": "09:00", "end": "17:00"})
        );
        // No postal address yet: a warning, not an error.
        let postal = field(&v, "email_footer.postal_address");
        assert!(
            postal["warning"]
                .as_str()
                .is_some_and(|w| w.contains("not sent") && w.contains("no_postal_address")),
            "{postal}"
        );
        assert!(postal["error"].is_null());
        // Nor a tracking address, which marketing email's unsubscribe link needs.
        let tracking = field(&v, "tracking.base_url");
        assert!(
            tracking["warning"]
                .as_str()
                .is_some_and(|w| w.contains("no_unsubscribe_link")),
            "{tracking}"
        );
        assert!(tracking["error"].is_null());
        assert_eq!(field(&v, "module_name")["warning"], Value::Null);

        assert_eq!(
            v["save"],
            json!({
                "id": "save",
                "label": "Save",
                "icon": "floppy-disk",
                "style": "primary",
                "command": {"command": "settings.update"},
                "disabled": false,
            })
        );
    }

    #[test]
    fn shows_the_stored_document_and_its_field_errors() {
        let db = Db::new();
        let mut doc = Settings {
            practice_name: "Bright Smiles Dental".into(),
            time_zone: "Europe/Berlin".into(),
            default_run_window: crate::schedule::RunWindow::AnyTime {},
            ..Settings::default()
        };
        doc.email_footer.postal_address = "1 Main St, Boston, MA 02110".into();
        doc.limits.sms_per_day = Some(400);
        doc.tracking.base_url = Some("https://t.brightsmiles.example".into());
        doc.tracking.sms_clicks = true;
        store(&db, &doc);
        let v = db.query("settings", json!({})).unwrap();
        assert_eq!(v["valid"], true, "{}", v["errors"]);
        assert_eq!(field(&v, "practice_name")["value"], "Bright Smiles Dental");
        assert_eq!(field(&v, "time_zone")["value"], "Europe/Berlin");
        assert_eq!(field(&v, "limits.sms_per_day")["value"], 400);
        assert_eq!(field(&v, "tracking.sms_clicks")["value"], true);
        assert_eq!(field(&v, "default_run_window.mode")["value"], "any_time");
        // "Any time" still offers the business-hours rows to start from.
        assert_eq!(
            field(&v, "default_run_window.days")["value"]
                .as_array()
                .unwrap()
                .len(),
            7
        );
        assert!(field(&v, "email_footer.postal_address")["warning"].is_null());
        assert!(field(&v, "tracking.base_url")["warning"].is_null());
        assert!(
            v["sections"][1]["note"]
                .as_str()
                .unwrap()
                .contains("Europe/Berlin")
        );

        // A document stored under looser rules: every problem on its field.
        doc.email_sender.from_address = "praxis".into();
        doc.limits.sms_per_hour = Some(500);
        doc.tracking.base_url = None;
        doc.sms_help_keywords.push("stop".into());
        doc.default_run_window = crate::schedule::RunWindow::SpecificHours { days: Vec::new() };
        store(&db, &doc);
        let v = db.query("settings", Value::Null).unwrap();
        assert_eq!(v["valid"], false);
        let expected = [
            (
                "default_run_window.days",
                "must have exactly 7 rows (one per weekday), got 0",
            ),
            ("email_sender.from_address", "not a valid email address"),
            (
                "limits.sms_per_hour",
                "must not be more than the daily limit (400)",
            ),
            (
                "tracking.sms_clicks",
                "SMS click tracking needs a tracking address (set tracking.base_url)",
            ),
            (
                "sms_help_keywords",
                "STOP is already in sms_opt_out_keywords; a keyword can be in one list only",
            ),
        ];
        let errors = v["errors"].as_array().unwrap();
        assert_eq!(errors.len(), expected.len(), "{errors:?}");
        for (id, message) in expected {
            assert_eq!(field(&v, id)["error"], message, "{id}");
        }
        // The keyword error names the entry; the view shows it on the list.
        assert!(errors.iter().any(|e| e["field"] == "sms_help_keywords[2]"));
        let with_error = fields(&v)
            .into_iter()
            .filter(|f| !f["error"].is_null())
            .count();
        assert_eq!(with_error, expected.len());
    }

    #[test]
    fn shows_smtp_delivery_without_the_password() {
        let db = Db::new();
        let mut doc = Settings {
            time_zone: "UTC".into(),
            ..Settings::default()
        };
        doc.email_delivery = crate::settings::EmailDelivery::Smtp {
            smtp: crate::messaging::smtp::SmtpSettings {
                host: "smtp.example".into(),
                port: 0,
                security: crate::messaging::smtp::SmtpSecurity::Tls,
                username: Some("relay-user".into()),
                password: Some("hunter2-secret".into()),
                timeout_seconds: 30,
            },
        };
        store(&db, &doc);
        let v = db.query("settings", json!({})).unwrap();
        assert!(!v.to_string().contains("hunter2-secret"));
        assert_eq!(field(&v, "email_delivery.mode")["value"], "smtp");
        assert_eq!(
            field(&v, "email_delivery.smtp.host")["value"],
            "smtp.example"
        );
        assert_eq!(field(&v, "email_delivery.smtp.security")["value"], "tls");
        assert_eq!(
            field(&v, "email_delivery.smtp.username")["value"],
            "relay-user"
        );
        let password = field(&v, "email_delivery.smtp.password");
        assert_eq!(password["kind"], "password");
        assert!(password["value"].is_null());
        assert_eq!(v["valid"], false);
        assert!(
            field(&v, "email_delivery.smtp.port")["error"]
                .as_str()
                .is_some_and(|e| e.contains("1 to 65535"))
        );
    }

    #[test]
    fn takes_no_params() {
        let db = Db::new();
        let e = db.query("settings", json!({"section": "sms"})).unwrap_err();
        assert_eq!(e.code(), ErrorCode::Invalid);
        assert!(e.to_string().contains("section"), "{e}");
        assert!(db.query("settings", json!({})).is_ok());
        assert!(crate::views::VIEW_NAMES.contains(&"settings"));
        let schema = &crate::views::schemas()["settings"];
        assert!(schema["properties"]["sections"].is_object(), "{schema}");
    }

    #[test]
    fn an_error_about_a_whole_object_goes_on_its_first_field() {
        let errors = vec![crate::settings::FieldError {
            field: "default_run_window".into(),
            message: "broken".into(),
        }];
        let mut sections = super::sections(&Settings::default(), &[]).unwrap();
        super::place_leftovers(&mut sections, &errors);
        assert_eq!(sections[1].fields[0].id, "default_run_window.mode");
        assert_eq!(sections[1].fields[0].error.as_deref(), Some("broken"));
        assert!(sections[1].fields[1].error.is_none());
    }
}
