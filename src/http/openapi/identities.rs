//! The API description of the users' and API keys' routes.

use serde_json::{Value, json};

use super::*;

/// The users' and API keys' routes.
pub(super) fn paths(paths: &mut serde_json::Map<String, Value>) {
    let body = |required: &[&str], properties: Value| {
        json!({"required": true, "content": {"application/json": {"schema": {"type": "object",
            "required": required, "additionalProperties": false, "properties": properties}}}})
    };
    let with = |method: &str, path: &str, parameters: Vec<Value>, request: Value, extra: &[(&str, &str)]| {
        let mut operation = operation(summary(method, path), parameters, json_response(json!({"type": "object"})));
        operation["requestBody"] = request;
        for (code, why) in extra {
            operation["responses"][*code] = json!({"description": why,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
        }
        operation
    };
    let list = |path: &str, cursor: &str| {
        let mut parameters = vec![after(), param("status", "query", json!({"type": "string"}), "Only these")];
        parameters.extend(paging(json!({"type": "string", "description": cursor})));
        operation(summary("get", path), parameters, json_response(page_schema(json!({"type": "object"}))))
    };
    let string = json!({"type": "string"});
    let tenants = json!({"type": "array", "items": {"type": "string"}, "minItems": 1,
                         "description": "Its tenants; `*`: every tenant"});
    let role = json!({"type": "string", "enum": ["admin", "operator", "user", "guest"]});
    let login = body(
        &["user", "password"],
        json!({"user": string, "password": string,
        "ttl_secs": {"type": "integer", "minimum": 1, "maximum": 86400}}),
    );
    let mut token = with(
        "post",
        "/auth/token",
        vec![],
        login,
        &[
            ("401", "Wrong user name or password, or a disabled user"),
            ("429", "Too many attempts for this user name (Retry-After)"),
        ],
    );
    token["responses"]["200"] = json_response(json!({"type": "object",
        "required": ["token", "token_type", "expires_in", "subject", "role", "tenants"]}));
    paths.insert("/auth/token".into(), json!({ "post": token }));
    let login = body(
        &["user", "password"],
        json!({"user": string, "password": string,
        "ttl_secs": {"type": "integer", "minimum": 1, "maximum": 86400}}),
    );
    let mut session = with(
        "post",
        "/auth/session",
        vec![],
        login,
        &[
            ("401", "Wrong user name or password, or a disabled user"),
            ("429", "Too many attempts for this user name (Retry-After)"),
        ],
    );
    session["responses"]["200"] = json_response(json!({"type": "object",
        "required": ["csrf_token", "expires_in", "subject", "role", "tenants"],
        "properties": {"csrf_token": {"type": "string",
            "description": "Send it in X-CSRF-Token with every request of the session that changes state"}}}));
    let mut end = operation(summary("delete", "/auth/session"), vec![], json!({"description": "Not used"}));
    end["responses"]["204"] = json!({"description": "The cookie is removed"});
    paths.insert("/auth/session".into(), json!({"post": session, "delete": end}));
    let user = body(
        &["name", "role", "tenants"],
        json!({"name": string, "role": role, "tenants": tenants,
        "password": {"type": "string", "minLength": 8},
        "password_hash": {"type": "string", "description": "An Argon2 PHC string or a bcrypt hash, imported"}}),
    );
    let mut add = with("post", "/auth/users", vec![], user, &[("409", "A user of that name exists")]);
    add["responses"]["201"] = add["responses"]["200"].take();
    add["responses"]["200"] = json!({"description": "Not used: a new user answers 201"});
    paths.insert(
        "/auth/users".into(),
        json!({"get": list("/auth/users", "The last name of the previous page"), "post": add}),
    );
    let name = || param("name", "path", json!({"type": "string"}), "The user's name");
    let secret = body(&[], json!({"password": {"type": "string", "minLength": 8}, "password_hash": string}));
    let path = "/auth/users/{name}/password";
    paths.insert(path.into(), json!({"post": with("post", path, vec![name()], secret, &[("403", "Another user's")])}));
    let reason = || body(&["reason"], json!({"reason": {"type": "string"}}));
    let path = "/auth/users/{name}/disable";
    paths.insert(
        path.into(),
        json!({"post": with("post", path, vec![name()], reason(), &[("409", "Disabled already")])}),
    );
    let key = body(
        &["name", "role", "tenants"],
        json!({"name": string, "role": role, "tenants": tenants,
        "ttl_secs": {"type": "integer", "minimum": 1}}),
    );
    let mut create = with("post", "/auth/keys", vec![], key, &[]);
    create["responses"]["201"] = json_response(json!({"type": "object",
        "required": ["id", "key", "name", "role", "tenants", "expires_at"],
        "properties": {"key": {"type": "string", "description": "The key: shown this once, never kept"}}}));
    create["responses"]["200"] = json!({"description": "Not used: a new key answers 201"});
    paths.insert(
        "/auth/keys".into(),
        json!({"get": list("/auth/keys", "The last id of the previous page"), "post": create}),
    );
    let id = param("id", "path", json!({"type": "string"}), "The key's id");
    let path = "/auth/keys/{id}/revoke";
    paths.insert(path.into(), json!({"post": with("post", path, vec![id], reason(), &[("409", "Revoked already")])}));
}
