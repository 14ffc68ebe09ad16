//! Date-based triggers (Birthday, Inactive for N days): evaluated once per
//! practice-local day, at the start of the automation's run window.
//!
//! Birthday covers every practice-local day since the previous evaluation:
//! the days the run window is closed (a Saturday birthday with a Monday to
//! Friday window fires on Monday, its steps waiting for the window like
//! any step) and the days a host on the system clock was down (at most a
//! week back). Days before activation are not covered.
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
use crate::model::automation::{AutomationDefinition, Trigger};
use crate::schedule::{RunWindow, birthday_fires_on, birthday_month_days_firing, local_date};
use crate::settings::Resolved;

/// The next evaluation of automation `def`'s date trigger strictly after
/// `now`: the start of its run window (or the module's default window) on
/// its next open day, in the practice's time zone of `settings`.
pub fn next_evaluation(
    def: &AutomationDefinition,
    settings: &Resolved,
    now: Millis,
) -> Option<Millis> {
    let window = def.window(&settings.doc.default_run_window);
    let tz = settings.tz;
    let today = local_date(now, tz);
    (0..=9).find_map(|d| {
        let date = today.checked_add_days(chrono::Days::new(d))?;
        window.day_start(date, tz).filter(|t| *t > now)
    })
}

/// How far back a late evaluation catches up on birthdays.
const CATCH_UP_DAYS: u64 = 7;

/// The practice-local days an evaluation due at `due` and run at `now`
/// covers, to `now`'s day, never more than a week back: from the day after
/// the last day an evaluation covered (`evaluated_through`), or, for the
/// first evaluation since activation, from the day after the previous day
/// the window opened (or the day after activation, whichever is later;
/// never after `due`'s own day). Counting from the last day covered keeps
/// an edit of the window, or of the time zone, from losing the days
/// between (the window's previous open day is the new window's).
fn days_covered(
    window: &RunWindow,
    due: Millis,
    now: Millis,
    activated_at: Option<Millis>,
    evaluated_through: Option<NaiveDate>,
    tz: chrono_tz::Tz,
) -> Vec<NaiveDate> {
    let today = local_date(now, tz);
    let due_day = local_date(due, tz).min(today);
    let mut first = due_day;
    for back in 1..=CATCH_UP_DAYS {
        let Some(day) = due_day.checked_sub_days(chrono::Days::new(back)) else {
            break;
        };
        if window.day_start(day, tz).is_some() {
            break;
        }
        first = day;
    }
    if let Some(after) = activated_at.and_then(|a| local_date(a, tz).succ_opt()) {
        first = first.max(after).min(due_day);
    }
    if let Some(after) = evaluated_through.and_then(|d| d.succ_opt()) {
        first = after;
    }
    if let Some(limit) = today.checked_sub_days(chrono::Days::new(CATCH_UP_DAYS)) {
        first = first.max(limit);
    }
    first.iter_days().take_while(|d| *d <= today).collect()
}

