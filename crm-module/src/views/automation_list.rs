//! `automation_list`: the first page of CRM › Automation — four headline
//! numbers, a toolbar (search, Create automation), the 7-column table of
//! automations and a footer with pagination.

use std::collections::HashMap;

use rusqlite::params;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    Action, ActionStyle, Column, Ctx, GoalCell, Label, StatCard, Timestamp, ViewRef, floor1,
    fmt_count, fmt_rate_above_zero, num_f, num_u,
};
use crate::core::goals;
use crate::error::{Error, Result};
use crate::model::automation::{AutomationStatus, GoalKind};

/// Default rows per page.
pub const DEFAULT_PAGE_SIZE: u32 = 25;
/// Largest page size.
pub const MAX_PAGE_SIZE: u32 = 100;

/// Parameters of `automation_list`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Only automations whose name contains this text (case-insensitive).
    #[serde(default)]
    pub search: Option<String>,
    /// Only automations in this status.
    #[serde(default)]
    pub status: Option<AutomationStatus>,
    /// 1-based page number (default 1). A page past the end shows the last page.
    #[serde(default)]
    pub page: Option<u32>,
    /// Rows per page (default 25, at most 100).
    #[serde(default)]
    pub page_size: Option<u32>,
    /// Column to sort by (default `last_updated`).
    #[serde(default)]
    pub sort: Option<SortColumn>,
    /// Sort direction (default: descending for `last_updated` and `enrolled`, else ascending).
    #[serde(default)]
    pub direction: Option<SortDirection>,
}

/// Sortable columns of the automation table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SortColumn {
    /// By name.
    Name,
    /// By status label.
    Status,
    /// By enrolled count.
    Enrolled,
    /// By goal label.
    Goal,
    /// By Entered By.
    EnteredBy,
    /// By last update.
    LastUpdated,
}

/// Sort direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SortDirection {
    /// Smallest first.
    Asc,
    /// Largest first.
    Desc,
}

/// The Automation list screen.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct AutomationListView {
    /// Page title ("Automation").
    pub title: String,
    /// Breadcrumb ("CRM", "Automation").
    pub breadcrumb: Vec<String>,
    /// Exactly four cards: Active automations, Enrollments, Goals reached,
    /// Avg. conversion rate. Practice-wide: they ignore search and filters.
    pub stat_cards: Vec<StatCard>,
    /// Two items: the search box and the Create automation button.
    pub toolbar: Vec<ToolbarItem>,
    /// Exactly seven columns: Name, Status, Enrolled, Goal, Entered By, Last Updated, Actions.
    pub columns: Vec<Column>,
    /// The current sort.
    pub sort: SortState,
    /// The status filter in effect, if any.
    pub status_filter: Option<Label>,
    /// The rows of the current page.
    pub rows: Vec<AutomationRow>,
    /// Shown instead of the table when there is no row.
    pub empty_state: Option<EmptyState>,
    /// Two items: the "Showing X–Y of Z" text and the pagination control.
    pub footer: Vec<FooterItem>,
}

/// The sort in effect.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SortState {
    /// Column id.
    pub column: SortColumn,
    /// Direction.
    pub direction: SortDirection,
}

/// An item of the toolbar.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ToolbarItem {
    /// A search box; typing re-queries the view with `search`.
    Search {
        /// Stable id (`search`).
        id: String,
        /// Placeholder text.
        placeholder: String,
        /// The current search text.
        value: String,
    },
    /// A button.
    Button {
        /// Stable id (`create`).
        id: String,
        /// The button (label, icon, what it opens and the command it leads to).
        action: Action,
    },
}

/// One automation of the table.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct AutomationRow {
    /// Automation id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Status (Draft, Active, Inactive).
    pub status: Label,
    /// Enrollments, all time (count of `enrolled` events; a contact enrolled
    /// again counts again).
    pub enrolled: u64,
    /// `enrolled` formatted ("1,245").
    pub enrolled_display: String,
    /// Goals reached, all time.
    pub goals_reached: u64,
    /// Goals reached ÷ enrolled × 100 (one decimal); null with no enrollment.
    pub conversion: Option<f64>,
    /// `conversion` formatted ("18.3%", "—").
    pub conversion_display: String,
    /// Goal, or id null with label "—".
    pub goal: GoalCell,
    /// Staff member who created it.
    pub entered_by: String,
    /// Last saved or status change.
    pub last_updated: Timestamp,
    /// Where clicking the name leads (the builder).
    pub open: ViewRef,
    /// Row actions: open, pause or activate, delete.
    pub actions: Vec<Action>,
}

