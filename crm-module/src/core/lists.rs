//! Static list membership, shared by commands and the Add to list step.

use rusqlite::{OptionalExtension, params};
use serde_json::json;

use super::contacts;
use super::log::Entry as Log;
use super::{Ctx, Signal};
use crate::error::{Error, Result};

fn require_list(ctx: &Ctx<'_>, list_id: &str) -> Result<()> {
    let live: Option<Option<i64>> = ctx
        .conn
        .prepare_cached("SELECT deleted_at FROM lists WHERE id = ?1")?
        .query_row([list_id], |r| r.get(0))
        .optional()?;
    match live {
        Some(None) => Ok(()),
        _ => Err(Error::not_found(format!("list {list_id}"))),
    }
}

/// Adds a contact to a static list. Returns the signals (empty if already a member).
pub fn add_member(
    ctx: &Ctx<'_>,
    list_id: &str,
    contact_id: &str,
    source: &str,
) -> Result<Vec<Signal>> {
    change(ctx, list_id, contact_id, source, true)
}

/// Removes a contact from a static list. Returns the signals (empty if not a member).
pub fn remove_member(
    ctx: &Ctx<'_>,
    list_id: &str,
    contact_id: &str,
    source: &str,
) -> Result<Vec<Signal>> {
    change(ctx, list_id, contact_id, source, false)
}

/// The source of the leaves a list's deletion makes.
pub const LIST_DELETED: &str = "list_deleted";

/// Joins or leaves: the membership row, the event log, Last Activity
/// (except when the list is deleted), the signal.
fn change(
    ctx: &Ctx<'_>,
    list_id: &str,
    contact_id: &str,
    source: &str,
    join: bool,
) -> Result<Vec<Signal>> {
    require_list(ctx, list_id)?;
    contacts::require(ctx.conn, contact_id)?;
    let n = if join {
        ctx.conn
            .prepare_cached(
                "INSERT INTO list_members (list_id, contact_id, added_at, source) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT DO NOTHING",
            )?
            .execute(params![list_id, contact_id, ctx.now, source])?
    } else {
        ctx.conn
            .prepare_cached("DELETE FROM list_members WHERE list_id = ?1 AND contact_id = ?2")?
            .execute(params![list_id, contact_id])?
    };
    if n == 0 {
        return Ok(Vec::new());
    }
    Log {
        detail: Some(json!({"list_id": list_id, "source": source})),
        ..Log::new(if join { "list_joined" } else { "list_left" }, contact_id)
    }
    .write(ctx.conn, ctx.now)?;
    // Staff deleting a list is nobody's activity: its members' Last
    // Activity (and their Inactive-for-N clocks) stay where they were.
    if source != LIST_DELETED {
        contacts::touch_only(ctx.conn, contact_id, ctx.now)?;
    }
    let list_id = list_id.to_string();
    Ok(vec![if join {
        Signal::ListJoined { list_id }
    } else {
        Signal::ListLeft { list_id }
    }])
}
