//! Nothing committed is lost and no effect is emitted under two keys, across
//! a real SIGKILL of the host process (issue 2 §5).

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[test]
fn sigkill_inside_a_delivery_loses_nothing_and_redelivers_under_the_same_key() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("practice.db");
    let log = dir.path().join("deliveries.log");
    let exe = env!("CARGO_BIN_EXE_crash-host");

    let mut child = Command::new(exe)
        .args(["run", db.to_str().unwrap(), log.to_str().unwrap()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pushed = Vec::new();
    let mut blocked_key = None;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(id) = line.strip_prefix("pushed ") {
            pushed.push(id.to_string());
        } else if let Some(key) = line.strip_prefix("in-callback ") {
            blocked_key = Some(key.to_string());
            break;
        }
    }
    let blocked_key = blocked_key.expect("the host reached its 40th delivery");
    // SIGKILL: no destructor, no flush, no goodbye.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    assert!(
        pushed.len() >= 10,
        "pushes acknowledged before the kill: {}",
        pushed.len()
    );

    let out = Command::new(exe)
        .args(["finish", db.to_str().unwrap(), log.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("idle"));

    let conn = rusqlite_open(&db);
    // 1. Every acknowledged push is in the database.
    let stored: HashSet<String> = query_strings(&conn, "SELECT event_id FROM ingested_events");
    for id in &pushed {
        assert!(stored.contains(id), "acknowledged push {id} was lost");
    }
    // 2. Every effect is accepted by the host; none is left behind.
    let pending: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM outbox WHERE status != 'accepted'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(pending, 0);
    // 3. One key per effect: (enrollment, step) ↔ key is one to one, and the
    //    host never saw a key the outbox does not hold.
    let keys: HashSet<String> = query_strings(&conn, "SELECT idempotency_key FROM outbox");
    let per_step: i64 = conn
        .query_row("SELECT COUNT(*) FROM (SELECT enrollment_id, step_id FROM outbox GROUP BY 1, 2 HAVING COUNT(*) > 1)", [], |r| r.get(0))
        .unwrap();
    assert_eq!(per_step, 0);
    let delivered: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect();
    let mut times: HashMap<&str, usize> = HashMap::new();
    for k in &delivered {
        assert!(
            keys.contains(k),
            "host saw a key the outbox does not hold: {k}"
        );
        *times.entry(k).or_default() += 1;
    }
    for k in &keys {
        assert!(
            times.contains_key(k.as_str()),
            "effect {k} was never delivered"
        );
    }
    // 4. The delivery interrupted by the kill came again, under the same key.
    assert_eq!(
        times[blocked_key.as_str()],
        2,
        "the interrupted delivery is re-delivered once, same key"
    );
    // Each contact acknowledged got its whole flow: 3 effects.
    let per_contact: i64 = conn
        .query_row("SELECT COUNT(*) FROM (SELECT contact_id FROM outbox GROUP BY contact_id HAVING COUNT(*) != 3)", [], |r| r.get(0))
        .unwrap();
    assert_eq!(per_contact, 0);
}

fn rusqlite_open(path: &std::path::Path) -> crm_module::store::Connection {
    crm_module::store::open(path, crm_module::store::Access::Read).unwrap()
}

fn query_strings(conn: &crm_module::store::Connection, sql: &str) -> HashSet<String> {
    let mut stmt = conn.prepare(sql).unwrap();
    stmt.query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}
