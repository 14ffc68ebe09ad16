//! Delivering composed email to an SMTP relay with lettre's SMTP transport.
//!
//! [`SmtpSender::new`] validates [`SmtpSettings`] and builds one pooled
//! `lettre` transport for the relay (plaintext, `STARTTLS` or implicit TLS
//! with rustls and the Mozilla roots); [`SmtpSender::send`] hands the raw
//! RFC 5322 bytes of a [`ComposedEmail`] to the relay with its own envelope
//! (`MAIL FROM` / `RCPT TO`) and maps the result to an [`SmtpOutcome`]:
//!
//! | relay answer                                   | outcome                     |
//! |------------------------------------------------|-----------------------------|
//! | `2xx` after `DATA`                             | [`SmtpOutcome::Accepted`]   |
//! | `4xx` at any stage                             | [`SmtpOutcome::RetryLater`] |
//! | `530`, `534`, `535`, `538` (relay login)       | [`SmtpOutcome::Held`]       |
//! | `5xx` with `5.1.7` / `5.1.8` (the practice's sender address) | [`SmtpOutcome::RetryLater`] |
//! | `5xx` with a recipient's address status (`5.1.1`-`5.1.4`, `5.1.6`, `5.1.10`: no such mailbox, bad address, no mail for its domain) | [`SmtpOutcome::Bounced`] |
//! | other `5xx` (`5.1.0`, "other address status", among them: it may be either address) | [`SmtpOutcome::Failed`] |
//! | no connection, timeout, TLS error, broken talk | [`SmtpOutcome::RetryLater`] |
//! | the relay lacks what the settings ask (STARTTLS, a login mechanism) | [`SmtpOutcome::Held`] |
//!
//! Login failures are 5xx but say nothing about the message: the settings
//! (or the relay's account) are wrong, and fixing them cures every message
//! alike. So the message waits, its attempts untouched. A refused sender
//! address is no recipient's bounce either; since the sender is written
//! into each message when it is composed, a change of settings does not
//! cure the messages already queued, so they are retried (the relay may
//! have been fixed) and, after their attempts, failed as errors.
//!
//! Reasons carry SMTP codes (`550`, enhanced `5.1.1`) and fixed wording only:
//! never an address, a server's free text (which often quotes the recipient)
//! or message content. The accepted response keeps the server's text (the
//! queue id) with anything that looks like an address redacted.

use std::error::Error as _;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use lettre::Transport;
use lettre::address::Envelope;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::transport::smtp::response::Response;
use lettre::transport::smtp::{PoolConfig, SmtpTransport};

use crate::messaging::email::{ComposedEmail, ascii_domain};

/// Default for [`SmtpSettings::timeout_seconds`].
pub const DEFAULT_TIMEOUT_SECONDS: u32 = 30;

/// Largest accepted [`SmtpSettings::timeout_seconds`].
pub const MAX_TIMEOUT_SECONDS: u32 = 600;

/// Idle connections kept open per sender.
const POOL_MAX_IDLE: u32 = 4;

/// How long an idle pooled connection is kept before it is closed (relays
/// commonly drop idle clients after a minute or more).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest accepted host name (RFC 1035).
const MAX_HOST_LEN: usize = 253;

/// Longest server text kept in [`SmtpOutcome::Accepted`].
const MAX_RESPONSE_CHARS: usize = 200;

/// How the connection to the relay is protected.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// Plaintext. Only for a trusted relay on the same host or network;
    /// credentials are refused unless the relay is on a loopback address.
    None,
    /// Plaintext connection upgraded with `STARTTLS` (usually port 587); the
    /// upgrade is required, the certificate is verified against the Mozilla
    /// root certificates.
    #[default]
    Starttls,
    /// TLS from the first byte (implicit TLS, usually port 465); the
    /// certificate is verified against the Mozilla root certificates.
    Tls,
}

