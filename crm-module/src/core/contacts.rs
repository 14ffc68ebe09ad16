//! The mirrored contact record: load, save, diff, touch, subscriptions.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Map, Value, json};

use super::log::Entry;
use super::{Ctx, Signal};
use crate::clock::Millis;
use crate::error::{Error, Result};
use crate::event::UpsertMode;

/// Fields of [`plugin_view`] that are the record's own, not properties: a
/// plugin's change may not name them.
pub const PLUGIN_VIEW_ONLY: &[&str] = &["id", "last_activity_at", "last_engaged_at"];

/// The contact as a custom step plugin sees it: the stored properties (SPEC
/// fields and custom properties), `id`, `status`, the insurance and portal
/// facts, and the module's timestamps in RFC 3339.
pub fn plugin_view(c: &Contact) -> Value {
    let mut m = c.props.clone();
    m.insert("id".into(), Value::String(c.id.clone()));
    m.insert("status".into(), Value::String(c.status().to_string()));
    m.insert(
        "insurance_verification".into(),
        c.insurance_verification
            .clone()
            .map_or(Value::Null, Value::String),
    );
    m.insert("portal_active".into(), Value::Bool(c.portal_active));
    let time = |t: Millis| Value::String(crate::clock::to_rfc3339(t));
    m.insert("created_at".into(), time(c.created_at));
    m.insert("last_activity_at".into(), time(c.last_activity));
    m.insert(
        "last_engaged_at".into(),
        c.last_engaged_at.map_or(Value::Null, time),
    );
    Value::Object(m)
}

/// Calendar days of contact-initiated inactivity (in the practice's zone)
/// after which activity counts as reactivation.
pub const REACTIVATION_DAYS: i64 = 90;

/// A contact as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Contact {
    /// Host id.
    pub id: String,
    /// Host and custom properties (canonical values).
    pub props: Map<String, Value>,
    /// Insurance verification status.
    pub insurance_verification: Option<String>,
    /// Portal account active.
    pub portal_active: bool,
    /// When the module first saw it.
    pub created_at: Millis,
    /// Last touch of any kind.
    pub last_activity: Millis,
    /// Last contact-initiated activity.
    pub last_engaged_at: Option<Millis>,
    /// Host time of the newest applied update.
    pub source_updated_at: Option<Millis>,
    /// When the module itself last wrote each property it wrote (Set
    /// property, a custom step's changes) and the host has not updated
    /// since: a host update that happened before it is stale for that
    /// property ([`keep_module_writes`]). Tags are kept tag by
    /// tag: `tags:+<tag>` added, `tags:-<tag>` removed.
    pub module_writes: BTreeMap<String, Millis>,
}

impl Contact {
    /// A text property.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.props
            .get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    }

    /// `lead` or `patient`.
    pub fn status(&self) -> &str {
        self.text("status").unwrap_or("lead")
    }

    /// A subscription value (`unknown` when unset).
    pub fn subscription(&self, channel: &str) -> &str {
        self.text(&format!("{channel}_subscription"))
            .unwrap_or("unknown")
    }

    /// A property by name for conditions and filters, including the derived ones.
    pub fn property(&self, name: &str, now: Millis, tz: chrono_tz::Tz) -> Option<Value> {
        match name {
            "id" => Some(Value::String(self.id.clone())),
            "status" => Some(Value::String(self.status().to_string())),
            "email_subscription" | "sms_subscription" => Some(Value::String(
                self.subscription(&name[..name.len() - 13]).to_string(),
            )),
            "last_activity" => Some(Value::from(self.last_activity)),
            "created_at" => Some(Value::from(self.created_at)),
            // Whole calendar days in the practice's time zone: touched
            // yesterday evening is 1 this morning.
            "days_since_last_activity" | "days_since_created" => {
                let at = match name {
                    "days_since_created" => self.created_at,
                    _ => self.last_activity,
                };
                let today = crate::schedule::local_date(now, tz);
                let then = crate::schedule::local_date(at, tz);
                Some(Value::from((today - then).num_days()))
            }
            "insurance_verification" => self.insurance_verification.clone().map(Value::String),
            "portal_active" => Some(Value::Bool(self.portal_active)),
            "age" => {
                use chrono::Datelike as _;
                let dob = chrono::NaiveDate::parse_from_str(self.text("dob")?, "%Y-%m-%d").ok()?;
                let today = crate::schedule::local_date(now, tz);
                if today < dob {
                    return None;
                }
                // A year older on the birthday as the module keeps it: a
                // 29 February birthday on 28 February in other years, the
                // day its birthday trigger fires.
                let this_year = crate::schedule::birthday_in_year(dob, today.year());
                let years = today.year() - dob.year() - i32::from(today < this_year);
                Some(Value::from(years))
            }
            other => self.props.get(other).cloned().filter(|v| !v.is_null()),
        }
    }
}

const COLUMNS: &str = "id, props, insurance_verification, portal_active, created_at, last_activity, last_engaged_at, source_updated_at, module_writes";

type RawContact = (
    String,
    String,
    Option<String>,
    bool,
    Millis,
    Millis,
    Option<Millis>,
    Option<Millis>,
    Option<String>,
);

fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawContact> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
    ))
}

/// Loads a contact.
pub fn load(conn: &Connection, id: &str) -> Result<Option<Contact>> {
    let row = conn
        .prepare_cached(&format!("SELECT {COLUMNS} FROM contacts WHERE id = ?1"))?
        .query_row([id], read)
        .optional()?;
    let Some((id, props, iv, portal, created, last, engaged, src, writes)) = row else {
        return Ok(None);
    };
    let props: Map<String, Value> = serde_json::from_str(&props)
        .map_err(|_| Error::Internal(format!("contact {id}: stored properties unreadable")))?;
    let module_writes = match writes {
        Some(text) => serde_json::from_str(&text)
            .map_err(|_| Error::Internal(format!("contact {id}: stored write times unreadable")))?,
        None => BTreeMap::new(),
    };
    Ok(Some(Contact {
        id,
        props,
        insurance_verification: iv,
        portal_active: portal,
        created_at: created,
        last_activity: last,
        last_engaged_at: engaged,
        source_updated_at: src,
        module_writes,
    }))
}

