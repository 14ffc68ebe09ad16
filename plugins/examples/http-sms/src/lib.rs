//! `http-sms`: an example sender adapter for a generic HTTP SMS provider.
//!
//! Install-time config: `endpoint` (required, `http(s)://` URL), `from`
//! (optional, overrides the message's sender number); secret `api_key`
//! (required, sent as `Authorization: Bearer <key>`). The practice grants the
//! endpoint's origin at install (e.g. `https://api.example-sms.com`).
//!
//! Each message is one `POST <endpoint>` with the JSON body
//! `{"to", "from", "text", "idempotency_key"}` and the headers
//! `Content-Type: application/json` and `Idempotency-Key: <key>`.
//!
//! | answer | outcome |
//! |---|---|
//! | 2xx with `{"id": "..."}` | `accepted(id)` |
//! | 2xx without an id | `accepted(<idempotency key>)`: the provider took it, and failing would make the module retry and risk a duplicate; the key still identifies it at the provider |
//! | 429, 5xx | `retry-later("http 503")` |
//! | other 4xx | `failed("http 400")`, or `failed("http 400: <code>")` when the JSON body has a code-like `error` (or `error.code`) |
//! | timeout, connection failure | `retry-later("fetch timeout")`, `retry-later("fetch connection")` |
//! | refused by the host | `failed("fetch refused: not granted")` (`private address`, `redirect refused`, `invalid request`, `too large`) |
//! | email | `failed("channel not supported")` |
//!
//! Log lines and reasons carry status codes, error kinds and the idempotency
//! key only: never the number or the text.

use crm_plugin_sdk::http::{FetchError, Request, Response};
use crm_plugin_sdk::sender::{
    Channel, Description, Guest, OutgoingMessage, PluginInfo, SendOutcome,
};
use crm_plugin_sdk::serde_json::{Value, json};

/// The adapter (exported with [`crm_plugin_sdk::export_sender_adapter!`]).
pub struct HttpSms;

#[cfg(target_arch = "wasm32")]
crm_plugin_sdk::export_sender_adapter!(HttpSms);

impl Guest for HttpSms {
    fn describe() -> Description {
        describe()
    }

    fn send(message: OutgoingMessage) -> SendOutcome {
        let settings = Settings::load(crm_plugin_sdk::config::get, crm_plugin_sdk::config::secret);
        let outcome = match settings {
            Ok(settings) => send(&message, &settings, crm_plugin_sdk::http::fetch),
            Err(reason) => SendOutcome::failed(reason),
        };
        match &outcome {
            SendOutcome::Accepted(_) => {
                crm_plugin_sdk::info!("message {}: accepted", message.idempotency_key)
            }
            SendOutcome::RetryLater(reason) => crm_plugin_sdk::warn!(
                "message {}: retry later: {}",
                message.idempotency_key,
                reason
            ),
            SendOutcome::Failed(reason) => {
                crm_plugin_sdk::warn!("message {}: failed: {}", message.idempotency_key, reason)
            }
        }
        outcome
    }
}

/// The adapter's description: SMS only.
pub fn describe() -> Description {
    Description {
        info: PluginInfo {
            id: "http-sms".into(),
            name: "HTTP SMS".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            vendor: "CRM module examples".into(),
            description: "Sends SMS through a generic JSON-over-HTTP provider".into(),
        },
        channels: vec![Channel::Sms],
    }
}

/// The install-time settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The provider's send URL.
    pub endpoint: String,
    /// Sender number overriding the message's, when set.
    pub from: Option<String>,
    /// The provider API key.
    pub api_key: String,
}

impl Settings {
    /// Reads the settings through `get` (config) and `secret`.
    pub fn load(
        get: impl Fn(&str) -> Option<String>,
        secret: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let endpoint = get("endpoint")
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .ok_or("config endpoint is not set")?;
        let lower = endpoint.to_ascii_lowercase();
        if !(lower.starts_with("https://") || lower.starts_with("http://")) {
            return Err("config endpoint: expected an http:// or https:// URL".into());
        }
        let from = get("from")
            .map(|f| f.trim().to_string())
            .filter(|f| !f.is_empty());
        let api_key = secret("api_key")
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty())
            .ok_or("secret api_key is not set")?;
        Ok(Self {
            endpoint,
            from,
            api_key,
        })
    }
}

