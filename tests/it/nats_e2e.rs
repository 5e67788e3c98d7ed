//! End to end over a real NATS server: two Weft nodes (each with its own connection, actor hosts and command
//! intake, in one queue group, over one store: in memory, or JetStream reached by each node on its own) and a client that speaks only the documented protocol — JSON
//! bodies built by hand, replies and events read as plain maps.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use weft::bus::nats::NatsBus;
use weft::bus::{Bus, CONTENT_TYPE, JSON, Message};
use weft::gateway::BusGateway;
use weft::intake::{Intake, IntakeOptions};
use weft::publisher::{MESSAGE_ID, Publisher};
use weft::store::jetstream::{JetStreamConfig, JetStreamStore};
use weft_actors::host::Options;
use weft_actors::process::{self, Hosts, Processes, RunOptions};
use weft_actors::testkit::{Scripted, ScriptedExecutor};
use weft_events::domain::ids::Uuid;
use weft_events::{EventStore, MemoryStore};
use weft_harness::NatsServer;

/// An event as a client reads it: the documented fields it needs, the payload as MessagePack bytes.
#[derive(serde::Deserialize)]
struct ClientEvent {
    event_id: String,
    event_type: String,
    version: u64,
    payload: bytes::Bytes,
}

const WAIT: Duration = Duration::from_secs(10);

fn fast() -> RunOptions {
    RunOptions { checkpoint_every_events: 100, checkpoint_every_ms: 20, retry_min_ms: 5, retry_max_ms: 100 }
}

async fn bus(server: &NatsServer, name: &str) -> Arc<dyn Bus> {
    Arc::new(NatsBus::new(weft::nats::connect(&server.url(), name).await.unwrap()))
}

/// The client's side: a JSON command and its JSON reply.
async fn command(client: &dyn Bus, aggregate: &str, id: &str, kind: &str, payload: Value) -> Value {
    let body = json!({"command_id": Uuid::now_v7().to_string(), "type": kind, "payload": payload});
    let mut message = Message::new(format!("weft.cmd.{aggregate}.{id}"), body.to_string());
    message.headers.insert(CONTENT_TYPE.into(), JSON.into());
    let reply = client.request(message, WAIT).await.unwrap();
    let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(reply["status"], "ok", "{aggregate} {kind}: {reply}");
    reply
}

#[actix_rt::test]
async fn a_client_drives_a_document_and_a_job_to_completion_over_two_nodes() {
    let server = NatsServer::start().unwrap();
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::default());
    drive_to_completion(&server, store.clone(), store, Default::default()).await;
}

/// The same with the JetStream store, each node with its own connection to it: the nodes share nothing but
/// NATS, as on two machines.
#[actix_rt::test]
async fn two_nodes_on_one_jetstream_store_drive_a_job_to_completion() {
    let server = NatsServer::start().unwrap();
    let mut stores = Vec::new();
    for name in ["store-a", "store-b"] {
        let client = weft::nats::connect(&server.url(), name).await.unwrap();
        let store = JetStreamStore::open(client, JetStreamConfig::default()).await.unwrap();
        stores.push(Arc::new(store) as Arc<dyn EventStore>);
    }
    let store_b = stores.pop().unwrap();
    drive_to_completion(&server, stores.pop().unwrap(), store_b, Default::default()).await;
}