/// Loads a contact that an event names, or a clear NotFound error.
pub fn require(conn: &Connection, id: &str) -> Result<Contact> {
    load(conn, id)?.ok_or_else(|| {
        Error::not_found(format!(
            "contact {id} is unknown: push contact.upserted first"
        ))
    })
}

/// The key inbound numbers are matched on: the last 10 digits (national
/// number of NANP numbers; the whole number when shorter).
pub fn phone_key(phone: &str) -> Option<String> {
    let digits: String = phone.chars().filter(char::is_ascii_digit).collect();
    (digits.len() >= 7).then(|| digits[digits.len().saturating_sub(10)..].to_string())
}

/// Every key under which a number may be stored ([`phone_key`]): that of
/// the number as written, and those of its E.164 and national forms
/// (national numbers read in `region`). Contacts' numbers are kept as the
/// host wrote them, and outside North America the forms end in different
/// digits: `0412 345 678` and `+61 412 345 678` are one Australian mobile.
pub fn phone_keys(phone: &str, region: &str) -> Vec<String> {
    if north_american(phone, region) {
        return phone_key(phone).into_iter().collect();
    }
    parsed_phone_keys(phone, region)
}

/// [`phone_keys`] by parsing the number (about 200,000 instructions).
fn parsed_phone_keys(phone: &str, region: &str) -> Vec<String> {
    let mut keys: Vec<String> = std::iter::once(phone.to_string())
        .chain(crate::messaging::sms::number_forms(phone, region))
        .filter_map(|form| phone_key(&form))
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// Whether `phone` is written as a North American number that can read as
/// nothing else: ten digits whose first is 2-9, after `+1`, a trunk `1`, or
/// nothing (then only in a region of calling code 1). Every form of such a
/// number ends in the same ten digits as it does, so parsing it for
/// [`phone_keys`] would add no key; a practice in North America matches
/// each inbound text without the parse.
fn north_american(phone: &str, region: &str) -> bool {
    let phone = phone.trim();
    let (international, rest) = match phone.strip_prefix('+') {
        Some(rest) => (true, rest),
        None => (false, phone),
    };
    if rest.contains('+') {
        return false;
    }
    let digits: Vec<u8> = rest.bytes().filter(u8::is_ascii_digit).collect();
    let national = match (international, digits.as_slice()) {
        (_, [b'1', national @ ..]) if national.len() == 10 => national,
        (false, national) if national.len() == 10 => national,
        _ => return false,
    };
    matches!(national[0], b'2'..=b'9')
        && (international
            || phonenumber::metadata::DATABASE
                .by_id(region.trim().to_ascii_uppercase().as_str())
                .is_some_and(|m| m.country_code() == 1))
}

/// Every contact with this phone number, in any form (a family phone is
/// shared), oldest first.
pub fn all_by_phone(conn: &Connection, phone: &str, region: &str) -> Result<Vec<String>> {
    let mut stmt =
        conn.prepare_cached("SELECT id, created_at FROM contacts WHERE phone_key = ?1")?;
    let mut found: Vec<(i64, String)> = Vec::new();
    for key in phone_keys(phone, region) {
        for row in stmt.query_map([key], |r| Ok((r.get(1)?, r.get(0)?)))? {
            found.push(row?);
        }
    }
    found.sort();
    found.dedup();
    Ok(found.into_iter().map(|(_, id)| id).collect())
}

/// The contacts with address `?1`, whatever the case of its letters (a
/// mailbox is the same mail system's whatever the case it is written in),
/// through the index `contacts_email` (migration 29), oldest first.
pub(crate) const ALL_BY_EMAIL_SQL: &str = "SELECT id FROM contacts
     WHERE email = ?1 COLLATE NOCASE AND email IS NOT NULL ORDER BY created_at, id";

/// Every contact with this email address (whatever its case), oldest first.
pub fn all_by_email(conn: &Connection, email: &str) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(ALL_BY_EMAIL_SQL)?;
    let ids = stmt
        .query_map([email], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(ids)
}

/// Moves Last Activity forward without rewriting the record. A contact
/// already touched at `now` (the event that runs the step touched it) is
/// not written at all: the row and its `last_activity` index entry stay
/// as they are.
pub fn touch_only(conn: &Connection, id: &str, now: Millis) -> Result<()> {
    conn.prepare_cached(
        "UPDATE contacts SET last_activity = ?2 WHERE id = ?1 AND last_activity < ?2",
    )?
    .execute(params![id, now])?;
    Ok(())
}

/// What made a contact a Patient, as the log's `status_changed` rows and
/// `contacts.became_patient_by` name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatientBy {
    /// Their first booking, pushed to the module.
    FirstBooking,
    /// The host's update of the record (a booking the host made, reported
    /// or not).
    Host,
    /// An automation's (or a custom step's) Set property: no booking.
    Automation,
}

impl PatientBy {
    const ALL: [PatientBy; 3] = [
        PatientBy::FirstBooking,
        PatientBy::Host,
        PatientBy::Automation,
    ];

    fn as_str(self) -> &'static str {
        match self {
            PatientBy::FirstBooking => "first_booking",
            PatientBy::Host => "host",
            PatientBy::Automation => "automation",
        }
    }

    fn parse(name: &str) -> Option<PatientBy> {
        PatientBy::ALL.into_iter().find(|by| by.as_str() == name)
    }
}

