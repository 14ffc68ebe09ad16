//! `step_analytics`: the Step analytics modal of one email, SMS or Delay
//! step, opened from the chart icon of the step's row in the Performance
//! tab's per-step table (its `step_analytics` action carries this view and
//! its parameters). Its title follows the Asset analytics modal's pattern:
//! "Email Step Analytics — Welcome email".
//!
//! The figures are the Performance tab's, restricted to the step, and read
//! by the same code (`performance::Counts` and its channel rows): the
//! messages a step sent on a channel are the event-log rows carrying its
//! step id and that channel, so a step's figures are exactly the share of
//! the Performance view's channel breakdown row that is this step's, under
//! the same rules (README, "Rates": each figure counts messages; send
//! attempts; revoked deliveries and bounces). A step's channel fallback (the
//! SMS an email step sends when the email cannot go, or the reverse) is
//! counted by the Performance view in the fallback's own channel, and so it
//! is here: not in the step's own figures but beside them, in `fallback`.
//! Summed over the automation's steps, `figures` and `fallback` give the
//! Performance view's channel rows, less what the log holds of messages
//! without a step.
//!
//! Every figure is all time, as on the Performance tab, which has no date
//! range either. A Delay's figures come from the step table's counts (Avg.
//! wait is its Avg. time) and from the enrollments waiting in it now.

use std::collections::HashSet;

use rusqlite::params;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::performance::{ChannelCounts, ChannelRow, Counts, StepCounts, removed_steps};
use super::{
    Ctx, DASH, Label, StatCard, fmt_count, fmt_duration, fmt_percent, fmt_share, load_automation,
    num_f, num_u, rate, round1,
};
use crate::error::{Error, Result};
use crate::model::automation::{Step, StepKind};
use crate::model::contact::validate_id;

/// Fewest send attempts of an email step before its sender reputation is
/// judged: below it, one bounce moves a rate by whole percents.
pub const REPUTATION_MIN_ATTEMPTS: u64 = 50;

/// Bounce rate (%, bounced ÷ send attempts) from which an email step puts
/// the sender's reputation at risk (the common 2% guideline of email
/// providers).
pub const BOUNCE_RATE_AT_RISK: f64 = 2.0;

/// Bounce rate (%) from which the step harms the sender's reputation:
/// providers review or throttle a sender whose bounces pass 5%.
pub const BOUNCE_RATE_POOR: f64 = 5.0;

/// Unsubscribe rate (%, unsubscribes by link ÷ delivered) from which an
/// email step puts the sender's reputation at risk: the usual rate of
/// healthy marketing mail is under 0.5%.
pub const UNSUBSCRIBE_RATE_AT_RISK: f64 = 0.5;

/// Unsubscribe rate (%) from which the step harms the sender's reputation.
pub const UNSUBSCRIBE_RATE_POOR: f64 = 1.0;

/// Parameters of `step_analytics`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepAnalyticsParams {
    /// The automation.
    pub automation_id: String,
    /// Its email, SMS or Delay step: one of the current version, or one
    /// an edit removed (the Performance table keeps those with history).
    pub step_id: String,
}

/// The Step analytics modal of one step.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct StepAnalyticsView {
    /// The automation.
    pub automation_id: String,
    /// Its name.
    pub automation_name: String,
    /// The step.
    pub step_id: String,
    /// The step's title as the Performance table shows it ("Welcome
    /// email", "Wait 2 days"; "… (removed)" for a removed step).
    pub step_title: String,
    /// The modal's title: "Email Step Analytics — Welcome email", "SMS
    /// Step Analytics — …", "Wait Step Analytics — …".
    pub title: String,
    /// Which content the modal shows: `email` ("Email"), `sms` ("SMS") or
    /// `wait` ("Wait"); the matching one of `email`, `sms`, `wait` is set.
    pub analytics_type: Label,
    /// The step's type (`send_email`, `send_sms`, `delay`).
    pub step_type: Label,
    /// Font Awesome icon of the step type.
    pub icon: String,
    /// The step was removed by a later version (history only).
    pub removed: bool,
    /// The period the figures cover: "All time" (the Performance tab has
    /// no date range either).
    pub period: String,
    /// The top cards. Email: Sent, Delivered, Opened, Clicked, Bounced.
    /// SMS: Sent, Delivered, Clicked, Replied, Opt-outs. Wait: Waiting now,
    /// Avg. wait, Longest current wait (the two durations' `value` in
    /// milliseconds).
    pub stat_cards: Vec<StatCard>,
    /// An email step's figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<MessageStepAnalytics>,
    /// An SMS step's figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sms: Option<MessageStepAnalytics>,
    /// A Delay step's figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait: Option<WaitStepAnalytics>,
}

