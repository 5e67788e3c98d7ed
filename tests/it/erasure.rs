//! Erasing a tenant (crypto-shredding), end to end with real nodes: on the SQLite store and on JetStream (a real
//! `nats-server`, two nodes sharing it). The personal fields are never in the log in the clear; after the
//! erasure they read as `[erased]` through the query API, the history, the tools, a restart and a rebuild; the
//! other tenants' fields are untouched; the erased tenant's new documents are refused; bad requests are refused
//! and change nothing.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;
use weft_harness::NatsServer;

use crate::serve::{Serve, get, http, weft};

/// Uploads a file named `name` for `tenant` through `serve`; the document's id.
fn upload(serve: &Serve, dir: &Path, name: &str, tenant: &str) -> String {
    let file = dir.join(name);
    std::fs::write(&file, "Ann's tax return: income 52,000.\n").unwrap();
    let (ok, stdout, stderr) = weft(&serve.addr, &["document", "upload", file.to_str().unwrap(), "--tenant", tenant]);
    assert!(ok, "{stderr}");
    stdout.trim().to_owned()
}

/// `GET /documents/{id}` once the read model applied `after`.
fn document(serve: &Serve, id: &str, after: u64) -> Value {
    let (status, body) = get(&serve.addr, &format!("/documents/{id}?after={after}"));
    assert_eq!(status, 200, "{body}");
    body
}

/// The payload of `document-{id}`'s registration in the history projection.
fn history_registration(serve: &Serve, id: &str) -> Value {
    let (status, body) = get(&serve.addr, &format!("/streams/document-{id}/events"));
    assert_eq!(status, 200, "{body}");
    let events = body["events"].as_array().or_else(|| body["items"].as_array()).cloned().unwrap_or_default();
    let registered =
        events.iter().find(|e| e["type"] == "document.registered" || e["event_type"] == "document.registered");
    registered.unwrap_or_else(|| panic!("no registration in {body}"))["event"].clone()
}

fn erase(serve: &Serve, tenant: &str, body: &str) -> (u16, Value) {
    let response = http(&serve.addr, "POST", &format!("/tenants/{tenant}/erase"), &[], body.as_bytes());
    (response.status, response.json())
}

/// `POST /documents` for `tenant`; the status and body.
fn register(serve: &Serve, tenant: &str, name: &str) -> (u16, Value) {
    let body = serde_json::json!({"name": name, "content_type": "text/plain", "size_bytes": 10});
    let response = http(&serve.addr, "POST", "/documents", &[("Weft-Tenant", tenant)], body.to_string().as_bytes());
    (response.status, response.json())
}

