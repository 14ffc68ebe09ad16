//! Behaviour of the core, driven by [`super::sim::Sim`]: no threads, no sleeps.

use serde_json::{Value, json};

use super::sim::Sim;
use crate::clock::{DAY, HOUR, MINUTE, parse_rfc3339};

fn five_steps(goal_met: bool) -> Value {
    json!({
        "name": "Five step nurture",
        "goal": "book_appointment",
        "run_window": {"mode": "any_time"},
        "unenrollment": {"goal_met": goal_met},
        "trigger": {"type": "contact_created"},
        "steps": [
            {"id": "s1", "type": "send_email", "subject": "Welcome", "body": "Hi {{firstname}}"},
            {"id": "s2", "type": "delay", "amount": 2, "unit": "days"},
            {"id": "s3", "type": "send_email", "subject": "How to book", "body": "Book now"},
            {"id": "s4", "type": "delay", "amount": 2, "unit": "days"},
            {"id": "s5", "type": "send_sms", "message": "Still there, {{firstname}}?"}
        ]
    })
}

#[test]
fn worked_example_1_every_message_never_books() {
    let mut s = Sim::new();
    let a = s.automation(five_steps(false));
    s.contact("c1", json!({}));
    s.advance(10 * DAY);
    assert_eq!(s.messages_to("c1").len(), 3);
    assert_eq!(s.enrollment(&a, "c1"), ("completed".into(), None, false));
    assert_eq!(s.count("completed", Some(&a)), 1);
    assert_eq!(s.count("goal_reached", Some(&a)), 0);
}

#[test]
fn worked_example_2_books_at_step_2_goal_met_off_keeps_going() {
    let mut s = Sim::new();
    let a = s.automation(five_steps(false));
    s.contact("c1", json!({}));
    s.advance(DAY); // inside the first delay (step 2)
    s.book("c1", "ap1");
    s.advance(10 * DAY);
    assert_eq!(s.messages_to("c1").len(), 3, "steps 3-5 still run");
    assert_eq!(s.enrollment(&a, "c1"), ("completed".into(), None, true));
    assert_eq!(s.count("goal_reached", Some(&a)), 1);
    assert_eq!(s.count("completed", Some(&a)), 1);
}

#[test]
fn worked_example_3_books_at_step_2_goal_met_on_exits() {
    let mut s = Sim::new();
    let a = s.automation(five_steps(true));
    s.contact("c1", json!({}));
    s.advance(DAY);
    s.book("c1", "ap1");
    s.advance(10 * DAY);
    assert_eq!(s.messages_to("c1").len(), 1, "no step after the goal");
    assert_eq!(
        s.enrollment(&a, "c1"),
        ("exited".into(), Some("goal_met".into()), true)
    );
    assert_eq!(s.count("completed", Some(&a)), 0);
    assert_eq!(s.count("goal_reached", Some(&a)), 1);
}

