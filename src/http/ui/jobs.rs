//! `/ui/jobs` and `/ui/jobs/{id}`: the jobs, live.
//!
//! The list is newest first, filtered as `GET /jobs` filters, fifty to a page; its rows follow
//! `GET /jobs/live` (same filters): a job that changes is redrawn in place, a new one appears at the top of
//! the first page. A job's page draws its workflow's steps as a DAG coloured by status, its steps' attempts,
//! errors and outputs, and its log; all follow `GET /jobs/{id}/live`, the log growing as the job writes it.
//! Cancel and retry are drawn for a role that may run jobs, each shown while the job is in a status that
//! takes it.

use std::collections::BTreeMap;

use actix_web::{HttpRequest, HttpResponse, web};
use maud::{Markup, html};
use serde_json::Value;

use super::{Viewer, badge, dag, failed, page, pager, short, text, time};
use crate::auth::Permission;
use crate::http::{Params, State};

/// The statuses a job can have, for the filter.
const STATUSES: [&str; 5] = ["running", "succeeded", "failed", "dead_lettered", "cancelled"];
/// Statuses in which a job can be cancelled (the aggregate refuses the others).
pub(super) const CANCELLABLE: &str = "running";
/// Statuses in which a job can be retried.
pub(super) const RETRYABLE: &str = "dead_lettered";
/// Log lines drawn with the page; the rest follow.
const LOG_LINES: usize = 1000;

/// `GET /ui/jobs`.
pub async fn list(state: web::Data<State>, request: HttpRequest, params: Params) -> HttpResponse {
    let viewer = Viewer::of(&state, &request);
    let keys = ["status", "tenant", "workflow", "owner"];
    let page_params = super::list_params(&params, &keys);
    // The feed starts where the list was read (taken before it: a change in between is sent, not lost).
    let drawn_at = super::position(&state, super::model("jobs"));
    let found = match state.reads.list(super::model("jobs"), &page_params, &viewer.scope).await {
        Ok(found) => found,
        Err(failure) => return failed(&viewer, "/ui/jobs", failure),
    };
    let names = workflow_names(&state, &viewer).await;
    let query = super::filters(&params, &keys);
    let first = !params.contains_key("cursor");
    let body = html! {
        form.filters method="get" action="/ui/jobs" {
            (super::status_select(&STATUSES, params.get("status")))
            label { "Tenant " input name="tenant" value=[params.get("tenant")] size="10"; }
            label { "Workflow " input name="workflow" value=[params.get("workflow")] placeholder="id" size="12"; }
            label { "Owner " input name="owner" value=[params.get("owner")] size="10"; }
            button type="submit" { "Filter" }
        }
        table.list #jobs data-live={ "/jobs/live?" (query) (if query.is_empty() { "" } else { "&" }) "cursor=" (drawn_at) } data-prepend[first] {
            caption { "Jobs, newest first" @if first { " (live)" } }
            thead { tr { th { "Job" } th { "Workflow" } th { "Status" } th { "Steps" } th { "Tenant" } th { "Submitted" } th { "Updated" } } }
            tbody {
                @for job in found["items"].as_array().into_iter().flatten() { (row(job, &names)) }
            }
            template { (row(&Value::Null, &names)) }
        }
        (pager("/ui/jobs", &query, params.get("cursor").map(String::as_str), found["next_cursor"].as_str()))
    };
    page(&viewer, "/ui/jobs", "Jobs", body)
}

/// A row of the jobs list (with `Value::Null`, the empty row the script fills in for a new job).
fn row(job: &Value, names: &BTreeMap<String, String>) -> Markup {
    let id = text(job, "id");
    let workflow = text(job, "workflow");
    html! {
        tr data-id=(id) {
            td { a data-field="link" href={ "/ui/jobs/" (id) } { (short(id)) } }
            td { a href={ "/ui/workflows/" (workflow) } { (names.get(workflow).map_or(workflow, String::as_str)) } }
            td { (badge(text(job, "status"))) }
            td data-field="steps" { (job["steps_done"]) "/" (job["steps_total"]) }
            td { (text(job, "tenant")) }
            td { (time(&job["submitted_at"])) }
            td data-field="updated_at" { (time(&job["updated_at"])) }
        }
    }
}

