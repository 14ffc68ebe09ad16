//! Events the host pushes (SPEC §1, issue 2 §3).
//!
//! Every event is a JSON object with the host's own `event_id` (idempotency:
//! a duplicate has no second effect), a `type`, an optional `occurred_at`
//! (RFC 3339, the host's time; used to ignore stale contact updates) and the
//! fields of its type. [`Event::parse`] validates structure and sizes;
//! the core then validates against state (unknown contacts, unknown messages).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::clock::{Millis, parse_rfc3339};
use crate::error::{Error, Result, parse_json};
use crate::model::contact::{normalize_properties, validate_id};

/// Largest accepted single event, in bytes.
pub const MAX_EVENT_BYTES: usize = 256 * 1024;
/// Most events in one batch.
pub const MAX_BATCH_EVENTS: usize = 10_000;
/// Largest accepted batch, in bytes.
pub const MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;

/// Whether a contact upsert replaces the record or patches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UpsertMode {
    /// Only the properties present change; `null` clears one.
    #[default]
    Partial,
    /// The record becomes exactly the properties given.
    Full,
}

/// An appointment as the host sends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Appointment {
    /// The host's appointment id.
    pub id: String,
    /// The contact.
    pub contact_id: String,
    /// Start time, RFC 3339.
    #[serde(default)]
    pub starts_at: Option<String>,
    /// Provider id.
    #[serde(default)]
    pub provider_id: Option<String>,
    /// Clinic id.
    #[serde(default)]
    pub clinic_id: Option<String>,
}

/// A form submission.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FormSubmission {
    /// Submission id.
    pub id: String,
    /// Form id.
    pub form_id: String,
    /// Form name as the practice calls it.
    pub form_name: String,
    /// The contact.
    pub contact_id: String,
    /// Answers, by question id.
    #[serde(default)]
    pub answers: Map<String, Value>,
}

/// A review.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Review {
    /// Review id.
    pub id: String,
    /// The contact.
    pub contact_id: String,
    /// Where it came from.
    pub source: ReviewSource,
    /// Stars, 1–5.
    #[serde(default)]
    pub rating: Option<u8>,
}

/// Where a review came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReviewSource {
    /// Google.
    Google,
    /// The practice's own review form.
    Internal,
    /// The intake form.
    IntakeForm,
}

/// Insurance verification states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum VerificationStatus {
    /// Waiting.
    Pending,
    /// Verified.
    Verified,
    /// Verification failed.
    Failed,
}

/// Delivery outcomes reported by the host's channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Accepted by the receiving server.
    Delivered,
    /// Bounced (see `bounce`).
    Bounced,
    /// An internal failure in the host's channel (API error, rate limit).
    Failed,
}

/// Hard or soft bounce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BounceKind {
    /// Invalid recipient.
    Hard,
    /// Mailbox full, server error.
    Soft,
}

/// Opt-out scope of an account-level opt-out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OptOutChannel {
    /// Email only.
    Email,
    /// SMS only.
    Sms,
    /// Every channel: a global opt-out, which also ends every enrollment.
    All,
}

