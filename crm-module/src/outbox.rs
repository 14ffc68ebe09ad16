//! The durable outbox: every effect that leaves the module.
//!
//! Effects are written in the same transaction as the state change that
//! caused them, each under a stable idempotency key derived from durable ids
//! (install id, enrollment id, step id), so a crash before commit loses both
//! and a crash after commit re-delivers under the same key. The dispatcher
//! hands due rows to the host and records its answer.

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::clock::{HOUR, MINUTE, Millis};
use crate::error::Result;
use crate::messaging::consent::Category;

/// The kinds of effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EffectKind {
    /// A message for the host to deliver.
    Message,
    /// A property write-back to the host's contact record.
    Property,
    /// A task for the host's queue.
    Task,
    /// A custom step, run by a WebAssembly plugin (never handed to the host).
    PluginStep,
}

impl EffectKind {
    /// Stored value.
    pub fn as_str(self) -> &'static str {
        match self {
            EffectKind::Message => "message",
            EffectKind::Property => "property",
            EffectKind::Task => "task",
            EffectKind::PluginStep => "plugin_step",
        }
    }

    /// Parses a stored value.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "message" => Some(EffectKind::Message),
            "property" => Some(EffectKind::Property),
            "task" => Some(EffectKind::Task),
            "plugin_step" => Some(EffectKind::PluginStep),
            _ => None,
        }
    }
}

/// An effect produced by the core.
#[derive(Debug, Clone, PartialEq)]
pub struct Effect {
    /// Stable idempotency key.
    pub key: String,
    /// What it is.
    pub kind: EffectKind,
    /// The JSON handed to the host (it includes `key` and `kind`).
    pub payload: Value,
    /// The contact concerned.
    pub contact_id: String,
    /// The automation that produced it.
    pub automation_id: Option<String>,
    /// The enrollment that produced it.
    pub enrollment_id: Option<i64>,
    /// The step that produced it.
    pub step_id: Option<String>,
    /// `email` / `sms` for messages.
    pub channel: Option<String>,
    /// The email/SMS asset (template) id, for engagement triggers.
    pub asset_id: Option<String>,
    /// Not handed over before this instant (an SMS held until the
    /// recipient's sending hours, and its automation's run window, open);
    /// `None`: at once.
    pub not_before: Option<Millis>,
    /// Why it waits until `not_before`, written as its `last_error`: a
    /// text held for the sending hours alone carries
    /// [`HELD_FOR_SENDING_HOURS`], so that a change of the practice's
    /// zone or hours releases it to be screened again for the new ones.
    /// `None` for a hold the hand-over's screening would not redo (the
    /// run window's).
    ///
    /// [`HELD_FOR_SENDING_HOURS`]: crate::messaging::handover::HELD_FOR_SENDING_HOURS
    pub hold: Option<&'static str>,
}

impl Effect {
    /// Whether the sending limits pass this message by: an answer to a
    /// keyword (category `compliance`: a STOP is confirmed at once, at any
    /// hour) or a staff member's test send (`test`). It neither waits for a
    /// channel over its limit nor counts towards it.
    pub fn exempt_from_limits(&self) -> bool {
        self.kind == EffectKind::Message
            && matches!(
                self.payload.get("category").and_then(Value::as_str),
                Some("compliance" | "test")
            )
    }
}

/// The host's answer to one delivery attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostAnswer {
    /// Taken: the host will deliver / has applied it.
    Accepted,
    /// Not now: try again later with the same key.
    RetryLater,
    /// Refused for good.
    Failed,
    /// Refused for good because the address does not exist: a hard bounce
    /// the module's own sender saw (the SMTP relay's `5.1.x`). Recorded as
    /// a bounce, not an error.
    Bounced,
    /// Not taken, and no fault of the effect's: the module's own sender
    /// takes nothing with its settings now (the SMTP relay refused its
    /// login, or lacks what the settings ask for). The row waits
    /// [`HELD_PAUSE`], its attempts untouched, and is offered again: fixing
    /// the settings (or the relay's account) cures it. A change of the
    /// email delivery settings offers it again at once.
    Held,
    /// Not offered to anyone: no registered sender takes effects of this
    /// kind now (no host callbacks, or none for this kind). The row is left
    /// as it was, its attempts untouched, until a taker is registered.
    NotHandled,
}

/// True for the key of a "Test to" sample (`template.test_send`): it never
/// reaches analytics, consent or engagement.
pub fn is_test_send(install_id: &str, key: &str) -> bool {
    key.strip_prefix(install_id)
        .is_some_and(|rest| rest.starts_with(TEST_SEND))
}

