//! The last check before a queued message leaves: consent and sending hours
//! decided again at the moment of hand-over.
//!
//! A message is checked when its step queues it, but it may wait in the
//! outbox before it leaves: behind a sending limit, for a retry after the
//! host said "later" or a soft bounce, for the host to come back. Meanwhile
//! the person may say STOP, click unsubscribe, or the address may
//! hard-bounce; and an SMS held until after 21:00 must not go out at
//! 21:50. So every message the dispatcher is about to hand over is decided
//! again. One whose contact has left the automation that queued it is
//! withdrawn (`message_withdrawn`, marked failed, no fallback). Consent is
//! decided again ([`consent::at_hand_over`]): one that may no longer go is marked
//! failed in the outbox and logged `message_suppressed` (detail
//! `{"reason", "at": "hand_over"}`), and a step's own message sends the
//! step's channel fallback as it would have at queue time; an SMS outside the recipient's
//! sending hours waits for them to open, without using an attempt. A STOP
//! confirmation or a HELP answer, and a "Test to" sample, go as they are.

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::json;

use super::consent::{self, HandOver};
use crate::catalog::Catalog;
use crate::clock::Millis;
use crate::core::log::Entry as Log;
use crate::core::{Ctx, contacts, ingest};
use crate::error::Result;
use crate::outbox::{self, DueEffect, EffectKind};
use crate::settings::Resolved;

/// What changed since a row was screened, for the dispatcher's last look.
///
/// [`screen`] decides a row on the worker's thread; the row then waits in
/// the dispatcher's queue (up to the worker's in-flight limit) behind the
/// deliveries before it. A STOP, an unsubscribe, a hard bounce or an exit
/// committed meanwhile must still hold it back. The worker marks each
/// contact such a change concerns (and everyone, for a change of an
/// automation's state or of the sending hours); each row carries the
/// epoch it was screened at ([`DueEffect::screened`]); the dispatcher
/// answers [`crate::outbox::HostAnswer::NotHandled`] for a row whose
/// contact was marked after that, so it is screened again, its attempts
/// untouched. Marking over-approximates: a mark from a request that was
/// rolled back only costs a second screening.
///
/// It also tells them when the module closes: from then on nothing more is
/// started, and every row they still hold is answered unasked, so that the
/// worker can record the answers of the calls under way before it goes.
#[derive(Debug, Default)]
pub struct Rescreen {
    epoch: std::sync::atomic::AtomicU64,
    marks: parking_lot::Mutex<Marks>,
    closing: std::sync::atomic::AtomicBool,
    /// Rows a taker holds outside its queue (from taking it to sending its
    /// answer), see [`Rescreen::take`].
    under_way: std::sync::atomic::AtomicUsize,
}

/// A row a taker (the dispatcher, the relay, a plugin thread) holds: from
/// when it takes the row off its queue until its answer is sent to the
/// worker. Dropping it ends that.
#[derive(Debug)]
pub struct UnderWay<'a>(&'a Rescreen);

impl Drop for UnderWay<'_> {
    fn drop(&mut self) {
        self.0
            .under_way
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[derive(Debug, Default)]
struct Marks {
    /// Contact → the epoch of its latest mark.
    contacts: std::collections::HashMap<String, u64>,
    /// The epoch of the latest mark of every contact.
    everyone: u64,
}

impl Rescreen {
    /// The epoch a row screened now carries.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn next(&self) -> u64 {
        self.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1
    }

    /// Rows of `contact_id` screened before now are screened again.
    pub fn mark(&self, contact_id: &str) {
        let at = self.next();
        let mut marks = self.marks.lock();
        match marks.contacts.get_mut(contact_id) {
            Some(e) => *e = at,
            None => {
                marks.contacts.insert(contact_id.to_owned(), at);
            }
        }
    }

    /// Every row screened before now is screened again.
    pub fn mark_everyone(&self) {
        let at = self.next();
        self.marks.lock().everyone = at;
    }

    /// The module is closing: no row is handed to anyone any more.
    pub fn close(&self) {
        self.closing
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// A taker took a row off its queue: held until the guard drops, after
    /// its answer was sent. Taken before [`Rescreen::holds_back`] is asked,
    /// so that once [`Rescreen::close`] was called and nothing is under
    /// way, no row can still be sent: the rows left in the queues are
    /// answered unasked.
    pub fn take(&self) -> UnderWay<'_> {
        self.under_way
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        UnderWay(self)
    }

    /// Whether no taker holds a row (every answer owed was sent).
    pub fn nothing_under_way(&self) -> bool {
        self.under_way.load(std::sync::atomic::Ordering::SeqCst) == 0
    }

    /// Why `row` must not be handed to its taker now: the module is
    /// closing, or its contact changed after it was screened
    /// ([`Rescreen::is_stale`]). `None` when it may go.
    pub fn holds_back(&self, row: &DueEffect) -> Option<&'static str> {
        if self.closing.load(std::sync::atomic::Ordering::SeqCst) {
            Some("the module is closing")
        } else if self.is_stale(row) {
            Some("the contact's consent or enrollment changed after it was screened")
        } else {
            None
        }
    }

    /// Whether `row` was screened before a mark of its contact (or of
    /// everyone): a message, task or custom step, which [`screen`] decides.
    pub fn is_stale(&self, row: &DueEffect) -> bool {
        if row.kind == EffectKind::Property {
            return false;
        }
        let marks = self.marks.lock();
        marks.everyone > row.screened
            || row
                .contact_id
                .as_deref()
                .and_then(|c| marks.contacts.get(c))
                .is_some_and(|at| *at > row.screened)
    }

    /// Drops the marks of every contact not in `in_flight` (the contacts
    /// of the rows handed over and not yet answered): a row handed over
    /// later carries a later epoch, so only those rows can be older than a
    /// mark. Bounds the marks by the rows in flight. Reads `in_flight` only
    /// when there are marks.
    pub fn keep_only<'a>(&self, in_flight: impl IntoIterator<Item = &'a str>) {
        let mut marks = self.marks.lock();
        if !marks.contacts.is_empty() {
            let keep: std::collections::HashSet<&str> = in_flight.into_iter().collect();
            marks.contacts.retain(|c, _| keep.contains(c.as_str()));
        }
    }
}

