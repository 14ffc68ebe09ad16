//! # crm-ffi: the C ABI of the CRM module
//!
//! A thin layer over [`::crm_module::Module`]: it converts C strings, validates
//! pointers, UTF-8 and sizes, catches panics and maps errors to status codes.
//! It holds no engine logic. The C header `include/crm_module.h` is generated
//! from this file by cbindgen (see `ffi/cbindgen.toml`); `tests/header.rs`
//! fails when the committed header is stale and rewrites it when run with
//! `CRM_UPDATE_HEADER=1`.
//!
//! The conventions follow SQLite and libgit2:
//! - an opaque handle ([`crm_module`]) created by [`crm_open`] and destroyed
//!   by [`crm_close`];
//! - every fallible function returns a [`crm_status`] (`CRM_OK` = 0);
//! - the details of the last failure are kept per thread
//!   ([`crm_last_error_code`], [`crm_last_error_message`]), so they are safe
//!   on a host thread pool;
//! - every string the library returns is freed with [`crm_string_free`];
//! - no panic crosses the boundary: it becomes `CRM_ERR_INTERNAL`, and
//!   what the panic said is not printed (it could quote data): the
//!   library's panic hook prints only where it happened.

#![allow(non_camel_case_types)]
#![warn(missing_docs)]

use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::ptr;
use std::sync::Arc;
use std::time::Duration;

use ::crm_module::{Delivery, EffectKind, Host, HostAnswer, LogLevel, Module};
use parking_lot::{Condvar, Mutex};

/// The library's own Rust allocations go through mimalloc in release builds:
/// the engine allocates small, short-lived values on every event (JSON,
/// rendered messages, rows), and glibc's malloc costs a tenth of the worker's
/// time there (the benchmark ingests 7-11 % more events per second with
/// mimalloc). Only this library's allocations change: the host's `malloc`
/// is untouched, and every string the library returns is still freed by
/// [`crm_string_free`]. Debug builds keep the system allocator, so that the
/// C tests under valgrind's memcheck see every allocation (mimalloc's own
/// arenas hide leaks from it).
#[cfg(not(debug_assertions))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

// ---------------------------------------------------------------------------
// Status codes
// ---------------------------------------------------------------------------

/// The status every fallible function returns: `CRM_OK` (0) or one of the
/// `CRM_ERR_*` codes. On failure the calling thread's last error
/// (crm_last_error_code(), crm_last_error_message()) describes it.
pub type crm_status = c_int;

/// Success.
pub const CRM_OK: crm_status = 0;
/// A required pointer argument was NULL. Nothing changed.
pub const CRM_ERR_NULL: crm_status = 1;
/// The input was malformed or failed validation (bad JSON, bad field, bad
/// argument value, wrong crm_host_callbacks version). Nothing changed.
pub const CRM_ERR_INVALID: crm_status = 2;
/// An id named by the input (automation, list, view name, ...) does not
/// exist. Nothing changed.
pub const CRM_ERR_NOT_FOUND: crm_status = 3;
/// The request conflicts with the current state (e.g. advancing a system
/// clock, creating an automation under an id already used, deleting a
/// template automations use, calling a forbidden function from a host
/// callback). Nothing changed.
pub const CRM_ERR_CONFLICT: crm_status = 4;
/// The input is larger than a limit (CRM_MAX_INPUT_BYTES for any string, or
/// the module's own event/batch limits). Nothing changed.
pub const CRM_ERR_TOO_LARGE: crm_status = 5;
/// The database failed (disk full, corruption, locked past the timeout).
pub const CRM_ERR_STORAGE: crm_status = 6;
/// The module was closed or its worker stopped.
pub const CRM_ERR_CLOSED: crm_status = 7;
/// A wait ran out of time (crm_wait_idle()).
pub const CRM_ERR_TIMEOUT: crm_status = 8;
/// A bug: an internal invariant failed or a panic was caught at the
/// boundary. The call did not complete.
pub const CRM_ERR_INTERNAL: crm_status = 9;
/// A string argument was not valid UTF-8. Nothing changed.
pub const CRM_ERR_UTF8: crm_status = 10;

/// The longest string argument accepted, in bytes (64 MiB, not counting the
/// terminating NUL). Longer strings are rejected with CRM_ERR_TOO_LARGE
/// before anything is copied. Each event has a smaller limit of its own
/// (256 KiB), alone or inside a batch.
pub const CRM_MAX_INPUT_BYTES: usize = 67108864;

/// The library version as a number: MAJOR*10000 + MINOR*100 + PATCH. Compare
/// it with crm_version_number() to detect a header/library mismatch.
pub const CRM_VERSION_NUMBER: u32 = 100;

/// The only accepted value of crm_host_callbacks.version.
pub const CRM_HOST_CALLBACKS_VERSION: u32 = 1;

/// Effect callback answer: the host took the effect (it will deliver it, or
/// has applied it). The module will not offer it again.
pub const CRM_EFFECT_ACCEPTED: c_int = 0;
/// Effect callback answer: not now; the module offers the same effect again
/// later (with backoff) under the same idempotency key.
pub const CRM_EFFECT_RETRY: c_int = 1;
/// Effect callback answer: refused for good. Any value other than
/// CRM_EFFECT_ACCEPTED or CRM_EFFECT_RETRY means the same.
pub const CRM_EFFECT_FAILED: c_int = 2;

/// Log level: something failed.
pub const CRM_LOG_ERROR: c_int = 1;
/// Log level: something unexpected that the module handled.
pub const CRM_LOG_WARN: c_int = 2;
/// Log level: lifecycle facts.
pub const CRM_LOG_INFO: c_int = 3;
/// Log level: detail for debugging.
pub const CRM_LOG_DEBUG: c_int = 4;

const _: () = {
    assert!(CRM_MAX_INPUT_BYTES == ::crm_module::event::MAX_BATCH_BYTES);
    assert!(CRM_VERSION_NUMBER == version_number());
    assert!(CRM_ERR_INVALID == ::crm_module::ErrorCode::Invalid as c_int);
    assert!(CRM_ERR_NOT_FOUND == ::crm_module::ErrorCode::NotFound as c_int);
    assert!(CRM_ERR_CONFLICT == ::crm_module::ErrorCode::Conflict as c_int);
    assert!(CRM_ERR_TOO_LARGE == ::crm_module::ErrorCode::TooLarge as c_int);
    assert!(CRM_ERR_STORAGE == ::crm_module::ErrorCode::Storage as c_int);
    assert!(CRM_ERR_CLOSED == ::crm_module::ErrorCode::Closed as c_int);
    assert!(CRM_ERR_TIMEOUT == ::crm_module::ErrorCode::Timeout as c_int);
    assert!(CRM_ERR_INTERNAL == ::crm_module::ErrorCode::Internal as c_int);
    assert!(CRM_LOG_ERROR == LogLevel::Error as c_int);
    assert!(CRM_LOG_WARN == LogLevel::Warn as c_int);
    assert!(CRM_LOG_INFO == LogLevel::Info as c_int);
    assert!(CRM_LOG_DEBUG == LogLevel::Debug as c_int);
};

