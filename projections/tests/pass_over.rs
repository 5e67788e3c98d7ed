//! A projection passes over the batches it wants nothing of without a transaction: its position follows
//! the log all the same (a read waiting for a position is answered), and is saved once the projection is
//! idle or at its stop, so a restart goes on from there.

use std::sync::Arc;

use weft_events::domain::ids::AgentId;
use weft_events::{EventRead, EventWrite, ExpectedVersion, MemoryStore, NewEvent, StreamName};
use weft_projections::jobs::Jobs;
use weft_projections::{Projection, documents::Documents};

mod support;

/// The position saved for `name` in the read models at `path`.
fn saved(path: &std::path::Path, name: &str) -> Option<i64> {
    let db = rusqlite::Connection::open(path).unwrap();
    db.query_row("SELECT position FROM projection_positions WHERE name = ?1", [name], |row| row.get(0)).ok()
}

#[tokio::test]
async fn batches_of_other_models_move_the_position_which_is_saved_when_idle_and_at_the_stop() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("read.db");
    let store = MemoryStore::default();
    // Events of streams neither the jobs nor the documents model reads (agents'), each in its own append.
    for i in 0..20 {
        let stream = AgentId::new().stream();
        let event = NewEvent::new("agent.registered", vec![0x80 | (i % 8)]);
        store.append(&stream, ExpectedVersion::NoStream, vec![event]).await.unwrap();
    }
    let head = store.head().await.unwrap();
    let stream = StreamName::new("agent-x").unwrap();
    assert!(!Jobs.wants(&NewEvent::new("agent.registered", vec![]).into_envelope(
        stream,
        1,
        1,
        weft_events::Timestamp(1)
    )));

    let running = weft_projections::start(Jobs, &path, Arc::new(store.clone())).unwrap();
    support::wait_for(&running, &store).await;
    assert_eq!(running.position(), head, "the position follows the log");
    // Saved once the projection has been idle a moment, without a stop.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while saved(&path, "jobs") != Some(head as i64) {
        assert!(std::time::Instant::now() < deadline, "the position passed over was never saved");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    running.stop().unwrap();

    // Restarted, it goes on from there; the documents model, which reads none of them either, likewise.
    let running = weft_projections::start(Jobs, &path, Arc::new(store.clone())).unwrap();
    assert_eq!(running.position(), head);
    running.stop().unwrap();
    support::catch_up(Documents, &path, &store).await;
    assert_eq!(saved(&path, "documents"), Some(head as i64));
}
