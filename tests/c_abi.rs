//! The C ABI (`ffi/`, `include/crm_module.h`):
//! - a real C host (`tests/c/test_abi.c`) compiled with
//!   `-std=c99 -Wall -Wextra -Werror -pedantic`, run natively and under
//!   valgrind memcheck (no errors, no definite/indirect leaks);
//! - the header compiles as C++ (`tests/c/header_cpp.cpp`);
//! - the extern functions called from Rust: from several threads on one
//!   handle, and every error case leaving the database unchanged.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::path::Path;
use std::process::Command;
use std::ptr;
use std::sync::Mutex;

use crm_ffi::*;
use crm_integration_tests as support;

// ---------------------------------------------------------------------------
// C programs
// ---------------------------------------------------------------------------

fn run_c_test(args: &[&str], wrapper: Option<&[&str]>) -> std::process::Output {
    // One executable per test: the tests run in parallel.
    let name = if wrapper.is_some() {
        "test_abi_valgrind"
    } else {
        "test_abi"
    };
    let exe = support::compile_c_against_ffi("tests/c/test_abi.c", name);
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cmd = match wrapper {
        Some(w) => {
            let mut c = Command::new(w[0]);
            c.args(&w[1..]).arg(&exe);
            c
        }
        None => Command::new(&exe),
    };
    cmd.args(args).env("TMPDIR", tmp.path());
    let out = cmd.output().expect("run the C test");
    drop(tmp);
    out
}

fn assert_c_summary(out: &std::process::Output) {
    let last = support::last_line(out);
    let summary = support::parse_summary(&last);
    assert!(
        out.status.success() && matches!(summary, Some((p, 0)) if p > 0),
        "the C test failed (last line {last:?}):\n{}",
        support::describe(out)
    );
}

#[test]
fn c_host_program_passes() {
    let out = run_c_test(&["8", "20"], None);
    assert_c_summary(&out);
    eprintln!("C test: {}", support::last_line(&out));
}

#[test]
fn header_compiles_as_cpp() {
    support::check_cxx_syntax("tests/c/header_cpp.cpp");
}

#[test]
fn c_host_program_is_clean_under_valgrind() {
    let mut memcheck = support::memcheck();
    memcheck.push("--track-origins=yes".into());
    let wrapper: Vec<&str> = memcheck.iter().map(String::as_str).collect();
    // Fewer iterations: memcheck serializes the threads and runs slower.
    let out = run_c_test(&["8", "10"], Some(&wrapper));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary = stderr
        .lines()
        .rfind(|l| l.contains("ERROR SUMMARY"))
        .unwrap_or("");
    eprintln!("valgrind: {}", summary.trim());
    for l in stderr.lines().filter(|l| {
        l.contains("definitely lost")
            || l.contains("indirectly lost")
            || l.contains("possibly lost")
    }) {
        eprintln!("valgrind: {}", l.trim());
    }
    assert_c_summary(&out);
    assert!(
        summary.contains("ERROR SUMMARY: 0 errors"),
        "valgrind reported errors:\n{}",
        support::describe(&out)
    );
}

// ---------------------------------------------------------------------------
// The extern functions from Rust
// ---------------------------------------------------------------------------

const MANUAL: &CStr = c"{\"clock\":{\"mode\":\"manual\",\"start\":\"2026-01-05T08:00:00Z\"},\"initial_settings\":{\"practice_name\":\"Riverside\",\"time_zone\":\"UTC\",\"email_footer\":{\"postal_address\":\"12 River Road, Boston\",\"text\":\"Unsubscribe: {{unsubscribe_link}}\"},\"tracking\":{\"base_url\":\"https://t.example.org\",\"email_opens\":true}}}";
const START_MS: i64 = 1_767_600_000_000;
const DAY_MS: i64 = 86_400_000;

fn cs(s: &str) -> CString {
    CString::new(s).unwrap()
}

fn last_message() -> String {
    // SAFETY: never NULL, valid until the next call on this thread.
    unsafe { CStr::from_ptr(crm_last_error_message()) }
        .to_string_lossy()
        .into_owned()
}

/// Takes a library string.
fn take(p: *mut c_char) -> String {
    assert!(!p.is_null());
    // SAFETY: a library string, freed once here.
    let s = unsafe { CStr::from_ptr(p) }.to_str().unwrap().to_string();
    unsafe { crm_string_free(p) };
    s
}

