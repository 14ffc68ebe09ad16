//! Log lines from the plugin (the `log` import). The host tags each line with
//! the plugin's id and caps the number of lines per call.
//!
//! **Ids and codes only**: never put patient data (names, numbers, addresses,
//! message text, contact properties) in a log line.
//!
//! ```ignore
//! crm_plugin_sdk::info!("scored step {}: {}", request.step_id, score);
//! ```

#[cfg(feature = "step")]
use crate::step::crm::plugin::log as imp;

#[cfg(all(feature = "sender", not(feature = "step")))]
use crate::sender::crm::plugin::log as imp;

/// The level of a log line.
pub use imp::Level;

/// Writes one log line at `level`.
pub fn log(level: Level, message: &str) {
    imp::log(level, message);
}

/// Writes one line at level `error`.
pub fn error(message: &str) {
    log(Level::Error, message);
}

/// Writes one line at level `warn`.
pub fn warn(message: &str) {
    log(Level::Warn, message);
}

/// Writes one line at level `info`.
pub fn info(message: &str) {
    log(Level::Info, message);
}

/// Writes one line at level `debug`.
pub fn debug(message: &str) {
    log(Level::Debug, message);
}

/// Logs a formatted line at level `error`: `error!("step {}: {}", id, code)`.
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => {
        $crate::log::log($crate::log::Level::Error, &::std::format!($($arg)*))
    };
}

/// Logs a formatted line at level `warn`: `warn!("step {}: {}", id, code)`.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => {
        $crate::log::log($crate::log::Level::Warn, &::std::format!($($arg)*))
    };
}

/// Logs a formatted line at level `info`: `info!("step {}: {}", id, code)`.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => {
        $crate::log::log($crate::log::Level::Info, &::std::format!($($arg)*))
    };
}

/// Logs a formatted line at level `debug`: `debug!("step {}: {}", id, code)`.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => {
        $crate::log::log($crate::log::Level::Debug, &::std::format!($($arg)*))
    };
}
