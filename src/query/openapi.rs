//! The OpenAPI 3.1 document of the query API, built from the same model definitions the routes read with
//! (columns, filters), so a filter or a column added to a model shows up here without a second list.

use serde_json::{Value, json};

use super::read::{MAX_LIMIT, MODELS, Model};

/// The routes: method, path, summary. `tests/it/query_api.rs` checks that each is served and that the
/// server serves no other.
pub const ROUTES: &[(&str, &str, &str)] = &[
    ("get", "/healthz", "The process is up"),
    ("get", "/readyz", "Each projection's position and lag behind the store"),
    ("get", "/openapi.json", "This document"),
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
    ("get", "/documents/{id}/download", "A signed download URL of the document's current content"),
    ("delete", "/documents/{id}", "Delete the document, then its object"),
    ("post", "/objects/events", "S3 event notifications (Authorization: Bearer <webhook secret>)"),
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

fn item_schema(model: &Model) -> Value {
    let properties: serde_json::Map<String, Value> =
        model.columns.iter().map(|c| ((*c).to_owned(), json!({}))).collect();
    json!({"type": "object", "properties": properties})
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

/// The summary of the route at `path`.
fn summary(path: &str) -> &'static str {
    ROUTES.iter().find(|r| r.1 == path).map_or("", |r| r.2)
}

fn model_paths(model: &Model, paths: &mut serde_json::Map<String, Value>) {
    let id = || param("id", "path", json!({"type": "string", "format": "uuid"}), "The id");
    let mut list = vec![after()];
    list.extend(model.filters.iter().map(|f| param(f, "query", json!({"type": "string"}), "Equal to")));
    for (bound, what) in [("since", "at or after"), ("until", "before")] {
        list.push(param(
            bound,
            "query",
            json!({"type": "integer"}),
            &format!("{} {what} (µs since the epoch)", model.time),
        ));
    }
    list.extend(paging(json!({"type": "string", "format": "uuid"})));
    let base = format!("/{}", model.name);
    paths.insert(
        base.clone(),
        json!({"get": operation(summary(&base), list, json_response(page_schema(item_schema(model))))}),
    );
    let one = format!("{base}/{{id}}");
    paths.insert(
        one.clone(),
        json!({"get": operation(summary(&one), vec![id(), after()], json_response(item_schema(model)))}),
    );
    let list_live = format!("{base}/live");
    let mut filters: Vec<Value> =
        model.filters.iter().map(|f| param(f, "query", json!({"type": "string"}), "Equal to")).collect();
    filters.push(param("Last-Event-ID", "header", json!({"type": "integer"}), "Resume after this log position"));
    let list_sse = json!({"description": "text/event-stream of `item` and `left` events",
                          "content": {"text/event-stream": {"schema": {"type": "string"}}}});
    paths.insert(list_live.clone(), json!({"get": operation(summary(&list_live), filters, list_sse)}));
    let live = format!("{one}/live");
    let sse = json!({"description": "text/event-stream of `change` and `state` events",
                     "content": {"text/event-stream": {"schema": {"type": "string"}}}});
    let last = param("Last-Event-ID", "header", json!({"type": "integer"}), "Resume after this stream version");
    paths.insert(live.clone(), json!({"get": operation(summary(&live), vec![id(), after(), last], sse)}));
}

/// The documents' routes and the local store's signed URLs.
fn document_paths(paths: &mut serde_json::Map<String, Value>) {
    let id = || param("id", "path", json!({"type": "string", "format": "uuid"}), "The document");
    let object = || json!({"type": "object"});
    let with = |summary: &str, parameters: Vec<Value>, extra: &[(&str, &str)]| {
        let mut operation = operation(summary, parameters, json_response(object()));
        for (code, why) in extra {
            operation["responses"][*code] = json!({"description": why,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
        }
        operation
    };
    let tenant = param("Weft-Tenant", "header", json!({"type": "string"}), "The tenant (`default` without it)");
    let mut register = with(summary("/documents"), vec![tenant], &[("413", "Body too large"), ("422", "Rejected")]);
    register["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": {
        "type": "object", "required": ["name", "content_type", "size_bytes"],
        "properties": {"id": {"type": "string", "format": "uuid"}, "name": {"type": "string"},
                       "content_type": {"type": "string"}, "size_bytes": {"type": "integer", "minimum": 1}}}}}});
    register["responses"]["201"] = register["responses"]["200"].take();
    register["responses"]["200"] = json!({"description": "Not used: a registration answers 201"});
    paths["/documents"]["post"] = register;
    for (path, method) in [("/documents/{id}/upload-url", "post"), ("/documents/{id}/confirm", "post")] {
        paths.insert(path.into(), json!({ method: with(summary(path), vec![id()], &[("422", "Rejected")]) }));
    }
    let download = "/documents/{id}/download";
    paths.insert(download.into(), json!({"get": with(summary(download), vec![id()], &[("422", "Not uploaded")])}));
    paths["/documents/{id}"]["delete"] = with("Delete the document, then its object", vec![id()], &[]);
    let events = "/objects/events";
    let mut webhook = with(summary(events), vec![], &[("401", "No or another secret"), ("422", "A record refused")]);
    webhook["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": object()}}});
    paths.insert(events.into(), json!({ "post": webhook }));
    let key = param("key", "path", json!({"type": "string"}), "The object's key, `<tenant>/<document id>`");
    let signed = ["expires", "max", "sig"].map(|p| param(p, "query", json!({"type": "string"}), "Of the signed URL"));
    let mut parameters = vec![key];
    parameters.extend(signed);
    let key_path = "/objects/{key}";
    let refused = [("403", "Expired, tampered or misused URL"), ("413", "Over the signed size limit")];
    paths.insert(
        key_path.into(),
        json!({"put": with("Upload through a signed URL of the local object store", parameters.clone(), &refused),
               "get": with("Download through a signed URL of the local object store", parameters, &refused[..1])}),
    );
}

