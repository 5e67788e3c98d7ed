//! The JetStream store: the contract suite on one server and on a three-node cluster with three replicas,
//! start-up checks, and what a misconfigured stream gets.

use futures::StreamExt;
use weft::nats;
use weft::store::jetstream::{JetStreamConfig, JetStreamStore, OpenError};
use weft_harness::NatsServer;

/// Opens the store; while a freshly formed cluster is still electing its JetStream leaders, its requests time
/// out, so an unavailable server is tried again for up to a minute (a misconfiguration is not).
async fn open(server: &NatsServer, config: JetStreamConfig) -> Result<JetStreamStore, OpenError> {
    let client = nats::connect(&server.url(), "store-test").await.expect("connect");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        match JetStreamStore::open(client.clone(), config.clone()).await {
            Err(OpenError::Unavailable(_)) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            result => return result,
        }
    }
}

mod single {
    use super::*;

    weft_events::store_contract_tests!(|| async {
        let server = NatsServer::start().expect("nats-server");
        let store = open(&server, JetStreamConfig::default()).await.expect("open");
        (store, server)
    });
}

mod cluster {
    use super::*;

    weft_events::store_contract_tests!(|| async {
        let server = NatsServer::cluster(3).expect("nats-server cluster");
        let store = open(&server, JetStreamConfig { replicas: 3, ..JetStreamConfig::default() }).await.expect("open");
        (store, server)
    });
}

#[tokio::test]
async fn a_misconfigured_stream_is_refused_with_every_problem_named() {
    use async_nats::jetstream::stream::{Config, StorageType};
    let server = NatsServer::start().expect("nats-server");
    let client = nats::connect(&server.url(), "store-test").await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    js.create_stream(Config {
        name: "WEFT_EVENTS".into(),
        subjects: vec!["other.>".into()],
        storage: StorageType::Memory,
        max_age: std::time::Duration::from_secs(3600),
        ..Default::default()
    })
    .await
    .unwrap();
    let err = JetStreamStore::open(client, JetStreamConfig::default()).await.err().expect("opened");
    let OpenError::Misconfigured { stream, problems } = &err else { panic!("{err}") };
    assert_eq!(stream, "WEFT_EVENTS");
    let text = problems.join("\n");
    for needle in ["weft.store.>", "storage must be file", "events would be deleted", "atomic", "direct"] {
        assert!(text.contains(needle), "{needle:?} missing from: {err}");
    }
}

#[tokio::test]
async fn a_reopened_store_finds_its_events_and_bad_names_are_refused() {
    use weft_events::{EventRead, EventWrite, ExpectedVersion, NewEvent, StreamName};
    let server = NatsServer::start().expect("nats-server");
    let s = StreamName::new("job-1").unwrap();
    {
        let store = open(&server, JetStreamConfig::default()).await.unwrap();
        store.append(&s, ExpectedVersion::NoStream, vec![NewEvent::new("job.submitted", vec![1])]).await.unwrap();
    }
    let store = open(&server, JetStreamConfig::default()).await.unwrap();
    assert_eq!(store.head().await.unwrap(), 1);
    assert_eq!(store.stream_version(&s).await.unwrap(), 1);
    let err = store.append(&s, ExpectedVersion::NoStream, vec![NewEvent::new("job.submitted", vec![2])]).await;
    assert!(matches!(err, Err(weft_events::Error::Conflict { actual: 1, .. })), "{err:?}");

    for config in [
        JetStreamConfig { stream: "WEFT.EVENTS".into(), ..JetStreamConfig::default() },
        JetStreamConfig { subject_prefix: "weft.*".into(), ..JetStreamConfig::default() },
        JetStreamConfig { replicas: 0, ..JetStreamConfig::default() },
        JetStreamConfig { partitions: 0, ..JetStreamConfig::default() },
        JetStreamConfig { partitions: 1025, ..JetStreamConfig::default() },
    ] {
        let err = open(&server, config).await.err().expect("opened");
        assert!(matches!(err, OpenError::InvalidConfig(_)), "{err}");
    }
}

