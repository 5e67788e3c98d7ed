//! `/ui/documents` and `/ui/documents/{id}`: the documents.
//!
//! The list is newest first, filtered by status, tenant, owner, content type and labels (`key=value`, several
//! separated by commas), fifty to a page, and live as the jobs' list is. A role that may write documents gets
//! the upload form: the file goes from the browser straight to the signed URL (`POST /documents`, then the
//! `PUT`), with a progress bar, and the page opens the new document once the node has it. A document's page
//! shows its versions (each downloadable through `/ui/documents/{id}/download?version=N`, a redirect to its
//! signed URL), its labels, and its lineage as a graph whose documents are links.

use std::collections::BTreeMap;

use actix_web::{HttpRequest, HttpResponse, web};
use maud::{Markup, html};
use serde_json::Value;

use super::{Viewer, badge, dag, failed, page, pager, short, text, time};
use crate::auth::Permission;
use crate::http::{Params, State};
use crate::query::read::DOCUMENTS;

const STATUSES: [&str; 3] = ["registered", "uploaded", "deleted"];

/// `GET /ui/documents`.
pub async fn list(state: web::Data<State>, request: HttpRequest, params: Params) -> HttpResponse {
    let viewer = Viewer::of(&state, &request);
    let keys = ["status", "tenant", "owner", "content_type"];
    let mut given = params.into_inner();
    // `labels=a=1, b=2` is the form's way of writing `label.a=1&label.b=2`.
    if let Some(labels) = given.remove("labels") {
        for pair in labels.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            given.insert(format!("label.{}", key.trim()), value.trim().to_owned());
        }
    }
    let drawn_at = super::position(&state, &DOCUMENTS);
    let found = match state.reads.list(&DOCUMENTS, &super::list_params(&given, &keys), &viewer.scope).await {
        Ok(found) => found,
        Err(failure) => return failed(&viewer, "/ui/documents", failure),
    };
    let labels: Vec<String> =
        given.iter().filter_map(|(k, v)| k.strip_prefix("label.").map(|k| format!("{k}={v}"))).collect();
    let query = super::filters(&given, &keys);
    let first = !given.contains_key("cursor");
    let body = html! {
        @if viewer.may(Permission::WriteDocuments) && state.objects.is_some() { (upload_form(&viewer)) }
        form.filters method="get" action="/ui/documents" {
            (super::status_select(&STATUSES, given.get("status")))
            label { "Tenant " input name="tenant" value=[given.get("tenant")] size="10"; }
            label { "Owner " input name="owner" value=[given.get("owner")] size="10"; }
            label { "Type " input name="content_type" value=[given.get("content_type")] placeholder="text/plain" size="12"; }
            label { "Labels " input name="labels" value=(labels.join(", ")) placeholder="key=value, ..." size="16"; }
            button type="submit" { "Filter" }
        }
        table.list #documents data-live={ "/documents/live?" (query) (if query.is_empty() { "" } else { "&" }) "cursor=" (drawn_at) } data-prepend[first] {
            caption { "Documents, newest first" @if first { " (live)" } }
            thead { tr { th { "Document" } th { "Name" } th { "Status" } th { "Type" } th { "Size" } th { "Versions" } th { "Tenant" } th { "Owner" } th { "Updated" } } }
            tbody {
                @for document in found["items"].as_array().into_iter().flatten() { (row(document)) }
            }
            template { (row(&Value::Null)) }
        }
        (pager("/ui/documents", &query, given.get("cursor").map(String::as_str), found["next_cursor"].as_str()))
    };
    page(&viewer, "/ui/documents", "Documents", body)
}

fn row(document: &Value) -> Markup {
    let id = text(document, "id");
    html! {
        tr data-id=(id) {
            td { a data-field="link" href={ "/ui/documents/" (id) } { (short(id)) } }
            td data-field="name" { (text(document, "name")) }
            td { (badge(text(document, "status"))) }
            td { (text(document, "content_type")) }
            td data-field="size_bytes" { (document["size_bytes"]) }
            td data-field="versions" { (document["versions"]) }
            td { (text(document, "tenant")) }
            td { (text(document, "owner")) }
            td data-field="updated_at" { (time(&document["updated_at"])) }
        }
    }
}

