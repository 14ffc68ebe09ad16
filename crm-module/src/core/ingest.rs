//! Applying one pushed event to the state (SPEC §1, issue 2 §3).

use rusqlite::{OptionalExtension, params};
use serde_json::{Value, json};

use super::contacts::{self, AuditSource, Contact, PatientBy};
use super::log::Entry as Log;
use super::{Ctx, Signal, enrollment, stopped_numbers, triggers};
use crate::clock::{DAY, Millis, parse_rfc3339};
use crate::error::{Error, Result};
use crate::event::{
    Appointment, BounceKind, DeliveryStatus, Event, EventBody, OptOutChannel, UpsertMode,
    VerificationStatus,
};
use crate::messaging::consent;
use crate::outbox;

/// What happened to a pushed event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Applied.
    Applied,
    /// This event id was seen before, or the event sends again a form
    /// submission or review already recorded under another id: nothing
    /// happened.
    Duplicate,
    /// A contact update older than the stored one: recorded, properties
    /// kept; or an opt-out older than every channel's latest subscription
    /// change: recorded, subscriptions kept.
    Stale,
}

/// Applies one event. Errors leave the caller to roll the savepoint back.
pub fn apply(ctx: &mut Ctx<'_>, ev: &Event) -> Result<Outcome> {
    let outer = ctx.occurred_at;
    ctx.occurred_at = ev.occurred_at.map(|at| at.min(ctx.now));
    let outcome = apply_event(ctx, ev);
    ctx.occurred_at = outer;
    outcome
}

/// What an event says, as a digest: its type, time and body (the body as
/// parsed and normalized, so a resend formatted differently is the same).
fn fingerprint(ev: &Event) -> Result<[u8; 16]> {
    use sha2::{Digest, Sha256};
    let body = serde_json::to_vec(&ev.body).map_err(|e| Error::Internal(e.to_string()))?;
    let mut h = Sha256::new();
    h.update(ev.type_name().as_bytes());
    h.update(ev.occurred_at.unwrap_or(i64::MIN).to_le_bytes());
    h.update(&body);
    let digest = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    Ok(out)
}

fn apply_event(ctx: &mut Ctx<'_>, ev: &Event) -> Result<Outcome> {
    let print = fingerprint(ev)?;
    let fresh = ctx
        .conn
        .prepare_cached("INSERT INTO ingested_events (event_id, type, received_at, fingerprint) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING")?
        .execute(params![ev.event_id, ev.type_name(), ctx.now, &print[..]])?;
    if fresh == 0 {
        // The same id again: a resend of the same event is a duplicate; an
        // event that says something else under a used id would be lost.
        let before: Option<Vec<u8>> = ctx
            .conn
            .prepare_cached("SELECT fingerprint FROM ingested_events WHERE event_id = ?1")?
            .query_row([&ev.event_id], |r| r.get(0))?;
        if before.is_some_and(|b| b != print) {
            return Err(Error::Conflict(format!(
                "event_id {} was already used for a different event",
                ev.event_id
            )));
        }
        return Ok(Outcome::Duplicate);
    }
    match &ev.body {
        EventBody::ContactUpserted {
            contact,
            mode,
            reason,
            last_activity_at,
        } => {
            // Validated; a time ahead of the module's clock counts as now.
            let last_active = last_activity_at
                .as_deref()
                .and_then(|s| parse_rfc3339(s).ok())
                .map(|at| at.min(ctx.now));
            upsert(ctx, ev, contact, *mode, reason.as_deref(), last_active)
        }
        EventBody::AppointmentBooked { appointment } => {
            appointment_event(ctx, appointment, "booked")
        }
        EventBody::AppointmentRescheduled { appointment } => {
            appointment_event(ctx, appointment, "rescheduled")
        }
        EventBody::AppointmentCancelled { appointment } => {
            appointment_event(ctx, appointment, "cancelled")
        }
        EventBody::AppointmentCompleted { appointment } => {
            appointment_event(ctx, appointment, "completed")
        }
        EventBody::AppointmentNoShow { appointment } => {
            appointment_event(ctx, appointment, "no_show")
        }
        EventBody::FormSubmitted { submission: s } => {
            let mut c = contacts::require(ctx.conn, &s.contact_id)?;
            ctx.conn
                .prepare_cached("INSERT INTO forms (id, name) VALUES (?1, ?2) ON CONFLICT(id) DO UPDATE SET name = excluded.name")?
                .execute(params![s.form_id, s.form_name.trim()])?;
            let answers = Value::Object(s.answers.clone()).to_string();
            let n = ctx
                .conn
                .prepare_cached("INSERT INTO form_submissions (id, form_id, contact_id, answers, submitted_at) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING")?
                .execute(params![s.id, s.form_id, s.contact_id, answers, ctx.now])?;
            if n == 0 {
                // A host replay sending the same submission under a new
                // event id is a duplicate; another submission under a used
                // id is refused.
                let same: bool = ctx
                    .conn
                    .prepare_cached(
                        "SELECT form_id = ?2 AND contact_id = ?3 AND answers = ?4 FROM form_submissions WHERE id = ?1",
                    )?
                    .query_row(params![s.id, s.form_id, s.contact_id, answers], |r| {
                        r.get(0)
                    })?;
                if same {
                    return Ok(Outcome::Duplicate);
                }
                return Err(Error::Conflict(format!(
                    "form submission {} was already recorded, with other content",
                    s.id
                )));
            }
            Log {
                detail: Some(json!({"form_id": s.form_id, "submission_id": s.id})),
                ..Log::new("form_submitted", &c.id)
            }
            .write(ctx.conn, ctx.now)?;
            let mut signals = vec![Signal::FormSubmitted {
                form_id: s.form_id.clone(),
            }];
            inbound(ctx, &mut c, &mut signals)?;
            triggers::fire(ctx, &c.id, &signals)?;
            Ok(Outcome::Applied)
        }
        EventBody::ReviewSubmitted { review: r } => {
            let mut c = contacts::require(ctx.conn, &r.contact_id)?;
            let source = serde_json::to_value(r.source)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let n = ctx
                .conn
                .prepare_cached("INSERT INTO reviews (id, contact_id, source, rating, submitted_at) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING")?
                .execute(params![r.id, r.contact_id, source, r.rating, ctx.now])?;
            if n == 0 {
                // The same review sent again (a host replay) is a duplicate.
                let same: bool = ctx
                    .conn
                    .prepare_cached(
                        "SELECT contact_id = ?2 AND source = ?3 AND rating IS ?4 FROM reviews WHERE id = ?1",
                    )?
                    .query_row(params![r.id, r.contact_id, source, r.rating], |row| row.get(0))?;
                if same {
                    return Ok(Outcome::Duplicate);
                }
                return Err(Error::Conflict(format!(
                    "review {} was already recorded, with other content",
                    r.id
                )));
            }
            Log {
                detail: Some(json!({"review_id": r.id, "source": source})),
                ..Log::new("review_submitted", &c.id)
            }
            .write(ctx.conn, ctx.now)?;
            let mut signals = vec![Signal::ReviewSubmitted];
            inbound(ctx, &mut c, &mut signals)?;
            triggers::fire(ctx, &c.id, &signals)?;
            Ok(Outcome::Applied)
        }
        EventBody::InsuranceVerification { contact_id, status } => {
            let mut c = contacts::require(ctx.conn, contact_id)?;
            let value = match status {
                VerificationStatus::Pending => "pending",
                VerificationStatus::Verified => "verified",
                VerificationStatus::Failed => "failed",
            };
            // A status older than the one stored ("pending" arriving after
            // a later "verified") is recorded and changes nothing.
            let occurred = ctx.occurred_at.unwrap_or(ctx.now);
            let stored_at: Option<Millis> = ctx
                .conn
                .prepare_cached("SELECT insurance_verification_at FROM contacts WHERE id = ?1")?
                .query_row([&c.id], |r| r.get(0))?;
            if stored_at.is_some_and(|at| occurred < at) {
                return Log {
                    detail: Some(json!({"status": value, "late": true})),
                    ..Log::new("insurance_verification", &c.id)
                }
                .write(ctx.conn, ctx.now)
                .map(|()| Outcome::Applied);
            }
            let flipped =
                c.insurance_verification.as_deref() != Some("verified") && value == "verified";
            let old_value = json!(c.insurance_verification);
            c.insurance_verification = Some(value.to_string());
            contacts::touch(&mut c, ctx.now);
            // The status, its time and the touch: the only columns this
            // event changes, in one write of the row.
            ctx.conn
                .prepare_cached(
                    "UPDATE contacts SET insurance_verification = ?2, insurance_verification_at = ?3, last_activity = ?4
                     WHERE id = ?1",
                )?
                .execute(params![c.id, value, occurred, c.last_activity])?;
            Log {
                detail: Some(json!({"status": value})),
                ..Log::new("insurance_verification", &c.id)
            }
            .write(ctx.conn, ctx.now)?;
            let mut signals = Vec::new();
            if old_value != value {
                signals.push(Signal::PropertyChanged {
                    property: "insurance_verification".into(),
                    old_value,
                    new_value: json!(value),
                });
            }
            if flipped {
                signals.push(Signal::VerificationComplete);
            }
            triggers::fire(ctx, &c.id, &signals)?;
            Ok(Outcome::Applied)
        }
        EventBody::PortalActivated { contact_id } => {
            let mut c = contacts::require(ctx.conn, contact_id)?;
            let first = !c.portal_active;
            c.portal_active = true;
            let mut signals = if first {
                vec![
                    Signal::PropertyChanged {
                        property: "portal_active".into(),
                        old_value: json!(false),
                        new_value: json!(true),
                    },
                    Signal::PortalActivated,
                ]
            } else {
                vec![]
            };
            Log::new("portal_activated", &c.id).write(ctx.conn, ctx.now)?;
            inbound(ctx, &mut c, &mut signals)?;
            triggers::fire(ctx, &c.id, &signals)?;
            Ok(Outcome::Applied)
        }
        EventBody::PageVisited { contact_id, page } => {
            let mut c = contacts::require(ctx.conn, contact_id)?;
            Log {
                detail: Some(json!({"page": page})),
                ..Log::new("page_visited", &c.id)
            }
            .write(ctx.conn, ctx.now)?;
            let mut signals = vec![Signal::PageVisited];
            inbound(ctx, &mut c, &mut signals)?;
            triggers::fire(ctx, &c.id, &signals)?;
            Ok(Outcome::Applied)
        }
        EventBody::EmailOpened { message_key } => {
            email_engagement(ctx, message_key, "message_opened").map(|_| Outcome::Applied)
        }
        EventBody::EmailClicked { message_key } => {
            email_engagement(ctx, message_key, "message_clicked").map(|_| Outcome::Applied)
        }
        EventBody::EmailReplied { message_key } => {
            email_engagement(ctx, message_key, "message_replied").map(|_| Outcome::Applied)
        }
        EventBody::SmsReceived {
            contact_id,
            from,
            body,
            in_reply_to,
        } => sms_received(
            ctx,
            &ev.event_id,
            contact_id.as_deref(),
            from.as_deref(),
            body,
            in_reply_to.as_deref(),
        )
        .map(|_| Outcome::Applied),
        EventBody::DeliveryReceipt {
            message_key,
            status,
            bounce,
        } => {
            receipt(ctx, message_key, *status, *bounce)?;
            Ok(Outcome::Applied)
        }
        EventBody::ContactOptedOut {
            contact_id,
            channel,
            reason,
        } => {
            let mut c = contacts::require(ctx.conn, contact_id)?;
            let reason = reason.as_deref().unwrap_or("host_opt_out");
            let src = AuditSource {
                actor: "host",
                reason,
                message_key: None,
            };
            let mut signals = Vec::new();
            let channels: &[&str] = match channel {
                OptOutChannel::Email => &["email"],
                OptOutChannel::Sms => &["sms"],
                OptOutChannel::All => &["email", "sms"],
            };
            // As in a stale contact update: an opt-out that happened before
            // the channel's subscription last changed (the person or staff
            // decided since) is not applied to it.
            let mut applied = Vec::new();
            for ch in channels {
                if let Some(at) = ctx.occurred_at
                    && contacts::subscription_changed_since(ctx.conn, &c.id, ch, at)?
                {
                    continue;
                }
                applied.push(*ch);
                signals.extend(contacts::set_subscription(
                    ctx,
                    &mut c,
                    ch,
                    "unsubscribed",
                    src,
                )?);
            }
            if applied.is_empty() {
                Log {
                    detail: Some(json!({"event_id": ev.event_id})),
                    ..Log::new("opt_out_stale", &c.id)
                }
                .write(ctx.conn, ctx.now)?;
                return Ok(Outcome::Stale);
            }
            contacts::add_opt_out_signals(&c, &mut signals);
            // Already unsubscribed, the contact still leaves the automations
            // that end on the opt-out.
            let owed = match applied.as_slice() {
                [_, _] => Some(Signal::GlobalOptOut),
                ["sms"] => Some(Signal::SmsOptedOut),
                _ => None,
            };
            if let Some(owed) = owed
                && !signals.contains(&owed)
            {
                signals.push(owed);
            }
            contacts::touch(&mut c, ctx.now);
            contacts::save(ctx.conn, &c)?;
            triggers::fire(ctx, &c.id, &signals)?;
            Ok(Outcome::Applied)
        }
    }
}

