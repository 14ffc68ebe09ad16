//! The embeddable module: open a database, push events, run commands, query
//! views, advance the clock, wait until idle.
//!
//! # Threads
//! [`Module`] is `Send + Sync`: every method may be called from any thread,
//! concurrently, except that [`Module::close`] consumes it. Writes are
//! serialized through the worker thread; views read through their own
//! connection and see the last committed state. Host callbacks run on the
//! module's dispatcher thread; [`Host::log`] also runs on the worker's
//! thread and the plugin threads (never on a caller's), and on the worker's thread the methods that wait for the worker (push, execute,
//! tracking hits, clock advances, [`Module::wait_idle`]) return
//! [`Error::Conflict`] at once instead of waiting for themselves.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Sender, bounded, unbounded};
use parking_lot::{Mutex, RwLock};
use rusqlite::Connection;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::clock::{Clock, Millis, parse_rfc3339};
use crate::commands::Command;
use crate::core::ingest::Outcome;
use crate::error::{Error, Result, parse_json};
use crate::event::Event;
use crate::host::{Host, HostSlot};
use crate::settings::{Resolved, Settings};
use crate::store::{self, Access, StorageConfig};
use crate::worker::{Request, Worker, load_settings};

/// Which clock the module reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClockConfig {
    /// Wall-clock time.
    // Written `{}`, not as a unit variant, so that serde refuses a field
    // given with it (a `start`).
    System {},
    /// Time moves only when the host advances it.
    Manual {
        /// Start instant, RFC 3339. A database that recorded a later
        /// instant starts the clock there: the module's time never goes
        /// back.
        start: String,
    },
}

impl Default for ClockConfig {
    fn default() -> Self {
        ClockConfig::System {}
    }
}

/// The JSON configuration given to [`Module::open`].
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenConfig {
    /// The clock.
    #[serde(default)]
    pub clock: ClockConfig,
    /// Settings to store when the database is new (ignored afterwards: use the
    /// `settings.update` command).
    #[serde(default)]
    pub initial_settings: Option<Settings>,
    /// SQLite's page cache and memory-mapped reads (defaults: 32 MiB cache,
    /// no mapping).
    #[serde(default)]
    pub storage: StorageConfig,
}

/// What one pushed event came to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct PushResult {
    /// The host's event id.
    pub event_id: String,
    /// `applied`, `duplicate` (seen before: no effect) or `stale` (an older
    /// contact update: recorded, properties kept; or an opt-out older
    /// than every channel's last subscription change: recorded only).
    pub outcome: String,
}

/// The module.
pub struct Module {
    tx: Sender<Request>,
    clock: Arc<Clock>,
    host: HostSlot,
    settings: Arc<RwLock<Resolved>>,
    reader: Mutex<Option<Connection>>,
    /// Set when closing starts: a view asked for then (a host callback
    /// answering during the close) does not open the views' connection
    /// again, which would close after the writer's and leave the log.
    closing: std::sync::atomic::AtomicBool,
    plugins: Arc<crate::plugins::PluginHost>,
    path: PathBuf,
    storage: StorageConfig,
    threads: Mutex<Vec<JoinHandle<()>>>,
    rows_written: Arc<AtomicU64>,
    /// The worker's thread: a call that waits for the worker is refused
    /// there (a host's log callback runs on it) instead of waiting forever.
    worker_thread: std::thread::ThreadId,
    /// Tests: the next view panics inside its read transaction.
    #[cfg(test)]
    view_fault: std::sync::atomic::AtomicBool,
    /// The only handle on the database file. Declared last: released after
    /// [`Drop`] has stopped the threads and every field before it closed
    /// its connection.
    _lock: store::HandleLock,
}

fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::Applied => "applied",
        Outcome::Duplicate => "duplicate",
        Outcome::Stale => "stale",
    }
}

impl Module {
    /// Opens (creating if needed) the database at `path` with a JSON config.
    pub fn open(path: &Path, config_json: &str) -> Result<Module> {
        let config: OpenConfig = if config_json.trim().is_empty() {
            OpenConfig::default()
        } else {
            // serde would read a JSON array as the fields in order.
            if !config_json.trim_start().starts_with('{') {
                return Err(Error::invalid("config: must be a JSON object"));
            }
            parse_json(config_json)?
        };
        Module::open_with(path, config)
    }