struct Handle(*mut crm_module);

// SAFETY: the C ABI documents every function but crm_close as safe to call
// concurrently on one handle; crm_close runs in Drop, after the threads.
unsafe impl Send for Handle {}
unsafe impl Sync for Handle {}

impl Handle {
    fn open(path: &Path, config: Option<&CStr>) -> Handle {
        let p = cs(path.to_str().unwrap());
        let mut m = ptr::null_mut();
        let rc = unsafe {
            crm_open(
                p.as_ptr(),
                config.map_or(ptr::null(), |c| c.as_ptr()),
                &mut m,
            )
        };
        assert_eq!(rc, CRM_OK, "{}", last_message());
        assert!(!m.is_null());
        Handle(m)
    }

    fn execute(&self, cmd: &str) -> Result<String, (c_int, String)> {
        let c = cs(cmd);
        let mut out = ptr::null_mut();
        match unsafe { crm_execute(self.0, c.as_ptr(), &mut out) } {
            CRM_OK => Ok(take(out)),
            rc => {
                assert!(out.is_null());
                Err((rc, last_message()))
            }
        }
    }

    fn push(&self, event: &str) -> Result<String, (c_int, String)> {
        let c = cs(event);
        let mut out = ptr::null_mut();
        match unsafe { crm_push_event(self.0, c.as_ptr(), &mut out) } {
            CRM_OK => Ok(take(out)),
            rc => {
                assert!(out.is_null());
                Err((rc, last_message()))
            }
        }
    }

    fn view(&self, name: &str, params: Option<&str>) -> Result<String, (c_int, String)> {
        let n = cs(name);
        let p = params.map(cs);
        let mut out = ptr::null_mut();
        let rc = unsafe {
            crm_query_view(
                self.0,
                n.as_ptr(),
                p.as_ref().map_or(ptr::null(), |p| p.as_ptr()),
                &mut out,
            )
        };
        match rc {
            CRM_OK => Ok(take(out)),
            rc => {
                assert!(out.is_null());
                Err((rc, last_message()))
            }
        }
    }

    fn now(&self) -> i64 {
        let mut t = 0;
        assert_eq!(unsafe { crm_clock_now(self.0, &mut t) }, CRM_OK);
        t
    }

    fn wait_idle(&self) {
        assert_eq!(
            unsafe { crm_wait_idle(self.0, 30_000) },
            CRM_OK,
            "{}",
            last_message()
        );
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        unsafe { crm_close(self.0) };
    }
}

/// What the Rust host's callbacks saw.
#[derive(Default)]
struct Seen {
    keys: Mutex<Vec<String>>,
    logs: Mutex<usize>,
}

unsafe extern "C" fn deliver(
    user_data: *mut c_void,
    key: *const c_char,
    payload: *const c_char,
) -> c_int {
    let seen = unsafe { &*(user_data as *const Seen) };
    let key = unsafe { CStr::from_ptr(key) }.to_str().unwrap().to_string();
    let payload = unsafe { CStr::from_ptr(payload) }.to_str().unwrap();
    assert!(payload.contains(&key));
    seen.keys.lock().unwrap().push(key);
    CRM_EFFECT_ACCEPTED
}

unsafe extern "C" fn log_line(user_data: *mut c_void, level: c_int, message: *const c_char) {
    let seen = unsafe { &*(user_data as *const Seen) };
    assert!((CRM_LOG_ERROR..=CRM_LOG_DEBUG).contains(&level));
    assert!(!message.is_null());
    *seen.logs.lock().unwrap() += 1;
}

fn callbacks(seen: &Seen) -> crm_host_callbacks {
    crm_host_callbacks {
        version: CRM_HOST_CALLBACKS_VERSION,
        user_data: seen as *const Seen as *mut c_void,
        deliver_message: Some(deliver),
        write_property: None,
        create_task: None,
        log: Some(log_line),
    }
}

const CREATE_AUTOMATION: &str = r#"{"command":"automation.create","automation_id":"a1","definition":{"name":"Welcome","trigger":{"type":"contact_created"},"run_window":{"mode":"any_time"},"steps":[{"type":"send_email","subject":"Hi","body":"Hello {{firstname}}"},{"type":"delay","amount":1,"unit":"days"},{"type":"send_sms","message":"Hi"}]}}"#;
const ACTIVATE: &str = r#"{"command":"automation.activate","automation_id":"a1"}"#;

