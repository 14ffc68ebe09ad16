//! Tracking hits from the host's web tier: an open pixel, a wrapped link, an
//! unsubscribe link. The host passes the request; the module answers what to
//! send back (the pixel, a redirect to a link that was in the message, the
//! unsubscribe confirmation) and records the engagement.
//!
//! - Tokens are verified with the key ring; a bad or foreign token gets 404.
//! - A click only ever redirects to a target stored for that message: no open
//!   redirect.
//! - A GET on an unsubscribe link never unsubscribes (mail scanners fetch
//!   every link); it answers the confirmation page. The one-click POST
//!   (RFC 8058) or the page's confirm button unsubscribes.
//! - Opens and clicks from privacy proxies and link scanners are logged with
//!   `detail.machine` and are not engagement: they fire no trigger, reach no
//!   goal and do not move Last Activity.

use rusqlite::{OptionalExtension, params};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::contacts::{self, AuditSource};
use super::{Ctx, ingest, triggers};
use crate::error::{Error, Result};
use crate::messaging::compose::{html_escape, key_ring};
use crate::messaging::tracking::{self, HitResponse, OpenClass, OpenContext, TokenKind};
use crate::outbox;

/// A request the host's web tier received on a tracking URL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Hit {
    /// `GET`, `HEAD` or `POST`.
    pub method: String,
    /// The path after the tracking base URL: `/o/<token>`, `/c/<token>` or `/u/<token>`.
    pub path: String,
    /// The request's User-Agent, for flagging machine opens and scanner clicks.
    #[serde(default)]
    pub user_agent: Option<String>,
    /// The host's classification of the source address, if it has one
    /// (e.g. `apple_mpp`, `google_proxy`, `scanner`).
    #[serde(default)]
    pub ip_class: Option<String>,
}

fn class_name(c: OpenClass) -> Option<&'static str> {
    match c {
        OpenClass::Human => None,
        OpenClass::MachineProxy => Some("proxy"),
        OpenClass::Scanner => Some("scanner"),
    }
}

