//! Documents on object storage, end to end through a real `weft serve`: register, `curl --upload-file` to the
//! pre-signed URL, the notification, the document uploaded; the object removed, the document deleted. On the
//! local folder store and on a real SeaweedFS S3 server (with NATS carrying the notifications), and every
//! kind of bad input at each entry point: the webhook, the NATS subject, the signed URLs and registration.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use weft::objects::ObjectStore;
use weft_harness::NatsServer;
use weft_harness::Seaweed;

use crate::serve::{Serve, bearer, get, http, weft};

const SECRET: &str = "webhook-secret-for-tests";

/// `POST /documents` for `tenant`; the answer's status and body.
fn register(addr: &str, tenant: &str, name: &str, size_bytes: u64) -> (u16, Value) {
    post_document(addr, tenant, json!({"name": name, "content_type": "text/plain", "size_bytes": size_bytes}))
}

/// `POST /documents` of `body` for `tenant` by `user:ann`; the answer's status and body.
fn post_document(addr: &str, tenant: &str, body: Value) -> (u16, Value) {
    let answer = http(
        addr,
        "POST",
        "/documents",
        &[("Weft-Tenant", tenant), ("Weft-Actor", "user:ann")],
        body.to_string().as_bytes(),
    );
    (answer.status, answer.json())
}

/// `curl --upload-file` of `file` to a pre-signed upload (`{url, headers}`), with `content_type` unless the
/// URL names its headers; the HTTP status.
fn curl_put(upload: &Value, file: &Path, extra: &[&str]) -> u16 {
    let mut command = Command::new("curl");
    if !extra.contains(&"-o") {
        command.args(["-o", "/dev/null"]);
    }
    command.args(["-s", "-w", "%{http_code}", "--upload-file"]).arg(file);
    for (name, value) in upload["headers"].as_object().unwrap() {
        command.args(["-H", &format!("{name}: {}", value.as_str().unwrap())]);
    }
    if upload["headers"].as_object().unwrap().is_empty() {
        command.args(["-H", "Content-Type: text/plain"]);
    }
    command.args(extra).arg(upload["url"].as_str().unwrap());
    let output = command.output().expect("curl runs");
    String::from_utf8_lossy(&output.stdout).parse().unwrap_or(0)
}

/// `curl` of a URL; the status and the body.
fn curl_get(url: &str) -> (u16, Vec<u8>) {
    let output = Command::new("curl").args(["-s", "-w", "\n%{http_code}", url]).output().expect("curl runs");
    let text = output.stdout;
    let split = text.iter().rposition(|b| *b == b'\n').unwrap();
    (String::from_utf8_lossy(&text[split + 1..]).parse().unwrap(), text[..split].to_vec())
}

