//! The documents' routes of the HTTP API: registration with an upload URL, confirmation, download URLs,
//! deletion, the notification webhook, and (local object store) the pre-signed URLs themselves.
//!
//! - `POST /documents` `{name, content_type, size_bytes, id?}`: registers a document for the `Weft-Tenant`
//!   (`default` without it), owned by `Weft-Actor`; answers 201 `{id, key, outcome, upload: {url, method,
//!   headers, expires_at}}`. Repeating it with the same `id` registers nothing and signs a new URL.
//! - `POST /documents/{id}/upload-url`: `{key, upload}`, a new upload URL (pending upload, or a new version, to
//!   an object of its own) and the object it writes.
//! - `POST /documents/{id}/confirm[?key=K]`: heads the object (a new version's `K`) and records what storage
//!   says.
//! - `GET /documents/{id}/download[?version=N]`: `{download: {url, ...}}` for the content of version `N`, or
//!   the current one.
//! - `DELETE /documents/{id}`: deletes the document, then its object.
//! - `POST /objects/events`: S3 notifications, `Authorization: Bearer <--webhook-secret>`; answers
//!   `{records: [{index, key, outcome | error}]}`, 200 when every record was taken, 422 when one was
//!   refused, 503 when one could not be handled now (retry), 400 for a body that is no notification.
//! - `PUT /objects/{key}`, `GET /objects/{key}` with `?expires&max&sig`: the local store's signed uploads and
//!   downloads; 403 for an expired, tampered or misused URL, 413 past the signed size limit, 412 for an upload
//!   URL used already (or overtaken by another upload: an upload URL writes once), 422 for a deleted document.

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use futures::StreamExt;
use serde_json::json;
use sha2::{Digest, Sha256};
use weft_actors::host::Metadata;
use weft_events::domain::ids::DocumentId;

use super::{State, error};
use crate::objects::documents::{self, Documents, Registration};
use crate::objects::local::{LocalStore, Signed};
use crate::objects::{Error as ObjectError, check_key, notification};

/// The largest registration body, in bytes.
const MAX_REGISTRATION_BYTES: usize = 64 * 1024;

/// What the documents' routes need.
#[derive(Clone)]
pub struct Objects {
    /// The documents.
    pub documents: Documents,
    /// The local store, when it is the backend: its URLs are served here.
    pub local: Option<LocalStore>,
    /// The webhook's secret; no webhook without one.
    pub webhook_secret: Option<Arc<str>>,
}

/// Registers the routes.
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/documents", web::post().to(register))
        .route("/documents/{id}/upload-url", web::post().to(upload_url))
        .route("/documents/{id}/confirm", web::post().to(confirm))
        .route("/documents/{id}/download", web::get().to(download))
        .route("/documents/{id}", web::delete().to(delete))
        .route("/objects/events", web::post().to(webhook))
        .route("/objects/{key:.*}", web::put().to(put_object))
        .route("/objects/{key:.*}", web::get().to(get_object));
}

/// A refused request: its status and the error body.
#[derive(Debug)]
pub(super) struct Refusal {
    pub(super) status: StatusCode,
    pub(super) body: serde_json::Value,
}

impl Refusal {
    pub(super) fn new(status: StatusCode, kind: &str, message: impl Into<String>) -> Self {
        Self { status, body: json!({"error": {"kind": kind, "message": message.into()}}) }
    }

    pub(super) fn respond(self) -> HttpResponse {
        let mut answer = HttpResponse::build(self.status);
        if self.status == StatusCode::REQUEST_TIMEOUT {
            // The rest of a stalled body may never come: the connection is not kept for another request.
            answer.force_close();
        }
        answer.json(self.body)
    }
}

