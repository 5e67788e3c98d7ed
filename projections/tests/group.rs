//! The projections of one file run as a group (one thread, one subscription, one transaction a batch): each
//! applies only what lies past its own position, and one that fails leaves the group so that the others go on.

use std::sync::Arc;
use std::time::Duration;

use rusqlite::Transaction;
use weft_events::{Envelope, EventRead, EventWrite, ExpectedVersion, MemoryStore, NewEvent, StreamName};
use weft_projections::{ApplyError, Projection};

/// Records each event's position once: a position applied twice breaks the table's key, and fails the batch.
struct Counter(&'static str);

impl Projection for Counter {
    fn name(&self) -> &'static str {
        self.0
    }

    fn create(&self, db: &rusqlite::Connection) -> rusqlite::Result<()> {
        db.execute_batch(&format!("CREATE TABLE IF NOT EXISTS {} (position INTEGER PRIMARY KEY)", self.0))
    }

    fn tables(&self) -> &'static [&'static str] {
        &[]
    }

    fn apply(&mut self, tx: &Transaction<'_>, event: &Envelope) -> Result<(), ApplyError> {
        tx.execute(&format!("INSERT INTO {} (position) VALUES (?1)", self.0), [event.position as i64])?;
        Ok(())
    }
}

/// Records positions like [`Counter`], but fails on every `test.poison` event.
struct Poisoned;

impl Projection for Poisoned {
    fn name(&self) -> &'static str {
        "poisoned"
    }

    fn create(&self, db: &rusqlite::Connection) -> rusqlite::Result<()> {
        Counter("poisoned").create(db)
    }

    fn tables(&self) -> &'static [&'static str] {
        &[]
    }

    fn apply(&mut self, tx: &Transaction<'_>, event: &Envelope) -> Result<(), ApplyError> {
        if &*event.event_type == "test.poison" {
            return Err(ApplyError::Sql(rusqlite::Error::InvalidQuery));
        }
        Counter("poisoned").apply(tx, event)
    }
}

async fn append(store: &MemoryStore, stream: &str, event_type: &str, n: usize) {
    let stream = StreamName::new(stream).unwrap();
    let events = (0..n).map(|_| NewEvent::new(event_type, vec![0x80])).collect();
    store.append(&stream, ExpectedVersion::Any, events).await.unwrap();
}

fn count(path: &std::path::Path, table: &str) -> i64 {
    let db = rusqlite::Connection::open(path).unwrap();
    db.query_row(&format!("SELECT count(*) FROM {table}"), [], |row| row.get(0)).unwrap()
}

async fn reach(running: &weft_projections::Running, position: u64) {
    tokio::time::timeout(Duration::from_secs(30), running.reached(position)).await.expect("the projection stalled");
}

#[tokio::test]
async fn a_model_that_fails_leaves_its_group_and_the_others_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("read.db");
    let store = MemoryStore::default();
    append(&store, "thing-a", "test.fine", 5).await;
    // In one append with good events, so that the group's batch holds both and is rolled back whole.
    let stream = StreamName::new("thing-b").unwrap();
    let mixed = vec![NewEvent::new("test.fine", vec![0x80]), NewEvent::new("test.poison", vec![0x80])];
    store.append(&stream, ExpectedVersion::Any, mixed).await.unwrap();
    let poison = store.head().await.unwrap();
    append(&store, "thing-c", "test.fine", 5).await;
    let head = store.head().await.unwrap();

    let reader: Arc<dyn EventRead> = Arc::new(store.clone());
    let mut running = weft_projections::start_group(
        vec![Box::new(Counter("counted")), Box::new(Poisoned), Box::new(Counter("also_counted"))],
        &path,
        reader.clone(),
    )
    .unwrap();
    for healthy in [&running[0], &running[2]] {
        reach(healthy, head).await;
    }
    // Each applied every event exactly once, though the batch with the poison was rolled back and applied again.
    assert_eq!(count(&path, "counted"), head as i64);
    assert_eq!(count(&path, "also_counted"), head as i64);
    // The failing one stays before the poison, and says why.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while running[1].health().report().state != weft_events::health::State::Retrying {
        assert!(std::time::Instant::now() < deadline, "the failing projection never reported it");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(running[1].position() < poison, "the failing projection passed its poison");
    assert!(running[1].health().report().error.unwrap().contains("applying positions"));

    // Alone, it still stops when asked; so do the others.
    for projection in running.drain(..) {
        projection.stop().unwrap();
    }
    // Started again as a group, each goes on from its own position.
    append(&store, "thing-d", "test.fine", 3).await;
    let head = store.head().await.unwrap();
    let running = weft_projections::start_group(vec![Box::new(Counter("counted"))], &path, reader).unwrap();
    reach(&running[0], head).await;
    assert_eq!(count(&path, "counted"), head as i64);
}

#[tokio::test]
async fn members_at_different_positions_each_apply_only_what_they_have_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("read.db");
    let store = MemoryStore::default();
    for i in 0..10 {
        append(&store, &format!("thing-{i}"), "test.fine", 3).await;
    }
    let reader: Arc<dyn EventRead> = Arc::new(store.clone());
    // One model ahead of the other.
    let ahead = weft_projections::start(Counter("ahead"), &path, reader.clone()).unwrap();
    reach(&ahead, store.head().await.unwrap()).await;
    ahead.stop().unwrap();
    for i in 10..20 {
        append(&store, &format!("thing-{i}"), "test.fine", 3).await;
    }
    let head = store.head().await.unwrap();

    let running =
        weft_projections::start_group(vec![Box::new(Counter("ahead")), Box::new(Counter("behind"))], &path, reader)
            .unwrap();
    for projection in &running {
        reach(projection, head).await;
    }
    assert_eq!(count(&path, "ahead"), head as i64);
    assert_eq!(count(&path, "behind"), head as i64);
    for projection in running {
        projection.stop().unwrap();
    }
}
