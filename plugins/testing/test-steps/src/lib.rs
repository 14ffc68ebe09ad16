//! `test-steps`: a step plugin for the host's tests. Not for production.
//!
//! | step type | behaviour |
//! |---|---|
//! | `noop` | `continue([])` at once (per-call overhead) |
//! | `echo` | `continue([echo = <config.value as a JSON string>])` |
//! | `spin` | loops forever (deadline / fuel) |
//! | `memory-bomb` | allocates and touches 1 MiB chunks forever (memory cap) |
//! | `trap` | panics (a trap) |
//! | `big-output` | `continue([big = <JSON string of config.bytes 'x's>])`, default 2 000 000 (output cap) |
//! | `read-file` | tries `/etc/passwd` and `/`; `continue([observed = "file: ...; dir: ..."])` |
//! | `read-env` | `continue([observed = {"env": [keys], "args": n}])` |
//! | `branchy` | `branch(yes = config.yes)` |
//! | `log-lines` | logs `config.count` lines (default 3), then `continue([])` |
//! | `config-read` | `continue([observed = {"value": get(config.key), "secret_set": bool}])` |

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
        describe()
    }

    fn run(request: StepRequest) -> StepOutcome {
        if request.step_type == "noop" {
            return StepOutcome::Continue(Vec::new());
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
                "Sets property echo to the config value",
                json!({"value": {"type": "string", "title": "Value", "default": ""}}),
                vec![Continue, PropertyChanges, Failure],
            ),
            t("spin", actions, "Loops forever", json!({}), vec![Continue]),
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
                "config-read",
                actions,
                "Reports the install config value and whether the secret is set for config.key",
                json!({"key": {"type": "string", "title": "Key", "default": "value"}}),
                vec![Continue, PropertyChanges, Failure],
            ),
        ],
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
            StepOutcome::Continue(vec![PropertyChange::json("echo", &json!(value))])
        }
        "spin" => {
            let mut n: u64 = 0;
            loop {
                n = black_box(n.wrapping_add(1));
            }
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
        assert_eq!(d.step_types.len(), 11);
        for t in &d.step_types {
            let schema: Value = crm_plugin_sdk::serde_json::from_str(&t.config_schema).unwrap();
            assert_eq!(schema["type"], "object");
        }
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
