//! Module-wide settings (SPEC §6) the engine reads: identity, time zone,
//! default run window and the SMS keywords. Stored as one JSON document in
//! the `settings` table and cached by the worker.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::messaging::sms::normalize_e164;
use crate::messaging::smtp::SmtpSettings;
use crate::schedule::{RunWindow, parse_tz};

/// Default SMS opt-out keywords (matched case- and space-insensitively).
pub const DEFAULT_OPT_OUT_KEYWORDS: &[&str] = &[
    "STOP",
    "STOPALL",
    "UNSUBSCRIBE",
    "CANCEL",
    "END",
    "QUIT",
    "REVOKE",
    "OPTOUT",
    "OPT OUT",
];
/// Default SMS opt-in keywords.
pub const DEFAULT_OPT_IN_KEYWORDS: &[&str] = &["START", "UNSTOP", "YES"];

/// The settings document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The practice's name (the `{{practice}}` placeholder).
    pub practice_name: String,
    /// How the module is called in the host's UI.
    #[serde(default = "default_module_name")]
    pub module_name: String,
    /// The practice's IANA time zone: run windows and practice days use it.
    pub time_zone: String,
    /// The run window new automations start with.
    #[serde(default = "RunWindow::business_hours")]
    pub default_run_window: RunWindow,
    /// SMS replies that opt the number out.
    #[serde(default = "default_opt_out")]
    pub sms_opt_out_keywords: Vec<String>,
    /// SMS replies that opt the number back in.
    #[serde(default = "default_opt_in")]
    pub sms_opt_in_keywords: Vec<String>,
    /// SMS replies answered with the practice's name, contact and opt-out instructions.
    #[serde(default = "default_help")]
    pub sms_help_keywords: Vec<String>,
    /// The practice's phone number, given in HELP answers.
    #[serde(default)]
    pub practice_phone: Option<String>,
    /// Who recipients see an email from (a step may override).
    #[serde(default)]
    pub email_sender: EmailSender,
    /// The compliant footer appended to every marketing email.
    #[serde(default)]
    pub email_footer: EmailFooter,
    /// SMS sender and consent footer.
    #[serde(default)]
    pub sms: SmsSettings,
    /// Open and click tracking.
    #[serde(default)]
    pub tracking: TrackingSettings,
    /// Sending limits per channel (excess waits for the next slot, never dropped).
    #[serde(default)]
    pub limits: SendingLimits,
    /// How email messages leave the module: handed to the host (default) or
    /// sent by the module itself through an SMTP relay.
    #[serde(default)]
    pub email_delivery: EmailDelivery,
    /// How SMS leaves the module: through the host (default) or a sender
    /// adapter plugin.
    #[serde(default)]
    pub sms_delivery: SmsDelivery,
}

/// How email messages are delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "mode", rename_all = "lowercase", deny_unknown_fields)]
pub enum EmailDelivery {
    /// Email messages go to the host's `deliver_message` callback (`Host::deliver` in Rust), as SMS do by default.
    // Written `{}`, not as a unit variant, so that serde refuses a field
    // given with it (an `smtp` relay sent with `host` is an error, not
    // ignored).
    Host {},
    /// The module sends email itself through this SMTP relay; the host still
    /// gets SMS, property and task effects.
    Smtp {
        /// The relay.
        smtp: SmtpSettings,
    },
    /// The module sends email through an installed sender adapter (a
    /// WebAssembly plugin declaring the `email` channel).
    Plugin {
        /// The adapter's plugin id.
        plugin_id: String,
    },
}

/// How SMS messages are delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "mode", rename_all = "lowercase", deny_unknown_fields)]
pub enum SmsDelivery {
    /// SMS messages go to the host's `deliver_message` callback (`Host::deliver` in Rust).
    // `{}`: a field given with it is refused (see `EmailDelivery`).
    Host {},
    /// The module sends SMS through an installed sender adapter (a
    /// WebAssembly plugin declaring the `sms` channel).
    Plugin {
        /// The adapter's plugin id.
        plugin_id: String,
    },
}

impl Default for EmailDelivery {
    fn default() -> Self {
        EmailDelivery::Host {}
    }
}

impl Default for SmsDelivery {
    fn default() -> Self {
        SmsDelivery::Host {}
    }
}

impl Settings {
    /// The sender adapter chosen for a channel (`email`, `sms`), if any.
    pub fn adapter_for(&self, channel: &str) -> Option<&str> {
        match (channel, &self.email_delivery, &self.sms_delivery) {
            ("email", EmailDelivery::Plugin { plugin_id }, _) => Some(plugin_id),
            ("sms", _, SmsDelivery::Plugin { plugin_id }) => Some(plugin_id),
            _ => None,
        }
    }
}

/// Email sender identity (SPEC §6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailSender {
    /// Display name.
    pub from_name: String,
    /// From address.
    pub from_address: String,
    /// Reply-to address.
    #[serde(default)]
    pub reply_to: Option<String>,
}

impl Default for EmailSender {
    fn default() -> Self {
        EmailSender {
            from_name: "Our practice".into(),
            from_address: "no-reply@practice.example".into(),
            reply_to: None,
        }
    }
}

/// The compliant email footer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailFooter {
    /// The practice's postal address, required in marketing email.
    pub postal_address: String,
    /// Footer text; `{{unsubscribe_link}}` and `{{practice}}` are replaced when the email sends.
    pub text: String,
}

impl Default for EmailFooter {
    fn default() -> Self {
        EmailFooter {
            postal_address: String::new(),
            text: "You receive this email from {{practice}}. Unsubscribe: {{unsubscribe_link}}"
                .into(),
        }
    }
}

/// SMS settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SmsSettings {
    /// The number recipients see and reply to (E.164), unless a step overrides it.
    #[serde(default)]
    pub sender_number: Option<String>,
    /// Appended to the first message of a thread.
    #[serde(default = "default_consent_footer")]
    pub consent_footer: String,
    /// Region used to read national numbers (ISO 3166 alpha-2).
    #[serde(default = "default_region")]
    pub default_region: String,
    /// Earliest local time an SMS may go out, in the recipient's time zone.
    #[serde(default = "default_sms_start")]
    pub send_from: crate::schedule::LocalTime,
    /// Latest local time (exclusive) an SMS may go out.
    #[serde(default = "default_sms_end")]
    pub send_until: crate::schedule::LocalTime,
}

fn default_consent_footer() -> String {
    "Reply STOP to opt out".into()
}

fn default_region() -> String {
    "US".into()
}

fn default_sms_start() -> crate::schedule::LocalTime {
    crate::schedule::LocalTime { minutes: 8 * 60 }
}

fn default_sms_end() -> crate::schedule::LocalTime {
    crate::schedule::LocalTime { minutes: 21 * 60 }
}

impl Default for SmsSettings {
    fn default() -> Self {
        SmsSettings {
            sender_number: None,
            consent_footer: default_consent_footer(),
            default_region: default_region(),
            send_from: default_sms_start(),
            send_until: default_sms_end(),
        }
    }
}

