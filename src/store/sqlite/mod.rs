//! The embedded event store: an append-only log in one SQLite file, a stream index derived from it, one
//! writer thread with group commit and a pool of reader connections.
//!
//! # Files
//!
//! - `PATH`: the log, and the only source of truth: table `events` (`position`, `stream`, `version`, and
//!   the rest of the event as one checksummed [`crate::store::record`]) and table `snapshots`. WAL mode; every commit is
//!   fsynced under the default [`Synchronous::Full`].
//! - `PATH-index`: the stream index, `(stream, version) -> position`, derived from the log and rebuilt from
//!   it when damaged or missing. See [`index`].
//! - `PATH.lock`: held with an exclusive lock while the store is open, so that two processes never write
//!   one store.
//! - SQLite's own `-wal` and `-shm` files beside each.
//!
//! # Writing
//!
//! See [`writer`]: one thread, group commit, each append decided on its own, answered after its commit.
//!
//! # Reading
//!
//! Readers use their own connections on the blocking thread pool; WAL mode gives them a consistent snapshot
//! while the writer commits. The events committed last are also kept in memory (`recent.rs`), where the subscriptions
//! following the head read them without a trip to the file. [`view`] reads the same files from another process (the operator's tools),
//! without the lock and without writing. Every record's checksum covers its position, stream and version as well as its
//! bytes, and reads check that positions and versions are dense, so a damaged file yields [`Error::Corrupt`]
//! naming the file rather than a wrong event.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use weft_events::{
    Appended, Checkpoint, Direction, Envelope, Error, EventRead, EventWrite, ExpectedVersion, Limits, NewEvent,
    Snapshot, StreamName, Subscription,
};

mod files;
pub mod index;
mod read;
mod recent;
#[cfg(test)]
mod tests;
pub mod view;
pub mod writer;

use files::{check_header, check_size, check_tail, index_path, lock_file};
pub(crate) use files::{check_schema, configure, stable_plans};
use index::{StreamTail, Tail};
use read::{Readers, load_checkpoint, load_snapshot, read_latest, read_stream, select_all};
use writer::{Outcome, Reply, Request, Writer};

/// `PRAGMA application_id` of a Weft log: "WEFT" in ASCII. A file with another id is not ours.
const APPLICATION_ID: i32 = 0x5745_4654;

/// How an [`Error::Corrupt`] of a read begins when the log lacks a position (rather than holding a bad record).
pub const MISSING_POSITION: &str = "no event at position";

/// `PRAGMA user_version`: the layout of the tables below. Bumped, with a migration, when it changes.
const SCHEMA_VERSION: i32 = 1;

/// Default most events in one group commit: large enough to amortise the fsync over hundreds of appends,
/// small enough that one commit takes milliseconds, not seconds.
pub const DEFAULT_MAX_COMMIT_EVENTS: usize = 10_000;

/// Default appends waiting for the writer before appenders wait too (back-pressure).
pub const DEFAULT_QUEUE_CAPACITY: usize = 4096;

/// Default reader connections.
pub const DEFAULT_READERS: usize = 4;

/// How long a connection waits on SQLite's own file locks (another process checkpointing, say) before it
/// gives up.
const BUSY_TIMEOUT_MS: u64 = 5_000;

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    position INTEGER PRIMARY KEY,
    stream   TEXT    NOT NULL,
    version  INTEGER NOT NULL,
    record   BLOB    NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS snapshots (
    stream         TEXT PRIMARY KEY,
    version        INTEGER NOT NULL,
    schema_version INTEGER NOT NULL,
    payload        BLOB    NOT NULL,
    checksum       INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (
    name     TEXT PRIMARY KEY,
    position INTEGER NOT NULL,
    state    BLOB    NOT NULL,
    checksum INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
";

/// How hard SQLite works to make a commit durable (`PRAGMA synchronous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Synchronous {
    /// fsync the WAL on every commit: an acknowledged append survives power loss. The default.
    #[default]
    Full,
    /// fsync only at checkpoints: an acknowledged append survives a crash of the process, but the last
    /// commits may be lost on power loss.
    Normal,
    /// Never fsync. For benchmarks and throw-away stores only.
    Off,
}

impl Synchronous {
    fn pragma(self) -> &'static str {
        match self {
            Self::Full => "FULL",
            Self::Normal => "NORMAL",
            Self::Off => "OFF",
        }
    }
}

