//! A `nats-server` restarted under load, with a real `weft serve` on JetStream: nothing the node runs in the
//! background stops for good. Every read model and process catches up by itself, a job submitted after the
//! blip succeeds, every committed event reaches NATS at least once (a JetStream stream over `weft.evt.>`,
//! as `docs/protocol.md` tells subscribers to keep, holds every position), `/readyz` says what is not running
//! while it is not, and SIGINT stops the node with status 0.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use weft_harness::NatsServer;

use crate::serve::{Serve, command, get, weft};

/// Clients sending commands at once.
const CLIENTS: usize = 16;

/// The stream the test keeps of what the node publishes.
const CAPTURE: &str = "CAPTURED_EVENTS";

/// Polls `check` (which says what it saw) until it holds or the deadline passes.
fn eventually(what: &str, within: Duration, mut check: impl FnMut() -> (bool, String)) {
    let deadline = Instant::now() + within;
    loop {
        let (ok, seen) = check();
        if ok {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}; last seen: {seen}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every position the captured stream holds.
async fn captured_positions(url: &str) -> BTreeSet<u64> {
    #[derive(serde::Deserialize)]
    struct Wire {
        position: u64,
    }
    let client = weft::nats::connect(url, "capture-reader").await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream(CAPTURE).await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut positions = BTreeSet::new();
    if last == 0 {
        return positions;
    }
    let consumer =
        stream.create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default()).await.unwrap();
    let mut messages = consumer.messages().await.unwrap();
    while let Ok(Some(Ok(message))) = tokio::time::timeout(Duration::from_secs(10), messages.next()).await {
        let wire: Wire = rmp_serde::from_slice(&message.payload).unwrap();
        positions.insert(wire.position);
        if message.info().unwrap().stream_sequence >= last {
            break;
        }
    }
    positions
}

#[test]
fn a_nats_restart_under_load_stops_nothing_for_good() {
    let mut server = NatsServer::start().unwrap();
    let url = server.url();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // What a subscriber that must not miss an event keeps (docs/protocol.md): a stream over the event subjects.
    runtime.block_on(async {
        let client = weft::nats::connect(&url, "capture").await.unwrap();
        async_nats::jetstream::new(client)
            .create_stream(async_nats::jetstream::stream::Config {
                name: CAPTURE.into(),
                subjects: vec!["weft.evt.>".into()],
                duplicate_window: Duration::from_secs(600),
                ..Default::default()
            })
            .await
            .unwrap();
    });

    let dir = tempfile::tempdir().unwrap();
    let node = Serve::start_with_env(dir.path(), &["--nats", &url, "--jetstream"], &[("WEFT_LOG", "warn")]);
    let addr = node.addr.clone();
    eventually("the node is ready", Duration::from_secs(20), || {
        let (status, body) = get(&addr, "/readyz");
        (status == 200, body.to_string())
    });

    // Load: clients registering documents, each retrying a command (same id) until it is answered `ok`.
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (addr, stop, acknowledged) = (addr.clone(), stop.clone(), acknowledged.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let document = uuid::Uuid::now_v7().to_string();
                    let body = json!({"command_id": uuid::Uuid::now_v7().to_string(), "type": "register",
                        "payload": {"name": "a.txt", "content_type": "text/plain", "declared_size_bytes": 10,
                                    "tenant": "acme", "owner": "ann"}});
                    for _ in 0..100 {
                        let path = format!("/commands/document/{document}");
                        let answer = crate::serve::http(&addr, "POST", &path, &[], body.to_string().as_bytes());
                        if answer.status == 200 {
                            acknowledged.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            })
        })
        .collect();
    // The blip: the server down for as long as it takes to see the node say so (a second or two), under load,
    // then load on well past the moment the node used to give up (about 5 s after).
    eventually("the load is under way", Duration::from_secs(30), || {
        let done = acknowledged.load(Ordering::Relaxed);
        (done >= 200, format!("{done} commands acknowledged"))
    });
    let before = acknowledged.load(Ordering::Relaxed);
    server.kill(0);
    // While the server is down the node says it is not ready, and why.
    eventually("the node says it is not ready", Duration::from_secs(30), || {
        let (status, ready) = get(&addr, "/readyz");
        (status == 503 && ready["not_ready"].as_array().is_some_and(|n| !n.is_empty()), ready.to_string())
    });
    server.restart(0).unwrap();
    // The load goes on across the blip: commands are acknowledged again after the restart.
    let restarted = acknowledged.load(Ordering::Relaxed);
    eventually("commands are acknowledged after the restart", Duration::from_secs(60), || {
        let now = acknowledged.load(Ordering::Relaxed);
        (now >= restarted + 100, format!("{} acknowledged since the restart", now - restarted))
    });
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    let after = acknowledged.load(Ordering::Relaxed);
    assert!(before > 0 && after > before, "the load did not run across the blip: {before} then {after}");

    // Every read model catches up with the log by itself, and the node says it is ready.
    eventually("the node is ready with every read model at the head", Duration::from_secs(60), || {
        let (status, ready) = get(&addr, "/readyz");
        let head = ready["head"].as_u64().unwrap_or(u64::MAX);
        let projections = ready["projections"].as_object().cloned().unwrap_or_default();
        let caught_up = !projections.is_empty() && projections.values().all(|p| p["position"].as_u64() == Some(head));
        (status == 200 && caught_up, ready.to_string())
    });
    // The process managers run again. (A blip longer than the lease's self-fencing, 6 s without a renewal,
    // makes the node give them up; it takes them again once its old lease has expired, 10 s after its last
    // renewal.)
    eventually("the process managers run again", Duration::from_secs(60), || {
        let (status, ready) = get(&addr, "/readyz");
        let tasks = ["orchestrator", "worker", "timers", "publisher", "projection jobs", "lease"];
        (status == 200 && tasks.iter().all(|t| ready["tasks"][*t]["state"] == "running"), ready.to_string())
    });

    // A job submitted after the blip runs to its end: the process managers are at work.
    let file = dir.path().join("after.txt");
    std::fs::write(&file, "Revenue rose in the third quarter. Costs were flat.\n").unwrap();
    let (ok, document, stderr) = weft(&addr, &["document", "upload", file.to_str().unwrap(), "--tenant", "acme"]);
    assert!(ok, "{stderr}");
    let (ok, outputs, stderr) = weft(&addr, &["job", "run", "summarize", "--document", document.trim(), "--wait"]);
    assert!(ok && outputs.contains("summarize"), "{outputs}\n{stderr}\n{}", node.log());

    // Every committed event reached NATS at least once: the captured stream holds every position.
    let (_, ready) = get(&addr, "/readyz");
    let head = ready["head"].as_u64().unwrap();
    let mut missing = Vec::new();
    eventually("every position up to the head was published", Duration::from_secs(60), || {
        let positions = runtime.block_on(captured_positions(&url));
        missing = (1..=head).filter(|p| !positions.contains(p)).collect();
        (missing.is_empty(), format!("{} of {head} missing, from {:?}", missing.len(), missing.first()))
    });

    // A command of a kind the log does not know changes nothing, and the node stops cleanly on SIGINT.
    assert_eq!(command(&addr, "document", &uuid::Uuid::now_v7().to_string(), "explode", json!({})).0, 400);
    let (status, log) = node.signal("-INT");
    assert!(status.success(), "{status}: {log}");
    assert!(!log.contains("panicked"), "{log}");
}