/// Appends go on while the stream's leader is killed: every append is acknowledged exactly once in the
/// end (retried with the same events while the cluster elects a new leader), and the stream reads back
/// dense, in order, with nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_continue_when_the_streams_leader_is_killed() {
    use weft_events::{Direction, Error, EventRead, EventWrite, ExpectedVersion, NewEvent, StreamName};
    const APPENDS: u64 = 200;
    const KILL_AT: u64 = 60;
    let mut server = NatsServer::cluster(3).expect("nats-server cluster");
    let store = open(&server, JetStreamConfig { replicas: 3, ..JetStreamConfig::default() }).await.unwrap();
    let client = nats::connect(&server.url(), "store-test-admin").await.unwrap();
    let s = StreamName::new("job-leader").unwrap();
    let mut sent = Vec::new();
    let mut retried = 0;
    for version in 1..=APPENDS {
        if version == KILL_AT {
            let info = client.request("$JS.API.STREAM.INFO.WEFT_EVENTS", "".into()).await.unwrap();
            let info: serde_json::Value = serde_json::from_slice(&info.payload).unwrap();
            let leader = info["cluster"]["leader"].as_str().expect("a leader").to_owned();
            let node: usize = leader.trim_start_matches('n').parse().unwrap();
            server.kill(node);
        }
        let event = NewEvent::new("job.step_completed", version.to_be_bytes().to_vec());
        sent.push(event.event_id);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            match store.append(&s, ExpectedVersion::Exact(version - 1), vec![event.clone()]).await {
                Ok(appended) => {
                    assert_eq!(appended.version, version);
                    break;
                }
                // An earlier try landed though its acknowledgement was lost: it must be this very event.
                Err(Error::Conflict { actual, .. }) if actual == version => {
                    let back = store.read_stream(&s, version, Direction::Forwards, 1).await.unwrap();
                    assert_eq!(back[0].event_id, event.event_id, "another event took version {version}");
                    break;
                }
                Err(e) if e.is_retryable() && std::time::Instant::now() < deadline => {
                    retried += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => panic!("append {version} failed for good: {e}"),
            }
        }
    }
    let back = store.read_stream(&s, 1, Direction::Forwards, 1000).await.unwrap();
    assert_eq!(back.iter().map(|e| e.version).collect::<Vec<_>>(), (1..=APPENDS).collect::<Vec<_>>());
    assert_eq!(back.iter().map(|e| e.event_id).collect::<Vec<_>>(), sent);
    assert_eq!(store.head().await.unwrap(), APPENDS);
    eprintln!("{retried} append attempts were retried while the cluster elected a new leader");
}

/// `weft serve --nats URL --jetstream` as a real process: commands over NATS land in JetStream, and every
/// command acknowledged before a `kill -9` of the Weft process and then of the NATS server is in the store
/// afterwards, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_jetstream_keeps_every_acknowledged_command_through_kill_9_of_weft_and_nats() {
    use weft_events::{EventRead, StreamName};
    const COMMANDS: usize = 40;
    let mut server = NatsServer::start().expect("nats-server");
    let folder = tempfile::tempdir().unwrap();
    let args = ["--nats", &server.url(), "--jetstream", "--no-processes"];
    let (mut weft, _, line) = crate::serve::spawn(Some(folder.path()), &args, &[]);
    assert!(line.contains("store JetStream stream WEFT_EVENTS"), "{line}");

    let client = nats::connect(&server.url(), "client").await.unwrap();
    let token = crate::support::admin_token(&folder.path().join("weft-data"));
    let mut acknowledged = Vec::new();
    for _ in 0..COMMANDS {
        let id = uuid::Uuid::now_v7();
        let body = serde_json::json!({"command_id": uuid::Uuid::now_v7().to_string(), "type": "register",
            "payload": {"name": "a.txt", "content_type": "text/plain", "declared_size_bytes": 10,
                        "tenant": "t", "owner": "o"}});
        let request = async_nats::Request::new()
            .headers(crate::support::json_headers(&token))
            .payload(body.to_string().into())
            .timeout(Some(std::time::Duration::from_secs(10)));
        let reply = client.send_request(format!("weft.cmd.document.{id}"), request).await.unwrap();
        let reply: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
        assert_eq!(reply["status"], "ok", "{reply}");
        acknowledged.push(id);
    }
    weft.kill().unwrap();
    weft.wait().unwrap();
    server.restart(0).unwrap();

    let store = open(&server, JetStreamConfig::default()).await.unwrap();
    for id in &acknowledged {
        let stream = StreamName::new(format!("document-{id}")).unwrap();
        assert_eq!(store.stream_version(&stream).await.unwrap(), 1, "{stream} lost or doubled");
    }
    assert_eq!(store.head().await.unwrap(), COMMANDS as u64 + weft::agents::catalog::EVENTS);
}

