//! `automation_performance`: the Performance tab of one automation. Every
//! figure is computed from the append-only `events` table (plus the
//! `enrollments` table for time in flow) with a fixed handful of aggregate
//! queries grouped by kind / step / channel, so the page stays fast with
//! millions of event rows: each query is a range scan of the
//! `events_automation(automation_id, kind, step_id, channel, at)` index for
//! one automation.

use std::collections::{HashMap, HashSet};

use chrono::Days;
use rusqlite::params;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::builder::{Header, TabItem, header, tabs};
use super::detailed_analytics::{self, DetailedAnalytics, Totals};
use super::engagement_grade::Periods;
use super::engagement_timeline::{self, EngagementTimeline};
use super::{
    Action, Column, Ctx, DASH, GoalCell, Label, StatCard, ViewRef, fmt_count, fmt_duration,
    fmt_duration_short, fmt_share, humanize, load_automation, num_f, num_u, rate, round1,
};
use crate::clock::Millis;
use crate::core::goals;
use crate::error::Result;
use crate::model::automation::{AutomationDefinition, Flow, Step, StepKind};
use crate::schedule::{local_date, local_to_utc_ms};

/// Days shown by the engagement-over-time chart.
pub const CHART_DAYS: u32 = 30;

/// Parameters of `automation_performance`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PerformanceParams {
    /// The automation.
    pub automation_id: String,
}

/// The Performance tab of an automation.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct PerformanceView {
    /// The automation.
    pub automation_id: String,
    /// The builder's top bar.
    pub header: Header,
    /// The builder's tabs, Performance selected.
    pub tabs: Vec<TabItem>,
    /// The automation's goal (id null with label "—" when none).
    pub goal: GoalCell,
    /// Exactly four cards: Enrolled, Completed, Goal reached, Conversion.
    pub stat_cards: Vec<StatCard>,
    /// Enrolled / completed / goal reached per practice-local day.
    pub engagement_over_time: EngagementOverTime,
    /// The best steps by conversion (up to three).
    pub top_steps: Vec<TopStep>,
    /// Messages per channel.
    pub channel_breakdown: Vec<ChannelRow>,
    /// Enrolled → Completed → Goal reached.
    pub goal_funnel: Vec<FunnelStage>,
    /// The per-step performance table.
    pub steps: StepsTable,
    /// Average (and median) time in flow.
    pub time_in_flow: TimeInFlow,
    /// Why contacts left before the End.
    pub exits: Exits,
    /// Messages not sent, by reason (consent, compliance): never silently dropped.
    pub suppressions: Exits,
    /// Figures of the whole automation, every message and step together:
    /// conversion, time in flow, time to first action, unique clicks, the
    /// SPEC §5 rates and the engagement grade.
    pub detailed_analytics: DetailedAnalytics,
    /// The latest opens, clicks, replies and goals reached.
    pub engagement_timeline: EngagementTimeline,
}

/// The engagement-over-time chart.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct EngagementOverTime {
    /// Chart title.
    pub title: String,
    /// The three lines: `enrolled`, `completed`, `goal_reached`.
    pub series: Vec<Label>,
    /// One point per practice-local day, oldest first, ending today.
    pub points: Vec<DayPoint>,
}

/// One day of the chart.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct DayPoint {
    /// Practice-local date `YYYY-MM-DD`.
    pub date: String,
    /// Axis label ("Mar 8").
    pub label: String,
    /// Enrollments that day.
    pub enrolled: u64,
    /// Completions that day.
    pub completed: u64,
    /// Goals reached that day.
    pub goal_reached: u64,
}

/// The step types "Top performing steps" ranks: those whose conversion
/// measures an outcome (messages that could not go, plugin calls that
/// failed). A wait, an If/then, a task, a property change or an Add to list
/// completes as it runs (it fails only on an error): at 100 % they
/// outranked an email delivered at 99.9 % over 10,000 sends.
const RANKED_STEPS: &[&str] = &["send_email", "send_sms", "custom"];

/// A top performing step: of the message and plugin steps (not waits,
/// If/then branches, tasks, property changes or Add to list, which
/// complete as they run), the highest conversion, then the most executed.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct TopStep {
    /// Step id.
    pub step_id: String,
    /// Step title.
    pub title: String,
    /// Completed ÷ (completed + failed) × 100, as in the step table.
    pub conversion: Option<f64>,
    /// Formatted conversion.
    pub conversion_display: String,
    /// Times executed.
    pub executed: u64,
}

/// Message counts of one channel.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ChannelRow {
    /// `email` or `sms`.
    pub channel: Label,
    /// Messages queued: one per message a step composed, whether or not it
    /// was handed over (see `send_attempts`).
    pub queued: u64,
    /// Accepted by the host's channel.
    pub sent: u64,
    /// Messages delivered: a delivery receipt, the module's relay taking
    /// it, or a person's answer to it with no receipt; less those a later
    /// bounce took back.
    pub delivered: u64,
    /// Messages opened: each message's first open by a person (a click
    /// with no open recorded counts as its open); machines' opens never.
    pub opened: u64,
    /// Messages clicked: each message's first click by a person.
    pub clicked: u64,
    /// Messages replied to: each message's first reply (keywords such as
    /// STOP are no replies).
    pub replied: u64,
    /// Bounces (hard and soft), one per hand-over: a soft bounce the same
    /// hand-over's delivery or failure took back is not among them.
    pub bounced: u64,
    /// Internal or channel failures.
    pub failed: u64,
    /// Not sent: consent or compliance held them back (unsubscribed, no
    /// consent, an undeliverable address), with the reason in the
    /// suppressions table. A message whose soft bounces were used up is not
    /// among them: it was sent, and each bounce counts in `bounced`.
    pub suppressed: u64,
    /// Queued but withdrawn before they were handed over: their contact
    /// left the automation (or met the goal after its End) or the
    /// automation was deleted while they waited (a sending limit, the
    /// sending hours, a retry). Neither sent nor suppressed.
    pub withdrawn: u64,
    /// Send attempts: hand-overs the sender accepted (a resend after a soft
    /// bounce is one more) plus those that failed at or before the
    /// hand-over; a "retry later" answer is none.
    pub send_attempts: u64,
    /// Bounced (hard + soft) ÷ send attempts × 100.
    pub bounce_rate: Option<f64>,
    /// Formatted.
    pub bounce_rate_display: String,
    /// Internal failures (sender refusals, render failures, channel errors) ÷ send attempts × 100; bounces excluded.
    pub error_rate: Option<f64>,
    /// Formatted.
    pub error_rate_display: String,
    /// Unsubscribes by link and STOP replies to these messages.
    pub opt_outs: u64,
    /// Opt-outs ÷ delivered × 100.
    pub opt_out_rate: Option<f64>,
    /// Formatted.
    pub opt_out_rate_display: String,
    /// Delivered ÷ send attempts × 100.
    pub delivery_rate: Option<f64>,
    /// Formatted delivery rate.
    pub delivery_rate_display: String,
}

/// A bar of the goal funnel.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct FunnelStage {
    /// `enrolled`, `completed` or `goal_reached`.
    pub id: String,
    /// Label.
    pub label: String,
    /// Count.
    pub value: u64,
    /// Formatted count.
    pub display: String,
    /// Share of enrolled, × 100.
    pub share: Option<f64>,
    /// Formatted share.
    pub share_display: String,
}

/// The per-step performance table.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct StepsTable {
    /// Title.
    pub title: String,
    /// Step, Executed, Completed, Failed, Avg. time, Conversion, Actions.
    pub columns: Vec<Column>,
    /// One row per step of the current version in canvas order, then steps
    /// removed by later versions that have history (marked `removed`).
    pub rows: Vec<StepRow>,
}

/// One step's figures.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct StepRow {
    /// Step id.
    pub step_id: String,
    /// Title (as on the canvas).
    pub title: String,
    /// Step type.
    pub step_type: Label,
    /// Font Awesome icon name.
    pub icon: String,
    /// Nesting depth: 0 on the main path, 1 inside a branch, … (a removed
    /// step: where it was in the newest version that had it).
    pub depth: u32,
    /// "YES path of …" / "NO path of …" inside a branch (a removed step:
    /// the path it was on).
    pub path_label: Option<String>,
    /// Removed from the current version (history only).
    pub removed: bool,
    /// Times the step started (`step_executed`).
    pub executed: u64,
    /// Formatted.
    pub executed_display: String,
    /// Times it finished (`step_completed`).
    pub completed: u64,
    /// Formatted.
    pub completed_display: String,
    /// Times it failed (`step_failed`).
    pub failed: u64,
    /// Formatted.
    pub failed_display: String,
    /// Mean time from start to completion, in milliseconds.
    pub avg_time_ms: Option<f64>,
    /// Formatted ("2 min", "2 days", "—").
    pub avg_time_display: String,
    /// Started and neither completed nor failed: contacts in the step now
    /// (a Delay's wait, a plugin call awaiting its answer), who left the
    /// automation during it, or whom an edit that removed the step moved on
    /// (the row then says "removed"). So Executed = Completed + Failed +
    /// this.
    pub in_step: u64,
    /// Formatted.
    pub in_step_display: String,
    /// Completed ÷ (completed + failed) × 100 (one decimal): of the times
    /// the step ended one way or the other, the share it completed; the
    /// contacts still in it count once they finish.
    pub conversion: Option<f64>,
    /// Formatted ("97.9%", "—").
    pub conversion_display: String,
    /// If/then branches: how many went each way.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub branch_paths: Option<BranchSplit>,
    /// Create task and Set property steps: of the Completed, the tasks and
    /// write-backs that never took effect in the host: refused by it (or
    /// retried until the attempts ran out), withdrawn before hand-over
    /// (the contact left), or dropped (the host changed the property
    /// since, or a newer write-back replaced it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_carried_out: Option<NotCarriedOut>,
    /// Row actions: `step_analytics` ("Step analytics", chart icon) on
    /// email, SMS and Delay steps, which opens the `step_analytics` view
    /// of the step (its `view` carries `automation_id` and `step_id`).
    pub actions: Vec<Action>,
}

