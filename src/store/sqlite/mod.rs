//! The embedded event store: an append-only log in one SQLite file, a stream index derived from it, one
//! writer thread with group commit and a pool of reader connections.
//!
//! # Files
//!
//! - `PATH`: the log, and the only source of truth: table `events` (`position`, `stream`, `version`, and
//!   the rest of the event as one checksummed [`record`]) and table `snapshots`. WAL mode; every commit is
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
//! while the writer commits. [`view`] reads the same files from another process (the operator's tools),
//! without the lock and without writing. Every record's checksum covers its position, stream and version as well as its
//! bytes, and reads check that positions and versions are dense, so a damaged file yields [`Error::Corrupt`]
//! naming the file rather than a wrong event.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use weft_events::{
    Appended, Checkpoint, Direction, Envelope, Error, EventRead, EventWrite, ExpectedVersion, Limits, NewEvent,
    Snapshot, StreamName, Subscription,
};

pub mod index;
pub mod view;
pub mod writer;

use crate::store::record;
use index::{StreamTail, Tail};
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
        let tail = Tail::new(indexed_through);

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
            counters: counters.clone(),
            max_commit_events: options.max_commit_events.max(1),
            versions: std::collections::HashMap::new(),
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
        self.shared.readers.run(move |conn, readers| select_all(conn, &readers.location, from.max(1), limit)).await
    }

    async fn stream_version(&self, stream: &StreamName) -> Result<u64, Error> {
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

    async fn load_checkpoint(&self, name: &StreamName) -> Result<Option<Checkpoint>, Error> {
        let name = name.clone();
        self.shared.readers.run(move |conn, readers| load_checkpoint(conn, &readers.location, name)).await
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
    #[tracing::instrument(level = "debug", skip(self, events), fields(store = %self.shared.location, events = events.len()))]
    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended, Error> {
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

/// Reads up to `limit` events of a stream: the versions wanted come from the tail where it has them and
/// from the index file before that; the events come from the log, and each must be where the index says.
fn read_stream(
    conn: &Connection,
    readers: &Readers,
    stream: &StreamName,
    tail: Option<StreamTail>,
    from: u64,
    direction: Direction,
    limit: usize,
) -> Result<Vec<Envelope>, Error> {
    let location = readers.location.as_str();
    let index_location = readers.index_location.as_str();
    // One read transaction over both files, so that the index and the log are read at one moment.
    let tx = conn.unchecked_transaction().map_err(|e| sql_error(location, e))?;
    let last = match &tail {
        Some(t) => t.last_version(),
        None => index::file_version(&tx, index_location, "idx.", stream)?,
    };
    let (low, high) = match direction {
        Direction::Forwards => {
            let low = from.max(1);
            (low, last.min(low.saturating_add(limit as u64 - 1)))
        }
        Direction::Backwards => {
            let high = from.min(last);
            (high.saturating_sub(limit as u64 - 1).max(1), high)
        }
    };
    if low > high {
        return Ok(Vec::new());
    }
    let tail_first = tail.as_ref().map_or(u64::MAX, |t| t.first_version);
    let mut events = Vec::with_capacity((high - low + 1) as usize);
    let mut names = record::Names::default();
    if low < tail_first {
        let mut select = tx
            .prepare_cached(
                "SELECT e.position, e.stream, e.version, e.record FROM idx.stream_events s \
                 JOIN events e ON e.position = s.position \
                 WHERE s.stream = ?1 AND s.version BETWEEN ?2 AND ?3 ORDER BY s.version",
            )
            .map_err(|e| sql_error(location, e))?;
        let mut rows = select
            .query(params![stream.as_str(), to_sql(low), to_sql(high.min(tail_first - 1))])
            .map_err(|e| sql_error(location, e))?;
        while let Some(row) = rows.next().map_err(|e| sql_error(location, e))? {
            events.push(decode_row(row, location, &mut names)?);
        }
    }
    if let Some(t) = &tail {
        let mut select = tx
            .prepare_cached("SELECT position, stream, version, record FROM events WHERE position = ?1")
            .map_err(|e| sql_error(location, e))?;
        for version in low.max(t.first_version)..=high {
            let position = t.positions[(version - t.first_version) as usize];
            let row = select
                .query_row([to_sql(position)], |row| Ok(decode_row(row, location, &mut names)))
                .optional()
                .map_err(|e| sql_error(location, e))?;
            match row {
                Some(event) => events.push(event?),
                None => {
                    return Err(corrupt(
                        location,
                        format!("{stream} version {version} is missing from position {position}"),
                    ));
                }
            }
        }
    }
    // Every version from low to high, of this stream, in order: anything else means the index or the log
    // is damaged.
    let dense = events.len() as u64 == high - low + 1
        && events.iter().zip(low..).all(|(e, v)| e.version == v && &e.stream == stream);
    if !dense {
        return Err(corrupt(
            index_location,
            format!(
                "stream {stream} versions {low}..={high} were asked for, the index led to {:?}",
                events.iter().map(|e| (e.stream.as_str(), e.version)).collect::<Vec<_>>()
            ),
        ));
    }
    if direction == Direction::Backwards {
        events.reverse();
    }
    Ok(events)
}

fn load_snapshot(conn: &Connection, location: &str, stream: StreamName) -> Result<Option<Snapshot>, Error> {
    let row = conn
        .query_row(
            "SELECT version, schema_version, payload, checksum FROM snapshots WHERE stream = ?1",
            [stream.as_str()],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, Vec<u8>>(2)?, r.get::<_, i64>(3)?)),
        )
        .optional()
        .map_err(|e| sql_error(location, e))?;
    let Some((version, schema_version, payload, checksum)) = row else { return Ok(None) };
    let snapshot = Snapshot {
        stream: stream.clone(),
        version: from_sql(version),
        schema_version: u32::try_from(schema_version).unwrap_or(u32::MAX),
        payload: Bytes::from(payload),
    };
    if i64::from(snapshot_checksum(&snapshot)) != checksum || version < 0 || schema_version < 0 {
        return Err(corrupt(location, format!("the snapshot of {stream} fails its checksum")));
    }
    Ok(Some(snapshot))
}

fn load_checkpoint(conn: &Connection, location: &str, name: StreamName) -> Result<Option<Checkpoint>, Error> {
    let row = conn
        .query_row("SELECT position, state, checksum FROM checkpoints WHERE name = ?1", [name.as_str()], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?, r.get::<_, i64>(2)?))
        })
        .optional()
        .map_err(|e| sql_error(location, e))?;
    let Some((position, state, checksum)) = row else { return Ok(None) };
    let checkpoint = Checkpoint { name: name.clone(), position: from_sql(position), state: Bytes::from(state) };
    if i64::from(checkpoint_checksum(&checkpoint)) != checksum || position < 0 {
        return Err(corrupt(location, format!("checkpoint {name} fails its checksum")));
    }
    Ok(Some(checkpoint))
}