/// What follows the install id in a test send's key.
const TEST_SEND: &str = "-test-";

/// What a message's key takes for its n-th send after soft bounces.
const RESEND: &str = "-resend";

/// The key a sender adapter passes to its provider for a message keyed
/// `key` that soft-bounced `resend` times (the payload's `resend`): the
/// key itself for the first send, `<key>-resend<n>` for the n-th send
/// again, so that a provider deduplicating by it sends it again.
pub fn send_key(key: &str, resend: u64) -> String {
    if resend == 0 {
        key.to_string()
    } else {
        format!("{key}{RESEND}{resend}")
    }
}

/// The message key and resend number (1 or more) a [`send_key`] with a
/// resend number was made from; `None` for any other text (no number, a
/// zero, leading zeros).
pub fn resent_key(send_key: &str) -> Option<(&str, u64)> {
    let (key, n) = send_key.rsplit_once(RESEND)?;
    let digits = !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && !n.starts_with('0');
    Some((key, n.parse().ok().filter(|_| digits)?))
}

/// How many times the message with this key was to be sent again after a
/// soft bounce so far (its payload's `resend`, counted at the bounce, so
/// one more than the resends handed over while it waits for the next; 0
/// for a message never resent or an unknown key).
pub fn resends(conn: &Connection, key: &str) -> Result<u64> {
    let n: Option<Option<i64>> = conn
        .prepare_cached(
            "SELECT json_extract(payload, '$.resend') FROM outbox WHERE idempotency_key = ?1",
        )?
        .query_row([key], |r| r.get(0))
        .optional()?;
    Ok(n.flatten().and_then(|n| u64::try_from(n).ok()).unwrap_or(0))
}

/// The start of every test send's key (`<install>-test-`).
pub fn test_send_prefix(install_id: &str) -> String {
    format!("{install_id}{TEST_SEND}")
}

/// Attempts before a retried effect is marked failed.
pub const MAX_ATTEMPTS: i64 = 8;

/// How long a row answered [`HostAnswer::Held`] waits before it is offered
/// again.
pub const HELD_PAUSE: Millis = 15 * MINUTE;

/// What the `last_error` of a row answered [`HostAnswer::Held`] starts
/// with, before the sender's reason: a change of the email delivery
/// settings releases the rows that carry it ([`release_held_by_sender`]).
pub const HELD_BY_SENDER: &str = "held by the sender's settings: ";

/// The `last_error` a row answered [`HostAnswer::Held`] for `reason` keeps.
pub fn held_by_sender(reason: Option<&str>) -> String {
    format!("{HELD_BY_SENDER}{}", reason.unwrap_or("no reason given"))
}

/// Releases the rows the module's own sender held (the email delivery
/// settings changed, so the refused login or missing capability may be
/// cured): they are offered again at once, their attempts untouched.
pub fn release_held_by_sender(conn: &Connection, now: Millis) -> Result<usize> {
    Ok(conn
        .prepare_cached(RELEASE_HELD_SQL)?
        .execute(params![now, HELD_BY_SENDER])?)
}

/// [`release_held_by_sender`]'s statement (`?1` now, `?2` the prefix): the
/// email lane of `outbox_due` after now, not a scan of every row ever
/// written (the module's own sender holds only email).
const RELEASE_HELD_SQL: &str = "UPDATE outbox SET next_attempt_at = ?1, updated_at = ?1
    WHERE status IN ('pending','retry') AND kind = 'message' AND channel = 'email'
      AND next_attempt_at > ?1 AND status = 'retry' AND substr(last_error, 1, length(?2)) = ?2";

/// Backoff before attempt `attempts + 1`: 1 min, 5 min, 15 min, 1 h, then 4 h.
pub fn backoff(attempts: i64) -> Millis {
    match attempts {
        ..=1 => MINUTE,
        2 => 5 * MINUTE,
        3 => 15 * MINUTE,
        4 => HOUR,
        _ => 4 * HOUR,
    }
}

