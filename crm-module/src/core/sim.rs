//! A thread-free driver of the core for tests: a real SQLite file, the real
//! core, and a manual "now" — no worker, no sleeps.

use rusqlite::Connection;
use serde_json::{Value, json};

use super::{Ctx, due, ingest};
use crate::catalog::Catalog;
use crate::clock::{Millis, parse_rfc3339};
use crate::commands::{self, Command};
use crate::error::Result;
use crate::event::Event;
use crate::outbox::{self, Effect};
use crate::settings::{Resolved, Settings};
use crate::store::{self, Access};

/// The simulator.
pub struct Sim {
    _dir: tempfile::TempDir,
    /// The write connection.
    pub conn: Connection,
    /// The automations in force.
    pub catalog: Catalog,
    /// Settings in force.
    pub settings: Resolved,
    /// Current instant.
    pub now: Millis,
    /// Every effect produced, in order.
    pub effects: Vec<Effect>,
    seq: u64,
}

impl Default for Sim {
    fn default() -> Self {
        Sim::new()
    }
}

impl Sim {
    /// A practice in America/New_York, starting Monday 2026-01-05 09:00 local.
    pub fn new() -> Sim {
        let dir = tempfile::tempdir().unwrap();
        let conn = store::open(&dir.path().join("sim.db"), Access::Write).unwrap();
        // A fixed key: the same inputs give byte-identical messages across runs.
        let ring = crate::messaging::tracking::KeyRing {
            keys: vec![crate::messaging::tracking::SigningKey {
                version: 1,
                secret: [7; 32],
                created_at_ms: 0,
            }],
        };
        crate::store::put_setting(
            &conn,
            "tracking_keys",
            &serde_json::to_value(&ring).unwrap(),
        )
        .unwrap();
        let settings = Settings {
            practice_name: "Riverside Family Practice".into(),
            time_zone: "America/New_York".into(),
            email_footer: crate::settings::EmailFooter {
                postal_address: "12 River Road, Boston, MA 02118".into(),
                ..Default::default()
            },
            tracking: crate::settings::TrackingSettings {
                base_url: Some("https://t.riverside.example".into()),
                email_opens: true,
                email_clicks: true,
                sms_clicks: true,
            },
            ..Settings::default()
        }
        .validate()
        .unwrap();
        Sim {
            _dir: dir,
            conn,
            catalog: Catalog::default(),
            settings,
            now: parse_rfc3339("2026-01-05T14:00:00Z").unwrap(),
            effects: vec![],
            seq: 0,
        }
    }