/// Tasks or write-backs a step queued that never took effect in the host.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct NotCarriedOut {
    /// Refused by the host, or retried until the attempts ran out
    /// (`effect_failed`).
    pub refused: u64,
    /// Withdrawn before hand-over (`task_withdrawn`) or dropped
    /// (`write_back_dropped`).
    pub withdrawn: u64,
    /// "2 refused · 1 withdrawn".
    pub display: String,
}

/// Counts of a branch's two paths.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct BranchSplit {
    /// Took the YES path.
    pub yes: u64,
    /// Took the NO path.
    pub no: u64,
    /// "YES 120 · NO 80".
    pub display: String,
}

/// Average time in flow.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct TimeInFlow {
    /// Title.
    pub label: String,
    /// Mean milliseconds from enrollment to the end of the flow.
    pub mean_ms: Option<f64>,
    /// Median milliseconds.
    pub median_ms: Option<f64>,
    /// "3.2d".
    pub mean_display: String,
    /// "2.6d".
    pub median_display: String,
    /// "3.2d median 2.6d".
    pub display: String,
    /// Enrollments measured (ended).
    pub ended: u64,
    /// Enrollments still active (excluded).
    pub active: u64,
    /// How it is computed.
    pub definition: String,
}

/// Exits before the End, by reason.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Exits {
    /// All exits.
    pub total: u64,
    /// Formatted.
    pub total_display: String,
    /// Per reason, most frequent first.
    pub reasons: Vec<ExitReason>,
    /// What counts as an exit.
    pub definition: String,
}

/// One exit reason.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ExitReason {
    /// `goal_met`, `email_reply`, `sms_opt_out`, `global_opt_out`, `automation_deleted`, `error`, …
    pub reason: Label,
    /// Exits with it.
    pub count: u64,
    /// Formatted.
    pub count_display: String,
    /// Share of all exits, × 100.
    pub share: Option<f64>,
    /// Formatted share.
    pub share_display: String,
}

const CONVERSION_DEFINITION: &str = "(goals reached ÷ contacts enrolled) × 100. Goals are counted when a contact meets the automation's goal criteria inside the lookback window (default 30 days). If no goal is defined, conversion only counts leads whose Status changed to Patient.";

/// One step's counts from the event log.
#[derive(Default, Clone, Copy)]
pub(crate) struct StepCounts {
    /// `step_executed`.
    pub(crate) executed: u64,
    /// `step_completed`.
    pub(crate) completed: u64,
    /// `step_failed`.
    pub(crate) failed: u64,
    /// Mean `duration_ms` of the completions.
    pub(crate) avg_ms: Option<f64>,
    yes: u64,
    no: u64,
    refused: u64,
    withdrawn: u64,
}

/// Message counts of one channel (of one step, or of the whole automation).
#[derive(Default, Clone, Copy)]
pub(crate) struct ChannelCounts {
    queued: u64,
    sent: u64,
    delivered: u64,
    opened: u64,
    clicked: u64,
    replied: u64,
    bounced: u64,
    failed: u64,
    suppressed: u64,
    withdrawn: u64,
    /// Of `suppressed`, the messages given up after their soft bounces
    /// (logged `message_suppressed`, reason `soft_bounce_limit`): sent, so
    /// not suppressed in the figures.
    used_up: u64,
    /// Deliveries a later bounce took back.
    revoked: u64,
    /// Soft bounces the same hand-over's later outcome took back.
    bounces_revoked: u64,
    /// Failures before or at the hand-over (the sender refused, the message could not be composed).
    failed_before_handover: u64,
    opt_outs: u64,
}

impl StepCounts {
    /// Executed but neither completed nor failed: in the step now, or left
    /// while in it (an exit, an edit that moved the contact on).
    pub(crate) fn in_step(&self) -> u64 {
        self.executed.saturating_sub(self.completed + self.failed)
    }
}

/// What messages came to, as the SPEC §5 rates divide it: of one channel
/// ([`ChannelCounts::outcomes`]) or of every channel together
/// ([`Counts::outcomes`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Outcomes {
    /// Send attempts: hand-overs the sender accepted plus those that failed
    /// at or before the hand-over.
    pub(crate) attempts: u64,
    /// Delivered, less the deliveries a later bounce took back.
    pub(crate) delivered: u64,
    /// Bounced (hard and soft), less the soft bounces the same hand-over's
    /// later outcome took back.
    pub(crate) bounced: u64,
    /// Internal or channel failures.
    pub(crate) failed: u64,
    /// Messages clicked (each message's first click by a person).
    pub(crate) clicked: u64,
    /// Opt-outs the messages caused.
    pub(crate) opt_outs: u64,
    /// Emails opened (each email's first open by a person).
    pub(crate) email_opened: u64,
    /// Emails delivered.
    pub(crate) email_delivered: u64,
}

impl Outcomes {
    /// Delivery rate (SPEC §5) as (part, whole): delivered ÷ send attempts.
    pub(crate) fn delivery(&self) -> (u64, u64) {
        (self.delivered, self.attempts)
    }

    /// Bounce rate: bounced (hard and soft) ÷ send attempts.
    pub(crate) fn bounce(&self) -> (u64, u64) {
        (self.bounced, self.attempts)
    }

    /// Error rate: failures ÷ send attempts (bounces apart).
    pub(crate) fn error(&self) -> (u64, u64) {
        (self.failed, self.attempts)
    }

    /// Opt-out rate: opt-outs ÷ delivered.
    pub(crate) fn opt_out(&self) -> (u64, u64) {
        (self.opt_outs, self.delivered)
    }

    /// Messages whose outcome is recorded: delivered, bounced or failed.
    pub(crate) fn settled(&self) -> u64 {
        self.delivered + self.bounced + self.failed
    }

    fn add(&mut self, o: &Outcomes) {
        self.attempts += o.attempts;
        self.delivered += o.delivered;
        self.bounced += o.bounced;
        self.failed += o.failed;
        self.clicked += o.clicked;
        self.opt_outs += o.opt_outs;
        self.email_opened += o.email_opened;
        self.email_delivered += o.email_delivered;
    }
}

impl ChannelCounts {
    /// The outcomes of these messages, sent by `channel`.
    pub(crate) fn outcomes(&self, channel: &str) -> Outcomes {
        let delivered = self.delivered.saturating_sub(self.revoked);
        let email = channel == "email";
        Outcomes {
            // Every hand-over the sender accepted, plus the ones that
            // failed at or before it (SPEC §5).
            attempts: self.sent + self.failed_before_handover,
            delivered,
            bounced: self.bounced.saturating_sub(self.bounces_revoked),
            failed: self.failed,
            clicked: self.clicked,
            opt_outs: self.opt_outs,
            email_opened: if email { self.opened } else { 0 },
            email_delivered: if email { delivered } else { 0 },
        }
    }

    fn add(&mut self, o: &ChannelCounts) {
        self.queued += o.queued;
        self.sent += o.sent;
        self.delivered += o.delivered;
        self.opened += o.opened;
        self.clicked += o.clicked;
        self.replied += o.replied;
        self.bounced += o.bounced;
        self.failed += o.failed;
        self.suppressed += o.suppressed;
        self.withdrawn += o.withdrawn;
        self.used_up += o.used_up;
        self.revoked += o.revoked;
        self.bounces_revoked += o.bounces_revoked;
        self.failed_before_handover += o.failed_before_handover;
        self.opt_outs += o.opt_outs;
    }

    /// The channel's figures and SPEC §5 rates, as the channel breakdown
    /// shows them.
    pub(crate) fn row(&self, channel: &str) -> ChannelRow {
        let c = self;
        let o = c.outcomes(channel);
        let share = |(part, whole): (u64, u64)| (rate(part, whole), fmt_share(part, whole));
        let (delivery_rate, delivery_rate_display) = share(o.delivery());
        let (bounce_rate, bounce_rate_display) = share(o.bounce());
        let (error_rate, error_rate_display) = share(o.error());
        let (opt_out_rate, opt_out_rate_display) = share(o.opt_out());
        ChannelRow {
            send_attempts: o.attempts,
            bounce_rate,
            bounce_rate_display,
            error_rate,
            error_rate_display,
            opt_outs: c.opt_outs,
            opt_out_rate,
            opt_out_rate_display,
            channel: Label::new(channel, &channel_label(channel)),
            queued: c.queued,
            sent: c.sent,
            delivered: o.delivered,
            opened: c.opened,
            clicked: c.clicked,
            replied: c.replied,
            bounced: o.bounced,
            failed: c.failed,
            suppressed: c.suppressed.saturating_sub(c.used_up),
            withdrawn: c.withdrawn,
            delivery_rate,
            delivery_rate_display,
        }
    }
}

