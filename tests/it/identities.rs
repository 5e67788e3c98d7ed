//! Users with passwords and API keys on a real `weft serve`: logins, key use and revocation, what each
//! refuses and why, that no password, key or hash shows in an answer, a stream's history or the node's log,
//! and that both survive `kill -9` of the node.

use serde_json::{Value, json};

use crate::serve::{Serve, raw_http};

/// `method path` with `token` (none: no Authorization) and `body`; the status and the JSON answer.
fn call(addr: &str, token: Option<&str>, method: &str, path: &str, body: &Value) -> (u16, Value) {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = vec![("Content-Type", "application/json")];
    if let Some(bearer) = &bearer {
        headers.push(("Authorization", bearer));
    }
    let body = if method == "GET" { String::new() } else { body.to_string() };
    let response = raw_http(addr, method, path, &headers, body.as_bytes());
    (response.status, serde_json::from_str(&response.body).unwrap_or(Value::Null))
}

fn login(addr: &str, user: &str, password: &str) -> (u16, Value) {
    call(addr, None, "POST", "/auth/token", &json!({"user": user, "password": password}))
}

fn token(answer: &Value) -> String {
    answer["token"].as_str().unwrap_or_else(|| panic!("no token in {answer}")).to_owned()
}

#[test]
fn users_log_in_keys_work_until_revoked_and_no_secret_shows_anywhere() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &["--no-processes"]);
    let addr = serve.addr.clone();
    let admin = crate::support::admin_token(dir.path());
    let add = |body: Value| call(&addr, Some(&admin), "POST", "/auth/users", &body);
    let alice = json!({"name": "alice@acme.example", "role": "user", "tenants": ["acme"], "password": "correct horse"});
    let (status, answer) = add(alice.clone());
    assert_eq!(status, 201, "{answer}");
    // A bcrypt hash imported from another system logs in with its password.
    let imported = bcrypt::hash("imported secret", 4).unwrap();
    let (status, answer) =
        add(json!({"name": "bob", "role": "guest", "tenants": ["*"], "password_hash": imported.clone()}));
    assert_eq!(status, 201, "{answer}");

    // Bad input: each refused with its kind, and nothing is added.
    let refusals = [
        (alice.clone(), 409, "conflict"),
        (json!({"name": "carl", "role": "user", "tenants": ["acme"], "password": "short"}), 400, "invalid"),
        (json!({"name": "carl", "role": "root", "tenants": ["acme"], "password": "long enough"}), 400, "invalid"),
        (json!({"name": "carl", "role": "user", "tenants": [], "password": "long enough"}), 400, "invalid"),
        (json!({"name": "a:b", "role": "user", "tenants": ["acme"], "password": "long enough"}), 400, "invalid"),
        (json!({"name": "carl", "role": "user", "tenants": ["acme"]}), 400, "invalid"),
        (
            json!({"name": "carl", "role": "user", "tenants": ["acme"], "password": "long enough", "password_hash": imported}),
            400,
            "invalid",
        ),
        (json!({"name": "carl", "role": "user", "tenants": ["acme"], "password_hash": "md5:abc"}), 400, "invalid"),
        (
            json!({"name": "carl", "role": "user", "tenants": ["acme"], "password": "long enough", "admin": true}),
            400,
            "invalid",
        ),
        (
            json!({"name": "carl", "role": "user", "tenants": ["acme"], "password": "x".repeat(20_000)}),
            413,
            "too_large",
        ),
    ];
    for (body, status, kind) in refusals {
        let (got, answer) = add(body.clone());
        assert_eq!((got, answer["error"]["kind"].as_str()), (status, Some(kind)), "{body}: {answer}");
    }
    let garbled = raw_http(
        &addr,
        "POST",
        "/auth/users",
        &[("Content-Type", "application/json"), ("Authorization", &format!("Bearer {admin}"))],
        b"{\"name\": ",
    );
    assert_eq!(garbled.status, 400, "{}", garbled.body);

    // A login's and a list's bad input: each refused with its kind.
    for body in [
        json!({"user": "bob"}),
        json!({"user": "bob", "password": "x", "admin": true}),
        json!({"user": "bob", "password": "imported secret", "ttl_secs": 0}),
        json!({"user": "bob", "password": "imported secret", "ttl_secs": 86_401}),
    ] {
        let (status, answer) = call(&addr, None, "POST", "/auth/token", &body);
        assert_eq!((status, answer["error"]["kind"].as_str()), (400, Some("invalid")), "{body}: {answer}");
    }
    for query in ["limit=0", "limit=1001", "limit=x", "colour=red"] {
        let (status, answer) = call(&addr, Some(&admin), "GET", &format!("/auth/users?{query}"), &json!(null));
        assert_eq!((status, answer["error"]["kind"].as_str()), (400, Some("invalid")), "{query}: {answer}");
    }

    // Logins: a wrong password and an unknown user are refused alike; the right one gets a token.
    let (status, wrong) = login(&addr, "alice@acme.example", "wrong horse");
    assert_eq!(status, 401, "{wrong}");
    let (status, unknown) = login(&addr, "nobody", "correct horse");
    assert_eq!((status, &unknown["error"]["message"]), (401, &wrong["error"]["message"]));
    let (status, answer) = login(&addr, "alice@acme.example", "correct horse");
    assert_eq!(status, 200, "{answer}");
    assert_eq!((answer["role"].as_str(), answer["expires_in"].as_u64()), (Some("user"), Some(3600)));
    let alice_token = token(&answer);
    let (status, bob) = login(&addr, "bob", "imported secret");
    assert_eq!((status, bob["role"].as_str()), (200, Some("guest")), "{bob}");
    let bob_token = token(&bob);

    // Alice registers a document in her tenant as its owner; a guest reads but may not write.
    let registration = json!({"name": "a.txt", "content_type": "text/plain", "size_bytes": 10});
    let (status, document) = call(&addr, Some(&alice_token), "POST", "/documents", &registration);
    assert_eq!(status, 201, "{document}");
    let (status, _) = call(&addr, Some(&bob_token), "GET", "/documents", &json!(null));
    assert_eq!(status, 200);
    let (status, _) = call(&addr, Some(&bob_token), "POST", "/documents", &registration);
    assert_eq!(status, 403);
    // Only admins manage users and keys; a user changes its own password only, and another's is not there.
    let (status, _) = call(&addr, Some(&alice_token), "GET", "/auth/users", &json!(null));
    assert_eq!(status, 403);
    let (status, _) = call(&addr, Some(&alice_token), "POST", "/auth/keys", &json!({}));
    assert_eq!(status, 403);
    let (status, _) =
        call(&addr, Some(&alice_token), "POST", "/auth/users/bob/password", &json!({"password": "p4ssw0rd!"}));
    assert_eq!(status, 404);

    // Ten attempts a minute per user name; then 429 with Retry-After, for the right password too.
    let mut last = 0;
    for _ in 0..11 {
        last = login(&addr, "mallory", "guess guess").0;
    }
    assert_eq!(last, 429);
    let limited = raw_http(
        &addr,
        "POST",
        "/auth/token",
        &[("Content-Type", "application/json")],
        json!({"user": "mallory", "password": "guess guess"}).to_string().as_bytes(),
    );
    assert!(limited.headers.iter().any(|(name, value)| name == "retry-after" && value.parse::<u64>().is_ok()));

    // A new password: the old token is refused at once, the new password works.
    let path = "/auth/users/alice%40acme.example/password";
    let (status, answer) = call(&addr, Some(&alice_token), "POST", path, &json!({"password": "battery staple"}));
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = call(&addr, Some(&alice_token), "GET", "/documents", &json!(null));
    assert_eq!((status, answer["error"]["message"].as_str()), (401, Some("the token has been revoked")));
    assert_eq!(login(&addr, "alice@acme.example", "correct horse").0, 401);
    let alice_token = token(&login(&addr, "alice@acme.example", "battery staple").1);
    assert_eq!(call(&addr, Some(&alice_token), "GET", "/documents", &json!(null)).0, 200);

    // API keys: shown once, usable as bearer tokens, refused once revoked.
    let new_key = json!({"name": "ingest", "role": "operator", "tenants": ["acme"]});
    let (status, made) = call(&addr, Some(&admin), "POST", "/auth/keys", &new_key);
    assert_eq!(status, 201, "{made}");
    let key = made["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("weft_"), "{key}");
    let (status, page) = call(&addr, Some(&key), "GET", "/documents", &json!(null));
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["items"].as_array().map(Vec::len), Some(1), "an operator of acme sees acme's document");
    let mut forged = key.clone();
    forged.replace_range(key.len() - 4.., "AAAA");
    assert_eq!(call(&addr, Some(&forged), "GET", "/documents", &json!(null)).0, 401);
    let (status, keys) = call(&addr, Some(&admin), "GET", "/auth/keys?after=0", &json!(null));
    assert_eq!(status, 200);
    assert_eq!(keys["items"][0]["status"], "active", "{keys}");
    let revoke = format!("/auth/keys/{}/revoke", made["id"].as_str().unwrap());
    let (status, answer) = call(&addr, Some(&admin), "POST", &revoke, &json!({"reason": "rotated"}));
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = call(&addr, Some(&key), "GET", "/documents", &json!(null));
    assert_eq!((status, answer["error"]["message"].as_str()), (401, Some("the token has been revoked")));
    assert_eq!(call(&addr, Some(&admin), "POST", &revoke, &json!({"reason": "again"})).0, 409);
    assert_eq!(call(&addr, Some(&admin), "POST", "/auth/keys/nope/revoke", &json!({"reason": "x"})).0, 404);

    // Disabling a user refuses its tokens and its logins.
    let (status, _) =
        call(&addr, Some(&admin), "POST", "/auth/users/alice%40acme.example/disable", &json!({"reason": "left"}));
    assert_eq!(status, 200);
    assert_eq!(call(&addr, Some(&alice_token), "GET", "/documents", &json!(null)).0, 401);
    assert_eq!(login(&addr, "alice@acme.example", "battery staple").0, 401);

    // The lists and the streams' history hold no hash; no secret shows in the node's log.
    let position = answer_position(&addr, &admin);
    let (status, users) = call(&addr, Some(&admin), "GET", &format!("/auth/users?after={position}"), &json!(null));
    assert_eq!(status, 200);
    let statuses: Vec<(&str, &str)> = users["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| (u["name"].as_str().unwrap(), u["status"].as_str().unwrap()))
        .collect();
    assert_eq!(statuses, [("alice@acme.example", "disabled"), ("bob", "active")]);
    let stream: String = "alice@acme.example".bytes().map(|b| format!("{b:02x}")).collect();
    let history = format!("/streams/user-{stream}/events?after={position}");
    let (status, events) = call(&addr, Some(&admin), "GET", &history, &json!(null));
    assert_eq!(status, 200, "{events}");
    assert_eq!(events["items"].as_array().map(Vec::len), Some(3), "{events}");
    let operator = crate::auth::token_of(
        &weft::auth::token::Secret::load(&dir.path().join("auth.secret")).unwrap(),
        "olga",
        weft::auth::Role::Operator,
        &["acme"],
    );
    assert_eq!(call(&addr, Some(&operator), "GET", &history, &json!(null)).0, 404, "identity streams are no tenant's");
    let shown = format!("{users}{keys}{events}");
    for secret in ["$argon2", "$2b$", "password_hash", "secret_sha256", "correct horse", &key[5..]] {
        assert!(!shown.contains(secret), "{secret:?} shows in {shown}");
    }
    let log = serve.log();
    for secret in ["correct horse", "battery staple", "imported secret", &key, &alice_token, "$argon2"] {
        assert!(!log.contains(secret), "{secret:?} shows in the log");
    }

    // Users and keys are in the log: after kill -9 bob still logs in, and the revoked key stays refused.
    drop(serve.signal("-KILL"));
    let serve = Serve::start(dir.path(), &["--no-processes"]);
    let (status, answer) = login(&serve.addr, "bob", "imported secret");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(call(&serve.addr, Some(&key), "GET", "/documents", &json!(null)).0, 401);
    assert_eq!(login(&serve.addr, "alice@acme.example", "battery staple").0, 401);
}