/// Records contact `id` becoming a Patient: the log's `status_changed`
/// row (`actor`, the automation or plugin, when one did it) and the
/// record's `became_patient_at` (when it happened: [`Ctx::event_time`]) /
/// `became_patient_by`, which no save of the record touches.
pub fn record_became_patient(
    ctx: &Ctx<'_>,
    id: &str,
    by: PatientBy,
    actor: Option<&str>,
) -> Result<()> {
    let mut detail = json!({"from": "lead", "to": "patient", "by": by.as_str()});
    if let Some(actor) = actor {
        detail["actor"] = json!(actor);
    }
    Entry {
        detail: Some(detail),
        ..Entry::new("status_changed", id)
    }
    .write(ctx.conn, ctx.now)?;
    ctx.conn
        .prepare_cached(
            "UPDATE contacts SET became_patient_at = ?2, became_patient_by = ?3 WHERE id = ?1",
        )?
        .execute(params![id, ctx.event_time(), by.as_str()])?;
    Ok(())
}

/// When, and by what, the module last saw contact `id` become a Patient
/// (`None`: never, e.g. imported as one; the cause is `None` for a flip
/// recorded before the module kept it).
pub fn became_patient(conn: &Connection, id: &str) -> Result<Option<(Millis, Option<PatientBy>)>> {
    let row: Option<(Option<Millis>, Option<String>)> = conn
        .prepare_cached("SELECT became_patient_at, became_patient_by FROM contacts WHERE id = ?1")?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(row.and_then(|(at, by)| Some((at?, by.as_deref().and_then(PatientBy::parse)))))
}

/// Writes a contact (insert or replace), keeping the indexed columns in step with the properties.
///
/// Most saves change neither the email, the phone number nor the date of
/// birth (a touch, a status, a subscription): they are written by an
/// `UPDATE` that leaves those columns, and so their four indexes, alone; it
/// applies only while the stored row holds the same values (and the phone
/// key derived from that number), so the columns always mirror the
/// properties. Otherwise (a new contact, one of them changed) the whole row
/// is written.
pub fn save(conn: &Connection, c: &Contact) -> Result<()> {
    let text = |k: &str| c.props.get(k).and_then(Value::as_str);
    let props = props_text(c)?;
    let phone = text("phone");
    let updated = conn
        .prepare_cached(
            "UPDATE contacts SET props = ?2, status = ?3, email_subscription = ?4, sms_subscription = ?5,
                 insurance_verification = ?6, portal_active = ?7, last_activity = ?8,
                 last_engaged_at = ?9, source_updated_at = ?10, module_writes = ?15
             WHERE id = ?1 AND email IS ?11 AND phone IS ?12 AND dob IS ?13 AND phone_key IS ?14",
        )?
        .execute(params![
            c.id,
            props,
            c.status(),
            c.subscription("email"),
            c.subscription("sms"),
            c.insurance_verification,
            c.portal_active,
            c.last_activity,
            c.last_engaged_at,
            c.source_updated_at,
            text("email"),
            phone,
            text("dob"),
            phone.and_then(phone_key),
            writes_text(c),
        ])?;
    if updated == 1 {
        return Ok(());
    }
    write_row(conn, c, &props)
}

/// Writes a new contact (a whole row, without first trying the `UPDATE`
/// that [`save`] tries).
pub fn insert(conn: &Connection, c: &Contact) -> Result<()> {
    write_row(conn, c, &props_text(c)?)
}

/// The stored text of a contact's properties.
fn props_text(c: &Contact) -> Result<String> {
    serde_json::to_string(&c.props).map_err(|e| Error::Internal(format!("contact {}: {e}", c.id)))
}

/// The stored text of a contact's module write times (NULL for none).
fn writes_text(c: &Contact) -> Option<String> {
    (!c.module_writes.is_empty())
        .then(|| serde_json::to_string(&c.module_writes).ok())
        .flatten()
}

/// Writes a contact's whole row (insert, or replace every column).
fn write_row(conn: &Connection, c: &Contact, props: &str) -> Result<()> {
    let text = |k: &str| c.props.get(k).and_then(Value::as_str);
    let phone = text("phone");
    conn.prepare_cached(
        "INSERT INTO contacts (id, props, status, email, phone, dob, email_subscription, sms_subscription,
                               insurance_verification, portal_active, created_at, last_activity,
                               last_engaged_at, source_updated_at, phone_key, module_writes)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)
         ON CONFLICT(id) DO UPDATE SET props = excluded.props, status = excluded.status,
             email = excluded.email, phone = excluded.phone, dob = excluded.dob,
             email_subscription = excluded.email_subscription, sms_subscription = excluded.sms_subscription,
             insurance_verification = excluded.insurance_verification, portal_active = excluded.portal_active,
             last_activity = excluded.last_activity, last_engaged_at = excluded.last_engaged_at,
             source_updated_at = excluded.source_updated_at, phone_key = excluded.phone_key,
             module_writes = excluded.module_writes",
    )?
    .execute(params![
        c.id,
        props,
        c.status(),
        text("email"),
        phone,
        text("dob"),
        c.subscription("email"),
        c.subscription("sms"),
        c.insurance_verification,
        c.portal_active,
        c.created_at,
        c.last_activity,
        c.last_engaged_at,
        c.source_updated_at,
        phone.and_then(phone_key),
        writes_text(c),
    ])?;
    Ok(())
}

/// Marks activity: moves Last Activity.
pub fn touch(c: &mut Contact, now: Millis) {
    c.last_activity = c.last_activity.max(now);
}

