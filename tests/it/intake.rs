//! Command intake over both buses: commands in JSON and MessagePack, written as a client in another language
//! would write them (plain maps, not Weft's types); typed replies; bad input answered `invalid` with nothing
//! appended; and a property test that the decoder never panics.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use serde_json::{Value, json};
use weft::bus::memory::MemoryBus;
use weft::bus::nats::NatsBus;
use weft::bus::{Bus, CONTENT_TYPE, JSON, Message};
use weft::intake::{Intake, IntakeOptions};
use weft::protocol::{self, BodyLimits};
use weft_actors::document::Document;
use weft_actors::host::Options;
use weft_actors::process::Hosts;
use weft_events::domain::ids::Uuid;
use weft_events::{EventStore, MemoryStore};
use weft_harness::NatsServer;

const WAIT: Duration = Duration::from_secs(5);

struct Node {
    bus: Arc<dyn Bus>,
    store: Arc<dyn EventStore>,
    _intake: Intake,
}

async fn node(bus: Arc<dyn Bus>) -> Node {
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::default());
    let hosts = Hosts::new(store.clone(), Options::default());
    let intake = Intake::start(bus.clone(), hosts, IntakeOptions::default()).await.unwrap();
    Node { bus, store, _intake: intake }
}

/// Sends a JSON body to a subject and returns the JSON reply.
async fn json_request(bus: &dyn Bus, subject: &str, body: &[u8]) -> Value {
    let mut message = Message::new(subject, body.to_vec());
    message.headers.insert(CONTENT_TYPE.into(), JSON.into());
    let reply = bus.request(message, WAIT).await.unwrap();
    assert_eq!(reply.headers.get(CONTENT_TYPE).map(String::as_str), Some(JSON));
    serde_json::from_slice(&reply.payload).unwrap()
}

/// Sends a MessagePack body and returns the reply, as JSON for easy checking.
async fn msgpack_request(bus: &dyn Bus, subject: &str, body: Vec<u8>) -> Value {
    let reply = bus.request(Message::new(subject, body), WAIT).await.unwrap();
    rmp_serde::from_slice(&reply.payload).unwrap()
}

fn register(command_id: &str) -> Value {
    json!({
        "command_id": command_id,
        "type": "register",
        "payload": {
            "name": "report.pdf", "content_type": "application/pdf", "declared_size_bytes": 1000,
            "tenant": "acme", "owner": "ann"
        }
    })
}

async fn commands_are_decided_and_replied_in_both_formats(bus: Arc<dyn Bus>) {
    let node = node(bus).await;
    let id = Uuid::now_v7();
    let subject = format!("weft.cmd.document.{id}");
    let command_id = Uuid::now_v7().to_string();
    let first = json_request(&*node.bus, &subject, register(&command_id).to_string().as_bytes()).await;
    assert_eq!(first["status"], "ok", "{first}");
    assert_eq!(first["version"], 1);
    // The same command again: the first outcome, nothing appended.
    let again = json_request(&*node.bus, &subject, register(&command_id).to_string().as_bytes()).await;
    assert_eq!(
        (again["status"].clone(), again["version"].clone(), again["repeated"].clone()),
        (json!("ok"), json!(1), json!(true))
    );
    // MessagePack, a new command that the document refuses: typed rejection with a code.
    let body = rmp_serde::to_vec_named(&register(&Uuid::now_v7().to_string())).unwrap();
    let refused = msgpack_request(&*node.bus, &subject, body).await;
    assert_eq!(refused["status"], "error", "{refused}");
    assert_eq!(refused["error"]["kind"], "rejected");
    assert_eq!(refused["error"]["rejection"]["code"], "already_registered");
    // Accepted in MessagePack too.
    let upload = json!({"command_id": Uuid::now_v7().to_string(), "id": id.to_string(), "type": "mark_uploaded",
                        "payload": {"size_bytes": 900, "etag": "abc", "source": "client"}});
    let uploaded = msgpack_request(&*node.bus, &subject, rmp_serde::to_vec_named(&upload).unwrap()).await;
    assert_eq!((uploaded["status"].clone(), uploaded["version"].clone()), (json!("ok"), json!(2)), "{uploaded}");
    assert_eq!(node.store.head().await.unwrap(), 2);
}