/// Two `weft serve --jetstream` processes share the command load; one is killed with `kill -9` mid-load.
/// Every command is acknowledged in the end (a command lost with the killed node is retried with its
/// `command_id` and answered by the other), and no document got its `register` appended twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_s_commands_are_answered_by_the_other_on_retry() {
    use weft_events::{EventRead, StreamName};
    const SENDERS: usize = 8;
    const PER_SENDER: usize = 40;
    let server = NatsServer::start().expect("nats-server");
    let (mut nodes, mut folders) = (Vec::new(), Vec::new());
    // The nodes share their auth secret, as nodes on one bus must.
    let shared = tempfile::tempdir().unwrap();
    let secret = shared.path().join("auth.secret");
    for _ in 0..2 {
        // Each node's read models in a folder of its own.
        folders.push(tempfile::tempdir().unwrap());
        let args =
            ["--nats", &server.url(), "--jetstream", "--no-processes", "--auth-secret-file", secret.to_str().unwrap()];
        let (node, _, line) = crate::serve::spawn(Some(folders.last().unwrap().path()), &args, &[]);
        assert!(line.contains("JetStream"), "{line}");
        nodes.push(node);
    }
    let client = nats::connect(&server.url(), "client").await.unwrap();
    let token = std::sync::Arc::new(crate::support::admin_token(shared.path()));
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut senders = Vec::new();
    for _ in 0..SENDERS {
        let (client, sent, token) = (client.clone(), sent.clone(), token.clone());
        senders.push(tokio::spawn(async move {
            let (mut documents, mut retries) = (Vec::new(), 0);
            for _ in 0..PER_SENDER {
                let (id, command_id) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
                let body = serde_json::json!({"command_id": command_id.to_string(), "type": "register",
                    "payload": {"name": "a.txt", "content_type": "text/plain", "declared_size_bytes": 10,
                                "tenant": "t", "owner": "o"}});
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
                loop {
                    let request = async_nats::Request::new()
                        .headers(crate::support::json_headers(&token))
                        .payload(body.to_string().into())
                        .timeout(Some(std::time::Duration::from_secs(2)));
                    let reply = client.send_request(format!("weft.cmd.document.{id}"), request).await;
                    let status = reply.as_ref().ok().and_then(|r| {
                        serde_json::from_slice::<serde_json::Value>(&r.payload).ok().map(|v| v["status"].clone())
                    });
                    if status.as_ref().is_some_and(|s| s == "ok") {
                        break;
                    }
                    assert!(std::time::Instant::now() < deadline, "command for {id} never acknowledged: {status:?}");
                    retries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                documents.push(id);
                sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            (documents, retries)
        }));
    }
    while sent.load(std::sync::atomic::Ordering::Relaxed) < SENDERS * PER_SENDER / 3 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    nodes[0].kill().unwrap();
    nodes[0].wait().unwrap();
    let (mut documents, mut retries) = (Vec::new(), 0);
    for sender in senders {
        let (mine, r) = sender.await.unwrap();
        documents.extend(mine);
        retries += r;
    }
    let store = open(&server, JetStreamConfig::default()).await.unwrap();
    for id in &documents {
        let stream = StreamName::new(format!("document-{id}")).unwrap();
        assert_eq!(store.stream_version(&stream).await.unwrap(), 1, "{stream} lost or appended twice");
    }
    assert_eq!(store.head().await.unwrap(), (SENDERS * PER_SENDER) as u64 + weft::agents::catalog::EVENTS);
    eprintln!("{retries} commands were retried after node A was killed");
    nodes[1].kill().unwrap();
}

/// Who holds the process managers' lease, read from the leader of its bucket (asked again while a loaded
/// server is slow to answer).
async fn lease_holder(client: &async_nats::Client) -> String {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let request = async_nats::Request::new()
            .payload(r#"{"last_by_subj":"$KV.weft_leases.processes"}"#.into())
            .timeout(Some(std::time::Duration::from_secs(5)));
        if let Ok(reply) = client.send_request("$JS.API.STREAM.MSG.GET.KV_weft_leases", request).await {
            let reply: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
            if let Some(data) = reply["message"]["data"].as_str() {
                use base64::Engine as _;
                let holder = base64::engine::general_purpose::STANDARD.decode(data).unwrap();
                return String::from_utf8(holder).unwrap();
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "nobody holds the lease");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Two nodes on one JetStream store run the publisher (and process managers) one at a time, under a
/// lease: every event goes out once while the leader lives; after `kill -9` of the leader the other node
/// takes the lease and publishes what comes next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_managers_run_on_one_node_and_move_when_it_is_killed() {
    use std::collections::HashMap;
    use std::time::Duration;
    let server = NatsServer::start().expect("nats-server");
    let (mut nodes, mut folders) = (Vec::new(), Vec::new());
    // The nodes share their auth secret, as nodes on one bus must.
    let shared = tempfile::tempdir().unwrap();
    let secret = shared.path().join("auth.secret");
    for _ in 0..2 {
        folders.push(tempfile::tempdir().unwrap());
        let args = ["--nats", &server.url(), "--jetstream", "--auth-secret-file", secret.to_str().unwrap()];
        let (node, _, line) = crate::serve::spawn(Some(folders.last().unwrap().path()), &args, &[]);
        assert!(line.contains("JetStream"), "{line}");
        nodes.push(node);
    }
    let client = nats::connect(&server.url(), "client").await.unwrap();
    let mut events = client.subscribe("weft.evt.>").await.unwrap();
    client.flush().await.unwrap();
    let token = crate::support::admin_token(shared.path());
    let token = token.as_str();
    let register = |client: async_nats::Client| async move {
        let id = uuid::Uuid::now_v7();
        let body = serde_json::json!({"command_id": uuid::Uuid::now_v7().to_string(), "type": "register",
            "payload": {"name": "a.txt", "content_type": "text/plain", "declared_size_bytes": 10,
                        "tenant": "t", "owner": "o"}});
        // Sent again with the same command id while a loaded machine is slow to answer.
        for _ in 0..6 {
            let request = async_nats::Request::new()
                .headers(crate::support::json_headers(token))
                .payload(body.to_string().into())
                .timeout(Some(Duration::from_secs(10)));
            if let Ok(reply) = client.send_request(format!("weft.cmd.document.{id}"), request).await {
                let reply: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
                assert_eq!(reply["status"], "ok", "{reply}");
                return id;
            }
        }
        panic!("register {id} was never answered");
    };
    // Counts published events per document until each of `ids` has one, or the time is up.
    async fn published(
        events: &mut async_nats::Subscriber,
        ids: &[uuid::Uuid],
        wait: Duration,
    ) -> HashMap<String, usize> {
        let mut seen: HashMap<String, usize> = HashMap::new();
        let deadline = tokio::time::Instant::now() + wait;
        while ids.iter().any(|id| !seen.contains_key(&id.to_string())) {
            let Ok(Some(message)) = tokio::time::timeout_at(deadline, events.next()).await else { break };
            // weft.evt.<tenant>.document.<id>.<name>
            let document = message.subject.split('.').nth(4).unwrap_or_default().to_owned();
            *seen.entry(document).or_default() += 1;
        }
        seen
    }

    let mut first = Vec::new();
    for _ in 0..10 {
        first.push(register(client.clone()).await);
    }
    let seen = published(&mut events, &first, Duration::from_secs(30)).await;
    for id in &first {
        assert!(seen.contains_key(&id.to_string()), "the event of {id} was not published: {seen:?}");
    }
    // One publisher: nothing came twice.
    tokio::time::sleep(Duration::from_millis(300)).await;
    if let Ok(Some(message)) = tokio::time::timeout(Duration::from_millis(100), events.next()).await {
        panic!("a second copy of {} was published while the leader lived", message.subject);
    }

    let holder = lease_holder(&client).await;
    let leader = nodes.iter().position(|n| holder.ends_with(&format!("-{}", n.id()))).expect("a node holds the lease");
    nodes[leader].kill().unwrap();
    nodes[leader].wait().unwrap();

    let mut second = Vec::new();
    for _ in 0..10 {
        second.push(register(client.clone()).await);
    }
    // The lease expires 10 s after the last renewal; the survivor takes it and publishes.
    let seen = published(&mut events, &second, Duration::from_secs(60)).await;
    for id in &second {
        assert!(seen.contains_key(&id.to_string()), "after the leader died, {id} was not published: {seen:?}");
    }
    let survivor = 1 - leader;
    assert!(lease_holder(&client).await.ends_with(&format!("-{}", nodes[survivor].id())));
    nodes[survivor].kill().unwrap();
}

/// The stream takes whatever is published on its subjects: a message that did not come from the store (bad
/// body, or a subject without a version) is refused as corrupt by every read that meets it, naming its
/// sequence, and the events around it still read.
#[tokio::test]
async fn a_foreign_message_in_the_stream_reads_as_corrupt() {
    use weft_events::{Direction, Error, EventRead, EventWrite, ExpectedVersion, NewEvent, StreamName};
    let server = NatsServer::start().expect("nats-server");
    let store = open(&server, JetStreamConfig::default()).await.unwrap();
    let good = StreamName::new("job-good").unwrap();
    store.append(&good, ExpectedVersion::NoStream, vec![NewEvent::new("job.submitted", vec![1])]).await.unwrap();
    let client = nats::connect(&server.url(), "intruder").await.unwrap();
    let js = async_nats::jetstream::new(client);
    let bad = weft_events::partition::of("job", "bad", weft::cluster::DEFAULT_PARTITIONS);
    js.publish(format!("weft.store.{bad}.job-bad.1"), "garbage".into()).await.unwrap().await.unwrap();
    js.publish("weft.store.no-version", "garbage".into()).await.unwrap().await.unwrap();

    for err in [
        store.read_all(1, 10).await.unwrap_err(),
        store.read_stream(&StreamName::new("job-bad").unwrap(), 1, Direction::Forwards, 10).await.unwrap_err(),
    ] {
        assert!(matches!(&err, Error::Corrupt { detail, .. } if detail.contains("message 2")), "{err}");
    }
    let err = store.read_all(3, 10).await.unwrap_err();
    assert!(
        matches!(&err, Error::Corrupt { detail, .. } if detail.contains("not <prefix>.<partition>.<stream>.<version>")),
        "{err}"
    );
    assert_eq!(store.read_all(1, 1).await.unwrap().len(), 1);
    assert_eq!(store.read_stream(&good, 1, Direction::Forwards, 10).await.unwrap().len(), 1);
}

/// A new store files each event under its stream's partition (`<prefix>.<partition>.<stream>.<version>`, the
/// count in the stream's metadata) and a reader of one partition gets its events only; a stream made before
/// partitions (no metadata) keeps its subjects and still reads, appends and follows a partition; metadata
/// that is not a count is refused.
#[tokio::test]
async fn events_are_filed_by_partition_and_a_stream_of_the_first_layout_still_works() {
    use async_nats::jetstream::stream::{Config, StorageType};
    use weft_events::{EventRead, EventWrite, ExpectedVersion, NewEvent, Partition, StreamName};
    let server = NatsServer::start().expect("nats-server");
    let client = nats::connect(&server.url(), "store-test").await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let job = StreamName::new("job-0192aa00-0000-7000-8000-000000000001").unwrap();
    let user = StreamName::new("user-alice").unwrap();
    let index = weft_events::partition::of("job", "0192aa00-0000-7000-8000-000000000001", 8);
    let partition = Partition { index, count: 8 };
    let event = || vec![NewEvent::new("job.submitted", vec![1])];

    let store = open(&server, JetStreamConfig { partitions: 8, ..JetStreamConfig::default() }).await.unwrap();
    assert_eq!(store.partitions(), Some(8));
    store.append(&job, ExpectedVersion::NoStream, event()).await.unwrap();
    store.append(&user, ExpectedVersion::NoStream, event()).await.unwrap();
    let info = js.get_stream("WEFT_EVENTS").await.unwrap().cached_info().clone();
    assert_eq!(info.config.metadata.get("weft_partitions").map(String::as_str), Some("8"));
    let subjects = |stream: &'static str| {
        let js = js.clone();
        async move {
            let stream = js.get_stream(stream).await.unwrap();
            stream.info_with_subjects(">").await.unwrap().map(|s| s.unwrap().0).collect::<Vec<_>>().await
        }
    };
    let mut stored = subjects("WEFT_EVENTS").await;
    stored.sort();
    let mut expected = vec![format!("weft.store.{index}.{job}.1"), format!("weft.store._.{user}.1")];
    expected.sort();
    assert_eq!(stored, expected);
    let mut follower = store.subscribe_partition(partition, 1);
    assert_eq!(follower.next().await.unwrap().stream, job);
    // Reopened with another count, it keeps the count it was made with.
    let reopened = open(&server, JetStreamConfig { partitions: 64, ..JetStreamConfig::default() }).await.unwrap();
    assert_eq!(reopened.partitions(), Some(8));
    assert_eq!(reopened.read_partition(partition, 1, 10).await.unwrap().0.len(), 1);
    drop((store, reopened));

    let legacy = |name: &str, metadata: Option<&str>| Config {
        name: name.into(),
        subjects: vec![format!("{}.>", name.to_lowercase())],
        storage: StorageType::File,
        allow_direct: true,
        allow_atomic_publish: true,
        deny_delete: true,
        deny_purge: true,
        metadata: metadata.map(|m| [("weft_partitions".to_owned(), m.to_owned())].into()).unwrap_or_default(),
        ..Default::default()
    };
    js.create_stream(legacy("OLD", None)).await.unwrap();
    let config = |name: &str| JetStreamConfig {
        stream: name.into(),
        subject_prefix: name.to_lowercase(),
        ..JetStreamConfig::default()
    };
    let old = open(&server, config("OLD")).await.unwrap();
    assert_eq!(old.partitions(), None);
    old.append(&job, ExpectedVersion::NoStream, event()).await.unwrap();
    old.append(&user, ExpectedVersion::NoStream, event()).await.unwrap();
    old.append(&job, ExpectedVersion::Exact(1), event()).await.unwrap();
    assert_eq!(old.stream_version(&job).await.unwrap(), 2);
    let mut stored = subjects("OLD").await;
    stored.sort();
    assert_eq!(stored, vec![format!("old.{job}.1"), format!("old.{job}.2"), format!("old.{user}.1")]);
    let mut follower = old.subscribe_partition(partition, 1);
    let positions = [follower.next().await.unwrap().position, follower.next().await.unwrap().position];
    assert_eq!(positions, [1, 3]);

    js.create_stream(legacy("ODD", Some("many"))).await.unwrap();
    let err = open(&server, config("ODD")).await.err().expect("opened");
    assert!(
        matches!(&err, OpenError::Misconfigured { problems, .. } if problems[0].contains("weft_partitions")),
        "{err}"
    );
}
