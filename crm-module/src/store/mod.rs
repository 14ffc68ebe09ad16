//! The SQLite store: one database file at a path the host gives.
//!
//! WAL journal, foreign keys on, `synchronous=FULL` (a committed push survives
//! power loss, not only a process crash), writers use `BEGIN IMMEDIATE`.
//! The schema is versioned by [`migrations`] through `PRAGMA user_version`.

pub mod checkpoint;
pub mod migrations;

use std::path::Path;
use std::time::Duration;

pub use rusqlite::Connection;
use rusqlite::{OpenFlags, OptionalExtension, params};

use crate::error::{Error, Result};

/// How a connection will be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The worker's read-write connection.
    Write,
    /// A read-only connection for views.
    Read,
    /// The checkpoint thread's connection ([`checkpoint`]): read-write, no
    /// migrations.
    Checkpoint,
}

/// Opens a connection with the module's pragmas. The writer also runs migrations.
pub fn open(path: &Path, access: Access) -> Result<Connection> {
    let flags = match access {
        Access::Write => OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
        Access::Checkpoint => OpenFlags::SQLITE_OPEN_READ_WRITE,
        Access::Read => OpenFlags::SQLITE_OPEN_READ_ONLY,
    } | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| Error::Storage(format!("cannot open the database: {e}")))?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.set_prepared_statement_cache_capacity(256);
    if access == Access::Write {
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Storage(format!(
                "the database must support WAL journaling (got {mode})"
            )));
        }
    }
    conn.execute_batch(
        "PRAGMA foreign_keys=ON;
         PRAGMA synchronous=FULL;
         PRAGMA temp_store=MEMORY;
         PRAGMA cache_size=-32768;",
    )?;
    if access == Access::Write {
        migrations::migrate(&conn)?;
    }
    Ok(conn)
}

/// Reads a setting's JSON value.
pub fn get_setting(conn: &Connection, key: &str) -> Result<Option<serde_json::Value>> {
    let text: Option<String> = conn
        .prepare_cached("SELECT value FROM settings WHERE key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()?;
    match text {
        Some(t) => serde_json::from_str(&t)
            .map(Some)
            .map_err(|_| Error::Internal(format!("setting {key} is not valid JSON"))),
        None => Ok(None),
    }
}

/// Writes a setting's JSON value.
pub fn put_setting(conn: &Connection, key: &str, value: &serde_json::Value) -> Result<()> {
    conn.execute(
        "INSERT INTO settings(key, value) VALUES (?1, ?2)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![key, value.to_string()],
    )?;
    Ok(())
}

/// The plan SQLite picks for `sql` with `params` bound (`EXPLAIN QUERY
/// PLAN`, one detail line per row), for tests that pin a query to its index.
#[cfg(test)]
pub(crate) fn query_plan(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Vec<String> {
    conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
        .unwrap()
        .query_map(params, |r| r.get::<_, String>(3))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}