/// The body of an event, by `type`. A field its type does not define is
/// refused (a misspelt `occured_at` or `Mode` would otherwise be dropped
/// silently); `contact` objects keep unknown keys as custom properties.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum EventBody {
    /// A contact was created or changed in the host. `contact` holds `id` and properties.
    #[serde(rename = "contact.upserted")]
    ContactUpserted {
        /// `id` plus properties.
        contact: Map<String, Value>,
        /// Partial (default) or full.
        #[serde(default)]
        mode: UpsertMode,
        /// Why subscriptions changed, for the audit log (e.g. `staff`,
        /// `import`). A person's own opt-out (STOP, unsubscribe link) is
        /// lifted only with `staff` (a staff member recorded their consent)
        /// or `portal` (they subscribed again in the patient portal); with
        /// any other reason the opt-out is kept and the rest applies.
        #[serde(default)]
        reason: Option<String>,
        /// When the contact was last active in the host (RFC 3339): their
        /// last visit, message or portal login, as the host's records have
        /// it. Seeds Last Activity (and the contact's own activity, which
        /// Patient reactivation measures) when the module first sees the
        /// contact, so that Inactive for N sees patients who were already
        /// quiet at import instead of counting from the import; on a known
        /// contact it moves them forward only. A time after the module's
        /// clock counts as now.
        #[serde(default)]
        last_activity_at: Option<String>,
    },
    /// An appointment was booked.
    #[serde(rename = "appointment.booked")]
    AppointmentBooked {
        /// The appointment.
        appointment: Appointment,
    },
    /// An appointment moved.
    #[serde(rename = "appointment.rescheduled")]
    AppointmentRescheduled {
        /// The appointment.
        appointment: Appointment,
    },
    /// An appointment was cancelled.
    #[serde(rename = "appointment.cancelled")]
    AppointmentCancelled {
        /// The appointment.
        appointment: Appointment,
    },
    /// The patient came.
    #[serde(rename = "appointment.completed")]
    AppointmentCompleted {
        /// The appointment.
        appointment: Appointment,
    },
    /// The patient did not come.
    #[serde(rename = "appointment.no_show")]
    AppointmentNoShow {
        /// The appointment.
        appointment: Appointment,
    },
    /// A form was submitted.
    #[serde(rename = "form.submitted")]
    FormSubmitted {
        /// The submission.
        submission: FormSubmission,
    },
    /// A review was attached to a contact.
    #[serde(rename = "review.submitted")]
    ReviewSubmitted {
        /// The review.
        review: Review,
    },
    /// Insurance verification changed.
    #[serde(rename = "insurance.verification")]
    InsuranceVerification {
        /// The contact.
        contact_id: String,
        /// New status.
        status: VerificationStatus,
    },
    /// The patient portal account became active.
    #[serde(rename = "portal.activated")]
    PortalActivated {
        /// The contact.
        contact_id: String,
    },
    /// A tracked page was visited.
    #[serde(rename = "page.visited")]
    PageVisited {
        /// The contact.
        contact_id: String,
        /// A page id or path (no query strings: they may carry patient data).
        page: String,
    },
    /// A module email was opened.
    #[serde(rename = "email.opened")]
    EmailOpened {
        /// The message's idempotency key.
        message_key: String,
    },
    /// A link in a module email was clicked.
    #[serde(rename = "email.clicked")]
    EmailClicked {
        /// The message's idempotency key.
        message_key: String,
    },
    /// The contact replied to a module email.
    #[serde(rename = "email.replied")]
    EmailReplied {
        /// The message's idempotency key.
        message_key: String,
    },
    /// An inbound SMS.
    #[serde(rename = "sms.received")]
    SmsReceived {
        /// The contact, when the host knows it.
        #[serde(default)]
        contact_id: Option<String>,
        /// The sender's number, used when `contact_id` is absent. When
        /// several contacts have it (a family phone), the reply is the
        /// contact's whom the `in_reply_to` message went to, else the one
        /// texted last, else the one created first.
        #[serde(default)]
        from: Option<String>,
        /// The text.
        body: String,
        /// The module message it answers, when the host knows it.
        #[serde(default)]
        in_reply_to: Option<String>,
    },
    /// What happened to a message the host sent.
    #[serde(rename = "delivery.receipt")]
    DeliveryReceipt {
        /// The message's idempotency key.
        message_key: String,
        /// Outcome.
        status: DeliveryStatus,
        /// For bounces: hard or soft.
        #[serde(default)]
        bounce: Option<BounceKind>,
    },
    /// An account-level opt-out recorded by the host. One that happened
    /// (`occurred_at`) before a channel's latest subscription change leaves
    /// that channel as it is: a newer decision stands.
    #[serde(rename = "contact.opted_out")]
    ContactOptedOut {
        /// The contact.
        contact_id: String,
        /// Which channels.
        channel: OptOutChannel,
        /// Why (e.g. `unsubscribe_link`, `staff`).
        #[serde(default)]
        reason: Option<String>,
    },
}

