//! The plugin pool: threads that run plugin calls off the worker and the
//! dispatcher, so a slow plugin delays only its own step or message. Each
//! answer goes back to the worker, which records it in one transaction with
//! the enrollment's next move.
//!
//! The calls wait in a [`Queue`] that is fair between plugins: a free
//! thread takes the oldest call of the plugin with the fewest calls
//! running, not the oldest call of all. A backlog of one slow plugin's
//! calls (each may run up to its deadline) then never stands in front of
//! another plugin's: that one waits at most for one running call to end.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::thread::JoinHandle;

use base64::Engine as _;
use crossbeam_channel::Sender;
use parking_lot::{Condvar, Mutex};
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

impl Job {
    /// The plugin the call is for (a custom step's from its payload; empty
    /// when the payload names none, which the call then reports).
    fn plugin_id(&self) -> String {
        match self {
            Job::Step(effect) => serde_json::from_str::<Value>(&effect.payload)
                .ok()
                .and_then(|v| v["plugin_id"].as_str().map(str::to_string))
                .unwrap_or_default(),
            Job::Send { plugin_id, .. } => plugin_id.clone(),
        }
    }
}

/// The calls waiting for a pool thread, and how many of each plugin's run.
#[derive(Default)]
struct Calls {
    /// Waiting, oldest first, each with its plugin.
    waiting: VecDeque<(String, Job)>,
    /// Calls running now, by plugin (no entry: none).
    running: HashMap<String, usize>,
    /// No more calls will come: the threads end once `waiting` is empty.
    closed: bool,
}

impl Calls {
    /// The waiting call a free thread takes: the oldest of the plugin with
    /// the fewest calls running.
    fn next(&mut self) -> Option<(String, Job)> {
        let mut best: Option<(usize, usize)> = None; // (running, position)
        for (i, (plugin, _)) in self.waiting.iter().enumerate() {
            let running = self.running.get(plugin).copied().unwrap_or(0);
            if best.is_none_or(|(r, _)| running < r) {
                best = Some((running, i));
                if running == 0 {
                    break;
                }
            }
        }
        let (plugin, job) = self.waiting.remove(best?.1)?;
        *self.running.entry(plugin.clone()).or_default() += 1;
        Some((plugin, job))
    }

    /// A call of `plugin` ended.
    fn ended(&mut self, plugin: &str) {
        if let Some(n) = self.running.get_mut(plugin) {
            *n -= 1;
            if *n == 0 {
                self.running.remove(plugin);
            }
        }
    }
}

struct Shared {
    calls: Mutex<Calls>,
    more: Condvar,
}

/// Where the dispatcher puts plugin calls for the pool (see the module
/// documentation). Dropping it tells the threads to end once the calls
/// already given have run.
pub struct Queue(Arc<Shared>);

impl Queue {
    /// Gives the pool a call to make.
    pub fn send(&self, job: Job) {
        let plugin = job.plugin_id();
        self.0.calls.lock().waiting.push_back((plugin, job));
        self.0.more.notify_one();
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        self.0.calls.lock().closed = true;
        self.0.more.notify_all();
    }
}

/// A pool thread's side of the [`Queue`].
struct Taker(Arc<Shared>);

impl Taker {
    /// The next call to make, waiting for one; `None` once the queue is
    /// dropped and empty. The call counts as running until the returned
    /// guard is dropped.
    fn take(&self) -> Option<(Running<'_>, Job)> {
        let mut calls = self.0.calls.lock();
        loop {
            if let Some((plugin, job)) = calls.next() {
                return Some((
                    Running {
                        shared: &self.0,
                        plugin,
                    },
                    job,
                ));
            }
            if calls.closed {
                return None;
            }
            self.0.more.wait(&mut calls);
        }
    }
}

/// A call under way: counted in [`Calls::running`] until dropped.
struct Running<'a> {
    shared: &'a Shared,
    plugin: String,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.shared.calls.lock().ended(&self.plugin);
    }
}

/// Threads in the pool: calls that may run at once.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 4)
}

/// Starts `threads` pool threads; they end when the [`Queue`] is dropped
/// and its calls have run.
///
/// # Errors
///
/// [`Error::Internal`] when a thread cannot start.
pub fn spawn(
    threads: usize,
    plugins: Arc<PluginHost>,
    worker: Sender<Request>,
    rescreen: Arc<Rescreen>,
) -> Result<(Queue, Vec<JoinHandle<()>>)> {
    let shared = Arc::new(Shared {
        calls: Mutex::new(Calls::default()),
        more: Condvar::new(),
    });
    let queue = Queue(shared.clone());
    let mut handles = Vec::new();
    for i in 0..threads.max(1) {
        let (taker, plugins, worker) = (Taker(shared.clone()), plugins.clone(), worker.clone());
        let rescreen = rescreen.clone();
        handles.push(
            std::thread::Builder::new()
                .name(format!("crm-plugin-{i}"))
                .spawn(move || run(&taker, &plugins, &worker, &rescreen))
                .map_err(|e| Error::Internal(format!("cannot start a plugin thread: {e}")))?,
        );
    }
    Ok((queue, handles))
}

