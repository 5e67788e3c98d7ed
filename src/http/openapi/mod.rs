//! The OpenAPI 3.1 document of the query API, built from the same model definitions the routes read with
//! (columns, filters), so a filter or a column added to a model shows up here without a second list.
//!
//! Every answer body is described as it is served (`tests/it/query_api.rs` and `tests/it/documents.rs` check
//! real answers against these schemas): the items' columns with their types, the document routes' signed
//! URLs and outcomes, a command's reply, readiness.

mod documents;
mod identities;

use serde_json::{Value, json};

use crate::query::read::{MAX_LIMIT, MODELS, Model};

/// The routes: method, path, summary. `tests/it/query_api.rs` checks that each is served and that the
/// server serves no other.
pub const ROUTES: &[(&str, &str, &str)] = &[
    ("get", "/healthz", "The process is up"),
    ("get", "/readyz", "Ready (200) or not (503): each task's state, each projection's position and lag"),
    ("get", "/openapi.json", "This document"),
    ("get", "/metrics", "The node's metrics in the Prometheus text format (operators and admins)"),
    (
        "get",
        "/cluster",
        "The nodes sharing this node's store, the partitions and each node's share (operators and admins)",
    ),
    ("get", "/costs", "Jobs, tokens and provider cost by tenant (the caller's tenants; a user's own jobs)"),
    ("get", "/documents", "A page of documents"),
    ("get", "/documents/live", "Server-sent events: each change of a document that matches the filters"),
    ("get", "/documents/{id}", "One document with its lineage"),
    ("get", "/documents/{id}/live", "Server-sent events: each change of a document, then its state"),
    ("get", "/jobs", "A page of jobs"),
    ("get", "/jobs/live", "Server-sent events: each change of a job that matches the filters"),
    ("get", "/jobs/{id}", "One job with its steps and progress"),
    ("get", "/jobs/{id}/logs", "A page of a job's log, oldest first"),
    ("get", "/jobs/{id}/live", "Server-sent events: each change of a job, then its state"),
    ("get", "/agents", "A page of agents"),
    ("get", "/agents/live", "Server-sent events: each change of an agent that matches the filters"),
    ("get", "/agents/{id}", "One agent with its tasks, tokens and mean latency"),
    ("get", "/agents/{id}/live", "Server-sent events: each change of an agent, then its state"),
    ("get", "/workflows", "A page of workflows"),
    ("get", "/workflows/live", "Server-sent events: each change of a workflow that matches the filters"),
    ("get", "/workflows/{id}", "One workflow with every version it had"),
    ("get", "/workflows/{id}/live", "Server-sent events: each change of a workflow, then its state"),
    ("get", "/schedules", "A page of schedules"),
    ("get", "/schedules/live", "Server-sent events: each change of a schedule that matches the filters"),
    ("get", "/schedules/{id}", "One schedule with its next fire time"),
    ("get", "/schedules/{id}/live", "Server-sent events: each change of a schedule, then its state"),
    ("get", "/triggers", "A page of triggers"),
    ("get", "/triggers/live", "Server-sent events: each change of a trigger that matches the filters"),
    ("get", "/triggers/{id}", "One trigger with how often it fired"),
    ("get", "/triggers/{id}/live", "Server-sent events: each change of a trigger, then its state"),
    ("get", "/streams/{stream}/events", "A page of a stream's events, oldest first"),
    ("post", "/commands/{aggregate}/{id}", "A command, through the command intake"),
    (
        "post",
        "/projections/{name}/rebuild",
        "Rebuild a read model from the log and swap it in; the old one serves meanwhile",
    ),
    ("post", "/projections/{name}/reset", "Empty a read model and apply the log again in place"),
    ("get", "/projections/{name}", "A projection's position, lag, and latest rebuild or reset with its progress"),
    ("get", "/providers", "The node's LLM providers, their circuits and failures in a row"),
    ("post", "/documents", "Register a document (tenant: Weft-Tenant) and get its signed upload URL"),
    ("post", "/documents/{id}/upload-url", "A new signed upload URL: a pending upload, or a new version"),
    ("post", "/documents/{id}/confirm", "Check the document's object with a head request and record it"),
    ("get", "/documents/{id}/download", "A signed download URL of the document's content, at any version"),
    ("get", "/documents/{id}/lineage", "The document's ancestors and descendants, to any depth"),
    ("delete", "/documents/{id}", "Delete the document, then its object"),
    ("post", "/objects/events", "S3 event notifications (Authorization: Bearer <webhook secret>)"),
    ("post", "/tenants/{tenant}/erase", "Erase a tenant: destroy its key, so its personal fields read [erased]"),
    ("post", "/auth/token", "A user's name and password for a short-lived bearer token"),
    ("post", "/auth/session", "A login for a browser: the token in an HttpOnly cookie, a CSRF token in the answer"),
    ("delete", "/auth/session", "End a browser session: its cookie is removed"),
    ("get", "/auth/users", "A page of the users (admins)"),
    ("post", "/auth/users", "Add a user with a password or an imported hash (admins)"),
    ("post", "/auth/users/{name}/password", "Change a user's password (the user itself, or an admin)"),
    ("post", "/auth/users/{name}/disable", "Disable a user: no logins, its tokens refused (admins)"),
    ("get", "/auth/keys", "A page of the API keys, without their secrets (admins)"),
    ("post", "/auth/keys", "Make an API key; the answer shows it once (admins)"),
    ("post", "/auth/keys/{id}/revoke", "Revoke an API key (admins)"),
    ("put", "/objects/{key}", "Upload through a signed URL of the local object store"),
    ("get", "/objects/{key}", "Download through a signed URL of the local object store"),
];

