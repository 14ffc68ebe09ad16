//! Enrollments: a contact's walk through one automation.
//!
//! An enrollment sits at one step (`step_id`; none means End) in one of three
//! phases: `ready` (run the step as soon as the run window is open),
//! `waiting` (a Delay is counting down) or `calling` (a custom step's plugin
//! call is in the outbox; the worker moves it on when the answer comes). `wake_at` tells the worker when to
//! come back. An enrollment ends by completing (reaching End) or exiting
//! (an unenrollment toggle, a global opt-out, the automation being deleted).
//! Steps of a paused automation hold where they are and resume on reactivation.

use rusqlite::{OptionalExtension, params};
use serde_json::{Map, Value, json};

use super::contacts::{self, AuditSource};
use super::log::Entry as Log;
use super::{Ctx, Signal, conditions, lists, triggers};
use crate::catalog::{Entry, Version};
use crate::clock::{MINUTE, Millis};
use crate::error::{Error, Result};
use crate::messaging::{compose, consent};
use crate::model::automation::{Assignee, AutomationStatus, SettableProperty, Step, StepKind};
use crate::outbox::{Effect, EffectKind};

/// Where an enrollment is in its current step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Run the step when the window is open.
    Ready,
    /// A delay is counting down.
    Waiting,
    /// A custom step's plugin call is under way.
    Calling,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Ready => "ready",
            Phase::Waiting => "waiting",
            Phase::Calling => "calling",
        }
    }
}

/// One enrollment as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Enrollment {
    /// Row id.
    pub id: i64,
    /// Automation.
    pub automation_id: String,
    /// Contact.
    pub contact_id: String,
    /// Version it runs.
    pub version: i64,
    /// `active`, `completed`, `exited`.
    pub state: String,
    /// Current step (None: at End).
    pub step_id: Option<String>,
    /// Phase in the current step.
    pub phase: Phase,
    /// When the current step started executing.
    pub step_started_at: Option<Millis>,
    /// When the worker should come back.
    pub wake_at: Option<Millis>,
    /// Enrollment time.
    pub enrolled_at: Millis,
    /// When the goal was reached.
    pub goal_reached_at: Option<Millis>,
    /// The steps it has run, kept once an edit migrated it (None before):
    /// an edit can put a step it ran after its position, and a step runs
    /// once per enrollment.
    pub ran_steps: Option<Vec<String>>,
}

const COLUMNS: &str = "id, automation_id, contact_id, version, state, step_id, step_phase, step_started_at, wake_at, enrolled_at, goal_reached_at, ran_steps";

fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<Enrollment> {
    Ok(Enrollment {
        id: r.get(0)?,
        automation_id: r.get(1)?,
        contact_id: r.get(2)?,
        version: r.get(3)?,
        state: r.get(4)?,
        step_id: r.get(5)?,
        phase: match r.get_ref(6)?.as_str()? {
            "waiting" => Phase::Waiting,
            "calling" => Phase::Calling,
            _ => Phase::Ready,
        },
        step_started_at: r.get(7)?,
        wake_at: r.get(8)?,
        enrolled_at: r.get(9)?,
        goal_reached_at: r.get(10)?,
        ran_steps: match r.get_ref(11)?.as_str_or_null()? {
            Some(text) => Some(serde_json::from_str(text).map_err(|err| {
                rusqlite::Error::FromSqlConversionFailure(
                    11,
                    rusqlite::types::Type::Text,
                    err.into(),
                )
            })?),
            None => None,
        },
    })
}

/// Loads an enrollment.
pub fn load(conn: &rusqlite::Connection, id: i64) -> Result<Option<Enrollment>> {
    Ok(conn
        .prepare_cached(&format!("SELECT {COLUMNS} FROM enrollments WHERE id = ?1"))?
        .query_row([id], read)
        .optional()?)
}

/// Enrollments of a contact matching an extra SQL condition.
pub fn of_contact(
    conn: &rusqlite::Connection,
    contact_id: &str,
    filter: &str,
    since: Millis,
) -> Result<Vec<Enrollment>> {
    // Sorted here rather than with ORDER BY id: with that ORDER BY and the
    // range on enrolled_at, SQLite re-prepares the statement at every bind.
    let sql = format!(
        "SELECT {COLUMNS} FROM enrollments WHERE contact_id = ?1 AND enrolled_at >= ?2 AND {filter}"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params![contact_id, since], read)?;
    let mut v = rows.collect::<rusqlite::Result<Vec<_>>>()?;
    v.sort_unstable_by_key(|e| e.id);
    Ok(v)
}

/// Active enrollments of an automation.
pub fn active_of_automation(
    conn: &rusqlite::Connection,
    automation_id: &str,
) -> Result<Vec<Enrollment>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM enrollments WHERE automation_id = ?1 AND state = 'active' ORDER BY id"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map([automation_id], read)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Persists the mutable part of an enrollment.
pub fn save(conn: &rusqlite::Connection, e: &Enrollment) -> Result<()> {
    conn.prepare_cached(
        "UPDATE enrollments SET version = ?2, step_id = ?3, step_phase = ?4, step_started_at = ?5,
                                wake_at = ?6, goal_reached_at = ?7, ran_steps = ?8 WHERE id = ?1",
    )?
    .execute(params![
        e.id,
        e.version,
        e.step_id,
        e.phase.as_str(),
        e.step_started_at,
        e.wake_at,
        e.goal_reached_at,
        e.ran_steps
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|err| Error::Internal(err.to_string()))?,
    ])?;
    Ok(())
}

fn log_for<'a>(kind: &'a str, e: &'a Enrollment) -> Log<'a> {
    Log {
        automation_id: Some(&e.automation_id),
        version: Some(e.version),
        enrollment_id: Some(e.id),
        ..Log::new(kind, &e.contact_id)
    }
}

