//! Matching signals against the enrollment triggers of active automations
//! (SPEC §2.2), after goals and unenrollment toggles have had their turn.

use serde_json::json;

use super::enrollment::{self, Enrollment};
use super::log::Entry as Log;
use super::{Ctx, MAX_CASCADE, Signal, goals};
use crate::error::Result;
use crate::messaging::consent::Category;
use crate::model::automation::{EmailEngagement, Trigger, Unenrollment};
use crate::model::contact::{comparable, fold_source, value_matches};

/// Whether `signal` fires `trigger`; returns the once-only mark if the trigger has one.
pub fn matches(trigger: &Trigger, signal: &Signal) -> Option<Option<&'static str>> {
    let hit = match (trigger, signal) {
        (Trigger::ContactCreated { source }, Signal::ContactCreated { source: got }) => {
            return match source {
                None => Some(Some("created")),
                Some(want) => got
                    .as_deref()
                    .is_some_and(|g| fold_source(g) == fold_source(want))
                    .then_some(Some("created")),
            };
        }
        (Trigger::StatusChangedToPatient {}, Signal::BecamePatient) => {
            return Some(Some("patient"));
        }
        (Trigger::FormSubmitted { form_id }, Signal::FormSubmitted { form_id: got }) => {
            form_id.as_ref().is_none_or(|f| f == got)
        }
        (Trigger::AddedToList { list_id }, Signal::ListJoined { list_id: got }) => list_id == got,
        (Trigger::RemovedFromList { list_id }, Signal::ListLeft { list_id: got }) => list_id == got,
        (
            Trigger::PropertyChanged {
                property,
                new_value,
            },
            Signal::PropertyChanged {
                property: p,
                old_value,
                new_value: v,
            },
        ) => {
            // A change *to* a value: it holds now and did not before (a list
            // property such as tags comes to contain it; a staff member
            // renamed is not a change to them).
            property == p
                && new_value.as_ref().is_none_or(|want| {
                    // A staff member is the one with that id (or display
                    // name, given as text): a rename is no change to them.
                    // A date as the record stores it (a trigger saved by
                    // an earlier version may hold `1985-3-7`).
                    let canonical = match want {
                        serde_json::Value::Object(o) if crate::model::contact::is_staff(p) => {
                            o.get("id").cloned()
                        }
                        serde_json::Value::String(_) if is_date(p) => {
                            crate::model::contact::normalize_property(p, want.clone()).ok()
                        }
                        _ => None,
                    };
                    let want = canonical.as_ref().unwrap_or(want);
                    let (want, v) = (comparable(p, want), comparable(p, v));
                    value_matches(&v, &want) && !value_matches(&comparable(p, old_value), &want)
                })
        }
        (
            Trigger::EmailEngagement {
                engagement,
                email_id,
            },
            Signal::EmailEngaged {
                clicked,
                opened,
                asset_id,
                email: Some(category),
                ..
            },
        ) => {
            let kind_ok = match engagement {
                EmailEngagement::Opened => *opened,
                EmailEngagement::Clicked => *clicked,
                // One email engages once: its first open (a click
                // without one is its open), not its click after that.
                EmailEngagement::Either => *opened,
            };
            // "Any marketing email", or the one email chosen.
            kind_ok
                && match email_id {
                    Some(want) => asset_id.as_deref() == Some(want.as_str()),
                    None => *category == Category::Marketing,
                }
        }
        // "Any marketing SMS", or the one SMS template chosen.
        (
            Trigger::SmsReply { sms_id },
            Signal::SmsReplied {
                asset_id,
                replied_to: Some(category),
            },
        ) => match sms_id {
            Some(want) => asset_id.as_deref() == Some(want.as_str()),
            None => *category == Category::Marketing,
        },
        _ => false,
    };
    hit.then_some(None)
}

/// Reacts to signals about one contact: goals, unenrollment toggles, then triggers.
pub fn fire(ctx: &mut Ctx<'_>, contact_id: &str, signals: &[Signal]) -> Result<()> {
    if signals.is_empty() {
        return Ok(());
    }
    goals::evaluate(ctx, contact_id, signals)?;
    unenroll(ctx, contact_id, signals)?;
    if ctx.depth >= MAX_CASCADE {
        return Log {
            detail: Some(json!({"depth": ctx.depth})),
            ..Log::new("cascade_limited", contact_id)
        }
        .write(ctx.conn, ctx.now);
    }
    // When the host's event happened (its own signals only: what a step
    // did in reaction happened now). No back-fill: an event that happened
    // before the automation was turned on does not enroll, however late it
    // is pushed.
    let happened = ctx.occurred_at.filter(|_| ctx.depth == 0);
    ctx.depth += 1;
    let catalog = ctx.catalog;
    let result = (|| {
        for entry in catalog.active() {
            for s in signals {
                if let Some(mark) = matches(&entry.current.def.trigger, s) {
                    let cause = entry.current.def.trigger.kind_id();
                    match (happened, entry.activated_at) {
                        (Some(at), Some(on)) if at < on => Log {
                            automation_id: Some(&entry.id),
                            detail: Some(json!({"reason": "before_activation", "cause": cause})),
                            ..Log::new("trigger_ignored", contact_id)
                        }
                        .write(ctx.conn, ctx.now)?,
                        _ => {
                            let at = happened.unwrap_or(ctx.now);
                            enrollment::enroll(ctx, entry, contact_id, mark, cause, at)?;
                        }
                    }
                    break;
                }
            }
        }
        Ok(())
    })();
    ctx.depth -= 1;
    result
}

