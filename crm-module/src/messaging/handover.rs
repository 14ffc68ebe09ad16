//! The last check before a queued message leaves: consent and sending hours
//! decided again at the moment of hand-over.
//!
//! A message is checked when its step queues it, but it may wait in the
//! outbox before it leaves: behind a sending limit, for a retry after the
//! host said "later" or a soft bounce, for the host to come back. Meanwhile
//! the person may say STOP, click unsubscribe, or the address may
//! hard-bounce; and an SMS held until after 21:00 must not go out at
//! 21:50. So every message the dispatcher is about to hand over is decided
//! again ([`consent::at_hand_over`]): one that may no longer go is marked
//! failed in the outbox and logged `message_suppressed` (detail
//! `{"reason", "at": "hand_over"}`), and an SMS outside the recipient's
//! sending hours waits for them to open, without using an attempt. A STOP
//! confirmation or a HELP answer, and a "Test to" sample, go as they are.

use rusqlite::{Connection, params};
use serde_json::json;

use super::consent::{self, HandOver};
use crate::clock::Millis;
use crate::core::contacts;
use crate::core::log::Entry as Log;
use crate::error::Result;
use crate::outbox::{self, DueEffect, EffectKind};
use crate::settings::Resolved;

/// True for the key of a compliance message (a reply to a STOP or HELP
/// keyword: `<install>-kw-<event id>`), which goes at any hour.
pub fn is_compliance(install_id: &str, key: &str) -> bool {
    key.strip_prefix(install_id)
        .is_some_and(|rest| rest.starts_with("-kw-"))
}

/// Keeps the rows that may be handed over now; records the others (in one
/// transaction, when there are any). Not called inside a transaction.
pub fn screen(
    conn: &Connection,
    settings: &Resolved,
    install_id: &str,
    rows: Vec<DueEffect>,
    now: Millis,
) -> Result<Vec<DueEffect>> {
    let mut go = Vec::with_capacity(rows.len());
    let mut held: Vec<(i64, HandOver)> = Vec::new();
    for row in rows {
        let decision = match (&row.kind, row.channel.as_deref()) {
            (EffectKind::Message, Some(channel))
                if !outbox::is_test_send(install_id, &row.key)
                    && !is_compliance(install_id, &row.key) =>
            {
                match row
                    .contact_id
                    .as_deref()
                    .map(|id| contacts::load(conn, id))
                    .transpose()?
                {
                    Some(Some(c)) => consent::at_hand_over(&c, channel, settings, now),
                    _ => HandOver::Go,
                }
            }
            _ => HandOver::Go,
        };
        match decision {
            HandOver::Go => go.push(row),
            other => held.push((row.id, other)),
        }
    }
    if !held.is_empty() {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        match record(conn, &held, now) {
            Ok(()) => conn.execute_batch("COMMIT")?,
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(e);
            }
        }
    }
    Ok(go)
}