impl From<documents::Error> for Refusal {
    fn from(e: documents::Error) -> Self {
        let status = match e {
            documents::Error::Invalid(_) => StatusCode::BAD_REQUEST,
            documents::Error::NotFound(_) => StatusCode::NOT_FOUND,
            documents::Error::Rejected(_) => StatusCode::UNPROCESSABLE_ENTITY,
            documents::Error::Conflict(_) => StatusCode::CONFLICT,
            documents::Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            documents::Error::Erased(_) => StatusCode::GONE,
        };
        let mut refusal = Self::new(status, e.kind(), e.to_string());
        if let documents::Error::Rejected(rejection) = &e {
            refusal.body["error"]["rejection"] = serde_json::to_value(rejection).unwrap_or_default();
        }
        refusal
    }
}

/// 200 (or `status`) with `value` as JSON, or the refusal.
pub(super) fn respond<T: serde::Serialize>(status: StatusCode, result: Result<T, Refusal>) -> HttpResponse {
    match result {
        Ok(value) => HttpResponse::build(status).insert_header((header::CACHE_CONTROL, "no-store")).json(value),
        Err(refusal) => refusal.respond(),
    }
}

fn objects(state: &State) -> Result<&Objects, Refusal> {
    state
        .objects
        .as_ref()
        .ok_or_else(|| Refusal::new(StatusCode::NOT_FOUND, "not_found", "this node keeps no documents"))
}

fn document_id(id: &str) -> Result<DocumentId, Refusal> {
    id.parse().map_err(|_| Refusal::new(StatusCode::BAD_REQUEST, "invalid", format!("{id:?} is not a document id")))
}

/// The tenant and actor of a request: with authentication, the caller's identity's (`Weft-Tenant` picks one of
/// its tenants); without, what its headers name.
fn metadata(request: &HttpRequest) -> Result<Metadata, Refusal> {
    let named = named(request)?;
    let Some(identity) = super::access::identity(request) else { return Ok(named) };
    // An identity of every tenant naming none leaves the tenant to the document (a new one is the default
    // tenant's): the read model may not know a document registered a moment ago.
    if named.tenant.is_none() && identity.reaches_all() {
        return Ok(of_identity(identity, None));
    }
    let tenant = identity
        .tenant_for(named.tenant.as_deref())
        .ok_or_else(|| Refusal::new(StatusCode::FORBIDDEN, "forbidden", "Weft-Tenant must name one of your tenants"))?;
    Ok(of_identity(identity, Some(tenant)))
}

/// The metadata of `identity`'s commands for `tenant`: it is their actor, and a `user`'s reach only documents
/// it owns.
fn of_identity(identity: crate::auth::Identity, tenant: Option<String>) -> Metadata {
    let owner = identity.owns_only().then(|| identity.subject.clone());
    Metadata { tenant, actor: Some(identity.subject), correlation_id: None, owner }
}

/// Refuses, as if it did not exist, a document the caller's identity may not change (another tenant's, or for
/// a `user` another owner's: its jobs' outputs it may read and download, not change). One the read model does not know yet goes on: the documents' own checks answer.
/// The document's tenant when the read model knows it.
async fn reachable(state: &State, request: &HttpRequest, id: DocumentId) -> Result<Option<String>, Refusal> {
    if super::access::identity(request).is_none() {
        return Ok(None);
    }
    let model = &weft_projections::documents::MODEL;
    let scope = super::access::scope(request);
    match state.reads.show(model, &id.to_string(), None, &crate::query::Scope::ALL).await {
        Ok(item) if !scope.admits(model, &item) => {
            Err(Refusal::new(StatusCode::NOT_FOUND, "not_found", format!("no document {id}")))
        }
        Ok(item) => Ok(item["tenant"].as_str().map(str::to_owned)),
        Err(_) => Ok(None),
    }
}

/// The tenant and actor a request's headers name.
fn named(request: &HttpRequest) -> Result<Metadata, Refusal> {
    let header = |name: &str| -> Result<Option<String>, Refusal> {
        let Some(value) = request.headers().get(name) else { return Ok(None) };
        let value = value
            .to_str()
            .map_err(|_| Refusal::new(StatusCode::BAD_REQUEST, "invalid", format!("header {name} is not text")))?;
        weft_events::envelope::check_label(if name == crate::bus::TENANT { "tenant" } else { "actor" }, value)
            .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, "invalid", format!("header {name}: {e}")))?;
        Ok(Some(value.to_owned()))
    };
    let (tenant, actor) = (header(crate::bus::TENANT)?, header(crate::bus::ACTOR)?);
    Ok(Metadata { tenant, actor, correlation_id: None, owner: None })
}

