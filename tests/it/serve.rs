//! A real `weft serve` child process on free ports, and a small HTTP/1 client for its query API (raw TCP, so
//! that the tests see exactly what goes over the wire).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{ChildStderr, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::reaped::Reaped;

/// A running `weft serve`. Its log (stderr) is read as it comes, on a thread of its own, and kept: a node
/// that logs a lot (a NATS restart's warnings) would otherwise stall on a full pipe.
pub struct Serve {
    pub child: Reaped,
    /// `127.0.0.1:PORT` of the query API.
    pub addr: String,
    log: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// Spawns `weft serve` with the query API on a free port and `args`, in `folder` (this process's own when
/// `None`), and reads the first line it logs: the node (killed when dropped), the rest of its stderr, and that
/// line. The helper of every test that runs a node.
pub fn spawn(folder: Option<&Path>, args: &[&str], env: &[(&str, &str)]) -> (Reaped, BufReader<ChildStderr>, String) {
    let (child, stderr, line) = spawn_unregistered(folder, args, env);
    if let Some(addr) = line.trim().rsplit_once("http://").map(|(_, addr)| addr.to_owned()) {
        // The admin token the node wrote beside its store (or its secret), for the helpers below.
        let secret = args.iter().position(|a| *a == "--auth-secret-file").map(|i| Path::new(args[i + 1]).to_owned());
        let store = args.iter().position(|a| *a == "--store").map(|i| Path::new(args[i + 1]).to_owned());
        let beside = secret.or(store).unwrap_or_else(|| folder.unwrap_or(Path::new(".")).join("weft-data/events.db"));
        let file = beside.parent().unwrap_or(Path::new(".")).join("admin.token");
        if let Ok(token) = std::fs::read_to_string(file) {
            TOKENS.lock().unwrap_or_else(|p| p.into_inner()).insert(addr, token.trim().to_owned());
        }
    }
    (child, stderr, line)
}

/// The admin token of each node [`spawn`] started, by its address.
static TOKENS: Mutex<std::collections::BTreeMap<String, String>> = Mutex::new(std::collections::BTreeMap::new());

/// The admin token of the node at `addr`, if it has authentication on.
pub fn token(addr: &str) -> Option<String> {
    TOKENS.lock().unwrap_or_else(|p| p.into_inner()).get(addr).cloned()
}

/// [`spawn`] without noting the node's admin token.
fn spawn_unregistered(
    folder: Option<&Path>,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Reaped, BufReader<ChildStderr>, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_weft"));
    command.args(["serve", "--http-addr", "127.0.0.1:0"]).args(args).envs(env.iter().copied()).stderr(Stdio::piped());
    if let Some(folder) = folder {
        command.current_dir(folder);
    }
    let mut child = Reaped(command.spawn().unwrap());
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    // The first line that is not a JSON log line (`--log-format json` may write some before it).
    let mut line = String::new();
    while line.is_empty() || line.starts_with('{') {
        line.clear();
        if stderr.read_line(&mut line).unwrap() == 0 {
            break;
        }
    }
    (child, stderr, line)
}

impl Serve {
    /// Starts `weft serve` with its store and read models in `dir`, the query API on a free port, and `args`;
    /// returns once it announced itself.
    pub fn start(dir: &Path, args: &[&str]) -> Self {
        Self::start_with_env(dir, args, &[])
    }

