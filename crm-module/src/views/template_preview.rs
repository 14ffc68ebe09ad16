//! `template_preview`: a saved email or SMS template, or the message of an
//! automation's email or SMS step, rendered the way a real send renders it,
//! for the template editor's preview pane and the builder's Preview button.
//!
//! The placeholders get the same values as at send time
//! ([`compose::variables`]), either from a real contact (`contact_id`) or
//! from sample data (Alex Sample, owner Dr. Lee, no custom properties). Email
//! is assembled by the same composer as a real send ([`email::compose`]:
//! preheader, compliant footer with the practice's postal address); the
//! unsubscribe link is the sample URL [`PREVIEW_UNSUBSCRIBE_URL`], shown as
//! text, not as a link. No tracking is applied (no wrapped links, no open
//! pixel). SMS text gets the consent footer as on the first message of a
//! thread, and the segment counter of [`sms::measure`], taken of the text as
//! it is sent: with `tracking.sms_clicks` on, its links at the length of
//! their click-tracking links.
//!
//! A rendering problem does not fail the view: it is listed in `problems`
//! (field and message) and the field renders empty. The same rendering serves
//! the `template.test_send` command (`render_email` and `render_sms`, crate-private).

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{Action, ActionStyle, Ctx, Label};
use crate::catalog::Catalog;
use crate::clock::Millis;
use crate::core::contacts::{self, Contact};
use crate::error::{Error, Result};
use crate::messaging::compose::{self, Content, html_escape};
use crate::messaging::email::{self, ComposedEmail, EmailParts, SenderIdentity};
use crate::messaging::sms::{self, SmsMeasure};
use crate::messaging::{template, tracking};
use crate::model::automation::{SenderOverride, StepKind};
use crate::model::contact::validate_id;
use crate::settings::Resolved;

/// The unsubscribe link a preview or a test message shows: a sample, never a
/// working link.
pub const PREVIEW_UNSUBSCRIBE_URL: &str = "https://…/u/preview";

/// Width in CSS pixels the host renders the desktop preview at.
pub const DESKTOP_WIDTH: u32 = 600;

/// Width in CSS pixels the host renders the mobile preview at.
pub const MOBILE_WIDTH: u32 = 375;

/// Parameters of `template_preview`: a saved template (`template_id`), or
/// the message of an automation's email or SMS step as saved (`automation_id`
/// and `step_id`: its template, or its own inline content, with its sender).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplatePreviewParams {
    /// The saved template to preview.
    #[serde(default)]
    pub template_id: Option<String>,
    /// The automation whose step to preview (with `step_id`).
    #[serde(default)]
    pub automation_id: Option<String>,
    /// The email or SMS step to preview (with `automation_id`).
    #[serde(default)]
    pub step_id: Option<String>,
    /// Render with this contact's data; sample data when absent.
    #[serde(default)]
    pub contact_id: Option<String>,
}

/// The template preview.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct TemplatePreviewView {
    /// What is previewed, with whose data.
    pub header: PreviewHeader,
    /// The email preview (email templates only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<EmailPreview>,
    /// The SMS preview (SMS templates only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sms: Option<SmsPreview>,
    /// Rendering problems (a field that failed renders empty); empty when
    /// everything rendered.
    pub problems: Vec<PreviewProblem>,
    /// Buttons, for a saved template: `open_editor` (handled by the UI:
    /// opens the template editor for `header.template_id`) and `send_test`
    /// (sends `template.test_send`; the UI adds `template_id` from the
    /// header, the `to` address or number it asks for and, optionally,
    /// `contact_id`). None for a step's own content (edited in the builder).
    pub actions: Vec<Action>,
}

/// Heading of the preview.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct PreviewHeader {
    /// The template previewed, or the step's template; null for a step's
    /// own inline content.
    pub template_id: Option<String>,
    /// The automation whose step is previewed (step previews only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub automation_id: Option<String>,
    /// The step previewed (step previews only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_id: Option<String>,
    /// The template's name in the library, or the step's name.
    pub name: String,
    /// Its channel: `email` ("Email") or `sms` ("SMS").
    pub channel: Label,
    /// The contact whose data fills the placeholders; null for sample data.
    pub contact_id: Option<String>,
    /// Whose data is shown: the contact's name, or "Sample data".
    pub data_label: String,
}

