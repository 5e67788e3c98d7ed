//! `weft events copy`: a log moved from SQLite to JetStream and back, with its keys and checkpoints, read the
//! same at every end and served by a node started on the copy; a copy killed with SIGKILL and run again with
//! `--resume`; what is refused.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use weft_harness::NatsServer;

use crate::reaped::Reaped;
use crate::replay::{events, jetstream, json_lines, ok, refused, scripted_run, sqlite};
use crate::serve::{Serve, get, weft};

/// `weft events copy --from <from> --to <to> <more>`; its report.
fn copy(from: &str, to: &str, more: &[&str]) -> Value {
    let out = ok(&[], &[&["copy", "--from", from, "--to", to], more].concat());
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn a_log_copied_from_sqlite_to_jetstream_and_back_reads_the_same_and_a_node_on_the_copy_finishes_its_jobs() {
    let nats = NatsServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let run = scripted_run(dir.path(), &[]);
    // A job submitted to a node that runs no process managers: in the log, not begun.
    let serve = Serve::start(dir.path(), &["--no-processes"]);
    let (submitted, _, stderr) = weft(&serve.addr, &["job", "run", "summarize", "--document", &run.document]);
    assert!(submitted, "{stderr}");
    let waiting = stderr.split("job ").nth(1).and_then(|s| s.split_whitespace().next()).expect("a job id").to_owned();
    serve.stop();

    let db = dir.path().join("events.db");
    let original = sqlite(&db);
    let (sqlite_place, js_place) = (format!("sqlite:{}", db.display()), format!("jetstream:{}/MOVED", nats.url()));
    let export = ok(&original, &["export"]);
    let head = json_lines(&export).len() as u64 - 2;

    // SQLite -> JetStream: every event, positions kept, the tenant's key and the process managers' checkpoints.
    let there = copy(&sqlite_place, &js_place, &[]);
    assert_eq!((there["events"].as_u64(), there["through"].as_u64()), (Some(head), Some(head)), "{there}");
    assert_eq!(there["positions_kept"], true, "{there}");
    assert!(there["keys"]["keys"].as_u64().unwrap() >= 1, "{there}");
    let checkpoints: Vec<&str> = there["checkpoints"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(checkpoints.contains(&"process-orchestrator"), "{there}");
    assert_eq!(there["verified"]["events"].as_u64(), Some(head));

    // JetStream -> SQLite, into another folder (its keys beside it).
    let back_dir = tempfile::tempdir().unwrap();
    let back_db = back_dir.path().join("events.db");
    let back = copy(&js_place, &format!("sqlite:{}", back_db.display()), &[]);
    assert_eq!(back["verified"], there["verified"]);

    // Byte-identical exports; the same personal fields opened with the carried keys; the same digest.
    let js = jetstream(&nats.url(), "MOVED");
    let back_source = sqlite(&back_db);
    for copied in [&js, &back_source] {
        assert!(ok(copied, &["export"]) == export, "a copy's export differs from the original's");
        let stream = format!("document-{}", run.document);
        assert_eq!(ok(copied, &["cat", &stream]), ok(&original, &["cat", &stream]));
        let report = &json_lines(&ok(copied, &["verify"]))[0];
        assert_eq!((&report["ok"], &report["digest"]), (&Value::Bool(true), &there["verified"]), "{report}");
    }
    // Stream by stream too, as an operator finds where two stores differ.
    let per_stream = |source: &[String]| json_lines(&ok(source, &["verify", "--streams"]))[0]["per_stream"].clone();
    let streams = per_stream(&original);
    assert!(streams.as_array().is_some_and(|s| s.len() > 3), "{streams}");
    assert_eq!(per_stream(&js), streams);
    assert_eq!(per_stream(&back_source), streams);
    let opened = ok(&back_source, &["cat", &format!("document-{}", run.document)]);
    assert!(opened.contains("report.txt") && !opened.contains("[sealed]"), "{opened}");

    // A node on the copy (the documents' objects where they were: they are not in the log) serves what the
    // original's did, and runs the job that was waiting.
    let objects = dir.path().join("objects");
    let node = Serve::start(back_dir.path(), &["--objects-dir", objects.to_str().unwrap()]);
    let (_, document) = get(&node.addr, &format!("/documents/{}", run.document));
    assert_eq!(document["name"], "report.txt", "{document}");
    let (_, done) = get(&node.addr, &format!("/jobs/{}", run.job));
    assert_eq!(done["status"], "succeeded", "{done}");
    let finished = crate::agents::wait_job(&node.addr, &waiting, |s| s["status"] != "running");
    assert_eq!(finished["status"], "succeeded", "{finished}");
    node.stop();

    // A copy into a store that holds events is refused unless told to go on; one onto itself, and places that
    // are not places, are refused too.
    let stderr = refused(&[], &["copy", "--from", &sqlite_place, "--to", &js_place]);
    assert!(stderr.contains(&format!("holds {head} events")) && stderr.contains("--resume"), "{stderr}");
    let stderr = refused(&[], &["copy", "--from", &sqlite_place, "--to", &sqlite_place]);
    assert!(stderr.contains("the same store"), "{stderr}");
    for bad in ["events.db", "jetstream:nats://127.0.0.1:1", "sqlite:"] {
        let out = events(&[], &["copy", "--from", bad, "--to", &js_place]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {stderr}");
        assert!(stderr.contains("sqlite:PATH, jetstream:") && stderr.contains("kurrentdb:CONNECTION"), "{stderr}");
    }
    // Two streams on one set of servers would share their checkpoint bucket.
    let other = format!("jetstream:{}/OTHER", nats.url());
    let stderr = refused(&[], &["copy", "--from", &js_place, "--to", &other]);
    assert!(stderr.contains("share the snapshot and checkpoint"), "{stderr}");
    // Going on with a finished copy copies nothing and finds it all there.
    let again = copy(&sqlite_place, &js_place, &["--resume"]);
    assert_eq!((again["events"].as_u64(), again["through"].as_u64()), (Some(0), Some(head)), "{again}");

    // A target whose key for the tenant is another is refused before any event is copied: the copy's sealed
    // fields could not be opened with it.
    let keyed = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let keys = weft::store::keys::Keys::sqlite(&keyed.path().join("keys.db")).unwrap();
        keys.for_append("acme").await.unwrap();
    });
    let keyed_db = keyed.path().join("events.db");
    let stderr = refused(&[], &["copy", "--from", &sqlite_place, "--to", &format!("sqlite:{}", keyed_db.display())]);
    assert!(stderr.contains("\"acme\" has another key"), "{stderr}");
    assert!(!stderr.contains(&run.document), "{stderr}");
    let report = &json_lines(&ok(&sqlite(&keyed_db), &["verify"]))[0];
    assert_eq!(report["events"], 0, "{report}");
}

#[test]
fn resuming_into_a_target_that_holds_other_events_of_a_stream_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // The fixture's log, and the same streams with other event ids.
    let original = std::fs::read_to_string(crate::replay::V1_EXPORT).unwrap();
    let mut other = original.clone();
    for line in original.lines().skip(1) {
        let Ok(event) = serde_json::from_str::<Value>(line) else { continue };
        if let Some(id) = event["event_id"].as_str() {
            let renamed = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, id.as_bytes()).to_string();
            other = other.replace(id, &renamed);
        }
    }
    let (source_db, target_db) = (dir.path().join("source.db"), dir.path().join("target.db"));
    let (source_file, target_file) = (dir.path().join("source.jsonl"), dir.path().join("target.jsonl"));
    std::fs::write(&source_file, &other).unwrap();
    std::fs::write(&target_file, &original).unwrap();
    ok(&sqlite(&source_db), &["import", source_file.to_str().unwrap()]);
    ok(&sqlite(&target_db), &["import", target_file.to_str().unwrap()]);
    let before = ok(&sqlite(&target_db), &["export"]);

    let (from, to) = (format!("sqlite:{}", source_db.display()), format!("sqlite:{}", target_db.display()));
    let stderr = refused(&[], &["copy", "--from", &from, "--to", &to, "--resume"]);
    assert!(stderr.contains("the target holds event") && stderr.contains("nothing more was copied"), "{stderr}");
    assert!(ok(&sqlite(&target_db), &["export"]) == before, "the refused copy changed the target");
}

