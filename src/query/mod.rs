//! The query API over HTTP (`actix-web`): status reads from the read models, live updates, and commands.
//!
//! Routes (answers are JSON; errors are `{"error": {"kind", "message"}}` with the matching status; the full
//! list with parameters is served at `/openapi.json`):
//!
//! - `GET /healthz`: the process is up. `GET /readyz`: 200 when ready, 503 when not (see [`crate::health`]):
//!   each task's state, each projection's position and lag behind the store, and what is not ready and why.
//! - `GET /documents`, `/jobs`, `/agents`, `/workflows`, `/schedules`: pages of a list, ordered by id,
//!   filtered by equality on the model's filter columns (`status`, `tenant`, `owner`, `workflow`, `provider`,
//!   `name`: see [`read`]) and a time range `since`/`until` (microseconds); `limit` (≤ 1000) and `cursor`
//!   (the previous page's `next_cursor`).
//! - `GET /<model>/{id}`: one item, with a document's lineage, a job's steps and progress, an agent's mean
//!   latency, a workflow's versions, a schedule's next fire time.
//! - `GET /jobs/{id}/logs`: a job's log in order, paged by `cursor`.
//! - `GET /streams/{stream}/events`: a stream's events with metadata and payloads (operators).
//! - `GET /<model>/live?<filters>`: server-sent events of a list: each change of a matching item (`event:
//!   item`, `id:` its log position; `Last-Event-ID` resumes), and `event: left` when one stops matching.
//! - `GET /<model>/{id}/live`: server-sent events: every change of the stream in
//!   order (`event: change`, `id:` its version; `Last-Event-ID` resumes), each followed by the item's new state
//!   (`event: state`).
//! - `POST /commands/{aggregate}/{id}`: a command (the NATS body, JSON), sent through the command intake on
//!   the bus exactly as a NATS client's would be; the answer is the intake's reply.
//!
//! - `GET /providers`: the node's LLM providers and their circuits (`closed`, `open`), failures in a row.
//! - `POST /projections/{name}/rebuild`: rebuilds a read model from position 0 into a scratch file while the
//!   old one serves, swaps it in in one transaction, and answers with the position it took over at.
//! - `POST /projections/{name}/reset`: empties a read model and has it apply the log again in place.
//! - `GET /projections/{name}`: a projection's position, lag, and latest rebuild or reset (under way: the
//!   shadow model's position, the head it must reach, events per second).
//! - `POST /tenants/{tenant}/erase` (`{"reason": "..."}`): erases a tenant (crypto-shredding,
//!   [`crate::store::sealed`]): its key is destroyed, the personal fields of its events read as `[erased]`
//!   from then on, the read models are scrubbed, and commands that would store personal data for it answer
//!   `erased` (HTTP 410). Answers with the erasure (`tenant`, `erased_at`, `destroyed_key`, `position` of its
//!   `tenant.erased` event); again on an erased tenant it changes nothing.
//!
//! Every `GET` accepts `after=<position>`: it waits (up to 5 s) until the read model applied that position
//! (read-your-writes with a command reply's `last_position`), and answers 504 if it has not by then. Every
//! `GET` answer carries an `ETag`; `If-None-Match` with it answers 304.

pub mod connections;
pub mod documents;
mod live;
pub mod nats;
pub mod openapi;
pub mod read;
pub mod select;

use std::collections::BTreeMap;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde_json::{Value, json};

use crate::bus::{Bus, CONTENT_TYPE, Headers, JSON, Message};
use crate::protocol;
pub use read::{Failure, MAX_WAIT, Reads};
use read::{MODELS, Model, Work};

/// What the handlers share.
#[derive(Clone)]
struct State {
    reads: Reads,
    bus: Arc<dyn Bus>,
    limits: HttpLimits,
    /// The documents' routes' needs, when the node keeps documents.
    objects: Option<documents::Objects>,
    /// The node's LLM providers, for `GET /providers`.
    providers: Vec<Arc<dyn crate::agents::Provider>>,
    /// Turns true when the server stops: live streams end.
    closing: tokio::sync::watch::Receiver<bool>,
}

/// Limits on what a client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Largest command body, in bytes.
    pub max_body_bytes: usize,
    /// Longest wait for the next bytes of a request body: a body that stalls longer is answered 408 and its
    /// connection closed, so stalled clients cannot hold connections (and file descriptors) for ever.
    pub body_idle_timeout: Duration,
    /// Most connections open from one client address (see [`connections`]).
    pub max_connections_per_client: usize,
}

