//! Reading the log: a stream's events through the index, the whole log in order, snapshots and checkpoints,
//! on the pool of reader connections ([`Readers`]).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::sync::Semaphore;
use weft_events::{Checkpoint, Direction, Envelope, Error, Snapshot, StreamName};

use super::index::{self, StreamTail};
use super::{
    BUSY_TIMEOUT_MS, MISSING_POSITION, checkpoint_checksum, corrupt, from_sql, snapshot_checksum, sql_error, to_sql,
};
use crate::store::record;

/// Reads up to `limit` events of a stream: the versions wanted come from the tail where it has them and
/// from the index file before that; the events come from the log, and each must be where the index says.
pub(super) fn read_stream(
    conn: &Connection,
    readers: &Readers,
    stream: &StreamName,
    tail: Option<StreamTail>,
    from: u64,
    direction: Direction,
    limit: usize,
) -> Result<Vec<Envelope>, Error> {
    // One read transaction over both files, so that the index and the log are read at one moment.
    let _tx = conn.unchecked_transaction().map_err(|e| sql_error(&readers.location, e))?;
    let last = last_version(conn, readers, stream, &tail)?;
    read_versions(conn, readers, stream, tail, last, from, direction, limit)
}

/// A stream's latest snapshot and up to `limit` of its events after it, in one read transaction. A stream
/// with no event has neither (and the snapshots are not looked at).
pub(super) fn read_latest(
    conn: &Connection,
    readers: &Readers,
    stream: &StreamName,
    tail: Option<StreamTail>,
    limit: usize,
) -> Result<(Option<Snapshot>, Vec<Envelope>), Error> {
    let _tx = conn.unchecked_transaction().map_err(|e| sql_error(&readers.location, e))?;
    let last = last_version(conn, readers, stream, &tail)?;
    if last == 0 {
        return Ok((None, Vec::new()));
    }
    let snapshot = load_snapshot(conn, &readers.location, stream.clone())?;
    let from = snapshot.as_ref().map_or(0, |s| s.version) + 1;
    let events = read_versions(conn, readers, stream, tail, last, from, Direction::Forwards, limit)?;
    Ok((snapshot, events))
}

/// The stream's last version: the tail's if it has the stream, else the index file's.
fn last_version(
    conn: &Connection,
    readers: &Readers,
    stream: &StreamName,
    tail: &Option<StreamTail>,
) -> Result<u64, Error> {
    match tail {
        Some(t) => Ok(t.last_version()),
        None => index::file_version(conn, &readers.index_location, "idx.", stream),
    }
}

/// [`read_stream`] within a read transaction, `last` the stream's last version.
#[allow(clippy::too_many_arguments)]
fn read_versions(
    tx: &Connection,
    readers: &Readers,
    stream: &StreamName,
    tail: Option<StreamTail>,
    last: u64,
    from: u64,
    direction: Direction,
    limit: usize,
) -> Result<Vec<Envelope>, Error> {
    let location = readers.location.as_str();
    let index_location = readers.index_location.as_str();
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

pub(super) fn load_snapshot(conn: &Connection, location: &str, stream: StreamName) -> Result<Option<Snapshot>, Error> {
    let row = conn
        .prepare_cached("SELECT version, schema_version, payload, checksum FROM snapshots WHERE stream = ?1")
        .and_then(|mut select| {
            select
                .query_row([stream.as_str()], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, Vec<u8>>(2)?, r.get::<_, i64>(3)?))
                })
                .optional()
        })
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

/// The names of the saved checkpoints, in name order.
pub(super) fn checkpoint_names(conn: &Connection, location: &str) -> Result<Vec<StreamName>, Error> {
    let mut statement =
        conn.prepare_cached("SELECT name FROM checkpoints ORDER BY name").map_err(|e| sql_error(location, e))?;
    let names = statement
        .query_map([], |r| r.get::<_, String>(0))
        .and_then(Iterator::collect::<rusqlite::Result<Vec<String>>>)
        .map_err(|e| sql_error(location, e))?;
    Ok(names.iter().map(|name| StreamName::from_stored(name)).collect())
}

pub(super) fn load_checkpoint(
    conn: &Connection,
    location: &str,
    name: StreamName,
) -> Result<Option<Checkpoint>, Error> {
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
/// damage early); and read with `pread`, not through a memory map. A map was faster for long reads of a
/// quiet log, but SQLite drops a reader's whole map (`munmap`, with a TLB shoot-down on every core) at each
/// read transaction after a commit, and a node reads between commits all the time: without the map, jobs ran
/// 15% faster (`weft bench jobs` on tmpfs) and `weft bench store`'s reads stayed within their figures.
pub(super) const READER_PRAGMAS: &str = "PRAGMA query_only = ON; PRAGMA cell_size_check = ON; \
                              PRAGMA mmap_size = 0; PRAGMA idx.mmap_size = 0;";

/// The reader connections: each opens the log with the index file attached as `idx`.
pub(super) struct Readers {
    pub(super) path: PathBuf,
    pub(super) index_path: PathBuf,
    pub(super) location: String,
    /// The index file, for errors.
    pub(super) index_location: String,
    pub(super) idle: Mutex<Vec<Connection>>,
    pub(super) permits: Semaphore,
    pub(super) size: usize,
}

impl Readers {
    /// Runs `f` with a reader connection on the blocking pool.
    pub(super) async fn run<T: Send + 'static>(
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

    pub(super) fn open(&self) -> Result<Connection, Error> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&self.path, flags).map_err(|e| sql_error(&self.location, e))?;
        conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS))
            .map_err(|e| sql_error(&self.location, e))?;
        super::stable_plans(&conn).map_err(|e| sql_error(&self.location, e))?;
        let index = self.index_path.to_str().ok_or_else(|| Error::Unavailable {
            location: self.location.clone(),
            reason: "the index file's path is not UTF-8".into(),
        })?;
        conn.execute("ATTACH DATABASE ?1 AS idx", [index]).map_err(|e| sql_error(&self.index_location, e))?;
        conn.execute_batch(READER_PRAGMAS).map_err(|e| sql_error(&self.location, e))?;
        Ok(conn)
    }

    /// Waits for running reads, then closes every connection and refuses new reads.
    pub(super) async fn close(&self) {
        if let Ok(all) = self.permits.acquire_many(self.size as u32).await {
            all.forget();
        }
        self.permits.close();
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

pub(super) fn select_all(conn: &Connection, location: &str, from: u64, limit: usize) -> Result<Vec<Envelope>, Error> {
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
pub(super) fn decode_row(
    row: &rusqlite::Row<'_>,
    location: &str,
    names: &mut record::Names,
) -> Result<Envelope, Error> {
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
