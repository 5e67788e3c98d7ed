//! Identity, roles and tenant boundaries over HTTP, on a real `weft serve` with authentication on (its
//! default): every route of the OpenAPI document against tokens that must be refused and roles that must
//! be refused or let in, then what each identity sees of another tenant's and another user's data.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use weft::auth::token::{Secret, issue};
use weft::auth::{Role, token};
use weft::http::access::{Rule, rule};
use weft::http::openapi::ROUTES;

use crate::serve::{Serve, raw_http};

/// A node with authentication on, and its secret.
fn node() -> (tempfile::TempDir, Serve, Secret) {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &[]);
    let secret = Secret::load(&dir.path().join("auth.secret")).expect("the node made its secret beside its store");
    (dir, serve, secret)
}

pub fn token_of(secret: &Secret, subject: &str, role: Role, tenants: &[&str]) -> String {
    let tenants: Vec<String> = tenants.iter().map(|t| (*t).to_owned()).collect();
    issue(secret, subject, role, &tenants, Duration::from_secs(600))
}

/// A token signed with the node's secret whose claims are these.
pub fn forged(secret_bytes: &[u8], claims: Value, alg: Algorithm) -> String {
    jsonwebtoken::encode(&Header::new(alg), &claims, &EncodingKey::from_secret(secret_bytes)).unwrap()
}

pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// `method path` with `token` (none: no Authorization) and these headers and body.
pub fn call(
    addr: &str,
    token: Option<&str>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> (u16, Value) {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut all: Vec<(&str, &str)> = headers.to_vec();
    if let Some(bearer) = &bearer {
        all.push(("Authorization", bearer));
    }
    let body = if method == "GET" || method == "DELETE" { String::new() } else { body.to_string() };
    let response = raw_http(addr, method, path, &all, body.as_bytes());
    let json = serde_json::from_str(&response.body).unwrap_or(Value::Null);
    (response.status, json)
}

/// The status of `GET path` with `token`, read from the status line alone: for live feeds, which do not end.
fn status_of_feed(addr: &str, token: &str, path: &str) -> u16 {
    use std::io::{BufRead, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n").unwrap();
    let mut line = String::new();
    std::io::BufReader::new(stream).read_line(&mut line).unwrap();
    line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{path}: {line:?}"))
}

/// Registers a document as `token`'s identity; its id.
fn register(addr: &str, token: &str, tenant: &str, name: &str) -> String {
    let body = json!({"name": name, "content_type": "text/plain", "size_bytes": 10});
    let (status, answer) = call(addr, Some(token), "POST", "/documents", &[("Weft-Tenant", tenant)], &body);
    assert_eq!(status, 201, "{answer}");
    answer["id"].as_str().unwrap().to_owned()
}

/// A new API key of `role` in tenant acme.
pub fn api_key(addr: &str, admin: &str, role: &str) -> String {
    let body = json!({"name": format!("svc-{role}"), "role": role, "tenants": ["acme"]});
    let (status, made) = call(addr, Some(admin), "POST", "/auth/keys", &[], &body);
    assert_eq!(status, 201, "{made}");
    made["key"].as_str().unwrap().to_owned()
}

/// An API key made and revoked.
pub fn revoked_key(addr: &str, admin: &str) -> String {
    let body = json!({"name": "leaked", "role": "admin", "tenants": ["*"]});
    let (status, made) = call(addr, Some(admin), "POST", "/auth/keys", &[], &body);
    assert_eq!(status, 201, "{made}");
    let revoke = format!("/auth/keys/{}/revoke", made["id"].as_str().unwrap());
    assert_eq!(call(addr, Some(admin), "POST", &revoke, &[], &json!({"reason": "leaked"})).0, 200);
    made["key"].as_str().unwrap().to_owned()
}

/// The login token of a new user of `role` in tenant acme.
pub fn user_login(addr: &str, admin: &str, role: &str) -> String {
    let name = format!("login-{role}");
    let body = json!({"name": name, "role": role, "tenants": ["acme"], "password": "a long password"});
    let (status, answer) = call(addr, Some(admin), "POST", "/auth/users", &[], &body);
    assert_eq!(status, 201, "{answer}");
    let (status, answer) =
        call(addr, None, "POST", "/auth/token", &[], &json!({"user": name, "password": "a long password"}));
    assert_eq!(status, 200, "{answer}");
    answer["token"].as_str().unwrap().to_owned()
}

/// The login token of an admin that was disabled after it logged in.
fn disabled_login(addr: &str, admin: &str) -> String {
    let token = user_login(addr, admin, "admin");
    let (status, answer) =
        call(addr, Some(admin), "POST", "/auth/users/login-admin/disable", &[], &json!({"reason": "x"}));
    assert_eq!(status, 200, "{answer}");
    token
}

/// The route's path with its parameters filled in.
fn concrete(path: &str, document: &str) -> String {
    path.replace("{id}", document)
        .replace("{aggregate}", "document")
        .replace("{stream}", &format!("document-{document}"))
        .replace("{name}", "documents")
        .replace("{tenant}", "zeta")
        .replace("{key}", "acme/x")
}

/// Tokens every route and subject must refuse as `unauthenticated`, with why: forged claims signed with the
/// node's own secret (read from `secret_file`), other algorithms and signatures, garbage, and credentials of
/// the node's own users and keys that no longer hold.
pub fn bad_tokens(secret_file: &std::path::Path, addr: &str, admin: &str) -> Vec<(&'static str, Option<String>)> {
    // The secret's bytes, to forge tokens the node must refuse for their claims rather than their signature.
    let bytes = std::fs::read_to_string(secret_file).unwrap();
    let bytes = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.decode(bytes.trim()).unwrap()
    };
    let claims = |exp: i64, nbf: i64, iss: &str, aud: &str| {
        json!({"sub": "eve", "role": "admin", "tenants": ["*"], "iss": iss, "aud": aud,
               "exp": now() + exp, "nbf": now() + nbf, "iat": now()})
    };
    let unsigned = {
        use base64::Engine as _;
        let b64 = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), b64(&claims(600, 0, "weft", "weft").to_string()))
    };
    vec![
        ("no token", None),
        ("expired", Some(forged(&bytes, claims(-600, -700, "weft", "weft"), Algorithm::HS256))),
        ("not yet valid", Some(forged(&bytes, claims(1200, 600, "weft", "weft"), Algorithm::HS256))),
        ("bad signature", Some(forged(&[9; 32], claims(600, 0, "weft", "weft"), Algorithm::HS256))),
        ("wrong issuer", Some(forged(&bytes, claims(600, 0, "someone", "weft"), Algorithm::HS256))),
        ("wrong audience", Some(forged(&bytes, claims(600, 0, "weft", "elsewhere"), Algorithm::HS256))),
        ("alg none", Some(unsigned)),
        ("another algorithm", Some(forged(&bytes, claims(600, 0, "weft", "weft"), Algorithm::HS384))),
        ("garbage", Some("not.a.token".into())),
        ("oversized", Some("a".repeat(token::MAX_TOKEN_BYTES + 10))),
        ("revoked key", Some(revoked_key(addr, admin))),
        ("unknown key", Some(format!("weft_{}_{}", "0".repeat(32), "A".repeat(43)))),
        ("disabled user's login", Some(disabled_login(addr, admin))),
    ]
}

