//! The Performance tab's "Detailed analytics" panel: figures of the whole
//! automation, every email, SMS and step together (SPEC §5): conversion,
//! time in flow, time to first action, unique clicks, the delivery,
//! bounce, error and opt-out rates, and the engagement grade.

use rusqlite::params;
use schemars::JsonSchema;
use serde::Serialize;

use super::engagement_grade::{self, BASELINE_DAYS, EngagementGrade, Periods};
use super::performance::{Outcomes, TimeInFlow};
use super::{
    Ctx, DASH, StatCard, fmt_count, fmt_duration_short, fmt_share, num_f, num_u, rate, round1,
};
use crate::clock::Millis;
use crate::error::Result;

/// The fewest enrollments each period needs for the change of the time to
/// first action to be shown.
pub const MIN_FIRST_ACTIONS: usize = 10;

/// Each enrollment's first open, click or reply by a person (the message's
/// first of each is logged as such; a machine's never), with its first
/// hand-over the sender accepted (`message_sent`: a message refused at
/// hand-over is none; one that failed, bounced or was resent after it
/// counts from that first hand-over), sought in the covering index
/// `events_first_sent` for the enrollments that acted only. The actions'
/// rows are read from the table for their enrollment (`events_automation`
/// has none).
pub(crate) const FIRST_ACTION_SQL: &str = "SELECT a.first_action,
       (SELECT min(s.at) FROM events s INDEXED BY events_first_sent
        WHERE s.kind = 'message_sent' AND s.automation_id = ?1 AND s.enrollment_id = a.enrollment_id)
     FROM (SELECT enrollment_id, min(at) AS first_action FROM events
           WHERE automation_id = ?1
             AND kind IN ('message_opened', 'message_clicked', 'message_replied')
             AND enrollment_id IS NOT NULL
           GROUP BY enrollment_id) a";

/// How long after its first message an action counts when the two periods'
/// times to first action are compared, and how long before today the
/// enrollments compared must have had it: the recent period's youngest
/// enrollments have had hours to act, the baseline's months, and without
/// the same horizon for both the change would lean negative with nothing
/// changed.
pub const FIRST_ACTION_HORIZON: Millis = 7 * crate::clock::DAY;

/// Distinct contacts who clicked, and all clicks by people (repeats too).
pub(crate) const CLICKS_SQL: &str =
    "SELECT count(DISTINCT contact_id) FILTER (WHERE kind = 'message_clicked'),
            count(*)
     FROM events
     WHERE automation_id = ?1 AND kind IN ('message_clicked', 'message_clicked_again')";

/// The panel.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct DetailedAnalytics {
    /// "Detailed analytics".
    pub title: String,
    /// "All steps · automation-wide".
    pub scope: String,
    /// What the figures combine.
    pub note: String,
    /// Nine cards, in this order: `conversion`, `time_in_flow`,
    /// `time_to_first_action`, `unique_clicks`, `delivery_rate`,
    /// `engagement_grade`, `bounce_rate`, `error_rate`, `opt_out_rate`.
    /// Rates are percentages, durations milliseconds, the grade's value its
    /// score.
    pub cards: Vec<StatCard>,
    /// The time to first action in full.
    pub time_to_first_action: FirstAction,
    /// The engagement grade in full.
    pub engagement_grade: EngagementGrade,
}

/// Time to first action (SPEC §5).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct FirstAction {
    /// Median milliseconds from an enrollment's first message handed over
    /// to its first open, click or reply, over the enrollments that acted.
    pub median_ms: Option<f64>,
    /// "42m", or "—".
    pub display: String,
    /// Enrollments measured (a message handed over, then an action).
    pub measured: u64,
    /// The median of the enrollments whose first message went in the last
    /// 30 days, at least 7 days before today, of their actions within 7
    /// days of it (the same horizon for both periods).
    pub recent_median_ms: Option<f64>,
    /// The median of those whose first message went in the 90 days before,
    /// of their actions within 7 days of it.
    pub baseline_median_ms: Option<f64>,
    /// Recent minus baseline, when each has at least 10 enrollments
    /// (negative: contacts act sooner).
    pub change_ms: Option<f64>,
    /// "−8m", "+1.5h", "no change", or "—".
    pub change_display: String,
}

/// The median of `v` (sorted in place); None when empty.
fn median(v: &mut [i64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2] as f64
    } else {
        (v[n / 2 - 1] as f64 + v[n / 2] as f64) / 2.0
    })
}