/// An email as the recipient would see it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct EmailPreview {
    /// The inbox line.
    pub inbox: InboxPreview,
    /// The HTML part at desktop width.
    pub desktop: HtmlPreview,
    /// The same HTML part at mobile width.
    pub mobile: HtmlPreview,
    /// The plain-text part (footer included).
    pub text: String,
    /// The unsubscribe link shown in the footer: a sample, not clickable.
    pub unsubscribe: PreviewLink,
}

/// What an inbox list shows for the message.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct InboxPreview {
    /// Sender display name.
    pub from_name: String,
    /// Sender address.
    pub from_address: String,
    /// Rendered subject.
    pub subject: String,
    /// Rendered preheader (preview text).
    pub preheader: String,
}

/// The HTML to render in a frame of the given width.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct HtmlPreview {
    /// Frame width in CSS pixels (600 desktop, 375 mobile).
    pub width: u32,
    /// The complete HTML document (preheader and footer included).
    pub html: String,
}

/// A link shown in a preview.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct PreviewLink {
    /// The URL shown.
    pub url: String,
    /// Whether the UI may follow it (false: it is a sample).
    pub clickable: bool,
}

/// An SMS as the recipient would receive it, with its counter.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SmsPreview {
    /// The rendered text, consent footer appended as on a first message.
    pub text: String,
    /// True when the consent footer was appended (it is not already in the text).
    pub consent_footer_appended: bool,
    /// Characters, segments, credits, encoding, units left in the last
    /// segment and the characters that force UCS-2, of the text as it is
    /// sent: with `tracking.sms_clicks` on, each of `tracked_links` counts
    /// at the length of its click-tracking link.
    pub counter: SmsMeasure,
    /// How many of the text's links go as click-tracking links
    /// (`{tracking.base_url}/c/…`, `tracking.sms_clicks`); 0 when SMS
    /// clicks are not tracked. `text` shows them as written.
    pub tracked_links: usize,
    /// The number it is sent from: the step's own sender number, else the
    /// practice's (`sms.sender_number`); `None` when neither is set (the
    /// host's SMS gateway chooses).
    pub sender_number: Option<String>,
}

/// A field that failed to render.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct PreviewProblem {
    /// The template field (`subject`, `html_body`, `message`, …).
    pub field: String,
    /// What is wrong (never contains contact data).
    pub message: String,
}

/// A saved template.
pub(crate) struct TemplateRow {
    pub(crate) id: String,
    pub(crate) channel: String,
    pub(crate) name: String,
    pub(crate) content: Content,
}

/// Loads a live template, or NotFound.
pub(crate) fn load_template(conn: &Connection, id: &str) -> Result<TemplateRow> {
    validate_id("template_id", id)?;
    let row = conn
        .prepare_cached(
            "SELECT channel, name, subject, preheader, html_body, text_body, message FROM templates
             WHERE id = ?1 AND deleted_at IS NULL",
        )?
        .query_row([id], |r| {
            Ok(TemplateRow {
                id: id.to_string(),
                channel: r.get(0)?,
                name: r.get(1)?,
                content: Content {
                    subject: r.get(2)?,
                    preheader: r.get(3)?,
                    html_body: r.get(4)?,
                    text_body: r.get(5)?,
                    message: r.get(6)?,
                },
            })
        })
        .optional()?;
    row.ok_or_else(|| Error::not_found(format!("template {id}")))
}

/// The contact whose data fills the placeholders: `contact_id`'s (NotFound
/// when unknown) or the sample contact.
pub(crate) fn data_contact(conn: &Connection, contact_id: Option<&str>) -> Result<Contact> {
    match contact_id {
        Some(id) => {
            validate_id("contact_id", id)?;
            contacts::load(conn, id)?.ok_or_else(|| Error::not_found(format!("contact {id}")))
        }
        None => Ok(sample_contact()),
    }
}

/// Sample data: Alex Sample, owner Dr. Lee, no custom properties.
pub(crate) fn sample_contact() -> Contact {
    let mut props = Map::new();
    props.insert("first_name".into(), json!("Alex"));
    props.insert("last_name".into(), json!("Sample"));
    props.insert("owner".into(), json!({"name": "Dr. Lee"}));
    Contact::with_props("sample", props)
}

/// The placeholder values a real send uses ([`compose::variables`]), with
/// the sample unsubscribe link.
fn variables(
    conn: &Connection,
    settings: &Resolved,
    now: Millis,
    contact: &Contact,
) -> BTreeMap<String, String> {
    let catalog = Catalog::default();
    let ctx = crate::core::Ctx::new(conn, now, &catalog, settings, "preview");
    compose::variables(&ctx, contact, PREVIEW_UNSUBSCRIBE_URL)
}