/// The figures of an email or SMS step.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct MessageStepAnalytics {
    /// The step's messages on its own channel, as the Performance view's
    /// channel breakdown counts them (same fields, same rules), restricted
    /// to this step: equal to that channel's row when this is the
    /// automation's only step sending on the channel and no other step's
    /// fallback uses it.
    pub figures: ChannelRow,
    /// Opened ÷ delivered × 100 (email; null for SMS, which has no opens,
    /// and with nothing delivered).
    pub open_rate: Option<f64>,
    /// Formatted ("42.5%", "—").
    pub open_rate_display: String,
    /// Clicked ÷ delivered × 100: each message's first click by a person.
    pub click_rate: Option<f64>,
    /// Formatted.
    pub click_rate_display: String,
    /// Replied ÷ delivered × 100 (STOP and other keywords are no replies).
    pub reply_rate: Option<f64>,
    /// Formatted.
    pub reply_rate_display: String,
    /// The step's channel fallback (an email step's SMS, an SMS step's
    /// email), counted in its own channel as the Performance view counts
    /// it; null when the step has none and never sent one.
    pub fallback: Option<ChannelRow>,
    /// Email steps: the step's part in the sender's reputation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender_reputation: Option<SenderReputation>,
}

/// What an email step's bounces and unsubscribes say of the sender's
/// reputation. The module receives no spam complaints (feedback loops) and
/// no mailbox provider's score, so this is no provider's reputation: it is
/// the two signals of it the module measures, this step's bounce rate and
/// unsubscribe rate, each against stated thresholds ([`BOUNCE_RATE_AT_RISK`],
/// [`BOUNCE_RATE_POOR`], [`UNSUBSCRIBE_RATE_AT_RISK`],
/// [`UNSUBSCRIBE_RATE_POOR`]), and the worse of the two.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SenderReputation {
    /// `good` ("Good"), `at_risk` ("At risk"), `poor` ("Poor"), or
    /// `not_enough_data` ("Not enough data": fewer than
    /// [`REPUTATION_MIN_ATTEMPTS`] send attempts).
    pub level: Label,
    /// The bounce rate and the unsubscribe rate, each with its thresholds
    /// and level.
    pub signals: Vec<ReputationSignal>,
    /// What the indicator is made of.
    pub definition: String,
}

/// One signal of the sender reputation.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ReputationSignal {
    /// `bounce_rate` or `unsubscribe_rate`.
    pub id: String,
    /// "Bounce rate", "Unsubscribe rate".
    pub label: String,
    /// The rate (one decimal, as the channel figures'); null with nothing
    /// to divide by.
    pub rate: Option<f64>,
    /// Formatted.
    pub rate_display: String,
    /// From this rate on, the level is `at_risk`.
    pub at_risk_from: f64,
    /// From this rate on, the level is `poor`.
    pub poor_from: f64,
    /// "Good under 2% · at risk from 2% · poor from 5%".
    pub thresholds_display: String,
    /// This signal's level (`not_enough_data` below the sample).
    pub level: Label,
}

/// The figures of a Delay step.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct WaitStepAnalytics {
    /// The wait as set ("Wait 2 days").
    pub scheduled: String,
    /// Enrollments in the wait now (active, at this step, waiting; a
    /// paused automation's included: they hold where they are).
    pub waiting_now: u64,
    /// Mean time of the waits that finished, in milliseconds: the step
    /// table's Avg. time.
    pub avg_wait_ms: Option<f64>,
    /// Formatted ("2 days", "—").
    pub avg_wait_display: String,
    /// How long the contact waiting longest has waited so far, in
    /// milliseconds; null when nobody waits.
    pub longest_wait_ms: Option<i64>,
    /// Formatted.
    pub longest_wait_display: String,
    /// Waits that finished (the step table's Completed).
    pub finished: u64,
    /// Started and neither finished nor waiting now: the contact left the
    /// automation during the wait (an exit, *Goal met*), or an edit moved
    /// them on. The step table's `in_step` is this plus `waiting_now`.
    pub left_during_wait: u64,
}

/// Active enrollments waiting in a Delay step (`?2`) of automation `?1`:
/// how many, and since when the longest has waited (index
/// `enrollments_automation`).
const WAITING_SQL: &str = "SELECT count(*), min(step_started_at) FROM enrollments
     WHERE automation_id = ?1 AND state = 'active' AND step_id = ?2 AND step_phase = 'waiting'";

