//! WebAssembly plugins: custom step types and sender adapters, sandboxed.
//!
//! Vendors extend the module with components built for `wasm32-wasip2`
//! against the WIT contract in `plugins/wit/` ([`contract`]). The host:
//!
//! - keeps one wasmtime [`Engine`](wasmtime::Engine) per module, started on
//!   first use (a module without plugins never starts it);
//! - compiles each component once and pre-links it; every call gets a fresh
//!   instance from the pooling allocator ([`runtime`]);
//! - bounds every call: a wall-clock deadline (epoch interruption, a ticker
//!   thread), an instruction budget (fuel), a memory cap, caps on input and
//!   output ([`limits`]);
//! - gives WASI with nothing granted: no files, environment, arguments or
//!   sockets; clocks and randomness only ([`sandbox`]);
//! - lets sender adapters `fetch` only the origins the practice granted,
//!   never private addresses (unless granted), never through a redirect
//!   ([`fetch`]).
//!
//! Plugins are installed through commands and stored in the database
//! ([`registry`]), so they survive a restart. Calls run on the plugin pool
//! ([`pool`]), off the worker and the dispatcher: a slow plugin delays only
//! its own step. A custom step is an outbox effect like any other, with its
//! idempotency key; its result comes back to the worker, which moves the
//! enrollment on in one transaction.
//!
//! Nothing a plugin says carries the patient data it was given out of the
//! host: its log lines and stderr, and the reasons it gives for a failure,
//! are scrubbed of every patient value the module passed into that call
//! before they are logged, recorded in the event log or counted in the
//! plugin's figures ([`redact`]). Authors must still log ids only: the
//! module cannot know data a plugin fetched or transformed itself.

pub mod admin;
pub mod contract;
pub mod descriptor;
pub mod fetch;
pub mod limits;
pub mod pool;
pub mod redact;
pub mod registry;
pub mod runtime;
pub mod sandbox;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use parking_lot::{Mutex, RwLock};
use serde_json::Value;
use sha2::Digest as _;

use self::contract::PluginKind;
use self::contract::sender_world::exports::crm::plugin::sender as wit_sender;
use self::contract::step_world::crm::plugin::types as wit_types;
use self::contract::step_world::exports::crm::plugin::step as wit_step;
use self::descriptor::{ConfigCheck, Descriptor};
use self::fetch::{FetchPolicy, Grant};
use self::redact::Redactor;
use self::registry::{CallFigures, StoredPlugin};
use self::runtime::{CallFailure, Called, Linked, Runtime};
use self::sandbox::PluginSettings;
use crate::error::{Error, Result};
use crate::host::{HostSlot, LogLevel};

/// A component checked and described, ready to be stored by `plugin.install`.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    /// Its declaration.
    pub descriptor: Descriptor,
    /// SHA-256 of the bytes, hex.
    pub sha256: String,
    /// The component.
    pub wasm: Arc<Vec<u8>>,
}

/// An installed plugin, loaded.
pub struct Loaded {
    /// Its declaration.
    pub descriptor: Descriptor,
    /// Enabled by the practice.
    pub enabled: bool,
    settings: Arc<PluginSettings>,
    linked: Linked,
    /// Each step type's config schema, compiled once.
    config_checks: HashMap<String, ConfigCheck>,
}

/// What a custom step returned.
#[derive(Debug, Clone, PartialEq)]
pub enum StepResult {
    /// Go on to the next step, applying the changes.
    Continue(Vec<(String, Value)>),
    /// Take the YES (true) or NO path, applying the changes.
    Branch(bool, Vec<(String, Value)>),
    /// The plugin reported a failure.
    Failed(String),
}

/// What a sender adapter answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendResult {
    /// Taken; the provider's message id.
    Accepted(String),
    /// Try again later; why.
    RetryLater(String),
    /// Refused for good; why.
    Failed(String),
}

