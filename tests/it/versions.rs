//! Every version of a document kept, through a real `weft serve` on SeaweedFS: each version is its own
//! object and downloads its own bytes; a job reads the version it pins (or the latest) and records which;
//! deleting the document removes every version's object from storage; bad versions are typed errors.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weft::objects::ObjectStore as _;
use weft_harness::Seaweed;

use crate::serve::{Serve, command, get, http, weft};

/// The contents of the three versions: the first is the longest (a document's registration bounds the size
/// of every version).
const TEXTS: [&str; 3] = [
    "Version one, the longest of them all: its registration bounds the size of the versions after it.\n",
    "Version two. Mail bob@example.com about it, or call +44 20 7946 0958.\n",
    "Version three.\n",
];

/// Downloads version `version` of `id` through the CLI (the latest without one); its bytes.
fn download(addr: &str, dir: &Path, id: &str, version: Option<u32>) -> String {
    let out = dir.join(format!("{id}-{version:?}.txt"));
    let mut args = vec!["document", "download", id, "--out", out.to_str().unwrap()];
    let version = version.map(|v| v.to_string());
    if let Some(version) = &version {
        args.extend(["--version", version]);
    }
    let (ok, _, stderr) = weft(addr, &args);
    assert!(ok, "{stderr}");
    std::fs::read_to_string(out).unwrap()
}