fn render_field(
    field: &str,
    source: &str,
    vars: &BTreeMap<String, String>,
    html: bool,
    problems: &mut Vec<PreviewProblem>,
) -> String {
    match template::render(field, source, vars, html) {
        Ok(v) => v,
        Err(e) => {
            problems.push(PreviewProblem {
                field: e.field.clone(),
                message: if e.line > 0 {
                    format!("{} at line {}, column {}", e.message, e.line, e.column)
                } else {
                    e.message.clone()
                },
            });
            String::new()
        }
    }
}

/// An email rendered for a preview or a test.
pub(crate) struct RenderedEmail {
    pub(crate) sender: SenderIdentity,
    pub(crate) subject: String,
    pub(crate) preheader: String,
    pub(crate) html: String,
    pub(crate) text: String,
    /// The composed message (None when the composer refused it; see problems).
    pub(crate) composed: Option<ComposedEmail>,
    pub(crate) problems: Vec<PreviewProblem>,
}

/// Renders an email template with `contact`'s data, composed like a real
/// send (preheader, footer) but untracked and with the sample unsubscribe
/// link. `subject_prefix` is prepended to the rendered subject.
#[allow(clippy::too_many_arguments)]
pub(crate) fn render_email(
    conn: &Connection,
    settings: &Resolved,
    now: Millis,
    content: &Content,
    contact: &Contact,
    to: &str,
    key: &str,
    subject_prefix: &str,
    sender: Option<&SenderOverride>,
) -> RenderedEmail {
    let s = &settings.doc;
    let vars = variables(conn, settings, now, contact);
    let mut problems = Vec::new();
    let subject = format!(
        "{subject_prefix}{}",
        render_field("subject", &content.subject, &vars, false, &mut problems)
    );
    let preheader = render_field("preheader", &content.preheader, &vars, false, &mut problems);
    let body = render_field("html_body", &content.html_body, &vars, true, &mut problems);
    let text_body = content
        .text_body
        .as_ref()
        .map(|t| render_field("text_body", t, &vars, false, &mut problems));
    let footer_text = format!(
        "{}\n{}",
        render_field(
            "email_footer.text",
            &s.email_footer.text,
            &vars,
            false,
            &mut problems
        ),
        s.email_footer.postal_address
    );
    // As in the composer: the footer rendered escaped with a marker where the
    // link goes; here the marker becomes the sample URL as plain text.
    const MARKER: &str = "CRMUNSUBSCRIBELINKMARKER";
    let mut marked = vars.clone();
    marked.insert("unsubscribe_link".into(), MARKER.into());
    let footer = render_field(
        "email_footer.text",
        &s.email_footer.text,
        &marked,
        true,
        &mut Vec::new(),
    );
    let footer_html = format!(
        "<p style=\"color:#666;font-size:12px\">{}<br>{}</p>",
        footer.replace(
            MARKER,
            &format!(
                "<span style=\"text-decoration:underline\" title=\"Sample link (not clickable in a preview)\">{}</span>",
                html_escape(PREVIEW_UNSUBSCRIBE_URL)
            )
        ),
        html_escape(&s.email_footer.postal_address)
    );
    let sender = compose::sender_identity(s, sender);
    let parts = EmailParts {
        message_key: key,
        to,
        sender: &sender,
        subject: &subject,
        preheader: &preheader,
        html_body: &body,
        text_body: text_body.as_deref(),
        footer_html: &footer_html,
        footer_text: &footer_text,
        unsubscribe_url: None,
        unsubscribe_mailto: None,
        marketing: false,
        date: std::time::UNIX_EPOCH + std::time::Duration::from_millis(now.max(0) as u64),
    };
    let (html, text, composed) = match email::compose(&parts) {
        Ok(m) => (m.html.clone(), m.text.clone(), Some(m)),
        Err(reason) => {
            // The composer names the part: "to: …", "sender.from_address: …".
            let (field, message) = match reason.split_once(": ") {
                Some((f, m)) => (f.to_string(), m.to_string()),
                None => ("email".to_string(), reason),
            };
            problems.push(PreviewProblem { field, message });
            (
                format!("{body}{footer_html}"),
                format!("{}\n\n{footer_text}", text_body.unwrap_or_default()),
                None,
            )
        }
    };
    RenderedEmail {
        sender,
        subject,
        preheader,
        html,
        text,
        composed,
        problems,
    }
}