/// The empty-table message.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct EmptyState {
    /// Heading.
    pub title: String,
    /// Explanation.
    pub text: String,
    /// The button it offers, if any.
    pub action: Option<Action>,
}

/// An item of the footer.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FooterItem {
    /// A line of text ("Showing 1–25 of 40").
    Text {
        /// Stable id (`range`).
        id: String,
        /// The text.
        text: String,
    },
    /// The pagination control.
    Pagination {
        /// Stable id (`pagination`).
        id: String,
        /// Current page (1-based).
        page: u32,
        /// Rows per page.
        page_size: u32,
        /// Number of pages (at least 1).
        total_pages: u32,
        /// Matching rows over all pages.
        total: u64,
        /// A previous page exists.
        has_previous: bool,
        /// A next page exists.
        has_next: bool,
    },
}

struct Item {
    id: String,
    name: String,
    status: AutomationStatus,
    goal: Option<GoalKind>,
    entered_by: String,
    updated_at: i64,
    enrolled: u64,
    goals: u64,
}

pub(crate) fn build(ctx: &Ctx<'_>, p: ListParams) -> Result<AutomationListView> {
    let page = p.page.unwrap_or(1);
    if page == 0 {
        return Err(Error::invalid("params: page: must be 1 or more"));
    }
    let page_size = p.page_size.unwrap_or(DEFAULT_PAGE_SIZE);
    if page_size == 0 || page_size > MAX_PAGE_SIZE {
        return Err(Error::invalid(format!(
            "params: page_size: must be 1 to {MAX_PAGE_SIZE}"
        )));
    }
    let search = p.search.as_deref().map(str::trim).unwrap_or("").to_string();
    if search.chars().count() > 200 {
        return Err(Error::invalid("params: search: at most 200 characters"));
    }

    let all = load(ctx)?;
    let stat_cards = stat_cards(&all);

    let needle = search.to_lowercase();
    let mut rows: Vec<&Item> = all
        .iter()
        .filter(|a| p.status.is_none_or(|s| a.status == s))
        .filter(|a| needle.is_empty() || a.name.to_lowercase().contains(&needle))
        .collect();
    let column = p.sort.unwrap_or(SortColumn::LastUpdated);
    let direction = p.direction.unwrap_or(match column {
        SortColumn::LastUpdated | SortColumn::Enrolled => SortDirection::Desc,
        _ => SortDirection::Asc,
    });
    rows.sort_by(|a, b| {
        let primary = match column {
            SortColumn::Name => a.name.to_lowercase().cmp(&b.name.to_lowercase()),
            SortColumn::Status => a.status.label().cmp(b.status.label()),
            SortColumn::Enrolled => a.enrolled.cmp(&b.enrolled),
            SortColumn::Goal => goal_label(a.goal).cmp(goal_label(b.goal)),
            SortColumn::EnteredBy => a
                .entered_by
                .to_lowercase()
                .cmp(&b.entered_by.to_lowercase()),
            SortColumn::LastUpdated => a.updated_at.cmp(&b.updated_at),
        };
        let primary = match direction {
            SortDirection::Asc => primary,
            SortDirection::Desc => primary.reverse(),
        };
        primary.then_with(|| a.id.cmp(&b.id))
    });

    let total = rows.len() as u64;
    let total_pages = (total.div_ceil(page_size as u64)).max(1) as u32;
    let page = page.min(total_pages);
    let start = (page as u64 - 1) * page_size as u64;
    let shown: Vec<AutomationRow> = rows
        .iter()
        .skip(start as usize)
        .take(page_size as usize)
        .map(|a| row(ctx, a))
        .collect();
    let range = if shown.is_empty() {
        format!("Showing 0 of {}", fmt_count(total))
    } else {
        format!(
            "Showing {}–{} of {}",
            fmt_count(start + 1),
            fmt_count(start + shown.len() as u64),
            fmt_count(total)
        )
    };

    let create = create_action();
    let filtered = !search.is_empty() || p.status.is_some();
    let empty_state = shown.is_empty().then(|| {
        if filtered {
            EmptyState {
                title: "No matching automations".into(),
                text: "No automation matches the search or filter. Clear them to see every automation."
                    .into(),
                action: None,
            }
        } else {
            EmptyState {
                title: "No automations yet".into(),
                text: "Automations enroll contacts when a trigger fires and walk them through emails, SMS, delays, branches and CRM actions."
                    .into(),
                action: Some(create.clone()),
            }
        }
    });

    Ok(AutomationListView {
        title: "Automation".into(),
        breadcrumb: vec!["CRM".into(), "Automation".into()],
        stat_cards,
        toolbar: vec![
            ToolbarItem::Search {
                id: "search".into(),
                placeholder: "Search automations".into(),
                value: search,
            },
            ToolbarItem::Button {
                id: "create".into(),
                action: create,
            },
        ],
        columns: columns(),
        sort: SortState { column, direction },
        status_filter: p.status.map(Label::status),
        rows: shown,
        empty_state,
        footer: vec![
            FooterItem::Text {
                id: "range".into(),
                text: range,
            },
            FooterItem::Pagination {
                id: "pagination".into(),
                page,
                page_size,
                total_pages,
                total,
                has_previous: page > 1,
                has_next: page < total_pages,
            },
        ],
    })
}