#[test]
fn worked_example_4_completes_first_goal_later_within_lookback() {
    let mut s = Sim::new();
    let a = s.automation(five_steps(false));
    s.contact("c1", json!({}));
    s.advance(21 * DAY);
    assert_eq!(s.enrollment(&a, "c1"), ("completed".into(), None, false));
    s.advance(7 * DAY); // day 28 after enrolling
    s.book("c1", "ap1");
    assert_eq!(s.enrollment(&a, "c1"), ("completed".into(), None, true));
    let order: Vec<String> = s
        .conn
        .prepare("SELECT kind FROM events WHERE automation_id = ?1 AND kind IN ('completed','goal_reached') ORDER BY id")
        .unwrap()
        .query_map([&a], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(order, vec!["completed", "goal_reached"]);
}

#[test]
fn goal_outside_lookback_is_not_counted() {
    let mut s = Sim::new();
    let a = s.automation(five_steps(false));
    s.contact("c1", json!({}));
    s.advance(31 * DAY);
    s.book("c1", "ap1");
    assert!(!s.enrollment(&a, "c1").2);
}

/// The lookback is calendar days in the practice's time zone (New York
/// here): enrolled 1 March 2026 at 10:00 EST, the 30 days end on 31 March
/// at 10:00 EDT, so a booking at 10:30 that morning is outside it (30 × 24
/// hours would have ended at 11:00), and one at 09:30 inside.
#[test]
fn the_goal_lookback_counts_calendar_days_across_dst() {
    let at = |s: &str| crate::clock::parse_rfc3339(s).unwrap();
    for (booked, counted) in [("09:30", true), ("10:30", false)] {
        let mut s = Sim::new();
        s.now = at("2026-03-01T10:00:00-05:00");
        let a = s.automation(five_steps(false));
        s.contact("c1", json!({}));
        let until = at(&format!("2026-03-31T{booked}:00-04:00"));
        s.advance(until - s.now);
        s.book("c1", "ap1");
        assert_eq!(s.enrollment(&a, "c1").2, counted, "booked at {booked}");
    }
}

#[test]
fn no_goal_counts_lead_to_patient_only() {
    let mut s = Sim::new();
    let mut def = five_steps(false);
    def.as_object_mut().unwrap().remove("goal");
    let a = s.automation(def);
    s.contact("c1", json!({}));
    s.contact("c2", json!({"status": "patient"}));
    s.push(json!({"type": "review.submitted", "review": {"id": "r1", "contact_id": "c1", "source": "google"}})).unwrap();
    assert_eq!(s.count("goal_reached", Some(&a)), 0);
    s.book("c2", "ap2"); // already a patient: no flip
    s.book("c1", "ap1");
    assert_eq!(s.count("goal_reached", Some(&a)), 1);
    assert!(s.enrollment(&a, "c1").2);
}

/// Why an automation's triggers were ignored, in order.
const IGNORED_REASONS: &str = "SELECT json_extract(detail, '$.reason') FROM events
                               WHERE kind = 'trigger_ignored' AND automation_id = ?1 ORDER BY id";

#[test]
fn status_flips_on_first_booking_and_fires_once_ever() {
    let mut s = Sim::new();
    let a = s.automation(json!({"name": "First visit", "run_window": {"mode": "any_time"}, "trigger": {"type": "status_changed_to_patient"},
        "steps": [{"type": "send_email", "subject": "See you", "body": "Parking info"}]}));
    s.contact("c1", json!({}));
    s.book("c1", "ap1");
    s.book("c1", "ap2");
    let status: String = s
        .conn
        .query_row("SELECT status FROM contacts WHERE id='c1'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(status, "patient");
    // The host's sync says Lead again (its record predates the booking),
    // then a full replace without a status: a patient stays a patient.
    s.push(json!({"type": "contact.upserted", "contact": {"id": "c1", "status": "lead"}}))
        .unwrap();
    s.push(json!({"type": "contact.upserted", "mode": "full", "contact": {"id": "c1", "first_name": "Pat"}}))
        .unwrap();
    let status: String = s
        .conn
        .query_row("SELECT status FROM contacts WHERE id='c1'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(status, "patient");
    assert_eq!(s.texts("SELECT json_extract(detail, '$.requested') FROM events WHERE kind = 'status_kept' AND contact_id = ?1", "c1"), ["lead"]);
    s.book("c1", "ap3");
    assert_eq!(s.count("enrolled", Some(&a)), 1, "once ever");
    assert_eq!(s.count("status_changed", None), 1);
    // Were the flip to come again, the once-only mark refuses it and leaves
    // no row.
    s.conn
        .execute("UPDATE contacts SET status = 'lead', props = json_set(props, '$.status', 'lead') WHERE id = 'c1'", [])
        .unwrap();
    s.book("c1", "ap4");
    assert_eq!(s.count("enrolled", Some(&a)), 1);
    assert_eq!(s.texts(IGNORED_REASONS, &a), ["already_fired"]);
    let states = s.texts("SELECT state FROM enrollments WHERE automation_id = ?1", &a);
    assert_eq!(states.len(), 1);
}

#[test]
fn a_trigger_firing_for_an_active_contact_is_ignored_and_enrolls_again_once_ended() {
    let mut s = Sim::new();
    let a = s.automation(json!({"name": "Forms", "run_window": {"mode": "any_time"},
        "trigger": {"type": "form_submitted"}, "steps": [{"type": "delay", "amount": 1, "unit": "days"}]}));
    s.contact("c1", json!({}));
    let submit = |s: &mut Sim, id: &str| {
        s.push(json!({"type": "form.submitted", "submission": {"id": id, "form_id": "f1", "form_name": "Intake", "contact_id": "c1", "answers": {}}}))
            .unwrap();
    };
    submit(&mut s, "sub1");
    submit(&mut s, "sub2"); // still waiting in the delay
    assert_eq!(s.count("enrolled", Some(&a)), 1);
    assert_eq!(s.texts(IGNORED_REASONS, &a), ["already_enrolled"]);
    s.advance(2 * DAY); // the delay ends, the enrollment completes
    submit(&mut s, "sub3");
    assert_eq!(s.count("enrolled", Some(&a)), 2);
    let states = s.texts(
        "SELECT state FROM enrollments WHERE automation_id = ?1 ORDER BY id",
        &a,
    );
    assert_eq!(states, ["completed", "active"]);
}

#[test]
fn contact_created_respects_source_and_fires_once() {
    let mut s = Sim::new();
    let web = s.automation(
        json!({"name": "Web leads", "run_window": {"mode": "any_time"},
        "trigger": {"type": "contact_created", "source": "website_form"}, "steps": []}),
    );
    let any = s.automation(json!({"name": "All leads", "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"}, "steps": []}));
    s.contact("c1", json!({"lead_source": "Website form"}));
    s.contact("c2", json!({"lead_source": "walk_in"}));
    s.contact("c1", json!({"first_name": "Again"})); // an update is not a creation
    assert_eq!(s.count("enrolled", Some(&web)), 1);
    assert_eq!(s.count("enrolled", Some(&any)), 2);
    // Empty canvas: completes at once.
    assert_eq!(s.count("completed", Some(&any)), 2);
}

/// A lead source compares folded wherever it is filtered on: a host
/// writing "Walk-in" means the builder's `walk_in` for Property changed and
/// If/then as for Contact created.
#[test]
fn lead_sources_compare_folded_in_property_triggers_and_branches() {
    let mut s = Sim::new();
    let changed = s.automation(json!({"name": "Now walk-in", "run_window": {"mode": "any_time"},
        "trigger": {"type": "property_changed", "property": "lead_source", "new_value": "walk_in"}, "steps": []}));
    let branch = s.automation(json!({"name": "Branch", "run_window": {"mode": "any_time"},
        "trigger": {"type": "contact_created"},
        "steps": [{"id": "b", "type": "branch", "condition": {"type": "property", "property": "lead_source", "op": "equals", "value": "walk_in"},
                   "yes": [], "no": []}]}));
    s.contact("c0", json!({"lead_source": "Walk-in"}));
    s.contact("c1", json!({"lead_source": "Website form"}));
    s.push(json!({"type": "contact.upserted", "contact": {"id": "c1", "lead_source": "Walk-in"}}))
        .unwrap();
    // The same source written another way is no change to it.
    s.push(json!({"type": "contact.upserted", "contact": {"id": "c1", "lead_source": "walk in"}}))
        .unwrap();
    assert_eq!(s.count("enrolled", Some(&changed)), 1);
    let paths = s.texts(
        "SELECT json_extract(detail, '$.path') FROM events WHERE kind = 'step_completed' AND automation_id = ?1 ORDER BY contact_id",
        &branch,
    );
    assert_eq!(paths, ["yes", "no"], "c0 is a walk-in, c1 was not then");
}

#[test]
fn dedup_while_active_and_reenroll_after_end() {
    let mut s = Sim::new();
    let a = s.automation(json!({"name": "Form follow-up", "run_window": {"mode": "any_time"},
        "trigger": {"type": "form_submitted", "form_id": "intake"},
        "steps": [{"type": "delay", "amount": 1, "unit": "days"}, {"type": "create_task", "title": "Call back", "assignee": {"kind": "contact_owner"}, "due_in_minutes": 5}]}));
    s.contact("c1", json!({"owner": {"id": "u7", "name": "Sarah"}}));
    let form = |id: &str, form: &str| json!({"type": "form.submitted", "submission": {"id": id, "form_id": form, "form_name": "Intake", "contact_id": "c1", "answers": {"q1": "yes"}}});
    s.push(form("f1", "intake")).unwrap();
    s.push(form("f2", "intake")).unwrap(); // active: recorded and ignored
    s.push(form("f3", "allergy")).unwrap(); // other form
    assert_eq!(s.count("enrolled", Some(&a)), 1);
    assert_eq!(s.count("trigger_ignored", Some(&a)), 1);
    s.advance(2 * DAY);
    let task = s
        .effects
        .iter()
        .find(|e| e.kind == crate::outbox::EffectKind::Task)
        .unwrap();
    assert_eq!(task.payload["assignee"]["id"], "u7");
    s.push(form("f4", "intake")).unwrap();
    assert_eq!(
        s.count("enrolled", Some(&a)),
        2,
        "re-enrolls after the previous enrollment ended"
    );
}

#[test]
fn list_triggers_fire_on_join_and_leave() {
    let mut s = Sim::new();
    s.cmd(json!({"command": "list.create", "list_id": "allergy", "name": "Allergy season"}))
        .unwrap();
    let join = s.automation(json!({"name": "Join", "run_window": {"mode": "any_time"}, "trigger": {"type": "added_to_list", "list_id": "allergy"}, "steps": []}));
    let leave = s.automation(json!({"name": "Leave", "run_window": {"mode": "any_time"}, "trigger": {"type": "removed_from_list", "list_id": "allergy"}, "steps": []}));
    s.contact("c1", json!({}));
    s.cmd(json!({"command": "list.add_contacts", "list_id": "allergy", "contact_ids": ["c1"]}))
        .unwrap();
    s.cmd(json!({"command": "list.add_contacts", "list_id": "allergy", "contact_ids": ["c1"]}))
        .unwrap();
    s.cmd(json!({"command": "list.remove_contacts", "list_id": "allergy", "contact_ids": ["c1"]}))
        .unwrap();
    assert_eq!(
        (
            s.count("enrolled", Some(&join)),
            s.count("enrolled", Some(&leave))
        ),
        (1, 1)
    );
    let e = s
        .cmd(json!({"command": "list.add_contacts", "list_id": "nope", "contact_ids": ["c1"]}))
        .unwrap_err();
    assert_eq!(e.code(), crate::ErrorCode::NotFound);
}

#[test]
fn property_changed_with_and_without_value_and_set_property_cascades() {
    let mut s = Sim::new();
    let any = s.automation(json!({"name": "Owner changed", "run_window": {"mode": "any_time"}, "trigger": {"type": "property_changed", "property": "owner"}, "steps": []}));
    let vip = s.automation(json!({"name": "Tagged VIP", "run_window": {"mode": "any_time"},
        "trigger": {"type": "property_changed", "property": "tags", "new_value": "vip"}, "steps": []}));
    let setter = s.automation(json!({"name": "Tagger", "run_window": {"mode": "any_time"}, "trigger": {"type": "form_submitted"},
        "steps": [{"type": "set_property", "property": "tags", "value": {"add": ["vip"]}},
                  {"type": "set_property", "property": "email_subscription", "value": "unsubscribed"}]}));
    s.contact("c1", json!({}));
    s.push(json!({"type": "contact.upserted", "contact": {"id": "c1", "owner": {"id": "u1", "name": "Sarah"}}})).unwrap();
    s.push(json!({"type": "contact.upserted", "contact": {"id": "c1", "owner": {"id": "u1", "name": "Sarah"}}})).unwrap(); // no change
    assert_eq!(s.count("enrolled", Some(&any)), 1);
    s.push(json!({"type": "form.submitted", "submission": {"id": "f1", "form_id": "x", "form_name": "X", "contact_id": "c1"}})).unwrap();
    assert_eq!(s.count("enrolled", Some(&setter)), 1);
    assert_eq!(
        s.count("enrolled", Some(&vip)),
        1,
        "a write-back fires Property changed"
    );
    let writes: Vec<_> = s
        .effects
        .iter()
        .filter(|e| e.kind == crate::outbox::EffectKind::Property)
        .collect();
    assert_eq!(writes.len(), 2);
    assert_eq!(writes[0].payload["value"], json!(["vip"]));
    let audit: (String, String) = s.conn.query_row("SELECT actor, new_value FROM subscription_audit WHERE channel='email' ORDER BY id DESC LIMIT 1", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
    assert_eq!(
        audit,
        (format!("automation:{setter}"), "unsubscribed".into())
    );
}

/// Automations chained inside one event (each tags the contact with what
/// the next one waits for) all run, up to the cascade limit; the link past
/// it is cut and logged. The limit was 8: a chain of ten stopped at its
/// ninth automation.
#[test]
fn a_chain_of_automations_in_one_event_runs_to_the_cascade_limit() {
    let mut s = Sim::new();
    // A chain of twelve in one event runs whole (the limit was 8).
    const { assert!(super::MAX_CASCADE >= 12) };
    let links = super::MAX_CASCADE as usize + 3;
    let ids: Vec<String> = (1..=links)
        .map(|k| {
            let trigger = if k == 1 {
                json!({"type": "form_submitted"})
            } else {
                json!({"type": "property_changed", "property": "tags", "new_value": format!("t{}", k - 1)})
            };
            s.automation(json!({"name": format!("Link {k}"), "run_window": {"mode": "any_time"},
                "trigger": trigger,
                "steps": [{"type": "set_property", "property": "tags", "value": {"add": [format!("t{k}")]}}]}))
        })
        .collect();
    s.contact("c1", json!({}));
    s.submit_form("c1", "f1");
    let enrolled: Vec<i64> = ids.iter().map(|a| s.count("enrolled", Some(a))).collect();
    let ran = super::MAX_CASCADE as usize;
    assert!(enrolled[..ran].iter().all(|n| *n == 1), "{enrolled:?}");
    assert!(enrolled[ran..].iter().all(|n| *n == 0), "{enrolled:?}");
    assert_eq!(s.count("cascade_limited", None), 1);
}

/// The module's own writes are newer than what the host knew before
/// them: an update that happened before a Set property (or a late echo of
/// an earlier write-back) does not overwrite what it wrote, partial or
/// full (SPEC §1: an update older than the stored one is ignored for
/// properties); its other properties apply, and the host's later updates
/// win.
#[test]
fn a_host_update_from_before_the_modules_write_does_not_overwrite_it() {
    let mut s = Sim::new();
    let walk_in = s.automation(json!({"name": "Walk-ins", "run_window": {"mode": "any_time"},
        "trigger": {"type": "property_changed", "property": "lead_source", "new_value": "walk_in"}, "steps": []}));
    s.automation(json!({"name": "Source", "run_window": {"mode": "any_time"}, "trigger": {"type": "form_submitted"},
        "steps": [{"type": "set_property", "property": "lead_source", "value": "website_form"},
                  {"type": "set_property", "property": "tags", "value": {"add": ["welcomed"], "remove": ["new"]}}]}));
    let start = s.now;
    s.contact(
        "c1",
        json!({"lead_source": "import", "tags": ["new", "vip"]}),
    );
    s.advance(HOUR);
    s.submit_form("c1", "f1");
    let prop = |s: &Sim, name: &str| -> Option<String> {
        s.value(&format!(
            "SELECT json_extract(props, '$.{name}') FROM contacts WHERE id = 'c1'"
        ))
    };
    assert_eq!(prop(&s, "lead_source").as_deref(), Some("website_form"));
    let at = |ms: i64| crate::clock::to_rfc3339(start + ms);
    let tags = |s: &Sim| -> Vec<String> {
        let mut tags: Vec<String> = serde_json::from_str(&prop(s, "tags").unwrap()).unwrap();
        tags.sort();
        tags
    };
    // Staff tagged the contact in the EHR before the automation ran: that
    // tag stays, and so do the module's own tag changes.
    s.push(
        json!({"type": "contact.upserted", "occurred_at": at(30 * MINUTE),
        "contact": {"id": "c1", "lead_source": "walk_in", "first_name": "Ann",
                    "tags": ["new", "vip", "payment-plan"]}}),
    )
    .unwrap();
    assert_eq!(prop(&s, "lead_source").as_deref(), Some("website_form"));
    assert_eq!(prop(&s, "first_name").as_deref(), Some("Ann"));
    assert_eq!(tags(&s), ["payment-plan", "vip", "welcomed"]);
    s.push(
        json!({"type": "contact.upserted", "occurred_at": at(45 * MINUTE), "mode": "full",
        "contact": {"id": "c1", "first_name": "Ann", "email": "c1@example.com"}}),
    )
    .unwrap();
    assert_eq!(prop(&s, "lead_source").as_deref(), Some("website_form"));
    assert_eq!(s.count("enrolled", Some(&walk_in)), 0);
    let kept: i64 = s.value(
        "SELECT COUNT(*) FROM events WHERE kind = 'contact_update_stale'
          AND json_extract(detail, '$.kept[0]') = 'lead_source'",
    );
    assert_eq!(kept, 2);
    assert_eq!(tags(&s), ["welcomed"], "the full record had no tags");
    // After the write, the host sending the value it had before (it does
    // not have the write-back yet) is no change of its own: the module's
    // value and tags stay.
    s.advance(MINUTE);
    s.push(
        json!({"type": "contact.upserted", "contact": {"id": "c1", "lead_source": "import",
        "tags": ["vip"]}}),
    )
    .unwrap();
    assert_eq!(prop(&s, "lead_source").as_deref(), Some("website_form"));
    assert_eq!(tags(&s), ["vip", "welcomed"]);
    // Its echo of the write-back, then a change of its own, are the host's.
    s.push(
        json!({"type": "contact.upserted", "contact": {"id": "c1", "lead_source": "website_form",
        "tags": ["vip", "welcomed"]}}),
    )
    .unwrap();
    let writes: Option<String> = s.value("SELECT module_writes FROM contacts WHERE id = 'c1'");
    assert_eq!(
        writes, None,
        "forgotten once the host gave the module's value"
    );
    s.push(
        json!({"type": "contact.upserted", "contact": {"id": "c1", "lead_source": "walk_in",
        "tags": ["vip"]}}),
    )
    .unwrap();
    assert_eq!(prop(&s, "lead_source").as_deref(), Some("walk_in"));
    assert_eq!(tags(&s), ["vip"]);
    assert_eq!(s.count("enrolled", Some(&walk_in)), 1);
}

/// A host update after the module's write that gives neither the module's
/// value nor the one it replaced is the host's own change (staff set
/// another): it applies, and the write-back still waiting is dropped at
/// hand-over. Echoes of two write-backs in a row, the earlier one last,
/// do not undo the later.
#[test]
fn the_host_s_own_change_after_a_write_applies_and_a_late_echo_does_not() {
    let mut s = Sim::new();
    let tom = s.automation(json!({"name": "Tom's", "run_window": {"mode": "any_time"},
        "trigger": {"type": "property_changed", "property": "owner", "new_value": "s2"}, "steps": []}));
    for (form, owner) in [("a", "s1"), ("b", "s2")] {
        s.automation(
            json!({"name": format!("Assign {owner}"), "run_window": {"mode": "any_time"},
            "trigger": {"type": "form_submitted", "form_id": form},
            "steps": [{"type": "set_property", "property": "owner", "value": {"id": owner}}]}),
        );
    }
    s.contact("c1", json!({"owner": {"id": "s0", "name": "Olga"}}));
    let form = |s: &mut Sim, id: &str, form: &str| {
        s.push(
            json!({"type": "form.submitted", "submission": {"id": id, "form_id": form,
            "form_name": form, "contact_id": "c1", "answers": {}}}),
        )
        .unwrap();
    };
    let owner = |s: &Sim| -> String {
        s.value("SELECT json_extract(props, '$.owner.id') FROM contacts WHERE id = 'c1'")
    };
    form(&mut s, "f1", "a");
    form(&mut s, "f2", "b");
    assert_eq!(owner(&s), "s2");
    assert_eq!(s.count("enrolled", Some(&tom)), 1);
    for key in s.texts(
        "SELECT idempotency_key FROM outbox WHERE kind = 'property' AND contact_id = ?1",
        "c1",
    ) {
        s.accept(&key);
    }
    // The host echoes the first write-back after the second: no change.
    s.advance(MINUTE);
    let echo = |s: &mut Sim, id: &str| {
        s.push(json!({"type": "contact.upserted", "contact": {"id": "c1", "owner": {"id": id}}}))
            .unwrap();
    };
    echo(&mut s, "s1");
    assert_eq!(owner(&s), "s2");
    echo(&mut s, "s2");
    assert_eq!(s.count("enrolled", Some(&tom)), 1, "no second enrollment");
    // Staff assign someone else: theirs.
    echo(&mut s, "s7");
    assert_eq!(owner(&s), "s7");
}

/// The module's write is as old as the host's event that set it off: a
/// staff edit made after that event, though pushed after the automation
/// ran (the form came an hour late), is the newer and applies.
#[test]
fn a_host_edit_after_the_event_that_set_a_write_off_applies() {
    let mut s = Sim::new();
    s.automation(json!({"name": "Source", "run_window": {"mode": "any_time"}, "trigger": {"type": "form_submitted"},
        "steps": [{"type": "set_property", "property": "lead_source", "value": "website_form"}]}));
    let start = s.now;
    s.contact("c1", json!({"lead_source": "import"}));
    s.advance(HOUR);
    let at = |ms: i64| crate::clock::to_rfc3339(start + ms);
    s.push(
        json!({"type": "form.submitted", "occurred_at": at(10 * MINUTE), "submission": {"id": "f1",
        "form_id": "intake", "form_name": "Intake", "contact_id": "c1", "answers": {}}}),
    )
    .unwrap();
    s.push(
        json!({"type": "contact.upserted", "occurred_at": at(20 * MINUTE),
        "contact": {"id": "c1", "lead_source": "walk_in"}}),
    )
    .unwrap();
    let source: String =
        s.value("SELECT json_extract(props, '$.lead_source') FROM contacts WHERE id = 'c1'");
    assert_eq!(source, "walk_in");
}

/// A Set property step whose value may not be set on the contact (a
/// 101st tag) fails the step, and the flow goes on; the host's event that
/// set the automation off is applied, alone or in a batch.
#[test]
fn a_set_property_the_contact_cannot_take_fails_the_step_not_the_push() {
    let mut s = Sim::new();
    let tagger = s.automation(json!({"name": "Tagger", "run_window": {"mode": "any_time"},
        "trigger": {"type": "property_changed", "property": "probe"},
        "steps": [{"id": "tag", "type": "set_property", "property": "tags", "value": {"add": ["one-more"]}},
                  {"id": "call", "type": "create_task", "title": "Call", "assignee": {"kind": "queue", "name": "desk"}}]}));
    let tags: Vec<String> = (0..100).map(|i| format!("t{i}")).collect();
    s.contact("c1", json!({"tags": tags}));
    s.push(json!({"type": "contact.upserted", "contact": {"id": "c1", "probe": 1}}))
        .expect("the host's event is applied");
    let failed: String =
        s.value("SELECT detail FROM events WHERE kind = 'step_failed' AND step_id = 'tag'");
    assert!(failed.contains("value_refused"), "{failed}");
    assert_eq!(
        s.count("step_executed", Some(&tagger)),
        2,
        "the flow went on"
    );
    let probe: i64 = s.value("SELECT json_extract(props, '$.probe') FROM contacts WHERE id = 'c1'");
    assert_eq!(probe, 1);
    assert!(
        !s.effects
            .iter()
            .any(|e| e.kind == crate::outbox::EffectKind::Property),
        "nothing written back"
    );
}

/// A staff member given by id alone: the same member keeps the display
/// name the record holds; another one gets none, never their id (which
/// would reach patients as `{{owner}}`).
#[test]
fn a_staff_member_without_a_name_keeps_the_known_one_and_is_never_named_by_id() {
    let mut s = Sim::new();
    s.contact("c1", json!({"owner": {"id": "s-17", "name": "Sarah Chen"}}));
    let owner = |s: &Sim| super::contacts::require(&s.conn, "c1").unwrap().props["owner"].clone();
    s.push(json!({"type": "contact.upserted", "contact": {"id": "c1", "owner": {"id": "s-17"}}}))
        .unwrap();
    assert_eq!(owner(&s), json!({"id": "s-17", "name": "Sarah Chen"}));
    s.push(json!({"type": "contact.upserted", "contact": {"id": "c1", "owner": {"id": "s-18"}}}))
        .unwrap();
    assert_eq!(owner(&s), json!({"id": "s-18"}));
    // A name earlier versions made of the id is not carried over either.
    s.conn
        .execute(
            "UPDATE contacts SET props = json_set(props, '$.owner', json('{\"id\": \"s-18\", \"name\": \"s-18\"}')) WHERE id = 'c1'",
            [],
        )
        .unwrap();
    s.push(json!({"type": "contact.upserted", "contact": {"id": "c1", "owner": {"id": "s-18"}}}))
        .unwrap();
    assert_eq!(owner(&s), json!({"id": "s-18"}));
    assert_eq!(
        crate::model::contact::staff_name(&json!({"id": "s-18", "name": "s-18"})),
        None
    );
}

/// The same tags in another case, and the same staff member under a
/// fuller name, are no change for Property changed "any change": the
/// host echoing a write-back in its own spelling enrolled the contact
/// again.
#[test]
fn a_respelled_tag_or_renamed_owner_is_no_change() {
    let mut s = Sim::new();
    let tags = s.automation(
        json!({"name": "Tags changed", "run_window": {"mode": "any_time"},
        "trigger": {"type": "property_changed", "property": "tags"}, "steps": []}),
    );
    let owner = s.automation(
        json!({"name": "Owner changed", "run_window": {"mode": "any_time"},
        "trigger": {"type": "property_changed", "property": "owner"}, "steps": []}),
    );
    s.contact(
        "c1",
        json!({"tags": ["VIP"], "owner": {"id": "s1", "name": "Sarah"}}),
    );
    s.advance(MINUTE);
    s.push(
        json!({"type": "contact.upserted", "contact": {"id": "c1", "tags": [" vip"],
        "owner": {"id": "S1", "name": "Sarah Chen"}}}),
    )
    .unwrap();
    assert_eq!(s.count("enrolled", Some(&tags)), 0);
    assert_eq!(s.count("enrolled", Some(&owner)), 0);
    // The record takes the host's spelling and name all the same.
    let owner_name: String =
        s.value("SELECT json_extract(props, '$.owner.name') FROM contacts WHERE id = 'c1'");
    assert_eq!(owner_name, "Sarah Chen");
    // A real change still fires.
    s.push(
        json!({"type": "contact.upserted", "contact": {"id": "c1", "tags": ["vip", "new"],
        "owner": {"id": "s2", "name": "Sam"}}}),
    )
    .unwrap();
    assert_eq!(s.count("enrolled", Some(&tags)), 1);
    assert_eq!(s.count("enrolled", Some(&owner)), 1);
}

/// Tags are one whatever their case, in what the host pushes and in Set
/// property, as in conditions: removing `VIP` removes `vip`, adding `VIP`
/// to `vip` changes nothing.
#[test]
fn tags_are_one_whatever_their_case() {
    let mut s = Sim::new();
    s.automation(json!({"name": "Tags", "run_window": {"mode": "any_time"},
        "trigger": {"type": "form_submitted"},
        "steps": [{"type": "set_property", "property": "tags", "value": {"remove": ["VIP"], "add": ["Other"]}}]}));
    s.contact("c1", json!({"tags": ["vip", " VIP ", "other"]}));
    let tags = |s: &Sim| super::contacts::require(&s.conn, "c1").unwrap().props["tags"].clone();
    assert_eq!(tags(&s), json!(["other", "vip"]));
    s.push(json!({"type": "form.submitted", "submission": {"id": "f1", "form_id": "x", "form_name": "X", "contact_id": "c1"}}))
        .unwrap();
    assert_eq!(tags(&s), json!(["other"]));
}

/// A full replace that leaves the status out keeps it, as it keeps the
/// subscriptions: a Lead stays one, and nothing fires Property changed.
#[test]
fn a_full_replace_without_the_status_keeps_it_and_fires_nothing() {
    let mut s = Sim::new();
    let changed = s.automation(json!({"name": "Status", "run_window": {"mode": "any_time"},
        "trigger": {"type": "property_changed", "property": "status"}, "steps": []}));
    s.contact("c1", json!({"status": "lead", "first_name": "Ann"}));
    s.push(json!({"type": "contact.upserted", "mode": "full", "contact": {"id": "c1", "first_name": "Anne"}}))
        .unwrap();
    assert_eq!(s.count("enrolled", Some(&changed)), 0);
    let status: Option<String> =
        s.value("SELECT json_extract(props, '$.status') FROM contacts WHERE id = 'c1'");
    assert_eq!(status.as_deref(), Some("lead"));
}

/// Property changed to a staff member: named by id (an object or the id
/// as text) or by display name; a rename of the same member is no change.
#[test]
fn property_changed_to_a_staff_member_matches_by_id_or_name() {
    let mut s = Sim::new();
    let ids = [
        s.automation(json!({"name": "By object", "run_window": {"mode": "any_time"},
            "trigger": {"type": "property_changed", "property": "owner", "new_value": {"id": "s-17"}}, "steps": []})),
        s.automation(json!({"name": "By id", "run_window": {"mode": "any_time"},
            "trigger": {"type": "property_changed", "property": "owner", "new_value": "s-17"}, "steps": []})),
        s.automation(json!({"name": "By name", "run_window": {"mode": "any_time"},
            "trigger": {"type": "property_changed", "property": "owner", "new_value": "Sarah Chen"}, "steps": []})),
    ];
    s.contact("c1", json!({"owner": {"id": "s-1", "name": "Lee"}}));
    s.push(json!({"type": "contact.upserted", "contact": {"id": "c1", "owner": {"id": "s-17", "name": "Sarah Chen"}}}))
        .unwrap();
    s.push(json!({"type": "contact.upserted", "contact": {"id": "c1", "owner": {"id": "s-17", "name": "Dr. Sarah Chen"}}}))
        .unwrap();
    for a in &ids {
        assert_eq!(s.count("enrolled", Some(a)), 1, "{a}");
    }
}

/// A value written differently is no change: a lead source as the
/// builder names it, a number with a fraction of zero.
#[test]
fn property_changed_ignores_one_value_written_differently() {
    let mut s = Sim::new();
    let source = s.automation(json!({"name": "Source", "run_window": {"mode": "any_time"},
        "trigger": {"type": "property_changed", "property": "lead_source"}, "steps": []}));
    let score = s.automation(json!({"name": "Score", "run_window": {"mode": "any_time"},
        "trigger": {"type": "property_changed", "property": "score"}, "steps": []}));
    s.contact("c1", json!({"lead_source": "walk_in", "score": 5}));
    s.push(json!({"type": "contact.upserted", "contact": {"id": "c1", "lead_source": "Walk-in", "score": 5.0}}))
        .unwrap();
    assert_eq!(s.count("enrolled", Some(&source)), 0);
    assert_eq!(s.count("enrolled", Some(&score)), 0);
    s.push(json!({"type": "contact.upserted", "contact": {"id": "c1", "lead_source": "import", "score": 6}}))
        .unwrap();
    assert_eq!(s.count("enrolled", Some(&source)), 1);
    assert_eq!(s.count("enrolled", Some(&score)), 1);
}

/// A date of birth the trigger waits for, written short, is kept as the
/// record keeps dates, and fires.
#[test]
fn property_changed_to_a_date_written_short_fires() {
    let mut s = Sim::new();
    let dob = s.automation(json!({"name": "DOB", "run_window": {"mode": "any_time"},
        "trigger": {"type": "property_changed", "property": "dob", "new_value": "1985-3-7"}, "steps": []}));
    s.contact("c1", json!({"dob": "1985-03-08"}));
    s.push(json!({"type": "contact.upserted", "contact": {"id": "c1", "dob": "1985-03-07"}}))
        .unwrap();
    assert_eq!(s.count("enrolled", Some(&dob)), 1);
}

/// Saving an automation unchanged (as a builder does when staff leave it)
/// makes no version and leaves Last Updated; a real change makes one.
#[test]
fn an_update_that_changes_nothing_makes_no_version() {
    let mut s = Sim::new();
    let def = json!({"name": "Call", "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
        "steps": [{"id": "call", "type": "create_task", "title": "Call", "assignee": {"kind": "queue", "name": "desk"}}]});
    let a = s.automation(def.clone());
    let updated = |s: &Sim| -> (i64, i64) {
        s.conn
            .query_row(
                "SELECT current_version, updated_at FROM automations WHERE id = ?1",
                [&a],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap()
    };
    let before = updated(&s);
    s.advance(crate::clock::HOUR);
    let out = s
        .cmd(json!({"command": "automation.update", "automation_id": a, "definition": def}))
        .unwrap();
    assert_eq!(out["version"], before.0);
    assert_eq!(updated(&s), before, "nothing changed");
    let mut changed = def.clone();
    changed["name"] = json!("Call them");
    let out = s
        .cmd(json!({"command": "automation.update", "automation_id": a, "definition": changed}))
        .unwrap();
    assert_eq!(out["version"], before.0 + 1);
}

/// Values a trigger waits for or a step sets are stored as the builder
/// offers them, so that its selects show them: a lead source as its
/// option, a status in lowercase. A host-defined source is kept.
#[test]
fn trigger_and_step_values_are_stored_as_the_builder_offers_them() {
    let mut s = Sim::new();
    let stored = |s: &Sim, a: &str| -> Value {
        let text: String = s
            .conn
            .query_row(
                "SELECT definition FROM automation_versions WHERE automation_id = ?1",
                [a],
                |r| r.get(0),
            )
            .unwrap();
        serde_json::from_str(&text).unwrap()
    };
    let walk_in = s.automation(json!({"name": "Walk-ins", "trigger": {"type": "contact_created", "source": "Walk-in"},
        "steps": [{"id": "src", "type": "set_property", "property": "lead_source", "value": "Website Form"},
                  {"id": "tag", "type": "set_property", "property": "tags", "value": {"add": ["vip"]}},
                  {"id": "st", "type": "set_property", "property": "status", "value": "Patient"}]}));
    let def = stored(&s, &walk_in);
    assert_eq!(def["steps"][2]["value"], "patient");
    assert_eq!(def["trigger"]["source"], "walk_in");
    assert_eq!(def["steps"][0]["value"], "website_form");
    assert_eq!(
        def["steps"][1]["value"],
        json!({"add": ["vip"], "remove": []})
    );
    let patient = s.automation(json!({"name": "Patients", "trigger": {"type": "property_changed", "property": "status", "new_value": "Patient"}, "steps": []}));
    assert_eq!(stored(&s, &patient)["trigger"]["new_value"], "patient");
    let referral = s.automation(json!({"name": "Referral", "trigger": {"type": "contact_created", "source": "Dr. Referral"}, "steps": []}));
    assert_eq!(stored(&s, &referral)["trigger"]["source"], "Dr. Referral");
}

/// An email's preheader is bounded as its subject is (the builder shows
/// the limit): 100,000 characters were accepted.
#[test]
fn an_emails_preheader_is_bounded_like_its_subject() {
    let mut s = Sim::new();
    let long = "x".repeat(501);
    let e = s
        .cmd(json!({"command": "automation.create", "definition": {"name": "Long", "trigger": {"type": "contact_created"},
            "steps": [{"type": "send_email", "subject": "Hi", "preheader": long, "body": "<p>Hi</p>"}]}}))
        .unwrap_err();
    assert!(e.to_string().contains("preheader"), "{e}");
    let e = s
        .cmd(
            json!({"command": "template.create", "template": {"channel": "email", "name": "Long",
            "subject": "Hi", "preheader": long, "html_body": "<p>Hi</p>"}}),
        )
        .unwrap_err();
    assert!(e.to_string().contains("preheader"), "{e}");
    // The plain-text part is bounded as the HTML part is: it had no limit
    // (its links numbered past the HTML part's could run out of indexes).
    let text = "https://a.example/ ".repeat(30_000);
    let e = s
        .cmd(
            json!({"command": "template.create", "template": {"channel": "email", "name": "Long",
            "subject": "Hi", "html_body": "<p>Hi</p>", "text_body": text}}),
        )
        .unwrap_err();
    assert_eq!(e.code(), crate::error::ErrorCode::TooLarge, "{e}");
    assert!(e.to_string().contains("text_body"), "{e}");
}

/// A definition stored by an earlier version, in a form saving now
/// normalizes (a short date): saving it unchanged makes no version, and the
/// date it waits for still matches.
#[test]
fn a_definition_stored_in_an_older_form_is_the_same_automation() {
    let mut s = Sim::new();
    let def = json!({"name": "Old", "run_window": {"mode": "any_time"},
        "trigger": {"type": "property_changed", "property": "dob", "new_value": "1985-03-07"}, "steps": []});
    let a = s.automation(def.clone());
    // As an earlier version stored it.
    s.conn
        .execute(
            "UPDATE automation_versions SET definition = json_set(definition, '$.trigger.new_value', '1985-3-7')
              WHERE automation_id = ?1",
            [&a],
        )
        .unwrap();
    s.catalog = crate::catalog::Catalog::load(&s.conn).unwrap();
    let version = |s: &Sim| -> i64 {
        s.conn
            .query_row(
                "SELECT current_version FROM automations WHERE id = ?1",
                [&a],
                |r| r.get(0),
            )
            .unwrap()
    };
    let before = version(&s);
    s.cmd(json!({"command": "automation.update", "automation_id": a, "definition": def}))
        .unwrap();
    assert_eq!(version(&s), before, "saved unchanged");
    s.contact("c1", json!({"dob": "1985-03-08"}));
    s.push(json!({"type": "contact.upserted", "contact": {"id": "c1", "dob": "1985-03-07"}}))
        .unwrap();
    assert_eq!(s.count("enrolled", Some(&a)), 1);
}

#[test]
fn email_engagement_trigger_and_branch_on_step_engagement() {
    let mut s = Sim::new();
    s.cmd(json!({"command": "template.create", "template_id": "newsletter-1", "template": {"channel": "email", "name": "Newsletter",
        "subject": "News from {{practice}}", "html_body": "<p>Hi {{firstname}}, <a href=\"https://riverside.example/book\">book</a></p>"}}))
        .unwrap();
    let news = s.automation(json!({"name": "Newsletter", "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
        "steps": [{"id": "mail", "type": "send_email", "template_id": "newsletter-1"},
                  {"type": "delay", "amount": 1, "unit": "days"},
                  {"id": "b", "type": "branch", "condition": {"type": "step_engagement", "step_id": "mail", "engagement": "clicked"},
                   "yes": [{"id": "hot", "type": "create_task", "title": "Hot lead", "assignee": {"kind": "queue", "name": "front_desk"}}],
                   "no": [{"id": "cold", "type": "send_sms", "message": "Did you see our news?"}]}]}));
    let hot = s.automation(json!({"name": "Clicked newsletter", "run_window": {"mode": "any_time"},
        "trigger": {"type": "email_engagement", "engagement": "clicked", "email_id": "newsletter-1"}, "steps": []}));
    // An email's template under SMS reply (it would never fire) is refused.
    let e = s
        .cmd(
            json!({"command": "automation.create", "definition": {"name": "Wrong channel",
            "trigger": {"type": "sms_reply", "sms_id": "newsletter-1"}, "steps": []}}),
        )
        .unwrap_err();
    assert_eq!(e.code(), crate::ErrorCode::NotFound);
    assert!(
        e.to_string().contains("trigger: sms template newsletter-1"),
        "{e}"
    );
    s.contact("c1", json!({}));
    s.contact("c2", json!({}));
    let key = s.messages_to("c1")[0].key.clone();
    s.push(json!({"type": "email.opened", "message_key": key}))
        .unwrap();
    assert_eq!(s.count("enrolled", Some(&hot)), 0, "an open is not a click");
    s.push(json!({"type": "email.clicked", "message_key": key}))
        .unwrap();
    assert_eq!(s.count("enrolled", Some(&hot)), 1);
    s.advance(2 * DAY);
    let paths: Vec<String> = s.conn.prepare("SELECT contact_id || ':' || json_extract(detail, '$.path') FROM events WHERE kind='step_completed' AND step_id='b' ORDER BY contact_id").unwrap()
        .query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
    assert_eq!(paths, vec!["c1:yes", "c2:no"]);
    assert_eq!(s.count("completed", Some(&news)), 2, "both paths end");
    let e = s
        .push(json!({"type": "email.opened", "message_key": "t-e999-x"}))
        .unwrap_err();
    assert_eq!(e.code(), crate::ErrorCode::NotFound);
}

#[test]
fn engagement_triggers_answer_marketing_messages_only() {
    let mut s = Sim::new();
    let steps = |category: &str| {
        json!([{"id": "mail", "type": "send_email", "subject": "Hi", "body": "<p>Hi</p>", "category": category},
               {"id": "text", "type": "send_sms", "message": "Hi", "category": category}])
    };
    s.automation(json!({"name": "Reminders", "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"}, "steps": steps("care")}));
    s.automation(json!({"name": "Promo", "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"}, "steps": steps("marketing")}));
    let opened = s.automation(json!({"name": "Opened any", "run_window": {"mode": "any_time"},
        "trigger": {"type": "email_engagement", "engagement": "either"}, "steps": [{"type": "delay", "amount": 1, "unit": "days"}]}));
    let replied = s.automation(json!({"name": "Replied any", "run_window": {"mode": "any_time"},
        "trigger": {"type": "sms_reply"}, "steps": [{"type": "delay", "amount": 1, "unit": "days"}]}));
    s.contact("c1", json!({}));
    let key = |s: &Sim, channel: &str, category: &str| -> String {
        s.messages_to("c1")
            .iter()
            .find(|m| m.payload["channel"] == channel && m.payload["category"] == category)
            .unwrap()
            .key
            .clone()
    };
    // The appointment reminder is opened and answered: not marketing.
    let (care_mail, care_text) = (key(&s, "email", "care"), key(&s, "sms", "care"));
    s.push(json!({"type": "email.opened", "message_key": care_mail}))
        .unwrap();
    s.push(json!({"type": "sms.received", "contact_id": "c1", "body": "See you then", "in_reply_to": care_text}))
        .unwrap();
    assert_eq!(s.count("enrolled", Some(&opened)), 0);
    assert_eq!(s.count("enrolled", Some(&replied)), 0);
    // The promotion is.
    let (promo_mail, promo_text) = (key(&s, "email", "marketing"), key(&s, "sms", "marketing"));
    s.push(json!({"type": "email.opened", "message_key": promo_mail}))
        .unwrap();
    s.push(json!({"type": "sms.received", "contact_id": "c1", "body": "Tell me more", "in_reply_to": promo_text}))
        .unwrap();
    assert_eq!(s.count("enrolled", Some(&opened)), 1);
    assert_eq!(s.count("enrolled", Some(&replied)), 1);
}

/// One email engages once: opening it again or clicking it again fires no
/// Email engagement trigger again, though the automations' runs ended and
/// would take the contact back.
#[test]
fn an_email_opened_and_clicked_again_fires_its_trigger_once() {
    let mut s = Sim::new();
    s.automation(json!({"name": "News", "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
        "steps": [{"id": "n", "type": "send_email", "subject": "News", "category": "marketing",
                   "body": "<p><a href=\"https://riverside.example/a\">a</a></p>"}]}));
    let watch: Vec<(String, &str)> = ["opened", "clicked", "either"]
        .into_iter()
        .map(|e| {
            let a = s.automation(
                json!({"name": format!("On {e}"), "run_window": {"mode": "any_time"},
                "trigger": {"type": "email_engagement", "engagement": e}, "steps": []}),
            );
            (a, e)
        })
        .collect();
    s.contact("c1", json!({}));
    let key = s.messages_to("c1")[0].key.clone();
    for kind in [
        "email.opened",
        "email.clicked",
        "email.opened",
        "email.clicked",
        "email.opened",
    ] {
        s.advance(MINUTE);
        s.push(json!({"type": kind, "message_key": key})).unwrap();
    }
    for (a, e) in &watch {
        assert_eq!(s.count("enrolled", Some(a)), 1, "{e}");
        assert_eq!(s.count("completed", Some(a)), 1, "{e}: its run ended");
    }
    let last: i64 = s.value("SELECT last_activity FROM contacts WHERE id = 'c1'");
    assert_eq!(last, s.now, "a repeated open is still activity");
}

#[test]
fn an_automation_unsubscribing_the_contact_does_not_end_its_own_run() {
    let mut s = Sim::new();
    // "Do not text": record the request, hand it to the front desk, confirm by email.
    let a = s.automation(json!({"name": "Do not text", "run_window": {"mode": "any_time"}, "trigger": {"type": "form_submitted"},
        "steps": [{"type": "set_property", "property": "sms_subscription", "value": "unsubscribed"},
                  {"type": "create_task", "title": "Update the chart", "assignee": {"kind": "queue", "name": "front_desk"}},
                  {"id": "mail", "type": "send_email", "subject": "Done", "body": "<p>No more texts.</p>"},
                  {"id": "text", "type": "send_sms", "message": "Bye"}]}));
    let other = s.automation(json!({"name": "Drip", "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
        "steps": [{"type": "delay", "amount": 3, "unit": "days"}]}));
    s.contact("c1", json!({}));
    s.push(json!({"type": "form.submitted", "submission": {"id": "s1", "form_id": "no-sms", "form_name": "No texts", "contact_id": "c1", "answers": {}}}))
        .unwrap();
    assert_eq!(s.enrollment(&a, "c1").0, "completed");
    assert_eq!(
        s.enrollment(&other, "c1").0,
        "active",
        "not the person's opt-out"
    );
    let channels: Vec<String> = s
        .messages_to("c1")
        .iter()
        .map(|m| m.payload["channel"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(channels, ["email"], "consent stops the SMS");
    assert_eq!(s.count("exited", None), 0);
}

#[test]
fn an_event_from_before_the_automation_was_turned_on_does_not_enroll() {
    let mut s = Sim::new();
    s.contact("c1", json!({}));
    s.advance(HOUR);
    let a = s.automation(json!({"name": "Forms", "run_window": {"mode": "any_time"}, "trigger": {"type": "form_submitted"},
        "steps": [{"type": "delay", "amount": 1, "unit": "days"}]}));
    let on = s.now;
    s.advance(HOUR);
    // Submitted half an hour before activation, pushed an hour after it.
    s.push(
        json!({"type": "form.submitted", "occurred_at": crate::clock::to_rfc3339(on - 30 * MINUTE),
               "submission": {"id": "s1", "form_id": "intake", "form_name": "Intake", "contact_id": "c1", "answers": {}}}),
    )
    .unwrap();
    assert_eq!(s.count("enrolled", Some(&a)), 0);
    let ignored: Option<String> = s
        .conn
        .query_row(
            "SELECT json_extract(detail, '$.reason') FROM events WHERE kind = 'trigger_ignored' AND automation_id = ?1",
            [&a],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(ignored.as_deref(), Some("before_activation"));
    // One submitted after activation, pushed late too, does.
    s.push(
        json!({"type": "form.submitted", "occurred_at": crate::clock::to_rfc3339(on + 30 * MINUTE),
               "submission": {"id": "s2", "form_id": "intake", "form_name": "Intake", "contact_id": "c1", "answers": {}}}),
    )
    .unwrap();
    assert_eq!(s.count("enrolled", Some(&a)), 1);
}

/// A booking pushed before the form that enrolls the contact, though made
/// after it, is still the enrollment's goal (the form at 10:00 and the
/// booking at 10:05 arrive as booking, then form); with *Goal met* on the
/// contact leaves at once and is sent nothing. A booking made before the
/// form is not its goal.
#[test]
fn a_goal_pushed_before_its_trigger_but_made_after_it_counts() {
    let form = |id: &str, at: crate::clock::Millis| {
        json!({"type": "form.submitted", "occurred_at": crate::clock::to_rfc3339(at),
               "submission": {"id": id, "form_id": "intake", "form_name": "Intake", "contact_id": "c1", "answers": {}}})
    };
    let booking = |at: crate::clock::Millis| {
        json!({"type": "appointment.booked", "occurred_at": crate::clock::to_rfc3339(at),
               "appointment": {"id": "ap1", "contact_id": "c1"}})
    };
    for (goal_met, booked_after, counted) in [
        (false, true, true),
        (true, true, true),
        (false, false, false),
    ] {
        let mut s = Sim::new();
        let mut def = five_steps(goal_met);
        def["trigger"] = json!({"type": "form_submitted"});
        let a = s.automation(def);
        s.contact("c1", json!({}));
        s.advance(HOUR);
        let submitted = s.now;
        let booked = if booked_after {
            submitted + 5 * MINUTE
        } else {
            submitted - 5 * MINUTE
        };
        s.advance(10 * MINUTE);
        s.push(booking(booked)).unwrap();
        s.advance(MINUTE);
        s.push(form("f1", submitted)).unwrap();
        let (state, reason, reached) = s.enrollment(&a, "c1");
        let case = format!("goal met {goal_met}, booked after {booked_after}");
        assert_eq!(reached, counted, "{case}");
        assert_eq!(
            s.count("goal_reached", Some(&a)),
            i64::from(counted),
            "{case}"
        );
        if goal_met {
            assert_eq!(
                (state.as_str(), reason.as_deref()),
                ("exited", Some("goal_met")),
                "{case}"
            );
            assert!(s.messages_to("c1").is_empty(), "{case}");
        } else {
            assert_eq!(state, "active", "{case}");
        }
    }
}

/// The booking that enrolls a contact ("Status changed to Patient") is not
/// that enrollment's conversion, though it happened a second before it was
/// pushed and the enrollment dates from it.
#[test]
fn the_booking_that_enrolls_is_not_its_own_conversion() {
    let mut s = Sim::new();
    let a = s.automation(
        json!({"name": "First visit", "run_window": {"mode": "any_time"},
        "trigger": {"type": "status_changed_to_patient"},
        "steps": [{"type": "delay", "amount": 1, "unit": "days"}]}),
    );
    s.contact("c1", json!({}));
    s.advance(HOUR);
    s.push(
        json!({"type": "appointment.booked", "occurred_at": crate::clock::to_rfc3339(s.now - 1_000),
        "appointment": {"id": "ap1", "contact_id": "c1"}}),
    )
    .unwrap();
    assert_eq!(s.count("enrolled", Some(&a)), 1);
    assert_eq!(s.count("goal_reached", Some(&a)), 0);
}

/// A contact enrolled again by a trigger pushed late converts once: the
/// booking an earlier run already counted is not counted again for the run
/// dated before it.
#[test]
fn a_late_repeat_enrollment_does_not_count_a_booking_twice() {
    let form = |id: &str, at: crate::clock::Millis| {
        json!({"type": "form.submitted", "occurred_at": crate::clock::to_rfc3339(at),
               "submission": {"id": id, "form_id": "intake", "form_name": "Intake", "contact_id": "c1", "answers": {}}})
    };
    let mut s = Sim::new();
    let mut def = five_steps(false);
    def["trigger"] = json!({"type": "form_submitted"});
    def["steps"] = json!([]);
    let a = s.automation(def);
    s.contact("c1", json!({}));
    s.advance(HOUR);
    let start = s.now;
    s.push(form("f1", start)).unwrap();
    s.advance(HOUR);
    s.book("c1", "ap1");
    assert_eq!(s.count("goal_reached", Some(&a)), 1, "the first run's");
    s.advance(HOUR);
    s.push(form("f2", start + 30 * MINUTE)).unwrap();
    assert_eq!(s.count("enrolled", Some(&a)), 2);
    assert_eq!(s.count("goal_reached", Some(&a)), 1, "once per contact");
}

#[test]
fn sms_stop_is_an_opt_out_not_a_reply() {
    let mut s = Sim::new();
    s.cmd(json!({"command": "template.create", "template_id": "sms-1", "template": {"channel": "sms", "name": "Hi", "message": "Hi {{firstname}}"}}))
        .unwrap();
    let seq = s.automation(json!({"name": "SMS drip", "run_window": {"mode": "any_time"}, "unenrollment": {"sms_opt_out": true},
        "trigger": {"type": "contact_created"},
        "steps": [{"type": "send_sms", "template_id": "sms-1", "message": "Hi"}, {"type": "delay", "amount": 3, "unit": "days"}, {"type": "send_sms", "message": "Again"}]}));
    let keep = s.automation(json!({"name": "Email drip", "run_window": {"mode": "any_time"}, "unenrollment": {"sms_opt_out": false},
        "trigger": {"type": "contact_created"}, "steps": [{"type": "delay", "amount": 5, "unit": "days"}]}));
    let reply = s.automation(json!({"name": "Replies", "run_window": {"mode": "any_time"}, "trigger": {"type": "sms_reply", "sms_id": "sms-1"}, "steps": []}));
    s.contact("c1", json!({}));
    s.contact("c2", json!({}));
    s.hand_over();
    let phone1: String = s
        .conn
        .query_row("SELECT phone FROM contacts WHERE id='c1'", [], |r| r.get(0))
        .unwrap();
    s.push(json!({"type": "sms.received", "from": phone1, "body": " Stop "}))
        .unwrap();
    s.push(json!({"type": "sms.received", "contact_id": "c2", "body": "can you book me Tuesday"}))
        .unwrap();
    assert_eq!(
        s.enrollment(&seq, "c1"),
        ("exited".into(), Some("sms_opt_out".into()), false)
    );
    assert_eq!(s.enrollment(&keep, "c1").0, "active", "toggle off: stays");
    assert_eq!(
        s.count("enrolled", Some(&reply)),
        1,
        "only the real reply fires"
    );
    assert_eq!(s.enrollment(&reply, "c2").0, "completed");
    let (reason, actor): (String, String) = s.conn.query_row("SELECT reason, actor FROM subscription_audit WHERE contact_id='c1' AND channel='sms' AND new_value='unsubscribed'", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
    assert_eq!((reason.as_str(), actor.as_str()), ("stop_reply", "contact"));
    s.advance(4 * DAY);
    let flow_msgs = |s: &Sim, c: &str| {
        s.messages_to(c)
            .iter()
            .filter(|m| m.automation_id.is_some())
            .count()
    };
    assert_eq!(
        flow_msgs(&s, "c1"),
        1,
        "nothing after STOP but the confirmation"
    );
    assert_eq!(s.messages_to("c1").len(), 2);
    assert_eq!(flow_msgs(&s, "c2"), 2);
}

#[test]
fn a_change_to_a_value_fires_only_when_the_value_is_new() {
    let mut s = Sim::new();
    let vip = s.automation(json!({"name": "Tagged VIP", "run_window": {"mode": "any_time"},
        "trigger": {"type": "property_changed", "property": "tags", "new_value": "vip"}, "steps": []}));
    s.contact("c1", json!({"tags": ["vip"]}));
    // Another tag comes: vip was there before.
    s.push(
        json!({"type": "contact.upserted", "contact": {"id": "c1", "tags": ["vip", "newsletter"]}}),
    )
    .unwrap();
    assert_eq!(s.count("enrolled", Some(&vip)), 0, "vip was already a tag");
    s.push(json!({"type": "contact.upserted", "contact": {"id": "c1", "tags": ["newsletter"]}}))
        .unwrap();
    s.push(
        json!({"type": "contact.upserted", "contact": {"id": "c1", "tags": ["newsletter", "vip"]}}),
    )
    .unwrap();
    assert_eq!(s.count("enrolled", Some(&vip)), 1, "vip came back");
}

/// An insurance verification status older than the stored one changes
/// nothing: "pending" arriving after a later "verified" neither takes the
/// contact back nor lets the next "verified" count again.
#[test]
fn a_late_insurance_verification_status_does_not_overwrite_a_newer_one() {
    let mut s = Sim::new();
    let moved = s.automation(json!({"name": "Verification moved", "run_window": {"mode": "any_time"},
        "trigger": {"type": "property_changed", "property": "insurance_verification"}, "steps": []}));
    let goal = s.automation(json!({"name": "Verify", "goal": "verification_complete",
        "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
        "steps": [{"type": "delay", "amount": 7, "unit": "days"}]}));
    s.contact("c1", json!({}));
    s.advance(HOUR);
    let at = |s: &Sim, ago: i64| crate::clock::to_rfc3339(s.now - ago);
    let verification = |status: &str, at: String| json!({"type": "insurance.verification", "contact_id": "c1", "status": status, "occurred_at": at});
    s.push(verification("verified", at(&s, 0))).unwrap();
    s.advance(MINUTE);
    s.push(verification("pending", at(&s, 10 * MINUTE)))
        .unwrap();
    let status: String = s.value("SELECT insurance_verification FROM contacts WHERE id = 'c1'");
    assert_eq!(status, "verified");
    s.push(verification("verified", at(&s, 0))).unwrap();
    assert_eq!(
        s.count("enrolled", Some(&moved)),
        1,
        "moved by the late status"
    );
    assert_eq!(s.count("goal_reached", Some(&goal)), 1);
}

#[test]
fn derived_properties_fire_property_changed_or_are_refused() {
    let mut s = Sim::new();
    let verified = s.automation(json!({"name": "Verified", "run_window": {"mode": "any_time"},
        "trigger": {"type": "property_changed", "property": "insurance_verification", "new_value": "verified"}, "steps": []}));
    let any = s.automation(json!({"name": "Verification moved", "run_window": {"mode": "any_time"},
        "trigger": {"type": "property_changed", "property": "insurance_verification"}, "steps": []}));
    let portal = s.automation(json!({"name": "Portal", "run_window": {"mode": "any_time"},
        "trigger": {"type": "property_changed", "property": "portal_active", "new_value": true}, "steps": []}));
    s.contact("c1", json!({}));
    s.push(json!({"type": "insurance.verification", "contact_id": "c1", "status": "pending"}))
        .unwrap();
    s.push(json!({"type": "insurance.verification", "contact_id": "c1", "status": "verified"}))
        .unwrap();
    s.push(json!({"type": "insurance.verification", "contact_id": "c1", "status": "verified"}))
        .unwrap();
    s.push(json!({"type": "portal.activated", "contact_id": "c1"}))
        .unwrap();
    s.push(json!({"type": "portal.activated", "contact_id": "c1"}))
        .unwrap();
    assert_eq!(s.count("enrolled", Some(&verified)), 1);
    assert_eq!(s.count("enrolled", Some(&any)), 2, "pending, then verified");
    assert_eq!(s.count("enrolled", Some(&portal)), 1);
    for property in ["last_activity", "created_at", "age"] {
        let err = s
            .cmd(
                json!({"command": "automation.create", "definition": {"name": "Derived",
                "trigger": {"type": "property_changed", "property": property}, "steps": []}}),
            )
            .unwrap_err();
        assert_eq!(err.code(), crate::ErrorCode::Invalid, "{property}");
    }
}

#[test]
fn every_way_to_the_last_open_channel_is_a_global_opt_out() {
    let mut s = Sim::new();
    // Toggles off: only a global opt-out (both channels closed) ends these.
    let drip = || {
        json!({"name": "Drip", "run_window": {"mode": "any_time"}, "unenrollment": {"email_reply": false, "sms_opt_out": false},
            "trigger": {"type": "contact_created"}, "steps": [{"type": "delay", "amount": 30, "unit": "days"}]})
    };
    let a = s.automation(drip());
    for c in ["stop", "host_sms", "link"] {
        s.contact(c, json!({}));
    }
    // Shares link's address (a family email): the link unsubscribes the address.
    s.contact("sibling", json!({"email": "link@example.com"}));
    s.contact("open", json!({}));
    for c in ["stop", "host_sms"] {
        s.push(json!({"type": "contact.opted_out", "contact_id": c, "channel": "email"}))
            .unwrap();
    }
    s.push(json!({"type": "contact.opted_out", "contact_id": "link", "channel": "sms"}))
        .unwrap();
    s.push(json!({"type": "contact.opted_out", "contact_id": "open", "channel": "sms"}))
        .unwrap();
    for c in ["stop", "host_sms", "link", "open"] {
        assert_eq!(
            s.enrollment(&a, c).0,
            "active",
            "{c}: one channel is still open"
        );
    }
    s.push(json!({"type": "sms.received", "contact_id": "stop", "body": "STOP"}))
        .unwrap();
    s.push(json!({"type": "contact.opted_out", "contact_id": "host_sms", "channel": "sms"}))
        .unwrap();
    let mailer = s.automation(json!({"name": "Mailer", "run_window": {"mode": "any_time"}, "trigger": {"type": "form_submitted"},
        "steps": [{"type": "send_email", "subject": "News", "body": "Hi"}]}));
    s.push(json!({"type": "form.submitted", "submission": {"id": "f1", "form_id": "x", "form_name": "X", "contact_id": "link"}}))
        .unwrap();
    let sent = s
        .messages_to("link")
        .into_iter()
        .find(|m| m.automation_id.as_deref() == Some(mailer.as_str()))
        .expect("the mailer's email")
        .clone();
    let url = sent.payload["rendered"]["unsubscribe_url"]
        .as_str()
        .expect("an unsubscribe url")
        .to_string();
    s.post(&url).unwrap();
    for c in ["stop", "host_sms", "link"] {
        assert_eq!(
            s.enrollment(&a, c).1.as_deref(),
            Some("global_opt_out"),
            "{c}: the last channel closed"
        );
    }
    assert_eq!(s.enrollment(&a, "open").0, "active");
    let sibling: String = s
        .conn
        .query_row(
            "SELECT email_subscription FROM contacts WHERE id = 'sibling'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(sibling, "unsubscribed", "the address said stop");
    assert_eq!(
        s.enrollment(&a, "sibling").0,
        "active",
        "its SMS is still open"
    );
}

/// An edit that turns *SMS opt-out* and *Email reply* on ends the
/// enrollments of contacts who replied STOP, or replied to one of its
/// emails, since they enrolled, as the toggles would have had they been on;
/// a contact who opted out before enrolling stays, as they would have.
#[test]
fn an_edit_turning_the_exit_toggles_on_ends_who_already_left() {
    let mut s = Sim::new();
    let def = |on: bool| {
        json!({"name": "Drip", "run_window": {"mode": "any_time"}, "unenrollment": {"email_reply": on, "sms_opt_out": on},
            "trigger": {"type": "contact_created"}, "steps": [{"type": "send_email", "subject": "s", "body": "b"}, {"type": "delay", "amount": 3, "unit": "days"}]})
    };
    let a = s.automation(def(false));
    s.contact("before", json!({"sms_subscription": "unsubscribed"}));
    for c in ["stop", "reply", "stays"] {
        s.contact(c, json!({}));
    }
    s.advance(HOUR);
    let phone: String = s
        .conn
        .query_row("SELECT phone FROM contacts WHERE id = 'stop'", [], |r| {
            r.get(0)
        })
        .unwrap();
    s.push(json!({"type": "sms.received", "from": phone, "body": "STOP"}))
        .unwrap();
    let key = s.messages_to("reply")[0].key.clone();
    s.push(json!({"type": "email.replied", "message_key": key}))
        .unwrap();
    for c in ["before", "stop", "reply", "stays"] {
        assert_eq!(s.enrollment(&a, c).0, "active", "{c}: toggles off");
    }
    s.cmd(json!({"command": "automation.update", "automation_id": a, "definition": def(true)}))
        .unwrap();
    assert_eq!(s.enrollment(&a, "stop").1.as_deref(), Some("sms_opt_out"));
    assert_eq!(s.enrollment(&a, "reply").1.as_deref(), Some("email_reply"));
    assert_eq!(s.enrollment(&a, "stays").0, "active");
    assert_eq!(
        s.enrollment(&a, "before").0,
        "active",
        "opted out before enrolling"
    );
}

/// A global opt-out that closed the last channel is recorded as one
/// whatever the *SMS opt-out* toggle says: it is the reason the contact
/// left, not the SMS half of it.
#[test]
fn a_global_opt_out_is_the_exit_reason_with_the_sms_toggle_on() {
    let mut s = Sim::new();
    let a = s.automation(json!({"name": "Drip", "run_window": {"mode": "any_time"}, "unenrollment": {"sms_opt_out": true},
        "trigger": {"type": "contact_created"}, "steps": [{"type": "delay", "amount": 3, "unit": "days"}]}));
    for c in ["all", "both", "sms"] {
        s.contact(c, json!({}));
    }
    s.push(json!({"type": "contact.opted_out", "contact_id": "all", "channel": "all"}))
        .unwrap();
    s.contact(
        "both",
        json!({"email_subscription": "unsubscribed", "sms_subscription": "unsubscribed"}),
    );
    s.push(json!({"type": "contact.opted_out", "contact_id": "sms", "channel": "sms"}))
        .unwrap();
    assert_eq!(s.enrollment(&a, "all").1.as_deref(), Some("global_opt_out"));
    assert_eq!(
        s.enrollment(&a, "both").1.as_deref(),
        Some("global_opt_out")
    );
    assert_eq!(s.enrollment(&a, "sms").1.as_deref(), Some("sms_opt_out"));
}

/// An opt-out the host pushes late (`occurred_at` before the channel's
/// latest subscription change) does not undo the newer decision, as in a
/// stale contact update; on the channels it did not miss, it applies.
#[test]
fn a_late_opt_out_leaves_a_newer_resubscription() {
    let mut s = Sim::new();
    let a = s.automation(json!({"name": "Drip", "run_window": {"mode": "any_time"},
        "trigger": {"type": "contact_created"}, "steps": [{"type": "delay", "amount": 3, "unit": "days"}]}));
    s.contact("c1", json!({}));
    let sub = |s: &Sim, channel: &str| -> String {
        s.value(&format!(
            "SELECT json_extract(props, '$.{channel}_subscription') FROM contacts WHERE id = 'c1'"
        ))
    };
    let opted_at = s.now + 30 * MINUTE;
    s.advance(HOUR);
    s.push(json!({"type": "contact.opted_out", "contact_id": "c1", "channel": "email"}))
        .unwrap();
    s.advance(HOUR);
    s.contact("c1", json!({"email_subscription": "subscribed"}));
    s.advance(HOUR);
    assert_eq!(sub(&s, "email"), "subscribed");
    let late = |channel: &str| {
        json!({"type": "contact.opted_out", "contact_id": "c1", "channel": channel,
            "occurred_at": crate::clock::to_rfc3339(opted_at)})
    };
    assert_eq!(
        s.push(late("email")).unwrap(),
        super::ingest::Outcome::Stale
    );
    assert_eq!(
        sub(&s, "email"),
        "subscribed",
        "the resubscription was undone"
    );
    assert_eq!(s.enrollment(&a, "c1").0, "active");
    // "all", as late: the SMS subscription has not changed since, so the
    // opt-out closes it; email stays open, so it is no global opt-out.
    assert_eq!(
        s.push(late("all")).unwrap(),
        super::ingest::Outcome::Applied
    );
    assert_eq!(sub(&s, "email"), "subscribed");
    assert_eq!(sub(&s, "sms"), "unsubscribed");
    assert_eq!(s.enrollment(&a, "c1").1.as_deref(), Some("sms_opt_out"));
    // One that happened after the resubscription applies.
    s.push(
        json!({"type": "contact.opted_out", "contact_id": "c1", "channel": "email",
        "occurred_at": crate::clock::to_rfc3339(s.now - MINUTE)}),
    )
    .unwrap();
    assert_eq!(sub(&s, "email"), "unsubscribed");

    // What counts is when each change happened, not when it arrived: a
    // contact created and then opted out, both pushed a little later, in
    // that order; a resubscription that happened before an opt-out but
    // arrived two hours late.
    let at = |s: &Sim, ago: crate::clock::Millis| crate::clock::to_rfc3339(s.now - ago);
    let mut created = json!({"id": "c2", "first_name": "Ann", "email": "c2@example.com", "email_subscription": "subscribed"});
    s.push(json!({"type": "contact.upserted", "occurred_at": at(&s, 30_000), "contact": created.clone()}))
        .unwrap();
    s.push(json!({"type": "contact.opted_out", "contact_id": "c2", "channel": "email", "occurred_at": at(&s, 25_000)}))
        .unwrap();
    let c2: String = s.value("SELECT email_subscription FROM contacts WHERE id = 'c2'");
    assert_eq!(
        c2, "unsubscribed",
        "the opt-out happened after the creation"
    );
    s.advance(3 * HOUR);
    created["email_subscription"] = json!("subscribed");
    s.push(
        json!({"type": "contact.upserted", "occurred_at": at(&s, 2 * HOUR), "contact": created}),
    )
    .unwrap();
    s.push(json!({"type": "contact.opted_out", "contact_id": "c2", "channel": "email", "occurred_at": at(&s, HOUR)}))
        .unwrap();
    let c2: String = s.value("SELECT email_subscription FROM contacts WHERE id = 'c2'");
    assert_eq!(
        c2, "unsubscribed",
        "the opt-out happened after the resubscription"
    );
}

#[test]
fn global_opt_out_and_email_reply_exit() {
    let mut s = Sim::new();
    let a = s.automation(json!({"name": "Drip", "run_window": {"mode": "any_time"}, "unenrollment": {"email_reply": true, "sms_opt_out": false},
        "trigger": {"type": "contact_created"}, "steps": [{"type": "send_email", "subject": "s", "body": "b"}, {"type": "delay", "amount": 3, "unit": "days"}]}));
    s.contact("c1", json!({}));
    s.contact("c2", json!({}));
    s.contact("c3", json!({}));
    let key = s.messages_to("c1")[0].key.clone();
    s.push(json!({"type": "email.replied", "message_key": key}))
        .unwrap();
    s.push(json!({"type": "contact.opted_out", "contact_id": "c2", "channel": "all", "reason": "unsubscribe_link"})).unwrap();
    assert_eq!(s.enrollment(&a, "c1").1.as_deref(), Some("email_reply"));
    assert_eq!(s.enrollment(&a, "c2").1.as_deref(), Some("global_opt_out"));
    // A reply to an email that belongs to no enrollment (a message from
    // outside automations) leaves c3 in it.
    s.in_tx(|ctx| {
        crate::core::triggers::fire(
            ctx,
            "c3",
            &[crate::core::Signal::EmailReplied {
                enrollment_id: None,
            }],
        )
    })
    .unwrap();
    assert_eq!(s.enrollment(&a, "c3"), ("active".into(), None, false));
}

#[test]
fn birthday_fires_yearly_and_feb_29_uses_feb_28() {
    let mut s = Sim::new();
    let a = s.automation(json!({"name": "Birthday", "run_window": {"mode": "any_time"}, "trigger": {"type": "birthday", "offset": "on_the_day"},
        "steps": [{"type": "send_sms", "message": "Happy birthday!"}]}));
    s.contact("leap", json!({"dob": "1988-02-29"}));
    s.contact("jan", json!({"dob": "1990-01-10"}));
    // The host's date without zero padding is the same date.
    s.contact("unpadded", json!({"dob": "1990-1-10"}));
    // 2027 is not a leap year: 28 Feb.
    s.advance(parse_rfc3339("2027-03-01T12:00:00Z").unwrap() - s.now);
    let dates: Vec<(String, String)> = s.conn.prepare("SELECT contact_id, date(at/1000, 'unixepoch', '-5 hours') FROM events WHERE kind='enrolled' AND automation_id=?1 AND contact_id <> 'unpadded' ORDER BY at").unwrap()
        .query_map([&a], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect();
    assert_eq!(
        dates,
        vec![
            ("jan".to_string(), "2026-01-10".to_string()),
            ("leap".to_string(), "2026-02-28".to_string()),
            ("jan".to_string(), "2027-01-10".to_string()),
            ("leap".to_string(), "2027-02-28".to_string()),
        ]
    );
    let unpadded: i64 =
        s.value("SELECT count(*) FROM events WHERE kind = 'enrolled' AND contact_id = 'unpadded'");
    assert_eq!(
        unpadded, 2,
        "a date of birth without zero padding never fired"
    );
}

/// A new practice time zone moves what waits for a local time: a contact
/// held for the run window runs when the window opens in the new zone, and
/// a date trigger's next evaluation is its window's start there.
#[test]
fn a_new_time_zone_moves_window_holds_and_date_evaluations() {
    let mut s = Sim::new();
    let office = serde_json::to_value(crate::schedule::RunWindow::business_hours()).unwrap();
    let a = s.automation(json!({"name": "Nudge", "run_window": office,
        "trigger": {"type": "property_changed", "property": "tags"},
        "steps": [{"type": "send_email", "subject": "Hello", "body": "Hi"}]}));
    let b = s.automation(json!({"name": "Birthday", "run_window": office,
        "trigger": {"type": "birthday", "offset": "on_the_day"},
        "steps": [{"type": "send_sms", "message": "Happy birthday!"}]}));
    // Monday 17:30 in New York (22:30Z): closed until Tuesday 09:00 (14:00Z).
    s.advance(8 * HOUR + 30 * MINUTE);
    s.contact("c1", json!({}));
    s.push(json!({"type": "contact.upserted", "contact": {"id": "c1", "tags": ["nudge"]}}))
        .unwrap();
    assert!(s.messages_to("c1").is_empty());
    // Tokyo: Tuesday 07:30 there; its window opens at 09:00 (00:00Z).
    let mut doc = serde_json::to_value(&s.settings.doc).unwrap();
    doc["time_zone"] = json!("Asia/Tokyo");
    s.cmd(json!({"command": "settings.update", "settings": doc}))
        .unwrap();
    let tokyo_nine = parse_rfc3339("2026-01-06T00:00:00Z").unwrap();
    let next_eval: Option<i64> = s
        .conn
        .query_row(
            "SELECT next_eval_at FROM automations WHERE id = ?1",
            [&b],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(next_eval, Some(tokyo_nine));
    s.advance(tokyo_nine + MINUTE - s.now);
    assert_eq!(
        s.messages_to("c1").len(),
        1,
        "still held for New York's window"
    );
    assert_eq!(s.count("step_completed", Some(&a)), 1);
}

/// An edit of the run window does not lose the days since the last
/// evaluation: Wednesday's birthday, with the window moved from 09:00 to
/// 08:00 at 08:30 that Wednesday, fires at Thursday's evaluation.
#[test]
fn a_run_window_edit_does_not_skip_the_days_since_the_last_evaluation() {
    let mut s = Sim::new();
    let window = |start: &str| {
        let mut w = serde_json::to_value(crate::schedule::RunWindow::business_hours()).unwrap();
        for day in w["days"].as_array_mut().unwrap() {
            day["start"] = json!(start);
        }
        w
    };
    let def = |start: &str| {
        json!({"name": "Birthday", "run_window": window(start),
            "trigger": {"type": "birthday", "offset": "on_the_day"},
            "steps": [{"type": "send_email", "subject": "Happy birthday", "body": "b"}]})
    };
    let a = s.automation(def("09:00"));
    s.contact("c1", json!({"dob": "1990-01-07"})); // Wednesday
    // Wednesday 08:30 in New York: Tuesday's evaluation ran, Wednesday's has not.
    s.advance(2 * DAY - 30 * MINUTE);
    s.cmd(json!({"command": "automation.update", "automation_id": a, "definition": def("08:00")}))
        .unwrap();
    s.advance(DAY);
    assert_eq!(
        s.count("enrolled", Some(&a)),
        1,
        "Wednesday's birthday was skipped"
    );
}

#[test]
fn a_birthday_on_a_closed_day_fires_at_the_next_evaluation() {
    let mut s = Sim::new();
    // The default window, Monday to Friday; 2026-01-10 is a Saturday.
    let a = s.automation(
        json!({"name": "Birthday", "trigger": {"type": "birthday", "offset": "on_the_day"},
        "steps": [{"type": "send_email", "subject": "Happy birthday", "body": "b"}]}),
    );
    s.contact("sat", json!({"dob": "1990-01-10"}));
    s.contact("tue", json!({"dob": "1985-01-13"}));
    s.advance(9 * DAY);
    let dates: Vec<(String, String)> = s.conn.prepare("SELECT contact_id, date(at/1000, 'unixepoch', '-5 hours') FROM events WHERE kind='enrolled' AND automation_id=?1 ORDER BY at").unwrap()
        .query_map([&a], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect();
    assert_eq!(
        dates,
        vec![
            ("sat".to_string(), "2026-01-12".to_string()),
            ("tue".to_string(), "2026-01-13".to_string()),
        ]
    );
}

#[test]
fn inactive_for_n_fires_once_per_dormancy_period_without_backfill() {
    let mut s = Sim::new();
    s.contact("old", json!({}));
    s.advance(40 * DAY);
    // Activated after "old" went quiet; it enrolls at the next evaluation, not at activation.
    let a = s.automation(json!({"name": "Win-back", "run_window": {"mode": "any_time"}, "trigger": {"type": "inactive_for_days", "days": 30},
        "steps": [{"type": "delay", "amount": 1, "unit": "days"}]}));
    assert_eq!(
        s.count("enrolled", Some(&a)),
        0,
        "no back-fill at activation"
    );
    s.advance(DAY);
    assert_eq!(s.count("enrolled", Some(&a)), 1);
    s.advance(20 * DAY);
    assert_eq!(s.count("enrolled", Some(&a)), 1, "once per dormancy period");
    s.push(json!({"type": "page.visited", "contact_id": "old", "page": "/book"}))
        .unwrap();
    s.advance(29 * DAY);
    assert_eq!(s.count("enrolled", Some(&a)), 1);
    s.advance(2 * DAY);
    assert_eq!(
        s.count("enrolled", Some(&a)),
        2,
        "new activity then another N days"
    );
}

/// The automation's own messages after its firing (here a text a week
/// later) move Last Activity but start no new dormancy period: a patient
/// who never answers is enrolled once, not every 97 days, and a 30-day
/// nudge shaped alike does not keep the 90-day win-back from firing. The
/// patient's own activity starts a new one.
#[test]
fn inactive_for_n_is_not_rearmed_by_its_own_messages() {
    let mut s = Sim::new();
    let shape = |days: i64| {
        json!({"name": format!("Quiet {days}"), "run_window": {"mode": "any_time"},
            "trigger": {"type": "inactive_for_days", "days": days},
            "steps": [{"id": "mail", "type": "send_email", "subject": "We miss you", "body": "b"},
                      {"id": "wait", "type": "delay", "amount": 7, "unit": "days"},
                      {"id": "text", "type": "send_sms", "message": "Book with us"}]})
    };
    let nudge = s.automation(shape(30));
    let winback = s.automation(shape(90));
    s.contact(
        "quiet",
        json!({"email": "q@example.org", "phone": "+16175550123"}),
    );
    s.advance(500 * DAY);
    assert_eq!(s.count("enrolled", Some(&nudge)), 1, "the nudge");
    assert_eq!(s.count("enrolled", Some(&winback)), 1, "the win-back");
    assert_eq!(s.messages_to("quiet").len(), 4);
    s.push(json!({"type": "page.visited", "contact_id": "quiet", "page": "/book"}))
        .unwrap();
    // The nudge fires 30 days on; its own messages keep the patient active
    // in Last Activity's sense, so the win-back fires 90 days after its text.
    s.advance(150 * DAY);
    assert_eq!(s.count("enrolled", Some(&nudge)), 2, "a new period");
    assert_eq!(s.count("enrolled", Some(&winback)), 2);
}

/// Activity pushed late, from before the firing, moves Last Activity but
/// starts no new dormancy period; a crossing while the contact is still in
/// the automation is recorded and ignored once, not again every day, and
/// does not enroll them when the enrollment ends.
#[test]
fn inactive_for_n_fires_once_per_dormancy_period_whatever_arrives_late_or_while_enrolled() {
    let mut s = Sim::new();
    let task = json!({"type": "create_task", "title": "Call", "assignee": {"kind": "queue", "name": "front_desk"}});
    let win_back = |s: &mut Sim, steps: Value| {
        s.automation(
            json!({"name": "Win-back", "run_window": {"mode": "any_time"},
            "trigger": {"type": "inactive_for_days", "days": 30}, "steps": steps}),
        )
    };
    let short = win_back(&mut s, json!([task]));
    let long = win_back(
        &mut s,
        json!([task, {"type": "delay", "amount": 60, "unit": "days"}]),
    );
    s.contact("late", json!({}));
    let created = s.now;
    s.advance(31 * DAY);
    assert_eq!(s.count("enrolled", Some(&short)), 1);
    assert_eq!(s.enrollment(&short, "late").0, "completed");
    // Two days later the host reports a visit from day 5.
    s.advance(2 * DAY);
    let day5 = crate::clock::to_rfc3339(created + 5 * DAY);
    s.push(
        json!({"type": "page.visited", "contact_id": "late", "page": "/book", "occurred_at": day5}),
    )
    .unwrap();
    s.advance(10 * DAY);
    assert_eq!(
        s.count("enrolled", Some(&short)),
        1,
        "a late visit from before the firing started a new dormancy period"
    );
    // A visit on day 45 (new activity) crosses 30 days on day 75, while the
    // long automation's day-31 enrollment waits until day 91.
    s.advance(2 * DAY);
    s.push(json!({"type": "page.visited", "contact_id": "late", "page": "/book"}))
        .unwrap();
    s.advance(60 * DAY);
    assert_eq!(s.count("enrolled", Some(&short)), 2, "a new period fires");
    assert_eq!(s.enrollment(&long, "late").0, "completed");
    assert_eq!(
        s.count("enrolled", Some(&long)),
        1,
        "the crossing while enrolled enrolled them afterwards"
    );
    assert_eq!(
        s.count("trigger_ignored", Some(&long)),
        1,
        "the crossing was recorded more than once"
    );
}

/// Inactive for N counts calendar days in the practice's zone, as the
/// builder's "days since last activity" does: a contact last active on
/// 1 March is enrolled at the window's opening on the 30th day after
/// (31 March), whether the visit was at 08:30 or 10:00 and across the
/// spring change. Counted in elapsed hours, the 10:00 visit and the 08:30
/// one across the change fired on 1 April.
#[test]
fn inactive_for_n_fires_on_the_nth_calendar_day_whatever_the_hour() {
    use crate::clock::to_rfc3339;
    let mut s = Sim::new();
    let a = s.automation(
        json!({"name": "Nudge", "run_window": every_day("09:00", "17:00"),
        "trigger": {"type": "inactive_for_days", "days": 30},
        "steps": [{"type": "delay", "amount": 60, "unit": "days"}]}),
    );
    let at = |t: &str| parse_rfc3339(t).unwrap();
    // To Sunday 1 March 2026 (EST), then the visits of that day, pushed as
    // the host's record of each patient's last visit.
    s.advance(at("2026-03-01T07:00:00-05:00") - s.now);
    for (id, visit) in [
        ("early", "2026-03-01T08:30:00-05:00"),
        ("late", "2026-03-01T10:00:00-05:00"),
        ("evening", "2026-03-01T23:30:00-05:00"),
    ] {
        s.advance(at(visit) - s.now);
        s.push(json!({"type": "contact.upserted", "contact": {"id": id},
            "last_activity_at": to_rfc3339(at(visit))}))
            .unwrap();
    }
    s.advance(at("2026-04-02T12:00:00-04:00") - s.now);
    for id in ["early", "late", "evening"] {
        let enrolled = s.texts(
            "SELECT contact_id FROM enrollments WHERE automation_id = ?1",
            &a,
        );
        let when: i64 = s
            .conn
            .query_row(
                "SELECT enrolled_at FROM enrollments WHERE automation_id = ?1 AND contact_id = ?2",
                [&a, id],
                |r| r.get(0),
            )
            .unwrap_or_else(|e| panic!("{id} not enrolled ({enrolled:?}): {e}"));
        assert_eq!(
            to_rfc3339(when),
            "2026-03-31T13:00:00.000Z",
            "{id}: 09:00 EDT on 31 March"
        );
    }
}

/// A run window open every day from `start` to `end`, New York time.
fn every_day(start: &str, end: &str) -> Value {
    let days: Vec<Value> = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
        .map(|d| json!({"day": d, "enabled": true, "start": start, "end": end}))
        .to_vec();
    json!({"mode": "specific_hours", "days": days})
}

/// When step `step` of automation `a` ran (its only `step_executed`).
fn executed_at(s: &Sim, a: &str, step: &str) -> i64 {
    s.conn
        .query_row(
            "SELECT at FROM events WHERE kind = 'step_executed' AND step_id = ?2 AND automation_id = ?1",
            [a, step],
            |r| r.get(0),
        )
        .unwrap()
}

#[test]
fn run_window_defers_to_next_open_minute_across_dst() {
    let mut s = Sim::new();
    // Mon-Fri 09:00-17:00 New York.
    let a = s.automation(json!({"name": "Office hours", "trigger": {"type": "contact_created"},
        "steps": [{"type": "delay", "amount": 9, "unit": "hours"}, {"id": "mail", "type": "send_email", "subject": "s", "body": "b"}]}));
    // Friday 2026-03-06 16:00 EST = 21:00Z: the delay ends 01:00 Saturday; the email waits for Monday 09:00 EDT (13:00Z) after the DST change.
    s.now = parse_rfc3339("2026-03-06T21:00:00Z").unwrap();
    s.contact("c1", json!({}));
    s.advance(4 * DAY);
    let at = executed_at(&s, &a, "mail");
    assert_eq!(at, parse_rfc3339("2026-03-09T13:00:00Z").unwrap());
}

#[test]
fn a_days_delay_ends_at_the_same_wall_clock_time_across_dst() {
    let mut s = Sim::new();
    // Every day 09:00-17:00 New York.
    let a = s.automation(json!({"name": "Daily", "trigger": {"type": "contact_created"},
        "run_window": every_day("09:00", "17:00"),
        "steps": [{"type": "delay", "amount": 1, "unit": "days"}, {"id": "mail", "type": "send_email", "subject": "s", "body": "b"}]}));
    // Saturday 2026-03-07 16:30 EST; the clocks go forward that night. One
    // day later is Sunday 16:30 EDT (20:30Z), inside the window; 24 hours
    // later would be 17:30 EDT, after it closed, and the email would wait
    // for Monday.
    s.now = parse_rfc3339("2026-03-07T21:30:00Z").unwrap();
    s.contact("c1", json!({}));
    s.advance(3 * DAY);
    let at = executed_at(&s, &a, "mail");
    assert_eq!(at, parse_rfc3339("2026-03-08T20:30:00Z").unwrap());
}

#[test]
fn an_sms_step_whose_window_never_meets_the_sending_hours_still_runs() {
    let mut s = Sim::new();
    // Every evening 21:30-23:30 New York; SMS may go 08:00-21:00.
    let a = s.automation(
        json!({"name": "Evening", "trigger": {"type": "contact_created"},
        "run_window": every_day("21:30", "23:30"),
        "steps": [{"id": "text", "type": "send_sms", "message": "Hi"}]}),
    );
    // Monday 2026-01-05 22:00 EST.
    s.now = parse_rfc3339("2026-01-06T03:00:00Z").unwrap();
    s.contact("c1", json!({}));
    s.advance(3 * DAY);
    // The step ran in its window; the hand-over holds the text for the morning.
    let at = executed_at(&s, &a, "text");
    assert_eq!(at, parse_rfc3339("2026-01-06T03:00:00Z").unwrap());
    assert_eq!(s.messages_to("c1").len(), 1);
    assert_eq!(s.enrollment(&a, "c1").0, "completed");
}

#[test]
fn a_delay_counts_from_when_it_is_reached_even_outside_the_window() {
    let mut s = Sim::new();
    // Mon-Fri 09:00-17:00 New York (the default window).
    let a = s.automation(json!({"name": "Nudge", "trigger": {"type": "contact_created"},
        "steps": [{"type": "delay", "amount": 2, "unit": "days"}, {"id": "mail", "type": "send_email", "subject": "s", "body": "b"}]}));
    // Friday 2026-03-13 20:00 EDT = Saturday 00:00Z: the delay ends Sunday
    // 20:00 EDT; the email waits for Monday 09:00 EDT (13:00Z), not for
    // two days after the window opens (Wednesday).
    s.now = parse_rfc3339("2026-03-14T00:00:00Z").unwrap();
    s.contact("c1", json!({}));
    s.advance(6 * DAY);
    let at = executed_at(&s, &a, "mail");
    assert_eq!(at, parse_rfc3339("2026-03-16T13:00:00Z").unwrap());
}

#[test]
fn widening_the_window_releases_contacts_held_for_it() {
    let mut s = Sim::new();
    let office = || {
        json!({"name": "Office hours", "trigger": {"type": "contact_created"},
            "steps": [{"id": "mail", "type": "send_email", "subject": "s", "body": "b"}]})
    };
    let a = s.automation(office());
    // Saturday 2026-01-10 15:00Z: held until Monday 09:00.
    s.now = parse_rfc3339("2026-01-10T15:00:00Z").unwrap();
    s.contact("c1", json!({}));
    assert_eq!(s.messages_to("c1").len(), 0, "held for the window");
    let mut any_time = office();
    any_time["run_window"] = json!({"mode": "any_time"});
    s.cmd(json!({"command": "automation.update", "automation_id": a, "definition": any_time}))
        .unwrap();
    s.advance(MINUTE);
    assert_eq!(s.messages_to("c1").len(), 1, "runs now, not on Monday");
}

#[test]
fn paused_automation_holds_then_resumes_and_does_not_enroll() {
    let mut s = Sim::new();
    let a = s.automation(five_steps(false));
    s.contact("c1", json!({}));
    s.cmd(json!({"command": "automation.pause", "automation_id": a}))
        .unwrap();
    s.contact("c2", json!({}));
    s.advance(10 * DAY);
    assert_eq!(
        s.messages_to("c1").len(),
        1,
        "held at the delay while paused"
    );
    // Pausing it again changes nothing, its Last Updated included.
    let updated = |s: &Sim| -> i64 {
        s.value(&format!(
            "SELECT updated_at FROM automations WHERE id = '{a}'"
        ))
    };
    let before = updated(&s);
    let again = s
        .cmd(json!({"command": "automation.pause", "automation_id": a}))
        .unwrap();
    assert_eq!(again["status"], "inactive");
    assert_eq!(updated(&s), before);
    assert_eq!(
        s.count("enrolled", Some(&a)),
        1,
        "no enrollment while paused"
    );
    s.cmd(json!({"command": "automation.activate", "automation_id": a}))
        .unwrap();
    s.advance(MINUTE);
    assert_eq!(
        s.messages_to("c1").len(),
        2,
        "resumes: the overdue delay ends at once"
    );
    s.advance(3 * DAY);
    assert_eq!(s.enrollment(&a, "c1").0, "completed");
}

/// An edit that removes an If/then and pulls its NO path's steps onto the
/// main path: a contact waiting before it (or at it, held for the run
/// window) goes on to those steps, not to End.
#[test]
fn removing_an_if_then_continues_at_the_steps_pulled_out_of_it() {
    let mut s = Sim::new();
    let task = json!({"id": "call", "type": "create_task", "title": "Call", "assignee": {"kind": "queue", "name": "front_desk"}});
    let def = |steps: Vec<Value>| {
        json!({"name": "Nurture", "run_window": {"mode": "any_time"},
            "trigger": {"type": "contact_created"}, "steps": steps})
    };
    let email = json!({"id": "hello", "type": "send_email", "subject": "Hi", "body": "Hi"});
    let wait = json!({"id": "wait", "type": "delay", "amount": 2, "unit": "days"});
    let branch = json!({"id": "booked", "type": "branch",
        "condition": {"type": "property", "property": "status", "op": "equals", "value": "patient"},
        "yes": [], "no": [task.clone()]});
    let a = s.automation(def(vec![email.clone(), wait, branch]));
    s.contact("c1", json!({}));
    s.cmd(json!({"command": "automation.update", "automation_id": a,
        "definition": def(vec![email, task])}))
        .unwrap();
    s.advance(MINUTE);
    let tasks = s
        .effects
        .iter()
        .filter(|e| e.kind == crate::outbox::EffectKind::Task && e.contact_id == "c1")
        .count();
    assert_eq!(tasks, 1, "the task pulled out of the If/then did not run");
    assert_eq!(s.enrollment(&a, "c1").0, "completed");
    assert_eq!(s.messages_to("c1").len(), 1, "the email ran once");
}

#[test]
fn editing_a_live_automation_migrates_in_flight_contacts() {
    let mut s = Sim::new();
    let a = s.automation(five_steps(false));
    s.contact("c1", json!({})); // at s2 (delay)
    s.advance(3 * DAY); // c1 now at s4 (second delay)
    s.contact("c2", json!({})); // at s2
    let mut v2 = five_steps(false);
    // Drop s3 and s4; add s6 after s5.
    let steps = v2["steps"].as_array_mut().unwrap();
    steps.remove(3);
    steps.remove(2);
    steps.push(json!({"id": "s6", "type": "create_task", "title": "Call", "assignee": {"kind": "queue", "name": "front_desk"}}));
    let out = s
        .cmd(json!({"command": "automation.update", "automation_id": a, "definition": v2}))
        .unwrap();
    assert_eq!(
        (
            out["version"].as_i64(),
            out["enrollments_affected"].as_u64()
        ),
        (Some(2), Some(2))
    );
    let (v, step): (i64, String) = s
        .conn
        .query_row(
            "SELECT version, step_id FROM enrollments WHERE contact_id='c1'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        (v, step.as_str()),
        (2, "s5"),
        "removed step: next survivor on its path"
    );
    s.advance(MINUTE);
    assert_eq!(s.messages_to("c1").len(), 3, "s5 ran right away");
    s.advance(3 * DAY);
    assert_eq!(s.enrollment(&a, "c1").0, "completed");
    assert_eq!(s.enrollment(&a, "c2").0, "completed");
    let enrolled_version: i64 = s
        .conn
        .query_row(
            "SELECT enrolled_version FROM enrollments WHERE contact_id='c1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(enrolled_version, 1);
}

#[test]
fn a_step_added_in_an_edit_never_takes_a_removed_steps_id() {
    let mut s = Sim::new();
    // v1: email, delay, email; ids given by the module (s1, s2, s3).
    let mut v1 = five_steps(false);
    let mut v1_steps = v1["steps"].as_array().unwrap().clone();
    v1_steps.truncate(3);
    for step in &mut v1_steps {
        step.as_object_mut().unwrap().remove("id");
    }
    v1["steps"] = json!(v1_steps);
    let a = s.automation(v1);
    s.contact("c1", json!({})); // welcome email (s1) sent, waiting at the delay (s2)
    assert_eq!(s.messages_to("c1").len(), 1);
    // v2 drops the welcome email and appends a new email without an id.
    let mut v2 = five_steps(false);
    v2["steps"] = json!([
        {"id": "s2", "type": "delay", "amount": 2, "unit": "days"},
        {"id": "s3", "type": "send_email", "subject": "How to book", "body": "Book now"},
        {"type": "send_email", "subject": "Last call", "body": "Still time"}
    ]);
    s.cmd(json!({"command": "automation.update", "automation_id": a, "definition": v2}))
        .unwrap();
    let def: Value = serde_json::from_str(
        &s.conn
            .query_row(
                "SELECT definition FROM automation_versions WHERE automation_id = ?1 AND version = 2",
                [&a],
                |r| r.get::<_, String>(0),
            )
            .unwrap(),
    )
    .unwrap();
    let new_id = def["steps"][2]["id"].as_str().unwrap().to_string();
    assert_ne!(new_id, "s1", "s1 belonged to the removed welcome email");
    s.advance(3 * DAY);
    assert_eq!(
        s.messages_to("c1").len(),
        3,
        "the welcome email, then both emails after the delay"
    );
    let queued: i64 = s
        .conn
        .query_row(
            "SELECT COUNT(*) FROM outbox WHERE contact_id = 'c1' AND kind = 'message'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(queued, 3, "each message in the outbox under its own key");
    assert_eq!(s.enrollment(&a, "c1").0, "completed");
}

#[test]
fn delete_exits_active_contacts() {
    let mut s = Sim::new();
    let a = s.automation(five_steps(false));
    s.contact("c1", json!({}));
    let out = s
        .cmd(json!({"command": "automation.delete", "automation_id": a}))
        .unwrap();
    assert_eq!(out["deleted"], true);
    assert_eq!(out["enrollments_affected"], 1);
    assert_eq!(
        s.enrollment(&a, "c1").1.as_deref(),
        Some("automation_deleted")
    );
    s.advance(5 * DAY);
    assert_eq!(s.messages_to("c1").len(), 1);
    assert_eq!(
        s.cmd(json!({"command": "automation.activate", "automation_id": a}))
            .unwrap_err()
            .code(),
        crate::ErrorCode::NotFound
    );
}

/// The limit on a contact's properties holds for the record: partial
/// updates that each stay under it cannot add up past it.
#[test]
fn partial_updates_cannot_grow_a_contact_past_the_property_limit() {
    let mut s = Sim::new();
    s.contact("c1", json!({}));
    let keys = |from: usize, n: usize| -> Value {
        let mut m = serde_json::Map::new();
        m.insert("id".into(), json!("c1"));
        for i in from..from + n {
            m.insert(format!("field_{i}"), json!(i));
        }
        Value::Object(m)
    };
    s.push(json!({"type": "contact.upserted", "contact": keys(0, 150)}))
        .unwrap();
    let err = s
        .push(json!({"type": "contact.upserted", "contact": keys(150, 150)}))
        .unwrap_err();
    assert_eq!(err.code(), crate::ErrorCode::TooLarge, "{err}");
    let count: i64 = s
        .value("SELECT count(*) FROM contacts, json_each(contacts.props) WHERE contacts.id = 'c1'");
    assert!(
        count < 200,
        "the refused update changed the record ({count} properties)"
    );
}

/// A stale contact update's properties are ignored, but not an opt-out in
/// it: applied unless that channel changed after the update happened.
#[test]
fn an_opt_out_in_a_stale_update_is_applied_unless_the_channel_changed_since() {
    let mut s = Sim::new();
    let a = s.automation(
        json!({"name": "Nurture", "run_window": {"mode": "any_time"},
        "unenrollment": {"sms_opt_out": true}, "trigger": {"type": "contact_created"},
        "steps": [{"type": "delay", "amount": 7, "unit": "days"}]}),
    );
    s.contact("c1", json!({}));
    s.contact("c2", json!({}));
    s.advance(2 * HOUR);
    let ago = |s: &Sim, minutes: i64| crate::clock::to_rfc3339(s.now - minutes * MINUTE);
    let upsert = |s: &mut Sim, at: String, contact: Value| {
        s.push(json!({"type": "contact.upserted", "occurred_at": at, "contact": contact}))
            .unwrap()
    };
    let sub = |s: &Sim, id: &str, channel: &str| -> String {
        s.conn
            .query_row(
                &format!("SELECT json_extract(props, '$.{channel}_subscription') FROM contacts WHERE id = ?1"),
                [id],
                |r| r.get(0),
            )
            .unwrap()
    };
    // c1: a newer update (a name) arrives first, then the older opt-out.
    let (newer, older) = (ago(&s, 55), ago(&s, 60));
    upsert(&mut s, newer, json!({"id": "c1", "last_name": "Lee"}));
    let out = upsert(
        &mut s,
        older,
        json!({"id": "c1", "last_name": "Old", "sms_subscription": "unsubscribed"}),
    );
    assert_eq!(out, super::ingest::Outcome::Stale);
    assert_eq!(sub(&s, "c1", "sms"), "unsubscribed", "the opt-out was lost");
    let last_name: String =
        s.value("SELECT json_extract(props, '$.last_name') FROM contacts WHERE id = 'c1'");
    assert_eq!(last_name, "Lee", "the stale name was applied");
    assert_eq!(
        s.enrollment(&a, "c1"),
        ("exited".into(), Some("sms_opt_out".into()), false),
        "the SMS opt-out toggle did not see it"
    );
    // c2: the channel changed after the older opt-out happened (staff
    // recorded consent, in a newer update): the newer decision stands.
    let (first, newer, older) = (ago(&s, 30), ago(&s, 5), ago(&s, 10));
    upsert(
        &mut s,
        first,
        json!({"id": "c2", "email_subscription": "unsubscribed"}),
    );
    s.advance(MINUTE);
    s.push(
        json!({"type": "contact.upserted", "occurred_at": newer, "reason": "staff",
        "contact": {"id": "c2", "email_subscription": "subscribed"}}),
    )
    .unwrap();
    s.advance(MINUTE);
    upsert(
        &mut s,
        older,
        json!({"id": "c2", "email_subscription": "unsubscribed"}),
    );
    assert_eq!(sub(&s, "c2", "email"), "subscribed");
    assert_eq!(s.enrollment(&a, "c2").0, "active");
}

#[test]
fn ingestion_is_idempotent_and_ignores_stale_updates() {
    let mut s = Sim::new();
    let ev = json!({"event_id": "h1", "type": "contact.upserted", "occurred_at": "2026-01-05T10:00:00Z", "contact": {"id": "c1", "first_name": "Ann"}});
    assert_eq!(s.push(ev.clone()).unwrap(), super::ingest::Outcome::Applied);
    assert_eq!(s.push(ev).unwrap(), super::ingest::Outcome::Duplicate);
    let older = json!({"event_id": "h0", "type": "contact.upserted", "occurred_at": "2026-01-05T09:00:00Z", "contact": {"id": "c1", "first_name": "Annie"}});
    assert_eq!(s.push(older).unwrap(), super::ingest::Outcome::Stale);
    let name: String = s
        .conn
        .query_row(
            "SELECT json_extract(props, '$.first_name') FROM contacts WHERE id='c1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(name, "Ann");
    assert_eq!(s.count("contact_update_stale", None), 1);
    // An unknown contact is refused and changes nothing.
    let e = s
        .push(json!({"event_id": "h9", "type": "portal.activated", "contact_id": "ghost"}))
        .unwrap_err();
    assert_eq!(e.code(), crate::ErrorCode::NotFound);
    let seen: i64 = s
        .conn
        .query_row(
            "SELECT COUNT(*) FROM ingested_events WHERE event_id='h9'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(seen, 0);
}

#[test]
fn last_activity_moves_on_touch_and_reactivation_goal() {
    let mut s = Sim::new();
    s.contact("c1", json!({}));
    let a = s.automation(json!({"name": "Win-back", "goal": "patient_reactivation", "run_window": {"mode": "any_time"},
        "trigger": {"type": "inactive_for_days", "days": 90}, "steps": [{"type": "send_email", "subject": "We miss you", "body": "b"}, {"type": "delay", "amount": 20, "unit": "days"}]}));
    s.advance(92 * DAY);
    assert_eq!(s.count("enrolled", Some(&a)), 1);
    let last: i64 = s
        .conn
        .query_row(
            "SELECT last_activity FROM contacts WHERE id='c1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    // Queued on the 90th calendar day since the contact was created
    // (from its local midnight), two or three days before now.
    assert!(last > s.now - 3 * DAY, "the email touched the record");
    s.advance(HOUR);
    s.push(json!({"type": "page.visited", "contact_id": "c1", "page": "/book"}))
        .unwrap();
    assert!(
        s.enrollment(&a, "c1").2,
        "activity after >90 quiet days is a reactivation"
    );
}

/// Reactivation is measured as *Inactive for N days* measures the quiet:
/// in calendar days in the practice's zone. A patient last seen late on 4
/// January, whom the win-back enrolls on 4 April (the 90th day after), and
/// who books that morning, is reactivated; in elapsed time the booking
/// came 89 days and 10.5 hours after the visit, and the goal was never
/// reached.
#[test]
fn a_booking_on_the_day_a_win_back_enrolls_is_a_reactivation() {
    let mut s = Sim::new();
    let a = s.automation(json!({"name": "Win-back", "goal": "patient_reactivation", "run_window": {"mode": "any_time"},
        "trigger": {"type": "inactive_for_days", "days": 90}, "steps": [{"type": "delay", "amount": 30, "unit": "days"}]}));
    // 22:30 in New York on Sunday 4 January.
    s.push(json!({"type": "contact.upserted", "reason": "import", "last_activity_at": "2026-01-05T03:30:00Z",
        "contact": {"id": "c1", "email": "c1@example.com", "email_subscription": "subscribed"}}))
        .unwrap();
    // To 10:00 in New York on 4 April (EDT).
    s.advance(89 * DAY);
    assert_eq!(s.count("enrolled", Some(&a)), 1);
    assert!(!s.enrollment(&a, "c1").2);
    s.book("c1", "ap1");
    assert!(
        s.enrollment(&a, "c1").2,
        "back on the day the win-back counted 90 quiet days"
    );
}

#[test]
fn host_seeded_last_activity_lets_win_back_see_patients_quiet_at_import() {
    use crate::clock::to_rfc3339;
    let mut s = Sim::new();
    let a = s.automation(json!({"name": "Win-back", "goal": "patient_reactivation", "run_window": {"mode": "any_time"},
        "trigger": {"type": "inactive_for_days", "days": 90}, "steps": [{"type": "delay", "amount": 30, "unit": "days"}]}));
    let ago = |s: &Sim, days: i64| to_rfc3339(s.now - days * DAY);
    let last_activity = |s: &Sim, id: &str| -> i64 {
        s.conn
            .query_row(
                "SELECT last_activity FROM contacts WHERE id = ?1",
                [id],
                |r| r.get(0),
            )
            .unwrap()
    };
    let import = |s: &mut Sim, id: &str, last: Option<String>| {
        let mut ev = json!({"type": "contact.upserted", "reason": "import",
            "contact": {"id": id, "email": format!("{id}@example.com"), "email_subscription": "subscribed"}});
        if let Some(at) = last {
            ev["last_activity_at"] = json!(at);
        }
        s.push(ev).unwrap();
    };
    let quiet_since = ago(&s, 200);
    import(&mut s, "quiet", Some(quiet_since.clone()));
    let recent_since = ago(&s, 30);
    import(&mut s, "recent", Some(recent_since));
    import(&mut s, "plain", None);
    assert_eq!(
        last_activity(&s, "quiet"),
        parse_rfc3339(&quiet_since).unwrap(),
        "the host's last visit, not the import"
    );
    let imported_at = s.now;
    assert_eq!(last_activity(&s, "plain"), imported_at);

    s.advance(DAY + HOUR);
    let enrolled = |s: &Sim| {
        s.texts(
            "SELECT contact_id FROM enrollments WHERE automation_id = ?1 ORDER BY contact_id",
            &a,
        )
    };
    assert_eq!(enrolled(&s), ["quiet"], "quiet for 200 days at import");
    // Their own earlier activity is what reactivation measures: a booking
    // after 200 quiet days reaches the goal.
    s.book("quiet", "ap1");
    assert!(s.enrollment(&a, "quiet").2, "a reactivation");
    s.advance(60 * DAY);
    assert_eq!(
        enrolled(&s),
        ["quiet", "recent"],
        "crossed 90 days 60 days after import"
    );
    // The host reports the win-back email it delivered as Last Activity:
    // not the patient's own activity, so no reactivation.
    let now = to_rfc3339(s.now);
    s.push(
        json!({"type": "contact.upserted", "contact": {"id": "recent"}, "last_activity_at": now}),
    )
    .unwrap();
    assert_eq!(last_activity(&s, "recent"), s.now);
    assert!(
        !s.enrollment(&a, "recent").2,
        "no reactivation by Last Activity alone"
    );

    // On a known contact the host's value only moves Last Activity forward,
    // and a time ahead of the clock counts as now.
    let before = last_activity(&s, "plain");
    let older = ago(&s, 100);
    s.push(
        json!({"type": "contact.upserted", "contact": {"id": "plain"}, "last_activity_at": older}),
    )
    .unwrap();
    assert_eq!(last_activity(&s, "plain"), before);
    let ahead = to_rfc3339(s.now + 5 * DAY);
    s.push(
        json!({"type": "contact.upserted", "contact": {"id": "plain"}, "last_activity_at": ahead}),
    )
    .unwrap();
    assert_eq!(last_activity(&s, "plain"), s.now);

    // A stale update still carries the activity; a malformed time is refused.
    s.advance(HOUR);
    let now = to_rfc3339(s.now);
    s.push(json!({"type": "contact.upserted", "occurred_at": ago(&s, 400), "contact": {"id": "plain", "first_name": "Old"},
        "last_activity_at": now}))
        .unwrap();
    assert_eq!(last_activity(&s, "plain"), s.now);
    let err = s
        .push(json!({"type": "contact.upserted", "contact": {"id": "plain"}, "last_activity_at": "last spring"}))
        .unwrap_err();
    assert!(err.to_string().contains("last_activity_at"), "{err}");
    assert_eq!(imported_at + 61 * DAY + 2 * HOUR, s.now);
}

#[test]
fn goals_are_judged_when_the_activity_happened_not_when_it_arrived() {
    use crate::clock::to_rfc3339;
    let mut s = Sim::new();
    let a = s.automation(
        json!({"name": "Intake follow-up", "goal": "book_appointment", "goal_lookback_days": 7,
        "run_window": {"mode": "any_time"}, "trigger": {"type": "form_submitted"},
        "steps": [{"type": "delay", "amount": 20, "unit": "days"}]}),
    );
    let submit = |s: &mut Sim, id: &str| s.submit_form(id, &format!("f-{id}"));
    let book_at = |s: &mut Sim, id: &str, at: i64| {
        s.push(
            json!({"type": "appointment.booked", "occurred_at": to_rfc3339(at),
            "appointment": {"id": format!("ap-{id}"), "contact_id": id}}),
        )
        .unwrap();
    };
    s.contact("early", json!({}));
    s.contact("late", json!({}));
    let t0 = s.now;
    submit(&mut s, "early");
    submit(&mut s, "late");
    // "early" booked an hour before the form, pushed an hour after it: the
    // booking is not what the automation achieved.
    s.advance(HOUR);
    book_at(&mut s, "early", t0 - HOUR);
    // "late" booked on day 6, inside the 7-day lookback; the host pushed it
    // on day 9. It counts, on day 6.
    s.advance(9 * DAY);
    book_at(&mut s, "late", t0 + 6 * DAY);
    let goal_at = |s: &Sim, id: &str| -> Option<i64> {
        s.conn
            .query_row(
                "SELECT goal_reached_at FROM enrollments WHERE automation_id = ?1 AND contact_id = ?2",
                [a.as_str(), id],
                |r| r.get(0),
            )
            .unwrap()
    };
    assert_eq!(goal_at(&s, "early"), None);
    assert_eq!(goal_at(&s, "late"), Some(t0 + 6 * DAY));
    assert_eq!(s.count("goal_reached", Some(&a)), 1);
    // Logged at day 6 too: the engagement chart puts it on the day it happened.
    let logged = s.texts(
        "SELECT CAST(at AS TEXT) FROM events WHERE kind = 'goal_reached' AND automation_id = ?1",
        &a,
    );
    assert_eq!(logged, [(t0 + 6 * DAY).to_string()]);
}

#[test]
fn a_trigger_and_a_booking_pushed_late_together_still_convert() {
    use crate::clock::to_rfc3339;
    let mut s = Sim::new();
    let a = s.automation(
        json!({"name": "Intake follow-up", "goal": "book_appointment",
        "run_window": {"mode": "any_time"}, "trigger": {"type": "form_submitted"},
        "steps": [{"type": "delay", "amount": 2, "unit": "days"}]}),
    );
    s.contact("c1", json!({}));
    let t0 = s.now;
    s.advance(10 * MINUTE);
    // Form at t0, booking at t0 + 5 min, both pushed at t0 + 10 min.
    s.push(json!({"type": "form.submitted", "occurred_at": to_rfc3339(t0), "submission": {"id": "f1", "form_id": "intake",
        "form_name": "Intake", "contact_id": "c1", "answers": {}}}))
        .unwrap();
    s.push(
        json!({"type": "appointment.booked", "occurred_at": to_rfc3339(t0 + 5 * MINUTE),
        "appointment": {"id": "ap1", "contact_id": "c1"}}),
    )
    .unwrap();
    let (enrolled, goal): (i64, Option<i64>) = s
        .conn
        .query_row(
            "SELECT enrolled_at, goal_reached_at FROM enrollments WHERE automation_id = ?1",
            [&a],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(enrolled, t0, "dated from the trigger");
    assert_eq!(
        goal,
        Some(t0 + 5 * MINUTE),
        "the booking after the form converts"
    );
}

#[test]
fn a_contact_enrolled_twice_converts_once_per_automation() {
    let mut s = Sim::new();
    let a = s.automation(json!({"name": "Review request", "goal": "review_submitted",
        "run_window": {"mode": "any_time"}, "trigger": {"type": "form_submitted"},
        "steps": [{"type": "delay", "amount": 2, "unit": "days"}]}));
    s.contact("c1", json!({}));
    s.submit_form("c1", "f1");
    s.advance(3 * DAY); // the first run completed, its lookback still open
    s.submit_form("c1", "f2"); // enrolled again
    s.advance(DAY);
    s.push(json!({"type": "review.submitted", "review": {"id": "r1", "contact_id": "c1", "source": "google", "rating": 5}}))
        .unwrap();
    let goals: Vec<Option<i64>> = s
        .conn
        .prepare("SELECT goal_reached_at FROM enrollments WHERE automation_id = ?1 ORDER BY id")
        .unwrap()
        .query_map([&a], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        goals,
        [None, Some(s.now)],
        "the review converts the current run only"
    );
    assert_eq!(
        s.count("goal_reached", Some(&a)),
        1,
        "one review, one conversion"
    );
}

#[test]
fn a_reactivation_gap_ends_when_the_activity_happened_not_when_it_arrived() {
    use crate::clock::to_rfc3339;
    let mut s = Sim::new();
    let a = s.automation(
        json!({"name": "Quiet spell", "goal": "patient_reactivation", "goal_lookback_days": 200,
        "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
        "steps": [{"type": "delay", "amount": 150, "unit": "days"}]}),
    );
    s.contact("c1", json!({}));
    s.contact("c2", json!({}));
    let t0 = s.now;
    s.advance(95 * DAY);
    let visit = |s: &mut Sim, id: &str, at: i64| {
        s.push(json!({"type": "page.visited", "occurred_at": to_rfc3339(at), "contact_id": id, "page": "/book"}))
            .unwrap();
    };
    // c1 visited on day 80, pushed on day 95: an 80-day gap, no reactivation.
    visit(&mut s, "c1", t0 + 80 * DAY);
    assert!(!s.enrollment(&a, "c1").2);
    let engaged = s.texts(
        "SELECT CAST(last_engaged_at AS TEXT) FROM contacts WHERE id = ?1",
        "c1",
    );
    assert_eq!(engaged, [(t0 + 80 * DAY).to_string()]);
    // c2 visited on day 91: a 91-day gap ends, on day 91.
    visit(&mut s, "c2", t0 + 91 * DAY);
    assert!(s.enrollment(&a, "c2").2);
}

#[test]
fn effects_have_deterministic_keys() {
    let run = || {
        let mut s = Sim::new();
        s.automation(five_steps(false));
        s.contact("c1", json!({}));
        s.contact("c2", json!({}));
        s.advance(6 * DAY);
        s.effects
            .iter()
            .map(|e| (e.key.clone(), e.payload.to_string()))
            .collect::<Vec<_>>()
    };
    let (a, b) = (run(), run());
    assert_eq!(a.len(), 6);
    assert_eq!(a, b);
    let keys: std::collections::HashSet<_> = a.iter().map(|(k, _)| k).collect();
    assert_eq!(keys.len(), 6);
}

#[test]
fn unsubscribed_channel_is_suppressed_and_counted_failed() {
    let mut s = Sim::new();
    let a = s.automation(five_steps(false));
    s.contact("c1", json!({"email_subscription": "unsubscribed"}));
    assert_eq!(s.messages_to("c1").len(), 0);
    assert_eq!(s.count("message_suppressed", Some(&a)), 1);
    assert_eq!(s.count("step_failed", Some(&a)), 1);
}

#[test]
fn each_goal_fires_on_its_own_event_only() {
    let cases: [(&str, Value); 5] = [
        (
            "rebook_appointment",
            json!({"type": "appointment.booked", "appointment": {"id": "ap2", "contact_id": "c1"}}),
        ),
        (
            "review_submitted",
            json!({"type": "review.submitted", "review": {"id": "r1", "contact_id": "c1", "source": "google", "rating": 5}}),
        ),
        (
            "verification_complete",
            json!({"type": "insurance.verification", "contact_id": "c1", "status": "verified"}),
        ),
        (
            "portal_activated",
            json!({"type": "portal.activated", "contact_id": "c1"}),
        ),
        (
            "engagement",
            json!({"type": "page.visited", "contact_id": "c1", "page": "/services"}),
        ),
    ];
    for (goal, event) in cases {
        let mut s = Sim::new();
        // c1 is already a patient (booked before enrolling).
        s.contact("c1", json!({}));
        s.book("c1", "ap1");
        let a = s.automation(json!({"name": goal, "goal": goal, "run_window": {"mode": "any_time"},
            "trigger": {"type": "property_changed", "property": "tags"}, "steps": [{"type": "delay", "amount": 1, "unit": "days"}]}));
        s.push(json!({"type": "contact.upserted", "contact": {"id": "c1", "tags": ["enroll"]}}))
            .unwrap();
        // Events of the other goals do not count.
        for (other, ev) in cases_other(goal) {
            s.push(ev).unwrap();
            assert!(!s.enrollment(&a, "c1").2, "{goal} reached by {other}");
        }
        s.push(event).unwrap();
        assert!(s.enrollment(&a, "c1").2, "{goal} not reached");
        assert_eq!(s.count("goal_reached", Some(&a)), 1);
    }
}

#[test]
fn rebook_counts_an_existing_patients_booking_not_a_first_one_reported_after_the_status() {
    let mut s = Sim::new();
    let goal = |s: &mut Sim, goal: &str| {
        s.automation(
            json!({"name": goal, "goal": goal, "run_window": {"mode": "any_time"},
            "trigger": {"type": "property_changed", "property": "tags"},
            "steps": [{"type": "delay", "amount": 1, "unit": "days"}]}),
        )
    };
    let rebook = goal(&mut s, "rebook_appointment");
    let book = goal(&mut s, "book_appointment");
    let enroll = |s: &mut Sim, id: &str, extra: Value| {
        s.contact(id, extra);
        s.push(json!({"type": "contact.upserted", "contact": {"id": id, "tags": ["enroll"]}}))
            .unwrap();
    };
    // The host makes its Lead a Patient, then reports the booking that did it.
    enroll(&mut s, "flipped", json!({}));
    s.push(json!({"type": "contact.upserted", "contact": {"id": "flipped", "status": "patient"}}))
        .unwrap();
    assert!(s.enrollment(&book, "flipped").2);
    s.book("flipped", "ap1");
    assert!(
        !s.enrollment(&rebook, "flipped").2,
        "a first booking counted as a rebook"
    );
    s.book("flipped", "ap2");
    assert!(
        s.enrollment(&rebook, "flipped").2,
        "the second booking is a rebook"
    );
    // Imported as a patient, with no visit on record here: any booking is another.
    enroll(&mut s, "imported", json!({"status": "patient"}));
    s.book("imported", "ap3");
    assert!(s.enrollment(&rebook, "imported").2);
    // Cancelled, then that booking arriving late: booked once.
    enroll(&mut s, "late", json!({}));
    s.advance(10 * MINUTE);
    let at = |s: &Sim, ago: i64| crate::clock::to_rfc3339(s.now - ago);
    let appointment = json!({"id": "ap4", "contact_id": "late"});
    s.push(json!({"type": "appointment.cancelled", "occurred_at": at(&s, 0), "appointment": appointment}))
        .unwrap();
    s.push(json!({"type": "appointment.booked", "occurred_at": at(&s, MINUTE), "appointment": appointment}))
        .unwrap();
    assert!(s.enrollment(&book, "late").2);
    assert!(
        !s.enrollment(&rebook, "late").2,
        "a late first booking counted as a rebook"
    );
    // The same visit booked again after its cancellation is another booking.
    s.push(json!({"type": "appointment.booked", "appointment": appointment}))
        .unwrap();
    assert!(s.enrollment(&rebook, "late").2);
    // Made a Patient by the host a month ago (a visit it never reported):
    // an existing patient.
    s.contact("walk_in", json!({}));
    s.push(json!({"type": "contact.upserted", "contact": {"id": "walk_in", "status": "patient"}}))
        .unwrap();
    s.advance(30 * DAY);
    s.push(json!({"type": "contact.upserted", "contact": {"id": "walk_in", "tags": ["enroll"]}}))
        .unwrap();
    s.book("walk_in", "ap5");
    assert!(
        s.enrollment(&rebook, "walk_in").2,
        "a month-old flip made a first booking"
    );
    // A visit first heard of at its completion or reschedule was booked at
    // a time nobody told: perhaps before enrolling, so no Rebook. Its
    // booking heard of later is old news too; a new visit booked is one.
    enroll(&mut s, "undated", json!({"status": "patient"}));
    for (kind, visit) in [
        ("completed", "ap6"),
        ("rescheduled", "ap7"),
        ("booked", "ap7"),
    ] {
        s.push(json!({"type": format!("appointment.{kind}"), "appointment": {"id": visit, "contact_id": "undated"}}))
            .unwrap();
        assert!(!s.enrollment(&rebook, "undated").2, "{kind} {visit}");
    }
    s.book("undated", "ap8");
    assert!(s.enrollment(&rebook, "undated").2);
    assert_eq!(s.count("goal_reached", Some(&rebook)), 5);
}

/// An automation setting Status to Patient books nothing: it fires the
/// Status changed trigger (the record flipped) but reaches neither Book
/// appointment nor the no-goal conversion, and the contact's first real
/// booking afterwards is their first (Book), not a Rebook.
#[test]
fn a_status_set_by_an_automation_is_no_booking_and_the_first_real_one_is_not_a_rebook() {
    let mut s = Sim::new();
    let measured = |s: &mut Sim, goal: Value| {
        s.automation(
            json!({"name": "Measured", "goal": goal, "run_window": {"mode": "any_time"},
            "trigger": {"type": "property_changed", "property": "tags"},
            "steps": [{"type": "delay", "amount": 1, "unit": "days"}]}),
        )
    };
    let book = measured(&mut s, json!("book_appointment"));
    let rebook = measured(&mut s, json!("rebook_appointment"));
    let no_goal = measured(&mut s, Value::Null);
    let flips = s.automation(
        json!({"name": "On the flip", "run_window": {"mode": "any_time"},
        "trigger": {"type": "status_changed_to_patient"},
        "steps": [{"type": "delay", "amount": 1, "unit": "days"}]}),
    );
    s.automation(
        json!({"name": "Mark as patient", "run_window": {"mode": "any_time"},
        "trigger": {"type": "property_changed", "property": "owner"},
        "steps": [{"type": "set_property", "property": "status", "value": "patient"}]}),
    );
    s.contact("c1", json!({}));
    s.push(json!({"type": "contact.upserted", "contact": {"id": "c1", "tags": ["enroll"]}}))
        .unwrap();
    s.push(json!({"type": "contact.upserted", "contact": {"id": "c1", "owner": {"id": "s2", "name": "Sam"}}}))
        .unwrap();
    let by = s.texts(
        "SELECT json_extract(detail, '$.by') FROM events WHERE kind = 'status_changed' AND contact_id = ?1",
        "c1",
    );
    assert_eq!(by, ["automation"], "the flip is logged as the automation's");
    assert_eq!(
        s.enrollment(&flips, "c1").0,
        "active",
        "the flip fires its trigger"
    );
    for (a, goal) in [(&book, "book"), (&no_goal, "no goal")] {
        assert!(!s.enrollment(a, "c1").2, "{goal} reached without a booking");
    }
    s.book("c1", "ap1");
    assert!(
        s.enrollment(&book, "c1").2,
        "the first booking is not a Book"
    );
    assert!(
        s.enrollment(&no_goal, "c1").2,
        "the first booking is not a conversion"
    );
    assert!(
        !s.enrollment(&rebook, "c1").2,
        "the first booking counted as a rebook"
    );
    assert_eq!(
        s.count("enrolled", Some(&flips)),
        1,
        "the trigger fired again"
    );
    s.book("c1", "ap2");
    assert!(
        s.enrollment(&rebook, "c1").2,
        "the second booking is a rebook"
    );
}

/// Book appointment and no goal count the same Lead → Patient flip:
/// switching between them keeps the conversions, and Goal met turned on
/// (or a goal brought back) sends the contacts who reached it out.
#[test]
fn book_and_no_goal_share_conversions_and_goal_met_turned_on_exits_who_reached_it() {
    let mut s = Sim::new();
    let def = |goal: Value, goal_met: bool| {
        json!({"name": "Nurture", "goal": goal, "unenrollment": {"goal_met": goal_met},
            "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
            "steps": [{"id": "wait", "type": "delay", "amount": 7, "unit": "days"}]})
    };
    let a = s.automation(def(json!("book_appointment"), false));
    s.contact("c1", json!({}));
    s.book("c1", "ap1");
    let update = |s: &mut Sim, def: Value| {
        s.cmd(json!({"command": "automation.update", "automation_id": a, "definition": def}))
            .unwrap();
    };
    update(&mut s, def(Value::Null, false));
    assert!(s.enrollment(&a, "c1").2, "no goal lost the flip");
    update(&mut s, def(json!("engagement"), false));
    assert!(!s.enrollment(&a, "c1").2);
    assert_eq!(s.enrollment(&a, "c1").0, "active");
    update(&mut s, def(json!("book_appointment"), true));
    assert_eq!(
        s.enrollment(&a, "c1"),
        ("exited".into(), Some("goal_met".into()), true)
    );
}

/// A Birthday trigger changed away and back starts afresh: the days it
/// was another trigger are not caught up.
#[test]
fn a_birthday_trigger_brought_back_does_not_catch_up_the_days_it_was_away() {
    let mut s = Sim::new();
    let def = |trigger: Value| {
        json!({"name": "Birthday", "run_window": {"mode": "any_time"}, "trigger": trigger,
            "steps": [{"type": "send_email", "subject": "Happy birthday", "body": "b"}]})
    };
    let birthday = json!({"type": "birthday", "offset": "on_the_day"});
    let a = s.automation(def(birthday.clone()));
    s.advance(DAY); // Tuesday's evaluation ran
    s.cmd(json!({"command": "automation.update", "automation_id": a,
        "definition": def(json!({"type": "contact_created"}))}))
        .unwrap();
    s.advance(3 * DAY);
    // Friday: back to Birthday; c1 was born on Thursday, January 8.
    s.cmd(json!({"command": "automation.update", "automation_id": a, "definition": def(birthday)}))
        .unwrap();
    s.contact("c1", json!({"dob": "1990-01-08"}));
    s.advance(2 * DAY);
    assert_eq!(
        s.count("enrolled", Some(&a)),
        0,
        "a day it was not a Birthday trigger"
    );
}

/// An edit that changes the goal counts the new goal: reaching the old one
/// does not block it, and changing back finds the old reach in the log.
#[test]
fn a_changed_goal_is_reached_anew_and_the_old_reach_comes_back_with_it() {
    let mut s = Sim::new();
    let def = |goal: &str| {
        json!({"name": "Nurture", "goal": goal, "run_window": {"mode": "any_time"},
            "trigger": {"type": "property_changed", "property": "tags"},
            "steps": [{"id": "wait", "type": "delay", "amount": 7, "unit": "days"}]})
    };
    let a = s.automation(def("engagement"));
    s.contact("c1", json!({}));
    s.push(json!({"type": "contact.upserted", "contact": {"id": "c1", "tags": ["enroll"]}}))
        .unwrap();
    s.submit_form("c1", "f1");
    assert!(s.enrollment(&a, "c1").2);
    let update = |s: &mut Sim, goal: &str| {
        s.cmd(json!({"command": "automation.update", "automation_id": a, "definition": def(goal)}))
            .unwrap();
    };
    update(&mut s, "book_appointment");
    assert!(
        !s.enrollment(&a, "c1").2,
        "the engagement reached the new goal"
    );
    s.advance(DAY);
    s.book("c1", "ap1");
    assert!(
        s.enrollment(&a, "c1").2,
        "the booking did not reach the new goal"
    );
    let reached = |s: &Sim, goal: &str| {
        s.conn
            .query_row(
                "SELECT count(*) FROM events WHERE kind = 'goal_reached' AND json_extract(detail, '$.goal') = ?1",
                [goal],
                |r| r.get::<_, i64>(0),
            )
            .unwrap()
    };
    assert_eq!(
        (reached(&s, "engagement"), reached(&s, "book_appointment")),
        (1, 1)
    );
    update(&mut s, "engagement");
    let at: Option<i64> = s
        .conn
        .query_row("SELECT goal_reached_at FROM enrollments", [], |r| r.get(0))
        .unwrap();
    assert_eq!(at, Some(s.now - DAY), "the engagement's own time");
}

/// Events that must not satisfy `goal` (none of them is its own event).
fn cases_other(goal: &str) -> Vec<(&'static str, Value)> {
    // The host re-sending ap1, booked before enrolling, under a new event id.
    let mut v = vec![(
        "ap1 booked again",
        json!({"type": "appointment.booked", "appointment": {"id": "ap1", "contact_id": "c1"}}),
    )];
    if goal != "verification_complete" {
        v.push((
            "verification_pending",
            json!({"type": "insurance.verification", "contact_id": "c1", "status": "pending"}),
        ));
    }
    if goal != "engagement" && goal != "rebook_appointment" {
        v.push(("cancellation", json!({"type": "appointment.cancelled", "appointment": {"id": "ap1", "contact_id": "c1"}})));
    }
    v
}

#[test]
fn inbound_sms_matches_the_number_whatever_its_formatting() {
    let mut s = Sim::new();
    s.contact("c1", json!({"phone": "+1 (617) 555-0123"}));
    s.contact("c2", json!({"phone": "617.555.0199"}));
    s.push(json!({"type": "sms.received", "from": "6175550123", "body": "STOP"}))
        .unwrap();
    s.push(json!({"type": "sms.received", "from": "+16175550199", "body": "STOP"}))
        .unwrap();
    let unsubscribed: i64 = s
        .conn
        .query_row(
            "SELECT COUNT(*) FROM contacts WHERE sms_subscription = 'unsubscribed'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(unsubscribed, 2);
    let e = s
        .push(json!({"type": "sms.received", "from": "+16175550100", "body": "hi"}))
        .unwrap_err();
    assert_eq!(e.code(), crate::ErrorCode::NotFound);
}

#[test]
fn consent_suppresses_with_reasons_and_care_bypass_reaches_unknown_only() {
    let mut s = Sim::new();
    let steps = |category: &str, bypass: bool| json!([{"id": "m", "type": "send_sms", "message": "Your visit is tomorrow", "category": category, "bypass_preferences": bypass}]);
    let mk = s.automation(json!({"name": "Promo", "run_window": {"mode": "any_time"}, "trigger": {"type": "form_submitted"}, "steps": steps("marketing", false)}));
    let care = s.automation(json!({"name": "Reminder", "run_window": {"mode": "any_time"}, "trigger": {"type": "form_submitted"}, "steps": steps("care", false)}));
    let bypass = s.automation(json!({"name": "Reminder+", "run_window": {"mode": "any_time"}, "trigger": {"type": "form_submitted"}, "steps": steps("care", true)}));
    // Marketing with a bypass is refused at save.
    let e = s.cmd(json!({"command": "automation.create", "definition": {"name": "x", "trigger": {"type": "form_submitted"}, "steps": steps("marketing", true)}})).unwrap_err();
    assert!(e.to_string().contains("only to care"), "{e}");
    s.contact("unknown", json!({"sms_subscription": "unknown"}));
    s.contact("stopped", json!({"sms_subscription": "unsubscribed"}));
    for c in ["unknown", "stopped"] {
        s.push(json!({"type": "form.submitted", "submission": {"id": format!("f-{c}"), "form_id": "x", "form_name": "X", "contact_id": c}})).unwrap();
    }
    let reasons: Vec<(String, String, String)> = s
        .conn
        .prepare("SELECT automation_id, contact_id, json_extract(detail, '$.reason') FROM events WHERE kind = 'message_suppressed' ORDER BY automation_id, contact_id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let r = |a: &str, c: &str, why: &str| (a.to_string(), c.to_string(), why.to_string());
    let mut expected = vec![
        r(&mk, "stopped", "unsubscribed"),
        r(&mk, "unknown", "unknown_consent"),
        r(&care, "stopped", "unsubscribed"),
        r(&care, "unknown", "unknown_consent"),
        r(&bypass, "stopped", "unsubscribed"),
    ];
    expected.sort();
    assert_eq!(reasons, expected);
    let sent: Vec<_> = s
        .effects
        .iter()
        .filter(|e| e.kind == crate::outbox::EffectKind::Message)
        .collect();
    assert_eq!(
        sent.len(),
        1,
        "only the care message with bypass to the unknown-consent number"
    );
    assert_eq!(
        (
            sent[0].contact_id.as_str(),
            sent[0].payload["category"].as_str()
        ),
        ("unknown", Some("care"))
    );
}

#[test]
fn a_reply_from_a_family_phone_is_the_texted_persons() {
    let mut s = Sim::new();
    let texts = s.automation(json!({"name": "Texts", "run_window": {"mode": "any_time"},
        "trigger": {"type": "form_submitted"},
        "steps": [{"id": "ask", "type": "send_sms", "message": "Can you make Tuesday?"}]}));
    let replies = s.automation(json!({"name": "Replies", "run_window": {"mode": "any_time"}, "trigger": {"type": "sms_reply"}, "steps": []}));
    // Mom's record comes first (by id, at the same instant); only her son
    // is texted.
    s.contact("mom", json!({"phone": "+16175550123"}));
    s.contact("son", json!({"phone": "(617) 555-0123"}));
    s.contact("other", json!({"phone": "+16175550188"}));
    let form = |who: &str, id: &str| json!({"type": "form.submitted", "submission": {"id": id, "form_id": "f1", "form_name": "Intake", "contact_id": who, "answers": {}}});
    s.push(form("son", "sub1")).unwrap();
    s.push(form("other", "sub2")).unwrap();
    s.hand_over();
    // The son's text soft-bounces and is sent again (`-resend1`, named
    // below).
    let first = s.messages_to("son")[0].key.clone();
    s.push(json!({"type": "delivery.receipt", "message_key": first, "status": "bounced", "bounce": "soft"}))
        .unwrap();
    s.advance(HOUR);
    s.hand_over();
    let who_replied = |s: &Sim| -> Vec<(String, Option<String>)> {
        s.conn
            .prepare("SELECT contact_id, automation_id FROM events WHERE kind LIKE 'message_replied%' ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    // Without the message it answers: the one texted last at the number.
    s.push(json!({"type": "sms.received", "from": "+1 617 555 0123", "body": "Sounds good"}))
        .unwrap();
    assert_eq!(who_replied(&s), [("son".to_string(), Some(texts.clone()))]);
    assert_eq!(s.count("enrolled", Some(&replies)), 1);
    // Naming the message it answers: that message's recipient, even when
    // another on the number was texted since.
    let asked = s.messages_to("son")[0].key.clone();
    s.push(form("mom", "sub3")).unwrap();
    s.hand_over();
    s.push(json!({"type": "sms.received", "from": "617-555-0123", "body": "Yes, Tuesday", "in_reply_to": asked}))
        .unwrap();
    assert_eq!(who_replied(&s)[1], ("son".to_string(), Some(texts.clone())));
    s.push(json!({"type": "sms.received", "from": "617-555-0123", "body": "And me"}))
        .unwrap();
    assert_eq!(who_replied(&s)[2], ("mom".to_string(), Some(texts.clone())));
    // Staff preview a text with the son's data on their own phone: a test
    // send reached staff, not him, and does not make him the one texted
    // last.
    s.cmd(json!({"command": "template.create", "template_id": "t1", "template": {"channel": "sms", "name": "T", "message": "Hi {{firstname}}"}}))
        .unwrap();
    s.cmd(json!({"command": "template.test_send", "template_id": "t1", "to": "+16175550999", "contact_id": "son"}))
        .unwrap();
    s.push(json!({"type": "sms.received", "from": "617-555-0123", "body": "Thanks"}))
        .unwrap();
    assert_eq!(who_replied(&s)[3], ("mom".to_string(), Some(texts)));
    // A number no one was texted at goes to the one created first (at
    // the same instant, the first by id).
    s.contact("sibling", json!({"phone": "+16175550177"}));
    s.contact("cousin", json!({"phone": "617 555 0177"}));
    s.push(json!({"type": "sms.received", "from": "+16175550177", "body": "Who is this?"}))
        .unwrap();
    assert_eq!(who_replied(&s)[4], ("cousin".to_string(), None));
    // Naming the message by the key a sender adapter gave its provider for
    // a resend after a soft bounce: still that message's recipient.
    s.push(
        json!({"type": "sms.received", "from": "617-555-0123", "body": "Tuesday it is",
        "in_reply_to": crate::outbox::send_key(&asked, 1)}),
    )
    .unwrap();
    assert_eq!(who_replied(&s)[5].0, "son");
}

/// Two automations texting each contact: "Welcome" when created, "Thanks"
/// when they submit a form. Returns the id of "Welcome".
fn welcome_and_thanks_texts(s: &mut Sim) -> String {
    let welcome = s.automation(
        json!({"name": "Welcome", "run_window": {"mode": "any_time"},
        "trigger": {"type": "contact_created"},
        "steps": [{"id": "hi", "type": "send_sms", "message": "Welcome to {{practice}}"}]}),
    );
    s.automation(json!({"name": "Thanks", "run_window": {"mode": "any_time"},
        "trigger": {"type": "form_submitted"},
        "steps": [{"id": "ty", "type": "send_sms", "message": "Thanks for your form"}]}));
    welcome
}

/// A text still in the outbox (held by a sending limit or a paused
/// automation, or waiting to be offered again) has reached nobody: a reply
/// or a STOP that does not name the message it answers answers the newest
/// text its sender took.
#[test]
fn a_reply_without_the_message_it_answers_is_to_a_text_that_was_sent() {
    let mut s = Sim::new();
    let welcome = welcome_and_thanks_texts(&mut s);
    s.contact("c1", json!({"phone": "+16175550123"}));
    s.hand_over();
    let sent = s.messages_to("c1")[0].key.clone();
    s.advance(HOUR);
    s.submit_form("c1", "sub1");
    let held = s.messages_to("c1")[1].key.clone();
    assert_ne!(sent, held);
    let answered = |s: &Sim, kind: &str| -> (Option<String>, Option<String>) {
        s.conn
            .query_row(
                "SELECT message_key, automation_id FROM events WHERE kind = ?1",
                [kind],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap()
    };
    s.push(json!({"type": "sms.received", "from": "+16175550123", "body": "Sounds good"}))
        .unwrap();
    assert_eq!(
        answered(&s, "message_replied"),
        (Some(sent.clone()), Some(welcome.clone())),
        "the text that went, not the one held"
    );
    s.push(json!({"type": "sms.received", "from": "+16175550123", "body": "STOP"}))
        .unwrap();
    assert_eq!(answered(&s, "sms_opt_out").0, Some(sent));
    assert_eq!(
        s.value::<i64>("SELECT COUNT(*) FROM events WHERE kind = 'message_delivered'"),
        1,
        "implied for the text that went only"
    );
}

/// Of two texts sent, a reply answers the one handed over last, not the
/// one created last: a text held from 09:00 (a sending limit) and sent at
/// 11:00 came after one created at 10:00 and sent at once.
#[test]
fn a_reply_answers_the_text_handed_over_last() {
    let mut s = Sim::new();
    welcome_and_thanks_texts(&mut s);
    s.contact("c1", json!({"phone": "+16175550123"}));
    s.advance(HOUR);
    s.submit_form("c1", "sub1");
    let (held, sent) = (
        s.messages_to("c1")[0].key.clone(),
        s.messages_to("c1")[1].key.clone(),
    );
    s.accept(&sent);
    s.advance(HOUR);
    s.accept(&held);
    s.push(json!({"type": "sms.received", "from": "+16175550123", "body": "Sounds good"}))
        .unwrap();
    let answered: String = s.value("SELECT message_key FROM events WHERE kind = 'message_replied'");
    assert_eq!(answered, held);
}

#[test]
fn stop_unsubscribes_the_number_once_and_yes_is_no_consent() {
    let mut s = Sim::new();
    let replies = s.automation(json!({"name": "Replies", "run_window": {"mode": "any_time"}, "trigger": {"type": "sms_reply"}, "steps": []}));
    // A parent and a child share the family phone; a third contact has
    // never said anything about SMS.
    s.contact("parent", json!({"phone": "+16175550123"}));
    s.contact("child", json!({"phone": "(617) 555-0123"}));
    s.contact("quiet", json!({"sms_subscription": null}));
    s.push(json!({"type": "sms.received", "from": "+1 617 555 0123", "body": "STOP"}))
        .unwrap();
    // Again, under a new event id: nothing changes, nothing more is sent.
    s.push(json!({"type": "sms.received", "from": "+1 617 555 0123", "body": "stop"}))
        .unwrap();
    let sms: Vec<(String, String)> = s
        .conn
        .prepare(
            "SELECT id, sms_subscription FROM contacts WHERE id IN ('parent', 'child') ORDER BY id",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        sms,
        [
            ("child".to_string(), "unsubscribed".to_string()),
            ("parent".to_string(), "unsubscribed".to_string())
        ],
        "the number said stop"
    );
    let confirmations = s
        .effects
        .iter()
        .filter(|e| e.payload["purpose"] == "stop_confirmation")
        .count();
    assert_eq!(confirmations, 1, "one confirmation, to the sender");
    assert_eq!(s.count("sms_opt_out", None), 2, "one opt-out per person");
    // "Yes" from a contact who never consented answers a question.
    s.push(json!({"type": "sms.received", "contact_id": "quiet", "body": "Yes!"}))
        .unwrap();
    let quiet: Option<String> = s
        .conn
        .query_row(
            "SELECT sms_subscription FROM contacts WHERE id = 'quiet'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_ne!(
        quiet.as_deref(),
        Some("subscribed"),
        "no marketing consent from YES"
    );
    assert_eq!(s.count("message_replied", None), 1, "it is a reply");
    assert_eq!(
        s.count("enrolled", Some(&replies)),
        0,
        "to no marketing SMS: the trigger is replies to marketing SMS"
    );
}

fn sms_of(s: &Sim, id: &str) -> String {
    s.conn
        .query_row(
            "SELECT sms_subscription FROM contacts WHERE id = ?1",
            [id],
            |r| r.get(0),
        )
        .unwrap()
}

#[test]
fn a_stop_stays_with_the_number_until_it_says_start() {
    let mut s = Sim::new();
    s.automation(json!({"name": "Hello", "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
        "steps": [{"id": "hi", "type": "send_sms", "message": "Hi {{firstname}}"}]}));
    // A STOP from a number no contact has yet is kept, not refused.
    s.push(json!({"type": "sms.received", "from": "+1 617 555 0199", "body": "STOP"}))
        .unwrap();
    // The host then pushes a patient with that number, "subscribed".
    s.contact("late", json!({"phone": "(617) 555-0199"}));
    assert_eq!(sms_of(&s, "late"), "unsubscribed", "the number said STOP");
    assert!(
        s.messages_to("late").is_empty(),
        "no SMS to a stopped number"
    );
    // A contact whose number changes to it is unsubscribed too.
    s.contact("mover", json!({"phone": "+16175550150"}));
    assert_eq!(sms_of(&s, "mover"), "subscribed");
    s.push(json!({"type": "contact.upserted", "contact": {"id": "mover", "phone": "6175550199"}}))
        .unwrap();
    assert_eq!(sms_of(&s, "mover"), "unsubscribed");
    // A non-keyword text from an unknown number is still refused.
    assert!(
        s.push(json!({"type": "sms.received", "from": "+16175550177", "body": "hello"}))
            .is_err()
    );
    // START lifts it: both contacts of the number are subscribed again,
    // and a contact who gets the number afterwards is not stopped.
    s.push(json!({"type": "sms.received", "from": "+16175550199", "body": "START"}))
        .unwrap();
    assert_eq!(sms_of(&s, "late"), "subscribed");
    assert_eq!(sms_of(&s, "mover"), "subscribed");
    s.contact("after", json!({"phone": "+16175550199"}));
    assert_eq!(sms_of(&s, "after"), "subscribed");
    // START from an unknown number that never said STOP changes nothing.
    s.push(json!({"type": "sms.received", "from": "+16175550188", "body": "START"}))
        .unwrap();
    s.contact("stranger", json!({"phone": "+16175550188"}));
    assert_eq!(sms_of(&s, "stranger"), "subscribed");
}

/// Outside North America a number's national and E.164 forms end in
/// different digits (`0412 345 678`, `+61 412 345 678`): a STOP and a
/// START match the contact's number in whichever form the host stored it.
#[test]
fn a_stop_matches_the_number_in_either_form_outside_north_america() {
    let mut s = Sim::new();
    let mut doc = serde_json::to_value(&s.settings.doc).unwrap();
    doc["sms"]["default_region"] = json!("AU");
    s.cmd(json!({"command": "settings.update", "settings": doc}))
        .unwrap();
    s.contact("national", json!({"phone": "0412 345 678"}));
    s.contact("e164", json!({"phone": "+61 412 345 678"}));
    s.contact("other", json!({"phone": "0412 345 679"}));
    // The reply comes from the E.164 number the texts went to.
    s.push(json!({"type": "sms.received", "from": "+61412345678", "body": "STOP"}))
        .unwrap();
    assert_eq!(sms_of(&s, "national"), "unsubscribed");
    assert_eq!(sms_of(&s, "e164"), "unsubscribed");
    assert_eq!(sms_of(&s, "other"), "subscribed");
    // A contact pushed later with the number, in either form, is stopped.
    s.contact("later", json!({"phone": "0412345678"}));
    assert_eq!(sms_of(&s, "later"), "unsubscribed");
    // START in the national form lifts it for every form.
    s.push(json!({"type": "sms.received", "from": "0412 345 678", "body": "START"}))
        .unwrap();
    for c in ["national", "e164", "later"] {
        assert_eq!(sms_of(&s, c), "subscribed", "{c}");
    }
    s.contact("after", json!({"phone": "+61412345678"}));
    assert_eq!(sms_of(&s, "after"), "subscribed");
}

#[test]
fn the_hosts_sync_cannot_undo_a_persons_own_opt_out() {
    let mut s = Sim::new();
    s.contact("c1", json!({"phone": "+16175550123"}));
    s.contact("sibling", json!({"phone": "+16175550123"}));
    s.contact("c2", json!({}));
    s.push(json!({"type": "sms.received", "from": "+16175550123", "body": "STOP"}))
        .unwrap();
    // The host opted c2 out of SMS itself: the host may undo that.
    s.push(json!({"type": "contact.upserted", "contact": {"id": "c2", "sms_subscription": "unsubscribed"}}))
        .unwrap();
    // The nightly sync pushes the EHR's stale "subscribed" for everyone.
    let c2_phone: String = s
        .conn
        .query_row("SELECT phone FROM contacts WHERE id = 'c2'", [], |r| {
            r.get(0)
        })
        .unwrap();
    for (id, phone) in [("c1", "+16175550123".to_string()), ("c2", c2_phone)] {
        s.push(json!({"type": "contact.upserted", "mode": "full",
            "contact": {"id": id, "first_name": "Pat", "phone": phone, "sms_subscription": "subscribed"}}))
            .unwrap();
    }
    assert_eq!(sms_of(&s, "c1"), "unsubscribed", "their STOP stands");
    assert_eq!(s.count("subscription_kept", None), 1);
    assert_eq!(
        sms_of(&s, "c2"),
        "subscribed",
        "the host's own opt-out is the host's"
    );
    let name: String = s
        .conn
        .query_row(
            "SELECT json_extract(props, '$.first_name') FROM contacts WHERE id = 'c1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(name, "Pat", "the rest of the update applies");
    // Staff recording the person's consent may lift it.
    s.push(json!({"type": "contact.upserted", "reason": "staff", "contact": {"id": "c1", "sms_subscription": "subscribed"}}))
        .unwrap();
    assert_eq!(sms_of(&s, "c1"), "subscribed");
    // START restores the sibling stopped by the shared number.
    s.push(json!({"type": "sms.received", "contact_id": "c1", "body": "START"}))
        .unwrap();
    assert_eq!(sms_of(&s, "sibling"), "subscribed");
}

/// In an email's HTML too: a link whose target is a contact's value
/// (`href="{{website}}"`) is left as the contact typed it; the links the
/// template wrote (a placeholder in their query, `&amp;` in their source)
/// are wrapped.
#[test]
fn an_emails_links_from_contact_values_are_not_tracked() {
    let mut s = Sim::new();
    s.contact("c0", json!({"website": "https://example.org"}));
    s.automation(json!({"name": "Site", "run_window": {"mode": "any_time"}, "trigger": {"type": "form_submitted"},
        "steps": [{"type": "send_email", "subject": "Hi", "body":
            "<a href=\"{{website}}\">your site</a> <a href=\"https://riverside.example/book?a=1&amp;b=2\">book</a> \
             <a href='https://riverside.example/p?who={{lastname}}'>you</a>"}]}));
    s.contact("c1", json!({"website": "https://evil.example/login"}));
    s.submit_form("c1", "sub1");
    let msgs = s.messages_to("c1");
    let html = msgs[0].payload["rendered"]["html"].as_str().unwrap();
    // As typed (escaped as every value in HTML), not a tracking link.
    assert!(
        html.contains("href=\"https:&#x2f;&#x2f;evil.example&#x2f;login\""),
        "{html}"
    );
    assert_eq!(
        tracked_links(&s),
        [
            "https://riverside.example/book?a=1&b=2",
            "https://riverside.example/p?who=c1"
        ]
    );
}

/// The targets of every tracked link, in the order they were wrapped.
fn tracked_links(s: &Sim) -> Vec<String> {
    s.conn
        .prepare("SELECT url FROM message_links ORDER BY message_id, idx")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// A custom property named with `-` or `.` is a placeholder with `_`
/// (`{{plan-type}}` would be a subtraction); a property named like the
/// placeholder comes first.
#[test]
fn custom_properties_with_dashes_and_dots_are_placeholders_with_underscores() {
    let mut s = Sim::new();
    s.contact(
        "c0",
        json!({"plan-type": "Silver", "insurance.carrier": "Aetna", "plan_code": "S"}),
    );
    s.automation(json!({"name": "Plan", "run_window": {"mode": "any_time"}, "trigger": {"type": "form_submitted"},
        "steps": [{"type": "send_sms", "message": "Plan {{plan_type}} via {{insurance_carrier}}"}]}));
    let e = s
        .cmd(
            json!({"command": "automation.create", "automation_id": "bad", "definition": {
            "name": "Bad", "trigger": {"type": "contact_created"},
            "steps": [{"type": "send_sms", "message": "Plan {{plan_typ}}"}]}}),
        )
        .unwrap_err();
    assert!(e.to_string().contains("did you mean plan_type?"), "{e}");
    s.contact(
        "c1",
        json!({"plan-type": "Gold", "insurance.carrier": "Aetna", "sms_subscription": "subscribed"}),
    );
    s.push(json!({"type": "form.submitted", "submission": {"id": "f1", "form_id": "x", "form_name": "X", "contact_id": "c1"}}))
        .unwrap();
    let msgs = s.messages_to("c1");
    let sms = msgs[0].payload["rendered"]["text"].as_str().unwrap();
    assert!(sms.starts_with("Plan Gold via Aetna"), "{sms}");
}

#[test]
fn only_the_templates_own_links_are_tracked() {
    let mut s = Sim::new();
    s.automation(json!({"name": "Book", "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
        "steps": [{"type": "send_sms", "message": "Hi {{firstname}}, book at https://riverside.example/book?who={{lastname}}"}]}));
    // A web-form lead typed a link into the name field.
    s.contact(
        "c1",
        json!({"first_name": "Claim https://evil.example/prize"}),
    );
    let msgs = s.messages_to("c1");
    let sms = msgs[0].payload["rendered"]["text"].as_str().unwrap();
    assert!(sms.contains("Claim https://evil.example/prize"), "{sms}");
    assert!(
        !sms.contains("riverside.example/book"),
        "the template's link is wrapped: {sms}"
    );
    let targets = tracked_links(&s);
    assert!(
        targets
            .iter()
            .all(|u| u.starts_with("https://riverside.example/")),
        "{targets:?}"
    );
    assert_eq!(targets, ["https://riverside.example/book?who=c1"]);
}

#[test]
fn stop_gets_one_confirmation_and_help_gets_an_answer() {
    let mut s = Sim::new();
    let replies = s.automation(json!({"name": "Replies", "run_window": {"mode": "any_time"}, "trigger": {"type": "sms_reply"}, "steps": []}));
    s.contact("c1", json!({"phone": "(617) 555-0100"}));
    let stop =
        json!({"event_id": "in-1", "type": "sms.received", "contact_id": "c1", "body": "stop"});
    s.push(stop.clone()).unwrap();
    s.push(stop).unwrap(); // the host pushes it twice: one confirmation
    s.advance(HOUR);
    s.push(json!({"event_id": "in-2", "type": "sms.received", "contact_id": "c1", "body": "Help"}))
        .unwrap();
    let last_activity: i64 = s.value("SELECT last_activity FROM contacts WHERE id = 'c1'");
    assert_eq!(
        last_activity, s.now,
        "a HELP text does not touch the record"
    );
    let msgs = s.messages_to("c1");
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0].payload["purpose"], "stop_confirmation");
    assert_eq!(msgs[0].payload["category"], "compliance");
    let text = msgs[0].payload["content"]["message"].as_str().unwrap();
    assert!(
        text.contains("Riverside Family Practice") && text.contains("START"),
        "{text}"
    );
    assert_eq!(msgs[1].payload["purpose"], "help_answer");
    assert!(
        msgs[1].payload["content"]["message"]
            .as_str()
            .unwrap()
            .contains("STOP")
    );
    // Rendered as any SMS, so that a sender adapter can send them too.
    for m in &msgs {
        assert_eq!(
            m.payload["rendered"]["text"],
            m.payload["content"]["message"]
        );
        assert_eq!(m.payload["to"], "+16175550100");
        let due = crate::outbox::DueEffect {
            id: 1,
            key: m.key.clone(),
            kind: m.kind,
            payload: m.payload.to_string(),
            channel: m.channel.clone(),
            contact_id: Some(m.contact_id.clone()),
            screened: 0,
            attempts: 0,
            exempt: false,
        };
        let out = crate::plugins::pool::outgoing(&due).expect("an adapter can send it");
        assert_eq!(out.to, "+16175550100");
        assert_eq!(
            Some(out.text.as_str()),
            m.payload["content"]["message"].as_str()
        );
    }
    assert_eq!(
        s.count("enrolled", Some(&replies)),
        0,
        "keywords are not replies"
    );
    // START brings the number back, audited as the contact's own action.
    s.push(
        json!({"event_id": "in-3", "type": "sms.received", "contact_id": "c1", "body": " start "}),
    )
    .unwrap();
    let (sub, reason): (String, String) = s
        .conn
        .query_row(
            "SELECT c.sms_subscription, a.reason FROM contacts c JOIN subscription_audit a ON a.contact_id = c.id
             WHERE c.id = 'c1' ORDER BY a.id DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        (sub.as_str(), reason.as_str()),
        ("subscribed", "start_reply")
    );
}

/// A soft bounce hands a message over again only while it is still out:
/// not after a delivery (a late bounce of an earlier attempt revokes it),
/// nor after a failed receipt (final: its fallback went out).
#[test]
fn a_late_soft_bounce_never_sends_a_delivered_or_failed_message_again() {
    let mut s = Sim::new();
    s.automation(json!({"name": "Hello", "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
        "steps": [{"type": "send_email", "subject": "Hi", "body": "b"}]}));
    for (contact, first) in [("delivered", "delivered"), ("failed", "failed")] {
        s.contact(contact, json!({}));
        let key = s.messages_to(contact)[0].key.clone();
        let status = |s: &Sim| -> (i64, String) {
            s.conn
                .query_row(
                    "SELECT id, status FROM outbox WHERE idempotency_key = ?1",
                    [&key],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .unwrap()
        };
        // The host accepted it.
        crate::outbox::record_answer(
            &s.conn,
            status(&s).0,
            crate::HostAnswer::Accepted,
            None,
            s.now,
        )
        .unwrap();
        s.push(json!({"type": "delivery.receipt", "message_key": key, "status": first}))
            .unwrap();
        s.push(json!({"type": "delivery.receipt", "message_key": key, "status": "bounced", "bounce": "soft"}))
            .unwrap();
        let expect = if first == "delivered" {
            "accepted"
        } else {
            "failed"
        };
        assert_eq!(status(&s).1, expect, "{contact}: queued to go out again");
    }
}

/// A text's hard bounce (a landline, a number out of service) makes the
/// number undeliverable as an email's does its address: later texts to it
/// are suppressed, through a full sync written another way, until the
/// number changes. Before, the next automation texted the dead number again.
#[test]
fn an_sms_hard_bounce_makes_the_number_undeliverable() {
    let mut s = Sim::new();
    welcome_and_thanks_texts(&mut s);
    s.contact("c1", json!({"phone": "+16175550123"}));
    // Her son shares the number (written another way); a neighbour was
    // texted, then gave a new number before his text's bounce came.
    s.contact("son", json!({"phone": "(617) 555-0123"}));
    s.contact("moved", json!({"phone": "+16175550177"}));
    s.hand_over();
    let moved_key = s.messages_to("moved")[0].key.clone();
    s.push(
        json!({"type": "contact.upserted", "contact": {"id": "moved", "phone": "+16175550199"}}),
    )
    .unwrap();
    let key = s.messages_to("c1")[0].key.clone();
    for k in [&key, &moved_key] {
        s.push(json!({"type": "delivery.receipt", "message_key": k, "status": "bounced", "bounce": "hard"}))
            .unwrap();
    }
    let mark = |s: &Sim, id: &str| -> Option<String> {
        s.value(&format!(
            "SELECT json_extract(props, '$.sms_undeliverable') FROM contacts WHERE id = '{id}'"
        ))
    };
    assert_eq!(mark(&s, "c1").as_deref(), Some("+16175550123"));
    assert_eq!(
        mark(&s, "son").as_deref(),
        Some("(617) 555-0123"),
        "the line's, whoever has it"
    );
    assert_eq!(mark(&s, "moved"), None, "not the number that bounced");
    assert_eq!(s.count("address_undeliverable", None), 2, "one per contact");
    s.push(json!({"type": "contact.upserted", "mode": "full", "contact": {"id": "c1", "first_name": "Pat",
        "phone": "(617) 555-0123", "sms_subscription": "subscribed"}}))
        .unwrap();
    s.submit_form("c1", "f1");
    assert_eq!(s.messages_to("c1").len(), 1, "no text to a dead number");
    let why: String = s.value(
        "SELECT json_extract(detail, '$.reason') FROM events WHERE kind = 'message_suppressed' AND contact_id = 'c1'",
    );
    assert_eq!(why, "undeliverable");
    // The host cannot push the mark; a new number clears it.
    let pushed = s.push(
        json!({"type": "contact.upserted", "contact": {"id": "c1", "sms_undeliverable": null}}),
    );
    assert_eq!(pushed.unwrap_err().code(), crate::ErrorCode::Invalid);
    s.push(json!({"type": "contact.upserted", "contact": {"id": "c1", "phone": "+16175550188"}}))
        .unwrap();
    s.submit_form("c1", "f2");
    assert_eq!(s.messages_to("c1").len(), 2, "the new number is texted");
    // A text from the son's number proves it reachable: his mark goes.
    s.push(json!({"type": "sms.received", "from": "+16175550123", "body": "Is this the clinic?"}))
        .unwrap();
    assert_eq!(mark(&s, "son"), None);
    assert_eq!(s.count("address_deliverable", None), 1);
}

/// Outside North America the number the text went to (E.164) and the one
/// the contact has (national) end in other digits: the hard bounce still
/// marks the contact, and a text from the number lifts it.
#[test]
fn an_sms_hard_bounce_marks_a_national_number_outside_north_america() {
    let mut s = Sim::new();
    let mut doc = serde_json::to_value(&s.settings.doc).unwrap();
    doc["sms"]["default_region"] = json!("AU");
    s.cmd(json!({"command": "settings.update", "settings": doc}))
        .unwrap();
    welcome_and_thanks_texts(&mut s);
    s.contact("au", json!({"phone": "0412 345 678"}));
    s.hand_over();
    let key = s.messages_to("au")[0].key.clone();
    s.push(json!({"type": "delivery.receipt", "message_key": key, "status": "bounced", "bounce": "hard"}))
        .unwrap();
    let mark = |s: &Sim| -> Option<String> {
        s.value("SELECT json_extract(props, '$.sms_undeliverable') FROM contacts WHERE id = 'au'")
    };
    assert_eq!(mark(&s).as_deref(), Some("0412 345 678"));
    s.submit_form("au", "f1");
    assert_eq!(s.messages_to("au").len(), 1, "no text to the dead number");
    s.push(json!({"type": "sms.received", "from": "+61412345678", "body": "Hello?"}))
        .unwrap();
    assert_eq!(mark(&s), None);
}

#[test]
fn hard_bounce_makes_the_address_undeliverable_and_soft_bounces_retry_then_suppress() {
    let mut s = Sim::new();
    let a = s.automation(json!({"name": "Two emails", "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
        "steps": [{"type": "send_email", "subject": "One", "body": "b"}, {"type": "delay", "amount": 1, "unit": "days"},
                  {"type": "send_email", "subject": "Two", "body": "b"}]}));
    s.contact("hard", json!({}));
    s.contact("soft", json!({}));
    // A new address given before the old one's bounce came stays good.
    s.contact("moved", json!({}));
    let moved_key = s.messages_to("moved")[0].key.clone();
    s.push(
        json!({"type": "contact.upserted", "contact": {"id": "moved", "email": "new@example.com"}}),
    )
    .unwrap();
    s.push(json!({"type": "delivery.receipt", "message_key": moved_key, "status": "bounced", "bounce": "hard"}))
        .unwrap();
    let mark: Option<String> = s.value(
        "SELECT json_extract(props, '$.email_undeliverable') FROM contacts WHERE id = 'moved'",
    );
    assert_eq!(mark, None);
    let hard_key = s.messages_to("hard")[0].key.clone();
    s.push(json!({"type": "delivery.receipt", "message_key": hard_key, "status": "bounced", "bounce": "hard"})).unwrap();
    s.advance(2 * DAY);
    assert_eq!(
        s.messages_to("hard").len(),
        1,
        "no email to an address that hard-bounced"
    );
    let why: String = s.conn.query_row("SELECT json_extract(detail, '$.reason') FROM events WHERE kind='message_suppressed' AND contact_id='hard'", [], |r| r.get(0)).unwrap();
    assert_eq!(why, "undeliverable");
    // The host's full sync does not carry the mark and cannot clear it.
    let full = json!({"type": "contact.upserted", "mode": "full", "contact": {"id": "hard", "first_name": "Pat",
        "email": "HARD@example.com", "email_subscription": "subscribed"}});
    s.push(full).unwrap();
    let cleared = s.push(
        json!({"type": "contact.upserted", "contact": {"id": "hard", "email_undeliverable": null}}),
    );
    assert_eq!(cleared.unwrap_err().code(), crate::ErrorCode::Invalid);
    let mark: Option<String> = s
        .conn
        .query_row(
            "SELECT json_extract(props, '$.email_undeliverable') FROM contacts WHERE id = 'hard'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        mark.as_deref(),
        Some("hard@example.com"),
        "kept through the full sync"
    );
    // A new address clears it.
    s.push(
        json!({"type": "contact.upserted", "contact": {"id": "hard", "email": "new@example.com"}}),
    )
    .unwrap();
    let soft_key = s.messages_to("soft")[0].key.clone();
    for i in 1..=4 {
        // Each bounce is a hand-over's: the host took the message again.
        s.accept(&soft_key);
        s.push(json!({"type": "delivery.receipt", "message_key": soft_key, "status": "bounced", "bounce": "soft"})).unwrap();
        let status: String = s
            .conn
            .query_row(
                "SELECT status FROM outbox WHERE idempotency_key = ?1",
                [&soft_key],
                |r| r.get(0),
            )
            .unwrap();
        let expect = if i <= 3 { "retry" } else { "failed" };
        assert_eq!(status, expect);
        // Sent again as a new send: the payload counts them for the host.
        let resend: i64 = s
            .conn
            .query_row(
                "SELECT json_extract(payload, '$.resend') FROM outbox WHERE idempotency_key = ?1",
                [&soft_key],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(resend, i.min(3));
    }
    let suppressed: i64 = s
        .conn
        .query_row(
            "SELECT COUNT(*) FROM events WHERE kind='message_suppressed' AND message_key = ?1",
            [&soft_key],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        suppressed, 1,
        "after 3 soft bounces the message is suppressed"
    );
    // In the figures it is four bounces, not a message held back: the one
    // suppressed email is the hard-bounced address's second.
    let v = s.view("automation_performance", json!({"automation_id": a}));
    let email = &v["channel_breakdown"][0];
    assert_eq!(
        (email["suppressed"].as_u64(), email["bounced"].as_u64()),
        (Some(1), Some(6))
    );
    assert_eq!(v["suppressions"]["total"], 1);
    assert_eq!(
        v["suppressions"]["reasons"][0]["reason"]["id"],
        "undeliverable"
    );
}

/// A sender adapter gives its provider `<key>-resend<n>` for a message
/// sent again after a soft bounce: the provider's receipt naming that key
/// is the message's.
#[test]
fn a_receipt_naming_a_resends_send_key_is_the_messages() {
    let mut s = Sim::new();
    s.automation(json!({"name": "Hello", "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
        "steps": [{"id": "mail", "type": "send_email", "subject": "Hi", "body": "Hi"}]}));
    s.contact("p", json!({}));
    let key = s.messages_to("p")[0].key.clone();
    s.accept(&key);
    s.push(json!({"type": "delivery.receipt", "message_key": key, "status": "bounced", "bounce": "soft"}))
        .unwrap();
    s.accept(&key);
    let send_key = crate::outbox::send_key(&key, 1);
    assert_eq!(send_key, format!("{key}-resend1"));
    s.push(json!({"type": "delivery.receipt", "message_key": send_key, "status": "delivered"}))
        .unwrap();
    let delivered: Vec<String> = s
        .conn
        .prepare("SELECT message_key FROM events WHERE kind = 'message_delivered'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(delivered, std::slice::from_ref(&key));
    for unknown in [
        format!("{key}-resend"),
        format!("{key}-resendx"),
        format!("{key}-resend0"),
        format!("{key}-resend01"),
        format!("{key}-resend2"),
        format!("{key}x-resend1"),
    ] {
        let e = s
            .push(
                json!({"type": "delivery.receipt", "message_key": unknown, "status": "delivered"}),
            )
            .unwrap_err();
        assert_eq!(e.code(), crate::ErrorCode::NotFound, "{unknown}: {e}");
    }
}

/// A receipt about a send before the last one handed over (naming
/// `<key>-resend<n>` below it, or with the message's own key and dated no
/// later than the bounce that scheduled the last send) is recorded only: a provider's
/// retried webhook about the first soft bounce neither takes back the
/// resend's delivery nor hands the message over a third time.
#[test]
fn a_receipt_about_an_earlier_send_counts_nothing() {
    let mut s = Sim::new();
    s.automation(json!({"name": "Hello", "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
        "steps": [{"id": "mail", "type": "send_email", "subject": "Hi", "body": "Hi"}]}));
    for c in ["after", "before", "named", "late", "skew"] {
        s.contact(c, json!({}));
    }
    let key = |s: &Sim, c: &str| s.messages_to(c)[0].key.clone();
    let outcome = |s: &Sim, c: &str| -> (String, i64, i64, i64) {
        let k = key(s, c);
        let n = |kind: &str| -> i64 {
            s.value(&format!(
                "SELECT COUNT(*) FROM events WHERE message_key = '{k}' AND kind = '{kind}'"
            ))
        };
        (
            s.value(&format!(
                "SELECT status FROM outbox WHERE idempotency_key = '{k}'"
            )),
            n("message_delivered") - n("message_delivery_revoked"),
            n("message_bounced") - n("message_bounce_revoked"),
            n("receipt_repeated"),
        )
    };
    let first_sent = s.now;
    let bounced_at = crate::clock::to_rfc3339(first_sent + MINUTE);
    s.advance(MINUTE);
    for c in ["after", "before", "named", "late", "skew"] {
        let k = key(&s, c);
        s.accept(&k);
        s.push(json!({"type": "delivery.receipt", "message_key": k, "status": "bounced", "bounce": "soft",
                      "occurred_at": bounced_at}))
            .unwrap();
    }
    s.advance(HOUR);
    s.hand_over(); // the resends
    // The resend delivered, then the first bounce again (a new event id).
    let k = key(&s, "after");
    s.push(json!({"type": "delivery.receipt", "message_key": crate::outbox::send_key(&k, 1), "status": "delivered"}))
        .unwrap();
    s.push(
        json!({"type": "delivery.receipt", "message_key": k, "status": "bounced", "bounce": "soft",
                  "occurred_at": bounced_at}),
    )
    .unwrap();
    assert_eq!(outcome(&s, "after"), ("accepted".into(), 1, 1, 1));
    // The first bounce again before the resend's receipt: no third send.
    let k = key(&s, "before");
    s.push(
        json!({"type": "delivery.receipt", "message_key": k, "status": "bounced", "bounce": "soft",
                  "occurred_at": bounced_at}),
    )
    .unwrap();
    assert_eq!(outcome(&s, "before"), ("accepted".into(), 0, 1, 1));
    // The resend soft-bounces in turn (dated after it was handed over): it
    // counts, and the message goes a third time.
    s.push(json!({"type": "delivery.receipt", "message_key": k, "status": "bounced", "bounce": "soft"}))
        .unwrap();
    assert_eq!(outcome(&s, "before"), ("retry".into(), 0, 2, 1));
    // A receipt naming the first send's key with its resend number: after
    // the second resend, one about the first resend counts nothing.
    let k = key(&s, "named");
    s.push(json!({"type": "delivery.receipt", "message_key": crate::outbox::send_key(&k, 1), "status": "bounced", "bounce": "soft"}))
        .unwrap();
    // The second resend waits: nothing is known of it yet.
    let early = s.push(json!({"type": "delivery.receipt", "message_key": crate::outbox::send_key(&k, 2), "status": "delivered"}));
    assert_eq!(early.unwrap_err().code(), crate::ErrorCode::NotFound);
    s.advance(HOUR);
    s.hand_over();
    s.push(json!({"type": "delivery.receipt", "message_key": crate::outbox::send_key(&k, 2), "status": "delivered"}))
        .unwrap();
    s.push(json!({"type": "delivery.receipt", "message_key": crate::outbox::send_key(&k, 1), "status": "bounced", "bounce": "soft"}))
        .unwrap();
    assert_eq!(outcome(&s, "named"), ("accepted".into(), 1, 2, 1));
    // The first resend soft-bounces, then turns out delivered before the
    // second goes: that is its outcome, and the second is not sent.
    let k = key(&s, "late");
    let resend1 = crate::outbox::send_key(&k, 1);
    s.push(json!({"type": "delivery.receipt", "message_key": resend1, "status": "bounced", "bounce": "soft"}))
        .unwrap();
    s.push(json!({"type": "delivery.receipt", "message_key": resend1, "status": "delivered"}))
        .unwrap();
    assert_eq!(outcome(&s, "late"), ("accepted".into(), 1, 1, 0));
    // A late hard bounce of that resend is its outcome after all: it takes
    // the delivery back (the resend that never went is no longer counted).
    s.push(json!({"type": "delivery.receipt", "message_key": resend1, "status": "bounced", "bounce": "hard"}))
        .unwrap();
    let (_, delivered, bounced, repeated) = outcome(&s, "late");
    assert_eq!((delivered, bounced, repeated), (0, 2, 0));
    // The resend's own bounce, dated a moment before its hand-over was
    // recorded (a provider's clock, whole seconds) but after the first
    // bounce: the resend's, and it counts.
    let k = key(&s, "skew");
    s.push(
        json!({"type": "delivery.receipt", "message_key": k, "status": "bounced", "bounce": "hard",
                  "occurred_at": crate::clock::to_rfc3339(s.now - 1_000)}),
    )
    .unwrap();
    assert_eq!(outcome(&s, "skew"), ("accepted".into(), 0, 2, 0));
    // A resend the message never had names nothing.
    let e = s
        .push(json!({"type": "delivery.receipt", "message_key": crate::outbox::send_key(&k, 3), "status": "delivered"}))
        .unwrap_err();
    assert_eq!(e.code(), crate::ErrorCode::NotFound, "{e}");
}

/// Each hand-over has one outcome: a soft bounce pushed again (a retried
/// webhook) is the same bounce, a delivery or a hard bounce after it is the
/// hand-over's real outcome (the bounce is taken back, and a delivery
/// cancels the resend), and nothing after a failed receipt counts.
#[test]
fn each_hand_over_counts_one_outcome_whatever_receipts_repeat() {
    let mut s = Sim::new();
    let a = s.automation(json!({"name": "Hello", "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
        "steps": [{"id": "mail", "type": "send_email", "subject": "Hi", "body": "Hi"}]}));
    for c in ["soft", "late", "failed", "hard", "relay"] {
        s.contact(c, json!({}));
    }
    let key = |s: &Sim, c: &str| s.messages_to(c)[0].key.clone();
    let status = |s: &Sim, c: &str| -> String {
        s.value(&format!(
            "SELECT status FROM outbox WHERE idempotency_key = '{}'",
            key(s, c)
        ))
    };
    let receipt = |s: &mut Sim, c: &str, status: &str, bounce: Option<&str>| {
        let k = key(s, c);
        s.push(json!({"type": "delivery.receipt", "message_key": k, "status": status, "bounce": bounce}))
            .unwrap();
    };
    for c in ["soft", "late", "failed", "hard", "relay"] {
        s.accept(&key(&s, c));
    }
    // The same soft bounce three times: one bounce, one resend waiting.
    for _ in 0..3 {
        receipt(&mut s, "soft", "bounced", Some("soft"));
    }
    assert_eq!(status(&s, "soft"), "retry");
    // A soft bounce, then the same hand-over delivered after all.
    receipt(&mut s, "late", "bounced", Some("soft"));
    receipt(&mut s, "late", "delivered", None);
    assert_eq!(status(&s, "late"), "accepted", "no resend once delivered");
    // A failed receipt is final: twice, then a delivery and a soft bounce.
    receipt(&mut s, "failed", "failed", None);
    receipt(&mut s, "failed", "failed", None);
    receipt(&mut s, "failed", "delivered", None);
    receipt(&mut s, "failed", "bounced", Some("soft"));
    assert_eq!(status(&s, "failed"), "failed");
    // A hard bounce after it counts nothing either, but the address is bad.
    receipt(&mut s, "failed", "bounced", Some("hard"));
    let undeliverable = |s: &Sim, c: &str| -> Option<String> {
        s.value(&format!(
            "SELECT json_extract(props, '$.email_undeliverable') FROM contacts WHERE id = '{c}'"
        ))
    };
    assert!(undeliverable(&s, "failed").is_some());
    // A soft bounce, then the hard one: final, the address is bad.
    receipt(&mut s, "hard", "bounced", Some("soft"));
    receipt(&mut s, "hard", "bounced", Some("hard"));
    assert_eq!(status(&s, "hard"), "failed", "no resend to a bad address");
    assert!(undeliverable(&s, "hard").is_some());
    // Delivered (the relay took it), then a delay notice (soft) twice and
    // the final failure (hard) for the same hand-over: one bounce, no resend.
    receipt(&mut s, "relay", "delivered", None);
    receipt(&mut s, "relay", "bounced", Some("soft"));
    receipt(&mut s, "relay", "bounced", Some("soft"));
    assert_eq!(status(&s, "relay"), "accepted", "never handed over again");
    receipt(&mut s, "relay", "bounced", Some("hard"));

    assert_eq!(s.count("receipt_repeated", None), 2 + 4 + 1);
    assert_eq!(s.count("message_bounce_revoked", None), 3);
    let v = s.view("automation_performance", json!({"automation_id": a}));
    let email = &v["channel_breakdown"][0];
    assert_eq!(email["bounced"], 3, "soft, hard, relay's hard: {email}");
    assert_eq!(email["delivered"], 1, "late; relay's taken back: {email}");
    assert_eq!(email["failed"], 1, "{email}");
}

/// A person's answer shows the message reached them: without a receipt it
/// counts as delivered, so the opt-out rate (a share of the delivered
/// messages) stays a share.
#[test]
fn an_answer_without_a_receipt_counts_the_message_delivered() {
    let mut s = Sim::new();
    let a = s.automation(json!({"name": "Hello", "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
        "steps": [{"id": "text", "type": "send_sms", "message": "Hi from {{practice}}"},
                  {"id": "mail", "type": "send_email", "subject": "Hi", "body": "Hi"}]}));
    s.contact("c1", json!({}));
    s.contact("c2", json!({}));
    s.advance(HOUR);
    let key = |s: &Sim, c: &str, channel: &str| {
        s.messages_to(c)
            .iter()
            .find(|m| m.channel.as_deref() == Some(channel))
            .unwrap()
            .key
            .clone()
    };
    // The sender took them all.
    let ids: Vec<i64> = s
        .conn
        .prepare("SELECT id FROM outbox WHERE kind = 'message'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    for id in ids {
        crate::outbox::record_answer(&s.conn, id, crate::HostAnswer::Accepted, None, s.now)
            .unwrap();
    }
    let (t1, t2) = (key(&s, "c1", "sms"), key(&s, "c2", "sms"));
    s.push(json!({"type": "delivery.receipt", "message_key": t1, "status": "delivered"}))
        .unwrap();
    for (c, k) in [("c1", &t1), ("c2", &t2)] {
        s.push(json!({"type": "sms.received", "contact_id": c, "body": "STOP", "in_reply_to": k}))
            .unwrap();
    }
    // An email opened, then its receipt: delivered once.
    let m1 = key(&s, "c1", "email");
    s.push(json!({"type": "email.opened", "message_key": m1}))
        .unwrap();
    s.push(json!({"type": "delivery.receipt", "message_key": m1, "status": "delivered"}))
        .unwrap();
    let v = s.view("automation_performance", json!({"automation_id": a}));
    let row = |channel: &str| {
        v["channel_breakdown"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["channel"]["id"] == channel)
            .unwrap()
            .clone()
    };
    let sms = row("sms");
    assert_eq!(sms["delivered"], 2, "{sms}");
    assert_eq!(sms["opt_outs"], 2, "{sms}");
    assert_eq!(sms["opt_out_rate"], 100.0, "{sms}");
    let email = row("email");
    assert_eq!(email["delivered"], 1, "{email}");
    assert_eq!(s.count("receipt_repeated", None), 1);
    let implied: Vec<String> = s.texts(
        "SELECT json_extract(detail, '$.implied_by') FROM events WHERE kind = 'message_delivered' AND ?1 = ?1
         AND json_extract(detail, '$.implied_by') IS NOT NULL ORDER BY id",
        "x",
    );
    assert_eq!(implied, ["opt_out", "opened"]);
}

/// An `email.*` event names an email and an SMS reply answers a text: the
/// wrong channel is refused and changes nothing, except that a STOP still
/// stops.
#[test]
fn engagement_events_name_a_message_of_their_channel() {
    let mut s = Sim::new();
    s.automation(json!({"name": "Hello", "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
        "steps": [{"id": "text", "type": "send_sms", "message": "Hi from {{practice}}"},
                  {"id": "mail", "type": "send_email", "subject": "Hi", "body": "Hi"}]}));
    s.contact("c1", json!({}));
    s.advance(HOUR);
    s.hand_over();
    let key = |s: &Sim, channel: &str| {
        s.messages_to("c1")
            .iter()
            .find(|m| m.channel.as_deref() == Some(channel))
            .unwrap()
            .key
            .clone()
    };
    let (text, mail) = (key(&s, "sms"), key(&s, "email"));
    let logged = |s: &Sim| -> i64 { s.value("SELECT COUNT(*) FROM events") };
    let before = logged(&s);
    for kind in ["email.opened", "email.clicked", "email.replied"] {
        let e = s
            .push(json!({"type": kind, "message_key": text}))
            .unwrap_err();
        assert_eq!(e.code(), crate::ErrorCode::Invalid, "{kind}");
        assert!(e.to_string().contains("is sms, not email"), "{e}");
    }
    let e = s
        .push(json!({"type": "sms.received", "contact_id": "c1", "body": "Yes please", "in_reply_to": mail}))
        .unwrap_err();
    assert!(e.to_string().contains("in_reply_to"), "{e}");
    assert_eq!(logged(&s), before, "nothing recorded");
    s.push(
        json!({"type": "sms.received", "contact_id": "c1", "body": "STOP", "in_reply_to": mail}),
    )
    .unwrap();
    let sms: String =
        s.value("SELECT json_extract(props, '$.sms_subscription') FROM contacts WHERE id = 'c1'");
    assert_eq!(sms, "unsubscribed");
    let opt_out_key: String = s.value("SELECT message_key FROM events WHERE kind = 'sms_opt_out'");
    assert_eq!(opt_out_key, text, "the text it answers, not the email");
}

/// The footer's link opens a page that asks (a link scanner's GET
/// unsubscribes no one) with a button that posts back; the post
/// unsubscribes the address the email went to (for every contact who has
/// it, whatever its case), even after the contact's address changed.
#[test]
fn the_unsubscribe_page_asks_and_the_address_the_email_went_to_leaves() {
    let mut s = Sim::new();
    let mut doc = serde_json::to_value(&s.settings.doc).unwrap();
    doc["practice_name"] = json!("Smith & Sons <Dental>");
    s.cmd(json!({"command": "settings.update", "settings": doc}))
        .unwrap();
    s.automation(json!({"name": "News", "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
        "steps": [{"type": "send_email", "subject": "News", "body": "Hi"}]}));
    s.contact("pat", json!({"email": "old@patients.example"}));
    let url = s.messages_to("pat")[0].payload["rendered"]["unsubscribe_url"]
        .as_str()
        .expect("an unsubscribe url")
        .to_string();
    s.push(json!({"type": "contact.upserted", "contact": {"id": "pat", "email": "new@patients.example"}}))
        .unwrap();
    // The same mailbox written in other letters' case.
    s.contact("old_mate", json!({"email": "Old@Patients.EXAMPLE"}));
    s.contact("new_mate", json!({"email": "new@patients.example"}));
    let email_of = |s: &Sim, id: &str| -> String {
        s.conn
            .query_row(
                "SELECT email_subscription FROM contacts WHERE id = ?1",
                [id],
                |r| r.get(0),
            )
            .unwrap()
    };

    let base = s.settings.doc.tracking.base_url.clone().unwrap();
    let path = url.strip_prefix(base.as_str()).unwrap().to_string();
    let page = s
        .hit(&super::hits::Hit {
            method: "GET".into(),
            path,
            user_agent: None,
            ip_class: None,
        })
        .unwrap();
    assert_eq!(page.status, 200);
    assert_eq!(
        page.content_type.as_deref(),
        Some("text/html; charset=utf-8")
    );
    let html = page.body_text.unwrap();
    assert!(html.contains(r#"<form method="post">"#), "{html}");
    assert!(html.contains("Smith &amp; Sons &lt;Dental&gt;"), "{html}");
    assert!(!html.contains("<Dental>"), "{html}");
    assert_eq!(email_of(&s, "pat"), "subscribed", "a GET changes nothing");

    let done = s.post(&url).unwrap();
    assert!(
        done.body_text.unwrap().contains("You are unsubscribed"),
        "the answer says so"
    );
    assert_eq!(email_of(&s, "pat"), "unsubscribed");
    assert_eq!(
        email_of(&s, "old_mate"),
        "unsubscribed",
        "the address it went to, whatever its case"
    );
    assert_eq!(
        email_of(&s, "new_mate"),
        "subscribed",
        "not the address it did not"
    );
}

#[test]
fn composed_email_carries_a_real_unsubscribe_link_and_rendered_placeholders() {
    let mut s = Sim::new();
    s.automation(json!({"name": "Hello", "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
        "steps": [{"type": "send_email", "subject": "Hi {{firstname}}", "body": "<p>Dear {{firstname}} <a href=\"https://riverside.example/book\">book</a></p>"}]}));
    s.contact("c1", json!({"first_name": "<b>Ann</b>"}));
    let m = s.messages_to("c1")[0];
    let r = &m.payload["rendered"];
    let html = r["html"].as_str().unwrap();
    let url = r["unsubscribe_url"].as_str().unwrap();
    assert!(url.starts_with("https://t.riverside.example/u/"), "{url}");
    assert!(html.contains(&format!("<a href=\"{url}\">")), "{html}");
    assert!(
        !html.contains("<b>Ann</b>"),
        "contact data is escaped: {html}"
    );
    assert!(
        !html.contains("https://riverside.example/book"),
        "links are wrapped for click tracking"
    );
    assert_eq!(
        r["subject"], "Hi <b>Ann</b>",
        "the subject is text, not HTML"
    );
    assert!(
        r["text"].as_str().unwrap().contains("12 River Road"),
        "postal address in the footer"
    );
    assert!(
        r.get("rfc5322_base64").is_none(),
        "the outbox keeps the parts; the MIME is written when the message is handed over"
    );
    let handed_over: Value = serde_json::from_str(
        &crate::messaging::compose::with_mime(&m.payload.to_string()).unwrap(),
    )
    .unwrap();
    let raw = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        handed_over["rendered"]["rfc5322_base64"].as_str().unwrap(),
    )
    .unwrap();
    let raw = String::from_utf8(raw).unwrap();
    assert!(raw.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"));
    assert!(raw.contains(&format!("Message-ID: <{}@practice.example>", m.key)));
    let stored: i64 = s
        .conn
        .query_row("SELECT COUNT(*) FROM message_links", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        stored, 1,
        "the original link target is stored for the redirect"
    );
}

/// A contact without a first name (or with a blank one) gets the
/// template's `default`, not "Hi , ".
#[test]
fn a_missing_first_name_takes_the_templates_default() {
    let mut s = Sim::new();
    s.automation(json!({"name": "Hello", "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
        "steps": [{"type": "send_email", "subject": "Hi {{ firstname | default('there') }}!",
            "body": "<p>Dear {{ firstname | default('friend') }}</p>"}]}));
    s.contact("c1", json!({"first_name": "Ann"}));
    s.contact("c2", json!({"first_name": null}));
    s.contact("c3", json!({"first_name": "  "}));
    let subject = |s: &Sim, c: &str| s.messages_to(c)[0].payload["rendered"]["subject"].clone();
    assert_eq!(subject(&s, "c1"), "Hi Ann!");
    assert_eq!(subject(&s, "c2"), "Hi there!");
    assert_eq!(subject(&s, "c3"), "Hi there!");
    let html = s.messages_to("c2")[0].payload["rendered"]["html"].clone();
    assert!(html.as_str().unwrap().contains("Dear friend"), "{html}");
}

#[test]
fn sms_waits_for_the_recipients_sending_hours() {
    let mut s = Sim::new();
    let a = s.automation(json!({"name": "Late", "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
        "steps": [{"id": "sms", "type": "send_sms", "message": "Hi"}, {"id": "mail", "type": "send_email", "subject": "s", "body": "b"}]}));
    // 22:30 in New York (03:30Z): too late for a New York number, the email waits for nothing...
    s.now = parse_rfc3339("2026-01-06T03:30:00Z").unwrap();
    s.contact("ny", json!({}));
    // ...and a Los Angeles contact at the same instant (19:30 local) gets it at once.
    s.contact("la", json!({"time_zone": "America/Los_Angeles"}));
    s.advance(DAY);
    let at = |c: &str| -> i64 {
        s.conn.query_row("SELECT at FROM events WHERE kind='step_executed' AND step_id='sms' AND contact_id=?1 AND automation_id=?2", [c, a.as_str()], |r| r.get(0)).unwrap()
    };
    assert_eq!(at("la"), parse_rfc3339("2026-01-06T03:30:00Z").unwrap());
    assert_eq!(
        at("ny"),
        parse_rfc3339("2026-01-06T13:00:00Z").unwrap(),
        "08:00 New York"
    );
}

fn preview(s: &Sim, params: Value) -> crate::error::Result<Value> {
    crate::views::query(&s.conn, &s.settings, "template_preview", &params, s.now)
}

fn preview_templates(s: &mut Sim) {
    s.cmd(json!({"command": "template.create", "template_id": "welcome", "template": {"channel": "email", "name": "Welcome",
        "subject": "Hello {{ firstname }}", "preheader": "From {{ owner }}",
        "html_body": "<p>Hi {{ firstname }} {{ lastname }}</p><p><a href=\"https://practice.example/book\">Book</a></p>"}}))
        .unwrap();
    s.cmd(json!({"command": "template.create", "template_id": "ping", "template": {"channel": "sms", "name": "Ping",
        "message": "Hi {{ firstname }} 😀"}}))
        .unwrap();
}

#[test]
fn template_preview_email_with_sample_data() {
    let mut s = Sim::new();
    preview_templates(&mut s);
    let v = preview(&s, json!({"template_id": "welcome"})).unwrap();
    assert_eq!(v["header"]["name"], "Welcome");
    assert_eq!(v["header"]["channel"]["id"], "email");
    assert_eq!(v["header"]["data_label"], "Sample data");
    let e = &v["email"];
    assert_eq!(e["inbox"]["subject"], "Hello Alex");
    assert_eq!(e["inbox"]["preheader"], "From Dr. Lee");
    assert_eq!(e["inbox"]["from_address"], "no-reply@practice.example");
    assert_eq!(e["desktop"]["width"], 600);
    assert_eq!(e["mobile"]["width"], 375);
    assert_eq!(e["desktop"]["html"], e["mobile"]["html"]);
    let html = e["desktop"]["html"].as_str().unwrap();
    assert!(html.contains("Hi Alex Sample"), "{html}");
    assert!(html.contains("12 River Road"), "footer: {html}");
    assert!(html.contains("https://…/u/preview"), "{html}");
    assert!(
        html.contains("href=\"https://practice.example/book\""),
        "links are not wrapped in a preview: {html}"
    );
    assert!(!html.contains("t.riverside.example"), "no tracking: {html}");
    assert!(e["text"].as_str().unwrap().contains("Hi Alex Sample"));
    assert_eq!(e["unsubscribe"]["clickable"], false);
    assert!(v["sms"].is_null());
    assert_eq!(v["problems"], json!([]));
    let send = v["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == "send_test")
        .unwrap();
    assert_eq!(send["command"]["command"], "template.test_send");
    // A view only reads: nothing numbered, nothing queued.
    let messages: i64 = s
        .conn
        .query_row("SELECT COUNT(*) FROM messages", [], |r| r.get(0))
        .unwrap();
    assert_eq!(messages, 0);
}

#[test]
fn template_preview_email_with_contact_escapes_its_data() {
    let mut s = Sim::new();
    preview_templates(&mut s);
    s.contact("c1", json!({"first_name": "<b>Pat</b>"}));
    let v = preview(&s, json!({"template_id": "welcome", "contact_id": "c1"})).unwrap();
    assert_eq!(v["header"]["contact_id"], "c1");
    let html = v["email"]["desktop"]["html"].as_str().unwrap();
    assert!(html.contains("&lt;b&gt;Pat"), "{html}");
    assert!(!html.contains("<b>Pat"), "{html}");
    // The subject is plain text: shown as typed.
    assert_eq!(v["email"]["inbox"]["subject"], "Hello <b>Pat</b>");
    let e = preview(
        &s,
        json!({"template_id": "welcome", "contact_id": "nobody"}),
    )
    .unwrap_err();
    assert_eq!(e.code(), crate::error::ErrorCode::NotFound);
}

#[test]
fn template_preview_sms_counter() {
    let mut s = Sim::new();
    preview_templates(&mut s);
    let v = preview(&s, json!({"template_id": "ping"})).unwrap();
    assert_eq!(v["header"]["channel"]["id"], "sms");
    let sms = &v["sms"];
    assert_eq!(sms["text"], "Hi Alex 😀 Reply STOP to opt out");
    assert_eq!(sms["consent_footer_appended"], true);
    let c = &sms["counter"];
    assert_eq!(c["encoding"], "ucs2");
    assert_eq!(c["characters"], 31);
    assert_eq!(c["units"], 32);
    assert_eq!(c["segments"], 1);
    assert_eq!(c["credits"], 1);
    assert_eq!(c["remaining_in_segment"], 38);
    assert_eq!(c["non_gsm"], json!(["😀"]));
    assert!(v["email"].is_null());
}

/// With SMS clicks tracked, the preview counts the text as it goes: its
/// link at the length of the click-tracking link that replaces it (here it
/// takes the text past one segment). The text still shows the link as
/// written.
#[test]
fn template_preview_sms_counts_tracked_links_as_sent() {
    let mut s = Sim::new();
    let a = s.automation(json!({"name": "Book", "run_window": {"mode": "any_time"},
        "trigger": {"type": "contact_created"},
        "steps": [{"id": "sms", "type": "send_sms",
                   "message": "Hi {{ firstname }}, your annual check-up is due soon. Book at https://riverside.example/book or call us."}]}));
    s.contact("c1", json!({"first_name": "Pat", "phone": "+16175550123"}));
    let msgs = s.messages_to("c1");
    let sent = &msgs[0].payload["rendered"];
    let sent_text = sent["text"].as_str().unwrap();
    assert!(
        sent_text.contains("https://t.riverside.example/c/"),
        "{sent_text}"
    );
    let v = preview(
        &s,
        json!({"automation_id": a, "step_id": "sms", "contact_id": "c1"}),
    )
    .unwrap();
    let sms = &v["sms"];
    assert!(
        sms["text"]
            .as_str()
            .unwrap()
            .contains("https://riverside.example/book"),
        "{sms}"
    );
    assert_eq!(sms["tracked_links"], 1);
    assert_eq!(sms["counter"]["characters"], sent_text.chars().count());
    assert_eq!(sms["counter"]["segments"], sent["segments"]);
    assert_eq!(sent["segments"], 2, "{sent_text}");
    // Without click tracking the link goes, and is counted, as written.
    s.settings.doc.tracking.sms_clicks = false;
    let v = preview(
        &s,
        json!({"automation_id": a, "step_id": "sms", "contact_id": "c1"}),
    )
    .unwrap();
    assert_eq!(v["sms"]["tracked_links"], 0);
    assert_eq!(
        v["sms"]["counter"]["characters"],
        v["sms"]["text"].as_str().unwrap().chars().count()
    );
    assert_eq!(v["sms"]["counter"]["segments"], 1);
}

#[test]
fn template_preview_unknown_template_and_bad_params() {
    let mut s = Sim::new();
    preview_templates(&mut s);
    let e = preview(&s, json!({"template_id": "nope"})).unwrap_err();
    assert_eq!(e.code(), crate::error::ErrorCode::NotFound);
    s.cmd(json!({"command": "template.delete", "template_id": "ping"}))
        .unwrap();
    let e = preview(&s, json!({"template_id": "ping"})).unwrap_err();
    assert_eq!(e.code(), crate::error::ErrorCode::NotFound);
    let e = preview(&s, json!({"template_id": "welcome", "bogus": 1})).unwrap_err();
    assert_eq!(e.code(), crate::error::ErrorCode::Invalid);
    assert!(e.to_string().contains("bogus"), "{e}");
}

#[test]
fn template_test_send_queues_one_test_message_without_analytics_or_consent() {
    let mut s = Sim::new();
    preview_templates(&mut s);
    s.contact(
        "c1",
        json!({"email_subscription": "unsubscribed", "sms_subscription": "unsubscribed"}),
    );
    let events = |s: &Sim| -> i64 {
        s.conn
            .query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
            .unwrap()
    };
    let before_events = events(&s);
    let before_effects = s.effects.len();
    let out = s
        .cmd(json!({"command": "template.test_send", "template_id": "welcome", "to": " staff@practice.example ", "contact_id": "c1"}))
        .unwrap();
    assert_eq!(out["channel"], "email");
    assert_eq!(out["to"], "staff@practice.example");
    assert_eq!(s.effects.len(), before_effects + 1);
    let m = s.effects.last().unwrap();
    assert_eq!(m.kind, crate::outbox::EffectKind::Message);
    assert_eq!(m.payload["category"], "test");
    assert_eq!(m.payload["purpose"], "test_send");
    assert_eq!(m.payload["to"], "staff@practice.example");
    assert_eq!(m.payload["rendered"]["subject"], "[Test] Hello Pat");
    // The contact's name goes with it, for a sender adapter's scrubbing.
    let adapter_sees = crate::plugins::pool::outgoing(&crate::outbox::DueEffect {
        id: 1,
        key: m.key.clone(),
        kind: m.kind,
        payload: m.payload.to_string(),
        channel: m.channel.clone(),
        contact_id: Some("c1".into()),
        screened: 0,
        attempts: 0,
        exempt: false,
    });
    assert!(
        m.payload["placeholders"]["firstname"]
            .as_str()
            .is_some_and(|n| !n.is_empty())
    );
    assert_eq!(
        adapter_sees.map(|o| o.patient).ok(),
        Some(vec![
            m.payload["placeholders"]["firstname"]
                .as_str()
                .unwrap()
                .to_string(),
            m.payload["placeholders"]["lastname"]
                .as_str()
                .unwrap()
                .to_string()
        ])
    );
    assert!(m.key.starts_with("t-test-welcome-"), "{}", m.key);
    assert_eq!(events(&s), before_events, "no event rows");
    assert_eq!(s.count("message_queued", None), 0);

    // Twice at the same instant: two distinct messages.
    s.cmd(json!({"command": "template.test_send", "template_id": "welcome", "to": "staff@practice.example"}))
        .unwrap();
    assert_eq!(s.effects.len(), before_effects + 2);
    assert_ne!(
        s.effects[s.effects.len() - 1].key,
        s.effects[s.effects.len() - 2].key
    );
    let queued: i64 = s
        .conn
        .query_row(
            "SELECT COUNT(*) FROM outbox WHERE idempotency_key LIKE '%-test-%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(queued, 2);

    // SMS: the number is normalized, the consent footer is there.
    let out = s
        .cmd(json!({"command": "template.test_send", "template_id": "ping", "to": "(617) 555-0100", "contact_id": "c1"}))
        .unwrap();
    assert_eq!(out["to"], "+16175550100");
    let m = s.effects.last().unwrap();
    assert_eq!(
        m.payload["rendered"]["text"],
        "Hi Pat 😀 Reply STOP to opt out"
    );
    assert_eq!(events(&s), before_events);
}

#[test]
fn template_test_send_refuses_a_bad_recipient() {
    let mut s = Sim::new();
    preview_templates(&mut s);
    for (template, to) in [
        ("welcome", "not-an-address"),
        ("welcome", ""),
        ("ping", "abc"),
        ("ping", "staff@practice.example"),
    ] {
        let e = s
            .cmd(json!({"command": "template.test_send", "template_id": template, "to": to}))
            .unwrap_err();
        assert_eq!(
            e.code(),
            crate::error::ErrorCode::Invalid,
            "{template} {to}"
        );
        assert!(e.to_string().contains("to:"), "{e}");
    }
    let e = s
        .cmd(json!({"command": "template.test_send", "template_id": "nope", "to": "staff@practice.example"}))
        .unwrap_err();
    assert_eq!(e.code(), crate::error::ErrorCode::NotFound);
    assert!(s.effects.is_empty());
}

#[test]
fn test_send_receipts_and_opens_stay_out_of_analytics() {
    let mut s = Sim::new();
    s.cmd(json!({"command": "template.create", "template_id": "w", "template": {"channel": "email", "name": "W", "subject": "Hi", "html_body": "<p>Hi</p>"}}))
        .unwrap();
    s.cmd(json!({"command": "template.test_send", "template_id": "w", "to": "staff@riverside.example"})).unwrap();
    let key = s.effects.last().unwrap().key.clone();
    assert!(crate::outbox::is_test_send("t", &key), "{key}");
    let before = s.count("message_delivered", None) + s.count("message_opened", None);
    s.push(json!({"type": "delivery.receipt", "message_key": key, "status": "delivered"}))
        .unwrap();
    s.push(json!({"type": "email.opened", "message_key": key}))
        .unwrap();
    assert_eq!(
        s.count("message_delivered", None) + s.count("message_opened", None),
        before
    );
}

#[test]
fn a_templates_channel_cannot_change() {
    let mut s = Sim::new();
    s.cmd(json!({"command": "template.create", "template_id": "t1", "template": {"channel": "email", "name": "W", "subject": "Hi", "html_body": "<p>Hi</p>"}}))
        .unwrap();
    let update = |id: &str| json!({"command": "template.update", "template_id": id, "template": {"channel": "sms", "name": "W", "message": "Hi"}});
    let e = s.cmd(update("t1")).unwrap_err();
    assert_eq!(e.code(), crate::ErrorCode::Invalid, "{e}");
    assert!(e.to_string().contains("is an email template"), "{e}");
    let e = s.cmd(update("t2")).unwrap_err();
    assert_eq!(e.code(), crate::ErrorCode::NotFound, "{e}");
    let channel: String = s.value("SELECT channel FROM templates WHERE id = 't1'");
    assert_eq!(channel, "email");
}

/// An answer to an SMS "Test to" sample is no reply: nothing reaches
/// analytics, Last Activity or the reply triggers; a STOP in answer to one
/// stops the number it came from, not the contact who lent the sample
/// their data.
#[test]
fn a_reply_to_a_test_text_stays_out_of_analytics() {
    let mut s = Sim::new();
    let replies = s.automation(json!({"name": "Replies", "run_window": {"mode": "any_time"}, "trigger": {"type": "sms_reply"}, "steps": []}));
    s.cmd(json!({"command": "template.create", "template_id": "t1", "template": {"channel": "sms", "name": "T", "message": "Hi {{firstname}}"}}))
        .unwrap();
    s.contact("c1", json!({}));
    s.cmd(json!({"command": "template.test_send", "template_id": "t1", "to": "+16175550999", "contact_id": "c1"}))
        .unwrap();
    let key = s.effects.last().unwrap().key.clone();
    assert!(crate::outbox::is_test_send("t", &key), "{key}");
    let before: i64 = s.value("SELECT last_activity FROM contacts WHERE id = 'c1'");
    s.advance(HOUR);
    s.push(json!({"type": "sms.received", "contact_id": "c1", "body": "Looks good", "in_reply_to": key}))
        .unwrap();
    assert_eq!(s.count("message_replied", None), 0);
    assert_eq!(s.count("enrolled", Some(&replies)), 0);
    let after: i64 = s.value("SELECT last_activity FROM contacts WHERE id = 'c1'");
    assert_eq!(after, before);
    s.push(json!({"type": "sms.received", "contact_id": "c1", "from": "+16175550999", "body": "STOP", "in_reply_to": key}))
        .unwrap();
    let sms: String = s.value("SELECT sms_subscription FROM contacts WHERE id = 'c1'");
    assert_eq!(sms, "subscribed", "the staff phone said it");
    let stopped: i64 =
        s.value("SELECT COUNT(*) FROM stopped_numbers WHERE phone_key = '6175550999'");
    assert_eq!(stopped, 1);
    assert!(
        s.effects
            .iter()
            .all(|e| e.payload["purpose"] != "stop_confirmation"),
        "no confirmation to the contact"
    );
}

fn fallback_events(s: &Sim, kind: &str) -> Vec<(String, Option<String>, Option<String>)> {
    s.conn
        .prepare("SELECT channel, message_key, json_extract(detail, '$.reason') FROM events WHERE kind = ?1 ORDER BY id")
        .unwrap()
        .query_map([kind], |r| Ok((r.get::<_, Option<String>>(0)?.unwrap_or_default(), r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn email_then_sms() -> Value {
    json!({"name": "Email, SMS fallback", "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
        "steps": [{"id": "m", "type": "send_email", "subject": "Hi {{firstname}}", "body": "<p>Book now</p>",
                   "fallback": {"message": "Hi {{firstname}}, book now"}}]})
}

#[test]
fn a_step_named_like_a_fallback_gets_a_key_of_its_own() {
    // Step `m`'s fallback is keyed `<m's key>-fallback`; a step staff named
    // `m-fallback` is another effect and must not be dropped as a repeat.
    let mut s = Sim::new();
    let mut def = email_then_sms();
    def["steps"]
        .as_array_mut()
        .unwrap()
        .push(json!({"id": "m-fallback", "type": "send_sms", "message": "Second text"}));
    s.automation(def);
    s.contact("c1", json!({"email": null}));
    let msgs = s.messages_to("c1");
    let texts: Vec<&str> = msgs
        .iter()
        .map(|m| m.payload["rendered"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(msgs.len(), 2, "{texts:?}");
    assert!(texts[0].starts_with("Hi Pat, book now"), "{texts:?}");
    assert!(texts[1].starts_with("Second text"), "{texts:?}");
    assert_ne!(msgs[0].key, msgs[1].key);
    assert!(msgs[1].key.ends_with("-m%2Dfallback"), "{}", msgs[1].key);
}

#[test]
fn email_with_sms_fallback_goes_by_sms_when_there_is_no_email() {
    let mut s = Sim::new();
    let a = s.automation(email_then_sms());
    s.contact("c1", json!({"email": null}));
    let msgs = s.messages_to("c1");
    assert_eq!(msgs.len(), 1);
    let m = msgs[0];
    assert_eq!(m.channel.as_deref(), Some("sms"));
    assert!(m.key.ends_with("-m-fallback"), "{}", m.key);
    assert_eq!(m.payload["fallback_for"], "email");
    assert!(
        m.payload["rendered"]["text"]
            .as_str()
            .unwrap()
            .starts_with("Hi Pat, book now"),
        "{}",
        m.payload["rendered"]
    );
    let suppressed = fallback_events(&s, "message_suppressed");
    assert_eq!(suppressed.len(), 1);
    assert_eq!(
        (suppressed[0].0.as_str(), suppressed[0].2.as_deref()),
        ("email", Some("no_address"))
    );
    let queued = fallback_events(&s, "message_queued");
    assert_eq!(queued.len(), 1);
    assert_eq!(
        (queued[0].0.as_str(), queued[0].1.as_deref()),
        ("sms", Some(m.key.as_str()))
    );
    assert_eq!(s.count("step_completed", Some(&a)), 1);
    assert_eq!(s.count("step_failed", Some(&a)), 0);
    assert_eq!(s.enrollment(&a, "c1"), ("completed".into(), None, false));
}

/// A marketing email the practice's settings cannot make compliant (no
/// postal address) may not go out: it fails as an error (the practice's
/// to fix), and the step's SMS fallback goes instead.
#[test]
fn a_marketing_email_without_a_postal_address_goes_by_its_fallback() {
    let mut s = Sim::new();
    let mut doc = serde_json::to_value(&s.settings.doc).unwrap();
    doc["email_footer"]["postal_address"] = json!("");
    s.cmd(json!({"command": "settings.update", "settings": doc}))
        .unwrap();
    let a = s.automation(email_then_sms());
    s.contact("c1", json!({}));
    let msgs = s.messages_to("c1");
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].channel.as_deref(), Some("sms"));
    assert_eq!(msgs[0].payload["fallback_for"], "email");
    let failed = fallback_events(&s, "message_failed");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].0, "email");
    assert_eq!(s.count("step_completed", Some(&a)), 1);
    assert_eq!(s.count("step_failed", Some(&a)), 0);
    let primary: String = s.value(
        "SELECT json_extract(detail, '$.primary_reason') FROM events WHERE kind = 'step_completed'",
    );
    assert_eq!(primary, "no_postal_address");
}

/// A message whose content renders to nothing for a contact (only a first
/// name they lack) is not sent, and fails as its content's fault
/// (`render_failed`), not their address's: a blank text was handed over,
/// and an empty subject read `invalid_address`.
#[test]
fn a_message_that_renders_empty_for_a_contact_is_not_sent() {
    let mut s = Sim::new();
    s.automation(json!({"name": "Blank", "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
        "steps": [{"id": "t", "type": "send_sms", "message": "{{firstname}}"},
                  {"id": "m", "type": "send_email", "subject": "{{ firstname }}", "body": "<p>Hi</p>"}]}));
    s.contact("c1", json!({"first_name": null}));
    assert!(s.messages_to("c1").is_empty());
    let failed = fallback_events(&s, "message_failed");
    assert_eq!(
        failed
            .iter()
            .map(|(channel, _, _)| channel.as_str())
            .collect::<Vec<_>>(),
        ["sms", "email"]
    );
    let reasons: Vec<String> = s.texts(
        "SELECT json_extract(detail, '$.reason') FROM events WHERE kind = ?1 ORDER BY id",
        "message_failed",
    );
    assert_eq!(reasons, ["render_failed", "render_failed"]);
}

#[test]
fn unsubscribed_sms_with_email_fallback_goes_by_email() {
    let mut s = Sim::new();
    let a = s.automation(json!({"name": "SMS, email fallback", "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
        "steps": [{"id": "m", "type": "send_sms", "message": "Book now",
                   "fallback": {"subject": "Book, {{firstname}}", "body": "<p>Book now</p>"}}]}));
    s.contact("c1", json!({"sms_subscription": "unsubscribed"}));
    let msgs = s.messages_to("c1");
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].channel.as_deref(), Some("email"));
    assert_eq!(msgs[0].payload["fallback_for"], "sms");
    assert_eq!(msgs[0].payload["rendered"]["subject"], "Book, Pat");
    assert_eq!(
        fallback_events(&s, "message_suppressed")[0].2.as_deref(),
        Some("unsubscribed")
    );
    assert_eq!(s.count("step_completed", Some(&a)), 1);
    assert_eq!(s.count("step_failed", Some(&a)), 0);
    // Unknown fields of a fallback are refused.
    let e = s
        .cmd(json!({"command": "automation.create", "definition": {"name": "x", "trigger": {"type": "contact_created"},
            "steps": [{"type": "send_sms", "message": "m", "fallback": {"subject": "s", "body": "b", "message": "m"}}]}}))
        .unwrap_err();
    assert_eq!(e.code(), crate::ErrorCode::Invalid, "{e}");
}

#[test]
fn both_channels_unusable_suppresses_both_and_fails_the_step() {
    let mut s = Sim::new();
    let a = s.automation(email_then_sms());
    s.contact(
        "c1",
        json!({"email_subscription": "unsubscribed", "sms_subscription": "unknown"}),
    );
    assert!(s.messages_to("c1").is_empty());
    let suppressed = fallback_events(&s, "message_suppressed");
    let got: Vec<(&str, Option<&str>)> = suppressed
        .iter()
        .map(|(c, _, r)| (c.as_str(), r.as_deref()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("email", Some("unsubscribed")),
            ("sms", Some("unknown_consent"))
        ]
    );
    assert!(suppressed[1].1.as_deref().unwrap().ends_with("-fallback"));
    assert_eq!(s.count("step_failed", Some(&a)), 1);
    assert_eq!(s.count("step_completed", Some(&a)), 0);
    assert_eq!(s.count("message_queued", Some(&a)), 0);
}

#[test]
fn hard_bounce_sends_the_sms_fallback_once() {
    let mut s = Sim::new();
    let a = s.automation(email_then_sms());
    s.contact("c1", json!({}));
    let msgs = s.messages_to("c1");
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].channel.as_deref(), Some("email"));
    let key = msgs[0].key.clone();
    for _ in 0..2 {
        s.push(json!({"type": "delivery.receipt", "message_key": key, "status": "bounced", "bounce": "hard"}))
            .unwrap();
    }
    let msgs = s.messages_to("c1");
    assert_eq!(msgs.len(), 2, "one fallback, however many bounces");
    assert_eq!(msgs[1].channel.as_deref(), Some("sms"));
    assert_eq!(msgs[1].key, format!("{key}-fallback"));
    assert_eq!(msgs[1].payload["fallback_for"], "email");
    // The fallback failing in turn has no fallback of its own.
    let fb = msgs[1].key.clone();
    s.push(json!({"type": "delivery.receipt", "message_key": fb, "status": "failed"}))
        .unwrap();
    assert_eq!(s.messages_to("c1").len(), 2);
    assert_eq!(s.count("message_queued", Some(&a)), 2);
    // A soft bounce is not final: no fallback for it.
    s.contact("c2", json!({}));
    let key2 = s.messages_to("c2")[0].key.clone();
    s.push(json!({"type": "delivery.receipt", "message_key": key2, "status": "bounced", "bounce": "soft"}))
        .unwrap();
    assert_eq!(s.messages_to("c2").len(), 1);
}

#[test]
fn sms_fallback_after_a_late_bounce_waits_for_sending_hours() {
    let mut s = Sim::new();
    s.automation(email_then_sms());
    // The same steps in an automation that runs 09:00-17:00 only.
    let mut windowed = email_then_sms();
    windowed["run_window"] = every_day("09:00", "17:00");
    windowed["trigger"] = json!({"type": "form_submitted"});
    s.automation(windowed);
    s.contact("c1", json!({}));
    s.contact("c2", json!({"time_zone": "America/Los_Angeles"}));
    s.submit_form("c1", "sub1");
    let key = |s: &Sim, c: &str| s.messages_to(c)[0].key.clone();
    let (k1, k2) = (key(&s, "c1"), key(&s, "c2"));
    let k3 = s.messages_to("c1")[1].key.clone();
    // 21:30 in New York (02:30Z): past the 08:00-21:00 SMS hours there.
    s.advance(parse_rfc3339("2026-01-06T02:30:00Z").unwrap() - s.now);
    for k in [&k1, &k2, &k3] {
        s.push(json!({"type": "delivery.receipt", "message_key": k, "status": "bounced", "bounce": "hard"}))
            .unwrap();
    }
    let fallback_of = |s: &Sim, k: &str| -> i64 {
        s.conn
            .query_row(
                "SELECT next_attempt_at FROM outbox WHERE idempotency_key = ?1 || '-fallback'",
                [k],
                |r| r.get(0),
            )
            .unwrap()
    };
    let held = |s: &Sim, c: &str| {
        let k = if c == "c1" { &k1 } else { &k2 };
        fallback_of(s, k)
    };
    // New York opens at 08:00 EST the next morning (13:00Z).
    let morning = parse_rfc3339("2026-01-06T13:00:00Z").unwrap();
    assert_eq!(held(&s, "c1"), morning);
    // The windowed automation's opens at 09:00 (14:00Z).
    let nine = parse_rfc3339("2026-01-06T14:00:00Z").unwrap();
    assert_eq!(fallback_of(&s, &k3), nine);
    // 18:30 in Los Angeles is inside its hours: at once.
    assert_eq!(held(&s, "c2"), s.now);
    // The hold is for the sending hours: a change of the practice's zone
    // (or of the hours) releases it, to be screened again for the new
    // ones, as any text held for them.
    let mut doc = serde_json::to_value(&s.settings.doc).unwrap();
    doc["time_zone"] = json!("America/Chicago");
    s.cmd(json!({"command": "settings.update", "settings": doc}))
        .unwrap();
    assert_eq!(held(&s, "c1"), s.now, "released");
    // A hold for the run window is not the hand-over's to redo: it stays.
    assert_eq!(fallback_of(&s, &k3), nine);
}

#[test]
fn performance_counts_each_message_once_and_machines_never() {
    let mut s = Sim::new();
    let a = s.automation(json!({"name": "Hello", "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
        "steps": [{"id": "mail", "type": "send_email", "subject": "Hi", "body": "<p>Hi <a href=\"https://riverside.example/book\">book</a></p>"}]}));
    for c in ["c1", "c2", "c3"] {
        s.contact(c, json!({}));
    }
    let key = |s: &Sim, c: &str| s.messages_to(c)[0].key.clone();
    let (k1, k2, k3) = (key(&s, "c1"), key(&s, "c2"), key(&s, "c3"));
    let receipt = |s: &mut Sim, k: &str, status: &str, bounce: Option<&str>| {
        s.push(json!({"type": "delivery.receipt", "message_key": k, "status": status, "bounce": bounce}))
            .unwrap();
    };
    // c1: delivered, and the receipt pushed again under a new event id.
    receipt(&mut s, &k1, "delivered", None);
    receipt(&mut s, &k1, "delivered", None);
    // c2: delivered, then a late hard bounce: bounced, not delivered.
    receipt(&mut s, &k2, "delivered", None);
    receipt(&mut s, &k2, "bounced", Some("hard"));
    receipt(&mut s, &k2, "bounced", Some("hard"));
    // c3: delivered; a privacy proxy opens it, then the person opens it twice.
    receipt(&mut s, &k3, "delivered", None);
    let pixel = s.messages_to("c3")[0].payload["rendered"]["html"]
        .as_str()
        .unwrap()
        .split("src=\"")
        .last()
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let path = pixel
        .trim_start_matches("https://t.riverside.example")
        .to_string();
    let open = |s: &mut Sim, method: &str, agent: &str| {
        let hit = crate::core::hits::Hit {
            method: method.into(),
            path: path.clone(),
            user_agent: Some(agent.into()),
            ip_class: None,
        };
        s.hit(&hit).unwrap();
    };
    open(
        &mut s,
        "GET",
        "Mozilla/5.0 (via ggpht.com GoogleImageProxy)",
    );
    // A prefetcher's HEAD, whatever agent it gives, is no person's open.
    open(
        &mut s,
        "HEAD",
        "Mozilla/5.0 (Macintosh) AppleWebKit/605.1.15",
    );
    // A GET as the message is delivered is a scanner's: nobody reads one
    // within 2 seconds of it arriving.
    open(
        &mut s,
        "GET",
        "Mozilla/5.0 (Macintosh) AppleWebKit/605.1.15",
    );
    assert_eq!(s.count("message_opened", None), 0);
    assert_eq!(s.count("message_opened_by_machine", None), 3);
    s.advance(MINUTE);
    open(
        &mut s,
        "GET",
        "Mozilla/5.0 (Macintosh) AppleWebKit/605.1.15",
    );
    open(
        &mut s,
        "GET",
        "Mozilla/5.0 (Macintosh) AppleWebKit/605.1.15",
    );
    s.push(json!({"type": "email.opened", "message_key": k1}))
        .unwrap();
    let v = s.view("automation_performance", json!({"automation_id": a}));
    let email = &v["channel_breakdown"][0];
    assert_eq!(email["delivered"], 2, "c1 once, c3; c2 bounced: {email}");
    assert_eq!(email["bounced"], 1, "{email}");
    assert_eq!(email["opened"], 2, "c3 once (not the proxy), c1: {email}");
    assert_eq!(s.count("receipt_repeated", None), 2);
    assert_eq!(s.count("message_opened_again", None), 1);
    assert_eq!(s.count("message_opened_by_machine", None), 3);
}

/// A click on an email whose pixel never loaded counts as its open too,
/// once: clicks never outnumber opens.
#[test]
fn a_click_without_an_open_counts_as_the_open() {
    let mut s = Sim::new();
    let a = s.automation(json!({"name": "Hello", "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
        "steps": [{"id": "mail", "type": "send_email", "subject": "Hi", "body": "<p>Hi <a href=\"https://riverside.example/book\">book</a></p>"}]}));
    s.contact("c1", json!({}));
    let html = s.messages_to("c1")[0].payload["rendered"]["html"]
        .as_str()
        .unwrap()
        .to_string();
    let url = |marker: &str| -> String {
        let at = html.find(marker).expect("a tracking url");
        html[at..]
            .split('"')
            .next()
            .unwrap()
            .trim_start_matches("https://t.riverside.example")
            .to_string()
    };
    let (click, pixel) = (
        url("https://t.riverside.example/c/"),
        url("https://t.riverside.example/o/"),
    );
    let get = |s: &mut Sim, path: &str| {
        let hit = crate::core::hits::Hit {
            method: "GET".into(),
            path: path.into(),
            user_agent: Some("Mozilla/5.0 (Macintosh) AppleWebKit/605.1.15".into()),
            ip_class: None,
        };
        s.hit(&hit).unwrap();
    };
    let figures = |s: &Sim| {
        let v = s.view("automation_performance", json!({"automation_id": a}));
        let email = &v["channel_breakdown"][0];
        (email["opened"].as_u64(), email["clicked"].as_u64())
    };
    // Clicked, the pixel never loaded: opened too.
    get(&mut s, &click);
    assert_eq!(figures(&s), (Some(1), Some(1)));
    // The pixel later, and a second click: still one message opened.
    get(&mut s, &pixel);
    get(&mut s, &click);
    assert_eq!(figures(&s), (Some(1), Some(1)));
    assert_eq!(s.count("message_opened_again", None), 1, "the pixel, later");
}

#[test]
fn builder_sms_panel_shows_characters_segments_and_credits() {
    let mut s = Sim::new();
    let text = "€".repeat(81); // 81 × 2 septets = 162 > 160: two segments of GSM-7
    let a = s.automation(json!({"name": "Long SMS", "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
        "steps": [{"id": "sms", "type": "send_sms", "message": text}]}));
    let v = s.view(
        "automation_builder",
        json!({"automation_id": a, "selected_node": "sms"}),
    );
    let fields = v["build"]["config_panel"]["fields"].as_array().unwrap();
    let counter = fields
        .iter()
        .find(|f| f["id"] == "sms_counter")
        .expect("counter field");
    assert_eq!(counter["kind"], "sms_counter");
    assert_eq!(
        (
            counter["value"]["encoding"].as_str(),
            counter["value"]["segments"].as_u64()
        ),
        (Some("gsm7"), Some(2))
    );
    assert_eq!(counter["value"]["credits"], 2);
}

#[test]
fn the_consent_footer_opens_each_number_not_each_contact() {
    let mut s = Sim::new();
    s.automation(json!({"name": "Hello", "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
        "steps": [{"type": "send_sms", "message": "Hi {{firstname}}"}]}));
    s.automation(
        json!({"name": "New number", "run_window": {"mode": "any_time"},
        "trigger": {"type": "property_changed", "property": "phone"},
        "steps": [{"type": "send_sms", "message": "Number saved"}]}),
    );
    let texts = |s: &Sim, c: &str| -> Vec<String> {
        s.messages_to(c)
            .iter()
            .map(|m| m.payload["rendered"]["text"].as_str().unwrap().to_owned())
            .collect()
    };
    s.contact("mum", json!({"phone": "+16175550100"}));
    assert_eq!(texts(&s, "mum"), ["Hi Pat Reply STOP to opt out"]);
    // A second person on the family phone while Mum's text has not left:
    // it may reach the number first (Mum's waiting for a retry) or alone
    // (Mum's failing), so it carries the footer too.
    s.contact("kid", json!({"phone": "(617) 555-0100"}));
    assert_eq!(texts(&s, "kid"), ["Hi Pat Reply STOP to opt out"]);
    // Once a text with the footer is accepted (the kid's here, Mum's
    // still waiting, in a paused automation say), the thread is open: no
    // footer.
    let kids = s.messages_to("kid")[0].key.clone();
    s.accept(&kids);
    s.contact("dad", json!({"phone": "617.555.0100"}));
    assert_eq!(texts(&s, "dad"), ["Hi Pat"]);
    assert_eq!(
        s.messages_to("dad")[0].payload["rendered"]["first_in_thread"],
        false
    );
    // Mum's new number has never heard from the practice.
    s.push(json!({"type": "contact.upserted", "contact": {"id": "mum", "phone": "+16175550177"}}))
        .unwrap();
    assert_eq!(
        texts(&s, "mum"),
        [
            "Hi Pat Reply STOP to opt out",
            "Number saved Reply STOP to opt out"
        ]
    );
    // One thread per number, opened by its first message.
    let threads: Vec<(String, String)> = s
        .conn
        .prepare("SELECT phone_key, first_key FROM sms_threads ORDER BY phone_key")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(threads.len(), 2, "{threads:?}");
    assert!(threads.iter().any(|(_, k)| *k == kids), "{threads:?}");
    // An opener that failed for good without its thread being given up
    // (its answer lost past every retry): the next text opens the thread.
    let saved = s.messages_to("mum")[1].key.clone();
    s.conn
        .execute(
            "UPDATE outbox SET status = 'failed' WHERE idempotency_key = ?1",
            [&saved],
        )
        .unwrap();
    s.contact("gran", json!({"phone": "+1 617 555 0177"}));
    assert_eq!(texts(&s, "gran"), ["Hi Pat Reply STOP to opt out"]);
    let grans = s.messages_to("gran")[0].key.clone();
    s.accept(&grans);
    s.contact("grandad", json!({"phone": "6175550177"}));
    assert_eq!(texts(&s, "grandad"), ["Hi Pat"]);
}

#[test]
fn automations_name_only_lists_and_templates_that_exist_and_keep_them() {
    let mut s = Sim::new();
    let on_list = |list: &str| {
        json!({"command": "automation.create", "automation_id": "a1", "definition": {"name": "Joined",
            "trigger": {"type": "added_to_list", "list_id": list},
            "steps": [{"id": "mail", "type": "send_email", "template_id": "welcome"}]}})
    };
    s.cmd(json!({"command": "template.create", "template_id": "welcome", "template": {"channel": "email", "name": "Welcome",
        "subject": "Hi", "html_body": "<p>Hi</p>"}}))
        .unwrap();
    // A list nobody created: refused, nothing saved.
    let e = s.cmd(on_list("allergy")).unwrap_err();
    assert_eq!(e.code(), crate::ErrorCode::NotFound);
    assert!(e.to_string().contains("trigger: list allergy"), "{e}");
    let saved: i64 = s
        .conn
        .query_row("SELECT COUNT(*) FROM automations", [], |r| r.get(0))
        .unwrap();
    assert_eq!(saved, 0);
    // A branch's list condition is checked too.
    let e = s
        .cmd(json!({"command": "automation.create", "automation_id": "a2", "definition": {"name": "Branch",
            "trigger": {"type": "contact_created"},
            "steps": [{"id": "b", "type": "branch", "condition": {"type": "all", "conditions": [
                {"type": "list_membership", "list_id": "vip"}]}, "yes": [], "no": []}]}}))
        .unwrap_err();
    assert!(e.to_string().contains("step b: list vip"), "{e}");

    s.cmd(json!({"command": "list.create", "list_id": "allergy", "name": "Allergy season"}))
        .unwrap();
    s.cmd(on_list("allergy")).unwrap();
    // While an automation names them, the list and the template stay.
    for (command, field, id) in [
        ("list.delete", "list_id", "allergy"),
        ("template.delete", "template_id", "welcome"),
    ] {
        let e = s.cmd(json!({"command": command, field: id})).unwrap_err();
        assert_eq!(e.code(), crate::ErrorCode::Conflict, "{command}");
        assert!(e.to_string().contains("used by automation a1"), "{e}");
    }
    let lists: i64 = s
        .conn
        .query_row(
            "SELECT COUNT(*) FROM lists WHERE deleted_at IS NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(lists, 1);
    s.cmd(json!({"command": "automation.delete", "automation_id": "a1"}))
        .unwrap();
    s.cmd(json!({"command": "list.delete", "list_id": "allergy"}))
        .unwrap();
    s.cmd(json!({"command": "template.delete", "template_id": "welcome"}))
        .unwrap();
    // A deleted row keeps its id (its history names it): creating another
    // under that id is refused, and the answer says why.
    let template = json!({"channel": "sms", "name": "W", "message": "Hello"});
    for (command, field, id, extra) in [
        (
            "automation.create",
            "automation_id",
            "a1",
            json!({"definition": {"name": "Again",
            "trigger": {"type": "contact_created"}, "steps": []}}),
        ),
        (
            "list.create",
            "list_id",
            "allergy",
            json!({"name": "Again"}),
        ),
        (
            "template.create",
            "template_id",
            "welcome",
            json!({"template": template}),
        ),
    ] {
        let mut cmd = extra;
        cmd["command"] = json!(command);
        cmd[field] = json!(id);
        let e = s.cmd(cmd).unwrap_err();
        assert_eq!(e.code(), crate::ErrorCode::Conflict, "{command}");
        assert!(e.to_string().contains(&format!("{id} was deleted")), "{e}");
    }
}

/// A command's error names the field at fault inside the document it
/// carries, as an event's does.
#[test]
fn command_errors_name_the_field_inside_the_definition() {
    let mut s = Sim::new();
    let create =
        |definition: Value| json!({"command": "automation.create", "definition": definition});
    let steps = json!([{"type": "delay", "amount": 1, "unit": "days"},
                       {"id": "wait", "type": "delay", "amount": 1, "unit": "minute"}]);
    for (command, path) in [
        (
            create(json!({"name": "X", "trigger": {"type": "contact_created"}, "steps": steps})),
            "definition.steps[1] (step wait): unknown variant",
        ),
        (
            create(json!({"name": 5, "trigger": {"type": "contact_created"}, "steps": []})),
            "definition.name: invalid type: integer",
        ),
        (
            create(
                json!({"name": "X", "trigger": {"type": "added_to_list", "list_id": "l", "bogus": 1}, "steps": []}),
            ),
            "definition.trigger: unknown field `bogus`",
        ),
        (
            json!({"command": "template.create", "template": {"channel": "sms", "name": "T", "message": 7}}),
            "template.message: invalid type: integer",
        ),
        (
            json!({"command": "settings.update", "settings": {"practice_name": ["P"]}}),
            "settings.practice_name: invalid type: sequence",
        ),
    ] {
        let e = s.cmd(command).unwrap_err();
        assert_eq!(e.code(), crate::ErrorCode::Invalid);
        assert!(e.to_string().contains(path), "{e}");
    }
    // The command's own fields, and an unknown command, as before.
    let e = s.cmd(json!({"command": "automation.creat"})).unwrap_err();
    assert!(e.to_string().contains("unknown variant"), "{e}");
    let e = s
        .cmd(json!({"command": "list.create", "name": "L", "bogus": 1}))
        .unwrap_err();
    assert!(e.to_string().contains("unknown field `bogus`"), "{e}");
    let n: i64 = s.value("SELECT COUNT(*) FROM automations");
    assert_eq!(n, 0);
}

/// Deleting a list takes its members out of it, but it is staff's doing,
/// not the members' activity: their Last Activity stays.
#[test]
fn deleting_a_list_is_no_activity_of_its_members() {
    let mut s = Sim::new();
    s.contact("c1", json!({}));
    s.cmd(json!({"command": "list.create", "list_id": "old", "name": "Old campaign"}))
        .unwrap();
    s.cmd(json!({"command": "list.add_contacts", "list_id": "old", "contact_ids": ["c1"]}))
        .unwrap();
    let last = |s: &Sim| -> i64 { s.value("SELECT last_activity FROM contacts WHERE id = 'c1'") };
    let before = last(&s);
    s.advance(40 * DAY);
    s.cmd(json!({"command": "list.delete", "list_id": "old"}))
        .unwrap();
    assert_eq!(s.count("list_left", None), 1, "the member left the list");
    assert_eq!(last(&s), before);
}

#[test]
fn goal_met_needs_a_goal() {
    let mut s = Sim::new();
    let e = s
        .cmd(json!({"command": "automation.create", "automation_id": "a1", "definition": {"name": "No goal",
            "trigger": {"type": "contact_created"}, "unenrollment": {"goal_met": true}, "steps": []}}))
        .unwrap_err();
    assert_eq!(e.code(), crate::ErrorCode::Invalid);
    assert!(e.to_string().contains("unenrollment.goal_met"), "{e}");
}

#[test]
fn the_builders_preview_renders_a_steps_own_message() {
    let mut s = Sim::new();
    preview_templates(&mut s);
    let a = s.automation(json!({"name": "Hello", "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
        "steps": [{"id": "mail", "name": "Welcome email", "type": "send_email", "subject": "Hi {{firstname}}",
                   "preheader": "From {{practice}}", "body": "<p>Welcome {{firstname}}</p>",
                   "sender": {"from_name": "Dr. Lee", "from_address": "lee@riverside.example"}},
                  {"id": "text", "type": "send_sms", "message": "Hi {{firstname}}", "sender_number": "+16175559999"},
                  {"id": "saved", "type": "send_sms", "template_id": "ping"},
                  {"id": "wait", "type": "delay", "amount": 1, "unit": "days"}]}));
    // The builder's Preview button opens it.
    let builder = s.view(
        "automation_builder",
        json!({"automation_id": a, "selected_node": "mail"}),
    );
    let button = builder["build"]["config_panel"]["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == "preview")
        .cloned()
        .unwrap();
    assert_eq!(button["view"]["view"], "template_preview");
    assert_eq!(
        button["view"]["params"],
        json!({"automation_id": a, "step_id": "mail"})
    );

    let v = preview(&s, button["view"]["params"].clone()).unwrap();
    assert_eq!(v["header"]["template_id"], Value::Null);
    assert_eq!(v["header"]["step_id"], "mail");
    assert_eq!(v["header"]["name"], "Welcome email");
    let inbox = &v["email"]["inbox"];
    assert_eq!(inbox["subject"], "Hi Alex");
    assert_eq!(inbox["preheader"], "From Riverside Family Practice");
    assert_eq!(
        (inbox["from_name"].as_str(), inbox["from_address"].as_str()),
        (Some("Dr. Lee"), Some("lee@riverside.example")),
        "the step's sender"
    );
    let html = v["email"]["desktop"]["html"].as_str().unwrap();
    assert!(
        html.contains("Welcome Alex") && html.contains("12 River Road"),
        "{html}"
    );
    assert_eq!(v["actions"], json!([]), "edited in the builder");

    let text = preview(
        &s,
        json!({"automation_id": a, "step_id": "text", "contact_id": null}),
    )
    .unwrap();
    assert_eq!(text["header"]["name"], "Step text");
    assert_eq!(text["sms"]["text"], "Hi Alex Reply STOP to opt out");
    assert_eq!(
        text["sms"]["sender_number"], "+16175559999",
        "the step's own"
    );
    let saved = preview(&s, json!({"automation_id": a, "step_id": "saved"})).unwrap();
    assert_eq!(
        saved["sms"]["sender_number"],
        Value::Null,
        "the practice has none set"
    );
    assert_eq!(saved["header"]["template_id"], "ping");
    assert_eq!(saved["header"]["name"], "Ping");
    assert_eq!(saved["actions"].as_array().unwrap().len(), 2);

    for (params, code, says) in [
        (
            json!({"automation_id": a, "step_id": "wait"}),
            crate::ErrorCode::Invalid,
            "sends no email or SMS",
        ),
        (
            json!({"automation_id": a, "step_id": "nope"}),
            crate::ErrorCode::NotFound,
            "step nope",
        ),
        (
            json!({"automation_id": a}),
            crate::ErrorCode::Invalid,
            "automation_id and step_id",
        ),
        (
            json!({"template_id": "ping", "automation_id": a, "step_id": "text"}),
            crate::ErrorCode::Invalid,
            "automation_id and step_id",
        ),
        (json!({}), crate::ErrorCode::Invalid, "template_id"),
    ] {
        let e = preview(&s, params.clone()).unwrap_err();
        assert_eq!(e.code(), code, "{params}");
        assert!(e.to_string().contains(says), "{params}: {e}");
    }
}

#[test]
fn a_click_proves_the_open_the_pixel_missed() {
    let mut s = Sim::new();
    let news = s.automation(json!({"name": "News", "run_window": {"mode": "any_time"}, "trigger": {"type": "contact_created"},
        "steps": [{"id": "mail", "type": "send_email", "subject": "News", "body": "<p>News</p>"},
                  {"type": "delay", "amount": 1, "unit": "days"},
                  {"id": "b", "type": "branch", "condition": {"type": "step_engagement", "step_id": "mail", "engagement": "opened"},
                   "yes": [], "no": []}]}));
    let opened = s.automation(json!({"name": "Opened", "run_window": {"mode": "any_time"},
        "trigger": {"type": "email_engagement", "engagement": "opened"}, "steps": [{"type": "delay", "amount": 5, "unit": "days"}]}));
    for c in ["blocked", "reader", "quiet"] {
        s.contact(c, json!({}));
    }
    let key = |s: &Sim, c: &str| s.messages_to(c)[0].key.clone();
    // Images blocked: no open, only the click.
    let k = key(&s, "blocked");
    s.push(json!({"type": "email.clicked", "message_key": k}))
        .unwrap();
    // Opened, then clicked: one enrollment, from the open.
    let k = key(&s, "reader");
    s.push(json!({"type": "email.opened", "message_key": k}))
        .unwrap();
    s.push(json!({"type": "email.clicked", "message_key": k}))
        .unwrap();
    assert_eq!(s.count("enrolled", Some(&opened)), 2);
    assert_eq!(s.enrollment(&opened, "blocked").0, "active");
    assert_eq!(
        s.count("trigger_ignored", Some(&opened)),
        0,
        "the click after an open is not another open"
    );
    s.advance(2 * DAY);
    let paths = s.texts(
        "SELECT contact_id || ':' || json_extract(detail, '$.path') FROM events WHERE kind = 'step_completed' AND step_id = 'b' AND automation_id = ?1 ORDER BY contact_id",
        &news,
    );
    assert_eq!(paths, ["blocked:yes", "quiet:no", "reader:yes"]);
}

#[test]
fn a_stop_is_never_lost_and_start_lifts_only_a_stop() {
    let mut s = Sim::new();
    // The EHR forwards a STOP for a patient it has not pushed yet.
    s.push(json!({"type": "sms.received", "contact_id": "new", "from": "+16175550142", "body": "STOP"}))
        .unwrap();
    s.contact("new", json!({"phone": "+16175550142"}));
    assert_eq!(sms_of(&s, "new"), "unsubscribed", "the number said stop");
    // A STOP answering a message the module does not know still stops.
    s.contact("c1", json!({}));
    s.push(json!({"type": "sms.received", "contact_id": "c1", "body": "STOP", "in_reply_to": "t-e404-x"}))
        .unwrap();
    assert_eq!(sms_of(&s, "c1"), "unsubscribed");
    // An ordinary reply to an unknown message is still an error.
    let e = s
        .push(json!({"type": "sms.received", "contact_id": "c1", "body": "Thanks", "in_reply_to": "t-e404-x"}))
        .unwrap_err();
    assert_eq!(e.code(), crate::ErrorCode::NotFound);
    // Staff recorded an opt-out: the patient's "YES" to a question is no
    // consent, and START is theirs to say only after their own STOP.
    s.contact("c2", json!({}));
    s.push(json!({"type": "contact.opted_out", "contact_id": "c2", "channel": "sms", "reason": "staff"}))
        .unwrap();
    for body in ["YES", "START"] {
        s.push(json!({"type": "sms.received", "contact_id": "c2", "body": body}))
            .unwrap();
        assert_eq!(sms_of(&s, "c2"), "unsubscribed", "{body}");
    }
    s.push(json!({"type": "sms.received", "contact_id": "c1", "body": "START"}))
        .unwrap();
    assert_eq!(sms_of(&s, "c1"), "subscribed", "their own STOP, lifted");
}

#[test]
fn a_contact_update_from_the_future_counts_as_now() {
    let mut s = Sim::new();
    s.contact("c1", json!({"first_name": "Pat"}));
    // The host's clock runs a year ahead.
    s.push(json!({"type": "contact.upserted", "occurred_at": "2027-01-05T14:00:00Z", "contact": {"id": "c1", "first_name": "Patricia"}}))
        .unwrap();
    s.advance(HOUR);
    // An hour later a correct clock's update still applies.
    let out = s
        .push(json!({"type": "contact.upserted", "occurred_at": crate::clock::to_rfc3339(s.now), "contact": {"id": "c1", "first_name": "Trish"}}))
        .unwrap();
    assert_eq!(out, crate::core::ingest::Outcome::Applied);
    let name = s.texts(
        "SELECT json_extract(props, '$.first_name') FROM contacts WHERE id = ?1",
        "c1",
    );
    assert_eq!(name, ["Trish"]);
}

#[test]
fn an_event_id_used_again_for_another_event_is_refused() {
    let mut s = Sim::new();
    let created = json!({"event_id": "h1", "type": "contact.upserted", "occurred_at": "2026-01-05T13:00:00Z",
                         "contact": {"id": "c1", "first_name": "Pat", "email": "PAT@example.com"}});
    assert_eq!(
        s.push(created.clone()).unwrap(),
        crate::core::ingest::Outcome::Applied
    );
    // The host's retry: the same event, a duplicate.
    assert_eq!(
        s.push(created).unwrap(),
        crate::core::ingest::Outcome::Duplicate
    );
    // Also when the retry writes its times another way.
    for (id, at) in [
        ("h2", "2026-01-12T15:00:00Z"),
        ("h2", "2026-01-12T10:00:00.000-05:00"),
    ] {
        let booked = json!({"event_id": id, "type": "appointment.booked",
            "appointment": {"id": "ap0", "contact_id": "c1", "starts_at": at}});
        s.push(booked).unwrap();
    }
    for at in ["2026-01-05T13:00:00Z", "2026-01-05T13:00:00+00:00"] {
        let seen = json!({"event_id": "h3", "type": "contact.upserted", "last_activity_at": at,
            "contact": {"id": "c1"}});
        s.push(seen).unwrap();
    }
    let duplicates: i64 = s.value("SELECT COUNT(*) FROM ingested_events");
    assert_eq!(duplicates, 3, "h1, h2, h3 once each");
    // A booking sent under the same id (a host bug) is refused, not lost.
    let e = s
        .push(json!({"event_id": "h1", "type": "appointment.booked",
                     "appointment": {"id": "ap1", "contact_id": "c1", "starts_at": "2026-01-12T15:00:00Z"}}))
        .unwrap_err();
    assert_eq!(e.code(), crate::ErrorCode::Conflict);
    assert!(e.to_string().contains("event_id h1"), "{e}");
    let booked: i64 = s
        .conn
        .query_row("SELECT COUNT(*) FROM appointments", [], |r| r.get(0))
        .unwrap();
    assert_eq!(booked, 1, "ap0 only");
}

#[test]
fn an_appointment_first_heard_of_after_its_booking_still_makes_a_patient() {
    let mut s = Sim::new();
    let flip = s.automation(json!({"name": "First visit", "run_window": {"mode": "any_time"}, "trigger": {"type": "status_changed_to_patient"},
        "steps": [{"type": "delay", "amount": 1, "unit": "days"}]}));
    let appt = |kind: &str, id: &str, contact: &str| {
        json!({"type": format!("appointment.{kind}"),
               "appointment": {"id": id, "contact_id": contact, "starts_at": "2026-01-12T15:00:00Z"}})
    };
    let status = |s: &Sim, id: &str| s.texts("SELECT status FROM contacts WHERE id = ?1", id);
    let appointment =
        |s: &Sim, id: &str| s.texts("SELECT status FROM appointments WHERE id = ?1", id);
    s.contact("seen", json!({}));
    s.contact("gone", json!({}));
    // The EHR's first word of ap1 is that the visit happened.
    s.push(appt("completed", "ap1", "seen")).unwrap();
    assert_eq!(status(&s, "seen"), ["patient"]);
    assert_eq!(s.count("enrolled", Some(&flip)), 1);
    // A re-sync saying booked does not undo the visit, nor book anew.
    s.push(appt("booked", "ap1", "seen")).unwrap();
    assert_eq!(appointment(&s, "ap1"), ["completed"]);
    // A booking the patient cancelled was a booking.
    s.push(appt("cancelled", "ap2", "gone")).unwrap();
    assert_eq!(status(&s, "gone"), ["patient"]);
    assert_eq!(s.count("enrolled", Some(&flip)), 2);
}

#[test]
fn a_replayed_form_or_review_is_a_duplicate_and_another_under_its_id_is_refused() {
    let mut s = Sim::new();
    let forms = s.automation(json!({"name": "Intake", "run_window": {"mode": "any_time"}, "trigger": {"type": "form_submitted"},
        "steps": [{"type": "delay", "amount": 1, "unit": "days"}]}));
    s.contact("c1", json!({}));
    let form = |answer: &str| {
        json!({"type": "form.submitted", "submission": {"id": "fs1", "form_id": "intake", "form_name": "Intake",
               "contact_id": "c1", "answers": {"allergies": answer}}})
    };
    let review = |rating: i64| json!({"type": "review.submitted", "review": {"id": "rv1", "contact_id": "c1", "source": "google", "rating": rating}});
    use crate::core::ingest::Outcome;
    assert_eq!(s.push(form("none")).unwrap(), Outcome::Applied);
    assert_eq!(s.push(review(5)).unwrap(), Outcome::Applied);
    // A nightly replay sends both again under new event ids: nothing new,
    // and the rest of its batch goes through.
    assert_eq!(s.push(form("none")).unwrap(), Outcome::Duplicate);
    assert_eq!(s.push(review(5)).unwrap(), Outcome::Duplicate);
    assert_eq!(s.count("enrolled", Some(&forms)), 1);
    assert_eq!(s.count("form_submitted", None), 1);
    // Other content under a recorded id is a host bug: refused.
    for (ev, what) in [
        (form("penicillin"), "form submission fs1"),
        (review(1), "review rv1"),
    ] {
        let e = s.push(ev).unwrap_err();
        assert_eq!(e.code(), crate::ErrorCode::Conflict);
        assert!(e.to_string().contains(what), "{e}");
    }
}

/// A step id names one step for good: an edit may bring back a removed
/// step under its id, but not give the id to a step of another type (it
/// would inherit the old step's figures and effect keys).
#[test]
fn an_edit_cannot_give_a_removed_steps_id_to_a_step_of_another_type() {
    let mut s = Sim::new();
    let a = s.automation(five_steps(false));
    let with = |third: Value| {
        let mut def = five_steps(false);
        def["steps"][2] = third;
        def
    };
    let update = |s: &mut Sim, def: Value| {
        s.cmd(json!({"command": "automation.update", "automation_id": a, "definition": def}))
    };
    // v2 drops the email s3; v3 tries a delay under its id.
    let mut v2 = five_steps(false);
    v2["steps"].as_array_mut().unwrap().remove(2);
    update(&mut s, v2).unwrap();
    let e = update(
        &mut s,
        with(json!({"id": "s3", "type": "delay", "amount": 1, "unit": "hours"})),
    )
    .unwrap_err();
    assert_eq!(e.code(), crate::ErrorCode::Invalid);
    assert!(
        e.to_string().contains("step id s3 was a send_email step"),
        "{e}"
    );
    let version: i64 = s
        .conn
        .query_row(
            "SELECT current_version FROM automations WHERE id = ?1",
            [&a],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(version, 2, "a refused edit saved a version");
    // Without an id it gets a new one; the email itself may come back.
    update(
        &mut s,
        with(json!({"type": "delay", "amount": 1, "unit": "hours"})),
    )
    .unwrap();
    update(&mut s, five_steps(false)).unwrap();
}

#[test]
fn a_step_an_edit_moves_after_a_contacts_position_does_not_run_twice() {
    let mut s = Sim::new();
    let a = s.automation(five_steps(false));
    s.contact("c1", json!({})); // s1 sent, waiting at s2
    let reorder = |order: [&str; 5]| {
        let mut def = five_steps(false);
        let steps = def["steps"].as_array().unwrap().clone();
        def["steps"] = json!(
            order
                .iter()
                .map(|id| steps.iter().find(|st| st["id"] == *id).unwrap().clone())
                .collect::<Vec<_>>()
        );
        def
    };
    let update = |s: &mut Sim, def: Value| {
        s.cmd(json!({"command": "automation.update", "automation_id": a, "definition": def}))
            .unwrap();
    };
    // The welcome email moves after the first delay.
    update(&mut s, reorder(["s2", "s1", "s3", "s4", "s5"]));
    s.contact("c2", json!({})); // enrolled under the new order: waits first
    s.advance(2 * DAY + MINUTE); // c1: s1 passed over, s3 sent, waiting at s4
    // The second email moves after the second delay: c1 has sent it already.
    update(&mut s, reorder(["s2", "s1", "s4", "s3", "s5"]));
    s.advance(10 * DAY);
    let steps_of = |s: &Sim, contact: &str, kind: &str| -> Vec<String> {
        s.conn
            .prepare("SELECT step_id FROM events WHERE contact_id = ?1 AND kind = ?2 ORDER BY id")
            .unwrap()
            .query_map([contact, kind], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert_eq!(steps_of(&s, "c1", "message_queued"), ["s1", "s3", "s5"]);
    assert_eq!(steps_of(&s, "c1", "step_skipped"), ["s1", "s3"]);
    assert_eq!(
        steps_of(&s, "c1", "step_executed"),
        ["s1", "s2", "s3", "s4", "s5"],
        "each step counted once"
    );
    assert_eq!(s.messages_to("c1").len(), 3);
    assert_eq!(s.enrollment(&a, "c1").0, "completed");
    // Enrolled after the first edit, and at s4 with s3 sent at the second.
    assert_eq!(steps_of(&s, "c2", "message_queued"), ["s1", "s3", "s5"]);
    assert_eq!(steps_of(&s, "c2", "step_skipped"), ["s3"]);
    assert_eq!(s.enrollment(&a, "c2").0, "completed");
}

#[test]
fn an_appointment_change_arriving_late_does_not_overwrite_a_newer_one() {
    let mut s = Sim::new();
    let a = s.automation(five_steps(false));
    s.contact("c1", json!({}));
    s.contact("c2", json!({}));
    let start = s.now;
    let appt = |kind: &str, id: &str, contact: &str, minutes: i64| {
        json!({"type": format!("appointment.{kind}"), "occurred_at": crate::clock::to_rfc3339(start + minutes * MINUTE),
               "appointment": {"id": id, "contact_id": contact, "starts_at": "2026-01-12T15:00:00Z"}})
    };
    let status = |s: &Sim, id: &str| s.texts("SELECT status FROM appointments WHERE id = ?1", id);
    s.advance(60 * MINUTE);
    // Booked at +10 min, cancelled at +30, the cancellation pushed first.
    s.push(appt("cancelled", "ap1", "c1", 30)).unwrap();
    s.push(appt("booked", "ap1", "c1", 10)).unwrap();
    assert_eq!(status(&s, "ap1"), ["cancelled"], "the newer change stands");
    // In order, the same two changes leave the same appointment.
    s.push(appt("booked", "ap2", "c2", 10)).unwrap();
    s.push(appt("cancelled", "ap2", "c2", 30)).unwrap();
    assert_eq!(status(&s, "ap2"), ["cancelled"]);
    assert!(
        s.enrollment(&a, "c1").2 && s.enrollment(&a, "c2").2,
        "both became patients"
    );
    // A later change still applies; one without a time counts as now.
    s.push(appt("rescheduled", "ap1", "c1", 40)).unwrap();
    assert_eq!(status(&s, "ap1"), ["rescheduled"]);
    s.push(
        json!({"type": "appointment.completed", "appointment": {"id": "ap1", "contact_id": "c1"}}),
    )
    .unwrap();
    s.push(appt("no_show", "ap1", "c1", 50)).unwrap();
    assert_eq!(
        status(&s, "ap1"),
        ["completed"],
        "no-show at +50 is older than now"
    );
    let late: i64 = s
        .conn
        .query_row(
            "SELECT COUNT(*) FROM events WHERE kind LIKE 'appointment_%' AND json_extract(detail, '$.late')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(late, 2, "the late changes are in the log, marked");
}

/// A step's own sender is checked as the module's is in settings: a bad
/// address is refused at save (it failed every email at composition), a
/// sender number is stored in E.164.
#[test]
fn a_steps_own_sender_is_checked_and_its_number_stored_in_e164() {
    let mut s = Sim::new();
    let create = |s: &mut Sim, step: Value| {
        s.cmd(
            json!({"command": "automation.create", "definition": {"name": "Sender",
            "trigger": {"type": "contact_created"}, "steps": [step]}}),
        )
    };
    for (step, field) in [
        (
            json!({"type": "send_email", "subject": "Hi", "body": "Hi", "sender": {"from_address": "praxis"}}),
            "sender.from_address",
        ),
        (
            json!({"type": "send_email", "subject": "Hi", "body": "Hi", "sender": {"reply_to": "a@b"}}),
            "sender.reply_to",
        ),
        (
            json!({"type": "send_email", "subject": "Hi", "body": "Hi", "sender": {"from_name": "Dr. Lee\r\nBcc: x@example.com"}}),
            "sender.from_name",
        ),
        (
            json!({"type": "send_sms", "message": "Hi", "sender_number": "1234567"}),
            "sender_number",
        ),
    ] {
        let e = create(&mut s, step).unwrap_err();
        assert_eq!(e.code(), crate::ErrorCode::Invalid, "{e}");
        assert!(e.to_string().contains(field), "{field}: {e}");
    }
    let created = create(
        &mut s,
        json!({"id": "t", "type": "send_sms", "message": "Hi", "sender_number": "(617) 555-0123"}),
    )
    .unwrap();
    let stored = s.texts(
        "SELECT json_extract(definition, '$.steps[0].sender_number') FROM automation_versions WHERE automation_id = ?1",
        created["automation_id"].as_str().unwrap(),
    );
    assert_eq!(stored, ["+16175550123"]);
}
