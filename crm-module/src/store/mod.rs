//! The SQLite store: one database file at a path the host gives.
//!
//! WAL journal, foreign keys on, `synchronous=FULL` (a committed push survives
//! power loss, not only a process crash), writers use `BEGIN IMMEDIATE`.
//! The schema is versioned by [`migrations`] through `PRAGMA user_version`.
//! Each connection's page cache and memory-mapped reads are sized by
//! [`StorageConfig`], part of the host's open config.

pub mod checkpoint;
pub mod migrations;

use std::path::Path;
use std::time::Duration;

pub use rusqlite::Connection;
use rusqlite::config::DbConfig;
use rusqlite::{OpenFlags, OptionalExtension, params};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How much memory SQLite uses for the database's pages, per connection (the
/// module opens three: the worker's, the views' and the checkpoints'). Part
/// of the open config (`"storage"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// SQLite's page cache, in MiB per connection: anonymous memory, held
    /// while the module is open. 1 to 4096; default 32.
    pub cache_mib: u32,
    /// Memory-mapped reads, in MiB: the first `mmap_mib` MiB of the database
    /// file are read through a read-only mapping of the operating system's
    /// file cache instead of a `pread` and a copy per page (`PRAGMA
    /// mmap_size`). 0 to 2047 (SQLite's own limit); default 0 (off).
    ///
    /// Off by default: in the benchmark it sped batched ingestion up at
    /// 50,000 contacts and slowed it down at 100,000 (figures in
    /// `crm-module/examples/BENCHMARK.md`), and it has two costs. The mapped
    /// pages count in the process's resident size, once per connection
    /// (file cache the kernel can drop, but it shows); and an I/O error
    /// while reading a mapped page (a failing disk, a network file system
    /// going away) raises `SIGBUS` in the host process instead of returning
    /// an error. Writes never go through the mapping, so nothing committed
    /// is at risk either way.
    pub mmap_mib: u32,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            cache_mib: 32,
            mmap_mib: 0,
        }
    }
}

/// SQLite's build limit on the mapping (`SQLITE_MAX_MMAP_SIZE`,
/// 0x7fff0000 bytes), in whole MiB: a larger `PRAGMA mmap_size` is cut to it.
const MMAP_MIB_MAX: u32 = 2047;

impl StorageConfig {
    /// Checks the bounds; the error names the field.
    pub fn validate(&self) -> Result<()> {
        if !(1..=4096).contains(&self.cache_mib) {
            return Err(Error::invalid(format!(
                "storage.cache_mib must be 1 to 4096 (got {})",
                self.cache_mib
            )));
        }
        if self.mmap_mib > MMAP_MIB_MAX {
            return Err(Error::invalid(format!(
                "storage.mmap_mib must be 0 to {MMAP_MIB_MAX} (got {})",
                self.mmap_mib
            )));
        }
        Ok(())
    }
}

/// How a connection will be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The worker's read-write connection.
    Write,
    /// A read-only connection for views.
    Read,
    /// The checkpoint thread's connection ([`checkpoint`]): read-write, no
    /// migrations.
    Checkpoint,
}

/// Opens a connection with the module's pragmas and the default
/// [`StorageConfig`]. The writer also runs migrations.
pub fn open(path: &Path, access: Access) -> Result<Connection> {
    open_with(path, access, &StorageConfig::default())
}

/// [`open`] with the page cache and memory mapping of `storage`.
pub fn open_with(path: &Path, access: Access, storage: &StorageConfig) -> Result<Connection> {
    let conn = connect(path, access)?;
    configure(conn, access, storage)
}

/// The writer's connection of a module's handle, and the lock that makes
/// it the only handle on the database file: see [`HandleLock`]. The lock is
/// taken before the schema is migrated.
pub fn open_writer(path: &Path, storage: &StorageConfig) -> Result<(Connection, HandleLock)> {
    let conn = connect(path, Access::Write)?;
    // SQLite opens a file it may not write read-only, silently: every
    // write would then fail, and on the system clock scheduled work retry.
    if conn.is_readonly(rusqlite::MAIN_DB)? {
        return Err(Error::Storage(
            "cannot open the database for writing: the file (or its directory) is read-only".into(),
        ));
    }
    let lock = HandleLock::acquire(&conn)?;
    Ok((configure(conn, Access::Write, storage)?, lock))
}