/// Enrolls a contact unless they are already active in the automation (or a
/// once-only `mark` was already used). Runs the first steps at once.
/// `triggered_at` is when the trigger happened (the host's `occurred_at`
/// for a pushed event, at most now): the enrollment dates from it, so that
/// its goal's lookback counts what the contact did after the trigger even
/// when the host pushed both late or in one batch. Its steps start now.
/// Returns the new enrollment id.
pub fn enroll(
    ctx: &mut Ctx<'_>,
    entry: &Entry,
    contact_id: &str,
    mark: Option<&str>,
    cause: &str,
    triggered_at: Millis,
) -> Result<Option<i64>> {
    let enrolled_at = triggered_at.min(ctx.now);
    if entry.status != AutomationStatus::Active {
        return Ok(None);
    }
    let ignored = |reason: &str| Log {
        automation_id: Some(&entry.id),
        detail: Some(json!({"reason": reason, "cause": cause})),
        ..Log::new("trigger_ignored", contact_id)
    };
    // One statement both asks and enrolls: an active enrollment in this
    // automation makes the insert a no-op (the partial unique index
    // `enrollments_one_active`).
    let version = &entry.current;
    let first = version.flow.first().map(str::to_string);
    let inserted = ctx
        .conn
        .prepare_cached(
            "INSERT INTO enrollments (automation_id, contact_id, enrolled_version, version, state, step_id, enrolled_at)
             VALUES (?1, ?2, ?3, ?3, 'active', ?4, ?5) ON CONFLICT DO NOTHING",
        )?
        .execute(params![entry.id, contact_id, version.number, first, enrolled_at])?;
    // Spends a once-only firing's mark; false when it was spent before.
    let spend = |mark: &str| -> Result<bool> {
        Ok(ctx
            .conn
            .prepare_cached("INSERT INTO trigger_marks (automation_id, contact_id, mark, at) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING")?
            .execute(params![entry.id, contact_id, mark, ctx.now])?
            == 1)
    };
    if inserted == 0 {
        // Recorded and ignored (SPEC §2.2): a once-only firing (a dormancy
        // period, a birthday's year, a once-ever trigger) is spent, not
        // tried again at every evaluation until the enrollment ends.
        if let Some(mark) = mark {
            spend(mark)?;
        }
        ignored("already_enrolled").write(ctx.conn, ctx.now)?;
        return Ok(None);
    }
    let id = ctx.conn.last_insert_rowid();
    if let Some(mark) = mark
        && !spend(mark)?
    {
        // A once-only trigger that already fired: take the enrollment
        // back (nothing has read it; no effect carries its id yet).
        ctx.conn
            .prepare_cached("DELETE FROM enrollments WHERE id = ?1")?
            .execute([id])?;
        ignored("already_fired").write(ctx.conn, ctx.now)?;
        return Ok(None);
    }
    Log {
        automation_id: Some(&entry.id),
        version: Some(version.number),
        enrollment_id: Some(id),
        detail: Some(json!({"cause": cause})),
        ..Log::new("enrolled", contact_id)
    }
    .write(ctx.conn, enrolled_at)?;
    // The row just inserted, without reading it back.
    let mut e = Enrollment {
        id,
        automation_id: entry.id.clone(),
        contact_id: contact_id.to_string(),
        version: version.number,
        state: "active".into(),
        step_id: first,
        phase: Phase::Ready,
        step_started_at: None,
        wake_at: None,
        enrolled_at,
        goal_reached_at: None,
        ran_steps: None,
    };
    if crate::core::goals::reached_before_enrolling(ctx, &mut e)? {
        return Ok(Some(id));
    }
    advance_loaded(ctx, e)?;
    Ok(Some(id))
}

/// Ends an enrollment as exited with a reason; an enrollment that already
/// ended (a stale copy) is left as it is, and nothing is logged.
pub fn exit(ctx: &Ctx<'_>, e: &Enrollment, reason: &str) -> Result<()> {
    let ended = ctx
        .conn
        .prepare_cached(
            "UPDATE enrollments SET state = 'exited', ended_at = ?2, exit_reason = ?3, wake_at = NULL
             WHERE id = ?1 AND state = 'active'",
        )?
        .execute(params![e.id, ctx.now, reason])?;
    if ended == 0 {
        return Ok(());
    }
    // What it queued and is already screened for hand-over is withdrawn.
    ctx.rescreen(&e.contact_id);
    Log {
        step_id: e.step_id.as_deref(),
        detail: Some(json!({"reason": reason})),
        ..log_for("exited", e)
    }
    .write(ctx.conn, ctx.now)
}

fn complete(ctx: &Ctx<'_>, e: &Enrollment) -> Result<()> {
    let ended = ctx
        .conn
        .prepare_cached(
            "UPDATE enrollments SET state = 'completed', ended_at = ?2, step_id = NULL, wake_at = NULL
             WHERE id = ?1 AND state = 'active'",
        )?
        .execute(params![e.id, ctx.now])?;
    if ended == 0 {
        return Ok(());
    }
    log_for("completed", e).write(ctx.conn, ctx.now)
}

/// Called by the worker when `wake_at` is due.
pub fn wake(ctx: &mut Ctx<'_>, id: i64) -> Result<()> {
    let Some(mut e) = load(ctx.conn, id)? else {
        return Ok(());
    };
    if e.state != "active" || e.wake_at.is_none_or(|w| w > ctx.now) {
        return Ok(());
    }
    e.wake_at = None;
    save(ctx.conn, &e)?;
    advance(ctx, id)
}

/// Runs an enrollment forward from where it stands until it waits, holds or ends.
pub fn advance(ctx: &mut Ctx<'_>, id: i64) -> Result<()> {
    let Some(e) = load(ctx.conn, id)? else {
        return Ok(());
    };
    advance_loaded(ctx, e)
}

/// [`advance`] for an enrollment as it stands in the database.
fn advance_loaded(ctx: &mut Ctx<'_>, mut e: Enrollment) -> Result<()> {
    if e.state != "active" {
        return Ok(());
    }
    let catalog = ctx.catalog;
    let Some(entry) = catalog.get(&e.automation_id) else {
        return Ok(());
    };
    if entry.status != AutomationStatus::Active {
        return Ok(()); // paused: hold here until reactivated
    }
    let version = entry.current.clone();
    if e.version != version.number {
        // Edits migrate enrollments eagerly; this is a safety net.
        return Err(Error::Internal(format!(
            "enrollment {} runs version {} of {}, current is {}",
            e.id, e.version, e.automation_id, version.number
        )));
    }
    let window = version
        .def
        .window(&ctx.settings.doc.default_run_window)
        .clone();
    loop {
        let Some(step_id) = e.step_id.clone() else {
            return complete(ctx, &e);
        };
        let Some(step) = version.flow.step(&step_id).cloned() else {
            return Err(Error::Internal(format!(
                "enrollment {} is at unknown step {step_id}",
                e.id
            )));
        };
        if e.phase == Phase::Calling {
            // The plugin's answer moves it on (finish_custom_step).
            return save(ctx.conn, &e);
        }
        if e.phase == Phase::Waiting {
            if e.wake_at.is_some_and(|w| w > ctx.now) {
                return save(ctx.conn, &e);
            }
            step_done(ctx, &e, &step_id, None)?;
            e.step_id = version.flow.next_after(&step_id).map(str::to_string);
            e.phase = Phase::Ready;
            e.step_started_at = None;
            continue;
        }
        // A step that splits the path runs again: an If/then has no effect
        // and chooses the path on, a branching plugin step is called again
        // under a key of its own (`call_key`). Others are passed over at
        // once, not when the window opens.
        let again = step.kind.paths().is_none()
            && e.ran_steps
                .as_ref()
                .is_some_and(|ran| ran.contains(&step_id));
        if again {
            Log {
                step_id: Some(&step_id),
                detail: Some(json!({"type": step.kind.type_id(), "reason": "already_run"})),
                ..log_for("step_skipped", &e)
            }
            .write(ctx.conn, ctx.now)?;
            e.step_id = version.flow.next_after(&step_id).map(str::to_string);
            e.wake_at = None;
            continue;
        }
        // A delay starts counting at once: the run window applies to the
        // step after it (SPEC §2.3), not to the wait itself.
        let open_at = if matches!(step.kind, StepKind::Delay { .. }) {
            ctx.now
        } else if goes_by_sms(ctx, &e.contact_id, &step.kind)? {
            sms_open_at(ctx, &window, &e.contact_id)?
        } else {
            window
                .next_open(ctx.now, ctx.settings.tz)
                .unwrap_or(ctx.now)
        };
        if open_at > ctx.now {
            e.wake_at = Some(open_at);
            return save(ctx.conn, &e);
        }
        if let Some(ran) = e.ran_steps.as_mut() {
            ran.push(step_id.clone());
        }
        e.step_started_at = Some(ctx.now);
        Log {
            step_id: Some(&step_id),
            detail: Some(json!({"type": step.kind.type_id()})),
            ..log_for("step_executed", &e)
        }
        .write(ctx.conn, ctx.now)?;
        // Persist position before a step that can cascade: a property change
        // or a list join fires triggers and goals, which read this
        // enrollment. Other steps (messages, tasks, branches, delays, plugin
        // calls) read and write no enrollment row, so their position is
        // written once, by the save or the completion that ends this run.
        let cascades = matches!(
            step.kind,
            StepKind::SetProperty { .. } | StepKind::AddToList { .. }
        );
        if cascades {
            save(ctx.conn, &e)?;
        }
        let next = match run_step(ctx, &e, &step, &version)? {
            StepOutcome::Wait(until) => {
                e.phase = Phase::Waiting;
                e.wake_at = Some(until);
                return save(ctx.conn, &e);
            }
            StepOutcome::Call => {
                e.phase = Phase::Calling;
                e.wake_at = None;
                return save(ctx.conn, &e);
            }
            StepOutcome::Next => version.flow.next_after(&step_id).map(str::to_string),
            StepOutcome::Goto(next) => next,
            StepOutcome::Exited => return Ok(()),
        };
        // A cascade may have ended this enrollment (e.g. a global opt-out) or
        // reached its goal. Only these steps fire triggers.
        if cascades {
            match load(ctx.conn, e.id)? {
                Some(fresh) if fresh.state == "active" => e.goal_reached_at = fresh.goal_reached_at,
                _ => return Ok(()),
            }
        }
        e.step_id = next;
        e.step_started_at = None;
    }
}

