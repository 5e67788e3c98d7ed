//! Tokens of an OIDC provider on a real `weft serve`: its JWKS served on a local port (a plain HTTP server
//! here, the provider's part), claims mapped as Keycloak has them, the key rotated mid-test, and the tokens
//! that must be refused (expired, not yet valid, another issuer or audience, an unknown key, no role,
//! algorithm confusion).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::serve::{Serve, raw_http};

/// A provider's signing key: its private half and its JWK (with `kid`).
struct SigningKey {
    kid: String,
    algorithm: Algorithm,
    private: EncodingKey,
    public: Jwk,
    public_pem: String,
}

fn signing_key(kid: &str, algorithm: Algorithm) -> SigningKey {
    let pair = match algorithm {
        Algorithm::RS256 => rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap(),
        _ => rcgen::KeyPair::generate().unwrap(),
    };
    let private = match algorithm {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(pair.serialize_pem().as_bytes()).unwrap(),
        _ => EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap(),
    };
    let mut public = Jwk::from_encoding_key(&private, algorithm).unwrap();
    public.common.key_id = Some(kid.to_owned());
    SigningKey { kid: kid.to_owned(), algorithm, private, public, public_pem: pair.public_key_pem() }
}

/// Serves `set` (as it is when asked) on a free loopback port; counts the requests.
fn jwks_server(set: Arc<Mutex<JwkSet>>) -> (String, Arc<Mutex<usize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/realms/weft/protocol/openid-connect/certs", listener.local_addr().unwrap());
    let fetches = Arc::new(Mutex::new(0));
    let counted = fetches.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            *counted.lock().unwrap() += 1;
            let body = serde_json::to_string(&*set.lock().unwrap()).unwrap();
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (url, fetches)
}

const ISSUER: &str = "https://idp.example/realms/weft";

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Keycloak-shaped claims for `user` with Weft role `role` in tenant `tenant`.
fn claims(user: &str, role: &str, tenant: &str) -> Value {
    json!({"iss": ISSUER, "aud": "weft", "exp": now() + 300, "iat": now(), "nbf": now() - 5,
           "preferred_username": user, "sub": "f81d4fae-7dec-11d0-a765-00a0c91e6bf6",
           "realm_access": {"roles": ["offline_access", format!("weft-{role}")]}, "weft_tenants": [tenant]})
}

fn sign(key: &SigningKey, claims: &Value) -> String {
    let mut header = Header::new(key.algorithm);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, claims, &key.private).unwrap()
}

/// `GET /documents` with `token`: the status and the body.
fn documents(addr: &str, token: &str) -> (u16, Value) {
    let bearer = format!("Bearer {token}");
    let response = raw_http(addr, "GET", "/documents", &[("Authorization", &bearer)], b"");
    (response.status, serde_json::from_str(&response.body).unwrap_or(Value::Null))
}

