//! `/ui` (the overview) and `/ui/projections`.
//!
//! Everyone sees their jobs by status and their recent failures (as their scope reads them). The node's own
//! figures (the store's head, events and commands per second, each projection's lag, its tasks) are the
//! node's state, not a tenant's: they are shown to roles that may inspect the node, as `GET /projections` is.

use std::collections::BTreeMap;

use actix_web::{HttpRequest, HttpResponse, web};
use maud::html;
use rusqlite::ToSql;
use serde_json::Value;

use super::{Viewer, badge, failed, page, short, text, time};
use crate::auth::Permission;
use crate::http::State;

/// The window events and commands per second are counted over.
const RATE_WINDOW_SECS: i64 = 10;
/// Most events read to count them: past it the rate reads "at least".
const RATE_MAX_EVENTS: i64 = 50_000;
/// Recent failures shown.
const RECENT_FAILURES: usize = 10;

/// `GET /ui`.
pub async fn overview(state: web::Data<State>, request: HttpRequest) -> HttpResponse {
    let viewer = Viewer::of(&state, &request);
    let model = super::model("jobs");
    let scope = viewer.scope.clone();
    let by_status = state
        .reads
        .query(move |db| {
            let mut sql = format!("SELECT status, count(*) FROM {} WHERE 1 = 1", model.table);
            let mut args: Vec<Box<dyn ToSql + Send>> = Vec::new();
            scope.restrict(model, &mut sql, &mut args);
            sql.push_str(" GROUP BY status ORDER BY status");
            let params: Vec<&dyn ToSql> = args.iter().map(|a| a.as_ref() as &dyn ToSql).collect();
            let mut statement = db.prepare_cached(&sql)?;
            let rows =
                statement.query_map(params.as_slice(), |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?)))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })
        .await;
    let by_status = match by_status {
        Ok(by_status) => by_status,
        Err(failure) => return failed(&viewer, "/ui", failure),
    };
    let mut failures = Vec::new();
    for status in ["dead_lettered", "failed"] {
        let params = BTreeMap::from([
            ("status".to_owned(), status.to_owned()),
            ("order".to_owned(), "desc".to_owned()),
            ("limit".to_owned(), RECENT_FAILURES.to_string()),
        ]);
        let found = state.reads.list(model, &params, &viewer.scope).await.unwrap_or_default();
        failures.extend(found["items"].as_array().cloned().unwrap_or_default());
    }
    failures.sort_by_key(|job| std::cmp::Reverse(job["updated_at"].as_i64().unwrap_or(0)));
    failures.truncate(RECENT_FAILURES);
    let node = if viewer.may(Permission::Inspect) { Some(node(&state).await) } else { None };
    let body = html! {
        @if let Some(node) = &node { (node) }
        form.filters method="get" action="/ui/streams" {
            label { "Open a stream " input name="stream" placeholder="job-<id>" size="40" required; }
            button type="submit" { "Open" }
        }
        section {
            h2 { "Jobs by status" }
            ul.tiles #jobs-by-status {
                @for (status, count) in &by_status {
                    li { a href={ "/ui/jobs?status=" (status) } { span.count { (count) } " " (badge(status)) } }
                }
                @if by_status.is_empty() { li { "No jobs yet." } }
            }
        }
        section {
            h2 { "Recent failures" }
            @if failures.is_empty() { p { "None." } }
            @else {
                table.list #failures {
                    thead { tr { th { "Job" } th { "Status" } th { "Error" } th { "Tenant" } th { "When" } } }
                    tbody {
                        @for job in &failures {
                            tr {
                                td { a href={ "/ui/jobs/" (text(job, "id")) } { (short(text(job, "id"))) } }
                                td { (badge(text(job, "status"))) }
                                td { (text(job, "error")) }
                                td { (text(job, "tenant")) }
                                td { (time(&job["updated_at"])) }
                            }
                        }
                    }
                }
            }
        }
    };
    page(&viewer, "/ui", "Overview", body)
}