/// True for the key of a compliance message (a reply to a STOP or HELP
/// keyword: `<install>-kw-<event id>`), which goes at any hour.
pub fn is_compliance(install_id: &str, key: &str) -> bool {
    key.strip_prefix(install_id)
        .is_some_and(|rest| rest.starts_with("-kw-"))
}

/// Keeps the rows that may be handed over now; records the others (in one
/// transaction, when there are any). A step's own message suppressed here
/// sends the step's channel fallback, as it would have had the message been
/// suppressed when the step queued it (queued in the same transaction; it
/// is screened in its turn). Not called inside a transaction.
pub fn screen(
    conn: &Connection,
    catalog: &Catalog,
    settings: &Resolved,
    install_id: &str,
    rows: Vec<DueEffect>,
    now: Millis,
) -> Result<Vec<DueEffect>> {
    let mut go = Vec::with_capacity(rows.len());
    let mut held: Vec<(i64, Held)> = Vec::new();
    for row in rows {
        // A step's message, its task ("call to book" after the booking) or
        // its plugin call (an action in another system) goes only while its
        // contact is in the automation and it runs; a message also needs
        // the contact's consent still. A property write-back goes (the
        // module's record already holds the change) unless a newer one of
        // the same property follows it (each carries the whole value, so
        // an older one retried after a newer one was accepted would put
        // the host's record back) or the host has changed the property
        // since (`still_holds`).
        if row.kind == EffectKind::Property {
            let mut row = row;
            match superseded_by(conn, row.id)? {
                Some(newer) => held.push((row.id, Held::Superseded(newer))),
                None => match still_holds(conn, &row.payload)? {
                    Some(payload) => {
                        row.payload = payload;
                        go.push(row);
                    }
                    None => held.push((row.id, Held::Outdated)),
                },
            }
            continue;
        }
        let channel = match (&row.kind, row.channel.as_deref()) {
            (EffectKind::Task | EffectKind::PluginStep, _) => None,
            (EffectKind::Message, Some(channel))
                if !outbox::is_test_send(install_id, &row.key)
                    && !is_compliance(install_id, &row.key) =>
            {
                Some(channel)
            }
            _ => {
                go.push(row);
                continue;
            }
        };
        let decision = match enrollment_standing(conn, catalog, row.id)? {
            Some(Standing::Left(reason)) => Held::Withdrawn(reason),
            Some(Standing::Paused) => Held::Paused,
            None => match (channel, row.contact_id.as_deref()) {
                (Some(channel), Some(id)) => match contacts::load(conn, id)? {
                    Some(c) => Held::Consent(consent::at_hand_over(&c, channel, settings, now)),
                    None => Held::Consent(HandOver::Go),
                },
                _ => Held::Consent(HandOver::Go),
            },
        };
        match decision {
            Held::Consent(HandOver::Go) => go.push(row),
            other => held.push((row.id, other)),
        }
    }
    if !held.is_empty() {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let mut ctx = Ctx::new(conn, now, catalog, settings, install_id);
        match record(&mut ctx, &held) {
            Ok(()) => conn.execute_batch("COMMIT")?,
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(e);
            }
        }
    }
    Ok(go)
}

/// Why a row is not handed over now.
enum Held {
    /// Consent or the recipient's sending hours (see [`consent::at_hand_over`]).
    Consent(HandOver),
    /// The contact left the automation that queued it, for this reason.
    Withdrawn(String),
    /// The automation that queued it is paused: it waits with its contacts.
    Paused,
    /// A property write-back that a newer one (this key) of the same
    /// property of the same contact replaces.
    Superseded(String),
    /// A property write-back the contact's record no longer holds: the
    /// host changed the property since (see [`still_holds`]).
    Outdated,
}