/// One custom step call.
#[derive(Debug, Clone)]
pub struct StepCall<'a> {
    /// The step type.
    pub step_type: &'a str,
    /// The effect's idempotency key.
    pub key: &'a str,
    /// The automation.
    pub automation_id: &'a str,
    /// The step.
    pub step_id: &'a str,
    /// Module time, RFC 3339.
    pub now: &'a str,
    /// The contact.
    pub contact: &'a Value,
    /// The step's config.
    pub config: &'a Value,
}

/// A message for a sender adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Idempotency key.
    pub key: String,
    /// `email` or `sms`.
    pub channel: String,
    /// Recipient.
    pub to: String,
    /// Sender.
    pub from: String,
    /// Email subject.
    pub subject: Option<String>,
    /// SMS text or plain-text part.
    pub text: String,
    /// HTML part.
    pub html: Option<String>,
    /// The full RFC 5322 message.
    pub rfc5322: Option<Vec<u8>>,
    /// The contact's first and last name, for scrubbing what the adapter
    /// says ([`redact::Redactor::message`]); never passed to it.
    pub patient: Vec<String>,
}

/// A call's outcome with its figures.
#[derive(Debug, Clone)]
pub struct Report<T> {
    /// The answer, or why there is none.
    pub result: std::result::Result<T, CallFailure>,
    /// Figures to record.
    pub figures: CallFigures,
}

/// The plugin host of one module.
pub struct PluginHost {
    runtime: OnceLock<std::result::Result<Runtime, String>>,
    linked: Mutex<HashMap<String, (Linked, String)>>,
    loaded: RwLock<HashMap<String, Arc<Loaded>>>,
    host: HostSlot,
}

/// A call's log lines and stderr as lines for the host's `log` callback,
/// tagged with the plugin id. They were scrubbed of the call's patient
/// values as the plugin wrote them ([`sandbox::CallState`]), before any
/// cut, so nothing here holds a value the module passed in.
fn log_lines<T>(id: &str, c: &Called<T>) -> Vec<(LogLevel, String)> {
    let mut lines: Vec<(LogLevel, String)> = (c.logs.iter())
        .map(|(level, line)| (*level, format!("plugin {id}: {line}")))
        .collect();
    if !c.stderr.is_empty() {
        lines.push((LogLevel::Warn, format!("plugin {id} stderr: {}", c.stderr)));
    }
    lines
}