/// Every kind of bad input, each with the words its reply must contain.
fn bad_inputs(id: Uuid) -> Vec<(&'static str, String, Vec<u8>, bool)> {
    let subject = format!("weft.cmd.document.{id}");
    let good = register(&Uuid::now_v7().to_string());
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = good.clone();
        f(&mut v);
        v.to_string().into_bytes()
    };
    let mut deep = String::new();
    for _ in 0..200 {
        deep.push('[');
    }
    let deep_json = format!(r#"{{"command_id":"{}","type":"register","payload":{deep}}}"#, Uuid::now_v7());
    let mut deep_msgpack = vec![0x81, 0xa1, b'x'];
    deep_msgpack.extend(std::iter::repeat_n(0x91, 200));
    deep_msgpack.push(0xc0);
    vec![
        ("garbage bytes", subject.clone(), b"\xff\x00garbage{".to_vec(), false),
        ("garbage JSON", subject.clone(), b"{not json".to_vec(), true),
        ("wrong types", subject.clone(), with(&|v| v["payload"]["declared_size_bytes"] = json!("lots")), true),
        ("unknown command", subject.clone(), with(&|v| v["type"] = json!("explode")), true),
        (
            "missing command id",
            subject.clone(),
            with(&|v| {
                v.as_object_mut().unwrap().remove("command_id");
            }),
            true,
        ),
        ("bad command id", subject.clone(), with(&|v| v["command_id"] = json!("not-a-uuid")), true),
        ("id differs", subject.clone(), with(&|v| v["id"] = json!(Uuid::now_v7().to_string())), true),
        ("unknown field", subject.clone(), with(&|v| v["extra"] = json!(1)), true),
        ("missing id", "weft.cmd.document.not-a-uuid".into(), with(&|_| {}), true),
        ("oversized", subject.clone(), with(&|v| v["payload"]["name"] = json!("x".repeat(300 * 1024))), true),
        ("nested too deep", subject.clone(), deep_json.into_bytes(), true),
        ("nested too deep", subject.clone(), deep_msgpack, false),
        ("empty body", subject, Vec::new(), false),
    ]
}

async fn bad_input_gets_an_invalid_reply_and_appends_nothing(bus: Arc<dyn Bus>) {
    let node = node(bus).await;
    for (case, subject, body, json) in bad_inputs(Uuid::now_v7()) {
        let reply = if json {
            json_request(&*node.bus, &subject, &body).await
        } else {
            msgpack_request(&*node.bus, &subject, body).await
        };
        assert_eq!(reply["status"], "error", "{case}: {reply}");
        assert_eq!(reply["error"]["kind"], "invalid", "{case}: {reply}");
        assert!(!reply["error"]["message"].as_str().unwrap().is_empty(), "{case}");
    }
    for (header, value) in [("Weft-Actor", "has space"), ("Weft-Correlation-Id", "not-a-uuid")] {
        let mut message = Message::new(
            format!("weft.cmd.document.{}", Uuid::now_v7()),
            register(&Uuid::now_v7().to_string()).to_string(),
        );
        message.headers.insert(CONTENT_TYPE.into(), JSON.into());
        message.headers.insert(header.into(), value.into());
        let reply: Value = serde_json::from_slice(&node.bus.request(message, WAIT).await.unwrap().payload).unwrap();
        assert_eq!(reply["error"]["kind"], "invalid", "header {header}: {reply}");
    }
    assert_eq!(node.store.head().await.unwrap(), 0, "bad input appended something");
    // The service still works.
    let id = Uuid::now_v7();
    let ok = json_request(
        &*node.bus,
        &format!("weft.cmd.document.{id}"),
        register(&Uuid::now_v7().to_string()).to_string().as_bytes(),
    )
    .await;
    assert_eq!(ok["status"], "ok", "{ok}");
}