/// The document.
pub fn document() -> Value {
    let mut paths = serde_json::Map::new();
    let plain = |summary: &str| json!({"get": operation(summary, vec![], json_response(json!({"type": "object"})))});
    for (_, path, summary) in &ROUTES[..3] {
        paths.insert((*path).to_owned(), plain(summary));
    }
    for model in MODELS {
        model_paths(model, &mut paths);
    }
    let id = param("id", "path", json!({"type": "string", "format": "uuid"}), "The job");
    let mut logs = vec![id, after()];
    logs.extend(paging(json!({"type": "integer"})));
    paths.insert(
        "/jobs/{id}/logs".into(),
        json!({"get": operation(summary("/jobs/{id}/logs"), logs, json_response(page_schema(json!({"type": "object"}))))}),
    );
    let stream = param("stream", "path", json!({"type": "string"}), "The stream, such as job-<uuid>");
    let mut events = vec![stream, after()];
    events.extend(paging(json!({"type": "integer"})));
    paths.insert(
        "/streams/{stream}/events".into(),
        json!({"get": operation(summary("/streams/{stream}/events"), events, json_response(page_schema(json!({"type": "object"}))))}),
    );
    let aggregate = param("aggregate", "path", json!({"enum": super::AGGREGATES}), "The aggregate");
    let id = param("id", "path", json!({"type": "string", "format": "uuid"}), "The instance");
    let mut responses = errors();
    responses["200"] =
        json!({"description": "The intake's reply", "content": {"application/json": {"schema": {"type": "object"}}}});
    for (code, why) in [("409", "Conflict"), ("413", "Body too large"), ("422", "Rejected by the aggregate")] {
        responses[code] = json!({"description": why, "content": {"application/json": {"schema": {"type": "object"}}}});
    }
    paths.insert(
        "/commands/{aggregate}/{id}".into(),
        json!({"post": {"summary": summary("/commands/{aggregate}/{id}"), "parameters": [aggregate, id],
                         "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object",
                             "required": ["command_id", "type"]}}}},
                         "responses": responses}}),
    );
    let names = param("name", "path", json!({"type": "string"}), "The projection, as in /readyz");
    let mut responses = errors();
    responses["200"] = json_response(json!({"type": "object", "required": ["projection", "position"]}));
    paths.insert(
        "/projections/{name}/rebuild".into(),
        json!({"post": {"summary": summary("/projections/{name}/rebuild"), "parameters": [names],
                         "responses": responses}}),
    );
    paths.insert(
        "/projections/{name}/reset".into(),
        json!({"post": {"summary": summary("/projections/{name}/reset"), "parameters": [names],
                         "responses": responses}}),
    );
    let mut responses = errors();
    responses["200"] = json_response(json!({"type": "object",
        "required": ["name", "position", "head", "lag_events", "rebuild"]}));
    paths.insert(
        "/projections/{name}".into(),
        json!({"get": {"summary": summary("/projections/{name}"), "parameters": [names], "responses": responses}}),
    );
    paths.insert("/providers".into(), plain(summary("/providers")));
    document_paths(&mut paths);
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Weft query API", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {"schemas": {"Error": {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["kind", "message"],
            "properties": {"kind": {"type": "string"}, "message": {"type": "string"}}}}}}},
    })
}