/// Marks contact-initiated activity: moves Last Activity and the
/// engagement clock, and reports a reactivation when the previous
/// contact-initiated activity is [`REACTIVATION_DAYS`] calendar days old or
/// more in the practice's zone `tz`: the measure of *Inactive for N days*,
/// so that a contact a win-back enrolled this morning (last seen 90 days
/// ago, late in the evening) who books today is reactivated. (Elapsed
/// hours left that booking 89 days and some hours after, no reactivation.)
pub fn engage(c: &mut Contact, now: Millis, tz: chrono_tz::Tz) -> Option<Signal> {
    touch(c, now);
    let previous = c.last_engaged_at.unwrap_or(c.created_at);
    c.last_engaged_at = Some(now.max(previous));
    let days = crate::schedule::local_date(now, tz)
        .signed_duration_since(crate::schedule::local_date(previous, tz))
        .num_days();
    (days >= REACTIVATION_DAYS).then_some(Signal::Reactivated)
}

/// Who changed a subscription, and why, for the audit log.
#[derive(Debug, Clone, Copy)]
pub struct AuditSource<'a> {
    /// `host`, `contact`, `automation:<id>`, `staff:<id>`.
    pub actor: &'a str,
    /// `stop_reply`, `start_reply`, `unsubscribe_link`, `staff`, `import`, `host_update`, `automation`.
    pub reason: &'a str,
    /// The message that prompted it.
    pub message_key: Option<&'a str>,
}

/// A staff member (`owner`, `provider`) given by id alone names the member
/// the record already holds: their stored display name is kept.
fn keep_staff_name(key: &str, new: &mut Value, old: Option<&Value>) {
    if !crate::model::contact::is_staff(key) {
        return;
    }
    let (Some(new), Some(old)) = (new.as_object_mut(), old) else {
        return;
    };
    if !new.contains_key("name")
        && new.get("id") == old.get("id")
        && let Some(name) = crate::model::contact::staff_name(old)
    {
        new.insert("name".into(), Value::String(name.to_string()));
    }
}

