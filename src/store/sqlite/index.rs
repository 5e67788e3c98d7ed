//! The stream index: which log positions hold each stream's versions.
//!
//! Keeping a `(stream, version)` B-tree in the log's own transactions is what made appends slow: events of
//! many streams land on as many index pages, and every commit had to write and fsync all of them. So, like
//! EventStoreDB, the log is the only thing an append writes, and the index is derived from it:
//!
//! - `Tail` (memory) holds the index entries of every event committed after `indexed_through`. The writer
//!   adds to it right after each commit, before answering.
//! - The indexer thread moves entries from the tail into the index file (`PATH-index`, a SQLite file of its
//!   own, so its commits never wait for the log's or hold it up) in large transactions, records
//!   `indexed_through` in the same transaction, and only then drops them from the tail.
//! - At open, whatever the log holds past the file's `indexed_through` is indexed again; a damaged or
//!   missing index file is rebuilt from the log. The index file is therefore written without fsync.
//!
//! Every event is always in the file or in the tail (or both, briefly), so a reader that takes the tail first
//! and then reads the file sees a complete index. The tail is bounded ([`MAX_TAIL_EVENTS`]): when the
//! indexer falls that far behind, the writer waits for it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, params};
use weft_events::{Error, StreamName};

use super::{corrupt, from_sql, sql_error, to_sql};

/// Most index entries the tail holds before the writer waits for the indexer. At about 100 bytes each,
/// 200,000 entries are about 20 MB.
pub const MAX_TAIL_EVENTS: usize = 200_000;

/// How long the indexer lets entries gather before it writes a small batch: trades a little memory for far
/// fewer index transactions.
const GATHER_MS: u64 = 20;

/// Below this many entries, the indexer waits [`GATHER_MS`] for more before writing.
const MIN_BATCH: usize = 2_000;

/// How long the indexer waits before retrying a failed transaction.
const RETRY_MS: u64 = 200;

/// Most log rows indexed in one transaction while catching up at open.
const CATCH_UP_BATCH: usize = 50_000;

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS stream_events (
    stream   TEXT    NOT NULL,
    version  INTEGER NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (stream, version)
) STRICT, WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS streams (
    stream   TEXT    PRIMARY KEY,
    version  INTEGER NOT NULL,
    checksum INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS progress (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    indexed_through INTEGER NOT NULL
) STRICT;
INSERT OR IGNORE INTO progress (id, indexed_through) VALUES (1, 0);
";

/// Index entries of some streams: per stream, its first version here and the positions of it and the
/// versions after it.
pub(crate) type Entries = Vec<(StreamName, u64, Vec<u64>)>;

/// The index entries of one stream that are not (known to be) in the index file yet: versions
/// `first_version ..` at `positions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StreamTail {
    pub(crate) first_version: u64,
    pub(crate) positions: Vec<u64>,
}

impl StreamTail {
    pub(crate) fn last_version(&self) -> u64 {
        self.first_version + self.positions.len() as u64 - 1
    }
}

#[derive(Default)]
struct TailState {
    /// Every event at or before this position is in the index file.
    indexed_through: u64,
    streams: HashMap<StreamName, StreamTail>,
    /// Entries in `streams`.
    entries: usize,
    /// The writer has stopped: the indexer writes what is left and stops.
    closing: bool,
    /// The last indexer failure, cleared by its next success; shown to appenders that wait for room.
    failure: Option<String>,
}

/// The index entries of committed events that the index file may not hold yet. Shared by the writer, the
/// indexer and readers.
pub(crate) struct Tail {
    state: Mutex<TailState>,
    /// Signalled when entries are added or closing starts.
    added: Condvar,
    /// Signalled when the indexer has made room.
    drained: Condvar,
}

