//! Projections survive SIGKILL: `weft serve` (SQLite store, commands over NATS) is killed with `kill -9` at
//! random moments while commands flow and started again each time; in the end its read models equal the
//! fold of its store: no event applied twice, none skipped.

use std::collections::BTreeMap;
use std::io::BufReader;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use rand::Rng;
use weft::nats;
use weft::store::sqlite::{Options, SqliteStore};
use weft_events::EventRead;
use weft_events::domain::ids::{DocumentId, Uuid};
use weft_harness::NatsServer;

/// Starts a node; its stderr stays open (a node writes to it when it stops) in the returned reader.
fn serve(server: &NatsServer, dir: &Path) -> (crate::reaped::Reaped, BufReader<std::process::ChildStderr>) {
    let (store, read_models) = (dir.join("events.db"), dir.join("read.db"));
    let args = ["--nats", &server.url(), "--no-processes", "--store", store.to_str().unwrap()];
    let (node, stderr, line) =
        crate::serve::spawn(None, &[&args[..], &["--read-models", read_models.to_str().unwrap()]].concat(), &[]);
    assert!(line.contains("serving commands on NATS"), "{line}");
    (node, stderr)
}

/// Puts `content` as the object of `document` (tenant `t`) in the node's local folder, as an upload through
/// its signed URL would (written aside, then renamed in); its size and etag (the SHA-256 the local store
/// uses), which the node checks upload commands against.
fn put_object(dir: &Path, document: Uuid, content: &str) -> (usize, String) {
    use sha2::{Digest, Sha256};
    let folder = dir.join("objects/data/t");
    std::fs::create_dir_all(&folder).unwrap();
    let aside = folder.join(format!(".{document}.tmp"));
    std::fs::write(&aside, content).unwrap();
    std::fs::rename(&aside, folder.join(document.to_string())).unwrap();
    (content.len(), Sha256::digest(content.as_bytes()).iter().map(|b| format!("{b:02x}")).collect())
}

/// Sends commands to `documents` (register, mark uploaded, then versions) until `until`; outcomes are not
/// tracked beyond moving each document along: the store is the truth the read model is checked against.
async fn send(
    client: &async_nats::Client,
    dir: &Path,
    documents: &[Uuid],
    stage: &mut [u8],
    until: tokio::time::Instant,
) {
    let (mut n, token) = (0usize, crate::support::admin_token(dir));
    while tokio::time::Instant::now() < until {
        let d = n % documents.len();
        n += 1;
        let (kind, payload) = match stage[d] {
            0 => (
                "register",
                serde_json::json!({"name": "a.txt", "content_type": "text/plain",
                  "declared_size_bytes": 1000, "tenant": "t", "owner": "o"}),
            ),
            1 => {
                let (size, etag) = put_object(dir, documents[d], "version 0");
                ("mark_uploaded", serde_json::json!({"size_bytes": size, "etag": etag, "source": "client"}))
            }
            _ => {
                let (size, etag) = put_object(dir, documents[d], &format!("version {n}"));
                ("add_version", serde_json::json!({"size_bytes": size, "etag": etag}))
            }
        };
        let body = serde_json::json!({"command_id": Uuid::now_v7().to_string(), "type": kind, "payload": payload});
        let request = async_nats::Request::new()
            .headers(crate::support::json_headers(&token))
            .payload(body.to_string().into())
            .timeout(Some(Duration::from_millis(500)));
        if let Ok(reply) = client.send_request(format!("weft.cmd.document.{}", documents[d]), request).await
            && serde_json::from_slice::<serde_json::Value>(&reply.payload).is_ok_and(|r| r["status"] == "ok")
        {
            stage[d] = stage[d].saturating_add(1).min(2);
        } else {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn position(read_models: &Path) -> u64 {
    let Ok(db) = rusqlite::Connection::open(read_models) else { return 0 };
    db.query_row("SELECT MIN(position) FROM projection_positions", [], |r| r.get::<_, Option<i64>>(0))
        .ok()
        .flatten()
        .map_or(0, |p| p as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projections_neither_double_apply_nor_skip_across_kill_9() {
    let server = NatsServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let client = nats::connect(&server.url(), "client").await.unwrap();
    let documents: Vec<Uuid> = (0..16).map(|_| Uuid::now_v7()).collect();
    let mut stage = vec![0u8; documents.len()];
    for _ in 0..4 {
        let (mut node, _stderr) = serve(&server, dir.path());
        let run = rand::rng().random_range(150..700);
        send(&client, dir.path(), &documents, &mut stage, tokio::time::Instant::now() + Duration::from_millis(run))
            .await;
        node.kill().unwrap();
        node.wait().unwrap();
    }
    // A last run: let the projections catch up with the store, then stop cleanly.
    let (mut node, _stderr) = serve(&server, dir.path());
    send(&client, dir.path(), &documents, &mut stage, tokio::time::Instant::now() + Duration::from_millis(200)).await;
    node.kill().unwrap();
    node.wait().unwrap();
    let store = SqliteStore::open(Options::new(dir.path().join("events.db"))).unwrap();
    let head = store.head().await.unwrap();
    store.close().await.unwrap();
    let (mut node, mut stderr) = serve(&server, dir.path());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while position(&dir.path().join("read.db")) < head {
        assert!(std::time::Instant::now() < deadline, "the projections did not catch up with {head}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Command::new("kill").args(["-TERM", &node.id().to_string()]).status().unwrap();
    let status = node.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert!(status.success(), "{status}: {rest}");

    // The fold of the store: each document's stream version and number of uploaded contents.
    let store = SqliteStore::open(Options::new(dir.path().join("events.db"))).unwrap();
    let mut expected: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    let mut from = 1;
    loop {
        let page = store.read_all(from, 1000).await.unwrap();
        let Some(last) = page.last() else { break };
        from = last.position + 1;
        for e in &page {
            let Some(id) = DocumentId::from_stream(&e.stream) else { continue };
            let entry = expected.entry(id.to_string()).or_default();
            entry.0 = e.version as i64;
            if matches!(&*e.event_type, "document.uploaded" | "document.version_added") {
                entry.1 += 1;
            }
        }
    }
    assert!(head > 40, "too few commands landed to prove anything: {head}");
    let db = rusqlite::Connection::open(dir.path().join("read.db")).unwrap();
    let mut actual: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    let mut rows = db.prepare("SELECT id, version, versions FROM documents").unwrap();
    for row in rows.query_map([], |r| Ok((r.get::<_, String>(0)?, (r.get(1)?, r.get(2)?)))).unwrap() {
        let (id, values) = row.unwrap();
        actual.insert(id, values);
    }
    assert_eq!(actual, expected);
    assert_eq!(position(&dir.path().join("read.db")), head);
}