/// Polls a document until its status is `status`; its item.
fn wait_status(addr: &str, id: &str, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, item) = get(addr, &format!("/documents/{id}"));
        if code == 200 && item["status"] == status {
            return item;
        }
        assert!(Instant::now() < deadline, "document {id} never became {status}: {item}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `POST /objects/events` with the secret; the status and the answer.
fn webhook(addr: &str, body: &[u8]) -> (u16, Value) {
    let auth = format!("Bearer {SECRET}");
    let answer = http(addr, "POST", "/objects/events", &[("Authorization", &auth)], body);
    (answer.status, answer.json())
}

/// An S3 notification of one record.
fn notification(event: &str, bucket: &str, key: &str, object: Value) -> Vec<u8> {
    let mut object = object;
    object["key"] = json!(key.replace('/', "%2F"));
    json!({"EventName": format!("s3:{event}"), "Key": format!("{bucket}/{key}"), "Records": [{
        "eventVersion": "2.0", "eventSource": "minio:s3", "eventName": format!("s3:{event}"),
        "s3": {"bucket": {"name": bucket}, "object": object}}]})
    .to_string()
    .into_bytes()
}

/// What AWS sends a notification target when it is configured: no `Records`.
const AWS_TEST_EVENT: &str = r#"{"Service":"Amazon S3","Event":"s3:TestEvent","Time":"2026-12-06T10:00:00.000Z",
    "Bucket":"weft","RequestId":"5582815E1AEA5ADF","HostId":"8cLeGAmw098X5cv4Zkwcmo8vvZa3eH3eKxsPzbB9wrR"}"#;

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn a_document_uploads_through_its_signed_url_and_is_deleted_with_its_object_on_the_local_store() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &["--webhook-secret", SECRET]);
    let addr = serve.addr.as_str();

    let (status, registered) = register(addr, "acme", "notes.txt", 100);
    assert_eq!(status, 201, "{registered}");
    let id = registered["id"].as_str().unwrap().to_owned();
    let key = registered["key"].as_str().unwrap().to_owned();
    assert_eq!(key, format!("acme/{id}"));
    assert_eq!(wait_status(addr, &id, "registered")["tenant"], "acme");

    let file = dir.path().join("notes.txt");
    std::fs::write(&file, "first notes\n").unwrap();
    assert_eq!(curl_put(&registered["upload"], &file, &[]), 200);
    // The local store announces the object; its size and checksum are storage's.
    let item = wait_status(addr, &id, "uploaded");
    assert_eq!(item["size_bytes"], 12);
    assert_eq!(item["labels"], json!({}));
    assert_eq!(item["etag"], sha256_hex(b"first notes\n"));

    let (status, download) = get(addr, &format!("/documents/{id}/download"));
    assert_eq!(status, 200, "{download}");
    // The answers are as /openapi.json describes them.
    let (_, spec) = get(addr, "/openapi.json");
    crate::openapi::check(&spec, "post", "/documents", 201, &registered);
    crate::openapi::check(&spec, "get", "/documents/{id}/download", status, &download);
    crate::openapi::check(&spec, "get", "/documents/{id}", 200, &item);
    let answer = http(addr, "POST", &format!("/documents/{id}/confirm"), &[], b"");
    crate::openapi::check(&spec, "post", "/documents/{id}/confirm", answer.status, &answer.json());
    let answer = http(addr, "POST", &format!("/documents/{id}/upload-url"), &[], b"");
    crate::openapi::check(&spec, "post", "/documents/{id}/upload-url", answer.status, &answer.json());
    assert_eq!(curl_get(download["download"]["url"].as_str().unwrap()), (200, b"first notes\n".to_vec()));

    // The same content again changes nothing (and its object goes); another content is a new version, in an
    // object of its own.
    let again = http(addr, "POST", &format!("/documents/{id}/upload-url"), &[], b"").json();
    let slot = again["key"].as_str().unwrap().to_owned();
    assert!(slot.starts_with(&format!("acme/v/{id}/")), "{again}");
    assert_eq!(curl_put(&again["upload"], &file, &[]), 200);
    // The local store's own notification finds the current content: the slot's object goes, no version comes.
    let deadline = Instant::now() + Duration::from_secs(20);
    while dir.path().join("objects/data").join(&slot).exists() {
        assert!(Instant::now() < deadline, "the duplicate's object stayed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let confirmed = http(addr, "POST", &format!("/documents/{id}/confirm?key={}", slot.replace('/', "%2F")), &[], b"");
    assert_eq!(confirmed.json()["error"]["kind"], "not_found", "{}", confirmed.body);
    assert_eq!(get(addr, &format!("/documents/{id}")).1["versions"], 1);
    let again = http(addr, "POST", &format!("/documents/{id}/upload-url"), &[], b"").json();
    std::fs::write(&file, "second notes, longer\n").unwrap();
    assert_eq!(curl_put(&again["upload"], &file, &[]), 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(addr, &format!("/documents/{id}")).1["versions"] != 2 {
        assert!(Instant::now() < deadline, "no second version");
        std::thread::sleep(Duration::from_millis(20));
    }
    // That URL has written its version: it writes nothing more.
    std::fs::write(&file, "third notes, never kept\n").unwrap();
    assert_eq!(curl_put(&again["upload"], &file, &[]), 412);

    // The object is removed behind Weft's back, and storage says so: the document is deleted, once.
    std::fs::remove_file(dir.path().join("objects/data").join(&key)).unwrap();
    let removed = notification("ObjectRemoved:Delete", "local", &key, json!({}));
    let (status, answer) = webhook(addr, &removed);
    assert_eq!((status, &answer["records"][0]["outcome"]), (200, &json!("deleted")), "{answer}");
    assert_eq!(wait_status(addr, &id, "deleted")["deleted_reason"], "its object was removed from storage");
    assert_eq!(webhook(addr, &removed).1["records"][0]["outcome"], "duplicate");

    // Labels given at registration are served with the document.
    let body =
        json!({"name": "labelled.txt", "content_type": "text/plain", "size_bytes": 10, "labels": {"project": "q3"}});
    let labelled = http(addr, "POST", "/documents", &[("Weft-Tenant", "acme")], body.to_string().as_bytes()).json();
    let labelled = wait_status(addr, labelled["id"].as_str().unwrap(), "registered");
    assert_eq!(labelled["labels"], json!({"project": "q3"}));

    // Deleting through the API removes the object too.
    let (_, other) = register(addr, "acme", "other.txt", 100);
    let other_id = other["id"].as_str().unwrap();
    assert_eq!(curl_put(&other["upload"], &file, &[]), 200);
    wait_status(addr, other_id, "uploaded");
    // The actor is the identity's subject (Weft-Actor decides nothing with authentication on).
    let bearer = bearer(dir.path(), "user:ann", weft::auth::Role::Operator);
    let headers = [("Weft-Actor", "user:mallory"), ("Authorization", bearer.as_str())];
    let answer = http(addr, "DELETE", &format!("/documents/{other_id}"), &headers, b"");
    assert_eq!((answer.status, answer.json()["outcome"].clone()), (200, json!("deleted")));
    assert_eq!(wait_status(addr, other_id, "deleted")["deleted_reason"], "deleted by user:ann");
    assert!(!dir.path().join("objects/data/acme").join(other_id).exists());
    assert_eq!(get(addr, &format!("/documents/{other_id}/download")).0, 422);

    serve.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_uploads_to_seaweedfs_and_its_notifications_arrive_over_nats_and_the_webhook() {
    let nats = NatsServer::start().unwrap();
    let seaweed = Seaweed::start().unwrap();
    let s3 = crate::support::bucket(&seaweed, "docs").await;
    let dir = tempfile::tempdir().unwrap();
    let endpoint = seaweed.endpoint();
    let (key_id, secret) = seaweed.credentials();
    let args = [
        "--nats",
        &nats.url(),
        "--s3-bucket",
        "docs",
        "--s3-endpoint",
        &endpoint,
        "--s3-path-style",
        "--webhook-secret",
        SECRET,
    ];
    let serve = Serve::start_with_env(
        dir.path(),
        &args,
        &[("AWS_ACCESS_KEY_ID", &key_id), ("AWS_SECRET_ACCESS_KEY", &secret), ("AWS_EC2_METADATA_DISABLED", "true")],
    );
    let addr = serve.addr.clone();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let request = |body: Vec<u8>| {
        let client = client.clone();
        async move {
            let reply = client.request("weft.objects.events", body.into()).await.unwrap();
            serde_json::from_slice::<Value>(&reply.payload).unwrap()
        }
    };

    let (status, registered) = register(&addr, "acme", "report.txt", 1000);
    assert_eq!(status, 201, "{registered}");
    let id = registered["id"].as_str().unwrap().to_owned();
    let key = registered["key"].as_str().unwrap().to_owned();
    let file = dir.path().join("report.txt");
    std::fs::write(&file, "a report for S3\n").unwrap();
    assert_eq!(curl_put(&registered["upload"], &file, &[]), 200);

    // SeaweedFS sends no notifications: publish the one MinIO would, from the object's real head.
    let head = s3.head(&key).await.unwrap();
    assert_eq!(head.size_bytes, 16);
    let created = notification("ObjectCreated:Put", "docs", &key, json!({"size": head.size_bytes, "eTag": head.etag}));
    let answer = request(created.clone()).await;
    assert_eq!(answer["records"][0]["outcome"], "uploaded", "{answer}");
    let item = wait_status(&addr, &id, "uploaded");
    assert_eq!((item["size_bytes"].clone(), item["etag"].clone()), (json!(16), json!(head.etag)));
    assert_eq!(request(created).await["records"][0]["outcome"], "duplicate");
    let (_, download) = get(&addr, &format!("/documents/{id}/download"));
    assert_eq!(curl_get(download["download"]["url"].as_str().unwrap()), (200, b"a report for S3\n".to_vec()));

    // Bad input on the NATS subject gets a typed answer, and the node keeps serving.
    let answer = request(b"not json".to_vec()).await;
    assert_eq!(answer["error"]["kind"], "invalid", "{answer}");
    assert_eq!(request(b"{\"Records\": []}".to_vec()).await["error"]["message"], "the notification has no records");
    // AWS's message on configuring a target is answered as nothing to do, not an error (it would be retried).
    assert_eq!(request(AWS_TEST_EVENT.as_bytes().to_vec()).await, json!({"records": []}));

    // A client that saw no notification confirms; storage's head decides.
    let (_, second) = register(&addr, "acme", "second.txt", 1000);
    let second_id = second["id"].as_str().unwrap();
    assert_eq!(curl_put(&second["upload"], &file, &[]), 200);
    let answer = http(&addr, "POST", &format!("/documents/{second_id}/confirm"), &[], b"");
    assert_eq!((answer.status, answer.json()["outcome"].clone()), (200, json!("uploaded")));
    wait_status(&addr, second_id, "uploaded");

    // The object is deleted in the bucket; the removal arrives on the webhook: the document is deleted.
    s3.delete(&key).await.unwrap();
    let (status, answer) = webhook(&addr, &notification("ObjectRemoved:Delete", "docs", &key, json!({})));
    assert_eq!((status, &answer["records"][0]["outcome"]), (200, &json!("deleted")), "{answer}");
    wait_status(&addr, &id, "deleted");

    // An upload URL writes once on S3 too (signed `If-None-Match: *`, `If-Match` for a version).
    assert_eq!(curl_put(&second["upload"], &file, &[]), 412);
    // S3 cannot revoke a URL: one signed before its document was deleted still writes, and the object that
    // lands under a deleted document is removed when storage says it came.
    let (_, third) = register(&addr, "acme", "third.txt", 1000);
    let third_id = third["id"].as_str().unwrap();
    let third_key = third["key"].as_str().unwrap();
    assert_eq!(http(&addr, "DELETE", &format!("/documents/{third_id}"), &[], b"").status, 200);
    assert_eq!(curl_put(&third["upload"], &file, &[]), 200);
    let head = s3.head(third_key).await.unwrap();
    let created =
        notification("ObjectCreated:Put", "docs", third_key, json!({"size": head.size_bytes, "eTag": head.etag}));
    assert_eq!(request(created).await["records"][0]["outcome"], "discarded");
    assert!(matches!(s3.head(third_key).await, Err(weft::objects::Error::NotFound { .. })));
    assert_eq!(wait_status(&addr, third_id, "deleted")["versions"], 0);

    serve.stop();
}

#[test]
fn bad_notifications_are_refused_with_the_reason_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &["--webhook-secret", SECRET]);
    let addr = serve.addr.as_str();
    let (_, registered) = register(addr, "acme", "a.txt", 100);
    let id = registered["id"].as_str().unwrap().to_owned();
    let key = registered["key"].as_str().unwrap().to_owned();
    let file = dir.path().join("a.txt");
    std::fs::write(&file, "twelve bytes").unwrap();
    assert_eq!(curl_put(&registered["upload"], &file, &[]), 200);
    let before = wait_status(addr, &id, "uploaded");

    let created = |bucket: &str, key: &str, size: u64| {
        notification("ObjectCreated:Put", bucket, key, json!({"size": size, "eTag": before["etag"]}))
    };
    // Without the secret, or with another one.
    let answer = http(addr, "POST", "/objects/events", &[], &created("local", &key, 12));
    assert_eq!(answer.status, 401);
    let answer =
        http(addr, "POST", "/objects/events", &[("Authorization", "Bearer guess")], &created("local", &key, 12));
    assert_eq!(answer.status, 401);
    // Not JSON, no records.
    let (status, answer) = webhook(addr, b"<xml/>");
    assert_eq!((status, answer["error"]["kind"].as_str()), (400, Some("invalid")));
    assert!(answer["error"]["message"].as_str().unwrap().contains("not S3 event JSON"), "{answer}");
    let (status, answer) = webhook(addr, b"{\"Records\": []}");
    assert_eq!((status, answer["error"]["message"].as_str()), (400, Some("the notification has no records")));
    // AWS's message on configuring a notification target: nothing to record, and no error.
    assert_eq!(webhook(addr, AWS_TEST_EVENT.as_bytes()), (200, json!({"records": []})));
    // Another bucket; a key outside the document's tenant; a size other than the object's.
    let (status, answer) = webhook(addr, &created("someone-elses", &key, 12));
    assert_eq!(status, 422, "{answer}");
    assert!(answer["records"][0]["error"]["message"].as_str().unwrap().contains("bucket \"someone-elses\""));
    let (status, answer) = webhook(addr, &created("local", &format!("evil/{id}"), 12));
    assert_eq!(status, 422, "{answer}");
    assert!(answer["records"][0]["error"]["message"].as_str().unwrap().contains("outside the prefix \"acme/\""));
    let (status, answer) = webhook(addr, &created("local", &key, 4096));
    assert_eq!(status, 422, "{answer}");
    assert!(answer["records"][0]["error"]["message"].as_str().unwrap().contains("4096 bytes; the object has 12"));
    // A key that escapes the store.
    let (status, answer) = webhook(addr, &created("local", "acme/../../etc/passwd", 12));
    assert_eq!((status, answer["records"][0]["error"]["kind"].as_str()), (422, Some("invalid")), "{answer}");
    // Unknown keys and stale removals are skipped, not errors (a sender would retry them forever).
    let unknown = format!("acme/{}", uuid::Uuid::now_v7());
    let (status, answer) = webhook(addr, &created("local", &unknown, 12));
    assert_eq!((status, &answer["records"][0]["outcome"]), (200, &json!("ignored")), "{answer}");
    let (status, answer) = webhook(addr, &created("local", "not-a-document-key", 12));
    assert_eq!((status, &answer["records"][0]["reason"]), (200, &json!("the key is not a document's")), "{answer}");
    let (status, answer) = webhook(addr, &notification("ObjectRemoved:Delete", "local", &key, json!({})));
    assert_eq!((status, &answer["records"][0]["outcome"]), (200, &json!("ignored")), "{answer}");

    // Nothing changed, and the node serves on.
    let after = get(addr, &format!("/documents/{id}")).1;
    assert_eq!(after, before);
    serve.stop();
}

#[test]
fn bad_uploads_and_registrations_are_refused_and_leave_the_document_registered() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &[]);
    let addr = serve.addr.as_str();
    let (_, registered) = register(addr, "acme", "a.txt", 10);
    let id = registered["id"].as_str().unwrap().to_owned();
    let upload = &registered["upload"];
    let url = upload["url"].as_str().unwrap();
    let small = dir.path().join("small.txt");
    std::fs::write(&small, "ok").unwrap();
    let large = dir.path().join("large.txt");
    std::fs::write(&large, "eleven bytes").unwrap();

    // Larger than registered: refused before the body (Content-Length) and while streaming (chunked).
    assert_eq!(curl_put(upload, &large, &[]), 413);
    assert_eq!(curl_put(upload, &large, &["-H", "Transfer-Encoding: chunked"]), 413);
    // Another content type than the signed one.
    let html = json!({"url": url, "headers": {"Content-Type": "text/html"}});
    assert_eq!(curl_put(&html, &small, &[]), 403);
    // A tampered signature, a raised limit, the URL used for another key.
    let tampered = json!({"url": crate::objects::tamper(url), "headers": upload["headers"]});
    assert_eq!(curl_put(&tampered, &small, &[]), 403);
    let raised = json!({"url": url.replace("max=10&", "max=1000&"), "headers": upload["headers"]});
    assert_eq!(curl_put(&raised, &large, &[]), 403);
    let elsewhere = format!("acme/{}", uuid::Uuid::now_v7());
    let moved = json!({"url": url.replace(&format!("acme/{id}"), &elsewhere), "headers": upload["headers"]});
    assert_eq!(curl_put(&moved, &small, &[]), 403);
    // Unsigned, and a path that climbs out of the store.
    let query = url.split_once('?').unwrap().1;
    let answer = http(addr, "PUT", &format!("/objects/acme/{id}"), &[], b"");
    assert_eq!(answer.status, 403, "{answer:?}");
    for path in [format!("/objects/acme/../../etc/passwd?{query}"), format!("/objects/acme/%2e%2e/x?{query}")] {
        let answer = http(addr, "PUT", &path, &[("Content-Type", "text/plain"), ("Content-Length", "0")], b"");
        assert!(answer.status == 400 || answer.status == 404, "{path}: {answer:?}");
    }
    assert!(!dir.path().join("objects/etc").exists() && !Path::new("/etc/passwd.tmp").exists());
    assert_eq!(get(addr, &format!("/documents/{id}")).1["status"], "registered");
    assert_eq!(std::fs::read_dir(dir.path().join("objects/tmp")).unwrap().count(), 0);

    // Registrations: not JSON, unknown fields, a tenant that cannot prefix a key, a size of zero.
    let post = |body: &str, tenant: &str| {
        let answer = http(addr, "POST", "/documents", &[("Weft-Tenant", tenant)], body.as_bytes());
        (answer.status, answer.json())
    };
    assert_eq!(post("{", "acme").0, 400);
    assert_eq!(post(r#"{"name":"a","content_type":"text/plain","size_bytes":1,"owner":"x"}"#, "acme").0, 400);
    let (status, answer) = post(r#"{"name":"a","content_type":"text/plain","size_bytes":1}"#, "../etc");
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().contains("cannot prefix keys"), "{answer}");
    let (status, answer) = post(r#"{"name":"a","content_type":"text/plain","size_bytes":0}"#, "acme");
    assert_eq!((status, answer["error"]["rejection"]["code"].as_str()), (422, Some("bad_declared_size")), "{answer}");
    // Labels: not an object of strings, or a key the aggregate refuses.
    let (status, answer) = post(r#"{"name":"a","content_type":"text/plain","size_bytes":1,"labels":[1]}"#, "acme");
    assert_eq!(status, 400, "{answer}");
    let (status, answer) =
        post(r#"{"name":"a","content_type":"text/plain","size_bytes":1,"labels":{"no spaces":"v"}}"#, "acme");
    assert_eq!(status, 422, "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().contains("label"), "{answer}");
    let (status, _) = get(addr, "/documents/not-a-uuid/download");
    assert_eq!(status, 400);

    // A registration naming an existing document's id: the same one again answers the stored document's
    // upload; another tenant, or other fields, are refused and sign nothing.
    let repeat = |tenant: &str, size_bytes: u64, name: &str| {
        post_document(
            addr,
            tenant,
            json!({"id": id, "name": name, "content_type": "text/plain", "size_bytes": size_bytes}),
        )
    };
    let (status, again) = repeat("acme", 10, "a.txt");
    assert_eq!(
        (status, &again["outcome"]["repeated"], &again["key"]),
        (201, &json!(true), &json!(format!("acme/{id}")))
    );
    assert_eq!(curl_put(&again["upload"], &large, &[]), 413, "the repeat's URL is bound to the stored size");
    let (status, answer) = repeat("evil", 10, "a.txt");
    assert_eq!((status, answer["error"]["kind"].as_str()), (409, Some("conflict")), "{answer}");
    assert!(answer.get("upload").is_none() && !answer.to_string().contains("evil/"), "{answer}");
    let (status, answer) = repeat("acme", 1_000_000, "a.txt");
    assert_eq!((status, answer["error"]["kind"].as_str()), (409, Some("conflict")), "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().contains("size_bytes"), "{answer}");
    let (status, answer) = repeat("acme", 10, "b.txt");
    assert_eq!(status, 409, "{answer}");
    assert_eq!(get(addr, &format!("/documents/{id}")).1["tenant"], "acme");

    serve.stop();
}

/// `curl --upload-file` as [`curl_put`]; the status and the answer's JSON.
fn curl_put_json(upload: &Value, file: &Path) -> (u16, Value) {
    let out = file.with_extension("answer");
    let status = curl_put(upload, file, &["-o", out.to_str().unwrap()]);
    (status, serde_json::from_slice(&std::fs::read(&out).unwrap_or_default()).unwrap_or(Value::Null))
}

#[test]
fn an_upload_url_writes_once_and_never_after_its_document_is_uploaded_or_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &[]);
    let addr = serve.addr.as_str();
    let (_, registered) = register(addr, "acme", "once.txt", 100);
    let id = registered["id"].as_str().unwrap().to_owned();
    let object = dir.path().join("objects/data").join(registered["key"].as_str().unwrap());
    // A second URL for the pending upload, as a retrying client gets.
    let (_, repeat) = post_document(
        addr,
        "acme",
        json!({"id": id, "name": "once.txt", "content_type": "text/plain", "size_bytes": 100}),
    );
    let file = dir.path().join("once.txt");
    std::fs::write(&file, "the upload\n").unwrap();
    assert_eq!(curl_put(&registered["upload"], &file, &[]), 200);
    let uploaded = wait_status(addr, &id, "uploaded");

    // The same URL again, and the other URL signed while the upload was pending: refused, bytes unchanged.
    std::fs::write(&file, "replaced bytes\n").unwrap();
    let (status, answer) = curl_put_json(&registered["upload"], &file);
    assert_eq!((status, &answer["error"]["kind"]), (412, &json!("conflict")), "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().contains("writes once"), "{answer}");
    assert_eq!(curl_put(&repeat["upload"], &file, &[]), 412);
    assert_eq!(std::fs::read(&object).unwrap(), b"the upload\n");
    assert_eq!(get(addr, &format!("/documents/{id}")).1["etag"], uploaded["etag"]);

    // A URL for a new version, signed before the document is deleted, writes nothing after.
    let version = http(addr, "POST", &format!("/documents/{id}/upload-url"), &[], b"").json();
    assert_eq!(http(addr, "DELETE", &format!("/documents/{id}"), &[], b"").status, 200);
    assert!(!object.exists());
    for upload in [&version["upload"], &registered["upload"]] {
        let (status, answer) = curl_put_json(upload, &file);
        assert_eq!((status, &answer["error"]["rejection"]["code"]), (422, &json!("deleted")), "{answer}");
    }
    assert!(!object.exists(), "no URL writes a deleted document's file back");
    assert_eq!(wait_status(addr, &id, "deleted")["versions"], 1);
    serve.stop();
}

#[test]
fn an_expired_upload_url_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &["--url-expiry-secs", "1"]);
    let addr = serve.addr.as_str();
    let (_, registered) = register(addr, "acme", "a.txt", 10);
    let small = dir.path().join("small.txt");
    std::fs::write(&small, "ok").unwrap();
    // Its expiry is a whole second on the clock: poll until it has passed.
    let deadline = Instant::now() + Duration::from_secs(10);
    let answer = loop {
        let output = Command::new("curl")
            .args(["-s", "--upload-file"])
            .arg(&small)
            .args(["-H", "Content-Type: text/plain", registered["upload"]["url"].as_str().unwrap()])
            .output()
            .unwrap();
        let answer: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
        if answer["error"]["kind"] == "forbidden" || Instant::now() > deadline {
            break answer;
        }
        // Uploads inside the second succeed; wait for the next one.
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(answer["error"]["message"].as_str().unwrap_or("").contains("expired"), "{answer}");
    serve.stop();
}

#[test]
fn the_cli_uploads_downloads_and_deletes_a_document() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &[]);
    let addr = serve.addr.as_str();
    let file = dir.path().join("minutes.md");
    std::fs::write(&file, "# Minutes\n\nNothing was decided.\n").unwrap();

    let (ok, stdout, stderr) = weft(addr, &["document", "upload", file.to_str().unwrap(), "--tenant", "acme"]);
    assert!(ok, "{stderr}");
    let id = stdout.trim().to_owned();
    let item = get(addr, &format!("/documents/{id}")).1;
    assert_eq!((item["status"].as_str(), item["tenant"].as_str()), (Some("uploaded"), Some("acme")), "{item}");
    assert_eq!((item["name"].as_str(), item["content_type"].as_str()), (Some("minutes.md"), Some("text/markdown")));

    let copy = dir.path().join("copy.md");
    let (ok, _, stderr) = weft(addr, &["document", "download", &id, "--out", copy.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(&file).unwrap());

    let (ok, stdout, stderr) = weft(addr, &["document", "delete", &id, "--output", "json"]);
    assert!(ok, "{stderr}");
    assert_eq!(serde_json::from_str::<Value>(&stdout).unwrap()["outcome"], "deleted");
    let (ok, _, stderr) = weft(addr, &["document", "download", &id, "--out", copy.to_str().unwrap()]);
    assert!(!ok && stderr.contains("422 rejected") && stderr.contains("deleted"), "{stderr}");

    let (ok, _, stderr) = weft(addr, &["document", "upload", "/no/such/file.txt"]);
    assert!(!ok && stderr.contains("cannot read /no/such/file.txt"), "{stderr}");
    let (ok, _, stderr) = weft(addr, &["document", "upload", file.to_str().unwrap(), "--tenant", "a/b"]);
    assert!(!ok && stderr.contains("cannot prefix keys"), "{stderr}");
    serve.stop();
}

#[test]
fn an_acknowledged_upload_survives_kill_9_of_the_node_and_the_start_up_sweep_records_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut serve = Serve::start(dir.path(), &[]);
    let (_, registered) = register(&serve.addr, "acme", "kept.txt", 100);
    let id = registered["id"].as_str().unwrap().to_owned();
    let file = dir.path().join("kept.txt");
    std::fs::write(&file, "acknowledged bytes\n").unwrap();
    assert_eq!(curl_put(&registered["upload"], &file, &[]), 200);
    // SIGKILL right after the acknowledgement: the notification may or may not have been applied.
    serve.child.kill().unwrap();
    serve.child.wait().unwrap();

    // The sweep at start finds the object of the document still waiting, with no confirm and no notification.
    let serve = Serve::start(dir.path(), &[]);
    let addr = serve.addr.as_str();
    let item = wait_status(addr, &id, "uploaded");
    let answer = http(addr, "POST", &format!("/documents/{id}/confirm"), &[], b"");
    assert_eq!((answer.status, answer.json()["outcome"].clone()), (200, json!("duplicate")));
    assert_eq!(item["etag"], sha256_hex(b"acknowledged bytes\n"));
    let (_, download) = get(addr, &format!("/documents/{id}/download"));
    assert_eq!(curl_get(download["download"]["url"].as_str().unwrap()), (200, b"acknowledged bytes\n".to_vec()));
    serve.stop();
}

#[test]
fn a_lost_notification_is_healed_by_the_sweep() {
    let dir = tempfile::tempdir().unwrap();
    // No sweeps at first: the object goes in behind the node's back, and no notification comes.
    let serve = Serve::start(dir.path(), &["--sweep-every-secs", "0"]);
    let (_, registered) = register(&serve.addr, "acme", "quiet.txt", 100);
    let id = registered["id"].as_str().unwrap().to_owned();
    let key = registered["key"].as_str().unwrap();
    let (_, never) = register(&serve.addr, "acme", "never.txt", 100);
    let never = never["id"].as_str().unwrap().to_owned();
    serve.stop();
    let data = dir.path().join("objects/data").join(key);
    std::fs::create_dir_all(data.parent().unwrap()).unwrap();
    std::fs::write(&data, "placed by hand\n").unwrap();

    let serve = Serve::start(dir.path(), &["--sweep-every-secs", "1"]);
    let addr = serve.addr.as_str();
    let item = wait_status(addr, &id, "uploaded");
    assert_eq!(item["etag"], sha256_hex(b"placed by hand\n"), "the etag is storage's");
    assert_eq!(get(addr, &format!("/documents/{never}")).1["status"], "registered", "no object, no upload");
    serve.stop();
}

#[test]
fn downloads_cannot_run_script_on_the_api_origin_and_every_answer_carries_the_security_headers() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &[]);
    let addr = serve.addr.as_str();
    let body = json!({"name": "page.html", "content_type": "text/html", "size_bytes": 100});
    let (status, registered) = post_document(addr, "acme", body);
    assert_eq!(status, 201, "{registered}");
    let id = registered["id"].as_str().unwrap().to_owned();
    let file = dir.path().join("page.html");
    std::fs::write(&file, "<script>alert(document.cookie)</script>").unwrap();
    let put = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Content-Type: text/html", "--upload-file"])
        .arg(&file)
        .arg(registered["upload"]["url"].as_str().unwrap())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&put.stdout), "200");
    wait_status(addr, &id, "uploaded");
    let (_, download) = get(addr, &format!("/documents/{id}/download"));
    let url = download["download"]["url"].as_str().unwrap();
    let head = Command::new("curl").args(["-s", "-D", "-", "-o", "/dev/null", url]).output().unwrap();
    let head = String::from_utf8_lossy(&head.stdout).to_ascii_lowercase();
    for expected in [
        "content-disposition: attachment",
        "x-content-type-options: nosniff",
        "content-security-policy: sandbox; default-src 'none'",
    ] {
        assert!(head.contains(expected), "the download lacks {expected:?}:\n{head}");
    }
    // Every answer, an error's too.
    for path in ["/healthz", "/documents", "/nowhere"] {
        let answer = http(addr, "GET", path, &[], b"");
        assert_eq!(answer.header("x-content-type-options"), Some("nosniff"), "{path}");
        assert_eq!(answer.header("x-frame-options"), Some("DENY"), "{path}");
        assert_eq!(answer.header("referrer-policy"), Some("no-referrer"), "{path}");
    }
    serve.stop();
}

