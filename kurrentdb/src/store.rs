//! The store: [`EventRead`] and [`EventWrite`] over a KurrentDB database.
//!
//! - **Appends** go to the stream's KurrentDB stream with the expected revision KurrentDB checks
//!   ([`crate::record::stream_state`]); KurrentDB acknowledges once the events are durable (on a quorum of a
//!   cluster). The append then waits until this process's follower of `$all` has numbered them
//!   ([`crate::index`]), so that it can say which positions they landed at, and so that a read after it sees
//!   them.
//! - **Reads of the log** start at the nearest anchor and count on through `$all`, filtered on the server
//!   to the store's prefix; **stream reads** are KurrentDB stream reads, their positions from the index.
//! - **Following** ([`crate::follow`]): one catch-up-then-live subscription to `$all` per process numbers the
//!   events every writer appends, and moves the head that [`Subscription`]s wait on.
//! - **Snapshots and checkpoints** are streams of their own (`$maxCount` 1, so KurrentDB's scavenge keeps
//!   only the latest), written with an expected revision so that an older one never replaces a newer one.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use kurrentdb::{
    AppendToStreamOptions, Client, ClientSettings, EventData, ReadAllOptions, ReadStreamOptions, RecordedEvent,
    StreamMetadata, StreamPosition, StreamState, SubscriptionFilter,
};
use tokio::sync::watch;
use weft_events::{
    Appended, Checkpoint, Direction, Envelope, Error, EventRead, EventWrite, ExpectedVersion, Health, Limits, NewEvent,
    Snapshot, StreamName, Subscription, Timestamp,
};

use crate::follow::{CATCH_UP_PAGE, Follower};
use crate::index::{At, Index, Step, Walk};
use crate::names::{self, Names, NamespaceError};
use crate::record::{self, CHECKPOINT_TYPE, SNAPSHOT_TYPE, SavedAt, Stored};

/// Most tries of a snapshot or checkpoint save that lost a race to another writer of it.
pub const SAVE_TRIES: usize = 16;

/// Where the store is and how it behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The connection string, as KurrentDB users know it: `esdb://admin:changeit@host:2113?tls=true`,
    /// `esdb+discover://cluster:2113?nodePreference=follower`, with TLS, credentials and node preference.
    pub connection: String,
    /// The store's namespace in the database ([`crate::names`]); default `weft`.
    pub namespace: String,
    /// The store's limits.
    pub limits: Limits,
}