/// Options of the SQLite store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Options {
    /// The log file; the index and lock files go beside it. Its folder is created if missing.
    pub path: PathBuf,
    /// Durability of commits. Default `full`.
    #[serde(default)]
    pub synchronous: Synchronous,
    /// Limits on appends and reads.
    #[serde(default)]
    pub limits: Limits,
    /// Most events in one group commit. Default 10,000.
    #[serde(default = "default_max_commit_events")]
    pub max_commit_events: usize,
    /// Appends that may wait for the writer before appenders wait too. Default 4096.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// Reader connections, so at most this many reads run at once. Default 4.
    #[serde(default = "default_readers")]
    pub readers: usize,
}

fn default_max_commit_events() -> usize {
    DEFAULT_MAX_COMMIT_EVENTS
}
fn default_queue_capacity() -> usize {
    DEFAULT_QUEUE_CAPACITY
}
fn default_readers() -> usize {
    DEFAULT_READERS
}

impl Options {
    /// The defaults for a store at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            synchronous: Synchronous::default(),
            limits: Limits::default(),
            max_commit_events: DEFAULT_MAX_COMMIT_EVENTS,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            readers: DEFAULT_READERS,
        }
    }
}

/// Counters of the writer, for benchmarks and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Transactions committed.
    pub commits: u64,
    /// Appends that succeeded.
    pub appends: u64,
    /// Events appended.
    pub events: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    commits: AtomicU64,
    appends: AtomicU64,
    events: AtomicU64,
}

/// A cheap-to-clone handle to an open SQLite store. The store closes when the last handle (including those
/// held by subscriptions) drops, or at [`SqliteStore::close`].
#[derive(Clone)]
pub struct SqliteStore {
    shared: Arc<Shared>,
}

struct Shared {
    /// The log file, for errors and logs.
    location: String,
    limits: Limits,
    requests: mpsc::Sender<Request>,
    head: watch::Receiver<u64>,
    tail: Arc<Tail>,
    recent: Arc<recent::Recent>,
    readers: Arc<Readers>,
    counters: Arc<Counters>,
    /// The writer and indexer threads, joined at close.
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// The exclusive lock on `PATH.lock`, held until the store closes.
    lock: Mutex<Option<File>>,
}

