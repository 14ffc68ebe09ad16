//! Date-based triggers (Birthday, Inactive for N days): evaluated once per
//! practice-local day, at the start of the automation's run window.
//!
//! Inactive for N enrolls every contact whose Last Activity is at least N
//! days old and who has not fired for this dormancy period yet (the period
//! is identified by the Last Activity it started from), so new activity and
//! another N days are needed to fire again. Turning the automation on does
//! not back-fill: the first evaluation is the next window start after
//! activation.

use chrono::NaiveDate;
use rusqlite::params;

use super::Ctx;
use super::enrollment;
use crate::catalog::Entry;
use crate::clock::{DAY, Millis};
use crate::error::Result;
use crate::model::automation::Trigger;
use crate::schedule::{RunWindow, birthday_fires_on, birthday_month_days_firing, local_date};

/// The next evaluation instant strictly after `now`.
pub fn next_evaluation(window: &RunWindow, now: Millis, tz: chrono_tz::Tz) -> Option<Millis> {
    let today = local_date(now, tz);
    (0..=9).find_map(|d| {
        let date = today.checked_add_days(chrono::Days::new(d))?;
        window.day_start(date, tz).filter(|t| *t > now)
    })
}

/// Evaluates a date-based trigger at `ctx.now`; returns how many contacts enrolled.
pub fn evaluate(ctx: &mut Ctx<'_>, entry: &Entry) -> Result<usize> {
    let today = local_date(ctx.now, ctx.settings.tz);
    let mut enrolled = 0;
    match &entry.current.def.trigger {
        Trigger::Birthday { offset } => {
            let mds = birthday_month_days_firing(*offset, today);
            let mut candidates: Vec<(String, String)> = Vec::new();
            {
                let mut stmt = ctx.conn.prepare_cached(
                    "SELECT id, dob FROM contacts WHERE dob IS NOT NULL AND substr(dob, 6, 5) = ?1 ORDER BY id",
                )?;
                for md in &mds {
                    let rows = stmt.query_map([md], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                    })?;
                    for row in rows {
                        candidates.push(row?);
                    }
                }
            }
            for (id, dob) in candidates {
                let Ok(dob) = NaiveDate::parse_from_str(&dob, "%Y-%m-%d") else {
                    continue;
                };
                if let Some(year) = birthday_fires_on(dob, *offset, today) {
                    let mark = format!("birthday:{year}");
                    if enrollment::enroll(ctx, entry, &id, Some(&mark), "birthday")?.is_some() {
                        enrolled += 1;
                    }
                }
            }
        }
        Trigger::InactiveForDays { days } => {
            let cutoff = ctx.now - (*days as i64) * DAY;
            let candidates: Vec<(String, Millis)> = {
                let mut stmt = ctx.conn.prepare_cached(
                    "SELECT c.id, c.last_activity FROM contacts c
                     WHERE c.last_activity <= ?1
                       AND NOT EXISTS (SELECT 1 FROM trigger_marks m WHERE m.automation_id = ?2
                                        AND m.contact_id = c.id AND m.mark = 'inactive:' || c.last_activity)
                     ORDER BY c.last_activity, c.id",
                )?;
                let rows =
                    stmt.query_map(params![cutoff, entry.id], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            for (id, last) in candidates {
                let mark = format!("inactive:{last}");
                if enrollment::enroll(ctx, entry, &id, Some(&mark), "inactive_for_days")?.is_some()
                {
                    enrolled += 1;
                }
            }
        }
        _ => {}
    }
    Ok(enrolled)
}