/// Tracking switches. Without a base URL nothing is tracked by the module.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrackingSettings {
    /// Public https base of the host's tracking endpoints, e.g. `https://t.practice.example`.
    #[serde(default)]
    pub base_url: Option<String>,
    /// Open pixel in email.
    #[serde(default)]
    pub email_opens: bool,
    /// Link wrapping in email.
    #[serde(default)]
    pub email_clicks: bool,
    /// Link wrapping in SMS.
    #[serde(default)]
    pub sms_clicks: bool,
}

/// Per-channel sending limits.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SendingLimits {
    /// Emails per hour (none: unlimited).
    #[serde(default)]
    pub email_per_hour: Option<u32>,
    /// Emails per day.
    #[serde(default)]
    pub email_per_day: Option<u32>,
    /// SMS per hour.
    #[serde(default)]
    pub sms_per_hour: Option<u32>,
    /// SMS per day.
    #[serde(default)]
    pub sms_per_day: Option<u32>,
}

fn default_module_name() -> String {
    "CRM".into()
}

fn default_opt_out() -> Vec<String> {
    DEFAULT_OPT_OUT_KEYWORDS
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn default_help() -> Vec<String> {
    ["HELP", "INFO"].iter().map(|s| s.to_string()).collect()
}

fn default_opt_in() -> Vec<String> {
    DEFAULT_OPT_IN_KEYWORDS
        .iter()
        .map(|s| s.to_string())
        .collect()
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            practice_name: "Our practice".into(),
            module_name: default_module_name(),
            time_zone: "UTC".into(),
            default_run_window: RunWindow::business_hours(),
            sms_opt_out_keywords: default_opt_out(),
            sms_opt_in_keywords: default_opt_in(),
            sms_help_keywords: default_help(),
            practice_phone: None,
            email_sender: EmailSender::default(),
            email_footer: EmailFooter::default(),
            sms: SmsSettings::default(),
            tracking: TrackingSettings::default(),
            limits: SendingLimits::default(),
            email_delivery: EmailDelivery::default(),
            sms_delivery: SmsDelivery::default(),
        }
    }
}

/// Settings with the time zone parsed, as the core uses them.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The document.
    pub doc: Settings,
    /// Parsed time zone.
    pub tz: chrono_tz::Tz,
}

/// One field's validation problem, for the settings screen to show next to
/// the field. `field` is the JSON path of the field in [`Settings`]
/// (`email_sender.from_address`, `limits.sms_per_hour`,
/// `sms_opt_in_keywords[2]`, `default_run_window.days[4].end`); `message`
/// says what is wrong without quoting the value (a keyword, a region or a
/// time may be named).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct FieldError {
    /// JSON path of the field in the settings document.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl FieldError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Longest practice name, in characters.
pub const MAX_PRACTICE_NAME: usize = 200;
/// Longest module name, in characters.
pub const MAX_MODULE_NAME: usize = 100;
/// Longest sender display name, in characters.
pub const MAX_FROM_NAME: usize = 100;
/// Longest email address (RFC 5321 path limit).
pub const MAX_EMAIL_ADDRESS: usize = 254;
/// Longest postal address, in characters.
pub const MAX_POSTAL_ADDRESS: usize = 500;
/// Longest email footer template, in characters.
pub const MAX_EMAIL_FOOTER: usize = 2000;
/// Longest SMS consent footer, in characters (one GSM-7 segment).
pub const MAX_CONSENT_FOOTER: usize = 160;
/// Most keywords in one SMS keyword list.
pub const MAX_KEYWORDS: usize = 50;
/// Longest SMS keyword, in characters.
pub const MAX_KEYWORD_CHARS: usize = 30;
/// Longest tracking base URL, in characters.
pub const MAX_TRACKING_URL: usize = 500;

/// A text field that is blank counts as not set.
pub(crate) fn is_blank(value: &Option<String>) -> bool {
    value.as_deref().is_none_or(|s| s.trim().is_empty())
}

/// Required one-line text: not blank, at most `max` characters, no line
/// breaks or other control characters.
pub(crate) fn check_line(value: &str, max: usize) -> std::result::Result<(), String> {
    if value.trim().is_empty() {
        return Err("required".into());
    }
    if value.chars().count() > max {
        return Err(format!("must be at most {max} characters"));
    }
    if value.chars().any(char::is_control) {
        return Err("must not contain line breaks or other control characters".into());
    }
    Ok(())
}

/// An email address as the composer reads it (trimmed, RFC 5322 addr-spec
/// by `lettre`), with a dotted domain so that it can be delivered on the
/// internet.
pub(crate) fn check_email(value: &str) -> std::result::Result<(), String> {
    const INVALID: &str = "not a valid email address";
    let value = value.trim();
    if value.is_empty() {
        return Err("required".into());
    }
    if value.len() > MAX_EMAIL_ADDRESS {
        return Err(format!(
            "{INVALID} (at most {MAX_EMAIL_ADDRESS} characters)"
        ));
    }
    let address: lettre::Address = value.parse().map_err(|_| INVALID.to_owned())?;
    let domain = address.domain();
    if domain.starts_with('[')
        || !domain.contains('.')
        || domain.starts_with('.')
        || domain.ends_with('.')
    {
        return Err(INVALID.into());
    }
    Ok(())
}

/// [`check_email`] for the practice's own addresses (From, Reply-To), which
/// must also be ASCII: a mailbox name or domain in other characters needs
/// SMTPUTF8 (RFC 6531) at every relay and inbox on the way, and a message
/// sent without it is refused.
fn check_sender_email(value: &str) -> std::result::Result<(), String> {
    check_email(value)?;
    if !value.trim().is_ascii() {
        return Err(
            "must be ASCII: a mailbox name or domain in other characters is not \
                    accepted by every relay (write an international domain in its xn-- form)"
                .into(),
        );
    }
    Ok(())
}

/// A public https base URL without user info, query or fragment.
fn check_https_url(value: &str) -> std::result::Result<(), String> {
    let value = value.trim();
    if value.chars().count() > MAX_TRACKING_URL {
        return Err(format!("must be at most {MAX_TRACKING_URL} characters"));
    }
    if !value.is_ascii() {
        return Err(
            "must be plain ASCII (write an international domain name in its xn-- form)".into(),
        );
    }
    if value
        .chars()
        .any(|c| c.is_ascii_whitespace() || c.is_ascii_control())
    {
        return Err("must not contain spaces or control characters".into());
    }
    let rest = match value.get(..8) {
        Some(scheme) if scheme.eq_ignore_ascii_case("https://") => &value[8..],
        _ => {
            return Err(
                "must be an https URL, such as https://t.practice.example (links and the open pixel are only served over https)"
                    .into(),
            );
        }
    };
    if value.contains(['?', '#']) {
        return Err("must not contain a query (?) or a fragment (#)".into());
    }
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.contains('@') {
        return Err("must not contain a user name or password".into());
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    if let Some(port) = port
        && (port.is_empty()
            || !port.bytes().all(|b| b.is_ascii_digit())
            || !matches!(port.parse::<u16>(), Ok(p) if p > 0))
    {
        return Err("has an invalid port".into());
    }
    let labels: Vec<&str> = host.split('.').collect();
    let host_ok = host.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        && labels
            .last()
            .is_some_and(|tld| tld.bytes().any(|b| b.is_ascii_alphabetic()));
    if !host_ok {
        return Err(
            "must name a public host by its domain name, such as https://t.practice.example".into(),
        );
    }
    Ok(())
}

/// Where a template puts a placeholder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    /// Nowhere.
    Missing,
    /// Only inside a comment or an `{% if %}` … `{% endif %}` block: some
    /// contacts, or none, see it.
    Hidden,
    /// Outside every comment and condition: every contact sees it.
    Shown,
}

