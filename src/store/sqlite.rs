//! The embedded event store: one SQLite file in WAL mode, one writer thread with group commit, a pool of
//! reader connections.
//!
//! # Writing
//!
//! Every append and snapshot goes through a bounded queue to one writer thread, which owns the only write
//! connection. The writer takes the first request off the queue, then everything else already waiting (up to
//! [`Options::max_commit_events`]), and applies them all in one transaction: one fsync for the lot. Requests
//! that arrive while a commit is running wait in the queue and go into the next transaction. Each append is
//! checked on its own (a conflict fails that append only), and each caller is answered only after the
//! transaction that holds its events has committed. If the commit fails, every request in it fails with
//! [`Error::Unavailable`] and nothing of it is visible.
//!
//! # Reading
//!
//! Readers use their own connections on the blocking thread pool; WAL mode lets them read a consistent
//! snapshot while the writer commits. Every row carries a CRC-32 of all its fields, checked on every read,
//! and reads check that positions and versions are dense, so a damaged file yields [`Error::Corrupt`] naming
//! the file rather than a wrong event.
//!
//! # Files
//!
//! `PATH` (the database), `PATH-wal` and `PATH-shm` (SQLite's), and `PATH.lock`, which the store holds an
//! exclusive lock on while open, so that two processes never write one store.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use uuid::Uuid;
use weft_events::{
    Appended, Direction, Envelope, Error, EventRead, EventWrite, ExpectedVersion, Limits, NewEvent, Snapshot,
    StreamName, Subscription, Timestamp,
};

