//! A host process for the crash-recovery test: it opens the module, pushes a
//! practice through it and records every delivery it is handed. The test kills
//! it with SIGKILL at the worst moment (inside a delivery callback, after the
//! effect was committed and before the host answered), then runs it again.
//!
//! Usage: `crash-host run DB LOG` or `crash-host finish DB LOG`.
//! - run: creates the automation (once), pushes contacts one by one printing
//!   `pushed <event_id>` after each successful push, advances time; the 40th
//!   delivery prints `in-callback <key>` and blocks forever.
//! - finish: reopens, registers the host and runs until idle, then prints `idle`.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crm_module::{Delivery, Host, HostAnswer, Module};

struct Recorder {
    log: std::sync::Mutex<std::fs::File>,
    seen: AtomicUsize,
    block_at: Option<usize>,
}

impl Host for Recorder {
    fn deliver(&self, d: Delivery<'_>) -> (HostAnswer, Option<String>) {
        let n = self.seen.fetch_add(1, Ordering::SeqCst) + 1;
        {
            let mut f = self.log.lock().unwrap();
            writeln!(f, "{} {}", d.key, d.kind.as_str()).unwrap();
            f.sync_data().unwrap();
        }
        if self.block_at == Some(n) {
            println!("in-callback {}", d.key);
            std::io::stdout().flush().unwrap();
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        (HostAnswer::Accepted, None)
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (mode, db, log) = (args[1].as_str(), &args[2], &args[3]);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let m = Module::open(
        std::path::Path::new(db),
        r#"{"clock": {"mode": "manual", "start": "2026-01-05T14:00:00Z"},
            "initial_settings": {"practice_name": "Riverside", "time_zone": "America/New_York", "email_footer": {"postal_address": "12 River Road, Boston, MA 02118", "text": "{{practice}}: unsubscribe at {{unsubscribe_link}}"}, "tracking": {"base_url": "https://t.riverside.example", "email_opens": true, "email_clicks": true, "sms_clicks": false}}}"#,
    )
    .unwrap();
    let block_at = (mode == "run").then_some(40);
    m.set_host(Some(Arc::new(Recorder {
        log: std::sync::Mutex::new(file),
        seen: AtomicUsize::new(0),
        block_at,
    })))
    .unwrap();
    if mode == "finish" {
        m.advance_clock(10 * 86_400_000).unwrap();
        m.wait_idle(Duration::from_secs(60)).unwrap();
        println!("idle");
        return;
    }
    let create = r#"{"command": "automation.create", "automation_id": "welcome", "definition": {
        "name": "Welcome", "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
        "steps": [{"id": "hello", "type": "send_email", "subject": "Welcome", "body": "Hi {{firstname}}"},
                  {"id": "wait", "type": "delay", "amount": 1, "unit": "hours"},
                  {"id": "nudge", "type": "send_sms", "message": "Book with {{practice}}"},
                  {"id": "tag", "type": "set_property", "property": "tags", "value": {"add": ["welcomed"]}}]}}"#;
    if m.execute(create).is_ok() {
        m.execute(r#"{"command": "automation.activate", "automation_id": "welcome"}"#)
            .unwrap();
    }
    for i in 0..100_000 {
        let ev = format!(
            r#"{{"event_id": "c{i}", "type": "contact.upserted", "contact": {{"id": "p{i}", "first_name": "Pat",
                "email": "p{i}@example.com", "phone": "+1617555{:04}", "email_subscription": "subscribed", "sms_subscription": "subscribed"}}}}"#,
            i % 10_000
        );
        m.push(&ev).unwrap();
        println!("pushed c{i}");
        std::io::stdout().flush().unwrap();
        if i % 10 == 9 {
            m.advance_clock(20 * 60_000).unwrap();
        }
    }
}
