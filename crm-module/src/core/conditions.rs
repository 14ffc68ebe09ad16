//! If/then conditions (SPEC §2.3): contact properties, list membership,
//! engagement with an earlier step of this enrollment, goal reached.

use rusqlite::params;
use serde_json::Value;

use super::Ctx;
use super::contacts::Contact;
use super::enrollment::Enrollment;
use crate::error::Result;
use crate::model::automation::{CompareOp, Condition, StepEngagement};
use crate::model::contact::{comparable, value_matches};

/// Did the contact open, click or reply to the message of a step of this
/// enrollment. The last term repeats the WHERE of the partial index
/// `events_step_engagement`, which holds only those rows, so that SQLite
/// uses it.
pub(crate) const STEP_ENGAGEMENT_SQL: &str = "SELECT EXISTS(SELECT 1 FROM events
    WHERE enrollment_id = ?1 AND step_id = ?2 AND kind = ?3
      AND (kind = 'message_opened' OR kind = 'message_clicked' OR kind = 'message_replied'))";

/// Evaluates a condition for one enrollment.
pub fn evaluate(
    ctx: &Ctx<'_>,
    e: &Enrollment,
    contact: &Contact,
    cond: &Condition,
) -> Result<bool> {
    Ok(match cond {
        Condition::Property {
            property,
            op,
            value,
        } => {
            let actual = contact.property(property, ctx.now, ctx.settings.tz);
            let actual = actual.as_ref().map(|a| comparable(property, a));
            let value = value.as_ref().map(|v| comparable(property, v));
            compare(actual.as_deref(), *op, value.as_deref())
        }
        Condition::ListMembership { list_id, member } => {
            let is: bool = ctx
                .conn
                .prepare_cached("SELECT EXISTS(SELECT 1 FROM list_members WHERE list_id = ?1 AND contact_id = ?2)")?
                .query_row(params![list_id, contact.id], |r| r.get(0))?;
            is == *member
        }
        Condition::StepEngagement {
            step_id,
            engagement,
        } => {
            // A click or a reply is proof of an open the pixel missed
            // (images blocked, a privacy proxy's open set aside).
            let kinds: &[&str] = match engagement {
                StepEngagement::Opened => &["message_opened", "message_clicked", "message_replied"],
                StepEngagement::Clicked => &["message_clicked"],
                StepEngagement::Replied => &["message_replied"],
            };
            let mut stmt = ctx.conn.prepare_cached(STEP_ENGAGEMENT_SQL)?;
            let mut engaged = false;
            for kind in kinds {
                if stmt.query_row(params![e.id, step_id, kind], |r| r.get(0))? {
                    engaged = true;
                    break;
                }
            }
            engaged
        }
        Condition::GoalReached {} => e.goal_reached_at.is_some(),
        Condition::All { conditions } => {
            for c in conditions {
                if !evaluate(ctx, e, contact, c)? {
                    return Ok(false);
                }
            }
            true
        }
        Condition::Any { conditions } => {
            for c in conditions {
                if evaluate(ctx, e, contact, c)? {
                    return Ok(true);
                }
            }
            false
        }
    })
}

/// Compares a property value; missing values only satisfy `is_not_set` and `not_equals`.
pub fn compare(actual: Option<&Value>, op: CompareOp, expected: Option<&Value>) -> bool {
    // Blank text is no value, as a blank placeholder renders nothing.
    let present = actual.is_some_and(|v| match v {
        Value::Null => false,
        Value::String(s) => !s.trim().is_empty(),
        Value::Array(items) => !items.is_empty(),
        _ => true,
    });
    match op {
        CompareOp::IsSet => present,
        CompareOp::IsNotSet => !present,
        CompareOp::Equals => match (actual, expected) {
            (Some(a), Some(e)) => value_matches(a, e),
            _ => false,
        },
        CompareOp::NotEquals => match (actual, expected) {
            (Some(a), Some(e)) => !value_matches(a, e),
            _ => true,
        },
        CompareOp::Contains => match (actual, expected) {
            (Some(Value::String(a)), Some(Value::String(e))) => {
                a.to_lowercase().contains(&e.to_lowercase())
            }
            (Some(Value::Array(_)), Some(e)) => actual.is_some_and(|a| value_matches(a, e)),
            _ => false,
        },
        CompareOp::GreaterThan | CompareOp::LessThan => {
            let num = |v: Option<&Value>| v.and_then(crate::model::contact::as_number);
            // Dates (a custom property holding one) compare as dates.
            let date = |v: Option<&Value>| {
                v.and_then(Value::as_str)
                    .and_then(|s| chrono::NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d").ok())
            };
            let order = match (num(actual), num(expected)) {
                (Some(a), Some(e)) => a.partial_cmp(&e),
                _ => match (date(actual), date(expected)) {
                    (Some(a), Some(e)) => Some(a.cmp(&e)),
                    _ => None,
                },
            };
            match order {
                Some(o) if op == CompareOp::GreaterThan => o.is_gt(),
                Some(o) => o.is_lt(),
                None => false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Custom values as staff write them: a number with spaces around it,
    /// a date, blank text (no value), text that Rust would read as
    /// infinity (not a number).
    #[test]
    fn custom_values_compare_as_staff_read_them() {
        let v = |x: Value| Some(x);
        assert!(compare(
            v(json!(" 12")).as_ref(),
            CompareOp::GreaterThan,
            v(json!(5)).as_ref()
        ));
        assert!(compare(
            v(json!("2026-01-01")).as_ref(),
            CompareOp::LessThan,
            v(json!("2026-02-01")).as_ref()
        ));
        assert!(!compare(
            v(json!("2026-03-01")).as_ref(),
            CompareOp::LessThan,
            v(json!("2026-02-01")).as_ref()
        ));
        assert!(!compare(v(json!("   ")).as_ref(), CompareOp::IsSet, None));
        assert!(compare(v(json!("   ")).as_ref(), CompareOp::IsNotSet, None));
        assert!(!compare(
            v(json!("infinity")).as_ref(),
            CompareOp::GreaterThan,
            v(json!(5)).as_ref()
        ));
    }

    /// A staff member given as an object is the one with its id.
    #[test]
    fn a_staff_member_object_matches_by_id() {
        let owner = json!({"id": "s-17", "name": "Sarah"});
        assert!(compare(
            Some(&owner),
            CompareOp::Equals,
            Some(&json!({"id": "S-17"}))
        ));
        assert!(!compare(
            Some(&owner),
            CompareOp::Equals,
            Some(&json!({"id": "s-18"}))
        ));
    }

    #[test]
    fn comparisons() {
        assert!(compare(
            Some(&json!("patient")),
            CompareOp::Equals,
            Some(&json!("Patient"))
        ));
        assert!(compare(None, CompareOp::NotEquals, Some(&json!("x"))));
        assert!(!compare(None, CompareOp::Equals, Some(&json!("x"))));
        assert!(compare(
            Some(&json!(["vip"])),
            CompareOp::Contains,
            Some(&json!("vip"))
        ));
        assert!(compare(
            Some(&json!(120.5)),
            CompareOp::GreaterThan,
            Some(&json!(100))
        ));
        assert!(compare(Some(&json!("")), CompareOp::IsNotSet, None));
        assert!(!compare(
            Some(&json!(3)),
            CompareOp::LessThan,
            Some(&json!("abc"))
        ));
    }
}
