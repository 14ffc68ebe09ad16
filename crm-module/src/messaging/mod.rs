//! Messaging: who may receive what (consent), and, as they land, rendering,
//! composition, tracking and delivery of email and SMS (issue 3).

pub mod consent;
pub mod sms;
