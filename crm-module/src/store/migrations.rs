//! Versioned schema migrations. Each entry runs once, in order, inside one
//! transaction with the `user_version` bump; a database newer than this build
//! is refused rather than misread.
//!
//! Foreign keys are on while they run, and SQLite cannot turn them off
//! inside a transaction. A table rebuilt by copying (6 and 8 rebuild
//! `enrollments`, `outbox` and `appointments`) must therefore be one no
//! other table references: dropping `contacts`, `automations`, `forms` or
//! `lists` for a copy would fail on a database with rows while passing on
//! an empty one. Such a rebuild needs its own step with foreign keys off
//! outside the transaction and `PRAGMA foreign_key_check` before it
//! commits. A new migration that moves rows gets a test on a database
//! that holds some (as `rows_written_before_the_table_rebuilds_come_through_every_migration`).

use rusqlite::Connection;

use crate::error::{Error, Result};

/// The migrations, oldest first. Never edit a released entry: append a new one.
pub const MIGRATIONS: &[&str] = &[
    // 1: the engine's first schema (issue 2).
    r#"
CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;

-- Idempotent ingestion: one row per host event id ever accepted.
CREATE TABLE ingested_events (
    event_id    TEXT PRIMARY KEY,
    type        TEXT NOT NULL,
    received_at INTEGER NOT NULL
) STRICT;

CREATE TABLE contacts (
    id                     TEXT PRIMARY KEY,
    props                  TEXT NOT NULL,           -- JSON object: host + custom properties
    status                 TEXT NOT NULL DEFAULT 'lead' CHECK (status IN ('lead','patient')),
    email                  TEXT,
    phone                  TEXT,
    dob                    TEXT,                    -- YYYY-MM-DD
    email_subscription     TEXT NOT NULL DEFAULT 'unknown',
    sms_subscription       TEXT NOT NULL DEFAULT 'unknown',
    insurance_verification TEXT,
    portal_active          INTEGER NOT NULL DEFAULT 0,
    created_at             INTEGER NOT NULL,
    last_activity          INTEGER NOT NULL,
    last_engaged_at        INTEGER,                 -- last contact-initiated activity
    source_updated_at      INTEGER                  -- host time of the newest applied update
) STRICT;
CREATE INDEX contacts_phone ON contacts(phone) WHERE phone IS NOT NULL;
CREATE INDEX contacts_email ON contacts(email) WHERE email IS NOT NULL;
CREATE INDEX contacts_birthday ON contacts(substr(dob, 6, 5)) WHERE dob IS NOT NULL;
CREATE INDEX contacts_last_activity ON contacts(last_activity);

CREATE TABLE subscription_audit (
    id          INTEGER PRIMARY KEY,
    contact_id  TEXT NOT NULL REFERENCES contacts(id),
    channel     TEXT NOT NULL CHECK (channel IN ('email','sms')),
    old_value   TEXT NOT NULL,
    new_value   TEXT NOT NULL,
    actor       TEXT NOT NULL,                      -- host, automation:<id>, contact, staff:<id>
    reason      TEXT NOT NULL,                      -- stop_reply, unsubscribe_link, staff, import, ...
    message_key TEXT,
    at          INTEGER NOT NULL
) STRICT;
CREATE INDEX subscription_audit_contact ON subscription_audit(contact_id, at);

CREATE TABLE appointments (
    id          TEXT PRIMARY KEY,
    contact_id  TEXT NOT NULL REFERENCES contacts(id),
    status      TEXT NOT NULL CHECK (status IN ('booked','rescheduled','cancelled','completed','no_show')),
    starts_at   INTEGER,
    provider_id TEXT,
    clinic_id   TEXT,
    updated_at  INTEGER NOT NULL
) STRICT;
CREATE INDEX appointments_contact ON appointments(contact_id);

CREATE TABLE forms (
    id   TEXT PRIMARY KEY,
    name TEXT NOT NULL
) STRICT;

CREATE TABLE form_submissions (
    id           TEXT PRIMARY KEY,
    form_id      TEXT NOT NULL REFERENCES forms(id),
    contact_id   TEXT NOT NULL REFERENCES contacts(id),
    answers      TEXT NOT NULL,
    submitted_at INTEGER NOT NULL
) STRICT;
CREATE INDEX form_submissions_contact ON form_submissions(contact_id);

CREATE TABLE reviews (
    id           TEXT PRIMARY KEY,
    contact_id   TEXT NOT NULL REFERENCES contacts(id),
    source       TEXT NOT NULL,
    rating       INTEGER,
    submitted_at INTEGER NOT NULL
) STRICT;

CREATE TABLE lists (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    kind       TEXT NOT NULL DEFAULT 'static',
    created_at INTEGER NOT NULL,
    deleted_at INTEGER
) STRICT;

CREATE TABLE list_members (
    list_id    TEXT NOT NULL REFERENCES lists(id),
    contact_id TEXT NOT NULL REFERENCES contacts(id),
    added_at   INTEGER NOT NULL,
    source     TEXT NOT NULL,
    PRIMARY KEY (list_id, contact_id)
) STRICT, WITHOUT ROWID;
CREATE INDEX list_members_contact ON list_members(contact_id);

CREATE TABLE automations (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('draft','active','inactive')),
    current_version INTEGER NOT NULL,
    entered_by      TEXT NOT NULL,
    updated_by      TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    activated_at    INTEGER,
    next_eval_at    INTEGER,                        -- next date-based trigger evaluation
    deleted_at      INTEGER
) STRICT;

CREATE TABLE automation_versions (
    automation_id TEXT NOT NULL REFERENCES automations(id),
    version       INTEGER NOT NULL,
    definition    TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (automation_id, version)
) STRICT;

CREATE TABLE enrollments (
    id               INTEGER PRIMARY KEY,
    automation_id    TEXT NOT NULL REFERENCES automations(id),
    contact_id       TEXT NOT NULL REFERENCES contacts(id),
    enrolled_version INTEGER NOT NULL,              -- version at enrollment
    version          INTEGER NOT NULL,              -- version it runs now
    state            TEXT NOT NULL CHECK (state IN ('active','completed','exited')),
    step_id          TEXT,                          -- current step; NULL at End
    step_phase       TEXT NOT NULL DEFAULT 'ready' CHECK (step_phase IN ('ready','waiting')),
    step_started_at  INTEGER,
    wake_at          INTEGER,                       -- when the current step is due again
    enrolled_at      INTEGER NOT NULL,
    ended_at         INTEGER,
    exit_reason      TEXT,
    goal_reached_at  INTEGER
) STRICT;
CREATE UNIQUE INDEX enrollments_one_active ON enrollments(automation_id, contact_id) WHERE state = 'active';
CREATE INDEX enrollments_contact ON enrollments(contact_id, enrolled_at);
CREATE INDEX enrollments_automation ON enrollments(automation_id, state);
CREATE INDEX enrollments_due ON enrollments(wake_at, id) WHERE state = 'active' AND wake_at IS NOT NULL;

-- Marks for triggers that fire once: per contact ever, per year, per dormancy period.
CREATE TABLE trigger_marks (
    automation_id TEXT NOT NULL,
    contact_id    TEXT NOT NULL,
    mark          TEXT NOT NULL,
    at            INTEGER NOT NULL,
    PRIMARY KEY (automation_id, contact_id, mark)
) STRICT, WITHOUT ROWID;