impl SqliteStore {
    /// Opens (or creates) the store at `options.path`, checks it, brings its index up to date and starts
    /// its threads. Blocks while it does; call it before serving, or from a blocking task.
    pub fn open(options: Options) -> Result<Self, Error> {
        let path = options.path.clone();
        let location = path.display().to_string();
        let fail = |reason: String| Error::Unavailable { location: location.clone(), reason };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| fail(format!("cannot create {}: {e}", parent.display())))?;
        }
        let lock = lock_file(&path).map_err(fail)?;
        check_header(&path, &location)?;

        let mut conn = Connection::open(&path).map_err(|e| sql_error(&location, e))?;
        configure(&conn, options.synchronous).map_err(|e| sql_error(&location, e))?;
        let tx = conn.transaction().map_err(|e| sql_error(&location, e))?;
        tx.execute_batch(SCHEMA).map_err(|e| sql_error(&location, e))?;
        tx.pragma_update(None, "application_id", APPLICATION_ID).map_err(|e| sql_error(&location, e))?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION).map_err(|e| sql_error(&location, e))?;
        tx.commit().map_err(|e| sql_error(&location, e))?;
        check_schema(&conn, SCHEMA).map_err(|detail| corrupt(&location, detail))?;
        check_size(&conn, &path, &location)?;
        let head = check_tail(&conn, &location)?;

        // The writer's connection never checkpoints; a thread of its own does (see `writer`).
        conn.pragma_update(None, "wal_autocheckpoint", 0).map_err(|e| sql_error(&location, e))?;
        let checkpoints = Connection::open(&path).map_err(|e| sql_error(&location, e))?;
        checkpoints
            .busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS))
            .map_err(|e| sql_error(&location, e))?;

        let index_path = index_path(&path);
        let index_location = index_path.display().to_string();
        let (index_conn, indexed_through) = index::open(&index_path, &conn, head, &location)?;
        let lookups = Connection::open(&index_path).map_err(|e| sql_error(&index_location, e))?;
        lookups
            .busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS))
            .map_err(|e| sql_error(&index_location, e))?;
        stable_plans(&lookups).map_err(|e| sql_error(&index_location, e))?;
        let tail = Tail::new(indexed_through);
        let recent = Arc::new(recent::Recent::default());

        let (head_tx, head_rx) = watch::channel(head);
        let (requests, queue) = mpsc::channel(options.queue_capacity.max(1));
        let counters = Arc::new(Counters::default());
        let indexer = index::Indexer { conn: index_conn, tail: tail.clone(), location: index_location.clone() };
        let writer = Writer {
            conn,
            index: lookups,
            location: location.clone(),
            index_location: index_location.clone(),
            next_position: head + 1,
            head: head_tx,
            tail: tail.clone(),
            recent: recent.clone(),
            counters: counters.clone(),
            max_commit_events: options.max_commit_events.max(1),
            checkpoints: Some(checkpoints),
            closing: Vec::new(),
        };
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(|e| fail(format!("cannot start a thread: {e}")))
        };
        let indexer = spawn("weft-store-indexer", Box::new(move || indexer.run()))?;
        let writer = spawn("weft-store-writer", Box::new(move || writer.run(queue))).inspect_err(|_| tail.close())?;
        let threads = vec![indexer, writer];
        let readers = Arc::new(Readers {
            path,
            index_path,
            location: location.clone(),
            index_location: index_location.clone(),
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(options.readers.max(1)),
            size: options.readers.max(1),
        });
        tracing::info!(store = %location, head, indexed_through, "opened the event store");
        Ok(Self {
            shared: Arc::new(Shared {
                location,
                limits: options.limits,
                requests,
                head: head_rx,
                tail,
                recent,
                readers,
                counters,
                threads: Mutex::new(threads),
                lock: Mutex::new(Some(lock)),
            }),
        })
    }

    /// The log file's path, as given.
    pub fn location(&self) -> &str {
        &self.shared.location
    }

    /// The writer's counters.
    pub fn stats(&self) -> Stats {
        let c = &self.shared.counters;
        Stats {
            commits: c.commits.load(Ordering::Relaxed),
            appends: c.appends.load(Ordering::Relaxed),
            events: c.events.load(Ordering::Relaxed),
        }
    }

    /// Waits for queued appends, stops the writer and the indexer, closes every connection and checkpoints
    /// the WAL into the files. Later calls on any handle fail with [`Error::Closed`].
    pub async fn close(&self) -> Result<(), Error> {
        self.shared.readers.close().await;
        let (reply, done) = oneshot::channel();
        if self.shared.requests.send(Request::Close { reply }).await.is_ok() {
            let _ = done.await;
        }
        let threads = std::mem::take(&mut *self.shared.threads.lock().unwrap_or_else(|p| p.into_inner()));
        let _ = tokio::task::spawn_blocking(move || threads.into_iter().for_each(|t| drop(t.join()))).await;
        // Every connection is closed: another process may open the store now.
        self.shared.lock.lock().unwrap_or_else(|p| p.into_inner()).take();
        tracing::info!(store = %self.shared.location, "closed the event store");
        Ok(())
    }

    /// Checks everything: SQLite's integrity check of both files, every record's checksum, dense positions,
    /// dense versions per stream, and that the index finds every event. Reads everything; for operators and
    /// tests. Returns the number of events.
    pub async fn verify(&self) -> Result<u64, Error> {
        let limits = self.shared.limits;
        let tail = self.shared.tail.clone();
        self.shared
            .readers
            .run(move |conn, readers| {
                let location = readers.location.as_str();
                let index_location = readers.index_location.as_str();
                for (schema, loc) in [("main", location), ("idx", index_location)] {
                    let report: String = conn
                        .query_row(&format!("PRAGMA {schema}.integrity_check(1)"), [], |r| r.get(0))
                        .map_err(|e| sql_error(loc, e))?;
                    if report != "ok" {
                        return Err(corrupt(loc, format!("integrity check: {report}")));
                    }
                }
                let mut next = 1u64;
                let mut versions = std::collections::HashMap::<StreamName, (u64, Option<StreamTail>)>::new();
                loop {
                    let page = select_all(conn, location, next, limits.max_page_size)?;
                    let Some(last) = page.last() else { break };
                    next = last.position + 1;
                    for e in page {
                        let (v, stream_tail) =
                            versions.entry(e.stream.clone()).or_insert_with(|| (0, tail.stream(&e.stream)));
                        if e.version != *v + 1 {
                            return Err(corrupt(
                                location,
                                format!("stream {} jumps from version {v} to {}", e.stream, e.version),
                            ));
                        }
                        *v = e.version;
                        let found = match stream_tail.as_ref().filter(|t| e.version >= t.first_version) {
                            Some(t) => Some(t.positions[(e.version - t.first_version) as usize]),
                            None => conn
                                .prepare_cached(
                                    "SELECT position FROM idx.stream_events WHERE stream = ?1 AND version = ?2",
                                )
                                .and_then(|mut s| {
                                    s.query_row(params![e.stream.as_str(), to_sql(e.version)], |r| r.get::<_, i64>(0))
                                        .optional()
                                })
                                .map_err(|err| sql_error(index_location, err))?
                                .map(from_sql),
                        };
                        if found != Some(e.position) {
                            return Err(corrupt(
                                index_location,
                                format!(
                                    "{} version {} is at position {}, the index says {found:?}",
                                    e.stream, e.version, e.position
                                ),
                            ));
                        }
                    }
                }
                Ok(next - 1)
            })
            .await
    }

    async fn request(&self, make: impl FnOnce(Reply) -> Request) -> Result<Outcome, Error> {
        let (reply, outcome) = oneshot::channel();
        self.shared.requests.send(make(reply)).await.map_err(|_| Error::Closed)?;
        outcome.await.map_err(|_| Error::Closed)?
    }
}