/// Where `source` puts the placeholder `{{ name }}` (spaces and trim
/// markers inside the braces allowed, no filters). `if`, `elif`, `else`
/// and `endif` are the only block tags a template may have.
fn placement(source: &str, name: &str) -> Placement {
    let (mut depth, mut seen) = (0usize, false);
    let mut rest = source;
    while let Some(start) = rest.find('{') {
        let after = &rest[start..];
        let (close, kind) = match after.get(..2) {
            Some("{{") => ("}}", 'v'),
            Some("{%") => ("%}", 'b'),
            Some("{#") => ("#}", 'c'),
            _ => {
                rest = &after[1..];
                continue;
            }
        };
        let Some(end) = after[2..].find(close) else {
            break;
        };
        let inner =
            after[2..2 + end].trim_matches(|c: char| c.is_whitespace() || c == '-' || c == '+');
        match kind {
            'v' if inner == name && depth == 0 => return Placement::Shown,
            'v' if inner == name => seen = true,
            'b' => match inner.split_whitespace().next() {
                Some("if") => depth += 1,
                Some("endif") => depth = depth.saturating_sub(1),
                _ => {}
            },
            'c' => seen |= placement(inner, name) != Placement::Missing,
            _ => {}
        }
        rest = &after[2 + end + 2..];
    }
    if seen {
        Placement::Hidden
    } else {
        Placement::Missing
    }
}

/// True when the words of `keyword` appear, in order and as whole words, in
/// `text` (both compared upper case, punctuation ignored).
fn mentions_keyword(text: &str, keyword: &str) -> bool {
    let words = |s: &str| -> Vec<String> {
        s.split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(|w| w.to_uppercase())
            .collect()
    };
    let text = words(text);
    let keyword = words(keyword);
    !keyword.is_empty() && text.windows(keyword.len()).any(|w| w == keyword.as_slice())
}

/// The region code when it is a two-letter ISO 3166 code `phonenumber` knows
/// (case-insensitive), upper case.
fn known_region(code: &str) -> Option<String> {
    let code = code.trim();
    if code.len() != 2 || !code.bytes().all(|b| b.is_ascii_alphabetic()) {
        return None;
    }
    let upper = code.to_ascii_uppercase();
    upper
        .parse::<phonenumber::country::Id>()
        .ok()
        .map(|_| upper)
}

