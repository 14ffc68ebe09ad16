//! # crm-module
//!
//! The marketing-automation engine ("CRM Phase 2") embedded in a host EHR.
//! See `ARCHITECTURE.md` at the repository root for how the pieces fit.

#![warn(missing_docs)]

pub mod catalog;
pub mod clock;
pub mod core;
pub mod error;
pub mod event;
pub mod model;
pub mod outbox;
pub mod schedule;
pub mod settings;
pub mod store;

pub use error::{Error, ErrorCode, Result};
