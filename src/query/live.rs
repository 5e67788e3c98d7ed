//! Live updates as server-sent events: every change of one document's or job's stream, in order, and after
//! them the item's state exactly as of the last change sent (`version` equal to its `id:`).
//!
//! The changes come from the history read model (one row per event), so a client sees every change even when
//! the projections apply several in one batch; `id:` is the stream version, and a client that reconnects with
//! `Last-Event-ID` resumes after it. A comment line every 15 s keeps idle connections open through proxies.

use std::time::Duration;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::Value;
use tokio::sync::mpsc;

use super::read::{self, HISTORY, Model, Reads};
use super::{Failure, State};

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
    let after = match read::check_keys(&params, &["after"]).and_then(|()| read::number(&params, "after")) {
        Ok(after) => after,
        Err(failure) => return failure.respond(),
    };
    let last = match request.headers().get("Last-Event-ID").map(|v| v.to_str().ok().and_then(|v| v.parse().ok())) {
        None => 0,
        Some(Some(version)) => version,
        Some(None) => return Failure::invalid("Last-Event-ID is not a stream version").respond(),
    };
    // Unknown and malformed ids are refused here, not in the stream (`after`: once the read model has it).
    let id = match state.reads.show(model, &id, after).await {
        Ok(item) => item["id"].as_str().unwrap_or_default().to_owned(),
        Err(failure) => return failure.respond(),
    };
    let (tx, rx) = mpsc::channel(64);
    actix_rt::spawn(feed(state.reads.clone(), state.closing.clone(), model, id, last, tx));
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
        let Ok(state) = reads.show(model, &id, position).await else { continue };
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