/// One pushed event. A field other than `event_id`, `occurred_at`, `type`
/// and the fields of its type is refused, by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(extend("unevaluatedProperties" = false))]
pub struct IncomingEvent {
    /// The host's id of this event (idempotency key of ingestion).
    pub event_id: String,
    /// When it happened in the host, RFC 3339.
    #[serde(default)]
    pub occurred_at: Option<String>,
    /// Type and fields.
    #[serde(flatten)]
    pub body: EventBody,
}

/// Names the field an event's error is about. serde reports errors inside
/// an event's type-specific fields without their path (the `type` tag makes
/// it buffer them first): "invalid type: integer, expected a string" for
/// `appointment.contact_id`. The field is found by trying the event's
/// fields one at a time, then the keys of an object field one at a time
/// (an error other than a missing field is that field's); a missing field
/// is placed by supplying it where it could be missing. Field names are
/// shown only when they look like field names (see `error::json_error`).
fn locate(event: &Value, err: Error) -> Error {
    let Error::Invalid(message) = &err else {
        return err;
    };
    let Some(body) = event.as_object() else {
        return err;
    };
    let Some(kind) = body.get("type") else {
        return err;
    };
    let fails = |field: Option<(&str, Value)>| -> Option<String> {
        let mut trial = Map::from_iter([
            ("event_id".to_owned(), Value::from("x")),
            ("type".to_owned(), kind.clone()),
        ]);
        trial.extend(field.map(|(k, v)| (k.to_owned(), v)));
        match crate::error::from_value::<IncomingEvent>(Value::Object(trial)) {
            Err(Error::Invalid(m)) if !m.starts_with("missing field") => Some(m),
            _ => None,
        }
    };
    let shown = crate::error::shown_key;
    if fails(None).is_some() {
        return err; // the type itself (unknown, misspelt): said as it is
    }
    let fields = body
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "event_id" | "occurred_at" | "type"));
    if let Some(missing) = message
        .strip_prefix("missing field `")
        .and_then(|m| m.split('`').next())
    {
        // Missing inside an object field when supplying it there changes the error.
        for (key, value) in fields {
            let Some(inner) = value.as_object() else {
                continue;
            };
            let mut patched = body.clone();
            let mut object = inner.clone();
            object.insert(missing.to_owned(), Value::Null);
            patched.insert(key.clone(), Value::Object(object));
            let still = crate::error::from_value::<IncomingEvent>(Value::Object(patched))
                .err()
                .is_some_and(|e| {
                    e.to_string()
                        .contains(&format!("missing field `{missing}`"))
                });
            if !still {
                return err.at(shown(key));
            }
        }
        return err;
    }
    for (key, value) in fields {
        let Some(own) = fails(Some((key, value.clone()))) else {
            continue;
        };
        if message.contains(&format!("`{key}`")) {
            // The message names it already (an unknown field); serde lists
            // the type's own fields only.
            if message.contains("unknown field") {
                return Error::Invalid(format!(
                    "{message}; every event also takes `event_id`, `type` and `occurred_at`"
                ));
            }
            return err;
        }
        // Inside an object field, when the field takes an object at all.
        let takes_object = fails(Some((key, Value::Object(Map::new())))).is_none();
        if let (Some(inner), true) = (value.as_object(), takes_object) {
            for (sub, v) in inner {
                if let Some(m) = fails(Some((
                    key,
                    Value::Object(Map::from_iter([(sub.clone(), v.clone())])),
                ))) {
                    let path = format!("{}.{}", shown(key), shown(sub));
                    return Error::Invalid(format!("{path}: {}", keep_location(message, &m)));
                }
            }
        }
        return Error::Invalid(format!("{}: {}", shown(key), keep_location(message, &own)));
    }
    err
}

/// The located error's text, with the original's line and column when it
/// had them (a single event parsed from text).
fn keep_location(original: &str, located: &str) -> String {
    match original.rfind(" (line ") {
        Some(at) => format!("{located}{}", &original[at..]),
        None => located.to_owned(),
    }
}

/// A validated event ready for the core.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The host's event id.
    pub event_id: String,
    /// Host time, if given.
    pub occurred_at: Option<Millis>,
    /// Type and fields; contact properties already normalized.
    pub body: EventBody,
}

