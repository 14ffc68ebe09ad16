//! The append-only event log: one row per fact, the source of every figure in
//! the analytics views. Rows carry ids and small details, never message text.

use rusqlite::{Connection, params};
use serde_json::Value;

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

    /// An entry about an outbox row (a message or another effect): its
    /// automation, enrollment, step, channel and key.
    pub fn for_effect(kind: &'a str, row: &'a crate::outbox::Row, detail: Option<Value>) -> Self {
        Entry {
            automation_id: row.automation_id.as_deref(),
            enrollment_id: row.enrollment_id,
            step_id: row.step_id.as_deref(),
            channel: row.channel.as_deref(),
            message_key: Some(&row.key),
            detail,
            ..Entry::new(kind, row.contact_id.as_deref().unwrap_or_default())
        }
    }

    /// Appends it at `at`.
    pub fn write(&self, conn: &Connection, at: Millis) -> Result<()> {
        let detail = self
            .detail
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| Error::Internal(e.to_string()))?;
        conn.prepare_cached(
            "INSERT INTO events (at, kind, contact_id, automation_id, version, enrollment_id,
                                 step_id, channel, message_key, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?
        .execute(params![
            at,
            self.kind,
            self.contact_id,
            self.automation_id,
            self.version,
            self.enrollment_id,
            self.step_id,
            self.channel,
            self.message_key,
            detail,
        ])?;
        Ok(())
    }
}