impl Settings {
    /// Checks the whole document and returns every problem, each naming its
    /// field by JSON path (see [`FieldError`]); empty when the document is
    /// valid. At most one error is reported per field. The rules:
    ///
    /// * `practice_name` (1 to 200 characters), `module_name` (1 to 100) and
    ///   `email_sender.from_name` (1 to 100): required, one line.
    /// * `time_zone`: an IANA time zone name.
    /// * `default_run_window`: a valid run window (errors point into it,
    ///   e.g. `default_run_window.days[2].end`).
    /// * `email_sender.from_address`: required, a valid email address with a
    ///   dotted domain, in ASCII; `email_sender.reply_to`: the same when set.
    /// * `email_footer.postal_address`: may be blank — blank means *not set
    ///   yet*, so that a new database's default settings validate. Until it
    ///   is set the engine sends no marketing email (each one fails with
    ///   reason `no_postal_address`, and its step's SMS fallback goes
    ///   instead), since a marketing email must carry the practice's postal
    ///   address. When set: at most 500 characters, no control characters
    ///   but line breaks.
    /// * `email_footer.text`: required, at most 2000 characters, a valid
    ///   template ([`crate::messaging::template::validate`], standard
    ///   placeholders only) that contains `{{unsubscribe_link}}`.
    /// * `limits.*`: at least 1 when set (unset = no limit); a per-hour limit
    ///   not above the per-day limit of the same channel.
    /// * `tracking.base_url`: when set, an https URL naming a public host,
    ///   without user info, query or fragment. `tracking.email_opens`,
    ///   `tracking.email_clicks` and `tracking.sms_clicks` require it.
    /// * `sms.default_region`: a two-letter ISO 3166 region code known to the
    ///   phone number library (`US`, `CA`, `DE`, …).
    /// * `sms.sender_number` and `practice_phone`: when set, a valid phone
    ///   number, read in `sms.default_region` when national
    ///   ([`crate::messaging::sms::normalize_e164`]).
    /// * `sms.consent_footer`: required, one line of at most 160 characters,
    ///   naming one of the opt-out keywords (e.g. "Reply STOP to opt out").
    /// * `sms.send_from` before `sms.send_until` (`24:00` only as the end).
    /// * `sms_opt_out_keywords`, `sms_opt_in_keywords`, `sms_help_keywords`:
    ///   1 to 50 keywords of 1 to 30 characters with at least one letter or
    ///   digit; the opt-out list contains `STOP` (carriers require it); no
    ///   keyword in two lists (compared as SMS replies are: case, spaces and
    ///   punctuation ignored).
    ///
    /// * `email_delivery.smtp.*` (SMTP mode): the relay's settings, as
    ///   [`SmtpSettings::validate`] checks them.
    ///
    /// A text field left blank counts as not set (`reply_to`,
    /// `practice_phone`, `sms.sender_number`, `tracking.base_url`).
    pub fn validate_all(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut check = |field: &str, result: std::result::Result<(), String>| {
            if let Err(message) = result {
                errors.push(FieldError::new(field, message));
            }
        };

        // Module identity.
        check(
            "module_name",
            check_line(&self.module_name, MAX_MODULE_NAME),
        );
        check(
            "practice_name",
            check_line(&self.practice_name, MAX_PRACTICE_NAME),
        );
        if self.time_zone.trim().is_empty() {
            check("time_zone", Err("required".into()));
        } else if parse_tz(&self.time_zone).is_err() {
            check(
                "time_zone",
                Err("unknown IANA time zone (use a name such as America/New_York)".into()),
            );
        }

        // Default run window: its messages start with their own path.
        if let Err(m) = self.default_run_window.validate() {
            match m.split_once(": ") {
                Some((path, message)) => {
                    check(&format!("default_run_window.{path}"), Err(message.into()))
                }
                None => check("default_run_window", Err(m)),
            }
        }

        // Email sender identity.
        check(
            "email_sender.from_name",
            check_line(&self.email_sender.from_name, MAX_FROM_NAME),
        );
        check(
            "email_sender.from_address",
            check_sender_email(&self.email_sender.from_address),
        );
        if !is_blank(&self.email_sender.reply_to) {
            check(
                "email_sender.reply_to",
                check_sender_email(self.email_sender.reply_to.as_deref().unwrap_or_default()),
            );
        }

        // Email footer.
        let postal = &self.email_footer.postal_address;
        if postal.chars().count() > MAX_POSTAL_ADDRESS {
            check(
                "email_footer.postal_address",
                Err(format!("must be at most {MAX_POSTAL_ADDRESS} characters")),
            );
        } else if postal
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\r')
        {
            // It goes into every marketing email's text and HTML.
            check(
                "email_footer.postal_address",
                Err("must not contain control characters (line breaks are allowed)".into()),
            );
        }
        check("email_footer.text", self.check_footer_text());

        // Sending limits.
        for (hour_field, per_hour, day_field, per_day) in [
            (
                "limits.email_per_hour",
                self.limits.email_per_hour,
                "limits.email_per_day",
                self.limits.email_per_day,
            ),
            (
                "limits.sms_per_hour",
                self.limits.sms_per_hour,
                "limits.sms_per_day",
                self.limits.sms_per_day,
            ),
        ] {
            const AT_LEAST_ONE: &str = "must be at least 1 (leave it empty for no limit)";
            if per_hour == Some(0) {
                check(hour_field, Err(AT_LEAST_ONE.into()));
            }
            if per_day == Some(0) {
                check(day_field, Err(AT_LEAST_ONE.into()));
            }
            if let (Some(h), Some(d)) = (per_hour, per_day)
                && h > 0
                && d > 0
                && h > d
            {
                check(
                    hour_field,
                    Err(format!("must not be more than the daily limit ({d})")),
                );
            }
        }

        // Tracking.
        let has_base = !is_blank(&self.tracking.base_url);
        if has_base {
            check(
                "tracking.base_url",
                check_https_url(self.tracking.base_url.as_deref().unwrap_or_default()),
            );
        }
        for (field, on, what) in [
            (
                "tracking.email_opens",
                self.tracking.email_opens,
                "open tracking",
            ),
            (
                "tracking.email_clicks",
                self.tracking.email_clicks,
                "email click tracking",
            ),
            (
                "tracking.sms_clicks",
                self.tracking.sms_clicks,
                "SMS click tracking",
            ),
        ] {
            if on && !has_base {
                check(
                    field,
                    Err(format!(
                        "{what} needs a tracking address (set tracking.base_url)"
                    )),
                );
            }
        }

        // SMS sender number and region.
        let region = known_region(&self.sms.default_region);
        if region.is_none() {
            check(
                "sms.default_region",
                Err("must be a two-letter ISO 3166 region code, such as US".into()),
            );
        }
        for (field, number) in [
            ("sms.sender_number", &self.sms.sender_number),
            ("practice_phone", &self.practice_phone),
        ] {
            if is_blank(number) {
                continue;
            }
            let number = number.as_deref().unwrap_or_default();
            match &region {
                Some(region) => check(field, normalize_e164(number, region).map(|_| ())),
                // Without a region only international numbers can be read.
                None if number.trim().starts_with('+') => {
                    check(field, normalize_e164(number, "US").map(|_| ()))
                }
                None => {}
            }
        }

        // Opt-out & consent.
        let lists = [
            ("sms_opt_out_keywords", &self.sms_opt_out_keywords),
            ("sms_opt_in_keywords", &self.sms_opt_in_keywords),
            ("sms_help_keywords", &self.sms_help_keywords),
        ];
        for (i, (field, list)) in lists.iter().enumerate() {
            check(
                field,
                Self::check_keywords(list).and_then(|()| {
                    if *field == "sms_opt_out_keywords"
                        && !list.iter().any(|k| fold_keyword(k) == "STOP")
                    {
                        Err("must include STOP (carriers require it to opt out)".into())
                    } else {
                        Ok(())
                    }
                }),
            );
            // A keyword already in an earlier list.
            for (k, keyword) in list.iter().enumerate() {
                let folded = fold_keyword(keyword);
                if folded.is_empty() {
                    continue;
                }
                if let Some((other, _)) = lists[..i]
                    .iter()
                    .find(|(_, earlier)| earlier.iter().any(|e| fold_keyword(e) == folded))
                {
                    check(
                        &format!("{field}[{k}]"),
                        Err(format!(
                            "{folded} is already in {other}; a keyword can be in one list only"
                        )),
                    );
                }
            }
        }
        check("sms.consent_footer", self.check_consent_footer());

        // SMS sending hours.
        let (from, until) = (self.sms.send_from, self.sms.send_until);
        if !from.is_in_range() || from.is_end_of_day() {
            check(
                "sms.send_from",
                Err("must be a time between 00:00 and 23:59".into()),
            );
        } else if !until.is_in_range() {
            check(
                "sms.send_until",
                Err("must be a time between 00:01 and 24:00".into()),
            );
        } else if until <= from {
            check(
                "sms.send_until",
                Err(format!("must be later than sms.send_from ({from})")),
            );
        } else if from.minutes < 8 * 60 {
            // The quiet hours may only be made stricter than 08:00-21:00.
            check("sms.send_from", Err("may not be earlier than 08:00".into()));
        } else if until.minutes > 21 * 60 {
            check("sms.send_until", Err("may not be later than 21:00".into()));
        }

        // Email delivery.
        if let EmailDelivery::Smtp { smtp } = &self.email_delivery
            && let Err(m) = smtp.validate()
        {
            match m.split_once(": ") {
                Some((path, message)) => {
                    check(&format!("email_delivery.smtp.{path}"), Err(message.into()))
                }
                None => check("email_delivery.smtp", Err(m)),
            }
        }
        for (path, id) in [
            ("email_delivery.plugin_id", self.adapter_for("email")),
            ("sms_delivery.plugin_id", self.adapter_for("sms")),
        ] {
            if let Some(id) = id
                && id.trim().is_empty()
            {
                check(path, Err("choose a sender adapter".into()));
            }
        }

        errors
    }

    /// The SMTP relay's stored password, carried over to this new document
    /// when it leaves `email_delivery.smtp.password` out and keeps the same
    /// relay host and username: the settings screen never shows the stored
    /// password, so saving the screen unchanged must not drop it. A new
    /// password replaces it; a new host or username needs its own.
    pub fn keep_stored_password(&mut self, stored: &Settings) {
        if let (EmailDelivery::Smtp { smtp: new }, EmailDelivery::Smtp { smtp: old }) =
            (&mut self.email_delivery, &stored.email_delivery)
            && new.password.is_none()
            && new.username.is_some()
            && new.username == old.username
            && new.host.trim().eq_ignore_ascii_case(old.host.trim())
        {
            new.password.clone_from(&old.password);
        }
    }

    /// The document as `settings.get` returns it: the SMTP password left
    /// out (`null`); whether one is stored shows in the settings view (the
    /// password field's placeholder). Saving this document back keeps the stored password
    /// ([`Settings::keep_stored_password`]).
    pub fn without_secrets(&self) -> Settings {
        let mut doc = self.clone();
        if let EmailDelivery::Smtp { smtp } = &mut doc.email_delivery {
            smtp.password = None;
        }
        doc
    }