/// Reads a body up to `limit` bytes: one byte more is refused before the rest is read, and a body whose next
/// bytes do not come within `idle` is refused with 408.
pub(super) async fn read_body(mut payload: web::Payload, limit: usize, idle: Duration) -> Result<web::Bytes, Refusal> {
    let mut body = web::BytesMut::new();
    loop {
        let chunk = match tokio::time::timeout(idle, payload.next()).await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(_) => return Err(stalled(idle)),
        };
        let chunk =
            chunk.map_err(|_| Refusal::new(StatusCode::BAD_REQUEST, "invalid", "the body could not be read"))?;
        if body.len() + chunk.len() > limit {
            let message = format!("the body is over {limit} bytes");
            return Err(Refusal::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

async fn register(state: web::Data<State>, request: HttpRequest, payload: web::Payload) -> HttpResponse {
    let result = async {
        let objects = objects(&state)?;
        let metadata = metadata(&request)?;
        let body = read_body(payload, MAX_REGISTRATION_BYTES, state.limits.body_idle_timeout).await?;
        let registration: Registration = serde_json::from_slice(&body)
            .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, "invalid", format!("the body: {e}")))?;
        Ok(objects.documents.register(registration, metadata).await?)
    };
    respond(StatusCode::CREATED, result.await)
}

async fn upload_url(state: web::Data<State>, request: HttpRequest, id: web::Path<String>) -> HttpResponse {
    let result = async {
        let id = document_id(&id)?;
        reachable(&state, &request, id).await?;
        let (key, upload) = objects(&state)?.documents.upload_url(id).await?;
        Ok(json!({ "key": key, "upload": upload }))
    };
    respond(StatusCode::OK, result.await)
}

/// `?version=N` of a download.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionQuery {
    version: Option<u32>,
}

/// `?key=K` of a confirmation: the object a new version's upload URL wrote.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyQuery {
    key: Option<String>,
}

/// The query of a request as `T`, or a 400 naming what is wrong with it.
fn query<T: serde::de::DeserializeOwned>(request: &HttpRequest) -> Result<T, Refusal> {
    web::Query::<T>::from_query(request.query_string())
        .map(web::Query::into_inner)
        .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, "invalid", format!("the query: {e}")))
}

async fn download(state: web::Data<State>, request: HttpRequest, id: web::Path<String>) -> HttpResponse {
    let result = async { Ok(json!({ "download": signed_download(&state, &request, &id).await? })) };
    respond(StatusCode::OK, result.await)
}

/// The signed download URL of document `id` (`?version=N` of the request, or its current content), if the
/// request's caller may read it.
pub(super) async fn signed_download(
    state: &State,
    request: &HttpRequest,
    id: &str,
) -> Result<crate::objects::Presigned, Refusal> {
    let id = document_id(id)?;
    let VersionQuery { version } = query(request)?;
    // Reading is what the read models let the caller read: for a `user`, its documents and its jobs' outputs.
    if super::access::identity(request).is_some() {
        let scope = super::access::scope(request);
        let model = &weft_projections::documents::MODEL;
        if let Err(failure) = state.reads.show(model, &id.to_string(), None, &scope).await
            && failure.kind == "not_found"
        {
            return Err(Refusal::new(StatusCode::NOT_FOUND, "not_found", format!("no document {id}")));
        }
    }
    Ok(objects(state)?.documents.download_url(id, version).await?)
}