    /// Opens with a typed config.
    pub fn open_with(path: &Path, config: OpenConfig) -> Result<Module> {
        let clock = Arc::new(match &config.clock {
            ClockConfig::System {} => Clock::system(),
            ClockConfig::Manual { start } => Clock::manual(
                parse_rfc3339(start).map_err(|m| Error::invalid(format!("clock.start: {m}")))?,
            ),
        });
        // Stored in the canonical form `settings.update` stores (trimmed,
        // numbers in E.164).
        let initial_settings = match &config.initial_settings {
            Some(s) => Some(s.validate().map_err(|e| e.at("initial_settings"))?.doc),
            None => None,
        };
        // Used only for a new database: a database that has settings keeps
        // opening with a config whose adapter id never took effect.
        if let Some(s) = &initial_settings
            && !path.exists()
        {
            s.check_adapter_ids()
                .map_err(|e| e.at("initial_settings"))?;
        }
        let storage = config.storage;
        storage.validate()?;
        let (mut conn, mut lock) = store::open_writer(path, &storage)?;
        // The clock never goes back across opens (`clock`): a clock behind
        // the database's last recorded instant starts at it.
        if let Some(last) = store::last_recorded_at(&conn)? {
            clock.not_before(last);
        }
        let install_id = match store::get_setting(&conn, "install_id")? {
            Some(Value::String(s)) => s,
            _ => {
                let id = new_install_id(path);
                store::put_setting(&conn, "install_id", &Value::String(id.clone()))?;
                id
            }
        };
        crate::messaging::compose::ensure_key_ring(&conn, clock.now())?;
        if store::get_setting(&conn, "settings")?.is_none() {
            let doc = initial_settings.unwrap_or_default();
            let v = serde_json::to_value(&doc).map_err(|e| Error::Internal(e.to_string()))?;
            store::put_setting(&conn, "settings", &v)?;
        }
        let settings = Arc::new(RwLock::new(load_settings(&conn)?));
        let host: HostSlot = Arc::new(RwLock::new(None));
        let plugins = Arc::new(crate::plugins::PluginHost::new(host.clone()));
        let (tx, rx) = unbounded();
        let (jobs_tx, jobs_rx) = bounded(1024);
        // Checkpoints off the worker's thread; the worker stops and joins
        // it at close, before its own connection closes.
        let checkpointer = store::checkpoint::start(path, &mut conn, &storage)?;
        let mut worker = Worker::new(
            conn,
            clock.clone(),
            settings.clone(),
            install_id,
            host.clone(),
            plugins.clone(),
            jobs_tx,
        )?;
        worker.set_checkpointer(checkpointer);
        // Installed plugins are compiled now (the engine starts only if there are any).
        worker.reload_plugins();
        let rows_written = worker.rows_written();
        let rescreen = worker.rescreen();
        let (plugin_jobs, mut threads) = crate::plugins::pool::spawn(
            crate::plugins::pool::default_threads(),
            plugins.clone(),
            tx.clone(),
            rescreen.clone(),
        )?;
        let reader = store::open_with(path, Access::Read, &storage)?;
        let w = std::thread::Builder::new()
            .name("crm-worker".into())
            // Trigger cascades recurse (up to `core::MAX_CASCADE` deep).
            .stack_size(8 * 1024 * 1024)
            .spawn(move || worker.run(rx))
            .map_err(|e| Error::Internal(format!("cannot start the worker: {e}")))?;
        let (host2, settings2, tx2, clock2) =
            (host.clone(), settings.clone(), tx.clone(), clock.clone());
        let d = std::thread::Builder::new()
            .name("crm-dispatcher".into())
            .spawn(move || {
                crate::host::run_dispatcher(
                    jobs_rx,
                    host2,
                    settings2,
                    tx2,
                    plugin_jobs,
                    rescreen,
                    clock2,
                )
            })
            .map_err(|e| Error::Internal(format!("cannot start the dispatcher: {e}")))?;
        let worker_thread = w.thread().id();
        threads.insert(0, d);
        threads.insert(0, w);
        // Opened: the lock file stays beside the database from now on.
        lock.keep();
        Ok(Module {
            tx,
            clock,
            host,
            settings,
            reader: Mutex::new(Some(reader)),
            closing: std::sync::atomic::AtomicBool::new(false),
            plugins,
            path: path.to_path_buf(),
            storage,
            threads: Mutex::new(threads),
            rows_written,
            worker_thread,
            #[cfg(test)]
            view_fault: std::sync::atomic::AtomicBool::new(false),
            _lock: lock,
        })
    }

