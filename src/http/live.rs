//! Live updates as server-sent events.
//!
//! - One item (`GET /<model>/{id}/live[?cursor=V]`): every change of its stream after version `V` (0 by
//!   default), in order, and after them the item's state exactly as of the last change sent (`version` equal
//!   to its `id:`).
//! - A list (`GET /<model>/live?<filters>[&cursor=P]`): `event: item` with the item's new state each time an
//!   item that matches the filters changes; `id:` is the log position of the change, and `Last-Event-ID` (or
//!   `cursor`) resumes after it (without either the feed starts at the read model's current position). An item that stops matching is
//!   sent once more as `event: left`, with its id.
//!
//! The changes come from the history read model (one row per event), so a client sees every change even when
//! the projections apply several in one batch; `id:` is the stream version, and a client that reconnects with
//! `Last-Event-ID` resumes after it. A comment line every 15 s keeps idle connections open through proxies.

use std::time::Duration;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::Value;
use tokio::sync::mpsc;

use super::{Failure, State};
use crate::query::Scope;
use crate::query::read::{self, HISTORY, Model, Reads};

/// How often an idle stream sends a keep-alive comment.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Changes read per query.
const PAGE: usize = 500;

pub(super) async fn serve(
    state: web::Data<State>,
    request: HttpRequest,
    id: web::Path<String>,
    params: super::Params,
    model: &'static Model,
) -> HttpResponse {
    let after = match read::check_keys(&params, &["after", "cursor"]).and_then(|()| read::number(&params, "after")) {
        Ok(after) => after,
        Err(failure) => return failure.respond(),
    };
    // Where to resume: `Last-Event-ID` (a reconnecting client), else `cursor` (a page that drew the item as of
    // that version), else the stream's start.
    let last = match last_event_id(&request, "a stream version").and_then(|last| match last {
        Some(last) => Ok(Some(last)),
        None => read::number::<i64>(&params, "cursor"),
    }) {
        Ok(last) => last.unwrap_or(0),
        Err(failure) => return failure.respond(),
    };
    // Unknown and malformed ids are refused here, not in the stream (`after`: once the read model has it).
    let scope = super::access::scope(&request);
    let id = match state.reads.show(model, &id, after, &scope).await {
        Ok(item) => item["id"].as_str().unwrap_or_default().to_owned(),
        Err(failure) => return failure.respond(),
    };
    event_stream(|tx| feed(state.reads.clone(), state.closing.clone(), model, id, last, scope, tx))
}

/// The `Last-Event-ID` a reconnecting client sends, if any; `what` says what it must be, for the error.
fn last_event_id<T: std::str::FromStr>(request: &HttpRequest, what: &str) -> Result<Option<T>, Failure> {
    match request.headers().get("Last-Event-ID") {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Some)
            .ok_or_else(|| Failure::invalid(format!("Last-Event-ID is not {what}"))),
    }
}

/// A `text/event-stream` answer of what `feed` (spawned with the sending end) sends, until it stops.
fn event_stream<F: std::future::Future<Output = ()> + 'static>(
    feed: impl FnOnce(mpsc::Sender<String>) -> F,
) -> HttpResponse {
    let (tx, rx) = mpsc::channel(64);
    actix_rt::spawn(feed(tx));
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk: String| (Ok::<_, actix_web::Error>(web::Bytes::from(chunk)), rx))
    });
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/event-stream"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .streaming(body)
}

fn event(name: &str, id: Option<&Value>, data: &Value) -> String {
    match id {
        Some(id) => format!("id: {id}\nevent: {name}\ndata: {data}\n\n"),
        None => format!("event: {name}\ndata: {data}\n\n"),
    }
}

/// Sends the stream's changes after version `last` until the client goes away or the server stops.
async fn feed(
    reads: Reads,
    mut closing: tokio::sync::watch::Receiver<bool>,
    model: &'static Model,
    id: String,
    mut last: i64,
    scope: Scope,
    tx: mpsc::Sender<String>,
) {
    let stream = format!("{}-{id}", model.kind);
    let Some(mut history) = reads.position(HISTORY) else { return };
    loop {
        // Marked seen before reading, so a change committed meanwhile wakes the wait below.
        history.borrow_and_update();
        let (s, after) = (stream.clone(), last);
        let changes = match reads.query(move |db| read::history_rows(db, &s, after, PAGE)).await {
            Ok(changes) => changes,
            Err(failure) => {
                let data = serde_json::json!({"kind": failure.kind, "message": failure.message});
                let _ = tx.send(event("error", None, &data)).await;
                return;
            }
        };
        let Some(newest) = changes.last() else {
            tokio::select! {
                changed = history.changed() => if changed.is_err() { return },
                _ = closing.changed() => return,
                _ = tokio::time::sleep(KEEP_ALIVE) => if tx.send(": keep-alive\n\n".into()).await.is_err() { return },
            }
            continue;
        };
        last = newest["version"].as_i64().unwrap_or(last);
        let position = newest["position"].as_u64();
        for change in &changes {
            if tx.send(event("change", Some(&change["version"]), change)).await.is_err() {
                return;
            }
        }
        if changes.len() == PAGE {
            continue;
        }
        // The state once its read model applied the newest change. When it is further on than the history
        // read model, its changes are sent first: a state always follows every change it reflects.
        let Ok(state) = reads.show(model, &id, position, &scope).await else { continue };
        if state["version"].as_i64().is_some_and(|v| v > last) {
            continue;
        }
        if tx.send(event("state", None, &state)).await.is_err() {
            return;
        }
        if *closing.borrow() {
            return;
        }
    }
}

