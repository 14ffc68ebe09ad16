//! Scenarios through the public [`crm_module::Module`] API: the worker thread,
//! group commit, the dispatcher and host callbacks, the manual clock.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crm_module::{Delivery, EffectKind, Host, HostAnswer, LogLevel, Module};
use serde_json::{Value, json};

#[derive(Default)]
struct Collect {
    got: Mutex<Vec<(String, EffectKind, Value)>>,
    retry_first: Mutex<std::collections::HashSet<String>>,
}

impl Host for Collect {
    fn deliver(&self, d: Delivery<'_>) -> (HostAnswer, Option<String>) {
        // The first attempt of every task is answered "retry later".
        if d.kind == EffectKind::Task && self.retry_first.lock().unwrap().insert(d.key.to_string())
        {
            return (HostAnswer::RetryLater, Some("queue busy".into()));
        }
        self.got.lock().unwrap().push((
            d.key.to_string(),
            d.kind,
            serde_json::from_str(d.payload).unwrap(),
        ));
        (HostAnswer::Accepted, None)
    }
}

fn open(dir: &tempfile::TempDir) -> Module {
    Module::open(
        &dir.path().join("practice.db"),
        r#"{"clock": {"mode": "manual", "start": "2026-01-05T14:00:00Z"},
            "initial_settings": {"practice_name": "Riverside Family Practice", "time_zone": "America/New_York", "email_footer": {"postal_address": "12 River Road, Boston, MA 02118", "text": "{{practice}}: unsubscribe at {{unsubscribe_link}}"}, "tracking": {"base_url": "https://t.riverside.example", "email_opens": true, "email_clicks": true, "sms_clicks": false}}}"#,
    )
    .unwrap()
}

const WELCOME: &str = r#"{"command": "automation.create", "automation_id": "welcome", "entered_by": "Dr. Lee", "definition": {
    "name": "New lead welcome series", "goal": "book_appointment",
    "trigger": {"type": "contact_created"},
    "steps": [
        {"id": "hello", "name": "Welcome email", "type": "send_email", "subject": "Welcome to {{practice}}", "body": "Hi {{firstname}}"},
        {"id": "wait", "type": "delay", "amount": 2, "unit": "days"},
        {"id": "sms", "name": "Follow-up SMS", "type": "send_sms", "message": "Hi {{firstname}}, book with {{practice}}"},
        {"id": "booked", "type": "branch", "condition": {"type": "property", "property": "status", "op": "equals", "value": "patient"},
         "yes": [],
         "no": [{"id": "call", "type": "create_task", "title": "Call this lead", "assignee": {"kind": "queue", "name": "front_desk"}, "due_in_minutes": 5}]}
    ]}}"#;

fn contact(i: usize) -> String {
    json!({"event_id": format!("c{i}"), "type": "contact.upserted", "occurred_at": "2026-01-05T14:00:00Z",
           "contact": {"id": format!("p{i}"), "first_name": format!("Pat{i}"), "email": format!("p{i}@example.com"),
                       "phone": format!("+1617555{:04}", i % 10_000), "email_subscription": "subscribed", "sms_subscription": "subscribed",
                       "lead_source": "website_form"}})
    .to_string()
}