    /// Validates the document ([`Settings::validate_all`]) and resolves it
    /// for the engine: the time zone parsed, text fields left blank set to
    /// `None` (`email_sender.reply_to`, `practice_phone`,
    /// `sms.sender_number`, `tracking.base_url`) and `sms.sender_number` in
    /// E.164 form.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] with the first problem, `"<field>: <message>"`, e.g.
    /// `email_sender.from_address: not a valid email address`.
    pub fn validate(&self) -> Result<Resolved> {
        if let Some(first) = self.validate_all().into_iter().next() {
            return Err(Error::invalid(first.to_string()));
        }
        let tz =
            parse_tz(&self.time_zone).map_err(|m| Error::invalid(format!("time_zone: {m}")))?;
        let mut doc = self.clone();
        // The zone as a zone picker names it.
        doc.time_zone = doc.time_zone.trim().to_owned();
        for value in [
            &mut doc.email_sender.reply_to,
            &mut doc.practice_phone,
            &mut doc.sms.sender_number,
            &mut doc.tracking.base_url,
        ] {
            if is_blank(value) {
                *value = None;
            }
        }
        if let Some(number) = &doc.sms.sender_number {
            let e164 = normalize_e164(number, &doc.sms.default_region)
                .map_err(|m| Error::invalid(format!("sms.sender_number: {m}")))?;
            doc.sms.sender_number = Some(e164);
        }
        Ok(Resolved { doc, tz })
    }

    /// The sender adapters' plugin ids are written like plugin ids (not
    /// quoted when refused: input that failed the rules may hold
    /// anything). `settings.update` checks more (the plugin is installed
    /// and sends the channel); initial settings, stored before any plugin
    /// can be, are checked for this only.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] naming the field.
    pub fn check_adapter_ids(&self) -> Result<()> {
        for channel in ["email", "sms"] {
            if let Some(id) = self.adapter_for(channel)
                && !crate::plugins::descriptor::is_id(id, 3)
            {
                return Err(Error::invalid(format!(
                    "{channel}_delivery.plugin_id: not a plugin id (3 to 64 lowercase letters, digits and '-')"
                )));
            }
        }
        Ok(())
    }

    fn check_footer_text(&self) -> std::result::Result<(), String> {
        let text = &self.email_footer.text;
        if text.trim().is_empty() {
            return Err("required (a marketing email must carry an unsubscribe link)".into());
        }
        if text.chars().count() > MAX_EMAIL_FOOTER {
            return Err(format!("must be at most {MAX_EMAIL_FOOTER} characters"));
        }
        crate::messaging::template::validate("email_footer.text", text, &[]).map_err(|e| {
            if e.line > 0 {
                format!("{} at line {}, column {}", e.message, e.line, e.column)
            } else {
                e.message
            }
        })?;
        match placement(text, "unsubscribe_link") {
            Placement::Shown => Ok(()),
            Placement::Missing => Err(
                "must contain {{unsubscribe_link}} (every marketing email needs a working unsubscribe link)"
                    .into(),
            ),
            // Written is not enough: the link must come out for every
            // contact, not sit in a comment or under a condition.
            Placement::Hidden => Err(
                "must show {{unsubscribe_link}} to every contact (not inside a comment or a condition)"
                    .into(),
            ),
        }
    }

    fn check_consent_footer(&self) -> std::result::Result<(), String> {
        let footer = &self.sms.consent_footer;
        check_line(footer, MAX_CONSENT_FOOTER)?;
        if !self
            .sms_opt_out_keywords
            .iter()
            .any(|k| mentions_keyword(footer, k))
        {
            return Err(
                "must tell recipients how to opt out with one of the opt-out keywords, e.g. \"Reply STOP to opt out\""
                    .into(),
            );
        }
        Ok(())
    }

    fn check_keywords(list: &[String]) -> std::result::Result<(), String> {
        if list.is_empty() || list.len() > MAX_KEYWORDS {
            return Err(format!("must have 1 to {MAX_KEYWORDS} keywords"));
        }
        if list.iter().any(|k| {
            k.trim().is_empty()
                || k.chars().count() > MAX_KEYWORD_CHARS
                || fold_keyword(k).is_empty()
        }) {
            return Err(format!(
                "each keyword must be 1 to {MAX_KEYWORD_CHARS} characters with a letter or digit"
            ));
        }
        Ok(())
    }
}

/// The keyword to tell people to reply with: `usual` when the list has it,
/// else the list's first (as it reads, in upper case). Settings always
/// have at least one keyword in each list.
fn keyword_to_name(list: &[String], usual: &str) -> String {
    if list.iter().any(|k| fold_keyword(k) == usual) {
        return usual.to_owned();
    }
    list.first()
        .map(|k| k.trim().to_uppercase())
        .unwrap_or_else(|| usual.to_owned())
}

/// Folds a keyword or an SMS body for keyword matching: upper case, no spaces
/// or punctuation ("Opt out!" → "OPTOUT").
pub fn fold_keyword(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_uppercase)
        .collect()
}

impl Resolved {
    /// True when an SMS body is an opt-out keyword.
    pub fn is_opt_out(&self, body: &str) -> bool {
        let b = fold_keyword(body);
        !b.is_empty()
            && self
                .doc
                .sms_opt_out_keywords
                .iter()
                .any(|k| fold_keyword(k) == b)
    }

    /// True when an SMS body is a HELP keyword.
    pub fn is_help(&self, body: &str) -> bool {
        let b = fold_keyword(body);
        !b.is_empty()
            && self
                .doc
                .sms_help_keywords
                .iter()
                .any(|k| fold_keyword(k) == b)
    }

    /// The answer to a STOP: no marketing, how to come back (with a
    /// keyword the practice's opt-in list has).
    pub fn stop_confirmation(&self) -> String {
        format!(
            "{}: you are unsubscribed and will receive no more text messages. Reply {} to resubscribe.",
            self.doc.practice_name,
            keyword_to_name(&self.doc.sms_opt_in_keywords, "START")
        )
    }

    /// The answer to HELP: who we are, how to reach us, how to stop (the
    /// opt-out keywords always include STOP).
    pub fn help_answer(&self) -> String {
        match &self.doc.practice_phone {
            Some(p) => format!(
                "{}: for help call {p}. Reply STOP to opt out.",
                self.doc.practice_name
            ),
            None => format!(
                "{}: for help contact the practice. Reply STOP to opt out.",
                self.doc.practice_name
            ),
        }
    }