/// Builds the modal.
pub(crate) fn build(ctx: &Ctx<'_>, p: StepAnalyticsParams) -> Result<StepAnalyticsView> {
    validate_id("step_id", &p.step_id).map_err(|e| e.at("params"))?;
    let rec = load_automation(ctx.conn, &p.automation_id)?;
    let id = rec.id.as_str();
    let (step, removed) = match rec.current.flow.step(&p.step_id) {
        Some(step) => (step.clone(), false),
        None => {
            let mut missing = HashSet::from([p.step_id.as_str()]);
            match removed_steps(ctx.conn, id, &mut missing)?
                .into_iter()
                .next()
            {
                Some((step, _, _)) => (step, true),
                None => {
                    return Err(Error::not_found(format!(
                        "step {} of automation {id}",
                        p.step_id
                    )));
                }
            }
        }
    };
    let (type_id, type_label) = match &step.kind {
        StepKind::SendEmail { .. } => ("email", "Email"),
        StepKind::SendSms { .. } => ("sms", "SMS"),
        StepKind::Delay { .. } => ("wait", "Wait"),
        other => {
            return Err(Error::invalid(format!(
                "params: step_id: step {} is a {} step; step analytics covers email, SMS and Delay steps",
                p.step_id,
                other.type_label()
            )));
        }
    };
    let counts = Counts::read(ctx.conn, id)?;
    let step_title = if removed {
        format!("{} (removed)", step.title())
    } else {
        step.title()
    };
    let mut view = StepAnalyticsView {
        automation_id: rec.id.clone(),
        automation_name: rec.name.clone(),
        step_id: step.id.clone(),
        title: format!("{type_label} Step Analytics — {step_title}"),
        step_title,
        analytics_type: Label::new(type_id, type_label),
        step_type: Label::new(step.kind.type_id(), step.kind.type_label()),
        icon: super::builder::step_icon(step.kind.type_id()).into(),
        removed,
        period: "All time".into(),
        stat_cards: Vec::new(),
        email: None,
        sms: None,
        wait: None,
    };
    match type_id {
        "email" => {
            let m = message_analytics(&counts, &step, "email");
            view.stat_cards = email_cards(ctx, &m);
            view.email = Some(m);
        }
        "sms" => {
            let m = message_analytics(&counts, &step, "sms");
            view.stat_cards = sms_cards(&m);
            view.sms = Some(m);
        }
        _ => {
            let w = wait_analytics(ctx, id, &step, counts.step(&step.id))?;
            view.stat_cards = wait_cards(&w);
            view.wait = Some(w);
        }
    }
    Ok(view)
}

fn message_analytics(counts: &Counts, step: &Step, channel: &str) -> MessageStepAnalytics {
    let figures = counts
        .messages_of(&step.id, channel)
        .unwrap_or_default()
        .row(channel);
    let other = if channel == "email" { "sms" } else { "email" };
    // A fallback the step has now, or one it sent before an edit took it off.
    let fallback = match (step.kind.fallback(), counts.messages_of(&step.id, other)) {
        (_, Some(c)) => Some(c.row(other)),
        (Some(_), None) => Some(ChannelCounts::default().row(other)),
        (None, None) => None,
    };
    let open_rate = (channel == "email")
        .then(|| rate(figures.opened, figures.delivered))
        .flatten();
    let click_rate = rate(figures.clicked, figures.delivered);
    let reply_rate = rate(figures.replied, figures.delivered);
    MessageStepAnalytics {
        sender_reputation: (channel == "email").then(|| sender_reputation(&figures)),
        open_rate,
        open_rate_display: if channel == "email" {
            fmt_share(figures.opened, figures.delivered)
        } else {
            DASH.into()
        },
        click_rate,
        click_rate_display: fmt_share(figures.clicked, figures.delivered),
        reply_rate,
        reply_rate_display: fmt_share(figures.replied, figures.delivered),
        fallback,
        figures,
    }
}

fn card(id: &str, label: &str, n: u64, hint: String, definition: &str) -> StatCard {
    StatCard {
        id: id.into(),
        label: label.into(),
        value: Some(num_u(n)),
        display: fmt_count(n),
        hint,
        definition: Some(definition.into()),
    }
}

const SENT_DEFINITION: &str = "Send attempts: the hand-overs the sender accepted (a resend after a soft bounce is one more) plus the messages that failed at or before the hand-over. Messages consent held back are not sent, and not here.";
const DELIVERED_DEFINITION: &str = "Messages delivered: a delivery receipt, the module's relay taking it, or a person's answer to it with no receipt; less those a later bounce took back. The rate is delivered ÷ send attempts × 100.";

