//! The worker: the one thread that writes the database.
//!
//! Requests arrive over a crossbeam channel. The worker drains what is
//! queued, applies it all in one `BEGIN IMMEDIATE` transaction (each request
//! in its own savepoint, so a bad one changes nothing and the others still
//! land; a round's only write request needs none), commits once — group commit: one fsync for many pushes — and only
//! then replies. After each round it runs the scheduled work that is due
//! (enrollment wake-ups, date-based trigger evaluations) and hands due
//! outbox rows to the dispatcher.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::RwLock;
use rusqlite::{Connection, params};
use serde_json::{Value, json};

use crate::catalog::Catalog;
use crate::clock::{Clock, Millis};
use crate::commands::{self, Command};
use crate::core::ingest::{self, Outcome};
use crate::core::log::Entry as Log;
use crate::core::{Ctx, due, enrollment};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::host::{HostSlot, LogLevel};
use crate::outbox::{self, DueEffect, EffectKind, HostAnswer};
use crate::settings::{Resolved, Settings};

/// Requests to the worker.
pub enum Request {
    /// Ingest events (all or nothing).
    Push {
        /// Validated events.
        events: Vec<Event>,
        /// Where the outcome goes, after commit.
        reply: Sender<Result<Vec<Outcome>>>,
    },
    /// Run a command.
    Command {
        /// The command.
        command: Command,
        /// Where the result goes, after commit.
        reply: Sender<Result<Value>>,
    },
    /// A tracking hit from the host's web tier.
    Hit {
        /// The request.
        hit: crate::core::hits::Hit,
        /// What to answer, after commit.
        reply: Sender<Result<Value>>,
    },
    /// Advance the manual clock by `by` milliseconds from wherever it stands
    /// when the worker takes the request (so concurrent advances add up),
    /// running everything due on the way.
    AdvanceBy {
        /// Milliseconds to add.
        by: Millis,
        /// Done.
        reply: Sender<Result<()>>,
    },
    /// The host answered a delivery.
    Answer {
        /// Outbox row.
        outbox_id: i64,
        /// The answer.
        answer: HostAnswer,
        /// Optional reason.
        error: Option<String>,
        /// Who answered: the host, the built-in SMTP relay, or a sender
        /// adapter plugin (with its call's figures).
        by: AnsweredBy,
    },
    /// A custom step's plugin call finished.
    PluginStep {
        /// Outbox row (kind `plugin_step`).
        outbox_id: i64,
        /// The result and figures.
        report: crate::plugins::Report<crate::plugins::StepResult>,
    },
    /// Lines for the host's `log` callback from a thread of the host's
    /// (a plugin describing itself during `plugin.install`): the callback
    /// runs on the module's threads only.
    Log {
        /// Level and text of each line.
        lines: Vec<(LogLevel, String)>,
    },
    /// Host callbacks were set or cleared.
    HostChanged,
    /// Reply `true` once nothing is queued, due or in flight, or `false`
    /// at the first look after `deadline` that finds work left (a wait of
    /// zero asks "idle now?" and gets its answer at once).
    WaitIdle {
        /// Signalled with the answer.
        reply: Sender<bool>,
        /// When the caller stops waiting.
        deadline: std::time::Instant,
    },
    /// Stop after finishing the current round.
    Shutdown,
}

/// Who gave the answer to a delivery.
#[derive(Debug)]
pub enum AnsweredBy {
    /// The host's `deliver` callback.
    Host,
    /// The built-in SMTP sender: its acceptance is the relay's `250`, the
    /// only delivery signal mail the module sends itself ever gets.
    Relay,
    /// A sender adapter plugin, with the call's figures.
    Plugin(crate::plugins::registry::CallFigures),
}

/// A reply to send once the transaction's fate is known.
type Reply = Box<dyn FnOnce(Option<&Error>)>;

