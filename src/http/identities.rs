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
//! A node without authentication (`--insecure-no-auth`) has no users or keys: these routes answer 404.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

use super::{State, access, documents, error};
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
        .route("/auth/users", web::get().to(list_users))
        .route("/auth/users", web::post().to(add_user))
        .route("/auth/users/{name}/password", web::post().to(set_password))
        .route("/auth/users/{name}/disable", web::post().to(disable_user))
        .route("/auth/keys", web::get().to(list_keys))
        .route("/auth/keys", web::post().to(create_key))
        .route("/auth/keys/{id}/revoke", web::post().to(revoke_key));
}

/// The node's users and keys, or the answer of a node that has none.
fn identities(state: &State) -> Result<Arc<Identities>, HttpResponse> {
    state.auth.as_ref().and_then(|verifier| verifier.identities().cloned()).ok_or_else(|| {
        error(
            StatusCode::NOT_FOUND,
            "not_found",
            "this node runs without authentication (--insecure-no-auth): it has no users or API keys",
        )
    })
}

/// The body, read and parsed as `T`.
async fn body<T: serde::de::DeserializeOwned>(
    state: &State,
    payload: web::Payload,
    shape: &str,
) -> Result<T, HttpResponse> {
    let bytes = documents::read_body(payload, MAX_BODY_BYTES, state.limits.body_idle_timeout)
        .await
        .map_err(|refusal| refusal.respond())?;
    serde_json::from_slice(&bytes).map_err(|e| {
        // serde's message names the field, never its value.
        error(StatusCode::BAD_REQUEST, "invalid", format!("the body is not {shape}: {e}"))
    })
}

/// The answer to a refused change.
fn refused(e: IdentityError) -> HttpResponse {
    match e {
        IdentityError::Invalid(m) => error(StatusCode::BAD_REQUEST, "invalid", m),
        IdentityError::Exists(m) => error(StatusCode::CONFLICT, "conflict", m),
        IdentityError::NotFound(m) => error(StatusCode::NOT_FOUND, "not_found", m),
        IdentityError::Store(e) => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()),
    }
}

/// Who is asking: the actor the change records.
fn actor(request: &HttpRequest) -> String {
    access::identity(request).map_or_else(|| "operator".to_owned(), |identity| identity.subject)
}

/// A password as a body gives it: in the clear or as an imported hash, not both.
fn password(clear: Option<String>, hash: Option<String>) -> Result<Password, HttpResponse> {
    match (clear, hash) {
        (Some(clear), None) => Ok(Password::Clear(clear)),
        (None, Some(hash)) => Ok(Password::Hash(hash)),
        _ => Err(error(StatusCode::BAD_REQUEST, "invalid", "give `password` or `password_hash`, one of them")),
    }
}

