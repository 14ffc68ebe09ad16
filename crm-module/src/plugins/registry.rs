//! Installed plugins in the database: the component bytes, the declaration,
//! what the practice granted (hosts, limits, config, secrets), whether it is
//! enabled, and the per-plugin call figures. Everything here runs inside the
//! worker's transaction.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::contract::PluginKind;
use super::descriptor::Descriptor;
use super::limits::Limits;
use crate::clock::Millis;
use crate::error::{Error, Result};

/// One installed plugin as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPlugin {
    /// The declaration (its `id` is the row's key).
    pub descriptor: Descriptor,
    /// The component.
    pub wasm: Vec<u8>,
    /// SHA-256 of the component, hex.
    pub sha256: String,
    /// Granted origins.
    pub grants: Vec<String>,
    /// Limits of each call.
    pub limits: Limits,
    /// Plain settings.
    pub config: BTreeMap<String, String>,
    /// Secrets.
    pub secrets: BTreeMap<String, String>,
    /// Enabled.
    pub enabled: bool,
    /// Installed at.
    pub installed_at: Millis,
    /// Last changed at.
    pub updated_at: Millis,
}

impl StoredPlugin {
    /// What the practice grants it.
    pub fn grants(&self) -> Grants {
        Grants {
            grants: self.grants.clone(),
            limits: self.limits,
            config: self.config.clone(),
            secrets: self.secrets.clone(),
        }
    }
}

/// What the practice grants a plugin (everything but the component).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Grants {
    /// Granted origins.
    pub grants: Vec<String>,
    /// Limits of each call.
    pub limits: Limits,
    /// Plain settings.
    pub config: BTreeMap<String, String>,
    /// Secrets.
    pub secrets: BTreeMap<String, String>,
}

/// What a command changes of a plugin's [`Grants`]: each part given
/// replaces the stored one (limits field by field); the parts left out keep
/// theirs.
#[derive(Debug, Clone, Default)]
pub struct GrantChanges {
    /// Granted origins.
    pub grants: Option<Vec<String>>,
    /// Limits, field by field.
    pub limits: Option<super::limits::LimitChanges>,
    /// Plain settings.
    pub config: Option<BTreeMap<String, String>>,
    /// Secrets.
    pub secrets: Option<BTreeMap<String, String>>,
}

impl GrantChanges {
    /// `base` with these changes.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Invalid`] for limits that are not [`Limits`] fields.
    pub fn onto(self, base: Grants) -> Result<Grants> {
        Ok(Grants {
            grants: self.grants.unwrap_or(base.grants),
            limits: match &self.limits {
                Some(l) => l.onto(base.limits)?,
                None => base.limits,
            },
            config: self.config.unwrap_or(base.config),
            secrets: self.secrets.unwrap_or(base.secrets),
        })
    }
}

const COLUMNS: &str =
    "descriptor, wasm, sha256, grants, limits, config, secrets, enabled, installed_at, updated_at";

fn json_col<T: serde::de::DeserializeOwned>(
    r: &rusqlite::Row<'_>,
    i: usize,
) -> rusqlite::Result<T> {
    let text: String = r.get(i)?;
    serde_json::from_str(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredPlugin> {
    Ok(StoredPlugin {
        descriptor: json_col(r, 0)?,
        wasm: r.get(1)?,
        sha256: r.get(2)?,
        grants: json_col(r, 3)?,
        limits: json_col(r, 4)?,
        config: json_col(r, 5)?,
        secrets: json_col(r, 6)?,
        enabled: r.get(7)?,
        installed_at: r.get(8)?,
        updated_at: r.get(9)?,
    })
}

fn text<T: Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::Internal(e.to_string()))
}

/// Every installed plugin, by id.
pub fn all(conn: &Connection) -> Result<Vec<StoredPlugin>> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM plugins ORDER BY id"))?;
    let rows = stmt.query_map([], read)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// One installed plugin.