/// The payload to hand over for a property write-back, or `None` when the
/// host has changed the property since: the record holds neither the
/// value written back nor the one it replaced (`previous`; the host
/// sending its old value again, unaware of the write, is no change of
/// its own). Written back then, it would put the host's own newer value
/// back. A tag change always goes (the host's update did not know of it),
/// its `value` the record's tags with the change applied: a tag the host
/// added meanwhile stays.
fn still_holds(conn: &Connection, payload: &str) -> Result<Option<String>> {
    use serde_json::Value;
    let Ok(mut p) = serde_json::from_str::<Value>(payload) else {
        return Ok(Some(payload.to_string()));
    };
    let (Some(contact_id), Some(property)) = (p["contact_id"].as_str(), p["property"].as_str())
    else {
        return Ok(Some(payload.to_string()));
    };
    let Some(contact) = contacts::load(conn, contact_id)? else {
        return Ok(Some(payload.to_string()));
    };
    let now = contact.props.get(property);
    if property == "tags"
        && let Some(change) = p.get("change")
    {
        p["value"] = json!(contacts::change_tags(now, change));
        return Ok(Some(p.to_string()));
    }
    let holds = |v: Option<&Value>| contacts::same_value(property, now, v);
    if holds(p.get("value")) || p.get("previous").is_some_and(|was| holds(Some(was))) {
        Ok(Some(payload.to_string()))
    } else {
        Ok(None)
    }
}

/// The key of the newest write-back of the same contact and property
/// queued after write-back `id`, if any (the contact's outbox rows, by
/// `outbox_contact`).
fn superseded_by(conn: &Connection, id: i64) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached(
            "SELECT n.idempotency_key FROM outbox o JOIN outbox n
                ON n.contact_id = o.contact_id AND n.channel IS NULL AND n.kind = 'property' AND n.id > o.id
             WHERE o.id = ?1
               AND json_extract(n.payload, '$.property') = json_extract(o.payload, '$.property')
             ORDER BY n.id DESC LIMIT 1",
        )?
        .query_row([id], |r| r.get(0))
        .optional()?)
}

/// Where the enrollment that queued an outbox row stands, when it is not
/// simply running.
enum Standing {
    /// The contact has left the automation (goal met, a reply, an opt-out,
    /// the automation deleted), for this reason, or the automation was
    /// deleted after they finished it: nothing it queued goes out after.
    Left(String),
    /// The automation is paused: its queued messages hold, as its contacts
    /// do, until it is turned on again.
    Paused,
}

/// The reason a row held for a paused automation carries (`last_error`);
/// turning the automation on releases the rows that carry it.
pub const HELD_WHILE_PAUSED: &str = "held: the automation is paused";

/// The reason an SMS held for the recipient's sending hours carries
/// (`last_error`): a change of the practice's time zone or sending hours
/// releases the rows that carry it, to be screened again.
pub const HELD_FOR_SENDING_HOURS: &str = "held: outside the recipient's SMS sending hours";

/// Releases the SMS held for the recipients' sending hours (the hours or
/// the practice's time zone changed): they are screened again at once.
pub fn release_sending_hours(conn: &Connection, now: Millis) -> Result<()> {
    conn.prepare_cached(
        "UPDATE outbox SET next_attempt_at = ?1, last_error = NULL, updated_at = ?1
          WHERE status IN ('pending','retry') AND kind = 'message' AND last_error = ?2
            AND next_attempt_at > ?1",
    )?
    .execute(params![now, HELD_FOR_SENDING_HOURS])?;
    Ok(())
}

/// A held row is looked at again after this long, in case the automation
/// was turned on by a path that did not release it.
const PAUSED_RECHECK: Millis = crate::clock::DAY;

fn enrollment_standing(conn: &Connection, catalog: &Catalog, id: i64) -> Result<Option<Standing>> {
    type Facts = (String, Option<String>, String, bool, String, bool);
    let row: Option<Facts> = conn
        .prepare_cached(
            "SELECT e.state, e.exit_reason, a.status, a.deleted_at IS NOT NULL,
                    e.automation_id, e.goal_reached_at IS NOT NULL FROM outbox o
               JOIN enrollments e ON e.id = o.enrollment_id
               JOIN automations a ON a.id = e.automation_id
              WHERE o.id = ?1",
        )?
        .query_row([id], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })
        .optional()?;
    // With *Goal met* on, a goal reached ends what the enrollment still
    // sends, also after the contact reached the End: the last "book now"
    // held by a sending limit does not go to someone who just booked.
    let goal_met = |automation: &str| {
        catalog
            .get(automation)
            .is_some_and(|a| a.current.def.leaves_on_goal())
    };
    Ok(match row {
        Some((state, reason, ..)) if state == "exited" => {
            Some(Standing::Left(reason.unwrap_or_else(|| "exited".into())))
        }
        // Deleted after the contact finished it: what it queued goes no more.
        Some((_, _, _, true, ..)) => Some(Standing::Left("automation_deleted".into())),
        Some((.., automation, true)) if goal_met(&automation) => {
            Some(Standing::Left("goal_met".into()))
        }
        Some((_, _, status, ..)) if status != "active" => Some(Standing::Paused),
        _ => None,
    })
}

/// Releases the messages held while automation `automation_id` was paused
/// (it was just turned on): they are screened again at once.
pub fn release_paused(conn: &Connection, automation_id: &str, now: Millis) -> Result<()> {
    conn.prepare_cached(
        "UPDATE outbox SET next_attempt_at = ?2, last_error = NULL, updated_at = ?2
          WHERE status IN ('pending','retry')
            AND (kind = 'message' OR kind = 'task' OR kind = 'plugin_step')
            AND automation_id = ?1 AND last_error = ?3",
    )?
    .execute(params![automation_id, now, HELD_WHILE_PAUSED])?;
    Ok(())
}

