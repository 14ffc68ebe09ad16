//! Turning a step's content into the message the host (or a sender) delivers:
//! placeholders rendered per contact, the email composed (sender identity,
//! compliant footer, List-Unsubscribe, Message-ID from the idempotency key),
//! the SMS given its consent footer on the first message of a thread and its
//! segment count, links wrapped and the open pixel added when tracking is on.
//! Runs inside the core's transaction: the numbered message and its links are
//! stored with the outbox row that carries it. An email is stored assembled
//! (its parts and headers); [`with_mime`] writes its MIME on the
//! dispatcher's thread when the row is handed over.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine;
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Value, json};

use super::consent::Category;
use super::email::{EmailParts, SenderIdentity};
use super::tracking::{self, KeyRing, Signer, TokenKind};
use super::{email, sms, template};
use crate::clock::Millis;
use crate::core::Ctx;
use crate::core::contacts::{self, Contact};
use crate::error::{Error, Result};
use crate::model::automation::{SenderOverride, StepKind};
use crate::outbox;

/// The editable content of a message: a saved template's or a step's own.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Content {
    /// Email subject.
    pub subject: String,
    /// Email preheader.
    pub preheader: String,
    /// Email HTML body.
    pub html_body: String,
    /// Email plain-text body (derived from HTML when absent).
    pub text_body: Option<String>,
    /// SMS text.
    pub message: String,
}

/// Why a message could not be composed. Counted as an error (render failure),
/// not as a bounce.
#[derive(Debug, Clone, PartialEq)]
pub enum ComposeError {
    /// A placeholder failed to render.
    Render(String),
    /// The recipient's address is not usable (e.g. a phone number that is not E.164-normalizable).
    Address(String),
    /// A marketing email needs the practice's postal address and an unsubscribe link.
    Compliance(&'static str),
}

impl ComposeError {
    /// Stable reason id for the event log.
    pub fn reason(&self) -> &'static str {
        match self {
            ComposeError::Render(_) => "render_failed",
            ComposeError::Address(_) => "invalid_address",
            ComposeError::Compliance(r) => r,
        }
    }
}

/// Loads the content of a communication step (its saved template, if any).
pub fn content_of(conn: &rusqlite::Connection, kind: &StepKind) -> Result<Content> {
    let (template_id, channel) = match kind {
        StepKind::SendEmail { template_id, .. } => (template_id, "email"),
        StepKind::SendSms { template_id, .. } => (template_id, "sms"),
        _ => return Ok(Content::default()),
    };
    if let Some(id) = template_id {
        let row: Option<(String, String, String, Option<String>, String)> = conn
            .prepare_cached(
                "SELECT subject, preheader, html_body, text_body, message FROM templates
                 WHERE id = ?1 AND channel = ?2 AND deleted_at IS NULL",
            )?
            .query_row(params![id, channel], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .optional()?;
        let (subject, preheader, html_body, text_body, message) =
            row.ok_or_else(|| Error::not_found(format!("{channel} template {id}")))?;
        return Ok(Content {
            subject,
            preheader,
            html_body,
            text_body,
            message,
        });
    }
    Ok(match kind {
        StepKind::SendEmail {
            subject,
            preheader,
            body,
            ..
        } => Content {
            subject: subject.clone(),
            preheader: preheader.clone(),
            html_body: body.clone(),
            ..Content::default()
        },
        StepKind::SendSms { message, .. } => Content {
            message: message.clone(),
            ..Content::default()
        },
        _ => Content::default(),
    })
}

/// Who an email is from: the step's sender override over the settings'
/// sender, field by field.
pub fn sender_identity(
    settings: &crate::settings::Settings,
    sender: Option<&SenderOverride>,
) -> SenderIdentity {
    let s = &settings.email_sender;
    SenderIdentity {
        from_name: sender
            .and_then(|o| o.from_name.clone())
            .unwrap_or_else(|| s.from_name.clone()),
        from_address: sender
            .and_then(|o| o.from_address.clone())
            .unwrap_or_else(|| s.from_address.clone()),
        reply_to: sender
            .and_then(|o| o.reply_to.clone())
            .or_else(|| s.reply_to.clone()),
    }
}

/// The values of every placeholder for one contact; a placeholder whose
/// value is missing or blank is left out (undefined).
pub fn variables(
    ctx: &Ctx<'_>,
    contact: &Contact,
    unsubscribe_link: &str,
) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    // Properties whose placeholder is not their name (`plan-type` as
    // `plan_type`): a property named like the placeholder comes first.
    let mut renamed = Vec::new();
    for (k, v) in &contact.props {
        let text = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Array(items) => items
                .iter()
                .map(|i| {
                    i.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| i.to_string())
                })
                .collect::<Vec<_>>()
                .join(", "),
            _ => continue,
        };
        match crate::model::contact::placeholder_name(k) {
            std::borrow::Cow::Borrowed(_) => {
                vars.insert(k.clone(), text);
            }
            std::borrow::Cow::Owned(name) => renamed.push((name, text)),
        }
    }
    for (name, text) in renamed {
        vars.entry(name).or_insert(text);
    }
    let owner = (contact.props.get("owner"))
        .and_then(crate::model::contact::staff_name)
        .unwrap_or("");
    vars.insert(
        "firstname".into(),
        contact.text("first_name").unwrap_or("").into(),
    );
    vars.insert(
        "lastname".into(),
        contact.text("last_name").unwrap_or("").into(),
    );
    vars.insert("practice".into(), ctx.settings.doc.practice_name.clone());
    vars.insert("owner".into(), owner.into());
    vars.insert("unsubscribe_link".into(), unsubscribe_link.into());
    // A blank value is left undefined, so that `default("there")` stands in
    // for it (minijinja's `default` replaces undefined values only); an
    // undefined placeholder without one still renders as nothing.
    vars.retain(|_, v| !v.trim().is_empty());
    vars
}

