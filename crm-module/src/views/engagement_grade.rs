//! The engagement grade (SPEC §5): how an automation's messages did lately
//! against its own past, as a letter from A+ to F. SPEC leaves the formula
//! to the developers; this is it, and [`DEFINITION`] says it to the user.
//!
//! - **Periods.** The recent period is the 30 practice-local days before
//!   today; the baseline the 90 days before those. Both end at a local
//!   midnight, so the grade is the same all day and moves once a day
//!   ("recomputed daily").
//! - **Rates**, every channel together, of the events logged in each
//!   period (the Performance tab's own counts, `Outcomes`): delivery and
//!   bounce as shares of the messages whose outcome was recorded in the
//!   period (delivered, bounced or failed), open (email opens ÷ emails
//!   delivered: a text has no read receipt), click-through (messages
//!   clicked ÷ delivered) and opt-out (opt-outs ÷ delivered). Outcomes, not
//!   send attempts: a receipt comes after its send, so sends near a
//!   period's end whose receipts fall in the next would read as
//!   undelivered, by as much as the volume changed between the periods.
//! - **Each rate against its baseline**: the difference in percentage
//!   points, less the noise the two volumes allow (one standard error of
//!   the difference of two shares, from the pooled rate), divided by the
//!   difference worth one step (`COMPONENTS`: delivery 1 point, open 3,
//!   click 1, opt-out 0.25, bounce 0.5); fewer opt-outs and bounces are
//!   better. Capped at ±8 steps. A rate takes part only when both periods
//!   have at least [`MIN_DENOMINATOR`] of what it divides by.
//! - **Score**: the weighted mean of the rates that take part (delivery and
//!   click-through 25 % each, open 20 %, opt-out and bounce 15 % each).
//! - **Letter**: a score of 0 (doing as usual) is B; every half step above
//!   or below moves one letter step (`letter`). No grade without the
//!   delivery rate in both periods.

use chrono::Days;
use schemars::JsonSchema;
use serde::Serialize;

use super::performance::Outcomes;
use super::{DASH, Label, fmt_rate, rate, round1};
use crate::clock::Millis;
use crate::schedule::{local_date, local_to_utc_ms};

/// Days of the recent period.
pub const RECENT_DAYS: u64 = 30;
/// Days of the baseline before it.
pub const BASELINE_DAYS: u64 = 90;
/// The fewest outcomes (or deliveries, or emails delivered) a period needs
/// for a rate to take part.
pub const MIN_DENOMINATOR: u64 = 20;
/// A rate's distance from its baseline is capped at this many steps.
const CAP: f64 = 8.0;

/// What the grade says, as the info tooltip shows it.
pub const DEFINITION: &str = "Composite A+ to F score blending delivery rate, open rate (email), click-through, opt-out rate and bounce rate of the last 30 days against this automation's own 90 days before. Each rate's difference from its baseline, less what chance alone would give at these volumes, is counted in steps (delivery 1 point, open 3, click 1, opt-out 0.25, bounce 0.5; fewer opt-outs and bounces are better) and weighted (delivery and click 25% each, open 20%, opt-out and bounce 15% each). B means as usual; each half step up or down moves a letter. Delivery and bounce rates here are shares of the sends whose outcome came in the period. Counts whole days in the practice's time zone, so it is recomputed daily. A rate needs 20 messages in both periods to count.";

/// One rate of the grade.
pub(crate) struct Component {
    /// Stable id.
    pub(crate) id: &'static str,
    /// Label.
    pub(crate) label: &'static str,
    /// Share of the score.
    pub(crate) weight: f64,
    /// Percentage points worth one step.
    pub(crate) step: f64,
    /// Whether a higher rate is better.
    pub(crate) higher_is_better: bool,
    /// (part, whole) of the period's outcomes.
    pub(crate) ratio: fn(&Outcomes) -> (u64, u64),
}

/// The five rates, in the order the view lists them.
pub(crate) const COMPONENTS: [Component; 5] = [
    Component {
        id: "delivery_rate",
        label: "Delivery rate",
        weight: 0.25,
        step: 1.0,
        higher_is_better: true,
        ratio: |o| (o.delivered, o.settled()),
    },
    Component {
        id: "open_rate",
        label: "Open rate (email)",
        weight: 0.20,
        step: 3.0,
        higher_is_better: true,
        ratio: |o| (o.email_opened, o.email_delivered),
    },
    Component {
        id: "click_rate",
        label: "Click-through",
        weight: 0.25,
        step: 1.0,
        higher_is_better: true,
        ratio: |o| (o.clicked, o.delivered),
    },
    Component {
        id: "opt_out_rate",
        label: "Opt-out rate",
        weight: 0.15,
        step: 0.25,
        higher_is_better: false,
        ratio: Outcomes::opt_out,
    },
    Component {
        id: "bounce_rate",
        label: "Bounce rate",
        weight: 0.15,
        step: 0.5,
        higher_is_better: false,
        ratio: |o| (o.bounced, o.settled()),
    },
];