#[test]
fn oidc_tokens_are_verified_with_the_providers_rotating_keys_and_mapped_claims() {
    let (a, b) = (signing_key("key-a", Algorithm::ES256), signing_key("key-b", Algorithm::RS256));
    let set = Arc::new(Mutex::new(JwkSet { keys: vec![a.public.clone()] }));
    let (url, fetches) = jwks_server(set.clone());
    let dir = tempfile::tempdir().unwrap();
    let oidc = [
        "--oidc-issuer",
        ISSUER,
        "--oidc-audience",
        "weft",
        "--oidc-jwks-url",
        &url,
        "--oidc-subject-claim",
        "preferred_username",
        "--oidc-roles-claim",
        "realm_access.roles",
        "--oidc-role-prefix",
        "weft-",
        "--oidc-tenants-claim",
        "weft_tenants",
        "--oidc-min-refetch-secs",
        "0",
    ];
    let serve = Serve::start(dir.path(), &oidc);
    let addr = serve.addr.as_str();

    // A user of acme: in, and confined to acme (an upload under globex is refused).
    let ann = sign(&a, &claims("ann", "user", "acme"));
    let (status, answer) = documents(addr, &ann);
    assert_eq!(status, 200, "{answer}");
    let bearer = format!("Bearer {ann}");
    let body = br#"{"name": "a.txt", "content_type": "text/plain", "size_bytes": 3}"#;
    let headers = [("Authorization", bearer.as_str()), ("Weft-Tenant", "globex"), ("Content-Type", "application/json")];
    assert_eq!(raw_http(addr, "POST", "/documents", &headers, body).status, 403);
    let headers = [("Authorization", bearer.as_str()), ("Content-Type", "application/json")];
    let registered = raw_http(addr, "POST", "/documents", &headers, body);
    assert_eq!(registered.status, 201, "{}", registered.body);
    let id = registered.json()["id"].as_str().unwrap().to_owned();
    let admin = sign(&a, &claims("root", "admin", "*"));
    // The read model has the registration a moment later.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let all = loop {
        let (_, all) = documents(addr, &admin);
        if all["items"].as_array().is_some_and(|items| !items.is_empty()) {
            break all;
        }
        assert!(std::time::Instant::now() < deadline, "the read model never showed the document: {all}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(all["items"][0]["owner"], "ann", "the subject claim is the owner: {all}");
    assert_eq!(all["items"][0]["id"], id.as_str());

    // What must be refused, each with 401.
    let mut expired = claims("ann", "user", "acme");
    expired["exp"] = json!(now() - 120);
    let mut early = claims("ann", "user", "acme");
    early["nbf"] = json!(now() + 600);
    let mut issuer = claims("ann", "user", "acme");
    issuer["iss"] = json!("https://evil.example");
    let mut audience = claims("ann", "user", "acme");
    audience["aud"] = json!("someone-else");
    let mut no_role = claims("ann", "user", "acme");
    no_role["realm_access"]["roles"] = json!(["admin", "offline_access"]);
    let stranger = signing_key("key-a", Algorithm::ES256);
    // Algorithm confusion: HS256 "signed" with the provider's public key as the HMAC secret.
    let mut confused = Header::new(Algorithm::HS256);
    confused.kid = Some("key-a".into());
    let hs_with_public = jsonwebtoken::encode(
        &confused,
        &claims("ann", "admin", "*"),
        &EncodingKey::from_secret(a.public_pem.as_bytes()),
    )
    .unwrap();
    // An RS256 token naming the ES256 key's id.
    let mut wrong_family = Header::new(Algorithm::RS256);
    wrong_family.kid = Some("key-a".into());
    let rs_as_a = jsonwebtoken::encode(&wrong_family, &claims("ann", "admin", "*"), &b.private).unwrap();
    let none = format!(
        "{}.{}.",
        base64_url(br#"{"alg":"none","typ":"JWT"}"#),
        base64_url(claims("ann", "admin", "*").to_string().as_bytes())
    );
    for (why, token) in [
        ("expired", sign(&a, &expired)),
        ("not yet valid", sign(&a, &early)),
        ("another issuer", sign(&a, &issuer)),
        ("another audience", sign(&a, &audience)),
        ("no Weft role", sign(&a, &no_role)),
        ("a key the provider never published", sign(&stranger, &claims("ann", "admin", "*"))),
        ("HS256 with the public key", hs_with_public),
        ("RS256 naming an ES256 key", rs_as_a),
        ("alg none", none),
        ("oversized", "x".repeat(20_000)),
    ] {
        let (status, answer) = documents(addr, &token);
        assert_eq!(status, 401, "{why}: {answer}");
        assert_eq!(answer["error"]["kind"], "unauthenticated", "{why}");
    }

    // The provider rotates to key b: a token of b is taken at once (the node fetches the keys again), and
    // from then on a token of a is refused.
    *set.lock().unwrap() = JwkSet { keys: vec![b.public.clone()] };
    let before = *fetches.lock().unwrap();
    let (status, answer) = documents(addr, &sign(&b, &claims("ann", "user", "acme")));
    assert_eq!(status, 200, "a token of the new key: {answer}");
    assert!(*fetches.lock().unwrap() > before, "the keys were not fetched again");
    let (status, _) = documents(addr, &ann);
    assert_eq!(status, 401, "a token of the rotated-out key");
    // The node's own tokens still work beside the provider's.
    let own = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
    assert_eq!(documents(addr, own.trim()).0, 200);
    assert!(!serve.log().contains(&ann), "a token is in the node's log");
    serve.stop();
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