/// Evaluates a date-based trigger at `ctx.now` (the evaluation was due at
/// `due`); returns how many contacts enrolled.
pub fn evaluate(ctx: &mut Ctx<'_>, entry: &Entry, due: Millis) -> Result<usize> {
    let mut enrolled = 0;
    match &entry.current.def.trigger {
        Trigger::Birthday { offset } => {
            let window = entry
                .current
                .def
                .window(&ctx.settings.doc.default_run_window);
            let through: Option<String> = ctx
                .conn
                .prepare_cached("SELECT evaluated_through FROM automations WHERE id = ?1")?
                .query_row([&entry.id], |r| r.get(0))?;
            let through = through.and_then(|d| d.parse::<NaiveDate>().ok());
            let tz = ctx.settings.tz;
            let days = days_covered(window, due, ctx.now, entry.activated_at, through, tz);
            ctx.conn
                .prepare_cached("UPDATE automations SET evaluated_through = ?2 WHERE id = ?1")?
                .execute(params![entry.id, local_date(ctx.now, tz).to_string()])?;
            let mut candidates: Vec<(String, String, NaiveDate)> = Vec::new();
            {
                let mut stmt = ctx.conn.prepare_cached(
                    "SELECT id, dob FROM contacts WHERE dob IS NOT NULL AND substr(dob, 6, 5) = ?1 ORDER BY id",
                )?;
                for day in days {
                    for md in birthday_month_days_firing(*offset, day) {
                        let rows = stmt.query_map([md], |r| {
                            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, day))
                        })?;
                        for row in rows {
                            candidates.push(row?);
                        }
                    }
                }
            }
            for (id, dob, day) in candidates {
                let Ok(dob) = NaiveDate::parse_from_str(&dob, "%Y-%m-%d") else {
                    continue;
                };
                if let Some(year) = birthday_fires_on(dob, *offset, day) {
                    let mark = format!("birthday:{year}");
                    if enrollment::enroll(ctx, entry, &id, Some(&mark), "birthday", ctx.now)?
                        .is_some()
                    {
                        enrolled += 1;
                    }
                }
            }
        }
        Trigger::InactiveForDays { days } => {
            // Whole calendar days in the practice's zone, as the builder's
            // "days since last activity" counts them: a contact last active
            // on 1 March is N days inactive on the Nth day after, whatever
            // the hour of the visit. (Elapsed hours made that day depend on
            // the visit's hour against the window's, and on a DST change.)
            let tz = ctx.settings.tz;
            let first_day_not_counted = local_date(ctx.now, tz)
                .checked_sub_days(chrono::Days::new(u64::from(*days).saturating_sub(1)));
            let cutoff = first_day_not_counted.map_or(ctx.now - (*days as i64) * DAY, |d| {
                crate::schedule::local_to_utc_ms(d, 0, tz) - 1
            });
            // A dormancy period fires once: after a firing (its mark's `at`,
            // an enrollment or one ignored for an active enrollment), only
            // the contact's own activity after it starts a new one (their
            // engagement clock). The module's messages, the host's record
            // updates and activity that happened before, pushed late, move
            // Last Activity but are the same period: a win-back's own text
            // a week after it fired must not make it fire again.
            let candidates: Vec<(String, Millis)> = {
                let mut stmt = ctx.conn.prepare_cached(
                    "SELECT c.id, c.last_activity FROM contacts c
                     WHERE c.last_activity <= ?1
                       AND NOT EXISTS (SELECT 1 FROM trigger_marks m WHERE m.automation_id = ?2
                              AND m.contact_id = c.id AND m.mark >= 'inactive:' AND m.mark < 'inactive;'
                              AND m.at >= coalesce(c.last_engaged_at, -9223372036854775808))
                     ORDER BY c.last_activity, c.id",
                )?;
                let rows =
                    stmt.query_map(params![cutoff, entry.id], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            for (id, last) in candidates {
                let mark = format!("inactive:{last}");
                if enrollment::enroll(ctx, entry, &id, Some(&mark), "inactive_for_days", ctx.now)?
                    .is_some()
                {
                    enrolled += 1;
                }
            }
        }
        _ => {}
    }
    Ok(enrolled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::parse_rfc3339;

    fn days(window: &RunWindow, due: &str, now: &str, activated: Option<&str>) -> Vec<String> {
        let at = |s: &str| parse_rfc3339(s).unwrap();
        days_covered(
            window,
            at(due),
            at(now),
            activated.map(at),
            None,
            chrono_tz::America::New_York,
        )
        .iter()
        .map(|d| d.to_string())
        .collect()
    }

    #[test]
    fn an_evaluation_covers_the_closed_days_before_it() {
        let office = RunWindow::business_hours();
        // Monday 2026-01-12 09:00 EST: the weekend, then Monday.
        assert_eq!(
            days(
                &office,
                "2026-01-12T14:00:00Z",
                "2026-01-12T14:00:00Z",
                Some("2026-01-01T12:00:00Z")
            ),
            ["2026-01-10", "2026-01-11", "2026-01-12"]
        );
        // Tuesday: Tuesday only.
        assert_eq!(
            days(
                &office,
                "2026-01-13T14:00:00Z",
                "2026-01-13T14:00:00Z",
                None
            ),
            ["2026-01-13"]
        );
        // Any time: every day is its own evaluation.
        assert_eq!(
            days(
                &RunWindow::AnyTime {},
                "2026-01-12T05:00:00Z",
                "2026-01-12T05:00:00Z",
                None
            ),
            ["2026-01-12"]
        );
    }

    #[test]
    fn a_late_evaluation_catches_up_from_its_due_day_but_not_before_activation() {
        let office = RunWindow::business_hours();
        // Due Monday, run Thursday (a host on the system clock was down).
        assert_eq!(
            days(
                &office,
                "2026-01-12T14:00:00Z",
                "2026-01-15T15:00:00Z",
                None
            ),
            [
                "2026-01-10",
                "2026-01-11",
                "2026-01-12",
                "2026-01-13",
                "2026-01-14",
                "2026-01-15"
            ]
        );
        // Activated on Sunday: Saturday's birthdays are not back-filled.
        assert_eq!(
            days(
                &office,
                "2026-01-12T14:00:00Z",
                "2026-01-12T14:00:00Z",
                Some("2026-01-11T15:00:00Z")
            ),
            ["2026-01-12"]
        );
        // Activated on Monday before the window opened: Monday still counts.
        assert_eq!(
            days(
                &office,
                "2026-01-12T14:00:00Z",
                "2026-01-12T14:00:00Z",
                Some("2026-01-12T12:00:00Z")
            ),
            ["2026-01-12"]
        );
        // Down for a month: a week back at most.
        assert_eq!(
            days(
                &office,
                "2026-01-12T14:00:00Z",
                "2026-02-12T15:00:00Z",
                None
            )
            .len(),
            8
        );
    }
}