/// Contact-initiated activity: moves both clocks, may add the reactivation
/// signal, saves. At the instant it happened (the event's `occurred_at`): a
/// visit on day 80 of a quiet spell, pushed on day 95, ends an 80-day gap.
fn inbound(ctx: &Ctx<'_>, c: &mut Contact, signals: &mut Vec<Signal>) -> Result<()> {
    if let Some(s) = contacts::engage(c, ctx.occurred_at.unwrap_or(ctx.now), ctx.settings.tz) {
        signals.push(s);
    }
    contacts::save(ctx.conn, c)
}

fn upsert(
    ctx: &mut Ctx<'_>,
    ev: &Event,
    props: &serde_json::Map<String, Value>,
    mode: UpsertMode,
    reason: Option<&str>,
    last_active: Option<Millis>,
) -> Result<Outcome> {
    let id = props
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    for key in props
        .keys()
        .filter(|k| *k != "id" && crate::model::contact::property_type(k).is_none())
    {
        ctx.conn
            .prepare_cached("INSERT INTO custom_properties (key, first_seen) VALUES (?1, ?2) ON CONFLICT DO NOTHING")?
            .execute(params![key, ctx.now])?;
    }
    // The event's time, clamped by `apply`: a time past the module's clock
    // (a host clock running ahead, a typo) counts as now; kept as it is, it
    // would make every later update stale.
    let occurred = ctx.occurred_at.unwrap_or(ctx.now);
    let audit = AuditSource {
        actor: "host",
        reason: reason.unwrap_or("host_update"),
        message_key: None,
    };
    let Some(mut c) = contacts::load(ctx.conn, &id)? else {
        let mut c = Contact {
            id: id.clone(),
            props: serde_json::Map::new(),
            insurance_verification: None,
            portal_active: false,
            created_at: ctx.now,
            // The host's last activity, when it knows one: a patient quiet
            // for a year is not made active by being imported.
            last_activity: last_active.unwrap_or(ctx.now),
            last_engaged_at: last_active,
            source_updated_at: Some(occurred),
            module_writes: Default::default(),
        };
        let mut initial = props.clone();
        initial.remove("id");
        initial.retain(|_, v| !v.is_null());
        c.props = initial;
        contacts::insert(ctx.conn, &c)?;
        for ch in ["email", "sms"] {
            let v = c.subscription(ch).to_string();
            if v != "unknown" {
                contacts::audit_subscription(ctx, &id, ch, "unknown", &v, audit)?;
            }
        }
        if number_stop(ctx, &mut c)?.is_some() {
            contacts::save(ctx.conn, &c)?;
        }
        Log::new("contact_created", &id).write(ctx.conn, ctx.now)?;
        let source = c.text("lead_source").map(str::to_string);
        triggers::fire(ctx, &id, &[Signal::ContactCreated { source }])?;
        return Ok(Outcome::Applied);
    };
    // Activity the host saw moves Last Activity forward whatever the order of
    // the updates (it is not a property: a stale update still carries it).
    // Last Activity only: the host's value counts its outbound messages too
    // (SPEC §1), so it is not the contact's own activity and never a
    // reactivation (the win-back email delivered would reach its goal).
    if let Some(at) = last_active {
        contacts::touch(&mut c, at);
    }
    if c.source_updated_at.is_some_and(|s| occurred < s) {
        let mut signals = stale_opt_outs(ctx, &mut c, props, occurred, audit)?;
        if last_active.is_some() || !signals.is_empty() {
            contacts::save(ctx.conn, &c)?;
        }
        Log {
            detail: Some(json!({"event_id": ev.event_id})),
            ..Log::new("contact_update_stale", &id)
        }
        .write(ctx.conn, ctx.now)?;
        if !signals.is_empty() {
            contacts::add_opt_out_signals(&c, &mut signals);
            triggers::fire(ctx, &id, &signals)?;
        }
        return Ok(Outcome::Stale);
    }
    c.source_updated_at = Some(occurred);
    // What the module wrote that this update did not know of stays (a late
    // echo of an earlier write-back, the host's record before it has one).
    let mut update = props.clone();
    if !c.module_writes.is_empty() {
        let kept = contacts::keep_module_writes(ctx.conn, &mut c, &mut update, mode, occurred)?;
        if !kept.is_empty() {
            Log {
                detail: Some(json!({"event_id": ev.event_id, "kept": kept})),
                ..Log::new("contact_update_stale", &id)
            }
            .write(ctx.conn, ctx.now)?;
        }
    }
    let old_phone = c.text("phone").map(str::to_string);
    let mut changes = contacts::apply_props(ctx, &mut c, update, mode, audit)?;
    if c.text("phone") != old_phone.as_deref() {
        changes.extend(number_stop(ctx, &mut c)?);
    }
    if !changes.is_empty() {
        contacts::touch(&mut c, ctx.now);
        let changed: Vec<&str> = changes
            .iter()
            .filter_map(|s| match s {
                Signal::PropertyChanged { property, .. } => Some(property.as_str()),
                _ => None,
            })
            .collect();
        Log {
            detail: Some(json!({"properties": changed})),
            ..Log::new("contact_updated", &id)
        }
        .write(ctx.conn, ctx.now)?;
    }
    contacts::save(ctx.conn, &c)?;
    let mut signals = changes;
    if signals.contains(&Signal::BecamePatient) {
        // The host makes its Lead a Patient when they book there.
        contacts::record_became_patient(ctx, &id, PatientBy::Host, None)?;
        signals.push(Signal::FirstBooking);
    }
    contacts::add_opt_out_signals(&c, &mut signals);
    triggers::fire(ctx, &id, &signals)?;
    Ok(Outcome::Applied)
}

