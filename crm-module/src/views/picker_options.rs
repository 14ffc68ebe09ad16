//! `picker_options`: a builder picker's choices found by name. The builder
//! offers the first 1,000 lists, forms or templates by name in
//! a picker's `options`; a practice with more gets a field whose `search`
//! names this view, which finds any of them by part of its name.

use rusqlite::{Connection, params};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::builder::{FieldOption, opt};
use super::{Ctx, PICKER_LIMIT};
use crate::error::{Error, Result};

/// The longest `query` accepted, in characters.
pub const MAX_QUERY_CHARS: usize = 200;
/// Choices returned when `limit` is not given.
pub const DEFAULT_LIMIT: u32 = 50;

/// What a picker picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Picker {
    /// Static lists (not deleted).
    Lists,
    /// Forms.
    Forms,
    /// Saved email templates (not deleted).
    EmailTemplates,
    /// Saved SMS templates (not deleted).
    SmsTemplates,
}

impl Picker {
    /// Rows whose name contains `?1` (a `LIKE` pattern), by name, at most `?2`.
    fn sql(self) -> &'static str {
        match self {
            Picker::Lists => {
                "SELECT id, name FROM lists WHERE deleted_at IS NULL AND name LIKE ?1 ESCAPE '\\'
                 ORDER BY name COLLATE NOCASE, id LIMIT ?2"
            }
            Picker::Forms => {
                "SELECT id, name FROM forms WHERE name LIKE ?1 ESCAPE '\\'
                 ORDER BY name COLLATE NOCASE, id LIMIT ?2"
            }
            Picker::EmailTemplates => {
                "SELECT id, name FROM templates
                 WHERE channel = 'email' AND deleted_at IS NULL AND name LIKE ?1 ESCAPE '\\'
                 ORDER BY name COLLATE NOCASE, id LIMIT ?2"
            }
            Picker::SmsTemplates => {
                "SELECT id, name FROM templates
                 WHERE channel = 'sms' AND deleted_at IS NULL AND name LIKE ?1 ESCAPE '\\'
                 ORDER BY name COLLATE NOCASE, id LIMIT ?2"
            }
        }
    }
}

/// Parameters of `picker_options`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PickerOptionsParams {
    /// Which picker: as its field's `search.params.picker` says.
    pub picker: Picker,
    /// Part of the name, any case (ASCII letters: SQLite's `LIKE`), spaces
    /// around it ignored; empty or absent for the first by name. At most
    /// 200 characters, no control characters.
    #[serde(default)]
    pub query: String,
    /// Most choices to return, 1 to 1,000 (default 50).
    pub limit: Option<u32>,
}

/// The choices found.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct PickerOptionsView {
    /// The picker searched.
    pub picker: Picker,
    /// The query, as given.
    pub query: String,
    /// Matching choices by name (then id), as the field's `options` give
    /// them: `value` the id to store, `label` the name (never the field's
    /// null choice, such as "Any form").
    pub options: Vec<FieldOption>,
    /// More match than `limit`: a longer query narrows them.
    pub more: bool,
}

/// `query` as a `LIKE` pattern matching names that contain it.
fn contains_pattern(query: &str) -> String {
    let mut p = String::with_capacity(query.len() + 2);
    p.push('%');
    for c in query.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// The `(id, name)` choices of `picker` whose name contains `query` (any
/// case, ASCII letters; every one for an empty query), by name then id, at
/// most `limit`: this view's search, and the builder's first choices
/// ([`super::Names`]).
pub(crate) fn matching(
    conn: &Connection,
    picker: Picker,
    query: &str,
    limit: usize,
) -> Result<Vec<(String, String)>> {
    let mut stmt = conn.prepare_cached(picker.sql())?;
    let rows = stmt.query_map(params![contains_pattern(query), limit as i64], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Builds the view.
pub(crate) fn build(ctx: &Ctx<'_>, p: PickerOptionsParams) -> Result<PickerOptionsView> {
    if p.query.chars().count() > MAX_QUERY_CHARS {
        return Err(Error::invalid(format!(
            "params: query: at most {MAX_QUERY_CHARS} characters"
        )));
    }
    // SQLite's LIKE reads a pattern only up to a NUL.
    if p.query.chars().any(char::is_control) {
        return Err(Error::invalid(
            "params: query: must not contain control characters",
        ));
    }
    let limit = p.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit as usize > PICKER_LIMIT {
        return Err(Error::invalid(format!(
            "params: limit: must be 1 to {}",
            super::fmt_count(PICKER_LIMIT as u64)
        )));
    }
    let mut found = matching(ctx.conn, p.picker, p.query.trim(), limit as usize + 1)?;
    let more = found.len() > limit as usize;
    found.truncate(limit as usize);
    Ok(PickerOptionsView {
        picker: p.picker,
        query: p.query,
        options: found
            .into_iter()
            .map(|(id, name)| opt(serde_json::json!(id), &name))
            .collect(),
        more,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::test_support::Db;
    use crate::error::ErrorCode;

    fn lists(db: &Db, names: &[&str]) {
        for (i, n) in names.iter().enumerate() {
            db.conn
                .execute(
                    "INSERT INTO lists (id, name, created_at) VALUES (?1, ?2, 0)",
                    [format!("l{i}"), n.to_string()],
                )
                .unwrap();
        }
    }

    #[test]
    fn finds_by_part_of_the_name_in_any_case() {
        let db = Db::new();
        lists(
            &db,
            &[
                "Zeta VIPs",
                "zeta recall",
                "Flu 100% done",
                "Flu 1000",
                "Alpha",
            ],
        );
        let q = |params| db.query("picker_options", params).unwrap();
        let v = q(json!({"picker": "lists", "query": "ZETA"}));
        let labels: Vec<&str> = v["options"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["label"].as_str().unwrap())
            .collect();
        assert_eq!(labels, ["zeta recall", "Zeta VIPs"]);
        assert_eq!(v["options"][0]["value"], "l1");
        assert_eq!(v["more"], false);
        // `%` and `_` are text, not wildcards.
        let v = q(json!({"picker": "lists", "query": "100%"}));
        assert_eq!(v["options"].as_array().unwrap().len(), 1);
        assert_eq!(v["options"][0]["label"], "Flu 100% done");
        // No query: the first by name; `more` when the limit cut them.
        let v = q(json!({"picker": "lists", "limit": 2}));
        assert_eq!(v["options"][0]["label"], "Alpha");
        assert_eq!(v["options"].as_array().unwrap().len(), 2);
        assert_eq!(v["more"], true);
        // A deleted list is not offered.
        db.conn
            .execute("UPDATE lists SET deleted_at = 1 WHERE id = 'l4'", [])
            .unwrap();
        let v = q(json!({"picker": "lists", "query": "alp"}));
        assert!(v["options"].as_array().unwrap().is_empty());
    }

    #[test]
    fn bad_params_are_refused() {
        let db = Db::new();
        for (params, says) in [
            (json!({"picker": "contacts"}), "picker"),
            (json!({"picker": "lists", "limit": 0}), "limit"),
            (json!({"picker": "lists", "limit": 1001}), "limit"),
            (
                json!({"picker": "lists", "query": "x".repeat(201)}),
                "query",
            ),
            (json!({"picker": "lists", "query": "vip\u{0}x"}), "control"),
            (json!({"query": "x"}), "picker"),
            (json!({"picker": "lists", "junk": 1}), "junk"),
        ] {
            let e = db.query("picker_options", params.clone()).unwrap_err();
            assert_eq!(e.code(), ErrorCode::Invalid, "{params}");
            assert!(e.to_string().contains(says), "{params}: {e}");
        }
    }
}
