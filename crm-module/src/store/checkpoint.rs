//! WAL checkpoints on their own thread.
//!
//! SQLite's default checkpoints run inside the commit that takes the
//! write-ahead log past 1,000 pages: that commit then also copies every
//! page of the log into the database file and syncs it. A batch of 1,000
//! activity events dirties about 3,000 pages spread over the contacts,
//! enrollments and their indexes, so with the default every batch paid a
//! checkpoint (a tenth of the worker's CPU time at 20,000 contacts, and the
//! database file's fsync on top).
//!
//! [`start`] takes that off the writer: the write connection's WAL hook
//! (which replaces SQLite's automatic checkpoint) wakes a thread with its own
//! connection once the log holds [`THRESHOLD_PAGES`], and that thread runs a
//! `PASSIVE` checkpoint (it never blocks the writer or readers). Only a
//! small commit that fills the log ([`SMALL_COMMIT_PAGES`]) still
//! checkpoints inline, where that costs a single push less than a
//! checkpoint competing with its next fsync. Durability
//! is unchanged: a commit is durable once its frames are synced in the log
//! (`synchronous=FULL`), before and after this change; a crash before a
//! checkpoint replays the log on the next open, as it always did.
//!
//! The log stays bounded: SQLite starts it over at the first write after a
//! checkpoint has copied every frame. When the writer commits faster than
//! the thread copies and the log reaches [`LIMIT_PAGES`], the committing
//! writer waits for one checkpoint that started after its commit, so that
//! its next transaction can start the log over (backpressure instead of an
//! unbounded file).
//!
//! The thread ends when the write connection (and with it the hook) is
//! dropped.

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, TrySendError, bounded};
use parking_lot::{Condvar, Mutex};
use rusqlite::Connection;
use rusqlite::wal::CheckpointMode;

use super::StorageConfig;
use crate::error::{Error, Result};

/// Log size (pages) at which the thread is woken: SQLite's own default.
pub const THRESHOLD_PAGES: i32 = 1_000;
/// Log size (pages) at which a committing writer waits for a checkpoint:
/// 32,000 pages of 4 KiB, so the log file stays under about 128 MiB (plus
/// the last transaction) during a burst of writes and is reused after it.
///
/// Batches of activity events dirty pages of random contacts and
/// enrollments (about 3,000 per batch of 1,000 events), faster than the
/// thread copies them into the database file; a larger log gives the
/// thread time to catch up and lets one checkpoint write a page that
/// several commits changed once. At 8,000 pages the worker waited for the
/// thread for 18 % of the benchmark's activity batches at 100,000
/// contacts, at 32,000 for 6 % (`crm-module/examples/BENCHMARK.md`).
pub const LIMIT_PAGES: i32 = 32_000;
/// A commit that added fewer pages than this (a single push, a small group)
/// and took the log past [`THRESHOLD_PAGES`] checkpoints inline, as SQLite
/// does: such a writer waits on the disk rather than the CPU, so a
/// checkpoint beside its next commit gains nothing, and its fsync delays
/// that commit's (single pushes ran 25 % slower with every checkpoint on
/// the thread).
pub const SMALL_COMMIT_PAGES: i32 = 200;

/// Checkpoints requested and finished, in request order.
#[derive(Default)]
struct Progress {
    /// Requests made so far (the last request's number).
    requested: u64,
    /// The request number the last finished checkpoint started after.
    finished: u64,
    /// The thread has ended (the writer's hook was dropped, or it panicked).
    stopped: bool,
}

struct Shared {
    progress: Mutex<Progress>,
    done: Condvar,
}

/// Starts the checkpoint thread for the database at `path` and hands the
/// write connection's checkpoints to it (see the module documentation).
///
/// # Errors
///
/// The thread's connection cannot be opened, or the thread cannot start.
pub fn start(
    path: &Path,
    writer: &mut Connection,
    storage: &StorageConfig,
) -> Result<JoinHandle<()>> {
    let conn = super::open_with(path, super::Access::Checkpoint, storage)?;
    start_with(
        conn,
        writer,
        THRESHOLD_PAGES,
        LIMIT_PAGES,
        SMALL_COMMIT_PAGES,
    )
}

/// [`start`] with other sizes (tests use small ones).
fn start_with(
    conn: Connection,
    writer: &mut Connection,
    threshold_pages: i32,
    limit_pages: i32,
    small_commit_pages: i32,
) -> Result<JoinHandle<()>> {
    let shared = Arc::new(Shared {
        progress: Mutex::new(Progress::default()),
        done: Condvar::new(),
    });
    // One pending wake is enough: a checkpoint copies every frame there is.
    let (wake, woken) = bounded::<()>(1);
    let thread_shared = shared.clone();
    let handle = std::thread::Builder::new()
        .name("crm-checkpoint".into())
        .spawn(move || run(conn, woken, thread_shared))
        .map_err(|e| Error::Internal(format!("cannot start the checkpoint thread: {e}")))?;
    // The log's size at the previous commit: what this commit added.
    let mut before = 0;
    writer.wal_hook(Some(move |wal: &mut rusqlite::hooks::Wal, pages: i32| {
        // A log that shrank was started over: all of it is this commit's.
        let added = if pages >= before {
            pages - before
        } else {
            pages
        };
        before = pages;
        if pages < threshold_pages {
            return Ok(());
        }
        if added < small_commit_pages && pages - added < threshold_pages {
            // A small commit filled the log: checkpoint inline, as SQLite does.
            let _ = wal.checkpoint_v2(CheckpointMode::PASSIVE);
            return Ok(());
        }
        let request = {
            let mut p = shared.progress.lock();
            p.requested += 1;
            p.requested
        };
        if let Err(TrySendError::Disconnected(())) = wake.try_send(()) {
            // No thread any more: checkpoint here, as SQLite would have.
            let _ = wal.checkpoint_v2(CheckpointMode::PASSIVE);
            return Ok(());
        }
        if pages >= limit_pages {
            let mut p = shared.progress.lock();
            while p.finished < request && !p.stopped {
                shared.done.wait(&mut p);
            }
        }
        Ok(())
    }))?;
    Ok(handle)
}

