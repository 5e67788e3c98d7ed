//! `POST /commands/{aggregate}/{id}`: a command (the NATS body, JSON), sent through the command intake on the
//! bus exactly as a NATS client's would be; the answer is the intake's reply, with the status of its error
//! kind.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::Value;

use super::{State, documents, error};
use crate::bus::{CONTENT_TYPE, Headers, JSON, Message};
use crate::protocol;
use crate::query::read;

/// Registers the route.
pub fn routes(config: &mut web::ServiceConfig) {
    config.route("/commands/{aggregate}/{id}", web::post().to(command));
}

/// The aggregates commands may be sent to.
pub const AGGREGATES: [&str; 6] = ["document", "workflow", "job", "agent", "schedule", "trigger"];

/// How long a command sent over HTTP may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// HTTP headers passed on to the intake as the bus headers of the same name: the intake checks the caller's
/// token, its command's type and tenant as it checks those of a NATS client (`crate::intake::caller`).
const FORWARDED: [&str; 5] = [
    crate::bus::CORRELATION_ID,
    crate::bus::ACTOR,
    crate::bus::TENANT,
    crate::bus::TRACEPARENT,
    crate::bus::AUTHORIZATION,
];

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
    // A browser session's token is in its cookie (checked, with its CSRF token, by the access middleware):
    // the intake gets it as any caller's.
    if !headers.contains_key(crate::bus::AUTHORIZATION)
        && let Some(cookie) = request.cookie(super::identities::SESSION_COOKIE)
    {
        headers.insert(crate::bus::AUTHORIZATION.to_owned(), format!("Bearer {}", cookie.value()));
    }
    let message = Message { subject: protocol::command_subject(&aggregate, id), reply: None, headers, payload: body };
    let reply = match crate::bus::request_command(&*state.bus, message, COMMAND_TIMEOUT).await {
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
        Some("unauthenticated") => StatusCode::UNAUTHORIZED,
        Some("forbidden") => StatusCode::FORBIDDEN,
        Some("erased") => StatusCode::GONE,
        Some(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    let mut response = HttpResponse::build(status).json(reply);
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
