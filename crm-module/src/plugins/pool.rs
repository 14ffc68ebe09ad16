//! The plugin pool: threads that run plugin calls off the worker and the
//! dispatcher, so a slow plugin delays only its own step or message. Each
//! answer goes back to the worker, which records it in one transaction with
//! the enrollment's next move.

use std::sync::Arc;
use std::thread::JoinHandle;

use base64::Engine as _;
use crossbeam_channel::{Receiver, Sender};
use serde_json::Value;

use super::runtime::CallFailure;
use super::{Outgoing, PluginHost, Report, SendResult, StepCall};
use crate::error::{Error, Result};
use crate::messaging::handover::Rescreen;
use crate::outbox::{DueEffect, HostAnswer};
use crate::worker::{AnsweredBy, Request};

/// A plugin call to make.
pub enum Job {
    /// A custom step (an outbox row of kind `plugin_step`).
    Step(DueEffect),
    /// A message for a sender adapter.
    Send {
        /// The outbox row.
        effect: DueEffect,
        /// The adapter chosen for its channel in settings.
        plugin_id: String,
    },
}

/// Threads in the pool: calls that may run at once.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 4)
}

/// Starts `threads` pool threads; they end when every job sender is gone.
///
/// # Errors
///
/// [`Error::Internal`] when a thread cannot start.
pub fn spawn(
    threads: usize,
    plugins: Arc<PluginHost>,
    worker: Sender<Request>,
    rescreen: Arc<Rescreen>,
) -> Result<(Sender<Job>, Vec<JoinHandle<()>>)> {
    let (tx, rx) = crossbeam_channel::unbounded::<Job>();
    let mut handles = Vec::new();
    for i in 0..threads.max(1) {
        let (rx, plugins, worker) = (rx.clone(), plugins.clone(), worker.clone());
        let rescreen = rescreen.clone();
        handles.push(
            std::thread::Builder::new()
                .name(format!("crm-plugin-{i}"))
                .spawn(move || run(rx, &plugins, &worker, &rescreen))
                .map_err(|e| Error::Internal(format!("cannot start a plugin thread: {e}")))?,
        );
    }
    Ok((tx, handles))
}

fn run(jobs: Receiver<Job>, plugins: &PluginHost, worker: &Sender<Request>, rescreen: &Rescreen) {
    for job in jobs {
        let _under_way = rescreen.take();
        // A row whose contact changed while it waited for a free thread
        // goes back to be screened again.
        let (Job::Step(effect) | Job::Send { effect, .. }) = &job;
        match crate::host::hold_back(worker, rescreen, effect) {
            Some(true) => continue,
            Some(false) => return,
            None => {}
        }
        // A defect in a call (ours, not the plugin's: its traps are caught
        // by the engine) is answered as a failure that may pass, so the
        // row is retried under its key and the thread lives on; otherwise
        // the row stayed in flight for good and the pool shrank.
        let request = match job {
            Job::Step(effect) => {
                // The plugin's id is read from the payload only for a
                // defect's report: `step` reads the payload itself.
                let plugin_id = || {
                    serde_json::from_str::<Value>(&effect.payload)
                        .ok()
                        .and_then(|v| v["plugin_id"].as_str().map(str::to_string))
                        .unwrap_or_default()
                };
                Request::PluginStep {
                    outbox_id: effect.id,
                    report: contained(plugin_id, || step(plugins, &effect)),
                }
            }
            Job::Send { effect, plugin_id } => {
                let report = contained(|| plugin_id.clone(), || send(plugins, &plugin_id, &effect));
                let (answer, error) = match &report.result {
                    Ok(SendResult::Accepted(_)) => (HostAnswer::Accepted, None),
                    Ok(SendResult::RetryLater(r)) => (HostAnswer::RetryLater, Some(r.clone())),
                    Ok(SendResult::Failed(r)) => (HostAnswer::Failed, Some(r.clone())),
                    Err(f) if f.transient => (HostAnswer::RetryLater, Some(f.reason.clone())),
                    Err(f) => (HostAnswer::Failed, Some(f.reason.clone())),
                };
                Request::Answer {
                    outbox_id: effect.id,
                    answer,
                    error: error.map(|e| format!("plugin {plugin_id}: {e}")),
                    by: AnsweredBy::Plugin(report.figures),
                }
            }
        };
        if worker.send(request).is_err() {
            return;
        }
    }
}

/// `call`'s report, or a transient failure (of plugin `plugin_id()`, when
/// known) if it panicked.
fn contained<T>(plugin_id: impl FnOnce() -> String, call: impl FnOnce() -> Report<T>) -> Report<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(call)).unwrap_or_else(|_| {
        let reason = "the plugin call stopped on a defect in the module".to_string();
        Report {
            result: Err(CallFailure::transient(reason.clone())),
            figures: super::registry::CallFigures {
                plugin_id: plugin_id(),
                operation: String::new(),
                micros: 0,
                failure: Some(reason),
                ran: false,
            },
        }
    })
}