fn param(name: &str, place: &str, schema: Value, description: &str) -> Value {
    json!({"name": name, "in": place, "required": place == "path", "schema": schema, "description": description})
}

fn after() -> Value {
    param(
        "after",
        "query",
        json!({"type": "integer", "minimum": 0}),
        "Wait (≤ 5 s) until the read model applied this position",
    )
}

fn paging(cursor: Value) -> [Value; 2] {
    [
        param("cursor", "query", cursor, "The previous page's next_cursor"),
        param("limit", "query", json!({"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}), "Items per page"),
    ]
}

/// Columns holding whole numbers (sizes, counts, versions, times in µs since the epoch).
const INTEGER_COLUMNS: &[&str] = &[
    "declared_size_bytes",
    "size_bytes",
    "versions",
    "created_at",
    "updated_at",
    "version",
    "workflow_version",
    "priority",
    "steps_total",
    "steps_done",
    "submitted_at",
    "finished_at",
    "tasks_assigned",
    "tasks_running",
    "tasks_done",
    "tasks_failed",
    "input_tokens",
    "output_tokens",
    "cost_nanos",
    "latency_total_ms",
    "registered_at",
    "latest_version",
    "steps_count",
    "defined_at",
    "fires",
    "jobs_submitted",
    "last_due",
    "fired_up_to",
];

/// Columns holding JSON objects.
const OBJECT_COLUMNS: &[&str] = &["labels", "profile", "target"];

/// Columns that are empty (`null`) until something happens (an upload, an end, a firing), or in rows older
/// than the column (`labels`, until a rebuild).
const NULLABLE_COLUMNS: &[&str] = &[
    "size_bytes",
    "etag",
    "deleted_reason",
    "labels",
    "error",
    "finished_at",
    "disabled_reason",
    "last_due",
    "fired_up_to",
];

/// The schema of a column as served.
fn column_schema(column: &str) -> Value {
    let kind = if INTEGER_COLUMNS.contains(&column) {
        "integer"
    } else if OBJECT_COLUMNS.contains(&column) {
        "object"
    } else if column == "strategy" {
        // `"per_document"`, `"combined"` or `{"per_group": "tenant"}`.
        return json!({"type": ["string", "object"]});
    } else {
        "string"
    };
    if NULLABLE_COLUMNS.contains(&column) { json!({"type": [kind, "null"]}) } else { json!({"type": kind}) }
}

fn item_schema(model: &Model) -> Value {
    let properties: serde_json::Map<String, Value> =
        model.columns.iter().map(|c| ((*c).to_owned(), column_schema(c))).collect();
    json!({"type": "object", "required": model.columns, "properties": properties})
}

fn page_schema(item: Value) -> Value {
    json!({"type": "object", "required": ["items", "next_cursor"],
           "properties": {"items": {"type": "array", "items": item}, "next_cursor": {}}})
}

fn json_response(schema: Value) -> Value {
    json!({"description": "OK", "headers": {"ETag": {"schema": {"type": "string"}}},
           "content": {"application/json": {"schema": schema}}})
}

fn errors() -> Value {
    let error = json!({"$ref": "#/components/schemas/Error"});
    let mut responses = serde_json::Map::new();
    for (code, why) in [
        ("304", "Not modified (If-None-Match)"),
        ("400", "Malformed parameters"),
        ("404", "No such item"),
        ("504", "The read model did not reach `after` in time"),
        ("503", "The read models are unavailable"),
    ] {
        let body = if code == "304" {
            json!({"description": why})
        } else {
            json!({"description": why, "content": {"application/json": {"schema": error}}})
        };
        responses.insert(code.into(), body);
    }
    Value::Object(responses)
}

fn operation(summary: &str, parameters: Vec<Value>, ok: Value) -> Value {
    let mut responses = errors();
    responses["200"] = ok;
    json!({"summary": summary, "parameters": parameters, "responses": responses})
}

/// The summary of the route `method path`.
fn summary(method: &str, path: &str) -> &'static str {
    ROUTES.iter().find(|r| r.0 == method && r.1 == path).map_or("", |r| r.2)
}

fn schema(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// The schemas the answers name.
fn components() -> Value {
    let presigned = json!({"type": "object", "required": ["url", "method", "headers", "expires_at"], "properties": {
        "url": {"type": "string"}, "method": {"type": "string", "enum": ["PUT", "GET"]},
        "headers": {"type": "object", "additionalProperties": {"type": "string"},
                    "description": "Headers the request must carry as they are (they are signed)"},
        "expires_at": {"type": "integer", "description": "Seconds since the epoch"}}});
    let outcome = json!({"type": "object", "required": ["version", "positions", "repeated"], "properties": {
        "version": {"type": "integer"},
        "positions": {"type": ["array", "null"], "items": {"type": "integer"},
                      "description": "The first and last log positions of the events appended; null when none"},
        "repeated": {"type": "boolean"}}});
    let effect = json!({"type": "object", "required": ["outcome"], "properties": {
        "outcome": {"type": "string", "enum": ["uploaded", "version_added", "deleted", "discarded", "duplicate", "ignored"]},
        "reason": {"type": "string", "description": "Why it was ignored"}}});
    let error = json!({"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["kind", "message"],
        "properties": {"kind": {"type": "string"}, "message": {"type": "string"},
                       "rejection": {"type": "object", "description": "A rejection's code and detail"}}}}});
    let reply = json!({"type": "object", "required": ["status", "repeated"], "properties": {
        "status": {"type": "string", "enum": ["ok", "error"]}, "repeated": {"type": "boolean"},
        "version": {"type": "integer"}, "first_position": {"type": "integer"}, "last_position": {"type": "integer"},
        "error": {"type": "object", "required": ["kind", "message"], "properties": {
            "kind": {"type": "string"}, "message": {"type": "string"}, "rejection": {"type": "object"}}}},
        "description": "The command intake's reply (docs/protocol.md, schemas/replies/)"});
    let task = json!({"type": "object", "required": ["state", "since", "restarts"], "properties": {
        "state": {"type": "string", "enum": ["starting", "running", "retrying", "restarting", "stopped"]},
        "since": {"type": "integer"}, "error": {"type": "string"}, "restarts": {"type": "integer"}}});
    let lag = json!({"type": "object", "required": ["position", "lag_events", "lag_seconds"], "properties": {
        "position": {"type": "integer"}, "lag_events": {"type": "integer"}, "lag_seconds": {"type": "number"}}});
    let readiness = json!({"type": "object", "required": ["status", "tasks"], "properties": {
        "status": {"type": "string", "enum": ["ready", "not_ready"]},
        "head": {"type": "integer"},
        "projections": {"type": "object", "additionalProperties": lag},
        "tasks": {"type": "object", "additionalProperties": task},
        "not_ready": {"type": "array", "items": {"type": "string"}, "description": "What is not running or behind, and why"}}});
    json!({
        "Error": error,
        "Presigned": presigned,
        "Outcome": outcome,
        "Registered": {"type": "object", "required": ["id", "key", "outcome", "upload"], "properties": {
            "id": {"type": "string", "format": "uuid"}, "key": {"type": "string"},
            "outcome": schema("Outcome"), "upload": schema("Presigned")}},
        "Effect": effect,
        "Reply": reply,
        "Readiness": readiness,
    })
}

/// The `label.<key>` filters of a model with labels, as one parameter (OpenAPI has no parameter names with a
/// variable part).
fn label_param() -> Value {
    let what = format!(
        "Equal to the item's label <key>: `label.project=q3`; a parameter per label, at most {}",
        crate::query::read::MAX_LABEL_FILTERS
    );
    param("label.<key>", "query", json!({"type": "string"}), &what)
}

fn model_paths(model: &Model, paths: &mut serde_json::Map<String, Value>) {
    let id = || param("id", "path", json!({"type": "string", "format": "uuid"}), "The id");
    let mut list = vec![after()];
    list.extend(model.filters.iter().map(|f| param(f, "query", json!({"type": "string"}), "Equal to")));
    list.extend(model.labels.map(|_| label_param()));
    for (bound, what) in [("since", "at or after"), ("until", "before")] {
        list.push(param(
            bound,
            "query",
            json!({"type": "integer"}),
            &format!("{} {what} (µs since the epoch)", model.time),
        ));
    }
    list.extend(paging(json!({"type": "string", "format": "uuid"})));
    list.push(param(
        "order",
        "query",
        json!({"type": "string", "enum": ["asc", "desc"]}),
        "By id, oldest first (`asc`, the default) or newest first (`desc`)",
    ));
    let base = format!("/{}", model.name);
    paths.insert(
        base.clone(),
        json!({"get": operation(summary("get", &base), list, json_response(page_schema(item_schema(model))))}),
    );
    let one = format!("{base}/{{id}}");
    paths.insert(
        one.clone(),
        json!({"get": operation(summary("get", &one), vec![id(), after()], json_response(item_schema(model)))}),
    );
    let list_live = format!("{base}/live");
    let mut filters: Vec<Value> =
        model.filters.iter().map(|f| param(f, "query", json!({"type": "string"}), "Equal to")).collect();
    filters.extend(model.labels.map(|_| label_param()));
    filters.push(param("Last-Event-ID", "header", json!({"type": "integer"}), "Resume after this log position"));
    filters.push(param(
        "cursor",
        "query",
        json!({"type": "integer", "minimum": 0}),
        "Start after this log position (when no Last-Event-ID is sent)",
    ));
    let list_sse = json!({"description": "text/event-stream of `item` and `left` events",
                          "content": {"text/event-stream": {"schema": {"type": "string"}}}});
    paths.insert(list_live.clone(), json!({"get": operation(summary("get", &list_live), filters, list_sse)}));
    let live = format!("{one}/live");
    let sse = json!({"description": "text/event-stream of `change` and `state` events",
                     "content": {"text/event-stream": {"schema": {"type": "string"}}}});
    let last = param("Last-Event-ID", "header", json!({"type": "integer"}), "Resume after this stream version");
    let cursor = param(
        "cursor",
        "query",
        json!({"type": "integer", "minimum": 0}),
        "Start after this stream version (when no Last-Event-ID is sent)",
    );
    paths
        .insert(live.clone(), json!({"get": operation(summary("get", &live), vec![id(), after(), cursor, last], sse)}));
}

/// The document.
pub fn document() -> Value {
    let mut paths = serde_json::Map::new();
    let plain = |summary: &str| json!({"get": operation(summary, vec![], json_response(json!({"type": "object"})))});
    for (_, path, summary) in &ROUTES[..3] {
        paths.insert((*path).to_owned(), plain(summary));
    }
    paths["/healthz"]["get"]["responses"]["200"] = json_response(json!({"type": "object", "required": ["status"],
        "properties": {"status": {"type": "string", "enum": ["ok"]}}}));
    paths["/readyz"]["get"]["responses"]["200"] = json_response(schema("Readiness"));
    paths["/readyz"]["get"]["responses"]["503"] = json!({"description": "Not ready: `not_ready` says what and why", "content": {"application/json": {"schema": schema("Readiness")}}});
    paths.insert(
        "/metrics".into(),
        json!({"get": operation(summary("get", "/metrics"), vec![], json!({"description": "The metrics",
            "content": {"text/plain": {"schema": {"type": "string"}}}}))}),
    );
    let node = json!({"type": "object", "required": ["id", "partitions"], "properties": {
        "id": {"type": "string"}, "http": {"type": ["string", "null"]}, "started_at": {"type": "integer"},
        "beat_at": {"type": "integer"}, "heartbeat_age_ms": {"type": "integer"}, "version": {"type": "string"},
        "partitions": {"type": "array", "items": {"type": "integer"}}}});
    paths.insert(
        "/cluster".into(),
        json!({"get": operation(summary("get", "/cluster"), vec![], json_response(json!({"type": "object",
            "required": ["this_node", "partitions", "partition_routing", "nodes"], "properties": {
            "this_node": {"type": "string"}, "partitions": {"type": "integer"},
            "partition_routing": {"type": "boolean"}, "nodes": {"type": "array", "items": node},
            "leases": {"type": "array", "description": "With partition routing: every partition's lease",
                "items": {"type": "object", "required": ["partition", "owner"], "properties": {
                "partition": {"type": "integer"}, "owner": {"type": ["string", "null"]},
                "revision": {"type": "integer"}, "held_ms": {"type": "integer"},
                "renewed_ms_ago": {"type": "integer"}}}}}})))}),
    );
    let range = |name: &str, what: &str| param(name, "query", json!({"type": "integer"}), what);
    paths.insert(
        "/costs".into(),
        json!({"get": operation(summary("get", "/costs"), vec![
            range("since", "Jobs submitted at or after (microseconds)"),
            range("until", "Jobs submitted before (microseconds)"),
            param("tenant", "query", json!({"type": "string"}), "One tenant"),
        ], json_response(json!({"type": "object", "required": ["tenants"], "properties": {"tenants": {"type": "array",
            "items": {"type": "object", "required": ["tenant", "jobs", "input_tokens", "output_tokens", "cost_nanos", "cost_usd"],
            "properties": {"tenant": {"type": "string"}, "jobs": {"type": "integer"}, "input_tokens": {"type": "integer"},
            "output_tokens": {"type": "integer"}, "cost_nanos": {"type": "integer"}, "cost_usd": {"type": "number"}}}}}})))}),
    );
    for model in MODELS {
        model_paths(model, &mut paths);
    }
    let id = param("id", "path", json!({"type": "string", "format": "uuid"}), "The job");
    let mut logs = vec![id, after()];
    logs.extend(paging(json!({"type": "integer"})));
    paths.insert(
        "/jobs/{id}/logs".into(),
        json!({"get": operation(summary("get", "/jobs/{id}/logs"), logs, json_response(page_schema(json!({"type": "object"}))))}),
    );
    let lineage = vec![
        param("id", "path", json!({"type": "string", "format": "uuid"}), "The document"),
        after(),
        param(
            "direction",
            "query",
            json!({"enum": ["ancestors", "descendants", "both"]}),
            "Which way (both without it)",
        ),
        param(
            "depth",
            "query",
            json!({"type": "integer", "minimum": 1, "maximum": 64}),
            "How many derivations (64 without it)",
        ),
    ];
    paths.insert(
        "/documents/{id}/lineage".into(),
        json!({"get": operation(summary("get", "/documents/{id}/lineage"), lineage, json_response(json!({"type": "object",
            "required": ["id", "ancestors", "descendants", "truncated"]})))}),
    );
    let stream = param("stream", "path", json!({"type": "string"}), "The stream, such as job-<uuid>");
    let mut events = vec![stream, after()];
    events.extend(paging(json!({"type": "integer"})));
    paths.insert(
        "/streams/{stream}/events".into(),
        json!({"get": operation(summary("get", "/streams/{stream}/events"), events, json_response(page_schema(json!({"type": "object"}))))}),
    );
    let aggregate = param("aggregate", "path", json!({"enum": super::commands::AGGREGATES}), "The aggregate");
    let id = param("id", "path", json!({"type": "string", "format": "uuid"}), "The instance");
    let mut responses = errors();
    responses["200"] =
        json!({"description": "The intake's reply", "content": {"application/json": {"schema": schema("Reply")}}});
    for (code, why) in [
        ("409", "Conflict"),
        ("410", "The tenant is erased"),
        ("413", "Body too large"),
        ("422", "Rejected by the aggregate"),
    ] {
        responses[code] = json!({"description": why, "content": {"application/json": {"schema": schema("Reply")}}});
    }
    paths.insert(
        "/commands/{aggregate}/{id}".into(),
        json!({"post": {"summary": summary("post", "/commands/{aggregate}/{id}"), "parameters": [aggregate, id],
                         "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object",
                             "required": ["command_id", "type"], "additionalProperties": false, "properties": {
                                 "command_id": {"type": "string", "format": "uuid"}, "type": {"type": "string"},
                                 "id": {"type": "string", "format": "uuid"},
                                 "expected_version": {"type": "integer"}, "payload": {"type": "object"}},
                             "description": "The command, as on NATS (docs/protocol.md, schemas/commands/)"}}}},
                         "responses": responses}}),
    );
    let names = param("name", "path", json!({"type": "string"}), "The projection, as in /readyz");
    let mut responses = errors();
    responses["200"] = json_response(json!({"type": "object", "required": ["projection", "position"]}));
    paths.insert(
        "/projections/{name}/rebuild".into(),
        json!({"post": {"summary": summary("post", "/projections/{name}/rebuild"), "parameters": [names],
                         "responses": responses}}),
    );
    paths.insert(
        "/projections/{name}/reset".into(),
        json!({"post": {"summary": summary("post", "/projections/{name}/reset"), "parameters": [names],
                         "responses": responses}}),
    );
    let mut responses = errors();
    responses["200"] = json_response(json!({"type": "object",
        "required": ["name", "position", "head", "lag_events", "rebuild"]}));
    paths.insert(
        "/projections/{name}".into(),
        json!({"get": {"summary": summary("get", "/projections/{name}"), "parameters": [names], "responses": responses}}),
    );
    paths.insert("/providers".into(), plain(summary("get", "/providers")));
    let tenant = param("tenant", "path", json!({"type": "string"}), "The tenant");
    let mut responses = errors();
    responses["200"] = json_response(
        json!({"type": "object", "required": ["tenant", "erased_at", "destroyed_key", "position"],
        "properties": {"tenant": {"type": "string"}, "erased_at": {"type": "integer"}, "destroyed_key": {"type": "boolean"},
                       "position": {"type": "integer"},
                       "objects_deleted": {"type": "integer", "description": "The tenant's documents' objects deleted"}}}),
    );
    paths.insert(
        "/tenants/{tenant}/erase".into(),
        json!({"post": {"summary": summary("post", "/tenants/{tenant}/erase"), "parameters": [tenant],
                         "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object",
                             "required": ["reason", "confirm"], "additionalProperties": false,
                             "properties": {"reason": {"type": "string"},
                                            "confirm": {"type": "string", "description": "The tenant's name again"}}}}}},
                         "responses": responses}}),
    );
    documents::paths(&mut paths);
    identities::paths(&mut paths);
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Weft query API", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {"schemas": components()},
    })
}
