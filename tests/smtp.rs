//! `crm_module::messaging::smtp` against a real SMTP server.
//!
//! Each test starts `tests/smtp_server.py` (Python's aiosmtpd) on a free port
//! of 127.0.0.1, waits until it says it listens and kills it on drop.
//! The server stores every accepted message as raw bytes plus a JSON summary
//! made with Python's `email` package (decoded headers and MIME parts), so
//! the checks below see the message the way a mail client would.
//!
//! Requirements: `python3` with the `aiosmtpd` package (`python3 -m pip install
//! aiosmtpd`; `tests/run.sh` installs it). Without them the tests fail with
//! a message saying so: they are never skipped silently.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use crm_integration_tests as support;
use crm_module::messaging::email::{ComposedEmail, EmailParts, SenderIdentity, compose};
use crm_module::messaging::smtp::{SmtpOutcome, SmtpSecurity, SmtpSender, SmtpSettings};
use crm_module::messaging::template::render;
use serde_json::Value;
use support::SmtpServer;

/// Username and password the server accepts (`--auth`).
const AUTH_USER: &str = "crm-relay";
const AUTH_PASSWORD: &str = "s3cret-Pässword";

fn sender() -> SenderIdentity {
    SenderIdentity {
        from_name: "Praxis Dr. Müller".to_owned(),
        from_address: "news@praxis-mueller.de".to_owned(),
        reply_to: Some("team@praxis-mueller.de".to_owned()),
    }
}

/// Renders the templates of a real marketing email and composes it.
fn marketing_email(to: &str, key: &str) -> ComposedEmail {
    let vars: BTreeMap<String, String> = [
        ("firstname", "Jürgen"),
        ("lastname", "Weiß"),
        ("practice", "Praxis Müller"),
        ("unsubscribe_link", "https://crm.example/u/tok-123"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let subject = render(
        "subject",
        "Willkommen bei {{ practice }} — {{ firstname }}, Ihr Termin 🦷",
        &vars,
        false,
    )
    .expect("subject");
    let preheader = render(
        "preheader",
        "Nur noch 3 Tage, {{ firstname }}",
        &vars,
        false,
    )
    .expect("preheader");
    let html_body = render(
        "html_body",
        "<h1>Hallo {{ firstname }} {{ lastname }},</h1>\n\
         <p>schön, dass Sie da sind! Bitte \
         <a href=\"https://praxis-mueller.de/termin?id=42&amp;src=mail\">bestätigen Sie Ihren Termin</a>.</p>\n\
         <p>Grüße aus der Praxis – Ihr Team</p>",
        &vars,
        true,
    )
    .expect("html_body");
    let footer_html = render(
        "footer_html",
        "<p class=\"footer\">{{ practice }}, Hauptstraße 1, 10115 Berlin · \
         <a href=\"{{ unsubscribe_link }}\">Abmelden</a></p>",
        &vars,
        true,
    )
    .expect("footer_html");
    let footer_text = render(
        "footer_text",
        "{{ practice }}, Hauptstraße 1, 10115 Berlin\nAbmelden: {{ unsubscribe_link }}",
        &vars,
        false,
    )
    .expect("footer_text");
    let from = sender();
    compose(&EmailParts {
        message_key: key,
        to,
        sender: &from,
        subject: &subject,
        preheader: &preheader,
        html_body: &html_body,
        text_body: None,
        footer_html: &footer_html,
        footer_text: &footer_text,
        unsubscribe_url: Some("https://crm.example/u/tok-123"),
        unsubscribe_mailto: Some("mailto:unsubscribe@crm.example?subject=tok-123"),
        marketing: true,
        date: UNIX_EPOCH + Duration::from_secs(1_767_600_000),
    })
    .expect("compose")
}

/// The decoded value of the only header `name` (case-insensitive).
fn header<'a>(summary: &'a Value, name: &str) -> &'a str {
    let values: Vec<&str> = summary["headers"]
        .as_array()
        .expect("headers")
        .iter()
        .filter(|h| h[0].as_str().is_some_and(|n| n.eq_ignore_ascii_case(name)))
        .map(|h| h[1].as_str().expect("header value"))
        .collect();
    assert_eq!(values.len(), 1, "header {name} in {summary:#}");
    values[0]
}

fn part<'a>(summary: &'a Value, content_type: &str) -> &'a Value {
    summary["parts"]
        .as_array()
        .expect("parts")
        .iter()
        .find(|p| p["content_type"] == content_type)
        .unwrap_or_else(|| panic!("no {content_type} part in {summary:#}"))
}

fn trim_crlf(bytes: &[u8]) -> &[u8] {
    let mut end = bytes.len();
    while end > 0 && matches!(bytes[end - 1], b'\r' | b'\n') {
        end -= 1;
    }
    &bytes[..end]
}