const fn parse_decimal(s: &str) -> u32 {
    let b = s.as_bytes();
    let mut i = 0;
    let mut n = 0u32;
    while i < b.len() {
        assert!(b[i].is_ascii_digit());
        n = n * 10 + (b[i] - b'0') as u32;
        i += 1;
    }
    n
}

const fn version_number() -> u32 {
    parse_decimal(env!("CARGO_PKG_VERSION_MAJOR")) * 10000
        + parse_decimal(env!("CARGO_PKG_VERSION_MINOR")) * 100
        + parse_decimal(env!("CARGO_PKG_VERSION_PATCH"))
}

const VERSION: &CStr =
    match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
        Ok(s) => s,
        Err(_) => panic!("the package version contains a NUL byte"),
    };

// ---------------------------------------------------------------------------
// Handle and callbacks
// ---------------------------------------------------------------------------

/// An open module: the opaque handle crm_open() returns and crm_close()
/// destroys.
pub struct crm_module {
    module: Module,
    /// The callbacks currently registered, which the [`CallbackHost`]
    /// registered in the module calls; replacing or clearing them waits for
    /// their calls in flight.
    callbacks: Arc<CallbackSlot>,
    /// Held by crm_set_host_callbacks() around both the slot and the
    /// module's host, so that concurrent registrations apply whole, one
    /// after the other: the last call wins for both.
    registration: Mutex<()>,
}

/// Hands one effect (a message, a property write-back or a task) to the host.
/// `idempotency_key` is stable across retries and restarts: the host must
/// carry out each key at most once, except a message that soft-bounced,
/// which comes again under its key with `"resend": n` (1, 2, 3) in the
/// payload to be sent again: carry out each key and `resend` once (a
/// re-delivery after a restart repeats both; a delivery receipt naming
/// `<key>-resend<n>` is about that send). `payload_json` is the effect as a JSON
/// object (it repeats the key and the kind). Both strings are valid only
/// during the call. Returns CRM_EFFECT_ACCEPTED, CRM_EFFECT_RETRY or
/// CRM_EFFECT_FAILED.
pub type crm_effect_fn = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        idempotency_key: *const c_char,
        payload_json: *const c_char,
    ) -> c_int,
>;

/// Receives a log line from the module (ids only, never patient data).
/// `level` is one of CRM_LOG_*. `message` is valid only during the call.
pub type crm_log_fn =
    Option<unsafe extern "C" fn(user_data: *mut c_void, level: c_int, message: *const c_char)>;

/// The host's callbacks, registered with crm_set_host_callbacks().
///
/// The struct is copied: the caller's copy may be freed after the call.
/// `user_data` is passed to every callback and must stay valid until the
/// callbacks are replaced or cleared, or the module is closed (both wait for
/// callbacks in flight, so it may be freed as soon as they return).
///
/// Threads: the effect callbacks (deliver_message, write_property,
/// create_task) run on the module's dispatcher thread, one at a time; `log`
/// runs on the module's internal threads (worker, dispatcher, or a plugin
/// thread forwarding a WebAssembly plugin's log line), never on a thread of
/// the host's, and may run on several at once, beside an effect callback:
/// the callbacks must be thread-safe. An effect callback
/// may call crm_push_event(), crm_push_events(), crm_execute(),
/// crm_tracking_hit(), crm_query_view(), crm_clock_now() and the error
/// functions. `log` may call crm_query_view(), crm_clock_now() and the
/// error functions; when it runs on the worker's thread, the calls that
/// wait for the worker (crm_push_event(), crm_push_events(), crm_execute(),
/// crm_tracking_hit(), crm_clock_advance(), crm_wait_idle()) return
/// CRM_ERR_CONFLICT at once and change nothing (the worker would wait for
/// itself), so a log callback should not call them. No callback may call
/// crm_set_host_callbacks(), crm_wait_idle() (it would wait for the
/// callback itself) or crm_clock_advance() (it would wait for the
/// callback's answer) on its own handle: they return CRM_ERR_CONFLICT at
/// once and change nothing; nor crm_close() of it (ignored, sets
/// CRM_ERR_CONFLICT). Those calls on another handle are not refused; two
/// handles whose callbacks replace or close each other at the same time
/// wait for each other's callback, so a host should not do that. A
/// `delivery.receipt`, `email.opened`, `email.clicked` or SMS reply that
/// deliver_message pushes for the message it is delivering records that
/// message as accepted: the callback's return value then changes nothing
/// (a soft bounce still has it offered again).
///
/// A NULL effect callback means "not handled": effects of that kind are not
/// offered and use none of their attempts; they wait in the module's durable
/// outbox until callbacks that handle them are registered (nothing committed
/// is lost, nor failed for want of a callback). The same holds for every
/// kind while no callbacks are registered at all, except email messages
/// when the settings deliver email through the built-in SMTP relay. A NULL
/// `log` discards log lines.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct crm_host_callbacks {
    /// Must be CRM_HOST_CALLBACKS_VERSION, else crm_set_host_callbacks()
    /// returns CRM_ERR_INVALID.
    pub version: u32,
    /// Passed unchanged as the first argument of every callback.
    pub user_data: *mut c_void,
    /// Delivers a message (email, SMS). `payload_json` is the message.
    pub deliver_message: crm_effect_fn,
    /// Writes a property back to the host's contact record.
    pub write_property: crm_effect_fn,
    /// Creates a task in the host's task queue.
    pub create_task: crm_effect_fn,
    /// Receives log lines.
    pub log: crm_log_fn,
}

/// The `Host` the module calls. It reads the callbacks from the handle's
/// shared slot.
struct CallbackHost {
    callbacks: Arc<CallbackSlot>,
}

/// The callbacks registered on a handle, and their calls in flight. A call
/// takes the registration current when it starts and counts itself in it
/// until it returns; replacing or clearing the registration waits for the
/// calls of the one it replaces only. Calls that start meanwhile use the
/// new one, so a steady stream of calls (log lines from several threads)
/// never holds a replacement or a close up, and a callback in flight that
/// waits for the module, whose threads log meanwhile, cannot deadlock it.
#[derive(Default)]
struct CallbackSlot {
    current: Mutex<Option<Arc<Registration>>>,
}

/// One registration of callbacks and how many of its calls are in flight.
struct Registration {
    callbacks: crm_host_callbacks,
    in_flight: Mutex<usize>,
    idle: Condvar,
}

/// A call of a registration's callbacks in flight, counted until dropped.
struct InFlight(Arc<Registration>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut n = self.0.in_flight.lock();
        *n -= 1;
        if *n == 0 {
            self.0.idle.notify_all();
        }
    }
}