/// The opt-outs of a stale contact update (older than the stored record):
/// its properties are ignored (SPEC §1), but an unsubscribe in it is
/// applied, audited, unless that channel's subscription changed after the
/// update happened (a newer update, or the person, decided since). An
/// opt-out is never lost to the order in which updates arrive. Returns the
/// change signals (none: nothing applied).
fn stale_opt_outs(
    ctx: &Ctx<'_>,
    c: &mut Contact,
    props: &serde_json::Map<String, Value>,
    occurred: Millis,
    audit: AuditSource<'_>,
) -> Result<Vec<Signal>> {
    let mut opt_outs = serde_json::Map::new();
    for channel in ["email", "sms"] {
        let key = format!("{channel}_subscription");
        if props.get(&key).and_then(Value::as_str) != Some("unsubscribed")
            || c.subscription(channel) == "unsubscribed"
        {
            continue;
        }
        if !contacts::subscription_changed_since(ctx.conn, &c.id, channel, occurred)? {
            opt_outs.insert(key, Value::String("unsubscribed".into()));
        }
    }
    if opt_outs.is_empty() {
        return Ok(Vec::new());
    }
    let signals = contacts::apply_props(ctx, c, opt_outs, UpsertMode::Partial, audit)?;
    contacts::touch(c, ctx.now);
    Ok(signals)
}

/// A contact who has a number that said STOP ([`stopped_numbers`]) is
/// unsubscribed from SMS by it, whatever the host's record says; checked
/// when the contact arrives and when their number changes.
fn number_stop(ctx: &Ctx<'_>, c: &mut Contact) -> Result<Option<Signal>> {
    let stopped = match c.text("phone") {
        Some(phone) => stopped_numbers::is_stopped(ctx.conn, phone)?,
        None => false,
    };
    if !stopped {
        return Ok(None);
    }
    let src = AuditSource {
        actor: "contact",
        reason: "stop_reply",
        message_key: None,
    };
    contacts::set_subscription(ctx, c, "sms", "unsubscribed", src)
}

