//! Numbers that said STOP.
//!
//! SMS consent belongs to the number as well as to the contact. A STOP
//! reply unsubscribes every contact who has the number (a family phone),
//! and the number is remembered: a STOP from a number no contact has yet
//! (the host has not pushed the patient, or their number changed since),
//! and any contact who gets a stopped number later (a new patient, a phone
//! change), are unsubscribed from SMS, whatever the host's record says,
//! until the number replies START. The host cannot lift it.

use rusqlite::{Connection, OptionalExtension, params};

use super::contacts::{phone_key, phone_keys};
use crate::clock::Millis;
use crate::error::{Error, Result};

/// Remembers that `number` said STOP (the first STOP is kept), under the
/// key of each of its forms ([`phone_keys`], national numbers read in
/// `region`), so that [`is_stopped`] needs only the key of a contact's
/// number as stored.
pub fn record(
    conn: &Connection,
    number: &str,
    region: &str,
    at: Millis,
    event_id: &str,
) -> Result<()> {
    let keys = phone_keys(number, region);
    if keys.is_empty() {
        return Err(Error::invalid("from: not a phone number"));
    }
    let mut insert = conn.prepare_cached(
        "INSERT INTO stopped_numbers (phone_key, at, event_id) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
    )?;
    for key in keys {
        insert.execute(params![key, at, event_id])?;
    }
    Ok(())
}

/// Forgets a STOP, in every form of the number: it replied START. Returns
/// whether it had one.
pub fn forget(conn: &Connection, number: &str, region: &str) -> Result<bool> {
    let mut delete = conn.prepare_cached("DELETE FROM stopped_numbers WHERE phone_key = ?1")?;
    let mut forgot = false;
    for key in phone_keys(number, region) {
        forgot |= delete.execute([key])? > 0;
    }
    Ok(forgot)
}

/// Whether `number` (a contact's, as stored) said STOP and has not said
/// START since. Its own key is enough: [`record`] keeps every form's.
pub fn is_stopped(conn: &Connection, number: &str) -> Result<bool> {
    let Some(key) = phone_key(number) else {
        return Ok(false);
    };
    Ok(conn
        .prepare_cached("SELECT 1 FROM stopped_numbers WHERE phone_key = ?1")?
        .query_row([key], |_| Ok(()))
        .optional()?
        .is_some())
}