/// The recent period and its baseline: `[baseline_start, recent_start)`
/// and `[recent_start, end)`, in UTC milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Periods {
    pub(crate) baseline_start: Millis,
    pub(crate) recent_start: Millis,
    pub(crate) end: Millis,
    /// Today, practice-local: the day the grade is of.
    pub(crate) today: chrono::NaiveDate,
    /// The recent period's first day.
    pub(crate) recent_first: chrono::NaiveDate,
    /// The baseline's first day.
    pub(crate) baseline_first: chrono::NaiveDate,
}

impl Periods {
    /// The periods as of `now`: the recent one ends at today's local
    /// midnight.
    pub(crate) fn as_of(now: Millis, tz: chrono_tz::Tz) -> Periods {
        let today = local_date(now, tz);
        let back = |d: chrono::NaiveDate, n: u64| d.checked_sub_days(Days::new(n)).unwrap_or(d);
        let recent = back(today, RECENT_DAYS);
        let baseline = back(recent, BASELINE_DAYS);
        Periods {
            baseline_start: local_to_utc_ms(baseline, 0, tz),
            recent_start: local_to_utc_ms(recent, 0, tz),
            end: local_to_utc_ms(today, 0, tz),
            today,
            recent_first: recent,
            baseline_first: baseline,
        }
    }
}

/// The engagement grade and what it was computed from.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct EngagementGrade {
    /// "A+", "A", "A−", "B+", "B", "B−", "C+", "C", "C−", "D+", "D", "D−"
    /// or "F"; null when there is too little to compare.
    pub grade: Option<String>,
    /// The score behind it: 0 is as usual, each step one unit (−8 to 8,
    /// one decimal).
    pub score: Option<f64>,
    /// The grade's display ("A−", or "—").
    pub display: String,
    /// Practice-local date the grade is of (`YYYY-MM-DD`).
    pub as_of: String,
    /// The recent period ("Oct 27 – Nov 25").
    pub recent_period: String,
    /// The baseline period ("Jul 29 – Oct 26").
    pub baseline_period: String,
    /// The five rates, recent against baseline.
    pub components: Vec<GradeComponent>,
    /// Why there is no grade, when there is none.
    pub note: Option<String>,
    /// How it is computed.
    pub definition: String,
}

/// One rate of the grade.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct GradeComponent {
    /// `delivery_rate`, `open_rate`, `click_rate`, `opt_out_rate` or
    /// `bounce_rate`.
    pub rate: Label,
    /// The rate over the recent period, × 100.
    pub recent: Option<f64>,
    /// Formatted.
    pub recent_display: String,
    /// The rate over the baseline period, × 100.
    pub baseline: Option<f64>,
    /// Formatted.
    pub baseline_display: String,
    /// Steps better (+) or worse (−) than the baseline, capped at ±8; null
    /// when the rate does not take part.
    pub steps: Option<f64>,
    /// Share of the score when it takes part.
    pub weight: f64,
    /// Whether both periods had enough sends for it to count.
    pub counted: bool,
}

/// The letter of a score: 0 is B, every half step a letter step.
pub(crate) fn letter(score: f64) -> &'static str {
    const UP: [(f64, &str); 4] = [(2.0, "A+"), (1.5, "A"), (1.0, "A−"), (0.5, "B+")];
    const DOWN: [(f64, &str); 8] = [
        (-0.5, "B"),
        (-1.0, "B−"),
        (-1.5, "C+"),
        (-2.0, "C"),
        (-2.5, "C−"),
        (-3.0, "D+"),
        (-3.5, "D"),
        (-4.0, "D−"),
    ];
    if let Some((_, l)) = UP.iter().find(|(at, _)| score >= *at) {
        return l;
    }
    DOWN.iter()
        .find(|(above, _)| score > *above)
        .map_or("F", |(_, l)| l)
}

/// Rounds to one decimal, without a −0.
fn tenth(v: f64) -> f64 {
    // −0 + 0 is +0 in IEEE 754; any other value is unchanged.
    round1(v) + 0.0
}