impl CallbackSlot {
    /// The current callbacks, counted in flight until the guard drops.
    /// Counted under the slot's lock: a replacement that has swapped the
    /// registration sees every call of the old one that can still start.
    fn enter(&self) -> Option<InFlight> {
        let current = self.current.lock();
        let registration = current.as_ref()?.clone();
        *registration.in_flight.lock() += 1;
        Some(InFlight(registration))
    }

    /// Whether callbacks are registered.
    #[cfg(test)]
    fn is_set(&self) -> bool {
        self.current.lock().is_some()
    }

    /// Registers `new` (or clears) and waits until no call of the
    /// callbacks it replaces is in flight; returns those callbacks. Must
    /// not run inside one of those calls (it would wait for itself).
    fn replace(&self, new: Option<crm_host_callbacks>) -> Option<crm_host_callbacks> {
        let new = new.map(|callbacks| {
            Arc::new(Registration {
                callbacks,
                in_flight: Mutex::new(0),
                idle: Condvar::new(),
            })
        });
        let old = std::mem::replace(&mut *self.current.lock(), new)?;
        let mut n = old.in_flight.lock();
        while *n > 0 {
            old.idle.wait(&mut n);
        }
        Some(old.callbacks)
    }
}

// SAFETY: the struct only holds function pointers and the host's `user_data`
// pointer. The C contract (documented on crm_host_callbacks) is that the
// callbacks are thread-safe and that `user_data` may be used from the
// module's threads until the callbacks are replaced or the module closed;
// replacing and closing wait for callbacks in flight (`CallbackSlot::replace`,
// and the dispatcher join in Module::close).
unsafe impl Send for crm_host_callbacks {}
// SAFETY: see the `Send` impl: shared access only ever calls the callbacks.
unsafe impl Sync for crm_host_callbacks {}

thread_local! {
    /// The handles (their callback slots' addresses) whose host callbacks
    /// this thread is running, innermost last: re-entrant calls on such a
    /// handle that would deadlock (crm_set_host_callbacks, crm_close) are
    /// refused. Calls on another handle are not.
    static IN_CALLBACK: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

/// The address that names a handle's callback slot in [`IN_CALLBACK`].
fn slot_id(slot: &Arc<CallbackSlot>) -> usize {
    Arc::as_ptr(slot) as usize
}

/// Marks this thread as running a callback of the handle with slot `slot`
/// until dropped. Scopes nest (a callback that calls into the module, which
/// logs on the same thread): dropping one removes its own mark only.
struct CallbackScope {
    slot: usize,
}

impl CallbackScope {
    fn enter(slot: usize) -> CallbackScope {
        IN_CALLBACK.with(|c| c.borrow_mut().push(slot));
        CallbackScope { slot }
    }
}

impl Drop for CallbackScope {
    fn drop(&mut self) {
        IN_CALLBACK.with(|c| {
            let mut marks = c.borrow_mut();
            if let Some(i) = marks.iter().rposition(|s| *s == self.slot) {
                marks.remove(i);
            }
        });
    }
}

/// Whether this thread runs a callback of the handle with slot `slot`.
fn in_callback(slot: usize) -> bool {
    IN_CALLBACK.with(|c| c.borrow().contains(&slot))
}

/// Why a call that waits for the worker cannot run inside a callback.
const WAITS_FOR_ITSELF: &str = " (it would wait for the callback itself)";

/// Refuses `function` on handle `h` on a thread inside one of `h`'s host
/// callbacks (`why`, if not empty, says what it would do there).
fn refuse_in_callback(h: &crm_module, function: &str, why: &str) -> Result<(), Failure> {
    if in_callback(slot_id(&h.callbacks)) {
        return Err(Failure::new(
            CRM_ERR_CONFLICT,
            format!("conflict: {function} cannot be called from a host callback{why}"),
        ));
    }
    Ok(())
}

/// A C string for a callback argument. JSON and keys never hold NUL bytes;
/// should one appear it is dropped rather than truncating silently.
fn c_arg(s: &str) -> CString {
    CString::new(s).unwrap_or_else(|e| {
        let mut bytes = e.into_vec();
        bytes.retain(|&b| b != 0);
        CString::new(bytes).unwrap_or_default()
    })
}

/// The registered callback for effects of `kind`, if any.
fn effect_callback(
    cb: &crm_host_callbacks,
    kind: EffectKind,
) -> Option<unsafe extern "C" fn(*mut c_void, *const c_char, *const c_char) -> c_int> {
    match kind {
        EffectKind::Message => cb.deliver_message,
        EffectKind::Property => cb.write_property,
        EffectKind::Task => cb.create_task,
        // Custom steps run in the module's plugin host, never in the host.
        EffectKind::PluginStep => None,
    }
}

impl Host for CallbackHost {
    fn handles(&self, kind: EffectKind) -> bool {
        (self.callbacks.current.lock())
            .as_ref()
            .is_some_and(|r| effect_callback(&r.callbacks, kind).is_some())
    }

    fn deliver(&self, delivery: Delivery<'_>) -> (HostAnswer, Option<String>) {
        let call = self.callbacks.enter();
        // Without a callback for this kind (cleared or replaced since the
        // worker handed the effect over), nobody is asked: the effect waits
        // in the outbox, its attempts untouched.
        let Some(cb) = call.as_ref().map(|c| &c.0.callbacks) else {
            return (
                HostAnswer::NotHandled,
                Some("no host callbacks registered".into()),
            );
        };
        let Some(f) = effect_callback(cb, delivery.kind) else {
            return (
                HostAnswer::NotHandled,
                Some(format!(
                    "no host callback registered for {} effects",
                    delivery.kind.as_str()
                )),
            );
        };
        let key = c_arg(delivery.key);
        let payload = c_arg(delivery.payload);
        let _scope = CallbackScope::enter(slot_id(&self.callbacks));
        // SAFETY: the host registered `f` and `user_data` for this purpose;
        // the strings outlive the call.
        let rc = unsafe { f(cb.user_data, key.as_ptr(), payload.as_ptr()) };
        match rc {
            CRM_EFFECT_ACCEPTED => (HostAnswer::Accepted, None),
            CRM_EFFECT_RETRY => (
                HostAnswer::RetryLater,
                Some("the host callback asked to retry".into()),
            ),
            other => (
                HostAnswer::Failed,
                Some(format!("the host callback failed (returned {other})")),
            ),
        }
    }

    fn log(&self, level: LogLevel, message: &str) {
        let call = self.callbacks.enter();
        let Some(cb) = call.as_ref().map(|c| &c.0.callbacks) else {
            return;
        };
        let Some(f) = cb.log else { return };
        let message = c_arg(message);
        let _scope = CallbackScope::enter(slot_id(&self.callbacks));
        // SAFETY: as in `deliver`.
        unsafe { f(cb.user_data, level as c_int, message.as_ptr()) }
    }
}

// ---------------------------------------------------------------------------
// Error state and call wrapper
// ---------------------------------------------------------------------------

struct LastError {
    code: c_int,
    message: CString,
}

thread_local! {
    static LAST_ERROR: RefCell<LastError> = RefCell::new(LastError { code: CRM_OK, message: CString::default() });
}

fn clear_error() {
    let _ = LAST_ERROR.try_with(|e| {
        let mut e = e.borrow_mut();
        e.code = CRM_OK;
        if !e.message.as_bytes().is_empty() {
            e.message = CString::default();
        }
    });
}

fn set_error(code: c_int, message: &str) {
    let message = c_arg(message);
    let _ = LAST_ERROR.try_with(|e| *e.borrow_mut() = LastError { code, message });
}

/// A failure on its way to the caller.
struct Failure {
    code: crm_status,
    message: String,
}

impl Failure {
    fn new(code: crm_status, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }
}

impl From<::crm_module::Error> for Failure {
    fn from(e: ::crm_module::Error) -> Self {
        Failure {
            code: e.code() as crm_status,
            message: e.to_string(),
        }
    }
}

type FfiResult<T = ()> = Result<T, Failure>;

/// Runs the body of an entry point: clears the thread's last error, catches
/// panics, records the failure.
fn guard(body: impl FnOnce() -> FfiResult) -> crm_status {
    #[cfg(not(test))]
    withhold_panic_messages();
    clear_error();
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => {
            // A call a callback made on this thread during this one (a
            // plugin's log line during crm_execute) may have failed: its
            // error is not this call's.
            clear_error();
            CRM_OK
        }
        Ok(Err(f)) => {
            set_error(f.code, &f.message);
            f.code
        }
        Err(_) => {
            set_error(
                CRM_ERR_INTERNAL,
                "internal error: a panic was caught at the C boundary; the call did not complete",
            );
            CRM_ERR_INTERNAL
        }
    }
}

