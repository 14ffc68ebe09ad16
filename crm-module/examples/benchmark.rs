//! Throughput benchmark of the engine on a simulated practice: a program that
//! prints figures, not a timed test (nothing here passes or fails on speed).
//!
//! It opens a fresh database (a temporary directory, or `--dir`) with a manual
//! clock, creates 20 active automations with a realistic mix of triggers
//! (contact created with and without a lead source, status changed to
//! patient, form submitted, added to list, property changed, email
//! engagement, SMS reply, birthday, inactive for N days) and steps (send
//! email, send SMS, delay, If/then branch, create task, set property, add to
//! list), then measures, phase by phase:
//!
//! * **raw** (first, and again at the end) the plain SQLite batched-insert
//!   rate in the same run, same pragmas (the file is opened through
//!   `crm_module::store`: WAL, `synchronous=FULL`), 1,000 rows per
//!   transaction with one prepared statement, into
//!   `(id INTEGER PRIMARY KEY, a TEXT, b TEXT, c INTEGER)`; the faster of the
//!   two runs is the reference;
//! * **A1** single `push`es of new contacts from one thread: each is durable
//!   when it returns (its own commit and fsync), with latency percentiles;
//! * **A2** the same from several threads at once: the worker folds
//!   concurrent pushes into one transaction (group commit);
//! * **B1/B2** `push_batch` with batches of 1,000 events: the rest of the
//!   contacts, then a shuffled mix of activity (appointments, forms, page
//!   visits, SMS replies, email opens and clicks, owner and tag changes,
//!   opt-outs, insurance verifications, reviews);
//! * **B3** SMS replies that carry only the sender's phone number;
//! * **same rows** (after B3, twice; the faster counts) the plain SQLite
//!   rate for the rows ingestion wrote: every row then in the database is
//!   copied, table by table (parents first), into a fresh file with the
//!   module's schema (its indexes, constraints and `STRICT` types) and
//!   pragmas, 1,000 rows per transaction through one prepared `INSERT` per
//!   table; only the inserts and commits are timed. Where the 3-column
//!   reference says what SQLite can do at best, this one says what writing
//!   these rows costs SQLite itself, so the ratio against it is the
//!   engine's own overhead (reads, rules, rendering, JSON);
//! * **same transactions** (after B3, twice, alternating with the copies;
//!   the faster counts) the same rows written the way the engine wrote
//!   them: B1's and B2's batches are marked as they commit, and each
//!   batch's rows are written again into a fresh file in one transaction
//!   (the rows before B1 and those of the clock moves between batches in
//!   untimed transactions of their own, so that each timed one goes into
//!   tables of the same size), with the engine's checkpoint thread
//!   (`store::checkpoint`). Nothing differs from ingestion but the
//!   engine's own work: the ratio against it is the strictest. (The
//!   tables without rowids are placed by the time stamped on their rows,
//!   so it is not measured with `--clock-per-batch-secs 0`);
//! * **E1/E2** single pushes on the loaded database with the manual clock,
//!   then after reopening it with the system clock (the worker then looks for
//!   due work in every loop; the simulated time, from Monday 7 January 2036,
//!   lies in the future so that nothing is due), and the cost of the worker's
//!   scheduler query `core::due::next` at that point;
//! * **C** the manual clock moved 3 days forward with `advance_clock`, to each
//!   instant at which work is scheduled (what the worker does with the system
//!   clock) or in fixed steps, then `wait_idle`: delays expire, steps run,
//!   birthday triggers evaluate;
//! * **D** a host that accepts everything is attached and the outbox drains;
//! * **views** on the loaded database: the automation list, and every
//!   automation's builder and performance views (the median of 3 builds each).
//!
//! Ingestion is spread over simulated time: the clock moves 30 s after every
//! 1,000 events (untimed), as when a host syncs a practice over a while, so
//! that the delays one batch starts fall due together rather than all at one
//! instant. Rows written are counted two ways: from a separate read-only
//! connection as the growth of every table across a phase (new rows only),
//! and as SQLite's own count of the rows the engine's writer inserted,
//! updated or deleted ([`Module::rows_written`], so updates in place count
//! too). The ratios are printed for both; the references insert new rows
//! only. Enrollments and steps are the `enrolled` and
//! `step_executed` rows of the event log. Peak RSS is `VmHWM` from
//! `/proc/self/status`, leaving out the same-rows copies (the high-water
//! mark is read before them and reset after them). Only the API calls are
//! timed, not the building of the events' JSON. By default the host is attached only in phase D, so that
//! the other figures measure the engine alone; `--live-host` attaches it from
//! the start.
//!
//! Run it in release (the full practice takes about five minutes on 2 cores):
//!
//! ```text
//! cargo run --release -p crm-module --example benchmark
//! cargo run --release -p crm-module --example benchmark -- --contacts 10000   # quick
//! cargo run --release -p crm-module --example benchmark -- --dir /var/tmp/crm-bench
//! ```
//!
//! Options: `--contacts N` (100000), `--automations N` (20; more repeat the
//! 20 definitions), `--dir PATH` (default: a new temporary directory, removed
//! at the end; a given directory is kept), `--single N` (pushes in A1 and in
//! A2, 2000, at most a fifth of the contacts), `--threads N` (A2, 4),
//! `--clock-per-batch-secs N` (30; 0 keeps the clock still during
//! ingestion), `--advance-step-minutes N` (0: to each due instant; N: fixed
//! steps), `--live-host`, `--ingest-only` (stop after phase B3 and print
//! one line of ingestion figures: for quick comparisons and profiling runs),
//! `--mmap-mib N` (the module's `storage.mmap_mib`, default 0: every page
//! read with `pread`) and `--cache-mib N` (`storage.cache_mib`, default
//! 32), used by every connection, the references' too.
//! Figures depend on the disk's fsync latency and on
//! other load: run it on a quiet machine, on a disk (not tmpfs).

/// The allocator the shipped library uses for its own allocations
/// (`ffi/src/lib.rs`): the figures are the embedded module's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crm_module::store::{self, Access, Connection, StorageConfig};
use crm_module::{Delivery, Host, HostAnswer, Module};
use serde_json::{Value, json};

type BoxResult<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const DAY_MS: i64 = 24 * 3600 * 1000;
const BATCH: usize = 1_000;
/// Single pushes in each of phases E1 and E2.
const E_PUSHES: usize = 100;
/// Monday 09:00 in New York. In the future, so that phase E2, which reopens
/// the database with the system clock, finds nothing due.
const START: &str = "2036-01-07T14:00:00Z";

// ---------------------------------------------------------------------------
// Arguments
// ---------------------------------------------------------------------------

struct Args {
    contacts: usize,
    automations: usize,
    dir: Option<PathBuf>,
    single: usize,
    threads: usize,
    clock_per_batch_secs: i64,
    advance_step_minutes: i64,
    live_host: bool,
    ingest_only: bool,
}

/// The page cache and memory mapping of every connection the benchmark opens,
/// the module's and the references' alike (`--cache-mib`, `--mmap-mib`; the
/// module's defaults otherwise).
static STORAGE: std::sync::OnceLock<StorageConfig> = std::sync::OnceLock::new();

fn storage() -> &'static StorageConfig {
    STORAGE.get_or_init(StorageConfig::default)
}

/// A connection with the module's pragmas and the benchmark's storage sizes.
fn open_db(path: &Path, access: Access) -> crm_module::Result<Connection> {
    store::open_with(path, access, storage())
}

fn parse_args() -> BoxResult<Args> {
    let mut a = Args {
        contacts: 100_000,
        automations: 20,
        dir: None,
        single: 2_000,
        threads: 4,
        clock_per_batch_secs: 30,
        advance_step_minutes: 0,
        live_host: false,
        ingest_only: false,
    };
    let mut storage = StorageConfig::default();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--contacts" => a.contacts = value()?.parse()?,
            "--automations" => a.automations = value()?.parse()?,
            "--dir" => a.dir = Some(PathBuf::from(value()?)),
            "--single" => a.single = value()?.parse()?,
            "--threads" => a.threads = value()?.parse()?,
            "--clock-per-batch-secs" => a.clock_per_batch_secs = value()?.parse()?,
            "--advance-step-minutes" => a.advance_step_minutes = value()?.parse()?,
            "--live-host" => a.live_host = true,
            "--ingest-only" => a.ingest_only = true,
            "--mmap-mib" => storage.mmap_mib = value()?.parse()?,
            "--cache-mib" => storage.cache_mib = value()?.parse()?,
            "-h" | "--help" => {
                println!(
                    "usage: benchmark [--contacts N] [--automations N] [--dir PATH] [--single N] \
                     [--threads N] [--clock-per-batch-secs N] [--advance-step-minutes N] [--live-host] [--ingest-only] [--mmap-mib N] [--cache-mib N]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown option {other} (try --help)").into()),
        }
    }
    if a.contacts < 10 || a.threads == 0 {
        return Err("--contacts must be at least 10 and --threads at least 1".into());
    }
    if !(0..=3600).contains(&a.clock_per_batch_secs)
        || !(0..=3 * 24 * 60).contains(&a.advance_step_minutes)
    {
        return Err(
            "--clock-per-batch-secs must be 0 to 3600 and --advance-step-minutes 0 to 4320".into(),
        );
    }
    // A1 and A2 take at most a fifth of the contacts each; the rest go in batches.
    a.single = a.single.min(a.contacts / 5);
    storage.validate()?;
    STORAGE
        .set(storage)
        .map_err(|_| "the storage sizes were already set")?;
    Ok(a)
}

// ---------------------------------------------------------------------------
// The host
// ---------------------------------------------------------------------------

/// Accepts every effect and counts them.
#[derive(Default)]
struct CountingHost {
    delivered: AtomicU64,
}

impl Host for CountingHost {
    fn deliver(&self, _delivery: Delivery<'_>) -> (HostAnswer, Option<String>) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        (HostAnswer::Accepted, None)
    }
}

// ---------------------------------------------------------------------------
// Deterministic data
// ---------------------------------------------------------------------------

