//! The store of one plugin call: WASI with nothing granted, the memory cap,
//! and the host imports (`log`, `config`, `http`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::contract::sender_world::crm::plugin::http;
use super::contract::step_world::crm::plugin::{config, log, types};
use super::fetch::{FetchFailure, FetchPolicy, FetchRequest, FetchResponse};
use super::limits::Limits;
use super::redact::Redactor;
use crate::host::LogLevel;

/// Log lines kept per call; more are counted and dropped.
const MAX_LOG_LINES: usize = 32;
/// Longest log line kept (bytes); longer lines are cut.
const MAX_LOG_LINE: usize = 1024;
/// What the plugin's stderr may hold per call (a panic message, say).
const STDERR_CAPACITY: usize = 2048;
/// Stderr kept beyond [`STDERR_CAPACITY`] until it is scrubbed, so that a
/// patient value running across the cut is seen whole (and replaced) rather
/// than cut into a fragment the scrubber cannot recognize.
const STDERR_SPARE: usize = 16 * 1024;

/// A call's stderr: keeps its first `capacity` bytes and takes the rest
/// without keeping it, so that a plugin writing more is cut, not failed.
/// (wasmtime's `MemoryOutputPipe` closes once full; Rust's `eprintln!`
/// then panics the guest, and its panic message is lost.)
#[derive(Clone)]
struct CappedPipe {
    capacity: usize,
    kept: Arc<parking_lot::Mutex<Vec<u8>>>,
}

impl CappedPipe {
    fn new(capacity: usize) -> CappedPipe {
        CappedPipe {
            capacity,
            kept: Arc::default(),
        }
    }