enum StepOutcome {
    Next,
    Goto(Option<String>),
    Wait(Millis),
    /// A plugin call was queued: hold until its answer.
    Call,
    Exited,
}

fn step_done(ctx: &Ctx<'_>, e: &Enrollment, step_id: &str, detail: Option<Value>) -> Result<()> {
    let duration = e.step_started_at.map(|s| ctx.now - s).unwrap_or(0);
    let mut d = detail.unwrap_or_else(|| json!({}));
    d["duration_ms"] = json!(duration);
    Log {
        step_id: Some(step_id),
        detail: Some(d),
        ..log_for("step_completed", e)
    }
    .write(ctx.conn, ctx.now)
}

fn step_failed(ctx: &Ctx<'_>, e: &Enrollment, step_id: &str, reason: &str) -> Result<()> {
    Log {
        step_id: Some(step_id),
        detail: Some(json!({"reason": reason})),
        ..log_for("step_failed", e)
    }
    .write(ctx.conn, ctx.now)
}

/// The idempotency key of the effect of one step of one enrollment:
/// `<install>-e<enrollment>-<step>`. The keys derived from it add parts:
/// `-r<n>` (a custom step's n-th call, `call_key`), `-fallback` (a
/// message's fallback, [`fallback_key`]), `-set-<property>` (a custom step's
/// property write-back). Parts are separated by `-`, so a step id or a
/// property name is written through [`key_part`]: no two effects share a key
/// whatever ids staff give their steps (a step `remind-fallback` beside a
/// step `remind` with a fallback).
pub fn effect_key(install_id: &str, enrollment_id: i64, step_id: &str) -> String {
    format!("{install_id}-e{enrollment_id}-{}", key_part(step_id))
}

/// A step id or property name as one part of an idempotency key: `%` and
/// `-` are written `%25` and `%2D`, so the part holds no separator. Names
/// without either are written as they are.
pub fn key_part(name: &str) -> std::borrow::Cow<'_, str> {
    if name.contains(['-', '%']) {
        name.replace('%', "%25").replace('-', "%2D").into()
    } else {
        name.into()
    }
}

/// The idempotency key of a custom step's plugin call. A branching custom
/// step reached again after an edit (see ARCHITECTURE.md, "Editing a live
/// automation") is called again, as an If/then decides again: its n-th call
/// (n > 1, counted in the enrollment's `ran_steps`, which is saved in the
/// same transaction as the call) is keyed `<step key>-r<n>`, so it neither
/// collides with the first call's row nor changes key when re-delivered.
fn call_key(install_id: &str, e: &Enrollment, sid: &str) -> String {
    let key = effect_key(install_id, e.id, sid);
    let runs = e
        .ran_steps
        .as_ref()
        .map_or(0, |ran| ran.iter().filter(|s| *s == sid).count());
    if runs > 1 { rerun_key(&key, runs) } else { key }
}

/// The key of the `runs`-th call of a custom step keyed `key` ([`call_key`]).
fn rerun_key(key: &str, runs: usize) -> String {
    format!("{key}-r{runs}")
}

/// The key of a custom step's write-back of `property`, for its call keyed
/// `call` ([`call_key`]).
fn property_key(call: &str, property: &str) -> String {
    format!("{call}-set-{}", key_part(property))
}

fn run_step(
    ctx: &mut Ctx<'_>,
    e: &Enrollment,
    step: &Step,
    version: &Version,
) -> Result<StepOutcome> {
    let sid = step.id.as_str();
    match &step.kind {
        StepKind::Delay { amount, unit } => Ok(StepOutcome::Wait(unit.after(
            ctx.now,
            *amount,
            ctx.settings.tz,
        ))),
        StepKind::Branch { condition, .. } => {
            let contact = contacts::require(ctx.conn, &e.contact_id)?;
            let yes = conditions::evaluate(ctx, e, &contact, condition)?;
            step_done(
                ctx,
                e,
                sid,
                Some(json!({"path": if yes { "yes" } else { "no" }})),
            )?;
            Ok(StepOutcome::Goto(
                version.flow.branch_head(sid, yes).map(str::to_string),
            ))
        }
        StepKind::SendEmail { .. } | StepKind::SendSms { .. } => {
            send_message(ctx, e, step)?;
            Ok(StepOutcome::Next)
        }
        StepKind::CreateTask {
            title,
            assignee,
            due_in_minutes,
        } => {
            let contact = contacts::require(ctx.conn, &e.contact_id)?;
            let assignee = match assignee {
                Assignee::ContactOwner {} => match contact.props.get("owner") {
                    Some(owner @ Value::Object(o)) => {
                        json!({"kind": "staff", "id": o.get("id"),
                               "name": crate::model::contact::staff_name(owner)})
                    }
                    _ => {
                        json!({"kind": "queue", "name": "front_desk", "note": "contact has no owner"})
                    }
                },
                other => serde_json::to_value(other).map_err(|e| Error::Internal(e.to_string()))?,
            };
            let key = effect_key(ctx.install_id, e.id, sid);
            let due_at = ctx.now + (*due_in_minutes as i64) * MINUTE;
            ctx.conn
                .prepare_cached(
                    "INSERT INTO tasks (idempotency_key, contact_id, automation_id, enrollment_id, title, assignee, due_at, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT DO NOTHING",
                )?
                .execute(params![key, e.contact_id, e.automation_id, e.id, title, assignee.to_string(), due_at, ctx.now])?;
            ctx.effects.push(Effect {
                payload: json!({
                    "key": key, "kind": "task", "contact_id": e.contact_id, "title": title,
                    "assignee": assignee, "due_at": crate::clock::to_rfc3339(due_at),
                    "automation_id": e.automation_id, "step_id": sid,
                }),
                ..effect_base(&key, EffectKind::Task, e, sid)
            });
            step_done(ctx, e, sid, None)?;
            Ok(StepOutcome::Next)
        }
        StepKind::SetProperty { property, value } => set_property(ctx, e, sid, *property, value),
        StepKind::Custom {
            plugin_id,
            step_type,
            config,
            ..
        } => {
            let contact = contacts::require(ctx.conn, &e.contact_id)?;
            let key = call_key(ctx.install_id, e, sid);
            ctx.effects.push(Effect {
                payload: json!({
                    "key": key, "kind": "plugin_step", "plugin_id": plugin_id, "step_type": step_type,
                    "config": config, "contact": contacts::plugin_view(&contact),
                    "automation_id": e.automation_id, "enrollment_id": e.id, "step_id": sid,
                    "now": crate::clock::to_rfc3339(ctx.now),
                    // The cascade its answer goes on with (not sent to the plugin).
                    "cascade": ctx.depth,
                }),
                ..effect_base(&key, EffectKind::PluginStep, e, sid)
            });
            Ok(StepOutcome::Call)
        }
        StepKind::AddToList { list_id } => {
            match lists::add_member(
                ctx,
                list_id,
                &e.contact_id,
                &format!("automation:{}", e.automation_id),
            ) {
                Ok(signals) => {
                    step_done(ctx, e, sid, None)?;
                    triggers::fire(ctx, &e.contact_id, &signals)?;
                }
                Err(Error::NotFound(_)) => step_failed(ctx, e, sid, "list_not_found")?,
                Err(other) => return Err(other),
            }
            Ok(StepOutcome::Next)
        }
    }
}