async fn confirm(state: web::Data<State>, request: HttpRequest, id: web::Path<String>) -> HttpResponse {
    let result = async {
        let id = document_id(&id)?;
        let KeyQuery { key } = query(&request)?;
        reachable(&state, &request, id).await?;
        Ok(objects(&state)?.documents.confirm(id, key.as_deref()).await?)
    };
    respond(StatusCode::OK, result.await)
}

async fn delete(state: web::Data<State>, request: HttpRequest, id: web::Path<String>) -> HttpResponse {
    let result = async {
        let id = document_id(&id)?;
        let metadata = match (reachable(&state, &request, id).await?, super::access::identity(&request)) {
            // A command to a known document is for its tenant.
            (Some(tenant), Some(identity)) => of_identity(identity, Some(tenant)),
            _ => metadata(&request)?,
        };
        let who = metadata.actor.clone().unwrap_or_else(|| "a client".into());
        Ok(objects(&state)?.documents.delete(id, &format!("deleted by {who}"), metadata).await?)
    };
    respond(StatusCode::OK, result.await)
}

/// Whether `given` is the secret, compared in time independent of where they differ (and of their lengths:
/// the digests are compared).
fn same_secret(given: &str, secret: &str) -> bool {
    use subtle::ConstantTimeEq;
    let (a, b) = (Sha256::digest(given.as_bytes()), Sha256::digest(secret.as_bytes()));
    a.as_slice().ct_eq(b.as_slice()).into()
}

async fn webhook(state: web::Data<State>, request: HttpRequest, payload: web::Payload) -> HttpResponse {
    let result = async {
        let objects = objects(&state)?;
        let Some(secret) = &objects.webhook_secret else {
            let message = "the webhook is off: start the node with --webhook-secret";
            return Err(Refusal::new(StatusCode::NOT_FOUND, "not_found", message));
        };
        let given = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        if !given.and_then(|v| v.strip_prefix("Bearer ")).is_some_and(|given| same_secret(given.trim(), secret)) {
            let message = "the webhook needs `Authorization: Bearer <secret>`";
            return Err(Refusal::new(StatusCode::UNAUTHORIZED, "unauthorized", message));
        }
        let body = read_body(payload, notification::MAX_BODY_BYTES, state.limits.body_idle_timeout).await?;
        objects
            .documents
            .notified(&body)
            .await
            .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, "invalid", e.to_string()))
    };
    match result.await {
        Ok(reports) => {
            let kinds = reports.iter().filter_map(|r| r.error.as_ref().map(|e| e.kind));
            let status = kinds.fold(StatusCode::OK, |status, kind| match kind {
                "unavailable" | "conflict" => StatusCode::SERVICE_UNAVAILABLE,
                _ if status == StatusCode::OK => StatusCode::UNPROCESSABLE_ENTITY,
                _ => status,
            });
            HttpResponse::build(status).json(json!({ "records": reports }))
        }
        Err(refusal) => refusal.respond(),
    }
}

/// The local store and a checked key, or the answer.
fn local<'a>(state: &'a State, key: &str) -> Result<&'a LocalStore, Refusal> {
    let local = objects(state)?.local.as_ref().ok_or_else(|| {
        Refusal::new(StatusCode::NOT_FOUND, "not_found", "this node's documents are not in a local folder")
    })?;
    check_key(key).map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, "invalid", e.to_string()))?;
    Ok(local)
}

fn denied(e: crate::objects::local::Denied) -> HttpResponse {
    error(StatusCode::FORBIDDEN, "forbidden", e.to_string())
}

