//! The store contract suite, and what only a shared store must add to it, against the KurrentDB server that
//! `WEFT_TEST_KURRENTDB` names (a connection string such as `esdb://localhost:2113?tls=false`).
//!
//! Without it (no KurrentDB runs on the machine that builds Weft's CI) every case here is reported as
//! ignored, never as passed. Each case works in a namespace of its own, so the database need not be empty
//! and the cases may run at once.

use weft_events::{EventRead, EventWrite, ExpectedVersion, NewEvent, StreamName};
use weft_kurrentdb::{KurrentDbStore, Options};

/// A store in a fresh namespace of the server under test, and the options to open it again.
async fn fresh() -> (KurrentDbStore, Options) {
    let connection = std::env::var("WEFT_TEST_KURRENTDB").expect("WEFT_TEST_KURRENTDB names the server under test");
    let namespace = format!("t{}", &uuid::Uuid::now_v7().simple().to_string()[8..]);
    let options = Options { namespace, ..Options::new(connection) };
    (KurrentDbStore::open(options.clone()).await.expect("open the KurrentDB store"), options)
}

weft_events::store_contract_tests!(
    #[cfg_attr(not(kurrentdb_server), ignore = "set WEFT_TEST_KURRENTDB to a KurrentDB connection string to run")]
    || async { (fresh().await.0, ()) }
);

/// Two processes on one database number its events alike, whichever of them appended them, and one learns
/// of the other's appends live.
#[cfg_attr(not(kurrentdb_server), ignore = "set WEFT_TEST_KURRENTDB to a KurrentDB connection string to run")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_number_the_log_alike() {
    let (one, options) = fresh().await;
    let stream = |n: u32| StreamName::new(format!("s-{n}")).unwrap();
    for n in 0..20 {
        one.append(&stream(n % 3), ExpectedVersion::Any, vec![NewEvent::new("t.happened", vec![n as u8])])
            .await
            .unwrap();
    }
    let two = KurrentDbStore::open(options).await.unwrap();
    assert_eq!(two.head().await.unwrap(), 20);
    let mut live = two.subscribe_all(21);
    let appended = one.append(&stream(7), ExpectedVersion::NoStream, vec![NewEvent::new("t.happened", vec![])]).await;
    let event = live.next().await.unwrap();
    assert_eq!((event.position, event.stream.clone()), (appended.unwrap().first_position, stream(7)));
    assert_eq!(one.read_all(1, 100).await.unwrap(), two.read_all(1, 100).await.unwrap());
    assert_eq!(
        one.read_stream(&stream(1), 1, weft_events::Direction::Forwards, 100).await.unwrap(),
        two.read_stream(&stream(1), 1, weft_events::Direction::Forwards, 100).await.unwrap()
    );
}