/// The node's own figures: version, store head, rates, projections' lag, tasks.
async fn node(state: &State) -> maud::Markup {
    let (ready, readiness) = state.reads.readiness().await;
    let cutoff = weft_events::envelope::Timestamp::now().0 - RATE_WINDOW_SECS * 1_000_000;
    let rates = state
        .reads
        .query(move |db| {
            db.prepare_cached(
                "SELECT count(*), count(DISTINCT causation_id) FROM stream_events
                 WHERE position > (SELECT coalesce(max(position), 0) FROM stream_events) - ?1 AND recorded_at >= ?2",
            )?
            .query_row(rusqlite::params![RATE_MAX_EVENTS, cutoff], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
            })
        })
        .await
        .ok();
    let per_second = |n: i64| {
        let rate = n as f64 / RATE_WINDOW_SECS as f64;
        if n >= RATE_MAX_EVENTS { format!("≥ {rate:.0}") } else { format!("{rate:.1}") }
    };
    // The nodes sharing the store (this one alone on its own store).
    let nodes: Vec<crate::cluster::members::Member> = match &state.cluster {
        Some(crate::http::Cluster::Shared(members, _)) => members.live().await.unwrap_or_default(),
        Some(crate::http::Cluster::Alone(me)) => vec![me.clone()],
        None => vec![],
    };
    let now = weft_events::envelope::Timestamp::now().0;
    let projections = readiness["projections"].as_object().cloned().unwrap_or_default();
    let tasks = readiness["tasks"].as_object().cloned().unwrap_or_default();
    html! {
        section #node {
            h2 { "This node" }
            dl.facts {
                dt { "Version" } dd { "weft " (env!("CARGO_PKG_VERSION")) }
                dt { "Ready" } dd { (badge(if ready { "ready" } else { "not_ready" })) }
                dt { "Store head" } dd #head { (readiness["head"]) }
                @if let Some((events, commands)) = rates {
                    dt { "Events/s" } dd #events-per-s { (per_second(events)) " (last " (RATE_WINDOW_SECS) " s)" }
                    dt { "Commands/s" } dd #commands-per-s { (per_second(commands)) }
                }
            }
            @if let Some(why) = readiness["not_ready"].as_array() {
                ul.error { @for reason in why { li { (reason.as_str().unwrap_or("")) } } }
            }
            h3 { "Nodes" }
            table.list #nodes {
                thead { tr { th { "Node" } th { "Serves" } th { "Version" } th { "Started" } th { "Last heartbeat" } } }
                tbody {
                    @for node in &nodes {
                        tr {
                            td { (node.id) }
                            td { (node.http.as_deref().unwrap_or("")) }
                            td { (node.version) }
                            td { (time(&node.started_at.into())) }
                            td { (format!("{:.1} s ago", (now - node.beat_at).max(0) as f64 / 1e6)) }
                        }
                    }
                }
            }
            h3 { "Projections" }
            table.list #lag {
                thead { tr { th { "Projection" } th { "Position" } th { "Behind (events)" } th { "Behind (s)" } } }
                tbody {
                    @for (name, lag) in &projections {
                        tr { td { (name) } td { (lag["position"]) } td { (lag["lag_events"]) } td { (format!("{:.1}", lag["lag_seconds"].as_f64().unwrap_or(0.0))) } }
                    }
                }
            }
            details {
                summary { "Tasks (" (tasks.len()) ")" }
                table.list {
                    thead { tr { th { "Task" } th { "State" } th { "Restarts" } th { "Since" } th { "Error" } } }
                    tbody {
                        @for (name, task) in &tasks {
                            tr { td { (name) } td { (badge(text(task, "state"))) } td { (task["restarts"]) } td { (time(&task["since"])) } td { (text(task, "error")) } }
                        }
                    }
                }
            }
        }
    }
}

/// `GET /ui/projections`: each projection's position, lag and latest rebuild, with rebuild buttons for roles
/// that may maintain them.
pub async fn projections(state: web::Data<State>, request: HttpRequest) -> HttpResponse {
    let viewer = Viewer::of(&state, &request);
    let mut rows = Vec::new();
    for (name, _) in &state.reads.positions {
        match state.reads.projection(name).await {
            Ok(status) => rows.push(status),
            Err(failure) => return failed(&viewer, "/ui/projections", failure),
        }
    }
    let may_rebuild = viewer.may(Permission::Maintain) && state.admin.rebuilds.is_some();
    let body = html! {
        table.list #projections {
            thead { tr { th { "Projection" } th { "Position" } th { "Head" } th { "Behind" } th { "Latest rebuild" } @if may_rebuild { th {} } } }
            tbody {
                @for status in &rows {
                    @let name = text(status, "name");
                    tr data-projection=(name) {
                        td { (name) }
                        td data-field="position" { (status["position"]) }
                        td data-field="head" { (status["head"]) }
                        td data-field="lag_events" { (status["lag_events"]) }
                        td data-field="rebuild" { (rebuild(&status["rebuild"])) }
                        @if may_rebuild { td {
                            button type="button" data-rebuild=(name) data-confirm={ "Rebuild " (name) "?" } { "Rebuild" }
                            " " progress max="100" value="0" hidden {}
                        } }
                    }
                }
            }
        }
    };
    page(&viewer, "/ui/projections", "Projections", body)
}

/// A projection's latest rebuild or reset, in words.
fn rebuild(work: &Value) -> String {
    match text(work, "state") {
        "" => "none since the node started".into(),
        "running" => format!("{} running: {} of {}", text(work, "work"), work["position"], work["target"]),
        "done" => format!("{} done, took over at {}", text(work, "work"), work["took_over_at"]),
        _ => format!("{} failed: {}", text(work, "work"), text(work, "error")),
    }
}