/// Replaces the panic hook of this library's Rust runtime (once): a panic
/// anywhere in the library (the caller's thread or one of the module's)
/// prints one line to stderr with where it happened, not what it said.
/// Rust's own hook prints the message, and a message can quote data, e.g.
/// the string a slice was cut from; no patient data may reach a log. The
/// panic is still caught and reported (`CRM_ERR_INTERNAL`, or the engine's
/// own containment). A C host has no Rust runtime of its own to disturb:
/// the hook belongs to the copy of the runtime linked into this library.
/// Installed by the first call into the library.
fn withhold_panic_messages() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let at = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            let thread = std::thread::current();
            eprintln!(
                "crm module: internal error (a panic{at}, thread {}); its message is withheld because it may quote data",
                thread.name().unwrap_or("unnamed")
            );
        }));
    });
}

/// The handle behind `m`.
///
/// # Safety
/// `m` is NULL or a live handle from crm_open().
unsafe fn handle<'a>(m: *mut crm_module) -> FfiResult<&'a crm_module> {
    // SAFETY: per the contract, a non-NULL `m` points to a live handle.
    unsafe { m.as_ref() }.ok_or_else(|| Failure::new(CRM_ERR_NULL, "m: the module handle is NULL"))
}

/// Borrows a C string argument, checking NULL, size and UTF-8 before anything
/// is copied.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string (or to at least
/// CRM_MAX_INPUT_BYTES + 1 readable bytes).
unsafe fn read_str<'a>(p: *const c_char, what: &str) -> FfiResult<&'a str> {
    if p.is_null() {
        return Err(Failure::new(CRM_ERR_NULL, format!("{what}: NULL pointer")));
    }
    // SAFETY: `p` is readable up to its NUL or the bound.
    let len = unsafe { libc::strnlen(p, CRM_MAX_INPUT_BYTES + 1) };
    if len > CRM_MAX_INPUT_BYTES {
        return Err(Failure::new(
            CRM_ERR_TOO_LARGE,
            format!("{what}: longer than the limit of {CRM_MAX_INPUT_BYTES} bytes"),
        ));
    }
    // SAFETY: `len` bytes are readable (strnlen found the NUL after them).
    let bytes = unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) };
    std::str::from_utf8(bytes).map_err(|e| {
        Failure::new(
            CRM_ERR_UTF8,
            format!(
                "{what}: not valid UTF-8 (first bad byte at offset {})",
                e.valid_up_to()
            ),
        )
    })
}

/// Sets an out-pointer to NULL (if there is one) so it is NULL on failure.
///
/// # Safety
/// `out` is NULL or writable.
unsafe fn reset_out(out: *mut *mut c_char) {
    if !out.is_null() {
        // SAFETY: per the contract.
        unsafe { out.write(ptr::null_mut()) };
    }
}

/// Turns a serialized result into a new library-owned C string.
fn to_c_json(text: serde_json::Result<String>) -> FfiResult<CString> {
    let text = text.map_err(|e| {
        Failure::new(
            CRM_ERR_INTERNAL,
            format!("internal error: cannot serialize the result: {e}"),
        )
    })?;
    // serde_json escapes control characters, so there is no NUL inside.
    CString::new(text).map_err(|_| {
        Failure::new(
            CRM_ERR_INTERNAL,
            "internal error: the result holds a NUL byte",
        )
    })
}

/// Hands a string to the caller.
///
/// # Safety
/// `out` is NULL or writable.
unsafe fn give(out: *mut *mut c_char, s: CString) {
    if !out.is_null() {
        // SAFETY: per the contract.
        unsafe { out.write(s.into_raw()) };
    }
}