/// Grades `recent` against `baseline`.
pub(crate) fn grade(recent: &Outcomes, baseline: &Outcomes, periods: &Periods) -> EngagementGrade {
    let mut weighted = 0.0;
    let mut weights = 0.0;
    let components: Vec<GradeComponent> = COMPONENTS
        .iter()
        .map(|c| {
            // A period's opens and clicks may be of messages delivered in
            // the period before, and a take-back is counted when it came:
            // a part is capped at its whole, so a share stays a share.
            let capped = |(part, whole): (u64, u64)| (part.min(whole), whole);
            let (rp, rw) = capped((c.ratio)(recent));
            let (bp, bw) = capped((c.ratio)(baseline));
            let counted = rw >= MIN_DENOMINATOR && bw >= MIN_DENOMINATOR;
            let steps = counted.then(|| {
                let (rp, rw, bp, bw) = (rp as f64, rw as f64, bp as f64, bw as f64);
                // Exact rates, not the displayed ones truncated to a tenth.
                let diff = 100.0 * (rp / rw - bp / bw);
                // One standard error of the difference, from the pooled share.
                let pooled = (rp + bp) / (rw + bw);
                let noise = 100.0 * (pooled * (1.0 - pooled) * (1.0 / rw + 1.0 / bw)).sqrt();
                let beyond = diff.signum() * (diff.abs() - noise).max(0.0);
                let signed = if c.higher_is_better { beyond } else { -beyond };
                (signed / c.step).clamp(-CAP, CAP)
            });
            if let Some(s) = steps {
                weighted += c.weight * s;
                weights += c.weight;
            }
            let (recent_rate, baseline_rate) = (rate(rp, rw), rate(bp, bw));
            GradeComponent {
                rate: Label::new(c.id, c.label),
                recent: recent_rate,
                recent_display: fmt_rate(recent_rate),
                baseline: baseline_rate,
                baseline_display: fmt_rate(baseline_rate),
                steps: steps.map(tenth),
                weight: c.weight,
                counted,
            }
        })
        .collect();
    let delivery_counted = components[0].counted;
    // The letter is the shown score's: 0.46 shows as 0.5, a B+.
    let score = (delivery_counted && weights > 0.0).then(|| tenth(weighted / weights));
    let day = |d: chrono::NaiveDate| d.format("%b %-d").to_string();
    let last = |d: chrono::NaiveDate| d.pred_opt().unwrap_or(d);
    let (recent_first, baseline_first) = (periods.recent_first, periods.baseline_first);
    let grade = score.map(|s| letter(s).to_string());
    EngagementGrade {
        display: grade.clone().unwrap_or_else(|| DASH.to_string()),
        grade,
        score,
        as_of: periods.today.format("%Y-%m-%d").to_string(),
        recent_period: format!("{} – {}", day(recent_first), day(last(periods.today))),
        baseline_period: format!("{} – {}", day(baseline_first), day(last(recent_first))),
        components,
        note: (!delivery_counted).then(|| {
            format!(
                "Not enough sends to grade yet: it needs {MIN_DENOMINATOR} messages with a recorded outcome in the last {RECENT_DAYS} days and in the {BASELINE_DAYS} days before."
            )
        }),
        definition: DEFINITION.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcomes(
        attempts: u64,
        delivered: u64,
        bounced: u64,
        clicked: u64,
        opt_outs: u64,
        email: (u64, u64),
    ) -> Outcomes {
        Outcomes {
            attempts,
            delivered,
            bounced,
            failed: 0,
            clicked,
            opt_outs,
            email_opened: email.0,
            email_delivered: email.1,
        }
    }

    fn periods() -> Periods {
        Periods::as_of(
            super::super::test_support::NOW,
            chrono_tz::America::New_York,
        )
    }

    #[test]
    fn letters_step_by_half_a_step_around_b() {
        let cases = [
            (0.0, "B"),
            (0.49, "B"),
            (0.5, "B+"),
            (1.0, "A−"),
            (1.5, "A"),
            (1.99, "A"),
            (2.0, "A+"),
            (8.0, "A+"),
            (-0.49, "B"),
            (-0.5, "B−"),
            (-1.2, "C+"),
            (-1.9, "C"),
            (-2.4, "C−"),
            (-2.9, "D+"),
            (-3.4, "D"),
            (-3.99, "D−"),
            (-4.0, "F"),
            (-8.0, "F"),
        ];
        for (score, want) in cases {
            assert_eq!(letter(score), want, "{score}");
        }
    }

    #[test]
    fn no_minus_zero() {
        assert!(tenth(-0.04).is_sign_positive());
        assert_eq!(tenth(-0.06), -0.1);
    }

    #[test]
    fn as_usual_is_b() {
        let o = outcomes(200, 190, 10, 19, 1, (57, 190));
        let g = grade(&o, &o, &periods());
        assert_eq!(g.grade.as_deref(), Some("B"));
        assert_eq!(g.score, Some(0.0));
        assert!(
            g.components
                .iter()
                .all(|c| c.counted && c.steps == Some(0.0))
        );
        assert_eq!(g.note, None);
    }

    #[test]
    fn better_on_every_rate_is_an_a_plus() {
        let baseline = outcomes(200, 190, 10, 19, 1, (57, 190));
        let recent = outcomes(200, 198, 2, 40, 0, (99, 198));
        let g = grade(&recent, &baseline, &periods());
        // Delivery 99 % against 95 % of 200 each: +4 points, less the
        // noise (pooled 97 %: 1.71 points), +2.3 steps; open 50 % against
        // 30 % (noise 4.85): +5.0; click 20.2 % against 10 % (noise 3.47):
        // +6.6; opt-out 0 against 0.53 %: within the noise (0.52), 0;
        // bounce 1 % against 5 % (noise 1.71): +4.6. Weighted: 0.57 + 1.0
        // + 1.66 + 0 + 0.69 = 3.91.
        let steps: Vec<Option<f64>> = g.components.iter().map(|c| c.steps).collect();
        assert_eq!(
            steps,
            [Some(2.3), Some(5.0), Some(6.6), Some(0.0), Some(4.6)]
        );
        assert_eq!(g.score, Some(3.9));
        assert_eq!(g.display, "A+");
        assert_eq!(g.components[0].recent_display, "99%");
        assert_eq!(g.components[0].baseline_display, "95%");
    }

    #[test]
    fn rates_without_enough_sends_are_left_out_and_the_rest_reweighted() {
        // No email: the open rate does not count. Delivery 90 % against
        // 95 % of 100 each (noise 3.65 points): −1.3 steps; click and
        // opt-out as usual; bounce 10 % against 5 %: −2.6. (−0.34 − 0.4) ÷
        // 0.8 = −0.88.
        let baseline = outcomes(100, 95, 5, 0, 0, (0, 0));
        let recent = outcomes(100, 90, 10, 0, 0, (0, 0));
        let g = grade(&recent, &baseline, &periods());
        let counted: Vec<bool> = g.components.iter().map(|c| c.counted).collect();
        assert_eq!(counted, [true, false, true, true, true]);
        assert_eq!(g.components[1].steps, None);
        assert_eq!(g.components[1].recent_display, "—");
        assert_eq!(g.score, Some(-0.9));
        assert_eq!(g.display, "B−");
    }

    #[test]
    fn a_part_larger_than_its_whole_reads_as_all_of_it() {
        // 60 opens in the period of emails mostly delivered before it.
        let baseline = outcomes(100, 100, 0, 0, 0, (30, 100));
        let recent = outcomes(20, 20, 0, 0, 0, (60, 20));
        let g = grade(&recent, &baseline, &periods());
        let open = &g.components[1];
        assert_eq!(open.recent, Some(100.0));
        assert_eq!(open.recent_display, "100%");
        // 100 % against 30 % of 20 and 100 (noise 12.1 points): capped.
        assert_eq!(open.steps, Some(8.0));
    }

    #[test]
    fn too_few_sends_give_no_grade() {
        // 19 outcomes in the baseline (of 30 sends).
        let baseline = outcomes(30, 19, 0, 5, 0, (10, 19));
        let recent = outcomes(500, 400, 100, 0, 50, (0, 400));
        let g = grade(&recent, &baseline, &periods());
        assert_eq!(g.grade, None);
        assert_eq!(g.score, None);
        assert_eq!(g.display, "—");
        assert!(g.note.as_deref().unwrap().contains("needs 20 messages"));
    }

    #[test]
    fn periods_end_at_local_midnights() {
        // 2026-03-08 08:00 in New York, the day clocks went forward.
        let p = periods();
        assert_eq!(p.today.to_string(), "2026-03-08");
        assert_eq!(p.end, 1_772_946_000_000, "Mar 8 00:00 EST");
        assert_eq!(p.recent_first.to_string(), "2026-02-06");
        assert_eq!(p.baseline_first.to_string(), "2025-11-08");
        assert_eq!(p.recent_start, 1_770_354_000_000, "Feb 6 00:00 EST");
        let g = grade(&Outcomes::default(), &Outcomes::default(), &p);
        assert_eq!(g.recent_period, "Feb 6 – Mar 7");
        assert_eq!(g.baseline_period, "Nov 8 – Feb 5");
        assert_eq!(g.as_of, "2026-03-08");
    }
}