/// Submits a job of the built-in `redact` workflow over `document`, pinning `versions`; waits for its end.
fn redact(addr: &str, document: &str, versions: Value) -> Value {
    let workflow = weft::agents::catalog::workflow_id("redact").to_string();
    let job = uuid::Uuid::now_v7().to_string();
    let submit = json!({"workflow": workflow, "workflow_version": 1, "inputs": [document], "priority": 0,
                        "idempotency_key": null, "input_versions": versions});
    let (status, reply) = command(addr, "job", &job, "submit", submit);
    assert_eq!(status, 200, "{reply}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, state) = get(addr, &format!("/jobs/{job}"));
        if state["status"].is_string() && state["status"] != "running" {
            return state;
        }
        assert!(Instant::now() < deadline, "{state}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_versions_keep_their_bytes_a_job_reads_the_one_it_names_and_delete_removes_every_object() {
    let seaweed = Seaweed::start().unwrap();
    let s3 = crate::support::bucket(&seaweed, "docs").await;
    let dir = tempfile::tempdir().unwrap();
    let args = seaweed.node_args("docs");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let serve = Serve::start(dir.path(), &args);
    let addr = serve.addr.clone();
    let folder = dir.path().to_owned();
    let id = tokio::task::spawn_blocking(move || {
        let (addr, dir) = (addr.as_str(), folder.as_path());
        let file = |n: usize| {
            let path = dir.join(format!("v{n}.txt"));
            std::fs::write(&path, TEXTS[n]).unwrap();
            path.to_str().unwrap().to_owned()
        };
        let (ok, stdout, stderr) = weft(addr, &["document", "upload", &file(0), "--tenant", "acme"]);
        assert!(ok, "{stderr}");
        let id = stdout.trim().to_owned();
        for n in 1..3 {
            let (ok, stdout, stderr) = weft(addr, &["document", "add-version", &id, &file(n)]);
            assert!(ok, "{stderr}");
            assert_eq!(stdout.trim(), (n + 1).to_string());
        }
        // Each version downloads its own bytes; no version names the latest.
        for (n, text) in TEXTS.iter().enumerate() {
            assert_eq!(download(addr, dir, &id, Some(n as u32 + 1)), *text);
        }
        assert_eq!(download(addr, dir, &id, None), TEXTS[2]);
        let (_, document) = get(addr, &format!("/documents/{id}"));
        let contents = document["contents"].as_array().unwrap();
        let sizes: Vec<(u64, u64, bool)> = contents
            .iter()
            .map(|c| (c["version"].as_u64().unwrap(), c["size_bytes"].as_u64().unwrap(), c["kept"] == true))
            .collect();
        assert_eq!(sizes, [(1, TEXTS[0].len() as u64, true), (2, TEXTS[1].len() as u64, true), (3, 15, true)]);
        let (ok, stdout, _) = weft(addr, &["document", "versions", &id]);
        assert!(ok && stdout.lines().count() >= 4, "{stdout}");

        // A job pinning version 2 reads version 2; one pinning none reads the latest; each records which.
        let pinned = redact(addr, &id, json!({ &id: 2 }));
        assert_eq!(pinned["status"], "succeeded", "{pinned}");
        let output = pinned["steps"][0]["output"].as_str().unwrap().to_owned();
        assert_eq!(
            download(addr, dir, &output, None),
            TEXTS[1].replace("bob@example.com", "[email]").replace("+44 20 7946 0958", "[phone]")
        );
        let latest = redact(addr, &id, json!({}));
        assert_eq!(latest["status"], "succeeded", "{latest}");
        let (_, document) = get(addr, &format!("/documents/{id}"));
        let mut read: Vec<(String, u64)> = document["derivatives"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| (d["job"].as_str().unwrap().to_owned(), d["version"].as_u64().unwrap()))
            .collect();
        read.sort_by_key(|(_, version)| *version);
        let ids = |state: &Value| state["id"].as_str().unwrap().to_owned();
        assert_eq!(read, [(ids(&pinned), 2), (ids(&latest), 3)]);

        // Bad versions: a download of a version it does not have, a job pinning one (its step fails, naming
        // it), a pin of a document that is not an input, version 0.
        let response = http(addr, "GET", &format!("/documents/{id}/download?version=9"), &[], b"");
        assert_eq!(response.status, 422, "{}", response.body);
        assert_eq!(response.json()["error"]["rejection"]["code"], "no_such_version", "{}", response.body);
        let response = http(addr, "GET", &format!("/documents/{id}/download?version=two"), &[], b"");
        assert_eq!(response.status, 400, "{}", response.body);
        let failed = redact(addr, &id, json!({ &id: 9 }));
        assert_ne!(failed["status"], "succeeded", "{failed}");
        assert!(failed["error"].as_str().unwrap_or("").contains("has no version 9"), "{failed}");
        for bad in [json!({ uuid::Uuid::now_v7().to_string(): 1 }), json!({ &id: 0 })] {
            let workflow = weft::agents::catalog::workflow_id("redact").to_string();
            let job = uuid::Uuid::now_v7().to_string();
            let submit = json!({"workflow": workflow, "workflow_version": 1, "inputs": [&id], "priority": 0,
                                "idempotency_key": null, "input_versions": bad});
            let (status, reply) = command(addr, "job", &job, "submit", submit);
            assert_eq!(
                (status, reply["error"]["rejection"]["code"].as_str()),
                (422, Some("invalid_inputs")),
                "{reply}"
            );
        }
        // A confirmation naming another document's object is refused.
        let other = format!("acme/v/{}/{}", uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
        let response =
            http(addr, "POST", &format!("/documents/{id}/confirm?key={}", other.replace('/', "%2F")), &[], b"");
        assert_eq!(response.status, 400, "{}", response.body);

        id
    })
    .await
    .unwrap();
    // Every version's object is in SeaweedFS: the first under the document's key, the others under their own.
    let listed = list(&seaweed, &id).await;
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert_eq!(listed[0], format!("acme/{id}"));
    assert!(listed[1..].iter().all(|k| k.starts_with(&format!("acme/v/{id}/"))), "{listed:?}");
    assert!(s3.head(&listed[1]).await.is_ok());
    let response = http(&serve.addr, "DELETE", &format!("/documents/{id}"), &[], b"");
    assert_eq!(response.status, 200, "{}", response.body);
    // Deleted: no object under the document's key or any version's, as SeaweedFS lists them.
    let listed = list(&seaweed, &id).await;
    assert!(listed.is_empty(), "objects left after the delete: {listed:?}");
    serve.stop();
}

/// The keys SeaweedFS holds of document `id` in bucket `docs` (tenant `acme`), read with the S3 API.
async fn list(seaweed: &Seaweed, id: &str) -> Vec<String> {
    let (key_id, secret) = seaweed.credentials();
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_s3::config::Credentials::new(key_id, secret, None, None, "test"))
        .endpoint_url(seaweed.endpoint())
        .force_path_style(true)
        .build();
    let client = aws_sdk_s3::Client::from_conf(config);
    let listed = client.list_objects_v2().bucket("docs").prefix("acme/").send().await.unwrap();
    let mut keys: Vec<String> =
        listed.contents().iter().filter_map(|o| o.key().map(str::to_owned)).filter(|k| k.contains(id)).collect();
    keys.sort();
    keys
}