fn require_out<T>(out: *mut T, what: &str) -> FfiResult {
    if out.is_null() {
        Err(Failure::new(CRM_ERR_NULL, format!("{what}: NULL pointer")))
    } else {
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------

/// Opens (creating if needed) the module's database at `db_path` and starts
/// its threads. `config_json` is the open configuration, e.g.
/// `{"clock":{"mode":"manual","start":"2026-01-05T08:00:00Z"}}`; NULL or ""
/// means the defaults (system clock; `"storage"`: 32 MiB page cache per
/// connection, no memory-mapped reads). The schema is `open_config` in
/// include/crm_schemas.json. On success `*out` receives the handle, to be
/// closed with crm_close(); on failure `*out` is NULL.
///
/// Errors: CRM_ERR_NULL (db_path or out NULL), CRM_ERR_UTF8, CRM_ERR_TOO_LARGE,
/// CRM_ERR_INVALID (bad config, empty path), CRM_ERR_CONFLICT (the database
/// is already open in another handle, in this process or another; or it
/// was written by a newer version of the module, whose schema this build
/// does not know), CRM_ERR_STORAGE (cannot open or migrate the database,
/// e.g. a file that is not a database, or one the process may not write).
///
/// Thread safety: may be called from any thread, concurrently (each call
/// makes its own handle). One handle per database file: while a handle is
/// open, the module holds a lock on `<db_path>-lock` (a file it creates
/// beside the database; an open that succeeded leaves it there, one that
/// failed removes the one it made), and another open of the same file is
/// refused; the lock goes with crm_close() or the process. Like SQLite's
/// `-wal` and `-shm` files, the `-lock` file must not be deleted while a
/// handle is open: a second handle would make a new one and open.
///
/// # Safety
/// `db_path` and `config_json` are NULL or NUL-terminated strings; `out` is
/// NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crm_open(
    db_path: *const c_char,
    config_json: *const c_char,
    out: *mut *mut crm_module,
) -> crm_status {
    guard(|| {
        require_out(out, "out")?;
        // SAFETY: `out` is writable per the contract.
        unsafe { out.write(ptr::null_mut()) };
        // SAFETY: per the contract.
        let path = unsafe { read_str(db_path, "db_path") }?;
        let config = if config_json.is_null() {
            ""
        } else {
            // SAFETY: per the contract.
            unsafe { read_str(config_json, "config_json") }?
        };
        if path.is_empty() {
            return Err(Failure::new(CRM_ERR_INVALID, "db_path: empty"));
        }
        let module = Module::open(Path::new(path), config)?;
        let handle = Box::new(crm_module {
            module,
            callbacks: Arc::new(CallbackSlot::default()),
            registration: Mutex::new(()),
        });
        // SAFETY: `out` is writable per the contract.
        unsafe { out.write(Box::into_raw(handle)) };
        Ok(())
    })
}

/// Closes the module: stops its threads, closes the database and frees the
/// handle. Nothing new is handed over once it starts; it waits for the
/// deliveries under way (a host callback in flight, an email the built-in
/// SMTP relay is sending, at most its `timeout_seconds` per reply, a plugin
/// call, at most its deadline) and records their answers, so that what was
/// accepted is not offered again. Effects not yet accepted stay in the
/// database and are offered again after the next crm_open(). NULL is a
/// no-op. Strings returned earlier stay valid
/// (free them with crm_string_free()).
///
/// Called from inside a host callback it does nothing (the handle stays
/// open) and sets the thread's last error to CRM_ERR_CONFLICT.
///
/// Thread safety: must not run concurrently with any other call on the same
/// handle, and the handle must not be used afterwards. Other handles are
/// unaffected.
///
/// # Safety
/// `m` is NULL or a live handle from crm_open(), not used by any other
/// thread during or after the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crm_close(m: *mut crm_module) {
    let _ = guard(|| {
        if m.is_null() {
            return Ok(());
        }
        {
            // SAFETY: `m` is a live handle (per the contract).
            let h = unsafe { &*m };
            refuse_in_callback(h, "crm_close", "")?;
            // No callback runs after this: clearing waits for those in
            // flight (which may still call into this handle), and the
            // cleared slot starts no new one. Only then is the handle taken
            // apart.
            let _registration = h.registration.lock();
            h.callbacks.replace(None);
        }
        // SAFETY: `m` came from Box::into_raw in crm_open and is used by no
        // one else (per the contract); no callback can reach it any more.
        let handle = unsafe { Box::from_raw(m) };
        let crm_module {
            module, callbacks, ..
        } = *handle;
        module.close();
        drop(callbacks);
        Ok(())
    });
}

/// Pushes one event (a JSON object with `event_id` and `type`). Durable when
/// it returns CRM_OK. If `out_result_json` is not NULL it receives
/// `{"event_id":"...","outcome":"applied"|"duplicate"|"stale"}` (free with
/// crm_string_free()); on failure it is set to NULL.
///
/// Errors: CRM_ERR_NULL, CRM_ERR_UTF8, CRM_ERR_TOO_LARGE (over 256 KiB),
/// CRM_ERR_INVALID, CRM_ERR_NOT_FOUND, CRM_ERR_CONFLICT (among others: the
/// event_id was used before for a different event), CRM_ERR_STORAGE,
/// CRM_ERR_CLOSED. A rejected event changes nothing (its event_id is not
/// consumed).
///
/// Thread safety: safe to call concurrently on one handle; also from an
/// effect callback. From a log callback running on the module's worker
/// thread it returns CRM_ERR_CONFLICT at once (the worker would wait for
/// itself).
///
/// # Safety
/// `m` is NULL or a live handle; `event_json` is NULL or NUL-terminated;
/// `out_result_json` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crm_push_event(
    m: *mut crm_module,
    event_json: *const c_char,
    out_result_json: *mut *mut c_char,
) -> crm_status {
    guard(|| {
        // SAFETY (all blocks): per the contract.
        unsafe { reset_out(out_result_json) };
        let h = unsafe { handle(m) }?;
        let text = unsafe { read_str(event_json, "event_json") }?;
        let result = h.module.push(text)?;
        let json = to_c_json(serde_json::to_string(&result))?;
        unsafe { give(out_result_json, json) };
        Ok(())
    })
}

/// Pushes a JSON array of events atomically: all are applied or none. If
/// `out_results_json` is not NULL it receives a JSON array with one
/// `{"event_id","outcome"}` object per event, in order (free with
/// crm_string_free()); on failure it is set to NULL.
///
/// Errors: as crm_push_event(); batches are limited to 10,000 events and
/// 64 MiB, each event in them to 256 KiB. On any error no event of the
/// batch is applied.
///
/// Thread safety: safe to call concurrently on one handle; also from an
/// effect callback. From a log callback running on the module's worker
/// thread it returns CRM_ERR_CONFLICT at once (the worker would wait for
/// itself).
///
/// # Safety
/// `m` is NULL or a live handle; `events_json_array` is NULL or
/// NUL-terminated; `out_results_json` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crm_push_events(
    m: *mut crm_module,
    events_json_array: *const c_char,
    out_results_json: *mut *mut c_char,
) -> crm_status {
    guard(|| {
        // SAFETY (all blocks): per the contract.
        unsafe { reset_out(out_results_json) };
        let h = unsafe { handle(m) }?;
        let text = unsafe { read_str(events_json_array, "events_json_array") }?;
        let results = h.module.push_batch(text)?;
        let json = to_c_json(serde_json::to_string(&results))?;
        unsafe { give(out_results_json, json) };
        Ok(())
    })
}

/// A JSON-in, JSON-out entry point: validates `out_json`, the handle and
/// the input string, runs `f`, and hands the answer to the caller.
///
/// # Safety
/// `m` is NULL or a live handle; `input` is NULL or NUL-terminated;
/// `out_json` is NULL or writable.
unsafe fn json_call(
    m: *mut crm_module,
    input: *const c_char,
    input_name: &'static str,
    out_json: *mut *mut c_char,
    f: impl FnOnce(&Module, &str) -> ::crm_module::Result<serde_json::Value>,
) -> crm_status {
    guard(|| {
        require_out(out_json, "out_json")?;
        // SAFETY (all blocks): per this function's contract.
        unsafe { reset_out(out_json) };
        let h = unsafe { handle(m) }?;
        let text = unsafe { read_str(input, input_name) }?;
        let result = f(&h.module, text)?;
        let json = to_c_json(serde_json::to_string(&result))?;
        unsafe { give(out_json, json) };
        Ok(())
    })
}

