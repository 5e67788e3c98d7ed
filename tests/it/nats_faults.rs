//! Faults on the NATS path: the server restarts in the middle of a stream of commands.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weft::bus::nats::NatsBus;
use weft::bus::{Bus, CONTENT_TYPE, JSON, Message};
use weft::intake::{Intake, IntakeOptions};
use weft_actors::host::Options;
use weft_actors::process::Hosts;
use weft_events::domain::ids::Uuid;
use weft_events::{Direction, EventStore, MemoryStore, StreamName};
use weft_harness::NatsServer;

const COMMANDS: usize = 600;

async fn send(client: &dyn Bus, document: Uuid, command_id: Uuid) -> Result<Value, String> {
    let body = json!({"command_id": command_id.to_string(), "type": "register",
        "payload": {"name": "a.txt", "content_type": "text/plain", "declared_size_bytes": 10, "tenant": "t", "owner": "o"}});
    let mut message = Message::new(format!("weft.cmd.document.{document}"), body.to_string());
    message.headers.insert(CONTENT_TYPE.into(), JSON.into());
    let reply = client.request(message, Duration::from_millis(500)).await.map_err(|e| e.to_string())?;
    serde_json::from_slice(&reply.payload).map_err(|e| e.to_string())
}

#[actix_rt::test]
async fn a_nats_restart_mid_stream_loses_no_acknowledged_command_and_retries_append_once() {
    let server = NatsServer::start().unwrap();
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::default());
    let node_bus: Arc<dyn Bus> = Arc::new(NatsBus::new(weft::nats::connect(&server.url(), "node").await.unwrap()));
    let _intake =
        Intake::start(node_bus, Hosts::new(store.clone(), Options::default()), IntakeOptions::default()).await.unwrap();
    let client = NatsBus::new(weft::nats::connect(&server.url(), "client").await.unwrap());

    // Restart the server from another thread once a third of the commands are through. The commands wait
    // until it is down, so that some meet it down however fast the rest would have gone (a loaded CI run sent
    // all 400 before the kill landed).
    let (restart_tx, restart_rx) = std::sync::mpsc::channel::<()>();
    let (killed_tx, killed_rx) = std::sync::mpsc::channel::<()>();
    let restarter = std::thread::spawn(move || {
        let mut server = server;
        restart_rx.recv().unwrap();
        server.kill(0);
        killed_tx.send(()).unwrap();
        server.restart(0).unwrap();
        server
    });

    let commands: Vec<(Uuid, Uuid)> = (0..COMMANDS).map(|_| (Uuid::now_v7(), Uuid::now_v7())).collect();
    let mut outcomes = Vec::new();
    for (i, (document, command_id)) in commands.iter().enumerate() {
        if i == COMMANDS / 3 {
            restart_tx.send(()).unwrap();
            killed_rx.recv().unwrap();
        }
        outcomes.push(send(&client, *document, *command_id).await);
    }
    let _server = restarter.join().unwrap();
    let failed = outcomes.iter().filter(|o| !matches!(o, Ok(v) if v["status"] == "ok")).count();
    assert!(failed > 0, "the restart disturbed no command; the test proved nothing");

    // Every command that was acknowledged has its event in the store.
    for ((document, command_id), outcome) in commands.iter().zip(&outcomes) {
        if let Ok(reply) = outcome
            && reply["status"] == "ok"
        {
            let stream = StreamName::new(format!("document-{document}")).unwrap();
            let events = store.read_stream(&stream, 1, Direction::Forwards, 10).await.unwrap();
            assert_eq!(events.len(), 1, "an acknowledged command is missing");
            assert_eq!(events[0].causation_id, Some(*command_id));
        }
    }
    // Retrying every command with its own id, until the server is back, appends nothing twice.
    let deadline = Instant::now() + Duration::from_secs(30);
    for (document, command_id) in &commands {
        loop {
            match send(&client, *document, *command_id).await {
                Ok(reply) if reply["status"] == "ok" => break,
                other => {
                    assert!(Instant::now() < deadline, "the retry of {command_id} never went through: {other:?}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    for (document, _) in &commands {
        let stream = StreamName::new(format!("document-{document}")).unwrap();
        let events = store.read_stream(&stream, 1, Direction::Forwards, 10).await.unwrap();
        assert_eq!(events.len(), 1, "{stream} has {} events", events.len());
    }
    assert_eq!(store.head().await.unwrap(), COMMANDS as u64);
    eprintln!("{failed} of {COMMANDS} commands failed or timed out during the restart; all retried once");
}