fn render(
    field: &str,
    source: &str,
    vars: &minijinja::Value,
    html: bool,
) -> std::result::Result<String, ComposeError> {
    template::render_value(field, source, vars, html)
        .map_err(|e| ComposeError::Render(e.to_string()))
}

/// Numbers a message for tracking tokens (same transaction as its outbox row).
fn number(ctx: &Ctx<'_>, key: &str, contact_id: &str, channel: &str) -> Result<i64> {
    // Insert, or (the same message composed again) keep the row; either way its id.
    // Not one statement with RETURNING: SQLite builds a temporary table for
    // the returned rows on every execution.
    let inserted = ctx
        .conn
        .prepare_cached(
            "INSERT INTO messages (key, contact_id, channel, created_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(key) DO NOTHING",
        )?
        .execute(params![key, contact_id, channel, ctx.now])?;
    if inserted == 1 {
        return Ok(ctx.conn.last_insert_rowid());
    }
    Ok(ctx
        .conn
        .prepare_cached("SELECT id FROM messages WHERE key = ?1")?
        .query_row([key], |r| r.get(0))?)
}

/// Whether the SMS `key` carries the consent footer of the thread with the
/// number `to`: it opens the thread (the first message the module sends to
/// that number; composed again, it still is), or the one that opened it
/// has not been accepted by its sender. Until a text with the footer is
/// accepted, a later text could reach the number first (the opener waiting
/// for a retry) or alone (the opener failing), so it carries the footer
/// too; the first of them accepted opens the thread in its place
/// ([`footer_accepted`]). A thread is the
/// recipient's number, not the contact: a contact's new number gets the
/// footer, a second contact on a family phone does not. A "Test to" sample
/// always shows it and opens nothing.
fn opens_thread(ctx: &Ctx<'_>, key: &str, to: &str) -> Result<bool> {
    let Some(phone) = contacts::phone_key(to) else {
        return Ok(true);
    };
    if outbox::is_test_send(ctx.install_id, key) {
        return Ok(true);
    }
    let opened = ctx
        .conn
        .prepare_cached(
            "INSERT INTO sms_threads (phone_key, first_key, at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
        )?
        .execute(params![phone, key, ctx.now])?;
    if opened == 1 {
        return Ok(true);
    }
    let (first, status): (String, Option<String>) = ctx
        .conn
        .prepare_cached(THREAD_OPENER_SQL)?
        .query_row([&phone], |r| Ok((r.get(0)?, r.get(1)?)))?;
    // Not accepted: waiting, failed for good (a failure that gave the
    // thread up deleted it; one that did not, an answer lost past every
    // retry, leaves it to the next text accepted: [`footer_accepted`]),
    // or not in the outbox yet (it is written at the end of the request
    // that composed it).
    Ok(first == key || status.as_deref() != Some("accepted"))
}

