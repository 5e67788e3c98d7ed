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