/// An SMS rendered for a preview or a test.
pub(crate) struct RenderedSms {
    pub(crate) text: String,
    pub(crate) footer_appended: bool,
    pub(crate) measure: SmsMeasure,
    pub(crate) problems: Vec<PreviewProblem>,
}

/// Renders an SMS template with `contact`'s data, the consent footer
/// appended as on the first message of a thread.
pub(crate) fn render_sms(
    conn: &Connection,
    settings: &Resolved,
    now: Millis,
    content: &Content,
    contact: &Contact,
) -> RenderedSms {
    let vars = variables(conn, settings, now, contact);
    let mut problems = Vec::new();
    let mut text = render_field("message", &content.message, &vars, false, &mut problems);
    let footer = settings.doc.sms.consent_footer.trim();
    let footer_appended = !footer.is_empty() && !text.contains(footer);
    if footer_appended {
        text = format!("{} {footer}", text.trim_end());
    }
    let measure = sms::measure(&text);
    RenderedSms {
        text,
        footer_appended,
        measure,
        problems,
    }
}

/// The counter of `r`'s text as a send writes it, and how many links it
/// wraps: with `tracking.sms_clicks`, the links the template wrote go as
/// click-tracking links ([`compose::wrap_sms_links`], as a send wraps
/// them), each here with a [`tracking::sample_token`] of a real token's
/// length.
fn measure_as_sent(settings: &Resolved, content: &Content, r: &RenderedSms) -> (SmsMeasure, usize) {
    let token = tracking::sample_token();
    match compose::wrap_sms_links(&settings.doc.tracking, content, &r.text, &|_| token.clone()) {
        Some((text, links)) => (sms::measure(&text), links.len()),
        None => (r.measure.clone(), 0),
    }
}

/// What a preview renders: a saved template, or a step's message.
struct Source {
    template_id: Option<String>,
    automation_id: Option<String>,
    step_id: Option<String>,
    name: String,
    channel: String,
    content: Content,
    sender: Option<SenderOverride>,
    /// An SMS step's own sender number.
    sms_sender: Option<String>,
}

/// The template or step the parameters name.
fn source(conn: &Connection, p: &TemplatePreviewParams) -> Result<Source> {
    match (&p.template_id, &p.automation_id, &p.step_id) {
        (Some(id), None, None) => {
            let t = load_template(conn, id)?;
            Ok(Source {
                template_id: Some(t.id),
                automation_id: None,
                step_id: None,
                name: t.name,
                channel: t.channel,
                content: t.content,
                sender: None,
                sms_sender: None,
            })
        }
        (None, Some(automation_id), Some(step_id)) => {
            validate_id("step_id", step_id)?;
            let automation = super::load_automation(conn, automation_id)?;
            let Some(step) = automation.current.flow.step(step_id) else {
                return Err(Error::not_found(format!(
                    "step {step_id} of automation {automation_id}"
                )));
            };
            let (template_id, channel, sender, sms_sender) = match &step.kind {
                StepKind::SendEmail {
                    template_id,
                    sender,
                    ..
                } => (template_id, "email", sender.clone(), None),
                StepKind::SendSms {
                    template_id,
                    sender_number,
                    ..
                } => (template_id, "sms", None, sender_number.clone()),
                _ => {
                    return Err(Error::invalid(format!(
                        "step_id: step {step_id} sends no email or SMS"
                    )));
                }
            };
            let name = match (template_id, step.name.as_deref()) {
                (Some(t), _) => load_template(conn, t)?.name,
                (None, Some(n)) if !n.trim().is_empty() => n.to_string(),
                (None, _) => format!("Step {step_id}"),
            };
            Ok(Source {
                template_id: template_id.clone(),
                automation_id: Some(automation_id.clone()),
                step_id: Some(step_id.clone()),
                name,
                channel: channel.to_string(),
                content: compose::content_of(conn, &step.kind)?,
                sender,
                sms_sender,
            })
        }
        _ => Err(Error::invalid(
            "give template_id, or automation_id and step_id",
        )),
    }
}