/// The default of [`HttpLimits::body_idle_timeout`].
pub const DEFAULT_BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// The running HTTP server.
pub struct QueryApi {
    handle: actix_web::dev::ServerHandle,
    addr: SocketAddr,
    closing: tokio::sync::watch::Sender<bool>,
}

impl QueryApi {
    /// Serves `reads` on `listener`, sending commands over `bus`, and the documents' routes with `objects`.
    /// Must be called on an actix system.
    pub fn start(
        listener: std::net::TcpListener,
        reads: Reads,
        bus: Arc<dyn Bus>,
        limits: HttpLimits,
        objects: Option<documents::Objects>,
        providers: Vec<Arc<dyn crate::agents::Provider>>,
    ) -> anyhow::Result<Self> {
        let (closing, closed) = tokio::sync::watch::channel(false);
        let addr = listener.local_addr()?;
        let state = State { reads, bus, limits, objects, providers, closing: closed };
        let counted = connections::Connections::new(limits.max_connections_per_client);
        let server = HttpServer::new(move || {
            let mut app = App::new()
                .wrap(actix_web::middleware::from_fn(connections::refuse_over_limit))
                .wrap(security_headers())
                .app_data(web::Data::new(state.clone()))
                .app_data(web::PathConfig::default().error_handler(|e, _| bad_request(e.to_string())))
                .app_data(web::QueryConfig::default().error_handler(|e, _| bad_request(e.to_string())))
                .route("/healthz", web::get().to(|| async { HttpResponse::Ok().json(json!({"status": "ok"})) }))
                .route("/readyz", web::get().to(readyz))
                .route("/openapi.json", web::get().to(|req: HttpRequest| async move { ok(&req, openapi::document()) }))
                .configure(documents::routes);
            // Each model's list, list feed, item and item feed (`/<model>/live` before `/<model>/{id}`).
            for model in MODELS {
                let base = format!("/{}", model.name);
                app = app
                    .route(&base, web::get().to(move |s, r, q| list(s, r, q, model)))
                    .route(&format!("{base}/live"), web::get().to(move |s, r, q| live::serve_list(s, r, q, model)))
                    .route(&format!("{base}/{{id}}"), web::get().to(move |s, r, p, q| show(s, r, p, q, model)))
                    .route(
                        &format!("{base}/{{id}}/live"),
                        web::get().to(move |s, r, p, q| live::serve(s, r, p, q, model)),
                    );
            }
            app.route("/jobs/{id}/logs", web::get().to(job_logs))
                .route("/providers", web::get().to(provider_health))
                .route("/streams/{stream}/events", web::get().to(history))
                .route("/commands/{aggregate}/{id}", web::post().to(command))
                .route("/projections/{name}", web::get().to(projection))
                .route("/tenants/{tenant}/erase", web::post().to(erase_tenant))
                .route("/projections/{name}/rebuild", web::post().to(move |s, r, n| maintain(s, r, n, Work::Rebuild)))
                .route("/projections/{name}/reset", web::post().to(move |s, r, n| maintain(s, r, n, Work::Reset)))
                .default_service(web::to(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such route") }))
        })
        .on_connect(move |io, data| counted.accepted(io, data))
        .workers(2)
        .disable_signals()
        .listen(listener)
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        let server = server.run();
        let handle = server.handle();
        actix_rt::spawn(server);
        Ok(Self { handle, addr, closing })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops taking connections and finishes the requests in flight.
    pub async fn stop(self) {
        self.closing.send_replace(true);
        self.handle.stop(true).await;
    }
}

fn error(status: StatusCode, kind: &str, message: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status).json(json!({"error": {"kind": kind, "message": message.into()}}))
}

fn bad_request(message: String) -> actix_web::Error {
    actix_web::error::InternalError::from_response(message.clone(), error(StatusCode::BAD_REQUEST, "invalid", message))
        .into()
}

impl Failure {
    /// The HTTP status of a failure.
    pub fn status(&self) -> StatusCode {
        match self.kind {
            "invalid" => StatusCode::BAD_REQUEST,
            "not_found" => StatusCode::NOT_FOUND,
            "not_yet" => StatusCode::GATEWAY_TIMEOUT,
            "too_large" => StatusCode::PAYLOAD_TOO_LARGE,
            "conflict" => StatusCode::CONFLICT,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn respond(self) -> HttpResponse {
        error(self.status(), self.kind, self.message)
    }
}

/// A strong `ETag` of a body: a hash of its bytes (the same body always has the same tag).
fn etag(body: &[u8]) -> String {
    format!("\"{:016x}\"", BuildHasherDefault::<DefaultHasher>::default().hash_one(body))
}

/// 200 with `value` and its `ETag`, or 304 when the client's `If-None-Match` names that tag.
fn ok(request: &HttpRequest, value: Value) -> HttpResponse {
    let body = value.to_string();
    let tag = etag(body.as_bytes());
    let matches = request
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() == "*" || v.split(',').any(|t| t.trim().trim_start_matches("W/") == tag));
    if matches {
        return HttpResponse::NotModified().insert_header((header::ETAG, tag)).finish();
    }
    HttpResponse::Ok().insert_header((header::ETAG, tag)).content_type(JSON).body(body)
}

fn answer(request: &HttpRequest, result: Result<Value, Failure>) -> HttpResponse {
    match result {
        Ok(value) => ok(request, value),
        Err(failure) => failure.respond(),
    }
}

type Params = web::Query<BTreeMap<String, String>>;

async fn readyz(state: web::Data<State>, request: HttpRequest) -> HttpResponse {
    match state.reads.readiness().await {
        (true, answer) => ok(&request, answer),
        (false, answer) => HttpResponse::ServiceUnavailable().json(answer),
    }
}

async fn list(state: web::Data<State>, request: HttpRequest, params: Params, model: &'static Model) -> HttpResponse {
    answer(&request, state.reads.list(model, &params).await)
}

async fn show(
    state: web::Data<State>,
    request: HttpRequest,
    id: web::Path<String>,
    params: Params,
    model: &'static Model,
) -> HttpResponse {
    if let Err(failure) = read::check_keys(&params, &["after"]) {
        return failure.respond();
    }
    let after = match read::number(&params, "after") {
        Ok(after) => after,
        Err(failure) => return failure.respond(),
    };
    answer(&request, state.reads.show(model, &id, after).await)
}

async fn job_logs(
    state: web::Data<State>,
    request: HttpRequest,
    id: web::Path<String>,
    params: Params,
) -> HttpResponse {
    answer(&request, state.reads.job_logs(&id, &params).await)
}

async fn history(
    state: web::Data<State>,
    request: HttpRequest,
    stream: web::Path<String>,
    params: Params,
) -> HttpResponse {
    answer(&request, state.reads.history(&stream, &params).await)
}

async fn provider_health(state: web::Data<State>, request: HttpRequest) -> HttpResponse {
    let health: Vec<_> = state.providers.iter().map(|p| p.health()).collect();
    ok(&request, json!({ "providers": health }))
}

async fn maintain(state: web::Data<State>, request: HttpRequest, name: web::Path<String>, work: Work) -> HttpResponse {
    answer(&request, state.reads.rebuild(&name, work).await)
}

async fn projection(state: web::Data<State>, request: HttpRequest, name: web::Path<String>) -> HttpResponse {
    answer(&request, state.reads.projection(&name).await)
}

/// What `POST /tenants/{tenant}/erase` takes.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EraseRequest {
    /// Why, for the record.
    reason: String,
    /// The tenant's name again: erasing cannot be undone, so the caller says twice which tenant it means.
    confirm: String,
}

/// Longest reason of an erasure, in bytes.
const MAX_REASON_BYTES: usize = 500;

/// Largest body of an erasure request, in bytes.
const MAX_ERASE_BODY_BYTES: usize = 4096;

async fn erase_tenant(
    state: web::Data<State>,
    request: HttpRequest,
    tenant: web::Path<String>,
    payload: web::Payload,
) -> HttpResponse {
    let Some(eraser) = state.reads.erase.clone() else {
        return error(StatusCode::NOT_FOUND, "not_found", "this node does not erase tenants");
    };
    let body = match documents::read_body(payload, MAX_ERASE_BODY_BYTES, state.limits.body_idle_timeout).await {
        Ok(body) => body,
        Err(refusal) => return refusal.respond(),
    };
    let body: EraseRequest = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(e) => {
            let message = format!("the body is not {{\"reason\": ..., \"confirm\": \"<tenant>\"}}: {e}");
            return error(StatusCode::BAD_REQUEST, "invalid", message);
        }
    };
    if let Err(e) = weft_events::envelope::check_label("tenant", &tenant) {
        return error(StatusCode::BAD_REQUEST, "invalid", e.to_string());
    }
    if body.confirm != *tenant {
        let message = format!("`confirm` must repeat the tenant's name, {:?}: erasing cannot be undone", *tenant);
        return error(StatusCode::BAD_REQUEST, "invalid", message);
    }
    match eraser.known(&tenant).await {
        Ok(true) => {}
        Ok(false) => {
            let message = format!("no tenant {:?}: nothing of it is stored, so there is nothing to erase", *tenant);
            return error(StatusCode::NOT_FOUND, "not_found", message);
        }
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()),
    }
    if body.reason.trim().is_empty() || body.reason.len() > MAX_REASON_BYTES {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!("the reason must hold 1 to {MAX_REASON_BYTES} bytes"),
        );
    }
    let actor = request
        .headers()
        .get(crate::bus::ACTOR)
        .and_then(|v| v.to_str().ok())
        .filter(|a| weft_events::envelope::check_label("actor", a).is_ok())
        .unwrap_or("operator")
        .to_owned();
    match eraser.erase(&tenant, &body.reason, &actor).await {
        Ok(erasure) => {
            tracing::warn!(tenant = %erasure.tenant, destroyed_key = erasure.destroyed_key, "tenant erased");
            let mut answer = serde_json::to_value(&erasure).unwrap_or_default();
            // The documents' bytes go too. Their key is destroyed already: a failure here is finished by
            // erasing again, which deletes what is left.
            if let Some(objects) = &state.objects {
                match objects.documents.objects().delete_tenant(&tenant).await {
                    Ok(deleted) => answer["objects_deleted"] = json!(deleted),
                    Err(e) => {
                        let message = format!(
                            "the tenant's key is destroyed, but deleting its objects failed ({e}): erase again to finish"
                        );
                        return error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message);
                    }
                }
            }
            HttpResponse::Ok().json(answer)
        }
        Err(e @ weft_events::Error::InvalidEvent { .. }) => error(StatusCode::BAD_REQUEST, "invalid", e.to_string()),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()),
    }
}

