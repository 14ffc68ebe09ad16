//! The wasmtime side: one [`Engine`] per module, components compiled once and
//! pre-linked, a fresh instance per call from the pooling allocator, and the
//! limits of every call (epoch deadline, fuel, memory cap, output cap).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap};

use super::contract::sender_world::exports::crm::plugin::sender;
use super::contract::sender_world::{SenderAdapter, SenderAdapterPre};
use super::contract::step_world::exports::crm::plugin::step;
use super::contract::step_world::{StepPlugin, StepPluginPre};
use super::contract::{self, PluginKind};
use super::limits::MAX_MEMORY_BYTES;
use super::redact::Redactor;
use super::sandbox::{CallState, PluginSettings};
use crate::error::{Error, Result};

/// How often the epoch ticker advances the engine's epoch: the granularity
/// of call deadlines.
pub const TICK: Duration = Duration::from_millis(2);
/// The largest component accepted.
pub const MAX_COMPONENT_BYTES: usize = 32 * 1024 * 1024;
/// The WASI interface whose waits [`bound_waits`] shortens: the version
/// wasmtime-wasi defines (a component importing an older 0.2 version is
/// linked to it).
const MONOTONIC_CLOCK: &str = "wasi:clocks/monotonic-clock@0.2.12";
/// Calls that may run at once (instances in the pool).
const POOL_INSTANCES: u32 = 64;
/// Bytes of each linear memory kept mapped between calls (see `Runtime::new`).
const KEEP_RESIDENT: usize = 4 * 1024 * 1024;

/// Replaces WASI's `monotonic-clock.subscribe-duration` and
/// `subscribe-instant` with versions that never wait past the call's
/// deadline.
///
/// The epoch deadline interrupts WebAssembly code only: a plugin blocked
/// inside a host call is not interrupted. `std::thread::sleep` (and any
/// `poll` on a clock subscription) blocks in wasmtime-wasi's host code, so
/// a plugin sleeping for an hour held its pool thread for the hour, and one
/// sleeping forever held it until `crm_close`, which then never returned.
/// Clock subscriptions are the only waits a plugin has (no sockets, stdin
/// at its end, output streams never full; `fetch` has its own deadline):
/// with them cut to the time left, the plugin wakes at its deadline, and
/// the call fails as past it ([`CallState::overran`]) whatever it answers,
/// if the epoch interruption has not stopped it first.
fn bound_waits(linker: &mut Linker<CallState>) -> wasmtime::Result<()> {
    use wasmtime::StoreContextMut;
    use wasmtime_wasi::clocks::WasiClocksView;
    use wasmtime_wasi::p2::bindings::clocks::monotonic_clock::Host;
    linker.allow_shadowing(true);
    let mut clock = linker.instance(MONOTONIC_CLOCK)?;
    clock.func_wrap(
        "subscribe-duration",
        |mut store: StoreContextMut<'_, CallState>, (nanos,): (u64,)| {
            let state = store.data_mut();
            let nanos = state.bounded_wait(nanos);
            Ok((state.clocks().subscribe_duration(nanos)?,))
        },
    )?;
    clock.func_wrap(
        "subscribe-instant",
        |mut store: StoreContextMut<'_, CallState>, (when,): (u64,)| {
            let state = store.data_mut();
            let now = state.clocks().now()?;
            let until = now.saturating_add(state.bounded_wait(when.saturating_sub(now)));
            Ok((state.clocks().subscribe_instant(until)?,))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// A compiled, pre-linked plugin: instantiate it per call.
#[derive(Clone)]
pub enum Linked {
    /// A step plugin.
    Step(StepPluginPre<CallState>),
    /// A sender adapter.
    Sender(SenderAdapterPre<CallState>),
}

impl Linked {
    /// Which world.
    pub fn kind(&self) -> PluginKind {
        match self {
            Linked::Step(_) => PluginKind::Step,
            Linked::Sender(_) => PluginKind::Sender,
        }
    }
}

/// Why a call did not return a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallFailure {
    /// What happened (codes and figures, never patient data).
    pub reason: String,
    /// True when trying again later may succeed (no free instance slot);
    /// false for the plugin's own faults (trap, deadline, memory, output).
    pub transient: bool,
}

impl CallFailure {
    /// The plugin's own fault: not retried.
    pub fn permanent(reason: impl Into<String>) -> CallFailure {
        CallFailure {
            reason: reason.into(),
            transient: false,
        }
    }

    /// May succeed later: retried with the outbox backoff.
    pub fn transient(reason: impl Into<String>) -> CallFailure {
        CallFailure {
            reason: reason.into(),
            transient: true,
        }
    }
}