fn goal_label(g: Option<GoalKind>) -> &'static str {
    g.map(GoalKind::label).unwrap_or(super::DASH)
}

fn create_action() -> Action {
    // Opens the 2-step wizard; its Save sends `automation.create`.
    Action::new("create", "Create automation", Some("fa-plus"))
        .style(ActionStyle::Primary)
        .command("automation.create", None)
        .view(ViewRef::new("automation_builder", None, Some("details")))
}

fn columns() -> Vec<Column> {
    let mut enrolled = Column::new("enrolled", "Enrolled", true, true);
    enrolled.definition =
        Some("Times a contact joined the flow because the trigger fired, all time (a contact enrolled again counts again).".into());
    vec![
        Column::new("name", "Name", true, false),
        Column::new("status", "Status", true, false),
        enrolled,
        Column::new("goal", "Goal", true, false),
        Column::new("entered_by", "Entered By", true, false),
        Column::new("last_updated", "Last Updated", true, false),
        Column::new("actions", "Actions", false, false),
    ]
}

/// Enrolled counts of every live automation, from the `events_automation`
/// index alone.
const LIVE_ENROLLED_SQL: &str = "SELECT automation_id, count(*) FROM events
     WHERE automation_id IN (SELECT id FROM automations WHERE deleted_at IS NULL)
       AND kind = 'enrolled'
     GROUP BY automation_id";

/// Every live automation with its all-time counts: one query for the rows,
/// one aggregate over the event log, and one index count per automation.
fn load(ctx: &Ctx<'_>) -> Result<Vec<Item>> {
    let mut enrolled: HashMap<String, u64> = HashMap::new();
    for row in ctx
        .conn
        .prepare_cached(LIVE_ENROLLED_SQL)?
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
    {
        let (id, n) = row?;
        enrolled.insert(id, n as u64);
    }
    let mut stmt = ctx.conn.prepare_cached(
        "SELECT a.id, a.name, a.status, a.entered_by, a.updated_at,
                json_extract(v.definition, '$.goal')
         FROM automations a
         LEFT JOIN automation_versions v ON v.automation_id = a.id AND v.version = a.current_version
         WHERE a.deleted_at IS NULL",
    )?;
    let rows = stmt.query_map(params![], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, i64>(4)?,
            r.get::<_, Option<String>>(5)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, name, status, entered_by, updated_at, goal) = row?;
        let status = AutomationStatus::parse(&status)
            .ok_or_else(|| Error::Internal(format!("automation {id}: bad status")))?;
        let goal = goal.and_then(|g| GoalKind::ALL.into_iter().find(|k| k.id() == g));
        let enrolled = enrolled.get(&id).copied().unwrap_or_default();
        let goals = goals::reached_count(ctx.conn, &id, goal)?;
        out.push(Item {
            id,
            name,
            status,
            goal,
            entered_by,
            updated_at,
            enrolled,
            goals,
        });
    }
    Ok(out)
}