/// The log's head, from a fresh command's reply: what the identities read model must reach to show every
/// change made before.
fn answer_position(addr: &str, admin: &str) -> u64 {
    let (status, answer) =
        call(addr, Some(admin), "POST", "/auth/keys", &json!({"name": "probe", "role": "guest", "tenants": ["x"]}));
    assert_eq!(status, 201, "{answer}");
    let (status, answer) = call(
        addr,
        Some(admin),
        "POST",
        &format!("/auth/keys/{}/revoke", answer["id"].as_str().unwrap()),
        &json!({"reason": "probe"}),
    );
    assert_eq!(status, 200, "{answer}");
    answer["position"].as_u64().unwrap()
}

#[test]
fn the_command_line_adds_users_logs_in_and_makes_and_revokes_keys() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &["--no-processes"]);
    let admin = crate::support::admin_token(dir.path());
    let login_file = dir.path().join("login").join("token");
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, "a long password\n").unwrap();
    let weft = |args: &[&str], token: Option<&str>, stdin: &str| {
        use std::io::Write as _;
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_weft"));
        command
            .args(args)
            .args(["--url", &format!("http://{}", serve.addr)])
            .env("WEFT_LOGIN_FILE", &login_file)
            .env_remove("WEFT_TOKEN")
            .env_remove("WEFT_TOKEN_FILE")
            .current_dir(dir.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        if let Some(token) = token {
            command.env("WEFT_TOKEN", token);
        }
        let mut child = command.spawn().unwrap();
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    };
    let file = password_file.to_str().unwrap();
    let (ok, _, stderr) = weft(
        &["user", "add", "dora", "--role", "operator", "--tenant", "acme", "--password-file", file],
        Some(&admin),
        "",
    );
    assert!(ok, "{stderr}");
    // The password from stdin.
    let (ok, _, stderr) =
        weft(&["user", "add", "eve", "--role", "guest", "--tenant", "acme"], Some(&admin), "eve's password\n");
    assert!(ok, "{stderr}");
    let (ok, stdout, stderr) = weft(&["user", "list", "--output", "json"], Some(&admin), "");
    assert!(ok, "{stderr}");
    assert!(stdout.contains("dora") && stdout.contains("eve"), "{stdout}");
    let (ok, _, stderr) = weft(&["login", "--user", "dora"], None, "wrong password\n");
    assert!(!ok && stderr.contains("401 unauthenticated"), "{stderr}");
    assert!(!login_file.exists());
    let (ok, _, stderr) = weft(&["login", "--user", "dora", "--password-file", file], None, "");
    assert!(ok, "{stderr}");
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&login_file).unwrap().permissions().mode() & 0o777, 0o600);
    }
    // Later commands use the login's token by themselves: an operator reads, and may not list users.
    let (ok, _, stderr) = weft(&["agent", "list"], None, "");
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = weft(&["user", "list"], None, "");
    assert!(!ok && stderr.contains("403 forbidden"), "{stderr}");
    // Its own password, from stdin; then the kept token is refused.
    let (ok, _, stderr) = weft(&["user", "passwd", "dora"], None, "another long password\n");
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = weft(&["agent", "list"], None, "");
    assert!(!ok && stderr.contains("revoked"), "{stderr}");
    std::fs::remove_file(&login_file).unwrap();

    let (ok, stdout, stderr) = weft(
        &["key", "create", "--name", "svc", "--role", "guest", "--tenant", "acme", "--output", "json"],
        Some(&admin),
        "",
    );
    assert!(ok, "{stderr}");
    let made: Value = serde_json::from_str(&stdout).unwrap();
    let key = made["key"].as_str().unwrap();
    let (ok, _, stderr) = weft(&["document", "list"], Some(key), "");
    assert!(ok, "{stderr}");
    let (ok, stdout, _) = weft(&["key", "list"], Some(&admin), "");
    assert!(ok && stdout.contains("svc") && !stdout.contains(&key[5..]), "{stdout}");
    let (ok, _, stderr) = weft(&["key", "revoke", made["id"].as_str().unwrap(), "--reason", "done"], Some(&admin), "");
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = weft(&["document", "list"], Some(key), "");
    assert!(!ok && stderr.contains("401"), "{stderr}");
    // Bad arguments are refused by the command line, naming what is wrong.
    let (ok, _, stderr) = weft(&["key", "create", "--name", "x", "--role", "root", "--tenant", "a"], Some(&admin), "");
    assert!(!ok && stderr.contains("--role"), "{stderr}");
    let (ok, _, stderr) = weft(&["user", "add", "x", "--role", "user"], Some(&admin), "");
    assert!(!ok && stderr.contains("--tenant"), "{stderr}");
    let (ok, _, stderr) = weft(&["user", "add", "x", "--role", "user", "--tenant", "a"], Some(&admin), "");
    assert!(!ok && stderr.contains("empty"), "{stderr}");
}

