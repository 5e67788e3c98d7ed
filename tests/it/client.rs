//! The command line's client (`weft document|job|agent|workflow|schedule|projection ...`) against a real
//! `weft serve`: tables and JSON on stdout, every page with `--all`, a job's log followed while the job runs
//! until it ends, and bad arguments, bad ids and an unreachable node answered on stderr with a non-zero exit.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use weft_events::domain::ids::Uuid;

use crate::query_api::{drive_job, one_step_job};
use crate::reaped::Reaped;
use crate::serve::{Serve, command, get, register, submit_job};

fn weft(url: &str, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_weft"));
    command.args(args).env("WEFT_URL", url);
    if let Some(token) = crate::serve::token(url.trim_start_matches("http://")) {
        command.env("WEFT_TOKEN", token);
    }
    command.output().unwrap()
}

fn stdout_json(output: &Output) -> Value {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn the_command_line_reads_the_models_follows_a_job_s_log_and_reports_errors() {
    let dir = tempfile::tempdir().unwrap();
    let node = Serve::start(dir.path(), &["--no-processes"]);
    let (addr, url) = (node.addr.clone(), format!("http://{}", node.addr));
    let documents: Vec<String> = (0..3).map(|_| Uuid::now_v7().to_string()).collect();
    for (n, document) in documents.iter().enumerate() {
        let (status, reply) = command(&addr, "document", document, "register", register(&format!("d{n}.pdf"), "acme"));
        assert_eq!(status, 200, "{reply}");
    }
    let job = Uuid::now_v7().to_string();
    let (status, reply) = submit_job(&addr, &job, one_step_job(&Uuid::now_v7().to_string(), &documents[0]));
    assert_eq!(status, 200, "{reply}");
    let submitted = reply["last_position"].as_u64().unwrap();
    let (status, _) = get(&addr, &format!("/jobs/{job}?after={submitted}"));
    assert_eq!(status, 200);

    // Follow the running job's log while it runs: the follower prints the line there is, then (the job
    // going on only once it has) the line to come, and ends by itself once the job has.
    let (status, reply) =
        command(&addr, "job", &job, "append_log", serde_json::json!({"level": "info", "message": "queued"}));
    assert_eq!(status, 200, "{reply}");
    let mut follower = Reaped(
        Command::new(env!("CARGO_BIN_EXE_weft"))
            .args(["job", "logs", &job, "--follow", "--output", "json", "--url", &url])
            .env("WEFT_TOKEN", crate::serve::token(&addr).unwrap_or_default())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut printed = BufReader::new(follower.stdout.take().unwrap());
    let mut first = String::new();
    printed.read_line(&mut first).unwrap();
    drive_job(&addr, &job);
    let status = follower.exit_within(Duration::from_secs(30));
    let mut rest = String::new();
    printed.read_to_string(&mut rest).unwrap();
    assert!(status.success(), "{status}: {first}{rest}");
    let lines: Vec<Value> = first.lines().chain(rest.lines()).map(|l| serde_json::from_str(l).unwrap()).collect();
    let messages: Vec<&str> = lines.iter().map(|l| l["message"].as_str().unwrap()).collect();
    assert_eq!(messages, ["queued", "read 3 pages"], "{first}{rest}");

    // Show: the API's JSON as it is, or a field per line.
    let shown = stdout_json(&weft(&url, &["job", "show", &job, "--output", "json"]));
    assert_eq!(shown, get(&addr, &format!("/jobs/{job}")).1);
    let table = weft(&url, &["job", "show", &job]);
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(text.lines().any(|l| l.starts_with("status") && l.ends_with("succeeded")), "{text}");
    assert!(text.contains("steps:\nSTEP"), "the steps are a table of their own: {text}");

    // Lists: filters, pages, every page, a table.
    let page = stdout_json(&weft(&url, &["job", "list", "--where", "status=succeeded", "--output", "json"]));
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    let page = stdout_json(&weft(&url, &["document", "list", "--limit", "1", "--output", "json"]));
    assert_eq!((page["items"].as_array().unwrap().len(), page["next_cursor"].is_string()), (1, true));
    let all = stdout_json(&weft(&url, &["document", "list", "--limit", "1", "--all", "--output", "json"]));
    let mut ids: Vec<&str> = all["items"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap()).collect();
    ids.sort();
    let mut expected: Vec<&str> = documents.iter().map(String::as_str).collect();
    expected.sort();
    assert_eq!(ids, expected);
    let table = weft(&url, &["document", "list", "--where", "tenant=acme"]);
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(text.starts_with("ID") && text.lines().count() == 4, "{text}");
    assert!(documents.iter().all(|d| text.contains(d.as_str())), "{text}");
    let page = stdout_json(&weft(&url, &["schedule", "list", "--output", "json"]));
    assert_eq!(page["items"], serde_json::json!([]));
    // A node defines the built-in workflows on start.
    let page =
        stdout_json(&weft(&url, &["workflow", "list", "--where", "name=redact-then-summarize", "--output", "json"]));
    assert_eq!(page["items"][0]["steps_count"], 2, "{page}");

    // Commands and a stream's history.
    let id = String::from_utf8(weft(&url, &["id"]).stdout).unwrap();
    let agent = id.trim().parse::<Uuid>().unwrap().to_string();
    let profile = r#"{"profile": {"name": "a", "role": "r", "goal": "g", "instructions": "i", "provider": "builtin",
        "model": "m", "parameters": {}, "concurrency_limit": 1}}"#;
    let reply = stdout_json(&weft(
        &url,
        &["send", "agent", &agent, "register", profile, "--tenant", "acme", "--output", "json"],
    ));
    assert_eq!(reply["status"], "ok", "{reply}");
    let page = stdout_json(&weft(&url, &["agent", "list", "--where", "tenant=acme", "--output", "json"]));
    assert_eq!(page["items"][0]["id"], serde_json::json!(agent), "the tenant the command named: {page}");
    // `send` waited for the read models: the agent is there at once.
    assert_eq!(stdout_json(&weft(&url, &["agent", "show", &agent, "--output", "json"]))["name"], "a");
    let events = stdout_json(&weft(&url, &["stream", "events", &format!("job-{job}"), "--output", "json"]));
    assert_eq!(events.as_array().unwrap().len(), 11, "the job's 11 events: {events}");

    // Projections: their lag, and a rebuild.
    let ready = stdout_json(&weft(&url, &["projection", "list", "--output", "json"]));
    assert!(ready["projections"]["jobs"]["position"].as_u64().unwrap() >= submitted, "{ready}");
    let status = stdout_json(&weft(&url, &["projection", "status", "jobs", "--output", "json"]));
    assert_eq!(status["rebuild"], Value::Null, "none yet: {status}");
    assert_eq!(status["lag_events"], 0, "{status}");
    let rebuilt = stdout_json(&weft(&url, &["projection", "rebuild", "jobs", "--output", "json"]));
    assert!(rebuilt["position"].as_u64().unwrap() >= submitted, "{rebuilt}");
    assert_eq!(stdout_json(&weft(&url, &["job", "show", &job, "--output", "json"])), shown);
    let status = stdout_json(&weft(&url, &["projection", "status", "jobs", "--output", "json"]));
    assert_eq!(status["rebuild"]["work"], "rebuild", "{status}");
    assert_eq!(status["rebuild"]["state"], "done", "{status}");
    assert_eq!(status["rebuild"]["took_over_at"], rebuilt["position"], "{status}");
    assert_eq!(status["rebuild"]["target"], status["head"], "{status}");
    // A reset empties the model and applies the log again in place; it waits until it has caught up.
    let output = weft(&url, &["projection", "reset", "jobs", "--output", "json"]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("jobs emptied"), "{output:?}");
    assert_eq!(stdout_json(&output)["position"], 0);
    assert_eq!(stdout_json(&weft(&url, &["job", "show", &job, "--output", "json"])), shown);
    let status = stdout_json(&weft(&url, &["projection", "status", "jobs", "--output", "json"]));
    assert_eq!((&status["rebuild"]["work"], &status["rebuild"]["state"]), (&"reset".into(), &"done".into()));

    // Bad input: a usage error (2) from the argument parser, or the node's error or an unreachable node (1),
    // each one line on stderr and nothing on stdout.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    for (args, code, says) in [
        (vec!["job", "show", "not-a-uuid"], 1, "invalid"),
        (vec!["job", "show", &Uuid::now_v7().to_string()], 1, "not_found"),
        (vec!["job", "logs", "../../readyz"], 1, "invalid"),
        (vec!["document", "list", "--where", "colour=red"], 1, "unknown parameter"),
        (vec!["document", "list", "--limit", "5000"], 1, "invalid"),
        (vec!["projection", "rebuild", "planets"], 1, "not_found"),
        (vec!["projection", "reset", "planets"], 1, "not_found"),
        (vec!["projection", "status", "planets"], 1, "not_found"),
        (vec!["document", "list", "--url", &format!("http://{closed}")], 1, "cannot reach"),
        (vec!["document", "list", "--url", "ftp://example"], 1, "http://"),
        (vec!["document", "list", "--output", "yaml"], 2, "yaml"),
        (vec!["document", "list", "--where", "colour"], 2, "NAME=VALUE"),
        (vec!["document", "fetch"], 2, "fetch"),
        (vec!["send", "document", &documents[0], "register", "{not json"], 1, "not JSON"),
        (vec!["send", "document", &documents[0], "register", "{}"], 1, "invalid"),
        (vec!["send", "planet", &documents[0], "register"], 1, "not_found"),
        (vec!["stream", "events", "a b"], 1, "invalid"),
        (vec!["send", "agent", &documents[0], "disable", r#"{"reason": "x"}"#, "--tenant", "a b"], 1, "Weft-Tenant"),
    ] {
        let output = weft(&url, &args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{args:?}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }

    let (status, rest) = node.terminate();
    assert!(status.success(), "{status}: {rest}");
}
