//! The test harness's `nats-server`: starts on free loopback ports with durable JetStream, restarts on the
//! same store, forms a three-node cluster, and is gone when dropped.

use weft_harness::NatsServer;

async fn stream_messages(url: &str) -> u64 {
    let client = weft::nats::connect(url, "test").await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("S").await.unwrap();
    stream.info().await.unwrap().state.messages
}

#[tokio::test]
async fn a_server_keeps_acknowledged_messages_across_a_kill_and_restart() {
    let mut server = NatsServer::start().unwrap();
    let client = weft::nats::connect(&server.url(), "test").await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "S".into(),
        subjects: vec!["s.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    for i in 0..10 {
        js.publish("s.x", format!("{i}").into()).await.unwrap().await.unwrap();
    }
    server.restart(0).unwrap();
    assert_eq!(stream_messages(&server.url()).await, 10);
    let port = server.node_url(0);
    drop(server);
    assert!(weft::nats::connect(&port, "test").await.is_err(), "the server outlived its handle");
}

#[tokio::test]
async fn three_nodes_form_a_cluster_that_survives_losing_one() {
    let mut cluster = NatsServer::cluster(3).unwrap();
    let client = weft::nats::connect(&cluster.url(), "test").await.unwrap();
    let js = async_nats::jetstream::new(client);
    // The meta leader places a replicated stream only on peers it has heard from: right after the cluster
    // forms, on a loaded machine, it can still call one offline ("no suitable peers for placement").
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let config = async_nats::jetstream::stream::Config {
        name: "S".into(),
        subjects: vec!["s.>".into()],
        num_replicas: 3,
        ..Default::default()
    };
    while let Err(e) = js.create_stream(config.clone()).await {
        assert!(std::time::Instant::now() < deadline, "no replicated stream placed in a minute: {e}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // A new replicated stream takes a moment to elect its leader (under load the first publish can meet "no
    // stream"), so the first publish is retried like the one after the kill.
    publish_until_acked(&js, "one").await;
    cluster.kill(1);
    // The client may have been on the killed node, or the stream's leader may have been there: publishing
    // works again once the client has reconnected and the cluster has elected a new leader.
    publish_until_acked(&js, "two").await;
    assert_eq!(stream_messages(&cluster.node_url(0)).await, 2);
}

/// Publishes `body` to `s.x` until it is acknowledged, within a minute; its message id makes the retries one
/// message.
async fn publish_until_acked(js: &async_nats::jetstream::Context, body: &'static str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", body);
        let acked = match js.publish_with_headers("s.x", headers, body.into()).await {
            Ok(ack) => ack.await.is_ok(),
            Err(_) => false,
        };
        if acked {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "no publish of {body:?} went through in a minute");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