/// How to reach the SMTP relay.
///
/// `Debug` output shows whether a password is set, never the password.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SmtpSettings {
    /// Relay host name or IP address (no brackets, no port).
    pub host: String,
    /// Relay port (25, 465, 587 or a local relay's port).
    pub port: u16,
    /// Connection security (`none`, `starttls`, `tls`); default `starttls`.
    #[serde(default)]
    pub security: SmtpSecurity,
    /// Login name, when the relay requires authentication (then `password`
    /// is required too).
    #[serde(default)]
    pub username: Option<String>,
    /// Login password (with `username`).
    #[serde(default)]
    pub password: Option<String>,
    /// Connect, read and write timeout in seconds (1 to 600, default 30).
    #[serde(default = "default_timeout_seconds")]
    pub timeout_seconds: u32,
}

fn default_timeout_seconds() -> u32 {
    DEFAULT_TIMEOUT_SECONDS
}

impl fmt::Debug for SmtpSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("timeout_seconds", &self.timeout_seconds)
            .finish()
    }
}

impl SmtpSettings {
    /// Checks every field.
    ///
    /// # Errors
    ///
    /// A message naming the field at fault (never its value): an empty or
    /// malformed `host`, port 0, a `timeout_seconds` outside 1 to 600, an
    /// empty `username` or `password`, one of them without the other, or
    /// credentials with `security: none` to a relay that is not on a
    /// loopback address.
    pub fn validate(&self) -> Result<(), String> {
        let host = self.host.trim();
        if host.is_empty() {
            return Err("host: empty".to_owned());
        }
        let name_ok = host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
        if host.len() > MAX_HOST_LEN || !(name_ok || host.parse::<Ipv6Addr>().is_ok()) {
            return Err("host: not a host name or IP address".to_owned());
        }
        if self.port == 0 {
            return Err("port: must be 1 to 65535".to_owned());
        }
        if !(1..=MAX_TIMEOUT_SECONDS).contains(&self.timeout_seconds) {
            return Err(format!(
                "timeout_seconds: must be 1 to {MAX_TIMEOUT_SECONDS}"
            ));
        }
        match (&self.username, &self.password) {
            (Some(user), _) if user.trim().is_empty() => {
                return Err("username: empty".to_owned());
            }
            (_, Some(password)) if password.is_empty() => {
                return Err("password: empty".to_owned());
            }
            (Some(_), None) => return Err("password: required with username".to_owned()),
            (None, Some(_)) => return Err("username: required with password".to_owned()),
            (Some(_), Some(_)) if self.security == SmtpSecurity::None && !is_loopback(host) => {
                return Err(
                    "security: credentials need starttls or tls unless the relay is on a \
                     loopback address"
                        .to_owned(),
                );
            }
            _ => {}
        }
        Ok(())
    }
}

/// `localhost` or a loopback IP address.
fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Outcome of one SMTP delivery attempt, mapped to the outbox's answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SmtpOutcome {
    /// The relay took responsibility for the message.
    Accepted {
        /// The relay's final answer, e.g. `250 2.0.0 Ok: queued as 4F2B1C`
        /// (control characters removed, address-like words redacted,
        /// shortened to 200 characters).
        response: String,
    },
    /// Try again later: a 4xx answer, no connection, a timeout, a TLS
    /// error or a broken conversation.
    RetryLater {
        /// SMTP codes and fixed wording only.
        reason: String,
    },
    /// The relay takes no mail from these settings: it refused the login,
    /// or lacks what the settings ask for (STARTTLS, a login mechanism). Nothing is wrong with the message: it waits until the
    /// settings (or the relay's account) are fixed.
    Held {
        /// SMTP codes and fixed wording only.
        reason: String,
    },
    /// The relay refused the recipient's address for good (5xx with a
    /// recipient's address status, `5.1.1` to `5.1.4`, `5.1.6` or `5.1.10`): a hard
    /// bounce.
    Bounced {
        /// SMTP codes and fixed wording only.
        reason: String,
    },
    /// Permanently refused (5xx) or not sendable at all (invalid envelope).
    Failed {
        /// SMTP codes and fixed wording only.
        reason: String,
    },
}

