//! Plugin call benchmark: a program that prints figures, not a timed test.
//!
//! It builds the plugins (`bash plugins/build.sh`, quick when up to date),
//! then measures:
//!
//! * **overhead**: `PluginHost::run_step` of a `noop` step type called back
//!   to back on one thread: the config checked against its compiled schema,
//!   instantiation from the pre-linked component (pooling allocator), a
//!   fresh WASI context, fuel and epoch deadline set, the call with a small
//!   contact and config, the store dropped and its memory slot reset. The
//!   per-call time is the host's overhead of a plugin step. Measured for
//!   `trivial-step` (`plugins/testing/trivial-step`, the smallest plugin the
//!   SDK builds) and for `test-steps` (`plugins/testing/test-steps`, whose
//!   sandbox probes make its component import files, environment and
//!   clocks too: each import is wired into every fresh instance), or for the
//!   component given with `--wasm` (it must have a `noop` step type);
//! * **through the engine**: an active automation whose only step is
//!   `trivial-step`'s `noop`; contacts pushed in batches of 1,000, then
//!   `wait_idle`. Each contact's step is an outbox row run on the plugin
//!   pool and recorded by the worker, so this is custom-step calls per
//!   second end to end (durable).
//!
//! ```text
//! cargo run --release -p crm-module --example plugin_benchmark
//! cargo run --release -p crm-module --example plugin_benchmark -- --calls 100000 --contacts 20000
//! cargo run --release -p crm-module --example plugin_benchmark -- --wasm my_plugin.wasm
//! ```

/// The allocator the shipped library uses for its own allocations
/// (`ffi/src/lib.rs`): the figures are the embedded module's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
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

/// Per-call figures of one component's `noop` step.
struct Overhead {
    name: String,
    bytes: usize,
    imports: usize,
    compile: Duration,
    per_call: Duration,
    samples: Vec<Duration>,
}

/// Installs `wasm` in a fresh host and calls its `noop` step `calls` times.
fn overhead(wasm_path: &Path, calls: usize) -> Overhead {
    let wasm = std::fs::read(wasm_path).expect("read the component");
    let host = PluginHost::new(Arc::new(parking_lot::RwLock::new(None)));
    let t = Instant::now();
    let prepared = host.prepare(wasm.clone()).0.expect("prepare");
    let compile = t.elapsed();
    let plugin_id = prepared.descriptor.id.clone();
    // Imported interfaces, for the printout (outside the timed calls).
    let engine = wasmtime::Engine::default();
    let imports = wasmtime::component::Component::new(&engine, &wasm)
        .map(|c| c.component_type().imports(&engine).count())
        .unwrap_or(0);
    host.load(vec![crm_module::plugins::registry::StoredPlugin {
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
    }]);
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
        assert!(host.run_step(&plugin_id, &call).result.is_ok());
    }
    let mut samples = Vec::with_capacity(calls);
    let t = Instant::now();
    for _ in 0..calls {
        let s = Instant::now();
        let r = host.run_step(&plugin_id, &call);
        samples.push(s.elapsed());
        assert!(r.result.is_ok());
    }
    let total = t.elapsed();
    samples.sort();
    Overhead {
        name: plugin_id,
        bytes: wasm.len(),
        imports,
        compile,
        per_call: total / calls as u32,
        samples,
    }
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
    let args: Vec<String> = std::env::args().collect();
    let given = args
        .iter()
        .position(|a| a == "--wasm")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from);
    let trivial_path = root.join("plugins/dist/trivial_step.wasm");
    let components = match &given {
        Some(path) => vec![path.clone()],
        None => vec![
            trivial_path.clone(),
            root.join("plugins/dist/test_steps.wasm"),
        ],
    };

    println!("crm-module plugin benchmark");
    println!(
        "  machine      {} CPUs",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    // --- per-call overhead, in process -----------------------------------
    let measured: Vec<Overhead> = components.iter().map(|p| overhead(p, calls)).collect();

    // --- custom-step calls through the engine ----------------------------
    let engine_wasm = given.unwrap_or(trivial_path);
    let plugin_id = &measured[0].name;
    let dir = tempfile::tempdir().expect("tempdir");
    let m = Module::open(
        &dir.path().join("bench.db"),
        r#"{"clock": {"mode": "manual", "start": "2026-01-05T14:00:00Z"},
            "initial_settings": {"practice_name": "Bench", "time_zone": "America/New_York", "default_run_window": {"mode": "any_time"}}}"#,
    )
    .expect("open");
    m.execute(
        &json!({"command": "plugin.install", "path": engine_wasm.to_string_lossy()}).to_string(),
    )
    .expect("install");
    m.execute(&json!({"command": "automation.create", "automation_id": "noop", "definition": {
        "name": "noop", "trigger": {"type": "contact_created"},
        "steps": [{"id": "s1", "type": "custom", "plugin_id": plugin_id, "step_type": "noop", "config": {}}]}}).to_string())
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

    let us = |d: Duration| d.as_secs_f64() * 1e6;
    for o in &measured {
        let pct =
            |p: f64| o.samples[((o.samples.len() as f64 * p) as usize).min(o.samples.len() - 1)];
        println!();
        println!(
            "  {} ({} bytes, {} imported interfaces)",
            o.name, o.bytes, o.imports
        );
        println!(
            "    compile + link + describe (install)      {:>10.1} ms",
            o.compile.as_secs_f64() * 1e3
        );
        println!(
            "    noop step call, per call ({calls} on 1 thread) {:>6.2} µs   ({:.0} calls/s)",
            us(o.per_call),
            1e6 / us(o.per_call)
        );
        println!(
            "    p50 / p99 / max                          {:>10.2} / {:.2} / {:.2} µs",
            us(pct(0.50)),
            us(pct(0.99)),
            us(*o.samples.last().unwrap())
        );
    }
    println!();
    println!(
        "  custom steps through the engine ({plugin_id} noop, {contacts} contacts, batches of 1,000)"
    );
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
