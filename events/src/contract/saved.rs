//! Contract cases of what a store saves beside the log: snapshots and checkpoints.

use bytes::Bytes;

use super::{event, stream};
use crate::store::{Checkpoint, Error, EventStore, ExpectedVersion, Snapshot};

/// A snapshot saves and loads; an older one does not replace a newer one; one ahead of its stream is refused.
pub async fn snapshots_keep_the_latest<S: EventStore + Clone>(store: S) {
    let s = stream("snap");
    assert_eq!(store.load_snapshot(&s).await.unwrap(), None);
    store.append(&s, ExpectedVersion::NoStream, (1..=10).map(event).collect()).await.unwrap();
    let at = |version: u64| Snapshot {
        stream: s.clone(),
        version,
        schema_version: 1,
        payload: Bytes::from(format!("state at {version}")),
    };
    store.save_snapshot(at(5)).await.unwrap();
    assert_eq!(store.load_snapshot(&s).await.unwrap(), Some(at(5)));
    store.save_snapshot(at(8)).await.unwrap();
    store.save_snapshot(at(6)).await.unwrap();
    assert_eq!(store.load_snapshot(&s).await.unwrap(), Some(at(8)));
    assert_eq!(
        store.save_snapshot(at(11)).await.unwrap_err(),
        Error::SnapshotAhead { stream: s.clone(), version: 11, actual: 10 }
    );
    assert_eq!(store.load_snapshot(&stream("other")).await.unwrap(), None);
}

/// A checkpoint saves and loads with its state; one behind the saved one does not replace it (including at
/// the same position with another state: the later save wins); one ahead of the log is refused.
pub async fn checkpoints_keep_the_furthest<S: EventStore + Clone>(store: S) {
    let name = stream("checkpoint-orchestrator");
    assert_eq!(store.load_checkpoint(&name).await.unwrap(), None);
    assert_eq!(store.checkpoint_names().await.unwrap(), []);
    store.append(&stream("log"), ExpectedVersion::NoStream, (1..=10).map(event).collect()).await.unwrap();
    let at =
        |position: u64, state: &str| Checkpoint { name: name.clone(), position, state: Bytes::from(state.to_owned()) };
    store.save_checkpoint(at(0, "nothing yet")).await.unwrap();
    assert_eq!(store.load_checkpoint(&name).await.unwrap(), Some(at(0, "nothing yet")));
    store.save_checkpoint(at(7, "seven")).await.unwrap();
    store.save_checkpoint(at(7, "seven, timers fired")).await.unwrap();
    store.save_checkpoint(at(3, "three")).await.unwrap();
    assert_eq!(store.load_checkpoint(&name).await.unwrap(), Some(at(7, "seven, timers fired")));
    assert_eq!(
        store.save_checkpoint(at(11, "eleven")).await.unwrap_err(),
        Error::CheckpointAhead { name: name.clone(), position: 11, head: 10 }
    );
    assert_eq!(store.load_checkpoint(&stream("checkpoint-other")).await.unwrap(), None);
    // The names of the saved ones, in name order.
    let other = stream("checkpoint-another");
    store.save_checkpoint(Checkpoint { name: other.clone(), position: 2, state: Bytes::new() }).await.unwrap();
    assert_eq!(store.checkpoint_names().await.unwrap(), [other, name]);
}
