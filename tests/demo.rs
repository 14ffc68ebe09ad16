//! The main job's C host (`examples/demo_host.c`), built by the system C
//! compiler against the generated header, run on a small practice, and run
//! again under valgrind memcheck.

use std::process::Command;

use crm_integration_tests as support;

/// Built once per test process (the tests run in parallel).
fn build() -> std::path::PathBuf {
    static EXE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    EXE.get_or_init(|| {
        support::compile_c_with_libs("examples/demo_host.c", "demo_host", &["jansson"])
    })
    .clone()
}

#[test]
fn demo_host_runs_a_practice_and_prints_the_screens() {
    let exe = build();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("demo.db");
    let out = Command::new(&exe)
        .arg(&db)
        .args(["600", "40"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", support::describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "== Automation",
        "New lead welcome series",
        "Dormant Patient Win-back",
        "== Performance: New lead welcome series ==",
        "== Performance: Dormant Patient Win-back ==",
        "Welcome email",
        "Follow-up SMS",
        "Call this lead",
        "We miss you email",
        "\"placeholders\"",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    // Numbers come from the engine, not the program: the welcome series
    // enrolled every lead the host created after go-live.
    let enrolled_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("New lead welcome series"))
        .unwrap();
    let enrolled: u64 = enrolled_line
        .split_whitespace()
        .nth(5)
        .unwrap()
        .replace(',', "")
        .parse()
        .unwrap();
    assert!(enrolled >= 100, "{enrolled_line}");
}

#[test]
fn demo_host_is_clean_under_valgrind() {
    let memcheck = support::memcheck();
    let exe = build();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("demo.db");
    let out = Command::new(&memcheck[0])
        .args(&memcheck[1..])
        .arg(&exe)
        .arg(&db)
        .args(["120", "8"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", support::describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ERROR SUMMARY: 0 errors"), "{err}");
}

/// Counts that are not whole numbers in range are refused with the usage's
/// status and a reason, before the database is touched (a negative count
/// crashed the program).
#[test]
fn demo_host_refuses_counts_out_of_range() {
    let exe = build();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("demo.db");
    for args in [
        &["-5"][..],
        &["abc"],
        &["600", "-3"],
        &["600", "40x"],
        &["5"],
    ] {
        let out = Command::new(&exe).arg(&db).args(args).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            support::describe(&out)
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("must be a whole number"), "{args:?}: {err}");
        assert!(!db.exists(), "{args:?} created the database");
    }
}

/// Every message the host took has its answer in the figures: the
/// providers' receipts for the last simulated day's messages are pushed
/// before the screens are printed (they were left in the program's queue,
/// and the last day's sends read neither delivered nor bounced).
#[test]
fn demo_host_pushes_the_answers_to_the_last_days_messages() {
    let exe = build();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(&exe)
        .arg(dir.path().join("demo.db"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", support::describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    // "  Email      619        597     277       81        5       12      10          46  96.4%"
    let rows: Vec<Vec<u64>> = text
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with("Email ") || l.starts_with("SMS "))
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .take(8)
                .map(|n| n.replace(',', "").parse().unwrap())
                .collect()
        })
        .collect();
    assert_eq!(rows.len(), 4, "two channels of two automations in:\n{text}");
    for row in rows {
        let [
            sent,
            delivered,
            _opened,
            _clicked,
            _replied,
            bounced,
            failed,
            _suppressed,
        ] = row[..]
        else {
            panic!("{row:?}")
        };
        assert!(sent > 0, "{row:?}");
        assert_eq!(
            delivered + bounced + failed,
            sent,
            "sent, delivered, opened, clicked, replied, bounced, failed, suppressed: {row:?}"
        );
    }
}

/// On a database it already filled, the demo stops before it opens it: it
/// would push its whole history again (it stopped after 30 days of
/// events, at "automation welcome already exists").
#[test]
fn demo_host_refuses_a_database_that_exists() {
    let exe = build();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("demo.db");
    let first = Command::new(&exe)
        .arg(&db)
        .args(["100", "5"])
        .output()
        .unwrap();
    assert!(first.status.success(), "{}", support::describe(&first));
    let before = std::fs::read(&db).unwrap();
    let again = Command::new(&exe)
        .arg(&db)
        .args(["100", "5"])
        .output()
        .unwrap();
    assert_eq!(
        again.status.code(),
        Some(2),
        "{}",
        support::describe(&again)
    );
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("already exists"), "{err}");
    assert!(again.stdout.is_empty(), "{}", support::describe(&again));
    assert!(
        std::fs::read(&db).unwrap() == before,
        "the database changed"
    );
}
