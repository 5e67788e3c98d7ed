//! Triggers through a real `weft serve`, on the embedded SQLite store and on NATS + JetStream: each upload a
//! trigger matches runs its workflow once, across `kill -9` of the node between uploads and their firing; a
//! paused trigger fires nothing; a trigger's own outputs do not set it off again; a trigger fires on its own
//! tenant's documents only; bad triggers are refused with typed errors and record nothing.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::{Value, json};
use weft_harness::NatsServer;

use crate::serve::{Serve, command, get, http, weft};

/// Writes `name` in `dir` with some text; its path.
fn file(dir: &Path, name: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("Some text of {name}.")).unwrap();
    path.to_str().unwrap().to_owned()
}

/// Uploads `name` with `labels` (`KEY=VALUE`) through the CLI; the document's id, `None` when the upload
/// failed (the node was killed meanwhile).
fn upload(addr: &str, dir: &Path, name: &str, labels: &[&str], tenant: Option<&str>) -> Option<String> {
    let path = file(dir, name);
    let mut args = vec!["document", "upload", path.as_str()];
    for label in labels {
        args.extend(["--label", label]);
    }
    if let Some(tenant) = tenant {
        args.extend(["--tenant", tenant]);
    }
    let (ok, stdout, _) = weft(addr, &args);
    ok.then(|| stdout.trim().to_owned())
}

/// Creates a trigger of the built-in `redact` workflow on `conditions` (`--where`) through the CLI, with `id`.
fn create(addr: &str, id: &str, conditions: &[&str], extra: &[&str]) {
    let mut args = vec!["trigger", "create", "--workflow", "redact", "--id", id];
    for condition in conditions {
        args.extend(["--where", condition]);
    }
    args.extend_from_slice(extra);
    let (ok, stdout, stderr) = weft(addr, &args);
    assert!(ok, "{stdout}{stderr}");
}

/// The documents the list holds with these filters, every page.
fn documents(addr: &str, query: &str) -> Vec<Value> {
    let (mut items, mut cursor) = (Vec::new(), None::<String>);
    loop {
        let page = match &cursor {
            Some(cursor) => format!("/documents?{query}&limit=1000&cursor={cursor}"),
            None => format!("/documents?{query}&limit=1000"),
        };
        let (status, body) = get(addr, &page);
        assert_eq!(status, 200, "{body}");
        items.extend(body["items"].as_array().unwrap().iter().cloned());
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return items,
        }
    }
}

/// The uploaded documents with label `batch=<batch>` that people uploaded (not agents' outputs), by id.
fn uploads(addr: &str, batch: &str) -> Vec<String> {
    documents(addr, &format!("status=uploaded&label.batch={batch}"))
        .into_iter()
        .filter(|d| !d["owner"].as_str().unwrap_or("").starts_with("agent:"))
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect()
}

/// The trigger as the read model has it (which has it a moment after its creation was acknowledged: asked
/// again while it answers 404).
fn trigger(addr: &str, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = get(addr, &format!("/triggers/{id}"));
        if status == 404 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        assert_eq!(status, 200, "{body}");
        return body;
    }
}

/// How many jobs are not finished.
fn running_jobs(addr: &str) -> usize {
    let (_, page) = get(addr, "/jobs?status=running&limit=1000");
    page["items"].as_array().map_or(0, Vec::len)
}