    /// [`Serve::start`] with these environment variables set.
    pub fn start_with_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let (store, read_models) = (dir.join("events.db"), dir.join("read.db"));
        let mut all = vec!["--store", store.to_str().unwrap(), "--read-models", read_models.to_str().unwrap()];
        all.extend_from_slice(args);
        let (child, stderr, line) = spawn(None, &all, env);
        assert!(line.contains("http://"), "weft serve did not start: {line}");
        let addr = line.trim().rsplit("http://").next().unwrap().to_owned();
        let log = Arc::new(Mutex::new(String::new()));
        let kept = log.clone();
        let reader = std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                let mut kept = kept.lock().unwrap_or_else(|p| p.into_inner());
                kept.push_str(&line);
                kept.push('\n');
            }
        });
        Self { child, addr, log, reader: Some(reader) }
    }

    /// What the node logged after announcing itself, so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Sends SIGTERM and asserts a clean exit.
    pub fn stop(self) {
        let (status, rest) = self.terminate();
        assert!(status.success(), "{status}: {rest}");
    }

    /// Sends SIGTERM and waits for the node to exit; returns the status and its log.
    pub fn terminate(self) -> (ExitStatus, String) {
        self.signal("-TERM")
    }

    /// Sends `signal` (`-INT`, `-TERM`) and waits for the node to exit; returns the status and its log.
    pub fn signal(mut self, signal: &str) -> (ExitStatus, String) {
        Command::new("kill").args([signal, &self.child.id().to_string()]).status().unwrap();
        let status = self.child.wait().unwrap();
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        (status, self.log())
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request with `Connection: close`, with the node's admin token unless `headers` carry an
/// `Authorization` of their own (the tests of other behaviour than authentication run as the admin).
pub fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    let bearer = token(addr).map(|t| format!("Bearer {t}"));
    let mut headers = headers.to_vec();
    if let Some(bearer) = &bearer
        && !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("authorization"))
    {
        headers.push(("Authorization", bearer));
    }
    raw_http(addr, method, path, &headers, body)
}

/// [`http`] with exactly these headers.
pub fn raw_http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if method == "POST" {
        head.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    // A server may answer (413) before it read the whole body and close; the answer still counts.
    let _ = stream.write_all(body);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or_else(|| panic!("{method} {path}: no answer: {raw:?}"));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Response { status, headers, body: body.to_owned() }
}

/// `GET path`; the status and the JSON body.
pub fn get(addr: &str, path: &str) -> (u16, Value) {
    let response = http(addr, "GET", path, &[], b"");
    (response.status, response.json())
}

/// `POST /commands/{aggregate}/{id}` with a fresh command id; the status and the reply.
pub fn command(addr: &str, aggregate: &str, id: &str, kind: &str, payload: Value) -> (u16, Value) {
    let body = serde_json::json!({"command_id": uuid::Uuid::now_v7().to_string(), "type": kind, "payload": payload});
    let response = http(addr, "POST", &format!("/commands/{aggregate}/{id}"), &[], body.to_string().as_bytes());
    (response.status, response.json())
}

/// Submits a job whose workflow the test made up: defines the workflow `submit` names, with its steps, as
/// version 1 (a repeat of the same definition is fine), then submits. A refused definition is the answer.
pub fn submit_job(addr: &str, job: &str, submit: Value) -> (u16, Value) {
    let workflow = submit["workflow"].as_str().expect("the submit names its workflow").to_owned();
    let define = serde_json::json!({"name": "made-up", "steps": submit["steps"]});
    let (status, reply) = command(addr, "workflow", &workflow, "define", define);
    if status != 200 && reply["error"]["rejection"]["code"] != "already_defined" {
        return (status, reply);
    }
    command(addr, "job", job, "submit", submit)
}

/// A document's `register` payload.
pub fn register(name: &str, tenant: &str) -> Value {
    serde_json::json!({"name": name, "content_type": "application/pdf", "declared_size_bytes": 1000,
                       "tenant": tenant, "owner": "ann"})
}

/// `weft <args> --url http://addr` against a served node; the exit status, stdout and stderr.
pub fn weft(addr: &str, args: &[&str]) -> (bool, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_weft"));
    command.args(args).args(["--url", &format!("http://{addr}")]);
    if let Some(token) = token(addr) {
        command.env("WEFT_TOKEN", token);
    }
    let output = command.output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (output.status.success(), text(&output.stdout), text(&output.stderr))
}

/// `Authorization: Bearer <token>` of `subject` with `role` in tenant `acme`, for ten minutes, from the secret
/// of the node whose store is in `dir`.
pub fn bearer(dir: &Path, subject: &str, role: weft::auth::Role) -> String {
    let secret = weft::auth::token::Secret::load(&dir.join("auth.secret")).unwrap();
    let token = weft::auth::token::issue(&secret, subject, role, &["acme".to_owned()], Duration::from_secs(600));
    format!("Bearer {token}")
}
