//! WebAssembly plugins end to end: components built from `plugins/` by the
//! real wasm32-wasip2 toolchain, installed through commands, run by the
//! module's wasmtime host; the sender adapter against a real HTTP server on
//! 127.0.0.1 playing the SMS provider; hostile plugins contained.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crm_integration_tests::{HttpProvider, plugins_dist};
use crm_module::{Delivery, EffectKind, Host, HostAnswer, LogLevel, Module};
use serde_json::{Value, json};

/// Takes every effect and keeps it, and every log line.
#[derive(Default)]
struct Collect {
    got: Mutex<Vec<(EffectKind, Value)>>,
    logs: Mutex<Vec<(LogLevel, String)>>,
    /// The thread each log line came on, with the line.
    log_threads: Mutex<Vec<(std::thread::ThreadId, String)>>,
}

impl Host for Collect {
    fn deliver(&self, d: Delivery<'_>) -> (HostAnswer, Option<String>) {
        let payload: Value = serde_json::from_str(d.payload).unwrap();
        self.got.lock().unwrap().push((d.kind, payload));
        (HostAnswer::Accepted, None)
    }

    fn log(&self, level: LogLevel, message: &str) {
        self.logs.lock().unwrap().push((level, message.to_string()));
        (self.log_threads.lock().unwrap()).push((std::thread::current().id(), message.to_string()));
    }
}

impl Collect {
    fn of(&self, kind: EffectKind) -> Vec<Value> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The last value the module wrote back for a contact's property.
    fn property(&self, contact: &str, name: &str) -> Option<Value> {
        self.of(EffectKind::Property)
            .into_iter()
            .rev()
            .find(|p| p["contact_id"] == contact && p["property"] == name)
            .map(|p| p["value"].clone())
    }
}

struct Practice {
    dir: tempfile::TempDir,
    module: Option<Module>,
    host: Arc<Collect>,
}

const SETTINGS: &str = r#"{"practice_name": "Riverside Family Practice", "time_zone": "America/New_York",
    "default_run_window": {"mode": "any_time"},
    "sms": {"sender_number": "+16175550100"},
    "email_footer": {"postal_address": "12 River Road, Boston, MA 02118", "text": "{{practice}}: unsubscribe at {{unsubscribe_link}}"},
    "tracking": {"base_url": "https://t.riverside.example", "email_opens": false, "email_clicks": false, "sms_clicks": false}}"#;

impl Practice {
    fn new() -> Practice {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Practice {
            dir,
            module: None,
            host: Arc::new(Collect::default()),
        };
        p.open();
        p
    }

    fn open(&mut self) {
        let m = Module::open(
            &self.dir.path().join("practice.db"),
            &format!(
                r#"{{"clock": {{"mode": "manual", "start": "2026-01-05T14:00:00Z"}}, "initial_settings": {SETTINGS}}}"#
            ),
        )
        .unwrap();
        m.set_host(Some(self.host.clone())).unwrap();
        self.module = Some(m);
    }

    fn reopen(&mut self) {
        self.module.take().unwrap().close();
        self.open();
    }

    fn m(&self) -> &Module {
        self.module.as_ref().unwrap()
    }

    fn run(&self, command: Value) -> Result<Value, String> {
        self.m()
            .execute(&command.to_string())
            .map_err(|e| e.to_string())
    }

    fn ok(&self, command: Value) -> Value {
        self.run(command.clone())
            .unwrap_or_else(|e| panic!("{command}: {e}"))
    }

    fn install(&self, file: &str, extra: Value) -> Value {
        let mut c = json!({"command": "plugin.install", "path": wasm(file)});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        self.ok(c)
    }

    fn automation(&self, id: &str, steps: Value) {
        self.ok(
            json!({"command": "automation.create", "automation_id": id, "definition": {
            "name": id, "trigger": {"type": "contact_created"}, "steps": steps}}),
        );
        self.ok(json!({"command": "automation.activate", "automation_id": id}));
    }

    fn push(&self, event: Value) {
        self.m().push(&event.to_string()).unwrap();
    }

    fn idle(&self) {
        self.m().wait_idle(Duration::from_secs(60)).unwrap();
    }

