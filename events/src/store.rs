//! What every event store promises: the read and write traits, expected versions, limits and errors.
//!
//! # Promises
//!
//! - **Atomic appends.** All events of one [`EventWrite::append`] land together or none do.
//! - **Optimistic concurrency.** An append names the version it expects ([`ExpectedVersion`]); when the
//!   stream is elsewhere, the append fails with [`Error::Conflict`] and stores nothing.
//! - **Dense numbering.** Versions run 1, 2, 3 ... within a stream; positions run 1, 2, 3 ... across the
//!   store in commit order; neither has gaps. Version 0 and position 0 mean "nothing yet".
//! - **Durability.** An append that returned `Ok` survives a crash of the process (and, with the durable
//!   backends at their default settings, of the machine).
//! - **Bounded work.** Payloads, appends and pages have limits ([`Limits`]); going over one is a typed error
//!   naming both numbers.
//!
//! Every backend runs the same contract suite (`contract`, feature `test-util`) to prove these.

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::envelope::{self, Envelope, NameError, NewEvent, StreamName};
use crate::partition::Partition;
use crate::subscription::Subscription;

/// Default largest payload of one event: 1 MiB.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 1024 * 1024;

/// Default most events in one append.
pub const DEFAULT_MAX_EVENTS_PER_APPEND: usize = 1000;

/// Default largest sum of payloads in one append: 16 MiB, so one append cannot hold a writer for long.
pub const DEFAULT_MAX_APPEND_BYTES: usize = 16 * 1024 * 1024;

/// Default most events one read may ask for.
pub const DEFAULT_MAX_PAGE_SIZE: usize = 10_000;

/// The version an append expects its stream to be at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "version")]
pub enum ExpectedVersion {
    /// Append whatever the stream's version.
    Any,
    /// The stream must not exist yet (its version is 0).
    NoStream,
    /// The stream must be at exactly this version; `Exact(0)` is the same as [`ExpectedVersion::NoStream`].
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream at `actual` satisfies this expectation.
    pub fn matches(self, actual: u64) -> bool {
        match self {
            Self::Any => true,
            Self::NoStream => actual == 0,
            Self::Exact(version) => actual == version,
        }
    }
}

/// Where the events of a successful append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Appended {
    /// The stream's version after the append: the version of its last event.
    pub version: u64,
    /// The position of the append's first event.
    pub first_position: u64,
    /// The position of its last event; the events between have the positions between.
    pub last_position: u64,
}

/// Which way to read a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From a version towards the end.
    Forwards,
    /// From a version towards the start.
    Backwards,
}

/// The latest saved state of one stream, so that activating an aggregate need not replay its whole history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The stream it is a snapshot of.
    pub stream: StreamName,
    /// The stream version the state reflects: events after it are replayed on top.
    pub version: u64,
    /// Version of the state's encoding; a host discards snapshots of a version it does not know.
    pub schema_version: u32,
    /// The encoded state.
    pub payload: Bytes,
}

/// How far a reader of the whole log (a process manager, a projection) has got, with the state it keeps,
/// saved under its name so that it resumes there after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Whose checkpoint; named like a stream.
    pub name: StreamName,
    /// The position of the last event it has dealt with; it resumes after it.
    pub position: u64,
    /// Its encoded state as of that position.
    pub state: Bytes,
}

/// The limits a store enforces. Each has a default; going over one is a typed [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct Limits {
    /// Largest payload of one event, in bytes. Default 1 MiB.
    pub max_payload_bytes: usize,
    /// Most events in one append. Default 1000.
    pub max_events_per_append: usize,
    /// Largest sum of payload bytes in one append. Default 16 MiB.
    pub max_append_bytes: usize,
    /// Most events one read may ask for. Default 10,000.
    pub max_page_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            max_events_per_append: DEFAULT_MAX_EVENTS_PER_APPEND,
            max_append_bytes: DEFAULT_MAX_APPEND_BYTES,
            max_page_size: DEFAULT_MAX_PAGE_SIZE,
        }
    }
}

impl Limits {
    /// Checks an append against the limits and the naming rules. Every backend calls this before it touches
    /// storage, so that all backends refuse the same appends with the same errors.
    pub fn check_append(&self, events: &[NewEvent]) -> Result<(), Error> {
        if events.is_empty() {
            return Err(Error::EmptyAppend);
        }
        if events.len() > self.max_events_per_append {
            return Err(Error::TooManyEvents { count: events.len(), limit: self.max_events_per_append });
        }
        let mut total = 0usize;
        for (index, event) in events.iter().enumerate() {
            let size = event.payload.len();
            if size > self.max_payload_bytes {
                return Err(Error::PayloadTooLarge { index, size, limit: self.max_payload_bytes });
            }
            total += size;
            envelope::check_event_type(&event.event_type).map_err(|e| Error::InvalidEvent { index, source: e })?;
            envelope::check_label("tenant", &event.tenant).map_err(|e| Error::InvalidEvent { index, source: e })?;
            envelope::check_label("actor", &event.actor).map_err(|e| Error::InvalidEvent { index, source: e })?;
        }
        if total > self.max_append_bytes {
            return Err(Error::AppendTooLarge { size: total, limit: self.max_append_bytes });
        }
        Ok(())
    }