/// Applies a property map to a contact and returns the change signals.
/// Subscription changes are audited. Status Lead → Patient yields
/// [`Signal::BecamePatient`] as well.
pub fn apply_props(
    ctx: &Ctx<'_>,
    c: &mut Contact,
    new: Map<String, Value>,
    mode: UpsertMode,
    audit: AuditSource<'_>,
) -> Result<Vec<Signal>> {
    let mut merged = match mode {
        UpsertMode::Full => Map::new(),
        UpsertMode::Partial => c.props.clone(),
    };
    if mode == UpsertMode::Full {
        // Subscriptions are consent, an address that hard-bounced stays
        // undeliverable, and the status is the module's (Lead until the
        // first booking): a full replace that omits them keeps them.
        for k in [
            "email_subscription",
            "sms_subscription",
            crate::messaging::consent::EMAIL_UNDELIVERABLE,
            crate::messaging::consent::SMS_UNDELIVERABLE,
            "status",
        ] {
            if let Some(v) = c.props.get(k) {
                merged.insert(k.into(), v.clone());
            }
        }
    }
    let asked_status = new.get("status").cloned();
    for (k, mut v) in new {
        if k == "id" {
            continue;
        }
        if v.is_null() {
            merged.remove(&k);
        } else {
            keep_staff_name(&k, &mut v, c.props.get(&k));
            merged.insert(k, v);
        }
    }
    // The limit holds for the record, not only for one update: partial
    // updates each adding new keys would otherwise grow it without end.
    if merged.len() > crate::model::contact::MAX_PROPERTIES {
        return Err(Error::TooLarge(format!(
            "contact {}: a contact may carry at most {} properties",
            c.id,
            crate::model::contact::MAX_PROPERTIES
        )));
    }
    keep_own_opt_outs(ctx, c, &mut merged, audit)?;
    keep_patient(ctx, c, &mut merged, asked_status)?;
    let mut keys: Vec<&String> = c.props.keys().chain(merged.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut signals = Vec::new();
    let old_status = c.status().to_string();
    for k in keys {
        let (old, new) = (c.props.get(k), merged.get(k));
        if same_value(k, old, new) {
            continue;
        }
        if k == "email_subscription" || k == "sms_subscription" {
            let channel = &k[..k.len() - 13];
            let old_v = old.and_then(Value::as_str).unwrap_or("unknown");
            let new_v = new.and_then(Value::as_str).unwrap_or("unknown");
            audit_subscription(ctx, &c.id, channel, old_v, new_v, audit)?;
        }
        signals.push(Signal::PropertyChanged {
            property: k.clone(),
            old_value: old.cloned().unwrap_or(Value::Null),
            new_value: new.cloned().unwrap_or(Value::Null),
        });
    }
    c.props = merged;
    if old_status == "lead" && c.status() == "patient" {
        signals.push(Signal::BecamePatient);
    }
    Ok(signals)
}

/// The tags of a JSON list, trimmed (what is not text left out).
pub fn tag_list(v: Option<&Value>) -> Vec<String> {
    (v.and_then(Value::as_array).into_iter().flatten())
        .filter_map(Value::as_str)
        .map(|t| t.trim().to_string())
        .collect()
}

/// A tag list after a `{"add": [..], "remove": [..]}` change. Tags are one
/// whatever their case, as conditions and triggers read them: adding `VIP`
/// to `vip` changes nothing, removing `VIP` removes it.
pub fn change_tags(tags: Option<&Value>, change: &Value) -> Vec<String> {
    let mut tags = tag_list(tags);
    for t in tag_list(change.get("add")) {
        if !tags.iter().any(|have| have.eq_ignore_ascii_case(&t)) {
            tags.push(t);
        }
    }
    let remove = tag_list(change.get("remove"));
    tags.retain(|t| !remove.iter().any(|r| r.eq_ignore_ascii_case(t)));
    tags
}

/// Whether two values of `property` are one value, perhaps written
/// differently (a lead source as the builder names it, `5` and `5.0`, the
/// same tags in another case, a staff member renamed): no change for
/// Property changed to react to. A null is no value.
pub(crate) fn same_value(property: &str, old: Option<&Value>, new: Option<&Value>) -> bool {
    use crate::model::contact::{comparable, is_staff, value_matches};
    let (old, new) = (old.filter(|v| !v.is_null()), new.filter(|v| !v.is_null()));
    if old == new {
        return true;
    }
    match (old, new) {
        (Some(Value::Number(a)), Some(Value::Number(b))) => a.as_f64() == b.as_f64(),
        (Some(a @ Value::String(_)), Some(b @ Value::String(_))) if property == "lead_source" => {
            comparable(property, a) == comparable(property, b)
        }
        (Some(a @ Value::Array(_)), Some(b @ Value::Array(_))) if property == "tags" => {
            let folded = |tags: &Value| {
                let mut set: Vec<String> = (tag_list(Some(tags)).iter())
                    .map(|t| t.to_ascii_lowercase())
                    .collect();
                set.sort_unstable();
                set.dedup();
                set
            };
            folded(a) == folded(b)
        }
        // The same member by id, as filters compare them.
        (Some(a @ Value::Object(_)), Some(b @ Value::Object(b_fields)))
            if is_staff(property) && b_fields.contains_key("id") =>
        {
            value_matches(a, b)
        }
        _ => false,
    }
}

/// Reasons for an update that may lift a person's own opt-out: a staff
/// member recorded their consent, or they subscribed again themselves in
/// the host (its patient portal).
pub const CONSENT_REASONS: &[&str] = &["staff", "portal"];

/// An opt-out the person made themselves (a STOP reply, the unsubscribe
/// link) is theirs to lift (SPEC §2.3: re-subscribing needs the person's
/// own action). A host update that would subscribe them again (or make it
/// unknown) without one of [`CONSENT_REASONS`], typically a sync from a
/// record that predates the opt-out, keeps the opt-out and is logged
/// `subscription_kept`.
fn keep_own_opt_outs(
    ctx: &Ctx<'_>,
    c: &Contact,
    merged: &mut Map<String, Value>,
    audit: AuditSource<'_>,
) -> Result<()> {
    if CONSENT_REASONS.contains(&audit.reason) {
        return Ok(());
    }
    for channel in ["email", "sms"] {
        let property = format!("{channel}_subscription");
        let requested = merged
            .get(&property)
            .and_then(Value::as_str)
            .unwrap_or("unknown");
        if c.subscription(channel) != "unsubscribed"
            || requested == "unsubscribed"
            || own_opt_out(ctx.conn, &c.id, channel)?.is_none()
        {
            continue;
        }
        Entry {
            channel: Some(channel),
            detail: Some(json!({"requested": requested, "reason": audit.reason})),
            ..Entry::new("subscription_kept", &c.id)
        }
        .write(ctx.conn, ctx.now)?;
        merged.insert(property, Value::String("unsubscribed".into()));
    }
    Ok(())
}

/// Patient is a fact, not a setting: the contact has booked (SPEC §1:
/// Lead flips to Patient on the first booking, "nobody sets it by hand").
/// No update takes a patient back to Lead: a host sync from a record that
/// still says lead, or a full replace without a status, keeps Patient (an
/// explicit other value is logged `status_kept`), so the flip, its trigger
/// and its goal cannot happen twice.
fn keep_patient(
    ctx: &Ctx<'_>,
    c: &Contact,
    merged: &mut Map<String, Value>,
    asked: Option<Value>,
) -> Result<()> {
    if c.status() != "patient" || merged.get("status").and_then(Value::as_str) == Some("patient") {
        return Ok(());
    }
    if let Some(requested) = asked {
        Entry {
            detail: Some(json!({"requested": requested})),
            ..Entry::new("status_kept", &c.id)
        }
        .write(ctx.conn, ctx.now)?;
    }
    merged.insert("status".into(), Value::String("patient".into()));
    Ok(())
}

/// The reason of the person's own opt-out from `channel` (`stop_reply`,
/// `unsubscribe_link`) when that is the channel's latest subscription
/// change; `None` when it is subscribed, or was unsubscribed by someone
/// else (the host, staff, an automation).
pub fn own_opt_out(conn: &Connection, id: &str, channel: &str) -> Result<Option<String>> {
    let latest: Option<(String, String, String)> = conn
        .prepare_cached(
            "SELECT actor, new_value, reason FROM subscription_audit
             WHERE contact_id = ?1 AND channel = ?2 ORDER BY at DESC, id DESC LIMIT 1",
        )?
        .query_row(params![id, channel], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?;
    Ok(latest
        .filter(|(actor, value, _)| actor == "contact" && value == "unsubscribed")
        .map(|(_, _, reason)| reason))
}

/// Whether the contact's subscription to `channel` changed after `at`:
/// a change that happened (its event's `occurred_at`, else when it was
/// recorded) later than something that happened at `at` and arrives only
/// now.
pub fn subscription_changed_since(
    conn: &Connection,
    id: &str,
    channel: &str,
    at: Millis,
) -> Result<bool> {
    Ok(conn
        .prepare_cached(
            "SELECT EXISTS(SELECT 1 FROM subscription_audit WHERE contact_id = ?1 AND happened_at > ?3 AND channel = ?2)",
        )?
        .query_row(params![id, channel, at], |r| r.get(0))?)
}

/// Appends a subscription change to the audit log (and the event log).
pub fn audit_subscription(
    ctx: &Ctx<'_>,
    contact_id: &str,
    channel: &str,
    old: &str,
    new: &str,
    src: AuditSource<'_>,
) -> Result<()> {
    ctx.conn
        .prepare_cached(
            "INSERT INTO subscription_audit (contact_id, channel, old_value, new_value, actor, reason, message_key, at, happened_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?
        .execute(params![contact_id, channel, old, new, src.actor, src.reason, src.message_key, ctx.now, ctx.event_time()])?;
    if new != "subscribed" {
        // Their messages already screened for hand-over are decided again.
        ctx.rescreen(contact_id);
    }
    Entry {
        channel: Some(channel),
        message_key: src.message_key,
        detail: Some(
            serde_json::json!({"from": old, "to": new, "reason": src.reason, "actor": src.actor}),
        ),
        ..Entry::new("subscription_changed", contact_id)
    }
    .write(ctx.conn, ctx.now)
}

/// Sets one channel's subscription, auditing the change; returns the
/// property change when it changed.
pub fn set_subscription(
    ctx: &Ctx<'_>,
    c: &mut Contact,
    channel: &str,
    value: &str,
    src: AuditSource<'_>,
) -> Result<Option<Signal>> {
    let old = c.subscription(channel).to_string();
    if old == value {
        return Ok(None);
    }
    audit_subscription(ctx, &c.id, channel, &old, value, src)?;
    let property = format!("{channel}_subscription");
    let old_value = c
        .props
        .insert(property.clone(), Value::String(value.to_string()))
        .unwrap_or(Value::Null);
    Ok(Some(Signal::PropertyChanged {
        property,
        old_value,
        new_value: Value::String(value.to_string()),
    }))
}

/// Adds the opt-out signals that subscription changes among `signals`
/// imply, whichever way they came (the host, a STOP reply, an unsubscribe
/// link): SMS opt-out when SMS became unsubscribed, and a global opt-out
/// (SPEC §2.4, it ends every enrollment) when that change leaves both
/// channels unsubscribed.
pub fn add_opt_out_signals(c: &Contact, signals: &mut Vec<Signal>) {
    let unsubscribed = |channel: &str| {
        signals.iter().any(|s| {
            matches!(s, Signal::PropertyChanged { property, new_value, .. }
                if property.strip_suffix("_subscription") == Some(channel) && new_value == "unsubscribed")
        })
    };
    let sms = unsubscribed("sms");
    let email = unsubscribed("email");
    if sms && !signals.contains(&Signal::SmsOptedOut) {
        signals.push(Signal::SmsOptedOut);
    }
    if (sms || email)
        && c.subscription("email") == "unsubscribed"
        && c.subscription("sms") == "unsubscribed"
        && !signals.contains(&Signal::GlobalOptOut)
    {
        signals.push(Signal::GlobalOptOut);
    }
}

impl Contact {
    /// A contact with these properties, first seen and last active at 0,
    /// nothing else recorded: sample data for previews, and tests.
    pub(crate) fn with_props(id: &str, props: Map<String, Value>) -> Contact {
        Contact {
            id: id.to_owned(),
            props,
            insurance_verification: None,
            portal_active: false,
            created_at: 0,
            last_activity: 0,
            last_engaged_at: None,
            source_updated_at: None,
            module_writes: BTreeMap::new(),
        }
    }

    /// Records the tags the module adds and removes in writing the tag
    /// list `new` at `at`, tag by tag (see [`Contact::module_writes`]).
    pub fn record_tag_writes(&mut self, new: &Value, at: Millis) {
        let (old, new) = (tag_list(self.props.get("tags")), tag_list(Some(new)));
        let missing = |from: &[String], t: &String| !from.iter().any(|o| o.eq_ignore_ascii_case(t));
        let added = new.iter().filter(|t| missing(&old, t)).map(|t| ('+', t));
        let removed = old.iter().filter(|t| missing(&new, t)).map(|t| ('-', t));
        for (sign, tag) in added.chain(removed).collect::<Vec<_>>() {
            self.module_writes.retain(|name, _| {
                !name
                    .strip_prefix("tags:")
                    .is_some_and(|n| n[1..].eq_ignore_ascii_case(tag))
            });
            self.module_writes.insert(format!("tags:{sign}{tag}"), at);
        }
    }
}

/// The newest write-back of a contact's property: its status and the value
/// it replaced (`previous`), while the outbox holds it.
fn last_write_back(
    conn: &Connection,
    contact_id: &str,
    property: &str,
) -> Result<Option<(String, Option<Value>)>> {
    Ok(conn
        .prepare_cached(
            "SELECT status, payload -> '$.previous' FROM outbox
              WHERE contact_id = ?1 AND channel IS NULL AND kind = 'property'
                AND json_extract(payload, '$.property') = ?2
              ORDER BY id DESC LIMIT 1",
        )?
        .query_row(params![contact_id, property], |r| {
            // `->` gives the value as JSON text, whatever its type.
            let previous: Option<String> = r.get(1)?;
            Ok((
                r.get(0)?,
                previous.and_then(|p| serde_json::from_str(&p).ok()),
            ))
        })
        .optional()?)
}

/// Weighs a host update that happened at `occurred` against what the module
/// wrote itself ([`Contact::module_writes`]) and keeps the module's value
/// where the host did not know of its write:
/// - the update gives the module's own value: the host has it (its echo);
///   the write is forgotten;
/// - it happened before the write: the module's value stays;
/// - it gives the value the write replaced (`previous`: the host's record
///   from before it has the write-back, or an echo of an earlier one): the
///   module's value stays until the host gives it back;
/// - otherwise (the host refused the write-back, or staff changed the
///   property to something else since) the host's value is the newer one,
///   and a write-back still waiting is dropped at hand-over.
///
/// A full replace keeps the module's value as a partial update does. Tags
/// go tag by tag: a tag the module added stays until the host's list has
/// it (or the host refused the change), one it removed stays removed.
/// Returns the properties kept, those the update gave otherwise.
pub fn keep_module_writes(
    conn: &Connection,
    c: &mut Contact,
    update: &mut Map<String, Value>,
    mode: UpsertMode,
    occurred: Millis,
) -> Result<Vec<String>> {
    let full = mode == UpsertMode::Full;
    let gives = |update: &Map<String, Value>, name: &str| full || update.contains_key(name);
    let mut kept = Vec::new();
    let mut forget = Vec::new();
    let (mut add, mut remove) = (Vec::new(), Vec::new());
    // The host's tags, and whether it refused the newest tag write-back
    // (asked once, when a tag needs it).
    let host_tags = tag_list(update.get("tags"));
    let mut tags_refused: Option<bool> = None;
    let entries: Vec<(String, Millis)> = c
        .module_writes
        .iter()
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    for (name, written) in entries {
        if let Some(tag) = name.strip_prefix("tags:") {
            if !gives(update, "tags") {
                continue;
            }
            let (sign, tag) = tag.split_at(1);
            let has = host_tags.iter().any(|t| t.eq_ignore_ascii_case(tag));
            let holds = (sign == "+") == has;
            let mut refused = || -> Result<bool> {
                if tags_refused.is_none() {
                    let last = last_write_back(conn, &c.id, "tags")?;
                    tags_refused = Some(last.is_some_and(|(status, _)| status == "failed"));
                }
                Ok(tags_refused == Some(true))
            };
            if holds || (written <= occurred && refused()?) {
                forget.push(name.clone());
            } else if sign == "+" {
                add.push(json!(tag));
            } else {
                remove.push(json!(tag));
            }
            continue;
        }
        if !gives(update, &name) {
            continue;
        }
        let mine = c.props.get(&name);
        let theirs = update.get(&name);
        let unaware = if same_value(&name, mine, theirs) {
            forget.push(name.clone());
            continue;
        } else if written > occurred {
            true
        } else {
            match last_write_back(conn, &c.id, &name)? {
                Some((status, previous)) if status != "failed" => {
                    same_value(&name, theirs, previous.as_ref())
                }
                _ => false,
            }
        };
        if unaware {
            match (mode, mine) {
                (UpsertMode::Full, Some(v)) => {
                    update.insert(name.clone(), v.clone());
                }
                _ => {
                    update.remove(&name);
                }
            }
            kept.push(name);
        } else {
            forget.push(name);
        }
    }
    if !add.is_empty() || !remove.is_empty() {
        let change = json!({"add": add, "remove": remove});
        let tags = change_tags(update.get("tags"), &change);
        update.insert("tags".into(), json!(tags));
        kept.push("tags".into());
    }
    for name in forget {
        c.module_writes.remove(&name);
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{self, Access};
    use serde_json::json;

    /// The value a write-back replaced reads back whatever its type (a
    /// plugin writes numbers and flags to custom properties): a number read
    /// as text failed the host's push.
    #[test]
    fn a_write_backs_previous_value_reads_back_whatever_its_type() {
        let dir = tempfile::tempdir().unwrap();
        let conn = store::open(&dir.path().join("t.db"), Access::Write).unwrap();
        for (i, (property, previous)) in [
            ("score", json!(5)),
            ("vip", json!(true)),
            ("lead_source", json!("import")),
            ("owner", json!({"id": "s0"})),
            ("note", Value::Null),
        ]
        .into_iter()
        .enumerate()
        {
            let payload =
                json!({"contact_id": "c1", "property": property, "value": 1, "previous": previous});
            conn.execute(
                "INSERT INTO outbox (idempotency_key, kind, payload, contact_id, status, next_attempt_at, created_at, updated_at)
                 VALUES (?1, 'property', ?2, 'c1', 'accepted', 0, 0, 0)",
                params![format!("k{i}"), payload.to_string()],
            )
            .unwrap();
            let (status, read) = last_write_back(&conn, "c1", property).unwrap().unwrap();
            assert_eq!(status, "accepted");
            assert_eq!(read.unwrap_or(Value::Null), previous, "{property}");
        }
        assert!(last_write_back(&conn, "c1", "other").unwrap().is_none());
    }

    /// Days since a moment are whole calendar days in the practice's time
    /// zone: 23:30 yesterday is 1 day ago at 00:30 today, and a condition
    /// "more than 30" reads days, not milliseconds.
    #[test]
    fn days_since_count_calendar_days_in_the_practices_time_zone() {
        let tz: chrono_tz::Tz = "America/New_York".parse().unwrap();
        let at = |s: &str| crate::clock::parse_rfc3339(s).unwrap();
        let c = Contact {
            created_at: at("2026-01-01T12:00:00-05:00"),
            last_activity: at("2026-03-07T23:30:00-05:00"),
            ..Contact::with_props("c1", Map::new())
        };
        let now = at("2026-03-08T00:30:00-05:00");
        assert_eq!(
            c.property("days_since_last_activity", now, tz),
            Some(json!(1))
        );
        assert_eq!(c.property("days_since_created", now, tz), Some(json!(66)));
        // Across the spring change (8 March 2026, 02:00 EST → 03:00 EDT).
        let later = at("2026-04-07T01:00:00-04:00");
        assert_eq!(
            c.property("days_since_last_activity", later, tz),
            Some(json!(31))
        );
        let days = c.property("days_since_last_activity", later, tz);
        let op = crate::model::automation::CompareOp::GreaterThan;
        assert!(crate::core::conditions::compare(
            days.as_ref(),
            op,
            Some(&json!(30))
        ));
        let days = c.property("days_since_last_activity", now, tz);
        assert!(!crate::core::conditions::compare(
            days.as_ref(),
            op,
            Some(&json!(30))
        ));
    }

    /// Age counts a year on the birthday as the module keeps it: a leapling
    /// turns a year older on 28 February in other years, the day the
    /// birthday trigger fires for them (chrono's `years_since` waited for
    /// 1 March, so the birthday's own run saw the old age).
    #[test]
    fn age_turns_on_the_birthday_the_trigger_observes() {
        let tz: chrono_tz::Tz = "America/New_York".parse().unwrap();
        let at = |s: &str| crate::clock::parse_rfc3339(s).unwrap();
        let born = |dob: &str| {
            Contact::with_props("c1", Map::from_iter([("dob".to_string(), json!(dob))]))
        };
        let age = |dob: &str, now: &str| born(dob).property("age", at(now), tz);
        let leapling = "2000-02-29";
        assert_eq!(age(leapling, "2027-02-27T12:00:00-05:00"), Some(json!(26)));
        assert_eq!(age(leapling, "2027-02-28T00:00:00-05:00"), Some(json!(27)));
        assert_eq!(age(leapling, "2028-02-28T12:00:00-05:00"), Some(json!(27)));
        assert_eq!(age(leapling, "2028-02-29T00:00:00-05:00"), Some(json!(28)));
        let other = "1961-03-01";
        assert_eq!(age(other, "2026-02-28T23:59:00-05:00"), Some(json!(64)));
        assert_eq!(age(other, "2026-03-01T00:00:00-05:00"), Some(json!(65)));
        // In the practice's zone: 04:00 UTC on 1 March is still 28 February.
        assert_eq!(age(other, "2026-03-01T04:00:00Z"), Some(json!(64)));
        assert_eq!(
            age("2030-01-01", "2026-03-01T12:00:00Z"),
            None,
            "born later"
        );
        assert_eq!(age("not a date", "2026-03-01T12:00:00Z"), None);
    }

    /// The indexed columns as stored, and what the indexes find.
    fn columns(
        conn: &Connection,
        id: &str,
    ) -> (
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        i64,
    ) {
        conn.query_row(
            "SELECT email, phone, dob, phone_key, last_activity FROM contacts WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .unwrap()
    }

    #[test]
    fn every_save_keeps_the_indexed_columns_equal_to_the_properties() {
        let dir = tempfile::tempdir().unwrap();
        let conn = store::open(&dir.path().join("c.db"), Access::Write).unwrap();
        let props = json!({"email": "ann@example.org", "phone": "(617) 555-0100", "dob": "1980-03-04", "status": "lead"});
        let mut c = Contact::with_props("c1", props.as_object().unwrap().clone());
        c.created_at = 1_000;
        c.last_activity = 1_000;
        save(&conn, &c).unwrap();
        assert_eq!(
            columns(&conn, "c1"),
            (
                Some("ann@example.org".into()),
                Some("(617) 555-0100".into()),
                Some("1980-03-04".into()),
                Some("6175550100".into()),
                1_000
            )
        );

        // Same email, phone and birth date: the other columns still move.
        c.last_activity = 2_000;
        c.props.insert("status".into(), json!("patient"));
        save(&conn, &c).unwrap();
        assert_eq!(columns(&conn, "c1").4, 2_000);
        assert_eq!(load(&conn, "c1").unwrap().unwrap().status(), "patient");

        // A new number and address reach their columns and indexes.
        c.props.insert("phone".into(), json!("+1 508 555 0199"));
        c.props.insert("email".into(), json!("ann@new.example"));
        c.props.remove("dob");
        save(&conn, &c).unwrap();
        assert_eq!(
            columns(&conn, "c1"),
            (
                Some("ann@new.example".into()),
                Some("+1 508 555 0199".into()),
                None,
                Some("5085550199".into()),
                2_000
            )
        );
        assert_eq!(all_by_phone(&conn, "508-555-0199", "US").unwrap(), ["c1"]);
        assert!(
            all_by_phone(&conn, "617-555-0100", "US")
                .unwrap()
                .is_empty()
        );
        let by_email: Option<String> = conn
            .query_row(
                "SELECT id FROM contacts WHERE email = 'ann@new.example'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(by_email.as_deref(), Some("c1"));

        // A stored phone key that does not match the number (an older
        // database's back-fill) is rewritten by the next save.
        conn.execute(
            "UPDATE contacts SET phone_key = 'stale' WHERE id = 'c1'",
            [],
        )
        .unwrap();
        c.last_activity = 3_000;
        save(&conn, &c).unwrap();
        assert_eq!(columns(&conn, "c1").3.as_deref(), Some("5085550199"));
        assert_eq!(columns(&conn, "c1").4, 3_000);
        let rows: i64 = conn
            .query_row("SELECT COUNT(*) FROM contacts", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 1);
    }

    #[test]
    fn north_american_numbers_get_the_keys_their_parse_would_give() {
        let mut checked = 0;
        let mut fast = 0;
        for npa in (100..1000).step_by(37) {
            for (nxx, line) in [(555, "0123"), (234, "9876"), (100, "0000")] {
                let shapes = [
                    format!("{npa}-{nxx}-{line}"),
                    format!("({npa}) {nxx}-{line}"),
                    format!("1 {npa} {nxx} {line}"),
                    format!("+1{npa}{nxx}{line}"),
                    format!("+1 ({npa}) {nxx}.{line}"),
                    format!("0{npa}{nxx}{line}"),
                    format!("+{npa}{nxx}{line}"),
                    format!("011 {npa} {nxx}{line}"),
                    format!("{nxx}-{line}"),
                    format!("0{:02} {nxx} {line}", npa % 100),
                    format!("1{:02}{nxx}{line}", npa % 100),
                ];
                for phone in &shapes {
                    for region in ["US", "ca", "JM", "AU", "GB", "FR", "BY"] {
                        fast += usize::from(north_american(phone, region));
                        assert_eq!(
                            phone_keys(phone, region),
                            parsed_phone_keys(phone, region),
                            "{phone} in {region}"
                        );
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, 25 * 3 * 11 * 7);
        // The three NANP regions take the five North American shapes of
        // the numbers whose area code starts 2-9; the other regions only
        // the two written with +1.
        assert!(fast > 25 * 3 * 2 * 7, "{fast}");

        // Ten digits starting 2-9 are not North American everywhere: in
        // Belarus the trunk prefix is 8, and the number's forms end in
        // other digits.
        let belarus = phone_keys("844 979 9399", "BY");
        assert_eq!(belarus, ["0449799399", "5449799399", "8449799399"]);
        assert_eq!(phone_keys("844 979 9399", "US"), ["8449799399"]);
    }
}