#[async_trait]
impl EventRead for SqliteStore {
    async fn read_stream(
        &self,
        stream: &StreamName,
        from: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<Envelope>, Error> {
        self.shared.limits.check_page(limit)?;
        if limit == 0 || (direction == Direction::Backwards && from == 0) {
            return Ok(Vec::new());
        }
        // Nothing after a stream's last version, which the store knows for the streams appended to lately:
        // an actor making sure it has its stream's every event asks this before each read of its state.
        if direction == Direction::Forwards && self.shared.recent.last_version(stream).is_some_and(|last| from > last) {
            return Ok(Vec::new());
        }
        // The tail first, then the file: entries leave the tail only after the file holds them, so the two
        // together are complete.
        let tail = self.shared.tail.stream(stream);
        let stream = stream.clone();
        self.shared
            .readers
            .run(move |conn, readers| read_stream(conn, readers, &stream, tail, from, direction, limit))
            .await
    }

    async fn read_all(&self, from: u64, limit: usize) -> Result<Vec<Envelope>, Error> {
        self.shared.limits.check_page(limit)?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        // A subscription at the head reads what was just committed: from memory.
        if let Some(events) = self.shared.recent.read(from.max(1), limit) {
            return Ok(events);
        }
        self.shared.readers.run(move |conn, readers| select_all(conn, &readers.location, from.max(1), limit)).await
    }

    async fn stream_version(&self, stream: &StreamName) -> Result<u64, Error> {
        if let Some(version) = self.shared.recent.last_version(stream) {
            return Ok(version);
        }
        if let Some(version) = self.shared.tail.last_version(stream) {
            return Ok(version);
        }
        let stream = stream.clone();
        self.shared
            .readers
            .run(move |conn, readers| index::file_version(conn, &readers.index_location, "idx.", &stream))
            .await
    }

    async fn head(&self) -> Result<u64, Error> {
        Ok(*self.shared.head.borrow())
    }

    async fn load_snapshot(&self, stream: &StreamName) -> Result<Option<Snapshot>, Error> {
        let stream = stream.clone();
        self.shared.readers.run(move |conn, readers| load_snapshot(conn, &readers.location, stream)).await
    }

    async fn read_latest(&self, stream: &StreamName, limit: usize) -> Result<(Option<Snapshot>, Vec<Envelope>), Error> {
        self.shared.limits.check_page(limit)?;
        if limit == 0 {
            return Ok((self.load_snapshot(stream).await?, Vec::new()));
        }
        let tail = self.shared.tail.stream(stream);
        let stream = stream.clone();
        self.shared.readers.run(move |conn, readers| read_latest(conn, readers, &stream, tail, limit)).await
    }

    async fn load_checkpoint(&self, name: &StreamName) -> Result<Option<Checkpoint>, Error> {
        let name = name.clone();
        self.shared.readers.run(move |conn, readers| load_checkpoint(conn, &readers.location, name)).await
    }

    async fn checkpoint_names(&self) -> Result<Vec<StreamName>, Error> {
        self.shared.readers.run(|conn, readers| read::checkpoint_names(conn, &readers.location)).await
    }

    fn subscribe_all(&self, from: u64) -> Subscription {
        Subscription::new(Arc::new(self.clone()), self.shared.head.clone(), from)
    }

    fn limits(&self) -> Limits {
        self.shared.limits
    }
}

#[async_trait]
impl EventWrite for SqliteStore {
    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended, Error> {
        // Held until the append is answered, not entered at each poll: nothing is logged within it, and on the
        // hot path of every command each enter costs more than it tells.
        let _span = tracing::debug_span!("append", store = "sqlite", stream = stream.as_str(), events = events.len());
        self.shared.limits.check_append(&events)?;
        let stream = stream.clone();
        match self.request(|reply| Request::Append { stream, expected, events, reply }).await? {
            Outcome::Appended(appended) => Ok(appended),
            Outcome::Saved => unreachable!("the writer answers an append with Appended"),
        }
    }

    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<(), Error> {
        self.shared.limits.check_snapshot(&snapshot)?;
        self.request(|reply| Request::Snapshot { snapshot, reply }).await.map(|_| ())
    }