/// splitmix64: a stable pseudo-random value per input.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A percentage draw in 0..100 for contact `n` and purpose `salt`.
fn pct(n: usize, salt: u64) -> u64 {
    mix((n as u64) ^ (salt << 40)) % 100
}

const FIRST: [&str; 16] = [
    "Ann", "Ben", "Carla", "David", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jamal", "Kim",
    "Luis", "Mina", "Noah", "Olga", "Priya",
];
const LAST: [&str; 16] = [
    "Smith", "Garcia", "Nguyen", "Okafor", "Rossi", "Kowalski", "Haddad", "Tanaka", "Silva",
    "Brown", "Martin", "Lopez", "Cohen", "Ivanova", "Patel", "Moreau",
];
const DAYS_IN_MONTH: [u64; 12] = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

/// The `contact.upserted` creating contact `n`.
fn contact_event(n: usize) -> Value {
    let h = mix(n as u64);
    let mut c = json!({
        "id": format!("c{n}"),
        "first_name": FIRST[(h % 16) as usize],
        "last_name": LAST[((h >> 4) % 16) as usize],
        "preferred_clinic": if h & 0x100 == 0 { "north" } else { "south" },
    });
    if pct(n, 1) < 95 {
        c["email"] = json!(format!("patient{n}@example.com"));
    }
    if pct(n, 2) < 85 {
        c["phone"] = json!(format!("+1617{:07}", 2_000_000 + n));
    }
    if pct(n, 3) < 80 {
        let month = (h >> 12) % 12;
        let day = (h >> 16) % DAYS_IN_MONTH[month as usize] + 1;
        let year = 1940 + (h >> 24) % 76;
        c["dob"] = json!(format!("{year}-{:02}-{day:02}", month + 1));
    }
    c["email_subscription"] = json!(match pct(n, 4) {
        0..85 => "subscribed",
        85..90 => "unsubscribed",
        _ => "unknown",
    });
    c["sms_subscription"] = json!(if pct(n, 5) < 70 {
        "subscribed"
    } else {
        "unknown"
    });
    c["lead_source"] = json!(match pct(n, 6) {
        0..35 => "website_form",
        35..55 => "walk_in",
        55..80 => "import",
        _ => "manual_entry",
    });
    c["status"] = json!(if pct(n, 7) < 30 { "patient" } else { "lead" });
    if pct(n, 8) < 50 {
        let k = (h >> 32) % 8;
        c["owner"] = json!({"id": format!("u{k}"), "name": format!("Staff {k}")});
    }
    if pct(n, 9) < 20 {
        c["tags"] = json!(["diabetes"]);
    }
    // Created as the automations go live (START): an event from before
    // their activation would enroll nobody (no back-fill).
    json!({"event_id": format!("ev-c{n}"), "type": "contact.upserted", "occurred_at": START, "contact": c})
}

/// One activity event of phase B2, built only when its batch is pushed.
#[derive(Clone, Copy)]
enum Activity {
    Book(usize),
    Form(usize, bool),
    Page(usize),
    SmsReply(usize),
    Owner(usize),
    Vip(usize),
    Open(usize),
    Click(usize),
    OptOut(usize),
    Verified(usize),
    Review(usize),
}

impl Activity {
    fn to_json(self, seq: usize, email_keys: &[String]) -> Value {
        let id = format!("ev-a{seq}");
        match self {
            Activity::Book(n) => json!({"event_id": id, "type": "appointment.booked",
                "appointment": {"id": format!("ap{n}"), "contact_id": format!("c{n}"), "starts_at": "2036-01-14T15:00:00Z",
                                "provider_id": format!("dr{}", n % 6), "clinic_id": "north"}}),
            Activity::Form(n, intake) => {
                let (form_id, form_name) = if intake {
                    ("intake", "New patient intake")
                } else {
                    ("allergy", "Allergy questionnaire")
                };
                json!({"event_id": id, "type": "form.submitted", "submission": {"id": format!("fs{n}-{form_id}"), "form_id": form_id,
                    "form_name": form_name, "contact_id": format!("c{n}"), "answers": {"q1": "yes", "q2": "Penicillin", "q3": 3}}})
            }
            Activity::Page(n) => {
                json!({"event_id": id, "type": "page.visited", "contact_id": format!("c{n}"), "page": "/book-online"})
            }
            Activity::SmsReply(n) => {
                json!({"event_id": id, "type": "sms.received", "contact_id": format!("c{n}"), "body": "Can I come in on Tuesday?"})
            }
            Activity::Owner(n) => {
                json!({"event_id": id, "type": "contact.upserted", "occurred_at": "2036-01-07T14:00:30Z",
                "contact": {"id": format!("c{n}"), "owner": {"id": "u9", "name": "Dr. Rivera"}}})
            }
            Activity::Vip(n) => {
                json!({"event_id": id, "type": "contact.upserted", "occurred_at": "2036-01-07T14:00:30Z",
                "contact": {"id": format!("c{n}"), "tags": ["vip"]}})
            }
            Activity::Open(k) => {
                json!({"event_id": id, "type": "email.opened", "message_key": email_keys[k]})
            }
            Activity::Click(k) => {
                json!({"event_id": id, "type": "email.clicked", "message_key": email_keys[k]})
            }
            Activity::OptOut(n) => {
                json!({"event_id": id, "type": "contact.opted_out", "contact_id": format!("c{n}"),
                "channel": "all", "reason": "unsubscribe_link"})
            }
            Activity::Verified(n) => {
                json!({"event_id": id, "type": "insurance.verification", "contact_id": format!("c{n}"), "status": "verified"})
            }
            Activity::Review(n) => json!({"event_id": id, "type": "review.submitted",
                "review": {"id": format!("rv{n}"), "contact_id": format!("c{n}"), "source": "google", "rating": 5}}),
        }
    }
}