    pub(crate) fn in_tx<T>(&mut self, f: impl FnOnce(&mut Ctx<'_>) -> Result<T>) -> Result<T> {
        self.conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        let (r, effects) = {
            let mut ctx = Ctx::new(&self.conn, self.now, &self.catalog, &self.settings, "t");
            let r = f(&mut ctx);
            (r, ctx.take_effects())
        };
        match r {
            Ok(v) => {
                outbox::write(&self.conn, &effects, self.now).unwrap();
                self.conn.execute_batch("COMMIT").unwrap();
                self.effects.extend(effects);
                self.catalog = Catalog::load(&self.conn).unwrap();
                Ok(v)
            }
            Err(e) => {
                self.conn.execute_batch("ROLLBACK").unwrap();
                Err(e)
            }
        }
    }

    /// Pushes an event; `event_id` is added when absent.
    pub fn push(&mut self, mut ev: Value) -> Result<ingest::Outcome> {
        if ev.get("event_id").is_none() {
            self.seq += 1;
            ev["event_id"] = json!(format!("ev{}", self.seq));
        }
        let ev = Event::parse(&ev.to_string())?;
        self.in_tx(|ctx| ingest::apply(ctx, &ev))
    }

    /// A request on a tracking URL.
    pub fn hit(
        &mut self,
        hit: &super::hits::Hit,
    ) -> Result<crate::messaging::tracking::HitResponse> {
        self.in_tx(|ctx| super::hits::handle(ctx, hit))
    }

    /// A POST on a tracking URL the module composed (the one-click
    /// unsubscribe of RFC 8058, or a click).
    pub fn post(&mut self, url: &str) -> Result<crate::messaging::tracking::HitResponse> {
        let base = self
            .settings
            .doc
            .tracking
            .base_url
            .clone()
            .unwrap_or_default();
        let path = url.strip_prefix(base.as_str()).unwrap_or(url).to_string();
        let hit = super::hits::Hit {
            method: "POST".into(),
            path,
            user_agent: None,
            ip_class: None,
        };
        self.hit(&hit)
    }

    /// Runs a command.
    pub fn cmd(&mut self, v: Value) -> Result<Value> {
        let c = Command::from_value(v)?;
        let settings = matches!(c, Command::SettingsUpdate { .. });
        let out = self.in_tx(|ctx| commands::execute(ctx, c).map(|(v, _)| v))?;
        if settings {
            self.settings = crate::worker::load_settings(&self.conn).unwrap();
        }
        Ok(out)
    }

    /// Creates and activates an automation; returns its id.
    pub fn automation(&mut self, def: Value) -> String {
        let out = self
            .cmd(json!({"command": "automation.create", "definition": def}))
            .unwrap();
        let id = out["automation_id"].as_str().unwrap().to_string();
        self.cmd(json!({"command": "automation.activate", "automation_id": id}))
            .unwrap();
        id
    }

    /// Moves time forward, running every due item at its own instant.
    pub fn advance(&mut self, ms: Millis) {
        let until = self.now + ms;
        while let Some(item) = due::next(&self.conn, until).unwrap() {
            self.now = self.now.max(item.due);
            self.in_tx(|ctx| due::run(ctx, &item)).unwrap();
        }
        self.now = until;
    }

    /// Pushes a contact with email, phone and both channels subscribed.
    pub fn contact(&mut self, id: &str, extra: Value) {
        let mut c = json!({"id": id, "first_name": "Pat", "last_name": id, "email": format!("{id}@example.com"),
                           "phone": "+1 555 010 0000", "email_subscription": "subscribed", "sms_subscription": "subscribed"});
        c["phone"] = json!(format!(
            "+1617555{:04}",
            id.bytes().map(u32::from).sum::<u32>() * 7 % 10_000
        ));
        if let Value::Object(m) = extra {
            for (k, v) in m {
                c[k] = v;
            }
        }
        self.push(json!({"type": "contact.upserted", "contact": c}))
            .unwrap();
    }

    /// Books an appointment.
    pub fn book(&mut self, contact: &str, appt: &str) {
        self.push(json!({"type": "appointment.booked", "appointment": {"id": appt, "contact_id": contact}})).unwrap();
    }

    /// A submission `id` of the "intake" form, with no answers, by `contact`.
    pub fn submit_form(&mut self, contact: &str, id: &str) {
        self.push(
            json!({"type": "form.submitted", "submission": {"id": id, "form_id": "intake",
            "form_name": "Intake", "contact_id": contact, "answers": {}}}),
        )
        .unwrap();
    }

    /// Count of event-log rows of a kind for an automation (or any, with None).
    pub fn count(&self, kind: &str, automation: Option<&str>) -> i64 {
        self.conn
            .query_row(
                "SELECT COUNT(*) FROM events WHERE kind = ?1 AND (?2 IS NULL OR automation_id = ?2)",
                rusqlite::params![kind, automation],
                |r| r.get(0),
            )
            .unwrap()
    }

    /// The one value `sql` selects (its first row's first column).
    pub fn value<T: rusqlite::types::FromSql>(&self, sql: &str) -> T {
        self.conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    /// The view model `name` with `params`, as the host would get it.
    pub fn view(&self, name: &str, params: Value) -> Value {
        crate::views::query(&self.conn, &self.settings, name, &params, self.now).unwrap()
    }

    /// The first column of `sql`'s rows, as text, with `param` bound to `?1`.
    pub fn texts(&self, sql: &str, param: &str) -> Vec<String> {
        self.conn
            .prepare(sql)
            .unwrap()
            .query_map([param], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    /// (state, exit_reason, goal reached?) of the newest enrollment.
    pub fn enrollment(&self, automation: &str, contact: &str) -> (String, Option<String>, bool) {
        self.conn
            .query_row(
                "SELECT state, exit_reason, goal_reached_at IS NOT NULL FROM enrollments
                 WHERE automation_id = ?1 AND contact_id = ?2 ORDER BY id DESC LIMIT 1",
                rusqlite::params![automation, contact],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap()
    }

    /// The host takes the effect with idempotency key `key` (its answer
    /// recorded as the dispatcher records it).
    pub fn accept(&self, key: &str) {
        let id: i64 = self
            .conn
            .query_row(
                "SELECT id FROM outbox WHERE idempotency_key = ?1",
                [key],
                |r| r.get(0),
            )
            .unwrap();
        outbox::record_answer(&self.conn, id, crate::HostAnswer::Accepted, None, self.now).unwrap();
    }

    /// The host takes every message due in the outbox, as the dispatcher
    /// hands them over and the host answers accepted.
    pub fn hand_over(&mut self) {
        for key in self.due_messages() {
            self.accept(&key);
        }
    }

    /// [`Sim::hand_over`], each acceptance also logged `message_sent` as
    /// the worker logs it: the send attempts of the channel figures.
    pub fn hand_over_logged(&mut self) {
        for key in self.due_messages() {
            self.accept(&key);
            let row = outbox::by_key(&self.conn, &key).unwrap().unwrap();
            super::log::Entry::for_effect("message_sent", &row, None)
                .write(&self.conn, self.now)
                .unwrap();
        }
    }

    /// The keys of the messages due in the outbox, in order.
    fn due_messages(&self) -> Vec<String> {
        self.conn
            .prepare(
                "SELECT idempotency_key FROM outbox WHERE kind = 'message'
                  AND status IN ('pending', 'retry') AND next_attempt_at <= ?1 ORDER BY id",
            )
            .unwrap()
            .query_map([self.now], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    /// Message effects to a contact, in order.
    pub fn messages_to(&self, contact: &str) -> Vec<&Effect> {
        self.effects
            .iter()
            .filter(|e| e.kind == outbox::EffectKind::Message && e.contact_id == contact)
            .collect()
    }
}
