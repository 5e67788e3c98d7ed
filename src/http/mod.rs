//! The HTTP edge (`actix-web`): every route of a node, one file per area, with the middleware in one place.
//!
//! - [`reads`]: the read models' lists, items, job logs, stream histories and projection status, over
//!   [`crate::query::Reads`]; `live`: their server-sent-event feeds.
//! - [`commands`]: commands, passed to the command intake on the bus.
//! - [`documents`]: registration and upload URLs, the notification webhook, the local store's signed URLs.
//! - [`admin`]: rebuilds and resets of read models, tenant erasure, the providers' circuits.
//! - [`health`]: `/healthz` and `/readyz`.
//! - [`metrics`]: `/metrics` (Prometheus), and the middleware counting every request.
//! - [`openapi`]: the document served at `/openapi.json`.
//! - [`middleware`]: what wraps every route: the security headers and the per-address connection limit.
//! - [`ui`]: the dashboard, HTML pages under `/ui` for people in a browser (not part of the JSON API below).
//!
//! Routes (answers are JSON; errors are `{"error": {"kind", "message"}}` with the matching status; the full
//! list with parameters is served at `/openapi.json`):
//!
//! - `GET /metrics`: the node's metrics in the Prometheus text format (operators and admins).
//! - `GET /healthz`: the process is up. `GET /readyz`: 200 when ready, 503 when not (see [`crate::health`]):
//!   each task's state, each projection's position and lag behind the store, and what is not ready and why.
//! - `GET /documents`, `/jobs`, `/agents`, `/workflows`, `/schedules`, `/triggers`: pages of a list, ordered by id,
//!   filtered by equality on the model's filter columns (`status`, `tenant`, `owner`, `workflow`, `provider`,
//!   `name`: see [`crate::query::read`]) and a time range `since`/`until` (microseconds); `limit` (≤ 1000) and `cursor`
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
//! - `GET /cluster`: the nodes sharing this node's store (each announced in JetStream KV, gone 5 s after its
//!   last heartbeat), the partitions, and which node each partition is assigned to (rendezvous hashing; nodes
//!   do not yet act on it: see `crate::cluster`). A node on its own store is the only one, with them all.
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

pub mod access;
pub mod admin;
pub mod browsers;
pub mod commands;
pub mod documents;
pub mod health;
pub mod identities;
mod live;
pub mod metrics;
pub mod middleware;
pub mod openapi;
pub mod reads;
pub mod ui;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde_json::{Value, json};

use crate::bus::{Bus, JSON};
use crate::query::{Failure, Reads};

/// What the handlers share.
#[derive(Clone)]
struct State {
    reads: Reads,
    admin: admin::Admin,
    bus: Arc<dyn Bus>,
    limits: HttpLimits,
    /// The documents' routes' needs, when the node keeps documents.
    objects: Option<documents::Objects>,
    /// The node's LLM providers, for `GET /providers`.
    providers: Vec<Arc<dyn crate::agents::Provider>>,
    /// Turns true when the server stops: live streams end.
    closing: tokio::sync::watch::Receiver<bool>,
    /// The verifier of bearer tokens; `None` on a node without authentication (`--insecure-no-auth`).
    auth: Option<std::sync::Arc<crate::auth::token::Verifier>>,
    /// The other origins whose pages may call the API (CORS); none by default.
    origins: Arc<Vec<String>>,
    /// The nodes sharing this node's store, for `GET /cluster`.
    cluster: Option<Cluster>,
}

/// Who a node shares its store with, for `GET /cluster`.
#[derive(Clone)]
pub enum Cluster {
    /// Nodes sharing a JetStream store: this node's entry among them, and with partition routing the
    /// partitions it holds and the bucket of every partition's lease.
    Shared(
        Box<crate::cluster::members::Members>,
        Option<Box<(crate::cluster::ownership::Partitions, async_nats::jetstream::kv::Store)>>,
    ),
    /// A node on its own store: itself.
    Alone(crate::cluster::members::Member),
}

/// Limits on what a client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Largest command body, in bytes.
    pub max_body_bytes: usize,
    /// Longest wait for the next bytes of a request body: a body that stalls longer is answered 408 and its
    /// connection closed, so stalled clients cannot hold connections (and file descriptors) for ever.
    pub body_idle_timeout: Duration,
    /// Most connections open from one client address (see [`middleware`]).
    pub max_connections_per_client: usize,
}

/// The default of [`HttpLimits::body_idle_timeout`].
pub const DEFAULT_BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// The running HTTP server.
pub struct HttpApi {
    handle: actix_web::dev::ServerHandle,
    addr: SocketAddr,
    closing: tokio::sync::watch::Sender<bool>,
}

/// What a node hands its HTTP edge besides the reads and the bus.
pub struct Parts {
    /// Rebuilds and erasure.
    pub admin: admin::Admin,
    /// Limits on what clients send.
    pub limits: HttpLimits,
    /// The documents' routes' needs, when the node keeps documents.
    pub objects: Option<documents::Objects>,
    /// The node's LLM providers, for `GET /providers`.
    pub providers: Vec<Arc<dyn crate::agents::Provider>>,
    /// The verifier of bearer tokens; `None`: no authentication (`--insecure-no-auth`).
    pub auth: Option<std::sync::Arc<crate::auth::token::Verifier>>,
    /// The other origins whose pages may call the API (CORS, `--cors-origin`).
    pub origins: Vec<String>,
    /// The nodes sharing this node's store (`GET /cluster`); `None`: the route answers 404.
    pub cluster: Option<Cluster>,
}

impl HttpApi {
    /// Serves `reads` on `listener`, sending commands over `bus`, with the rest of `parts`. Must be called on
    /// an actix system.
    pub fn start(
        listener: std::net::TcpListener,
        reads: Reads,
        bus: Arc<dyn Bus>,
        parts: Parts,
    ) -> std::io::Result<Self> {
        let Parts { admin, limits, objects, providers, auth, origins, cluster } = parts;
        let origins = Arc::new(origins);
        let (closing, closed) = tokio::sync::watch::channel(false);
        let addr = listener.local_addr()?;
        let state = State {
            reads,
            admin,
            bus,
            limits,
            objects,
            providers,
            closing: closed,
            auth,
            origins: origins.clone(),
            cluster,
        };
        let counted = middleware::Connections::new(limits.max_connections_per_client);
        let server = HttpServer::new(move || {
            App::new()
                .wrap(actix_web::middleware::from_fn(access::authenticate))
                .wrap(actix_web::middleware::from_fn(browsers::guard))
                .wrap(actix_web::middleware::from_fn(middleware::refuse_over_limit))
                .wrap(middleware::security_headers())
                .wrap(browsers::cors(&origins))
                .wrap(actix_web::middleware::from_fn(metrics::record))
                .app_data(web::Data::new(state.clone()))
                .app_data(web::PathConfig::default().error_handler(|e, _| bad_request(e.to_string())))
                .app_data(web::QueryConfig::default().error_handler(|e, _| bad_request(e.to_string())))
                .configure(health::routes)
                .configure(metrics::routes)
                .route("/openapi.json", web::get().to(|req: HttpRequest| async move { ok(&req, openapi::document()) }))
                .configure(documents::routes)
                .configure(reads::routes)
                .configure(admin::routes)
                .configure(identities::routes)
                .configure(commands::routes)
                .configure(ui::routes)
                .default_service(web::to(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such route") }))
        })
        .on_connect(move |io, data| counted.accepted(io, data))
        .workers(2)
        .disable_signals()
        .listen(listener)?;
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
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
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

type Params = web::Query<std::collections::BTreeMap<String, String>>;
