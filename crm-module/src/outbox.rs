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
    /// recipient's sending hours open); `None`: at once.
    pub not_before: Option<Millis>,
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
}

/// True for the key of a "Test to" sample (`template.test_send`): it never
/// reaches analytics, consent or engagement.
pub fn is_test_send(install_id: &str, key: &str) -> bool {
    key.strip_prefix(install_id)
        .is_some_and(|rest| rest.starts_with("-test-"))
}

/// Attempts before a retried effect is marked failed.
pub const MAX_ATTEMPTS: i64 = 8;

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
             enrollment_id, step_id, channel, asset_id, status, next_attempt_at, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'pending', ?10, ?11, ?11)
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
            now
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
}

/// Who can take effects right now.
#[derive(Debug, Clone, Copy)]
pub struct Takers<'a> {
    /// Host callbacks are registered: every kind can go.
    pub host: bool,
    /// Message channels delivered by a sender adapter (no host needed).
    pub plugin_channels: &'a [&'a str],
    /// Channels over their sending limit: their messages wait.
    pub blocked: &'a [&'a str],
}

/// Rows due at `now`, oldest first, skipping `exclude` (in flight) and rows
/// no taker can take now.
pub fn due(
    conn: &Connection,
    now: Millis,
    limit: usize,
    exclude: &std::collections::HashSet<i64>,
    takers: Takers<'_>,
) -> Result<Vec<DueEffect>> {
    let sql = format!(
        "SELECT id, idempotency_key, kind, payload, attempts, channel FROM outbox
         WHERE status IN ('pending','retry') AND next_attempt_at <= ?1 {}
         ORDER BY next_attempt_at, id LIMIT ?2",
        takers_clause(takers)
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params![now, (limit + exclude.len()) as i64], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, i64>(4)?,
            r.get::<_, Option<String>>(5)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, key, kind, mut payload, attempts, channel) = row?;
        if exclude.contains(&id) {
            continue;
        }
        // A retried effect (host said retry, or a soft bounce) keeps its key;
        // `attempt` tells the host it is asked again on purpose.
        if attempts > 0
            && let Ok(Value::Object(mut m)) = serde_json::from_str::<Value>(&payload)
        {
            m.insert("attempt".into(), Value::from(attempts + 1));
            payload = Value::Object(m).to_string();
        }
        if let Some(kind) = EffectKind::parse(&kind) {
            out.push(DueEffect {
                id,
                key,
                kind,
                payload,
                channel,
            });
        }
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}

/// The earliest `next_attempt_at` of a pending row some taker can take, if any.
pub fn next_due(conn: &Connection, takers: Takers<'_>) -> Result<Option<Millis>> {
    let sql = format!(
        "SELECT MIN(next_attempt_at) FROM outbox WHERE status IN ('pending','retry') {}",
        takers_clause(takers)
    );
    Ok(conn
        .prepare_cached(&sql)?
        .query_row([], |r| r.get::<_, Option<Millis>>(0))
        .optional()?
        .flatten())
}

/// SQL keeping the rows some taker can take: without a host only custom
/// steps and messages of adapter channels; never messages of blocked
/// channels (channel names are ours: `email`, `sms`; anything else is ignored).
fn takers_clause(t: Takers<'_>) -> String {
    let names = |list: &[&str]| -> String {
        list.iter()
            .filter(|c| matches!(**c, "email" | "sms"))
            .map(|c| format!("'{c}'"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut sql = String::new();
    if !t.host {
        sql.push_str(&format!(
            "AND (kind = 'plugin_step' OR (kind = 'message' AND channel IN ({}))) ",
            names(t.plugin_channels)
        ));
    }
    let blocked = names(t.blocked);
    if !blocked.is_empty() {
        sql.push_str(&format!(
            "AND NOT (kind = 'message' AND channel IN ({blocked}))"
        ));
    }
    sql
}

/// Facts of an outbox row needed to log its outcome.
#[derive(Debug, Clone)]
pub struct Row {
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
    })
}

const ROW_COLUMNS: &str = "kind, idempotency_key, contact_id, automation_id, enrollment_id, step_id, channel, asset_id, status, attempts";

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

/// The newest message on a channel to a contact.
pub fn last_message(conn: &Connection, contact_id: &str, channel: &str) -> Result<Option<Row>> {
    let sql = format!(
        "SELECT {ROW_COLUMNS} FROM outbox WHERE contact_id = ?1 AND channel = ?2 AND kind = 'message'
         ORDER BY created_at DESC, id DESC LIMIT 1"
    );
    Ok(conn
        .prepare_cached(&sql)?
        .query_row(params![contact_id, channel], read_row)
        .optional()?)
}

/// Records the host's answer. Returns the new status.
pub fn record_answer(
    conn: &Connection,
    id: i64,
    answer: HostAnswer,
    error: Option<&str>,
    now: Millis,
) -> Result<&'static str> {
    let attempts: i64 = conn
        .query_row("SELECT attempts FROM outbox WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .optional()?
        .unwrap_or(0)
        + 1;
    let (status, next) = match answer {
        HostAnswer::Accepted => ("accepted", now),
        HostAnswer::Failed => ("failed", now),
        HostAnswer::RetryLater if attempts >= MAX_ATTEMPTS => ("failed", now),
        HostAnswer::RetryLater => ("retry", now + backoff(attempts)),
    };
    conn.prepare_cached(
        "UPDATE outbox SET status = ?2, attempts = ?3, next_attempt_at = ?4, updated_at = ?5, last_error = ?6
         WHERE id = ?1 AND status IN ('pending','retry')",
    )?
    .execute(params![id, status, attempts, next, now, error])?;
    Ok(status)
}