/// [`opens_thread`] for a number whose thread is open (`?1` its phone key):
/// the opener's key and outbox status.
pub(crate) const THREAD_OPENER_SQL: &str = "SELECT t.first_key,
        (SELECT o.status FROM outbox o WHERE o.idempotency_key = t.first_key)
     FROM sms_threads t WHERE t.phone_key = ?1";

/// The SMS `key`, to the number of phone key `phone`, was accepted by its
/// sender carrying the consent footer while the thread's opener was not
/// (waiting in a paused automation or for a retry, or failed): it opens
/// the thread now, and later texts go without the footer. So it does when
/// the thread was given up meanwhile (its opener failed).
pub fn footer_accepted(conn: &Connection, key: &str, phone: &str, now: Millis) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO sms_threads (phone_key, first_key, at) VALUES (?1, ?2, ?3)
         ON CONFLICT(phone_key) DO UPDATE SET first_key = excluded.first_key, at = excluded.at
          WHERE sms_threads.first_key <> excluded.first_key
            AND coalesce((SELECT o.status <> 'accepted' FROM outbox o
                           WHERE o.idempotency_key = sms_threads.first_key), 1)",
    )?
    .execute(params![phone, key, now])?;
    Ok(())
}

/// The SMS `key` never reached its number (suppressed before it left,
/// failed or bounced for good): if it opened the number's thread, the
/// thread is unopened again and the next message carries the footer.
pub fn unopen_thread(conn: &Connection, key: &str) -> Result<()> {
    conn.prepare_cached(UNOPEN_THREAD_SQL)?.execute([key])?;
    Ok(())
}

/// [`unopen_thread`]: a search of `sms_threads_first_key`.
pub(crate) const UNOPEN_THREAD_SQL: &str = "DELETE FROM sms_threads WHERE first_key = ?1";

fn store_links(ctx: &Ctx<'_>, message_id: i64, links: &[tracking::Link]) -> Result<()> {
    let mut stmt = ctx.conn.prepare_cached(
        "INSERT OR REPLACE INTO message_links (message_id, idx, url) VALUES (?1, ?2, ?3)",
    )?;
    for l in links {
        stmt.execute(params![message_id, l.index, l.url])?;
    }
    Ok(())
}

/// A parsed key ring and the signer of its newest key.
type ParsedRing = (Arc<KeyRing>, Arc<Signer>);

/// The tracking key ring of this database (created at open) and its signer.
///
/// Every message step needs them, so the parsed ring is kept per thread with
/// the stored text it came from, and with its newest key's HMAC state keyed
/// once: each call still reads the setting (one cached statement on the
/// primary key, inside the caller's transaction) but parses it again only
/// when the text changed.
fn parsed_ring(conn: &rusqlite::Connection) -> Result<Option<ParsedRing>> {
    thread_local! {
        static PARSED: RefCell<Option<(String, ParsedRing)>> = const { RefCell::new(None) };
    }
    let text: Option<String> = conn
        .prepare_cached("SELECT value FROM settings WHERE key = 'tracking_keys'")?
        .query_row([], |r| r.get(0))
        .optional()?;
    let Some(text) = text else {
        return Ok(None);
    };
    if let Some(parsed) = PARSED.with_borrow(|p| {
        p.as_ref()
            .filter(|(t, _)| *t == text)
            .map(|(_, parsed)| parsed.clone())
    }) {
        return Ok(Some(parsed));
    }
    let ring: KeyRing = serde_json::from_str(&text)
        .map_err(|_| Error::Internal("tracking keys unreadable".into()))?;
    let signer = Arc::new(ring.signer());
    let parsed = (Arc::new(ring), signer);
    PARSED.set(Some((text, parsed.clone())));
    Ok(Some(parsed))
}

/// The tracking key ring of this database (created at open), parsed once
/// per stored text and thread.
pub fn key_ring(conn: &rusqlite::Connection) -> Result<Option<Arc<KeyRing>>> {
    Ok(parsed_ring(conn)?.map(|(ring, _)| ring))
}

/// The signer of the tracking key ring's newest key, keyed once per stored
/// ring and thread.
fn signer(conn: &rusqlite::Connection) -> Result<Option<Arc<Signer>>> {
    Ok(parsed_ring(conn)?.map(|(_, signer)| signer))
}

