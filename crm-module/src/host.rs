//! What the module asks the host to do, and the dispatcher thread that asks.
//!
//! The worker hands due outbox rows to the dispatcher over a channel; the
//! dispatcher calls the host and sends the answer back to the worker, which
//! records it. Host callbacks therefore run on the dispatcher thread, never on
//! the caller's thread and never while the database is locked, and they may
//! call back into the module (push an event, run a command) without deadlock.

use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use parking_lot::RwLock;

use crate::outbox::{DueEffect, EffectKind, HostAnswer};
use crate::worker::Request;

/// Severity of a log line handed to the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(i32)]
pub enum LogLevel {
    /// Something failed.
    Error = 1,
    /// Something unexpected that the module handled.
    Warn = 2,
    /// Lifecycle facts.
    Info = 3,
    /// Detail for debugging.
    Debug = 4,
}

/// One effect handed to the host.
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    /// Stable idempotency key: the same effect always comes with the same key.
    pub key: &'a str,
    /// What it is.
    pub kind: EffectKind,
    /// The effect as JSON (it repeats `key` and `kind`).
    pub payload: &'a str,
}

/// The host's side of the module. Implementations must be thread-safe: calls
/// come from the module's dispatcher thread.
pub trait Host: Send + Sync {
    /// Delivers one effect. Return [`HostAnswer::Accepted`] once the host has
    /// taken responsibility for it, [`HostAnswer::RetryLater`] to be asked again
    /// later (with backoff, same key), [`HostAnswer::Failed`] to give up. The
    /// string is an optional reason (ids only, no patient data).
    fn deliver(&self, delivery: Delivery<'_>) -> (HostAnswer, Option<String>);

    /// A log line from the module (ids only, never patient data).
    fn log(&self, _level: LogLevel, _message: &str) {}
}

/// The host slot shared by the worker, the dispatcher and the API.
pub type HostSlot = Arc<RwLock<Option<Arc<dyn Host>>>>;

/// Runs the dispatcher loop until the job channel closes.
pub fn run_dispatcher(jobs: Receiver<DueEffect>, host: HostSlot, worker: Sender<Request>) {
    for job in jobs {
        let current = host.read().clone();
        let (answer, error) = match current {
            None => (
                HostAnswer::RetryLater,
                Some("no host callbacks registered".to_string()),
            ),
            Some(h) => {
                let delivery = Delivery {
                    key: &job.key,
                    kind: job.kind,
                    payload: &job.payload,
                };
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h.deliver(delivery)))
                {
                    Ok(r) => r,
                    Err(_) => (
                        HostAnswer::RetryLater,
                        Some("host callback panicked".to_string()),
                    ),
                }
            }
        };
        if worker
            .send(Request::Answer {
                outbox_id: job.id,
                answer,
                error,
            })
            .is_err()
        {
            break;
        }
    }
}

/// Sends a log line to the host (if any) and to `tracing`.
pub fn log(host: &HostSlot, level: LogLevel, message: &str) {
    match level {
        LogLevel::Error => tracing::error!("{message}"),
        LogLevel::Warn => tracing::warn!("{message}"),
        LogLevel::Info => tracing::info!("{message}"),
        LogLevel::Debug => tracing::debug!("{message}"),
    }
    if let Some(h) = host.read().clone() {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h.log(level, message)));
    }
}
