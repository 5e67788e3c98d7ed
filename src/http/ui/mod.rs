//! The dashboard: the pages a person opens in a browser, served by every node on its HTTP port under `/ui`
//! (`docs/dashboard.md`).
//!
//! Pages are rendered on the server ([`maud`]) from the same reads the JSON API answers with (`crate::query::read::Reads`), for
//! the same identity, so a page shows exactly what its viewer may read. Each page is one answer: its style and
//! its script are inline (allowed by their hashes in the page's `Content-Security-Policy`, nothing else is),
//! and it needs no further request to show. The script (`app.js`) does only what cannot be done without it:
//! the live parts (server-sent events of the existing `/<model>/live` feeds), the buttons (the JSON API's
//! commands, with the session's CSRF token), the upload (straight to the signed URL, with progress) and the
//! login.
//!
//! - `overview`: `/ui` (store head, projections' lag, events and commands per second, jobs by status,
//!   recent failures, the node's tasks) and `/ui/projections` (status, rebuild with progress).
//! - `jobs`: `/ui/jobs` (live list, paged) and `/ui/jobs/{id}` (the workflow's DAG coloured by status,
//!   steps, log, outputs, cancel and retry; live).
//! - `documents`: `/ui/documents` (filters, paging, upload) and `/ui/documents/{id}` (versions, lineage
//!   graph, downloads), `/ui/documents/{id}/download` (a redirect to the signed URL).
//! - `catalog`: `/ui/agents`, `/ui/workflows`, `/ui/workflows/{id}` (versions, DAG, run form),
//!   `/ui/schedules` (next firings, pause and resume).
//! - `streams`: `/ui/streams` (open one by name), `/ui/streams/{stream}` (events with metadata and payloads, state at a version, live tail).
//! - `/ui/login`: the login form (a session cookie from `POST /auth/session`).
//!
//! Who may open each page is [`PAGES`]' permission; the access middleware sends a browser without a session
//! to the login page, and answers a role without the permission 403. Buttons a viewer's role may not use are
//! not drawn (and the API refuses them anyway).

mod catalog;
mod dag;
mod documents;
mod jobs;
mod overview;
mod streams;

use std::sync::LazyLock;

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine as _;
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde_json::Value;
use sha2::Digest as _;

use super::{State, access};
use crate::auth::Permission;
use crate::query::{Failure, Scope};

/// Every page and the permission it needs (`/ui/login` is open). The access middleware reads this table.
pub const PAGES: &[(&str, Permission)] = &[
    ("/ui", Permission::Read),
    ("/ui/jobs", Permission::Read),
    ("/ui/jobs/{id}", Permission::Read),
    ("/ui/documents", Permission::Read),
    ("/ui/documents/{id}", Permission::Read),
    ("/ui/documents/{id}/download", Permission::Read),
    ("/ui/agents", Permission::Read),
    ("/ui/workflows", Permission::Read),
    ("/ui/workflows/{id}", Permission::Read),
    ("/ui/schedules", Permission::Read),
    ("/ui/streams", Permission::Read),
    ("/ui/streams/{stream}", Permission::Read),
    ("/ui/projections", Permission::Inspect),
];

/// The login page's path.
pub const LOGIN: &str = "/ui/login";

/// The model named `name` (`jobs`, `workflows`, ...).
fn model(name: &str) -> &'static crate::query::read::Model {
    crate::query::read::MODELS.into_iter().find(|m| m.name == name).expect("a model of the read side")
}

/// Rows in a page of a list.
const PAGE_ROWS: usize = 50;

/// Registers the pages.
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/", web::get().to(|| async { see_other("/ui") }))
        .route(LOGIN, web::get().to(login))
        .route("/ui", web::get().to(overview::overview))
        .route("/ui/projections", web::get().to(overview::projections))
        .route("/ui/jobs", web::get().to(jobs::list))
        .route("/ui/jobs/{id}", web::get().to(jobs::show))
        .route("/ui/documents", web::get().to(documents::list))
        .route("/ui/documents/{id}", web::get().to(documents::show))
        .route("/ui/documents/{id}/download", web::get().to(documents::download))
        .route("/ui/agents", web::get().to(catalog::agents))
        .route("/ui/workflows", web::get().to(catalog::workflows))
        .route("/ui/workflows/{id}", web::get().to(catalog::workflow))
        .route("/ui/schedules", web::get().to(catalog::schedules))
        .route("/ui/streams", web::get().to(streams::open))
        .route("/ui/streams/{stream}", web::get().to(streams::show));
}

const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("app.css");