/// The activity of phase B2, shuffled deterministically.
fn activity_plan(contacts: usize, email_keys: usize) -> Vec<Activity> {
    let mut v = Vec::new();
    for n in 1..=contacts {
        if pct(n, 20) < 20 {
            v.push(Activity::Book(n));
        }
        match pct(n, 21) {
            0..10 => v.push(Activity::Form(n, true)),
            10..15 => v.push(Activity::Form(n, false)),
            _ => {}
        }
        if pct(n, 22) < 10 {
            v.push(Activity::Page(n));
        }
        if pct(n, 23) < 3 {
            v.push(Activity::SmsReply(n));
        }
        if pct(n, 24) < 5 {
            v.push(Activity::Owner(n));
        }
        if pct(n, 25) < 2 {
            v.push(Activity::Vip(n));
        }
        if pct(n, 26) < 1 {
            v.push(Activity::OptOut(n));
        }
        if pct(n, 27) < 5 {
            v.push(Activity::Verified(n));
        }
        if pct(n, 28) < 2 {
            v.push(Activity::Review(n));
        }
    }
    for k in 0..email_keys {
        match pct(k, 29) {
            0..12 => v.push(Activity::Open(k)),
            12..16 => v.push(Activity::Click(k)),
            _ => {}
        }
    }
    for i in (1..v.len()).rev() {
        let j = (mix(i as u64 ^ 0xabcd) % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    v
}

// ---------------------------------------------------------------------------
// Automations
// ---------------------------------------------------------------------------

fn any_time() -> Value {
    json!({"mode": "any_time"})
}

/// The 20 automation definitions of the practice. Three use the default run
/// window (business hours); the rest run any time.
fn definitions() -> Vec<Value> {
    let task = |title: &str| json!({"type": "create_task", "title": title, "assignee": {"kind": "queue", "name": "front_desk"}, "due_in_minutes": 240});
    vec![
        json!({"name": "New lead welcome series", "goal": "book_appointment", "run_window": any_time(),
            "trigger": {"type": "contact_created"},
            "steps": [
                {"id": "welcome", "type": "send_email", "template_id": "welcome-1", "subject": "Welcome to {{practice}}", "body": "Hi {{firstname}}, ..."},
                {"type": "delay", "amount": 2, "unit": "days"},
                {"type": "send_sms", "message": "Hi {{firstname}}, book your first visit with {{practice}}: reply or call us."},
                {"type": "branch", "condition": {"type": "property", "property": "status", "op": "equals", "value": "patient"},
                 "yes": [], "no": [task("Call new lead")]}]}),
        json!({"name": "Website leads", "goal": "book_appointment", "run_window": any_time(), "unenrollment": {"goal_met": true},
            "trigger": {"type": "contact_created", "source": "website_form"},
            "steps": [
                {"type": "send_email", "subject": "Thanks for reaching out", "body": "Hi {{firstname}}"},
                {"type": "delay", "amount": 1, "unit": "days"},
                {"type": "send_email", "subject": "Book online in two minutes", "body": "Here is how"}]}),
        json!({"name": "Walk-in follow-up", "run_window": any_time(), "trigger": {"type": "contact_created", "source": "walk_in"},
            "steps": [
                {"type": "send_sms", "message": "Thanks for stopping by {{practice}}!"},
                {"type": "delay", "amount": 2, "unit": "days"},
                {"type": "send_email", "subject": "Your visit", "body": "Questions? Reply here."}]}),
        json!({"name": "Imported contacts", "run_window": any_time(), "trigger": {"type": "contact_created", "source": "import"},
            "steps": [{"type": "delay", "amount": 1, "unit": "days"}, {"type": "add_to_list", "list_id": "newsletter"}]}),
        json!({"name": "Newsletter", "goal": "engagement", "run_window": any_time(), "trigger": {"type": "added_to_list", "list_id": "newsletter"},
            "steps": [
                {"id": "news", "type": "send_email", "template_id": "newsletter-1"},
                {"type": "delay", "amount": 1, "unit": "days"},
                {"type": "branch", "condition": {"type": "step_engagement", "step_id": "news", "engagement": "clicked"},
                 "yes": [task("Hot lead: clicked the newsletter")],
                 "no": [{"type": "send_sms", "message": "Did you see our news, {{firstname}}?"}]}]}),
        json!({"name": "Welcome to the practice", "run_window": any_time(), "trigger": {"type": "status_changed_to_patient"},
            "steps": [
                {"type": "send_email", "subject": "Your first visit", "body": "Parking and what to bring"},
                {"type": "delay", "amount": 1, "unit": "days"},
                {"type": "set_property", "property": "tags", "value": {"add": ["new_patient"]}}]}),
        json!({"name": "Review request", "goal": "review_submitted", "trigger": {"type": "property_changed", "property": "status", "new_value": "patient"},
            "steps": [
                {"type": "delay", "amount": 2, "unit": "days"},
                {"type": "send_email", "subject": "How was your visit?", "body": "Leave us a review"}]}),
        json!({"name": "Intake follow-up", "run_window": any_time(), "trigger": {"type": "form_submitted", "form_id": "intake"},
            "steps": [
                {"type": "delay", "amount": 1, "unit": "hours"},
                {"type": "create_task", "title": "Review intake form", "assignee": {"kind": "contact_owner"}, "due_in_minutes": 60}]}),
        json!({"name": "Form engagement", "run_window": any_time(), "trigger": {"type": "form_submitted"},
            "steps": [
                {"type": "set_property", "property": "tags", "value": {"add": ["engaged"]}},
                {"type": "add_to_list", "list_id": "engaged"}]}),
        json!({"name": "Engaged contacts", "goal": "book_appointment", "run_window": any_time(), "trigger": {"type": "added_to_list", "list_id": "engaged"},
            "steps": [
                {"type": "send_email", "subject": "Thanks for the form", "body": "Next steps"},
                {"type": "delay", "amount": 2, "unit": "days"},
                {"type": "send_sms", "message": "Ready to book, {{firstname}}?"}]}),
        json!({"name": "New owner introduction", "run_window": any_time(), "trigger": {"type": "property_changed", "property": "owner"},
            "steps": [{"type": "create_task", "title": "Introduce yourself", "assignee": {"kind": "contact_owner"}, "due_in_minutes": 1440}]}),
        json!({"name": "VIP care", "run_window": any_time(), "trigger": {"type": "property_changed", "property": "tags", "new_value": "vip"},
            "steps": [
                {"type": "send_email", "subject": "A personal note", "body": "From {{owner}}"},
                {"type": "create_task", "title": "Call VIP", "assignee": {"kind": "staff", "id": "u1", "name": "Dr. Shah"}}]}),
        json!({"name": "Hot leads", "run_window": any_time(), "trigger": {"type": "email_engagement", "engagement": "clicked", "email_id": "welcome-1"},
            "steps": [task("Hot lead: clicked the welcome email")]}),
        json!({"name": "Email engaged", "run_window": any_time(), "trigger": {"type": "email_engagement", "engagement": "either"},
            "steps": [{"type": "delay", "amount": 1, "unit": "days"}, {"type": "send_sms", "message": "Glad you read our email, {{firstname}}!"}]}),
        json!({"name": "SMS replies", "run_window": any_time(), "trigger": {"type": "sms_reply"},
            "steps": [task("Answer the SMS")]}),
        json!({"name": "Birthday", "run_window": any_time(), "trigger": {"type": "birthday", "offset": "on_the_day"},
            "steps": [{"type": "send_sms", "message": "Happy birthday {{firstname}} from {{practice}}!"}]}),
        json!({"name": "Birthday next week", "run_window": any_time(), "trigger": {"type": "birthday", "offset": "seven_days_before"},
            "steps": [{"type": "send_email", "subject": "A birthday check-up?", "body": "Book before your birthday"}]}),
        json!({"name": "Win-back", "goal": "patient_reactivation", "trigger": {"type": "inactive_for_days", "days": 90},
            "steps": [
                {"type": "send_email", "subject": "We miss you", "body": "It has been a while"},
                {"type": "delay", "amount": 7, "unit": "days"},
                {"type": "send_sms", "message": "Time for a check-up?"}]}),
        json!({"name": "Unsubscribed check", "run_window": any_time(),
            "trigger": {"type": "property_changed", "property": "email_subscription", "new_value": "unsubscribed"},
            "steps": [task("Check the unsubscribe")]}),
        json!({"name": "Referral leads", "goal": "book_appointment", "trigger": {"type": "contact_created", "source": "manual_entry"},
            "steps": [
                {"type": "send_email", "subject": "Welcome", "body": "Referred by a friend?"},
                {"type": "delay", "amount": 2, "unit": "days"},
                {"type": "send_email", "subject": "Book your visit", "body": "Here is how"}]}),
    ]
}

fn setup(m: &Module, automations: usize) -> BoxResult<(usize, usize)> {
    for (id, name) in [
        ("newsletter", "Newsletter"),
        ("engaged", "Engaged contacts"),
    ] {
        m.execute(&json!({"command": "list.create", "list_id": id, "name": name}).to_string())?;
    }
    let defs = definitions();
    let mut business_hours = 0;
    // The saved email templates the automations refer to.
    for (id, name) in [("welcome-1", "Welcome"), ("newsletter-1", "Newsletter")] {
        m.execute(
            &json!({"command": "template.create", "template_id": id, "template": {"channel": "email", "name": name,
                "subject": "{{practice}}: hello {{firstname}}",
                "html_body": "<p>Hi {{firstname}}, <a href=\"https://riverside.example/book\">book a visit</a>.</p>"}})
            .to_string(),
        )?;
    }
    for i in 0..automations {
        let mut def = defs[i % defs.len()].clone();
        if i >= defs.len() {
            let name = format!(
                "{} #{}",
                def["name"].as_str().unwrap_or("Automation"),
                i / defs.len() + 1
            );
            def["name"] = json!(name);
        }
        if def.get("run_window").is_none() {
            business_hours += 1;
        }
        let out = m.execute(
            &json!({"command": "automation.create", "definition": def, "entered_by": "benchmark"})
                .to_string(),
        )?;
        let id = out["automation_id"]
            .as_str()
            .ok_or("automation.create returned no id")?
            .to_string();
        m.execute(&json!({"command": "automation.activate", "automation_id": id}).to_string())?;
    }
    Ok((automations - business_hours, business_hours))
}

// ---------------------------------------------------------------------------
// Measuring
// ---------------------------------------------------------------------------

/// Row counts of every table, plus the event-log figures.
#[derive(Clone, Default)]
struct Snapshot {
    tables: BTreeMap<String, i64>,
    enrolled: i64,
    steps: i64,
}

impl Snapshot {
    fn take(conn: &Connection) -> BoxResult<Snapshot> {
        let names: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut tables = BTreeMap::new();
        for name in names {
            let n: i64 = conn.query_row(&format!("SELECT COUNT(*) FROM \"{name}\""), [], |r| {
                r.get(0)
            })?;
            tables.insert(name, n);
        }
        let kind = |k: &str| -> BoxResult<i64> {
            Ok(
                conn.query_row("SELECT COUNT(*) FROM events WHERE kind = ?1", [k], |r| {
                    r.get(0)
                })?,
            )
        };
        Ok(Snapshot {
            enrolled: kind("enrolled")?,
            steps: kind("step_executed")?,
            tables,
        })
    }

    fn rows(&self) -> i64 {
        self.tables.values().sum()
    }
}

/// One measured phase.
struct Phase {
    label: String,
    events: usize,
    time: Duration,
    before: Snapshot,
    after: Snapshot,
    deliveries: u64,
    /// Rows the engine wrote, as SQLite counts them ([`Module::rows_written`]):
    /// new rows and updates in place (and deletes).
    written: u64,
}

impl Phase {
    fn rows(&self) -> i64 {
        self.after.rows() - self.before.rows()
    }
    /// Changes other than the new rows (rows updated in place; a row
    /// inserted and deleted in the phase counts twice): SQLite's count less
    /// the growth of the tables.
    fn updated(&self) -> i64 {
        self.written as i64 - self.rows()
    }
    fn enrolled(&self) -> i64 {
        self.after.enrolled - self.before.enrolled
    }
    fn steps(&self) -> i64 {
        self.after.steps - self.before.steps
    }
    fn secs(&self) -> f64 {
        self.time.as_secs_f64().max(1e-9)
    }
    fn table_growth(&self, name: &str) -> i64 {
        self.after.tables.get(name).copied().unwrap_or(0)
            - self.before.tables.get(name).copied().unwrap_or(0)
    }
}

struct Bench {
    reader: Connection,
    host: Arc<CountingHost>,
    phases: Vec<Phase>,
}

impl Bench {
    fn snapshot(&self) -> BoxResult<Snapshot> {
        Snapshot::take(&self.reader)
    }

    /// Runs `f` (which returns the events it pushed and the time it measured)
    /// between two snapshots, after the module is idle.
    fn phase(
        &mut self,
        module: &Module,
        label: &str,
        f: impl FnOnce(&Module) -> BoxResult<(usize, Duration)>,
    ) -> BoxResult<usize> {
        module.wait_idle(Duration::from_secs(3600))?;
        let before = self.snapshot()?;
        let written = module.rows_written();
        let delivered = self.host.delivered.load(Ordering::Relaxed);
        let (events, time) = f(module)?;
        module.wait_idle(Duration::from_secs(3600))?;
        let written = module.rows_written() - written;
        let after = self.snapshot()?;
        let deliveries = self.host.delivered.load(Ordering::Relaxed) - delivered;
        let p = Phase {
            label: label.to_string(),
            events,
            time,
            before,
            after,
            deliveries,
            written,
        };
        eprintln!(
            "  {:<44} {:>9} events  {:>8.2} s  {:>10} rows",
            p.label,
            group(p.events as f64),
            p.secs(),
            group(p.rows() as f64)
        );
        self.phases.push(p);
        Ok(self.phases.len() - 1)
    }
}

/// Pushes events in batches of 1,000; only the `push_batch` calls are timed.
/// After each batch the manual clock moves `clock_ms` (untimed here: the time
/// it takes, scheduled work included, is added to `advancing`). With
/// `record`, the end of each batch's transaction and of each clock move's
/// work is marked there.
fn push_batches(
    m: &Module,
    total: usize,
    clock_ms: i64,
    advancing: &mut Duration,
    mut record: Option<&mut Transactions>,
    mut make: impl FnMut(usize) -> Value,
) -> BoxResult<(usize, Duration)> {
    let mut time = Duration::ZERO;
    let mut start = 0;
    while start < total {
        let end = (start + BATCH).min(total);
        let batch: Vec<Value> = (start..end).map(&mut make).collect();
        let text = serde_json::to_string(&batch)?;
        let at = m.now();
        let t = Instant::now();
        let out = m.push_batch(&text)?;
        time += t.elapsed();
        if let Some(bad) = out.iter().find(|r| r.outcome != "applied") {
            return Err(format!(
                "event {} was {}, expected applied",
                bad.event_id, bad.outcome
            )
            .into());
        }
        if let Some(r) = record.as_deref_mut() {
            r.mark(Written::Push, at)?;
        }
        advance(m, clock_ms, advancing)?;
        if let Some(r) = record.as_deref_mut() {
            r.mark(Written::ClockMove, at)?;
        }
        start = end;
    }
    Ok((total, time))
}

/// What wrote the rows up to a [`Mark`].
#[derive(Clone, Copy, PartialEq)]
enum Written {
    /// Everything before the first recorded batch (setup, single pushes).
    Before,
    /// One `push_batch`: one transaction of the engine's, timed.
    Push,
    /// The scheduled work of the clock move after a batch (untimed).
    ClockMove,
}

/// The end of one stretch of the engine's writes.
struct Mark {
    written: Written,
    /// The module's time when the batch was pushed (for a clock move, the
    /// batch's before it): the time the engine stamps on its rows.
    at: i64,
    /// The largest rowid of every rowid table at the mark.
    ends: BTreeMap<String, i64>,
}

/// The engine's transactions during batched ingestion (B1 and B2), marked
/// as they commit so that [`replay`] can write the same rows, in the same
/// transactions, with plain SQLite. A rowid table's rows are placed by their
/// rowids (SQLite numbers new rows in the order they are inserted). The
/// tables without rowids are placed by the time the engine stamped on the
/// row (`trigger_marks.at`, `list_members.added_at`,
/// `custom_properties.first_seen`: a batch's rows carry the module's time
/// at its push, a clock move's the instants after it; a row stamped
/// exactly at a batch's time goes with that batch) or by their parent
/// (`message_links`, by its message's rowid).
struct Transactions {
    reader: Connection,
    rowid_tables: Vec<String>,
    marks: Vec<Mark>,
}

impl Transactions {
    fn new(db: &Path) -> BoxResult<Transactions> {
        let reader = open_db(db, Access::Read)?;
        let rowid_tables = reader
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'
                   AND sql NOT LIKE '%WITHOUT ROWID%' ORDER BY name",
            )?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(Transactions {
            reader,
            rowid_tables,
            marks: Vec::new(),
        })
    }

    /// Marks the end of the engine's writes so far (it is idle: every
    /// `push_batch` and `advance_clock` returns after its commit).
    fn mark(&mut self, written: Written, at: i64) -> BoxResult<()> {
        let mut ends = BTreeMap::new();
        for t in &self.rowid_tables {
            let end: i64 = self.reader.query_row(
                &format!("SELECT COALESCE(MAX(rowid), 0) FROM \"{t}\""),
                [],
                |r| r.get(0),
            )?;
            ends.insert(t.clone(), end);
        }
        self.marks.push(Mark { written, at, ends });
        Ok(())
    }

    /// Whether the stretches can be told apart: the tables without rowids
    /// are placed by time, so every batch must have been pushed at a later
    /// instant than the one before (not so with `--clock-per-batch-secs 0`).
    fn replayable(&self) -> bool {
        let pushes: Vec<i64> = self
            .marks
            .iter()
            .filter(|m| m.written == Written::Push)
            .map(|m| m.at)
            .collect();
        !pushes.is_empty() && pushes.windows(2).all(|w| w[0] < w[1])
    }

    /// The rows of table `t` written in the stretch ending at mark `i`, as a
    /// `WHERE` clause on `t`.
    fn stretch(&self, t: &str, i: usize) -> BoxResult<String> {
        let mark = &self.marks[i];
        // The rowids a rowid table gained in the stretch: (after, up to).
        let rowids = |table: &str| {
            let after = i.checked_sub(1).map_or(0, |p| self.marks[p].ends[table]);
            (after, mark.ends[table])
        };
        if mark.ends.contains_key(t) {
            let (after, end) = rowids(t);
            return Ok(format!("rowid > {after} AND rowid <= {end}"));
        }
        if t == "message_links" {
            let (after, end) = rowids("messages");
            return Ok(format!("message_id > {after} AND message_id <= {end}"));
        }
        let column = match t {
            "trigger_marks" => "at",
            "list_members" => "added_at",
            "custom_properties" => "first_seen",
            "plugin_stats" => "last_call_at",
            "sms_threads" => "at",
            "stopped_numbers" => "at",
            _ => return Err(format!("the replay cannot place the rows of {t}").into()),
        };
        // The next batch's time: a clock move's rows lie before it.
        let next_push = self.marks[i + 1..]
            .iter()
            .find(|m| m.written == Written::Push)
            .map_or(i64::MAX, |m| m.at);
        let (lo, hi) = match mark.written {
            Written::Before => (0, next_push - 1),
            Written::Push => (mark.at, mark.at),
            Written::ClockMove => (mark.at + 1, next_push - 1),
        };
        Ok(format!("{column} >= {lo} AND {column} <= {hi}"))
    }
}

/// Moves the manual clock (when `ms > 0`), adding the time taken to `advancing`.
fn advance(m: &Module, ms: i64, advancing: &mut Duration) -> BoxResult<()> {
    if ms > 0 {
        let t = Instant::now();
        m.advance_clock(ms)?;
        *advancing += t.elapsed();
    }
    Ok(())
}

/// The next instant after `now` at which the engine has scheduled work: an
/// enrollment wake-up or a date-trigger evaluation (what the worker's own
/// scheduler looks for), read from a separate connection.
fn next_scheduled(conn: &Connection, now: i64) -> BoxResult<Option<i64>> {
    Ok(conn.query_row(
        "SELECT MIN(t) FROM (
             SELECT MIN(wake_at) AS t FROM enrollments WHERE state = 'active' AND wake_at > ?1
             UNION ALL
             SELECT MIN(next_eval_at) FROM automations
              WHERE status = 'active' AND deleted_at IS NULL AND next_eval_at > ?1)",
        [now],
        |r| r.get(0),
    )?)
}

