//! `weft events`, run as a real process on stores made by a scripted run of a real node: on the SQLite file
//! and on JetStream (a real `nats-server`). Every verb, the export round trip between the backends, the
//! refusals (conflicting streams, truncated and damaged files), and `verify` finding injected faults.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use weft::store::jetstream::{JetStreamConfig, JetStreamStore};
use weft::store::record;
use weft_events::{EventWrite, ExpectedVersion, NewEvent, StreamName, Timestamp};
use weft_harness::NatsServer;

use crate::reaped::Reaped;
use crate::serve::{Serve, weft};

/// What a scripted run made: a document uploaded by tenant `acme` and a job that ran
/// `redact-then-summarize` on it.
pub(crate) struct Run {
    pub(crate) document: String,
    pub(crate) job: String,
}

/// Runs a node on `dir` with `node_args`, uploads a document, runs a two-step job on it, and stops the node.
pub(crate) fn scripted_run(dir: &Path, node_args: &[&str]) -> Run {
    let serve = Serve::start(dir, node_args);
    let file = dir.join("report.txt");
    std::fs::write(&file, "Write to ann@example.com. Revenue rose 12% in the third quarter.\n").unwrap();
    let (ok, stdout, stderr) = weft(&serve.addr, &["document", "upload", file.to_str().unwrap(), "--tenant", "acme"]);
    assert!(ok, "{stderr}");
    let document = stdout.trim().to_owned();
    let (ok, _, stderr) =
        weft(&serve.addr, &["job", "run", "redact-then-summarize", "--document", &document, "--wait"]);
    assert!(ok, "{stderr}");
    let job = stderr.split("job ").nth(1).and_then(|s| s.split_whitespace().next()).expect("the job's id").to_owned();
    serve.stop();
    Run { document, job }
}

/// `weft events <args> <source>`.
pub(crate) fn events(source: &[String], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weft")).arg("events").args(args).args(source).output().unwrap()
}

