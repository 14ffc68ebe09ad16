//! Email delivery through the built-in SMTP sender, end to end: a [`Module`]
//! with `email_delivery: {"mode": "smtp"}` sends its email messages to a real
//! SMTP server (`tests/smtp_server.py`, Python's aiosmtpd) while the host
//! still gets the other effects.
//!
//! Requirements: `python3` with the `aiosmtpd` package (`tests/run.sh`
//! installs it). Without them the test fails saying so.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crm_integration_tests as support;
use crm_module::{Delivery, EffectKind, Host, HostAnswer, Module};
use serde_json::{Value, json};
use support::SmtpServer;

/// Records what the host is asked to deliver.
#[derive(Default)]
struct Collect {
    got: Mutex<Vec<(EffectKind, Value)>>,
}

impl Host for Collect {
    fn deliver(&self, d: Delivery<'_>) -> (HostAnswer, Option<String>) {
        self.got
            .lock()
            .unwrap()
            .push((d.kind, serde_json::from_str(d.payload).unwrap()));
        (HostAnswer::Accepted, None)
    }
}

fn contact(id: &str, email: &str) -> String {
    json!({"event_id": format!("e-{id}"), "type": "contact.upserted", "occurred_at": "2026-01-05T14:00:00Z",
           "contact": {"id": id, "first_name": "Pat", "email": email, "email_subscription": "subscribed",
                       "lead_source": "website_form"}})
    .to_string()
}

/// The header's value in a server summary.
fn header<'a>(summary: &'a Value, name: &str) -> Option<&'a str> {
    summary["headers"]
        .as_array()?
        .iter()
        .find(|h| h[0].as_str().is_some_and(|n| n.eq_ignore_ascii_case(name)))
        .and_then(|h| h[1].as_str())
}

/// A practice whose email goes through the SMTP relay `smtp`.
fn practice_config(smtp: Value) -> Value {
    json!({
        "clock": {"mode": "manual", "start": "2026-01-05T14:00:00Z"},
        "initial_settings": {
            "practice_name": "Riverside Family Practice",
            "time_zone": "America/New_York",
            "email_sender": {"from_name": "Riverside", "from_address": "news@riverside.example"},
            "email_footer": {"postal_address": "12 River Road, Boston, MA 02118",
                             "text": "{{practice}}: unsubscribe at {{unsubscribe_link}}"},
            "tracking": {"base_url": "https://t.riverside.example"},
            "email_delivery": {"mode": "smtp", "smtp": smtp}
        }
    })
}

/// A practice whose email goes through the relay on `port` (plain SMTP,
/// `timeout` seconds), a collecting host attached, and the "News"
/// automation active: an email, then a task, for every new contact.
fn news_practice(dir: &tempfile::TempDir, port: u16, timeout: u32) -> (Module, Arc<Collect>) {
    let config = practice_config(json!({
        "host": "127.0.0.1", "port": port, "security": "none", "timeout_seconds": timeout}));
    let m = Module::open(&dir.path().join("practice.db"), &config.to_string()).unwrap();
    let host = Arc::new(Collect::default());
    m.set_host(Some(host.clone())).unwrap();
    m.execute(r#"{"command": "automation.create", "automation_id": "news", "definition": {
        "name": "News", "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
        "steps": [
            {"id": "mail", "type": "send_email", "subject": "News from {{practice}}", "body": "<p>Hi {{firstname}}</p>"},
            {"id": "call", "type": "create_task", "title": "Call this lead", "assignee": {"kind": "queue", "name": "front_desk"}, "due_in_minutes": 5}
        ]}}"#)
        .unwrap();
    m.execute(r#"{"command": "automation.activate", "automation_id": "news"}"#)
        .unwrap();
    (m, host)
}