/// Good commands for each aggregate whose payload nests objects, with a path to each nested object; the
/// commands must be `ok` as they are and `invalid` with an unknown field added at any of those paths.
/// The job's names the workflow defined before it, at version 1, with the same steps.
fn nested_commands() -> Vec<(&'static str, Uuid, Value, Vec<&'static str>)> {
    let agent = Uuid::now_v7().to_string();
    let workflow = Uuid::now_v7();
    let step = json!({"name": "s", "agent": agent, "instruction": "Do it.", "inputs": [{"from": "job_inputs"}],
                      "timeout_ms": 1000, "retry": {"max_attempts": 1, "base_delay_ms": 10, "max_delay_ms": 10}});
    vec![
        (
            "agent",
            Uuid::now_v7(),
            json!({"type": "register", "payload": {"profile": {"name": "a", "role": "r", "goal": "g",
                "instructions": "i", "provider": "builtin", "model": "echo", "parameters": {}, "concurrency_limit": 1}}}),
            vec!["/payload/profile"],
        ),
        (
            "workflow",
            workflow,
            json!({"type": "define", "payload": {"name": "w", "steps": [step.clone()]}}),
            vec!["/payload/steps/0", "/payload/steps/0/retry", "/payload/steps/0/inputs/0"],
        ),
        (
            "job",
            Uuid::now_v7(),
            json!({"type": "submit", "payload": {"workflow": workflow.to_string(), "workflow_version": 1,
                "steps": [step], "inputs": [Uuid::now_v7().to_string()], "priority": 0}}),
            vec!["/payload/steps/0", "/payload/steps/0/retry", "/payload/steps/0/inputs/0"],
        ),
        (
            "schedule",
            Uuid::now_v7(),
            json!({"type": "create", "payload": {"cron": "0 * * * *", "time_zone": "UTC",
                "workflow": workflow.to_string(), "target": {"selector": {"tenant": "acme"}},
                "strategy": "per_document"}}),
            vec!["/payload/target/selector"],
        ),
    ]
}

async fn nested_unknown_fields_are_refused_everywhere(bus: Arc<dyn Bus>) {
    let node = node(bus).await;
    for (aggregate, id, command, paths) in nested_commands() {
        for path in paths {
            let mut bad = command.clone();
            bad["command_id"] = json!(Uuid::now_v7().to_string());
            bad.pointer_mut(path).unwrap().as_object_mut().unwrap().insert("surprise".into(), json!(1));
            let subject = format!("weft.cmd.{aggregate}.{id}");
            let reply = json_request(&*node.bus, &subject, bad.to_string().as_bytes()).await;
            assert_eq!(reply["error"]["kind"], "invalid", "{aggregate} {path} in JSON: {reply}");
            assert!(reply["error"]["message"].as_str().unwrap().contains("surprise"), "{reply}");
            let reply = msgpack_request(&*node.bus, &subject, rmp_serde::to_vec_named(&bad).unwrap()).await;
            assert_eq!(reply["error"]["kind"], "invalid", "{aggregate} {path} in MessagePack: {reply}");
        }
        assert_eq!(node.store.head().await.unwrap(), 0, "{aggregate}: bad input appended something");
    }
    // The same commands without the surprise are taken.
    for (aggregate, id, mut command, _) in nested_commands() {
        command["command_id"] = json!(Uuid::now_v7().to_string());
        let subject = format!("weft.cmd.{aggregate}.{id}");
        let reply = json_request(&*node.bus, &subject, command.to_string().as_bytes()).await;
        assert_eq!(reply["status"], "ok", "{aggregate}: {reply}");
    }
}

async fn a_job_runs_the_steps_of_the_workflow_version_it_names(bus: Arc<dyn Bus>) {
    let node = node(bus).await;
    let commands = nested_commands();
    let (_, workflow, define, _) = &commands[1];
    let mut define = define.clone();
    define["command_id"] = json!(Uuid::now_v7().to_string());
    let defined =
        json_request(&*node.bus, &format!("weft.cmd.workflow.{workflow}"), define.to_string().as_bytes()).await;
    assert_eq!(defined["status"], "ok", "{defined}");
    let steps = define["payload"]["steps"].clone();
    let submit = |workflow: String, version: u32, steps: Option<Value>| {
        let mut payload = json!({"workflow": workflow, "workflow_version": version,
            "inputs": [Uuid::now_v7().to_string()], "priority": 0});
        if let Some(steps) = steps {
            payload["steps"] = steps;
        }
        json!({"command_id": Uuid::now_v7().to_string(), "type": "submit", "payload": payload}).to_string()
    };
    let send = |body: String| {
        let bus = node.bus.clone();
        async move {
            let job = Uuid::now_v7();
            (job, json_request(&*bus, &format!("weft.cmd.job.{job}"), body.as_bytes()).await)
        }
    };
    let head = node.store.head().await.unwrap();
    // A workflow never defined, a version never defined, steps other than the version's: rejected, nothing stored.
    let mut other = steps.clone();
    other[0]["instruction"] = json!("Do something else.");
    for (body, code) in [
        (submit(Uuid::now_v7().to_string(), 1, Some(steps.clone())), "unknown_workflow"),
        (submit(workflow.to_string(), 2, None), "unknown_workflow"),
        (submit(workflow.to_string(), 1, Some(other)), "steps_differ"),
    ] {
        let (_, reply) = send(body).await;
        assert_eq!(reply["error"]["kind"], "rejected", "{reply}");
        assert_eq!(reply["error"]["rejection"]["code"], code, "{reply}");
    }
    assert_eq!(node.store.head().await.unwrap(), head, "a refused submission stored something");
    // Without steps the job takes the version's; with exactly them it is taken as sent.
    for given in [None, Some(steps.clone())] {
        let (job, reply) = send(submit(workflow.to_string(), 1, given)).await;
        assert_eq!(reply["status"], "ok", "{reply}");
        let stream = weft_events::StreamName::new(format!("job-{job}")).unwrap();
        let stored = node.store.read_stream(&stream, 1, weft_events::Direction::Forwards, 1).await.unwrap();
        let submitted: weft_events::domain::job::Submitted = weft_events::codec::decode(&stored[0].payload).unwrap();
        assert_eq!(serde_json::to_value(&submitted.steps).unwrap(), steps);
    }
}

