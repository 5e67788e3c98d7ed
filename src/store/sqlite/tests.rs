//! The SQLite store's own tests (the contract suite runs in `tests/it`).

use std::path::Path;

use super::*;

weft_events::store_contract_tests!(|| async {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(Options::new(dir.path().join("events.db"))).unwrap();
    (store, dir)
});

#[tokio::test]
async fn a_second_process_cannot_open_an_open_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let store = SqliteStore::open(Options::new(&path)).unwrap();
    let Err(err) = SqliteStore::open(Options::new(&path)) else { panic!("opened twice") };
    assert!(matches!(&err, Error::Unavailable { reason, .. } if reason.contains("another process")), "{err}");
    store.close().await.unwrap();
    SqliteStore::open(Options::new(&path)).unwrap();
}

#[tokio::test]
async fn a_closed_store_refuses_appends_and_reopens_with_its_events() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let s = StreamName::new("s").unwrap();
    let store = SqliteStore::open(Options::new(&path)).unwrap();
    store.append(&s, ExpectedVersion::NoStream, vec![NewEvent::new("a.b", vec![1])]).await.unwrap();
    store.close().await.unwrap();
    assert_eq!(
        store.append(&s, ExpectedVersion::Any, vec![NewEvent::new("a.b", vec![2])]).await.unwrap_err(),
        Error::Closed
    );
    assert!(
        !Path::new(&format!("{}-wal", path.display())).exists()
            || std::fs::metadata(format!("{}-wal", path.display())).unwrap().len() == 0
    );
    let store = SqliteStore::open(Options::new(&path)).unwrap();
    assert_eq!(store.head().await.unwrap(), 1);
    assert_eq!(store.verify().await.unwrap(), 1);
    let e = store.append(&s, ExpectedVersion::Exact(1), vec![NewEvent::new("a.b", vec![2])]).await.unwrap();
    assert_eq!((e.version, e.first_position), (2, 2));
}

/// Writers append to many streams while readers read them whole, again and again, as the indexer keeps
/// moving entries from the tail to the file: every read must be complete and no shorter than the last.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_stay_complete_while_the_indexer_moves_entries() {
    const STREAMS: usize = 20;
    const APPENDS: u64 = 150;
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(Options::new(dir.path().join("events.db"))).unwrap();
    let streams: Vec<StreamName> = (0..STREAMS).map(|i| StreamName::new(format!("moving-{i}")).unwrap()).collect();
    let mut writers = Vec::new();
    for s in streams.clone() {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            for n in 0..APPENDS {
                store
                    .append(&s, ExpectedVersion::Exact(n), vec![NewEvent::new("a.b", n.to_be_bytes().to_vec())])
                    .await
                    .unwrap();
            }
        }));
    }
    let mut readers = Vec::new();
    for s in streams.clone() {
        let store = store.clone();
        readers.push(tokio::spawn(async move {
            let mut seen = 0;
            while seen < APPENDS {
                let version = store.stream_version(&s).await.unwrap();
                let events = store.read_stream(&s, 1, Direction::Forwards, 1000).await.unwrap();
                assert!(events.len() as u64 >= version.max(seen), "a read went backwards");
                assert!(events.iter().zip(1..).all(|(e, v)| e.version == v && e.stream == s));
                let back = store.read_stream(&s, u64::MAX, Direction::Backwards, 7).await.unwrap();
                assert!(back.first().map_or(0, |e| e.version) >= events.len() as u64);
                seen = events.len() as u64;
                tokio::task::yield_now().await;
            }
        }));
    }
    for task in writers.into_iter().chain(readers) {
        task.await.unwrap();
    }
    assert_eq!(store.verify().await.unwrap(), STREAMS as u64 * APPENDS);
}

#[tokio::test]
async fn events_read_the_same_from_the_index_file_and_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let s = StreamName::new("halves").unwrap();
    let store = SqliteStore::open(Options::new(&path)).unwrap();
    store
        .append(&s, ExpectedVersion::NoStream, (1..=30u8).map(|n| NewEvent::new("a.b", vec![n])).collect())
        .await
        .unwrap();
    store.close().await.unwrap();
    // Reopened, the first 30 are in the index file; the next 30 start in the tail.
    let store = SqliteStore::open(Options::new(&path)).unwrap();
    store
        .append(&s, ExpectedVersion::Exact(30), (31..=60u8).map(|n| NewEvent::new("a.b", vec![n])).collect())
        .await
        .unwrap();
    for (from, direction, limit, want) in [
        (1, Direction::Forwards, 100, (1..=60).collect::<Vec<u8>>()),
        (25, Direction::Forwards, 10, (25..=34).collect()),
        (35, Direction::Backwards, 10, (26..=35).rev().collect()),
        (u64::MAX, Direction::Backwards, 40, (21..=60).rev().collect()),
    ] {
        let got: Vec<u8> =
            store.read_stream(&s, from, direction, limit).await.unwrap().iter().map(|e| e.payload[0]).collect();
        assert_eq!(got, want, "from {from} {direction:?} limit {limit}");
    }
    assert_eq!(store.stream_version(&s).await.unwrap(), 60);
}

#[tokio::test]
async fn a_file_of_another_kind_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, "just some text that is long enough to look like it could be a header, but is not at all")
        .unwrap();
    let Err(err) = SqliteStore::open(Options::new(&path)) else { panic!("opened a text file") };
    assert!(matches!(&err, Error::Corrupt { location, .. } if location.contains("notes.txt")), "{err}");

    let other = dir.path().join("other.db");
    let conn = Connection::open(&other).unwrap();
    conn.execute_batch("PRAGMA application_id = 42; CREATE TABLE t (x);").unwrap();
    drop(conn);
    let Err(err) = SqliteStore::open(Options::new(&other)) else { panic!("opened another app's database") };
    assert!(err.to_string().contains("another application"), "{err}");
}