fn effect_base(key: &str, kind: EffectKind, e: &Enrollment, sid: &str) -> Effect {
    Effect {
        key: key.to_string(),
        kind,
        payload: Value::Null,
        contact_id: e.contact_id.clone(),
        automation_id: Some(e.automation_id.clone()),
        enrollment_id: Some(e.id),
        step_id: Some(sid.to_string()),
        channel: None,
        asset_id: None,
        not_before: None,
        hold: None,
    }
}

/// What became of one attempt to queue a message.
enum Sent {
    Queued,
    Suppressed(consent::Suppression),
    Failed(&'static str),
}

/// The template, category and preference bypass of a communication step.
fn message_params(kind: &StepKind) -> Option<(&Option<String>, consent::Category, bool)> {
    match kind {
        StepKind::SendEmail {
            template_id,
            category,
            bypass_preferences,
            ..
        }
        | StepKind::SendSms {
            template_id,
            category,
            bypass_preferences,
            ..
        } => Some((template_id, *category, *bypass_preferences)),
        _ => None,
    }
}

/// The idempotency key of the fallback message of the message keyed `primary`.
pub fn fallback_key(primary: &str) -> String {
    format!("{primary}-fallback")
}

/// True when an email step will go out by its SMS fallback (the email is
/// suppressed, the SMS is not): the step then waits for SMS sending hours.
fn goes_by_sms(ctx: &Ctx<'_>, contact_id: &str, kind: &StepKind) -> Result<bool> {
    match (kind, kind.fallback(), message_params(kind)) {
        (StepKind::SendSms { .. }, _, _) => Ok(true),
        (StepKind::SendEmail { .. }, Some(_), Some((_, category, bypass))) => {
            let contact = contacts::require(ctx.conn, contact_id)?;
            Ok(consent::check(&contact, "email", category, bypass).is_err()
                && consent::check(&contact, "sms", category, bypass).is_ok())
        }
        _ => Ok(false),
    }
}

fn send_message(ctx: &mut Ctx<'_>, e: &Enrollment, step: &Step) -> Result<()> {
    let sid = step.id.as_str();
    let contact = contacts::require(ctx.conn, &e.contact_id)?;
    let key = effect_key(ctx.install_id, e.id, sid);
    let primary = step.kind.channel().unwrap_or("email");
    let reason = match queue_message(ctx, e, sid, &step.kind, &contact, &key, None)? {
        Sent::Queued => return step_done(ctx, e, sid, None),
        // A marketing email the practice's settings cannot make compliant
        // (no postal address, no tracking address for its unsubscribe
        // link) fails as an error, and may not go out: the fallback goes.
        Sent::Failed(reason @ ("no_postal_address" | "no_unsubscribe_link")) => reason,
        Sent::Failed(reason) => return step_failed(ctx, e, sid, reason),
        Sent::Suppressed(reason) => reason.as_str(),
    };
    // Channel fallback (issue 3 §7): the primary channel may not be used; try the other one.
    let Some(fallback) = step.kind.fallback() else {
        return step_failed(ctx, e, sid, reason);
    };
    let fb_key = fallback_key(&key);
    match queue_message(ctx, e, sid, &fallback, &contact, &fb_key, Some(primary))? {
        Sent::Queued => step_done(
            ctx,
            e,
            sid,
            Some(json!({"fallback": fallback.channel(), "primary_reason": reason})),
        ),
        Sent::Suppressed(fb_reason) => Log {
            step_id: Some(sid),
            detail: Some(json!({"reason": reason, "fallback_reason": fb_reason.as_str()})),
            ..log_for("step_failed", e)
        }
        .write(ctx.conn, ctx.now),
        Sent::Failed(fb_reason) => step_failed(ctx, e, sid, fb_reason),
    }
}

/// Whether a fallback (`?1`: its key) was tried and never queued: suppressed
/// or failed to compose (a queued one has its outbox row). Through the
/// partial index `events_message_outcome`.
pub const FALLBACK_TRIED_SQL: &str = "SELECT EXISTS(SELECT 1 FROM events WHERE message_key = ?1
    AND (kind = 'message_bounced' OR kind = 'message_suppressed' OR kind = 'message_failed'))";

/// Queues the fallback of a step whose message hard-failed after it was sent
/// (a hard bounce or a failed delivery), once per enrollment and step; an
/// SMS waits for its sending hours within `window` (the automation's run
/// window).
/// Returns true when a fallback was attempted (queued or suppressed).
pub fn send_fallback(
    ctx: &mut Ctx<'_>,
    e: &Enrollment,
    step: &Step,
    window: &crate::schedule::RunWindow,
) -> Result<bool> {
    let Some(fallback) = step.kind.fallback() else {
        return Ok(false);
    };
    let sid = step.id.as_str();
    let key = effect_key(ctx.install_id, e.id, sid);
    let fb_key = fallback_key(&key);
    let tried: bool = ctx
        .conn
        .prepare_cached(FALLBACK_TRIED_SQL)?
        .query_row([&fb_key], |r| r.get(0))?;
    if tried
        || ctx.effects.iter().any(|x| x.key == fb_key)
        || crate::outbox::by_key(ctx.conn, &fb_key)?.is_some()
    {
        return Ok(false);
    }
    let contact = contacts::require(ctx.conn, &e.contact_id)?;
    let primary = step.kind.channel().unwrap_or("email");
    if let Sent::Queued = queue_message(ctx, e, sid, &fallback, &contact, &fb_key, Some(primary))?
        && fallback.channel() == Some("sms")
    {
        // A receipt can come at any hour: the SMS waits for the recipient's
        // sending hours (and the automation's run window), as an SMS step does.
        let open_at = sms_open_at(ctx, window, &e.contact_id)?;
        // Held for the sending hours alone (not the run window): the
        // hand-over's screening redoes that hold, so a change of the
        // zone or the hours may release it.
        let hours_alone = open_at > ctx.now
            && open_at == sms_open_at(ctx, &crate::schedule::RunWindow::AnyTime {}, &e.contact_id)?;
        if open_at > ctx.now
            && let Some(queued) = ctx.effects.iter_mut().rev().find(|x| x.key == fb_key)
        {
            queued.not_before = Some(open_at);
            queued.hold = hours_alone.then_some(crate::messaging::handover::HELD_FOR_SENDING_HOURS);
        }
    }
    Ok(true)
}