fn contact_event(event_id: &str, contact_id: &str) -> String {
    format!(
        r#"{{"event_id":"{event_id}","type":"contact.upserted","contact":{{"id":"{contact_id}","first_name":"Ann","email":"{contact_id}@example.com","phone":"+16175550101","email_subscription":"subscribed","sms_subscription":"subscribed"}}}}"#
    )
}

fn setup(dir: &Path, seen: &Seen) -> Handle {
    let h = Handle::open(&dir.join("crm.db"), Some(MANUAL));
    let cb = callbacks(seen);
    assert_eq!(
        unsafe { crm_set_host_callbacks(h.0, &cb) },
        CRM_OK,
        "{}",
        last_message()
    );
    h.execute(CREATE_AUTOMATION).unwrap();
    h.execute(ACTIVATE).unwrap();
    h
}

#[test]
fn rust_host_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let seen = Seen::default();
    let h = setup(dir.path(), &seen);
    assert_eq!(h.now(), START_MS);
    assert!(
        h.push(&contact_event("e1", "c1"))
            .unwrap()
            .contains(r#""outcome":"applied""#)
    );
    assert!(
        h.push(&contact_event("e1", "c1"))
            .unwrap()
            .contains(r#""outcome":"duplicate""#)
    );
    assert_eq!(
        unsafe { crm_clock_advance(h.0, 2 * DAY_MS) },
        CRM_OK,
        "{}",
        last_message()
    );
    h.wait_idle();
    let keys = seen.keys.lock().unwrap().clone();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert_ne!(keys[0], keys[1]);
    let list = h.view("automation_list", None).unwrap();
    assert!(list.contains("Welcome"));
    let version = unsafe { CStr::from_ptr(crm_version()) }.to_str().unwrap();
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
    assert_eq!(crm_version_number(), CRM_VERSION_NUMBER);
    // Clearing the callbacks, then closing, while `seen` is alive.
    assert_eq!(unsafe { crm_set_host_callbacks(h.0, ptr::null()) }, CRM_OK);
    drop(h);
}

#[test]
fn rust_threads_share_one_handle() {
    const THREADS: usize = 8;
    const ITERATIONS: usize = 25;
    let dir = tempfile::tempdir().unwrap();
    let seen = Seen::default();
    let h = setup(dir.path(), &seen);
    h.execute(r#"{"command":"list.create","list_id":"l1","name":"VIP"}"#)
        .unwrap();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (h, seen, dir) = (&h, &seen, dir.path());
            s.spawn(move || {
                // A handle of this thread's own, opened and closed concurrently.
                let own = Handle::open(&dir.join(format!("own{t}.db")), Some(MANUAL));
                assert_eq!(unsafe { crm_clock_advance(own.0, DAY_MS) }, CRM_OK);
                assert_eq!(own.now(), START_MS + DAY_MS);
                drop(own);
                for i in 0..ITERATIONS {
                    let out = h
                        .push(&contact_event(&format!("t{t}-{i}"), &format!("c{t}-{i}")))
                        .unwrap();
                    assert!(out.contains(r#""outcome":"applied""#), "{out}");
                    assert!(
                        h.view("automation_list", Some("{}"))
                            .unwrap()
                            .contains("Welcome")
                    );
                    assert!(h.now() >= START_MS);
                    if i == 0 {
                        // This thread's error stays this thread's.
                        assert_eq!(h.push("{oops").unwrap_err().0, CRM_ERR_INVALID);
                        std::thread::sleep(std::time::Duration::from_millis(2));
                        assert_eq!(crm_last_error_code(), CRM_ERR_INVALID);
                        assert!(!last_message().is_empty());
                    }
                    let added = h
                        .execute(&format!(
                            r#"{{"command":"list.add_contacts","list_id":"l1","contact_ids":["c{t}-{i}"]}}"#
                        ))
                        .unwrap();
                    assert!(added.contains(r#""changed":1"#), "{added}");
                    // 1 ms: nothing falls due, but every advance must count.
                    assert_eq!(unsafe { crm_clock_advance(h.0, 1) }, CRM_OK);
                    if i % 5 == 0 {
                        let cb = callbacks(seen);
                        assert_eq!(unsafe { crm_set_host_callbacks(h.0, &cb) }, CRM_OK);
                        assert_eq!(unsafe { crm_wait_idle(h.0, 60_000) }, CRM_OK);
                    }
                }
                let batch = format!(
                    "[{},{}]",
                    contact_event(&format!("b{t}-0"), &format!("bc{t}-0")),
                    contact_event(&format!("b{t}-1"), &format!("bc{t}-1"))
                );
                let c = cs(&batch);
                let mut out = ptr::null_mut();
                assert_eq!(
                    unsafe { crm_push_events(h.0, c.as_ptr(), &mut out) },
                    CRM_OK,
                    "{}",
                    last_message()
                );
                assert_eq!(take(out).matches(r#""outcome":"applied""#).count(), 2);
                assert_eq!(unsafe { crm_wait_idle(h.0, 30_000) }, CRM_OK);
            });
        }
    });
    h.wait_idle();
    assert_eq!(h.now(), START_MS + (THREADS * ITERATIONS) as i64);
    let expected = THREADS * (ITERATIONS + 2);
    let list: serde_json::Value =
        serde_json::from_str(&h.view("automation_list", None).unwrap()).unwrap();
    assert_eq!(
        list["rows"][0]["enrolled"].as_u64(),
        Some(expected as u64),
        "{list}"
    );
    let keys = seen.keys.lock().unwrap().clone();
    assert_eq!(keys.len(), expected, "one welcome email per contact");
    let distinct: std::collections::HashSet<_> = keys.iter().collect();
    assert_eq!(distinct.len(), keys.len());
    assert!(
        h.push(&contact_event("t3-7", "c3-7"))
            .unwrap()
            .contains("duplicate")
    );
}

const CREATE_TASK_AUTOMATION: &str = r#"{"command":"automation.create","automation_id":"t1","definition":{"name":"Call new leads","trigger":{"type":"contact_created"},"run_window":{"mode":"any_time"},"steps":[{"id":"call","type":"create_task","title":"Call","assignee":{"kind":"queue","name":"desk"}}]}}"#;

/// The task effect's outbox row: (status, attempts), and how many effects
/// were logged as failed.
fn task_row(db: &Path) -> ((String, i64), i64) {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let row = conn
        .query_row(
            "SELECT status, attempts FROM outbox WHERE kind = 'task'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let failed = conn
        .query_row(
            "SELECT count(*) FROM events WHERE kind = 'effect_failed'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    (row, failed)
}

#[test]
fn an_effect_without_its_callback_waits_and_uses_no_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crm.db");
    let seen = Seen::default();
    let h = Handle::open(&db, Some(MANUAL));
    h.execute(CREATE_TASK_AUTOMATION).unwrap();
    h.execute(r#"{"command":"automation.activate","automation_id":"t1"}"#)
        .unwrap();
    h.push(&contact_event("e1", "c1")).unwrap();
    // Ten days pass (the outbox gives up after 8 attempts, 13 hours of
    // backoff): first with no callbacks at all, then with callbacks that
    // leave create_task NULL.
    let ten_days = |h: &Handle| {
        for _ in 0..10 {
            assert_eq!(unsafe { crm_clock_advance(h.0, DAY_MS) }, CRM_OK);
            h.wait_idle();
        }
    };
    ten_days(&h);
    assert_eq!(task_row(&db), (("pending".into(), 0), 0), "no callbacks");
    let cb = callbacks(&seen);
    assert!(cb.create_task.is_none());
    assert_eq!(unsafe { crm_set_host_callbacks(h.0, &cb) }, CRM_OK);
    ten_days(&h);
    assert_eq!(
        task_row(&db),
        (("pending".into(), 0), 0),
        "a NULL create_task: the task waits, no attempt used"
    );
    assert!(seen.keys.lock().unwrap().is_empty());
    // A callback that takes tasks gets it, under its key.
    let cb = crm_host_callbacks {
        create_task: Some(deliver),
        ..callbacks(&seen)
    };
    assert_eq!(unsafe { crm_set_host_callbacks(h.0, &cb) }, CRM_OK);
    h.wait_idle();
    assert_eq!(task_row(&db), (("accepted".into(), 1), 0));
    assert_eq!(seen.keys.lock().unwrap().len(), 1);
    assert_eq!(unsafe { crm_set_host_callbacks(h.0, ptr::null()) }, CRM_OK);
}

/// Two handles: a task callback of `own` calls what it may not call on
/// its own handle on `other` too.
struct Pair {
    own: std::sync::atomic::AtomicPtr<crm_module>,
    other: std::sync::atomic::AtomicPtr<crm_module>,
    /// crm_wait_idle(own), crm_wait_idle(other),
    /// crm_set_host_callbacks(other), crm_set_host_callbacks(own).
    codes: Mutex<Vec<[c_int; 4]>>,
}

unsafe extern "C" fn call_both(
    user_data: *mut c_void,
    _key: *const c_char,
    _payload: *const c_char,
) -> c_int {
    let p = unsafe { &*(user_data as *const Pair) };
    let own = p.own.load(std::sync::atomic::Ordering::Acquire);
    let other = p.other.load(std::sync::atomic::Ordering::Acquire);
    let codes = unsafe {
        [
            crm_wait_idle(own, 0),
            crm_wait_idle(other, 0),
            crm_set_host_callbacks(other, ptr::null()),
            crm_set_host_callbacks(own, ptr::null()),
        ]
    };
    p.codes.lock().unwrap().push(codes);
    CRM_EFFECT_ACCEPTED
}

/// A callback may not wait for its own handle nor replace its callbacks
/// (it would wait for itself), but another handle's are not its own: a
/// host with one database per practice may wait for or re-register one
/// from a callback of another.
#[test]
fn a_callback_is_refused_only_its_own_handle() {
    let dir = tempfile::tempdir().unwrap();
    let own = Handle::open(&dir.path().join("own.db"), Some(MANUAL));
    let other = Handle::open(&dir.path().join("other.db"), Some(MANUAL));
    let pair = Box::new(Pair {
        own: std::sync::atomic::AtomicPtr::new(own.0),
        other: std::sync::atomic::AtomicPtr::new(other.0),
        codes: Mutex::new(Vec::new()),
    });
    let cb = crm_host_callbacks {
        version: CRM_HOST_CALLBACKS_VERSION,
        user_data: &*pair as *const Pair as *mut c_void,
        deliver_message: None,
        write_property: None,
        create_task: Some(call_both),
        log: None,
    };
    assert_eq!(unsafe { crm_set_host_callbacks(own.0, &cb) }, CRM_OK);
    own.execute(CREATE_TASK_AUTOMATION).unwrap();
    own.execute(r#"{"command":"automation.activate","automation_id":"t1"}"#)
        .unwrap();
    own.push(&contact_event("e1", "c1")).unwrap();
    own.wait_idle();
    assert_eq!(
        *pair.codes.lock().unwrap(),
        [[CRM_ERR_CONFLICT, CRM_OK, CRM_OK, CRM_ERR_CONFLICT]]
    );
    drop(own);
    drop(other);
}

/// What a log callback saw when it called into the module from the
/// worker's own thread.
struct ReentrantLog {
    m: std::sync::atomic::AtomicPtr<crm_module>,
    /// (crm_push_event, crm_execute, crm_wait_idle, crm_clock_advance,
    /// crm_query_view, crm_execute of a plugin.install) status codes, and
    /// the push's message.
    calls: Mutex<Vec<([c_int; 6], String)>>,
}

unsafe extern "C" fn reentrant_log(user_data: *mut c_void, _level: c_int, _message: *const c_char) {
    let r = unsafe { &*(user_data as *const ReentrantLog) };
    if std::thread::current().name() != Some("crm-worker") {
        return;
    }
    let m = r.m.load(std::sync::atomic::Ordering::Acquire);
    if m.is_null() || !r.calls.lock().unwrap().is_empty() {
        return;
    }
    let mut out = ptr::null_mut();
    let event = cs(&contact_event("from-log", "c-log"));
    let push = unsafe { crm_push_event(m, event.as_ptr(), &mut out) };
    let push_message = last_message();
    assert!(out.is_null());
    let command = cs(r#"{"command":"list.create","list_id":"from-log","name":"X"}"#);
    let execute = unsafe { crm_execute(m, command.as_ptr(), &mut out) };
    let wait = unsafe { crm_wait_idle(m, 60_000) };
    let advance = unsafe { crm_clock_advance(m, 1) };
    let name = cs("automation_list");
    let view = unsafe { crm_query_view(m, name.as_ptr(), ptr::null(), &mut out) };
    if view == CRM_OK {
        take(out);
    }
    // Refused before the component is read (this path does not exist).
    let install = cs(r#"{"command":"plugin.install","path":"/nonexistent/plugin.wasm"}"#);
    let install = unsafe { crm_execute(m, install.as_ptr(), &mut out) };
    r.calls
        .lock()
        .unwrap()
        .push(([push, execute, wait, advance, view, install], push_message));
}

#[test]
fn a_call_from_the_workers_own_thread_is_refused_not_deadlocked() {
    let (done_tx, done) = std::sync::mpsc::channel();
    // A deadlock would hang the test: it runs on a thread of its own and
    // is failed after two minutes.
    std::thread::spawn(move || {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("crm.db");
        let log = Box::new(ReentrantLog {
            m: std::sync::atomic::AtomicPtr::new(ptr::null_mut()),
            calls: Mutex::new(Vec::new()),
        });
        let h = Handle::open(&db, Some(MANUAL));
        log.m.store(h.0, std::sync::atomic::Ordering::Release);
        let cb = crm_host_callbacks {
            version: CRM_HOST_CALLBACKS_VERSION,
            user_data: &*log as *const ReentrantLog as *mut c_void,
            deliver_message: None,
            write_property: None,
            create_task: None,
            log: Some(reentrant_log),
        };
        assert_eq!(unsafe { crm_set_host_callbacks(h.0, &cb) }, CRM_OK);
        // A date trigger's evaluation logs on the worker's thread.
        h.execute(r#"{"command":"automation.create","automation_id":"d1","definition":{"name":"Dormant","trigger":{"type":"inactive_for_days","days":1},"run_window":{"mode":"any_time"},"steps":[{"type":"delay","amount":1,"unit":"days"}]}}"#).unwrap();
        h.execute(r#"{"command":"automation.activate","automation_id":"d1"}"#)
            .unwrap();
        h.push(&contact_event("e1", "c1")).unwrap();
        for _ in 0..4 {
            assert_eq!(unsafe { crm_clock_advance(h.0, DAY_MS) }, CRM_OK);
        }
        h.wait_idle();
        drop(h); // crm_close must not hang either
        let calls = log.calls.into_inner().unwrap();
        done_tx.send((calls, dump(&db))).unwrap();
    });
    let (calls, state) = done
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("a call from a log callback on the worker's thread deadlocked the module");
    let ([push, execute, wait, advance, view, install], message) = calls
        .first()
        .cloned()
        .expect("a log line on the worker's thread");
    assert_eq!(
        [push, execute, wait, advance, install],
        [CRM_ERR_CONFLICT; 5],
        "{message}"
    );
    assert!(message.contains("worker"), "{message}");
    assert_eq!(view, CRM_OK, "views read their own connection");
    assert!(
        !state.contains("from-log"),
        "a refused call changed nothing"
    );
}

/// Every row of every table, as text: the database's whole state.
fn dump(db: &Path) -> String {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let tables = support::table_names(&conn);
    let mut out = String::new();
    for t in tables {
        out.push_str(&format!("== {t}\n"));
        let mut stmt = conn.prepare(&format!("SELECT * FROM \"{t}\"")).unwrap();
        let n = stmt.column_count();
        let mut rows: Vec<String> = stmt
            .query_map([], |r| {
                Ok((0..n)
                    .map(|i| format!("{:?}", r.get_ref(i).unwrap()))
                    .collect::<Vec<_>>()
                    .join(" | "))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        rows.sort();
        for r in rows {
            out.push_str(&r);
            out.push('\n');
        }
    }
    out
}

#[test]
fn every_error_leaves_the_database_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crm.db");
    let seen = Seen::default();
    let h = setup(dir.path(), &seen);
    h.push(&contact_event("e1", "c1")).unwrap();
    h.wait_idle();
    let before = dump(&db);
    let now = h.now();
    let keys = seen.keys.lock().unwrap().len();

    let huge = CString::new(vec![b' '; CRM_MAX_INPUT_BYTES + 1]).unwrap();
    let bad_utf8 = CString::new(
        b"{\"event_id\":\"x1\",\"type\":\"contact.upserted\",\"contact\":{\"id\":\"c1\",\"first_name\":\"\xff\"}}".to_vec(),
    )
    .unwrap();
    let big_event = cs(&contact_event("x2", "c1").replace("Ann", &"A".repeat(300 * 1024)));
    let new_contact = cs(&contact_event("x3", "c9"));
    let bad_json = cs("{\"event_id\":");
    let unknown_type = cs(r#"{"event_id":"x4","type":"nope"}"#);
    let bad_batch = cs(&format!(
        "[{},{{\"event_id\":\"x6\",\"type\":\"nope\"}}]",
        contact_event("x5", "c5")
    ));
    let list_create = cs(r#"{"command":"list.create","list_id":"l9","name":"X"}"#);
    let pause_unknown = cs(r#"{"command":"automation.pause","automation_id":"zz"}"#);
    let add_to_unknown =
        cs(r#"{"command":"list.add_contacts","list_id":"zz","contact_ids":["c1"]}"#);
    let m = h.0;
    let bad_cb = crm_host_callbacks {
        version: 7,
        ..callbacks(&seen)
    };

    type Call<'a> = Box<dyn Fn(&mut *mut c_char, &mut i64) -> c_int + 'a>;
    let cases: Vec<(&str, c_int, Call)> = vec![
        (
            "push NULL handle",
            CRM_ERR_NULL,
            Box::new(|o, _| unsafe { crm_push_event(ptr::null_mut(), new_contact.as_ptr(), o) }),
        ),
        (
            "push NULL event",
            CRM_ERR_NULL,
            Box::new(|o, _| unsafe { crm_push_event(m, ptr::null(), o) }),
        ),
        (
            "push bad UTF-8",
            CRM_ERR_UTF8,
            Box::new(|o, _| unsafe { crm_push_event(m, bad_utf8.as_ptr(), o) }),
        ),
        (
            "push bad JSON",
            CRM_ERR_INVALID,
            Box::new(|o, _| unsafe { crm_push_event(m, bad_json.as_ptr(), o) }),
        ),
        (
            "push unknown type",
            CRM_ERR_INVALID,
            Box::new(|o, _| unsafe { crm_push_event(m, unknown_type.as_ptr(), o) }),
        ),
        (
            "push over 64 MiB",
            CRM_ERR_TOO_LARGE,
            Box::new(|o, _| unsafe { crm_push_event(m, huge.as_ptr(), o) }),
        ),
        (
            "push over the event limit",
            CRM_ERR_TOO_LARGE,
            Box::new(|o, _| unsafe { crm_push_event(m, big_event.as_ptr(), o) }),
        ),
        (
            "batch with a bad event",
            CRM_ERR_INVALID,
            Box::new(|o, _| unsafe { crm_push_events(m, bad_batch.as_ptr(), o) }),
        ),
        (
            "batch not an array",
            CRM_ERR_INVALID,
            Box::new(|o, _| unsafe { crm_push_events(m, c"{}".as_ptr(), o) }),
        ),
        (
            "batch over 64 MiB",
            CRM_ERR_TOO_LARGE,
            Box::new(|o, _| unsafe { crm_push_events(m, huge.as_ptr(), o) }),
        ),
        (
            "execute NULL out",
            CRM_ERR_NULL,
            Box::new(|_, _| unsafe { crm_execute(m, list_create.as_ptr(), ptr::null_mut()) }),
        ),
        (
            "execute bad JSON",
            CRM_ERR_INVALID,
            Box::new(|o, _| unsafe { crm_execute(m, c"[".as_ptr(), o) }),
        ),
        (
            "execute bad UTF-8",
            CRM_ERR_UTF8,
            Box::new(|o, _| unsafe {
                crm_execute(
                    m,
                    c"{\"command\":\"list.create\",\"name\":\"\xfe\"}".as_ptr(),
                    o,
                )
            }),
        ),
        (
            "execute unknown automation",
            CRM_ERR_NOT_FOUND,
            Box::new(|o, _| unsafe { crm_execute(m, pause_unknown.as_ptr(), o) }),
        ),
        (
            "execute unknown list",
            CRM_ERR_NOT_FOUND,
            Box::new(|o, _| unsafe { crm_execute(m, add_to_unknown.as_ptr(), o) }),
        ),
        (
            "execute over 64 MiB",
            CRM_ERR_TOO_LARGE,
            Box::new(|o, _| unsafe { crm_execute(m, huge.as_ptr(), o) }),
        ),
        (
            "view unknown",
            CRM_ERR_NOT_FOUND,
            Box::new(|o, _| unsafe { crm_query_view(m, c"nope".as_ptr(), ptr::null(), o) }),
        ),
        (
            "view bad params",
            CRM_ERR_INVALID,
            Box::new(|o, _| unsafe {
                crm_query_view(m, c"automation_list".as_ptr(), c"{".as_ptr(), o)
            }),
        ),
        (
            "view NULL name",
            CRM_ERR_NULL,
            Box::new(|o, _| unsafe { crm_query_view(m, ptr::null(), ptr::null(), o) }),
        ),
        (
            "advance negative",
            CRM_ERR_INVALID,
            Box::new(|_, _| unsafe { crm_clock_advance(m, -1) }),
        ),
        (
            "advance NULL",
            CRM_ERR_NULL,
            Box::new(|_, _| unsafe { crm_clock_advance(ptr::null_mut(), 1) }),
        ),
        (
            "now NULL out",
            CRM_ERR_NULL,
            Box::new(|_, _| unsafe { crm_clock_now(m, ptr::null_mut()) }),
        ),
        (
            "now NULL handle",
            CRM_ERR_NULL,
            Box::new(|_, t| unsafe { crm_clock_now(ptr::null_mut(), t) }),
        ),
        (
            "wait negative",
            CRM_ERR_INVALID,
            Box::new(|_, _| unsafe { crm_wait_idle(m, -5) }),
        ),
        (
            "callbacks wrong version",
            CRM_ERR_INVALID,
            Box::new(|_, _| unsafe { crm_set_host_callbacks(m, &bad_cb) }),
        ),
    ];
    let sentinel = c"sentinel".as_ptr() as *mut c_char;
    for (name, want, call) in &cases {
        let mut out = sentinel;
        let mut t = 42;
        let rc = call(&mut out, &mut t);
        assert_eq!(rc, *want, "{name}: {}", last_message());
        assert_eq!(crm_last_error_code(), *want, "{name}");
        assert!(!last_message().is_empty(), "{name}: empty message");
        // Calls given the out-pointer set it to NULL; the others leave it.
        assert!(out.is_null() || out == sentinel, "{name}");
        if *name == "now NULL handle" {
            assert_eq!(t, 0, "{name}: out_ms must be 0 on failure");
        }
        h.wait_idle();
        assert_eq!(dump(&db), before, "{name} changed the database");
        assert_eq!(h.now(), now, "{name} moved the clock");
        assert_eq!(
            seen.keys.lock().unwrap().len(),
            keys,
            "{name} delivered something"
        );
    }
    // Calls that fail with an out-pointer set it to NULL.
    let mut out = sentinel;
    assert_eq!(
        unsafe { crm_push_event(m, c"{".as_ptr(), &mut out) },
        CRM_ERR_INVALID
    );
    assert!(out.is_null());
    // The callbacks are still the registered ones, and the rejected event ids were not consumed.
    for id in ["x1", "x2", "x3", "x4", "x5", "x6"] {
        let r = h.push(&format!(r#"{{"event_id":"{id}","type":"contact.upserted","contact":{{"id":"c1","first_name":"Ann"}}}}"#)).unwrap();
        assert!(r.contains(r#""outcome":"applied""#), "{id}: {r}");
    }
    // A success clears the thread's error.
    assert_eq!(crm_last_error_code(), CRM_OK);
    assert_eq!(last_message(), "");
}

#[test]
fn open_errors_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("x.db");
    let p = cs(db.to_str().unwrap());
    let mut m: *mut crm_module = ptr::NonNull::dangling().as_ptr();
    for (config, want) in [
        (c"{".as_ptr(), CRM_ERR_INVALID),
        (
            c"{\"clock\":{\"mode\":\"manual\",\"start\":\"yesterday\"}}".as_ptr(),
            CRM_ERR_INVALID,
        ),
        (c"{\"clock\":\"\xff\"}".as_ptr(), CRM_ERR_UTF8),
    ] {
        assert_eq!(
            unsafe { crm_open(p.as_ptr(), config, &mut m) },
            want,
            "{}",
            last_message()
        );
        assert!(m.is_null());
        assert!(!last_message().is_empty());
    }
    assert_eq!(
        unsafe { crm_open(ptr::null(), ptr::null(), &mut m) },
        CRM_ERR_NULL
    );
    assert_eq!(
        unsafe { crm_open(p.as_ptr(), ptr::null(), ptr::null_mut()) },
        CRM_ERR_NULL
    );
    assert!(!db.exists());
    // The system clock cannot be advanced.
    let h = Handle::open(&db, None);
    assert_eq!(unsafe { crm_clock_advance(h.0, 1000) }, CRM_ERR_CONFLICT);
    assert!(last_message().contains("clock"));
    drop(h);
    unsafe { crm_close(ptr::null_mut()) };
    unsafe { crm_string_free(ptr::null_mut()) };
}