/// The upload form: a file, its tenant (one of the viewer's) and labels.
fn upload_form(viewer: &Viewer) -> Markup {
    html! {
        form.upload #upload {
            fieldset {
                legend { "Upload a document" }
                label { "File " input type="file" name="file" required; }
                label { "Tenant "
                    @match viewer.tenants() {
                        Some(tenants) => select name="tenant" { @for t in tenants { option { (t) } } },
                        None => input name="tenant" value="default" size="10" required;,
                    }
                }
                label { "Labels " input name="labels" placeholder="key=value, ..." size="16"; }
                button type="submit" { "Upload" }
                progress #upload-progress max="100" value="0" hidden {}
            }
        }
    }
}

/// `GET /ui/documents/{id}`.
pub async fn show(state: web::Data<State>, request: HttpRequest, id: web::Path<String>) -> HttpResponse {
    let viewer = Viewer::of(&state, &request);
    let document = match state.reads.show(&DOCUMENTS, &id, None, &viewer.scope).await {
        Ok(document) => document,
        Err(failure) => return failed(&viewer, "/ui/documents", failure),
    };
    let id = text(&document, "id").to_owned();
    let lineage = state.reads.lineage(&id, &BTreeMap::new(), &viewer.scope).await.unwrap_or_default();
    let labels = document["labels"].as_object().cloned().unwrap_or_default();
    let deleted = text(&document, "status") == "deleted";
    let body = html! {
        section #document data-live={ "/documents/" (id) "/live?cursor=" (document["version"]) } {
            dl.facts {
                dt { "Status" } dd { (badge(text(&document, "status"))) }
                dt { "Name" } dd { (text(&document, "name")) }
                dt { "Type" } dd { (text(&document, "content_type")) }
                dt { "Size" } dd data-field="size_bytes" { (document["size_bytes"]) " bytes" }
                dt { "Tenant" } dd { (text(&document, "tenant")) }
                dt { "Owner" } dd { (text(&document, "owner")) }
                dt { "Created" } dd { (time(&document["created_at"])) }
                dt { "Labels" } dd { @for (k, v) in &labels { span.label { (k) "=" (v.as_str().unwrap_or("")) } " " } }
                dt { "History" } dd { a href={ "/ui/streams/document-" (id) } { "events of document-" (short(&id)) } }
            }
            @if !deleted && state.objects.is_some() {
                p { a.button href={ "/ui/documents/" (id) "/download" } download { "Download" } }
            }
            h2 { "Versions" }
            table.list {
                thead { tr { th { "Version" } th { "Size" } th { "Uploaded" } th { "Kept" } th {} } }
                tbody {
                    @for content in document["contents"].as_array().into_iter().flatten() {
                        tr {
                            td { (content["version"]) }
                            td { (content["size_bytes"]) }
                            td { (time(&content["uploaded_at"])) }
                            td { @if content["kept"] == true { "yes" } @else { "no" } }
                            td { @if content["kept"] == true && !deleted {
                                a href={ "/ui/documents/" (id) "/download?version=" (content["version"]) } { "download" }
                            } }
                        }
                    }
                }
            }
            h2 { "Lineage" }
            (dag::lineage(&id, text(&document, "name"), &lineage))
            @for parent in document["parents"].as_array().into_iter().flatten() {
                p { "Derived from " a href={ "/ui/documents/" (text(parent, "id")) } { (short(text(parent, "id"))) }
                    " by step " (text(parent, "step")) " of job " a href={ "/ui/jobs/" (text(parent, "job")) } { (short(text(parent, "job"))) } }
            }
        }
    };
    page(&viewer, "/ui/documents", &format!("Document {}", text(&document, "name")), body)
}

/// `GET /ui/documents/{id}/download[?version=N]`: a redirect to the content's signed URL.
pub async fn download(state: web::Data<State>, request: HttpRequest, id: web::Path<String>) -> HttpResponse {
    let viewer = Viewer::of(&state, &request);
    match crate::http::documents::signed_download(&state, &request, &id).await {
        Ok(signed) => super::see_other(&signed.url),
        Err(refusal) => {
            let status = refusal.status;
            let message = refusal.body["error"]["message"].as_str().unwrap_or("refused").to_owned();
            failed(&viewer, "/ui/documents", crate::query::Failure { kind: kind(status), message })
        }
    }
}

fn kind(status: actix_web::http::StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "invalid",
        404 => "not_found",
        409 => "conflict",
        _ => "unavailable",
    }
}