/// Checks consent, composes and queues one message of a step (its own, or
/// its fallback when `fallback_for` names the primary channel), with the logs.
#[allow(clippy::too_many_arguments)]
fn queue_message(
    ctx: &mut Ctx<'_>,
    e: &Enrollment,
    sid: &str,
    kind: &StepKind,
    contact: &contacts::Contact,
    key: &str,
    fallback_for: Option<&str>,
) -> Result<Sent> {
    let channel = kind.channel().unwrap_or("email");
    let Some((template_id, category, bypass)) = message_params(kind) else {
        return Ok(Sent::Failed("not_a_message"));
    };
    let asset_id = template_id.clone().unwrap_or_else(|| {
        let own = format!("{}/{}", e.automation_id, key_part(sid));
        if fallback_for.is_some() {
            fallback_key(&own)
        } else {
            own
        }
    });
    let with_fallback = |mut d: Value| {
        if let Some(p) = fallback_for {
            d["fallback_for"] = json!(p);
        }
        d
    };
    let to = match consent::check(contact, channel, category, bypass) {
        Ok(to) => to,
        Err(reason) => {
            Log {
                step_id: Some(sid),
                channel: Some(channel),
                message_key: Some(key),
                detail: Some(with_fallback(
                    json!({"reason": reason.as_str(), "category": category.as_str()}),
                )),
                ..log_for("message_suppressed", e)
            }
            .write(ctx.conn, ctx.now)?;
            return Ok(Sent::Suppressed(reason));
        }
    };
    let content = match compose::content_of(ctx.conn, kind) {
        Ok(c) => c,
        Err(Error::NotFound(_)) => return Ok(Sent::Failed("template_not_found")),
        Err(other) => return Err(other),
    };
    let rendered = match kind {
        StepKind::SendEmail { sender, .. } => {
            compose::email(ctx, key, contact, &to, &content, category, sender.as_ref())?
        }
        StepKind::SendSms { sender_number, .. } => {
            compose::sms_message(ctx, key, contact, &to, &content, sender_number.as_deref())?
        }
        _ => return Ok(Sent::Failed("not_a_message")),
    };
    let rendered = match rendered {
        Ok(r) => r,
        Err(err) => {
            // A render or compliance failure is an internal error (error rate), not a bounce.
            Log {
                step_id: Some(sid),
                channel: Some(channel),
                message_key: Some(key),
                detail: Some(with_fallback(
                    json!({"source": "compose", "reason": err.reason()}),
                )),
                ..log_for("message_failed", e)
            }
            .write(ctx.conn, ctx.now)?;
            return Ok(Sent::Failed(err.reason()));
        }
    };
    let to = rendered
        .get("to")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or(to);
    // The values compose::variables gives these four placeholders.
    let placeholders = json!({
        "firstname": contact.text("first_name").unwrap_or(""),
        "lastname": contact.text("last_name").unwrap_or(""),
        "practice": ctx.settings.doc.practice_name,
        "owner": contact.props.get("owner").and_then(crate::model::contact::staff_name).unwrap_or(""),
    });
    let content = Value::Object(Map::from_iter([
        ("template_id".to_owned(), json!(template_id)),
        ("subject".to_owned(), Value::String(content.subject)),
        ("preheader".to_owned(), Value::String(content.preheader)),
        ("body".to_owned(), Value::String(content.html_body)),
        ("message".to_owned(), Value::String(content.message)),
    ]));
    // Built by moving the parts in: json! would copy the whole rendered message.
    let mut payload = Map::from_iter([
        ("key".to_owned(), json!(key)),
        ("kind".to_owned(), json!("message")),
        ("channel".to_owned(), json!(channel)),
        ("category".to_owned(), json!(category.as_str())),
        ("contact_id".to_owned(), json!(e.contact_id)),
        ("to".to_owned(), Value::String(to)),
        ("content".to_owned(), content),
        ("placeholders".to_owned(), placeholders),
        ("rendered".to_owned(), rendered),
        ("automation_id".to_owned(), json!(e.automation_id)),
        ("step_id".to_owned(), json!(sid)),
        ("asset_id".to_owned(), json!(asset_id)),
    ]);
    if let Some(p) = fallback_for {
        payload.insert("fallback_for".to_owned(), json!(p));
    }
    ctx.effects.push(Effect {
        payload: Value::Object(payload),
        channel: Some(channel.to_string()),
        asset_id: Some(asset_id),
        ..effect_base(key, EffectKind::Message, e, sid)
    });
    Log {
        step_id: Some(sid),
        channel: Some(channel),
        message_key: Some(key),
        detail: fallback_for.map(|p| json!({"fallback_for": p})),
        ..log_for("message_queued", e)
    }
    .write(ctx.conn, ctx.now)?;
    // Outbound communication touches the record. `contact` was read in this
    // transaction and Last Activity only moves forward: one already at `now`
    // needs no statement at all.
    if contact.last_activity < ctx.now {
        contacts::touch_only(ctx.conn, &e.contact_id, ctx.now)?;
    }
    Ok(Sent::Queued)
}

fn set_property(
    ctx: &mut Ctx<'_>,
    e: &Enrollment,
    sid: &str,
    property: SettableProperty,
    value: &Value,
) -> Result<StepOutcome> {
    let mut contact = contacts::require(ctx.conn, &e.contact_id)?;
    let name = property.property();
    let new_value = match property {
        SettableProperty::Tags => crate::model::contact::normalize_property(
            "tags",
            json!(contacts::change_tags(contact.props.get("tags"), value)),
        ),
        _ => crate::model::contact::normalize_property(name, value.clone()),
    };
    let previous = contact.props.get(name).cloned().unwrap_or(Value::Null);
    let mut map = serde_json::Map::new();
    let written = new_value.and_then(|new_value| {
        map.insert(name.to_string(), new_value.clone());
        let actor = format!("automation:{}", e.automation_id);
        // The record's own limits are checked before anything is written.
        write_props(ctx, &mut contact, map, &actor).map(|signals| (new_value, signals))
    });
    let (new_value, signals) = match written {
        Ok(written) => written,
        // The value may not be set on this contact (a 101st tag, a 201st
        // property): the step fails and the flow goes on, as for a failed
        // message. The event that set the automation off is the host's
        // and is not refused for it.
        Err(err @ (Error::Invalid(_) | Error::TooLarge(_))) => {
            Log {
                step_id: Some(sid),
                detail: Some(json!({"reason": "value_refused", "property": name,
                    "error": err.to_string()})),
                ..log_for("step_failed", e)
            }
            .write(ctx.conn, ctx.now)?;
            return Ok(StepOutcome::Next);
        }
        Err(err) => return Err(err),
    };
    // Written back only as stored: a Patient kept as one (an automation
    // saved before Lead was refused) sends the host no "lead".
    if contact.props.get(name) == Some(&new_value) {
        let key = effect_key(ctx.install_id, e.id, sid);
        let mut payload = json!({
            "key": key, "kind": "property", "contact_id": e.contact_id, "property": name, "value": new_value,
            "previous": previous, "automation_id": e.automation_id, "step_id": sid,
        });
        if property == SettableProperty::Tags {
            payload["change"] = tags_change(value);
        }
        ctx.effects.push(Effect {
            payload,
            ..effect_base(&key, EffectKind::Property, e, sid)
        });
    }
    step_done(ctx, e, sid, None)?;
    triggers::fire(ctx, &e.contact_id, &signals)?;
    match load(ctx.conn, e.id)? {
        Some(fresh) if fresh.state == "active" => Ok(StepOutcome::Next),
        _ => Ok(StepOutcome::Exited),
    }
}