/// How many rows each lane may hand over now, by lane name (a channel, or
/// a kind for a lane without one).
type Rooms = Vec<(&'static str, usize)>;

/// Most requests folded into one transaction.
const MAX_GROUP: usize = 512;
/// Most scheduled items handled per transaction.
const DUE_CHUNK: usize = 500;
/// Most effects in flight at the dispatcher.
const MAX_IN_FLIGHT: usize = 256;
/// Most messages of one channel in flight: a sender that answers slowly (a
/// relay waiting out its timeouts) leaves room for the other effects.
const MAX_IN_FLIGHT_PER_CHANNEL: usize = MAX_IN_FLIGHT / 2;
/// Most custom steps in flight: a few queued per plugin-pool thread (at
/// most 4). A backlog of slow calls then holds only these slots, and the
/// host's deliveries falling due meanwhile go past it.
const MAX_PLUGIN_STEPS_IN_FLIGHT: usize = 16;

/// How long a row whose answer could not be recorded waits before it is
/// offered again (ms).
const ANSWER_RETRY_MS: Millis = 60_000;
/// Manual clock: scheduled items due within this much simulated time of the
/// first one run together before what they queued is handed over (see
/// [`Worker::advance`]).
const HANDOVER_GRAIN: Millis = crate::clock::MINUTE;
/// Manual clock: how long (real time) an advance waits for an answer from
/// the host, a sender or a plugin before it goes on without waiting.
const SETTLE_PATIENCE: Duration = Duration::from_secs(10);

/// A clock advance asked for: by how much, and where its result goes.
type Advance = (Millis, Sender<Result<()>>);

/// What the worker keeps of a row in flight.
#[derive(Debug)]
struct Flying {
    /// Its kind.
    kind: EffectKind,
    /// A message's channel: its share of the in-flight room.
    channel: Option<String>,
    /// Its contact: the marks of [`Rescreen`](crate::messaging::handover::Rescreen)
    /// it needs.
    contact: Option<String>,
    /// A message outside the sending limits: it takes none of the budget.
    exempt: bool,
    /// The row's answers before this hand-over ([`DueEffect::attempts`]).
    attempts: i64,
}

impl crate::core::InFlight for std::collections::HashMap<i64, Flying> {
    fn answers_when_handed(&self, id: i64) -> Option<i64> {
        self.get(&id).map(|f| f.attempts)
    }
}

/// The worker's state.
pub struct Worker {
    conn: Connection,
    clock: Arc<Clock>,
    catalog: Catalog,
    /// The settings as the round's transaction has them: a settings update
    /// shows here at once, for the round's later requests.
    settings: Resolved,
    /// The settings the other threads read (the dispatcher, views): set
    /// from [`Worker::settings`] only once they are committed.
    published: Arc<RwLock<Resolved>>,
    install_id: String,
    host: HostSlot,
    plugins: Arc<crate::plugins::PluginHost>,
    jobs: Sender<DueEffect>,
    in_flight: HashSet<i64>,
    /// The channel and contact of each row in [`Worker::in_flight`].
    flying: std::collections::HashMap<i64, Flying>,
    /// Rows in flight that a clock advance stopped waiting for (no answer
    /// within [`SETTLE_PATIENCE`]): while one is still unanswered, advances
    /// do not wait for answers (see [`Worker::settle`]).
    stalled: HashSet<i64>,
    /// Rows handed over during the current [`Worker::settle`]: not handed
    /// over again in it (a row whose answer could not be recorded stays due).
    settled: HashSet<i64>,
    /// Rows whose answers were lost with a round that did not commit (a
    /// full disk, an I/O error), with the module time until which they are
    /// not handed over again: the row stays due in the database, and
    /// without this it went back to its taker at once, in a loop, for as
    /// long as nothing could commit.
    cooling: std::collections::HashMap<i64, Millis>,
    /// After scheduled work failed on the system clock: the module time
    /// before which it is not tried again, and how many times in a row it
    /// failed (the pause doubles, up to a minute).
    due_backoff: Option<(Millis, u32)>,
    idle_waiters: Vec<(Sender<bool>, std::time::Instant)>,
    /// The current round holds one write request only: it runs without a
    /// savepoint (see [`Worker::in_savepoint`]).
    lone_write: bool,
    /// SQLite's count of rows this connection has inserted, updated or
    /// deleted since the worker was made, published after every round (see
    /// [`Worker::rows_written`]).
    rows_written: Arc<AtomicU64>,
    /// Contacts whose rows must be screened again before they leave
    /// (shared with the dispatcher).
    rescreen: Arc<crate::messaging::handover::Rescreen>,
    /// The checkpoint thread ([`crate::store::checkpoint`]), stopped and
    /// joined before the final fold of the log at close.
    checkpointer: Option<std::thread::JoinHandle<()>>,
    /// The connection's count when the worker was made (the migrations and
    /// the open's own writes).
    rows_before: u64,
    /// Set when SQLite rolled back the round's whole transaction during a
    /// request (a full disk, an I/O error): the round's other requests are
    /// not run, nothing is committed, and every request of the round is
    /// answered with this error (see [`Worker::in_savepoint`]).
    lost: Option<Error>,
    /// A [`Request::Shutdown`] arrived: nothing more is handed over, an
    /// advance stops waiting for answers, and the loop ends after this turn.
    stopping: bool,
    /// Tests: points at which the worker panics, once each (see
    /// [`Worker::inject`]).
    #[cfg(test)]
    faults: Vec<&'static str>,
    /// Tests: the request (counted from 0 in a round's savepoints) during
    /// which SQLite rolls back the whole transaction, as a full disk would.
    #[cfg(test)]
    abort_request: Option<usize>,
}

impl Worker {
    /// Creates the worker around the write connection.
    pub fn new(
        conn: Connection,
        clock: Arc<Clock>,
        settings: Arc<RwLock<Resolved>>,
        install_id: String,
        host: HostSlot,
        plugins: Arc<crate::plugins::PluginHost>,
        jobs: Sender<DueEffect>,
    ) -> Result<Worker> {
        let catalog = Catalog::load(&conn)?;
        let conn_changes = conn.total_changes();
        let own_settings = settings.read().clone();
        Ok(Worker {
            conn,
            clock,
            catalog,
            settings: own_settings,
            published: settings,
            install_id,
            host,
            plugins,
            jobs,
            in_flight: HashSet::new(),
            flying: std::collections::HashMap::new(),
            stalled: HashSet::new(),
            settled: HashSet::new(),
            cooling: std::collections::HashMap::new(),
            due_backoff: None,
            idle_waiters: Vec::new(),
            lone_write: false,
            rows_written: Arc::new(AtomicU64::new(0)),
            rescreen: Arc::default(),
            checkpointer: None,
            rows_before: conn_changes,
            lost: None,
            stopping: false,
            #[cfg(test)]
            faults: Vec::new(),
            #[cfg(test)]
            abort_request: None,
        })
    }

    /// The count the worker publishes after every round, before it answers
    /// the round's requests: the rows its connection has inserted, updated
    /// or deleted since the worker was made, as SQLite counts them
    /// (`sqlite3_total_changes64`: rows changed by statements, including
    /// those of a refused request that were rolled back; not the rows a
    /// conflict clause skipped).
    pub fn rows_written(&self) -> Arc<AtomicU64> {
        self.rows_written.clone()
    }

    /// The marks the dispatcher consults before each hand-over (see
    /// [`crate::messaging::handover::Rescreen`]).
    pub fn rescreen(&self) -> Arc<crate::messaging::handover::Rescreen> {
        self.rescreen.clone()
    }

    /// Hands the worker the checkpoint thread its connection's log hook
    /// wakes: at close the worker stops it first, so that its own
    /// connection closes last and removes the log.
    pub fn set_checkpointer(&mut self, thread: std::thread::JoinHandle<()>) {
        self.checkpointer = Some(thread);
    }

    fn publish_rows_written(&self) {
        self.rows_written.store(
            self.conn.total_changes() - self.rows_before,
            Ordering::Release,
        );
    }

    /// Runs until [`Request::Shutdown`] or until every sender is gone.
    ///
    /// A panic anywhere in a turn of the loop (a defect: the requests'
    /// and scheduled items' own logic is contained closer, see
    /// `contained`) is caught here: the turn's open transaction is rolled
    /// back, the replies it had not sent are dropped (their callers see an
    /// error), it is logged, and the worker goes on with the next turn.
    pub fn run(mut self, rx: Receiver<Request>) {
        loop {
            let wait = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.wait_time()))
                .unwrap_or(Some(Duration::from_secs(1)));
            // Awake when a caller's wait for idleness ends, to tell them.
            let wait = match self.idle_waiters.iter().map(|(_, d)| *d).min() {
                Some(d) => {
                    let left = d.saturating_duration_since(std::time::Instant::now());
                    Some(wait.map_or(left, |w| w.min(left)))
                }
                None => wait,
            };
            let first = match wait {
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(d) => rx.recv_timeout(d),
            };
            let mut batch = Vec::new();
            match first {
                Ok(r) => batch.push(r),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.gather(&mut batch, &rx);
            // A panic was logged and rolled back; the replies it dropped
            // tell their callers.
            let _ = self.guarded("a turn of its loop", |w| {
                w.turn(batch, &rx);
                Ok(())
            });
            if self.stopping {
                break;
            }
        }
        // Wake anyone still waiting.
        self.idle_waiters.clear();
        self.record_last_answers(&rx);
        // The closed database is one file: the log folded into it and
        // emptied, so a host that copies or moves the file has everything
        // committed (SQLite's own fold at the last close is skipped while
        // another connection or a statement is still open). The checkpoint
        // thread's connection closes first (dropping the hook ends the
        // thread): this one, closing last, then removes the log and its
        // index. (Closing after the checkpoint thread had read nothing, a
        // race under load left an empty log beside the file.)
        let unhooked = self
            .conn
            .wal_hook(None::<fn(&mut rusqlite::hooks::Wal, i32) -> rusqlite::Result<()>>);
        if let (Ok(()), Some(thread)) = (unhooked, self.checkpointer.take()) {
            let _ = thread.join();
        }
        if let Err(e) = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
            self.log(
                LogLevel::Warn,
                &format!("folding the log into the database at close failed: {e}"),
            );
        }
    }

    /// On closing: waits for the answers to the rows in flight and records
    /// them. What the host, the SMTP relay or a plugin took is then never
    /// offered again after the next open (a relay cannot tell a second send
    /// of the same key from a new email). The dispatcher, the relay and the
    /// plugin pool start nothing once [`Rescreen::close`] is called and
    /// answer the rows not started "not handled" (they stay due), so this
    /// waits only for the calls under way: a host callback, a relay send
    /// (at most its timeout), a plugin call (at most its deadline). Other
    /// requests that arrive meanwhile are dropped: their callers see the
    /// module closed. It ends once no taker holds a row
    /// ([`Rescreen::nothing_under_way`]) and the answers they sent are
    /// recorded: the rows still in a queue are not sent, and stay due for
    /// the next open.
    ///
    /// [`Rescreen::close`]: crate::messaging::handover::Rescreen::close
    /// [`Rescreen::nothing_under_way`]: crate::messaging::handover::Rescreen::nothing_under_way
    fn record_last_answers(&mut self, rx: &Receiver<Request>) {
        self.rescreen.close();
        let record = |w: &mut Self, r: Request| {
            if matches!(r, Request::Answer { .. } | Request::PluginStep { .. }) {
                let _ = w.guarded("recording an answer at close", |w| {
                    w.round(vec![r]);
                    Ok(())
                });
            }
        };
        while !self.in_flight.is_empty() {
            if self.rescreen.nothing_under_way() {
                // Every answer owed is in the channel by now (the rows
                // still queued are answered unasked, never sent).
                while let Ok(r) = rx.try_recv() {
                    record(self, r);
                }
                break;
            }
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(r) => record(self, r),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
    }

    /// Adds what is queued on `rx` to `batch`, up to [`MAX_GROUP`] requests,
    /// and notes a shutdown among them.
    fn gather(&mut self, batch: &mut Vec<Request>, rx: &Receiver<Request>) {
        while batch.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        if !self.stopping && batch.iter().any(|r| matches!(r, Request::Shutdown)) {
            self.stopping = true;
            // Nothing more starts; the rows waiting for a taker go back.
            self.rescreen.close();
        }
    }

    /// One turn of the loop: the round of requests, the clock advances it
    /// asked for, work due by now, hand-overs, idle waiters.
    fn turn(&mut self, batch: Vec<Request>, rx: &Receiver<Request>) {
        let mut advances: std::collections::VecDeque<Advance> = self.round(batch).into();
        while let Some((by, reply)) = advances.pop_front() {
            let to = self.clock.now() + by;
            // A failed advance leaves the clock where the failure stopped it
            // (work due before that is committed), not at `to`.
            let r = self.guarded("scheduled work", |w| w.advance(to, rx, &mut advances));
            let _ = reply.send(r);
        }
        // Work due by now runs on either clock. On the manual one it can
        // fall due without an advance: an automation turned back on with
        // enrollments overdue, an edit that moved contacts off a removed
        // step, a window held open by a change of settings.
        let now = self.clock.now();
        let backing_off = self.due_backoff.is_some_and(|(until, _)| now < until);
        let due = !backing_off
            && (!self.clock.is_manual()
                || self.next_due().ok().flatten().is_some_and(|t| t <= now));
        if due {
            match self.guarded("scheduled work", |w| w.run_due(now)) {
                Ok(()) => self.due_backoff = None,
                Err(e) => {
                    self.log(LogLevel::Error, &format!("scheduled work failed: {e}"));
                    // Not again at once (a full disk fails every try): after
                    // a second, doubling to a minute while it keeps failing.
                    let failures = self.due_backoff.map_or(0, |(_, n)| n) + 1;
                    let pause = (1_000 << (failures - 1).min(6)).min(60_000);
                    self.due_backoff = Some((now + pause, failures));
                }
            }
        }
        self.dispatch();
        self.publish_rows_written();
        self.check_idle(rx);
    }

    /// Runs `f`; a panic in it becomes [`Error::Internal`] after
    /// [`Worker::recover`] (so that a clock advance is answered rather than
    /// dropped, and the loop goes on with its next turn).
    fn guarded<T>(&mut self, what: &str, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(self))) {
            Ok(r) => r,
            Err(_) => {
                self.recover(what);
                Err(Error::Internal(format!(
                    "a defect stopped the module's {what}; it was rolled back"
                )))
            }
        }
    }

    /// After a caught panic outside a request's savepoint: rolls back the
    /// transaction it left open (if any), reads the automations and
    /// settings as committed, and logs it (no panic message: it could
    /// quote data).
    fn recover(&mut self, what: &str) {
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        // The defect may be in the reload itself: it must not take the
        // worker down from here, outside the loop's guard.
        if contained(|| {
            self.reload();
            Ok(())
        })
        .is_err()
        {
            self.log(
                LogLevel::Error,
                "reading the automations and settings again failed after a defect",
            );
        }
        self.log(
            LogLevel::Error,
            &format!("a defect stopped the worker's {what}; rolled back, the worker carries on"),
        );
    }

    /// Tests: panics if `at` is one of the points a test asked for (once).
    #[cfg(test)]
    fn inject(&mut self, at: &str) {
        if self.injected(at) {
            panic!("a fault injected at {at}");
        }
    }

    /// Tests: whether `at` is one of the points a test asked to fail at
    /// (once).
    #[cfg(test)]
    fn injected(&mut self, at: &str) -> bool {
        let i = self.faults.iter().position(|f| *f == at);
        i.map(|i| self.faults.remove(i)).is_some()
    }

    #[cfg(not(test))]
    #[inline(always)]
    fn injected(&mut self, _at: &str) -> bool {
        false
    }

    #[cfg(not(test))]
    #[inline(always)]
    fn inject(&mut self, _at: &str) {}

    fn log(&self, level: LogLevel, msg: &str) {
        crate::host::log(&self.host, level, msg);
    }

    fn log_lines(&self, lines: &[(LogLevel, String)]) {
        for (level, line) in lines {
            self.log(*level, line);
        }
    }

    /// How long to sleep before scheduled work is due (system clock only).
    fn wait_time(&self) -> Option<Duration> {
        if self.clock.is_manual() {
            return None;
        }
        let now = self.clock.now();
        let due = match self.due_backoff {
            Some((until, _)) if now < until => Some(until),
            _ => self.next_due().ok().flatten(),
        };
        let next = [due, self.wake_for_hand_over(now)]
            .into_iter()
            .flatten()
            .min();
        let ms = next.map(|t| (t - now).clamp(0, 60_000)).unwrap_or(60_000);
        Some(Duration::from_millis(ms as u64))
    }

    /// When the system clock's loop wakes for a hand-over: `now` if a row
    /// some taker can take is due and not in flight, else the next row's
    /// due time (the manual clock's advance asks [`Worker::next_handover`],
    /// which also counts sending-limit slots). A row
    /// in flight is due as well, but its answer wakes the worker; counting
    /// it made the loop spin for as long as a delivery took. With the
    /// dispatcher full, only an answer can start one.
    fn wake_for_hand_over(&self, now: Millis) -> Option<Millis> {
        if self.stopping || self.in_flight.len() >= MAX_IN_FLIGHT {
            return None;
        }
        let held_back = self.held_back(now);
        let woken = self.with_takers(now, |takers, exempt| {
            if outbox::any_due(&self.conn, now, &held_back, takers)?
                || outbox::any_exempt_due(&self.conn, now, &held_back, takers, exempt)?
            {
                return Ok::<_, Error>(Some(now));
            }
            self.next_takeable(now, takers, exempt)
        });
        // Look again soon rather than spin on an error; a row cooling after
        // a lost answer is due again when its pause ends.
        match woken {
            Ok(next) => next.into_iter().chain(self.cooled_after(now)).min(),
            Err(_) => Some(now + 1_000),
        }
    }

    /// The earliest due time after `after` of an outbox row some taker can
    /// take now.
    fn next_outbox_due(&self, after: Millis) -> Option<Millis> {
        self.with_takers(self.clock.now(), |takers, _| {
            outbox::next_due(&self.conn, takers, after).ok().flatten()
        })
    }

    /// Calls `f` with who can take rows at `now` (the lanes over their
    /// sending limit or their in-flight share blocked) and the channels over
    /// their sending limit that may still send their messages outside the
    /// limits.
    fn with_takers<R>(&self, now: Millis, f: impl FnOnce(outbox::Takers<'_>, &[&str]) -> R) -> R {
        let (rooms, exempt) = self.rooms(now);
        let blocked = blocked_in(&rooms);
        let exempt: Vec<&str> = exempt.iter().map(|(c, _)| *c).collect();
        let (host, senders) = (self.host_kinds(), self.sender_channels());
        let takers = outbox::Takers {
            host: &host,
            sender_channels: &senders,
            blocked: &blocked,
        };
        f(takers, &exempt)
    }

    /// The earliest due time after `now` of a row some taker can take: in
    /// a lane open now, or, of a channel over its sending limit, a message
    /// outside the limits.
    fn next_takeable(
        &self,
        now: Millis,
        takers: outbox::Takers<'_>,
        exempt: &[&str],
    ) -> Result<Option<Millis>> {
        let next = outbox::next_due(&self.conn, takers, now)?;
        let outside = outbox::next_exempt_due(&self.conn, now, takers, exempt)?;
        Ok(next.into_iter().chain(outside).min())
    }

    /// Channels whose messages go to one of the module's own senders rather
    /// than the host: a sender adapter, or the SMTP relay for email.
    fn sender_channels(&self) -> Vec<&'static str> {
        let settings = &self.settings;
        let smtp = matches!(
            settings.doc.email_delivery,
            crate::settings::EmailDelivery::Smtp { .. }
        );
        ["email", "sms"]
            .into_iter()
            .filter(|c| settings.doc.adapter_for(c).is_some() || (smtp && *c == "email"))
            .collect()
    }

    /// The kinds of effect the registered host handles (none without a host).
    fn host_kinds(&self) -> Vec<EffectKind> {
        let host = self.host.read().clone();
        let Some(host) = host else {
            return Vec::new();
        };
        [EffectKind::Message, EffectKind::Property, EffectKind::Task]
            .into_iter()
            .filter(|k| {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| host.handles(*k)))
                    .unwrap_or(false)
            })
            .collect()
    }

    /// How many more messages each limited channel may hand over now.
    fn budgets(&self, now: Millis) -> std::collections::HashMap<&'static str, i64> {
        let mut flying: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
        for ch in (self.flying.values())
            .filter(|f| !f.exempt)
            .filter_map(|f| f.channel.as_ref())
        {
            *flying.entry(ch.clone()).or_default() += 1;
        }
        let limits = self.settings.doc.limits.clone();
        crate::messaging::limits::remaining(&self.conn, &limits, now, &flying).unwrap_or_default()
    }

    /// How many more rows each capped lane may hand over now: each message
    /// channel its sending budget and its share of the in-flight room
    /// ([`MAX_IN_FLIGHT_PER_CHANNEL`]); custom steps
    /// [`MAX_PLUGIN_STEPS_IN_FLIGHT`]. Keyed by channel, or by kind for a
    /// lane without one ([`outbox::Takers::blocked`]). Then the room of
    /// each message channel over its sending limit for its messages outside
    /// the limits ([`outbox::Effect::exempt_from_limits`]): its in-flight
    /// share.
    fn rooms(&self, now: Millis) -> (Rooms, Rooms) {
        let budgets = self.budgets(now);
        let flying = |lane: &str| {
            (self.flying.values())
                .filter(|f| f.channel.as_deref().unwrap_or(f.kind.as_str()) == lane)
                .count()
        };
        let plugin_steps = EffectKind::PluginStep.as_str();
        let mut exempt = Vec::new();
        let lanes = ["email", "sms"]
            .into_iter()
            .map(|c| {
                let share = MAX_IN_FLIGHT_PER_CHANNEL.saturating_sub(flying(c));
                let budget = budgets
                    .get(c)
                    .map_or(usize::MAX, |left| usize::try_from(*left).unwrap_or(0));
                if budget == 0 && share > 0 {
                    exempt.push((c, share));
                }
                (c, share.min(budget))
            })
            .chain([(
                plugin_steps,
                MAX_PLUGIN_STEPS_IN_FLIGHT.saturating_sub(flying(plugin_steps)),
            )])
            .collect();
        (lanes, exempt)
    }

    /// Applies a group of requests in one transaction; returns the clock advances (by how much) to run after it.
    fn round(&mut self, batch: Vec<Request>) -> Vec<Advance> {
        let mut advances = Vec::new();
        let mut replies: Vec<Reply> = Vec::new();
        if batch.is_empty() {
            return advances;
        }
        let begun = self.conn.execute_batch("BEGIN IMMEDIATE");
        if let Err(e) = begun {
            let err = Error::from(e);
            for r in batch {
                // The answer is lost with the round: the row stays due and
                // is handed over again under its key.
                match &r {
                    Request::Answer { outbox_id, .. } | Request::PluginStep { outbox_id, .. } => {
                        self.landed(*outbox_id);
                        self.cool(*outbox_id);
                    }
                    Request::Log { lines } => self.log_lines(lines),
                    _ => {}
                }
                reply_error(r, &err, &mut advances);
            }
            return advances;
        }
        let mut settings_changed = false;
        let mut plugins_changed = false;
        // The rows whose answers this round records.
        let mut answered: Vec<i64> = Vec::new();
        self.lone_write = batch
            .iter()
            .filter(|r| {
                matches!(
                    r,
                    Request::Push { .. }
                        | Request::Command { .. }
                        | Request::Hit { .. }
                        | Request::Answer { .. }
                        | Request::PluginStep { .. }
                )
            })
            .count()
            == 1;
        for req in batch {
            match req {
                Request::Push { events, reply } => {
                    let r = self.in_savepoint(|w| w.push(&events));
                    replies.push(Box::new(move |fail| {
                        let _ = reply.send(match fail {
                            Some(e) => Err(clone_err(e)),
                            None => r,
                        });
                    }));
                }
                Request::Command { command, reply } => {
                    let new_settings = matches!(command, Command::SettingsUpdate { .. });
                    settings_changed |= new_settings;
                    plugins_changed |= command.touches_plugins();
                    let r = self.in_savepoint(|w| w.command(command));
                    if new_settings && r.is_ok() {
                        // The round's later requests work with the new
                        // settings (a second update compares its SMTP
                        // password with this one's, a new automation takes
                        // its default window). A failed commit reloads the
                        // stored ones.
                        self.reload_settings();
                    }
                    replies.push(Box::new(move |fail| {
                        let _ = reply.send(match fail {
                            Some(e) => Err(clone_err(e)),
                            None => r,
                        });
                    }));
                }
                Request::Hit { hit, reply } => {
                    let r = self.in_savepoint(|w| w.hit(&hit));
                    replies.push(Box::new(move |fail| {
                        let _ = reply.send(match fail {
                            Some(e) => Err(clone_err(e)),
                            None => r,
                        });
                    }));
                }
                Request::Answer {
                    outbox_id,
                    answer,
                    error,
                    by,
                } => {
                    let handed = self.flying.get(&outbox_id).map(|f| f.attempts);
                    self.landed(outbox_id);
                    answered.push(outbox_id);
                    if answer == HostAnswer::NotHandled {
                        // Nobody was asked (the host changed since the row
                        // was handed over, or its contact changed since it
                        // was screened): the row waits as it was, its
                        // attempts untouched, and may be handed over again
                        // within the same clock advance.
                        self.settled.remove(&outbox_id);
                        continue;
                    }
                    if let Err(e) = self.in_savepoint(|w| {
                        if let AnsweredBy::Plugin(figures) = &by {
                            crate::plugins::registry::record_call(&w.conn, figures, w.clock.now())?;
                        }
                        w.record_answer(outbox_id, handed, answer, error.as_deref(), &by)
                    }) {
                        self.log(
                            LogLevel::Error,
                            &format!("recording the answer for outbox row {outbox_id} failed: {e}; offered again in a minute under the same key"),
                        );
                        self.defer(outbox_id);
                    }
                }
                Request::PluginStep { outbox_id, report } => {
                    self.landed(outbox_id);
                    answered.push(outbox_id);
                    if let Err(e) = self.in_savepoint(|w| w.plugin_step(outbox_id, report)) {
                        self.log(
                            LogLevel::Error,
                            &format!(
                                "recording the custom step of outbox row {outbox_id} failed: {e}; offered again in a minute under the same key"
                            ),
                        );
                        self.defer(outbox_id);
                    }
                }
                Request::AdvanceBy { by, reply } => advances.push((by, reply)),
                Request::WaitIdle { reply, deadline } => self.idle_waiters.push((reply, deadline)),
                Request::Log { lines } => self.log_lines(&lines),
                Request::HostChanged | Request::Shutdown => {}
            }
        }
        self.inject("commit");
        let committed = match self.lost.take() {
            // SQLite rolled the transaction back: there is nothing to commit,
            // and every request of the round is answered with the error.
            Some(e) => Err(e),
            None => self.conn.execute_batch("COMMIT").map_err(Error::from),
        };
        self.publish_rows_written();
        let failure = committed.err();
        if let Some(e) = &failure {
            if !self.conn.is_autocommit() {
                let _ = self.conn.execute_batch("ROLLBACK");
            }
            self.log(LogLevel::Error, &format!("commit failed: {e}"));
            self.reload();
            for id in answered {
                self.cool(id);
            }
        } else if settings_changed {
            self.reload();
        }
        if failure.is_none() && plugins_changed {
            self.reload_plugins();
        }
        for reply in replies {
            reply(failure.as_ref());
        }
        advances
    }

    /// A row whose answer was lost with its round: not handed over again
    /// for [`ANSWER_RETRY_MS`] (the same pause as a row deferred in the
    /// database, which could not be written either).
    fn cool(&mut self, outbox_id: i64) {
        let until = self.clock.now() + ANSWER_RETRY_MS;
        self.cooling.insert(outbox_id, until);
    }

    /// The rows not to hand over at `now`: those in flight, those handed
    /// over during the current [`Worker::settle`], and those cooling after
    /// a lost answer.
    fn held_back(&self, now: Millis) -> std::borrow::Cow<'_, HashSet<i64>> {
        let cooling = || self.cooling.iter().filter(move |(_, until)| **until > now);
        if self.settled.is_empty() && cooling().next().is_none() {
            return std::borrow::Cow::Borrowed(&self.in_flight);
        }
        std::borrow::Cow::Owned(
            self.in_flight
                .iter()
                .chain(&self.settled)
                .chain(cooling().map(|(id, _)| id))
                .copied()
                .collect(),
        )
    }

    /// When the first row cooling at `now` may be handed over again.
    fn cooled_after(&self, now: Millis) -> Option<Millis> {
        self.cooling.values().copied().filter(|t| *t > now).min()
    }

    /// A row handed over is back (answered, or its answer lost).
    fn landed(&mut self, outbox_id: i64) {
        self.in_flight.remove(&outbox_id);
        self.flying.remove(&outbox_id);
        self.stalled.remove(&outbox_id);
    }

    fn reload(&mut self) {
        self.inject("reload");
        match Catalog::load(&self.conn) {
            Ok(c) => self.catalog = c,
            Err(e) => self.log(
                LogLevel::Error,
                &format!("reloading automations failed: {e}"),
            ),
        }
        self.reload_settings();
        *self.published.write() = self.settings.clone();
    }

    /// Reads the settings again from the write connection (in the round's
    /// transaction, when one is open).
    fn reload_settings(&mut self) {
        match load_settings(&self.conn) {
            Ok(s) => self.settings = s,
            Err(e) => self.log(LogLevel::Error, &format!("reloading settings failed: {e}")),
        }
    }

    /// Loads the stored plugins into the plugin host (after a plugin command
    /// committed, and at start).
    pub fn reload_plugins(&mut self) {
        match crate::plugins::registry::all(&self.conn) {
            Ok(stored) => self.plugins.load(stored),
            Err(e) => self.log(LogLevel::Error, &format!("reading plugins failed: {e}")),
        }
    }

    /// Records a custom step's result and moves its enrollment on. A
    /// transient failure (plugin disabled, no free instance) is retried with
    /// backoff under the same key; after the last attempt it counts as failed.
    fn plugin_step(
        &mut self,
        outbox_id: i64,
        report: crate::plugins::Report<crate::plugins::StepResult>,
    ) -> Result<()> {
        self.inject("plugin_step");
        let now = self.clock.now();
        let crate::plugins::Report {
            result,
            mut figures,
        } = report;
        // An answer whose property changes may not be made fails the step,
        // and counts as a failed call in the plugin's figures.
        let refused = self.plugin_answer(outbox_id, result, now)?;
        if figures.failure.is_none() {
            figures.failure = refused;
        }
        crate::plugins::registry::record_call(&self.conn, &figures, now)
    }

    /// Records a plugin's answer for its outbox row and moves the
    /// enrollment on; the reason its property changes were refused, if
    /// they were.
    fn plugin_answer(
        &self,
        outbox_id: i64,
        result: std::result::Result<
            crate::plugins::StepResult,
            crate::plugins::runtime::CallFailure,
        >,
        now: Millis,
    ) -> Result<Option<String>> {
        let Some(row) = outbox::by_id(&self.conn, outbox_id)? else {
            return Ok(None);
        };
        if row.status != "pending" && row.status != "retry" {
            return Ok(None);
        }
        let result = match result {
            Ok(r) => {
                outbox::record_answer(&self.conn, outbox_id, HostAnswer::Accepted, None, now)?;
                Ok(r)
            }
            Err(f) => {
                let answer = if f.transient {
                    HostAnswer::RetryLater
                } else {
                    HostAnswer::Failed
                };
                let status =
                    outbox::record_answer(&self.conn, outbox_id, answer, Some(&f.reason), now)?;
                if status != "failed" {
                    return Ok(None);
                }
                Err(f.reason)
            }
        };
        self.finish_custom_step(&row, result, now)
    }

    /// Moves the enrollment of a custom step's row on with the step's
    /// result; the reason its property changes were refused, if they were.
    fn finish_custom_step(
        &self,
        row: &outbox::Row,
        result: std::result::Result<crate::plugins::StepResult, String>,
        now: Millis,
    ) -> Result<Option<String>> {
        let (Some(enrollment_id), Some(step_id)) = (row.enrollment_id, row.step_id.as_deref())
        else {
            return Ok(None);
        };
        self.in_core(now, |ctx| {
            enrollment::finish_custom_step(ctx, enrollment_id, step_id, &row.key, result)
        })
    }

    /// Runs `f` in the deterministic core at `now` and writes the effects
    /// it produced to the outbox (in the caller's transaction).
    fn in_core<T>(&self, now: Millis, f: impl FnOnce(&mut Ctx<'_>) -> Result<T>) -> Result<T> {
        let settings = self.settings.clone();
        let mut ctx = self.core_ctx(now, &settings);
        let value = f(&mut ctx)?;
        let effects = ctx.take_effects();
        outbox::write(&self.conn, &effects, now)?;
        Ok(value)
    }

    /// A context for the core on the worker's connection, with the marks
    /// it makes for rows already screened and the rows in flight.
    fn core_ctx<'a>(&'a self, now: Millis, settings: &'a Resolved) -> Ctx<'a> {
        let mut ctx = Ctx::new(&self.conn, now, &self.catalog, settings, &self.install_id);
        ctx.rescreen = Some(&self.rescreen);
        ctx.in_flight = Some(&self.flying);
        ctx
    }

    /// Runs one request so that, if it fails, it changes nothing while the
    /// other requests of the round still land: in its own savepoint, or, when
    /// it is the round's only write, directly in the transaction, which is
    /// then rolled back and begun again on failure. (A savepoint makes SQLite
    /// copy every page the request modifies into a sub-journal, and close
    /// every statement journal by walking that sub-journal: for a batch of
    /// 1,000 events that was a large part of the cost.)
    fn in_savepoint<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        if self.lone_write {
            let before = self.catalog.clone();
            return match contained(|| f(self)) {
                Ok(v) => Ok(v),
                Err(e) => {
                    self.catalog = before;
                    // SQLite may already have rolled back (a full disk, an
                    // I/O error). The round goes on in a new transaction;
                    // if this one cannot be undone, or none begins, the
                    // round is lost: nothing of the request is committed.
                    let undone = if self.conn.is_autocommit() {
                        Ok(())
                    } else if self.injected("lone_rollback") {
                        Err(rusqlite::Error::InvalidQuery)
                    } else {
                        self.conn.execute_batch("ROLLBACK")
                    };
                    if undone
                        .and_then(|()| self.conn.execute_batch("BEGIN IMMEDIATE"))
                        .is_err()
                    {
                        self.lose_round();
                    }
                    Err(e)
                }
            };
        }
        // The transaction is gone: running this request now would run it
        // outside any transaction (a SAVEPOINT there begins one of its own,
        // and its RELEASE commits it).
        if let Some(lost) = &self.lost {
            return Err(clone_err(lost));
        }
        self.conn.execute_batch("SAVEPOINT req")?;
        let before = self.catalog.clone();
        let r = contained(|| f(self));
        #[cfg(test)]
        let r = self.injected_abort(r);
        match r {
            Ok(v) => match self.conn.execute_batch("RELEASE req") {
                Ok(()) => Ok(v),
                Err(e) => {
                    self.undo_request(before);
                    Err(e.into())
                }
            },
            Err(e) => {
                self.undo_request(before);
                Err(e)
            }
        }
    }

    /// Undoes the request of the current savepoint after it failed. SQLite
    /// may have rolled back the whole transaction already (a full disk, an
    /// I/O error: `ROLLBACK TO` then fails and the connection is back in
    /// autocommit), or the savepoint may not roll back: then the round is
    /// lost, its transaction rolled back if still open, and the round's
    /// other requests are refused rather than run outside a transaction
    /// or committed beside a half-undone one.
    fn undo_request(&mut self, before: Catalog) {
        let undone = self.conn.execute_batch("ROLLBACK TO req; RELEASE req");
        self.catalog = before;
        if undone.is_err() || self.conn.is_autocommit() {
            self.lose_round();
        }
    }

    /// The round's transaction is gone or cannot be trusted: it is rolled
    /// back if still open, and the round's requests are refused rather
    /// than run outside a transaction or committed beside a half-undone
    /// one.
    fn lose_round(&mut self) {
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        self.log(
            LogLevel::Error,
            "the database rolled back the whole transaction of a round: its requests are refused",
        );
        self.lost = Some(Error::Storage(
            "the database rolled back the transaction (disk full or I/O error?); \
             nothing of this request was kept"
                .into(),
        ));
    }

    /// Tests: SQLite rolls back the whole transaction during the request
    /// [`Worker::abort_request`] names.
    #[cfg(test)]
    fn injected_abort<T>(&mut self, r: Result<T>) -> Result<T> {
        match self.abort_request {
            Some(0) => {
                self.abort_request = None;
                self.conn.execute_batch("ROLLBACK")?;
                Err(Error::Storage("database or disk is full (injected)".into()))
            }
            Some(n) => {
                self.abort_request = Some(n - 1);
                r
            }
            None => r,
        }
    }

    fn push(&mut self, events: &[Event]) -> Result<Vec<Outcome>> {
        let settings = self.settings.clone();
        let now = self.clock.now();
        let mut out = Vec::with_capacity(events.len());
        for (i, ev) in events.iter().enumerate() {
            let mut ctx = self.core_ctx(now, &settings);
            let located = |e: Error| {
                if events.len() > 1 {
                    e.at(&format!("events[{i}] ({})", ev.event_id))
                } else {
                    e
                }
            };
            let outcome = ingest::apply(&mut ctx, ev).map_err(located)?;
            let effects = ctx.take_effects();
            outbox::write(&self.conn, &effects, now)?;
            out.push(outcome);
        }
        Ok(out)
    }

    fn command(&mut self, command: Command) -> Result<Value> {
        let (value, catalog) =
            self.in_core(self.clock.now(), |ctx| commands::execute(ctx, command))?;
        if let Some(c) = catalog {
            self.catalog = c;
        }
        Ok(value)
    }

    fn hit(&mut self, hit: &crate::core::hits::Hit) -> Result<Value> {
        let response = self.in_core(self.clock.now(), |ctx| crate::core::hits::handle(ctx, hit))?;
        serde_json::to_value(response).map_err(|e| Error::Internal(e.to_string()))
    }

    /// Records the answer to the hand-over of row `id` made when the row
    /// had `handed` answers (`None`: not known, as in tests).
    fn record_answer(
        &mut self,
        id: i64,
        handed: Option<i64>,
        answer: HostAnswer,
        error: Option<&str>,
        by: &AnsweredBy,
    ) -> Result<()> {
        self.inject("record_answer");
        let now = self.clock.now();
        let Some(row) = outbox::by_id(&self.conn, id)? else {
            return Ok(());
        };
        // Answered already: a final answer, or a delivery receipt the host
        // pushed before returning, which recorded this hand-over as taken
        // (`ingest`'s receipt on a pending row) and may have set the row
        // to be sent again (a soft bounce) since.
        if (row.status != "pending" && row.status != "retry")
            || handed.is_some_and(|a| a != row.attempts)
        {
            return Ok(());
        }
        // Staff wait for a "Test to" sample: one the relay holds (a refused
        // login) fails at once with the reason, rather than wait unseen.
        let test_send = crate::outbox::is_test_send(&self.install_id, &row.key);
        let answer = if test_send && answer == HostAnswer::Held {
            HostAnswer::Failed
        } else {
            answer
        };
        // A row held again for the same reason (every 15 minutes while
        // the relay refuses the login) is logged once, not at every try.
        let held_again = answer == HostAnswer::Held
            && outbox::last_error(&self.conn, id)? == Some(outbox::held_by_sender(error));
        let status = outbox::record_answer(&self.conn, id, answer, error, now)?;
        if test_send || held_again {
            // "Test to" samples never reach analytics; a hold is logged
            // when it starts.
            return Ok(());
        }
        if answer == HostAnswer::Bounced && row.kind == EffectKind::Message {
            // A hard bounce, not an error: handled as a host's receipt would be.
            return self.in_core(now, |ctx| ingest::bounced_at_hand_over(ctx, &row.key));
        }
        let kind = match (row.kind, status) {
            _ if answer == HostAnswer::Held => "effect_held",
            (EffectKind::Message, "accepted") => "message_sent",
            (EffectKind::Message, "failed") => "message_failed",
            (_, "accepted") => "effect_accepted",
            (_, "failed") => "effect_failed",
            _ => "effect_retry",
        };
        let source = match by {
            AnsweredBy::Host => "host".to_string(),
            AnsweredBy::Relay => "relay".to_string(),
            AnsweredBy::Plugin(f) => format!("plugin:{}", f.plugin_id),
        };
        let detail = match (status, error) {
            ("accepted", _) => None,
            // No attempt used: the sender's settings held it.
            _ if answer == HostAnswer::Held => Some(json!({"source": source, "error": error})),
            (_, Some(e)) => {
                Some(json!({"source": source, "error": e, "attempts": row.attempts + 1}))
            }
            _ => Some(json!({"source": source, "attempts": row.attempts + 1})),
        };
        Log::for_effect(kind, &row, detail).write(&self.conn, now)?;
        if row.kind == EffectKind::Message && status == "failed" {
            // Failed for good (the sender said so, or the retries ran
            // out): it never reaches the person, so the step's channel
            // fallback goes, as after a hard bounce.
            self.in_core(now, |ctx| ingest::never_reached(ctx, &row))?;
        }
        if kind == "message_sent" && matches!(by, AnsweredBy::Relay) {
            // The relay's acceptance is the delivery (SPEC 5: accepted
            // without bounce or hard error); no receipt ever comes for mail
            // the module sends itself. A bounce the host learns of later
            // (an asynchronous DSN pushed as a receipt) revokes it.
            Log::for_effect("message_delivered", &row, Some(json!({"by": "relay"})))
                .write(&self.conn, now)?;
        }
        Ok(())
    }

    /// The earliest scheduled item of an active automation.
    fn next_due(&self) -> Result<Option<Millis>> {
        due::earliest(&self.conn)
    }

    /// Runs every scheduled item due at or before `until`, in time order. With
    /// the manual clock each item runs at its own due instant.
    fn run_due(&mut self, until: Millis) -> Result<()> {
        self.inject("run_due");
        while self.next_due()?.is_some_and(|first| first <= until) {
            self.run_due_transaction(until, false)?;
        }
        Ok(())
    }

    /// One transaction of scheduled items due by `until` (at most
    /// [`DUE_CHUNK`]), then the hand-over of what is due. With `grained`,
    /// the transaction ends before an item due more than [`HANDOVER_GRAIN`]
    /// after the first item that queued an effect, so that the effect is
    /// handed over before the clock passes its instant by more.
    fn run_due_transaction(&mut self, until: Millis, grained: bool) -> Result<()> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        let r = self.run_due_chunk(until, grained).and_then(|reached| {
            self.inject("due_commit");
            self.conn.execute_batch("COMMIT")?;
            Ok(reached)
        });
        match r {
            // The manual clock moves to the items' instants once their work
            // is committed: work rolled back runs again at its own instant.
            Ok(reached) => reached.into_iter().for_each(|t| self.clock.advance_to(t)),
            Err(e) => {
                if !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                return Err(e);
            }
        }
        self.dispatch();
        Ok(())
    }

    /// Whether anything takes effects now: the host, one of the module's
    /// own senders, or the plugin pool.
    fn anyone_takes(&self) -> bool {
        !self.host_kinds().is_empty()
            || !self.sender_channels().is_empty()
            || self.plugins.started()
    }

    /// Moves the manual clock to `to` as a real clock would pass: scheduled
    /// items run at their own instants, and before the clock goes past an
    /// instant at which effects are due, they are handed over and the
    /// answers recorded ([`Worker::settle`]). So a single advance over
    /// weeks hands each message over when it falls due, and sending limits,
    /// sending hours, retries and channel fallbacks act at the simulated
    /// times they would on the system clock. An effect an item queued is
    /// handed over before the clock passes its instant by more than
    /// [`HANDOVER_GRAIN`] (items closer than that run in its transaction);
    /// one already waiting is handed over before any item due after it runs.
    /// When answers stop coming for [`SETTLE_PATIENCE`] (a host holding a
    /// callback), the advance stops waiting: effects are still handed over
    /// as they fall due, but their answers are recorded as they come.
    /// Advances asked for meanwhile (from a callback) join `advances`.
    fn advance(
        &mut self,
        to: Millis,
        rx: &Receiver<Request>,
        advances: &mut std::collections::VecDeque<Advance>,
    ) -> Result<()> {
        self.inject("run_due");
        let mut patient = true;
        loop {
            if patient {
                patient = self.settle(rx, advances);
            }
            let now = self.clock.now();
            let item = self.next_due()?;
            let handover = self.next_handover(now);
            let Some(next) = item.into_iter().chain(handover).min().filter(|t| *t <= to) else {
                break;
            };
            if item == Some(next) {
                let grained = patient && self.anyone_takes();
                // Items up to the next hand-over only: one that queues
                // nothing must not carry the clock past an effect already
                // waiting in the outbox (held for sending hours, a retry,
                // a freed sending-limit slot).
                self.run_due_transaction(handover.map_or(to, |h| h.min(to)), grained)?;
            } else {
                self.clock.advance_to(next);
                if !patient {
                    self.dispatch();
                }
            }
        }
        self.clock.advance_to(to);
        if patient {
            self.settle(rx, advances);
        }
        Ok(())
    }

    /// Manual clock: hands over every effect due by now and records the
    /// answers, running the requests that arrive meanwhile (a callback may
    /// push an event) in rounds as the loop would. Returns `false` when no
    /// answer came for [`SETTLE_PATIENCE`] (those rows are then `stalled`,
    /// and later advances do not wait while one of them is unanswered), or
    /// the module is shutting down.
    fn settle(
        &mut self,
        rx: &Receiver<Request>,
        advances: &mut std::collections::VecDeque<Advance>,
    ) -> bool {
        let patient = self.settle_rounds(rx, advances);
        self.settled.clear();
        patient
    }

    fn settle_rounds(
        &mut self,
        rx: &Receiver<Request>,
        advances: &mut std::collections::VecDeque<Advance>,
    ) -> bool {
        let mut deadline = std::time::Instant::now() + SETTLE_PATIENCE;
        loop {
            if self.stopping {
                return false;
            }
            self.dispatch();
            if self.in_flight.iter().any(|id| self.stalled.contains(id)) {
                return false;
            }
            self.settled.extend(self.in_flight.iter().copied());
            if self.in_flight.is_empty() {
                return true;
            }
            let first = match rx.recv_deadline(deadline) {
                Ok(r) => r,
                Err(RecvTimeoutError::Timeout) => {
                    self.log(
                        LogLevel::Warn,
                        &format!(
                            "clock advance: {} hand-overs unanswered after {} s; advances stop waiting for answers until they come",
                            self.in_flight.len(),
                            SETTLE_PATIENCE.as_secs()
                        ),
                    );
                    self.stalled.extend(self.in_flight.iter().copied());
                    return false;
                }
                Err(RecvTimeoutError::Disconnected) => return false,
            };
            let mut batch = vec![first];
            self.gather(&mut batch, rx);
            // Only answers buy more patience: requests from elsewhere
            // (pushes every few seconds) must not keep an advance waiting.
            if batch
                .iter()
                .any(|r| matches!(r, Request::Answer { .. } | Request::PluginStep { .. }))
            {
                deadline = std::time::Instant::now() + SETTLE_PATIENCE;
            }
            advances.extend(self.round(batch));
        }
    }

    /// The next instant after `now` at which something can be handed over:
    /// a row falls due on a channel that may send, or a channel over its
    /// sending limit gets a free slot (a message handed over leaves one of
    /// its windows).
    fn next_handover(&self, now: Millis) -> Option<Millis> {
        self.with_takers(now, |takers, exempt| {
            let slot = if takers.blocked.is_empty() {
                None
            } else {
                let limits = self.settings.doc.limits.clone();
                crate::messaging::limits::next_slot(&self.conn, &limits, takers.blocked, now)
                    .ok()
                    .flatten()
            };
            let due = self.next_takeable(now, takers, exempt).ok().flatten();
            due.into_iter()
                .chain(slot)
                .chain(self.cooled_after(now))
                .min()
        })
    }

    fn run_due_chunk(&mut self, until: Millis, grained: bool) -> Result<Option<Millis>> {
        let settings = self.settings.clone();
        let manual = self.clock.is_manual();
        let start = self.clock.now();
        // The manual clock's instant after the items run so far, for the
        // caller to move the clock to once they are committed.
        let mut reached: Option<Millis> = None;
        let mut last: Option<(Millis, Option<i64>, Option<String>)> = None;
        // When the first item that queued an effect ran.
        let mut queued_at: Option<Millis> = None;
        for _ in 0..DUE_CHUNK {
            let Some(item) = due::next(&self.conn, until)? else {
                return Ok(reached);
            };
            let (at, enrollment_id, automation_id) =
                (item.due, item.enrollment_id, item.automation_id.clone());
            if grained && queued_at.is_some_and(|q| at > q + HANDOVER_GRAIN) {
                return Ok(reached);
            }
            let now = if manual {
                // Items come in time order: each runs at its own instant,
                // or at the clock's if it was due before.
                at.max(reached.unwrap_or(start))
            } else {
                self.clock.now()
            };
            let this = Some((at, enrollment_id, automation_id.clone()));
            if this == last {
                // The item did not move: never spin on it.
                let err = Error::Internal("scheduled item did not advance".into());
                self.quarantine(now, enrollment_id, automation_id.as_deref(), &err)?;
                continue;
            }
            last = this;
            if manual {
                reached = Some(now);
            }
            self.conn.execute_batch("SAVEPOINT item")?;
            let r = contained(|| self.run_item(now, &settings, &item));
            match r {
                Ok(queued) => {
                    if queued > 0 && queued_at.is_none() {
                        queued_at = Some(now);
                    }
                    self.conn.execute_batch("RELEASE item")?
                }
                Err(e) => {
                    let undone = self.conn.execute_batch("ROLLBACK TO item; RELEASE item");
                    if undone.is_err() || self.conn.is_autocommit() {
                        // SQLite rolled the whole transaction back (a full
                        // disk, an I/O error): the item's own error says
                        // why, and nothing can be recorded of it.
                        return Err(e);
                    }
                    self.quarantine(now, enrollment_id, automation_id.as_deref(), &e)?;
                }
            }
        }
        Ok(reached)
    }

    /// Runs one scheduled item at `now`; returns how many effects it queued.
    fn run_item(&mut self, now: Millis, settings: &Resolved, item: &due::Item) -> Result<usize> {
        self.inject("run_item");
        let mut ctx = self.core_ctx(now, settings);
        let n = due::run(&mut ctx, item)?;
        let effects = ctx.take_effects();
        outbox::write(&self.conn, &effects, now)?;
        if n > 0 {
            self.log(
                LogLevel::Info,
                &format!(
                    "automation {}: date trigger enrolled {n} contact{}",
                    item.automation_id.as_deref().unwrap_or("-"),
                    if n == 1 { "" } else { "s" }
                ),
            );
        }
        Ok(effects.len())
    }

    /// A scheduled item failed: it must not run again in a loop. An enrollment
    /// exits with reason `error`; a date evaluation moves to its next one
    /// (the start of its run window on the next open day).
    /// Both are logged (ids only).
    fn quarantine(
        &mut self,
        now: Millis,
        enrollment_id: Option<i64>,
        automation_id: Option<&str>,
        err: &Error,
    ) -> Result<()> {
        let enrollment = enrollment_id.map_or("-".into(), |id| id.to_string());
        let automation = automation_id.unwrap_or("-");
        self.log(
            LogLevel::Error,
            &format!(
                "scheduled item failed (enrollment {enrollment}, automation {automation}): {err}"
            ),
        );
        if let Some(id) = enrollment_id {
            self.conn.execute(
                "UPDATE enrollments SET state = 'exited', exit_reason = 'error', ended_at = ?2, wake_at = NULL WHERE id = ?1",
                params![id, now],
            )?;
            let e = enrollment::load(&self.conn, id)?;
            if let Some(e) = e {
                self.rescreen.mark(&e.contact_id);
                Log {
                    automation_id: Some(&e.automation_id),
                    version: Some(e.version),
                    enrollment_id: Some(e.id),
                    step_id: e.step_id.as_deref(),
                    detail: Some(json!({"reason": "error", "error": err.to_string()})),
                    ..Log::new("exited", &e.contact_id)
                }
                .write(&self.conn, now)?;
            }
        }
        if let Some(aid) = automation_id {
            // Its next regular evaluation (the start of its window on the
            // next open day), as after a run; a day later if it has none.
            let next = self
                .catalog
                .get(aid)
                .and_then(|entry| {
                    crate::core::dates::next_evaluation(&entry.current.def, &self.settings, now)
                })
                .unwrap_or(now + crate::clock::DAY);
            self.conn.execute(
                "UPDATE automations SET next_eval_at = ?2 WHERE id = ?1",
                params![aid, next],
            )?;
        }
        Ok(())
    }

    /// After its answer could not be recorded: the row is offered again
    /// (same key) in [`ANSWER_RETRY_MS`], not at once in a loop. Failing
    /// that too, the error is logged.
    fn defer(&mut self, outbox_id: i64) {
        let now = self.clock.now();
        // The last attempt of a custom step: failed as a plugin's failure
        // would be, so that its enrollment moves on (or exits) instead of
        // waiting for good for an answer that never lands. Other rows are
        // marked failed alone: their sender may have taken them (a message
        // accepted, whose answer could not be recorded, must not send its
        // fallback too), and nothing waits on them.
        let last_step = outbox::by_id(&self.conn, outbox_id)
            .ok()
            .flatten()
            .filter(|row| {
                row.kind == EffectKind::PluginStep
                    && matches!(row.status.as_str(), "pending" | "retry")
                    && row.attempts + 1 >= outbox::MAX_ATTEMPTS
            });
        if let Some(row) = last_step
            && self.in_savepoint(|w| w.give_up(outbox_id, &row)).is_ok()
        {
            return;
        }
        if let Err(e) =
            self.in_savepoint(|w| outbox::defer(&w.conn, outbox_id, now + ANSWER_RETRY_MS, now))
        {
            self.log(
                LogLevel::Error,
                &format!("deferring outbox row {outbox_id} failed: {e}"),
            );
        }
    }

    /// Fails a custom step's row `row` (`outbox_id`), whose answers could
    /// not be recorded ([`outbox::MAX_ATTEMPTS`] times), and moves its
    /// enrollment on as a failed step.
    fn give_up(&mut self, outbox_id: i64, row: &outbox::Row) -> Result<()> {
        let now = self.clock.now();
        let reason = outbox::ANSWERS_LOST;
        if outbox::record_answer(&self.conn, outbox_id, HostAnswer::Failed, Some(reason), now)?
            == "failed"
        {
            self.finish_custom_step(row, Err(reason.into()), now)?;
        }
        Ok(())
    }

    /// Hands due outbox rows to the dispatcher.
    fn dispatch(&mut self) {
        self.inject("dispatch");
        // A mark matters only to a row in flight of its contact: rows
        // handed over later carry a later epoch. (Dropped here, every turn,
        // rather than when answers land: without a host nothing lands, and
        // behind a callback that never returns neither does its row, while
        // the marks of every exit and opt-out ingested would pile up.)
        (self.rescreen).keep_only(self.flying.values().filter_map(|f| f.contact.as_deref()));
        // Shutting down: what is handed over now could not be answered.
        if self.stopping || self.in_flight.len() >= MAX_IN_FLIGHT {
            return;
        }
        // No early return without a host: custom steps' rows go to the
        // plugin pool whoever is registered (a call to a plugin no longer
        // installed fails there, and is retried, then failed, as any).
        let host = self.host_kinds();
        let senders = self.sender_channels();
        let now = self.clock.now();
        let room = MAX_IN_FLIGHT - self.in_flight.len();
        self.cooling.retain(|_, until| *until > now);
        let exclude = self.held_back(now);
        let exclude = &*exclude;
        // Nothing due that anyone takes (the common case while ingesting
        // without a host): no sending limits to count.
        let open = outbox::Takers {
            host: &host,
            sender_channels: &senders,
            blocked: &[],
        };
        if let Ok(false) = outbox::any_due(&self.conn, now, exclude, open) {
            return;
        }
        // Each message channel's lane is read only as far as the channel can
        // take (none of a channel over its limit or its in-flight share), so
        // every row screened here can be handed over; of a channel over its
        // limit, only the messages outside the limits.
        let (channel_room, exempt_room) = self.rooms(now);
        let due = outbox::due_within(
            &self.conn,
            now,
            room,
            exclude,
            open,
            &channel_room,
            &exempt_room,
        )
        .and_then(|rows| {
            crate::messaging::handover::screen(
                &self.conn,
                &self.catalog,
                &self.settings,
                &self.install_id,
                rows,
                now,
            )
        });
        match due {
            Ok(rows) => {
                for mut row in rows {
                    self.in_flight.insert(row.id);
                    let flying = Flying {
                        kind: row.kind,
                        channel: row.channel.clone(),
                        contact: row.contact_id.clone(),
                        exempt: row.exempt,
                        attempts: row.attempts,
                    };
                    self.flying.insert(row.id, flying);
                    let id = row.id;
                    row.screened = self.rescreen.epoch();
                    if self.jobs.send(row).is_err() {
                        // The dispatcher is gone: nothing will answer.
                        self.landed(id);
                        return;
                    }
                }
            }
            Err(e) => self.log(LogLevel::Error, &format!("reading the outbox failed: {e}")),
        }
    }

    fn check_idle(&mut self, rx: &Receiver<Request>) {
        if self.idle_waiters.is_empty() {
            return;
        }
        let idle = rx.is_empty() && self.in_flight.is_empty() && {
            let now = self.clock.now();
            let due_work = self.next_due().ok().flatten().is_some_and(|t| t <= now);
            let due_out = self.next_outbox_due(Millis::MIN).is_some_and(|t| t <= now);
            !due_work && !due_out
        };
        if idle {
            for (w, _) in self.idle_waiters.drain(..) {
                let _ = w.send(true);
            }
            return;
        }
        // Those whose wait is over hear that work is left.
        let now = std::time::Instant::now();
        self.idle_waiters.retain(|(w, deadline)| {
            if *deadline <= now {
                let _ = w.send(false);
                return false;
            }
            true
        });
    }
}

