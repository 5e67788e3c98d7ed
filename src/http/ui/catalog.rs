//! What jobs run on: `/ui/agents` (set-up, status, busy slots, tokens, cost, the provider's circuit),
//! `/ui/workflows` and `/ui/workflows/{id}` (versions, the DAG, the run form) and `/ui/schedules` (next
//! firings, pause and resume).

use std::collections::BTreeMap;

use actix_web::{HttpRequest, HttpResponse, web};
use maud::html;
use serde_json::Value;

use super::{Viewer, badge, dag, failed, page, short, text, time};
use crate::auth::Permission;
use crate::http::{Params, State};
use crate::query::read::DOCUMENTS;

/// A whole list (up to 1000, the most a page of the API holds), by id.
async fn all(state: &State, viewer: &Viewer, name: &str) -> Result<Vec<Value>, crate::query::Failure> {
    let params = BTreeMap::from([("limit".to_owned(), "1000".to_owned())]);
    let found = state.reads.list(super::model(name), &params, &viewer.scope).await?;
    Ok(found["items"].as_array().cloned().unwrap_or_default())
}

/// `GET /ui/agents`.
pub async fn agents(state: web::Data<State>, request: HttpRequest) -> HttpResponse {
    let viewer = Viewer::of(&state, &request);
    let agents = match all(&state, &viewer, "agents").await {
        Ok(agents) => agents,
        Err(failure) => return failed(&viewer, "/ui/agents", failure),
    };
    // The providers' circuits are the node's own state: shown to those who may inspect it.
    let circuits: BTreeMap<String, Value> = if viewer.may(Permission::Inspect) {
        state
            .providers
            .iter()
            .map(|p| {
                let health = serde_json::to_value(p.health()).unwrap_or_default();
                (text(&health, "name").to_owned(), health)
            })
            .collect()
    } else {
        BTreeMap::new()
    };
    let body = html! {
        table.list #agents {
            thead { tr { th { "Agent" } th { "Role" } th { "Provider" } th { "Model" } th { "Status" } th { "Busy slots" }
                th { "Done" } th { "Failed" } th { "Mean latency" } th { "Tokens in / out" } th { "Cost" } th { "Circuit" } } }
            tbody {
                @for agent in &agents {
                    @let provider = text(agent, "provider");
                    tr data-id=(text(agent, "id")) {
                        td { span title=(text(agent, "id")) { (text(agent, "name")) } }
                        td { (text(agent, "role")) }
                        td { (provider) }
                        td { (text(agent, "model")) }
                        td { (badge(text(agent, "status"))) }
                        td { (agent["tasks_running"]) " / " (agent["profile"]["concurrency_limit"]) }
                        td { (agent["tasks_done"]) }
                        td { (agent["tasks_failed"]) }
                        td { (agent["mean_latency_ms"].as_f64().map_or("–".into(), |ms| format!("{ms:.0} ms"))) }
                        td { (agent["input_tokens"]) " / " (agent["output_tokens"]) }
                        td { "$" (agent["cost_usd"]) }
                        td { @if let Some(health) = circuits.get(provider) {
                            (badge(text(health, "circuit"))) " " (health["consecutive_failures"]) " failures in a row"
                        } }
                    }
                }
            }
        }
        @for agent in &agents {
            details {
                summary { (text(agent, "name")) ": set-up" }
                (super::json_block(&agent["profile"]))
            }
        }
    };
    page(&viewer, "/ui/agents", "Agents", body)
}

/// `GET /ui/workflows`.
pub async fn workflows(state: web::Data<State>, request: HttpRequest) -> HttpResponse {
    let viewer = Viewer::of(&state, &request);
    let workflows = match all(&state, &viewer, "workflows").await {
        Ok(workflows) => workflows,
        Err(failure) => return failed(&viewer, "/ui/workflows", failure),
    };
    let body = html! {
        table.list #workflows {
            thead { tr { th { "Workflow" } th { "Status" } th { "Latest version" } th { "Steps" } th { "Tenant" } th { "Defined" } } }
            tbody {
                @for workflow in &workflows {
                    tr data-id=(text(workflow, "id")) {
                        td { a href={ "/ui/workflows/" (text(workflow, "id")) } { (text(workflow, "name")) } }
                        td { (badge(text(workflow, "status"))) }
                        td { (workflow["latest_version"]) }
                        td { (workflow["steps_count"]) }
                        td { (text(workflow, "tenant")) }
                        td { (time(&workflow["defined_at"])) }
                    }
                }
            }
        }
    };
    page(&viewer, "/ui/workflows", "Workflows", body)
}