/// Waits until the trigger fired once for each upload of `batch`, every job is done and each upload has
/// exactly one output (the one job that ran on it); then waits a while longer and checks that nothing more
/// fired (the outputs, which match the selector too, set nothing off). The number of uploads.
fn settled(addr: &str, trigger_id: &str, batch: &str) -> usize {
    let deadline = Instant::now() + Duration::from_secs(120);
    // The jobs whose steps wrote an output of the document (an attempt cut short by the kill may have written
    // one before its retry wrote another: two outputs of one job).
    let outputs_of = |id: &str| {
        let (_, document) = get(addr, &format!("/documents/{id}"));
        let derivatives = document["derivatives"].as_array().cloned().unwrap_or_default();
        derivatives.iter().filter_map(|d| d["job"].as_str().map(str::to_owned)).collect::<BTreeSet<_>>().len()
    };
    let count = loop {
        let uploaded = uploads(addr, batch);
        let fires = trigger(addr, trigger_id)["fires"].as_u64().unwrap_or(0) as usize;
        let done = fires >= uploaded.len() && running_jobs(addr) == 0 && uploaded.iter().all(|id| outputs_of(id) >= 1);
        if done {
            break uploaded.len();
        }
        assert!(
            Instant::now() < deadline,
            "{} uploads, {fires} fires, {} jobs running",
            uploaded.len(),
            running_jobs(addr)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    std::thread::sleep(Duration::from_millis(1500));
    let uploaded = uploads(addr, batch);
    assert_eq!(uploaded.len(), count);
    let state = trigger(addr, trigger_id);
    assert_eq!(state["fires"].as_u64(), Some(count as u64), "one job per upload, none on outputs: {state}");
    for id in &uploaded {
        assert_eq!(outputs_of(id), 1, "document {id} was worked on by one job");
    }
    count
}

/// Uploads documents while the node is killed with SIGKILL at a random moment, three times, then lets the
/// last node settle: every upload recorded fired exactly one job.
fn fires_once_across_kills(dir: &Path, args: &[&str]) {
    let mut serve = Serve::start(dir, args);
    let trigger_id = uuid::Uuid::now_v7().to_string();
    create(&serve.addr, &trigger_id, &["content_type=text/plain", "label.batch=crash"], &[]);
    let mut rng = rand::rng();
    let mut succeeded = 0;
    for round in 0..3 {
        let addr = serve.addr.clone();
        let folder = dir.to_owned();
        let uploader = std::thread::spawn(move || {
            (0..25).filter_map(|n| upload(&addr, &folder, &format!("r{round}-{n}.txt"), &["batch=crash"], None)).count()
        });
        std::thread::sleep(Duration::from_millis(rng.random_range(200..1500)));
        serve.child.kill().unwrap();
        serve.child.wait().unwrap();
        succeeded += uploader.join().unwrap();
        serve = Serve::start(dir, args);
    }
    let count = settled(&serve.addr, &trigger_id, "crash");
    eprintln!("{count} uploads recorded, {succeeded} acknowledged to the uploader, each fired once");
    assert!(count >= succeeded && count > 0, "{count} uploads recorded, {succeeded} acknowledged");
    serve.stop();
}

#[test]
fn each_upload_fires_its_trigger_once_across_kill_9_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    fires_once_across_kills(dir.path(), &[]);
}

#[test]
fn each_upload_fires_its_trigger_once_across_kill_9_on_jetstream() {
    let nats = NatsServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = nats.url();
    fires_once_across_kills(dir.path(), &["--nats", &url, "--jetstream"]);
}

/// A paused trigger fires nothing, and fires again on uploads after it is resumed; a deleted one never again.
/// Its outputs never fire it. A document of another tenant, or one the selector does not match, fires nothing.
fn pause_resume_delete_and_tenants(serve: &Serve, dir: &Path) {
    let addr = serve.addr.as_str();
    let id = uuid::Uuid::now_v7().to_string();
    create(addr, &id, &["label.batch=life", "name_prefix=in-"], &["--tenant", "acme", "--param", "tone=dry"]);
    let state = trigger(addr, &id);
    assert_eq!(state["selector"]["tenant"], "acme", "a tenant's trigger selects its own tenant's documents: {state}");
    assert_eq!(state["parameters"]["tone"], "dry", "{state}");

    upload(addr, dir, "in-1.txt", &["batch=life"], Some("acme")).unwrap();
    // Not a match: another tenant, another name, another label value.
    upload(addr, dir, "in-2.txt", &["batch=life"], Some("globex")).unwrap();
    upload(addr, dir, "out-3.txt", &["batch=life"], Some("acme")).unwrap();
    upload(addr, dir, "in-4.txt", &["batch=other"], Some("acme")).unwrap();
    assert_eq!(settled_on(addr, &id, 1), 1);

    let (ok, _, stderr) = weft(addr, &["trigger", "pause", &id]);
    assert!(ok, "{stderr}");
    // A sentinel on the same document: the process decides every trigger of an upload in one handling, so
    // once the sentinel has fired, the paused trigger's turn has passed.
    let sentinel = |prefix: &str| {
        let sentinel = uuid::Uuid::now_v7().to_string();
        create(addr, &sentinel, &["label.batch=life", &format!("name_prefix={prefix}")], &["--tenant", "acme"]);
        sentinel
    };
    let passed = sentinel("in-5");
    upload(addr, dir, "in-5.txt", &["batch=life"], Some("acme")).unwrap();
    settled_on(addr, &passed, 1);
    assert_eq!(trigger(addr, &id)["fires"], 1, "a paused trigger fires nothing");
    assert_eq!(trigger(addr, &id)["status"], "paused");

    let (ok, _, stderr) = weft(addr, &["trigger", "resume", &id]);
    assert!(ok, "{stderr}");
    upload(addr, dir, "in-6.txt", &["batch=life"], Some("acme")).unwrap();
    assert_eq!(settled_on(addr, &id, 2), 2, "the upload made while it was paused stays unfired");

    let (ok, _, stderr) = weft(addr, &["trigger", "delete", &id]);
    assert!(ok, "{stderr}");
    let passed = sentinel("in-7");
    upload(addr, dir, "in-7.txt", &["batch=life"], Some("acme")).unwrap();
    settled_on(addr, &passed, 1);
    let state = trigger(addr, &id);
    assert_eq!((state["status"].as_str(), state["fires"].as_u64()), (Some("deleted"), Some(2)), "{state}");
    let (ok, _, stderr) = weft(addr, &["trigger", "resume", &id]);
    assert!(!ok && stderr.contains("deleted"), "{stderr}");

    let (ok, stdout, _) = weft(addr, &["trigger", "list", "--where", "tenant=acme", "--output", "json"]);
    assert!(ok && stdout.contains(&id), "{stdout}");
}

/// Waits until the trigger fired `fires` times and no job runs; then a while longer, and checks it did not
/// fire again (its jobs' outputs match its selector's label and tenant, not its name prefix: the name check is
/// the selector's; what keeps `own_outputs` off is tested by the crash test's selector, which they match).
fn settled_on(addr: &str, id: &str, fires: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    while trigger(addr, id)["fires"].as_u64() != Some(fires) || running_jobs(addr) > 0 {
        assert!(Instant::now() < deadline, "{}", trigger(addr, id));
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1000));
    trigger(addr, id)["fires"].as_u64().unwrap()
}

