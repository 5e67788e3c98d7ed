//! The query API of a real `weft serve` process on a free port: reads after a command with `?after=`
//! (read-your-writes), unknown ids 404, malformed ids and queries 400, all with JSON errors.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use weft::nats::{self, NatsServer};
use weft_events::domain::ids::Uuid;

/// One HTTP/1.1 GET; returns the status and the JSON body.
fn get(addr: &str, path: &str) -> (u16, Value) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{response}"));
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    (status, serde_json::from_str(body).unwrap_or_else(|e| panic!("{path}: {e}: {response}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_follow_commands_and_bad_requests_get_json_errors() {
    let server = NatsServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut node = crate::reaped::Reaped(
        Command::new(env!("CARGO_BIN_EXE_weft"))
            .args(["serve", "--http-addr", "127.0.0.1:0", "--nats", &server.url(), "--store"])
            .arg(dir.path().join("events.db"))
            .arg("--read-models")
            .arg(dir.path().join("read.db"))
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stderr = BufReader::new(node.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let addr = line.trim().rsplit("http://").next().unwrap().to_owned();

    let client = nats::connect(&server.url(), "client").await.unwrap();
    let id = Uuid::now_v7();
    let body = json!({"command_id": Uuid::now_v7().to_string(), "type": "register",
        "payload": {"name": "a.pdf", "content_type": "application/pdf", "declared_size_bytes": 1000,
                    "tenant": "acme", "owner": "ann"}});
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Content-Type", "application/json");
    let request = async_nats::Request::new().headers(headers).payload(body.to_string().into());
    let reply = client.send_request(format!("weft.cmd.document.{id}"), request).await.unwrap();
    let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
    let position = reply["last_position"].as_u64().unwrap_or_else(|| panic!("{reply}"));

    let addr2 = addr.clone();
    let checks = tokio::task::spawn_blocking(move || {
        let addr = addr2;
        let (status, document) = get(&addr, &format!("/documents/{id}?after={position}"));
        assert_eq!(status, 200, "{document}");
        assert_eq!((document["status"].as_str(), document["name"].as_str()), (Some("registered"), Some("a.pdf")));
        assert_eq!(document["derivatives"], json!([]));
        assert_eq!(get(&addr, "/healthz").0, 200);
        let (status, ready) = get(&addr, "/readyz");
        assert_eq!(status, 200);
        assert!(ready["positions"]["documents"].as_u64().unwrap() >= position, "{ready}");
        for (path, expected) in [
            (format!("/documents/{}", Uuid::now_v7()), 404),
            (format!("/jobs/{}", Uuid::now_v7()), 404),
            ("/documents/not-a-uuid".to_owned(), 400),
            (format!("/documents/{id}?after=soon"), 400),
            (format!("/documents/{id}?colour=red"), 400),
            ("/nowhere".to_owned(), 404),
        ] {
            let (status, body) = get(&addr, &path);
            assert_eq!(status, expected, "{path}: {body}");
            assert!(body["error"]["kind"].is_string() && body["error"]["message"].is_string(), "{path}: {body}");
        }
        // A position the read model will not reach in time: 504, not a stale answer.
        let (status, body) = get(&addr, &format!("/documents/{id}?after={}", position + 1000));
        assert_eq!(status, 504, "{body}");
    });
    checks.await.unwrap();
    Command::new("kill").args(["-TERM", &node.id().to_string()]).status().unwrap();
    let status = node.wait().unwrap();
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(status.success(), "{status}: {rest}");
}