/// A relay that accepts the connection and then says nothing (a
/// black-holed or hung server) holds up only email: the tasks queued behind
/// the emails reach the host while the relay's send still waits out its
/// 600 s timeout. An email waiting behind it whose contact unsubscribes
/// meanwhile is screened again, and suppressed.
#[test]
fn a_hung_relay_holds_up_only_email() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let (m, host) = news_practice(&dir, port, 600);
    m.push(&contact("p1", "pat@patients.example")).unwrap();
    m.push(&contact("p2", "sam@patients.example")).unwrap();
    // The relay's connection arrives and is held open, unanswered (a
    // module that never connects fails here rather than hanging the run).
    listener.set_nonblocking(true).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let held = loop {
        match listener.accept() {
            Ok((held, _)) => break held,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the module never connected to the relay"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    held.set_nonblocking(false).unwrap();
    // Each contact's task comes after their email: once both tasks are
    // in, p2's email waits in the relay's queue.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while host.got.lock().unwrap().len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the tasks waited behind the hung relay"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let got = host.got.lock().unwrap().clone();
    assert!(
        got.iter().all(|(kind, _)| *kind == EffectKind::Task),
        "{got:?}"
    );
    m.push(r#"{"event_id": "unsub", "type": "contact.upserted", "contact": {"id": "p2", "email_subscription": "unsubscribed"}}"#)
        .unwrap();
    // The relay gives up when the server goes away: p1's email waits for a
    // retry; p2's is screened again before it is tried.
    drop(held);
    drop(listener);
    m.wait_idle(Duration::from_secs(60)).unwrap();
    drop(m);
    let conn = rusqlite::Connection::open(dir.path().join("practice.db")).unwrap();
    let status = |contact: &str| -> (String, i64) {
        conn.query_row(
            "SELECT status, attempts FROM outbox WHERE kind = 'message' AND contact_id = ?1",
            [contact],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
    };
    assert_eq!(status("p1"), ("retry".to_string(), 1));
    assert_eq!(
        status("p2"),
        ("failed".to_string(), 0),
        "suppressed, never tried"
    );
}

#[test]
fn email_goes_to_the_smtp_relay_and_other_effects_to_the_host() {
    let server = SmtpServer::start(None);
    let dir = tempfile::tempdir().unwrap();
    let (m, host) = news_practice(&dir, server.port, 10);
    m.push(&contact("p1", "pat@patients.example")).unwrap();
    m.push(&contact("p2", "reject550@patients.example"))
        .unwrap();
    m.push(&contact("p3", "reject554@patients.example"))
        .unwrap();
    m.wait_idle(Duration::from_secs(30)).unwrap();

    // The relay got exactly the accepted message, with the module's envelope.
    let received = server.received();
    assert_eq!(received.len(), 1, "{received:?}\n{}", server.log());
    let mail = &received[0];
    assert_eq!(mail["mail_from"], "news@riverside.example");
    assert_eq!(mail["rcpt_tos"], json!(["pat@patients.example"]));
    assert_eq!(header(mail, "To"), Some("pat@patients.example"));
    assert_eq!(
        header(mail, "Subject"),
        Some("News from Riverside Family Practice")
    );

    let conn = crm_module::store::open(
        &dir.path().join("practice.db"),
        crm_module::store::Access::Read,
    )
    .unwrap();
    let row = |contact: &str| -> (String, String, String) {
        conn.query_row(
            "SELECT idempotency_key, status, payload FROM outbox WHERE kind = 'message' AND contact_id = ?1",
            [contact],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap()
    };
    let (key, status, payload) = row("p1");
    assert_eq!(status, "accepted");
    let payload: Value = serde_json::from_str(&payload).unwrap();
    let message_id = header(mail, "Message-ID").unwrap();
    assert_eq!(message_id, payload["rendered"]["message_id"]);
    let local: String = key
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'+' | b'-' | b'.') {
                char::from(b).to_string()
            } else {
                format!("={b:02X}")
            }
        })
        .collect();
    assert_eq!(message_id, format!("<{local}@riverside.example>"));

    // 550 5.1.1 at RCPT (no such mailbox): a hard bounce, not an error. The
    // row is failed for good, the address is undeliverable, the figures
    // count one attempt that bounced.
    let (_, status, _) = row("p2");
    assert_eq!(status, "failed");
    let kinds: Vec<(String, Option<String>)> = conn
        .prepare(
            "SELECT kind, json_extract(detail, '$.at') FROM events WHERE contact_id = 'p2'
               AND kind IN ('message_failed', 'message_bounced', 'address_undeliverable') ORDER BY id",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        kinds,
        [
            ("message_bounced".to_string(), Some("hand_over".to_string())),
            ("address_undeliverable".to_string(), None)
        ]
    );
    let undeliverable: Option<String> = conn
        .query_row(
            "SELECT json_extract(props, '$.email_undeliverable') FROM contacts WHERE id = 'p2'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(undeliverable.as_deref(), Some("reject550@patients.example"));
    // The relay's 250 for p1 is the delivery: no receipt ever comes for
    // mail the module sends itself. Delivered = sent and accepted, once.
    let email_row = || -> Value {
        let perf = m
            .view("automation_performance", r#"{"automation_id": "news"}"#)
            .unwrap();
        perf["channel_breakdown"][0].clone()
    };
    let counts = |email: &Value| -> [Option<u64>; 5] {
        ["send_attempts", "sent", "delivered", "bounced", "failed"].map(|f| email[f].as_u64())
    };
    let email = email_row();
    assert_eq!(email["channel"]["id"], "email", "{email}");
    // p3's 554 after DATA is the relay's refusal: an attempt, an error.
    assert_eq!(
        counts(&email),
        [Some(3), Some(1), Some(1), Some(1), Some(1)],
        "{email}"
    );
    assert_eq!(email["delivery_rate"].as_f64(), Some(33.3), "{email}");
    assert_eq!(email["error_rate"].as_f64(), Some(33.3), "{email}");
    let logged = |kind: &str| -> Vec<Option<String>> {
        conn.prepare(
            "SELECT json_extract(detail, '$.by') FROM events WHERE message_key = ?1 AND kind = ?2 ORDER BY id",
        )
        .unwrap()
        .query_map(rusqlite::params![key, kind], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
    };
    assert_eq!(logged("message_sent").len(), 1);
    assert_eq!(logged("message_delivered"), [Some("relay".to_string())]);

    // A delivered receipt the host pushes for relay mail repeats the
    // delivery; a hard bounce it learns of later (an asynchronous DSN)
    // counts and takes the delivery back.
    let receipt = |id: &str, status: &str, bounce: Option<&str>| {
        let mut ev = json!({"event_id": id, "type": "delivery.receipt", "message_key": key, "status": status});
        if let Some(b) = bounce {
            ev["bounce"] = json!(b);
        }
        m.push(&ev.to_string()).unwrap();
    };
    receipt("r-delivered", "delivered", None);
    assert_eq!(logged("receipt_repeated").len(), 1);
    assert_eq!(
        counts(&email_row()),
        [Some(3), Some(1), Some(1), Some(1), Some(1)]
    );
    receipt("r-bounced", "bounced", Some("hard"));
    assert_eq!(logged("message_delivery_revoked").len(), 1);
    let email = email_row();
    assert_eq!(
        counts(&email),
        [Some(3), Some(1), Some(0), Some(2), Some(1)],
        "{email}"
    );
    assert_eq!(email["delivery_rate"].as_f64(), Some(0.0), "{email}");

    // The host never saw an email, but got the three tasks.
    let got = host.got.lock().unwrap();
    assert!(
        got.iter()
            .all(|(k, p)| !(*k == EffectKind::Message && p["channel"] == "email")),
        "{got:?}"
    );
    assert_eq!(
        got.iter().filter(|(k, _)| *k == EffectKind::Task).count(),
        3
    );
}

#[test]
fn saving_the_settings_unchanged_keeps_the_smtp_password() {
    let (user, password) = ("crm-relay", "k33p-Më-Stored");
    let server = SmtpServer::start(Some(&format!("{user}:{password}")));
    let dir = tempfile::tempdir().unwrap();
    let config = practice_config(json!({
        "host": "127.0.0.1", "port": server.port, "security": "none", "timeout_seconds": 10,
        "username": user, "password": password}));
    let m = Module::open(&dir.path().join("practice.db"), &config.to_string()).unwrap();
    m.set_host(Some(Arc::new(Collect::default()))).unwrap();

    // settings.get never returns the password; the settings view says one is stored.
    let mut settings = m.execute(r#"{"command": "settings.get"}"#).unwrap();
    assert!(!settings.to_string().contains(password));
    assert_eq!(settings["email_delivery"]["smtp"]["password"], Value::Null);
    let view = m.view("settings", "{}").unwrap();
    assert!(!view.to_string().contains(password));
    assert!(
        view.to_string().contains("Stored (leave empty to keep it)"),
        "{view}"
    );

    // Saving the document back (one other field edited) keeps the password.
    settings["practice_name"] = json!("Riverside Family Practice & Annex");
    let saved = m
        .execute(&json!({"command": "settings.update", "settings": settings}).to_string())
        .unwrap();
    assert_eq!(saved["email_delivery"]["smtp"]["password"], Value::Null);
    assert!(!saved.to_string().contains(password));

    // Another username needs its own password: refused, nothing changed.
    let mut other = settings.clone();
    other["email_delivery"]["smtp"]["username"] = json!("someone-else");
    let err = m
        .execute(&json!({"command": "settings.update", "settings": other}).to_string())
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("email_delivery.smtp.password: required with username"),
        "{err}"
    );

    // The relay still accepts the module's login: the stored password was kept.
    m.execute(
        r#"{"command": "automation.create", "automation_id": "news", "definition": {
        "name": "News", "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
        "steps": [{"id": "mail", "type": "send_email", "subject": "News", "body": "<p>Hi</p>"}]}}"#,
    )
    .unwrap();
    m.execute(r#"{"command": "automation.activate", "automation_id": "news"}"#)
        .unwrap();
    m.push(&contact("p1", "pat@patients.example")).unwrap();
    m.wait_idle(Duration::from_secs(30)).unwrap();
    let received = server.received();
    assert_eq!(received.len(), 1, "{received:?}\n{}", server.log());
    assert_eq!(received[0]["rcpt_tos"], json!(["pat@patients.example"]));
    let practice = m.execute(r#"{"command": "settings.get"}"#).unwrap();
    assert_eq!(
        practice["practice_name"],
        "Riverside Family Practice & Annex"
    );
}

/// Closing while the relay answers an email: the close waits for the
/// relay's answer and records it, so the email is not sent a second time
/// after the next open (a relay has no idempotency key to know it by). The
/// email queued behind it is not started: it waits in the outbox, its
/// attempts untouched, and goes after the next open.
#[test]
fn closing_during_a_relay_send_records_its_answer() {
    let server = SmtpServer::start(None);
    let dir = tempfile::tempdir().unwrap();
    let (m, _host) = news_practice(&dir, server.port, 30);
    // The relay stores p1's email and answers 3 s later.
    m.push(&contact("p1", "slow3s@patients.example")).unwrap();
    m.push(&contact("p2", "sam@patients.example")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while server.received_files("eml").is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the relay never got p1's email\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(m);
    let db = dir.path().join("practice.db");
    let row = |contact: &str| -> (String, i64) {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.query_row(
            "SELECT status, attempts FROM outbox WHERE kind = 'message' AND contact_id = ?1",
            [contact],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
    };
    assert_eq!(row("p1"), ("accepted".to_string(), 1), "the relay's 250");
    assert_eq!(row("p2"), ("pending".to_string(), 0), "not started");
    let config = practice_config(json!({
        "host": "127.0.0.1", "port": server.port, "security": "none", "timeout_seconds": 30}));
    let m = Module::open(&db, &config.to_string()).unwrap();
    m.set_host(Some(Arc::new(Collect::default()))).unwrap();
    m.wait_idle(Duration::from_secs(60)).unwrap();
    drop(m);
    let to: Vec<Value> = server
        .received()
        .iter()
        .map(|mail| mail["rcpt_tos"][0].clone())
        .collect();
    assert_eq!(
        to,
        [
            json!("slow3s@patients.example"),
            json!("sam@patients.example")
        ],
        "each email once"
    );
}

/// A relay that refuses the module's login takes no email from these
/// settings: every email waits, its attempts untouched, however long it
/// takes to fix them (two days here), and goes as soon as they are fixed.
#[test]
fn a_relay_refusing_the_login_holds_email_until_the_settings_are_fixed() {
    let server = SmtpServer::start(Some("crm-relay:right-password"));
    let dir = tempfile::tempdir().unwrap();
    let m = relay_practice(&dir, server.port, "news", "wrong-password");
    m.push(&contact("p1", "pat@patients.example")).unwrap();
    m.push(&contact("p2", "sam@patients.example")).unwrap();
    m.wait_idle(Duration::from_secs(30)).unwrap();
    m.advance_clock(2 * 24 * 3_600_000).unwrap();
    m.wait_idle(Duration::from_secs(60)).unwrap();
    let db = dir.path().join("practice.db");
    assert_eq!(email_rows(&db), vec![("retry".to_string(), 0); 2]);
    // Held every 15 minutes for two days, logged once each.
    assert_eq!(count_events(&db, "effect_held"), 2);
    assert_eq!(count_events(&db, "message_failed"), 0);
    let mut settings = m.execute(r#"{"command": "settings.get"}"#).unwrap();
    settings["email_delivery"]["smtp"]["password"] = json!("right-password");
    m.execute(&json!({"command": "settings.update", "settings": settings}).to_string())
        .unwrap();
    // New settings release what the old ones held: the emails go at once,
    // not at the end of their 15-minute pause.
    m.wait_idle(Duration::from_secs(60)).unwrap();
    assert_eq!(email_rows(&db), vec![("accepted".to_string(), 1); 2]);
    assert_eq!(server.received().len(), 2, "{}", server.log());
}

/// A relay that refuses the practice's sender address (`553 5.1.8`, its
/// domain unknown) refuses no patient's address: no bounce, no address
/// marked undeliverable, no channel fallback. The email is retried.
#[test]
fn a_relay_refusing_the_sender_address_bounces_nobody() {
    let server = SmtpServer::start(Some("crm-relay:right-password"));
    let dir = tempfile::tempdir().unwrap();
    let m = relay_practice(&dir, server.port, "unknown-sender", "right-password");
    m.push(&contact("p1", "pat@patients.example")).unwrap();
    m.push(&contact("p2", "sam@patients.example")).unwrap();
    m.wait_idle(Duration::from_secs(30)).unwrap();
    let db = dir.path().join("practice.db");
    assert_eq!(email_rows(&db), vec![("retry".to_string(), 1); 2]);
    for kind in ["message_bounced", "address_undeliverable", "message_failed"] {
        assert_eq!(count_events(&db, kind), 0, "{kind}");
    }
    assert!(server.received().is_empty());
}

/// A practice whose email goes through the relay on `port`, logging in as
/// `crm-relay` with `password`, sending from `<sender>@riverside.example`,
/// with an automation emailing every new contact (an SMS fallback on it).
fn relay_practice(dir: &tempfile::TempDir, port: u16, sender: &str, password: &str) -> Module {
    let mut config = practice_config(json!({
        "host": "127.0.0.1", "port": port, "security": "none", "timeout_seconds": 10,
        "username": "crm-relay", "password": password}));
    config["initial_settings"]["email_sender"]["from_address"] =
        json!(format!("{sender}@riverside.example"));
    let m = Module::open(&dir.path().join("practice.db"), &config.to_string()).unwrap();
    m.set_host(Some(Arc::new(Collect::default()))).unwrap();
    m.execute(
        r#"{"command": "automation.create", "automation_id": "news", "definition": {
        "name": "News", "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
        "steps": [{"id": "mail", "type": "send_email", "subject": "News", "body": "<p>Hi</p>",
                   "fallback": {"message": "News from us"}}]}}"#,
    )
    .unwrap();
    m.execute(r#"{"command": "automation.activate", "automation_id": "news"}"#)
        .unwrap();
    m
}

/// (status, attempts) of every message row, by contact.
fn email_rows(db: &std::path::Path) -> Vec<(String, i64)> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT status, attempts FROM outbox WHERE kind = 'message' ORDER BY contact_id")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// How many event-log rows of `kind` there are.
fn count_events(db: &std::path::Path, kind: &str) -> i64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row("SELECT COUNT(*) FROM events WHERE kind = ?1", [kind], |r| {
        r.get(0)
    })
    .unwrap()
}

/// Internationalized addresses through a relay without SMTPUTF8 (aiosmtpd's
/// default): a domain outside ASCII goes as punycode; a mailbox name
/// outside ASCII can never go through this relay, so it fails at once
/// (an error, no bounce), instead of waiting as if the settings were wrong.
#[test]
fn internationalized_addresses_through_a_relay_without_smtputf8() {
    let server = SmtpServer::start_with(&["--no-smtputf8"]);
    let dir = tempfile::tempdir().unwrap();
    let (m, _host) = news_practice(&dir, server.port, 10);
    m.push(&contact("p1", "pat@bücher.example")).unwrap();
    m.push(&contact("p2", "jürgen@beispiel.example")).unwrap();
    m.wait_idle(Duration::from_secs(30)).unwrap();
    let received = server.received();
    assert_eq!(received.len(), 1, "{received:?}\n{}", server.log());
    assert_eq!(
        received[0]["rcpt_tos"],
        json!(["pat@xn--bcher-kva.example"])
    );
    let db = dir.path().join("practice.db");
    assert_eq!(
        email_rows(&db),
        [("accepted".to_string(), 1), ("failed".to_string(), 1)]
    );
    assert_eq!(count_events(&db, "address_undeliverable"), 0);
}