/// The plain SQLite rate: same pragmas (opened through the module's store),
/// 1,000 rows per transaction, one prepared statement.
fn raw_sqlite(path: &Path, rows: usize) -> BoxResult<Duration> {
    let conn = open_db(path, Access::Write)?;
    conn.execute_batch(
        "CREATE TABLE raw_rows (id INTEGER PRIMARY KEY, a TEXT, b TEXT, c INTEGER)",
    )?;
    let detail = r#"{"cause":"contact_created","type":"send_email","duration_ms":0}"#;
    let start = Instant::now();
    let mut done = 0;
    while done < rows {
        let end = (done + BATCH).min(rows);
        conn.execute_batch("BEGIN IMMEDIATE")?;
        {
            let mut stmt =
                conn.prepare_cached("INSERT INTO raw_rows (a, b, c) VALUES (?1, ?2, ?3)")?;
            for i in done..end {
                stmt.execute((format!("c{i}"), detail, i as i64))?;
            }
        }
        conn.execute_batch("COMMIT")?;
        done = end;
    }
    Ok(start.elapsed())
}

/// The plain SQLite rate for the rows the engine wrote: every row of `src`
/// is copied into a fresh database at `dst` with the module's schema (its
/// indexes and constraints) and pragmas, table by table (parents before
/// children), 1,000 rows per transaction through one prepared `INSERT` per
/// table, checkpointing as plain SQLite does (inside the commit that takes
/// the log past 1,000 pages). Only the inserts and commits are timed;
/// reading `src` is not. Returns the rows copied and the time.
fn raw_same_rows(src: &Path, dst: &Path) -> BoxResult<(usize, Duration)> {
    let from = open_db(src, Access::Read)?;
    let (to, order, checkpointer) = copy_target(&from, dst, false)?;
    let mut time = Duration::ZERO;
    let mut copied = 0;
    for t in &order {
        let mut read = from.prepare(&format!("SELECT * FROM \"{t}\""))?;
        let insert = insert_sql(t, &read);
        let width = read.column_count();
        let mut rows = read.query([])?;
        let mut chunk: Vec<Vec<rusqlite::types::Value>> = Vec::with_capacity(BATCH);
        loop {
            chunk.clear();
            while chunk.len() < BATCH {
                let Some(row) = rows.next()? else { break };
                chunk.push((0..width).map(|i| row.get(i)).collect::<Result<_, _>>()?);
            }
            if chunk.is_empty() {
                break;
            }
            let start = Instant::now();
            to.execute_batch("BEGIN IMMEDIATE")?;
            {
                let mut stmt = to.prepare_cached(&insert)?;
                for values in &chunk {
                    stmt.execute(rusqlite::params_from_iter(values.iter()))?;
                }
            }
            to.execute_batch("COMMIT")?;
            time += start.elapsed();
            copied += chunk.len();
        }
    }
    finish_copy(to, checkpointer)?;
    Ok((copied, time))
}