/// The headers every answer carries: no type guessing, no framing by other origins, no referrer leaking ids
/// in URLs, and the answers kept to this origin.
fn security_headers() -> actix_web::middleware::DefaultHeaders {
    actix_web::middleware::DefaultHeaders::new()
        .add((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .add((header::X_FRAME_OPTIONS, "DENY"))
        .add((header::REFERRER_POLICY, "no-referrer"))
        .add(("Cross-Origin-Resource-Policy", "same-origin"))
        .add(("Cross-Origin-Opener-Policy", "same-origin"))
}

/// The aggregates commands may be sent to.
const AGGREGATES: [&str; 5] = ["document", "workflow", "job", "agent", "schedule"];

/// How long a command sent over HTTP may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// HTTP headers passed on to the intake as the bus headers of the same name.
const FORWARDED: [&str; 4] =
    [crate::bus::CORRELATION_ID, crate::bus::ACTOR, crate::bus::TENANT, crate::bus::TRACEPARENT];

async fn command(
    state: web::Data<State>,
    request: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> HttpResponse {
    let (aggregate, id) = path.into_inner();
    if !AGGREGATES.contains(&aggregate.as_str()) {
        return error(StatusCode::NOT_FOUND, "not_found", format!("no aggregate {aggregate:?}"));
    }
    let id = match read::parse_id(&id) {
        Ok(id) => id,
        Err(failure) => return failure.respond(),
    };
    let body = match documents::read_body(payload, state.limits.max_body_bytes, state.limits.body_idle_timeout).await {
        Ok(body) => body,
        Err(refusal) => return refusal.respond(),
    };
    let mut headers = Headers::from([(CONTENT_TYPE.to_owned(), JSON.to_owned())]);
    for name in FORWARDED {
        if let Some(value) = request.headers().get(name) {
            let Ok(value) = value.to_str() else {
                return error(StatusCode::BAD_REQUEST, "invalid", format!("header {name} is not text"));
            };
            headers.insert(name.to_owned(), value.to_owned());
        }
    }
    let message = Message { subject: protocol::command_subject(&aggregate, id), reply: None, headers, payload: body };
    let reply = match state.bus.request(message, COMMAND_TIMEOUT).await {
        Ok(reply) => reply,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", format!("sending the command: {e}")),
    };
    let Ok(reply) = serde_json::from_slice::<Value>(&reply.payload) else {
        return error(StatusCode::BAD_GATEWAY, "unavailable", "the intake's reply is not JSON");
    };
    let status = match reply["error"]["kind"].as_str() {
        None => StatusCode::OK,
        Some("invalid") => StatusCode::BAD_REQUEST,
        Some("rejected") => StatusCode::UNPROCESSABLE_ENTITY,
        Some("conflict") => StatusCode::CONFLICT,
        Some("not_found") => StatusCode::NOT_FOUND,
        Some("unauthorized") => StatusCode::FORBIDDEN,
        Some("erased") => StatusCode::GONE,
        Some(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    let mut response = HttpResponse::build(status).json(reply);
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