fn record(ctx: &mut Ctx<'_>, held: &[(i64, Held)]) -> Result<()> {
    let (conn, now) = (ctx.conn, ctx.now);
    let fail = |id: i64, error: String| -> Result<Option<outbox::Row>> {
        let Some(row) = outbox::by_id(conn, id)? else {
            return Ok(None);
        };
        conn.prepare_cached(
            "UPDATE outbox SET status = 'failed', updated_at = ?2, last_error = ?3 WHERE id = ?1",
        )?
        .execute(params![id, now, error])?;
        Ok(Some(row))
    };
    for (id, decision) in held {
        match decision {
            Held::Consent(HandOver::WaitUntil(at)) => {
                conn.prepare_cached(
                    "UPDATE outbox SET next_attempt_at = ?2, updated_at = ?3, last_error = ?4 WHERE id = ?1",
                )?
                .execute(params![id, at, now, HELD_FOR_SENDING_HOURS])?;
            }
            Held::Consent(HandOver::Suppress(why)) => {
                let Some(row) = fail(*id, format!("suppressed: {}", why.as_str()))? else {
                    continue;
                };
                let detail = json!({"reason": why.as_str(), "at": "hand_over"});
                Log::for_effect("message_suppressed", &row, Some(detail)).write(conn, now)?;
                ingest::never_reached(ctx, &row)?;
            }
            Held::Superseded(newer) => {
                if let Some(row) = fail(
                    *id,
                    format!("superseded: write-back {newer} of the same property follows"),
                )? {
                    let detail = json!({"reason": "superseded", "by": newer});
                    Log::for_effect("write_back_dropped", &row, Some(detail)).write(conn, now)?;
                }
            }
            Held::Outdated => {
                if let Some(row) = fail(
                    *id,
                    "outdated: the contact's record has changed since (the host's newer update)"
                        .into(),
                )? {
                    let detail = json!({"reason": "changed_since"});
                    Log::for_effect("write_back_dropped", &row, Some(detail)).write(conn, now)?;
                }
            }
            Held::Paused => {
                conn.prepare_cached(
                    "UPDATE outbox SET next_attempt_at = ?2, updated_at = ?3, last_error = ?4 WHERE id = ?1",
                )?
                .execute(params![id, now + PAUSED_RECHECK, now, HELD_WHILE_PAUSED])?;
            }
            Held::Withdrawn(reason) => {
                let Some(row) = fail(
                    *id,
                    format!("withdrawn: the contact left the automation ({reason})"),
                )?
                else {
                    continue;
                };
                let detail =
                    json!({"reason": "left_automation", "exit_reason": reason, "at": "hand_over"});
                match row.kind {
                    EffectKind::Task => {
                        Log::for_effect("task_withdrawn", &row, Some(detail)).write(conn, now)?;
                        continue;
                    }
                    EffectKind::PluginStep => {
                        Log::for_effect("plugin_step_withdrawn", &row, Some(detail))
                            .write(conn, now)?;
                        continue;
                    }
                    EffectKind::Message | EffectKind::Property => {}
                }
                Log::for_effect("message_withdrawn", &row, Some(detail)).write(conn, now)?;
                // Its SMS thread stays unopened. No fallback: the contact
                // has left (or met the goal after the End), or the
                // automation is gone.
                if row.channel.as_deref() == Some("sms") {
                    crate::messaging::compose::unopen_thread(conn, &row.key)?;
                }
            }
            Held::Consent(HandOver::Go) => {}
        }
    }
    let effects = ctx.take_effects();
    outbox::write(conn, &effects, now)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::clock::{DAY, HOUR, MINUTE, parse_rfc3339};
    use crate::core::sim::Sim;

    /// The rows of `kind` waiting in the outbox, as the dispatcher reads them.
    fn pending(s: &Sim, kind: EffectKind) -> Vec<DueEffect> {
        s.conn
            .prepare("SELECT id, idempotency_key, payload, channel, contact_id FROM outbox WHERE status = 'pending' AND kind = ?1 ORDER BY id")
            .unwrap()
            .query_map([kind.as_str()], |r| {
                Ok(DueEffect {
                    id: r.get(0)?,
                    key: r.get(1)?,
                    kind,
                    payload: r.get(2)?,
                    channel: r.get(3)?,
                    contact_id: r.get(4)?,
                    screened: 0,
                    attempts: 0,
                    exempt: false,
                })
            })
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    /// A row is stale after a mark of its contact (or of everyone) made
    /// after it was screened; a write-back never is.
    #[test]
    fn a_row_is_screened_again_after_a_later_mark_of_its_contact() {
        let r = Rescreen::default();
        let row = |kind, contact: &str, screened| DueEffect {
            id: 1,
            key: "k".into(),
            kind,
            payload: String::new(),
            channel: None,
            contact_id: Some(contact.into()),
            screened,
            attempts: 0,
            exempt: false,
        };
        r.mark("c1");
        let at = r.epoch();
        assert!(r.is_stale(&row(EffectKind::Message, "c1", at - 1)));
        assert!(
            !r.is_stale(&row(EffectKind::Message, "c1", at)),
            "screened after the mark"
        );
        assert!(
            !r.is_stale(&row(EffectKind::Task, "c2", 0)),
            "another contact"
        );
        r.mark("c2");
        r.keep_only(["c2"]);
        assert!(
            !r.is_stale(&row(EffectKind::Message, "c1", at - 1)),
            "dropped: no row of c1 in flight"
        );
        assert!(r.is_stale(&row(EffectKind::Message, "c2", at)), "kept");
        r.mark_everyone();
        assert!(r.is_stale(&row(EffectKind::Task, "c2", at)));
        assert!(r.is_stale(&row(EffectKind::PluginStep, "c2", at)));
        assert!(
            !r.is_stale(&row(EffectKind::Property, "c1", 0)),
            "a write-back always goes"
        );
    }

    /// The messages waiting in the outbox.
    fn waiting(s: &Sim) -> Vec<DueEffect> {
        pending(s, EffectKind::Message)
    }

    fn keys(rows: &[DueEffect]) -> Vec<&str> {
        rows.iter().map(|r| r.key.as_str()).collect()
    }

    #[test]
    fn a_task_for_a_contact_who_left_is_withdrawn_and_a_paused_automations_waits() {
        let mut s = Sim::new();
        let steps = json!([{"type": "create_task", "title": "Call to book", "assignee": {"kind": "queue", "name": "front_desk"}},
                           {"type": "delay", "amount": 2, "unit": "days"}]);
        let a = s.automation(json!({"name": "Call", "goal": "book_appointment", "unenrollment": {"goal_met": true},
            "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"}, "steps": steps}));
        let b = s.automation(
            json!({"name": "Call too", "run_window": {"mode": "any_time"},
            "trigger": {"type": "contact_created"}, "steps": steps}),
        );
        s.contact("c1", json!({}));
        // The host was away: both tasks wait. c1 books (Goal met: exits
        // the first); staff pause the second.
        s.book("c1", "ap1");
        s.cmd(json!({"command": "automation.pause", "automation_id": b}))
            .unwrap();
        let tasks = |s: &Sim| pending(s, EffectKind::Task);
        assert_eq!(tasks(&s).len(), 2);
        let go = screen(&s.conn, &s.catalog, &s.settings, "t", tasks(&s), s.now).unwrap();
        assert!(go.is_empty(), "{:?}", keys(&go));
        assert_eq!(
            s.texts("SELECT automation_id FROM events WHERE kind = 'task_withdrawn' AND json_extract(detail, '$.exit_reason') = ?1", "goal_met"),
            [a]
        );
        assert_eq!(tasks(&s).len(), 1, "the paused automation's task waits");
        s.cmd(json!({"command": "automation.activate", "automation_id": b}))
            .unwrap();
        let go = screen(&s.conn, &s.catalog, &s.settings, "t", tasks(&s), s.now).unwrap();
        assert_eq!(go.len(), 1, "turned on again: handed over");
    }

    /// With *Goal met* on, a goal reached after the contact reached the End
    /// withdraws what the enrollment still has queued; with it off, it
    /// goes.
    #[test]
    fn a_goal_met_after_the_end_withdraws_what_is_still_queued() {
        let mut s = Sim::new();
        let steps = json!([{"type": "create_task", "title": "Call to book", "assignee": {"kind": "queue", "name": "front_desk"}}]);
        let def = |name: &str, goal_met: bool| {
            json!({"name": name, "goal": "book_appointment", "unenrollment": {"goal_met": goal_met},
                "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"}, "steps": steps})
        };
        let on = s.automation(def("Goal met on", true));
        s.automation(def("Goal met off", false));
        s.contact("c1", json!({}));
        assert_eq!(s.count("completed", None), 2, "both reached the End");
        // The host was away: both tasks wait; then c1 books.
        s.book("c1", "ap1");
        assert_eq!(s.count("goal_reached", None), 2);
        let tasks = |s: &Sim| pending(s, EffectKind::Task);
        assert_eq!(tasks(&s).len(), 2);
        let go = screen(&s.conn, &s.catalog, &s.settings, "t", tasks(&s), s.now).unwrap();
        assert_eq!(go.len(), 1, "Goal met off: its task goes");
        assert_eq!(
            s.texts("SELECT automation_id FROM events WHERE kind = 'task_withdrawn' AND json_extract(detail, '$.exit_reason') = ?1", "goal_met"),
            [on]
        );
    }

    /// Of two write-backs of one property, the older (retried after the
    /// newer, which carries the whole merged tag list) does not go: it
    /// would put the host's record back. Another property's goes.
    #[test]
    fn an_older_write_back_of_a_property_a_newer_one_replaces_does_not_go() {
        let mut s = Sim::new();
        let tag = |name: &str, tag: &str| {
            json!({"name": name, "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
                   "steps": [{"type": "set_property", "property": "tags", "value": {"add": [tag]}}]})
        };
        s.automation(tag("Tag A", "a"));
        s.automation(tag("Tag B", "b"));
        s.automation(json!({"name": "Unsubscribe", "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
            "steps": [{"type": "set_property", "property": "email_subscription", "value": "unsubscribed"}]}));
        s.contact("c1", json!({}));
        let writes = pending(&s, EffectKind::Property);
        let values: Vec<Value> = writes
            .iter()
            .map(|w| serde_json::from_str::<Value>(&w.payload).unwrap()["value"].clone())
            .collect();
        assert_eq!(
            values,
            [json!(["a"]), json!(["a", "b"]), json!("unsubscribed")]
        );
        let go = screen(&s.conn, &s.catalog, &s.settings, "t", writes.clone(), s.now).unwrap();
        assert_eq!(keys(&go), [writes[1].key.as_str(), writes[2].key.as_str()]);
        let (status, error): (String, String) = s
            .conn
            .query_row(
                "SELECT status, last_error FROM outbox WHERE id = ?1",
                [writes[0].id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(status, "failed");
        assert!(error.contains(&writes[1].key), "{error}");
    }

    /// A write-back waiting while the host changed the property itself (a
    /// newer update: staff reassigned the contact) does not go: it would
    /// put the host's own newer value back. A tag change goes all the
    /// same (the host did not know of it) with the tags the record holds
    /// now, the change applied, and the change itself for a host that
    /// keeps its own tags: a tag staff added meanwhile stays.
    #[test]
    fn a_write_back_the_host_has_changed_since_does_not_go() {
        let mut s = Sim::new();
        s.automation(json!({"name": "Assign", "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
            "steps": [{"type": "set_property", "property": "owner", "value": {"id": "s1", "name": "Sarah"}},
                      {"type": "set_property", "property": "tags", "value": {"add": ["welcomed"], "remove": ["new"]}}]}));
        s.contact("c1", json!({"tags": ["new", "vip"]}));
        s.contact("c2", json!({}));
        s.contact("c3", json!({"owner": {"id": "s0", "name": "Olga"}}));
        let writes = pending(&s, EffectKind::Property);
        assert_eq!(writes.len(), 6);
        let payload = |w: &DueEffect| serde_json::from_str::<Value>(&w.payload).unwrap();
        assert_eq!(
            payload(&writes[1])["change"],
            json!({"add": ["welcomed"], "remove": ["new"]})
        );
        // The host was away. Staff reassign c1 and tag them, in the EHR,
        // whose update does not have the module's tag change yet.
        s.advance(HOUR);
        s.push(json!({"type": "contact.upserted", "contact": {"id": "c1",
            "owner": {"id": "s2", "name": "Tom"}, "tags": ["new", "vip", "payment-plan"]}}))
            .unwrap();
        // c3's whole record again, with the owner the host had (it does
        // not have the write-back yet): no change of the host's, it goes.
        s.push(
            json!({"type": "contact.upserted", "mode": "full", "contact": {"id": "c3",
            "first_name": "Pat", "owner": {"id": "s0", "name": "Olga"}}}),
        )
        .unwrap();
        let go = screen(&s.conn, &s.catalog, &s.settings, "t", writes.clone(), s.now).unwrap();
        let expected: Vec<&str> = writes[1..].iter().map(|w| w.key.as_str()).collect();
        assert_eq!(keys(&go), expected, "c1's owner does not go back to Sarah");
        assert_eq!(
            payload(&go[0])["value"],
            json!(["payment-plan", "vip", "welcomed"])
        );
        let dropped = s.texts(
            "SELECT json_extract(detail, '$.reason') FROM events WHERE kind = 'write_back_dropped' AND contact_id = ?1",
            "c1",
        );
        assert_eq!(dropped, ["changed_since"]);
        let status: String = s.value(&format!(
            "SELECT status FROM outbox WHERE id = {}",
            writes[0].id
        ));
        assert_eq!(status, "failed");
    }

    /// An SMS held at hand-over for the sending hours is screened again
    /// when the practice's time zone changes: 21:30 in New York is 18:30
    /// in Los Angeles, inside the hours, so it goes.
    #[test]
    fn a_new_time_zone_screens_again_the_texts_held_for_the_sending_hours() {
        let mut s = Sim::new();
        s.automation(json!({"name": "Hello", "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
            "steps": [{"type": "send_sms", "message": "Hi"}]}));
        // 20:55 in New York: queued inside the hours; the host was away
        // until 21:30, past them.
        s.advance(11 * HOUR + 55 * MINUTE);
        s.contact("c1", json!({}));
        s.advance(35 * MINUTE);
        let go = screen(&s.conn, &s.catalog, &s.settings, "t", waiting(&s), s.now).unwrap();
        assert!(go.is_empty(), "{:?}", keys(&go));
        let next = |s: &Sim| -> i64 {
            s.conn
                .query_row("SELECT next_attempt_at FROM outbox", [], |r| r.get(0))
                .unwrap()
        };
        assert!(next(&s) > s.now + 10 * HOUR, "held until the morning");
        let mut doc = serde_json::to_value(&s.settings.doc).unwrap();
        doc["time_zone"] = json!("America/Los_Angeles");
        s.cmd(json!({"command": "settings.update", "settings": doc}))
            .unwrap();
        assert_eq!(next(&s), s.now, "screened again at once");
        let go = screen(&s.conn, &s.catalog, &s.settings, "t", waiting(&s), s.now).unwrap();
        assert_eq!(go.len(), 1);
    }

    #[test]
    fn a_paused_automations_messages_hold_until_it_is_turned_on() {
        let mut s = Sim::new();
        let mail = json!([{"type": "send_email", "subject": "Hi", "body": "b"}]);
        let a = s.automation(json!({"name": "News", "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"}, "steps": mail}));
        let b = s.automation(json!({"name": "Tips", "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"}, "steps": mail}));
        s.contact("c1", json!({}));
        let keys_of = |s: &Sim, automation: &str| -> Vec<String> {
            s.texts(
                "SELECT idempotency_key FROM outbox WHERE automation_id = ?1",
                automation,
            )
        };
        let (news, tips) = (keys_of(&s, &a), keys_of(&s, &b));
        // Staff pause both while the emails wait (behind a sending limit, say).
        for id in [&a, &b] {
            s.cmd(json!({"command": "automation.pause", "automation_id": id}))
                .unwrap();
        }
        let go = screen(&s.conn, &s.catalog, &s.settings, "t", waiting(&s), s.now).unwrap();
        assert!(go.is_empty(), "{:?}", keys(&go));
        assert!(waiting(&s).len() == 2, "held, not failed");
        // Held rows are not due again for a day.
        let due = outbox::due(
            &s.conn,
            s.now + HOUR,
            10,
            &Default::default(),
            outbox::Takers {
                host: &[EffectKind::Message],
                sender_channels: &[],
                blocked: &[],
            },
        )
        .unwrap();
        assert!(due.is_empty());
        // News is turned on again: its email goes. Tips is deleted: its
        // email is withdrawn.
        s.cmd(json!({"command": "automation.activate", "automation_id": a}))
            .unwrap();
        s.cmd(json!({"command": "automation.delete", "automation_id": b}))
            .unwrap();
        let go = screen(&s.conn, &s.catalog, &s.settings, "t", waiting(&s), s.now).unwrap();
        assert_eq!(
            keys(&go),
            news.iter().map(String::as_str).collect::<Vec<_>>()
        );
        let withdrawn = s.texts(
            "SELECT message_key FROM events WHERE kind = 'message_withdrawn' AND json_extract(detail, '$.exit_reason') = ?1",
            "automation_deleted",
        );
        assert_eq!(withdrawn, tips);
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
        let go = screen(&s.conn, &s.catalog, &s.settings, "t", rows, s.now).unwrap();
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

    /// The outbox rows whose key ends with `suffix`: (contact, channel, status).
    fn rows_ending(s: &Sim, suffix: &str) -> Vec<(String, String, String)> {
        s.conn
            .prepare("SELECT contact_id, channel, status FROM outbox WHERE idempotency_key LIKE '%' || ?1 ORDER BY id")
            .unwrap()
            .query_map([suffix], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn a_message_suppressed_at_hand_over_sends_the_steps_fallback_once() {
        let mut s = Sim::new();
        // An email step with an SMS fallback (then a wait, so the enrollment
        // is still running at hand-over), and a plain newsletter.
        s.automation(json!({"name": "Recall", "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
            "goal": "book_appointment", "unenrollment": {"goal_met": true},
            "steps": [{"id": "m", "type": "send_email", "subject": "Hi", "body": "<p>Book now</p>",
                       "fallback": {"message": "Hi {{firstname}}, book now"}},
                      {"id": "wait", "type": "delay", "amount": 3, "unit": "days"}]}));
        s.automation(json!({"name": "News", "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
            "steps": [{"id": "n", "type": "send_email", "subject": "News", "body": "<p>News</p>"}]}));
        for c in ["unsubscribes", "bounces", "books", "stays"] {
            s.contact(c, json!({}));
        }
        assert_eq!(waiting(&s).len(), 8, "two emails each, all held");
        // While they wait: one unsubscribes from email; the newsletter of
        // another leaves and hard-bounces; a third reaches the goal (and
        // leaves the automation), then unsubscribes from email.
        s.push(
            json!({"type": "contact.opted_out", "contact_id": "unsubscribes", "channel": "email"}),
        )
        .unwrap();
        let news = s.messages_to("bounces")[1].key.clone();
        assert!(news.ends_with("-n"), "{news}");
        s.conn
            .execute(
                "UPDATE outbox SET status = 'accepted' WHERE idempotency_key = ?1",
                [&news],
            )
            .unwrap();
        s.push(json!({"type": "delivery.receipt", "message_key": news, "status": "bounced", "bounce": "hard"}))
            .unwrap();
        s.book("books", "ap1");
        s.push(json!({"type": "contact.opted_out", "contact_id": "books", "channel": "email"}))
            .unwrap();

        let go = screen(&s.conn, &s.catalog, &s.settings, "t", waiting(&s), s.now).unwrap();
        let stays: Vec<&str> = s
            .messages_to("stays")
            .iter()
            .map(|m| m.key.as_str())
            .collect();
        assert_eq!(keys(&go), stays);
        // The fallback went out for the two still in the automation, in the
        // suppression's transaction: queued, waiting for its own hand-over.
        let fallbacks = rows_ending(&s, "-m-fallback");
        let expected = |status: &str| -> Vec<(String, String, String)> {
            ["unsubscribes", "bounces"]
                .map(|c| (c.to_string(), "sms".to_string(), status.to_string()))
                .to_vec()
        };
        assert_eq!(fallbacks, expected("pending"));
        let reasons: Vec<(String, Option<String>)> = s
            .conn
            .prepare(
                "SELECT contact_id, json_extract(detail, '$.reason') FROM events
                  WHERE kind = 'message_suppressed' AND message_key LIKE '%-m' ORDER BY id",
            )
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let reason = |c: &str, r: &str| (c.to_string(), Some(r.to_string()));
        assert_eq!(
            reasons,
            [
                reason("unsubscribes", "unsubscribed"),
                reason("bounces", "undeliverable")
            ]
        );
        // The one who booked left the automation (Goal met): its message is
        // withdrawn, whatever consent says, and sends no fallback.
        let withdrawn: Vec<(String, Option<String>)> = s
            .conn
            .prepare(
                "SELECT contact_id, json_extract(detail, '$.exit_reason') FROM events
                  WHERE kind = 'message_withdrawn' ORDER BY id",
            )
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(withdrawn, [reason("books", "goal_met")]);
        let fallback_queued: i64 = s
            .conn
            .query_row(
                "SELECT COUNT(*) FROM events WHERE kind = 'message_queued' AND channel = 'sms'
                   AND json_extract(detail, '$.fallback_for') = 'email'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(fallback_queued, 2);

        // One of them says STOP before the fallback leaves: it is suppressed
        // in turn and has no fallback of its own; the STOP confirmation goes.
        s.push(json!({"type": "sms.received", "contact_id": "bounces", "body": "STOP"}))
            .unwrap();
        let go = screen(&s.conn, &s.catalog, &s.settings, "t", waiting(&s), s.now).unwrap();
        let go: Vec<&DueEffect> = go
            .iter()
            .filter(|r| r.contact_id.as_deref() != Some("stays"))
            .collect();
        assert_eq!(
            go.len(),
            2,
            "{:?}",
            go.iter().map(|r| &r.key).collect::<Vec<_>>()
        );
        assert!(
            go[0].key.ends_with("-m-fallback")
                && go[0].contact_id.as_deref() == Some("unsubscribes")
        );
        assert!(is_compliance("t", &go[1].key));
        assert_eq!(
            rows_ending(&s, "-m-fallback"),
            [
                ("unsubscribes".into(), "sms".into(), "pending".into()),
                ("bounces".into(), "sms".into(), "failed".into())
            ]
        );
        assert_eq!(rows_ending(&s, "-fallback-fallback"), []);
    }

    /// A message withdrawn because its contact reached the goal after the
    /// End (*Goal met* on) sends no fallback either: the contact is done.
    #[test]
    fn a_message_withdrawn_after_the_end_sends_no_fallback() {
        let mut s = Sim::new();
        let a = s.automation(json!({"name": "Recall", "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
            "goal": "book_appointment", "unenrollment": {"goal_met": true},
            "steps": [{"id": "m", "type": "send_email", "subject": "Hi", "body": "<p>Book now</p>",
                       "fallback": {"message": "Hi {{firstname}}, book now"}}]}));
        s.contact("c1", json!({}));
        assert_eq!(s.count("completed", None), 1, "reached the End");
        s.book("c1", "ap1");
        let go = screen(&s.conn, &s.catalog, &s.settings, "t", waiting(&s), s.now).unwrap();
        assert!(go.is_empty(), "{:?}", keys(&go));
        assert_eq!(s.count("message_withdrawn", None), 1);
        // The channel breakdown shows it: queued, neither sent nor suppressed.
        let email =
            &s.view("automation_performance", json!({"automation_id": a}))["channel_breakdown"][0];
        assert_eq!(
            (
                email["queued"].as_u64(),
                email["withdrawn"].as_u64(),
                email["sent"].as_u64()
            ),
            (Some(1), Some(1), Some(0))
        );
        assert_eq!(rows_ending(&s, "-m-fallback"), []);
        assert!(waiting(&s).is_empty());
    }

    #[test]
    fn an_sms_that_never_left_leaves_its_numbers_thread_unopened() {
        let mut s = Sim::new();
        s.automation(json!({"name": "Hello", "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
            "unenrollment": {"sms_opt_out": false},
            "steps": [{"type": "send_sms", "message": "Hi"},
                      {"type": "delay", "amount": 1, "unit": "days"},
                      {"type": "send_sms", "message": "Again"}]}));
        s.contact("c1", json!({}));
        let first = s.messages_to("c1")[0].payload["rendered"]["text"].clone();
        assert_eq!(first, "Hi Reply STOP to opt out");
        // The practice records an opt-out before the first text leaves,
        // then the patient's consent again.
        s.push(json!({"type": "contact.upserted", "contact": {"id": "c1", "sms_subscription": "unsubscribed"}}))
            .unwrap();
        let go = screen(&s.conn, &s.catalog, &s.settings, "t", waiting(&s), s.now).unwrap();
        assert!(go.is_empty(), "{:?}", keys(&go));
        s.push(json!({"type": "contact.upserted", "reason": "staff", "contact": {"id": "c1", "sms_subscription": "subscribed"}}))
            .unwrap();
        s.advance(DAY);
        let texts: Vec<&Value> = s
            .messages_to("c1")
            .iter()
            .map(|m| &m.payload["rendered"]["text"])
            .collect();
        assert_eq!(
            texts,
            [
                &json!("Hi Reply STOP to opt out"),
                &json!("Again Reply STOP to opt out")
            ],
            "the number never got the footer, so the next text carries it"
        );
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
            screen(&s.conn, &s.catalog, &s.settings, "t", rows, late)
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
        let morning = screen(
            &s.conn,
            &s.catalog,
            &s.settings,
            "t",
            waiting(&s),
            next + HOUR,
        )
        .unwrap();
        assert_eq!(morning.len(), 1);
    }
}