    /// Checks the page size of a read.
    pub fn check_page(&self, limit: usize) -> Result<(), Error> {
        if limit > self.max_page_size {
            return Err(Error::PageTooLarge { size: limit, limit: self.max_page_size });
        }
        Ok(())
    }

    /// Checks a snapshot's size.
    pub fn check_snapshot(&self, snapshot: &Snapshot) -> Result<(), Error> {
        if snapshot.payload.len() > self.max_append_bytes {
            return Err(Error::SnapshotTooLarge { size: snapshot.payload.len(), limit: self.max_append_bytes });
        }
        Ok(())
    }

    /// Checks a checkpoint's size.
    pub fn check_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), Error> {
        if checkpoint.state.len() > self.max_append_bytes {
            return Err(Error::SnapshotTooLarge { size: checkpoint.state.len(), limit: self.max_append_bytes });
        }
        Ok(())
    }
}

/// Why a store operation failed.
///
/// The first group are the caller's to fix (a conflict, a limit); they never go away by retrying the same
/// request. The last group are the store's: [`Error::is_retryable`] tells them apart.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The stream was not at the expected version; nothing was appended.
    #[error("stream {stream} is at version {actual}, not at {expected:?}")]
    Conflict {
        /// The stream.
        stream: StreamName,
        /// What the append expected.
        expected: ExpectedVersion,
        /// The stream's version when the append was decided (0 when it does not exist).
        actual: u64,
    },
    /// An append held no events.
    #[error("an append must hold at least one event")]
    EmptyAppend,
    /// An append held more events than allowed.
    #[error("an append holds {count} events, over the limit of {limit}")]
    TooManyEvents {
        /// Events in the append.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// One event's payload is over the limit.
    #[error("the payload of event {index} of the append is {size} bytes, over the limit of {limit}")]
    PayloadTooLarge {
        /// Index of the event within the append.
        index: usize,
        /// Its payload size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// The payloads of one append add up to more than allowed.
    #[error("the payloads of the append add up to {size} bytes, over the limit of {limit}")]
    AppendTooLarge {
        /// Sum of payload sizes in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// An event's type, tenant or actor breaks the naming rules.
    #[error("event {index} of the append: {source}")]
    InvalidEvent {
        /// Index of the event within the append.
        index: usize,
        /// What is wrong with it.
        source: NameError,
    },
    /// A read asked for more events than one page may hold.
    #[error("a page of {size} events was asked for, over the limit of {limit}")]
    PageTooLarge {
        /// Events asked for.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A snapshot's or a checkpoint's state is over the size limit.
    #[error("a snapshot or checkpoint of {size} bytes is over the limit of {limit}")]
    SnapshotTooLarge {
        /// State size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// A snapshot claims a version the stream has not reached.
    #[error("a snapshot of {stream} at version {version} is ahead of the stream, which is at {actual}")]
    SnapshotAhead {
        /// The stream.
        stream: StreamName,
        /// The snapshot's version.
        version: u64,
        /// The stream's version.
        actual: u64,
    },
    /// A checkpoint claims a position the log has not reached.
    #[error("checkpoint {name} at position {position} is ahead of the log, which ends at {head}")]
    CheckpointAhead {
        /// The checkpoint.
        name: StreamName,
        /// Its position.
        position: u64,
        /// The log's last position.
        head: u64,
    },
    /// Stored data failed a check: a checksum, the numbering, the file's size or structure. The store serves
    /// no event it cannot vouch for.
    #[error("store {location} is corrupt: {detail}")]
    Corrupt {
        /// The file or stream that failed, so an operator knows what to restore.
        location: String,
        /// What failed.
        detail: String,
    },
    /// The backend could not do the operation now (I/O error, server unreachable, locked by another
    /// process); the append may be retried.
    #[error("store {location} is unavailable: {reason}")]
    Unavailable {
        /// The file or server.
        location: String,
        /// Why.
        reason: String,
    },
    /// An event with personal fields was appended for a tenant whose key is destroyed ([`crate::seal`]):
    /// it is refused rather than stored in the clear or under a key nobody holds.
    #[error("tenant {tenant} is erased: no event with personal fields is accepted for it")]
    TenantErased {
        /// The tenant.
        tenant: String,
    },
    /// The store has been closed.
    #[error("the store is closed")]
    Closed,
}

impl Error {
    /// Whether the same request may succeed later without change.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}

/// The read half of a store.
#[async_trait]
pub trait EventRead: Send + Sync + 'static {
    /// Up to `limit` events of `stream`, starting at version `from` and going in `direction`. Reading
    /// backwards from `u64::MAX` starts at the end. An unknown stream reads as empty.
    async fn read_stream(
        &self,
        stream: &StreamName,
        from: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<Envelope>, Error>;

    /// Up to `limit` events of the whole store in position order, starting at position `from`.
    async fn read_all(&self, from: u64, limit: usize) -> Result<Vec<Envelope>, Error>;

    /// The stream's last version; 0 when it does not exist.
    async fn stream_version(&self, stream: &StreamName) -> Result<u64, Error>;

    /// The position of the last committed event; 0 when the store is empty.
    async fn head(&self) -> Result<u64, Error>;

    /// The latest saved snapshot of a stream.
    async fn load_snapshot(&self, stream: &StreamName) -> Result<Option<Snapshot>, Error>;

    /// A stream's latest snapshot and up to `limit` of its events after it (from version 1 without one): what an
    /// actor reads when it activates. The default reads the two in turn; a store may read both in one trip.
    async fn read_latest(&self, stream: &StreamName, limit: usize) -> Result<(Option<Snapshot>, Vec<Envelope>), Error> {
        let snapshot = self.load_snapshot(stream).await?;
        let from = snapshot.as_ref().map_or(0, |s| s.version) + 1;
        let events = self.read_stream(stream, from, Direction::Forwards, limit).await?;
        Ok((snapshot, events))
    }

    /// The saved checkpoint of that name.
    async fn load_checkpoint(&self, name: &StreamName) -> Result<Option<Checkpoint>, Error>;

    /// The names of every saved checkpoint, in name order (what a copy of the store carries over).
    async fn checkpoint_names(&self) -> Result<Vec<StreamName>, Error>;

    /// Every event from position `from` on: first those already stored, then each new one as it commits, in
    /// position order, with no gap and no duplicate. See [`Subscription`].
    fn subscribe_all(&self, from: u64) -> Subscription;

    /// Up to `limit` events of the streams of `partition`, in position order from position `from` on, and
    /// the position the read went through: the last event's, or further when the events after it belong to
    /// other partitions (`from - 1` when it read nothing). The default reads `limit` events of the whole log
    /// and keeps those of the partition; a store that files events by partition reads only theirs.
    async fn read_partition(
        &self,
        partition: Partition,
        from: u64,
        limit: usize,
    ) -> Result<(Vec<Envelope>, u64), Error> {
        let from = from.max(1);
        Ok(of_partition(self.read_all(from, limit).await?, partition, from))
    }

    /// Every event of the streams of `partition` from position `from` on, with the promises of
    /// [`EventRead::subscribe_all`] (positions then grow but are not dense). The default follows the whole log
    /// through [`EventRead::read_partition`].
    fn subscribe_partition(&self, partition: Partition, from: u64) -> Subscription {
        self.subscribe_all(from).only(partition)
    }

    /// The store's limits.
    fn limits(&self) -> Limits;
}

/// A page of the whole log read from `from`, kept to the events of `partition`, with the position it went
/// through: what [`EventRead::read_partition`] answers for a store that does not file events by partition.
pub fn of_partition(page: Vec<Envelope>, partition: Partition, from: u64) -> (Vec<Envelope>, u64) {
    let through = page.last().map_or(from.saturating_sub(1), |e| e.position);
    (page.into_iter().filter(|e| partition.contains(&e.stream)).collect(), through)
}

/// The write half of a store.
#[async_trait]
pub trait EventWrite: Send + Sync + 'static {
    /// Appends `events` to `stream` if it is at `expected`: all of them or none. Returns where they landed
    /// once they are durable.
    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended, Error>;

    /// Saves a snapshot unless a newer one is already saved.
    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<(), Error>;

    /// Saves a checkpoint unless one further along is already saved under its name.
    async fn save_checkpoint(&self, checkpoint: Checkpoint) -> Result<(), Error>;

    /// Fewest events worth one append where a writer could also make one append each (the actor host, with
    /// several commands of one instance waiting): below it, one append each is cheaper for this store. The
    /// default, 2, suits a store whose append costs about the same for one event as for many; a store whose
    /// multi-event append costs more says so (JetStream, where it is an atomic batch).
    fn combine_from(&self) -> usize {
        2
    }
}

/// A store that can both read and write.
pub trait EventStore: EventRead + EventWrite {}

impl<T: EventRead + EventWrite> EventStore for T {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations_match_as_documented() {
        assert!(ExpectedVersion::Any.matches(0));
        assert!(ExpectedVersion::Any.matches(7));
        assert!(ExpectedVersion::NoStream.matches(0));
        assert!(!ExpectedVersion::NoStream.matches(1));
        assert!(ExpectedVersion::Exact(0).matches(0));
        assert!(ExpectedVersion::Exact(3).matches(3));
        assert!(!ExpectedVersion::Exact(3).matches(4));
    }

    #[test]
    fn limits_name_both_numbers() {
        let limits = Limits { max_payload_bytes: 4, ..Limits::default() };
        let err = limits.check_append(&[NewEvent::new("a.b", vec![0u8; 5])]).unwrap_err();
        assert_eq!(err, Error::PayloadTooLarge { index: 0, size: 5, limit: 4 });
        assert_eq!(err.to_string(), "the payload of event 0 of the append is 5 bytes, over the limit of 4");
        assert_eq!(limits.check_append(&[]), Err(Error::EmptyAppend));
        assert!(matches!(
            limits.check_append(&[NewEvent::new("bad type", vec![])]),
            Err(Error::InvalidEvent { index: 0, .. })
        ));
    }
}