    /// Event log rows of a kind: (contact, step, detail).
    fn events(&self, kind: &str) -> Vec<(String, String, Value)> {
        let conn = rusqlite::Connection::open_with_flags(
            self.dir.path().join("practice.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        let mut stmt = conn
            .prepare("SELECT contact_id, coalesce(step_id, ''), coalesce(detail, 'null') FROM events WHERE kind = ?1 ORDER BY id")
            .unwrap();
        stmt.query_map([kind], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                serde_json::from_str(&r.get::<_, String>(2)?).unwrap(),
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    }

    fn step_failures(&self, step: &str) -> Vec<String> {
        self.events("step_failed")
            .into_iter()
            .filter(|(_, s, _)| s == step)
            .map(|(_, _, d)| d["reason"].as_str().unwrap().to_string())
            .collect()
    }

    fn plugin_row(&self, id: &str) -> Value {
        let v = self.m().view("plugins", "{}").unwrap();
        v["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["plugin_id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("plugin {id} is not listed: {v}"))
    }
}

fn wasm(file: &str) -> String {
    let path: PathBuf = plugins_dist().join(file);
    assert!(path.is_file(), "{} was not built", path.display());
    path.to_string_lossy().into_owned()
}

fn contact(i: usize, hot: bool) -> Value {
    let mut c = json!({"id": format!("p{i}"), "first_name": format!("Pat{i}"),
        "email": format!("p{i}@example.com"), "phone": format!("+1617555{:04}", 1000 + i)});
    if hot {
        c["lead_source"] = json!("walk_in");
        c["tags"] = json!(["interested", "vip"]);
        c["email_subscription"] = json!("subscribed");
        c["sms_subscription"] = json!("subscribed");
    }
    json!({"event_id": format!("c{i}"), "type": "contact.upserted", "contact": c})
}

#[test]
fn the_welcome_series_runs_the_lead_score_custom_step() {
    let p = Practice::new();
    let summary = p.install("lead_score.wasm", json!({}));
    assert_eq!(summary["plugin_id"], "lead-score");
    assert_eq!(summary["kind"], "step");
    assert_eq!(summary["contract"], "1.0.0");
    assert_eq!(summary["step_types"], json!(["score", "is-hot"]));

    // The palette offers both custom step types in the groups they declare.
    let builder = p.m().view("automation_builder", "{}").unwrap();
    let groups = builder["build"]["palette"]["groups"].as_array().unwrap();
    let item = |group: &str, t: &str| {
        groups
            .iter()
            .find(|g| g["id"] == group)
            .and_then(|g| {
                g["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|i| i["custom_type"] == t)
            })
            .cloned()
            .unwrap_or_else(|| panic!("no {t} in {group}: {builder}"))
    };
    let score = item("crm_actions", "score");
    assert_eq!(score["type"], "custom");
    assert_eq!(score["plugin_id"], "lead-score");
    assert_eq!(score["icon"], "fa-star");
    assert_eq!(item("flow_control", "is-hot")["branches"], true);

    let steps = json!([
        {"id": "hello", "type": "send_email", "subject": "Welcome to {{practice}}", "body": "Hi {{firstname}}"},
        {"id": "score", "type": "custom", "plugin_id": "lead-score", "step_type": "score", "config": {}},
        {"id": "wait", "type": "delay", "amount": 2, "unit": "days"},
        {"id": "hot", "type": "custom", "plugin_id": "lead-score", "step_type": "is-hot", "config": {"threshold": 70},
         "yes": [{"id": "call", "type": "create_task", "title": "Call this hot lead", "assignee": {"kind": "queue", "name": "front_desk"}}],
         "no": [{"id": "nudge", "type": "send_sms", "message": "Hi {{firstname}}, book with {{practice}}"}]}
    ]);

    // Configs are validated on save against the step type's schema.
    let mut bad = steps.clone();
    bad[3]["config"]["threshold"] = json!(500);
    let e = p
        .run(json!({"command": "automation.create", "definition": {"name": "bad", "trigger": {"type": "contact_created"}, "steps": bad}}))
        .unwrap_err();
    assert!(e.contains("/threshold"), "{e}");
    let mut unknown = steps.clone();
    unknown[1]["step_type"] = json!("nope");
    let e = p
        .run(json!({"command": "automation.create", "definition": {"name": "bad", "trigger": {"type": "contact_created"}, "steps": unknown}}))
        .unwrap_err();
    assert!(e.contains("step type nope of plugin lead-score"), "{e}");

    p.automation("welcome", steps);
    // The config panel of the custom step comes from its schema.
    let panel = p
        .m()
        .view(
            "automation_builder",
            r#"{"automation_id": "welcome", "tab": "build", "selected_node": "hot"}"#,
        )
        .unwrap()["build"]["config_panel"]
        .clone();
    let ids: Vec<&str> = panel["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"config.threshold"), "{panel}");
    assert!(ids.contains(&"on_failure"), "{panel}");
    let threshold = panel["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "config.threshold")
        .unwrap();
    assert_eq!(threshold["value"], 70);
    assert_eq!(threshold["kind"], "number");

    for i in 0..6 {
        p.push(contact(i, i % 2 == 0));
    }
    p.idle();
    p.m().advance_clock(3 * 86_400_000).unwrap();
    p.idle();

    // Every contact was scored; the score went back to the host.
    for i in 0..6 {
        let id = format!("p{i}");
        let score = p.host.property(&id, "lead_score").expect("scored");
        let temperature = p
            .host
            .property(&id, "lead_temperature")
            .expect("temperature");
        if i % 2 == 0 {
            assert!(score.as_u64().unwrap() >= 70, "{id}: {score}");
            assert_eq!(temperature, "hot");
        } else {
            assert!(score.as_u64().unwrap() < 70, "{id}: {score}");
        }
    }
    // Hot leads took the YES path (a task), the others NO (an SMS step).
    // Plugin calls run on several threads: the order of the tasks varies.
    let mut tasks: Vec<String> = p
        .host
        .of(EffectKind::Task)
        .iter()
        .map(|t| t["contact_id"].as_str().unwrap().to_string())
        .collect();
    tasks.sort();
    assert_eq!(tasks, ["p0", "p2", "p4"]);
    let paths: Vec<(String, String)> = p
        .events("step_completed")
        .into_iter()
        .filter(|(_, s, _)| s == "hot")
        .map(|(c, _, d)| (c, d["path"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(paths.len(), 6);
    for (c, path) in paths {
        let hot = ["p0", "p2", "p4"].contains(&c.as_str());
        assert_eq!(path, if hot { "yes" } else { "no" }, "{c}");
    }
    assert_eq!(p.events("completed").len(), 6);
    // The Performance tab titles the unnamed custom steps as the canvas
    // does: by their step type's display name.
    let perf = p
        .m()
        .view("automation_performance", r#"{"automation_id": "welcome"}"#)
        .unwrap();
    let titles: Vec<(&str, &str)> = perf["steps"]["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("{perf}"))
        .iter()
        .filter(|r| r["step_type"]["id"] == "custom")
        .map(|r| (r["step_id"].as_str().unwrap(), r["title"].as_str().unwrap()))
        .collect();
    assert_eq!(titles, [("score", "Score lead"), ("hot", "Is hot lead?")]);

    // The plugin's figures: 12 calls, none failed, timed.
    let row = p.plugin_row("lead-score");
    assert_eq!(row["figures"]["calls"], 12);
    assert_eq!(row["figures"]["failures"], 0);
    assert!(row["figures"]["avg_ms"].as_f64().unwrap() > 0.0);
    let ops: Vec<&str> = row["operations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["operation"].as_str().unwrap())
        .collect();
    assert_eq!(ops, ["is-hot", "score"]);
}

#[test]
fn plugins_survive_a_restart_and_are_managed_by_commands() {
    let mut p = Practice::new();
    p.install("test_steps.wasm", json!({}));
    p.idle();
    // What the plugin logged while it described itself reached the host's
    // log callback on a thread of the module's, not the installing caller's.
    let lines = p.host.log_threads.lock().unwrap().clone();
    let described: Vec<_> = (lines.iter())
        .filter(|(_, line)| line.contains("(installing): describing the test steps"))
        .collect();
    assert_eq!(described.len(), 1, "{lines:?}");
    assert_ne!(described[0].0, std::thread::current().id());
    p.automation(
        "echo",
        json!([{"id": "e", "type": "custom", "plugin_id": "test-steps", "step_type": "echo", "config": {"value": "after restart"}}]),
    );
    p.reopen();
    let listed = p.ok(json!({"command": "plugin.list"}));
    assert_eq!(listed["plugins"][0]["plugin_id"], "test-steps");
    p.push(contact(1, false));
    p.idle();
    assert_eq!(p.host.property("p1", "echo"), Some(json!("after restart")));

    // Installing again without replace is refused; with replace it upgrades.
    let e = p
        .run(json!({"command": "plugin.install", "path": wasm("test_steps.wasm")}))
        .unwrap_err();
    assert!(e.contains("already installed"), "{e}");
    p.install("test_steps.wasm", json!({"replace": true}));

    // A step plugin cannot be granted hosts.
    let e = p
        .run(json!({"command": "plugin.configure", "plugin_id": "test-steps", "grants": ["https://api.example.com"]}))
        .unwrap_err();
    assert!(e.contains("step plugin cannot fetch"), "{e}");

    // Disabled: gone from the palette, its calls wait and are retried.
    p.ok(json!({"command": "plugin.disable", "plugin_id": "test-steps"}));
    let builder = p.m().view("automation_builder", "{}").unwrap().to_string();
    assert!(!builder.contains("test-steps"), "{builder}");
    p.push(contact(2, false));
    p.idle();
    assert_eq!(p.host.property("p2", "echo"), None);
    p.ok(json!({"command": "plugin.enable", "plugin_id": "test-steps"}));
    p.m().advance_clock(2 * 60_000).unwrap();
    p.idle();
    assert_eq!(p.host.property("p2", "echo"), Some(json!("after restart")));
    // The tries while it was disabled never reached it: not calls.
    let row = p.plugin_row("test-steps");
    assert_eq!(row["figures"]["calls"], 2, "{row}");
    assert_eq!(row["figures"]["failures"], 0, "{row}");

    // Removal is refused while an automation uses it.
    let e = p
        .run(json!({"command": "plugin.remove", "plugin_id": "test-steps"}))
        .unwrap_err();
    assert!(e.contains("automation echo uses step type"), "{e}");
    p.ok(json!({"command": "automation.delete", "automation_id": "echo"}));
    p.ok(json!({"command": "plugin.remove", "plugin_id": "test-steps"}));
    let listed = p.ok(json!({"command": "plugin.list"}));
    assert_eq!(listed["plugins"], json!([]));
}

#[test]
fn hostile_step_plugins_are_contained() {
    let p = Practice::new();
    p.install(
        "test_steps.wasm",
        // The deadline leaves the harmless calls below (instance start-up
        // included) a wide margin on a loaded machine.
        json!({"limits": {"deadline_ms": 1000, "fuel": 50_000_000_000u64, "memory_bytes": 16_777_216, "output_bytes": 65536}}),
    );
    let step = |id: &str, t: &str, config: Value| json!({"id": id, "type": "custom", "plugin_id": "test-steps", "step_type": t, "config": config});
    p.automation(
        "hostile",
        json!([
            step("spin", "spin", json!({})),
            step("sleep", "sleep", json!({})),
            step("bomb", "memory-bomb", json!({})),
            step("trap", "trap", json!({})),
            step("big", "big-output", json!({"bytes": 200_000})),
            step("file", "read-file", json!({})),
            step("env", "read-env", json!({})),
            step("chatty", "chatty", json!({"bytes": 40_000})),
            step("refused", "echo", json!({"value": "x@example.com", "property": "email"})),
            {"id": "done", "type": "create_task", "title": "Survived", "assignee": {"kind": "queue", "name": "front_desk"}}
        ]),
    );
    p.automation(
        "calm",
        json!([step("echo", "echo", json!({"value": "fine"}))]),
    );
    for i in 0..3 {
        p.push(contact(i, false));
    }
    p.idle();

    let only = |step: &str, needle: &str| {
        let reasons = p.step_failures(step);
        assert_eq!(reasons.len(), 3, "{step}: {reasons:?}");
        assert!(
            reasons.iter().all(|r| r.contains(needle)),
            "{step}: {reasons:?}"
        );
    };
    only("spin", "deadline of 1000 ms exceeded");
    // An hour's sleep is a wait inside WASI's clock, not a loop the epoch
    // can interrupt: it too ends at the deadline.
    only("sleep", "deadline of 1000 ms exceeded");
    only("bomb", "memory cap of 16 MiB reached");
    only("trap", "trap: unreachable");
    only("big", "exceeds the cap of 65536 bytes");
    // Stderr past its cap is cut, not the call failed.
    assert_eq!(p.step_failures("chatty"), Vec::<String>::new());
    only("refused", "not settable by a plugin");
    // No files, no environment, no arguments.
    for i in 0..3 {
        let c = format!("p{i}");
        assert_eq!(
            p.host.property(&c, "observed"),
            Some(json!("env: 0 vars []; args: 0")),
            "{c}"
        );
        // Every contact went on past each failure and finished, and the calm
        // automation ran beside it.
        assert_eq!(p.host.property(&c, "echo"), Some(json!("fine")));
    }
    let files: Vec<Value> = p
        .events("step_completed")
        .into_iter()
        .filter(|(_, s, _)| s == "file")
        .map(|(_, _, d)| d)
        .collect();
    assert_eq!(files.len(), 3);
    assert_eq!(p.host.of(EffectKind::Task).len(), 3);
    assert_eq!(p.events("completed").len(), 6);

    let row = p.plugin_row("test-steps");
    assert_eq!(row["figures"]["calls"], 3 * 10);
    // A call whose changes were refused failed too.
    assert_eq!(row["figures"]["failures"], 3 * 6);
    let spin = row["operations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["operation"] == "spin")
        .unwrap()
        .clone();
    assert!(spin["last_failure"].as_str().unwrap().contains("deadline"));
}

#[test]
fn a_plugin_that_logs_the_contact_leaks_nothing_to_the_host_or_the_records() {
    let p = Practice::new();
    p.install("test_steps.wasm", json!({}));
    p.automation(
        "leaky",
        json!([{"id": "leak", "type": "custom", "plugin_id": "test-steps",
                "step_type": "leak-contact", "config": {}, "on_failure": "continue"}]),
    );
    let patient = [
        "Marguerite",
        "Okonkwo-Hale",
        "marguerite.hale@example.org",
        "(617) 555-0199",
        "6175550199",
        "1979-11-23",
        "insulin-pump",
    ];
    p.push(
        json!({"event_id": "e-leak", "type": "contact.upserted", "contact": {
        "id": "c-5150", "first_name": patient[0], "last_name": patient[1], "email": patient[2],
        "phone": patient[3], "dob": patient[5], "tags": [patient[6]]}}),
    );
    p.idle();

    let logs: Vec<(LogLevel, String)> = p
        .host
        .logs
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, l)| l.starts_with("plugin test-steps"))
        .cloned()
        .collect();
    let reasons = p.step_failures("leak");
    // The plugins view's figures keep the latest failure reason per step type.
    let row = p.plugin_row("test-steps");
    let last_failure = row["operations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["operation"] == "leak-contact")
        .and_then(|o| o["last_failure"].as_str())
        .unwrap_or_else(|| panic!("no leak-contact failure in {row}"))
        .to_string();
    // Everything the plugin said, as the host and the records hold it.
    let mut said: Vec<&str> = logs.iter().map(|(_, l)| l.as_str()).collect();
    said.extend(reasons.iter().map(String::as_str));
    said.push(&last_failure);
    for text in &said {
        for value in patient {
            assert!(
                !text.to_lowercase().contains(&value.to_lowercase()),
                "{value:?} leaked in {text:?}"
            );
        }
    }
    // The plugin's own words and the contact's id get through; the values are marked.
    let line = |start: &str| {
        logs.iter()
            .find(|(_, l)| l.starts_with(start))
            .map(|(level, l)| (*level, l.clone()))
            .unwrap_or_else(|| panic!("no line starting {start:?} in {logs:#?}"))
    };
    assert_eq!(
        line("plugin test-steps: test-steps: scoring"),
        (
            LogLevel::Info,
            "plugin test-steps: test-steps: scoring contact c-5150: [redacted] [redacted]".into()
        )
    );
    assert_eq!(
        line("plugin test-steps: test-steps: contact c-5150 reachable").1,
        "plugin test-steps: test-steps: contact c-5150 reachable at [redacted] and [redacted]"
    );
    assert_eq!(
        line("plugin test-steps: test-steps: contact c-5150 born").1,
        "plugin test-steps: test-steps: contact c-5150 born [redacted] tagged [redacted]"
    );
    let json_line = line("plugin test-steps: test-steps: contact c-5150 as received").1;
    assert!(json_line.contains(r#""id":"c-5150""#), "{json_line}");
    assert!(
        json_line.contains(r#""first_name":"[redacted]""#),
        "{json_line}"
    );
    assert_eq!(
        line("plugin test-steps stderr:"),
        (
            LogLevel::Warn,
            "plugin test-steps stderr: test-steps: stderr for contact c-5150: [redacted]".into()
        )
    );
    assert_eq!(
        reasons,
        ["test-steps: cannot score contact c-5150 ([redacted] [redacted] <[redacted]>)"]
    );
    assert_eq!(last_failure, reasons[0]);
    // The failure was handled as one: the contact went on past the step.
    assert_eq!(p.events("step_failed").len(), 1);
}

#[test]
fn the_read_file_step_sees_no_files() {
    let p = Practice::new();
    p.install("test_steps.wasm", json!({}));
    p.automation(
        "files",
        json!([{"id": "f", "type": "custom", "plugin_id": "test-steps", "step_type": "read-file", "config": {}}]),
    );
    p.push(contact(1, false));
    p.idle();
    let seen = p.host.property("p1", "observed").unwrap();
    let seen = seen.as_str().unwrap();
    assert!(seen.starts_with("file: error"), "{seen}");
    assert!(seen.contains("dir: error"), "{seen}");
}

/// A plugin call still queued when its contact leaves the automation is
/// withdrawn, never run: booked in the same batch as they arrived (Goal
/// met), the lead is not scored.
#[test]
fn a_plugin_call_for_a_contact_who_left_is_withdrawn() {
    let p = Practice::new();
    p.install("test_steps.wasm", json!({}));
    p.ok(json!({"command": "automation.create", "automation_id": "files", "definition": {
        "name": "files", "goal": "book_appointment", "unenrollment": {"goal_met": true},
        "trigger": {"type": "contact_created"},
        "steps": [{"id": "f", "type": "custom", "plugin_id": "test-steps", "step_type": "read-file", "config": {}}]}}));
    p.ok(json!({"command": "automation.activate", "automation_id": "files"}));
    let booked = json!({"event_id": "b1", "type": "appointment.booked",
        "appointment": {"id": "ap1", "contact_id": "p1"}});
    p.m()
        .push_batch(&json!([contact(1, false), booked]).to_string())
        .unwrap();
    p.idle();
    let withdrawn = p.events("plugin_step_withdrawn");
    assert_eq!(withdrawn.len(), 1, "{withdrawn:?}");
    assert_eq!(
        (withdrawn[0].0.as_str(), withdrawn[0].1.as_str()),
        ("p1", "f")
    );
    assert_eq!(withdrawn[0].2["exit_reason"], "goal_met");
    assert!(
        p.host.property("p1", "observed").is_none(),
        "the plugin ran"
    );
}

#[test]
fn a_branching_plugin_step_reached_again_after_an_edit_is_called_again() {
    let p = Practice::new();
    p.install("test_steps.wasm", json!({}));
    let branchy = |yes: Value, no: Value| {
        json!({"id": "b", "type": "custom", "plugin_id": "test-steps", "step_type": "branchy",
            "config": {"yes": true}, "yes": yes, "no": no})
    };
    let wait = json!({"id": "w", "type": "delay", "amount": 1, "unit": "days"});
    let hello =
        json!({"id": "m", "type": "send_email", "subject": "Hello", "body": "Hi {{firstname}}"});
    let other = json!({"id": "n", "type": "send_email", "subject": "Other", "body": "Hi"});
    p.automation(
        "edit",
        json!([branchy(
            json!([wait.clone(), hello.clone()]),
            json!([other.clone()])
        )]),
    );
    p.push(contact(1, true));
    p.idle();
    // p1 took YES and waits in its delay. The edit moves the delay to
    // before the branching step: p1 reaches that step again after it.
    p.ok(
        json!({"command": "automation.update", "automation_id": "edit", "definition": {
        "name": "edit", "trigger": {"type": "contact_created"},
        "steps": [wait, branchy(json!([hello]), json!([other]))]}}),
    );
    p.m().advance_clock(2 * 86_400_000).unwrap();
    p.idle();
    let conn = rusqlite::Connection::open_with_flags(
        p.dir.path().join("practice.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let calls: Vec<(String, String)> = conn
        .prepare(
            "SELECT idempotency_key, status FROM outbox WHERE kind = 'plugin_step' ORDER BY id",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(
        calls.iter().all(|(_, status)| status == "accepted"),
        "{calls:?}"
    );
    let calls: Vec<String> = calls.into_iter().map(|(key, _)| key).collect();
    assert_eq!(calls[1], format!("{}-r2", calls[0]));
    let branched: Vec<Value> = p
        .events("step_completed")
        .into_iter()
        .filter(|(_, s, _)| s == "b")
        .map(|(_, _, d)| d["path"].clone())
        .collect();
    assert_eq!(branched, vec![json!("yes"), json!("yes")]);
    let sent: Vec<String> = p
        .events("step_completed")
        .into_iter()
        .filter(|(_, s, _)| s == "m" || s == "n")
        .map(|(_, s, _)| s)
        .collect();
    assert_eq!(sent, vec!["m".to_string()]);
    assert_eq!(p.events("completed").len(), 1, "p1 did not finish");
}

/// The answer of an earlier call of a branching custom step (the contact
/// left the step in an edit while that call waited, and came back to it in
/// a later version) does not finish the new call: the new call's config
/// decides the path.
#[test]
fn an_earlier_calls_answer_does_not_finish_the_step_reached_again() {
    let p = Practice::new();
    p.install("test_steps.wasm", json!({}));
    let wait = json!({"id": "w", "type": "delay", "amount": 10, "unit": "minutes"});
    let branchy = |yes: bool, path: Value| {
        json!({"id": "b", "type": "custom", "plugin_id": "test-steps", "step_type": "branchy",
            "config": {"yes": yes}, "yes": path, "no": []})
    };
    let update = |steps: Value| {
        p.ok(
            json!({"command": "automation.update", "automation_id": "edits", "definition": {
            "name": "edits", "trigger": {"type": "contact_created"}, "steps": steps}}),
        );
    };
    p.automation("edits", json!([branchy(true, json!([wait.clone()]))]));
    // The plugin is off: the first call waits, retried at 1, 6 and 21 min.
    p.ok(json!({"command": "plugin.disable", "plugin_id": "test-steps"}));
    p.push(contact(1, false));
    p.idle();
    // The edit takes the step out (p1 goes on to the delay pulled out of
    // it), the next puts it back after the delay, taking NO: p1 reaches it
    // again at 10 min and calls it again (retried at 11, 16 and 31 min).
    update(json!([wait.clone()]));
    update(json!([wait, branchy(false, json!([]))]));
    p.m().advance_clock(20 * 60_000).unwrap();
    p.idle();
    assert!(p.events("step_completed").iter().all(|(_, s, _)| s != "b"));
    // Back on: the first call's answer comes first (21 min), then the new one's.
    p.ok(json!({"command": "plugin.enable", "plugin_id": "test-steps"}));
    p.m().advance_clock(15 * 60_000).unwrap();
    p.idle();
    let branched: Vec<Value> = (p.events("step_completed").into_iter())
        .filter(|(_, s, _)| s == "b")
        .map(|(_, _, d)| d["path"].clone())
        .collect();
    assert_eq!(branched, [json!("no")]);
    assert_eq!(p.events("completed").len(), 1, "p1 did not finish");
}

/// Two automations whose custom steps set each other's trigger: each
/// answer goes on with the cascade that made its call, so the loop is cut
/// at the cascade limit and the module goes idle. (Each answer was a new
/// cascade: they called each other forever, with no time passing.)
#[test]
fn custom_steps_setting_each_others_trigger_stop_at_the_cascade_limit() {
    let p = Practice::new();
    p.install("test_steps.wasm", json!({}));
    for (id, on, to) in [
        ("ping", "walk_in", "website_form"),
        ("pong", "website_form", "walk_in"),
    ] {
        p.ok(json!({"command": "automation.create", "automation_id": id, "definition": {
            "name": id, "trigger": {"type": "property_changed", "property": "lead_source", "new_value": on},
            "steps": [{"id": "flip", "type": "custom", "plugin_id": "test-steps", "step_type": "echo",
                       "config": {"value": to, "property": "lead_source"}}]}}));
        p.ok(json!({"command": "automation.activate", "automation_id": id}));
    }
    p.push(contact(1, false));
    p.push(json!({"event_id": "walk-in", "type": "contact.upserted",
        "contact": {"id": "p1", "lead_source": "walk_in"}}));
    p.idle();
    let enrolled = p.events("enrolled").len();
    let limit = crm_module::core::MAX_CASCADE as usize;
    assert!((limit - 1..=limit + 1).contains(&enrolled), "{enrolled}");
    assert_eq!(p.events("cascade_limited").len(), 1);
    // Nothing is left running: a later change starts the loop once more, cut again.
    p.push(json!({"event_id": "import", "type": "contact.upserted",
        "contact": {"id": "p1", "lead_source": "import"}}));
    p.push(json!({"event_id": "walk-in-2", "type": "contact.upserted",
        "contact": {"id": "p1", "lead_source": "walk_in"}}));
    p.idle();
    assert_eq!(p.events("enrolled").len(), 2 * enrolled);
    assert_eq!(p.events("cascade_limited").len(), 2);
}

#[test]
fn an_instruction_budget_stops_a_loop_deterministically() {
    let p = Practice::new();
    p.install(
        "test_steps.wasm",
        json!({"limits": {"deadline_ms": 30_000, "fuel": 20_000_000}}),
    );
    p.automation(
        "loop",
        json!([{"id": "spin", "type": "custom", "plugin_id": "test-steps", "step_type": "spin", "config": {}, "on_failure": "exit"}]),
    );
    p.push(contact(1, false));
    p.idle();
    let reasons = p.step_failures("spin");
    assert_eq!(reasons, ["instruction budget of 20000000 exhausted"]);
    let exits = p.events("exited");
    assert_eq!(exits[0].2["reason"], "step_failed");
}

#[test]
fn a_slow_plugin_delays_only_its_own_step() {
    let p = Practice::new();
    p.install(
        "test_steps.wasm",
        json!({"limits": {"deadline_ms": 8000, "fuel": 100_000_000_000u64}}),
    );
    // The spin runs for 8 s: the quick step's margin on a loaded machine.
    // The slow step is for walk-ins (p1) only; the quick one for everyone.
    // (Pausing the slow automation to keep p2 out of it would hold p1's
    // call too, if the pause came before the dispatcher took it up.)
    p.ok(json!({"command": "automation.create", "automation_id": "slow", "definition": {
        "name": "slow", "trigger": {"type": "contact_created", "source": "walk_in"},
        "steps": [{"id": "spin", "type": "custom", "plugin_id": "test-steps", "step_type": "spin", "config": {}}]}}));
    p.ok(json!({"command": "automation.activate", "automation_id": "slow"}));
    p.automation(
        "quick",
        json!([{"id": "noop", "type": "custom", "plugin_id": "test-steps", "step_type": "noop", "config": {}},
               {"id": "t", "type": "create_task", "title": "Quick", "assignee": {"kind": "queue", "name": "front_desk"}}]),
    );
    p.push(contact(1, true));
    p.push(contact(2, false));
    p.idle();
    // The quick contact's step finished while the slow one was still spinning.
    let log: Vec<(String, String)> = p
        .events("step_completed")
        .into_iter()
        .map(|(c, s, _)| (c, s))
        .chain(
            p.events("step_failed")
                .into_iter()
                .map(|(c, s, _)| (c, format!("{s} failed"))),
        )
        .collect();
    assert!(
        log.contains(&("p2".to_string(), "noop".to_string())),
        "{log:?}"
    );
    assert_eq!(p.step_failures("spin").len(), 1);
    let order = |c: &str, kind: &str, step: &str| {
        let conn = rusqlite::Connection::open(p.dir.path().join("practice.db")).unwrap();
        conn.query_row(
            "SELECT id FROM events WHERE contact_id = ?1 AND kind = ?2 AND step_id = ?3",
            [c, kind, step],
            |r| r.get::<_, i64>(0),
        )
        .unwrap()
    };
    assert!(order("p2", "step_completed", "noop") < order("p1", "step_failed", "spin"));
}

#[test]
fn broken_and_wrong_version_components_are_refused_at_install() {
    let p = Practice::new();
    let install_bytes = |bytes: &[u8]| {
        use base64::Engine as _;
        p.run(json!({"command": "plugin.install",
            "wasm_base64": base64::engine::general_purpose::STANDARD.encode(bytes)}))
            .unwrap_err()
    };
    let e = install_bytes(b"definitely not wasm");
    assert!(e.contains("wasm magic bytes"), "{e}");
    let e = install_bytes(b"\0asm\x01\0\0\0");
    assert!(
        e.contains("core WebAssembly module, not a component"),
        "{e}"
    );
    let e = install_bytes(b"\0asm\x0d\0\x01\0\x07\x07garbage");
    assert!(e.contains("the component does not load"), "{e}");
    let e = p
        .run(json!({"command": "plugin.install", "path": wasm("future_contract.wasm")}))
        .unwrap_err();
    assert!(
        e.contains("crm:plugin@2.0.0") && e.contains("crm:plugin@1.0.0"),
        "{e}"
    );
    let e = p
        .run(json!({"command": "plugin.install", "path": "/nonexistent/plugin.wasm"}))
        .unwrap_err();
    assert!(e.contains("cannot read"), "{e}");
    // Nothing was stored.
    assert_eq!(
        p.ok(json!({"command": "plugin.list"}))["plugins"],
        json!([])
    );
}

#[test]
fn the_sms_adapter_sends_through_a_real_http_provider() {
    let provider = HttpProvider::start();
    let p = Practice::new();
    let origin = provider.origin();
    let summary = p.install(
        "http_sms.wasm",
        json!({"grants": [origin], "limits": {"allow_private_network": true},
               "config": {"endpoint": format!("{origin}/v1/messages")}, "secrets": {"api_key": "sk-test-123"}}),
    );
    assert_eq!(summary["kind"], "sender");
    assert_eq!(summary["channels"], json!(["sms"]));
    // Settings choose the adapter for SMS (refused for a step plugin or an unknown id).
    let mut settings: Value = serde_json::from_str(SETTINGS).unwrap();
    settings["sms_delivery"] = json!({"mode": "plugin", "plugin_id": "nope"});
    let e = p
        .run(json!({"command": "settings.update", "settings": settings}))
        .unwrap_err();
    assert!(e.contains("sms_delivery.plugin_id"), "{e}");
    settings["sms_delivery"] = json!({"mode": "plugin", "plugin_id": "http-sms"});
    p.ok(json!({"command": "settings.update", "settings": settings}));
    let view = p.m().view("settings", "{}").unwrap().to_string();
    assert!(view.contains("\"sms_delivery.plugin_id\""), "{view}");
    assert!(!view.contains("sk-test-123"));

    p.automation(
        "texts",
        json!([{"id": "sms", "type": "send_sms", "category": "care", "message": "Hi {{firstname}}, see you soon"}]),
    );
    p.push(contact(1, true));
    p.idle();

    let got = provider.requests();
    assert_eq!(got.len(), 1, "{}", provider.log());
    let r = &got[0];
    assert_eq!(r["method"], "POST");
    assert_eq!(r["path"], "/v1/messages");
    assert_eq!(r["headers"]["authorization"], "Bearer sk-test-123");
    let body: Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["to"], "+16175551001");
    assert_eq!(body["from"], "+16175550100");
    assert!(
        body["text"]
            .as_str()
            .unwrap()
            .starts_with("Hi Pat1, see you soon")
    );
    assert_eq!(r["headers"]["idempotency-key"], body["idempotency_key"]);
    // The host never saw the SMS; the module recorded it as sent.
    assert!(p.host.of(EffectKind::Message).is_empty());
    assert_eq!(p.events("message_sent").len(), 1);
    let row = p.plugin_row("http-sms");
    assert_eq!(row["figures"]["calls"], 1);
    assert_eq!(row["secret_names"], json!(["api_key"]));
    assert!(!row.to_string().contains("sk-test-123"));

    // The provider answers 400: failed for good, with the provider's code.
    let reconfigure = |endpoint: String, grants: Vec<String>, private: bool| {
        p.ok(
            json!({"command": "plugin.configure", "plugin_id": "http-sms", "grants": grants,
            "limits": {"allow_private_network": private}, "config": {"endpoint": endpoint}}),
        );
    };
    let outcome = |i: usize| {
        p.push(contact(i, true));
        p.idle();
        let key_of = |d: &Value| d.clone();
        let failed: Vec<Value> = p
            .events("message_failed")
            .into_iter()
            .filter(|(c, _, _)| *c == format!("p{i}"))
            .map(|(_, _, d)| key_of(&d))
            .collect();
        let retried: Vec<Value> = p
            .events("effect_retry")
            .into_iter()
            .filter(|(c, _, _)| *c == format!("p{i}"))
            .map(|(_, _, d)| d)
            .collect();
        (failed, retried)
    };
    reconfigure(format!("{origin}/reject"), vec![origin.clone()], true);
    let (failed, _) = outcome(2);
    assert!(
        failed[0]["error"].as_str().unwrap().contains("http 400"),
        "{failed:?}"
    );
    assert!(
        failed[0]["error"]
            .as_str()
            .unwrap()
            .contains("invalid_number"),
        "{failed:?}"
    );

    // 503: tried again later under the same key.
    reconfigure(format!("{origin}/busy"), vec![origin.clone()], true);
    let (failed, retried) = outcome(3);
    assert!(
        failed.is_empty() && retried.len() == 1,
        "{failed:?} {retried:?}"
    );

    // A redirect is refused, never followed.
    let before = provider.requests().len();
    reconfigure(format!("{origin}/moved"), vec![origin.clone()], true);
    let (failed, _) = outcome(4);
    assert!(
        failed[0]["error"]
            .as_str()
            .unwrap()
            .contains("redirect_refused"),
        "{failed:?}"
    );
    let after = provider.requests();
    assert_eq!(after.len(), before + 1);
    assert_eq!(after.last().unwrap()["path"], "/moved");

    // A host that is not granted: refused before any connection.
    reconfigure(
        format!("http://localhost:{}/v1/messages", provider.port),
        vec![origin.clone()],
        true,
    );
    let (failed, _) = outcome(5);
    assert!(
        failed[0]["error"].as_str().unwrap().contains("not_granted"),
        "{failed:?}"
    );

    // Granted, but a private address without allow_private_network.
    reconfigure(format!("{origin}/v1/messages"), vec![origin.clone()], false);
    let (failed, _) = outcome(6);
    assert!(
        failed[0]["error"]
            .as_str()
            .unwrap()
            .contains("private_address"),
        "{failed:?}"
    );

    // A response over the cap.
    reconfigure(format!("{origin}/huge"), vec![origin.clone()], true);
    let (failed, _) = outcome(7);
    assert!(
        failed[0]["error"].as_str().unwrap().contains("too large"),
        "{failed:?}"
    );
    assert_eq!(failed[0]["source"], "plugin:http-sms");
    // Only the redirect, the reject, the busy and the huge answers reached the server.
    assert_eq!(provider.requests().len(), before + 2);

    // The adapter's refusals are send attempts in the Performance view, like the host's.
    let perf = p
        .m()
        .view("automation_performance", r#"{"automation_id": "texts"}"#)
        .unwrap();
    let sms = crm_integration_tests::channel_row(&perf, "sms");
    assert_eq!(sms["sent"], 1, "{sms}");
    assert_eq!(sms["failed"], 5, "{sms}");
    assert_eq!(sms["send_attempts"], 6, "{sms}");

    // The first SMS soft-bounces: it is sent again with a key of its own,
    // so that a provider deduplicating by key sends it (it dropped it as a
    // repeat), and the provider's receipt naming that key is the message's.
    reconfigure(format!("{origin}/v1/messages"), vec![origin.clone()], true);
    let key = body["idempotency_key"].as_str().unwrap().to_string();
    p.push(
        json!({"event_id": "soft-1", "type": "delivery.receipt", "message_key": key,
        "status": "bounced", "bounce": "soft"}),
    );
    let before = provider.requests().len();
    p.m().advance_clock(10 * 60_000).unwrap();
    p.idle();
    // p1's SMS again (beside p3's, which waited after the 503).
    let again: Vec<(Value, Value)> = (provider.requests().into_iter().skip(before))
        .map(|r| {
            (
                serde_json::from_str(r["body"].as_str().unwrap()).unwrap(),
                r["headers"].clone(),
            )
        })
        .filter(|(b, _): &(Value, Value)| b["to"] == body["to"])
        .collect();
    assert_eq!(again.len(), 1, "{}", provider.log());
    let resend_key = format!("{key}-resend1");
    assert_eq!(again[0].0["idempotency_key"], resend_key.as_str());
    assert_eq!(again[0].1["idempotency-key"], resend_key.as_str());
    assert_eq!(again[0].0["text"], body["text"]);
    p.push(
        json!({"event_id": "dlr-1", "type": "delivery.receipt", "message_key": resend_key,
        "status": "delivered"}),
    );
    p.idle();
    let delivered = p.events("message_delivered");
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert_eq!(delivered[0].0, "p1");
}