/// Settings of every reader connection: read only; check cell sizes as pages are read (cheap, catches
/// damage early); and read through a memory map of up to 1 TiB of address space instead of copying each
/// page with `pread` (readers never write, so the map is read-only).
const READER_PRAGMAS: &str = "PRAGMA query_only = ON; PRAGMA cell_size_check = ON; \
                              PRAGMA mmap_size = 1099511627776; PRAGMA idx.mmap_size = 1099511627776;";

/// The reader connections: each opens the log with the index file attached as `idx`.
struct Readers {
    path: PathBuf,
    index_path: PathBuf,
    location: String,
    /// The index file, for errors.
    index_location: String,
    idle: Mutex<Vec<Connection>>,
    permits: Semaphore,
    size: usize,
}

impl Readers {
    /// Runs `f` with a reader connection on the blocking pool.
    async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Connection, &Readers) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let permit = self.permits.acquire().await.map_err(|_| Error::Closed)?;
        let readers = self.clone();
        let result = tokio::task::spawn_blocking(move || {
            let idle = readers.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let conn = match idle {
                Some(conn) => conn,
                None => readers.open()?,
            };
            let result = f(&conn, &readers);
            readers.idle.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
            result
        })
        .await
        .unwrap_or_else(|e| {
            Err(Error::Unavailable { location: self.location.clone(), reason: format!("a read failed: {e}") })
        });
        drop(permit);
        result
    }

    fn open(&self) -> Result<Connection, Error> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&self.path, flags).map_err(|e| sql_error(&self.location, e))?;
        conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS))
            .map_err(|e| sql_error(&self.location, e))?;
        let index = self.index_path.to_str().ok_or_else(|| Error::Unavailable {
            location: self.location.clone(),
            reason: "the index file's path is not UTF-8".into(),
        })?;
        conn.execute("ATTACH DATABASE ?1 AS idx", [index]).map_err(|e| sql_error(&self.index_location, e))?;
        conn.execute_batch(READER_PRAGMAS).map_err(|e| sql_error(&self.location, e))?;
        Ok(conn)
    }

    /// Waits for running reads, then closes every connection and refuses new reads.
    async fn close(&self) {
        if let Ok(all) = self.permits.acquire_many(self.size as u32).await {
            all.forget();
        }
        self.permits.close();
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// `PATH-index`: the stream index beside the log.
fn index_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push("-index");
    PathBuf::from(name)
}