/// A signed duration: "−8m", "+1.5h", "no change".
fn fmt_change(ms: f64) -> String {
    if ms.abs() < 1000.0 {
        return "no change".to_string();
    }
    let sign = if ms < 0.0 { '−' } else { '+' };
    format!("{sign}{}", fmt_duration_short(ms.abs()))
}

/// Reads the time to first action of automation `automation_id`.
fn first_action(ctx: &Ctx<'_>, automation_id: &str, periods: &Periods) -> Result<FirstAction> {
    let mut stmt = ctx.conn.prepare_cached(FIRST_ACTION_SQL)?;
    let rows = stmt.query_map(params![automation_id], |r| {
        Ok((
            r.get::<_, Option<Millis>>(0)?,
            r.get::<_, Option<Millis>>(1)?,
        ))
    })?;
    let (mut all, mut recent, mut baseline) = (Vec::new(), Vec::new(), Vec::new());
    for row in rows {
        // An action with no hand-over on record before it: nothing to
        // measure.
        let (Some(action), Some(sent)) = row? else {
            continue;
        };
        if sent > action {
            continue;
        }
        let took = action - sent;
        all.push(took);
        if took > FIRST_ACTION_HORIZON || sent > periods.end - FIRST_ACTION_HORIZON {
            continue;
        }
        if sent >= periods.recent_start {
            recent.push(took);
        } else if sent >= periods.baseline_start {
            baseline.push(took);
        }
    }
    let measured = all.len() as u64;
    let median_ms = median(&mut all);
    let enough = recent.len() >= MIN_FIRST_ACTIONS && baseline.len() >= MIN_FIRST_ACTIONS;
    let (recent_median_ms, baseline_median_ms) = (median(&mut recent), median(&mut baseline));
    let change_ms = match (enough, recent_median_ms, baseline_median_ms) {
        (true, Some(r), Some(b)) => Some(r - b),
        _ => None,
    };
    Ok(FirstAction {
        median_ms,
        display: median_ms.map_or_else(|| DASH.to_string(), fmt_duration_short),
        measured,
        recent_median_ms,
        baseline_median_ms,
        change_ms,
        change_display: change_ms.map_or_else(|| DASH.to_string(), fmt_change),
    })
}

/// What the panel is built from, already read by the Performance tab.
pub(crate) struct Totals<'a> {
    /// Enrollments, all time.
    pub(crate) enrolled: u64,
    /// Goals reached that count for the current goal.
    pub(crate) goals: u64,
    /// The messages' outcomes, all time.
    pub(crate) outcomes: Outcomes,
    /// The engagement grade's periods, as of today.
    pub(crate) periods: Periods,
    /// The outcomes of the baseline period.
    pub(crate) baseline: Outcomes,
    /// The outcomes of the recent period.
    pub(crate) recent: Outcomes,
    /// Time in flow.
    pub(crate) time_in_flow: &'a TimeInFlow,
    /// The Conversion card's definition.
    pub(crate) conversion_definition: &'a str,
}

fn card(id: &str, label: &str, value: Option<serde_json::Number>, display: String) -> StatCard {
    StatCard {
        id: id.into(),
        label: label.into(),
        value,
        display,
        hint: String::new(),
        definition: None,
    }
}

