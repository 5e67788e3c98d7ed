//! The query API over HTTP (`actix-web`): status reads from the read models.
//!
//! Routes (all answers JSON; errors are `{"error": {"kind", "message"}}` with the matching status):
//!
//! - `GET /healthz`: the process is up.
//! - `GET /readyz`: each projection's position; 200 once they run.
//! - `GET /documents/{id}`: a document's row and lineage (`parents`, `derivatives`).
//! - `GET /jobs/{id}`: a job's status and progress, and its steps.
//!
//! Read-your-writes: a command's reply carries `last_position`; a read with `?after=<position>` waits (up to
//! 5 s) until the read model has applied that position, and answers 504 if it has not by then.
//!
//! Each request opens its own read-only SQLite connection on the blocking pool (WAL: readers never wait for
//! the projections).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{App, HttpResponse, HttpServer, web};
use rusqlite::{OpenFlags, OptionalExtension};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::watch;
use weft_events::domain::ids::Uuid;

/// How long a read with `?after=` waits for the read model.
pub const MAX_WAIT: Duration = Duration::from_secs(5);

/// What the handlers share.
#[derive(Clone)]
struct State {
    read_models: PathBuf,
    /// Each projection's name and applied position.
    positions: Vec<(&'static str, watch::Receiver<u64>)>,
}

/// The running HTTP server.
pub struct QueryApi {
    handle: actix_web::dev::ServerHandle,
    addr: SocketAddr,
}

impl QueryApi {
    /// Binds `addr` (port 0: a free one) and serves the read models in `read_models`. Must be called on an
    /// actix system.
    pub fn start(
        addr: SocketAddr,
        read_models: PathBuf,
        positions: Vec<(&'static str, watch::Receiver<u64>)>,
    ) -> anyhow::Result<Self> {
        let state = State { read_models, positions };
        let server = HttpServer::new(move || {
            App::new()
                .app_data(web::Data::new(state.clone()))
                .app_data(web::PathConfig::default().error_handler(|e, _| bad_request(e.to_string())))
                .app_data(web::QueryConfig::default().error_handler(|e, _| bad_request(e.to_string())))
                .route("/healthz", web::get().to(|| async { HttpResponse::Ok().json(json!({"status": "ok"})) }))
                .route("/readyz", web::get().to(readyz))
                .route("/documents/{id}", web::get().to(document))
                .route("/jobs/{id}", web::get().to(job))
                .default_service(web::to(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such route") }))
        })
        .workers(2)
        .disable_signals()
        .bind(addr)
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        let addr = server.addrs().first().copied().unwrap_or(addr);
        let server = server.run();
        let handle = server.handle();
        actix_rt::spawn(server);
        Ok(Self { handle, addr })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops taking connections and finishes the requests in flight.
    pub async fn stop(self) {
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

/// `?after=<position>`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Read {
    after: Option<u64>,
}

async fn readyz(state: web::Data<State>) -> HttpResponse {
    let positions: serde_json::Map<String, Value> =
        state.positions.iter().map(|(name, p)| ((*name).to_owned(), json!(*p.borrow()))).collect();
    HttpResponse::Ok().json(json!({"status": "ready", "positions": positions}))
}

/// Waits until the projection `name` has applied `after`; false when the wait ran out.
async fn caught_up(state: &State, name: &str, after: Option<u64>) -> bool {
    let Some(after) = after else { return true };
    let Some((_, position)) = state.positions.iter().find(|(n, _)| *n == name) else { return true };
    let mut position = position.clone();
    matches!(tokio::time::timeout(MAX_WAIT, position.wait_for(|p| *p >= after)).await, Ok(Ok(_)))
}

/// A failed read, answered as a JSON error.
struct Failure {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl Failure {
    fn respond(self) -> HttpResponse {
        error(self.status, self.kind, self.message)
    }
}

fn parse_id(id: &str) -> Result<Uuid, Failure> {
    Uuid::parse_str(id).map_err(|_| Failure {
        status: StatusCode::BAD_REQUEST,
        kind: "invalid",
        message: format!("{id:?} is not a UUID"),
    })
}

/// Runs `read` on a read-only connection to the read models, on the blocking pool.
async fn query<T: Send + 'static>(
    state: &State,
    read: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
) -> Result<T, Failure> {
    let path = state.read_models.clone();
    let result = web::block(move || {
        let db = rusqlite::Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        db.busy_timeout(Duration::from_secs(5))?;
        read(&db)
    })
    .await;
    let unavailable =
        |message: String| Failure { status: StatusCode::SERVICE_UNAVAILABLE, kind: "unavailable", message };
    match result {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(unavailable(format!("read models: {e}"))),
        Err(e) => Err(unavailable(e.to_string())),
    }
}

fn row_to_json(row: &rusqlite::Row<'_>, columns: &[&str]) -> rusqlite::Result<Value> {
    let mut object = serde_json::Map::new();
    for (i, column) in columns.iter().enumerate() {
        let value = match row.get_ref(i)? {
            rusqlite::types::ValueRef::Null => Value::Null,
            rusqlite::types::ValueRef::Integer(n) => json!(n),
            rusqlite::types::ValueRef::Real(x) => json!(x),
            rusqlite::types::ValueRef::Text(t) => json!(String::from_utf8_lossy(t)),
            rusqlite::types::ValueRef::Blob(_) => Value::Null,
        };
        object.insert((*column).to_owned(), value);
    }
    Ok(Value::Object(object))
}

const DOCUMENT_COLUMNS: &[&str] = &[
    "id",
    "tenant",
    "owner",
    "name",
    "content_type",
    "declared_size_bytes",
    "status",
    "size_bytes",
    "etag",
    "versions",
    "deleted_reason",
    "created_at",
    "updated_at",
    "version",
];

async fn document(state: web::Data<State>, id: web::Path<String>, read: web::Query<Read>) -> HttpResponse {
    let id = match parse_id(&id) {
        Ok(id) => id.to_string(),
        Err(failure) => return failure.respond(),
    };
    if !caught_up(&state, "documents", read.after).await {
        return error(StatusCode::GATEWAY_TIMEOUT, "not_yet", "the read model has not reached that position yet");
    }
    let found = query(&state, move |db| {
        let sql = format!("SELECT {} FROM documents WHERE id = ?1", DOCUMENT_COLUMNS.join(", "));
        let Some(mut document) = db.query_row(&sql, [&id], |row| row_to_json(row, DOCUMENT_COLUMNS)).optional()? else {
            return Ok(None);
        };
        let list = |sql: &str| -> rusqlite::Result<Vec<Value>> {
            let mut statement = db.prepare(sql)?;
            let rows = statement.query_map([&id], |row| row_to_json(row, &["id", "job", "step"]))?;
            rows.collect()
        };
        document["parents"] = json!(list("SELECT parent, job, step FROM document_lineage WHERE child = ?1")?);
        document["derivatives"] = json!(list("SELECT child, job, step FROM document_lineage WHERE parent = ?1")?);
        Ok(Some(document))
    })
    .await;
    match found {
        Ok(Some(document)) => HttpResponse::Ok().json(document),
        Ok(None) => error(StatusCode::NOT_FOUND, "not_found", "no such document"),
        Err(failure) => failure.respond(),
    }
}

const JOB_COLUMNS: &[&str] = &[
    "id",
    "workflow",
    "workflow_version",
    "priority",
    "status",
    "steps_total",
    "steps_done",
    "error",
    "submitted_at",
    "finished_at",
    "updated_at",
    "version",
];

const STEP_COLUMNS: &[&str] = &["step", "status", "attempts", "output", "error", "retry_at", "updated_at"];

async fn job(state: web::Data<State>, id: web::Path<String>, read: web::Query<Read>) -> HttpResponse {
    let id = match parse_id(&id) {
        Ok(id) => id.to_string(),
        Err(failure) => return failure.respond(),
    };
    if !caught_up(&state, "jobs", read.after).await {
        return error(StatusCode::GATEWAY_TIMEOUT, "not_yet", "the read model has not reached that position yet");
    }
    let found = query(&state, move |db| {
        let sql = format!("SELECT {} FROM jobs WHERE id = ?1", JOB_COLUMNS.join(", "));
        let Some(mut job) = db.query_row(&sql, [&id], |row| row_to_json(row, JOB_COLUMNS)).optional()? else {
            return Ok(None);
        };
        let sql = format!("SELECT {} FROM job_steps WHERE job = ?1 ORDER BY ordinal", STEP_COLUMNS.join(", "));
        let mut statement = db.prepare(&sql)?;
        let steps = statement.query_map([&id], |row| row_to_json(row, STEP_COLUMNS))?.collect::<Result<Vec<_>, _>>()?;
        let total = job["steps_total"].as_f64().unwrap_or(0.0);
        let done = job["steps_done"].as_f64().unwrap_or(0.0);
        job["progress"] = json!(if total > 0.0 { done / total } else { 0.0 });
        job["steps"] = json!(steps);
        Ok(Some(job))
    })
    .await;
    match found {
        Ok(Some(job)) => HttpResponse::Ok().json(job),
        Ok(None) => error(StatusCode::NOT_FOUND, "not_found", "no such job"),
        Err(failure) => failure.respond(),
    }
}
