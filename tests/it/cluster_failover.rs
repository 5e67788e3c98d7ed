//! Nodes routing commands by partition (`--partition-routing`) on a three-server NATS cluster with the
//! command mapping: a node killed with SIGKILL under load, a fourth node joining, a NATS server killed. Every
//! acknowledged command is stored once, every partition is held again by a live node, and the fencing tokens
//! in the log show that no partition ever had two writers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use weft_harness::NatsServer;

use crate::serve::Serve;

const MAPPING: &str =
    r#"mappings = { "weft.cmd.*.*": "weft.cmd.{{wildcard(1)}}.{{wildcard(2)}}.{{partition(64,1,2)}}" }"#;

/// `weft serve` arguments of a node routing by partition on the R3 store `stream` of the servers at `url`, with
/// the shared secret `secret`, and `more`.
fn routed(url: &str, stream: &str, secret: &std::path::Path, more: &[&str]) -> Vec<String> {
    let mut args = ["--nats", url, "--jetstream", "--jetstream-replicas", "3", "--jetstream-stream", stream]
        .map(str::to_owned)
        .to_vec();
    args.extend(["--partition-routing", "--auth-secret-file", secret.to_str().unwrap()].map(str::to_owned));
    args.extend(more.iter().map(|a| (*a).to_owned()));
    args
}

/// `GET /cluster` of the node at `addr`.
fn cluster_of(addr: &str) -> Value {
    let (status, answer) = crate::serve::get(addr, "/cluster");
    assert_eq!(status, 200, "{answer}");
    answer
}

/// The holder of each partition as `GET /cluster` lists the leases.
fn holders(cluster: &Value) -> BTreeMap<u64, String> {
    cluster["leases"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| Some((l["partition"].as_u64()?, l["owner"].as_str()?.to_owned())))
        .collect()
}