/// The lanes of `rooms` that can take nothing now: over their sending
/// limit, or with their share of the in-flight room taken (an answer wakes
/// the worker).
fn blocked_in(rooms: &Rooms) -> Vec<&'static str> {
    (rooms.iter())
        .filter(|(_, room)| *room == 0)
        .map(|(c, _)| *c)
        .collect()
}

fn clone_err(e: &Error) -> Error {
    match e {
        Error::Storage(m) => Error::Storage(m.clone()),
        other => Error::Internal(other.to_string()),
    }
}

fn reply_error(r: Request, err: &Error, advances: &mut Vec<Advance>) {
    match r {
        Request::Push { reply, .. } => {
            let _ = reply.send(Err(clone_err(err)));
        }
        Request::Command { reply, .. } | Request::Hit { reply, .. } => {
            let _ = reply.send(Err(clone_err(err)));
        }
        Request::AdvanceBy { by, reply } => advances.push((by, reply)),
        _ => {}
    }
}

/// Runs one request's or scheduled item's engine logic, turning a panic (a
/// defect) into [`Error::Internal`]: the caller's savepoint then rolls the
/// work back as for any error (a request is refused, a scheduled item is
/// quarantined), and the worker carries on, so one input that meets a bug
/// never takes the module down. The panic's own message goes to the
/// process's panic hook, not into the error (it could quote data).
fn contained<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(Error::Internal(
            "a defect in the module stopped this work; it was rolled back".into(),
        ))
    })
}

