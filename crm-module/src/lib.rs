//! # crm-module
//!
//! The marketing-automation engine ("CRM Phase 2") embedded in a host EHR:
//! the host pushes contacts, appointments and form submissions; automations
//! enroll contacts and run their steps on the practice's schedule; every
//! effect leaves through a durable outbox to host callbacks. See
//! `ARCHITECTURE.md` at the repository root for how the pieces fit.
//!
//! ```no_run
//! use crm_module::Module;
//! let m = Module::open(std::path::Path::new("practice.db"),
//!     r#"{"clock": {"mode": "manual", "start": "2026-01-05T08:00:00Z"}}"#)?;
//! m.push(r#"{"event_id": "h1", "type": "contact.upserted", "contact": {"id": "c1", "first_name": "Ann"}}"#)?;
//! m.advance_clock(24 * 3600 * 1000)?;
//! let list = m.view("automation_list", "{}")?;
//! # Ok::<(), crm_module::Error>(())
//! ```

#![warn(missing_docs)]

pub mod catalog;
pub mod clock;
pub mod commands;
pub mod core;
pub mod error;
pub mod event;
pub mod host;
pub mod messaging;
pub mod model;
pub mod module;
pub mod outbox;
pub mod plugins;
pub mod schedule;
pub mod schema;
pub mod settings;
pub mod store;
pub mod views;
pub mod worker;

pub use error::{Error, ErrorCode, Result};
pub use host::{Delivery, Host, LogLevel};
pub use module::{Module, OpenConfig, PushResult};
pub use outbox::{EffectKind, HostAnswer};
