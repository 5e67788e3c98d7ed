//! What protects the node from pages in a browser (`docs/security.md`):
//!
//! - A request that changes state (any method but `GET`, `HEAD`, `OPTIONS`) with a body must send it as JSON
//!   (`Content-Type: application/json`): 415 `unsupported_media_type` otherwise, so that a plain HTML form on
//!   another site cannot post to the node. An `Origin` it carries must be the node's own (the request's
//!   `Host`) or one of `--cors-origin`: 403 `forbidden` otherwise.
//! - The routes that carry their own proof (the local store's signed URLs, which take raw bytes, and the S3
//!   notification webhook) are exempt: their clients are object stores and upload tools, not pages.
//! - CORS is off unless origins are configured: a page of another origin gets no `Access-Control-Allow-*`
//!   headers, so its browser keeps the answers from it. With `--cors-origin`, those origins may call the API
//!   with a bearer token; never with the session cookie (credentials are not allowed), whose requests that
//!   change state carry a CSRF token besides (see [`super::access`]).

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{Method, StatusCode, header};
use actix_web::middleware::Next;
use actix_web::web;

/// Checks origins and bodies, as the module doc says.
pub async fn guard(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let changes_state = !matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let method = request.method().as_str().to_ascii_lowercase();
    let signed = request
        .match_pattern()
        .and_then(|pattern| super::access::rule(&method, &pattern))
        .is_some_and(|rule| rule == super::access::Rule::Signed);
    if changes_state && !signed {
        let origins = request.app_data::<web::Data<super::State>>().map(|s| s.origins.clone()).unwrap_or_default();
        if let Some(origin) = request.headers().get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or_default();
            let host = request.connection_info().host().to_owned();
            let own = [format!("http://{host}"), format!("https://{host}")];
            if !own.iter().any(|o| o == origin) && !origins.iter().any(|o| o == origin) {
                let message = format!("requests from origin {origin:?} may not change anything here");
                return Ok(request.into_response(super::error(StatusCode::FORBIDDEN, "forbidden", message)));
            }
        }
        let has_body = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|n| n.trim() != "0")
            || request.headers().contains_key(header::TRANSFER_ENCODING);
        let json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if has_body && !json {
            let message = "a request that changes state sends its body as JSON (Content-Type: application/json)";
            return Ok(request.into_response(super::error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                message,
            )));
        }
    }
    next.call(request).await.map(ServiceResponse::map_into_boxed_body)
}

/// The CORS middleware for `origins`: off (`None`) when there are none.
pub fn cors(origins: &[String]) -> actix_web::middleware::Condition<actix_cors::Cors> {
    let mut cors = actix_cors::Cors::default()
        .allowed_methods(["GET", "POST", "PUT", "DELETE"])
        .allowed_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::HeaderName::from_static("weft-tenant"),
            header::HeaderName::from_static("weft-correlation-id"),
            header::HeaderName::from_static("traceparent"),
            header::HeaderName::from_static("last-event-id"),
        ])
        .expose_headers([header::RETRY_AFTER, header::WWW_AUTHENTICATE])
        .max_age(600);
    for origin in origins {
        cors = cors.allowed_origin(origin);
    }
    actix_web::middleware::Condition::new(!origins.is_empty(), cors)
}

/// Checks a `--cors-origin` value: `scheme://host[:port]`, nothing after.
pub fn parse_origin(text: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(text).map_err(|e| format!("{text:?} is not an origin: {e}"))?;
    let origin = url.origin().ascii_serialization();
    if !matches!(url.scheme(), "http" | "https") || origin != text.trim_end_matches('/') {
        return Err(format!("{text:?} is not an origin (scheme://host[:port])"));
    }
    Ok(origin)
}
