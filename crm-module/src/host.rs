//! What the module asks the host to do, and the dispatcher thread that asks.
//!
//! The worker hands due outbox rows to the dispatcher over a channel; the
//! dispatcher calls the host and sends the answer back to the worker, which
//! records it. Host callbacks therefore run on the dispatcher thread, never on
//! the caller's thread and never while the database is locked, and they may
//! call back into the module (push an event, run a command) without deadlock.
//!
//! Every effect goes through one [`Sender`]: the host's callbacks ([`Host`])
//! by default, or, for email messages when the settings say
//! `email_delivery: {"mode": "smtp", ...}`, the built-in SMTP sender
//! ([`SmtpEmailSender`]). The SMTP sender is built once per settings change.

use std::sync::Arc;

use base64::Engine as _;
use crossbeam_channel::Receiver;
use parking_lot::RwLock;
use serde_json::Value;

use crate::messaging::email::ComposedEmail;
use crate::messaging::smtp::{SmtpOutcome, SmtpSender, SmtpSettings};
use crate::outbox::{DueEffect, EffectKind, HostAnswer};
use crate::settings::{EmailDelivery, Resolved};
use crate::worker::{AnsweredBy, Request};

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
    /// Stable idempotency key: the same effect always comes with the same
    /// key. A message that soft-bounced comes again under it with
    /// `"resend": n` in the payload, to be sent again: carry out each key
    /// and `resend` once.
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

    /// Whether this host takes effects of `kind` now. Effects of a kind it
    /// does not handle are not offered to it: they wait in the outbox,
    /// without using any of their attempts, until a host that handles them
    /// is registered ([`crate::Module::set_host`]). [`Host::deliver`] may
    /// still answer [`HostAnswer::NotHandled`] for a kind that stopped being
    /// handled meanwhile; it should not answer it for a kind this says it
    /// handles (the effect would be offered again at once). Default: every
    /// kind but [`EffectKind::PluginStep`], which the module's plugin pool runs.
    fn handles(&self, kind: EffectKind) -> bool {
        kind != EffectKind::PluginStep
    }

    /// A log line from the module (ids only, never patient data). It runs
    /// on the module's own threads, the worker's among them: there, calls
    /// into the module that wait for the worker ([`crate::Module::push`],
    /// `execute`, `tracking_hit`, `advance_clock`, `wait_idle`) return
    /// [`crate::Error::Conflict`] at once.
    fn log(&self, _level: LogLevel, _message: &str) {}
}

/// The host slot shared by the worker, the dispatcher and the API.
pub type HostSlot = Arc<RwLock<Option<Arc<dyn Host>>>>;

/// Something that delivers effects: the host's callbacks, the built-in SMTP
/// sender. Same contract as [`Host::deliver`]. (Sender adapter plugins run
/// on the plugin pool: [`crate::plugins::pool`].)
pub trait Sender: Send + Sync {
    /// Delivers one effect; the string is an optional reason (codes and ids
    /// only, no patient data).
    fn send(&self, delivery: Delivery<'_>) -> (HostAnswer, Option<String>);
}

impl<H: Host + ?Sized> Sender for H {
    fn send(&self, delivery: Delivery<'_>) -> (HostAnswer, Option<String>) {
        self.deliver(delivery)
    }
}

/// Sends email message effects through an SMTP relay: decodes
/// `rendered.rfc5322_base64` and sends it with the envelope
/// `rendered.envelope_from` → `to`.
#[derive(Debug)]
pub struct SmtpEmailSender {
    smtp: SmtpSender,
}

impl SmtpEmailSender {
    /// Builds the relay's pooled transport (nothing is connected yet).
    ///
    /// # Errors
    ///
    /// The [`SmtpSender::new`] message.
    pub fn new(settings: &SmtpSettings) -> Result<SmtpEmailSender, String> {
        Ok(SmtpEmailSender {
            smtp: SmtpSender::new(settings)?,
        })
    }
}

impl Sender for SmtpEmailSender {
    fn send(&self, delivery: Delivery<'_>) -> (HostAnswer, Option<String>) {
        let email = match email_from_payload(delivery.payload) {
            Ok(email) => email,
            Err(reason) => return (HostAnswer::Failed, Some(reason.to_owned())),
        };
        match self.smtp.send(&email) {
            SmtpOutcome::Accepted { .. } => (HostAnswer::Accepted, None),
            SmtpOutcome::RetryLater { reason } => (HostAnswer::RetryLater, Some(reason)),
            SmtpOutcome::Held { reason } => (HostAnswer::Held, Some(reason)),
            SmtpOutcome::Bounced { reason } => (HostAnswer::Bounced, Some(reason)),
            SmtpOutcome::Failed { reason } => (HostAnswer::Failed, Some(reason)),
        }
    }
}

/// The composed email inside an email message payload.
fn email_from_payload(payload: &str) -> Result<ComposedEmail, &'static str> {
    let v: Value = serde_json::from_str(payload).map_err(|_| "payload: not JSON")?;
    let rendered = &v["rendered"];
    let field = |v: &Value, name: &'static str| -> Result<String, &'static str> {
        v[name].as_str().map(str::to_owned).ok_or(name)
    };
    let raw = rendered["rfc5322_base64"]
        .as_str()
        .ok_or("rendered.rfc5322_base64: missing")?;
    let rfc5322 = base64::engine::general_purpose::STANDARD
        .decode(raw)
        .map_err(|_| "rendered.rfc5322_base64: not base64")?;
    Ok(ComposedEmail {
        message_id: field(rendered, "message_id").unwrap_or_default(),
        rfc5322,
        html: String::new(),
        text: String::new(),
        envelope_from: field(rendered, "envelope_from")
            .map_err(|_| "rendered.envelope_from: missing")?,
        envelope_to: field(&v, "to").map_err(|_| "to: missing")?,
    })
}

