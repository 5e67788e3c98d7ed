//! Who may use which route: every route of [`super::openapi::ROUTES`] has one rule here ([`rule`]; a test checks
//! that none is missing), and the middleware [`authenticate`] applies it before the route runs.
//!
//! - `Open`: anyone (health, readiness, this API's description).
//! - `Signed`: the request carries its own proof, checked by its handler: the local store's signed URLs, the S3
//!   notification webhook's secret.
//! - `Needs(permission)`: a verified bearer token whose role has the permission ([`crate::auth::PERMISSIONS`]).
//! - `Commands`: a token whose role may send some command; the route passes the token on to the command
//!   intake, which checks the command's type, tenant and instance as it does a NATS client's
//!   ([`crate::intake::caller`]).
//! - `Page(permission)`: a page of the dashboard ([`super::ui::PAGES`]), as `Needs`, except that a browser
//!   without a (valid) session is sent to the login page (303) and a role without the permission gets an HTML
//!   403, not JSON.
//!
//! Without a token (or with a bad one) the answer is 401 `unauthenticated` with `WWW-Authenticate: Bearer`;
//! with a token whose role lacks the permission, 403 `forbidden`. A node started with `--insecure-no-auth`
//! has no verifier: every route is open and no identity is attached, as before authentication existed.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::{HttpMessage as _, HttpRequest, HttpResponse, web};

use crate::auth::{Identity, Permission, Role};
use crate::query::Scope;

/// What a route asks of its caller: see the module doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Anyone.
    Open,
    /// Its own proof (a signed URL, the webhook secret).
    Signed,
    /// A token whose role has this permission.
    Needs(Permission),
    /// A token whose role may send some command.
    Commands,
    /// A dashboard page whose viewer's role has this permission.
    Page(Permission),
}

/// The rule of the route `method pattern` (as [`super::openapi::ROUTES`] names them); `None` for no route.
pub fn rule(method: &str, pattern: &str) -> Option<Rule> {
    use Permission::*;
    use Rule::*;
    let models = ["documents", "jobs", "agents", "workflows", "schedules", "triggers"];
    let read = |p: &str| {
        let mut parts = p.trim_start_matches('/').splitn(2, '/');
        let (model, rest) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        models.contains(&model) && matches!(rest, "" | "live" | "{id}" | "{id}/live" | "{id}/logs" | "{id}/lineage")
    };
    Some(match (method, pattern) {
        ("get", "/healthz" | "/readyz" | "/openapi.json") => Open,
        // The router's pattern for a key with slashes is `{key:.*}`; the API description names it `{key}`.
        ("put" | "get", "/objects/{key}" | "/objects/{key:.*}") | ("post", "/objects/events") => Signed,
        ("get", "/streams/{stream}/events" | "/costs") => Needs(Read),
        ("get", "/documents/{id}/download") => Needs(Read),
        ("post", "/documents" | "/documents/{id}/upload-url" | "/documents/{id}/confirm")
        | ("delete", "/documents/{id}") => Needs(WriteDocuments),
        ("post", "/commands/{aggregate}/{id}") => Commands,
        ("get", "/projections/{name}" | "/providers" | "/metrics" | "/cluster") => Needs(Inspect),
        ("post", "/projections/{name}/rebuild" | "/projections/{name}/reset") => Needs(Maintain),
        ("post", "/tenants/{tenant}/erase") => Needs(Erase),
        // A password is its own proof; ten attempts a minute per user name.
        ("post", "/auth/token" | "/auth/session") | ("delete", "/auth/session") => Open,
        // Every role changes its own password; the route lets only an admin change another's.
        ("post", "/auth/users/{name}/password") => Needs(Read),
        ("get" | "post", "/auth/users" | "/auth/keys")
        | ("post", "/auth/users/{name}/disable" | "/auth/keys/{id}/revoke") => Needs(Identities),
        ("get", p) if read(p) => Needs(Read),
        ("get", "/" | super::ui::LOGIN) => Open,
        ("get", p) => match super::ui::PAGES.iter().find(|(page, _)| *page == p) {
            Some((_, permission)) => Page(*permission),
            None => return None,
        },
        _ => return None,
    })
}

/// Whether `role` may send at least one command.
fn may_command(role: Role) -> bool {
    [Permission::WriteDocuments, Permission::RunJobs, Permission::Command].into_iter().any(|p| role.may(p))
}