impl Options {
    /// The store in the default namespace of the database at `connection`.
    pub fn new(connection: impl Into<String>) -> Self {
        Self {
            connection: connection.into(),
            namespace: names::DEFAULT_NAMESPACE.to_owned(),
            limits: Limits::default(),
        }
    }
}

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The connection string is not one the KurrentDB client understands (its password is never shown).
    #[error("the KurrentDB connection string {connection} is not valid: {reason}")]
    Connection {
        /// The connection string, redacted.
        connection: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The namespace breaks the rules.
    #[error(transparent)]
    Namespace(#[from] NamespaceError),
    /// Numbering the store's events failed.
    #[error(transparent)]
    Store(#[from] Error),
}

/// The store. Cheap to clone; the follower stops when the last clone is dropped.
#[derive(Clone)]
pub struct KurrentDbStore {
    shared: Arc<Shared>,
    /// Held, not read: the follower runs while a clone of the store lives.
    _follower: Arc<Follower>,
}

/// What the store's clones and its follower share.
pub(crate) struct Shared {
    pub(crate) client: Client,
    pub(crate) names: Names,
    pub(crate) limits: Limits,
    /// The redacted connection string and namespace, for errors and logs.
    pub(crate) location: String,
    pub(crate) index: Mutex<Index>,
    /// The index's head, for subscriptions and for appends waiting to learn their positions.
    pub(crate) head: watch::Sender<u64>,
    /// Set when the numbering broke ([`crate::index::Broken`]); everything fails with it from then on.
    pub(crate) broken: Mutex<Option<Error>>,
    /// How the follower of `$all` is doing, for a node's `/readyz`.
    pub(crate) health: Health,
}

impl KurrentDbStore {
    /// Connects, numbers the store's events already in the database, and starts following `$all`.
    pub async fn open(options: Options) -> Result<Self, OpenError> {
        let names = Names::new(&options.namespace)?;
        let shown = names::redact(&options.connection);
        let invalid = |reason: String| OpenError::Connection { connection: shown.clone(), reason };
        let settings: ClientSettings = options
            .connection
            .parse()
            .map_err(|e: kurrentdb::ClientSettingsParseError| invalid(names::hide(e.message(), &options.connection)))?;
        let client = Client::new(settings).map_err(|e| invalid(names::hide(&e.to_string(), &options.connection)))?;
        let shared = Arc::new(Shared {
            client,
            location: format!("{shown} (namespace {})", names.namespace()),
            names,
            limits: options.limits,
            index: Mutex::new(Index::default()),
            head: watch::Sender::new(0),
            broken: Mutex::new(None),
            health: Health::default(),
        });
        shared.catch_up().await?;
        let follower = Follower::start(shared.clone());
        Ok(Self { shared, _follower: Arc::new(follower) })
    }

    /// The store's stream names.
    pub fn names(&self) -> &Names {
        &self.shared.names
    }

    /// Where the store is, without secrets.
    pub fn location(&self) -> &str {
        &self.shared.location
    }

    /// How the follower of `$all` is doing: running once its subscription is confirmed, retrying while it
    /// is down (appends then wait, up to [`crate::follow::INDEX_WAIT`], to learn their positions), stopped when the
    /// numbering broke (the store is then corrupt, and says so on every call).
    pub fn health(&self) -> Health {
        self.shared.health.clone()
    }
}

/// KurrentDB's place of a record, as the index keeps it.
pub(crate) fn at(position: kurrentdb::Position) -> At {
    At { commit: position.commit, prepare: position.prepare }
}

/// A place the index keeps, as KurrentDB takes it.
pub(crate) fn position(at: At) -> kurrentdb::Position {
    kurrentdb::Position { commit: at.commit, prepare: at.prepare }
}

impl Shared {
    pub(crate) fn unavailable(&self, error: &kurrentdb::Error) -> Error {
        let reason = match error {
            kurrentdb::Error::AccessDenied => "access denied: the connection string's user may not do this".to_owned(),
            other => other.to_string(),
        };
        Error::Unavailable { location: self.location.clone(), reason }
    }

    pub(crate) fn check(&self) -> Result<(), Error> {
        match &*self.broken.lock().expect("broken lock") {
            Some(error) => Err(error.clone()),
            None => Ok(()),
        }
    }

    /// Hands `each` the events of `$all` from `start` on (inclusive) of streams with `prefix`, up to `count`
    /// of them, one at a time as they arrive (a page of large events is never held whole), until it answers
    /// `false`. Returns how many it was handed.
    pub(crate) async fn scan(
        &self,
        start: StreamPosition<kurrentdb::Position>,
        prefix: &str,
        count: usize,
        mut each: impl FnMut(RecordedEvent) -> Result<bool, Error>,
    ) -> Result<usize, Error> {
        let filter = SubscriptionFilter::on_stream_name().add_prefix(prefix);
        let options = ReadAllOptions::default().position(start).forwards().filter(filter).max_count(count);
        let mut read = self.client.read_all(&options).await.map_err(|e| self.unavailable(&e))?;
        let mut fetched = 0;
        while let Some(event) = read.next().await.map_err(|e| self.unavailable(&e))? {
            let Some(event) = event.event else { continue };
            fetched += 1;
            if !each(event)? {
                break;
            }
        }
        Ok(fetched)
    }

    /// Up to `count` events of a KurrentDB stream as `options` say; none when it does not exist.
    async fn read_raw(&self, kurrent: &str, options: ReadStreamOptions) -> Result<Vec<RecordedEvent>, Error> {
        let mut read = match self.client.read_stream(kurrent, &options).await {
            Ok(read) => read,
            Err(kurrentdb::Error::ResourceNotFound) => return Ok(Vec::new()),
            Err(e) => return Err(self.unavailable(&e)),
        };
        let mut events = Vec::new();
        loop {
            match read.next().await {
                Ok(Some(event)) => events.extend(event.event),
                Ok(None) | Err(kurrentdb::Error::ResourceNotFound) => return Ok(events),
                Err(kurrentdb::Error::ResourceDeleted) => {
                    return Err(Error::Corrupt {
                        location: kurrent.to_owned(),
                        detail: "the stream was deleted in KurrentDB".into(),
                    });
                }
                Err(e) => return Err(self.unavailable(&e)),
            }
        }
    }

    /// The last event of a KurrentDB stream.
    async fn read_last(&self, kurrent: &str) -> Result<Option<RecordedEvent>, Error> {
        let options = ReadStreamOptions::default().position(StreamPosition::End).backwards().max_count(1);
        Ok(self.read_raw(kurrent, options).await?.pop())
    }

    /// Saves a snapshot's or checkpoint's record in `kurrent` unless the one there is further (`at` greater).
    async fn save(&self, kurrent: &str, event_type: &str, saved: SavedAt, state: Bytes) -> Result<(), Error> {
        for _ in 0..SAVE_TRIES {
            let last = self.read_last(kurrent).await?;
            let expected = match &last {
                Some(event) => {
                    if record::saved_at(kurrent, &event.custom_metadata)?.at > saved.at {
                        return Ok(());
                    }
                    StreamState::StreamRevision(event.revision)
                }
                None => {
                    // Only the latest is ever read: KurrentDB's scavenge may drop the rest.
                    let keep_one = StreamMetadata::builder().max_count(1).build();
                    self.client
                        .set_stream_metadata(kurrent, &AppendToStreamOptions::default(), &keep_one)
                        .await
                        .map_err(|e| self.unavailable(&e))?;
                    StreamState::NoStream
                }
            };
            let record = record::to_saved(event_type, saved, state.clone());
            let options = AppendToStreamOptions::default().stream_state(expected);
            match self.client.append_to_stream(kurrent, &options, record).await {
                Ok(_) => return Ok(()),
                Err(kurrentdb::Error::WrongExpectedVersion { .. }) => continue,
                Err(e) => return Err(self.unavailable(&e)),
            }
        }
        Err(Error::Unavailable {
            location: kurrent.to_owned(),
            reason: format!("{SAVE_TRIES} saves in a row lost the race to other writers"),
        })
    }

    /// The saved record of `kurrent`: where it is and its state.
    async fn load(&self, kurrent: &str) -> Result<Option<(SavedAt, Bytes)>, Error> {
        let Some(event) = self.read_last(kurrent).await? else { return Ok(None) };
        Ok(Some((record::saved_at(kurrent, &event.custom_metadata)?, event.data)))
    }
}

/// The Weft event of a record read from one of the store's streams.
fn envelope(event: RecordedEvent, stream: StreamName, position: u64) -> Result<Envelope, Error> {
    let stored = Stored {
        kurrent_stream: event.stream_id(),
        id: event.id,
        revision: event.revision,
        event_type: &event.event_type,
        data: event.data.clone(),
        metadata: &event.custom_metadata,
    };
    record::to_envelope(stored, stream, position)
}

#[async_trait]
impl EventRead for KurrentDbStore {
    async fn read_stream(
        &self,
        stream: &StreamName,
        from: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<Envelope>, Error> {
        let shared = &self.shared;
        shared.limits.check_page(limit)?;
        shared.check()?;
        let options = match direction {
            Direction::Forwards => ReadStreamOptions::default().position(StreamPosition::Position(from.max(1) - 1)),
            Direction::Backwards if from == 0 => return Ok(Vec::new()),
            Direction::Backwards if from == u64::MAX => ReadStreamOptions::default().position(StreamPosition::End),
            Direction::Backwards => ReadStreamOptions::default().position(StreamPosition::Position(from - 1)),
        };
        let options = match direction {
            Direction::Forwards => options.forwards(),
            Direction::Backwards => options.backwards(),
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let events = shared.read_raw(&shared.names.events(stream), options.max_count(limit)).await?;
        let mut out = Vec::with_capacity(events.len());
        for event in events {
            let position = shared.position_of(stream, event.revision + 1).await?;
            out.push(envelope(event, stream.clone(), position)?);
        }
        Ok(out)
    }

    async fn read_all(&self, from: u64, limit: usize) -> Result<Vec<Envelope>, Error> {
        let shared = &self.shared;
        shared.limits.check_page(limit)?;
        shared.check()?;
        let from = from.max(1);
        let (head, seek) = {
            let index = shared.index.lock().expect("index lock");
            (index.head(), index.seek(from))
        };
        let Some(anchor) = seek.filter(|_| limit > 0) else { return Ok(Vec::new()) };
        let want = (limit as u64).min(head - from + 1) as usize;
        let mut out = Vec::with_capacity(want);
        let mut walk = Walk::new(anchor, from);
        loop {
            let start = StreamPosition::Position(position(walk.resume_at()));
            let ask = walk.to_ask(want - out.len());
            let fetched = shared
                .scan(start, shared.names.events_prefix(), ask, |event| {
                    let stream = shared.names.stream_of(event.stream_id());
                    let step = walk.step(at(event.position), event.id, stream.is_some()).map_err(|moved| {
                        Error::Corrupt { location: shared.location.clone(), detail: moved.to_string() }
                    })?;
                    if let (Step::Keep(position), Some(stream)) = (step, stream) {
                        out.push(envelope(event, stream, position)?);
                    }
                    Ok(out.len() < want)
                })
                .await?;
            if out.len() == want || fetched < ask {
                return Ok(out);
            }
        }
    }

    async fn stream_version(&self, stream: &StreamName) -> Result<u64, Error> {
        self.shared.check()?;
        Ok(self.shared.read_last(&self.shared.names.events(stream)).await?.map_or(0, |e| e.revision + 1))
    }

    async fn head(&self) -> Result<u64, Error> {
        self.shared.check()?;
        Ok(self.shared.index.lock().expect("index lock").head())
    }

    async fn load_snapshot(&self, stream: &StreamName) -> Result<Option<Snapshot>, Error> {
        let loaded = self.shared.load(&self.shared.names.snapshots(stream)).await?;
        Ok(loaded.map(|(saved, payload)| Snapshot {
            stream: stream.clone(),
            version: saved.at,
            schema_version: saved.schema_version,
            payload,
        }))
    }

    async fn load_checkpoint(&self, name: &StreamName) -> Result<Option<Checkpoint>, Error> {
        let loaded = self.shared.load(&self.shared.names.checkpoint(name)).await?;
        Ok(loaded.map(|(saved, state)| Checkpoint { name: name.clone(), position: saved.at, state }))
    }

    async fn checkpoint_names(&self) -> Result<Vec<StreamName>, Error> {
        let shared = &self.shared;
        let prefix = shared.names.checkpoints_prefix();
        let mut names = BTreeSet::new();
        let mut seen: Option<At> = None;
        loop {
            let start = seen.map_or(StreamPosition::Start, |s| StreamPosition::Position(position(s)));
            let fetched = shared
                .scan(start, prefix, CATCH_UP_PAGE, |event| {
                    let here = at(event.position);
                    if seen.is_none_or(|s| here > s) {
                        seen = Some(here);
                        names.extend(shared.names.checkpoint_of(event.stream_id()));
                    }
                    Ok(true)
                })
                .await?;
            if fetched < CATCH_UP_PAGE {
                return Ok(names.into_iter().collect());
            }
        }
    }

    fn subscribe_all(&self, from: u64) -> Subscription {
        Subscription::new(Arc::new(self.clone()), self.shared.head.subscribe(), from)
    }

    fn limits(&self) -> Limits {
        self.shared.limits
    }
}

#[async_trait]
impl EventWrite for KurrentDbStore {
    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended, Error> {
        let shared = &self.shared;
        shared.limits.check_append(&events)?;
        shared.check()?;
        let count = events.len() as u64;
        let now = Timestamp::now();
        let records: Vec<EventData> = events.into_iter().map(|e| record::to_record(e, now)).collect();
        let options = AppendToStreamOptions::default().stream_state(record::stream_state(expected));
        let written = match shared.client.append_to_stream(shared.names.events(stream), &options, records).await {
            Ok(written) => written,
            Err(kurrentdb::Error::WrongExpectedVersion { current, .. }) => {
                return Err(Error::Conflict { stream: stream.clone(), expected, actual: record::version_of(current) });
            }
            Err(e) => return Err(shared.unavailable(&e)),
        };
        let version = written.next_expected_version + 1;
        let first_position = shared.position_of(stream, version + 1 - count).await?;
        let last_position = shared.position_of(stream, version).await?;
        Ok(Appended { version, first_position, last_position })
    }

    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<(), Error> {
        let shared = &self.shared;
        shared.limits.check_snapshot(&snapshot)?;
        let actual = self.stream_version(&snapshot.stream).await?;
        if snapshot.version > actual {
            return Err(Error::SnapshotAhead { stream: snapshot.stream, version: snapshot.version, actual });
        }
        let saved = SavedAt { at: snapshot.version, schema_version: snapshot.schema_version };
        shared.save(&shared.names.snapshots(&snapshot.stream), SNAPSHOT_TYPE, saved, snapshot.payload).await
    }

    async fn save_checkpoint(&self, checkpoint: Checkpoint) -> Result<(), Error> {
        let shared = &self.shared;
        shared.limits.check_checkpoint(&checkpoint)?;
        let head = self.head().await?;
        if checkpoint.position > head {
            return Err(Error::CheckpointAhead { name: checkpoint.name, position: checkpoint.position, head });
        }
        let saved = SavedAt { at: checkpoint.position, schema_version: 0 };
        shared.save(&shared.names.checkpoint(&checkpoint.name), CHECKPOINT_TYPE, saved, checkpoint.state).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_string_the_client_refuses_is_a_typed_error_without_its_password() {
        for bad in ["http://admin:s3cret-pw@node:2113", "esdb://admin:s3cret-pw@node:2113?nodePreference=s3cret-pw"] {
            let error = KurrentDbStore::open(Options::new(bad)).await.err().expect("refused");
            let shown = error.to_string();
            assert!(matches!(error, OpenError::Connection { .. }), "{shown}");
            assert!(!shown.contains("s3cret-pw"), "{shown}");
        }
        let error = KurrentDbStore::open(Options { namespace: "a.b".into(), ..Options::new("esdb://node:2113") })
            .await
            .err()
            .expect("refused");
        assert!(matches!(error, OpenError::Namespace(_)), "{error}");
    }
}