/// Writes effects to the outbox. A key already present is left as it is
/// (the same effect is never written twice).
pub fn write(conn: &Connection, effects: &[Effect], now: Millis) -> Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO outbox (idempotency_key, kind, payload, contact_id, automation_id,
             enrollment_id, step_id, channel, asset_id, status, next_attempt_at, created_at, updated_at,
             exempt, last_error)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'pending', ?10, ?11, ?11, ?12, ?13)
         ON CONFLICT(idempotency_key) DO NOTHING",
    )?;
    for e in effects {
        // Straight into a buffer: `Value::to_string` goes through `fmt` for
        // every token, which costs about twice as much on a composed email.
        let payload = serde_json::to_string(&e.payload)
            .map_err(|err| crate::error::Error::Internal(err.to_string()))?;
        stmt.execute(params![
            e.key,
            e.kind.as_str(),
            payload,
            e.contact_id,
            e.automation_id,
            e.enrollment_id,
            e.step_id,
            e.channel,
            e.asset_id,
            e.not_before.map_or(now, |t| t.max(now)),
            now,
            e.exempt_from_limits(),
            e.hold.filter(|_| e.not_before.is_some_and(|t| t > now))
        ])?;
    }
    Ok(())
}

/// A due outbox row, as handed to the dispatcher.
#[derive(Debug, Clone, PartialEq)]
pub struct DueEffect {
    /// Row id.
    pub id: i64,
    /// Idempotency key.
    pub key: String,
    /// Kind.
    pub kind: EffectKind,
    /// JSON payload text.
    pub payload: String,
    /// `email` / `sms` for messages.
    pub channel: Option<String>,
    /// The contact it concerns, if any.
    pub contact_id: Option<String>,
    /// The hand-over epoch it was screened at
    /// ([`crate::messaging::handover::Rescreen`]); 0 before.
    pub screened: u64,
    /// The row's answers before this hand-over (`attempts`): the answer to
    /// it is recorded only while the row still has as many (a delivery
    /// receipt pushed first may have recorded the hand-over as taken).
    pub attempts: i64,
    /// A message outside the sending limits
    /// ([`Effect::exempt_from_limits`]): in flight, it takes none of them.
    pub exempt: bool,
}

/// Who can take effects right now.
#[derive(Debug, Clone, Copy)]
pub struct Takers<'a> {
    /// The kinds the registered host handles (see [`crate::Host::handles`]);
    /// empty without a host. A kind the host does not handle waits.
    pub host: &'a [EffectKind],
    /// Message channels delivered by one of the module's own senders, a
    /// sender adapter or the built-in SMTP relay for email (no host needed).
    pub sender_channels: &'a [&'a str],
    /// Lanes that cannot take more now, by channel (over its sending
    /// limit, or its share in flight) or, for a lane without one, by kind
    /// (`plugin_step`): their rows wait.
    pub blocked: &'a [&'a str],
}

/// The outbox's lanes: each kind of effect, and messages by channel. The
/// due rows are indexed by lane (`outbox_due`), so every question below is
/// one index probe per lane that can go now.
const LANES: [(EffectKind, Option<&str>); 5] = [
    (EffectKind::Message, Some("email")),
    (EffectKind::Message, Some("sms")),
    (EffectKind::Property, None),
    (EffectKind::Task, None),
    (EffectKind::PluginStep, None),
];

/// The lanes some taker can take now: custom steps always (the plugin
/// pool), the kinds the host handles, and the messages of channels with a
/// sender of the module's own; never the messages of blocked channels. A
/// lane nobody takes is not read at all: its rows wait without using
/// attempts.
fn open_lanes(t: Takers<'_>) -> impl Iterator<Item = (EffectKind, Option<&'static str>)> + '_ {
    LANES.into_iter().filter(move |(kind, channel)| {
        taken(t, *kind, *channel) && !t.blocked.contains(&channel.unwrap_or(kind.as_str()))
    })
}

/// Whether some taker takes the lane's rows, blocked or not: the host
/// handles the kind, a sender of the module's own sends the channel, or
/// the plugin pool runs custom steps.
fn taken(t: Takers<'_>, kind: EffectKind, channel: Option<&str>) -> bool {
    t.host.contains(&kind)
        || match channel {
            Some(c) => t.sender_channels.contains(&c),
            None => kind == EffectKind::PluginStep,
        }
}

/// One lane's due rows (`?1` kind, `?2` channel, `?3` now, `?4` limit),
/// oldest first: a range of the `outbox_due` index.
pub(crate) const DUE_SQL: &str =
    "SELECT next_attempt_at, id, idempotency_key, payload, attempts, contact_id, exempt FROM outbox
    WHERE status IN ('pending','retry') AND kind = ?1 AND channel IS ?2 AND next_attempt_at <= ?3
    ORDER BY next_attempt_at, id LIMIT ?4";

/// One lane's earliest due time after `?3` (`?1` kind, `?2` channel): an
/// `outbox_due` index probe.
pub(crate) const NEXT_DUE_SQL: &str = "SELECT MIN(next_attempt_at) FROM outbox
    WHERE status IN ('pending','retry') AND kind = ?1 AND channel IS ?2 AND next_attempt_at > ?3";