/// Sends `message` through `fetch` (the host's `http.fetch` in the plugin, a
/// fake in tests) and maps the answer to an outcome.
pub fn send(
    message: &OutgoingMessage,
    settings: &Settings,
    fetch: impl FnOnce(&Request) -> Result<Response, FetchError>,
) -> SendOutcome {
    if message.channel != Channel::Sms {
        return SendOutcome::failed("channel not supported");
    }
    if message.to.trim().is_empty() {
        return SendOutcome::failed("message has no recipient");
    }
    let from = settings.from.as_deref().unwrap_or(&message.from);
    let body = json!({
        "to": message.to,
        "from": from,
        "text": message.text,
        "idempotency_key": message.idempotency_key,
    });
    let request = Request::post(&settings.endpoint)
        .json(&body)
        .header("Accept", "application/json")
        .header("Idempotency-Key", &message.idempotency_key)
        .header("Authorization", format!("Bearer {}", settings.api_key));
    match fetch(&request) {
        Ok(response) => map_response(&response, &message.idempotency_key),
        Err(e) if e.is_transient() => SendOutcome::retry_later(format!("fetch {}", e.kind())),
        Err(e) => SendOutcome::failed(format!("fetch refused: {}", e.kind())),
    }
}

/// Maps the provider's answer to an outcome.
fn map_response(response: &Response, idempotency_key: &str) -> SendOutcome {
    let status = response.status;
    match status {
        200..=299 => {
            let id = response.json().and_then(|body| match body.get("id") {
                Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => None,
            });
            SendOutcome::accepted(id.unwrap_or_else(|| idempotency_key.to_string()))
        }
        429 | 500..=599 => SendOutcome::retry_later(format!("http {status}")),
        400..=499 => match response.json().as_ref().and_then(error_code) {
            Some(code) => SendOutcome::failed(format!("http {status}: {code}")),
            None => SendOutcome::failed(format!("http {status}")),
        },
        _ => SendOutcome::failed(format!("http {status}")),
    }
}

