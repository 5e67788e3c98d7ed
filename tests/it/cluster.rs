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
        let id = if n % 2 == 0 { uuid::Uuid::now_v7() } else { uuid::Uuid::from_u128(rand::random::<u128>()) }.to_string();
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