/// Rows due at `now`, oldest first, skipping `exclude` (in flight) and rows
/// no taker can take now.
pub fn due(
    conn: &Connection,
    now: Millis,
    limit: usize,
    exclude: &std::collections::HashSet<i64>,
    takers: Takers<'_>,
) -> Result<Vec<DueEffect>> {
    due_within(conn, now, limit, exclude, takers, &[], &[])
}

/// The due messages of one channel (`?1`) outside the sending limits
/// (`?2` now, `?3` limit), oldest first: a range of `outbox_exempt_due`.
pub(crate) const EXEMPT_DUE_SQL: &str =
    "SELECT next_attempt_at, id, idempotency_key, payload, attempts, contact_id, exempt FROM outbox
    WHERE exempt = 1 AND status IN ('pending','retry') AND channel = ?1 AND next_attempt_at <= ?2
    ORDER BY next_attempt_at, id LIMIT ?3";

/// [`due`], with at most `room` rows of each lane it names, by channel or
/// by kind as [`Takers::blocked`] (what the lane can still take: a
/// channel's sending budget, its share of the in-flight room), so that rows the caller could not hand over are not
/// read and screened for nothing; and, of each channel in `exempt_room`
/// (over its sending limit, with in-flight room left), at most that many
/// of its messages outside the limits.
pub fn due_within(
    conn: &Connection,
    now: Millis,
    limit: usize,
    exclude: &std::collections::HashSet<i64>,
    takers: Takers<'_>,
    room: &[(&str, usize)],
    exempt_room: &[(&str, usize)],
) -> Result<Vec<DueEffect>> {
    let mut stmt = conn.prepare_cached(DUE_SQL)?;
    let mut exempt = conn.prepare_cached(EXEMPT_DUE_SQL)?;
    let mut rows = Vec::new();
    let exempt_lanes = (exempt_room.iter()).filter_map(|(c, n)| {
        let channel = exempt_lane(takers, c)?;
        (*n > 0).then_some((EffectKind::Message, Some(channel), *n, true))
    });
    let lanes = open_lanes(takers).filter_map(|(kind, channel)| {
        let name = channel.unwrap_or(kind.as_str());
        let lane_limit = (room.iter())
            .find(|(r, _)| *r == name)
            .map_or(limit, |(_, n)| (*n).min(limit));
        (lane_limit > 0).then_some((kind, channel, lane_limit, false))
    });
    for (kind, channel, lane_limit, exempt_only) in lanes.chain(exempt_lanes) {
        let lane_limit = lane_limit.min(limit);
        let mut taken = 0;
        let read = |r: &rusqlite::Row<'_>| {
            let due = DueEffect {
                id: r.get(1)?,
                key: r.get(2)?,
                kind,
                payload: r.get(3)?,
                channel: channel.map(str::to_string),
                contact_id: r.get(5)?,
                screened: 0,
                attempts: r.get(4)?,
                exempt: r.get(6)?,
            };
            Ok((r.get::<_, Millis>(0)?, due))
        };
        let want = (lane_limit + exclude.len()) as i64;
        let lane: Vec<_> = if exempt_only {
            exempt
                .query_map(params![channel, now, want], read)?
                .collect()
        } else {
            stmt.query_map(params![kind.as_str(), channel, now, want], read)?
                .collect()
        };
        for row in lane {
            let row = row?;
            if !exclude.contains(&row.1.id) && taken < lane_limit {
                taken += 1;
                rows.push(row);
            }
        }
    }
    // Oldest first across the lanes, as one queue.
    rows.sort_unstable_by_key(|(at, due)| (*at, due.id));
    rows.truncate(limit);
    let out = rows
        .into_iter()
        .map(|(_, mut due)| {
            // A retried effect (host said retry, or a soft bounce) keeps its
            // key; `attempt` tells the host it is asked again on purpose.
            if due.attempts > 0
                && let Ok(Value::Object(mut m)) = serde_json::from_str::<Value>(&due.payload)
            {
                m.insert("attempt".into(), Value::from(due.attempts + 1));
                due.payload = Value::Object(m).to_string();
            }
            due
        })
        .collect();
    Ok(out)
}

