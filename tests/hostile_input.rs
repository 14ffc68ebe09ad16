//! Hostile input: thousands of valid events, commands, view requests and
//! tracking hits (the web tier's, with their signed tokens mangled),
//! each mutated at random (a seeded generator: the same inputs every run),
//! go through the module's public API. Whatever comes in:
//! - every call answers, with a result or a clean error of an input kind
//!   (invalid, not found, conflict, too large), never an internal, storage
//!   or closed error, and the module keeps answering valid pushes;
//! - a refused input, and a hit whose token was tampered with, commit
//!   nothing (the database's `data_version`, read from a separate
//!   connection, does not move);
//! - an error message quotes no contact data, no control characters and
//!   no malformed id, and stays short.
//!
//! `CRM_HOSTILE_INPUTS=N` runs N inputs instead of the default, and
//! `CRM_HOSTILE_SEED=S` (non-zero) another sequence; a failure prints the
//! input that caused it.

use std::time::Duration;

use crm_module::{ErrorCode, Module};
use serde_json::{Value, json};

/// Inputs per run (debug build: about 10 s).
const DEFAULT_INPUTS: usize = 3_000;
/// The generator's seed.
const SEED: u64 = 0x9E37_79B9_7F4A_7C15;

/// xorshift64: small, seeded, the same sequence on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Contact data the seeds carry: none of it may appear in an error message.
const PERSONAL: [&str; 6] = [
    "Zephyrine",
    "Quackenbush",
    "@example.com",
    "+16175550100",
    "Marchetti",
    "1990-03-14",
];

/// Values that break assumptions: wrong types, extremes, odd dates and times,
/// template syntax, control characters, long and non-ASCII text.
fn nasty(r: &mut Rng) -> Value {
    let long = "x".repeat(5_000);
    let all = [
        json!(null),
        json!(-1),
        json!(0),
        json!(i64::MAX),
        json!(i64::MIN),
        json!(u64::MAX),
        json!(1e308),
        json!(0.5),
        json!(""),
        json!(" "),
        json!(long),
        json!("ünïcødé 🎉"),
        json!("a\u{0000}b"),
        json!("line\nbreak"),
        json!({}),
        json!([]),
        json!([1, "a", null]),
        json!({"a": {"b": {"c": [1]}}}),
        json!(true),
        json!("2036-13-45T99:99:99Z"),
        json!("9999-12-31T23:59:59Z"),
        json!("+262143-01-01T00:00:00Z"),
        json!("0000-01-01T00:00:00Z"),
        json!("1969-12-31T23:59:59.999Z"),
        json!("2026-03-08T02:30:00-05:00"),
        json!("00:00"),
        json!("24:00"),
        json!("25:61"),
        json!("+99999999999999999999"),
        json!("p1"),
        json!("a1"),
        json!("{{firstname}}"),
        json!("{% for x in y %}"),
        json!("{{ 1/0 }}"),
        json!("{{ firstname * 1000000000 }}"),
        json!("STOP"),
        json!("patient"),
        json!("unsubscribed"),
        json!(4_294_967_295u64),
        json!(4_294_967_296u64),
        json!(256),
        json!("2000-02-29"),
        json!("2001-02-29"),
        json!("-0001-01-01"),
    ];
    all[r.below(all.len())].clone()
}

/// Every path (object keys and array indexes) inside `v`.
fn paths(v: &Value, prefix: &[Value], out: &mut Vec<Vec<Value>>) {
    let children: Vec<(Value, &Value)> = match v {
        Value::Object(m) => m.iter().map(|(k, c)| (json!(k), c)).collect(),
        Value::Array(a) => a.iter().enumerate().map(|(i, c)| (json!(i), c)).collect(),
        _ => return,
    };
    for (key, child) in children {
        let mut p = prefix.to_vec();
        p.push(key);
        out.push(p.clone());
        paths(child, &p, out);
    }
}

fn get_mut<'a>(v: &'a mut Value, path: &[Value]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |cur, k| match k {
        Value::String(s) => cur.get_mut(s.as_str()),
        Value::Number(n) => cur.get_mut(usize::try_from(n.as_u64()?).ok()?),
        _ => None,
    })
}

