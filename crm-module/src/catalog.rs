//! The catalog: the automations the core matches events against, loaded from
//! the store and reloaded whenever a command changes them. Old versions are
//! loaded on demand (for migrating in-flight enrollments).

use std::collections::HashMap;
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};

use crate::clock::Millis;
use crate::error::{Error, Result};
use crate::model::automation::{AutomationDefinition, AutomationStatus, Flow};

/// One stored version of a definition, with its flow index.
#[derive(Debug)]
pub struct Version {
    /// Version number (1, 2, …).
    pub number: i64,
    /// The definition.
    pub def: AutomationDefinition,
    /// Navigation index.
    pub flow: Flow,
}

/// An automation as the core sees it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Id.
    pub id: String,
    /// Status.
    pub status: AutomationStatus,
    /// When it was (last) activated.
    pub activated_at: Option<Millis>,
    /// The current version.
    pub current: Arc<Version>,
}

/// All live (not deleted) automations.
#[derive(Debug, Default, Clone)]
pub struct Catalog {
    entries: HashMap<String, Entry>,
    order: Vec<String>,
}

impl Catalog {
    /// Loads every live automation with its current version.
    pub fn load(conn: &Connection) -> Result<Catalog> {
        let mut stmt = conn.prepare_cached(
            "SELECT a.id, a.status, a.activated_at, v.version, v.definition
             FROM automations a JOIN automation_versions v
               ON v.automation_id = a.id AND v.version = a.current_version
             WHERE a.deleted_at IS NULL ORDER BY a.created_at, a.id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<Millis>>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, String>(4)?,
            ))
        })?;
        let mut cat = Catalog::default();
        for row in rows {
            let (id, status, activated_at, number, text) = row?;
            let status = AutomationStatus::parse(&status)
                .ok_or_else(|| Error::Internal(format!("automation {id}: bad status")))?;
            let current = Arc::new(parse_version(&id, number, &text)?);
            cat.order.push(id.clone());
            cat.entries.insert(
                id.clone(),
                Entry {
                    id,
                    status,
                    activated_at,
                    current,
                },
            );
        }
        Ok(cat)
    }

    /// A live automation.
    pub fn get(&self, id: &str) -> Option<&Entry> {
        self.entries.get(id)
    }

    /// Active automations, in creation order.
    pub fn active(&self) -> impl Iterator<Item = &Entry> {
        self.order
            .iter()
            .filter_map(|id| self.entries.get(id))
            .filter(|e| e.status == AutomationStatus::Active)
    }

    /// Every live automation, in creation order.
    pub fn all(&self) -> impl Iterator<Item = &Entry> {
        self.order.iter().filter_map(|id| self.entries.get(id))
    }
}

fn parse_version(id: &str, number: i64, text: &str) -> Result<Version> {
    let def: AutomationDefinition = serde_json::from_str(text).map_err(|_| {
        Error::Internal(format!(
            "automation {id} version {number}: stored definition unreadable"
        ))
    })?;
    let flow = Flow::new(&def);
    Ok(Version { number, def, flow })
}

/// Every stored version of an automation, oldest first.
pub fn all_versions(conn: &Connection, automation_id: &str) -> Result<Vec<Version>> {
    let mut stmt = conn.prepare(
        "SELECT version, definition FROM automation_versions WHERE automation_id = ?1 ORDER BY version",
    )?;
    let rows = stmt
        .query_map([automation_id], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.iter()
        .map(|(n, text)| parse_version(automation_id, *n, text))
        .collect()
}

/// Loads one stored version.
pub fn load_version(conn: &Connection, automation_id: &str, version: i64) -> Result<Version> {
    let text: Option<String> = conn
        .prepare_cached(
            "SELECT definition FROM automation_versions WHERE automation_id = ?1 AND version = ?2",
        )?
        .query_row(params![automation_id, version], |r| r.get(0))
        .optional()?;
    let text = text.ok_or_else(|| {
        Error::Internal(format!(
            "automation {automation_id} version {version} is missing"
        ))
    })?;
    parse_version(automation_id, version, &text)
}