/// Most events of the log read per step of a list feed.
const LIST_PAGE: usize = 1000;

pub(super) async fn serve_list(
    state: web::Data<State>,
    request: HttpRequest,
    params: super::Params,
    model: &'static Model,
) -> HttpResponse {
    // `label.<key>` filters are checked here and matched as they came (see `matches`).
    let mut known = model.filters.to_vec();
    known.push("cursor");
    let checked = read::label_filters(model, &params).and_then(|(_, rest)| read::check_keys(&rest, &known));
    if let Err(failure) = checked {
        return failure.respond();
    }
    // Where to resume: `Last-Event-ID` (a reconnecting client), else `cursor` (a page drawn as of that log
    // position), else the read model's current position.
    let from = match last_event_id(&request, "a log position").and_then(|from| match from {
        Some(from) => Ok(Some(from)),
        None => read::number::<u64>(&params, "cursor"),
    }) {
        Ok(from) => from,
        Err(failure) => return failure.respond(),
    };
    let mut params = params.into_inner();
    params.remove("cursor");
    let Some(position) = state.reads.position(model.projection) else {
        return Failure::unavailable("no such projection").respond();
    };
    let from = from.unwrap_or_else(|| *position.borrow());
    let filters: Vec<(String, String)> = params.into_iter().collect();
    let scope = super::access::scope(&request);
    let reads = state.reads.clone();
    event_stream(|tx| feed_list(reads, state.closing.clone(), model, (filters, scope), from, position, tx))
}

/// Whether `item` has each filter's value (numbers compared as their text); `label.<key>` is the item's label.
fn matches(item: &Value, filters: &[(String, String)]) -> bool {
    filters.iter().all(|(column, value)| {
        let found = match column.strip_prefix("label.") {
            Some(key) => &item["labels"][key],
            None => &item[column.as_str()],
        };
        matches_one(found, value)
    })
}

fn matches_one(found: &Value, value: &str) -> bool {
    match found {
        Value::String(text) => text == value,
        Value::Null => false,
        other => serde_json::from_str::<Value>(value).is_ok_and(|v| v == *other),
    }
}

/// Follows the read model's position; for the log's events it applied after `from`, sends the changed items
/// of the model's kind, each once per step, with the position of its last change there.
async fn feed_list(
    reads: Reads,
    mut closing: tokio::sync::watch::Receiver<bool>,
    model: &'static Model,
    (filters, scope): (Vec<(String, String)>, Scope),
    mut from: u64,
    mut applied: tokio::sync::watch::Receiver<u64>,
    tx: mpsc::Sender<String>,
) {
    let prefix = format!("{}-", model.kind);
    let mut matched = std::collections::HashSet::new();
    loop {
        let upto = *applied.borrow_and_update();
        if upto <= from {
            tokio::select! {
                changed = applied.changed() => if changed.is_err() { return },
                _ = closing.changed() => return,
                _ = tokio::time::sleep(KEEP_ALIVE) => if tx.send(": keep-alive\n\n".into()).await.is_err() { return },
            }
            continue;
        }
        let events = match reads.store.read_all(from + 1, LIST_PAGE).await {
            Ok(events) => events,
            Err(e) => {
                let data = serde_json::json!({"kind": "unavailable", "message": e.to_string()});
                let _ = tx.send(event("error", None, &data)).await;
                return;
            }
        };
        // Each changed item once, at its last change within what the read model has applied.
        let mut changed: Vec<(String, u64)> = Vec::new();
        for envelope in events.iter().take_while(|e| e.position <= upto) {
            if let Some(id) = envelope.stream.as_str().strip_prefix(&prefix) {
                changed.retain(|(seen, _)| seen != id);
                changed.push((id.to_owned(), envelope.position));
            }
            from = envelope.position;
        }
        if events.is_empty() {
            from = upto;
        }
        for (id, position) in changed {
            // An item out of the reader's scope is skipped as a deleted one is.
            let item = match reads.show(model, &id, None, &scope).await {
                Ok(item) => item,
                Err(failure) if failure.kind == "not_found" => continue,
                Err(failure) => {
                    let data = serde_json::json!({"kind": failure.kind, "message": failure.message});
                    let _ = tx.send(event("error", None, &data)).await;
                    return;
                }
            };
            let id_value = Value::from(position);
            let sent = if matches(&item, &filters) {
                matched.insert(id.clone());
                tx.send(event("item", Some(&id_value), &item)).await
            } else if matched.remove(&id) {
                tx.send(event("left", Some(&id_value), &serde_json::json!({"id": id}))).await
            } else {
                Ok(())
            };
            if sent.is_err() {
                return;
            }
        }
        if *closing.borrow() {
            return;
        }
    }
}