fn appointment_event(ctx: &mut Ctx<'_>, a: &Appointment, status: &str) -> Result<Outcome> {
    let mut c = contacts::require(ctx.conn, &a.contact_id)?;
    let starts: Option<Millis> = a.starts_at.as_deref().and_then(|s| parse_rfc3339(s).ok());
    let occurred = ctx.occurred_at.unwrap_or(ctx.now);
    let stored: Option<(String, String, Option<Millis>)> = ctx
        .conn
        .prepare_cached("SELECT contact_id, status, changed_at FROM appointments WHERE id = ?1")?
        .query_row([&a.id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let (owner, was, changed_at) = match stored {
        Some((owner, was, changed_at)) => (Some(owner), Some(was), changed_at),
        None => (None, None, None),
    };
    if owner.as_deref().is_some_and(|o| o != c.id) {
        return Err(Error::Conflict(format!(
            "appointment {} belongs to another contact",
            a.id
        )));
    }
    // A change older than the one stored arrived late (a host's queue
    // resent out of order): "booked" at 09:00 after "cancelled" at 09:30
    // leaves the visit cancelled. The change is still logged (marked late)
    // and its signals judged against the stored status, as any change's.
    let late = changed_at.is_some_and(|at| occurred < at);
    // A change to an appointment the module never saw booked is recorded as it stands.
    if !late {
        ctx.conn
            .prepare_cached(
                "INSERT INTO appointments (id, contact_id, status, starts_at, provider_id, clinic_id, updated_at, changed_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT(id) DO UPDATE SET
                     -- A visit that happened stays completed: a re-sync saying
                     -- booked or rescheduled does not undo it.
                     status = CASE WHEN appointments.status = 'completed'
                                   AND excluded.status IN ('booked', 'rescheduled')
                              THEN appointments.status ELSE excluded.status END,
                     starts_at = COALESCE(excluded.starts_at, appointments.starts_at),
                     provider_id = COALESCE(excluded.provider_id, appointments.provider_id),
                     clinic_id = COALESCE(excluded.clinic_id, appointments.clinic_id),
                     updated_at = excluded.updated_at,
                     changed_at = excluded.changed_at",
            )?
            .execute(params![a.id, c.id, status, starts, a.provider_id, a.clinic_id, ctx.now, occurred])?;
    }
    let mut detail =
        json!({"appointment_id": a.id, "provider_id": a.provider_id, "clinic_id": a.clinic_id});
    if late {
        detail["late"] = json!(true);
    }
    Log {
        detail: Some(detail),
        ..Log::new(&format!("appointment_{status}") as &str, &c.id)
    }
    .write(ctx.conn, ctx.now)?;
    let mut signals = Vec::new();
    // The host sending a booked appointment again (a re-sync, under a new
    // event id) books nothing: no trigger, no Rebook goal, no new activity.
    // Booked again after a cancellation or a no-show is a new booking.
    // After the visit, booked or rescheduled again is a re-sync too.
    let resent = matches!(
        (status, was.as_deref()),
        ("booked", Some("booked" | "rescheduled")) | ("booked" | "rescheduled", Some("completed"))
    );
    let inbound_activity = matches!(status, "booked" | "rescheduled" | "completed") && !resent;
    // The first the module hears of an appointment may be after its booking
    // (rescheduled, completed, even cancelled): it was booked all the same.
    let first_seen = was.is_none();
    let booked_now = (status == "booked" && !resent)
        || (first_seen && matches!(status, "rescheduled" | "completed"));
    if booked_now || first_seen {
        let was_patient = c.status() == "patient";
        if booked_now {
            // Booked again after its cancellation (not that booking
            // arriving late) is another booking of the same visit.
            let rebooked = was.is_some() && !late;
            let booking = if !was_patient {
                Booking::First
            } else if rebooked {
                Booking::Another
            } else {
                match patient_booking(ctx, &c.id, &a.id, occurred)? {
                    Booking::Another if status != "booked" => Booking::Undated,
                    booking => booking,
                }
            };
            signals.push(Signal::AppointmentBooked {
                rebook: booking == Booking::Another,
            });
            if was_patient && booking == Booking::First {
                signals.push(Signal::FirstBooking);
            }
        }
        if !was_patient {
            c.props.insert("status".into(), json!("patient"));
            contacts::record_became_patient(ctx, &c.id, PatientBy::FirstBooking, None)?;
            signals.push(Signal::PropertyChanged {
                property: "status".into(),
                old_value: json!("lead"),
                new_value: json!("patient"),
            });
            signals.push(Signal::BecamePatient);
            signals.push(Signal::FirstBooking);
        }
    }
    if inbound_activity {
        inbound(ctx, &mut c, &mut signals)?;
    } else {
        contacts::touch(&mut c, ctx.now);
        contacts::save(ctx.conn, &c)?;
    }
    triggers::fire(ctx, &c.id, &signals)?;
    Ok(Outcome::Applied)
}

/// What a booking is for the contact's goals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Booking {
    /// Their first appointment (Book appointment).
    First,
    /// The first booking of a contact the host made a Patient just before:
    /// that flip counted it already.
    Reported,
    /// An existing patient booking another (Rebook appointment).
    Another,
    /// A Patient's visit first heard of after its booking (rescheduled,
    /// completed): booked at a time the module does not know, perhaps
    /// before they enrolled, so no Rebook counts it.
    Undated,
}

/// What a booking of appointment `appointment` (made at `at`) by a Patient
/// is. Another appointment on record makes it another booking. Without
/// one: a contact an automation marked a Patient had booked nothing, so
/// this is their first; a Lead the host made a Patient within a day before
/// the booking (the host's own upsert arriving before the booking that
/// made them one; a cancellation of this booking arriving before it) is
/// booking for the first time, counted at the flip; otherwise they are an
/// existing patient: they became a Patient long before (a visit the host
/// never reported), or were never a Lead here (imported as a patient,
/// their history kept by the host).
fn patient_booking(
    ctx: &Ctx<'_>,
    contact_id: &str,
    appointment: &str,
    at: Millis,
) -> Result<Booking> {
    let other_visit: bool = ctx
        .conn
        .prepare_cached(
            "SELECT EXISTS(SELECT 1 FROM appointments WHERE contact_id = ?1 AND id <> ?2)",
        )?
        .query_row(params![contact_id, appointment], |r| r.get(0))?;
    if other_visit {
        return Ok(Booking::Another);
    }
    Ok(match contacts::became_patient(ctx.conn, contact_id)? {
        Some((_, Some(PatientBy::Automation))) => Booking::First,
        Some((flip, _)) if flip >= at - DAY => Booking::Reported,
        _ => Booking::Another,
    })
}

fn message(ctx: &Ctx<'_>, key: &str) -> Result<outbox::Row> {
    Ok(message_send(ctx, key)?.0)
}

/// The message a key names, and the send of it the key names, if it names
/// one ([`named_send`]).
fn message_send(ctx: &Ctx<'_>, key: &str) -> Result<(outbox::Row, Option<u64>)> {
    match named_send(ctx, key)? {
        Some((r, send)) if r.kind == outbox::EffectKind::Message => Ok((r, send)),
        _ => Err(Error::not_found(format!("message {key}"))),
    }
}

/// The outbox row a key the host names: the row's own, or the key a sender
/// adapter gave its provider for a resend after a soft bounce
/// (`outbox::send_key`), as the provider's receipt or reply names it.
fn named(ctx: &Ctx<'_>, key: &str) -> Result<Option<outbox::Row>> {
    Ok(named_send(ctx, key)?.map(|(row, _)| row))
}

/// [`named`], with the resend the key names: `None` for the row's own key
/// (its latest send, as far as the module can tell), `Some(n)` for
/// `<key>-resend<n>`. A resend number the message has not reached names
/// nothing.
fn named_send(ctx: &Ctx<'_>, key: &str) -> Result<Option<(outbox::Row, Option<u64>)>> {
    if let Some(row) = outbox::by_key(ctx.conn, key)? {
        return Ok(Some((row, None)));
    }
    let Some((message_key, n)) = outbox::resent_key(key) else {
        return Ok(None);
    };
    if outbox::resends(ctx.conn, message_key)? < n {
        return Ok(None);
    }
    Ok(outbox::by_key(ctx.conn, message_key)?.map(|row| (row, Some(n))))
}

/// Message `key`, which an event of `channel` names in `field`: an
/// `email.opened` naming a text, or an SMS in reply to an email, is refused.
fn message_on(ctx: &Ctx<'_>, key: &str, channel: &str, field: &str) -> Result<outbox::Row> {
    let row = message(ctx, key)?;
    match row.channel.as_deref() {
        Some(c) if c == channel => Ok(row),
        other => Err(Error::invalid(format!(
            "{field}: message {key} is {}, not {channel}",
            other.unwrap_or("no message")
        ))),
    }
}

/// An `email.*` engagement the host pushes: it must name an email.
fn email_engagement(ctx: &mut Ctx<'_>, key: &str, kind: &'static str) -> Result<()> {
    let row = message_on(ctx, key, "email", "message_key")?;
    engagement_of(ctx, &row, kind, None)
}

/// A person answered message `row` (opened it, clicked, replied, opted out
/// through it), so it reached them: without a receipt yet, it is counted
/// delivered, with `implied_by` saying why, as a click counts as an open.
/// Many senders never push a delivery receipt, and rates per delivered
/// message (the opt-out rate) would otherwise pass 100 %. A receipt after
/// it is a repeat, a late bounce revokes it; a message that failed or has
/// an outcome already is left as it is.
pub(crate) fn delivery_implied(ctx: &Ctx<'_>, row: &outbox::Row, by: &str) -> Result<()> {
    if row.kind != outbox::EffectKind::Message || outbox::is_test_send(ctx.install_id, &row.key) {
        return Ok(());
    }
    // Answered by the person before the host answered the hand-over in
    // flight (an open pushed from inside the delivery callback): the host
    // took it. (Not in flight, the hand-over's time is not known: a row
    // left unanswered by a stopped process waits for its receipt.)
    let taken;
    let row = if in_flight_unanswered(ctx, row) == Some(true) {
        taken = taken_before_its_answer(ctx, row)?;
        &taken
    } else {
        row
    };
    // Only a message its sender took (not one held for sending hours or
    // a limit, nor one waiting to be sent again).
    if row.status != "accepted" {
        return Ok(());
    }
    // No outcome for the hand-over it answers: none at all, or a soft
    // bounce of an earlier one (the resend was taken since).
    let implied = match last_outcome(ctx, &row.key)? {
        None => true,
        Some((kind, bounce, attempt)) => {
            kind == "message_bounced"
                && bounce.as_deref() == Some("soft")
                && attempt.is_some_and(|a| a < row.attempts)
        }
    };
    if implied {
        Log::for_effect("message_delivered", row, Some(json!({"implied_by": by})))
            .write(ctx.conn, ctx.now)?;
    }
    Ok(())
}

/// A message's delivery outcome: its kind, the bounce's kind, and the
/// hand-over (the row's answers then) a bounce answered.
type DeliveryOutcome = (String, Option<String>, Option<i64>);

/// The latest delivery outcome of message `key`.
fn last_outcome(ctx: &Ctx<'_>, key: &str) -> Result<Option<DeliveryOutcome>> {
    Ok(ctx
        .conn
        .prepare_cached(LAST_OUTCOME_SQL)?
        .query_row([key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?)
}

/// Whether message `?1` had an open (click, reply) before, through the
/// partial index `events_message_history`, whose condition is repeated so
/// that SQLite uses it. The kind is written into each statement: with the
/// kind a parameter, SQLite re-prepared the statement at every bind to
/// decide whether the partial index applies to the value (about 160,000
/// instructions a call).
macro_rules! engaged_before_sql {
    ($kind:literal) => {
        concat!(
            "SELECT EXISTS(SELECT 1 FROM events WHERE message_key = ?1 AND kind = '",
            $kind,
            "' AND message_key IS NOT NULL AND (kind = 'message_delivered' OR kind = 'message_bounced'
              OR kind = 'message_opened' OR kind = 'message_clicked' OR kind = 'message_replied'))"
        )
    };
}
pub(crate) const OPENED_BEFORE_SQL: &str = engaged_before_sql!("message_opened");
pub(crate) const CLICKED_BEFORE_SQL: &str = engaged_before_sql!("message_clicked");
pub(crate) const REPLIED_BEFORE_SQL: &str = engaged_before_sql!("message_replied");

/// The last delivery outcome of message `?1` (and its bounce kind), through
/// the index `events_message_history`.
pub(crate) const LAST_OUTCOME_SQL: &str =
    "SELECT kind, json_extract(detail, '$.bounce'), json_extract(detail, '$.attempt') FROM events
    WHERE message_key = ?1 AND message_key IS NOT NULL
      AND (kind = 'message_delivered' OR kind = 'message_bounced')
    ORDER BY id DESC LIMIT 1";

fn engaged_before(ctx: &Ctx<'_>, key: &str, kind: &str) -> Result<bool> {
    let sql = match kind {
        "message_opened" => OPENED_BEFORE_SQL,
        "message_clicked" => CLICKED_BEFORE_SQL,
        _ => REPLIED_BEFORE_SQL,
    };
    Ok(ctx
        .conn
        .prepare_cached(sql)?
        .query_row([key], |r| r.get(0))?)
}

/// The kind an engagement of message `key` is logged as: the first open,
/// click or reply of a message is counted (`kind`), a later one is
/// `<kind>_again`, one from a machine `<kind>_by_machine`. Each counted
/// event is then one message that was opened, clicked or replied to.
fn engagement_kind(
    ctx: &Ctx<'_>,
    key: &str,
    kind: &'static str,
    machine: bool,
) -> Result<&'static str> {
    Ok(match (kind, machine) {
        ("message_opened", true) => "message_opened_by_machine",
        ("message_clicked", true) => "message_clicked_by_machine",
        _ if !engaged_before(ctx, key, kind)? => kind,
        ("message_opened", _) => "message_opened_again",
        ("message_clicked", _) => "message_clicked_again",
        _ => "message_replied_again",
    })
}

/// Records an open, click or reply of a module message. `machine` names a
/// machine source (privacy proxy, link scanner): such a hit is logged as
/// `<kind>_by_machine` with that flag and is not engagement — it fires no
/// trigger and no goal, and no figure counts it.
pub fn engagement_from(
    ctx: &mut Ctx<'_>,
    key: &str,
    kind: &'static str,
    machine: Option<&str>,
) -> Result<()> {
    let row = message(ctx, key)?;
    engagement_of(ctx, &row, kind, machine)
}