/// The server's response of an accepted send; a failure shows the server's log.
fn assert_accepted(outcome: &SmtpOutcome, server: &SmtpServer) -> String {
    match outcome {
        SmtpOutcome::Accepted { response } => response.clone(),
        other => panic!(
            "expected Accepted, got {other:?}\nserver log:\n{}",
            server.log()
        ),
    }
}

#[test]
fn marketing_email_arrives_intact() {
    let server = SmtpServer::start(None);
    let smtp = SmtpSender::new(&server.settings()).expect("sender");
    let email = marketing_email("juergen.weiss@example.org", "out_7:step-1");

    let response = assert_accepted(&smtp.send(&email), &server);
    assert!(
        response.starts_with("250 2.0.0 Ok: queued as TEST0001"),
        "{response}"
    );
    // The server's text quotes the recipient; the response never does.
    assert!(!response.contains('@'), "{response}");
    assert!(response.contains("[redacted]"), "{response}");

    let received = server.received();
    assert_eq!(received.len(), 1, "{received:#?}");
    let m = &received[0];

    // Envelope
    assert_eq!(m["mail_from"], "news@praxis-mueller.de");
    assert_eq!(
        m["rcpt_tos"],
        serde_json::json!(["juergen.weiss@example.org"])
    );

    // The bytes on the wire are the composed bytes (after dot-unstuffing).
    // The SMTP terminator may leave one extra CRLF at the end.
    let raw = &server.received_raw()[0];
    assert_eq!(
        trim_crlf(raw),
        trim_crlf(&email.rfc5322),
        "raw message differs from the composed one"
    );
    assert!(raw.is_ascii(), "7-bit clean on the wire");

    // Headers, RFC 2047 decoded back by Python's email package
    assert_eq!(
        header(m, "Subject"),
        "Willkommen bei Praxis Müller — Jürgen, Ihr Termin 🦷"
    );
    assert_eq!(
        header(m, "From"),
        "\"Praxis Dr. Müller\" <news@praxis-mueller.de>"
    );
    assert_eq!(header(m, "To"), "juergen.weiss@example.org");
    assert_eq!(header(m, "Reply-To"), "team@praxis-mueller.de");
    assert_eq!(header(m, "Message-ID"), email.message_id);
    assert_eq!(
        header(m, "Message-ID"),
        "<out_7=3Astep-1@praxis-mueller.de>"
    );
    assert_eq!(header(m, "Date"), "Mon, 05 Jan 2026 08:00:00 +0000");
    assert_eq!(header(m, "MIME-Version"), "1.0");
    assert_eq!(
        header(m, "List-Unsubscribe"),
        "<https://crm.example/u/tok-123>, <mailto:unsubscribe@crm.example?subject=tok-123>"
    );
    assert_eq!(
        header(m, "List-Unsubscribe-Post"),
        "List-Unsubscribe=One-Click"
    );
    // The raw Subject is encoded (no 8-bit header bytes).
    let raw_subject = m["raw_headers"]
        .as_array()
        .expect("raw_headers")
        .iter()
        .find(|h| h[0] == "Subject")
        .and_then(|h| h[1].as_str())
        .expect("raw Subject");
    assert!(raw_subject.contains("=?utf-8?"), "{raw_subject}");

    // MIME structure: multipart/alternative with text/plain then text/html
    assert_eq!(m["content_type"], "multipart/alternative");
    let parts = m["parts"].as_array().expect("parts");
    let types: Vec<&str> = parts
        .iter()
        .map(|p| p["content_type"].as_str().expect("type"))
        .collect();
    assert_eq!(types, ["text/plain", "text/html"]);
    assert_eq!(m["defects"], serde_json::json!([]), "parser defects");

    // Decoded bodies (quoted-printable / base64 undone, UTF-8 charset)
    let text = part(m, "text/plain");
    let html = part(m, "text/html");
    for p in [text, html] {
        assert_eq!(p["charset"], "utf-8", "{p:#}");
        let te = p["transfer_encoding"].as_str().unwrap_or_default();
        assert!(
            ["quoted-printable", "base64", "7bit"].contains(&te),
            "transfer encoding {te}"
        );
    }
    // Decoded parts keep the CRLF line ends of the wire; compare with \n.
    let text = text["content"]
        .as_str()
        .expect("text content")
        .replace("\r\n", "\n");
    let html = html["content"]
        .as_str()
        .expect("html content")
        .replace("\r\n", "\n");
    assert_eq!(text.trim_end(), email.text.trim_end());
    assert_eq!(html.trim_end(), email.html.trim_end());
    assert!(text.contains("Hallo Jürgen Weiß,"), "{text}");
    assert!(
        text.contains(
            "bestätigen Sie Ihren Termin (https://praxis-mueller.de/termin?id=42&src=mail)"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "Praxis Müller, Hauptstraße 1, 10115 Berlin\nAbmelden: https://crm.example/u/tok-123"
        ),
        "{text}"
    );
    assert!(
        html.contains("<a href=\"https://praxis-mueller.de/termin?id=42&amp;src=mail\">bestätigen Sie Ihren Termin</a>"),
        "{html}"
    );
    // minijinja's HTML auto-escaping writes `/` in values as `&#x2f;`, which
    // HTML attribute parsing turns back into `/`.
    assert!(
        html.replace("&#x2f;", "/")
            .contains("<a href=\"https://crm.example/u/tok-123\">Abmelden</a>"),
        "{html}"
    );
    assert!(html.contains("Hauptstraße 1"), "{html}");
    assert!(html.contains("Grüße aus der Praxis – Ihr Team"), "{html}");
    assert!(
        html.contains("Nur noch 3 Tage, Jürgen"),
        "preheader: {html}"
    );
    assert!(html.contains("<meta charset=\"utf-8\">"), "{html}");
    let link = html.find("termin?id=42").expect("link");
    let footer = html.find("class=\"footer\"").expect("footer");
    assert!(link < footer, "footer after the body");
}

