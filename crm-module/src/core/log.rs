//! The append-only event log: one row per fact, the source of every figure in
//! the analytics views. Rows carry ids and small details, never message text.
//!
//! The core stages its rows in the request's [`Staged`] writes; they are
//! written at the end of the request ([`super::staged`]).

use rusqlite::{Connection, params};
use serde_json::Value;

use super::staged::Staged;
use crate::clock::Millis;
use crate::error::{Error, Result};

/// One row of the event log. Build it with struct update syntax over
/// [`Entry::new`].
#[derive(Debug, Clone, Default)]
pub struct Entry<'a> {
    /// What happened (`enrolled`, `step_executed`, `message_opened`, …).
    pub kind: &'a str,
    /// The contact.
    pub contact_id: Option<&'a str>,
    /// The automation.
    pub automation_id: Option<&'a str>,
    /// The automation version.
    pub version: Option<i64>,
    /// The enrollment.
    pub enrollment_id: Option<i64>,
    /// The step.
    pub step_id: Option<&'a str>,
    /// `email` / `sms`.
    pub channel: Option<&'a str>,
    /// The message's idempotency key.
    pub message_key: Option<&'a str>,
    /// Small JSON details (reasons, durations, branch taken).
    pub detail: Option<Value>,
}

impl<'a> Entry<'a> {
    /// An entry of `kind` about a contact.
    pub fn new(kind: &'a str, contact_id: &'a str) -> Self {
        Entry {
            kind,
            contact_id: Some(contact_id),
            ..Default::default()
        }
    }

    /// Stages it at `at`, to be written with the rest of the request's rows
    /// ([`Staged::flush`]).
    pub fn write(&self, staged: &Staged, at: Millis) -> Result<()> {
        let detail = self
            .detail
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| Error::Internal(e.to_string()))?;
        staged.log(Row {
            at,
            kind: self.kind.to_string(),
            contact_id: self.contact_id.map(str::to_string),
            automation_id: self.automation_id.map(str::to_string),
            version: self.version,
            enrollment_id: self.enrollment_id,
            step_id: self.step_id.map(str::to_string),
            channel: self.channel.map(str::to_string),
            message_key: self.message_key.map(str::to_string),
            detail,
        });
        Ok(())
    }
}

/// An event-log row waiting in a [`Staged`] set of writes.
#[derive(Debug)]
pub(crate) struct Row {
    at: Millis,
    kind: String,
    contact_id: Option<String>,
    automation_id: Option<String>,
    version: Option<i64>,
    enrollment_id: Option<i64>,
    step_id: Option<String>,
    channel: Option<String>,
    message_key: Option<String>,
    detail: Option<String>,
}

/// Appends `rows` to the log, in order, through `conn` (inside its open
/// transaction).
pub(crate) fn append(conn: &Connection, rows: &[Row]) -> Result<()> {
    let mut insert = conn.prepare_cached(
        "INSERT INTO events (at, kind, contact_id, automation_id, version, enrollment_id,
                             step_id, channel, message_key, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    for r in rows {
        insert.execute(params![
            r.at,
            r.kind,
            r.contact_id,
            r.automation_id,
            r.version,
            r.enrollment_id,
            r.step_id,
            r.channel,
            r.message_key,
            r.detail,
        ])?;
    }
    Ok(())
}