/// [`engagement_from`] for the message's row, already read.
fn engagement_of(
    ctx: &mut Ctx<'_>,
    row: &outbox::Row,
    kind: &'static str,
    machine: Option<&str>,
) -> Result<()> {
    let key = row.key.as_str();
    if outbox::is_test_send(ctx.install_id, key) {
        return Ok(()); // "Test to" samples never reach analytics
    }
    let logged = engagement_kind(ctx, key, kind, machine.is_some())?;
    let contact_id = row.contact_id.clone().unwrap_or_default();
    let mut c = contacts::require(ctx.conn, &contact_id)?;
    let log = |kind: &str, detail: Option<Value>| {
        Log {
            automation_id: row.automation_id.as_deref(),
            enrollment_id: row.enrollment_id,
            step_id: row.step_id.as_deref(),
            channel: row.channel.as_deref(),
            message_key: Some(key),
            detail,
            ..Log::new(kind, &contact_id)
        }
        .write(ctx.conn, ctx.now)
    };
    log(logged, machine.map(|m| json!({"machine": m})))?;
    if machine.is_some() {
        return Ok(());
    }
    // The message's first open, click or reply. A repeated one is activity,
    // but fires no Email engagement trigger again.
    let first = logged == kind;
    if first {
        delivery_implied(ctx, row, kind.trim_start_matches("message_"))?;
    }
    let email = match row.channel.as_deref() {
        Some("email") => outbox::category(ctx.conn, key)?,
        _ => None,
    };
    // A click of a message with no open is its open too.
    let opened = match kind {
        "message_opened" => first,
        "message_clicked" => !engaged_before(ctx, key, "message_opened")?,
        _ => false,
    };
    if kind == "message_clicked" && opened && row.channel.as_deref() == Some("email") {
        // A click on an email whose pixel never loaded (images off, a
        // client that blocks them) says it was opened: counted as its open,
        // as the triggers and conditions already take it.
        log("message_opened", Some(json!({"implied_by": "click"})))?;
    }
    let mut signals = vec![match kind {
        "message_opened" | "message_clicked" => Signal::EmailEngaged {
            clicked: kind == "message_clicked" && first,
            opened,
            asset_id: row.asset_id.clone(),
            enrollment_id: row.enrollment_id,
            email,
        },
        _ => Signal::EmailReplied {
            enrollment_id: row.enrollment_id,
        },
    }];
    inbound(ctx, &mut c, &mut signals)?;
    triggers::fire(ctx, &contact_id, &signals)
}

/// Who of the contacts with `phone` (a family phone is shared) sent a
/// text: the one the answered message went to (`in_reply_to`), or else the
/// one a text reached last (one its sender took: no test send, none held
/// or failed), or else the one created first (the number's owner).
fn replier(
    ctx: &Ctx<'_>,
    phone: &str,
    region: &str,
    in_reply_to: Option<&str>,
) -> Result<Option<String>> {
    let family = contacts::all_by_phone(ctx.conn, phone, region)?;
    if family.len() < 2 {
        return Ok(family.into_iter().next());
    }
    if let Some(key) = in_reply_to
        && let Some(to) = named(ctx, key)?.and_then(|row| row.contact_id)
        && family.contains(&to)
    {
        return Ok(Some(to));
    }
    Ok(
        outbox::last_messaged(ctx.conn, ctx.install_id, &family, "sms")?
            .or(family.first())
            .cloned(),
    )
}

fn sms_received(
    ctx: &mut Ctx<'_>,
    event_id: &str,
    contact_id: Option<&str>,
    from: Option<&str>,
    body: &str,
    in_reply_to: Option<&str>,
) -> Result<()> {
    let settings = ctx.settings;
    let region = settings.doc.sms.default_region.as_str();
    let stop = settings.is_opt_out(body);
    // An answer to a "Test to" sample: it went to staff, the contact only
    // lent it their data. It is nobody's reply, and a keyword in it speaks
    // for the sending number alone, never for the sample's contact.
    if let Some(k) = in_reply_to
        && outbox::is_test_send(ctx.install_id, k)
    {
        return match from {
            Some(phone) if stop => {
                stopped_numbers::record(ctx.conn, phone, region, ctx.now, event_id)
            }
            Some(phone) if settings.is_opt_in(body) => {
                stopped_numbers::forget(ctx.conn, phone, region).map(|_| ())
            }
            _ => Ok(()),
        };
    }
    let id = match (contact_id, from) {
        // A STOP is never lost: for a contact not pushed yet, the number
        // is remembered for whoever gets it.
        (Some(id), Some(phone)) if stop && contacts::load(ctx.conn, id)?.is_none() => {
            return stopped_numbers::record(ctx.conn, phone, region, ctx.now, event_id);
        }
        (Some(id), _) => id.to_string(),
        (None, Some(phone)) => match replier(ctx, phone, region, in_reply_to)? {
            Some(id) => id,
            // A number no contact has (yet, or any more): its STOP is kept
            // for whoever gets it, and its START lifts that.
            None if stop => {
                return stopped_numbers::record(ctx.conn, phone, region, ctx.now, event_id);
            }
            None if ctx.settings.is_opt_in(body) => {
                return stopped_numbers::forget(ctx.conn, phone, region).map(|_| ());
            }
            None => return Err(Error::not_found("no contact has the sending number")),
        },
        (None, None) => return Err(Error::invalid("sms.received needs contact_id or from")),
    };
    let mut c = contacts::require(ctx.conn, &id)?;
    if consent::undeliverable(&c, "sms")
        && let Some(number) = from.or(c.text("phone")).map(str::to_string)
    {
        number_reachable(ctx, &number, region)?;
        c = contacts::require(ctx.conn, &id)?;
    }
    let replied_to = match in_reply_to {
        // A STOP answering a message the module does not know (or an
        // email: the host's mistake) still stops.
        Some(k) if stop => match message_on(ctx, k, "sms", "in_reply_to") {
            Err(Error::NotFound(_) | Error::Invalid(_)) => {
                outbox::last_message(ctx.conn, ctx.install_id, &id, "sms")?
            }
            found => Some(found?),
        },
        Some(k) => Some(message_on(ctx, k, "sms", "in_reply_to")?),
        None => outbox::last_message(ctx.conn, ctx.install_id, &id, "sms")?,
    };
    let key = replied_to.as_ref().map(|r| r.key.clone());
    // Keywords change consent and are never replies.
    if stop {
        if let Some(row) = &replied_to {
            delivery_implied(ctx, row, "opt_out")?;
        }
        return sms_stop(ctx, event_id, c, from, key.as_deref());
    }
    // An opt-in keyword restores a number that said STOP. From anyone else
    // it is an answer ("Reply YES to confirm"), never marketing consent.
    if ctx.settings.is_opt_in(body) {
        let number = from.or(c.text("phone")).map(str::to_string);
        let was_stopped = match &number {
            Some(n) => stopped_numbers::forget(ctx.conn, n, region)?,
            None => false,
        };
        // Only the person's own STOP is lifted: an opt-out the host or
        // staff recorded stays theirs to undo.
        if was_stopped
            || contacts::own_opt_out(ctx.conn, &c.id, "sms")?.as_deref() == Some("stop_reply")
        {
            return sms_start(ctx, c, number.as_deref(), key.as_deref());
        }
    }
    if ctx.settings.is_help(body) {
        Log {
            channel: Some("sms"),
            message_key: key.as_deref(),
            ..Log::new("sms_help", &id)
        }
        .write(ctx.conn, ctx.now)?;
        // An inbound text touches the record, as a STOP does (a keyword,
        // not engagement).
        contacts::touch(&mut c, ctx.now);
        contacts::save(ctx.conn, &c)?;
        let text = ctx.settings.help_answer();
        compliance_sms(ctx, event_id, &c, &text, "help_answer");
        return Ok(());
    }
    let logged = match &key {
        Some(k) => engagement_kind(ctx, k, "message_replied", false)?,
        None => "message_replied",
    };
    Log {
        automation_id: replied_to.as_ref().and_then(|r| r.automation_id.as_deref()),
        enrollment_id: replied_to.as_ref().and_then(|r| r.enrollment_id),
        step_id: replied_to.as_ref().and_then(|r| r.step_id.as_deref()),
        channel: Some("sms"),
        message_key: key.as_deref(),
        ..Log::new(logged, &id)
    }
    .write(ctx.conn, ctx.now)?;
    if let Some(row) = &replied_to
        && logged == "message_replied"
    {
        delivery_implied(ctx, row, "reply")?;
    }
    let category = match &key {
        Some(k) => outbox::category(ctx.conn, k)?,
        None => None,
    };
    let mut signals = vec![Signal::SmsReplied {
        asset_id: replied_to.as_ref().and_then(|r| r.asset_id.clone()),
        replied_to: category,
    }];
    inbound(ctx, &mut c, &mut signals)?;
    triggers::fire(ctx, &id, &signals)
}