#[test]
fn a_copy_killed_midway_and_run_again_with_resume_completes_with_nothing_doubled() {
    let nats = NatsServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("many.jsonl");
    let text = crate::replay::many_copies(300);
    std::fs::write(&file, &text).unwrap();
    let db = dir.path().join("events.db");
    ok(&sqlite(&db), &["import", file.to_str().unwrap()]);
    let (from, to) = (format!("sqlite:{}", db.display()), format!("jetstream:{}/MOVED", nats.url()));
    let js = jetstream(&nats.url(), "MOVED");

    // The target counted by `weft events verify`: the copy into JetStream runs at a few thousand events a second.
    let verified = || {
        let report: Value = serde_json::from_slice(&events(&js, &["verify"]).stdout).unwrap_or_default();
        report["events"].as_u64().unwrap_or(0)
    };
    killed_then_resumed(&from, &to, &js, &text, &verified);
    // And back into SQLite, whose writer has 256 appends in flight when it is killed.
    let back = dir.path().join("back");
    std::fs::create_dir(&back).unwrap();
    let back_db = back.join("events.db");
    // Counted straight from the file: this copy is fast, and a count must come within milliseconds.
    let counted = || {
        let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
        let Ok(db) = rusqlite::Connection::open_with_flags(&back_db, flags) else { return 0 };
        db.query_row("SELECT count(*) FROM events", [], |r| r.get::<_, i64>(0)).map_or(0, |n| n as u64)
    };
    killed_then_resumed(&to, &format!("sqlite:{}", back_db.display()), &sqlite(&back_db), &text, &counted);
}