/// Creates the key ring when missing.
pub fn ensure_key_ring(conn: &rusqlite::Connection, now: Millis) -> Result<()> {
    if key_ring(conn)?.is_none() {
        let ring = KeyRing::generate(now).map_err(Error::Internal)?;
        let v = serde_json::to_value(&ring).map_err(|e| Error::Internal(e.to_string()))?;
        crate::store::put_setting(conn, "tracking_keys", &v)?;
    }
    Ok(())
}

/// Composes an email for `to`; returns the payload's `rendered` part.
#[allow(clippy::too_many_arguments)]
pub fn email(
    ctx: &Ctx<'_>,
    key: &str,
    contact: &Contact,
    to: &str,
    content: &Content,
    category: Category,
    sender: Option<&SenderOverride>,
) -> Result<std::result::Result<Value, ComposeError>> {
    let s = &ctx.settings.doc;
    let marketing = category == Category::Marketing;
    let tracking = &s.tracking;
    let signer = signer(ctx.conn)?;
    let base = tracking.base_url.as_deref().filter(|_| signer.is_some());
    let message_id = number(ctx, key, &contact.id, "email")?;
    let sign = |kind: TokenKind, link: u16| {
        signer
            .as_ref()
            .map(|signer| signer.sign(kind, message_id, link, ctx.now))
            .unwrap_or_default()
    };
    let unsubscribe_url =
        base.map(|b| tracking::unsubscribe_url(b, &sign(TokenKind::Unsubscribe, 0)));
    if marketing && unsubscribe_url.is_none() {
        return Ok(Err(ComposeError::Compliance("no_unsubscribe_link")));
    }
    if marketing && s.email_footer.postal_address.trim().is_empty() {
        return Ok(Err(ComposeError::Compliance("no_postal_address")));
    }
    let values = minijinja::Value::from(variables(
        ctx,
        contact,
        unsubscribe_url.as_deref().unwrap_or(""),
    ));
    let subject = match render("subject", &content.subject, &values, false) {
        Ok(v) => v,
        Err(e) => return Ok(Err(e)),
    };
    let preheader = match render("preheader", &content.preheader, &values, false) {
        Ok(v) => v,
        Err(e) => return Ok(Err(e)),
    };
    let mut html = match render("html_body", &content.html_body, &values, true) {
        Ok(v) => v,
        Err(e) => return Ok(Err(e)),
    };
    let mut text = match &content.text_body {
        Some(t) => match render("text_body", t, &values, false) {
            Ok(v) => Some(v),
            Err(e) => return Ok(Err(e)),
        },
        None => None,
    };
    if let Some(b) = base.filter(|_| tracking.email_clicks) {
        // Only links the template wrote: a URL from a contact's field
        // (`href="{{website}}"`) is left as typed, never a signed redirect.
        // The template is read for its links only if the body has one.
        let written = std::cell::OnceCell::new();
        let admit = |url: &str| {
            written
                .get_or_init(|| tracking::TemplateLinks::of_html(&content.html_body))
                .admits(url)
        };
        let (wrapped, links) =
            tracking::wrap_html_links(&html, b, &admit, &|i| sign(TokenKind::Click, i));
        html = wrapped;
        // The text part's links are numbered on from the HTML part's (at
        // most 65,536 in all: past that they are left as written).
        if let Some(t) = &text
            && let Ok(offset) = u16::try_from(links.len())
        {
            let written = content
                .text_body
                .as_deref()
                .map(tracking::TemplateLinks::of)
                .unwrap_or_default();
            let (wt, tlinks) = tracking::wrap_text_links_from(
                t,
                b,
                &|url| written.admits(url),
                &|i| sign(TokenKind::Click, i),
                offset,
            );
            text = Some(wt);
            store_links(ctx, message_id, &tlinks)?;
        }
        store_links(ctx, message_id, &links)?;
    }
    if let Some(b) = base.filter(|_| tracking.email_opens) {
        html.push_str(&tracking::open_pixel_tag(b, &sign(TokenKind::Open, 0)));
    }
    let footer_text = match render("email_footer.text", &s.email_footer.text, &values, false) {
        Ok(v) => format!("{v}\n{}", s.email_footer.postal_address),
        Err(e) => return Ok(Err(e)),
    };
    // The link is ours (a signed https URL): render the footer escaped with a
    // marker in its place, then put a real anchor there.
    const MARKER: &str = "CRMUNSUBSCRIBELINKMARKER";
    let marked = minijinja::context! { unsubscribe_link => MARKER, ..values.clone() };
    let footer_html = match render("email_footer.text", &s.email_footer.text, &marked, true) {
        Ok(v) => {
            let link = unsubscribe_url
                .as_deref()
                .map(|u| format!("<a href=\"{0}\">{0}</a>", html_escape(u)))
                .unwrap_or_default();
            format!(
                "<p style=\"color:#666;font-size:12px\">{}<br>{}</p>",
                v.replace(MARKER, &link),
                html_escape(&s.email_footer.postal_address)
            )
        }
        Err(e) => return Ok(Err(e)),
    };
    let identity = sender_identity(s, sender);
    let parts = EmailParts {
        message_key: key,
        to,
        sender: &identity,
        subject: &subject,
        preheader: &preheader,
        html_body: &html,
        text_body: text.as_deref(),
        footer_html: &footer_html,
        footer_text: &footer_text,
        unsubscribe_url: unsubscribe_url.as_deref(),
        unsubscribe_mailto: None,
        marketing,
        date: std::time::UNIX_EPOCH + std::time::Duration::from_millis(ctx.now.max(0) as u64),
    };
    Ok(match email::assemble(&parts) {
        Ok(a) => Ok(rendered_email(&a, unsubscribe_url)?),
        // Only the recipient's address is the contact's; the rest (a
        // subject that renders empty for them, the sender) is the content's.
        Err(reason) if reason.starts_with("to:") => Err(ComposeError::Address(reason)),
        Err(reason) => Err(ComposeError::Render(reason)),
    })
}