/// Waits until every one of the 64 partitions is held, by exactly the nodes `ids` (each holding some); returns
/// how long that took.
fn wait_held_by(addr: &str, ids: &BTreeSet<String>) -> Duration {
    let started = Instant::now();
    loop {
        let seen = cluster_of(addr);
        let held = holders(&seen);
        let by: BTreeSet<String> = held.values().cloned().collect();
        if held.len() == 64 && by == *ids {
            // Each within 20% of an even share (the balanced assignment, `weft::cluster::balanced`).
            let even = 64.0 / ids.len() as f64;
            for id in ids {
                let share = held.values().filter(|h| *h == id).count() as f64;
                assert!((share - even).abs() <= even * 0.2, "{id} holds {share} of 64: {seen}");
            }
            return started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(60), "partitions not held by {ids:?}: {seen}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends documents' `register` commands over NATS until `stop`, each retried with its command id until it is
/// acknowledged; returns the documents acknowledged and how many sends failed.
fn load(url: String, token: String, stop: Arc<AtomicBool>, acked: Arc<Mutex<Vec<uuid::Uuid>>>) -> usize {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async move {
        let client = weft::nats::connect(&url, "load").await.unwrap();
        let mut failed = 0;
        let mut failures = BTreeMap::new();
        while !stop.load(Ordering::Relaxed) {
            let (document, command_id) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
            let body =
                json!({"command_id": command_id, "type": "register", "payload": crate::serve::register("a.pdf", "t")});
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Content-Type", "application/json");
                headers.insert("Authorization", format!("Bearer {token}").as_str());
                let request = async_nats::Request::new()
                    .headers(headers)
                    .payload(body.to_string().into())
                    .timeout(Some(Duration::from_secs(3)));
                let answer = client.send_request(format!("weft.cmd.document.{document}"), request).await;
                match answer.map(|m| serde_json::from_slice::<Value>(&m.payload).unwrap()) {
                    Ok(reply) if reply["status"] == "ok" => {
                        acked.lock().unwrap().push(document);
                        break;
                    }
                    other => {
                        let kind = match &other {
                            Ok(reply) => format!(
                                "{} {}",
                                reply["error"]["kind"].as_str().unwrap_or("?"),
                                reply["error"]["message"]
                                    .as_str()
                                    .unwrap_or("")
                                    .rsplit(": ")
                                    .next()
                                    .unwrap_or("")
                                    .chars()
                                    .take(90)
                                    .collect::<String>()
                            ),
                            Err(error) => format!("{:?}", error.kind()),
                        };
                        *failures.entry(kind).or_insert(0usize) += 1;
                        failed += 1;
                        assert!(Instant::now() < deadline, "a command is never acknowledged: {other:?}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
        eprintln!("sends answered otherwise, by kind: {failures:?}");
        failed
    })
}

#[test]
fn partitions_move_off_a_killed_node_and_onto_a_joining_one_with_no_command_lost_and_one_writer_each() {
    let mut nats = NatsServer::cluster_with(3, MAPPING).unwrap();
    let url = nats.url();
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let secret = dirs[0].path().join("shared.secret");
    let args = routed(&url, "ROUTED", &secret, &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut nodes: Vec<Option<Serve>> = dirs[..3].iter().map(|d| Some(Serve::start(d.path(), &args))).collect();
    let id = |node: &Serve| cluster_of(&node.addr)["this_node"].as_str().unwrap().to_owned();
    let ids: Vec<String> = nodes.iter().map(|n| id(n.as_ref().unwrap())).collect();
    let a = nodes[0].as_ref().unwrap().addr.clone();
    wait_held_by(&a, &ids.iter().cloned().collect());
    let seen = cluster_of(&a);
    assert_eq!(seen["partition_routing"], true, "{seen}");

    let (stop, acked) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
    let token = crate::serve::token(&a).unwrap();
    let loader = {
        let (url, stop, acked) = (url.clone(), stop.clone(), acked.clone());
        std::thread::spawn(move || load(url, token, stop, acked))
    };
    let settle = |n: usize| {
        let start = acked.lock().unwrap().len();
        let deadline = Instant::now() + Duration::from_secs(60);
        while acked.lock().unwrap().len() < start + n {
            assert!(Instant::now() < deadline, "the load does not go on");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    settle(100);

    // Node B killed: its partitions go to A and C.
    let (status, _) = nodes[1].take().unwrap().signal("-KILL");
    assert!(!status.success());
    let moved = wait_held_by(&a, &[ids[0].clone(), ids[2].clone()].into());
    eprintln!("a killed node's partitions were held again after {moved:?}");
    settle(100);

    // A fourth node joins: it takes its share, handed over by their holders.
    nodes.push(Some(Serve::start(dirs[3].path(), &args)));
    let d = id(nodes[3].as_ref().unwrap());
    let joined = wait_held_by(&a, &[ids[0].clone(), ids[2].clone(), d].into());
    eprintln!("a joining node held its share after {joined:?}");
    settle(100);

    // A NATS server killed: the nodes connected to it reconnect to the others, and the load goes on.
    nats.kill(2);
    settle(100);
    stop.store(true, Ordering::Relaxed);
    let failed = loader.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    eprintln!("{} commands acknowledged, {failed} sends answered otherwise and sent again", acked.len());

    // Every acknowledged command stored, once; and per partition, the fencing tokens never go back.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let client = async_nats::connect(nats.node_url(0)).await.unwrap();
        let js = async_nats::jetstream::new(client);
        // The servers left may still be choosing the stream's leader: asked until they answer.
        let stored = |subject: String| {
            let js = js.clone();
            async move {
                use async_nats::jetstream::stream::LastRawMessageErrorKind as Kind;
                for _ in 0..100 {
                    if let Ok(stream) = js.get_stream("ROUTED").await {
                        match stream.get_last_raw_message_by_subject(&subject).await {
                            Ok(_) => return true,
                            Err(e) if e.kind() == Kind::NoMessageFound => return false,
                            Err(_) => {}
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                panic!("the cluster does not answer for {subject}");
            }
        };
        for document in &acked {
            let p = weft::cluster::partition("document", &document.to_string(), 64);
            let subject = |version| format!("weft.store.{p}.document-{document}.{version}");
            assert!(stored(subject(1)).await, "{document} acknowledged, not stored");
            assert!(!stored(subject(2)).await, "{document} registered twice");
        }
        let stream = js.get_stream("ROUTED").await.unwrap();
        // On two busy cores a JetStream request can time out once; a few tries, bounded.
        let mut tries = 0;
        let consumer = loop {
            match stream.create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default()).await {
                Ok(consumer) => break consumer,
                Err(e) if tries < 5 => {
                    tries += 1;
                    eprintln!("creating the ordered consumer: {e}; trying again");
                }
                Err(e) => panic!("creating the ordered consumer: {e}"),
            }
        };
        let last = stream.get_info().await.unwrap().state.last_sequence;
        let mut messages = consumer.messages().await.unwrap();
        let mut tokens: BTreeMap<u32, u64> = BTreeMap::new();
        let mut fenced = 0;
        while let Some(message) = messages.next().await {
            let message = message.unwrap();
            let sequence = message.info().unwrap().stream_sequence;
            // weft.store.<partition>.<stream>.<version>
            let (filed, name) = message.subject.as_str().strip_prefix("weft.store.").unwrap().split_once('.').unwrap();
            let name = name.rsplit_once('.').unwrap().0;
            let partition = weft::cluster::ownership::partition_of_stream(name, 64);
            assert_eq!(filed, partition.map_or("_".to_owned(), |p| p.to_string()), "{}", message.subject);
            if let Some(partition) = partition {
                let fence = message.headers.as_ref().and_then(|h| h.get("Weft-Fence")).map(|v| v.to_string());
                let fence = fence.unwrap_or_else(|| panic!("{} was appended without a fence", message.subject));
                let (p, token) = fence.split_once(':').unwrap();
                assert_eq!(p.parse::<u32>().unwrap(), partition, "{}", message.subject);
                let token: u64 = token.parse().unwrap();
                let before = tokens.insert(partition, token).unwrap_or(0);
                assert!(
                    token >= before,
                    "partition {partition} written with token {token} after {before}: two writers"
                );
                fenced += 1;
            }
            if sequence >= last {
                break;
            }
        }
        assert!(fenced >= acked.len(), "{fenced} fenced events, {} acknowledged", acked.len());
    });
    for node in nodes.into_iter().flatten() {
        node.stop();
    }
}

/// Sends `body` on `subject` as JSON with the admin token; the reply.
async fn ask(client: &async_nats::Client, token: &str, subject: String, body: &Value) -> Value {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Content-Type", "application/json");
    headers.insert("Authorization", format!("Bearer {token}").as_str());
    let request = async_nats::Request::new().headers(headers).payload(body.to_string().into());
    let reply = client.send_request(subject, request).await.unwrap();
    serde_json::from_slice(&reply.payload).unwrap()
}

#[test]
fn routed_commands_with_a_wrong_partition_or_aggregate_are_refused_and_routing_without_the_mapping_does_not_start() {
    // Without the server's mapping, a node told to route by partition would never see a command: it says so.
    let plain = NatsServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (store, url) = (dir.path().join("events.db"), plain.url());
    let args = ["--store", store.to_str().unwrap(), "--nats", &url, "--jetstream", "--partition-routing"];
    let (mut child, _, line) = crate::serve::spawn(None, &args, &[]);
    assert!(!child.wait().unwrap().success());
    assert!(line.contains("does not map command subjects to partitions"), "{line}");
    // The store it opened was made with 64 partitions: a node of another count is refused before the mapping.
    let args = ["--store", store.to_str().unwrap(), "--nats", &url, "--jetstream", "--partition-routing"];
    let (mut child, _, line) = crate::serve::spawn(None, &[&args[..], &["--partitions", "32"]].concat(), &[]);
    assert!(!child.wait().unwrap().success());
    assert!(line.contains("created with 64 partitions, and --partitions is 32"), "{line}");
    // Nor without JetStream (the options say so).
    let (mut child, _, line) = crate::serve::spawn(None, &["--partition-routing"], &[]);
    assert!(!child.wait().unwrap().success());
    assert!(line.contains("required arguments were not provided"), "{line}");

    let nats = NatsServer::start_with(MAPPING).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = nats.url();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // A leases' bucket left by an earlier setting (10 s) takes the node's time-to-live (3 s) when it starts.
    let ttl = |js: async_nats::jetstream::Context| async move {
        js.get_stream("KV_weft_partitions").await.unwrap().info().await.unwrap().config.max_age
    };
    runtime.block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
        let config = async_nats::jetstream::kv::Config {
            bucket: "weft_partitions".into(),
            max_age: Duration::from_secs(10),
            ..Default::default()
        };
        js.create_key_value(config).await.unwrap();
        assert_eq!(ttl(js).await, Duration::from_secs(10));
    });
    let node = Serve::start(dir.path(), &["--nats", &url, "--jetstream", "--partition-routing"]);
    runtime.block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
        assert_eq!(ttl(js).await, Duration::from_secs(3));
    });
    let token = crate::serve::token(&node.addr).unwrap();
    // An operator sees every partition's holder.
    let (ok, out, err) = crate::serve::weft(&node.addr, &["cluster", "status"]);
    assert!(ok, "{err}");
    assert!(out.contains("commands go to the holder of their partition"), "{out}");
    assert!(out.to_lowercase().contains("renewed_ms_ago") && out.lines().count() > 64, "{out}");
    runtime.block_on(async {
        let client = async_nats::connect(nats.url()).await.unwrap();
        let register = json!({"command_id": uuid::Uuid::now_v7(), "type": "register",
                              "payload": crate::serve::register("a.pdf", "t")});
        let id = uuid::Uuid::now_v7();
        let wrong = (weft::cluster::partition("document", &id.to_string(), 64) + 1) % 64;
        // Published straight to another partition's subject, past the mapping.
        let reply = ask(&client, &token, format!("weft.cmd.document.{id}.{wrong}"), &register).await;
        assert_eq!(reply["error"]["kind"], "invalid", "{reply}");
        assert!(reply["error"]["message"].as_str().unwrap().contains("partition"), "{reply}");
        let reply = ask(&client, &token, format!("weft.cmd.bogus.{id}"), &register).await;
        assert_eq!(reply["error"]["kind"], "invalid", "{reply}");
        assert!(reply["error"]["message"].as_str().unwrap().contains("bogus"), "{reply}");
        let reply = ask(&client, &token, "weft.cmd.document.not-a-uuid".into(), &register).await;
        assert_eq!(reply["error"]["kind"], "invalid", "{reply}");
        // Unauthenticated: refused as ever.
        let mut json = async_nats::HeaderMap::new();
        json.insert("Content-Type", "application/json");
        let request = async_nats::Request::new().headers(json).payload(register.to_string().into());
        let reply = client.send_request(format!("weft.cmd.document.{id}"), request).await.unwrap();
        let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
        assert_eq!(reply["error"]["kind"], "unauthenticated", "{reply}");
        // Nothing of it stored; the node still serves, through the mapping.
        let reply = ask(&client, &token, format!("weft.cmd.document.{id}"), &register).await;
        assert_eq!(reply["status"], "ok", "{reply}");
        assert_eq!(reply["version"], 1, "{reply}");
    });
    node.stop();
}

/// Jobs on three routing nodes: the orchestrator, the worker and the timers run per partition on its holder;
/// the holder of the agent's partition (whose worker does every task) is killed under load, and every job
/// still succeeds, with no step beyond its attempts, each partition's processes resuming from their own
/// checkpoint on the new holder.
#[test]
fn jobs_run_per_partition_and_all_finish_when_the_holder_of_their_agent_is_killed() {
    let nats = NatsServer::cluster_with(3, MAPPING).unwrap();
    let url = nats.url();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let shared = tempfile::tempdir().unwrap();
    let (secret, objects) = (shared.path().join("shared.secret"), shared.path().join("objects"));
    // The nodes share their documents' folder, as nodes on several machines share a bucket, and hand the
    // process managers over within 4 s.
    let objects = objects.to_str().unwrap();
    let args =
        routed(&url, "JOBS", &secret, &["--objects-dir", objects, "--lease-ttl-secs", "4", "--lease-renew-secs", "1"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut nodes: Vec<Option<Serve>> = dirs.iter().map(|d| Some(Serve::start(d.path(), &args))).collect();
    let ids: BTreeSet<String> =
        nodes.iter().map(|n| cluster_of(&n.as_ref().unwrap().addr)["this_node"].as_str().unwrap().to_owned()).collect();
    let a = nodes[0].as_ref().unwrap().addr.clone();
    wait_held_by(&a, &ids);
    // Every published event's stream and version, as a subscriber sees them.
    let published = Arc::new(Mutex::new(Vec::new()));
    let (subscribed, listen) = std::sync::mpsc::channel();
    {
        let (url, published) = (nats.node_url(1), published.clone());
        std::thread::spawn(move || listen_events(&url, &published, &subscribed));
    }
    listen.recv_timeout(Duration::from_secs(10)).expect("subscribed to the events");

    let file = shared.path().join("report.txt");
    std::fs::write(&file, "Weft runs jobs. Each job has steps. Agents do the steps. Nodes share the work.").unwrap();
    let (ok, stdout, stderr) = crate::serve::weft(&a, &["document", "upload", file.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let document = stdout.trim().to_owned();
    let agent = uuid::Uuid::now_v7().to_string();
    let profile = json!({"profile": {"name": "summariser", "role": "r", "goal": "g", "instructions": "i",
        "provider": "builtin", "model": "summarize", "parameters": {}, "concurrency_limit": 4}});
    assert_eq!(crate::serve::command(&a, "agent", &agent, "register", profile).0, 200);
    let submit = |addr: &str| {
        let job = uuid::Uuid::now_v7().to_string();
        let step = |name: &str, from: Value| {
            json!({"name": name, "agent": agent, "instruction": "sum up", "inputs": [from], "timeout_ms": 30000,
                   "retry": {"max_attempts": 3, "base_delay_ms": 10, "max_delay_ms": 100}})
        };
        let steps = [
            step("first", json!({"from": "job_inputs"})),
            step("second", json!({"from": "step", "name": "first"})),
            step("third", json!({"from": "step", "name": "second"})),
        ];
        let submit = json!({"workflow": uuid::Uuid::now_v7().to_string(), "workflow_version": 1,
            "inputs": [document], "priority": 0, "steps": steps});
        let (status, reply) = crate::serve::submit_job(addr, &job, submit);
        assert_eq!(status, 200, "{reply}");
        job
    };

    // The holder of the agent's partition, whose worker does every task of the agent, is killed while jobs
    // run, submitted through another node; more are submitted while its partitions move.
    let owner = holders(&cluster_of(&a))[&u64::from(weft::cluster::partition("agent", &agent, 64))].clone();
    let victim = nodes
        .iter()
        .position(|n| cluster_of(&n.as_ref().unwrap().addr)["this_node"] == owner.as_str())
        .expect("a node holds the agent's partition");
    let survivor = nodes[(victim + 1) % 3].as_ref().unwrap().addr.clone();
    let mut jobs: Vec<String> = (0..20).map(|_| submit(&survivor)).collect();
    let (status, _) = nodes[victim].take().unwrap().signal("-KILL");
    assert!(!status.success());
    let (_, running) = crate::serve::get(&survivor, "/jobs?status=running");
    eprintln!("killed with {} of 20 jobs running", running["items"].as_array().map_or(0, Vec::len));
    jobs.extend((0..10).map(|_| submit(&survivor)));

    // Every job ends, succeeded, and no step ran beyond its attempts.
    for job in &jobs {
        let state = crate::agents::wait_job(&survivor, job, |s| s["status"] != "running");
        assert_eq!(state["status"], "succeeded", "{state}");
        for step in state["steps"].as_array().unwrap() {
            assert!(step["attempts"].as_u64().unwrap() <= 3, "{state}");
        }
    }
    // The orchestrator ran per partition, each on its partition's holder, with a checkpoint of its own; none
    // read the whole log.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (whole, per_partition) = runtime.block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(nats.node_url(0)).await.unwrap());
        let kv = js.get_key_value("weft_checkpoints").await.unwrap();
        let wanted: BTreeSet<String> =
            jobs.iter().map(|j| format!("process-orchestrator-{}", weft::cluster::partition("job", j, 64))).collect();
        for _ in 0..100 {
            let keys: BTreeSet<String> = kv.keys().await.unwrap().map(|k| k.unwrap()).collect().await;
            if wanted.is_subset(&keys) {
                return (keys.contains("process-orchestrator"), wanted.len());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no checkpoint of their own for the jobs' partitions' orchestrators");
    });
    assert!(!whole, "an orchestrator read the whole log");
    assert!(per_partition > 3, "the jobs fell in {per_partition} partitions");

    // Every event of every job went out, through the publisher of its partition, and every node that holds
    // partitions publishes theirs: no one node carries them.
    let mut missing = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen: BTreeSet<(String, u64)> = published.lock().unwrap().iter().cloned().collect();
        missing.clear();
        for job in &jobs {
            let (status, history) = crate::serve::get(&survivor, &format!("/streams/job-{job}/events?limit=1000"));
            assert_eq!(status, 200, "{history}");
            let events = history["items"].as_array().unwrap().iter();
            let stored = events.map(|e| (format!("job-{job}"), e["version"].as_u64().unwrap()));
            missing.extend(stored.filter(|event| !seen.contains(event)));
        }
        if missing.is_empty() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let first: Vec<_> = missing.iter().take(5).collect();
    assert!(missing.is_empty(), "{} of the jobs' events were never published, such as {first:?}", missing.len());
    let total = published.lock().unwrap().len();
    let distinct = published.lock().unwrap().iter().collect::<BTreeSet<_>>().len();
    eprintln!("{total} events published, {distinct} of them distinct (again after the kill: {})", total - distinct);
    let publishing: Vec<usize> = nodes
        .iter()
        .flatten()
        .map(|node| {
            let (_, ready) = crate::serve::get(&node.addr, "/readyz");
            let tasks = ready["tasks"].as_object().cloned().unwrap_or_default();
            tasks.keys().filter(|name| name.starts_with("publisher/")).count()
        })
        .collect();
    assert!(publishing.iter().all(|n| *n > 0), "publishers of partitions per live node: {publishing:?}");
    // Each job's partition's publisher saves its checkpoint within a second of its last event.
    let wanted: BTreeSet<String> =
        jobs.iter().map(|j| format!("process-publisher-{}", weft::cluster::partition("job", j, 64))).collect();
    let keys = runtime.block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(nats.node_url(0)).await.unwrap());
        let kv = js.get_key_value("weft_checkpoints").await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let keys: BTreeSet<String> = kv.keys().await.unwrap().map(|k| k.unwrap()).collect().await;
            if wanted.is_subset(&keys) || Instant::now() > deadline {
                return keys;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    assert!(!keys.contains("process-publisher"), "a publisher read the whole log: {keys:?}");
    assert!(wanted.is_subset(&keys), "no checkpoint of their own for the jobs' partitions' publishers: {keys:?}");
    for node in nodes.into_iter().flatten() {
        node.stop();
    }
}

/// Subscribes to every published event on the server at `url`, says so on `subscribed`, and records each
/// one's stream and version in `published` for as long as the test runs.
fn listen_events(url: &str, published: &Mutex<Vec<(String, u64)>>, subscribed: &std::sync::mpsc::Sender<()>) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let client = async_nats::connect(url).await.unwrap();
        let mut events = client.subscribe("weft.evt.>").await.unwrap();
        client.flush().await.unwrap();
        subscribed.send(()).unwrap();
        while let Some(event) = events.next().await {
            let wire: weft::protocol::WireEvent =
                weft::protocol::decode(&event.payload, false).expect("a published event");
            published.lock().unwrap().push((wire.stream, wire.version));
        }
    });
}
