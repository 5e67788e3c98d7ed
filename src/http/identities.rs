//! Users and API keys over HTTP ([`crate::auth::identities`]):
//!
//! - `POST /auth/token` (`{"user", "password", "ttl_secs"?}`): a user's password for a token of the node's
//!   own, valid `ttl_secs` (an hour by default, a day at most). Open: the password is its proof. Ten attempts
//!   a minute per user name; past that 429 with `Retry-After`.
//! - `POST /auth/users` (`{"name", "role", "tenants", "password" | "password_hash"}`), `GET /auth/users`,
//!   `POST /auth/users/{name}/disable` (`{"reason"}`): admins.
//! - `POST /auth/users/{name}/password` (`{"password" | "password_hash"}`): the user itself, or an admin.
//! - `POST /auth/keys` (`{"name", "role", "tenants", "ttl_secs"?}`): a new key, shown once in the answer;
//!   `GET /auth/keys`; `POST /auth/keys/{id}/revoke` (`{"reason"}`): admins.
//!
//! - `POST /auth/session` (as `/auth/token`): the token in an `HttpOnly`, `SameSite=Strict` cookie
//!   (`weft_session`; `Secure` over TLS) for a browser page, and a CSRF token in the answer that each request
//!   of the session that changes state must carry in `X-CSRF-Token`; `DELETE /auth/session` drops the cookie.
//!
//! A node without authentication (`--insecure-no-auth`) has no users or keys: these routes answer 404.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

use super::documents::{self, Refusal};
use super::{State, access};
use crate::auth::identities::{Identities, IdentityError, LoginError, Password};
use crate::auth::{Identity, Permission};
use crate::query::Failure;
use crate::query::read::{check_keys, number};

/// Largest body of these routes, in bytes.
const MAX_BODY_BYTES: usize = 16 * 1024;

/// How long a login token lives unless asked otherwise.
pub const LOGIN_TTL: Duration = Duration::from_secs(3600);

/// The longest a login token may be asked to live.
pub const MAX_LOGIN_TTL: Duration = Duration::from_secs(24 * 3600);

/// Registers the routes.
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/auth/token", web::post().to(login))
        .route("/auth/session", web::post().to(start_session))
        .route("/auth/session", web::delete().to(end_session))
        .route("/auth/users", web::get().to(list_users))
        .route("/auth/users", web::post().to(add_user))
        .route("/auth/users/{name}/password", web::post().to(set_password))
        .route("/auth/users/{name}/disable", web::post().to(disable_user))
        .route("/auth/keys", web::get().to(list_keys))
        .route("/auth/keys", web::post().to(create_key))
        .route("/auth/keys/{id}/revoke", web::post().to(revoke_key));
}

/// The node's users and keys, or the refusal of a node that has none.
fn identities(state: &State) -> Result<Arc<Identities>, Refusal> {
    state.auth.as_ref().and_then(|verifier| verifier.identities().cloned()).ok_or_else(|| {
        Refusal::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "this node runs without authentication (--insecure-no-auth): it has no users or API keys",
        )
    })
}

/// The body, read and parsed as `T`.
async fn body<T: serde::de::DeserializeOwned>(state: &State, payload: web::Payload, shape: &str) -> Result<T, Refusal> {
    let bytes = documents::read_body(payload, MAX_BODY_BYTES, state.limits.body_idle_timeout).await?;
    // serde's message names the field, never its value.
    serde_json::from_slice(&bytes)
        .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, "invalid", format!("the body is not {shape}: {e}")))
}

impl From<IdentityError> for Refusal {
    fn from(e: IdentityError) -> Self {
        match e {
            IdentityError::Invalid(m) => Refusal::new(StatusCode::BAD_REQUEST, "invalid", m),
            IdentityError::Exists(m) => Refusal::new(StatusCode::CONFLICT, "conflict", m),
            IdentityError::NotFound(m) => Refusal::new(StatusCode::NOT_FOUND, "not_found", m),
            IdentityError::Store(e) => Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()),
        }
    }
}

fn invalid(message: impl Into<String>) -> Refusal {
    Refusal::new(StatusCode::BAD_REQUEST, "invalid", message)
}

/// Who is asking: the actor the change records.
fn actor(request: &HttpRequest) -> String {
    access::identity(request).map_or_else(|| "operator".to_owned(), |identity| identity.subject)
}

/// A password as a body gives it: in the clear or as an imported hash, not both.
fn password(clear: Option<String>, hash: Option<String>) -> Result<Password, Refusal> {
    match (clear, hash) {
        (Some(clear), None) => Ok(Password::Clear(clear)),
        (None, Some(hash)) => Ok(Password::Hash(hash)),
        _ => Err(invalid("give `password` or `password_hash`, one of them")),
    }
}