#[test]
fn a_node_s_files_are_its_owner_s_alone_and_secrets_come_from_files() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("webhook-secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let serve = Serve::start(dir.path(), &["--webhook-secret-file", secret_file.to_str().unwrap()]);
    let addr = serve.addr.as_str();
    // The secret is read from the file (the webhook takes it) and is not on the command line.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", serve.child.id())).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains(SECRET));
    let (_, registered) = register(addr, "acme", "a.txt", 100);
    let id = registered["id"].as_str().unwrap().to_owned();
    let file = dir.path().join("a.txt");
    std::fs::write(&file, "owner only").unwrap();
    assert_eq!(curl_put(&registered["upload"], &file, &[]), 200);
    wait_status(addr, &id, "uploaded");
    let (status, _) = webhook(addr, AWS_TEST_EVENT.as_bytes());
    assert_eq!(status, 200, "the webhook did not take the secret from its file");

    // Every file the node made is 0600, every folder 0700.
    let mut seen = 0;
    let mut folders = vec![dir.path().to_owned()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path == secret_file || path == file {
                continue;
            }
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            if path.is_dir() {
                assert_eq!(mode, 0o700, "{} is {mode:o}", path.display());
                folders.push(path);
            } else {
                assert_eq!(mode, 0o600, "{} is {mode:o}", path.display());
                seen += 1;
            }
        }
    }
    assert!(seen >= 5, "the node made too few files to judge: {seen}");
    serve.stop();

    // A secret file that cannot be read stops the node at start, naming the file and not a secret.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["serve", "--http-addr", "127.0.0.1:0", "--store"])
        .arg(dir.path().join("events.db"))
        .args(["--webhook-secret-file", "/no/such/secret"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("/no/such/secret") && !stderr.contains("panicked"), "{stderr}");
}