/// An exclusive lock on `<database file>-lock` (beside the database, as
/// SQLite's `-wal` and `-shm`), held by a module's handle while it is open.
/// A second handle on the same file, in this process or another, would run
/// a second worker and dispatcher over the same outbox and schedule (every
/// effect offered twice, date triggers evaluated twice), so opening one is
/// refused. The operating system releases the lock when the handle is
/// closed or its process dies (`flock` on Unix, `LockFileEx` on Windows).
/// The file stays after an open that succeeded; an open that fails removes
/// the lock file it made, so a failed open leaves nothing beside the
/// database. On a file system without locks, the handle opens unlocked.
///
/// The lock is only as good as the file: like SQLite's `-wal` and `-shm`,
/// the `-lock` file must not be deleted while a handle is open (a second
/// handle would make a new one and lock that).
#[derive(Debug)]
pub struct HandleLock {
    file: Option<std::fs::File>,
    /// The lock file, when this handle made it and its open has not yet
    /// succeeded ([`HandleLock::keep`]): dropping the lock removes it.
    made: Option<std::path::PathBuf>,
}

impl HandleLock {
    /// How many times a lock file replaced while it was being locked is
    /// tried again (another failed open removing the file it made).
    const ATTEMPTS: usize = 8;

    fn acquire(conn: &Connection) -> Result<HandleLock> {
        // SQLite's own name for the file (a `file:` URI resolved, the path
        // made absolute); none for an in-memory or temporary database.
        let Some(db) = conn.path().filter(|p| !p.is_empty()) else {
            return Ok(HandleLock {
                file: None,
                made: None,
            });
        };
        let path = std::path::PathBuf::from(format!("{db}-lock"));
        for _ in 0..Self::ATTEMPTS {
            if let Some(lock) = Self::try_acquire(&path)? {
                return Ok(lock);
            }
        }
        Err(Error::Storage(
            "cannot lock the database's lock file: it was replaced while it was being locked"
                .into(),
        ))
    }

    /// One attempt: `None` when the file locked is no longer the one at
    /// `path` (removed by a failed open in another process), so that the
    /// lock held would guard nothing.
    fn try_acquire(path: &std::path::Path) -> Result<Option<HandleLock>> {
        let cannot_open = |e: std::io::Error| {
            Error::Storage(format!("cannot open the database's lock file: {e}"))
        };
        let (file, made) = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
        {
            Ok(file) => (file, true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => (
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(path)
                    .map_err(cannot_open)?,
                false,
            ),
            Err(e) => return Err(cannot_open(e)),
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::Conflict(
                    "the database is already open in another handle (in this process or another): \
                     one handle per database file; nothing was opened"
                        .into(),
                ));
            }
            Err(std::fs::TryLockError::Error(e)) if e.kind() == std::io::ErrorKind::Unsupported => {
                return Ok(Some(HandleLock {
                    file: None,
                    made: made.then(|| path.to_path_buf()),
                }));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Error::Storage(format!(
                    "cannot lock the database's lock file: {e}"
                )));
            }
        }
        if !same_file(&file, path) {
            return Ok(None);
        }
        Ok(Some(HandleLock {
            file: Some(file),
            made: made.then(|| path.to_path_buf()),
        }))
    }

    /// The open succeeded: the lock file stays when the handle closes.
    pub fn keep(&mut self) {
        self.made = None;
    }
}

impl Drop for HandleLock {
    fn drop(&mut self) {
        // Removed while still locked: an open racing with this one either
        // fails to lock it or finds it replaced (`same_file`) and tries again.
        if let Some(path) = self.made.take() {
            let _ = std::fs::remove_file(path);
        }
        self.file.take();
    }
}

/// Whether `path` still names the open `file` (Unix: same device and
/// inode). Elsewhere an open file cannot be removed, so it always does.
fn same_file(file: &std::fs::File, path: &std::path::Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (file.metadata(), std::fs::metadata(path)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (file, path);
        true
    }
}

fn connect(path: &Path, access: Access) -> Result<Connection> {
    let flags = match access {
        Access::Write => OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
        Access::Checkpoint => OpenFlags::SQLITE_OPEN_READ_WRITE,
        Access::Read => OpenFlags::SQLITE_OPEN_READ_ONLY,
    } | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    Connection::open_with_flags(path, flags)
        .map_err(|e| Error::Storage(format!("cannot open the database: {e}")))
}

/// Bytes the write-ahead log's file is cut back to when the log starts
/// over (SQLite's `journal_size_limit`): 64 MiB.
pub const WAL_SIZE_LIMIT: i64 = 64 << 20;