#[test]
fn pooled_connection_sends_several_messages() {
    let server = SmtpServer::start(None);
    let smtp = SmtpSender::new(&server.settings()).expect("sender");
    for i in 1..=3 {
        let email = marketing_email(&format!("patient{i}@example.org"), &format!("out_{i}"));
        assert_accepted(&smtp.send(&email), &server);
    }
    let received = server.received();
    let recipients: Vec<&Value> = received.iter().map(|m| &m["rcpt_tos"][0]).collect();
    assert_eq!(
        recipients,
        [
            "patient1@example.org",
            "patient2@example.org",
            "patient3@example.org"
        ]
    );
}

#[test]
fn refusals_map_to_failed_and_retry_later() {
    let server = SmtpServer::start(None);
    let smtp = SmtpSender::new(&server.settings()).expect("sender");

    // 550 5.1.1 at RCPT: no such mailbox, a hard bounce
    let outcome = smtp.send(&marketing_email("reject550@example.org", "out_550"));
    let SmtpOutcome::Bounced { reason } = &outcome else {
        panic!("550 5.1.1 must bounce: {outcome:?}");
    };
    assert_eq!(reason, "smtp 550 5.1.1: address refused");

    // 451 at RCPT: temporary
    let outcome = smtp.send(&marketing_email("defer451@example.org", "out_451"));
    let SmtpOutcome::RetryLater { reason } = &outcome else {
        panic!("451 must be retried: {outcome:?}");
    };
    assert_eq!(reason, "smtp 451 4.3.0: temporarily refused");

    // 554 after DATA (content refused): permanent
    let outcome = smtp.send(&marketing_email("reject554@example.org", "out_554"));
    let SmtpOutcome::Failed { reason } = &outcome else {
        panic!("554 must fail: {outcome:?}");
    };
    assert_eq!(reason, "smtp 554 5.7.1: permanently refused");

    // The sender still works after refusals (broken connections are not reused).
    assert_accepted(
        &smtp.send(&marketing_email("ok@example.org", "out_ok")),
        &server,
    );
    let received = server.received();
    assert_eq!(received.len(), 1, "only the accepted message is stored");
    assert_eq!(received[0]["rcpt_tos"][0], "ok@example.org");
}

#[test]
fn relay_not_listening_is_retry_later() {
    // No server needed: a port nobody listens on.
    let settings = SmtpSettings {
        host: "127.0.0.1".to_owned(),
        port: support::free_port(),
        security: SmtpSecurity::None,
        username: None,
        password: None,
        timeout_seconds: 5,
    };
    let smtp = SmtpSender::new(&settings).expect("sender");
    let outcome = smtp.send(&marketing_email("ann@example.org", "out_down"));
    let SmtpOutcome::RetryLater { reason } = &outcome else {
        panic!("an unreachable relay must be retried: {outcome:?}");
    };
    assert!(reason.starts_with("smtp: connection failed"), "{reason}");
    assert!(!reason.contains('@'), "{reason}");
}

#[test]
fn relay_login() {
    let server = SmtpServer::start(Some(&format!("{AUTH_USER}:{AUTH_PASSWORD}")));
    let good = SmtpSettings {
        username: Some(AUTH_USER.to_owned()),
        password: Some(AUTH_PASSWORD.to_owned()),
        ..server.settings()
    };
    let smtp = SmtpSender::new(&good).expect("sender");
    assert_accepted(
        &smtp.send(&marketing_email("ann@example.org", "out_auth")),
        &server,
    );

    let bad = SmtpSettings {
        password: Some("wrong".to_owned()),
        ..good
    };
    let smtp = SmtpSender::new(&bad).expect("sender");
    let outcome = smtp.send(&marketing_email("ann@example.org", "out_auth_bad"));
    let SmtpOutcome::Held { reason } = &outcome else {
        panic!("a refused login is a settings problem: the message waits: {outcome:?}");
    };
    assert!(reason.starts_with("smtp 535"), "{reason}");
    assert!(!reason.contains("wrong"), "{reason}");
    assert_eq!(server.received().len(), 1);
}
