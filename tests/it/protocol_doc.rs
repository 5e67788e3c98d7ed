//! The worked example of `docs/protocol.md`, as written there: its Python client (nats-py and msgpack, which
//! `scripts/test` installs) runs against a real `nats-server` and `weft serve` on a new store, and prints what
//! the page says it prints (ids and times aside).

use std::io::Write;
use std::process::{Command, Stdio};

use weft_harness::NatsServer;

use crate::serve::Serve;

/// Ids and times made comparable: UUIDs become `<id>`, 16-digit numbers (µs since the epoch) `<time>`.
fn normalise(text: &str) -> Vec<String> {
    let uuid = regex::Regex::new(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}").unwrap();
    let time = regex::Regex::new(r"\b\d{16}\b").unwrap();
    text.lines()
        .map(|line| time.replace_all(&uuid.replace_all(line, "<id>"), "<time>").trim_end().to_owned())
        .filter(|line| !line.is_empty())
        .collect()
}

#[test]
fn the_protocol_s_worked_example_prints_what_the_page_says() {
    let page = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/protocol.md")).unwrap();
    let example = page.split("## A worked example").nth(1).expect("the page has a worked example");
    let shell = example.split("```sh\n").nth(1).and_then(|b| b.split("```").next()).expect("a sh block");
    let python = shell.split("python3 - <<'EOF'\n").nth(1).and_then(|b| b.split("\nEOF").next()).expect("Python");
    // The first plain block after the shell block is what it prints.
    let after_shell = example.split_once("```sh\n").and_then(|(_, b)| b.split_once("\n```\n")).map(|(_, b)| b);
    let printed = after_shell.and_then(|b| b.split("\n```\n").nth(1)).expect("what it prints");
    assert!(shell.contains("nats://127.0.0.1:4222"), "the example names its NATS server");

    let server = NatsServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let node = Serve::start(dir.path(), &["--nats", &server.url()]);
    let mut child = Command::new("python3")
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let token = dir.path().join("admin.token");
    let script = python
        .replace("nats://127.0.0.1:4222", &server.url())
        .replace("/tmp/weft/admin.token", token.to_str().unwrap());
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "the example failed (scripts/test installs nats-py and msgpack into .tools/venv): {stderr}\n{stdout}"
    );
    assert_eq!(normalise(&stdout), normalise(printed), "the example printed:\n{stdout}");
    node.stop();
}
