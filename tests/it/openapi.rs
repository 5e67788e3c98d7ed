//! Checks real answers against the schemas `/openapi.json` gives for them: the subset of JSON Schema the
//! document uses (`$ref`, `type` (one or several), `enum`, `required`, `properties`, `additionalProperties`,
//! `items`). A body that is not as documented fails the test with the path to what differs.

use serde_json::Value;

/// Checks `body`, the answer with `status` to `method path` (the path as the document writes it, such as
/// `/documents/{id}`), against its schema in `document`.
pub fn check(document: &Value, method: &str, path: &str, status: u16, body: &Value) {
    let schema =
        &document["paths"][path][method]["responses"][status.to_string()]["content"]["application/json"]["schema"];
    assert!(!schema.is_null(), "{method} {path} documents no JSON answer for {status}");
    if let Err(why) = conforms(document, schema, body, "") {
        panic!("{method} {path} answered {status} with a body that is not as documented: {why}\n{body}");
    }
}

fn conforms(document: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.rsplit('/').next().unwrap_or_default();
        return conforms(document, &document["components"]["schemas"][name], value, at);
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let kind = match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    let fits = types.is_empty() || types.contains(&kind) || (kind == "integer" && types.contains(&"number"));
    if !fits {
        return Err(format!("{at}: {kind}, documented as {types:?}"));
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        return Err(format!("{at}: {value} is not one of {allowed:?}"));
    }
    if let Value::Object(fields) = value {
        for required in schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            if !fields.contains_key(required) {
                return Err(format!("{at}: `{required}` is documented as required and missing"));
            }
        }
        for (name, field) in fields {
            let at = format!("{at}/{name}");
            match (&schema["properties"][name], &schema["additionalProperties"]) {
                (Value::Null, Value::Bool(false)) => return Err(format!("{at}: not documented")),
                (Value::Null, Value::Object(_)) => conforms(document, &schema["additionalProperties"], field, &at)?,
                (Value::Null, _) => {}
                (property, _) => conforms(document, property, field, &at)?,
            }
        }
    }
    if let Value::Array(items) = value
        && schema["items"].is_object()
    {
        for (i, item) in items.iter().enumerate() {
            conforms(document, &schema["items"], item, &format!("{at}/{i}"))?;
        }
    }
    Ok(())
}

#[test]
fn the_checker_tells_a_body_that_differs() {
    let document = serde_json::json!({"paths": {}, "components": {"schemas": {"P": {"type": "object",
        "required": ["a"], "properties": {"a": {"type": ["integer", "null"]}, "b": {"enum": ["x"]}}}}}});
    let schema = serde_json::json!({"$ref": "#/components/schemas/P"});
    assert!(conforms(&document, &schema, &serde_json::json!({"a": 1, "b": "x"}), "").is_ok());
    assert!(conforms(&document, &schema, &serde_json::json!({"a": null}), "").is_ok());
    assert!(conforms(&document, &schema, &serde_json::json!({"a": "1"}), "").is_err());
    assert!(conforms(&document, &schema, &serde_json::json!({"b": "x"}), "").is_err());
    assert!(conforms(&document, &schema, &serde_json::json!({"a": 1, "b": "y"}), "").is_err());
}

/// The routes every node answered before the HTTP edge moved to `src/http/` (issue 21): the redesign keeps
/// each of them, and a new route is added here on purpose.
const ROUTES_BEFORE_THE_REDESIGN: &[&str] = &[
    // Added since: the nodes sharing the store (issue 27).
    "GET /cluster",
    "GET /agents",
    "GET /agents/live",
    "GET /agents/{id}",
    "GET /agents/{id}/live",
    "POST /commands/{aggregate}/{id}",
    "GET /documents",
    "POST /documents",
    "GET /documents/live",
    "DELETE /documents/{id}",
    "GET /documents/{id}",
    "POST /documents/{id}/confirm",
    "GET /documents/{id}/download",
    "GET /documents/{id}/live",
    "POST /documents/{id}/upload-url",
    "GET /healthz",
    "GET /jobs",
    "GET /jobs/live",
    "GET /jobs/{id}",
    "GET /jobs/{id}/live",
    "GET /jobs/{id}/logs",
    "POST /objects/events",
    "GET /objects/{key}",
    "PUT /objects/{key}",
    "GET /openapi.json",
    "GET /projections/{name}",
    "POST /projections/{name}/rebuild",
    "POST /projections/{name}/reset",
    "GET /providers",
    "GET /readyz",
    "GET /schedules",
    "GET /schedules/live",
    "GET /schedules/{id}",
    "GET /schedules/{id}/live",
    "GET /streams/{stream}/events",
    "POST /tenants/{tenant}/erase",
    "GET /workflows",
    "GET /workflows/live",
    "GET /workflows/{id}",
    "GET /workflows/{id}/live",
    // Users and API keys (issue 22), added after the redesign.
    "POST /auth/token",
    "POST /auth/session",
    "DELETE /auth/session",
    "GET /auth/users",
    "POST /auth/users",
    "POST /auth/users/{name}/password",
    "POST /auth/users/{name}/disable",
    "GET /auth/keys",
    "POST /auth/keys",
    "POST /auth/keys/{id}/revoke",
    // Triggers and lineage (issue 24), added after the redesign.
    "GET /documents/{id}/lineage",
    "GET /triggers",
    "GET /triggers/live",
    "GET /triggers/{id}",
    "GET /triggers/{id}/live",
    // Prometheus metrics (issue 25), added after the redesign.
    "GET /metrics",
    "GET /costs",
];

#[test]
fn the_document_names_the_same_routes_as_before_the_edge_redesign() {
    let document = weft::http::openapi::document();
    let mut routes: Vec<String> = document["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, operations)| {
            operations.as_object().unwrap().keys().map(move |method| format!("{} {path}", method.to_uppercase()))
        })
        .collect();
    routes.sort();
    let mut expected: Vec<String> = ROUTES_BEFORE_THE_REDESIGN.iter().map(|r| (*r).to_owned()).collect();
    expected.sort();
    assert_eq!(routes, expected);
}
