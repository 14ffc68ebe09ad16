//! Automation goals (SPEC §2.5): a measurement per enrollment within the
//! lookback window after enrolling; an exit only when *Goal met* is on.
//! With no goal defined, the conversion counted is Lead → Patient.

use serde_json::json;

use super::enrollment::{self, Enrollment};
use super::log::Entry as Log;
use super::{Ctx, Signal};
use crate::clock::{DAY, Millis};
use crate::error::Result;
use crate::model::automation::GoalKind;

/// How the event log names a goal in its `goal_reached` rows (`detail.goal`):
/// the goal's id, or `lead_to_patient` for an automation without one.
pub fn logged_id(goal: Option<GoalKind>) -> &'static str {
    goal.map(GoalKind::id).unwrap_or("lead_to_patient")
}

/// The names under which the log records conversions that count for
/// `goal`: its own, and for Book appointment and no goal both theirs (the
/// same Lead → Patient flip, which happens once per contact).
pub fn counted_ids(goal: Option<GoalKind>) -> [&'static str; 2] {
    match goal {
        None | Some(GoalKind::BookAppointment) => ["book_appointment", "lead_to_patient"],
        Some(g) => [g.id(), g.id()],
    }
}

/// The goals reached of automation `?1` that count for its current goal
/// (`?2`, `?3`: [`counted_ids`]; an edit may have changed it), from the
/// `events_goals` index alone.
pub const REACHED_SQL: &str = "SELECT count(*) FROM events
     WHERE kind = 'goal_reached' AND automation_id = ?1 AND json_extract(detail, '$.goal') IN (?2, ?3)";

/// How many conversions of automation `automation_id` count for `goal`, its
/// current goal (the list's and the Performance tab's Goal reached).
pub fn reached_count(
    conn: &rusqlite::Connection,
    automation_id: &str,
    goal: Option<GoalKind>,
) -> Result<u64> {
    let [a, b] = counted_ids(goal);
    let n: i64 = conn
        .prepare_cached(REACHED_SQL)?
        .query_row(rusqlite::params![automation_id, a, b], |r| r.get(0))?;
    Ok(n as u64)
}

/// After an edit changed an automation's goal: each enrollment's
/// `goal_reached_at` becomes when it reached the new goal (from the log;
/// none yet: NULL), so reaching the old goal neither blocks the new one nor
/// answers the If/then "goal reached" for it.
pub fn rebase(
    conn: &rusqlite::Connection,
    automation_id: &str,
    goal: Option<GoalKind>,
) -> Result<()> {
    let [a, b] = counted_ids(goal);
    conn.prepare_cached(REBASE_CLEAR_SQL)?
        .execute([automation_id])?;
    conn.prepare_cached(REBASE_SET_SQL)?
        .execute(rusqlite::params![automation_id, a, b])?;
    Ok(())
}

/// [`rebase`], first: no enrollment of the automation has reached a goal.
const REBASE_CLEAR_SQL: &str = "UPDATE enrollments SET goal_reached_at = NULL
    WHERE automation_id = ?1 AND goal_reached_at IS NOT NULL";

/// [`rebase`], then: each enrollment's first conversion for the new goal,
/// from the automation's goal rows (`events_goals`; every goal row carries
/// its enrollment's automation). Looking the rows up per enrollment
/// instead searched every goal row of the log for each enrollment: at
/// 100,000 enrollments, half an hour inside the writer's transaction.
const REBASE_SET_SQL: &str = "UPDATE enrollments SET goal_reached_at = g.at
    FROM (SELECT enrollment_id, min(at) AS at FROM events
           WHERE automation_id = ?1 AND kind = 'goal_reached'
             AND json_extract(detail, '$.goal') IN (?2, ?3)
           GROUP BY enrollment_id) AS g
    WHERE enrollments.id = g.enrollment_id";

/// With *Goal met* on: the active enrollments of `automation_id` that have
/// reached its goal leave (after an edit turned the toggle on, or brought
/// back a goal they had reached).
pub fn exit_reached(ctx: &mut Ctx<'_>, automation_id: &str) -> Result<()> {
    for e in enrollment::active_of_automation(ctx.conn, automation_id)? {
        if e.goal_reached_at.is_some() {
            enrollment::exit(ctx, &e, "goal_met")?;
        }
    }
    Ok(())
}