/// One to three edits: delete a key or element, add an unknown key, or
/// replace a value with a nasty one. The `type`/`command` tags are mostly
/// kept, so that most inputs get past the first parse.
fn mutate(r: &mut Rng, seed: &Value) -> Value {
    let mut v = seed.clone();
    for _ in 0..1 + r.below(3) {
        let mut all = Vec::new();
        paths(&v, &[], &mut all);
        if all.is_empty() {
            break;
        }
        let path = all[r.below(all.len())].clone();
        if matches!(path.last(), Some(Value::String(k)) if k == "type" || k == "command" || k == "mode")
            && r.below(4) != 0
        {
            continue;
        }
        match r.below(4) {
            0 => {
                let (parent, last) = path.split_at(path.len() - 1);
                match (get_mut(&mut v, parent), &last[0]) {
                    (Some(Value::Object(m)), Value::String(k)) => {
                        m.remove(k);
                    }
                    (Some(Value::Array(a)), Value::Number(i)) => {
                        let i = i.as_u64().unwrap_or(0) as usize;
                        if i < a.len() {
                            a.remove(i);
                        }
                    }
                    _ => {}
                }
            }
            1 => match get_mut(&mut v, &path) {
                Some(Value::Object(m)) => {
                    m.insert("zz_unknown".into(), nasty(r));
                }
                Some(t) => *t = nasty(r),
                None => {}
            },
            _ => {
                if let Some(t) = get_mut(&mut v, &path) {
                    *t = nasty(r);
                }
            }
        }
    }
    v
}

/// One edit to a tracking path: a character replaced, dropped or doubled,
/// the token cut short or repeated, the kind letter changed.
fn mutate_path(r: &mut Rng, path: &str) -> String {
    let mut chars: Vec<char> = path.chars().collect();
    let at = r.below(chars.len().max(1));
    let odd = ['A', 'z', '0', '-', '_', '.', '/', '%', '\u{0}', 'é', '='];
    match r.below(6) {
        0 if !chars.is_empty() => chars[at] = odd[r.below(odd.len())],
        1 if !chars.is_empty() => {
            chars.remove(at);
        }
        2 => chars.insert(at, odd[r.below(odd.len())]),
        3 => chars.truncate(at),
        4 => return format!("{path}{path}"),
        _ => {
            let kinds = ["/o/", "/c/", "/u/", "/x/", "//", "/"];
            let rest = path.get(3..).unwrap_or("");
            return format!("{}{rest}", kinds[r.below(kinds.len())]);
        }
    }
    chars.into_iter().collect()
}

fn contact(n: usize) -> Value {
    json!({"event_id": format!("c{n}"), "type": "contact.upserted", "occurred_at": "2026-03-07T14:00:00Z",
        "contact": {"id": format!("p{n}"), "first_name": "Zephyrine", "last_name": "Quackenbush", "email": format!("p{n}@example.com"),
        "phone": "+16175550100", "email_subscription": "subscribed", "sms_subscription": "subscribed",
        "lead_source": "website_form", "dob": "1990-03-14", "tags": ["a"], "owner": {"id": "o1", "name": "Olwen Marchetti"}}})
}

