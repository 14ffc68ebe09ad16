//! Outbound HTTP for sender adapters (the `http` import), to the hosts the
//! practice granted at install.
//!
//! The host refuses a scheme, host or port that was not granted, private /
//! loopback / link-local addresses (unless granted explicitly), redirects
//! (a 3xx is an error, never followed) and bodies over the plugin's response
//! cap; a fetch is bounded by what is left of the call's time budget.
//!
//! ```ignore
//! use crm_plugin_sdk::http::{self, Request};
//!
//! let response = http::fetch(
//!     &Request::post(url)
//!         .header("Authorization", format!("Bearer {key}"))
//!         .json(&body),
//! )?;
//! ```

use serde_json::Value;

use crate::sender::crm::plugin::http as imp;

pub use imp::{FetchError, Request, Response};

/// Sends `request` and waits for the response (any status, including 4xx and
/// 5xx; 3xx is [`FetchError::RedirectRefused`]).
pub fn fetch(request: &Request) -> Result<Response, FetchError> {
    imp::fetch(request)
}

impl Request {
    /// A request with no headers and an empty body.
    pub fn new(method: impl Into<String>, url: impl Into<String>) -> Self {
        Self {
            method: method.into(),
            url: url.into(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A `GET` request.
    pub fn get(url: impl Into<String>) -> Self {
        Self::new("GET", url)
    }

    /// A `POST` request.
    pub fn post(url: impl Into<String>) -> Self {
        Self::new("POST", url)
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Sets a JSON body and the header `Content-Type: application/json`.
    pub fn json(self, body: &Value) -> Self {
        self.header("Content-Type", "application/json")
            .body(body.to_string())
    }
}

impl Response {
    /// True for a 2xx status.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON; `None` when it is not JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

impl FetchError {
    /// A short name of the error kind for reasons and logs, e.g.
    /// `"not granted"`, `"timeout"` (without the host's detail text).
    pub fn kind(&self) -> &'static str {
        match self {
            FetchError::InvalidRequest(_) => "invalid request",
            FetchError::NotGranted(_) => "not granted",
            FetchError::PrivateAddress(_) => "private address",
            FetchError::RedirectRefused(_) => "redirect refused",
            FetchError::TooLarge(_) => "too large",
            FetchError::Timeout => "timeout",
            FetchError::Connection(_) => "connection",
        }
    }

    /// True when trying again later may succeed (timeout, connection
    /// failure); false when the request itself is refused.
    pub fn is_transient(&self) -> bool {
        matches!(self, FetchError::Timeout | FetchError::Connection(_))
    }
}