/// The workflows' names by id, as far as the viewer may read them.
pub(super) async fn workflow_names(state: &State, viewer: &Viewer) -> BTreeMap<String, String> {
    let params = BTreeMap::from([("limit".to_owned(), "1000".to_owned())]);
    let found = state.reads.list(super::model("workflows"), &params, &viewer.scope).await.unwrap_or_default();
    found["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| (text(w, "id").to_owned(), text(w, "name").to_owned()))
        .collect()
}

/// `GET /ui/jobs/{id}`.
pub async fn show(state: web::Data<State>, request: HttpRequest, id: web::Path<String>) -> HttpResponse {
    let viewer = Viewer::of(&state, &request);
    let job = match state.reads.show(super::model("jobs"), &id, None, &viewer.scope).await {
        Ok(job) => job,
        Err(failure) => return failed(&viewer, "/ui/jobs", failure),
    };
    let id = text(&job, "id").to_owned();
    // The steps as submitted (with their inputs, the DAG's edges): the job stream's first event.
    let first = BTreeMap::from([("limit".to_owned(), "1".to_owned())]);
    let submitted = state.reads.history(&format!("job-{id}"), &first, &viewer.scope).await.unwrap_or_default();
    let defined = submitted["items"][0]["event"]["steps"].as_array().cloned().unwrap_or_default();
    let steps = job["steps"].as_array().cloned().unwrap_or_default();
    let statuses: BTreeMap<String, String> =
        steps.iter().map(|s| (text(s, "step").to_owned(), text(s, "status").to_owned())).collect();
    let logs_params = BTreeMap::from([("limit".to_owned(), LOG_LINES.to_string())]);
    let logs = state.reads.job_logs(&id, &logs_params, &viewer.scope).await.unwrap_or_default();
    let names = workflow_names(&state, &viewer).await;
    let workflow = text(&job, "workflow");
    let may_run = viewer.may(Permission::RunJobs);
    let status = text(&job, "status");
    let body = html! {
        section #job data-live={ "/jobs/" (id) "/live?cursor=" (job["version"]) } data-logs={ "/jobs/" (id) "/logs" } {
            dl.facts {
                dt { "Status" } dd { (badge(status)) }
                dt { "Progress" } dd data-field="steps" { (job["steps_done"]) "/" (job["steps_total"]) }
                dt { "Workflow" } dd { a href={ "/ui/workflows/" (workflow) } { (names.get(workflow).map_or(workflow, String::as_str)) } " v" (job["workflow_version"]) }
                dt { "Tenant" } dd { (text(&job, "tenant")) }
                dt { "Owner" } dd { (text(&job, "owner")) }
                dt { "Submitted" } dd { (time(&job["submitted_at"])) }
                dt { "Finished" } dd data-field="finished_at" { (time(&job["finished_at"])) }
                dt { "Tokens" } dd data-field="tokens" { (job["input_tokens"]) " in, " (job["output_tokens"]) " out" }
                dt { "Cost" } dd data-field="cost" { "$" (job["cost_usd"]) }
                dt { "Error" } dd data-field="error" { (text(&job, "error")) }
                dt { "History" } dd { a href={ "/ui/streams/job-" (id) } { "events of job-" (short(&id)) } }
            }
            @if may_run {
                div.actions {
                    button type="button" data-command={ "/commands/job/" (id) } data-type="cancel" data-confirm="Cancel this job?"
                        data-show-when=(CANCELLABLE) hidden[status != CANCELLABLE] { "Cancel" }
                    button type="button" data-command={ "/commands/job/" (id) } data-type="retry"
                        data-show-when=(RETRYABLE) hidden[status != RETRYABLE] { "Retry" }
                }
            }
            h2 { "Steps" }
            @if defined.is_empty() {
                (dag::workflow(&steps.iter().map(|s| serde_json::json!({"name": s["step"], "inputs": []})).collect::<Vec<_>>(), &statuses))
            } @else {
                (dag::workflow(&defined, &statuses))
            }
            table.list #steps {
                thead { tr { th { "Step" } th { "Status" } th { "Attempts" } th { "Output" } th { "Error" } th { "Retry at" } th { "Tokens" } } }
                tbody {
                    @for step in &steps {
                        @let name = text(step, "step");
                        tr id={ "step-" (name) } data-step=(name) {
                            td { (name) }
                            td { (badge(text(step, "status"))) }
                            td data-field="attempts" { (step["attempts"]) }
                            td data-field="output" {
                                @if let Some(output) = step["output"].as_str() { a href={ "/ui/documents/" (output) } { (short(output)) } }
                            }
                            td data-field="error" { (text(step, "error")) }
                            td data-field="retry_at" { @if !step["retry_at"].is_null() { (time(&step["retry_at"])) } }
                            td data-field="tokens" { (step["input_tokens"]) " / " (step["output_tokens"]) }
                        }
                    }
                }
            }
            h2 { "Log" }
            ol.log #log data-cursor=[logs["next_cursor"].as_u64().or_else(|| last_seq(&logs))] {
                @for line in logs["items"].as_array().into_iter().flatten() {
                    li class={ "l-" (text(line, "level")) } { time { (time(&line["at"])) } " " (text(line, "message")) }
                }
            }
        }
    };
    page(&viewer, "/ui/jobs", &format!("Job {}", &id[..8.min(id.len())]), body)
}

/// The `seq` of the last line of a page of logs.
fn last_seq(logs: &Value) -> Option<u64> {
    logs["items"].as_array().and_then(|items| items.last()).and_then(|l| l["seq"].as_u64())
}