/// `GET /ui/workflows/{id}[?version=N]`: a version's DAG (the latest by default), its versions, and the run
/// form.
pub async fn workflow(
    state: web::Data<State>,
    request: HttpRequest,
    id: web::Path<String>,
    params: Params,
) -> HttpResponse {
    let viewer = Viewer::of(&state, &request);
    let workflow = match state.reads.show(super::model("workflows"), &id, None, &viewer.scope).await {
        Ok(workflow) => workflow,
        Err(failure) => return failed(&viewer, "/ui/workflows", failure),
    };
    let id = text(&workflow, "id").to_owned();
    let versions = workflow["versions"].as_array().cloned().unwrap_or_default();
    let latest = workflow["latest_version"].as_u64().unwrap_or(1);
    let shown = params.get("version").and_then(|v| v.parse::<u64>().ok()).unwrap_or(latest);
    let steps = versions
        .iter()
        .find(|v| v["workflow_version"].as_u64() == Some(shown))
        .map_or_else(|| workflow["steps"].clone(), |v| v["steps"].clone());
    let steps = steps.as_array().cloned().unwrap_or_default();
    let agents: BTreeMap<String, String> = all(&state, &viewer, "agents")
        .await
        .unwrap_or_default()
        .iter()
        .map(|a| (text(a, "id").to_owned(), text(a, "name").to_owned()))
        .collect();
    let may_run = viewer.may(Permission::RunJobs) && text(&workflow, "status") == "active";
    // The documents a run may read: the newest uploaded ones the viewer sees.
    let documents = if may_run {
        let params = BTreeMap::from([
            ("status".to_owned(), "uploaded".to_owned()),
            ("order".to_owned(), "desc".to_owned()),
            ("limit".to_owned(), "200".to_owned()),
        ]);
        let found = state.reads.list(&DOCUMENTS, &params, &viewer.scope).await.unwrap_or_default();
        found["items"].as_array().cloned().unwrap_or_default()
    } else {
        vec![]
    };
    let chosen = params.get("document").map(String::as_str);
    let body = html! {
        dl.facts {
            dt { "Status" } dd { (badge(text(&workflow, "status"))) }
            dt { "Tenant" } dd { (text(&workflow, "tenant")) }
            dt { "Latest version" } dd { (latest) }
            dt { "Jobs" } dd { a href={ "/ui/jobs?workflow=" (id) } { "jobs of this workflow" } }
            dt { "History" } dd { a href={ "/ui/streams/workflow-" (id) } { "events of workflow-" (short(&id)) } }
        }
        h2 { "Version " (shown) }
        (dag::workflow(&steps, &BTreeMap::new()))
        table.list {
            thead { tr { th { "Step" } th { "Agent" } th { "Instruction" } th { "Reads" } th { "Timeout" } th { "Attempts" } } }
            tbody {
                @for step in &steps {
                    tr {
                        td { (text(step, "name")) }
                        td { (agents.get(text(step, "agent")).map_or(text(step, "agent"), String::as_str)) }
                        td { (text(step, "instruction")) }
                        td { @for input in step["inputs"].as_array().into_iter().flatten() {
                            @if input["from"] == "step" { "step " (text(input, "name")) " " } @else { "the job's inputs " }
                        } }
                        td { (step["timeout_ms"]) " ms" }
                        td { (step["retry"]["max_attempts"]) }
                    }
                }
            }
        }
        @if may_run {
            h2 { "Run" }
            form.run #run data-workflow=(id) {
                label { "Version " select name="version" {
                    @for version in &versions {
                        @let n = version["workflow_version"].as_u64().unwrap_or(0);
                        option value=(n) selected[n == shown] { (n) }
                    }
                } }
                label { "Documents " select name="documents" multiple required size="6" {
                    @for document in &documents {
                        option value=(text(document, "id")) data-tenant=(text(document, "tenant"))
                            selected[chosen == Some(text(document, "id"))] {
                            (text(document, "name")) " · " (text(document, "tenant")) " · " (short(text(document, "id")))
                        }
                    }
                } }
                label { "Parameters " textarea name="parameters" rows="3" placeholder="NAME=value, one a line" {} }
                label { "Priority " input name="priority" type="number" value="0" step="1"; }
                button type="submit" { "Run" }
            }
        }
        h2 { "Versions" }
        table.list {
            thead { tr { th { "Version" } th { "Name" } th { "Steps" } th { "Defined" } } }
            tbody {
                @for version in &versions {
                    tr {
                        td { a href={ "/ui/workflows/" (id) "?version=" (version["workflow_version"]) } { (version["workflow_version"]) } }
                        td { (text(version, "name")) }
                        td { (version["steps"].as_array().map_or(0, Vec::len)) }
                        td { (time(&version["defined_at"])) }
                    }
                }
            }
        }
    };
    page(&viewer, "/ui/workflows", &format!("Workflow {}", text(&workflow, "name")), body)
}