/// The pages' `Content-Security-Policy`: only the inline style and script of this build (by their hashes), no
/// other script, style, frame or form target; requests only to this origin and (an upload's signed URL) the
/// object store's.
static POLICY: LazyLock<String> = LazyLock::new(|| {
    let hash = |text: &str| base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(text.as_bytes()));
    format!(
        "default-src 'none'; script-src 'sha256-{}'; style-src 'sha256-{}'; img-src 'self' data:; \
         connect-src 'self' http: https:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
        hash(SCRIPT),
        hash(STYLE)
    )
});

/// Who is looking at a page, and what the page may offer them.
pub(super) struct Viewer {
    identity: Option<crate::auth::Identity>,
    /// The session's CSRF token, for the buttons' requests (none for a bearer token, which needs none).
    csrf: String,
    scope: Scope,
}

impl Viewer {
    fn of(state: &State, request: &HttpRequest) -> Self {
        let csrf = request
            .cookie(super::identities::SESSION_COOKIE)
            .zip(state.auth.as_ref().and_then(|v| v.identities().cloned()))
            .map(|(cookie, ids)| ids.csrf(cookie.value()))
            .unwrap_or_default();
        Self { identity: access::identity(request), csrf, scope: access::scope(request) }
    }

    /// Whether the viewer may do what `permission` allows (everything on a node without authentication).
    fn may(&self, permission: Permission) -> bool {
        self.identity.as_ref().is_none_or(|identity| identity.role.may(permission))
    }

    /// The tenants the viewer may choose for what it makes (`None`: any; a node without authentication).
    fn tenants(&self) -> Option<Vec<String>> {
        self.identity.as_ref().filter(|i| !i.tenants.iter().any(|t| t == "*")).map(|i| i.tenants.clone())
    }
}

/// The sections of the navigation bar: path, label, the permission that shows it.
const NAV: &[(&str, &str, Permission)] = &[
    ("/ui", "Overview", Permission::Read),
    ("/ui/jobs", "Jobs", Permission::Read),
    ("/ui/documents", "Documents", Permission::Read),
    ("/ui/workflows", "Workflows", Permission::Read),
    ("/ui/agents", "Agents", Permission::Read),
    ("/ui/schedules", "Schedules", Permission::Read),
    ("/ui/projections", "Projections", Permission::Inspect),
];

/// A whole page: the navigation (`section` marked current), `title`, and `body`.
fn page(viewer: &Viewer, section: &str, title: &str, body: Markup) -> HttpResponse {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="csrf-token" content=(viewer.csrf);
                title { (title) " · Weft" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/ui" { "Weft" }
                    nav aria-label="Sections" {
                        @for (path, label, permission) in NAV {
                            @if viewer.may(*permission) {
                                @if *path == section {
                                    a href=(path) aria-current="page" { (label) }
                                } @else {
                                    a href=(path) { (label) }
                                }
                            }
                        }
                    }
                    div.who {
                        @if let Some(identity) = &viewer.identity {
                            span #who { (identity.subject) " · " (identity.role.as_str()) }
                            button.link #logout type="button" { "Sign out" }
                        } @else {
                            span #who { "no authentication" }
                        }
                    }
                }
                main #main {
                    h1 { (title) }
                    p #notice role="status" aria-live="polite" {}
                    (body)
                }
                script { (PreEscaped(SCRIPT)) }
            }
        }
    };
    html_answer(StatusCode::OK, markup)
}

fn html_answer(status: StatusCode, markup: Markup) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header((header::CONTENT_TYPE, "text/html; charset=utf-8"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::CONTENT_SECURITY_POLICY, POLICY.as_str()))
        .body(markup.into_string())
}

fn see_other(location: &str) -> HttpResponse {
    HttpResponse::SeeOther().insert_header((header::LOCATION, location)).finish()
}

/// The page of a read that failed: its status and message, in the layout.
fn failed(viewer: &Viewer, section: &str, failure: Failure) -> HttpResponse {
    let status = failure.status();
    let mut answer = page(
        viewer,
        section,
        status.canonical_reason().unwrap_or("Error"),
        html! {
            p.error { (failure.message) }
        },
    );
    *answer.status_mut() = status;
    answer
}

/// The answer to a browser without a session on a page that needs one: the login page, then back here.
pub fn to_login(uri: &actix_web::http::Uri) -> HttpResponse {
    let here = uri.path_and_query().map_or("/ui", |p| p.as_str());
    let next = percent_encoding::utf8_percent_encode(here, percent_encoding::NON_ALPHANUMERIC);
    see_other(&format!("{LOGIN}?next={next}"))
}