/// An email message payload's `rendered` object: the [`email::Assembled`]
/// fields, serialized by the same derive that [`with_mime`] reads them back
/// with, and the unsubscribe URL.
fn rendered_email(a: &email::Assembled, unsubscribe_url: Option<String>) -> Result<Value> {
    let mut rendered = serde_json::to_value(a).map_err(|e| Error::Internal(e.to_string()))?;
    rendered["unsubscribe_url"] = unsubscribe_url.map_or(Value::Null, Value::String);
    Ok(rendered)
}

/// The payload an email message is handed over with: the stored payload
/// plus `rendered.rfc5322_base64`, the MIME written from the stored parts
/// ([`email::Assembled::rfc5322`]). The outbox keeps only the parts, so the
/// message is encoded on the dispatcher's thread rather than inside the
/// ingesting transaction; every attempt writes the same bytes. A payload
/// that already carries the MIME (a test send, a row queued by an earlier
/// version) is handed over as it is.
///
/// # Errors
///
/// A reason naming the field at fault (ids and field names only), for a
/// payload that is not an email message's.
pub fn with_mime(payload: &str) -> std::result::Result<String, String> {
    use serde::Deserialize as _;
    let mut v: Value = serde_json::from_str(payload).map_err(|_| "payload: not JSON".to_owned())?;
    if v["rendered"].get("rfc5322_base64").is_some() {
        return Ok(payload.to_owned());
    }
    // serde's message could quote a value: the reason names the object only.
    let raw = email::Assembled::deserialize(&v["rendered"])
        .map_err(|_| "rendered: not an assembled email".to_owned())?
        .rfc5322()?;
    let Some(rendered) = v.get_mut("rendered").and_then(Value::as_object_mut) else {
        return Err("rendered: not an assembled email".to_owned());
    };
    rendered.insert(
        "rfc5322_base64".to_owned(),
        Value::String(base64::engine::general_purpose::STANDARD.encode(raw)),
    );
    serde_json::to_string(&v).map_err(|e| e.to_string())
}

