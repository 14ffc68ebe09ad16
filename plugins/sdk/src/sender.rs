//! The `sender-adapter` world: delivers one rendered message through a
//! provider's HTTP API.
//!
//! The generated bindings live here (`crm::plugin::*` for the imports,
//! `exports::crm::plugin::sender` for the export); the types a plugin needs
//! are re-exported at this module's top level. Outbound HTTP is in
//! [`crate::http`].

#[allow(missing_docs)]
mod bindings {
    wit_bindgen::generate!({
        world: "sender-adapter",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "export_sender_adapter",
        default_bindings_module: "crm_plugin_sdk::sender",
        additional_derives: [PartialEq, Eq],
    });
}

#[doc(hidden)]
pub use bindings::*;

pub use bindings::crm::plugin::types::{Channel, PluginInfo};
pub use bindings::exports::crm::plugin::sender::{
    Description, Guest, OutgoingMessage, SendOutcome,
};

impl SendOutcome {
    /// `accepted` with the provider's message id.
    pub fn accepted(id: impl Into<String>) -> Self {
        SendOutcome::Accepted(id.into())
    }

    /// `retry-later` with a reason (codes only, never patient data).
    pub fn retry_later(reason: impl Into<String>) -> Self {
        SendOutcome::RetryLater(reason.into())
    }

    /// `failed` with a reason (codes only, never patient data).
    pub fn failed(reason: impl Into<String>) -> Self {
        SendOutcome::Failed(reason.into())
    }
}