#[test]
fn malformed_requests_are_answered_400_and_do_not_flood_the_log() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &[]);
    for _ in 0..50 {
        for raw in [&b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n"[..], b"GARBAGE\r\n\r\n"] {
            let mut stream = std::net::TcpStream::connect(&serve.addr).unwrap();
            stream.write_all(raw).unwrap();
            let mut answer = String::new();
            let _ = stream.read_to_string(&mut answer);
            assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
        }
    }
    let (status, log) = serve.terminate();
    assert!(status.success(), "{status}: {log}");
    assert!(!log.contains("ERROR"), "a client's malformed requests filled the log:\n{log}");
}

/// Sends `head` and `body` on a new connection and leaves it open, as a stalled client does.
fn stalled(addr: &str, head: &str, body: &[u8]) -> std::net::TcpStream {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    stream
}

/// What the server answers on `stream`, read until it closes (at most a minute: a correctness wait).
fn answer_of(mut stream: std::net::TcpStream) -> String {
    use std::io::Read;
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

#[test]
fn stalled_bodies_are_answered_408_and_the_node_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &["--body-timeout-secs", "1"]);
    let addr = serve.addr.as_str();
    let (_, registered) = register(addr, "acme", "a.txt", 100);
    let upload = registered["upload"]["url"].as_str().unwrap();
    let upload_path = &upload[upload.find("/objects/").unwrap()..];
    // Bodies that start and stop: a command, a registration, an upload to a signed URL.
    let mut clients = Vec::new();
    // An authenticated client's stalled body (an unauthenticated one is refused before its body is read).
    let bearer = crate::serve::token(addr).map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    for i in 0..60 {
        let head = match i % 3 {
            0 => format!(
                "POST /commands/document/{} HTTP/1.1\r\nHost: x\r\n{bearer}Content-Type: application/json\r\nContent-Length: 100\r\n\r\n",
                uuid::Uuid::now_v7()
            ),
            1 => format!(
                "POST /documents HTTP/1.1\r\nHost: x\r\n{bearer}Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
            ),
            _ => format!(
                "PUT {upload_path} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n"
            ),
        };
        clients.push(stalled(addr, &head, b"{"));
    }
    // Meanwhile the node answers.
    assert_eq!(get(addr, "/healthz").0, 200);
    for client in clients {
        let answer = answer_of(client);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
        assert!(answer.contains("\"timeout\""), "{answer:?}");
    }
    // Nothing of the stalled upload is left behind, and the document still waits for its upload.
    assert_eq!(std::fs::read_dir(dir.path().join("objects/tmp")).unwrap().count(), 0);
    wait_status(addr, registered["id"].as_str().unwrap(), "registered");
    serve.stop();
}