/// The answer to a request refused for `status`.
pub fn refused(status: StatusCode, kind: &str, message: &str) -> HttpResponse {
    let mut answer = super::error(status, kind, message);
    if status == StatusCode::UNAUTHORIZED {
        let challenge = actix_web::http::header::HeaderValue::from_static("Bearer realm=\"weft\"");
        answer.headers_mut().insert(actix_web::http::header::WWW_AUTHENTICATE, challenge);
    }
    answer
}

/// The middleware: applies the route's rule, and attaches the caller's [`Identity`] to the request.
pub async fn authenticate(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let verifier = request.app_data::<web::Data<super::State>>().and_then(|s| s.auth.clone());
    let method = request.method().as_str().to_ascii_lowercase();
    let rule = request.match_pattern().and_then(|pattern| rule(&method, &pattern));
    let (Some(verifier), Some(rule)) = (verifier, rule) else {
        // No authentication on this node, or no such route (answered 404 by the router).
        return next.call(request).await.map(ServiceResponse::map_into_boxed_body);
    };
    if matches!(rule, Rule::Open | Rule::Signed) {
        return next.call(request).await.map(ServiceResponse::map_into_boxed_body);
    }
    let header = request.headers().get(actix_web::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    // A browser session: the token from its cookie, and for a request that changes state, the session's CSRF
    // token in its header (a page of another site makes the browser send the cookie, not the header).
    let session = match header {
        Some(_) => None,
        None => request.cookie(super::identities::SESSION_COOKIE).map(|c| c.value().to_owned()),
    };
    let from_cookie = session.as_ref().map(|token| format!("Bearer {token}"));
    if let Some(token) = &session
        && !matches!(request.method().as_str(), "GET" | "HEAD" | "OPTIONS")
    {
        let given = request.headers().get(super::identities::CSRF_HEADER).and_then(|v| v.to_str().ok());
        let valid = verifier.identities().zip(given).is_some_and(|(ids, given)| ids.csrf_matches(token, given));
        if !valid {
            let message = "a session's request that changes state carries its CSRF token in X-CSRF-Token";
            crate::telemetry::metrics::denied("http", "csrf");
            return Ok(request.into_response(refused(StatusCode::FORBIDDEN, "forbidden", message)));
        }
    }
    let identity = match verifier.authorization(header.or(from_cookie.as_deref())).await {
        Ok(identity) => identity,
        Err(why) => {
            crate::telemetry::metrics::denied("http", "unauthenticated");
            if matches!(rule, Rule::Page(_)) {
                let answer = super::ui::to_login(request.uri());
                return Ok(request.into_response(answer));
            }
            let answer = refused(StatusCode::UNAUTHORIZED, "unauthenticated", &why.to_string());
            return Ok(request.into_response(answer));
        }
    };
    let allowed = match rule {
        Rule::Needs(permission) | Rule::Page(permission) => identity.role.may(permission),
        Rule::Commands => may_command(identity.role),
        Rule::Open | Rule::Signed => true,
    };
    if !allowed {
        crate::telemetry::metrics::denied("http", "forbidden");
        if matches!(rule, Rule::Page(_)) {
            return Ok(request.into_response(super::ui::forbidden(identity.role.as_str())));
        }
        let message = format!("a {} may not use this route", identity.role.as_str());
        return Ok(request.into_response(refused(StatusCode::FORBIDDEN, "forbidden", &message)));
    }
    let tenant = request.headers().get(crate::bus::TENANT).and_then(|v| v.to_str().ok());
    if let Err(wait) = verifier.spend(&identity, tenant) {
        let seconds = crate::auth::limits::retry_after_secs(wait);
        crate::telemetry::metrics::denied("http", "rate_limited");
        let message = format!("over the request rate allowed; retry in {seconds} s");
        let mut answer = super::error(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message);
        answer.headers_mut().insert(actix_web::http::header::RETRY_AFTER, seconds.into());
        return Ok(request.into_response(answer));
    }
    request.extensions_mut().insert(identity);
    next.call(request).await.map(ServiceResponse::map_into_boxed_body)
}

/// The verified identity of the request; `None` on a node without authentication.
pub fn identity(request: &HttpRequest) -> Option<Identity> {
    request.extensions().get::<Identity>().cloned()
}

/// What the request's caller may read: everything without authentication or for an identity of every
/// tenant; else its tenants, and a `user` only its own documents and its jobs' outputs.
pub fn scope(request: &HttpRequest) -> Scope {
    Scope::of(identity(request).as_ref())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_route_has_a_rule() {
        for (method, path, _) in super::super::openapi::ROUTES {
            assert!(super::rule(method, path).is_some(), "{method} {path} has no rule");
        }
    }
}
