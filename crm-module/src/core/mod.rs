//! The deterministic core: `(state, event, now) → (new state, effects)`.
//!
//! The state is the database, read and written through the open transaction
//! in [`Ctx`]; `now` is the instant the worker chose from the host's clock;
//! the effects are returned to the caller, which writes them to the outbox in
//! the same transaction. Nothing here reads the wall clock, spawns a thread,
//! sleeps or generates randomness: the same state, input and `now` always give
//! the same new state and the same effects (with the same idempotency keys).
//!
//! Inside one event the order is fixed: update the mirrored record, then
//! evaluate goals (so an event never counts as the goal of an enrollment it
//! creates), then unenrollment toggles, then triggers.

pub mod conditions;
pub mod contacts;
pub mod dates;
pub mod due;
pub mod enrollment;
pub mod goals;
pub mod hits;
pub mod ingest;
pub mod lists;
pub mod log;
pub mod stopped_numbers;
pub mod triggers;

#[cfg(test)]
pub mod sim;
#[cfg(test)]
mod tests;

use rusqlite::Connection;
use serde_json::Value;

use crate::catalog::Catalog;
use crate::clock::Millis;
use crate::messaging::consent::Category;
use crate::outbox::Effect;
use crate::settings::Resolved;

/// How deep triggers may cascade (an automation setting a property that
/// fires another automation, …): inside one event, and on through the
/// answers of custom steps, whose property changes go on with the cascade
/// that called them. Inside one event a chain is bounded anyway (an
/// automation a contact is active in does not enroll them again), so this
/// cuts only chains of more automations than a practice builds, and loops
/// through plugin answers, which would otherwise run forever with no time
/// passing. A cut is logged (`cascade_limited`).
pub const MAX_CASCADE: u32 = 32;

/// Everything the core works with while handling one input.
pub struct Ctx<'a> {
    /// The open transaction.
    pub conn: &'a Connection,
    /// The instant being processed.
    pub now: Millis,
    /// When the event being applied happened, as the host says (its
    /// `occurred_at`, never after `now`); `None` for anything else, and for
    /// events that do not say. Goals are judged at this instant: activity
    /// that happened before an enrollment is not its goal, and activity
    /// inside the lookback that arrives after it still is.
    pub occurred_at: Option<Millis>,
    /// Automations.
    pub catalog: &'a Catalog,
    /// Settings.
    pub settings: &'a Resolved,
    /// Prefix of every idempotency key: this database's install id.
    pub install_id: &'a str,
    /// Effects produced so far.
    pub effects: Vec<Effect>,
    /// Current cascade depth.
    pub depth: u32,
    /// Where changes that may hold back a row already screened for
    /// hand-over are marked (the worker's; none elsewhere).
    pub rescreen: Option<&'a crate::messaging::handover::Rescreen>,
    /// The rows handed over whose answers have not come back (the
    /// worker's; none elsewhere).
    pub in_flight: Option<&'a dyn InFlight>,
}

/// Rows handed over whose answers have not come back.
pub trait InFlight {
    /// The answers (`attempts`) row `id` had when it was handed over, if it
    /// is in flight.
    fn answers_when_handed(&self, id: i64) -> Option<i64>;
}

impl<'a> Ctx<'a> {
    /// A context for one input.
    pub fn new(
        conn: &'a Connection,
        now: Millis,
        catalog: &'a Catalog,
        settings: &'a Resolved,
        install_id: &'a str,
    ) -> Self {
        Ctx {
            conn,
            now,
            occurred_at: None,
            catalog,
            settings,
            install_id,
            effects: Vec::new(),
            depth: 0,
            rescreen: None,
            in_flight: None,
        }
    }

    /// Takes the effects produced so far.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    /// When what is being applied happened: the host's `occurred_at` for the
    /// event's own effects (a booking pushed late happened when it says),
    /// now for what an automation's step did in reaction.
    pub fn event_time(&self) -> Millis {
        match self.occurred_at {
            Some(at) if self.depth == 0 => at,
            _ => self.now,
        }
    }

    /// The contact's consent or enrollment changed: rows of theirs already
    /// screened for hand-over are screened again before they leave.
    pub fn rescreen(&self, contact_id: &str) {
        if let Some(r) = self.rescreen {
            r.mark(contact_id);
        }
    }

    /// An automation's state or the sending hours changed: every row
    /// already screened for hand-over is screened again before it leaves.
    pub fn rescreen_everyone(&self) {
        if let Some(r) = self.rescreen {
            r.mark_everyone();
        }
    }
}

/// Something that happened to a contact that triggers, goals and
/// unenrollment toggles react to.
#[derive(Debug, Clone, PartialEq)]
pub enum Signal {
    /// First time the module sees the contact.
    ContactCreated {
        /// Lead Source at creation.
        source: Option<String>,
    },
    /// Status flipped Lead → Patient: by a first booking, the host's
    /// update, or an automation's Set property (the Status changed
    /// trigger). Not itself a conversion: see [`Signal::FirstBooking`].
    BecamePatient,
    /// The contact's first appointment (SPEC §2.5's Book appointment, and
    /// the conversion of an automation without a goal): a booking by a
    /// Lead, the host making its Lead a Patient (a booking made there), or
    /// the first booking of a contact an automation had marked a Patient.
    FirstBooking,
    /// An appointment was booked; `rebook` tells an existing patient's
    /// booking from a first booking.
    AppointmentBooked {
        /// An existing Patient booked another appointment (SPEC §2.5's
        /// Rebook): Patient before this booking, with another appointment
        /// on record or never a Lead here.
        rebook: bool,
    },
    /// A form was submitted.
    FormSubmitted {
        /// The form.
        form_id: String,
    },
    /// Joined a list.
    ListJoined {
        /// The list.
        list_id: String,
    },
    /// Left a list.
    ListLeft {
        /// The list.
        list_id: String,
    },
    /// A property changed.
    PropertyChanged {
        /// The property.
        property: String,
        /// Its value before (`null` when it had none).
        old_value: Value,
        /// Its new value (`null` when cleared).
        new_value: Value,
    },
    /// A tracked message was opened or clicked: an email, or a link in an
    /// SMS (engagement for goals; only an email's counts for the Email
    /// engagement trigger).
    EmailEngaged {
        /// True for the message's first click.
        clicked: bool,
        /// True for the message's first open, and for a click of a message
        /// with no open recorded (the click proves the open the pixel
        /// missed). A repeated open or click has neither: it is activity
        /// (Last Activity, an engagement goal) but fires no Email
        /// engagement trigger again.
        opened: bool,
        /// The message's asset.
        asset_id: Option<String>,
        /// The enrollment whose message it was.
        enrollment_id: Option<i64>,
        /// The email's category; `None` when the message was not an email.
        email: Option<Category>,
    },
    /// A non-keyword SMS reply.
    SmsReplied {
        /// The SMS asset replied to.
        asset_id: Option<String>,
        /// The category of the SMS it answers; `None` for a text that
        /// answers none the module sent.
        replied_to: Option<Category>,
    },
    /// An email reply.
    EmailReplied {
        /// The enrollment whose message was answered.
        enrollment_id: Option<i64>,
    },
    /// The contact opted out of SMS (a STOP reply or the host's opt-out).
    SmsOptedOut,
    /// The contact opted out of everything.
    GlobalOptOut,
    /// A review was attached.
    ReviewSubmitted,
    /// Insurance verification flipped to Verified.
    VerificationComplete,
    /// The portal account became active.
    PortalActivated,
    /// A page visit.
    PageVisited,
    /// Contact-initiated activity after more than 90 days of none.
    Reactivated,
}