/// After an edit turned *SMS opt-out* or *Email reply* on: the active
/// enrollments of `automation_id` whose contact opted out of SMS after
/// enrolling (and still is), or replied to one of the enrollment's own
/// emails, leave now, as they would have with the toggle on all along.
/// (*Goal met*: [`goals::exit_reached`].)
pub fn exit_already_left(
    ctx: &mut Ctx<'_>,
    automation_id: &str,
    old: &Unenrollment,
    new: &Unenrollment,
) -> Result<()> {
    let sms = new.sms_opt_out && !old.sms_opt_out;
    let reply = new.email_reply && !old.email_reply;
    if !sms && !reply {
        return Ok(());
    }
    let opted_out = |e: &Enrollment| -> Result<bool> {
        Ok(ctx
            .conn
            .prepare_cached(
                "SELECT EXISTS(SELECT 1 FROM contacts c JOIN subscription_audit a ON a.contact_id = c.id
                  WHERE c.id = ?1 AND c.sms_subscription = 'unsubscribed' AND a.channel = 'sms'
                    AND a.new_value = 'unsubscribed' AND a.at > ?2)",
            )?
            .query_row(rusqlite::params![e.contact_id, e.enrolled_at], |r| r.get(0))?)
    };
    let replied = |e: &Enrollment| -> Result<bool> {
        Ok(ctx
            .conn
            .prepare_cached(
                "SELECT EXISTS(SELECT 1 FROM events
                  WHERE enrollment_id = ?1 AND kind = 'message_replied' AND channel = 'email')",
            )?
            .query_row([e.id], |r| r.get(0))?)
    };
    let mut leaving = Vec::new();
    for e in enrollment::active_of_automation(ctx.conn, automation_id)? {
        if sms && opted_out(&e)? {
            leaving.push((e, "sms_opt_out"));
        } else if reply && replied(&e)? {
            leaving.push((e, "email_reply"));
        }
    }
    for (e, reason) in leaving {
        enrollment::exit(ctx, &e, reason)?;
    }
    Ok(())
}

fn unenroll(ctx: &mut Ctx<'_>, contact_id: &str, signals: &[Signal]) -> Result<()> {
    let catalog = ctx.catalog;
    // A global opt-out comes with the SMS opt-out that completed it: the
    // contacts it ends leave for it, whatever the order of the signals.
    let global = signals.iter().filter(|s| **s == Signal::GlobalOptOut);
    let others = signals.iter().filter(|s| **s != Signal::GlobalOptOut);
    for s in global.chain(others) {
        type Pick<'c> = Box<dyn Fn(&Enrollment) -> bool + 'c>;
        let (reason, pick): (&str, Pick<'_>) = match s {
            Signal::GlobalOptOut => ("global_opt_out", Box::new(|_| true)),
            Signal::SmsOptedOut => (
                "sms_opt_out",
                Box::new(|e: &Enrollment| {
                    catalog
                        .get(&e.automation_id)
                        .is_some_and(|a| a.current.def.unenrollment.sms_opt_out)
                }),
            ),
            Signal::EmailReplied { enrollment_id } => {
                let only = *enrollment_id;
                (
                    "email_reply",
                    Box::new(move |e: &Enrollment| {
                        // Its own emails only: a reply to a staff test
                        // send or any mail outside this enrollment is not
                        // a reply to the automation.
                        only == Some(e.id)
                            && catalog
                                .get(&e.automation_id)
                                .is_some_and(|a| a.current.def.unenrollment.email_reply)
                    }),
                )
            }
            _ => continue,
        };
        for e in enrollment::of_contact(ctx.conn, contact_id, "state = 'active'", i64::MIN)? {
            if pick(&e) {
                enrollment::exit(ctx, &e, reason)?;
            }
        }
    }
    Ok(())
}

/// Whether `property` holds a date (`dob`).
fn is_date(property: &str) -> bool {
    crate::model::contact::property_type(property)
        == Some(crate::model::contact::PropertyType::Date)
}