/// The Sent and Delivered cards, which email and SMS steps share.
fn sent_and_delivered(f: &ChannelRow) -> Vec<StatCard> {
    vec![
        card(
            "sent",
            "Sent",
            f.send_attempts,
            format!("{} queued", fmt_count(f.queued)),
            SENT_DEFINITION,
        ),
        card(
            "delivered",
            "Delivered",
            f.delivered,
            format!("{} delivery rate", f.delivery_rate_display),
            DELIVERED_DEFINITION,
        ),
    ]
}

fn email_cards(ctx: &Ctx<'_>, m: &MessageStepAnalytics) -> Vec<StatCard> {
    let f = &m.figures;
    let tracking = &ctx.settings.doc.tracking;
    let mut cards = sent_and_delivered(f);
    cards.extend([
        card(
            "opened",
            "Opened",
            f.opened,
            if tracking.email_opens {
                format!("{} open rate", m.open_rate_display)
            } else {
                "Open tracking is off".into()
            },
            "Messages opened: each message's first open by a person (a click with no open recorded counts as its open); opens by privacy proxies never. The rate is opened ÷ delivered × 100.",
        ),
        card(
            "clicked",
            "Clicked",
            f.clicked,
            if tracking.email_clicks {
                format!("{} click rate", m.click_rate_display)
            } else {
                "Click tracking is off".into()
            },
            "Messages clicked: each message's first click by a person; link scanners' clicks never. The rate is clicked ÷ delivered × 100.",
        ),
        card(
            "bounced",
            "Bounced",
            f.bounced,
            format!("{} bounce rate", f.bounce_rate_display),
            "Bounces (hard and soft), one per hand-over. The rate is bounced ÷ send attempts × 100.",
        ),
    ]);
    cards
}

fn sms_cards(m: &MessageStepAnalytics) -> Vec<StatCard> {
    let f = &m.figures;
    let mut cards = sent_and_delivered(f);
    cards.extend([
        card(
            "clicked",
            "Clicked",
            f.clicked,
            format!("{} click rate", m.click_rate_display),
            "Texts clicked: each text's first click on a tracked link by a person. The rate is clicked ÷ delivered × 100.",
        ),
        card(
            "replied",
            "Replied",
            f.replied,
            format!("{} reply rate", m.reply_rate_display),
            "Texts replied to: each text's first reply. STOP, HELP and the other keywords are no replies. The rate is replied ÷ delivered × 100.",
        ),
        card(
            "opt_outs",
            "Opt-outs",
            f.opt_outs,
            format!("{} opt-out rate", f.opt_out_rate_display),
            "Texts answered with STOP (or another opt-out keyword), one per text. The rate is opt-outs ÷ delivered × 100.",
        ),
    ]);
    cards
}

/// A signal's level: `not_enough_data` below the sample, else by its
/// thresholds (a rate with nothing to divide by is good: nothing bounced).
fn level_of(rate: Option<f64>, at_risk: f64, poor: f64, enough: bool) -> Label {
    match rate {
        _ if !enough => Label::new("not_enough_data", "Not enough data"),
        Some(r) if r >= poor => Label::new("poor", "Poor"),
        Some(r) if r >= at_risk => Label::new("at_risk", "At risk"),
        _ => Label::new("good", "Good"),
    }
}

fn level_rank(l: &Label) -> u8 {
    match l.id.as_str() {
        "good" => 0,
        "at_risk" => 1,
        "poor" => 2,
        _ => 3,
    }
}