/// The answer to a role without the page's permission.
pub fn forbidden(role: &str) -> HttpResponse {
    html_answer(
        StatusCode::FORBIDDEN,
        html! {
            (DOCTYPE)
            html lang="en" { head { meta charset="utf-8"; title { "Forbidden · Weft" } }
                body { h1 { "Forbidden" } p { "A " (role) " may not open this page. " a href="/ui" { "Overview" } } } }
        },
    )
}

#[derive(serde::Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

/// `GET /ui/login`: the login form; signing in sets the session cookie (`POST /auth/session`) and goes to
/// `next` (a path of this site only).
async fn login(state: web::Data<State>, query: web::Query<LoginQuery>) -> HttpResponse {
    // A path of this site: not `//host` nor `/\host` (which browsers read as `//host`), nothing unprintable.
    let local = |n: &&str| {
        n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') && !n.chars().any(|c| c.is_control())
    };
    let next = query.next.as_deref().filter(local).unwrap_or("/ui");
    let viewer = Viewer { identity: None, csrf: String::new(), scope: Scope::ALL };
    let body = if state.auth.is_none() {
        html! { p { "This node runs without authentication: every page is open. " a href=(next) { "Go on" } } }
    } else {
        html! {
            form #login data-next=(next) {
                label { "User" input name="user" autocomplete="username" required autofocus; }
                label { "Password" input name="password" type="password" autocomplete="current-password" required; }
                button type="submit" { "Sign in" }
            }
        }
    };
    page(&viewer, LOGIN, "Sign in", body)
}

/// A time in µs since the epoch, as UTC to the second.
fn time(micros: &Value) -> String {
    micros
        .as_i64()
        .and_then(chrono::DateTime::from_timestamp_micros)
        .map_or_else(|| "–".to_owned(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string())
}

/// A status as a badge (its colour from the status).
fn badge(status: &str) -> Markup {
    html! { span class={ "badge s-" (status) } data-field="status" { (status) } }
}

/// A text field of `value` (the empty string for none).
fn text<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key].as_str().unwrap_or("")
}

/// An id cut to its first 8 characters for tables, whole in its `title`.
fn short(id: &str) -> Markup {
    html! { span.id title=(id) { (id.get(..8).unwrap_or(id)) } }
}

/// JSON, pretty, in a `<pre>`.
fn json_block(value: &Value) -> Markup {
    html! { pre.json { (serde_json::to_string_pretty(value).unwrap_or_default()) } }
}

/// A filter form's status choice: any, or one of `statuses`, `current` selected.
fn status_select(statuses: &[&str], current: Option<&String>) -> Markup {
    html! {
        label { "Status " select name="status" {
            option value="" { "any" }
            @for status in statuses {
                option value=(status) selected[current.is_some_and(|s| s == status)] { (status) }
            }
        } }
    }
}

/// A list's query without the paging keys, for filter links and the live feed's URL.
fn filters(params: &std::collections::BTreeMap<String, String>, keys: &[&str]) -> String {
    let mut query = String::new();
    for (key, value) in params {
        if value.is_empty() || !(keys.contains(&key.as_str()) || key.starts_with("label.")) {
            continue;
        }
        let encode = |s: &str| percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string();
        query.push_str(if query.is_empty() { "" } else { "&" });
        query.push_str(&format!("{}={}", encode(key), encode(value)));
    }
    query
}

/// "Newer" and "older" links of a list paged newest first: `cursor` the page's, `next` its next cursor.
fn pager(base: &str, query: &str, cursor: Option<&str>, next: Option<&str>) -> Markup {
    let join = if query.is_empty() { String::new() } else { format!("{query}&") };
    html! {
        nav.pager aria-label="Pages" {
            @if cursor.is_some() { a href={ (base) "?" (query) } { "« Newest" } }
            @if let Some(next) = next { a rel="next" href={ (base) "?" (join) "cursor=" (next) } { "Older »" } }
        }
    }
}

/// The log position `model`'s read model has applied (0 if it has none).
fn position(state: &State, model: &crate::query::read::Model) -> u64 {
    state.reads.position(model.projection).map_or(0, |position| *position.borrow())
}

/// A list's parameters as the reads take them: the filters given (empty ones dropped), newest first, a page.
fn list_params(
    params: &std::collections::BTreeMap<String, String>,
    keys: &[&str],
) -> std::collections::BTreeMap<String, String> {
    let mut list: std::collections::BTreeMap<String, String> = params
        .iter()
        .filter(|(k, v)| !v.is_empty() && (keys.contains(&k.as_str()) || k.starts_with("label.") || *k == "cursor"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    list.insert("order".into(), "desc".into());
    list.insert("limit".into(), PAGE_ROWS.to_string());
    list
}