pub(crate) fn configure(conn: &Connection, synchronous: Synchronous) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::InvalidParameterName(format!("journal_mode is {mode}, not wal")));
    }
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {}; PRAGMA cell_size_check = ON; PRAGMA foreign_keys = OFF;",
        synchronous.pragma()
    ))
}

/// Takes the exclusive lock on `PATH.lock`, so that a second process cannot open the same store for writing.
fn lock_file(path: &Path) -> Result<File, String> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lock_path = PathBuf::from(name);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(format!("another process has it open (it holds the lock on {})", lock_path.display()))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(format!("cannot lock {}: {e}", lock_path.display())),
    }
}

/// The size of a database file according to its header: (page size, pages), or `None` where the header's
/// page count is not valid (SQLite then goes by the file size).
fn header_size(header: &[u8; 100]) -> (u64, Option<u64>) {
    let raw = u16::from_be_bytes([header[16], header[17]]);
    let page_size = if raw == 1 { 65_536 } else { u64::from(raw) };
    let change_counter = &header[24..28];
    let valid_for = &header[92..96];
    let pages = u64::from(u32::from_be_bytes([header[28], header[29], header[30], header[31]]));
    (page_size, (change_counter == valid_for && pages > 0).then_some(pages))
}

/// Checks the first 100 bytes of an existing file before SQLite touches it: SQLite's magic, a sane page size,
/// and our application id.
fn check_header(path: &Path, location: &str) -> Result<(), Error> {
    let Ok(mut file) = File::open(path) else { return Ok(()) }; // a new store
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len == 0 {
        return Ok(());
    }
    let mut header = [0u8; 100];
    if len < 100 || file.read_exact(&mut header).is_err() {
        return Err(corrupt(location, format!("the file is {len} bytes, shorter than a SQLite header")));
    }
    if &header[..16] != b"SQLite format 3\0" {
        return Err(corrupt(location, "the file does not start with SQLite's header".into()));
    }
    let (page_size, _) = header_size(&header);
    if !(512..=65_536).contains(&page_size) || !page_size.is_power_of_two() {
        return Err(corrupt(location, format!("the header gives a page size of {page_size}")));
    }
    let app = i32::from_be_bytes([header[68], header[69], header[70], header[71]]);
    if app != APPLICATION_ID && app != 0 {
        return Err(corrupt(location, format!("the file is a SQLite database of another application (id {app:#x})")));
    }
    Ok(())
}

/// The tables must be exactly the ones `schema` creates: a damaged schema text in a file would otherwise
/// surface later as baffling "no such column" errors.
pub(crate) fn check_schema(conn: &Connection, schema: &str) -> Result<(), String> {
    let mut expected: Vec<String> = schema
        .split(';')
        .map(str::trim)
        .filter(|statement| statement.starts_with("CREATE"))
        .map(|statement| statement.replacen(" IF NOT EXISTS", "", 1))
        .collect();
    expected.sort();
    let mut found: Vec<String> = conn
        .prepare("SELECT sql FROM sqlite_schema WHERE sql IS NOT NULL")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(|e| format!("cannot read the schema: {e}"))?;
    found.sort();
    if found != expected {
        return Err(format!("its schema is not Weft's: found {found:?}"));
    }
    Ok(())
}