/// The sender reputation of an email step's figures.
fn sender_reputation(f: &ChannelRow) -> SenderReputation {
    let enough = f.send_attempts >= REPUTATION_MIN_ATTEMPTS;
    let signal =
        |id: &str, label: &str, rate: Option<f64>, display: &str, at_risk: f64, poor: f64| {
            ReputationSignal {
                id: id.into(),
                label: label.into(),
                rate,
                rate_display: display.to_string(),
                at_risk_from: at_risk,
                poor_from: poor,
                thresholds_display: format!(
                    "Good under {} · at risk from {} · poor from {}",
                    fmt_percent(at_risk),
                    fmt_percent(at_risk),
                    fmt_percent(poor)
                ),
                level: level_of(rate, at_risk, poor, enough),
            }
        };
    let signals = vec![
        signal(
            "bounce_rate",
            "Bounce rate",
            f.bounce_rate,
            &f.bounce_rate_display,
            BOUNCE_RATE_AT_RISK,
            BOUNCE_RATE_POOR,
        ),
        signal(
            "unsubscribe_rate",
            "Unsubscribe rate",
            f.opt_out_rate,
            &f.opt_out_rate_display,
            UNSUBSCRIBE_RATE_AT_RISK,
            UNSUBSCRIBE_RATE_POOR,
        ),
    ];
    let level = if enough {
        signals
            .iter()
            .map(|s| s.level.clone())
            .max_by_key(level_rank)
            .unwrap_or_else(|| Label::new("good", "Good"))
    } else {
        Label::new("not_enough_data", "Not enough data")
    };
    SenderReputation {
        level,
        signals,
        definition: format!(
            "An indicator from what the module measures of this step's email: its bounce rate (bounced ÷ send attempts) and its unsubscribe rate (unsubscribes by the message's link ÷ delivered), each against the thresholds shown; the level is the worse of the two. Mailbox providers also weigh spam complaints and their own data, which the module does not receive, so this is not their score. Judged from {REPUTATION_MIN_ATTEMPTS} send attempts on."
        ),
    }
}