/// The same rows as [`raw_same_rows`] copies, written in the engine's own
/// transactions of batched ingestion (`marks`): each `push_batch` of B1 and
/// B2 becomes one transaction holding the rows it wrote, every table's in
/// turn (parents first) through one prepared `INSERT`, as the copy does;
/// the rows written before B1 and by the clock moves
/// between batches are written untimed in transactions of their own, so
/// that each timed one goes into the same tables the engine's went into.
/// The copy checkpoints as the engine does (`store::checkpoint`). Returns
/// the rows of the timed transactions and their time (inserts and
/// commits; reading `src` is not timed).
fn replay(
    src: &Path,
    dst: &Path,
    marks: &Transactions,
) -> BoxResult<Vec<(usize, usize, Duration)>> {
    let from = open_db(src, Access::Read)?;
    let (to, order, checkpointer) = copy_target(&from, dst, true)?;
    let mut statements = Vec::with_capacity(order.len());
    for t in &order {
        let read = from.prepare(&format!("SELECT * FROM \"{t}\" LIMIT 0"))?;
        statements.push((insert_sql(t, &read), read.column_count()));
    }
    let mut timed = Vec::new();
    for (i, mark) in marks.marks.iter().enumerate() {
        // Each table's rows of the stretch, in `order`.
        let mut stretch: Vec<Vec<Vec<rusqlite::types::Value>>> = Vec::with_capacity(order.len());
        for (t, (_, width)) in order.iter().zip(&statements) {
            let mut read = from.prepare(&format!(
                "SELECT * FROM \"{t}\" WHERE {}",
                marks.stretch(t, i)?
            ))?;
            let mut rows = read.query([])?;
            let mut table = Vec::new();
            while let Some(row) = rows.next()? {
                table.push((0..*width).map(|c| row.get(c)).collect::<Result<_, _>>()?);
            }
            stretch.push(table);
        }
        let start = Instant::now();
        to.execute_batch("BEGIN IMMEDIATE")?;
        for ((insert, _), rows) in statements.iter().zip(&stretch) {
            if rows.is_empty() {
                continue;
            }
            let mut stmt = to.prepare_cached(insert)?;
            for values in rows {
                stmt.execute(rusqlite::params_from_iter(values.iter()))?;
            }
        }
        to.execute_batch("COMMIT")?;
        if mark.written == Written::Push {
            timed.push((i, stretch.iter().map(Vec::len).sum(), start.elapsed()));
        }
    }
    finish_copy(to, checkpointer)?;
    Ok(timed)
}

/// `INSERT INTO t` of every column `read` selects from `t`.
fn insert_sql(t: &str, read: &rusqlite::Statement<'_>) -> String {
    let columns: Vec<String> = read.column_names().map(|c| format!("\"{c}\"")).collect();
    format!(
        "INSERT INTO \"{t}\" ({}) VALUES ({})",
        columns.join(", "),
        vec!["?"; columns.len()].join(", ")
    )
}

/// A fresh database at `dst` with the module's schema and pragmas, emptied
/// of the rows the migrations seed, ready to take a copy of `from`: its
/// connection, `from`'s tables with parents before children, and the
/// checkpoint thread when `background_checkpoints`.
fn copy_target(
    from: &Connection,
    dst: &Path,
    background_checkpoints: bool,
) -> BoxResult<(Connection, Vec<String>, Option<std::thread::JoinHandle<()>>)> {
    let mut to = open_db(dst, Access::Write)?;
    let checkpointer = if background_checkpoints {
        Some(store::checkpoint::start(dst, &mut to, storage())?)
    } else {
        None
    };
    let tables: Vec<String> = from
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    // Parents first, so that the foreign keys hold at every commit.
    let parents = |t: &str| -> BoxResult<Vec<String>> {
        Ok(from
            .prepare("SELECT DISTINCT \"table\" FROM pragma_foreign_key_list(?1)")?
            .query_map([t], |r| r.get(0))?
            .collect::<Result<_, _>>()?)
    };
    let mut order: Vec<String> = Vec::new();
    let mut pending = tables.clone();
    while !pending.is_empty() {
        let before = pending.len();
        let mut rest = Vec::new();
        for t in pending {
            let ready = parents(&t)?
                .iter()
                .all(|p| p == &t || order.contains(p) || !tables.contains(p));
            if ready { order.push(t) } else { rest.push(t) }
        }
        if rest.len() == before {
            return Err(format!("foreign keys form a cycle among {rest:?}").into());
        }
        pending = rest;
    }
    // The migrations seed some rows; the copy replaces them.
    to.execute_batch("PRAGMA foreign_keys=OFF")?;
    for t in order.iter().rev() {
        to.execute(&format!("DELETE FROM \"{t}\""), [])?;
    }
    to.execute_batch("PRAGMA foreign_keys=ON")?;
    Ok((to, order, checkpointer))
}

/// Closes a copy's connection and waits for its checkpoint thread.
fn finish_copy(to: Connection, checkpointer: Option<std::thread::JoinHandle<()>>) -> BoxResult<()> {
    drop(to);
    if let Some(thread) = checkpointer {
        thread
            .join()
            .map_err(|_| "the copy's checkpoint thread panicked")?;
    }
    Ok(())
}

/// The same-rows references, each measured twice on fresh files, the
/// two alternating: [`raw_same_rows`] (every row after B3, table by table,
/// 1,000 rows a transaction, SQLite's own checkpoints) and [`replay`] (the
/// rows of B1's and B2's batches, each batch's in one transaction, the
/// engine's checkpoint thread; not measured when the clock stays still
/// during ingestion, see [`Transactions::replayable`]).
struct SameRows {
    /// Rows in the database after B3: what each copy writes.
    rows: usize,
    times: [Duration; 2],
    replays: Option<Replays>,
}

/// Two replays of B1's and B2's transactions.
struct Replays {
    /// Rows of the replayed transactions of B1 and of B2.
    rows: [usize; 2],
    /// Each replay's time for B1's transactions and for B2's.
    times: [[Duration; 2]; 2],
}

impl SameRows {
    fn measure(
        db: &Path,
        dir: &Path,
        marks: &Transactions,
        b1_marks: usize,
    ) -> BoxResult<SameRows> {
        let mut times = [Duration::ZERO; 2];
        let mut rows = 0;
        let mut replays = marks.replayable().then_some(Replays {
            rows: [0; 2],
            times: [[Duration::ZERO; 2]; 2],
        });
        for (i, time) in times.iter_mut().enumerate() {
            let copy = dir.join(format!("same-rows-{i}.db"));
            remove_database(&copy)?;
            eprintln!("  raw SQLite, the same rows (copy {}) ...", i + 1);
            (rows, *time) = raw_same_rows(db, &copy)?;
            remove_database(&copy)?;
            let Some(r) = replays.as_mut() else { continue };
            eprintln!(
                "  raw SQLite, the same rows in the engine's transactions (replay {}) ...",
                i + 1
            );
            r.rows = [0; 2];
            for (mark, n, time) in replay(db, &copy, marks)? {
                let part = usize::from(mark >= b1_marks);
                r.rows[part] += n;
                r.times[i][part] += time;
            }
            remove_database(&copy)?;
        }
        Ok(SameRows {
            rows,
            times,
            replays,
        })
    }

    /// Rows per second of the faster copy.
    fn rate(&self) -> f64 {
        self.rows as f64 / self.times[0].min(self.times[1]).as_secs_f64()
    }
}

impl Replays {
    /// Rows replayed, B1's and B2's.
    fn total(&self) -> usize {
        self.rows[0] + self.rows[1]
    }

    /// The time of each replay, B1's and B2's transactions together.
    fn each(&self) -> [Duration; 2] {
        self.times.map(|[a, b]| a + b)
    }

    /// The faster replay: its rows per second, then B1's and B2's.
    fn rates(&self) -> [f64; 3] {
        let [t0, t1] = self.each();
        let fast = self.times[usize::from(t1 < t0)];
        [
            self.total() as f64 / t0.min(t1).as_secs_f64(),
            self.rows[0] as f64 / fast[0].as_secs_f64(),
            self.rows[1] as f64 / fast[1].as_secs_f64(),
        ]
    }
}

/// Removes a database file and its WAL and shared-memory files, if present.
fn remove_database(p: &Path) -> BoxResult<()> {
    for suffix in ["", "-wal", "-shm"] {
        let f = PathBuf::from(format!("{}{suffix}", p.display()));
        if f.exists() {
            std::fs::remove_file(&f)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Machine facts and formatting
// ---------------------------------------------------------------------------

fn proc_field(file: &str, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

fn kib_field(key: &str) -> Option<f64> {
    let v = proc_field("/proc/self/status", key)?;
    v.split_whitespace().next()?.parse::<f64>().ok()
}

/// The file system type of the mount holding `path`.
fn fs_type(path: &Path) -> String {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, point, kind) = (f.next()?, f.next()?, f.next()?);
            path.starts_with(point)
                .then(|| (point.len(), kind.to_string()))
        })
        .max()
        .map(|(_, k)| k)
        .unwrap_or_else(|| "unknown".into())
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// 1234567.8 -> "1,234,568".
fn group(x: f64) -> String {
    let n = x.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    if n < 0 { format!("-{out}") } else { out }
}

fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / (1024.0 * 1024.0))
}

/// Runs `f` once and returns its wall time in milliseconds with its result.
fn time_ms<T, E: Into<Box<dyn std::error::Error>>>(
    f: impl FnOnce() -> Result<T, E>,
) -> BoxResult<(f64, T)> {
    let t = Instant::now();
    let v = f().map_err(Into::into)?;
    Ok((t.elapsed().as_secs_f64() * 1000.0, v))
}

/// How often each view is built; the median is reported.
const VIEW_RUNS: usize = 3;

/// Build times of the host's screens on the loaded database.
struct ViewTimes {
    events: i64,
    /// (label, figures) lines for the report.
    rows: Vec<(String, String)>,
}

/// The median of `VIEW_RUNS` builds of one view, in ms.
fn view_ms(m: &Module, name: &str, params: &Value) -> BoxResult<f64> {
    let params = params.to_string();
    let mut runs = Vec::with_capacity(VIEW_RUNS);
    for _ in 0..VIEW_RUNS {
        let t = Instant::now();
        m.view(name, &params)?;
        runs.push(t.elapsed());
    }
    runs.sort();
    Ok(percentile(&runs, 0.5))
}

