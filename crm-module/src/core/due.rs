//! Scheduled work: enrollment wake-ups and date-based trigger evaluations,
//! found and run in time order. The worker drives this with the host's clock;
//! tests drive it directly.

use rusqlite::{OptionalExtension, params};

use super::{Ctx, dates, enrollment};
use crate::clock::Millis;
use crate::error::Result;

/// One scheduled item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// When it is due.
    pub due: Millis,
    /// An enrollment to wake.
    pub enrollment_id: Option<i64>,
    /// An automation whose date trigger to evaluate.
    pub automation_id: Option<String>,
}

/// The earliest item due at or before `until` (active automations only).
///
/// Two index-ordered probes (enrollments by `wake_at`, automations by
/// `next_eval_at`), never a sort of every waiting enrollment: this runs once
/// per scheduled item and on every worker loop. A paused automation's
/// enrollments are out of the index ([`enrollment::hold`]), so however many
/// are overdue the probe does not read past them. On a tie the date
/// evaluation goes first.
pub fn next(conn: &rusqlite::Connection, until: Millis) -> Result<Option<Item>> {
    let enrollment: Option<(Millis, i64)> = conn
        .prepare_cached(
            "SELECT e.wake_at, e.id FROM enrollments e INDEXED BY enrollments_due
              WHERE e.state = 'active' AND e.wake_at IS NOT NULL AND e.held = 0 AND e.wake_at <= ?1
                AND EXISTS (SELECT 1 FROM automations a WHERE a.id = e.automation_id
                              AND a.status = 'active' AND a.deleted_at IS NULL)
              ORDER BY e.wake_at, e.id LIMIT 1",
        )?
        .query_row([until], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let evaluation: Option<(Millis, String)> = conn
        .prepare_cached(
            "SELECT next_eval_at, id FROM automations
              WHERE status = 'active' AND deleted_at IS NULL AND next_eval_at IS NOT NULL AND next_eval_at <= ?1
              ORDER BY next_eval_at, id LIMIT 1",
        )?
        .query_row([until], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(match (enrollment, evaluation) {
        (Some((e_due, _)), Some((d_due, aid))) if d_due <= e_due => Some(Item {
            due: d_due,
            enrollment_id: None,
            automation_id: Some(aid),
        }),
        (Some((due, id)), _) => Some(Item {
            due,
            enrollment_id: Some(id),
            automation_id: None,
        }),
        (None, Some((due, aid))) => Some(Item {
            due,
            enrollment_id: None,
            automation_id: Some(aid),
        }),
        (None, None) => None,
    })
}

/// The earliest due instant of any item, however far ahead.
pub fn earliest(conn: &rusqlite::Connection) -> Result<Option<Millis>> {
    Ok(next(conn, Millis::MAX)?.map(|i| i.due))
}

/// Runs one item at `ctx.now`; returns how many contacts a date trigger enrolled.
pub fn run(ctx: &mut Ctx<'_>, item: &Item) -> Result<usize> {
    if let Some(id) = item.enrollment_id {
        enrollment::wake(ctx, id)?;
        return Ok(0);
    }
    let Some(aid) = item.automation_id.as_deref() else {
        return Ok(0);
    };
    let catalog = ctx.catalog;
    let (n, next) = match catalog.get(aid) {
        Some(entry) => {
            let n = dates::evaluate(ctx, entry, item.due)?;
            (
                n,
                dates::next_evaluation(&entry.current.def, ctx.settings, ctx.now),
            )
        }
        None => (0, None),
    };
    ctx.conn.execute(
        "UPDATE automations SET next_eval_at = ?2 WHERE id = ?1",
        params![aid, next],
    )?;
    Ok(n)
}