    /// Sets (or clears) the host callbacks. Pending effects are delivered
    /// once set. Refused with [`Error::Closed`], changing nothing, once the
    /// worker is gone.
    pub fn set_host(&self, host: Option<Arc<dyn Host>>) -> Result<()> {
        let old = std::mem::replace(&mut *self.host.write(), host);
        if self.tx.send(Request::HostChanged).is_err() {
            *self.host.write() = old;
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// Whether host callbacks are registered (see [`Module::set_host`]).
    pub fn has_host(&self) -> bool {
        self.host.read().is_some()
    }

    /// Refuses a call that would wait for the worker when it comes from
    /// the worker's own thread (a host's log callback): it would wait for
    /// itself forever.
    fn not_on_worker(&self) -> Result<()> {
        if std::thread::current().id() == self.worker_thread {
            return Err(Error::Conflict(
                "this call waits for the module's worker and cannot be made from its thread \
                 (a log callback running there): nothing was done"
                    .into(),
            ));
        }
        Ok(())
    }

    fn call<T>(&self, make: impl FnOnce(Sender<Result<T>>) -> Request) -> Result<T> {
        self.not_on_worker()?;
        let (reply, rx) = bounded(1);
        self.tx.send(make(reply)).map_err(|_| Error::Closed)?;
        rx.recv().map_err(|_| self.dropped())?
    }

    /// Why a request's reply was dropped: the worker is gone (closed), or,
    /// when it still takes requests, a defect stopped the turn that held
    /// this one and the worker rolled it back (see `Worker::run`).
    fn dropped(&self) -> Error {
        if self.tx.send(Request::HostChanged).is_err() {
            return Error::Closed;
        }
        Error::Internal("a defect in the module stopped this request; it was rolled back".into())
    }

    /// Pushes one event (JSON). Durable when it returns `Ok`.
    pub fn push(&self, event_json: &str) -> Result<PushResult> {
        self.not_on_worker()?;
        let ev = Event::parse(event_json)?;
        let id = ev.event_id.clone();
        let out = self.call(|reply| Request::Push {
            events: vec![ev],
            reply,
        })?;
        Ok(PushResult {
            event_id: id,
            outcome: outcome_name(out[0]).into(),
        })
    }

    /// Pushes a JSON array of events atomically: all are applied or none.
    pub fn push_batch(&self, events_json: &str) -> Result<Vec<PushResult>> {
        self.not_on_worker()?;
        let events = Event::parse_batch(events_json)?;
        self.push_events(events)
    }

    /// Pushes events [`Event::parse_batch`] validated, atomically. Not
    /// public: an [`Event`]'s fields are, so a caller could build one that
    /// skipped validation (a contact without an id, properties not
    /// normalized).
    fn push_events(&self, events: Vec<Event>) -> Result<Vec<PushResult>> {
        let ids: Vec<String> = events.iter().map(|e| e.event_id.clone()).collect();
        let out = self.call(|reply| Request::Push { events, reply })?;
        Ok(ids
            .into_iter()
            .zip(out)
            .map(|(event_id, o)| PushResult {
                event_id,
                outcome: outcome_name(o).into(),
            })
            .collect())
    }

    /// Runs a command (JSON in, JSON out).
    pub fn execute(&self, command_json: &str) -> Result<Value> {
        self.not_on_worker()?;
        if command_json.len() > crate::event::MAX_BATCH_BYTES {
            return Err(Error::TooLarge("a command is limited to 64 MiB".into()));
        }
        let command = Command::parse(command_json)?;
        self.execute_command(command)
    }

    /// Runs a typed command. `plugin.install` compiles and describes the
    /// component here, on the caller's thread, before the worker stores it.
    pub fn execute_command(&self, mut command: Command) -> Result<Value> {
        // Refused before a component is read and compiled on the worker's
        // thread, inside its open transaction.
        self.not_on_worker()?;
        if let Command::PluginInstall {
            path,
            wasm_base64,
            prepared,
            ..
        } = &mut command
        {
            let wasm = read_component(path.as_deref(), wasm_base64.as_deref())?;
            let (ready, lines) = self.plugins.prepare(wasm);
            if !lines.is_empty() {
                // The host's `log` callback runs on the module's threads.
                let _ = self.tx.send(Request::Log { lines });
            }
            *prepared = Some(Box::new(ready?));
            // The bytes travel in `prepared`; the base64 copy is not needed.
            *wasm_base64 = None;
        }
        self.call(|reply| Request::Command { command, reply })
    }

    /// Answers a tracking hit from the host's web tier (JSON in: `method`,
    /// `path`, `user_agent`, `ip_class`; JSON out: `status`, `content_type`,
    /// `location`, `body_base64`, `body_text`, `cache_control`) and records
    /// the open, click or unsubscribe. See [`crate::core::hits`].
    pub fn tracking_hit(&self, request_json: &str) -> Result<Value> {
        self.not_on_worker()?;
        let hit: crate::core::hits::Hit = parse_json(request_json)?;
        self.call(|reply| Request::Hit { hit, reply })
    }

    /// Builds a view model (JSON) by screen name.
    pub fn view(&self, name: &str, params_json: &str) -> Result<Value> {
        let params: Value = if params_json.trim().is_empty() {
            Value::Object(Default::default())
        } else {
            parse_json(params_json)?
        };
        if name == "schemas" {
            crate::views::no_params(&params)?;
            return Ok(crate::schema::all());
        }
        let settings = self.settings.read().clone();
        let mut guard = self.reader.lock();
        if self.closing.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        if guard.is_none() {
            *guard = Some(store::open_with(&self.path, Access::Read, &self.storage)?);
        }
        // One consistent snapshot for the whole view, ended when `snapshot`
        // drops: also when the view code fails or panics.
        let snapshot = Snapshot::begin(&mut guard)?;
        #[cfg(test)]
        if self.view_fault.swap(false, Ordering::SeqCst) {
            panic!("a fault injected in a view");
        }
        crate::views::query(snapshot.conn()?, &settings, name, &params, self.clock.now())
    }

    /// The rows the engine has written since this module opened: every row
    /// its writer inserted, updated or deleted, as SQLite counts them
    /// (`sqlite3_total_changes64` on the worker's connection, so updates in
    /// place count as well as new rows; rows of a refused request count even
    /// though they were rolled back; a row an `ON CONFLICT DO NOTHING`
    /// skipped does not). Published after each of the worker's rounds,
    /// before it answers them: once a push or [`Module::wait_idle`] returns,
    /// the count includes its writes. For monitoring and benchmarks.
    pub fn rows_written(&self) -> u64 {
        self.rows_written.load(Ordering::Acquire)
    }

    /// The module's current time.
    pub fn now(&self) -> Millis {
        self.clock.now()
    }

    /// Advances the manual clock by `ms`, running everything that falls due on
    /// the way, each at its own instant, and handing effects over when they
    /// fall due: the advance waits for the answers before the clock goes on
    /// (for 10 seconds at most without one). Errors on the system clock. Not
    /// one transaction: an advance that fails may have moved the clock part
    /// of the way (what was due before that instant ran and is committed).
    pub fn advance_clock(&self, ms: i64) -> Result<()> {
        if !self.clock.is_manual() {
            return Err(Error::Conflict(
                "the clock is the system clock: only a manual clock can be advanced".into(),
            ));
        }
        if !(0..=10 * 366 * crate::clock::DAY).contains(&ms) {
            return Err(Error::invalid("ms: must be 0 to ten years"));
        }
        self.call(|reply| Request::AdvanceBy { by: ms, reply })
    }

    /// Waits until nothing is queued, due or being delivered (or `timeout`).
    /// A `timeout` of zero asks whether the module is idle now: the worker
    /// answers at its next look, after the round it may be in.
    pub fn wait_idle(&self, timeout: Duration) -> Result<()> {
        self.not_on_worker()?;
        let (reply, rx) = bounded(1);
        let start = std::time::Instant::now();
        // A far deadline (`Duration::MAX`) is no deadline.
        let deadline = start
            .checked_add(timeout)
            .unwrap_or(start + Duration::from_secs(100 * 365 * 86_400));
        self.tx
            .send(Request::WaitIdle { reply, deadline })
            .map_err(|_| Error::Closed)?;
        // The worker answers at its first look after the deadline, so an
        // idle module answers a wait of zero; a worker in the middle of a
        // long round is given a little longer to say so.
        let not_idle = || Error::Timeout("the module did not become idle in time".into());
        match rx.recv_timeout(timeout.saturating_add(WAIT_IDLE_GRACE)) {
            Ok(true) => Ok(()),
            Ok(false) | Err(crossbeam_channel::RecvTimeoutError::Timeout) => Err(not_idle()),
            Err(_) => Err(Error::Closed),
        }
    }

    /// Stops the threads and closes the database. Nothing new is handed over
    /// once it starts; it waits for the deliveries under way (a host
    /// callback, an email the SMTP relay is sending, at most its
    /// `timeout_seconds` per reply, a plugin call, at most its deadline)
    /// and records their answers, so that what was accepted is not offered
    /// again. Effects not yet accepted stay in the outbox and are delivered
    /// after the next open. Dropping the module does the same.
    pub fn close(self) {
        self.shutdown();
    }

    fn shutdown(&self) {
        // The views' connection closes first: it is read-only, and a
        // read-only connection closing last leaves the write-ahead log
        // beside the file. The last writable one to close folds the log
        // into the database file and removes it, so the closed file alone
        // holds everything (a host may copy or move it).
        {
            let mut reader = self.reader.lock();
            self.closing.store(true, Ordering::SeqCst);
            reader.take();
        }
        let _ = self.tx.send(Request::Shutdown);
        let threads: Vec<_> = self.threads.lock().drain(..).collect();
        // The worker exits on Shutdown; dropping its job sender ends the dispatcher.
        for t in threads {
            let _ = t.join();
        }
    }
}

/// How much longer than its timeout [`Module::wait_idle`] waits for the
/// worker's answer, which comes after the round it is in.
const WAIT_IDLE_GRACE: Duration = Duration::from_secs(1);

impl Drop for Module {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A read transaction on the views' connection. Dropping it ends the
/// transaction, whether the view returned or panicked; should that fail,
/// the connection is dropped (the next view opens a fresh one), so a view
/// never leaves the connection inside a transaction for the next one.
struct Snapshot<'a> {
    slot: &'a mut Option<Connection>,
}

impl<'a> Snapshot<'a> {
    fn begin(slot: &'a mut Option<Connection>) -> Result<Snapshot<'a>> {
        slot.as_ref().ok_or(Error::Closed)?.execute_batch("BEGIN")?;
        Ok(Snapshot { slot })
    }

    fn conn(&self) -> Result<&Connection> {
        self.slot.as_ref().ok_or(Error::Closed)
    }
}

impl Drop for Snapshot<'_> {
    fn drop(&mut self) {
        let ended = self
            .slot
            .as_ref()
            .is_none_or(|c| c.execute_batch("COMMIT").is_ok() || c.is_autocommit());
        if !ended {
            *self.slot = None;
        }
    }
}

/// The component bytes of `plugin.install`: from a path or base64, exactly one.
fn read_component(path: Option<&str>, base64_text: Option<&str>) -> Result<Vec<u8>> {
    use base64::Engine as _;
    let max = crate::plugins::runtime::MAX_COMPONENT_BYTES;
    match (path, base64_text) {
        (Some(p), None) => {
            use std::io::Read as _;
            let cannot =
                |e: std::io::Error| Error::invalid(format!("path: cannot read {p:?}: {e}"));
            let too_large = || {
                Error::TooLarge(format!(
                    "path: a plugin is limited to {} MiB",
                    max / (1024 * 1024)
                ))
            };
            let meta = std::fs::metadata(p).map_err(cannot)?;
            // A FIFO or a device would block the caller or never end.
            if !meta.is_file() {
                return Err(Error::invalid(format!("path: {p:?} is not a regular file")));
            }
            if meta.len() > max as u64 {
                return Err(too_large());
            }
            // Bounded as read, for a file that grew since.
            let mut bytes = Vec::new();
            std::fs::File::open(p)
                .and_then(|f| f.take(max as u64 + 1).read_to_end(&mut bytes))
                .map_err(cannot)?;
            if bytes.len() > max {
                return Err(too_large());
            }
            Ok(bytes)
        }
        (None, Some(b)) => {
            if b.len() > max / 3 * 4 + 4 {
                return Err(Error::TooLarge(format!(
                    "wasm_base64: a plugin is limited to {} MiB",
                    max / (1024 * 1024)
                )));
            }
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .map_err(|_| Error::invalid("wasm_base64: not base64"))
        }
        _ => Err(Error::invalid(
            "plugin.install takes either path or wasm_base64",
        )),
    }
}

fn new_install_id(path: &Path) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write(path.to_string_lossy().as_bytes());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    format!("{:012x}", h.finish() & 0xffff_ffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_reply_is_internal_while_the_worker_runs_and_closed_after() {
        let dir = tempfile::tempdir().expect("temp dir");
        let m = Module::open(&dir.path().join("m.db"), "").expect("open");
        assert!(matches!(m.dropped(), Error::Internal(_)));
        m.shutdown();
        assert!(matches!(m.dropped(), Error::Closed));
        assert!(matches!(
            m.execute(r#"{"command": "list.create", "list_id": "a", "name": "A"}"#),
            Err(Error::Closed)
        ));
    }

    /// A wait of zero asks "idle now?": an idle module says yes every
    /// time, a busy one says no at once.
    #[test]
    fn a_wait_of_zero_answers_whether_the_module_is_idle_now() {
        struct Holds(parking_lot::Mutex<()>);
        impl Host for Holds {
            fn deliver(
                &self,
                _: crate::host::Delivery<'_>,
            ) -> (crate::outbox::HostAnswer, Option<String>) {
                let _held = self.0.lock();
                (crate::outbox::HostAnswer::Accepted, None)
            }
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let m = Module::open(
            &dir.path().join("m.db"),
            r#"{"clock": {"mode": "manual", "start": "2030-01-01T00:00:00Z"}}"#,
        )
        .expect("open");
        m.wait_idle(Duration::from_secs(30)).expect("idle");
        for i in 0..200 {
            m.wait_idle(Duration::ZERO)
                .unwrap_or_else(|e| panic!("call {i}: {e}"));
        }
        let host = Arc::new(Holds(parking_lot::Mutex::new(())));
        let held = host.0.lock();
        m.set_host(Some(host.clone())).expect("host");
        m.execute(r#"{"command": "automation.create", "automation_id": "a", "definition": {"name": "T",
            "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
            "steps": [{"type": "create_task", "title": "Call", "assignee": {"kind": "queue", "name": "front_desk"}}]}}"#)
            .expect("automation");
        m.execute(r#"{"command": "automation.activate", "automation_id": "a"}"#)
            .expect("active");
        m.push(r#"{"event_id": "e1", "type": "contact.upserted", "contact": {"id": "c1"}}"#)
            .expect("pushed");
        // The task is with the host, which holds it.
        let start = std::time::Instant::now();
        while m.wait_idle(Duration::ZERO).is_ok() {
            assert!(start.elapsed() < Duration::from_secs(10), "never busy");
        }
        let asked = std::time::Instant::now();
        assert!(matches!(
            m.wait_idle(Duration::ZERO),
            Err(Error::Timeout(_))
        ));
        assert!(asked.elapsed() < WAIT_IDLE_GRACE, "answered at once");
        drop(held);
        m.wait_idle(Duration::from_secs(30)).expect("idle again");
        m.shutdown();
    }

    /// What the published schemas forbid is refused: a field given with a
    /// variant that has none, a config that is not an object.
    #[test]
    fn a_field_with_a_variant_that_has_none_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("m.db");
        for config in [
            r#"{"clock": {"mode": "system", "start": "2030-01-01T00:00:00Z"}}"#,
            "[]",
            r#"[{"mode": "manual", "start": "2030-01-01T00:00:00Z"}]"#,
        ] {
            assert!(
                matches!(Module::open(&path, config), Err(Error::Invalid(_))),
                "{config}"
            );
            assert!(!path.exists(), "{config}");
        }
        let m = Module::open(&path, r#"{"clock": {"mode": "system"}}"#).expect("open");
        for command in [
            r#"{"command": "settings.get", "section": "sms"}"#,
            r#"{"command": "plugin.list", "plugin_id": "x"}"#,
        ] {
            assert!(
                matches!(m.execute(command), Err(Error::Invalid(_))),
                "{command}"
            );
        }
        m.execute(r#"{"command": "settings.get"}"#)
            .expect("settings");
        m.shutdown();
    }

    /// A plugin's path must be a regular file: `/dev/zero` would be read
    /// until memory ran out, a FIFO would block the caller.
    #[test]
    fn a_plugin_path_that_is_no_regular_file_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let m = Module::open(&dir.path().join("m.db"), "").expect("open");
        let folder = dir.path().to_string_lossy().to_string();
        for path in ["/dev/zero", folder.as_str()] {
            let cmd = serde_json::json!({"command": "plugin.install", "path": path});
            match m.execute(&cmd.to_string()) {
                Err(Error::Invalid(message)) => {
                    assert!(message.contains("not a regular file"), "{message}")
                }
                other => panic!("{path}: {other:?}"),
            }
        }
        m.shutdown();
    }

    #[test]
    fn a_view_that_panics_leaves_no_read_transaction_behind() {
        let dir = tempfile::tempdir().expect("temp dir");
        let m = Module::open(&dir.path().join("m.db"), "").expect("open");
        m.view("automation_list", "").expect("a view");
        m.view_fault.store(true, Ordering::SeqCst);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            m.view("automation_list", "")
        }));
        assert!(r.is_err(), "the injected fault panicked");
        // The snapshot of the view that panicked was ended: later views work.
        m.view("automation_list", "").expect("the next view");
        m.view("settings", "").expect("and the one after");
        m.shutdown();
    }

    #[test]
    fn a_second_handle_on_the_same_file_is_refused_until_the_first_closes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("m.db");
        let first = Module::open(&path, "").expect("open");
        first
            .execute(r#"{"command": "list.create", "list_id": "a", "name": "A"}"#)
            .expect("a list");
        match Module::open(
            &path,
            r#"{"clock": {"mode": "manual", "start": "2030-01-01T00:00:00Z"}}"#,
        ) {
            Err(Error::Conflict(message)) => {
                assert!(
                    message.contains("already open in another handle"),
                    "{message}"
                )
            }
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("a second handle opened"),
        }
        // The first handle goes on; another file opens beside it.
        first.view("automation_list", "").expect("view");
        let other = Module::open(&dir.path().join("other.db"), "").expect("another file");
        drop(other);
        drop(first);
        let again = Module::open(&path, "").expect("open after close");
        again.view("automation_list", "").expect("view");
    }

    /// An open that fails leaves nothing beside the database: the lock
    /// file it made goes with it. One an open that succeeded made stays,
    /// and a failed open leaves it too.
    #[test]
    fn a_failed_open_removes_the_lock_file_it_made() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("notes.db");
        let lock = dir.path().join("notes.db-lock");
        std::fs::write(&path, "not a database, but the host's notes\n".repeat(200))
            .expect("a file");
        match Module::open(&path, "") {
            Err(Error::Storage(message)) => {
                assert!(message.contains("not a database"), "{message}")
            }
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("a text file opened as a database"),
        }
        assert!(!lock.exists(), "the failed open left its lock file");
        assert_eq!(
            std::fs::read_to_string(&path).expect("the file").len(),
            "not a database, but the host's notes\n".len() * 200
        );

        // A database from a newer module: refused, and the lock file its
        // earlier opens left stays where it was.
        let newer = dir.path().join("newer.db");
        Module::open(&newer, "").expect("open").close();
        assert!(dir.path().join("newer.db-lock").exists());
        Connection::open(&newer)
            .expect("plain SQLite")
            .pragma_update(None, "user_version", 10_000)
            .expect("a newer schema");
        match Module::open(&newer, "") {
            Err(Error::Conflict(message)) => assert!(message.contains("newer module"), "{message}"),
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("a newer schema opened"),
        }
        assert!(dir.path().join("newer.db-lock").exists());
    }

    /// The clock does not go back across opens: reopened with a clock
    /// before the database's last recorded instant, the module starts at
    /// that instant. An update pushed then applies (it read as older than
    /// the record, stale, until the old time came round again), and a
    /// delay started before waits its own two days, not years.
    #[test]
    fn a_clock_behind_the_database_starts_at_its_last_recorded_instant() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("m.db");
        let manual =
            |start: &str| format!(r#"{{"clock": {{"mode": "manual", "start": "{start}"}}}}"#);
        let later = crate::clock::parse_rfc3339("2036-01-07T15:00:00Z").unwrap();
        let m = Module::open(&path, &manual("2036-01-07T15:00:00Z")).expect("open");
        m.execute(
            r#"{"command": "automation.create", "automation_id": "a1", "definition": {
                "name": "Wait", "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
                "steps": [{"id": "d", "type": "delay", "amount": 2, "unit": "days"},
                          {"id": "t", "type": "create_task", "title": "Call",
                           "assignee": {"kind": "queue", "name": "front_desk"}}]}}"#,
        )
        .expect("automation");
        m.execute(r#"{"command": "automation.activate", "automation_id": "a1"}"#)
            .expect("activate");
        m.push(r#"{"event_id": "e1", "type": "contact.upserted", "contact": {"id": "c1", "first_name": "Ann"}}"#)
            .expect("a contact");
        m.close();

        for clock in [manual("2030-01-07T15:00:00Z"), String::new()] {
            let m = Module::open(&path, &clock).expect("reopen");
            assert!(
                m.now() >= later,
                "{clock:?}: the clock went back to {}",
                m.now()
            );
            m.close();
        }
        let m = Module::open(&path, &manual("2030-01-07T15:00:00Z")).expect("reopen");
        let out = m
            .push(r#"{"event_id": "e2", "type": "contact.upserted", "contact": {"id": "c1", "first_name": "Anne"}}"#)
            .expect("an update");
        assert_eq!(out.outcome, "applied", "{out:?}");
        m.advance_clock(2 * crate::clock::DAY).expect("two days");
        m.close();
        let conn = Connection::open(&path).expect("plain SQLite");
        let (props, tasks): (String, i64) = conn
            .query_row(
                "SELECT props, (SELECT COUNT(*) FROM tasks) FROM contacts WHERE id = 'c1'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("the contact");
        assert!(props.contains(r#""first_name":"Anne""#), "{props}");
        assert_eq!(tasks, 1, "the delay's task");
    }

    /// A view asked for while the module closes (a host callback answering
    /// during the close) is refused as closed: it opened the views'
    /// connection again, which then closed after the writer's, and a
    /// read-only connection closing last leaves the log and its index
    /// beside the file.
    #[test]
    fn a_view_during_the_close_leaves_no_log_behind() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("m.db");
        let m = Module::open(&path, "").expect("open");
        m.push(r#"{"event_id": "e1", "type": "contact.upserted", "contact": {"id": "c1"}}"#)
            .expect("a contact");
        m.shutdown();
        assert!(matches!(m.view("automation_list", ""), Err(Error::Closed)));
        drop(m);
        for file in ["m.db-wal", "m.db-shm"] {
            assert!(!dir.path().join(file).exists(), "{file} is left");
        }
    }

    /// Every view, built on a database with an automation that branches,
    /// a contact and a template, validates against the schema published
    /// for it. The builder's palette left out `branches` where false while
    /// its schema required it, and fields always written as `null` read
    /// as optional: view schemas are now made as the module writes.
    #[test]
    fn every_view_validates_against_its_published_schema() {
        let dir = tempfile::tempdir().expect("temp dir");
        let m = Module::open(
            &dir.path().join("m.db"),
            r#"{"clock": {"mode": "manual", "start": "2030-01-07T14:00:00Z"}}"#,
        )
        .expect("open");
        m.execute(
            r#"{"command": "template.create", "template_id": "t1", "template": {
                "channel": "email", "name": "Hello", "subject": "Hi {{firstname}}", "html_body": "<p>Hello</p>"}}"#,
        )
        .expect("template");
        m.execute(
            r#"{"command": "automation.create", "automation_id": "a1", "definition": {
                "name": "Welcome", "goal": "book_appointment", "run_window": {"mode": "any_time"},
                "trigger": {"type": "contact_created"},
                "steps": [{"id": "e", "type": "send_email", "template_id": "t1"},
                          {"id": "b", "type": "branch", "condition": {"type": "goal_reached"},
                           "yes": [], "no": [{"id": "t", "type": "create_task", "title": "Call",
                                              "assignee": {"kind": "contact_owner"}}]}]}}"#,
        )
        .expect("automation");
        m.execute(r#"{"command": "automation.activate", "automation_id": "a1"}"#)
            .expect("activate");
        m.push(r#"{"event_id": "e1", "type": "contact.upserted", "contact": {"id": "c1", "first_name": "Ann", "email": "ann@example.com", "email_subscription": "subscribed"}}"#)
            .expect("a contact");
        let schemas = crate::views::schemas();
        for (view, params) in [
            ("automation_list", ""),
            ("automation_builder", r#"{"automation_id": "a1"}"#),
            ("automation_builder", ""),
            ("automation_performance", r#"{"automation_id": "a1"}"#),
            (
                "step_analytics",
                r#"{"automation_id": "a1", "step_id": "e"}"#,
            ),
            ("settings", ""),
            (
                "template_preview",
                r#"{"template_id": "t1", "contact_id": "c1"}"#,
            ),
            ("plugins", ""),
            ("picker_options", r#"{"picker": "email_templates"}"#),
        ] {
            // The parameters as published too.
            let all = crate::schema::all();
            let given: Value = if params.is_empty() {
                serde_json::json!({})
            } else {
                serde_json::from_str(params).expect("params")
            };
            let params_schema = &all["view_params"][view];
            assert!(
                jsonschema::is_valid(params_schema, &given),
                "{view} {params} against {params_schema}"
            );
            assert!(
                !jsonschema::is_valid(params_schema, &serde_json::json!({"junk": 1})),
                "{view}"
            );
            let out = m.view(view, params).expect("the view");
            let validator = jsonschema::validator_for(&schemas[view]).expect("a schema");
            let errors: Vec<String> = validator
                .iter_errors(&out)
                .map(|e| format!("{} at {}", e, e.instance_path()))
                .collect();
            assert!(errors.is_empty(), "{view} {params}: {errors:#?}");
        }
        assert_eq!(
            schemas.as_object().map(|o| o.len()),
            Some(crate::views::VIEW_NAMES.len())
        );
        // `schemas` takes none either.
        let e = m.view("schemas", r#"{"junk": 1}"#).unwrap_err();
        assert_eq!(e.code(), crate::ErrorCode::Invalid, "{e}");
        assert!(m.view("schemas", "{}").is_ok());
        let all = crate::schema::all();
        assert!(!jsonschema::is_valid(
            &all["view_params"]["schemas"],
            &serde_json::json!({"junk": 1})
        ));
    }

    /// A closed database is one file: the log folded into it and removed,
    /// so a copy of the file alone has everything committed.
    #[test]
    fn a_closed_database_file_holds_everything_without_its_log() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("m.db");
        let m = Module::open(&path, "").expect("open");
        m.execute(r#"{"command": "list.create", "list_id": "a", "name": "A"}"#)
            .expect("a list");
        m.push(r#"{"event_id": "e1", "type": "contact.upserted", "contact": {"id": "c1"}}"#)
            .expect("a contact");
        m.view("automation_list", "").expect("a view");
        m.close();
        let log = std::fs::metadata(dir.path().join("m.db-wal")).map_or(0, |m| m.len());
        assert_eq!(log, 0, "the log is left with {log} bytes");
        let copy = dir.path().join("copy.db");
        std::fs::copy(&path, &copy).expect("copy");
        let conn = Connection::open(&copy).expect("open the copy");
        let contacts: i64 = conn
            .query_row("SELECT COUNT(*) FROM contacts", [], |r| r.get(0))
            .expect("contacts");
        assert_eq!(contacts, 1);
    }

    #[test]
    fn storage_sizes_out_of_bounds_are_refused_before_the_database_is_touched() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("m.db");
        for (config, field) in [
            (r#"{"storage": {"mmap_mib": 2048}}"#, "storage.mmap_mib"),
            (r#"{"storage": {"cache_mib": 0}}"#, "storage.cache_mib"),
            (r#"{"storage": {"cache_mib": 4097}}"#, "storage.cache_mib"),
        ] {
            match Module::open(&path, config) {
                Err(Error::Invalid(message)) => assert!(message.contains(field), "{message}"),
                Err(other) => panic!("{config}: {other:?}"),
                Ok(_) => panic!("{config} was accepted"),
            }
            assert!(!path.exists(), "{config} created the database");
        }
        assert!(matches!(
            Module::open(&path, r#"{"storage": {"mmap": 1}}"#),
            Err(Error::Invalid(_))
        ));
        // In bounds, and the mapping off: the module works.
        let m =
            Module::open(&path, r#"{"storage": {"mmap_mib": 0, "cache_mib": 8}}"#).expect("open");
        m.view("automation_list", "").expect("view");
        m.shutdown();
    }

    /// A practice whose one automation emails each new contact (template
    /// `t1`), at 2030-01-07 14:00 on the manual clock, with contact `c1`
    /// pushed. Returns the module and the email's key.
    fn one_email(path: &Path) -> (Module, String) {
        let m = Module::open(
            path,
            &format!(
                r#"{{"clock": {{"mode": "manual", "start": "2030-01-07T14:00:00Z"}}, "initial_settings": {}}}"#,
                practice(r#"{}"#)
            ),
        )
        .expect("open");
        m.execute(
            r#"{"command": "template.create", "template_id": "t1", "template": {
                "channel": "email", "name": "Hello", "subject": "Hi", "html_body": "<p>Hello</p>"}}"#,
        )
        .expect("template");
        m.execute(
            r#"{"command": "automation.create", "automation_id": "a1", "definition": {
                "name": "Welcome", "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
                "steps": [{"id": "e", "type": "send_email", "template_id": "t1"}]}}"#,
        )
        .expect("automation");
        m.execute(r#"{"command": "automation.activate", "automation_id": "a1"}"#)
            .expect("activate");
        m.push(r#"{"event_id": "e1", "type": "contact.upserted", "contact": {"id": "c1", "email": "ann@example.com", "email_subscription": "subscribed"}}"#)
            .expect("a contact");
        m.wait_idle(Duration::from_secs(30)).expect("idle");
        let conn = Connection::open(path).expect("read");
        let key = conn
            .query_row(
                "SELECT idempotency_key FROM outbox WHERE channel = 'email'",
                [],
                |r| r.get(0),
            )
            .expect("the email");
        (m, key)
    }

    /// Settings of a practice that can send email, with `more` fields.
    fn practice(more: &str) -> String {
        let mut v: Value = serde_json::from_str(
            r#"{"practice_name": "Riverside", "time_zone": "UTC",
                "email_footer": {"postal_address": "12 River Road, Boston", "text": "Unsubscribe: {{unsubscribe_link}}"},
                "tracking": {"base_url": "https://t.example.org"}}"#,
        )
        .expect("settings");
        let more: Value = serde_json::from_str(more).expect("more");
        for (k, x) in more.as_object().expect("an object") {
            v[k] = x.clone();
        }
        v.to_string()
    }

    /// (kind, count) of the email's events, and its outbox status and answers.
    fn email_record(path: &Path, key: &str) -> (Vec<(String, i64)>, String, i64) {
        let conn = Connection::open(path).expect("read");
        let mut stmt = conn
            .prepare(
                "SELECT kind, count(*) FROM events WHERE message_key = ?1
                  AND kind IN ('message_sent', 'message_bounced', 'message_suppressed', 'message_delivered')
                  GROUP BY kind ORDER BY kind",
            )
            .expect("events");
        let kinds = stmt
            .query_map([key], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("rows")
            .map(|r| r.expect("row"))
            .collect();
        let (status, attempts) = conn
            .query_row(
                "SELECT status, attempts FROM outbox WHERE idempotency_key = ?1",
                [key],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("the row");
        (kinds, status, attempts)
    }

    /// A host that records the keys it is handed and follows a script: for
    /// the n-th delivery, the receipts it pushes from inside the callback
    /// (`soft`, `hard`, `delivered`, `failed`), then its answer; Accepted
    /// without receipts past the script.
    #[derive(Default)]
    struct Handed {
        keys: Mutex<Vec<String>>,
        script: Vec<(Vec<&'static str>, crate::outbox::HostAnswer)>,
        module: Mutex<std::sync::Weak<Module>>,
    }

    impl Host for Handed {
        fn deliver(
            &self,
            d: crate::host::Delivery<'_>,
        ) -> (crate::outbox::HostAnswer, Option<String>) {
            let n = {
                let mut keys = self.keys.lock();
                keys.push(d.key.to_string());
                keys.len() - 1
            };
            let Some((receipts, answer)) = self.script.get(n) else {
                return (crate::outbox::HostAnswer::Accepted, None);
            };
            let module = self.module.lock().upgrade().expect("the module");
            for (i, receipt) in receipts.iter().enumerate() {
                let mut event = serde_json::json!({"event_id": format!("r{n}-{i}"),
                    "type": "delivery.receipt", "message_key": d.key});
                match *receipt {
                    "soft" | "hard" => {
                        event["status"] = "bounced".into();
                        event["bounce"] = (*receipt).into();
                    }
                    status => event["status"] = status.into(),
                }
                module.push(&event.to_string()).expect("the receipt");
            }
            (*answer, None)
        }
    }

    /// A module for `one_email` whose host follows `script` ([`Handed`]).
    fn scripted(
        path: &Path,
        script: Vec<(Vec<&'static str>, crate::outbox::HostAnswer)>,
    ) -> (Arc<Module>, Arc<Handed>, String) {
        let (m, key) = one_email(path);
        let m = Arc::new(m);
        let host = Arc::new(Handed {
            script,
            ..Handed::default()
        });
        *host.module.lock() = Arc::downgrade(&m);
        m.set_host(Some(host.clone())).expect("host");
        m.wait_idle(Duration::from_secs(30)).expect("idle");
        (m, host, key)
    }

    /// The host takes an email and pushes its hard bounce, and the process
    /// stops before the callback's answer is recorded. The receipt records
    /// the hand-over as taken: after the restart the email is not handed
    /// over again, and it reads sent once and bounced, not suppressed
    /// against the address its own bounce marked undeliverable.
    #[test]
    fn a_receipt_before_the_answer_was_recorded_counts_the_send_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("m.db");
        // No host yet: the row is as a stopped process left it, pending.
        let (m, key) = one_email(&path);
        let receipt = serde_json::json!({"event_id": "r1", "type": "delivery.receipt",
            "message_key": key, "status": "bounced", "bounce": "hard"});
        m.push(&receipt.to_string()).expect("the receipt");
        let host = Arc::new(Handed::default());
        m.set_host(Some(host.clone())).expect("host");
        m.wait_idle(Duration::from_secs(30)).expect("idle");
        m.shutdown();
        assert!(host.keys.lock().is_empty(), "handed over again");
        let (kinds, status, attempts) = email_record(&path, &key);
        assert_eq!(
            kinds,
            [("message_bounced".into(), 1), ("message_sent".into(), 1)]
        );
        assert_eq!((status.as_str(), attempts), ("accepted", 1));
    }

    /// A soft bounce the host pushes from inside its delivery callback,
    /// before answering Accepted: the message is handed over again after
    /// the backoff (the answer no longer overwrote the resend), and each
    /// hand-over is one send.
    #[test]
    fn a_soft_bounce_pushed_before_the_callback_answers_is_sent_again() {
        use crate::outbox::HostAnswer::Accepted;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("m.db");
        let (m, host, key) = scripted(&path, vec![(vec!["soft"], Accepted)]);
        assert_eq!(email_record(&path, &key).1, "retry");
        m.advance_clock(crate::clock::DAY).expect("a day");
        m.wait_idle(Duration::from_secs(30)).expect("idle");
        m.shutdown();
        assert_eq!(*host.keys.lock(), [key.clone(), key.clone()]);
        let (kinds, status, attempts) = email_record(&path, &key);
        assert_eq!(
            kinds,
            [("message_bounced".into(), 1), ("message_sent".into(), 2)]
        );
        assert_eq!((status.as_str(), attempts), ("accepted", 2));
    }

    /// The resend after a soft bounce soft-bounces too, its receipt pushed
    /// from inside the callback: that is the resend's outcome (not the
    /// first bounce again), and the message goes a third time.
    #[test]
    fn a_receipt_pushed_during_a_resend_is_the_resends_outcome() {
        use crate::outbox::HostAnswer::Accepted;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("m.db");
        let (m, host, key) = scripted(
            &path,
            vec![(vec!["soft"], Accepted), (vec!["soft"], Accepted)],
        );
        for _ in 0..2 {
            m.advance_clock(crate::clock::DAY).expect("a day");
            m.wait_idle(Duration::from_secs(30)).expect("idle");
        }
        m.shutdown();
        assert_eq!(host.keys.lock().len(), 3, "handed over");
        let (kinds, status, _) = email_record(&path, &key);
        assert_eq!(
            kinds,
            [("message_bounced".into(), 2), ("message_sent".into(), 3)]
        );
        assert_eq!(status, "accepted");
    }

    /// The host asked to be asked again, then (its process gone, or its
    /// queue sending the message after all) pushed the hard bounce before
    /// the module asked again: the host took the message. It is not handed
    /// over again and reads sent once and bounced, not suppressed against
    /// the address its own bounce marked undeliverable.
    #[test]
    fn a_receipt_for_a_message_the_host_asked_to_retry_is_its_outcome() {
        use crate::outbox::HostAnswer::RetryLater;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("m.db");
        let (m, host, key) = scripted(&path, vec![(vec![], RetryLater)]);
        m.set_host(None).expect("no host");
        let receipt = serde_json::json!({"event_id": "late", "type": "delivery.receipt",
            "message_key": key, "status": "bounced", "bounce": "hard"});
        m.push(&receipt.to_string()).expect("the receipt");
        m.set_host(Some(host.clone())).expect("host");
        m.advance_clock(crate::clock::DAY).expect("a day");
        m.wait_idle(Duration::from_secs(30)).expect("idle");
        m.shutdown();
        assert_eq!(host.keys.lock().len(), 1, "handed over");
        let (kinds, status, _) = email_record(&path, &key);
        assert_eq!(
            kinds,
            [("message_bounced".into(), 1), ("message_sent".into(), 1)]
        );
        assert_eq!(status, "accepted");
    }

    /// Initial settings are checked and stored as `settings.update` would
    /// store them: a sender adapter's id that is no plugin id is refused
    /// without being quoted, and the SMS number is kept in E.164 form.
    #[test]
    fn initial_settings_are_stored_in_their_canonical_form() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("m.db");
        let config = |more: &str| format!(r#"{{"initial_settings": {}}}"#, practice(more));
        match Module::open(
            &path,
            &config(
                r#"{"sms_delivery": {"mode": "plugin", "plugin_id": "Pat Quill +16175550101"}}"#,
            ),
        ) {
            Err(Error::Invalid(message)) => {
                assert!(
                    message.starts_with("initial_settings: sms_delivery.plugin_id: "),
                    "{message}"
                );
                assert!(
                    !message.contains("Quill") && !message.contains("555"),
                    "{message}"
                );
            }
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("opened"),
        }
        assert!(!path.exists());
        let m = Module::open(
            &path,
            &config(r#"{"sms": {"sender_number": " (617) 555-0100 "}}"#),
        )
        .expect("open");
        let shown = m
            .execute(r#"{"command": "settings.get"}"#)
            .expect("settings");
        assert_eq!(shown["sms"]["sender_number"], "+16175550100");
        m.shutdown();
        // The stored document too, as `settings.update` would have stored it.
        let conn = Connection::open(&path).expect("read");
        let stored = store::get_setting(&conn, "settings")
            .expect("read")
            .expect("stored");
        assert_eq!(stored["sms"]["sender_number"], "+16175550100");
    }
}