#[test]
fn a_browser_session_lives_in_an_http_only_cookie_and_changes_state_only_with_its_csrf_token() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &["--no-processes"]);
    let addr = serve.addr.clone();
    let admin = crate::support::admin_token(dir.path());
    let body = json!({"name": "pat", "role": "user", "tenants": ["acme"], "password": "a long password"});
    assert_eq!(call(&addr, Some(&admin), "POST", "/auth/users", &body).0, 201);
    let json = [("Content-Type", "application/json")];
    let credentials = json!({"user": "pat", "password": "a long password"}).to_string();
    let session = raw_http(&addr, "POST", "/auth/session", &json, credentials.as_bytes());
    assert_eq!(session.status, 200, "{}", session.body);
    let set_cookie = session.headers.iter().find(|(n, _)| n == "set-cookie").map(|(_, v)| v.clone()).unwrap();
    for attribute in ["weft_session=", "HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=3600"] {
        assert!(set_cookie.contains(attribute), "{attribute} missing: {set_cookie}");
    }
    assert!(!set_cookie.contains("Secure"), "plain HTTP: {set_cookie}");
    let answer = session.json();
    assert!(answer.get("token").is_none(), "the token is only in the cookie: {answer}");
    let csrf = answer["csrf_token"].as_str().unwrap().to_owned();
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    // Behind a TLS proxy the cookie is Secure.
    let forwarded = [("Content-Type", "application/json"), ("X-Forwarded-Proto", "https")];
    let tls = raw_http(&addr, "POST", "/auth/session", &forwarded, credentials.as_bytes());
    assert!(tls.headers.iter().any(|(n, v)| n == "set-cookie" && v.contains("Secure")), "{:?}", tls.headers);

    // Reads go with the cookie alone; a change needs the session's CSRF token too.
    let read = raw_http(&addr, "GET", "/documents", &[("Cookie", &cookie)], b"");
    assert_eq!(read.status, 200, "{}", read.body);
    let registration = json!({"name": "a.txt", "content_type": "text/plain", "size_bytes": 10}).to_string();
    let post = |headers: &[(&str, &str)]| {
        let mut all = vec![("Content-Type", "application/json"), ("Cookie", cookie.as_str())];
        all.extend_from_slice(headers);
        raw_http(&addr, "POST", "/documents", &all, registration.as_bytes())
    };
    for (why, headers) in [
        ("no CSRF token", vec![]),
        ("a wrong CSRF token", vec![("X-CSRF-Token", "forged")]),
        ("another origin", vec![("X-CSRF-Token", csrf.as_str()), ("Origin", "https://evil.example")]),
    ] {
        let refused = post(&headers);
        assert_eq!(refused.status, 403, "{why}: {}", refused.body);
    }
    let made = post(&[("X-CSRF-Token", &csrf)]);
    assert_eq!(made.status, 201, "{}", made.body);
    // A cookie that holds no valid token is refused as a bad bearer token is.
    let bad = raw_http(&addr, "GET", "/documents", &[("Cookie", "weft_session=garbage")], b"");
    assert_eq!(bad.status, 401);

    // Ending the session removes the cookie; disabling the user refuses the cookie's token.
    let end = raw_http(&addr, "DELETE", "/auth/session", &[("Cookie", &cookie)], b"");
    assert_eq!(end.status, 204);
    assert!(end.headers.iter().any(|(n, v)| n == "set-cookie" && v.contains("Max-Age=0")), "{:?}", end.headers);
    assert_eq!(call(&addr, Some(&admin), "POST", "/auth/users/pat/disable", &json!({"reason": "left"})).0, 200);
    let read = raw_http(&addr, "GET", "/documents", &[("Cookie", &cookie)], b"");
    assert_eq!(read.status, 401, "{}", read.body);
}