impl Tail {
    pub(crate) fn new(indexed_through: u64) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(TailState { indexed_through, ..TailState::default() }),
            added: Condvar::new(),
            drained: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, TailState> {
        // Every critical section below leaves the state consistent before anything that can panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The last version of `stream` in the tail, if it has entries there.
    pub(crate) fn last_version(&self, stream: &StreamName) -> Option<u64> {
        self.lock().streams.get(stream).map(StreamTail::last_version)
    }

    /// What a reader needs: the tail's entries for `stream`.
    pub(crate) fn stream(&self, stream: &StreamName) -> Option<StreamTail> {
        self.lock().streams.get(stream).cloned()
    }

    /// Adds the entries of a commit: per stream, the first new version and the positions of its events.
    pub(crate) fn add(&self, commit: Entries) {
        let mut state = self.lock();
        for (stream, first_version, positions) in commit {
            state.entries += positions.len();
            match state.streams.get_mut(&stream) {
                Some(tail) => {
                    debug_assert_eq!(tail.last_version() + 1, first_version, "versions are dense");
                    tail.positions.extend(positions);
                }
                None => {
                    state.streams.insert(stream, StreamTail { first_version, positions });
                }
            }
        }
        self.added.notify_one();
    }

    /// Waits while the tail is over its bound, which holds the writer (and so appenders) back until the
    /// indexer catches up. Fails when the indexer is failing, so that appends get an error instead of
    /// waiting for ever.
    pub(crate) fn wait_for_room(&self) -> Result<(), String> {
        let mut state = self.lock();
        while state.entries > MAX_TAIL_EVENTS && !state.closing {
            if let Some(failure) = &state.failure {
                return Err(failure.clone());
            }
            state = self
                .drained
                .wait_timeout(state, Duration::from_millis(RETRY_MS))
                .map(|(s, _)| s)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        Ok(())
    }

    /// Tells the indexer to write what is left and stop.
    pub(crate) fn close(&self) {
        self.lock().closing = true;
        self.added.notify_all();
    }
}

/// The indexer thread: moves entries from the tail into the index file.
pub(crate) struct Indexer {
    pub(crate) conn: Connection,
    pub(crate) tail: Arc<Tail>,
    /// The index file, for errors and logs.
    pub(crate) location: String,
}

impl Indexer {
    pub(crate) fn run(mut self) {
        while let Some((through, batch)) = self.next_batch() {
            loop {
                match write_entries(&mut self.conn, &batch, through) {
                    Ok(()) => break,
                    Err(e) => {
                        let message = format!("the stream index {} cannot be written: {e}", self.location);
                        tracing::error!("{message}; retrying");
                        self.tail.lock().failure = Some(message);
                        std::thread::sleep(Duration::from_millis(RETRY_MS));
                    }
                }
            }
            let mut state = self.tail.lock();
            state.failure = None;
            state.indexed_through = through;
            let mut dropped = 0;
            state.streams.retain(|_, tail| {
                let keep = tail.positions.partition_point(|p| *p <= through);
                dropped += keep;
                tail.positions.drain(..keep);
                tail.first_version += keep as u64;
                !tail.positions.is_empty()
            });
            state.entries -= dropped;
            drop(state);
            self.tail.drained.notify_all();
        }
        if let Err(e) = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
            tracing::warn!(index = %self.location, error = %e, "checkpoint of the stream index failed");
        }
    }

    /// Waits for entries, lets a small batch gather a little, and copies them out with the position they
    /// run through. `None` once closing and empty.
    fn next_batch(&self) -> Option<(u64, Entries)> {
        let mut state = self.tail.lock();
        while state.entries == 0 {
            if state.closing {
                return None;
            }
            state = self.tail.added.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        let deadline = std::time::Instant::now() + Duration::from_millis(GATHER_MS);
        while state.entries < MIN_BATCH && !state.closing {
            let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) else { break };
            state = self.tail.added.wait_timeout(state, left).map(|(s, _)| s).unwrap_or_else(|p| p.into_inner().0);
        }
        let mut through = state.indexed_through;
        let batch = state
            .streams
            .iter()
            .map(|(stream, tail)| {
                through = through.max(*tail.positions.last().expect("tails are never empty"));
                (stream.clone(), tail.first_version, tail.positions.clone())
            })
            .collect();
        // Every committed event up to `through` is in this batch or already in the file: the writer adds a
        // commit's entries in one call, and positions are dense.
        Some((through, batch))
    }
}

fn write_entries(conn: &mut Connection, batch: &Entries, through: u64) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        // OR REPLACE: an entry may already be in the file from a transaction whose tail pruning never ran (a
        // crash between the two); it is the same entry.
        let mut insert =
            tx.prepare_cached("INSERT OR REPLACE INTO stream_events (stream, version, position) VALUES (?1, ?2, ?3)")?;
        // Each stream's last version too, kept apart from its entries: a damaged entry then shows up as a
        // mismatch instead of a stream that silently ends early.
        let mut head = tx.prepare_cached(
            "INSERT INTO streams (stream, version, checksum) VALUES (?1, ?2, ?3) ON CONFLICT (stream) DO UPDATE \
             SET version = excluded.version, checksum = excluded.checksum WHERE excluded.version > streams.version",
        )?;
        for (stream, first_version, positions) in batch {
            for (i, position) in positions.iter().enumerate() {
                insert.execute(params![stream.as_str(), to_sql(first_version + i as u64), to_sql(*position)])?;
            }
            let last = first_version + positions.len() as u64 - 1;
            head.execute(params![stream.as_str(), to_sql(last), i64::from(head_checksum(stream, last))])?;
        }
        tx.execute("UPDATE progress SET indexed_through = ?1 WHERE id = 1", [to_sql(through)])?;
    }
    tx.commit()
}