/// `ttl_secs` of a body, at most `max`.
fn ttl(secs: Option<u64>, max: Duration) -> Result<Option<Duration>, Refusal> {
    match secs.map(Duration::from_secs) {
        Some(ttl) if ttl.is_zero() || ttl > max => Err(invalid(format!("ttl_secs must be 1 to {}", max.as_secs()))),
        ttl => Ok(ttl),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginRequest {
    user: String,
    password: String,
    #[serde(default)]
    ttl_secs: Option<u64>,
}

/// A login's identities and request, and the life of its token.
async fn login_request(
    state: &State,
    payload: web::Payload,
) -> Result<(Arc<Identities>, LoginRequest, Duration), Refusal> {
    let identities = identities(state)?;
    let body: LoginRequest = body(state, payload, "{\"user\": ..., \"password\": ...}").await?;
    let ttl = ttl(body.ttl_secs, MAX_LOGIN_TTL)?.unwrap_or(LOGIN_TTL);
    Ok((identities, body, ttl))
}

async fn login(state: web::Data<State>, payload: web::Payload) -> HttpResponse {
    logged_in(state, payload, |answer, _, _| documents::respond(StatusCode::OK, Ok::<_, Refusal>(answer))).await
}

/// The cookie of a browser session.
pub const SESSION_COOKIE: &str = "weft_session";

/// The header a browser session's requests that change state carry their CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// `POST /auth/session`: a login whose token goes into an `HttpOnly`, `SameSite=Strict` cookie (`Secure` when
/// the request came over TLS) rather than the answer; the answer holds the CSRF token the page sends in
/// `X-CSRF-Token` with every request that changes state.
async fn start_session(state: web::Data<State>, request: HttpRequest, payload: web::Payload) -> HttpResponse {
    let secure = request.connection_info().scheme() == "https";
    logged_in(state, payload, move |mut answer, token, identities| {
        let cookie = actix_web::cookie::Cookie::build(SESSION_COOKIE, token.clone())
            .http_only(true)
            .secure(secure)
            .same_site(actix_web::cookie::SameSite::Strict)
            .path("/")
            .max_age(actix_web::cookie::time::Duration::seconds(answer["expires_in"].as_i64().unwrap_or(0)))
            .finish();
        if let Some(fields) = answer.as_object_mut() {
            fields.remove("token");
            fields.insert("csrf_token".into(), json!(identities.csrf(&token)));
        }
        HttpResponse::Ok().insert_header((header::CACHE_CONTROL, "no-store")).cookie(cookie).json(answer)
    })
    .await
}

/// `DELETE /auth/session`: the browser forgets its session cookie. (The token in it lapses at its expiry; to
/// refuse it before, change the password or disable the user.)
async fn end_session() -> HttpResponse {
    let mut cookie = actix_web::cookie::Cookie::build(SESSION_COOKIE, "").path("/").http_only(true).finish();
    cookie.make_removal();
    HttpResponse::NoContent().cookie(cookie).finish()
}

/// A login, answered by `answer` with the token's JSON answer, the token, and the node's identities.
async fn logged_in(
    state: web::Data<State>,
    payload: web::Payload,
    answer: impl FnOnce(Value, String, &Identities) -> HttpResponse,
) -> HttpResponse {
    let (identities, body, ttl) = match login_request(&state, payload).await {
        Ok(request) => request,
        Err(refusal) => return refusal.respond(),
    };
    match identities.login(&body.user, &body.password).await {
        Ok(login) => {
            let token = identities.issue_login(&login, ttl);
            let identity = login.identity;
            tracing::info!(user = %identity.subject, "a user logged in");
            let json = json!({
                "token": token,
                "token_type": "Bearer",
                "expires_in": ttl.as_secs(),
                "subject": identity.subject,
                "role": identity.role,
                "tenants": identity.tenants,
            });
            answer(json, token, &identities)
        }
        Err(LoginError::Refused(why)) => access::refused(StatusCode::UNAUTHORIZED, "unauthenticated", &why.to_string()),
        Err(LoginError::TooMany(wait)) => {
            let seconds = crate::auth::limits::retry_after_secs(wait);
            let message = format!("too many login attempts for this user; retry in {seconds} s");
            let mut answer = super::error(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message);
            answer.headers_mut().insert(actix_web::http::header::RETRY_AFTER, seconds.into());
            answer
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    name: String,
    role: String,
    tenants: Vec<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    password_hash: Option<String>,
}

async fn add_user(state: web::Data<State>, request: HttpRequest, payload: web::Payload) -> HttpResponse {
    let added = async {
        let identities = identities(&state)?;
        let shape = "{\"name\", \"role\", \"tenants\", \"password\" or \"password_hash\"}";
        let body: NewUser = body(&state, payload, shape).await?;
        let password = password(body.password, body.password_hash)?;
        let position = identities.add_user(&body.name, &body.role, &body.tenants, password, &actor(&request)).await?;
        Ok::<_, Refusal>(json!({
            "name": body.name, "role": body.role, "tenants": body.tenants, "status": "active", "position": position,
        }))
    };
    documents::respond(StatusCode::CREATED, added.await)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewPassword {
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    password_hash: Option<String>,
}

async fn set_password(
    state: web::Data<State>,
    request: HttpRequest,
    name: web::Path<String>,
    payload: web::Payload,
) -> HttpResponse {
    let changed = async {
        let identities = identities(&state)?;
        // A user changes its own password; only an admin another's. To anyone else another user is as
        // missing as one that does not exist.
        let caller = access::identity(&request);
        if caller.as_ref().is_some_and(|c: &Identity| c.subject != *name && !c.role.may(Permission::Identities)) {
            return Err(Refusal::new(StatusCode::NOT_FOUND, "not_found", format!("no user named {:?}", *name)));
        }
        let body: NewPassword = body(&state, payload, "{\"password\"} or {\"password_hash\"}").await?;
        let password = password(body.password, body.password_hash)?;
        let position = identities.set_password(&name, password, &actor(&request)).await?;
        Ok(json!({"name": *name, "position": position}))
    };
    documents::respond(StatusCode::OK, changed.await)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Reason {
    reason: String,
}

async fn disable_user(
    state: web::Data<State>,
    request: HttpRequest,
    name: web::Path<String>,
    payload: web::Payload,
) -> HttpResponse {
    let disabled = async {
        let identities = identities(&state)?;
        let body: Reason = body(&state, payload, "{\"reason\": ...}").await?;
        let position = identities.disable_user(&name, &body.reason, &actor(&request)).await?;
        tracing::warn!(user = %*name, "user disabled");
        Ok::<_, Refusal>(json!({"name": *name, "status": "disabled", "position": position}))
    };
    documents::respond(StatusCode::OK, disabled.await)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKeyRequest {
    name: String,
    role: String,
    tenants: Vec<String>,
    #[serde(default)]
    ttl_secs: Option<u64>,
}

/// The longest an API key may be made to live: ten years (or for ever, without `ttl_secs`).
const MAX_KEY_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

async fn create_key(state: web::Data<State>, request: HttpRequest, payload: web::Payload) -> HttpResponse {
    let made = async {
        let identities = identities(&state)?;
        let body: NewKeyRequest = body(&state, payload, "{\"name\", \"role\", \"tenants\", \"ttl_secs\"?}").await?;
        let ttl = ttl(body.ttl_secs, MAX_KEY_TTL)?;
        let key = identities.create_key(&body.name, &body.role, &body.tenants, ttl, &actor(&request)).await?;
        tracing::info!(key = %key.id, name = %key.name, "API key made");
        Ok::<_, Refusal>(key)
    };
    documents::respond(StatusCode::CREATED, made.await)
}

async fn revoke_key(
    state: web::Data<State>,
    request: HttpRequest,
    id: web::Path<String>,
    payload: web::Payload,
) -> HttpResponse {
    let revoked = async {
        let identities = identities(&state)?;
        let body: Reason = body(&state, payload, "{\"reason\": ...}").await?;
        let position = identities.revoke_key(&id, &body.reason, &actor(&request)).await?;
        tracing::warn!(key = %*id, "API key revoked");
        Ok::<_, Refusal>(json!({"id": *id, "status": "revoked", "position": position}))
    };
    documents::respond(StatusCode::OK, revoked.await)
}

/// A page of the `identities` read model's `table`, ordered by `key`.
async fn page(
    state: &State,
    params: &BTreeMap<String, String>,
    table: &'static str,
    key: &'static str,
    columns: &'static [&'static str],
) -> Result<Value, Failure> {
    check_keys(params, &["after", "cursor", "limit", "status"])?;
    let after = number(params, "after")?;
    let limit = number::<usize>(params, "limit")?.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(Failure::invalid("limit must be 1 to 1000"));
    }
    let cursor = params.get("cursor").cloned().unwrap_or_default();
    let status = params.get("status").cloned();
    state.reads.caught_up(weft_projections::identities::NAME, after).await?;
    state
        .reads
        .query(move |db| {
            let sql = format!(
                "SELECT {} FROM {table} WHERE {key} > ?1 AND (?2 IS NULL OR status = ?2) ORDER BY {key} LIMIT ?3",
                columns.join(", ")
            );
            let mut items = weft_projections::model::rows(
                db,
                &sql,
                rusqlite::params![cursor, status, (limit + 1) as i64],
                columns,
            )?;
            let more = items.len() > limit;
            items.truncate(limit);
            for item in &mut items {
                weft_projections::model::parse_json_field(item, "tenants");
            }
            let next = if more { items.last().map(|item| item[key].clone()) } else { None };
            Ok(json!({"items": items, "next_cursor": next}))
        })
        .await
}

async fn list_users(state: web::Data<State>, request: HttpRequest, params: super::Params) -> HttpResponse {
    if let Err(refusal) = identities(&state) {
        return refusal.respond();
    }
    const COLUMNS: &[&str] = &["name", "role", "tenants", "status", "created_at", "updated_at", "created_by"];
    super::answer(&request, page(&state, &params, "users", "name", COLUMNS).await)
}

async fn list_keys(state: web::Data<State>, request: HttpRequest, params: super::Params) -> HttpResponse {
    if let Err(refusal) = identities(&state) {
        return refusal.respond();
    }
    const COLUMNS: &[&str] =
        &["id", "name", "role", "tenants", "status", "expires_at", "created_at", "updated_at", "created_by"];
    super::answer(&request, page(&state, &params, "api_keys", "id", COLUMNS).await)
}
