//! An in-memory event store, for fast tests of the layers above the store.
//!
//! It keeps every event in a `Vec` behind one mutex and passes the same contract suite as the durable
//! backends, so a test that passes against it exercises the same promises. It is not durable: everything is
//! gone when the last handle drops. Each append's recording time is later than the one before's, so events
//! that share one were appended together.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use tokio::sync::watch;

use crate::envelope::{Envelope, NewEvent, StreamName, Timestamp};
use crate::store::{Appended, Checkpoint, Direction, Error, EventRead, EventWrite, ExpectedVersion, Limits, Snapshot};
use crate::subscription::Subscription;

/// A cheap-to-clone handle to an in-memory store; clones share the events.
#[derive(Clone)]
pub struct MemoryStore {
    shared: Arc<Shared>,
}

struct Shared {
    limits: Limits,
    /// What [`EventWrite::combine_from`] answers.
    combine_from: usize,
    state: Mutex<State>,
    /// The last committed position, for subscriptions to wait on.
    head: watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    /// Every event; the event at position `p` is at index `p - 1`.
    log: Vec<Envelope>,
    /// Each stream's events as indexes into `log`, by version - 1.
    streams: HashMap<StreamName, Vec<usize>>,
    snapshots: HashMap<StreamName, Snapshot>,
    checkpoints: HashMap<StreamName, Checkpoint>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

impl MemoryStore {
    /// An empty store with these limits.
    pub fn new(limits: Limits) -> Self {
        Self::with(limits, 2)
    }

    /// An empty store that answers `n` to [`EventWrite::combine_from`], as a store whose multi-event append
    /// costs more than one event's does (a test of a writer that heeds it).
    pub fn combining_from(n: usize) -> Self {
        Self::with(Limits::default(), n.max(2))
    }

    fn with(limits: Limits, combine_from: usize) -> Self {
        let (head, _) = watch::channel(0);
        Self { shared: Arc::new(Shared { limits, combine_from, state: Mutex::new(State::default()), head }) }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-changed: appends check everything before
        // they mutate, so a poisoned lock still guards consistent data.
        self.shared.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl EventRead for MemoryStore {
    async fn read_stream(
        &self,
        stream: &StreamName,
        from: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<Envelope>, Error> {
        self.shared.limits.check_page(limit)?;
        let state = self.state();
        let Some(indexes) = state.streams.get(stream) else { return Ok(Vec::new()) };
        let len = indexes.len() as u64;
        let picked: Vec<usize> = match direction {
            Direction::Forwards => {
                let start = from.max(1);
                if start > len {
                    return Ok(Vec::new());
                }
                indexes[(start - 1) as usize..].iter().take(limit).copied().collect()
            }
            Direction::Backwards => {
                if from == 0 {
                    return Ok(Vec::new());
                }
                let end = from.min(len) as usize;
                indexes[..end].iter().rev().take(limit).copied().collect()
            }
        };
        Ok(picked.into_iter().map(|i| state.log[i].clone()).collect())
    }

    async fn read_all(&self, from: u64, limit: usize) -> Result<Vec<Envelope>, Error> {
        self.shared.limits.check_page(limit)?;
        let state = self.state();
        let start = (from.max(1) - 1) as usize;
        Ok(state.log.iter().skip(start).take(limit).cloned().collect())
    }

    async fn stream_version(&self, stream: &StreamName) -> Result<u64, Error> {
        Ok(self.state().streams.get(stream).map_or(0, |v| v.len() as u64))
    }

    async fn head(&self) -> Result<u64, Error> {
        Ok(self.state().log.len() as u64)
    }

    async fn load_snapshot(&self, stream: &StreamName) -> Result<Option<Snapshot>, Error> {
        Ok(self.state().snapshots.get(stream).cloned())
    }

    async fn load_checkpoint(&self, name: &StreamName) -> Result<Option<Checkpoint>, Error> {
        Ok(self.state().checkpoints.get(name).cloned())
    }

    async fn checkpoint_names(&self) -> Result<Vec<StreamName>, Error> {
        let mut names: Vec<StreamName> = self.state().checkpoints.keys().cloned().collect();
        names.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        Ok(names)
    }

    fn subscribe_all(&self, from: u64) -> Subscription {
        Subscription::new(Arc::new(self.clone()), self.shared.head.subscribe(), from)
    }

    fn limits(&self) -> Limits {
        self.shared.limits
    }
}

#[async_trait]
impl EventWrite for MemoryStore {
    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended, Error> {
        self.shared.limits.check_append(&events)?;
        let mut state = self.state();
        let actual = state.streams.get(stream).map_or(0, |v| v.len() as u64);
        if !expected.matches(actual) {
            return Err(Error::Conflict { stream: stream.clone(), expected, actual });
        }
        // Each append's time is after the one before's, so the appends of one microsecond still tell apart.
        let after = state.log.last().map_or(i64::MIN, |e| e.recorded_at.0.saturating_add(1));
        let recorded_at = Timestamp(Timestamp::now().0.max(after));
        let first_position = state.log.len() as u64 + 1;
        let count = events.len() as u64;
        let State { log, streams, .. } = &mut *state;
        let indexes = streams.entry(stream.clone()).or_default();
        for (i, event) in events.into_iter().enumerate() {
            let i = i as u64;
            indexes.push(log.len());
            log.push(event.into_envelope(stream.clone(), actual + i + 1, first_position + i, recorded_at));
        }
        let last_position = first_position + count - 1;
        // Bumped under the lock, so that the head never moves backwards between two racing appends.
        self.shared.head.send_replace(last_position);
        drop(state);
        Ok(Appended { version: actual + count, first_position, last_position })
    }

    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<(), Error> {
        self.shared.limits.check_snapshot(&snapshot)?;
        let mut state = self.state();
        let actual = state.streams.get(&snapshot.stream).map_or(0, |v| v.len() as u64);
        if snapshot.version > actual {
            return Err(Error::SnapshotAhead { stream: snapshot.stream, version: snapshot.version, actual });
        }
        let newer = state.snapshots.get(&snapshot.stream).is_some_and(|s| s.version > snapshot.version);
        if !newer {
            state.snapshots.insert(snapshot.stream.clone(), snapshot);
        }
        Ok(())
    }

    async fn save_checkpoint(&self, checkpoint: Checkpoint) -> Result<(), Error> {
        self.shared.limits.check_checkpoint(&checkpoint)?;
        let mut state = self.state();
        let head = state.log.len() as u64;
        if checkpoint.position > head {
            return Err(Error::CheckpointAhead { name: checkpoint.name, position: checkpoint.position, head });
        }
        let further = state.checkpoints.get(&checkpoint.name).is_some_and(|c| c.position > checkpoint.position);
        if !further {
            state.checkpoints.insert(checkpoint.name.clone(), checkpoint);
        }
        Ok(())
    }

    fn combine_from(&self) -> usize {
        self.shared.combine_from
    }
}

#[cfg(test)]
mod tests {
    crate::store_contract_tests!(|| async { (super::MemoryStore::default(), ()) });
}
