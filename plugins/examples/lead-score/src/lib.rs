//! `lead-score`: an example step plugin.
//!
//! Two step types:
//!
//! * `score` — computes a 0–100 lead score from the contact (see [`score`]
//!   for the factors) and continues, writing the score to a custom property
//!   (`lead_score` by default), the band to `lead_temperature`
//!   (`hot` / `warm` / `cold`) and, optionally, a tag on hot contacts.
//! * `is-hot` — the same score; takes the YES path when it is at least
//!   `threshold`.
//!
//! The plugin never reads the clock: recency is measured against the
//! request's `now` (or the config's `as_of`), see [`score`].

pub mod score;

use crm_plugin_sdk::serde_json::{Value, json};
use crm_plugin_sdk::step::{
    Description, Guest, OutcomeKind, PaletteGroup, PluginInfo, PropertyChange, StepOutcome,
    StepRequest, StepType,
};

use score::{Settings, Temperature};

/// The plugin (exported with [`crm_plugin_sdk::export_step_plugin!`]).
pub struct LeadScore;

#[cfg(target_arch = "wasm32")]
crm_plugin_sdk::export_step_plugin!(LeadScore);

impl Guest for LeadScore {
    fn describe() -> Description {
        describe()
    }

    fn run(request: StepRequest) -> StepOutcome {
        let outcome = run(&request);
        if let StepOutcome::Failed(reason) = &outcome {
            // The reason names fields and expectations, never values.
            crm_plugin_sdk::warn!(
                "automation {} step {}: {}",
                request.automation_id,
                request.step_id,
                reason
            );
        }
        outcome
    }
}

/// The plugin's description: its info and two step types.
pub fn describe() -> Description {
    Description {
        info: PluginInfo {
            id: "lead-score".into(),
            name: "Lead score".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            vendor: "CRM module examples".into(),
            description: "Scores leads 0-100 from status, source, tags, subscriptions and activity"
                .into(),
        },
        step_types: vec![
            StepType {
                id: "score".into(),
                display_name: "Score lead".into(),
                palette_group: PaletteGroup::CrmActions,
                icon: "fa-star".into(),
                description: "Computes a 0-100 lead score and stores it on the contact".into(),
                config_schema: schema(false).to_string(),
                outcomes: vec![
                    OutcomeKind::Continue,
                    OutcomeKind::PropertyChanges,
                    OutcomeKind::Failure,
                ],
            },
            StepType {
                id: "is-hot".into(),
                display_name: "Is hot lead?".into(),
                palette_group: PaletteGroup::FlowControl,
                icon: "fa-fire".into(),
                description: "YES when the lead score is at least the threshold".into(),
                config_schema: schema(true).to_string(),
                outcomes: vec![OutcomeKind::Branch, OutcomeKind::Failure],
            },
        ],
    }
}

/// Runs one step; failures carry a reason naming the field, never its value.
pub fn run(request: &StepRequest) -> StepOutcome {
    let result = (|| {
        let config = request.config_object()?;
        let settings = Settings::from_config(&config)?;
        let contact = request.contact_object()?;
        let now = score::parse_timestamp_text(request.now.trim())
            .ok_or("request now: expected an RFC 3339 time")?;
        match request.step_type.as_str() {
            "score" => {
                let score = score::score(&contact, &settings, now)?;
                Ok(StepOutcome::proceed_with(changes(&settings, score)))
            }
            "is-hot" => {
                let score = score::score(&contact, &settings, now)?;
                Ok(StepOutcome::branch(
                    i64::from(score) >= settings.threshold,
                    Vec::new(),
                ))
            }
            other => Err(format!("unknown step type {other}")),
        }
    })();
    result.into()
}

/// The property changes of `score`.
fn changes(settings: &Settings, score: u8) -> Vec<PropertyChange> {
    let mut changes = vec![PropertyChange::json(&settings.property, &json!(score))];
    let temperature = settings.temperature(score);
    if !settings.temperature_property.is_empty() {
        changes.push(PropertyChange::json(
            &settings.temperature_property,
            &json!(temperature.as_str()),
        ));
    }
    if temperature == Temperature::Hot && !settings.hot_tag.is_empty() {
        changes.push(PropertyChange::json(
            "tags",
            &json!({ "add": [settings.hot_tag] }),
        ));
    }
    changes
}