/// Applies property changes an automation makes (audited as `actor`,
/// reason `automation`), touches and saves the contact, records a Status
/// flip as the automation's; returns the property-change signals. An automation unsubscribing the contact is not
/// the person's opt-out: it ends no enrollment (SPEC 2.4: the SMS opt-out
/// toggle is the person's STOP, a global opt-out theirs at account level);
/// consent keeps later messages on that channel from going.
fn write_props(
    ctx: &mut Ctx<'_>,
    contact: &mut contacts::Contact,
    map: serde_json::Map<String, Value>,
    actor: &str,
) -> Result<Vec<Signal>> {
    // When the write happened: the host's event that set the automation off
    // (a staff edit pushed right after it, processed in the same round, is
    // newer), or now for a step after a delay.
    let at = ctx.occurred_at.unwrap_or(ctx.now);
    for (name, value) in &map {
        if name == "tags" {
            contact.record_tag_writes(value, at);
        } else {
            contact.module_writes.insert(name.clone(), at);
        }
    }
    let signals = contacts::apply_props(
        ctx,
        contact,
        map,
        crate::event::UpsertMode::Partial,
        AuditSource {
            actor,
            reason: "automation",
            message_key: None,
        },
    )?;
    contacts::touch(contact, ctx.now);
    contacts::save(ctx.conn, contact)?;
    if signals.contains(&Signal::BecamePatient) {
        // The record says Patient now, but nobody booked: the Status
        // changed trigger fires, no goal counts it (SPEC §2.5's Book
        // appointment is a first appointment), and their first booking
        // later is still their first.
        contacts::record_became_patient(
            ctx,
            &contact.id,
            contacts::PatientBy::Automation,
            Some(actor),
        )?;
    }
    Ok(signals)
}

/// A tag change as a write-back carries it beside the whole list:
/// `{"add": [..], "remove": [..]}`, trimmed, so that a host that keeps its
/// own tags applies the change to them (a tag its staff added meanwhile
/// stays).
fn tags_change(change: &Value) -> Value {
    let list = |k: &str| contacts::tag_list(change.get(k));
    json!({"add": list("add"), "remove": list("remove")})
}

/// Moves the active enrollments of an automation to a new version (issue 2
/// §4: stable step ids; a removed step continues at the next surviving step
/// on its old path, or ends).
pub fn migrate(
    ctx: &mut Ctx<'_>,
    automation_id: &str,
    old: &Version,
    new: &Version,
) -> Result<usize> {
    let mut moved = 0;
    for mut e in active_of_automation(ctx.conn, automation_id)? {
        if e.version == new.number {
            continue;
        }
        let from = e.step_id.clone();
        let started = e.phase != Phase::Ready;
        let to = match &from {
            Some(step) => old.flow.migrate_position(step, &new.flow),
            None => None,
        };
        if to != from {
            // The step it was in is gone: it continues at the survivor, ready to run.
            e.phase = Phase::Ready;
            e.step_started_at = None;
            e.wake_at = Some(ctx.now);
        } else if e.phase == Phase::Ready && e.wake_at.is_some_and(|w| w > ctx.now) {
            // Held for the run window (or the recipient's sending hours):
            // the new version's window decides again, at once, so widening
            // the window releases it and narrowing it holds it longer.
            e.wake_at = Some(ctx.now);
        }
        if e.ran_steps.is_none() {
            // Its first migration: it ran its path up to here in the version
            // it enrolled under (the step it is in too, once that started).
            let mut ran = from
                .as_deref()
                .map(|s| old.flow.path_to(s))
                .unwrap_or_default();
            if started {
                ran.extend(from.clone());
            }
            e.ran_steps = Some(ran);
        }
        e.step_id = to.clone();
        let old_version = e.version;
        e.version = new.number;
        save(ctx.conn, &e)?;
        Log {
            step_id: to.as_deref(),
            detail: Some(json!({"from_version": old_version, "from_step": from})),
            ..log_for("version_migrated", &e)
        }
        .write(ctx.conn, ctx.now)?;
        moved += 1;
    }
    Ok(moved)
}

/// Takes the enrollments of an automation being paused out of the
/// scheduler's wake-up index (`held`): they keep their `wake_at`, and
/// [`resume`] puts them back.
pub fn hold(conn: &rusqlite::Connection, automation_id: &str) -> Result<()> {
    conn.prepare_cached(
        "UPDATE enrollments SET held = 1 WHERE automation_id = ?1 AND state = 'active' AND held = 0",
    )?
    .execute([automation_id])?;
    Ok(())
}

/// Puts the enrollments of a reactivated automation back in the wake-up
/// index, and sets `wake_at` of those ready and overdue to now, so they run
/// at once (the worker's due query finds them).
pub fn resume(ctx: &Ctx<'_>, automation_id: &str) -> Result<()> {
    ctx.conn
        .prepare_cached(
            "UPDATE enrollments SET held = 0 WHERE automation_id = ?1 AND state = 'active' AND held = 1",
        )?
        .execute([automation_id])?;
    ctx.conn
        .prepare_cached(
            "UPDATE enrollments SET wake_at = ?2 WHERE automation_id = ?1 AND state = 'active'
               AND (wake_at IS NULL OR wake_at < ?2) AND step_phase = 'ready'",
        )?
        .execute(params![automation_id, ctx.now])?;
    Ok(())
}

/// When an SMS step may run: the automation's run window (practice time zone)
/// and the SMS sending hours (08:00–21:00 by default) in the recipient's time
/// zone, or the practice's when the contact has none, must both be open.
/// When they never are at once (a window of 21:30–23:30, say), the run
/// window alone decides and the hand-over holds the SMS until the sending
/// hours open (see `messaging::handover`): the step does not wait forever.
fn sms_open_at(
    ctx: &Ctx<'_>,
    window: &crate::schedule::RunWindow,
    contact_id: &str,
) -> Result<Millis> {
    let contact = contacts::require(ctx.conn, contact_id)?;
    let (hours, tz) = crate::messaging::consent::sending_hours(&contact, ctx.settings);
    let mut t = ctx.now;
    // Alternate between the two windows until both are open at the same instant.
    for _ in 0..32 {
        let a = window.next_open(t, ctx.settings.tz).unwrap_or(t);
        let b = hours.next_open(a, tz).unwrap_or(a);
        if b == a {
            return Ok(a);
        }
        t = b;
    }
    Ok(window
        .next_open(ctx.now, ctx.settings.tz)
        .unwrap_or(ctx.now))
}