/// Times the automation list, and the builder and performance views of every
/// automation (mean and slowest).
fn view_times(m: &Module, reader: &Connection) -> BoxResult<ViewTimes> {
    let events: i64 = reader.query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))?;
    let ids: Vec<String> = reader
        .prepare("SELECT id FROM automations ORDER BY id")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut rows = vec![(
        "automation_list".to_string(),
        format!("{:>10.2} ms", view_ms(m, "automation_list", &json!({}))?),
    )];
    for name in ["automation_builder", "automation_performance"] {
        let mut each = Vec::with_capacity(ids.len());
        for id in &ids {
            each.push((view_ms(m, name, &json!({"automation_id": id}))?, id));
        }
        let mean = each.iter().map(|(t, _)| t).sum::<f64>() / each.len().max(1) as f64;
        let (max, slowest) =
            each.iter().fold(
                (0.0, ""),
                |acc, (t, id)| if *t > acc.0 { (*t, id.as_str()) } else { acc },
            );
        rows.push((
            format!("{name} (each of {})", ids.len()),
            format!("{mean:>10.2} ms mean, {max:.2} ms slowest ({slowest})"),
        ));
    }
    Ok(ViewTimes { events, rows })
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

// ---------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------

fn main() -> BoxResult<()> {
    let args = parse_args()?;
    let tmp;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = tempfile::Builder::new()
                .prefix("crm-bench-")
                .tempdir_in(std::env::temp_dir())?;
            tmp.path().to_path_buf()
        }
    };
    let db = dir.join("practice.db");
    let raw_db = dir.join("raw-start.db");
    let raw_db_end = dir.join("raw-end.db");
    for p in [&db, &raw_db, &raw_db_end] {
        remove_database(p)?;
    }

    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let cpu = proc_field("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown CPU".into());
    let mem = proc_field("/proc/meminfo", "MemTotal")
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|k| format!("{:.1} GiB RAM", k / (1024.0 * 1024.0)))
        .unwrap_or_else(|| "unknown RAM".into());
    let fs = fs_type(&dir);
    eprintln!("benchmark: database in {} ({fs})", dir.display());
    if fs == "tmpfs" || fs == "ramfs" {
        eprintln!(
            "warning: {fs} ignores fsync: the durable figures will be too optimistic (use --dir on a disk)"
        );
    }

    let config = json!({"clock": {"mode": "manual", "start": START}, "storage": storage(),
        "initial_settings": {"practice_name": "Riverside Family Practice", "time_zone": "America/New_York", "email_footer": {"postal_address": "12 River Road, Boston, MA 02118", "text": "{{practice}}: unsubscribe at {{unsubscribe_link}}"}, "tracking": {"base_url": "https://t.riverside.example", "email_opens": true, "email_clicks": true, "sms_clicks": false}}});
    // Raw SQLite first, on a fresh file (it is measured again at the end).
    let raw_rows = (args.contacts * 30).max(100_000).div_ceil(BATCH) * BATCH;
    eprintln!(
        "  raw SQLite: {} rows in transactions of 1,000 ...",
        group(raw_rows as f64)
    );
    let raw_first = raw_sqlite(&raw_db, raw_rows)?;

    let mut module = Module::open(&db, &config.to_string())?;
    let host = Arc::new(CountingHost::default());
    if args.live_host {
        module.set_host(Some(host.clone() as Arc<dyn Host>))?;
    }
    let (any_time_count, business_count) = setup(&module, args.automations)?;
    let reader = open_db(&db, Access::Read)?;
    let mut bench = Bench {
        reader,
        host: host.clone(),
        phases: Vec::new(),
    };
    let total_start = Instant::now();

    // Ingestion is spread over simulated time: the clock moves after every
    // 1,000 events, as when a host syncs a practice over a while, so that the
    // delays started by one batch fall due together, not all 100,000 at once.
    let clock_ms = args.clock_per_batch_secs * 1000;
    let mut advancing = Duration::ZERO;

    // A1: single pushes, one thread.
    let single = args.single;
    let mut latencies = Vec::with_capacity(single);
    let a1 = bench.phase(&module, "A1 single push, 1 thread (contacts)", |m| {
        let mut time = Duration::ZERO;
        for n in 1..=single {
            let text = contact_event(n).to_string();
            let t = Instant::now();
            m.push(&text)?;
            let d = t.elapsed();
            latencies.push(d);
            time += d;
            if n.is_multiple_of(BATCH) {
                advance(m, clock_ms, &mut advancing)?;
            }
        }
        Ok((single, time))
    })?;
    latencies.sort();

    // A2: single pushes, several threads at once (group commit).
    let threads = args.threads;
    let a2 = bench.phase(
        &module,
        &format!("A2 single push, {threads} threads (contacts)"),
        |m| {
            let start = Instant::now();
            std::thread::scope(|s| -> BoxResult<()> {
                let handles: Vec<_> = (0..threads)
                    .map(|t| {
                        s.spawn(move || -> Result<(), String> {
                            let mut n = single + 1 + t;
                            while n <= 2 * single {
                                m.push(&contact_event(n).to_string())
                                    .map_err(|e| e.to_string())?;
                                n += threads;
                            }
                            Ok(())
                        })
                    })
                    .collect();
                for h in handles {
                    h.join().map_err(|_| "a pushing thread panicked")??;
                }
                Ok(())
            })?;
            let time = start.elapsed();
            for _ in 0..single.div_ceil(BATCH) {
                advance(m, clock_ms, &mut advancing)?;
            }
            Ok((single, time))
        },
    )?;

    // B1: the remaining contacts in batches of 1,000.
    let first_batch = 2 * single + 1;
    let remaining = args.contacts + 1 - first_batch;
    module.wait_idle(Duration::from_secs(3600))?;
    let mut transactions = Transactions::new(&db)?;
    transactions.mark(Written::Before, module.now())?;
    let b1 = bench.phase(&module, "B1 batches of 1,000 (contacts)", |m| {
        push_batches(
            m,
            remaining,
            clock_ms,
            &mut advancing,
            Some(&mut transactions),
            |i| contact_event(first_batch + i),
        )
    })?;

    let b1_marks = transactions.marks.len();
    // B2: activity in batches of 1,000.
    let email_keys: Vec<String> = bench
        .reader
        .prepare("SELECT idempotency_key FROM outbox WHERE kind = 'message' AND channel = 'email' ORDER BY id")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let plan = activity_plan(args.contacts, email_keys.len());
    let b2 = bench.phase(&module, "B2 batches of 1,000 (activity mix)", |m| {
        push_batches(
            m,
            plan.len(),
            clock_ms,
            &mut advancing,
            Some(&mut transactions),
            |i| plan[i].to_json(i, &email_keys),
        )
    })?;
    drop(plan);

    // B3: SMS replies that carry only the sender's number.
    let by_phone: Vec<usize> = (1..=args.contacts)
        .filter(|&n| pct(n, 2) < 85 && pct(n, 30) < 1)
        .take(200)
        .collect();
    let b3 = bench.phase(&module, "B3 one batch: SMS replies by phone number", |m| {
        push_batches(m, by_phone.len(), clock_ms, &mut advancing, None, |i| {
            let n = by_phone[i];
            json!({"event_id": format!("ev-p{n}"), "type": "sms.received", "from": format!("+1617{:07}", 2_000_000 + n),
                   "body": "What time is my appointment?"})
        })
    })?;

    // The same rows written by raw SQLite: twice, the faster counts.
    module.wait_idle(Duration::from_secs(3600))?;
    // The copies read and write through connections of their own: their
    // memory is the benchmark's, not the engine's, so the peak RSS before
    // them is kept and the kernel's high-water mark reset after them.
    let peak_before_copies = kib_field("VmHWM").unwrap_or(0.0);
    let same = SameRows::measure(&db, &dir, &transactions, b1_marks)?;
    drop(transactions);
    let _ = std::fs::write("/proc/self/clear_refs", "5");

    if args.ingest_only {
        // A quick figure for profiling runs: the batched ingestion only.
        let (pb1, pb2) = (&bench.phases[b1], &bench.phases[b2]);
        let secs = pb1.secs() + pb2.secs();
        let rows = pb1.rows() + pb2.rows();
        let written = (pb1.written + pb2.written) as f64 / secs;
        let raw_rate = raw_rows as f64 / raw_first.as_secs_f64();
        let (replayed, with_updates) = match &same.replays {
            Some(r) => {
                let [rate, ..] = r.rates();
                (
                    format!(
                        "{} rows/s, {:.1} %",
                        group(rate),
                        100.0 * r.total() as f64 / secs / rate
                    ),
                    format!(" / {:.1} %", 100.0 * written / rate),
                )
            }
            None => ("not measured".to_owned(), String::new()),
        };
        println!(
            "ingest-only: batched {} events/s, {} rows/s ({:.1} rows/event), raw {} rows/s, {:.1} %; same rows {} rows/s, {:.1} %; in the engine's transactions {replayed}; updates in place counted {} rows/s: {:.1} % / {:.1} %{with_updates}; single push {} events/s; B3 {} events/s",
            group((pb1.events + pb2.events) as f64 / secs),
            group(rows as f64 / secs),
            rows as f64 / (pb1.events + pb2.events) as f64,
            group(raw_rate),
            100.0 * rows as f64 / secs / raw_rate,
            group(same.rate()),
            100.0 * rows as f64 / secs / same.rate(),
            group(written),
            100.0 * written / raw_rate,
            100.0 * written / same.rate(),
            group(bench.phases[a1].events as f64 / bench.phases[a1].secs()),
            group(bench.phases[b3].events as f64 / bench.phases[b3].secs()),
        );
        drop(bench);
        module.close();
        return Ok(());
    }

    // The worker's scheduler query, timed on the loaded database.
    let waiting: i64 = bench.reader.query_row(
        "SELECT COUNT(*) FROM enrollments WHERE state = 'active' AND wake_at IS NOT NULL",
        [],
        |r| r.get(0),
    )?;
    let probe_now = module.now();
    let (earliest_ms, _) = time_ms(|| crm_module::core::due::earliest(&bench.reader))?;
    let (next_ms, _) =
        time_ms(|| crm_module::core::due::next(&bench.reader, probe_now + 3 * DAY_MS))?;
    let (index_ms, _) = time_ms(|| next_scheduled(&bench.reader, probe_now))?;

    // E1/E2: the same single pushes (a custom property of existing contacts)
    // on the loaded database, first with the manual clock, then after
    // reopening it with the system clock, whose worker looks for due work
    // in every loop. Simulated time lies in the future: nothing is due.
    let e_pushes = args.contacts.min(E_PUSHES);
    let update = |n: usize, tag: &str| {
        json!({"event_id": format!("ev-{tag}{n}"), "type": "contact.upserted",
               "contact": {"id": format!("c{n}"), "preferred_clinic": format!("clinic-{tag}")}})
        .to_string()
    };
    let single_pushes = |m: &Module, tag: &str| -> BoxResult<(usize, Duration)> {
        let mut time = Duration::ZERO;
        for n in 1..=e_pushes {
            let text = update(n * 7 % args.contacts + 1, tag);
            let t = Instant::now();
            m.push(&text)?;
            time += t.elapsed();
        }
        Ok((e_pushes, time))
    };
    let e1 = bench.phase(&module, "E1 single push, manual clock, loaded db", |m| {
        single_pushes(m, "e1")
    })?;
    let e2 = if module.now() > crm_module::clock::system_now() + DAY_MS {
        let resume_at = crm_module::clock::to_rfc3339(module.now());
        module.close();
        module = Module::open(
            &db,
            &json!({"clock": {"mode": "system"}, "storage": storage()}).to_string(),
        )?;
        let e2 = bench.phase(&module, "E2 single push, system clock, loaded db", |m| {
            single_pushes(m, "e2")
        })?;
        module.close();
        module = Module::open(
            &db,
            &json!({"clock": {"mode": "manual", "start": resume_at}, "storage": storage()})
                .to_string(),
        )?;
        if args.live_host {
            module.set_host(Some(host.clone() as Arc<dyn Host>))?;
        }
        Some(e2)
    } else {
        eprintln!("  E2 skipped: the simulated time is not in the future of the system clock");
        None
    };

    // C: three days of the manual clock, moved to each instant at which work
    // is scheduled (as the worker does with the system clock), or in fixed steps.
    let probe = open_db(&db, Access::Read)?;
    let step_ms = args.advance_step_minutes * 60_000;
    let c_label = if step_ms > 0 {
        format!("C  clock +3 days ({} min steps)", args.advance_step_minutes)
    } else {
        "C  clock +3 days (to each due instant)".to_string()
    };
    let mut advance_calls = 0usize;
    let c = bench.phase(&module, &c_label, |m| {
        let end = m.now() + 3 * DAY_MS;
        let mut time = Duration::ZERO;
        loop {
            let now = m.now();
            let target = if step_ms > 0 {
                (now + step_ms).min(end)
            } else {
                next_scheduled(&probe, now)?
                    .filter(|t| *t < end)
                    .unwrap_or(end)
            };
            let t = Instant::now();
            m.advance_clock(target - now)?;
            time += t.elapsed();
            advance_calls += 1;
            if target >= end {
                break;
            }
        }
        let t = Instant::now();
        m.wait_idle(Duration::from_secs(3600))?;
        Ok((0, time + t.elapsed()))
    })?;
    drop(probe);

    // D: the host drains the outbox.
    let pending: i64 = bench.reader.query_row(
        "SELECT COUNT(*) FROM outbox WHERE status IN ('pending','retry')",
        [],
        |r| r.get(0),
    )?;
    let d = bench.phase(&module, "D  host attached, outbox drained", |m| {
        let start = Instant::now();
        if !args.live_host {
            m.set_host(Some(host.clone() as Arc<dyn Host>))?;
        }
        m.wait_idle(Duration::from_secs(3600))?;
        Ok((0, start.elapsed()))
    })?;
    let engine_time = total_start.elapsed();

    // The screens the host renders, on the loaded database (event log, outbox
    // and enrollments of the whole run).
    let views = view_times(&module, &bench.reader)?;

    // Raw SQLite again, after the engine phases, once the engine's dirty pages
    // are on disk (they would otherwise slow this run's fsyncs).
    let _ = std::process::Command::new("sync").status();
    eprintln!("  raw SQLite again: {} rows ...", group(raw_rows as f64));
    let raw_last = raw_sqlite(&raw_db_end, raw_rows)?;
    // The faster of the two is what this disk allows: the ratio is taken against it.
    let raw_time = raw_first.min(raw_last);
    let raw_rate = raw_rows as f64 / raw_time.as_secs_f64();

    let db_bytes = file_size(&db) + file_size(&dir.join("practice.db-wal"));
    let peak = kib_field("VmHWM").unwrap_or(0.0).max(peak_before_copies) * 1024.0;
    let rss = kib_field("VmRSS").unwrap_or(0.0) * 1024.0;
    // Resident pages of mapped files (the database through the mapping, the
    // executable) are the kernel's file cache, shared and droppable.
    let rss_file = kib_field("RssFile").unwrap_or(0.0) * 1024.0;

    // ---- Report ----------------------------------------------------------
    let p = &bench.phases;
    println!();
    println!("crm-module benchmark");
    println!("  machine      {cpus} CPUs, {cpu}, {mem}");
    println!("  storage      {fs} at {}", dir.display());
    println!(
        "  SQLite       {} (bundled), WAL, synchronous=FULL: every push is durable when it returns; page cache {} MiB, memory-mapped reads {} per connection",
        rusqlite::version(),
        storage().cache_mib,
        if storage().mmap_mib == 0 {
            "off".to_string()
        } else {
            format!("{} MiB", storage().mmap_mib)
        }
    );
    println!(
        "  practice     {} contacts, {} active automations ({} any time, {} business hours), manual clock from {START}",
        group(args.contacts as f64),
        args.automations,
        any_time_count,
        business_count
    );
    println!(
        "  host         {}",
        if args.live_host {
            "attached from the start (deliveries run during ingestion)"
        } else {
            "attached in phase D only"
        }
    );
    println!();
    println!(
        "{:<44} {:>9} {:>9} {:>10} {:>10} {:>7} {:>10} {:>9} {:>9}",
        "phase", "events", "time s", "events/s", "rows", "rows/ev", "rows/s", "enrolled", "steps"
    );
    for ph in p {
        let per_event = if ph.events > 0 {
            format!("{:.1}", ph.rows() as f64 / ph.events as f64)
        } else {
            "-".into()
        };
        let events_per_s = if ph.events > 0 {
            group(ph.events as f64 / ph.secs())
        } else {
            "-".into()
        };
        println!(
            "{:<44} {:>9} {:>9.2} {:>10} {:>10} {:>7} {:>10} {:>9} {:>9}",
            ph.label,
            if ph.events > 0 {
                group(ph.events as f64)
            } else {
                "-".into()
            },
            ph.secs(),
            events_per_s,
            group(ph.rows() as f64),
            per_event,
            group(ph.rows() as f64 / ph.secs()),
            group(ph.enrolled() as f64),
            group(ph.steps() as f64),
        );
    }
    let mut references = vec![
        (
            "raw SQLite, 1,000 rows/tx (before the engine)",
            raw_rows,
            raw_first,
        ),
        (
            "raw SQLite, 1,000 rows/tx (after the engine)",
            raw_rows,
            raw_last,
        ),
        (
            "raw SQLite, the same rows (copy 1, after B3)",
            same.rows,
            same.times[0],
        ),
        (
            "raw SQLite, the same rows (copy 2, after B3)",
            same.rows,
            same.times[1],
        ),
    ];
    if let Some(r) = &same.replays {
        references.push((
            "  in the engine's transactions (replay 1)",
            r.total(),
            r.each()[0],
        ));
        references.push((
            "  in the engine's transactions (replay 2)",
            r.total(),
            r.each()[1],
        ));
    }
    for (label, rows, time) in references {
        println!(
            "{:<44} {:>9} {:>9.2} {:>10} {:>10} {:>7} {:>10}",
            label,
            "-",
            time.as_secs_f64(),
            "-",
            group(rows as f64),
            "-",
            group(rows as f64 / time.as_secs_f64())
        );
    }

    let (pb1, pb2) = (&p[b1], &p[b2]);
    let batch_events = pb1.events + pb2.events;
    let batch_secs = pb1.secs() + pb2.secs();
    let batch_rows_written = pb1.rows() + pb2.rows();
    let ingest_rate = batch_rows_written as f64 / batch_secs;
    let ratio = 100.0 * ingest_rate / raw_rate;
    let (rendered_per_s, sms_per_s) = render_rate();
    println!();
    println!("Figures");
    println!(
        "  messages rendered and composed       {:>10} emails/s  {} SMS/s (template render + full MIME composition, one thread)",
        group(rendered_per_s),
        group(sms_per_s)
    );
    println!(
        "  ingest, single pushes, 1 thread      {:>10} events/s   (latency per push: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms)",
        group(p[a1].events as f64 / p[a1].secs()),
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0)
    );
    println!(
        "  ingest, single pushes, {threads} threads      {:>10} events/s   (group commit)",
        group(p[a2].events as f64 / p[a2].secs())
    );
    println!(
        "  ingest, batches of 1,000             {:>10} events/s   ({} events: contacts {} /s, activity {} /s)",
        group(batch_events as f64 / batch_secs),
        group(batch_events as f64),
        group(pb1.events as f64 / pb1.secs()),
        group(pb2.events as f64 / pb2.secs())
    );
    println!(
        "  rows written by batched ingestion    {:>10} rows/s     ({:.1} rows per event)",
        group(ingest_rate),
        batch_rows_written as f64 / batch_events as f64
    );
    let met = |r: f64| if r >= 50.0 { "met" } else { "NOT met" };
    println!(
        "  raw SQLite batched insert            {:>10} rows/s     (3-column rows, same pragmas, same run; the faster of before {} and after {} rows/s)",
        group(raw_rate),
        group(raw_rows as f64 / raw_first.as_secs_f64()),
        group(raw_rows as f64 / raw_last.as_secs_f64())
    );
    println!(
        "  ingest rows/s ÷ raw rows/s           {:>9.1} %          aim ≥ 50 %: {} against 3-column rows",
        ratio,
        met(ratio)
    );
    println!(
        "  raw SQLite, the same rows           {:>10} rows/s     (the {} rows in the database after B3, copied into the module's schema; the faster of {} and {} rows/s)",
        group(same.rate()),
        group(same.rows as f64),
        group(same.rows as f64 / same.times[0].as_secs_f64()),
        group(same.rows as f64 / same.times[1].as_secs_f64())
    );
    let r = 100.0 * ingest_rate / same.rate();
    println!(
        "  ingest rows/s ÷ same-rows rows/s     {r:>9.1} %          aim ≥ 50 %: {} against the same rows",
        met(r)
    );
    // The replay wrote the rows of the batches' own transactions; the
    // engine's rate on those rows is the ratio of the two times.
    if let Some(replays) = &same.replays {
        let [rate, rate_b1, rate_b2] = replays.rates();
        let [t0, t1] = replays.each();
        let total = replays.total() as f64;
        println!(
            "  the same rows, the same transactions {:>9} rows/s     (the {} rows of B1's and B2's batches, each batch's in one transaction, with the engine's checkpoint thread; the faster of {} and {} rows/s; contacts {}, activity {} rows/s)",
            group(rate),
            group(total),
            group(total / t0.as_secs_f64()),
            group(total / t1.as_secs_f64()),
            group(rate_b1),
            group(rate_b2)
        );
        let ratio = |rows: usize, secs: f64, reference: f64| 100.0 * rows as f64 / secs / reference;
        let r = ratio(replays.total(), batch_secs, rate);
        println!(
            "  ingest rows/s ÷ those rows/s         {r:>9.1} %          aim ≥ 50 %: {} against the same rows in the same transactions (contacts {:.1} %, activity {:.1} %)",
            met(r),
            ratio(replays.rows[0], pb1.secs(), rate_b1),
            ratio(replays.rows[1], pb2.secs(), rate_b2)
        );
    }
    // The same figures with every row SQLite writes for the engine, updates
    // in place included; the references still insert only the new rows.
    let batch_written = pb1.written + pb2.written;
    let written_rate = batch_written as f64 / batch_secs;
    println!(
        "  rows written, updates counted        {:>10} rows/s     (SQLite's count of rows the engine inserted, updated or deleted: {} new rows, {} other changes, mostly updates in place; {:.1} per event)",
        group(written_rate),
        group(batch_rows_written as f64),
        group((pb1.updated() + pb2.updated()) as f64),
        batch_written as f64 / batch_events as f64
    );
    let mut rates = vec![
        (raw_rate, "raw rows/s", "3-column rows"),
        (same.rate(), "same-rows rows/s", "the same rows"),
    ];
    if let Some(r) = &same.replays {
        rates.push((
            r.rates()[0],
            "those rows/s",
            "the same rows in the same transactions",
        ));
    }
    for (rate, label, against) in rates {
        let r = 100.0 * written_rate / rate;
        println!(
            "  with updates ÷ {label:<21} {r:>9.1} %          aim ≥ 50 %: {} against {against}, updates in place counted",
            met(r)
        );
    }
    println!(
        "  enrollments during batched ingestion {:>10} /s         ({} enrollments)",
        group((pb1.enrolled() + pb2.enrolled()) as f64 / batch_secs),
        group((pb1.enrolled() + pb2.enrolled()) as f64)
    );
    println!(
        "  steps during batched ingestion       {:>10} /s         ({} steps run inline at enrollment)",
        group((pb1.steps() + pb2.steps()) as f64 / batch_secs),
        group((pb1.steps() + pb2.steps()) as f64)
    );
    println!(
        "  SMS replies by phone number (B3)     {:>10} events/s",
        group(p[b3].events as f64 / p[b3].secs())
    );
    let e2_text = match e2 {
        Some(i) => format!(
            "{} events/s with the system clock (E2)",
            group(p[i].events as f64 / p[i].secs())
        ),
        None => "system clock not measured".to_string(),
    };
    println!(
        "  single pushes on the loaded database {:>10} events/s   with the manual clock (E1); {e2_text}",
        group(p[e1].events as f64 / p[e1].secs())
    );
    println!(
        "  steps, clock advanced 3 days         {:>10} steps/s    ({} steps, {} enrollments in {:.2} s)",
        group(p[c].steps() as f64 / p[c].secs()),
        group(p[c].steps() as f64),
        group(p[c].enrolled() as f64),
        p[c].secs()
    );
    println!(
        "  advance_clock calls in C             {:>10}            (mean {:.1} ms per call)",
        group(advance_calls as f64),
        p[c].secs() * 1000.0 / advance_calls.max(1) as f64
    );
    println!(
        "  clock moved during ingestion         {:>12.2} s        ({} s of simulated time per 1,000 events; not in the ingest times)",
        advancing.as_secs_f64(),
        args.clock_per_batch_secs
    );
    let delivered: u64 = p.iter().map(|ph| ph.deliveries).sum();
    println!(
        "  deliveries to the host (D)           {:>10} /s         ({} in D, {} in all; {} pending before D)",
        group(p[d].deliveries as f64 / p[d].secs()),
        group(p[d].deliveries as f64),
        group(delivered as f64),
        group(pending as f64)
    );
    println!(
        "  peak RSS (VmHWM)                     {:>14}    (RSS at the end {}, of which {} file-backed: mapped database pages and the executable)",
        mib(peak),
        mib(rss),
        mib(rss_file)
    );
    println!(
        "  database size                        {:>14}    (practice.db + WAL)",
        mib(db_bytes as f64)
    );
    println!(
        "  total engine time                    {:>12.1} s",
        engine_time.as_secs_f64()
    );

    println!();
    println!(
        "Scheduler query cost on the loaded database ({} enrollments waiting, before C)",
        group(waiting as f64)
    );
    println!(
        "  core::due::earliest                  {earliest_ms:>10.2} ms        (worker: before each chunk of due work; every loop with the system clock)"
    );
    println!(
        "  core::due::next(now + 3 days)        {next_ms:>10.2} ms        (worker: once per scheduled item)"
    );
    println!(
        "  index-ordered MIN(wake_at) probe     {index_ms:>10.3} ms        (same question through enrollments_due, for comparison)"
    );
    println!();
    println!(
        "Views on the loaded database ({} events in the log; each view built {VIEW_RUNS} times, median)",
        group(views.events as f64)
    );
    for (label, t) in &views.rows {
        println!("  {label:<36} {t}");
    }
    println!();
    println!(
        "Rows written per table (new rows), then SQLite's count of the engine's other changes (updates in place, deletes)"
    );
    print!("{:<22}", "table");
    for ph in p {
        print!(" {:>9}", ph.label.split_whitespace().next().unwrap_or(""));
    }
    println!();
    let names: Vec<&String> = p[0].after.tables.keys().collect();
    for name in names {
        if p.iter().all(|ph| ph.table_growth(name) == 0) {
            continue;
        }
        print!("{name:<22}");
        for ph in p {
            print!(" {:>9}", group(ph.table_growth(name) as f64));
        }
        println!();
    }
    print!("{:<22}", "rows per event");
    for ph in p {
        if ph.events > 0 {
            print!(" {:>9.1}", ph.rows() as f64 / ph.events as f64);
        } else {
            print!(" {:>9}", "-");
        }
    }
    println!();
    print!("{:<22}", "other changes");
    for ph in p {
        print!(" {:>9}", group(ph.updated() as f64));
    }
    println!();
    print!("{:<22}", "written, per event");
    for ph in p {
        if ph.events > 0 {
            print!(" {:>9.1}", ph.written as f64 / ph.events as f64);
        } else {
            print!(" {:>9}", "-");
        }
    }
    println!();

    drop(bench);
    module.close();
    Ok(())
}