/// Builds the preview.
pub(crate) fn build(ctx: &Ctx<'_>, p: TemplatePreviewParams) -> Result<TemplatePreviewView> {
    let t = source(ctx.conn, &p).map_err(|e| match e {
        Error::Invalid(m) => Error::Invalid(format!("params: {m}")),
        other => other,
    })?;
    let contact = data_contact(ctx.conn, p.contact_id.as_deref()).map_err(|e| match e {
        Error::Invalid(m) => Error::Invalid(format!("params: {m}")),
        other => other,
    })?;
    let data_label = match &p.contact_id {
        Some(_) => {
            let name = crate::model::contact::display_name(&contact.props);
            if name.is_empty() {
                format!("Contact {}", contact.id)
            } else {
                name
            }
        }
        None => "Sample data".to_string(),
    };
    let (channel, email, sms, problems) = if t.channel == "sms" {
        let r = render_sms(ctx.conn, ctx.settings, ctx.now, &t.content, &contact);
        let (counter, tracked_links) = measure_as_sent(ctx.settings, &t.content, &r);
        let preview = SmsPreview {
            text: r.text,
            consent_footer_appended: r.footer_appended,
            counter,
            tracked_links,
            sender_number: t
                .sms_sender
                .clone()
                .filter(|n| !n.trim().is_empty())
                .or_else(|| ctx.settings.doc.sms.sender_number.clone()),
        };
        (Label::new("sms", "SMS"), None, Some(preview), r.problems)
    } else {
        let r = render_email(
            ctx.conn,
            ctx.settings,
            ctx.now,
            &t.content,
            &contact,
            "preview@example.com",
            "preview",
            "",
            t.sender.as_ref(),
        );
        let preview = EmailPreview {
            inbox: InboxPreview {
                from_name: r.sender.from_name,
                from_address: r.sender.from_address,
                subject: r.subject,
                preheader: r.preheader,
            },
            desktop: HtmlPreview {
                width: DESKTOP_WIDTH,
                html: r.html.clone(),
            },
            mobile: HtmlPreview {
                width: MOBILE_WIDTH,
                html: r.html,
            },
            text: r.text,
            unsubscribe: PreviewLink {
                url: PREVIEW_UNSUBSCRIBE_URL.to_string(),
                clickable: false,
            },
        };
        (
            Label::new("email", "Email"),
            Some(preview),
            None,
            r.problems,
        )
    };
    // A saved template can be edited and sent as a test; a step's own
    // content is edited in the builder.
    let actions = match t.template_id {
        Some(_) => vec![
            Action::new("open_editor", "Open editor", Some("pen-to-square")),
            Action::new("send_test", "Send test", Some("paper-plane"))
                .command("template.test_send", None)
                .style(ActionStyle::Primary),
        ],
        None => Vec::new(),
    };
    Ok(TemplatePreviewView {
        header: PreviewHeader {
            template_id: t.template_id,
            automation_id: t.automation_id,
            step_id: t.step_id,
            name: t.name,
            channel,
            contact_id: p.contact_id,
            data_label,
        },
        email,
        sms,
        problems,
        actions,
    })
}

/// The `rendered` part of a test message's payload, and its contact id.
pub(crate) fn test_message(
    conn: &Connection,
    settings: &Resolved,
    now: Millis,
    template_id: &str,
    contact_id: Option<&str>,
    to: &str,
    key: &str,
) -> Result<(String, Value)> {
    let t = load_template(conn, template_id)?;
    let contact = data_contact(conn, contact_id)?;
    let problem = |p: &[PreviewProblem]| -> Option<Error> {
        p.first()
            .map(|p| Error::invalid(format!("{}: {}", p.field, p.message)))
    };
    if t.channel == "sms" {
        let to = sms::normalize_e164(to, &settings.doc.sms.default_region)
            .map_err(|m| Error::invalid(format!("to: {m}")))?;
        let r = render_sms(conn, settings, now, &t.content, &contact);
        if let Some(e) = problem(&r.problems) {
            return Err(e);
        }
        return Ok((
            "sms".into(),
            json!({
                "to": to,
                "from": settings.doc.sms.sender_number,
                "text": r.text,
                "first_in_thread": true,
                "encoding": r.measure.encoding,
                "segments": r.measure.segments,
                "credits": r.measure.credits,
            }),
        ));
    }
    let to = crate::model::contact::normalize_property("email", json!(to))
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Error::invalid("to: must be an email address"))?;
    let r = render_email(
        conn, settings, now, &t.content, &contact, &to, key, "[Test] ", None,
    );
    if let Some(e) = problem(&r.problems) {
        return Err(e);
    }
    let m = r
        .composed
        .ok_or_else(|| Error::Internal("test email not composed".into()))?;
    Ok((
        "email".into(),
        json!({
            "to": to,
            "message_id": m.message_id,
            "from": r.sender,
            "subject": r.subject,
            "preheader": r.preheader,
            "html": m.html,
            "text": m.text,
            "unsubscribe_url": Value::Null,
            "rfc5322_base64": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &m.rfc5322),
            "envelope_from": m.envelope_from,
        }),
    ))
}
