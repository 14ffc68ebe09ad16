//! Messaging: who may receive what (consent), SMS segments and numbers,
//! templates, email composition and tracking tokens (issue 3).

pub mod compose;
pub mod consent;
pub mod email;
pub mod handover;
pub mod limits;
pub mod sms;
pub mod smtp;
pub mod template;
pub mod tracking;