/// Ten automations (one per trigger) over every step type, in a run window
/// with a DST night, and a list.
fn setup_commands() -> Vec<Value> {
    let window = json!({"mode": "specific_hours", "days": [
        {"day": "mon", "enabled": true, "start": "09:00", "end": "17:00"},
        {"day": "tue", "enabled": true, "start": "09:00", "end": "17:00"},
        {"day": "wed", "enabled": false, "start": "09:00", "end": "17:00"},
        {"day": "thu", "enabled": true, "start": "00:00", "end": "24:00"},
        {"day": "fri", "enabled": true, "start": "09:00", "end": "17:00"},
        {"day": "sat", "enabled": false, "start": "09:00", "end": "17:00"},
        {"day": "sun", "enabled": true, "start": "01:30", "end": "03:30"}]});
    let steps = json!([
        {"id": "e1", "type": "send_email", "subject": "Hi {{firstname}}", "preheader": "p",
         "body": "<a href=\"https://x.example/a\">a</a> {{owner}} {{lastname}}"},
        {"id": "d1", "type": "delay", "amount": 2, "unit": "days"},
        {"id": "s1", "type": "send_sms", "message": "Hi {{firstname}} from {{practice}}"},
        {"id": "b1", "type": "branch", "condition": {"type": "any", "conditions": [
            {"type": "property", "property": "status", "op": "equals", "value": "patient"},
            {"type": "step_engagement", "step_id": "e1", "engagement": "opened"},
            {"type": "list_membership", "list_id": "l1", "member": true},
            {"type": "goal_reached"}]},
         "yes": [{"id": "t1", "type": "create_task", "title": "Call", "assignee": {"kind": "contact_owner"}, "due_in_minutes": 5}],
         "no": [{"id": "p1", "type": "set_property", "property": "tags", "value": {"add": ["x"]}},
                {"id": "a1", "type": "add_to_list", "list_id": "l1"},
                {"id": "p2", "type": "set_property", "property": "sms_subscription", "value": "unsubscribed"}]}
    ]);
    let triggers = [
        json!({"type": "contact_created", "source": "website_form"}),
        json!({"type": "status_changed_to_patient"}),
        json!({"type": "form_submitted", "form_id": "f1"}),
        json!({"type": "added_to_list", "list_id": "l1"}),
        json!({"type": "removed_from_list", "list_id": "l1"}),
        json!({"type": "property_changed", "property": "tags", "new_value": "vip"}),
        json!({"type": "email_engagement", "engagement": "either"}),
        json!({"type": "sms_reply"}),
        json!({"type": "birthday", "offset": "seven_days_before"}),
        json!({"type": "inactive_for_days", "days": 30}),
    ];
    let mut commands = vec![json!({"command": "list.create", "list_id": "l1", "name": "L1"})];
    for (i, trigger) in triggers.iter().enumerate() {
        commands.push(json!({"command": "automation.create", "automation_id": format!("a{i}"), "entered_by": "x",
            "definition": {"name": format!("A{i}"), "goal": "engagement", "run_window": window, "trigger": trigger,
                           "steps": steps, "unenrollment": {"goal_met": i % 2 == 0, "email_reply": true, "sms_opt_out": true}}}));
        commands.push(json!({"command": "automation.activate", "automation_id": format!("a{i}")}));
    }
    commands
}

/// Valid events of every type, and commands, for the mutations to start from.
fn seeds(message_key: &str, commands: &[Value]) -> Vec<Value> {
    let appt = json!({"id": "ap1", "contact_id": "p1", "starts_at": "2026-03-10T15:00:00Z", "provider_id": "dr", "clinic_id": "c"});
    let mut seeds = vec![contact(1)];
    for kind in ["booked", "rescheduled", "cancelled", "completed", "no_show"] {
        seeds.push(
            json!({"event_id": "x", "type": format!("appointment.{kind}"), "appointment": appt}),
        );
    }
    seeds.extend([
        json!({"event_id": "x", "type": "form.submitted", "submission": {"id": "s", "form_id": "f1", "form_name": "F", "contact_id": "p2", "answers": {"q": "a"}}}),
        json!({"event_id": "x", "type": "review.submitted", "review": {"id": "r", "contact_id": "p3", "source": "google", "rating": 5}}),
        json!({"event_id": "x", "type": "insurance.verification", "contact_id": "p4", "status": "verified"}),
        json!({"event_id": "x", "type": "portal.activated", "contact_id": "p5"}),
        json!({"event_id": "x", "type": "page.visited", "contact_id": "p6", "page": "/x"}),
        json!({"event_id": "x", "type": "email.opened", "message_key": message_key}),
        json!({"event_id": "x", "type": "email.clicked", "message_key": message_key}),
        json!({"event_id": "x", "type": "email.replied", "message_key": message_key}),
        json!({"event_id": "x", "type": "sms.received", "from": "+16175550100", "body": "STOP"}),
        json!({"event_id": "x", "type": "sms.received", "contact_id": "p7", "body": "hello", "in_reply_to": message_key}),
        json!({"event_id": "x", "type": "delivery.receipt", "message_key": message_key, "status": "bounced", "bounce": "hard"}),
        json!({"event_id": "x", "type": "contact.opted_out", "contact_id": "p8", "channel": "all", "reason": "r"}),
        json!({"command": "list.add_contacts", "list_id": "l1", "contact_ids": ["p1", "p2"]}),
        json!({"command": "list.remove_contacts", "list_id": "l1", "contact_ids": ["p1"]}),
        json!({"command": "list.rename", "list_id": "l1", "name": "Renamed"}),
        json!({"command": "template.create", "template_id": "t1", "template": {"channel": "email", "name": "T", "subject": "S {{firstname}}", "html_body": "<p>b</p>"}}),
        json!({"command": "template.test_send", "template_id": "t1", "to": "qa@example.org", "contact_id": "p1"}),
        json!({"command": "automation.pause", "automation_id": "a2"}),
        json!({"command": "settings.update", "settings": {"practice_name": "P", "time_zone": "Europe/London"}}),
    ]);
    seeds.extend(commands.iter().cloned());
    seeds
}

