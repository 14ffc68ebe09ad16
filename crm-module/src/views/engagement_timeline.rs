//! The Performance tab's "Engagement timeline": the automation's latest
//! engagement, newest first — each open, click and reply of its messages
//! by a person (a message's first of each, as the figures count them) and
//! each goal reached that counts for its current goal.

use std::collections::HashMap;

use rusqlite::params;
use schemars::JsonSchema;
use serde::Serialize;

use super::{Ctx, Label, fmt_instant};
use crate::clock::Millis;
use crate::core::contacts;
use crate::error::Result;
use crate::model::contact::display_name;

/// Entries the timeline shows.
pub const TIMELINE_ENTRIES: usize = 20;

/// The latest engagement events of automation `?1` (`?2`, `?3`: the goal
/// ids that count, [`crate::core::goals::counted_ids`]), newest first, at
/// most `?4`: ids and times only, from the covering indexes
/// `events_automation` and `events_goals`, so that only the rows shown are
/// read.
pub(crate) const LATEST_SQL: &str = "SELECT id, at FROM events
     WHERE automation_id = ?1 AND kind IN ('message_opened', 'message_clicked', 'message_replied')
     UNION ALL
     SELECT id, at FROM events
     WHERE kind = 'goal_reached' AND automation_id = ?1 AND json_extract(detail, '$.goal') IN (?2, ?3)
     ORDER BY at DESC, id DESC LIMIT ?4";

/// The timeline.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct EngagementTimeline {
    /// "Engagement timeline".
    pub title: String,
    /// The four kinds of entry (the legend): `opened`, `clicked`,
    /// `replied`, `goal_reached`.
    pub kinds: Vec<Label>,
    /// The latest entries, newest first (at most 20).
    pub entries: Vec<TimelineEntry>,
    /// What it shows.
    pub definition: String,
}

/// One engagement.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct TimelineEntry {
    /// When (UTC milliseconds).
    pub at: Millis,
    /// In the practice's time zone ("Today, 2:05 PM", "Mar 3, 2026").
    pub at_display: String,
    /// `opened`, `clicked`, `replied` or `goal_reached`.
    pub kind: Label,
    /// The contact.
    pub contact_id: String,
    /// The contact's name (`Contact <id>` when it has none, or the contact
    /// is gone).
    pub contact: String,
    /// The step whose message it was (none for a goal).
    pub step_id: Option<String>,
    /// The step's title.
    pub step: Option<String>,
    /// `email` or `sms` (none for a goal).
    pub channel: Option<Label>,
}

fn kinds() -> Vec<Label> {
    vec![
        Label::new("opened", "Opened"),
        Label::new("clicked", "Clicked"),
        Label::new("replied", "Replied"),
        Label::new("goal_reached", "Goal reached"),
    ]
}

/// Builds the timeline of automation `automation_id`; `goals` are the goal
/// ids that count, `step_titles` the titles of its steps (removed ones
/// too).
pub(crate) fn build(
    ctx: &Ctx<'_>,
    automation_id: &str,
    [g1, g2]: [&str; 2],
    step_titles: &HashMap<String, String>,
) -> Result<EngagementTimeline> {
    // A click on an email whose pixel never loaded is logged with an open
    // it implies, at the same instant: one entry (the click), so read up
    // to twice as many.
    let ids: Vec<i64> = ctx
        .conn
        .prepare_cached(LATEST_SQL)?
        .query_map(
            params![automation_id, g1, g2, (2 * TIMELINE_ENTRIES) as i64],
            |r| r.get(0),
        )?
        .collect::<rusqlite::Result<_>>()?;
    let mut stmt = ctx.conn.prepare_cached(
        "SELECT at, kind, contact_id, step_id, channel,
                json_extract(detail, '$.implied_by') IS NOT NULL
         FROM events WHERE id = ?1",
    )?;
    let labels = kinds();
    let mut names: HashMap<String, String> = HashMap::new();
    let mut entries = Vec::new();
    for id in ids {
        if entries.len() == TIMELINE_ENTRIES {
            break;
        }
        let (at, kind, contact_id, step_id, channel, implied) = stmt.query_row([id], |r| {
            Ok((
                r.get::<_, Millis>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, bool>(5)?,
            ))
        })?;
        if implied {
            continue;
        }
        let kind_id = kind.strip_prefix("message_").unwrap_or(&kind);
        let Some(kind) = labels.iter().find(|l| l.id == kind_id) else {
            continue;
        };
        let Some(contact_id) = contact_id else {
            continue; // every engagement names its contact
        };
        let contact = match names.get(&contact_id) {
            Some(name) => name.clone(),
            None => {
                let name = contacts::load(ctx.conn, &contact_id)?
                    .map(|c| display_name(&c.props))
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| format!("Contact {contact_id}"));
                names.insert(contact_id.clone(), name.clone());
                name
            }
        };
        let is_goal = kind.id == "goal_reached";
        entries.push(TimelineEntry {
            at,
            at_display: fmt_instant(at, ctx.now, ctx.settings.tz),
            kind: kind.clone(),
            contact_id,
            contact,
            step: step_id
                .as_ref()
                .filter(|_| !is_goal)
                .map(|s| step_titles.get(s).cloned().unwrap_or_else(|| s.clone())),
            step_id: step_id.filter(|_| !is_goal),
            channel: channel
                .filter(|_| !is_goal)
                .map(|c| Label::new(&c, &super::performance::channel_label(&c))),
        });
    }
    Ok(EngagementTimeline {
        title: "Engagement timeline".into(),
        kinds: labels,
        entries,
        definition: "The automation's latest engagement, newest first: each message's first open, click and reply by a person (a click on an email whose images were off counts as its open too, and shows once), and each goal reached that counts for the current goal.".into(),
    })
}
