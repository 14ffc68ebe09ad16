//! # crm-plugin-sdk
//!
//! A small guest SDK for plugins of the CRM module, built for
//! `wasm32-wasip2` over [`wit-bindgen`](https://docs.rs/wit-bindgen) and the
//! contract in `plugins/wit/crm-plugin.wit` (`crm:plugin@1.0.0`).
//!
//! A plugin enables **exactly one** of the crate's features:
//!
//! * `step` — the `step-plugin` world: custom step types for the automation
//!   builder. Implement `step::Guest` and call `export_step_plugin!`.
//! * `sender` — the `sender-adapter` world: delivers rendered messages through
//!   a provider's HTTP API. Implement `sender::Guest` and call
//!   `export_sender_adapter!`.
//!
//! Both features compile (so a workspace-wide `cargo clippy` works), but then
//! both worlds' bindings are compiled into the plugin. Build each plugin
//! package on its own (`cargo build -p ...`): one `cargo build` of several
//! workspace members unifies features. The host refuses a component that
//! exports both worlds.
//!
//! Helpers common to both worlds: `log` (and the `info!`, `warn!`, `error!`,
//! `debug!` macros), `config` and [`json`]; for senders, `http`.
//!
//! ```ignore
//! use crm_plugin_sdk::step::{Description, Guest, StepOutcome, StepRequest};
//!
//! struct MyPlugin;
//!
//! impl Guest for MyPlugin {
//!     fn describe() -> Description { /* ... */ }
//!     fn run(request: StepRequest) -> StepOutcome { /* ... */ }
//! }
//!
//! crm_plugin_sdk::export_step_plugin!(MyPlugin);
//! ```

#![warn(missing_docs)]

/// The `serde_json` crate this SDK uses, so plugins need not depend on it.
pub use serde_json;

#[cfg(feature = "step")]
pub mod step;

#[cfg(feature = "sender")]
pub mod sender;

#[cfg(any(feature = "step", feature = "sender"))]
pub mod config;
#[cfg(feature = "sender")]
pub mod http;
pub mod json;
#[cfg(any(feature = "step", feature = "sender"))]
pub mod log;

/// Exports a type implementing [`step::Guest`] as the plugin's `step`
/// interface: `crm_plugin_sdk::export_step_plugin!(MyPlugin);`.
#[cfg(feature = "step")]
#[doc(inline)]
pub use step::export_step_plugin;

/// Exports a type implementing [`sender::Guest`] as the plugin's `sender`
/// interface: `crm_plugin_sdk::export_sender_adapter!(MyAdapter);`.
#[cfg(feature = "sender")]
#[doc(inline)]
pub use sender::export_sender_adapter;