fn sha256_hex(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl PluginHost {
    /// A host with nothing loaded; log lines go to the module's host.
    pub fn new(host: HostSlot) -> PluginHost {
        PluginHost {
            runtime: OnceLock::new(),
            linked: Mutex::new(HashMap::new()),
            loaded: RwLock::new(HashMap::new()),
            host,
        }
    }

    /// True once the engine has started (a plugin was installed or loaded).
    pub fn started(&self) -> bool {
        self.runtime.get().is_some_and(|r| r.is_ok())
    }

    fn runtime(&self) -> Result<&Runtime> {
        self.runtime
            .get_or_init(|| Runtime::new().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| Error::Internal(e.clone()))
    }

    fn link(&self, wasm: &[u8], sha: &str) -> Result<(Linked, String)> {
        if let Some(l) = self.linked.lock().get(sha) {
            return Ok(l.clone());
        }
        let runtime = self.runtime()?;
        let entry = runtime.link(wasm)?;
        self.linked.lock().insert(sha.to_string(), entry.clone());
        Ok(entry)
    }

    /// Compiles, links and describes a component: what `plugin.install`
    /// stores, and the lines it logged while describing itself. This runs
    /// on the caller's thread, where the host's `log` callback must not
    /// be called: the caller hands the lines to the worker.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] or [`Error::TooLarge`] with the reason the
    /// component cannot be loaded, or its declaration is wrong.
    pub fn prepare(&self, wasm: Vec<u8>) -> (Result<Prepared>, Vec<(LogLevel, String)>) {
        let sha = sha256_hex(&wasm);
        let cached = self.linked.lock().contains_key(&sha);
        let mut logs = Vec::new();
        let prepared = self.describe(wasm, &sha, &mut logs);
        if prepared.is_err() && !cached {
            // A component refused keeps no compiled code.
            self.linked.lock().remove(&sha);
        }
        (prepared, logs)
    }

    fn describe(
        &self,
        wasm: Vec<u8>,
        sha: &str,
        logs: &mut Vec<(LogLevel, String)>,
    ) -> Result<Prepared> {
        let (linked, contract) = self.link(&wasm, sha)?;
        let runtime = self.runtime()?;
        let settings = Arc::new(PluginSettings::default());
        // `describe` is given no patient data: nothing to scrub.
        let nothing = Arc::new(Redactor::none());
        let described = match &linked {
            Linked::Step(pre) => {
                let c = runtime.with_step(pre, &settings, &nothing, |g, s| g.call_describe(s));
                logs.extend(log_lines("(installing)", &c));
                c.result.map(|d| Descriptor::from_step(d, &contract))
            }
            Linked::Sender(pre) => {
                let c = runtime.with_sender(pre, &settings, &nothing, |g, s| g.call_describe(s));
                logs.extend(log_lines("(installing)", &c));
                c.result.map(|d| Descriptor::from_sender(d, &contract))
            }
        };
        let descriptor = described
            .map_err(|f| Error::invalid(format!("the plugin's describe failed: {}", f.reason)))?;
        descriptor.validate()?;
        Ok(Prepared {
            descriptor,
            sha256: sha.to_string(),
            wasm: Arc::new(wasm),
        })
    }

    /// Replaces the loaded set with the stored plugins (compiling only
    /// components not seen before, and keeping compiled only those). A plugin that no longer loads is left
    /// out and logged; its calls are retried until it is fixed or removed.
    pub fn load(&self, stored: Vec<StoredPlugin>) {
        if stored.is_empty() && !self.started() {
            self.loaded.write().clear();
            return;
        }
        let shas: std::collections::HashSet<String> =
            stored.iter().map(|p| p.sha256.clone()).collect();
        let mut next = HashMap::new();
        for p in stored {
            let id = p.descriptor.id.clone();
            match self.load_one(p) {
                Ok(l) => {
                    next.insert(id, Arc::new(l));
                }
                Err(e) => crate::host::log(
                    &self.host,
                    LogLevel::Error,
                    &format!("plugin {id}: does not load: {e}"),
                ),
            }
        }
        *self.loaded.write() = next;
        // Compiled code of components no longer stored (replaced, removed,
        // or prepared for an install that did not land) is dropped.
        self.linked.lock().retain(|sha, _| shas.contains(sha));
    }

    fn load_one(&self, p: StoredPlugin) -> Result<Loaded> {
        let (linked, _) = self.link(&p.wasm, &p.sha256)?;
        if linked.kind() != p.descriptor.kind {
            return Err(Error::Internal(
                "stored kind differs from the component".into(),
            ));
        }
        let fetch = match p.descriptor.kind {
            PluginKind::Sender => Some(FetchPolicy {
                grants: p
                    .grants
                    .iter()
                    .map(|g| Grant::parse(g))
                    .collect::<Result<Vec<_>>>()?,
                allow_private_network: p.limits.allow_private_network,
                max_body: p.limits.fetch_response_bytes,
            }),
            PluginKind::Step => None,
        };
        let config_checks = p
            .descriptor
            .step_types
            .iter()
            .map(|t| Ok((t.id.clone(), ConfigCheck::compile(t)?)))
            .collect::<Result<HashMap<_, _>>>()?;
        Ok(Loaded {
            config_checks,
            descriptor: p.descriptor,
            enabled: p.enabled,
            settings: Arc::new(PluginSettings {
                config: p.config,
                secrets: p.secrets,
                limits: p.limits,
                fetch,
            }),
            linked,
        })
    }

    /// A loaded plugin.
    pub fn get(&self, id: &str) -> Option<Arc<Loaded>> {
        self.loaded.read().get(id).cloned()
    }

    fn usable(&self, id: &str) -> std::result::Result<Arc<Loaded>, CallFailure> {
        match self.get(id) {
            Some(l) if l.enabled => Ok(l),
            Some(_) => Err(CallFailure::transient(format!("plugin {id} is disabled"))),
            None => Err(CallFailure::transient(format!(
                "plugin {id} is not installed or does not load"
            ))),
        }
    }

    /// Hands a call's log lines and stderr to the host's `log` callback
    /// ([`log_lines`]).
    fn forward_logs<T>(&self, id: &str, c: &Called<T>) {
        for (level, line) in log_lines(id, c) {
            crate::host::log(&self.host, level, &line);
        }
    }

    /// Runs one custom step. Never panics; every failure is in the report.
    ///
    /// The plugin's log lines, its stderr and every failure reason in the
    /// report (its own `failed(reason)` and the host's) are scrubbed of the
    /// contact's values ([`Redactor::contact`]) before they leave this call.
    pub fn run_step(&self, plugin_id: &str, call: &StepCall<'_>) -> Report<StepResult> {
        let started = Instant::now();
        let contact = call.contact.to_string();
        let plugin = self.usable(plugin_id);
        let ran = plugin.is_ok();
        let redactor = Arc::new(Redactor::contact(contact.clone()).with_secrets(secrets(&plugin)));
        let result = match self.run_step_inner(plugin_id, plugin, call, contact, &redactor) {
            Ok(StepResult::Failed(r)) => Ok(StepResult::Failed(redactor.redact_string(r))),
            Err(f) => Err(scrubbed(f, &redactor)),
            ok => ok,
        };
        let failure = match &result {
            Ok(StepResult::Failed(r)) => Some(r.clone()),
            Ok(_) => None,
            Err(f) => Some(f.reason.clone()),
        };
        Report {
            result,
            figures: CallFigures {
                plugin_id: plugin_id.to_string(),
                operation: call.step_type.to_string(),
                micros: started.elapsed().as_micros() as u64,
                failure,
                ran,
            },
        }
    }

    fn run_step_inner(
        &self,
        plugin_id: &str,
        plugin: std::result::Result<Arc<Loaded>, CallFailure>,
        call: &StepCall<'_>,
        contact: String,
        redactor: &Arc<Redactor>,
    ) -> std::result::Result<StepResult, CallFailure> {
        let plugin = plugin?;
        let Linked::Step(pre) = &plugin.linked else {
            return Err(CallFailure::permanent(format!(
                "plugin {plugin_id} is not a step plugin"
            )));
        };
        let (Some(decl), Some(config_check)) = (
            plugin.descriptor.step_type(call.step_type),
            plugin.config_checks.get(call.step_type),
        ) else {
            return Err(CallFailure::permanent(format!(
                "plugin {plugin_id} has no step type {:?}",
                call.step_type
            )));
        };
        config_check
            .check(call.config)
            .map_err(|e| CallFailure::permanent(e.to_string()))?;
        let config = call.config.to_string();
        let limits = plugin.settings.limits;
        let input = (contact.len() + config.len()) as u64;
        if input > limits.input_bytes {
            return Err(CallFailure::permanent(format!(
                "input of {input} bytes exceeds the cap of {} bytes",
                limits.input_bytes
            )));
        }
        let request = wit_step::StepRequest {
            step_type: call.step_type.to_string(),
            idempotency_key: call.key.to_string(),
            automation_id: call.automation_id.to_string(),
            step_id: call.step_id.to_string(),
            now: call.now.to_string(),
            contact,
            config,
        };
        let runtime = self
            .runtime()
            .map_err(|e| CallFailure::transient(e.to_string()))?;
        let called = runtime.with_step(pre, &plugin.settings, redactor, |g, s| {
            g.call_run(s, &request)
        });
        self.forward_logs(plugin_id, &called);
        let outcome = called.result?;
        let size = match &outcome {
            wit_step::StepOutcome::Continue(c) => changes_size(c),
            wit_step::StepOutcome::Branch(b) => changes_size(&b.changes),
            wit_step::StepOutcome::Failed(r) => r.len(),
        } as u64;
        if size > limits.output_bytes {
            return Err(CallFailure::permanent(format!(
                "output of {size} bytes exceeds the cap of {} bytes",
                limits.output_bytes
            )));
        }
        let declared = |o: &str| decl.outcomes.iter().any(|d| d == o);
        let changes = |c: Vec<wit_types::PropertyChange>| {
            if !c.is_empty() && !declared("property_changes") {
                return Err(CallFailure::permanent(format!(
                    "returned property changes, which step type {:?} does not declare",
                    decl.id
                )));
            }
            c.into_iter()
                .enumerate()
                .map(|(i, p)| {
                    // Named by its place, not its name: a name the plugin
                    // chose is not echoed before it is known to be a
                    // property's (the step checks that).
                    serde_json::from_str::<Value>(&p.value)
                        .map(|v| (p.name, v))
                        .map_err(|_| {
                            CallFailure::permanent(format!(
                                "property change {}: value is not JSON",
                                i + 1
                            ))
                        })
                })
                .collect::<std::result::Result<Vec<_>, _>>()
        };
        match outcome {
            wit_step::StepOutcome::Continue(c) if declared("continue") => {
                Ok(StepResult::Continue(changes(c)?))
            }
            wit_step::StepOutcome::Branch(b) if declared("branch") => {
                Ok(StepResult::Branch(b.yes, changes(b.changes)?))
            }
            wit_step::StepOutcome::Failed(reason) => Ok(StepResult::Failed(reason)),
            wit_step::StepOutcome::Continue(_) => Err(CallFailure::permanent(format!(
                "returned continue, which step type {:?} does not declare",
                decl.id
            ))),
            wit_step::StepOutcome::Branch(_) => Err(CallFailure::permanent(format!(
                "returned branch, which step type {:?} does not declare",
                decl.id
            ))),
        }
    }

    /// Sends one message through a sender adapter. Never panics.
    ///
    /// The adapter's log lines, its stderr and every reason in the report
    /// (its `retry-later` / `failed` reasons and the host's) are scrubbed of
    /// the recipient, subject, text and HTML part ([`Redactor::message`])
    /// before they leave this call.
    pub fn send(&self, plugin_id: &str, message: &Outgoing) -> Report<SendResult> {
        let started = Instant::now();
        let plugin = self.usable(plugin_id);
        let ran = plugin.is_ok();
        let redactor = Arc::new(Redactor::message(message).with_secrets(secrets(&plugin)));
        let result = match self.send_inner(plugin_id, plugin, message, &redactor) {
            Ok(SendResult::RetryLater(r)) => Ok(SendResult::RetryLater(redactor.redact_string(r))),
            Ok(SendResult::Failed(r)) => Ok(SendResult::Failed(redactor.redact_string(r))),
            Err(f) => Err(scrubbed(f, &redactor)),
            ok => ok,
        };
        let failure = match &result {
            Ok(SendResult::Accepted(_)) => None,
            Ok(SendResult::RetryLater(r) | SendResult::Failed(r)) => Some(r.clone()),
            Err(f) => Some(f.reason.clone()),
        };
        Report {
            result,
            figures: CallFigures {
                plugin_id: plugin_id.to_string(),
                operation: "send".into(),
                micros: started.elapsed().as_micros() as u64,
                failure,
                ran,
            },
        }
    }

    fn send_inner(
        &self,
        plugin_id: &str,
        plugin: std::result::Result<Arc<Loaded>, CallFailure>,
        m: &Outgoing,
        redactor: &Arc<Redactor>,
    ) -> std::result::Result<SendResult, CallFailure> {
        let plugin = plugin?;
        let Linked::Sender(pre) = &plugin.linked else {
            return Err(CallFailure::permanent(format!(
                "plugin {plugin_id} is not a sender adapter"
            )));
        };
        if !plugin.descriptor.channels.contains(&m.channel) {
            return Err(CallFailure::permanent(format!(
                "plugin {plugin_id} does not send {}",
                m.channel
            )));
        }
        let limits = plugin.settings.limits;
        let input = (m.to.len()
            + m.from.len()
            + m.text.len()
            + m.subject.as_ref().map_or(0, String::len)
            + m.html.as_ref().map_or(0, String::len)
            + m.rfc5322.as_ref().map_or(0, Vec::len)) as u64;
        if input > limits.input_bytes {
            return Err(CallFailure::permanent(format!(
                "input of {input} bytes exceeds the cap of {} bytes",
                limits.input_bytes
            )));
        }
        let message = wit_sender::OutgoingMessage {
            idempotency_key: m.key.clone(),
            channel: if m.channel == "email" {
                wit_types::Channel::Email
            } else {
                wit_types::Channel::Sms
            },
            to: m.to.clone(),
            from: m.from.clone(),
            subject: m.subject.clone(),
            text: m.text.clone(),
            html: m.html.clone(),
            rfc5322: m.rfc5322.clone(),
        };
        let runtime = self
            .runtime()
            .map_err(|e| CallFailure::transient(e.to_string()))?;
        let called = runtime.with_sender(pre, &plugin.settings, redactor, |g, s| {
            g.call_send(s, &message)
        });
        self.forward_logs(plugin_id, &called);
        let fetch_failures = called.fetch_failures.clone();
        let outcome = called.result?;
        let size = match &outcome {
            wit_sender::SendOutcome::Accepted(s)
            | wit_sender::SendOutcome::RetryLater(s)
            | wit_sender::SendOutcome::Failed(s) => s.len() as u64,
        };
        if size > limits.output_bytes {
            return Err(CallFailure::permanent(format!(
                "output of {size} bytes exceeds the cap of {} bytes",
                limits.output_bytes
            )));
        }
        // A refused fetch is named in the reason even if the plugin's own words differ.
        let refused = fetch_failures
            .iter()
            .find(|c| matches!(**c, "not_granted" | "private_address" | "redirect_refused"));
        let with_fetch = |r: String| match refused {
            Some(code) if !r.contains(code) => format!("{r} (fetch refused: {code})"),
            _ => r,
        };
        Ok(match outcome {
            wit_sender::SendOutcome::Accepted(id) => SendResult::Accepted(id),
            wit_sender::SendOutcome::RetryLater(r) => SendResult::RetryLater(with_fetch(r)),
            wit_sender::SendOutcome::Failed(r) => SendResult::Failed(with_fetch(r)),
        })
    }
}

/// The values of a usable plugin's secrets, scrubbed from what its calls
/// leave behind (a plugin that cannot be called leaves nothing).
fn secrets(plugin: &std::result::Result<Arc<Loaded>, CallFailure>) -> Vec<String> {
    plugin
        .as_ref()
        .map(|l| l.settings.secrets.values().cloned().collect())
        .unwrap_or_default()
}

/// A call failure with its reason scrubbed.
fn scrubbed(f: CallFailure, redactor: &Redactor) -> CallFailure {
    CallFailure {
        reason: redactor.redact_string(f.reason),
        transient: f.transient,
    }
}

fn changes_size(c: &[wit_types::PropertyChange]) -> usize {
    c.iter().map(|p| p.name.len() + p.value.len()).sum()
}