/// Moves an enrollment on after its custom step's plugin answered (or failed
/// for good): applies the property changes, logs the step, takes the next
/// step, the YES / NO path, or (on failure with `on_failure: exit`) exits.
/// An enrollment that has moved since (edited away, exited) is left alone.
/// Returns the reason the plugin's property changes were refused, if they
/// were (the step failed for it).
pub fn finish_custom_step(
    ctx: &mut Ctx<'_>,
    enrollment_id: i64,
    step_id: &str,
    key: &str,
    result: std::result::Result<crate::plugins::StepResult, String>,
) -> Result<Option<String>> {
    use crate::model::automation::OnFailure;
    use crate::plugins::StepResult;
    let Some(mut e) = load(ctx.conn, enrollment_id)? else {
        return Ok(None);
    };
    if e.state != "active" || e.phase != Phase::Calling || e.step_id.as_deref() != Some(step_id) {
        return Ok(None);
    }
    // The answer of an earlier call of this step (the contact left it in an
    // edit and came back to it) is not this call's: its config and contact
    // were the old ones.
    if key != call_key(ctx.install_id, &e, step_id) {
        return Ok(None);
    }
    // The answer goes on with the cascade that made the call: two
    // automations whose custom steps set each other's trigger would
    // otherwise call each other forever, each answer a new cascade.
    ctx.depth = ctx
        .conn
        .prepare_cached(
            "SELECT json_extract(payload, '$.cascade') FROM outbox WHERE idempotency_key = ?1",
        )?
        .query_row([key], |r| r.get::<_, Option<u32>>(0))
        .optional()?
        .flatten()
        .unwrap_or(0);
    let catalog = ctx.catalog;
    let Some(entry) = catalog.get(&e.automation_id) else {
        return Ok(None);
    };
    let version = entry.current.clone();
    let Some(StepKind::Custom {
        plugin_id,
        branches,
        on_failure,
        ..
    }) = version.flow.step(step_id).map(|s| s.kind.clone())
    else {
        return Ok(None);
    };
    // A plugin's own failure and a change it asks for that may not be made
    // both fail the step.
    let (path, changes) = match result {
        Ok(StepResult::Failed(reason)) | Err(reason) => (Err(reason), Vec::new()),
        Ok(StepResult::Continue(changes)) => (Ok(None), changes),
        Ok(StepResult::Branch(yes, changes)) => (Ok(Some(yes)), changes),
    };
    let refused = match path {
        Ok(_) => apply_plugin_changes(ctx, &e, step_id, key, &plugin_id, &changes)?.err(),
        Err(_) => None,
    };
    let outcome = match &refused {
        Some(reason) => Err(reason.clone()),
        None => path,
    };
    let next = match outcome {
        Ok(path) => {
            let detail = match path {
                Some(yes) => {
                    json!({"plugin_id": plugin_id, "path": if yes { "yes" } else { "no" }})
                }
                None => json!({"plugin_id": plugin_id}),
            };
            step_done(ctx, &e, step_id, Some(detail))?;
            match path {
                Some(yes) => version.flow.branch_head(step_id, yes).map(str::to_string),
                None => version.flow.next_after(step_id).map(str::to_string),
            }
        }
        Err(reason) => {
            Log {
                step_id: Some(step_id),
                detail: Some(json!({"reason": reason, "plugin_id": plugin_id})),
                ..log_for("step_failed", &e)
            }
            .write(ctx.conn, ctx.now)?;
            if on_failure == OnFailure::Exit {
                return exit(ctx, &e, "step_failed").map(|()| refused);
            }
            if branches {
                version.flow.branch_head(step_id, false).map(str::to_string)
            } else {
                version.flow.next_after(step_id).map(str::to_string)
            }
        }
    };
    // Property changes may have cascaded (e.g. an opt-out ended this enrollment).
    match load(ctx.conn, e.id)? {
        Some(fresh) if fresh.state == "active" => e.goal_reached_at = fresh.goal_reached_at,
        _ => return Ok(refused),
    }
    e.step_id = next;
    e.phase = Phase::Ready;
    e.step_started_at = None;
    e.wake_at = None;
    save(ctx.conn, &e)?;
    advance(ctx, e.id)?;
    Ok(refused)
}

/// Applies the property changes a custom step returned, all or none: each
/// must be a settable SPEC property (subscriptions only to `unsubscribed`)
/// or a custom property. Each change is also written back to the host. The
/// inner error is the reason the step fails; the outer one a storage error.
fn apply_plugin_changes(
    ctx: &mut Ctx<'_>,
    e: &Enrollment,
    sid: &str,
    key: &str,
    plugin_id: &str,
    changes: &[(String, Value)],
) -> Result<std::result::Result<(), String>> {
    if changes.is_empty() {
        return Ok(Ok(()));
    }
    let mut contact = contacts::require(ctx.conn, &e.contact_id)?;
    let map = match plugin_changes(&contact, changes) {
        Ok(map) => map,
        Err(reason) => return Ok(Err(reason)),
    };
    let written = map.clone();
    let previous: Vec<Value> = (written.keys())
        .map(|name| contact.props.get(name).cloned().unwrap_or(Value::Null))
        .collect();
    let signals = write_props(ctx, &mut contact, map, &format!("plugin:{plugin_id}"))?;
    for ((name, value), previous) in written.into_iter().zip(previous) {
        let effect_key = property_key(key, &name);
        let mut payload = json!({
            "key": effect_key, "kind": "property", "contact_id": e.contact_id, "property": name, "value": value,
            "previous": previous, "automation_id": e.automation_id, "step_id": sid, "plugin_id": plugin_id,
        });
        if name == "tags"
            && let Some((_, asked)) = changes.iter().find(|(n, _)| n == "tags")
        {
            payload["change"] = tags_change(asked);
        }
        ctx.effects.push(Effect {
            payload,
            ..effect_base(&effect_key, EffectKind::Property, e, sid)
        });
    }
    triggers::fire(ctx, &e.contact_id, &signals)?;
    Ok(Ok(()))
}

/// The normalized values of a plugin's property changes, or why one may
/// not be made. The reason quotes the property's name, which the plugin
/// chose: it is scrubbed of the contact's values as the plugin's own
/// reasons are (a name `1979-11-23` would otherwise log a birth date).
fn plugin_changes(
    contact: &contacts::Contact,
    changes: &[(String, Value)],
) -> std::result::Result<serde_json::Map<String, Value>, String> {
    checked_changes(contact, changes).map_err(|reason| {
        // Not the status: "lead" is no patient's value, and the reason
        // names lead_source.
        let mut view = contacts::plugin_view(contact);
        if let Some(fields) = view.as_object_mut() {
            fields.remove("status");
        }
        crate::plugins::redact::Redactor::contact(view.to_string()).redact_string(reason)
    })
}