/// What a subscription at the head reads from memory is what the file holds: the same envelopes, byte for
/// byte, whether the event kept an imported time or not; reads from before the ring go to the file.
#[tokio::test]
async fn events_read_the_same_from_memory_and_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let store = SqliteStore::open(Options::new(&path)).unwrap();
    let (a, b) = (StreamName::new("job-a").unwrap(), StreamName::new("agent-b").unwrap());
    let imported = NewEvent::new("job.submitted", vec![9; 40]).tenant("acme").actor("user:alice");
    let imported = NewEvent { recorded_at: Some(weft_events::Timestamp(1_000_000)), ..imported };
    let correlated = NewEvent::new("agent.task_assigned", vec![1, 2]).correlation_id(uuid::Uuid::now_v7());
    store
        .append(&a, ExpectedVersion::NoStream, vec![imported, NewEvent::new("job.step_scheduled", vec![])])
        .await
        .unwrap();
    store.append(&b, ExpectedVersion::Any, vec![correlated]).await.unwrap();
    let from_memory = store.read_all(1, 10).await.unwrap();
    assert_eq!(from_memory.len(), 3);
    assert_eq!(store.read_all(3, 10).await.unwrap(), from_memory[2..]);
    assert_eq!(store.read_all(4, 10).await.unwrap(), vec![], "past the head");
    // A stream read past its last version is answered from the versions kept beside the ring.
    assert_eq!(store.read_stream(&a, 3, Direction::Forwards, 10).await.unwrap(), vec![]);
    assert_eq!(store.stream_version(&a).await.unwrap(), 2);
    store.close().await.unwrap();

    let store = SqliteStore::open(Options::new(&path)).unwrap();
    assert_eq!(store.read_all(1, 10).await.unwrap(), from_memory, "the file holds what memory handed out");
    assert_eq!(store.read_stream(&a, 1, Direction::Forwards, 10).await.unwrap(), from_memory[..2]);
    store.close().await.unwrap();
}

/// An actor's activation reads a stream's snapshot and the events after it in one trip: the same as reading
/// the two in turn (the trait's default), for a stream with no event, one without a snapshot, one with a
/// snapshot, from the tail and from the index file.
#[tokio::test]
async fn the_latest_snapshot_and_the_events_after_it_read_as_the_two_reads_in_turn() {
    async fn in_turn(store: &SqliteStore, stream: &StreamName, limit: usize) -> (Option<Snapshot>, Vec<Envelope>) {
        let snapshot = store.load_snapshot(stream).await.unwrap();
        let from = snapshot.as_ref().map_or(0, |s| s.version) + 1;
        (snapshot, store.read_stream(stream, from, Direction::Forwards, limit).await.unwrap())
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let store = SqliteStore::open(Options::new(&path)).unwrap();
    let (plain, snapped, none) =
        (StreamName::new("job-a").unwrap(), StreamName::new("job-b").unwrap(), StreamName::new("job-c").unwrap());
    for stream in [&plain, &snapped] {
        let events = (0..5).map(|i| NewEvent::new("job.step_scheduled", vec![i])).collect();
        store.append(stream, ExpectedVersion::NoStream, events).await.unwrap();
    }
    let snapshot =
        Snapshot { stream: snapped.clone(), version: 3, schema_version: 1, payload: bytes::Bytes::from_static(b"s") };
    store.save_snapshot(snapshot.clone()).await.unwrap();
    for reopened in [false, true] {
        let store = if reopened { SqliteStore::open(Options::new(&path)).unwrap() } else { store.clone() };
        assert_eq!(store.read_latest(&none, 10).await.unwrap(), (None, vec![]), "reopened {reopened}");
        for (stream, limit) in [(&plain, 10), (&plain, 2), (&snapped, 10), (&snapped, 1)] {
            let latest = store.read_latest(stream, limit).await.unwrap();
            assert_eq!(latest, in_turn(&store, stream, limit).await, "{stream} limit {limit} reopened {reopened}");
        }
        let (got, events) = store.read_latest(&snapped, 10).await.unwrap();
        assert_eq!((got, events.iter().map(|e| e.version).collect::<Vec<_>>()), (Some(snapshot.clone()), vec![4, 5]));
        store.close().await.unwrap();
    }
}

/// A stream's version in the index file: its recorded head and its last entry must agree, in one look-up.
#[tokio::test]
async fn the_index_file_answers_a_stream_s_version_and_tells_a_head_that_disagrees_with_its_entries() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let store = SqliteStore::open(Options::new(&path)).unwrap();
    let stream = StreamName::new("job-a").unwrap();
    let events = vec![NewEvent::new("job.submitted", vec![1]), NewEvent::new("job.step_scheduled", vec![2])];
    store.append(&stream, ExpectedVersion::NoStream, events).await.unwrap();
    store.close().await.unwrap();

    let index = Connection::open(index_path(&path)).unwrap();
    let version = |name: &str| index::file_version(&index, "index", "", &StreamName::new(name).unwrap());
    assert_eq!(version("job-a").unwrap(), 2);
    assert_eq!(version("job-none").unwrap(), 0, "a stream with no event");
    index.execute("DELETE FROM stream_events WHERE stream = 'job-a' AND version = 2", []).unwrap();
    assert!(matches!(version("job-a"), Err(Error::Corrupt { .. })), "{:?}", version("job-a"));
}