#[test]
fn a_paused_trigger_fires_nothing_and_a_trigger_fires_on_its_own_tenants_matches_only() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &[]);
    pause_resume_delete_and_tenants(&serve, dir.path());
    serve.stop();
}

#[test]
fn a_paused_trigger_fires_nothing_on_jetstream() {
    let nats = NatsServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = nats.url();
    let serve = Serve::start(dir.path(), &["--nats", &url, "--jetstream"]);
    pause_resume_delete_and_tenants(&serve, dir.path());
    serve.stop();
}

#[test]
fn a_trigger_asked_to_fire_on_its_own_outputs_does() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &[]);
    let addr = serve.addr.as_str();
    // `redact` writes its input back, redacted: with own_outputs, each output fires again, so one upload becomes a chain;
    // the trigger is deleted once it has fired three times.
    let id = uuid::Uuid::now_v7().to_string();
    create(addr, &id, &["label.batch=loop"], &["--own-outputs"]);
    upload(addr, dir.path(), "loop.txt", &["batch=loop"], None).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while trigger(addr, &id)["fires"].as_u64() < Some(3) {
        assert!(Instant::now() < deadline, "{}", trigger(addr, &id));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(weft(addr, &["trigger", "delete", &id]).0);
}

#[test]
fn bad_triggers_are_refused_with_typed_errors_and_record_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &[]);
    let addr = serve.addr.as_str();
    let redact = weft::agents::catalog::workflow_id("redact").to_string();
    let refused = |payload: Value, code: &str| {
        let id = uuid::Uuid::now_v7().to_string();
        let (status, reply) = command(addr, "trigger", &id, "create", payload);
        assert_ne!(status, 200, "{reply}");
        let found = reply["error"]["rejection"]["code"].as_str().or(reply["error"]["kind"].as_str());
        assert_eq!(found, Some(code), "{reply}");
        let (_, events) = get(addr, &format!("/streams/trigger-{id}/events"));
        assert!(events["items"].as_array().is_none_or(Vec::is_empty), "nothing recorded: {events}");
        reply
    };
    let selector = json!({"content_type": "text/plain"});
    // A workflow never defined, and an archived one.
    let unknown = uuid::Uuid::now_v7().to_string();
    refused(json!({"workflow": unknown, "selector": selector}), "unknown_workflow");
    let (status, reply) = command(addr, "workflow", &redact, "archive", json!({"reason": "test"}));
    assert_eq!(status, 200, "{reply}");
    refused(json!({"workflow": redact, "selector": selector}), "workflow_archived");
    let (status, reply) = command(addr, "workflow", &redact, "restore", json!({}));
    assert_eq!(status, 200, "{reply}");
    // Selectors: none of its fields, an unknown field (an operator the protocol does not have), a label value
    // that is not a string, a bad label key; bad parameters.
    refused(json!({"workflow": redact, "selector": {}}), "invalid_selector");
    refused(json!({"workflow": redact, "selector": {"labels_not": {"project": "q3"}}}), "invalid");
    refused(json!({"workflow": redact, "selector": {"labels": {"project": {"ne": "q3"}}}}), "invalid");
    refused(json!({"workflow": redact, "selector": {"labels": {"bad key": "q3"}}}), "invalid_selector");
    refused(json!({"workflow": redact, "selector": selector, "parameters": {"bad name": "x"}}), "invalid_parameters");
    refused(json!({"workflow": "not-a-uuid", "selector": selector}), "invalid");
    // The CLI refuses an operator other than `=` before it sends anything.
    let (ok, _, stderr) = weft(addr, &["trigger", "create", "--workflow", "redact", "--where", "label.project!=q3"]);
    assert!(!ok && stderr.contains("unknown operator \"!=\""), "{stderr}");
    // Commands to a trigger that does not exist.
    let missing = uuid::Uuid::now_v7().to_string();
    let (status, reply) = command(addr, "trigger", &missing, "pause", json!({}));
    assert_eq!((status, reply["error"]["rejection"]["code"].as_str()), (422, Some("not_created")), "{reply}");
    let (ok, _, stderr) = weft(addr, &["trigger", "show", &missing]);
    assert!(!ok && stderr.contains("not_found"), "{stderr}");
    serve.stop();
}

