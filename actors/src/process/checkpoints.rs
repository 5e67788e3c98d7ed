//! Where a process manager's checkpoints are saved, and how it loads and saves them.

use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;
use weft_events::{Checkpoint, EventStore, Health, Partition, StreamName, codec};

use super::back_off;

/// The stream name a process's checkpoint is saved under.
pub fn checkpoint_name(process: &str) -> StreamName {
    StreamName::new(format!("process-{process}")).expect("process names are valid stream names")
}

/// The checkpoint name of a process that reads one partition (`process-<name>-<partition>`), or the whole log.
pub fn checkpoint_name_in(process: &str, partition: Option<Partition>) -> StreamName {
    match partition {
        None => checkpoint_name(process),
        Some(p) => StreamName::new(format!("process-{process}-{}", p.index)).expect("process names are valid"),
    }
}

/// Where a process is and what it remembers.
pub(super) struct Progress<S> {
    pub(super) name: StreamName,
    /// The partition it reads, if only one.
    pub(super) partition: Option<u32>,
    pub(super) position: u64,
    pub(super) state: S,
    /// Events or timers handled since the last save.
    pub(super) unsaved: u64,
    pub(super) saved_at: Instant,
}

impl<S: Serialize> Progress<S> {
    pub(super) async fn save(&mut self, store: &dyn EventStore) -> Result<(), String> {
        let state =
            codec::encode(&self.state).map_err(|e| format!("the state of {} does not encode: {e}", self.name))?;
        let checkpoint = Checkpoint { name: self.name.clone(), position: self.position, state: state.into() };
        store.save_checkpoint(checkpoint).await.map_err(|e| format!("saving checkpoint {}: {e}", self.name))?;
        self.unsaved = 0;
        self.saved_at = Instant::now();
        Ok(())
    }
}

/// Loads checkpoint `name`, waiting out failures that may pass; `Ok(None)` when the process was asked to stop
/// meanwhile.
pub(super) async fn load(
    store: &dyn EventStore,
    name: &StreamName,
    health: &Health,
    stopped: &mut watch::Receiver<bool>,
    (min_delay, max_delay): (Duration, Duration),
) -> Result<Option<Option<Checkpoint>>, String> {
    let mut delay = min_delay;
    loop {
        match store.load_checkpoint(name).await {
            Ok(checkpoint) => return Ok(Some(checkpoint)),
            Err(e) if e.is_retryable() => {
                tracing::warn!(checkpoint = %name, error = %e, "loading the checkpoint failed; trying again");
                health.retrying(format!("loading checkpoint {name}: {e}"));
                if !back_off(stopped, &mut delay, max_delay).await {
                    return Ok(None);
                }
            }
            Err(e) => return Err(format!("loading checkpoint {name}: {e}")),
        }
    }
}