/// The same with the nodes routing commands by partition (`--partition-routing`): the server maps each
/// command to its instance's partition, each node takes the commands of the partitions it holds, and appends
/// only to those; the process managers on node A send every command to its partition's holder.
#[actix_rt::test]
async fn two_nodes_routing_by_partition_drive_a_job_to_completion() {
    use weft::cluster::members::{Member, Members, MembersOptions};
    use weft::cluster::ownership::{self, OwnershipOptions, Partitions};
    use weft::cluster::routing::{self, Inboxes};
    let mapping = r#"mappings = { "weft.cmd.*.*": "weft.cmd.{{wildcard(1)}}.{{wildcard(2)}}.{{partition(64,1,2)}}" }"#;
    let server = NatsServer::start_with(mapping).unwrap();
    let (mut stores, mut options, mut held, mut tasks) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for name in ["store-a", "store-b"] {
        let client = weft::nats::connect(&server.url(), name).await.unwrap();
        let store = JetStreamStore::open(client.clone(), JetStreamConfig::default()).await.unwrap();
        let partitions = Partitions::new(64);
        store.fence_by(partitions.clone());
        let inboxes = Inboxes::new(partitions.clone());
        let me = Member { id: name.into(), http: None, started_at: 0, beat_at: 0, version: "test".into() };
        let members = Members::join(client.clone(), &MembersOptions::default(), me).await.unwrap();
        let kv = ownership::bucket(client.clone(), &OwnershipOptions::default()).await.unwrap();
        let beating = members.clone();
        tasks.push(actix_rt::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let _ = beating.beat().await;
            }
        }));
        let health = weft_events::Health::default();
        let own = ownership::run(kv, members, partitions.clone(), OwnershipOptions::default(), health.clone());
        tasks.push(actix_rt::spawn(own));
        tasks.push(actix_rt::spawn(routing::run(client, inboxes.clone(), health)));
        options.push(IntakeOptions { inboxes: Some(inboxes), ..IntakeOptions::default() });
        held.push(partitions);
        stores.push(Arc::new(store) as Arc<dyn EventStore>);
    }
    // Both nodes hold a share, all 64 together (each routes its own before a command is sent).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while held.iter().map(|p| p.held().len()).sum::<usize>() != 64 || held.iter().any(|p| p.held().is_empty()) {
        assert!(std::time::Instant::now() < deadline, "the partitions did not settle on both nodes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for partitions in &held {
        partitions.settled(Duration::from_secs(5)).await;
    }
    let store_b = stores.pop().unwrap();
    let option_b = options.pop().unwrap();
    drive_to_completion(&server, stores.pop().unwrap(), store_b, [options.pop().unwrap(), option_b]).await;
    for task in tasks {
        task.abort();
    }
}