fn record(conn: &Connection, held: &[(i64, HandOver)], now: Millis) -> Result<()> {
    for (id, decision) in held {
        match decision {
            HandOver::WaitUntil(at) => {
                conn.prepare_cached(
                    "UPDATE outbox SET next_attempt_at = ?2, updated_at = ?3 WHERE id = ?1",
                )?
                .execute(params![id, at, now])?;
            }
            HandOver::Suppress(why) => {
                let Some(row) = outbox::by_id(conn, *id)? else {
                    continue;
                };
                conn.prepare_cached(
                    "UPDATE outbox SET status = 'failed', updated_at = ?2, last_error = ?3 WHERE id = ?1",
                )?
                .execute(params![id, now, format!("suppressed: {}", why.as_str())])?;
                let detail = json!({"reason": why.as_str(), "at": "hand_over"});
                Log::for_effect("message_suppressed", &row, Some(detail)).write(conn, now)?;
            }
            HandOver::Go => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::clock::{HOUR, MINUTE, parse_rfc3339};
    use crate::core::sim::Sim;

    /// The messages waiting in the outbox, as the dispatcher reads them.
    fn waiting(s: &Sim) -> Vec<DueEffect> {
        s.conn
            .prepare("SELECT id, idempotency_key, payload, channel, contact_id FROM outbox WHERE status = 'pending' ORDER BY id")
            .unwrap()
            .query_map([], |r| {
                Ok(DueEffect {
                    id: r.get(0)?,
                    key: r.get(1)?,
                    kind: EffectKind::Message,
                    payload: r.get(2)?,
                    channel: r.get(3)?,
                    contact_id: r.get(4)?,
                })
            })
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    fn keys(rows: &[DueEffect]) -> Vec<&str> {
        rows.iter().map(|r| r.key.as_str()).collect()
    }

    #[test]
    fn a_message_queued_before_an_opt_out_never_leaves() {
        let mut s = Sim::new();
        s.automation(json!({"name": "Hello", "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
            "steps": [{"type": "send_email", "subject": "Hi", "body": "b"}, {"type": "send_sms", "message": "Hi"}]}));
        s.contact("stays", json!({}));
        s.contact("leaves", json!({}));
        let before = waiting(&s);
        assert_eq!(before.len(), 4);
        // Both channels closed after queueing, before the hand-over.
        s.push(json!({"type": "sms.received", "contact_id": "leaves", "body": "STOP"}))
            .unwrap();
        s.push(json!({"type": "contact.opted_out", "contact_id": "leaves", "channel": "email"}))
            .unwrap();
        let rows = waiting(&s);
        let confirmation = rows
            .iter()
            .find(|r| is_compliance("t", &r.key))
            .expect("the STOP confirmation")
            .key
            .clone();
        let go = screen(&s.conn, &s.settings, "t", rows, s.now).unwrap();
        let stays: Vec<String> = s
            .messages_to("stays")
            .iter()
            .map(|m| m.key.clone())
            .collect();
        let mut expected: Vec<&str> = stays.iter().map(String::as_str).collect();
        expected.push(&confirmation);
        assert_eq!(
            keys(&go),
            expected,
            "the confirmation goes; the rest of 'leaves' does not"
        );
        let suppressed: Vec<(String, String)> = s
            .conn
            .prepare(
                "SELECT json_extract(detail, '$.reason'), json_extract(detail, '$.at') FROM events
                      WHERE kind = 'message_suppressed' AND contact_id = 'leaves'",
            )
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(suppressed.len(), 2);
        assert!(
            suppressed
                .iter()
                .all(|(r, at)| r == "unsubscribed" && at == "hand_over")
        );
        let failed: i64 = s
            .conn
            .query_row(
                "SELECT COUNT(*) FROM outbox WHERE contact_id = 'leaves' AND status = 'failed'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(failed, 2);
    }

    #[test]
    fn an_sms_held_past_the_sending_hours_waits_for_the_morning() {
        let mut s = Sim::new();
        s.automation(json!({"name": "Text", "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
            "steps": [{"type": "send_sms", "message": "Hi"}]}));
        // 20:55 in New York: inside the sending hours (08:00-21:00), queued.
        s.now = parse_rfc3339("2026-01-06T01:55:00Z").unwrap();
        s.contact("c1", json!({}));
        let rows = waiting(&s);
        assert_eq!(rows.len(), 1);
        // Held (a sending limit, the host away) until 21:50.
        let late = s.now + 55 * MINUTE;
        assert!(
            screen(&s.conn, &s.settings, "t", rows, late)
                .unwrap()
                .is_empty()
        );
        let (status, next): (String, i64) = s
            .conn
            .query_row("SELECT status, next_attempt_at FROM outbox", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(status, "pending", "waits, no attempt used");
        assert_eq!(
            next,
            parse_rfc3339("2026-01-06T13:00:00Z").unwrap(),
            "08:00 the next morning"
        );
        let morning = screen(&s.conn, &s.settings, "t", waiting(&s), next + HOUR).unwrap();
        assert_eq!(morning.len(), 1);
    }
}