impl Event {
    /// The event's `type` string.
    pub fn type_name(&self) -> &'static str {
        match &self.body {
            EventBody::ContactUpserted { .. } => "contact.upserted",
            EventBody::AppointmentBooked { .. } => "appointment.booked",
            EventBody::AppointmentRescheduled { .. } => "appointment.rescheduled",
            EventBody::AppointmentCancelled { .. } => "appointment.cancelled",
            EventBody::AppointmentCompleted { .. } => "appointment.completed",
            EventBody::AppointmentNoShow { .. } => "appointment.no_show",
            EventBody::FormSubmitted { .. } => "form.submitted",
            EventBody::ReviewSubmitted { .. } => "review.submitted",
            EventBody::InsuranceVerification { .. } => "insurance.verification",
            EventBody::PortalActivated { .. } => "portal.activated",
            EventBody::PageVisited { .. } => "page.visited",
            EventBody::EmailOpened { .. } => "email.opened",
            EventBody::EmailClicked { .. } => "email.clicked",
            EventBody::EmailReplied { .. } => "email.replied",
            EventBody::SmsReceived { .. } => "sms.received",
            EventBody::DeliveryReceipt { .. } => "delivery.receipt",
            EventBody::ContactOptedOut { .. } => "contact.opted_out",
        }
    }

    /// Parses and validates one event from JSON text.
    pub fn parse(text: &str) -> Result<Event> {
        if text.len() > MAX_EVENT_BYTES {
            return Err(Error::TooLarge(format!(
                "an event is limited to {MAX_EVENT_BYTES} bytes"
            )));
        }
        let raw: IncomingEvent = match parse_json(text) {
            Ok(raw) => raw,
            // Only a failed event pays for finding where it failed.
            Err(err) => {
                return Err(match serde_json::from_str::<Value>(text) {
                    Ok(value) => locate(&value, err),
                    Err(_) => err,
                });
            }
        };
        Event::validate(raw)
    }

    /// Parses a JSON array of events; the whole batch is refused if one is invalid.
    pub fn parse_batch(text: &str) -> Result<Vec<Event>> {
        if text.len() > MAX_BATCH_BYTES {
            return Err(Error::TooLarge(format!(
                "a batch is limited to {MAX_BATCH_BYTES} bytes"
            )));
        }
        // Each event's own text, so that each is held to the limit of a
        // single event and parsed as one.
        let items: Vec<Box<serde_json::value::RawValue>> = parse_json(text)?;
        if items.len() > MAX_BATCH_EVENTS {
            return Err(Error::TooLarge(format!(
                "a batch is limited to {MAX_BATCH_EVENTS} events"
            )));
        }
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let ev = Event::parse(item.get()).map_err(|e| e.at(&format!("events[{i}]")))?;
            if !seen.insert(ev.event_id.clone()) {
                // The same id twice in one batch: the second is a duplicate, kept so
                // that the result reports it as such.
            }
            out.push(ev);
        }
        Ok(out)
    }

    /// Validates structure, ids and sizes; normalizes contact properties.
    pub fn validate(raw: IncomingEvent) -> Result<Event> {
        validate_id("event_id", &raw.event_id)?;
        let occurred_at = match &raw.occurred_at {
            Some(s) => {
                Some(parse_rfc3339(s).map_err(|m| Error::invalid(format!("occurred_at: {m}")))?)
            }
            None => None,
        };
        let mut body = raw.body;
        match &mut body {
            EventBody::ContactUpserted {
                contact,
                reason,
                last_activity_at,
                ..
            } => {
                // Times are kept in one form, so that a resend written
                // another way (`Z` or `+00:00`) is the same event.
                if let Some(at) = last_activity_at {
                    let t = parse_rfc3339(at)
                        .map_err(|m| Error::invalid(format!("last_activity_at: {m}")))?;
                    *at = crate::clock::to_rfc3339(t);
                }
                let id = match contact.remove("id") {
                    Some(Value::String(s)) => s,
                    _ => return Err(Error::invalid("contact.id: required string")),
                };
                validate_id("contact.id", &id)?;
                let props =
                    normalize_properties(std::mem::take(contact)).map_err(|e| e.at("contact"))?;
                *contact = props;
                contact.insert("id".into(), Value::String(id));
                if let Some(r) = reason {
                    validate_id("reason", r)?;
                }
            }
            EventBody::AppointmentBooked { appointment }
            | EventBody::AppointmentRescheduled { appointment }
            | EventBody::AppointmentCancelled { appointment }
            | EventBody::AppointmentCompleted { appointment }
            | EventBody::AppointmentNoShow { appointment } => {
                validate_id("appointment.id", &appointment.id)?;
                validate_id("appointment.contact_id", &appointment.contact_id)?;
                if let Some(s) = &mut appointment.starts_at {
                    let t = parse_rfc3339(s)
                        .map_err(|m| Error::invalid(format!("appointment.starts_at: {m}")))?;
                    *s = crate::clock::to_rfc3339(t);
                }
                for (n, v) in [
                    ("provider_id", &appointment.provider_id),
                    ("clinic_id", &appointment.clinic_id),
                ] {
                    if let Some(v) = v {
                        validate_id(&format!("appointment.{n}"), v)?;
                    }
                }
            }
            EventBody::FormSubmitted { submission } => {
                validate_id("submission.id", &submission.id)?;
                validate_id("submission.form_id", &submission.form_id)?;
                validate_id("submission.contact_id", &submission.contact_id)?;
                let n = submission.form_name.trim();
                if n.is_empty() || n.chars().count() > 200 {
                    return Err(Error::invalid(
                        "submission.form_name: must be 1 to 200 characters",
                    ));
                }
                if Value::Object(submission.answers.clone()).to_string().len() > 64 * 1024 {
                    return Err(Error::TooLarge(
                        "submission.answers: limited to 64 KiB".into(),
                    ));
                }
            }
            EventBody::ReviewSubmitted { review } => {
                validate_id("review.id", &review.id)?;
                validate_id("review.contact_id", &review.contact_id)?;
                if review.rating.is_some_and(|r| !(1..=5).contains(&r)) {
                    return Err(Error::invalid("review.rating: must be 1 to 5"));
                }
            }
            EventBody::InsuranceVerification { contact_id, .. }
            | EventBody::PortalActivated { contact_id } => validate_id("contact_id", contact_id)?,
            EventBody::PageVisited { contact_id, page } => {
                validate_id("contact_id", contact_id)?;
                if page.is_empty() || page.len() > 512 || page.contains('?') {
                    return Err(Error::invalid(
                        "page: a page id or path of 1 to 512 characters, without a query string",
                    ));
                }
            }
            EventBody::EmailOpened { message_key }
            | EventBody::EmailClicked { message_key }
            | EventBody::EmailReplied { message_key }
            | EventBody::DeliveryReceipt { message_key, .. } => {
                validate_id("message_key", message_key)?
            }
            EventBody::SmsReceived {
                contact_id,
                from,
                body,
                in_reply_to,
            } => {
                if let Some(c) = contact_id {
                    validate_id("contact_id", c)?;
                }
                // The sender's number, with or without a contact: a STOP
                // records it and unsubscribes every contact who has it.
                if let Some(f) = from {
                    crate::model::contact::normalize_property("phone", Value::String(f.clone()))
                        .map_err(|_| Error::invalid("from: must be a phone number"))?;
                }
                if contact_id.is_none() && from.is_none() {
                    return Err(Error::invalid("sms.received needs contact_id or from"));
                }
                if body.chars().count() > 1600 {
                    return Err(Error::TooLarge("body: limited to 1600 characters".into()));
                }
                if let Some(k) = in_reply_to {
                    validate_id("in_reply_to", k)?;
                }
            }
            EventBody::ContactOptedOut {
                contact_id, reason, ..
            } => {
                validate_id("contact_id", contact_id)?;
                if let Some(r) = reason {
                    validate_id("reason", r)?;
                }
            }
        }
        if let EventBody::DeliveryReceipt {
            status: DeliveryStatus::Bounced,
            bounce: None,
            ..
        } = &body
        {
            return Err(Error::invalid(
                "bounce: required (hard or soft) when status is bounced",
            ));
        }
        Ok(Event {
            event_id: raw.event_id,
            occurred_at,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_normalizes() {
        let e = Event::parse(
            r#"{"event_id":"h1","type":"contact.upserted","occurred_at":"2026-01-05T09:00:00Z",
                "contact":{"id":"c1","first_name":"Ann","status":"Lead","favorite":"teal"}}"#,
        )
        .unwrap();
        let EventBody::ContactUpserted { contact, mode, .. } = &e.body else {
            panic!()
        };
        assert_eq!(contact["status"], "lead");
        assert_eq!(contact["favorite"], "teal");
        assert_eq!(*mode, UpsertMode::Partial);
        assert!(e.occurred_at.is_some());
    }

    #[test]
    fn refuses_bad_events_with_clear_errors() {
        let cases = [
            (
                r#"{"type":"portal.activated","contact_id":"c1"}"#,
                "event_id",
            ),
            (r#"{"event_id":"x","type":"nope"}"#, "unknown variant"),
            (
                r#"{"event_id":"x","type":"contact.upserted","contact":{"first_name":"Ann"}}"#,
                "contact.id",
            ),
            (
                r#"{"event_id":"x","type":"page.visited","contact_id":"c1","page":"/a?ssn=1"}"#,
                "query",
            ),
            (
                r#"{"event_id":"x","type":"delivery.receipt","message_key":"k","status":"bounced"}"#,
                "bounce",
            ),
            (
                r#"{"event_id":"x","type":"sms.received","body":"hi"}"#,
                "contact_id or from",
            ),
            // With a contact too: a STOP records the sender's number.
            (
                r#"{"event_id":"x","type":"sms.received","contact_id":"c1","from":"call 61755501 ok","body":"STOP"}"#,
                "from: must be a phone number",
            ),
        ];
        for (text, needle) in cases {
            let e = Event::parse(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn an_event_over_the_limit_is_refused_inside_a_batch_too() {
        let pad = " ".repeat(MAX_EVENT_BYTES);
        let big = format!(r#"{{"event_id":"x",{pad}"type":"portal.activated","contact_id":"c1"}}"#);
        assert!(matches!(Event::parse(&big), Err(Error::TooLarge(_))));
        let batch =
            format!(r#"[{{"event_id":"y","type":"portal.activated","contact_id":"c1"}}, {big}]"#);
        let e = Event::parse_batch(&batch).unwrap_err();
        assert!(matches!(e, Error::TooLarge(_)), "{e}");
        assert!(
            e.to_string().contains("events[1]: an event is limited"),
            "{e}"
        );
        // The same event under the limit is taken.
        let small = format!("[{}]", big.replace(&pad, " "));
        assert_eq!(Event::parse_batch(&small).unwrap().len(), 1);
    }

    #[test]
    fn unknown_top_level_fields_are_refused_by_name() {
        for (text, field) in [
            // A misspelt occurred_at would apply a stale update as new.
            (
                r#"{"event_id":"x","type":"contact.upserted","occured_at":"2020-01-01T00:00:00Z","contact":{"id":"c1"}}"#,
                "occured_at",
            ),
            // "Mode": "full" would be read as a partial update.
            (
                r#"{"event_id":"x","type":"contact.upserted","Mode":"full","contact":{"id":"c1"}}"#,
                "Mode",
            ),
            (
                r#"{"event_id":"x","type":"portal.activated","contact_id":"c1","extra":1}"#,
                "extra",
            ),
            (
                r#"{"event_id":"x","type":"delivery.receipt","message_key":"k","status":"delivered","bounce_kind":"hard"}"#,
                "bounce_kind",
            ),
        ] {
            let e = Event::parse(text).unwrap_err();
            assert_eq!(e.code(), crate::ErrorCode::Invalid, "{text}");
            let m = e.to_string();
            assert!(
                m.contains("unknown field") && m.contains(field),
                "{text}: {m}"
            );
            assert!(
                m.contains("also takes `event_id`, `type` and `occurred_at`"),
                "{m}"
            );
            let batch = format!("[{text}]");
            let m = Event::parse_batch(&batch).unwrap_err().to_string();
            assert!(m.contains(field), "{batch}: {m}");
        }
        // Every documented field is still accepted, and a contact keeps its
        // unknown keys as custom properties.
        for text in [
            r#"{"event_id":"a","type":"contact.upserted","occurred_at":"2026-01-05T09:00:00Z","mode":"full","reason":"staff","contact":{"id":"c1","favorite_color":"teal"}}"#,
            r#"{"event_id":"b","type":"appointment.booked","occurred_at":"2026-01-05T09:00:00Z","appointment":{"id":"a1","contact_id":"c1","starts_at":"2026-01-06T09:00:00Z","provider_id":"p","clinic_id":"k"}}"#,
            r#"{"event_id":"c","type":"sms.received","from":"+16175550101","body":"hi","in_reply_to":"k1"}"#,
            r#"{"event_id":"d","type":"delivery.receipt","message_key":"k","status":"bounced","bounce":"soft"}"#,
            r#"{"event_id":"e","type":"page.visited","contact_id":"c1","page":"/book"}"#,
            r#"{"event_id":"f","type":"contact.opted_out","contact_id":"c1","channel":"all","reason":"staff"}"#,
        ] {
            Event::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        }
        let e = Event::parse_batch(
            r#"[{"event_id":"a","type":"portal.activated","contact_id":"c"},{"event_id":"b"}]"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("invalid input: events[1]"), "{e}");
    }

    #[test]
    fn an_error_inside_an_events_fields_names_the_field() {
        let appt = |inner: &str| {
            format!(r#"{{"event_id":"b","type":"appointment.booked","appointment":{{{inner}}}}}"#)
        };
        for (text, expected) in [
            (
                appt(r#""id":"a1","contact_id":5"#),
                "appointment.contact_id: invalid type: integer, expected a string",
            ),
            (
                appt(r#""id":"a1","contact_id":"c1","start_at":"2026-01-06T09:00:00Z""#),
                "appointment.start_at: unknown field `start_at`",
            ),
            (
                appt(r#""contact_id":"c1""#),
                "appointment: missing field `id`",
            ),
            (
                r#"{"event_id":"b","type":"form.submitted","submission":{"id":"s","form_id":"f","form_name":"F","contact_id":"c1","answers":[]}}"#.to_string(),
                "submission.answers: invalid type: sequence, expected a map",
            ),
            (
                r#"{"event_id":"b","type":"delivery.receipt","message_key":"k","status":"delivred"}"#.to_string(),
                "status: unknown variant",
            ),
            (
                r#"{"event_id":"b","type":"page.visited","contact_id":"c1"}"#.to_string(),
                "invalid input: missing field `page`",
            ),
        ] {
            let single = Event::parse(&text).unwrap_err();
            assert_eq!(single.code(), crate::ErrorCode::Invalid);
            let single = single.to_string();
            assert!(single.contains(expected), "{text}: {single}");
            assert!(single.contains("(line 1 column"), "{text}: {single}");
            let batch = Event::parse_batch(&format!("[{text}]")).unwrap_err().to_string();
            assert!(batch.contains(&format!("events[0]: {}", expected.trim_start_matches("invalid input: "))), "{text}: {batch}");
        }
        // The error is the field's own when the field is wrong as a whole.
        for (text, expected) in [
            (
                r#"{"event_id":"b","type":"appointment.bookd","appointment":{"id":"a1"}}"#,
                "unknown variant",
            ),
            (
                r#"{"event_id":"b","type":"appointment.booked","apointment":{"id":"a1","contact_id":"c1"}}"#,
                "unknown field `apointment`",
            ),
            (
                r#"{"event_id":"b","type":"page.visited","contact_id":"c1","page":{"path":"/x"}}"#,
                "page: invalid type: map, expected a string",
            ),
        ] {
            let e = Event::parse(text).unwrap_err().to_string();
            assert!(
                e.contains(expected)
                    && !e.contains("contact_id:")
                    && !e.contains("path:")
                    && !e.contains(".id"),
                "{text}: {e}"
            );
        }
        // A key that does not look like a field name is not quoted back.
        let e = Event::parse(&appt(r#""id":"a1","contact_id":"c1","Jane Doe 555":1"#))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("appointment.?: unknown field") && !e.contains("Jane"),
            "{e}"
        );
    }
}