/// Runs a command, e.g. `{"command":"automation.activate","automation_id":"a1"}`.
/// `*out_json` receives the command's JSON result (free with
/// crm_string_free()); on failure it is NULL. The commands: automation.*,
/// list.*, template.*, settings.get/update, and plugin.install / configure /
/// enable / disable / remove / list for WebAssembly plugins
/// (`plugin.install` compiles the component on the calling thread). Their
/// JSON Schemas are in include/crm_schemas.json.
///
/// Errors: CRM_ERR_NULL, CRM_ERR_UTF8, CRM_ERR_TOO_LARGE, CRM_ERR_INVALID
/// (including a plugin component that does not load or was built against
/// another contract version), CRM_ERR_NOT_FOUND (unknown automation, list
/// or plugin id), CRM_ERR_CONFLICT,
/// CRM_ERR_STORAGE, CRM_ERR_CLOSED. A failed command changes nothing.
///
/// Thread safety: safe to call concurrently on one handle; also from an
/// effect callback. From a log callback running on the module's worker
/// thread it returns CRM_ERR_CONFLICT at once (the worker would wait for
/// itself).
///
/// # Safety
/// `m` is NULL or a live handle; `command_json` is NULL or NUL-terminated;
/// `out_json` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crm_execute(
    m: *mut crm_module,
    command_json: *const c_char,
    out_json: *mut *mut c_char,
) -> crm_status {
    // SAFETY: the caller's contract is the one `json_call` needs.
    unsafe {
        json_call(m, command_json, "command_json", out_json, |module, text| {
            module.execute(text)
        })
    }
}

/// Answers a request the host's web tier received on a tracking URL (open
/// pixel `/o/…`, wrapped link `/c/…`, unsubscribe link `/u/…`) and records it.
/// `request_json` is `{"method":"GET","path":"/c/<token>","user_agent":"…",
/// "ip_class":null}`; `*out_json` receives what to answer:
/// `{"status":302,"location":"https://…","content_type":…,"body_base64":…,
/// "body_text":…,"cache_control":"no-store…"}` (free with crm_string_free()).
/// A click only redirects to a link that was in the message. A GET never
/// unsubscribes: it answers an HTML page whose button POSTs back, and that
/// POST (or a mail client's one-click POST) unsubscribes. An unknown or
/// forged token gets a 404 answer, not an error.
///
/// Errors: CRM_ERR_NULL, CRM_ERR_UTF8, CRM_ERR_TOO_LARGE, CRM_ERR_INVALID,
/// CRM_ERR_STORAGE, CRM_ERR_CLOSED, CRM_ERR_CONFLICT (from a log callback:
/// see the thread safety below).
///
/// Thread safety: safe to call concurrently on one handle; also from an
/// effect callback. From a log callback running on the module's worker
/// thread it returns CRM_ERR_CONFLICT at once (the worker would wait for
/// itself).
///
/// # Safety
/// `m` is NULL or a live handle; `request_json` is NULL or NUL-terminated;
/// `out_json` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crm_tracking_hit(
    m: *mut crm_module,
    request_json: *const c_char,
    out_json: *mut *mut c_char,
) -> crm_status {
    // SAFETY: the caller's contract is the one `json_call` needs.
    unsafe {
        json_call(m, request_json, "request_json", out_json, |module, text| {
            module.tracking_hit(text)
        })
    }
}

/// Builds the view model of a screen, by name (e.g. "automation_list"), with
/// JSON parameters (NULL means `{}`). `*out_json` receives the view model as
/// JSON (free with crm_string_free()); on failure it is NULL. Views read the
/// last committed state and never change anything.
///
/// Errors: CRM_ERR_NULL, CRM_ERR_UTF8, CRM_ERR_TOO_LARGE, CRM_ERR_INVALID,
/// CRM_ERR_NOT_FOUND (unknown view or id), CRM_ERR_STORAGE.
///
/// Thread safety: safe to call concurrently on one handle (view queries are
/// serialized on the handle's read connection); also from a host callback.
///
/// # Safety
/// `m` is NULL or a live handle; `view_name` and `params_json` are NULL or
/// NUL-terminated; `out_json` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crm_query_view(
    m: *mut crm_module,
    view_name: *const c_char,
    params_json: *const c_char,
    out_json: *mut *mut c_char,
) -> crm_status {
    guard(|| {
        require_out(out_json, "out_json")?;
        // SAFETY (all blocks): per the contract.
        unsafe { reset_out(out_json) };
        let h = unsafe { handle(m) }?;
        let name = unsafe { read_str(view_name, "view_name") }?;
        let params = if params_json.is_null() {
            "{}"
        } else {
            unsafe { read_str(params_json, "params_json") }?
        };
        let result = h.module.view(name, params)?;
        let json = to_c_json(serde_json::to_string(&result))?;
        unsafe { give(out_json, json) };
        Ok(())
    })
}

/// Advances the manual clock by `ms` milliseconds (0 to ten years) as a
/// real clock would pass: everything that falls due on the way runs at its
/// own instant, and effects are handed to the callbacks when they fall due,
/// the advance waiting for the answers before the clock goes on (so sending
/// limits, sending hours, retries and channel fallbacks act at the simulated
/// times they would in real time, to the minute). When no answer comes for
/// 10 seconds (a callback that blocks), the advance stops waiting, and later
/// advances do not wait while that answer is missing; effects are still
/// handed over as they fall due. Call crm_wait_idle() afterwards to wait
/// for everything to settle.
///
/// Errors: CRM_ERR_NULL, CRM_ERR_CONFLICT (the module runs on the system
/// clock, or called from a host callback), CRM_ERR_INVALID (`ms` out of
/// range), CRM_ERR_STORAGE, CRM_ERR_CLOSED. An advance is not one
/// transaction: one that fails with CRM_ERR_STORAGE may have moved the
/// clock part of the way (the work due before that instant ran and is
/// committed, the rest did not), so read crm_clock_now() before trying
/// again.
///
/// Thread safety: safe to call concurrently on one handle (advances are
/// serialized); not from a host callback (it returns CRM_ERR_CONFLICT at
/// once).
///
/// # Safety
/// `m` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crm_clock_advance(m: *mut crm_module, ms: i64) -> crm_status {
    guard(|| {
        // SAFETY: per the contract.
        let h = unsafe { handle(m) }?;
        refuse_in_callback(h, "crm_clock_advance", WAITS_FOR_ITSELF)?;
        h.module.advance_clock(ms)?;
        Ok(())
    })
}