/// The goals a signal satisfies.
pub fn goals_of(signal: &Signal) -> &'static [GoalKind] {
    match signal {
        Signal::FirstBooking => &[GoalKind::BookAppointment],
        Signal::AppointmentBooked { rebook: true } => &[GoalKind::RebookAppointment],
        Signal::Reactivated => &[GoalKind::PatientReactivation],
        Signal::ReviewSubmitted => &[GoalKind::ReviewSubmitted],
        Signal::VerificationComplete => &[GoalKind::VerificationComplete],
        Signal::PortalActivated => &[GoalKind::PortalActivated],
        Signal::EmailEngaged { .. }
        | Signal::SmsReplied { .. }
        | Signal::EmailReplied { .. }
        | Signal::FormSubmitted { .. }
        | Signal::PageVisited => &[GoalKind::Engagement],
        _ => &[],
    }
}

/// Marks the goal reached on every enrollment of the contact whose goal one of
/// the signals satisfies, inside its lookback.
pub fn evaluate(ctx: &mut Ctx<'_>, contact_id: &str, signals: &[Signal]) -> Result<()> {
    let hit: Vec<GoalKind> = signals
        .iter()
        .flat_map(|s| goals_of(s).iter().copied())
        .collect();
    let flipped = signals.contains(&Signal::FirstBooking);
    if hit.is_empty() {
        return Ok(());
    }
    let catalog = ctx.catalog;
    let reachable = |goal: Option<GoalKind>| match goal {
        Some(goal) => hit.contains(&goal),
        None => flipped,
    };
    // Only enrollments whose lookback can still be open, in an automation
    // whose goal these signals reach; none such: no enrollment to read.
    let Some(longest) = catalog
        .all()
        .filter(|a| reachable(a.current.def.goal))
        .map(|a| a.current.def.goal_lookback_days)
        .max()
    else {
        return Ok(());
    };
    // When it happened (a booking pushed late still counts inside the
    // lookback, one made before the enrollment does not).
    let at = ctx.event_time();
    // (A day more than the longest lookback: a window of calendar days
    // spans a DST change's extra hour.)
    let since = at - (i64::from(longest) + 1) * DAY;
    // One conversion per contact and automation: when the contact enrolled
    // again (a repeat trigger), the enrollment begun last by `at` has it,
    // not every earlier one whose lookback is still open.
    let mut latest: Vec<Enrollment> = Vec::new();
    for e in enrollment::of_contact(ctx.conn, contact_id, "1", since)? {
        if e.enrolled_at > at {
            continue;
        }
        match latest
            .iter_mut()
            .find(|l| l.automation_id == e.automation_id)
        {
            Some(l) if (l.enrolled_at, l.id) < (e.enrolled_at, e.id) => *l = e,
            Some(_) => {}
            None => latest.push(e),
        }
    }
    for e in latest {
        let Some(entry) = catalog.get(&e.automation_id) else {
            continue;
        };
        let def = &entry.current.def;
        if e.goal_reached_at.is_some()
            || !reachable(def.goal)
            || at > lookback_end(e.enrolled_at, def.goal_lookback_days, ctx.settings.tz)
        {
            continue;
        }
        converted(ctx, &e, def, at)?;
    }
    Ok(())
}

/// A new enrollment dated before now (its trigger happened earlier than
/// it was pushed) reaches the goal at once if the contact's first booking
/// (or the host's Lead → Patient flip) happened between its trigger and
/// now: pushed before the trigger, it found no enrollment to count for.
/// True when the contact then leaves (*Goal met*). Book and no goal only:
/// the module keeps when each contact became a Patient, not every other
/// goal's activity.
pub fn reached_before_enrolling(ctx: &mut Ctx<'_>, e: &mut Enrollment) -> Result<bool> {
    use super::contacts::{PatientBy, became_patient};
    let Some(entry) = ctx.catalog.get(&e.automation_id) else {
        return Ok(false);
    };
    let def = &entry.current.def;
    if e.enrolled_at >= ctx.now || !matches!(def.goal, None | Some(GoalKind::BookAppointment)) {
        return Ok(false);
    }
    let end = lookback_end(e.enrolled_at, def.goal_lookback_days, ctx.settings.tz);
    let Some((at, Some(PatientBy::FirstBooking | PatientBy::Host))) =
        became_patient(ctx.conn, &e.contact_id)?
    else {
        return Ok(false);
    };
    // At the enrollment's own instant, the flip is the event that enrolls
    // (a booking that fires "Status changed to Patient"): an event is never
    // the goal of the enrollment it creates.
    if at <= e.enrolled_at || at > end.min(ctx.now) {
        return Ok(false);
    }
    // One conversion per contact and automation: an earlier run that
    // already counted this flip keeps it.
    let counted: bool = ctx
        .conn
        .prepare_cached(
            "SELECT EXISTS(SELECT 1 FROM enrollments
              WHERE automation_id = ?1 AND contact_id = ?2 AND goal_reached_at = ?3 AND id <> ?4)",
        )?
        .query_row(
            rusqlite::params![e.automation_id, e.contact_id, at, e.id],
            |r| r.get(0),
        )?;
    if counted {
        return Ok(false);
    }
    e.goal_reached_at = Some(at);
    converted(ctx, e, def, at)
}