/// Builds the panel of automation `automation_id`.
pub(crate) fn build(
    ctx: &Ctx<'_>,
    automation_id: &str,
    t: Totals<'_>,
) -> Result<DetailedAnalytics> {
    let periods = t.periods;
    let first_action = first_action(ctx, automation_id, &periods)?;
    let (unique_clicks, clicks): (i64, i64) = ctx
        .conn
        .prepare_cached(CLICKS_SQL)?
        .query_row(params![automation_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let grade = engagement_grade::grade(&t.recent, &t.baseline, &periods);

    let o = t.outcomes;
    let with = |mut c: StatCard, hint: String, definition: &str| {
        c.hint = hint;
        c.definition = Some(definition.to_string());
        c
    };
    let share_card =
        |id: &str, label: &str, (part, whole): (u64, u64), of: &str, definition: &str| {
            with(
                card(
                    id,
                    label,
                    rate(part, whole).and_then(num_f),
                    fmt_share(part, whole),
                ),
                format!("{} of {} {of}", fmt_count(part), fmt_count(whole)),
                definition,
            )
        };
    let tif = t.time_in_flow;
    let cards = vec![
        share_card(
            "conversion",
            "Conversion",
            (t.goals, t.enrolled),
            "enrolled",
            t.conversion_definition,
        ),
        with(
            card(
                "time_in_flow",
                "Average time in flow",
                tif.mean_ms.and_then(num_f),
                tif.mean_display.clone(),
            ),
            if tif.median_ms.is_some() {
                format!("median {}", tif.median_display)
            } else {
                "No enrollment has ended yet".to_string()
            },
            &tif.definition,
        ),
        with(
            card(
                "time_to_first_action",
                "Time to first action",
                first_action.median_ms.map(round1).and_then(num_f),
                first_action.display.clone(),
            ),
            match first_action.change_ms {
                Some(_) => format!(
                    "{} vs the {BASELINE_DAYS} days before",
                    first_action.change_display
                ),
                None if first_action.measured == 0 => "No open, click or reply yet".to_string(),
                None => format!(
                    "{} measured; too few to compare the last 30 days (to a week ago) with the {BASELINE_DAYS} before",
                    fmt_count(first_action.measured)
                ),
            },
            "Median elapsed time between sending the first message in the automation and the first recorded recipient action - open, click, or reply. Counts each enrollment that acted once; machines' opens and clicks (privacy proxies, link scanners) never.",
        ),
        with(
            card(
                "unique_clicks",
                "Unique clicks",
                Some(num_u(unique_clicks as u64)),
                fmt_count(unique_clicks as u64),
            ),
            format!("{} clicks in all", fmt_count(clicks as u64)),
            "Distinct contacts who clicked any link in any message from this automation. Multiple clicks from the same contact are counted once; link scanners' clicks are not counted.",
        ),
        share_card(
            "delivery_rate",
            "Delivery rate",
            o.delivery(),
            "send attempts",
            "(successful deliveries ÷ total send attempts) × 100, aggregated across every email and SMS sent from any step in this automation. A send is \"delivered\" when the receiving server accepts it without bounce or hard error.",
        ),
        with(
            card(
                "engagement_grade",
                "Engagement grade",
                grade.score.and_then(num_f),
                grade.display.clone(),
            ),
            match &grade.note {
                Some(_) => "Not enough sends to grade yet".to_string(),
                None => format!("{} vs {}", grade.recent_period, grade.baseline_period),
            },
            engagement_grade::DEFINITION,
        ),
        share_card(
            "bounce_rate",
            "Bounce rate",
            o.bounce(),
            "send attempts",
            "(bounced sends ÷ total send attempts) × 100. Includes hard bounces (invalid recipient) and soft bounces (mailbox full, server error). Calculated across every send in the automation.",
        ),
        share_card(
            "error_rate",
            "Error rate",
            o.error(),
            "send attempts",
            "(failed sends ÷ total send attempts) × 100: messages that could not be sent or that their channel reported failed - API errors, rate-limit drops, template render failures, a carrier's failure report. Excludes recipient-side bounces.",
        ),
        share_card(
            "opt_out_rate",
            "Opt-out rate",
            o.opt_out(),
            "delivered",
            "(unsubscribes ÷ successful deliveries) × 100. Counts one-click email unsubscribes and SMS STOP responses across every message in this automation.",
        ),
    ];
    Ok(DetailedAnalytics {
        title: "Detailed analytics".into(),
        scope: "All steps · automation-wide".into(),
        note: "Aggregated metrics. These figures combine results from every email, SMS, and step in this automation. They are not specific to any single asset - open a step from the table above to see per-asset analytics.".into(),
        cards,
        time_to_first_action: first_action,
        engagement_grade: grade,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::super::test_support::{Db, NOW};
    use crate::clock::{DAY, HOUR, MINUTE, Millis};
    use crate::core::sim::Sim;

    fn card<'a>(v: &'a Value, id: &str) -> &'a Value {
        v["detailed_analytics"]["cards"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id)
            .unwrap()
    }

    fn key(s: &Sim, contact: &str) -> String {
        s.messages_to(contact)[0].key.clone()
    }

    /// Four contacts get the welcome email; three act on it 10 minutes,
    /// 42 minutes and 3 hours after it went; one books.
    fn scenario() -> Sim {
        let mut s = Sim::new();
        s.cmd(json!({"command": "automation.create", "automation_id": "a", "definition": {
            "name": "Welcome series", "goal": "book_appointment", "run_window": {"mode": "any_time"},
            "trigger": {"type": "contact_created"},
            "steps": [{"id": "mail", "name": "Welcome email", "type": "send_email", "subject": "Welcome",
                       "body": "<p>Hi <a href=\"https://riverside.example/book\">book</a></p>"}]}}))
        .unwrap();
        s.cmd(json!({"command": "automation.activate", "automation_id": "a"}))
            .unwrap();
        for c in ["c1", "c2", "c3", "c4"] {
            s.contact(c, json!({}));
        }
        s.hand_over_logged();
        let hit = |s: &mut Sim, kind: &str, c: &str| {
            let k = key(s, c);
            s.push(json!({"type": kind, "message_key": k})).unwrap();
        };
        s.advance(10 * MINUTE);
        hit(&mut s, "email.opened", "c1");
        s.advance(32 * MINUTE);
        hit(&mut s, "email.opened", "c2");
        // c1's second open is no first action.
        hit(&mut s, "email.opened", "c1");
        s.advance(3 * HOUR - 42 * MINUTE);
        // A click with no open (images off): its open too.
        hit(&mut s, "email.clicked", "c3");
        s.advance(MINUTE);
        hit(&mut s, "email.clicked", "c3");
        s.advance(MINUTE);
        s.book("c2", "appt-1");
        s
    }

    #[test]
    fn first_action_unique_clicks_and_timeline() {
        let s = scenario();
        let v = s.view("automation_performance", json!({"automation_id": "a"}));
        let d = &v["detailed_analytics"];
        let ids: Vec<&str> = d["cards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap())
            .collect();
        assert_eq!(
            ids,
            [
                "conversion",
                "time_in_flow",
                "time_to_first_action",
                "unique_clicks",
                "delivery_rate",
                "engagement_grade",
                "bounce_rate",
                "error_rate",
                "opt_out_rate"
            ]
        );
        // 10 min, 42 min, 3 hours: the median is 42 minutes.
        let first = &d["time_to_first_action"];
        assert_eq!(first["measured"], 3);
        assert_eq!(first["median_ms"], (42 * MINUTE) as f64);
        assert_eq!(card(&v, "time_to_first_action")["display"], "42m");
        // One contact clicked, twice.
        assert_eq!(card(&v, "unique_clicks")["value"], 1);
        assert_eq!(card(&v, "unique_clicks")["hint"], "2 clicks in all");
        assert_eq!(card(&v, "conversion")["display"], "25%");
        assert_eq!(card(&v, "conversion")["hint"], "1 of 4 enrolled");
        // Four handed over, no receipt: delivered only where a person
        // acted on it.
        assert_eq!(card(&v, "delivery_rate")["hint"], "3 of 4 send attempts");
        assert_eq!(card(&v, "engagement_grade")["display"], "—");

        // Newest first: the goal, c3's click (its implied open not shown,
        // nor its second click), c2's open, c1's open.
        let entries = v["engagement_timeline"]["entries"].as_array().unwrap();
        let got: Vec<(&str, &str)> = entries
            .iter()
            .map(|e| {
                (
                    e["kind"]["id"].as_str().unwrap(),
                    e["contact_id"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("goal_reached", "c2"),
                ("clicked", "c3"),
                ("opened", "c2"),
                ("opened", "c1")
            ]
        );
        assert_eq!(entries[1]["contact"], "Pat c3");
        assert_eq!(entries[1]["step"], "Welcome email");
        assert_eq!(entries[1]["channel"]["label"], "Email");
        assert_eq!(entries[0]["step"], Value::Null);
        assert_eq!(
            v["engagement_timeline"]["kinds"].as_array().unwrap().len(),
            4
        );
        let schema = &crate::views::schemas()["automation_performance"];
        let validator = jsonschema::validator_for(schema).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&v)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{errors:#?}");
    }

    /// Enrollment `id` of contact `contact` in automation `a1`, whose
    /// messages went at `sent` (`(handed_over_at, status)` each), and
    /// whose first action, by `actor`, came at `action`.
    fn acted(
        db: &Db,
        id: i64,
        contact: &str,
        sent: &[(Millis, &str)],
        action: Millis,
        actor: &str,
    ) {
        let c = &db.conn;
        for who in [contact, actor] {
            c.execute(
                "INSERT OR IGNORE INTO contacts (id, props, created_at, last_activity) VALUES (?1, '{}', 0, 0)",
                [who],
            )
            .unwrap();
        }
        c.execute(
            "INSERT INTO enrollments (id, automation_id, contact_id, enrolled_version, version, state, enrolled_at)
             VALUES (?1, 'a1', ?2, 1, 1, 'active', ?3)",
            rusqlite::params![id, contact, sent[0].0],
        )
        .unwrap();
        for (i, (at, status)) in sent.iter().enumerate() {
            c.execute(
                "INSERT INTO outbox (idempotency_key, kind, payload, contact_id, automation_id, enrollment_id, channel,
                                     status, attempts, next_attempt_at, created_at, updated_at, handed_over_at)
                 VALUES (?1, 'message', '{}', ?2, 'a1', ?3, 'sms', ?4, 1, 0, ?5, ?5, ?5)",
                rusqlite::params![format!("k{id}-{i}"), contact, id, status, at],
            )
            .unwrap();
            // As the dispatcher logs the host's answer.
            let logged = match *status {
                "accepted" => "message_sent",
                _ => "message_failed",
            };
            log(c, *at, logged, contact, id);
        }
        log(c, action, "message_replied", actor, id);
    }

    /// Logs `kind` of enrollment `id` of automation `a1` by `contact` at `at`.
    fn log(c: &rusqlite::Connection, at: Millis, kind: &str, contact: &str, id: i64) {
        c.execute(
            "INSERT INTO events (at, kind, contact_id, automation_id, version, enrollment_id, step_id, channel)
             VALUES (?1, ?2, ?3, 'a1', 1, ?4, 's1', 'sms')",
            rusqlite::params![at, kind, contact, id],
        )
        .unwrap();
    }

    #[test]
    fn first_action_periods_are_compared_over_the_same_horizon() {
        let db = recall(json!({"id": "s1", "type": "send_sms", "message": "Hi"}));
        let mut id = 0;
        let mut next = || {
            id += 1;
            (id, format!("c{id}"))
        };
        // The baseline: ten answer within the hour, ten only 20 days on.
        for took in [HOUR; 10].into_iter().chain([20 * DAY; 10]) {
            let (id, c) = next();
            let sent = NOW - 60 * DAY;
            acted(&db, id, &c, &[(sent, "accepted")], sent + took, &c);
        }
        // The last 30 days: ten answer within the hour of the text the
        // sender took, six of them after one refused at hand-over three
        // hours before (no send: counted from it, their 4 hours would be
        // the median); five sent two days ago answered in 30 minutes, too
        // young to compare.
        for i in 0..10 {
            let (id, c) = next();
            let sent = NOW - 20 * DAY;
            let refused = (sent - 3 * HOUR, "failed");
            let texts: &[(Millis, &str)] = if i < 6 {
                &[refused, (sent, "accepted")]
            } else {
                &[(sent, "accepted")]
            };
            acted(&db, id, &c, texts, sent + HOUR, &c);
        }
        for _ in 0..5 {
            let (id, c) = next();
            let sent = NOW - 2 * DAY;
            acted(&db, id, &c, &[(sent, "accepted")], sent + 30 * MINUTE, &c);
        }
        // An answer from the family member who shares the phone: the
        // enrollment's contact got the text.
        let (id, c) = next();
        acted(
            &db,
            id,
            &c,
            &[(NOW - 20 * DAY, "accepted")],
            NOW - 20 * DAY + HOUR,
            "family",
        );
        let v = db
            .query("automation_performance", json!({"automation_id": "a1"}))
            .unwrap();
        let first = &v["detailed_analytics"]["time_to_first_action"];
        assert_eq!(first["measured"], 36);
        assert_eq!(first["recent_median_ms"], HOUR as f64);
        assert_eq!(first["baseline_median_ms"], HOUR as f64);
        assert_eq!(first["change_display"], "no change");
        assert_eq!(
            card(&v, "time_to_first_action")["hint"],
            "no change vs the 90 days before"
        );
    }

    /// A database with automation `a1`, "Recall", live for 200 days, whose
    /// one step is `step`.
    fn recall(step: Value) -> Db {
        let db = Db::new();
        let def =
            json!({"name": "Recall", "trigger": {"type": "contact_created"}, "steps": [step]});
        db.automation("a1", "active", NOW - 200 * DAY, &[def]);
        db
    }

    /// `n` events of `kind` on the email channel of automation `a1` at `at`.
    fn events(db: &Db, kind: &str, n: usize, at: Millis) {
        channel_events(db, "email", kind, n, at);
    }

    /// `n` events of `kind` on `channel` of automation `a1` at `at`.
    fn channel_events(db: &Db, channel: &str, kind: &str, n: usize, at: Millis) {
        for _ in 0..n {
            db.conn
                .execute(
                    "INSERT INTO events (at, kind, contact_id, automation_id, version, step_id, channel)
                     VALUES (?1, ?2, 'c1', 'a1', 1, 's1', ?3)",
                    rusqlite::params![at, kind, channel],
                )
                .unwrap();
        }
    }

    #[test]
    fn an_opt_out_counts_in_a_period_where_its_channel_only_had_a_reply() {
        let db = recall(json!({"id": "s1", "type": "send_email", "subject": "Hi", "body": "Hi"}));
        // Email in both periods; texts in the baseline only.
        for at in [NOW - 60 * DAY, NOW - 10 * DAY] {
            events(&db, "message_sent", 40, at);
            events(&db, "message_delivered", 40, at);
        }
        channel_events(&db, "sms", "message_sent", 40, NOW - 60 * DAY);
        channel_events(&db, "sms", "message_delivered", 40, NOW - 60 * DAY);
        // Lately, a reply to an old text, and a STOP to another.
        channel_events(&db, "sms", "message_replied", 1, NOW - 10 * DAY);
        db.conn
            .execute(
                "INSERT INTO outbox (idempotency_key, kind, payload, contact_id, automation_id, step_id, channel,
                                     status, next_attempt_at, created_at, updated_at)
                 VALUES ('k-old', 'message', '{}', 'c1', 'a1', 's1', 'sms', 'accepted', 0, 0, 0)",
                [],
            )
            .unwrap();
        db.conn
            .execute(
                "INSERT INTO events (at, kind, contact_id, message_key) VALUES (?1, 'sms_opt_out', 'c1', 'k-old')",
                [NOW - 10 * DAY],
            )
            .unwrap();
        let v = db
            .query("automation_performance", json!({"automation_id": "a1"}))
            .unwrap();
        let opt_out = &v["detailed_analytics"]["engagement_grade"]["components"][3];
        assert_eq!(opt_out["rate"]["id"], "opt_out_rate");
        // 1 of the 40 emails delivered lately; none in the baseline.
        assert_eq!(opt_out["recent"], 2.5);
        assert_eq!(opt_out["baseline"], 0.0);
    }

    #[test]
    fn the_grade_compares_the_last_30_days_with_the_90_before() {
        let db = recall(json!({"id": "s1", "type": "send_email", "subject": "Hi", "body": "Hi"}));
        // The baseline: every one delivered.
        events(&db, "message_sent", 40, NOW - 60 * DAY);
        events(&db, "message_delivered", 40, NOW - 60 * DAY);
        // The last 30 days: half delivered, half bounced.
        events(&db, "message_sent", 40, NOW - 10 * DAY);
        events(&db, "message_delivered", 20, NOW - 10 * DAY);
        events(&db, "message_bounced", 20, NOW - 10 * DAY);
        // Today and before the baseline: in neither period.
        for at in [NOW - HOUR, NOW - 200 * DAY] {
            events(&db, "message_sent", 40, at);
            events(&db, "message_bounced", 40, at);
        }
        let v = db
            .query("automation_performance", json!({"automation_id": "a1"}))
            .unwrap();
        let g = &v["detailed_analytics"]["engagement_grade"];
        let delivery = &g["components"][0];
        assert_eq!(delivery["rate"]["id"], "delivery_rate");
        assert_eq!(delivery["recent"], 50.0);
        assert_eq!(delivery["baseline"], 100.0);
        assert_eq!(delivery["steps"], -8.0);
        assert_eq!(g["components"][4]["recent"], 50.0);
        assert_eq!(g["components"][4]["baseline"], 0.0);
        // Delivery and bounce both −8 steps (capped); open (0 of 20
        // against 0 of 40), click and opt-out as usual: −2 − 1.2.
        assert_eq!(g["score"], -3.2);
        assert_eq!(g["grade"], "D");
        assert_eq!(card(&v, "engagement_grade")["display"], "D");
        assert_eq!(
            card(&v, "engagement_grade")["hint"],
            "Feb 6 – Mar 7 vs Nov 8 – Feb 5"
        );
        // All-time figures count every period: 60 of 160.
        assert_eq!(card(&v, "delivery_rate")["hint"], "60 of 160 send attempts");
        assert_eq!(card(&v, "bounce_rate")["hint"], "100 of 160 send attempts");
    }
}