/// Checks one refusal: an input kind of error, a message fit for a log.
fn check_refusal(e: &crm_module::Error, input: &str) {
    let code = e.code();
    let message = e.to_string();
    assert!(
        matches!(
            code,
            ErrorCode::Invalid | ErrorCode::NotFound | ErrorCode::Conflict | ErrorCode::TooLarge
        ),
        "{code:?} {message}\n  input: {input}"
    );
    assert!(
        !message.chars().any(char::is_control),
        "control characters in the message: {message:?}\n  input: {input}"
    );
    assert!(
        message.len() < 1_024,
        "{} bytes of message\n  input: {input}",
        message.len()
    );
    for p in PERSONAL {
        assert!(
            !message.contains(p),
            "the message quotes contact data ({p}): {message}\n  input: {input}"
        );
    }
    assert!(
        !message.contains("xxxxxxxx") && !message.contains("ünïcødé") && !message.contains("{{ "),
        "the message quotes a malformed value: {message}\n  input: {input}"
    );
}

/// A number from the environment, or `default` when unset or unreadable.
fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

#[test]
fn mutated_events_commands_and_view_requests_are_answered_cleanly_and_refusals_change_nothing() {
    let inputs: usize = env_number("CRM_HOSTILE_INPUTS", DEFAULT_INPUTS);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("hostile.db");
    let m = Module::open(
        &db,
        r#"{"clock": {"mode": "manual", "start": "2026-03-07T14:00:00Z"},
            "initial_settings": {"practice_name": "Riverside", "time_zone": "America/New_York",
              "email_footer": {"postal_address": "12 River Road", "text": "{{practice}}: {{unsubscribe_link}}"},
              "tracking": {"base_url": "https://t.example", "email_opens": true, "email_clicks": true, "sms_clicks": true}}}"#,
    )
    .unwrap();
    let commands = setup_commands();
    for c in &commands {
        m.execute(&c.to_string())
            .unwrap_or_else(|e| panic!("{e}: {c}"));
    }
    for n in 0..20 {
        m.push(&contact(n).to_string()).unwrap();
    }
    m.advance_clock(3 * 86_400_000).unwrap();
    m.wait_idle(Duration::from_secs(60)).unwrap();
    let watch = rusqlite::Connection::open(&db).unwrap();
    let message_key: String = watch
        .query_row("SELECT key FROM messages ORDER BY id LIMIT 1", [], |r| {
            r.get(0)
        })
        .unwrap();
    // The open pixel, the wrapped link and the unsubscribe link of a queued email.
    let payload: String = watch
        .query_row(
            "SELECT payload FROM outbox WHERE channel = 'email' ORDER BY id LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let html = serde_json::from_str::<Value>(&payload).unwrap()["rendered"]["html"]
        .as_str()
        .unwrap()
        .to_string();
    let tracking_paths: Vec<String> = html
        .split("https://t.example")
        .skip(1)
        .map(|rest| rest.split(['"', '<', ' ']).next().unwrap().to_string())
        .collect();
    for kind in ["/o/", "/c/", "/u/"] {
        assert!(
            tracking_paths.iter().any(|p| p.starts_with(kind)),
            "no {kind} link in {tracking_paths:?}"
        );
    }
    let data_version = || -> i64 {
        watch
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .unwrap()
    };
    // A refusal: an input kind of error, a message fit for a log, nothing committed.
    let refused_cleanly = |e: &crm_module::Error, input: &str, before: i64| {
        check_refusal(e, input);
        assert_eq!(
            data_version(),
            before,
            "refused ({e}) but the database changed\n  input: {input}"
        );
    };
    let seeds = seeds(&message_key, &commands);
    let views = [
        ("automation_list", json!({})),
        (
            "automation_builder",
            json!({"automation_id": "a1", "selected_node": "b1.yes.end"}),
        ),
        ("automation_performance", json!({"automation_id": "a1"})),
        (
            "step_analytics",
            json!({"automation_id": "a1", "step_id": "s1"}),
        ),
        ("settings", json!({})),
        (
            "template_preview",
            json!({"template_id": "t1", "contact_id": "p1"}),
        ),
        (
            "picker_options",
            json!({"picker": "lists", "query": "l", "limit": 5}),
        ),
    ];

    let mut r = Rng(env_number("CRM_HOSTILE_SEED", SEED));
    let (mut accepted, mut refused) = (0usize, 0usize);
    // Tracking hits: answered 404, and answered otherwise (pixel, redirect, page).
    let (mut not_found, mut answered) = (0usize, 0usize);
    for i in 0..inputs {
        let seed = &seeds[r.below(seeds.len())];
        let mut v = mutate(&mut r, seed);
        if v.get("event_id").is_some_and(|_| r.below(3) != 0) {
            v["event_id"] = json!(format!("f{i}"));
        }
        let input = v.to_string();
        let before = data_version();
        let result = if v.get("command").is_some() {
            m.execute(&input).map(drop)
        } else if r.below(5) == 0 {
            // In a batch with a good event: refused whole, or applied whole.
            m.push_batch(&json!([contact(100 + i), v]).to_string())
                .map(drop)
        } else {
            m.push(&input).map(drop)
        };
        match result {
            Ok(()) => accepted += 1,
            Err(e) => {
                refused += 1;
                refused_cleanly(&e, &input, before);
            }
        }
        if r.below(8) == 0 {
            // A tracking hit from the web: the token mangled, or the request.
            let path = &tracking_paths[r.below(tracking_paths.len())];
            let methods = ["GET", "HEAD", "POST"];
            let mut hit = json!({"method": methods[r.below(3)], "path": path, "user_agent": "Mozilla/5.0 (Macintosh)"});
            match r.below(3) {
                0 => hit["path"] = json!(mutate_path(&mut r, path)),
                1 => hit = mutate(&mut r, &hit),
                _ => {}
            }
            let forged = hit["path"]
                .as_str()
                .is_none_or(|p| !tracking_paths.iter().any(|t| t == p));
            let input = hit.to_string();
            let before = data_version();
            match m.tracking_hit(&input) {
                Ok(response) => {
                    let status = response["status"].as_u64().unwrap_or(0);
                    if status == 404 {
                        not_found += 1;
                    } else {
                        answered += 1;
                    }
                    assert!(
                        matches!(status, 200 | 302 | 303 | 404),
                        "{response}\n  input: {input}"
                    );
                    if forged {
                        assert_eq!(
                            data_version(),
                            before,
                            "a forged hit changed the database ({response})\n  input: {input}"
                        );
                    }
                }
                Err(e) => {
                    refused_cleanly(&e, &input, before);
                }
            }
        }
        if r.below(10) == 0 {
            let (name, params) = &views[r.below(views.len())];
            let params = if r.below(2) == 0 {
                mutate(&mut r, params)
            } else {
                params.clone()
            };
            // Now and then an unknown or malformed screen name.
            let name = match r.below(8) {
                0 => nasty(&mut r).as_str().unwrap_or("no_such_view").to_string(),
                _ => name.to_string(),
            };
            if let Err(e) = m.view(&name, &params.to_string()) {
                check_refusal(&e, &format!("view {name} {params}"));
            }
        }
        if r.below(20) == 0 {
            let by = [
                60_000,
                3_600_000,
                86_400_000,
                7 * 86_400_000,
                400 * 86_400_000,
            ][r.below(5)];
            m.advance_clock(by).unwrap();
        }
        if i % 50 == 49 {
            let fresh = contact(1_000_000 + i).to_string();
            assert_eq!(
                m.push(&fresh).unwrap().outcome,
                "applied",
                "after input {i}"
            );
        }
    }
    m.wait_idle(Duration::from_secs(60)).unwrap();
    eprintln!(
        "{inputs} inputs: {accepted} accepted, {refused} refused; hits: {answered} answered, {not_found} not found"
    );
    // The mutations must reach past validation too, not only be refused.
    assert!(accepted * 10 >= inputs, "{accepted} of {inputs} accepted");
    assert!(refused * 2 >= inputs, "{refused} of {inputs} refused");
    assert!(
        answered > 0 && not_found > 0,
        "hits: {answered} answered, {not_found} not found"
    );
}