/// A module with the welcome series active and a collecting host attached.
fn welcome_practice(dir: &tempfile::TempDir) -> (Module, Arc<Collect>) {
    let m = open(dir);
    let host = Arc::new(Collect::default());
    m.set_host(Some(host.clone())).unwrap();
    m.execute(WELCOME).unwrap();
    m.execute(r#"{"command": "automation.activate", "automation_id": "welcome"}"#)
        .unwrap();
    (m, host)
}

#[test]
fn welcome_series_end_to_end_through_the_worker() {
    let dir = tempfile::tempdir().unwrap();
    let (m, host) = welcome_practice(&dir);
    // Monday 09:00 New York: inside the default business-hours window.
    let batch: Vec<Value> = (0..20)
        .map(|i| serde_json::from_str(&contact(i)).unwrap())
        .collect();
    let out = m.push_batch(&Value::Array(batch).to_string()).unwrap();
    assert!(out.iter().all(|r| r.outcome == "applied"));
    assert_eq!(m.push(&contact(3)).unwrap().outcome, "duplicate");
    // Half of them book during the delay.
    for i in 0..10 {
        m.push(&json!({"event_id": format!("b{i}"), "type": "appointment.booked", "appointment": {"id": format!("ap{i}"), "contact_id": format!("p{i}")}}).to_string())
            .unwrap();
    }
    for _ in 0..4 {
        m.advance_clock(24 * 3600 * 1000).unwrap();
        m.wait_idle(Duration::from_secs(30)).unwrap();
    }
    // The first task attempt was answered "retry later": it comes back after the backoff.
    m.advance_clock(10 * 60 * 1000).unwrap();
    m.wait_idle(Duration::from_secs(30)).unwrap();

    let got = host.got.lock().unwrap();
    let count = |k: EffectKind| got.iter().filter(|(_, kind, _)| *kind == k).count();
    assert_eq!(count(EffectKind::Message), 40, "20 emails + 20 SMS");
    assert_eq!(
        count(EffectKind::Task),
        10,
        "only leads who did not book get a call task"
    );
    let email = got
        .iter()
        .find(|(_, k, p)| *k == EffectKind::Message && p["channel"] == "email")
        .unwrap();
    assert_eq!(
        email.2["placeholders"]["practice"],
        "Riverside Family Practice"
    );
    assert_eq!(email.2["content"]["subject"], "Welcome to {{practice}}");
    drop(got);

    let perf = m
        .view("automation_performance", r#"{"automation_id": "welcome"}"#)
        .unwrap();
    let text = perf.to_string();
    assert!(
        text.contains("New lead welcome series") || perf.get("automation").is_some(),
        "{text}"
    );
    let list = m.view("automation_list", "{}").unwrap();
    let row = &list["rows"][0];
    assert_eq!(row["name"], "New lead welcome series");
    assert_eq!(row["enrolled"], 20);
    assert_eq!(list["columns"].as_array().unwrap().len(), 7);
    assert_eq!(list["stat_cards"].as_array().unwrap().len(), 4);
}

#[test]
fn bad_input_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let m = open(&dir);
    m.execute(WELCOME).unwrap();
    m.execute(r#"{"command": "automation.activate", "automation_id": "welcome"}"#)
        .unwrap();
    // A batch with one bad event is refused whole: no row of it stays,
    // the event-log rows its good event wrote included.
    let rows = rows_in_database(&dir);
    let batch = format!(
        "[{}, {}]",
        contact(1),
        r#"{"event_id": "x", "type": "portal.activated", "contact_id": "nobody"}"#
    );
    let e = m.push_batch(&batch).unwrap_err();
    assert_eq!(e.code(), crm_module::ErrorCode::NotFound);
    assert!(e.to_string().contains("events[1]"), "{e}");
    assert_eq!(rows_in_database(&dir), rows);
    assert_eq!(
        m.push(&contact(1)).unwrap().outcome,
        "applied",
        "the good event of the refused batch was not kept"
    );
    let log = rusqlite::Connection::open(dir.path().join("practice.db")).unwrap();
    let created: i64 = log
        .query_row(
            "SELECT count(*) FROM events WHERE kind = 'contact_created' AND contact_id = 'p1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(created, 1, "the refused batch's log rows were rolled back");
    for bad in [
        "",
        "{",
        "[]",
        r#"{"event_id": "z", "type": "contact.upserted", "contact": {"id": "p9", "email": "not-an-address"}}"#,
    ] {
        assert!(m.push(bad).is_err(), "{bad}");
    }
    assert_eq!(
        m.execute(r#"{"command": "automation.pause", "automation_id": "ghost"}"#)
            .unwrap_err()
            .code(),
        crm_module::ErrorCode::NotFound
    );
    // A malformed id is refused as invalid and never quoted back.
    let e = m
        .execute(r#"{"command": "automation.pause", "automation_id": "Pat Lee\n"}"#)
        .unwrap_err();
    assert_eq!(e.code(), crm_module::ErrorCode::Invalid);
    assert!(!e.to_string().contains("Pat"), "{e}");
    // So is a malformed property name (a host's log line could be forged).
    let e = m
        .execute(r#"{"command": "automation.create", "definition": {"name": "P", "trigger": {"type": "property_changed", "property": "x\nFORGED LOG LINE"}, "steps": []}}"#)
        .unwrap_err();
    assert_eq!(e.code(), crm_module::ErrorCode::Invalid);
    assert!(!e.to_string().contains("FORGED"), "{e}");
    assert_eq!(
        m.execute(r#"{"command": "nope"}"#).unwrap_err().code(),
        crm_module::ErrorCode::Invalid
    );
    assert_eq!(
        m.view("no_such_screen", "{}").unwrap_err().code(),
        crm_module::ErrorCode::NotFound
    );
    let list = m.view("automation_list", "{}").unwrap();
    assert_eq!(list["rows"][0]["enrolled"], 1);
}

/// On the manual clock, contacts overdue when a paused automation is turned
/// back on run without waiting for the next advance: waiting for idle
/// returns (it timed out), and their step has run. While paused they are
/// out of the scheduler's wake-up index.
#[test]
fn turning_an_automation_back_on_runs_its_overdue_contacts_without_an_advance() {
    let dir = tempfile::tempdir().unwrap();
    let (m, host) = welcome_practice(&dir);
    for i in 0..5 {
        m.push(&contact(i)).unwrap();
    }
    m.wait_idle(Duration::from_secs(30)).unwrap();
    let held = || -> i64 {
        let conn = rusqlite::Connection::open(dir.path().join("practice.db")).unwrap();
        conn.query_row("SELECT COUNT(*) FROM enrollments WHERE held = 1", [], |r| {
            r.get(0)
        })
        .unwrap()
    };
    let texts = || {
        let got = host.got.lock().unwrap();
        got.iter().filter(|(_, _, p)| p["channel"] == "sms").count()
    };
    m.execute(r#"{"command": "automation.pause", "automation_id": "welcome"}"#)
        .unwrap();
    assert_eq!(held(), 5);
    // Thursday 09:00 in New York: the 2-day delay ended on Wednesday.
    m.advance_clock(3 * 24 * 3600 * 1000).unwrap();
    m.wait_idle(Duration::from_secs(30)).unwrap();
    assert_eq!(texts(), 0, "a paused automation ran a step");
    m.execute(r#"{"command": "automation.activate", "automation_id": "welcome"}"#)
        .unwrap();
    assert_eq!(held(), 0);
    m.wait_idle(Duration::from_secs(10)).unwrap();
    assert_eq!(texts(), 5);
}

/// A later event of a batch sees the log and outbox rows of the earlier
/// ones, as when pushed apart: of the same soft bounce pushed four times in
/// one batch (a webhook retried), the first counts and the others are seen
/// to repeat it; an SMS reply is matched to the text queued by the batch's
/// earlier event.
#[test]
fn a_batch_sees_the_log_and_outbox_rows_of_its_earlier_events() {
    let dir = tempfile::tempdir().unwrap();
    let (m, host) = welcome_practice(&dir);
    m.push(&contact(1)).unwrap();
    m.wait_idle(Duration::from_secs(30)).unwrap();
    let key = host.got.lock().unwrap()[0].0.clone();
    let bounces: Vec<Value> = (0..4)
        .map(|i| json!({"event_id": format!("sb{i}"), "type": "delivery.receipt", "message_key": key, "status": "bounced", "bounce": "soft"}))
        .collect();
    let out = m.push_batch(&Value::Array(bounces).to_string()).unwrap();
    assert!(out.iter().all(|r| r.outcome == "applied"), "{out:?}");
    let db = rusqlite::Connection::open(dir.path().join("practice.db")).unwrap();
    let logged = |kind: &str| -> i64 {
        db.query_row(
            "SELECT count(*) FROM events WHERE kind = ?2 AND message_key = ?1",
            [&key, kind],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(logged("message_bounced"), 1, "one hand-over, one bounce");
    assert_eq!(logged("receipt_repeated"), 3);
    let status: String = db
        .query_row(
            "SELECT status FROM outbox WHERE idempotency_key = ?1",
            [&key],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(status, "retry", "handed over again later");

    m.execute(
        r#"{"command": "automation.create", "automation_id": "text", "definition": {
        "name": "Text", "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
        "steps": [{"id": "hi", "type": "send_sms", "message": "Hi from {{practice}}"}]}}"#,
    )
    .unwrap();
    m.execute(r#"{"command": "automation.activate", "automation_id": "text"}"#)
        .unwrap();
    let batch = format!(
        "[{}, {}]",
        contact(2),
        json!({"event_id": "r2", "type": "sms.received", "contact_id": "p2", "body": "Thanks!"})
    );
    m.push_batch(&batch).unwrap();
    // The text the batch's first event queued is in the outbox as the
    // reply is read, but was not sent yet: the reply does not answer it.
    let replied_to = || -> Vec<Option<String>> {
        db.prepare(
            "SELECT message_key FROM events WHERE kind LIKE 'message_replied%' AND contact_id = 'p2' ORDER BY id",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
    };
    assert_eq!(replied_to(), [None]);
    m.wait_idle(Duration::from_secs(30)).unwrap();
    m.push(&json!({"event_id": "r3", "type": "sms.received", "contact_id": "p2", "body": "Thanks again!"}).to_string())
        .unwrap();
    let queued: String = db
        .query_row(
            "SELECT idempotency_key FROM outbox WHERE contact_id = 'p2' AND channel = 'sms'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(replied_to(), [None, Some(queued)]);
}

#[test]
fn concurrent_pushes_from_many_threads_all_land_once() {
    let dir = tempfile::tempdir().unwrap();
    let m = Arc::new(open(&dir));
    m.execute(WELCOME).unwrap();
    m.execute(r#"{"command": "automation.activate", "automation_id": "welcome"}"#)
        .unwrap();
    assert_eq!(m.push(&contact(0)).unwrap().outcome, "applied");
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let m = m.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    let n = 1 + t * 50 + i;
                    assert_eq!(m.push(&contact(n)).unwrap().outcome, "applied");
                    // Everyone pushes contact 0 again: never a second effect.
                    assert_eq!(m.push(&contact(0)).unwrap().outcome, "duplicate");
                    m.view("automation_list", "{}").unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let list = m.view("automation_list", "{}").unwrap();
    assert_eq!(list["rows"][0]["enrolled"], 401);
}

/// Every row of every table, counted from a separate connection.
fn rows_in_database(dir: &tempfile::TempDir) -> i64 {
    let conn = rusqlite::Connection::open(dir.path().join("practice.db")).unwrap();
    crm_integration_tests::table_names(&conn)
        .iter()
        .map(|t| {
            conn.query_row(&format!("SELECT count(*) FROM \"{t}\""), [], |r| {
                r.get::<_, i64>(0)
            })
            .unwrap()
        })
        .sum()
}

#[test]
fn rows_written_counts_new_rows_and_updates_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let m = open(&dir);
    assert_eq!(m.rows_written(), 0, "the open's own writes are not counted");

    // A new contact, no automation: only new rows.
    let (rows, written) = (rows_in_database(&dir), m.rows_written());
    m.push(&contact(1)).unwrap();
    let new_rows = rows_in_database(&dir) - rows;
    assert!(new_rows >= 3, "the contact, its event id and its log rows");
    assert_eq!(m.rows_written() - written, new_rows as u64);

    // A verification of that contact: its event id and a log row are new,
    // the contact row is updated in place, and the count includes it.
    let (rows, written) = (rows_in_database(&dir), m.rows_written());
    m.push(
        &json!({"event_id": "v1", "type": "insurance.verification", "contact_id": "p1", "status": "verified"})
            .to_string(),
    )
    .unwrap();
    let new_rows = rows_in_database(&dir) - rows;
    assert_eq!(new_rows, 2);
    assert_eq!(m.rows_written() - written, new_rows as u64 + 1);

    // A duplicate writes nothing; a refused event writes nothing that stays.
    let written = m.rows_written();
    assert_eq!(m.push(&contact(1)).unwrap().outcome, "duplicate");
    assert_eq!(m.rows_written(), written);
    let rows = rows_in_database(&dir);
    assert!(
        m.push(r#"{"event_id": "x1", "type": "form.submitted", "submission": {"id": "s1", "form_id": "f", "form_name": "F", "contact_id": "nobody", "answers": {}}}"#)
            .is_err()
    );
    assert_eq!(rows_in_database(&dir), rows);
}

#[test]
fn restart_keeps_state_and_pending_effects() {
    let dir = tempfile::tempdir().unwrap();
    {
        let m = open(&dir);
        m.execute(WELCOME).unwrap();
        m.execute(r#"{"command": "automation.activate", "automation_id": "welcome"}"#)
            .unwrap();
        m.push(&contact(1)).unwrap();
        // No host yet: the email waits in the outbox.
        m.close();
    }
    let m = open(&dir);
    let host = Arc::new(Collect::default());
    m.set_host(Some(host.clone())).unwrap();
    m.wait_idle(Duration::from_secs(30)).unwrap();
    assert_eq!(
        host.got.lock().unwrap().len(),
        1,
        "the pending email is delivered after reopening"
    );
    m.advance_clock(3 * 24 * 3600 * 1000).unwrap();
    m.wait_idle(Duration::from_secs(30)).unwrap();
    // The SMS after the delay, and the call task: the host's "retry later"
    // to its first attempt is asked again a minute later, inside the advance.
    let kinds: Vec<EffectKind> = host
        .got
        .lock()
        .unwrap()
        .iter()
        .map(|(_, k, _)| *k)
        .collect();
    assert_eq!(
        kinds,
        [EffectKind::Message, EffectKind::Message, EffectKind::Task],
        "the delay survived the restart"
    );
}

#[test]
fn tracking_hits_open_click_and_unsubscribe() {
    let dir = tempfile::tempdir().unwrap();
    let m = open(&dir);
    let host = Arc::new(Collect::default());
    m.set_host(Some(host.clone())).unwrap();
    m.execute(r#"{"command": "automation.create", "automation_id": "news", "definition": {
        "name": "News", "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
        "steps": [{"type": "send_email", "subject": "News", "body": "<p>See <a href=\"https://riverside.example/flu-shots\">flu shots</a></p>"}]}}"#)
        .unwrap();
    m.execute(r#"{"command": "automation.activate", "automation_id": "news"}"#)
        .unwrap();
    m.push(&contact(1)).unwrap();
    m.wait_idle(Duration::from_secs(30)).unwrap();
    let payload = host.got.lock().unwrap()[0].2.clone();
    let html = payload["rendered"]["html"].as_str().unwrap().to_string();
    let path_of = |prefix: &str| -> String {
        let start = html
            .find(&format!("https://t.riverside.example{prefix}"))
            .unwrap()
            + "https://t.riverside.example".len();
        html[start..].split('"').next().unwrap().to_string()
    };
    let hit = |method: &str, path: &str, ua: &str| -> Value {
        m.tracking_hit(&json!({"method": method, "path": path, "user_agent": ua}).to_string())
            .unwrap()
    };
    let browser =
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36";
    // A privacy proxy's open is recorded as such, and is not engagement.
    let r = hit("GET", &path_of("/o/"), "Mozilla/5.0");
    assert_eq!(r["status"], 200);
    // A person reads the email a minute after it arrived (a hit within 2
    // seconds of delivery is a scanner's).
    m.advance_clock(60_000).unwrap();
    // A person's click redirects to the link that was in the message.
    let r = hit("GET", &path_of("/c/"), browser);
    assert_eq!(
        (r["status"].as_u64(), r["location"].as_str()),
        (Some(302), Some("https://riverside.example/flu-shots"))
    );
    // A forged or unknown token gets a 404 answer, never a redirect.
    let forged = format!("{}x", &path_of("/c/")[..path_of("/c/").len() - 1]);
    assert_eq!(hit("GET", &forged, browser)["status"], 404);
    assert_eq!(hit("GET", "/c/not-a-token", browser)["status"], 404);
    // GET on the unsubscribe link asks; only POST unsubscribes.
    let unsub = payload["rendered"]["unsubscribe_url"]
        .as_str()
        .unwrap()
        .replace("https://t.riverside.example", "");
    let r = hit("GET", &unsub, browser);
    assert_eq!(r["content_type"], "text/html; charset=utf-8");
    assert!(
        r["body_text"]
            .as_str()
            .unwrap()
            .contains(r#"<form method="post">"#),
        "{r}"
    );
    let conn = crm_module::store::open(
        &dir.path().join("practice.db"),
        crm_module::store::Access::Read,
    )
    .unwrap();
    let sub = |conn: &crm_module::store::Connection| -> String {
        conn.query_row(
            "SELECT email_subscription FROM contacts WHERE id = 'p1'",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(sub(&conn), "subscribed");
    let r = hit("POST", &unsub, browser);
    assert!(r["body_text"].as_str().unwrap().contains("unsubscribed"));
    assert_eq!(sub(&conn), "unsubscribed");
    let opens: Vec<(String, Option<String>)> = conn
        .prepare("SELECT kind, json_extract(detail, '$.machine') FROM events WHERE kind LIKE 'message_opened%' OR kind LIKE 'message_clicked%' ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    // The person's click on an email their client never showed the pixel
    // of is its open too (the proxy's fetch was no person's).
    assert_eq!(
        opens,
        vec![
            ("message_opened_by_machine".into(), Some("proxy".into())),
            ("message_clicked".into(), None),
            ("message_opened".into(), None)
        ]
    );
    let reason: String = conn
        .query_row("SELECT reason FROM subscription_audit WHERE contact_id = 'p1' AND new_value = 'unsubscribed'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(reason, "unsubscribe_link");
    let perf = m
        .view("automation_performance", r#"{"automation_id": "news"}"#)
        .unwrap();
    let email = &perf["channel_breakdown"][0];
    assert_eq!(
        (email["channel"]["id"].as_str(), email["opt_outs"].as_u64()),
        (Some("email"), Some(1))
    );
    assert_eq!(email["send_attempts"], 1);
}

#[test]
fn sending_limits_hold_the_excess_in_order_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let keys_in_order = |host: &Collect| -> Vec<String> {
        host.got
            .lock()
            .unwrap()
            .iter()
            .map(|(k, _, _)| k.clone())
            .collect()
    };
    let limited = |dir: &tempfile::TempDir| -> Module {
        let m = open(dir);
        let mut settings = m.execute(r#"{"command": "settings.get"}"#).unwrap();
        settings["limits"] = json!({"email_per_hour": 2, "email_per_day": 5});
        m.execute(&json!({"command": "settings.update", "settings": settings}).to_string())
            .unwrap();
        m
    };
    let host = Arc::new(Collect::default());
    {
        let m = limited(&dir);
        m.set_host(Some(host.clone())).unwrap();
        m.execute(r#"{"command": "automation.create", "automation_id": "a", "definition": {
            "name": "Hello", "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
            "steps": [{"type": "send_email", "subject": "Hi", "body": "Hello"}]}}"#)
            .unwrap();
        m.execute(r#"{"command": "automation.activate", "automation_id": "a"}"#)
            .unwrap();
        for i in 0..7 {
            m.push(&contact(i)).unwrap();
        }
        m.wait_idle(Duration::from_secs(30)).unwrap();
        assert_eq!(keys_in_order(&host).len(), 2, "2 per hour");
        m.close();
    }
    // After a restart the count still holds: nothing more in this hour.
    let m = limited(&dir);
    m.set_host(Some(host.clone())).unwrap();
    m.wait_idle(Duration::from_secs(30)).unwrap();
    assert_eq!(keys_in_order(&host).len(), 2);
    m.advance_clock(3_600_001).unwrap();
    m.wait_idle(Duration::from_secs(30)).unwrap();
    assert_eq!(keys_in_order(&host).len(), 4);
    m.advance_clock(3_600_001).unwrap();
    m.wait_idle(Duration::from_secs(30)).unwrap();
    assert_eq!(keys_in_order(&host).len(), 5, "5 per day");
    m.advance_clock(24 * 3_600_000).unwrap();
    m.wait_idle(Duration::from_secs(30)).unwrap();
    let keys = keys_in_order(&host);
    assert_eq!(keys.len(), 7, "nothing dropped");
    let mut sorted = keys.clone();
    sorted.sort_by_key(|k| {
        k.split("-e")
            .nth(1)
            .and_then(|r| r.split('-').next())
            .and_then(|n| n.parse::<u32>().ok())
    });
    assert_eq!(keys, sorted, "in order");
}

/// The answer to a STOP goes at once even when the channel is over its
/// sending limit, and does not count towards it.
#[test]
fn a_stop_is_confirmed_whatever_the_sending_limits() {
    let dir = tempfile::tempdir().unwrap();
    let m = open(&dir);
    let mut settings = m.execute(r#"{"command": "settings.get"}"#).unwrap();
    settings["limits"] = json!({"sms_per_day": 2});
    m.execute(&json!({"command": "settings.update", "settings": settings}).to_string())
        .unwrap();
    let host = Arc::new(RetriesConfirmations::default());
    m.set_host(Some(host.clone())).unwrap();
    m.execute(
        r#"{"command": "automation.create", "automation_id": "a", "definition": {
        "name": "Hello", "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
        "steps": [{"type": "send_sms", "message": "Hello from {{practice}}"}]}}"#,
    )
    .unwrap();
    m.execute(r#"{"command": "automation.activate", "automation_id": "a"}"#)
        .unwrap();
    let sent = |purpose: Option<&str>| -> Vec<String> {
        let got = host.inner.got.lock().unwrap();
        got.iter()
            .filter(|(_, _, p)| p["channel"] == "sms" && p["purpose"].as_str() == purpose)
            .map(|(_, _, p)| p["contact_id"].as_str().unwrap().to_string())
            .collect()
    };
    let stop = |i: usize| {
        json!({"event_id": format!("stop-{i}"), "type": "sms.received", "contact_id": format!("p{i}"), "body": "STOP"})
            .to_string()
    };
    m.push(&contact(0)).unwrap();
    m.wait_idle(Duration::from_secs(30)).unwrap();
    m.push(&stop(0)).unwrap();
    m.wait_idle(Duration::from_secs(30)).unwrap();
    // The confirmation did not take the second text of the day.
    m.push(&contact(1)).unwrap();
    m.push(&contact(2)).unwrap();
    m.wait_idle(Duration::from_secs(30)).unwrap();
    assert_eq!(sent(None), ["p0", "p1"], "2 a day");
    // Over the limit now, a STOP is still confirmed at once.
    m.push(&stop(1)).unwrap();
    m.wait_idle(Duration::from_secs(30)).unwrap();
    assert_eq!(sent(Some("stop_confirmation")), ["p0", "p1"]);
    assert_eq!(sent(None), ["p0", "p1"], "p2 waits for the next day");
    // The host asks for p2's confirmation again later: the retry goes a
    // minute on, not when the day's limit frees a slot.
    let stopped_at = m.now();
    m.push(&stop(2)).unwrap();
    m.advance_clock(24 * 3_600_000).unwrap();
    m.wait_idle(Duration::from_secs(30)).unwrap();
    let log = rusqlite::Connection::open(dir.path().join("practice.db")).unwrap();
    let accepted: i64 = log
        .query_row(
            "SELECT MAX(at) FROM events WHERE kind = 'message_sent' AND message_key LIKE '%-kw-stop-2'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(accepted - stopped_at, 60_000, "one minute's backoff");
}

/// Answers "retry later" to the first attempt of the confirmation of the
/// STOP pushed as `stop-2`; takes the rest as [`Collect`] does.
#[derive(Default)]
struct RetriesConfirmations {
    inner: Collect,
    asked: Mutex<std::collections::HashSet<String>>,
}

impl Host for RetriesConfirmations {
    fn deliver(&self, d: Delivery<'_>) -> (HostAnswer, Option<String>) {
        if d.key.ends_with("-kw-stop-2") && self.asked.lock().unwrap().insert(d.key.to_string()) {
            return (HostAnswer::RetryLater, Some("queue busy".into()));
        }
        self.inner.deliver(d)
    }
}

#[test]
fn one_long_advance_hands_each_effect_over_at_its_own_instant() {
    let dir = tempfile::tempdir().unwrap();
    let (m, _host) = welcome_practice(&dir);
    let mut settings = m.execute(r#"{"command": "settings.get"}"#).unwrap();
    settings["limits"] = json!({"email_per_hour": 1});
    m.execute(&json!({"command": "settings.update", "settings": settings}).to_string())
        .unwrap();
    let start = m.now();
    for i in 0..3 {
        m.push(&contact(i)).unwrap();
    }
    m.wait_idle(Duration::from_secs(30)).unwrap();
    // Five days in one call: the limit frees a slot an hour after each
    // email, the SMS and the call task are due two days in, and the host
    // answers the task's first attempt "retry later".
    m.advance_clock(5 * 24 * 3_600_000).unwrap();
    m.wait_idle(Duration::from_secs(30)).unwrap();
    let log = rusqlite::Connection::open(dir.path().join("practice.db")).unwrap();
    let at = |kind: &str, channel: Option<&str>| -> Vec<(String, i64)> {
        log.prepare(
            "SELECT contact_id, at FROM events WHERE kind = ?1 AND channel IS ?2 ORDER BY contact_id, id",
        )
        .unwrap()
        .query_map(rusqlite::params![kind, channel], |r| {
            Ok((r.get(0)?, (r.get::<_, i64>(1)? - start) / 60_000))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    };
    let day = 24 * 60;
    let at_minutes = |rows: &[(&str, i64)]| -> Vec<(String, i64)> {
        rows.iter().map(|(c, t)| (c.to_string(), *t)).collect()
    };
    // Minutes after the start: one email an hour, as the limit says.
    assert_eq!(
        at("message_sent", Some("email")),
        at_minutes(&[("p0", 0), ("p1", 60), ("p2", 120)])
    );
    // The delay ended two days in (09:00 in New York, inside the window).
    assert_eq!(
        at("message_sent", Some("sms")),
        at_minutes(&[("p0", 2 * day), ("p1", 2 * day), ("p2", 2 * day)])
    );
    assert_eq!(
        at("effect_retry", None),
        at_minutes(&[("p0", 2 * day), ("p1", 2 * day), ("p2", 2 * day)])
    );
    // Taken at the retry, a minute of backoff later.
    assert_eq!(
        at("effect_accepted", None),
        at_minutes(&[
            ("p0", 2 * day + 1),
            ("p1", 2 * day + 1),
            ("p2", 2 * day + 1)
        ])
    );
    assert_eq!(m.now() - start, 5 * 24 * 3_600_000);
}

/// An effect already waiting in the outbox is handed over at its instant
/// even when the advance runs scheduled items that queue nothing around it:
/// a text held for the recipient's sending hours (08:00 in Los Angeles,
/// 16:00Z) went out at 17:00Z, with the next item that queued something,
/// because the items of another automation's delays (15:00Z, 17:00Z) ran in
/// one transaction past it.
#[test]
fn one_long_advance_hands_a_waiting_effect_over_between_items_that_queue_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let m = open(&dir);
    let _host = {
        let host = Arc::new(Collect::default());
        m.set_host(Some(host.clone())).unwrap();
        host
    };
    // The text's run window (07:30-10:15 in New York) never meets the
    // recipient's sending hours (from 08:00 in Los Angeles, 11:00 in New
    // York): the step runs in its window, and the hand-over holds the text.
    let days: Vec<Value> = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
        .iter()
        .map(|d| json!({"day": d, "enabled": true, "start": "07:30", "end": "10:15"}))
        .collect();
    for (id, window, steps) in [
        (
            "text",
            json!({"mode": "specific_hours", "days": days}),
            json!([{"id": "t", "type": "send_sms", "message": "Hi {{firstname}}"}]),
        ),
        (
            "wait",
            json!({"mode": "any_time"}),
            json!([{"id": "w1", "type": "delay", "amount": 1, "unit": "hours"},
                   {"id": "w2", "type": "delay", "amount": 2, "unit": "hours"}]),
        ),
    ] {
        m.execute(&json!({"command": "automation.create", "automation_id": id, "definition": {
            "name": id, "run_window": window, "trigger": {"type": "contact_created"}, "steps": steps}})
            .to_string())
            .unwrap();
        m.execute(&json!({"command": "automation.activate", "automation_id": id}).to_string())
            .unwrap();
    }
    // 14:00Z: 06:00 in Los Angeles.
    let start = m.now();
    m.push(&json!({"event_id": "c1", "type": "contact.upserted", "contact": {"id": "p1", "first_name": "Pat",
        "phone": "+16175550100", "sms_subscription": "subscribed", "time_zone": "America/Los_Angeles"}})
        .to_string())
        .unwrap();
    m.wait_idle(Duration::from_secs(30)).unwrap();
    m.advance_clock(24 * 3_600_000).unwrap();
    m.wait_idle(Duration::from_secs(30)).unwrap();
    let log = rusqlite::Connection::open(dir.path().join("practice.db")).unwrap();
    let sent: Vec<i64> = log
        .prepare("SELECT at FROM events WHERE kind = 'message_sent'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(sent, [start + 2 * 3_600_000], "sent at 16:00Z");
}

/// Blocks in its first delivery until the test releases it; takes everything.
struct BlocksFirst {
    release: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    got: Mutex<Vec<String>>,
    warnings: Mutex<Vec<String>>,
}

impl Host for BlocksFirst {
    fn deliver(&self, d: Delivery<'_>) -> (HostAnswer, Option<String>) {
        let wait = self.release.lock().unwrap().take();
        if let Some(wait) = wait {
            let _ = wait.recv();
        }
        self.got.lock().unwrap().push(d.key.to_string());
        (HostAnswer::Accepted, None)
    }

    fn log(&self, level: LogLevel, message: &str) {
        if level == LogLevel::Warn {
            self.warnings.lock().unwrap().push(message.to_string());
        }
    }
}

impl BlocksFirst {
    /// A host attached to `m` whose first delivery blocks until the sender
    /// returned is used.
    fn attach(m: &Module) -> (Arc<BlocksFirst>, std::sync::mpsc::Sender<()>) {
        let (release, wait) = std::sync::mpsc::channel();
        let host = Arc::new(BlocksFirst {
            release: Mutex::new(Some(wait)),
            got: Mutex::default(),
            warnings: Mutex::default(),
        });
        m.set_host(Some(host.clone())).unwrap();
        (host, release)
    }
}

#[test]
fn a_callback_that_blocks_holds_clock_advances_once() {
    let dir = tempfile::tempdir().unwrap();
    let m = open(&dir);
    let (host, release) = BlocksFirst::attach(&m);
    m.execute(r#"{"command": "automation.create", "automation_id": "a", "definition": {
        "name": "Two emails", "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
        "steps": [{"id": "one", "type": "send_email", "subject": "One", "body": "Hello"},
                  {"type": "delay", "amount": 1, "unit": "days"},
                  {"id": "two", "type": "send_email", "subject": "Two", "body": "Hello again"}]}}"#)
        .unwrap();
    m.execute(r#"{"command": "automation.activate", "automation_id": "a"}"#)
        .unwrap();
    // The first email's callback blocks. The advance waits for its answer
    // (10 s), then goes on without waiting: the second email is handed over
    // when its delay ends, behind the blocked one.
    m.push(&contact(1)).unwrap();
    m.advance_clock(2 * 24 * 3_600_000).unwrap();
    // While that answer is missing, advances do not wait again: a second
    // wait would end in a second warning.
    m.advance_clock(24 * 3_600_000).unwrap();
    m.advance_clock(24 * 3_600_000).unwrap();
    let unanswered = |w: &Vec<String>| w.iter().filter(|m| m.contains("unanswered")).count();
    let warnings = host.warnings.lock().unwrap().clone();
    assert_eq!(unanswered(&warnings), 1, "{warnings:?}");
    release.send(()).unwrap();
    m.wait_idle(Duration::from_secs(30)).unwrap();
    let got = host.got.lock().unwrap().clone();
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(
        got[0].ends_with("-one") && got[1].ends_with("-two"),
        "{got:?}"
    );
}

/// A message already screened and waiting in the dispatcher's queue,
/// behind a delivery the host is slow to answer, does not leave after its
/// contact unsubscribes: it is screened again, and suppressed.
#[test]
fn an_unsubscribe_holds_back_a_message_already_queued_for_hand_over() {
    let dir = tempfile::tempdir().unwrap();
    let m = open(&dir);
    let (host, release) = BlocksFirst::attach(&m);
    m.execute(
        r#"{"command": "automation.create", "automation_id": "a", "definition": {
        "name": "Hello", "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
        "steps": [{"id": "one", "type": "send_email", "subject": "One", "body": "Hello"}]}}"#,
    )
    .unwrap();
    m.execute(r#"{"command": "automation.activate", "automation_id": "a"}"#)
        .unwrap();
    // p1's email blocks the dispatcher; p2's is screened and queued behind
    // it. The worker hands a round's effects over before it takes the
    // next request, so once p3's push is answered, p2's email is queued.
    m.push(&contact(1)).unwrap();
    m.push(&contact(2)).unwrap();
    m.push(r#"{"event_id": "p3", "type": "contact.upserted", "contact": {"id": "p3"}}"#)
        .unwrap();
    m.push(r#"{"event_id": "unsub", "type": "contact.upserted", "contact": {"id": "p2", "email_subscription": "unsubscribed"}}"#)
        .unwrap();
    release.send(()).unwrap();
    m.wait_idle(Duration::from_secs(30)).unwrap();
    let got = host.got.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].contains("-one"), "{got:?}");
    drop(m);
    let conn = rusqlite::Connection::open(dir.path().join("practice.db")).unwrap();
    let (kind, reason): (String, String) = conn
        .query_row(
            "SELECT kind, json_extract(detail, '$.reason') FROM events
              WHERE contact_id = 'p2' AND kind LIKE 'message_%' ORDER BY id DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        (kind.as_str(), reason.as_str()),
        ("message_suppressed", "unsubscribed")
    );
}

/// Answers "retry later" to the first attempt of every email, and "failed"
/// to the second for p3's (the mailbox provider refused it for good); takes
/// the rest.
#[derive(Default)]
struct EmailBusyOnce {
    tried: Mutex<std::collections::HashSet<String>>,
    got: Mutex<Vec<(String, Value)>>,
}

impl Host for EmailBusyOnce {
    fn deliver(&self, d: Delivery<'_>) -> (HostAnswer, Option<String>) {
        let payload: Value = serde_json::from_str(d.payload).unwrap();
        if payload["channel"] == "email" {
            if self.tried.lock().unwrap().insert(d.key.to_string()) {
                return (HostAnswer::RetryLater, Some("mail server busy".into()));
            }
            if payload["contact_id"] == "p3" {
                return (HostAnswer::Failed, Some("mailbox disabled".into()));
            }
        }
        self.got.lock().unwrap().push((d.key.to_string(), payload));
        (HostAnswer::Accepted, None)
    }
}

#[test]
fn an_email_that_cannot_leave_sends_its_sms_fallback_once() {
    let dir = tempfile::tempdir().unwrap();
    let m = open(&dir);
    let host = Arc::new(EmailBusyOnce::default());
    m.set_host(Some(host.clone())).unwrap();
    m.execute(r#"{"command": "automation.create", "automation_id": "recall", "definition": {
        "name": "Recall", "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
        "steps": [{"id": "mail", "type": "send_email", "subject": "Time for a check-up", "body": "<p>Book now</p>",
                   "fallback": {"message": "Hi {{firstname}}, time for a check-up"}}]}}"#)
        .unwrap();
    m.execute(r#"{"command": "automation.activate", "automation_id": "recall"}"#)
        .unwrap();
    for i in 1..=3 {
        m.push(&contact(i)).unwrap();
    }
    m.wait_idle(Duration::from_secs(30)).unwrap();
    assert!(
        host.got.lock().unwrap().is_empty(),
        "the emails wait for a retry"
    );

    // p1 unsubscribes from email while their email waits; p2 and p3 do not,
    // and p3's fails for good at its second attempt.
    m.push(r#"{"event_id": "out1", "type": "contact.opted_out", "contact_id": "p1", "channel": "email"}"#)
        .unwrap();
    m.advance_clock(2 * 60 * 1000).unwrap();
    m.wait_idle(Duration::from_secs(30)).unwrap();
    let got: Vec<(String, Value)> = host.got.lock().unwrap().clone();
    let to = |c: &str| -> Vec<(&str, &Value)> {
        got.iter()
            .filter(|(_, p)| p["contact_id"] == c)
            .map(|(k, p)| (k.as_str(), p))
            .collect()
    };
    let p1 = to("p1");
    assert_eq!(p1.len(), 1, "{got:?}");
    let (key, sms) = p1[0];
    assert_eq!(sms["channel"], "sms");
    assert_eq!(sms["fallback_for"], "email");
    assert!(key.ends_with("-mail-fallback"), "{key}");
    let p2 = to("p2");
    assert_eq!(p2.len(), 1);
    assert_eq!(p2[0].1["channel"], "email");
    let p3 = to("p3");
    assert_eq!(p3.len(), 1, "{got:?}");
    assert_eq!(p3[0].1["channel"], "sms");
    assert_eq!(p3[0].1["fallback_for"], "email");

    // Once: nothing more goes, however long the clock runs.
    m.advance_clock(24 * 3_600_000).unwrap();
    m.wait_idle(Duration::from_secs(30)).unwrap();
    assert_eq!(host.got.lock().unwrap().len(), 3);
    let perf = m
        .view("automation_performance", r#"{"automation_id": "recall"}"#)
        .unwrap();
    let sms = crm_integration_tests::channel_row(&perf, "sms");
    assert_eq!(sms["sent"], 2, "{perf}");
}