/// Reads the module's current time, in milliseconds since the Unix epoch
/// (UTC), into `*out_ms` (0 on failure). It never goes back: a handle opened
/// with a clock behind the database's last recorded instant (a manual start
/// in the past, a wall clock set back) starts at that instant, and the
/// system clock holds there until the wall clock passes it.
///
/// Errors: CRM_ERR_NULL.
///
/// Thread safety: safe to call concurrently on one handle; also from a host
/// callback.
///
/// # Safety
/// `m` is NULL or a live handle; `out_ms` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crm_clock_now(m: *mut crm_module, out_ms: *mut i64) -> crm_status {
    guard(|| {
        require_out(out_ms, "out_ms")?;
        // SAFETY: per the contract.
        unsafe { out_ms.write(0) };
        // SAFETY: per the contract.
        let h = unsafe { handle(m) }?;
        let now = h.module.now();
        // SAFETY: per the contract.
        unsafe { out_ms.write(now) };
        Ok(())
    })
}

/// Waits until nothing is queued, due or being delivered, or until
/// `timeout_ms` milliseconds (>= 0) have passed. Effects answered
/// CRM_EFFECT_RETRY wait for their backoff and do not keep the module busy.
/// A timeout of 0 asks whether the module is idle now: CRM_OK if it is,
/// CRM_ERR_TIMEOUT if not (the answer may take up to a second longer when
/// the worker is in the middle of a long round).
///
/// Errors: CRM_ERR_NULL, CRM_ERR_INVALID (negative timeout), CRM_ERR_TIMEOUT,
/// CRM_ERR_CLOSED, CRM_ERR_CONFLICT (called from a host callback).
///
/// Thread safety: safe to call concurrently on one handle; not from a host
/// callback (it would wait for the callback itself: it returns
/// CRM_ERR_CONFLICT at once).
///
/// # Safety
/// `m` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crm_wait_idle(m: *mut crm_module, timeout_ms: i64) -> crm_status {
    guard(|| {
        // SAFETY: per the contract.
        let h = unsafe { handle(m) }?;
        refuse_in_callback(h, "crm_wait_idle", WAITS_FOR_ITSELF)?;
        let ms = u64::try_from(timeout_ms).map_err(|_| {
            Failure::new(
                CRM_ERR_INVALID,
                "invalid input: timeout_ms: must not be negative",
            )
        })?;
        h.module.wait_idle(Duration::from_millis(ms))?;
        Ok(())
    })
}

/// Registers the host's callbacks (copied), replacing any previous ones, or
/// clears them when `callbacks` is NULL. Effects waiting in the outbox are
/// offered as soon as callbacks are set. When this returns, no callback of
/// the previous registration is running or will run: its `user_data` may be
/// freed.
///
/// Errors: CRM_ERR_NULL (m), CRM_ERR_INVALID (`version` is not
/// CRM_HOST_CALLBACKS_VERSION; nothing changed), CRM_ERR_CONFLICT (called
/// from a host callback), CRM_ERR_CLOSED.
///
/// Thread safety: safe to call concurrently on one handle (the last call
/// wins); not from a host callback.
///
/// # Safety
/// `m` is NULL or a live handle; `callbacks` is NULL or points to a
/// crm_host_callbacks whose function pointers and user_data follow the
/// contract documented on the struct.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crm_set_host_callbacks(
    m: *mut crm_module,
    callbacks: *const crm_host_callbacks,
) -> crm_status {
    guard(|| {
        // SAFETY: per the contract.
        let h = unsafe { handle(m) }?;
        refuse_in_callback(h, "crm_set_host_callbacks", "")?;
        let new = if callbacks.is_null() {
            None
        } else {
            // Read the version alone first: a struct of another version may
            // have another size.
            // SAFETY: `callbacks` points to at least the version field.
            let version = unsafe { ptr::addr_of!((*callbacks).version).read_unaligned() };
            if version != CRM_HOST_CALLBACKS_VERSION {
                return Err(Failure::new(
                    CRM_ERR_INVALID,
                    format!(
                        "invalid input: callbacks.version is {version}; this library expects CRM_HOST_CALLBACKS_VERSION ({CRM_HOST_CALLBACKS_VERSION})"
                    ),
                ));
            }
            // SAFETY: a version-1 struct is a whole crm_host_callbacks.
            Some(unsafe { callbacks.read_unaligned() })
        };
        let set = new.is_some();
        // One registration at a time, the slot and the host together.
        let _registration = h.registration.lock();
        // Waits for the calls of the callbacks replaced.
        let old = h.callbacks.replace(new);
        let host: Option<Arc<dyn Host>> = if set {
            Some(Arc::new(CallbackHost {
                callbacks: h.callbacks.clone(),
            }))
        } else {
            None
        };
        if let Err(e) = h.module.set_host(host) {
            // Refused (the module is closing): nothing changes.
            h.callbacks.replace(old);
            return Err(e.into());
        }
        Ok(())
    })
}

/// Frees a string returned by the library (crm_push_event(),
/// crm_push_events(), crm_execute(), crm_query_view(), crm_tracking_hit()).
/// NULL is a no-op.
/// Never pass it a string from anywhere else, nor the pointers of
/// crm_version() or crm_last_error_message().
///
/// Thread safety: any thread; does not touch the last error.
///
/// # Safety
/// `s` is NULL or a string returned by this library, not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crm_string_free(s: *mut c_char) {
    if s.is_null() {
        return;
    }
    // SAFETY: `s` came from CString::into_raw in this library.
    let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { CString::from_raw(s) })));
}

/// The status code of the calling thread's last failed call, or CRM_OK when
/// the last call succeeded. Every function that returns a crm_status, and
/// crm_close(), resets it on entry.
///
/// Thread safety: any thread; the error state is per thread, so a host thread
/// pool sees each thread's own errors.
#[unsafe(no_mangle)]
pub extern "C" fn crm_last_error_code() -> c_int {
    LAST_ERROR.try_with(|e| e.borrow().code).unwrap_or(CRM_OK)
}

/// A description of the calling thread's last failure (ids, field names and
/// limits only, never patient data), or "" when the last call succeeded.
/// Never NULL. Owned by the library: do not free it. It stays valid until
/// the next crm_* call on the same thread other than crm_last_error_code()
/// and crm_last_error_message() (copy it to keep it).
///
/// Thread safety: any thread; the error state is per thread.
#[unsafe(no_mangle)]
pub extern "C" fn crm_last_error_message() -> *const c_char {
    LAST_ERROR
        .try_with(|e| e.borrow().message.as_ptr())
        .unwrap_or(c"".as_ptr())
}

