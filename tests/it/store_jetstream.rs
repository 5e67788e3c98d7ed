//! The JetStream store: the contract suite on one server and on a three-node cluster with three replicas,
//! start-up checks, and what a misconfigured stream gets.

use weft::nats::{self, NatsServer};
use weft::store::jetstream::{JetStreamConfig, JetStreamStore, OpenError};

async fn open(server: &NatsServer, config: JetStreamConfig) -> Result<JetStreamStore, OpenError> {
    let client = nats::connect(&server.url(), "store-test").await.expect("connect");
    JetStreamStore::open(client, config).await
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
    ] {
        let err = open(&server, config).await.err().expect("opened");
        assert!(matches!(err, OpenError::InvalidConfig(_)), "{err}");
    }
}