fn events(source: &[String], args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_weft")).arg("events").args(args).args(source).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "weft events {args:?}: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

/// The decoded payload of the first event of `stream`, through `weft events cat`.
fn cat_first(source: &[String], stream: &str, extra: &[&str]) -> Value {
    let mut args = vec!["cat", stream];
    args.extend_from_slice(extra);
    let text = events(source, &args);
    let first: Value = serde_json::from_str(text.lines().next().expect("an event")).unwrap();
    first["payload"].clone()
}

/// Every payload of an export (as stored), decoded from base64, joined.
fn exported_payloads(source: &[String]) -> Vec<u8> {
    let text = events(source, &["export"]);
    let mut all = Vec::new();
    for line in text.lines() {
        let value: Value = serde_json::from_str(line).unwrap();
        if let Some(payload) = value["payload"].as_str() {
            all.extend(base64::engine::general_purpose::STANDARD.decode(payload).unwrap());
        }
    }
    all
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn an_erased_tenant_reads_as_erased_everywhere_on_sqlite_and_its_key_is_gone_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let source = vec!["--store".to_owned(), dir.path().join("events.db").to_str().unwrap().to_owned()];
    let serve = Serve::start(dir.path(), &[]);
    let secret = "ann-tax-return-2026.txt";
    let doc = upload(&serve, dir.path(), secret, "acme");
    let kept = upload(&serve, dir.path(), "bob-payslip.txt", "globex");
    assert_eq!(document(&serve, &doc, 0)["name"], secret);
    // Labels changed later are personal data too: sealed in the log like those of the registration.
    let label_secret = "ann-label-secret";
    let set = format!("client={label_secret}");
    let (ok, stdout, stderr) = weft(&serve.addr, &["document", "label", &doc, "--set", &set, "--output", "json"]);
    assert!(ok, "{stderr}");
    let labelled: Value = serde_json::from_str(&stdout).unwrap();
    let labelled = labelled["last_position"].as_u64().unwrap_or_else(|| panic!("no position in {labelled}"));

    // The key was stored before the registration was acknowledged: a kill -9 right after loses nothing.
    let mut serve = serve;
    serve.child.kill().unwrap();
    serve.child.wait().unwrap();
    // The log holds the name sealed, never in the clear (the file and its write-ahead log).
    for file in ["events.db", "events.db-wal"] {
        if let Ok(bytes) = std::fs::read(dir.path().join(file)) {
            assert!(!contains(&bytes, secret), "{file} holds the name in the clear");
            assert!(!contains(&bytes, "bob-payslip"), "{file} holds the name in the clear");
            assert!(!contains(&bytes, label_secret), "{file} holds a label in the clear");
        }
    }
    assert!(!contains(&exported_payloads(&source), secret));
    assert!(!contains(&exported_payloads(&source), label_secret));
    let serve = Serve::start(dir.path(), &[]);
    assert_eq!(document(&serve, &doc, 0)["name"], secret);
    assert_eq!(document(&serve, &doc, labelled)["labels"]["client"], label_secret);
    assert_eq!(cat_first(&source, &format!("document-{doc}"), &[])["name"], secret);
    assert_eq!(cat_first(&source, &format!("document-{doc}"), &["--no-keys"])["name"], "[sealed]");

    // Bad requests are refused with a typed error and change nothing.
    for (tenant, body) in [
        ("acme", "{}"),
        ("acme", "not json"),
        ("acme", r#"{"reason": "", "confirm": "acme"}"#),
        ("acme", r#"{"reason": "x", "confirm": "acme", "y": 1}"#),
        // The tenant's name must be confirmed, and be the one erased.
        ("acme", r#"{"reason": "x"}"#),
        ("acme", r#"{"reason": "x", "confirm": "globex"}"#),
    ] {
        let (status, answer) = erase(&serve, tenant, body);
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"]["kind"], "invalid");
    }
    let (status, answer) = erase(&serve, "a%20b", r#"{"reason": "ticket 7", "confirm": "a b"}"#);
    assert_eq!(status, 400, "{answer}");
    // A body over the limit is refused in JSON, as everywhere else.
    let big = format!(r#"{{"reason": "{}", "confirm": "acme"}}"#, "x".repeat(10_000));
    let (status, answer) = erase(&serve, "acme", &big);
    assert_eq!((status, answer["error"]["kind"].as_str()), (413, Some("too_large")), "{answer}");
    // A tenant the store does not know cannot be erased, and stays free to use.
    let (status, answer) = erase(&serve, "nobody", r#"{"reason": "typo", "confirm": "nobody"}"#);
    assert_eq!((status, answer["error"]["kind"].as_str()), (404, Some("not_found")), "{answer}");
    assert_eq!(register(&serve, "nobody", "first.txt").0, 201);
    assert_eq!(document(&serve, &doc, 0)["name"], secret);

    // The erasure, through the CLI.
    let (ok, stdout, stderr) = weft(
        &serve.addr,
        &["tenant", "erase", "acme", "--reason", "ticket 7", "--confirm", "acme", "--output", "json"],
    );
    assert!(ok, "{stderr}");
    let erasure: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(erasure["destroyed_key"], true, "{erasure}");
    let position = erasure["position"].as_u64().unwrap();
    let erased = document(&serve, &doc, position);
    assert_eq!((erased["name"].as_str(), erased["owner"].as_str()), (Some("[erased]"), Some("[erased]")), "{erased}");
    // The documents' bytes are gone too; the other tenant's stay.
    assert_eq!(erasure["objects_deleted"], 1, "{erasure}");
    let objects = dir.path().join("objects/data");
    let files = |tenant: &str| std::fs::read_dir(objects.join(tenant)).map_or(0, |d| d.count());
    assert_eq!((files("acme"), files("globex")), (0, 1));
    assert_eq!(document(&serve, &kept, position)["name"], "bob-payslip.txt");
    let history = history_registration(&serve, &doc);
    assert_eq!((history["name"].as_str(), history["labels"].clone()), (Some("[erased]"), serde_json::json!({})));
    assert_eq!(erased["labels"], serde_json::json!({}), "{erased}");
    let (_, stream) = get(&serve.addr, &format!("/streams/document-{doc}/events"));
    assert!(!stream.to_string().contains(label_secret), "{stream}");
    assert_eq!(history_registration(&serve, &kept)["name"], "bob-payslip.txt");

    // No new personal data is accepted for it; the other tenant goes on.
    let (status, answer) = register(&serve, "acme", "new.txt");
    assert_eq!(status, 410, "{answer}");
    assert_eq!(answer["error"]["kind"], "erased", "{answer}");
    assert_eq!(register(&serve, "globex", "new.txt").0, 201);
    // Again: nothing new.
    let (status, again) = erase(&serve, "acme", r#"{"reason": "ticket 8", "confirm": "acme"}"#);
    assert_eq!(status, 200, "{again}");
    assert_eq!((again["destroyed_key"].as_bool(), again["position"].as_u64()), (Some(false), Some(position)));

    // A restart and a rebuild from the log read the same.
    serve.stop();
    let serve = Serve::start(dir.path(), &[]);
    let (ok, _, stderr) = weft(&serve.addr, &["projection", "rebuild", "documents"]);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = weft(&serve.addr, &["projection", "rebuild", "history"]);
    assert!(ok, "{stderr}");
    assert_eq!(document(&serve, &doc, 0)["name"], "[erased]");
    assert_eq!(history_registration(&serve, &doc)["name"], "[erased]");
    assert_eq!(document(&serve, &kept, 0)["name"], "bob-payslip.txt");
    serve.stop();

    // The tools: erased with the keys, the other tenant's in the clear; the log verifies.
    assert_eq!(cat_first(&source, &format!("document-{doc}"), &[])["name"], "[erased]");
    assert_eq!(cat_first(&source, &format!("document-{kept}"), &[])["name"], "bob-payslip.txt");
    let state: Value = serde_json::from_str(&events(&source, &["state", &format!("document-{doc}")])).unwrap();
    assert!(state.to_string().contains("[erased]") && !state.to_string().contains(secret), "{state}");
    let report: Value = serde_json::from_str(&events(&source, &["verify"])).unwrap();
    assert_eq!((report["ok"].as_bool(), report["faults"].as_u64()), (Some(true), Some(0)), "{report}");
    let erasures = events(&source, &["cat", "tenant-erasures"]);
    assert!(erasures.contains("tenant.erased") && erasures.contains("ticket 7"), "{erasures}");
    // The key file holds no key for it any more.
    let keys = rusqlite::Connection::open(dir.path().join("keys.db")).unwrap();
    let (key, erased_at): (Option<Vec<u8>>, Option<i64>) = keys
        .query_row("SELECT key, erased_at FROM tenant_keys WHERE tenant = 'acme'", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap();
    assert_eq!(key, None);
    assert!(erased_at.is_some());
}

#[test]
fn an_erasure_through_one_node_holds_on_every_node_sharing_jetstream() {
    let nats = NatsServer::start().unwrap();
    let url = nats.url();
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // The nodes share their auth secret, as nodes on one bus must.
    let secret_file = a_dir.path().join("shared.secret");
    let args = [
        "--nats",
        &url,
        "--jetstream",
        "--jetstream-stream",
        "ERASURE",
        "--auth-secret-file",
        secret_file.to_str().unwrap(),
    ];
    let a = Serve::start(a_dir.path(), &args);
    let b = Serve::start(b_dir.path(), &args);
    let secret = "carol-medical-record.txt";
    let doc = upload(&a, a_dir.path(), secret, "initech");
    let kept = upload(&a, a_dir.path(), "dave-notes.txt", "umbrella");
    let source: Vec<String> = ["--jetstream", "--nats", &url, "--jetstream-stream", "ERASURE"].map(String::from).into();
    assert!(!contains(&exported_payloads(&source), secret), "the JetStream log holds the name in the clear");
    assert_eq!(cat_first(&source, &format!("document-{doc}"), &[])["name"], secret);
    // Node b reads what node a wrote: the key is shared through JetStream.
    assert_eq!(document(&b, &doc, 0)["name"], secret);

    let (status, erasure) = erase(&b, "initech", r#"{"reason": "ticket 9", "confirm": "initech"}"#);
    assert_eq!(status, 200, "{erasure}");
    let position = erasure["position"].as_u64().unwrap();
    for node in [&a, &b] {
        assert_eq!(document(node, &doc, position)["name"], "[erased]");
        assert_eq!(document(node, &kept, position)["name"], "dave-notes.txt");
    }
    // Node a learns of the erasure from the keys' stream: it refuses the tenant's new documents too.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, answer) = register(&a, "initech", "new.txt");
        if status == 410 {
            break;
        }
        assert!(Instant::now() < deadline, "node a still accepts documents of the erased tenant: {status} {answer}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(cat_first(&source, &format!("document-{doc}"), &[])["name"], "[erased]");
    assert_eq!(cat_first(&source, &format!("document-{kept}"), &[])["name"], "dave-notes.txt");
    a.stop();
    b.stop();
    // A node started afresh reads it erased as well.
    let c_dir = tempfile::tempdir().unwrap();
    let c = Serve::start(c_dir.path(), &args);
    assert_eq!(document(&c, &doc, position)["name"], "[erased]");
    assert_eq!(document(&c, &kept, position)["name"], "dave-notes.txt");
    c.stop();
}