/// The provider's error code from `{"error": "code"}` or
/// `{"error": {"code": "code"}}`, only when it looks like a code (up to 64
/// letters, digits, `_`, `-`, `.`): a free-text message could echo the number
/// or the text, and reasons must not carry patient data.
fn error_code(body: &Value) -> Option<String> {
    let error = body.get("error")?;
    let code = match error {
        Value::String(s) => s.as_str(),
        Value::Object(o) => o.get("code")?.as_str()?,
        _ => return None,
    };
    let ok = (1..=64).contains(&code.len())
        && code
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    ok.then(|| code.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    fn settings() -> Settings {
        Settings {
            endpoint: "https://api.example-sms.com/v1/messages".into(),
            from: None,
            api_key: "k-123".into(),
        }
    }

    fn sms() -> OutgoingMessage {
        OutgoingMessage {
            idempotency_key: "msg-42".into(),
            channel: Channel::Sms,
            to: "+15551234567".into(),
            from: "+15550000000".into(),
            subject: None,
            text: "Your appointment is tomorrow".into(),
            html: None,
            rfc5322: None,
        }
    }

    fn answer(status: u16, body: &str) -> Result<Response, FetchError> {
        Ok(Response {
            status,
            headers: vec![],
            body: body.as_bytes().to_vec(),
        })
    }

    fn send_with(result: Result<Response, FetchError>) -> SendOutcome {
        send(&sms(), &settings(), |_| result)
    }

    #[test]
    fn builds_the_request() {
        let seen = RefCell::new(None);
        let outcome = send(&sms(), &settings(), |r| {
            *seen.borrow_mut() = Some(r.clone());
            answer(202, r#"{"id": "prov-1"}"#)
        });
        assert_eq!(outcome, SendOutcome::accepted("prov-1"));
        let r = seen.into_inner().unwrap();
        assert_eq!(r.method, "POST");
        assert_eq!(r.url, "https://api.example-sms.com/v1/messages");
        let header = |n: &str| {
            r.headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(header("Content-Type"), Some("application/json"));
        assert_eq!(header("Idempotency-Key"), Some("msg-42"));
        assert_eq!(header("Authorization"), Some("Bearer k-123"));
        let body: Value = crm_plugin_sdk::serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            body,
            json!({
                "to": "+15551234567", "from": "+15550000000",
                "text": "Your appointment is tomorrow", "idempotency_key": "msg-42",
            })
        );
    }

    #[test]
    fn from_override() {
        let mut s = settings();
        s.from = Some("+15559999999".into());
        let seen = RefCell::new(Vec::new());
        send(&sms(), &s, |r| {
            *seen.borrow_mut() = r.body.clone();
            answer(200, "{}")
        });
        let body: Value = crm_plugin_sdk::serde_json::from_slice(&seen.into_inner()).unwrap();
        assert_eq!(body["from"], "+15559999999");
    }

    #[test]
    fn maps_answers() {
        assert_eq!(
            send_with(answer(200, r#"{"id": 77}"#)),
            SendOutcome::accepted("77")
        );
        assert_eq!(
            send_with(answer(200, "ok")),
            SendOutcome::accepted("msg-42")
        );
        assert_eq!(
            send_with(answer(201, r#"{"id": ""}"#)),
            SendOutcome::accepted("msg-42")
        );
        assert_eq!(
            send_with(answer(429, "")),
            SendOutcome::retry_later("http 429")
        );
        assert_eq!(
            send_with(answer(503, "")),
            SendOutcome::retry_later("http 503")
        );
        assert_eq!(
            send_with(answer(500, r#"{"error": "x"}"#)),
            SendOutcome::retry_later("http 500")
        );
        assert_eq!(
            send_with(answer(400, r#"{"error": "invalid_number"}"#)),
            SendOutcome::failed("http 400: invalid_number")
        );
        assert_eq!(
            send_with(answer(
                422,
                r#"{"error": {"code": "E.1021", "message": "bad"}}"#
            )),
            SendOutcome::failed("http 422: E.1021")
        );
        // Free text is not a code: it could echo the number.
        assert_eq!(
            send_with(answer(
                400,
                r#"{"error": "number +15551234567 is invalid"}"#
            )),
            SendOutcome::failed("http 400")
        );
        assert_eq!(
            send_with(answer(401, "denied")),
            SendOutcome::failed("http 401")
        );
        assert_eq!(send_with(answer(304, "")), SendOutcome::failed("http 304"));
    }

    #[test]
    fn maps_fetch_errors() {
        let d = || "detail".to_string();
        for (e, outcome) in [
            (
                FetchError::Timeout,
                SendOutcome::retry_later("fetch timeout"),
            ),
            (
                FetchError::Connection(d()),
                SendOutcome::retry_later("fetch connection"),
            ),
            (
                FetchError::NotGranted(d()),
                SendOutcome::failed("fetch refused: not granted"),
            ),
            (
                FetchError::PrivateAddress(d()),
                SendOutcome::failed("fetch refused: private address"),
            ),
            (
                FetchError::RedirectRefused(d()),
                SendOutcome::failed("fetch refused: redirect refused"),
            ),
            (
                FetchError::InvalidRequest(d()),
                SendOutcome::failed("fetch refused: invalid request"),
            ),
            (
                FetchError::TooLarge(5),
                SendOutcome::failed("fetch refused: too large"),
            ),
        ] {
            assert_eq!(send_with(Err(e)), outcome);
        }
    }

    #[test]
    fn email_is_not_supported() {
        let mut m = sms();
        m.channel = Channel::Email;
        let outcome = send(&m, &settings(), |_| unreachable!("no fetch for email"));
        assert_eq!(outcome, SendOutcome::failed("channel not supported"));
    }

    #[test]
    fn reasons_never_carry_patient_data() {
        let m = sms();
        for r in [
            answer(400, r#"{"error": "+15551234567"}"#),
            answer(400, r#"{"error": "Your appointment is tomorrow"}"#),
        ] {
            let SendOutcome::Failed(reason) = send(&m, &settings(), |_| r) else {
                panic!("expected failed");
            };
            assert!(
                !reason.contains("555") && !reason.contains("appointment"),
                "{reason}"
            );
        }
    }

    #[test]
    fn loads_settings() {
        let cfg = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let secrets = cfg(&[("api_key", "k")]);
        assert_eq!(
            Settings::load(
                cfg(&[("endpoint", " https://x.test/send "), ("from", "")]),
                secrets
            ),
            Ok(Settings {
                endpoint: "https://x.test/send".into(),
                from: None,
                api_key: "k".into()
            })
        );
        assert_eq!(
            Settings::load(cfg(&[]), secrets),
            Err("config endpoint is not set".into())
        );
        assert_eq!(
            Settings::load(cfg(&[("endpoint", "ftp://x")]), secrets),
            Err("config endpoint: expected an http:// or https:// URL".into())
        );
        assert_eq!(
            Settings::load(cfg(&[("endpoint", "https://x.test")]), cfg(&[])),
            Err("secret api_key is not set".into())
        );
    }
}