/// Messages rendered per second: the template engine and the MIME composer
/// the engine runs for every email step, and the SMS renderer with segment
/// counting, timed on one thread over a realistic template.
fn render_rate() -> (f64, f64) {
    use crm_module::messaging::{email, sms, template};
    let html = "<p>Hi {{firstname}},</p><p>It has been a while since your last visit to {{practice}}. \
                <a href=\"https://riverside.example/book\">Book online</a> or call us.</p><p>{{owner}}</p>";
    let mut vars = std::collections::BTreeMap::new();
    vars.insert("firstname".to_string(), "Zoë".to_string());
    vars.insert(
        "practice".to_string(),
        "Riverside Family Practice".to_string(),
    );
    vars.insert("owner".to_string(), "Dr. Lee".to_string());
    let sender = email::SenderIdentity {
        from_name: "Riverside".into(),
        from_address: "hello@riverside.example".into(),
        reply_to: None,
    };
    let n = 5_000;
    let start = std::time::Instant::now();
    for i in 0..n {
        let subject = template::render("subject", "We miss you, {{firstname}}", &vars, false)
            .unwrap_or_default();
        let body = template::render("html_body", html, &vars, true).unwrap_or_default();
        let key = format!("bench-e{i}-s1");
        let to = format!("p{i}@mail.example");
        let parts = email::EmailParts {
            message_key: &key,
            to: &to,
            sender: &sender,
            subject: &subject,
            preheader: "",
            html_body: &body,
            text_body: None,
            footer_html: "<p>Unsubscribe</p>",
            footer_text: "Unsubscribe",
            unsubscribe_url: Some("https://t.riverside.example/u/token"),
            unsubscribe_mailto: None,
            marketing: true,
            date: std::time::SystemTime::now(),
        };
        let _ = email::compose(&parts);
    }
    let emails = n as f64 / start.elapsed().as_secs_f64();
    let start = std::time::Instant::now();
    for _ in 0..n {
        let text = template::render(
            "message",
            "Hi {{firstname}}, {{practice}} here. Book your visit: reply YES.",
            &vars,
            false,
        )
        .unwrap_or_default();
        let _ = sms::measure(&text);
    }
    (emails, n as f64 / start.elapsed().as_secs_f64())
}