/// After the WAL has been folded into the file, the file must hold every page its header counts: a shorter
/// file has been truncated.
fn check_size(conn: &Connection, path: &Path, location: &str) -> Result<(), Error> {
    let (busy, _, _): (i64, i64, i64) = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .map_err(|e| sql_error(location, e))?;
    if busy != 0 {
        // Another process is reading; the file may legitimately lag the WAL. Reads still check every row.
        return Ok(());
    }
    let mut file = File::open(path).map_err(|e| corrupt(location, format!("cannot reopen: {e}")))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut header = [0u8; 100];
    file.read_exact(&mut header).map_err(|e| corrupt(location, format!("cannot read the header: {e}")))?;
    let (page_size, pages) = header_size(&header);
    if len % page_size != 0 {
        return Err(corrupt(
            location,
            format!("the file is {len} bytes, not a whole number of {page_size}-byte pages"),
        ));
    }
    if let Some(pages) = pages
        && len < pages * page_size
    {
        return Err(corrupt(
            location,
            format!(
                "truncated: the header counts {pages} pages ({} bytes) but the file has {len} bytes",
                pages * page_size
            ),
        ));
    }
    Ok(())
}

/// Reads the last event and checks it, and that positions start at 1. Returns the head position.
fn check_tail(conn: &Connection, location: &str) -> Result<u64, Error> {
    // Two queries: SQLite answers min() or max() alone from the end of the B-tree, but both in one query
    // with a scan of the whole table.
    let ends = ["SELECT min(position) FROM events", "SELECT max(position) FROM events"]
        .map(|sql| conn.query_row(sql, [], |r| r.get::<_, Option<i64>>(0)).map_err(|e| sql_error(location, e)));
    let [min, max] = ends;
    let (min, max) = (min?, max?);
    let (Some(min), Some(max)) = (min, max) else { return Ok(0) };
    if min != 1 || max < 1 {
        return Err(corrupt(location, format!("positions run from {min} to {max}, not from 1")));
    }
    let head = from_sql(max);
    let last = select_all(conn, location, head, 1)?;
    if last.len() != 1 {
        return Err(corrupt(location, format!("the last event, at position {head}, cannot be read")));
    }
    Ok(head)
}

fn select_all(conn: &Connection, location: &str, from: u64, limit: usize) -> Result<Vec<Envelope>, Error> {
    let mut select = conn
        .prepare_cached(
            "SELECT position, stream, version, record FROM events WHERE position >= ?1 ORDER BY position LIMIT ?2",
        )
        .map_err(|e| sql_error(location, e))?;
    let mut rows = select.query(params![to_sql(from), limit as i64]).map_err(|e| sql_error(location, e))?;
    let mut events = Vec::with_capacity(limit.min(1024));
    let mut names = record::Names::default();
    while let Some(row) = rows.next().map_err(|e| sql_error(location, e))? {
        let event = decode_row(row, location, &mut names)?;
        // Positions are dense from 1, so the page must start at `from` and run without a gap.
        let expected = from + events.len() as u64;
        if event.position != expected {
            return Err(corrupt(
                location,
                format!("{MISSING_POSITION} {expected} (the next is at {})", event.position),
            ));
        }
        events.push(event);
    }
    Ok(events)
}

/// Builds an envelope from a `position, stream, version, record` row, checking the record.
fn decode_row(row: &rusqlite::Row<'_>, location: &str, names: &mut record::Names) -> Result<Envelope, Error> {
    let position: i64 = row.get(0).map_err(|e| sql_error(location, e))?;
    let bad = |what: String| corrupt(location, format!("the event at position {position} {what}"));
    let column = |i: usize| row.get_ref(i).map_err(|e| bad(e.to_string()));
    let stream = column(1)?.as_bytes().map_err(|e| bad(e.to_string()))?;
    let version = column(2)?.as_i64().map_err(|e| bad(e.to_string()))?;
    let record = column(3)?.as_blob().map_err(|e| bad(e.to_string()))?;
    if position < 1 || version < 1 {
        return Err(bad(format!("has version {version}")));
    }
    record::decode(names, from_sql(position), stream, from_sql(version), record).map_err(bad)
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

#[cfg(test)]
mod tests {
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
        std::fs::write(
            &path,
            "just some text that is long enough to look like it could be a header, but is not at all",
        )
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
}
