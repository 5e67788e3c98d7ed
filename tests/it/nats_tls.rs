//! `docs/security.md`'s nats-server configuration on a real server: TLS with client certificates (made here
//! with rcgen), one user for the nodes and one per tenant. A node connects over TLS with its user, password
//! file and client certificate; a tenant's user may send commands and read its own events, and is denied
//! another tenant's events and publishing outside its subjects. A user known by an NKey connects with its
//! seed file.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use weft::auth::Role;
use weft::auth::token::Secret;
use weft_harness::NatsServer;

use crate::serve::Serve;

/// A CA, a server certificate for 127.0.0.1, and a client certificate, as PEM files in `dir`:
/// `ca.pem`, `server.pem`, `server-key.pem`, `client.pem`, `client-key.pem`.
fn certificates(dir: &Path) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    for (name, names) in [("server", vec!["127.0.0.1".to_owned(), "localhost".to_owned()]), ("client", vec![])] {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names).unwrap().signed_by(&key, &ca).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}-key.pem")), key.serialize_pem()).unwrap();
    }
}

/// The configuration blocks of `docs/security.md`, with the files in `dir`, and `extra_user` added.
fn documented_config(dir: &Path, extra_user: &str) -> String {
    let page = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/security.md")).unwrap();
    let section = page.split("### A nats-server configuration").nth(1).expect("the page has the configuration");
    let block = section.split("```conf\n").nth(1).and_then(|b| b.split("```").next()).expect("a conf block");
    let folder = format!("{}/", dir.display());
    let config = block.replace("/etc/nats/", &folder);
    config.replacen("  users: [\n", &format!("  users: [\n    {extra_user}\n"), 1)
}

/// A client of `server` over TLS with the test's client certificate, `user`'s password and `inbox` prefix;
/// the server errors it is told of are kept in the returned list.
async fn tenant_client(
    server: &NatsServer,
    dir: &Path,
    user: &str,
    password: &str,
    inbox: &str,
) -> (async_nats::Client, Arc<Mutex<Vec<String>>>) {
    // As `weft::nats` does: the tree enables two rustls backends, so one is picked here.
    let _ = async_nats::rustls::crypto::ring::default_provider().install_default();
    let errors = Arc::new(Mutex::new(Vec::new()));
    let kept = errors.clone();
    let client = async_nats::ConnectOptions::with_user_and_password(user.into(), password.into())
        .add_root_certificates(dir.join("ca.pem"))
        .add_client_certificate(dir.join("client.pem"), dir.join("client-key.pem"))
        .require_tls(true)
        .custom_inbox_prefix(inbox)
        .event_callback(move |event| {
            let kept = kept.clone();
            async move {
                if let async_nats::Event::ServerError(error) = event {
                    kept.lock().unwrap().push(error.to_string());
                }
            }
        })
        .connect(server.url())
        .await
        .unwrap();
    (client, errors)
}

