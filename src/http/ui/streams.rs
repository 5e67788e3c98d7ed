//! `/ui/streams` (open a stream by name) and `/ui/streams/{stream}`: the event log of one stream, as `weft events cat` and `state` show it.
//!
//! Its events in order with their metadata (position, time, actor, correlation and causation ids) and decoded
//! payloads, a page of them at a time (`?cursor=<version>`); the aggregate's state at any version (`?at=N`,
//! what `weft events state --at N` prints); and a live tail: the stream's new events appear as they are
//! committed (the item feed `GET /<model>/{id}/live`, resumed after the last version shown).

use std::collections::BTreeMap;

use actix_web::{HttpRequest, HttpResponse, web};
use maud::html;
use serde_json::Value;

use super::{Viewer, failed, page, short, text, time};
use crate::http::{Params, State};
use crate::query::Failure;
use crate::query::read::MODELS;
use crate::replay::inspect::{self, Bound};

/// Events in a page.
const PAGE_EVENTS: usize = 100;

/// `GET /ui/streams/{stream}[?cursor=V][&at=N]`.
pub async fn show(
    state: web::Data<State>,
    request: HttpRequest,
    stream: web::Path<String>,
    params: Params,
) -> HttpResponse {
    let viewer = Viewer::of(&state, &request);
    let at = match params.get("at").filter(|a| !a.is_empty()).map(|a| a.parse::<u64>()) {
        None => None,
        Some(Ok(at)) if at > 0 => Some(at),
        Some(_) => return failed(&viewer, "", Failure::invalid("`at` is a version: a whole number from 1")),
    };
    let mut query = BTreeMap::from([("limit".to_owned(), PAGE_EVENTS.to_string())]);
    if let Some(cursor) = params.get("cursor") {
        query.insert("cursor".into(), cursor.clone());
    }
    // The history read checks the stream's name and whether the viewer may read it.
    let events = match state.reads.history(&stream, &query, &viewer.scope).await {
        Ok(events) => events,
        Err(failure) => return failed(&viewer, "", failure),
    };
    let items = events["items"].as_array().cloned().unwrap_or_default();
    let (kind, id) = stream.split_once('-').unwrap_or((stream.as_str(), ""));
    let model = MODELS.into_iter().find(|m| m.kind == kind);
    let folded = match at {
        Some(at) => match weft_events::StreamName::new(stream.as_str()) {
            Ok(name) => Some(inspect::state(&*state.reads.store, &name, Some(Bound::Version(at))).await),
            Err(e) => return failed(&viewer, "", Failure::invalid(e.to_string())),
        },
        None => None,
    };
    let last = items.last().map_or(0, |e| e["version"].as_u64().unwrap_or(0));
    let cursor = params.get("cursor").and_then(|c| c.parse::<u64>().ok());
    let live =
        model.filter(|_| events["next_cursor"].is_null()).map(|m| format!("/{}/{id}/live?cursor={last}", m.name));
    let body = html! {
        p {
            @if let Some(model) = model {
                a href={ "/ui/" (model.name) "/" (id) } { "the " (model.kind) " " (short(id)) }
            }
        }
        form.filters method="get" {
            label { "State at version " input name="at" type="number" min="1" value=[at] required; }
            button type="submit" { "Show" }
        }
        @if let (Some(at), Some(folded)) = (at, &folded) {
            section #state {
                h2 { "State at version " (at) }
                @match folded {
                    Ok(folded) => {
                        p { "As of " (text(folded, "recorded_at")) }
                        (super::json_block(&folded["state"]))
                    }
                    Err(e) => p.error { (e.to_string()) },
                }
            }
        }
        h2 { "Events" }
        table.list.events #events data-live=[live] {
            thead { tr { th { "Version" } th { "Type" } th { "Position" } th { "Recorded" } th { "Actor" } th { "Correlation" } th { "Causation" } th { "Payload" } } }
            tbody {
                @for event in &items { (row(&stream, event)) }
            }
        }
        nav.pager aria-label="Pages" {
            @if cursor.is_some() { a href={ "/ui/streams/" (stream) } { "« First" } }
            @if let Some(next) = events["next_cursor"].as_u64() { a rel="next" href={ "/ui/streams/" (stream) "?cursor=" (next) } { "Later »" } }
        }
    };
    page(&viewer, "", &format!("Stream {stream}"), body)
}

/// `GET /ui/streams[?stream=NAME]`: a form to open any stream by name (`job-<id>`, `document-<id>`, ...); with
/// a name, that stream's page.
pub async fn open(state: web::Data<State>, request: HttpRequest, params: Params) -> HttpResponse {
    if let Some(stream) = params.get("stream").map(|s| s.trim()).filter(|s| !s.is_empty()) {
        let name = percent_encoding::utf8_percent_encode(stream, percent_encoding::NON_ALPHANUMERIC);
        return super::see_other(&format!("/ui/streams/{name}"));
    }
    let viewer = Viewer::of(&state, &request);
    let body = html! {
        form.filters method="get" action="/ui/streams" {
            label { "Stream " input name="stream" placeholder="job-<id>" size="48" required; }
            button type="submit" { "Open" }
        }
        p { "A stream is an aggregate's events: " code { "document-" } ", " code { "job-" } ", " code { "agent-" } ", "
            code { "workflow-" } ", " code { "schedule-" } " or " code { "trigger-" } " and its id." }
    };
    page(&viewer, "", "Streams", body)
}

/// A row of the events table; the script draws the live tail's rows the same way.
fn row(stream: &str, event: &Value) -> maud::Markup {
    html! {
        tr data-version=(event["version"]) {
            td { a href={ "/ui/streams/" (stream) "?at=" (event["version"]) } title="the state at this version" { (event["version"]) } }
            td { code { (text(event, "type")) } }
            td { (event["position"]) }
            td { (time(&event["recorded_at"])) }
            td { (text(event, "actor")) }
            td { (short(text(event, "correlation_id"))) }
            td { (short(text(event, "causation_id"))) }
            td { details { summary { "payload" } (super::json_block(&event["event"])) } }
        }
    }
}