fn wait_analytics(
    ctx: &Ctx<'_>,
    automation_id: &str,
    step: &Step,
    c: StepCounts,
) -> Result<WaitStepAnalytics> {
    let (waiting, since): (i64, Option<i64>) = ctx
        .conn
        .prepare_cached(WAITING_SQL)?
        .query_row(params![automation_id, step.id], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    let waiting_now = waiting as u64;
    let longest = since.map(|s| (ctx.now - s).max(0));
    let in_step = c.in_step();
    Ok(WaitStepAnalytics {
        // As set, whatever the step is named.
        scheduled: Step {
            name: None,
            ..step.clone()
        }
        .title(),
        waiting_now,
        avg_wait_ms: c.avg_ms.map(round1),
        avg_wait_display: c.avg_ms.map(fmt_duration).unwrap_or_else(|| DASH.into()),
        longest_wait_ms: longest,
        longest_wait_display: longest
            .map(|ms| fmt_duration(ms as f64))
            .unwrap_or_else(|| DASH.into()),
        finished: c.completed,
        left_during_wait: in_step.saturating_sub(waiting_now),
    })
}

fn wait_cards(w: &WaitStepAnalytics) -> Vec<StatCard> {
    vec![
        card(
            "waiting_now",
            "Waiting now",
            w.waiting_now,
            w.scheduled.clone(),
            "Contacts in this wait now (a paused automation's included: they hold where they are).",
        ),
        StatCard {
            id: "avg_wait".into(),
            label: "Avg. wait".into(),
            value: w.avg_wait_ms.and_then(num_f),
            display: w.avg_wait_display.clone(),
            hint: format!("{} finished", fmt_count(w.finished)),
            definition: Some(
                "Mean time of the waits that finished, from the step starting to the contact moving on (a pause of the automation included); contacts still waiting are not in it. In milliseconds."
                    .into(),
            ),
        },
        StatCard {
            id: "longest_wait".into(),
            label: "Longest current wait".into(),
            value: w.longest_wait_ms.map(|ms| num_u(ms as u64)),
            display: w.longest_wait_display.clone(),
            hint: if w.waiting_now == 0 {
                "Nobody is waiting".into()
            } else {
                "So far".into()
            },
            definition: Some(
                "How long the contact waiting longest has waited so far. In milliseconds.".into(),
            ),
        },
    ]
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::clock::{DAY, HOUR, MINUTE};
    use crate::core::sim::Sim;
    use crate::error::ErrorCode;

    fn definition() -> Value {
        json!({"name": "Welcome series", "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
        "steps": [
            {"id": "mail", "name": "Welcome email", "type": "send_email", "subject": "Welcome",
             "body": "<p>Hi <a href=\"https://riverside.example/book\">book</a></p>"},
            {"id": "wait", "type": "delay", "amount": 2, "unit": "days"},
            {"id": "text", "name": "Follow-up SMS", "type": "send_sms",
             "message": "Book at https://riverside.example/book"},
            {"id": "call", "type": "create_task", "title": "Call", "assignee": {"kind": "contact_owner"}}
        ]})
    }

    /// Creates and turns on automation `a`.
    fn create(s: &mut Sim, def: Value) {
        s.cmd(json!({"command": "automation.create", "automation_id": "a", "definition": def}))
            .unwrap();
        s.cmd(json!({"command": "automation.activate", "automation_id": "a"}))
            .unwrap();
    }

    fn view(s: &Sim, step: &str) -> crate::error::Result<Value> {
        crate::views::query(
            &s.conn,
            &s.settings,
            "step_analytics",
            &json!({"automation_id": "a", "step_id": step}),
            s.now,
        )
    }

    fn cards(v: &Value) -> Vec<(String, Value)> {
        v["stat_cards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["id"].as_str().unwrap().to_string(), c["value"].clone()))
            .collect()
    }

    fn key(s: &Sim, contact: &str, channel: &str) -> String {
        s.messages_to(contact)
            .iter()
            .find(|m| m.channel.as_deref() == Some(channel))
            .unwrap()
            .key
            .clone()
    }

    fn channel_row(perf: &Value, channel: &str) -> Value {
        perf["channel_breakdown"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["channel"]["id"] == channel)
            .unwrap()
            .clone()
    }

    /// Five contacts through the email and the wait to the text, two more
    /// still waiting; receipts, opens, clicks, a reply and a STOP.
    fn scenario() -> Sim {
        let mut s = Sim::new();
        create(&mut s, definition());
        for c in ["c1", "c2", "c3", "c4", "c5"] {
            s.contact(c, json!({}));
        }
        s.hand_over_logged();
        let receipt = |s: &mut Sim, c: &str, channel: &str, status: &str, bounce: Option<&str>| {
            let k = key(s, c, channel);
            s.push(json!({"type": "delivery.receipt", "message_key": k, "status": status, "bounce": bounce}))
                .unwrap();
        };
        let mail = |s: &Sim, c: &str| key(s, c, "email");
        receipt(&mut s, "c1", "email", "delivered", None);
        receipt(&mut s, "c2", "email", "delivered", None);
        receipt(&mut s, "c3", "email", "bounced", Some("hard"));
        receipt(&mut s, "c4", "email", "delivered", None);
        // c1 opens twice (one message opened); c2 clicks without the
        // pixel (its open too); c5 opens with no receipt (delivered).
        for _ in 0..2 {
            s.push(json!({"type": "email.opened", "message_key": mail(&s, "c1")}))
                .unwrap();
        }
        s.push(json!({"type": "email.clicked", "message_key": mail(&s, "c2")}))
            .unwrap();
        s.push(json!({"type": "email.opened", "message_key": mail(&s, "c5")}))
            .unwrap();
        // Two more a day later: still in the wait at the end.
        s.advance(DAY);
        for c in ["c6", "c7"] {
            s.contact(c, json!({}));
        }
        s.hand_over_logged();
        s.advance(DAY + HOUR);
        s.hand_over_logged();
        let text = |s: &Sim, c: &str| key(s, c, "sms");
        receipt(&mut s, "c1", "sms", "delivered", None);
        receipt(&mut s, "c2", "sms", "delivered", None);
        receipt(&mut s, "c4", "sms", "failed", None);
        let k1 = text(&s, "c1");
        s.push(json!({"type": "sms.received", "contact_id": "c1", "body": "Yes please", "in_reply_to": k1}))
            .unwrap();
        let k2 = text(&s, "c2");
        s.push(
            json!({"type": "sms.received", "contact_id": "c2", "body": "STOP", "in_reply_to": k2}),
        )
        .unwrap();
        // c5 taps the link a few minutes later (no receipt: delivered).
        s.advance(5 * MINUTE);
        let body = s.messages_to("c5")[1].payload["rendered"]["text"]
            .as_str()
            .unwrap()
            .to_string();
        let at = body.find("https://t.riverside.example/c/").unwrap();
        let path = body[at..]
            .split_whitespace()
            .next()
            .unwrap()
            .trim_start_matches("https://t.riverside.example")
            .to_string();
        s.hit(&crate::core::hits::Hit {
            method: "GET".into(),
            path,
            user_agent: Some("Mozilla/5.0 (iPhone) AppleWebKit/605.1.15".into()),
            ip_class: None,
        })
        .unwrap();
        s
    }

    #[test]
    fn step_analytics_cards_are_what_happened_and_the_performance_views_figures() {
        let s = scenario();
        let perf = s.view("automation_performance", json!({"automation_id": "a"}));

        let email = view(&s, "mail").unwrap();
        assert_eq!(email["title"], "Email Step Analytics — Welcome email");
        assert_eq!(email["analytics_type"]["id"], "email");
        assert!(email.get("sms").is_none() && email.get("wait").is_none());
        assert_eq!(
            cards(&email),
            [
                ("sent".into(), json!(7)),
                // c1, c2, c4 by receipt, c5 by its open; c3 bounced; c6
                // and c7 have no receipt yet.
                ("delivered".into(), json!(4)),
                ("opened".into(), json!(3)),
                ("clicked".into(), json!(1)),
                ("bounced".into(), json!(1)),
            ]
        );
        let m = &email["email"];
        assert_eq!(
            m["figures"],
            channel_row(&perf, "email"),
            "the only email step"
        );
        assert_eq!(m["open_rate_display"], "75%");
        assert_eq!(m["click_rate_display"], "25%");
        assert_eq!(email["stat_cards"][1]["hint"], "57.1% delivery rate");
        assert_eq!(email["stat_cards"][4]["hint"], "14.2% bounce rate");
        assert!(m["fallback"].is_null());
        // 7 attempts: too few to judge.
        assert_eq!(m["sender_reputation"]["level"]["id"], "not_enough_data");
        assert_eq!(m["sender_reputation"]["signals"][0]["rate"], 14.2);

        let sms = view(&s, "text").unwrap();
        assert_eq!(sms["title"], "SMS Step Analytics — Follow-up SMS");
        assert_eq!(
            cards(&sms),
            [
                ("sent".into(), json!(5)),
                // c1, c2 by receipt, c5 by the click; c4 failed.
                ("delivered".into(), json!(3)),
                ("clicked".into(), json!(1)),
                ("replied".into(), json!(1)),
                ("opt_outs".into(), json!(1)),
            ]
        );
        let t = &sms["sms"];
        assert_eq!(t["figures"], channel_row(&perf, "sms"), "the only SMS step");
        assert_eq!(t["figures"]["failed"], 1);
        assert_eq!(t["figures"]["error_rate_display"], "20%");
        assert_eq!(t["reply_rate_display"], "33.3%");
        assert_eq!(sms["stat_cards"][4]["hint"], "33.3% opt-out rate");
        assert!(t["open_rate"].is_null());
        assert!(t.get("sender_reputation").is_none());

        let wait = view(&s, "wait").unwrap();
        assert_eq!(wait["title"], "Wait Step Analytics — Wait 2 days");
        let w = &wait["wait"];
        assert_eq!(w["waiting_now"], 2, "{w}");
        assert_eq!(w["finished"], 5);
        assert_eq!(w["left_during_wait"], 0);
        assert_eq!(w["avg_wait_ms"], json!((2 * DAY) as f64));
        assert_eq!(w["avg_wait_display"], "2 days");
        // c6 and c7 started waiting a day, an hour and five minutes ago.
        assert_eq!(w["longest_wait_ms"], DAY + HOUR + 5 * MINUTE);
        assert_eq!(w["scheduled"], "Wait 2 days");
        let row = (perf["steps"]["rows"].as_array().unwrap().iter())
            .find(|r| r["step_id"] == "wait")
            .unwrap();
        assert_eq!(w["avg_wait_ms"], row["avg_time_ms"]);
        assert_eq!(row["in_step"], 2);
        assert_eq!(
            cards(&wait),
            [
                ("waiting_now".into(), json!(2)),
                ("avg_wait".into(), json!((2 * DAY) as f64)),
                ("longest_wait".into(), json!(DAY + HOUR + 5 * MINUTE)),
            ]
        );

        // Each kind fits the published schema.
        let schema = &crate::views::schemas()["step_analytics"];
        let validator = jsonschema::validator_for(schema).unwrap();
        for v in [&email, &sms, &wait] {
            let errors: Vec<String> = validator
                .iter_errors(v)
                .map(|e| format!("{e} at {}", e.instance_path()))
                .collect();
            assert!(errors.is_empty(), "{errors:#?}");
        }

        // The row's action opens this view.
        let rows = perf["steps"]["rows"].as_array().unwrap();
        for r in rows {
            let action = r["actions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["id"] == "step_analytics");
            match r["step_id"].as_str().unwrap() {
                "call" => assert!(action.is_none()),
                id => assert_eq!(
                    action.unwrap()["view"],
                    json!({"view": "step_analytics", "params": {"automation_id": "a", "step_id": id}})
                ),
            }
        }
    }

    #[test]
    fn a_fallback_is_counted_in_its_own_channel_beside_the_steps_figures() {
        let mut s = Sim::new();
        let mut def = definition();
        def["steps"][0]["fallback"] = json!({"message": "Hi {{firstname}}, book now"});
        create(&mut s, def);
        // No email address: the email step goes by its SMS fallback.
        s.contact("c1", json!({"email": null}));
        s.contact("c2", json!({}));
        s.hand_over_logged();
        s.advance(2 * DAY + HOUR);
        s.hand_over_logged();
        let perf = s.view("automation_performance", json!({"automation_id": "a"}));
        let email = view(&s, "mail").unwrap();
        let m = &email["email"];
        assert_eq!(m["figures"]["send_attempts"], 1);
        assert_eq!(m["figures"]["suppressed"], 1);
        assert_eq!(m["fallback"]["channel"]["id"], "sms");
        assert_eq!(m["fallback"]["send_attempts"], 1);
        let text = view(&s, "text").unwrap();
        assert_eq!(text["sms"]["figures"]["send_attempts"], 2);
        assert!(text["sms"]["fallback"].is_null());
        // The SMS row: the text step's and the email step's fallback.
        let row = channel_row(&perf, "sms");
        for field in ["queued", "sent", "send_attempts", "delivered"] {
            assert_eq!(
                row[field].as_u64().unwrap(),
                text["sms"]["figures"][field].as_u64().unwrap()
                    + m["fallback"][field].as_u64().unwrap(),
                "{field}"
            );
        }
        assert_eq!(m["figures"], channel_row(&perf, "email"));
    }

    #[test]
    fn a_removed_step_keeps_its_analytics() {
        let mut s = scenario();
        let mut def = definition();
        def["steps"].as_array_mut().unwrap().remove(2);
        s.cmd(json!({"command": "automation.update", "automation_id": "a", "definition": def}))
            .unwrap();
        let v = view(&s, "text").unwrap();
        assert_eq!(v["removed"], true);
        assert_eq!(v["title"], "SMS Step Analytics — Follow-up SMS (removed)");
        assert_eq!(v["stat_cards"][0]["value"], 5);
    }

    #[test]
    fn errors_name_what_is_wrong() {
        let s = scenario();
        let q = |params: Value| {
            crate::views::query(&s.conn, &s.settings, "step_analytics", &params, s.now).unwrap_err()
        };
        let e = q(json!({"automation_id": "zzz", "step_id": "mail"}));
        assert_eq!(e.code(), ErrorCode::NotFound);
        assert!(e.to_string().contains("automation zzz"), "{e}");
        let e = q(json!({"automation_id": "a", "step_id": "nope"}));
        assert_eq!(e.code(), ErrorCode::NotFound);
        assert!(e.to_string().contains("step nope of automation a"), "{e}");
        let e = q(json!({"automation_id": "a", "step_id": "call"}));
        assert_eq!(e.code(), ErrorCode::Invalid);
        assert!(
            e.to_string().contains("step_id") && e.to_string().contains("Create task"),
            "{e}"
        );
        for params in [
            json!({"automation_id": "a"}),
            json!({"automation_id": "a", "step_id": "mail", "from": "2026-01-01"}),
            json!({"automation_id": "a", "step_id": "bad id"}),
            json!({"automation_id": "a", "step_id": 3}),
        ] {
            let e = q(params.clone());
            assert_eq!(e.code(), ErrorCode::Invalid, "{params}: {e}");
        }
    }

    fn figures(attempts: u64, bounced: u64, delivered: u64, opt_outs: u64) -> ChannelRow {
        let mut row = ChannelCounts::default().row("email");
        row.send_attempts = attempts;
        row.bounced = bounced;
        row.bounce_rate = rate(bounced, attempts);
        row.delivered = delivered;
        row.opt_outs = opt_outs;
        row.opt_out_rate = rate(opt_outs, delivered);
        row
    }

    #[test]
    fn sender_reputation_is_the_worse_of_bounces_and_unsubscribes() {
        let level = |f: ChannelRow| sender_reputation(&f).level.id;
        assert_eq!(level(figures(49, 0, 49, 0)), "not_enough_data");
        assert_eq!(level(figures(200, 3, 197, 0)), "good", "1.5% bounced");
        assert_eq!(level(figures(200, 4, 196, 0)), "at_risk", "2% bounced");
        assert_eq!(level(figures(200, 10, 190, 0)), "poor", "5% bounced");
        assert_eq!(
            level(figures(200, 0, 200, 1)),
            "at_risk",
            "0.5% unsubscribed"
        );
        assert_eq!(level(figures(200, 4, 196, 2)), "poor", "1% unsubscribed");
        let r = sender_reputation(&figures(200, 3, 197, 0));
        assert_eq!(
            r.signals[0].thresholds_display,
            "Good under 2% · at risk from 2% · poor from 5%"
        );
        assert_eq!(
            r.signals[1].thresholds_display,
            "Good under 0.5% · at risk from 0.5% · poor from 1%"
        );
        assert!(r.definition.contains("spam complaints"));
    }
}