macro_rules! on_both_buses {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[actix_rt::test]
                async fn $case() {
                    super::$case(std::sync::Arc::new(super::MemoryBus::default())).await;
                }
            )*
        }
        mod nats {
            $(
                #[actix_rt::test]
                async fn $case() {
                    let server = super::NatsServer::start().unwrap();
                    let client = weft::nats::connect(&server.url(), "intake-test").await.unwrap();
                    super::$case(std::sync::Arc::new(super::NatsBus::new(client))).await;
                }
            )*
        }
    };
}

on_both_buses!(
    commands_are_decided_and_replied_in_both_formats,
    bad_input_gets_an_invalid_reply_and_appends_nothing,
    nested_unknown_fields_are_refused_everywhere,
    a_job_runs_the_steps_of_the_workflow_version_it_names,
);

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "[a-z_]{0,12}".prop_map(Value::from),
        Just(Value::from(Uuid::from_u128(7).to_string())),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z_]{1,20}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// The decoder answers every input, random bytes or random structures in either format, without panicking.
    #[test]
    fn the_command_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512), value in json_value(), kind in "register|mark_uploaded|delete|[a-z]{1,8}") {
        let subject = format!("weft.cmd.document.{}", Uuid::from_u128(7));
        let limits = BodyLimits::default();
        let _ = protocol::decode_command::<Document>(&subject, &bytes, false, limits);
        let _ = protocol::decode_command::<Document>(&subject, &bytes, true, limits);
        let body = json!({"command_id": Uuid::from_u128(9).to_string(), "type": kind, "payload": value});
        let _ = protocol::decode_command::<Document>(&subject, body.to_string().as_bytes(), true, limits);
        let _ = protocol::decode_command::<Document>(&subject, &rmp_serde::to_vec_named(&body).unwrap(), false, limits);
    }
}

/// A caller's `traceparent` with no correlation id names the command's flow: its events carry the trace id
/// as their correlation id (so that the job it starts is one trace with the caller's). A malformed one is
/// ignored, as the W3C recommendation says: the command is handled as usual, in a flow of its own.
#[actix_rt::test]
async fn a_caller_s_trace_is_the_flow_of_a_command_that_names_none() {
    let node = node(Arc::new(MemoryBus::default())).await;
    let send = |id: Uuid, traceparent: &str, body: Vec<u8>| {
        let mut message = Message::new(format!("weft.cmd.document.{id}"), body);
        message.headers.insert(CONTENT_TYPE.into(), JSON.into());
        message.headers.insert(weft::bus::TRACEPARENT.into(), traceparent.into());
        message
    };
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for (traceparent, flow) in [(traceparent, Some("4bf92f3577b34da6a3ce929d0e0e4736")), ("00-garbage", None)] {
        let (id, command_id) = (Uuid::now_v7(), Uuid::now_v7());
        let mut body = register(&command_id.to_string());
        body["command_id"] = json!(command_id);
        let reply = node.bus.request(send(id, traceparent, body.to_string().into_bytes()), WAIT).await.unwrap();
        let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
        assert_eq!(reply["status"], "ok", "{reply}");
        let stream = weft_events::StreamName::new(format!("document-{id}")).unwrap();
        let events = node.store.read_stream(&stream, 1, weft_events::Direction::Forwards, 10).await.unwrap();
        let correlation = events[0].correlation_id.unwrap().simple().to_string();
        assert_eq!(correlation, flow.map_or_else(|| command_id.simple().to_string(), str::to_owned));
    }
}