    fn take(&self, bytes: &[u8]) {
        let mut kept = self.kept.lock();
        let room = self.capacity.saturating_sub(kept.len());
        kept.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn contents(&self) -> Vec<u8> {
        self.kept.lock().clone()
    }
}

impl OutputStream for CappedPipe {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.take(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[async_trait::async_trait]
impl Pollable for CappedPipe {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for CappedPipe {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.take(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

impl IsTerminal for CappedPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

/// What the practice set for one plugin, shared by its calls.
#[derive(Debug, Clone, Default)]
pub struct PluginSettings {
    /// Plain settings (`config.get`).
    pub config: BTreeMap<String, String>,
    /// Secrets (`config.secret`).
    pub secrets: BTreeMap<String, String>,
    /// Limits of each call.
    pub limits: Limits,
    /// Where `fetch` may go (sender adapters only).
    pub fetch: Option<FetchPolicy>,
}

/// Refuses memory growth past the plugin's cap and remembers that it did.
/// The cap holds for the instance: all its linear memories together (a
/// component may have several, one per core module).
#[derive(Debug)]
pub struct MemoryCap {
    cap: u64,
    /// Bytes of linear memory the instance has now, all memories.
    used: u64,
    /// The growth granted last, taken back if wasmtime then fails it (past
    /// the memory's own maximum).
    granted: u64,
    /// The size a refused growth asked for.
    pub refused: Option<u64>,
}

impl MemoryCap {
    /// A cap of `cap` bytes.
    pub fn new(cap: u64) -> MemoryCap {
        MemoryCap {
            cap,
            used: 0,
            granted: 0,
            refused: None,
        }
    }
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let asked = self.used + desired.saturating_sub(current) as u64;
        if asked > self.cap {
            self.refused = Some(asked);
            return Ok(false);
        }
        self.granted = asked - self.used;
        self.used = asked;
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.used -= std::mem::take(&mut self.granted);
        Ok(())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// The state of one call's store.
pub struct CallState {
    wasi: WasiCtx,
    table: ResourceTable,
    stderr: CappedPipe,
    /// The memory cap (installed as the store's limiter).
    pub memory: MemoryCap,
    settings: Arc<PluginSettings>,
    deadline: Instant,
    /// A wait on a WASI clock was cut to the deadline.
    wait_cut: bool,
    /// The patient values of this call, scrubbed from log lines and stderr.
    redactor: Arc<Redactor>,
    /// Log lines the plugin wrote, already scrubbed, forwarded after the call.
    pub logs: Vec<(LogLevel, String)>,
    /// Log lines dropped over the cap.
    pub logs_dropped: usize,
    fetches: u32,
    /// Fetch failures, by code, for the call's record.
    pub fetch_failures: Vec<&'static str>,
}

impl CallState {
    /// A fresh state: WASI with no files, no environment, no arguments, no
    /// sockets and no name lookups; the host's clocks and randomness. Log
    /// lines and stderr are scrubbed of the patient values `redactor` holds.
    pub fn new(
        settings: Arc<PluginSettings>,
        deadline: Instant,
        redactor: Arc<Redactor>,
    ) -> CallState {
        let stderr = CappedPipe::new(STDERR_CAPACITY + STDERR_SPARE);
        let wasi = WasiCtxBuilder::new()
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        CallState {
            wasi,
            table: ResourceTable::new(),
            stderr,
            memory: MemoryCap::new(settings.limits.memory_bytes),
            settings,
            deadline,
            wait_cut: false,
            redactor,
            logs: Vec::new(),
            logs_dropped: 0,
            fetches: 0,
            fetch_failures: Vec::new(),
        }
    }

    /// `nanos`, a wait on a WASI clock the plugin asked for, cut to what is
    /// left before the call's deadline (0 once it has passed); a cut is
    /// remembered for [`CallState::overran`].
    pub fn bounded_wait(&mut self, nanos: u64) -> u64 {
        let left = self.deadline.saturating_duration_since(Instant::now());
        let left = u64::try_from(left.as_nanos()).unwrap_or(u64::MAX);
        if nanos > left {
            self.wait_cut = true;
        }
        nanos.min(left)
    }

    /// The plugin's settings for this call.
    pub fn settings(&self) -> &PluginSettings {
        &self.settings
    }

    /// Whether the call ran into its deadline in a wait [`bounded_wait`]
    /// cut short: the plugin woke at the deadline, before the time it
    /// asked for, so whatever it answered after is not its answer in time.
    ///
    /// [`bounded_wait`]: CallState::bounded_wait
    pub fn overran(&self) -> bool {
        self.wait_cut && Instant::now() >= self.deadline
    }

    /// What the plugin wrote to stderr, lossily decoded, scrubbed of patient
    /// values, then cut at a small cap.
    pub fn stderr(&self) -> String {
        scrub_stderr(&self.stderr.contents(), &self.redactor)
    }
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for CallState {}

impl log::Host for CallState {
    fn log(&mut self, level: log::Level, message: String) {
        if self.logs.len() >= MAX_LOG_LINES {
            self.logs_dropped += 1;
            return;
        }
        // Scrubbed whole, then cut: a value across the cut is still replaced.
        let mut message = self.redactor.redact_string(message);
        cut(&mut message, MAX_LOG_LINE);
        let level = match level {
            log::Level::Error => LogLevel::Error,
            log::Level::Warn => LogLevel::Warn,
            log::Level::Info => LogLevel::Info,
            log::Level::Debug => LogLevel::Debug,
        };
        self.logs.push((level, message));
    }
}

impl config::Host for CallState {
    fn get(&mut self, key: String) -> Option<String> {
        self.settings.config.get(&key).cloned()
    }

    fn secret(&mut self, key: String) -> Option<String> {
        self.settings.secrets.get(&key).cloned()
    }
}

impl http::Host for CallState {
    fn fetch(&mut self, request: http::Request) -> Result<http::Response, http::FetchError> {
        match self.fetch_inner(request) {
            Ok(r) => Ok(http::Response {
                status: r.status,
                headers: r.headers,
                body: r.body,
            }),
            Err(e) => {
                self.fetch_failures.push(e.code());
                Err(match e {
                    FetchFailure::InvalidRequest(m) => http::FetchError::InvalidRequest(m),
                    FetchFailure::NotGranted(m) => http::FetchError::NotGranted(m),
                    FetchFailure::PrivateAddress(m) => http::FetchError::PrivateAddress(m),
                    FetchFailure::RedirectRefused(m) => http::FetchError::RedirectRefused(m),
                    FetchFailure::TooLarge(n) => http::FetchError::TooLarge(n),
                    FetchFailure::Timeout => http::FetchError::Timeout,
                    FetchFailure::Connection(m) => http::FetchError::Connection(m),
                })
            }
        }
    }
}

impl CallState {
    fn fetch_inner(&mut self, request: http::Request) -> Result<FetchResponse, FetchFailure> {
        let Some(policy) = self.settings.fetch.clone() else {
            return Err(FetchFailure::NotGranted(
                "this plugin has no fetch grants".into(),
            ));
        };
        if self.fetches >= self.settings.limits.fetches_per_call {
            return Err(FetchFailure::InvalidRequest(format!(
                "at most {} fetches per call",
                self.settings.limits.fetches_per_call
            )));
        }
        self.fetches += 1;
        let req = FetchRequest {
            method: request.method,
            url: request.url,
            headers: request.headers,
            body: request.body,
        };
        policy.fetch(&req, self.deadline)
    }
}

/// Cuts `text` to at most `max` bytes on a character boundary, marking the
/// cut with `…`.
fn cut(text: &mut String, max: usize) {
    if text.len() > max {
        let mut at = max;
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        text.truncate(at);
        text.push('…');
    }
}

/// A call's stderr as forwarded: decoded, scrubbed, trimmed, cut at
/// [`STDERR_CAPACITY`].
fn scrub_stderr(raw: &[u8], redactor: &Redactor) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut text = redactor.redact(&text).trim().to_string();
    cut(&mut text, STDERR_CAPACITY);
    text
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The memory cap holds for all of an instance's memories together.
    #[test]
    fn the_memory_cap_counts_every_memory() {
        const MIB: usize = 1024 * 1024;
        let mut cap = MemoryCap::new(16 * MIB as u64);
        assert!(cap.memory_growing(0, 10 * MIB, None).unwrap());
        assert!(
            !cap.memory_growing(0, 10 * MIB, None).unwrap(),
            "a second memory past the cap"
        );
        assert_eq!(cap.refused, Some(20 * MIB as u64));
        assert!(cap.memory_growing(0, 6 * MIB, None).unwrap(), "up to it");
        assert!(cap.memory_growing(10 * MIB, 10 * MIB, None).unwrap());
        assert!(!cap.memory_growing(10 * MIB, 11 * MIB, None).unwrap());
        // A growth granted here and then failed by wasmtime (past the
        // memory's own maximum) is not counted.
        let mut cap = MemoryCap::new(16 * MIB as u64);
        assert!(cap.memory_growing(0, 8 * MIB, None).unwrap());
        cap.memory_grow_failed(wasmtime::Error::msg("past its maximum"))
            .unwrap();
        assert!(
            cap.memory_growing(0, 16 * MIB, None).unwrap(),
            "8 MiB freed"
        );
    }

    fn redactor() -> Arc<Redactor> {
        Arc::new(Redactor::contact(
            json!({"id": "c-9", "first_name": "Annabel", "email": "annabel@example.com"})
                .to_string(),
        ))
    }

    #[test]
    fn a_log_line_is_scrubbed_before_it_is_cut() {
        let mut state = CallState::new(
            Arc::new(PluginSettings::default()),
            Instant::now(),
            redactor(),
        );
        // The email starts 4 bytes before the cut: scrubbed whole, no "anna" left.
        let line = format!("{}annabel@example.com tail", "x".repeat(MAX_LOG_LINE - 4));
        log::Host::log(&mut state, log::Level::Info, line);
        log::Host::log(&mut state, log::Level::Warn, "c-9: Annabel".into());
        let (level, first) = &state.logs[0];
        assert_eq!(*level, LogLevel::Info);
        // Cut after scrubbing: the marker is what gets cut, not the email.
        assert!(first.ends_with("xxxx[red…"), "{first}");
        assert_eq!(first.len(), MAX_LOG_LINE + '…'.len_utf8());
        assert!(!first.to_lowercase().contains("anna"), "{first}");
        assert_eq!(state.logs[1], (LogLevel::Warn, "c-9: [redacted]".into()));
    }

    #[test]
    fn stderr_is_scrubbed_before_it_is_cut() {
        let raw = format!(
            "panicked at src/lib.rs:1:1:\n{}annabel@example.com\n",
            "y".repeat(STDERR_CAPACITY - 30)
        );
        let out = scrub_stderr(raw.as_bytes(), &redactor());
        assert!(!out.to_lowercase().contains("anna"), "{out}");
        assert!(out.len() <= STDERR_CAPACITY + '…'.len_utf8());
        assert!(out.starts_with("panicked at src/lib.rs:1:1:"));
        let long = "z".repeat(STDERR_CAPACITY + 10);
        assert!(scrub_stderr(long.as_bytes(), &Redactor::none()).ends_with("z…"));
    }
}