#[test]
fn every_route_refuses_bad_tokens_and_lets_in_only_the_roles_its_rule_names() {
    let (_dir, serve, secret) = node();
    let addr = &serve.addr;
    let admin = token_of(&secret, "root", Role::Admin, &["*"]);
    let document = register(addr, &admin, "acme", "a.txt");
    let bad = bad_tokens(&_dir.path().join("auth.secret"), addr, &admin);
    let roles = [
        ("admin", Role::Admin, admin.clone()),
        ("operator", Role::Operator, token_of(&secret, "olga", Role::Operator, &["acme"])),
        ("user", Role::User, token_of(&secret, "ann", Role::User, &["acme"])),
        ("guest", Role::Guest, token_of(&secret, "gus", Role::Guest, &["acme"])),
        ("operator's API key", Role::Operator, api_key(addr, &admin, "operator")),
        ("user's login", Role::User, user_login(addr, &admin, "user")),
    ];
    let body = json!({"command_id": uuid::Uuid::now_v7(), "type": "delete", "payload": {"reason": "x"},
                      "name": "b.txt", "content_type": "text/plain", "size_bytes": 10, "reason": "test"});
    for (method, path, _) in ROUTES {
        let rule = rule(method, path).unwrap();
        let url = concrete(path, &document);
        let method = method.to_ascii_uppercase();
        if matches!(rule, Rule::Open | Rule::Signed) {
            let (status, answer) = call(addr, None, &method, &url, &[], &body);
            assert!(status != 401 || *path == "/objects/events", "{method} {path} is open, answered {status} {answer}");
            continue;
        }
        for (why, token) in &bad {
            let (status, answer) = call(addr, token.as_deref(), &method, &url, &[], &body);
            assert_eq!(status, 401, "{method} {path} with {why}: {answer}");
            assert_eq!(answer["error"]["kind"], "unauthenticated", "{method} {path} with {why}");
        }
        for (name, role, token) in &roles {
            // Commands are checked on their type too: a `delete` of a document needs WriteDocuments.
            let allowed = match rule {
                Rule::Needs(permission) | Rule::Page(permission) => role.may(permission),
                Rule::Commands => role.may(weft::auth::Permission::WriteDocuments),
                Rule::Open | Rule::Signed => true,
            };
            let (status, answer) = if url.ends_with("/live") {
                (status_of_feed(addr, token, &url), Value::Null)
            } else {
                call(addr, Some(token), &method, &url, &[], &body)
            };
            if allowed {
                assert!(status != 401 && status != 403, "{method} {path} refused a {name}: {status} {answer}");
            } else {
                assert_eq!(status, 403, "{method} {path} let a {name} in: {answer}");
                assert_eq!(answer["error"]["kind"], "forbidden");
            }
        }
    }
}

#[test]
fn no_identity_reaches_another_tenants_or_another_users_data() {
    let (_dir, serve, secret) = node();
    let addr = &serve.addr;
    let admin = token_of(&secret, "root", Role::Admin, &["*"]);
    let ann = token_of(&secret, "ann", Role::User, &["acme"]);
    let bob = token_of(&secret, "bob", Role::User, &["acme"]);
    let globex = token_of(&secret, "gina", Role::Operator, &["globex"]);
    let acme_guest = token_of(&secret, "gus", Role::Guest, &["acme"]);

    // Ann's and Bob's documents in acme; the subject is the owner, whatever Weft-Actor says.
    let body = json!({"name": "ann.txt", "content_type": "text/plain", "size_bytes": 10});
    let (status, answer) =
        call(addr, Some(&ann), "POST", "/documents", &[("Weft-Tenant", "acme"), ("Weft-Actor", "mallory")], &body);
    assert_eq!(status, 201, "{answer}");
    let anns = answer["id"].as_str().unwrap().to_owned();
    let bobs = register(addr, &bob, "acme", "bob.txt");
    let globexs = register(addr, &globex, "globex", "g.txt");
    // Wait until the read model has all three (the admin sees everything).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, list) = call(addr, Some(&admin), "GET", "/documents", &[], &Value::Null);
        if list["items"].as_array().is_some_and(|items| items.len() == 3) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the documents never showed: {list}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let ids = |token: &str, path: &str| -> Vec<String> {
        let (status, list) = call(addr, Some(token), "GET", path, &[], &Value::Null);
        assert_eq!(status, 200, "{path}: {list}");
        list["items"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap().to_owned()).collect()
    };
    let (_, item) = call(addr, Some(&admin), "GET", &format!("/documents/{anns}"), &[], &Value::Null);
    assert_eq!((item["owner"].as_str(), item["tenant"].as_str()), (Some("ann"), Some("acme")), "{item}");

    // Lists: each sees its own.
    assert_eq!(ids(&ann, "/documents"), vec![anns.clone()]);
    assert_eq!(ids(&bob, "/documents"), vec![bobs.clone()]);
    assert_eq!(ids(&globex, "/documents"), vec![globexs.clone()]);
    // A filter naming another tenant does not widen the view.
    assert!(ids(&globex, "/documents?tenant=acme").is_empty());
    let mut acme = ids(&acme_guest, "/documents");
    acme.sort();
    let mut want = vec![anns.clone(), bobs.clone()];
    want.sort();
    assert_eq!(acme, want, "a guest of acme reads acme's documents");

    // Items, downloads, upload URLs, histories and commands of another's: 404, as a missing one.
    let missing = uuid::Uuid::now_v7().to_string();
    for (token, other) in [(&globex, &anns), (&ann, &bobs), (&bob, &anns), (&ann, &globexs)] {
        for (method, path) in [
            ("GET", format!("/documents/{other}")),
            ("GET", format!("/documents/{other}/download")),
            ("POST", format!("/documents/{other}/upload-url")),
            ("POST", format!("/documents/{other}/confirm")),
            ("DELETE", format!("/documents/{other}")),
        ] {
            let (status, answer) = call(addr, Some(token), method, &path, &[], &json!({}));
            assert_eq!(status, 404, "{method} {path}: {answer}");
            let (missing_status, _) =
                call(addr, Some(token), method, &path.replace(other.as_str(), &missing), &[], &json!({}));
            assert!(
                missing_status == 404 || missing_status == 422,
                "{method} {path} of a missing one: {missing_status}"
            );
        }
        let delete = json!({"command_id": uuid::Uuid::now_v7(), "type": "delete", "payload": {"reason": "mine now"}});
        let (status, answer) = call(addr, Some(token), "POST", &format!("/commands/document/{other}"), &[], &delete);
        assert_eq!(status, 404, "a command to another's document: {answer}");
    }
    let (status, _) = call(addr, Some(&globex), "GET", &format!("/streams/document-{anns}/events"), &[], &Value::Null);
    assert_eq!(status, 404, "another tenant's history");

    // Tenants: asking for one that is not yours is refused; so is a payload naming another.
    let body = json!({"name": "x.txt", "content_type": "text/plain", "size_bytes": 10});
    let (status, _) = call(addr, Some(&ann), "POST", "/documents", &[("Weft-Tenant", "globex")], &body);
    assert_eq!(status, 403);
    let register = json!({"command_id": uuid::Uuid::now_v7(), "type": "register", "payload": {
        "name": "x", "content_type": "text/plain", "declared_size_bytes": 1, "tenant": "globex", "owner": "ann"}});
    let (status, answer) =
        call(addr, Some(&ann), "POST", &format!("/commands/document/{}", uuid::Uuid::now_v7()), &[], &register);
    assert_eq!(status, 403, "{answer}");

    // What only an admin may do.
    for (method, path) in [("POST", "/tenants/acme/erase"), ("POST", "/projections/documents/rebuild")] {
        for token in [&ann, &globex, &acme_guest] {
            let (status, _) = call(addr, Some(token), method, path, &[], &json!({"reason": "no"}));
            assert_eq!(status, 403, "{method} {path}");
        }
    }
    // The guest may not write, the user may not command an agent.
    let (status, _) = call(addr, Some(&acme_guest), "POST", "/documents", &[], &body);
    assert_eq!(status, 403);
    let define = json!({"command_id": uuid::Uuid::now_v7(), "type": "define", "payload": {"name": "w", "steps": []}});
    let (status, _) =
        call(addr, Some(&ann), "POST", &format!("/commands/workflow/{}", uuid::Uuid::now_v7()), &[], &define);
    assert_eq!(status, 403);
}

