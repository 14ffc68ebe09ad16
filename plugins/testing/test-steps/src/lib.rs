//! `test-steps`: a step plugin for the host's tests. Not for production.
//!
//! | step type | behaviour |
//! |---|---|
//! | `noop` | `continue([])` at once (per-call overhead) |
//! | `echo` | `continue([echo = <config.value as a JSON string>])` |
//! | `spin` | loops forever (deadline / fuel) |
//! | `sleep` | sleeps `config.seconds` (default 3600) in `std::thread::sleep`, a wait inside WASI's clock, then `continue([])` (deadline) |
//! | `memory-bomb` | allocates and touches 1 MiB chunks forever (memory cap) |
//! | `trap` | panics (a trap) |
//! | `big-output` | `continue([big = <JSON string of config.bytes 'x's>])`, default 2 000 000 (output cap) |
//! | `read-file` | tries `/etc/passwd` and `/`; `continue([observed = "file: ...; dir: ..."])` |
//! | `read-env` | `continue([observed = {"env": [keys], "args": n}])` |
//! | `branchy` | `branch(yes = config.yes)` |
//! | `log-lines` | logs `config.count` lines (default 3), then `continue([])` |
//! | `config-read` | `continue([observed = {"value": get(config.key), "secret_set": bool}])` |
//! | `leak-contact` | misbehaves on purpose: logs the contact's name, email, phone, date of birth, tags and whole JSON, writes the email to stderr, and returns `failed` with the name and email in the reason (the host must scrub them) |

use std::hint::black_box;

use crm_plugin_sdk::serde_json::{Value, json};
use crm_plugin_sdk::step::{
    Description, Guest, OutcomeKind, PaletteGroup, PluginInfo, PropertyChange, StepOutcome,
    StepRequest, StepType,
};

/// The plugin.
pub struct TestSteps;

#[cfg(target_arch = "wasm32")]
crm_plugin_sdk::export_step_plugin!(TestSteps);

impl Guest for TestSteps {
    fn describe() -> Description {
        // A line logged while the module installs the plugin: the host's
        // log callback must get it on the module's threads, not the caller's.
        crm_plugin_sdk::info!("describing the test steps");
        describe()
    }

    fn run(request: StepRequest) -> StepOutcome {
        if request.step_type == "noop" {
            return StepOutcome::Continue(Vec::new());
        }
        if request.step_type == "leak-contact" {
            return match request.contact_object() {
                Ok(contact) => {
                    let leak = leak(&contact);
                    for line in &leak.lines {
                        crm_plugin_sdk::info!("{line}");
                    }
                    eprintln!("{}", leak.stderr);
                    StepOutcome::Failed(leak.reason)
                }
                Err(reason) => StepOutcome::Failed(reason),
            };
        }
        let result = (|| {
            let config = request.config_object()?;
            run(&request.step_type, &config)
        })();
        result.into()
    }
}

/// The plugin's description.
pub fn describe() -> Description {
    use OutcomeKind::{Branch, Continue, Failure, PropertyChanges};
    let t =
        |id: &str, group, description: &str, schema: Value, outcomes: Vec<OutcomeKind>| StepType {
            id: id.into(),
            display_name: format!("Test: {id}"),
            palette_group: group,
            icon: "fa-flask".into(),
            description: description.into(),
            config_schema: json!({"type": "object", "properties": schema}).to_string(),
            outcomes,
        };
    let actions = PaletteGroup::CrmActions;
    Description {
        info: PluginInfo {
            id: "test-steps".into(),
            name: "Test steps".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            vendor: "CRM module tests".into(),
            description: "Step types for the plugin host's tests".into(),
        },
        step_types: vec![
            t(
                "noop",
                actions,
                "Continues at once",
                json!({}),
                vec![Continue],
            ),
            t(
                "echo",
                actions,
                "Sets property echo (or config.property) to the config value",
                json!({"value": {"type": "string", "title": "Value", "default": ""},
                       "property": {"type": "string", "title": "Property", "default": "echo"}}),
                vec![Continue, PropertyChanges, Failure],
            ),
            t("spin", actions, "Loops forever", json!({}), vec![Continue]),
            t(
                "sleep",
                actions,
                "Sleeps for config.seconds",
                json!({"seconds": {"type": "integer", "title": "Seconds", "default": 3600, "minimum": 0}}),
                vec![Continue],
            ),
            t(
                "memory-bomb",
                actions,
                "Allocates memory until stopped",
                json!({}),
                vec![Continue, Failure],
            ),
            t(
                "trap",
                actions,
                "Panics",
                json!({}),
                vec![Continue, Failure],
            ),
            t(
                "big-output",
                actions,
                "Returns one property change of config.bytes bytes",
                json!({"bytes": {"type": "integer", "title": "Bytes", "default": 2_000_000, "minimum": 0}}),
                vec![Continue, PropertyChanges, Failure],
            ),
            t(
                "chatty",
                actions,
                "Writes config.bytes bytes to stderr, then continues",
                json!({"bytes": {"type": "integer", "title": "Bytes", "default": 40_000, "minimum": 0}}),
                vec![Continue, Failure],
            ),
            t(
                "read-file",
                actions,
                "Tries to read /etc/passwd and list /",
                json!({}),
                vec![Continue, PropertyChanges],
            ),
            t(
                "read-env",
                actions,
                "Reports environment variable names and the argument count",
                json!({}),
                vec![Continue, PropertyChanges],
            ),
            t(
                "branchy",
                PaletteGroup::FlowControl,
                "YES when config yes is true",
                json!({"yes": {"type": "boolean", "title": "Yes", "default": false}}),
                vec![Branch, Failure],
            ),
            t(
                "log-lines",
                actions,
                "Logs config.count lines",
                json!({"count": {"type": "integer", "title": "Lines", "default": 3, "minimum": 0}}),
                vec![Continue, Failure],
            ),
            t(
                "leak-contact",
                actions,
                "Logs the contact's data and fails with it (the host must scrub it)",
                json!({}),
                vec![Continue, Failure],
            ),
            t(
                "config-read",
                actions,
                "Reports the install config value and whether the secret is set for config.key",
                json!({"key": {"type": "string", "title": "Key", "default": "value"}}),
                vec![Continue, PropertyChanges, Failure],
            ),
        ],
    }
}