async fn put_object(
    state: web::Data<State>,
    request: HttpRequest,
    key: web::Path<String>,
    signed: web::Query<Signed>,
    payload: web::Payload,
) -> HttpResponse {
    let local = match local(&state, &key) {
        Ok(local) => local,
        Err(refusal) => return refusal.respond(),
    };
    let content_type = request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let (limit, expect) = match local.verify("PUT", &key, content_type, &signed) {
        Ok(verified) => verified,
        Err(e) => return denied(e),
    };
    // The URL may have been signed before its document was deleted.
    if let Ok(objects) = objects(&state)
        && let Err(e) = objects.documents.check_upload(&key).await
    {
        return Refusal::from(e).respond();
    }
    let declared = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let Some(length) = declared.filter(|length| *length > limit) {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the upload is {length} bytes, over the {limit} bytes registered"),
        );
    }
    let body = idle_limited(payload, state.limits.body_idle_timeout);
    match local.write(&key, content_type, body, limit, expect).await {
        Ok(info) => HttpResponse::Ok().insert_header((header::ETAG, format!("\"{}\"", info.etag))).finish(),
        // As S3 answers a failed `If-None-Match` or `If-Match`.
        Err(e @ ObjectError::Superseded { .. }) => error(
            StatusCode::PRECONDITION_FAILED,
            "conflict",
            format!("{e}; ask for a new one (POST /documents/{{id}}/upload-url) to upload a new version"),
        ),
        Err(ObjectError::TooLarge { limit }) => error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the upload is over the {limit} bytes registered"),
        ),
        Err(ObjectError::Body { timed_out: true, .. }) => stalled(state.limits.body_idle_timeout).respond(),
        Err(e @ ObjectError::Body { .. }) => error(StatusCode::BAD_REQUEST, "invalid", e.to_string()),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()),
    }
}

/// The refusal of a body that stalled, with its connection closed.
fn stalled(idle: Duration) -> Refusal {
    let message = format!("no bytes of the body came for {} s", idle.as_secs_f64());
    Refusal::new(StatusCode::REQUEST_TIMEOUT, "timeout", message)
}

/// A request body as a stream of chunks that ends in a `TimedOut` error when the next chunk does not come
/// within `idle`.
fn idle_limited(
    payload: web::Payload,
    idle: Duration,
) -> impl futures::Stream<Item = Result<web::Bytes, std::io::Error>> + Unpin {
    Box::pin(futures::stream::unfold(Some(payload), move |payload| async move {
        let mut payload = payload?;
        match tokio::time::timeout(idle, payload.next()).await {
            Ok(Some(chunk)) => Some((chunk.map_err(std::io::Error::other), Some(payload))),
            Ok(None) => None,
            Err(_) => {
                let stalled = std::io::Error::new(std::io::ErrorKind::TimedOut, "the body stalled");
                Some((Err(stalled), None))
            }
        }
    }))
}

/// The content security policy of a download: no script, no plugins, no same origin, nothing loaded.
const DOWNLOAD_POLICY: &str = "sandbox; default-src 'none'";

async fn get_object(state: web::Data<State>, key: web::Path<String>, signed: web::Query<Signed>) -> HttpResponse {
    use crate::objects::ObjectStore;
    let local = match local(&state, &key) {
        Ok(local) => local,
        Err(refusal) => return refusal.respond(),
    };
    if let Err(e) = local.verify("GET", &key, "", &signed) {
        return denied(e);
    }
    let info = match local.head(&key).await {
        Ok(info) => info,
        Err(e @ ObjectError::NotFound { .. }) => return error(StatusCode::NOT_FOUND, "not_found", e.to_string()),
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()),
    };
    match local.get(&key).await {
        // A download is saved, never shown in the API's origin: an object uploaded as HTML or SVG must not run
        // script there. `attachment` makes a browser save it, `nosniff` (on every answer) keeps it from
        // guessing another type, and a sandbox policy disarms it should it be shown anyway.
        Ok(body) => HttpResponse::Ok()
            .content_type(info.content_type.unwrap_or_else(|| "application/octet-stream".into()))
            .insert_header((header::ETAG, format!("\"{}\"", info.etag)))
            .insert_header((header::CONTENT_DISPOSITION, "attachment"))
            .insert_header((header::CONTENT_SECURITY_POLICY, DOWNLOAD_POLICY))
            .body(actix_web::body::SizedStream::new(info.size_bytes, body)),
        Err(e @ ObjectError::NotFound { .. }) => error(StatusCode::NOT_FOUND, "not_found", e.to_string()),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()),
    }
}