/// Soft bounces of one message retried before it is suppressed.
pub const MAX_SOFT_BOUNCES: i64 = 3;

/// The soft bounces recorded for a message (`?1`: its key), through the
/// partial index `events_message_outcome`.
pub const SOFT_BOUNCES_SQL: &str = "SELECT COUNT(*) FROM events WHERE message_key = ?1
    AND kind = 'message_bounced' AND json_extract(detail, '$.bounce') = 'soft'";

/// A delivery receipt: logged; a hard bounce marks the email address or
/// mobile number undeliverable (consent then suppresses every later message
/// to it on that channel); a soft bounce hands the message back to the host
/// with backoff, under the same key with the next `resend`, until
/// [`MAX_SOFT_BOUNCES`], then gives it up (`message_suppressed`, reason
/// `soft_bounce_limit`).
fn receipt(
    ctx: &mut Ctx<'_>,
    key: &str,
    status: DeliveryStatus,
    bounce: Option<BounceKind>,
) -> Result<()> {
    receipt_from(ctx, key, status, bounce, false)
}

/// A hard bounce the module's own sender saw as it handed the message over
/// (the SMTP relay refused the address with `5.1.x`): the same as a host's
/// hard-bounce receipt (the address becomes undeliverable, the step's
/// channel fallback goes out), logged with `"at": "hand_over"` so that the
/// figures count it as an attempt that was never accepted.
pub fn bounced_at_hand_over(ctx: &mut Ctx<'_>, key: &str) -> Result<()> {
    receipt_from(
        ctx,
        key,
        DeliveryStatus::Bounced,
        Some(BounceKind::Hard),
        true,
    )
}

fn receipt_from(
    ctx: &mut Ctx<'_>,
    key: &str,
    status: DeliveryStatus,
    bounce: Option<BounceKind>,
    at_hand_over: bool,
) -> Result<()> {
    let (mut row, send) = message_send(ctx, key)?;
    // The message's own key (a resend's send key names it too).
    let key = &row.key.clone();
    if outbox::is_test_send(ctx.install_id, key) {
        return Ok(()); // "Test to" samples never reach analytics
    }
    let last = last_outcome(ctx, key)?;
    // Sends handed over, the one in flight included: past the first, a
    // receipt may be about a send before the last.
    let handed = row.attempts + i64::from(in_flight_unanswered(ctx, &row) == Some(true));
    if !at_hand_over
        && (handed > 1 || send.is_some())
        && about_an_earlier_send(ctx, &row, handed, send, last.as_ref())?
    {
        return earlier_send(ctx, &row, status, bounce, send);
    }
    if !at_hand_over && unanswered(ctx, &row, last.as_ref()) {
        row = taken_before_its_answer(ctx, &row)?;
    }
    let kind = outcome_kind(status);
    let mut detail = match status {
        DeliveryStatus::Delivered => json!({}),
        // The hand-over it answers (the row's answers so far): a later
        // receipt with no hand-over between is about the same one.
        DeliveryStatus::Bounced => json!({"bounce": bounce, "attempt": row.attempts}),
        DeliveryStatus::Failed => json!({"source": "channel"}),
    };
    if at_hand_over {
        detail["at"] = json!("hand_over");
    }
    let log = |kind: &'static str, detail: Value| Log::for_effect(kind, &row, Some(detail));
    // Each hand-over has one outcome, and the figures count outcomes:
    // - A delivery and a hard bounce are final: nothing is handed over
    //   again after them. A receipt after a delivery is either the same
    //   delivery again (the host pushing it twice, one receipt per SMS
    //   segment), recorded but not counted, or a late bounce, which is the
    //   truth: it counts and revokes the delivery. Any receipt after a hard
    //   bounce repeats it.
    // - A failed message (a failed receipt, the sender's refusal, the soft
    //   bounces used up) is final too, its fallback gone: any receipt
    //   after it is recorded only.
    // - A soft bounce is provisional: the message waits to be handed over
    //   again. Until it is, a second soft bounce is the same one again,
    //   and a delivery, a hard bounce or a failure is this hand-over's
    //   real outcome: it revokes the soft bounce (and a delivery cancels
    //   the resend). A soft bounce of the resend counts again.
    // The module's own relay's bounce at hand-over is always a new attempt's.
    let delivered_before = matches!(last.as_ref(), Some((k, _, _)) if k == "message_delivered");
    // A soft bounce of this very hand-over: no answer since (bounces
    // recorded before the attempt was kept: the resend still waits).
    let same_hand_over = |attempt: Option<i64>| match attempt {
        Some(a) => a == row.attempts,
        None => row.status == "retry" || row.status == "pending",
    };
    let repeated = |ctx: &Ctx<'_>, after: &str| {
        log("receipt_repeated", json!({"status": kind, "after": after})).write(ctx.conn, ctx.now)
    };
    let mut bounce_revoked = false;
    if !at_hand_over {
        match last
            .as_ref()
            .map(|(k, b, a)| (k.as_str(), b.as_deref(), *a))
        {
            Some(("message_delivered", _, _)) if status == DeliveryStatus::Bounced => {
                log("message_delivery_revoked", json!({})).write(ctx.conn, ctx.now)?;
            }
            Some(("message_delivered", _, _)) => return repeated(ctx, "delivered"),
            Some(("message_bounced", Some("hard"), _)) => return repeated(ctx, "hard_bounce"),
            _ if row.status == "failed" => {
                // Counted as nothing, but what it says of the address holds.
                if bounce == Some(BounceKind::Hard) {
                    address_undeliverable(ctx, &row)?;
                }
                return repeated(ctx, "failed");
            }
            Some(("message_bounced", Some("soft"), attempt)) if same_hand_over(attempt) => {
                if bounce == Some(BounceKind::Soft) {
                    return repeated(ctx, "soft_bounce");
                }
                log("message_bounce_revoked", json!({"by": kind})).write(ctx.conn, ctx.now)?;
                bounce_revoked = true;
            }
            _ => {}
        }
    }
    log(kind, detail).write(ctx.conn, ctx.now)?;
    if bounce_revoked {
        // The resend that bounce scheduled will not go: the count of
        // resends goes back, so that receipts naming the sends are read
        // against the sends made.
        ctx.conn
            .prepare_cached(
                "UPDATE outbox SET payload = CASE WHEN json_extract(payload, '$.resend') > 1
                        THEN json_set(payload, '$.resend', json_extract(payload, '$.resend') - 1)
                        ELSE json_remove(payload, '$.resend') END
                  WHERE idempotency_key = ?1 AND json_extract(payload, '$.resend') IS NOT NULL",
            )?
            .execute(params![key])?;
    }
    if bounce_revoked && status != DeliveryStatus::Failed {
        // The hand-over's outcome after all: no resend. (A failure is
        // made final below.)
        let now_status = match status {
            DeliveryStatus::Delivered => "accepted",
            _ => "failed",
        };
        ctx.conn
            .prepare_cached(
                "UPDATE outbox SET status = ?2, updated_at = ?3
                  WHERE idempotency_key = ?1 AND status IN ('pending', 'retry')",
            )?
            .execute(params![key, now_status, ctx.now])?;
    }
    // A hard bounce or a failed delivery is final: the step's channel fallback (if any) goes out.
    let mut failed_for_good = matches!(
        (status, bounce),
        (DeliveryStatus::Bounced, Some(BounceKind::Hard)) | (DeliveryStatus::Failed, _)
    );
    match (status, bounce, row.channel.as_deref()) {
        (DeliveryStatus::Bounced, Some(BounceKind::Hard), _) => {
            address_undeliverable(ctx, &row)?;
        }
        // Delivered once already (this late bounce revokes that): handing
        // it over again could reach the person twice. Recorded only.
        (DeliveryStatus::Bounced, Some(BounceKind::Soft), _) if delivered_before => {}
        (DeliveryStatus::Bounced, Some(BounceKind::Soft), _) => {
            let soft: i64 = ctx
                .conn
                .prepare_cached(SOFT_BOUNCES_SQL)?
                .query_row([key], |r| r.get(0))?;
            // `soft` counts this bounce too: bounces 1..=MAX are retried.
            if soft <= MAX_SOFT_BOUNCES {
                // Handed over again as a new send: `resend` in the payload
                // (the host carries out each key and resend once; a sender
                // adapter's provider gets a key of its own for it).
                ctx.conn
                    .prepare_cached(
                        "UPDATE outbox SET status = 'retry', next_attempt_at = ?2, updated_at = ?3,
                                payload = json_set(payload, '$.resend', ?4)
                          WHERE idempotency_key = ?1",
                    )?
                    .execute(params![
                        key,
                        ctx.now + crate::outbox::backoff(soft + 1),
                        ctx.now,
                        soft
                    ])?;
            } else {
                ctx.conn
                    .prepare_cached("UPDATE outbox SET status = 'failed', updated_at = ?2 WHERE idempotency_key = ?1")?
                    .execute(params![key, ctx.now])?;
                log("message_suppressed", json!({"reason": "soft_bounce_limit"}))
                    .write(ctx.conn, ctx.now)?;
                failed_for_good = true;
            }
        }
        // The channel failed for good: the row is final (its fallback, if
        // any, goes out below), so no later receipt hands it over again.
        (DeliveryStatus::Failed, _, _) => {
            ctx.conn
                .prepare_cached(
                    "UPDATE outbox SET status = 'failed', updated_at = ?2
                      WHERE idempotency_key = ?1 AND status IN ('pending', 'retry', 'accepted')",
                )?
                .execute(params![key, ctx.now])?;
        }
        _ => {}
    }
    if failed_for_good {
        never_reached(ctx, &row)?;
    }
    Ok(())
}