#[test]
fn a_key_revoked_and_a_user_disabled_on_one_node_are_refused_by_every_node_sharing_jetstream() {
    let nats = weft_harness::NatsServer::start().unwrap();
    let url = nats.url();
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let secret_file = a_dir.path().join("shared.secret");
    let args = ["--nats", &url, "--jetstream", "--jetstream-stream", "IDENTITIES", "--auth-secret-file"];
    let mut args: Vec<&str> = args.to_vec();
    args.push(secret_file.to_str().unwrap());
    args.push("--no-processes");
    let a = Serve::start(a_dir.path(), &args);
    let b = Serve::start(b_dir.path(), &args);
    let admin = crate::serve::token(&a.addr).unwrap();
    // Made through node a, used through node b.
    let (status, made) = call(
        &a.addr,
        Some(&admin),
        "POST",
        "/auth/keys",
        &json!({"name": "svc", "role": "guest", "tenants": ["acme"]}),
    );
    assert_eq!(status, 201, "{made}");
    let key = made["key"].as_str().unwrap().to_owned();
    let user = json!({"name": "quinn", "role": "guest", "tenants": ["acme"], "password": "a long password"});
    assert_eq!(call(&a.addr, Some(&admin), "POST", "/auth/users", &user).0, 201);
    let (status, session) = login(&b.addr, "quinn", "a long password");
    assert_eq!(status, 200, "{session}");
    let quinn = token(&session);
    for credential in [&key, &quinn] {
        assert_eq!(call(&b.addr, Some(credential), "GET", "/documents", &json!(null)).0, 200);
    }
    // Revoked and disabled through node a: node b refuses both within its recheck time.
    let revoke = format!("/auth/keys/{}/revoke", made["id"].as_str().unwrap());
    assert_eq!(call(&a.addr, Some(&admin), "POST", &revoke, &json!({"reason": "leaked"})).0, 200);
    assert_eq!(call(&a.addr, Some(&admin), "POST", "/auth/users/quinn/disable", &json!({"reason": "left"})).0, 200);
    let deadline = std::time::Instant::now() + weft::auth::identities::RECHECK + std::time::Duration::from_secs(3);
    for credential in [&key, &quinn] {
        loop {
            let (status, answer) = call(&b.addr, Some(credential), "GET", "/documents", &json!(null));
            if status == 401 {
                assert_eq!(answer["error"]["message"], "the token has been revoked");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "node b still takes a revoked credential: {status}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    assert_eq!(login(&b.addr, "quinn", "a long password").0, 401);
}
