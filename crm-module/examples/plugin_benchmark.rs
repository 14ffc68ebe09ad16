//! Plugin call benchmark: a program that prints figures, not a timed test.
//!
//! It builds the plugins (`bash plugins/build.sh`, quick when up to date),
//! then measures with the `test-steps` component (`plugins/testing/test-steps`):
//!
//! * **overhead**: `PluginHost::run_step` of the trivial `noop` step type
//!   called back to back on one thread: instantiation from the pre-linked
//!   component (pooling allocator), a fresh WASI context, fuel and epoch
//!   deadline set, the call with a small contact and config, the store
//!   dropped. The per-call time is the host's overhead of a plugin step;
//! * **through the engine**: an active automation whose only step is the
//!   `noop` custom step; contacts pushed in batches of 1,000, then
//!   `wait_idle`. Each contact's step is an outbox row run on the plugin
//!   pool and recorded by the worker, so this is custom-step calls per
//!   second end to end (durable).
//!
//! ```text
//! cargo run --release -p crm-module --example plugin_benchmark
//! cargo run --release -p crm-module --example plugin_benchmark -- --calls 100000 --contacts 20000
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crm_module::Module;
use crm_module::plugins::{PluginHost, StepCall};
use serde_json::json;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let calls = arg("--calls", 50_000);
    let contacts = arg("--contacts", 10_000);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let built = std::process::Command::new("bash")
        .arg(root.join("plugins/build.sh"))
        .status()
        .expect("run plugins/build.sh");
    assert!(built.success(), "plugins/build.sh failed");
    let wasm_path = root.join("plugins/dist/test_steps.wasm");
    let wasm = std::fs::read(&wasm_path).expect("read test_steps.wasm");

    println!("crm-module plugin benchmark");
    println!(
        "  machine      {} CPUs",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "  component    {} ({} bytes)",
        wasm_path.display(),
        wasm.len()
    );

    // --- per-call overhead, in process -----------------------------------
    let host = PluginHost::new(Arc::new(parking_lot::RwLock::new(None)));
    let t = Instant::now();
    let prepared = host.prepare(wasm.clone()).expect("prepare");
    let compile = t.elapsed();
    let stored = crm_module::plugins::registry::StoredPlugin {
        descriptor: prepared.descriptor.clone(),
        wasm: wasm.clone(),
        sha256: prepared.sha256.clone(),
        grants: vec![],
        limits: Default::default(),
        config: Default::default(),
        secrets: Default::default(),
        enabled: true,
        installed_at: 0,
        updated_at: 0,
    };
    host.load(vec![stored]);
    let contact = json!({"id": "p1", "status": "lead", "first_name": "Pat", "email": "p1@example.com",
        "created_at": "2026-01-05T14:00:00Z", "last_activity_at": "2026-01-05T14:00:00Z"});
    let config = json!({});
    let call = StepCall {
        step_type: "noop",
        key: "bench-e1-s1",
        automation_id: "a1",
        step_id: "s1",
        now: "2026-01-05T14:00:00Z",
        contact: &contact,
        config: &config,
    };
    for _ in 0..1_000 {
        assert!(host.run_step("test-steps", &call).result.is_ok());
    }
    let mut samples = Vec::with_capacity(calls);
    let t = Instant::now();
    for _ in 0..calls {
        let s = Instant::now();
        let r = host.run_step("test-steps", &call);
        samples.push(s.elapsed());
        assert!(r.result.is_ok());
    }
    let total = t.elapsed();
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    let us = |d: Duration| d.as_secs_f64() * 1e6;

    // --- custom-step calls through the engine ----------------------------
    let dir = tempfile::tempdir().expect("tempdir");
    let m = Module::open(
        &dir.path().join("bench.db"),
        r#"{"clock": {"mode": "manual", "start": "2026-01-05T14:00:00Z"},
            "initial_settings": {"practice_name": "Bench", "time_zone": "America/New_York", "default_run_window": {"mode": "any_time"}}}"#,
    )
    .expect("open");
    m.execute(
        &json!({"command": "plugin.install", "path": wasm_path.to_string_lossy()}).to_string(),
    )
    .expect("install");
    m.execute(&json!({"command": "automation.create", "automation_id": "noop", "definition": {
        "name": "noop", "trigger": {"type": "contact_created"},
        "steps": [{"id": "s1", "type": "custom", "plugin_id": "test-steps", "step_type": "noop", "config": {}}]}}).to_string())
        .expect("create");
    m.execute(r#"{"command": "automation.activate", "automation_id": "noop"}"#)
        .expect("activate");
    let t = Instant::now();
    for chunk in (0..contacts).collect::<Vec<_>>().chunks(1_000) {
        let batch: Vec<serde_json::Value> = chunk
            .iter()
            .map(|i| json!({"event_id": format!("c{i}"), "type": "contact.upserted",
                "contact": {"id": format!("p{i}"), "first_name": "Pat", "email": format!("p{i}@example.com")}}))
            .collect();
        m.push_batch(&serde_json::Value::Array(batch).to_string())
            .expect("push");
    }
    m.wait_idle(Duration::from_secs(600)).expect("idle");
    let engine = t.elapsed();
    let view = m.view("plugins", "{}").expect("view");
    let figures = &view["plugins"][0]["figures"];
    assert_eq!(figures["calls"], contacts as u64, "{view}");
    assert_eq!(figures["failures"], 0, "{view}");
    m.close();

    println!();
    println!(
        "  compile + link + describe (first install)   {:>10.1} ms",
        compile.as_secs_f64() * 1e3
    );
    println!("  trivial step call, in process ({calls} calls on 1 thread)");
    println!(
        "    per call                                 {:>10.2} µs   ({:.0} calls/s)",
        us(total) / calls as f64,
        calls as f64 / total.as_secs_f64()
    );
    println!(
        "    p50 / p99 / max                          {:>10.2} / {:.2} / {:.2} µs",
        us(pct(0.50)),
        us(pct(0.99)),
        us(*samples.last().unwrap())
    );
    println!("  custom steps through the engine ({contacts} contacts, batches of 1,000)");
    println!(
        "    custom-step calls                        {:>10.0} /s    ({:.2} s in all: enroll, outbox, plugin pool, record, complete)",
        contacts as f64 / engine.as_secs_f64(),
        engine.as_secs_f64()
    );
    println!(
        "    mean plugin time per call (plugins view) {:>10.3} ms",
        figures["avg_ms"].as_f64().unwrap_or(0.0)
    );
}