/// The library version, e.g. "0.1.0": a static string (do not free).
///
/// Thread safety: any thread.
#[unsafe(no_mangle)]
pub extern "C" fn crm_version() -> *const c_char {
    VERSION.as_ptr()
}

/// The library version as MAJOR*10000 + MINOR*100 + PATCH (equal to the
/// header's CRM_VERSION_NUMBER when header and library match).
///
/// Thread safety: any thread.
#[unsafe(no_mangle)]
pub extern "C" fn crm_version_number() -> u32 {
    version_number()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run as a child process by the test below (with the variable set):
    /// installs the hook and panics with data in the message.
    #[test]
    fn panic_child() {
        if std::env::var_os("CRM_FFI_PANIC_CHILD").is_none() {
            return;
        }
        withhold_panic_messages();
        let caught = std::panic::catch_unwind(|| {
            panic!("jane.doe@example.com, +16175550123");
        });
        assert!(caught.is_err());
    }

    #[test]
    fn a_panic_prints_where_it_happened_not_what_it_said() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "tests::panic_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("CRM_FFI_PANIC_CHILD", "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(stderr.contains("its message is withheld"), "{stderr}");
        assert!(stderr.contains("lib.rs:"), "{stderr}");
        assert!(
            !stderr.contains("jane") && !stderr.contains("6175550123"),
            "{stderr}"
        );
    }

    #[test]
    fn a_nested_callback_scope_keeps_the_outer_mark() {
        let (a, b) = (1, 2);
        assert!(!in_callback(a));
        let outer = CallbackScope::enter(a);
        {
            let _inner = CallbackScope::enter(a);
            assert!(in_callback(a));
        }
        assert!(
            in_callback(a),
            "leaving the inner callback cleared the outer's mark"
        );
        {
            // A callback of another handle, inside: its mark is its own.
            let _other = CallbackScope::enter(b);
            assert!(in_callback(a) && in_callback(b));
        }
        assert!(in_callback(a) && !in_callback(b));
        drop(outer);
        assert!(!in_callback(a));
    }

    unsafe extern "C" fn accept(_: *mut c_void, _: *const c_char, _: *const c_char) -> c_int {
        CRM_EFFECT_ACCEPTED
    }

    /// A handle on a new database in `dir`, with the default config.
    fn open_in(dir: &tempfile::TempDir) -> *mut crm_module {
        let path = CString::new(dir.path().join("m.db").to_str().expect("UTF-8")).expect("path");
        let mut m = ptr::null_mut();
        // SAFETY: valid strings and out-pointer.
        assert_eq!(
            unsafe { crm_open(path.as_ptr(), ptr::null(), &mut m) },
            CRM_OK
        );
        m
    }

    unsafe extern "C" fn slow_log(_: *mut c_void, _: c_int, _: *const c_char) {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }

    /// Clearing the callbacks waits for the calls in flight when it starts,
    /// not for a moment with none: log lines from four threads, one after
    /// the other without a pause, never hold it up. (With a lock that let
    /// new readers in while a writer waited, it waited as long as they
    /// kept coming.)
    #[test]
    fn steady_log_lines_never_hold_a_replacement_up() {
        let dir = tempfile::tempdir().expect("temp dir");
        let m = open_in(&dir);
        struct Ptr(*mut crm_module);
        // SAFETY: crm_set_host_callbacks is documented as safe on any thread.
        unsafe impl Send for Ptr {}
        let cb = crm_host_callbacks {
            version: CRM_HOST_CALLBACKS_VERSION,
            user_data: ptr::null_mut(),
            deliver_message: None,
            write_property: None,
            create_task: None,
            log: Some(slow_log),
        };
        // SAFETY: a live handle and a valid struct.
        assert_eq!(unsafe { crm_set_host_callbacks(m, &cb) }, CRM_OK);
        // SAFETY: a live handle, closed at the end of the test.
        let host = CallbackHost {
            callbacks: unsafe { handle(m) }
                .ok()
                .expect("a handle")
                .callbacks
                .clone(),
        };
        let stop = std::sync::atomic::AtomicBool::new(false);
        let (done, cleared) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            for _ in 0..4 {
                let (host, stop) = (&host, &stop);
                s.spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        host.log(LogLevel::Info, "a line");
                    }
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
            let shared = Ptr(m);
            s.spawn(move || {
                let shared = shared;
                // SAFETY: a live handle; NULL clears.
                let rc = unsafe { crm_set_host_callbacks(shared.0, ptr::null()) };
                let _ = done.send(rc);
            });
            // A hang would keep the log threads going: they stop after the
            // answer, or after 20 s without one.
            let rc = cleared.recv_timeout(std::time::Duration::from_secs(20));
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            assert_eq!(
                rc.ok(),
                Some(CRM_OK),
                "clearing waited for log lines that kept coming"
            );
        });
        // SAFETY: no other thread uses the handle any more.
        unsafe { crm_close(m) };
    }

    #[test]
    fn concurrent_registrations_leave_the_slot_and_the_host_in_step() {
        let dir = tempfile::tempdir().expect("temp dir");
        let m = open_in(&dir);
        struct Ptr(*mut crm_module);
        // SAFETY: crm_set_host_callbacks is documented as safe concurrently.
        unsafe impl Sync for Ptr {}
        let shared = Ptr(m);
        let cb = crm_host_callbacks {
            version: CRM_HOST_CALLBACKS_VERSION,
            user_data: ptr::null_mut(),
            deliver_message: Some(accept),
            write_property: Some(accept),
            create_task: Some(accept),
            log: None,
        };
        // Two threads register and clear at the same moment, round after
        // round; between rounds one of them checks that the slot the
        // callbacks are read from and the module's host agree.
        const ROUNDS: usize = 20_000;
        let step = std::sync::Barrier::new(2);
        let disagreements = parking_lot::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for set in [true, false] {
                let (shared, step, cb, disagreements) = (&shared, &step, &cb, &disagreements);
                s.spawn(move || {
                    let arg: *const crm_host_callbacks = if set { cb } else { ptr::null() };
                    for round in 0..ROUNDS {
                        step.wait();
                        // SAFETY: a live handle and a valid struct (or NULL).
                        assert_eq!(unsafe { crm_set_host_callbacks(shared.0, arg) }, CRM_OK);
                        step.wait();
                        if set {
                            // SAFETY: a live handle, not closed yet.
                            let h = unsafe { handle(shared.0) }.ok().expect("a handle");
                            if h.callbacks.is_set() != h.module.has_host() {
                                disagreements.lock().push(round);
                            }
                        }
                    }
                });
            }
        });
        // SAFETY: no other thread uses the handle any more.
        unsafe { crm_close(shared.0) };
        let disagreements = disagreements.into_inner();
        assert!(
            disagreements.is_empty(),
            "the callbacks slot and the module's host disagreed after {} of {ROUNDS} rounds (first: round {:?})",
            disagreements.len(),
            disagreements.first()
        );
    }
}