fn checked_changes(
    contact: &contacts::Contact,
    changes: &[(String, Value)],
) -> std::result::Result<serde_json::Map<String, Value>, String> {
    let mut map = serde_json::Map::new();
    for (i, (name, value)) in changes.iter().enumerate() {
        // The guide's rule for a plugin's names: `Email` or `STATUS` would
        // be custom properties a host matching names without case takes for
        // the real ones. Not echoed: it could be anything, a patient's email
        // or `1979-11-23` among them.
        let snake = name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !snake {
            return Err(format!(
                "property change {}: a plugin names a property in lowercase snake case",
                i + 1
            ));
        }
        crate::model::contact::validate_key(name)
            .map_err(|e| format!("property change {}: {e}", i + 1))?;
        let settable: Option<SettableProperty> =
            serde_json::from_value(Value::String(name.clone())).ok();
        let normalized = match settable {
            Some(SettableProperty::Tags) => {
                crate::model::automation::validate_set_property(SettableProperty::Tags, value)
                    .map_err(|e| format!("property change {name}: {e}"))?;
                crate::model::contact::normalize_property("tags", json!(contacts::change_tags(contact.props.get("tags"), value)))
            }
            Some(p) => crate::model::automation::validate_set_property(p, value)
                .and_then(|()| crate::model::contact::normalize_property(p.property(), value.clone())),
            None if crate::model::contact::property_type(name).is_some()
                || crate::model::contact::DERIVED_PROPERTIES.contains(&name.as_str())
                || contacts::PLUGIN_VIEW_ONLY.contains(&name.as_str()) =>
            {
                return Err(format!(
                    "property change {name}: not settable by a plugin (settable: status, lead_source, owner, provider, tags, sms_subscription, email_subscription, or a custom property)"
                ));
            }
            None => crate::model::contact::normalize_property(name, value.clone()),
        }
        .map_err(|e| format!("property change {name}: {e}"))?;
        map.insert(name.clone(), normalized);
    }
    // The record's limit, which the write would refuse as a storage error
    // and leave the step waiting for an answer that never lands.
    // Counted as the write counts them: what the record keeps, after the
    // clears (a null) and the additions.
    let mut kept: std::collections::HashSet<&str> =
        contact.props.keys().map(String::as_str).collect();
    for (k, v) in &map {
        if v.is_null() {
            kept.remove(k.as_str());
        } else {
            kept.insert(k);
        }
    }
    let max = crate::model::contact::MAX_PROPERTIES;
    if kept.len() > max {
        return Err(format!(
            "property changes: the contact would carry more than {max} properties"
        ));
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effects_of_steps_named_like_derived_keys_keep_keys_of_their_own() {
        let key = |step: &str| effect_key("t", 7, step);
        let keys = [
            key("p"),
            fallback_key(&key("p")),
            key("p-fallback"),
            rerun_key(&key("p"), 2),
            key("p-r2"),
            property_key(&key("p"), "r2"),
            property_key(&key("p"), "fallback"),
            property_key(&rerun_key(&key("p"), 2), "x"),
            property_key(&key("p"), "r2-set-x"),
            property_key(&key("p"), "a-b"),
            property_key(&key("p-a"), "b"),
            key("p-set-a"),
            key("p%2Dfallback"),
            key("p%"),
            key("p-"),
        ];
        let distinct: std::collections::HashSet<&String> = keys.iter().collect();
        assert_eq!(distinct.len(), keys.len(), "{keys:#?}");
        // Ids without a separator keep the keys they always had.
        assert_eq!(key("follow_up.2"), "t-e7-follow_up.2");
        assert_eq!(fallback_key(&key("m")), "t-e7-m-fallback");
    }

    fn contact(props: usize) -> contacts::Contact {
        let props = (0..props).map(|i| (format!("p{i}"), json!("v"))).collect();
        contacts::Contact::with_props("c1", props)
    }

    /// A plugin's changes that would take the contact past its limit of
    /// properties fail the step (its reason), rather than the write failing
    /// as storage and the enrollment waiting for good; changing a property
    /// the contact has, or clearing one, adds none.
    #[test]
    fn property_changes_past_the_contacts_limit_fail_the_step() {
        let max = crate::model::contact::MAX_PROPERTIES;
        let full = contact(max);
        let e = plugin_changes(&full, &[("score".into(), json!(3))]).unwrap_err();
        assert!(e.contains(&format!("more than {max} properties")), "{e}");
        assert!(plugin_changes(&full, &[("p0".into(), json!(3))]).is_ok());
        assert!(plugin_changes(&full, &[("score".into(), Value::Null)]).is_ok());
        let swap = [("p0".into(), Value::Null), ("score".into(), json!(3))];
        assert!(
            plugin_changes(&full, &swap).is_ok(),
            "one cleared, one added"
        );
        assert!(plugin_changes(&contact(max - 1), &[("score".into(), json!(3))]).is_ok());
    }

    /// Exiting a copy of an enrollment that has already ended changes and
    /// logs nothing: the exits counted stay one per enrollment, with one
    /// reason.
    #[test]
    fn an_enrollment_that_already_ended_is_not_exited_again() {
        let mut s = crate::core::sim::Sim::new();
        let a = s.automation(
            json!({"name": "Wait", "trigger": {"type": "contact_created"},
            "steps": [{"id": "w", "type": "delay", "amount": 2, "unit": "days"}]}),
        );
        s.contact("c1", json!({}));
        let id: i64 = s.value("SELECT id FROM enrollments");
        let stale = load(&s.conn, id).unwrap().unwrap();
        s.in_tx(|ctx| exit(ctx, &stale, "email_reply")).unwrap();
        s.in_tx(|ctx| exit(ctx, &stale, "sms_opt_out")).unwrap();
        s.in_tx(|ctx| complete(ctx, &stale)).unwrap();
        assert_eq!(s.count("exited", Some(&a)), 1);
        assert_eq!(s.count("completed", Some(&a)), 0);
        let reason: String = s.value("SELECT exit_reason FROM enrollments");
        assert_eq!(reason, "email_reply");
    }

    /// A name that is not a property name is refused without being
    /// echoed into the step's failure reason (which the event log keeps).
    #[test]
    fn a_change_of_a_name_that_is_no_property_name_is_not_echoed() {
        let e =
            plugin_changes(&contact(1), &[("jane.doe@example.com".into(), json!(1))]).unwrap_err();
        assert!(e.starts_with("property change 1: "), "{e}");
        assert!(!e.contains("jane"), "{e}");
    }

    /// A plugin names a settable property or a custom one in lowercase
    /// snake case: not the record's id or the times the module keeps, not
    /// `Email` or `STATUS` (a host matching names without case would take
    /// them for the real ones), and a name like a date is not echoed.
    #[test]
    fn a_plugin_sets_neither_the_records_own_fields_nor_look_alikes() {
        for name in ["id", "last_activity_at", "last_engaged_at", "created_at"] {
            let e = plugin_changes(&contact(1), &[(name.into(), json!("x"))]).unwrap_err();
            assert!(e.contains("not settable by a plugin"), "{name}: {e}");
        }
        for name in ["Email", "STATUS", "1979-11-23", "lead-score", "a.b"] {
            let e = plugin_changes(&contact(1), &[(name.into(), json!("x"))]).unwrap_err();
            assert_eq!(
                e, "property change 1: a plugin names a property in lowercase snake case",
                "{name}"
            );
        }
        assert!(plugin_changes(&contact(1), &[("lead_score2".into(), json!(3))]).is_ok());
        // A snake-case name that is one of the contact's values is not
        // quoted in the reason either.
        let mut c = contact(1);
        c.props.insert("first_name".into(), json!("tamsin"));
        let e = plugin_changes(&c, &[("tamsin".into(), json!({"a": 1}))]).unwrap_err();
        assert!(!e.contains("tamsin"), "{e}");
    }
}