/// Whether message `row`'s latest hand-over has no answer recorded, given
/// its latest delivery outcome `last`: in flight (the worker's
/// [`super::InFlight`]) with the answers it was handed over with; or, not
/// in flight, waiting to be offered (`pending`, never answered; `retry`
/// after a "retry later") rather than to be sent again after a soft bounce
/// of its last hand-over. A receipt, an open or a click for such a
/// message says the host took it: the host pushed it from inside its
/// delivery callback before returning, the process stopped before the
/// callback's answer was recorded, or the host sent the message after
/// asking to be asked again.
fn unanswered(ctx: &Ctx<'_>, row: &outbox::Row, last: Option<&DeliveryOutcome>) -> bool {
    if let Some(unanswered) = in_flight_unanswered(ctx, row) {
        return unanswered;
    }
    row.status == "pending" || (row.status == "retry" && !soft_bounced_last(row, last))
}

/// Whether the last hand-over of message `row` soft-bounced (its outcome
/// `last` is a soft bounce of that hand-over): the message waits to be sent
/// again.
fn soft_bounced_last(row: &outbox::Row, last: Option<&DeliveryOutcome>) -> bool {
    matches!(last, Some((kind, bounce, attempt))
        if kind == "message_bounced" && bounce.as_deref() == Some("soft")
            && attempt.is_none_or(|a| a == row.attempts))
}

/// When the last soft bounce of message `?1` before its hand-over `?2` was
/// recorded (the bounce that scheduled the send `?2`), through the partial
/// index `events_message_outcome`.
const LAST_SOFT_BOUNCE_SQL: &str = "SELECT max(at) FROM events WHERE message_key = ?1
    AND kind = 'message_bounced' AND json_extract(detail, '$.bounce') = 'soft'
    AND json_extract(detail, '$.attempt') < ?2";

/// Whether a receipt for message `row` (naming resend `send` of it, or its
/// own key: `None`) is about an earlier send than the last one handed over.
/// The payload's `resend` counts the sends again scheduled, so while the
/// message waits for one, the last handed over is the one before. A
/// receipt naming the message's own key is about the last send, unless it
/// says it happened (`occurred_at`) no later than the soft bounce that made
/// the module send it again was recorded: the resend went after that
/// bounce and its backoff, so only an earlier send's news (a provider's
/// retried webhook about the first bounce) can be dated before. Without
/// `occurred_at`, it is taken for the last send's.
fn about_an_earlier_send(
    ctx: &Ctx<'_>,
    row: &outbox::Row,
    handed: i64,
    send: Option<u64>,
    last: Option<&DeliveryOutcome>,
) -> Result<bool> {
    // Waiting: the last hand-over soft-bounced and none went since (one in
    // flight is the resend, gone).
    let waiting = handed == row.attempts
        && soft_bounced_last(row, last)
        && (row.status == "retry" || row.status == "pending");
    let resends = outbox::resends(ctx.conn, &row.key)?;
    let last_sent = if waiting {
        resends.saturating_sub(1)
    } else {
        resends
    };
    Ok(match send {
        // The resend still waiting to go: nothing can be known of it.
        Some(n) if n > last_sent => {
            return Err(Error::not_found(format!(
                "message {}: resend {n} was not sent yet",
                row.key
            )));
        }
        Some(n) => n < last_sent,
        None if last_sent == 0 => false,
        None => {
            let Some(at) = ctx.occurred_at else {
                return Ok(false);
            };
            let bounced_at: Option<Millis> = ctx
                .conn
                .prepare_cached(LAST_SOFT_BOUNCE_SQL)?
                .query_row(params![row.key, handed], |r| r.get(0))?;
            bounced_at.is_some_and(|b| at <= b)
        }
    })
}

/// For message `row` in flight: whether nothing was recorded of it since
/// it was handed over (it has the answers it had then). `None` when it is
/// not in flight.
fn in_flight_unanswered(ctx: &Ctx<'_>, row: &outbox::Row) -> Option<bool> {
    let handed = ctx.in_flight?.answers_when_handed(row.id)?;
    Some(handed == row.attempts)
}

/// Records the hand-over of message `row`, which has no answer yet
/// ([`unanswered`]), as taken: its one send attempt, `message_sent` with
/// `"by": "receipt"`. The callback's own answer, when it comes, finds it
/// answered (the worker records an answer only for a row with the answers
/// it had when handed over). Left unanswered, a hard-bounced email was
/// handed over again after a restart and suppressed against the address
/// the bounce had marked undeliverable (bounced, suppressed, never counted
/// as sent), and a soft bounce pushed from the callback was overwritten by
/// its answer (never sent again). Returns the row as it is now.
fn taken_before_its_answer(ctx: &Ctx<'_>, row: &outbox::Row) -> Result<outbox::Row> {
    outbox::record_answer(
        ctx.conn,
        row.id,
        outbox::HostAnswer::Accepted,
        None,
        ctx.now,
    )?;
    Log::for_effect("message_sent", row, Some(json!({"by": "receipt"})))
        .write(ctx.conn, ctx.now)?;
    message(ctx, &row.key)
}

/// A receipt about an earlier send of message `row` than the last one
/// handed over ([`about_an_earlier_send`]; `resend` is the send it names,
/// if it names one): a send that soft-bounced and was sent again, its
/// outcome counted then. The receipt is recorded only (`receipt_repeated`
/// after `resent`); a hard bounce still marks the address undeliverable.
/// Taken for the latest send's, a provider's retried webhook about the
/// first send's soft bounce revoked the resend's delivery, or handed the
/// message over a third time.
fn earlier_send(
    ctx: &mut Ctx<'_>,
    row: &outbox::Row,
    status: DeliveryStatus,
    bounce: Option<BounceKind>,
    resend: Option<u64>,
) -> Result<()> {
    if status == DeliveryStatus::Bounced && bounce == Some(BounceKind::Hard) {
        address_undeliverable(ctx, row)?;
    }
    Log::for_effect(
        "receipt_repeated",
        row,
        Some(json!({"status": outcome_kind(status), "after": "resent", "resend": resend})),
    )
    .write(ctx.conn, ctx.now)
}

/// The event-log kind of a receipt's outcome.
fn outcome_kind(status: DeliveryStatus) -> &'static str {
    match status {
        DeliveryStatus::Delivered => "message_delivered",
        DeliveryStatus::Bounced => "message_bounced",
        DeliveryStatus::Failed => "message_failed",
    }
}

/// A hard bounce of message `row`: the email address or mobile number it
/// went to is undeliverable (consent suppresses every later message to it
/// on that channel until it changes), for its contact and, for a number,
/// everyone who shares it; not for a contact whose address has changed
/// since.
fn address_undeliverable(ctx: &mut Ctx<'_>, row: &outbox::Row) -> Result<()> {
    let channel = row.channel.as_deref().unwrap_or("email");
    // The address the message went to: a contact who has changed it since
    // keeps the new one.
    let Some(to) = outbox::recipient(ctx.conn, &row.key)? else {
        return Ok(());
    };
    // A number is the line's, whoever has it: everyone sharing it (a
    // family phone) is marked, as a STOP stops them all.
    let ids = match channel {
        "sms" => {
            let region = ctx.settings.doc.sms.default_region.as_str();
            contacts::all_by_phone(ctx.conn, &to, region)?
        }
        _ => row.contact_id.iter().cloned().collect(),
    };
    for id in ids {
        let Some(mut c) = contacts::load(ctx.conn, &id)? else {
            continue;
        };
        let Some(address) = c.text(consent::address_field(channel)).map(str::to_string) else {
            continue;
        };
        // A number's contacts were found by it, in any of its forms.
        if channel != "sms" && !consent::same_address(channel, &address, &to) {
            continue;
        }
        c.props.insert(
            consent::undeliverable_property(channel).into(),
            Value::String(address),
        );
        contacts::save(ctx.conn, &c)?;
        ctx.rescreen(&id);
        let detail = Some(json!({"reason": "hard_bounce"}));
        let log = if row.contact_id.as_deref() == Some(id.as_str()) {
            Log::for_effect("address_undeliverable", row, detail)
        } else {
            Log {
                channel: Some(channel),
                message_key: Some(&row.key),
                detail,
                ..Log::new("address_undeliverable", &id)
            }
        };
        log.write(ctx.conn, ctx.now)?;
    }
    Ok(())
}