/// Waits until `errors` holds one containing `text`.
async fn told(errors: &Arc<Mutex<Vec<String>>>, text: &str) -> bool {
    for _ in 0..50 {
        if errors.lock().unwrap().iter().any(|e| e.contains(text)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_nats_configuration_confines_each_tenant_and_the_node_connects_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    // A user known by its NKey: the node's other way in.
    let nkey = nkeys::KeyPair::new_user();
    let nkey_user = format!("{{nkey: \"{}\", permissions: {{publish: \">\", subscribe: \">\"}}}}", nkey.public_key());
    let server = NatsServer::start_with(&documented_config(dir.path(), &nkey_user)).unwrap();
    let password = dir.path().join("node.password");
    std::fs::write(&password, "node-password-here\n").unwrap();

    // Without a client certificate, or with a wrong password, the node does not get in, and says why.
    let plain = ["serve", "--nats", &server.url(), "--nats-user", "weft-node"];
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(plain)
        .args(["--nats-password-file", password.to_str().unwrap(), "--store"])
        .arg(dir.path().join("x/events.db"))
        .args(["--http-addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("cannot connect to NATS"), "{stderr}");
    assert!(!stderr.contains("node-password-here"), "the password is in the error: {stderr}");

    // The node over TLS with its client certificate, user and password file.
    let node_dir = dir.path().join("node");
    let file = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let tls = [
        "--nats-tls-ca".to_owned(),
        file("ca.pem"),
        "--nats-tls-cert".to_owned(),
        file("client.pem"),
        "--nats-tls-key".to_owned(),
        file("client-key.pem"),
    ];
    let mut args = vec!["--nats".to_owned(), server.url(), "--nats-user".into(), "weft-node".into()];
    args.extend(["--nats-password-file".to_owned(), password.to_str().unwrap().to_owned()]);
    args.extend(tls.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    std::fs::create_dir_all(&node_dir).unwrap();
    let node = Serve::start(&node_dir, &args);
    let secret = Secret::load(&node_dir.join("auth.secret")).unwrap();
    let acme_token = crate::auth::token_of(&secret, "svc", Role::Operator, &["acme"]);

    // Tenant acme's service: commands go through and its own events arrive.
    let (acme, errors) = tenant_client(&server, dir.path(), "acme", "acme-password-here", "_INBOX_acme").await;
    let mut own = acme.subscribe("weft.evt.acme.>").await.unwrap();
    let mut others = acme.subscribe("weft.evt.globex.>").await.unwrap();
    acme.flush().await.unwrap();
    assert!(told(&errors, "Permissions Violation for Subscription to \"weft.evt.globex.>\"").await, "{errors:?}");
    let id = uuid::Uuid::now_v7();
    let body = serde_json::json!({"command_id": uuid::Uuid::now_v7(), "type": "register", "payload": {
        "name": "a.txt", "content_type": "text/plain", "declared_size_bytes": 1, "tenant": "acme", "owner": "svc"}});
    let request = async_nats::Request::new()
        .headers(crate::support::json_headers(&acme_token))
        .payload(body.to_string().into())
        .timeout(Some(Duration::from_secs(10)));
    let reply = acme.send_request(format!("weft.cmd.document.{id}"), request).await.unwrap();
    let reply: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(reply["status"], "ok", "{reply}");
    let event = tokio::time::timeout(Duration::from_secs(10), own.next()).await.unwrap().unwrap();
    assert_eq!(event.subject.as_str(), format!("weft.evt.acme.document.{id}.registered"));
    assert!(tokio::time::timeout(Duration::from_millis(300), others.next()).await.is_err());

    // Publishing outside its subjects: denied by the server, and nothing reaches a subscriber of the node user.
    let (nodeish, _) = tenant_client(&server, dir.path(), "weft-node", "node-password-here", "_INBOX").await;
    let mut forged = nodeish.subscribe("weft.evt.>").await.unwrap();
    nodeish.flush().await.unwrap();
    acme.publish("weft.evt.acme.document.x.registered", "forged".into()).await.unwrap();
    acme.flush().await.unwrap();
    assert!(told(&errors, "Permissions Violation for Publish to \"weft.evt.acme.document.x.registered\"").await);
    assert!(tokio::time::timeout(Duration::from_millis(300), forged.next()).await.is_err());

    // The NKey user connects with its seed file through the node's own options.
    let seed = dir.path().join("node.nk");
    std::fs::write(&seed, nkey.seed().unwrap()).unwrap();
    let auth = weft::nats::NatsAuth {
        nats_nkey_file: Some(seed),
        nats_tls_ca: Some(dir.path().join("ca.pem")),
        nats_tls_cert: Some(dir.path().join("client.pem")),
        nats_tls_key: Some(dir.path().join("client-key.pem")),
        ..Default::default()
    };
    let client = weft::nats::connect_with(&server.url(), "nkey", &auth).await.unwrap();
    client.flush().await.unwrap();
    // Two ways in at once are refused before connecting.
    let both = weft::nats::NatsAuth { nats_user: Some("x".into()), nats_password_file: Some(password), ..auth };
    let error = weft::nats::connect_with(&server.url(), "both", &both).await.unwrap_err().to_string();
    assert!(error.contains("give one of"), "{error}");
    node.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_server_takes_the_token_file_and_refuses_another() {
    let server = NatsServer::start_with("authorization {\n  token: \"s3cret-token-of-the-test\"\n}\n").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (good, bad) = (dir.path().join("good"), dir.path().join("bad"));
    std::fs::write(&good, "s3cret-token-of-the-test\n").unwrap();
    std::fs::write(&bad, "not-the-token").unwrap();
    let with = |file: &Path| weft::nats::NatsAuth { nats_token_file: Some(file.to_owned()), ..Default::default() };
    let client = weft::nats::connect_with(&server.url(), "token", &with(&good)).await.unwrap();
    client.flush().await.unwrap();
    let error = weft::nats::connect_with(&server.url(), "token", &with(&bad)).await.unwrap_err().to_string();
    assert!(error.contains("cannot connect to NATS"), "{error}");
    assert!(!error.contains("not-the-token"), "the token is in the error: {error}");
    let error = weft::nats::connect(&server.url(), "none").await.unwrap_err().to_string();
    assert!(error.contains("cannot connect to NATS"), "{error}");
}