/// The step and message counts of one automation, read from the event log
/// in one fixed set of aggregate queries ([`Counts::read`]): what the
/// Performance tab's step table and channel breakdown show, and what
/// `step_analytics` shows of one step.
#[derive(Default)]
pub(crate) struct Counts {
    /// Per step id.
    pub(crate) per_step: HashMap<String, StepCounts>,
    /// Message counts per (step, channel): the step whose message it is
    /// (None for a message logged without one), and the channel it went
    /// by. A step's channel fallback is under the fallback's channel.
    messages: HashMap<(Option<String>, String), ChannelCounts>,
}

impl Counts {
    /// Reads the counts of automation `automation_id`, all time.
    pub(crate) fn read(conn: &rusqlite::Connection, automation_id: &str) -> Result<Counts> {
        // Two empty periods: nothing is counted in them.
        Ok(Counts::read_with_periods(conn, automation_id, (0, 0, 0))?.0)
    }

    /// Reads the counts of automation `automation_id`, all time, and in
    /// the same pass over the log those of two adjoining periods,
    /// `from..split` and `split..to` (each event counts when it happened: a
    /// delivery in the period of a message sent before it counts in the
    /// period). The periods' counts have no durations or branch paths.
    pub(crate) fn read_with_periods(
        conn: &rusqlite::Connection,
        automation_id: &str,
        (from, split, to): (Millis, Millis, Millis),
    ) -> Result<(Counts, [Counts; 2])> {
        let mut counts = Counts::default();
        let mut parts = [Counts::default(), Counts::default()];
        // Step and message counts per (kind, step, channel), in one pass.
        {
            let mut stmt = conn.prepare_cached(STEP_COUNTS_SQL)?;
            let rows = stmt.query_map(params![automation_id, from, split, to], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                ))
            })?;
            for row in rows {
                let (kind, step, channel, n, before, after) = row?;
                for (part, n) in parts.iter_mut().zip([before, after]) {
                    if n > 0 {
                        part.count(&kind, step.clone(), channel.clone(), n as u64);
                    }
                }
                counts.count(&kind, step, channel, n as u64);
            }
        }
        counts.add_attempts_and_opt_outs(conn, automation_id, (Millis::MIN, Millis::MAX))?;
        for (part, window) in parts.iter_mut().zip([(from, split), (split, to)]) {
            if window.0 < window.1 {
                part.add_attempts_and_opt_outs(conn, automation_id, window)?;
            }
        }
        // Durations and branch paths: the details of completed steps only.
        {
            let mut stmt = conn.prepare_cached(STEP_DETAILS_SQL)?;
            let rows = stmt.query_map(params![automation_id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<f64>>(1)?,
                    r.get::<_, Option<i64>>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                ))
            })?;
            for row in rows {
                let (step, avg, yes, no) = row?;
                let c = counts.per_step.entry(step).or_default();
                c.avg_ms = avg;
                c.yes = yes.unwrap_or(0) as u64;
                c.no = no.unwrap_or(0) as u64;
            }
        }
        Ok((counts, parts))
    }

    /// Counts `n` events of `kind` of `step` by `channel`.
    fn count(&mut self, kind: &str, step: Option<String>, channel: Option<String>, n: u64) {
        if let Some(step) = step.as_ref()
            && matches!(
                kind,
                "effect_failed" | "task_withdrawn" | "write_back_dropped"
            )
        {
            let c = self.per_step.entry(step.clone()).or_default();
            match kind {
                "effect_failed" => c.refused += n,
                _ => c.withdrawn += n,
            }
            return;
        }
        if let Some(step) = step.as_ref()
            && kind.starts_with("step_")
        {
            let c = self.per_step.entry(step.clone()).or_default();
            match kind {
                "step_executed" => c.executed += n,
                "step_completed" => c.completed += n,
                _ => c.failed += n,
            }
            return;
        }
        let Some(channel) = channel else { return };
        let c = self.messages.entry((step, channel)).or_default();
        match kind {
            "message_queued" => c.queued += n,
            "message_sent" => c.sent += n,
            "message_delivered" => c.delivered += n,
            // A bounce came after the delivery receipt: not delivered.
            "message_delivery_revoked" => c.revoked += n,
            // A delivery, hard bounce or failure of the same hand-over
            // came after a soft bounce: that is its outcome.
            "message_bounce_revoked" => c.bounces_revoked += n,
            "message_opened" => c.opened += n,
            "message_clicked" => c.clicked += n,
            "message_replied" => c.replied += n,
            "message_bounced" => c.bounced += n,
            "message_failed" => c.failed += n,
            "message_suppressed" => c.suppressed += n,
            "message_withdrawn" => c.withdrawn += n,
            _ => {}
        }
    }

    /// Adds the send attempts that failed at or before the hand-over, the
    /// opt-outs and the messages given up after their soft bounces, of
    /// `window`, to the messages already counted (the SPEC §5 rates).
    fn add_attempts_and_opt_outs(
        &mut self,
        conn: &rusqlite::Connection,
        automation_id: &str,
        window: (Millis, Millis),
    ) -> Result<()> {
        let id = automation_id;
        self.add(conn, FAILED_BEFORE_HANDOVER_SQL, id, window, |c| {
            &mut c.failed_before_handover
        })?;
        self.add(conn, BOUNCED_AT_HANDOVER_SQL, id, window, |c| {
            &mut c.failed_before_handover
        })?;
        self.add(conn, OPT_OUTS_SQL, id, window, |c| &mut c.opt_outs)?;
        self.add(conn, SOFT_BOUNCES_USED_UP_SQL, id, window, |c| {
            &mut c.used_up
        })
    }

    /// Adds the `(step, channel, count)` rows of `sql` (bound to the
    /// automation id and the window's ends) to one field of the messages
    /// already counted: of that step and channel, else of the channel with
    /// no step (so the channel's totals never lose a count), and nothing
    /// for a channel no message of the automation used.
    fn add(
        &mut self,
        conn: &rusqlite::Connection,
        sql: &str,
        automation_id: &str,
        (from, to): (Millis, Millis),
        field: impl Fn(&mut ChannelCounts) -> &mut u64,
    ) -> Result<()> {
        let mut stmt = conn.prepare_cached(sql)?;
        let rows = stmt.query_map(params![automation_id, from, to], |r| {
            Ok((
                r.get::<_, Option<String>>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        for row in rows {
            let (step, channel, n) = row?;
            let Some(channel) = channel else { continue };
            let mut key = (step, channel);
            if !self.messages.contains_key(&key) {
                // Only channels the automation's messages used count.
                if !self.messages.keys().any(|(_, ch)| *ch == key.1) {
                    continue;
                }
                // A message whose step the log names no message of: the
                // channel's, and no step's.
                key.0 = None;
            }
            *field(self.messages.entry(key).or_default()) += n as u64;
        }
        Ok(())
    }

    /// One step's counts (zero when it has none).
    pub(crate) fn step(&self, step_id: &str) -> StepCounts {
        self.per_step.get(step_id).copied().unwrap_or_default()
    }

    /// The messages of one step sent by `channel` (its own channel, or its
    /// fallback's); None when the log has none.
    pub(crate) fn messages_of(&self, step_id: &str, channel: &str) -> Option<ChannelCounts> {
        self.messages
            .get(&(Some(step_id.to_string()), channel.to_string()))
            .copied()
    }

    /// What the automation's messages came to, every channel together.
    pub(crate) fn outcomes(&self) -> Outcomes {
        let mut total = Outcomes::default();
        for ((_, channel), c) in &self.messages {
            total.add(&c.outcomes(channel));
        }
        total
    }

    /// The automation's messages per channel (every step's, a fallback in
    /// its own channel), email first, then SMS, then any other by name.
    pub(crate) fn by_channel(&self) -> Vec<(String, ChannelCounts)> {
        let mut channels: Vec<(String, ChannelCounts)> = Vec::new();
        for ((_, channel), c) in &self.messages {
            match channels.iter_mut().find(|(ch, _)| ch == channel) {
                Some((_, total)) => total.add(c),
                None => channels.push((channel.clone(), *c)),
            }
        }
        channels.sort_by(|a, b| {
            channel_rank(&a.0)
                .cmp(&channel_rank(&b.0))
                .then(a.0.cmp(&b.0))
        });
        channels
    }
}

/// Messages that failed at or before the hand-over, per step and channel:
/// a sender's refusal (the host's, the SMTP relay's (source `relay`; `host`
/// before the relay was told apart), or a sender adapter plugin's
/// (`plugin:<id>`)) or a message that could not be composed. Each is a
/// send attempt.
const FAILED_BEFORE_HANDOVER_SQL: &str = "SELECT step_id, channel, count(*) FROM events
     WHERE automation_id = ?1 AND kind = 'message_failed' AND at >= ?2 AND at < ?3
       AND (coalesce(json_extract(detail, '$.source'), 'host') IN ('host', 'relay', 'compose')
            OR json_extract(detail, '$.source') LIKE 'plugin:%')
     GROUP BY step_id, channel";

/// Messages given up after their soft bounces, per step and channel: logged
/// `message_suppressed` (reason `soft_bounce_limit`), but sent, so not
/// counted as suppressed.
const SOFT_BOUNCES_USED_UP_SQL: &str = "SELECT step_id, channel, count(*) FROM events
     WHERE automation_id = ?1 AND kind = 'message_suppressed' AND at >= ?2 AND at < ?3
       AND json_extract(detail, '$.reason') = 'soft_bounce_limit'
     GROUP BY step_id, channel";

/// Hard bounces the module's own sender saw (the SMTP relay's 5.1.x), per
/// step and channel: attempts that were never accepted.
const BOUNCED_AT_HANDOVER_SQL: &str = "SELECT step_id, channel, count(*) FROM events
     WHERE automation_id = ?1 AND kind = 'message_bounced' AND at >= ?2 AND at < ?3
       AND json_extract(detail, '$.at') = 'hand_over'
     GROUP BY step_id, channel";

/// Opt-outs per step and channel caused by the automation's messages (an
/// SMS STOP reply, an unsubscribe link), from the rare rows of the partial
/// index `events_opt_outs` (its condition, repeated on the first line, is
/// what lets SQLite use it) joined to the outbox by message key: the step
/// and channel are the message's. One per message: a STOP from a family
/// phone unsubscribes everyone on the number (an `sms_opt_out` each) but is
/// one reply to one message, so the rate stays a share of the messages
/// delivered.
pub(crate) const OPT_OUTS_SQL: &str = "SELECT o.step_id, o.channel, count(DISTINCT e.message_key)
     FROM events e JOIN outbox o ON o.idempotency_key = e.message_key
     WHERE e.message_key IS NOT NULL AND (e.kind = 'sms_opt_out' OR e.kind = 'subscription_changed')
       AND (e.kind = 'sms_opt_out' OR json_extract(e.detail, '$.reason') = 'unsubscribe_link')
       AND o.automation_id = ?1 AND e.at >= ?2 AND e.at < ?3
     GROUP BY o.step_id, o.channel";

/// Completed steps' mean duration and branch paths per step, read from the
/// covering index `events_step_completed` (the same expressions). Named
/// because the planner would otherwise pick `events_automation`, which has
/// both equalities too but not the details.
pub(crate) const STEP_DETAILS_SQL: &str = "SELECT step_id,
            avg(json_extract(detail, '$.duration_ms')),
            sum(json_extract(detail, '$.path') = 'yes'),
            sum(json_extract(detail, '$.path') = 'no')
     FROM events INDEXED BY events_step_completed
     WHERE kind = 'step_completed' AND automation_id = ?1 AND step_id IS NOT NULL
     GROUP BY step_id";

/// The message kinds [`Counts`] counts, as an SQL list.
macro_rules! message_kinds {
    () => {
        "'message_queued', 'message_sent', 'message_delivered', 'message_opened',
       'message_clicked', 'message_replied', 'message_bounced', 'message_failed',
       'message_suppressed', 'message_withdrawn', 'message_delivery_revoked', 'message_bounce_revoked'"
    };
}

/// Step and message counts per (kind, step, channel) of automation `?1`:
/// all time, then of `?2..?3` and of `?3..?4` (two periods), in one pass
/// over `events_automation` (automation, kind, step, channel, at), which
/// covers it.
pub(crate) const STEP_COUNTS_SQL: &str = concat!(
    "SELECT kind, step_id, channel, count(*),
            count(*) FILTER (WHERE at >= ?2 AND at < ?3),
            count(*) FILTER (WHERE at >= ?3 AND at < ?4)
     FROM events
     WHERE automation_id = ?1 AND kind IN (
       'step_executed', 'step_completed', 'step_failed', ",
    message_kinds!(),
    ", 'effect_failed', 'task_withdrawn', 'write_back_dropped')
     GROUP BY kind, step_id, channel"
);

pub(crate) fn build(ctx: &Ctx<'_>, p: PerformanceParams) -> Result<PerformanceView> {
    let rec = load_automation(ctx.conn, &p.automation_id)?;
    let id = rec.id.as_str();
    let def = &rec.current.def;

    // 1. Automation-wide totals: the events_automation index, and the
    // current goal's conversions from events_goals.
    let mut totals: HashMap<String, u64> = HashMap::new();
    {
        let mut stmt = ctx.conn.prepare_cached(TOTALS_SQL)?;
        let rows = stmt.query_map(params![id], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })?;
        for row in rows {
            let (kind, n) = row?;
            totals.insert(kind, n as u64);
        }
    }
    let total = |k: &str| totals.get(k).copied().unwrap_or(0);
    let (enrolled, completed, goals, exited) = (
        total("enrolled"),
        total("completed"),
        goals::reached_count(ctx.conn, id, def.goal)?,
        total("exited"),
    );

    // 2. Step and message counts per (kind, step, channel), send attempts,
    // opt-outs, durations and branch paths.
    let periods = Periods::as_of(ctx.now, ctx.settings.tz);
    let (counts, [baseline, recent]) = Counts::read_with_periods(
        ctx.conn,
        id,
        (periods.baseline_start, periods.recent_start, periods.end),
    )?;

    // 3b. Suppressed messages by reason.
    let mut suppressed: Vec<(String, u64)> = Vec::new();
    {
        let mut stmt = ctx.conn.prepare_cached(
            "SELECT coalesce(json_extract(detail, '$.reason'), 'unknown'), count(*) FROM events
             WHERE automation_id = ?1 AND kind = 'message_suppressed'
               AND coalesce(json_extract(detail, '$.reason'), '') <> 'soft_bounce_limit'
             GROUP BY 1 ORDER BY 2 DESC, 1",
        )?;
        let rows = stmt.query_map(params![id], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })?;
        for row in rows {
            let (reason, n) = row?;
            suppressed.push((reason, n as u64));
        }
    }

    // 3. Exits by reason.
    let mut reasons: Vec<(String, u64)> = Vec::new();
    {
        let mut stmt = ctx.conn.prepare_cached(
            "SELECT coalesce(json_extract(detail, '$.reason'), 'unknown'), count(*) FROM events
             WHERE automation_id = ?1 AND kind = 'exited'
             GROUP BY 1 ORDER BY 2 DESC, 1",
        )?;
        let rows = stmt.query_map(params![id], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })?;
        for row in rows {
            let (reason, n) = row?;
            reasons.push((reason, n as u64));
        }
    }

    // 4. Time in flow.
    let time_in_flow = time_in_flow(ctx, id)?;

    // 5. Engagement over time.
    let engagement_over_time = engagement_over_time(ctx, id, goals::counted_ids(def.goal))?;

    // Steps table.
    let rows = step_rows(ctx, id, &rec.current.flow, def, &counts.per_step)?;
    let mut top: Vec<&StepRow> = rows
        .iter()
        .filter(|r| !r.removed && r.executed > 0 && RANKED_STEPS.contains(&r.step_type.id.as_str()))
        .collect();
    top.sort_by(|a, b| {
        b.conversion
            .partial_cmp(&a.conversion)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(b.executed.cmp(&a.executed))
    });
    let top_steps = top
        .into_iter()
        .take(3)
        .map(|r| TopStep {
            step_id: r.step_id.clone(),
            title: r.title.clone(),
            conversion: r.conversion,
            conversion_display: r.conversion_display.clone(),
            executed: r.executed,
        })
        .collect();

    let goal_label = match def.goal {
        Some(g) => format!("Goal: {}", g.label()),
        None => "No goal: counts Lead → Patient".to_string(),
    };
    let conversion = rate(goals, enrolled);
    let stat_cards = vec![
        StatCard {
            id: "enrolled".into(),
            label: "Enrolled".into(),
            value: Some(num_u(enrolled)),
            display: fmt_count(enrolled),
            hint: "All time".into(),
            definition: Some(
                "Enrollments: each time the trigger fired and a contact joined the flow (a contact enrolled again counts again). The starting line."
                    .into(),
            ),
        },
        StatCard {
            id: "completed".into(),
            label: "Completed".into(),
            value: Some(num_u(completed)),
            display: fmt_count(completed),
            hint: if enrolled == 0 {
                "No enrollments yet".into()
            } else {
                format!("{} of enrolled", fmt_share(completed, enrolled))
            },
            definition: Some(
                "Contacts who walked through every step and reached the End of automation node. Structural finish line."
                    .into(),
            ),
        },
        StatCard {
            id: "goal_reached".into(),
            label: "Goal reached".into(),
            value: Some(num_u(goals)),
            display: fmt_count(goals),
            hint: goal_label,
            definition: Some(format!(
                "Contacts who did the converting event (booked, reactivated, etc.) within the lookback ({} days after enrolling). Business finish line.",
                def.goal_lookback_days
            )),
        },
        StatCard {
            id: "conversion".into(),
            label: "Conversion".into(),
            value: conversion.and_then(num_f),
            display: fmt_share(goals, enrolled),
            hint: if enrolled == 0 {
                "No enrollments yet".into()
            } else {
                format!("{} of {} enrolled", fmt_count(goals), fmt_count(enrolled))
            },
            definition: Some(CONVERSION_DEFINITION.into()),
        },
    ];

    let goal_funnel = [
        ("enrolled", "Enrolled", enrolled),
        ("completed", "Completed", completed),
        ("goal_reached", "Goal reached", goals),
    ]
    .into_iter()
    .map(|(id, label, value)| {
        let share = rate(value, enrolled);
        FunnelStage {
            id: id.into(),
            label: label.into(),
            value,
            display: fmt_count(value),
            share,
            share_display: fmt_share(value, enrolled),
        }
    })
    .collect();

    let channel_breakdown = counts
        .by_channel()
        .into_iter()
        .map(|(ch, c)| c.row(&ch))
        .collect();

    let exits = Exits {
        total: exited,
        total_display: fmt_count(exited),
        reasons: reasons
            .into_iter()
            .map(|(reason, count)| {
                let share = rate(count, exited);
                ExitReason {
                    reason: Label::new(&reason, &exit_label(&reason)),
                    count,
                    count_display: fmt_count(count),
                    share,
                    share_display: fmt_share(count, exited),
                }
            })
            .collect(),
        definition: "Contacts who left before reaching an End: an Unenrollment toggle (Goal met, Email reply, SMS opt-out), a global opt-out, the automation being deleted, or an error.".into(),
    };

    let suppressed_total: u64 = suppressed.iter().map(|(_, n)| n).sum();
    let suppressions = Exits {
        total: suppressed_total,
        total_display: fmt_count(suppressed_total),
        reasons: suppressed
            .into_iter()
            .map(|(reason, count)| {
                let share = rate(count, suppressed_total);
                ExitReason {
                    reason: Label::new(&reason, &humanize(&reason)),
                    count,
                    count_display: fmt_count(count),
                    share,
                    share_display: fmt_share(count, suppressed_total),
                }
            })
            .collect(),
        definition: "Messages a step did not send because consent or compliance forbade it (no recorded consent, unsubscribed, undeliverable address, no unsubscribe link or postal address), recorded with the reason.".into(),
    };

    let detailed_analytics = detailed_analytics::build(
        ctx,
        id,
        Totals {
            enrolled,
            goals,
            outcomes: counts.outcomes(),
            periods,
            baseline: baseline.outcomes(),
            recent: recent.outcomes(),
            time_in_flow: &time_in_flow,
            conversion_definition: CONVERSION_DEFINITION,
        },
    )?;
    let step_titles: HashMap<String, String> = rows
        .iter()
        .map(|r| (r.step_id.clone(), r.title.clone()))
        .collect();
    let engagement_timeline =
        engagement_timeline::build(ctx, id, goals::counted_ids(def.goal), &step_titles)?;

    Ok(PerformanceView {
        automation_id: rec.id.clone(),
        header: header(Some(&rec), false),
        tabs: tabs(&rec.id, "performance"),
        goal: GoalCell::of(def.goal),
        stat_cards,
        engagement_over_time,
        top_steps,
        channel_breakdown,
        goal_funnel,
        steps: StepsTable {
            title: "Per-step performance".into(),
            columns: step_columns(),
            rows,
        },
        time_in_flow,
        exits,
        suppressions,
        detailed_analytics,
        engagement_timeline,
    })
}

fn step_columns() -> Vec<Column> {
    let def = |mut c: Column, d: &str| {
        c.definition = Some(d.to_string());
        c
    };
    vec![
        Column::new("step", "Step", false, false),
        def(
            Column::new("executed", "Executed", true, true),
            "Times contacts started the step.",
        ),
        def(
            Column::new("completed", "Completed", true, true),
            "Times the step finished and the contact moved on.",
        ),
        def(
            Column::new("failed", "Failed", true, true),
            "Times the step could not run (e.g. the contact is unsubscribed, the list was deleted).",
        ),
        def(
            Column::new("avg_time", "Avg. time", true, true),
            "Mean time from the step starting to it completing. A Delay's time is its wait, a pause of the automation included; time spent waiting for the run window to open before a step counts in no step's time.",
        ),
        def(
            Column::new("conversion", "Conversion", true, true),
            "(completed ÷ (completed + failed)) × 100: of the times the step ended, the share it completed. Contacts still in the step (a Delay's wait) or who left the automation during it are in Executed but not yet here, so a running wait does not read as a failure.",
        ),
        Column::new("actions", "Actions", false, false),
    ]
}

/// Depth and branch path label of every step of a definition.
fn positions(def: &AutomationDefinition) -> HashMap<String, (u32, Option<String>)> {
    fn walk(
        steps: &[Step],
        depth: u32,
        path: Option<String>,
        out: &mut HashMap<String, (u32, Option<String>)>,
    ) {
        for s in steps {
            out.insert(s.id.clone(), (depth, path.clone()));
            if let Some((yes, no)) = s.kind.paths() {
                let title = s.title();
                walk(
                    yes,
                    depth + 1,
                    Some(format!("YES path of \"{title}\"")),
                    out,
                );
                walk(no, depth + 1, Some(format!("NO path of \"{title}\"")), out);
            }
        }
    }
    let mut out = HashMap::new();
    walk(&def.steps, 0, None, &mut out);
    out
}

fn step_rows(
    ctx: &Ctx<'_>,
    automation_id: &str,
    flow: &Flow,
    def: &AutomationDefinition,
    per_step: &HashMap<String, StepCounts>,
) -> Result<Vec<StepRow>> {
    let pos = positions(def);
    let names = super::Names::step_plugins(ctx.conn)?;
    let mut rows = Vec::new();
    for id in flow.ordered_ids() {
        let Some(step) = flow.step(&id) else { continue };
        let (depth, path) = pos.get(&id).cloned().unwrap_or((0, None));
        rows.push(step_row(
            &names,
            automation_id,
            step,
            depth,
            path,
            false,
            per_step.get(&id).copied().unwrap_or_default(),
        ));
    }
    // Steps with history that the current version no longer has: titles from
    // the newest version that still had them.
    let mut missing: HashSet<&str> = per_step
        .keys()
        .map(String::as_str)
        .filter(|s| !flow.contains(s))
        .collect();
    if !missing.is_empty() {
        for (step, depth, path) in removed_steps(ctx.conn, automation_id, &mut missing)? {
            let c = per_step.get(&step.id).copied().unwrap_or_default();
            rows.push(step_row(&names, automation_id, &step, depth, path, true, c));
        }
        // History whose definition is gone entirely.
        let mut rest: Vec<&str> = missing.into_iter().collect();
        rest.sort_unstable();
        for id in rest {
            let c = per_step.get(id).copied().unwrap_or_default();
            let mut row = step_row(
                &names,
                automation_id,
                &Step {
                    id: id.to_string(),
                    name: Some(format!("Step {id}")),
                    kind: StepKind::AddToList {
                        list_id: String::new(),
                    },
                },
                0,
                None,
                true,
                c,
            );
            row.step_type = Label::new("unknown", "Unknown");
            row.icon = "fa-circle-question".into();
            rows.push(row);
        }
    }
    Ok(rows)
}

/// The steps named in `missing` that the current version no longer has,
/// each as the newest earlier version that had it defined it, with its
/// depth and path there; the ids found are taken out of `missing` (what is
/// left, no version's definition has).
pub(crate) fn removed_steps(
    conn: &rusqlite::Connection,
    automation_id: &str,
    missing: &mut HashSet<&str>,
) -> Result<Vec<(Step, u32, Option<String>)>> {
    let mut found = Vec::new();
    let mut stmt = conn.prepare_cached(
        "SELECT definition FROM automation_versions
         WHERE automation_id = ?1 AND version < (SELECT current_version FROM automations WHERE id = ?1)
         ORDER BY version DESC",
    )?;
    let defs = stmt.query_map(params![automation_id], |r| r.get::<_, String>(0))?;
    for text in defs {
        if missing.is_empty() {
            break;
        }
        let Ok(old) = serde_json::from_str::<AutomationDefinition>(&text?) else {
            continue;
        };
        let old_flow = Flow::new(&old);
        let old_pos = positions(&old);
        for id in old_flow.ordered_ids() {
            if missing.remove(id.as_str())
                && let Some(step) = old_flow.step(&id)
            {
                // Where it was: its depth and path in that version.
                let (depth, path) = old_pos.get(&id).cloned().unwrap_or((0, None));
                found.push((step.clone(), depth, path));
            }
        }
    }
    Ok(found)
}

fn step_row(
    names: &super::Names,
    automation_id: &str,
    step: &Step,
    depth: u32,
    path_label: Option<String>,
    removed: bool,
    c: StepCounts,
) -> StepRow {
    let conversion = rate(c.completed, c.completed + c.failed);
    let in_step = c.in_step();
    let type_id = step.kind.type_id();
    let mut actions = Vec::new();
    if matches!(
        step.kind,
        StepKind::SendEmail { .. } | StepKind::SendSms { .. } | StepKind::Delay { .. }
    ) {
        actions.push(
            Action::new("step_analytics", "Step analytics", Some("fa-chart-column"))
                .view(ViewRef::step_analytics(automation_id, &step.id)),
        );
    }
    StepRow {
        step_id: step.id.clone(),
        title: if removed {
            format!("{} (removed)", names.step_title(step))
        } else {
            names.step_title(step)
        },
        step_type: Label::new(type_id, step.kind.type_label()),
        icon: super::builder::step_icon(type_id).into(),
        depth,
        path_label,
        removed,
        executed: c.executed,
        executed_display: fmt_count(c.executed),
        completed: c.completed,
        completed_display: fmt_count(c.completed),
        failed: c.failed,
        failed_display: fmt_count(c.failed),
        in_step,
        in_step_display: fmt_count(in_step),
        avg_time_ms: c.avg_ms.map(round1),
        avg_time_display: c.avg_ms.map(fmt_duration).unwrap_or_else(|| DASH.into()),
        conversion,
        conversion_display: fmt_share(c.completed, c.completed + c.failed),
        branch_paths: step.kind.paths().is_some().then(|| BranchSplit {
            yes: c.yes,
            no: c.no,
            display: format!("YES {} · NO {}", fmt_count(c.yes), fmt_count(c.no)),
        }),
        not_carried_out: matches!(
            step.kind,
            StepKind::CreateTask { .. } | StepKind::SetProperty { .. }
        )
        .then(|| NotCarriedOut {
            refused: c.refused,
            withdrawn: c.withdrawn,
            display: format!(
                "{} refused · {} withdrawn",
                fmt_count(c.refused),
                fmt_count(c.withdrawn)
            ),
        }),
        actions,
    }
}

/// An ended enrollment's time in flow (SPEC §5): from enrollment to the
/// goal, when it was reached before the end, else to the end (an End or an
/// exit).
const IN_FLOW_SQL: &str = "coalesce(min(goal_reached_at, ended_at), ended_at) - enrolled_at";

fn time_in_flow(ctx: &Ctx<'_>, automation_id: &str) -> Result<TimeInFlow> {
    let (ended, mean, active): (i64, Option<f64>, i64) = ctx
        .conn
        .prepare_cached(&format!(
            "SELECT count(*) FILTER (WHERE state != 'active' AND ended_at IS NOT NULL),
                    avg({IN_FLOW_SQL}) FILTER (WHERE state != 'active' AND ended_at IS NOT NULL),
                    count(*) FILTER (WHERE state = 'active')
             FROM enrollments WHERE automation_id = ?1"
        ))?
        .query_row(params![automation_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    let median = if ended > 0 {
        let mut stmt = ctx.conn.prepare_cached(&format!(
            "SELECT {IN_FLOW_SQL} AS d FROM enrollments
             WHERE automation_id = ?1 AND state != 'active' AND ended_at IS NOT NULL
             ORDER BY d LIMIT ?2 OFFSET ?3"
        ))?;
        let take = if ended % 2 == 0 { 2 } else { 1 };
        let mid: Vec<i64> = stmt
            .query_map(params![automation_id, take, (ended - 1) / 2], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        (!mid.is_empty()).then(|| mid.iter().sum::<i64>() as f64 / mid.len() as f64)
    } else {
        None
    };
    let mean_display = mean.map(fmt_duration_short).unwrap_or_else(|| DASH.into());
    let median_display = median
        .map(fmt_duration_short)
        .unwrap_or_else(|| DASH.into());
    Ok(TimeInFlow {
        label: "Average time in flow".into(),
        mean_ms: mean.map(round1),
        median_ms: median,
        display: if mean.is_some() {
            format!("{mean_display} median {median_display}")
        } else {
            DASH.into()
        },
        mean_display,
        median_display,
        ended: ended as u64,
        active: active as u64,
        definition: "Mean elapsed time from enrollment to reaching the goal or, without the goal, to leaving the flow (reaching an End or exiting). Includes scheduled waits between steps. Excludes contacts still active in the flow.".into(),
    })
}

/// Enrolled, completed and exited counts of automation `?1`, from the
/// `events_automation` index (its goals reached: [`goals::reached_count`]).
pub(crate) const TOTALS_SQL: &str = "SELECT kind, count(*) FROM events
     WHERE automation_id = ?1 AND kind IN ('enrolled', 'completed', 'exited')
     GROUP BY kind";

/// Per quarter-hour bucket (`?4` ms) of `?2..?3`: enrolled and completed
/// (index `events_automation`: those rows have no step or channel, and
/// saying so lets the search seek the time range instead of reading every
/// such row of the automation), then the goals reached that count for the
/// current goal (`?5`, `?6`: [`goals::counted_ids`]; index `events_goals`).
pub(crate) const OVER_TIME_SQL: &str = "SELECT kind, at / ?4, count(*) FROM events
     WHERE automation_id = ?1 AND kind IN ('enrolled', 'completed')
       AND step_id IS NULL AND channel IS NULL AND at >= ?2 AND at < ?3
     GROUP BY kind, at / ?4
     UNION ALL
     SELECT 'goal_reached', at / ?4, count(*) FROM events
     WHERE kind = 'goal_reached' AND automation_id = ?1
       AND json_extract(detail, '$.goal') IN (?5, ?6) AND at >= ?2 AND at < ?3
     GROUP BY at / ?4";

fn engagement_over_time(
    ctx: &Ctx<'_>,
    automation_id: &str,
    [g1, g2]: [&str; 2],
) -> Result<EngagementOverTime> {
    let tz = ctx.settings.tz;
    let today = local_date(ctx.now, tz);
    let first = today
        .checked_sub_days(Days::new(u64::from(CHART_DAYS - 1)))
        .unwrap_or(today);
    let dates: Vec<chrono::NaiveDate> = first.iter_days().take(CHART_DAYS as usize).collect();
    let start: Millis = local_to_utc_ms(first, 0, tz);
    let end: Millis = local_to_utc_ms(today, 24 * 60, tz);
    let mut points: Vec<DayPoint> = dates
        .iter()
        .map(|d| DayPoint {
            date: d.format("%Y-%m-%d").to_string(),
            label: d.format("%b %-d").to_string(),
            enrolled: 0,
            completed: 0,
            goal_reached: 0,
        })
        .collect();
    // Quarter-hour buckets: every zone offset is a multiple of 15 minutes, so
    // a bucket never straddles a local midnight.
    const BUCKET: i64 = 15 * crate::clock::MINUTE;
    let mut stmt = ctx.conn.prepare_cached(OVER_TIME_SQL)?;
    let rows = stmt.query_map(params![automation_id, start, end, BUCKET, g1, g2], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    for row in rows {
        let (kind, bucket, n) = row?;
        let date = local_date(bucket * BUCKET, tz);
        let Some(i) = dates.iter().position(|d| *d == date) else {
            continue;
        };
        let p = &mut points[i];
        match kind.as_str() {
            "enrolled" => p.enrolled += n as u64,
            "completed" => p.completed += n as u64,
            _ => p.goal_reached += n as u64,
        }
    }
    Ok(EngagementOverTime {
        title: "Engagement over time".into(),
        series: vec![
            Label::new("enrolled", "Enrolled"),
            Label::new("completed", "Completed"),
            Label::new("goal_reached", "Goal reached"),
        ],
        points,
    })
}

fn channel_rank(c: &str) -> u8 {
    match c {
        "email" => 0,
        "sms" => 1,
        _ => 2,
    }
}

pub(crate) fn channel_label(c: &str) -> String {
    match c {
        "email" => "Email".into(),
        "sms" => "SMS".into(),
        other => humanize(other),
    }
}

fn exit_label(reason: &str) -> String {
    match reason {
        "goal_met" => "Goal met".into(),
        "email_reply" => "Email reply".into(),
        "sms_opt_out" => "SMS opt-out".into(),
        "global_opt_out" => "Global opt-out".into(),
        "automation_deleted" => "Automation deleted".into(),
        "error" => "Error".into(),
        other => humanize(other),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::super::test_support::{Db, NOW};
    use crate::clock::{DAY, MINUTE};
    use crate::error::ErrorCode;

    fn v1() -> Value {
        json!({
            "name": "New lead welcome series",
            "goal": "book_appointment",
            "trigger": {"type": "contact_created"},
            "steps": [
                {"id": "s1", "name": "Welcome email", "type": "send_email", "subject": "Welcome", "body": "Hi"},
                {"id": "s2", "type": "delay", "amount": 2, "unit": "days"},
                {"id": "s3", "name": "Follow-up SMS", "type": "send_sms", "message": "Book now"},
                {"id": "s4", "name": "Booked?", "type": "branch", "condition": {"type": "goal_reached"},
                 "yes": [], "no": [{"id": "old", "name": "Old SMS", "type": "send_sms", "message": "Hello"}]}
            ]
        })
    }

    fn v2() -> Value {
        json!({
            "name": "New lead welcome series",
            "goal": "book_appointment",
            "trigger": {"type": "contact_created"},
            "steps": [
                {"id": "s1", "name": "Welcome email", "type": "send_email", "subject": "Welcome", "body": "Hi"},
                {"id": "s2", "type": "delay", "amount": 2, "unit": "days"},
                {"id": "s3", "name": "Follow-up SMS", "type": "send_sms", "message": "Book now"},
                {"id": "s4", "type": "branch", "condition": {"type": "goal_reached"},
                 "yes": [], "no": [{"id": "s5", "type": "create_task", "title": "Call", "assignee": {"kind": "contact_owner"}}]}
            ]
        })
    }

    fn seeded() -> Db {
        let db = Db::new();
        db.automation("a1", "active", NOW - DAY, &[v1(), v2()]);
        let at = NOW - 2 * DAY;
        db.events("a1", "enrolled", None, 342, at, None);
        db.events(
            "a1",
            "completed",
            None,
            300,
            NOW - 3 * crate::clock::HOUR,
            None,
        );
        let goal = |g: &str| Some(json!({"goal": g, "while": "active"}));
        db.events("a1", "goal_reached", None, 62, at, goal("book_appointment"));
        // Reached under an earlier version's goal: not this goal's count.
        db.events("a1", "goal_reached", None, 9, at, goal("engagement"));
        db.events(
            "a1",
            "exited",
            None,
            20,
            at,
            Some(json!({"reason": "goal_met"})),
        );
        db.events(
            "a1",
            "exited",
            None,
            5,
            at,
            Some(json!({"reason": "sms_opt_out"})),
        );
        let s = |step: &str, kind: &str, n: usize, detail: Option<Value>| {
            db.events("a1", kind, Some(step), n, at, detail)
        };
        s("s1", "step_executed", 342, None);
        s(
            "s1",
            "step_completed",
            335,
            Some(json!({"duration_ms": 2 * MINUTE})),
        );
        s(
            "s1",
            "step_failed",
            7,
            Some(json!({"reason": "unsubscribed"})),
        );
        // 5 contacts are still waiting in it.
        s("s2", "step_executed", 340, None);
        s(
            "s2",
            "step_completed",
            335,
            Some(json!({"duration_ms": 2 * DAY})),
        );
        s("s3", "step_executed", 335, None);
        s(
            "s3",
            "step_completed",
            331,
            Some(json!({"duration_ms": MINUTE})),
        );
        s("s3", "step_failed", 4, None);
        s("s4", "step_executed", 10, None);
        s(
            "s4",
            "step_completed",
            6,
            Some(json!({"path": "yes", "duration_ms": 0})),
        );
        s(
            "s4",
            "step_completed",
            4,
            Some(json!({"path": "no", "duration_ms": 0})),
        );
        s("old", "step_executed", 3, None);
        s("old", "step_completed", 3, Some(json!({"duration_ms": 0})));
        db.events("a1", "message_queued", Some("s1"), 342, at, None);
        db.conn
            .execute(
                "UPDATE events SET channel = 'email' WHERE kind = 'message_queued'",
                [],
            )
            .unwrap();
        db.events("a1", "message_delivered", Some("s1"), 300, at, None);
        db.conn
            .execute(
                "UPDATE events SET channel = 'email' WHERE kind = 'message_delivered'",
                [],
            )
            .unwrap();
        // Every queued email was handed over; 7 bounced.
        db.events("a1", "message_sent", Some("s1"), 342, at, None);
        db.events("a1", "message_bounced", Some("s1"), 7, at, None);
        db.conn
            .execute(
                "UPDATE events SET channel = 'email' WHERE kind IN ('message_sent', 'message_bounced')",
                [],
            )
            .unwrap();
        // Enrollments for time in flow: 1, 2 and 4 days, the last one with
        // its goal reached on day 3 and another goal reached after its End
        // on day 2; one still active.
        for (i, (days, state)) in [
            (1, "completed"),
            (2, "exited"),
            (4, "completed"),
            (0, "active"),
        ]
        .into_iter()
        .enumerate()
        {
            let cid = format!("c{i}");
            db.conn
                .execute(
                    "INSERT INTO contacts (id, props, created_at, last_activity) VALUES (?1, '{}', 0, 0)",
                    [&cid],
                )
                .unwrap();
            let ended = (state != "active").then_some(NOW - 10 * DAY + days * DAY);
            let goal = match days {
                1 => Some(NOW - 10 * DAY + 2 * DAY),
                4 => Some(NOW - 10 * DAY + 3 * DAY),
                _ => None,
            };
            db.conn
                .execute(
                    "INSERT INTO enrollments (automation_id, contact_id, enrolled_version, version, state, enrolled_at, ended_at, goal_reached_at)
                     VALUES ('a1', ?1, 2, 2, ?2, ?3, ?4, ?5)",
                    rusqlite::params![cid, state, NOW - 10 * DAY, ended, goal],
                )
                .unwrap();
        }
        db
    }

    /// A task step's row says how many of its tasks never took effect in
    /// the host: refused (or retried out) and withdrawn. It said Completed
    /// only.
    #[test]
    fn a_task_steps_row_counts_the_tasks_refused_and_withdrawn() {
        let db = seeded();
        let at = NOW - DAY;
        db.events("a1", "step_executed", Some("s5"), 4, at, None);
        db.events("a1", "step_completed", Some("s5"), 4, at, None);
        db.events("a1", "effect_failed", Some("s5"), 2, at, None);
        db.events("a1", "task_withdrawn", Some("s5"), 1, at, None);
        // Another step's: not this row's.
        db.events("a1", "effect_failed", Some("s1"), 5, at, None);
        let v = db
            .query("automation_performance", json!({"automation_id": "a1"}))
            .unwrap();
        let row = |id: &str| {
            (v["steps"]["rows"].as_array().unwrap().iter())
                .find(|r| r["step_id"] == id)
                .unwrap()
                .clone()
        };
        let task = row("s5");
        assert_eq!(task["completed"], 4);
        assert_eq!(
            task["not_carried_out"],
            json!({"refused": 2, "withdrawn": 1, "display": "2 refused · 1 withdrawn"})
        );
        assert!(row("s1").get("not_carried_out").is_none());
        // At 100 % it is no top performer: a task completes as it runs.
        let top: Vec<&str> = (v["top_steps"].as_array().unwrap().iter())
            .map(|t| t["step_id"].as_str().unwrap())
            .collect();
        assert_eq!(top, ["s3", "s1"]);
    }

    #[test]
    fn opt_outs_count_the_stops_and_unsubscribe_links_this_automations_messages_caused() {
        let db = seeded();
        db.events("a1", "message_queued", Some("s3"), 10, NOW - DAY, None);
        db.conn
            .execute(
                "UPDATE events SET channel = 'sms' WHERE kind = 'message_queued' AND step_id = 's3'",
                [],
            )
            .unwrap();
        for (key, automation, channel) in [
            ("k-email", "a1", "email"),
            ("k-sms", "a1", "sms"),
            ("k-sms-2", "a1", "sms"),
            ("k-other", "a2", "sms"),
        ] {
            db.conn
                .execute(
                    "INSERT INTO outbox (idempotency_key, kind, payload, contact_id, automation_id, channel, status, next_attempt_at, created_at, updated_at)
                     VALUES (?1, 'message', '{}', 'c1', ?2, ?3, 'accepted', 0, 0, 0)",
                    [key, automation, channel],
                )
                .unwrap();
        }
        for (kind, key, reason) in [
            ("sms_opt_out", Some("k-sms"), None),
            ("sms_opt_out", Some("k-sms-2"), None),
            // The same STOP unsubscribing a family member on the number.
            ("sms_opt_out", Some("k-sms-2"), None),
            // Another automation's message: not this one's opt-out.
            ("sms_opt_out", Some("k-other"), None),
            (
                "subscription_changed",
                Some("k-email"),
                Some("unsubscribe_link"),
            ),
            // A consent change the host made, not the message's link.
            ("subscription_changed", Some("k-email"), Some("host_update")),
            // Not caused by a message.
            ("subscription_changed", None, Some("unsubscribe_link")),
        ] {
            db.conn
                .execute(
                    "INSERT INTO events (at, kind, contact_id, message_key, detail) VALUES (?1, ?2, 'c1', ?3, ?4)",
                    rusqlite::params![
                        NOW - DAY,
                        kind,
                        key,
                        reason.map(|r| json!({"reason": r}).to_string())
                    ],
                )
                .unwrap();
        }
        let v = db
            .query("automation_performance", json!({"automation_id": "a1"}))
            .unwrap();
        let opt_outs: Vec<(&str, u64)> = v["channel_breakdown"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["channel"]["id"].as_str().unwrap(),
                    c["opt_outs"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(opt_outs, [("email", 1), ("sms", 2)]);
    }

    #[test]
    fn stat_cards_and_step_table() {
        let db = seeded();
        let v = db
            .query("automation_performance", json!({"automation_id": "a1"}))
            .unwrap();
        let cards = v["stat_cards"].as_array().unwrap();
        assert_eq!(cards.len(), 4);
        let labels: Vec<&str> = cards.iter().map(|c| c["label"].as_str().unwrap()).collect();
        assert_eq!(
            labels,
            ["Enrolled", "Completed", "Goal reached", "Conversion"]
        );
        assert_eq!(cards[0]["value"], 342);
        assert_eq!(cards[1]["value"], 300);
        assert_eq!(cards[2]["value"], 62);
        assert_eq!(cards[3]["value"], 18.1);
        assert_eq!(cards[3]["display"], "18.1%");
        assert!(
            cards[3]["definition"]
                .as_str()
                .unwrap()
                .contains("only counts leads whose Status changed to Patient")
        );

        let cols: Vec<&str> = v["steps"]["columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["label"].as_str().unwrap())
            .collect();
        assert_eq!(
            cols,
            [
                "Step",
                "Executed",
                "Completed",
                "Failed",
                "Avg. time",
                "Conversion",
                "Actions"
            ]
        );
        assert!(
            v["steps"]["columns"][5]["definition"]
                .as_str()
                .unwrap()
                .contains("completed ÷ (completed + failed)")
        );
        let rows = v["steps"]["rows"].as_array().unwrap();
        let ids: Vec<&str> = rows
            .iter()
            .map(|r| r["step_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["s1", "s2", "s3", "s4", "s5", "old"]);
        let s1 = &rows[0];
        assert_eq!(s1["title"], "Welcome email");
        assert_eq!(
            (
                s1["executed"].clone(),
                s1["completed"].clone(),
                s1["failed"].clone()
            ),
            (json!(342), json!(335), json!(7))
        );
        assert_eq!(s1["avg_time_display"], "2 min");
        assert_eq!(s1["conversion"], 97.9);
        assert_eq!(s1["conversion_display"], "97.9%");
        assert_eq!(rows[1]["title"], "Wait 2 days");
        assert_eq!(rows[1]["avg_time_display"], "2 days");
        assert_eq!(rows[1]["in_step"], 5);
        assert_eq!(
            rows[1]["conversion_display"], "100%",
            "contacts still waiting read as failures"
        );
        assert_eq!(rows[2]["avg_time_display"], "1 min");
        assert_eq!(rows[2]["conversion_display"], "98.8%");
        assert_eq!(rows[3]["branch_paths"]["yes"], 6);
        assert_eq!(rows[3]["branch_paths"]["no"], 4);
        assert_eq!(rows[4]["depth"], 1);
        assert_eq!(rows[4]["executed"], 0);
        assert_eq!(rows[4]["avg_time_display"], "—");
        assert_eq!(rows[4]["conversion_display"], "—");
        assert_eq!(rows[5]["removed"], true);
        assert_eq!(rows[5]["title"], "Old SMS (removed)");
        assert_eq!(rows[5]["depth"], 1, "a removed step keeps its place");
        assert_eq!(rows[5]["path_label"], "NO path of \"Booked?\"");
        assert_eq!(rows[0]["actions"][0]["id"], "step_analytics");

        // The SMS (98.8 %), then the email (97.9 %): the wait's 100 % is
        // no performance.
        let top: Vec<&str> = v["top_steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["step_id"].as_str().unwrap())
            .collect();
        assert_eq!(top, ["s3", "s1"]);
        assert_eq!(v["goal_funnel"][2]["share_display"], "18.1%");
        assert_eq!(v["channel_breakdown"][0]["channel"]["label"], "Email");
        assert_eq!(v["channel_breakdown"][0]["delivery_rate_display"], "87.7%");
        assert_eq!(v["channel_breakdown"][0]["send_attempts"], 342);
        assert_eq!(v["channel_breakdown"][0]["bounce_rate_display"], "2%");
        assert_eq!(v["channel_breakdown"][0]["error_rate_display"], "0%");
        assert_eq!(v["tabs"][2]["selected"], true);
        assert_eq!(v["header"]["title"], "New lead welcome series");
    }

    #[test]
    fn time_in_flow_exits_and_chart() {
        let db = seeded();
        let v = db
            .query("automation_performance", json!({"automation_id": "a1"}))
            .unwrap();
        let t = &v["time_in_flow"];
        assert_eq!(t["ended"], 3);
        assert_eq!(t["active"], 1);
        // 1 day (its goal came after the End), 2 days, 3 days (to the goal).
        assert_eq!(t["mean_ms"], 2.0 * DAY as f64);
        assert_eq!(t["median_ms"], 2.0 * DAY as f64);
        assert_eq!(t["display"], "2d median 2d");

        let exits = &v["exits"];
        assert_eq!(exits["total"], 25);
        assert_eq!(exits["reasons"][0]["reason"]["label"], "Goal met");
        assert_eq!(exits["reasons"][0]["count"], 20);
        assert_eq!(exits["reasons"][0]["share_display"], "80%");
        assert_eq!(exits["reasons"][1]["reason"]["id"], "sms_opt_out");

        let points = v["engagement_over_time"]["points"].as_array().unwrap();
        assert_eq!(points.len(), 30);
        assert_eq!(points[29]["date"], "2026-03-08");
        assert_eq!(points[29]["completed"], 300);
        assert_eq!(points[27]["enrolled"], 342);
        let total: u64 = points.iter().map(|p| p["enrolled"].as_u64().unwrap()).sum();
        assert_eq!(total, 342);
    }

    #[test]
    fn empty_automation_shows_dashes() {
        let db = Db::new();
        db.automation("a1", "draft", NOW, &[v2()]);
        let v = db
            .query("automation_performance", json!({"automation_id": "a1"}))
            .unwrap();
        assert_eq!(v["stat_cards"][0]["value"], 0);
        assert!(v["stat_cards"][3]["value"].is_null());
        assert_eq!(v["stat_cards"][3]["display"], "—");
        assert_eq!(v["time_in_flow"]["display"], "—");
        assert_eq!(v["steps"]["rows"].as_array().unwrap().len(), 5);
        assert!(v["top_steps"].as_array().unwrap().is_empty());
        assert!(v["exits"]["reasons"].as_array().unwrap().is_empty());
    }

    #[test]
    fn errors() {
        let db = seeded();
        let e = db
            .query("automation_performance", json!({"automation_id": "zzz"}))
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::NotFound);
        assert!(e.to_string().contains("automation zzz"), "{e}");
        let e = db.query("automation_performance", json!({})).unwrap_err();
        assert_eq!(e.code(), ErrorCode::Invalid);
        assert!(e.to_string().contains("automation_id"), "{e}");
        let e = db
            .query("automation_performance", json!({"automation_id": 7}))
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::Invalid);
    }

    #[test]
    fn step_query_uses_the_event_index() {
        let db = seeded();
        let plan = crate::store::query_plan(
            &db.conn,
            super::STEP_COUNTS_SQL,
            rusqlite::params!["a1", 0, 1, 2],
        );
        assert!(
            plan.iter()
                .any(|l| l.contains("COVERING INDEX events_automation ")),
            "{plan:?}"
        );
        assert!(!plan.iter().any(|l| l.contains("SCAN events")), "{plan:?}");
    }
}

#[cfg(test)]
mod scale {
    use std::time::Instant;

    use serde_json::json;

    use super::super::test_support::{Db, NOW};

    /// Views over millions of event rows (run with `--ignored --nocapture`).
    #[test]
    #[ignore]
    fn millions_of_events() {
        let db = Db::new();
        let def = json!({
            "name": "Big", "trigger": {"type": "contact_created"},
            "steps": [
                {"id": "s1", "type": "send_email", "subject": "Welcome", "body": "Hi"},
                {"id": "s2", "type": "delay", "amount": 2, "unit": "days"},
                {"id": "s3", "type": "send_sms", "message": "Book now"}
            ]
        });
        db.automation("big", "active", NOW, std::slice::from_ref(&def));
        db.automation("other", "active", NOW, &[def]);
        let t = Instant::now();
        db.conn
            .execute_batch(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000000)
                 INSERT INTO events (at, kind, contact_id, automation_id, version, step_id, channel, detail)
                 SELECT 1772971200000 - (i % 40) * 86400000,
                        CASE i % 6 WHEN 0 THEN 'enrolled' WHEN 1 THEN 'step_executed' WHEN 2 THEN 'step_completed'
                                   WHEN 3 THEN 'message_queued' WHEN 4 THEN 'completed' ELSE 'message_opened' END,
                        'c' || (i % 50000), CASE WHEN i % 3 = 0 THEN 'other' ELSE 'big' END, 1,
                        's' || (1 + i % 3), 'email',
                        CASE i % 6 WHEN 2 THEN '{\"duration_ms\":120000}' ELSE NULL END
                 FROM n;",
            )
            .unwrap();
        eprintln!("inserted 3M events in {:?}", t.elapsed());
        for (view, params) in [
            ("automation_performance", json!({"automation_id": "big"})),
            ("automation_list", json!({})),
        ] {
            let t = Instant::now();
            let v = db.query(view, params).unwrap();
            eprintln!("{view}: {:?}", t.elapsed());
            assert!(v.is_object());
        }
    }
}
