//! The API description of the documents' routes.

use serde_json::{Value, json};

use super::*;

/// The documents' routes and the local store's signed URLs.
pub(super) fn paths(paths: &mut serde_json::Map<String, Value>) {
    let id = || param("id", "path", json!({"type": "string", "format": "uuid"}), "The document");
    let object = || json!({"type": "object"});
    let with = |summary: &str, parameters: Vec<Value>, extra: &[(&str, &str)], answer: Value| {
        let mut operation = operation(summary, parameters, json_response(answer));
        for (code, why) in extra {
            operation["responses"][*code] = json!({"description": why,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
        }
        operation
    };
    let tenant = param("Weft-Tenant", "header", json!({"type": "string"}), "The tenant (`default` without it)");
    let actor = param("Weft-Actor", "header", json!({"type": "string"}), "Who (the document's owner)");
    let registered = &[
        ("409", "The id is another document's (another tenant's, or registered with other fields)"),
        ("410", "The tenant is erased"),
        ("413", "Body too large"),
        ("422", "Rejected"),
    ];
    let mut register = with(summary("post", "/documents"), vec![tenant, actor], registered, schema("Registered"));
    register["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": {
        "type": "object", "required": ["name", "content_type", "size_bytes"], "additionalProperties": false,
        "properties": {"id": {"type": "string", "format": "uuid",
                              "description": "For a retry: the same registration again answers the same upload"},
                       "name": {"type": "string"}, "content_type": {"type": "string"},
                       "size_bytes": {"type": "integer", "minimum": 1},
                       "labels": {"type": "object", "maxProperties": 32, "additionalProperties": {"type": "string"}}}}}}});
    register["responses"]["201"] = register["responses"]["200"].take();
    register["responses"]["200"] = json!({"description": "Not used: a registration answers 201"});
    paths["/documents"]["post"] = register;
    let upload = json!({"type": "object", "required": ["key", "upload"], "properties": {
        "key": {"type": "string", "description": "The object the URL writes: the document's own while its upload is pending, one of its own for a new version"},
        "upload": schema("Presigned")}});
    let path = "/documents/{id}/upload-url";
    paths.insert(path.into(), json!({"post": with(summary("post", path), vec![id()], &[("422", "Rejected")], upload)}));
    let path = "/documents/{id}/confirm";
    let key = param("key", "query", json!({"type": "string"}), "A new version's object, as its upload URL named it");
    let confirm = with(summary("post", path), vec![id(), key], &[("422", "Rejected")], schema("Effect"));
    paths.insert(path.into(), json!({ "post": confirm }));
    let download = "/documents/{id}/download";
    let answer = json!({"type": "object", "required": ["download"], "properties": {"download": schema("Presigned")}});
    paths.insert(
        download.into(),
        json!({"get": with(
            summary("get", download),
            vec![id(), param("version", "query", json!({"type": "integer", "minimum": 1}), "The version (the latest without it)")],
            &[("422", "Not uploaded, or no such version")],
            answer
        )}),
    );
    paths["/documents/{id}"]["delete"] = with(summary("delete", "/documents/{id}"), vec![id()], &[], schema("Effect"));
    let events = "/objects/events";
    let record = json!({"type": "object", "required": ["index", "key"], "properties": {
        "index": {"type": "integer"}, "key": {"type": "string"},
        "outcome": {"type": "string"}, "reason": {"type": "string"}, "error": {"type": "object"}}});
    let records = json!({"type": "object", "required": ["records"],
                         "properties": {"records": {"type": "array", "items": record}}});
    let refused =
        &[("401", "No or another secret"), ("422", "A record refused"), ("503", "A record could not be handled now")];
    let mut webhook = with(summary("post", events), vec![], refused, records);
    webhook["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": object()}}});
    paths.insert(events.into(), json!({ "post": webhook }));
    let key = param("key", "path", json!({"type": "string"}), "The object's key, `<tenant>/<document id>`");
    let signed = ["expires", "max", "sig"].map(|p| param(p, "query", json!({"type": "string"}), "Of the signed URL"));
    let mut parameters = vec![key];
    parameters.extend(signed);
    let key_path = "/objects/{key}";
    let refused = [
        ("403", "Expired, tampered or misused URL"),
        ("413", "Over the signed size limit"),
        ("412", "The URL was used already, or another upload overtook it: an upload URL writes once"),
        ("422", "The document is deleted"),
    ];
    let bytes = json!({"description": "The object's bytes", "content": {"application/octet-stream": {"schema": {"type": "string"}}}});
    let mut uploads = parameters.clone();
    uploads.push(param(
        "replaces",
        "query",
        json!({"type": "string"}),
        "Of the signed URL: the etag it replaces, or `none`",
    ));
    let mut put = with(summary("put", key_path), uploads, &refused, object());
    put["responses"]["200"] = json!({"description": "Stored"});
    let mut get = with(summary("get", key_path), parameters, &refused[..1], object());
    get["responses"]["200"] = bytes;
    paths.insert(key_path.into(), json!({"put": put, "get": get}));
}