/// A call's result with what the plugin logged.
pub struct Called<T> {
    /// The plugin's answer, or why there is none.
    pub result: std::result::Result<T, CallFailure>,
    /// Log lines (scrubbed of the call's patient values), and how many were
    /// dropped.
    pub logs: Vec<(crate::host::LogLevel, String)>,
    /// What the plugin wrote to stderr (a panic message, say), scrubbed.
    pub stderr: String,
    /// Fetch failures by code.
    pub fetch_failures: Vec<&'static str>,
}

/// The engine, the linkers and the epoch ticker.
pub struct Runtime {
    engine: Engine,
    step_linker: Linker<CallState>,
    sender_linker: Linker<CallState>,
    stop: Arc<AtomicBool>,
    ticker: Option<JoinHandle<()>>,
}

impl Runtime {
    /// Builds the engine (component model, pooling allocator, epoch
    /// interruption, fuel) and starts the epoch ticker thread.
    ///
    /// # Errors
    ///
    /// [`Error::Internal`] when wasmtime cannot start on this machine.
    pub fn new() -> Result<Runtime> {
        let internal = |e: wasmtime::Error| Error::Internal(format!("plugin engine: {e}"));
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(POOL_INSTANCES)
            .total_core_instances(POOL_INSTANCES * 8)
            .total_memories(POOL_INSTANCES * 2)
            .total_tables(POOL_INSTANCES * 8)
            .max_core_instances_per_component(16)
            .max_memories_per_component(4)
            .max_tables_per_component(16)
            .max_memory_size(MAX_MEMORY_BYTES as usize)
            // Reset a freed slot by rewriting only the pages the call
            // dirtied (found with PAGEMAP_SCAN on Linux 6.7+, else the low
            // pages by memset) instead of unmapping them: the next call then
            // takes no page faults. Most of a trivial call's cost otherwise.
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(64 * 1024)
            .pagemap_scan(wasmtime::Enabled::Auto);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .consume_fuel(true)
            .memory_reservation(MAX_MEMORY_BYTES)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(internal)?;
        let mut step_linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut step_linker).map_err(internal)?;
        bound_waits(&mut step_linker).map_err(internal)?;
        StepPlugin::add_to_linker::<CallState, HasSelf<CallState>>(&mut step_linker, |s| s)
            .map_err(internal)?;
        let mut sender_linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut sender_linker).map_err(internal)?;
        bound_waits(&mut sender_linker).map_err(internal)?;
        SenderAdapter::add_to_linker::<CallState, HasSelf<CallState>>(&mut sender_linker, |s| s)
            .map_err(internal)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (e2, s2) = (engine.clone(), stop.clone());
        let ticker = std::thread::Builder::new()
            .name("crm-plugin-epoch".into())
            .spawn(move || {
                while !s2.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    e2.increment_epoch();
                }
            })
            .map_err(|e| Error::Internal(format!("cannot start the epoch ticker: {e}")))?;
        Ok(Runtime {
            engine,
            step_linker,
            sender_linker,
            stop,
            ticker: Some(ticker),
        })
    }

    /// Compiles and links a component, checking its world and contract
    /// version; returns it with that version.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] with a clear reason: too large, a core module
    /// rather than a component, malformed, not a CRM plugin, a contract
    /// version this host cannot load, or imports the host does not provide.
    pub fn link(&self, wasm: &[u8]) -> Result<(Linked, String)> {
        if wasm.len() > MAX_COMPONENT_BYTES {
            return Err(Error::TooLarge(format!(
                "a plugin is limited to {} MiB",
                MAX_COMPONENT_BYTES / (1024 * 1024)
            )));
        }
        if wasm.len() < 8 || &wasm[..4] != b"\0asm" {
            return Err(Error::invalid(
                "not a WebAssembly component (the file does not start with the wasm magic bytes)",
            ));
        }
        if wasm[4..8] == [1, 0, 0, 0] {
            return Err(Error::invalid(
                "a core WebAssembly module, not a component: build the plugin for wasm32-wasip2",
            ));
        }
        let component = Component::new(&self.engine, wasm)
            .map_err(|e| Error::invalid(format!("the component does not load: {e}")))?;
        let (kind, version) = contract::inspect(&self.engine, &component)?;
        let imports = |e: wasmtime::Error| {
            Error::invalid(format!(
                "the plugin imports something this module does not provide to a {} plugin: {e}",
                kind.as_str()
            ))
        };
        let linked = match kind {
            PluginKind::Step => Linked::Step(
                StepPluginPre::new(
                    self.step_linker
                        .instantiate_pre(&component)
                        .map_err(imports)?,
                )
                .map_err(imports)?,
            ),
            PluginKind::Sender => Linked::Sender(
                SenderAdapterPre::new(
                    self.sender_linker
                        .instantiate_pre(&component)
                        .map_err(imports)?,
                )
                .map_err(imports)?,
            ),
        };
        Ok((linked, version))
    }

    fn store(&self, settings: &Arc<PluginSettings>, redactor: &Arc<Redactor>) -> Store<CallState> {
        let limits = settings.limits;
        let deadline = Instant::now() + Duration::from_millis(limits.deadline_ms);
        let mut store = Store::new(
            &self.engine,
            CallState::new(settings.clone(), deadline, redactor.clone()),
        );
        store.limiter(|s| &mut s.memory);
        // Fuel is enabled on the engine, so this cannot fail.
        let _ = store.set_fuel(limits.fuel);
        let tick = TICK.as_millis() as u64;
        store.set_epoch_deadline(limits.deadline_ms.div_ceil(tick) + 1);
        store.epoch_deadline_trap();
        store
    }

    /// Runs `f` on a fresh instance of a step plugin; its log lines and stderr
    /// are scrubbed of the patient values `redactor` holds.
    pub fn with_step<T>(
        &self,
        pre: &StepPluginPre<CallState>,
        settings: &Arc<PluginSettings>,
        redactor: &Arc<Redactor>,
        f: impl FnOnce(&step::Guest, &mut Store<CallState>) -> wasmtime::Result<T>,
    ) -> Called<T> {
        let mut store = self.store(settings, redactor);
        let result = match pre.instantiate(&mut store) {
            Ok(instance) => f(instance.crm_plugin_step(), &mut store)
                .map_err(|e| classify(&e, &store, settings, false)),
            Err(e) => Err(classify(&e, &store, settings, true)),
        };
        finish(store, result)
    }

    /// Runs `f` on a fresh instance of a sender adapter; its log lines and stderr
    /// are scrubbed of the patient values `redactor` holds.
    pub fn with_sender<T>(
        &self,
        pre: &SenderAdapterPre<CallState>,
        settings: &Arc<PluginSettings>,
        redactor: &Arc<Redactor>,
        f: impl FnOnce(&sender::Guest, &mut Store<CallState>) -> wasmtime::Result<T>,
    ) -> Called<T> {
        let mut store = self.store(settings, redactor);
        let result = match pre.instantiate(&mut store) {
            Ok(instance) => f(instance.crm_plugin_sender(), &mut store)
                .map_err(|e| classify(&e, &store, settings, false)),
            Err(e) => Err(classify(&e, &store, settings, true)),
        };
        finish(store, result)
    }
}