/// `weft events <args> <source>`, which must succeed; its stdout.
pub(crate) fn ok(source: &[String], args: &[&str]) -> String {
    let out = events(source, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "weft events {args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    String::from_utf8(out.stdout).unwrap()
}

/// `weft events <args> <source>`, which must fail with status 1 (not a panic, not a usage error); its stderr.
pub(crate) fn refused(source: &[String], args: &[&str]) -> String {
    let out = events(source, args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "weft events {args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

pub(crate) fn json_lines(text: &str) -> Vec<Value> {
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

pub(crate) fn sqlite(path: &Path) -> Vec<String> {
    vec!["--store".into(), path.to_str().unwrap().into()]
}

pub(crate) fn jetstream(url: &str, stream: &str) -> Vec<String> {
    vec!["--jetstream".into(), "--nats".into(), url.into(), "--jetstream-stream".into(), stream.into()]
}

/// Every read verb on a store holding `run`.
fn every_read_verb(source: &[String], run: &Run) {
    let job = format!("job-{}", run.job);
    let document = format!("document-{}", run.document);

    // streams: each with its type and tenant; filters narrow the list.
    let streams = json_lines(&ok(source, &["streams"]));
    let row = |name: &str| streams.iter().find(|r| r["stream"] == name).unwrap_or_else(|| panic!("{name}"));
    assert_eq!(row(&document)["type"], "document");
    assert_eq!(row(&document)["tenant"], "acme");
    assert_eq!(row(&job)["last_event_type"], "job.succeeded");
    let jobs = json_lines(&ok(source, &["streams", "--type", "job"]));
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert!(json_lines(&ok(source, &["streams", "--tenant", "acme"])).iter().all(|r| r["tenant"] == "acme"));
    let table = ok(source, &["streams", "--output", "table"]);
    assert!(table.starts_with("STREAM") && table.contains(&job), "{table}");

    // cat: the job's events in order, payloads decoded; --from/--to by version and by time.
    let cat = json_lines(&ok(source, &["cat", &job]));
    let versions: Vec<u64> = cat.iter().map(|e| e["version"].as_u64().unwrap()).collect();
    assert_eq!(versions, (1..=cat.len() as u64).collect::<Vec<_>>());
    assert_eq!(cat[0]["event_type"], "job.submitted");
    assert_eq!(cat[0]["payload"]["inputs"][0], run.document.as_str(), "{}", cat[0]);
    assert_eq!(cat.last().unwrap()["event_type"], "job.succeeded");
    let middle = json_lines(&ok(source, &["cat", &job, "--from", "2", "--to", "3"]));
    assert_eq!(middle.iter().map(|e| e["version"].as_u64().unwrap()).collect::<Vec<_>>(), [2, 3]);
    let since = cat[3]["recorded_at"].as_str().unwrap();
    let later = json_lines(&ok(source, &["cat", &job, "--from", since]));
    assert!(!later.is_empty() && later.len() < cat.len(), "{since}: {later:?}");
    assert!(later.iter().all(|e| e["recorded_at"].as_str().unwrap() >= since));
    assert_eq!(later.last(), cat.last());
    let table = ok(source, &["cat", &job, "--output", "table"]);
    assert!(table.starts_with("POSITION") && table.contains("job.step_started"), "{table}");

    // show: by position and by event id, the same event.
    let first = &cat[0];
    let by_position: Value = serde_json::from_str(&ok(source, &["show", &first["position"].to_string()])).unwrap();
    let by_id: Value = serde_json::from_str(&ok(source, &["show", first["event_id"].as_str().unwrap()])).unwrap();
    assert_eq!(&by_position, first);
    assert_eq!(&by_id, first);

    // state and diff: folded with the aggregate's own evolve.
    let now: Value = serde_json::from_str(&ok(source, &["state", &job])).unwrap();
    assert_eq!(now["state"]["status"], "Succeeded", "{now}");
    assert_eq!(now["version"], cat.len());
    let then: Value = serde_json::from_str(&ok(source, &["state", &job, "--at", "1"])).unwrap();
    assert_eq!(then["version"], 1);
    assert_ne!(then["state"]["status"], "Succeeded", "{then}");
    let doc: Value = serde_json::from_str(&ok(source, &["state", &document])).unwrap();
    assert_eq!(doc["state"]["tenant"], "acme", "{doc}");
    let diff: Value = serde_json::from_str(&ok(source, &["diff", &job, "1", &cat.len().to_string()])).unwrap();
    let changes = diff["changes"].as_array().unwrap();
    assert!(changes.iter().any(|c| c["path"] == "/status" && c["after"] == "Succeeded"), "{diff}");
    let none: Value = serde_json::from_str(&ok(source, &["diff", &job, "2", "2"])).unwrap();
    assert_eq!(none["changes"], serde_json::json!([]));

    // tail over what is there: the whole log from position 1, filtered, stopping after a count.
    let tail = json_lines(&ok(source, &["tail", "--from", "1", "--event-type", "job.*", "--count", "3"]));
    assert_eq!(tail.iter().map(|e| e["version"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2, 3]);
    let tail = json_lines(&ok(source, &["tail", "--from", "1", "--subject", "weft.evt.*.document.>", "--count", "2"]));
    assert!(tail.iter().all(|e| e["stream"].as_str().unwrap().starts_with("document-")), "{tail:?}");

    // Bad arguments: a clear error naming what is wrong, status 1.
    assert!(refused(source, &["cat", "no such stream!"]).contains("is not a stream name"));
    assert!(refused(source, &["show", "999999"]).contains("999999"));
    assert!(refused(source, &["show", "neither"]).contains("neither"));
    assert!(refused(source, &["state", &job, "--at", "999"]).contains("999"));
    assert!(refused(source, &["diff", &job, "5", "2"]).contains("5"));
    assert!(refused(source, &["export", "--file", "/no/such/folder/x.jsonl"]).contains("No such file"));

    // verify: a clean store passes.
    let report: Value = serde_json::from_str(&ok(source, &["verify"])).unwrap();
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["faults"], 0);
    assert_eq!(report["events"], report["head"]);
}

#[test]
fn every_verb_works_on_a_sqlite_store_made_by_a_scripted_run() {
    let dir = tempfile::tempdir().unwrap();
    let run = scripted_run(dir.path(), &[]);
    let source = sqlite(&dir.path().join("events.db"));
    every_read_verb(&source, &run);

    // The reading verbs work beside a node that has the store open, and tail follows it live: from just past
    // the head, the next registration is the upload's.
    let head = json_lines(&ok(&source, &["verify"]))[0]["head"].as_u64().unwrap();
    let serve = Serve::start(dir.path(), &[]);
    let from = (head + 1).to_string();
    let mut tail = Reaped(
        Command::new(env!("CARGO_BIN_EXE_weft"))
            .args(["events", "tail", "--from", &from, "--event-type", "document.registered", "--count", "1"])
            .args(&source)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let file = dir.path().join("second.txt");
    std::fs::write(&file, "A second document.").unwrap();
    let (done, stdout, stderr) = weft(&serve.addr, &["document", "upload", file.to_str().unwrap()]);
    assert!(done, "{stderr}");
    assert!(tail.exit_within(Duration::from_secs(30)).success());
    let mut line = String::new();
    std::io::Read::read_to_string(&mut tail.stdout.take().unwrap(), &mut line).unwrap();
    let followed: Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(followed["stream"], format!("document-{}", stdout.trim()));
    assert!(ok(&source, &["streams"]).contains(stdout.trim()));
    // Import writes, so it refuses a store a node has open, and says why.
    let export = dir.path().join("self.jsonl");
    ok(&source, &["export", "--file", export.to_str().unwrap()]);
    assert!(refused(&source, &["import", export.to_str().unwrap()]).contains("stop the node"));
    serve.stop();
}

#[test]
fn every_verb_works_on_a_jetstream_store_made_by_a_scripted_run() {
    let nats = NatsServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let run = scripted_run(dir.path(), &["--nats", &nats.url(), "--jetstream"]);
    every_read_verb(&jetstream(&nats.url(), "WEFT_EVENTS"), &run);
    assert!(!dir.path().join("events.db").exists(), "the node wrote to JetStream, not to a file");
    // Without a server, a clear error.
    let nowhere = jetstream("nats://127.0.0.1:1", "WEFT_EVENTS");
    assert!(refused(&nowhere, &["streams"]).contains("127.0.0.1:1"));
}

#[test]
fn export_import_export_is_byte_identical_between_sqlite_and_jetstream() {
    let nats = NatsServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    scripted_run(dir.path(), &[]);
    let original = sqlite(&dir.path().join("events.db"));
    let first = dir.path().join("first.jsonl");
    ok(&original, &["export", "--file", first.to_str().unwrap()]);

    // SQLite -> JetStream -> SQLite.
    let js = jetstream(&nats.url(), "COPY");
    let imported: Value = serde_json::from_str(&ok(&js, &["import", first.to_str().unwrap()])).unwrap();
    let lines = std::fs::read_to_string(&first).unwrap().lines().count() as u64;
    assert_eq!(imported["events"], lines - 2, "{imported}");
    let second = ok(&js, &["export"]);
    let copy = sqlite(&dir.path().join("copy").join("events.db"));
    std::fs::create_dir(dir.path().join("copy")).unwrap();
    let second_file = dir.path().join("second.jsonl");
    std::fs::write(&second_file, &second).unwrap();
    ok(&copy, &["import", second_file.to_str().unwrap()]);
    let third = ok(&copy, &["export"]);
    let first = std::fs::read_to_string(&first).unwrap();
    assert_eq!(first, second, "SQLite's export and JetStream's differ");
    assert_eq!(first, third, "the round trip changed the export");

    // The copies read the same through the tools: same states, same ids.
    for source in [&js, &copy] {
        assert_eq!(ok(source, &["streams"]), ok(&original, &["streams"]));
        assert_eq!(json_lines(&ok(source, &["verify"]))[0]["ok"], true);
    }

    // Importing the same file again is a no-op (an interrupted import is finished this way).
    let again: Value = serde_json::from_str(&ok(&copy, &["import", second_file.to_str().unwrap()])).unwrap();
    assert_eq!(again["events"], 0, "{again}");
    assert_eq!(again["already_there"], lines - 2);
    assert_eq!(ok(&copy, &["export"]), first);

    // Export by stream, and an export resumed from a file cut at a line's end.
    let streams = json_lines(&ok(&original, &["streams", "--type", "job"]));
    let job = streams[0]["stream"].as_str().unwrap();
    let only = ok(&original, &["export", "--stream", job]);
    let events = json_lines(&only);
    assert!(events[1..events.len() - 1].iter().all(|e| e["stream"] == job));
    let cut = dir.path().join("cut.jsonl");
    let keep: Vec<&str> = first.lines().take(10).collect();
    std::fs::write(&cut, keep.join("\n") + "\n").unwrap();
    ok(&original, &["export", "--file", cut.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&cut).unwrap(), first, "the resumed export is the whole export");
}

#[test]
fn import_refuses_conflicting_streams_and_damaged_files_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    scripted_run(&a, &[]);
    scripted_run(&b, &[]);
    let (a, b) = (sqlite(&a.join("events.db")), sqlite(&b.join("events.db")));
    let file = dir.path().join("a.jsonl");
    ok(&a, &["export", "--file", file.to_str().unwrap()]);
    let before = ok(&b, &["export"]);

    // Both nodes registered the same built-in agents and workflows (same stream names), with other events.
    let stderr = refused(&b, &["import", file.to_str().unwrap()]);
    assert!(stderr.contains("hold other events in the store, so nothing was imported"), "{stderr}");
    assert!(stderr.contains("agent-") && stderr.contains("--on-conflict skip"), "{stderr}");
    assert_eq!(ok(&b, &["export"]), before, "a refused import wrote something");

    // Told to skip them, it imports the rest: a's documents and job.
    let skipped: Value =
        serde_json::from_str(&ok(&b, &["import", file.to_str().unwrap(), "--on-conflict", "skip"])).unwrap();
    assert!(skipped["events"].as_u64().unwrap() > 0 && skipped["skipped_events"].as_u64().unwrap() > 0);
    assert!(!skipped["conflicting_streams"].as_array().unwrap().is_empty(), "{skipped}");
    assert_eq!(json_lines(&ok(&b, &["streams", "--type", "job"])).len(), 2);
    assert_eq!(json_lines(&ok(&b, &["verify"]))[0]["ok"], true);

    // Damaged files, each into an empty store: refused with the line, nothing written.
    let whole = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = whole.lines().collect();
    let n = lines.len();
    let cases: Vec<(&str, String, String)> = vec![
        ("cut mid-line", whole[..whole.len() / 2].to_owned(), "is cut short".to_owned()),
        ("no end line", lines[..n - 1].join("\n") + "\n", format!("it ends at line {} without its end line", n - 1)),
        ("a line lost", [&lines[..4], &lines[5..]].concat().join("\n") + "\n", "the lines before it hold".to_owned()),
        ("garbage", [&lines[..6], &["{not json"], &lines[7..]].concat().join("\n") + "\n", "line 7:".to_owned()),
        ("not an export", "PK\u{3}\u{4}zipped\n".to_owned(), "line 1: not a Weft export header".to_owned()),
        (
            "a newer format",
            whole.replacen("\"weft_export\":1", "\"weft_export\":2", 1),
            "export format version 2".to_owned(),
        ),
        (
            "a version skipped",
            {
                let skip = lines.iter().position(|l| l.contains("\"version\":2,")).unwrap();
                [&lines[..skip], &lines[skip + 1..n - 1], &[r#"{"weft_export_end":{"events":0,"last_position":0}}"#]]
                    .concat()
                    .join("\n")
                    .replace("\"events\":0", &format!("\"events\":{}", n - 3))
                    + "\n"
            },
            "jumps to version 3, after 1".to_owned(),
        ),
    ];
    for (case, text, expected) in cases {
        let target = dir.path().join(format!("empty-{}", case.replace(' ', "-")));
        std::fs::create_dir(&target).unwrap();
        let damaged = target.join("export.jsonl");
        std::fs::write(&damaged, text).unwrap();
        let source = sqlite(&target.join("events.db"));
        let stderr = refused(&source, &["import", damaged.to_str().unwrap()]);
        assert!(stderr.contains(&expected), "{case}: {stderr}");
        if target.join("events.db").exists() {
            assert_eq!(json_lines(&ok(&source, &["streams"])).len(), 0, "{case}: something was imported");
        }
    }
    assert!(refused(&b, &["import", dir.path().join("missing.jsonl").to_str().unwrap()]).contains("missing.jsonl"));
}

/// A copy of the store folder `from` (the log only: the index is derived) to damage.
fn copy_log(from: &Path, to: &Path) -> PathBuf {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name == "events.db" || name == "events.db-wal" {
            std::fs::copy(from.join(&name), to.join(&name)).unwrap();
        }
    }
    to.join("events.db")
}

/// Rewrites the record at `position` after `change` (of the event and its version), with a valid checksum.
fn rewrite(db: &Path, position: u64, change: impl FnOnce(&mut NewEvent, &mut u64)) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let (stream, version, bytes): (String, i64, Vec<u8>) = conn
        .query_row("SELECT stream, version, record FROM events WHERE position = ?1", [position as i64], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    let mut version = version as u64;
    let e = record::decode(&mut record::Names::default(), position, stream.as_bytes(), version, &bytes).unwrap();
    let mut event = NewEvent::new(e.event_type.to_string(), e.payload.clone())
        .schema_version(e.schema_version)
        .tenant(e.tenant.to_string())
        .actor(e.actor.to_string())
        .recorded_at(e.recorded_at);
    event.event_id = e.event_id;
    event.correlation_id = e.correlation_id;
    event.causation_id = e.causation_id;
    change(&mut event, &mut version);
    let mut out = Vec::new();
    record::encode(&mut out, &event, &StreamName::new(&stream).unwrap(), version, position, e.recorded_at);
    conn.execute(
        "UPDATE events SET version = ?1, record = ?2 WHERE position = ?3",
        rusqlite::params![version as i64, out, position as i64],
    )
    .unwrap();
}

/// Verify's report on `source`, which must fail with status 1.
fn faulty(source: &[String]) -> Value {
    let out = events(source, &["verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn kinds(report: &Value) -> Vec<String> {
    report["faults_by_kind"].as_object().unwrap().keys().cloned().collect()
}

#[test]
fn verify_finds_each_injected_fault_in_a_sqlite_store() {
    let dir = tempfile::tempdir().unwrap();
    let run = scripted_run(dir.path(), &[]);
    let source = sqlite(&dir.path().join("events.db"));
    let cat = json_lines(&ok(&source, &["cat", &format!("job-{}", run.job)]));
    let last = cat.last().unwrap()["position"].as_u64().unwrap();
    let middle = cat[3]["position"].as_u64().unwrap();

    let case = |name: &str, damage: &dyn Fn(&Path)| -> Value {
        let db = copy_log(dir.path(), &dir.path().join(name));
        damage(&db);
        faulty(&sqlite(&db))
    };
    // A version missing: the job's last event moved one version on (positions still dense).
    let report = case("missing-version", &|db| rewrite(db, last, |_, version| *version += 1));
    assert_eq!(kinds(&report), ["missing_version"], "{report}");
    assert_eq!(report["faults"], 1, "{report}");
    assert_eq!(report["listed"][0]["position"], last);
    // A payload that does not decode as its event type, under a valid checksum.
    let report = case("corrupt-payload", &|db| rewrite(db, middle, |e, _| e.payload = Bytes::from_static(b"\xc1\xc1")));
    assert_eq!(kinds(&report), ["corrupt_payload"], "{report}");
    assert_eq!(report["faults"], 1, "{report}");
    // An event type this build does not know.
    let report = case("unknown-type", &|db| rewrite(db, middle, |e, _| e.event_type = "job.teleported".into()));
    assert_eq!(kinds(&report), ["unknown_event_type"], "{report}");
    assert_eq!(report["faults"], 1, "{report}");
    assert!(report["listed"][0]["detail"].as_str().unwrap().contains("job.teleported"), "{report}");
    // A flipped byte: the record's checksum no longer holds.
    let report = case("flipped-byte", &|db| {
        let conn = rusqlite::Connection::open(db).unwrap();
        conn.execute("UPDATE events SET record = CAST(record || X'00' AS BLOB) WHERE position = ?1", [middle as i64])
            .unwrap();
    });
    // The unreadable event's version then shows as missing from its stream, pointing back at it.
    assert_eq!(report["faults_by_kind"]["corrupt_record"], 1, "{report}");
    assert_eq!(report["listed"][0]["position"], middle, "{report}");
    let gap = report["listed"].as_array().unwrap().iter().find(|f| f["kind"] == "missing_version");
    assert!(gap.is_none_or(|f| f["detail"].as_str().unwrap().contains(&format!("position {middle}"))), "{report}");
    // A position missing.
    let db = copy_log(dir.path(), &dir.path().join("missing-position"));
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute("DELETE FROM events WHERE position = ?1", [middle as i64])
        .unwrap();
    let report = faulty(&sqlite(&db));
    assert!(kinds(&report).contains(&"missing_position".to_owned()), "{report}");
    assert!(kinds(&report).contains(&"missing_version".to_owned()), "{report}");

    // The table says the same for people; the original still passes.
    let out = events(&sqlite(&dir.path().join("unknown-type").join("events.db")), &["verify", "--output", "table"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("unknown_event_type") && table.contains("job.teleported"), "{table}");
    assert_eq!(json_lines(&ok(&source, &["verify"]))[0]["ok"], true);
}

#[test]
fn verify_finds_injected_faults_in_a_jetstream_store() {
    let nats = NatsServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    scripted_run(dir.path(), &["--nats", &nats.url(), "--jetstream"]);
    let source = jetstream(&nats.url(), "WEFT_EVENTS");
    assert_eq!(json_lines(&ok(&source, &["verify"]))[0]["ok"], true);

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let stream_name = format!("document-{}", uuid::Uuid::now_v7());
    runtime.block_on(async {
        let client = async_nats::connect(nats.url()).await.unwrap();
        let config = JetStreamConfig::default();
        let prefix = config.subject_prefix.clone();
        let store = JetStreamStore::open(client.clone(), config).await.unwrap();
        // Through the store: an unknown event type, and a payload that is not its type's MessagePack.
        let stream = StreamName::new(stream_name.clone()).unwrap();
        let events = vec![
            NewEvent::new("document.teleported", Bytes::from_static(b"\x80")),
            NewEvent::new("document.uploaded", Bytes::from_static(b"\xc1")),
        ];
        store.append(&stream, ExpectedVersion::NoStream, events).await.unwrap();
        // Behind the store's back: a message at version 4 of that stream, so version 3 is missing.
        let mut body = Vec::new();
        let late = NewEvent::new("document.deleted", Bytes::from_static(b"\x80"));
        record::encode(&mut body, &late, &stream, 4, 0, Timestamp::now());
        let js = async_nats::jetstream::new(client);
        let partition = weft_events::partition::of_stream(stream.as_str(), store.partitions().unwrap()).unwrap();
        js.publish(format!("{prefix}.{partition}.{stream}.4"), body.into()).await.unwrap().await.unwrap();
    });
    let report = faulty(&source);
    for kind in ["corrupt_payload", "missing_version", "unknown_event_type"] {
        assert!(kinds(&report).contains(&kind.to_owned()), "{kind}: {report}");
    }
    let ours = report["listed"].as_array().unwrap().iter().filter(|f| f["stream"] == stream_name).count();
    assert_eq!(ours, report["faults"].as_u64().unwrap() as usize, "faults only in the damaged stream: {report}");
}

/// An export written by a build whose `document.registered` was schema version 1 (before labels): a real
/// scripted run's whole log, kept as it was.
pub(crate) const V1_EXPORT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/export-v1.jsonl");
/// The uploaded document of that run.
const V1_DOCUMENT: &str = "01a24200-6cfd-71eb-9e5c-6395af48717a";

/// The version-1 fixture, imported into `source`, read through every tool and, by a node on it, through the
/// projections.
fn version_1_reads_everywhere(source: &[String], dir: &Path, node_args: &[&str]) {
    let imported: Value = serde_json::from_str(&ok(source, &["import", V1_EXPORT])).unwrap();
    assert_eq!(imported["events"], 33, "{imported}");
    let stream = format!("document-{V1_DOCUMENT}");
    let cat = json_lines(&ok(source, &["cat", &stream]));
    assert_eq!(cat[0]["event_type"], "document.registered");
    assert_eq!(cat[0]["schema_version"], 1, "stored as written");
    assert_eq!(cat[0]["payload"]["labels"], serde_json::json!({}), "upcast to version 2: {}", cat[0]);
    assert_eq!(cat[0]["payload"]["tenant"], "acme");
    let state: Value = serde_json::from_str(&ok(source, &["state", &stream])).unwrap();
    assert_eq!(state["state"]["status"], "Uploaded", "{state}");
    assert_eq!(state["state"]["labels"], serde_json::json!({}), "{state}");
    assert_eq!(json_lines(&ok(source, &["verify"]))[0]["ok"], true);
    // Exported again, byte for byte what was imported: the upcast is on reading, the stored event is as written.
    assert_eq!(ok(source, &["export"]), std::fs::read_to_string(V1_EXPORT).unwrap());

    // A node on the store: its projections read the version-1 events, and it writes version 2 beside them.
    let serve = Serve::start(dir, node_args);
    let (status, document) = crate::serve::get(&serve.addr, &format!("/documents/{V1_DOCUMENT}?after=33"));
    assert_eq!(status, 200, "{document}");
    assert_eq!(document["status"], "uploaded", "{document}");
    assert_eq!(document["tenant"], "acme", "{document}");
    let (status, history) = crate::serve::get(&serve.addr, &format!("/streams/{stream}/events?after=33"));
    assert_eq!(status, 200, "{history}");
    assert_eq!(history["items"][0]["event"]["labels"], serde_json::json!({}), "{history}");
    let id = uuid::Uuid::now_v7().to_string();
    let register = serde_json::json!({"name": "b.txt", "content_type": "text/plain", "declared_size_bytes": 5,
        "tenant": "acme", "owner": "ann", "labels": {"project": "q3"}});
    let (status, reply) = crate::serve::command(&serve.addr, "document", &id, "register", register);
    assert_eq!(status, 200, "{reply}");
    serve.stop();
    let fresh = json_lines(&ok(source, &["cat", &format!("document-{id}")]));
    assert_eq!(fresh[0]["schema_version"], 2);
    assert_eq!(fresh[0]["payload"]["labels"]["project"], "q3");
    assert_eq!(json_lines(&ok(source, &["verify"]))[0]["ok"], true);
}

#[test]
fn a_version_1_export_reads_through_every_tool_and_projection_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    version_1_reads_everywhere(&sqlite(&dir.path().join("events.db")), dir.path(), &[]);
}

#[test]
fn a_version_1_export_reads_through_every_tool_and_projection_on_jetstream() {
    let nats = NatsServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    version_1_reads_everywhere(
        &jetstream(&nats.url(), "WEFT_EVENTS"),
        dir.path(),
        &["--nats", &nats.url(), "--jetstream"],
    );
}

/// The version-1 fixture's log `copies` times over, each copy's ids (streams and events) made anew, as an export.
pub(crate) fn many_copies(copies: u64) -> String {
    let text = std::fs::read_to_string(V1_EXPORT).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let events = &lines[1..lines.len() - 1];
    let renamed =
        |id: &str, copy: u64| uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, format!("{id}{copy}").as_bytes());
    let mut out = String::from("{\"weft_export\":1,\"from_position\":1}\n");
    let mut position = 0u64;
    for copy in 0..copies {
        for line in events {
            position += 1;
            let event: Value = serde_json::from_str(line).unwrap();
            let stream_id = event["stream"].as_str().unwrap().split_once('-').unwrap().1;
            let event_id = event["event_id"].as_str().unwrap();
            // Edited as text: the fields keep the format's order.
            let line = line
                .replacen(&format!("\"position\":{},", event["position"]), &format!("\"position\":{position},"), 1)
                .replacen(stream_id, &renamed(stream_id, copy).to_string(), 1)
                .replacen(event_id, &renamed(event_id, copy).to_string(), 1);
            out.push_str(&line);
            out.push('\n');
        }
    }
    out.push_str(&format!("{{\"weft_export_end\":{{\"events\":{position},\"last_position\":{position}}}}}\n"));
    out
}

#[test]
fn an_import_of_a_log_whose_streams_interleave_keeps_every_version_and_position() {
    // Each copy's job stream is interleaved with its documents' and agents': many appends of one stream are
    // due close together, and each must follow the one before it.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("many.jsonl");
    let text = many_copies(200);
    std::fs::write(&file, &text).unwrap();
    let source = sqlite(&dir.path().join("events.db"));
    let imported: Value = serde_json::from_str(&ok(&source, &["import", file.to_str().unwrap()])).unwrap();
    assert_eq!(imported["events"], 200 * 33, "{imported}");
    assert!(ok(&source, &["export"]) == text, "the store's export differs from the file imported");
}