/// Whether an effect is an email message (the outbox row's channel, which
/// the payload's `channel` repeats).
fn is_email(job: &DueEffect) -> bool {
    job.kind == EffectKind::Message && job.channel.as_deref() == Some("email")
}

/// Tells the worker how a row's delivery went; false once the worker is gone.
fn answer(
    worker: &crossbeam_channel::Sender<Request>,
    outbox_id: i64,
    answer: HostAnswer,
    error: Option<String>,
    by: AnsweredBy,
) -> bool {
    worker
        .send(Request::Answer {
            outbox_id,
            answer,
            error,
            by,
        })
        .is_ok()
}

/// The SMTP sender for the current settings, rebuilt when they change.
#[derive(Default)]
struct SmtpCache {
    current: Option<(SmtpSettings, Result<Arc<SmtpEmailSender>, String>)>,
}

impl SmtpCache {
    fn get(&mut self, settings: &SmtpSettings) -> Result<Arc<SmtpEmailSender>, String> {
        match &self.current {
            Some((cached, sender)) if cached == settings => sender.clone(),
            _ => {
                let sender = SmtpEmailSender::new(settings).map(Arc::new);
                self.current = Some((settings.clone(), sender.clone()));
                sender
            }
        }
    }
}

/// Runs the dispatcher loop until the job channel closes. Email messages go
/// to the SMTP relay when `email_delivery` says so; everything else (and all
/// email otherwise) goes to the host.
///
/// Custom steps, and messages whose channel has a sender adapter in
/// settings, go to the plugin pool instead: plugin calls never hold up the
/// host's deliveries. Email for the SMTP relay goes to a relay thread of
/// its own (`crm-relay`): a relay that is slow or unreachable (each send
/// may wait its timeout) never holds up the host's tasks, texts and
/// write-backs. A row whose contact `rescreen` marked after it was
/// screened goes back to the worker unasked.
pub fn run_dispatcher(
    jobs: Receiver<DueEffect>,
    host: HostSlot,
    settings: Arc<RwLock<Resolved>>,
    worker: crossbeam_channel::Sender<Request>,
    plugin_jobs: crate::plugins::pool::Queue,
    rescreen: Arc<crate::messaging::handover::Rescreen>,
    clock: Arc<crate::clock::Clock>,
) {
    use crate::plugins::pool::Job;
    let mut smtp = SmtpCache::default();
    let (relay_jobs, relay_rx) = crossbeam_channel::unbounded::<(DueEffect, Arc<dyn Sender>)>();
    let (relay_worker, relay_rescreen) = (worker.clone(), rescreen.clone());
    // Without its thread (it could not start), the relay is called here.
    let relay = std::thread::Builder::new()
        .name("crm-relay".into())
        .spawn(move || run_relay(relay_rx, relay_worker, &relay_rescreen, &clock))
        .ok();
    for mut job in jobs {
        let _under_way = rescreen.take();
        // A STOP, an unsubscribe, a hard bounce or an exit committed while
        // the row waited in this queue: nobody is asked, and the worker
        // screens it again (its attempts untouched). Nor once the module
        // is closing.
        match hold_back(&worker, &rescreen, &job) {
            Some(true) => continue,
            Some(false) => break,
            None => {}
        }
        // An email is stored as its parts; its MIME is written here, on the
        // dispatcher's thread, whoever delivers it.
        if is_email(&job) {
            let mime =
                std::panic::catch_unwind(|| crate::messaging::compose::with_mime(&job.payload))
                    .unwrap_or_else(|_| {
                        Err("writing the MIME stopped on a defect in the module".into())
                    });
            match mime {
                Ok(payload) => job.payload = payload,
                Err(reason) => {
                    if !answer(
                        &worker,
                        job.id,
                        HostAnswer::Failed,
                        Some(reason),
                        AnsweredBy::Host,
                    ) {
                        break;
                    }
                    continue;
                }
            }
        }
        if job.kind == EffectKind::PluginStep {
            plugin_jobs.send(Job::Step(job));
            continue;
        }
        let adapter = match (job.kind, job.channel.as_deref()) {
            (EffectKind::Message, Some(channel)) => {
                settings.read().doc.adapter_for(channel).map(str::to_string)
            }
            _ => None,
        };
        if let Some(plugin_id) = adapter {
            plugin_jobs.send(Job::Send {
                effect: job,
                plugin_id,
            });
            continue;
        }
        let smtp_settings = match &settings.read().doc.email_delivery {
            EmailDelivery::Smtp { smtp } => Some(smtp.clone()),
            _ => None,
        };
        let by_relay = smtp_settings.is_some() && is_email(&job);
        let sender: Result<Arc<dyn Sender>, (HostAnswer, String)> = match smtp_settings {
            Some(s) if by_relay => smtp
                .get(&s)
                .map(|s| s as Arc<dyn Sender>)
                .map_err(|e| (HostAnswer::Held, format!("email_delivery.smtp.{e}"))),
            // Without a host for this kind (it was cleared or replaced since
            // the worker handed the row over), nobody is asked and no attempt
            // is used: the row waits for a host that handles it.
            _ => match host.read().clone() {
                Some(h) if h.handles(job.kind) => Ok(Arc::new(HostSender(h)) as Arc<dyn Sender>),
                Some(_) => Err((
                    HostAnswer::NotHandled,
                    format!("the host does not handle {} effects", job.kind.as_str()),
                )),
                None => Err((
                    HostAnswer::NotHandled,
                    "no host callbacks registered".to_string(),
                )),
            },
        };
        let (outcome, error) = match sender {
            Err((answer, reason)) => (answer, Some(reason)),
            Ok(sender) if by_relay && relay.is_some() => {
                if relay_jobs.send((job, sender)).is_err() {
                    break;
                }
                continue;
            }
            Ok(sender) => send_contained(sender.as_ref(), &job),
        };
        let by = if by_relay {
            AnsweredBy::Relay
        } else {
            AnsweredBy::Host
        };
        if !answer(&worker, job.id, outcome, error, by) {
            break;
        }
    }
    // The relay finishes the email it has, then stops.
    drop(relay_jobs);
    if let Some(relay) = relay {
        let _ = relay.join();
    }
}