/// A reusable sender (connection pool) for one relay.
///
/// Cheap to share by reference across threads; connections are opened on
/// first use, kept for reuse while idle (up to 30 s) and closed when the
/// sender is dropped.
pub struct SmtpSender {
    transport: SmtpTransport,
    host: String,
    port: u16,
    security: SmtpSecurity,
}

impl fmt::Debug for SmtpSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpSender")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .finish_non_exhaustive()
    }
}

impl SmtpSender {
    /// Validates the settings and builds the pooled transport. Nothing is
    /// connected yet.
    ///
    /// # Errors
    ///
    /// The [`SmtpSettings::validate`] message, or `"security: TLS setup
    /// failed"` when the TLS configuration cannot be built.
    pub fn new(settings: &SmtpSettings) -> Result<SmtpSender, String> {
        settings.validate()?;
        let host = settings.host.trim();
        let mut builder = SmtpTransport::builder_dangerous(host)
            .port(settings.port)
            .timeout(Some(Duration::from_secs(u64::from(
                settings.timeout_seconds,
            ))))
            .pool_config(
                PoolConfig::new()
                    .min_idle(0)
                    .max_size(POOL_MAX_IDLE)
                    .idle_timeout(POOL_IDLE_TIMEOUT),
            );
        builder = match settings.security {
            SmtpSecurity::None => builder.tls(Tls::None),
            SmtpSecurity::Starttls => builder.tls(Tls::Required(tls_parameters(host)?)),
            SmtpSecurity::Tls => builder.tls(Tls::Wrapper(tls_parameters(host)?)),
        };
        if let (Some(user), Some(password)) = (&settings.username, &settings.password) {
            builder =
                builder.credentials(Credentials::new(user.trim().to_owned(), password.clone()));
        }
        Ok(SmtpSender {
            transport: builder.build(),
            host: host.to_owned(),
            port: settings.port,
            security: settings.security,
        })
    }

    /// Sends one composed email: its raw `rfc5322` bytes with the envelope
    /// `envelope_from` → `envelope_to`, on a pooled connection when one is
    /// idle. Blocks; every connect, read and write is bounded by
    /// `timeout_seconds`.
    ///
    /// A connection lost after the message was sent but before the relay's
    /// answer arrived gives [`SmtpOutcome::RetryLater`], so a retry can
    /// deliver the message twice; the `Message-ID` stays the same.
    pub fn send(&self, email: &ComposedEmail) -> SmtpOutcome {
        let Some(from) = ascii_domain(&email.envelope_from) else {
            return failed("envelope_from: not a valid address");
        };
        let Some(to) = ascii_domain(&email.envelope_to) else {
            return failed("envelope_to: not a valid address");
        };
        // Only a mailbox name outside ASCII needs the relay's SMTPUTF8.
        let needs_smtputf8 = !from.user().is_ascii() || !to.user().is_ascii();
        let Ok(envelope) = Envelope::new(Some(from), vec![to]) else {
            return failed("envelope: not valid");
        };
        if email.rfc5322.is_empty() {
            return failed("rfc5322: empty message");
        }
        match self.transport.send_raw(&envelope, &email.rfc5322) {
            Ok(response) => SmtpOutcome::Accepted {
                response: describe_response(&response),
            },
            // This relay can never take that address; the next one may.
            Err(err)
                if needs_smtputf8 && err.is_client() && err.to_string().contains("SMTPUTF8") =>
            {
                failed(
                    "smtp: the relay takes no address with non-ASCII characters before the @ \
                 (it lacks SMTPUTF8)",
                )
            }
            Err(err) => outcome_for_error(&err),
        }
    }
}