/// `weft events copy --from <from> --to <to>` killed with SIGKILL once `across` counts 500 events on the target
/// (read as `target`), refused again without `--resume`, then finished with it: the target exports `export`.
fn killed_then_resumed(from: &str, to: &str, target: &[String], export: &str, across: &dyn Fn() -> u64) {
    let total = json_lines(export).len() as u64 - 2;
    let child = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["events", "copy", "--from", from, "--to", to])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Reaped(child);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let copied = loop {
        // The target may not be there yet: a failed read counts as none.
        let events = across();
        if events >= 500 || std::time::Instant::now() > deadline {
            break events;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    eprintln!("{from} -> {to}: killed with {copied} of {total} events across");
    assert!(copied > 0 && copied < total, "the kill came at {copied} events");

    // Not without --resume; with it, the rest, each event once, in order.
    let stderr = refused(&[], &["copy", "--from", from, "--to", to]);
    assert!(stderr.contains("--resume"), "{stderr}");
    let rest = copy(from, to, &["--resume"]);
    let (appended, found) = (rest["events"].as_u64().unwrap(), rest["already_there"].as_u64().unwrap());
    assert_eq!(rest["through"].as_u64(), Some(total), "{rest}");
    assert!(appended < total && appended + found >= total - copied, "{rest}");
    assert_eq!(rest["positions_kept"], true, "{rest}");
    assert!(ok(target, &["export"]) == export, "the copy's export differs from the original");
}

/// This build has no KurrentDB (the `kurrentdb` feature is off in the test build): a node, a tool and a copy
/// asked for a KurrentDB store each refuse it by name, say how to get it, and never show the connection
/// string's password; a copy to KurrentDB without its keys' file, and `--kurrentdb` with `--jetstream`, are
/// refused before anything is opened.
#[test]
fn a_kurrentdb_store_is_refused_by_name_by_a_build_without_it_and_its_password_never_shows() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("events.db");
    let connection = "esdb://admin:s3cret-pw@127.0.0.1:2113?tls=false";
    let serve = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["serve", "--http-addr", "127.0.0.1:0", "--store", store.to_str().unwrap(), "--kurrentdb", connection])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&serve.stderr);
    assert!(!serve.status.success(), "{stderr}");
    assert!(stderr.contains("built without KurrentDB") && stderr.contains("--features kurrentdb"), "{stderr}");
    assert!(!stderr.contains("s3cret-pw") && !stderr.contains("panicked"), "{stderr}");

    let stderr = refused(&[], &["verify", "--kurrentdb", connection]);
    assert!(stderr.contains("built without KurrentDB") && !stderr.contains("s3cret-pw"), "{stderr}");

    let kurrent = format!("kurrentdb:{connection}#moved");
    let copy = format!("sqlite:{}", dir.path().join("copy.db").display());
    let stderr = refused(&[], &["copy", "--from", &kurrent, "--to", &copy]);
    assert!(stderr.contains("--from-keys") && !stderr.contains("s3cret-pw"), "{stderr}");
    let keys = dir.path().join("moved-keys.db");
    let stderr = refused(&[], &["copy", "--from", &kurrent, "--from-keys", keys.to_str().unwrap(), "--to", &copy]);
    assert!(stderr.contains("built without KurrentDB") && !stderr.contains("s3cret-pw"), "{stderr}");
    assert!(!keys.exists() && !dir.path().join("copy.db").exists(), "nothing was made for a store that was refused");

    let both = events(&[], &["verify", "--kurrentdb", connection, "--jetstream", "--nats", "nats://127.0.0.1:1"]);
    assert_eq!(both.status.code(), Some(2), "a usage error: {}", String::from_utf8_lossy(&both.stderr));
}