/// Sends `job` back to the worker unasked (`NotHandled`, its attempts
/// untouched) when [`Rescreen::holds_back`] says so: its contact changed
/// after it was screened (it is screened again), or the module is closing
/// (it waits in the outbox for the next open). `None` when it may go on;
/// `Some(false)` when the worker is gone.
///
/// [`Rescreen::holds_back`]: crate::messaging::handover::Rescreen::holds_back
pub(crate) fn hold_back(
    worker: &crossbeam_channel::Sender<Request>,
    rescreen: &crate::messaging::handover::Rescreen,
    job: &DueEffect,
) -> Option<bool> {
    let why = rescreen.holds_back(job)?;
    Some(answer(
        worker,
        job.id,
        HostAnswer::NotHandled,
        Some(why.into()),
        AnsweredBy::Host,
    ))
}

/// The relay thread: sends each email through the SMTP sender it came with
/// and answers the worker. An email whose contact changed while it waited
/// here (behind a slow relay) goes back to be screened again; once the
/// module is closing, the emails not started go back unsent.
fn run_relay(
    jobs: Receiver<(DueEffect, Arc<dyn Sender>)>,
    worker: crossbeam_channel::Sender<Request>,
    rescreen: &crate::messaging::handover::Rescreen,
    clock: &crate::clock::Clock,
) {
    // The sender that last answered `Held`, with its reason and when the
    // hold's pause ends: until then every email for that sender is held
    // too, unsent (one refused login a pause, not one per email: relays
    // lock accounts that keep failing). New settings are a new sender.
    let mut held: Option<(Arc<dyn Sender>, String, crate::clock::Millis)> = None;
    for (job, sender) in jobs.iter() {
        let _under_way = rescreen.take();
        match hold_back(&worker, rescreen, &job) {
            Some(true) => continue,
            Some(false) => break,
            None => {}
        }
        let (outcome, error) = match &held {
            Some((h, why, until)) if Arc::ptr_eq(h, &sender) && clock.now() < *until => {
                (HostAnswer::Held, Some(why.clone()))
            }
            _ => {
                let (outcome, error) = send_contained(sender.as_ref(), &job);
                held = match (outcome, &error) {
                    (HostAnswer::Held, Some(why)) => Some((
                        sender.clone(),
                        why.clone(),
                        clock.now() + crate::outbox::HELD_PAUSE,
                    )),
                    _ => None,
                };
                (outcome, error)
            }
        };
        if !answer(&worker, job.id, outcome, error, AnsweredBy::Relay) {
            break;
        }
    }
}