/// Enrollment `e` of an automation defined as `def` reached its goal at
/// `at`: recorded ([`reach`]); with *Goal met* on, an active enrollment
/// leaves (true), and a completed one's queued work is withdrawn at
/// hand-over (`messaging::handover`), screened rows too.
fn converted(
    ctx: &mut Ctx<'_>,
    e: &Enrollment,
    def: &crate::model::automation::AutomationDefinition,
    at: Millis,
) -> Result<bool> {
    reach(ctx, e, def.goal, at)?;
    if !def.leaves_on_goal() {
        return Ok(false);
    }
    if e.state == "active" {
        enrollment::exit(ctx, e, "goal_met")?;
        return Ok(true);
    }
    ctx.rescreen(&e.contact_id);
    Ok(false)
}

/// The last moment of the goal's lookback after enrolling at
/// `enrolled_at`: `days` calendar days in the practice's time zone `tz`,
/// at the same wall-clock time across a DST change, as a Delay of days
/// counts them.
fn lookback_end(enrolled_at: Millis, days: u32, tz: chrono_tz::Tz) -> Millis {
    crate::schedule::add_local_days(enrolled_at, days, tz)
}

/// Records the goal reached at `at`, when it happened (before now when the
/// host pushed the activity late): the enrollment's `goal_reached_at` and
/// the log row's time, so that the charts date it by the day it happened.
fn reach(ctx: &Ctx<'_>, e: &Enrollment, goal: Option<GoalKind>, at: Millis) -> Result<()> {
    ctx.conn
        .prepare_cached(
            "UPDATE enrollments SET goal_reached_at = ?2 WHERE id = ?1 AND goal_reached_at IS NULL",
        )?
        .execute(rusqlite::params![e.id, at])?;
    Log {
        automation_id: Some(&e.automation_id),
        version: Some(e.version),
        enrollment_id: Some(e.id),
        step_id: e.step_id.as_deref(),
        detail: Some(json!({"goal": logged_id(goal), "while": e.state})),
        ..Log::new("goal_reached", &e.contact_id)
    }
    .write(ctx.conn, at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{self, Access};

    /// The rebase reads the automation's own goal rows through the goal
    /// index, once, not the log's goal rows once per enrollment.
    #[test]
    fn a_rebase_searches_the_automations_goal_rows_once() {
        let dir = tempfile::tempdir().unwrap();
        let conn = store::open(&dir.path().join("g.db"), Access::Write).unwrap();
        let plan = store::query_plan(&conn, REBASE_SET_SQL, ["a1", "book", "book"]);
        assert!(
            plan.iter()
                .any(|s| s.contains("events_goals (automation_id=? AND kind=?")),
            "{plan:?}"
        );
        assert!(!plan.iter().any(|s| s.contains("CORRELATED")), "{plan:?}");
        rebase(&conn, "a1", Some(GoalKind::BookAppointment)).unwrap();
    }

    /// The lookback is calendar days in the practice's time zone: 30 days
    /// after 1 March 10:00 EST is 31 March 10:00 EDT (30 × 24 hours would
    /// end at 11:00), and after 25 October 10:00 EDT, 24 November 10:00
    /// EST (not 09:00).
    #[test]
    fn the_lookback_counts_calendar_days_across_dst() {
        let tz: chrono_tz::Tz = "America/New_York".parse().unwrap();
        let at = |s: &str| crate::clock::parse_rfc3339(s).unwrap();
        assert_eq!(
            lookback_end(at("2026-03-01T10:00:00-05:00"), 30, tz),
            at("2026-03-31T10:00:00-04:00")
        );
        assert_eq!(
            lookback_end(at("2026-10-25T10:00:00-04:00"), 30, tz),
            at("2026-11-24T10:00:00-05:00")
        );
    }
}
