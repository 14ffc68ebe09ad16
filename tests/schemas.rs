//! The JSON Schemas published for the host UI's developers
//! (`include/crm_schemas.json`) match what the module serves (the `schemas`
//! view). Refresh with `CRM_UPDATE_HEADER=1 cargo test -p crm-integration-tests --test schemas`.

use crm_integration_tests as support;

#[test]
fn published_schemas_are_up_to_date() {
    let path = support::workspace_root().join("include/crm_schemas.json");
    let fresh = serde_json::to_string_pretty(&crm_module::schema::all()).unwrap() + "\n";
    if std::env::var("CRM_UPDATE_HEADER").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &fresh).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "include/crm_schemas.json is stale: run `CRM_UPDATE_HEADER=1 cargo test -p crm-integration-tests --test schemas` and commit it"
    );
}

#[test]
fn schemas_cover_events_commands_and_every_view() {
    let all = crm_module::schema::all();
    for key in [
        "event",
        "event_batch",
        "command",
        "open_config",
        "settings",
        "automation_definition",
        "push_result",
    ] {
        assert!(all[key].is_object(), "{key}");
    }
    for view in crm_module::views::VIEW_NAMES {
        assert!(all["views"][view].is_object(), "{view}");
    }
    let commands = all["command"].to_string();
    for c in [
        "automation.create",
        "automation.update",
        "automation.activate",
        "automation.pause",
        "automation.delete",
        "list.add_contacts",
        "settings.update",
    ] {
        assert!(commands.contains(c), "{c}");
    }
}