#[test]
fn the_node_writes_an_admin_token_the_cli_finds_and_weft_token_issue_signs_with_its_secret() {
    use std::os::unix::fs::PermissionsExt as _;
    let (dir, serve, _secret) = node();
    let file = dir.path().join("admin.token");
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(dir.path().join("auth.secret")).unwrap().permissions().mode() & 0o777, 0o600);
    let cli = |args: &[&str], env: &[(&str, &str)]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
            .args(args)
            .args(["--url", &format!("http://{}", serve.addr)])
            .env_remove("WEFT_TOKEN")
            .envs(env.iter().copied())
            .current_dir(dir.path())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Without a token the node refuses, and says how to authenticate.
    let (ok, _, stderr) = cli(&["projection", "list"], &[("WEFT_TOKEN_FILE", "/nonexistent/token")]);
    assert!(!ok && stderr.contains("token file"), "{stderr}");
    let (ok, _, stderr) = cli(&["agent", "list"], &[]);
    assert!(!ok && stderr.contains("401 unauthenticated"), "{stderr}");
    // With the node's admin token file.
    let (ok, stdout, stderr) = cli(&["agent", "list"], &[("WEFT_TOKEN_FILE", file.to_str().unwrap())]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("summarize"), "{stdout}");
    // A token issued beside the node's data: a guest of acme reads, and may not write.
    let store = dir.path().join("events.db");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["token", "issue", "--subject", "gus", "--role", "guest", "--tenant", "acme", "--ttl", "1h"])
        .args(["--store", store.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let guest = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let (ok, _, stderr) = cli(&["agent", "list"], &[("WEFT_TOKEN", &guest)]);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = cli(&["projection", "rebuild", "documents"], &[("WEFT_TOKEN", &guest)]);
    assert!(!ok && stderr.contains("403 forbidden"), "{stderr}");
    // The token never shows in what the node logs.
    assert!(!serve.log().contains(&guest));
}

#[test]
fn bad_token_issue_arguments_and_a_bad_secret_file_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("events.db");
    let secret = dir.path().join("auth.secret");
    let weft = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_weft")).args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let issue = |extra: &[&str]| {
        let mut args = vec!["token", "issue", "--store", store.to_str().unwrap()];
        args.extend_from_slice(extra);
        weft(&args)
    };
    // No secret beside the store yet: refused, naming the file, and none is made.
    let (ok, stdout, stderr) = issue(&["--subject", "s", "--role", "admin", "--tenant", "*"]);
    assert!(!ok && stdout.is_empty() && stderr.contains("auth.secret"), "{stderr}");
    assert!(!secret.exists());
    std::fs::write(&secret, "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldC1zZWNyZXQ=").unwrap();
    for (args, expected) in [
        (&["--subject", "s", "--role", "root", "--tenant", "acme"][..], "invalid value 'root'"),
        (&["--subject", "s", "--role", "user"][..], "--tenant"),
        (&["--subject", "s", "--role", "user", "--tenant", "a b"][..], "not a tenant name"),
        (&["--subject", "", "--role", "user", "--tenant", "acme"][..], "--subject"),
        (&["--subject", "s", "--role", "user", "--tenant", "acme", "--ttl", "10y"][..], "the unit is"),
        (&["--subject", "s", "--role", "user", "--tenant", "acme", "--ttl", "0s"][..], "between 1s and 366d"),
    ] {
        let (ok, stdout, stderr) = issue(args);
        assert!(!ok && stdout.is_empty(), "{args:?} was accepted");
        assert!(stderr.contains(expected) && !stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    let (ok, stdout, _) = issue(&["--subject", "s", "--role", "user", "--tenant", "acme", "--ttl", "2h"]);
    assert!(ok && stdout.trim().split('.').count() == 3, "{stdout}");
    // A node given a secret file too short to sign with does not start, and says why without the secret.
    std::fs::write(&secret, "tiny-secret-value").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["serve", "--http-addr", "127.0.0.1:0", "--store", store.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("at least 32 are needed"), "{stderr}");
    assert!(!stderr.contains("tiny-secret-value"), "the secret was printed: {stderr}");
}

#[test]
fn pages_of_other_origins_cannot_change_anything_and_get_cors_only_where_configured() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &["--cors-origin", "https://app.example"]);
    let addr = serve.addr.as_str();
    let admin = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
    let bearer = format!("Bearer {}", admin.trim());
    let body = br#"{"name": "a.txt", "content_type": "text/plain", "size_bytes": 3}"#;
    let post = |headers: &[(&str, &str)]| {
        let mut all = vec![("Authorization", bearer.as_str())];
        all.extend_from_slice(headers);
        raw_http(addr, "POST", "/documents", &all, body)
    };
    // A form's body, or none named: 415. JSON: taken.
    for content_type in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"] {
        let answer = post(&[("Content-Type", content_type)]);
        assert_eq!(answer.status, 415, "{content_type}: {}", answer.body);
        assert!(answer.body.contains("unsupported_media_type"));
    }
    assert_eq!(post(&[("Content-Type", "application/json; charset=utf-8")]).status, 201);
    // Another origin: 403; the node's own and the configured one: taken.
    let json = ("Content-Type", "application/json");
    let answer = post(&[json, ("Origin", "https://evil.example")]);
    assert_eq!(answer.status, 403, "{}", answer.body);
    let own = format!("http://{addr}");
    assert_eq!(post(&[json, ("Origin", &own)]).status, 201);
    assert_eq!(post(&[json, ("Origin", "https://app.example")]).status, 201);
    // Reads are not refused for their origin; CORS headers only for the configured origin.
    let read = |origin: &str| {
        raw_http(addr, "GET", "/documents", &[("Authorization", bearer.as_str()), ("Origin", origin)], b"")
    };
    let configured = read("https://app.example");
    assert_eq!(configured.status, 200);
    assert_eq!(configured.header("access-control-allow-origin"), Some("https://app.example"));
    let other = read("https://evil.example");
    assert_eq!(other.header("access-control-allow-origin"), None, "{other:?}");
    let preflight = raw_http(
        addr,
        "OPTIONS",
        "/documents",
        &[
            ("Origin", "https://app.example"),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "authorization, content-type"),
        ],
        b"",
    );
    assert!(preflight.status < 300, "{preflight:?}");
    assert_eq!(preflight.header("access-control-allow-origin"), Some("https://app.example"));
    serve.stop();

    // Without --cors-origin, no CORS at all.
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &[]);
    let admin = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
    let bearer = format!("Bearer {}", admin.trim());
    let answer = raw_http(
        &serve.addr,
        "GET",
        "/documents",
        &[("Authorization", &bearer), ("Origin", "https://app.example")],
        b"",
    );
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("access-control-allow-origin"), None);
    serve.stop();
}