/// What `leak-contact` says: everything a careless plugin might.
#[derive(Debug, PartialEq)]
pub struct Leak {
    /// Log lines.
    pub lines: Vec<String>,
    /// What it writes to stderr.
    pub stderr: String,
    /// Its failure reason.
    pub reason: String,
}

/// The patient data of `contact` in log lines, stderr and a reason, each
/// next to the contact's id and the plugin's own words.
pub fn leak(contact: &crm_plugin_sdk::serde_json::Map<String, Value>) -> Leak {
    let field = |k: &str| contact.get(k).and_then(Value::as_str).unwrap_or("-");
    let id = field("id");
    let tags: Vec<&str> = contact
        .get("tags")
        .and_then(Value::as_array)
        .map(|t| t.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    Leak {
        lines: vec![
            format!(
                "test-steps: scoring contact {id}: {} {}",
                field("first_name"),
                field("last_name")
            ),
            format!(
                "test-steps: contact {id} reachable at {} and {}",
                field("email"),
                field("phone")
            ),
            format!(
                "test-steps: contact {id} born {} tagged {}",
                field("dob"),
                tags.join(",")
            ),
            format!(
                "test-steps: contact {id} as received {}",
                Value::Object(contact.clone())
            ),
        ],
        stderr: format!("test-steps: stderr for contact {id}: {}", field("email")),
        reason: format!(
            "test-steps: cannot score contact {id} ({} {} <{}>)",
            field("first_name"),
            field("last_name"),
            field("email")
        ),
    }
}

fn observed(value: Value) -> StepOutcome {
    StepOutcome::Continue(vec![PropertyChange::json("observed", &value)])
}

/// Runs one step type (all but `noop`, which returns before parsing).
fn run(
    step_type: &str,
    config: &crm_plugin_sdk::serde_json::Map<String, Value>,
) -> Result<StepOutcome, String> {
    use crm_plugin_sdk::json::{opt_bool, opt_i64, opt_str};
    Ok(match step_type {
        "noop" => StepOutcome::Continue(Vec::new()),
        "echo" => {
            let value = opt_str(config, "value")?.unwrap_or("");
            let property = opt_str(config, "property")?.unwrap_or("echo");
            StepOutcome::Continue(vec![PropertyChange::json(property, &json!(value))])
        }
        "spin" => {
            let mut n: u64 = 0;
            loop {
                n = black_box(n.wrapping_add(1));
            }
        }
        "chatty" => {
            let bytes = opt_i64(config, "bytes")?.unwrap_or(40_000);
            let bytes = usize::try_from(bytes).map_err(|_| "bytes: must be >= 0")?;
            for _ in 0..bytes / 100 {
                eprintln!("{}", "x".repeat(99));
            }
            StepOutcome::Continue(Vec::new())
        }
        "sleep" => {
            let seconds = opt_i64(config, "seconds")?.unwrap_or(3600);
            let seconds = u64::try_from(seconds).map_err(|_| "seconds: must be >= 0")?;
            std::thread::sleep(std::time::Duration::from_secs(seconds));
            StepOutcome::Continue(Vec::new())
        }
        "memory-bomb" => {
            let mut chunks: Vec<Vec<u8>> = Vec::new();
            loop {
                let mut chunk = vec![0u8; 1 << 20];
                for i in (0..chunk.len()).step_by(4096) {
                    chunk[i] = 1;
                }
                chunks.push(black_box(chunk));
            }
        }
        "trap" => panic!("test-steps: deliberate trap"),
        "big-output" => {
            let bytes = opt_i64(config, "bytes")?.unwrap_or(2_000_000);
            let bytes = usize::try_from(bytes).map_err(|_| "bytes: must be >= 0")?;
            let value = format!("\"{}\"", "x".repeat(bytes));
            StepOutcome::Continue(vec![PropertyChange {
                name: "big".into(),
                value,
            }])
        }
        "read-file" => {
            let file = match std::fs::read_to_string("/etc/passwd") {
                Ok(text) => format!("read {} bytes", text.len()),
                Err(e) => format!("error {:?}", e.kind()),
            };
            let dir = match std::fs::read_dir("/") {
                Ok(entries) => format!("{} entries", entries.count()),
                Err(e) => format!("error {:?}", e.kind()),
            };
            observed(json!(format!("file: {file}; dir: {dir}")))
        }
        "read-env" => {
            let keys: Vec<String> = std::env::vars_os()
                .map(|(k, _)| k.to_string_lossy().into_owned())
                .collect();
            // A custom property holds text, so the observation is a sentence.
            observed(json!(format!(
                "env: {} vars {:?}; args: {}",
                keys.len(),
                keys,
                std::env::args_os().count()
            )))
        }
        "branchy" => StepOutcome::branch(opt_bool(config, "yes")?.unwrap_or(false), Vec::new()),
        "log-lines" => {
            let count = opt_i64(config, "count")?.unwrap_or(3);
            for i in 0..count {
                crm_plugin_sdk::info!("test-steps: line {i}");
            }
            StepOutcome::Continue(Vec::new())
        }
        "config-read" => {
            let key = opt_str(config, "key")?.unwrap_or("value");
            observed(json!(format!(
                "value: {:?}; secret set: {}",
                crm_plugin_sdk::config::get(key),
                crm_plugin_sdk::config::secret(key).is_some()
            )))
        }
        other => return Err(format!("unknown step type {other}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(v: Value) -> crm_plugin_sdk::serde_json::Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn describe_is_consistent() {
        let d = describe();
        assert_eq!(d.info.id, "test-steps");
        assert_eq!(d.step_types.len(), 14);
        for t in &d.step_types {
            let schema: Value = crm_plugin_sdk::serde_json::from_str(&t.config_schema).unwrap();
            assert_eq!(schema["type"], "object");
        }
    }

    #[test]
    fn echo_sets_the_property_its_config_names() {
        let out = run("echo", &config(json!({"value": "v"}))).unwrap();
        assert!(matches!(&out, StepOutcome::Continue(c) if c[0].name == "echo"));
        let out = run("echo", &config(json!({"value": "v", "property": "email"}))).unwrap();
        assert!(matches!(&out, StepOutcome::Continue(c) if c[0].name == "email"));
    }

    #[test]
    fn leak_contact_says_everything() {
        let l = leak(&config(
            json!({"id": "c7", "first_name": "Ann", "last_name": "Lee",
            "email": "ann@example.com", "phone": "+16175550100", "tags": ["vip"]}),
        ));
        assert_eq!(l.lines[0], "test-steps: scoring contact c7: Ann Lee");
        assert_eq!(
            l.lines[1],
            "test-steps: contact c7 reachable at ann@example.com and +16175550100"
        );
        assert_eq!(l.lines[2], "test-steps: contact c7 born - tagged vip");
        assert!(l.lines[3].contains(r#""first_name":"Ann""#));
        assert_eq!(
            l.stderr,
            "test-steps: stderr for contact c7: ann@example.com"
        );
        assert_eq!(
            l.reason,
            "test-steps: cannot score contact c7 (Ann Lee <ann@example.com>)"
        );
    }

    #[test]
    fn echo_branchy_big_output() {
        assert_eq!(
            run("echo", &config(json!({"value": "hi \"there\""}))),
            Ok(StepOutcome::Continue(vec![PropertyChange {
                name: "echo".into(),
                value: r#""hi \"there\"""#.into()
            }]))
        );
        assert_eq!(
            run("branchy", &config(json!({"yes": true}))),
            Ok(StepOutcome::branch(true, vec![]))
        );
        assert_eq!(
            run("branchy", &config(json!({}))),
            Ok(StepOutcome::branch(false, vec![]))
        );
        let Ok(StepOutcome::Continue(changes)) = run("big-output", &config(json!({"bytes": 10})))
        else {
            panic!()
        };
        assert_eq!(changes[0].value, "\"xxxxxxxxxx\"");
        assert!(run("big-output", &config(json!({"bytes": -1}))).is_err());
        assert_eq!(
            run("nope", &config(json!({}))),
            Err("unknown step type nope".into())
        );
    }
}