fn ttl(secs: Option<u64>, default: Option<Duration>, max: Duration) -> Result<Option<Duration>, HttpResponse> {
    match secs.map(Duration::from_secs) {
        Some(ttl) if ttl.is_zero() || ttl > max => {
            Err(error(StatusCode::BAD_REQUEST, "invalid", format!("ttl_secs must be 1 to {}", max.as_secs())))
        }
        Some(ttl) => Ok(Some(ttl)),
        None => Ok(default),
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

async fn login(state: web::Data<State>, payload: web::Payload) -> HttpResponse {
    let identities = match identities(&state) {
        Ok(identities) => identities,
        Err(answer) => return answer,
    };
    let body: LoginRequest = match body(&state, payload, "{\"user\": ..., \"password\": ...}").await {
        Ok(body) => body,
        Err(answer) => return answer,
    };
    let ttl = match ttl(body.ttl_secs, Some(LOGIN_TTL), MAX_LOGIN_TTL) {
        Ok(ttl) => ttl.unwrap_or(LOGIN_TTL),
        Err(answer) => return answer,
    };
    match identities.login(&body.user, &body.password).await {
        Ok(identity) => {
            let token = identities.issue_login(&identity, ttl);
            tracing::info!(user = %identity.subject, "a user logged in");
            HttpResponse::Ok().json(json!({
                "token": token,
                "token_type": "Bearer",
                "expires_in": ttl.as_secs(),
                "subject": identity.subject,
                "role": identity.role,
                "tenants": identity.tenants,
            }))
        }
        Err(LoginError::Refused(why)) => access::refused(StatusCode::UNAUTHORIZED, "unauthenticated", &why.to_string()),
        Err(LoginError::TooMany(wait)) => {
            let seconds = crate::auth::limits::retry_after_secs(wait);
            let message = format!("too many login attempts for this user; retry in {seconds} s");
            let mut answer = error(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message);
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
    let identities = match identities(&state) {
        Ok(identities) => identities,
        Err(answer) => return answer,
    };
    let shape = "{\"name\", \"role\", \"tenants\", \"password\" or \"password_hash\"}";
    let body: NewUser = match body(&state, payload, shape).await {
        Ok(body) => body,
        Err(answer) => return answer,
    };
    let password = match password(body.password, body.password_hash) {
        Ok(password) => password,
        Err(answer) => return answer,
    };
    match identities.add_user(&body.name, &body.role, &body.tenants, password, &actor(&request)).await {
        Ok(position) => HttpResponse::Created().json(json!({
            "name": body.name, "role": body.role, "tenants": body.tenants, "status": "active", "position": position,
        })),
        Err(e) => refused(e),
    }
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
    let identities = match identities(&state) {
        Ok(identities) => identities,
        Err(answer) => return answer,
    };
    // A user changes its own password; only an admin another's.
    let caller = access::identity(&request);
    if caller.as_ref().is_some_and(|c: &Identity| c.subject != *name && !c.role.may(Permission::Identities)) {
        return error(StatusCode::FORBIDDEN, "forbidden", "only an admin changes another user's password");
    }
    let body: NewPassword = match body(&state, payload, "{\"password\"} or {\"password_hash\"}").await {
        Ok(body) => body,
        Err(answer) => return answer,
    };
    let password = match password(body.password, body.password_hash) {
        Ok(password) => password,
        Err(answer) => return answer,
    };
    match identities.set_password(&name, password, &actor(&request)).await {
        Ok(position) => HttpResponse::Ok().json(json!({"name": *name, "position": position})),
        Err(e) => refused(e),
    }
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
    let identities = match identities(&state) {
        Ok(identities) => identities,
        Err(answer) => return answer,
    };
    let body: Reason = match body(&state, payload, "{\"reason\": ...}").await {
        Ok(body) => body,
        Err(answer) => return answer,
    };
    match identities.disable_user(&name, &body.reason, &actor(&request)).await {
        Ok(position) => {
            tracing::warn!(user = %*name, "user disabled");
            HttpResponse::Ok().json(json!({"name": *name, "status": "disabled", "position": position}))
        }
        Err(e) => refused(e),
    }
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
    let identities = match identities(&state) {
        Ok(identities) => identities,
        Err(answer) => return answer,
    };
    let body: NewKeyRequest = match body(&state, payload, "{\"name\", \"role\", \"tenants\", \"ttl_secs\"?}").await {
        Ok(body) => body,
        Err(answer) => return answer,
    };
    let ttl = match ttl(body.ttl_secs, None, MAX_KEY_TTL) {
        Ok(ttl) => ttl,
        Err(answer) => return answer,
    };
    match identities.create_key(&body.name, &body.role, &body.tenants, ttl, &actor(&request)).await {
        Ok(key) => {
            tracing::info!(key = %key.id, name = %key.name, "API key made");
            HttpResponse::Created().json(key)
        }
        Err(e) => refused(e),
    }
}

async fn revoke_key(
    state: web::Data<State>,
    request: HttpRequest,
    id: web::Path<String>,
    payload: web::Payload,
) -> HttpResponse {
    let identities = match identities(&state) {
        Ok(identities) => identities,
        Err(answer) => return answer,
    };
    let body: Reason = match body(&state, payload, "{\"reason\": ...}").await {
        Ok(body) => body,
        Err(answer) => return answer,
    };
    match identities.revoke_key(&id, &body.reason, &actor(&request)).await {
        Ok(position) => {
            tracing::warn!(key = %*id, "API key revoked");
            HttpResponse::Ok().json(json!({"id": *id, "status": "revoked", "position": position}))
        }
        Err(e) => refused(e),
    }
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
    if let Err(answer) = identities(&state) {
        return answer;
    }
    const COLUMNS: &[&str] = &["name", "role", "tenants", "status", "created_at", "updated_at", "created_by"];
    super::answer(&request, page(&state, &params, "users", "name", COLUMNS).await)
}

async fn list_keys(state: web::Data<State>, request: HttpRequest, params: super::Params) -> HttpResponse {
    if let Err(answer) = identities(&state) {
        return answer;
    }
    const COLUMNS: &[&str] =
        &["id", "name", "role", "tenants", "status", "expires_at", "created_at", "updated_at", "created_by"];
    super::answer(&request, page(&state, &params, "api_keys", "id", COLUMNS).await)
}