/// The config schema of `score` (`for_branch: false`) or `is-hot` (`true`).
fn schema(for_branch: bool) -> Value {
    let d = Settings::default();
    let int = |title: &str, description: &str, default: i64, max: i64| {
        json!({
            "type": "integer", "title": title, "description": description,
            "default": default, "minimum": 0, "maximum": max,
        })
    };
    let mut properties = json!({
        "status_weight": int("Status weight", "Points when the contact is a lead", d.status_weight, 1000),
        "source_weight": int("Lead source weight", "Points for the lead source (walk-in full, website form 80%, manual 50%, import 30%)", d.source_weight, 1000),
        "tags_weight": int("Tags weight", "Points for interest tags (two or more: full, one: half)", d.tags_weight, 1000),
        "subscription_weight": int("Subscriptions weight", "Points for email and SMS subscriptions (half each)", d.subscription_weight, 1000),
        "activity_weight": int("Activity weight", "Points for recent activity (last activity, else creation)", d.activity_weight, 1000),
        "interest_tags": {
            "type": "string", "title": "Interest tags",
            "description": "Comma-separated tags that show interest",
            "default": d.interest_tags.join(","),
        },
        "as_of": {
            "type": "string", "title": "As of (date)",
            "description": "Optional YYYY-MM-DD: measure recency up to this date instead of the time the step runs",
            "default": "",
        },
        "recent_days": int("Recent within (days)", "Full activity points within this many days, none after three times as many", d.recent_days, 3650),
    });
    if let Some(map) = properties.as_object_mut() {
        if for_branch {
            map.insert(
                "threshold".into(),
                int(
                    "Hot from score",
                    "YES when the score is at least this",
                    d.threshold,
                    100,
                ),
            );
        } else {
            map.insert(
                "property".into(),
                json!({
                    "type": "string", "title": "Score property",
                    "description": "Custom property that receives the score",
                    "default": d.property,
                }),
            );
            map.insert(
                "temperature_property".into(),
                json!({
                    "type": "string", "title": "Temperature property",
                    "description": "Custom property that receives hot, warm or cold (empty: none)",
                    "default": d.temperature_property,
                }),
            );
            map.insert(
                "hot_tag".into(),
                json!({
                    "type": "string", "title": "Tag for hot leads",
                    "description": "Tag added when the lead is hot (empty: none)",
                    "default": d.hot_tag,
                }),
            );
            map.insert(
                "hot_threshold".into(),
                int(
                    "Hot from score",
                    "Hot at or above this score",
                    d.hot_threshold,
                    100,
                ),
            );
            map.insert(
                "warm_threshold".into(),
                int(
                    "Warm from score",
                    "Warm at or above this score",
                    d.warm_threshold,
                    100,
                ),
            );
        }
    }
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": properties,
        "additionalProperties": false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(step_type: &str, contact: Value, config: Value) -> StepRequest {
        StepRequest {
            step_type: step_type.into(),
            idempotency_key: "k1".into(),
            automation_id: "a1".into(),
            step_id: "s1".into(),
            now: "2026-01-20T12:00:00Z".into(),
            contact: contact.to_string(),
            config: config.to_string(),
        }
    }

    fn hot() -> Value {
        json!({
            "id": "c1", "status": "lead", "lead_source": "walk_in",
            "tags": ["interested", "vip"],
            "email_subscription": "subscribed", "sms_subscription": "subscribed",
            "created_at": 1_767_225_600_000_i64, "last_activity_at": 1_768_435_200_000_i64,
        })
    }

    #[test]
    fn describe_lists_both_types_with_valid_schemas() {
        let d = describe();
        assert_eq!(d.info.id, "lead-score");
        let ids: Vec<_> = d.step_types.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["score", "is-hot"]);
        for t in &d.step_types {
            let schema: Value = crm_plugin_sdk::serde_json::from_str(&t.config_schema).unwrap();
            assert_eq!(schema["type"], "object");
            for (_, p) in schema["properties"].as_object().unwrap() {
                assert!(p["title"].is_string() && p.get("default").is_some(), "{p}");
            }
        }
        assert!(d.step_types[0].config_schema.contains("\"property\""));
    }

    #[test]
    fn score_continues_with_changes() {
        let out = run(&request("score", hot(), json!({"hot_tag": "hot-lead"})));
        assert_eq!(
            out,
            StepOutcome::Continue(vec![
                PropertyChange {
                    name: "lead_score".into(),
                    value: "100".into()
                },
                PropertyChange {
                    name: "lead_temperature".into(),
                    value: "\"hot\"".into()
                },
                PropertyChange {
                    name: "tags".into(),
                    value: r#"{"add":["hot-lead"]}"#.into()
                },
            ])
        );
        let out = run(&request(
            "score",
            json!({"lead_source": "import"}),
            json!({"property": "my_score", "temperature_property": ""}),
        ));
        assert_eq!(
            out,
            StepOutcome::Continue(vec![PropertyChange {
                name: "my_score".into(),
                value: "6".into()
            }])
        );
    }

    #[test]
    fn is_hot_branches_on_threshold() {
        let yes = run(&request("is-hot", hot(), json!({})));
        assert_eq!(yes, StepOutcome::branch(true, vec![]));
        let no = run(&request(
            "is-hot",
            json!({"status": "lead"}),
            json!({"threshold": 20}),
        ));
        assert_eq!(no, StepOutcome::branch(false, vec![]));
        let yes = run(&request(
            "is-hot",
            json!({"status": "lead"}),
            json!({"threshold": 15}),
        ));
        assert_eq!(yes, StepOutcome::branch(true, vec![]));
    }

    #[test]
    fn failures_have_reasons() {
        let mut r = request("score", hot(), json!({}));
        r.contact = "{not json".into();
        assert!(
            matches!(run(&r), StepOutcome::Failed(m) if m.starts_with("contact: invalid JSON"))
        );
        r.contact = "[]".into();
        assert_eq!(run(&r), StepOutcome::fail("contact: not a JSON object"));
        let r = request("score", json!({"tags": 5}), json!({}));
        assert_eq!(
            run(&r),
            StepOutcome::fail("contact tags: expected a list of strings")
        );
        let r = request("nope", hot(), json!({}));
        assert_eq!(run(&r), StepOutcome::fail("unknown step type nope"));
        let mut r = request("score", hot(), json!({}));
        r.now = "later".into();
        assert_eq!(
            run(&r),
            StepOutcome::fail("request now: expected an RFC 3339 time")
        );
        let mut r = request("score", hot(), json!({}));
        r.config = String::new();
        assert!(matches!(run(&r), StepOutcome::Continue(_)));
    }
}