fn failed(reason: &str) -> SmtpOutcome {
    SmtpOutcome::Failed {
        reason: reason.to_owned(),
    }
}

fn retry(reason: impl Into<String>) -> SmtpOutcome {
    SmtpOutcome::RetryLater {
        reason: reason.into(),
    }
}

/// rustls parameters verifying the relay's certificate for `host`.
fn tls_parameters(host: &str) -> Result<TlsParameters, String> {
    TlsParameters::new(host.to_owned()).map_err(|_| "security: TLS setup failed".to_owned())
}

/// `250 2.0.0 Ok: queued as X`, cleaned for storage and logs.
fn describe_response(response: &Response) -> String {
    let code = u16::from(response.code());
    let text = response.message().collect::<Vec<_>>().join(" ");
    let text = redact_server_text(&text);
    if text.is_empty() {
        code.to_string()
    } else {
        format!("{code} {text}")
    }
}

/// Control characters become spaces, whitespace is collapsed, words with an
/// `@` become `[redacted]`, the result is cut to [`MAX_RESPONSE_CHARS`].
fn redact_server_text(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let words: Vec<&str> = cleaned
        .split_whitespace()
        .map(|w| if w.contains('@') { "[redacted]" } else { w })
        .collect();
    words.join(" ").chars().take(MAX_RESPONSE_CHARS).collect()
}

/// The outcome of a failed `send_raw`.
fn outcome_for_error(err: &lettre::transport::smtp::Error) -> SmtpOutcome {
    if let Some(code) = err.status() {
        let text = err.source().map(ToString::to_string).unwrap_or_default();
        return outcome_for_reply(u16::from(code), enhanced_status(&text));
    }
    if err.is_tls() {
        return retry("smtp: TLS handshake or certificate verification failed");
    }
    if err.is_transport_shutdown() {
        return retry("smtp: sender shut down");
    }
    if err.is_client() {
        return SmtpOutcome::Held {
            reason: "smtp: the relay lacks a needed capability (STARTTLS or a login \
                     mechanism)"
                .to_owned(),
        };
    }
    if err.is_response() {
        return retry("smtp: connection closed or unreadable answer from the relay");
    }
    match io_error_kind(err) {
        Some(io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock) => retry("smtp: timed out"),
        Some(kind) => retry(format!("smtp: connection failed ({kind})")),
        None => retry("smtp: connection failed"),
    }
}

/// The kind of the first I/O error in the error's source chain.
fn io_error_kind(err: &lettre::transport::smtp::Error) -> Option<io::ErrorKind> {
    let mut source = err.source();
    while let Some(e) = source {
        if let Some(io_err) = e.downcast_ref::<io::Error>() {
            return Some(io_err.kind());
        }
        source = e.source();
    }
    None
}

/// Maps a negative reply (code, optional enhanced status code) to an outcome.
fn outcome_for_reply(code: u16, enhanced: Option<&str>) -> SmtpOutcome {
    let codes = match enhanced {
        Some(enhanced) => format!("smtp {code} {enhanced}"),
        None => format!("smtp {code}"),
    };
    match code {
        400..=499 => retry(format!("{codes}: temporarily refused")),
        530 | 534 | 535 | 538 => SmtpOutcome::Held {
            reason: format!("{codes}: relay login refused or required (check the SMTP settings)"),
        },
        500..=599 if matches!(enhanced, Some("5.1.7" | "5.1.8")) => retry(format!(
            "{codes}: the relay refused the sender address (check the email sender in settings)"
        )),
        500..=599
            if matches!(
                enhanced,
                Some("5.1.1" | "5.1.2" | "5.1.3" | "5.1.4" | "5.1.6" | "5.1.10")
            ) =>
        {
            SmtpOutcome::Bounced {
                reason: format!("{codes}: address refused"),
            }
        }
        500..=599 => SmtpOutcome::Failed {
            reason: format!("{codes}: permanently refused"),
        },
        _ => retry(format!("{codes}: unexpected answer")),
    }
}