/// Opens the index file, rebuilding it when it is damaged or does not match the log, and indexes whatever the
/// log holds past it. Returns the connection and the position the file is indexed through.
pub(crate) fn open(
    path: &Path,
    log: &Connection,
    log_head: u64,
    log_location: &str,
) -> Result<(Connection, u64), Error> {
    let location = path.display().to_string();
    let (mut conn, through) = match open_file(path, &location, log_head) {
        Ok(opened) => opened,
        Err(reason) => {
            tracing::warn!(index = %location, %reason, "rebuilding the stream index from the log");
            for suffix in ["", "-wal", "-shm"] {
                let file = format!("{location}{suffix}");
                if let Err(e) = std::fs::remove_file(&file)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    return Err(Error::Unavailable { location, reason: format!("cannot remove {file}: {e}") });
                }
            }
            open_file(path, &location, log_head)
                .map_err(|reason| Error::Unavailable { location: location.clone(), reason })?
        }
    };
    let through = catch_up(&mut conn, log, through, log_location, &location)?;
    Ok((conn, through))
}

/// Opens an index file as it is; `Err` says why it cannot be used.
fn open_file(path: &Path, location: &str, log_head: u64) -> Result<(Connection, u64), String> {
    let conn = Connection::open(path).map_err(|e| e.to_string())?;
    super::configure(&conn, super::Synchronous::Off).map_err(|e| e.to_string())?;
    conn.execute_batch(SCHEMA).map_err(|e| e.to_string())?;
    super::check_schema(&conn, SCHEMA)?;
    let through: i64 = conn
        .query_row("SELECT indexed_through FROM progress WHERE id = 1", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    let through = from_sql(through);
    if through > log_head {
        return Err(format!("{location} is indexed through position {through}, past the log's end at {log_head}"));
    }
    Ok((conn, through))
}

/// Indexes the log's events after `through`, in batches.
fn catch_up(
    conn: &mut Connection,
    log: &Connection,
    mut through: u64,
    log_location: &str,
    location: &str,
) -> Result<u64, Error> {
    loop {
        let mut select = log
            .prepare_cached(
                "SELECT position, stream, version FROM events WHERE position > ?1 ORDER BY position LIMIT ?2",
            )
            .map_err(|e| sql_error(log_location, e))?;
        let rows: Vec<(i64, String, i64)> = select
            .query_map(params![to_sql(through), CATCH_UP_BATCH as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .and_then(|rows| rows.collect())
            .map_err(|e| sql_error(log_location, e))?;
        let Some(last) = rows.last() else { return Ok(through) };
        let last = from_sql(last.0);
        let mut batch = Vec::with_capacity(rows.len());
        for (position, stream, version) in rows {
            let stream =
                StreamName::new(stream).map_err(|e| corrupt(log_location, format!("position {position}: {e}")))?;
            batch.push((stream, from_sql(version), vec![from_sql(position)]));
        }
        write_entries(conn, &batch, last).map_err(|e| sql_error(location, e))?;
        tracing::info!(index = %location, through = last, "indexed the log's tail");
        through = last;
    }
}

/// The last version of `stream` in the index file; 0 when it has none. Called outside a transaction, it
/// reads in one of its own, so it sees the indexer's latest commit.
///
/// The stream's recorded last version and its last entry are kept in two B-trees and must agree, so that a
/// damaged index page shows up as [`Error::Corrupt`] rather than as a stream that ends early.
pub(crate) fn file_version(conn: &Connection, location: &str, schema: &str, stream: &StreamName) -> Result<u64, Error> {
    // Both look-ups in one statement, so that they see one commit of the indexer without a transaction of
    // their own (a `BEGIN` and a `COMMIT` parsed anew each time, on the writer's thread among others).
    let (version, checksum, last): (Option<i64>, Option<i64>, Option<i64>) = conn
        .prepare_cached(&format!(
            "SELECT s.version, s.checksum, (SELECT max(version) FROM {schema}stream_events WHERE stream = ?1) \
             FROM (SELECT 1) LEFT JOIN {schema}streams s ON s.stream = ?1"
        ))
        .and_then(|mut s| s.query_row([stream.as_str()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))))
        .map_err(|e| sql_error(location, e))?;
    let head = version.zip(checksum);
    match (head, last) {
        (None, None) => Ok(0),
        (Some((version, checksum)), Some(last))
            if version == last && checksum == i64::from(head_checksum(stream, from_sql(version))) =>
        {
            Ok(from_sql(version))
        }
        (head, last) => Err(corrupt(
            location,
            format!(
                "stream {stream} is recorded at version {:?} but its entries end at {last:?}; \
                 remove the index file to rebuild it from the log",
                head.map(|h| h.0)
            ),
        )),
    }
}

fn head_checksum(stream: &StreamName, version: u64) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(stream.as_str().as_bytes());
    h.update(&version.to_le_bytes());
    h.finalize()
}