/// `PRAGMA application_id` of a Weft store: "WEFT" in ASCII. A file with another id is not ours.
const APPLICATION_ID: i32 = 0x5745_4654;

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

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    position       INTEGER PRIMARY KEY,
    stream         TEXT    NOT NULL,
    version        INTEGER NOT NULL,
    event_id       BLOB    NOT NULL,
    event_type     TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    recorded_at    INTEGER NOT NULL,
    tenant         TEXT    NOT NULL,
    correlation_id BLOB,
    causation_id   BLOB,
    actor          TEXT    NOT NULL,
    payload        BLOB    NOT NULL,
    checksum       INTEGER NOT NULL
) STRICT;
CREATE UNIQUE INDEX IF NOT EXISTS events_by_stream ON events (stream, version);
CREATE TABLE IF NOT EXISTS streams (
    stream   TEXT PRIMARY KEY,
    version  INTEGER NOT NULL,
    checksum INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS snapshots (
    stream         TEXT PRIMARY KEY,
    version        INTEGER NOT NULL,
    schema_version INTEGER NOT NULL,
    payload        BLOB    NOT NULL,
    checksum       INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
";

const EVENT_COLUMNS: &str = "position, stream, version, event_id, event_type, schema_version, recorded_at, \
                             tenant, correlation_id, causation_id, actor, payload, checksum";

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
    /// The database file. Its folder is created if missing.
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
struct Counters {
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
    /// The file, for errors and logs.
    location: String,
    limits: Limits,
    requests: mpsc::Sender<Request>,
    head: watch::Receiver<u64>,
    readers: Arc<Readers>,
    counters: Arc<Counters>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// The exclusive lock on `PATH.lock`, held until the store closes.
    lock: Mutex<Option<File>>,
}

/// What an append or snapshot asks of the writer.
enum Request {
    Append { stream: StreamName, expected: ExpectedVersion, events: Vec<NewEvent>, reply: Reply },
    Snapshot { snapshot: Snapshot, reply: Reply },
    Close { reply: oneshot::Sender<()> },
}

/// What the writer answers.
enum Outcome {
    Appended(Appended),
    Saved,
}

type Reply = oneshot::Sender<Result<Outcome, Error>>;

impl SqliteStore {
    /// Opens (or creates) the store at `options.path`, checks it, and starts its writer. Blocks while it
    /// checks the file; call it before serving, or from a blocking task.
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
        check_size(&conn, &path, &location)?;
        let head = check_tail(&conn, &location)?;

        let (head_tx, head_rx) = watch::channel(head);
        let (requests, queue) = mpsc::channel(options.queue_capacity.max(1));
        let counters = Arc::new(Counters::default());
        let writer = Writer {
            conn,
            location: location.clone(),
            next_position: head + 1,
            head: head_tx,
            counters: counters.clone(),
            max_commit_events: options.max_commit_events.max(1),
        };
        let thread = std::thread::Builder::new()
            .name("weft-store-writer".into())
            .spawn(move || writer.run(queue))
            .map_err(|e| fail(format!("cannot start the writer thread: {e}")))?;
        let readers = Arc::new(Readers {
            path,
            location: location.clone(),
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(options.readers.max(1)),
            size: options.readers.max(1),
        });
        tracing::info!(store = %location, head, "opened the event store");
        Ok(Self {
            shared: Arc::new(Shared {
                location,
                limits: options.limits,
                requests,
                head: head_rx,
                readers,
                counters,
                writer: Mutex::new(Some(thread)),
                lock: Mutex::new(Some(lock)),
            }),
        })
    }

    /// The database file's path, as given.
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

    /// Waits for queued appends, stops the writer, closes every connection and checkpoints the WAL into the
    /// database file. Later calls on any handle fail with [`Error::Closed`].
    pub async fn close(&self) -> Result<(), Error> {
        self.shared.readers.close().await;
        let (reply, done) = oneshot::channel();
        if self.shared.requests.send(Request::Close { reply }).await.is_ok() {
            let _ = done.await;
        }
        let thread = self.shared.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        // Every connection is closed: another process may open the store now.
        self.shared.lock.lock().unwrap_or_else(|p| p.into_inner()).take();
        Ok(())
    }

    /// Checks the whole file: SQLite's own integrity check, every event's checksum, dense positions, and
    /// dense versions ending at each stream's recorded version. Reads everything; for operators and tests.
    pub async fn verify(&self) -> Result<u64, Error> {
        let limits = self.shared.limits;
        self.shared
            .readers
            .run(move |conn, location| {
                let report: String = conn
                    .query_row("PRAGMA integrity_check(1)", [], |r| r.get(0))
                    .map_err(|e| sql_error(location, e))?;
                if report != "ok" {
                    return Err(corrupt(location, format!("integrity check: {report}")));
                }
                let mut next = 1u64;
                let mut versions = std::collections::HashMap::<StreamName, u64>::new();
                loop {
                    let page = select_all(conn, location, next, limits.max_page_size)?;
                    let Some(last) = page.last() else { break };
                    next = last.position + 1;
                    for e in page {
                        let v = versions.entry(e.stream.clone()).or_default();
                        if e.version != *v + 1 {
                            return Err(corrupt(
                                location,
                                format!("stream {} jumps from version {v} to {}", e.stream, e.version),
                            ));
                        }
                        *v = e.version;
                    }
                }
                let recorded: i64 = conn
                    .query_row("SELECT count(*) FROM streams", [], |r| r.get(0))
                    .map_err(|e| sql_error(location, e))?;
                if recorded as usize != versions.len() {
                    return Err(corrupt(
                        location,
                        format!("{} streams have events but {recorded} are recorded", versions.len()),
                    ));
                }
                for (stream, version) in &versions {
                    let known = stream_version(conn, location, stream)?;
                    if known != *version {
                        return Err(corrupt(
                            location,
                            format!("stream {stream} has events up to {version} but is recorded at {known}"),
                        ));
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
        let stream = stream.clone();
        self.shared
            .readers
            .run(move |conn, location| {
                // One read transaction, so that the stream's recorded version and its events are one snapshot.
                let tx = conn.unchecked_transaction().map_err(|e| sql_error(location, e))?;
                let version = stream_version(&tx, location, &stream)?;
                let (sql, start) = match direction {
                    Direction::Forwards => ("version >= ?2 ORDER BY version ASC", from.max(1)),
                    Direction::Backwards => ("version <= ?2 ORDER BY version DESC", from.min(version)),
                };
                let sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE stream = ?1 AND {sql} LIMIT ?3");
                let events = select(&tx, location, &sql, params![stream.as_str(), to_sql(start), limit as i64])?;
                check_stream_page(location, &stream, version, direction, start, limit, &events)?;
                Ok(events)
            })
            .await
    }

    async fn read_all(&self, from: u64, limit: usize) -> Result<Vec<Envelope>, Error> {
        self.shared.limits.check_page(limit)?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.shared.readers.run(move |conn, location| select_all(conn, location, from.max(1), limit)).await
    }

    async fn stream_version(&self, stream: &StreamName) -> Result<u64, Error> {
        let stream = stream.clone();
        self.shared.readers.run(move |conn, location| stream_version(conn, location, &stream)).await
    }

    async fn head(&self) -> Result<u64, Error> {
        Ok(*self.shared.head.borrow())
    }

    async fn load_snapshot(&self, stream: &StreamName) -> Result<Option<Snapshot>, Error> {
        let stream = stream.clone();
        self.shared
            .readers
            .run(move |conn, location| {
                let row = conn
                    .query_row(
                        "SELECT version, schema_version, payload, checksum FROM snapshots WHERE stream = ?1",
                        [stream.as_str()],
                        |r| {
                            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, Vec<u8>>(2)?, r.get::<_, i64>(3)?))
                        },
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
            })
            .await
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
}

/// The writer thread's state: the only connection that writes.
struct Writer {
    conn: Connection,
    location: String,
    /// Position the next appended event gets.
    next_position: u64,
    head: watch::Sender<u64>,
    counters: Arc<Counters>,
    max_commit_events: usize,
}

impl Writer {
    fn run(mut self, mut queue: mpsc::Receiver<Request>) {
        let mut batch = Vec::new();
        while let Some(first) = queue.blocking_recv() {
            let mut events = request_events(&first);
            batch.push(first);
            // Everything that queued up while the last commit ran goes into this one.
            while events < self.max_commit_events {
                let Ok(next) = queue.try_recv() else { break };
                events += request_events(&next);
                batch.push(next);
            }
            let close = batch.iter().position(|r| matches!(r, Request::Close { .. }));
            let closing = close.map(|at| batch.split_off(at));
            self.commit(&mut batch);
            if let Some(rest) = closing {
                self.close(queue, rest);
                return;
            }
        }
        tracing::debug!(store = %self.location, "every handle dropped; the writer stops");
    }

    fn close(self, mut queue: mpsc::Receiver<Request>, rest: Vec<Request>) {
        queue.close();
        let mut replies = Vec::new();
        for request in rest.into_iter().chain(std::iter::from_fn(|| queue.try_recv().ok())) {
            match request {
                Request::Close { reply } => replies.push(reply),
                Request::Append { reply, .. } | Request::Snapshot { reply, .. } => {
                    let _ = reply.send(Err(Error::Closed));
                }
            }
        }
        if let Err(e) = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
            tracing::warn!(store = %self.location, error = %e, "checkpoint at close failed");
        }
        if let Err((_, e)) = self.conn.close() {
            tracing::warn!(store = %self.location, error = %e, "closing the write connection failed");
        }
        tracing::info!(store = %self.location, "closed the event store");
        for reply in replies {
            let _ = reply.send(());
        }
    }

    /// Applies a batch of requests in one transaction and answers each.
    fn commit(&mut self, batch: &mut Vec<Request>) {
        let recorded_at = Timestamp::now();
        let mut next_position = self.next_position;
        let mut answers: Vec<(Reply, Result<Outcome, Error>)> = Vec::with_capacity(batch.len());
        let mut appended = (0u64, 0u64);
        let result = (|| -> rusqlite::Result<()> {
            let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for request in batch.drain(..) {
                match request {
                    Request::Append { stream, expected, events, reply } => {
                        let outcome =
                            append(&tx, &self.location, &stream, expected, events, &mut next_position, recorded_at)?;
                        if let Ok(Outcome::Appended(a)) = &outcome {
                            appended.0 += 1;
                            appended.1 += a.last_position - a.first_position + 1;
                        }
                        answers.push((reply, outcome));
                    }
                    Request::Snapshot { snapshot, reply } => {
                        answers.push((reply, save_snapshot(&tx, &self.location, snapshot)?));
                    }
                    Request::Close { .. } => unreachable!("run splits the batch at Close"),
                }
            }
            tx.commit()
        })();
        match result {
            Ok(()) => {
                self.next_position = next_position;
                self.counters.commits.fetch_add(1, Ordering::Relaxed);
                self.counters.appends.fetch_add(appended.0, Ordering::Relaxed);
                self.counters.events.fetch_add(appended.1, Ordering::Relaxed);
                // Only now are the events visible to readers, so only now may subscribers be woken.
                self.head.send_replace(next_position - 1);
                for (reply, outcome) in answers {
                    let _ = reply.send(outcome);
                }
            }
            Err(e) => {
                let error = sql_error(&self.location, e);
                tracing::error!(store = %self.location, %error, "a group commit failed; its appends fail");
                // The transaction rolled back; re-read where the store ends in case the failure was in the
                // commit itself.
                if let Ok(head) =
                    self.conn.query_row("SELECT coalesce(max(position), 0) FROM events", [], |r| r.get::<_, i64>(0))
                {
                    self.next_position = from_sql(head) + 1;
                }
                for (reply, _) in answers {
                    let _ = reply.send(Err(error.clone()));
                }
                // Requests not yet drained when the statement failed are answered too.
                for request in batch.drain(..) {
                    if let Request::Append { reply, .. } | Request::Snapshot { reply, .. } = request {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
            }
        }
    }
}

fn request_events(request: &Request) -> usize {
    match request {
        Request::Append { events, .. } => events.len(),
        Request::Snapshot { .. } | Request::Close { .. } => 1,
    }
}

/// Applies one append inside the writer's transaction. The outer error aborts the whole transaction; the
/// inner one fails this append only.
fn append(
    tx: &rusqlite::Transaction<'_>,
    location: &str,
    stream: &StreamName,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
    next_position: &mut u64,
    recorded_at: Timestamp,
) -> rusqlite::Result<Result<Outcome, Error>> {
    let actual = match stream_version(tx, location, stream) {
        Ok(version) => version,
        Err(error) => return Ok(Err(error)),
    };
    if !expected.matches(actual) {
        return Ok(Err(Error::Conflict { stream: stream.clone(), expected, actual }));
    }
    let first_position = *next_position;
    let mut version = actual;
    let mut insert = tx.prepare_cached(&format!(
        "INSERT INTO events ({EVENT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
    ))?;
    for event in events {
        version += 1;
        let e = event.into_envelope(stream.clone(), version, *next_position, recorded_at);
        insert.execute(params![
            to_sql(e.position),
            e.stream.as_str(),
            to_sql(e.version),
            e.event_id.as_bytes(),
            e.event_type,
            e.schema_version,
            e.recorded_at.as_micros(),
            e.tenant,
            e.correlation_id.as_ref().map(Uuid::as_bytes),
            e.causation_id.as_ref().map(Uuid::as_bytes),
            e.actor,
            e.payload.as_ref(),
            i64::from(event_checksum(&e)),
        ])?;
        *next_position += 1;
    }
    tx.prepare_cached(
        "INSERT INTO streams (stream, version, checksum) VALUES (?1, ?2, ?3) \
         ON CONFLICT (stream) DO UPDATE SET version = excluded.version, checksum = excluded.checksum",
    )?
    .execute(params![stream.as_str(), to_sql(version), i64::from(stream_checksum(stream, version))])?;
    Ok(Ok(Outcome::Appended(Appended { version, first_position, last_position: *next_position - 1 })))
}

fn save_snapshot(
    tx: &rusqlite::Transaction<'_>,
    location: &str,
    snapshot: Snapshot,
) -> rusqlite::Result<Result<Outcome, Error>> {
    let actual = match stream_version(tx, location, &snapshot.stream) {
        Ok(version) => version,
        Err(error) => return Ok(Err(error)),
    };
    if snapshot.version > actual {
        return Ok(Err(Error::SnapshotAhead { stream: snapshot.stream, version: snapshot.version, actual }));
    }
    tx.prepare_cached(
        "INSERT INTO snapshots (stream, version, schema_version, payload, checksum) VALUES (?1, ?2, ?3, ?4, ?5) \
         ON CONFLICT (stream) DO UPDATE SET version = excluded.version, schema_version = excluded.schema_version, \
         payload = excluded.payload, checksum = excluded.checksum WHERE excluded.version >= snapshots.version",
    )?
    .execute(params![
        snapshot.stream.as_str(),
        to_sql(snapshot.version),
        snapshot.schema_version,
        snapshot.payload.as_ref(),
        i64::from(snapshot_checksum(&snapshot)),
    ])?;
    Ok(Ok(Outcome::Saved))
}

/// The reader connections.
struct Readers {
    path: PathBuf,
    location: String,
    idle: Mutex<Vec<Connection>>,
    permits: Semaphore,
    size: usize,
}

impl Readers {
    /// Runs `f` with a reader connection on the blocking pool.
    async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Connection, &str) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let permit = self.permits.acquire().await.map_err(|_| Error::Closed)?;
        let readers = self.clone();
        let result = tokio::task::spawn_blocking(move || {
            let idle = readers.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let conn = match idle {
                Some(conn) => conn,
                None => readers.open()?,
            };
            let result = f(&conn, &readers.location);
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
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
        let conn = Connection::open_with_flags(&self.path, flags).map_err(|e| sql_error(&self.location, e))?;
        conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS))
            .map_err(|e| sql_error(&self.location, e))?;
        conn.execute_batch("PRAGMA query_only = ON; PRAGMA cell_size_check = ON;")
            .map_err(|e| sql_error(&self.location, e))?;
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

fn configure(conn: &Connection, synchronous: Synchronous) -> rusqlite::Result<()> {
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
    let (min, max): (Option<i64>, Option<i64>) = conn
        .query_row("SELECT min(position), max(position) FROM events", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(|e| sql_error(location, e))?;
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
    let events = select(
        conn,
        location,
        &format!("SELECT {EVENT_COLUMNS} FROM events WHERE position >= ?1 ORDER BY position LIMIT ?2"),
        params![to_sql(from), limit as i64],
    )?;
    // Positions are dense from 1, so the page must start at `from` (if the store reaches that far) and run
    // without a gap.
    for (i, e) in events.iter().enumerate() {
        if e.position != from + i as u64 {
            return Err(corrupt(location, format!("expected position {}, found {}", from + i as u64, e.position)));
        }
    }
    Ok(events)
}

/// Checks a page of a stream against its recorded version: versions run without a gap from where the read
/// started, belong to the stream, and a short page ends at the stream's end.
fn check_stream_page(
    location: &str,
    stream: &StreamName,
    version: u64,
    direction: Direction,
    start: u64,
    limit: usize,
    events: &[Envelope],
) -> Result<(), Error> {
    let expected: Vec<u64> = match direction {
        Direction::Forwards => (start..=version).take(limit).collect(),
        Direction::Backwards => (1..=start).rev().take(limit).collect(),
    };
    let ok = events.len() == expected.len()
        && events.iter().zip(&expected).all(|(e, v)| e.version == *v && &e.stream == stream);
    if !ok {
        return Err(corrupt(
            location,
            format!(
                "stream {stream} is recorded at version {version}, but a read from {start} found versions {:?}",
                events.iter().map(|e| e.version).collect::<Vec<_>>()
            ),
        ));
    }
    Ok(())
}

fn stream_version(conn: &Connection, location: &str, stream: &StreamName) -> Result<u64, Error> {
    let row: Option<(i64, i64)> = conn
        .prepare_cached("SELECT version, checksum FROM streams WHERE stream = ?1")
        .and_then(|mut s| s.query_row([stream.as_str()], |r| Ok((r.get(0)?, r.get(1)?))).optional())
        .map_err(|e| sql_error(location, e))?;
    match row {
        None => Ok(0),
        Some((version, checksum))
            if version > 0 && checksum == i64::from(stream_checksum(stream, from_sql(version))) =>
        {
            Ok(from_sql(version))
        }
        Some(_) => Err(corrupt(location, format!("the recorded version of stream {stream} fails its checksum"))),
    }
}

fn select(conn: &Connection, location: &str, sql: &str, params: impl rusqlite::Params) -> Result<Vec<Envelope>, Error> {
    let mut statement = conn.prepare_cached(sql).map_err(|e| sql_error(location, e))?;
    let mut rows = statement.query(params).map_err(|e| sql_error(location, e))?;
    let mut events = Vec::new();
    while let Some(row) = rows.next().map_err(|e| sql_error(location, e))? {
        events.push(decode_row(row, location)?);
    }
    Ok(events)
}

/// Builds an envelope from a row and checks it against the row's checksum.
fn decode_row(row: &rusqlite::Row<'_>, location: &str) -> Result<Envelope, Error> {
    let position: i64 = row.get(0).map_err(|e| sql_error(location, e))?;
    let bad = |what: String| corrupt(location, format!("the event at position {position} {what}"));
    let get_uuid = |i: usize| -> Result<Option<Uuid>, Error> {
        let raw: Option<&[u8]> =
            row.get_ref(i).map_err(|e| bad(e.to_string()))?.as_blob_or_null().map_err(|e| bad(e.to_string()))?;
        raw.map(|b| Uuid::from_slice(b).map_err(|_| bad(format!("has a malformed id in column {i}")))).transpose()
    };
    let text = |i: usize| -> Result<String, Error> {
        row.get_ref(i).map_err(|e| bad(e.to_string()))?.as_str().map(str::to_owned).map_err(|e| bad(e.to_string()))
    };
    let int = |i: usize| -> Result<i64, Error> { row.get(i).map_err(|e: rusqlite::Error| bad(e.to_string())) };
    let stream = StreamName::new(text(1)?).map_err(|e| bad(e.to_string()))?;
    let envelope = Envelope {
        event_id: get_uuid(3)?.ok_or_else(|| bad("has no id".into()))?,
        stream,
        version: from_sql(int(2)?),
        position: from_sql(position),
        event_type: text(4)?,
        schema_version: u32::try_from(int(5)?).map_err(|e| bad(e.to_string()))?,
        recorded_at: Timestamp(int(6)?),
        tenant: text(7)?,
        correlation_id: get_uuid(8)?,
        causation_id: get_uuid(9)?,
        actor: text(10)?,
        payload: Bytes::copy_from_slice(
            row.get_ref(11).map_err(|e| bad(e.to_string()))?.as_blob().map_err(|e| bad(e.to_string()))?,
        ),
    };
    if i64::from(event_checksum(&envelope)) != int(12)? {
        return Err(bad("fails its checksum".into()));
    }
    Ok(envelope)
}

/// CRC-32 of every field of an event, each length-prefixed so that moving bytes between fields changes it.
pub(crate) fn event_checksum(e: &Envelope) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&e.position.to_le_bytes());
    field(&mut h, e.stream.as_str().as_bytes());
    h.update(&e.version.to_le_bytes());
    h.update(e.event_id.as_bytes());
    field(&mut h, e.event_type.as_bytes());
    h.update(&e.schema_version.to_le_bytes());
    h.update(&e.recorded_at.as_micros().to_le_bytes());
    field(&mut h, e.tenant.as_bytes());
    field(&mut h, e.correlation_id.as_ref().map_or(&[][..], |u| u.as_bytes()));
    field(&mut h, e.causation_id.as_ref().map_or(&[][..], |u| u.as_bytes()));
    field(&mut h, e.actor.as_bytes());
    field(&mut h, &e.payload);
    h.finalize()
}

fn stream_checksum(stream: &StreamName, version: u64) -> u32 {
    let mut h = crc32fast::Hasher::new();
    field(&mut h, stream.as_str().as_bytes());
    h.update(&version.to_le_bytes());
    h.finalize()
}

fn snapshot_checksum(s: &Snapshot) -> u32 {
    let mut h = crc32fast::Hasher::new();
    field(&mut h, s.stream.as_str().as_bytes());
    h.update(&s.version.to_le_bytes());
    h.update(&s.schema_version.to_le_bytes());
    field(&mut h, &s.payload);
    h.finalize()
}

fn field(h: &mut crc32fast::Hasher, bytes: &[u8]) {
    h.update(&(bytes.len() as u64).to_le_bytes());
    h.update(bytes);
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