/// Composes an SMS for `to`; returns the payload's `rendered` part.
pub fn sms_message(
    ctx: &Ctx<'_>,
    key: &str,
    contact: &Contact,
    to: &str,
    content: &Content,
    sender_number: Option<&str>,
) -> Result<std::result::Result<Value, ComposeError>> {
    let s = &ctx.settings.doc;
    let to = match sms::normalize_e164(to, &s.sms.default_region) {
        Ok(n) => n,
        Err(m) => return Ok(Err(ComposeError::Address(format!("to: {m}")))),
    };
    let vars = minijinja::Value::from(variables(ctx, contact, ""));
    let mut text = match render("message", &content.message, &vars, false) {
        Ok(v) => v,
        Err(e) => return Ok(Err(e)),
    };
    // `{{firstname}}` alone, for a contact without one: nothing to say
    // (the consent footer alone is no message).
    if text.trim().is_empty() {
        return Ok(Err(ComposeError::Render(
            "message: empty for this contact".into(),
        )));
    }
    // First message of a thread (nothing sent to this number before): the consent footer.
    let first = opens_thread(ctx, key, &to)?;
    if first
        && !s.sms.consent_footer.trim().is_empty()
        && !text.contains(s.sms.consent_footer.trim())
    {
        text = format!("{} {}", text.trim_end(), s.sms.consent_footer.trim());
    }
    let signer = signer(ctx.conn)?;
    let message_id = number(ctx, key, &contact.id, "sms")?;
    if let Some(r) = signer.as_ref()
        && let Some((wrapped, links)) = wrap_sms_links(&s.tracking, content, &text, &|i| {
            r.sign(TokenKind::Click, message_id, i, ctx.now)
        })
    {
        text = wrapped;
        store_links(ctx, message_id, &links)?;
    }
    let measure = sms::measure(&text);
    ctx.conn
        .prepare_cached("UPDATE messages SET segments = ?2 WHERE id = ?1")?
        .execute(params![message_id, measure.segments as i64])?;
    let from = sender_number
        .map(str::to_string)
        .or_else(|| s.sms.sender_number.clone());
    Ok(Ok(json!({
        "to": to,
        "from": from,
        "text": text,
        "first_in_thread": first,
        "encoding": measure.encoding,
        "segments": measure.segments,
        "credits": measure.credits,
    })))
}

/// `text` (an SMS rendered from `content`) with the links its template
/// wrote wrapped into click-tracking links signed by `sign`, and those
/// links; `None` when SMS clicks are not tracked. The send and the
/// template preview's counter wrap alike through here.
pub(crate) fn wrap_sms_links(
    tracking: &crate::settings::TrackingSettings,
    content: &Content,
    text: &str,
    sign: &dyn Fn(u16) -> String,
) -> Option<(String, Vec<tracking::Link>)> {
    let base = tracking
        .base_url
        .as_deref()
        .filter(|_| tracking.sms_clicks)?;
    let written = tracking::TemplateLinks::of(&content.message);
    Some(tracking::wrap_text_links(
        text,
        base,
        &|url| written.admits(url),
        sign,
    ))
}

/// Escapes text for HTML content and quoted attribute values.
pub(crate) fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_mime_writes_the_stored_parts_out_and_leaves_composed_payloads_alone() {
        let sender = SenderIdentity {
            from_name: "Riverside".to_owned(),
            from_address: "news@riverside.example".to_owned(),
            reply_to: None,
        };
        let parts = EmailParts {
            message_key: "k1",
            to: "pat@example.org",
            sender: &sender,
            subject: "Hello",
            preheader: "",
            html_body: "<p>Hi</p>",
            text_body: None,
            footer_html: "",
            footer_text: "",
            unsubscribe_url: None,
            unsubscribe_mailto: None,
            marketing: false,
            date: std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_900_000_000),
        };
        let rendered = rendered_email(&email::assemble(&parts).unwrap(), None).unwrap();
        let payload =
            json!({"key": "k1", "channel": "email", "to": "pat@example.org", "rendered": rendered});
        let out: Value = serde_json::from_str(&with_mime(&payload.to_string()).unwrap()).unwrap();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(out["rendered"]["rfc5322_base64"].as_str().unwrap())
            .unwrap();
        assert_eq!(raw, email::compose(&parts).unwrap().rfc5322);
        assert_eq!(out["rendered"]["html"], payload["rendered"]["html"]);

        // Already composed (a test send, an older row): handed over unchanged.
        let composed = out.to_string();
        assert_eq!(with_mime(&composed).unwrap(), composed);

        // Not an email's parts: a reason naming the object, no values.
        let mut broken = payload.clone();
        broken["rendered"]["date_ms"] = json!("pat@example.org");
        assert_eq!(
            with_mime(&broken.to_string()).unwrap_err(),
            "rendered: not an assembled email"
        );
        assert_eq!(with_mime("{").unwrap_err(), "payload: not JSON");
    }
}