/// Loads the stored settings (defaults when none).
pub fn load_settings(conn: &Connection) -> Result<Resolved> {
    let doc: Settings = match crate::store::get_setting(conn, "settings")? {
        Some(v) => serde_json::from_value(v)
            .map_err(|_| Error::Internal("stored settings unreadable".into()))?,
        None => Settings::default(),
    };
    match doc.validate() {
        Ok(r) => Ok(r),
        // A document stored under older, looser rules still opens the module:
        // the settings screen shows its field errors for staff to fix.
        Err(_) => {
            let tz = crate::schedule::parse_tz(&doc.time_zone).unwrap_or(chrono_tz::UTC);
            Ok(Resolved { doc, tz })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker on a fresh database file, with the manual clock.
    fn worker(dir: &tempfile::TempDir) -> Worker {
        worker_at(dir, 0)
    }

    /// A worker on a manual clock starting at `start`.
    fn worker_at(dir: &tempfile::TempDir, start: Millis) -> Worker {
        let conn = crate::store::open(&dir.path().join("w.db"), crate::store::Access::Write)
            .expect("open the store");
        let settings = Arc::new(RwLock::new(load_settings(&conn).expect("settings")));
        let host: HostSlot = Arc::new(RwLock::new(None));
        let plugins = Arc::new(crate::plugins::PluginHost::new(host.clone()));
        let (jobs, _) = crossbeam_channel::bounded(1);
        Worker::new(
            conn,
            Arc::new(Clock::manual(start)),
            settings,
            "test".into(),
            host,
            plugins,
            jobs,
        )
        .expect("worker")
    }

    /// A host taking every kind but custom steps, answering nothing here
    /// (the tests call the worker's methods directly).
    struct Taker;

    impl crate::host::Host for Taker {
        fn deliver(&self, _: crate::host::Delivery<'_>) -> (HostAnswer, Option<String>) {
            (HostAnswer::Accepted, None)
        }
    }

    /// A worker on the system clock, with [`Taker`] registered.
    fn system_worker(dir: &tempfile::TempDir) -> Worker {
        let mut w = worker(dir);
        w.clock = Arc::new(Clock::system());
        *w.host.write() = Some(Arc::new(Taker));
        w
    }

    /// Queues a task for `contact`, due at `at`; its outbox id.
    fn queue_task(w: &Worker, key: &str, contact: &str, at: Millis) -> i64 {
        queue(w, key, EffectKind::Task, None, contact, at)
    }

    /// Queues an effect of `kind` (on `channel`) for `contact`, due at
    /// `at`; its outbox id.
    fn queue(
        w: &Worker,
        key: &str,
        kind: EffectKind,
        channel: Option<&str>,
        contact: &str,
        at: Millis,
    ) -> i64 {
        let mut effect = outbox::sample(key, kind, channel, contact, at);
        effect.payload = json!({"key": key, "plugin_id": "gone", "step_type": "x"});
        outbox::write(&w.conn, &[effect], at).expect("queued");
        w.conn
            .query_row(
                "SELECT id FROM outbox WHERE idempotency_key = ?1",
                [key],
                |r| r.get(0),
            )
            .expect("the row")
    }

    /// With the system clock, a row in flight does not make the loop
    /// spin: the worker sleeps until the next row falls due (or its
    /// answer comes), and wakes at once only for a row it can hand over.
    #[test]
    fn a_hand_over_in_flight_does_not_keep_the_loop_awake() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut w = system_worker(&dir);
        let now = crate::clock::system_now();
        let first = queue_task(&w, "test-a", "c1", now - 1_000);
        assert_eq!(w.wait_time(), Some(Duration::ZERO), "due: hand it over");
        w.in_flight.insert(first);
        let idle = w.wait_time().expect("system clock");
        assert!(
            idle > Duration::from_secs(50),
            "only the row in flight is due, and its answer wakes the worker: {idle:?}"
        );
        queue_task(&w, "test-b", "c2", now + 20_000);
        let next = w.wait_time().expect("system clock");
        // Due 20 s after `now`, less the time this test has taken since (all
        // of it, on a machine stalled that long).
        let due_now = crate::clock::system_now() >= now + 20_000;
        assert!(
            (next > Duration::ZERO || due_now) && next <= Duration::from_secs(20) && next < idle,
            "until the next row falls due: {next:?}"
        );
        queue_task(&w, "test-c", "c3", now - 500);
        assert_eq!(w.wait_time(), Some(Duration::ZERO), "another row is due");
    }

    /// A channel with its share of the in-flight room taken does not keep
    /// the loop awake either: its next message waits for an answer.
    #[test]
    fn a_channel_with_its_share_in_flight_waits_for_an_answer() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut w = system_worker(&dir);
        let now = crate::clock::system_now();
        let ids: Vec<i64> = (0..=MAX_IN_FLIGHT_PER_CHANNEL)
            .map(|i| {
                let (key, contact) = (format!("test-m{i}"), format!("c{i}"));
                queue(
                    &w,
                    &key,
                    EffectKind::Message,
                    Some("email"),
                    &contact,
                    now - 1_000,
                )
            })
            .collect();
        for id in &ids[..MAX_IN_FLIGHT_PER_CHANNEL] {
            w.in_flight.insert(*id);
            let flying = Flying {
                kind: EffectKind::Message,
                channel: Some("email".into()),
                contact: None,
                exempt: false,
                attempts: 0,
            };
            w.flying.insert(*id, flying);
        }
        let idle = w.wait_time().expect("system clock");
        assert!(idle > Duration::from_secs(50), "{idle:?}");
        w.landed(ids[0]);
        assert_eq!(w.wait_time(), Some(Duration::ZERO), "room again");
    }

    /// A message outside the sending limits in flight (a STOP's answer)
    /// takes none of its channel's budget; any other message takes one.
    #[test]
    fn a_message_outside_the_limits_in_flight_takes_none_of_the_budget() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut w = system_worker(&dir);
        w.settings.doc.limits.sms_per_day = Some(1);
        let now = crate::clock::system_now();
        let fly = |exempt| Flying {
            kind: EffectKind::Message,
            channel: Some("sms".into()),
            contact: None,
            exempt,
            attempts: 0,
        };
        w.flying.insert(1, fly(true));
        assert_eq!(w.budgets(now)["sms"], 1);
        w.flying.insert(2, fly(false));
        assert_eq!(w.budgets(now)["sms"], 0);
    }

    /// The marks for the dispatcher's last look are dropped at each turn's
    /// hand-over, with a host or without one, except those of contacts
    /// with a row in flight: a callback that never returns keeps only its
    /// own row's contact's marks.
    #[test]
    fn rescreen_marks_are_kept_only_for_contacts_with_a_row_in_flight() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut w = worker(&dir);
        let row = |contact: &str| DueEffect {
            id: 1,
            key: "k".into(),
            kind: EffectKind::Message,
            payload: String::new(),
            channel: Some("email".into()),
            contact_id: Some(contact.into()),
            screened: 0,
            attempts: 0,
            exempt: false,
        };
        w.rescreen.mark("c1");
        assert!(w.rescreen.is_stale(&row("c1")));
        w.dispatch();
        assert!(!w.rescreen.is_stale(&row("c1")), "forgotten");
        w.in_flight.insert(7);
        let flying = Flying {
            kind: EffectKind::Message,
            channel: Some("email".into()),
            contact: Some("c2".into()),
            exempt: false,
            attempts: 0,
        };
        w.flying.insert(7, flying);
        w.rescreen.mark("c2");
        w.rescreen.mark("c3");
        w.dispatch();
        assert!(
            w.rescreen.is_stale(&row("c2")),
            "kept while its row is in flight"
        );
        assert!(
            !w.rescreen.is_stale(&row("c3")),
            "no row of c3 in flight: forgotten"
        );
    }

    /// An answer the worker cannot record (here a defect) is not offered
    /// again at once, in a loop: the row waits a minute, its key the same.
    #[test]
    fn an_answer_that_cannot_be_recorded_is_offered_again_after_a_pause() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut w = system_worker(&dir);
        let now = crate::clock::system_now();
        let id = queue_task(&w, "test-a", "c1", now - 1_000);
        w.in_flight.insert(id);
        w.faults = vec!["record_answer"];
        w.round(vec![Request::Answer {
            outbox_id: id,
            answer: HostAnswer::Accepted,
            error: None,
            by: AnsweredBy::Host,
        }]);
        assert!(w.in_flight.is_empty(), "the answer landed");
        let (status, at): (String, Millis) = w
            .conn
            .query_row(
                "SELECT status, next_attempt_at FROM outbox WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("the row");
        assert_eq!(status, "pending", "nothing of the answer was kept");
        let attempts: i64 = w
            .conn
            .query_row("SELECT attempts FROM outbox WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .expect("attempts");
        assert_eq!(
            attempts, 1,
            "a deferral uses an attempt: it is not offered forever"
        );
        assert!(at >= now + ANSWER_RETRY_MS, "deferred: {}", at - now);
        let idle = w.wait_time().expect("system clock");
        assert!(idle > Duration::from_secs(50), "no loop: {idle:?}");
    }

    /// Answers lost with their round (SQLite rolled its transaction back, as
    /// on a full disk) leave their rows due, but the rows are not handed
    /// over again at once: the loop sleeps until their pause ends, instead
    /// of handing them to the host again and again while nothing commits.
    #[test]
    fn rows_whose_answers_were_lost_with_their_round_wait_before_going_again() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut w = system_worker(&dir);
        let now = crate::clock::system_now();
        let ids = [
            queue_task(&w, "test-a", "c1", now - 1_000),
            queue_task(&w, "test-b", "c2", now - 1_000),
        ];
        w.in_flight.extend(ids);
        w.abort_request = Some(0);
        w.round(
            ids.iter()
                .map(|&outbox_id| Request::Answer {
                    outbox_id,
                    answer: HostAnswer::Accepted,
                    error: None,
                    by: AnsweredBy::Host,
                })
                .collect(),
        );
        assert!(w.in_flight.is_empty(), "the answers landed");
        let pending: i64 = w
            .conn
            .query_row(
                "SELECT COUNT(*) FROM outbox WHERE status = 'pending' AND attempts = 0",
                [],
                |r| r.get(0),
            )
            .expect("rows");
        assert_eq!(pending, 2, "nothing of the answers was kept");
        let idle = w.wait_time().expect("system clock");
        assert!(
            idle > Duration::from_secs(50),
            "not again at once: {idle:?}"
        );
        // Another row falls due meanwhile: it goes, the two still wait.
        queue_task(&w, "test-c", "c3", now - 500);
        assert_eq!(w.wait_time(), Some(Duration::ZERO));
    }

    /// Scheduled work that fails on the system clock (a full disk) is not
    /// tried again at once in a loop: the worker waits a second, then
    /// longer while it keeps failing.
    #[test]
    fn failing_scheduled_work_on_the_system_clock_waits_before_trying_again() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut w = system_worker(&dir);
        let (_tx, rx) = crossbeam_channel::unbounded::<Request>();
        for text in [
            r#"{"command": "automation.create", "automation_id": "w", "definition": {
                "name": "W", "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
                "steps": [{"id": "wait", "type": "delay", "amount": 1, "unit": "days"},
                          {"id": "call", "type": "create_task", "title": "Call", "assignee": {"kind": "queue", "name": "desk"}}]}}"#,
            r#"{"command": "automation.activate", "automation_id": "w"}"#,
        ] {
            let command: Command = serde_json::from_str(text).expect("a command");
            let (reply, answer) = crossbeam_channel::bounded(1);
            w.round(vec![Request::Command { command, reply }]);
            answer.try_recv().expect("answered").expect("done");
        }
        push_contact(&mut w, "e1", "c1");
        let now = crate::clock::system_now();
        let waiting = w
            .conn
            .execute("UPDATE enrollments SET wake_at = ?1", [now - 1_000])
            .expect("overdue");
        assert_eq!(waiting, 1);
        assert_eq!(w.wait_time(), Some(Duration::ZERO), "overdue: run it");
        w.faults = vec!["run_due", "run_due"];
        w.turn(Vec::new(), &rx);
        assert_eq!(w.faults.len(), 1, "it ran, and failed");
        let pause = w.wait_time().expect("system clock");
        assert!(pause > Duration::from_millis(500), "{pause:?}");
        w.turn(Vec::new(), &rx);
        assert_eq!(w.faults.len(), 1, "not tried again during the pause");
    }

    /// At its last attempt, a custom step whose answers cannot be recorded
    /// fails as a plugin's failure would: its enrollment moves on past the
    /// step (here to the End) instead of waiting for good.
    #[test]
    fn a_custom_step_whose_answers_cannot_be_recorded_fails_at_its_last_attempt() {
        use crate::plugins::{Report, StepResult, registry::CallFigures};
        let dir = tempfile::tempdir().expect("temp dir");
        let mut w = worker(&dir);
        let descriptor = json!({
            "id": "scorer", "name": "Scorer", "version": "1", "vendor": "V", "description": "d",
            "kind": "step", "contract": "1.0.0",
            "step_types": [{"id": "score", "display_name": "Score", "palette_group": "crm_actions",
                "icon": "fa-star", "description": "d", "outcomes": ["continue", "failure"],
                "config_schema": {"type": "object"}}]
        });
        w.conn
            .execute(
                "INSERT INTO plugins (id, kind, descriptor, wasm, sha256, grants, limits, config, secrets, enabled, installed_at, updated_at)
                 VALUES ('scorer', 'step', ?1, x'00', 'sha', '[]', '{}', '{}', '{}', 1, 0, 0)",
                [descriptor.to_string()],
            )
            .expect("plugin");
        let run = |w: &mut Worker, v: Value| {
            let (reply, rx) = crossbeam_channel::bounded(1);
            let command = serde_json::from_value(v).expect("command");
            w.round(vec![Request::Command { command, reply }]);
            rx.try_recv().expect("answered").expect("done")
        };
        let created = run(
            &mut w,
            json!({"command": "automation.create", "definition": {"name": "Score",
                "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
                "steps": [{"id": "sc", "type": "custom", "plugin_id": "scorer", "step_type": "score", "config": {}}]}}),
        );
        let id = created["automation_id"].as_str().expect("id").to_string();
        run(
            &mut w,
            json!({"command": "automation.activate", "automation_id": id}),
        );
        let (reply, rx) = crossbeam_channel::bounded(1);
        let events = vec![
            crate::event::Event::parse(
                &json!({"type": "contact.upserted", "event_id": "e1",
                    "contact": {"id": "c1", "first_name": "Pat"}})
                .to_string(),
            )
            .expect("event"),
        ];
        w.round(vec![Request::Push { events, reply }]);
        rx.try_recv().expect("answered").expect("pushed");
        let row: i64 = w
            .conn
            .query_row(
                "SELECT id FROM outbox WHERE kind = 'plugin_step'",
                [],
                |r| r.get(0),
            )
            .expect("the custom step's call");
        w.conn
            .execute(
                "UPDATE outbox SET attempts = ?2 WHERE id = ?1",
                params![row, outbox::MAX_ATTEMPTS - 1],
            )
            .expect("attempts");
        w.in_flight.insert(row);
        w.faults = vec!["plugin_step"];
        let figures = CallFigures {
            plugin_id: "scorer".into(),
            operation: "score".into(),
            micros: 1,
            failure: None,
            ran: true,
        };
        let report = Report {
            result: Ok(StepResult::Continue(Vec::new())),
            figures,
        };
        w.round(vec![Request::PluginStep {
            outbox_id: row,
            report,
        }]);
        let status: String = w
            .conn
            .query_row("SELECT status FROM outbox WHERE id = ?1", [row], |r| {
                r.get(0)
            })
            .expect("the row");
        assert_eq!(status, "failed");
        let (state, failed): (String, i64) = w
            .conn
            .query_row(
                "SELECT state, (SELECT count(*) FROM events WHERE kind = 'step_failed'
                    AND json_extract(detail, '$.reason') = ?1) FROM enrollments",
                [outbox::ANSWERS_LOST],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("the enrollment");
        assert_eq!((state.as_str(), failed), ("completed", 1));
    }

    /// A custom step's row is handed over (to the plugin pool) with no
    /// host registered: the lane is open to the pool, so a row left there
    /// kept the loop awake while nothing took it.
    #[test]
    fn a_custom_steps_row_is_handed_over_without_a_host() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut w = system_worker(&dir);
        *w.host.write() = None;
        let (jobs, handed) = crossbeam_channel::unbounded();
        w.jobs = jobs;
        let now = crate::clock::system_now();
        queue(
            &w,
            "test-p",
            EffectKind::PluginStep,
            None,
            "c1",
            now - 1_000,
        );
        assert_eq!(w.wait_time(), Some(Duration::ZERO), "due");
        w.dispatch();
        let job = handed.try_recv().expect("handed over");
        assert_eq!(job.key, "test-p");
        assert!(w.wait_time().expect("system clock") > Duration::from_secs(50));
    }

    /// A backlog of custom steps holds at most its own slots in flight: a
    /// task falling due after it is handed over in the same turn, and the
    /// backlog alone does not keep the loop awake.
    #[test]
    fn a_backlog_of_custom_steps_leaves_room_for_the_hosts_deliveries() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut w = system_worker(&dir);
        let (jobs, handed) = crossbeam_channel::unbounded();
        w.jobs = jobs;
        let now = crate::clock::system_now();
        for i in 0..MAX_IN_FLIGHT + 10 {
            let (key, contact) = (format!("test-p{i}"), format!("c{i}"));
            queue(
                &w,
                &key,
                EffectKind::PluginStep,
                None,
                &contact,
                now - 10_000,
            );
        }
        queue_task(&w, "test-task", "c0", now - 1_000);
        w.dispatch();
        let keys: Vec<String> = handed.try_iter().map(|j: DueEffect| j.key).collect();
        assert!(keys.contains(&"test-task".to_string()), "{keys:?}");
        assert_eq!(keys.len(), MAX_PLUGIN_STEPS_IN_FLIGHT + 1, "{keys:?}");
        let idle = w.wait_time().expect("system clock");
        assert!(idle > Duration::from_secs(50), "{idle:?}");
    }

    fn lists(w: &Worker) -> i64 {
        w.conn
            .query_row("SELECT count(*) FROM lists", [], |r| r.get(0))
            .expect("count")
    }

    fn add_list(w: &Worker, id: &str) -> Result<()> {
        w.conn.execute(
            "INSERT INTO lists (id, name, created_at) VALUES (?1, ?1, 0)",
            [id],
        )?;
        Ok(())
    }

    /// Pushes contact `contact` (event `event_id`) in a round of its own.
    fn push_contact(w: &mut Worker, event_id: &str, contact: &str) {
        let event =
            json!([{"event_id": event_id, "type": "contact.upserted", "contact": {"id": contact}}]);
        let events = Event::parse_batch(&event.to_string()).expect("events");
        let (reply, rx) = crossbeam_channel::bounded(1);
        w.round(vec![Request::Push { events, reply }]);
        rx.try_recv().expect("answered").expect("pushed");
    }

    fn list_create(id: &str) -> Command {
        serde_json::from_value(json!({"command": "list.create", "list_id": id, "name": id}))
            .expect("a command")
    }

    fn command(tx: &Sender<Request>, id: &str) -> std::result::Result<Result<Value>, String> {
        let (reply, rx) = crossbeam_channel::bounded(1);
        tx.send(Request::Command {
            command: list_create(id),
            reply,
        })
        .expect("the worker is listening");
        rx.recv_timeout(Duration::from_secs(30))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_settings_update_holds_for_the_rest_of_its_round() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut w = worker(&dir);
        let mut settings = serde_json::to_value(&w.settings.doc).expect("settings");
        settings["practice_name"] = json!("Riverside");
        settings["default_run_window"] = json!({"mode": "any_time"});
        let request = |v: Value| {
            let (reply, rx) = crossbeam_channel::bounded(1);
            let command = serde_json::from_value(v).expect("a command");
            (Request::Command { command, reply }, rx)
        };
        let (update, updated) =
            request(json!({"command": "settings.update", "settings": settings}));
        let (create, created) = request(
            json!({"command": "automation.create", "automation_id": "a1",
            "definition": {"name": "Hello", "trigger": {"type": "contact_created"}, "steps": []}}),
        );
        let (get, got) = request(json!({"command": "settings.get"}));
        // One round: the three commit together.
        w.round(vec![update, create, get]);
        updated.recv().expect("answered").expect("updated");
        created.recv().expect("answered").expect("created");
        let seen = got.recv().expect("answered").expect("read");
        assert_eq!(seen["practice_name"], "Riverside");
        let window: String = w
            .conn
            .query_row(
                "SELECT json_extract(definition, '$.run_window.mode') FROM automation_versions WHERE automation_id = 'a1'",
                [],
                |r| r.get(0),
            )
            .expect("the definition");
        assert_eq!(window, "any_time", "the new default window");
    }

    /// The other threads (the dispatcher, views) see a settings update
    /// only once it is committed: a round lost before its commit leaves
    /// them, and the worker, with the stored settings.
    #[test]
    fn a_settings_update_is_published_only_when_committed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut w = worker(&dir);
        let name = |s: &Resolved| s.doc.practice_name.clone();
        let before = name(&w.settings);
        let mut settings = serde_json::to_value(&w.settings.doc).expect("settings");
        settings["practice_name"] = json!("Lost Practice");
        let published = w.published.clone();
        w.faults = vec!["commit"];
        let (tx, rx) = crossbeam_channel::unbounded();
        let thread = std::thread::spawn(move || w.run(rx));
        let ask = |v: Value| {
            let (reply, answer) = crossbeam_channel::bounded(1);
            let command = serde_json::from_value(v).expect("a command");
            tx.send(Request::Command { command, reply })
                .expect("the worker is listening");
            answer.recv_timeout(Duration::from_secs(30))
        };
        assert!(
            ask(json!({"command": "settings.update", "settings": settings})).is_err(),
            "no reply from a lost round"
        );
        assert_eq!(name(&published.read()), before);
        let seen = ask(json!({"command": "settings.get"}))
            .expect("a reply")
            .expect("read");
        assert_eq!(seen["practice_name"], json!(before));
        drop(tx);
        thread.join().expect("the worker stops");
    }

    /// A defect in reading the automations and settings again, after a
    /// defect rolled a round back, does not take the worker down.
    #[test]
    fn a_panic_while_recovering_from_a_panic_leaves_the_worker_running() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut w = worker(&dir);
        w.faults = vec!["commit", "reload"];
        let (tx, rx) = crossbeam_channel::unbounded();
        let thread = std::thread::spawn(move || w.run(rx));
        assert!(command(&tx, "lost").is_err(), "no reply from a lost round");
        command(&tx, "kept").expect("a reply").expect("created");
        drop(tx);
        thread.join().expect("the worker stops");
    }

    #[test]
    fn a_panic_in_the_workers_loop_rolls_back_its_turn_and_the_worker_goes_on() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut w = worker(&dir);
        w.faults = vec!["commit", "dispatch", "run_due"];
        let clock = w.clock.clone();
        let (tx, rx) = crossbeam_channel::unbounded();
        let thread = std::thread::spawn(move || w.run(rx));

        // The first round panics before its commit: the command's reply is
        // dropped, and nothing of it is kept.
        assert!(command(&tx, "lost").is_err(), "no reply from a failed turn");
        // The transaction was rolled back: the next round begins its own,
        // commits, and answers; then dispatch panics after the reply.
        command(&tx, "kept").expect("a reply").expect("created");
        command(&tx, "after-dispatch")
            .expect("a reply")
            .expect("created");
        // A clock advance whose scheduled work panics is answered with an
        // internal error, not dropped.
        let (reply, done) = crossbeam_channel::bounded(1);
        tx.send(Request::AdvanceBy { by: 1_000, reply })
            .expect("the worker is listening");
        let r = done
            .recv_timeout(Duration::from_secs(30))
            .expect("answered");
        assert!(matches!(r, Err(Error::Internal(_))), "{r:?}");
        // It stopped before any work: the clock stays where it was, not
        // at the advance's end.
        let before = clock.now();
        command(&tx, "after-advance")
            .expect("a reply")
            .expect("created");
        assert_eq!(before, 0, "the clock started at 0");

        let conn = stopped(&tx, thread, &dir);
        let ids: Vec<String> = conn
            .prepare("SELECT id FROM lists ORDER BY id")
            .expect("prepare")
            .query_map([], |r| r.get(0))
            .expect("query")
            .collect::<std::result::Result<_, _>>()
            .expect("rows");
        assert_eq!(ids, ["after-advance", "after-dispatch", "kept"]);
    }

    #[test]
    fn a_panic_in_a_request_is_an_internal_error_that_rolls_back_only_that_request() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut w = worker(&dir);
        for lone in [false, true] {
            w.conn.execute_batch("BEGIN IMMEDIATE").expect("begin");
            w.lone_write = lone;
            let before = lists(&w);
            if !lone {
                w.in_savepoint(|w| add_list(w, &format!("kept-{lone}")))
                    .expect("a good request");
            }
            let r: Result<()> = w.in_savepoint(|w| {
                add_list(w, &format!("lost-{lone}"))?;
                panic!("a defect");
            });
            assert!(matches!(r, Err(Error::Internal(_))), "{r:?}");
            // The transaction is still usable and holds the good request only.
            w.in_savepoint(|w| add_list(w, &format!("after-{lone}")))
                .expect("the next request");
            w.conn.execute_batch("COMMIT").expect("commit");
            let kept = if lone { 1 } else { 2 };
            assert_eq!(lists(&w), before + kept, "lone write: {lone}");
            let lost: i64 = w
                .conn
                .query_row(
                    "SELECT count(*) FROM lists WHERE id LIKE 'lost-%'",
                    [],
                    |r| r.get(0),
                )
                .expect("count");
            assert_eq!(lost, 0, "lone write: {lone}");
        }
    }

    #[test]
    fn a_transaction_rolled_back_by_sqlite_fails_the_whole_round_and_keeps_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut w = worker(&dir);
        // The second of three requests meets a full disk, and SQLite rolls
        // back the round's whole transaction.
        w.abort_request = Some(1);
        let mut answers = Vec::new();
        let batch: Vec<Request> = ["a", "b", "c"]
            .into_iter()
            .map(|id| {
                let (reply, rx) = crossbeam_channel::bounded(1);
                answers.push(rx);
                Request::Command {
                    command: list_create(id),
                    reply,
                }
            })
            .collect();
        assert!(w.round(batch).is_empty());
        for (id, rx) in ["a", "b", "c"].into_iter().zip(&answers) {
            let r = rx.try_recv().expect("answered");
            assert!(matches!(r, Err(Error::Storage(_))), "{id}: {r:?}");
        }
        assert!(w.conn.is_autocommit(), "no transaction left open");
        assert_eq!(lists(&w), 0, "nothing of the round was kept");
        // The next round runs as usual.
        let (reply, rx) = crossbeam_channel::bounded(1);
        w.round(vec![Request::Command {
            command: list_create("d"),
            reply,
        }]);
        rx.try_recv().expect("answered").expect("created");
        assert_eq!(lists(&w), 1);
    }

    /// The round's one write fails after writing, and its rollback fails
    /// too: the round is lost, not committed with the request's writes.
    #[test]
    fn a_lone_request_whose_rollback_fails_keeps_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut w = worker(&dir);
        let answer = |w: &mut Worker, command: Value| {
            let (reply, rx) = crossbeam_channel::bounded(1);
            let command: Command = serde_json::from_value(command).expect("a command");
            w.round(vec![Request::Command { command, reply }]);
            rx.try_recv().expect("answered")
        };
        answer(
            &mut w,
            json!({"command": "list.create", "list_id": "l", "name": "L"}),
        )
        .expect("a list");
        push_contact(&mut w, "c1", "p1");
        // p1 joins, then the unknown contact fails the command.
        w.faults = vec!["lone_rollback"];
        let r = answer(
            &mut w,
            json!({"command": "list.add_contacts", "list_id": "l", "contact_ids": ["p1", "nobody"]}),
        );
        assert!(r.is_err(), "{r:?}");
        assert!(w.conn.is_autocommit(), "no transaction left open");
        let members: i64 = w
            .conn
            .query_row("SELECT count(*) FROM list_members", [], |r| r.get(0))
            .expect("count");
        assert_eq!(members, 0, "the failed command's join was committed");
    }

    /// Stops the worker running on `thread` and opens its database to read.
    fn stopped(
        tx: &Sender<Request>,
        thread: std::thread::JoinHandle<()>,
        dir: &tempfile::TempDir,
    ) -> Connection {
        tx.send(Request::Shutdown).expect("shutdown");
        thread.join().expect("the worker thread ends normally");
        crate::store::open(&dir.path().join("w.db"), crate::store::Access::Read).expect("open")
    }

    fn request<T>(
        tx: &Sender<Request>,
        make: impl FnOnce(Sender<Result<T>>) -> Request,
    ) -> Result<T> {
        let (reply, rx) = crossbeam_channel::bounded(1);
        tx.send(make(reply)).expect("the worker is listening");
        rx.recv_timeout(Duration::from_secs(30)).expect("answered")
    }

    #[test]
    fn a_failed_date_evaluation_moves_to_its_next_window_start() {
        use crate::clock::{DAY, HOUR};
        let dir = tempfile::tempdir().expect("temp dir");
        // Friday 2 January 1970, 00:00 UTC; the default window is Monday to
        // Friday from 09:00 (UTC, the default time zone).
        let mut w = worker_at(&dir, DAY);
        w.faults = vec!["run_item"];
        let (tx, rx) = crossbeam_channel::unbounded();
        let thread = std::thread::spawn(move || w.run(rx));
        for text in [
            r#"{"command": "automation.create", "automation_id": "b", "definition": {
                "name": "Birthday", "trigger": {"type": "birthday", "offset": "on_the_day"},
                "steps": [{"id": "call", "type": "create_task", "title": "Call", "assignee": {"kind": "queue", "name": "desk"}}]}}"#,
            r#"{"command": "automation.activate", "automation_id": "b"}"#,
        ] {
            let command: Command = serde_json::from_str(text).expect("a command");
            request(&tx, |reply| Request::Command { command, reply }).expect("done");
        }
        // Friday 09:00's evaluation fails.
        request(&tx, |reply| Request::AdvanceBy { by: DAY, reply }).expect("advanced");
        let conn = stopped(&tx, thread, &dir);
        let next: i64 = conn
            .query_row(
                "SELECT next_eval_at FROM automations WHERE id = 'b'",
                [],
                |r| r.get(0),
            )
            .expect("next evaluation");
        assert_eq!(
            next,
            4 * DAY + 9 * HOUR,
            "not Monday 09:00 (Saturday: {})",
            2 * DAY + 9 * HOUR
        );
    }

    #[test]
    fn each_failed_scheduled_item_keeps_its_exit_in_the_log() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut w = worker(&dir);
        // The first two of three due items fail; each is quarantined and
        // keeps its exit row through the other's rollback.
        w.faults = vec!["run_item", "run_item"];
        let (tx, rx) = crossbeam_channel::unbounded();
        let thread = std::thread::spawn(move || w.run(rx));
        for text in [
            r#"{"command": "automation.create", "automation_id": "a", "definition": {
                "name": "Later", "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
                "steps": [{"id": "wait", "type": "delay", "amount": 1, "unit": "hours"},
                          {"id": "call", "type": "create_task", "title": "Call", "assignee": {"kind": "queue", "name": "desk"}}]}}"#,
            r#"{"command": "automation.activate", "automation_id": "a"}"#,
        ] {
            let command: Command = serde_json::from_str(text).expect("a command");
            request(&tx, |reply| Request::Command { command, reply }).expect("done");
        }
        let events = Event::parse_batch(
            &json!(
                (0..3)
                    .map(
                        |i| json!({"event_id": format!("c{i}"), "type": "contact.upserted",
                                "contact": {"id": format!("p{i}"), "first_name": "Pat"}})
                    )
                    .collect::<Vec<_>>()
            )
            .to_string(),
        )
        .expect("events");
        request(&tx, |reply| Request::Push { events, reply }).expect("pushed");
        request(&tx, |reply| Request::AdvanceBy {
            by: 2 * crate::clock::HOUR,
            reply,
        })
        .expect("advanced");
        let conn = stopped(&tx, thread, &dir);
        let count = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).expect("count") };
        assert_eq!(
            count(
                "SELECT count(*) FROM events WHERE kind = 'exited' AND json_extract(detail, '$.reason') = 'error'"
            ),
            2
        );
        assert_eq!(
            count("SELECT count(*) FROM enrollments WHERE exit_reason = 'error'"),
            2
        );
        assert_eq!(count("SELECT count(*) FROM tasks"), 1, "the third item ran");
    }
    /// A clock advance whose scheduled work is rolled back (its commit
    /// failed) leaves the manual clock where the committed work left it:
    /// the items run again later at their own instants, not at the last
    /// instant the failed chunk reached.
    #[test]
    fn a_rolled_back_chunk_of_scheduled_work_leaves_the_clock_behind_it() {
        use crate::clock::HOUR;
        let dir = tempfile::tempdir().expect("temp dir");
        let mut w = worker(&dir);
        w.faults = vec!["due_commit"];
        let clock = w.clock.clone();
        let (tx, rx) = crossbeam_channel::unbounded();
        let thread = std::thread::spawn(move || w.run(rx));
        for (id, hours) in [("a1", 1), ("a2", 2)] {
            for text in [
                json!({"command": "automation.create", "automation_id": id, "definition": {
                    "name": id, "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
                    "steps": [{"id": "wait", "type": "delay", "amount": hours, "unit": "hours"},
                              {"id": "call", "type": "create_task", "title": "Call",
                               "assignee": {"kind": "queue", "name": "desk"}}]}}),
                json!({"command": "automation.activate", "automation_id": id}),
            ] {
                let command: Command = serde_json::from_value(text).expect("a command");
                request(&tx, |reply| Request::Command { command, reply }).expect("done");
            }
        }
        let events = Event::parse_batch(
            r#"[{"event_id": "c1", "type": "contact.upserted", "contact": {"id": "p1"}}]"#,
        )
        .expect("events");
        request(&tx, |reply| Request::Push { events, reply }).expect("pushed");
        // Both delays end in one chunk, whose commit fails.
        let failed = request(&tx, |reply| Request::AdvanceBy {
            by: 3 * HOUR,
            reply,
        });
        assert!(matches!(failed, Err(Error::Internal(_))), "{failed:?}");
        assert_eq!(clock.now(), 0, "the clock moved past work rolled back");
        request(&tx, |reply| Request::AdvanceBy {
            by: 3 * HOUR,
            reply,
        })
        .expect("advanced");
        let conn = stopped(&tx, thread, &dir);
        let tasks: Vec<(String, i64)> = conn
            .prepare(
                "SELECT automation_id, at FROM events WHERE kind = 'step_executed' AND step_id = 'call'
                  ORDER BY automation_id",
            )
            .expect("prepare")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query")
            .collect::<std::result::Result<_, _>>()
            .expect("rows");
        assert_eq!(tasks, [("a1".into(), HOUR), ("a2".into(), 2 * HOUR)]);
    }
}