-- Every effect that leaves the module, written with the state change that caused it.
CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY,
    idempotency_key TEXT NOT NULL UNIQUE,
    kind            TEXT NOT NULL CHECK (kind IN ('message','property','task')),
    payload         TEXT NOT NULL,
    contact_id      TEXT,
    automation_id   TEXT,
    enrollment_id   INTEGER,
    step_id         TEXT,
    channel         TEXT,
    asset_id        TEXT,
    status          TEXT NOT NULL CHECK (status IN ('pending','retry','accepted','failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    last_error      TEXT
) STRICT;
CREATE INDEX outbox_due ON outbox(next_attempt_at, id) WHERE status IN ('pending','retry');
CREATE INDEX outbox_contact ON outbox(contact_id, channel, created_at);

CREATE TABLE tasks (
    id              INTEGER PRIMARY KEY,
    idempotency_key TEXT NOT NULL UNIQUE,
    contact_id      TEXT NOT NULL,
    automation_id   TEXT,
    enrollment_id   INTEGER,
    title           TEXT NOT NULL,
    assignee        TEXT NOT NULL,                  -- JSON
    due_at          INTEGER NOT NULL,
    created_at      INTEGER NOT NULL
) STRICT;

-- Append-only event log: the source of every analytics figure.
CREATE TABLE events (
    id            INTEGER PRIMARY KEY,
    at            INTEGER NOT NULL,
    kind          TEXT NOT NULL,
    contact_id    TEXT,
    automation_id TEXT,
    version       INTEGER,
    enrollment_id INTEGER,
    step_id       TEXT,
    channel       TEXT,
    message_key   TEXT,
    detail        TEXT
) STRICT;
CREATE INDEX events_automation ON events(automation_id, kind, at) WHERE automation_id IS NOT NULL;
CREATE INDEX events_enrollment ON events(enrollment_id, step_id, kind) WHERE enrollment_id IS NOT NULL;
CREATE INDEX events_contact ON events(contact_id, at);
"#,
    // 2: per-step and per-channel counts of the performance view read only the index.
    r#"
CREATE INDEX events_automation_step ON events(automation_id, kind, step_id, channel) WHERE automation_id IS NOT NULL;
"#,
    // 3: inbound SMS are matched on the last 10 digits of the number, through an index.
    r#"
ALTER TABLE contacts ADD COLUMN phone_key TEXT;
UPDATE contacts SET phone_key = substr(replace(replace(replace(replace(replace(replace(phone,
    ' ', ''), '+', ''), '-', ''), '(', ''), ')', ''), '.', ''), -10) WHERE phone IS NOT NULL;
CREATE INDEX contacts_phone_key ON contacts(phone_key) WHERE phone_key IS NOT NULL;
"#,
    // 4: saved templates, custom property names for template validation,
    // numbered messages and their links for tracking.
    r#"
CREATE TABLE templates (
    id          TEXT PRIMARY KEY,
    channel     TEXT NOT NULL CHECK (channel IN ('email','sms')),
    name        TEXT NOT NULL,
    subject     TEXT NOT NULL DEFAULT '',
    preheader   TEXT NOT NULL DEFAULT '',
    html_body   TEXT NOT NULL DEFAULT '',
    text_body   TEXT,
    message     TEXT NOT NULL DEFAULT '',
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    deleted_at  INTEGER
) STRICT;

CREATE TABLE custom_properties (
    key        TEXT PRIMARY KEY,
    first_seen INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

CREATE TABLE messages (
    id          INTEGER PRIMARY KEY,
    key         TEXT NOT NULL UNIQUE,
    contact_id  TEXT NOT NULL,
    channel     TEXT NOT NULL,
    segments    INTEGER,
    created_at  INTEGER NOT NULL
) STRICT;

CREATE TABLE message_links (
    message_id INTEGER NOT NULL REFERENCES messages(id),
    idx        INTEGER NOT NULL,
    url        TEXT NOT NULL,
    PRIMARY KEY (message_id, idx)
) STRICT, WITHOUT ROWID;
"#,
    // 5: the sending-limit count (messages handed over per channel since a time)
    // runs on every dispatch round when limits are set: serve it from an index.
    r#"
CREATE INDEX outbox_handed_over ON outbox(channel, updated_at) WHERE kind = 'message' AND attempts > 0;
"#,
    // 6: WebAssembly plugins (issue 4): installed plugins and their call
    // figures; a custom step is an outbox effect of kind 'plugin_step' and its
    // enrollment waits in phase 'calling'. SQLite cannot change a CHECK
    // constraint in place, so enrollments and outbox are rebuilt (same
    // columns, same rows, same indexes).
    r#"
CREATE TABLE plugins (
    id           TEXT PRIMARY KEY,
    kind         TEXT NOT NULL CHECK (kind IN ('step','sender')),
    descriptor   TEXT NOT NULL,                     -- JSON: what the plugin declares
    wasm         BLOB NOT NULL,                     -- the component
    sha256       TEXT NOT NULL,
    grants       TEXT NOT NULL,                     -- JSON list of origins
    limits       TEXT NOT NULL,                     -- JSON
    config       TEXT NOT NULL,                     -- JSON object of strings
    secrets      TEXT NOT NULL,                     -- JSON object of strings
    enabled      INTEGER NOT NULL,
    installed_at INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
) STRICT;

CREATE TABLE plugin_stats (
    plugin_id       TEXT NOT NULL,
    operation       TEXT NOT NULL,                  -- step type id, or 'send'
    calls           INTEGER NOT NULL,
    failures        INTEGER NOT NULL,
    total_micros    INTEGER NOT NULL,
    max_micros      INTEGER NOT NULL,
    last_failure    TEXT,
    last_failure_at INTEGER,
    last_call_at    INTEGER,
    PRIMARY KEY (plugin_id, operation)
) STRICT, WITHOUT ROWID;

CREATE TABLE enrollments_v6 (
    id               INTEGER PRIMARY KEY,
    automation_id    TEXT NOT NULL REFERENCES automations(id),
    contact_id       TEXT NOT NULL REFERENCES contacts(id),
    enrolled_version INTEGER NOT NULL,
    version          INTEGER NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('active','completed','exited')),
    step_id          TEXT,
    step_phase       TEXT NOT NULL DEFAULT 'ready' CHECK (step_phase IN ('ready','waiting','calling')),
    step_started_at  INTEGER,
    wake_at          INTEGER,
    enrolled_at      INTEGER NOT NULL,
    ended_at         INTEGER,
    exit_reason      TEXT,
    goal_reached_at  INTEGER
) STRICT;
INSERT INTO enrollments_v6 SELECT * FROM enrollments;
DROP TABLE enrollments;
ALTER TABLE enrollments_v6 RENAME TO enrollments;
CREATE UNIQUE INDEX enrollments_one_active ON enrollments(automation_id, contact_id) WHERE state = 'active';
CREATE INDEX enrollments_contact ON enrollments(contact_id, enrolled_at);
CREATE INDEX enrollments_automation ON enrollments(automation_id, state);
CREATE INDEX enrollments_due ON enrollments(wake_at, id) WHERE state = 'active' AND wake_at IS NOT NULL;

CREATE TABLE outbox_v6 (
    id              INTEGER PRIMARY KEY,
    idempotency_key TEXT NOT NULL UNIQUE,
    kind            TEXT NOT NULL CHECK (kind IN ('message','property','task','plugin_step')),
    payload         TEXT NOT NULL,
    contact_id      TEXT,
    automation_id   TEXT,
    enrollment_id   INTEGER,
    step_id         TEXT,
    channel         TEXT,
    asset_id        TEXT,
    status          TEXT NOT NULL CHECK (status IN ('pending','retry','accepted','failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    last_error      TEXT
) STRICT;
INSERT INTO outbox_v6 SELECT * FROM outbox;
DROP TABLE outbox;
ALTER TABLE outbox_v6 RENAME TO outbox;
CREATE INDEX outbox_due ON outbox(next_attempt_at, id) WHERE status IN ('pending','retry');
CREATE INDEX outbox_contact ON outbox(contact_id, channel, created_at);
CREATE INDEX outbox_handed_over ON outbox(channel, updated_at) WHERE kind = 'message' AND attempts > 0;
"#,
    // 7 (ingest-perf): fewer index entries per event-log row, and an index for
    // the SMS first-in-thread check. Every event-log row used to
    // go into four indexes. `events_contact` served no query; `events_enrollment`
    // serves only the If/then step-engagement condition, which asks for opens,
    // clicks and replies, so it keeps only those rows; the two per-automation
    // indexes become one, in the order of the per-step counts of the
    // performance view (its day-by-day timeline now reads the automation's
    // counted kinds from the index without the `at` range seek).
    r#"
DROP INDEX events_contact;
DROP INDEX events_enrollment;
DROP INDEX events_automation_step;
DROP INDEX events_automation;
CREATE INDEX events_automation ON events(automation_id, kind, step_id, channel, at) WHERE automation_id IS NOT NULL;
-- ORs, not IN: SQLite evaluates a partial index's WHERE on every insert, and an
-- IN list of more than two constants builds a temporary index each time.
CREATE INDEX events_step_engagement ON events(enrollment_id, step_id, kind)
    WHERE kind = 'message_opened' OR kind = 'message_clicked' OR kind = 'message_replied';
-- Whether an SMS is the first of its thread was a scan of every message ever numbered.
CREATE INDEX messages_contact ON messages(contact_id, channel);
"#,
    // 8 (ingest-cpu): CHECK constraints as ORs. `CHECK (x IN (...))` with more
    // than two constants makes SQLite build a temporary b-tree of the list on
    // every INSERT (and every UPDATE of the column): two per new enrollment and
    // per outbox row, one per enrollment move and per appointment. `x = 'a' OR
    // x = 'b'` accepts and refuses exactly the same values (NULL included)
    // without one. SQLite cannot change a CHECK in place, so the three tables
    // are rebuilt as in migration 6 (same columns, same rows, same indexes).
    // `automations.status` keeps its IN: the table is written by commands only,
    // and it is referenced by foreign keys, which a rebuild would trip.
    r#"
CREATE TABLE enrollments_v8 (
    id               INTEGER PRIMARY KEY,
    automation_id    TEXT NOT NULL REFERENCES automations(id),
    contact_id       TEXT NOT NULL REFERENCES contacts(id),
    enrolled_version INTEGER NOT NULL,
    version          INTEGER NOT NULL,
    state            TEXT NOT NULL CHECK (state = 'active' OR state = 'completed' OR state = 'exited'),
    step_id          TEXT,
    step_phase       TEXT NOT NULL DEFAULT 'ready'
                     CHECK (step_phase = 'ready' OR step_phase = 'waiting' OR step_phase = 'calling'),
    step_started_at  INTEGER,
    wake_at          INTEGER,
    enrolled_at      INTEGER NOT NULL,
    ended_at         INTEGER,
    exit_reason      TEXT,
    goal_reached_at  INTEGER
) STRICT;
INSERT INTO enrollments_v8 SELECT * FROM enrollments;
DROP TABLE enrollments;
ALTER TABLE enrollments_v8 RENAME TO enrollments;
CREATE UNIQUE INDEX enrollments_one_active ON enrollments(automation_id, contact_id) WHERE state = 'active';
CREATE INDEX enrollments_contact ON enrollments(contact_id, enrolled_at);
CREATE INDEX enrollments_automation ON enrollments(automation_id, state);
CREATE INDEX enrollments_due ON enrollments(wake_at, id) WHERE state = 'active' AND wake_at IS NOT NULL;

CREATE TABLE outbox_v8 (
    id              INTEGER PRIMARY KEY,
    idempotency_key TEXT NOT NULL UNIQUE,
    kind            TEXT NOT NULL
                    CHECK (kind = 'message' OR kind = 'property' OR kind = 'task' OR kind = 'plugin_step'),
    payload         TEXT NOT NULL,
    contact_id      TEXT,
    automation_id   TEXT,
    enrollment_id   INTEGER,
    step_id         TEXT,
    channel         TEXT,
    asset_id        TEXT,
    status          TEXT NOT NULL
                    CHECK (status = 'pending' OR status = 'retry' OR status = 'accepted' OR status = 'failed'),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    last_error      TEXT
) STRICT;
INSERT INTO outbox_v8 SELECT * FROM outbox;
DROP TABLE outbox;
ALTER TABLE outbox_v8 RENAME TO outbox;
-- Two constants: no temporary b-tree. The dispatcher's queries say the same
-- `status IN ('pending','retry')`, which is what lets them use this index.
CREATE INDEX outbox_due ON outbox(next_attempt_at, id) WHERE status IN ('pending','retry');
CREATE INDEX outbox_contact ON outbox(contact_id, channel, created_at);
CREATE INDEX outbox_handed_over ON outbox(channel, updated_at) WHERE kind = 'message' AND attempts > 0;

CREATE TABLE appointments_v8 (
    id          TEXT PRIMARY KEY,
    contact_id  TEXT NOT NULL REFERENCES contacts(id),
    status      TEXT NOT NULL CHECK (status = 'booked' OR status = 'rescheduled' OR status = 'cancelled'
                                     OR status = 'completed' OR status = 'no_show'),
    starts_at   INTEGER,
    provider_id TEXT,
    clinic_id   TEXT,
    updated_at  INTEGER NOT NULL
) STRICT;
INSERT INTO appointments_v8 SELECT * FROM appointments;
DROP TABLE appointments;
ALTER TABLE appointments_v8 RENAME TO appointments;
CREATE INDEX appointments_contact ON appointments(contact_id);
"#,
    // 9: the outbox's due rows indexed by lane (kind and channel) first. The
    // dispatcher asks per lane it can hand over now (no host: custom steps
    // and adapter channels only; a channel over its sending limit: not that
    // channel), so each question is an index probe; ordered by time alone, a
    // lane that could not go (an absent host, a limited channel) was scanned
    // row by row in every worker loop.
    r#"
DROP INDEX outbox_due;
CREATE INDEX outbox_due ON outbox(kind, channel, next_attempt_at, id) WHERE status IN ('pending','retry');
"#,
    // 10: a message's bounces, suppressions and failures by its key. A
    // receipt counts the message's soft bounces, and a hard bounce asks
    // whether its fallback was already tried: both read the whole event log
    // without it. Only these rare rows enter the index.
    r#"
CREATE INDEX events_message_outcome ON events(message_key, kind)
    WHERE kind = 'message_bounced' OR kind = 'message_suppressed' OR kind = 'message_failed';
"#,
    // 11: the performance view's reads that went past `events_automation`.
    // - Consent changes caused by a message (an SMS STOP, an unsubscribe
    //   link) by the message's key: counting an automation's opt-outs scanned
    //   the whole event log. The condition reads no JSON: it is evaluated
    //   for every event written.
    // - Completed steps' duration and branch path by automation and step, so
    //   that their averages are read from the index alone, not from every
    //   row's JSON.
    r#"
CREATE INDEX events_opt_outs ON events(message_key)
    WHERE message_key IS NOT NULL AND (kind = 'sms_opt_out' OR kind = 'subscription_changed');
CREATE INDEX events_step_completed ON events(
    automation_id, kind, step_id, json_extract(detail, '$.duration_ms'), json_extract(detail, '$.path'))
    WHERE kind = 'step_completed';
"#,
    // 12: one count per message. The figures count events; these kinds
    // make every counted event a distinct fact:
    // - opens and clicks from privacy proxies and link scanners are not
    //   engagement (`message_opened_by_machine`, `message_clicked_by_machine`);
    // - a message's first open, click and reply count; later ones are
    //   `message_opened_again`, `message_clicked_again`, `message_replied_again`;
    // - a receipt after a delivery or a hard bounce (both final) is
    //   `receipt_repeated`, except a bounce after a delivery, which counts
    //   and revokes it (`message_delivery_revoked`).
    // The index answers "what has this message had already" for each new
    // engagement or receipt. Each message's first open, click and reply is
    // found in one grouped pass (a correlated lookup per row could not use
    // the index, whose WHERE names the kinds: quadratic in the log's size).
    r#"
UPDATE events SET kind = kind || '_by_machine'
    WHERE (kind = 'message_opened' OR kind = 'message_clicked')
      AND json_extract(detail, '$.machine') IS NOT NULL;
CREATE INDEX events_message_history ON events(message_key, kind)
    WHERE message_key IS NOT NULL AND (kind = 'message_delivered' OR kind = 'message_bounced'
      OR kind = 'message_opened' OR kind = 'message_clicked' OR kind = 'message_replied');
UPDATE events SET kind = kind || '_again'
    WHERE message_key IS NOT NULL
      AND (kind = 'message_opened' OR kind = 'message_clicked' OR kind = 'message_replied')
      AND id NOT IN (SELECT min(id) FROM events WHERE message_key IS NOT NULL
            AND (kind = 'message_opened' OR kind = 'message_clicked' OR kind = 'message_replied')
            GROUP BY message_key, kind);
"#,
    // 13: numbers that said STOP (`core::stopped_numbers`). SMS consent
    // belongs to the number: a STOP from a number no contact has yet, or
    // from a family phone, reaches every contact who has (or later gets)
    // it. Filled from the contacts whose SMS opt-out is their own STOP.
    r#"
CREATE TABLE stopped_numbers (
    phone_key  TEXT PRIMARY KEY,   -- contacts::phone_key of the number
    at         INTEGER NOT NULL,   -- when it said STOP
    event_id   TEXT NOT NULL       -- the inbound SMS that said it
) STRICT, WITHOUT ROWID;
INSERT OR IGNORE INTO stopped_numbers (phone_key, at, event_id)
    SELECT c.phone_key, a.at, 'migration'
    FROM contacts c JOIN subscription_audit a ON a.contact_id = c.id
    WHERE c.phone_key IS NOT NULL AND c.sms_subscription = 'unsubscribed'
      AND a.channel = 'sms' AND a.reason = 'stop_reply'
      AND a.id = (SELECT max(id) FROM subscription_audit l WHERE l.contact_id = c.id AND l.channel = 'sms');
"#,
    // 14: SMS threads by recipient number. The consent footer ("Reply STOP
    // to opt out") goes on the first message to a number; that was the
    // first message to a contact, so a contact's new number never got it.
    // Filled from the SMS sent so far, to the contacts' numbers as they are.
    r#"
CREATE TABLE sms_threads (
    phone_key  TEXT PRIMARY KEY,   -- contacts::phone_key of the recipient
    first_key  TEXT NOT NULL,      -- the message that opened the thread
    at         INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
INSERT OR IGNORE INTO sms_threads (phone_key, first_key, at)
    SELECT c.phone_key, m.key, m.created_at
    FROM messages m JOIN contacts c ON c.id = m.contact_id
    WHERE m.channel = 'sms' AND c.phone_key IS NOT NULL
    ORDER BY m.id;
"#,
    // 15: what each ingested event said (a digest of its type, time and
    // body), so that an event id used again for another event is refused
    // instead of being taken for a duplicate and lost. NULL for the events
    // ingested before: those ids stay plain duplicates.
    r#"
ALTER TABLE ingested_events ADD COLUMN fingerprint BLOB;
"#,
    // 16: the steps an enrollment has run, kept only once an edit migrated
    // it to a newer version (a JSON array of step ids; NULL before). An
    // edit can move a step the contact already ran after its position;
    // without the list it ran again (a second message under the first
    // one's key, counted twice).
    r#"
ALTER TABLE enrollments ADD COLUMN ran_steps TEXT;
"#,
    // 17: when the change an appointment row holds happened (the event's
    // `occurred_at`), so that an older change arriving late ("booked" after
    // "cancelled") does not overwrite a newer one. NULL for the rows written
    // before: the next change to them is taken as it comes.
    r#"
ALTER TABLE appointments ADD COLUMN changed_at INTEGER;
"#,
    // 18: enrollments of a paused automation leave the wake-up index
    // (`held`, set while their automation is Inactive). In it, the ones
    // overdue sat at its head, and every look for due work (once per item
    // run, once per worker turn) read past all of them first.
    r#"
ALTER TABLE enrollments ADD COLUMN held INTEGER NOT NULL DEFAULT 0;
UPDATE enrollments SET held = 1 WHERE state = 'active'
   AND automation_id IN (SELECT id FROM automations WHERE status <> 'active');
DROP INDEX enrollments_due;
CREATE INDEX enrollments_due ON enrollments(wake_at, id) WHERE state = 'active' AND wake_at IS NOT NULL AND held = 0;
"#,
    // 19: the last practice-local day a Birthday evaluation covered, so the
    // next one starts the day after whatever the window or time zone became
    // in between (NULL: none since activation; the window decides).
    r#"
ALTER TABLE automations ADD COLUMN evaluated_through TEXT;
"#,
    // 20: when the module saw the contact become a Patient (a booking or
    // the host's update flipping Lead -> Patient), read by primary key when
    // deciding whether a booking is a Rebook: the event log has no index by
    // contact. Filled from the log's `status_changed` rows in one pass.
    r#"
ALTER TABLE contacts ADD COLUMN became_patient_at INTEGER;
UPDATE contacts SET became_patient_at = flips.at
  FROM (SELECT contact_id, max(at) AS at FROM events WHERE kind = 'status_changed' GROUP BY contact_id) AS flips
 WHERE flips.contact_id = contacts.id;
"#,
    // 21: the goals reached, by automation and by the goal each was (an edit
    // may change an automation's goal; its figures count the current one):
    // the list and the Performance tab count them from this index alone,
    // without reading each row's detail (`kind` is in it so that SQLite
    // sees the index covers the query). Only goal rows pay for it.
    r#"
CREATE INDEX events_goals ON events(automation_id, kind, json_extract(detail, '$.goal'), at)
    WHERE kind = 'goal_reached';
"#,
    // 22: what made the contact a Patient (`first_booking`, `host`,
    // `automation`), so that a Status an automation set is no booking: the
    // contact's first real booking after it is their first (Book
    // appointment), not a Rebook. Filled from each contact's latest
    // `status_changed` row in one pass over the log (SQLite takes the bare
    // column from the row of `max(at)`); automations' flips were not
    // logged before this version, so those stay NULL (taken as before).
    r#"
ALTER TABLE contacts ADD COLUMN became_patient_by TEXT;
UPDATE contacts SET became_patient_by = flips.by
  FROM (SELECT contact_id, json_extract(detail, '$.by') AS by, max(at)
          FROM events WHERE kind = 'status_changed' GROUP BY contact_id) AS flips
 WHERE flips.contact_id = contacts.id;
"#,
    // 23: when the insurance verification status stored happened (the
    // event's `occurred_at`), so that an older status arriving late
    // ("pending" after "verified") does not overwrite a newer one. NULL for
    // the statuses stored before: the next one is taken as it comes.
    r#"
ALTER TABLE contacts ADD COLUMN insurance_verification_at INTEGER;
"#,
    // 24: a thread by the message that opened it. An SMS that never
    // reached its number unopens the thread it opened
    // (`compose::unopen_thread`), which scanned every thread.
    r#"
CREATE INDEX sms_threads_first_key ON sms_threads(first_key);
"#,
    // 25: when a message was last handed to its sender, for the sending
    // limits (`messaging::limits`). They counted rows by `updated_at`,
    // which a hold for the sending hours, a delivery receipt or a
    // withdrawal also moves: each counted a message handed over long
    // before as handed over again. Filled from `updated_at`, the best
    // there is for the rows before.
    r#"
ALTER TABLE outbox ADD COLUMN handed_over_at INTEGER;
UPDATE outbox SET handed_over_at = updated_at WHERE attempts > 0;
DROP INDEX outbox_handed_over;
CREATE INDEX outbox_handed_over ON outbox(channel, handed_over_at)
    WHERE kind = 'message' AND handed_over_at IS NOT NULL;
"#,
    // 26: messages outside the sending limits (`outbox.exempt`): the
    // answers to STOP and HELP, which go at once, and staff's test sends.
    // They neither wait behind a channel over its limit (their own index,
    // read only then) nor count towards it.
    r#"
ALTER TABLE outbox ADD COLUMN exempt INTEGER NOT NULL DEFAULT 0;
UPDATE outbox SET exempt = 1
 WHERE kind = 'message' AND json_extract(payload, '$.category') IN ('compliance', 'test');
DROP INDEX outbox_handed_over;
CREATE INDEX outbox_handed_over ON outbox(channel, handed_over_at)
    WHERE kind = 'message' AND handed_over_at IS NOT NULL AND exempt = 0;
CREATE INDEX outbox_exempt_due ON outbox(channel, next_attempt_at, id)
    WHERE exempt = 1 AND status IN ('pending','retry');
"#,
    // 27: when each subscription change happened (the event's
    // `occurred_at`), beside when the module recorded it (`at`): an opt-out
    // that arrives late is weighed against the changes that happened after
    // it, not against those merely recorded after it (a contact created
    // and opted out in one push, in that order of occurrence). Filled from
    // `at`, the best there is for the rows before.
    r#"
ALTER TABLE subscription_audit ADD COLUMN happened_at INTEGER;
UPDATE subscription_audit SET happened_at = at;
"#,
    // 28: an event's fingerprint reads its times in one form since this
    // version (`Z` and `+00:00` are the same instant). Appointment events
    // and contact upserts recorded before it hashed the text as sent, so a
    // byte-identical resend of one would read as another event under its
    // id: their fingerprints are forgotten, and a resend is a duplicate.
    r#"
UPDATE ingested_events SET fingerprint = NULL
    WHERE type LIKE 'appointment.%' OR type = 'contact.upserted';
"#,
    // 29: an address is found whatever the case of its letters
    // (`Ann.Lee@Example.COM` is `ann.lee@example.com` to every mail
    // system): the unsubscribe link covers every contact who has it.
    r#"
DROP INDEX contacts_email;
CREATE INDEX contacts_email ON contacts(email COLLATE NOCASE) WHERE email IS NOT NULL;
"#,
    // 30: when the module itself last wrote each property it wrote (Set
    // property, a custom step's changes), `{"lead_source": <ms>, ...}`: a
    // host update that happened before the module's write is stale for
    // that property (a late echo of an earlier write-back, or an update
    // from before the automation ran, no longer overwrites it).
    r#"
ALTER TABLE contacts ADD COLUMN module_writes TEXT;
"#,
    // 31: the time to first action (the Performance tab's detailed
    // analytics): an enrollment's first hand-over, by automation, from
    // the index alone. Found through the outbox (by contact, each row read
    // past its payload), it took the largest automation of the
    // 100,000-contact benchmark's view from 414 to 797 ms. Only hand-overs
    // enter it: they are logged by the dispatcher, not while events are
    // ingested (an index over opens, clicks and replies too cost batched
    // ingestion 2.5 % in alternating runs).
    r#"
CREATE INDEX events_first_sent ON events(automation_id, enrollment_id, at)
    WHERE kind = 'message_sent';
"#,
];

/// Brings the database to the newest schema.
pub fn migrate(conn: &Connection) -> Result<()> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let target = MIGRATIONS.len() as i64;
    if current > target {
        return Err(Error::Conflict(format!(
            "the database was written by a newer module (schema {current}, this build knows {target})"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = i as i64 + 1;
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let applied = conn
            .execute_batch(sql)
            .and_then(|_| conn.execute_batch(&format!("PRAGMA user_version = {version}")));
        match applied {
            Ok(()) => conn.execute_batch("COMMIT")?,
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(Error::Storage(format!("migration {version} failed: {e}")));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_once_and_refuses_newer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let conn = Connection::open(&path).unwrap();
        migrate(&conn).unwrap();
        migrate(&conn).unwrap();
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, MIGRATIONS.len() as i64);
        conn.execute_batch("PRAGMA user_version = 999").unwrap();
        assert!(matches!(migrate(&conn), Err(Error::Conflict(_))));
    }

    /// An in-memory database at schema `version`.
    fn at_version(version: usize) -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        for (i, sql) in MIGRATIONS.iter().enumerate().take(version) {
            conn.execute_batch(sql).unwrap();
            conn.execute_batch(&format!("PRAGMA user_version = {}", i + 1))
                .unwrap();
        }
        conn
    }

    /// A database from before the table rebuilds (migrations 6 and 8: the
    /// enrollments, the outbox and the appointments copied into new tables)
    /// comes through every later migration with its rows, their values and
    /// its foreign keys intact (the rebuilds had run on empty databases
    /// only).
    #[test]
    fn rows_written_before_the_table_rebuilds_come_through_every_migration() {
        let conn = at_version(5);
        conn.execute_batch("PRAGMA foreign_keys = ON").unwrap();
        conn.execute_batch(
            "INSERT INTO contacts (id, props, created_at, last_activity)
                 VALUES ('c1', '{\"first_name\":\"Ann\"}', 1, 2), ('c2', '{}', 3, 4);
             INSERT INTO automations (id, name, status, current_version, entered_by, updated_by, created_at, updated_at)
                 VALUES ('a1', 'Welcome', 'active', 1, 'Dr. A', 'Dr. A', 1, 1);
             INSERT INTO automation_versions (automation_id, version, definition, created_at)
                 VALUES ('a1', 1, '{}', 1);
             INSERT INTO enrollments (id, automation_id, contact_id, enrolled_version, version, state,
                                      step_id, step_phase, step_started_at, wake_at, enrolled_at)
                 VALUES (7, 'a1', 'c1', 1, 1, 'active', 's2', 'waiting', 10, 500, 5);
             INSERT INTO enrollments (id, automation_id, contact_id, enrolled_version, version, state,
                                      enrolled_at, ended_at, exit_reason, goal_reached_at)
                 VALUES (8, 'a1', 'c2', 1, 1, 'exited', 6, 60, 'goal_met', 55);
             INSERT INTO outbox (id, idempotency_key, kind, payload, contact_id, automation_id,
                                 enrollment_id, step_id, channel, status, attempts, next_attempt_at,
                                 created_at, updated_at, last_error)
                 VALUES (3, 'k-7-s1', 'message', '{\"channel\":\"email\"}', 'c1', 'a1', 7, 's1',
                         'email', 'retry', 2, 900, 10, 20, 'busy'),
                        (4, 'k-8-t', 'task', '{}', 'c2', 'a1', 8, 't', NULL, 'accepted', 1, 30, 30, 31, NULL);
             INSERT INTO appointments (id, contact_id, status, starts_at, provider_id, clinic_id, updated_at)
                 VALUES ('ap1', 'c1', 'booked', 86400000, 'dr1', 'main', 40);",
        )
        .unwrap();
        let rows = |sql: &str| -> Vec<String> {
            let mut stmt = conn.prepare(sql).unwrap();
            let n = stmt.column_count();
            stmt.query_map([], |r| {
                (0..n)
                    .map(|i| {
                        r.get::<_, rusqlite::types::Value>(i)
                            .map(|v| format!("{v:?}"))
                    })
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map(|v| v.join("|"))
            })
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
        };
        const ENROLLMENTS: &str =
            "SELECT id, automation_id, contact_id, enrolled_version, version, state,
            step_id, step_phase, step_started_at, wake_at, enrolled_at, ended_at, exit_reason,
            goal_reached_at FROM enrollments ORDER BY id";
        const OUTBOX: &str = "SELECT id, idempotency_key, kind, payload, contact_id, automation_id,
            enrollment_id, step_id, channel, status, attempts, next_attempt_at, created_at,
            updated_at, last_error FROM outbox ORDER BY id";
        const APPOINTMENTS: &str = "SELECT id, contact_id, status, starts_at, provider_id,
            clinic_id, updated_at FROM appointments ORDER BY id";
        let before = [rows(ENROLLMENTS), rows(OUTBOX), rows(APPOINTMENTS)];
        migrate(&conn).unwrap();
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, MIGRATIONS.len() as i64);
        assert_eq!(
            [rows(ENROLLMENTS), rows(OUTBOX), rows(APPOINTMENTS)],
            before
        );
        assert_eq!(before.iter().map(Vec::len).sum::<usize>(), 5);
        assert!(rows("PRAGMA foreign_key_check").is_empty());
        assert_eq!(
            rows("PRAGMA integrity_check"),
            vec!["Text(\"ok\")".to_string()]
        );
        // The rebuilt tables' indexes serve as before: the active
        // enrollment is due through `enrollments_due`, the retry through
        // `outbox_due`.
        let due: i64 = conn
            .query_row(
                "SELECT id FROM enrollments INDEXED BY enrollments_due
                  WHERE state = 'active' AND wake_at IS NOT NULL AND held = 0 AND wake_at <= 1000",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(due, 7);
        let retry: i64 = conn
            .query_row(
                "SELECT id FROM outbox INDEXED BY outbox_due
                  WHERE status IN ('pending','retry') AND kind = 'message' AND channel = 'email'
                    AND next_attempt_at <= 1000",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(retry, 3);
    }

    /// Each contact's id and `column`, by id.
    fn by_contact<T: rusqlite::types::FromSql>(
        conn: &Connection,
        column: &str,
    ) -> Vec<(String, Option<T>)> {
        conn.prepare(&format!("SELECT id, {column} FROM contacts ORDER BY id"))
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    #[test]
    fn migration_20_fills_when_each_contact_became_a_patient_from_the_log() {
        let conn = at_version(19);
        conn.execute_batch(
            "INSERT INTO contacts (id, props, created_at, last_activity)
                 VALUES ('flipped', '{}', 0, 0), ('imported', '{}', 0, 0);
             INSERT INTO events (at, kind, contact_id) VALUES
                 (10, 'status_changed', 'flipped'), (30, 'contact_updated', 'flipped'),
                 (20, 'status_changed', 'flipped'), (40, 'contact_created', 'imported');",
        )
        .unwrap();
        migrate(&conn).unwrap();
        assert_eq!(
            by_contact::<i64>(&conn, "became_patient_at"),
            [
                ("flipped".to_string(), Some(20)),
                ("imported".to_string(), None)
            ]
        );
    }

    #[test]
    fn migration_22_fills_what_made_each_contact_a_patient_from_its_latest_flip() {
        let conn = at_version(21);
        conn.execute_batch(
            r#"INSERT INTO contacts (id, props, created_at, last_activity, became_patient_at)
                 VALUES ('booked', '{}', 0, 0, 20), ('host', '{}', 0, 0, 5), ('lead', '{}', 0, 0, NULL);
             INSERT INTO events (at, kind, contact_id, detail) VALUES
                 (10, 'status_changed', 'booked', '{"by": "host"}'),
                 (20, 'status_changed', 'booked', '{"by": "first_booking"}'),
                 (30, 'contact_updated', 'booked', '{"by": "host"}'),
                 (5, 'status_changed', 'host', '{"by": "host"}');"#,
        )
        .unwrap();
        migrate(&conn).unwrap();
        let by = by_contact::<String>(&conn, "became_patient_by");
        let by: Vec<(&str, Option<&str>)> = by
            .iter()
            .map(|(id, b)| (id.as_str(), b.as_deref()))
            .collect();
        assert_eq!(
            by,
            [
                ("booked", Some("first_booking")),
                ("host", Some("host")),
                ("lead", None)
            ]
        );
    }

    #[test]
    fn migration_18_takes_a_paused_automations_enrollments_out_of_the_wake_up_index() {
        let conn = at_version(17);
        conn.execute_batch(
            "INSERT INTO contacts (id, props, created_at, last_activity) VALUES ('c1', '{}', 0, 0);
             INSERT INTO automations (id, name, status, current_version, entered_by, updated_by, created_at, updated_at)
                 VALUES ('on', 'On', 'active', 1, 's', 's', 0, 0), ('off', 'Off', 'inactive', 1, 's', 's', 0, 0);
             INSERT INTO enrollments (automation_id, contact_id, enrolled_version, version, state, wake_at, enrolled_at)
                 VALUES ('on', 'c1', 1, 1, 'active', 5, 0), ('off', 'c1', 1, 1, 'active', 1, 0),
                        ('off', 'c1', 1, 1, 'completed', NULL, 0);",
        )
        .unwrap();
        migrate(&conn).unwrap();
        let held: Vec<(String, String, i64)> = conn
            .prepare("SELECT automation_id, state, held FROM enrollments ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let row = |a: &str, s: &str, h: i64| (a.to_string(), s.to_string(), h);
        assert_eq!(
            held,
            [
                row("on", "active", 0),
                row("off", "active", 1),
                row("off", "completed", 0)
            ]
        );
        let next = crate::core::due::next(&conn, 10).unwrap().unwrap();
        assert_eq!((next.due, next.enrollment_id), (5, Some(1)));
    }

    #[test]
    fn migration_28_forgets_the_fingerprints_of_events_with_times() {
        let conn = at_version(27);
        conn.execute_batch(
            "INSERT INTO ingested_events (event_id, type, received_at, fingerprint) VALUES
                ('a', 'appointment.booked', 1, x'01'), ('c', 'contact.upserted', 1, x'02'),
                ('p', 'page.visited', 1, x'03');",
        )
        .unwrap();
        migrate(&conn).unwrap();
        let kept: Vec<String> = conn
            .prepare("SELECT event_id FROM ingested_events WHERE fingerprint IS NOT NULL")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(kept, ["p"]);
    }

    #[test]
    fn migration_15_keeps_the_events_ingested_before_as_plain_duplicates() {
        let conn = at_version(14);
        conn.execute_batch(
            "INSERT INTO ingested_events (event_id, type, received_at) VALUES ('old', 'page.visited', 1);",
        )
        .unwrap();
        migrate(&conn).unwrap();
        let print: Option<Vec<u8>> = conn
            .query_row(
                "SELECT fingerprint FROM ingested_events WHERE event_id = 'old'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(print, None);
    }

    #[test]
    fn migration_14_opens_a_thread_for_each_number_already_texted() {
        let conn = at_version(13);
        conn.execute_batch(
            "INSERT INTO contacts (id, props, created_at, last_activity, phone_key)
                 VALUES ('mum', '{}', 0, 0, '6175550100'),
                        ('kid', '{}', 0, 0, '6175550100'),
                        ('quiet', '{}', 0, 0, '6175550199'),
                        ('no_phone', '{}', 0, 0, NULL);
             INSERT INTO messages (key, contact_id, channel, created_at)
                 VALUES ('m-mum-1', 'mum', 'sms', 10),
                        ('m-kid-1', 'kid', 'sms', 20),
                        ('m-mum-2', 'mum', 'sms', 30),
                        ('m-quiet-email', 'quiet', 'email', 40),
                        ('m-no-phone', 'no_phone', 'sms', 50);",
        )
        .unwrap();
        migrate(&conn).unwrap();
        let threads: Vec<(String, String, i64)> = conn
            .prepare("SELECT phone_key, first_key, at FROM sms_threads")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(
            threads,
            [("6175550100".to_string(), "m-mum-1".to_string(), 10)]
        );
    }

    #[test]
    fn migration_13_remembers_the_numbers_that_said_stop() {
        let conn = at_version(12);
        conn.execute_batch(
            "INSERT INTO contacts (id, props, created_at, last_activity, phone_key, sms_subscription)
                 VALUES ('stopped', '{}', 0, 0, '6175550123', 'unsubscribed'),
                        ('restarted', '{}', 0, 0, '6175550124', 'subscribed'),
                        ('by_host', '{}', 0, 0, '6175550125', 'unsubscribed');
             INSERT INTO subscription_audit (contact_id, channel, old_value, new_value, actor, reason, at)
                 VALUES ('stopped', 'sms', 'subscribed', 'unsubscribed', 'contact', 'stop_reply', 5),
                        ('restarted', 'sms', 'subscribed', 'unsubscribed', 'contact', 'stop_reply', 5),
                        ('restarted', 'sms', 'unsubscribed', 'subscribed', 'contact', 'start_reply', 6),
                        ('by_host', 'sms', 'subscribed', 'unsubscribed', 'host', 'host_update', 5);",
        )
        .unwrap();
        migrate(&conn).unwrap();
        let numbers: Vec<(String, i64)> = conn
            .prepare("SELECT phone_key, at FROM stopped_numbers")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(numbers, [("6175550123".to_string(), 5)]);
    }

    #[test]
    fn migration_12_renames_past_machine_and_repeated_engagement() {
        let conn = at_version(11);
        let rows = [
            ("m1", "message_opened", Some(r#"{"machine":"proxy"}"#)),
            ("m1", "message_opened", None),
            ("m1", "message_opened", None),
            ("m1", "message_clicked", None),
            ("m2", "message_clicked", Some(r#"{"machine":"scanner"}"#)),
            ("m2", "message_replied", None),
            ("m2", "message_replied", None),
        ];
        for (key, kind, detail) in rows {
            conn.execute(
                "INSERT INTO events (at, kind, contact_id, message_key, detail) VALUES (0, ?1, 'c1', ?2, ?3)",
                rusqlite::params![kind, key, detail],
            )
            .unwrap();
        }
        migrate(&conn).unwrap();
        let kinds: Vec<String> = conn
            .prepare("SELECT kind FROM events ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(
            kinds,
            [
                "message_opened_by_machine",
                "message_opened",
                "message_opened_again",
                "message_clicked",
                "message_clicked_by_machine",
                "message_replied",
                "message_replied_again",
            ]
        );
        // One pass for the first of each: no lookup per row.
        let again = MIGRATIONS[11]
            .split(';')
            .map(str::trim)
            .rfind(|s| !s.is_empty())
            .unwrap();
        let plan = crate::store::query_plan(&conn, again, []);
        assert!(
            again.contains("_again") && !plan.iter().any(|s| s.contains("CORRELATED")),
            "{plan:?}"
        );
    }

    /// The opcodes of `sql` (EXPLAIN), one per row.
    fn opcodes(conn: &Connection, sql: &str) -> Vec<String> {
        let mut stmt = conn.prepare(&format!("EXPLAIN {sql}")).unwrap();
        let nulls = vec![rusqlite::types::Null; stmt.parameter_count()];
        stmt.query_map(rusqlite::params_from_iter(nulls), |r| r.get::<_, String>(1))
            .unwrap()
            .collect::<std::result::Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn migration_24_unopens_a_thread_without_scanning_them_all() {
        let conn = at_version(23);
        let plan = |conn: &Connection| {
            crate::store::query_plan(conn, crate::messaging::compose::UNOPEN_THREAD_SQL, ["k"])
        };
        assert_eq!(plan(&conn), ["SCAN sms_threads"]);
        migrate(&conn).unwrap();
        assert_eq!(
            plan(&conn),
            ["SEARCH sms_threads USING INDEX sms_threads_first_key (first_key=?)"]
        );
    }

    /// Whether an SMS carries the consent footer: two lookups by key, no
    /// scan, at every SMS composed to a number already written to.
    #[test]
    fn the_footer_check_reads_the_thread_and_its_opener_by_key() {
        let conn = at_version(MIGRATIONS.len());
        let plan = crate::store::query_plan(
            &conn,
            crate::messaging::compose::THREAD_OPENER_SQL,
            ["6175550100"],
        );
        assert_eq!(
            plan,
            [
                "SEARCH t USING PRIMARY KEY (phone_key=?)",
                "CORRELATED SCALAR SUBQUERY 1",
                "SEARCH o USING INDEX sqlite_autoindex_outbox_1 (idempotency_key=?)"
            ],
            "{plan:?}"
        );
    }

    #[test]
    fn migration_25_takes_the_hand_over_time_of_each_attempted_row() {
        let conn = at_version(24);
        for (key, attempts) in [("tried", 2), ("waiting", 0)] {
            conn.execute(
                "INSERT INTO outbox (idempotency_key, kind, payload, channel, status, attempts, next_attempt_at, created_at, updated_at)
                 VALUES (?1, 'message', '{}', 'sms', 'pending', ?2, 5, 1, 7)",
                rusqlite::params![key, attempts],
            )
            .unwrap();
        }
        migrate(&conn).unwrap();
        let at: Vec<(String, Option<i64>)> = conn
            .prepare("SELECT idempotency_key, handed_over_at FROM outbox ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(
            at,
            [
                ("tried".to_string(), Some(7)),
                ("waiting".to_string(), None)
            ]
        );
    }

    #[test]
    fn writing_a_row_builds_no_temporary_btree() {
        let conn = Connection::open_in_memory().unwrap();
        migrate(&conn).unwrap();
        let tables: Vec<String> = conn
            .prepare(
                "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
            )
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<std::result::Result<_, _>>()
            .unwrap();
        for table in tables {
            // Written by commands only, and kept (see migration 8).
            if table == "automations" {
                continue;
            }
            // (name, position in the primary key or 0)
            let columns: Vec<(String, i64)> = conn
                .prepare(&format!(
                    "SELECT name, pk FROM pragma_table_info('{table}')"
                ))
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .collect::<std::result::Result<_, _>>()
                .unwrap();
            let names: Vec<&str> = columns.iter().map(|(c, _)| c.as_str()).collect();
            let insert = format!(
                "INSERT INTO {table} ({}) VALUES ({})",
                names.join(", "),
                vec!["?"; names.len()].join(", ")
            );
            // Every column but the key (the engine never rewrites a key; doing
            // so in a WITHOUT ROWID table takes a temporary table anyway).
            let update = format!(
                "UPDATE {table} SET {} WHERE {} = ?",
                columns
                    .iter()
                    .filter(|(_, pk)| *pk == 0)
                    .map(|(c, _)| format!("{c} = ?"))
                    .collect::<Vec<_>>()
                    .join(", "),
                names[0]
            );
            let has_non_key = columns.iter().any(|(_, pk)| *pk == 0);
            for sql in [Some(insert), has_non_key.then_some(update)]
                .into_iter()
                .flatten()
            {
                let ops = opcodes(&conn, &sql);
                assert!(!ops.iter().any(|o| o == "OpenEphemeral"), "{sql}: {ops:?}");
            }
        }
    }

    #[test]
    fn or_checks_refuse_what_the_in_checks_refused() {
        let conn = Connection::open_in_memory().unwrap();
        migrate(&conn).unwrap();
        conn.execute_batch(
            "INSERT INTO contacts (id, props, created_at, last_activity) VALUES ('c1', '{}', 0, 0);
             INSERT INTO automations (id, name, status, current_version, entered_by, updated_by, created_at, updated_at)
             VALUES ('a1', 'A', 'active', 1, 'x', 'x', 0, 0);",
        )
        .unwrap();
        let enrollment = |state: &str, phase: &str| {
            conn.execute(
                "INSERT INTO enrollments (automation_id, contact_id, enrolled_version, version, state, step_phase, enrolled_at)
                 VALUES ('a1', 'c1', 1, 1, ?1, ?2, 0)",
                [state, phase],
            )
        };
        for (state, phase) in [
            ("completed", "ready"),
            ("exited", "waiting"),
            ("active", "calling"),
        ] {
            enrollment(state, phase).unwrap();
        }
        assert!(enrollment("paused", "ready").is_err());
        assert!(enrollment("Active", "ready").is_err());
        assert!(enrollment("exited", "sleeping").is_err());
        let outbox = |kind: &str, status: &str| {
            conn.execute(
                "INSERT INTO outbox (idempotency_key, kind, payload, status, next_attempt_at, created_at, updated_at)
                 VALUES (?1 || ?2 || random(), ?1, '{}', ?2, 0, 0, 0)",
                [kind, status],
            )
        };
        for kind in ["message", "property", "task", "plugin_step"] {
            for status in ["pending", "retry", "accepted", "failed"] {
                outbox(kind, status).unwrap();
            }
        }
        assert!(outbox("email", "pending").is_err());
        assert!(outbox("message", "sent").is_err());
        let appointment = |status: &str| {
            conn.execute(
                "INSERT INTO appointments (id, contact_id, status, updated_at) VALUES (?1 || random(), 'c1', ?1, 0)",
                [status],
            )
        };
        for status in ["booked", "rescheduled", "cancelled", "completed", "no_show"] {
            appointment(status).unwrap();
        }
        assert!(appointment("noshow").is_err());
    }

    #[test]
    fn receipt_lookups_by_message_key_use_their_partial_index() {
        let conn = Connection::open_in_memory().unwrap();
        migrate(&conn).unwrap();
        for sql in [
            crate::core::ingest::SOFT_BOUNCES_SQL,
            crate::core::enrollment::FALLBACK_TRIED_SQL,
        ] {
            let plan = crate::store::query_plan(&conn, sql, ["k1"]);
            assert!(
                plan.iter().any(|l| l.contains("events_message_outcome")
                    || l.contains("events_message_history")),
                "{sql}: {plan:?}"
            );
        }
        for sql in [
            crate::core::ingest::OPENED_BEFORE_SQL,
            crate::core::ingest::CLICKED_BEFORE_SQL,
            crate::core::ingest::REPLIED_BEFORE_SQL,
            crate::core::ingest::LAST_OUTCOME_SQL,
        ] {
            let plan = crate::store::query_plan(&conn, sql, ["k1"]);
            assert!(
                plan.iter().any(|l| l.contains("events_message_history")),
                "{plan:?}"
            );
        }
    }

    #[test]
    fn sending_limits_and_the_messages_outside_them_read_their_partial_indexes() {
        let conn = Connection::open_in_memory().unwrap();
        migrate(&conn).unwrap();
        for (sql, params) in [
            (
                crate::outbox::EXEMPT_DUE_SQL,
                rusqlite::params!["sms", 0, 10],
            ),
            (
                crate::outbox::NEXT_EXEMPT_DUE_SQL,
                rusqlite::params!["sms", 0],
            ),
        ] {
            let plan = crate::store::query_plan(&conn, sql, params);
            assert!(
                plan.iter().any(|l| l.contains("outbox_exempt_due")),
                "{sql}: {plan:?}"
            );
        }
        for sql in [
            crate::messaging::limits::HANDED_OVER_SINCE_SQL,
            crate::messaging::limits::OLDEST_SINCE_SQL,
        ] {
            let plan = crate::store::query_plan(&conn, sql, rusqlite::params!["sms", 0]);
            assert!(
                plan.iter().any(|l| l.contains("outbox_handed_over")),
                "{sql}: {plan:?}"
            );
        }
    }

    #[test]
    fn performance_view_reads_opt_outs_and_step_details_from_their_indexes() {
        let conn = Connection::open_in_memory().unwrap();
        migrate(&conn).unwrap();
        let plan = crate::store::query_plan(
            &conn,
            crate::views::performance::OPT_OUTS_SQL,
            rusqlite::params!["a1", 0, 1],
        );
        assert!(
            plan.iter().any(|l| l.contains("events_opt_outs"))
                && !plan.iter().any(|l| l == "SCAN e"),
            "{plan:?}"
        );
        let plan =
            crate::store::query_plan(&conn, crate::views::performance::STEP_DETAILS_SQL, ["a1"]);
        assert!(
            plan.iter()
                .any(|l| l.contains("COVERING INDEX events_step_completed")),
            "{plan:?}"
        );
        // The totals and the chart: every count from an index, the current
        // goal's conversions without reading a row's detail.
        let plan = crate::store::query_plan(&conn, crate::views::performance::TOTALS_SQL, ["a1"]);
        assert!(
            plan.iter()
                .any(|l| l.contains("COVERING INDEX events_automation")),
            "{plan:?}"
        );
        for (sql, params, also) in [
            (crate::core::goals::REACHED_SQL, 3, None),
            (
                crate::views::performance::OVER_TIME_SQL,
                6,
                // A seek of the time range, not a read of every row.
                Some(
                    "events_automation (automation_id=? AND kind=? AND step_id=? AND channel=? AND at>? AND at<?)",
                ),
            ),
        ] {
            let values: Vec<&str> = ["a1", "1", "2", "3", "4", "5"][..params].to_vec();
            let plan = crate::store::query_plan(&conn, sql, rusqlite::params_from_iter(values));
            assert!(
                plan.iter()
                    .any(|l| l.contains("COVERING INDEX events_goals")),
                "{plan:?}"
            );
            if let Some(index) = also {
                assert!(plan.iter().any(|l| l.contains(index)), "{plan:?}");
            }
        }
    }

    #[test]
    fn detailed_analytics_and_timeline_read_through_indexes() {
        let conn = Connection::open_in_memory().unwrap();
        migrate(&conn).unwrap();
        // Time to first action: the actions by automation, then each
        // acting enrollment's first hand-over from its own index.
        let plan = crate::store::query_plan(
            &conn,
            crate::views::detailed_analytics::FIRST_ACTION_SQL,
            ["a1"],
        );
        assert!(
            plan.iter().any(|l| l.contains("INDEX events_automation"))
                && plan.iter().any(|l| l.contains(
                    "COVERING INDEX events_first_sent (automation_id=? AND enrollment_id=?)"
                )),
            "{plan:?}"
        );
        let plan =
            crate::store::query_plan(&conn, crate::views::detailed_analytics::CLICKS_SQL, ["a1"]);
        assert!(
            plan.iter().any(|l| l.contains("INDEX events_automation")),
            "{plan:?}"
        );
        // The timeline's ids and times from the indexes alone.
        let plan = crate::store::query_plan(
            &conn,
            crate::views::engagement_timeline::LATEST_SQL,
            rusqlite::params!["a1", "g1", "g2", 40],
        );
        assert!(
            plan.iter()
                .any(|l| l.contains("COVERING INDEX events_automation"))
                && plan
                    .iter()
                    .any(|l| l.contains("COVERING INDEX events_goals")),
            "{plan:?}"
        );
    }

    #[test]
    fn an_address_is_found_by_its_index_whatever_its_case() {
        let conn = Connection::open_in_memory().unwrap();
        migrate(&conn).unwrap();
        let plan = crate::store::query_plan(
            &conn,
            crate::core::contacts::ALL_BY_EMAIL_SQL,
            ["ann@example.com"],
        );
        assert!(
            plan.iter().any(|l| l.contains("INDEX contacts_email")),
            "{plan:?}"
        );
    }

    #[test]
    fn step_engagement_condition_uses_its_partial_index() {
        let conn = Connection::open_in_memory().unwrap();
        migrate(&conn).unwrap();
        let plan = crate::store::query_plan(
            &conn,
            crate::core::conditions::STEP_ENGAGEMENT_SQL,
            (1, "s1", "message_clicked"),
        );
        assert!(
            plan.iter().any(|l| l.contains("events_step_engagement")),
            "{plan:?}"
        );
    }
}