#[test]
fn one_client_address_holds_a_bounded_number_of_connections() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &["--max-connections-per-client", "8", "--body-timeout-secs", "60"]);
    let addr = serve.addr.as_str();
    let head = "POST /documents HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n";
    let mut held: Vec<_> = (0..8).map(|_| stalled(addr, head, b"{")).collect();
    // The ninth connection of the address is answered 429 and closed, as a typed error (once the node has
    // accepted the eight: the kernel completes a connection before the server takes it).
    let deadline = Instant::now() + Duration::from_secs(20);
    let over = loop {
        let answer = http(addr, "GET", "/healthz", &[], b"");
        if answer.status != 200 || Instant::now() > deadline {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(over.status, 429, "{over:?}");
    assert_eq!(over.json()["error"]["kind"], "too_many");
    // A connection closed frees its place.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(addr, "/healthz").0 != 200 {
        assert!(Instant::now() < deadline, "a closed connection was never uncounted");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(held);
    serve.stop();
}

#[test]
fn uploads_broken_mid_way_are_answered_400_and_leave_no_file() {
    let dir = tempfile::tempdir().unwrap();
    // A temporary file of an upload a killed node never finished, long untouched: the next start removes it.
    let tmp = dir.path().join("objects/tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let leftover = tmp.join("left-by-a-killed-node");
    std::fs::write(&leftover, "half an upload").unwrap();
    let touched = Command::new("touch").args(["-d", "2 hours ago"]).arg(&leftover).status().unwrap();
    assert!(touched.success());
    let fresh = tmp.join("being-written-by-someone");
    std::fs::write(&fresh, "in flight").unwrap();
    let serve = Serve::start(dir.path(), &["--body-timeout-secs", "1"]);
    let addr = serve.addr.as_str();
    assert!(!leftover.exists(), "a stale temporary file survived the start");
    assert!(fresh.exists(), "a recent temporary file was removed");
    std::fs::remove_file(&fresh).unwrap();

    let (_, registered) = register(addr, "acme", "a.txt", 100);
    let upload = registered["upload"]["url"].as_str().unwrap();
    let path = &upload[upload.find("/objects/").unwrap()..];
    // Fewer bytes than announced, then the client hangs up its side.
    let truncated = stalled(
        addr,
        &format!("PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 50\r\n\r\n"),
        b"only ten b",
    );
    truncated.shutdown(std::net::Shutdown::Write).unwrap();
    let answer = answer_of(truncated);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    // Its temporary file is removed as the request ends.
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_dir(&tmp).unwrap().count() > 0 {
        let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().map(|e| e.unwrap().path()).collect();
        assert!(Instant::now() < deadline, "a broken upload left its temporary file: {left:?}\n{}", serve.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    // A chunked body that is not chunked encoding: never stored, and its temporary file is gone with the
    // request. (actix's HTTP/1 layer closes such a connection itself, mostly before its 400 is written.)
    let malformed = stalled(
        addr,
        &format!("PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"),
        b"5\r\nhello\r\nzz\r\nnot a chunk\r\n",
    );
    let answer = answer_of(malformed);
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_dir(&tmp).unwrap().count() > 0 {
        assert!(Instant::now() < deadline, "a malformed upload left its temporary file behind");
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_status(addr, registered["id"].as_str().unwrap(), "registered");
    serve.stop();
}

#[test]
fn an_upload_claimed_by_a_client_is_checked_against_storage() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &[]);
    let addr = serve.addr.as_str();
    let (_, registered) = register(addr, "acme", "a.txt", 100);
    let id = registered["id"].as_str().unwrap().to_owned();
    let claim = |size: u64, etag: &str| {
        crate::serve::command(
            addr,
            "document",
            &id,
            "mark_uploaded",
            json!({"size_bytes": size, "etag": etag, "source": "client"}),
        )
    };
    // Nothing in storage: the claim is refused and the document still waits.
    let (status, reply) = claim(100, "deadbeef");
    assert_eq!((status, reply["error"]["rejection"]["code"].as_str()), (422, Some("invalid")), "{reply}");
    assert!(reply["error"]["message"].as_str().unwrap().contains("no object"), "{reply}");
    wait_status(addr, &id, "registered");
    // An object there, but another size and etag than claimed: refused, naming what storage holds.
    let file = dir.path().join("a.txt");
    std::fs::write(&file, "twelve bytes").unwrap();
    assert_eq!(curl_put(&registered["upload"], &file, &[]), 200);
    let uploaded = wait_status(addr, &id, "uploaded");
    let (status, reply) = claim(99, "deadbeef");
    assert_eq!(status, 422, "{reply}");
    assert!(reply["error"]["message"].as_str().unwrap().contains("12 bytes"), "{reply}");
    // The truth again is a repeat: nothing changes.
    let (status, reply) = claim(12, uploaded["etag"].as_str().unwrap());
    assert_eq!(status, 200, "{reply}");
    assert_eq!(get(addr, &format!("/documents/{id}")).1, uploaded);
    serve.stop();
}

/// The ids of `GET /documents?<query>`, sorted.
fn listed(addr: &str, query: &str) -> Vec<String> {
    let (status, page) = get(addr, &format!("/documents?{query}"));
    assert_eq!(status, 200, "{query}: {page}");
    let mut ids: Vec<String> =
        page["items"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap().to_owned()).collect();
    ids.sort();
    ids
}

#[test]
fn labels_change_by_command_and_cli_lists_filter_on_them_and_bad_changes_and_filters_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &[]);
    let addr = serve.addr.as_str();
    let labelled = |labels: Value| {
        let body = json!({"name": "a.txt", "content_type": "text/plain", "size_bytes": 10, "labels": labels});
        let (status, answer) = post_document(addr, "acme", body);
        assert_eq!(status, 201, "{answer}");
        answer["id"].as_str().unwrap().to_owned()
    };
    let a = labelled(json!({"project": "q3", "stage": "draft"}));
    let b = labelled(json!({"project": "q3"}));
    let c = labelled(json!({"project": "q4"}));

    // Through the CLI: one change sets and removes.
    let (ok, stdout, stderr) =
        weft(addr, &["document", "label", &a, "--set", "stage=final", "--remove", "project", "--output", "json"]);
    assert!(ok, "{stderr}");
    let reply: Value = serde_json::from_str(&stdout).unwrap();
    let after = reply["last_position"].as_u64().unwrap_or_else(|| panic!("{reply}"));
    let (_, item) = get(addr, &format!("/documents/{a}?after={after}"));
    assert_eq!(item["labels"], json!({"stage": "final"}), "{item}");
    // Through the command API, as any client sends it.
    let (status, reply) =
        crate::serve::command(addr, "document", &b, "label", json!({"set": {"stage": "final", "team/owner": "x"}}));
    assert_eq!(status, 200, "{reply}");
    let after = reply["last_position"].as_u64().unwrap().to_string();
    // The same change again records nothing.
    let (status, again) = crate::serve::command(addr, "document", &b, "label", json!({"set": {"stage": "final"}}));
    assert_eq!((status, &again["version"], &again["last_position"]), (200, &reply["version"], &Value::Null), "{again}");

    let mut ab = vec![a.clone(), b.clone()];
    ab.sort();
    assert_eq!(listed(addr, &format!("after={after}&label.stage=final")), ab);
    assert_eq!(listed(addr, &format!("after={after}&label.project=q3")), vec![b.clone()]);
    assert_eq!(listed(addr, &format!("after={after}&label.project=q3&label.stage=final")), vec![b.clone()]);
    assert_eq!(listed(addr, &format!("after={after}&label.team/owner=x&tenant=acme")), vec![b.clone()]);
    assert_eq!(listed(addr, &format!("after={after}&label.project=q4")), vec![c.clone()]);
    assert!(listed(addr, &format!("after={after}&label.project=q5")).is_empty());
    // The CLI's lists take the same filters.
    let (ok, stdout, stderr) = weft(addr, &["document", "list", "--where", "label.project=q4", "--output", "json"]);
    assert!(ok, "{stderr}");
    assert_eq!(serde_json::from_str::<Value>(&stdout).unwrap()["items"][0]["id"], json!(c));

    // Bad filters: a typed error each.
    let nine: Vec<String> = (0..9).map(|i| format!("label.k{i}=v")).collect();
    for query in ["label.has%20space=x", "label.=x", "label.a%22b=x", nine.join("&").as_str()] {
        let (status, answer) = get(addr, &format!("/documents?{query}"));
        assert_eq!((status, answer["error"]["kind"].as_str()), (400, Some("invalid")), "{query}: {answer}");
    }
    let (status, answer) = get(addr, "/jobs?label.project=q3");
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().contains("no labels"), "{answer}");
    let (status, answer) = get(addr, "/documents/live?label.bad%20key=x");
    assert_eq!(status, 400, "{answer}");

    // Bad changes: rejected with the reason, nothing recorded.
    let (_, before) = get(addr, &format!("/documents/{c}"));
    for payload in [
        json!({"set": {"bad key": "x"}}),
        json!({"remove": ["bad\nkey"]}),
        json!({}),
        json!({"set": {"k": "v"}, "remove": ["k"]}),
        json!({"set": {"k": "x".repeat(257)}}),
        json!({"set": (0..40).map(|i| (format!("k{i}"), json!("v"))).collect::<serde_json::Map<_, _>>()}),
    ] {
        let (status, answer) = crate::serve::command(addr, "document", &c, "label", payload.clone());
        assert_eq!(status, 422, "{payload}: {answer}");
        assert!(answer.to_string().contains("labels"), "{payload}: {answer}");
    }
    let (status, answer) = crate::serve::command(addr, "document", &c, "label", json!({"set": {"k": 1}}));
    assert_eq!(status, 400, "{answer}");
    let (ok, _, stderr) = weft(addr, &["document", "label", &c]);
    assert!(!ok && stderr.contains("--set"), "{stderr}");
    let (ok, _, stderr) = weft(addr, &["document", "label", &c, "--set", "no-equals-sign"]);
    assert!(!ok && stderr.contains("NAME=VALUE"), "{stderr}");
    let (_, after_bad) = get(addr, &format!("/documents/{c}"));
    assert_eq!(after_bad["version"], before["version"], "{after_bad}");

    // A guest may read the labels but not change them.
    let bearer = bearer(dir.path(), "guest:gil", weft::auth::Role::Guest);
    let body = json!({"command_id": uuid::Uuid::now_v7().to_string(), "type": "label", "payload": {"set": {"k": "v"}}});
    let answer = http(
        addr,
        "POST",
        &format!("/commands/document/{c}"),
        &[("Authorization", &bearer)],
        body.to_string().as_bytes(),
    );
    assert_eq!(answer.status, 403, "{}", answer.json());
    let answer = http(addr, "GET", "/documents?label.project=q4", &[("Authorization", &bearer)], b"");
    assert_eq!(answer.status, 200);
    assert_eq!(get(addr, &format!("/documents/{c}")).1["version"], before["version"]);
    serve.stop();
}