fn finish<T>(
    mut store: Store<CallState>,
    mut result: std::result::Result<T, CallFailure>,
) -> Called<T> {
    let stderr = store.data().stderr();
    let state = store.data_mut();
    if result.is_ok() && state.overran() {
        result = Err(deadline_exceeded(&state.settings().limits));
    }
    let mut logs = std::mem::take(&mut state.logs);
    if state.logs_dropped > 0 {
        logs.push((
            crate::host::LogLevel::Warn,
            format!("{} more log lines dropped", state.logs_dropped),
        ));
    }
    Called {
        result,
        logs,
        stderr,
        fetch_failures: std::mem::take(&mut state.fetch_failures),
    }
}

/// Turns a wasmtime error into the reason recorded for the step or message.
fn classify(
    e: &wasmtime::Error,
    store: &Store<CallState>,
    settings: &PluginSettings,
    instantiating: bool,
) -> CallFailure {
    let limits = settings.limits;
    if let Some(asked) = store.data().memory.refused {
        return CallFailure::permanent(format!(
            "memory cap of {} MiB reached (the plugin asked for {} MiB)",
            limits.memory_bytes / (1024 * 1024),
            asked.div_ceil(1024 * 1024)
        ));
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => deadline_exceeded(&limits),
        Some(Trap::OutOfFuel) => {
            CallFailure::permanent(format!("instruction budget of {} exhausted", limits.fuel))
        }
        Some(Trap::UnreachableCodeReached) => {
            CallFailure::permanent("trap: unreachable executed (the plugin panicked or aborted)")
        }
        Some(trap) => CallFailure::permanent(format!("trap: {trap}")),
        None if instantiating => {
            CallFailure::transient(format!("could not instantiate the plugin: {e}"))
        }
        None => CallFailure::permanent(format!("the call failed: {e}")),
    }
}

fn deadline_exceeded(limits: &super::limits::Limits) -> CallFailure {
    CallFailure::permanent(format!("deadline of {} ms exceeded", limits.deadline_ms))
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
    }
}