/// The message channel `channel` as a lane of its messages outside the
/// limits, when some taker takes its messages.
fn exempt_lane(t: Takers<'_>, channel: &str) -> Option<&'static str> {
    let lane = LANES
        .iter()
        .find_map(|(_, lane)| lane.filter(|l| *l == channel))?;
    taken(t, EffectKind::Message, Some(lane)).then_some(lane)
}

/// The earliest due time after `?2` of a channel's (`?1`) messages outside
/// the limits: an `outbox_exempt_due` probe.
pub(crate) const NEXT_EXEMPT_DUE_SQL: &str = "SELECT MIN(next_attempt_at) FROM outbox
    WHERE exempt = 1 AND status IN ('pending','retry') AND channel = ?1 AND next_attempt_at > ?2";

/// Whether, of the channels over their sending limit (`channels`), a
/// message outside the limits that some taker takes is due at `now` and not
/// in `exclude` (in flight).
pub fn any_exempt_due(
    conn: &Connection,
    now: Millis,
    exclude: &std::collections::HashSet<i64>,
    takers: Takers<'_>,
    channels: &[&str],
) -> Result<bool> {
    let mut due = conn.prepare_cached(EXEMPT_DUE_SQL)?;
    for channel in channels.iter().filter_map(|c| exempt_lane(takers, c)) {
        let mut rows = due.query(params![channel, now, (exclude.len() + 1) as i64])?;
        while let Some(row) = rows.next()? {
            if !exclude.contains(&row.get::<_, i64>(1)?) {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// The earliest due time after `after` of a message outside the limits, of
/// the channels over their sending limit (`channels`), that some taker
/// takes.
pub fn next_exempt_due(
    conn: &Connection,
    after: Millis,
    takers: Takers<'_>,
    channels: &[&str],
) -> Result<Option<Millis>> {
    let mut next = conn.prepare_cached(NEXT_EXEMPT_DUE_SQL)?;
    let mut earliest: Option<Millis> = None;
    for channel in channels.iter().filter_map(|c| exempt_lane(takers, c)) {
        let at: Option<Millis> = next.query_row(params![channel, after], |r| r.get(0))?;
        earliest = earliest.into_iter().chain(at).min();
    }
    Ok(earliest)
}

/// One lane's ids due at `?3` (`?1` kind, `?2` channel, `?4` limit),
/// oldest first: the index alone answers it.
pub(crate) const DUE_IDS_SQL: &str = "SELECT id FROM outbox
    WHERE status IN ('pending','retry') AND kind = ?1 AND channel IS ?2 AND next_attempt_at <= ?3
    ORDER BY next_attempt_at, id LIMIT ?4";

/// Whether a row some taker can take is due at `now` and not in `exclude`
/// (in flight): what a hand-over could start now. Rows in flight are due
/// too, but waiting for them is waiting for their answers, which wake the
/// worker themselves.
pub fn any_due(
    conn: &Connection,
    now: Millis,
    exclude: &std::collections::HashSet<i64>,
    takers: Takers<'_>,
) -> Result<bool> {
    let mut stmt = conn.prepare_cached(DUE_IDS_SQL)?;
    for (kind, channel) in open_lanes(takers) {
        let mut ids = stmt.query(params![
            kind.as_str(),
            channel,
            now,
            (exclude.len() + 1) as i64
        ])?;
        while let Some(r) = ids.next()? {
            if !exclude.contains(&r.get::<_, i64>(0)?) {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Moves a row that is still to be delivered to `at`, using one of its
/// attempts: an answer the worker could not record is not offered again at
/// once, in a loop, but after a pause, and not forever (the last attempt
/// marks it failed).
pub fn defer(conn: &Connection, id: i64, at: Millis, now: Millis) -> Result<()> {
    conn.prepare_cached(
        "UPDATE outbox SET next_attempt_at = ?2, updated_at = ?3, attempts = attempts + 1,
             status = CASE WHEN attempts + 1 >= ?4 THEN 'failed' ELSE status END,
             last_error = CASE WHEN attempts + 1 >= ?4 THEN ?5 ELSE last_error END
          WHERE id = ?1 AND status IN ('pending','retry')",
    )?
    .execute(params![id, at, now, MAX_ATTEMPTS, ANSWERS_LOST])?;
    Ok(())
}

/// Why a row whose answers could not be recorded failed at its last attempt.
pub const ANSWERS_LOST: &str = "failed: its answers could not be recorded";

/// The earliest `next_attempt_at` after `after` of a pending row some taker
/// can take, if any.
pub fn next_due(conn: &Connection, takers: Takers<'_>, after: Millis) -> Result<Option<Millis>> {
    let mut stmt = conn.prepare_cached(NEXT_DUE_SQL)?;
    let mut earliest: Option<Millis> = None;
    for (kind, channel) in open_lanes(takers) {
        let lane: Option<Millis> =
            stmt.query_row(params![kind.as_str(), channel, after], |r| r.get(0))?;
        earliest = earliest.into_iter().chain(lane).min();
    }
    Ok(earliest)
}

/// Facts of an outbox row needed to log its outcome.
#[derive(Debug, Clone)]
pub struct Row {
    /// Row id.
    pub id: i64,
    /// Kind.
    pub kind: EffectKind,
    /// Key.
    pub key: String,
    /// Contact.
    pub contact_id: Option<String>,
    /// Automation.
    pub automation_id: Option<String>,
    /// Enrollment.
    pub enrollment_id: Option<i64>,
    /// Step.
    pub step_id: Option<String>,
    /// Channel.
    pub channel: Option<String>,
    /// Asset.
    pub asset_id: Option<String>,
    /// Status.
    pub status: String,
    /// Attempts so far.
    pub attempts: i64,
}

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok(Row {
        kind: EffectKind::parse(&r.get::<_, String>(0)?).unwrap_or(EffectKind::Message),
        key: r.get(1)?,
        contact_id: r.get(2)?,
        automation_id: r.get(3)?,
        enrollment_id: r.get(4)?,
        step_id: r.get(5)?,
        channel: r.get(6)?,
        asset_id: r.get(7)?,
        status: r.get(8)?,
        attempts: r.get(9)?,
        id: r.get(10)?,
    })
}

const ROW_COLUMNS: &str = "kind, idempotency_key, contact_id, automation_id, enrollment_id, step_id, channel, asset_id, status, attempts, id";

/// Looks a row up by id.
pub fn by_id(conn: &Connection, id: i64) -> Result<Option<Row>> {
    let sql = format!("SELECT {ROW_COLUMNS} FROM outbox WHERE id = ?1");
    Ok(conn
        .prepare_cached(&sql)?
        .query_row([id], read_row)
        .optional()?)
}

/// Looks a row up by idempotency key.
pub fn by_key(conn: &Connection, key: &str) -> Result<Option<Row>> {
    let sql = format!("SELECT {ROW_COLUMNS} FROM outbox WHERE idempotency_key = ?1");
    Ok(conn
        .prepare_cached(&sql)?
        .query_row([key], read_row)
        .optional()?)
}

/// The address or number the message with this key was composed for (its
/// payload's `to`); `None` for an unknown key or a payload without one.
pub fn recipient(conn: &Connection, key: &str) -> Result<Option<String>> {
    payload_text(conn, key, "$.to")
}

/// The category (`marketing` / `care`) of the message with this key, as its
/// payload records it; `None` for a message without one (a reply to a
/// keyword, a "Test to" sample).
pub fn category(conn: &Connection, key: &str) -> Result<Option<Category>> {
    Ok(payload_text(conn, key, "$.category")?
        .as_deref()
        .and_then(Category::parse))
}

/// One text field (`path`, a JSON path) of the payload of the row with this
/// key; `None` for an unknown key or a missing field.
fn payload_text(conn: &Connection, key: &str, path: &str) -> Result<Option<String>> {
    let text: Option<Option<String>> = conn
        .prepare_cached("SELECT json_extract(payload, ?2) FROM outbox WHERE idempotency_key = ?1")?
        .query_row([key, path], |r| r.get(0))
        .optional()?;
    Ok(text.flatten())
}

/// The message on channel `?2` to contact `?1` that reached them last: the
/// one its sender took last (`accepted`; not one held for sending
/// hours, a limit or a paused automation, waiting to be offered again, or
/// failed), not a staff test send (keys from `?3`, `<install>-test-`: it
/// went to staff, the contact only lent it their data).
const LAST_MESSAGE_WHERE: &str = "contact_id = ?1 AND channel = ?2 AND kind = 'message'
     AND status = 'accepted' AND substr(idempotency_key, 1, length(?3)) <> ?3
     ORDER BY COALESCE(handed_over_at, created_at) DESC, id DESC LIMIT 1";

/// Of `contacts`, the one a message on `channel` reached last (its sender
/// took it last; the earlier in the list on a tie); `None` when none was
/// sent any.
pub fn last_messaged<'a>(
    conn: &Connection,
    install_id: &str,
    contacts: &'a [String],
    channel: &str,
) -> Result<Option<&'a String>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT COALESCE(handed_over_at, created_at), id FROM outbox WHERE {LAST_MESSAGE_WHERE}"
    ))?;
    let tests = test_send_prefix(install_id);
    let mut newest: Option<((Millis, i64), &String)> = None;
    for contact in contacts {
        let at: Option<(Millis, i64)> = stmt
            .query_row(params![contact, channel, tests], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        if let Some(at) = at
            && newest.is_none_or(|(best, _)| at > best)
        {
            newest = Some((at, contact));
        }
    }
    Ok(newest.map(|(_, contact)| contact))
}

/// The message on a channel to a contact that reached them last (its
/// sender took it last; not a staff test send).
pub fn last_message(
    conn: &Connection,
    install_id: &str,
    contact_id: &str,
    channel: &str,
) -> Result<Option<Row>> {
    let sql = format!("SELECT {ROW_COLUMNS} FROM outbox WHERE {LAST_MESSAGE_WHERE}");
    let tests = test_send_prefix(install_id);
    Ok(conn
        .prepare_cached(&sql)?
        .query_row(params![contact_id, channel, tests], read_row)
        .optional()?)
}

/// Tests: an effect of `kind` (on `channel`) for `contact`, due at `at`,
/// its payload the key.
#[cfg(test)]
pub(crate) fn sample(
    key: &str,
    kind: EffectKind,
    channel: Option<&str>,
    contact: &str,
    at: Millis,
) -> Effect {
    Effect {
        key: key.into(),
        kind,
        payload: serde_json::json!({"key": key}),
        contact_id: contact.into(),
        automation_id: None,
        enrollment_id: None,
        step_id: None,
        channel: channel.map(str::to_string),
        asset_id: None,
        not_before: Some(at),
        hold: None,
    }
}

/// The reason the row with this id last waited or failed (`last_error`).
pub fn last_error(conn: &Connection, id: i64) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached("SELECT last_error FROM outbox WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?
        .flatten())
}

/// Records the host's answer. Returns the new status.
pub fn record_answer(
    conn: &Connection,
    id: i64,
    answer: HostAnswer,
    error: Option<&str>,
    now: Millis,
) -> Result<&'static str> {
    // This answer's attempt: one more than the row had.
    let attempt = || -> Result<i64> {
        Ok(conn
            .query_row("SELECT attempts FROM outbox WHERE id = ?1", [id], |r| {
                r.get::<_, i64>(0)
            })
            .optional()?
            .unwrap_or(0)
            + 1)
    };
    let (status, next, attempts) = match answer {
        // Nobody was asked: the row stays as it is.
        HostAnswer::NotHandled => return Ok("pending"),
        HostAnswer::Held => {
            // No attempt used, and no hand-over: `handed_over_at` stays.
            conn.prepare_cached(
                "UPDATE outbox SET status = 'retry', next_attempt_at = ?2, updated_at = ?3, last_error = ?4
                  WHERE id = ?1 AND status IN ('pending','retry')",
            )?
            .execute(params![id, now + HELD_PAUSE, now, held_by_sender(error)])?;
            return Ok("retry");
        }
        HostAnswer::Accepted => ("accepted", now, attempt()?),
        HostAnswer::Failed | HostAnswer::Bounced => ("failed", now, attempt()?),
        HostAnswer::RetryLater => match attempt()? {
            a if a >= MAX_ATTEMPTS => ("failed", now, a),
            a => ("retry", now + backoff(a), a),
        },
    };
    let changed = conn
        .prepare_cached(
            "UPDATE outbox SET status = ?2, attempts = ?3, next_attempt_at = ?4, updated_at = ?5, handed_over_at = ?5,
             last_error = ?6
         WHERE id = ?1 AND status IN ('pending','retry')",
        )?
        .execute(params![id, status, attempts, next, now, error])?;
    if changed == 1 && status == "accepted" {
        // A text that carried the consent footer: it may open its number's
        // thread in place of an opener not accepted yet.
        let footer: Option<(String, Option<String>)> = conn
            .prepare_cached(
                "SELECT idempotency_key, json_extract(payload, '$.rendered.to') FROM outbox
                  WHERE id = ?1 AND kind = 'message' AND channel = 'sms'
                    AND json_extract(payload, '$.rendered.first_in_thread') = 1
                    AND json_extract(payload, '$.purpose') IS NOT 'test_send'",
            )?
            .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        if let Some((key, Some(to))) = footer
            && let Some(phone) = crate::core::contacts::phone_key(&to)
        {
            crate::messaging::compose::footer_accepted(conn, &key, &phone, now)?;
        }
    }
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn effect(key: &str, kind: EffectKind, channel: Option<&str>, at: Millis) -> Effect {
        sample(key, kind, channel, "c1", at)
    }

    fn keys(rows: &[DueEffect]) -> Vec<&str> {
        rows.iter().map(|r| r.key.as_str()).collect()
    }

    #[test]
    fn due_rows_come_oldest_first_across_the_lanes_a_taker_can_take() {
        let dir = tempfile::tempdir().unwrap();
        let conn =
            crate::store::open(&dir.path().join("o.db"), crate::store::Access::Write).unwrap();
        let effects = [
            effect("email-1", EffectKind::Message, Some("email"), 10),
            effect("sms-1", EffectKind::Message, Some("sms"), 20),
            effect("task-1", EffectKind::Task, None, 30),
            effect("step-1", EffectKind::PluginStep, None, 40),
            effect("email-2", EffectKind::Message, Some("email"), 50),
            effect("later", EffectKind::Property, None, 1_000),
        ];
        write(&conn, &effects, 0).unwrap();
        let none = HashSet::new();
        let every = [EffectKind::Message, EffectKind::Property, EffectKind::Task];
        let host = Takers {
            host: &every,
            sender_channels: &[],
            blocked: &[],
        };
        let rows = due(&conn, 100, 10, &none, host).unwrap();
        assert_eq!(
            keys(&rows),
            ["email-1", "sms-1", "task-1", "step-1", "email-2"]
        );
        assert_eq!(
            keys(&due(&conn, 100, 2, &none, host).unwrap()),
            ["email-1", "sms-1"]
        );
        // Room for one more email, none for SMS: the rest are not read.
        assert_eq!(
            keys(
                &due_within(
                    &conn,
                    100,
                    10,
                    &none,
                    host,
                    &[("email", 1), ("sms", 0)],
                    &[]
                )
                .unwrap()
            ),
            ["email-1", "task-1", "step-1"]
        );
        assert_eq!(next_due(&conn, host, Millis::MIN).unwrap(), Some(10));
        // After an instant: a row due then (not handed over) hides no later one.
        assert_eq!(next_due(&conn, host, 10).unwrap(), Some(20));

        // Email over its limit: the other lanes go on, in order.
        let limited = Takers {
            blocked: &["email"],
            ..host
        };
        assert_eq!(
            keys(&due(&conn, 100, 10, &none, limited).unwrap()),
            ["sms-1", "task-1", "step-1"]
        );
        assert_eq!(next_due(&conn, limited, Millis::MIN).unwrap(), Some(20));

        // No host: custom steps, and messages only of adapter channels.
        let no_host = Takers {
            host: &[],
            sender_channels: &["sms"],
            blocked: &[],
        };
        assert_eq!(
            keys(&due(&conn, 100, 10, &none, no_host).unwrap()),
            ["sms-1", "step-1"]
        );
        assert_eq!(next_due(&conn, no_host, Millis::MIN).unwrap(), Some(20));
        let nobody = Takers {
            sender_channels: &[],
            ..no_host
        };
        assert_eq!(next_due(&conn, nobody, Millis::MIN).unwrap(), Some(40));

        // A host that handles messages only: tasks and property write-backs
        // are not read (so they use no attempts); messages and custom steps go.
        let messages_only = Takers {
            host: &[EffectKind::Message],
            ..nobody
        };
        assert_eq!(
            keys(&due(&conn, 100, 10, &none, messages_only).unwrap()),
            ["email-1", "sms-1", "step-1", "email-2"]
        );
        let tasks_only = Takers {
            host: &[EffectKind::Task],
            ..nobody
        };
        assert_eq!(
            keys(&due(&conn, 2_000, 10, &none, tasks_only).unwrap()),
            ["task-1", "step-1"]
        );
        assert_eq!(next_due(&conn, tasks_only, Millis::MIN).unwrap(), Some(30));

        // In-flight rows are skipped; rows not yet due are not returned.
        let in_flight: HashSet<i64> = rows.iter().take(2).map(|r| r.id).collect();
        assert_eq!(
            keys(&due(&conn, 35, 10, &in_flight, host).unwrap()),
            ["task-1"]
        );
    }

    #[test]
    fn every_lane_question_is_an_index_probe() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        crate::store::migrations::migrate(&conn).unwrap();
        for plan in [
            crate::store::query_plan(&conn, DUE_SQL, params!["message", "email", 100, 10]),
            crate::store::query_plan(&conn, NEXT_DUE_SQL, params!["message", "email", 0]),
            crate::store::query_plan(&conn, RELEASE_HELD_SQL, params![0, HELD_BY_SENDER]),
        ] {
            let plan = plan.join("; ");
            assert!(
                plan.contains("USING INDEX outbox_due (kind=? AND channel=?")
                    || plan.contains("USING COVERING INDEX outbox_due (kind=? AND channel=?"),
                "{plan}"
            );
            assert!(!plan.contains("TEMP B-TREE"), "{plan}");
        }
    }
}