/// Next firings shown per schedule.
const NEXT_FIRINGS: usize = 3;

/// `GET /ui/schedules`.
pub async fn schedules(state: web::Data<State>, request: HttpRequest) -> HttpResponse {
    let viewer = Viewer::of(&state, &request);
    let schedules = match all(&state, &viewer, "schedules").await {
        Ok(schedules) => schedules,
        Err(failure) => return failed(&viewer, "/ui/schedules", failure),
    };
    let names = super::jobs::workflow_names(&state, &viewer).await;
    let may_command = viewer.may(Permission::Command);
    let body = html! {
        @if schedules.is_empty() { p { "No schedules." } }
        table.list #schedules {
            thead { tr { th { "Schedule" } th { "Workflow" } th { "Cron" } th { "Status" } th { "Next firings" } th { "Fires" } th { "Jobs" } @if may_command { th {} } } }
            tbody {
                @for schedule in &schedules {
                    @let id = text(schedule, "id");
                    @let workflow = text(schedule, "workflow");
                    @let status = text(schedule, "status");
                    tr data-id=(id) {
                        td { a href={ "/ui/streams/schedule-" (id) } { (short(id)) } }
                        td { a href={ "/ui/workflows/" (workflow) } { (names.get(workflow).map_or(workflow, String::as_str)) } }
                        td { code { (text(schedule, "cron")) } " " (text(schedule, "time_zone")) }
                        td { (badge(status)) }
                        td { @for at in next_firings(schedule) { (time(&Value::from(at))) br; } }
                        td { (schedule["fires"]) }
                        td { (schedule["jobs_submitted"]) }
                        @if may_command { td {
                            @if status == "active" {
                                button type="button" data-command={ "/commands/schedule/" (id) } data-type="pause" data-then="reload" { "Pause" }
                            } @else if status == "paused" {
                                button type="button" data-command={ "/commands/schedule/" (id) } data-type="resume" data-then="reload" { "Resume" }
                            }
                        } }
                    }
                }
            }
        }
    };
    page(&viewer, "/ui/schedules", "Schedules", body)
}

/// The schedule's next firings (µs since the epoch), as its rule gives them.
fn next_firings(schedule: &Value) -> Vec<i64> {
    let Some(first) = schedule["next_fire_at"].as_i64() else { return vec![] };
    let rule = match (schedule["cron"].as_str(), schedule["time_zone"].as_str()) {
        (Some(cron), Some(zone)) => weft_events::domain::schedule::Rule::parse(cron, zone).ok(),
        _ => None,
    };
    let mut firings = vec![first];
    while let (Some(rule), Some(&last)) = (&rule, firings.last()) {
        match rule.next_after(weft_events::Timestamp(last)) {
            Some(next) if firings.len() < NEXT_FIRINGS => firings.push(next.0),
            _ => break,
        }
    }
    firings
}