fn stat_cards(all: &[Item]) -> Vec<StatCard> {
    let active = all
        .iter()
        .filter(|a| a.status == AutomationStatus::Active)
        .count() as u64;
    let enrolled: u64 = all.iter().map(|a| a.enrolled).sum();
    let goals: u64 = all.iter().map(|a| a.goals).sum();
    let with_enrollments: Vec<&Item> = all.iter().filter(|a| a.enrolled > 0).collect();
    let avg = (!with_enrollments.is_empty()).then(|| {
        let sum: f64 = with_enrollments
            .iter()
            .map(|a| a.goals as f64 * 100.0 / a.enrolled as f64)
            .sum();
        floor1(sum / with_enrollments.len() as f64)
    });
    let live = all.len() as u64;
    vec![
        StatCard {
            id: "active_automations".into(),
            label: "Active automations".into(),
            value: Some(num_u(active)),
            display: fmt_count(active),
            hint: format!(
                "of {}",
                super::plural(&fmt_count(live), "automation", "automations")
            ),
            definition: Some("Automations currently enrolling and running contacts.".into()),
        },
        StatCard {
            id: "contacts_enrolled".into(),
            label: "Enrollments".into(),
            value: Some(num_u(enrolled)),
            display: fmt_count(enrolled),
            hint: "All time, across current automations".into(),
            definition: Some(
                "Enrollments of every current automation since it was created (a deleted automation leaves the total; search and filters do not): a contact joins a flow each time its trigger fires."
                    .into(),
            ),
        },
        StatCard {
            id: "goals_reached".into(),
            label: "Goals reached".into(),
            value: Some(num_u(goals)),
            display: fmt_count(goals),
            hint: "All time, across current automations".into(),
            definition: Some(
                "Enrollments whose contact met the automation's goal inside its lookback window (default 30 days); with no goal, a Lead → Patient flip."
                    .into(),
            ),
        },
        StatCard {
            id: "avg_conversion_rate".into(),
            label: "Avg. conversion rate".into(),
            value: avg.and_then(num_f),
            display: fmt_rate_above_zero(avg, with_enrollments.iter().any(|a| a.goals > 0)),
            hint: format!(
                "Mean over {} with enrollments",
                super::plural(
                    &fmt_count(with_enrollments.len() as u64),
                    "automation",
                    "automations"
                )
            ),
            definition: Some(
                "The mean of each automation's conversion rate ((goals reached ÷ contacts enrolled) × 100), over the automations with at least one enrollment."
                    .into(),
            ),
        },
    ]
}