    async fn save_checkpoint(&self, checkpoint: Checkpoint) -> Result<(), Error> {
        self.shared.limits.check_checkpoint(&checkpoint)?;
        self.request(|reply| Request::Checkpoint { checkpoint, reply }).await.map(|_| ())
    }
}

fn checkpoint_checksum(c: &Checkpoint) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&(c.name.as_str().len() as u64).to_le_bytes());
    h.update(c.name.as_str().as_bytes());
    h.update(&c.position.to_le_bytes());
    h.update(&c.state);
    h.finalize()
}

fn snapshot_checksum(s: &Snapshot) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&(s.stream.as_str().len() as u64).to_le_bytes());
    h.update(s.stream.as_str().as_bytes());
    h.update(&s.version.to_le_bytes());
    h.update(&s.schema_version.to_le_bytes());
    h.update(&s.payload);
    h.finalize()
}

/// SQLite integers are i64; versions and positions never reach 2^63.
fn to_sql(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn from_sql(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn corrupt(location: &str, detail: String) -> Error {
    Error::Corrupt { location: location.to_owned(), detail }
}

/// Maps a SQLite error: damage to the file is [`Error::Corrupt`], anything else [`Error::Unavailable`].
fn sql_error(location: &str, e: rusqlite::Error) -> Error {
    use rusqlite::ErrorCode::{DatabaseCorrupt, NotADatabase};
    match &e {
        rusqlite::Error::SqliteFailure(f, _) if matches!(f.code, DatabaseCorrupt | NotADatabase) => {
            corrupt(location, e.to_string())
        }
        rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::IntegralValueOutOfRange(..) => corrupt(location, e.to_string()),
        _ => Error::Unavailable { location: location.to_owned(), reason: e.to_string() },
    }
}