/// A text came from `number`: it reaches a phone after all, so the mark a
/// hard bounce left on it ([`address_undeliverable`]) goes, for everyone
/// who has the number (logged `address_deliverable`).
fn number_reachable(ctx: &mut Ctx<'_>, number: &str, region: &str) -> Result<()> {
    // Found by the number in any of its forms; the mark is on the number
    // as the contact has it.
    for id in contacts::all_by_phone(ctx.conn, number, region)? {
        let Some(mut c) = contacts::load(ctx.conn, &id)? else {
            continue;
        };
        if consent::undeliverable(&c, "sms") {
            c.props.remove(consent::SMS_UNDELIVERABLE);
            contacts::save(ctx.conn, &c)?;
            Log {
                channel: Some("sms"),
                detail: Some(json!({"reason": "sms_received"})),
                ..Log::new("address_deliverable", &id)
            }
            .write(ctx.conn, ctx.now)?;
        }
    }
    Ok(())
}

/// A message that will never reach its recipient: suppressed at hand-over,
/// failed or hard-bounced for good. An SMS that opened its number's thread
/// leaves it unopened, so the next message carries the consent footer, and
/// the step's channel fallback goes out.
pub(crate) fn never_reached(ctx: &mut Ctx<'_>, row: &outbox::Row) -> Result<()> {
    if row.channel.as_deref() == Some("sms") {
        crate::messaging::compose::unopen_thread(ctx.conn, &row.key)?;
    }
    fallback_after_failure(ctx, row)
}

/// Channel fallback after a final delivery failure or a suppression at
/// hand-over (issue 3 §7): when the failed message is a step's own message
/// and the step (in the automation's current version) has a fallback, it is
/// queued once per enrollment and step.
fn fallback_after_failure(ctx: &mut Ctx<'_>, row: &outbox::Row) -> Result<()> {
    let key = row.key.as_str();
    let (Some(enrollment_id), Some(automation_id), Some(step_id)) = (
        row.enrollment_id,
        row.automation_id.as_deref(),
        row.step_id.as_deref(),
    ) else {
        return Ok(());
    };
    // Only the step's own message: not a fallback, a keyword answer or a test send.
    if key != enrollment::effect_key(ctx.install_id, enrollment_id, step_id) {
        return Ok(());
    }
    let catalog = ctx.catalog;
    let Some(version) = catalog.get(automation_id).map(|a| &a.current) else {
        return Ok(());
    };
    let Some(step) = version.flow.step(step_id).cloned() else {
        return Ok(());
    };
    let window = version
        .def
        .window(&ctx.settings.doc.default_run_window)
        .clone();
    match enrollment::load(ctx.conn, enrollment_id)? {
        // A contact who left the automation gets no late message from it.
        Some(e) if e.state != "exited" => {
            enrollment::send_fallback(ctx, &e, &step, &window).map(|_| ())
        }
        _ => Ok(()),
    }
}

/// A START-type keyword from a number that said STOP (or from a contact
/// whose own STOP unsubscribed them): the sender is subscribed again, and so is every
/// other contact of the number whose SMS opt-out was the number's STOP
/// (not one they asked for some other way).
fn sms_start(
    ctx: &mut Ctx<'_>,
    sender: Contact,
    number: Option<&str>,
    key: Option<&str>,
) -> Result<()> {
    let region = ctx.settings.doc.sms.default_region.as_str();
    let family = match number {
        Some(number) => contacts::all_by_phone(ctx.conn, number, region)?,
        None => Vec::new(),
    };
    start_one(ctx, sender.clone(), key)?;
    for id in family.iter().filter(|i| **i != sender.id) {
        if contacts::own_opt_out(ctx.conn, id, "sms")?.as_deref() == Some("stop_reply") {
            start_one(ctx, contacts::require(ctx.conn, id)?, key)?;
        }
    }
    Ok(())
}

/// One contact subscribed again by their number's START.
fn start_one(ctx: &mut Ctx<'_>, mut c: Contact, key: Option<&str>) -> Result<()> {
    let src = AuditSource {
        actor: "contact",
        reason: "start_reply",
        message_key: key,
    };
    let Some(change) = contacts::set_subscription(ctx, &mut c, "sms", "subscribed", src)? else {
        return Ok(());
    };
    contacts::touch(&mut c, ctx.now);
    contacts::save(ctx.conn, &c)?;
    Log {
        channel: Some("sms"),
        message_key: key,
        ..Log::new("sms_opt_in", &c.id)
    }
    .write(ctx.conn, ctx.now)?;
    triggers::fire(ctx, &c.id, &[change])
}

/// A STOP-type keyword: the number says stop, so it is remembered
/// ([`stopped_numbers`]), every contact who has it (a family phone) is
/// unsubscribed from SMS, and the sender gets one confirmation, the first
/// time only. Contacts already unsubscribed still leave the automations
/// that end on an SMS opt-out.
fn sms_stop(
    ctx: &mut Ctx<'_>,
    event_id: &str,
    sender: Contact,
    from: Option<&str>,
    key: Option<&str>,
) -> Result<()> {
    let region = ctx.settings.doc.sms.default_region.as_str();
    let family = match from.or(sender.text("phone")) {
        Some(number) => {
            if contacts::phone_key(number).is_some() {
                stopped_numbers::record(ctx.conn, number, region, ctx.now, event_id)?;
            }
            contacts::all_by_phone(ctx.conn, number, region)?
        }
        None => Vec::new(),
    };
    let mut changed = stop_one(ctx, sender.clone(), key)?;
    for id in family.iter().filter(|i| **i != sender.id) {
        changed |= stop_one(ctx, contacts::require(ctx.conn, id)?, key)?;
    }
    if changed {
        let text = ctx.settings.stop_confirmation();
        compliance_sms(ctx, event_id, &sender, &text, "stop_confirmation");
    }
    Ok(())
}

/// One contact of a number that said STOP; returns whether their SMS
/// subscription changed. Only a change is logged as an opt-out (one per
/// person in the figures); the SMS opt-out signal fires either way.
fn stop_one(ctx: &mut Ctx<'_>, mut c: Contact, key: Option<&str>) -> Result<bool> {
    let src = AuditSource {
        actor: "contact",
        reason: "stop_reply",
        message_key: key,
    };
    let change = contacts::set_subscription(ctx, &mut c, "sms", "unsubscribed", src)?;
    contacts::touch(&mut c, ctx.now);
    contacts::save(ctx.conn, &c)?;
    let changed = change.is_some();
    if changed {
        Log {
            channel: Some("sms"),
            message_key: key,
            ..Log::new("sms_opt_out", &c.id)
        }
        .write(ctx.conn, ctx.now)?;
    }
    let mut signals: Vec<Signal> = change.into_iter().collect();
    signals.push(Signal::SmsOptedOut);
    contacts::add_opt_out_signals(&c, &mut signals);
    triggers::fire(ctx, &c.id, &signals)?;
    Ok(changed)
}

/// Queues the one SMS a keyword calls for (STOP confirmation, HELP answer):
/// no marketing content, keyed by the inbound event so it is sent once.
/// It is rendered as any SMS is (`rendered`: the E.164 number, the
/// practice's sender number, the measured text), so that a sender adapter
/// can send it too.
fn compliance_sms(ctx: &mut Ctx<'_>, event_id: &str, c: &Contact, text: &str, purpose: &str) {
    let Some(number) = c.text("phone") else {
        return;
    };
    let sms = &ctx.settings.doc.sms;
    let to = crate::messaging::sms::normalize_e164(number, &sms.default_region)
        .unwrap_or_else(|_| number.to_string());
    let measure = crate::messaging::sms::measure(text);
    let key = format!("{}-kw-{event_id}", ctx.install_id);
    let payload = json!({
        "key": key, "kind": "message", "channel": "sms", "category": "compliance", "purpose": purpose,
        "contact_id": c.id, "to": to, "content": {"message": text}, "placeholders": {},
        "rendered": {
            "to": to, "from": sms.sender_number, "text": text, "first_in_thread": false,
            "encoding": measure.encoding, "segments": measure.segments, "credits": measure.credits,
        },
    });
    ctx.effects.push(crate::outbox::Effect {
        key: key.clone(),
        kind: crate::outbox::EffectKind::Message,
        payload,
        contact_id: c.id.clone(),
        automation_id: None,
        enrollment_id: None,
        step_id: None,
        channel: Some("sms".into()),
        asset_id: None,
        // A reply to the contact's own message: at once, at any hour.
        not_before: None,
        hold: None,
    });
}
