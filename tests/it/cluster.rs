//! The partition arithmetic of `weft::cluster` against a real nats-server: its subject mapping's
//! `partition(64, 1, 2)` puts each command subject in the partition `weft::cluster::partition` computes, so a
//! node subscribing to its partitions' mapped subjects gets exactly the commands of the instances it owns.

use futures::StreamExt;
use weft_harness::NatsServer;

#[tokio::test]
async fn nats_server_maps_each_command_subject_to_the_partition_weft_computes() {
    let mapping = r#"mappings = { "weft.cmd.*.*": "weft.cmd.{{wildcard(1)}}.{{wildcard(2)}}.{{partition(64,1,2)}}" }"#;
    let nats = NatsServer::start_with(mapping).unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut mapped = client.subscribe("weft.cmd.>").await.unwrap();
    client.flush().await.unwrap();
    let mut sent = Vec::new();
    for n in 0..300 {
        let aggregate = ["job", "document", "agent", "workflow", "schedule", "trigger"][n % 6];
        // Time-ordered ids as the node makes them, and random ones.
        let id =
            if n % 2 == 0 { uuid::Uuid::now_v7() } else { uuid::Uuid::from_u128(rand::random::<u128>()) }.to_string();
        client.publish(format!("weft.cmd.{aggregate}.{id}"), "{}".into()).await.unwrap();
        sent.push((aggregate, id));
    }
    client.flush().await.unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for (aggregate, id) in &sent {
        let message = tokio::time::timeout(std::time::Duration::from_secs(10), mapped.next()).await.unwrap().unwrap();
        let subject = message.subject.as_str();
        let expected = weft::cluster::partition(aggregate, id, 64);
        assert_eq!(subject, format!("weft.cmd.{aggregate}.{id}.{expected}"), "the server and Weft disagree");
        seen.insert(expected);
    }
    assert!(seen.len() > 48, "300 subjects fall in most of the 64 partitions: {}", seen.len());
}

/// `GET /cluster` of the node at `addr` (as its admin).
fn cluster_of(addr: &str) -> serde_json::Value {
    let (status, answer) = crate::serve::get(addr, "/cluster");
    assert_eq!(status, 200, "{answer}");
    answer
}

/// The node ids `GET /cluster` lists, and how many partitions each has.
fn shares(cluster: &serde_json::Value) -> Vec<(String, usize)> {
    cluster["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap().to_owned(), n["partitions"].as_array().unwrap().len()))
        .collect()
}

#[test]
fn nodes_sharing_jetstream_see_each_other_and_a_killed_one_leaves_within_the_ttl() {
    let nats = NatsServer::start().unwrap();
    let url = nats.url();
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let secret = a_dir.path().join("shared.secret");
    let args = [
        "--nats",
        &url,
        "--jetstream",
        "--jetstream-stream",
        "CLUSTER",
        "--auth-secret-file",
        secret.to_str().unwrap(),
    ];
    let a = crate::serve::Serve::start(a_dir.path(), &args);
    let b = crate::serve::Serve::start(b_dir.path(), &args);
    // Both listed by both, with the 64 partitions split between them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let both = loop {
        let seen = cluster_of(&a.addr);
        if shares(&seen).len() == 2 {
            break seen;
        }
        assert!(std::time::Instant::now() < deadline, "{seen}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(both["partitions"], 64);
    assert_eq!(both["partition_routing"], false, "the assignment is not acted on yet");
    let split = shares(&both);
    assert_eq!(split.iter().map(|(_, n)| n).sum::<usize>(), 64, "{both}");
    assert!(split.iter().all(|(_, n)| *n > 0), "{both}");
    assert_eq!(shares(&cluster_of(&b.addr)), split, "both nodes compute the same assignment");
    let b_id = cluster_of(&b.addr)["this_node"].as_str().unwrap().to_owned();
    let http = both["nodes"].as_array().unwrap().iter().find(|n| n["id"] == b_id.as_str()).unwrap()["http"].clone();
    assert_eq!(http, serde_json::json!(b.addr), "a node says where it serves");

    // The dashboard's overview lists both nodes.
    let overview = crate::serve::http(&a.addr, "GET", "/ui", &[], b"");
    assert_eq!(overview.status, 200);
    for (id, _) in &split {
        assert!(overview.body.contains(id.as_str()), "{id} is not on the overview");
    }

    // Killed, B stops beating: its entry ages out (5 s) and A owns every partition.
    let mut b = b;
    b.child.kill().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let seen = cluster_of(&a.addr);
        if shares(&seen).len() == 1 {
            assert_eq!(shares(&seen)[0].1, 64, "{seen}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the killed node is still listed: {seen}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // A node stopped cleanly leaves at once; a node on its own store is alone with every partition.
    a.stop();
    let dir = tempfile::tempdir().unwrap();
    let alone = crate::serve::Serve::start(dir.path(), &[]);
    let seen = cluster_of(&alone.addr);
    assert_eq!(shares(&seen).len(), 1, "{seen}");
    assert_eq!(shares(&seen)[0].1, 64);
    alone.stop();
}