    /// True when an SMS body is an opt-in keyword.
    pub fn is_opt_in(&self, body: &str) -> bool {
        let b = fold_keyword(body);
        !b.is_empty()
            && self
                .doc
                .sms_opt_in_keywords
                .iter()
                .any(|k| fold_keyword(k) == b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_match_case_and_space_insensitively() {
        let r = Settings::default().validate().unwrap();
        for b in ["stop", " Stop ", "opt out", "OPT-OUT", "Unsubscribe."] {
            assert!(r.is_opt_out(b), "{b}");
        }
        for b in ["stop please call me", "yes please", ""] {
            assert!(!r.is_opt_out(b), "{b}");
        }
        assert!(r.is_opt_in("start"));
    }

    use crate::error::ErrorCode;
    use crate::schedule::{DayHours, LocalTime, Weekday};

    /// The errors of `s`, as `"field: message"` lines.
    fn errors(s: &Settings) -> Vec<String> {
        s.validate_all().iter().map(ToString::to_string).collect()
    }

    /// Asserts that `s` has exactly one error, on `field`, containing `needle`.
    #[track_caller]
    fn only_error(s: &Settings, field: &str, needle: &str) {
        let all = s.validate_all();
        assert_eq!(all.len(), 1, "{all:?}");
        assert_eq!(all[0].field, field, "{all:?}");
        assert!(all[0].message.contains(needle), "{all:?}");
        let e = s.validate().unwrap_err();
        assert_eq!(e.code(), ErrorCode::Invalid);
        assert_eq!(e.to_string(), format!("invalid input: {}", all[0]));
    }

    fn hhmm(h: u16, m: u16) -> LocalTime {
        LocalTime::from_hm(h, m).unwrap()
    }

    /// The zone is stored as a zone picker names it; a field a run window
    /// does not have is refused, not dropped.
    #[test]
    fn a_zone_is_stored_trimmed_and_a_window_has_no_unknown_fields() {
        let s = Settings {
            time_zone: " Europe/London ".into(),
            ..Settings::default()
        };
        assert_eq!(s.validate().unwrap().doc.time_zone, "Europe/London");
        let day = |extra: &str| {
            format!(r#"{{"day": "mon", "enabled": true, "start": "09:00", "end": "17:00"{extra}}}"#)
        };
        let window = format!(
            r#"{{"mode": "specific_hours", "days": [{}], "time_zone": "Europe/Paris"}}"#,
            day("")
        );
        let err = serde_json::from_str::<RunWindow>(&window).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{window}: {err}");
        // A row as the builder's view shows it is taken back.
        let shown = format!(
            r#"{{"mode": "specific_hours", "days": [{}]}}"#,
            day(r#", "label": "Monday""#)
        );
        serde_json::from_str::<RunWindow>(&shown).unwrap();
    }

    /// The STOP confirmation names an opt-in keyword that works: the
    /// practice's own when START is not one of them.
    #[test]
    fn the_keyword_answers_name_keywords_the_practice_has() {
        let defaults = Settings::default().validate().unwrap();
        assert!(defaults.stop_confirmation().contains("Reply START"));
        assert!(defaults.help_answer().contains("Reply STOP"));
        let own = Settings {
            sms_opt_in_keywords: vec!["unstop".into(), "Yes".into()],
            ..Settings::default()
        }
        .validate()
        .unwrap();
        assert!(
            own.stop_confirmation()
                .contains("Reply UNSTOP to resubscribe"),
            "{}",
            own.stop_confirmation()
        );
    }

    #[test]
    fn default_settings_validate() {
        let d = Settings::default();
        assert!(d.validate_all().is_empty(), "{:?}", errors(&d));
        let r = d.validate().unwrap();
        assert_eq!(r.doc, d);
        assert_eq!(r.tz, chrono_tz::UTC);
        // The defaults also survive a JSON round trip with every field absent.
        let minimal: Settings = serde_json::from_value(
            serde_json::json!({"practice_name": "Our practice", "time_zone": "UTC"}),
        )
        .unwrap();
        assert!(minimal.validate_all().is_empty(), "{:?}", errors(&minimal));
    }

    #[test]
    fn identity_rules() {
        let d = Settings::default;
        only_error(
            &Settings {
                practice_name: "  ".into(),
                ..d()
            },
            "practice_name",
            "required",
        );
        only_error(
            &Settings {
                practice_name: "x".repeat(201),
                ..d()
            },
            "practice_name",
            "at most 200",
        );
        only_error(
            &Settings {
                module_name: String::new(),
                ..d()
            },
            "module_name",
            "required",
        );
        only_error(
            &Settings {
                module_name: "CRM\nTwo".into(),
                ..d()
            },
            "module_name",
            "line breaks",
        );
        only_error(
            &Settings {
                time_zone: "Nowhere/Land".into(),
                ..d()
            },
            "time_zone",
            "unknown IANA time zone",
        );
        let mut days = match RunWindow::business_hours() {
            RunWindow::SpecificHours { days } => days,
            RunWindow::AnyTime {} => unreachable!(),
        };
        days[2] = DayHours {
            day: Weekday::Wed,
            enabled: true,
            start: hhmm(17, 0),
            end: hhmm(9, 0),
        };
        only_error(
            &Settings {
                default_run_window: RunWindow::SpecificHours { days },
                ..d()
            },
            "default_run_window.days[2].end",
            "later than start",
        );
        assert!(
            Settings {
                default_run_window: RunWindow::AnyTime {},
                ..d()
            }
            .validate_all()
            .is_empty()
        );
    }

    #[test]
    fn email_sender_rules() {
        let with = |f: fn(&mut EmailSender)| {
            let mut s = Settings::default();
            f(&mut s.email_sender);
            s
        };
        only_error(
            &with(|e| e.from_name = " ".into()),
            "email_sender.from_name",
            "required",
        );
        only_error(
            &with(|e| e.from_name = "Dr. A\r\nBcc: x@y.z".into()),
            "email_sender.from_name",
            "line breaks",
        );
        for bad in [
            "praxis",
            "a@b",
            "a b@c.de",
            "@practice.example",
            "a@[10.0.0.1]",
            "a@practice.example.",
        ] {
            let mut s = Settings::default();
            s.email_sender.from_address = bad.into();
            only_error(&s, "email_sender.from_address", "not a valid email address");
        }
        only_error(
            &with(|e| e.from_address = String::new()),
            "email_sender.from_address",
            "required",
        );
        // A practice's own address is sent without SMTPUTF8.
        for bad in ["empfang@praxis-müller.de", "réception@cabinet.example"] {
            let mut s = Settings::default();
            s.email_sender.from_address = bad.into();
            only_error(&s, "email_sender.from_address", "must be ASCII");
            let mut s = Settings::default();
            s.email_sender.reply_to = Some(bad.into());
            only_error(&s, "email_sender.reply_to", "must be ASCII");
        }
        let mut s = Settings::default();
        s.email_sender.from_address = "empfang@xn--praxis-mller-rlb.de".into();
        assert!(s.validate().is_ok());
        only_error(
            &with(|e| e.reply_to = Some("front desk".into())),
            "email_sender.reply_to",
            "not a valid email address",
        );
        // A blank reply-to is "not set"; the resolved document says so.
        let s = with(|e| e.reply_to = Some("  ".into()));
        assert!(s.validate_all().is_empty());
        assert_eq!(s.validate().unwrap().doc.email_sender.reply_to, None);
        assert!(
            with(|e| e.reply_to = Some("desk@praxis-mueller.de".into()))
                .validate_all()
                .is_empty()
        );
    }

    #[test]
    fn email_footer_rules() {
        let with = |text: &str, postal: &str| Settings {
            email_footer: EmailFooter {
                postal_address: postal.into(),
                text: text.into(),
            },
            ..Settings::default()
        };
        // An empty postal address is allowed (the engine holds marketing email back).
        assert!(
            with("Unsubscribe: {{unsubscribe_link}}", "")
                .validate_all()
                .is_empty()
        );
        assert!(
            with(
                "{{ practice }}, Main St 1. Unsubscribe: {{ unsubscribe_link }}",
                "1 Main St, Boston, MA"
            )
            .validate_all()
            .is_empty()
        );
        only_error(
            &with("{{unsubscribe_link}}", &"x".repeat(501)),
            "email_footer.postal_address",
            "at most 500",
        );
        only_error(
            &with(
                "{{unsubscribe_link}}",
                "12 River Road\u{0}\u{1b}[31m Boston",
            ),
            "email_footer.postal_address",
            "control characters",
        );
        assert!(
            with("{{unsubscribe_link}}", "12 River Road\r\nBoston, MA")
                .validate_all()
                .is_empty()
        );
        only_error(&with("  ", ""), "email_footer.text", "required");
        only_error(
            &with("You receive this email from {{practice}}.", ""),
            "email_footer.text",
            "{{unsubscribe_link}}",
        );
        only_error(
            &with("Hi {{fistname}} {{unsubscribe_link}}", ""),
            "email_footer.text",
            "unknown placeholder fistname",
        );
        for hidden in [
            "Thanks {# {{unsubscribe_link}} #}",
            "{% if false %}{{unsubscribe_link}}{% endif %}",
            "{% if firstname %}Hi {{firstname}}: {{unsubscribe_link}}{% endif %}",
            r#"{% if firstname != "Alex" %}{{unsubscribe_link}}{% endif %}"#,
            "{% if lastname %}x{% else %}{{ unsubscribe_link }}{% endif %}",
        ] {
            only_error(&with(hidden, ""), "email_footer.text", "to every contact");
        }
        // Shown to everyone, around a condition.
        assert!(
            with(
                "{% if firstname %}Hi {{firstname}}.{% endif %} Unsubscribe: {{- unsubscribe_link -}}",
                ""
            )
            .validate_all()
            .is_empty()
        );
        only_error(
            &with("{% for x in y %}{{unsubscribe_link}}", ""),
            "email_footer.text",
            "line 1",
        );
        only_error(
            &with(&format!("{{{{unsubscribe_link}}}}{}", "x".repeat(2000)), ""),
            "email_footer.text",
            "at most 2000",
        );
    }

    #[test]
    fn limit_rules() {
        let with = |l: SendingLimits| Settings {
            limits: l,
            ..Settings::default()
        };
        only_error(
            &with(SendingLimits {
                email_per_hour: Some(0),
                ..Default::default()
            }),
            "limits.email_per_hour",
            "at least 1",
        );
        only_error(
            &with(SendingLimits {
                sms_per_day: Some(0),
                ..Default::default()
            }),
            "limits.sms_per_day",
            "at least 1",
        );
        only_error(
            &with(SendingLimits {
                email_per_hour: Some(600),
                email_per_day: Some(500),
                ..Default::default()
            }),
            "limits.email_per_hour",
            "daily limit (500)",
        );
        only_error(
            &with(SendingLimits {
                sms_per_hour: Some(61),
                sms_per_day: Some(60),
                ..Default::default()
            }),
            "limits.sms_per_hour",
            "daily limit (60)",
        );
        assert!(
            with(SendingLimits {
                email_per_hour: Some(500),
                email_per_day: Some(500),
                sms_per_hour: Some(1),
                sms_per_day: None,
            })
            .validate_all()
            .is_empty()
        );
    }

    #[test]
    fn tracking_rules() {
        let with = |base: Option<&str>, opens: bool, clicks: bool, sms: bool| Settings {
            tracking: TrackingSettings {
                base_url: base.map(str::to_string),
                email_opens: opens,
                email_clicks: clicks,
                sms_clicks: sms,
            },
            ..Settings::default()
        };
        for good in [
            "https://t.practice.example",
            "https://t.practice.example/",
            "HTTPS://ehr.example.com:8443/crm/t",
        ] {
            assert!(
                with(Some(good), true, true, true).validate_all().is_empty(),
                "{good}"
            );
        }
        for (bad, needle) in [
            ("http://t.practice.example", "https URL"),
            ("t.practice.example", "https URL"),
            ("https://t.practice.example/?a=1", "query"),
            ("https://t.practice.example/#top", "fragment"),
            ("https://user:pw@t.practice.example", "user name"),
            ("https://localhost", "public host"),
            ("https://10.0.0.1", "public host"),
            ("https://t.practice.example:99999", "port"),
            ("https://t.prac tice.example", "spaces"),
            ("https://bücher.example", "ASCII"),
        ] {
            only_error(
                &with(Some(bad), false, false, false),
                "tracking.base_url",
                needle,
            );
        }
        only_error(
            &with(None, true, false, false),
            "tracking.email_opens",
            "tracking.base_url",
        );
        only_error(
            &with(Some(" "), false, true, false),
            "tracking.email_clicks",
            "tracking.base_url",
        );
        only_error(
            &with(None, false, false, true),
            "tracking.sms_clicks",
            "tracking.base_url",
        );
        assert_eq!(with(None, true, true, true).validate_all().len(), 3);
    }

    #[test]
    fn sms_rules() {
        let with = |f: fn(&mut Settings)| {
            let mut s = Settings::default();
            f(&mut s);
            s
        };
        only_error(
            &with(|s| s.sms.sender_number = Some("1234567".into())),
            "sms.sender_number",
            "not a valid phone number for region US",
        );
        only_error(
            &with(|s| s.practice_phone = Some("617-555-0123 ext. 4".into())),
            "practice_phone",
            "extensions",
        );
        for bad in ["USA", "XX", "1", ""] {
            let mut s = Settings::default();
            s.sms.default_region = bad.into();
            only_error(&s, "sms.default_region", "two-letter");
        }
        // The number is read in the practice's region and resolved to E.164.
        let s = with(|s| {
            s.sms.default_region = "fr".into();
            s.sms.sender_number = Some("06 12 34 56 78".into());
        });
        assert!(s.validate_all().is_empty(), "{:?}", errors(&s));
        assert_eq!(
            s.validate().unwrap().doc.sms.sender_number.as_deref(),
            Some("+33612345678")
        );
        let s = with(|s| s.sms.sender_number = Some("(617) 555-0123".into()));
        assert_eq!(
            s.validate().unwrap().doc.sms.sender_number.as_deref(),
            Some("+16175550123")
        );
        // Bad region: an international number is still checked, a national one is not guessed at.
        let s = with(|s| {
            s.sms.default_region = "ZZ".into();
            s.sms.sender_number = Some("+999 1".into());
            s.practice_phone = Some("6175550123".into());
        });
        let fields: Vec<_> = s.validate_all().into_iter().map(|e| e.field).collect();
        assert_eq!(fields, ["sms.default_region", "sms.sender_number"]);

        only_error(
            &with(|s| s.sms.send_until = hhmm(8, 0)),
            "sms.send_until",
            "later than sms.send_from (08:00)",
        );
        only_error(
            &with(|s| s.sms.send_from = LocalTime::END_OF_DAY),
            "sms.send_from",
            "00:00 and 23:59",
        );
        only_error(
            &with(|s| {
                s.sms.send_from = LocalTime::MIDNIGHT;
                s.sms.send_until = LocalTime::END_OF_DAY;
            }),
            "sms.send_from",
            "earlier than 08:00",
        );
        only_error(
            &with(|s| s.sms.send_until = hhmm(22, 0)),
            "sms.send_until",
            "later than 21:00",
        );
        assert!(
            with(|s| {
                s.sms.send_from = hhmm(9, 0);
                s.sms.send_until = hhmm(20, 0);
            })
            .validate_all()
            .is_empty(),
            "stricter hours are fine"
        );

        only_error(
            &with(|s| s.sms.consent_footer = String::new()),
            "sms.consent_footer",
            "required",
        );
        only_error(
            &with(|s| s.sms.consent_footer = "Msg & data rates may apply".into()),
            "sms.consent_footer",
            "opt out",
        );
        assert!(
            with(|s| s.sms.consent_footer = "Text opt-out to stop.".into())
                .validate_all()
                .is_empty()
        );
        only_error(
            &with(|s| s.sms.consent_footer = "Reply STOP to opt out. ".repeat(8)),
            "sms.consent_footer",
            "at most 160",
        );
    }

    #[test]
    fn keyword_rules() {
        let with = |f: fn(&mut Settings)| {
            let mut s = Settings::default();
            f(&mut s);
            s
        };
        only_error(
            &with(|s| s.sms_help_keywords.clear()),
            "sms_help_keywords",
            "1 to 50 keywords",
        );
        only_error(
            &with(|s| s.sms_opt_in_keywords = vec!["START".into(); 51]),
            "sms_opt_in_keywords",
            "1 to 50 keywords",
        );
        only_error(
            &with(|s| s.sms_opt_in_keywords.push(" ".into())),
            "sms_opt_in_keywords",
            "1 to 30 characters",
        );
        only_error(
            &with(|s| s.sms_opt_in_keywords.push("!!".into())),
            "sms_opt_in_keywords",
            "letter or digit",
        );
        only_error(
            &with(|s| {
                s.sms_opt_out_keywords = vec!["UNSUBSCRIBE".into()];
                s.sms.consent_footer = "Reply UNSUBSCRIBE to opt out".into();
            }),
            "sms_opt_out_keywords",
            "must include STOP",
        );
        // "Stop!" folds to STOP, which is an opt-out keyword: the later list's entry is named.
        only_error(
            &with(|s| s.sms_help_keywords.push("Stop!".into())),
            "sms_help_keywords[2]",
            "STOP is already in sms_opt_out_keywords",
        );
        only_error(
            &with(|s| s.sms_help_keywords.insert(0, "yes".into())),
            "sms_help_keywords[0]",
            "YES is already in sms_opt_in_keywords",
        );
    }

    #[test]
    fn email_delivery_defaults_to_host_and_checks_smtp_with_field_paths() {
        let s: Settings =
            serde_json::from_value(serde_json::json!({"practice_name": "P", "time_zone": "UTC"}))
                .unwrap();
        assert_eq!(s.email_delivery, EmailDelivery::Host {});
        assert_eq!(
            serde_json::to_value(&s.email_delivery).unwrap(),
            serde_json::json!({"mode": "host"})
        );
        let mut s: Settings = serde_json::from_value(serde_json::json!({
            "practice_name": "P", "time_zone": "UTC",
            "email_delivery": {"mode": "smtp", "smtp": {"host": "smtp.example", "port": 587}}
        }))
        .unwrap();
        assert!(s.validate().is_ok());
        if let EmailDelivery::Smtp { smtp } = &mut s.email_delivery {
            smtp.port = 0;
            smtp.username = Some("user".into());
        }
        let fields: Vec<String> = s.validate_all().into_iter().map(|e| e.field).collect();
        assert_eq!(fields, ["email_delivery.smtp.port"]);
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("email_delivery.smtp.port: ")
        );
        let bad = serde_json::from_value::<Settings>(serde_json::json!({
            "practice_name": "P", "time_zone": "UTC", "email_delivery": {"mode": "smtp"}
        }));
        assert!(bad.is_err());
    }

    /// `host` delivery has no fields: a relay or an adapter sent with it is
    /// refused (it was dropped, and the settings read as saved).
    #[test]
    fn host_delivery_refuses_the_fields_of_the_other_modes() {
        for (doc, field) in [
            (
                serde_json::json!({"practice_name": "P", "time_zone": "UTC",
                    "email_delivery": {"mode": "host", "smtp": {"host": "smtp.example", "port": 587}}}),
                "smtp",
            ),
            (
                serde_json::json!({"practice_name": "P", "time_zone": "UTC",
                    "sms_delivery": {"mode": "host", "plugin_id": "twilio"}}),
                "plugin_id",
            ),
        ] {
            let e = serde_json::from_value::<Settings>(doc.clone())
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("unknown field `{field}`")),
                "{doc}: {e}"
            );
        }
        let s: Settings = serde_json::from_value(serde_json::json!({"practice_name": "P",
            "time_zone": "UTC", "email_delivery": {"mode": "host"}, "sms_delivery": {"mode": "host"}}))
        .unwrap();
        assert_eq!(s.email_delivery, EmailDelivery::Host {});
        assert_eq!(
            serde_json::to_value(&s.sms_delivery).unwrap(),
            serde_json::json!({"mode": "host"})
        );
    }

    #[test]
    fn validate_all_reports_every_field_at_once() {
        let mut s = Settings {
            practice_name: String::new(),
            time_zone: "Mars/Olympus".into(),
            ..Settings::default()
        };
        s.email_sender.from_address = "praxis".into();
        s.email_footer.text = "No link here".into();
        s.limits.sms_per_hour = Some(0);
        s.tracking.email_opens = true;
        s.sms.sender_number = Some("1234567".into());
        s.sms_opt_in_keywords.push("quit".into());
        let all = s.validate_all();
        let fields: Vec<&str> = all.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "practice_name",
                "time_zone",
                "email_sender.from_address",
                "email_footer.text",
                "limits.sms_per_hour",
                "tracking.email_opens",
                "sms.sender_number",
                "sms_opt_in_keywords[3]",
            ],
            "{all:?}"
        );
        // validate() reports the first one.
        let e = s.validate().unwrap_err();
        assert_eq!(e.code(), ErrorCode::Invalid);
        assert_eq!(e.to_string(), "invalid input: practice_name: required");
        // The errors serialize as {field, message}.
        let v = serde_json::to_value(&all[2]).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"field": "email_sender.from_address", "message": "not a valid email address"})
        );
        // No message quotes the values it judged.
        for e in &all {
            for value in ["praxis", "1234567", "Mars", "No link here"] {
                assert!(!e.message.contains(value), "{e}");
            }
        }
    }

    #[test]
    fn validation_names_the_field() {
        let s = Settings {
            time_zone: "Nowhere/Land".into(),
            ..Settings::default()
        };
        assert!(s.validate().unwrap_err().to_string().contains("time_zone"));
        let s = Settings {
            practice_name: " ".into(),
            ..Settings::default()
        };
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("practice_name")
        );
    }
}