pub fn get(conn: &Connection, id: &str) -> Result<Option<StoredPlugin>> {
    Ok(conn
        .prepare_cached(&format!("SELECT {COLUMNS} FROM plugins WHERE id = ?1"))?
        .query_row([id], read)
        .optional()?)
}

/// A plugin's declaration and whether it is enabled (no component bytes).
pub fn descriptor(conn: &Connection, id: &str) -> Result<Option<(Descriptor, bool)>> {
    conn.prepare_cached("SELECT descriptor, enabled FROM plugins WHERE id = ?1")?
        .query_row([id], |r| {
            Ok((json_col::<Descriptor>(r, 0)?, r.get::<_, bool>(1)?))
        })
        .optional()
        .map_err(Error::from)
}

/// Every declaration with its enabled flag, by id (no component bytes).
pub fn descriptors(conn: &Connection) -> Result<Vec<(Descriptor, bool)>> {
    let mut stmt = conn.prepare_cached("SELECT descriptor, enabled FROM plugins ORDER BY id")?;
    let rows = stmt.query_map([], |r| {
        Ok((json_col::<Descriptor>(r, 0)?, r.get::<_, bool>(1)?))
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Stores a newly installed plugin, or replaces the component of an
/// installed one when `replace` is set (its grants are then replaced too).
///
/// # Errors
///
/// [`Error::Conflict`] when the id is installed and `replace` is not set, or
/// when the replacement changes the plugin's kind.
pub fn install(
    conn: &Connection,
    plugin: &super::Prepared,
    grants: &Grants,
    enabled: bool,
    replace: bool,
    now: Millis,
) -> Result<()> {
    let descriptor = &plugin.descriptor;
    if let Some((old, _)) = self::descriptor(conn, &descriptor.id)? {
        if !replace {
            return Err(Error::Conflict(format!(
                "plugin {:?} is already installed (version {}); set \"replace\": true to upgrade it",
                descriptor.id, old.version
            )));
        }
        if old.kind != descriptor.kind {
            return Err(Error::Conflict(format!(
                "plugin {:?} is installed as a {} plugin; a replacement must be one too",
                descriptor.id,
                old.kind.as_str()
            )));
        }
    }
    conn.prepare_cached(
        "INSERT INTO plugins (id, kind, descriptor, wasm, sha256, grants, limits, config, secrets, enabled, installed_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11)
         ON CONFLICT(id) DO UPDATE SET descriptor = excluded.descriptor, wasm = excluded.wasm,
             sha256 = excluded.sha256, grants = excluded.grants, limits = excluded.limits,
             config = excluded.config, secrets = excluded.secrets, enabled = excluded.enabled,
             updated_at = excluded.updated_at",
    )?
    .execute(params![
        descriptor.id,
        descriptor.kind.as_str(),
        text(descriptor)?,
        plugin.wasm.as_slice(),
        plugin.sha256,
        text(&grants.grants)?,
        text(&grants.limits)?,
        text(&grants.config)?,
        text(&grants.secrets)?,
        enabled,
        now
    ])?;
    Ok(())
}

/// Replaces what the practice grants an installed plugin.
pub fn configure(conn: &Connection, id: &str, grants: &Grants, now: Millis) -> Result<()> {
    let n = conn
        .prepare_cached(
            "UPDATE plugins SET grants = ?2, limits = ?3, config = ?4, secrets = ?5, updated_at = ?6 WHERE id = ?1",
        )?
        .execute(params![
            id,
            text(&grants.grants)?,
            text(&grants.limits)?,
            text(&grants.config)?,
            text(&grants.secrets)?,
            now
        ])?;
    found(n, id)
}

/// Enables or disables a plugin.
pub fn set_enabled(conn: &Connection, id: &str, enabled: bool, now: Millis) -> Result<()> {
    let n = conn
        .prepare_cached("UPDATE plugins SET enabled = ?2, updated_at = ?3 WHERE id = ?1")?
        .execute(params![id, enabled, now])?;
    found(n, id)
}

/// Removes a plugin (its figures stay).
pub fn remove(conn: &Connection, id: &str) -> Result<()> {
    let n = conn
        .prepare_cached("DELETE FROM plugins WHERE id = ?1")?
        .execute([id])?;
    found(n, id)
}

fn found(n: usize, id: &str) -> Result<()> {
    if n == 0 {
        Err(Error::NotFound(format!("plugin {id:?}")))
    } else {
        Ok(())
    }
}

/// One call's figures, recorded with its result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallFigures {
    /// The plugin.
    pub plugin_id: String,
    /// The step type, or `send`.
    pub operation: String,
    /// Wall time of the call, instantiation included (µs).
    pub micros: u64,
    /// Why it failed (None: it returned an answer).
    pub failure: Option<String>,
    /// Whether the plugin was called at all: not when it was disabled, not
    /// installed, or the call never reached it (an unusable payload).
    pub ran: bool,
}

/// Adds one call to the plugin's figures; a call that never reached the
/// plugin adds nothing.
pub fn record_call(conn: &Connection, f: &CallFigures, now: Millis) -> Result<()> {
    if !f.ran {
        return Ok(());
    }
    let micros = i64::try_from(f.micros).unwrap_or(i64::MAX);
    conn.prepare_cached(
        "INSERT INTO plugin_stats (plugin_id, operation, calls, failures, total_micros, max_micros, last_failure, last_failure_at, last_call_at)
         VALUES (?1, ?2, 1, ?3, ?4, ?4, ?5, CASE WHEN ?5 IS NULL THEN NULL ELSE ?6 END, ?6)
         ON CONFLICT(plugin_id, operation) DO UPDATE SET
             calls = calls + 1,
             failures = failures + excluded.failures,
             total_micros = total_micros + excluded.total_micros,
             max_micros = max(max_micros, excluded.max_micros),
             last_failure = coalesce(excluded.last_failure, last_failure),
             last_failure_at = coalesce(excluded.last_failure_at, last_failure_at),
             last_call_at = excluded.last_call_at",
    )?
    .execute(params![
        f.plugin_id,
        f.operation,
        i64::from(f.failure.is_some()),
        micros,
        f.failure,
        now
    ])?;
    Ok(())
}

/// A plugin's figures for one operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationFigures {
    /// Step type or `send`.
    pub operation: String,
    /// Calls.
    pub calls: i64,
    /// Failed calls.
    pub failures: i64,
    /// Total time (µs).
    pub total_micros: i64,
    /// Slowest call (µs).
    pub max_micros: i64,
    /// Latest failure reason.
    pub last_failure: Option<String>,
    /// When it failed.
    pub last_failure_at: Option<Millis>,
    /// Latest call.
    pub last_call_at: Option<Millis>,
}

/// A plugin's figures, by operation.
pub fn figures(conn: &Connection, plugin_id: &str) -> Result<Vec<OperationFigures>> {
    let mut stmt = conn.prepare_cached(
        "SELECT operation, calls, failures, total_micros, max_micros, last_failure, last_failure_at, last_call_at
         FROM plugin_stats WHERE plugin_id = ?1 ORDER BY operation",
    )?;
    let rows = stmt.query_map([plugin_id], |r| {
        Ok(OperationFigures {
            operation: r.get(0)?,
            calls: r.get(1)?,
            failures: r.get(2)?,
            total_micros: r.get(3)?,
            max_micros: r.get(4)?,
            last_failure: r.get(5)?,
            last_failure_at: r.get(6)?,
            last_call_at: r.get(7)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// The kind of an installed plugin.
pub fn kind(conn: &Connection, id: &str) -> Result<Option<PluginKind>> {
    let k: Option<String> = conn
        .prepare_cached("SELECT kind FROM plugins WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?;
    Ok(k.as_deref().and_then(PluginKind::parse))
}