/// The module's pragmas on a new connection; the writer also migrates.
fn configure(conn: Connection, access: Access, storage: &StorageConfig) -> Result<Connection> {
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.set_prepared_statement_cache_capacity(256);
    // The query planner stability guarantee: a plan never depends on the
    // values bound. Without it, this build of SQLite (STAT4) re-prepares a
    // statement at every new binding of a parameter compared with a
    // column that a partial index's WHERE names (`kind = ?1` against
    // `outbox_handed_over`'s `kind = 'message'`), on the hot paths of
    // hand-over and If/then engagement. Partial indexes are used through
    // the literal terms the statements repeat.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    if access == Access::Write {
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Storage(format!(
                "the database must support WAL journaling (got {mode})"
            )));
        }
    }
    conn.execute_batch(&format!(
        "PRAGMA foreign_keys=ON;
         PRAGMA synchronous=FULL;
         PRAGMA temp_store=MEMORY;
         PRAGMA cache_size=-{cache_kib};
         PRAGMA mmap_size={mmap_bytes};",
        cache_kib = u64::from(storage.cache_mib) * 1024,
        mmap_bytes = u64::from(storage.mmap_mib) << 20,
    ))?;
    if access == Access::Write {
        // The log is emptied by checkpoints but its file keeps the size of
        // the largest burst until the module closes: once the log starts
        // over, a file past this is cut back to it.
        conn.execute_batch(&format!("PRAGMA journal_size_limit={WAL_SIZE_LIMIT}"))?;
        migrations::migrate(&conn)?;
    }
    Ok(conn)
}

/// The last instant the database recorded: the latest time among the
/// event log's newest rows (it is appended to with the module's clock in
/// every transaction that changes anything; a row logged for an earlier
/// instant, as an enrollment dated from its trigger, is outweighed by its
/// neighbours). `None` for a database with no log yet.
pub fn last_recorded_at(conn: &Connection) -> Result<Option<i64>> {
    Ok(conn
        .prepare_cached("SELECT MAX(at) FROM (SELECT at FROM events ORDER BY id DESC LIMIT 64)")?
        .query_row([], |r| r.get(0))?)
}