/// The RFC 3463 enhanced status code (`5.1.1`) that starts a reply text.
fn enhanced_status(text: &str) -> Option<&str> {
    let word = text.split_whitespace().next()?;
    let mut parts = word.split('.');
    let class = parts.next()?;
    let subject = parts.next()?;
    let detail = parts.next()?;
    let digits = |s: &str, max: usize| {
        !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_digit())
    };
    (parts.next().is_none()
        && matches!(class, "2" | "4" | "5")
        && digits(subject, 3)
        && digits(detail, 3))
    .then_some(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> SmtpSettings {
        SmtpSettings {
            host: "127.0.0.1".to_owned(),
            port: 2525,
            security: SmtpSecurity::None,
            username: None,
            password: None,
            timeout_seconds: 5,
        }
    }

    fn email() -> ComposedEmail {
        ComposedEmail {
            message_id: "<k1@praxis.example>".to_owned(),
            rfc5322: b"From: a@praxis.example\r\nTo: b@example.org\r\nSubject: x\r\n\r\nHi\r\n"
                .to_vec(),
            html: String::new(),
            text: "Hi".to_owned(),
            envelope_from: "a@praxis.example".to_owned(),
            envelope_to: "b@example.org".to_owned(),
        }
    }

    /// A port on 127.0.0.1 nobody listens on (bound, then released).
    fn closed_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }

    #[test]
    fn settings_json_defaults_and_names() {
        let s: SmtpSettings =
            serde_json::from_str(r#"{"host":"smtp.example.com","port":587}"#).unwrap();
        assert_eq!(s.security, SmtpSecurity::Starttls);
        assert_eq!(s.timeout_seconds, DEFAULT_TIMEOUT_SECONDS);
        assert_eq!(s.username, None);
        assert_eq!(s.password, None);
        for (name, security) in [
            ("none", SmtpSecurity::None),
            ("starttls", SmtpSecurity::Starttls),
            ("tls", SmtpSecurity::Tls),
        ] {
            let json = format!(r#"{{"host":"h","port":1,"security":"{name}"}}"#);
            let s: SmtpSettings = serde_json::from_str(&json).unwrap();
            assert_eq!(s.security, security);
            let back = serde_json::to_value(&s).unwrap();
            assert_eq!(back["security"], name);
        }
        assert!(
            serde_json::from_str::<SmtpSettings>(r#"{"host":"h","port":1,"tls":true}"#).is_err()
        );
        assert!(
            serde_json::from_str::<SmtpSettings>(r#"{"host":"h","port":1,"security":"ssl"}"#)
                .is_err()
        );
        let schema = serde_json::to_string(&schemars::schema_for!(SmtpSettings)).unwrap();
        assert!(schema.contains("starttls"), "{schema}");
    }

    #[test]
    fn debug_never_shows_the_password() {
        let s = SmtpSettings {
            username: Some("user".to_owned()),
            password: Some("hunter2-secret".to_owned()),
            ..settings()
        };
        let shown = format!("{s:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        let sender = SmtpSender::new(&s).unwrap();
        let shown = format!("{sender:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("127.0.0.1"), "{shown}");
    }

    #[test]
    fn validation_names_the_field() {
        let check = |edit: &dyn Fn(&mut SmtpSettings)| {
            let mut s = settings();
            edit(&mut s);
            s.validate().err()
        };
        assert_eq!(check(&|_| {}), None);
        assert_eq!(check(&|s| s.host = " ".into()).unwrap(), "host: empty");
        for bad in [
            "smtp example.com",
            "[::1]",
            "smtp.example.com:25",
            "h\r\nx",
            "::g",
        ] {
            assert_eq!(
                check(&|s| s.host = bad.into()).unwrap(),
                "host: not a host name or IP address",
                "{bad}"
            );
        }
        assert_eq!(
            check(&|s| s.host = "a".repeat(254)).unwrap(),
            "host: not a host name or IP address"
        );
        assert_eq!(check(&|s| s.host = "::1".into()), None);
        assert_eq!(check(&|s| s.port = 0).unwrap(), "port: must be 1 to 65535");
        assert_eq!(
            check(&|s| s.timeout_seconds = 0).unwrap(),
            "timeout_seconds: must be 1 to 600"
        );
        assert_eq!(
            check(&|s| s.timeout_seconds = 601).unwrap(),
            "timeout_seconds: must be 1 to 600"
        );
        assert_eq!(
            check(&|s| s.username = Some("u".into())).unwrap(),
            "password: required with username"
        );
        assert_eq!(
            check(&|s| s.password = Some("p".into())).unwrap(),
            "username: required with password"
        );
        assert_eq!(
            check(&|s| {
                s.username = Some(" ".into());
                s.password = Some("p".into());
            })
            .unwrap(),
            "username: empty"
        );
        assert_eq!(
            check(&|s| {
                s.username = Some("u".into());
                s.password = Some(String::new());
            })
            .unwrap(),
            "password: empty"
        );
        // credentials in plaintext only to a loopback relay
        let remote_plain = check(&|s| {
            s.host = "smtp.example.com".into();
            s.username = Some("u".into());
            s.password = Some("secret-pw".into());
        })
        .unwrap();
        assert!(remote_plain.starts_with("security: "), "{remote_plain}");
        assert!(!remote_plain.contains("secret-pw"));
        for host in ["localhost", "127.0.0.1", "::1"] {
            assert_eq!(
                check(&|s| {
                    s.host = host.into();
                    s.username = Some("u".into());
                    s.password = Some("p".into());
                }),
                None,
                "{host}"
            );
        }
        assert_eq!(
            check(&|s| {
                s.host = "smtp.example.com".into();
                s.security = SmtpSecurity::Starttls;
                s.username = Some("u".into());
                s.password = Some("p".into());
            }),
            None
        );
        assert_eq!(
            SmtpSender::new(&SmtpSettings {
                port: 0,
                ..settings()
            })
            .unwrap_err(),
            "port: must be 1 to 65535"
        );
    }

    #[test]
    fn tls_modes_build_without_connecting() {
        for security in [SmtpSecurity::Starttls, SmtpSecurity::Tls] {
            let sender = SmtpSender::new(&SmtpSettings {
                host: "smtp.example.com".to_owned(),
                port: 587,
                security,
                username: Some("user".to_owned()),
                password: Some("pw".to_owned()),
                timeout_seconds: 30,
            })
            .unwrap();
            assert_eq!(sender.security, security);
        }
    }

    #[test]
    fn sender_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<SmtpSender>();
    }

    #[test]
    fn replies_map_to_outcomes() {
        assert_eq!(
            outcome_for_reply(550, Some("5.1.1")),
            SmtpOutcome::Bounced {
                reason: "smtp 550 5.1.1: address refused".to_owned()
            }
        );
        assert_eq!(
            outcome_for_reply(550, Some("5.7.1")),
            SmtpOutcome::Failed {
                reason: "smtp 550 5.7.1: permanently refused".to_owned()
            }
        );
        assert_eq!(
            outcome_for_reply(554, None),
            SmtpOutcome::Failed {
                reason: "smtp 554: permanently refused".to_owned()
            }
        );
        assert_eq!(
            outcome_for_reply(451, Some("4.3.0")),
            SmtpOutcome::RetryLater {
                reason: "smtp 451 4.3.0: temporarily refused".to_owned()
            }
        );
        assert!(matches!(
            outcome_for_reply(421, None),
            SmtpOutcome::RetryLater { .. }
        ));
        for login in [530, 534, 535, 538] {
            let SmtpOutcome::Held { reason } = outcome_for_reply(login, Some("5.7.8")) else {
                panic!("{login} must hold the message");
            };
            assert!(reason.contains("SMTP settings"), "{reason}");
        }
        // The practice's own sender address refused: no recipient's bounce.
        for sender in ["5.1.7", "5.1.8"] {
            let SmtpOutcome::RetryLater { reason } = outcome_for_reply(553, Some(sender)) else {
                panic!("{sender} must be retried");
            };
            assert!(reason.contains("sender address"), "{reason}");
        }
        // "Other address status": either address, so no bounce either.
        assert!(matches!(
            outcome_for_reply(550, Some("5.1.0")),
            SmtpOutcome::Failed { .. }
        ));
        for recipient in ["5.1.2", "5.1.3", "5.1.4", "5.1.6", "5.1.10"] {
            assert!(
                matches!(
                    outcome_for_reply(550, Some(recipient)),
                    SmtpOutcome::Bounced { .. }
                ),
                "{recipient}"
            );
        }
    }

    #[test]
    fn enhanced_status_is_strict() {
        assert_eq!(
            enhanced_status("5.1.1 <bob@example.org>: unknown"),
            Some("5.1.1")
        );
        assert_eq!(enhanced_status("4.7.100 later"), Some("4.7.100"));
        assert_eq!(enhanced_status("  2.0.0 Ok"), Some("2.0.0"));
        assert_eq!(enhanced_status("<bob@example.org> 5.1.1"), None);
        assert_eq!(enhanced_status("Mailbox unavailable"), None);
        assert_eq!(enhanced_status("5.1"), None);
        assert_eq!(enhanced_status("3.1.1 x"), None);
        assert_eq!(enhanced_status("5.1.1.1 x"), None);
        assert_eq!(enhanced_status("5.1234.1 x"), None);
        assert_eq!(enhanced_status(""), None);
    }

    #[test]
    fn server_text_is_redacted() {
        assert_eq!(
            redact_server_text("2.0.0 Ok: queued as 4F2B1C"),
            "2.0.0 Ok: queued as 4F2B1C"
        );
        assert_eq!(
            redact_server_text("2.1.5 <ann@example.org>\r\n accepted  for\tann@example.org"),
            "2.1.5 [redacted] accepted for [redacted]"
        );
        assert_eq!(
            redact_server_text(&"x".repeat(500)).len(),
            MAX_RESPONSE_CHARS
        );
    }

    #[test]
    fn invalid_envelope_fails_without_the_address() {
        let sender = SmtpSender::new(&settings()).unwrap();
        let mut e = email();
        e.envelope_to = "secret person <nope".to_owned();
        let outcome = sender.send(&e);
        assert_eq!(outcome, failed("envelope_to: not a valid address"));
        let mut e = email();
        e.envelope_from = "@@".to_owned();
        assert_eq!(
            sender.send(&e),
            failed("envelope_from: not a valid address")
        );
        let mut e = email();
        e.rfc5322.clear();
        assert_eq!(sender.send(&e), failed("rfc5322: empty message"));
    }

    #[test]
    fn nobody_listening_is_retry_later() {
        let sender = SmtpSender::new(&SmtpSettings {
            port: closed_port(),
            ..settings()
        })
        .unwrap();
        let SmtpOutcome::RetryLater { reason } = sender.send(&email()) else {
            panic!("expected RetryLater");
        };
        assert!(reason.starts_with("smtp: connection failed"), "{reason}");
        assert!(!reason.contains('@'), "{reason}");
    }

    #[test]
    fn silent_relay_times_out() {
        // The kernel accepts the connection into the backlog; nobody greets.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let sender = SmtpSender::new(&SmtpSettings {
            port: listener.local_addr().unwrap().port(),
            timeout_seconds: 1,
            ..settings()
        })
        .unwrap();
        // Nobody ever greets: only the timeout can end the send.
        assert_eq!(sender.send(&email()), retry("smtp: timed out"));
    }
}