/// `job` through `sender`; a panic in it is a "retry later".
fn send_contained(sender: &dyn Sender, job: &DueEffect) -> (HostAnswer, Option<String>) {
    let delivery = Delivery {
        key: &job.key,
        kind: job.kind,
        payload: &job.payload,
    };
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sender.send(delivery)))
        .unwrap_or_else(|_| (HostAnswer::RetryLater, Some("sender panicked".to_string())))
}

/// The registered host as a [`Sender`].
struct HostSender(Arc<dyn Host>);

impl Sender for HostSender {
    fn send(&self, delivery: Delivery<'_>) -> (HostAnswer, Option<String>) {
        self.0.deliver(delivery)
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
    // The slot's lock is released before the call: the host may set or
    // clear itself from its log callback.
    let host = host.read().clone();
    if let Some(h) = host {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h.log(level, message)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_payload_decodes_to_the_envelope_and_bytes() {
        let payload = serde_json::json!({
            "key": "k1", "kind": "message", "channel": "email", "to": "pat@example.com",
            "rendered": {"message_id": "<k1@practice.example>", "envelope_from": "news@practice.example",
                         "rfc5322_base64": base64::engine::general_purpose::STANDARD.encode(b"Subject: x\r\n\r\nhi\r\n")}
        })
        .to_string();
        let email = email_from_payload(&payload).unwrap();
        assert_eq!(email.envelope_from, "news@practice.example");
        assert_eq!(email.envelope_to, "pat@example.com");
        assert_eq!(email.rfc5322, b"Subject: x\r\n\r\nhi\r\n");
        let job = |kind, channel: &str| DueEffect {
            id: 1,
            key: "k1".into(),
            kind,
            payload: payload.clone(),
            channel: Some(channel.into()),
            contact_id: None,
            screened: 0,
            attempts: 0,
            exempt: false,
        };
        assert!(is_email(&job(EffectKind::Message, "email")));
        assert!(!is_email(&job(EffectKind::Task, "email")));
        assert!(!is_email(&job(EffectKind::Message, "sms")));
        assert_eq!(
            email_from_payload(r#"{"to": "a@b.c", "rendered": {}}"#).unwrap_err(),
            "rendered.rfc5322_base64: missing"
        );
    }

    #[test]
    fn a_broken_email_payload_fails_without_connecting() {
        let sender = SmtpEmailSender::new(&SmtpSettings {
            host: "127.0.0.1".into(),
            port: 9,
            security: crate::messaging::smtp::SmtpSecurity::None,
            username: None,
            password: None,
            timeout_seconds: 1,
        })
        .unwrap();
        let (answer, reason) = sender.send(Delivery {
            key: "k1",
            kind: EffectKind::Message,
            payload: r#"{"to": "a@b.c", "rendered": {"rfc5322_base64": "!!"}}"#,
        });
        assert_eq!(answer, HostAnswer::Failed);
        assert_eq!(
            reason.as_deref(),
            Some("rendered.rfc5322_base64: not base64")
        );
    }
}