/// Reads a setting's JSON value.
pub fn get_setting(conn: &Connection, key: &str) -> Result<Option<serde_json::Value>> {
    let text: Option<String> = conn
        .prepare_cached("SELECT value FROM settings WHERE key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()?;
    match text {
        Some(t) => serde_json::from_str(&t)
            .map(Some)
            .map_err(|_| Error::Internal(format!("setting {key} is not valid JSON"))),
        None => Ok(None),
    }
}

/// Writes a setting's JSON value.
pub fn put_setting(conn: &Connection, key: &str, value: &serde_json::Value) -> Result<()> {
    conn.execute(
        "INSERT INTO settings(key, value) VALUES (?1, ?2)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![key, value.to_string()],
    )?;
    Ok(())
}

/// The plan SQLite picks for `sql` with `params` bound (`EXPLAIN QUERY
/// PLAN`, one detail line per row), for tests that pin a query to its index.
#[cfg(test)]
pub(crate) fn query_plan(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Vec<String> {
    conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
        .unwrap()
        .query_map(params, |r| r.get::<_, String>(3))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pragma(conn: &Connection, name: &str) -> i64 {
        conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
            .unwrap()
    }

    /// A database file the process may not write is refused at open (SQLite
    /// would open it read-only), and no lock file is made beside it.
    #[test]
    fn a_database_file_that_cannot_be_written_is_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        drop(open(&path, Access::Write).unwrap());
        let _ = std::fs::remove_file(dir.path().join("s.db-lock"));
        let mut perms = std::fs::metadata(&path).unwrap().permissions();
        perms.set_readonly(true);
        std::fs::set_permissions(&path, perms).unwrap();
        // Root writes a read-only file: make it immutable too, where the
        // file system can.
        let immutable = std::process::Command::new("chattr")
            .arg("+i")
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        if std::fs::OpenOptions::new().write(true).open(&path).is_ok() {
            eprintln!("skipped: this process can write the file whatever its mode");
            return;
        }
        let refused = open_writer(&path, &StorageConfig::default());
        if immutable {
            let _ = std::process::Command::new("chattr")
                .arg("-i")
                .arg(&path)
                .status();
        }
        match refused {
            Err(Error::Storage(message)) => assert!(message.contains("read-only"), "{message}"),
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("a file that cannot be written opened for writing"),
        }
        assert!(!dir.path().join("s.db-lock").exists());
    }

    /// After a burst, the log's file is cut back to [`WAL_SIZE_LIMIT`] when
    /// the log starts over, not kept at the burst's size until close.
    #[test]
    fn the_logs_file_is_cut_back_after_a_burst() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let writer = open(&path, Access::Write).unwrap();
        writer.execute_batch("CREATE TABLE blobs (v BLOB)").unwrap();
        let wal = || {
            std::fs::metadata(dir.path().join("w.db-wal"))
                .unwrap()
                .len()
        };
        // One transaction of 72 MiB: the log grows past the limit.
        writer.execute_batch("BEGIN").unwrap();
        for _ in 0..72 {
            writer
                .execute("INSERT INTO blobs (v) VALUES (zeroblob(1048576))", [])
                .unwrap();
        }
        writer.execute_batch("COMMIT").unwrap();
        assert!(wal() > WAL_SIZE_LIMIT as u64, "{}", wal());
        // Copied into the database; the next write starts the log over.
        writer
            .execute_batch("PRAGMA wal_checkpoint(PASSIVE)")
            .unwrap();
        writer
            .execute("INSERT INTO blobs (v) VALUES (zeroblob(10))", [])
            .unwrap();
        assert!(wal() <= WAL_SIZE_LIMIT as u64, "{}", wal());
    }

    #[test]
    fn every_access_gets_the_configured_cache_and_mapping() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let storage = StorageConfig {
            cache_mib: 8,
            mmap_mib: 3,
        };
        let writer = open_with(&path, Access::Write, &storage).unwrap();
        for access in [Access::Write, Access::Read, Access::Checkpoint] {
            let conn = open_with(&path, access, &storage).unwrap();
            assert_eq!(pragma(&conn, "cache_size"), -8 * 1024, "{access:?}");
            assert_eq!(pragma(&conn, "mmap_size"), 3 << 20, "{access:?}");
        }
        assert_eq!(pragma(&writer, "journal_size_limit"), WAL_SIZE_LIMIT);
        let defaults = open(&path, Access::Read).unwrap();
        assert_eq!(pragma(&defaults, "mmap_size"), 0);
        assert_eq!(pragma(&defaults, "cache_size"), -32 * 1024);
        // The largest accepted size is not cut by SQLite.
        let largest = StorageConfig {
            mmap_mib: MMAP_MIB_MAX,
            ..StorageConfig::default()
        };
        largest.validate().unwrap();
        let conn = open_with(&path, Access::Read, &largest).unwrap();
        assert_eq!(pragma(&conn, "mmap_size"), i64::from(MMAP_MIB_MAX) << 20);
        drop(writer);
    }

    /// Statements that bind a column a partial index's WHERE names are
    /// prepared once, whatever the bindings (see `configure`), and still
    /// search their index.
    #[test]
    fn a_new_binding_never_re_prepares_a_statement() {
        use rusqlite::StatementStatus;
        let dir = tempfile::tempdir().unwrap();
        let conn = open(&dir.path().join("s.db"), Access::Write).unwrap();
        let cases: [(&str, &[&[&dyn rusqlite::ToSql]]); 4] = [
            (
                crate::outbox::DUE_SQL,
                &[
                    &[&"message", &"email", &0, &10],
                    &[&"task", &rusqlite::types::Null, &0, &10],
                ],
            ),
            (
                crate::outbox::DUE_IDS_SQL,
                &[
                    &[&"message", &"sms", &0, &10],
                    &[&"property", &rusqlite::types::Null, &0, &10],
                ],
            ),
            (
                crate::outbox::NEXT_DUE_SQL,
                &[
                    &[&"message", &"email", &0],
                    &[&"task", &rusqlite::types::Null, &0],
                ],
            ),
            (
                crate::core::conditions::STEP_ENGAGEMENT_SQL,
                &[
                    &[&1, &"s1", &"message_opened"],
                    &[&1, &"s1", &"message_clicked"],
                ],
            ),
        ];
        for (sql, bindings) in cases {
            let plan = query_plan(&conn, sql, bindings[0]);
            assert!(
                plan.iter()
                    .any(|step| step.contains("USING") && step.contains("INDEX")),
                "{sql}: {plan:?}"
            );
            let mut stmt = conn.prepare(sql).unwrap();
            for b in bindings.iter().chain(bindings.iter()) {
                stmt.query(*b).unwrap().next().unwrap();
            }
            assert_eq!(stmt.get_status(StatementStatus::RePrepare), 0, "{sql}");
        }
    }
}
