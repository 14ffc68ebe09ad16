//! The module's domain types: contacts mirrored from the host and automation
//! definitions. Pure data and validation; no I/O.

pub mod automation;
pub mod contact;