/// Node A (`store`) and node B (`store_b`) take commands in one queue group (or by partition, as `options` say);
/// the process managers and the
/// publisher run on node A; a client drives a document and a job to completion, then 40 commands that both
/// nodes share.
async fn drive_to_completion(
    server: &NatsServer,
    store: Arc<dyn EventStore>,
    store_b: Arc<dyn EventStore>,
    [options_a, options_b]: [IntakeOptions; 2],
) {
    let (bus_a, bus_b) = (bus(server, "node-a").await, bus(server, "node-b").await);
    let intake_a =
        Intake::start(bus_a.clone(), Hosts::new(store.clone(), Options::default()), options_a).await.unwrap();
    let intake_b = Intake::start(bus_b.clone(), Hosts::new(store_b, Options::default()), options_b).await.unwrap();
    // The process managers and the publisher run on node A and reach the aggregates only over the bus.
    let gateway = BusGateway::new(bus_a.clone(), store.clone(), WAIT);
    let executor = Rc::new(ScriptedExecutor::new().on("summarise", 1, Scripted::Fail { retryable: true }));
    let processes = Processes::start(gateway, store.clone(), Some(executor.clone()), fast());
    let publisher = process::start(Publisher::new(bus_a.clone()), store.clone(), fast());

    let client = bus(server, "client").await;
    let (agent, document, job) = (Uuid::now_v7().to_string(), Uuid::now_v7().to_string(), Uuid::now_v7().to_string());
    let mut job_events = client.subscribe(&format!("weft.evt.*.job.{job}.>"), None).await.unwrap();
    client.flush().await.unwrap();

    let profile = json!({"name": "Sam", "role": "summariser", "goal": "short summaries", "instructions": "Be brief.",
                         "provider": "builtin", "model": "extractive", "parameters": {"sentences": 3},
                         "concurrency_limit": 4});
    command(&*client, "agent", &agent, "register", json!({"profile": profile})).await;
    command(
        &*client,
        "document",
        &document,
        "register",
        json!({"name": "a.pdf", "content_type": "application/pdf",
        "declared_size_bytes": 1000, "tenant": "acme", "owner": "ann"}),
    )
    .await;
    let uploaded = command(
        &*client,
        "document",
        &document,
        "mark_uploaded",
        json!({"size_bytes": 900, "etag": "e1", "source": "notification"}),
    )
    .await;
    assert_eq!(uploaded["version"], 2);
    let step = |name: &str, inputs: Value| {
        json!({"name": name, "agent": agent, "instruction": format!("{name} it"),
        "inputs": inputs, "timeout_ms": 5000, "retry": {"max_attempts": 3, "base_delay_ms": 10, "max_delay_ms": 100}})
    };
    let steps = json!([
        step("extract", json!([{"from": "job_inputs"}])),
        step("summarise", json!([{"from": "step", "name": "extract"}])),
        step("report", json!([{"from": "step", "name": "extract"}, {"from": "step", "name": "summarise"}])),
    ]);
    // The job runs a defined workflow's version; sent without steps, it takes that version's.
    let workflow = Uuid::now_v7().to_string();
    let defined = command(&*client, "workflow", &workflow, "define", json!({"name": "report", "steps": steps})).await;
    assert_eq!(defined["status"], "ok", "{defined}");
    command(
        &*client,
        "job",
        &job,
        "submit",
        json!({"workflow": workflow, "workflow_version": 1, "inputs": [document], "priority": 0}),
    )
    .await;

    // The job's events arrive on their subjects, in order, each with its id as the message id, until the end.
    let mut seen = Vec::new();
    loop {
        let Ok(Some(message)) = tokio::time::timeout(Duration::from_secs(30), job_events.next()).await else {
            let all = store.read_all(1, 1000).await.unwrap();
            let types: Vec<String> =
                all.iter().map(|e| format!("{} {} {:?}", e.stream, e.event_type, e.actor)).collect();
            panic!("the job stalled after {seen:?}; the store holds {types:#?}");
        };
        let event: ClientEvent = rmp_serde::from_slice(&message.payload).unwrap();
        assert_eq!(message.headers.get(MESSAGE_ID), Some(&event.event_id));
        let name = message.subject.rsplit('.').next().unwrap().to_owned();
        assert_eq!(event.event_type, format!("job.{name}"));
        assert_eq!(event.version, seen.len() as u64 + 1, "events of the job out of order: {seen:?}");
        assert!(!event.payload.is_empty());
        seen.push(name.clone());
        if name == "succeeded" || name == "failed" {
            break;
        }
    }
    assert_eq!(seen.last().map(String::as_str), Some("succeeded"), "{seen:?}");
    assert!(seen.contains(&"retry_scheduled".to_owned()), "{seen:?}");
    assert_eq!(executor.runs().len(), 4);

    // Both nodes share the commands of the queue group; each command has its effect once. The job's commands
    // are over first: the agent's record of each run is sent beside the job's and may land after the job's end,
    // and would be counted with these.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let events = store.read_all(1, 10_000).await.unwrap();
        let recorded =
            events.iter().filter(|e| matches!(&*e.event_type, "agent.task_completed" | "agent.task_failed")).count();
        if recorded == executor.runs().len() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the agent recorded {recorded} of the runs");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    processes.stop().await.unwrap();
    let before = store.head().await.unwrap();
    let handled = (intake_a.handled(), intake_b.handled());
    for i in 0..40 {
        command(
            &*client,
            "document",
            &Uuid::now_v7().to_string(),
            "register",
            json!({"name": format!("{i}.txt"),
            "content_type": "text/plain", "declared_size_bytes": 10, "tenant": "acme", "owner": "ann"}),
        )
        .await;
    }
    let (a, b) = (intake_a.handled() - handled.0, intake_b.handled() - handled.1);
    assert!(a > 0 && b > 0, "one node took every command: {a} and {b}");
    assert_eq!(a + b, 40);
    let registered = store.read_all(before + 1, 1000).await.unwrap();
    assert_eq!(registered.iter().filter(|e| &*e.event_type == "document.registered").count(), 40);

    publisher.stop().await.unwrap();
}
