//! What the read models' property tests share.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use weft_events::{EventRead, MemoryStore};
use weft_projections::Projection;

/// Waits until `running` has applied everything in `store`.
pub async fn wait_for(running: &weft_projections::Running, store: &MemoryStore) {
    let head = store.head().await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), running.reached(head)).await.expect("the projection stalled");
}

/// Starts `projection` on the read models at `path` (from its saved position), lets it apply all of `store`,
/// and stops it: one run of a node, for tests that restart a projection between parts of a log.
pub async fn catch_up<P: Projection>(projection: P, path: &Path, store: &MemoryStore) {
    let running = weft_projections::start(projection, path, Arc::new(store.clone())).unwrap();
    wait_for(&running, store).await;
    running.stop().unwrap();
}