/// The thread: a `PASSIVE` checkpoint per wake, until the writer is gone.
fn run(conn: Connection, woken: Receiver<()>, shared: Arc<Shared>) {
    // However the thread ends, no writer is left waiting for it.
    let _stopped = StopOnDrop(&shared);
    while woken.recv().is_ok() {
        // Every request made before this point is covered by this checkpoint.
        let covers = shared.progress.lock().requested;
        if let Err(e) = conn.wal_checkpoint_v2(None::<&str>, CheckpointMode::PASSIVE) {
            tracing::warn!(error = %e, "WAL checkpoint failed; retried at the next commit");
        }
        let mut p = shared.progress.lock();
        p.finished = p.finished.max(covers);
        shared.done.notify_all();
    }
}

/// Marks the thread stopped and wakes waiting writers when dropped.
struct StopOnDrop<'a>(&'a Shared);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.progress.lock().stopped = true;
        self.0.done.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Access, open};

    fn file_pages(path: &Path) -> u64 {
        std::fs::metadata(path).map(|m| m.len() / 4096).unwrap_or(0)
    }

    fn write_pages(conn: &Connection, transactions: usize) {
        for i in 0..transactions {
            conn.execute_batch("BEGIN IMMEDIATE").unwrap();
            // About 10 pages per transaction: 10 rows of 3,000 bytes.
            for j in 0..10 {
                conn.execute(
                    "INSERT INTO blobs (v) VALUES (zeroblob(3000) || ?1)",
                    [format!("{i}-{j}")],
                )
                .unwrap();
            }
            conn.execute_batch("COMMIT").unwrap();
        }
    }

    /// A fresh database (its directory, path and write connection) with a
    /// table for [`write_pages`].
    fn blob_database() -> (tempfile::TempDir, std::path::PathBuf, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let writer = open(&path, Access::Write).unwrap();
        writer
            .execute_batch("CREATE TABLE blobs (id INTEGER PRIMARY KEY, v BLOB)")
            .unwrap();
        (dir, path, writer)
    }

    #[test]
    fn the_thread_copies_the_log_into_the_database_and_ends_with_the_writer() {
        let (_dir, path, mut writer) = blob_database();
        let handle = start_with(
            open(&path, Access::Checkpoint).unwrap(),
            &mut writer,
            50,
            100_000,
            0,
        )
        .unwrap();
        let before = file_pages(&path);
        write_pages(&writer, 30);
        // The thread copies in the background: wait for it (bounded).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while file_pages(&path) < before + 200 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(
            file_pages(&path) >= before + 200,
            "the database file holds the checkpointed pages: {} pages (was {before})",
            file_pages(&path)
        );
        drop(writer);
        handle.join().unwrap();
        let reader = open(&path, Access::Read).unwrap();
        let rows: i64 = reader
            .query_row("SELECT count(*) FROM blobs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 300);
    }

    /// Log pages (the file's size) after 200 commits of about 10 pages
    /// each, through a log emptied first, with these sizes.
    fn log_pages_after_200_commits(threshold: i32, limit: i32, small_commit: i32) -> u64 {
        let (dir, path, mut writer) = blob_database();
        // The schema's own pages out of the log first (its file then starts empty).
        writer
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .unwrap();
        let handle = start_with(
            open(&path, Access::Checkpoint).unwrap(),
            &mut writer,
            threshold,
            limit,
            small_commit,
        )
        .unwrap();
        write_pages(&writer, 200);
        let pages = file_pages(&dir.path().join("db.sqlite-wal"));
        drop(writer);
        handle.join().unwrap();
        pages
    }

    #[test]
    fn a_small_commit_that_fills_the_log_checkpoints_inline() {
        // Every commit counts as small and no limit applies: only inline
        // checkpoints can keep the log this short.
        let pages = log_pages_after_200_commits(30, 100_000, 1_000);
        assert!(
            pages <= 30 + 20,
            "small commits checkpoint as they fill the log: {pages} pages"
        );
    }

    #[test]
    fn a_writer_past_the_limit_waits_so_the_log_stays_bounded() {
        // 2,000 pages go through a log that restarts once checkpointed: the
        // file never holds much more than the limit and one transaction.
        let pages = log_pages_after_200_commits(20, 60, 0);
        assert!(
            pages <= 60 + 20,
            "the log stays near its limit: {pages} pages"
        );
    }
}
