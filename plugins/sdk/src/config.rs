//! The settings and secrets the practice set for this plugin when installing
//! it (the `config` import). Read-only.
//!
//! These are per-installation settings; a step's own settings arrive with each
//! call in the step request's `config`.

#[cfg(feature = "step")]
use crate::step::crm::plugin::config as imp;

#[cfg(all(feature = "sender", not(feature = "step")))]
use crate::sender::crm::plugin::config as imp;

/// A plain setting, e.g. an endpoint or a threshold; `None` when not set.
pub fn get(key: &str) -> Option<String> {
    imp::get(key)
}

/// A secret, e.g. an API key; `None` when not set. Never log it.
pub fn secret(key: &str) -> Option<String> {
    imp::secret(key)
}

/// A setting that must be present and non-empty (after trimming), or a
/// reason such as `"config endpoint is not set"`.
pub fn require(key: &str) -> Result<String, String> {
    match get(key) {
        Some(value) if !value.trim().is_empty() => Ok(value.trim().to_string()),
        _ => Err(format!("config {key} is not set")),
    }
}

/// A secret that must be present and non-empty, or a reason such as
/// `"secret api_key is not set"`.
pub fn require_secret(key: &str) -> Result<String, String> {
    match secret(key) {
        Some(value) if !value.trim().is_empty() => Ok(value.trim().to_string()),
        _ => Err(format!("secret {key} is not set")),
    }
}