fn run(jobs: &Taker, plugins: &PluginHost, worker: &Sender<Request>, rescreen: &Rescreen) {
    while let Some((running, job)) = jobs.take() {
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
            Job::Step(effect) => Request::PluginStep {
                outbox_id: effect.id,
                // The queue read the plugin's id from the payload
                // (`Job::plugin_id`); `step` reads the payload itself.
                report: contained(|| running.plugin.clone(), || step(plugins, &effect)),
            },
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
    // A send again after soft bounces has a key of its own for the provider.
    let key = crate::outbox::send_key(&effect.key, v["resend"].as_u64().unwrap_or(0));
    let patient: Vec<String> = ["firstname", "lastname"]
        .iter()
        .filter_map(|p| text(&v["placeholders"][p]))
        .collect();
    Ok(match channel.as_str() {
        "sms" => Outgoing {
            key: key.clone(),
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
            key,
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

    fn effect(id: i64, plugin_id: &str) -> DueEffect {
        DueEffect {
            id,
            key: format!("k{id}"),
            kind: EffectKind::PluginStep,
            payload: serde_json::json!({"plugin_id": plugin_id, "step_type": "x"}).to_string(),
            channel: None,
            contact_id: Some("c1".into()),
            screened: 0,
            attempts: 0,
            exempt: false,
        }
    }

    fn step_job(id: i64, plugin_id: &str) -> Job {
        Job::Step(effect(id, plugin_id))
    }

    fn id_of(job: &Job) -> i64 {
        match job {
            Job::Step(e) | Job::Send { effect: e, .. } => e.id,
        }
    }

    /// A backlog of one plugin's calls does not stand in front of
    /// another's: a free thread takes the oldest call of the plugin with
    /// the fewest calls running (a FIFO ran every queued call of the slow
    /// plugin, each up to its deadline, before the other's).
    #[test]
    fn a_free_thread_takes_the_plugin_with_the_fewest_calls_running() {
        let mut calls = Calls::default();
        for id in 1..=4 {
            calls
                .waiting
                .push_back(("slow".into(), step_job(id, "slow")));
        }
        calls
            .waiting
            .push_back(("fast".into(), step_job(5, "fast")));
        calls.waiting.push_back((
            "adapter".into(),
            Job::Send {
                effect: effect(6, ""),
                plugin_id: "adapter".into(),
            },
        ));
        let take = |calls: &mut Calls| {
            let (plugin, job) = calls.next().expect("a call");
            (plugin, id_of(&job))
        };
        // Two threads free: the oldest call, then the oldest of a plugin
        // with nothing running.
        assert_eq!(take(&mut calls), ("slow".to_string(), 1));
        assert_eq!(take(&mut calls), ("fast".to_string(), 5));
        // The fast call ends: its thread takes the adapter's, not slow's 2.
        calls.ended("fast");
        assert_eq!(take(&mut calls), ("adapter".to_string(), 6));
        calls.ended("adapter");
        // Only slow's calls are left: they run on every free thread.
        assert_eq!(take(&mut calls), ("slow".to_string(), 2));
        assert_eq!(take(&mut calls), ("slow".to_string(), 3));
        assert_eq!(calls.running.get("slow"), Some(&3));
        // A new plugin's call arriving now goes first at the next free thread.
        calls
            .waiting
            .push_back(("fast".into(), step_job(7, "fast")));
        calls.ended("slow");
        assert_eq!(take(&mut calls), ("fast".to_string(), 7));
        assert_eq!(take(&mut calls), ("slow".to_string(), 4));
        assert!(calls.next().is_none());
        for _ in 0..3 {
            calls.ended("slow");
        }
        calls.ended("fast");
        assert!(calls.running.is_empty(), "{:?}", calls.running);
    }

    /// The plugin a call is for: a custom step's from its payload.
    #[test]
    fn a_call_names_its_plugin() {
        assert_eq!(step_job(1, "lead-score").plugin_id(), "lead-score");
        let mut e = effect(2, "");
        e.payload = "not json".into();
        assert_eq!(Job::Step(e).plugin_id(), "");
    }

    /// A defect in a call is answered as a failure that may pass (the row
    /// is retried under its key), and the thread goes on with the next.
    #[test]
    fn a_defect_in_a_call_is_answered_and_the_thread_lives_on() {
        let host: crate::host::HostSlot = Arc::new(parking_lot::RwLock::new(None));
        let plugins = Arc::new(PluginHost::new(host));
        let (worker, answers) = crossbeam_channel::unbounded();
        let (jobs, threads) = spawn(1, plugins, worker, Arc::default()).unwrap();
        jobs.send(step_job(1, "defect-in-test"));
        jobs.send(step_job(2, "not-installed"));
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