/// A report for a call that never reached the plugin: its payload was unusable.
fn bad_payload<T>(plugin_id: &str, operation: &str, why: &str) -> Report<T> {
    let reason = format!("payload: {why}");
    Report {
        result: Err(CallFailure::permanent(reason.clone())),
        figures: super::registry::CallFigures {
            plugin_id: plugin_id.to_string(),
            operation: operation.to_string(),
            micros: 0,
            failure: Some(reason),
            ran: false,
        },
    }
}

/// Runs the custom step an outbox row describes.
fn step(plugins: &PluginHost, effect: &DueEffect) -> Report<super::StepResult> {
    let Ok(v) = serde_json::from_str::<Value>(&effect.payload) else {
        return bad_payload("", "", "not JSON");
    };
    let s = |k: &str| v[k].as_str().unwrap_or_default();
    let (plugin_id, step_type) = (s("plugin_id"), s("step_type"));
    if plugin_id.is_empty() || step_type.is_empty() {
        return bad_payload(plugin_id, step_type, "plugin_id and step_type are required");
    }
    #[cfg(test)]
    if plugin_id == "defect-in-test" {
        panic!("a defect injected by a test");
    }
    plugins.run_step(
        plugin_id,
        &StepCall {
            step_type,
            key: &effect.key,
            automation_id: s("automation_id"),
            step_id: s("step_id"),
            now: s("now"),
            contact: &v["contact"],
            config: &v["config"],
        },
    )
}

/// Sends the message an outbox row holds through the adapter.
fn send(plugins: &PluginHost, plugin_id: &str, effect: &DueEffect) -> Report<SendResult> {
    match outgoing(effect) {
        Ok(m) => plugins.send(plugin_id, &m),
        Err(why) => bad_payload(plugin_id, "send", why),
    }
}

/// The rendered message of a message payload.
pub fn outgoing(effect: &DueEffect) -> std::result::Result<Outgoing, &'static str> {
    let v: Value = serde_json::from_str(&effect.payload).map_err(|_| "not JSON")?;
    let r = &v["rendered"];
    let text = |x: &Value| x.as_str().map(str::to_string);
    let channel = text(&v["channel"]).ok_or("channel: missing")?;
    let to = text(&v["to"]).ok_or("to: missing")?;
    let patient: Vec<String> = ["firstname", "lastname"]
        .iter()
        .filter_map(|p| text(&v["placeholders"][p]))
        .collect();
    Ok(match channel.as_str() {
        "sms" => Outgoing {
            key: effect.key.clone(),
            channel,
            to,
            from: text(&r["from"]).unwrap_or_default(),
            subject: None,
            text: text(&r["text"]).ok_or("rendered.text: missing")?,
            html: None,
            rfc5322: None,
            patient,
        },
        "email" => Outgoing {
            key: effect.key.clone(),
            channel,
            to,
            from: text(&r["envelope_from"]).ok_or("rendered.envelope_from: missing")?,
            subject: text(&r["subject"]),
            text: text(&r["text"]).unwrap_or_default(),
            html: text(&r["html"]),
            rfc5322: Some(
                base64::engine::general_purpose::STANDARD
                    .decode(
                        r["rfc5322_base64"]
                            .as_str()
                            .ok_or("rendered.rfc5322_base64: missing")?,
                    )
                    .map_err(|_| "rendered.rfc5322_base64: not base64")?,
            ),
            patient,
        },
        _ => return Err("channel: not email or sms"),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::outbox::EffectKind;

    /// A defect in a call is answered as a failure that may pass (the row
    /// is retried under its key), and the thread goes on with the next.
    #[test]
    fn a_defect_in_a_call_is_answered_and_the_thread_lives_on() {
        let host: crate::host::HostSlot = Arc::new(parking_lot::RwLock::new(None));
        let plugins = Arc::new(PluginHost::new(host));
        let (worker, answers) = crossbeam_channel::unbounded();
        let (jobs, threads) = spawn(1, plugins, worker, Arc::default()).unwrap();
        let job = |id: i64, plugin_id: &str| {
            Job::Step(DueEffect {
                id,
                key: format!("k{id}"),
                kind: EffectKind::PluginStep,
                payload: serde_json::json!({"plugin_id": plugin_id, "step_type": "x"}).to_string(),
                channel: None,
                contact_id: Some("c1".into()),
                screened: 0,
                exempt: false,
            })
        };
        jobs.send(job(1, "defect-in-test")).unwrap();
        jobs.send(job(2, "not-installed")).unwrap();
        for expected in [1, 2] {
            match answers.recv_timeout(Duration::from_secs(30)).unwrap() {
                Request::PluginStep { outbox_id, report } => {
                    assert_eq!(outbox_id, expected);
                    let failure = report.result.expect_err("a failure");
                    if expected == 1 {
                        assert!(
                            failure.transient && failure.reason.contains("defect"),
                            "{failure:?}"
                        );
                    }
                }
                _ => panic!("not a custom step's answer"),
            }
        }
        drop(jobs);
        for t in threads {
            t.join().unwrap();
        }
    }
}