/// Runs `weft` with `token` against the node at `addr`: success, stdout, stderr.
fn weft_as(addr: &str, token: &str, args: &[&str]) -> (bool, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .args(["--url", &format!("http://{addr}")])
        .env("WEFT_TOKEN", token)
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (output.status.success(), text(&output.stdout), text(&output.stderr))
}

#[test]
fn a_user_reads_and_downloads_what_its_jobs_wrote_and_no_other_user_does() {
    let (dir, serve, secret) = node();
    let addr = &serve.addr;
    // The built-in workflows are the default tenant's: Ann and Bob may read them, and work in acme.
    let ann = token_of(&secret, "ann", Role::User, &["acme", "default"]);
    let bob = token_of(&secret, "bob", Role::User, &["acme", "default"]);
    let file = dir.path().join("report.txt");
    std::fs::write(&file, "Write to ann@example.com. Revenue rose.\n").unwrap();
    let (ok, document, stderr) =
        weft_as(addr, &ann, &["document", "upload", file.to_str().unwrap(), "--tenant", "acme"]);
    assert!(ok, "{stderr}");
    let document = document.trim().to_owned();
    let (ok, outputs, stderr) = weft_as(
        addr,
        &ann,
        &["job", "run", "redact-then-summarize", "--document", &document, "--tenant", "acme", "--wait"],
    );
    assert!(ok, "{stderr}");
    let outputs: Vec<String> = outputs.lines().filter_map(|l| l.split('\t').nth(1)).map(str::to_owned).collect();
    assert_eq!(outputs.len(), 2, "{outputs:?}");

    for output in &outputs {
        // Ann reads each output, its history and its download URL; Bob gets 404 for all three, as for nothing.
        let (status, item) = call(addr, Some(&ann), "GET", &format!("/documents/{output}"), &[], &Value::Null);
        assert_eq!(status, 200, "{item}");
        assert!(item["owner"].as_str().unwrap().starts_with("agent:"), "{item}");
        for path in [
            format!("/documents/{output}"),
            format!("/documents/{output}/download"),
            format!("/streams/document-{output}/events"),
        ] {
            assert_eq!(call(addr, Some(&ann), "GET", &path, &[], &Value::Null).0, 200, "ann: {path}");
            assert_eq!(call(addr, Some(&bob), "GET", &path, &[], &Value::Null).0, 404, "bob: {path}");
        }
        // Reading is not changing: Ann may not delete what her job's agent wrote.
        let (status, _) = call(addr, Some(&ann), "DELETE", &format!("/documents/{output}"), &[], &Value::Null);
        assert_eq!(status, 404, "a user changes only documents it owns");
    }
    // Lists: Ann's are her upload and both outputs; Bob's none.
    let (_, mine) = call(addr, Some(&ann), "GET", "/documents", &[], &Value::Null);
    let mut ids: Vec<&str> = mine["items"].as_array().unwrap().iter().filter_map(|d| d["id"].as_str()).collect();
    ids.sort_unstable();
    let mut expected: Vec<&str> = outputs.iter().map(String::as_str).chain([document.as_str()]).collect();
    expected.sort_unstable();
    assert_eq!(ids, expected);
    let (_, theirs) = call(addr, Some(&bob), "GET", "/documents", &[], &Value::Null);
    assert_eq!(theirs["items"], json!([]), "{theirs}");
    serve.stop();
}