#[test]
fn only_roles_that_may_command_create_triggers_and_a_tenants_caller_cannot_select_another_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &[]);
    let addr = serve.addr.as_str();
    let redact = weft::agents::catalog::workflow_id("redact").to_string();
    let create = |bearer: &str, selector: Value| {
        let id = uuid::Uuid::now_v7().to_string();
        let body = json!({"command_id": uuid::Uuid::now_v7(), "type": "create",
            "payload": {"workflow": redact, "selector": selector}});
        let headers = [("Authorization", bearer)];
        let response = http(addr, "POST", &format!("/commands/trigger/{id}"), &headers, body.to_string().as_bytes());
        (response.status, response.json())
    };
    let selector = json!({"content_type": "text/plain"});
    for role in [weft::auth::Role::User, weft::auth::Role::Guest] {
        let bearer = crate::serve::bearer(dir.path(), "ann", role);
        let (status, reply) = create(&bearer, selector.clone());
        assert_eq!((status, reply["error"]["kind"].as_str()), (403, Some("forbidden")), "{role:?}: {reply}");
    }
    let operator = crate::serve::bearer(dir.path(), "olga", weft::auth::Role::Operator);
    let (status, reply) = create(&operator, json!({"tenant": "globex", "content_type": "text/plain"}));
    assert_eq!((status, reply["error"]["kind"].as_str()), (403, Some("forbidden")), "{reply}");
    let (status, reply) = create(&operator, selector);
    assert_eq!(status, 200, "{reply}");
    let (status, page) = get(addr, "/triggers?tenant=acme");
    assert_eq!(status, 200);
    let selectors: Vec<&Value> = page["items"].as_array().unwrap().iter().map(|t| &t["selector"]).collect();
    assert_eq!(
        selectors,
        [&json!({"tenant": "acme", "content_type": "text/plain", "name_prefix": null, "labels": {}})]
    );
    serve.stop();
}