fn message_key(ctx: &Ctx<'_>, message_id: i64) -> Result<Option<(String, String)>> {
    Ok(ctx
        .conn
        .prepare_cached("SELECT key, contact_id FROM messages WHERE id = ?1")?
        .query_row([message_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?)
}

/// When message `?1` last reached its recipient's side: its sender took it
/// (the hand-over the sender accepted) or, for an email, a receipt said it
/// was delivered (not one a person's own engagement implied; a text's
/// receipt may come from its carrier well after the phone showed it). The events are read through
/// the partial index `events_message_history`, whose condition is repeated.
const DELIVERED_AT_SQL: &str = "SELECT MAX(t) FROM (
     SELECT handed_over_at AS t FROM outbox WHERE idempotency_key = ?1 AND status = 'accepted'
     UNION ALL
     SELECT MAX(at) FROM events WHERE message_key = ?1 AND kind = 'message_delivered'
        AND channel = 'email' AND json_extract(detail, '$.implied_by') IS NULL
        AND message_key IS NOT NULL AND (kind = 'message_delivered' OR kind = 'message_bounced'
          OR kind = 'message_opened' OR kind = 'message_clicked' OR kind = 'message_replied'))";

/// Seconds from when message `key` reached its recipient's side to now;
/// `None` when it is not known to have.
fn seconds_since_delivery(ctx: &Ctx<'_>, key: &str) -> Result<Option<i64>> {
    let at: Option<i64> = ctx
        .conn
        .prepare_cached(DELIVERED_AT_SQL)?
        .query_row([key], |r| r.get(0))?;
    Ok(at.map(|at| (ctx.now - at).max(0) / 1000))
}

/// Answers one hit and records what it means.
pub fn handle(ctx: &mut Ctx<'_>, hit: &Hit) -> Result<HitResponse> {
    let method = hit.method.to_ascii_uppercase();
    if !matches!(method.as_str(), "GET" | "HEAD" | "POST") {
        return Err(Error::invalid("method: GET, HEAD or POST"));
    }
    if hit.path.len() > 512 || hit.user_agent.as_ref().is_some_and(|u| u.len() > 1024) {
        return Err(Error::TooLarge(
            "path (512) or user_agent (1024 bytes) too long".into(),
        ));
    }
    let Some(ring) = key_ring(ctx.conn)? else {
        return Ok(HitResponse::not_found());
    };
    let (kind, token) = match hit.path.trim_start_matches('/').split_once('/') {
        Some(("o", t)) => ("o", t),
        Some(("c", t)) => ("c", t),
        Some(("u", t)) => ("u", t),
        _ => return Ok(HitResponse::not_found()),
    };
    // A person's open or click is a GET (a form's POST for a click);
    // a HEAD comes from prefetchers and link scanners, whatever agent
    // they claim.
    let mut context = OpenContext {
        user_agent: hit.user_agent.clone(),
        seconds_since_delivery: None,
        ip_class: hit.ip_class.clone(),
    };
    let machine = |class: OpenClass| {
        if method == "HEAD" {
            Some("scanner")
        } else {
            class_name(class)
        }
    };
    match kind {
        "o" => {
            let (response, claims) = tracking::answer_open(&ring, token, ctx.now);
            if let Some(claims) = claims
                && let Some((key, _)) = message_key(ctx, claims.message_id)?
            {
                context.seconds_since_delivery = seconds_since_delivery(ctx, &key)?;
                let machine = machine(tracking::classify_open(&context));
                ingest::engagement_from(ctx, &key, "message_opened", machine)?;
            }
            Ok(response)
        }
        "c" => {
            let conn = ctx.conn;
            let resolve = |message_id: i64, link: u16| -> Option<String> {
                conn.prepare_cached(
                    "SELECT url FROM message_links WHERE message_id = ?1 AND idx = ?2",
                )
                .ok()?
                .query_row(params![message_id, link], |r| r.get(0))
                .ok()
            };
            let (response, claims) = tracking::answer_click(&ring, token, ctx.now, &resolve);
            if let Some(claims) = claims
                && let Some((key, _)) = message_key(ctx, claims.message_id)?
            {
                context.seconds_since_delivery = seconds_since_delivery(ctx, &key)?;
                let machine = machine(tracking::classify_click(&context));
                ingest::engagement_from(ctx, &key, "message_clicked", machine)?;
            }
            Ok(response)
        }
        _ => {
            let Ok(claims) = ring.authenticate(token) else {
                return Ok(HitResponse::not_found());
            };
            if claims.kind != TokenKind::Unsubscribe {
                return Ok(HitResponse::not_found());
            }
            let Some((key, contact_id)) = message_key(ctx, claims.message_id)? else {
                return Ok(HitResponse::not_found());
            };
            let practice = html_escape(&ctx.settings.doc.practice_name);
            if method != "POST" {
                // A link scanner's GET must not unsubscribe anyone: the page
                // asks, and its button posts back to this address (as mail
                // clients' one-click unsubscribe does, RFC 8058).
                return Ok(page(
                    &format!("Unsubscribe from {practice} emails?"),
                    &format!(
                        "<p>Unsubscribe from {practice} emails?</p>\n\
                         <form method=\"post\"><button type=\"submit\">Unsubscribe</button></form>"
                    ),
                ));
            }
            // The address the message went to unsubscribes: every contact
            // who has it (a family address is shared), the message's own
            // contact first, even if their address has changed since.
            let own = contacts::require(ctx.conn, &contact_id)?;
            if let Some(row) = outbox::by_key(ctx.conn, &key)? {
                ingest::delivery_implied(ctx, &row, "opt_out")?;
            }
            let address = match outbox::recipient(ctx.conn, &key)? {
                Some(to) => Some(to),
                None => own.text("email").map(str::to_string),
            };
            let family = match address {
                Some(email) => contacts::all_by_email(ctx.conn, &email)?,
                None => Vec::new(),
            };
            let mut everyone = vec![own];
            for id in family.iter().filter(|i| **i != contact_id) {
                everyone.push(contacts::require(ctx.conn, id)?);
            }
            for mut c in everyone {
                let src = AuditSource {
                    actor: "contact",
                    reason: "unsubscribe_link",
                    message_key: Some(&key),
                };
                if let Some(change) =
                    contacts::set_subscription(ctx, &mut c, "email", "unsubscribed", src)?
                {
                    contacts::save(ctx.conn, &c)?;
                    let mut signals = vec![change];
                    contacts::add_opt_out_signals(&c, &mut signals);
                    triggers::fire(ctx, &c.id, &signals)?;
                }
            }
            let done = format!("You are unsubscribed from {practice} emails.");
            Ok(page(&done, &format!("<p>{done}</p>")))
        }
    }
}

/// An HTML page (the unsubscribe question and its answer) titled `title`
/// with `body` (already escaped) in it.
fn page(title: &str, body: &str) -> HitResponse {
    HitResponse {
        status: 200,
        content_type: Some("text/html; charset=utf-8".into()),
        location: None,
        body_base64: None,
        body_text: Some(format!(
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
             <title>{title}</title>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
        )),
        cache_control: tracking::NO_STORE.to_string(),
    }
}