fn row(ctx: &Ctx<'_>, a: &Item) -> AutomationRow {
    let id = a.id.as_str();
    let open = ViewRef::new("automation_builder", Some(id), Some("build"));
    let mut actions = vec![Action::new("open", "Open", Some("fa-pen")).view(open.clone())];
    match a.status {
        AutomationStatus::Active => actions.push(
            Action::new("pause", "Pause", Some("fa-pause")).command("automation.pause", Some(id)),
        ),
        AutomationStatus::Draft | AutomationStatus::Inactive => actions.push(
            Action::new("activate", "Activate", Some("fa-play"))
                .command("automation.activate", Some(id)),
        ),
    }
    actions.push(
        Action::new("delete", "Delete", Some("fa-xmark"))
            .style(ActionStyle::Danger)
            .command("automation.delete", Some(id))
            .confirm(format!(
                "Delete the automation \"{}\"? Contacts still in it exit. It leaves this list, its Performance tab and the totals above; its history stays in the event log.",
                a.name
            )),
    );
    let conversion = super::rate(a.goals, a.enrolled);
    AutomationRow {
        id: a.id.clone(),
        name: a.name.clone(),
        status: Label::status(a.status),
        enrolled: a.enrolled,
        enrolled_display: fmt_count(a.enrolled),
        goals_reached: a.goals,
        conversion,
        conversion_display: super::fmt_share(a.goals, a.enrolled),
        goal: GoalCell::of(a.goal),
        entered_by: a.entered_by.clone(),
        last_updated: Timestamp::new(ctx, a.updated_at),
        open,
        actions,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::super::test_support::{Db, NOW};
    use crate::clock::{DAY, HOUR};
    use crate::error::ErrorCode;

    fn def(name: &str, goal: Option<&str>) -> Value {
        json!({
            "name": name,
            "goal": goal,
            "trigger": {"type": "contact_created"},
            "steps": [{"id": "s1", "type": "send_email", "subject": "Hi", "body": "Hello"}]
        })
    }

    fn seeded() -> Db {
        let db = Db::new();
        db.automation(
            "a1",
            "active",
            NOW - HOUR,
            &[def("New lead welcome series", Some("book_appointment"))],
        );
        db.automation(
            "a2",
            "inactive",
            NOW - 3 * DAY,
            &[def("Birthday greetings", None)],
        );
        db.automation(
            "a3",
            "draft",
            NOW - 2 * DAY,
            &[def("Dormant win-back", Some("patient_reactivation"))],
        );
        db.automation("gone", "active", NOW, &[def("Deleted one", None)]);
        db.conn
            .execute(
                "UPDATE automations SET deleted_at = ?1 WHERE id = 'gone'",
                [NOW],
            )
            .unwrap();
        db.events("a1", "enrolled", None, 342, NOW - DAY, None);
        let goal = |g: &str| Some(json!({"goal": g, "while": "active"}));
        db.events(
            "a1",
            "goal_reached",
            None,
            62,
            NOW - DAY,
            goal("book_appointment"),
        );
        // Reached under an earlier version's goal: not this goal's count.
        db.events("a1", "goal_reached", None, 9, NOW - DAY, goal("engagement"));
        db.events("a2", "enrolled", None, 10, NOW - DAY, None);
        db.events(
            "a2",
            "goal_reached",
            None,
            5,
            NOW - DAY,
            goal("lead_to_patient"),
        );
        db.events("gone", "enrolled", None, 1000, NOW - DAY, None);
        db
    }

    #[test]
    fn list_has_cards_toolbar_columns_rows_and_footer() {
        let db = seeded();
        let v = db.query("automation_list", Value::Null).unwrap();

        let cards = v["stat_cards"].as_array().unwrap();
        assert_eq!(cards.len(), 4);
        assert_eq!(cards[0]["label"], "Active automations");
        assert_eq!(cards[0]["value"], 1);
        assert_eq!(cards[1]["label"], "Enrollments");
        assert_eq!(cards[1]["value"], 352);
        assert_eq!(cards[2]["value"], 67);
        // mean of 62/342 (18.13%) and 5/10 (50%) = 34.06 → 34.0
        assert_eq!(cards[3]["label"], "Avg. conversion rate");
        assert_eq!(cards[3]["value"], 34.0);
        assert_eq!(cards[3]["display"], "34%");
        assert_eq!(cards[0]["hint"], "of 3 automations");
        assert_eq!(cards[3]["hint"], "Mean over 2 automations with enrollments");

        let toolbar = v["toolbar"].as_array().unwrap();
        assert_eq!(toolbar.len(), 2);
        assert_eq!(toolbar[0]["kind"], "search");
        assert_eq!(toolbar[1]["action"]["label"], "Create automation");
        assert_eq!(
            toolbar[1]["action"]["command"]["command"],
            "automation.create"
        );

        let labels: Vec<&str> = v["columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["label"].as_str().unwrap())
            .collect();
        assert_eq!(
            labels,
            [
                "Name",
                "Status",
                "Enrolled",
                "Goal",
                "Entered By",
                "Last Updated",
                "Actions"
            ]
        );

        let rows = v["rows"].as_array().unwrap();
        let ids: Vec<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
        assert_eq!(
            ids,
            ["a1", "a3", "a2"],
            "newest update first, deleted hidden"
        );
        let a1 = &rows[0];
        assert_eq!(a1["status"], json!({"id": "active", "label": "Active"}));
        assert_eq!(a1["enrolled"], 342);
        assert_eq!(
            a1["goal"],
            json!({"id": "book_appointment", "label": "Book appointment"})
        );
        assert_eq!(a1["entered_by"], "Dr. Adams");
        assert_eq!(a1["last_updated"]["display"], "Today, 7:00 AM");
        assert!(
            a1["last_updated"]["rfc3339"]
                .as_str()
                .unwrap()
                .ends_with('Z')
        );
        let acts: Vec<&str> = a1["actions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["id"].as_str().unwrap())
            .collect();
        assert_eq!(acts, ["open", "pause", "delete"]);
        assert_eq!(a1["actions"][1]["command"]["command"], "automation.pause");
        assert_eq!(a1["actions"][1]["command"]["automation_id"], "a1");
        assert_eq!(a1["actions"][2]["command"]["command"], "automation.delete");
        assert!(a1["actions"][2]["confirm"].is_string());
        let a2 = &rows[2];
        assert_eq!(a2["goal"], json!({"id": null, "label": "—"}));
        assert_eq!(
            a2["actions"][1]["command"]["command"],
            "automation.activate"
        );
        assert_eq!(rows[1]["enrolled"], 0);
        assert_eq!(rows[1]["conversion_display"], "—");
        // One automation: the hints in the singular.
        db.conn
            .execute(
                "UPDATE automations SET deleted_at = ?1 WHERE id <> 'a1'",
                [NOW],
            )
            .unwrap();
        let one = db.query("automation_list", Value::Null).unwrap();
        assert_eq!(one["stat_cards"][0]["hint"], "of 1 automation");
        assert_eq!(
            one["stat_cards"][3]["hint"],
            "Mean over 1 automation with enrollments"
        );

        let footer = v["footer"].as_array().unwrap();
        assert_eq!(footer.len(), 2);
        assert_eq!(footer[0]["text"], "Showing 1–3 of 3");
        assert_eq!(footer[1]["page"], 1);
        assert_eq!(footer[1]["page_size"], 25);
        assert_eq!(footer[1]["total_pages"], 1);
        assert!(v["empty_state"].is_null());
    }

    #[test]
    fn search_status_sort_and_pages() {
        let db = seeded();
        let v = db
            .query("automation_list", json!({"search": "WELCOME"}))
            .unwrap();
        assert_eq!(v["rows"].as_array().unwrap().len(), 1);
        assert_eq!(v["toolbar"][0]["value"], "WELCOME");
        // stat cards stay practice-wide
        assert_eq!(v["stat_cards"][1]["value"], 352);

        let v = db
            .query("automation_list", json!({"status": "draft"}))
            .unwrap();
        assert_eq!(v["rows"][0]["id"], "a3");
        assert_eq!(v["rows"].as_array().unwrap().len(), 1);

        let v = db
            .query(
                "automation_list",
                json!({"page": 2, "page_size": 2, "sort": "name", "direction": "asc"}),
            )
            .unwrap();
        assert_eq!(v["rows"].as_array().unwrap().len(), 1);
        assert_eq!(v["rows"][0]["name"], "New lead welcome series");
        assert_eq!(v["footer"][0]["text"], "Showing 3–3 of 3");
        assert_eq!(v["footer"][1]["total_pages"], 2);

        let v = db
            .query("automation_list", json!({"search": "zzz"}))
            .unwrap();
        assert_eq!(v["footer"][0]["text"], "Showing 0 of 0");
        assert_eq!(v["empty_state"]["title"], "No matching automations");
    }

    #[test]
    fn bad_params_are_invalid_and_name_the_param() {
        let db = seeded();
        for (params, name) in [
            (json!({"page": 0}), "page"),
            (json!({"page_size": 101}), "page_size"),
            (json!({"page_size": "ten"}), "page_size"),
            (json!({"status": "archived"}), "status"),
            (json!({"search": 5}), "search"),
        ] {
            let e = db.query("automation_list", params.clone()).unwrap_err();
            assert_eq!(e.code(), ErrorCode::Invalid, "{params}");
            assert!(e.to_string().contains(name), "{params}: {e}");
        }
    }

    #[test]
    fn empty_database_offers_create() {
        let db = Db::new();
        let v = db.query("automation_list", json!({})).unwrap();
        assert_eq!(v["stat_cards"][3]["display"], "—");
        assert!(v["stat_cards"][3]["value"].is_null());
        assert_eq!(v["empty_state"]["action"]["id"], "create");
        assert_eq!(v["footer"][1]["total_pages"], 1);
    }

    #[test]
    fn counts_use_the_event_index() {
        let db = seeded();
        let plan = crate::store::query_plan(&db.conn, super::LIVE_ENROLLED_SQL, []);
        assert!(
            plan.iter().any(|l| l.contains("events_automation")),
            "{plan:?}"
        );
        // Counted in the index's order: no sort of every enrolled row.
        assert!(!plan.iter().any(|l| l.contains("TEMP B-TREE")), "{plan:?}");
        let plan =
            crate::store::query_plan(&db.conn, crate::core::goals::REACHED_SQL, ["a1", "g", "g"]);
        assert!(
            plan.iter()
                .any(|l| l.contains("COVERING INDEX events_goals")),
            "{plan:?}"
        );
    }
}
